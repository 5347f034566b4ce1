/* A small, strict JSON reader (RFC 8259) for config and header files. */
#ifndef PEFT_JSON_H
#define PEFT_JSON_H

#include <stddef.h>

enum json_type { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

typedef struct json_value json_value;
struct json_value {
    enum json_type type;
    int boolean;
    double number;
    int is_integer;     /* number written without fraction or exponent */
    const char *string; /* NUL-terminated UTF-8 (strings) */
    size_t length;      /* string bytes, or item count (arrays, objects) */
    json_value *items;  /* array items or object values */
    const char **keys;  /* object keys, in file order */
};

typedef struct json_doc json_doc;

#define JSON_MAX_DEPTH 64

/* Parse text[0..len). On failure returns a PEFT_E* code with a message naming `what`. */
int json_parse(json_doc **out, const char *text, size_t len, const char *what);
const json_value *json_root(const json_doc *doc);
void json_free(json_doc *doc);

/* Member of an object (last one wins is not allowed: duplicates are rejected at parse). */
const json_value *json_get(const json_value *obj, const char *key);

/* ---- writer (json_write.c): text appended to a growing buffer; oom is set (and further
   output dropped) when memory runs out; free(s) when done ---- */
struct jw {
    char *s;
    size_t n, cap;
    int oom;
};

void jw_put(struct jw *w, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* a JSON string with escapes (the caller's UTF-8) */
void jw_str(struct jw *w, const char *s);
/* the shortest decimal that reads back as the same float, Python-style ("0.0", "0.05") */
void jw_float(struct jw *w, float v);
/* an integral value as an integer, else as jw_float */
void jw_number(struct jw *w, float v);
/* "k=v,k=v" (validated: every item has its '=') as a JSON object with sorted keys, as PEFT
   writes rank_pattern and alpha_pattern, values times factor (integers when integer); NULL: {} */
void jw_pattern(struct jw *w, const char *pat, int integer, double factor);
/* the text written atomically to path (fsutil.h), or PEFT_ENOMEM if the writer ran out of
   memory; the buffer is freed either way */
int peft__jw_write_atomic(struct jw *w, const char *path);

#endif
