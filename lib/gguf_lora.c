/*
 * GGUF LoRA adapters, as llama.cpp's --lora loads them (DESIGN.md section 5):
 * KVs general.architecture, general.type = "adapter", adapter.type = "lora",
 * general.name, adapter.lora.alpha (f32), general.quantization_version;
 * F32 tensors "<base tensor>.lora_a" ne = [in, r] and ".lora_b" ne = [r, out] holding
 * the bytes of PEFT's A and B, data aligned to 32 bytes. llama.cpp applies one
 * alpha / r per file, so per-module alpha and rsLoRA are folded into B; the rows of
 * q and k lora_b follow llama.cpp's RoPE permutation (GGUF row 2i+j = HF row j*hd/2+i).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "model.h"

static const char *const gguf_names[PEFT_MOD_COUNT] = {"attn_q", "attn_k", "attn_v", "attn_output",
                                                       "ffn_gate", "ffn_up", "ffn_down"};

struct buf {
    unsigned char *p;
    size_t n, cap;
    int oom;
};

static void put(struct buf *b, const void *d, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_u32(struct buf *b, uint32_t v) { put(b, &v, 4); } /* little-endian hosts */
static void put_u64(struct buf *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct buf *b, const char *s)
{
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void kv_str(struct buf *b, const char *k, const char *v)
{
    put_str(b, k);
    put_u32(b, 8);
    put_str(b, v);
}

struct gt {
    char hf[160];   /* PEFT key, for the file order */
    char name[96];
    int64_t ne0, ne1;
    float *data;    /* owned copy (permuted / folded) */
};

static int cmp_gt(const void *a, const void *b) { return strcmp(((const struct gt *)a)->hf, ((const struct gt *)b)->hf); }

int peft_save_adapter_gguf(peft_model *m, const char *path, const char *name)
{
    if (!m || !path)
        return peft__fail(PEFT_EINVAL, "peft_save_adapter_gguf: NULL argument");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_save_adapter_gguf: a LoRA adapter must be attached");
    if (m->lora->method != PEFT_METHOD_LORA) {
        static const char *const names[] = {"LoRA", "IA3", "norm tuning", "VeRA", "LoHa", "LoKr", "prompt tuning", "trainable tokens"};
        int k = m->lora->method;
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: llama.cpp's GGUF LoRA format holds LoRA "
                                             "adapters only (this one is %s)",
                          k >= 0 && k < 8 ? names[k] : "another method");
    }
    lora_state *l = m->lora;
    if (l->use_dora)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: llama.cpp's LoRA format has no DoRA magnitude");
    if (l->embed_r > 0)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: the embedding adapter is not exported to "
                                             "GGUF yet (llama.cpp's converter handles only linear LoRA modules here)");
    if (l->res)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: a PiSSA/OLoRA adapter needs its residual base; "
                                             "save it with convert_to_lora (a plain LoRA of twice the rank) and "
                                             "export that");
    if (l->head_r > 0 || l->n_tok > 0 || l->n_htok > 0 || l->save_embed || l->save_head || l->norms)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: llama.cpp's LoRA files hold the linear "
                                             "modules' lora_a/lora_b only, not lm_head LoRA, token rows or "
                                             "modules trained in full");
    const peft_config *c = &m->cfg;
    int n_t = l->n_modules * 2, code = PEFT_OK;
    struct gt *ts = calloc((size_t)n_t, sizeof *ts);
    struct buf b = {0};
    if (!ts)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    float file_alpha = l->alpha;
    int hd = c->head_dim, half = hd / 2;
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        for (int which = 0; which < 2; which++) {
            struct gt *t = &ts[2 * i + which];
            peft__module_key(t->hf, sizeof t->hf, md->layer, md->kind, which);
            snprintf(t->name, sizeof t->name, "blk.%d.%s.weight.lora_%c", md->layer, gguf_names[md->kind],
                     which ? 'b' : 'a');
            size_t n = which ? (size_t)md->out * md->r : (size_t)md->r * md->in;
            t->data = malloc(n * sizeof(float));
            if (!t->data) {
                code = peft__fail(PEFT_ENOMEM, "out of memory");
                goto done;
            }
            if (!which) {
                t->ne0 = md->in;
                t->ne1 = md->r;
                memcpy(t->data, l->params + md->off_a, n * sizeof(float));
                continue;
            }
            t->ne0 = md->r;
            t->ne1 = md->out;
            /* fold this module's scale into B: llama.cpp multiplies by file_alpha / r */
            float fold = md->scale / (file_alpha / (float)md->r);
            const float *B = l->params + md->off_b;
            int permute = md->kind == PEFT_MOD_Q || md->kind == PEFT_MOD_K;
            for (int row = 0; row < md->out; row++) {
                int src = row;
                if (permute) { /* GGUF row h*hd + 2i + j  <-  HF row h*hd + j*half + i */
                    int h = row / hd, rr = row % hd, ii = rr / 2, j = rr % 2;
                    src = h * hd + j * half + ii;
                }
                for (int k = 0; k < md->r; k++)
                    t->data[(size_t)row * md->r + k] = fold == 1.0f ? B[(size_t)src * md->r + k]
                                                                    : B[(size_t)src * md->r + k] * fold;
            }
        }
    }
    qsort(ts, (size_t)n_t, sizeof *ts, cmp_gt);
    /* header */
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, (uint64_t)n_t);
    put_u64(&b, 6);
    kv_str(&b, "general.architecture", c->architecture);
    kv_str(&b, "general.type", "adapter");
    kv_str(&b, "adapter.type", "lora");
    kv_str(&b, "general.name", name ? name : "libpeft adapter");
    put_str(&b, "adapter.lora.alpha");
    put_u32(&b, 6);
    put(&b, &file_alpha, 4);
    put_str(&b, "general.quantization_version");
    put_u32(&b, 4);
    put_u32(&b, 2);
    uint64_t off = 0;
    for (int i = 0; i < n_t; i++) {
        put_str(&b, ts[i].name);
        put_u32(&b, 2);
        put_u64(&b, (uint64_t)ts[i].ne0);
        put_u64(&b, (uint64_t)ts[i].ne1);
        put_u32(&b, 0); /* F32 */
        put_u64(&b, off);
        off += ((uint64_t)ts[i].ne0 * (uint64_t)ts[i].ne1 * 4 + 31) & ~(uint64_t)31;
    }
    static const unsigned char zeros[32];
    put(&b, zeros, (32 - b.n % 32) % 32);
    for (int i = 0; i < n_t; i++) {
        size_t bytes = (size_t)ts[i].ne0 * (size_t)ts[i].ne1 * 4;
        put(&b, ts[i].data, bytes);
        put(&b, zeros, (32 - bytes % 32) % 32);
    }
    code = b.oom ? peft__fail(PEFT_ENOMEM, "out of memory") : peft__write_atomic(path, b.p, b.n);
done:
    for (int i = 0; i < n_t; i++)
        free(ts[i].data);
    free(ts);
    free(b.p);
    return code;
}
