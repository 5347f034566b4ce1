/* A small JSON writer: text grown in memory (adapter_config.json and the like, written the
   way Python's json.dump writes them). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "internal.h"
#include "json.h"

void jw_put(struct jw *w, const char *fmt, ...)
{
    if (w->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(w->s ? w->s + w->n : NULL, w->s ? w->cap - w->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            w->oom = 1;
            return;
        }
        if (w->s && w->n + (size_t)k < w->cap) {
            w->n += (size_t)k;
            return;
        }
        size_t cap = w->cap ? w->cap * 2 : 1024;
        while (cap < w->n + (size_t)k + 1)
            cap *= 2;
        char *ns = realloc(w->s, cap);
        if (!ns) {
            w->oom = 1;
            return;
        }
        w->s = ns;
        w->cap = cap;
    }
}

/* JSON string with escapes (input is the caller's UTF-8). */
void jw_str(struct jw *w, const char *s)
{
    jw_put(w, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            jw_put(w, "\\%c", c);
        else if (c < 0x20)
            jw_put(w, "\\u%04x", c);
        else
            jw_put(w, "%c", c);
    }
    jw_put(w, "\"");
}

/* Shortest decimal that reads back as the same float, Python-style ("0.0", "0.05"). */
void jw_float(struct jw *w, float v)
{
    char buf[48];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    if (!strpbrk(buf, ".eEn"))
        strcat(buf, ".0");
    jw_put(w, "%s", buf);
}

void jw_number(struct jw *w, float v)
{
    if (v == floorf(v) && fabsf(v) < 1e9f)
        jw_put(w, "%lld", (long long)v);
    else
        jw_float(w, v);
}

int peft__jw_write_atomic(struct jw *w, const char *path)
{
    int code = w->oom ? peft__fail(PEFT_ENOMEM, "%s: out of memory", path) : peft__write_atomic(path, w->s, w->n);
    free(w->s);
    w->s = NULL;
    return code;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void jw_pattern(struct jw *w, const char *pat, int integer, double factor)
{
    if (!pat) {
        jw_put(w, "{}");
        return;
    }
    size_t cap = 1;
    for (const char *c = pat; *c; c++)
        cap += *c == ',';
    char *copy = strdup(pat), **items = malloc(cap * sizeof *items);
    size_t n = 0;
    if (!copy || !items) {
        free(copy);
        free(items);
        w->oom = 1;
        return;
    }
    for (char *t = strtok(copy, ","); t && n < cap; t = strtok(NULL, ","))
        items[n++] = t;
    qsort(items, n, sizeof *items, cmp_str);
    jw_put(w, "{");
    for (size_t i = 0; i < n; i++) {
        char *eq = strchr(items[i], '=');
        *eq = '\0';
        jw_put(w, "%s\n    ", i ? "," : "");
        jw_str(w, items[i]);
        jw_put(w, ": ");
        if (integer)
            jw_put(w, "%d", (int)(atoi(eq + 1) * factor));
        else
            jw_number(w, (float)(strtof(eq + 1, NULL) * factor));
    }
    jw_put(w, "\n  }");
    free(items);
    free(copy);
}
