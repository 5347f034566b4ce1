/*
 * Minimal test harness. A test file defines cases with TEST(name) and lists
 * them in a TESTS table; `prog` runs all, `prog NAME` runs one. Exit status:
 * 0 all passed, 1 a failure, 77 skipped (Meson's convention).
 */
#ifndef PEFT_TEST_HARNESS_H
#define PEFT_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int h_failures;
static int h_skipped;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);             \
            h_failures++;                                                                          \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);             \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            h_failures++;                                                                          \
        }                                                                                          \
    } while (0)

/* |a - b| <= tol * max(1, |b|) */
#define CHECK_CLOSE(a, b, tol)                                                                     \
    do {                                                                                           \
        double h_a = (a), h_b = (b);                                                               \
        if (!(fabs(h_a - h_b) <= (tol) * fmax(1.0, fabs(h_b)))) {                                  \
            fprintf(stderr, "%s:%d: %s = %.9g, expected %s = %.9g (tol %g)\n", __FILE__, __LINE__, \
                    #a, h_a, #b, h_b, (double)(tol));                                              \
            h_failures++;                                                                          \
        }                                                                                          \
    } while (0)

#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        int h_rc = (expr);                                                                         \
        if (h_rc != 0) {                                                                           \
            fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #expr, h_rc,       \
                    peft_last_error());                                                            \
            h_failures++;                                                                          \
        }                                                                                          \
    } while (0)

#define SKIP(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "SKIP: " __VA_ARGS__);                                                     \
        fputc('\n', stderr);                                                                       \
        h_skipped = 1;                                                                             \
        return;                                                                                    \
    } while (0)

#define TEST(name) static void test_##name(void)

struct h_case {
    const char *name;
    void (*fn)(void);
};
#define CASE(name) {#name, test_##name}

static int h_run(const struct h_case *cases, size_t n, int argc, char **argv)
{
    int ran = 0, failed = 0, skipped = 0;
    for (size_t i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0)
            continue;
        int before = h_failures;
        h_skipped = 0;
        cases[i].fn();
        ran++;
        if (h_failures > before) {
            failed++;
            printf("FAIL %s\n", cases[i].name);
        } else if (h_skipped) {
            skipped++;
            printf("SKIP %s\n", cases[i].name);
        } else {
            printf("ok   %s\n", cases[i].name);
        }
    }
    if (ran == 0) {
        fprintf(stderr, "no test named '%s'\n", argc > 1 ? argv[1] : "");
        return 1;
    }
    if (failed)
        return 1;
    return skipped == ran ? 77 : 0;
}

#define TEST_MAIN(table)                                                                           \
    int main(int argc, char **argv) { return h_run(table, sizeof table / sizeof table[0], argc, argv); }

/* A whole file, NUL-terminated (free() it), its length in *n when n is not NULL; NULL if it
   cannot be read. */
static inline char *read_whole(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    char *p = len >= 0 ? malloc((size_t)len + 1) : NULL;
    size_t got = p ? fread(p, 1, (size_t)len, f) : 0;
    fclose(f);
    if (p)
        p[got] = 0;
    if (n)
        *n = got;
    return p;
}

/* A path under the committed test data ($PEFT_TEST_DATA or tests/data); the last 8 results stay valid. */
static inline const char *test_data(const char *rel)
{
    static char buf[8][4096];
    static int k;
    k = (k + 1) % 8;
    const char *d = getenv("PEFT_TEST_DATA");
    if (rel[0] == '/') /* a test's own directory */
        snprintf(buf[k], sizeof buf[k], "%s", rel);
    else
        snprintf(buf[k], sizeof buf[k], "%s/%s", d ? d : SOURCE_ROOT "/tests/data", rel);
    return buf[k];
}

/* Remove a directory made by a test: the two files it holds, then the (empty) directory. */
static inline void dir_with_two_remove(const char *dir, const char *a, const char *b)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, a);
    remove(path);
    snprintf(path, sizeof path, "%s/%s", dir, b);
    remove(path);
    remove(dir);
}

/* a model directory (config.json and the weights file or link) */
static inline void model_dir_remove(const char *dir) { dir_with_two_remove(dir, "model.safetensors", "config.json"); }

/* an adapter directory (PEFT's two files) */
static inline void adapter_dir_remove(const char *dir)
{
    dir_with_two_remove(dir, "adapter_model.safetensors", "adapter_config.json");
}

/* -log softmax(logits)[target] over n logits, in double (a session's next-token loss, to set
   against peft_eval's loss_sum) */
static inline double logits_nll(const float *logits, int n, int target)
{
    double mx = logits[0], z = 0;
    for (int v = 1; v < n; v++)
        mx = logits[v] > mx ? logits[v] : mx;
    for (int v = 0; v < n; v++)
        z += exp(logits[v] - mx);
    return mx + log(z) - logits[target];
}

/* Shared assets beside the checkout; NULL when absent. */
static inline const char *shared_dir(void)
{
    static char buf[4096];
    const char *env = getenv("PEFT_SHARED");
    const char *cands[] = {env, SOURCE_ROOT "/../shared"};
    for (size_t i = 0; i < 2; i++) {
        if (!cands[i])
            continue;
        snprintf(buf, sizeof buf, "%s/models/stories260K/config.json", cands[i]);
        FILE *f = fopen(buf, "r");
        if (f) {
            fclose(f);
            snprintf(buf, sizeof buf, "%s", cands[i]);
            return buf;
        }
    }
    return NULL;
}

#endif
