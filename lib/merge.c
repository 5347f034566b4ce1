/*
 * Merging a LoRA adapter into the base weights (W' = W + s B A) in memory, undoing
 * it exactly, exporting the merged model as a Hugging Face directory, and solving
 * the rank for a parameter budget.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lora_linear.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

/* W (out, in) + scale * B (out, r) A (r, in) into dst */
static void merged_weight(peft_model *m, float *dst, const peft_w *W, const lora_module *md)
{
    const lora_state *l = m->lora;
    peft__w_rows(m, W, 0, md->out, dst); /* a copy, or the dequantized rows */
    if (l->method == PEFT_METHOD_IA3) { /* scale W's columns (feedforward) or rows */
        const float *s = l->params + md->off_a;
        for (int o = 0; o < md->out; o++)
            for (int i = 0; i < md->in; i++)
                dst[(int64_t)o * md->in + i] *= md->ia3_ff ? s[i] : s[o];
        return;
    }
    if (l->method == PEFT_METHOD_LOHA || l->method == PEFT_METHOD_LOKR) { /* + the Hadamard or Kronecker delta */
        lora_view lv = {.loha = l->params + md->off_a, .loha_tmp = l->loha_tmp, .r = md->r, .scale = md->scale,
                        .lokr = l->method == PEFT_METHOD_LOKR};
        peft__delta_weight(m, &lv, dst, md->in, md->out, dst);
        return;
    }
    if (l->method == PEFT_METHOD_VERA) { /* + (lambda_b * B[:out] * lambda_d) A[:, :in] */
        const float *lb = l->params + md->off_b, *ld = l->params + md->off_a;
        for (int o = 0; o < md->out; o++)
            for (int k = 0; k < md->r; k++)
                l->vera_beff[(size_t)o * md->r + k] = lb[o] * l->vera_B[(size_t)o * md->r + k] * ld[k];
        peft__gemm(m, 0, 0, md->out, md->in, md->r, 1.0f, l->vera_beff, md->r, l->vera_A, l->vera_in, 1.0f, dst,
                   md->in);
        return;
    }
    peft__gemm(m, 0, 0, md->out, md->in, md->r, md->scale, l->params + md->off_b, md->r, l->params + md->off_a,
               md->in, 1.0f, dst, md->in);
    if (!l->use_dora)
        return;
    /* DoRA: rows scaled to the magnitude vector: m * (W + sBA) / ||W + sBA|| */
    for (int o = 0; o < md->out; o++) {
        float *row = dst + (int64_t)o * md->in;
        double ss = 0;
        for (int i = 0; i < md->in; i++)
            ss += (double)row[i] * row[i];
        float g = (float)(l->params[md->off_m + (size_t)o] / sqrt(ss));
        for (int i = 0; i < md->in; i++)
            row[i] *= g;
    }
}

/* whether module md is an IA3 output scaling of a module with a bias (PEFT scales the bias too) */
static int scales_bias(const peft_model *m, const lora_module *md)
{
    return m->lora->method == PEFT_METHOD_IA3 && !md->ia3_ff && m->layers[md->layer].bias[md->kind];
}

/* the module's bias scaled by its IA3 vector into dst (out floats) */
static void scaled_bias(const peft_model *m, const float *bias, const lora_module *md, float *dst)
{
    const float *s = m->lora->params + md->off_a;
    for (int o = 0; o < md->out; o++)
        dst[o] = bias[o] * s[o];
}

/* E (vocab, dim) + scale * (B A)^T into dst: the embedding adapter merged */
static void merged_embed(peft_model *m, float *dst)
{
    peft__w_rows(m, &m->embed, 0, m->cfg.vocab, dst);
    peft__embed_delta_add(m, dst);
}

int peft_merge_adapter(peft_model *m)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_merge_adapter: model is NULL");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_merge_adapter: no adapter attached");
    if (m->merged)
        return peft__fail(PEFT_ESTATE, "peft_merge_adapter: already merged");
    if (m->lora->method == PEFT_METHOD_PROMPT)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_merge_adapter: a soft prompt (prompt tuning) is not part of the "
                                             "weights and cannot be merged");
    if (m->lora->method == PEFT_METHOD_NORMS)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_merge_adapter: tuned norms are not merged in place; "
                                             "peft_save_merged exports them");
    lora_state *l = m->lora;
    float **copies = calloc((size_t)l->n_modules + 1, sizeof *copies);
    if (!copies)
        return peft__fail(PEFT_ENOMEM, "peft_merge_adapter: out of memory");
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        /* an IA3-scaled bias follows the weight in the same copy */
        copies[i] = peft__alloc_floats((size_t)md->out * ((size_t)md->in + (size_t)scales_bias(m, md)));
        if (!copies[i]) {
            for (int j = 0; j < i; j++)
                peft__free(copies[j]);
            free(copies);
            return peft__fail(PEFT_ENOMEM, "peft_merge_adapter: out of memory for merged weights");
        }
        merged_weight(m, copies[i], peft__w_of(m, md->layer, md->kind), md);
    }
    float *emb = NULL;
    if (l->embed_r > 0) {
        /* the input lookup gets the merged copy; a tied lm_head keeps the base matrix, as
           the unmerged adapter computes */
        emb = peft__alloc_floats((size_t)m->cfg.vocab * (size_t)m->cfg.dim);
        if (!emb) {
            for (int j = 0; j < l->n_modules; j++)
                peft__free(copies[j]);
            free(copies);
            return peft__fail(PEFT_ENOMEM, "peft_merge_adapter: out of memory for merged embeddings");
        }
        merged_embed(m, emb);
        m->embed_base = m->embed;
        m->embed = (peft_w){.f = emb, .rows = m->embed.rows, .cols = m->embed.cols};
    }
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        peft_layer_weights *lw = &m->layers[md->layer];
        peft_w *w = &lw->w[md->kind];
        lw->w_base[md->kind] = *w;
        *w = (peft_w){.f = copies[i], .rows = w->rows, .cols = w->cols};
        if (scales_bias(m, md)) {
            float *b = copies[i] + (size_t)md->out * (size_t)md->in;
            scaled_bias(m, lw->bias[md->kind], md, b);
            lw->bias_base[md->kind] = lw->bias[md->kind];
            lw->bias[md->kind] = b;
        }
    }
    m->merged_copies = copies;
    m->merged = 1;
    return PEFT_OK;
}

int peft_unmerge_adapter(peft_model *m)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_unmerge_adapter: model is NULL");
    if (!m->merged)
        return peft__fail(PEFT_ESTATE, "peft_unmerge_adapter: nothing is merged");
    lora_state *l = m->lora;
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        peft_layer_weights *lw = &m->layers[md->layer];
        lw->w[md->kind] = lw->w_base[md->kind];
        if (lw->bias_base[md->kind]) {
            lw->bias[md->kind] = lw->bias_base[md->kind];
            lw->bias_base[md->kind] = NULL;
        }
        peft__free(m->merged_copies[i]);
    }
    if (m->embed_base.rows) {
        peft__free((float *)m->embed.f);
        m->embed = m->embed_base;
        m->embed_base = (peft_w){0};
    }
    free(m->merged_copies);
    m->merged_copies = NULL;
    m->merged = 0;
    return PEFT_OK;
}

/* config.json text with "tie_word_embeddings" set to false (replaced, or inserted first) */
static int untie_config(char **text, size_t *len)
{
    const char *key = "\"tie_word_embeddings\"";
    char *k = strstr(*text, key), *out;
    if (k) {
        char *v = k + strlen(key);
        while (*v == ' ' || *v == ':' || *v == '\t' || *v == '\n' || *v == '\r')
            v++;
        if (!strncmp(v, "false", 5))
            return PEFT_OK;
        size_t vl = !strncmp(v, "true", 4) ? 4 : 0;
        if (!vl)
            return peft__fail(PEFT_EFORMAT, "config.json: tie_word_embeddings is not a boolean");
        if (!(out = malloc(*len + 2)))
            return peft__fail(PEFT_ENOMEM, "out of memory");
        size_t pre = (size_t)(v - *text);
        memcpy(out, *text, pre);
        memcpy(out + pre, "false", 5);
        memcpy(out + pre + 5, v + vl, *len - pre - vl);
        *len += 1;
    } else {
        char *brace = strchr(*text, '{');
        if (!brace)
            return peft__fail(PEFT_EFORMAT, "config.json: not a JSON object");
        const char *ins = "\n  \"tie_word_embeddings\": false,";
        size_t pre = (size_t)(brace + 1 - *text), il = strlen(ins);
        if (!(out = malloc(*len + il + 1)))
            return peft__fail(PEFT_ENOMEM, "out of memory");
        memcpy(out, *text, pre);
        memcpy(out + pre, ins, il);
        memcpy(out + pre + il, brace + 1, *len - pre);
        *len += il;
    }
    free(*text);
    *text = out;
    return PEFT_OK;
}

const float *peft__effective_weight(peft_model *m, int l, int kind, float *dst, int *changed)
{
    const peft_w *w = &m->layers[l].w[kind];
    int idx = m->lora && !m->adapter_off && m->lora->method != PEFT_METHOD_NORMS
                  ? m->lora->index[l * PEFT_MOD_COUNT + kind]
                  : -1;
    *changed = idx >= 0;
    if (!dst) /* the model's own floats, or NULL: a buffer is needed */
        return (idx >= 0 && !m->merged) ? NULL : w->f;
    if (idx >= 0 && !m->merged) {
        merged_weight(m, dst, peft__w_of(m, l, kind), &m->lora->mods[idx]);
        return dst;
    }
    if (w->f) /* a float base, or the merged copy */
        return w->f;
    peft__w_rows(m, w, 0, w->rows, dst); /* dequantized */
    return dst;
}

const float *peft__effective_bias(const peft_model *m, int l, int kind, float *dst)
{
    /* b: the merged copy while merged; applied: the trained one under PEFT's bias option */
    const float *b = m->layers[l].bias[kind], *applied = peft__bias_of(m, l, kind);
    if (b && applied != b) /* trained (PEFT's bias option) */
        return applied;
    int idx = b && m->lora && !m->adapter_off && !m->merged ? m->lora->index[l * PEFT_MOD_COUNT + kind] : -1;
    if (idx < 0 || !scales_bias(m, &m->lora->mods[idx]))
        return b;
    scaled_bias(m, b, &m->lora->mods[idx], dst);
    return dst;
}

/* config.json of a model opened from GGUF, as transformers writes one for its architecture */
static int hf_config(const peft_model *m, char **text, size_t *len, int tied)
{
    const peft_config *c = &m->cfg;
    if (c->rope_scaling == 2 && !c->rope_long_from)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged: the GGUF file keeps Llama 3's RoPE scaling as "
                                             "rope_freqs.weight, whose rope_scaling parameters a config.json needs; "
                                             "export the merged model as GGUF instead");
    /* LongRoPE (phi3): the config.json holds the two lengths, transformers derives the attention factor */
    double longrope_af = c->rope_long_from > 0 && c->ctx_len > 0
                             ? peft__longrope_attention((double)c->ctx_len / c->rope_long_from, c->rope_long_from)
                             : 1.0;
    if (c->rope_long_from > 0 && fabs(longrope_af - (c->rope_mscale > 0 ? c->rope_mscale : 1.0)) > 1e-4)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged: the GGUF file's attention factor %g is not the "
                                             "one transformers derives from its context lengths (%g); export the "
                                             "merged model as GGUF instead", c->rope_mscale, longrope_af);
    static const char *const cls[][2] = {{"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"},
                                         {"qwen2", "Qwen2ForCausalLM"}, {"qwen3", "Qwen3ForCausalLM"},
                                         {"gemma2", "Gemma2ForCausalLM"}, {"gemma3", "Gemma3ForCausalLM"},
                                         {"smollm3", "SmolLM3ForCausalLM"}, {"granite", "GraniteForCausalLM"},
                                         {"phi3", "Phi3ForCausalLM"}};
    const char *name = NULL;
    for (size_t i = 0; i < sizeof cls / sizeof cls[0]; i++)
        if (!strcmp(cls[i][0], c->architecture))
            name = cls[i][1];
    if (!name)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged: no config.json for architecture %s", c->architecture);
    struct jw w = {0};
    jw_put(&w, "{\n  \"architectures\": [\n    \"%s\"\n  ],\n", name);
    if (c->gemma == 2) {
        jw_put(&w, "  \"attn_logit_softcapping\": ");
        jw_float(&w, c->attn_softcap);
        jw_put(&w, ",\n");
    }
    if (c->bias_mask & 1u << PEFT_MOD_O)
        jw_put(&w, "  \"attention_bias\": true,\n");
    if (!strcmp(c->architecture, "granite")) {
        jw_put(&w, "  \"attention_multiplier\": ");
        jw_float(&w, c->q_mul / sqrtf((float)c->head_dim));
        jw_put(&w, ",\n  \"embedding_multiplier\": ");
        jw_float(&w, c->embed_mul);
        jw_put(&w, ",\n  \"logits_scaling\": ");
        jw_float(&w, 1.0f / c->logit_mul);
        jw_put(&w, ",\n  \"residual_multiplier\": ");
        jw_float(&w, c->res_mul);
        jw_put(&w, ",\n");
    }
    jw_put(&w, "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n", c->bos_id, c->eos_id);
    if (c->gemma == 2) {
        jw_put(&w, "  \"final_logit_softcapping\": ");
        jw_float(&w, c->final_softcap);
        jw_put(&w, ",\n");
    }
    jw_put(&w, "  \"head_dim\": %d,\n  \"%s\": \"%s\",\n  \"hidden_size\": %d,\n", c->head_dim,
           c->gemma ? "hidden_activation" : "hidden_act", c->gemma ? "gelu_pytorch_tanh" : "silu", c->dim);
    jw_put(&w, "  \"intermediate_size\": %d,\n", c->ffn_dim);
    if (c->rope_long_from > 0)
        jw_put(&w, "  \"max_position_embeddings\": %d,\n", c->ctx_len > 0 ? c->ctx_len : c->rope_long_from);
    if (c->bias_mask & 1u << PEFT_MOD_GATE)
        jw_put(&w, "  \"mlp_bias\": true,\n");
    jw_put(&w, "  \"model_type\": \"%s\",\n  \"num_attention_heads\": %d,\n",
           c->gemma == 3 ? "gemma3_text" : c->architecture, c->n_heads);
    if (c->nope_every > 0) /* SmolLM3 */
        jw_put(&w, "  \"no_rope_layer_interval\": %d,\n", c->nope_every);
    jw_put(&w, "  \"num_hidden_layers\": %d,\n  \"num_key_value_heads\": %d,\n", c->n_layers, c->n_kv_heads);
    if (c->rope_long_from > 0)
        jw_put(&w, "  \"original_max_position_embeddings\": %d,\n", c->rope_long_from);
    if (c->rot_dim > 0) {
        jw_put(&w, "  \"partial_rotary_factor\": ");
        jw_float(&w, (float)c->rot_dim / (float)c->head_dim);
        jw_put(&w, ",\n");
    }
    if (c->gemma) /* scores times query_pre_attn_scalar^-1/2 = head_dim^-1/2 q_mul */
        jw_put(&w, "  \"query_pre_attn_scalar\": %ld,\n", lroundf((float)c->head_dim / (c->q_mul * c->q_mul)));
    jw_put(&w, "  \"rms_norm_eps\": ");
    jw_float(&w, c->eps);
    if (c->rope_long_from > 0) { /* Phi3Config wants these three keys alone */
        const float *f[2] = {c->rope_div_long, c->rope_div};
        for (int j = 0; j < 2; j++) {
            jw_put(&w, j ? ",\n    \"short_factor\": [" : ",\n  \"rope_scaling\": {\n    \"long_factor\": [");
            for (int i = 0; i < peft__rot_dim(c) / 2; i++) {
                jw_put(&w, i ? ", " : "");
                jw_float(&w, f[j][i]);
            }
            jw_put(&w, "]");
        }
        jw_put(&w, ",\n    \"type\": \"longrope\"\n  }");
    }
    if (c->rope_scaling == 1) {
        jw_put(&w, ",\n  \"rope_scaling\": {\n    \"factor\": ");
        jw_float(&w, c->rope_factor);
        jw_put(&w, ",\n    \"rope_type\": \"linear\",\n    \"type\": \"linear\"\n  }");
    }
    if (c->gemma == 3) {
        jw_put(&w, ",\n  \"rope_local_base_freq\": ");
        jw_float(&w, c->rope_local_theta);
    }
    jw_put(&w, ",\n  \"rope_theta\": ");
    jw_float(&w, c->rope_theta);
    if (c->sliding_window > 0)
        jw_put(&w, ",\n  \"sliding_window\": %d", c->sliding_window);
    if (c->gemma == 3) /* (Gemma 2's is fixed: every other layer) */
        jw_put(&w, ",\n  \"sliding_window_pattern\": %d", c->window_pattern);
    jw_put(&w, ",\n  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"float32\",\n", tied ? "true" : "false");
    jw_put(&w, "  \"vocab_size\": %d\n}\n", c->vocab);
    if (w.oom) {
        free(w.s);
        return peft__fail(PEFT_ENOMEM, "out of memory");
    }
    *text = w.s;
    *len = w.n;
    return PEFT_OK;
}

/* A multimodal Gemma 3's merged directory: the text model's tensors (ts[0, *k), names 160 bytes
   each) renamed to the checkpoint's layout, then every other tensor of its files (the vision
   tower, the projector) carried over as float32 (into tmp[]), at ts[*k] on */
static int carry_over(const peft_model *m, st_out_tensor *ts, char *names, float **tmp, int *k, int untie)
{
    if (untie) /* its config.json's tie lives in text_config */
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged: a multimodal Gemma 3 whose lm_head the adapter "
                                             "unties from the embeddings; export it as GGUF instead");
    int n_text = *k;
    for (int i = 0; i < n_text; i++) {
        char buf[160];
        snprintf(names + (size_t)i * 160, 160, "%s", peft__file_tensor_name(m, ts[i].name, buf, sizeof buf));
    }
    for (int f = 0; f < m->n_files; f++)
        for (size_t j = 0; j < m->files[f]->n_tensors; j++) {
            const st_tensor *t = &m->files[f]->tensors[j];
            int text = 0;
            for (int i = 0; i < n_text && !text; i++)
                text = !strcmp(ts[i].name, t->name);
            if (text)
                continue;
            if (!(tmp[*k] = peft__alloc_floats(t->n_elems)))
                return peft__fail(PEFT_ENOMEM, "peft_save_merged: out of memory");
            int code = st_read_f32(m->files[f], t, tmp[*k], t->n_elems);
            if (code)
                return code;
            snprintf(names + (size_t)*k * 160, 160, "%s", t->name);
            ts[*k] = (st_out_tensor){names + (size_t)*k * 160, t->n_dims, {0}, tmp[*k]};
            memcpy(ts[*k].shape, t->shape, sizeof t->shape);
            (*k)++;
        }
    return PEFT_OK;
}

int peft_save_merged(peft_model *m, const char *dir)
{
    if (!m || !dir)
        return peft__fail(PEFT_EINVAL, "peft_save_merged: NULL argument");
    if (peft__prompt_len(m) > 0)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged: a soft prompt (prompt tuning) is not part of the "
                                             "weights; save the adapter, or turn it off for the base model");
    const peft_config *c = &m->cfg;
    int n_t = 3 + c->n_layers * (4 + 2 * PEFT_MOD_COUNT + 2), k = 0, code, untie = 0;
    for (int i = 0; c->multimodal && i < m->n_files; i++) /* the vision tower's, carried over */
        n_t += (int)m->files[i]->n_tensors;
    size_t VD = (size_t)c->vocab * (size_t)c->dim;
    st_out_tensor *ts = calloc((size_t)n_t, sizeof *ts);
    char *names = calloc((size_t)n_t, 160);
    float **tmp = calloc((size_t)n_t, sizeof *tmp);
    char *src_cfg = peft__path_join(m->path, "config.json"), *dst_cfg = NULL, *dst_st = NULL, *text = NULL;
    size_t len;
    if (!ts || !names || !tmp || !src_cfg) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_merged: out of memory");
        goto done;
    }
#define ADD(nm, d0, d1, ptr)                                                                       \
    do {                                                                                           \
        snprintf(names + (size_t)k * 160, 160, "%s", nm);                                          \
        ts[k].name = names + (size_t)k * 160;                                                      \
        ts[k].n_dims = (d1) > 0 ? 2 : 1;                                                           \
        ts[k].shape[0] = (d0);                                                                     \
        ts[k].shape[1] = (d1);                                                                     \
        ts[k].data = (ptr);                                                                        \
        k++;                                                                                       \
    } while (0)
    /* the embeddings and lm_head in effect; a tied lm_head that no longer equals the
       embeddings (the adapter changed one of them only, as PEFT does) is written untied */
    if (!(tmp[0] = peft__alloc_floats(VD)) || !(tmp[1] = peft__alloc_floats(VD))) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_merged: out of memory");
        goto done;
    }
    peft__effective_embed(m, tmp[0]);
    peft__effective_head(m, tmp[1]);
    ADD("model.embed_tokens.weight", c->vocab, c->dim, tmp[0]);
    /* the norms as Hugging Face files hold them (Gemma's zero-centred), tuned ones as trained */
    ADD("model.norm.weight", c->dim, 0, peft__norm_file(m, c->n_layers, 0));
    untie = c->tied && memcmp(tmp[0], tmp[1], VD * sizeof(float)) != 0;
    if (!c->tied || untie)
        ADD("lm_head.weight", c->vocab, c->dim, tmp[1]);
    for (int l = 0; l < c->n_layers; l++) {
        char nm[96];
        const peft_layer_weights *w = &m->layers[l];
        for (int s = 0; s < PEFT__NORM_SLOTS; s++)
            if (peft__norm_bit(c, s)) {
                snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, peft__norm_name(peft__norm_bit(c, s)));
                ADD(nm, peft__norm_width(c, s), 0, peft__norm_file(m, l, s));
            }
        for (int kind = 0; kind < PEFT_MOD_COUNT; kind++) {
            if (!peft__has_mod(c, kind))
                continue;
            int in = (int)w->w[kind].cols, out = peft__mod_out(c, kind);
            snprintf(nm, sizeof nm, "model.layers.%d.%s.%s.weight", l, peft__module_parents[kind],
                     peft__mod_name(c, kind));
            int changed;
            const float *W = peft__effective_weight(m, l, kind, NULL, &changed);
            if (!W && !(tmp[k] = peft__alloc_floats((size_t)out * (size_t)in))) {
                code = peft__fail(PEFT_ENOMEM, "peft_save_merged: out of memory");
                goto done;
            }
            if (!W)
                W = peft__effective_weight(m, l, kind, tmp[k], &changed);
            ADD(nm, out, in, W);
            if (w->bias[kind]) { /* (scaled by IA3 where it scales the output) */
                snprintf(nm, sizeof nm, "model.layers.%d.%s.%s.bias", l, peft__module_parents[kind],
                         peft__mod_name(c, kind));
                if (!(tmp[k] = peft__alloc_floats((size_t)out))) {
                    code = peft__fail(PEFT_ENOMEM, "peft_save_merged: out of memory");
                    goto done;
                }
                ADD(nm, out, 0, peft__effective_bias(m, l, kind, tmp[k]));
            }
        }
    }
#undef ADD
    if (c->multimodal && (code = carry_over(m, ts, names, tmp, &k, untie)))
        goto done;
    if (m->gguf_map)
        code = hf_config(m, &text, &len, c->tied && !untie);
    else
        code = peft__read_file(&text, &len, src_cfg, 16u << 20);
    if (code || (untie && !m->gguf_map && (code = untie_config(&text, &len))) || (code = peft__mkdirs(dir)))
        goto done;
    dst_cfg = peft__path_join(dir, "config.json");
    dst_st = peft__path_join(dir, "model.safetensors");
    if (!dst_cfg || !dst_st) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_merged: out of memory");
        goto done;
    }
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    if ((code = st_write(dst_st, ts, (size_t)k, mk, mv, 1)))
        goto done;
    code = peft__write_atomic(dst_cfg, text, len);
done:
    for (int i = 0; i < n_t && tmp; i++)
        peft__free(tmp[i]);
    free(tmp);
    free(ts);
    free(names);
    free(src_cfg);
    free(dst_cfg);
    free(dst_st);
    free(text);
    return code;
}

int peft_solve_rank(int32_t *rank, const peft_model *m, const peft_lora_options *opts, uint64_t budget)
{
    if (!rank || !m || !opts)
        return peft__fail(PEFT_EINVAL, "peft_solve_rank: NULL argument");
    peft_lora_options o = *opts;
    /* the count is affine in the rank: DoRA adds a fixed magnitude vector per module, and
       modules with a rank_pattern entry do not depend on it */
    uint64_t one, two;
    int code;
    o.rank = 1;
    if ((code = peft_count_lora(&one, m, &o)))
        return code;
    o.rank = 2;
    if ((code = peft_count_lora(&two, m, &o)))
        return code;
    uint64_t per_rank = two - one, fixed = one - per_rank;
    if (budget < one)
        return peft__fail(PEFT_ERANGE, "peft_solve_rank: a budget of %llu is below rank 1 (%llu parameters)",
                          (unsigned long long)budget, (unsigned long long)one);
    uint64_t r = per_rank ? (budget - fixed) / per_rank : 65536;
    *rank = r > 65536 ? 65536 : (int32_t)r;
    return PEFT_OK;
}
