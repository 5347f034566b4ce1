/*
 * Training checkpoints: the adapter (a normal Hugging Face PEFT directory) plus
 * optimizer.safetensors holding the AdamW moments, the gradients accumulated so far
 * and the counters (update step, micro-batches, token count, dropout stream), so a
 * resumed run continues exactly where the saved one was. Each file is written
 * atomically; a hash of the parameters, stored with the optimizer state, detects a
 * checkpoint whose two files come from different saves (a crash between them).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

static uint64_t params_hash(const float *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n * sizeof *p; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

int peft_save_checkpoint(peft_model *m, const char *dir)
{
    if (!m || !dir)
        return peft__fail(PEFT_EINVAL, "peft_save_checkpoint: NULL argument");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_save_checkpoint: no adapter attached");
    lora_state *l = m->lora;
    char *path = peft__path_join(dir, "optimizer.safetensors");
    if (!path)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    /* the optimizer state first: a crash after it leaves the old adapter, which the hash exposes */
    char step[32], micro[32], tokens[48], drop[32], hash[32], n[32], seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, l->seed);
    snprintf(step, sizeof step, "%" PRId64, m->step);
    snprintf(micro, sizeof micro, "%d", m->micro);
    snprintf(tokens, sizeof tokens, "%.17g", m->accum_tokens);
    snprintf(drop, sizeof drop, "%" PRIu64, m->dropout_calls);
    snprintf(hash, sizeof hash, "%016" PRIx64, params_hash(l->params, l->n_params));
    snprintf(n, sizeof n, "%zu", l->n_params);
    const char *keys[] = {"format", "step", "micro", "accum_tokens", "dropout_calls", "params_hash", "n_params",
                          "seed"};
    const char *vals[] = {"libpeft-optimizer-1", step, micro, tokens, drop, hash, n, seed};
    st_out_tensor ts[3] = {{"exp_avg", 1, {(int64_t)l->n_params}, l->m},
                           {"exp_avg_sq", 1, {(int64_t)l->n_params}, l->v},
                           {"grad_accum", 1, {(int64_t)l->n_params}, l->grads}};
    int code = peft__mkdirs(dir);
    if (!code)
        code = st_write(path, ts, 3, keys, vals, 8);
    free(path);
    if (!code)
        code = peft_save_adapter(m, dir, NULL);
    return code;
}

static const char *meta(const st_file *f, const char *key)
{
    const json_value *v = f->metadata ? json_get(f->metadata, key) : NULL;
    return v && v->type == JSON_STRING ? v->string : NULL;
}

int peft_load_checkpoint(peft_model *m, const char *dir)
{
    if (!m || !dir)
        return peft__fail(PEFT_EINVAL, "peft_load_checkpoint: NULL argument");
    char *path = peft__path_join(dir, "optimizer.safetensors");
    if (!path)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    st_file *f = NULL;
    int code = st_open(&f, path);
    if (!code)
        code = peft_load_adapter(m, dir);
    if (code)
        goto done;
    lora_state *l = m->lora;
    const char *fmt = meta(f, "format"), *step = meta(f, "step"), *micro = meta(f, "micro"),
               *tok = meta(f, "accum_tokens"), *drop = meta(f, "dropout_calls"), *hash = meta(f, "params_hash");
    if (!fmt || strcmp(fmt, "libpeft-optimizer-1") != 0 || !step || !micro || !tok || !drop || !hash) {
        code = peft__fail(PEFT_EFORMAT, "%s: not a libpeft optimizer state", path);
        goto done;
    }
    char mine[32];
    snprintf(mine, sizeof mine, "%016" PRIx64, params_hash(l->params, l->n_params));
    if (strcmp(mine, hash) != 0) {
        code = peft__fail(PEFT_EFORMAT, "%s: the optimizer state belongs to other adapter weights "
                                        "(a save interrupted between its two files?)", path);
        goto done;
    }
    const char *names[3] = {"exp_avg", "exp_avg_sq", "grad_accum"};
    float *dst[3] = {l->m, l->v, l->grads};
    for (int i = 0; i < 3 && !code; i++) {
        const st_tensor *t = st_find(f, names[i]);
        if (!t)
            code = peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' is missing", path, names[i]);
        else
            code = st_read_f32(f, t, dst[i], l->n_params);
    }
    if (code)
        goto done;
    m->step = strtoll(step, NULL, 10);
    m->micro = (int)strtol(micro, NULL, 10);
    m->accum_tokens = strtod(tok, NULL);
    m->dropout_calls = strtoull(drop, NULL, 10);
    const char *seed = meta(f, "seed");
    if (seed)
        l->seed = strtoull(seed, NULL, 10); /* the dropout stream continues */
done:
    if (code && m->lora && f) {
        /* leave no half-restored state behind */
        peft_detach(m);
    }
    st_close(f);
    free(path);
    return code;
}
