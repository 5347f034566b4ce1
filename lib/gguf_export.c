/*
 * A merged model (base + adapter) written as a GGUF file that llama.cpp runs, from a GGUF
 * base: every key/value of the base (architecture, hyperparameters, vocabulary, chat
 * template) copied as it is, general.name replaced; tensors in the base's order, those the
 * adapter does not change copied byte for byte, the changed ones (merged linear weights,
 * trained norms, embeddings, lm_head) encoded in the requested type, q/k rows put back into
 * llama.cpp's order for the llama architecture. Written to a temporary file, then renamed.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "model.h"

/* the output's keys: the base's copied (GGUF base) or made (Hugging Face base) */
struct out_keys {
    gg_buf b;
    uint64_t n;
    uint64_t alignment;
    int drop_file_type;
    const uint8_t *map;
};

static int keep_key(void *ctx, const gg_kv *kv)
{
    struct out_keys *k = ctx;
    if (peft__gg_key_is(kv, "general.alignment"))
        k->alignment = (uint64_t)kv->iv;
    if (peft__gg_key_is(kv, "general.name") || (k->drop_file_type && peft__gg_key_is(kv, "general.file_type")))
        return PEFT_OK;
    peft__gb_put(&k->b, k->map + kv->raw_off, kv->raw_len);
    k->n++;
    return k->b.oom ? peft__fail(PEFT_ENOMEM, "out of memory") : PEFT_OK;
}

/* one output tensor: copied from the base (src), or made from floats (HF row order) */
struct out_t {
    const gg_tensor *src;
    char name[96];
    int n_dims;
    uint64_t ne[2];
    uint32_t type;
    uint64_t bytes, offset;
    int what, layer, kind; /* what: 0 copy, 1 linear weight, 2 norm (kind: its slot), 3 embeddings,
                              4 lm_head, 5 bias, 7 RoPE divisors (LongRoPE's short ones), 8 LongRoPE's long ones */
};

static int parse_blk(const char *name, const char *tail, int *layer)
{
    if (strncmp(name, "blk.", 4) != 0)
        return 0;
    char *end;
    long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || strcmp(end + 1, tail) != 0)
        return 0;
    *layer = (int)l;
    return 1;
}

/* the norm slot of a GGUF norm tensor (*layer = n_layers for output_norm), or -1 */
static int norm_slot(const peft_config *c, const char *name, int *layer)
{
    static const char *const tails[PEFT__NORM_SLOTS] = {"attn_norm.weight", "ffn_norm.weight",
                                                        "post_attention_norm.weight", "post_ffw_norm.weight",
                                                        "attn_q_norm.weight", "attn_k_norm.weight"};
    if (!strcmp(name, "output_norm.weight")) {
        *layer = c->n_layers;
        return 0;
    }
    for (int s = 0; s < PEFT__NORM_SLOTS; s++)
        if ((s < 2 || peft__norm_bit(c, s)) && parse_blk(name, tails[s], layer) && *layer >= 0 &&
            *layer < c->n_layers)
            return s;
    return -1;
}

/* llama.cpp's names of the linear modules (q, k, v, o, gate, up, down) */
/* the module kind of a tensor named "blk.L.<module>.<what>" with L < n_layers (*layer), or -1 */
static int blk_module(const peft_config *c, const char *name, const char *what, int *layer)
{
    for (int kind = 0; kind < PEFT_MOD_COUNT; kind++) {
        char tail[32];
        snprintf(tail, sizeof tail, "%s.%s", peft__gguf_mod_name(c, kind), what);
        if (peft__has_mod(c, kind) && parse_blk(name, tail, layer) && *layer >= 0 && *layer < c->n_layers)
            return kind;
    }
    return -1;
}

static int encodable(uint32_t t)
{
    return t == PEFT_GG_F32 || t == PEFT_GG_F16 || t == PEFT_GG_BF16 || t == PEFT_GG_Q8_0 || t == PEFT_GG_Q4_0 ||
           t == PEFT_GG_Q4_K || t == PEFT_GG_Q6_K;
}

/* the type a matrix of rows of ne0 is written in: want, else Q8_0 (rows not whole blocks of
   want), else F32 */
static uint32_t pick_type(uint32_t want, uint64_t ne0)
{
    return encodable(want) && peft__gg_row_bytes(want, ne0) ? want
           : peft__gg_row_bytes(PEFT_GG_Q8_0, ne0)         ? PEFT_GG_Q8_0
                                                            : PEFT_GG_F32;
}

/* q/k rows (or bias entries) of `heads` heads from Hugging Face's order into llama.cpp's:
   file row h*hd + 2i + j <- HF row h*hd + j*half + i */
static void permute_rows(float *dst, const float *w, int64_t rows, int64_t cols, int heads)
{
    int64_t hd = rows / heads, half = hd / 2;
    for (int64_t r = 0; r < rows; r++) {
        int64_t h = r / hd, rr = r % hd;
        memcpy(dst + r * cols, w + (h * hd + (rr % 2) * half + rr / 2) * cols, (size_t)cols * sizeof *dst);
    }
}

/* the floats of an output tensor made by the model (n = ne0 * ne1), in the file's row order */
static int tensor_floats(peft_model *m, const struct out_t *t, float *dst, float *tmp, int permuted)
{
    const peft_config *c = &m->cfg;
    size_t n = (size_t)t->ne[0] * (size_t)(t->n_dims == 2 ? t->ne[1] : 1);
    if (t->what == 2) {
        /* applied: Gemma's as 1 + w, as llama.cpp's converter stores them */
        memcpy(dst, peft__norm_weight(m, t->layer, t->kind), n * sizeof *dst);
        return PEFT_OK;
    }
    if (t->what == 3) {
        peft__effective_embed(m, dst);
        return PEFT_OK;
    }
    if (t->what == 4) {
        peft__effective_head(m, dst); /* (returns whether the attachment changes it) */
        return PEFT_OK;
    }
    if (t->what == 7 || t->what == 8) {
        memcpy(dst, t->what == 7 ? c->rope_div : c->rope_div_long, n * sizeof *dst);
        return PEFT_OK;
    }
    int changed;
    const float *w = t->what == 5 ? peft__effective_bias(m, t->layer, t->kind, tmp)
                                  : peft__effective_weight(m, t->layer, t->kind, tmp, &changed);
    int heads = !permuted ? 0 : t->kind == PEFT_MOD_Q ? c->n_heads : t->kind == PEFT_MOD_K ? c->n_kv_heads : 0;
    if (!heads) {
        if (w != dst)
            memcpy(dst, w, n * sizeof *dst);
        return PEFT_OK;
    }
    if (t->what == 5) /* a bias: one value per row */
        permute_rows(dst, w, (int64_t)t->ne[0], 1, heads);
    else
        permute_rows(dst, w, (int64_t)t->ne[1], (int64_t)t->ne[0], heads);
    return PEFT_OK;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}


/* tensor t of a model made from a Hugging Face base (every tensor made from floats) */
static void add_made(struct out_t *t, const char *name, int n_dims, uint64_t ne0, uint64_t ne1, uint32_t type,
                     int what, int layer, int kind)
{
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = n_dims == 2 ? ne1 : 1;
    t->type = n_dims == 2 ? pick_type(type, ne0) : PEFT_GG_F32;
    t->bytes = peft__gg_row_bytes(t->type, ne0) * t->ne[1];
    t->what = what, t->layer = layer, t->kind = kind;
}

/* the tensors of a Hugging Face base, named and laid out as llama.cpp's converter writes them */
static size_t hf_tensors(const peft_model *m, struct out_t *ts, uint32_t type, int untie)
{
    const peft_config *c = &m->cfg;
    size_t n = 0;
    char nm[96];
    add_made(&ts[n++], "token_embd.weight", 2, (uint64_t)c->dim, (uint64_t)c->vocab, type, 3, 0, 0);
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        add_made(&ts[n++], nm, 1, (uint64_t)c->dim, 1, 0, 2, l, PEFT__NORM_IN);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        add_made(&ts[n++], nm, 1, (uint64_t)c->dim, 1, 0, 2, l, PEFT__NORM_MLP);
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            const peft_w *w = &m->layers[l].w[k];
            if (!peft__has_mod(c, k))
                continue;
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, peft__gguf_mod_name(c, k));
            add_made(&ts[n++], nm, 2, (uint64_t)w->cols, (uint64_t)w->rows, type, 1, l, k);
            if (c->bias_mask >> k & 1) {
                snprintf(nm, sizeof nm, "blk.%d.%s.bias", l, peft__gguf_mod_name(c, k));
                add_made(&ts[n++], nm, 1, (uint64_t)w->rows, 1, 0, 5, l, k);
            }
        }
        for (int k = 0; c->qk_norm && k < 2; k++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, k ? "attn_k_norm" : "attn_q_norm");
            add_made(&ts[n++], nm, 1, (uint64_t)c->head_dim, 1, 0, 2, l, k ? PEFT__NORM_K : PEFT__NORM_Q);
        }
        for (int k = 0; c->gemma && k < 2; k++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, k ? "post_ffw_norm" : "post_attention_norm");
            add_made(&ts[n++], nm, 1, (uint64_t)c->dim, 1, 0, 2, l, k ? PEFT__NORM_MLP_OUT : PEFT__NORM_ATTN_OUT);
        }
    }
    add_made(&ts[n++], "output_norm.weight", 1, (uint64_t)c->dim, 1, 0, 2, c->n_layers, 0);
    if (!c->tied || untie)
        add_made(&ts[n++], "output.weight", 2, (uint64_t)c->dim, (uint64_t)c->vocab, type, 4, 0, 0);
    if (c->rope_scaling == 2 && c->rope_long_from > 0) { /* LongRoPE: phi3's factor tensors */
        add_made(&ts[n++], "rope_factors_long.weight", 1, (uint64_t)peft__rot_dim(c) / 2, 1, 0, 8, 0, 0);
        add_made(&ts[n++], "rope_factors_short.weight", 1, (uint64_t)peft__rot_dim(c) / 2, 1, 0, 7, 0, 0);
    } else if (c->rope_scaling == 2) {
        add_made(&ts[n++], "rope_freqs.weight", 1, (uint64_t)c->head_dim / 2, 1, 0, 7, 0, 0);
    }
    return n;
}

/* llama.cpp's general.file_type of a file whose matrices are mostly `type` */
static int file_type_of(uint32_t type)
{
    switch (type) {
    case PEFT_GG_F16: return 1;
    case PEFT_GG_Q4_0: return 2;
    case PEFT_GG_Q8_0: return 7;
    case PEFT_GG_Q4_K: return 14; /* Q4_K_S */
    case PEFT_GG_Q6_K: return 18;
    case PEFT_GG_BF16: return 32;
    default: return 0;
    }
}

int peft_save_merged_gguf(peft_model *m, const char *path, const peft_gguf_export_options *opts)
{
    peft_gguf_export_options o = PEFT_GGUF_EXPORT_OPTIONS_INIT;
    if (!m || !path)
        return peft__fail(PEFT_EINVAL, "peft_save_merged_gguf: NULL argument");
    if (opts) {
        if (opts->version < 1 || opts->version > PEFT_GGUF_EXPORT_OPTIONS_VERSION)
            return peft__fail(PEFT_EINVAL, "peft_save_merged_gguf: options version %u", opts->version);
        o = *opts;
    }
    if (o.type != PEFT_GGUF_TYPE_SAME && !encodable((uint32_t)o.type))
        return peft__fail(PEFT_EINVAL, "peft_save_merged_gguf: type %d (same as the base, F32, F16, BF16, Q8_0, Q4_0, "
                                       "Q4_K or Q6_K)", o.type);
    if (peft__prompt_len(m) > 0)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged_gguf: a soft prompt (prompt tuning) is not part of "
                                             "the weights");
    peft__norms_sync(m);
    /* llama.cpp's gemma2/gemma3 fix what their checkpoints all share: a model that differs would
       compute something else there */
    const peft_config *gc = &m->cfg;
    int v3 = gc->gemma == 3;
    peft_config fixed = *gc;
    if (gc->gemma)
        peft__gguf_gemma_fixed(&fixed);
    if (gc->gemma && !m->gguf_map &&
        (gc->window_pattern != fixed.window_pattern || gc->rope_local_theta != fixed.rope_local_theta ||
         gc->rope_scaling == 2 || (!v3 && gc->rope_scaling) || fabsf(gc->q_mul - fixed.q_mul) > 1e-6f))
        return peft__fail(PEFT_EUNSUPPORTED,
                          "peft_save_merged_gguf: this Gemma differs from what llama.cpp's %s assumes (every %s "
                          "layer global%s, query_pre_attn_scalar = head_dim but in the 27B model)",
                          gc->architecture, v3 ? "sixth" : "other",
                          v3 ? ", a local RoPE base of 10000" : ", no RoPE scaling");
    if (gc->nope_every > 0 && gc->nope_every != PEFT__GGUF_NOPE_EVERY)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged_gguf: RoPE left out of every %d-th layer: llama.cpp's "
                                             "smollm3 leaves it out of every %d-th", gc->nope_every,
                          PEFT__GGUF_NOPE_EVERY);
    if (!m->gguf_map && !strncmp(m->cfg.architecture, "qwen", 4) && m->cfg.sliding_window > 0 &&
        m->cfg.window_from < m->cfg.n_layers)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged_gguf: %s with use_sliding_window: llama.cpp's %s has "
                                             "no sliding window, the GGUF model would compute something else",
                          m->cfg.architecture, m->cfg.architecture);
    const peft_config *c = &m->cfg;
    const char *name = o.name ? o.name : "merged with libpeft";
    int from_hf = !m->gguf_map;
    gg_file f = {.map = m->gguf_map, .size = m->gguf_size, .path = m->path};
    struct out_keys k = {.alignment = 32, .drop_file_type = o.type != PEFT_GGUF_TYPE_SAME, .map = m->gguf_map};
    struct out_t *ts = NULL;
    float *fbuf = NULL, *tmp = NULL, *row = NULL;
    gg_buf head = {0};
    unsigned char *blob = NULL;
    char *tmp_path = NULL;
    int fd = -1, created = 0, code = from_hf ? PEFT_OK : peft__gguf_parse(&f, keep_key, &k);
    if (code)
        goto done;
    /* llama.cpp permutes the q/k rows of the llama, smollm3 and granite architectures (a Mistral
       model converts as llama) */
    int permuted = !strcmp(c->architecture, "llama") || !strcmp(c->architecture, "smollm3") ||
                   !strcmp(c->architecture, "granite") || (from_hf && !strcmp(c->architecture, "mistral"));
    size_t VD = (size_t)c->vocab * (size_t)c->dim, max_n = VD;
    int untie = 0;
    size_t n_cap = from_hf ? 5 + (size_t)c->n_layers * (6 + 2 * PEFT_MOD_COUNT) : f.nt + 1;
    if (!(ts = calloc(n_cap, sizeof *ts)) || !(fbuf = peft__alloc_floats(VD)) || !(tmp = peft__alloc_floats(VD)) ||
        !(row = peft__alloc_floats((size_t)c->dim))) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_merged_gguf: out of memory");
        goto done;
    }
    if (!c->tied) {
        peft__effective_head(m, fbuf);
    } else { /* a tied lm_head the adapter changed apart from the embeddings: written untied */
        peft__effective_embed(m, fbuf);
        peft__effective_head(m, tmp);
        untie = memcmp(fbuf, tmp, VD * sizeof *fbuf) != 0;
    }
    size_t n_out = 0;
    if (from_hf) {
        /* the weights' own type (F32, F16, BF16 as loaded) or the one asked for */
        uint32_t type = o.type != PEFT_GGUF_TYPE_SAME     ? (uint32_t)o.type
                        : !strcmp(m->weights_dtype, "F16")  ? PEFT_GG_F16
                        : !strcmp(m->weights_dtype, "BF16") ? PEFT_GG_BF16
                                                            : PEFT_GG_F32;
        n_out = hf_tensors(m, ts, type, untie);
        for (size_t i = 0; i < n_out; i++) {
            size_t n = (size_t)ts[i].ne[0] * (size_t)ts[i].ne[1];
            max_n = n > max_n ? n : max_n;
        }
        if ((code = peft__gguf_hf_keys(&k.b, &k.n, m, name, file_type_of(type))))
            goto done;
    }
    for (uint64_t i = 0; !from_hf && i < f.nt; i++) {
        const gg_tensor *s = &f.ts[i];
        struct out_t *t = &ts[n_out++];
        snprintf(t->name, sizeof t->name, "%s", s->name);
        t->src = s;
        t->n_dims = s->n_dims;
        t->ne[0] = s->ne[0];
        t->ne[1] = s->n_dims > 1 ? s->ne[1] : 1;
        t->type = s->type;
        int layer, changed = 1;
        int kind = blk_module(c, s->name, "weight", &layer);
        const float *b;
        if (kind >= 0) {
            t->what = 1, t->layer = layer, t->kind = kind;
            peft__effective_weight(m, layer, kind, NULL, &changed);
        } else if ((kind = blk_module(c, s->name, "bias", &layer)) >= 0 &&
                   (b = m->layers[layer].bias[kind]) != NULL && s->n == (uint64_t)m->layers[layer].w[kind].rows) {
            /* a bias the adapter changes (trained, or scaled with an IA3 output) */
            const float *base = m->layers[layer].bias_base[kind] ? m->layers[layer].bias_base[kind] : b;
            t->what = 5, t->layer = layer, t->kind = kind;
            changed = memcmp(peft__effective_bias(m, layer, kind, tmp), base, (size_t)s->n * sizeof *b) != 0;
        }
        if (!t->what && (t->kind = norm_slot(c, s->name, &layer)) >= 0) {
            t->what = 2, t->layer = layer; /* a tuned norm is written, another copied */
            changed = memcmp(peft__norm_weight(m, layer, t->kind), peft__norm_base(m, layer, t->kind, 0),
                             (size_t)peft__norm_width(c, layer < c->n_layers ? t->kind : 0) * sizeof(float)) != 0;
        } else if (!t->what && !strcmp(s->name, "token_embd.weight")) {
            t->what = 3;
            peft__effective_embed(m, tmp);
            changed = peft__w_differs(&m->embed, tmp, row);
        } else if (!t->what && !strcmp(s->name, "output.weight")) {
            t->what = 4;
            changed = peft__w_differs(&m->head, fbuf, row);
        }
        int retype = o.type != PEFT_GGUF_TYPE_SAME && s->n_dims == 2 && t->what && t->what != 2;
        if (!t->what || (!changed && !retype)) {
            t->what = 0; /* copied as stored */
        } else {
            uint32_t want = retype ? (uint32_t)o.type : t->what == 2 ? PEFT_GG_F32 : s->type;
            t->type = s->n_dims == 2 ? pick_type(want, t->ne[0]) : encodable(want) ? want : PEFT_GG_F32;
            size_t n = (size_t)t->ne[0] * (size_t)t->ne[1];
            max_n = n > max_n ? n : max_n;
        }
        t->bytes = t->what ? peft__gg_row_bytes(t->type, t->ne[0]) * t->ne[1] : peft__gg_row_bytes(s->type, s->n);
        if (!t->bytes) {
            code = peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged_gguf: tensor '%s' has ggml type %s (%u), which "
                                                 "cannot be copied", s->name, peft__gg_type_name(s->type), s->type);
            goto done;
        }
    }
    if (untie && !from_hf) { /* the changed lm_head of a tied model */
        struct out_t *t = &ts[n_out++];
        snprintf(t->name, sizeof t->name, "output.weight");
        t->n_dims = 2;
        t->ne[0] = (uint64_t)c->dim;
        t->ne[1] = (uint64_t)c->vocab;
        t->what = 4;
        uint32_t want = o.type == PEFT_GGUF_TYPE_SAME ? PEFT_GG_F32 : (uint32_t)o.type;
        t->type = peft__gg_row_bytes(want, t->ne[0]) ? want : PEFT_GG_F32;
        t->bytes = peft__gg_row_bytes(t->type, t->ne[0]) * t->ne[1];
    }
    if (max_n > VD) { /* buffers for the largest made tensor */
        peft__free(fbuf);
        peft__free(tmp);
        fbuf = peft__alloc_floats(max_n);
        tmp = peft__alloc_floats(max_n);
        if (!fbuf || !tmp) {
            code = peft__fail(PEFT_ENOMEM, "peft_save_merged_gguf: out of memory");
            goto done;
        }
    }
    /* the header: magic, counts, the keys (a GGUF base's copied, general.name ours), tensor infos */
    if (!from_hf) {
        peft__gb_kv_str(&k.b, "general.name", name);
        k.n++;
    }
    if (k.b.oom) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_merged_gguf: out of memory");
        goto done;
    }
    peft__gb_put(&head, "GGUF", 4);
    peft__gb_u32(&head, 3);
    peft__gb_u64(&head, (uint64_t)n_out);
    peft__gb_u64(&head, k.n);
    peft__gb_put(&head, k.b.p, k.b.n);
    uint64_t off = 0;
    for (size_t i = 0; i < n_out; i++) {
        struct out_t *t = &ts[i];
        peft__gb_str(&head, t->name);
        peft__gb_u32(&head, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            peft__gb_u64(&head, t->src ? t->src->ne[d] : t->ne[d]);
        peft__gb_u32(&head, t->type);
        peft__gb_u64(&head, off);
        t->offset = off;
        off += (t->bytes + k.alignment - 1) / k.alignment * k.alignment;
    }
    static const unsigned char zeros[64];
    while (head.n % k.alignment) /* zero padding up to the data */
        peft__gb_put(&head, zeros, 1);
    if (head.oom) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_merged_gguf: out of memory");
        goto done;
    }
    size_t pl = strlen(path);
    if (!(tmp_path = malloc(pl + 16))) {
        code = peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    snprintf(tmp_path, pl + 16, "%s.tmp.XXXXXX", path);
    if ((fd = mkstemp(tmp_path)) < 0) {
        code = peft__fail(PEFT_EIO, "%s: cannot create a temporary file beside it: %s", path, strerror(errno));
        goto done;
    }
    created = 1;
    fchmod(fd, 0644); /* as the library's other files */
    if (write_all(fd, head.p, head.n)) {
        code = peft__fail(PEFT_EIO, "%s: write failed: %s", path, strerror(errno));
        goto done;
    }
    size_t blob_cap = 0;
    for (size_t i = 0; i < n_out && !code; i++) {
        struct out_t *t = &ts[i];
        const void *data = t->src ? (const uint8_t *)f.data + t->src->offset : NULL;
        if (t->what) {
            if (t->bytes > blob_cap) {
                free(blob);
                blob_cap = t->bytes;
                if (!(blob = malloc(blob_cap))) {
                    code = peft__fail(PEFT_ENOMEM, "peft_save_merged_gguf: out of memory");
                    break;
                }
            }
            if ((code = tensor_floats(m, t, fbuf, tmp, permuted)))
                break;
            peft__quantize(blob, fbuf, t->ne[0] * t->ne[1], t->type);
            data = blob;
        }
        size_t pad = (size_t)((k.alignment - t->bytes % k.alignment) % k.alignment);
        if (write_all(fd, data, (size_t)t->bytes) || (pad && write_all(fd, zeros, pad)))
            code = peft__fail(PEFT_EIO, "%s: write failed: %s", path, strerror(errno));
    }
    if (!code && fsync(fd) != 0)
        code = peft__fail(PEFT_EIO, "%s: fsync failed: %s", path, strerror(errno));
    if (close(fd) != 0 && !code)
        code = peft__fail(PEFT_EIO, "%s: close failed: %s", path, strerror(errno));
    fd = -1;
    if (!code && rename(tmp_path, path) != 0)
        code = peft__fail(PEFT_EIO, "%s: rename failed: %s", path, strerror(errno));
done:
    if (fd >= 0)
        close(fd);
    if (code && created)
        unlink(tmp_path);
    free(tmp_path);
    free(head.p);
    free(blob);
    free(ts);
    free(k.b.p);
    peft__free(fbuf);
    peft__free(tmp);
    peft__free(row);
    peft__gguf_release(&f, 0);
    return code;
}
