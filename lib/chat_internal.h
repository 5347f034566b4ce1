/* Chat templates, inside lib/: the values, the syntax tree and the helpers shared by the parser
   (chat_parse.c), the evaluator (chat.c) and the string semantics (chat_text.c). */
#ifndef PEFT_CHAT_INTERNAL_H
#define PEFT_CHAT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "internal.h"

/* ---- values ---------------------------------------------------------------- */

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_STR, V_LIST, V_DICT, V_LOOP, V_NS } vtype;

typedef struct val val;
struct val {
    vtype t;
    long long i;        /* bool, int */
    const char *s;      /* str (not NUL-terminated) */
    size_t n;           /* str length, list/dict size */
    const val *items;   /* list items, dict values */
    const char **keys;  /* dict keys (NUL-terminated) */
    const void *loop;   /* V_LOOP: the loop state */
    struct ns_state *ns; /* V_NS: a namespace() object, the one mutable value (set ns.attr = ...) */
};

typedef struct ns_state {
    size_t n, cap;
    const char **keys;
    val *vals;
} ns_state;

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


void *peft__chat_alloc(ctx *c, size_t n);
/* Record the first failure (a PEFT_E* code with "chat template: ..." as the message); returns it. */
int peft__chat_fail(ctx *c, int code, const char *fmt, ...) PEFT_PRINTF(3, 4);

static inline val vint(long long i) { return (val){.t = V_INT, .i = i}; }
static inline val vbool(int b) { return (val){.t = V_BOOL, .i = b != 0}; }

/* ---- the syntax tree (chat_parse.c) ---------------------------------------------- */

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
    expr *a, *b, *c;  /* operands; slice: a[b:c:d]; cond: b if a else c */
    expr *d;
    expr **args;
    const char **kw; /* keyword argument names (NULL for a positional one), or NULL when there are none */
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
    const char *attr; /* N_SET: set var.attr = ... (a namespace's attribute) */
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


/* Parse a whole template into *body (n nodes), allocated in c's arena. */
int peft__chat_parse(ctx *c, const char *tmpl, node ***body, int *n);

/* ---- Python string semantics over UTF-8 (chat_text.c) ------------------------------ */

/* The code point at s[*i], advancing *i; a byte that starts no valid sequence decodes as itself. */
uint32_t peft__utf8_next(const char *s, size_t n, size_t *i);
/* Code points in s[0..n), and the byte offset of code point k (clamped to n). */
size_t peft__utf8_len(const char *s, size_t n);
size_t peft__utf8_offset(const char *s, size_t n, long long k);
/* Python's str.isspace() of one code point. */
int peft__py_space(uint32_t c);
/* Python's strip/lstrip/rstrip: [*b, *e) of s without the leading (left) and trailing (right)
   whitespace, or the code points of chars when chars is not NULL. */
void peft__py_strip(const char *s, size_t n, int left, int right, const char *chars, size_t n_chars, size_t *b,
                    size_t *e);
/* Case mapping of s[0..n) into dst (room for 3 n + 4 bytes: Python's full mappings grow a string
   at most threefold), its length in *dst_len: mode 0 lower, 1 upper, 2 Python str.title(),
   3 capitalize, 4 Jinja's title filter. 0, or PEFT_ENOMEM. */
int peft__case_map(char *dst, size_t *dst_len, const char *s, size_t n, int mode);

#endif
