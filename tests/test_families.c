/*
 * The model families beyond Llama against their PyTorch references (tests/golden/make_golden.py,
 * make_gemma.py): Mistral's window, RoPE scaling and transformers 5's rope_parameters, Qwen2/3,
 * SmolLM3, Granite, Llama with biases (PEFT's bias option, IA3 on biased modules), Gemma 3 and
 * Gemma 2 (their norms tuned too), with finite differences, merged exports and config errors.
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

/* A model directory (a new temporary dir, its name into dir[21]) with `config` as config.json
   and the weights file `base` of the test data linked. */
/* a small text file into buf (NUL-terminated; "" when it cannot be read) */
static void read_small(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    size_t len = f ? fread(buf, 1, cap - 1, f) : 0;
    if (f)
        fclose(f);
    buf[len] = 0;
}

static void variant_dir(char *dir, const char *base, const char *config)
{
    char p[512], *target = realpath(test_data(base), NULL);
    memcpy(dir, "/tmp/peft-var-XXXXXX", 21);
    CHECK(mkdtemp(dir) != NULL && target);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    CHECK(target && symlink(target, p) == 0);
    free(target);
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *o = fopen(p, "w");
    CHECK(o != NULL);
    if (o) {
        fputs(config, o);
        fclose(o);
    }
}

static double variant_loss(const char *dir)
{
    peft_model *m;
    peft_eval_result e = PEFT_EVAL_RESULT_INIT;
    int32_t tok[24];
    for (int i = 0; i < 24; i++)
        tok[i] = (i * 11 + 5) % 48;
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 2, 12, NULL};
    CHECK_OK(peft_model_open(&m, dir, NULL));
    if (m)
        CHECK_OK(peft_eval(m, &b, &e));
    peft_model_close(&m);
    return e.loss_sum;
}

#define TINY_QWEN2 "\"model_type\": \"qwen2\", \"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": 3, " \
                   "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8, \"vocab_size\": 48, " \
                   "\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"tie_word_embeddings\": true"
#define TINY_LLAMA "\"model_type\": \"%s\", \"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": 3, " \
                   "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 48"

/* The remaining families' quirks through the whole model, by finite differences: Mistral's
   sliding window (3 of 10 positions), Llama 3's RoPE scaling, and Qwen2's window on the layers
   from max_window_layers on; the Qwen window attends as transformers' layer_types says (all
   layers full when max_window_layers is the layer count: the plain model's loss; an explicit
   layer_types list the same as max_window_layers; a list that is not full-then-sliding refused) */
TEST(model_gradcheck_windows_and_rope_scaling)
{
    char d1[] = "/tmp/peft-var-XXXXXX", d2[] = "/tmp/peft-var-XXXXXX", d3[] = "/tmp/peft-var-XXXXXX", cfg[1024];
    snprintf(cfg, sizeof cfg, "{" TINY_LLAMA ", \"sliding_window\": 3}", "mistral");
    variant_dir(d1, "tiny/model.safetensors", cfg);
    gradcheck_at(d1, test_data("tiny/all_linear/adapter"));
    model_dir_remove(d1);
    snprintf(cfg, sizeof cfg, "{" TINY_LLAMA ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
             "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 16}}", "llama");
    variant_dir(d1, "tiny/model.safetensors", cfg);
    gradcheck_at(d1, test_data("tiny/all_linear/adapter"));
    model_dir_remove(d1);

    const char *q = "tiny_qwen2/model.safetensors";
    variant_dir(d1, q, "{" TINY_QWEN2 ", \"use_sliding_window\": true, \"sliding_window\": 3, \"max_window_layers\": 1}");
    gradcheck_at(d1, test_data("tiny_qwen2/all_linear/adapter"));
    variant_dir(d2, q, "{" TINY_QWEN2 ", \"use_sliding_window\": true, \"sliding_window\": 3, \"max_window_layers\": 3}");
    variant_dir(d3, q, "{" TINY_QWEN2 ", \"use_sliding_window\": true, \"sliding_window\": 3, \"layer_types\": "
                       "[\"full_attention\", \"sliding_attention\", \"sliding_attention\"]}");
    double plain = variant_loss(test_data("tiny_qwen2")), w1 = variant_loss(d1), w3 = variant_loss(d2), lt = variant_loss(d3);
    CHECK_MSG(w3 == plain, "max_window_layers = layers: %.9g, plain %.9g", w3, plain);
    CHECK_MSG(w1 != plain && fabs(w1 - plain) > 1e-6 * plain, "the window changes nothing: %.9g", w1);
    CHECK_MSG(lt == w1, "layer_types %.9g, max_window_layers %.9g", lt, w1);
    model_dir_remove(d2);
    model_dir_remove(d3);
    variant_dir(d2, q, "{" TINY_QWEN2 ", \"use_sliding_window\": true, \"sliding_window\": 3, \"layer_types\": "
                       "[\"sliding_attention\", \"full_attention\", \"sliding_attention\"]}");
    peft_model *m = NULL;
    CHECK(peft_model_open(&m, d2, NULL) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "layer_types"));
    model_dir_remove(d2);
    /* llama.cpp's qwen2 has no window: such a model is not written as GGUF */
    CHECK_OK(peft_model_open(&m, d1, NULL));
    if (m) {
        char out[64];
        snprintf(out, sizeof out, "%s/x.gguf", d1);
        CHECK(peft_save_merged_gguf(m, out, NULL) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "sliding window"));
        peft_model_close(&m);
    }
    model_dir_remove(d1);
}

/* transformers 5 writes the RoPE base and scaling as one "rope_parameters" object: the same
   model as rope_theta + rope_scaling (Llama 3's scaling, and a base alone), not the default base */
TEST(rope_parameters_of_transformers_5)
{
    static const char *const pairs[][2] = {
        {"\"rope_theta\": 500000.0, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
         "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 16}",
         "\"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"llama3\", \"factor\": 8.0, "
         "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 16}"},
        {"\"rope_theta\": 3.0", "\"rope_parameters\": {\"rope_theta\": 3.0, \"rope_type\": \"default\"}"},
    };
    double plain = variant_loss(test_data("tiny"));
    for (int i = 0; i < 2; i++) {
        char d1[21], d2[21], cfg[1024];
        snprintf(cfg, sizeof cfg, "{" TINY_LLAMA ", \"head_dim\": 8, %s}", "llama", pairs[i][0]);
        variant_dir(d1, "tiny/model.safetensors", cfg);
        snprintf(cfg, sizeof cfg, "{" TINY_LLAMA ", \"head_dim\": 8, %s}", "llama", pairs[i][1]);
        variant_dir(d2, "tiny/model.safetensors", cfg);
        double legacy = variant_loss(d1), v5 = variant_loss(d2);
        CHECK_MSG(legacy == v5 && fabs(v5 - plain) > 1e-6 * plain, "%d: rope_scaling %.9g, rope_parameters %.9g, "
                  "default %.9g", i, legacy, v5, plain);
        model_dir_remove(d1);
        model_dir_remove(d2);
    }
    char d[21];
    variant_dir(d, "tiny/model.safetensors", "{" "\"model_type\": \"llama\", \"hidden_size\": 32, "
                "\"intermediate_size\": 40, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"vocab_size\": 48, "
                "\"rope_parameters\": [1]}");
    peft_model *m = NULL;
    CHECK(peft_model_open(&m, d, NULL) == PEFT_EFORMAT && strstr(peft_last_error(), "rope_parameters"));
    model_dir_remove(d);
}


/* the other families, with their quirks: Qwen2's q/k/v biases and tied embeddings, Qwen3's
   per-head q/k RMSNorm and a head_dim larger than hidden / heads */
TEST(torch_step_qwen2)
{
    step_model = "tiny_qwen2";
    step_case("all_linear", 2);
    step_model = "tiny";
}
TEST(torch_step_qwen3)
{
    step_model = "tiny_qwen3";
    step_case("all_linear", 2);
    step_model = "tiny";
}
static void check_merged_exports(const char *model, const char *adapter_path);

/* PEFT's modules_to_save ["norm"] on Qwen3: every norm, the per-head q/k norms (head_dim, shared
   by the heads) included, trained beside LoRA on q and v, against PyTorch (with weight decay), by
   finite differences, and merged and exported (the GGUF base's attn_q_norm rewritten) */
TEST(torch_step_qwen3_norms)
{
    step_model = "tiny_qwen3";
    step_case("lora_norm_all", 2);
    step_model = "tiny";
    gradcheck_in("tiny_qwen3", "tiny_qwen3/lora_norm_all/adapter");
    check_merged_exports("tiny_qwen3", test_data("tiny_qwen3/lora_norm_all/adapter"));
}
/* SmolLM3: Llama with RoPE left out of some layers (no_rope_layers; the tiny model's fourth,
   as llama.cpp fixes it) against PyTorch and by finite differences. The interval form is the
   same model, RoPE everywhere another; a list that is not periodic and the sliding window (on
   the NoPE layers) are refused, and so is a GGUF export llama.cpp would compute otherwise */
#define TINY_SMOLLM3 "{\"model_type\": \"smollm3\", \"hidden_size\": 32, \"intermediate_size\": 40, " \
                     "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, " \
                     "\"head_dim\": 8, \"vocab_size\": 48, \"rms_norm_eps\": 1e-06, \"rope_theta\": 2000000.0, %s}"
TEST(torch_step_smollm3)
{
    step_model = "tiny_smollm3";
    step_case("all_linear", 2);
    step_model = "tiny";
    gradcheck_in("tiny_smollm3", "tiny_smollm3/all_linear/adapter");
    static const char *const extra[] = {"\"no_rope_layer_interval\": 4", "\"no_rope_layers\": [1, 1, 1, 1]",
                                        "\"no_rope_layer_interval\": 2", "\"no_rope_layers\": [1, 0, 1, 1]",
                                        "\"use_sliding_window\": true, \"sliding_window\": 4"};
    double plain = variant_loss(test_data("tiny_smollm3")), loss[3];
    for (int i = 0; i < 5; i++) {
        char d[21], cfg[1024];
        snprintf(cfg, sizeof cfg, TINY_SMOLLM3, extra[i]);
        variant_dir(d, "tiny_smollm3/model.safetensors", cfg);
        peft_model *m = NULL;
        if (i < 3) {
            loss[i] = variant_loss(d);
        } else {
            CHECK_MSG(peft_model_open(&m, d, NULL) == PEFT_EUNSUPPORTED, "%s: %s", extra[i], peft_last_error());
        }
        if (i == 2 && !peft_model_open(&m, d, NULL)) {
            char out[64];
            snprintf(out, sizeof out, "%s/x.gguf", d);
            CHECK(peft_save_merged_gguf(m, out, NULL) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "smollm3"));
            peft_model_close(&m);
        }
        model_dir_remove(d);
    }
    CHECK_MSG(loss[0] == plain && loss[1] != plain && loss[2] != plain && loss[2] != loss[1],
              "interval 4 %.9g, all RoPE %.9g, interval 2 %.9g, the list %.9g", loss[0], loss[1], loss[2], plain);
    char d[21], cfg[1024];
    snprintf(cfg, sizeof cfg, TINY_SMOLLM3, "\"no_rope_layer_interval\": 0");
    variant_dir(d, "tiny_smollm3/model.safetensors", cfg);
    peft_model *m = NULL;
    CHECK(peft_model_open(&m, d, NULL) == PEFT_EFORMAT && strstr(peft_last_error(), "no_rope_layer_interval"));
    model_dir_remove(d);
}

/* IBM Granite: Llama with embedding_multiplier, attention_multiplier (the scores' scale),
   residual_multiplier and logits_scaling, against PyTorch and by finite differences (LoRA on the
   embeddings and lm_head too: the multipliers scale their outputs); prompt tuning refused by name
   (PEFT's soft prompt would be multiplied too) */
TEST(torch_step_granite)
{
    step_model = "tiny_granite";
    step_case("all_linear", 2);
    step_model = "tiny";
    gradcheck_in("tiny_granite", "tiny_granite/all_linear/adapter");
    peft_model *m = NULL;
    CHECK_OK(peft_model_open(&m, test_data("tiny_granite"), NULL));
    if (!m)
        return;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_ALL_LINEAR | PEFT_TARGET_EMBED | PEFT_TARGET_LM_HEAD;
    o.rank = 2;
    o.init = PEFT_INIT_GAUSSIAN;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    for (size_t i = 0; i < n; i++) /* B = 0 would leave some gradients out of the check */
        p[i] += 0.004f * (float)((i * 7919) % 13) - 0.024f;
    char dir[] = "/tmp/peft-granite-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK_OK(peft_save_adapter(m, dir, NULL));
    peft_prompt_options po = PEFT_PROMPT_OPTIONS_INIT;
    peft_detach(m);
    CHECK(peft_attach_prompt(m, &po, NULL) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "Granite"));
    peft_model_close(&m);
    gradcheck_in("tiny_granite", dir);
    adapter_dir_remove(dir);
}

/* Llama with attention_bias and mlp_bias: a bias on every linear module */
TEST(torch_step_llama_bias)
{
    step_model = "tiny_llama_bias";
    step_case("all_linear", 2);
    step_model = "tiny";
    gradcheck_in("tiny_llama_bias", "tiny_llama_bias/all_linear/adapter");
}
/* IA3 on every module of the same model: the output scaling scales the bias with the output
   (PEFT's base_layer(x) * l) */
TEST(torch_step_ia3_bias)
{
    step_model = "tiny_llama_bias";
    step_case("ia3_all", 2);
    step_model = "tiny";
    gradcheck_in("tiny_llama_bias", "tiny_llama_bias/ia3_all/adapter");
}

static double batch_loss(peft_model *m)
{
    int32_t tok[2 * 10];
    peft_batch b = check_batch(tok);
    peft_eval_result e = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &e));
    return e.loss_sum / (double)e.tokens;
}

/* open `path`, attach `adapter` (NULL: none), the loss of batch_loss's batch; -1 when it fails */
static double loss_of(const char *path, const char *adapter)
{
    peft_model *m;
    int rc = peft_model_open(&m, path, NULL);
    CHECK_MSG(rc == PEFT_OK, "%s: %s", path, peft_last_error());
    if (rc)
        return -1;
    double loss = adapter && peft_load_adapter(m, adapter) ? -1 : batch_loss(m);
    peft_model_close(&m);
    return loss;
}

/* `model` (under tests/data) as dir/model with a small BPE vocabulary beside it (a GGUF file
   carries one; the export pads it to the model's 48 rows); src receives its path */
static int model_with_vocab(const char *dir, const char *model, char *src, size_t cap)
{
    char p[512], real[4096];
    snprintf(src, cap, "%s/model", dir);
    if (mkdir(src, 0755) != 0)
        return -1;
    static const char *const files[] = {"config.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", model, files[i]);
        if (!realpath(test_data(p), real))
            return -1;
        snprintf(p, sizeof p, "%s/%s", src, files[i]);
        if (symlink(real, p) != 0)
            return -1;
    }
    snprintf(p, sizeof p, "%s/tokenizer.json", src);
    FILE *f = fopen(p, "w");
    if (!f)
        return -1;
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"<unk>\": 0, \"a\": 1, \"b\": 2, \"ab\": 3}, "
          "\"merges\": [\"a b\"]}}\n", f);
    return fclose(f);
}

static void model_with_vocab_remove(const char *src)
{
    char p[512];
    snprintf(p, sizeof p, "%s/tokenizer.json", src);
    remove(p);
    model_dir_remove(src);
}

/* An adapter of `model` merged: in place (and undone), exported as a Hugging Face directory
   and as GGUF, and exported again from a GGUF base (whose bias tensors are rewritten, not
   copied): each computes base + adapter. */
static void check_merged_exports(const char *model, const char *adapter_path)
{
    char adapter[4096], dir[] = "/tmp/peft-merged-XXXXXX", hf[64], g1[64], g0[64], g2[64], src[64];
    snprintf(adapter, sizeof adapter, "%s", adapter_path);
    CHECK(mkdtemp(dir) != NULL);
    snprintf(hf, sizeof hf, "%s/merged", dir);
    snprintf(g1, sizeof g1, "%s/merged.gguf", dir);
    snprintf(g0, sizeof g0, "%s/base.gguf", dir);
    snprintf(g2, sizeof g2, "%s/merged2.gguf", dir);
    CHECK(model_with_vocab(dir, model, src, sizeof src) == 0);
    peft_model *m;
    CHECK_OK(peft_model_open(&m, src, NULL));
    if (!m)
        return;
    double base = batch_loss(m);
    CHECK_OK(peft_save_merged_gguf(m, g0, NULL)); /* the base alone */
    CHECK_OK(peft_load_adapter(m, adapter));
    double want = batch_loss(m);
    CHECK(fabs(want - base) > 1e-3); /* the adapter changes the model */
    CHECK_OK(peft_merge_adapter(m));
    CHECK_CLOSE(batch_loss(m), want, 1e-5);
    CHECK_OK(peft_unmerge_adapter(m));
    CHECK(batch_loss(m) == want);
    CHECK_OK(peft_save_merged(m, hf));
    CHECK_OK(peft_save_merged_gguf(m, g1, NULL));
    peft_model_close(&m);
    CHECK_CLOSE(loss_of(hf, NULL), want, 1e-5);
    CHECK_CLOSE(loss_of(g1, NULL), want, 1e-5);
    CHECK_CLOSE(loss_of(g0, NULL), base, 1e-5);
    CHECK_CLOSE(loss_of(g0, adapter), want, 1e-5);
    CHECK_OK(peft_model_open(&m, g0, NULL));
    if (m) {
        CHECK_OK(peft_load_adapter(m, adapter));
        CHECK_OK(peft_merge_adapter(m)); /* exported while merged: the merged copies */
        CHECK_OK(peft_save_merged_gguf(m, g2, NULL));
        peft_model_close(&m);
        CHECK_CLOSE(loss_of(g2, NULL), want, 1e-5);
    }
    remove(g0), remove(g1), remove(g2);
    model_dir_remove(hf);
    model_with_vocab_remove(src);
    remove(dir);
}

/* that IA3 adapter (the output scaling scales the bias) */
TEST(ia3_bias_merge_export) { check_merged_exports("tiny_llama_bias", test_data("tiny_llama_bias/ia3_all/adapter")); }

/* PEFT's bias option through the public API on Qwen2: exact counts, training moves the biases
   (not the model's), the PEFT file (config and keys), no GGUF LoRA, merged exports, a lora_only
   file without its biases (PEFT before 0.19.2), errors; options_init of an older version */
TEST(bias_training_lifecycle)
{
    peft_model *m;
    CHECK_OK(peft_model_open(&m, test_data("tiny_qwen2"), NULL));
    if (!m)
        return;
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_V;
    o.layers = "1";
    o.rank = 4;
    uint64_t n0, n1, n2;
    CHECK_OK(peft_count_lora(&n0, m, &o));
    o.bias = PEFT_BIAS_LORA_ONLY;
    CHECK_OK(peft_count_lora(&n2, m, &o));
    o.bias = PEFT_BIAS_ALL;
    CHECK_OK(peft_count_lora(&n1, m, &o));
    CHECK(n0 == 4u * (32 + 32) + 4u * (32 + 16)); /* q (32 x 32), v (16 x 32) of layer 1 */
    CHECK(n2 == n0 + 32 + 16);                    /* their biases */
    CHECK(n1 == n0 + 3u * (32 + 16 + 16));        /* every q, k, v bias of the 3 layers */
    double base = batch_loss(m);
    CHECK_OK(peft_attach_lora(m, &o, &n2));
    CHECK(n2 == n1);
    CHECK(batch_loss(m) == base); /* biases start as the base's, B = 0 */
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 3e-2));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_WEIGHT_DECAY, 0.5));
    int32_t tok[20];
    peft_batch b = check_batch(tok);
    for (int s = 0; s < 3; s++)
        CHECK_OK(peft_step(m, &b, NULL));
    double trained = batch_loss(m);
    CHECK(trained < base);
    float *p;
    size_t np;
    CHECK_OK(peft_param_buffer(&p, &np, m));
    const float *kb = m->layers[0].bias[PEFT_MOD_K]; /* layer 0's k bias: trained though not adapted */
    const float *tb = p + np - 3 * 64 + 32;          /* layer 0: q (32), then k */
    CHECK(tb[0] != kb[0] && peft__bias_of(m, 0, PEFT_MOD_K) == tb);
    char dir[] = "/tmp/peft-bias-XXXXXX", ad[64], cfg[96], st[96];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(ad, sizeof ad, "%s/adapter", dir);
    CHECK_OK(peft_save_adapter(m, ad, NULL));
    size_t len;
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", ad);
    char *text = read_whole(cfg, &len);
    CHECK(text && strstr(text, "\"bias\": \"all\""));
    free(text);
    snprintf(st, sizeof st, "%s/adapter_model.safetensors", ad);
    st_file *f = NULL;
    CHECK_OK(st_open(&f, st));
    if (f) {
        CHECK(st_find(f, "base_model.model.model.layers.0.self_attn.k_proj.bias") &&
              st_find(f, "base_model.model.model.layers.1.self_attn.q_proj.base_layer.bias") &&
              st_find(f, "base_model.model.model.layers.1.self_attn.k_proj.bias") &&
              !st_find(f, "base_model.model.model.layers.1.self_attn.q_proj.bias") && f->n_tensors == 4 + 9);
        st_close(f);
    }
    char gg[96];
    snprintf(gg, sizeof gg, "%s/adapter.gguf", dir);
    CHECK(peft_save_adapter_gguf(m, gg, NULL) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "bias"));
    CHECK(access(gg, F_OK) != 0);
    peft_model_close(&m);
    CHECK_CLOSE(loss_of(test_data("tiny_qwen2"), ad), trained, 1e-6);
    check_merged_exports("tiny_qwen2", ad);
    /* lora_only without its bias tensors: the base biases, as PEFT loads that file */
    const char *lo_dir = test_data("tiny_qwen2/bias_lora_only_kv/adapter");
    char lo_st[4200], out_st[96], out_cfg[96], cmd[8600];
    snprintf(lo_st, sizeof lo_st, "%s/adapter_model.safetensors", lo_dir);
    snprintf(out_st, sizeof out_st, "%s/adapter_model.safetensors", ad);
    snprintf(out_cfg, sizeof out_cfg, "%s/adapter_config.json", ad);
    snprintf(cmd, sizeof cmd, "cp '%s/adapter_config.json' '%s'", lo_dir, out_cfg);
    CHECK(system(cmd) == 0);
    CHECK_OK(st_open(&f, lo_st));
    if (f) {
        st_out_tensor ts[8];
        float *data[8];
        size_t k = 0;
        for (size_t i = 0; i < f->n_tensors && k < 8; i++) {
            const st_tensor *t = &f->tensors[i];
            if (strstr(t->name, "bias"))
                continue;
            data[k] = malloc(t->n_elems * sizeof(float));
            st_read_f32(f, t, data[k], t->n_elems);
            ts[k] = (st_out_tensor){.name = t->name, .n_dims = t->n_dims, .data = data[k]};
            for (int d = 0; d < t->n_dims; d++)
                ts[k].shape[d] = t->shape[d];
            k++;
        }
        CHECK(k == 4); /* lora_A, lora_B of k and v */
        CHECK_OK(st_write(out_st, ts, k, NULL, NULL, 0));
        for (size_t i = 0; i < k; i++)
            free(data[i]);
        st_close(f);
    }
    CHECK_OK(peft_model_open(&m, test_data("tiny_qwen2"), NULL));
    if (m) {
        CHECK_OK(peft_load_adapter(m, ad));
        CHECK_OK(peft_param_buffer(&p, &np, m));
        CHECK(np > 32 && memcmp(p + np - 32, m->layers[0].bias[PEFT_MOD_K], 16 * sizeof(float)) == 0 &&
              memcmp(p + np - 16, m->layers[0].bias[PEFT_MOD_V], 16 * sizeof(float)) == 0);
        peft_detach(m);
        /* errors */
        o.bias = 5;
        CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EINVAL);
        o.bias = PEFT_BIAS_ALL;
        o.variant = PEFT_VARIANT_LOHA;
        CHECK(peft_attach_lora(m, &o, NULL) == PEFT_EUNSUPPORTED);
        peft_model_close(&m);
    }
    remove(out_st), remove(out_cfg), remove(ad), remove(dir);
    /* a program built against version 6 of the options: the init writes no byte past them */
    unsigned char buf[sizeof(peft_lora_options) + 8];
    memset(buf, 0xAB, sizeof buf);
    CHECK_OK(peft_lora_options_init((peft_lora_options *)(void *)buf, 6));
    int intact = 1;
    for (size_t i = offsetof(peft_lora_options, bias); i < sizeof buf; i++)
        intact &= buf[i] == 0xAB;
    CHECK(intact && ((peft_lora_options *)(void *)buf)->version == 6);
}

/* PEFT's bias option on Qwen2 (q/k/v biases): "all" trains every one with LoRA on q, v of one
   layer; "lora_only" those of the adapted k, v; the files' biases differ from the base's */
TEST(torch_step_bias_all)
{
    step_model = "tiny_qwen2";
    step_case("bias_all_qv", 2);
    step_model = "tiny";
    gradcheck_in("tiny_qwen2", "tiny_qwen2/bias_all_qv/adapter");
}
TEST(torch_step_bias_lora_only)
{
    step_model = "tiny_qwen2";
    step_case("bias_lora_only_kv", 1);
    step_model = "tiny";
    gradcheck_in("tiny_qwen2", "tiny_qwen2/bias_lora_only_kv/adapter");
}

TEST(model_gradcheck_qwen2) { gradcheck_in("tiny_qwen2", "tiny_qwen2/all_linear/adapter"); }
TEST(model_gradcheck_qwen3) { gradcheck_in("tiny_qwen3", "tiny_qwen3/all_linear/adapter"); }

/* The batch of a golden case of model dir (tokens and labels of its expected.json, 2 x 12, into
   tok and lab), and the base model m's loss on it checked against dir's base_loss.json */
static int base_loss_batch(peft_model *m, const char *dir, const char *case_name, int32_t tok[24], int32_t lab[24])
{
    char rel[128];
    snprintf(rel, sizeof rel, "%s/%s/expected.json", dir, case_name);
    json_doc *e = load_json(test_data(rel));
    snprintf(rel, sizeof rel, "%s/base_loss.json", dir);
    json_doc *bl = load_json(test_data(rel));
    CHECK(e && bl && m);
    int ok = e && bl && m;
    if (ok) {
        const json_value *tv = json_get(json_root(e), "tokens"), *lv = json_get(json_root(e), "labels");
        for (int i = 0; i < 24; i++) {
            tok[i] = (int32_t)tv->items[i].number;
            lab[i] = (int32_t)lv->items[i].number;
        }
        peft_batch b = {PEFT_BATCH_VERSION, tok, lab, 2, 12, NULL};
        peft_eval_result r = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(m, &b, &r));
        CHECK_CLOSE(r.loss_sum / (double)r.tokens, jnum(bl, "loss"), 1e-5);
    }
    json_free(e);
    json_free(bl);
    return ok ? 0 : -1;
}

/* The base loss, a LoRA step and its gradients against PyTorch, finite differences, and the
   parameter count of a tiny Gemma (tests/golden/make_gemma.py): hidden 32, intermediate 40, 3
   layers, 4 heads of 12 (2 KV), vocabulary 48; 4 norms a layer, q/k norms when qk_norm */
static void gemma_case(const char *dir, const char *arch, int qk_norm)
{
    char rel[128];
    peft_model *m = NULL;
    int32_t tok[24], lab[24];
    CHECK_OK(peft_model_open(&m, test_data(dir), NULL));
    if (base_loss_batch(m, dir, "all_linear", tok, lab) == 0) {
        peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
        CHECK_OK(peft_model_get_info(m, &info));
        uint64_t D = 32, F = 40, hd = 12, L = 3, V = 48;
        uint64_t per = 4 * D + (qk_norm ? 2 * hd : 0) + D * (2 * 4 * hd + 2 * 2 * hd) + 3 * D * F; /* q, o; k, v */
        CHECK(!strcmp(info.architecture, arch) && info.n_params == V * D + D + L * per);
    }
    peft_model_close(&m);
    step_model = dir;
    step_case("all_linear", 2);
    step_model = "tiny";
    snprintf(rel, sizeof rel, "%s/all_linear/adapter", dir);
    gradcheck_in(dir, rel);
}

/* Gemma 3's text model: scaled embeddings, zero-centred norms, four norms a layer, GeGLU, q/k
   norms, query_pre_attn_scalar, sliding layers with their own RoPE base and the global one's
   linear scaling */
TEST(torch_step_gemma3) { gemma_case("tiny_gemma3", "gemma3", 1); }
/* Gemma 2: no q/k norms, every other layer global, the scores and the logits soft-capped (caps
   the tiny model's values reach) */
TEST(torch_step_gemma2) { gemma_case("tiny_gemma2", "gemma2", 0); }

/* Gemma's norms tuned against PyTorch: LN tuning of all four a layer and the final one with
   weight decay (on the zero-centred w, as PyTorch decays the parameter), and LoRA on the last
   layer with its norms after attention and after the MLP trained alongside (modules_to_save):
   gradients, AdamW, finite differences */
static void gemma_norms_case(const char *dir)
{
    char rel[96];
    step_model = dir;
    step_case("norms_all", 2);
    step_case("lora_post_norms", 1);
    step_model = "tiny";
    snprintf(rel, sizeof rel, "%s/norms_all/adapter", dir);
    gradcheck_in(dir, rel);
    snprintf(rel, sizeof rel, "%s/lora_post_norms/adapter", dir);
    gradcheck_in(dir, rel);
}
TEST(torch_step_gemma3_norms)
{
    gemma_norms_case("tiny_gemma3");
    step_model = "tiny_gemma3"; /* LN tuning of the zero-centred q/k norms */
    step_case("qk_norms", 1);
    step_model = "tiny";
    gradcheck_in("tiny_gemma3", "tiny_gemma3/qk_norms/adapter");
}
TEST(torch_step_gemma2_norms) { gemma_norms_case("tiny_gemma2"); }

/* whether tensor k1 of safetensors file f1 and k2 of f2 hold the same floats */
static int same_floats(const char *f1, const char *k1, const char *f2, const char *k2)
{
    st_file *a = NULL, *b = NULL;
    int same = 0;
    if (!st_open(&a, f1) && !st_open(&b, f2)) {
        const st_tensor *ta = st_find(a, k1), *tb = st_find(b, k2);
        if (ta && tb && ta->n_elems == tb->n_elems) {
            float *x = malloc(ta->n_elems * sizeof *x), *y = malloc(ta->n_elems * sizeof *y);
            same = x && y && !st_read_f32(a, ta, x, ta->n_elems) && !st_read_f32(b, tb, y, tb->n_elems) &&
                   !memcmp(x, y, ta->n_elems * sizeof *x);
            free(x);
            free(y);
        }
    }
    st_close(a);
    st_close(b);
    return same;
}

/* Gemma's tuned norms through the lifecycle: counts, the LN tuning adapter saved as loaded (w,
   zero-centred, as the files hold it) and loaded again to the same loss, the merged Hugging Face
   directory holding the trained w and the merged GGUF 1 + w (as llama.cpp's converter stores
   Gemma's norms), both giving the adapter's loss; the LoRA adapter with norms merged in place and
   exported from the Hugging Face and the GGUF base; norms a model lacks refused */
TEST(gemma_norms_lifecycle)
{
    /* tiny_gemma2 with llama.cpp's query scale (head_dim), so that it exports to GGUF */
    char g2[21], cfg[2048], *q;
    read_small(test_data("tiny_gemma2/config.json"), cfg, sizeof cfg);
    CHECK((q = strstr(cfg, "\"query_pre_attn_scalar\": 16")) != NULL);
    if (q)
        memcpy(q, "\"query_pre_attn_scalar\": 12", 27);
    variant_dir(g2, "tiny_gemma2/model.safetensors", cfg);
    char dir[] = "/tmp/peft-gnorm-XXXXXX", src[64], sv[64], hf[64], gg[64], a_st[4096], b_st[96];
    CHECK(mkdtemp(dir) != NULL);
    CHECK(model_with_vocab(dir, g2, src, sizeof src) == 0); /* a vocabulary for the GGUF export */
    peft_model *m;
    CHECK_OK(peft_model_open(&m, src, NULL));
    if (!m)
        return;
    uint64_t n = 0;
    peft_norms_options no = PEFT_NORMS_OPTIONS_INIT;
    CHECK_OK(peft_count_norms(&n, m, &no));
    CHECK(n == (3 * 4 + 1) * 32);
    no.norms = PEFT_NORM_PRE_FEEDFORWARD | PEFT_NORM_POST_FEEDFORWARD;
    no.layers = "2";
    CHECK_OK(peft_count_norms(&n, m, &no));
    CHECK(n == 2 * 32);
    snprintf(sv, sizeof sv, "%s/adapter", dir);
    snprintf(hf, sizeof hf, "%s/merged", dir);
    snprintf(gg, sizeof gg, "%s/merged.gguf", dir);
    const char *ad = test_data("tiny_gemma2/norms_all/adapter");
    snprintf(a_st, sizeof a_st, "%s/adapter_model.safetensors", ad);
    double base = batch_loss(m);
    CHECK_OK(peft_load_adapter(m, ad));
    double want = batch_loss(m);
    CHECK(fabs(want - base) > 1e-3);
    CHECK(peft_merge_adapter(m) == PEFT_EUNSUPPORTED);
    CHECK_OK(peft_save_adapter(m, sv, NULL));
    CHECK_OK(peft_save_merged(m, hf));
    CHECK_OK(peft_save_merged_gguf(m, gg, NULL));
    peft_model_close(&m);
    snprintf(b_st, sizeof b_st, "%s/adapter_model.safetensors", sv);
    const char *key = "base_model.model.model.layers.1.pre_feedforward_layernorm.ln_tuning_layers.weight";
    CHECK(same_floats(a_st, key, b_st, key));
    snprintf(b_st, sizeof b_st, "%s/model.safetensors", hf);
    CHECK(same_floats(a_st, key, b_st, "model.layers.1.pre_feedforward_layernorm.weight"));
    CHECK(same_floats(a_st, "base_model.model.model.norm.ln_tuning_layers.weight", b_st, "model.norm.weight"));
    CHECK(loss_of(src, sv) == want);
    CHECK_CLOSE(loss_of(hf, NULL), want, 1e-5);
    CHECK_CLOSE(loss_of(gg, NULL), want, 1e-5);
    remove(gg);
    model_dir_remove(hf);
    adapter_dir_remove(sv);
    model_with_vocab_remove(src);
    remove(dir);
    check_merged_exports(g2, test_data("tiny_gemma2/lora_post_norms/adapter"));
    model_dir_remove(g2);
    /* Llama has no pre/post_feedforward_layernorm: a set of only those is refused, all is its three */
    CHECK_OK(peft_model_open(&m, test_data("tiny"), NULL));
    if (!m)
        return;
    no.layers = NULL;
    CHECK(peft_count_norms(&n, m, &no) == PEFT_EINVAL && strstr(peft_last_error(), "none of this model's"));
    no.norms = PEFT_NORM_ALL;
    CHECK_OK(peft_count_norms(&n, m, &no));
    CHECK(n == (3 * 2 + 1) * 32);
    peft_model_close(&m);
}

/* The q/k norms (Qwen3) tuned through the API: counts, training, the LN tuning adapter under
   PEFT's names (self_attn.q_norm, head_dim long) loaded again to the same loss, modules_to_save
   naming them as PEFT users write them ("q_norm"), and refused on a model without them */
TEST(qk_norms_lifecycle)
{
    peft_model *m;
    CHECK_OK(peft_model_open(&m, test_data("tiny_qwen3"), NULL));
    if (!m)
        return;
    uint64_t n;
    peft_norms_options no = PEFT_NORMS_OPTIONS_INIT;
    CHECK_OK(peft_count_norms(&n, m, &no)); /* every norm: input, post-attention, q, k; the final */
    CHECK(n == 3 * (32 + 32 + 12 + 12) + 32);
    no.norms = PEFT_NORM_Q | PEFT_NORM_K;
    no.layers = "1";
    CHECK_OK(peft_attach_norms(m, &no, &n));
    CHECK(n == 2 * 12);
    double base = batch_loss(m);
    int32_t tok[2 * 10];
    peft_batch b = check_batch(tok);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 5e-2));
    for (int i = 0; i < 5; i++) {
        peft_step_result r = PEFT_STEP_RESULT_INIT;
        CHECK_OK(peft_step(m, &b, &r));
    }
    double tuned = batch_loss(m);
    CHECK(tuned < base - 1e-3);
    char dir[] = "/tmp/peft-qknorm-XXXXXX", sv[64], cfg_path[96], st_path[96];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(sv, sizeof sv, "%s/ln", dir);
    CHECK_OK(peft_save_adapter(m, sv, NULL));
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", sv);
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", sv);
    char text[2048];
    read_small(cfg_path, text, sizeof text);
    CHECK(strstr(text, "\"model.layers.1.self_attn.q_norm\"") && strstr(text, "\"model.layers.1.self_attn.k_norm\""));
    st_file *st = NULL;
    CHECK_OK(st_open(&st, st_path));
    const st_tensor *t = st ? st_find(st, "base_model.model.model.layers.1.self_attn.q_norm.ln_tuning_layers.weight") : NULL;
    CHECK(t && t->n_dims == 1 && t->shape[0] == 12);
    st_close(st);
    CHECK(loss_of(test_data("tiny_qwen3"), sv) == tuned);
    /* beside LoRA, in modules_to_save, by the names PEFT users give them */
    peft_detach(m);
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    lo.norms = PEFT_NORM_Q | PEFT_NORM_K;
    CHECK_OK(peft_attach_lora(m, &lo, &n));
    CHECK(n == 3 * (8 * (32 + 48) + 8 * (32 + 24)) + 3 * 2 * 12);
    for (int i = 0; i < 3; i++) {
        peft_step_result r = PEFT_STEP_RESULT_INIT;
        CHECK_OK(peft_step(m, &b, &r));
    }
    tuned = batch_loss(m);
    snprintf(sv, sizeof sv, "%s/lora", dir);
    CHECK_OK(peft_save_adapter(m, sv, NULL));
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", sv);
    read_small(cfg_path, text, sizeof text);
    char *at = strstr(text, "\"self_attn.q_norm\",\n    \"self_attn.k_norm\"");
    CHECK(at != NULL);
    FILE *f;
    if (at && (f = fopen(cfg_path, "wb"))) {
        fprintf(f, "%.*s\"k_norm\",\n    \"q_norm\"%s", (int)(at - text), text,
                at + strlen("\"self_attn.q_norm\",\n    \"self_attn.k_norm\""));
        fclose(f);
    }
    CHECK(loss_of(test_data("tiny_qwen3"), sv) == tuned);
    peft_model_close(&m);
    adapter_dir_remove(sv);
    snprintf(sv, sizeof sv, "%s/ln", dir);
    adapter_dir_remove(sv);
    remove(dir);
    /* Llama has no q/k norms */
    CHECK_OK(peft_model_open(&m, test_data("tiny"), NULL));
    if (!m)
        return;
    no.norms = PEFT_NORM_Q;
    no.layers = NULL;
    CHECK(peft_count_norms(&n, m, &no) == PEFT_EINVAL && strstr(peft_last_error(), "q/k norms"));
    peft_model_close(&m);
}

/* the safetensors file src copied to dst with the prefix `from` of every name (each has it)
   replaced by `to` (at most 64K floats) */
static void renamed_copy(const char *src, const char *dst, const char *from, const char *to)
{
    st_file *f = NULL;
    CHECK_OK(st_open(&f, src));
    if (!f)
        return;
    st_out_tensor *ts = calloc(f->n_tensors, sizeof *ts);
    char *names = calloc(f->n_tensors, 192);
    float *data = malloc(sizeof(float) << 16);
    size_t used = 0;
    for (size_t i = 0; ts && names && data && i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        CHECK(!strncmp(t->name, from, strlen(from)) && used + t->n_elems <= 1u << 16);
        snprintf(names + i * 192, 192, "%s%s", to, t->name + strlen(from));
        ts[i] = (st_out_tensor){names + i * 192, t->n_dims, {t->shape[0], t->n_dims > 1 ? t->shape[1] : 0}, data + used};
        CHECK_OK(st_read_f32(f, t, data + used, t->n_elems));
        used += t->n_elems;
    }
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    CHECK_OK(st_write(dst, ts, f->n_tensors, mk, mv, 1));
    free(ts), free(names), free(data);
    st_close(f);
}

/* tiny_gemma3's tensors as a multimodal checkpoint in transformers' newer layout
   ("model.language_model.X"), config from tiny_gemma3_mm, in dir */
static void mm_new_layout(const char *dir)
{
    char path[4200], real[4096];
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    renamed_copy(test_data("tiny_gemma3/model.safetensors"), path, "model.", "model.language_model.");
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(realpath(test_data("tiny_gemma3_mm/config.json"), real) && symlink(real, path) == 0);
}

/* the gradients of one batch with `adapter` on model `path` (n floats in *g, malloc'ed) */
static float *grads_of(const char *path, const char *adapter, size_t *n)
{
    peft_model *m;
    float *g = NULL, *copy = NULL;
    CHECK_OK(peft_model_open(&m, path, NULL));
    if (!m)
        return NULL;
    int32_t tok[2 * 10];
    peft_batch b = check_batch(tok);
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_load_adapter(m, adapter));
    CHECK_OK(peft_forward_backward(m, &b, &r));
    CHECK_OK(peft_grad_buffer(&g, n, m));
    if (g && (copy = malloc(*n * sizeof *copy)))
        memcpy(copy, g, *n * sizeof *copy);
    peft_model_close(&m);
    return copy;
}

/* Gemma 3's multimodal checkpoints (model_type gemma3, the text model's config in text_config
   with Gemma3TextConfig's defaults, its tensors under "language_model.model." or, saved by
   transformers 4.52 on, "model.language_model."): the text model computes what the text-only
   checkpoint does (losses, gradients); adapters are written as PEFT names the modules of
   Gemma3ForConditionalGeneration (model.language_model.*, target_modules an expression that
   leaves the vision tower out) and read in both layouts; what is not supported is refused */
TEST(gemma3_multimodal)
{
    const char *mm = test_data("tiny_gemma3_mm"), *text = test_data("tiny_gemma3");
    const char *ad = test_data("tiny_gemma3/all_linear/adapter");
    char dir[] = "/tmp/peft-mm-XXXXXX", newl[64], sv[64], legacy[64], path[4200];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(newl, sizeof newl, "%s/new", dir);
    snprintf(sv, sizeof sv, "%s/adapter", dir);
    snprintf(legacy, sizeof legacy, "%s/legacy", dir);
    mm_new_layout(newl);
    double want = loss_of(text, ad);
    CHECK(loss_of(mm, NULL) == loss_of(text, NULL));
    CHECK(loss_of(newl, NULL) == loss_of(text, NULL));
    CHECK(loss_of(mm, ad) == want); /* a text model's adapter keys are read too */
    size_t n1 = 0, n2 = 0;
    float *g1 = grads_of(text, ad, &n1), *g2 = grads_of(mm, ad, &n2);
    CHECK(g1 && g2 && n1 == n2 && !memcmp(g1, g2, n1 * sizeof *g1));
    free(g1), free(g2);
    /* saved under PEFT's names for Gemma3ForConditionalGeneration */
    peft_model *m;
    CHECK_OK(peft_model_open(&m, mm, NULL));
    if (!m)
        return;
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    CHECK_OK(peft_model_get_info(m, &in));
    CHECK(!strcmp(in.architecture, "gemma3") && in.n_layers == 3 && in.vocab_size == 48);
    CHECK_OK(peft_load_adapter(m, ad));
    CHECK_OK(peft_save_adapter(m, sv, NULL));
    /* merged: the text model in the checkpoint's layout, the vision tower and projector carried over */
    char merged[64];
    snprintf(merged, sizeof merged, "%s/merged", dir);
    CHECK_OK(peft_save_merged(m, merged));
    CHECK_CLOSE(loss_of(merged, NULL), want, 1e-5);
    snprintf(path, sizeof path, "%s/model.safetensors", merged);
    CHECK(same_floats(test_data("tiny_gemma3_mm/model.safetensors"), "vision_tower.vision_model.embeddings.patch_embedding.weight",
                      path, "vision_tower.vision_model.embeddings.patch_embedding.weight"));
    CHECK(same_floats(test_data("tiny_gemma3_mm/model.safetensors"), "multi_modal_projector.mm_soft_emb_norm.weight",
                      path, "multi_modal_projector.mm_soft_emb_norm.weight"));
    st_file *mf = NULL;
    CHECK_OK(st_open(&mf, path));
    CHECK(mf && mf->n_tensors == 2 + 3 * 13 + 4 && st_find(mf, "language_model.model.layers.0.self_attn.q_norm.weight"));
    st_close(mf);
    model_dir_remove(merged);
    peft_detach(m);
    peft_vera_options vo = PEFT_VERA_OPTIONS_INIT;
    CHECK(peft_attach_vera(m, &vo, NULL) == PEFT_EUNSUPPORTED);
    peft_prompt_options po = PEFT_PROMPT_OPTIONS_INIT;
    CHECK(peft_attach_prompt(m, &po, NULL) == PEFT_EUNSUPPORTED);
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT; /* q, v on layer 1, the final norm beside */
    lo.layers = "1";
    lo.norms = PEFT_NORM_FINAL;
    uint64_t n;
    CHECK_OK(peft_attach_lora(m, &lo, &n));
    CHECK(n == 8 * (32 + 48) + 8 * (32 + 24) + 32);
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%s/qv", dir);
    CHECK_OK(peft_save_adapter(m, tmp, NULL));
    /* combined with one on other modules (q, v of layer 1 with all of layer 2): the union is an
       expression of the same names */
    peft_detach(m);
    const char *const both[2] = {"qv", "all"};
    const double wts[2] = {1.0, 1.0};
    char pdir[64];
    snprintf(pdir, sizeof pdir, "%s/part", dir);
    for (int i = 0; i < 2; i++) {
        peft_lora_options part = PEFT_LORA_OPTIONS_INIT;
        part.targets = i ? PEFT_TARGET_ALL_LINEAR : PEFT_TARGET_Q | PEFT_TARGET_V;
        part.layers = i ? "2" : "1";
        CHECK_OK(peft_attach_lora(m, &part, NULL));
        CHECK_OK(peft_save_adapter(m, pdir, NULL));
        peft_detach(m);
        CHECK_OK(peft_adapter_load(m, pdir, both[i]));
        adapter_dir_remove(pdir);
    }
    CHECK_OK(peft_adapter_combine(m, both, wts, 2, "sum", PEFT_COMBINE_CAT, 0));
    CHECK_OK(peft_adapter_set(m, "sum"));
    CHECK_OK(peft_model_get_info(m, &in));
    CHECK(in.n_trainable == 16 * (2 * (32 + 48) + 2 * (32 + 24) + 3 * (32 + 40)) + 16 * (32 + 48 + 32 + 24));
    peft_model_close(&m);
    snprintf(path, sizeof path, "%s/adapter_config.json", tmp);
    char text_cfg[4096];
    read_small(path, text_cfg, sizeof text_cfg);
    CHECK(strstr(text_cfg, "\"target_modules\": \"model\\\\.language_model\\\\.layers\\\\.(1)\\\\.(self_attn\\\\."
                           "(q_proj|v_proj))\""));
    CHECK(strstr(text_cfg, "\"model.language_model.norm\""));
    adapter_dir_remove(tmp);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", sv);
    st_file *st = NULL;
    CHECK_OK(st_open(&st, path));
    if (!st)
        return;
    CHECK(st_find(st, "base_model.model.model.language_model.layers.2.mlp.down_proj.lora_B.weight") != NULL);
    CHECK(st_find(st, "base_model.model.model.layers.2.mlp.down_proj.lora_B.weight") == NULL);
    CHECK(loss_of(mm, sv) == want);
    CHECK(loss_of(newl, sv) == want);
    /* the keys of transformers before 4.52 (base_model.model.language_model.model.*) */
    st_close(st);
    mkdir(legacy, 0700);
    char lpath[4200];
    snprintf(lpath, sizeof lpath, "%s/adapter_model.safetensors", legacy);
    renamed_copy(path, lpath, "base_model.model.model.language_model.", "base_model.model.language_model.model.");
    snprintf(path, sizeof path, "%s/adapter_config.json", sv);
    snprintf(lpath, sizeof lpath, "%s/adapter_config.json", legacy);
    CHECK(link(path, lpath) == 0);
    CHECK(loss_of(mm, legacy) == want);
    adapter_dir_remove(legacy);
    adapter_dir_remove(sv);
    model_dir_remove(newl);
    remove(dir);
    /* the merged text model as llama.cpp's GGUF (with a layer pattern and query scalar llama.cpp
       fixes for Gemma 3), from the multimodal checkpoint */
    char var[21], src[64], gg[96];
    variant_dir(var, "tiny_gemma3_mm/model.safetensors",
                "{\"model_type\": \"gemma3\", \"text_config\": {\"model_type\": \"gemma3_text\", \"hidden_size\": 32, "
                "\"intermediate_size\": 40, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
                "\"num_key_value_heads\": 2, \"head_dim\": 12, \"vocab_size\": 48, \"query_pre_attn_scalar\": 12, "
                "\"sliding_window\": 5, \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0}}}");
    char vdir[] = "/tmp/peft-mmg-XXXXXX";
    CHECK(mkdtemp(vdir) != NULL);
    CHECK(model_with_vocab(vdir, var, src, sizeof src) == 0);
    snprintf(gg, sizeof gg, "%s/merged.gguf", vdir);
    CHECK_OK(peft_model_open(&m, src, NULL));
    if (m) {
        CHECK_OK(peft_load_adapter(m, ad));
        double with = batch_loss(m);
        CHECK_OK(peft_save_merged_gguf(m, gg, NULL));
        peft_model_close(&m);
        CHECK_CLOSE(loss_of(gg, NULL), with, 1e-5);
    }
    remove(gg);
    model_with_vocab_remove(src);
    remove(vdir);
    model_dir_remove(var);
    /* Gemma3TextConfig's defaults where text_config leaves them out (gemma-3-4b-it's holds six keys) */
    static const char cfg4b[] =
        "{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"model_type\": \"gemma3\", \"eos_token_id\": [1, 106],"
        " \"text_config\": {\"hidden_size\": 2560, \"intermediate_size\": 10240, \"model_type\": \"gemma3_text\","
        " \"num_hidden_layers\": 34, \"rope_scaling\": {\"factor\": 8.0, \"rope_type\": \"linear\"},"
        " \"sliding_window\": 1024}, \"vision_config\": {\"model_type\": \"siglip_vision_model\"}}";
    peft_config c;
    CHECK_OK(peft__config_parse(&c, cfg4b, sizeof cfg4b - 1, "4b"));
    CHECK(c.multimodal && c.gemma == 3 && c.qk_norm && c.tied && c.dim == 2560 && c.ffn_dim == 10240 &&
          c.n_layers == 34 && c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 256 && c.vocab == 262208);
    CHECK(c.sliding_window == 1024 && c.window_pattern == 6 && c.rope_scaling == 1 && c.rope_factor == 8.0f &&
          c.rope_theta == 1000000.0f && c.rope_local_theta == 10000.0f && c.q_mul == 1.0f && c.eos_id == 1 &&
          c.bos_id == 2 && c.eps == 1e-6f);
    static const char bad[] = "{\"model_type\": \"gemma3\", \"text_config\": {\"model_type\": \"llama\"}}";
    CHECK(peft__config_parse(&c, bad, sizeof bad - 1, "bad") == PEFT_EFORMAT);
}

/* merged in place and exported as a Hugging Face directory (the file's zero-centred norms under
   Gemma's names); what is not supported is refused without a file: GGUF export of a Gemma 3
   llama.cpp cannot express (this one's layer pattern, query scalar), a negative soft-cap, another
   layer pattern, a multimodal config beside a text model's tensors */
TEST(gemma3_lifecycle)
{
    const char *ad = test_data("tiny_gemma3/all_linear/adapter");
    char dir[] = "/tmp/peft-gemma-XXXXXX", hf[64], gg[64], ga[64];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(hf, sizeof hf, "%s/merged", dir);
    snprintf(gg, sizeof gg, "%s/merged.gguf", dir);
    snprintf(ga, sizeof ga, "%s/adapter.gguf", dir);
    peft_model *m;
    CHECK_OK(peft_model_open(&m, test_data("tiny_gemma3"), NULL));
    if (!m)
        return;
    double base = batch_loss(m);
    CHECK_OK(peft_load_adapter(m, ad));
    double want = batch_loss(m);
    CHECK(fabs(want - base) > 1e-3);
    CHECK_OK(peft_merge_adapter(m));
    CHECK_CLOSE(batch_loss(m), want, 1e-5);
    CHECK_OK(peft_unmerge_adapter(m));
    CHECK(batch_loss(m) == want);
    CHECK_OK(peft_save_merged(m, hf));
    CHECK(peft_save_merged_gguf(m, gg, NULL) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "llama.cpp's gemma3"));
    CHECK(access(gg, F_OK) != 0);
    CHECK_OK(peft_save_adapter_gguf(m, ga, NULL)); /* llama.cpp's gemma3 LoRA: unpermuted q/k */
    peft_model_close(&m);
    CHECK_CLOSE(loss_of(hf, NULL), want, 1e-5);
    char st[96];
    snprintf(st, sizeof st, "%s/model.safetensors", hf);
    st_file *f = NULL;
    CHECK_OK(st_open(&f, st));
    if (f) {
        CHECK(st_find(f, "model.layers.2.pre_feedforward_layernorm.weight") &&
              st_find(f, "model.layers.2.post_feedforward_layernorm.weight") && !st_find(f, "lm_head.weight"));
        st_close(f);
    }
    remove(gg), remove(ga);
    model_dir_remove(hf);
    remove(dir);
    /* config errors */
    static const char *const bad[][2] = {
        {"\"final_logit_softcapping\": -3.0", "final_logit_softcapping"},
        {"\"layer_types\": [\"full_attention\", \"sliding_attention\", \"sliding_attention\"]", "layer_types"},
        {"\"hidden_activation\": \"gelu\"", "hidden_activation"},
        {"\"use_bidirectional_attention\": true", "bidirectional"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cfg[1024], d[21];
        snprintf(cfg, sizeof cfg, "{\"model_type\": \"gemma3_text\", \"hidden_size\": 32, \"intermediate_size\": 40, "
                 "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 12, "
                 "\"vocab_size\": 48, %s}", bad[i][0]);
        variant_dir(d, "tiny_gemma3/model.safetensors", cfg);
        int rc = peft_model_open(&m, d, NULL);
        CHECK_MSG((rc == PEFT_EUNSUPPORTED || rc == PEFT_EFORMAT) && strstr(peft_last_error(), bad[i][1]), "%s: %s",
                  bad[i][0], peft_last_error());
        model_dir_remove(d);
    }
    char d[21]; /* a multimodal config beside a text model's tensors */
    variant_dir(d, "tiny_gemma3/model.safetensors", "{\"model_type\": \"gemma3\", \"text_config\": {}}");
    CHECK(peft_model_open(&m, d, NULL) == PEFT_ENOTFOUND && strstr(peft_last_error(), "multimodal checkpoint"));
    model_dir_remove(d);
}

/* Phi-3, shaped as Phi-4-mini is (tests/golden/make_phi3.py): q/k/v as one qkv_proj and gate/up
   as one gate_up_proj, each adapted as a single module as PEFT does (LoRA, DoRA, IA3); RoPE on
   3/4 of each head with LongRoPE's short factors and attention factor; a sliding window. Against
   PyTorch and by finite differences; the target bits fold onto the fused modules and are saved
   under their names; the merged model (qkv_proj and gate_up_proj rewritten) gives the adapter's
   loss, as a directory and as GGUF (llama.cpp's phi3: attn_qkv, ffn_up, the LongRoPE factor
   tensors), also merged into the exported GGUF base. (DoRA's gradient is PEFT's, with the weight norm detached:
   PyTorch's, not finite differences.) */
#define TINY_PHI3 "{\"model_type\": \"phi3\", \"hidden_size\": 32, \"intermediate_size\": 40, \"num_hidden_layers\": " \
                  "3, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 48, \"rms_norm_eps\": " \
                  "1e-05, \"rope_theta\": 10000.0, \"sliding_window\": 5, %s}"
#define PHI3_AF ", \"attention_factor\": 1.1832159566199232" /* the tiny model's, sqrt(1 + ln 4 / ln 32) */
#define PHI3_ROPE(orig, max, lng, extra) "\"partial_rotary_factor\": 0.75, \"max_position_embeddings\": " max ", " \
                  "\"original_max_position_embeddings\": " orig ", \"rope_scaling\": {\"type\": \"longrope\", "  \
                  "\"short_factor\": [1.0, 1.5, 2.5], \"long_factor\": " lng extra "}"
TEST(torch_step_phi3)
{
    step_model = "tiny_phi3";
    step_case("all_linear", 2);
    step_case("dora", 1);
    step_case("ia3", 2);
    step_model = "tiny";
    gradcheck_in("tiny_phi3", "tiny_phi3/all_linear/adapter");
    gradcheck_in("tiny_phi3", "tiny_phi3/ia3/adapter");
    check_merged_exports("tiny_phi3", test_data("tiny_phi3/all_linear/adapter"));
    peft_model *m = NULL;
    int32_t tok[24], lab[24];
    CHECK_OK(peft_model_open(&m, test_data("tiny_phi3"), NULL));
    if (base_loss_batch(m, "tiny_phi3", "ia3", tok, lab)) {
        peft_model_close(&m);
        return;
    }
    peft_batch b = {PEFT_BATCH_VERSION, tok, lab, 2, 12, NULL};
    peft_eval_result r = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &r));
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    CHECK_OK(peft_model_get_info(m, &info));
    uint64_t D = 32, F = 40, qkv = 64, L = 3, V = 48;
    CHECK(!strcmp(info.architecture, "phi3") &&
          info.n_params == 2 * V * D + D + L * (2 * D + D * (qkv + 32) + 3 * D * F)); /* qkv_proj, o_proj, MLP */
    /* q and up: every module that holds them, qkv_proj (out 64) and gate_up_proj (out 80) */
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.targets = PEFT_TARGET_Q | PEFT_TARGET_UP;
    o.rank = 2;
    o.init = PEFT_INIT_GAUSSIAN;
    CHECK_OK(peft_attach_lora(m, &o, NULL));
    float *p;
    size_t n;
    CHECK_OK(peft_param_buffer(&p, &n, m));
    CHECK_MSG(n == L * (2 * (D + qkv) + 2 * (D + 2 * F)), "%zu trainable", n);
    for (size_t i = 0; i < n; i++)
        p[i] += 0.01f * (float)((i * 7919) % 13) - 0.06f;
    peft_eval_result ra = PEFT_EVAL_RESULT_INIT, rm = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &ra));
    char dir[] = "/tmp/peft-phi3-XXXXXX", sub[64], text[4096];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(sub, sizeof sub, "%s/adapter", dir);
    CHECK_OK(peft_save_adapter(m, sub, NULL));
    snprintf(sub, sizeof sub, "%s/adapter/adapter_config.json", dir);
    read_small(sub, text, sizeof text);
    CHECK_MSG(strstr(text, "\"qkv_proj\"") && strstr(text, "\"gate_up_proj\"") && !strstr(text, "q_proj\"") &&
              !strstr(text, "\"up_proj"), "%s", text);
    snprintf(sub, sizeof sub, "%s/merged", dir);
    CHECK_OK(peft_save_merged(m, sub));
    snprintf(text, sizeof text, "%s/x.gguf", dir);
    CHECK_OK(peft_save_adapter_gguf(m, text, NULL)); /* attn_qkv, ffn_up (the CLI test checks the file) */
    remove(text);
    peft_model_close(&m);
    CHECK_OK(peft_model_open(&m, sub, NULL));
    if (m)
        CHECK_OK(peft_eval(m, &b, &rm));
    CHECK_CLOSE(rm.loss_sum, ra.loss_sum, 1e-4 * fabs(ra.loss_sum));
    CHECK(fabs(ra.loss_sum - r.loss_sum) > 1e-3);
    peft_model_close(&m);
    snprintf(sub, sizeof sub, "%s/adapter", dir); /* the saved adapter loads back to the same loss */
    CHECK_OK(peft_model_open(&m, test_data("tiny_phi3"), NULL));
    if (m) {
        CHECK_OK(peft_load_adapter(m, sub));
        peft_eval_result rl = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(m, &b, &rl));
        CHECK_CLOSE(rl.loss_sum, ra.loss_sum, 1e-9 * fabs(ra.loss_sum));
    }
    peft_model_close(&m);
    adapter_dir_remove(sub);
    /* a Llama adapter on Phi-3 and a Phi-3 adapter on Llama: refused, naming the model's modules */
    static const char *const cross[2][3] = {{"tiny_phi3", "tiny/all_linear/adapter", "qkv_proj, o_proj, gate_up_proj"},
                                            {"tiny", "tiny_phi3/all_linear/adapter", "q_proj, k_proj, v_proj"}};
    for (int i = 0; i < 2; i++) {
        CHECK_OK(peft_model_open(&m, test_data(cross[i][0]), NULL));
        if (m)
            CHECK_MSG(peft_load_adapter(m, test_data(cross[i][1])) == PEFT_EUNSUPPORTED &&
                          strstr(peft_last_error(), cross[i][2]), "%s", peft_last_error());
        peft_model_close(&m);
    }
    snprintf(sub, sizeof sub, "%s/merged", dir);
    dir_with_two_remove(sub, "model.safetensors", "config.json");
    rmdir(dir);
}

/* A session's feed past the original length (8 here) rotates all of its positions with the long
   factors, as transformers does for a forward call whose largest position is past it: a prompt of
   19 tokens prefilled in one feed predicts token 20 as the batched forward of 20 tokens does (the
   loss of 20 tokens less that of 19: both past 8, both long); fed one token at a time, the first
   positions take the short factors (transformers' token-by-token decoding), and the loss differs */
static void phi3_prefill_past_original(void)
{
    char d[21], cfg[1024];
    snprintf(cfg, sizeof cfg, TINY_PHI3, PHI3_ROPE("8", "32", "[2.0, 4.0, 8.0]", PHI3_AF));
    variant_dir(d, "tiny_phi3/model.safetensors", cfg);
    peft_model *m = NULL;
    CHECK_OK(peft_model_open(&m, d, NULL));
    int32_t tok[20];
    for (int i = 0; i < 20; i++)
        tok[i] = (i * 7 + 3) % 48;
    double nll[2] = {0, 0}, sums[2];
    for (int n = 19; m && n <= 20; n++) {
        peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 1, n, NULL};
        peft_eval_result e = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(m, &b, &e));
        sums[n - 19] = e.loss_sum;
    }
    peft_session *s = NULL;
    CHECK_OK(peft_session_create(&s, m, 20));
    for (int mode = 0; s && mode < 2; mode++) { /* 0: one feed of 19, 1: 19 feeds of one */
        float logits[48];
        CHECK_OK(peft_session_reset(s));
        for (int i = 0; i < (mode ? 19 : 1); i++)
            CHECK_OK(peft_session_feed(s, tok + i, mode ? 1 : 19, logits));
        nll[mode] = logits_nll(logits, 48, tok[19]);
    }
    CHECK_MSG(fabs(nll[0] - (sums[1] - sums[0])) < 1e-5 && fabs(nll[1] - nll[0]) > 1e-4, "%.9g %.9g %.9g", nll[0],
              nll[1], sums[1] - sums[0]);
    peft_session_free(&s);
    peft_model_close(&m);
    model_dir_remove(d);
}

/* LongRoPE's long factors from a length past original_max_position_embeddings (12 > 8 here,
   the attention factor pinned to the tiny model's), never below it, and in a session's prefill
   past it; malformed factor lists, a partial rotation of no dimension or out of range and an
   unknown scaling refused */
TEST(phi3_longrope)
{
    static const char *const same[] = {PHI3_ROPE("32", "128", "[2.0, 4.0, 8.0]", ""),
                                       PHI3_ROPE("8", "32", "[1.0, 1.5, 2.5]", PHI3_AF),
                                       PHI3_ROPE("8", "32", "[2.0, 4.0, 8.0]", PHI3_AF),
                                       PHI3_ROPE("32", "128", "[7.0, 7.0, 7.0]", "")};
    double loss[4];
    for (int i = 0; i < 4; i++) {
        char d[21], cfg[1024];
        snprintf(cfg, sizeof cfg, TINY_PHI3, same[i]);
        variant_dir(d, "tiny_phi3/model.safetensors", cfg);
        loss[i] = variant_loss(d);
        model_dir_remove(d);
    }
    CHECK_MSG(loss[0] == variant_loss(test_data("tiny_phi3")) && fabs(loss[1] - loss[0]) < 1e-9 * loss[0] &&
              fabs(loss[2] - loss[0]) > 1e-4 && loss[3] == loss[0],
              "%.9g %.9g %.9g %.9g", loss[0], loss[1], loss[2], loss[3]);
    phi3_prefill_past_original();
    static const char *const bad[][2] = {
        {PHI3_ROPE("32", "128", "[2.0, 4.0]", ""), "long_factor"},
        {PHI3_ROPE("32", "128", "[2.0, 4.0, -1]", ""), "long_factor[2]"},
        {"\"partial_rotary_factor\": 0.1", "partial_rotary_factor"},
        {"\"partial_rotary_factor\": 7e75", "partial_rotary_factor"}, /* no int overflow (a fuzz find) */
        {"\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}", "yarn"},
        {"\"attention_bias\": true", "biases"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char d[21], cfg[1024];
        snprintf(cfg, sizeof cfg, TINY_PHI3, bad[i][0]);
        variant_dir(d, "tiny_phi3/model.safetensors", cfg);
        peft_model *m = NULL;
        int rc = peft_model_open(&m, d, NULL);
        CHECK_MSG((rc == PEFT_EUNSUPPORTED || rc == PEFT_EFORMAT) && strstr(peft_last_error(), bad[i][1]), "%s: %s",
                  bad[i][0], peft_last_error());
        peft_model_close(&m);
        model_dir_remove(d);
    }
}

/* Phi-3's fused modules under the other methods: LoHa, LoKr and VeRA on qkv_proj and gate_up_proj
   (delta W of the whole fused matrix) and PiSSA's SVD of it (the model unchanged at init);
   gradients by finite differences, and LoHa, LoKr and VeRA adapters reload to the same loss */
TEST(phi3_methods)
{
    static const char *const what[4] = {"LoHa", "LoKr", "VeRA", "PiSSA"};
    for (int c = 0; c < 4; c++) {
        peft_model *m = NULL;
        CHECK_OK(peft_model_open(&m, test_data("tiny_phi3"), NULL));
        if (!m)
            return;
        int32_t tok[20];
        peft_batch b = check_batch(tok);
        peft_eval_result base = PEFT_EVAL_RESULT_INIT, at = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(m, &b, &base));
        if (c == 2) {
            peft_vera_options vo = PEFT_VERA_OPTIONS_INIT;
            vo.targets = PEFT_TARGET_ALL_LINEAR;
            vo.rank = 4;
            CHECK_OK(peft_attach_vera(m, &vo, NULL));
        } else {
            peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
            o.targets = PEFT_TARGET_ALL_LINEAR;
            o.rank = 2;
            o.variant = c == 0 ? PEFT_VARIANT_LOHA : c == 1 ? PEFT_VARIANT_LOKR : 0;
            o.init = c == 3 ? PEFT_INIT_PISSA : PEFT_INIT_KAIMING;
            CHECK_OK(peft_attach_lora(m, &o, NULL));
        }
        CHECK_OK(peft_eval(m, &b, &at));
        CHECK_MSG(fabs(at.loss_sum - base.loss_sum) < 1e-4, "%s: the model changed at init (%.9g, %.9g)", what[c],
                  at.loss_sum, base.loss_sum);
        float *p, *g;
        size_t n;
        CHECK_OK(peft_param_buffer(&p, &n, m));
        for (size_t i = 0; i < n; i++)
            p[i] += 0.05f * (float)((int)((i * 2654435761u) % 11) - 5) / 5.0f;
        CHECK_OK(peft_zero_grad(m));
        CHECK_OK(peft_forward_backward(m, &b, NULL));
        CHECK_OK(peft_grad_buffer(&g, &n, m));
        float *ga = malloc(n * sizeof *ga);
        memcpy(ga, g, n * sizeof *ga);
        int checked, nonzero, bad = fd_sweep(m, &b, p, ga, n, n / 151 + 1, what[c], &checked, &nonzero);
        CHECK_MSG(checked > 60 && nonzero > checked / 10 && bad == 0, "%s: %d checked, %d non-zero, %d off", what[c],
                  checked, nonzero, bad);
        free(ga);
        char dir[] = "/tmp/peft-phi3m-XXXXXX";
        CHECK(mkdtemp(dir) != NULL);
        peft_eval_result trained = PEFT_EVAL_RESULT_INIT, back = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(m, &b, &trained));
        CHECK_OK(peft_save_adapter(m, dir, NULL));
        peft_model_close(&m);
        CHECK_OK(peft_model_open(&m, test_data("tiny_phi3"), NULL));
        if (m && c < 3) {
            CHECK_OK(peft_load_adapter(m, dir));
            CHECK_OK(peft_eval(m, &b, &back));
            CHECK_MSG(fabs(back.loss_sum - trained.loss_sum) < 1e-6 * trained.loss_sum, "%s: reloaded %.9g, saved %.9g",
                      what[c], back.loss_sum, trained.loss_sum);
        }
        peft_model_close(&m);
        adapter_dir_remove(dir);
    }
}

static const struct h_case cases[] = {
    CASE(rope_parameters_of_transformers_5),
    CASE(torch_step_qwen2),
    CASE(torch_step_qwen3), CASE(torch_step_qwen3_norms), CASE(qk_norms_lifecycle), CASE(gemma3_multimodal),
    CASE(torch_step_smollm3),
    CASE(torch_step_granite),
    CASE(torch_step_phi3), CASE(phi3_longrope), CASE(phi3_methods),
    CASE(torch_step_llama_bias),
    CASE(torch_step_ia3_bias),
    CASE(torch_step_bias_all),
    CASE(torch_step_bias_lora_only),
    CASE(ia3_bias_merge_export),
    CASE(bias_training_lifecycle),
    CASE(model_gradcheck_qwen2),
    CASE(model_gradcheck_qwen3),
    CASE(torch_step_gemma3),
    CASE(torch_step_gemma2),
    CASE(torch_step_gemma3_norms),
    CASE(torch_step_gemma2_norms),
    CASE(gemma_norms_lifecycle),
    CASE(gemma3_lifecycle),
    CASE(model_gradcheck_windows_and_rope_scaling),
};
TEST_MAIN(cases)
