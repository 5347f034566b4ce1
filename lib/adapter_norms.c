/*
 * Norm tuning adapters (PEFT peft_type "LN_TUNING"): the RMSNorm weights themselves, saved under
 * "...<norm>.ln_tuning_layers.weight" with the norms' module names as target_modules, and loaded
 * from such a directory (the same norms on every listed layer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "model.h"

/* the LN_TUNING key of a slot of a layer (n_layers: the final norm) */
static void norm_key(char *buf, size_t n, const peft_config *c, int layer, int slot)
{
    if (layer == c->n_layers)
        snprintf(buf, n, "base_model.model.model.norm.ln_tuning_layers.weight");
    else
        snprintf(buf, n, "base_model.model.model.layers.%d.%s.ln_tuning_layers.weight", layer,
                 peft__norm_name(peft__norm_bit(c, slot)));
}

/* the slot of a layer norm's module name on this model ("self_attn.q_norm" or "q_norm"), or -1 */
static int norm_slot_named(const peft_config *c, const char *name)
{
    for (int s = 0; s < PEFT__NORM_SLOTS; s++) {
        const char *full = peft__norm_name(peft__norm_bit(c, s)), *last = strrchr(full, '.');
        if (peft__norm_bit(c, s) && (!strcmp(name, full) || (last && !strcmp(name, last + 1))))
            return s;
    }
    return -1;
}

int peft__save_norms(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name)
{
    const lora_state *l = m->lora;
    const peft_config *c = &m->cfg;
    int L = c->n_layers, S = PEFT__NORM_SLOTS, n = 0, all_layers = 1, code;
    for (int i = 0; i < L; i++)
        all_layers &= l->layer_on[i];
    st_out_tensor *ts = calloc((size_t)(S * L + 1), sizeof *ts);
    char *names = calloc((size_t)(S * L + 1), 128);
    struct jw w = {0};
    if (!ts || !names) {
        free(ts);
        free(names);
        return peft__fail(PEFT_ENOMEM, "out of memory");
    }
    jw_put(&w, "{\n  \"base_model_name_or_path\": ");
    jw_str(&w, base_name);
    jw_put(&w, ",\n  \"inference_mode\": true,\n  \"modules_to_save\": null,\n  \"peft_type\": \"LN_TUNING\",\n"
               "  \"revision\": null,\n  \"target_modules\": [");
    int first = 1;
    for (int i = 0; i < S * L + 1; i++) {
        int layer = i / S, slot = i % S;
        const char *name = peft__norm_name(layer < L ? peft__norm_bit(c, slot) : PEFT_NORM_FINAL);
        if (l->norm_off[i] < 0)
            continue;
        norm_key(names + (size_t)n * 128, 128, c, layer, slot);
        ts[n].name = names + (size_t)n * 128;
        ts[n].n_dims = 1;
        ts[n].shape[0] = peft__norm_width(c, slot);
        ts[n].data = l->params + l->norm_off[i];
        n++;
        if (layer == L)
            jw_put(&w, "%s\n    \"%s%s\"", first ? "" : ",", all_layers ? "" : peft__prefix(c), "norm");
        else if (all_layers && layer == 0)
            jw_put(&w, "%s\n    \"%s\"", first ? "" : ",", name);
        else if (!all_layers)
            jw_put(&w, "%s\n    \"%slayers.%d.%s\"", first ? "" : ",", peft__prefix(c), layer, name);
        else
            continue;
        first = 0;
    }
    jw_put(&w, "\n  ],\n  \"task_type\": \"CAUSAL_LM\"\n}");
    code = peft__write_adapter(&m->cfg, st_path, ts, (size_t)n, cfg_path, &w);
    free(ts);
    free(names);
    return code;
}

int peft__load_norms(peft_model *m, const json_value *root, const char *cfg_path, const char *st_path)
{
    const json_value *t = json_get(root, "target_modules");
    const peft_config *c = &m->cfg;
    int L = c->n_layers, S = PEFT__NORM_SLOTS;
    if (!t || t->type != JSON_ARRAY || t->length == 0)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: LN_TUNING target_modules must be a list", cfg_path);
    uint8_t *sel = calloc((size_t)(S * L + 1), 1);
    if (!sel)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    for (size_t i = 0; i < t->length; i++) {
        char canon[160];
        const char *s = peft__canon_module(t->items[i].type == JSON_STRING ? t->items[i].string : "", canon,
                                           sizeof canon);
        int ok = 0, slot;
        long layer;
        char *end;
        if (!strcmp(s, "norm") || !strcmp(s, "model.norm")) {
            sel[S * L] = ok = 1;
        } else if ((slot = norm_slot_named(c, s)) >= 0) {
            for (int l = 0; l < L; l++)
                sel[S * l + slot] = 1;
            ok = 1;
        } else if (!strncmp(s, "model.layers.", 13) && (layer = strtol(s + 13, &end, 10)) >= 0 && end != s + 13 &&
                   *end == '.' && layer < L && (slot = norm_slot_named(c, end + 1)) >= 0) {
            sel[S * layer + slot] = ok = 1;
        }
        if (!ok) {
            free(sel);
            return peft__fail(PEFT_EUNSUPPORTED, "%s: LN_TUNING target module \"%s\" is not supported (or not "
                              "one of this model's norms)", cfg_path, s);
        }
    }
    /* express the selection as options: same norms on every selected layer */
    peft_norms_options o = PEFT_NORMS_OPTIONS_INIT;
    o.norms = sel[S * L] ? PEFT_NORM_FINAL : 0;
    char layers[8192];
    size_t n = 0;
    int per_layer = -1, rect = 1;
    layers[0] = '\0';
    for (int l = 0; l < L; l++) {
        int bits = 0;
        for (int slot = 0; slot < S; slot++)
            bits |= sel[S * l + slot] ? (int)peft__norm_bit(c, slot) : 0;
        if (!bits)
            continue;
        if (per_layer >= 0 && bits != per_layer)
            rect = 0;
        per_layer = bits;
        n += (size_t)snprintf(layers + n, sizeof layers - n, "%s%d", n ? "," : "", l);
    }
    free(sel);
    if (!rect)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: LN_TUNING must tune the same norms in every listed layer", cfg_path);
    if (per_layer > 0) {
        o.norms |= (uint32_t)per_layer;
        o.layers = layers;
    }
    lora_state *saved = m->lora;
    st_file *f = NULL;
    int code = peft__adapter_open(&f, st_path);
    if (code)
        return code;
    m->lora = NULL;
    if ((code = peft_attach_norms(m, &o, NULL))) {
        m->lora = saved;
        st_close(f);
        return code;
    }
    lora_state *l = m->lora;
    size_t count = 0;
    for (int i = 0; i < S * L + 1 && !code; i++) {
        if (l->norm_off[i] < 0)
            continue;
        char key[160];
        norm_key(key, sizeof key, c, i / S, i % S);
        const st_tensor *st = st_find(f, key);
        int width = peft__norm_width(c, i % S);
        count++;
        if (!st)
            code = peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing", st_path, key);
        else if (st->n_dims != 1 || st->shape[0] != width)
            code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' must have shape [%d]", st_path, key, width);
        else
            code = st_read_f32(f, st, l->params + l->norm_off[i], (uint64_t)width);
    }
    if (!code && f->n_tensors != count)
        code = peft__fail(PEFT_EFORMAT, "%s: %zu tensors, but adapter_config.json describes %zu", st_path, f->n_tensors,
                          count);
    st_close(f);
    return peft__keep_or_restore(m, saved, code);
}
