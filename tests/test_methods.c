/* The adapter methods' lifecycles through the public API: LoRA on the embeddings and lm_head,
   modules_to_save, norms and token rows alongside LoRA, parameter groups, VeRA, LoHa, LoKr,
   PiSSA, OLoRA, regex targets: train, save, reload, merge, export. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api_helpers.h"
#include "fd_helpers.h"
#include "harness.h"
#include "peft/peft.h"

/* llama.cpp's GGUF LoRA format cannot hold the attached adapter: the export is refused. */
static void gguf_refused(peft_model *m)
{
    char p[600];
    snprintf(p, sizeof p, "%s/a.gguf", mktmp());
    CHECK(peft_save_adapter_gguf(m, p, NULL) == PEFT_EUNSUPPORTED);
}

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
    gguf_refused(m);
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
static int has_bytes(const char *buf, size_t len, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= len; i++)
        if (!memcmp(buf + i, needle, k))
            return 1;
    return 0;
}

/* Train 21 steps (the loss must drop by min_drop), save, check the saved files (needles starting
   "base_model." are tensor names in adapter_model.safetensors, the others text of
   adapter_config.json), reload into a fresh model opened from model_dir: the same loss and
   trainable count. Returns the loss. */
static double train_save_reload_at(peft_model *m, const char *model_dir, int32_t *tok, uint32_t seed, double lr,
                                   double min_drop, const char *const *needles, char **dir)
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
    size_t len, slen;
    char *cfg = read_text(*dir, "adapter_config.json", &len), *st = read_text(*dir, "adapter_model.safetensors", &slen);
    CHECK(cfg != NULL && st != NULL);
    for (int i = 0; cfg && st && needles[i]; i++)
        if (!strncmp(needles[i], "base_model.", 11))
            CHECK_MSG(has_bytes(st, slen, needles[i]), "safetensors lacks %s", needles[i]);
        else
            CHECK_MSG(strstr(cfg, needles[i]) != NULL, "adapter_config.json lacks %s", needles[i]);
    free(cfg);
    free(st);
    peft_model *m2;
    CHECK_OK(peft_model_open(&m2, model_dir, NULL));
    CHECK_OK(peft_load_adapter(m2, *dir));
    CHECK(eval_loss(m2) == with);
    peft_model_info i1 = {.version = PEFT_MODEL_INFO_VERSION}, i2 = {.version = PEFT_MODEL_INFO_VERSION};
    CHECK_OK(peft_model_get_info(m, &i1));
    CHECK_OK(peft_model_get_info(m2, &i2));
    CHECK(i1.n_trainable == i2.n_trainable);
    peft_model_close(&m2);
    return with;
}

static double train_save_reload(peft_model *m, int32_t *tok, uint32_t seed, double lr, double min_drop,
                                const char *const *needles, char **dir)
{
    return train_save_reload_at(m, test_data("tiny"), tok, seed, lr, min_drop, needles, dir);
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
    gguf_refused(m);
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
    int checked, nonzero, bad = fd_sweep(m, &b, p, ga, n, n / 301 + 1, what, &checked, &nonzero);
    CHECK_MSG(checked > 60 && nonzero > checked / 10, "%s: %d checked, %d non-zero", what, checked, nonzero);
    CHECK_MSG(bad == 0, "%s: %d gradients off", what, bad);
    CHECK_OK(peft_zero_grad(m));
    free(ga);
}

static const int32_t extra_tokens[3] = {3, 7, 11};

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
    o.variant = PEFT_VARIANT_LOHA; /* token rows are LoRA's (norms go with LoHa: lycoris_modules_to_save_...) */
    o.token_indices = extra_tokens;
    o.n_token_indices = 3;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EUNSUPPORTED);
    o.n_token_indices = 0;
    o.norms = PEFT_NORM_FINAL;
    CHECK_OK(peft_count_lora(&n, m, &o));
    o.variant = PEFT_VARIANT_LORA;
    o.use_dora = 1;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD;
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EUNSUPPORTED);
    peft_model_close(&m);
    peft_model_close(&mt);
}

/* Train, save (PEFT keys and config fields), reload to the same loss, sessions, merge and the
   merged export (untied when only one side of a tied pair changed); per-group rates. */
static const int32_t head_tokens[] = {0, 9, 47};

static void extras_lifecycle(int tied, uint32_t targets, uint32_t save, uint32_t norms, int n_tok, int n_head,
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
    o.head_token_indices = n_head ? head_tokens : NULL;
    o.n_head_token_indices = n_head;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    if (n_head) /* nothing else may claim lm_head's rows */
        gguf_refused(m);
    int32_t tok[32];
    CHECK_OK(peft_opt_set(m, PEFT_OPT_EMBED_LR_RATIO, 0.5));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_NORM_LR_RATIO, 0.5));
    /* PEFT's config fields and tensor names; reloaded to the same loss */
    char *d;
    const char *model_dir = tied ? dir : test_data("tiny");
    double with = train_save_reload_at(m, model_dir, tok, 9, 1e-2, 0.05, needles, &d);
    /* loading again into the same layout replaces the weights with the same ones */
    peft_model *m2;
    CHECK_OK(peft_model_open(&m2, model_dir, NULL));
    CHECK_OK(peft_load_adapter(m2, d));
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
    extras_lifecycle(0, PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD, PEFT_SAVE_EMBED, PEFT_NORM_INPUT | PEFT_NORM_FINAL, 0, 0,
                     n1);
    const char *const n2[] = {"\"modules_to_save\": [\n    \"lm_head\"\n  ]", "\"trainable_token_indices\": [\n    3,",
                              "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
                              "base_model.model.lm_head.weight", NULL};
    extras_lifecycle(0, PEFT_TARGET_V, PEFT_SAVE_LM_HEAD, 0, 3, 0, n2);
    /* rows of the embeddings and of lm_head: PEFT's dict form */
    const char *const n3[] = {"\"trainable_token_indices\": {\n    \"embed_tokens\": [\n      3,",
                              "\"lm_head\": [\n      0,\n      9,\n      47\n    ]",
                              "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
                              "base_model.model.lm_head.token_adapter.trainable_tokens_delta", NULL};
    extras_lifecycle(0, PEFT_TARGET_V, 0, PEFT_NORM_FINAL, 3, 3, n3);
    const char *const n4[] = {"\"trainable_token_indices\": {\n    \"lm_head\": [",
                              "base_model.model.lm_head.token_adapter.trainable_tokens_delta", NULL};
    extras_lifecycle(0, PEFT_TARGET_Q, 0, 0, 0, 2, n4);
    /* refused: lm_head rows with lm_head LoRA or lm_head in full, twice the same row, out of range */
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    const int32_t twice[2] = {4, 4}, outside[1] = {48};
    o.head_token_indices = head_tokens;
    o.n_head_token_indices = 3;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD;
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EINVAL);
    o.targets = PEFT_TARGET_Q;
    o.modules_to_save = PEFT_SAVE_LM_HEAD;
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EINVAL);
    o.modules_to_save = 0;
    o.head_token_indices = twice;
    o.n_head_token_indices = 2;
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EINVAL);
    o.head_token_indices = outside;
    o.n_head_token_indices = 1;
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EINVAL);
    o.version = 5; /* an older caller's struct ends before the field */
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    peft_model_close(&m);
}

TEST(lora_extras_lifecycle_tied)
{
    /* token rows shared by the lookup and lm_head: the export stays tied */
    const char *const n1[] = {"\"trainable_token_indices\"", "\"modules_to_save\": null", NULL};
    extras_lifecycle(1, PEFT_TARGET_V, 0, 0, 3, 0, n1);
    /* lm_head LoRA changes the output side only: the export unties */
    const char *const n2[] = {"\"lm_head\"", "base_model.model.lm_head.lora_A.weight", NULL};
    extras_lifecycle(1, PEFT_TARGET_Q | PEFT_TARGET_LM_HEAD, 0, 0, 0, 0, n2);
    /* the embeddings trained in full: the input side only */
    const char *const n3[] = {"\"modules_to_save\": [\n    \"embed_tokens\"\n  ]", NULL};
    extras_lifecycle(1, PEFT_TARGET_Q, PEFT_SAVE_EMBED, 0, 0, 0, n3);
    /* a tied lm_head's rows are the embedding rows: its own rows are refused */
    char *dir = tiny_tied_dir();
    peft_model *m;
    CHECK_OK(peft_model_open(&m, dir, NULL));
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.head_token_indices = head_tokens;
    o.n_head_token_indices = 3;
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "tied") != NULL);
    peft_model_close(&m);
}

/* Attach method k (0 LoHa, 1 LoKr, 2 IA3, 3 VeRA) on q, v of layers 1-2 with modules_to_save
   (the embeddings in full) and norms when extras; the trainable count in *n. */
static int attach_side(peft_model *m, int k, int extras, uint64_t *n)
{
    uint32_t save = extras ? PEFT_SAVE_EMBED : 0, norms = extras ? PEFT_NORM_POST_ATTENTION | PEFT_NORM_FINAL : 0;
    if (k < 2) {
        peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
        o.variant = k ? PEFT_VARIANT_LOKR : PEFT_VARIANT_LOHA;
        o.layers = "1-2";
        o.rank = 2;
        o.modules_to_save = save;
        o.norms = norms;
        return peft_attach_lora(m, &o, n);
    }
    if (k == 2) {
        peft_ia3_options o = PEFT_IA3_OPTIONS_INIT;
        o.targets = PEFT_TARGET_Q | PEFT_TARGET_V;
        o.feedforward = 0;
        o.layers = "1-2";
        o.modules_to_save = save;
        o.norms = norms;
        return peft_attach_ia3(m, &o, n);
    }
    peft_vera_options o = PEFT_VERA_OPTIONS_INIT;
    o.layers = "1-2";
    o.rank = 8;
    o.modules_to_save = save;
    o.norms = norms;
    return peft_attach_vera(m, &o, n);
}

/* LoHa, LoKr, IA3 and VeRA with modules_to_save (the embeddings in full, the norms): trained,
   saved in each method's PEFT files with modules_to_save, reloaded to the same loss, merged and
   exported. */
TEST(side_modules_to_save_every_method)
{
    static const char *const type[4] = {"\"LOHA\"", "\"LOKR\"", "\"IA3\"", "\"VERA\""};
    for (int k = 0; k < 4; k++) {
        peft_model *m = open_tiny(1);
        uint64_t n, plain;
        CHECK_OK(attach_side(m, k, 0, &plain));
        peft_detach(m);
        CHECK_OK(attach_side(m, k, 1, &n));
        CHECK_MSG(n == plain + 48 * 32 + 2 * 32 + 32, "%s: %llu vs %llu", type[k], (unsigned long long)n,
                  (unsigned long long)plain); /* embeddings, two layers' norms, the final norm */
        int32_t tok[32];
        char *d;
        const char *const needles[] = {type[k],
                                       "\"modules_to_save\": [\n    \"embed_tokens\",\n"
                                       "    \"model.layers.1.post_attention_layernorm\",\n"
                                       "    \"model.layers.2.post_attention_layernorm\",\n    \"model.norm\"\n  ]",
                                       "base_model.model.model.embed_tokens.weight",
                                       "base_model.model.model.layers.2.post_attention_layernorm.weight",
                                       "base_model.model.model.norm.weight", NULL};
        double with = train_save_reload(m, tok, 4, 1e-2, 0.0, needles, &d);
        merge_session_export(m, tok, with);
        peft_model_close(&m);
    }
    /* still LoRA's alone: lm_head LoRA and token rows with LoHa */
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.variant = PEFT_VARIANT_LOHA;
    o.targets |= PEFT_TARGET_LM_HEAD;
    CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EUNSUPPORTED);
    peft_ia3_options io = PEFT_IA3_OPTIONS_INIT;
    io.modules_to_save = 8;
    CHECK(peft_attach_ia3(m, &io, NULL) == PEFT_EINVAL);
    peft_model_close(&m);
}

/* One rule for every method: loading onto a matching attachment replaces it, weights from the
   file and a fresh optimizer state (step 0). */
TEST(load_replaces_weights_and_optimizer_state)
{
    for (int method = 0; method < 4; method++) {
        peft_model *m = open_tiny(1);
        peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
        peft_prompt_options po = PEFT_PROMPT_OPTIONS_INIT;
        peft_ia3_options io = PEFT_IA3_OPTIONS_INIT;
        static const int32_t rows[3] = {2, 4, 6};
        po.n_virtual = 3;
        CHECK_OK(method == 0   ? peft_attach_lora(m, &lo, NULL)
                 : method == 1 ? peft_attach_prompt(m, &po, NULL)
                 : method == 2 ? peft_attach_tokens(m, rows, 3, NULL)
                               : peft_attach_ia3(m, &io, NULL));
        int32_t tok[32];
        make_batch(tok, 32, 6);
        peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
        CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
        CHECK_OK(peft_step(m, &b, NULL));
        CHECK_OK(peft_step(m, &b, NULL));
        double saved = eval_loss(m), st;
        char *d = mktmp();
        CHECK_OK(peft_save_adapter(m, d, NULL));
        CHECK_OK(peft_step(m, &b, NULL));
        CHECK(eval_loss(m) != saved);
        CHECK_OK(peft_load_adapter(m, d));
        CHECK_MSG(eval_loss(m) == saved, "method %d: the file's weights", method);
        CHECK_OK(peft_opt_get(m, PEFT_OPT_STEP, &st));
        CHECK_MSG(st == 0, "method %d: step %g after loading", method, st);
        peft_model_close(&m);
    }
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
    gguf_refused(m);
    char gp[128];
    snprintf(gp, sizeof gp, "%s/a.gguf", d);
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

/* PEFT's exclude_modules: the string form (a regular expression) and the list form (names
   matched whole or as a suffix after a dot), with targets and layers or a target_regex; saved,
   reloaded in both forms; refused where it excludes everything or on methods without it. */
TEST(exclude_modules)
{
    peft_model *m = open_tiny(1);
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.rank = 2;
    uint64_t all, n;
    CHECK_OK(peft_count_lora(&all, m, &o)); /* per layer q 128, k 96, v 96, o 128, gate, up, down 144 */
    CHECK(all == 3 * 880);
    o.exclude_regex = "(.*\\.)?(down_proj|model\\.layers\\.0\\.self_attn\\.q_proj)";
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == all - 3 * 144 - 128);
    o.version = 7; /* an older caller's struct ends before the field */
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == all);
    o.version = PEFT_LORA_OPTIONS_VERSION;
    o.layers = "1-2"; /* with layers: what they select, less the exclusion */
    o.exclude_regex = "model\\.layers\\.1\\.mlp\\..*";
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == 2 * 880 - 3 * 144);
    o.layers = NULL;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_V | PEFT_TARGET_LM_HEAD;
    o.exclude_regex = "lm_head";
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == 3 * (128 + 96));
    o.exclude_regex = "(.*\\.)?(q_proj|v_proj|lm_head)";
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "leaves no module"));
    o.exclude_regex = "q_proj(";
    CHECK(peft_count_lora(&n, m, &o) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "exclude_regex"));
    o.targets = 0; /* with a target_regex */
    o.target_regex = ".*\\.self_attn\\.(q|v)_proj";
    o.exclude_regex = "model\\.layers\\.1\\..*";
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == 2 * (128 + 96));
    o.variant = PEFT_VARIANT_LOHA; /* LoHa: 2 r (in + out) a module */
    CHECK_OK(peft_count_lora(&n, m, &o));
    CHECK(n == 2 * 2 * (128 + 96));
    o.variant = PEFT_VARIANT_LORA;
    o.target_regex = NULL;
    o.targets = PEFT_TARGET_ALL_LINEAR;
    o.exclude_regex = "(.*\\.)?(down_proj|model\\.layers\\.0\\.self_attn\\.q_proj)";
    CHECK_OK(peft_attach_lora(m, &o, &n));
    CHECK(n == all - 3 * 144 - 128);
    int32_t tok[32];
    char *d;
    const char *const needles[] = {
        "\"exclude_modules\": \"(.*\\\\.)?(down_proj|model\\\\.layers\\\\.0\\\\.self_attn\\\\.q_proj)\",", NULL};
    double with = train_save_reload(m, tok, 5, 1e-2, 0.02, needles, &d);
    peft_model_close(&m);
    /* PEFT's list form of the same exclusion loads to the same adapter */
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", d);
    size_t len;
    char *cfg = read_text(d, "adapter_config.json", &len), *at = cfg ? strstr(cfg, "\"exclude_modules\"") : NULL;
    CHECK(at != NULL);
    if (!at)
        return;
    for (int form = 0; form < 3; form++) {
        static const char *const lists[3] = {"[\"model.layers.0.self_attn.q_proj\", \"down_proj\"]",
                                             "[\"down_proj\", 7]", "[\"mlp.down_proj\"]"};
        FILE *f = fopen(path, "w");
        fprintf(f, "%.*s\"exclude_modules\": %s,%s", (int)(at - cfg), cfg, lists[form], strstr(at, "\n"));
        fclose(f);
        m = open_tiny(1);
        int rc = peft_load_adapter(m, d);
        if (form == 0) {
            CHECK_OK(rc);
            CHECK(eval_loss(m) == with);
        } else if (form == 1) {
            CHECK(rc == PEFT_EFORMAT && strstr(peft_last_error(), "exclude_modules"));
        } else { /* layer 0's q_proj is not excluded: its tensors are missing */
            CHECK(rc == PEFT_ENOTFOUND);
        }
        peft_model_close(&m);
    }
    free(cfg);
    /* the methods that do not read it refuse it by name */
    FILE *f = fopen(path, "w");
    fputs("{\"peft_type\": \"IA3\", \"target_modules\": [\"k_proj\"], \"exclude_modules\": [\"k_proj\"]}", f);
    fclose(f);
    m = open_tiny(1);
    CHECK(peft_load_adapter(m, d) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "exclude_modules"));
    peft_model_close(&m);
}

/* Prompt tuning: counts, the three initialisations, training, PEFT's files, reload, sessions
   that put the soft prompt first, and the refusals (merge, packed documents, bad files). */
TEST(prompt_lifecycle)
{
    peft_model *m = open_tiny(2);
    double base = eval_loss(m);
    peft_prompt_options o = PEFT_PROMPT_OPTIONS_INIT;
    o.n_virtual = 6;
    o.seed = 3;
    uint64_t n, n2;
    CHECK_OK(peft_count_prompt(&n, m, &o));
    CHECK(n == 6 * 32);
    o.n_virtual = 0;
    CHECK(peft_count_prompt(&n2, m, &o) == PEFT_EINVAL);
    o.n_virtual = 6;
    o.init = PEFT_PROMPT_INIT_TEXT; /* the text's tokens, repeated to 6 rows */
    CHECK(peft_attach_prompt(m, &o, &n2) == PEFT_EINVAL);
    int32_t text_ids[4] = {1, 9, 17, 48};
    o.init_tokens = text_ids;
    o.n_init_tokens = 4;
    CHECK(peft_attach_prompt(m, &o, &n2) == PEFT_EINVAL); /* 48 is outside the vocabulary */
    o.n_init_tokens = 3;
    o.init_text = "hello";
    o.tokenizer_name_or_path = "tiny";
    CHECK_OK(peft_attach_prompt(m, &o, &n2));
    CHECK(n2 == n);
    CHECK(peft_save_merged(m, mktmp()) == PEFT_EUNSUPPORTED);
    float *p;
    size_t np;
    CHECK_OK(peft_param_buffer(&p, &np, m));
    CHECK(np == 6 * 32);
    /* the rows are the embeddings of tokens 1, 9, 17, 1, 9, 17: a session fed the prompt alone
       predicts what the base model predicts after those six tokens */
    float l1[48], l2[48];
    peft_session *s;
    CHECK_OK(peft_session_create(&s, m, 8));
    CHECK_OK(peft_session_feed(s, NULL, 0, l1));
    CHECK(peft_session_length(s) == 0);
    peft_session_free(&s);
    CHECK_OK(peft_adapter_enable(m, 0));
    CHECK(eval_loss(m) == base);
    const int32_t rep[6] = {1, 9, 17, 1, 9, 17};
    CHECK_OK(peft_session_create(&s, m, 8));
    CHECK_OK(peft_session_feed(s, rep, 6, l2));
    peft_session_free(&s);
    for (int i = 0; i < 48; i++)
        CHECK_CLOSE(l1[i], l2[i], 1e-5);
    CHECK_OK(peft_adapter_enable(m, 1));
    char *dt = mktmp();
    CHECK_OK(peft_save_adapter(m, dt, NULL));
    size_t len;
    char *cfg = read_text(dt, "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"prompt_tuning_init\": \"TEXT\"") && strstr(cfg, "\"prompt_tuning_init_text\": \"hello\"") &&
          strstr(cfg, "\"tokenizer_name_or_path\": \"tiny\""));
    free(cfg);
    peft_detach(m);
    /* SAMPLE_VOCAB: rows of the embeddings (0.5 N(0, 1) in the tiny model), not N(0, 1) ones */
    o = (peft_prompt_options)PEFT_PROMPT_OPTIONS_INIT;
    o.init = PEFT_PROMPT_INIT_SAMPLE_VOCAB;
    o.n_virtual = 16;
    CHECK_OK(peft_attach_prompt(m, &o, NULL));
    CHECK_OK(peft_param_buffer(&p, &np, m));
    double ms = 0;
    for (size_t i = 0; i < np; i++)
        ms += (double)p[i] * p[i] / (double)np;
    CHECK(ms > 0.1 && ms < 0.45);
    peft_detach(m);

    /* RANDOM: N(0, 1) rows; train, save, reload */
    o = (peft_prompt_options)PEFT_PROMPT_OPTIONS_INIT;
    o.n_virtual = 6;
    o.seed = 3;
    CHECK_OK(peft_attach_prompt(m, &o, NULL));
    CHECK_OK(peft_param_buffer(&p, &np, m));
    double ss = 0;
    for (size_t i = 0; i < np; i++)
        ss += (double)p[i] * p[i];
    CHECK(fabs(ss / (double)np - 1.0) < 0.25);
    int32_t tok[32];
    char *d;
    const char *const needles[] = {"\"peft_type\": \"PROMPT_TUNING\"", "\"num_virtual_tokens\": 6", "\"token_dim\": 32",
                                   "\"num_transformer_submodules\": 1", "\"num_layers\": 3", "\"num_attention_heads\": 4",
                                   "\"prompt_tuning_init\": \"RANDOM\"", "\"task_type\": \"CAUSAL_LM\"", NULL};
    double with = train_save_reload(m, tok, 23, 5e-2, 0.05, needles, &d);
    CHECK(fabs(with - base) > 1e-3);

    /* the first real token is predicted from the soft prompt: 16 counted tokens per row of 16 */
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 1, 16, NULL};
    peft_eval_result e = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e));
    CHECK(e.tokens == 16);
    /* a session puts the prompt first: its next-token log-probabilities sum to the same loss */
    CHECK_OK(peft_session_create(&s, m, 16));
    double sum = 0;
    float logits[48];
    for (int t = 0; t < 16; t++) {
        /* t = 0: the prompt alone (a feed of no tokens) predicts the first token */
        CHECK_OK(peft_session_feed(s, tok + (t > 0 ? t - 1 : 0), t > 0, logits));
        sum += logits_nll(logits, 48, tok[t]);
    }
    CHECK_CLOSE(sum, e.loss_sum, 1e-4);
    CHECK_OK(peft_session_feed(s, tok + 15, 1, NULL));
    CHECK(peft_session_length(s) == 16);
    CHECK(peft_session_feed(s, tok, 1, NULL) == PEFT_ERANGE);
    peft_session_free(&s);

    /* a config that disagrees with the model or with the tensor: clean errors, nothing attached */
    static const struct {
        const char *from, *to;
        int code;
    } bad[] = {{"\"token_dim\": 32", "\"token_dim\": 31", PEFT_ESHAPE},
               {"\"num_virtual_tokens\": 6", "\"num_virtual_tokens\": 7", PEFT_ESHAPE},
               {"\"num_virtual_tokens\": 6", "\"num_virtual_tokens\": -6", PEFT_EFORMAT},
               {"\"num_transformer_submodules\": 1", "\"num_transformer_submodules\": 2", PEFT_EUNSUPPORTED},
               {"\"CAUSAL_LM\"", "\"SEQ_2_SEQ_LM\"", PEFT_EUNSUPPORTED}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *text = read_text(d, "adapter_config.json", &len), *at = text ? strstr(text, bad[i].from) : NULL;
        CHECK(at != NULL);
        if (!at) {
            free(text);
            continue;
        }
        char *bd = mktmp(), path[600];
        snprintf(path, sizeof path, "%s/adapter_config.json", bd);
        FILE *f = fopen(path, "wb");
        fprintf(f, "%.*s%s%s", (int)(at - text), text, bad[i].to, at + strlen(bad[i].from));
        fclose(f);
        char src[600], dst[600];
        snprintf(src, sizeof src, "%s/adapter_model.safetensors", d);
        snprintf(dst, sizeof dst, "%s/adapter_model.safetensors", bd);
        CHECK(symlink(src, dst) == 0);
        peft_model *m3 = open_tiny(1);
        CHECK_MSG(peft_load_adapter(m3, bd) == bad[i].code, "%s: %s", bad[i].to, peft_last_error());
        peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
        CHECK_OK(peft_model_get_info(m3, &info));
        CHECK(info.n_trainable == 0);
        peft_model_close(&m3);
        free(text);
    }

    /* refusals */
    CHECK(peft_merge_adapter(m) == PEFT_EUNSUPPORTED);
    gguf_refused(m);

    /* packed documents: each sees the soft prompt and restarts its positions after it, so a row
       of documents A (6 tokens) and B (10) scores as A and B alone, less B's first token (a
       document's first token is predicted only in the row's first document) */
    int32_t seg[16];
    for (int t = 0; t < 16; t++)
        seg[t] = t < 6 ? 4 : 9;
    peft_batch bs = {PEFT_BATCH_VERSION, tok, NULL, 1, 16, seg};
    peft_eval_result ep = PEFT_EVAL_RESULT_INIT, ea = PEFT_EVAL_RESULT_INIT, eb = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &bs, &ep));
    peft_batch ba = {PEFT_BATCH_VERSION, tok, NULL, 1, 6, NULL}, bb = {PEFT_BATCH_VERSION, tok + 6, NULL, 1, 10, NULL};
    CHECK_OK(peft_eval(m, &ba, &ea));
    CHECK_OK(peft_eval(m, &bb, &eb));
    CHECK_OK(peft_session_create(&s, m, 4));
    CHECK_OK(peft_session_feed(s, NULL, 0, logits));
    peft_session_free(&s);
    CHECK(ep.tokens == 15);
    CHECK_CLOSE(ep.loss_sum, ea.loss_sum + eb.loss_sum - logits_nll(logits, 48, tok[6]), 1e-4);
    peft_step_result rs = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_step(m, &bs, &rs));
    peft_model_close(&m);
}

/* Trainable tokens alone (PEFT TRAINABLE_TOKENS), untied and tied: counts, training, PEFT's
   files, reload, merge and export, refusals. */
TEST(trainable_tokens_lifecycle)
{
    for (int tied = 0; tied < 2; tied++) {
        peft_model *m;
        char *tdir = tied ? tiny_tied_dir() : NULL;
        if (tied) {
            CHECK_OK(peft_model_open(&m, tdir, NULL));
        } else {
            m = open_tiny(2);
        }
        const int32_t ids[4] = {5, 9, 2, 40}, dup[2] = {5, 5}, bad[1] = {48};
        uint64_t n;
        CHECK_OK(peft_count_tokens(&n, m, ids, 4));
        CHECK(n == 4 * 32);
        CHECK(peft_count_tokens(&n, m, dup, 2) == PEFT_EINVAL);
        CHECK(peft_count_tokens(&n, m, bad, 1) == PEFT_EINVAL);
        double base = eval_loss(m);
        CHECK_OK(peft_attach_tokens(m, ids, 4, &n));
        CHECK_CLOSE(eval_loss(m), base, 1e-6); /* the rows start as the base embeddings (tied: lm_head's too) */
        peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
        CHECK_OK(peft_model_get_info(m, &info));
        CHECK(!strcmp(info.adapter_type, "TRAINABLE_TOKENS") && info.n_trainable == 4 * 32);
        int32_t tok[32];
        char *d;
        const char *const needles[] = {"\"peft_type\": \"TRAINABLE_TOKENS\"", "\"target_modules\": [\n    \"embed_tokens\"",
                                       "\"token_indices\": [\n    5,\n    9,\n    2,\n    40\n  ]", "\"init_weights\": true",
                                       NULL};
        /* make_batch(17) draws tokens 5, 9, 2 and 40 among others */
        double with;
        if (!tied) {
            with = train_save_reload(m, tok, 17, 5e-2, 0.01, needles, &d);
        } else { /* the same on the tied copy: the rows also move lm_head's */
            CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 5e-2));
            make_batch(tok, 32, 17);
            peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
            for (int i = 0; i < 21; i++)
                CHECK_OK(peft_step(m, &b, NULL));
            with = eval_loss(m);
            CHECK(with < base - 0.01);
            d = mktmp();
            CHECK_OK(peft_save_adapter(m, d, NULL));
            peft_model *m2;
            CHECK_OK(peft_model_open(&m2, tdir, NULL));
            CHECK_OK(peft_load_adapter(m2, d));
            CHECK(eval_loss(m2) == with);
            peft_model_close(&m2);
        }
        size_t len;
        char *st = read_text(d, "adapter_model.safetensors", &len);
        CHECK(st && len > 8 && memmem(st, len, "base_model.model.model.embed_tokens.trainable_tokens_delta", 58));
        free(st);
        /* merged: nothing moves into the linear weights; the export writes the rows (and, tied,
           an lm_head that is no longer the embeddings) */
        merge_session_export(m, tok, with);
        gguf_refused(m);
        CHECK_OK(peft_detach(m));
        CHECK(eval_loss(m) == base);
        peft_model_close(&m);
    }
}

static const struct h_case cases[] = {
    CASE(embed_lora_lifecycle), CASE(vera_lifecycle), CASE(loha_lifecycle), CASE(lokr_lifecycle),
    CASE(lora_extras_gradients_and_counts), CASE(lora_extras_lifecycle_untied), CASE(lora_extras_lifecycle_tied),
    CASE(parameter_groups_learning_rates), CASE(pissa_lifecycle), CASE(olora_lifecycle), CASE(regex_targets), CASE(exclude_modules),
    CASE(prompt_lifecycle), CASE(side_modules_to_save_every_method),
    CASE(load_replaces_weights_and_optimizer_state),
    CASE(trainable_tokens_lifecycle),
};

TEST_MAIN(cases)
