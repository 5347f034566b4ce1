/*
 * Golden values: the committed PyTorch references (tests/data/tiny, made by
 * tests/golden/make_golden.py) and the reference figures of ../shared.
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
#include "harness.h"
#include "peft/peft.h"

static json_doc *load_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text, f);
    fclose(f);
    json_doc *d = NULL;
    json_parse(&d, text, n, path);
    return d;
}

static double jnum(const json_doc *d, const char *k)
{
    const json_value *v = json_get(json_root(d), k);
    return v && v->type == JSON_NUMBER ? v->number : NAN;
}

/* If the reference has `key`: compare it with x[*off ...] * xscale, update the worst relative
   error and advance *off past it. */
static void compare_tensor(st_file *ref, const char *key, const float *x, double xscale, size_t *off, double *worst)
{
    const st_tensor *t = st_find(ref, key);
    if (!t)
        return;
    float *r = malloc(t->n_elems * sizeof *r);
    st_read_f32(ref, t, r, t->n_elems);
    double mx = 0, err = 0;
    for (uint64_t i = 0; i < t->n_elems; i++) {
        mx = fmax(mx, fabs(r[i]));
        err = fmax(err, fabs(x[*off + i] * xscale - r[i]));
    }
    *worst = fmax(*worst, err / fmax(mx, 1e-12));
    *off += t->n_elems;
    free(r);
}

/* Compare a flat parameter/gradient block with a safetensors file of PEFT keys, in the
   library's parameter order (that of the saved adapter: modules sorted by layer, kind). */
static double max_rel_err(const float *x, double xscale, const char *st_path, const char *adapter_st)
{
    st_file *ref, *layout;
    if (st_open(&ref, st_path) || st_open(&layout, adapter_st))
        return INFINITY;
    double worst = 0;
    /* the library's parameter block order: layer-major, then q,k,v,o,gate,up,down, A then B */
    static const char *kinds[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    size_t off = 0;
    compare_tensor(ref, "prompt_embeddings", x, xscale, &off, &worst); /* prompt tuning: the whole block */
    compare_tensor(ref, "base_model.model.model.embed_tokens.trainable_tokens_delta", x, xscale, &off,
                   &worst); /* trainable tokens alone: the whole block */
    for (int l = 0; l < 64; l++)
        for (int k = 0; k < 7; k++)
            for (int b = 0; b < 14; b++) {
                char key[160];
                static const char *const lokr[4] = {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b"};
                if (b >= 10) /* LoKr: w1, then w2 or w2_a, w2_b */
                    snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.%s", l, kinds[k], lokr[b - 10]);
                else if (b >= 6) /* LoHa: w1_a, w1_b, w2_a, w2_b */
                    snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.hada_w%d_%c", l, kinds[k],
                             b < 8 ? 1 : 2, b % 2 ? 'b' : 'a');
                else if (b >= 4) /* VeRA: lambda_d, then lambda_b */
                    snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.vera_lambda_%c", l, kinds[k],
                             b == 4 ? 'd' : 'b');
                else if (b == 3)
                    snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.ia3_l", l, kinds[k]);
                else if (b == 2)
                    snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.lora_magnitude_vector", l, kinds[k]);
                else
                    snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.lora_%c.weight", l, kinds[k],
                             b ? 'B' : 'A');
                compare_tensor(ref, key, x, xscale, &off, &worst);
            }
    /* the embedding adapter follows the linear modules: A (r, vocab), then B (dim, r) */
    for (int b = 0; b < 2; b++) {
        compare_tensor(ref, b ? "base_model.model.model.embed_tokens.lora_embedding_B"
                              : "base_model.model.model.embed_tokens.lora_embedding_A",
                       x, xscale, &off, &worst);
    }
    /* then what LoRA trains beyond the linear modules: lm_head A, B, the token rows, the
       embeddings and lm_head in full, the norms (modules_to_save) layer by layer */
    static const char *const extra[] = {"base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight",
                                        "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
                                        "base_model.model.lm_head.token_adapter.trainable_tokens_delta",
                                        "base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"};
    for (int i = 0; i < 6; i++)
        compare_tensor(ref, extra[i], x, xscale, &off, &worst);
    /* the norms, per layer in their order in the layer (Llama: input, post-attention, before the
       MLP; Gemma: input, pre-feedforward, post-attention, post-feedforward), then the final one:
       trained alongside LoRA (modules_to_save: ".weight"), then LN tuning
       (".ln_tuning_layers.weight") */
    static const char *const norms[4] = {"input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm",
                                         "post_feedforward_layernorm"};
    for (int kind = 0; kind < 2; kind++)
        for (int l = 0; l <= 64; l++)
            for (int w = 0; w < (l == 64 ? 1 : 4); w++) {
                char key[160];
                const char *tail = kind ? "ln_tuning_layers.weight" : "weight";
                if (l == 64)
                    snprintf(key, sizeof key, "base_model.model.model.norm.%s", tail);
                else
                    snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.%s", l, norms[w], tail);
                compare_tensor(ref, key, x, xscale, &off, &worst);
            }
    /* the trained biases last (PEFT's bias option): an adapted module's under base_layer */
    for (int l = 0; l < 64; l++)
        for (int k = 0; k < 7; k++)
            for (int b = 0; b < 2; b++) {
                char key[160];
                snprintf(key, sizeof key, "base_model.model.model.layers.%d.%s.%sbias", l, kinds[k],
                         b ? "" : "base_layer.");
                compare_tensor(ref, key, x, xscale, &off, &worst);
            }
    st_close(ref);
    st_close(layout);
    return worst;
}

static const char *step_backend; /* NULL: the default backend */

static const char *step_model = "tiny"; /* the model directory under tests/data */

static void step_case(const char *name, int threads)
{
    char rel[256];
    snprintf(rel, sizeof rel, "%s/%s/expected.json", step_model, name);
    json_doc *e = load_json(test_data(rel));
    CHECK(e != NULL);
    if (!e)
        return;
    const json_value *tv = json_get(json_root(e), "tokens"), *lv = json_get(json_root(e), "labels");
    int B = (int)jnum(e, "n_seq"), T = (int)jnum(e, "seq_len");
    int32_t tok[256], lab[256];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)tv->items[i].number;
        lab[i] = (int32_t)lv->items[i].number;
    }
    peft_model *m;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = threads;
    oo.backend = step_backend;
    CHECK_OK(peft_model_open(&m, test_data(step_model), &oo));
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &info);
    CHECK(strcmp(info.backend, step_backend ? step_backend : "cpu") == 0);
    snprintf(rel, sizeof rel, "%s/%s/adapter", step_model, name);
    CHECK_OK(peft_load_adapter(m, test_data(rel)));
    peft_batch b = {PEFT_BATCH_VERSION, tok, lab, B, T, NULL};
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_forward_backward(m, &b, &r));
    CHECK_CLOSE(r.loss, jnum(e, "loss"), 1e-5);
    float *g, *p;
    size_t n;
    CHECK_OK(peft_grad_buffer(&g, &n, m));
    char a_st[512], g_st[512], af_st[512];
    snprintf(rel, sizeof rel, "%s/%s/adapter/adapter_model.safetensors", step_model, name);
    snprintf(a_st, sizeof a_st, "%s", test_data(rel));
    snprintf(rel, sizeof rel, "%s/%s/grads.safetensors", step_model, name);
    snprintf(g_st, sizeof g_st, "%s", test_data(rel));
    snprintf(rel, sizeof rel, "%s/%s/after.safetensors", step_model, name);
    snprintf(af_st, sizeof af_st, "%s", test_data(rel));
    double gerr = max_rel_err(g, 1.0 / (double)r.tokens, g_st, a_st);
    CHECK_MSG(gerr < 1e-3, "%s: gradient relative error %g", name, gerr);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, jnum(e, "lr")));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_WEIGHT_DECAY, jnum(e, "weight_decay")));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_GRAD_CLIP, jnum(e, "grad_clip")));
    CHECK_OK(peft_apply_update(m, 0, &r));
    CHECK_CLOSE(r.grad_norm, jnum(e, "grad_norm"), 1e-4);
    CHECK_OK(peft_param_buffer(&p, &n, m));
    double perr = max_rel_err(p, 1.0, af_st, a_st);
    CHECK_MSG(perr < 1e-4, "%s: parameters after AdamW: relative error %g", name, perr);
    peft_eval_result er = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &er));
    CHECK_CLOSE(er.loss_sum / (double)er.tokens, jnum(e, "loss_after"), 1e-5);
    peft_model_close(&m);
    json_free(e);
}

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

/* The 2 x 10 batch of the whole-model checks, over tok (20 ids) */
static peft_batch check_batch(int32_t *tok)
{
    for (int i = 0; i < 20; i++)
        tok[i] = (i * 7 + 3) % 48;
    return (peft_batch){PEFT_BATCH_VERSION, tok, NULL, 2, 10, NULL};
}

/* Whole model, finite differences w.r.t. every adapter tensor (sampled entries). */
static void gradcheck_at(const char *model_path, const char *adapter_path)
{
    peft_model *m;
    CHECK_OK(peft_model_open(&m, model_path, NULL));
    if (!m)
        return;
    CHECK_OK(peft_load_adapter(m, adapter_path));
    int32_t tok[2 * 10];
    peft_batch b = check_batch(tok);
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    CHECK_OK(peft_forward_backward(m, &b, &r));
    float *g, *p;
    size_t n;
    CHECK_OK(peft_grad_buffer(&g, &n, m));
    CHECK_OK(peft_param_buffer(&p, &n, m));
    float *ga = malloc(n * sizeof *ga);
    memcpy(ga, g, n * sizeof *ga);
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(ga[i]));
    int bad = 0, checked = 0;
    for (size_t i = 0; i < n; i += n / 97 + 1) {
        float save = p[i], h = 1e-2f;
        peft_eval_result ep = PEFT_EVAL_RESULT_INIT, em = PEFT_EVAL_RESULT_INIT;
        p[i] = save + h;
        peft_eval(m, &b, &ep);
        p[i] = save - h;
        peft_eval(m, &b, &em);
        p[i] = save;
        double num = (ep.loss_sum - em.loss_sum) / (2.0 * h);
        checked++;
        if (fabs(num - ga[i]) > 2e-3 * gmax + 2e-2 * fabs(num)) {
            if (bad++ < 5)
                fprintf(stderr, "param %zu: analytic %.6g numeric %.6g\n", i, ga[i], num);
        }
    }
    CHECK(checked > 60);
    CHECK(bad == 0);
    free(ga);
    peft_model_close(&m);
}

static void gradcheck_in(const char *model, const char *adapter) { gradcheck_at(test_data(model), test_data(adapter)); }
static void gradcheck(const char *adapter) { gradcheck_in("tiny", adapter); }

/* A model directory (a new temporary dir, its name into dir[21]) with `config` as config.json
   and the weights file `base` of the test data linked. */
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

TEST(model_gradcheck) { gradcheck("tiny/all_linear/adapter"); }
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
/* the embedding adapter's gradient flows through every layer down to the lookup */
TEST(model_gradcheck_embed) { gradcheck("tiny/embed_qv/adapter"); }
TEST(model_gradcheck_vera) { gradcheck("tiny/vera_qv_down/adapter"); }
TEST(model_gradcheck_loha) { gradcheck("tiny/loha_qo_up/adapter"); }
TEST(model_gradcheck_lokr) { gradcheck("tiny/lokr_qv_gate/adapter"); }
TEST(model_gradcheck_extras) { gradcheck("tiny/extras_head_embed_norm/adapter"); }
TEST(model_gradcheck_prompt) { gradcheck("tiny/prompt_5/adapter"); }

/* The base loss, a LoRA step and its gradients against PyTorch, finite differences, and the
   parameter count of a tiny Gemma (tests/golden/make_gemma.py): hidden 32, intermediate 40, 3
   layers, 4 heads of 12 (2 KV), vocabulary 48; 4 norms a layer, q/k norms when qk_norm */
static void gemma_case(const char *dir, const char *arch, int qk_norm)
{
    char rel[128];
    snprintf(rel, sizeof rel, "%s/all_linear/expected.json", dir);
    json_doc *e = load_json(test_data(rel));
    snprintf(rel, sizeof rel, "%s/base_loss.json", dir);
    json_doc *bl = load_json(test_data(rel));
    peft_model *m = NULL;
    CHECK(e && bl);
    CHECK_OK(peft_model_open(&m, test_data(dir), NULL));
    if (e && bl && m) {
        const json_value *tv = json_get(json_root(e), "tokens"), *lv = json_get(json_root(e), "labels");
        int32_t tok[24], lab[24];
        for (int i = 0; i < 24; i++) {
            tok[i] = (int32_t)tv->items[i].number;
            lab[i] = (int32_t)lv->items[i].number;
        }
        peft_batch b = {PEFT_BATCH_VERSION, tok, lab, 2, 12, NULL};
        peft_eval_result r = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(m, &b, &r));
        CHECK_CLOSE(r.loss_sum / (double)r.tokens, jnum(bl, "loss"), 1e-5);
        peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
        CHECK_OK(peft_model_get_info(m, &info));
        uint64_t D = 32, F = 40, hd = 12, L = 3, V = 48;
        uint64_t per = 4 * D + (qk_norm ? 2 * hd : 0) + D * (2 * 4 * hd + 2 * 2 * hd) + 3 * D * F; /* q, o; k, v */
        CHECK(!strcmp(info.architecture, arch) && info.n_params == V * D + D + L * per);
    }
    json_free(e);
    json_free(bl);
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
TEST(torch_step_gemma3_norms) { gemma_norms_case("tiny_gemma3"); }
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
    char g2[21], cfg[2048] = "", *q;
    FILE *in = fopen(test_data("tiny_gemma2/config.json"), "rb");
    size_t len = in ? fread(cfg, 1, sizeof cfg - 1, in) : 0;
    if (in)
        fclose(in);
    cfg[len] = 0;
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

/* merged in place and exported as a Hugging Face directory (the file's zero-centred norms under
   Gemma's names); what is not supported is refused without a file: GGUF export of a Gemma 3
   llama.cpp cannot express (this one's layer pattern, query scalar), a negative soft-cap, another
   layer pattern, the multimodal model_type */
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
    char d[21];
    variant_dir(d, "tiny_gemma3/model.safetensors", "{\"model_type\": \"gemma3\", \"text_config\": {}}");
    CHECK(peft_model_open(&m, d, NULL) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "multimodal Gemma 3"));
    model_dir_remove(d);
}
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
    double gerr = max_rel_err(g, 1.0 / (double)r.tokens, sp("models/stories260K/reference/ref_grads.safetensors"), a_st);
    CHECK_MSG(gerr < 1e-3, "gradient relative error %g", gerr);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, 1e-2));
    CHECK_OK(peft_apply_update(m, 0, &r));
    CHECK_CLOSE(r.grad_norm, 2.226066531247846, 1e-3);
    CHECK_OK(peft_param_buffer(&p, &n, m));
    double perr = max_rel_err(p, 1.0, sp("models/stories260K/reference/ref_adapter_step1/adapter_model.safetensors"), a_st);
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
    CASE(sharded_and_half_precision_models), CASE(frozen_bf16_weights), CASE(activation_checkpointing_is_exact), CASE(config_errors), CASE(shared_gguf_models),
    CASE(rope_parameters_of_transformers_5), CASE(torch_step_qwen2), CASE(torch_step_qwen3), CASE(torch_step_smollm3), CASE(torch_step_granite), CASE(torch_step_llama_bias), CASE(torch_step_ia3_bias), CASE(torch_step_bias_all), CASE(torch_step_bias_lora_only), CASE(ia3_bias_merge_export), CASE(bias_training_lifecycle), CASE(model_gradcheck_qwen2), CASE(model_gradcheck_qwen3), CASE(torch_step_gemma3), CASE(torch_step_gemma2), CASE(torch_step_gemma3_norms), CASE(torch_step_gemma2_norms), CASE(gemma_norms_lifecycle), CASE(gemma3_lifecycle),
    CASE(model_gradcheck_windows_and_rope_scaling),
};
TEST_MAIN(cases)
