/* Two models trained in two threads at once give the results of serial runs (no
   shared mutable state); run under ThreadSanitizer by scripts/test.sh. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "peft/peft.h"

struct job {
    int seed, threads;
    float *params;
    size_t n;
    int rc;
};

static void *train(void *vp)
{
    struct job *j = vp;
    char path[4096];
    const char *d = getenv("PEFT_TEST_DATA");
    snprintf(path, sizeof path, "%s/tiny", d ? d : SOURCE_ROOT "/tests/data");
    peft_model *m;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = j->threads;
    if ((j->rc = peft_model_open(&m, path, &oo)))
        return NULL;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.seed = (uint64_t)j->seed;
    o.init = PEFT_INIT_GAUSSIAN;
    o.dropout = 0.1f;
    if ((j->rc = peft_attach_lora(m, &o, NULL)) || (j->rc = peft_opt_set(m, PEFT_OPT_LR, 1e-2))) {
        peft_model_close(&m);
        return NULL;
    }
    int32_t tok[4 * 16];
    for (int s = 0; s < 4 && !j->rc; s++) {
        for (int i = 0; i < 64; i++)
            tok[i] = (i * 7 + s * 13 + j->seed) % 48;
        peft_batch b = PEFT_BATCH_INIT;
        b.tokens = tok;
        b.n_seq = 4;
        b.seq_len = 16;
        j->rc = peft_step(m, &b, NULL);
    }
    float *p;
    if (!j->rc && !(j->rc = peft_param_buffer(&p, &j->n, m))) {
        j->params = malloc(j->n * sizeof *p);
        memcpy(j->params, p, j->n * sizeof *p);
    }
    peft_model_close(&m);
    return NULL;
}

TEST(two_models_two_threads)
{
    struct job par[2] = {{1, 2, NULL, 0, 0}, {2, 2, NULL, 0, 0}}, ser[2] = {{1, 1, NULL, 0, 0}, {2, 1, NULL, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, train, &par[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++)
        train(&ser[i]);
    for (int i = 0; i < 2; i++) {
        CHECK(par[i].rc == 0 && ser[i].rc == 0 && par[i].n == ser[i].n && par[i].n > 0);
        if (par[i].params && ser[i].params)
            CHECK(memcmp(par[i].params, ser[i].params, par[i].n * sizeof(float)) == 0);
        free(par[i].params);
        free(ser[i].params);
    }
}

static const struct h_case cases[] = {CASE(two_models_two_threads)};
TEST_MAIN(cases)
