/*
 * GGUF v3 model files (llama.cpp): a validated reader for Llama-architecture
 * models. Hostile input gets a clear error: counts, string lengths, dimensions and
 * offsets are bounded by the file, shape products are overflow-checked, unknown
 * value or tensor types are refused. Weights are dequantized to float32 at open
 * (F32 stays memory-mapped); q/k rows are put back from llama.cpp's RoPE order
 * into Hugging Face's (HF row j*hd/2 + i = GGUF row 2i + j, per head).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "model.h"

enum { G_F32 = PEFT_GG_F32, G_F16 = PEFT_GG_F16, G_Q4_0 = PEFT_GG_Q4_0, G_Q8_0 = PEFT_GG_Q8_0,
       G_Q4_K = PEFT_GG_Q4_K, G_Q6_K = PEFT_GG_Q6_K, G_BF16 = PEFT_GG_BF16 };

/* block-quantized types, kept quantized in memory for the linear weights */
static int is_blocked(uint32_t t) { return t == G_Q8_0 || t == G_Q4_0 || t == G_Q4_K || t == G_Q6_K; }

/* llama.cpp's q/k rows (interleaved pairs per head) back to Hugging Face's rotate-half order */
static void unpermute_rows(uint8_t *dst, const uint8_t *src, uint64_t rows, size_t row_bytes, int heads)
{
    uint64_t hd = rows / (uint64_t)heads, half = hd / 2;
    for (uint64_t h = 0; h < (uint64_t)heads; h++)
        for (uint64_t i = 0; i < half; i++)
            for (uint64_t j = 0; j < 2; j++)
                memcpy(dst + (h * hd + j * half + i) * row_bytes, src + (h * hd + 2 * i + j) * row_bytes, row_bytes);
}

typedef struct gg_reader {
    const uint8_t *d;
    size_t size, pos;
    const char *path;
    int bad;
} gg_reader;

static int need(gg_reader *r, size_t n)
{
    if (r->bad || n > r->size - r->pos) {
        if (!r->bad)
            peft__fail(PEFT_EFORMAT, "%s: truncated at byte %zu", r->path, r->pos);
        r->bad = 1;
        return 0;
    }
    return 1;
}

static uint64_t rd(gg_reader *r, int bytes)
{
    uint64_t v = 0;
    if (!need(r, (size_t)bytes))
        return 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | r->d[r->pos + (size_t)i];
    r->pos += (size_t)bytes;
    return v;
}

/* a string: returns a pointer into the file and its length */
static const char *rd_str(gg_reader *r, uint64_t *len)
{
    *len = rd(r, 8);
    if (r->bad || !need(r, *len))
        return NULL;
    const char *s = (const char *)r->d + r->pos;
    r->pos += *len;
    return s;
}

static const int scalar_size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* skip a value of type t (arrays of strings are walked; nesting is refused) */
static void skip_value(gg_reader *r, uint32_t t, int depth)
{
    uint64_t len;
    if (t == 8) {
        rd_str(r, &len);
    } else if (t == 9) {
        uint32_t et = (uint32_t)rd(r, 4);
        uint64_t n = rd(r, 8);
        if (r->bad)
            return;
        if (depth > 0 || et == 9 || et > 12) {
            peft__fail(PEFT_EFORMAT, "%s: bad array element type %u", r->path, et);
            r->bad = 1;
            return;
        }
        if (et == 8) {
            for (uint64_t i = 0; i < n && !r->bad; i++)
                rd_str(r, &len);
        } else if (n > (r->size - r->pos) / (uint64_t)scalar_size[et]) {
            peft__fail(PEFT_EFORMAT, "%s: array of %llu items runs past the end", r->path, (unsigned long long)n);
            r->bad = 1;
        } else {
            r->pos += (size_t)n * (size_t)scalar_size[et];
        }
    } else if (t <= 12) {
        need(r, (size_t)scalar_size[t]);
        if (!r->bad)
            r->pos += (size_t)scalar_size[t];
    } else {
        peft__fail(PEFT_EFORMAT, "%s: unknown value type %u", r->path, t);
        r->bad = 1;
    }
}

static int key_is(const char *k, uint64_t len, const char *want)
{
    return strlen(want) == len && memcmp(k, want, len) == 0;
}

const char *peft__gg_type_name(uint32_t t)
{
    switch (t) {
    case G_F32: return "F32";
    case G_F16: return "F16";
    case G_BF16: return "BF16";
    case G_Q8_0: return "Q8_0";
    case G_Q4_0: return "Q4_0";
    case G_Q4_K: return "Q4_K";
    case G_Q6_K: return "Q6_K";
    default: return "?";
    }
}

int peft__gguf_open(peft_model *m, const char *path);
int peft__gguf_add_owned(peft_model *m, float *p);

static const gg_tensor *find(const gg_tensor *ts, uint64_t n, const char *name)
{
    for (uint64_t i = 0; i < n; i++)
        if (strcmp(ts[i].name, name) == 0)
            return &ts[i];
    return NULL;
}

/* Tensor `name` (ne0 = in, ne1 = out) as float32 into *out (mapped in place when it is aligned F32 and needs no row
   permutation, else converted into an owned buffer); or, when qw is given and the tensor is
   block-quantized, kept quantized in qw (rows permuted into an owned copy for q/k). heads:
   undo llama.cpp's q/k row permutation for that many heads. */
static int load(peft_model *m, const float **out, peft_w *qw, const gg_tensor *ts, uint64_t nt, const uint8_t *data,
                const char *name, uint64_t ne0, uint64_t ne1, int heads, const char *path)
{
    const gg_tensor *t = find(ts, nt, name);
    if (!t)
        return peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' not found", path, name);
    if (t->ne[0] != ne0 || (ne1 ? t->n_dims != 2 || t->ne[1] != ne1 : t->n_dims != 1))
        return peft__fail(PEFT_ESHAPE, "%s: tensor '%s' has the wrong shape for the metadata (ne0 %llu, expected %llu x %llu)",
                          path, name, (unsigned long long)t->ne[0], (unsigned long long)ne0, (unsigned long long)ne1);
    if (!peft__gg_row_bytes(t->type, 256)) /* 256: a whole number of blocks of every type */
        return peft__fail(PEFT_EUNSUPPORTED,
                          "%s: tensor '%s' has ggml type %s (%u), not supported yet (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K)",
                          path, name, peft__gg_type_name(t->type), t->type);
    if (!peft__gg_row_bytes(t->type, t->ne[0]))
        return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': row length %llu is not a multiple of the block size", path, name,
                          (unsigned long long)t->ne[0]);
    const uint8_t *p = data + t->offset;
    if (ne1) {
        const char *dt = peft__gg_type_name(t->type);
        if (!m->weights_dtype[0])
            snprintf(m->weights_dtype, sizeof m->weights_dtype, "%s", dt);
        else if (strcmp(m->weights_dtype, dt) != 0 && strcmp(name, "token_embd.weight") != 0)
            snprintf(m->weights_dtype, sizeof m->weights_dtype, "mixed");
    }
    if (qw && ne1 && is_blocked(t->type)) {
        size_t rb = peft__gg_row_bytes(t->type, ne0);
        *qw = (peft_w){.q = p, .qtype = t->type, .rows = (int64_t)ne1, .cols = (int64_t)ne0, .row_bytes = rb};
        if (heads) { /* an owned copy of the rows in Hugging Face's order, still quantized */
            float *own = peft__alloc_floats((ne1 * rb + 3) / 4);
            if (!own || peft__gguf_add_owned(m, own)) {
                peft__free(own);
                return peft__fail(PEFT_ENOMEM, "%s: out of memory for '%s'", path, name);
            }
            unpermute_rows((uint8_t *)own, p, ne1, rb, heads);
            qw->q = (const uint8_t *)own;
        }
        return PEFT_OK;
    }
    if (qw)
        *qw = (peft_w){.rows = (int64_t)ne1, .cols = (int64_t)ne0};
    if (t->type == G_F32 && !heads && ((uintptr_t)p & 3u) == 0) {
        *out = (const float *)(const void *)p;
        return PEFT_OK;
    }
    float *buf = peft__alloc_floats(t->n);
    if (!buf || peft__gguf_add_owned(m, buf)) {
        peft__free(buf);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory for '%s'", path, name);
    }
    float *tmp = heads ? malloc(t->n * sizeof *tmp) : buf; /* q/k: dequantized, then reordered into buf */
    if (!tmp)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    if (peft__dequant(tmp, p, t->n, t->type)) {
        if (tmp != buf)
            free(tmp);
        return peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s': type %u", path, name, t->type);
    }
    if (heads) {
        if (ne1)
            unpermute_rows((uint8_t *)buf, (const uint8_t *)tmp, ne1, ne0 * sizeof *buf, heads);
        else /* a q/k bias: one value per row */
            unpermute_rows((uint8_t *)buf, (const uint8_t *)tmp, ne0, sizeof *buf, heads);
        free(tmp);
    }
    *out = buf;
    return PEFT_OK;
}

/* RoPE scaling: llama.rope.scaling.type "linear" with its factor, or the per-pair divisors
   llama.cpp's converter stores as rope_freqs.weight for Llama 3's "llama3" scaling. */
static int rope_scaling(peft_config *c, const gg_tensor *ts, uint64_t nt, const uint8_t *data, const char *type,
                        float factor, const char *path)
{
    const gg_tensor *rf = find(ts, nt, "rope_freqs.weight");
    if (rf) {
        if (rf->type != G_F32 || rf->n_dims != 1 || rf->ne[0] != (uint64_t)c->head_dim / 2 || c->head_dim / 2 > 256)
            return peft__fail(PEFT_EFORMAT, "%s: rope_freqs.weight must be F32 [head_dim / 2 = %d] (at most 256)", path,
                              c->head_dim / 2);
        memcpy(c->rope_div, data + rf->offset, (size_t)rf->ne[0] * sizeof(float));
        for (int i = 0; i < c->head_dim / 2; i++)
            if (!(c->rope_div[i] > 0 && c->rope_div[i] < 1e6f))
                return peft__fail(PEFT_EFORMAT, "%s: rope_freqs.weight[%d] = %g", path, i, c->rope_div[i]);
        c->rope_scaling = 2;
    }
    if (!*type || !strcmp(type, "none"))
        return PEFT_OK;
    if (strcmp(type, "linear") != 0)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: llama.rope.scaling.type \"%s\" is not supported (linear; llama3 "
                                             "as rope_freqs.weight)", path, type);
    if (!(factor >= 1.0f && factor <= 1e6f))
        return peft__fail(PEFT_EFORMAT, "%s: llama.rope.scaling.factor %g", path, factor);
    if (rf)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: both rope_freqs.weight and linear rope scaling", path);
    c->rope_scaling = 1;
    c->rope_factor = factor;
    return PEFT_OK;
}

int peft__gguf_map(gg_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->path = path;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return peft__fail(errno == ENOENT ? PEFT_ENOTFOUND : errno == ENOMEM ? PEFT_ENOMEM : PEFT_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size < 24) {
        close(fd);
        return peft__fail(PEFT_EFORMAT, "%s: too small for GGUF", path);
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return peft__fail(PEFT_EIO, "%s: cannot map", path);
    f->map = map;
    f->size = (size_t)sb.st_size;
    return PEFT_OK;
}

void peft__gguf_release(gg_file *f, int unmap)
{
    free(f->ts);
    f->ts = NULL;
    f->nt = 0;
    if (unmap && f->map)
        munmap(f->map, f->size);
    if (unmap)
        f->map = NULL;
}

const gg_tensor *peft__gguf_find(const gg_file *f, const char *name) { return find(f->ts, f->nt, name); }

int peft__gg_key_is(const gg_kv *kv, const char *want) { return key_is(kv->key, kv->key_len, want); }

void peft__gg_str(const gg_kv *kv, char *buf, size_t cap)
{
    size_t n = kv->s ? (kv->sl < cap ? kv->sl : cap - 1) : 0;
    if (n)
        memcpy(buf, kv->s, n);
    buf[n] = '\0';
}

int peft__gguf_parse(gg_file *f, int (*kv)(void *ctx, const gg_kv *kv), void *ctx)
{
    const char *path = f->path;
    gg_reader r = {f->map, f->size, 0, path, 0};
    if (f->size < 24 || memcmp(r.d, "GGUF", 4) != 0)
        return peft__fail(PEFT_EFORMAT, "%s: not a GGUF file (bad magic)", path);
    r.pos = 4;
    uint32_t version = (uint32_t)rd(&r, 4);
    uint64_t nt = rd(&r, 8), nkv = rd(&r, 8);
    if (version != 3)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: GGUF version %u (3 is supported)", path, version);
    if (nt > r.size / 24 || nkv > r.size / 12)
        return peft__fail(PEFT_EFORMAT, "%s: absurd counts (%llu tensors, %llu keys) for a %zu-byte file", path,
                          (unsigned long long)nt, (unsigned long long)nkv, r.size);
    uint64_t alignment = 32;
    int code = PEFT_OK;
    for (uint64_t i = 0; i < nkv && !r.bad && !code; i++) {
        gg_kv v = {0};
        uint64_t kl;
        v.raw_off = r.pos;
        v.key = rd_str(&r, &kl);
        v.key_len = (size_t)kl;
        v.type = (uint32_t)rd(&r, 4);
        if (r.bad)
            break;
        if (v.type <= 7 && v.type != 6) { /* integers and bool */
            int bytes = scalar_size[v.type];
            uint64_t u = rd(&r, bytes);
            v.iv = v.type == 1 ? (int8_t)u : v.type == 3 ? (int16_t)u : v.type == 5 ? (int32_t)u : (int64_t)u;
        } else if (v.type == 10 || v.type == 11) {
            v.iv = (int64_t)rd(&r, 8);
        } else if (v.type == 6 || v.type == 12) {
            uint64_t u = rd(&r, v.type == 6 ? 4 : 8);
            if (v.type == 6) {
                float fl;
                uint32_t u32 = (uint32_t)u;
                memcpy(&fl, &u32, 4);
                v.fv = fl;
            } else {
                memcpy(&v.fv, &u, 8);
            }
        } else if (v.type == 8) {
            uint64_t sl;
            v.s = rd_str(&r, &sl);
            v.sl = (size_t)sl;
        } else {
            skip_value(&r, v.type, 0);
        }
        if (r.bad)
            break;
        v.raw_len = r.pos - v.raw_off;
        if (peft__gg_key_is(&v, "general.alignment") && (v.type == 4 || v.type == 10))
            alignment = (uint64_t)v.iv;
        if (kv)
            code = kv(ctx, &v);
    }
    if (r.bad)
        return PEFT_EFORMAT;
    if (code)
        return code;
    if (alignment == 0 || alignment > 65536 || (alignment & (alignment - 1)))
        return peft__fail(PEFT_EFORMAT, "%s: bad general.alignment %llu", path, (unsigned long long)alignment);
    gg_tensor *ts = calloc(nt ? nt : 1, sizeof *ts);
    if (!ts)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < nt && !code; i++) {
        uint64_t nl;
        const char *nm = rd_str(&r, &nl);
        gg_tensor *t = &ts[i];
        t->n_dims = (int)rd(&r, 4);
        if (r.bad) {
            code = PEFT_EFORMAT;
            break;
        }
        if (nl >= sizeof t->name || t->n_dims < 1 || t->n_dims > 4) {
            code = peft__fail(PEFT_EFORMAT, "%s: tensor %llu: bad name length or %d dimensions", path,
                              (unsigned long long)i, t->n_dims);
            break;
        }
        memcpy(t->name, nm, nl);
        t->name[nl] = '\0';
        t->n = 1;
        for (int d = 0; d < t->n_dims; d++) {
            t->ne[d] = rd(&r, 8);
            if (t->ne[d] == 0 || t->ne[d] > (1ull << 40) || t->n > (1ull << 40) / t->ne[d]) {
                code = peft__fail(PEFT_EFORMAT, "%s: tensor '%s': dimension out of range", path, t->name);
                break;
            }
            t->n *= t->ne[d];
        }
        t->type = (uint32_t)rd(&r, 4);
        t->offset = rd(&r, 8);
        if (r.bad && !code)
            code = PEFT_EFORMAT;
    }
    uint64_t data_start = (r.pos + alignment - 1) / alignment * alignment;
    uint64_t avail = data_start <= r.size ? r.size - data_start : 0;
    for (uint64_t i = 0; i < nt && !code; i++) {
        uint64_t bytes = peft__gg_row_bytes(ts[i].type, ts[i].n);
        if (ts[i].offset % alignment || (bytes && (ts[i].offset > avail || bytes > avail - ts[i].offset)))
            code = peft__fail(PEFT_EFORMAT, "%s: tensor '%s': data [%llu, +%llu) outside the file", path, ts[i].name,
                              (unsigned long long)ts[i].offset, (unsigned long long)bytes);
    }
    if (code) {
        free(ts);
        return code;
    }
    f->ts = ts;
    f->nt = nt;
    f->data = r.d + data_start;
    return PEFT_OK;
}

/* the model's keys: general.architecture, and "<arch>.<suffix>" for the architectures read */
static const char *const gguf_archs[] = {"llama", "qwen2", "qwen3", "gemma2", "gemma3", "smollm3", "granite", "phi3"};

struct model_keys {
    peft_config *c;
    char arch[32], scaling[32];
    float scale_factor;
    int key_len;
    float caps[2]; /* gemma2's attn_logit_softcapping, final_logit_softcapping (< 0: absent) */
    float scales[4]; /* granite's embedding_scale, residual_scale, attention.scale, logit_scale (0: absent) */
    int rot_dims, orig_ctx; /* rope.dimension_count, rope.scaling.original_context_length (0: absent) */
    float attn_factor;      /* rope.scaling.attn_factor (0: absent) */
};

static int model_key(void *ctx, const gg_kv *kv)
{
    struct model_keys *mk = ctx;
    peft_config *c = mk->c;
    if (peft__gg_key_is(kv, "general.architecture") && kv->type == 8) {
        peft__gg_str(kv, mk->arch, sizeof mk->arch);
        return PEFT_OK;
    }
    const char *dot = memchr(kv->key, '.', kv->key_len);
    if (!dot)
        return PEFT_OK;
    size_t pl = (size_t)(dot - kv->key);
    int known = 0;
    for (size_t i = 0; i < sizeof gguf_archs / sizeof gguf_archs[0]; i++)
        known |= strlen(gguf_archs[i]) == pl && !memcmp(kv->key, gguf_archs[i], pl);
    if (!known)
        return PEFT_OK;
    gg_kv s = *kv; /* the key without "<arch>." */
    s.key = dot + 1;
    s.key_len = kv->key_len - pl - 1;
    int integer = kv->type <= 5 || kv->type == 10 || kv->type == 11;
    int iv = kv->iv < 0 || kv->iv > INT32_MAX ? -1 : (int)kv->iv;
    if (peft__gg_key_is(&s, "rope.scaling.type") && kv->type == 8)
        peft__gg_str(kv, mk->scaling, sizeof mk->scaling);
    if (!integer && kv->type != 6)
        return PEFT_OK;
    const struct {
        const char *key;
        int *dst;
    } i32[] = {{"embedding_length", &c->dim},           {"context_length", &c->ctx_len},
               {"block_count", &c->n_layers},            {"feed_forward_length", &c->ffn_dim},
               {"attention.head_count", &c->n_heads},    {"attention.head_count_kv", &c->n_kv_heads},
               {"attention.key_length", &mk->key_len},   {"vocab_size", &c->vocab},
               {"attention.sliding_window", &c->sliding_window}, {"rope.dimension_count", &mk->rot_dims},
               {"rope.scaling.original_context_length", &mk->orig_ctx}};
    const struct {
        const char *key;
        float *dst;
    } f32[] = {{"attention.layer_norm_rms_epsilon", &c->eps}, {"rope.freq_base", &c->rope_theta},
               {"rope.scaling.factor", &mk->scale_factor},    {"attn_logit_softcapping", &mk->caps[0]},
               {"final_logit_softcapping", &mk->caps[1]},     {"embedding_scale", &mk->scales[0]},
               {"residual_scale", &mk->scales[1]},            {"attention.scale", &mk->scales[2]},
               {"logit_scale", &mk->scales[3]},               {"rope.scaling.attn_factor", &mk->attn_factor}};
    for (size_t i = 0; i < sizeof i32 / sizeof i32[0]; i++)
        if (peft__gg_key_is(&s, i32[i].key)) {
            *i32[i].dst = iv;
            return PEFT_OK;
        }
    for (size_t i = 0; kv->type == 6 && i < sizeof f32 / sizeof f32[0]; i++)
        if (peft__gg_key_is(&s, f32[i].key))
            *f32[i].dst = (float)kv->fv;
    return PEFT_OK;
}

/* llama-model.cpp: every other (gemma2) or sixth (gemma3) layer global, gemma3's sliding ones
   with RoPE base 10000 unscaled; scores scaled by head_dim^-1/2 except in the 27B models (46 and
   62 layers: (hidden / heads)^-1/2) */
void peft__gguf_gemma_fixed(peft_config *c)
{
    int v3 = c->gemma == 3;
    c->window_pattern = v3 ? 6 : 2;
    c->rope_local_theta = v3 ? 10000.0f : 0.0f;
    int big = c->n_layers == (v3 ? 62 : 46) && c->head_dim > 0 && c->n_heads > 0 && c->dim >= c->n_heads;
    c->q_mul = big ? sqrtf((float)c->head_dim / (float)(c->dim / c->n_heads)) : 1.0f;
}

/* gemma2 and gemma3: the keys, what llama.cpp fixes (peft__gguf_gemma_fixed), gemma2's
   soft-caps 50 and 30 unless given */
static int gemma_keys(peft_config *c, const struct model_keys *mk, const char *path)
{
    int v3 = !strcmp(mk->arch, "gemma3");
    c->gemma = v3 ? 3 : 2;
    c->qk_norm = v3;
    peft__gguf_gemma_fixed(c);
    c->attn_softcap = v3 ? 0.0f : mk->caps[0] >= 0.0f ? mk->caps[0] : 50.0f;
    c->final_softcap = v3 ? 0.0f : mk->caps[1] >= 0.0f ? mk->caps[1] : 30.0f;
    if (c->sliding_window <= 0)
        return peft__fail(PEFT_EFORMAT, "%s: %s.attention.sliding_window is missing", path, mk->arch);
    if (!(c->attn_softcap < 1e6f) || !(c->final_softcap < 1e6f))
        return peft__fail(PEFT_EFORMAT, "%s: bad soft-capping values", path);
    c->embed_mul = c->dim > 0 ? sqrtf((float)c->dim) : 0.0f; /* (peft__config_validate refuses dim 0) */
    return PEFT_OK;
}

/* granite's scalars (0: the key is absent) */
static void granite_keys(peft_config *c, const float *scales)
{
    c->embed_mul = scales[0] > 0.0f ? scales[0] : 1.0f;
    c->res_mul = scales[1] > 0.0f ? scales[1] : 1.0f;
    c->q_mul = scales[2] > 0.0f && c->head_dim > 0 ? scales[2] * sqrtf((float)c->head_dim) : 1.0f;
    c->logit_mul = scales[3] > 0.0f ? 1.0f / scales[3] : 1.0f;
}

const char *peft__gguf_mod_name(const peft_config *c, int k)
{
    static const char *const names[PEFT_MOD_COUNT] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                                      "ffn_gate", "ffn_up", "ffn_down"};
    if (c && c->fused && (k == PEFT_MOD_Q || k == PEFT_MOD_GATE))
        return k == PEFT_MOD_Q ? "attn_qkv" : "ffn_up";
    return names[k];
}

/* phi3 (llama.cpp's converter): attn_qkv and ffn_up (gate, then up) fused, as in the checkpoint;
   rope.dimension_count of each head rotated; LongRoPE as rope_factors_short.weight and
   rope_factors_long.weight ([rot / 2] divisors, the long ones past
   rope.scaling.original_context_length) and rope.scaling.attn_factor; the sliding window as
   transformers applies it (llama.cpp itself leaves Phi's window out) */
static int phi3_keys(peft_config *c, const struct model_keys *mk, const gg_tensor *ts, uint64_t nt,
                     const uint8_t *data, const char *path)
{
    c->fused = 1;
    int rot = mk->rot_dims > 0 ? mk->rot_dims : c->head_dim;
    if (rot < 2 || rot % 2 || rot > c->head_dim || rot > 512)
        return peft__fail(PEFT_EFORMAT, "%s: phi3.rope.dimension_count %d (an even number up to head_dim %d and 512)",
                          path, rot, c->head_dim);
    c->rot_dim = rot == c->head_dim ? 0 : rot;
    const gg_tensor *f[2] = {find(ts, nt, "rope_factors_short.weight"), find(ts, nt, "rope_factors_long.weight")};
    if (!f[0] && !f[1])
        return PEFT_OK;
    float *dst[2] = {c->rope_div, c->rope_div_long};
    for (int j = 0; j < 2; j++) {
        if (!f[j] || f[j]->type != G_F32 || f[j]->n_dims != 1 || f[j]->ne[0] != (uint64_t)rot / 2)
            return peft__fail(PEFT_EFORMAT, "%s: rope_factors_short.weight and rope_factors_long.weight must both be "
                                            "F32 [rope.dimension_count / 2 = %d]", path, rot / 2);
        memcpy(dst[j], data + f[j]->offset, (size_t)(rot / 2) * sizeof(float));
        for (int i = 0; i < rot / 2; i++)
            if (!(dst[j][i] > 0 && dst[j][i] < 1e6f))
                return peft__fail(PEFT_EFORMAT, "%s: rope factor %g", path, dst[j][i]);
    }
    if (!(mk->attn_factor >= 0.0f && mk->attn_factor < 1e3f) || mk->orig_ctx < 0)
        return peft__fail(PEFT_EFORMAT, "%s: phi3.rope.scaling.attn_factor %g", path, mk->attn_factor);
    c->rope_scaling = 2;
    c->rope_mscale = mk->attn_factor;
    c->rope_long_from = mk->orig_ctx > 0 ? mk->orig_ctx : c->ctx_len;
    return PEFT_OK;
}

int peft__gguf_open(peft_model *m, const char *path)
{
    gg_file f;
    int code = peft__gguf_map(&f, path);
    if (code)
        return code;
    m->gguf_map = f.map; /* the model owns the mapping (F32 weights point into it) */
    m->gguf_size = f.size;
    peft_config *c = &m->cfg;
    memset(c, 0, sizeof *c);
    c->embed_mul = c->q_mul = c->res_mul = c->logit_mul = 1.0f;
    c->eps = 1e-5f;
    c->rope_theta = 10000.0f;
    c->bos_id = 1;
    c->eos_id = 2;
    struct model_keys mk = {.c = c, .scale_factor = 1.0f, .caps = {-1.0f, -1.0f}};
    if ((code = peft__gguf_parse(&f, model_key, &mk)))
        return code;
    const gg_tensor *ts = f.ts;
    uint64_t nt = f.nt;
    const uint8_t *data = f.data;
    int known = 0;
    for (size_t i = 0; i < sizeof gguf_archs / sizeof gguf_archs[0]; i++)
        known |= !strcmp(mk.arch, gguf_archs[i]);
    if (!known) {
        code = peft__fail(PEFT_EUNSUPPORTED,
                          "%s: architecture \"%s\" is not supported (llama, qwen2, qwen3, gemma2, gemma3, smollm3, "
                          "granite, phi3)", path,
                          mk.arch);
        goto done;
    }
    /* llama.cpp permutes the q/k rows of llama, smollm3 and granite only (qwen2/3, gemma2/3 use the
       NeoX RoPE, Hugging Face's order) */
    int permuted = !strcmp(mk.arch, "llama") || !strcmp(mk.arch, "smollm3") || !strcmp(mk.arch, "granite");
    c->qk_norm = !strcmp(mk.arch, "qwen3");
    if (!strcmp(mk.arch, "smollm3"))
        c->nope_every = PEFT__GGUF_NOPE_EVERY; /* llama.cpp fixes it, the file does not say */
    for (int k = 0; k < PEFT_MOD_COUNT; k++) { /* biases: those layer 0 has, every layer must have */
        char nm[64];
        snprintf(nm, sizeof nm, "blk.0.%s.bias", peft__gguf_mod_name(NULL, k));
        if (find(ts, nt, nm))
            c->bias_mask |= 1u << k;
    }
    snprintf(c->architecture, sizeof c->architecture, "%s", mk.arch);
    if (!c->vocab) {
        const gg_tensor *e = find(ts, nt, "token_embd.weight");
        c->vocab = e && e->n_dims == 2 ? (int)e->ne[1] : 0;
    }
    if (!c->n_kv_heads)
        c->n_kv_heads = c->n_heads;
    c->head_dim = mk.key_len ? mk.key_len : (c->n_heads > 0 ? c->dim / c->n_heads : 0);
    c->tied = find(ts, nt, "output.weight") == NULL;
    if (!strcmp(mk.arch, "granite")) /* llama.cpp's defaults: no scale, the scores over sqrt(head_dim) */
        granite_keys(c, mk.scales);
    if ((!strncmp(mk.arch, "gemma", 5) && (code = gemma_keys(c, &mk, path))) ||
        (!strcmp(mk.arch, "phi3") && (code = phi3_keys(c, &mk, ts, nt, data, path))) ||
        (code = peft__config_validate(c, path)) ||
        (code = rope_scaling(c, ts, nt, data, mk.scaling, mk.scale_factor, path)))
        goto done;
    {
        int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
        code = load(m, &m->embed.f, &m->embed, ts, nt, data, "token_embd.weight", (uint64_t)c->dim, (uint64_t)c->vocab, 0, path);
        if (!code)
            code = load(m, &m->final_norm, NULL, ts, nt, data, "output_norm.weight", (uint64_t)c->dim, 0, 0, path);
        if (!code)
            code = c->tied ? (m->head = m->embed, PEFT_OK)
                           : load(m, &m->head.f, &m->head, ts, nt, data, "output.weight", (uint64_t)c->dim, (uint64_t)c->vocab,
                                  0, path);
        if (!code && !(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers)))
            code = peft__fail(PEFT_ENOMEM, "out of memory");
        const int64_t shp[PEFT_MOD_COUNT][2] = {{c->dim, peft__mod_out(c, PEFT_MOD_Q)}, {c->dim, kvd}, {c->dim, kvd},
                                                {qd, c->dim}, {c->dim, peft__mod_out(c, PEFT_MOD_GATE)},
                                                {c->dim, c->ffn_dim}, {c->ffn_dim, c->dim}};
        for (int l = 0; l < c->n_layers && !code; l++) {
            char nm[96];
            snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
            code = load(m, &m->layers[l].attn_norm, NULL, ts, nt, data, nm, (uint64_t)c->dim, 0, 0, path);
            snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
            if (!code)
                code = load(m, &m->layers[l].ffn_norm, NULL, ts, nt, data, nm, (uint64_t)c->dim, 0, 0, path);
            /* Gemma 3's norms after attention and the MLP (llama.cpp's converter stores every
               Gemma norm as 1 + w, the weight in effect) */
            snprintf(nm, sizeof nm, "blk.%d.post_attention_norm.weight", l);
            if (!code && c->gemma)
                code = load(m, &m->layers[l].post_attn_norm, NULL, ts, nt, data, nm, (uint64_t)c->dim, 0, 0, path);
            snprintf(nm, sizeof nm, "blk.%d.post_ffw_norm.weight", l);
            if (!code && c->gemma)
                code = load(m, &m->layers[l].post_ffn_norm, NULL, ts, nt, data, nm, (uint64_t)c->dim, 0, 0, path);
            for (int k = 0; k < PEFT_MOD_COUNT && !code; k++) {
                if (!peft__has_mod(c, k))
                    continue;
                snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, peft__gguf_mod_name(c, k));
                int heads = !permuted ? 0 : k == PEFT_MOD_Q ? c->n_heads : k == PEFT_MOD_K ? c->n_kv_heads : 0;
                code = load(m, &m->layers[l].w[k].f, &m->layers[l].w[k], ts, nt, data, nm, (uint64_t)shp[k][0], (uint64_t)shp[k][1], heads,
                            path);
                snprintf(nm, sizeof nm, "blk.%d.%s.bias", l, peft__gguf_mod_name(c, k));
                if (!code && (c->bias_mask >> k & 1)) /* llama.cpp permutes q/k biases as their rows */
                    code = load(m, &m->layers[l].bias[k], NULL, ts, nt, data, nm, (uint64_t)shp[k][1], 0, heads, path);
            }
            if (!code && c->qk_norm) {
                snprintf(nm, sizeof nm, "blk.%d.attn_q_norm.weight", l);
                code = load(m, &m->layers[l].q_norm, NULL, ts, nt, data, nm, (uint64_t)c->head_dim, 0, 0, path);
                snprintf(nm, sizeof nm, "blk.%d.attn_k_norm.weight", l);
                if (!code)
                    code = load(m, &m->layers[l].k_norm, NULL, ts, nt, data, nm, (uint64_t)c->head_dim, 0, 0, path);
            }
        }
        /* Gemma: the zero-centred copies too, as Hugging Face files hold the norms (exports) */
        if (!code && c->gemma)
            code = peft__shifted_copy(m, m->final_norm, c->dim, -1.0f, &m->final_norm_file);
        for (int l = 0; l < c->n_layers && !code && c->gemma; l++) {
            peft_layer_weights *w = &m->layers[l];
            const float *in_effect[6] = {w->attn_norm, w->ffn_norm, w->post_attn_norm, w->post_ffn_norm, w->q_norm,
                                         w->k_norm};
            for (int i = 0; i < (c->qk_norm ? 6 : 4) && !code; i++)
                code = peft__shifted_copy(m, in_effect[i], i < 4 ? c->dim : c->head_dim, -1.0f, &w->file_norm[i]);
        }
        if (!code) {
            uint64_t per_layer = 2ull * c->dim + (uint64_t)c->dim * (uint64_t)(2 * qd + 2 * kvd) +
                                 3ull * (uint64_t)c->dim * (uint64_t)c->ffn_dim + peft__extra_layer_params(c);
            m->n_params = (uint64_t)c->vocab * c->dim * (c->tied ? 1 : 2) + c->dim + per_layer * (uint64_t)c->n_layers;
        }
    }
done:
    peft__gguf_release(&f, 0);
    return code;
}

/* ---- the vocabulary (tokenizer.ggml.*): SentencePiece-style ("llama") and byte-level BPE ("gpt2") ---- */

/* n strings of at most max_len bytes into owned NUL-terminated copies and their lengths (arrays
   of n, entries NULL past a failure: the vocabulary's free releases them) */
static int rd_strings(gg_reader *r, uint64_t n, uint64_t max_len, char ***strs, uint32_t **lens, const char *path,
                      const char *what)
{
    *strs = calloc(n ? n : 1, sizeof **strs);
    *lens = calloc(n ? n : 1, sizeof **lens);
    if (!*strs || !*lens)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    for (uint64_t j = 0; j < n; j++) {
        uint64_t sl;
        const char *s = rd_str(r, &sl);
        if (r->bad || !s || sl > max_len)
            return peft__fail(PEFT_EFORMAT, "%s: bad %s %llu", path, what, (unsigned long long)j);
        if (!((*strs)[j] = malloc(sl + 1)))
            return peft__fail(PEFT_ENOMEM, "out of memory");
        memcpy((*strs)[j], s, sl);
        (*strs)[j][sl] = '\0';
        (*lens)[j] = (uint32_t)sl;
    }
    return PEFT_OK;
}

void peft__gguf_vocab_free(gguf_vocab *v)
{
    for (int i = 0; v->tokens && i < v->n; i++)
        free(v->tokens[i]);
    free(v->tokens);
    free(v->lens);
    free(v->scores);
    free(v->types);
    for (int i = 0; v->merges && i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->merges);
    free(v->merge_lens);
    memset(v, 0, sizeof *v);
}

int peft__gguf_vocab(gguf_vocab *v, const char *path)
{
    memset(v, 0, sizeof *v);
    v->bos = v->eos = v->unk = -1;
    v->add_bos = 1;
    gg_file gf;
    int mc = peft__gguf_map(&gf, path);
    if (mc)
        return mc;
    void *map = gf.map;
    size_t size = gf.size;
    gg_reader r = {map, size, 4, path, 0};
    int code = PEFT_OK;
    uint32_t version = (uint32_t)rd(&r, 4);
    rd(&r, 8);
    uint64_t nkv = rd(&r, 8);
    if (memcmp(map, "GGUF", 4) != 0 || version != 3 || nkv > r.size / 12)
        code = peft__fail(PEFT_EFORMAT, "%s: not a GGUF v3 file", path);
    for (uint64_t i = 0; i < nkv && !code && !r.bad; i++) {
        uint64_t kl;
        const char *k = rd_str(&r, &kl);
        uint32_t t = (uint32_t)rd(&r, 4);
        if (r.bad)
            break;
        if (t == 8 && (key_is(k, kl, "tokenizer.ggml.model") || key_is(k, kl, "tokenizer.ggml.pre"))) {
            uint64_t sl;
            const char *s = rd_str(&r, &sl);
            char *dst = key_is(k, kl, "tokenizer.ggml.pre") ? v->pre : v->model;
            size_t cap = key_is(k, kl, "tokenizer.ggml.pre") ? sizeof v->pre : sizeof v->model;
            if (s && sl < cap) {
                memcpy(dst, s, sl);
                dst[sl] = '\0';
            }
        } else if (t == 9 && key_is(k, kl, "tokenizer.ggml.merges")) {
            uint32_t et = (uint32_t)rd(&r, 4);
            uint64_t n = rd(&r, 8);
            if (r.bad || et != 8 || n > (1u << 24) || v->merges) {
                code = peft__fail(PEFT_EFORMAT, "%s: bad tokenizer.ggml.merges", path);
                break;
            }
            v->n_merges = (int)n;
            if ((code = rd_strings(&r, n, 2048, &v->merges, &v->merge_lens, path, "merge")))
                break;
        } else if (t == 9 && (key_is(k, kl, "tokenizer.ggml.tokens") || key_is(k, kl, "tokenizer.ggml.scores") ||
                              key_is(k, kl, "tokenizer.ggml.token_type"))) {
            uint32_t et = (uint32_t)rd(&r, 4);
            uint64_t n = rd(&r, 8);
            if (r.bad || n == 0 || n > (1u << 24) || (v->n && (uint64_t)v->n != n)) {
                code = peft__fail(PEFT_EFORMAT, "%s: bad vocabulary array", path);
                break;
            }
            if ((key_is(k, kl, "tokenizer.ggml.tokens") && v->tokens) ||
                (key_is(k, kl, "tokenizer.ggml.scores") && v->scores) ||
                (key_is(k, kl, "tokenizer.ggml.token_type") && v->types)) {
                code = peft__fail(PEFT_EFORMAT, "%s: %.*s given twice", path, (int)kl, k);
                break;
            }
            v->n = (int)n;
            if (key_is(k, kl, "tokenizer.ggml.tokens") && et == 8) {
                if ((code = rd_strings(&r, n, 1024, &v->tokens, &v->lens, path, "token")))
                    break;
            } else if (key_is(k, kl, "tokenizer.ggml.scores") && et == 6) {
                if (!(v->scores = malloc(n * sizeof *v->scores)) || !need(&r, n * 4)) {
                    code = r.bad ? PEFT_EFORMAT : peft__fail(PEFT_ENOMEM, "out of memory");
                    break;
                }
                memcpy(v->scores, r.d + r.pos, n * 4);
                r.pos += n * 4;
            } else if (key_is(k, kl, "tokenizer.ggml.token_type") && et == 5) {
                if (!(v->types = malloc(n * sizeof *v->types)) || !need(&r, n * 4)) {
                    code = r.bad ? PEFT_EFORMAT : peft__fail(PEFT_ENOMEM, "out of memory");
                    break;
                }
                memcpy(v->types, r.d + r.pos, n * 4);
                r.pos += n * 4;
            } else {
                code = peft__fail(PEFT_EFORMAT, "%s: vocabulary array of unexpected type %u", path, et);
            }
        } else if ((t == 4 || t == 5) && (key_is(k, kl, "tokenizer.ggml.bos_token_id") ||
                                          key_is(k, kl, "tokenizer.ggml.eos_token_id") ||
                                          key_is(k, kl, "tokenizer.ggml.unknown_token_id"))) {
            int id = (int)rd(&r, 4);
            if (key_is(k, kl, "tokenizer.ggml.bos_token_id"))
                v->bos = id;
            else if (key_is(k, kl, "tokenizer.ggml.eos_token_id"))
                v->eos = id;
            else
                v->unk = id;
        } else if (t == 7 && key_is(k, kl, "tokenizer.ggml.add_space_prefix")) {
            v->no_space_prefix = !rd(&r, 1);
        } else if (t == 7 && (key_is(k, kl, "tokenizer.ggml.add_bos_token") ||
                              key_is(k, kl, "tokenizer.ggml.add_eos_token"))) {
            int b = (int)rd(&r, 1);
            if (key_is(k, kl, "tokenizer.ggml.add_bos_token")) {
                v->add_bos = b;
                v->has_add_bos = 1;
            } else
                v->add_eos = b;
        } else {
            skip_value(&r, t, 0);
        }
    }
    munmap(map, size);
    if (!code && r.bad)
        code = PEFT_EFORMAT;
    int gpt2 = !strcmp(v->model, "gpt2");
    if (!code && (!v->tokens || (!gpt2 && !v->scores) || (gpt2 && !v->merges)))
        code = peft__fail(PEFT_EFORMAT, "%s: no tokenizer.ggml.tokens/%s", path, gpt2 ? "merges" : "scores");
    if (!code && strcmp(v->model, "llama") != 0 && !gpt2)
        code = peft__fail(PEFT_EUNSUPPORTED, "%s: tokenizer model \"%s\" is not supported yet (llama, gpt2)", path,
                          v->model);
    if (code)
        peft__gguf_vocab_free(v);
    return code;
}
