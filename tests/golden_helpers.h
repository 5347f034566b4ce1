/*
 * What the golden tests (test_golden.c, test_families.c) share: a training step against the
 * committed PyTorch reference files (step_case), and whole-model finite differences (gradcheck).
 */
#ifndef PEFT_TEST_GOLDEN_HELPERS_H
#define PEFT_TEST_GOLDEN_HELPERS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/json.h"
#include "../lib/safetensors.h"
#include "fd_helpers.h"
#include "harness.h"
#include "peft/peft.h"

static inline json_doc *load_json(const char *path)
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

static inline double jnum(const json_doc *d, const char *k)
{
    const json_value *v = json_get(json_root(d), k);
    return v && v->type == JSON_NUMBER ? v->number : NAN;
}

/* If the reference has `key`: compare it with x[*off ...] * xscale, update the worst relative
   error and advance *off past it. */
static inline void compare_tensor(st_file *ref, const char *key, const float *x, double xscale, size_t *off, double *worst)
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

/* Compare a flat parameter/gradient block of n floats with a safetensors file of PEFT keys, in
   the library's parameter order (that of the saved adapter: modules sorted by layer, kind);
   INFINITY when the file's tensors do not cover the block (n 0: not checked). */
static inline double max_rel_err(const float *x, size_t n, double xscale, const char *st_path, const char *adapter_st)
{
    st_file *ref, *layout;
    if (st_open(&ref, st_path) || st_open(&layout, adapter_st))
        return INFINITY;
    double worst = 0;
    /* the library's parameter block order: layer-major, then q,k,v,o,gate,up,down, A then B */
    static const char *kinds[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                                  "self_attn.qkv_proj", "mlp.gate_up_proj"}; /* Phi-3's, in q's and gate's places */
    size_t off = 0;
    compare_tensor(ref, "prompt_embeddings", x, xscale, &off, &worst); /* prompt tuning: the whole block */
    compare_tensor(ref, "base_model.model.model.embed_tokens.trainable_tokens_delta", x, xscale, &off,
                   &worst); /* trainable tokens alone: the whole block */
    for (int l = 0; l < 64; l++)
        for (int k0 = 0; k0 < 9; k0++)
            for (int b = 0; b < 14; b++) {
                /* (the order 7 (qkv_proj) 0 1 2 3 8 (gate_up_proj) 4 5 6) */
                int k = k0 == 0 ? 7 : k0 <= 4 ? k0 - 1 : k0 == 5 ? 8 : k0 - 2;
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
       MLP; Gemma: input, pre-feedforward, post-attention, post-feedforward; then the q/k norms),
       then the final one: trained alongside LoRA (modules_to_save: ".weight"), then LN tuning
       (".ln_tuning_layers.weight") */
    static const char *const norms[6] = {"input_layernorm",           "pre_feedforward_layernorm",
                                         "post_attention_layernorm",  "post_feedforward_layernorm",
                                         "self_attn.q_norm",          "self_attn.k_norm"};
    for (int kind = 0; kind < 2; kind++)
        for (int l = 0; l <= 64; l++)
            for (int w = 0; w < (l == 64 ? 1 : 6); w++) {
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
    return n && off != n ? INFINITY : worst;
}

static const char *step_backend; /* NULL: the default backend */

static const char *step_model = "tiny"; /* the model directory under tests/data */

static inline void step_case(const char *name, int threads)
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
    double gerr = max_rel_err(g, n, 1.0 / (double)r.tokens, g_st, a_st);
    CHECK_MSG(gerr < 1e-3, "%s: gradient relative error %g", name, gerr);
    CHECK_OK(peft_opt_set(m, PEFT_OPT_LR, jnum(e, "lr")));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_WEIGHT_DECAY, jnum(e, "weight_decay")));
    CHECK_OK(peft_opt_set(m, PEFT_OPT_GRAD_CLIP, jnum(e, "grad_clip")));
    CHECK_OK(peft_apply_update(m, 0, &r));
    CHECK_CLOSE(r.grad_norm, jnum(e, "grad_norm"), 1e-4);
    CHECK_OK(peft_param_buffer(&p, &n, m));
    double perr = max_rel_err(p, n, 1.0, af_st, a_st);
    CHECK_MSG(perr < 1e-4, "%s: parameters after AdamW: relative error %g", name, perr);
    peft_eval_result er = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &er));
    CHECK_CLOSE(er.loss_sum / (double)er.tokens, jnum(e, "loss_after"), 1e-5);
    peft_model_close(&m);
    json_free(e);
}

/* The 2 x 10 batch of the whole-model checks, over tok (20 ids) */
static inline peft_batch check_batch(int32_t *tok)
{
    for (int i = 0; i < 20; i++)
        tok[i] = (i * 7 + 3) % 48;
    return (peft_batch){PEFT_BATCH_VERSION, tok, NULL, 2, 10, NULL};
}

/* Whole model, finite differences w.r.t. every adapter tensor (sampled entries). */
static inline void gradcheck_at(const char *model_path, const char *adapter_path)
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
    int checked, nonzero, bad = fd_sweep(m, &b, p, ga, n, n / 97 + 1, adapter_path, &checked, &nonzero);
    CHECK(checked > 60);
    CHECK(bad == 0);
    free(ga);
    peft_model_close(&m);
}

static inline void gradcheck_in(const char *model, const char *adapter) { gradcheck_at(test_data(model), test_data(adapter)); }
static inline void gradcheck(const char *adapter) { gradcheck_in("tiny", adapter); }

#endif
