/*
 * Strict JSON reader. Everything lives in one arena freed at once.
 * Rejects: invalid UTF-8, control characters in strings, bad escapes,
 * lone surrogates, nesting deeper than JSON_MAX_DEPTH, duplicate keys,
 * trailing garbage.
 */
#include "json.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "unicode.h"

struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    char data[];
};

struct json_doc {
    struct arena_block *blocks;
    json_value root;
};

struct parser {
    json_doc *doc;
    const char *p, *end, *start;
    const char *what;
    int code;
};

static void *arena_alloc(json_doc *doc, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct arena_block *b = doc->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->next = doc->blocks;
        b->used = 0;
        b->cap = cap;
        doc->blocks = b;
    }
    void *r = b->data + b->used;
    b->used += n;
    return r;
}

static int perr(struct parser *ps, int code, const char *msg)
{
    if (ps->code == 0) {
        ps->code = code;
        peft__fail(code, "%s: invalid JSON at byte %zu: %s", ps->what, (size_t)(ps->p - ps->start),
                   msg);
    }
    return code;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Length of a valid UTF-8 sequence at s (max n bytes), or 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static int parse_string(struct parser *ps, const char **out, size_t *out_len)
{
    ps->p++; /* opening quote */
    /* the decoded string is never longer than the source */
    const char *q = ps->p;
    while (q < ps->end && *q != '"') {
        if (*q == '\\') q++;
        q++;
    }
    if (q >= ps->end) return perr(ps, PEFT_EFORMAT, "unterminated string");
    char *buf = arena_alloc(ps->doc, (size_t)(q - ps->p) + 1);
    if (!buf) return perr(ps, PEFT_ENOMEM, "out of memory");
    size_t n = 0;
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            buf[n] = '\0';
            *out = buf;
            *out_len = n;
            return 0;
        }
        if (c < 0x20) return perr(ps, PEFT_EFORMAT, "control character in string");
        if (c == '\\') {
            if (ps->end - ps->p < 2) return perr(ps, PEFT_EFORMAT, "bad escape");
            char e = ps->p[1];
            ps->p += 2;
            switch (e) {
            case '"': buf[n++] = '"'; break;
            case '\\': buf[n++] = '\\'; break;
            case '/': buf[n++] = '/'; break;
            case 'b': buf[n++] = '\b'; break;
            case 'f': buf[n++] = '\f'; break;
            case 'n': buf[n++] = '\n'; break;
            case 'r': buf[n++] = '\r'; break;
            case 't': buf[n++] = '\t'; break;
            case 'u': {
                unsigned u;
                if (ps->end - ps->p < 4 || hex4(ps->p, &u)) return perr(ps, PEFT_EFORMAT, "bad \\u escape");
                ps->p += 4;
                uint32_t cp = u;
                if (u >= 0xd800 && u <= 0xdbff) {
                    unsigned lo;
                    if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
                        hex4(ps->p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                        return perr(ps, PEFT_EFORMAT, "lone surrogate in \\u escape");
                    ps->p += 6;
                    cp = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
                } else if (u >= 0xdc00 && u <= 0xdfff) {
                    return perr(ps, PEFT_EFORMAT, "lone surrogate in \\u escape");
                }
                if (cp == 0) return perr(ps, PEFT_EFORMAT, "NUL character in string");
                n += peft__utf8_encode(buf + n, cp);
                break;
            }
            default: return perr(ps, PEFT_EFORMAT, "bad escape");
            }
            continue;
        }
        size_t len = utf8_seq((const unsigned char *)ps->p, (size_t)(ps->end - ps->p));
        if (len == 0) return perr(ps, PEFT_EFORMAT, "invalid UTF-8 in string");
        memcpy(buf + n, ps->p, len);
        n += len;
        ps->p += len;
    }
    return perr(ps, PEFT_EFORMAT, "unterminated string");
}

static int parse_number(struct parser *ps, json_value *v)
{
    const char *s = ps->p;
    int integer = 1;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end) return perr(ps, PEFT_EFORMAT, "bad number");
    if (*ps->p == '0') ps->p++;
    else if (*ps->p >= '1' && *ps->p <= '9') while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    else return perr(ps, PEFT_EFORMAT, "bad number");
    if (ps->p < ps->end && *ps->p == '.') {
        integer = 0;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return perr(ps, PEFT_EFORMAT, "bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        integer = 0;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return perr(ps, PEFT_EFORMAT, "bad number");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    size_t len = (size_t)(ps->p - s);
    char tmp[64];
    if (len >= sizeof tmp) {
        if (integer) return perr(ps, PEFT_EFORMAT, "integer too long");
        len = sizeof tmp - 1; /* a long fraction: precision beyond double is irrelevant */
    }
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    v->type = JSON_NUMBER;
    v->number = strtod(tmp, NULL);
    v->is_integer = integer;
    if (!isfinite(v->number)) return perr(ps, PEFT_EFORMAT, "number out of range");
    return 0;
}

static int match_word(struct parser *ps, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, w, n) != 0)
        return perr(ps, PEFT_EFORMAT, "unexpected token");
    ps->p += n;
    return 0;
}

struct node {
    json_value v;
    const char *key;
    struct node *next;
};

static int parse_value(struct parser *ps, json_value *v, int depth);

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int parse_container(struct parser *ps, json_value *v, int depth, int is_object)
{
    if (depth >= JSON_MAX_DEPTH) return perr(ps, PEFT_EFORMAT, "nesting too deep");
    char close = is_object ? '}' : ']';
    ps->p++;
    struct node *head = NULL, *tail = NULL;
    size_t count = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
    } else {
        for (;;) {
            struct node *nd = arena_alloc(ps->doc, sizeof *nd);
            if (!nd) return perr(ps, PEFT_ENOMEM, "out of memory");
            memset(nd, 0, sizeof *nd);
            skip_ws(ps);
            if (is_object) {
                size_t klen;
                if (ps->p >= ps->end || *ps->p != '"') return perr(ps, PEFT_EFORMAT, "expected a key");
                if (parse_string(ps, &nd->key, &klen)) return ps->code;
                if (strlen(nd->key) != klen) return perr(ps, PEFT_EFORMAT, "NUL in key");
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':') return perr(ps, PEFT_EFORMAT, "expected ':'");
                ps->p++;
            }
            if (parse_value(ps, &nd->v, depth + 1)) return ps->code;
            if (tail) tail->next = nd; else head = nd;
            tail = nd;
            count++;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
            if (ps->p < ps->end && *ps->p == close) { ps->p++; break; }
            return perr(ps, PEFT_EFORMAT, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    v->length = count;
    if (count) {
        v->items = arena_alloc(ps->doc, count * sizeof *v->items);
        if (!v->items) return perr(ps, PEFT_ENOMEM, "out of memory");
        if (is_object) {
            v->keys = arena_alloc(ps->doc, count * sizeof *v->keys);
            if (!v->keys) return perr(ps, PEFT_ENOMEM, "out of memory");
        }
        size_t i = 0;
        for (struct node *nd = head; nd; nd = nd->next, i++) {
            v->items[i] = nd->v;
            if (is_object) v->keys[i] = nd->key;
        }
        if (is_object && count > 1) {
            /* duplicate keys: sort a copy of the key pointers (O(n log n)) */
            const char **sorted = malloc(count * sizeof *sorted);
            if (!sorted) return perr(ps, PEFT_ENOMEM, "out of memory");
            memcpy(sorted, v->keys, count * sizeof *sorted);
            qsort(sorted, count, sizeof *sorted, cmp_keys);
            int dup = 0;
            for (size_t k = 1; k < count && !dup; k++)
                dup = strcmp(sorted[k - 1], sorted[k]) == 0;
            free(sorted);
            if (dup) return perr(ps, PEFT_EFORMAT, "duplicate key in object");
        }
    }
    return 0;
}

static int parse_value(struct parser *ps, json_value *v, int depth)
{
    skip_ws(ps);
    if (ps->p >= ps->end) return perr(ps, PEFT_EFORMAT, "unexpected end of input");
    memset(v, 0, sizeof *v);
    switch (*ps->p) {
    case '{': return parse_container(ps, v, depth, 1);
    case '[': return parse_container(ps, v, depth, 0);
    case '"': v->type = JSON_STRING; return parse_string(ps, &v->string, &v->length);
    case 't': v->type = JSON_BOOL; v->boolean = 1; return match_word(ps, "true");
    case 'f': v->type = JSON_BOOL; return match_word(ps, "false");
    case 'n': v->type = JSON_NULL; return match_word(ps, "null");
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps, v);
        return perr(ps, PEFT_EFORMAT, "unexpected character");
    }
}

int json_parse(json_doc **out, const char *text, size_t len, const char *what)
{
    *out = NULL;
    json_doc *doc = calloc(1, sizeof *doc);
    if (!doc) return peft__fail(PEFT_ENOMEM, "%s: out of memory", what);
    struct parser ps = {doc, text, text + len, text, what, 0};
    if (parse_value(&ps, &doc->root, 0) == 0) {
        skip_ws(&ps);
        if (ps.p != ps.end) perr(&ps, PEFT_EFORMAT, "trailing characters after the value");
    }
    if (ps.code) {
        json_free(doc);
        return ps.code;
    }
    *out = doc;
    return 0;
}

const json_value *json_root(const json_doc *doc) { return &doc->root; }

void json_free(json_doc *doc)
{
    if (!doc) return;
    struct arena_block *b = doc->blocks;
    while (b) {
        struct arena_block *n = b->next;
        free(b);
        b = n;
    }
    free(doc);
}

const json_value *json_get(const json_value *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->length; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}
