/* The public API as a host sees it: only peft/peft.h. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_helpers.h"
#include "fd_helpers.h"
#include "harness.h"
#include "peft/peft.h"

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
/* parameters after `steps` steps of 4 sequences of seq_len tokens (batch_split: as two halves
   accumulated) */
static float *train_run_len(int threads, int steps, int accum, int batch_split, float dropout, int seq_len,
                            size_t *n_out)
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
    int32_t *tok = malloc(sizeof *tok * 4 * (size_t)seq_len);
    for (int s = 0; tok && s < steps; s++) {
        make_batch(tok, 4 * seq_len, (uint32_t)s);
        if (batch_split) {
            for (int h = 0; h < 2; h++) {
                peft_batch b = {PEFT_BATCH_VERSION, tok + h * 2 * seq_len, NULL, 2, seq_len, NULL};
                peft_step_result r = PEFT_STEP_RESULT_INIT;
                CHECK_OK(peft_step(m, &b, &r));
                CHECK(r.updated == (h == 1));
            }
        } else {
            peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 4, seq_len, NULL};
            CHECK_OK(peft_step(m, &b, NULL));
        }
    }
    free(tok);
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    float *copy = malloc(n * sizeof *copy);
    memcpy(copy, p, n * sizeof *copy);
    *n_out = n;
    peft_model_close(&m);
    return copy;
}

static float *train_run(int threads, int steps, int accum, int batch_split, float dropout, size_t *n_out)
{
    return train_run_len(threads, steps, accum, batch_split, dropout, 16, n_out);
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
    /* 800 rows a product: on 2 and 3 threads the CPU backend's products run as slabs of rows
       (one a thread, each packing its own op(B)); the same parameters, bit for bit */
    a = train_run_len(1, 2, 1, 0, 0.1f, 200, &n1), b = train_run_len(2, 2, 1, 0, 0.1f, 200, &n2);
    c = train_run_len(3, 2, 1, 0, 0.1f, 200, &n3);
    CHECK(a && b && c && n1 == n2 && n1 == n3);
    CHECK(memcmp(a, b, n1 * sizeof *a) == 0 && memcmp(a, c, n1 * sizeof *a) == 0);
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
    /* newer PEFT fields that change what the adapter computes: refused by name when set, read as
       a plain LoRA when unset */
    static const char *const fields[][2] = {{"\"alora_invocation_tokens\": [5, 6]", "aLoRA"},
                                            {"\"lora_bias\": true", "lora_B"},
                                            {"\"target_parameters\": [\"mlp.experts.gate_up_proj\"]", "MoE"},
                                            {"\"layer_replication\": [[0, 2], [1, 3]]", "replication"}};
    for (int i = 0; i < 5; i++) {
        f = fopen(dst, "w");
        fprintf(f, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\", "
                "\"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"], %s}",
                i < 4 ? fields[i][0] : "\"alora_invocation_tokens\": null, \"lora_bias\": false, "
                "\"exclude_modules\": null, \"layer_replication\": null, \"target_parameters\": []");
        fclose(f);
        int rc = peft_load_adapter(m, d);
        if (i < 4)
            CHECK_MSG(rc == PEFT_EUNSUPPORTED && strstr(peft_last_error(), fields[i][1]), "%s: %s", fields[i][0],
                      peft_last_error());
        else
            CHECK_OK(rc);
    }
    peft_detach(m);
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
        double num = fd_param(m, &b, p, i, 1e-2f);
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
static const struct h_case cases[] = {
    CASE(errors_and_versions), CASE(last_error_is_per_thread), CASE(info_and_exact_counts),
    CASE(determinism_and_thread_invariance), CASE(gradient_accumulation_equals_big_batch),
    CASE(split_step_equals_step), CASE(two_ranks_with_dropout_equal_one_process),
    CASE(grad_ready_ranges_cover_the_buffer_once_and_are_final), CASE(label_mask), CASE(state_errors),
    CASE(non_finite_loss_is_refused), CASE(save_load_round_trip), CASE(load_adapter_errors),
    CASE(save_is_atomic_on_write_failure), CASE(training_lowers_loss),
    CASE(packed_documents_equal_separate_sequences), CASE(merge_unmerge_and_export), CASE(dora_save_load_merge),
    CASE(rank_and_alpha_patterns), CASE(loraplus_ratio), CASE(ia3_save_load_merge),
    CASE(norm_tuning_save_load_export), CASE(checkpoint_torn_is_refused),
};

TEST_MAIN(cases)
