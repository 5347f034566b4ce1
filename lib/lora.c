/* Attaching LoRA: which modules, parameter layout, initialisation, counts. */
#include <ctype.h>
#include <regex.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int peft_lora_options_init(peft_lora_options *opts, uint32_t version)
{
    if (!opts || version == 0 || version > PEFT_LORA_OPTIONS_VERSION)
        return peft__fail(PEFT_EINVAL, "peft_lora_options_init: bad arguments");
    /* only the fields of that version: a program built against an older header passes a
       smaller struct */
    static const size_t size[PEFT_LORA_OPTIONS_VERSION + 1] = {
        0, offsetof(peft_lora_options, use_dora), offsetof(peft_lora_options, variant),
        offsetof(peft_lora_options, modules_to_save), offsetof(peft_lora_options, target_regex),
        offsetof(peft_lora_options, head_token_indices), offsetof(peft_lora_options, bias),
        offsetof(peft_lora_options, exclude_regex), sizeof(peft_lora_options)};
    peft_lora_options d = PEFT_LORA_OPTIONS_INIT;
    d.version = version;
    memcpy(opts, &d, size[version]);
    return PEFT_OK;
}

static int parse_uint(const char **s, long *out)
{
    if (!isdigit((unsigned char)**s))
        return -1;
    char *end;
    long v = strtol(*s, &end, 10);
    if (v < 0 || v > 1000000)
        return -1;
    *s = end;
    *out = v;
    return 0;
}

int peft__grad_layer_range(const lora_state *l, int n_layers, int layer, size_t *lo, size_t *hi)
{
    if (l->method == PEFT_METHOD_NORMS) {
        /* the layer's tuned norms, up to the next one after them (or the end) */
        int S = PEFT__NORM_SLOTS, first = -1, next = -1;
        for (int k = layer * S; k <= n_layers * S && next < 0; k++)
            if (l->norm_off[k] >= 0 && k >= (layer + 1) * S)
                next = k;
            else if (l->norm_off[k] >= 0 && first < 0)
                first = k;
        if (first < 0)
            return 0;
        *lo = (size_t)l->norm_off[first];
        *hi = next >= 0 ? (size_t)l->norm_off[next] : l->n_params;
        return 1;
    }
    int first = -1, next = -1;
    for (int i = 0; i < l->n_modules; i++) {
        if (l->mods[i].layer == layer && first < 0)
            first = i;
        if (l->mods[i].layer > layer) {
            next = i;
            break;
        }
    }
    if (first < 0)
        return 0;
    *lo = l->mods[first].off_a;
    *hi = next >= 0 ? l->mods[next].off_a : l->mods_end;
    return 1;
}

/* Layer selection: "all" | items separated by ','; item = N | N-M | first:N | last:N | every:K */
int peft__layers_parse(uint8_t *on, int n, const char *spec)
{
    memset(on, 0, (size_t)n);
    if (!spec || !*spec || strcmp(spec, "all") == 0) {
        memset(on, 1, (size_t)n);
        return PEFT_OK;
    }
    const char *s = spec;
    while (*s) {
        long a, b;
        if (strncmp(s, "first:", 6) == 0 || strncmp(s, "last:", 5) == 0 ||
            strncmp(s, "every:", 6) == 0) {
            char kind = s[0];
            s = strchr(s, ':') + 1;
            if (parse_uint(&s, &a) || (kind == 'e' && a == 0))
                goto bad;
            for (int l = 0; l < n; l++)
                if ((kind == 'f' && l < a) || (kind == 'l' && l >= n - a) || (kind == 'e' && l % a == 0))
                    on[l] = 1;
        } else {
            if (parse_uint(&s, &a))
                goto bad;
            b = a;
            if (*s == '-') {
                s++;
                if (parse_uint(&s, &b) || b < a)
                    goto bad;
            }
            if (b >= n)
                return peft__fail(PEFT_EINVAL, "layers \"%s\": layer %ld out of range (model has %d layers)",
                                  spec, b, n);
            for (long l = a; l <= b; l++)
                on[l] = 1;
        }
        if (*s == ',')
            s++;
        else if (*s)
            goto bad;
    }
    for (int l = 0; l < n; l++)
        if (on[l])
            return PEFT_OK;
    return peft__fail(PEFT_EINVAL, "layers \"%s\" selects no layer", spec);
bad:
    return peft__fail(PEFT_EINVAL,
                      "layers \"%s\": expected all, N, N-M, first:N, last:N or every:K, comma-separated",
                      spec);
}

const char *peft__module_tensor(const peft_config *c, char *buf, size_t n, int layer, int kind, const char *suffix)
{
    snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.%s", layer, peft__module_parents[kind],
             peft__mod_name(c, kind), suffix);
    return buf;
}

/* which: 0 lora_A, 1 lora_B, 2 DoRA magnitude, 3 IA3 vector */
const char *peft__module_key(const peft_config *c, char *buf, size_t n, int layer, int kind, int which)
{
    static const char *const suffix[4] = {"lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "ia3_l"};
    return peft__module_tensor(c, buf, n, layer, kind, suffix[which]);
}

void peft__lora_free(lora_state *l)
{
    if (!l)
        return;
    free(l->layer_on);
    free(l->mods);
    free(l->index);
    peft__free(l->params);
    peft__free(l->grads);
    peft__free(l->m);
    peft__free(l->v);
    peft__free(l->dora_norm);
    peft__free(l->dora_w);
    free(l->rank_pattern);
    free(l->alpha_pattern);
    free(l->norm_off);
    peft__free(l->norm_applied);
    free(l->bias_off);
    free(l->tok_idx);
    free(l->tok_slot);
    free(l->htok_idx);
    free(l->target_regex);
    free(l->exclude_regex);
    free(l->prompt_text);
    free(l->prompt_tokenizer);
    for (int i = 0; l->res && i < l->n_modules; i++)
        peft__free((float *)l->res[i].f);
    free(l->res);
    peft__free(l->init_ab);
    peft__free(l->head_u);
    peft__free(l->vera_A);
    peft__free(l->vera_B);
    peft__free(l->vera_beff);
    peft__free(l->vera_m);
    peft__free(l->loha_tmp);
    free(l);
}

/* Validate a "key=value,..." pattern; values must be positive numbers (integers for ranks). */
static int check_pattern(const char *pat, int integer, const char *what)
{
    if (!pat)
        return PEFT_OK;
    const char *s = pat;
    while (*s) {
        const char *eq = strchr(s, '='), *end = strchr(s, ',');
        if (!end)
            end = s + strlen(s);
        if (!eq || eq > end || eq == s)
            return peft__fail(PEFT_EINVAL, "%s \"%s\": expected KEY=VALUE items separated by commas", what, pat);
        for (const char *c = s; c < eq; c++)
            if (strchr("*+?()[]{}|^$\\", *c))
                return peft__fail(PEFT_EUNSUPPORTED, "%s \"%s\": regular expressions are not supported in keys", what, pat);
        char *num_end;
        double v = strtod(eq + 1, &num_end);
        if (num_end != end || !(v > 0) || (integer && (v != floor(v) || v > 65536)))
            return peft__fail(PEFT_EINVAL, "%s \"%s\": bad value", what, pat);
        s = *end ? end + 1 : end;
    }
    return PEFT_OK;
}

/* The value of the first key matching module `name`, or def. */
double peft__pattern_value(const char *pat, const char *name, double def)
{
    if (!pat)
        return def;
    size_t nl = strlen(name);
    const char *s = pat;
    while (*s) {
        const char *eq = strchr(s, '='), *end = strchr(s, ',');
        if (!end)
            end = s + strlen(s);
        size_t kl = (size_t)(eq - s);
        if (kl <= nl && memcmp(name + nl - kl, s, kl) == 0 && (kl == nl || name[nl - kl - 1] == '.'))
            return strtod(eq + 1, NULL);
        s = *end ? end + 1 : end;
    }
    return def;
}

static void module_dims(const peft_config *c, int kind, int *in, int *out)
{
    *in = kind == PEFT_MOD_O ? c->n_heads * c->head_dim : kind == PEFT_MOD_DOWN ? c->ffn_dim : c->dim;
    *out = peft__mod_out(c, kind);
}

/* PEFT's regex target_modules (Python re.fullmatch) as a POSIX extended regex anchored at both
   ends: \d, \D and (?:...) translated; other (?...) constructs refused. */
static int regex_compile(regex_t *re, const char *pat, const char *what)
{
    size_t n = strlen(pat);
    if (n > 4096)
        return peft__fail(PEFT_EINVAL, "LoRA: %s longer than 4096 characters", what);
    char *ere = malloc(8 * n + 8), *o = ere;
    if (!ere)
        return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
    *o++ = '^';
    *o++ = '(';
    for (const char *c = pat; *c; c++) {
        if (c[0] == '\\' && (c[1] == 'd' || c[1] == 'D')) {
            o += sprintf(o, c[1] == 'd' ? "[0-9]" : "[^0-9]");
            c++;
        } else if (c[0] == '\\' && c[1]) {
            *o++ = *c++;
            *o++ = *c;
        } else if (c[0] == '(' && c[1] == '?') {
            if (c[2] != ':') {
                free(ere);
                return peft__fail(PEFT_EUNSUPPORTED, "LoRA: %s \"%s\": only (?:...) of Python's (?...) "
                                                     "groups is supported", what, pat);
            }
            *o++ = '(';
            c += 2;
        } else {
            *o++ = *c;
        }
    }
    *o++ = ')';
    *o++ = '$';
    *o = '\0';
    int rc = regcomp(re, ere, REG_EXTENDED | REG_NOSUB);
    free(ere);
    if (rc) {
        char msg[256];
        regerror(rc, re, msg, sizeof msg);
        return peft__fail(PEFT_EINVAL, "LoRA: %s \"%s\": %s", what, pat, msg);
    }
    return PEFT_OK;
}

static int check_options(const peft_model *m, const peft_lora_options *o)
{
    if (!m || !o)
        return peft__fail(PEFT_EINVAL, "LoRA: NULL argument");
    if (o->version == 0 || o->version > PEFT_LORA_OPTIONS_VERSION)
        return peft__fail(PEFT_EINVAL, "LoRA: unknown options version %u", o->version);
    uint32_t known = PEFT_TARGET_ALL_LINEAR | PEFT_TARGET_EMBED | (o->version >= 4 ? PEFT_TARGET_LM_HEAD : 0);
    if (o->version >= 5 && o->target_regex) {
        if (o->targets || (o->layers && *o->layers))
            return peft__fail(PEFT_EINVAL, "LoRA: with target_regex, targets must be 0 and layers NULL (the "
                                           "expression selects layers and modules)");
        /* the expression itself is compiled (and its errors reported) by regex_select */
    } else if (o->targets == 0 || (o->targets & ~known))
        return peft__fail(PEFT_EINVAL, "LoRA: targets must be a non-empty set of PEFT_TARGET_* bits");
    if ((o->targets & (PEFT_TARGET_EMBED | PEFT_TARGET_LM_HEAD)) && o->version >= 2 && o->use_dora)
        return peft__fail(PEFT_EUNSUPPORTED, "DoRA on the embeddings or lm_head is not supported (LoRA only)");
    if (o->version >= 4) {
        if (o->modules_to_save & ~(uint32_t)(PEFT_SAVE_EMBED | PEFT_SAVE_LM_HEAD))
            return peft__fail(PEFT_EINVAL, "LoRA: modules_to_save must be PEFT_SAVE_* bits");
        if (o->norms & ~(uint32_t)PEFT_NORM_ALL)
            return peft__fail(PEFT_EINVAL, "LoRA: norms must be PEFT_NORM_* bits");
        if (o->n_token_indices < 0 || (o->n_token_indices > 0 && !o->token_indices))
            return peft__fail(PEFT_EINVAL, "LoRA: token_indices is NULL or n_token_indices negative");
        if ((o->targets & PEFT_TARGET_EMBED) && (o->modules_to_save & PEFT_SAVE_EMBED))
            return peft__fail(PEFT_EINVAL, "LoRA: the embeddings are either adapted (PEFT_TARGET_EMBED) or trained in "
                                           "full (PEFT_SAVE_EMBED), not both");
        if ((o->targets & PEFT_TARGET_LM_HEAD) && (o->modules_to_save & PEFT_SAVE_LM_HEAD))
            return peft__fail(PEFT_EINVAL, "LoRA: lm_head is either adapted (PEFT_TARGET_LM_HEAD) or trained in full "
                                           "(PEFT_SAVE_LM_HEAD), not both");
        if (o->n_token_indices > 0 && ((o->targets & PEFT_TARGET_EMBED) || (o->modules_to_save & PEFT_SAVE_EMBED)))
            return peft__fail(PEFT_EINVAL, "LoRA: trainable token rows cannot be combined with LoRA on the embeddings "
                                           "or training them in full (PEFT refuses it too)");
        if (o->n_token_indices > m->cfg.vocab)
            return peft__fail(PEFT_EINVAL, "LoRA: more token indices (%d) than tokens (%d)", o->n_token_indices,
                              m->cfg.vocab);
        for (int32_t i = 0; i < o->n_token_indices; i++)
            if (o->token_indices[i] < 0 || o->token_indices[i] >= m->cfg.vocab)
                return peft__fail(PEFT_EINVAL, "LoRA: token index %d is outside the vocabulary (0..%d)",
                                  o->token_indices[i], m->cfg.vocab - 1);
        if (o->version >= 6 && o->n_head_token_indices != 0) {
            if (o->n_head_token_indices < 0 || !o->head_token_indices)
                return peft__fail(PEFT_EINVAL, "LoRA: head_token_indices is NULL or n_head_token_indices negative");
            if (m->cfg.tied)
                return peft__fail(PEFT_EINVAL, "LoRA: lm_head rows of a tied model follow the embedding rows "
                                               "(token_indices), not head_token_indices");
            if (o->targets & PEFT_TARGET_LM_HEAD || (o->modules_to_save & PEFT_SAVE_LM_HEAD))
                return peft__fail(PEFT_EINVAL, "LoRA: trainable lm_head rows cannot be combined with LoRA on lm_head "
                                               "or training it in full");
            if (o->n_head_token_indices > m->cfg.vocab)
                return peft__fail(PEFT_EINVAL, "LoRA: more lm_head token indices (%d) than tokens (%d)",
                                  o->n_head_token_indices, m->cfg.vocab);
            for (int32_t i = 0; i < o->n_head_token_indices; i++) {
                if (o->head_token_indices[i] < 0 || o->head_token_indices[i] >= m->cfg.vocab)
                    return peft__fail(PEFT_EINVAL, "LoRA: lm_head token index %d is outside the vocabulary (0..%d)",
                                      o->head_token_indices[i], m->cfg.vocab - 1);
                for (int32_t j = 0; j < i; j++)
                    if (o->head_token_indices[j] == o->head_token_indices[i])
                        return peft__fail(PEFT_EINVAL, "LoRA: lm_head token index %d is listed twice",
                                          o->head_token_indices[i]);
            }
        }
        int lora_only = o->n_token_indices > 0 || (o->targets & PEFT_TARGET_LM_HEAD) ||
                        (o->version >= 6 && o->n_head_token_indices > 0);
        if (lora_only && o->variant != PEFT_VARIANT_LORA)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: lm_head and token rows go with LoRA or DoRA only "
                                                 "(modules_to_save and norms go with every variant)",
                              o->variant == PEFT_VARIANT_LOHA ? "LoHa" : "LoKr");
    }
    if (o->version >= 3 && o->variant != PEFT_VARIANT_LORA && o->variant != PEFT_VARIANT_LOHA &&
        o->variant != PEFT_VARIANT_LOKR)
        return peft__fail(PEFT_EINVAL, "LoRA: unknown variant %d", o->variant);
    if (o->version >= 3 && o->variant != PEFT_VARIANT_LORA &&
        ((o->targets & PEFT_TARGET_EMBED) || o->use_dora || o->dropout > 0.0f || o->use_rslora))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: linear targets only, without DoRA, dropout or rsLoRA",
                          o->variant == PEFT_VARIANT_LOHA ? "LoHa" : "LoKr");
    if (o->rank <= 0 || o->rank > 65536)
        return peft__fail(PEFT_EINVAL, "LoRA: rank %d out of range (1..65536)", o->rank);
    if (!isfinite(o->alpha) || o->alpha <= 0)
        return peft__fail(PEFT_EINVAL, "LoRA: alpha must be positive and finite");
    if (!(o->dropout >= 0.0f && o->dropout < 1.0f))
        return peft__fail(PEFT_EINVAL, "LoRA: dropout must be in [0, 1)");
    if (o->init < PEFT_INIT_KAIMING || o->init > PEFT_INIT_OLORA)
        return peft__fail(PEFT_EINVAL, "LoRA: unknown init %d", o->init);
    if ((o->init == PEFT_INIT_PISSA || o->init == PEFT_INIT_OLORA) &&
        ((o->targets & (PEFT_TARGET_EMBED | PEFT_TARGET_LM_HEAD)) || (o->version >= 2 && o->use_dora) ||
         (o->version >= 3 && o->variant != PEFT_VARIANT_LORA)))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: LoRA on linear targets only (not DoRA, LoHa, LoKr, embed_tokens or "
                                             "lm_head)", o->init == PEFT_INIT_PISSA ? "PiSSA" : "OLoRA");
    if (o->version >= 2 && o->use_dora && o->dropout > 0.0f)
        return peft__fail(PEFT_EUNSUPPORTED, "DoRA with LoRA dropout is not supported yet (use dropout 0)");
    int code;
    if (o->version >= 2 && ((code = check_pattern(o->rank_pattern, 1, "rank_pattern")) ||
                            (code = check_pattern(o->alpha_pattern, 0, "alpha_pattern"))))
        return code;
    return PEFT_OK;
}

/* A new attachment state: layer selection parsed, module index all -1, no module yet. */
int peft__state_new(lora_state **out, const peft_config *c, const char *layers, const char *what)
{
    *out = NULL;
    lora_state *l = calloc(1, sizeof *l);
    if (!l || !(l->layer_on = calloc((size_t)c->n_layers, 1)) ||
        !(l->index = malloc((size_t)c->n_layers * PEFT_MOD_COUNT * sizeof *l->index)) ||
        !(l->mods = calloc((size_t)c->n_layers * PEFT_MOD_COUNT, sizeof *l->mods))) {
        peft__lora_free(l);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", what);
    }
    int code = peft__layers_parse(l->layer_on, c->n_layers, layers);
    if (code) {
        peft__lora_free(l);
        return code;
    }
    for (int i = 0; i < c->n_layers * PEFT_MOD_COUNT; i++)
        l->index[i] = -1;
    l->lowest_layer = c->n_layers;
    *out = l;
    return PEFT_OK;
}

/* Allocate the parameter, gradient and AdamW blocks of n floats. */
int peft__state_alloc(lora_state *l, size_t n, const char *what)
{
    l->params = peft__alloc_floats(n);
    l->grads = peft__alloc_floats(n);
    l->m = peft__alloc_floats(n);
    l->v = peft__alloc_floats(n);
    if (!l->params || !l->grads || !l->m || !l->v)
        return peft__fail(PEFT_ENOMEM, "%s: out of memory for %zu parameters", what, n);
    return PEFT_OK;
}

/* Make l the model's attachment, with a fresh optimizer state. */
int peft__state_install(peft_model *m, lora_state *l, uint64_t *n_trainable)
{
    m->lora = l;
    peft__name_active(m);
    m->step = 0;
    m->micro = 0;
    m->accum_tokens = 0;
    m->dropout_calls = 0;
    if (n_trainable)
        *n_trainable = l->n_params;
    return PEFT_OK;
}

uint32_t peft__norm_bit(const peft_config *c, int slot)
{
    static const uint32_t llama[PEFT__NORM_SLOTS] = {PEFT_NORM_INPUT, PEFT_NORM_POST_ATTENTION, 0, 0,
                                                     PEFT_NORM_Q, PEFT_NORM_K};
    static const uint32_t gemma[PEFT__NORM_SLOTS] = {PEFT_NORM_INPUT, PEFT_NORM_PRE_FEEDFORWARD,
                                                     PEFT_NORM_POST_ATTENTION, PEFT_NORM_POST_FEEDFORWARD,
                                                     PEFT_NORM_Q, PEFT_NORM_K};
    if (slot >= PEFT__NORM_Q && !c->qk_norm)
        return 0;
    return (c->gemma ? gemma : llama)[slot];
}

const char *peft__norm_name(uint32_t bit)
{
    switch (bit) {
    case PEFT_NORM_INPUT: return "input_layernorm";
    case PEFT_NORM_POST_ATTENTION: return "post_attention_layernorm";
    case PEFT_NORM_PRE_FEEDFORWARD: return "pre_feedforward_layernorm";
    case PEFT_NORM_POST_FEEDFORWARD: return "post_feedforward_layernorm";
    case PEFT_NORM_Q: return "self_attn.q_norm";
    case PEFT_NORM_K: return "self_attn.k_norm";
    default: return "norm";
    }
}

/* Offsets of the tuned RMSNorm weights (PEFT_NORM_* bits on the selected layers, the final norm)
   from *off on, in norm_off order; the lowest layer with one bounds backward. */
static int layout_norms(lora_state *l, const peft_config *c, uint32_t norms, size_t *off, const char *what)
{
    int L = c->n_layers;
    if (!(l->norm_off = malloc(((size_t)L * PEFT__NORM_SLOTS + 1) * sizeof *l->norm_off)))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", what);
    size_t start = *off;
    for (int layer = 0; layer <= L; layer++)
        for (int s = 0; s < (layer < L ? PEFT__NORM_SLOTS : 1); s++) {
            uint32_t bit = layer < L ? peft__norm_bit(c, s) : PEFT_NORM_FINAL;
            int on = (layer == L || l->layer_on[layer]) && (norms & bit);
            l->norm_off[peft__norm_index(c, layer, s)] = on ? (int64_t)*off : -1;
            if (!on)
                continue;
            *off += (size_t)peft__norm_width(c, s);
            if (layer < l->lowest_layer)
                l->lowest_layer = layer;
        }
    if (*off == start)
        return peft__fail(PEFT_EINVAL, "%s: the norms asked for (PEFT_NORM_* 0x%x) are none of this model's "
                                       "(pre/post_feedforward_layernorm are Gemma's, q/k norms Qwen3's and "
                                       "Gemma 3's)", what, (unsigned)norms);
    l->norm_at = start;
    l->norm_n = *off - start;
    if (c->gemma && !(l->norm_applied = peft__alloc_floats(l->norm_n)))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", what);
    return PEFT_OK;
}

/* PEFT's bias option (version 7): the trained biases, after everything else; *off advances. */
static int layout_bias(lora_state *l, const peft_config *c, int32_t mode, int variant, size_t *off)
{
    if (mode == PEFT_BIAS_NONE)
        return PEFT_OK;
    if (mode != PEFT_BIAS_ALL && mode != PEFT_BIAS_LORA_ONLY)
        return peft__fail(PEFT_EINVAL, "LoRA: bias must be PEFT_BIAS_NONE, _ALL or _LORA_ONLY (got %d)", (int)mode);
    if (variant)
        return peft__fail(PEFT_EUNSUPPORTED, "LoRA: PEFT's LoHa and LoKr have no bias option");
    size_t n = (size_t)c->n_layers * PEFT_MOD_COUNT;
    if (!(l->bias_off = malloc(n * sizeof *l->bias_off)))
        return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
    l->bias_mode = mode;
    size_t start = *off;
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            size_t i = (size_t)layer * PEFT_MOD_COUNT + (size_t)k;
            int on = (c->bias_mask >> k & 1u) && (mode == PEFT_BIAS_ALL || l->index[i] >= 0);
            l->bias_off[i] = on ? (int64_t)*off : -1;
            if (!on)
                continue;
            int in, out;
            module_dims(c, k, &in, &out);
            *off += (size_t)out;
            if (layer < l->lowest_layer)
                l->lowest_layer = layer;
        }
    l->n_bias = *off - start;
    return PEFT_OK;
}

/* Layout of what LoRA trains beyond the linear modules and the embedding adapter (version 4
   options): lm_head LoRA, token rows, full copies, norms; *off advances. */
static int build_extras(lora_state *l, const peft_config *c, const peft_lora_options *o, size_t *off)
{
    if (o->targets & PEFT_TARGET_LM_HEAD) {
        l->head_r = (int)peft__pattern_value(l->rank_pattern, "lm_head", o->rank);
        l->head_alpha = (float)peft__pattern_value(l->alpha_pattern, "lm_head", o->alpha);
        l->head_scale = l->use_rslora ? l->head_alpha / sqrtf((float)l->head_r) : l->head_alpha / (float)l->head_r;
        l->off_ha = *off;
        *off += (size_t)l->head_r * (size_t)c->dim;
        l->off_hb = *off;
        *off += (size_t)c->vocab * (size_t)l->head_r;
    }
    if (o->n_token_indices > 0) {
        l->n_tok = o->n_token_indices;
        if (!(l->tok_idx = malloc((size_t)l->n_tok * sizeof *l->tok_idx)) ||
            !(l->tok_slot = malloc((size_t)c->vocab * sizeof *l->tok_slot)))
            return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
        for (int i = 0; i < c->vocab; i++)
            l->tok_slot[i] = -1;
        for (int i = 0; i < l->n_tok; i++) {
            int32_t t = o->token_indices[i];
            if (l->tok_slot[t] >= 0)
                return peft__fail(PEFT_EINVAL, "LoRA: token index %d is listed twice", t);
            l->tok_slot[t] = i;
            l->tok_idx[i] = t;
        }
        l->off_tok = *off;
        *off += (size_t)l->n_tok * (size_t)c->dim;
    }
    if (o->version >= 6 && o->n_head_token_indices > 0) {
        l->n_htok = o->n_head_token_indices;
        if (!(l->htok_idx = malloc((size_t)l->n_htok * sizeof *l->htok_idx)))
            return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
        memcpy(l->htok_idx, o->head_token_indices, (size_t)l->n_htok * sizeof *l->htok_idx);
        l->off_htok = *off;
        *off += (size_t)l->n_htok * (size_t)c->dim;
    }
    l->save_embed = (o->modules_to_save & PEFT_SAVE_EMBED) != 0;
    l->save_head = (o->modules_to_save & PEFT_SAVE_LM_HEAD) != 0;
    if (l->save_embed) {
        l->off_se = *off;
        *off += (size_t)c->vocab * (size_t)c->dim;
    }
    if (l->save_head) {
        l->off_sh = *off;
        *off += (size_t)c->vocab * (size_t)c->dim;
    }
    if (l->save_embed || l->n_tok > 0)
        l->lowest_layer = -1;
    l->off_norms = *off;
    l->norms = o->norms;
    return o->norms ? layout_norms(l, c, o->norms, off, "LoRA") : PEFT_OK;
}

/* PEFT's name of a linear module ("model.layers.3.self_attn.q_proj"; a multimodal Gemma 3's
   under "model.language_model.") and of the token embeddings */
static void module_name(const peft_config *c, char *buf, size_t n, int layer, int kind)
{
    snprintf(buf, n, "%slayers.%d.%s.%s", peft__prefix(c), layer, peft__module_parents[kind], peft__mod_name(c, kind));
}

static const char *embed_name(const peft_config *c, char *buf, size_t n)
{
    snprintf(buf, n, "%sembed_tokens", peft__prefix(c));
    return buf;
}

/* Every module name the compiled expression matches (whole): selected (sel 1, its kind's bit in
   *targets, the embeddings' and lm_head's too) or, excluding, left out (sel 0, their bits cleared) */
static void regex_mark(const peft_config *c, const regex_t *re, uint8_t *sel, uint32_t *targets, int exclude)
{
    char name[96];
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            module_name(c, name, sizeof name, layer, k);
            if (!peft__has_mod(c, k) || regexec(re, name, 0, NULL, 0))
                continue;
            sel[layer * PEFT_MOD_COUNT + k] = !exclude;
            *targets |= exclude ? 0 : 1u << k;
        }
    const uint32_t bits[2] = {PEFT_TARGET_EMBED, PEFT_TARGET_LM_HEAD};
    const char *names[2] = {embed_name(c, name, sizeof name), "lm_head"};
    for (int i = 0; i < 2; i++)
        if (!regexec(re, names[i], 0, NULL, 0))
            *targets = exclude ? *targets & ~bits[i] : *targets | bits[i];
}

/* The modules a target_regex picks: sel[layer * PEFT_MOD_COUNT + kind] (malloc'ed) and the
   kinds' bits (with EMBED, LM_HEAD) in *targets. */
static int regex_select(const peft_config *c, const char *pat, uint8_t **sel, uint32_t *targets)
{
    regex_t re;
    int code = regex_compile(&re, pat, "target_regex");
    if (code)
        return code;
    *targets = 0;
    if (!(*sel = calloc((size_t)c->n_layers * PEFT_MOD_COUNT, 1))) {
        regfree(&re);
        return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
    }
    regex_mark(c, &re, *sel, targets, 0);
    regfree(&re);
    if (!*targets) {
        free(*sel);
        *sel = NULL;
        return peft__fail(PEFT_EINVAL, "LoRA: target_regex \"%s\" matches no module (names look like "
                                       "%slayers.0.self_attn.q_proj)", pat, peft__prefix(c));
    }
    return PEFT_OK;
}

/* exclude_regex (PEFT's exclude_modules): the modules it matches leave sel, and the embeddings
   and lm_head leave *targets */
static int regex_exclude(const peft_config *c, const char *pat, uint8_t *sel, uint32_t *targets)
{
    regex_t re;
    int code = regex_compile(&re, pat, "exclude_regex");
    if (code)
        return code;
    regex_mark(c, &re, sel, targets, 1);
    regfree(&re);
    int any = (*targets & (PEFT_TARGET_EMBED | PEFT_TARGET_LM_HEAD)) != 0;
    for (int i = 0; i < c->n_layers * PEFT_MOD_COUNT && !any; i++)
        any = sel[i];
    if (!any) /* as PEFT: "No modules were targeted for adaptation" */
        return peft__fail(PEFT_EINVAL, "LoRA: exclude_regex \"%s\" leaves no module to adapt", pat);
    return PEFT_OK;
}

/* A multimodal model's targets (PEFT_TARGET_* bits) on the layers of a layer spec as one
   expression of PEFT's names, in *out (malloc'ed): model\.language_model\.layers\.(0|1)\.
   (self_attn\.(q_proj|v_proj)|mlp\.(down_proj)), the embeddings and lm_head as alternatives */
static int mm_target_regex(const peft_config *c, uint32_t targets, const char *layers, char **out)
{
    uint8_t *on = calloc((size_t)c->n_layers, 1);
    size_t cap = 256 + (size_t)c->n_layers * 8, n = 0;
    char *re = malloc(cap);
    int code = on && re ? peft__layers_parse(on, c->n_layers, layers) : peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
    int all = 1, any = 0;
    for (int l = 0; !code && l < c->n_layers; l++)
        all &= on[l], any |= on[l];
    if (!code && (targets & PEFT_TARGET_ALL_LINEAR) && any) {
        n += (size_t)snprintf(re + n, cap - n, "%slayers\\.%s", peft__prefix_re(c), all ? "\\d+" : "(");
        for (int l = 0, first = 1; l < c->n_layers && !all; l++)
            if (on[l]) {
                n += (size_t)snprintf(re + n, cap - n, "%s%d", first ? "" : "|", l);
                first = 0;
            }
        n += (size_t)snprintf(re + n, cap - n, "%s\\.(", all ? "" : ")");
        const char *sep = "";
        for (int part = 0; part < 2; part++) { /* self_attn's modules, then mlp's */
            const char *inner = "";
            for (int k = part ? PEFT_MOD_GATE : PEFT_MOD_Q; k <= (part ? PEFT_MOD_DOWN : PEFT_MOD_O); k++) {
                if (!(targets & (1u << k)))
                    continue;
                if (!*inner)
                    n += (size_t)snprintf(re + n, cap - n, "%s%s\\.(", sep, peft__module_parents[k]);
                n += (size_t)snprintf(re + n, cap - n, "%s%s", inner, peft__mod_name(c, k));
                inner = "|";
            }
            if (*inner) {
                n += (size_t)snprintf(re + n, cap - n, ")");
                sep = "|";
            }
        }
        n += (size_t)snprintf(re + n, cap - n, ")");
    }
    if (!code && (targets & PEFT_TARGET_EMBED))
        n += (size_t)snprintf(re + n, cap - n, "%s%sembed_tokens", n ? "|" : "", peft__prefix_re(c));
    if (!code && (targets & PEFT_TARGET_LM_HEAD))
        n += (size_t)snprintf(re + n, cap - n, "%slm_head", n ? "|" : "");
    free(on);
    if (code) {
        free(re);
        return code;
    }
    *out = re;
    return PEFT_OK;
}

/* What targets and layers (or a target_regex) select, less exclude_regex, in sel (malloc'ed) */
static int apply_exclude(const lora_state *l, const peft_config *c, const char *excl, int from_regex, uint8_t **sel,
                         uint32_t *targets)
{
    if (!*sel && !(*sel = calloc((size_t)c->n_layers * PEFT_MOD_COUNT, 1)))
        return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
    for (int layer = 0; layer < c->n_layers && !from_regex; layer++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++)
            (*sel)[layer * PEFT_MOD_COUNT + k] = l->layer_on[layer] && (*targets & (1u << k));
    return regex_exclude(c, excl, *sel, targets);
}

static int build(lora_state **out, const peft_model *m, const peft_lora_options *o0, int allocate)
{
    *out = NULL;
    int code = check_options(m, o0);
    if (code)
        return code;
    const peft_config *c = &m->cfg;
    /* a target_regex: what it picks passes the same checks as targets would. A multimodal
       model's targets and layers are one too: PEFT would match bare module names in the vision
       tower as well */
    peft_lora_options ox = *o0;
    ox.targets = peft__fold_targets(c, ox.targets); /* Phi-3: q/k/v are qkv_proj, gate/up gate_up_proj */
    uint8_t *sel = NULL;
    char *mm_regex = NULL;
    const char *tre = o0->version >= 5 ? o0->target_regex : NULL;
    if (!tre && c->multimodal && (code = mm_target_regex(c, o0->targets, o0->layers, &mm_regex)))
        return code;
    if (mm_regex)
        tre = mm_regex, ox.layers = NULL;
    if (tre) {
        code = regex_select(c, tre, &sel, &ox.targets);
        ox.target_regex = NULL;
        if (!code && (code = check_options(m, &ox)))
            free(sel);
        if (code) {
            free(mm_regex);
            return code;
        }
    }
    const peft_lora_options *o = &ox;
    lora_state *l;
    if ((code = peft__state_new(&l, c, o->layers, "LoRA"))) {
        free(sel);
        free(mm_regex);
        return code;
    }
    l->target_regex = mm_regex; /* (the attachment owns it from here) */
    const char *excl = o0->version >= 8 && o0->exclude_regex && *o0->exclude_regex ? o0->exclude_regex : NULL;
    if (excl) {
        code = apply_exclude(l, c, excl, sel != NULL, &sel, &ox.targets);
        if (!code && !(l->exclude_regex = strdup(excl)))
            code = peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
        if (code) {
            free(sel);
            peft__lora_free(l);
            return code;
        }
    }
    if (sel && tre) { /* the layers it touches, its expression kept for adapter_config.json */
        for (int layer = 0; layer < c->n_layers; layer++) {
            l->layer_on[layer] = 0;
            for (int k = 0; k < PEFT_MOD_COUNT; k++)
                l->layer_on[layer] |= sel[layer * PEFT_MOD_COUNT + k];
        }
        if (!l->target_regex && !(l->target_regex = strdup(tre))) {
            free(sel);
            peft__lora_free(l);
            return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
        }
    }
    l->targets = o->targets;
    l->rank = o->rank;
    l->alpha = o->alpha;
    l->dropout = o->dropout;
    l->use_rslora = o->use_rslora != 0;
    l->init = o->init;
    l->seed = o->seed;
    l->use_dora = o->version >= 2 && o->use_dora;
    int loha = o->version >= 3 && o->variant == PEFT_VARIANT_LOHA;
    int lokr = o->version >= 3 && o->variant == PEFT_VARIANT_LOKR;
    if (loha)
        l->method = PEFT_METHOD_LOHA;
    if (lokr)
        l->method = PEFT_METHOD_LOKR;
    const char *rpat = o->version >= 2 && o->rank_pattern && *o->rank_pattern ? o->rank_pattern : NULL;
    const char *apat = o->version >= 2 && o->alpha_pattern && *o->alpha_pattern ? o->alpha_pattern : NULL;
    if ((rpat && !(l->rank_pattern = strdup(rpat))) || (apat && !(l->alpha_pattern = strdup(apat)))) {
        peft__lora_free(l);
        return peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
    }
    size_t off = 0;
    for (int layer = 0; layer < c->n_layers; layer++) {
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            char name[96];
            module_name(c, name, sizeof name, layer, k);
            if (sel ? !sel[layer * PEFT_MOD_COUNT + k] : !l->layer_on[layer] || !(o->targets & (1u << k)))
                continue;
            lora_module *md = &l->mods[l->n_modules];
            md->layer = layer;
            md->kind = k;
            md->r = (int)peft__pattern_value(rpat, name, o->rank);
            md->alpha = (float)peft__pattern_value(apat, name, o->alpha);
            module_dims(c, k, &md->in, &md->out);
            md->scale = l->use_rslora ? md->alpha / sqrtf((float)md->r) : md->alpha / (float)md->r;
            md->off_xa = l->sum_rank;
            l->sum_rank += (size_t)md->r;
            if (md->r > l->max_rank)
                l->max_rank = md->r;
            md->off_a = off;
            if (loha || lokr) {
                off += loha ? 2 * (size_t)md->r * ((size_t)md->in + (size_t)md->out)
                            : peft__lokr_size(md->in, md->out, md->r);
                md->off_b = md->off_a;
            } else {
                off += (size_t)md->r * (size_t)md->in;
                md->off_b = off;
                off += (size_t)md->out * (size_t)md->r;
            }
            if (l->use_dora) {
                md->off_m = off;
                off += (size_t)md->out;
            }
            md->off_out = l->sum_out;
            l->sum_out += (size_t)md->out;
            if ((size_t)md->out > l->max_out)
                l->max_out = (size_t)md->out;
            if ((size_t)md->out * (size_t)md->in > l->max_w)
                l->max_w = (size_t)md->out * (size_t)md->in;
            l->index[layer * PEFT_MOD_COUNT + k] = l->n_modules++;
            if (layer < l->lowest_layer)
                l->lowest_layer = layer;
        }
    }
    l->mods_end = off;
    free(sel);
    if (o->targets & PEFT_TARGET_EMBED) {
        for (int layer = 0; layer < c->n_layers && !l->target_regex; layer++)
            if (!l->layer_on[layer]) {
                peft__lora_free(l);
                return peft__fail(PEFT_EUNSUPPORTED, "LoRA on the embeddings needs all layers: PEFT's "
                                                     "layers_to_transform would drop embed_tokens");
            }
        char ename[96];
        l->embed_r = (int)peft__pattern_value(rpat, embed_name(c, ename, sizeof ename), o->rank);
        l->embed_alpha = (float)peft__pattern_value(apat, ename, o->alpha);
        l->embed_scale = l->use_rslora ? l->embed_alpha / sqrtf((float)l->embed_r) : l->embed_alpha / (float)l->embed_r;
        l->off_ea = off;
        off += (size_t)l->embed_r * (size_t)c->vocab;
        l->off_eb = off;
        off += (size_t)c->dim * (size_t)l->embed_r;
        l->lowest_layer = -1;
    }
    l->off_norms = off;
    if ((o->version >= 4 && (code = build_extras(l, c, o, &off))) ||
        (o->version >= 7 && (code = layout_bias(l, c, o->bias, loha || lokr, &off)))) {
        peft__lora_free(l);
        return code;
    }
    l->n_params = off;
    if (allocate) {
        if (l->use_dora) {
            l->dora_norm = peft__alloc_floats(l->sum_out);
            l->dora_w = peft__alloc_floats(l->max_w);
        }
        if (loha || lokr)
            l->loha_tmp = peft__alloc_floats(3 * l->max_w);
        if ((code = peft__state_alloc(l, off, "LoRA")) == PEFT_OK &&
            ((l->use_dora && (!l->dora_norm || !l->dora_w)) || ((loha || lokr) && !l->loha_tmp)))
            code = peft__fail(PEFT_ENOMEM, "LoRA: out of memory");
        if (code) {
            peft__lora_free(l);
            return code;
        }
    }
    *out = l;
    return PEFT_OK;
}

/* PEFT init: A kaiming-uniform (bound 1/sqrt(in)) or N(0, 1/r) std 1/r; B = 0;
   DoRA magnitude = the row norms of W. Each module draws from its own stream
   (seed, layer, kind), so results do not depend on which other modules are attached. */
static void init_params(lora_state *l, const peft_model *m)
{
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        peft_rng rng;
        peft__rng_seed(&rng, l->seed ^ peft__hash64(((uint64_t)md->layer << 8) | (uint64_t)md->kind));
        if (l->method == PEFT_METHOD_LOKR) {
            /* PEFT: w1 = 0; w2 (or w2_a, w2_b) kaiming-uniform (bound 1 / sqrt(fan in)) */
            lokr_dims d;
            peft__lokr_dims(&d, md->in, md->out, md->r);
            float *w = l->params + md->off_a;
            memset(w, 0, (size_t)d.l * (size_t)d.m * sizeof *w);
            w += (size_t)d.l * (size_t)d.m;
            const size_t n[2] = {d.full ? (size_t)d.k * d.n : (size_t)d.k * md->r, d.full ? 0 : (size_t)md->r * d.n};
            const double bound[2] = {1.0 / sqrt(d.full ? (double)d.n : (double)md->r), 1.0 / sqrt((double)d.n)};
            for (int t = 0; t < 2; t++)
                for (size_t j = 0; j < n[t]; j++)
                    *w++ = (float)((2.0 * peft__rng_uniform(&rng) - 1.0) * bound[t]);
            continue;
        }
        if (l->method == PEFT_METHOD_LOHA) {
            /* PEFT: kaiming-uniform (a = sqrt(5): bound 1 / sqrt(fan in)) for w1_a (out, r),
               w1_b (r, in), w2_a (out, r); w2_b = 0 */
            size_t r = (size_t)md->r, in = (size_t)md->in, out = (size_t)md->out;
            float *w = l->params + md->off_a;
            const size_t n[3] = {out * r, r * in, out * r};
            const double bound[3] = {1.0 / sqrt((double)r), 1.0 / sqrt((double)in), 1.0 / sqrt((double)r)};
            for (int t = 0; t < 3; t++)
                for (size_t j = 0; j < n[t]; j++)
                    *w++ = (float)((2.0 * peft__rng_uniform(&rng) - 1.0) * bound[t]);
            memset(w, 0, r * in * sizeof *w);
            continue;
        }
        float *a = l->params + md->off_a;
        size_t na = (size_t)md->r * (size_t)md->in;
        if (l->init == PEFT_INIT_GAUSSIAN) {
            double sd = 1.0 / md->r;
            for (size_t j = 0; j < na; j++)
                a[j] = (float)(sd * peft__rng_normal(&rng));
        } else {
            double bound = 1.0 / sqrt((double)md->in);
            for (size_t j = 0; j < na; j++)
                a[j] = (float)((2.0 * peft__rng_uniform(&rng) - 1.0) * bound);
        }
        memset(l->params + md->off_b, 0, (size_t)md->out * (size_t)md->r * sizeof(float));
        if (l->use_dora) {
            /* a quantized base is dequantized into the DoRA scratch */
            const float *W = peft__w_dense(m, &m->layers[md->layer].w[md->kind], l->dora_w);
            for (int o = 0; o < md->out; o++) {
                double ss = 0;
                for (int c = 0; c < md->in; c++)
                    ss += (double)W[(int64_t)o * md->in + c] * W[(int64_t)o * md->in + c];
                l->params[md->off_m + (size_t)o] = (float)sqrt(ss);
            }
        }
    }
}

/* PEFT's embedding init: A = 0, B ~ N(0, 1), from a stream of its own. */
static void init_embed(lora_state *l, const peft_model *m)
{
    if (l->embed_r <= 0)
        return;
    peft_rng rng;
    peft__rng_seed(&rng, l->seed ^ peft__hash64(0x656d626564ull)); /* "embed" */
    memset(l->params + l->off_ea, 0, (size_t)l->embed_r * (size_t)m->cfg.vocab * sizeof(float));
    float *b = l->params + l->off_eb;
    for (size_t j = 0; j < (size_t)m->cfg.dim * (size_t)l->embed_r; j++)
        b[j] = (float)peft__rng_normal(&rng);
}

/* What LoRA trains beyond the linear modules starts as the base model: lm_head LoRA as a linear
   module (A kaiming-uniform from its own stream, B = 0), token rows and full copies from the
   base matrices, norms from the base norms. */
static void init_extras(lora_state *l, const peft_model *m)
{
    const peft_config *c = &m->cfg;
    size_t D = (size_t)c->dim;
    if (l->head_r > 0) {
        peft_rng rng;
        peft__rng_seed(&rng, l->seed ^ peft__hash64(0x6c6d5f68656164ull)); /* "lm_head" */
        float *a = l->params + l->off_ha;
        double sd = 1.0 / l->head_r, bound = 1.0 / sqrt((double)D);
        for (size_t j = 0; j < (size_t)l->head_r * D; j++)
            a[j] = l->init == PEFT_INIT_GAUSSIAN ? (float)(sd * peft__rng_normal(&rng))
                                                 : (float)((2.0 * peft__rng_uniform(&rng) - 1.0) * bound);
        memset(l->params + l->off_hb, 0, (size_t)c->vocab * (size_t)l->head_r * sizeof(float));
    }
    for (int i = 0; i < l->n_tok; i++)
        peft__w_rows(NULL, &m->embed, l->tok_idx[i], 1, l->params + l->off_tok + (size_t)i * D);
    for (int i = 0; i < l->n_htok; i++)
        peft__w_rows(NULL, &m->head, l->htok_idx[i], 1, l->params + l->off_htok + (size_t)i * D);
    if (l->save_embed)
        peft__w_rows(m, &m->embed, 0, c->vocab, l->params + l->off_se);
    if (l->save_head)
        peft__w_rows(m, &m->head, 0, c->vocab, l->params + l->off_sh);
    for (int i = 0; l->norm_off && i <= c->n_layers * PEFT__NORM_SLOTS; i++)
        if (l->norm_off[i] >= 0) /* the base model's, as its file holds it */
            memcpy(l->params + l->norm_off[i], peft__norm_base(m, i / PEFT__NORM_SLOTS, i % PEFT__NORM_SLOTS, 1),
                   (size_t)peft__norm_width(c, i % PEFT__NORM_SLOTS) * sizeof(float));
    for (int i = 0; l->bias_off && i < c->n_layers * PEFT_MOD_COUNT; i++)
        if (l->bias_off[i] >= 0) {
            int in, out;
            module_dims(c, i % PEFT_MOD_COUNT, &in, &out);
            memcpy(l->params + l->bias_off[i], m->layers[i / PEFT_MOD_COUNT].bias[i % PEFT_MOD_COUNT],
                   (size_t)out * sizeof(float));
        }
}

/* What IA3 and VeRA (options version 2) train alongside: modules_to_save and norms, laid out
   from *off on as LoRA lays them out. */
static int side_extras(lora_state *l, const peft_config *c, uint32_t version, uint32_t save, uint32_t norms,
                       size_t *off, const char *what)
{
    l->mods_end = l->off_norms = *off;
    if (version < 2 || (!save && !norms))
        return PEFT_OK;
    if (save & ~(uint32_t)(PEFT_SAVE_EMBED | PEFT_SAVE_LM_HEAD))
        return peft__fail(PEFT_EINVAL, "%s: modules_to_save must be PEFT_SAVE_* bits", what);
    if (norms & ~(uint32_t)PEFT_NORM_ALL)
        return peft__fail(PEFT_EINVAL, "%s: norms must be PEFT_NORM_* bits", what);
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    lo.targets = 0;
    lo.modules_to_save = save;
    lo.norms = norms;
    return build_extras(l, c, &lo, off);
}

/* IA3: one vector per target module, of its input size (feedforward) or output size. */
static int build_ia3(lora_state **out, const peft_model *m, const peft_ia3_options *o, int allocate)
{
    *out = NULL;
    if (!m || !o)
        return peft__fail(PEFT_EINVAL, "IA3: NULL argument");
    if (o->version == 0 || o->version > PEFT_IA3_OPTIONS_VERSION)
        return peft__fail(PEFT_EINVAL, "IA3: unknown options version %u", o->version);
    if (o->targets == 0 || (o->targets & ~(uint32_t)PEFT_TARGET_ALL_LINEAR) || (o->feedforward & ~o->targets))
        return peft__fail(PEFT_EINVAL, "IA3: targets must be PEFT_TARGET_* bits and feedforward a subset of them");
    const peft_config *c = &m->cfg;
    lora_state *l;
    int code = peft__state_new(&l, c, o->layers, "IA3");
    if (code)
        return code;
    l->method = PEFT_METHOD_IA3;
    l->targets = peft__fold_targets(c, o->targets);
    l->feedforward = peft__fold_targets(c, o->feedforward);
    size_t off = 0;
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            if (!l->layer_on[layer] || !(l->targets & (1u << k)))
                continue;
            lora_module *md = &l->mods[l->n_modules];
            md->layer = layer;
            md->kind = k;
            module_dims(c, k, &md->in, &md->out);
            md->ia3_ff = (l->feedforward >> k) & 1u;
            md->off_a = off;
            off += (size_t)(md->ia3_ff ? md->in : md->out);
            md->off_out = l->sum_out;
            l->sum_out += (size_t)md->out;
            if ((size_t)md->out > l->max_out)
                l->max_out = (size_t)md->out;
            l->index[layer * PEFT_MOD_COUNT + k] = l->n_modules++;
            if (layer < l->lowest_layer)
                l->lowest_layer = layer;
        }
    if ((code = side_extras(l, c, o->version, o->version >= 2 ? o->modules_to_save : 0, o->version >= 2 ? o->norms : 0,
                            &off, "IA3"))) {
        peft__lora_free(l);
        return code;
    }
    l->n_params = off;
    if (allocate) {
        if ((code = peft__state_alloc(l, off, "IA3"))) {
            peft__lora_free(l);
            return code;
        }
        for (size_t i = 0; i < l->mods_end; i++)
            l->params[i] = 1.0f; /* PEFT's init_ia3_weights */
        init_extras(l, m);
    }
    *out = l;
    return PEFT_OK;
}

/* VeRA: lambda_d (r) and lambda_b (out) per target module; projections sized to the largest
   target module (PEFT's _find_dim). */
static int build_vera(lora_state **out, const peft_model *m, const peft_vera_options *o, int allocate)
{
    *out = NULL;
    if (!m || !o)
        return peft__fail(PEFT_EINVAL, "VeRA: NULL argument");
    if (o->version == 0 || o->version > PEFT_VERA_OPTIONS_VERSION)
        return peft__fail(PEFT_EINVAL, "VeRA: unknown options version %u", o->version);
    if (o->targets == 0 || (o->targets & ~(uint32_t)PEFT_TARGET_ALL_LINEAR))
        return peft__fail(PEFT_EINVAL, "VeRA: targets must be a non-empty set of linear PEFT_TARGET_* bits");
    if (m->cfg.multimodal) /* its target names would match the vision tower's modules in PEFT */
        return peft__fail(PEFT_EUNSUPPORTED, "VeRA on a multimodal Gemma 3 is not supported: PEFT would size the "
                                             "shared projections over the vision tower's modules too");
    if (o->rank <= 0 || o->rank > 65536)
        return peft__fail(PEFT_EINVAL, "VeRA: rank %d out of range (1..65536)", o->rank);
    if (!isfinite(o->d_initial) || !(o->dropout >= 0.0f && o->dropout < 1.0f))
        return peft__fail(PEFT_EINVAL, "VeRA: d_initial must be finite and dropout in [0, 1)");
    const peft_config *c = &m->cfg;
    lora_state *l;
    int code = peft__state_new(&l, c, o->layers, "VeRA");
    if (code)
        return code;
    l->method = PEFT_METHOD_VERA;
    l->targets = peft__fold_targets(c, o->targets);
    l->rank = l->max_rank = o->rank;
    l->dropout = o->dropout;
    l->seed = o->seed;
    l->vera_d_initial = o->d_initial;
    size_t off = 0;
    for (int layer = 0; layer < c->n_layers; layer++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            if (!l->layer_on[layer] || !(l->targets & (1u << k)))
                continue;
            lora_module *md = &l->mods[l->n_modules];
            md->layer = layer;
            md->kind = k;
            md->r = o->rank;
            md->scale = 1.0f;
            module_dims(c, k, &md->in, &md->out);
            if (md->in > l->vera_in)
                l->vera_in = md->in;
            if (md->out > l->vera_out)
                l->vera_out = md->out;
            md->off_xa = l->sum_rank;
            l->sum_rank += (size_t)md->r;
            md->off_a = off;
            off += (size_t)md->r;
            md->off_b = off;
            off += (size_t)md->out;
            l->index[layer * PEFT_MOD_COUNT + k] = l->n_modules++;
            if (layer < l->lowest_layer)
                l->lowest_layer = layer;
        }
    if ((code = side_extras(l, c, o->version, o->version >= 2 ? o->modules_to_save : 0, o->version >= 2 ? o->norms : 0,
                            &off, "VeRA"))) {
        peft__lora_free(l);
        return code;
    }
    l->n_params = off;
    if (allocate) {
        size_t r = (size_t)o->rank;
        l->vera_A = peft__alloc_floats(r * (size_t)l->vera_in);
        l->vera_B = peft__alloc_floats((size_t)l->vera_out * r);
        l->vera_beff = peft__alloc_floats((size_t)l->vera_out * r);
        l->vera_m = peft__alloc_floats((size_t)l->vera_out * r);
        if ((code = peft__state_alloc(l, off, "VeRA")) == PEFT_OK && (!l->vera_A || !l->vera_B || !l->vera_beff || !l->vera_m))
            code = peft__fail(PEFT_ENOMEM, "VeRA: out of memory for the projections");
        if (code) {
            peft__lora_free(l);
            return code;
        }
    }
    *out = l;
    return PEFT_OK;
}

/* PEFT's init: lambda_b = 0, lambda_d = d_initial; projections kaiming-uniform (fan in:
   bound sqrt(6 / in) for A, sqrt(6 / rank) for B) from the seed. */
static void init_vera(lora_state *l)
{
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        for (int k = 0; k < md->r; k++)
            l->params[md->off_a + (size_t)k] = l->vera_d_initial;
        memset(l->params + md->off_b, 0, (size_t)md->out * sizeof(float));
    }
    peft_rng rng;
    peft__rng_seed(&rng, l->seed ^ peft__hash64(0x76657261ull)); /* "vera" */
    double ba = sqrt(6.0 / l->vera_in), bb = sqrt(6.0 / l->rank);
    for (size_t j = 0; j < (size_t)l->rank * (size_t)l->vera_in; j++)
        l->vera_A[j] = (float)((2.0 * peft__rng_uniform(&rng) - 1.0) * ba);
    for (size_t j = 0; j < (size_t)l->vera_out * (size_t)l->rank; j++)
        l->vera_B[j] = (float)((2.0 * peft__rng_uniform(&rng) - 1.0) * bb);
}

int peft_count_vera(uint64_t *n_trainable, const peft_model *m, const peft_vera_options *o)
{
    if (!n_trainable)
        return peft__fail(PEFT_EINVAL, "peft_count_vera: n_trainable is NULL");
    lora_state *l;
    int code = build_vera(&l, m, o, 0);
    if (code)
        return code;
    *n_trainable = l->n_params;
    peft__lora_free(l);
    return PEFT_OK;
}

int peft_attach_vera(peft_model *m, const peft_vera_options *o, uint64_t *n_trainable)
{
    if (m && m->lora)
        return peft__fail(PEFT_ESTATE, "peft_attach_vera: an adapter is already attached (peft_detach first)");
    lora_state *l;
    int code = build_vera(&l, m, o, 1);
    if (code)
        return code;
    init_vera(l);
    init_extras(l, m);
    return peft__state_install(m, l, n_trainable);
}

int peft_count_ia3(uint64_t *n_trainable, const peft_model *m, const peft_ia3_options *o)
{
    if (!n_trainable)
        return peft__fail(PEFT_EINVAL, "peft_count_ia3: n_trainable is NULL");
    lora_state *l;
    int code = build_ia3(&l, m, o, 0);
    if (code)
        return code;
    *n_trainable = l->n_params;
    peft__lora_free(l);
    return PEFT_OK;
}

int peft_attach_ia3(peft_model *m, const peft_ia3_options *o, uint64_t *n_trainable)
{
    if (m && m->lora)
        return peft__fail(PEFT_ESTATE, "peft_attach_ia3: an adapter is already attached (peft_detach first)");
    lora_state *l;
    int code = build_ia3(&l, m, o, 1);
    if (code)
        return code;
    return peft__state_install(m, l, n_trainable);
}

static int build_norms(lora_state **out, const peft_model *m, const peft_norms_options *o, int allocate)
{
    *out = NULL;
    if (!m || !o)
        return peft__fail(PEFT_EINVAL, "norm tuning: NULL argument");
    if (o->version == 0 || o->version > PEFT_NORMS_OPTIONS_VERSION)
        return peft__fail(PEFT_EINVAL, "norm tuning: unknown options version %u", o->version);
    if (o->norms == 0 || (o->norms & ~(uint32_t)PEFT_NORM_ALL))
        return peft__fail(PEFT_EINVAL, "norm tuning: norms must be a non-empty set of PEFT_NORM_* bits");
    const peft_config *c = &m->cfg;
    lora_state *l;
    int code = peft__state_new(&l, c, o->layers, "norm tuning");
    if (code)
        return code;
    l->method = PEFT_METHOD_NORMS;
    l->targets = o->norms;
    size_t off = 0;
    if ((code = layout_norms(l, c, o->norms, &off, "norm tuning"))) {
        peft__lora_free(l);
        return code;
    }
    l->n_params = off;
    if (allocate) {
        if ((code = peft__state_alloc(l, off, "norm tuning"))) {
            peft__lora_free(l);
            return code;
        }
        init_extras(l, m); /* the norms start from the base model's weights */
    }
    *out = l;
    return PEFT_OK;
}

int peft_count_norms(uint64_t *n_trainable, const peft_model *m, const peft_norms_options *o)
{
    if (!n_trainable)
        return peft__fail(PEFT_EINVAL, "peft_count_norms: n_trainable is NULL");
    lora_state *l;
    int code = build_norms(&l, m, o, 0);
    if (code)
        return code;
    *n_trainable = l->n_params;
    peft__lora_free(l);
    return PEFT_OK;
}

int peft_attach_norms(peft_model *m, const peft_norms_options *o, uint64_t *n_trainable)
{
    if (m && m->lora)
        return peft__fail(PEFT_ESTATE, "peft_attach_norms: an adapter is already attached (peft_detach first)");
    lora_state *l;
    int code = build_norms(&l, m, o, 1);
    if (code)
        return code;
    return peft__state_install(m, l, n_trainable);
}

int peft_count_lora(uint64_t *n_trainable, const peft_model *m, const peft_lora_options *o)
{
    if (!n_trainable)
        return peft__fail(PEFT_EINVAL, "peft_count_lora: n_trainable is NULL");
    lora_state *l;
    int code = build(&l, m, o, 0);
    if (code)
        return code;
    *n_trainable = l->n_params;
    peft__lora_free(l);
    return PEFT_OK;
}

int peft_attach_lora(peft_model *m, const peft_lora_options *o, uint64_t *n_trainable)
{
    if (m && m->lora)
        return peft__fail(PEFT_ESTATE, "peft_attach_lora: an adapter is already attached (peft_detach first)");
    lora_state *l;
    int code = build(&l, m, o, 1);
    if (code)
        return code;
    init_params(l, m);
    init_embed(l, m);
    init_extras(l, m);
    if ((l->init == PEFT_INIT_PISSA || l->init == PEFT_INIT_OLORA) && (code = peft__pissa_init(l, m))) {
        peft__lora_free(l);
        return code;
    }
    return peft__state_install(m, l, n_trainable);
}

int peft_detach(peft_model *m)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_detach: model is NULL");
    if (m->merged)
        peft_unmerge_adapter(m);
    peft__lora_free(m->lora);
    m->lora = NULL;
    return PEFT_OK;
}

int peft_grad_buffer(float **grads, size_t *n, peft_model *m)
{
    if (!grads || !n || !m)
        return peft__fail(PEFT_EINVAL, "peft_grad_buffer: NULL argument");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_grad_buffer: no adapter attached");
    *grads = m->lora->grads;
    *n = m->lora->n_params;
    return PEFT_OK;
}

int peft_param_buffer(float **params, size_t *n, peft_model *m)
{
    if (!params || !n || !m)
        return peft__fail(PEFT_EINVAL, "peft_param_buffer: NULL argument");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_param_buffer: no adapter attached");
    *params = m->lora->params;
    *n = m->lora->n_params;
    return PEFT_OK;
}

/* LyCORIS's factorization with factor -1: the divisor pair (m <= n) nearest the square root */
static void factorization(int dim, int *a, int *b)
{
    int m = 1, n = dim, length = m + n;
    while (m < n) {
        int nm = m + 1;
        while (dim % nm != 0)
            nm++;
        int nn = dim / nm;
        if (nm + nn > length)
            break;
        m = nm;
        n = nn;
        length = m + n;
    }
    if (m > n) {
        int t = m;
        m = n;
        n = t;
    }
    *a = m;
    *b = n;
}

void peft__lokr_dims(lokr_dims *d, int in, int out, int r)
{
    factorization(out, &d->l, &d->k);
    factorization(in, &d->m, &d->n);
    d->full = 2 * r >= (d->k > d->n ? d->k : d->n); /* PEFT: not (r < max(k, n) / 2) */
}

size_t peft__lokr_size(int in, int out, int r)
{
    lokr_dims d;
    peft__lokr_dims(&d, in, out, r);
    return (size_t)d.l * d.m + (d.full ? (size_t)d.k * d.n : (size_t)r * ((size_t)d.k + d.n));
}
