/*
 * Golden values: the committed PyTorch references (tests/data/tiny, made by
 * tests/golden/make_golden.py) and the reference figures of ../shared. The other model
 * families (Qwen, SmolLM3, Granite, biases, Gemma) are in test_families.c.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../lib/json.h"
#include "../lib/model.h"
#include "../lib/safetensors.h"
#include "golden_helpers.h"
#include "harness.h"
#include "peft/peft.h"

TEST(torch_step_all_linear) { step_case("all_linear", 2); }
TEST(torch_step_last_layer_rslora_clip_decay) { step_case("qv_down_last_rslora", 1); }
TEST(torch_step_dora) { step_case("dora_qkvo_up", 2); }
TEST(torch_step_ia3) { step_case("ia3_kv_down", 2); }
TEST(torch_step_norms) { step_case("norms_last2_final", 2); }
TEST(torch_step_embed) { step_case("embed_qv", 2); }
TEST(torch_step_vera) { step_case("vera_qv_down", 2); }
TEST(torch_step_loha) { step_case("loha_qo_up", 2); }
TEST(torch_step_lokr) { step_case("lokr_qv_gate", 2); }
TEST(torch_step_extras_head_embed_norm) { step_case("extras_head_embed_norm", 2); }
TEST(torch_step_extras_tokens_head) { step_case("extras_tokens_head", 2); }
/* PiSSA and OLoRA: loading recomputes the residual base; torch's SVD and QR made the reference */
TEST(torch_step_pissa) { step_case("pissa_qv_down", 2); }
TEST(torch_step_olora) { step_case("olora_qv_down", 1); }
/* prompt tuning: the soft prompt before each row, the first real token predicted from it */
TEST(torch_step_prompt) { step_case("prompt_5", 2); }
/* trainable tokens alone (PEFT TRAINABLE_TOKENS) */
TEST(torch_step_tokens) { step_case("tokens_rows", 2); }
/* LoRA with trainable rows of the embeddings and of the untied lm_head ({"lm_head": [...]}) */
TEST(torch_step_head_rows) { step_case("extras_head_rows", 2); }

/* Every backend against the reference on a whole training step. */
TEST(backend_blis_step)
{
    peft_model *m = NULL;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.backend = "blis";
    int rc = peft_model_open(&m, test_data("tiny"), &oo);
    if (rc == PEFT_EUNSUPPORTED)
        SKIP("BLIS backend not built");
    CHECK_OK(rc);
    peft_model_close(&m);
    step_backend = "blis";
    step_case("all_linear", 2);
    step_case("dora_qkvo_up", 1);
    step_backend = NULL;
}

TEST(model_gradcheck) { gradcheck("tiny/all_linear/adapter"); }
/* the embedding adapter's gradient flows through every layer down to the lookup */
TEST(model_gradcheck_embed) { gradcheck("tiny/embed_qv/adapter"); }
TEST(model_gradcheck_vera) { gradcheck("tiny/vera_qv_down/adapter"); }
TEST(model_gradcheck_loha) { gradcheck("tiny/loha_qo_up/adapter"); }
TEST(model_gradcheck_lokr) { gradcheck("tiny/lokr_qv_gate/adapter"); }
TEST(model_gradcheck_extras) { gradcheck("tiny/extras_head_embed_norm/adapter"); }
TEST(model_gradcheck_prompt) { gradcheck("tiny/prompt_5/adapter"); }

TEST(model_gradcheck_tokens) { gradcheck("tiny/tokens_rows/adapter"); }
TEST(model_gradcheck_head_rows) { gradcheck("tiny/extras_head_rows/adapter"); }

/* ---- add_weighted_adapter's merges (tests/golden/make_combine_golden.py) ---- */

/* Max |x - ref| / max |ref| over every tensor of ref found in `got` (by name): factors as they are,
   or (delta) the products B A of got's factors against ref's "<module>.delta". */
static double combine_err(const char *got_dir, const char *ref_file, int delta)
{
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", got_dir);
    st_file *got, *ref;
    if (st_open(&got, path))
        return INFINITY;
    if (st_open(&ref, test_data(ref_file))) {
        st_close(got);
        return INFINITY;
    }
    double worst = 0;
    size_t seen = 0;
    for (size_t i = 0; i < ref->n_tensors; i++) {
        const st_tensor *rt = &ref->tensors[i];
        size_t nl = strlen(rt->name);
        if (delta && (nl < 6 || strcmp(rt->name + nl - 6, ".delta")))
            continue;
        float *r = malloc(rt->n_elems * sizeof *r), *x = calloc(rt->n_elems, sizeof *x);
        st_read_f32(ref, rt, r, rt->n_elems);
        if (!delta) {
            const st_tensor *gt = st_find(got, rt->name);
            if (!gt || gt->n_elems != rt->n_elems)
                worst = INFINITY;
            else
                st_read_f32(got, gt, x, gt->n_elems);
        } else { /* B (out x R) A (R x in) */
            char ka[200], kb[200];
            snprintf(ka, sizeof ka, "%.*s.lora_A.weight", (int)(nl - 6), rt->name);
            snprintf(kb, sizeof kb, "%.*s.lora_B.weight", (int)(nl - 6), rt->name);
            const st_tensor *ta = st_find(got, ka), *tb = st_find(got, kb);
            if (!ta || !tb || (uint64_t)(tb->shape[0] * ta->shape[1]) != rt->n_elems) {
                worst = INFINITY;
            } else {
                int out = (int)tb->shape[0], R = (int)tb->shape[1], in = (int)ta->shape[1];
                float *A = malloc(ta->n_elems * sizeof *A), *B = malloc(tb->n_elems * sizeof *B);
                st_read_f32(got, ta, A, ta->n_elems);
                st_read_f32(got, tb, B, tb->n_elems);
                for (int o = 0; o < out; o++)
                    for (int c = 0; c < in; c++) {
                        double acc = 0;
                        for (int j = 0; j < R; j++)
                            acc += (double)B[o * R + j] * A[j * in + c];
                        x[o * in + c] = (float)acc;
                    }
                free(A);
                free(B);
            }
        }
        double mx = 0, err = 0;
        for (uint64_t j = 0; j < rt->n_elems; j++) {
            mx = fmax(mx, fabs(r[j]));
            err = fmax(err, fabs(x[j] - r[j]));
        }
        worst = fmax(worst, err / fmax(mx, 1e-12));
        seen++;
        free(r);
        free(x);
    }
    st_close(got);
    st_close(ref);
    return seen ? worst : INFINITY;
}

TEST(torch_combine_ties_dare_magnitude_prune)
{
    peft_model *m;
    CHECK_OK(peft_model_open(&m, test_data("tiny"), NULL));
    if (!m)
        return;
    CHECK_OK(peft_adapter_load(m, test_data("tiny/combine/a"), "a"));
    CHECK_OK(peft_adapter_load(m, test_data("tiny/combine/b"), "b"));
    static const struct {
        const char *file;
        int comb, sign, delta;
        double density, tol;
    } cases[] = {
        {"tiny/combine/ties.safetensors", PEFT_COMBINE_TIES, PEFT_SIGN_TOTAL, 0, 0.5, 1e-6},
        {"tiny/combine/ties_frequency.safetensors", PEFT_COMBINE_TIES, PEFT_SIGN_FREQUENCY, 0, 0.5, 1e-6},
        {"tiny/combine/magnitude_prune.safetensors", PEFT_COMBINE_MAGNITUDE_PRUNE, PEFT_SIGN_TOTAL, 0, 0.5, 1e-6},
        {"tiny/combine/dare_linear.safetensors", PEFT_COMBINE_DARE_LINEAR, PEFT_SIGN_TOTAL, 0, 1.0, 1e-6},
        {"tiny/combine/ties_svd.safetensors", PEFT_COMBINE_TIES_SVD, PEFT_SIGN_TOTAL, 1, 0.5, 1e-4},
        {"tiny/combine/magnitude_prune_svd.safetensors", PEFT_COMBINE_MAGNITUDE_PRUNE_SVD, PEFT_SIGN_TOTAL, 1, 0.5,
         1e-4},
    };
    const char *ab[2] = {"a", "b"};
    const double w[2] = {0.7, 1.3};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%zu", i);
        peft_combine_options o = PEFT_COMBINE_OPTIONS_INIT;
        o.combination = cases[i].comb;
        o.majority_sign = cases[i].sign;
        o.density = cases[i].density;
        CHECK_OK(peft_adapter_combine_ex(m, ab, w, 2, name, &o));
        CHECK_OK(peft_adapter_set(m, name));
        char dir[] = "/tmp/peft-comb-XXXXXX";
        CHECK(mkdtemp(dir) != NULL);
        CHECK_OK(peft_save_adapter(m, dir, NULL));
        double err = combine_err(dir, cases[i].file, cases[i].delta);
        CHECK_MSG(err < cases[i].tol, "%s: relative error %g", cases[i].file, err);
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK(system(cmd) == 0);
    }
    peft_model_close(&m);
}

/* ---- sharded checkpoints and half-precision weights ---- */

static double tiny_eval(const char *dir, char *dtype_out)
{
    peft_model *m;
    if (peft_model_open(&m, dir, NULL)) {
        fprintf(stderr, "open %s: %s\n", dir, peft_last_error());
        return NAN;
    }
    int32_t tok[3 * 16];
    for (int i = 0; i < 48; i++)
        tok[i] = (i * 13 + 5) % 48;
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 3, 16, NULL};
    peft_eval_result r = PEFT_EVAL_RESULT_INIT;
    double loss = peft_eval(m, &b, &r) ? NAN : r.loss_sum / (double)r.tokens;
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    if (dtype_out)
        strcpy(dtype_out, in.weights_dtype);
    peft_model_close(&m);
    return loss;
}

static void copy_config(const char *dir)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp %s %s/", test_data("tiny/config.json"), dir);
    CHECK(system(cmd) == 0);
}

static uint16_t f32_to_half(float f, int bf16)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if (bf16)
        return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    uint32_t sign = (x >> 16) & 0x8000u;
    int e = (int)((x >> 23) & 0xff) - 112;
    uint32_t man = x & 0x7fffffu;
    if (e <= 0)
        return (uint16_t)sign; /* the tiny model has no values this small */
    uint32_t h = ((uint32_t)e << 10) | (man >> 13);
    if ((man & 0x1fffu) > 0x1000u || ((man & 0x1fffu) == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

/* The tiny model's tensors as float32 (bufs[i]) and as st_write's list (ts), from f */
static void tiny_tensors(const st_file *f, st_out_tensor **ts_out, float ***bufs_out)
{
    st_out_tensor *ts = calloc(f->n_tensors, sizeof *ts);
    float **bufs = calloc(f->n_tensors, sizeof *bufs);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        bufs[i] = malloc(t->n_elems * sizeof(float));
        st_read_f32(f, t, bufs[i], t->n_elems);
        ts[i].name = t->name;
        ts[i].n_dims = t->n_dims;
        for (int d = 0; d < t->n_dims; d++)
            ts[i].shape[d] = t->shape[d];
        ts[i].data = bufs[i];
    }
    *ts_out = ts;
    *bufs_out = bufs;
}

/* path: the tensors of f with the values bufs as F16 or (bf) BF16 */
static void write_half_model(const char *path, const st_file *f, float *const *bufs, int bf)
{
    char hdr[16384];
    size_t hl = 0, off = 0;
    hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl, "{");
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld%s", i ? "," : "",
                               t->name, bf ? "BF16" : "F16", (long long)t->shape[0], t->n_dims == 2 ? "," : "");
        if (t->n_dims == 2)
            hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl, "%lld", (long long)t->shape[1]);
        hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl, "],\"data_offsets\":[%zu,%zu]}", off, off + t->n_elems * 2);
        off += t->n_elems * 2;
    }
    hl += (size_t)snprintf(hdr + hl, sizeof hdr - hl, "}");
    FILE *o = fopen(path, "wb");
    CHECK(o != NULL);
    if (!o)
        return;
    uint64_t hl64 = hl;
    fwrite(&hl64, 8, 1, o);
    fwrite(hdr, 1, hl, o);
    for (size_t i = 0; i < f->n_tensors; i++)
        for (uint64_t j = 0; j < f->tensors[i].n_elems; j++) {
            uint16_t h = f32_to_half(bufs[i][j], bf);
            fwrite(&h, 2, 1, o);
        }
    fclose(o);
}

TEST(sharded_and_half_precision_models)
{
    char ref_dtype[8], dtype[8];
    double ref = tiny_eval(test_data("tiny"), ref_dtype);
    CHECK(isfinite(ref) && strcmp(ref_dtype, "F32") == 0);
    st_file *f;
    CHECK_OK(st_open(&f, test_data("tiny/model.safetensors")));
    if (!f)
        return;
    char dir[] = "/tmp/peft-shard-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    copy_config(dir);
    /* two shards, split by tensor index, with an index file */
    st_out_tensor *ts;
    float **bufs;
    tiny_tensors(f, &ts, &bufs);
    size_t half = f->n_tensors / 2;
    char p1[256], p2[256], idx[256];
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
    CHECK_OK(st_write(p1, ts, half, NULL, NULL, 0));
    CHECK_OK(st_write(p2, ts + half, f->n_tensors - half, NULL, NULL, 0));
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    FILE *o = fopen(idx, "w");
    fprintf(o, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    for (size_t i = 0; i < f->n_tensors; i++)
        fprintf(o, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "", ts[i].name, i < half ? 1 : 2);
    fprintf(o, "}}");
    fclose(o);
    double sharded = tiny_eval(dir, NULL);
    CHECK(sharded == ref); /* bit-identical */
    /* a shard that is missing: a clear error naming it */
    remove(p2);
    peft_model *m = NULL;
    CHECK(peft_model_open(&m, dir, NULL) == PEFT_ENOTFOUND && strstr(peft_last_error(), "model-00002-of-00002"));
    remove(p1);
    remove(idx);
    /* F16 and BF16 copies of the same weights */
    for (int bf = 0; bf < 2; bf++) {
        char path[256];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        write_half_model(path, f, bufs, bf);
        double l = tiny_eval(dir, dtype);
        CHECK_MSG(fabs(l - ref) < (bf ? 2e-2 : 2e-3) * ref, "%s loss %g vs F32 %g", bf ? "BF16" : "F16", l, ref);
        CHECK(strcmp(dtype, bf ? "BF16" : "F16") == 0);
        remove(path);
    }
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    remove(cfg);
    remove(dir);
    for (size_t i = 0; i < f->n_tensors; i++)
        free(bufs[i]);
    free(bufs);
    free(ts);
    st_close(f);
}

/* The tiny model opened with frozen_dtype fd (and backend be): its eval loss and the loss of
   the third of three LoRA steps (all linear modules and lm_head adapted: products through
   every frozen matrix both ways); a string describing how the weights are held */
static void frozen_losses(const char *dir, const char *fd, const char *be, double *eval, double *step3, char *held)
{
    peft_model *m;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = 2;
    oo.frozen_dtype = fd;
    oo.backend = be;
    *eval = *step3 = NAN;
    if (peft_model_open(&m, dir, &oo)) {
        fprintf(stderr, "open %s: %s\n", dir, peft_last_error());
        return;
    }
    const peft_w *w = &m->layers[0].w[PEFT_MOD_Q];
    snprintf(held, 64, "%s%s%s%s", w->f ? "f" : "", w->q ? "q" : "", w->bf16 ? "b" : "", m->head.bf16 ? "h" : "");
    if (w->f)
        CHECK(peft__in_mapping(m, w->f, (size_t)(w->rows * w->cols) * 4) || !w->bf16);
    int32_t tok[3 * 16];
    for (int i = 0; i < 48; i++)
        tok[i] = (i * 13 + 5) % 48;
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 3, 16, NULL};
    peft_eval_result r = PEFT_EVAL_RESULT_INIT;
    if (!peft_eval(m, &b, &r))
        *eval = r.loss_sum / (double)r.tokens;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR | PEFT_TARGET_LM_HEAD;
    o.seed = 7;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    peft_step_result sr = PEFT_STEP_RESULT_INIT;
    for (int s = 0; s < 3; s++)
        CHECK_OK(peft_step(m, &b, &sr));
    *step3 = sr.loss;
    peft_model_close(&m);
}

TEST(frozen_bf16_weights)
{
    const char *tiny = test_data("tiny");
    double e32, s32, e16, s16;
    char h32[64], h16[64];
    frozen_losses(tiny, NULL, NULL, &e32, &s32, h32);
    frozen_losses(tiny, "bf16", NULL, &e16, &s16, h16);
    /* a memory-mapped F32 file: the file's floats stay mapped (their pages released), BF16
       copies of the linear weights and the tied lm_head do the products */
    CHECK_MSG(strcmp(h32, "f") == 0 && strcmp(h16, "fbh") == 0, "held: %s, %s", h32, h16);
    CHECK_MSG(e16 != e32 && fabs(e16 - e32) < 5e-3 * e32, "eval %.9g (bf16) vs %.9g", e16, e32);
    CHECK_MSG(fabs(s16 - s32) < 5e-3 * s32, "step 3 %.9g (bf16) vs %.9g", s16, s32);
    /* the same model with its values rounded to BF16 but stored as F32: holding them as BF16
       changes nothing, bit for bit (the products see the same numbers), training included */
    st_file *f;
    CHECK_OK(st_open(&f, test_data("tiny/model.safetensors")));
    if (!f)
        return;
    char dir[] = "/tmp/peft-bf16-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    copy_config(dir);
    st_out_tensor *ts;
    float **bufs;
    tiny_tensors(f, &ts, &bufs);
    for (size_t i = 0; i < f->n_tensors; i++)
        for (uint64_t j = 0; j < f->tensors[i].n_elems; j++)
            bufs[i][j] = peft__bf16_to_f32(peft__f32_to_bf16(bufs[i][j]));
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK_OK(st_write(path, ts, f->n_tensors, NULL, NULL, 0));
    double re32, rs32, re16, rs16;
    frozen_losses(dir, "f32", NULL, &re32, &rs32, h32);
    frozen_losses(dir, "bf16", NULL, &re16, &rs16, h16);
    CHECK_MSG(isfinite(re32) && re16 == re32 && rs16 == rs32, "rounded model: eval %.9g / %.9g, step %.9g / %.9g",
              re16, re32, rs16, rs32);
    if (peft__backend_blis()) { /* no gemm_bf16 slot: the core widens panels for BLIS's GEMM */
        double be32, bs32, be16, bs16;
        frozen_losses(dir, "f32", "blis", &be32, &bs32, h32);
        frozen_losses(dir, "bf16", "blis", &be16, &bs16, h16);
        CHECK_MSG(fabs(be16 - be32) < 1e-5 * be32 && fabs(bs16 - bs32) < 1e-5 * bs32 && fabs(be16 - re16) < 1e-5 * re16,
                  "blis: eval %.9g / %.9g, step %.9g / %.9g", be16, be32, bs16, bs32);
    }
    /* a BF16 file: its weights are kept as BF16 (no float32 copy), still exactly */
    write_half_model(path, f, bufs, 1);
    double fe32, fs32, fe16, fs16;
    frozen_losses(dir, NULL, NULL, &fe32, &fs32, h32);
    frozen_losses(dir, "bf16", NULL, &fe16, &fs16, h16);
    CHECK_MSG(strcmp(h32, "f") == 0 && strcmp(h16, "qbh") == 0, "BF16 file held: %s, %s", h32, h16);
    CHECK_MSG(fe16 == re32 && fe32 == re32 && fs16 == rs32 && fs32 == rs32, "BF16 file: eval %.9g / %.9g, step %.9g / %.9g",
              fe16, fe32, fs16, fs32);
    /* errors: an unknown dtype; a version 1 options struct (no frozen_dtype field) still opens */
    peft_model *m = NULL;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.frozen_dtype = "fp8";
    CHECK(peft_model_open(&m, dir, &oo) == PEFT_EINVAL && !m && strstr(peft_last_error(), "fp8"));
    struct {
        uint32_t version;
        int32_t n_threads;
        const char *backend;
    } v1 = {1, 1, NULL};
    CHECK_OK(peft_model_open(&m, dir, (const peft_open_options *)(const void *)&v1));
    peft_model_close(&m);
    remove(path);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    remove(cfg);
    remove(dir);
    for (size_t i = 0; i < f->n_tensors; i++)
        free(bufs[i]);
    free(bufs);
    free(ts);
    st_close(f);
}

/* Three training steps of the model in dir with activation checkpointing on or off, in one of
   several attachments; the trained parameters (malloc'd), the last step's loss, an eval loss
   after training and the workspace's size */
static float *ckpt_run(const char *dir, int ckpt, int variant, size_t *n, double *loss, double *eval, size_t *ws)
{
    peft_model *m;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = 2;
    if (peft_model_open(&m, dir, &oo))
        return NULL;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.seed = 3;
    if (variant == 0) { /* every linear module and lm_head, dropout (masks drawn again in the recompute) */
        o.targets = PEFT_TARGET_ALL_LINEAR | PEFT_TARGET_LM_HEAD;
        o.dropout = 0.1f;
    } else if (variant == 1) { /* DoRA on the last layer only: backward stops there */
        o.targets = PEFT_TARGET_Q | PEFT_TARGET_V | PEFT_TARGET_DOWN;
        o.use_dora = 1;
        o.layers = "last:1";
    } else if (variant == 2) { /* the norms and the embeddings adapted: gradients through every layer */
        o.targets = PEFT_TARGET_Q | PEFT_TARGET_O | PEFT_TARGET_UP | PEFT_TARGET_EMBED;
        o.norms = PEFT_NORM_INPUT | PEFT_NORM_POST_ATTENTION;
    } else { /* LoRA on the last layer, every bias trained (Qwen2): backward to the first layer */
        o.targets = PEFT_TARGET_Q | PEFT_TARGET_V;
        o.layers = "last:1";
        o.bias = PEFT_BIAS_ALL;
    }
    float *out = NULL;
    if (peft_attach_lora(m, &o, NULL) || peft_opt_set(m, PEFT_OPT_LR, 1e-2) ||
        peft_opt_set(m, PEFT_OPT_ACTIVATION_CHECKPOINTING, ckpt)) {
        fprintf(stderr, "attach: %s\n", peft_last_error());
        peft_model_close(&m);
        return NULL;
    }
    int32_t tok[3 * 16];
    for (int i = 0; i < 48; i++)
        tok[i] = (i * 11 + 3) % 48;
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 3, 16, NULL};
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    for (int s = 0; s < 3; s++)
        CHECK_OK(peft_step(m, &b, &r));
    *loss = r.loss;
    *ws = m->ws.bytes;
    peft_eval_result er = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &er));
    *eval = er.loss_sum;
    float *p;
    CHECK_OK(peft_param_buffer(&p, n, m));
    if ((out = malloc(*n * sizeof *out)))
        memcpy(out, p, *n * sizeof *out);
    peft_model_close(&m);
    return out;
}

TEST(activation_checkpointing_is_exact)
{
    /* each model with its variants [first, last] (Gemma 3's norms are not tuned) */
    const char *dirs[] = {"tiny", "tiny_qwen3", "tiny_qwen2", "tiny_gemma3", "tiny_gemma2"};
    const int first[] = {0, 0, 3, 0, 0}, last[] = {2, 2, 3, 1, 1};
    for (int d = 0; d < 5; d++)
        for (int v = first[d]; v <= last[d]; v++) {
            size_t n0 = 0, n1 = 0, w0 = 0, w1 = 0;
            double l0 = 0, l1 = 1, e0 = 0, e1 = 1;
            float *p0 = ckpt_run(test_data(dirs[d]), 0, v, &n0, &l0, &e0, &w0);
            float *p1 = ckpt_run(test_data(dirs[d]), 1, v, &n1, &l1, &e1, &w1);
            CHECK_MSG(p0 && p1 && n0 == n1 && n0 > 0, "%s variant %d: runs", dirs[d], v);
            if (p0 && p1 && n0 == n1)
                CHECK_MSG(memcmp(p0, p1, n0 * sizeof *p0) == 0 && l0 == l1 && e0 == e1,
                          "%s variant %d: checkpointing changed the result (loss %.9g vs %.9g)", dirs[d], v, l1, l0);
            /* the activations of all but one layer are gone: the tiny models have 2 layers, the
               stored inputs are small next to a layer's activations */
            CHECK_MSG(w1 < w0, "%s variant %d: workspace %zu bytes with checkpointing, %zu without", dirs[d], v, w1, w0);
            free(p0), free(p1);
        }
    /* the setting is 0 or 1 */
    peft_model *m;
    CHECK_OK(peft_model_open(&m, test_data("tiny"), NULL));
    CHECK(peft_opt_set(m, PEFT_OPT_ACTIVATION_CHECKPOINTING, 2) == PEFT_EINVAL);
    double v = -1;
    CHECK(peft_opt_get(m, PEFT_OPT_ACTIVATION_CHECKPOINTING, &v) == PEFT_OK && v == 0);
    peft_model_close(&m);
}

static int open_with_config(const char *dir, const char *config)
{
    char p[256];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *o = fopen(p, "w");
    fputs(config, o);
    fclose(o);
    peft_model *m = NULL;
    int rc = peft_model_open(&m, dir, NULL);
    peft_model_close(&m);
    return rc;
}

TEST(config_errors)
{
    char dir[] = "/tmp/peft-cfg-XXXXXX", cmd[1024];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cmd, sizeof cmd, "ln -s %s %s/model.safetensors", test_data("tiny/model.safetensors"), dir);
    CHECK(system(cmd) == 0);
    const char *base = "\"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": 3, "
                       "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 48";
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", %s}", base);
    CHECK(open_with_config(dir, cfg) == 0);
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"gpt2\", %s}", base);
    CHECK(open_with_config(dir, cfg) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "\"gpt2\""));
    CHECK(open_with_config(dir, "{\"model_type\": \"llama\", \"hidden_size\": 32}") == PEFT_EFORMAT &&
          strstr(peft_last_error(), "intermediate_size"));
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", \"hidden_size\": 32, \"intermediate_size\": 41, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 48}");
    CHECK(open_with_config(dir, cfg) == PEFT_ESHAPE &&
          strstr(peft_last_error(), "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [40, 32], config.json implies [41, 32]"));
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", %s, \"num_hidden_layers\": 4}", base);
    CHECK(open_with_config(dir, cfg) == PEFT_EFORMAT); /* duplicate key */
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", \"hidden_size\": 32, \"intermediate_size\": 40, "
             "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 48}");
    CHECK(open_with_config(dir, cfg) == PEFT_ENOTFOUND && strstr(peft_last_error(), "model.layers.3."));
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", \"hidden_size\": 32, \"intermediate_size\": 40, "
             "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 3, \"vocab_size\": 48}");
    CHECK(open_with_config(dir, cfg) == PEFT_EFORMAT && strstr(peft_last_error(), "multiple"));
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", %s, \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}", base);
    CHECK(open_with_config(dir, cfg) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "rope_scaling type \"yarn\""));
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", %s, \"rope_scaling\": {\"rope_type\": \"llama3\", "
             "\"low_freq_factor\": 4, \"high_freq_factor\": 1}}", base);
    CHECK(open_with_config(dir, cfg) == PEFT_EFORMAT && strstr(peft_last_error(), "low_freq_factor"));
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", %s, \"rope_scaling\": {\"factor\": 2}}", base);
    CHECK(open_with_config(dir, cfg) == PEFT_EFORMAT && strstr(peft_last_error(), "rope_type"));
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"llama\", %s, \"rope_scaling\": {\"rope_type\": \"llama3\"}}", base);
    CHECK(open_with_config(dir, cfg) == PEFT_OK); /* transformers' defaults: factor 8, 1, 4, 8192 */
    snprintf(cfg, sizeof cfg, "{\"model_type\": \"mistral\", %s, \"sliding_window\": -3}", base);
    CHECK(open_with_config(dir, cfg) == PEFT_EFORMAT && strstr(peft_last_error(), "sliding_window"));
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* ---- ../shared reference figures ---- */

static int32_t *load_tokens(const char *path, size_t *n)
{
    size_t bytes = 0;
    char *p = read_whole(path, &bytes);
    *n = bytes / 4;
    return (int32_t *)(void *)p;
}

static double eval_file(peft_model *m, const char *path, int T, uint64_t *count)
{
    size_t n;
    int32_t *t = load_tokens(path, &n);
    if (!t)
        return NAN;
    double sum = 0;
    uint64_t c = 0;
    size_t nw = n / (size_t)T;
    for (size_t w = 0; w < nw; w += 16) {
        int nb = (int)(nw - w < 16 ? nw - w : 16);
        peft_batch b = {PEFT_BATCH_VERSION, t + w * (size_t)T, NULL, nb, T, NULL};
        peft_eval_result r = PEFT_EVAL_RESULT_INIT;
        if (peft_eval(m, &b, &r)) {
            free(t);
            return NAN;
        }
        sum += r.loss_sum;
        c += r.tokens;
    }
    free(t);
    *count = c;
    return sum / (double)c;
}

static char *sp(const char *rel)
{
    static char buf[8][8300];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", shared_dir(), rel);
    return buf[k];
}

TEST(shared_base_and_adapter_losses)
{
    if (!shared_dir())
        SKIP("../shared not present");
    peft_model *m;
    CHECK_OK(peft_model_open(&m, sp("models/stories260K"), NULL));
    uint64_t c;
    CHECK_CLOSE(eval_file(m, sp("data/tinystories_sample.stories260K.u32.bin"), 128, &c), 1.92598189127761, 1e-4);
    CHECK(c == 98044);
    CHECK_CLOSE(eval_file(m, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c), 4.188473392151952, 1e-4);
    size_t n;
    int32_t *t = load_tokens(sp("data/tinystories_sample.stories260K.u32.bin"), &n);
    peft_batch b = {PEFT_BATCH_VERSION, t, NULL, 1, 128, NULL};
    peft_eval_result r = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &r));
    CHECK_CLOSE(r.loss_sum / (double)r.tokens, 1.431879, 1e-5);
    free(t);
    CHECK_OK(peft_load_adapter(m, sp("models/stories260K/reference/ref_adapter")));
    CHECK_CLOSE(eval_file(m, sp("data/tinystories_sample.stories260K.u32.bin"), 128, &c), 2.2692893137731547, 1e-4);
    CHECK_CLOSE(eval_file(m, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c), 4.309582568060442, 1e-4);
    peft_model_close(&m);
}

TEST(shared_training_step)
{
    if (!shared_dir())
        SKIP("../shared not present");
    peft_model *m;
    CHECK_OK(peft_model_open(&m, sp("models/stories260K"), NULL));
    const char *ad = sp("models/stories260K/reference/ref_adapter");
    CHECK_OK(peft_load_adapter(m, ad));
    size_t n;
    int32_t *t = load_tokens(sp("data/tinystories_sample.stories260K.u32.bin"), &n);
    peft_batch b = {PEFT_BATCH_VERSION, t, NULL, 4, 64, NULL};
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_forward_backward(m, &b, &r));
    CHECK_CLOSE(r.loss, 1.8622275590896606, 1e-4);
    float *g, *p;
    CHECK_OK(peft_grad_buffer(&g, &n, m));
    char a_st[4096];
    snprintf(a_st, sizeof a_st, "%s/adapter_model.safetensors", ad);
    double gerr = max_rel_err(g, 0, 1.0 / (double)r.tokens, sp("models/stories260K/reference/ref_grads.safetensors"), a_st);
    CHECK_MSG(gerr < 1e-3, "gradient relative error %g", gerr);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    CHECK_OK(peft_apply_update(m, 0, &r));
    CHECK_CLOSE(r.grad_norm, 2.226066531247846, 1e-3);
    CHECK_OK(peft_param_buffer(&p, &n, m));
    double perr = max_rel_err(p, 0, 1.0, sp("models/stories260K/reference/ref_adapter_step1/adapter_model.safetensors"), a_st);
    CHECK_MSG(perr < 1e-3, "parameters after the step: relative error %g", perr);
    peft_eval_result er = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &er));
    CHECK_CLOSE(er.loss_sum / (double)er.tokens, 1.1507164239883423, 1e-4);
    free(t);
    peft_model_close(&m);
}

TEST(shared_adapter_resave_byte_exact)
{
    if (!shared_dir())
        SKIP("../shared not present");
    peft_model *m;
    CHECK_OK(peft_model_open(&m, sp("models/stories260K"), NULL));
    CHECK_OK(peft_load_adapter(m, sp("models/stories260K/reference/ref_adapter")));
    char dir[] = "/tmp/peft-resave-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK_OK(peft_save_adapter(m, dir, NULL));
    char out[4096];
    snprintf(out, sizeof out, "%s/adapter_model.safetensors", dir);
    size_t n1 = 0, n2 = 0;
    char *a = read_whole(out, &n1), *b = read_whole(sp("models/stories260K/reference/ref_adapter/adapter_model.safetensors"), &n2);
    CHECK(a && b && n1 == n2 && memcmp(a, b, n1) == 0);
    free(a);
    free(b);
    adapter_dir_remove(dir);
    peft_model_close(&m);
}

/* Three steps of DoRA with LoRA+ on every linear module, the embeddings trained in full and
   the norms tuned (every group of the optimizer at its own settings), with the update's chunk
   set to `chunk` parameters (0: the default) and `threads` threads; the parameters (malloc'ed)
   and the last gradient norm */
static float *chunked_update(int chunk, int threads, double clip, size_t *n, double *norm)
{
    peft_model *m;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = threads;
    CHECK_OK(peft_model_open(&m, test_data("tiny"), &oo));
    if (!m)
        return NULL;
    m->opt_chunk = (size_t)chunk;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.use_dora = 1;
    o.modules_to_save = PEFT_SAVE_EMBED;
    o.norms = PEFT_NORM_INPUT | PEFT_NORM_FINAL;
    o.seed = 3;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LORAPLUS_RATIO, 4));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_EMBED_LR_RATIO, 0.1));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_NORM_LR_RATIO, 3));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_WEIGHT_DECAY, 0.05));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_GRAD_CLIP, clip));
    int32_t tok[2 * 16];
    for (int i = 0; i < 32; i++)
        tok[i] = (i * 11 + 3) % 48;
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    for (int s = 0; s < 3; s++)
        CHECK_OK(peft_step(m, &b, &r));
    *norm = r.grad_norm;
    float *p, *copy = NULL;
    if (!peft_param_buffer(&p, n, m) && (copy = malloc(*n * sizeof *copy)))
        memcpy(copy, p, *n * sizeof *copy);
    peft_model_close(&m);
    return copy;
}

TEST(optimizer_in_chunks)
{
    /* the update runs over the pool in chunks of parameters; chunks that split the runs of
       parameters updated alike (7 and 1000 here, against runs of 32 to 1536) update them as one
       serial pass does, bit for bit, on 1 or 3 threads; the gradient norm, summed per chunk,
       differs by rounding only (and with it, under clipping, the scale of the update) */
    size_t n0, n;
    double g0, g;
    float *ref = chunked_update(0, 1, 0.0, &n0, &g0);
    CHECK(ref && n0 > 1000 && isfinite(g0) && g0 > 0);
    const int chunks[] = {7, 1000, 0}, threads[] = {1, 3};
    for (int c = 0; c < 3 && ref; c++)
        for (int t = 0; t < 2; t++) {
            float *p = chunked_update(chunks[c], threads[t], 0.0, &n, &g);
            CHECK_MSG(p && n == n0 && memcmp(p, ref, n * sizeof *p) == 0, "chunk %d, %d threads: parameters differ",
                      chunks[c], threads[t]);
            CHECK_MSG(fabs(g - g0) <= 1e-12 * g0, "chunk %d, %d threads: norm %.17g vs %.17g", chunks[c], threads[t], g, g0);
            free(p);
        }
    /* clipped (the norm is far above 0.05): the same to float rounding */
    float *c0 = chunked_update(0, 1, 0.05, &n0, &g0), *c1 = chunked_update(7, 3, 0.05, &n, &g);
    CHECK(c0 && c1 && n == n0 && memcmp(c0, ref, n * sizeof *c0) != 0);
    double worst = 0;
    for (size_t i = 0; c0 && c1 && i < n; i++)
        worst = fmax(worst, fabs((double)c0[i] - c1[i]) / (fabs((double)c0[i]) + 1e-3));
    CHECK_MSG(worst < 1e-5, "clipped: relative difference %.3g", worst);
    free(c0), free(c1), free(ref);
}

/* how many of m's frozen float32 matrices and quantized blocks lie in its file mapping, of *n;
   each one's start 64-byte aligned where it does not */
static int mapped_weights(const peft_model *m, int *n)
{
    int in = 0;
    *n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            const peft_w *w = &m->layers[l].w[k];
            size_t bytes;
            const void *p = peft__w_storage(w, &bytes);
            if (!p)
                continue;
            int mapped = peft__in_mapping(m, p, bytes);
            CHECK(mapped || (uintptr_t)p % 64 == 0);
            in += mapped;
            (*n)++;
        }
    return in;
}

TEST(weights_on_huge_pages)
{
    /* by default the float32 matrices (and quantized blocks) a model file holds are copied out
       of its mapping onto 2 MiB pages where the kernel offers them; PEFT_MMAP_WEIGHTS=1 keeps
       them mapped; the numbers are the same bit for bit */
    const char *tiny = test_data("tiny");
    int thp = peft__huge_pages_offered(), n;
    double e_copy, s_copy, e_map, s_map;
    char held[64];
    unsetenv("PEFT_MMAP_WEIGHTS");
    peft_model *m;
    CHECK_OK(peft_model_open(&m, tiny, NULL));
    if (!m)
        return;
    int in = mapped_weights(m, &n);
    CHECK_MSG(n == m->cfg.n_layers * 7 && in == (thp ? 0 : n), "%d of %d matrices mapped (huge pages %s)", in, n,
              thp ? "offered" : "not offered");
    CHECK(peft__in_mapping(m, m->embed.f, 4) == !thp && peft__in_mapping(m, m->head.f, 4) == !thp);
    peft_model_close(&m);
    frozen_losses(tiny, NULL, NULL, &e_copy, &s_copy, held);
    setenv("PEFT_MMAP_WEIGHTS", "1", 1);
    CHECK_OK(peft_model_open(&m, tiny, NULL));
    if (m) {
        CHECK(mapped_weights(m, &n) == n && peft__in_mapping(m, m->embed.f, 4) && peft__in_mapping(m, m->head.f, 4));
        peft_model_close(&m);
    }
    frozen_losses(tiny, NULL, NULL, &e_map, &s_map, held);
    CHECK_MSG(isfinite(e_copy) && e_copy == e_map && s_copy == s_map, "eval %.9g / %.9g, step 3 %.9g / %.9g", e_copy,
              e_map, s_copy, s_map);
    /* GGUF files alike (tied embeddings), F32 and Q8_0 (its quantized blocks copied as they are) */
    const char *ggufs[] = {"models/stories260K/stories260K-f32.gguf", "models/stories260K/stories260K-q8_0.gguf"};
    for (int f = 0; f < 2 && shared_dir(); f++) {
        double l[2];
        for (int mm = 0; mm < 2; mm++) {
            setenv("PEFT_MMAP_WEIGHTS", mm ? "1" : "0", 1);
            l[mm] = NAN;
            CHECK_OK(peft_model_open(&m, sp(ggufs[f]), NULL));
            if (!m)
                continue;
            in = mapped_weights(m, &n);
            /* (q and k are reordered copies, never mapped; so are the Q8_0 file's down_proj
               matrices, not quantized there and converted at open) */
            CHECK_MSG(n == 35 && (mm || !thp ? in == (f ? 20 : 25) : in == 0), "%s: %d of %d mapped", ggufs[f], in, n);
            /* its tied lm_head is the embedding matrix, copied once */
            size_t eb;
            const void *e = peft__w_storage(&m->embed, &eb);
            CHECK(m->head.f == m->embed.f && m->head.q == m->embed.q && peft__in_mapping(m, e, eb) == (mm || !thp));
            uint64_t c;
            l[mm] = eval_file(m, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c);
            peft_model_close(&m);
        }
        CHECK_MSG(isfinite(l[0]) && l[0] == l[1], "%s: %.9g copied, %.9g mapped", ggufs[f], l[0], l[1]);
    }
    unsetenv("PEFT_MMAP_WEIGHTS");
}

TEST(shared_gguf_models)
{
    if (!shared_dir())
        SKIP("../shared not present");
    const struct {
        const char *file, *dtype;
        double tol; /* relative to the Hugging Face directory's loss */
    } cs[] = {{"stories260K-f32.gguf", "F32", 1e-6}, {"stories260K-q8_0.gguf", "mixed", 0.01},
              {"stories260K-q4_0.gguf", "mixed", 0.06}};
    peft_model *hf;
    CHECK_OK(peft_model_open(&hf, sp("models/stories260K"), NULL));
    uint64_t c;
    double ref = eval_file(hf, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c);
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        char rel[128];
        snprintf(rel, sizeof rel, "models/stories260K/%s", cs[i].file);
        peft_model *m;
        CHECK_OK(peft_model_open(&m, sp(rel), NULL));
        if (!m)
            continue;
        peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
        peft_model_get_info(m, &in);
        CHECK(in.n_layers == 5 && in.n_kv_heads == 4 && in.vocab_size == 512 && in.tied_embeddings &&
              in.n_params == 260032);
        CHECK_MSG(strcmp(in.weights_dtype, cs[i].dtype) == 0, "%s: dtype %s", cs[i].file, in.weights_dtype);
        double l = eval_file(m, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c);
        CHECK_MSG(fabs(l - ref) <= cs[i].tol * ref, "%s: loss %.6f vs %.6f", cs[i].file, l, ref);
        /* a PEFT adapter trained on the HF model applies to the GGUF one (q/k rows un-permuted) */
        CHECK_OK(peft_load_adapter(m, sp("models/stories260K/reference/ref_adapter")));
        CHECK_OK(peft_load_adapter(hf, sp("models/stories260K/reference/ref_adapter")));
        double la = eval_file(m, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c);
        double lh = eval_file(hf, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c);
        CHECK_CLOSE(la, 4.309582568060442, cs[i].tol + 1e-4);
        CHECK_MSG(fabs(la - lh) <= (cs[i].tol + 1e-6) * lh, "%s with adapter: %.6f vs %.6f", cs[i].file, la, lh);
        /* merged into (dequantized copies of) the quantized weights: the same loss; unmerged: back */
        CHECK_OK(peft_merge_adapter(m));
        double lm = eval_file(m, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c);
        CHECK_MSG(fabs(lm - la) <= 1e-5 * la, "%s merged: %.6f vs %.6f", cs[i].file, lm, la);
        CHECK_OK(peft_unmerge_adapter(m));
        CHECK_OK(peft_adapter_enable(m, 0));
        double lb = eval_file(m, sp("data/kjv_genesis.stories260K.u32.bin"), 128, &c);
        CHECK_MSG(fabs(lb - l) <= 1e-6 * l, "%s unmerged, adapter off: %.6f vs %.6f", cs[i].file, lb, l);
        CHECK_OK(peft_detach(hf));
        peft_model_close(&m);
    }
    peft_model_close(&hf);
}

static const struct h_case cases[] = {
    CASE(torch_step_all_linear), CASE(torch_step_last_layer_rslora_clip_decay), CASE(torch_step_dora),
    CASE(backend_blis_step), CASE(torch_step_ia3), CASE(torch_step_norms),
    CASE(model_gradcheck), CASE(model_gradcheck_embed), CASE(torch_step_embed), CASE(torch_step_vera),
    CASE(model_gradcheck_vera), CASE(torch_step_loha), CASE(model_gradcheck_loha),
    CASE(torch_step_lokr), CASE(model_gradcheck_lokr), CASE(torch_step_extras_head_embed_norm),
    CASE(torch_step_extras_tokens_head), CASE(model_gradcheck_extras), CASE(torch_step_pissa), CASE(torch_step_olora),
    CASE(torch_step_prompt), CASE(model_gradcheck_prompt), CASE(torch_step_tokens), CASE(model_gradcheck_tokens),
    CASE(torch_combine_ties_dare_magnitude_prune), CASE(torch_step_head_rows), CASE(model_gradcheck_head_rows),
    CASE(shared_base_and_adapter_losses), CASE(shared_training_step), CASE(shared_adapter_resave_byte_exact),
    CASE(sharded_and_half_precision_models), CASE(frozen_bf16_weights), CASE(activation_checkpointing_is_exact), CASE(config_errors), CASE(shared_gguf_models), CASE(weights_on_huge_pages), CASE(optimizer_in_chunks),
};
TEST_MAIN(cases)
