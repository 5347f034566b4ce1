/* Hugging Face config.json -> peft_config. Llama family; clear errors otherwise. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "json.h"

static int get_int(const json_value *root, const char *key, int *out, int required, const char *what)
{
    const json_value *v = json_get(root, key);
    if (!v || v->type == JSON_NULL) {
        if (required)
            return peft__fail(PEFT_EFORMAT, "%s: missing \"%s\"", what, key);
        return 1;
    }
    if (v->type != JSON_NUMBER || !v->is_integer || v->number < 0 || v->number > 1e9)
        return peft__fail(PEFT_EFORMAT, "%s: \"%s\" is not a valid non-negative integer", what, key);
    *out = (int)v->number;
    return 0;
}

/* Qwen2/3 with use_sliding_window: layers from max_window_layers on attend to the last
   sliding_window positions, as transformers' layer_types says ("full_attention" below,
   "sliding_attention" from there; an explicit layer_types list must have that shape) */
static int qwen_window(peft_config *cfg, const json_value *root, const char *what)
{
    cfg->window_from = 28; /* transformers' default max_window_layers */
    int code = get_int(root, "sliding_window", &cfg->sliding_window, 1, what);
    if (code < 0 || (code = get_int(root, "max_window_layers", &cfg->window_from, 0, what)) < 0)
        return code;
    if (cfg->sliding_window <= 0)
        return peft__fail(PEFT_EFORMAT, "%s: use_sliding_window with \"sliding_window\" %d", what, cfg->sliding_window);
    const json_value *lt = json_get(root, "layer_types");
    if (!lt || lt->type == JSON_NULL)
        return PEFT_OK;
    int from = -1;
    for (size_t i = 0; lt->type == JSON_ARRAY && i < lt->length; i++) {
        const json_value *t = &lt->items[i];
        int sliding = t->type == JSON_STRING && !strcmp(t->string, "sliding_attention");
        if (t->type != JSON_STRING || (!sliding && strcmp(t->string, "full_attention") != 0) || (from >= 0 && !sliding))
            return peft__fail(PEFT_EUNSUPPORTED, "%s: \"layer_types\" must be full_attention layers, then "
                                                 "sliding_attention ones", what);
        if (sliding && from < 0)
            from = (int)i;
    }
    if (lt->type != JSON_ARRAY)
        return peft__fail(PEFT_EFORMAT, "%s: \"layer_types\" is not a list", what);
    cfg->window_from = from < 0 ? INT32_MAX : from;
    return PEFT_OK;
}

static int get_float(const json_value *root, const char *key, float *out, const char *what)
{
    const json_value *v = json_get(root, key);
    if (!v || v->type == JSON_NULL)
        return 1;
    if (v->type != JSON_NUMBER)
        return peft__fail(PEFT_EFORMAT, "%s: \"%s\" is not a number", what, key);
    *out = (float)v->number;
    return 0;
}

/* Inverse frequencies as transformers computes them: theta^(-2i/d) (d: the rotated
   dimensions), then the scaling. */
double peft__rope_inv_freq(const peft_config *c, int i)
{
    double inv = pow((double)c->rope_theta, -2.0 * i / peft__rot_dim(c));
    if (c->rope_scaling == 1)
        return inv / c->rope_factor;
    if (c->rope_scaling == 2 && i < 256)
        return inv / c->rope_div[i];
    return inv;
}

static double num_or(const json_value *o, const char *key, double def)
{
    const json_value *v = json_get(o, key);
    return v && v->type == JSON_NUMBER ? v->number : def;
}

double peft__longrope_attention(double factor, double orig)
{
    return factor <= 1.0 ? 1.0 : sqrt(1 + log(factor) / log(orig));
}

/* LongRoPE (transformers' _compute_longrope_parameters): short_factor and long_factor divide the
   rot_dim / 2 frequencies, the long ones for sequences past original_max_position_embeddings;
   cos and sin are multiplied by attention_factor, by default sqrt(1 + ln f / ln original) with
   f = max_position_embeddings / original_max_position_embeddings (root: the config) */
static int longrope(peft_config *cfg, const json_value *rs, const json_value *root, const char *what)
{
    int half = peft__rot_dim(cfg) / 2;
    if (half > 256)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: longrope with %d rotated dimensions (at most 512)", what, 2 * half);
    const char *names[2] = {"short_factor", "long_factor"};
    float *dst[2] = {cfg->rope_div, cfg->rope_div_long};
    for (int j = 0; j < 2; j++) {
        const json_value *f = json_get(rs, names[j]);
        if (!f || f->type != JSON_ARRAY || (int)f->length != half)
            return peft__fail(PEFT_EFORMAT, "%s: longrope's \"%s\" must list %d numbers (rotated dimensions / 2)",
                              what, names[j], half);
        for (int i = 0; i < half; i++) {
            const json_value *v = &f->items[i];
            if (v->type != JSON_NUMBER || !(v->number > 0 && v->number < 1e6))
                return peft__fail(PEFT_EFORMAT, "%s: longrope's %s[%d] must be a positive number", what, names[j], i);
            dst[j][i] = (float)v->number;
        }
    }
    double orig = num_or(root, "original_max_position_embeddings", 0), factor = num_or(rs, "factor", 1.0);
    if (orig > 0)
        factor = num_or(root, "max_position_embeddings", orig) / orig;
    else
        orig = num_or(root, "max_position_embeddings", 0);
    if (!(orig >= 1 && orig < 1e9 && factor > 0 && factor < 1e6))
        return peft__fail(PEFT_EFORMAT, "%s: longrope needs original_max_position_embeddings (or "
                                        "max_position_embeddings) and a positive factor", what);
    double af = num_or(rs, "attention_factor", peft__longrope_attention(factor, orig));
    if (!(af > 0 && af < 1e3))
        return peft__fail(PEFT_EFORMAT, "%s: longrope's attention_factor %g must be positive", what, af);
    cfg->rope_long_from = (int)orig;
    cfg->rope_mscale = (float)af;
    cfg->rope_scaling = 2;
    return PEFT_OK;
}

/* "rope_scaling": {"rope_type" (or "type"): "linear" | "llama3" | "longrope" | "default",
   "factor", ...} */
static int parse_rope_scaling(peft_config *cfg, const json_value *rs, const json_value *root, const char *what)
{
    if (rs->type != JSON_OBJECT)
        return peft__fail(PEFT_EFORMAT, "%s: \"rope_scaling\" must be an object or null", what);
    const json_value *ty = json_get(rs, "rope_type");
    if (!ty)
        ty = json_get(rs, "type");
    const char *type = ty && ty->type == JSON_STRING ? ty->string : NULL;
    if (!type)
        return peft__fail(PEFT_EFORMAT, "%s: \"rope_scaling\" has no \"rope_type\"", what);
    if (!strcmp(type, "default"))
        return PEFT_OK;
    if (!strcmp(type, "longrope") || !strcmp(type, "su")) /* "su": its name in Phi-3's first configs */
        return longrope(cfg, rs, root, what);
    double factor = num_or(rs, "factor", strcmp(type, "llama3") ? 1.0 : 8.0);
    if (!(factor >= 1.0 && factor <= 1e6))
        return peft__fail(PEFT_EFORMAT, "%s: rope_scaling factor %g must be in [1, 1e6]", what, factor);
    cfg->rope_factor = (float)factor;
    if (!strcmp(type, "linear")) {
        cfg->rope_scaling = 1;
        return PEFT_OK;
    }
    if (strcmp(type, "llama3") != 0)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: rope_scaling type \"%s\" is not supported (linear, llama3, "
                                             "longrope)", what, type);
    /* transformers' _compute_llama3_parameters: pairs whose wavelength is below
       original/high_freq_factor keep their frequency, those above original/low_freq_factor
       are divided by factor, and those between are interpolated */
    double lo = num_or(rs, "low_freq_factor", 1.0), hi = num_or(rs, "high_freq_factor", 4.0);
    double orig = num_or(rs, "original_max_position_embeddings", 8192);
    if (!(lo > 0 && hi > lo && orig > 0))
        return peft__fail(PEFT_EFORMAT, "%s: llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor", what);
    if (peft__rot_dim(cfg) / 2 > 256)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: llama3 rope_scaling with head_dim %d (at most 512)", what,
                          peft__rot_dim(cfg));
    double lo_wave = orig / lo, hi_wave = orig / hi;
    for (int i = 0; i < peft__rot_dim(cfg) / 2; i++) {
        double f = peft__rope_inv_freq(cfg, i), wave = 2 * M_PI / f, div; /* unscaled: rope_scaling is 0 here */
        if (wave < hi_wave)
            div = 1.0;
        else if (wave > lo_wave)
            div = factor;
        else {
            double smooth = (orig / wave - lo) / (hi - lo);
            div = 1.0 / ((1 - smooth) / factor + smooth);
        }
        cfg->rope_div[i] = (float)div;
    }
    cfg->rope_scaling = 2;
    return PEFT_OK;
}

/* eos_token_id: a number, or a list whose first entry is used (Llama 3.1, Gemma 3) */
static int get_eos(const json_value *root, int *out, const char *what)
{
    const json_value *v = json_get(root, "eos_token_id");
    if (v && v->type == JSON_ARRAY) {
        if (v->length == 0)
            return 1;
        v = &v->items[0];
        if (v->type != JSON_NUMBER || !v->is_integer || v->number < 0 || v->number > 1e9)
            return peft__fail(PEFT_EFORMAT, "%s: \"eos_token_id\" holds a value that is not a token id", what);
        *out = (int)v->number;
        return 0;
    }
    return get_int(root, "eos_token_id", out, 0, what);
}

/* Gemma 3's text model and Gemma 2 (version 2 or 3): the global/sliding layer pattern, the RoPE
   bases, the query scalar, the soft-caps (transformers' defaults where absent); bidirectional
   attention (an embedding model) refused */
static int gemma_config(peft_config *cfg, const json_value *root, const char *what, int version)
{
    int code, qpas = 256, pattern = version == 2 ? 2 : 6; /* Gemma 2: every other layer global */
    cfg->gemma = version;
    cfg->qk_norm = version == 3;
    cfg->sliding_window = 4096;
    cfg->rope_theta = version == 2 ? 10000.0f : 1000000.0f;
    cfg->rope_local_theta = version == 2 ? 0.0f : 10000.0f;
    cfg->embed_mul = (float)sqrt((double)cfg->dim);
    const char *caps[] = {"attn_logit_softcapping", "final_logit_softcapping"};
    float *cap[] = {&cfg->attn_softcap, &cfg->final_softcap};
    for (int i = 0; i < 2; i++) { /* Gemma 2's defaults 50 and 30; null: none */
        const json_value *v = json_get(root, caps[i]);
        *cap[i] = v ? 0.0f : version == 2 ? (i ? 30.0f : 50.0f) : 0.0f;
        if ((code = get_float(root, caps[i], cap[i], what)) < 0)
            return code;
        if (!(*cap[i] >= 0.0f && *cap[i] < 1e6f))
            return peft__fail(PEFT_EFORMAT, "%s: \"%s\" must be positive", what, caps[i]);
    }
    const json_value *bi = json_get(root, "use_bidirectional_attention");
    if (bi && bi->type == JSON_BOOL && bi->boolean)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: bidirectional attention (an embedding model) is not supported", what);
    const json_value *act = json_get(root, "hidden_activation");
    if (act && (act->type != JSON_STRING || strcmp(act->string, "gelu_pytorch_tanh") != 0))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: \"hidden_activation\" must be \"gelu_pytorch_tanh\"", what);
    if ((code = get_int(root, "query_pre_attn_scalar", &qpas, 0, what)) < 0 ||
        (code = get_int(root, "sliding_window", &cfg->sliding_window, 0, what)) < 0 ||
        (code = get_int(root, "sliding_window_pattern", &pattern, 0, what)) < 0 ||
        (code = get_float(root, "rope_theta", &cfg->rope_theta, what)) < 0 ||
        (version == 3 && (code = get_float(root, "rope_local_base_freq", &cfg->rope_local_theta, what)) < 0))
        return code;
    if (qpas <= 0 || cfg->sliding_window <= 0 || pattern <= 0)
        return peft__fail(PEFT_EFORMAT, "%s: query_pre_attn_scalar, sliding_window and sliding_window_pattern must be "
                                        "positive", what);
    cfg->q_mul = (float)sqrt((double)cfg->head_dim / qpas); /* scores * qpas^-1/2 instead of hd^-1/2 */
    /* layer_types, when given, must repeat (pattern - 1) sliding layers and a global one */
    const json_value *lt = json_get(root, "layer_types");
    if (lt && lt->type != JSON_NULL) {
        if (lt->type != JSON_ARRAY || (int)lt->length != cfg->n_layers)
            return peft__fail(PEFT_EFORMAT, "%s: \"layer_types\" must list num_hidden_layers entries", what);
        pattern = 0;
        for (size_t i = 0; i < lt->length && !pattern; i++)
            if (lt->items[i].type == JSON_STRING && !strcmp(lt->items[i].string, "full_attention"))
                pattern = (int)i + 1;
        if (!pattern)
            pattern = INT32_MAX;
        for (size_t i = 0; i < lt->length; i++) {
            const json_value *t = &lt->items[i];
            const char *want = ((int)i + 1) % pattern ? "sliding_attention" : "full_attention";
            if (t->type != JSON_STRING || strcmp(t->string, want) != 0)
                return peft__fail(PEFT_EUNSUPPORTED, "%s: \"layer_types\" must repeat sliding_attention layers and "
                                                     "one full_attention layer", what);
        }
    }
    cfg->window_pattern = pattern;
    /* transformers 5 writes {"full_attention": {...}, "sliding_attention": {...}} instead */
    const json_value *rp = json_get(root, "rope_parameters");
    if (version == 3 && rp && rp->type == JSON_OBJECT) {
        const json_value *full = json_get(rp, "full_attention"), *slide = json_get(rp, "sliding_attention");
        if (!full || full->type != JSON_OBJECT || !slide || slide->type != JSON_OBJECT)
            return peft__fail(PEFT_EFORMAT, "%s: \"rope_parameters\" needs full_attention and sliding_attention", what);
        const json_value *st = json_get(slide, "rope_type");
        if (st && (st->type != JSON_STRING || strcmp(st->string, "default") != 0))
            return peft__fail(PEFT_EUNSUPPORTED, "%s: RoPE scaling on the sliding layers is not supported", what);
        if ((code = get_float(full, "rope_theta", &cfg->rope_theta, what)) < 0 ||
            (code = get_float(slide, "rope_theta", &cfg->rope_local_theta, what)) < 0)
            return code;
        if (json_get(full, "rope_type") && (code = parse_rope_scaling(cfg, full, root, what)) < 0)
            return code;
    }
    if (version == 3 && (!(cfg->rope_local_theta > 0.0f) || !isfinite(cfg->rope_local_theta)))
        return peft__fail(PEFT_EFORMAT, "%s: rope_local_base_freq must be positive", what);
    return PEFT_OK;
}

/* SmolLM3: every nope_every-th layer without RoPE, from "no_rope_layers" (1: RoPE, 0: none),
   which must have that shape, or "no_rope_layer_interval" (transformers' default 4); no
   sliding window (transformers puts it on the NoPE layers) */
static int smollm3_config(peft_config *cfg, const json_value *root, const char *what)
{
    int code, every = 4;
    const json_value *nl = json_get(root, "no_rope_layers"), *sw = json_get(root, "use_sliding_window");
    const json_value *lt = json_get(root, "layer_types");
    if (sw && sw->type == JSON_BOOL && sw->boolean)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: SmolLM3's sliding window (use_sliding_window) is not supported", what);
    for (size_t i = 0; lt && lt->type == JSON_ARRAY && i < lt->length; i++)
        if (lt->items[i].type != JSON_STRING || strcmp(lt->items[i].string, "full_attention") != 0)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: \"layer_types\" other than full_attention is not supported", what);
    if ((code = get_int(root, "no_rope_layer_interval", &every, 0, what)) < 0)
        return code;
    if (every == 0 && !(nl && nl->type != JSON_NULL))
        return peft__fail(PEFT_EFORMAT, "%s: \"no_rope_layer_interval\" must be positive", what);
    if (nl && nl->type != JSON_NULL) { /* (every 0: RoPE on every layer) */
        if (nl->type != JSON_ARRAY || (int)nl->length < cfg->n_layers)
            return peft__fail(PEFT_EFORMAT, "%s: \"no_rope_layers\" must list num_hidden_layers entries", what);
        every = 0;
        for (int i = 0; i < cfg->n_layers && !every; i++)
            if (nl->items[i].type == JSON_NUMBER && nl->items[i].number == 0)
                every = i + 1;
        for (int i = 0; i < cfg->n_layers; i++) {
            const json_value *v = &nl->items[i];
            int rope = every <= 0 || (i + 1) % every != 0;
            if (v->type != JSON_NUMBER || v->number != (double)rope)
                return peft__fail(PEFT_EUNSUPPORTED, "%s: \"no_rope_layers\" must leave out RoPE on every k-th layer "
                                                     "and keep it on the others (1, ..., 1, 0, repeated)", what);
        }
    }
    cfg->nope_every = every;
    return PEFT_OK;
}

/* IBM Granite: Llama with four scalars (transformers' defaults 1): embedding_multiplier,
   residual_multiplier, attention_multiplier (the scores' scale itself, not over sqrt(head_dim)) and
   logits_scaling (the logits divided by it) */
static int granite_config(peft_config *cfg, const json_value *root, const char *what)
{
    float attn = 1.0f, logits = 1.0f;
    int code;
    if ((code = get_float(root, "embedding_multiplier", &cfg->embed_mul, what)) < 0 ||
        (code = get_float(root, "residual_multiplier", &cfg->res_mul, what)) < 0 ||
        (code = get_float(root, "attention_multiplier", &attn, what)) < 0 ||
        (code = get_float(root, "logits_scaling", &logits, what)) < 0)
        return code;
    if (!(cfg->embed_mul > 0.0f && cfg->res_mul > 0.0f && attn > 0.0f && logits > 0.0f) ||
        !isfinite(cfg->embed_mul * cfg->res_mul * attn * logits))
        return peft__fail(PEFT_EFORMAT, "%s: Granite's multipliers and logits_scaling must be positive", what);
    cfg->q_mul = attn * sqrtf((float)cfg->head_dim);
    cfg->logit_mul = 1.0f / logits;
    return PEFT_OK;
}

/* Phi-3: the fused qkv_proj and gate_up_proj; RoPE on partial_rotary_factor of each head
   (Phi-4-mini: 0.75), before the rope_scaling is read; no biases (Phi-3 has none) */
static int phi3_config(peft_config *cfg, const json_value *root, const char *what)
{
    cfg->fused = 1;
    double prf = num_or(root, "partial_rotary_factor", 1.0);
    int rot = prf > 0 && prf <= 1 ? (int)(cfg->head_dim * prf) : 0; /* int(), as transformers truncates it */
    if (rot < 2 || rot % 2)
        return peft__fail(PEFT_EFORMAT, "%s: partial_rotary_factor %g leaves %d rotated dimensions of %d (an even "
                                        "number from 2 up is needed)", what, prf, rot, cfg->head_dim);
    cfg->rot_dim = rot == cfg->head_dim ? 0 : rot;
    const json_value *ab = json_get(root, "attention_bias"), *mb = json_get(root, "mlp_bias");
    if ((ab && ab->type == JSON_BOOL && ab->boolean) || (mb && mb->type == JSON_BOOL && mb->boolean))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: Phi-3 with biases is not supported", what);
    return PEFT_OK;
}

int peft__config_parse(peft_config *cfg, const char *text, size_t len, const char *what)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->embed_mul = cfg->q_mul = cfg->res_mul = cfg->logit_mul = 1.0f;
    json_doc *doc;
    int code = json_parse(&doc, text, len, what);
    if (code)
        return code;
    const json_value *root = json_root(doc);
    if (root->type != JSON_OBJECT) {
        json_free(doc);
        return peft__fail(PEFT_EFORMAT, "%s: not a JSON object", what);
    }
    const json_value *mt = json_get(root, "model_type");
    const char *arch = mt && mt->type == JSON_STRING ? mt->string : NULL;
    if (!arch) {
        json_free(doc);
        return peft__fail(PEFT_EFORMAT, "%s: missing \"model_type\"", what);
    }
    /* Gemma 3's multimodal checkpoints: the text model's config is text_config, whose keys
       transformers' Gemma3TextConfig defaults are left out (gemma-3-4b's holds six) */
    const json_value *top = root;
    int mm = !strcmp(arch, "gemma3");
    if (mm) {
        const json_value *tc = json_get(root, "text_config"), *tt = tc ? json_get(tc, "model_type") : NULL;
        if (!tc || tc->type != JSON_OBJECT || (tt && (tt->type != JSON_STRING || strcmp(tt->string, "gemma3_text")))) {
            json_free(doc);
            return peft__fail(PEFT_EFORMAT, "%s: a multimodal Gemma 3 (model_type gemma3) needs a \"text_config\" "
                                            "object of model_type gemma3_text", what);
        }
        root = tc;
        arch = "gemma3_text";
        cfg->multimodal = 1;
        cfg->dim = 2304, cfg->ffn_dim = 9216, cfg->n_layers = 26, cfg->n_heads = 8, cfg->vocab = 262208;
    }
    int gemma = !strcmp(arch, "gemma3_text") ? 3 : !strcmp(arch, "gemma2") ? 2 : 0;
    int smollm3 = !strcmp(arch, "smollm3"), granite = !strcmp(arch, "granite"), phi3 = !strcmp(arch, "phi3");
    if (strcmp(arch, "llama") != 0 && strcmp(arch, "mistral") != 0 && strcmp(arch, "qwen2") != 0 &&
        strcmp(arch, "qwen3") != 0 && !gemma && !smollm3 && !granite && !phi3) {
        code = peft__fail(PEFT_EUNSUPPORTED,
                          "%s: architecture \"%s\" is not supported (supported: llama, which "
                          "covers Llama 2 and 3, SmolLM, TinyLlama; smollm3; granite; mistral; qwen2; qwen3; "
                          "phi3, Phi-3, Phi-3.5 and Phi-4-mini; gemma2; gemma3_text and gemma3, Gemma 3's text and "
                          "multimodal models)",
                          what, arch);
        json_free(doc);
        return code;
    }
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", gemma == 3 ? "gemma3" : arch);
    if ((code = get_int(root, "hidden_size", &cfg->dim, !mm, what)) < 0 ||
        (code = get_int(root, "intermediate_size", &cfg->ffn_dim, !mm, what)) < 0 ||
        (code = get_int(root, "num_hidden_layers", &cfg->n_layers, !mm, what)) < 0 ||
        (code = get_int(root, "num_attention_heads", &cfg->n_heads, !mm, what)) < 0 ||
        (code = get_int(root, "vocab_size", &cfg->vocab, !mm, what)) < 0) {
        json_free(doc);
        return code;
    }
    cfg->n_kv_heads = cfg->n_heads;
    cfg->head_dim = cfg->n_heads ? cfg->dim / cfg->n_heads : 0;
    cfg->eps = 1e-6f;
    cfg->rope_theta = 10000.0f;
    cfg->bos_id = 1;
    cfg->eos_id = 2;
    if (smollm3) /* transformers' SmolLM3 defaults */
        cfg->rope_theta = 2000000.0f;
    if (mm) /* Gemma3TextConfig's */
        cfg->n_kv_heads = 4, cfg->head_dim = 256, cfg->bos_id = 2, cfg->eos_id = 1;
    if ((code = get_int(root, "num_key_value_heads", &cfg->n_kv_heads, 0, what)) < 0 ||
        (code = get_int(root, "head_dim", &cfg->head_dim, 0, what)) < 0 ||
        (code = get_int(root, "bos_token_id", &cfg->bos_id, 0, what)) < 0 ||
        (code = get_eos(root, &cfg->eos_id, what)) < 0 ||
        (code = get_float(root, "rms_norm_eps", &cfg->eps, what)) < 0 ||
        (code = get_float(root, "rope_theta", &cfg->rope_theta, what)) < 0 ||
        (code = get_int(root, "max_position_embeddings", &cfg->ctx_len, 0, what)) < 0 ||
        (mm && (code = get_eos(top, &cfg->eos_id, what)) < 0)) { /* the checkpoint's own, when it has one */
        json_free(doc);
        return code;
    }
    /* Mistral's and Phi-3's sliding-window attention (null or absent: none) */
    if ((!strcmp(arch, "mistral") || phi3) &&
        (code = get_int(root, "sliding_window", &cfg->sliding_window, 0, what)) < 0) {
        json_free(doc);
        return code;
    }
    if (phi3 && (code = phi3_config(cfg, root, what)) < 0) {
        json_free(doc);
        return code;
    }
    const json_value *tie = json_get(root, "tie_word_embeddings");
    cfg->tied = tie && tie->type == JSON_BOOL ? tie->boolean : gemma || smollm3; /* transformers' defaults */
    const json_value *rs = json_get(root, "rope_scaling");
    const json_value *ab = json_get(root, "attention_bias");
    const json_value *mb = json_get(root, "mlp_bias");
    const json_value *act = json_get(root, "hidden_act");
    /* transformers 5 writes the RoPE base and scaling as one "rope_parameters" object (Gemma 3:
       one per layer type, read by gemma_config) */
    const json_value *rp = json_get(root, "rope_parameters");
    if (rp && rp->type != JSON_NULL && rp->type != JSON_OBJECT)
        code = peft__fail(PEFT_EFORMAT, "%s: \"rope_parameters\" must be an object or null", what);
    else if (!rp || rp->type != JSON_OBJECT || gemma == 3)
        rp = NULL;
    if (code >= 0 && gemma)
        code = gemma_config(cfg, root, what, gemma);
    if (code >= 0 && smollm3)
        code = smollm3_config(cfg, root, what);
    if (code >= 0 && granite)
        code = granite_config(cfg, root, what);
    if (code >= 0 && rp && (code = get_float(rp, "rope_theta", &cfg->rope_theta, what)) >= 0 && json_get(rp, "rope_type"))
        rs = rp; /* its rope_type is the scaling */
    if (code >= 0 && rs && rs->type != JSON_NULL)
        code = parse_rope_scaling(cfg, rs, root, what);
    const uint32_t qkv = 1u << PEFT_MOD_Q | 1u << PEFT_MOD_K | 1u << PEFT_MOD_V;
    if (!strcmp(arch, "qwen2"))
        cfg->bias_mask = qkv; /* Qwen2's q, k and v projections always have biases */
    else if (ab && ab->type == JSON_BOOL && ab->boolean) /* Llama, Qwen3: also o_proj */
        cfg->bias_mask = qkv | 1u << PEFT_MOD_O;
    if (mb && mb->type == JSON_BOOL && mb->boolean)
        cfg->bias_mask |= 1u << PEFT_MOD_GATE | 1u << PEFT_MOD_UP | 1u << PEFT_MOD_DOWN;
    cfg->qk_norm = !strcmp(arch, "qwen3") || gemma == 3;
    const json_value *sw = json_get(root, "use_sliding_window");
    if (code >= 0 && !strncmp(arch, "qwen", 4) && sw && sw->type == JSON_BOOL && sw->boolean)
        code = qwen_window(cfg, root, what);
    if (code >= 0 && !gemma && act && (act->type != JSON_STRING || strcmp(act->string, "silu") != 0))
        code = peft__fail(PEFT_EUNSUPPORTED, "%s: \"hidden_act\" must be \"silu\"", what);
    json_free(doc);
    if (code < 0)
        return code;
    return peft__config_validate(cfg, what);
}

/* a layer's biases, q/k norm weights and Gemma 3's extra norms */
uint64_t peft__extra_layer_params(const peft_config *c)
{
    int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t out[7] = {qd, kvd, kvd, c->dim, c->ffn_dim, c->ffn_dim, c->dim};
    uint64_t n = c->qk_norm ? 2ull * (uint64_t)c->head_dim : 0;
    n += c->gemma ? 2ull * (uint64_t)c->dim : 0; /* Gemma 3's norms after attention and the MLP */
    for (int k = 0; k < 7; k++)
        if (c->bias_mask >> k & 1)
            n += (uint64_t)out[k];
    return n;
}

int peft__config_validate(const peft_config *c, const char *what)
{
    if (c->dim <= 0 || c->ffn_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 ||
        c->n_kv_heads <= 0 || c->head_dim <= 0 || c->vocab <= 0)
        return peft__fail(PEFT_EFORMAT, "%s: dimensions must be positive", what);
    if (c->n_layers > 4096 || c->dim > 1 << 17 || c->ffn_dim > 1 << 20 || c->vocab > 1 << 24 ||
        c->n_heads > 4096 || c->head_dim > 4096)
        return peft__fail(PEFT_EFORMAT, "%s: dimensions out of range", what);
    if (c->n_heads % c->n_kv_heads != 0)
        return peft__fail(PEFT_EFORMAT,
                          "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                          what, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2 != 0)
        return peft__fail(PEFT_EFORMAT, "%s: head_dim (%d) must be even for RoPE", what, c->head_dim);
    if (!(c->eps > 0.0f) || !isfinite(c->eps) || !(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        return peft__fail(PEFT_EFORMAT, "%s: rms_norm_eps and rope_theta must be positive", what);
    return PEFT_OK;
}
