/* Helpers shared by the tests that see only the public API (test_api.c, test_methods.c). */
#ifndef PEFT_TEST_API_HELPERS_H
#define PEFT_TEST_API_HELPERS_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "peft/peft.h"

static inline peft_model *open_tiny(int threads)
{
    peft_model *m = NULL;
    peft_open_options o = PEFT_OPEN_OPTIONS_INIT;
    o.n_threads = threads;
    CHECK_OK(peft_model_open(&m, test_data("tiny"), &o));
    return m;
}

static inline void make_batch(int32_t *tok, int n, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        tok[i] = (int32_t)((seed >> 8) % 48);
    }
}

/* the directories mktmp made, removed with what they hold when the test exits */
static char tmp_dirs[32][64];
static int n_tmp_dirs;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tmp_dirs(void)
{
    for (int i = 0; i < n_tmp_dirs; i++)
        nftw(tmp_dirs[i], remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static inline char *mktmp(void)
{
    if (n_tmp_dirs == 32)
        return NULL;
    if (n_tmp_dirs == 0)
        atexit(remove_tmp_dirs);
    char *d = tmp_dirs[n_tmp_dirs];
    snprintf(d, sizeof tmp_dirs[0], "/tmp/peft-api-XXXXXX");
    if (!mkdtemp(d))
        return NULL;
    n_tmp_dirs++;
    return d;
}

static inline double eval_loss(peft_model *m)
{
    int32_t tok[2 * 16];
    make_batch(tok, 32, 77);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    peft_eval_result e = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e));
    return e.loss_sum / (double)e.tokens;
}

static inline char *read_text(const char *dir, const char *name, size_t *len)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    *len = fread(buf, 1, (1 << 20) - 1, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

#endif
