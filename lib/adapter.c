/*
 * Hugging Face PEFT LoRA adapters: adapter_model.safetensors (F32 tensors,
 * metadata {"format":"pt"}) + adapter_config.json (sorted keys, indent 2).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

/* PEFT's adapter keys are "base_model.model." and a module's name: the library names a
   multimodal Gemma 3's text model's modules as a text model's (peft__canon_module), and writes
   them under the model's module path (peft__prefix: "model.language_model.", transformers 4.52
   on) */
#define KEY_ROOT "base_model.model."

static const char *library_key(const char *key, char *buf, size_t cap)
{
    const size_t n = sizeof KEY_ROOT - 1;
    char canon[448];
    const char *module = strncmp(key, KEY_ROOT, n) ? NULL : peft__canon_module(key + n, canon, sizeof canon);
    if (!module || module == key + n)
        return key;
    snprintf(buf, cap, KEY_ROOT "%s", module);
    return buf;
}

int peft__adapter_open(st_file **f, const char *path)
{
    int code = st_open(f, path);
    if (!code && st_rename(*f, library_key)) {
        st_close(*f);
        *f = NULL;
        code = peft__fail(PEFT_EFORMAT, "%s: holds tensors of a multimodal model's text model under both of "
                                        "transformers' layouts", path);
    }
    return code;
}

/* ts written as the adapter's tensors, named for the model c (metadata {"format": "pt"}) */
static int write_tensors(const peft_config *c, const char *st_path, st_out_tensor *ts, size_t n)
{
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    if (!c->multimodal)
        return st_write(st_path, ts, n, mk, mv, 1);
    st_out_tensor *named = malloc((n + 1) * sizeof *named);
    char *names = malloc((n + 1) * 192);
    int code = named && names ? PEFT_OK : peft__fail(PEFT_ENOMEM, "out of memory");
    const size_t lib = sizeof KEY_ROOT "model." - 1;
    for (size_t i = 0; i < n && !code; i++) {
        named[i] = ts[i];
        if (!strncmp(ts[i].name, KEY_ROOT "model.", lib)) {
            snprintf(names + i * 192, 192, KEY_ROOT "%s%s", peft__prefix(c), ts[i].name + lib);
            named[i].name = names + i * 192;
        }
    }
    if (!code)
        code = st_write(st_path, named, n, mk, mv, 1);
    free(named);
    free(names);
    return code;
}

int peft__jw_mod_names(struct jw *w, const peft_config *c, uint32_t bits, int first)
{
    for (int k = 0; k < PEFT_MOD_COUNT; k++)
        if (bits & (1u << k)) {
            jw_put(w, "%s\n    \"%s\"", first ? "" : ",", peft__mod_name(c, k));
            first = 0;
        }
    return first;
}

/* The two files of an adapter: the tensors, then the config text w holds (freed here); each
   written atomically. */
int peft__write_adapter(const peft_config *c, const char *st_path, st_out_tensor *ts, size_t n, const char *cfg_path,
                        struct jw *w)
{
    int code = w->oom ? peft__fail(PEFT_ENOMEM, "out of memory") : write_tensors(c, st_path, ts, n);
    if (!code)
        code = peft__write_atomic(cfg_path, w->s, w->n);
    free(w->s);
    w->s = NULL;
    return code;
}

/* PEFT's names of the embedding adapter (a ParameterDict: no ".weight") */
#define EMBED_A_KEY "base_model.model.model.embed_tokens.lora_embedding_A"
#define EMBED_B_KEY "base_model.model.model.embed_tokens.lora_embedding_B"

/* What a LoRA attachment trains beyond the linear modules and the embedding adapter, as PEFT
   names it: lm_head's lora_A/lora_B, the trainable token rows, modules_to_save (embeddings,
   lm_head, norms; saved under the module's own name). Fills up to extra_count(l, L) entries of
   ts (names in names, 128 bytes each; data points into the parameter block) and returns the
   number filled. */
/* the trained biases (PEFT's bias option): the last extra tensors */
static size_t bias_count(const lora_state *l, int n_layers)
{
    size_t n = 0;
    for (int i = 0; l->bias_off && i < n_layers * PEFT_MOD_COUNT; i++)
        n += l->bias_off[i] >= 0;
    return n;
}

static size_t extra_count(const lora_state *l, int n_layers)
{
    size_t n = (l->head_r > 0 ? 2 : 0) + (l->n_tok > 0) + (l->n_htok > 0) + (size_t)l->save_embed +
               (size_t)l->save_head;
    for (int i = 0; l->norm_off && l->method != PEFT_METHOD_NORMS && i <= n_layers * PEFT__NORM_SLOTS; i++)
        n += l->norm_off[i] >= 0;
    return n + bias_count(l, n_layers);
}

static size_t extra_tensors(const peft_model *m, st_out_tensor *ts, char *names)
{
    const lora_state *l = m->lora;
    const peft_config *c = &m->cfg;
    size_t n = 0;
#define EXTRA(d0, d1, off, ...)                                                                    \
    do {                                                                                           \
        snprintf(names + n * 128, 128, __VA_ARGS__);                                               \
        ts[n].name = names + n * 128;                                                              \
        ts[n].n_dims = 2;                                                                          \
        ts[n].shape[0] = (d0);                                                                     \
        ts[n].shape[1] = (d1);                                                                     \
        ts[n].data = l->params + (off);                                                            \
        if ((d1) == 0)                                                                             \
            ts[n].n_dims = 1;                                                                      \
        n++;                                                                                       \
    } while (0)
    if (l->head_r > 0) {
        EXTRA(l->head_r, c->dim, l->off_ha, "base_model.model.lm_head.lora_A.weight");
        EXTRA(c->vocab, l->head_r, l->off_hb, "base_model.model.lm_head.lora_B.weight");
    }
    if (l->n_tok > 0)
        EXTRA(l->n_tok, c->dim, l->off_tok, "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta");
    if (l->n_htok > 0)
        EXTRA(l->n_htok, c->dim, l->off_htok, "base_model.model.lm_head.token_adapter.trainable_tokens_delta");
    if (l->save_embed)
        EXTRA(c->vocab, c->dim, l->off_se, "base_model.model.model.embed_tokens.weight");
    if (l->save_head)
        EXTRA(c->vocab, c->dim, l->off_sh, "base_model.model.lm_head.weight");
    for (int i = 0; l->norm_off && l->method != PEFT_METHOD_NORMS && i <= c->n_layers * PEFT__NORM_SLOTS; i++) {
        if (l->norm_off[i] < 0)
            continue;
        if (i == c->n_layers * PEFT__NORM_SLOTS)
            EXTRA(c->dim, 0, (size_t)l->norm_off[i], "base_model.model.model.norm.weight");
        else
            EXTRA(peft__norm_width(c, i % PEFT__NORM_SLOTS), 0, (size_t)l->norm_off[i],
                  "base_model.model.model.layers.%d.%s.weight",
                  i / PEFT__NORM_SLOTS, peft__norm_name(peft__norm_bit(c, i % PEFT__NORM_SLOTS)));
    }
    /* biases: an adapted module's under its base_layer (PEFT wraps it), another's as it is */
    for (int i = 0; l->bias_off && i < c->n_layers * PEFT_MOD_COUNT; i++) {
        if (l->bias_off[i] < 0)
            continue;
        int k = i % PEFT_MOD_COUNT;
        EXTRA(m->layers[i / PEFT_MOD_COUNT].w[k].rows, 0, (size_t)l->bias_off[i],
              "base_model.model.model.layers.%d.%s.%s.%sbias", i / PEFT_MOD_COUNT, peft__module_parents[k],
              peft__mod_name(c, k), l->index[i] >= 0 ? "base_layer." : "");
    }
#undef EXTRA
    return n;
}

/* Read what the attachment trains beyond its modules (extra_tensors' names and shapes) from f;
   *n: how many. */
static int read_extras(const peft_model *m, st_file *f, const char *st_path, size_t *n)
{
    const lora_state *l = m->lora;
    *n = extra_count(l, m->cfg.n_layers);
    st_out_tensor *extra = calloc(*n + 1, sizeof *extra);
    char *names = malloc((*n + 1) * 128);
    int code = PEFT_OK;
    if (!extra || !names) {
        code = peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    extra_tensors(m, extra, names);
    /* a lora_only bias may be missing (PEFT before 0.19.2 saved none): the base one stays */
    size_t optional = l->bias_mode == PEFT_BIAS_LORA_ONLY ? *n - bias_count(l, m->cfg.n_layers) : *n;
    for (size_t i = 0; i < *n && !code; i++) {
        const st_tensor *t = st_find(f, extra[i].name);
        int64_t d1 = extra[i].n_dims > 1 ? extra[i].shape[1] : 1;
        if (!t && i >= optional)
            continue;
        if (!t)
            code = peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing", st_path, extra[i].name);
        else if (t->n_dims != extra[i].n_dims || t->shape[0] != extra[i].shape[0] ||
                 (t->n_dims > 1 && t->shape[1] != d1))
            code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' must have shape [%lld%s%lld]", st_path, extra[i].name,
                              (long long)extra[i].shape[0], extra[i].n_dims > 1 ? ", " : "",
                              extra[i].n_dims > 1 ? (long long)d1 : 0LL);
        else
            code = st_read_f32(f, t, (float *)extra[i].data, (uint64_t)(extra[i].shape[0] * d1));
    }
done:
    free(extra);
    free(names);
    return code;
}

/* modules_to_save of a LoRA attachment as PEFT matches them (name suffixes): null or a list */
static void jw_modules_to_save(struct jw *w, const lora_state *l, const peft_config *c)
{
    int first = 1, all = 1, n_layers = c->n_layers;
    for (int i = 0; i < n_layers; i++)
        all &= l->layer_on[i];
#define ITEM(...)                                                                                  \
    do {                                                                                           \
        jw_put(w, "%s\n    \"", first ? "[" : ",");                                               \
        jw_put(w, __VA_ARGS__);                                                                    \
        jw_put(w, "\"");                                                                           \
        first = 0;                                                                                 \
    } while (0)
    if (l->save_embed)
        ITEM("embed_tokens");
    if (l->save_head)
        ITEM("lm_head");
    for (int s = 0; s < PEFT__NORM_SLOTS && l->method != PEFT_METHOD_NORMS; s++) {
        uint32_t bit = peft__norm_bit(c, s);
        if (!(l->norms & bit))
            continue;
        if (all)
            ITEM("%s", peft__norm_name(bit));
        else
            for (int i = 0; i < n_layers; i++)
                if (l->layer_on[i])
                    ITEM("%slayers.%d.%s", peft__prefix(c), i, peft__norm_name(bit));
    }
    if (l->method != PEFT_METHOD_NORMS && (l->norms & PEFT_NORM_FINAL))
        ITEM("%snorm", peft__prefix(c));
#undef ITEM
    jw_put(w, first ? "null" : "\n  ]");
}

/* "exclude_modules" (a line, in its key order) when set: PEFT's string form, matched with re.fullmatch */
static void jw_exclude(struct jw *w, const lora_state *l)
{
    if (!l->exclude_regex)
        return;
    jw_put(w, "  \"exclude_modules\": ");
    jw_str(w, l->exclude_regex);
    jw_put(w, ",\n");
}

/* layers_to_transform: null when every layer is adapted, else the list */
static void jw_layers(struct jw *w, const lora_state *l, int n_layers)
{
    int all = 1, first = 1;
    for (int i = 0; i < n_layers; i++)
        all &= l->layer_on[i];
    if (all) {
        jw_put(w, "null");
        return;
    }
    jw_put(w, "[");
    for (int i = 0; i < n_layers; i++)
        if (l->layer_on[i]) {
            jw_put(w, "%s\n    %d", first ? "" : ",", i);
            first = 0;
        }
    jw_put(w, "\n  ]");
}

/* convert: a PiSSA/OLoRA adapter written as the plain LoRA of twice the rank (PEFT's
   path_initial_model_for_weight_conversion): r, patterns and alpha doubled (alpha x sqrt(2)
   with rsLoRA, and so the alpha_pattern values too, which keeps every module's scale; PEFT
   doubles those even with rsLoRA) */
static int write_config(const peft_model *m, const char *path, const char *base_name, int convert)
{
    const lora_state *l = m->lora;
    struct jw w = {0};
    double afac = !convert ? 1.0 : l->use_rslora ? sqrt(2.0) : 2.0;
    static const char *const inits[4] = {"true", "\"gaussian\"", "\"pissa\"", "\"olora\""};
    jw_put(&w, "{\n  \"alpha_pattern\": ");
    jw_pattern(&w, l->alpha_pattern, 0, afac);
    jw_put(&w, ",\n  \"base_model_name_or_path\": ");
    jw_str(&w, base_name);
    static const char *const bias_names[3] = {"none", "all", "lora_only"};
    jw_put(&w, ",\n  \"bias\": \"%s\",\n", bias_names[l->bias_mode]);
    jw_exclude(&w, l);
    jw_put(&w, "  \"fan_in_fan_out\": false,\n  \"inference_mode\": true,\n");
    jw_put(&w, "  \"init_lora_weights\": %s,\n", convert ? "true" : inits[l->init & 3]);
    jw_put(&w, "  \"layers_pattern\": null,\n  \"layers_to_transform\": ");
    if (l->target_regex) /* the expression names the layers */
        jw_put(&w, "null");
    else
        jw_layers(&w, l, m->cfg.n_layers);
    jw_put(&w, ",\n  \"lora_alpha\": ");
    jw_number(&w, (float)(l->alpha * afac));
    jw_put(&w, ",\n  \"lora_dropout\": ");
    jw_float(&w, l->dropout);
    jw_put(&w, ",\n  \"modules_to_save\": ");
    jw_modules_to_save(&w, l, &m->cfg);
    jw_put(&w, ",\n  \"peft_type\": \"LORA\",\n  \"r\": %d,\n", convert ? 2 * l->rank : l->rank);
    jw_put(&w, "  \"rank_pattern\": ");
    jw_pattern(&w, l->rank_pattern, 1, convert ? 2.0 : 1.0);
    jw_put(&w, ",\n  \"revision\": null,\n  \"target_modules\": ");
    if (l->target_regex) { /* PEFT: a string is matched with re.fullmatch */
        jw_str(&w, l->target_regex);
    } else {
        int first = 1;
        jw_put(&w, "[");
        first = peft__jw_mod_names(&w, &m->cfg, l->targets, first);
        if (l->embed_r > 0)
            jw_put(&w, "%s\n    \"embed_tokens\"", first ? "" : ",");
        if (l->head_r > 0)
            jw_put(&w, "%s\n    \"lm_head\"", first && l->embed_r <= 0 ? "" : ",");
        jw_put(&w, "\n  ]");
    }
    jw_put(&w, ",\n  \"task_type\": \"CAUSAL_LM\",\n");
    if (l->n_tok > 0 && l->n_htok == 0) { /* a list: rows of the input embeddings (and of a tied lm_head) */
        jw_put(&w, "  \"trainable_token_indices\": [");
        for (int i = 0; i < l->n_tok; i++)
            jw_put(&w, "%s\n    %d", i ? "," : "", l->tok_idx[i]);
        jw_put(&w, "\n  ],\n");
    } else if (l->n_htok > 0) { /* the dict form: {"embed_tokens": [...], "lm_head": [...]} */
        jw_put(&w, "  \"trainable_token_indices\": {");
        if (l->n_tok > 0) {
            jw_put(&w, "\n    \"embed_tokens\": [");
            for (int i = 0; i < l->n_tok; i++)
                jw_put(&w, "%s\n      %d", i ? "," : "", l->tok_idx[i]);
            jw_put(&w, "\n    ],");
        }
        jw_put(&w, "\n    \"lm_head\": [");
        for (int i = 0; i < l->n_htok; i++)
            jw_put(&w, "%s\n      %d", i ? "," : "", l->htok_idx[i]);
        jw_put(&w, "\n    ]\n  },\n");
    }
    jw_put(&w, "  \"use_dora\": %s,\n", l->use_dora ? "true" : "false");
    jw_put(&w, "  \"use_rslora\": %s\n}", l->use_rslora ? "true" : "false");
    return peft__jw_write_atomic(&w, path);
}

static int write_config_ia3(const peft_model *m, const char *path, const char *base_name)
{
    const lora_state *l = m->lora;
    struct jw w = {0};
    int all_layers = 1, first = 1;
    for (int i = 0; i < m->cfg.n_layers; i++)
        all_layers &= l->layer_on[i];
    jw_put(&w, "{\n  \"base_model_name_or_path\": ");
    jw_str(&w, base_name);
    jw_put(&w, ",\n  \"fan_in_fan_out\": false,\n  \"feedforward_modules\": [");
    first = peft__jw_mod_names(&w, &m->cfg, l->feedforward, first);
    jw_put(&w, first ? "],\n" : "\n  ],\n");
    jw_put(&w, "  \"inference_mode\": true,\n  \"init_ia3_weights\": true,\n  \"modules_to_save\": ");
    jw_modules_to_save(&w, l, &m->cfg);
    jw_put(&w, ",\n  \"peft_type\": \"IA3\",\n  \"revision\": null,\n  \"target_modules\": [");
    /* all layers: module names; a subset: full module paths, which PEFT matches exactly */
    first = 1;
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        if (all_layers) {
            if (md->layer != 0)
                continue;
            jw_put(&w, "%s\n    \"%s\"", first ? "" : ",", peft__mod_name(&m->cfg, md->kind));
        } else {
            jw_put(&w, "%s\n    \"%slayers.%d.%s.%s\"", first ? "" : ",", peft__prefix(&m->cfg), md->layer,
                   peft__module_parents[md->kind], peft__mod_name(&m->cfg, md->kind));
        }
        first = 0;
    }
    jw_put(&w, "\n  ],\n  \"task_type\": \"CAUSAL_LM\"\n}");
    return peft__jw_write_atomic(&w, path);
}

int peft__keep_or_restore(peft_model *m, lora_state *saved, int code)
{
    if (code) {
        peft__lora_free(m->lora);
        m->lora = saved;
        return code;
    }
    peft__lora_free(saved);
    return PEFT_OK;
}

/* The end of loading into a new attachment (m->lora; saved: the one it replaces): the file
   holds exactly the expected tensors, the weights are finite, and a replaced attachment had
   the same layout; then keep the new one, or put the old one back. Closes f. */
static int finish_load(peft_model *m, lora_state *saved, st_file *f, int code, size_t expected, const char *st_path,
                       const char *dir)
{
    const lora_state *l = m->lora;
    if (!code && f->n_tensors != expected)
        code = peft__fail(PEFT_EFORMAT, "%s: %zu tensors, but adapter_config.json describes %zu", st_path, f->n_tensors,
                          expected);
    for (size_t i = 0; !code && i < l->n_params; i++)
        if (!isfinite(l->params[i]))
            code = peft__fail(PEFT_ENUMERIC, "%s: adapter weights contain NaN or Inf", st_path);
    if (!code && saved && (saved->method != l->method || saved->n_params != l->n_params))
        code = peft__fail(PEFT_ESHAPE, "%s: adapter layout differs from the attached one", dir);
    st_close(f);
    return peft__keep_or_restore(m, saved, code);
}

/* The end of loading a one-tensor adapter (prompt tuning, trainable tokens) into l, built for
   it: the file holds exactly `key` (d0, d1), finite; l then becomes the attachment, replacing
   a matching m->lora (optimizer state and all). l is freed unless installed. */
int peft__load_single(peft_model *m, lora_state *l, const char *st_path, const char *key, int64_t d0, int64_t d1,
                      const char *what)
{
    st_file *f = NULL;
    int code = peft__adapter_open(&f, st_path);
    const st_tensor *t = code ? NULL : st_find(f, key);
    if (!code && !t)
        code = peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing", st_path, key);
    else if (!code && (t->n_dims != 2 || t->shape[0] != d0 || t->shape[1] != d1))
        code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' must have shape [%lld, %lld]", st_path, key, (long long)d0,
                          (long long)d1);
    else if (!code && f->n_tensors != 1)
        code = peft__fail(PEFT_EFORMAT, "%s: %zu tensors; a %s adapter holds only '%s'", st_path, f->n_tensors, what,
                          key);
    else if (!code)
        code = st_read_f32(f, t, l->params, l->n_params);
    for (size_t i = 0; !code && i < l->n_params; i++)
        if (!isfinite(l->params[i]))
            code = peft__fail(PEFT_ENUMERIC, "%s: adapter weights contain NaN or Inf", st_path);
    st_close(f);
    if (code) {
        peft__lora_free(l);
        return code;
    }
    /* it replaces a matching attachment (the callers checked the layout) as every load does: the
       weights are the file's, the optimizer state starts afresh */
    peft__lora_free(m->lora);
    m->lora = NULL;
    return peft__state_install(m, l, NULL);
}

/* ---- VeRA (PEFT VERA) ---- */

static int targets_and_layers(const peft_config *c, const json_value *root, uint32_t *targets, int embed_ok,
                              char *layers, size_t cap, const char *path);

#define VERA_A_KEY "base_model.vera_A"
#define VERA_B_KEY "base_model.vera_B"

static void vera_key(const peft_config *c, char *buf, size_t n, const lora_module *md, char which)
{
    peft__module_tensor(c, buf, n, md->layer, md->kind, which == 'd' ? "vera_lambda_d" : "vera_lambda_b");
}

static int save_vera(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name)
{
    const lora_state *l = m->lora;
    size_t n_extra = extra_count(l, m->cfg.n_layers), nt = (size_t)l->n_modules * 2 + 2 + n_extra;
    st_out_tensor *ts = calloc(nt, sizeof *ts);
    char *names = calloc(nt, 128);
    struct jw w = {0};
    int code, first = 1;
    if (!ts || !names) {
        free(ts);
        free(names);
        return peft__fail(PEFT_ENOMEM, "out of memory");
    }
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        for (int b = 0; b < 2; b++) {
            st_out_tensor *t = &ts[2 * i + b];
            vera_key(&m->cfg, names + (size_t)(2 * i + b) * 128, 128, md, b ? 'b' : 'd');
            t->name = names + (size_t)(2 * i + b) * 128;
            t->n_dims = 1;
            t->shape[0] = b ? md->out : md->r;
            t->data = l->params + (b ? md->off_b : md->off_a);
        }
    }
    size_t k2 = (size_t)l->n_modules * 2;
    ts[k2] = (st_out_tensor){.name = VERA_A_KEY, .n_dims = 2, .shape = {l->rank, l->vera_in}, .data = l->vera_A};
    ts[k2 + 1] = (st_out_tensor){.name = VERA_B_KEY, .n_dims = 2, .shape = {l->vera_out, l->rank}, .data = l->vera_B};
    extra_tensors(m, ts + k2 + 2, names + (k2 + 2) * 128); /* modules_to_save */
    jw_put(&w, "{\n  \"base_model_name_or_path\": ");
    jw_str(&w, base_name);
    jw_put(&w, ",\n  \"bias\": \"none\",\n  \"d_initial\": ");
    jw_float(&w, l->vera_d_initial);
    jw_put(&w, ",\n  \"fan_in_fan_out\": false,\n  \"inference_mode\": true,\n  \"init_weights\": true,\n"
               "  \"layers_pattern\": null,\n  \"layers_to_transform\": ");
    jw_layers(&w, l, m->cfg.n_layers);
    jw_put(&w, ",\n  \"modules_to_save\": ");
    jw_modules_to_save(&w, l, &m->cfg);
    jw_put(&w, ",\n  \"peft_type\": \"VERA\",\n  \"projection_prng_key\": %llu,\n"
               "  \"r\": %d,\n  \"revision\": null,\n  \"save_projection\": true,\n  \"target_modules\": [",
           (unsigned long long)l->seed, l->rank);
    first = 1;
    first = peft__jw_mod_names(&w, &m->cfg, l->targets, first);
    jw_put(&w, "\n  ],\n  \"task_type\": \"CAUSAL_LM\",\n  \"vera_dropout\": ");
    jw_float(&w, l->dropout);
    jw_put(&w, "\n}");
    code = peft__write_adapter(&m->cfg, st_path, ts, nt, cfg_path, &w);
    free(ts);
    free(names);
    return code;
}

/* Read a named F32-convertible tensor of the given shape (d1 0: one dimension). */
static int read_shaped(st_file *f, const char *key, int64_t d0, int64_t d1, float *dst, const char *path)
{
    const st_tensor *t = st_find(f, key);
    if (!t)
        return peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing", path, key);
    if (t->n_dims != (d1 ? 2 : 1) || t->shape[0] != d0 || (d1 && t->shape[1] != d1))
        return peft__fail(PEFT_ESHAPE, "%s: tensor '%s' must have shape [%lld%s%lld]", path, key, (long long)d0,
                          d1 ? ", " : "", d1 ? (long long)d1 : 0LL);
    return st_read_f32(f, t, dst, (uint64_t)(d0 * (d1 ? d1 : 1)));
}

static int load_vera(peft_model *m, const char *dir, const json_value *root, const char *cfg_path, const char *st_path)
{
    peft_vera_options o = PEFT_VERA_OPTIONS_INIT;
    char layers[8192];
    const json_value *v = json_get(root, "r");
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->number < 1 || v->number > 65536)
        return peft__fail(PEFT_EFORMAT, "%s: \"r\" must be an integer in 1..65536", cfg_path);
    o.rank = (int32_t)v->number;
    v = json_get(root, "save_projection");
    if (v && v->type == JSON_BOOL && !v->boolean)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: save_projection is false: the projections would have to be regenerated "
                                             "from PyTorch's random generator, which libpeft does not reproduce", cfg_path);
    if ((v = json_get(root, "d_initial")) && v->type == JSON_NUMBER)
        o.d_initial = (float)v->number;
    if ((v = json_get(root, "vera_dropout")) && v->type == JSON_NUMBER)
        o.dropout = (float)v->number;
    if ((v = json_get(root, "projection_prng_key")) && v->type == JSON_NUMBER && v->number >= 0)
        o.seed = (uint64_t)v->number;
    if ((v = json_get(root, "bias")) && v->type == JSON_STRING && strcmp(v->string, "none") != 0)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: bias \"%s\" is not supported yet", cfg_path, v->string);
    int code = targets_and_layers(&m->cfg, root, &o.targets, 0, layers, sizeof layers, cfg_path);
    peft_lora_options side = PEFT_LORA_OPTIONS_INIT; /* modules_to_save and norms */
    side.modules_to_save = 0;
    if (!code)
        code = peft__read_modules_to_save(json_get(root, "modules_to_save"), &side, layers, cfg_path);
    if (code)
        return code;
    o.modules_to_save = side.modules_to_save;
    o.norms = side.norms;
    o.layers = layers[0] ? layers : NULL;
    st_file *f = NULL;
    if ((code = peft__adapter_open(&f, st_path)))
        return code;
    lora_state *saved = m->lora;
    m->lora = NULL;
    if ((code = peft_attach_vera(m, &o, NULL))) {
        m->lora = saved;
        st_close(f);
        return peft__context(code, cfg_path);
    }
    lora_state *l = m->lora;
    char key[160];
    for (int i = 0; i < l->n_modules && !code; i++) {
        const lora_module *md = &l->mods[i];
        vera_key(&m->cfg, key, sizeof key, md, 'd');
        code = read_shaped(f, key, md->r, 0, l->params + md->off_a, st_path);
        vera_key(&m->cfg, key, sizeof key, md, 'b');
        if (!code)
            code = read_shaped(f, key, md->out, 0, l->params + md->off_b, st_path);
    }
    if (!code)
        code = read_shaped(f, VERA_A_KEY, l->rank, l->vera_in, l->vera_A, st_path);
    if (!code)
        code = read_shaped(f, VERA_B_KEY, l->vera_out, l->rank, l->vera_B, st_path);
    size_t n_extra = 0;
    if (!code)
        code = read_extras(m, f, st_path, &n_extra);
    return finish_load(m, saved, f, code, (size_t)l->n_modules * 2 + 2 + n_extra, st_path, dir);
}

/* ---- LoHa (PEFT LOHA) and LoKr (PEFT LOKR): factor tensors of one module ---- */

/* Tensor t of module md (t < the count returned for t = -1): its name, shape and offset from
   the module's block. Returns the number of tensors of the module. */
static int factor_tensor(const peft_config *c, const lora_state *l, const lora_module *md, int t, char *name,
                         size_t cap, int64_t *d0, int64_t *d1, size_t *off)
{
    static const char *const hada[4] = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"};
    int64_t r = md->r, in = md->in, out = md->out;
    const char *suffix;
    int count;
    if (l->method == PEFT_METHOD_LOHA) {
        count = 4;
        if (t < 0)
            return count;
        suffix = hada[t];
        *d0 = t % 2 ? r : out;
        *d1 = t % 2 ? in : r;
        *off = (size_t)((t >= 1 ? out * r : 0) + (t >= 2 ? r * in : 0) + (t >= 3 ? out * r : 0));
    } else {
        lokr_dims d;
        peft__lokr_dims(&d, md->in, md->out, md->r);
        count = d.full ? 2 : 3;
        if (t < 0)
            return count;
        size_t n1 = (size_t)d.l * (size_t)d.m;
        if (t == 0) {
            suffix = "lokr_w1";
            *d0 = d.l, *d1 = d.m, *off = 0;
        } else if (d.full) {
            suffix = "lokr_w2";
            *d0 = d.k, *d1 = d.n, *off = n1;
        } else if (t == 1) {
            suffix = "lokr_w2_a";
            *d0 = d.k, *d1 = r, *off = n1;
        } else {
            suffix = "lokr_w2_b";
            *d0 = r, *d1 = d.n, *off = n1 + (size_t)(d.k * r);
        }
    }
    peft__module_tensor(c, name, cap, md->layer, md->kind, suffix);
    return count;
}

static int save_loha(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name)
{
    const lora_state *l = m->lora;
    int lokr = l->method == PEFT_METHOD_LOKR;
    size_t nt = 0, n_extra = extra_count(l, m->cfg.n_layers);
    for (int i = 0; i < l->n_modules; i++)
        nt += (size_t)factor_tensor(&m->cfg, l, &l->mods[i], -1, NULL, 0, NULL, NULL, NULL);
    nt += n_extra; /* modules_to_save (embeddings, lm_head, norms) after the factors */
    st_out_tensor *ts = calloc(nt ? nt : 1, sizeof *ts);
    char *names = calloc(nt ? nt : 1, 128);
    struct jw w = {0};
    int code, first = 1;
    if (!ts || !names) {
        free(ts);
        free(names);
        return peft__fail(PEFT_ENOMEM, "out of memory");
    }
    size_t kt = 0;
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        int cnt = factor_tensor(&m->cfg, l, md, -1, NULL, 0, NULL, NULL, NULL);
        for (int t = 0; t < cnt; t++, kt++) {
            st_out_tensor *o = &ts[kt];
            size_t off;
            factor_tensor(&m->cfg, l, md, t, names + kt * 128, 128, &o->shape[0], &o->shape[1], &off);
            o->name = names + kt * 128;
            o->n_dims = 2;
            o->data = l->params + md->off_a + off;
        }
    }
    extra_tensors(m, ts + kt, names + kt * 128);
    jw_put(&w, "{\n  \"alpha\": ");
    jw_number(&w, l->alpha);
    jw_put(&w, ",\n  \"alpha_pattern\": ");
    jw_pattern(&w, l->alpha_pattern, 0, 1.0);
    jw_put(&w, ",\n  \"base_model_name_or_path\": ");
    jw_str(&w, base_name);
    if (lokr)
        jw_put(&w, ",\n  \"decompose_both\": false,\n  \"decompose_factor\": -1");
    jw_put(&w, ",\n");
    jw_exclude(&w, l);
    jw_put(&w, "  \"inference_mode\": true,\n  \"init_weights\": true,\n  \"layers_pattern\": null,\n"
               "  \"layers_to_transform\": ");
    jw_layers(&w, l, m->cfg.n_layers);
    jw_put(&w, ",\n  \"module_dropout\": 0.0,\n  \"modules_to_save\": ");
    jw_modules_to_save(&w, l, &m->cfg);
    jw_put(&w, ",\n  \"peft_type\": \"%s\",\n  \"r\": %d,\n  \"rank_dropout\": 0.0,\n%s  \"rank_pattern\": ",
           lokr ? "LOKR" : "LOHA", l->rank, lokr ? "  \"rank_dropout_scale\": false,\n" : "");
    jw_pattern(&w, l->rank_pattern, 1, 1.0);
    jw_put(&w, ",\n  \"revision\": null,\n  \"target_modules\": [");
    first = 1;
    first = peft__jw_mod_names(&w, &m->cfg, l->targets, first);
    jw_put(&w, "\n  ],\n  \"task_type\": \"CAUSAL_LM\",\n  \"use_effective_conv2d\": false\n}");
    code = peft__write_adapter(&m->cfg, st_path, ts, nt, cfg_path, &w);
    free(ts);
    free(names);
    return code;
}

static int pattern_from_json(const json_value *v, char *buf, size_t cap, const char *what, const char *path);
static int read_exclude(const json_value *v, char **out, const char *path);

static int load_loha(peft_model *m, const char *dir, const json_value *root, const char *cfg_path, const char *st_path,
                     int lokr)
{
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    o.variant = lokr ? PEFT_VARIANT_LOKR : PEFT_VARIANT_LOHA;
    static const char *const zero_keys[2] = {"rank_dropout", "module_dropout"};
    char layers[8192], rpat[8192], apat[8192];
    const json_value *v = json_get(root, "r");
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->number < 1 || v->number > 65536)
        return peft__fail(PEFT_EFORMAT, "%s: \"r\" must be an integer in 1..65536", cfg_path);
    o.rank = (int32_t)v->number;
    o.alpha = (float)o.rank;
    if ((v = json_get(root, "alpha")) && v->type == JSON_NUMBER)
        o.alpha = (float)v->number;
    for (int k = 0; k < 2; k++)
        if ((v = json_get(root, zero_keys[k])) && v->type == JSON_NUMBER && v->number != 0)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: %s %s is not supported yet (0 only)", cfg_path,
                              lokr ? "LoKr" : "LoHa", zero_keys[k]);
    if (lokr && (((v = json_get(root, "decompose_both")) && v->type == JSON_BOOL && v->boolean) ||
                 ((v = json_get(root, "decompose_factor")) && v->type == JSON_NUMBER && v->number != -1)))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: LoKr with decompose_both or a decompose_factor other than -1 is "
                                             "not supported yet", cfg_path);
    char *exclude = NULL;
    int code = targets_and_layers(&m->cfg, root, &o.targets, 0, layers, sizeof layers, cfg_path);
    if (!code)
        code = read_exclude(json_get(root, "exclude_modules"), &exclude, cfg_path);
    o.exclude_regex = exclude;
    if (!code)
        code = pattern_from_json(json_get(root, "rank_pattern"), rpat, sizeof rpat, "rank_pattern", cfg_path);
    if (!code)
        code = pattern_from_json(json_get(root, "alpha_pattern"), apat, sizeof apat, "alpha_pattern", cfg_path);
    if (!code)
        code = peft__read_modules_to_save(json_get(root, "modules_to_save"), &o, layers, cfg_path);
    o.layers = layers[0] ? layers : NULL;
    o.rank_pattern = rpat[0] ? rpat : NULL;
    o.alpha_pattern = apat[0] ? apat : NULL;
    st_file *f = NULL;
    if (!code)
        code = peft__adapter_open(&f, st_path);
    lora_state *saved = m->lora;
    m->lora = NULL;
    if (!code && (code = peft_attach_lora(m, &o, NULL)))
        st_close(f);
    free(exclude); /* the attachment keeps its copy */
    if (code) {
        m->lora = saved;
        return peft__context(code, cfg_path);
    }
    lora_state *l = m->lora;
    char key[160];
    size_t expected = 0;
    for (int i = 0; i < l->n_modules && !code; i++) {
        const lora_module *md = &l->mods[i];
        int cnt = factor_tensor(&m->cfg, l, md, -1, NULL, 0, NULL, NULL, NULL);
        expected += (size_t)cnt;
        for (int t = 0; t < cnt && !code; t++) {
            int64_t d0, d1;
            size_t off;
            factor_tensor(&m->cfg, l, md, t, key, sizeof key, &d0, &d1, &off);
            code = read_shaped(f, key, d0, d1, l->params + md->off_a + off, st_path);
        }
    }
    size_t n_extra = 0;
    if (!code)
        code = read_extras(m, f, st_path, &n_extra);
    return finish_load(m, saved, f, code, expected + n_extra, st_path, dir);
}

int peft_save_adapter(peft_model *m, const char *dir, const peft_save_options *opts)
{
    if (!m || !dir)
        return peft__fail(PEFT_EINVAL, "peft_save_adapter: NULL argument");
    if (opts && (opts->version == 0 || opts->version > PEFT_SAVE_OPTIONS_VERSION))
        return peft__fail(PEFT_EINVAL, "peft_save_adapter: unknown options version %u", opts->version);
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_save_adapter: no adapter attached");
    const lora_state *l = m->lora;
    for (size_t i = 0; i < l->n_params; i++)
        if (!isfinite(l->params[i]))
            return peft__fail(PEFT_ENUMERIC, "peft_save_adapter: adapter holds NaN/Inf; not saved");
    int code = peft__mkdirs(dir);
    if (code)
        return code;
    if (l->method == PEFT_METHOD_NORMS || l->method == PEFT_METHOD_VERA || l->method == PEFT_METHOD_LOHA ||
        l->method == PEFT_METHOD_LOKR || l->method == PEFT_METHOD_PROMPT || l->method == PEFT_METHOD_TOKENS) {
        code = peft__mkdirs(dir);
        char *sp = peft__path_join(dir, "adapter_model.safetensors"), *cp = peft__path_join(dir, "adapter_config.json");
        const char *base = opts && opts->base_model_name_or_path ? opts->base_model_name_or_path : m->path;
        if (!code)
            code = !sp || !cp ? peft__fail(PEFT_ENOMEM, "out of memory")
                   : l->method == PEFT_METHOD_VERA ? save_vera(m, sp, cp, base)
                   : l->method == PEFT_METHOD_LOHA || l->method == PEFT_METHOD_LOKR ? save_loha(m, sp, cp, base)
                   : l->method == PEFT_METHOD_PROMPT                               ? peft__save_prompt(m, sp, cp, base)
                   : l->method == PEFT_METHOD_TOKENS                               ? peft__save_tokens(m, sp, cp, base)
                                                   : peft__save_norms(m, sp, cp, base);
        free(sp);
        free(cp);
        return code;
    }
    int ia3 = l->method == PEFT_METHOD_IA3;
    int per = ia3 ? 1 : l->use_dora ? 3 : 2;
    float *conv = NULL;
    size_t n_extra = extra_count(l, m->cfg.n_layers);
    size_t n_ts = (size_t)l->n_modules * (size_t)per + (l->embed_r > 0 ? 2 : 0) + n_extra;
    st_out_tensor *ts = calloc(n_ts, sizeof *ts);
    char *names = malloc(((size_t)l->n_modules * (size_t)per + n_extra + 1) * 128);
    char *st_path = peft__path_join(dir, "adapter_model.safetensors");
    char *cfg_path = peft__path_join(dir, "adapter_config.json");
    if (!ts || !names || !st_path || !cfg_path) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_adapter: out of memory");
        goto done;
    }
    /* PiSSA/OLoRA as plain LoRA: per module A' = [A; A0] (2r, in), B' = [B, -B0] (out, 2r) */
    int convert = opts && opts->version >= 2 && opts->convert_to_lora && l->res && !ia3;
    if (convert && !(conv = peft__alloc_floats(2 * l->mods_end))) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_adapter: out of memory");
        goto done;
    }
    for (int i = 0; convert && i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        size_t r = (size_t)md->r, in = (size_t)md->in;
        float *a2 = conv + 2 * md->off_a, *b2 = conv + 2 * md->off_b;
        memcpy(a2, l->params + md->off_a, r * in * sizeof(float));
        memcpy(a2 + r * in, l->init_ab + md->off_a, r * in * sizeof(float));
        for (int o = 0; o < md->out; o++)
            for (size_t k = 0; k < 2 * r; k++)
                b2[(size_t)o * 2 * r + k] = k < r ? l->params[md->off_b + (size_t)o * r + k]
                                                  : -l->init_ab[md->off_b + (size_t)o * r + (k - r)];
    }
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        if (ia3) {
            st_out_tensor *t = &ts[i];
            t->name = peft__module_key(&m->cfg, names + (size_t)i * 128, 128, md->layer, md->kind, 3);
            t->n_dims = 2;
            t->shape[0] = md->ia3_ff ? 1 : md->out; /* PEFT: (1, in) feedforward, (out, 1) otherwise */
            t->shape[1] = md->ia3_ff ? md->in : 1;
            t->data = l->params + md->off_a;
            continue;
        }
        for (int b = 0; b < per; b++) {
            st_out_tensor *t = &ts[per * i + b];
            t->name = peft__module_key(&m->cfg, names + (size_t)(per * i + b) * 128, 128, md->layer, md->kind, b);
            if (b == 2) {
                t->n_dims = 1;
                t->shape[0] = md->out;
                t->data = l->params + md->off_m;
                continue;
            }
            t->n_dims = 2;
            t->shape[0] = b ? md->out : md->r * (convert + 1);
            t->shape[1] = b ? md->r * (convert + 1) : md->in;
            t->data = convert ? conv + 2 * (b ? md->off_b : md->off_a) : l->params + (b ? md->off_b : md->off_a);
        }
    }
    if (l->embed_r > 0) {
        st_out_tensor *t = &ts[(size_t)l->n_modules * (size_t)per];
        t[0].name = EMBED_A_KEY;
        t[0].n_dims = 2;
        t[0].shape[0] = l->embed_r;
        t[0].shape[1] = m->cfg.vocab;
        t[0].data = l->params + l->off_ea;
        t[1].name = EMBED_B_KEY;
        t[1].n_dims = 2;
        t[1].shape[0] = m->cfg.dim;
        t[1].shape[1] = l->embed_r;
        t[1].data = l->params + l->off_eb;
    }
    if (n_extra)
        extra_tensors(m, ts + n_ts - n_extra, names + (size_t)l->n_modules * (size_t)per * 128);
    code = write_tensors(&m->cfg, st_path, ts, n_ts);
    if (!code) {
        const char *base = opts && opts->base_model_name_or_path ? opts->base_model_name_or_path : m->path;
        code = ia3 ? write_config_ia3(m, cfg_path, base) : write_config(m, cfg_path, base, convert);
    }
done:
    free(ts);
    free(names);
    free(st_path);
    free(cfg_path);
    peft__free(conv);
    return code;
}

/* ---- loading ---- */

static int kind_of(const peft_config *c, const char *name)
{
    for (int k = 0; k < PEFT_MOD_COUNT; k++)
        if (peft__has_mod(c, k) && strcmp(name, peft__mod_name(c, k)) == 0)
            return k;
    return -1;
}

/* A JSON object of numbers -> "key=value,..." (file order: the first match wins, as in PEFT). */
static int pattern_from_json(const json_value *v, char *buf, size_t cap, const char *what, const char *path)
{
    buf[0] = '\0';
    if (!v || v->type == JSON_NULL)
        return PEFT_OK;
    if (v->type != JSON_OBJECT)
        return peft__fail(PEFT_EFORMAT, "%s: %s is not an object", path, what);
    size_t n = 0;
    for (size_t i = 0; i < v->length; i++) {
        if (v->items[i].type != JSON_NUMBER || strchr(v->keys[i], ',') || strchr(v->keys[i], '='))
            return peft__fail(PEFT_EFORMAT, "%s: bad %s entry '%s'", path, what, v->keys[i]);
        int k = snprintf(buf + n, cap - n, "%s%s=%.9g", n ? "," : "", v->keys[i], v->items[i].number);
        if (k < 0 || (size_t)k >= cap - n)
            return peft__fail(PEFT_EFORMAT, "%s: %s too long", path, what);
        n += (size_t)k;
    }
    return PEFT_OK;
}

/* target_modules (a list of module names, or "all-linear") and layers_to_transform (null, a
   number or a list) of a LoRA or VeRA adapter_config.json; layers receives "N,M,..." or "". */
static int targets_and_layers(const peft_config *c, const json_value *root, uint32_t *targets, int embed_ok,
                              char *layers, size_t cap, const char *path)
{
    const json_value *v = json_get(root, "target_modules");
    *targets = 0;
    if (v && v->type == JSON_STRING && strcmp(v->string, "all-linear") != 0 && embed_ok) {
        layers[0] = '\0'; /* a regular expression: the caller reads it */
        return PEFT_OK;
    }
    if (v && v->type == JSON_STRING && strcmp(v->string, "all-linear") == 0) {
        *targets = PEFT_TARGET_ALL_LINEAR;
    } else if (v && v->type == JSON_ARRAY && v->length > 0) {
        for (size_t i = 0; i < v->length; i++) {
            const json_value *it = &v->items[i];
            if (embed_ok && it->type == JSON_STRING && strcmp(it->string, "embed_tokens") == 0) {
                *targets |= PEFT_TARGET_EMBED;
                continue;
            }
            if (embed_ok && it->type == JSON_STRING && strcmp(it->string, "lm_head") == 0) {
                *targets |= PEFT_TARGET_LM_HEAD;
                continue;
            }
            int k = it->type == JSON_STRING ? kind_of(c, it->string) : -1;
            if (k < 0) {
                char names[160] = "";
                for (int j = 0, n = 0; j < PEFT_MOD_COUNT; j++) /* the model's own: Phi-3 has qkv_proj, ... */
                    if (peft__has_mod(c, j))
                        n += snprintf(names + n, sizeof names - (size_t)n, "%s%s", n ? ", " : "", peft__mod_name(c, j));
                return peft__fail(PEFT_EUNSUPPORTED, "%s: target module \"%s\" is not a module of this model (%s%s)",
                                  path, it->type == JSON_STRING ? it->string : "?", names,
                                  embed_ok ? ", embed_tokens, lm_head" : "");
            }
            *targets |= 1u << k;
        }
    } else {
        return peft__fail(PEFT_EUNSUPPORTED, "%s: \"target_modules\" must be a list of module names or \"all-linear\"",
                          path);
    }
    v = json_get(root, "layers_to_transform");
    layers[0] = '\0';
    if (v && v->type == JSON_NUMBER && v->is_integer && v->number >= 0 && v->number <= 1e6) {
        snprintf(layers, cap, "%d", (int)v->number);
    } else if (v && v->type == JSON_ARRAY) {
        size_t n = 0;
        for (size_t i = 0; i < v->length; i++) {
            const json_value *it = &v->items[i];
            if (it->type != JSON_NUMBER || !it->is_integer || it->number < 0 || it->number > 1e6)
                return peft__fail(PEFT_EFORMAT, "%s: bad entry in layers_to_transform", path);
            int k = snprintf(layers + n, cap - n, "%s%d", n ? "," : "", (int)it->number);
            if (k < 0 || (size_t)k >= cap - n)
                return peft__fail(PEFT_EFORMAT, "%s: layers_to_transform too long", path);
            n += (size_t)k;
        }
    } else if (v && v->type != JSON_NULL) {
        return peft__fail(PEFT_EFORMAT, "%s: bad layers_to_transform", path);
    }
    return PEFT_OK;
}

/* PEFT's exclude_modules as the expression of peft_lora_options.exclude_regex in *out (malloc'ed,
   or NULL when unset): a string is one already (re.fullmatch); a list of names excludes the
   modules named so or ending with "." + a name, (.*\.)?(name|...) with the names escaped */
static int read_exclude(const json_value *v, char **out, const char *path)
{
    *out = NULL;
    if (!v || v->type == JSON_NULL || (v->type == JSON_ARRAY && v->length == 0) ||
        (v->type == JSON_STRING && !v->string[0]))
        return PEFT_OK;
    if (v->type == JSON_STRING)
        return (*out = strdup(v->string)) ? PEFT_OK : peft__fail(PEFT_ENOMEM, "out of memory");
    if (v->type != JSON_ARRAY)
        return peft__fail(PEFT_EFORMAT, "%s: \"exclude_modules\" is neither a string nor a list of names", path);
    size_t n = 16;
    for (size_t i = 0; i < v->length; i++) {
        if (v->items[i].type != JSON_STRING || !v->items[i].string[0])
            return peft__fail(PEFT_EFORMAT, "%s: \"exclude_modules\" holds something other than a module name", path);
        n += 2 * strlen(v->items[i].string) + 1;
    }
    char *re = malloc(n), *o = re;
    if (!re)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    o += sprintf(o, "(.*\\.)?(");
    for (size_t i = 0; i < v->length; i++) {
        if (i)
            *o++ = '|';
        for (const char *c = v->items[i].string; *c; c++) {
            if (strchr(".^$*+?()[]{}|\\", *c))
                *o++ = '\\';
            *o++ = *c;
        }
    }
    *o++ = ')';
    *o = '\0';
    *out = re;
    return PEFT_OK;
}

int peft__read_lora_config(const peft_config *c, peft_lora_options *o, char *layers, size_t layers_cap,
                           int32_t **tok, char **regex, char **exclude, const char *path)
{
    char *text;
    size_t len;
    int code = peft__read_file(&text, &len, path, 1u << 20);
    if (code)
        return code;
    json_doc *doc;
    code = json_parse(&doc, text, len, path);
    free(text);
    if (code)
        return code;
    const json_value *root = json_root(doc);
    const json_value *v;
#define FAIL(c, ...)                                                                               \
    do {                                                                                           \
        code = peft__fail(c, __VA_ARGS__);                                                         \
        goto done;                                                                                 \
    } while (0)
    if (root->type != JSON_OBJECT)
        FAIL(PEFT_EFORMAT, "%s: not a JSON object", path);
    v = json_get(root, "peft_type");
    if (!v || v->type != JSON_STRING)
        FAIL(PEFT_EFORMAT, "%s: missing \"peft_type\"", path);
    if (strcmp(v->string, "LORA") != 0)
        FAIL(PEFT_EUNSUPPORTED, "%s: peft_type \"%s\" is not supported yet (LORA, LOHA, LOKR, IA3, LN_TUNING, VERA, PROMPT_TUNING, TRAINABLE_TOKENS)", path, v->string);
    v = json_get(root, "r");
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->number < 1 || v->number > 65536)
        FAIL(PEFT_EFORMAT, "%s: \"r\" must be an integer in 1..65536", path);
    o->rank = (int)v->number;
    v = json_get(root, "lora_alpha");
    o->alpha = (float)o->rank;
    if (v && v->type == JSON_NUMBER)
        o->alpha = (float)v->number;
    else if (v && v->type != JSON_NULL)
        FAIL(PEFT_EFORMAT, "%s: \"lora_alpha\" is not a number", path);
    v = json_get(root, "lora_dropout");
    if (v && v->type == JSON_NUMBER)
        o->dropout = (float)v->number;
    v = json_get(root, "use_rslora");
    o->use_rslora = v && v->type == JSON_BOOL && v->boolean;
    v = json_get(root, "use_dora");
    o->use_dora = v && v->type == JSON_BOOL && v->boolean;
    v = json_get(root, "bias");
    if (v && v->type == JSON_STRING) {
        if (!strcmp(v->string, "all"))
            o->bias = PEFT_BIAS_ALL;
        else if (!strcmp(v->string, "lora_only"))
            o->bias = PEFT_BIAS_LORA_ONLY;
        else if (strcmp(v->string, "none") != 0)
            FAIL(PEFT_EFORMAT, "%s: bias \"%s\" is not one of \"none\", \"all\", \"lora_only\"", path, v->string);
    } else if (v && v->type != JSON_NULL)
        FAIL(PEFT_EFORMAT, "%s: \"bias\" is not a string", path);
    if ((code = pattern_from_json(json_get(root, "rank_pattern"), layers + layers_cap / 2, layers_cap / 4,
                                  "rank_pattern", path)) ||
        (code = pattern_from_json(json_get(root, "alpha_pattern"), layers + layers_cap / 2 + layers_cap / 4,
                                  layers_cap / 4, "alpha_pattern", path)))
        goto done;
    o->rank_pattern = layers[layers_cap / 2] ? layers + layers_cap / 2 : NULL;
    o->alpha_pattern = layers[layers_cap / 2 + layers_cap / 4] ? layers + layers_cap / 2 + layers_cap / 4 : NULL;
    v = json_get(root, "fan_in_fan_out");
    if (v && v->type == JSON_BOOL && v->boolean)
        FAIL(PEFT_EUNSUPPORTED, "%s: fan_in_fan_out is not used by Llama models", path);
    v = json_get(root, "init_lora_weights");
    o->init = PEFT_INIT_KAIMING;
    if (v && v->type == JSON_STRING && !strcmp(v->string, "gaussian"))
        o->init = PEFT_INIT_GAUSSIAN;
    else if (v && v->type == JSON_STRING && (!strcmp(v->string, "pissa") || !strncmp(v->string, "pissa_niter_", 12)))
        o->init = PEFT_INIT_PISSA; /* the residual is recomputed from this base, as PEFT does on loading */
    else if (v && v->type == JSON_STRING && !strcmp(v->string, "olora"))
        o->init = PEFT_INIT_OLORA;
    else if (v && v->type == JSON_STRING)
        FAIL(PEFT_EUNSUPPORTED, "%s: init_lora_weights \"%s\" is not supported (gaussian, pissa, olora)", path,
             v->string);
    v = json_get(root, "target_modules");
    if (v && v->type == JSON_STRING && strcmp(v->string, "all-linear") != 0) {
        if (!(*regex = strdup(v->string)))
            FAIL(PEFT_ENOMEM, "out of memory");
        o->target_regex = *regex; /* PEFT: re.fullmatch over the module names */
        v = json_get(root, "layers_to_transform");
        if (v && v->type != JSON_NULL)
            FAIL(PEFT_EUNSUPPORTED, "%s: layers_to_transform with a regular-expression target_modules", path);
    }
    if ((code = read_exclude(json_get(root, "exclude_modules"), exclude, path)))
        goto done;
    o->exclude_regex = *exclude;
    if ((code = targets_and_layers(c, root, &o->targets, 1, layers, layers_cap / 2, path)) ||
        (code = peft__read_modules_to_save(json_get(root, "modules_to_save"), o, layers, path)) ||
        (code = peft__read_token_indices(json_get(root, "trainable_token_indices"), o, tok, path)))
        goto done;
    o->layers = layers[0] ? layers : NULL;
#undef FAIL
done:
    json_free(doc);
    return code;
}

/* Module names of target_modules / feedforward_modules: "k_proj" or "model.layers.N.self_attn.k_proj".
   Sets bits of kinds, and layer flags when full paths are used. Returns -1 on an unknown name. */
int peft__parse_module_name(const peft_config *c, const char *s0, int *kind, int *layer)
{
    char canon[160];
    const char *s = peft__canon_module(s0, canon, sizeof canon);
    *layer = -1;
    const char *name = s;
    if (strncmp(s, "model.layers.", 13) == 0) {
        char *end;
        long l = strtol(s + 13, &end, 10);
        if (end == s + 13 || *end != '.' || l < 0 || l > 1000000)
            return -1;
        *layer = (int)l;
        name = strrchr(s, '.') + 1;
    }
    *kind = kind_of(c, name);
    if (*kind < 0)
        return -1;
    if (*layer >= 0) { /* the parent must be right too */
        char full[160];
        snprintf(full, sizeof full, "model.layers.%d.%s.%s", *layer, peft__module_parents[*kind], name);
        if (strcmp(full, s) != 0)
            return -1;
    }
    return 0;
}

static int read_config_ia3(const peft_config *c, const json_value *root, peft_ia3_options *o, char *layers,
                           size_t cap, int n_layers, const char *path)
{
    const json_value *t = json_get(root, "target_modules"), *ff = json_get(root, "feedforward_modules");
    if (!t || t->type != JSON_ARRAY || t->length == 0)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: IA3 target_modules must be a list of module names", path);
    uint8_t *on = calloc((size_t)n_layers, 1);
    int any_full = 0, count = 0;
    if (!on)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    o->targets = 0;
    o->feedforward = 0;
    for (size_t i = 0; i < t->length; i++) {
        int kind, layer;
        if (t->items[i].type != JSON_STRING || peft__parse_module_name(c, t->items[i].string, &kind, &layer) ||
            layer >= n_layers) {
            free(on);
            return peft__fail(PEFT_EUNSUPPORTED, "%s: IA3 target module \"%s\" is not supported", path,
                              t->items[i].type == JSON_STRING ? t->items[i].string : "?");
        }
        o->targets |= 1u << kind;
        if (layer >= 0) {
            any_full = 1;
            on[layer] = 1;
            count++;
        }
    }
    layers[0] = '\0';
    if (any_full) {
        int n_on = 0, nk = 0;
        size_t n = 0;
        for (int k = 0; k < PEFT_MOD_COUNT; k++)
            nk += (o->targets >> k) & 1u;
        for (int l = 0; l < n_layers; l++)
            if (on[l]) {
                n_on++;
                n += (size_t)snprintf(layers + n, cap - n, "%s%d", n ? "," : "", l);
            }
        if (count != n_on * nk || (size_t)t->length != (size_t)count) {
            free(on);
            return peft__fail(PEFT_EUNSUPPORTED, "%s: IA3 target_modules must name the same modules in every listed layer",
                              path);
        }
    }
    free(on);
    o->layers = layers[0] ? layers : NULL;
    for (size_t i = 0; ff && ff->type == JSON_ARRAY && i < ff->length; i++) {
        int kind, layer;
        if (ff->items[i].type != JSON_STRING || peft__parse_module_name(c, ff->items[i].string, &kind, &layer))
            return peft__fail(PEFT_EUNSUPPORTED, "%s: IA3 feedforward module not supported", path);
        o->feedforward |= 1u << kind;
    }
    o->feedforward &= o->targets;
    return PEFT_OK;
}

static int load_ia3(peft_model *m, const char *dir, const json_value *root, const char *cfg_path, const char *st_path)
{
    peft_ia3_options o = PEFT_IA3_OPTIONS_INIT;
    char layers[8192];
    st_file *f = NULL;
    lora_state *saved = m->lora;
    int code = read_config_ia3(&m->cfg, root, &o, layers, sizeof layers, m->cfg.n_layers, cfg_path);
    peft_lora_options side = PEFT_LORA_OPTIONS_INIT; /* modules_to_save and norms */
    side.modules_to_save = 0;
    if (!code)
        code = peft__read_modules_to_save(json_get(root, "modules_to_save"), &side, o.layers ? o.layers : "", cfg_path);
    o.modules_to_save = side.modules_to_save;
    o.norms = side.norms;
    if (!code)
        code = peft__adapter_open(&f, st_path);
    if (code)
        return code;
    m->lora = NULL;
    if ((code = peft_attach_ia3(m, &o, NULL))) {
        m->lora = saved;
        st_close(f);
        return peft__context(code, cfg_path);
    }
    lora_state *l = m->lora;
    for (int i = 0; i < l->n_modules && !code; i++) {
        const lora_module *md = &l->mods[i];
        char key[160];
        peft__module_key(&m->cfg, key, sizeof key, md->layer, md->kind, 3);
        const st_tensor *t = st_find(f, key);
        int64_t d0 = md->ia3_ff ? 1 : md->out, d1 = md->ia3_ff ? md->in : 1;
        if (!t)
            code = peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing", st_path, key);
        else if (t->n_dims != 2 || t->shape[0] != d0 || t->shape[1] != d1)
            code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' must have shape [%lld, %lld]", st_path, key,
                              (long long)d0, (long long)d1);
        else
            code = st_read_f32(f, t, l->params + md->off_a, (uint64_t)(d0 * d1));
    }
    size_t n_extra = 0;
    if (!code)
        code = read_extras(m, f, st_path, &n_extra);
    if (!code && f->n_tensors != (size_t)l->n_modules + n_extra)
        code = peft__fail(PEFT_EFORMAT, "%s: %zu tensors, but adapter_config.json describes %zu", st_path,
                          f->n_tensors, (size_t)l->n_modules + n_extra);
    if (!code && saved && (saved->method != PEFT_METHOD_IA3 || saved->n_params != l->n_params))
        code = peft__fail(PEFT_ESHAPE, "%s: adapter layout differs from the attached one", dir);
    st_close(f);
    return peft__keep_or_restore(m, saved, code);
}

static int same_layout(const lora_state *a, const lora_state *b)
{
    if (a->n_modules != b->n_modules || a->use_dora != b->use_dora || a->method != b->method ||
        a->embed_r != b->embed_r || a->n_params != b->n_params)
        return 0;
    for (int i = 0; i < a->n_modules; i++) {
        const lora_module *x = &a->mods[i], *y = &b->mods[i];
        if (x->layer != y->layer || x->kind != y->kind || x->r != y->r)
            return 0;
    }
    return 1;
}

/* Fields of newer PEFT versions that change what an adapter computes: refused by name when set
   rather than read as a plain adapter (false, null, an empty list: unset) */
static int unsupported_fields(const json_value *root, const char *path, int lora_family)
{
    static const char *const keys[][2] = {
        {"alora_invocation_tokens", "activated LoRA (aLoRA)"}, {"layer_replication", "layer replication"},
        {"lora_bias", "a bias on lora_B"},                     {"use_qalora", "QA-LoRA"},
        {"target_parameters", "LoRA on parameters (MoE experts)"}, {"exclude_modules", "exclude_modules"},
        {"arrow_config", "Arrow routing"},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const json_value *v = json_get(root, keys[i][0]);
        if (lora_family && !strcmp(keys[i][0], "exclude_modules")) /* read with the targets */
            continue;
        int set = v && !(v->type == JSON_NULL || (v->type == JSON_BOOL && !v->boolean) ||
                         ((v->type == JSON_ARRAY || v->type == JSON_OBJECT) && v->length == 0) ||
                         (v->type == JSON_STRING && !v->string[0]));
        if (set)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: \"%s\" is set: %s is not supported", path, keys[i][0],
                              keys[i][1]);
    }
    return PEFT_OK;
}

int peft_load_adapter(peft_model *m, const char *dir)
{
    if (!m || !dir)
        return peft__fail(PEFT_EINVAL, "peft_load_adapter: NULL argument");
    if (m->merged)
        return peft__fail(PEFT_ESTATE, "peft_load_adapter: an adapter is merged (peft_unmerge_adapter first)");
    char *cfg_path = peft__path_join(dir, "adapter_config.json");
    char *st_path = peft__path_join(dir, "adapter_model.safetensors");
    st_file *f = NULL;
    int code = PEFT_OK;
    lora_state *saved = m->lora;
    int attached_here = 0;
    int32_t *tok_ids = NULL;
    char *regex = NULL, *exclude = NULL;
    st_out_tensor *extra = NULL;
    char *extra_names = NULL;
    size_t n_extra = 0;
    if (!cfg_path || !st_path) {
        code = peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    {
        /* IA3 adapters have their own reader */
        char *text;
        size_t len;
        json_doc *doc = NULL;
        if ((code = peft__read_file(&text, &len, cfg_path, 1u << 20)))
            goto done;
        code = json_parse(&doc, text, len, cfg_path);
        free(text);
        if (code)
            goto done;
        const json_value *pt = json_get(json_root(doc), "peft_type");
        int lora_family = pt && pt->type == JSON_STRING &&
                          (!strcmp(pt->string, "LORA") || !strcmp(pt->string, "LOHA") || !strcmp(pt->string, "LOKR"));
        if ((code = unsupported_fields(json_root(doc), cfg_path, lora_family))) {
            json_free(doc);
            goto done;
        }
        if (pt && pt->type == JSON_STRING && strcmp(pt->string, "IA3") == 0) {
            code = load_ia3(m, dir, json_root(doc), cfg_path, st_path);
            json_free(doc);
            goto done;
        }
        if (pt && pt->type == JSON_STRING && strcmp(pt->string, "LN_TUNING") == 0) {
            code = peft__load_norms(m, json_root(doc), cfg_path, st_path);
            json_free(doc);
            goto done;
        }
        if (pt && pt->type == JSON_STRING && (!strcmp(pt->string, "LOHA") || !strcmp(pt->string, "LOKR"))) {
            code = load_loha(m, dir, json_root(doc), cfg_path, st_path, !strcmp(pt->string, "LOKR"));
            json_free(doc);
            goto done;
        }
        if (pt && pt->type == JSON_STRING && strcmp(pt->string, "TRAINABLE_TOKENS") == 0) {
            code = peft__load_tokens(m, json_root(doc), cfg_path, st_path);
            json_free(doc);
            goto done;
        }
        if (pt && pt->type == JSON_STRING && strcmp(pt->string, "PROMPT_TUNING") == 0) {
            code = peft__load_prompt(m, json_root(doc), cfg_path, st_path);
            json_free(doc);
            goto done;
        }
        if (pt && pt->type == JSON_STRING && strcmp(pt->string, "VERA") == 0) {
            code = load_vera(m, dir, json_root(doc), cfg_path, st_path);
            json_free(doc);
            goto done;
        }
        json_free(doc);
    }
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    char layers[32768]; /* layers spec | rank_pattern | alpha_pattern */
    if ((code = peft__read_lora_config(&m->cfg, &o, layers, sizeof layers, &tok_ids, &regex, &exclude, cfg_path)))
        goto done;
    if ((code = peft__adapter_open(&f, st_path)))
        goto done;
    /* build the attachment the file describes */
    m->lora = NULL;
    if ((code = peft_attach_lora(m, &o, NULL))) {
        code = peft__context(code, cfg_path);
        m->lora = saved;
        goto done;
    }
    attached_here = 1;
    lora_state *l = m->lora;
    if (saved && !same_layout(saved, l)) {
        code = peft__fail(PEFT_ESHAPE, "%s: adapter layout (targets, layers, rank) differs from the attached one",
                          dir);
        goto done;
    }
    int per = l->use_dora ? 3 : 2;
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        for (int b = 0; b < per; b++) {
            char key[160];
            peft__module_key(&m->cfg, key, sizeof key, md->layer, md->kind, b);
            const st_tensor *t = st_find(f, key);
            if (!t) {
                code = peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing (adapter for another model?)",
                                  st_path, key);
                goto done;
            }
            if (b == 2) {
                if (t->n_dims != 1 || t->shape[0] != md->out) {
                    code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' must have shape [%d]", st_path, key, md->out);
                    goto done;
                }
                if ((code = st_read_f32(f, t, l->params + md->off_m, (uint64_t)md->out)))
                    goto done;
                continue;
            }
            int64_t d0 = b ? md->out : md->r, d1 = b ? md->r : md->in;
            if (t->n_dims != 2 || t->shape[0] != d0 || t->shape[1] != d1) {
                code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                                  st_path, key, t->n_dims > 0 ? (long long)t->shape[0] : -1LL,
                                  t->n_dims > 1 ? (long long)t->shape[1] : -1LL, (long long)d0,
                                  (long long)d1);
                goto done;
            }
            if ((code = st_read_f32(f, t, l->params + (b ? md->off_b : md->off_a), (uint64_t)(d0 * d1))))
                goto done;
        }
    }
    if (l->embed_r > 0) {
        const char *keys[2] = {EMBED_A_KEY, EMBED_B_KEY};
        int64_t shp[2][2] = {{l->embed_r, m->cfg.vocab}, {m->cfg.dim, l->embed_r}};
        for (int b = 0; b < 2; b++) {
            const st_tensor *t = st_find(f, keys[b]);
            if (!t) {
                code = peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing", st_path, keys[b]);
                goto done;
            }
            if (t->n_dims != 2 || t->shape[0] != shp[b][0] || t->shape[1] != shp[b][1]) {
                code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' must have shape [%lld, %lld]", st_path, keys[b],
                                  (long long)shp[b][0], (long long)shp[b][1]);
                goto done;
            }
            if ((code = st_read_f32(f, t, l->params + (b ? l->off_eb : l->off_ea), (uint64_t)(shp[b][0] * shp[b][1]))))
                goto done;
        }
    }
    if ((code = read_extras(m, f, st_path, &n_extra)))
        goto done;
    if (!(extra = calloc(n_extra + 1, sizeof *extra)) || !(extra_names = malloc((n_extra + 1) * 128))) {
        code = peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    extra_tensors(m, extra, extra_names); /* their names, for the check below */
    if (f->n_tensors != (size_t)l->n_modules * (size_t)per + (l->embed_r > 0 ? 2 : 0) + n_extra) {
        for (size_t i = 0; i < f->n_tensors; i++) {
            int ok = l->embed_r > 0 && (!strcmp(f->tensors[i].name, EMBED_A_KEY) || !strcmp(f->tensors[i].name, EMBED_B_KEY));
            for (size_t j = 0; j < n_extra && !ok; j++)
                ok = !strcmp(f->tensors[i].name, extra[j].name);
            for (int j = 0; j < l->n_modules && !ok; j++)
                for (int b = 0; b < per && !ok; b++) {
                    char key[160];
                    peft__module_key(&m->cfg, key, sizeof key, l->mods[j].layer, l->mods[j].kind, b);
                    ok = !strcmp(key, f->tensors[i].name);
                }
            if (!ok) {
                code = peft__fail(PEFT_EFORMAT, "%s: unexpected tensor '%s' (not described by adapter_config.json)",
                                  st_path, f->tensors[i].name);
                goto done;
            }
        }
    }
    for (size_t i = 0; i < l->n_params; i++)
        if (!isfinite(l->params[i])) {
            code = peft__fail(PEFT_ENUMERIC, "%s: adapter weights contain NaN or Inf", st_path);
            goto done;
        }
done:
    if (code && attached_here) {
        peft__lora_free(m->lora);
        m->lora = saved;
    } else if (!code && attached_here && saved) {
        peft__lora_free(saved);
    }
    st_close(f);
    free(cfg_path);
    free(st_path);
    free(tok_ids);
    free(regex);
    free(exclude);
    free(extra);
    free(extra_names);
    return code;
}
