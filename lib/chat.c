/*
 * Chat templates: the subset of Jinja2 that Hugging Face chat templates use, rendered as
 * transformers renders them (trim_blocks and lstrip_blocks on, raise_exception defined).
 *
 * Statements: for (with loop.index0/index/first/last/length/revindex), if/elif/else, set (also
 * of a namespace's attribute); whitespace control with "-". Expressions: string/number/bool/none
 * literals, lists, variables, namespace(name=value, ...), .attr and [key] and [a:b:step] access,
 * + - * / % ~, comparisons, and/or/not, in,
 * "a if c else b", filters (trim, length, upper, lower, first, last, string, default,
 * capitalize, replace, join, tojson), tests (defined, undefined, none, string, number,
 * mapping, sequence, true, false), string methods (strip, lstrip, rstrip, startswith,
 * endswith, upper, lower, title, split, replace) and dict.get; raise_exception(msg).
 * Anything else fails with PEFT_EUNSUPPORTED naming the construct: never a wrong rendering.
 *
 * This file evaluates the syntax tree chat_parse.c builds; chat_text.c holds Python's string
 * semantics over UTF-8.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_internal.h"

void *peft__chat_alloc(ctx *c, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!c->arena || c->arena->cap - c->arena->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        chunk *k = malloc(sizeof *k + cap);
        if (!k) {
            c->failed = peft__fail(PEFT_ENOMEM, "chat template: out of memory");
            return NULL;
        }
        k->next = c->arena;
        k->used = 0;
        k->cap = cap;
        c->arena = k;
    }
    void *p = c->arena->data + c->arena->used;
    c->arena->used += n;
    return p;
}

int peft__chat_fail(ctx *c, int code, const char *fmt, ...)
{
    if (c->failed)
        return c->failed;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->failed = peft__fail(code, "chat template: %s", msg);
    return c->failed;
}

static val vstr(ctx *c, const char *s, size_t n, int copy)
{
    val v = {.t = V_STR, .s = s, .n = n};
    if (copy) {
        char *p = peft__chat_alloc(c, n + 1);
        if (!p)
            return (val){.t = V_UNDEF};
        memcpy(p, s, n);
        p[n] = '\0';
        v.s = p;
    }
    return v;
}

/* ---- evaluation --------------------------------------------------------------------- */

static int truthy(val v)
{
    switch (v.t) {
    case V_BOOL:
    case V_INT: return v.i != 0;
    case V_STR:
    case V_LIST:
    case V_DICT: return v.n != 0;
    case V_LOOP:
    case V_NS: return 1;
    default: return 0;
    }
}

static const val *lookup(ctx *c, const char *name)
{
    for (size_t i = c->n_vars; i-- > 0;)
        if (!strcmp(c->vars[i].name, name))
            return &c->vars[i].v;
    return NULL;
}

static int push_var(ctx *c, const char *name, val v)
{
    if (c->n_vars == c->cap_vars) {
        size_t nc = c->cap_vars ? c->cap_vars * 2 : 32;
        struct var *n = realloc(c->vars, nc * sizeof *n);
        if (!n)
            return peft__chat_fail(c, PEFT_ENOMEM, "out of memory");
        c->vars = n;
        c->cap_vars = nc;
    }
    c->vars[c->n_vars].name = name;
    c->vars[c->n_vars].v = v;
    c->n_vars++;
    return PEFT_OK;
}

/* Text of a value as Jinja prints it. */
static val to_str(ctx *c, val v)
{
    char buf[32];
    switch (v.t) {
    case V_STR: return v;
    case V_INT: snprintf(buf, sizeof buf, "%lld", v.i); return vstr(c, buf, strlen(buf), 1);
    case V_BOOL: return vstr(c, v.i ? "True" : "False", v.i ? 4 : 5, 0);
    case V_NONE: return vstr(c, "None", 4, 0);
    case V_UNDEF: return vstr(c, "", 0, 0);
    default:
        peft__chat_fail(c, PEFT_EUNSUPPORTED, "printing a list, a mapping or a namespace is not supported");
        return vstr(c, "", 0, 0);
    }
}

static int str_eq(val a, const char *s) { return a.t == V_STR && a.n == strlen(s) && !memcmp(a.s, s, a.n); }

static int equal(val a, val b)
{
    if ((a.t == V_INT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_BOOL))
        return a.i == b.i;
    if (a.t != b.t)
        return 0;
    if (a.t == V_STR)
        return a.n == b.n && !memcmp(a.s, b.s, a.n);
    if (a.t == V_NONE || a.t == V_UNDEF)
        return 1;
    if (a.t == V_LIST || a.t == V_DICT)
        return a.items == b.items && a.n == b.n;
    return 0;
}

static val concat(ctx *c, val a, val b)
{
    if (a.n + b.n > CHAT_MAX_STRING) {
        peft__chat_fail(c, PEFT_ERANGE, "a string would exceed %u bytes", CHAT_MAX_STRING);
        return (val){.t = V_UNDEF};
    }
    char *s = peft__chat_alloc(c, a.n + b.n + 1);
    if (!s)
        return (val){.t = V_UNDEF};
    memcpy(s, a.s, a.n);
    memcpy(s + a.n, b.s, b.n);
    s[a.n + b.n] = '\0';
    return (val){.t = V_STR, .s = s, .n = a.n + b.n};
}

static val eval(ctx *c, const expr *e);

/* Python's strip over a value (chars: V_STR, or anything else for whitespace) */
static val strip(ctx *c, val s, int left, int right, val chars)
{
    (void)c;
    size_t b, e;
    peft__py_strip(s.s, s.n, left, right, chars.t == V_STR ? chars.s : NULL, chars.n, &b, &e);
    return (val){.t = V_STR, .s = s.s + b, .n = e - b};
}

/* mode: 0 lower, 1 upper, 2 Python str.title(), 3 capitalize, 4 Jinja's title filter */
static val case_map(ctx *c, val s, int mode)
{
    char *o = peft__chat_alloc(c, s.n * 3 + 4);
    size_t n = 0;
    if (!o)
        return (val){.t = V_UNDEF};
    if (peft__case_map(o, &n, s.s, s.n, mode)) {
        peft__chat_fail(c, PEFT_ENOMEM, "out of memory");
        return (val){.t = V_UNDEF};
    }
    return (val){.t = V_STR, .s = o, .n = n};
}

static val replace(ctx *c, val s, val from, val to)
{
    if (from.n == 0)
        return s;
    size_t n = 0;
    char *o = peft__chat_alloc(c, s.n * (to.n > from.n ? to.n / from.n + 1 : 1) + 1);
    if (!o)
        return (val){.t = V_UNDEF};
    for (size_t i = 0; i < s.n;) {
        if (i + from.n <= s.n && !memcmp(s.s + i, from.s, from.n)) {
            memcpy(o + n, to.s, to.n);
            n += to.n;
            i += from.n;
        } else {
            o[n++] = s.s[i++];
        }
    }
    o[n] = '\0';
    return (val){.t = V_STR, .s = o, .n = n};
}

static val tojson(ctx *c, val v)
{
    if (v.t == V_INT || v.t == V_BOOL || v.t == V_NONE) {
        if (v.t == V_BOOL)
            return vstr(c, v.i ? "true" : "false", v.i ? 4 : 5, 0);
        if (v.t == V_NONE)
            return vstr(c, "null", 4, 0);
        return to_str(c, v);
    }
    if (v.t != V_STR) {
        peft__chat_fail(c, PEFT_EUNSUPPORTED, "tojson of a list or mapping is not supported");
        return vstr(c, "", 0, 0);
    }
    char *o = peft__chat_alloc(c, v.n * 6 + 3);
    size_t n = 0;
    if (!o)
        return (val){.t = V_UNDEF};
    o[n++] = '"';
    for (size_t i = 0; i < v.n; i++) {
        unsigned char ch = (unsigned char)v.s[i];
        /* Jinja's htmlsafe_json_dumps: json.dumps, then <, >, &, ' escaped */
        if (ch == '"' || ch == '\\') {
            o[n++] = '\\';
            o[n++] = (char)ch;
        } else if (ch == '\n') {
            memcpy(o + n, "\\n", 2);
            n += 2;
        } else if (ch == '\t') {
            memcpy(o + n, "\\t", 2);
            n += 2;
        } else if (ch == '\r') {
            memcpy(o + n, "\\r", 2);
            n += 2;
        } else if (ch == '\b' || ch == '\f') {
            o[n++] = '\\';
            o[n++] = ch == '\b' ? 'b' : 'f';
        } else if (ch < 0x20 || ch == '<' || ch == '>' || ch == '&' || ch == '\'') {
            n += (size_t)snprintf(o + n, 7, "\\u%04x", ch);
        } else if (ch >= 0x80) {
            peft__chat_fail(c, PEFT_EUNSUPPORTED, "tojson of non-ASCII text is not supported");
            return vstr(c, "", 0, 0);
        } else {
            o[n++] = (char)ch;
        }
    }
    o[n++] = '"';
    o[n] = '\0';
    return (val){.t = V_STR, .s = o, .n = n};
}

static val attr(ctx *c, val obj, const char *name, int subscript)
{
    if (obj.t == V_NS) {
        for (size_t i = 0; i < obj.ns->n; i++)
            if (!strcmp(obj.ns->keys[i], name))
                return obj.ns->vals[i];
        return (val){.t = V_UNDEF};
    }
    if (obj.t == V_DICT) {
        for (size_t i = 0; i < obj.n; i++)
            if (!strcmp(obj.keys[i], name))
                return obj.items[i];
        return (val){.t = V_UNDEF};
    }
    if (obj.t == V_LOOP && !subscript) {
        const loop_state *l = obj.loop;
        if (!strcmp(name, "index0"))
            return vint(l->index0);
        if (!strcmp(name, "index"))
            return vint(l->index0 + 1);
        if (!strcmp(name, "first"))
            return vbool(l->index0 == 0);
        if (!strcmp(name, "last"))
            return vbool(l->index0 == l->length - 1);
        if (!strcmp(name, "length"))
            return vint(l->length);
        if (!strcmp(name, "revindex"))
            return vint(l->length - l->index0);
        if (!strcmp(name, "revindex0"))
            return vint(l->length - l->index0 - 1);
        peft__chat_fail(c, PEFT_EUNSUPPORTED, "loop.%s is not supported", name);
        return (val){.t = V_UNDEF};
    }
    if (obj.t == V_UNDEF) {
        peft__chat_fail(c, PEFT_EFORMAT, "'%s' of an undefined value", name);
        return obj;
    }
    return (val){.t = V_UNDEF};
}

static long long norm_index(long long i, size_t n)
{
    if (i < 0)
        i += (long long)n;
    return i;
}

/* ns.name = v: replaced, or added (the arena copy grows by doubling) */
static void ns_set(ctx *c, ns_state *ns, const char *name, val v)
{
    for (size_t i = 0; i < ns->n; i++)
        if (!strcmp(ns->keys[i], name)) {
            ns->vals[i] = v;
            return;
        }
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? 2 * ns->cap : 8;
        const char **keys = peft__chat_alloc(c, cap * sizeof *keys);
        val *vals = peft__chat_alloc(c, cap * sizeof *vals);
        if (!keys || !vals)
            return;
        if (ns->n) {
            memcpy(keys, ns->keys, ns->n * sizeof *keys);
            memcpy(vals, ns->vals, ns->n * sizeof *vals);
        }
        ns->keys = keys;
        ns->vals = vals;
        ns->cap = cap;
    }
    ns->keys[ns->n] = name;
    ns->vals[ns->n++] = v;
}

/* obj[lo:hi:step] with a step other than 1, Python's rules for the bounds (lo/hi NULL: omitted) */
static val slice_step(ctx *c, val obj, size_t len, const val *lo, const val *hi, long long step)
{
    long long n = (long long)len, a, b;
    if (step > 0) {
        a = lo ? norm_index(lo->i, len) : 0;
        b = hi ? norm_index(hi->i, len) : n;
        a = a < 0 ? 0 : a > n ? n : a;
        b = b < 0 ? 0 : b > n ? n : b;
    } else {
        a = lo ? norm_index(lo->i, len) : n - 1;
        b = hi ? norm_index(hi->i, len) : -1;
        a = a < -1 ? -1 : a > n - 1 ? n - 1 : a;
        b = b < -1 ? -1 : b > n - 1 ? n - 1 : b;
    }
    long long count = step > 0 ? (b > a ? (b - a + step - 1) / step : 0) : (a > b ? (a - b - step - 1) / -step : 0);
    if (obj.t == V_LIST) {
        val *items = peft__chat_alloc(c, (size_t)(count ? count : 1) * sizeof *items);
        if (!items)
            return (val){.t = V_UNDEF};
        for (long long k = 0; k < count; k++)
            items[k] = obj.items[a + k * step];
        return (val){.t = V_LIST, .items = items, .n = (size_t)count};
    }
    char *o = peft__chat_alloc(c, obj.n + 1);
    size_t *off = peft__chat_alloc(c, (len + 1) * sizeof *off); /* byte offset of each code point */
    if (!o || !off)
        return (val){.t = V_UNDEF};
    for (size_t i = 0, k = 0; k <= len; k++) {
        off[k] = i;
        if (k < len)
            peft__utf8_next(obj.s, obj.n, &i);
    }
    size_t m = 0;
    for (long long k = 0; k < count; k++) {
        size_t p = (size_t)(a + k * step);
        memcpy(o + m, obj.s + off[p], off[p + 1] - off[p]);
        m += off[p + 1] - off[p];
    }
    return (val){.t = V_STR, .s = o, .n = m};
}

static val call(ctx *c, const expr *e)
{
    val args[16];
    for (int i = 0; i < e->n_args; i++) {
        args[i] = eval(c, e->args[i]);
        if (c->failed)
            return (val){.t = V_UNDEF};
    }
    int na = e->n_args;
    if (!e->a && !strcmp(e->name, "namespace")) { /* namespace(name=value, ...) */
        ns_state *ns = peft__chat_alloc(c, sizeof *ns);
        if (!ns)
            return (val){.t = V_UNDEF};
        memset(ns, 0, sizeof *ns);
        for (int i = 0; i < na && !c->failed; i++) {
            if (!e->kw || !e->kw[i]) {
                peft__chat_fail(c, PEFT_EUNSUPPORTED, "namespace() takes keyword arguments only here");
                return (val){.t = V_UNDEF};
            }
            ns_set(c, ns, e->kw[i], args[i]);
        }
        return (val){.t = V_NS, .ns = ns};
    }
    if (e->kw) {
        peft__chat_fail(c, PEFT_EUNSUPPORTED, "keyword arguments to %s() are not supported", e->name);
        return (val){.t = V_UNDEF};
    }
    if (!e->a) { /* a global function */
        if (!strcmp(e->name, "raise_exception")) {
            val m = na ? to_str(c, args[0]) : vstr(c, "", 0, 0);
            peft__chat_fail(c, PEFT_EINVAL, "%.*s", (int)m.n, m.s);
            return (val){.t = V_UNDEF};
        }
        if (!strcmp(e->name, "range") && na == 1 && args[0].t == V_INT && args[0].i >= 0 && args[0].i < 100000) {
            val *items = peft__chat_alloc(c, (size_t)(args[0].i ? args[0].i : 1) * sizeof *items);
            if (!items)
                return (val){.t = V_UNDEF};
            for (long long i = 0; i < args[0].i; i++)
                items[i] = vint(i);
            return (val){.t = V_LIST, .items = items, .n = (size_t)args[0].i};
        }
        peft__chat_fail(c, PEFT_EUNSUPPORTED, "function %s() is not supported", e->name);
        return (val){.t = V_UNDEF};
    }
    val obj = eval(c, e->a);
    if (c->failed)
        return obj;
    if (obj.t == V_STR) {
        if (!strcmp(e->name, "strip") || !strcmp(e->name, "lstrip") || !strcmp(e->name, "rstrip"))
            return strip(c, obj, e->name[0] != 'r', e->name[0] != 'l', na ? args[0] : (val){.t = V_NONE});
        if ((!strcmp(e->name, "startswith") || !strcmp(e->name, "endswith")) && na == 1 && args[0].t == V_STR) {
            val a = args[0];
            if (a.n > obj.n)
                return vbool(0);
            return vbool(!memcmp(e->name[0] == 's' ? obj.s : obj.s + obj.n - a.n, a.s, a.n));
        }
        if (!strcmp(e->name, "lower") || !strcmp(e->name, "upper") || !strcmp(e->name, "title") ||
            !strcmp(e->name, "capitalize"))
            return case_map(c, obj, e->name[0] == 'l' ? 0 : e->name[0] == 'u' ? 1 : e->name[0] == 't' ? 2 : 3);
        if (!strcmp(e->name, "title") || !strcmp(e->name, "capitalize"))
            return case_map(c, obj, e->name[0] == 't' ? 2 : 3);
        if (!strcmp(e->name, "replace") && na == 2 && args[0].t == V_STR && args[1].t == V_STR)
            return replace(c, obj, args[0], args[1]);
        if (!strcmp(e->name, "split") && na == 1 && args[0].t == V_STR && args[0].n > 0) {
            size_t cnt = 1;
            for (size_t i = 0; i + args[0].n <= obj.n; i++)
                if (!memcmp(obj.s + i, args[0].s, args[0].n)) {
                    cnt++;
                    i += args[0].n - 1;
                }
            val *items = peft__chat_alloc(c, cnt * sizeof *items);
            if (!items)
                return (val){.t = V_UNDEF};
            size_t k = 0, b = 0;
            for (size_t i = 0; i + args[0].n <= obj.n; i++)
                if (!memcmp(obj.s + i, args[0].s, args[0].n)) {
                    items[k++] = (val){.t = V_STR, .s = obj.s + b, .n = i - b};
                    i += args[0].n - 1;
                    b = i + 1;
                }
            items[k++] = (val){.t = V_STR, .s = obj.s + b, .n = obj.n - b};
            return (val){.t = V_LIST, .items = items, .n = k};
        }
    } else if (obj.t == V_DICT && !strcmp(e->name, "get") && (na == 1 || na == 2) && args[0].t == V_STR) {
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)args[0].n, args[0].s);
        val v = attr(c, obj, key, 1);
        return v.t == V_UNDEF ? (na == 2 ? args[1] : (val){.t = V_NONE}) : v;
    }
    peft__chat_fail(c, PEFT_EUNSUPPORTED, "method %s() is not supported on this value", e->name);
    return (val){.t = V_UNDEF};
}

static val filter(ctx *c, const expr *e)
{
    val v = eval(c, e->a), args[16];
    for (int i = 0; i < e->n_args && !c->failed; i++)
        args[i] = eval(c, e->args[i]);
    if (c->failed)
        return v;
    const char *f = e->name;
    int na = e->n_args;
    if (e->kw) {
        peft__chat_fail(c, PEFT_EUNSUPPORTED, "keyword arguments to filter '%s' are not supported", f);
        return v;
    }
    if (!strcmp(f, "default") || !strcmp(f, "d"))
        return v.t == V_UNDEF ? (na ? args[0] : vstr(c, "", 0, 0)) : v;
    if (v.t == V_UNDEF) {
        peft__chat_fail(c, PEFT_EFORMAT, "filter %s on an undefined value", f);
        return v;
    }
    if (!strcmp(f, "trim") && v.t == V_STR)
        return strip(c, v, 1, 1, na ? args[0] : (val){.t = V_NONE});
    if ((!strcmp(f, "length") || !strcmp(f, "count")) && (v.t == V_STR || v.t == V_LIST || v.t == V_DICT))
        return vint((long long)(v.t == V_STR ? peft__utf8_len(v.s, v.n) : v.n));
    if ((!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "capitalize") || !strcmp(f, "title")) && v.t == V_STR)
        return case_map(c, v, f[0] == 'l' ? 0 : f[0] == 'u' ? 1 : f[0] == 't' ? 4 : 3);
    if ((!strcmp(f, "first") || !strcmp(f, "last")) && v.t == V_LIST)
        return v.n ? v.items[f[0] == 'f' ? 0 : v.n - 1] : (val){.t = V_UNDEF};
    if (!strcmp(f, "string"))
        return to_str(c, v);
    if (!strcmp(f, "tojson"))
        return tojson(c, v);
    if (!strcmp(f, "replace") && v.t == V_STR && na == 2 && args[0].t == V_STR && args[1].t == V_STR)
        return replace(c, v, args[0], args[1]);
    if (!strcmp(f, "join") && v.t == V_LIST) {
        val sep = na ? to_str(c, args[0]) : vstr(c, "", 0, 0), acc = vstr(c, "", 0, 0);
        for (size_t i = 0; i < v.n && !c->failed; i++) {
            if (i)
                acc = concat(c, acc, sep);
            acc = concat(c, acc, to_str(c, v.items[i]));
        }
        return acc;
    }
    peft__chat_fail(c, PEFT_EUNSUPPORTED, "filter '%s' is not supported here", f);
    return v;
}

static val eval(ctx *c, const expr *e)
{
    if (c->failed)
        return (val){.t = V_UNDEF};
    switch (e->kind) {
    case E_LIT: return e->lit;
    case E_VAR: {
        const val *v = lookup(c, e->name);
        return v ? *v : (val){.t = V_UNDEF};
    }
    case E_ATTR: return attr(c, eval(c, e->a), e->name, 0);
    case E_ITEM: {
        val obj = eval(c, e->a), k = eval(c, e->b);
        if (c->failed)
            return obj;
        if (k.t == V_STR) {
            char key[256];
            snprintf(key, sizeof key, "%.*s", (int)k.n, k.s);
            return attr(c, obj, key, 1);
        }
        if (k.t == V_INT && (obj.t == V_LIST || obj.t == V_STR)) {
            size_t len = obj.t == V_STR ? peft__utf8_len(obj.s, obj.n) : obj.n;
            long long i = norm_index(k.i, len);
            if (i < 0 || (size_t)i >= len)
                return (val){.t = V_UNDEF};
            if (obj.t == V_LIST)
                return obj.items[i];
            size_t b = peft__utf8_offset(obj.s, obj.n, i), e2 = peft__utf8_offset(obj.s, obj.n, i + 1);
            return (val){.t = V_STR, .s = obj.s + b, .n = e2 - b};
        }
        if (obj.t == V_UNDEF)
            peft__chat_fail(c, PEFT_EFORMAT, "indexing an undefined value");
        return (val){.t = V_UNDEF};
    }
    case E_SLICE: {
        val obj = eval(c, e->a);
        val lo = e->b ? eval(c, e->b) : vint(0), hi = e->c ? eval(c, e->c) : vint((long long)obj.n);
        val st = e->d ? eval(c, e->d) : (val){.t = V_NONE};
        if (c->failed)
            return obj;
        if ((obj.t != V_LIST && obj.t != V_STR) || lo.t != V_INT || hi.t != V_INT ||
            (st.t != V_NONE && (st.t != V_INT || st.i == 0))) {
            peft__chat_fail(c, PEFT_EUNSUPPORTED, "slicing this value is not supported");
            return obj;
        }
        size_t len = obj.t == V_STR ? peft__utf8_len(obj.s, obj.n) : obj.n;
        if (st.t == V_INT && st.i != 1)
            return slice_step(c, obj, len, e->b ? &lo : NULL, e->c ? &hi : NULL, st.i);
        if (!e->c)
            hi = vint((long long)len);
        long long a = norm_index(lo.i, len), b = norm_index(hi.i, len);
        a = a < 0 ? 0 : a > (long long)len ? (long long)len : a;
        b = b < 0 ? 0 : b > (long long)len ? (long long)len : b;
        if (b < a)
            b = a;
        val r = obj;
        if (obj.t == V_LIST) {
            r.items = obj.items + a;
            r.n = (size_t)(b - a);
        } else {
            size_t ba = peft__utf8_offset(obj.s, obj.n, a), bb = peft__utf8_offset(obj.s, obj.n, b);
            r.s = obj.s + ba;
            r.n = bb - ba;
        }
        return r;
    }
    case E_CALL: return call(c, e);
    case E_FILTER: return filter(c, e);
    case E_TEST: {
        val v = eval(c, e->a);
        int r;
        const char *t = e->name;
        if (!strcmp(t, "defined"))
            r = v.t != V_UNDEF;
        else if (!strcmp(t, "undefined"))
            r = v.t == V_UNDEF;
        else if (!strcmp(t, "none"))
            r = v.t == V_NONE;
        else if (!strcmp(t, "string"))
            r = v.t == V_STR;
        else if (!strcmp(t, "number") || !strcmp(t, "integer"))
            r = v.t == V_INT;
        else if (!strcmp(t, "mapping"))
            r = v.t == V_DICT;
        else if (!strcmp(t, "sequence") || !strcmp(t, "iterable"))
            r = v.t == V_LIST || v.t == V_STR || v.t == V_DICT;
        else if (!strcmp(t, "true") || !strcmp(t, "false"))
            r = v.t == V_BOOL && v.i == (t[0] == 't');
        else if (!strcmp(t, "boolean"))
            r = v.t == V_BOOL;
        else {
            peft__chat_fail(c, PEFT_EUNSUPPORTED, "test 'is %s' is not supported", t);
            return v;
        }
        return vbool(e->negate ? !r : r);
    }
    case E_NOT: return vbool(!truthy(eval(c, e->a)));
    case E_NEG: {
        val v = eval(c, e->a);
        if (v.t != V_INT) {
            peft__chat_fail(c, PEFT_EUNSUPPORTED, "unary minus on a non-integer");
            return v;
        }
        return vint(-v.i);
    }
    case E_AND: {
        val a = eval(c, e->a);
        return truthy(a) ? eval(c, e->b) : a;
    }
    case E_OR: {
        val a = eval(c, e->a);
        return truthy(a) ? a : eval(c, e->b);
    }
    case E_COND: return truthy(eval(c, e->a)) ? eval(c, e->b) : e->c ? eval(c, e->c) : (val){.t = V_UNDEF};
    case E_LIST: {
        val *items = peft__chat_alloc(c, (size_t)(e->n_args ? e->n_args : 1) * sizeof *items);
        if (!items)
            return (val){.t = V_UNDEF};
        for (int i = 0; i < e->n_args; i++)
            items[i] = eval(c, e->args[i]);
        return (val){.t = V_LIST, .items = items, .n = (size_t)e->n_args};
    }
    case E_BIN: {
        val a = eval(c, e->a), b = eval(c, e->b);
        const char *op = e->name;
        if (c->failed)
            return a;
        if (!strcmp(op, "~"))
            return concat(c, to_str(c, a), to_str(c, b));
        if (!strcmp(op, "=="))
            return vbool(equal(a, b));
        if (!strcmp(op, "!="))
            return vbool(!equal(a, b));
        if (!strcmp(op, "in") || !strcmp(op, "not in")) {
            int r = 0;
            if (b.t == V_STR && a.t == V_STR)
                r = a.n == 0 || (a.n <= b.n && memmem(b.s, b.n, a.s, a.n) != NULL);
            else if (b.t == V_LIST)
                for (size_t i = 0; i < b.n && !r; i++)
                    r = equal(a, b.items[i]);
            else if (b.t == V_DICT && a.t == V_STR)
                for (size_t i = 0; i < b.n && !r; i++)
                    r = str_eq(a, b.keys[i]);
            else
                peft__chat_fail(c, PEFT_EUNSUPPORTED, "'in' on this value is not supported");
            return vbool(op[0] == 'n' ? !r : r);
        }
        if (!strcmp(op, "+") && a.t == V_STR && b.t == V_STR)
            return concat(c, a, b);
        if (!strcmp(op, "+") && a.t == V_LIST && b.t == V_LIST) {
            val *items = peft__chat_alloc(c, (a.n + b.n + 1) * sizeof *items);
            if (!items)
                return a;
            memcpy(items, a.items, a.n * sizeof *items);
            memcpy(items + a.n, b.items, b.n * sizeof *items);
            return (val){.t = V_LIST, .items = items, .n = a.n + b.n};
        }
        if ((a.t == V_INT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_BOOL)) {
            long long x = a.i, y = b.i;
            switch (op[0]) {
            case '+': return vint(x + y);
            case '-': return vint(x - y);
            case '*': return vint(x * y);
            case '%':
            case '/':
                if (y == 0) {
                    peft__chat_fail(c, PEFT_EINVAL, "division by zero");
                    return a;
                }
                if (op[0] == '%') /* Python: the sign of the divisor */
                    return vint(((x % y) + y) % y);
                if (op[1] == '/')
                    return vint(x / y - ((x % y != 0) && ((x < 0) != (y < 0))));
                peft__chat_fail(c, PEFT_EUNSUPPORTED, "true division gives a float, which is not supported");
                return a;
            case '<': return vbool(op[1] == '=' ? x <= y : x < y);
            case '>': return vbool(op[1] == '=' ? x >= y : x > y);
            }
        }
        if ((op[0] == '<' || op[0] == '>') && a.t == V_STR && b.t == V_STR) {
            size_t n = a.n < b.n ? a.n : b.n;
            int cmp = memcmp(a.s, b.s, n);
            if (!cmp)
                cmp = a.n < b.n ? -1 : a.n > b.n;
            return vbool(op[0] == '<' ? (op[1] == '=' ? cmp <= 0 : cmp < 0) : (op[1] == '=' ? cmp >= 0 : cmp > 0));
        }
        if (!strcmp(op, "*") && a.t == V_STR && b.t == V_INT && b.i >= 0 && b.i < 10000) {
            if (a.n * (size_t)b.i > CHAT_MAX_STRING) {
                peft__chat_fail(c, PEFT_ERANGE, "a string would exceed %u bytes", CHAT_MAX_STRING);
                return a;
            }
            char *o = peft__chat_alloc(c, a.n * (size_t)b.i + 1);
            if (!o)
                return a;
            for (long long i = 0; i < b.i; i++)
                memcpy(o + (size_t)i * a.n, a.s, a.n);
            o[a.n * (size_t)b.i] = '\0';
            return (val){.t = V_STR, .s = o, .n = a.n * (size_t)b.i};
        }
        peft__chat_fail(c, PEFT_EINVAL, "unsupported operands for '%s'", op);
        return a;
    }
    }
    peft__chat_fail(c, PEFT_EFORMAT, "bad expression");
    return (val){.t = V_UNDEF};
}

static int emit(ctx *c, const char *s, size_t n)
{
    if (c->out_len + n > 4 * (size_t)CHAT_MAX_STRING)
        return peft__chat_fail(c, PEFT_ERANGE, "the rendering would exceed %u bytes", 4 * CHAT_MAX_STRING);
    if (c->out_len + n + 1 > c->out_cap) {
        size_t nc = (c->out_len + n + 1) * 2;
        char *o = realloc(c->out, nc);
        if (!o)
            return peft__chat_fail(c, PEFT_ENOMEM, "out of memory");
        c->out = o;
        c->out_cap = nc;
    }
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
    c->out[c->out_len] = '\0';
    return PEFT_OK;
}

static int run(ctx *c, node **body, int n)
{
    if (++c->depth > 64) {
        c->depth--;
        return peft__chat_fail(c, PEFT_EFORMAT, "nesting too deep");
    }
    for (int i = 0; i < n && !c->failed; i++) {
        node *x = body[i];
        if (++c->steps > CHAT_MAX_STEPS) {
            peft__chat_fail(c, PEFT_ERANGE, "the template runs for more than %lld steps", CHAT_MAX_STEPS);
            break;
        }
        switch (x->kind) {
        case N_TEXT: emit(c, x->text, x->len); break;
        case N_OUT: {
            val v = to_str(c, eval(c, x->e));
            if (!c->failed)
                emit(c, v.s, v.n);
            break;
        }
        case N_SET: {
            val v = eval(c, x->e);
            if (c->failed)
                break;
            if (x->attr) { /* set ns.attr = v: the namespace is shared, so the change outlives loops */
                const val *ns = lookup(c, x->var);
                if (!ns || ns->t != V_NS) {
                    peft__chat_fail(c, PEFT_EUNSUPPORTED, "set %s.%s: only a namespace's attributes can be set",
                                    x->var, x->attr);
                    break;
                }
                ns_set(c, ns->ns, x->attr, v);
            } else {
                push_var(c, x->var, v);
            }
            break;
        }
        case N_IF:
            for (int k = 0; k < x->n_branches; k++)
                if (!x->conds[k] || truthy(eval(c, x->conds[k]))) {
                    run(c, x->bodies[k], x->n_body[k]); /* if blocks do not scope: their sets stay */
                    break;
                }
            break;
        case N_FOR: {
            val it = eval(c, x->e);
            if (c->failed)
                break;
            if (it.t == V_UNDEF || it.t == V_NONE)
                it = (val){.t = V_LIST, .n = 0};
            if (it.t != V_LIST) {
                peft__chat_fail(c, PEFT_EUNSUPPORTED, "looping over this value is not supported");
                break;
            }
            if (it.n == 0) {
                run(c, x->bodies[1], x->n_body[1]);
                break;
            }
            loop_state ls = {0, (long long)it.n};
            for (size_t k = 0; k < it.n && !c->failed; k++) {
                size_t mark = c->n_vars; /* a loop body's sets do not leak out of the iteration */
                ls.index0 = (long long)k;
                push_var(c, x->var, it.items[k]);
                push_var(c, "loop", (val){.t = V_LOOP, .loop = &ls});
                run(c, x->bodies[0], x->n_body[0]);
                c->n_vars = mark;
            }
            break;
        }
        }
    }
    c->depth--;
    return c->failed;
}

/* ---- the public entry ------------------------------------------------------------ */

int peft__chat_render(char **out, size_t *out_len, const char *tmpl, const peft__chat_msg *msgs, size_t n,
                      int add_generation_prompt, const char *bos, const char *eos)
{
    ctx c;
    memset(&c, 0, sizeof c);
    *out = NULL;
    *out_len = 0;
    node **body = NULL;
    int nb = 0;
    int code = peft__chat_parse(&c, tmpl, &body, &nb);
    if (!code) {
        /* messages: a list of {"role", "content"} */
        val *items = peft__chat_alloc(&c, (n ? n : 1) * sizeof *items);
        const char **keys = peft__chat_alloc(&c, 2 * sizeof *keys);
        if (items && keys) {
            keys[0] = "role";
            keys[1] = "content";
            for (size_t i = 0; i < n; i++) {
                val *kv = peft__chat_alloc(&c, 2 * sizeof *kv);
                if (!kv)
                    break;
                kv[0] = vstr(&c, msgs[i].role, strlen(msgs[i].role), 0);
                kv[1] = vstr(&c, msgs[i].content, strlen(msgs[i].content), 0);
                items[i] = (val){.t = V_DICT, .items = kv, .keys = keys, .n = 2};
            }
            push_var(&c, "messages", (val){.t = V_LIST, .items = items, .n = n});
            push_var(&c, "add_generation_prompt", vbool(add_generation_prompt));
            if (bos)
                push_var(&c, "bos_token", vstr(&c, bos, strlen(bos), 0));
            if (eos)
                push_var(&c, "eos_token", vstr(&c, eos, strlen(eos), 0));
            emit(&c, "", 0);
            run(&c, body, nb);
        }
        code = c.failed;
    }
    while (c.arena) {
        chunk *k = c.arena->next;
        free(c.arena);
        c.arena = k;
    }
    free(c.vars);
    if (code) {
        free(c.out);
        return code;
    }
    *out = c.out;
    *out_len = c.out_len;
    return PEFT_OK;
}
