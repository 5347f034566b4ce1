/* The public API as a host sees it: only peft/peft.h. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "peft/peft.h"

static peft_model *open_tiny(int threads)
{
    peft_model *m = NULL;
    peft_open_options o = PEFT_OPEN_OPTIONS_INIT;
    o.n_threads = threads;
    CHECK_OK(peft_model_open(&m, test_data("tiny"), &o));
    return m;
}

static void make_batch(int32_t *tok, int n, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        tok[i] = (int32_t)((seed >> 8) % 48);
    }
}

static char *mktmp(void)
{
    static char dirs[8][64];
    static int k;
    k = (k + 1) % 8;
    snprintf(dirs[k], sizeof dirs[k], "/tmp/peft-api-XXXXXX");
    return mkdtemp(dirs[k]);
}

TEST(errors_and_versions)
{
    peft_model *m = (peft_model *)1;
    CHECK(peft_model_open(NULL, test_data("tiny"), NULL) == PEFT_EINVAL);
    CHECK(peft_model_open(&m, NULL, NULL) == PEFT_EINVAL && m == NULL);
    CHECK(peft_model_open(&m, "/nonexistent/model", NULL) == PEFT_ENOTFOUND && m == NULL);
    CHECK(strstr(peft_last_error(), "/nonexistent/model/config.json") != NULL);
    peft_open_options o = PEFT_OPEN_OPTIONS_INIT;
    o.version = 99;
    CHECK(peft_model_open(&m, test_data("tiny"), &o) == PEFT_EINVAL);
    o.version = PEFT_OPEN_OPTIONS_VERSION;
    o.backend = "nope";
    CHECK(peft_model_open(&m, test_data("tiny"), &o) == PEFT_EINVAL && m == NULL);
    CHECK(strstr(peft_last_error(), "unknown backend 'nope'"));
    for (int c = 0; c >= -10; c--)
        CHECK(strlen(peft_strerror(c)) > 0 && strcmp(peft_strerror(c), "unknown status") != 0);
    CHECK(strcmp(peft_strerror(-1000), "unknown status") == 0);
    CHECK(strcmp(peft_version(), PEFT_VERSION_STRING) == 0);
    CHECK(peft_version_number() == PEFT_VERSION_NUMBER);
    peft_model_close(NULL);
    peft_model *null_model = NULL;
    peft_model_close(&null_model);
    peft_lora_options lo;
    CHECK(peft_lora_options_init(&lo, 0) == PEFT_EINVAL);
    CHECK_OK(peft_lora_options_init(&lo, PEFT_LORA_OPTIONS_VERSION));
    CHECK(lo.rank == 8 && lo.targets == (PEFT_TARGET_Q | PEFT_TARGET_V));
}

static void *other_thread(void *arg)
{
    (void)arg;
    return (void *)(strlen(peft_last_error()) == 0 ? (intptr_t)1 : (intptr_t)0);
}

TEST(last_error_is_per_thread)
{
    peft_model *m;
    CHECK(peft_model_open(&m, "/nonexistent", NULL) != 0);
    CHECK(strlen(peft_last_error()) > 0);
    pthread_t t;
    void *clean;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, &clean);
    CHECK(clean == (void *)1);
}

TEST(info_and_exact_counts)
{
    peft_model *m = open_tiny(1);
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    CHECK_OK(peft_model_get_info(m, &in));
    CHECK(strcmp(in.architecture, "llama") == 0 && in.n_layers == 3 && in.hidden_size == 32 &&
          in.intermediate_size == 40 && in.n_heads == 4 && in.n_kv_heads == 2 && in.head_dim == 8 &&
          in.vocab_size == 48 && !in.tied_embeddings && strcmp(in.weights_dtype, "F32") == 0);
    uint64_t per_layer = 2 * 32 + 32 * (32 + 16 + 16) + 32 * 32 + 3 * 32 * 40;
    CHECK(in.n_params == 2ull * 48 * 32 + 32 + 3 * per_layer);
    /* r * (in + out) per module */
    const int io[7][2] = {{32, 32}, {32, 16}, {32, 16}, {32, 32}, {32, 40}, {32, 40}, {40, 32}};
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    for (uint32_t t = 1; t <= PEFT_TARGET_ALL_LINEAR; t++) {
        o.targets = t;
        o.rank = 3;
        uint64_t expect = 0, got;
        for (int k = 0; k < 7; k++)
            if (t & (1u << k))
                expect += 3ull * (io[k][0] + io[k][1]) * 3;
        CHECK_OK(peft_count_lora(&got, m, &o));
        CHECK_MSG(got == expect, "targets %u: %llu != %llu", t, (unsigned long long)got, (unsigned long long)expect);
    }
    const struct {
        const char *spec;
        int layers;
    } specs[] = {{"all", 3}, {NULL, 3}, {"last:1", 1}, {"first:2", 2}, {"0,2", 2}, {"1-2", 2}, {"every:2", 2},
                 {"0,last:1", 2}, {"last:9", 3}};
    o.targets = PEFT_TARGET_Q;
    o.rank = 1;
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        o.layers = specs[i].spec;
        uint64_t got;
        CHECK_OK(peft_count_lora(&got, m, &o));
        CHECK_MSG(got == (uint64_t)specs[i].layers * 64, "layers '%s': %llu", specs[i].spec ? specs[i].spec : "NULL",
                  (unsigned long long)got);
    }
    const char *bad[] = {"3", "x", "first:0", "1-0", "every:0", "0,,1", "-1", "1-"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o.layers = bad[i];
        uint64_t got;
        CHECK_MSG(peft_count_lora(&got, m, &o) == PEFT_EINVAL, "layers '%s' accepted", bad[i]);
    }
    o.layers = NULL;
    o.rank = 0;
    uint64_t got;
    CHECK(peft_count_lora(&got, m, &o) == PEFT_EINVAL);
    o.rank = 4;
    o.targets = 0;
    CHECK(peft_count_lora(&got, m, &o) == PEFT_EINVAL);
    o.targets = PEFT_TARGET_ALL_LINEAR;
    uint64_t attached;
    CHECK_OK(peft_attach_lora(m, &o, &attached));
    CHECK(attached == 1760ull * 3);
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_ESTATE);
    CHECK_OK(peft_model_get_info(m, &in));
    CHECK(in.n_trainable == attached);
    CHECK_OK(peft_detach(m));
    peft_model_close(&m);
    CHECK(m == NULL);
}

/* Train n steps from a fresh attachment; return the parameters (malloc'ed). */
static float *train_run(int threads, int steps, int accum, int batch_split, float dropout, size_t *n_out)
{
    peft_model *m = open_tiny(threads);
    if (!m)
        return NULL;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.rank = 4;
    o.seed = 7;
    o.dropout = dropout;
    o.init = PEFT_INIT_GAUSSIAN;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_ACCUM_STEPS, accum));
    int32_t tok[4 * 16];
    for (int s = 0; s < steps; s++) {
        make_batch(tok, 4 * 16, (uint32_t)s);
        if (batch_split) {
            for (int h = 0; h < 2; h++) {
                peft_batch b = {PEFT_BATCH_VERSION, tok + h * 32, NULL, 2, 16, NULL};
                peft_step_result r = PEFT_STEP_RESULT_INIT;
                CHECK_OK(peft_step(m, &b, &r));
                CHECK(r.updated == (h == 1));
            }
        } else {
            peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, 16, NULL};
            CHECK_OK(peft_step(m, &b, NULL));
        }
    }
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    float *copy = malloc(n * sizeof *copy);
    memcpy(copy, p, n * sizeof *copy);
    *n_out = n;
    peft_model_close(&m);
    return copy;
}

TEST(determinism_and_thread_invariance)
{
    size_t n1, n2, n3;
    float *a = train_run(1, 5, 1, 0, 0.1f, &n1), *b = train_run(1, 5, 1, 0, 0.1f, &n2),
          *c = train_run(3, 5, 1, 0, 0.1f, &n3);
    CHECK(a && b && c && n1 == n2 && n1 == n3);
    CHECK(memcmp(a, b, n1 * sizeof *a) == 0); /* same seed, same data: bit-identical */
    CHECK(memcmp(a, c, n1 * sizeof *a) == 0); /* and independent of the thread count */
    free(a), free(b), free(c);
}

TEST(gradient_accumulation_equals_big_batch)
{
    size_t n1, n2;
    float *a = train_run(2, 4, 1, 0, 0.0f, &n1), *b = train_run(2, 4, 2, 1, 0.0f, &n2);
    CHECK(a && b && n1 == n2);
    double worst = 0;
    for (size_t i = 0; i < n1; i++)
        worst = fmax(worst, fabs(a[i] - b[i]));
    CHECK_MSG(worst < 1e-5, "max difference %g", worst);
    free(a), free(b);
}

TEST(split_step_equals_step)
{
    peft_model *m1 = open_tiny(2), *m2 = open_tiny(2);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.init = PEFT_INIT_GAUSSIAN;
    CHECK_OK(peft_attach_lora(m1, &o, NULL));
    CHECK_OK(peft_attach_lora(m2, &o, NULL));
    int32_t tok[3 * 10];
    make_batch(tok, 30, 5);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 3, 10, NULL};
    peft_step_result r1 = PEFT_STEP_RESULT_INIT, r2 = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_step(m1, &b, &r1));
    CHECK_OK(peft_forward_backward(m2, &b, &r2));
    CHECK(r2.tokens == 27 && r2.updated == 0);
    float *g;
    size_t n;
    CHECK_OK(peft_grad_buffer(&g, &n, m2));
    /* a host all-reduce would sum here; scale by 2 and pass twice the count: same update */
    for (size_t i = 0; i < n; i++)
        g[i] *= 2.0f;
    CHECK_OK(peft_apply_update(m2, 2.0 * (double)r2.tokens, &r2));
    CHECK(r1.updated && r2.updated && r1.step == 1 && r2.step == 1);
    CHECK_CLOSE(r1.grad_norm, r2.grad_norm, 1e-6);
    float *p1, *p2;
    CHECK_OK(peft_param_buffer(&p1, &n, m1));
    CHECK_OK(peft_param_buffer(&p2, &n, m2));
    double worst = 0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(p1[i] - p2[i]));
    CHECK(worst < 1e-7);
    for (size_t i = 0; i < n; i++)
        CHECK(g[i] == 0.0f); /* zeroed after the update */
    peft_model_close(&m1);
    peft_model_close(&m2);
}

/* The data-parallel host pattern of peft train's MPI mode, in one process: two
   "ranks" each run one micro-batch, sum their gradient buffers (the all-reduce),
   and apply the same update; with dropout, each sets its place in the dropout stream
   to the global micro-batch index. The result equals one process accumulating both. */
TEST(two_ranks_with_dropout_equal_one_process)
{
    size_t n1;
    float *one = train_run(2, 4, 2, 1, 0.2f, &n1);
    peft_model *rk[2] = {open_tiny(1), open_tiny(1)};
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.rank = 4;
    o.seed = 7;
    o.dropout = 0.2f;
    o.init = PEFT_INIT_GAUSSIAN;
    for (int r = 0; r < 2; r++) {
        CHECK_OK(peft_attach_lora(rk[r], &o, NULL));
        CHECK_OK(peft_opt_set(rk[r], PEFT_OPT_LR, 1e-2));
    }
    int32_t tok[4 * 16];
    float *g[2], *p[2];
    size_t n = 0;
    for (int s = 0; s < 4; s++) {
        make_batch(tok, 4 * 16, (uint32_t)s);
        double count = 0;
        for (int r = 0; r < 2; r++) {
            peft_batch b = {PEFT_BATCH_VERSION, tok + r * 32, NULL, 2, 16, NULL};
            peft_step_result res = PEFT_STEP_RESULT_INIT;
            CHECK_OK(peft_opt_set(rk[r], PEFT_OPT_DROPOUT_CALL, 2 * s + r));
            CHECK_OK(peft_forward_backward(rk[r], &b, &res));
            count += (double)res.tokens;
            CHECK_OK(peft_grad_buffer(&g[r], &n, rk[r]));
        }
        for (size_t i = 0; i < n; i++)
            g[0][i] = g[1][i] = g[0][i] + g[1][i];
        for (int r = 0; r < 2; r++)
            CHECK_OK(peft_apply_update(rk[r], count, NULL));
    }
    double call;
    CHECK_OK(peft_opt_get(rk[1], PEFT_OPT_DROPOUT_CALL, &call));
    CHECK(call == 8.0); /* 2*3+1, advanced by its forward pass */
    CHECK(peft_opt_set(rk[0], PEFT_OPT_DROPOUT_CALL, 0.5) == PEFT_EINVAL);
    CHECK_OK(peft_param_buffer(&p[0], &n, rk[0]));
    CHECK_OK(peft_param_buffer(&p[1], &n, rk[1]));
    CHECK(one && n == n1);
    CHECK(memcmp(p[0], p[1], n * sizeof(float)) == 0); /* the ranks agree bit for bit */
    double worst = 0;
    for (size_t i = 0; one && i < n; i++)
        worst = fmax(worst, fabs(p[0][i] - one[i]));
    CHECK_MSG(worst < 1e-5, "max difference %g", worst);
    free(one);
    peft_model_close(&rk[0]);
    peft_model_close(&rk[1]);
}

/* What a grad-ready hook saw: each range's values at the moment it was reported. */
struct ready_log {
    peft_model *m;
    float *seen;    /* n floats: the value of each gradient when its range was reported */
    int *times;     /* n: how often each float was reported */
    size_t n, calls;
};

static void on_ready(void *user, size_t off, size_t cnt)
{
    struct ready_log *r = user;
    float *g;
    size_t n;
    if (peft_grad_buffer(&g, &n, r->m) || off + cnt > n || cnt == 0) {
        r->times[0] += 1000; /* out of range: fail below */
        return;
    }
    for (size_t i = off; i < off + cnt; i++) {
        r->seen[i] = g[i];
        r->times[i]++;
    }
    r->calls++;
}

static void check_grad_ready(peft_model *m, const char *what)
{
    float *g;
    size_t n;
    CHECK_OK(peft_grad_buffer(&g, &n, m));
    struct ready_log r = {m, calloc(n, sizeof(float)), calloc(n, sizeof(int)), n, 0};
    CHECK_OK(peft_set_grad_ready(m, on_ready, &r));
    int32_t tok[2 * 12];
    for (int call = 0; call < 2; call++) { /* the second call adds to the first's gradients */
        make_batch(tok, 24, 11u + (uint32_t)call);
        peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 12, NULL};
        memset(r.times, 0, n * sizeof(int));
        r.calls = 0;
        CHECK_OK(peft_forward_backward(m, &b, NULL));
        size_t once = 0, same = 0;
        for (size_t i = 0; i < n; i++) {
            once += r.times[i] == 1;
            same += r.seen[i] == g[i]; /* nothing wrote a range after it was reported */
        }
        CHECK_MSG(once == n && same == n, "%s: %zu of %zu reported once, %zu final when reported", what,
                  once, n, same);
        CHECK(r.calls >= 1);
    }
    CHECK_OK(peft_set_grad_ready(m, NULL, NULL));
    r.calls = 0;
    make_batch(tok, 24, 5);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 12, NULL};
    CHECK_OK(peft_forward_backward(m, &b, NULL));
    CHECK(r.calls == 0); /* removed */
    free(r.seen);
    free(r.times);
}

TEST(grad_ready_ranges_cover_the_buffer_once_and_are_final)
{
    peft_model *m = open_tiny(2);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR | PEFT_TARGET_EMBED;
    o.init = PEFT_INIT_GAUSSIAN;
    o.use_dora = 0;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    check_grad_ready(m, "all-linear + embed LoRA");
    CHECK_OK(peft_detach(m));
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_DOWN;
    o.layers = "last:1";
    o.use_dora = 1;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    check_grad_ready(m, "DoRA on the last layer");
    CHECK_OK(peft_detach(m));
    peft_norms_options no = PEFT_NORMS_OPTIONS_INIT;
    CHECK_OK(peft_attach_norms(m, &no, NULL));
    check_grad_ready(m, "norm tuning");
    CHECK_OK(peft_detach(m));
    peft_vera_options vo = PEFT_VERA_OPTIONS_INIT;
    vo.rank = 8;
    CHECK_OK(peft_attach_vera(m, &vo, NULL));
    check_grad_ready(m, "VeRA");
    CHECK_OK(peft_detach(m));
    peft_ia3_options io = PEFT_IA3_OPTIONS_INIT;
    CHECK_OK(peft_attach_ia3(m, &io, NULL));
    check_grad_ready(m, "IA3");
    CHECK(peft_set_grad_ready(NULL, on_ready, NULL) == PEFT_EINVAL);
    peft_model_close(&m);
}

TEST(label_mask)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    int32_t tok[2 * 8], lab[2 * 8];
    make_batch(tok, 16, 3);
    for (int i = 0; i < 16; i++)
        lab[i] = -100;
    peft_batch b = {PEFT_BATCH_VERSION, tok, lab, 2, 8, NULL};
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_forward_backward(m, &b, &r));
    CHECK(r.tokens == 0 && r.loss == 0.0);
    memcpy(lab, tok, sizeof lab);
    lab[3] = lab[4] = -100; /* labels of positions 2 and 3 */
    peft_eval_result e1 = PEFT_EVAL_RESULT_INIT, e2 = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e1));
    CHECK(e1.tokens == 12);
    b.labels = NULL;
    CHECK_OK(peft_eval(m, &b, &e2));
    CHECK(e2.tokens == 14 && e2.loss_sum > e1.loss_sum);
    tok[5] = 48;
    CHECK(peft_eval(m, &b, &e2) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "outside the vocabulary"));
    tok[5] = 1;
    lab[0] = -5;
    b.labels = lab;
    CHECK(peft_eval(m, &b, &e2) == PEFT_EINVAL);
    b.tokens = NULL;
    CHECK(peft_eval(m, &b, &e2) == PEFT_EINVAL);
    peft_model_close(&m);
}

TEST(state_errors)
{
    peft_model *m = open_tiny(1);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 1, 8, NULL};
    CHECK(peft_step(m, &b, NULL) == PEFT_ESTATE);
    CHECK(peft_save_adapter(m, "/tmp/x", NULL) == PEFT_ESTATE);
    float *p;
    size_t n;
    CHECK(peft_param_buffer(&p, &n, m) == PEFT_ESTATE);
    /* eval works without an adapter: the base model */
    peft_eval_result e = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e));
    CHECK(e.tokens == 7 && e.loss_sum > 0);
    CHECK(peft_opt_set(m, PEFT_OPT_LR, -1) == PEFT_EINVAL);
    CHECK(peft_opt_set(m, PEFT_OPT_ACCUM_STEPS, 1.5) == PEFT_EINVAL);
    CHECK(peft_opt_set(m, 999, 1) == PEFT_EINVAL);
    double v, lo, hi;
    CHECK_OK(peft_opt_set(m, PEFT_OPT_WEIGHT_DECAY, 0.25));
    CHECK_OK(peft_opt_get(m, PEFT_OPT_WEIGHT_DECAY, &v));
    CHECK(v == 0.25);
    CHECK_OK(peft_opt_bounds(PEFT_OPT_BETA1, &lo, &hi));
    CHECK(lo == 0 && hi < 1);
    peft_model_close(&m);
}

TEST(non_finite_loss_is_refused)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    p[0] = NAN;
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 1, 8, NULL};
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    CHECK(peft_step(m, &b, &r) == PEFT_ENUMERIC);
    CHECK(r.updated == 0 && r.step == 0);
    CHECK(isnan(p[0]) && p[1] == p[1]); /* nothing was updated */
    char *d = mktmp();
    CHECK(peft_save_adapter(m, d, NULL) == PEFT_ENUMERIC);
    peft_model_close(&m);
    rmdir(d);
}

static double eval_loss(peft_model *m)
{
    int32_t tok[2 * 16];
    make_batch(tok, 32, 77);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    peft_eval_result e = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e));
    return e.loss_sum / (double)e.tokens;
}

static char *read_text(const char *dir, const char *name, size_t *len)
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

TEST(save_load_round_trip)
{
    peft_model *m = open_tiny(2);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_K | PEFT_TARGET_DOWN;
    o.layers = "1-2";
    o.rank = 3;
    o.alpha = 5.5f;
    o.use_rslora = 1;
    o.init = PEFT_INIT_GAUSSIAN;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    int32_t tok[4 * 16];
    for (int s = 0; s < 3; s++) {
        make_batch(tok, 64, (uint32_t)s + 10);
        peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, 16, NULL};
        CHECK_OK(peft_step(m, &b, NULL));
    }
    double before = eval_loss(m);
    char *d = mktmp();
    peft_save_options so = PEFT_SAVE_OPTIONS_INIT;
    so.base_model_name_or_path = "org/tiny \"quoted\"";
    CHECK_OK(peft_save_adapter(m, d, &so));
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len);
    CHECK(cfg != NULL);
    if (cfg) {
        const char *expect[] = {"\"peft_type\": \"LORA\"", "\"task_type\": \"CAUSAL_LM\"", "\"r\": 3",
                                "\"lora_alpha\": 5.5", "\"use_rslora\": true", "\"use_dora\": false",
                                "\"init_lora_weights\": \"gaussian\"", "\"inference_mode\": true",
                                "\"layers_to_transform\": [\n    1,\n    2\n  ]", "\"rank_pattern\": {}",
                                "\"base_model_name_or_path\": \"org/tiny \\\"quoted\\\"\"",
                                "\"target_modules\": [\n    \"q_proj\",\n    \"k_proj\",\n    \"down_proj\"\n  ]"};
        for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
            CHECK_MSG(strstr(cfg, expect[i]) != NULL, "missing %s in\n%s", expect[i], cfg);
        /* keys sorted */
        CHECK(strstr(cfg, "\"alpha_pattern\"") < strstr(cfg, "\"bias\"") &&
              strstr(cfg, "\"task_type\"") < strstr(cfg, "\"use_dora\""));
        free(cfg);
    }
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == before); /* bit-identical */
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m2, &in);
    CHECK(in.n_trainable == 3ull * 2 * ((32 + 32) + (32 + 16) + (40 + 32)));
    /* loading into a matching attachment overwrites its weights */
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == before);
    peft_model_close(&m2);
    peft_model_close(&m);
}

TEST(load_adapter_errors)
{
    peft_model *m = open_tiny(1);
    CHECK(peft_load_adapter(m, "/nonexistent-adapter") == PEFT_ENOTFOUND);
    /* a config whose rank disagrees with the tensors */
    char *d = mktmp();
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "cp %s %s/", test_data("tiny/all_linear/adapter/adapter_model.safetensors"), d);
    CHECK(system(src) == 0);
    snprintf(dst, sizeof dst, "%s/adapter_config.json", d);
    FILE *f = fopen(dst, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"target_modules\": [\"q_proj\", \"k_proj\", "
          "\"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]}", f);
    fclose(f);
    CHECK(peft_load_adapter(m, d) == PEFT_ESHAPE);
    CHECK(strstr(peft_last_error(), "lora_A.weight' has shape [4, 32], expected [8, 32]"));
    /* fewer targets than the file holds: unexpected tensors */
    f = fopen(dst, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}", f);
    fclose(f);
    CHECK(peft_load_adapter(m, d) == PEFT_EFORMAT);
    CHECK(strstr(peft_last_error(), "unexpected tensor"));
    f = fopen(dst, "w");
    fputs("{\"peft_type\": \"BOFT\", \"target_modules\": [\"q_proj\"]}", f);
    fclose(f);
    CHECK(peft_load_adapter(m, d) == PEFT_EUNSUPPORTED);
    f = fopen(dst, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4, \"target_modules\": [\"q_proj\"], \"layers_to_transform\": [7]}", f);
    fclose(f);
    CHECK(peft_load_adapter(m, d) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "out of range"));
    f = fopen(dst, "w");
    fputs("{\"peft_type\": \"LORA\", \"r\": 4,", f);
    fclose(f);
    CHECK(peft_load_adapter(m, d) == PEFT_EFORMAT);
    /* after all the failures nothing is attached */
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    CHECK(in.n_trainable == 0);
    peft_model_close(&m);
}

TEST(save_is_atomic_on_write_failure)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.rank = 16;
    o.init = PEFT_INIT_GAUSSIAN;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    char *d = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    size_t l1 = 0, l2 = 0;
    char *before = read_text(d, "adapter_model.safetensors", &l1);
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    for (size_t i = 0; i < n; i++)
        p[i] += 1.0f;
    /* a file-size limit makes the write fail part-way (like a full disk) */
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 4096;
    setrlimit(RLIMIT_FSIZE, &lim);
    int rc = peft_save_adapter(m, d, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc == PEFT_EIO);
    CHECK(strstr(peft_last_error(), "previous file left intact"));
    char *after = read_text(d, "adapter_model.safetensors", &l2);
    CHECK(before && after && l1 == l2 && memcmp(before, after, l1) == 0);
    /* no temporary files left behind */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test $(ls %s | wc -l) -eq 2", d);
    CHECK(system(cmd) == 0);
    free(before);
    free(after);
    peft_model_close(&m);
}

TEST(training_lowers_loss)
{
    peft_model *m = open_tiny(2);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 2e-2));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_WARMUP_STEPS, 3));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_TOTAL_STEPS, 40));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_SCHEDULE, PEFT_SCHEDULE_COSINE));
    int32_t tok[4 * 16];
    make_batch(tok, 64, 1234);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, 16, NULL};
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    double first = 0, last = 0;
    for (int s = 0; s < 40; s++) {
        CHECK_OK(peft_step(m, &b, &r));
        if (s == 0) {
            first = r.loss;
            CHECK_CLOSE(r.lr, 2e-2 / 3, 1e-9); /* warmup */
        }
        last = r.loss;
    }
    CHECK_CLOSE(r.lr, 2e-2 * 0.5 * (1 + cos(M_PI * 36.0 / 37.0)), 1e-9);
    CHECK_MSG(last < 0.5 * first, "loss %g -> %g", first, last);
    peft_model_close(&m);
}

TEST(packed_documents_equal_separate_sequences)
{
    peft_model *m = open_tiny(2);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.init = PEFT_INIT_GAUSSIAN;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    /* make B nonzero so every path carries signal */
    float *p, *g;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0.0f)
            p[i] = 0.01f * (float)((i * 37) % 11) - 0.05f;
    int32_t tok[16], seg[16];
    make_batch(tok, 16, 99);
    for (int i = 0; i < 16; i++)
        seg[i] = i < 6 ? 7 : 3;
    peft_batch packed = {PEFT_BATCH_VERSION, tok, NULL, 1, 16, seg};
    peft_batch a = {PEFT_BATCH_VERSION, tok, NULL, 1, 6, NULL}, b = {PEFT_BATCH_VERSION, tok + 6, NULL, 1, 10, NULL};
    peft_eval_result ep = PEFT_EVAL_RESULT_INIT, ea = PEFT_EVAL_RESULT_INIT, eb = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &packed, &ep));
    CHECK_OK(peft_eval(m, &a, &ea));
    CHECK_OK(peft_eval(m, &b, &eb));
    CHECK(ep.tokens == 14 && ea.tokens + eb.tokens == 14);
    CHECK_CLOSE(ep.loss_sum, ea.loss_sum + eb.loss_sum, 1e-5);
    /* gradients: packed == the two documents accumulated */
    CHECK_OK(peft_forward_backward(m, &packed, NULL));
    CHECK_OK(peft_grad_buffer(&g, &n, m));
    float *gp = malloc(n * sizeof *gp);
    memcpy(gp, g, n * sizeof *gp);
    CHECK_OK(peft_zero_grad(m));
    CHECK_OK(peft_forward_backward(m, &a, NULL));
    CHECK_OK(peft_forward_backward(m, &b, NULL));
    double worst = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs(gp[i] - g[i]));
        mx = fmax(mx, fabs(g[i]));
    }
    CHECK_MSG(worst <= 1e-5 * fmax(mx, 1.0), "max gradient difference %g (scale %g)", worst, mx);
    /* without seq_ids the two documents see each other: a different loss */
    peft_batch plain = {PEFT_BATCH_VERSION, tok, NULL, 1, 16, NULL};
    peft_eval_result e2 = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &plain, &e2));
    CHECK(e2.tokens == 15 && e2.loss_sum != ep.loss_sum);
    /* a version-1 batch never reads seq_ids */
    struct {
        peft_batch b;
    } v1 = {{1, tok, NULL, 1, 16, (const int32_t *)(uintptr_t)1}};
    peft_eval_result e3 = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &v1.b, &e3));
    CHECK(e3.loss_sum == e2.loss_sum);
    free(gp);
    peft_model_close(&m);
}

TEST(merge_unmerge_and_export)
{
    peft_model *m = open_tiny(2), *base = open_tiny(1);
    const char *ad = test_data("tiny/all_linear/adapter");
    CHECK_OK(peft_load_adapter(m, ad));
    double with = eval_loss(m), base_loss = eval_loss(base);
    CHECK(with != base_loss);
    CHECK_OK(peft_merge_adapter(m));
    CHECK(peft_merge_adapter(m) == PEFT_ESTATE);
    CHECK_CLOSE(eval_loss(m), with, 1e-5);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 1, 8, NULL};
    CHECK(peft_step(m, &b, NULL) == PEFT_ESTATE);
    CHECK(peft_load_adapter(m, ad) == PEFT_ESTATE);
    /* generation through a session uses the merged weights */
    peft_session *s;
    float l1[48], l2[48];
    CHECK_OK(peft_session_create(&s, m, 8));
    CHECK_OK(peft_session_feed(s, tok, 8, l1));
    CHECK_OK(peft_unmerge_adapter(m));
    CHECK(peft_unmerge_adapter(m) == PEFT_ESTATE);
    CHECK(eval_loss(m) == with); /* exact: the base weights are restored */
    CHECK_OK(peft_session_reset(s));
    CHECK_OK(peft_session_feed(s, tok, 8, l2));
    for (int i = 0; i < 48; i++)
        CHECK_CLOSE(l1[i], l2[i], 1e-4);
    peft_session_free(&s);
    /* export as a Hugging Face directory and reopen it */
    char *d = mktmp();
    CHECK_OK(peft_save_merged(m, d));
    peft_model *mm;
    CHECK_OK(peft_model_open(&mm, d, NULL));
    CHECK_CLOSE(eval_loss(mm), with, 1e-5);
    peft_model_close(&mm);
    /* budget solver: all-linear on the tiny model costs 3 * 440 parameters per unit of rank */
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    int32_t r;
    CHECK_OK(peft_solve_rank(&r, m, &o, 5280));
    CHECK(r == 4);
    CHECK_OK(peft_solve_rank(&r, m, &o, 5279));
    CHECK(r == 3);
    CHECK(peft_solve_rank(&r, m, &o, 1319) == PEFT_ERANGE);
    /* DoRA: the magnitude vectors are a fixed cost on top of the rank */
    o.use_dora = 1;
    uint64_t n4, n5;
    o.rank = 4;
    CHECK_OK(peft_count_lora(&n4, m, &o));
    o.rank = 5;
    CHECK_OK(peft_count_lora(&n5, m, &o));
    CHECK_OK(peft_solve_rank(&r, m, &o, n4));
    CHECK(r == 4);
    CHECK_OK(peft_solve_rank(&r, m, &o, n5 - 1));
    CHECK(r == 4);
    CHECK_OK(peft_solve_rank(&r, m, &o, n5));
    CHECK(r == 5);
    peft_model_close(&m);
    peft_model_close(&base);
}

TEST(dora_save_load_merge)
{
    peft_model *m = open_tiny(2);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_V | PEFT_TARGET_DOWN;
    o.rank = 4;
    o.use_dora = 1;
    uint64_t n_tr;
    CHECK_OK(peft_attach_lora(m, &o, &n_tr));
    /* A, B and one magnitude per output row: q (32+32), v (32+16), down (40+32) */
    CHECK(n_tr == 3ull * (4 * (64 + 48 + 72) + 32 + 16 + 32));
    double base = eval_loss(m);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    int32_t tok[4 * 16];
    for (int s = 0; s < 5; s++) {
        make_batch(tok, 64, (uint32_t)s + 40);
        peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, 16, NULL};
        CHECK_OK(peft_step(m, &b, NULL));
    }
    double trained = eval_loss(m);
    CHECK(trained != base);
    char *d = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"use_dora\": true"));
    free(cfg);
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == trained);
    CHECK_OK(peft_merge_adapter(m2));
    CHECK_CLOSE(eval_loss(m2), trained, 1e-5);
    peft_model_close(&m2);
    /* the magnitude gradient is exact (the norm does not depend on it): finite differences */
    float *p, *g;
    size_t n;
    CHECK_OK(peft_zero_grad(m));
    make_batch(tok, 64, 5);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, 16, NULL};
    CHECK_OK(peft_forward_backward(m, &b, NULL));
    CHECK_OK(peft_param_buffer(&p, &n, m));
    CHECK_OK(peft_grad_buffer(&g, &n, m));
    /* the first module's magnitude follows its A (4 x 32) and B (32 x 4) */
    size_t off_m = 4 * 32 + 32 * 4;
    for (size_t i = off_m; i < off_m + 32; i += 5) {
        float save = p[i], h = 1e-2f;
        peft_eval_result ep = PEFT_EVAL_RESULT_INIT, em = PEFT_EVAL_RESULT_INIT;
        p[i] = save + h;
        peft_eval(m, &b, &ep);
        p[i] = save - h;
        peft_eval(m, &b, &em);
        p[i] = save;
        double num = (ep.loss_sum - em.loss_sum) / (2 * h);
        CHECK_MSG(fabs(num - g[i]) <= 1e-3 + 2e-2 * fabs(num), "magnitude %zu: analytic %g numeric %g", i, g[i], num);
    }
    peft_model_close(&m);
    o.dropout = 0.1f;
    peft_model *m3 = open_tiny(1);
    CHECK(peft_attach_lora(m3, &o, NULL) == PEFT_EUNSUPPORTED);
    peft_model_close(&m3);
}

TEST(rank_and_alpha_patterns)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_DOWN;
    o.rank = 4;
    o.alpha = 8;
    o.init = PEFT_INIT_GAUSSIAN;
    o.rank_pattern = "down_proj=2,layers.1.self_attn.q_proj=6";
    o.alpha_pattern = "layers.2.mlp.down_proj=3.5";
    uint64_t n;
    CHECK_OK(peft_count_lora(&n, m, &o));
    /* q: 4*(64) in layers 0 and 2, 6*64 in layer 1; down: 2*(40+32) in every layer */
    CHECK(n == 4 * 64 * 2 + 6 * 64 + 3 * 2 * 72);
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    float *p;
    size_t np;
    CHECK_OK(peft_param_buffer(&p, &np, m));
    for (size_t i = 0; i < np; i++)
        if (p[i] == 0.0f)
            p[i] = 0.02f * (float)((i * 7) % 5) - 0.04f;
    double before = eval_loss(m);
    char *d = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"rank_pattern\": {\n    \"down_proj\": 2,\n    \"layers.1.self_attn.q_proj\": 6\n  }"));
    CHECK(cfg && strstr(cfg, "\"alpha_pattern\": {\n    \"layers.2.mlp.down_proj\": 3.5\n  }"));
    free(cfg);
    peft_model *m2 = open_tiny(2);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == before);
    /* alpha matters: the same weights with another alpha_pattern give another loss */
    peft_model_close(&m2);
    o.alpha_pattern = NULL;
    m2 = open_tiny(1);
    CHECK_OK(peft_attach_lora(m2, &o, NULL));
    float *p2;
    CHECK_OK(peft_param_buffer(&p2, &np, m2));
    memcpy(p2, p, np * sizeof *p);
    CHECK(eval_loss(m2) != before);
    peft_model_close(&m2);
    o.rank_pattern = "q_proj=x";
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    o.rank_pattern = "q.*=3";
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EUNSUPPORTED);
    peft_model_close(&m);
}

/* LoRA+: with ratio k the first AdamW step moves B by k times what it moves A (both by ~lr). */
TEST(loraplus_ratio)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q;
    o.layers = "0";
    o.rank = 2;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    for (size_t i = 0; i < n; i++)
        p[i] = 0.1f * (float)((int)(i % 7) - 3) + 0.05f; /* nonzero A and B: both get gradients */
    float *before = malloc(n * sizeof *before);
    memcpy(before, p, n * sizeof *before);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-3));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LORAPLUS_RATIO, 16));
    int32_t tok[32];
    make_batch(tok, 32, 11);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    CHECK_OK(peft_step(m, &b, NULL));
    /* A is 2 x 32, B is 32 x 2; a first Adam step moves each entry by ~lr * sign(g) */
    double ma = 0, mb = 0;
    for (size_t i = 0; i < 64; i++)
        ma = fmax(ma, fabs(p[i] - before[i]));
    for (size_t i = 64; i < n; i++)
        mb = fmax(mb, fabs(p[i] - before[i]));
    CHECK_CLOSE(ma, 1e-3, 1e-3);
    CHECK_CLOSE(mb, 16e-3, 1e-3);
    free(before);
    peft_model_close(&m);
}

TEST(ia3_save_load_merge)
{
    peft_model *m = open_tiny(2);
    peft_ia3_options o = PEFT_IA3_OPTIONS_INIT;
    o.layers = "1-2";
    uint64_t n;
    CHECK_OK(peft_count_ia3(&n, m, &o));
    CHECK(n == 2ull * (16 + 16 + 40)); /* k, v outputs (16 each), down input (40), layers 1 and 2 */
    double base = eval_loss(m);
    CHECK_OK(peft_attach_ia3(m, &o, NULL));
    CHECK(eval_loss(m) == base); /* ones: the identity */
    CHECK(peft_attach_ia3(m, &o, NULL) == PEFT_ESTATE);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 3e-2));
    int32_t tok[4 * 16];
    for (int s = 0; s < 5; s++) {
        make_batch(tok, 64, (uint32_t)s + 70);
        peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, 16, NULL};
        CHECK_OK(peft_step(m, &b, NULL));
    }
    double trained = eval_loss(m);
    CHECK(trained != base);
    char *d = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"peft_type\": \"IA3\"") && strstr(cfg, "\"model.layers.2.mlp.down_proj\"") &&
          strstr(cfg, "\"feedforward_modules\": [\n    \"down_proj\"\n  ]"));
    free(cfg);
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == trained);
    CHECK_OK(peft_merge_adapter(m2));
    CHECK_CLOSE(eval_loss(m2), trained, 1e-5);
    peft_model_close(&m2);
    peft_model_close(&m);
    o.feedforward = PEFT_TARGET_Q; /* not a target */
    m = open_tiny(1);
    CHECK(peft_count_ia3(&n, m, &o) == PEFT_EINVAL);
    peft_model_close(&m);
}

TEST(norm_tuning_save_load_export)
{
    peft_model *m = open_tiny(2);
    peft_norms_options o = PEFT_NORMS_OPTIONS_INIT;
    o.layers = "last:1";
    uint64_t n;
    CHECK_OK(peft_count_norms(&n, m, &o));
    CHECK(n == 3 * 32); /* two norms of layer 2 and the final norm */
    double base = eval_loss(m);
    CHECK_OK(peft_attach_norms(m, &o, NULL));
    CHECK(eval_loss(m) == base); /* starts from the base weights */
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    int32_t tok[4 * 16];
    for (int s = 0; s < 5; s++) {
        make_batch(tok, 64, (uint32_t)s + 90);
        peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, 16, NULL};
        CHECK_OK(peft_step(m, &b, NULL));
    }
    double trained = eval_loss(m);
    CHECK(trained != base);
    CHECK(peft_merge_adapter(m) == PEFT_EUNSUPPORTED);
    char *d = mktmp(), *d2 = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"LN_TUNING\"") && strstr(cfg, "\"model.layers.2.post_attention_layernorm\"") &&
          strstr(cfg, "\"model.norm\""));
    free(cfg);
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == trained);
    peft_model_close(&m2);
    CHECK_OK(peft_save_merged(m, d2));
    CHECK_OK(peft_model_open(&m2, d2, NULL));
    CHECK(eval_loss(m2) == trained);
    peft_model_close(&m2);
    peft_model_close(&m);
}

TEST(checkpoint_torn_is_refused)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    int32_t tok[32];
    make_batch(tok, 32, 3);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    CHECK_OK(peft_step(m, &b, NULL));
    char *d = mktmp();
    CHECK_OK(peft_save_checkpoint(m, d));
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_checkpoint(m2, d));
    double st;
    CHECK_OK(peft_opt_get(m2, PEFT_OPT_STEP, &st));
    CHECK(st == 1);
    CHECK(peft_opt_set(m2, PEFT_OPT_STEP, 5) == PEFT_EINVAL);
    peft_model_close(&m2);
    /* the adapter file from a later save, the optimizer state from the earlier one */
    CHECK_OK(peft_step(m, &b, NULL));
    CHECK_OK(peft_save_adapter(m, d, NULL));
    m2 = open_tiny(1);
    CHECK(peft_load_checkpoint(m2, d) == PEFT_EFORMAT && strstr(peft_last_error(), "other adapter weights"));
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m2, &in);
    CHECK(in.n_trainable == 0); /* nothing half-restored */
    peft_model_close(&m2);
    peft_model_close(&m);
}

/* With the adapter attached (eval loss `with`): a session's logits equal the merged model's,
   unmerging restores the loss exactly, and the merged export reopens with the same loss. */
static void merge_session_export(peft_model *m, const int32_t *tok, double with)
{
    peft_session *s;
    float l1[48], l2[48];
    CHECK_OK(peft_session_create(&s, m, 8));
    CHECK_OK(peft_session_feed(s, tok, 8, l1));
    CHECK_OK(peft_merge_adapter(m));
    CHECK_CLOSE(eval_loss(m), with, 1e-5);
    CHECK_OK(peft_session_reset(s));
    CHECK_OK(peft_session_feed(s, tok, 8, l2));
    for (int i = 0; i < 48; i++)
        CHECK_CLOSE(l1[i], l2[i], 1e-4);
    CHECK_OK(peft_unmerge_adapter(m));
    CHECK(eval_loss(m) == with);
    peft_session_free(&s);
    char *dm = mktmp();
    CHECK_OK(peft_save_merged(m, dm));
    peft_model *mm;
    CHECK_OK(peft_model_open(&mm, dm, NULL));
    CHECK_CLOSE(eval_loss(mm), with, 1e-5);
    peft_model_close(&mm);
}

TEST(embed_lora_lifecycle)
{
    peft_model *m = open_tiny(2), *base = open_tiny(1);
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    const int V = in.vocab_size, D = in.hidden_size, L = in.n_layers;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_EMBED;
    o.rank = 2;
    uint64_t n_tr, n_count;
    CHECK_OK(peft_count_lora(&n_count, m, &o));
    CHECK_OK(peft_attach_lora(m, &o, &n_tr));
    CHECK(n_tr == n_count);
    CHECK(n_tr == (uint64_t)L * 2 * (D + in.n_heads * in.head_dim) + 2ull * (V + D));
    /* A = 0 at init (PEFT): the model is the base model */
    CHECK(eval_loss(m) == eval_loss(base));
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    for (size_t i = 0; i < n; i++)
        p[i] = 0.1f * (float)((int)(i % 7) - 3) + 0.05f;
    size_t e0 = n - 2 * (size_t)(V + D); /* the embedding adapter: A (2, V) then B (D, 2), last */
    double with = eval_loss(m);
    CHECK(with != eval_loss(base));
    /* its own learning rate: ratio 0 freezes it, the q adapters move */
    float *before = malloc(n * sizeof *before);
    memcpy(before, p, n * sizeof *before);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-3));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_EMBED_LR_RATIO, 0));
    int32_t tok[32];
    make_batch(tok, 32, 5);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    CHECK_OK(peft_step(m, &b, NULL));
    double mq = 0, me = 0;
    for (size_t i = 0; i < e0; i++)
        mq = fmax(mq, fabs(p[i] - before[i]));
    for (size_t i = e0; i < n; i++)
        me = fmax(me, fabs(p[i] - before[i]));
    CHECK_CLOSE(mq, 1e-3, 1e-4);
    CHECK(me == 0);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_EMBED_LR_RATIO, 0.25));
    memcpy(before, p, n * sizeof *before);
    CHECK_OK(peft_step(m, &b, NULL));
    me = 0;
    for (size_t i = e0; i < n; i++)
        me = fmax(me, fabs(p[i] - before[i]));
    CHECK(me > 1e-4 && me < 0.3e-3);
    free(before);
    with = eval_loss(m);
    /* save and load: the same function */
    char *d = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"embed_tokens\""));
    free(cfg);
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == with);
    peft_model_close(&m2);
    /* sessions apply it too; the merged export (the tiny model is untied) */
    merge_session_export(m, tok, with);
    /* not expressible: GGUF export, DoRA on the embeddings, a layer subset (PEFT would drop it) */
    char gp[128];
    snprintf(gp, sizeof gp, "%s/a.gguf", d);
    CHECK(peft_save_adapter_gguf(m, gp, NULL) == PEFT_EUNSUPPORTED);
    o.use_dora = 1;
    CHECK(peft_count_lora(&n_count, m, &o) == PEFT_EUNSUPPORTED);
    o.use_dora = 0;
    o.layers = "0";
    CHECK(peft_count_lora(&n_count, m, &o) == PEFT_EUNSUPPORTED);
    peft_model_close(&m);
    peft_model_close(&base);
}

/* Train 21 steps on one batch (make_batch with seed) at lr: the loss drops by more than
   min_drop. Save into *dir: adapter_config.json holds every needle, and a fresh model loading
   it has the same loss. tok receives the batch; returns the trained model's loss. */
static double train_save_reload(peft_model *m, int32_t *tok, uint32_t seed, double lr, double min_drop,
                                const char *const *needles, char **dir)
{
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, lr));
    make_batch(tok, 32, seed);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    peft_step_result r0 = PEFT_STEP_RESULT_INIT, r1 = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_step(m, &b, &r0));
    for (int i = 0; i < 20; i++)
        CHECK_OK(peft_step(m, &b, &r1));
    CHECK(r1.loss < r0.loss - min_drop);
    double with = eval_loss(m);
    *dir = mktmp();
    CHECK_OK(peft_save_adapter(m, *dir, NULL));
    size_t len;
    char *cfg = read_text(*dir, "adapter_config.json", &len);
    CHECK(cfg != NULL);
    for (int i = 0; cfg && needles[i]; i++)
        CHECK_MSG(strstr(cfg, needles[i]) != NULL, "adapter_config.json lacks %s", needles[i]);
    free(cfg);
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, *dir));
    CHECK(eval_loss(m2) == with);
    peft_model_close(&m2);
    return with;
}

TEST(vera_lifecycle)
{
    peft_model *m = open_tiny(2), *base = open_tiny(1);
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    peft_vera_options o = PEFT_VERA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_V | PEFT_TARGET_DOWN;
    o.rank = 16;
    o.seed = 7;
    uint64_t n_tr, n_count;
    int qd = in.n_heads * in.head_dim, kvd = in.n_kv_heads * in.head_dim;
    CHECK_OK(peft_count_vera(&n_count, m, &o));
    CHECK_OK(peft_attach_vera(m, &o, &n_tr));
    /* lambda_d (rank) and lambda_b (out) per module */
    CHECK(n_tr == n_count && n_tr == (uint64_t)in.n_layers * (3 * 16 + qd + kvd + in.hidden_size));
    CHECK(eval_loss(m) == eval_loss(base)); /* lambda_b = 0 */
    CHECK(peft_attach_vera(m, &o, NULL) == PEFT_ESTATE);
    /* it learns, saves and reloads (also onto the same layout) */
    int32_t tok[32];
    char *d;
    const char *const needles[] = {"\"peft_type\": \"VERA\"", "\"save_projection\": true", "\"projection_prng_key\": 7", NULL};
    double with = train_save_reload(m, tok, 3, 2e-2, 0.05, needles, &d);
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK_OK(peft_load_adapter(m2, d)); /* onto the same layout: the weights only */
    CHECK(eval_loss(m2) == with);
    peft_model_close(&m2);
    /* merge, sessions, export */
    merge_session_export(m, tok, with);
    char gp[128];
    snprintf(gp, sizeof gp, "%s/a.gguf", d);
    CHECK(peft_save_adapter_gguf(m, gp, NULL) == PEFT_EUNSUPPORTED);
    /* bad options */
    o.rank = 0;
    CHECK(peft_count_vera(&n_count, m, &o) == PEFT_EINVAL);
    o.rank = 4;
    o.targets = PEFT_TARGET_EMBED;
    CHECK(peft_count_vera(&n_count, m, &o) == PEFT_EINVAL);
    peft_model_close(&m);
    peft_model_close(&base);
}

TEST(loha_lifecycle)
{
    peft_model *m = open_tiny(2), *base = open_tiny(1);
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.variant = PEFT_VARIANT_LOHA;
    o.targets = PEFT_TARGET_V | PEFT_TARGET_GATE;
    o.rank = 4;
    o.alpha = 4;
    uint64_t n_tr, n_count;
    int kvd = in.n_kv_heads * in.head_dim, D = in.hidden_size, F = in.intermediate_size;
    CHECK_OK(peft_count_lora(&n_count, m, &o));
    CHECK_OK(peft_attach_lora(m, &o, &n_tr));
    /* 2 r (in + out) per module */
    CHECK(n_tr == n_count && n_tr == (uint64_t)in.n_layers * 2 * 4 * ((D + kvd) + (D + F)));
    int32_t r;
    CHECK_OK(peft_solve_rank(&r, m, &o, n_tr));
    CHECK(r == 4);
    CHECK(eval_loss(m) == eval_loss(base)); /* w2_b = 0 */
    int32_t tok[32];
    char *d;
    const char *const needles[] = {"\"peft_type\": \"LOHA\"", "\"alpha\": 4,", NULL};
    double with = train_save_reload(m, tok, 9, 1e-2, 0.05, needles, &d);
    merge_session_export(m, tok, with);
    /* what LoHa does not combine with */
    o.use_dora = 1;
    CHECK(peft_count_lora(&n_count, m, &o) == PEFT_EUNSUPPORTED);
    o.use_dora = 0;
    o.targets |= PEFT_TARGET_EMBED;
    CHECK(peft_count_lora(&n_count, m, &o) == PEFT_EUNSUPPORTED);
    o.variant = 7;
    CHECK(peft_count_lora(&n_count, m, &o) == PEFT_EINVAL);
    peft_model_close(&m);
    peft_model_close(&base);
}

TEST(lokr_lifecycle)
{
    peft_model *m = open_tiny(2), *base = open_tiny(1);
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    CHECK(in.hidden_size == 32 && in.n_heads * in.head_dim == 32);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.variant = PEFT_VARIANT_LOKR;
    o.targets = PEFT_TARGET_Q;
    uint64_t n2, n4, n64;
    /* q is 32 x 32 = (4 x 8) x (4 x 8): w1 4 x 4, then w2_a 8 x r + w2_b r x 8, or a full 8 x 8 w2
       once r >= max(8, 8) / 2: the size saturates */
    o.rank = 2;
    CHECK_OK(peft_count_lora(&n2, m, &o));
    o.rank = 4;
    CHECK_OK(peft_count_lora(&n4, m, &o));
    o.rank = 64;
    CHECK_OK(peft_count_lora(&n64, m, &o));
    CHECK(n2 == (uint64_t)in.n_layers * (16 + 2 * 16) && n4 == (uint64_t)in.n_layers * (16 + 64) && n64 == n4);
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_DOWN;
    o.rank = 2;
    o.alpha = 4;
    uint64_t n_tr;
    CHECK_OK(peft_attach_lora(m, &o, &n_tr));
    CHECK(eval_loss(m) == eval_loss(base)); /* w1 = 0 */
    int32_t tok[32];
    char *d;
    const char *const needles[] = {"\"peft_type\": \"LOKR\"", "\"decompose_factor\": -1", NULL};
    double with = train_save_reload(m, tok, 13, 2e-2, 0.02, needles, &d);
    merge_session_export(m, tok, with);
    peft_model_close(&m);
    peft_model_close(&base);
}


/* The tiny model with tied embeddings: a directory with its weights and a config saying so. */
static char *tiny_tied_dir(void)
{
    char *d = mktmp(), src[512], dst[512];
    snprintf(src, sizeof src, "%s/model.safetensors", test_data("tiny"));
    snprintf(dst, sizeof dst, "%s/model.safetensors", d);
    CHECK(symlink(src, dst) == 0);
    size_t len;
    char *cfg = read_text(test_data("tiny"), "config.json", &len);
    char *t = cfg ? strstr(cfg, "\"tie_word_embeddings\": false") : NULL;
    CHECK(t != NULL);
    if (t) {
        memcpy(t + 23, "true, ", 6); /* same length: "false" -> "true," + space */
        snprintf(dst, sizeof dst, "%s/config.json", d);
        FILE *f = fopen(dst, "wb");
        fwrite(cfg, 1, len, f);
        fclose(f);
    }
    free(cfg);
    return d;
}

/* Finite differences of the whole model w.r.t. sampled entries of the parameter block, after
   moving every parameter off its initial value (B = 0 would hide A's gradient). */
static void gradcheck_attached(peft_model *m, const char *what)
{
    float *p, *g;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    for (size_t i = 0; i < n; i++)
        p[i] += 0.05f * (float)((int)((i * 2654435761u) % 11) - 5) / 5.0f;
    int32_t tok[2 * 10];
    for (int i = 0; i < 20; i++)
        tok[i] = (i * 7 + 3) % 48;
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 10, NULL};
    CHECK_OK(peft_zero_grad(m));
    CHECK_OK(peft_forward_backward(m, &b, NULL));
    CHECK_OK(peft_grad_buffer(&g, &n, m));
    float *ga = malloc(n * sizeof *ga);
    memcpy(ga, g, n * sizeof *ga);
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(ga[i]));
    int bad = 0, checked = 0, nonzero = 0;
    for (size_t i = 0; i < n; i += n / 301 + 1) {
        float save = p[i], h = 1e-2f;
        peft_eval_result ep = PEFT_EVAL_RESULT_INIT, em = PEFT_EVAL_RESULT_INIT;
        p[i] = save + h;
        CHECK_OK(peft_eval(m, &b, &ep));
        p[i] = save - h;
        CHECK_OK(peft_eval(m, &b, &em));
        p[i] = save;
        double num = (ep.loss_sum - em.loss_sum) / (2.0 * h);
        checked++;
        nonzero += fabs(num) > 1e-3 * gmax;
        if (fabs(num - ga[i]) > 2e-3 * gmax + 2e-2 * fabs(num) && bad++ < 5)
            fprintf(stderr, "%s: param %zu of %zu: analytic %.6g numeric %.6g\n", what, i, n, ga[i], num);
    }
    CHECK_MSG(checked > 60 && nonzero > checked / 10, "%s: %d checked, %d non-zero", what, checked, nonzero);
    CHECK_MSG(bad == 0, "%s: %d gradients off", what, bad);
    CHECK_OK(peft_zero_grad(m));
    free(ga);
}

static const int32_t extra_tokens[3] = {3, 7, 11};

static int has_bytes(const char *buf, size_t len, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= len; i++)
        if (!memcmp(buf + i, needle, k))
            return 1;
    return 0;
}

/* LoRA with lm_head, modules_to_save, norms and token rows: exact counts, gradients. */
TEST(lora_extras_gradients_and_counts)
{
    char *tied = tiny_tied_dir();
    peft_model *m = open_tiny(2), *mt;
    CHECK_OK(peft_model_open(&mt, tied, NULL));
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(mt, &in);
    CHECK(in.tied_embeddings == 1);
    const uint64_t V = 48, D = 32, r = 2, Hq = 32;
    struct {
        int tied;
        uint32_t targets, save, norms;
        const char *layers;
        int n_tok;
        uint64_t count;
        const char *what;
    } cs[] = {
        {0, PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD, PEFT_SAVE_EMBED, PEFT_NORM_ALL, "1-2", 0,
         2 * r * (D + Hq) + r * (D + V) + V * D + 2 * 2 * D + D, "q + lm_head LoRA, embeddings, norms (layers 1-2)"},
        {1, PEFT_TARGET_V | PEFT_TARGET_LM_HEAD, 0, 0, NULL, 3, 3 * r * (D + 16) + r * (D + V) + 3 * D,
         "tied: v + lm_head LoRA, token rows"},
        {0, PEFT_TARGET_V, PEFT_SAVE_LM_HEAD, PEFT_NORM_FINAL | PEFT_NORM_POST_ATTENTION, "last:1", 3,
         r * (D + 16) + 3 * D + V * D + D + D, "untied: token rows, lm_head in full, norms (last layer)"},
        {1, PEFT_TARGET_O, PEFT_SAVE_EMBED | PEFT_SAVE_LM_HEAD, 0, "last:1", 0, r * (Hq + D) + 2 * V * D,
         "tied: embeddings and lm_head in full"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        peft_model *x = cs[c].tied ? mt : m;
        peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
        o.targets = cs[c].targets;
        o.rank = (int32_t)r;
        o.layers = cs[c].layers;
        o.modules_to_save = cs[c].save;
        o.norms = cs[c].norms;
        o.token_indices = cs[c].n_tok ? extra_tokens : NULL;
        o.n_token_indices = cs[c].n_tok;
        uint64_t n_count, n_tr;
        CHECK_OK(peft_count_lora(&n_count, x, &o));
        CHECK_MSG(n_count == cs[c].count, "%s: count %llu, expected %llu", cs[c].what,
                  (unsigned long long)n_count, (unsigned long long)cs[c].count);
        double base = eval_loss(x);
        CHECK_OK(peft_attach_lora(x, &o, &n_tr));
        CHECK(n_tr == n_count);
        /* everything starts as the base model */
        CHECK_MSG(fabs(eval_loss(x) - base) < 1e-6, "%s: changed the model at init", cs[c].what);
        gradcheck_attached(x, cs[c].what);
        CHECK_OK(peft_detach(x));
    }
    /* refused: both forms of one module, rows with the embeddings trained, ids out of range or repeated */
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    uint64_t n;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_EMBED;
    o.modules_to_save = PEFT_SAVE_EMBED;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD;
    o.modules_to_save = PEFT_SAVE_LM_HEAD;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    o.modules_to_save = PEFT_SAVE_EMBED;
    o.targets = PEFT_TARGET_Q;
    o.token_indices = extra_tokens;
    o.n_token_indices = 3;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    o.modules_to_save = 0;
    int32_t badtok[2] = {5, 48};
    o.token_indices = badtok;
    o.n_token_indices = 2;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    badtok[1] = 5;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "twice") != NULL);
    o.n_token_indices = 0;
    o.variant = PEFT_VARIANT_LOHA;
    o.norms = PEFT_NORM_FINAL;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EUNSUPPORTED);
    o.variant = PEFT_VARIANT_LORA;
    o.use_dora = 1;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EUNSUPPORTED);
    peft_model_close(&m);
    peft_model_close(&mt);
}

/* Train, save (PEFT keys and config fields), reload to the same loss, sessions, merge and the
   merged export (untied when only one side of a tied pair changed); per-group rates. */
static void extras_lifecycle(int tied, uint32_t targets, uint32_t save, uint32_t norms, int n_tok,
                             const char *const *needles)
{
    char *dir = tied ? tiny_tied_dir() : NULL;
    peft_model *m;
    CHECK_OK(peft_model_open(&m, tied ? dir : test_data("tiny"), NULL));
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = targets;
    o.rank = 2;
    o.modules_to_save = save;
    o.norms = norms;
    o.token_indices = n_tok ? extra_tokens : NULL;
    o.n_token_indices = n_tok;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    int32_t tok[32];
    CHECK_OK(peft_opt_set(m, PEFT_OPT_EMBED_LR_RATIO, 0.5));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_NORM_LR_RATIO, 0.5));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    make_batch(tok, 32, 9);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    peft_step_result r0 = PEFT_STEP_RESULT_INIT, r1 = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_step(m, &b, &r0));
    for (int i = 0; i < 20; i++)
        CHECK_OK(peft_step(m, &b, &r1));
    CHECK(r1.loss < r0.loss - 0.05);
    double with = eval_loss(m);
    char *d = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    /* PEFT's config fields and tensor names */
    size_t len, slen;
    char *cfg = read_text(d, "adapter_config.json", &len), *st = read_text(d, "adapter_model.safetensors", &slen);
    CHECK(cfg && st);
    for (int i = 0; cfg && st && needles[i]; i++)
        if (!strncmp(needles[i], "base_model.", 11))
            CHECK_MSG(has_bytes(st, slen, needles[i]), "safetensors lacks %s", needles[i]);
        else
            CHECK_MSG(strstr(cfg, needles[i]) != NULL, "adapter_config.json lacks %s", needles[i]);
    free(cfg);
    free(st);
    peft_model *m2;
    CHECK_OK(peft_model_open(&m2, tied ? dir : test_data("tiny"), NULL));
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == with);
    /* loading again into the same layout overwrites the weights */
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK(eval_loss(m2) == with);
    peft_model_close(&m2);
    /* off: the base model; the merged export reopens to the same loss */
    CHECK_OK(peft_adapter_enable(m, 0));
    double base = eval_loss(m);
    CHECK(base != with);
    CHECK_OK(peft_adapter_enable(m, 1));
    merge_session_export(m, tok, with);
    peft_model_close(&m);
}

TEST(lora_extras_lifecycle_untied)
{
    const char *const n1[] = {"\"modules_to_save\": [\n    \"embed_tokens\",\n    \"input_layernorm\",\n    \"model.norm\"\n  ]",
                              "\"lm_head\"", "base_model.model.lm_head.lora_B.weight",
                              "base_model.model.model.embed_tokens.weight",
                              "base_model.model.model.layers.2.input_layernorm.weight",
                              "base_model.model.model.norm.weight", NULL};
    extras_lifecycle(0, PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD, PEFT_SAVE_EMBED, PEFT_NORM_INPUT | PEFT_NORM_FINAL, 0, n1);
    const char *const n2[] = {"\"modules_to_save\": [\n    \"lm_head\"\n  ]", "\"trainable_token_indices\": [\n    3,",
                              "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
                              "base_model.model.lm_head.weight", NULL};
    extras_lifecycle(0, PEFT_TARGET_V, PEFT_SAVE_LM_HEAD, 0, 3, n2);
}

TEST(lora_extras_lifecycle_tied)
{
    /* token rows shared by the lookup and lm_head: the export stays tied */
    const char *const n1[] = {"\"trainable_token_indices\"", "\"modules_to_save\": null", NULL};
    extras_lifecycle(1, PEFT_TARGET_V, 0, 0, 3, n1);
    /* lm_head LoRA changes the output side only: the export unties */
    const char *const n2[] = {"\"lm_head\"", "base_model.model.lm_head.lora_A.weight", NULL};
    extras_lifecycle(1, PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD, 0, 0, 0, n2);
    /* the embeddings trained in full: the input side only */
    const char *const n3[] = {"\"modules_to_save\": [\n    \"embed_tokens\"\n  ]", NULL};
    extras_lifecycle(1, PEFT_TARGET_Q, PEFT_SAVE_EMBED, 0, 0, n3);
}

/* Each group at its own learning rate and weight decay. */
TEST(parameter_groups_learning_rates)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q;
    o.rank = 2;
    o.modules_to_save = PEFT_SAVE_LM_HEAD;
    o.norms = PEFT_NORM_FINAL;
    size_t n;
    float *p;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_param_buffer(&p, &n, m));
    const size_t D = 32, V = 48, nq = 3 * 2 * (32 + 32);
    CHECK(n == nq + V * D + D);
    float *before = malloc(n * sizeof *before);
    int32_t tok[32];
    make_batch(tok, 32, 3);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    double bounds_lo, bounds_hi;
    CHECK_OK(peft_opt_bounds(PEFT_OPT_NORM_WEIGHT_DECAY, &bounds_lo, &bounds_hi));
    CHECK(bounds_lo == -1.0);
    peft_model *m2 = open_tiny(1); /* a twin taking the same steps */
    float *p2;
    CHECK_OK(peft_attach_lora(m2, &o, NULL));
    CHECK_OK(peft_param_buffer(&p2, &n, m2));
    for (int k = 0; k < 2; k++) {
        peft_model *x = k ? m2 : m;
        CHECK_OK(peft_opt_set(x, PEFT_OPT_LR, 1e-3));
        CHECK_OK(peft_opt_set(x, PEFT_OPT_EMBED_LR_RATIO, 0.1));
        CHECK_OK(peft_opt_set(x, PEFT_OPT_NORM_LR_RATIO, 0));
    }
    memcpy(before, p, n * sizeof *before);
    CHECK_OK(peft_step(m, &b, NULL));
    CHECK_OK(peft_step(m2, &b, NULL));
    double mq = 0, mh = 0, mn = 0;
    for (size_t i = 0; i < n; i++) {
        double dd = fabs(p[i] - before[i]);
        if (i < nq)
            mq = fmax(mq, dd);
        else if (i < nq + V * D)
            mh = fmax(mh, dd);
        else
            mn = fmax(mn, dd);
    }
    /* Adam's first step moves each weight by about lr x ratio */
    CHECK_CLOSE(mq, 1e-3, 1e-4);
    CHECK_CLOSE(mh, 1e-4, 1e-5);
    CHECK(mn == 0);
    /* decoupled weight decay per group: the same step on the twin without it differs in the
       norm weights by exactly lr x decay x w, elsewhere not at all */
    CHECK_OK(peft_opt_set(m, PEFT_OPT_NORM_LR_RATIO, 1));
    CHECK_OK(peft_opt_set(m2, PEFT_OPT_NORM_LR_RATIO, 1));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_NORM_WEIGHT_DECAY, 5.0));
    double v;
    CHECK_OK(peft_opt_get(m, PEFT_OPT_NORM_WEIGHT_DECAY, &v));
    CHECK(v == 5.0);
    CHECK_OK(peft_opt_get(m2, PEFT_OPT_EMBED_WEIGHT_DECAY, &v));
    CHECK(v == -1.0);
    memcpy(before, p, n * sizeof *before);
    CHECK_OK(peft_step(m, &b, NULL));
    CHECK_OK(peft_step(m2, &b, NULL));
    double worst = 0, other = 0;
    for (size_t i = 0; i < n; i++) {
        if (i >= nq + V * D)
            worst = fmax(worst, fabs((p2[i] - p[i]) - 1e-3 * 5.0 * before[i]));
        else
            other = fmax(other, fabs(p2[i] - p[i]));
    }
    CHECK_MSG(worst < 1e-6, "norm decay off by %g", worst);
    CHECK(other == 0);
    peft_model_close(&m2);
    free(before);
    peft_model_close(&m);
}


/* PiSSA and OLoRA: the model is unchanged at init (residual + adapter = base), the factors
   have the structure of the decomposition, training moves it, the plain-LoRA conversion
   applied to the original base gives the trained model, detaching restores the base. */
static void init_lifecycle(int init)
{
    peft_model *m = open_tiny(2), *base = open_tiny(1);
    double b0 = eval_loss(base);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_V | PEFT_TARGET_DOWN;
    o.rank = 3;
    o.alpha = 6;
    o.init = init;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_CLOSE(eval_loss(m), b0, 2e-5);
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    /* layer 0's q: A (3, 32) then B (32, 3). PiSSA: A A^T = B^T B = diag(S_r / s), decreasing;
       OLoRA: B^T B = I, A upper triangular */
    const float *A = p, *B = p + 3 * 32;
    double prev = INFINITY;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            double aa = 0, bb = 0;
            for (int c = 0; c < 32; c++) {
                aa += (double)A[i * 32 + c] * A[j * 32 + c];
                bb += (double)B[c * 3 + i] * B[c * 3 + j];
            }
            if (init == PEFT_INIT_PISSA) {
                CHECK_CLOSE(aa, bb, 1e-4);
                if (i != j)
                    CHECK(fabs(aa) < 1e-4);
                else {
                    CHECK(aa > 0 && aa <= prev + 1e-6);
                    prev = aa;
                }
            } else {
                CHECK_CLOSE(bb, i == j ? 1.0 : 0.0, 1e-5);
                if (j < i)
                    CHECK(A[i * 32 + j] == 0.0f);
            }
        }
    int32_t tok[32];
    make_batch(tok, 32, 21);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    peft_step_result r0 = PEFT_STEP_RESULT_INIT, r1 = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_step(m, &b, &r0));
    for (int i = 0; i < 10; i++)
        CHECK_OK(peft_step(m, &b, &r1));
    CHECK(r1.loss < r0.loss - 0.05);
    double with = eval_loss(m);
    CHECK(fabs(with - b0) > 1e-3);
    /* the PEFT form (init_lora_weights "pissa"/"olora") reloads onto the same base exactly */
    char *d = mktmp(), *dc = mktmp();
    CHECK_OK(peft_save_adapter(m, d, NULL));
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, init == PEFT_INIT_PISSA ? "\"init_lora_weights\": \"pissa\"" : "\"init_lora_weights\": \"olora\""));
    free(cfg);
    peft_model *m2 = open_tiny(1);
    CHECK_OK(peft_load_adapter(m2, d));
    CHECK_CLOSE(eval_loss(m2), with, 1e-6);
    peft_model_close(&m2);
    /* converted: a plain LoRA of rank 6, alpha 12, on the original base */
    peft_save_options so = PEFT_SAVE_OPTIONS_INIT;
    so.convert_to_lora = 1;
    CHECK_OK(peft_save_adapter(m, dc, &so));
    cfg = read_text(dc, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"init_lora_weights\": true") && strstr(cfg, "\"r\": 6") && strstr(cfg, "\"lora_alpha\": 12"));
    free(cfg);
    CHECK_OK(peft_load_adapter(base, dc));
    CHECK_CLOSE(eval_loss(base), with, 2e-5);
    /* GGUF needs the plain form */
    char gp[128];
    snprintf(gp, sizeof gp, "%s/a.gguf", d);
    CHECK(peft_save_adapter_gguf(m, gp, NULL) == PEFT_EUNSUPPORTED);
    CHECK_OK(peft_save_adapter_gguf(base, gp, NULL));
    /* merge and the merged export work on the residual */
    merge_session_export(m, tok, with);
    CHECK_OK(peft_detach(m));
    CHECK(eval_loss(m) == b0);
    /* not for DoRA, LoHa, the embeddings; rank above min(out, in) */
    o.use_dora = 1;
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EUNSUPPORTED);
    o.use_dora = 0;
    o.rank = 17; /* v is 16 x 32 */
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "min(out, in)") != NULL);
    o.rank = 3;
    CHECK_OK(peft_attach_lora(m, &o, NULL)); /* a failed attach left nothing behind */
    peft_model_close(&m);
    peft_model_close(&base);
}

TEST(pissa_lifecycle) { init_lifecycle(PEFT_INIT_PISSA); }
TEST(olora_lifecycle) { init_lifecycle(PEFT_INIT_OLORA); }


/* target_modules as a regular expression (PEFT: re.fullmatch over module names). */
TEST(regex_targets)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = 0;
    o.rank = 2;
    o.target_regex = "model\\.layers\\.(0|2)\\.self_attn\\.(q|v)_proj|model\\.layers\\.1\\.mlp\\.down_proj";
    uint64_t n;
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == 2 * (2 * (32 + 32) + 2 * (32 + 16)) + 2 * (40 + 32));
    o.target_regex = "model\\.layers\\.\\d+\\.mlp\\.(?:gate|up)_proj";
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == 3 * 2 * 2 * (32 + 40));
    /* fullmatch: a prefix alone selects nothing */
    o.target_regex = "model\\.layers\\.1";
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "matches no module") != NULL);
    o.target_regex = "q_proj(";
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    o.target_regex = "(?=x).*";
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EUNSUPPORTED);
    o.target_regex = ".*q_proj";
    o.targets = PEFT_TARGET_V;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    o.targets = 0;
    o.target_regex = "model\\.layers\\.(0|2)\\.self_attn\\.(q|v)_proj|model\\.layers\\.1\\.mlp\\.down_proj|lm_head";
    CHECK_OK(peft_attach_lora(m, &o, &n));
    CHECK(n == 2 * (2 * (32 + 32) + 2 * (32 + 16)) + 2 * (40 + 32) + 2 * (32 + 48));
    int32_t tok[32];
    char *d;
    const char *const needles[] = {"\"target_modules\": \"model\\\\.layers\\\\.(0|2)", "\"layers_to_transform\": null", NULL};
    train_save_reload(m, tok, 17, 1e-2, 0.02, needles, &d);
    peft_model_close(&m);
}

static const struct h_case cases[] = {
    CASE(errors_and_versions), CASE(last_error_is_per_thread), CASE(info_and_exact_counts),
    CASE(determinism_and_thread_invariance), CASE(gradient_accumulation_equals_big_batch),
    CASE(split_step_equals_step), CASE(two_ranks_with_dropout_equal_one_process), CASE(grad_ready_ranges_cover_the_buffer_once_and_are_final), CASE(label_mask), CASE(state_errors), CASE(non_finite_loss_is_refused),
    CASE(save_load_round_trip), CASE(load_adapter_errors), CASE(save_is_atomic_on_write_failure),
    CASE(training_lowers_loss), CASE(packed_documents_equal_separate_sequences), CASE(merge_unmerge_and_export),
    CASE(dora_save_load_merge), CASE(rank_and_alpha_patterns), CASE(loraplus_ratio), CASE(ia3_save_load_merge),
    CASE(norm_tuning_save_load_export), CASE(checkpoint_torn_is_refused), CASE(embed_lora_lifecycle),
    CASE(vera_lifecycle), CASE(loha_lifecycle), CASE(lokr_lifecycle), CASE(lora_extras_gradients_and_counts),
    CASE(lora_extras_lifecycle_untied), CASE(lora_extras_lifecycle_tied), CASE(parameter_groups_learning_rates),
    CASE(pissa_lifecycle), CASE(olora_lifecycle), CASE(regex_targets),
};

TEST_MAIN(cases)
