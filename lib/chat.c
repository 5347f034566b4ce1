/*
 * Chat templates: the subset of Jinja2 that Hugging Face chat templates use, rendered as
 * transformers renders them (trim_blocks and lstrip_blocks on, raise_exception defined).
 *
 * Statements: for (with loop.index0/index/first/last/length/revindex), if/elif/else, set;
 * whitespace control with "-". Expressions: string/number/bool/none literals, lists,
 * variables, .attr and [key] and [a:b] access, + - * / % ~, comparisons, and/or/not, in,
 * "a if c else b", filters (trim, length, upper, lower, first, last, string, default,
 * capitalize, replace, join, tojson), tests (defined, undefined, none, string, number,
 * mapping, sequence, true, false), string methods (strip, lstrip, rstrip, startswith,
 * endswith, upper, lower, title, split, replace) and dict.get; raise_exception(msg).
 * Anything else fails with PEFT_EUNSUPPORTED naming the construct: never a wrong rendering.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "internal.h"

/* ---- values ---------------------------------------------------------------- */

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_STR, V_LIST, V_DICT, V_LOOP } vtype;

typedef struct val val;
struct val {
    vtype t;
    long long i;        /* bool, int */
    const char *s;      /* str (not NUL-terminated) */
    size_t n;           /* str length, list/dict size */
    const val *items;   /* list items, dict values */
    const char **keys;  /* dict keys (NUL-terminated) */
    const void *loop;   /* V_LOOP: the loop state */
};

typedef struct loop_state {
    long long index0, length;
} loop_state;

/* ---- arena -------------------------------------------------------------------- */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    char data[];
} chunk;

typedef struct ctx {
    chunk *arena;
    int failed;        /* a status code once something failed */
    /* output */
    char *out;
    size_t out_len, out_cap;
    /* variables: a stack of (name, value), frames marked by their start */
    struct var {
        const char *name;
        val v;
    } *vars;
    size_t n_vars, cap_vars;
    int depth;
    long long steps; /* nodes run and loop iterations: a hostile template cannot run forever */
} ctx;

#define CHAT_MAX_STEPS 10000000LL
#define CHAT_MAX_STRING (16u << 20)

static void *arena_alloc(ctx *c, size_t n)
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

static int fail(ctx *c, int code, const char *fmt, ...) PEFT_PRINTF(3, 4);
static int fail(ctx *c, int code, const char *fmt, ...)
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
        char *p = arena_alloc(c, n + 1);
        if (!p)
            return (val){.t = V_UNDEF};
        memcpy(p, s, n);
        p[n] = '\0';
        v.s = p;
    }
    return v;
}

static val vint(long long i) { return (val){.t = V_INT, .i = i}; }
static val vbool(int b) { return (val){.t = V_BOOL, .i = b != 0}; }

/* ---- template lexing ----------------------------------------------------------- */

enum { TK_END, TK_NAME, TK_STR, TK_INT, TK_OP };

typedef struct token {
    int type;
    const char *s; /* name/op text; string literal already unescaped (arena) */
    size_t n;
    long long i;
} token;

typedef struct node node;

/* expression nodes */
enum {
    E_LIT, E_VAR, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NOT, E_NEG, E_COND, E_LIST, E_AND, E_OR
};

typedef struct expr expr;
struct expr {
    int kind;
    val lit;
    const char *name; /* var, attr, call/filter/test name, binary operator */
    expr *a, *b, *c;  /* operands; slice: a[b:c]; cond: b if a else c */
    expr **args;
    int n_args;
    int negate; /* tests: "is not" */
};

/* template nodes */
enum { N_TEXT, N_OUT, N_IF, N_FOR, N_SET };

struct node {
    int kind;
    const char *text; /* N_TEXT */
    size_t len;
    expr *e;          /* N_OUT, N_SET value, N_FOR iterable */
    const char *var;  /* N_SET / N_FOR target */
    /* N_IF: conds[i] -> bodies[i]; a NULL cond is the else branch. N_FOR: bodies[0], else bodies[1] */
    expr **conds;
    node ***bodies;
    int *n_body;
    int n_branches;
    node *next_free;
};

typedef struct parser {
    ctx *c;
    const char *src, *p, *end;
    /* the current tag's expression tokens */
    token *toks;
    int n_toks, pos;
} parser;

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* Tokenize [s, e) of a tag's inside into p->toks. */
static int lex_expr(parser *p, const char *s, const char *e)
{
    ctx *c = p->c;
    int cap = 16;
    p->toks = arena_alloc(c, (size_t)cap * sizeof *p->toks);
    p->n_toks = 0;
    p->pos = 0;
    while (p->toks) {
        while (s < e && is_space(*s))
            s++;
        if (p->n_toks + 1 >= cap) {
            token *n = arena_alloc(c, (size_t)cap * 2 * sizeof *n);
            if (!n)
                return c->failed;
            memcpy(n, p->toks, (size_t)p->n_toks * sizeof *n);
            p->toks = n;
            cap *= 2;
        }
        token *t = &p->toks[p->n_toks];
        if (s >= e) {
            t->type = TK_END;
            return PEFT_OK;
        }
        if (isalpha((unsigned char)*s) || *s == '_') {
            const char *b = s;
            while (s < e && (isalnum((unsigned char)*s) || *s == '_'))
                s++;
            *t = (token){TK_NAME, b, (size_t)(s - b), 0};
        } else if (isdigit((unsigned char)*s)) {
            long long v = 0;
            while (s < e && isdigit((unsigned char)*s)) {
                if (v > 100000000000LL)
                    return fail(c, PEFT_EFORMAT, "number too large");
                v = v * 10 + (*s++ - '0');
            }
            if (s < e && *s == '.')
                return fail(c, PEFT_EUNSUPPORTED, "floating-point numbers are not supported");
            *t = (token){TK_INT, NULL, 0, v};
        } else if (*s == '\'' || *s == '"') {
            char q = *s++;
            char *buf = arena_alloc(c, (size_t)(e - s) + 1);
            size_t n = 0;
            if (!buf)
                return c->failed;
            while (s < e && *s != q) {
                char ch = *s++;
                if (ch == '\\' && s < e) {
                    char x = *s++;
                    ch = x == 'n' ? '\n' : x == 't' ? '\t' : x == 'r' ? '\r' : x;
                }
                buf[n++] = ch;
            }
            if (s >= e)
                return fail(c, PEFT_EFORMAT, "unterminated string literal");
            s++;
            buf[n] = '\0';
            *t = (token){TK_STR, buf, n, 0};
        } else {
            static const char *const two[] = {"==", "!=", "<=", ">=", "//", "**"};
            int len = 1;
            for (size_t k = 0; k < sizeof two / sizeof two[0]; k++)
                if (e - s >= 2 && s[0] == two[k][0] && s[1] == two[k][1])
                    len = 2;
            if (len == 1 && !strchr("+-*/%~()[].,:|<>={}", *s))
                return fail(c, PEFT_EFORMAT, "unexpected character '%c'", *s);
            *t = (token){TK_OP, s, (size_t)len, 0};
            s += len;
        }
        p->n_toks++;
    }
    return c->failed;
}

static token *peek(parser *p) { return &p->toks[p->pos]; }
static int is_op(const token *t, const char *op) { return t->type == TK_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n); }
static int is_name(const token *t, const char *nm)
{
    return t->type == TK_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n);
}
static int accept_op(parser *p, const char *op)
{
    if (is_op(peek(p), op)) {
        p->pos++;
        return 1;
    }
    return 0;
}
static int accept_name(parser *p, const char *nm)
{
    if (is_name(peek(p), nm)) {
        p->pos++;
        return 1;
    }
    return 0;
}

static char *tok_name(parser *p, const token *t)
{
    char *s = arena_alloc(p->c, t->n + 1);
    if (s) {
        memcpy(s, t->s, t->n);
        s[t->n] = '\0';
    }
    return s;
}

static expr *new_expr(parser *p, int kind)
{
    expr *e = arena_alloc(p->c, sizeof *e);
    if (e)
        memset(e, 0, sizeof *e);
    if (e)
        e->kind = kind;
    return e;
}

static expr *parse_expr(parser *p);

static int parse_args(parser *p, expr ***args, int *n)
{
    /* after "(": expr {, expr} ")" */
    expr *tmp[16];
    *n = 0;
    if (!accept_op(p, ")")) {
        do {
            if (*n == 16)
                return fail(p->c, PEFT_EUNSUPPORTED, "too many arguments");
            if (peek(p)->type == TK_NAME && p->pos + 1 < p->n_toks && is_op(&p->toks[p->pos + 1], "="))
                return fail(p->c, PEFT_EUNSUPPORTED, "keyword arguments are not supported");
            if (!(tmp[(*n)++] = parse_expr(p)))
                return p->c->failed;
        } while (accept_op(p, ","));
        if (!accept_op(p, ")"))
            return fail(p->c, PEFT_EFORMAT, "expected ')'");
    }
    *args = arena_alloc(p->c, (size_t)(*n ? *n : 1) * sizeof **args);
    if (!*args)
        return p->c->failed;
    memcpy(*args, tmp, (size_t)*n * sizeof *tmp);
    return PEFT_OK;
}

static expr *parse_primary(parser *p)
{
    token *t = peek(p);
    expr *e = NULL;
    if (t->type == TK_STR) {
        p->pos++;
        e = new_expr(p, E_LIT);
        if (e)
            e->lit = (val){.t = V_STR, .s = t->s, .n = t->n};
        /* adjacent string literals concatenate */
        while (e && peek(p)->type == TK_STR) {
            token *u = peek(p);
            p->pos++;
            char *s = arena_alloc(p->c, e->lit.n + u->n + 1);
            if (!s)
                return NULL;
            memcpy(s, e->lit.s, e->lit.n);
            memcpy(s + e->lit.n, u->s, u->n);
            e->lit.s = s;
            e->lit.n += u->n;
        }
    } else if (t->type == TK_INT) {
        p->pos++;
        if ((e = new_expr(p, E_LIT)))
            e->lit = vint(t->i);
    } else if (t->type == TK_NAME) {
        p->pos++;
        if (is_name(t, "true") || is_name(t, "True") || is_name(t, "false") || is_name(t, "False")) {
            if ((e = new_expr(p, E_LIT)))
                e->lit = vbool(t->s[0] == 't' || t->s[0] == 'T');
        } else if (is_name(t, "none") || is_name(t, "None")) {
            if ((e = new_expr(p, E_LIT)))
                e->lit = (val){.t = V_NONE};
        } else if (accept_op(p, "(")) {
            if ((e = new_expr(p, E_CALL)) && (e->name = tok_name(p, t)))
                if (parse_args(p, &e->args, &e->n_args))
                    return NULL;
            if (!e || !e->name)
                return NULL;
        } else if ((e = new_expr(p, E_VAR))) {
            e->name = tok_name(p, t);
        }
    } else if (accept_op(p, "(")) {
        e = parse_expr(p);
        if (e && !accept_op(p, ")"))
            return fail(p->c, PEFT_EFORMAT, "expected ')'"), NULL;
    } else if (accept_op(p, "[")) {
        expr *items[64];
        int n = 0;
        if (!accept_op(p, "]")) {
            do {
                if (n == 64)
                    return fail(p->c, PEFT_EUNSUPPORTED, "list literal too long"), NULL;
                if (!(items[n++] = parse_expr(p)))
                    return NULL;
            } while (accept_op(p, ","));
            if (!accept_op(p, "]"))
                return fail(p->c, PEFT_EFORMAT, "expected ']'"), NULL;
        }
        if ((e = new_expr(p, E_LIST)) && (e->args = arena_alloc(p->c, (size_t)(n ? n : 1) * sizeof *e->args))) {
            memcpy(e->args, items, (size_t)n * sizeof *items);
            e->n_args = n;
        }
    } else if (is_op(t, "{")) {
        return fail(p->c, PEFT_EUNSUPPORTED, "dict literals are not supported"), NULL;
    } else {
        return fail(p->c, PEFT_EFORMAT, "unexpected %s in an expression",
                    t->type == TK_END ? "end" : "token"),
               NULL;
    }
    /* postfix: .attr, [key], [a:b], (args) */
    while (e) {
        if (accept_op(p, ".")) {
            token *u = peek(p);
            if (u->type != TK_NAME)
                return fail(p->c, PEFT_EFORMAT, "expected a name after '.'"), NULL;
            p->pos++;
            expr *x = new_expr(p, E_ATTR);
            if (!x)
                return NULL;
            x->a = e;
            x->name = tok_name(p, u);
            e = x;
        } else if (accept_op(p, "[")) {
            expr *lo = NULL, *hi = NULL;
            if (!is_op(peek(p), ":") && !(lo = parse_expr(p)))
                return NULL;
            if (accept_op(p, ":")) {
                if (!is_op(peek(p), "]") && !(hi = parse_expr(p)))
                    return NULL;
                if (is_op(peek(p), ":"))
                    return fail(p->c, PEFT_EUNSUPPORTED, "slice steps are not supported"), NULL;
                expr *x = new_expr(p, E_SLICE);
                if (!x)
                    return NULL;
                x->a = e;
                x->b = lo;
                x->c = hi;
                e = x;
            } else {
                expr *x = new_expr(p, E_ITEM);
                if (!x)
                    return NULL;
                x->a = e;
                x->b = lo;
                e = x;
            }
            if (!accept_op(p, "]"))
                return fail(p->c, PEFT_EFORMAT, "expected ']'"), NULL;
        } else if (accept_op(p, "(")) {
            if (e->kind != E_ATTR)
                return fail(p->c, PEFT_EUNSUPPORTED, "calling this expression is not supported"), NULL;
            expr *x = new_expr(p, E_CALL);
            if (!x)
                return NULL;
            x->a = e->a; /* method call: receiver */
            x->name = e->name;
            if (parse_args(p, &x->args, &x->n_args))
                return NULL;
            e = x;
        } else {
            break;
        }
    }
    return e;
}

static expr *parse_unary(parser *p)
{
    if (accept_op(p, "-")) {
        expr *x = new_expr(p, E_NEG);
        if (x && !(x->a = parse_unary(p)))
            return NULL;
        return x;
    }
    expr *e = parse_primary(p);
    /* filters bind tighter than arithmetic: a | f(x) | g */
    while (e && accept_op(p, "|")) {
        token *u = peek(p);
        if (u->type != TK_NAME)
            return fail(p->c, PEFT_EFORMAT, "expected a filter name"), NULL;
        p->pos++;
        expr *x = new_expr(p, E_FILTER);
        if (!x)
            return NULL;
        x->a = e;
        x->name = tok_name(p, u);
        if (accept_op(p, "(") && parse_args(p, &x->args, &x->n_args))
            return NULL;
        e = x;
    }
    return e;
}

static expr *binary(parser *p, const char *op, expr *a, expr *b)
{
    if (!a || !b)
        return NULL;
    expr *x = new_expr(p, E_BIN);
    if (x) {
        x->name = op;
        x->a = a;
        x->b = b;
    }
    return x;
}

static expr *parse_mul(parser *p)
{
    expr *e = parse_unary(p);
    for (;;) {
        const char *op = accept_op(p, "*") ? "*" : accept_op(p, "//") ? "//" : accept_op(p, "/") ? "/"
                       : accept_op(p, "%") ? "%" : NULL;
        if (!op)
            return e;
        e = binary(p, op, e, parse_unary(p));
    }
}

static expr *parse_add(parser *p)
{
    expr *e = parse_mul(p);
    for (;;) {
        const char *op = accept_op(p, "+") ? "+" : accept_op(p, "-") ? "-" : accept_op(p, "~") ? "~" : NULL;
        if (!op)
            return e;
        e = binary(p, op, e, parse_mul(p));
    }
}

static expr *parse_cmp(parser *p)
{
    expr *e = parse_add(p);
    for (;;) {
        const char *op = accept_op(p, "==") ? "==" : accept_op(p, "!=") ? "!=" : accept_op(p, "<=") ? "<="
                       : accept_op(p, ">=") ? ">=" : accept_op(p, "<") ? "<" : accept_op(p, ">") ? ">" : NULL;
        if (!op && is_name(peek(p), "in")) {
            p->pos++;
            op = "in";
        } else if (!op && is_name(peek(p), "not") && p->pos + 1 < p->n_toks && is_name(&p->toks[p->pos + 1], "in")) {
            p->pos += 2;
            op = "not in";
        }
        if (op) {
            e = binary(p, op, e, parse_add(p));
            continue;
        }
        if (e && accept_name(p, "is")) {
            expr *x = new_expr(p, E_TEST);
            if (!x)
                return NULL;
            x->negate = accept_name(p, "not");
            token *u = peek(p);
            if (u->type != TK_NAME)
                return fail(p->c, PEFT_EFORMAT, "expected a test name after 'is'"), NULL;
            p->pos++;
            x->a = e;
            x->name = tok_name(p, u);
            e = x;
            continue;
        }
        return e;
    }
}

static expr *parse_not(parser *p)
{
    if (accept_name(p, "not")) {
        expr *x = new_expr(p, E_NOT);
        if (x && !(x->a = parse_not(p)))
            return NULL;
        return x;
    }
    return parse_cmp(p);
}

static expr *parse_and(parser *p)
{
    expr *e = parse_not(p);
    while (e && accept_name(p, "and")) {
        expr *x = new_expr(p, E_AND);
        if (!x)
            return NULL;
        x->a = e;
        if (!(x->b = parse_not(p)))
            return NULL;
        e = x;
    }
    return e;
}

static expr *parse_or(parser *p)
{
    expr *e = parse_and(p);
    while (e && accept_name(p, "or")) {
        expr *x = new_expr(p, E_OR);
        if (!x)
            return NULL;
        x->a = e;
        if (!(x->b = parse_and(p)))
            return NULL;
        e = x;
    }
    return e;
}

static expr *parse_expr(parser *p)
{
    expr *e = parse_or(p);
    if (e && accept_name(p, "if")) {
        expr *x = new_expr(p, E_COND);
        if (!x)
            return NULL;
        x->b = e;
        if (!(x->a = parse_or(p)))
            return NULL;
        if (accept_name(p, "else")) {
            if (!(x->c = parse_expr(p)))
                return NULL;
        }
        e = x;
    }
    return e;
}

/* ---- template parsing ------------------------------------------------------------- */

/* The next tag: kind '{' (expression), '%' (statement) or '#'; text before it; tag inside. */
typedef struct tag {
    char kind;
    const char *text;
    size_t text_len;
    const char *in, *in_end; /* inside the tag, "-" markers removed */
} tag;

/* Find the next tag. Applies "-" trimming, lstrip_blocks and trim_blocks (transformers' settings). */
static int next_tag(parser *p, tag *t)
{
    const char *s = p->p, *q = s;
    for (;;) {
        q = strchr(q, '{');
        if (!q || q >= p->end) {
            t->kind = 0;
            t->text = s;
            t->text_len = (size_t)(p->end - s);
            p->p = p->end;
            return PEFT_OK;
        }
        if (q + 1 < p->end && (q[1] == '{' || q[1] == '%' || q[1] == '#'))
            break;
        q++;
    }
    char kind = q[1];
    const char *text_end = q, *in = q + 2;
    if (in < p->end && *in == '-') { /* strip all whitespace before */
        in++;
        while (text_end > s && is_space(text_end[-1]))
            text_end--;
    } else if (in < p->end && *in == '+') {
        in++;
    } else if (kind != '{') {
        /* lstrip_blocks: whitespace between the start of the line and a block or comment tag */
        const char *b = text_end;
        while (b > s && b[-1] != '\n')
            b--;
        int line_start = b > s || s == p->src || s[-1] == '\n';
        const char *w = b;
        while (w < text_end && (*w == ' ' || *w == '\t' || *w == '\r' || *w == '\v' || *w == '\f'))
            w++;
        if (line_start && w == text_end)
            text_end = b;
    }
    const char *close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const char *e = in;
    /* find the closing delimiter outside string literals */
    char quote = 0;
    for (; e + 1 < p->end; e++) {
        if (kind != '#') {
            if (quote) {
                if (*e == '\\')
                    e++;
                else if (*e == quote)
                    quote = 0;
                continue;
            }
            if (*e == '\'' || *e == '"') {
                quote = *e;
                continue;
            }
        }
        if (e[0] == close[0] && e[1] == close[1])
            break;
    }
    if (e + 1 >= p->end)
        return fail(p->c, PEFT_EFORMAT, "unclosed '{%c' tag", kind);
    const char *in_end = e, *after = e + 2;
    if (in_end > in && in_end[-1] == '-') { /* strip all whitespace after */
        in_end--;
        while (after < p->end && is_space(*after))
            after++;
    } else if (in_end > in && in_end[-1] == '+') {
        in_end--;
    } else if (kind != '{' && after < p->end && *after == '\n') { /* trim_blocks */
        after++;
    } else if (kind != '{' && after + 1 < p->end && after[0] == '\r' && after[1] == '\n') {
        after += 2;
    }
    t->kind = kind;
    t->text = s;
    t->text_len = (size_t)(text_end - s);
    t->in = in;
    t->in_end = in_end;
    p->p = after;
    return PEFT_OK;
}

static node *new_node(parser *p, int kind)
{
    node *n = arena_alloc(p->c, sizeof *n);
    if (n) {
        memset(n, 0, sizeof *n);
        n->kind = kind;
    }
    return n;
}

/* Parse nodes until a statement whose keyword is in `stops` (returned in *stop, or "" at end). */
static int parse_body(parser *p, node ***out, int *n_out, const char *const *stops, char *stop, size_t stop_cap)
{
    ctx *c = p->c;
    node **list = NULL;
    int n = 0, cap = 0;
    stop[0] = '\0';
    for (;;) {
        tag t = {0};
        if (next_tag(p, &t))
            return c->failed;
        if (t.text_len) {
            node *x = new_node(p, N_TEXT);
            if (!x)
                return c->failed;
            x->text = t.text;
            x->len = t.text_len;
            if (n == cap) {
                node **nl = arena_alloc(c, (size_t)(cap ? cap * 2 : 8) * sizeof *nl);
                if (!nl)
                    return c->failed;
                if (n)
                    memcpy(nl, list, (size_t)n * sizeof *nl);
                list = nl;
                cap = cap ? cap * 2 : 8;
            }
            list[n++] = x;
        }
        if (!t.kind) {
            if (stops && stops[0])
                return fail(c, PEFT_EFORMAT, "missing {%% %s %%}", stops[0]);
            break;
        }
        if (t.kind == '#')
            continue;
        if (lex_expr(p, t.in, t.in_end))
            return c->failed;
        node *x = NULL;
        if (t.kind == '{') {
            x = new_node(p, N_OUT);
            if (!x || !(x->e = parse_expr(p)))
                return c->failed ? c->failed : fail(c, PEFT_EFORMAT, "bad expression");
            if (peek(p)->type != TK_END)
                return fail(c, PEFT_EFORMAT, "unexpected text after an expression");
        } else {
            token *kw = peek(p);
            if (kw->type != TK_NAME)
                return fail(c, PEFT_EFORMAT, "expected a statement");
            int is_stop = 0;
            for (int k = 0; stops && stops[k]; k++)
                if (is_name(kw, stops[k]))
                    is_stop = 1;
            if (is_stop) {
                snprintf(stop, stop_cap, "%.*s", (int)kw->n, kw->s);
                p->pos++;
                break;
            }
            p->pos++;
            if (is_name(kw, "if")) {
                x = new_node(p, N_IF);
                if (!x)
                    return c->failed;
                expr *conds[64];
                node **bodies[64];
                int nb[64], k = 0;
                expr *cond = parse_expr(p);
                for (;;) {
                    if (!cond || peek(p)->type != TK_END)
                        return c->failed ? c->failed : fail(c, PEFT_EFORMAT, "bad if/elif condition");
                    if (k >= 63)
                        return fail(c, PEFT_EUNSUPPORTED, "too many elif branches");
                    static const char *const st[] = {"endif", "elif", "else", NULL};
                    char s2[16];
                    conds[k] = cond;
                    if (parse_body(p, &bodies[k], &nb[k], st, s2, sizeof s2))
                        return c->failed;
                    k++;
                    if (!strcmp(s2, "endif"))
                        break;
                    if (!strcmp(s2, "elif")) {
                        cond = parse_expr(p);
                        continue;
                    }
                    static const char *const st2[] = {"endif", NULL};
                    if (peek(p)->type != TK_END)
                        return fail(c, PEFT_EFORMAT, "unexpected text after else");
                    conds[k] = NULL;
                    if (parse_body(p, &bodies[k], &nb[k], st2, s2, sizeof s2))
                        return c->failed;
                    k++;
                    break;
                }
                x->conds = arena_alloc(c, (size_t)k * sizeof *x->conds);
                x->bodies = arena_alloc(c, (size_t)k * sizeof *x->bodies);
                x->n_body = arena_alloc(c, (size_t)k * sizeof *x->n_body);
                if (!x->conds || !x->bodies || !x->n_body)
                    return c->failed;
                memcpy(x->conds, conds, (size_t)k * sizeof *conds);
                memcpy(x->bodies, bodies, (size_t)k * sizeof *bodies);
                memcpy(x->n_body, nb, (size_t)k * sizeof *nb);
                x->n_branches = k;
            } else if (is_name(kw, "for")) {
                x = new_node(p, N_FOR);
                token *v = peek(p);
                if (!x || v->type != TK_NAME)
                    return c->failed ? c->failed : fail(c, PEFT_EFORMAT, "expected a loop variable");
                p->pos++;
                if (is_op(peek(p), ","))
                    return fail(c, PEFT_EUNSUPPORTED, "tuple loop variables are not supported");
                x->var = tok_name(p, v);
                if (!accept_name(p, "in"))
                    return fail(c, PEFT_EFORMAT, "expected 'in'");
                if (!(x->e = parse_or(p)))
                    return c->failed;
                if (peek(p)->type != TK_END)
                    return fail(c, PEFT_EUNSUPPORTED, "loop filters and recursive loops are not supported");
                static const char *const st[] = {"endfor", "else", NULL};
                char s2[16];
                x->bodies = arena_alloc(c, 2 * sizeof *x->bodies);
                x->n_body = arena_alloc(c, 2 * sizeof *x->n_body);
                if (!x->bodies || !x->n_body)
                    return c->failed;
                x->n_body[1] = 0;
                x->bodies[1] = NULL;
                if (parse_body(p, &x->bodies[0], &x->n_body[0], st, s2, sizeof s2))
                    return c->failed;
                if (!strcmp(s2, "else")) {
                    static const char *const st2[] = {"endfor", NULL};
                    if (parse_body(p, &x->bodies[1], &x->n_body[1], st2, s2, sizeof s2))
                        return c->failed;
                }
            } else if (is_name(kw, "set")) {
                x = new_node(p, N_SET);
                token *v = peek(p);
                if (!x || v->type != TK_NAME)
                    return c->failed ? c->failed : fail(c, PEFT_EFORMAT, "expected a variable after set");
                p->pos++;
                if (is_op(peek(p), "."))
                    return fail(c, PEFT_EUNSUPPORTED, "namespace attributes (set ns.x) are not supported");
                x->var = tok_name(p, v);
                if (!accept_op(p, "="))
                    return fail(c, PEFT_EUNSUPPORTED, "block set is not supported");
                if (!(x->e = parse_expr(p)))
                    return c->failed;
            } else if (is_name(kw, "generation") || is_name(kw, "endgeneration")) {
                continue; /* assistant-mask markers: rendering ignores them */
            } else {
                return fail(c, PEFT_EUNSUPPORTED, "statement '%.*s' is not supported", (int)kw->n, kw->s);
            }
            if (peek(p)->type != TK_END)
                return fail(c, PEFT_EFORMAT, "unexpected text in a statement");
        }
        if (n == cap) {
            node **nl = arena_alloc(c, (size_t)(cap ? cap * 2 : 8) * sizeof *nl);
            if (!nl)
                return c->failed;
            if (n)
                memcpy(nl, list, (size_t)n * sizeof *nl);
            list = nl;
            cap = cap ? cap * 2 : 8;
        }
        list[n++] = x;
    }
    *out = list;
    *n_out = n;
    return PEFT_OK;
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
    case V_LOOP: return 1;
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
            return fail(c, PEFT_ENOMEM, "out of memory");
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
    default: fail(c, PEFT_EUNSUPPORTED, "printing a list or a mapping is not supported"); return vstr(c, "", 0, 0);
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
        fail(c, PEFT_ERANGE, "a string would exceed %u bytes", CHAT_MAX_STRING);
        return (val){.t = V_UNDEF};
    }
    char *s = arena_alloc(c, a.n + b.n + 1);
    if (!s)
        return (val){.t = V_UNDEF};
    memcpy(s, a.s, a.n);
    memcpy(s + a.n, b.s, b.n);
    s[a.n + b.n] = '\0';
    return (val){.t = V_STR, .s = s, .n = a.n + b.n};
}

static val eval(ctx *c, const expr *e);

static uint32_t utf8_next(const char *s, size_t n, size_t *i);

/* Python's str.isspace() */
static int py_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static int in_chars(uint32_t cp, val chars)
{
    size_t i = 0;
    while (i < chars.n)
        if (utf8_next(chars.s, chars.n, &i) == cp)
            return 1;
    return 0;
}

/* Python's str.strip/lstrip/rstrip: whitespace, or the code points of chars */
static val strip(ctx *c, val s, int left, int right, val chars)
{
    (void)c;
    size_t b = 0, n = s.n;
    while (left && b < n) {
        size_t j = b;
        uint32_t cp = utf8_next(s.s, n, &j);
        if (!(chars.t == V_STR ? in_chars(cp, chars) : py_space(cp)))
            break;
        b = j;
    }
    while (right && n > b) {
        size_t j = n - 1;
        while (j > b && ((unsigned char)s.s[j] & 0xc0) == 0x80)
            j--;
        size_t k = j;
        uint32_t cp = utf8_next(s.s, n, &k);
        if (!(chars.t == V_STR ? in_chars(cp, chars) : py_space(cp)))
            break;
        n = j;
    }
    return (val){.t = V_STR, .s = s.s + b, .n = n - b};
}

/* ---- UTF-8 and case mapping ---- */

/* Decode the code point at s[*i] (advancing *i); invalid bytes decode as themselves. */
static uint32_t utf8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t c = u[*i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (len == 1 || *i + (size_t)len > n) {
        (*i)++;
        return c;
    }
    c &= 0x7fu >> len;
    for (int k = 1; k < len; k++)
        c = (c << 6) | (u[*i + (size_t)k] & 0x3fu);
    *i += (size_t)len;
    return c;
}

static size_t utf8_put(char *o, uint32_t c)
{
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xc0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xe0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        o[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3f));
    o[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

/* Byte offset of code point index k in s (clamped to the length). */
static size_t utf8_offset(val s, long long k)
{
    size_t i = 0;
    while (k-- > 0 && i < s.n)
        utf8_next(s.s, s.n, &i);
    return i;
}

static size_t utf8_len(val s)
{
    size_t i = 0, n = 0;
    while (i < s.n) {
        utf8_next(s.s, s.n, &i);
        n++;
    }
    return n;
}

/* Simple case pairs (upper, lower) of the scripts mapped here: Latin-1, Latin Extended-A and
   Additional, Greek, Cyrillic. *cased tells whether c has case; -1 when it lies in a cased
   block not mapped here, or its Python mapping is not one-to-one (then the caller refuses). */
static void case_pair(uint32_t c, uint32_t *up, uint32_t *lo, int *cased)
{
    *up = *lo = c;
    *cased = 0;
    if (c < 0x80) {
        if (c >= 'a' && c <= 'z')
            *up = c - 32, *cased = 1;
        else if (c >= 'A' && c <= 'Z')
            *lo = c + 32, *cased = 1;
        return;
    }
    if (c == 0xdf || c == 0x130 || c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17f || c == 0x390 ||
        c == 0x3b0 || c == 0x3a3 || c == 0x3c2 || c == 0xb5 || c == 0x1e96 || c == 0x1e97 || c == 0x1e98 ||
        c == 0x1e99 || c == 0x1e9a || c == 0x1e9b || c == 0x1e9e) {
        *cased = -1; /* special mappings (sharp s, dotted I, final sigma, ...) */
        return;
    }
    if (c >= 0xc0 && c <= 0xde && c != 0xd7)
        *lo = c + 32, *cased = 1;
    else if (c >= 0xe0 && c <= 0xfe && c != 0xf7)
        *up = c - 32, *cased = 1;
    else if (c == 0xff)
        *up = 0x178, *cased = 1;
    else if (c == 0x178)
        *lo = 0xff, *cased = 1;
    else if ((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177) || (c >= 0x1e00 && c <= 0x1e95) ||
             (c >= 0x1ea0 && c <= 0x1eff)) {
        *cased = 1;
        if (c % 2)
            *up = c - 1;
        else
            *lo = c + 1;
    } else if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) {
        *cased = 1;
        if (c % 2)
            *lo = c + 1;
        else
            *up = c - 1;
    } else if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) {
        *lo = c + 32, *cased = 1;
    } else if (c >= 0x3b1 && c <= 0x3c9) {
        *up = c - 32, *cased = 1;
    } else if (c == 0x386 || (c >= 0x388 && c <= 0x38a) || c == 0x38c || c == 0x38e || c == 0x38f) {
        *lo = c == 0x386 ? 0x3ac : c == 0x38c ? 0x3cc : c >= 0x38e ? c + 63 : c + 37, *cased = 1;
    } else if (c == 0x3ac || (c >= 0x3ad && c <= 0x3af) || c == 0x3cc || c == 0x3cd || c == 0x3ce) {
        *up = c == 0x3ac ? 0x386 : c == 0x3cc ? 0x38c : c >= 0x3cd ? c - 63 : c - 37, *cased = 1;
    } else if (c >= 0x410 && c <= 0x42f) {
        *lo = c + 32, *cased = 1;
    } else if (c >= 0x430 && c <= 0x44f) {
        *up = c - 32, *cased = 1;
    } else if (c >= 0x400 && c <= 0x40f) {
        *lo = c + 80, *cased = 1;
    } else if (c >= 0x450 && c <= 0x45f) {
        *up = c - 80, *cased = 1;
    } else if ((c >= 0x180 && c <= 0x2af) || (c >= 0x370 && c <= 0x3ff) || (c >= 0x460 && c <= 0x52f) ||
               (c >= 0x531 && c <= 0x587) || (c >= 0x10a0 && c <= 0x10ff) || (c >= 0x13a0 && c <= 0x13ff) ||
               (c >= 0x1c80 && c <= 0x1cbf) || (c >= 0x1d00 && c <= 0x1dbf) || (c >= 0x1e00 && c <= 0x1fff) ||
               (c >= 0x2100 && c <= 0x218f) || (c >= 0x24b6 && c <= 0x24e9) || (c >= 0x2c00 && c <= 0x2d2f) ||
               (c >= 0xa640 && c <= 0xa69f) || (c >= 0xa720 && c <= 0xa7ff) || (c >= 0xab30 && c <= 0xabbf) ||
               (c >= 0xfb00 && c <= 0xfb17) || (c >= 0xff21 && c <= 0xff5a) || (c >= 0x10400 && c <= 0x104ff) ||
               (c >= 0x10c80 && c <= 0x10cff) || (c >= 0x118a0 && c <= 0x118ff) || (c >= 0x16e40 && c <= 0x16e9f) ||
               (c >= 0x1e900 && c <= 0x1e95f)) {
        *cased = -1;
    }
}

/* mode: 0 lower, 1 upper, 2 Python str.title(), 3 capitalize, 4 Jinja's title filter */
static val case_map(ctx *c, val s, int mode)
{
    char *o = arena_alloc(c, s.n * 2 + 4);
    if (!o)
        return (val){.t = V_UNDEF};
    size_t i = 0, n = 0;
    int prev_cased = 0, first = 1, word_start = 1;
    while (i < s.n) {
        uint32_t cp = utf8_next(s.s, s.n, &i), up, lo;
        int cased;
        case_pair(cp, &up, &lo, &cased);
        if (cased < 0) {
            fail(c, PEFT_EUNSUPPORTED, "case mapping of U+%04X is not supported", (unsigned)cp);
            return (val){.t = V_UNDEF};
        }
        uint32_t r = cp;
        if (mode == 0)
            r = lo;
        else if (mode == 1)
            r = up;
        else if (mode == 2)
            r = cased ? (prev_cased ? lo : up) : cp;
        else if (mode == 3)
            r = first ? up : lo;
        else
            r = word_start ? up : lo;
        prev_cased = cased;
        first = 0;
        word_start = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || py_space(cp);
        n += utf8_put(o + n, r);
    }
    o[n] = '\0';
    return (val){.t = V_STR, .s = o, .n = n};
}

static val replace(ctx *c, val s, val from, val to)
{
    if (from.n == 0)
        return s;
    size_t n = 0;
    char *o = arena_alloc(c, s.n * (to.n > from.n ? to.n / from.n + 1 : 1) + 1);
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
        fail(c, PEFT_EUNSUPPORTED, "tojson of a list or mapping is not supported");
        return vstr(c, "", 0, 0);
    }
    char *o = arena_alloc(c, v.n * 6 + 3);
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
            fail(c, PEFT_EUNSUPPORTED, "tojson of non-ASCII text is not supported");
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
        fail(c, PEFT_EUNSUPPORTED, "loop.%s is not supported", name);
        return (val){.t = V_UNDEF};
    }
    if (obj.t == V_UNDEF) {
        fail(c, PEFT_EFORMAT, "'%s' of an undefined value", name);
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

static val call(ctx *c, const expr *e)
{
    val args[16];
    for (int i = 0; i < e->n_args; i++) {
        args[i] = eval(c, e->args[i]);
        if (c->failed)
            return (val){.t = V_UNDEF};
    }
    int na = e->n_args;
    if (!e->a) { /* a global function */
        if (!strcmp(e->name, "raise_exception")) {
            val m = na ? to_str(c, args[0]) : vstr(c, "", 0, 0);
            fail(c, PEFT_EINVAL, "%.*s", (int)m.n, m.s);
            return (val){.t = V_UNDEF};
        }
        if (!strcmp(e->name, "range") && na == 1 && args[0].t == V_INT && args[0].i >= 0 && args[0].i < 100000) {
            val *items = arena_alloc(c, (size_t)(args[0].i ? args[0].i : 1) * sizeof *items);
            if (!items)
                return (val){.t = V_UNDEF};
            for (long long i = 0; i < args[0].i; i++)
                items[i] = vint(i);
            return (val){.t = V_LIST, .items = items, .n = (size_t)args[0].i};
        }
        fail(c, PEFT_EUNSUPPORTED, "function %s() is not supported", e->name);
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
            val *items = arena_alloc(c, cnt * sizeof *items);
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
    fail(c, PEFT_EUNSUPPORTED, "method %s() is not supported on this value", e->name);
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
    if (!strcmp(f, "default") || !strcmp(f, "d"))
        return v.t == V_UNDEF ? (na ? args[0] : vstr(c, "", 0, 0)) : v;
    if (v.t == V_UNDEF) {
        fail(c, PEFT_EFORMAT, "filter %s on an undefined value", f);
        return v;
    }
    if (!strcmp(f, "trim") && v.t == V_STR)
        return strip(c, v, 1, 1, na ? args[0] : (val){.t = V_NONE});
    if ((!strcmp(f, "length") || !strcmp(f, "count")) && (v.t == V_STR || v.t == V_LIST || v.t == V_DICT))
        return vint((long long)(v.t == V_STR ? utf8_len(v) : v.n));
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
    fail(c, PEFT_EUNSUPPORTED, "filter '%s' is not supported here", f);
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
            size_t len = obj.t == V_STR ? utf8_len(obj) : obj.n;
            long long i = norm_index(k.i, len);
            if (i < 0 || (size_t)i >= len)
                return (val){.t = V_UNDEF};
            if (obj.t == V_LIST)
                return obj.items[i];
            size_t b = utf8_offset(obj, i), e2 = utf8_offset(obj, i + 1);
            return (val){.t = V_STR, .s = obj.s + b, .n = e2 - b};
        }
        if (obj.t == V_UNDEF)
            fail(c, PEFT_EFORMAT, "indexing an undefined value");
        return (val){.t = V_UNDEF};
    }
    case E_SLICE: {
        val obj = eval(c, e->a);
        val lo = e->b ? eval(c, e->b) : vint(0), hi = e->c ? eval(c, e->c) : vint((long long)obj.n);
        if (c->failed)
            return obj;
        if ((obj.t != V_LIST && obj.t != V_STR) || lo.t != V_INT || hi.t != V_INT) {
            fail(c, PEFT_EUNSUPPORTED, "slicing this value is not supported");
            return obj;
        }
        size_t len = obj.t == V_STR ? utf8_len(obj) : obj.n;
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
            size_t ba = utf8_offset(obj, a), bb = utf8_offset(obj, b);
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
            fail(c, PEFT_EUNSUPPORTED, "test 'is %s' is not supported", t);
            return v;
        }
        return vbool(e->negate ? !r : r);
    }
    case E_NOT: return vbool(!truthy(eval(c, e->a)));
    case E_NEG: {
        val v = eval(c, e->a);
        if (v.t != V_INT) {
            fail(c, PEFT_EUNSUPPORTED, "unary minus on a non-integer");
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
        val *items = arena_alloc(c, (size_t)(e->n_args ? e->n_args : 1) * sizeof *items);
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
                fail(c, PEFT_EUNSUPPORTED, "'in' on this value is not supported");
            return vbool(op[0] == 'n' ? !r : r);
        }
        if (!strcmp(op, "+") && a.t == V_STR && b.t == V_STR)
            return concat(c, a, b);
        if (!strcmp(op, "+") && a.t == V_LIST && b.t == V_LIST) {
            val *items = arena_alloc(c, (a.n + b.n + 1) * sizeof *items);
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
                    fail(c, PEFT_EINVAL, "division by zero");
                    return a;
                }
                if (op[0] == '%') /* Python: the sign of the divisor */
                    return vint(((x % y) + y) % y);
                if (op[1] == '/')
                    return vint(x / y - ((x % y != 0) && ((x < 0) != (y < 0))));
                fail(c, PEFT_EUNSUPPORTED, "true division gives a float, which is not supported");
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
                fail(c, PEFT_ERANGE, "a string would exceed %u bytes", CHAT_MAX_STRING);
                return a;
            }
            char *o = arena_alloc(c, a.n * (size_t)b.i + 1);
            if (!o)
                return a;
            for (long long i = 0; i < b.i; i++)
                memcpy(o + (size_t)i * a.n, a.s, a.n);
            o[a.n * (size_t)b.i] = '\0';
            return (val){.t = V_STR, .s = o, .n = a.n * (size_t)b.i};
        }
        fail(c, PEFT_EINVAL, "unsupported operands for '%s'", op);
        return a;
    }
    }
    fail(c, PEFT_EFORMAT, "bad expression");
    return (val){.t = V_UNDEF};
}

static int emit(ctx *c, const char *s, size_t n)
{
    if (c->out_len + n > 4 * (size_t)CHAT_MAX_STRING)
        return fail(c, PEFT_ERANGE, "the rendering would exceed %u bytes", 4 * CHAT_MAX_STRING);
    if (c->out_len + n + 1 > c->out_cap) {
        size_t nc = (c->out_len + n + 1) * 2;
        char *o = realloc(c->out, nc);
        if (!o)
            return fail(c, PEFT_ENOMEM, "out of memory");
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
        return fail(c, PEFT_EFORMAT, "nesting too deep");
    }
    for (int i = 0; i < n && !c->failed; i++) {
        node *x = body[i];
        if (++c->steps > CHAT_MAX_STEPS) {
            fail(c, PEFT_ERANGE, "the template runs for more than %lld steps", CHAT_MAX_STEPS);
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
            if (!c->failed)
                push_var(c, x->var, v);
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
                fail(c, PEFT_EUNSUPPORTED, "looping over this value is not supported");
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
    parser p = {.c = &c, .src = tmpl, .p = tmpl, .end = tmpl + strlen(tmpl)};
    node **body = NULL;
    int nb = 0;
    char stop[16];
    int code = parse_body(&p, &body, &nb, NULL, stop, sizeof stop);
    if (!code && stop[0])
        code = fail(&c, PEFT_EFORMAT, "unexpected {%% %s %%}", stop);
    if (!code) {
        /* messages: a list of {"role", "content"} */
        val *items = arena_alloc(&c, (n ? n : 1) * sizeof *items);
        const char **keys = arena_alloc(&c, 2 * sizeof *keys);
        if (items && keys) {
            keys[0] = "role";
            keys[1] = "content";
            for (size_t i = 0; i < n; i++) {
                val *kv = arena_alloc(&c, 2 * sizeof *kv);
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
