/*
 * Prompt tuning (Hugging Face PEFT peft_type "PROMPT_TUNING"): a soft prompt of n_virtual
 * trained embedding rows put before every sequence. The forward pass (forward.c, infer.c) places
 * the rows; this file builds the attachment and reads and writes PEFT's files:
 * adapter_model.safetensors holds "prompt_embeddings" (n_virtual, hidden), adapter_config.json
 * the PromptTuningConfig fields.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

static const char *const init_names[3] = {"RANDOM", "TEXT", "SAMPLE_VOCAB"};

static char *dup_or_null(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = 1;
    return d;
}

static int build_prompt(lora_state **out, const peft_model *m, const peft_prompt_options *o, int allocate)
{
    *out = NULL;
    if (!m || !o)
        return peft__fail(PEFT_EINVAL, "prompt tuning: NULL argument");
    if (o->version == 0 || o->version > PEFT_PROMPT_OPTIONS_VERSION)
        return peft__fail(PEFT_EINVAL, "prompt tuning: unknown options version %u", o->version);
    if (o->n_virtual <= 0 || o->n_virtual > 65536)
        return peft__fail(PEFT_EINVAL, "prompt tuning: n_virtual %d must be in 1..65536", o->n_virtual);
    if (o->init < PEFT_PROMPT_INIT_RANDOM || o->init > PEFT_PROMPT_INIT_SAMPLE_VOCAB)
        return peft__fail(PEFT_EINVAL, "prompt tuning: unknown init %d", o->init);
    if (m->cfg.multimodal)
        return peft__fail(PEFT_EUNSUPPORTED, "prompt tuning on a multimodal Gemma 3 is not supported");
    if (!m->cfg.gemma && m->cfg.embed_mul != 1.0f) /* Gemma scales inside the embedding module, Granite after */
        return peft__fail(PEFT_EUNSUPPORTED, "prompt tuning: Granite multiplies the soft prompt by its "
                                             "embedding_multiplier too; not supported");
    if (o->init == PEFT_PROMPT_INIT_TEXT) {
        if (!o->init_tokens || o->n_init_tokens <= 0)
            return peft__fail(PEFT_EINVAL, "prompt tuning: TEXT initialisation needs the text's token ids");
        for (int32_t i = 0; i < o->n_init_tokens; i++)
            if (o->init_tokens[i] < 0 || o->init_tokens[i] >= m->cfg.vocab)
                return peft__fail(PEFT_EINVAL, "prompt tuning: init token %d is outside the vocabulary (0..%d)",
                                  o->init_tokens[i], m->cfg.vocab - 1);
    }
    lora_state *l;
    int code = peft__state_new(&l, &m->cfg, NULL, "prompt tuning");
    if (code)
        return code;
    l->method = PEFT_METHOD_PROMPT;
    l->n_virtual = o->n_virtual;
    l->prompt_init = o->init;
    l->seed = o->seed;
    l->lowest_layer = -1; /* the gradient reaches the input embeddings */
    l->n_params = (size_t)o->n_virtual * (size_t)m->cfg.dim;
    l->mods_end = l->off_norms = l->n_params;
    int oom = 0;
    if (o->init == PEFT_PROMPT_INIT_TEXT) {
        l->prompt_text = dup_or_null(o->init_text, &oom);
        l->prompt_tokenizer = dup_or_null(o->tokenizer_name_or_path, &oom);
    }
    if (oom)
        code = peft__fail(PEFT_ENOMEM, "prompt tuning: out of memory");
    else if (allocate)
        code = peft__state_alloc(l, l->n_params, "prompt tuning");
    if (code) {
        peft__lora_free(l);
        return code;
    }
    *out = l;
    return PEFT_OK;
}

/* PEFT's initialisations: N(0, 1) rows (torch.nn.Embedding), or copies of the base embeddings of
   the text's tokens (repeated, then cut to n_virtual) or of uniformly drawn tokens (Gemma's
   scaled by sqrt(hidden), as its embedding module returns them). */
static void init_prompt(lora_state *l, const peft_model *m, const peft_prompt_options *o)
{
    size_t D = (size_t)m->cfg.dim;
    peft_rng rng;
    peft__rng_seed(&rng, o->seed ^ peft__hash64(0x70726f6d7074ull)); /* "prompt" */
    for (int i = 0; i < l->n_virtual; i++) {
        float *row = l->params + (size_t)i * D;
        if (o->init == PEFT_PROMPT_INIT_RANDOM) {
            for (size_t d = 0; d < D; d++)
                row[d] = (float)peft__rng_normal(&rng);
            continue;
        }
        int32_t t = o->init == PEFT_PROMPT_INIT_TEXT ? o->init_tokens[i % o->n_init_tokens]
                                                     : (int32_t)(peft__rng_next(&rng) % (uint64_t)m->cfg.vocab);
        peft__w_rows(NULL, &m->embed, t, 1, row);
        for (size_t d = 0; m->cfg.embed_mul != 1.0f && d < D; d++) /* the embedding module's output, as PEFT takes it */
            row[d] *= m->cfg.embed_mul;
    }
}

int peft_count_prompt(uint64_t *n_trainable, const peft_model *m, const peft_prompt_options *o)
{
    if (!n_trainable)
        return peft__fail(PEFT_EINVAL, "peft_count_prompt: n_trainable is NULL");
    lora_state *l;
    int code = build_prompt(&l, m, o, 0);
    if (code)
        return code;
    *n_trainable = l->n_params;
    peft__lora_free(l);
    return PEFT_OK;
}

int peft_attach_prompt(peft_model *m, const peft_prompt_options *o, uint64_t *n_trainable)
{
    if (m && m->lora)
        return peft__fail(PEFT_ESTATE, "peft_attach_prompt: an adapter is already attached (peft_detach first)");
    if (m && m->merged)
        return peft__fail(PEFT_ESTATE, "peft_attach_prompt: an adapter is merged (peft_unmerge_adapter first)");
    lora_state *l;
    int code = build_prompt(&l, m, o, 1);
    if (code)
        return code;
    init_prompt(l, m, o);
    return peft__state_install(m, l, n_trainable);
}

/* ---- files ---- */

#define PROMPT_KEY "prompt_embeddings"

static void jw_str_or_null(struct jw *w, const char *s)
{
    if (s)
        jw_str(w, s);
    else
        jw_put(w, "null");
}

int peft__save_prompt(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name)
{
    const lora_state *l = m->lora;
    const peft_config *c = &m->cfg;
    struct jw w = {0};
    /* PromptTuningConfig.to_dict(), keys sorted as PEFT writes them */
    jw_put(&w, "{\n  \"auto_mapping\": null,\n  \"base_model_name_or_path\": ");
    jw_str(&w, base_name);
    jw_put(&w,
           ",\n  \"inference_mode\": true,\n  \"num_attention_heads\": %d,\n  \"num_layers\": %d,\n"
           "  \"num_transformer_submodules\": 1,\n  \"num_virtual_tokens\": %d,\n  \"peft_type\": \"PROMPT_TUNING\",\n"
           "  \"prompt_tuning_init\": \"%s\",\n  \"prompt_tuning_init_text\": ",
           c->n_heads, c->n_layers, l->n_virtual, init_names[l->prompt_init]);
    jw_str_or_null(&w, l->prompt_text);
    jw_put(&w, ",\n  \"revision\": null,\n  \"task_type\": \"CAUSAL_LM\",\n  \"token_dim\": %d,\n"
               "  \"tokenizer_kwargs\": null,\n  \"tokenizer_name_or_path\": ", c->dim);
    jw_str_or_null(&w, l->prompt_tokenizer);
    jw_put(&w, "\n}");
    st_out_tensor t = {PROMPT_KEY, 2, {l->n_virtual, c->dim}, l->params};
    return peft__write_adapter(&m->cfg, st_path, &t, 1, cfg_path, &w);
}

static int int_field(const json_value *root, const char *key, int *out, const char *path)
{
    const json_value *v = json_get(root, key);
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->number < 1 || v->number > 1e9)
        return peft__fail(PEFT_EFORMAT, "%s: PROMPT_TUNING needs a positive integer \"%s\"", path, key);
    *out = (int)v->number;
    return PEFT_OK;
}

static const char *str_field(const json_value *root, const char *key)
{
    const json_value *v = json_get(root, key);
    return v && v->type == JSON_STRING ? v->string : NULL;
}

int peft__load_prompt(peft_model *m, const json_value *root, const char *cfg_path, const char *st_path)
{
    const peft_config *c = &m->cfg;
    int n_virtual = 0, dim = 0, subs = 1, code;
    const char *task = str_field(root, "task_type");
    if (task && strcmp(task, "CAUSAL_LM"))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: PROMPT_TUNING task_type \"%s\" is not supported (CAUSAL_LM)",
                          cfg_path, task);
    if ((code = int_field(root, "num_virtual_tokens", &n_virtual, cfg_path)) ||
        (code = int_field(root, "token_dim", &dim, cfg_path)))
        return code;
    const json_value *sv = json_get(root, "num_transformer_submodules");
    if (sv && sv->type != JSON_NULL && (code = int_field(root, "num_transformer_submodules", &subs, cfg_path)))
        return code;
    if (subs != 1)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: num_transformer_submodules %d (a decoder-only model has 1)", cfg_path,
                          subs);
    if (dim != c->dim)
        return peft__fail(PEFT_ESHAPE, "%s: token_dim %d, but the model's hidden size is %d", cfg_path, dim, c->dim);
    if (n_virtual > 65536)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: num_virtual_tokens %d is more than 65536", cfg_path, n_virtual);
    lora_state *saved = m->lora;
    if (saved && (saved->method != PEFT_METHOD_PROMPT || saved->n_virtual != n_virtual))
        return peft__fail(PEFT_ESHAPE, "%s: adapter layout differs from the attached one", cfg_path);
    peft_prompt_options o = PEFT_PROMPT_OPTIONS_INIT;
    o.n_virtual = n_virtual;
    lora_state *l = NULL;
    if ((code = build_prompt(&l, m, &o, 1)))
        return code;
    /* keep the config's description of the initialisation for the next save */
    const char *init = str_field(root, "prompt_tuning_init");
    for (int i = 0; init && i < 3; i++)
        if (!strcmp(init, init_names[i]))
            l->prompt_init = i;
    int oom = 0;
    l->prompt_text = dup_or_null(str_field(root, "prompt_tuning_init_text"), &oom);
    l->prompt_tokenizer = dup_or_null(str_field(root, "tokenizer_name_or_path"), &oom);
    if (oom) {
        peft__lora_free(l);
        return peft__fail(PEFT_ENOMEM, "out of memory");
    }
    return peft__load_single(m, l, st_path, PROMPT_KEY, n_virtual, c->dim, "PROMPT_TUNING");
}
