/*
 * What a LoRA adapter_config.json says is trained beyond the linear modules: modules_to_save
 * (embeddings, lm_head, norms) and trainable_token_indices (the list form, and PEFT's dict form
 * with embed_tokens and lm_head).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "model.h"

/* A multimodal Gemma 3's module name as the library names the text model's (model.h) */
const char *peft__canon_module(const char *s, char *buf, size_t cap)
{
    static const char *const from[3] = {"model.language_model.", "language_model.model.", "language_model.lm_head"};
    static const char *const to[3] = {"model.", "model.", "lm_head"};
    for (int i = 0; i < 3; i++)
        if (!strncmp(s, from[i], strlen(from[i]))) {
            snprintf(buf, cap, "%s%s", to[i], s + strlen(from[i]));
            return buf;
        }
    return s;
}

/* modules_to_save of a LoRA adapter_config.json -> o->modules_to_save and o->norms; layer-wise
   norm names must name exactly the adapted layers (layers: their "N,M" list, "" = all). */
int peft__read_modules_to_save(const json_value *v, peft_lora_options *o, const char *layers, const char *path)
{
    /* the layer norms by the names of the PEFT_NORM_* bits (Gemma's four, Llama's two, the q/k
       norms also by their last part, "q_norm") */
    enum { NB = 6 };
    static const uint32_t bits[NB] = {PEFT_NORM_INPUT, PEFT_NORM_POST_ATTENTION, PEFT_NORM_PRE_FEEDFORWARD,
                                      PEFT_NORM_POST_FEEDFORWARD, PEFT_NORM_Q, PEFT_NORM_K};
    if (!v || v->type == JSON_NULL)
        return PEFT_OK;
    if (v->type != JSON_ARRAY)
        return peft__fail(PEFT_EFORMAT, "%s: modules_to_save is not a list", path);
    char listed[NB][4096] = {"", "", "", "", "", ""};
    for (size_t i = 0; i < v->length; i++) {
        char canon[160];
        const char *s = peft__canon_module(v->items[i].type == JSON_STRING ? v->items[i].string : "", canon,
                                           sizeof canon);
        const char *bare = !strncmp(s, "model.", 6) ? s + 6 : s, *tail = NULL;
        long layer = -1;
        char *end;
        if (!strncmp(s, "model.layers.", 13) && (layer = strtol(s + 13, &end, 10)) >= 0 && end != s + 13 && *end == '.')
            tail = end + 1;
        int k = -1;
        for (int j = 0; j < NB && k < 0; j++) {
            const char *full = peft__norm_name(bits[j]), *last = strrchr(full, '.'), *name = tail ? tail : s;
            if (!strcmp(name, full) || (!tail && last && !strcmp(name, last + 1)))
                k = j;
        }
        if (!strcmp(bare, "embed_tokens")) {
            o->modules_to_save |= PEFT_SAVE_EMBED;
        } else if (!strcmp(s, "lm_head")) {
            o->modules_to_save |= PEFT_SAVE_LM_HEAD;
        } else if (!strcmp(s, "model.norm")) {
            o->norms |= PEFT_NORM_FINAL;
        } else if (!strcmp(s, "norm") && !*layers) { /* PEFT matches it as a suffix: every norm */
            o->norms |= PEFT_NORM_ALL;
        } else if (k >= 0 && !tail && !*layers) {
            o->norms |= bits[k];
        } else if (k >= 0 && tail) {
            size_t n = strlen(listed[k]);
            snprintf(listed[k] + n, sizeof listed[k] - n, "%s%ld", n ? "," : "", layer);
        } else {
            return peft__fail(PEFT_EUNSUPPORTED, "%s: modules_to_save entry \"%s\" is not supported (embed_tokens, "
                              "lm_head, model.norm, and input_layernorm, post_attention_layernorm, "
                              "pre_feedforward_layernorm, post_feedforward_layernorm, self_attn.q_norm or "
                              "self_attn.k_norm of the adapted layers)", path, s);
        }
    }
    for (int k = 0; k < NB; k++) {
        if (!listed[k][0])
            continue;
        if (strcmp(listed[k], layers) != 0)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: modules_to_save names %s of layers %s, but the adapter's "
                              "layers are %s (norms are trained on the adapted layers)", path,
                              peft__norm_name(bits[k]), listed[k], *layers ? layers : "all");
        o->norms |= bits[k];
    }
    return PEFT_OK;
}

/* One list of token ids into ids[*n ...]; *n advances. */
static int read_id_list(const json_value *v, int32_t *ids, size_t *n, const char *path)
{
    if (v->type != JSON_ARRAY || v->length == 0)
        return peft__fail(PEFT_EFORMAT, "%s: trainable_token_indices must hold non-empty lists of token ids", path);
    for (size_t i = 0; i < v->length; i++) {
        const json_value *it = &v->items[i];
        if (it->type != JSON_NUMBER || !it->is_integer || it->number < 0 || it->number > 2147483647.0)
            return peft__fail(PEFT_EFORMAT, "%s: bad entry in trainable_token_indices", path);
        ids[(*n)++] = (int32_t)it->number;
    }
    return PEFT_OK;
}

/* trainable_token_indices: a list of ids (the input embeddings, and a tied lm_head) or PEFT's
   dict form {"embed_tokens": [...], "lm_head": [...]} (either key may be missing); *ids is
   malloc'ed, the embedding rows first. */
int peft__read_token_indices(const json_value *v, peft_lora_options *o, int32_t **ids, const char *path)
{
    if (!v || v->type == JSON_NULL)
        return PEFT_OK;
    const json_value *emb = v, *head = NULL;
    if (v->type == JSON_OBJECT) {
        emb = NULL;
        for (size_t i = 0; i < v->length; i++) {
            char canon[160];
            const char *k = peft__canon_module(v->keys[i], canon, sizeof canon);
            if (!strcmp(k, "embed_tokens") || !strcmp(k, "model.embed_tokens"))
                emb = &v->items[i];
            else if (!strcmp(k, "lm_head"))
                head = &v->items[i];
            else
                return peft__fail(PEFT_EUNSUPPORTED, "%s: trainable_token_indices for \"%s\" (embed_tokens and "
                                                     "lm_head are supported)", path, k);
        }
    }
    size_t total = (emb && emb->type == JSON_ARRAY ? emb->length : 0) + (head && head->type == JSON_ARRAY ? head->length : 0);
    if (total == 0 || total > (1u << 24))
        return peft__fail(PEFT_EFORMAT, "%s: trainable_token_indices must hold non-empty lists of token ids", path);
    if (!(*ids = malloc(total * sizeof **ids)))
        return peft__fail(PEFT_ENOMEM, "out of memory");
    size_t n = 0;
    int code;
    if (emb && (code = read_id_list(emb, *ids, &n, path)))
        return code;
    o->token_indices = n ? *ids : NULL;
    o->n_token_indices = (int32_t)n;
    if (head && (code = read_id_list(head, *ids, &n, path)))
        return code;
    o->head_token_indices = head ? *ids + o->n_token_indices : NULL;
    o->n_head_token_indices = (int32_t)n - o->n_token_indices;
    return PEFT_OK;
}
