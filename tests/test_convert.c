/* Adapter conversion without the model (peft_convert_adapter): PEFT <-> GGUF LoRA, checked
   against llama.cpp's own conversion of the reference adapter, against the model-based
   export, by round trips, and with hostile GGUF LoRA files. */
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>

#include "api_helpers.h"

static int same_file(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    char *pa = read_whole(a, &na), *pb = read_whole(b, &nb);
    int same = pa && pb && na == nb && memcmp(pa, pb, na) == 0;
    free(pa);
    free(pb);
    return same;
}

static const char *join(const char *dir, const char *name)
{
    static char buf[4][8400];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

TEST(convert_reference_adapter_both_ways)
{
    const char *sh = shared_dir();
    if (!sh)
        SKIP("../shared is absent");
    char model[4200], ref[4300], ref_gguf[4300];
    snprintf(model, sizeof model, "%s/models/stories260K", sh);
    snprintf(ref, sizeof ref, "%s/reference/ref_adapter", model);
    snprintf(ref_gguf, sizeof ref_gguf, "%s/reference/ref_adapter.gguf", model);
    char *t = mktmp();
    /* PEFT -> GGUF without the model: the file the model-based export writes */
    peft_convert_options co = PEFT_CONVERT_OPTIONS_INIT;
    co.n_heads = 8;
    co.n_kv_heads = 4;
    co.n_layers = 5;
    CHECK_OK(peft_convert_adapter(ref, join(t, "free.gguf"), &co));
    peft_model *m;
    CHECK_OK(peft_model_open(&m, model, NULL));
    CHECK_OK(peft_load_adapter(m, ref));
    CHECK_OK(peft_save_adapter_gguf(m, join(t, "model.gguf"), NULL));
    CHECK(same_file(join(t, "free.gguf"), join(t, "model.gguf")));
    /* llama.cpp's GGUF -> PEFT: PEFT's own tensor file, byte for byte, and the config
       peft_save_adapter writes for the same adapter */
    co.base_model = "stories260K";
    CHECK_OK(peft_convert_adapter(ref_gguf, join(t, "back"), &co));
    CHECK(same_file(join(t, "back/adapter_model.safetensors"), join(ref, "adapter_model.safetensors")));
    peft_save_options so = PEFT_SAVE_OPTIONS_INIT;
    so.base_model_name_or_path = "stories260K";
    CHECK_OK(peft_save_adapter(m, join(t, "saved"), &so));
    CHECK(same_file(join(t, "back/adapter_config.json"), join(t, "saved/adapter_config.json")));
    double with = eval_loss(m);
    peft_model_close(&m);
    CHECK_OK(peft_model_open(&m, model, NULL));
    CHECK_OK(peft_load_adapter(m, join(t, "back")));
    CHECK(eval_loss(m) == with);
    peft_model_close(&m);
    /* without the head counts the q/k rows cannot be placed */
    co.n_heads = co.n_kv_heads = 0;
    CHECK(peft_convert_adapter(ref_gguf, join(t, "nohead"), &co) == PEFT_EINVAL);
    CHECK(strstr(peft_last_error(), "head counts") != NULL);
    CHECK(peft_convert_adapter(ref, join(t, "nohead.gguf"), &co) == PEFT_EINVAL);
    /* a model file is not an adapter */
    char q8[4300];
    snprintf(q8, sizeof q8, "%s/stories260K-q8_0.gguf", model);
    co.n_heads = 8;
    CHECK(peft_convert_adapter(q8, join(t, "model-as-adapter"), &co) == PEFT_EFORMAT);
    CHECK(strstr(peft_last_error(), "not a GGUF LoRA adapter") != NULL);
    struct stat sb;
    CHECK(stat(join(t, "model-as-adapter"), &sb) != 0 && stat(join(t, "nohead.gguf"), &sb) != 0);
}

/* train an adapter on the tiny model (4 heads, 2 kv heads), save it as PEFT in dir */
static double trained(const peft_lora_options *lo, const char *dir)
{
    peft_model *m = open_tiny(1);
    CHECK_OK(peft_attach_lora(m, lo, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 2e-2));
    int32_t tok[32];
    make_batch(tok, 32, 5);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 16, NULL};
    for (int i = 0; i < 5; i++)
        CHECK_OK(peft_step(m, &b, NULL));
    CHECK_OK(peft_save_adapter(m, dir, NULL));
    CHECK_OK(peft_save_adapter_gguf(m, join(dir, "model.gguf"), NULL));
    double loss = eval_loss(m);
    peft_model_close(&m);
    return loss;
}

TEST(convert_patterns_rslora_layers_and_regex)
{
    peft_lora_options cases[4];
    for (int i = 0; i < 4; i++)
        cases[i] = (peft_lora_options)PEFT_LORA_OPTIONS_INIT;
    /* 0: plain, every layer: comes back bit-identical */
    cases[0].targets = PEFT_TARGET_ALL_LINEAR;
    cases[0].rank = 4;
    cases[0].alpha = 8;
    /* 1: ranks, alphas and rsLoRA folded into B; two of three layers */
    cases[1].targets = PEFT_TARGET_Q | PEFT_TARGET_K | PEFT_TARGET_V | PEFT_TARGET_DOWN;
    cases[1].layers = "0,2";
    cases[1].rank = 4;
    cases[1].alpha = 6;
    cases[1].use_rslora = 1;
    cases[1].rank_pattern = "k_proj=2,model.layers.2.mlp.down_proj=6";
    cases[1].alpha_pattern = "q_proj=3";
    /* 2: different modules on different layers (a regular expression comes back) */
    cases[2].targets = 0;
    cases[2].target_regex = "model\\.layers\\.0\\.self_attn\\.(q|v)_proj|model\\.layers\\.1\\.mlp\\.up_proj";
    cases[2].rank = 3;
    cases[2].alpha = 5;
    /* 3: one layer, k only (the kv-head permutation alone) */
    cases[3].targets = PEFT_TARGET_K;
    cases[3].layers = "1";
    cases[3].rank = 2;
    cases[3].alpha = 2;
    for (int c = 0; c < 4; c++) {
        char *d = mktmp(), *back = mktmp();
        double with = trained(&cases[c], d);
        peft_convert_options co = PEFT_CONVERT_OPTIONS_INIT;
        co.n_heads = 4;
        co.n_kv_heads = 2;
        co.n_layers = 3;
        CHECK_OK(peft_convert_adapter(d, join(d, "free.gguf"), &co));
        CHECK_MSG(same_file(join(d, "free.gguf"), join(d, "model.gguf")), "case %d: GGUF differs from the model's", c);
        co.base_model = test_data("tiny");
        CHECK_OK(peft_convert_adapter(join(d, "model.gguf"), back, &co));
        peft_model *m = open_tiny(1);
        CHECK_OK(peft_load_adapter(m, back));
        double got = eval_loss(m);
        CHECK_MSG(fabs(got - with) <= 1e-6 * fabs(with), "case %d: loss %.9g after the round trip, %.9g before", c, got,
                  with);
        peft_model_close(&m);
        size_t n;
        char *cfg = read_text(back, "adapter_config.json", &n);
        CHECK(cfg != NULL);
        if (c == 0) {
            CHECK(same_file(join(back, "adapter_model.safetensors"), join(d, "adapter_model.safetensors")));
            CHECK(same_file(join(back, "adapter_config.json"), join(d, "adapter_config.json")));
        } else if (c == 1) {
            CHECK(cfg && strstr(cfg, "\"model.layers.0.self_attn.k_proj\": 2") &&
                  strstr(cfg, "\"model.layers.2.mlp.down_proj\": 6") && strstr(cfg, "\"r\": 4") &&
                  strstr(cfg, "\"lora_alpha\": 6") && strstr(cfg, "\"use_rslora\": false"));
        } else if (c == 2) {
            CHECK(cfg && strstr(cfg, "\"target_modules\": \"model\\\\.layers\\\\.0\\\\.self_attn\\\\.q_proj|"));
        } else {
            CHECK(cfg && strstr(cfg, "\"layers_to_transform\": [\n    1\n  ]") && strstr(cfg, "\"k_proj\""));
        }
        /* and back to GGUF once more: the same file */
        co.base_model = NULL;
        CHECK_OK(peft_convert_adapter(back, join(back, "again.gguf"), &co));
        if (c == 0 || c >= 2)
            CHECK_MSG(same_file(join(back, "again.gguf"), join(d, "model.gguf")), "case %d: second GGUF differs", c);
        free(cfg);
    }
}

/* ---- a small GGUF LoRA writer for hand-made (and broken) files ---- */

struct gw {
    unsigned char b[1 << 16];
    size_t n;
};
static void gw_put(struct gw *w, const void *p, size_t n)
{
    memcpy(w->b + w->n, p, n);
    w->n += n;
}
static void gw_u32(struct gw *w, uint32_t v) { gw_put(w, &v, 4); }
static void gw_u64(struct gw *w, uint64_t v) { gw_put(w, &v, 8); }
static void gw_str(struct gw *w, const char *s)
{
    gw_u64(w, strlen(s));
    gw_put(w, s, strlen(s));
}

static uint16_t to_f16(float f) /* exact for the small dyadic values used here */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    int e = (int)((u >> 23) & 0xff) - 127 + 15;
    if ((u & 0x7fffffffu) == 0)
        return (uint16_t)sign;
    return (uint16_t)(sign | ((uint32_t)e << 10) | ((u >> 13) & 0x3ffu));
}

/* one module, blk.0.attn_v (in 32, out 16 as on the tiny model; r 2), tensors of `type`
   (0 F32, 1 F16); alpha; a second tensor name; the file's general.type */
static size_t gguf_lora(struct gw *w, uint32_t type, float alpha, const char *b_name, const char *gtype)
{
    w->n = 0;
    gw_put(w, "GGUF", 4);
    gw_u32(w, 3);
    gw_u64(w, 2);
    gw_u64(w, 4);
    gw_str(w, "general.architecture");
    gw_u32(w, 8);
    gw_str(w, "llama");
    gw_str(w, "general.type");
    gw_u32(w, 8);
    gw_str(w, gtype);
    gw_str(w, "adapter.type");
    gw_u32(w, 8);
    gw_str(w, "lora");
    gw_str(w, "adapter.lora.alpha");
    gw_u32(w, 6);
    gw_put(w, &alpha, 4);
    const int in = 32, out = 16, r = 2;
    size_t es = type ? 2 : 4, a_bytes = (size_t)in * r * es, b_off = (a_bytes + 31) & ~(size_t)31;
    gw_str(w, "blk.0.attn_v.weight.lora_a");
    gw_u32(w, 2);
    gw_u64(w, (uint64_t)in);
    gw_u64(w, (uint64_t)r);
    gw_u32(w, type);
    gw_u64(w, 0);
    gw_str(w, b_name);
    gw_u32(w, 2);
    gw_u64(w, (uint64_t)r);
    gw_u64(w, (uint64_t)out);
    gw_u32(w, type);
    gw_u64(w, b_off);
    while (w->n % 32)
        w->b[w->n++] = 0;
    size_t data = w->n;
    for (int i = 0; i < in * r + out * r; i++) {
        float v = (float)((i % 17) - 8) / 64.0f;
        size_t at = data + (i < in * r ? (size_t)i * es : b_off + (size_t)(i - in * r) * es);
        if (type) {
            uint16_t h = to_f16(v);
            memcpy(w->b + at, &h, 2);
        } else {
            memcpy(w->b + at, &v, 4);
        }
    }
    w->n = data + b_off + (size_t)out * r * es;
    return w->n;
}

static int convert_bytes(const struct gw *w, size_t n, const char *dir)
{
    FILE *f = fopen(join(dir, "in.gguf"), "wb");
    fwrite(w->b, 1, n, f);
    fclose(f);
    return peft_convert_adapter(join(dir, "in.gguf"), join(dir, "out"), NULL);
}

TEST(convert_gguf_types_and_hostile_files)
{
    static struct gw w;
    char *t = mktmp();
    /* F16 and F32 files of the same values give the same PEFT adapter; v needs no head counts */
    size_t n = gguf_lora(&w, 1, 4.0f, "blk.0.attn_v.weight.lora_b", "adapter");
    CHECK_OK(convert_bytes(&w, n, t));
    rename(join(t, "out"), join(t, "f16"));
    n = gguf_lora(&w, 0, 4.0f, "blk.0.attn_v.weight.lora_b", "adapter");
    CHECK_OK(convert_bytes(&w, n, t));
    CHECK(same_file(join(t, "f16/adapter_model.safetensors"), join(t, "out/adapter_model.safetensors")));
    size_t len;
    char *cfg = read_text(join(t, "out"), "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"layers_to_transform\": [\n    0\n  ]") && strstr(cfg, "\"r\": 2") &&
          strstr(cfg, "\"lora_alpha\": 4") && strstr(cfg, "\"v_proj\""));
    free(cfg);
    peft_model *m = open_tiny(1);
    CHECK_OK(peft_load_adapter(m, join(t, "out")));
    peft_model_close(&m);
    /* alpha 0: llama.cpp's scale 1, so PEFT's alpha is r */
    n = gguf_lora(&w, 0, 0.0f, "blk.0.attn_v.weight.lora_b", "adapter");
    CHECK_OK(convert_bytes(&w, n, join(t, "")));
    cfg = read_text(join(t, "out"), "adapter_config.json", &len);
    CHECK(cfg && strstr(cfg, "\"lora_alpha\": 2,"));
    free(cfg);
    /* refusals, each with its error, nothing written */
    struct {
        uint32_t type;
        float alpha;
        const char *b, *gtype;
        int code;
        const char *msg;
    } bad[] = {
        {0, 4.0f, "blk.0.attn_v.weight.lora_b", "model", PEFT_EFORMAT, "not a GGUF LoRA adapter"},
        {0, -1.0f, "blk.0.attn_v.weight.lora_b", "adapter", PEFT_EFORMAT, "adapter.lora.alpha"},
        {0, 4.0f, "blk.0.attn_v.weight.lora_c", "adapter", PEFT_EUNSUPPORTED, "lora_c"},
        {0, 4.0f, "token_embd.weight.lora_b", "adapter", PEFT_EUNSUPPORTED, "token_embd"},
        {0, 4.0f, "blk.0.attn_k.weight.lora_b", "adapter", PEFT_EFORMAT, "lora_b missing"},
        {0, 4.0f, "blk.0.attn_v.weight.lora_a", "adapter", PEFT_EFORMAT, "lora_b missing"},
        {2, 4.0f, "blk.0.attn_v.weight.lora_b", "adapter", PEFT_EUNSUPPORTED, "Q4_0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *d = mktmp();
        n = gguf_lora(&w, bad[i].type, bad[i].alpha, bad[i].b, bad[i].gtype);
        int rc = convert_bytes(&w, n, d);
        struct stat sb;
        CHECK_MSG(rc != 0 && stat(join(d, "out"), &sb) != 0, "bad file %zu converted (rc %d)", i, rc);
        CHECK_MSG(rc == bad[i].code, "bad file %zu: code %d: %s", i, rc, peft_last_error());
        CHECK_MSG(strstr(peft_last_error(), bad[i].msg) != NULL, "bad file %zu: %s", i, peft_last_error());
    }
    /* every truncation of a good file is refused cleanly */
    n = gguf_lora(&w, 0, 4.0f, "blk.0.attn_v.weight.lora_b", "adapter");
    char *d = mktmp();
    for (size_t cut = 0; cut < n; cut += cut < 400 ? 1 : 61) {
        int rc = convert_bytes(&w, cut, d);
        CHECK_MSG(rc == PEFT_EFORMAT || rc == PEFT_EUNSUPPORTED, "cut at %zu: %d", cut, rc);
    }
    /* absurd dimensions and offsets */
    n = gguf_lora(&w, 0, 4.0f, "blk.0.attn_v.weight.lora_b", "adapter");
    static struct gw w2;
    w2 = w;
    size_t ne_at = 0;
    for (size_t i = 0; i + 26 < n; i++)
        if (!memcmp(w.b + i, "blk.0.attn_v.weight.lora_a", 26)) {
            ne_at = i + 26 + 4;
            break;
        }
    CHECK(ne_at > 0);
    uint64_t huge = 1ull << 50;
    memcpy(w2.b + ne_at, &huge, 8);
    CHECK(convert_bytes(&w2, n, d) == PEFT_EFORMAT);
    w2 = w;
    memcpy(w2.b + ne_at + 16 + 4, &huge, 8); /* the offset */
    CHECK(convert_bytes(&w2, n, d) == PEFT_EFORMAT);
    struct stat sb;
    CHECK(stat(join(d, "out"), &sb) != 0);
}

/* The merged model as GGUF from a GGUF base: LoRA on q, v and the tied lm_head (which unties it)
   with the norms trained: the file llama.cpp would load gives the loss of base + adapter */
TEST(merged_gguf_export)
{
    const char *sh = shared_dir();
    if (!sh)
        SKIP("../shared is absent");
    char base[4200];
    snprintf(base, sizeof base, "%s/models/stories260K/stories260K-f32.gguf", sh);
    char *t = mktmp();
    peft_model *m;
    CHECK_OK(peft_model_open(&m, base, NULL));
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    lo.targets = PEFT_TARGET_Q | PEFT_TARGET_V | PEFT_TARGET_LM_HEAD;
    lo.rank = 4;
    lo.alpha = 8;
    lo.norms = PEFT_NORM_INPUT | PEFT_NORM_POST_ATTENTION | PEFT_NORM_FINAL;
    CHECK_OK(peft_attach_lora(m, &lo, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    int32_t tok[64];
    for (int i = 0; i < 64; i++)
        tok[i] = (int32_t)((i * 37 + 11) % 512);
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 32, NULL};
    for (int i = 0; i < 4; i++)
        CHECK_OK(peft_step(m, &b, NULL));
    peft_eval_result e0 = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e0));
    static const int types[] = {PEFT_GGUF_TYPE_SAME, PEFT_GGUF_TYPE_F32, PEFT_GGUF_TYPE_F16, PEFT_GGUF_TYPE_Q8_0};
    static const double tol[] = {1e-6, 1e-6, 2e-3, 2e-2};
    for (int i = 0; i < 4; i++) {
        peft_gguf_export_options go = PEFT_GGUF_EXPORT_OPTIONS_INIT;
        go.type = types[i];
        char name[32];
        snprintf(name, sizeof name, "m%d.gguf", i);
        CHECK_OK(peft_save_merged_gguf(m, join(t, name), &go));
        peft_model *mm;
        CHECK_OK(peft_model_open(&mm, join(t, name), NULL));
        peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
        CHECK_OK(peft_model_get_info(mm, &info));
        CHECK(info.tied_embeddings == 0); /* the lm_head LoRA untied it */
        peft_eval_result e1 = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(mm, &b, &e1));
        double rel = fabs(e1.loss_sum - e0.loss_sum) / e0.loss_sum;
        CHECK_MSG(rel <= tol[i], "type %d: merged loss %.9g, base + adapter %.9g", types[i], e1.loss_sum, e0.loss_sum);
        peft_model_close(&mm);
    }
    /* a type that is not written is refused */
    peft_gguf_export_options go = PEFT_GGUF_EXPORT_OPTIONS_INIT;
    go.type = 3; /* Q4_1 */
    CHECK(peft_save_merged_gguf(m, join(t, "bad.gguf"), &go) == PEFT_EINVAL);
    peft_model_close(&m);
    struct stat sb;
    CHECK(stat(join(t, "bad.gguf"), &sb) != 0);
    /* from the Hugging Face directory, the same training: the GGUF file (keys and vocabulary
       made, lm_head untied, norms trained) gives base + adapter */
    snprintf(base, sizeof base, "%s/models/stories260K", sh);
    CHECK_OK(peft_model_open(&m, base, NULL));
    CHECK_OK(peft_attach_lora(m, &lo, NULL));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    for (int i = 0; i < 4; i++)
        CHECK_OK(peft_step(m, &b, NULL));
    CHECK_OK(peft_eval(m, &b, &e0));
    CHECK_OK(peft_save_merged_gguf(m, join(t, "hf.gguf"), NULL));
    peft_model_close(&m);
    CHECK_OK(peft_model_open(&m, join(t, "hf.gguf"), NULL));
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    CHECK_OK(peft_model_get_info(m, &info));
    CHECK(info.tied_embeddings == 0 && strcmp(info.weights_dtype, "F32") == 0);
    peft_eval_result e1 = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e1));
    CHECK_MSG(fabs(e1.loss_sum - e0.loss_sum) <= 1e-6 * e0.loss_sum, "from HF: merged loss %.9g, base + adapter %.9g",
              e1.loss_sum, e0.loss_sum);
    peft_model_close(&m);
}

static const struct h_case cases[] = {
    CASE(merged_gguf_export),
    CASE(convert_reference_adapter_both_ways),
    CASE(convert_patterns_rslora_layers_and_regex),
    CASE(convert_gguf_types_and_hostile_files),
};

TEST_MAIN(cases)
