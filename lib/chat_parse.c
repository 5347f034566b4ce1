/*
 * Chat templates: the lexer and the parser (chat_internal.h's syntax tree), with Jinja's
 * whitespace control and the trim_blocks / lstrip_blocks settings transformers uses.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_internal.h"

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* Tokenize [s, e) of a tag's inside into p->toks. */
static int lex_expr(parser *p, const char *s, const char *e)
{
    ctx *c = p->c;
    int cap = 16;
    p->toks = peft__chat_alloc(c, (size_t)cap * sizeof *p->toks);
    p->n_toks = 0;
    p->pos = 0;
    while (p->toks) {
        while (s < e && is_space(*s))
            s++;
        if (p->n_toks + 1 >= cap) {
            token *n = peft__chat_alloc(c, (size_t)cap * 2 * sizeof *n);
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
                    return peft__chat_fail(c, PEFT_EFORMAT, "number too large");
                v = v * 10 + (*s++ - '0');
            }
            if (s < e && *s == '.')
                return peft__chat_fail(c, PEFT_EUNSUPPORTED, "floating-point numbers are not supported");
            *t = (token){TK_INT, NULL, 0, v};
        } else if (*s == '\'' || *s == '"') {
            char q = *s++;
            char *buf = peft__chat_alloc(c, (size_t)(e - s) + 1);
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
                return peft__chat_fail(c, PEFT_EFORMAT, "unterminated string literal");
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
                return peft__chat_fail(c, PEFT_EFORMAT, "unexpected character '%c'", *s);
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
    char *s = peft__chat_alloc(p->c, t->n + 1);
    if (s) {
        memcpy(s, t->s, t->n);
        s[t->n] = '\0';
    }
    return s;
}

static expr *new_expr(parser *p, int kind)
{
    expr *e = peft__chat_alloc(p->c, sizeof *e);
    if (e)
        memset(e, 0, sizeof *e);
    if (e)
        e->kind = kind;
    return e;
}

static expr *parse_expr(parser *p);

static int parse_args(parser *p, expr ***args, const char ***kw, int *n)
{
    /* after "(": [name=]expr {, [name=]expr} ")"; keyword names in *kw (NULL when none is given) */
    expr *tmp[16];
    const char *names[16];
    int any_kw = 0;
    *n = 0;
    *kw = NULL;
    if (!accept_op(p, ")")) {
        do {
            if (*n == 16)
                return peft__chat_fail(p->c, PEFT_EUNSUPPORTED, "too many arguments");
            names[*n] = NULL;
            if (peek(p)->type == TK_NAME && p->pos + 1 < p->n_toks && is_op(&p->toks[p->pos + 1], "=")) {
                if (!(names[*n] = tok_name(p, peek(p))))
                    return p->c->failed;
                p->pos += 2;
                any_kw = 1;
            } else if (any_kw) {
                return peft__chat_fail(p->c, PEFT_EFORMAT, "a positional argument after a keyword argument");
            }
            if (!(tmp[(*n)++] = parse_expr(p)))
                return p->c->failed;
        } while (accept_op(p, ","));
        if (!accept_op(p, ")"))
            return peft__chat_fail(p->c, PEFT_EFORMAT, "expected ')'");
    }
    *args = peft__chat_alloc(p->c, (size_t)(*n ? *n : 1) * sizeof **args);
    if (!*args || (any_kw && !(*kw = peft__chat_alloc(p->c, (size_t)*n * sizeof **kw))))
        return p->c->failed;
    memcpy(*args, tmp, (size_t)*n * sizeof *tmp);
    if (any_kw)
        memcpy(*kw, names, (size_t)*n * sizeof *names);
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
            char *s = peft__chat_alloc(p->c, e->lit.n + u->n + 1);
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
                if (parse_args(p, &e->args, &e->kw, &e->n_args))
                    return NULL;
            if (!e || !e->name)
                return NULL;
        } else if ((e = new_expr(p, E_VAR))) {
            e->name = tok_name(p, t);
        }
    } else if (accept_op(p, "(")) {
        e = parse_expr(p);
        if (e && !accept_op(p, ")"))
            return peft__chat_fail(p->c, PEFT_EFORMAT, "expected ')'"), NULL;
    } else if (accept_op(p, "[")) {
        expr *items[64];
        int n = 0;
        if (!accept_op(p, "]")) {
            do {
                if (n == 64)
                    return peft__chat_fail(p->c, PEFT_EUNSUPPORTED, "list literal too long"), NULL;
                if (!(items[n++] = parse_expr(p)))
                    return NULL;
            } while (accept_op(p, ","));
            if (!accept_op(p, "]"))
                return peft__chat_fail(p->c, PEFT_EFORMAT, "expected ']'"), NULL;
        }
        if ((e = new_expr(p, E_LIST)) && (e->args = peft__chat_alloc(p->c, (size_t)(n ? n : 1) * sizeof *e->args))) {
            memcpy(e->args, items, (size_t)n * sizeof *items);
            e->n_args = n;
        }
    } else if (is_op(t, "{")) {
        return peft__chat_fail(p->c, PEFT_EUNSUPPORTED, "dict literals are not supported"), NULL;
    } else {
        return peft__chat_fail(p->c, PEFT_EFORMAT, "unexpected %s in an expression",
                    t->type == TK_END ? "end" : "token"),
               NULL;
    }
    /* postfix: .attr, [key], [a:b], (args) */
    while (e) {
        if (accept_op(p, ".")) {
            token *u = peek(p);
            if (u->type != TK_NAME)
                return peft__chat_fail(p->c, PEFT_EFORMAT, "expected a name after '.'"), NULL;
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
                expr *step = NULL;
                if (!is_op(peek(p), "]") && !is_op(peek(p), ":") && !(hi = parse_expr(p)))
                    return NULL;
                if (accept_op(p, ":") && !is_op(peek(p), "]") && !(step = parse_expr(p)))
                    return NULL;
                expr *x = new_expr(p, E_SLICE);
                if (!x)
                    return NULL;
                x->a = e;
                x->b = lo;
                x->c = hi;
                x->d = step;
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
                return peft__chat_fail(p->c, PEFT_EFORMAT, "expected ']'"), NULL;
        } else if (accept_op(p, "(")) {
            if (e->kind != E_ATTR)
                return peft__chat_fail(p->c, PEFT_EUNSUPPORTED, "calling this expression is not supported"), NULL;
            expr *x = new_expr(p, E_CALL);
            if (!x)
                return NULL;
            x->a = e->a; /* method call: receiver */
            x->name = e->name;
            if (parse_args(p, &x->args, &x->kw, &x->n_args))
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
            return peft__chat_fail(p->c, PEFT_EFORMAT, "expected a filter name"), NULL;
        p->pos++;
        expr *x = new_expr(p, E_FILTER);
        if (!x)
            return NULL;
        x->a = e;
        x->name = tok_name(p, u);
        if (accept_op(p, "(") && parse_args(p, &x->args, &x->kw, &x->n_args))
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
                return peft__chat_fail(p->c, PEFT_EFORMAT, "expected a test name after 'is'"), NULL;
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
        return peft__chat_fail(p->c, PEFT_EFORMAT, "unclosed '{%c' tag", kind);
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
    node *n = peft__chat_alloc(p->c, sizeof *n);
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
                node **nl = peft__chat_alloc(c, (size_t)(cap ? cap * 2 : 8) * sizeof *nl);
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
                return peft__chat_fail(c, PEFT_EFORMAT, "missing {%% %s %%}", stops[0]);
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
                return c->failed ? c->failed : peft__chat_fail(c, PEFT_EFORMAT, "bad expression");
            if (peek(p)->type != TK_END)
                return peft__chat_fail(c, PEFT_EFORMAT, "unexpected text after an expression");
        } else {
            token *kw = peek(p);
            if (kw->type != TK_NAME)
                return peft__chat_fail(c, PEFT_EFORMAT, "expected a statement");
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
                        return c->failed ? c->failed : peft__chat_fail(c, PEFT_EFORMAT, "bad if/elif condition");
                    if (k >= 63)
                        return peft__chat_fail(c, PEFT_EUNSUPPORTED, "too many elif branches");
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
                        return peft__chat_fail(c, PEFT_EFORMAT, "unexpected text after else");
                    conds[k] = NULL;
                    if (parse_body(p, &bodies[k], &nb[k], st2, s2, sizeof s2))
                        return c->failed;
                    k++;
                    break;
                }
                x->conds = peft__chat_alloc(c, (size_t)k * sizeof *x->conds);
                x->bodies = peft__chat_alloc(c, (size_t)k * sizeof *x->bodies);
                x->n_body = peft__chat_alloc(c, (size_t)k * sizeof *x->n_body);
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
                    return c->failed ? c->failed : peft__chat_fail(c, PEFT_EFORMAT, "expected a loop variable");
                p->pos++;
                if (is_op(peek(p), ","))
                    return peft__chat_fail(c, PEFT_EUNSUPPORTED, "tuple loop variables are not supported");
                x->var = tok_name(p, v);
                if (!accept_name(p, "in"))
                    return peft__chat_fail(c, PEFT_EFORMAT, "expected 'in'");
                if (!(x->e = parse_or(p)))
                    return c->failed;
                if (peek(p)->type != TK_END)
                    return peft__chat_fail(c, PEFT_EUNSUPPORTED, "loop filters and recursive loops are not supported");
                static const char *const st[] = {"endfor", "else", NULL};
                char s2[16];
                x->bodies = peft__chat_alloc(c, 2 * sizeof *x->bodies);
                x->n_body = peft__chat_alloc(c, 2 * sizeof *x->n_body);
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
                    return c->failed ? c->failed : peft__chat_fail(c, PEFT_EFORMAT, "expected a variable after set");
                p->pos++;
                x->var = tok_name(p, v);
                if (accept_op(p, ".")) { /* set ns.attr = value */
                    token *a = peek(p);
                    if (a->type != TK_NAME)
                        return peft__chat_fail(c, PEFT_EFORMAT, "expected an attribute after '.'");
                    p->pos++;
                    if (!(x->attr = tok_name(p, a)))
                        return c->failed;
                }
                if (!accept_op(p, "="))
                    return peft__chat_fail(c, PEFT_EUNSUPPORTED, "block set is not supported");
                if (!(x->e = parse_expr(p)))
                    return c->failed;
            } else if (is_name(kw, "generation") || is_name(kw, "endgeneration")) {
                continue; /* assistant-mask markers: rendering ignores them */
            } else {
                return peft__chat_fail(c, PEFT_EUNSUPPORTED, "statement '%.*s' is not supported", (int)kw->n, kw->s);
            }
            if (peek(p)->type != TK_END)
                return peft__chat_fail(c, PEFT_EFORMAT, "unexpected text in a statement");
        }
        if (n == cap) {
            node **nl = peft__chat_alloc(c, (size_t)(cap ? cap * 2 : 8) * sizeof *nl);
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

int peft__chat_parse(ctx *c, const char *tmpl, node ***body, int *n)
{
    parser p = {.c = c, .src = tmpl, .p = tmpl, .end = tmpl + strlen(tmpl)};
    char stop[16];
    int code = parse_body(&p, body, n, NULL, stop, sizeof stop);
    if (!code && stop[0])
        code = peft__chat_fail(c, PEFT_EFORMAT, "unexpected {%% %s %%}", stop);
    return code;
}
