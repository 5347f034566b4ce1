/*
 * Trainable tokens (Hugging Face PEFT peft_type "TRAINABLE_TOKENS"): only chosen rows of the
 * embedding matrix are trained. The rows use the same machinery as LoRA's
 * trainable_token_indices (forward.c: the rows replace the embeddings' and, tied, lm_head's);
 * this file builds the attachment and reads and writes PEFT's files: adapter_model.safetensors
 * holds "base_model.model.model.embed_tokens.trainable_tokens_delta" (n, hidden),
 * adapter_config.json the TrainableTokensConfig fields with token_indices.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

#define TOKENS_KEY "base_model.model.model.embed_tokens.trainable_tokens_delta"

static int build_tokens(lora_state **out, const peft_model *m, const int32_t *ids, int32_t n, int allocate)
{
    *out = NULL;
    if (!m || (!ids && n > 0))
        return peft__fail(PEFT_EINVAL, "trainable tokens: NULL argument");
    const peft_config *c = &m->cfg;
    if (n <= 0 || n > c->vocab)
        return peft__fail(PEFT_EINVAL, "trainable tokens: %d token ids (1..%d)", n, c->vocab);
    lora_state *l;
    int code = peft__state_new(&l, c, NULL, "trainable tokens");
    if (code)
        return code;
    l->method = PEFT_METHOD_TOKENS;
    l->lowest_layer = -1; /* the gradient reaches the input embeddings */
    l->n_tok = n;
    if (!(l->tok_idx = malloc((size_t)n * sizeof *l->tok_idx)) ||
        !(l->tok_slot = malloc((size_t)c->vocab * sizeof *l->tok_slot))) {
        peft__lora_free(l);
        return peft__fail(PEFT_ENOMEM, "trainable tokens: out of memory");
    }
    for (int i = 0; i < c->vocab; i++)
        l->tok_slot[i] = -1;
    for (int32_t i = 0; i < n; i++) {
        int32_t t = ids[i];
        code = t < 0 || t >= c->vocab ? peft__fail(PEFT_EINVAL, "trainable tokens: token %d is outside the vocabulary "
                                                                "(0..%d)", t, c->vocab - 1)
               : l->tok_slot[t] >= 0  ? peft__fail(PEFT_EINVAL, "trainable tokens: token %d is listed twice", t)
                                      : PEFT_OK;
        if (code) {
            peft__lora_free(l);
            return code;
        }
        l->tok_slot[t] = i;
        l->tok_idx[i] = t;
    }
    /* the rows are the whole block, in the embedding group */
    l->off_tok = 0;
    l->mods_end = 0;
    l->n_params = l->off_norms = (size_t)n * (size_t)c->dim;
    if (allocate && (code = peft__state_alloc(l, l->n_params, "trainable tokens"))) {
        peft__lora_free(l);
        return code;
    }
    *out = l;
    return PEFT_OK;
}

int peft_count_tokens(uint64_t *n_trainable, const peft_model *m, const int32_t *ids, int32_t n)
{
    if (!n_trainable)
        return peft__fail(PEFT_EINVAL, "peft_count_tokens: n_trainable is NULL");
    lora_state *l;
    int code = build_tokens(&l, m, ids, n, 0);
    if (code)
        return code;
    *n_trainable = l->n_params;
    peft__lora_free(l);
    return PEFT_OK;
}

int peft_attach_tokens(peft_model *m, const int32_t *ids, int32_t n, uint64_t *n_trainable)
{
    if (m && m->lora)
        return peft__fail(PEFT_ESTATE, "peft_attach_tokens: an adapter is already attached (peft_detach first)");
    if (m && m->merged)
        return peft__fail(PEFT_ESTATE, "peft_attach_tokens: an adapter is merged (peft_unmerge_adapter first)");
    lora_state *l;
    int code = build_tokens(&l, m, ids, n, 1);
    if (code)
        return code;
    size_t D = (size_t)m->cfg.dim; /* PEFT's init_weights: the rows start as the base embeddings */
    for (int i = 0; i < n; i++)
        peft__w_rows(NULL, &m->embed, l->tok_idx[i], 1, l->params + (size_t)i * D);
    return peft__state_install(m, l, n_trainable);
}

int peft__save_tokens(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name)
{
    const lora_state *l = m->lora;
    struct jw w = {0};
    jw_put(&w, "{\n  \"base_model_name_or_path\": ");
    jw_str(&w, base_name);
    jw_put(&w, ",\n  \"inference_mode\": true,\n  \"init_weights\": true,\n  \"peft_type\": \"TRAINABLE_TOKENS\",\n"
               "  \"revision\": null,\n  \"target_modules\": [\n    \"embed_tokens\"\n  ],\n"
               "  \"task_type\": \"CAUSAL_LM\",\n  \"token_indices\": [");
    for (int i = 0; i < l->n_tok; i++)
        jw_put(&w, "%s\n    %d", i ? "," : "", l->tok_idx[i]);
    jw_put(&w, "\n  ]\n}");
    st_out_tensor t = {TOKENS_KEY, 2, {l->n_tok, m->cfg.dim}, l->params};
    return peft__write_adapter(&m->cfg, st_path, &t, 1, cfg_path, &w);
}

int peft__load_tokens(peft_model *m, const json_value *root, const char *cfg_path, const char *st_path)
{
    const peft_config *c = &m->cfg;
    const json_value *ti = json_get(root, "token_indices"), *tm = json_get(root, "target_modules");
    if (!ti || ti->type != JSON_ARRAY || ti->length == 0 || ti->length > (size_t)c->vocab)
        return peft__fail(PEFT_EFORMAT, "%s: TRAINABLE_TOKENS needs a non-empty token_indices list", cfg_path);
    if (tm && tm->type != JSON_NULL) { /* the input embeddings are the only target understood */
        char canon[160];
        const json_value *one = tm->type == JSON_ARRAY && tm->length == 1 ? &tm->items[0] : tm;
        const char *s = one->type == JSON_STRING ? peft__canon_module(one->string, canon, sizeof canon) : "";
        int ok = !strcmp(s, "embed_tokens") || !strcmp(s, "model.embed_tokens");
        if (!ok)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: TRAINABLE_TOKENS target_modules other than embed_tokens are "
                                                 "not supported", cfg_path);
    }
    int32_t *ids = malloc(ti->length * sizeof *ids);
    if (!ids)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    for (size_t i = 0; i < ti->length; i++) {
        const json_value *v = &ti->items[i];
        if (v->type != JSON_NUMBER || !v->is_integer || v->number < 0 || v->number >= c->vocab) {
            free(ids);
            return peft__fail(PEFT_EFORMAT, "%s: token_indices[%zu] is not a token id of this model (0..%d)",
                              cfg_path, i, c->vocab - 1);
        }
        ids[i] = (int32_t)v->number;
    }
    int32_t n = (int32_t)ti->length;
    lora_state *saved = m->lora, *l = NULL;
    int code = PEFT_OK;
    if (saved && (saved->method != PEFT_METHOD_TOKENS || saved->n_tok != n ||
                  memcmp(saved->tok_idx, ids, (size_t)n * sizeof *ids)))
        code = peft__fail(PEFT_ESHAPE, "%s: adapter layout differs from the attached one", cfg_path);
    if (!code)
        code = build_tokens(&l, m, ids, n, 1);
    free(ids);
    return code ? code : peft__load_single(m, l, st_path, TOKENS_KEY, n, c->dim, "TRAINABLE_TOKENS");
}
