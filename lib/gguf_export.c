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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "model.h"

struct kv_ref {
    size_t off, len;
};

struct src_keys {
    struct kv_ref *kv;
    size_t n, cap;
    uint64_t alignment;
    int drop_file_type;
};

static int keep_key(void *ctx, const gg_kv *kv)
{
    struct src_keys *k = ctx;
    if (peft__gg_key_is(kv, "general.alignment"))
        k->alignment = (uint64_t)kv->iv;
    if (peft__gg_key_is(kv, "general.name") || (k->drop_file_type && peft__gg_key_is(kv, "general.file_type")))
        return PEFT_OK;
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 64;
        struct kv_ref *nk = realloc(k->kv, cap * sizeof *nk);
        if (!nk)
            return peft__fail(PEFT_ENOMEM, "out of memory");
        k->kv = nk;
        k->cap = cap;
    }
    k->kv[k->n++] = (struct kv_ref){kv->raw_off, kv->raw_len};
    return PEFT_OK;
}

/* one output tensor: copied from the base (src), or made from floats (HF row order) */
struct out_t {
    const gg_tensor *src;
    char name[96];
    int n_dims;
    uint64_t ne[2];
    uint32_t type;
    uint64_t bytes, offset;
    int what, layer, kind; /* what: 0 copy, 1 linear weight, 2 norm, 3 embeddings, 4 lm_head */
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

static int encodable(uint32_t t) { return t == PEFT_GG_F32 || t == PEFT_GG_F16 || t == PEFT_GG_Q8_0 || t == PEFT_GG_Q4_0; }

/* the floats of an output tensor made by the model (n = ne0 * ne1), in the file's row order */
static int tensor_floats(peft_model *m, const struct out_t *t, float *dst, float *tmp, int permuted)
{
    const peft_config *c = &m->cfg;
    size_t n = (size_t)t->ne[0] * (size_t)(t->n_dims == 2 ? t->ne[1] : 1);
    if (t->what == 2) {
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
    int changed;
    const float *w = peft__effective_weight(m, t->layer, t->kind, tmp, &changed);
    int heads = !permuted ? 0 : t->kind == PEFT_MOD_Q ? c->n_heads : t->kind == PEFT_MOD_K ? c->n_kv_heads : 0;
    if (!heads) {
        if (w != dst)
            memcpy(dst, w, n * sizeof *dst);
        return PEFT_OK;
    }
    int64_t rows = (int64_t)t->ne[1], hd = rows / heads, half = hd / 2, cols = (int64_t)t->ne[0];
    for (int64_t r = 0; r < rows; r++) { /* file row h*hd + 2i + j <- HF row h*hd + j*half + i */
        int64_t h = r / hd, rr = r % hd;
        memcpy(dst + r * cols, w + (h * hd + (rr % 2) * half + rr / 2) * cols, (size_t)cols * sizeof *dst);
    }
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

static void put_u32(unsigned char **p, uint32_t v) { memcpy(*p, &v, 4), *p += 4; }
static void put_u64(unsigned char **p, uint64_t v) { memcpy(*p, &v, 8), *p += 8; }

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
        return peft__fail(PEFT_EINVAL, "peft_save_merged_gguf: type %d (same as the base, F32, F16, Q8_0 or Q4_0)",
                          o.type);
    if (!m->gguf_map)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged_gguf: the base must be a GGUF file (its vocabulary "
                                             "and metadata are copied); for a Hugging Face base, export a merged "
                                             "directory (peft_save_merged) and convert it with llama.cpp's "
                                             "convert_hf_to_gguf.py");
    if (peft__prompt_len(m) > 0)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_merged_gguf: a soft prompt (prompt tuning) is not part of "
                                             "the weights");
    const peft_config *c = &m->cfg;
    gg_file f = {.map = m->gguf_map, .size = m->gguf_size, .path = m->path};
    struct src_keys k = {.alignment = 32, .drop_file_type = o.type != PEFT_GGUF_TYPE_SAME};
    struct out_t *ts = NULL;
    float *fbuf = NULL, *tmp = NULL;
    unsigned char *head = NULL, *blob = NULL;
    char *tmp_path = NULL;
    int fd = -1, created = 0, code = peft__gguf_parse(&f, keep_key, &k);
    if (code)
        goto done;
    int permuted = !strcmp(c->architecture, "llama");
    size_t VD = (size_t)c->vocab * (size_t)c->dim, max_n = VD;
    int untie = 0;
    if (!(ts = calloc(f.nt + 1, sizeof *ts)) || !(fbuf = peft__alloc_floats(VD)) || !(tmp = peft__alloc_floats(VD))) {
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
    for (uint64_t i = 0; i < f.nt; i++) {
        const gg_tensor *s = &f.ts[i];
        struct out_t *t = &ts[n_out++];
        snprintf(t->name, sizeof t->name, "%s", s->name);
        t->src = s;
        t->n_dims = s->n_dims;
        t->ne[0] = s->ne[0];
        t->ne[1] = s->n_dims > 1 ? s->ne[1] : 1;
        t->type = s->type;
        int layer, changed = 1;
        for (int kind = 0; kind < PEFT_MOD_COUNT && !t->what; kind++) {
            static const char *const gn[PEFT_MOD_COUNT] = {"attn_q.weight", "attn_k.weight", "attn_v.weight",
                                                           "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
                                                           "ffn_down.weight"};
            if (parse_blk(s->name, gn[kind], &layer) && layer >= 0 && layer < c->n_layers) {
                t->what = 1, t->layer = layer, t->kind = kind;
                peft__effective_weight(m, layer, kind, NULL, &changed);
            }
        }
        if (!t->what && ((parse_blk(s->name, "attn_norm.weight", &layer) && (t->kind = 0, 1)) ||
                         (parse_blk(s->name, "ffn_norm.weight", &layer) && (t->kind = 1, 1))) &&
            layer >= 0 && layer < c->n_layers) {
            t->what = 2, t->layer = layer;
            changed = memcmp(peft__norm_weight(m, layer, t->kind), t->kind ? m->layers[layer].ffn_norm
                                                                             : m->layers[layer].attn_norm,
                             (size_t)c->dim * sizeof(float)) != 0;
        } else if (!t->what && !strcmp(s->name, "output_norm.weight")) {
            t->what = 2, t->layer = 0, t->kind = 2;
            changed = memcmp(peft__norm_weight(m, 0, 2), m->final_norm, (size_t)c->dim * sizeof(float)) != 0;
        } else if (!t->what && !strcmp(s->name, "token_embd.weight")) {
            t->what = 3;
            peft__effective_embed(m, tmp);
            changed = memcmp(tmp, m->embed, VD * sizeof *tmp) != 0;
        } else if (!t->what && !strcmp(s->name, "output.weight")) {
            t->what = 4;
            changed = memcmp(fbuf, m->lm_head, VD * sizeof *fbuf) != 0;
        }
        int retype = o.type != PEFT_GGUF_TYPE_SAME && s->n_dims == 2 && t->what && t->what != 2;
        if (!t->what || (!changed && !retype)) {
            t->what = 0; /* copied as stored */
        } else {
            uint32_t want = retype ? (uint32_t)o.type : t->what == 2 ? PEFT_GG_F32 : s->type;
            t->type = encodable(want) && peft__gg_row_bytes(want, t->ne[0]) ? want
                      : peft__gg_row_bytes(PEFT_GG_Q8_0, t->ne[0]) && s->n_dims == 2 ? PEFT_GG_Q8_0 : PEFT_GG_F32;
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
    if (untie) { /* the changed lm_head of a tied model */
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
    /* the header: magic, counts, the base's keys (general.name ours), tensor infos */
    const char *name = o.name ? o.name : "merged with libpeft";
    size_t head_cap = 64 + 40 + strlen(name), kv_bytes = 0;
    for (size_t i = 0; i < k.n; i++)
        kv_bytes += k.kv[i].len;
    head_cap += kv_bytes + n_out * (8 + 96 + 4 + 16 + 4 + 8) + k.alignment;
    if (!(head = calloc(1, head_cap))) {
        code = peft__fail(PEFT_ENOMEM, "peft_save_merged_gguf: out of memory");
        goto done;
    }
    unsigned char *p = head;
    memcpy(p, "GGUF", 4), p += 4;
    put_u32(&p, 3);
    put_u64(&p, (uint64_t)n_out);
    put_u64(&p, (uint64_t)k.n + 1);
    for (size_t i = 0; i < k.n; i++)
        memcpy(p, (const uint8_t *)f.map + k.kv[i].off, k.kv[i].len), p += k.kv[i].len;
    put_u64(&p, 12);
    memcpy(p, "general.name", 12), p += 12;
    put_u32(&p, 8);
    put_u64(&p, strlen(name));
    memcpy(p, name, strlen(name)), p += strlen(name);
    uint64_t off = 0;
    for (size_t i = 0; i < n_out; i++) {
        struct out_t *t = &ts[i];
        put_u64(&p, strlen(t->name));
        memcpy(p, t->name, strlen(t->name)), p += strlen(t->name);
        put_u32(&p, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            put_u64(&p, t->src ? t->src->ne[d] : t->ne[d]);
        put_u32(&p, t->type);
        put_u64(&p, off);
        t->offset = off;
        off += (t->bytes + k.alignment - 1) / k.alignment * k.alignment;
    }
    size_t hlen = (size_t)(p - head);
    hlen = (hlen + k.alignment - 1) / k.alignment * k.alignment; /* zero padding: calloc */
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
    if (write_all(fd, head, hlen)) {
        code = peft__fail(PEFT_EIO, "%s: write failed: %s", path, strerror(errno));
        goto done;
    }
    static const unsigned char zeros[64];
    size_t blob_cap = 0;
    for (size_t i = 0; i < n_out && !code; i++) {
        struct out_t *t = &ts[i];
        const void *data = (const uint8_t *)f.data + (t->src ? t->src->offset : 0);
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
    free(head);
    free(blob);
    free(ts);
    free(k.kv);
    peft__free(fbuf);
    peft__free(tmp);
    peft__gguf_release(&f, 0);
    return code;
}
