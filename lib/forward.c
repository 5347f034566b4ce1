/*
 * The whole model: forward through the frozen base with adapters, the
 * cross-entropy loss, and (training) backward into the adapter gradients.
 * Backward stops at the lowest adapted layer.
 */
#include <math.h>
#include <string.h>

#include "lora_linear.h"
#include "model.h"
#include "ops/ops.h"

/* The LoRA branch of (layer, kind), or NULL. */
const lora_view *peft__view_of(peft_model *m, lora_view *lv, int layer, int kind, int train)
{
    lora_state *l = m->lora;
    if (!l || m->adapter_off || m->merged)
        return NULL;
    int idx = l->index[layer * PEFT_MOD_COUNT + kind];
    if (idx < 0)
        return NULL;
    const lora_module *md = &l->mods[idx];
    lv->ia3 = NULL;
    lv->lda = 0;
    lv->lam_b = NULL;
    lv->loha = NULL;
    lv->lokr = l->method == PEFT_METHOD_LOKR;
    if (l->method == PEFT_METHOD_LOHA || l->method == PEFT_METHOD_LOKR) {
        lv->loha = l->params + md->off_a;
        lv->dloha = l->grads + md->off_a;
        lv->loha_tmp = l->loha_tmp;
        lv->A = lv->B = NULL;
        lv->mag = NULL;
        lv->r = md->r;
        lv->scale = md->scale;
        lv->dropout = 0.0f;
        return lv;
    }
    if (l->method == PEFT_METHOD_VERA) {
        int r = md->r, out = md->out;
        const float *lb = l->params + md->off_b, *ld = l->params + md->off_a;
        for (int o = 0; o < out; o++)
            for (int k = 0; k < r; k++)
                l->vera_beff[(size_t)o * r + k] = lb[o] * l->vera_B[(size_t)o * r + k] * ld[k];
        lv->A = l->vera_A;
        lv->lda = l->vera_in;
        lv->B = l->vera_beff;
        lv->dA = NULL;
        lv->dB = l->vera_m;
        lv->vera_B = l->vera_B;
        lv->lam_b = lb;
        lv->lam_d = ld;
        lv->dlam_b = l->grads + md->off_b;
        lv->dlam_d = l->grads + md->off_a;
        lv->r = r;
        lv->scale = 1.0f;
        lv->mag = NULL;
        lv->dropout = train ? l->dropout : 0.0f;
        lv->dropout_seed = peft__hash64(l->seed ^ peft__hash64(m->dropout_calls * 1000003u + (uint64_t)idx));
        return lv;
    }
    if (l->method == PEFT_METHOD_IA3) {
        size_t N = (size_t)m->ws.n_seq * m->ws.seq_len;
        lv->ia3 = l->params + md->off_a;
        lv->dia3 = l->grads + md->off_a;
        lv->ia3_ff = md->ia3_ff;
        lv->z = train ? m->ws.dora_z + N * md->off_out : NULL;
        lv->dz = m->ws.dora_dz;
        lv->mag = NULL;
        lv->A = lv->B = NULL;
        lv->r = 0;
        lv->scale = 0;
        lv->dropout = 0;
        return lv;
    }
    lv->A = l->params + md->off_a;
    lv->B = l->params + md->off_b;
    lv->dA = l->grads + md->off_a;
    lv->dB = l->grads + md->off_b;
    lv->r = md->r;
    lv->scale = md->scale;
    lv->mag = NULL;
    if (l->use_dora) {
        size_t N = (size_t)m->ws.n_seq * m->ws.seq_len;
        lv->mag = l->params + md->off_m;
        lv->dmag = l->grads + md->off_m;
        lv->norm = l->dora_norm + md->off_out;
        lv->wtmp = l->dora_w;
        lv->z = train ? m->ws.dora_z + N * md->off_out : NULL;
        lv->dz = m->ws.dora_dz;
    }
    lv->dropout = train ? l->dropout : 0.0f;
    lv->dropout_seed = peft__hash64(l->seed ^ peft__hash64(m->dropout_calls * 1000003u + (uint64_t)idx));
    return lv;
}

/* The embedding adapter in effect, or NULL. */
static const lora_state *embed_adapter(const peft_model *m)
{
    const lora_state *l = m->lora;
    return l && l->embed_r > 0 && !m->adapter_off && !m->merged ? l : NULL;
}

/* The attachment when what it trains beyond the linear modules (token rows, full copies, norms,
   lm_head LoRA) is in effect: adapter on, merged or not. */
static const lora_state *extras_of(const peft_model *m)
{
    return m->lora && !m->adapter_off ? m->lora : NULL;
}

/* The row of token t of the input embeddings in effect, before the embedding adapter, into dst. */
static void embed_row(const peft_model *m, int32_t t, float *dst)
{
    const lora_state *x = extras_of(m);
    size_t D = (size_t)m->cfg.dim;
    if (x && x->n_tok > 0 && x->tok_slot[t] >= 0)
        memcpy(dst, x->params + x->off_tok + (size_t)x->tok_slot[t] * D, D * sizeof *dst);
    else if (x && x->save_embed)
        memcpy(dst, x->params + x->off_se + (size_t)t * D, D * sizeof *dst);
    else
        peft__w_rows(NULL, &m->embed, t, 1, dst);
}

/* x[i] = E[tok_i] + s B A[:, tok_i] (PEFT: embedding(x, A^T) @ B^T * scaling) */
void peft__embed_tokens(peft_model *m, float *x, const int32_t *tokens, int64_t n)
{
    int D = m->cfg.dim, V = m->cfg.vocab;
    const lora_state *l = embed_adapter(m);
    for (int64_t i = 0; i < n; i++) {
        float *xi = x + i * D;
        embed_row(m, tokens[i], xi);
        if (!l)
            continue;
        int r = l->embed_r;
        const float *A = l->params + l->off_ea, *B = l->params + l->off_eb;
        float a[256];
        for (int k0 = 0; k0 < r; k0 += 256) { /* the token's column of A, scaled, in chunks */
            int kn = r - k0 < 256 ? r - k0 : 256;
            for (int k = 0; k < kn; k++)
                a[k] = l->embed_scale * A[(int64_t)(k0 + k) * V + tokens[i]];
            for (int d = 0; d < D; d++) {
                const float *bd = B + (int64_t)d * r + k0;
                float acc = 0;
                for (int k = 0; k < kn; k++)
                    acc += bd[k] * a[k];
                xi[d] += acc;
            }
        }
    }
    if (m->cfg.embed_mul != 1.0f) /* Gemma, Granite: the lookup (adapters included) times a scalar */
        for (int64_t i = 0; i < n * D; i++)
            x[i] *= m->cfg.embed_mul;
}

/* dx (n, dim) = d(loss)/d(embedding output): into the gradients of the embedding adapter
   (dA[:, tok_i] += s B^T dx_i, dB += s dx_i A[:, tok_i]^T), of the trained token rows and of
   a trained copy of the embeddings */
static void embed_backward(peft_model *m, const float *dx, const int32_t *tokens, int64_t n)
{
    lora_state *l = m->lora;
    int D = m->cfg.dim, V = m->cfg.vocab, r = l->embed_r;
    const float *A = l->params + l->off_ea, *B = l->params + l->off_eb;
    float *dA = l->grads + l->off_ea, *dB = l->grads + l->off_eb, s = l->embed_scale;
    for (int64_t i = 0; i < n; i++) {
        const float *g = dx + i * D;
        int32_t t = tokens[i];
        float *drow = l->n_tok > 0 && l->tok_slot[t] >= 0 ? l->grads + l->off_tok + (size_t)l->tok_slot[t] * D
                      : l->save_embed                     ? l->grads + l->off_se + (size_t)t * D
                                                          : NULL;
        if (drow)
            for (int d = 0; d < D; d++)
                drow[d] += g[d];
        for (int k = 0; k < r; k++) {
            float acc = 0, ak = s * A[(int64_t)k * V + t];
            for (int d = 0; d < D; d++)
                acc += B[(int64_t)d * r + k] * g[d];
            dA[(int64_t)k * V + t] += s * acc;
            if (ak != 0.0f)
                for (int d = 0; d < D; d++)
                    dB[(int64_t)d * r + k] += g[d] * ak;
        }
    }
}

/* The lm_head matrix in effect before trained token rows and the lm_head adapter. */
static peft_w head_matrix(const peft_model *m)
{
    const lora_state *x = extras_of(m);
    if (x && x->save_head)
        return (peft_w){.f = x->params + x->off_sh, .rows = m->cfg.vocab, .cols = m->cfg.dim};
    return m->head;
}

/* Trained rows that replace rows of lm_head: the tied token rows, or an untied lm_head's own
   rows. n rows of ids idx at params + off (their gradient at grads + off); 0 when none. */
typedef struct {
    int n;
    const int32_t *idx;
    size_t off;
} head_rows;

static head_rows head_rows_of(const peft_model *m)
{
    const lora_state *x = extras_of(m);
    head_rows h = {0, NULL, 0};
    if (x && x->n_tok > 0 && m->cfg.tied && !x->save_head)
        h = (head_rows){x->n_tok, x->tok_idx, x->off_tok};
    else if (x && x->n_htok > 0)
        h = (head_rows){x->n_htok, x->htok_idx, x->off_htok};
    return h;
}

/* The lm_head LoRA intermediates for `rows` rows, and as much again for their gradient; NULL
   when out of memory. */
static float *head_scratch(lora_state *l, int64_t rows)
{
    size_t need = 2 * (size_t)rows * (size_t)l->head_r;
    if (need > l->head_u_cap) {
        peft__free(l->head_u);
        l->head_u_cap = 0;
        if (!(l->head_u = peft__alloc_floats(need)))
            return NULL;
        l->head_u_cap = need;
    }
    return l->head_u;
}

int peft__head_logits(peft_model *m, const float *x, int64_t rows, float *logits)
{
    const peft_config *c = &m->cfg;
    int D = c->dim, V = c->vocab;
    peft_w H = head_matrix(m);
    peft__gemm_xwt(m, rows, x, D, &H, 0.0f, logits, V);
    lora_state *l = m->lora;
    head_rows hr = head_rows_of(m);
    for (int j = 0; j < hr.n; j++) { /* trained rows replace lm_head's (PEFT ties token rows to it) */
        const float *w = l->params + hr.off + (size_t)j * D;
        for (int64_t r = 0; r < rows; r++) {
            float acc = 0;
            for (int d = 0; d < D; d++)
                acc += x[r * D + d] * w[d];
            logits[r * V + hr.idx[j]] = acc;
        }
    }
    if (extras_of(m) && l->head_r > 0) { /* + s (x A^T) B^T */
        float *u = head_scratch(l, rows);
        if (!u)
            return peft__fail(PEFT_ENOMEM, "lm_head adapter: out of memory");
        peft__gemm(m, 0, 1, rows, l->head_r, D, 1.0f, x, D, l->params + l->off_ha, D, 0.0f, u, l->head_r);
        peft__gemm(m, 0, 1, rows, V, l->head_r, l->head_scale, u, l->head_r, l->params + l->off_hb, l->head_r, 1.0f,
                   logits, V);
    }
    return PEFT_OK;
}

void peft__embed_delta_add(peft_model *m, float *dst)
{
    const lora_state *l = m->lora;
    const peft_config *c = &m->cfg;
    peft__gemm(m, 1, 1, c->vocab, c->dim, l->embed_r, l->embed_scale, l->params + l->off_ea, c->vocab,
               l->params + l->off_eb, l->embed_r, 1.0f, dst, c->dim);
}

void peft__effective_embed(peft_model *m, float *dst)
{
    const peft_config *c = &m->cfg;
    size_t D = (size_t)c->dim;
    const lora_state *x = extras_of(m);
    if (!x || (!x->n_tok && !x->save_embed))
        peft__w_rows(m, &m->embed, 0, c->vocab, dst);
    else
        for (int t = 0; t < c->vocab; t++)
            embed_row(m, t, dst + (size_t)t * D);
    if (embed_adapter(m))
        peft__embed_delta_add(m, dst);
}

int peft__effective_head(peft_model *m, float *dst)
{
    const peft_config *c = &m->cfg;
    size_t D = (size_t)c->dim;
    peft_w H = head_matrix(m);
    peft__w_rows(m, &H, 0, c->vocab, dst);
    const lora_state *l = extras_of(m);
    head_rows hr = head_rows_of(m);
    for (int j = 0; j < hr.n; j++)
        memcpy(dst + (size_t)hr.idx[j] * D, l->params + hr.off + (size_t)j * D, D * sizeof *dst);
    if (l && l->head_r > 0) /* + s B A */
        peft__gemm(m, 0, 0, c->vocab, c->dim, l->head_r, l->head_scale, l->params + l->off_hb, l->head_r,
                   l->params + l->off_ha, c->dim, 1.0f, dst, c->dim);
    return l && (l->head_r > 0 || l->save_head || hr.n > 0);
}

/* Backward of peft__head_logits for one chunk: dlogits (rows, V) -> dx (rows, D) and the
   gradients of what the attachment trains there (u: the chunk's x A^T, still in head_u). */
static void head_backward(peft_model *m, const float *x, int64_t rows, const float *dlogits, float *dx)
{
    const peft_config *c = &m->cfg;
    int D = c->dim, V = c->vocab;
    peft_w H = head_matrix(m);
    peft__gemm_dyw(m, rows, dlogits, V, &H, 0.0f, dx, D);
    lora_state *l = m->lora;
    if (l->save_head) /* dW += dlogits^T x */
        peft__gemm(m, 1, 0, V, D, rows, 1.0f, dlogits, V, x, D, 1.0f, l->grads + l->off_sh, D);
    head_rows hr = head_rows_of(m);
    for (int j = 0; j < hr.n; j++) { /* the replaced rows: their own gradient, and dx uses them */
        int32_t id = hr.idx[j];
        const float *w = l->params + hr.off + (size_t)j * D, *h = H.f ? H.f + (size_t)id * D : m->qpanel;
        if (!H.f) /* a quantized lm_head's row, dequantized into the (now free) panel */
            peft__w_rows(NULL, &H, id, 1, m->qpanel);
        float *dw = l->grads + hr.off + (size_t)j * D;
        for (int64_t r = 0; r < rows; r++) {
            float g = dlogits[r * V + id];
            if (g == 0.0f)
                continue;
            for (int d = 0; d < D; d++) {
                dw[d] += g * x[r * D + d];
                dx[r * D + d] += g * (w[d] - h[d]);
            }
        }
    }
    if (l->head_r > 0) {
        int r = l->head_r;
        float s = l->head_scale, *du = l->head_u + (size_t)rows * (size_t)r;
        peft__gemm(m, 1, 0, V, r, rows, s, dlogits, V, l->head_u, r, 1.0f, l->grads + l->off_hb, r);
        peft__gemm(m, 0, 0, rows, r, V, s, dlogits, V, l->params + l->off_hb, r, 0.0f, du, r);
        peft__gemm(m, 1, 0, r, D, rows, 1.0f, du, r, x, D, 1.0f, l->grads + l->off_ha, D);
        peft__gemm(m, 0, 0, rows, D, r, 1.0f, du, r, l->params + l->off_ha, D, 1.0f, dx, D);
    }
}

static int64_t norm_offset(const peft_model *m, int layer, int slot)
{
    const lora_state *l = extras_of(m);
    return l && l->norm_off ? l->norm_off[peft__norm_index(&m->cfg, layer, slot)] : -1;
}

const float *peft__norm_base(const peft_model *m, int layer, int slot, int file)
{
    const peft_layer_weights *w = &m->layers[layer < m->cfg.n_layers ? layer : 0];
    if (layer == m->cfg.n_layers)
        return file && m->cfg.gemma ? m->final_norm_file : m->final_norm;
    if (file && m->cfg.gemma)
        return w->file_norm[slot];
    const float *in_layer[PEFT__NORM_SLOTS] = {w->attn_norm, w->ffn_norm, w->post_attn_norm, w->post_ffn_norm,
                                                w->q_norm, w->k_norm};
    return in_layer[slot];
}

const float *peft__norm_weight(const peft_model *m, int layer, int slot)
{
    int64_t off = norm_offset(m, layer, slot);
    if (off < 0)
        return peft__norm_base(m, layer, slot, 0);
    const lora_state *l = m->lora;
    return l->norm_applied ? l->norm_applied + ((size_t)off - l->norm_at) : l->params + off;
}

const float *peft__norm_file(const peft_model *m, int layer, int slot)
{
    int64_t off = norm_offset(m, layer, slot);
    return off >= 0 ? m->lora->params + off : peft__norm_base(m, layer, slot, 1);
}

float *peft__norm_grad(peft_model *m, int layer, int slot)
{
    int64_t off = norm_offset(m, layer, slot);
    return off >= 0 ? m->lora->grads + off : NULL;
}

void peft__norms_sync(peft_model *m)
{
    const lora_state *l = m->lora;
    for (size_t i = 0; l && l->norm_applied && i < l->norm_n; i++)
        l->norm_applied[i] = 1.0f + l->params[l->norm_at + i];
}

static int64_t bias_index(const peft_model *m, int layer, int kind)
{
    const lora_state *l = extras_of(m);
    return l && l->bias_off ? l->bias_off[layer * PEFT_MOD_COUNT + kind] : -1;
}

const float *peft__bias_of(const peft_model *m, int layer, int kind)
{
    int64_t off = bias_index(m, layer, kind);
    return off >= 0 ? m->lora->params + off : m->layers[layer].bias[kind];
}

void peft__bias_grad(peft_model *m, int layer, int kind, const float *dy, int64_t N, int out)
{
    int64_t off = bias_index(m, layer, kind);
    if (off < 0)
        return;
    float *g = m->lora->grads + off;
    for (int o = 0; o < out; o++) { /* in double, as the other vector gradients */
        double s = 0;
        for (int64_t t = 0; t < N; t++)
            s += dy[t * out + o];
        g[o] += (float)s;
    }
}

int peft__bias_trained(const peft_model *m, int layer, int k0, int k1)
{
    for (int k = k0; k <= k1; k++)
        if (bias_index(m, layer, k) >= 0)
            return 1;
    return 0;
}

static float *xa_of(peft_model *m, int layer, int kind)
{
    lora_state *l = m->lora;
    if (!l)
        return NULL;
    int idx = l->index[layer * PEFT_MOD_COUNT + kind];
    if (idx < 0)
        return NULL;
    size_t N = (size_t)m->ws.n_seq * m->ws.seq_len;
    return m->ws.xa + N * l->mods[idx].off_xa;
}

static void add_inplace(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

/* y = s x (y may be x) */
static void scale_to(float *y, const float *x, float s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = s * x[i];
}

/* layer l's RoPE tables: Gemma 3's sliding layers have their own base */
static void rope_of(const peft_model *m, int l, const float **cos_t, const float **sin_t)
{
    int local = peft__rope_local(&m->cfg, l);
    *cos_t = local ? m->ws.rope_cos_l : m->ws.rope_cos;
    *sin_t = local ? m->ws.rope_sin_l : m->ws.rope_sin;
}

/* dx (rows, n) = d/d(pre-norm input) of the norm given d/d(its output) in d; through scratch */
static void norm_backward_to(peft_model *m, float *dx, const float *d, const float *pre, const float *w,
                             const float *rstd, int64_t rows, int n)
{
    memset(dx, 0, (size_t)rows * (size_t)n * sizeof *dx);
    rmsnorm_backward(m->pool, dx, d, pre, w, rstd, rows, n);
}

struct split_args {
    float *f;
    float *const *parts;
    const int *w;
    int n, total, join;
    int64_t N;
};

#define SPLIT_ROWS 64

static void split_task(void *vp, int32_t task)
{
    const struct split_args *a = vp;
    int64_t t0 = (int64_t)task * SPLIT_ROWS, t1 = t0 + SPLIT_ROWS < a->N ? t0 + SPLIT_ROWS : a->N;
    for (int64_t t = t0; t < t1; t++) {
        float *row = a->f + t * a->total;
        for (int i = 0; i < a->n; row += a->w[i], i++) {
            float *p = a->parts[i] + t * a->w[i];
            memcpy(a->join ? row : p, a->join ? p : row, (size_t)a->w[i] * sizeof *row);
        }
    }
}

void peft__fused_split(peft_model *m, float *f, float *const *parts, const int *w, int n, int64_t N, int join)
{
    struct split_args a = {f, parts, w, n, 0, join, N};
    for (int i = 0; i < n; i++)
        a.total += w[i];
    peft__pool_for(m->pool, (int32_t)((N + SPLIT_ROWS - 1) / SPLIT_ROWS), split_task, &a);
}

static void layer_forward(peft_model *m, int l, const float *x_in, float *x_out, layer_acts *a,
                          int train)
{
    const peft_config *c = &m->cfg;
    workspace *ws = &m->ws;
    int B = ws->n_seq, T = ws->seq_len, D = c->dim, F = c->ffn_dim;
    int Hq = c->n_heads * c->head_dim, Hk = c->n_kv_heads * c->head_dim;
    int64_t N = (int64_t)B * T;
    lora_view lv;
    float *q = c->qk_norm ? a->q_pre : a->q, *k = c->qk_norm ? a->k_pre : a->k;
    const float *rc, *rs;
    rope_of(m, l, &rc, &rs);
    rmsnorm_forward(m->pool, a->xn1, a->rstd1, x_in, peft__norm_weight(m, l, PEFT__NORM_IN), N, D, c->eps);
    if (c->fused) { /* Phi-3: one qkv_proj, its columns split into q, k and v */
        linear_forward(m, ws->fused, a->xn1, peft__w_of(m, l, PEFT_MOD_Q), NULL, N, D, Hq + 2 * Hk,
                       peft__view_of(m, &lv, l, PEFT_MOD_Q, train), xa_of(m, l, PEFT_MOD_Q), ws->tmp);
        float *parts[3] = {q, k, a->v};
        peft__fused_split(m, ws->fused, parts, (const int[3]){Hq, Hk, Hk}, 3, N, 0);
    } else {
        linear_forward(m, q, a->xn1, peft__w_of(m, l, PEFT_MOD_Q), peft__bias_of(m, l, PEFT_MOD_Q), N, D, Hq,
                       peft__view_of(m, &lv, l, PEFT_MOD_Q, train), xa_of(m, l, PEFT_MOD_Q), ws->tmp);
        linear_forward(m, k, a->xn1, peft__w_of(m, l, PEFT_MOD_K), peft__bias_of(m, l, PEFT_MOD_K), N, D, Hk,
                       peft__view_of(m, &lv, l, PEFT_MOD_K, train), xa_of(m, l, PEFT_MOD_K), ws->tmp);
        linear_forward(m, a->v, a->xn1, peft__w_of(m, l, PEFT_MOD_V), peft__bias_of(m, l, PEFT_MOD_V), N, D, Hk,
                       peft__view_of(m, &lv, l, PEFT_MOD_V, train), xa_of(m, l, PEFT_MOD_V), ws->tmp);
    }
    if (c->qk_norm) { /* Qwen3: each head of q and k normalised */
        rmsnorm_forward(m->pool, a->q, a->rstd_q, q, peft__norm_weight(m, l, PEFT__NORM_Q), N * c->n_heads,
                        c->head_dim, c->eps);
        rmsnorm_forward(m->pool, a->k, a->rstd_k, k, peft__norm_weight(m, l, PEFT__NORM_K), N * c->n_kv_heads,
                        c->head_dim, c->eps);
    }
    if (peft__layer_rope(c, l)) { /* SmolLM3's NoPE layers: no rotation */
        rope_forward(m->pool, a->q, rc, rs, ws->pos, B, T, c->n_heads, c->head_dim, peft__rot_dim(c));
        rope_forward(m->pool, a->k, rc, rs, ws->pos, B, T, c->n_kv_heads, c->head_dim, peft__rot_dim(c));
    }
    if (c->q_mul != 1.0f) /* Gemma's query_pre_attn_scalar, Granite's attention_multiplier, through q */
        for (int64_t i = 0; i < N * Hq; i++)
            a->q[i] *= c->q_mul;
    attention_forward(m->pool, a->att, a->lse, ws->att_scratch, a->q, a->k, a->v, ws->pos, B, T, c->n_heads,
                      c->n_kv_heads, c->head_dim, peft__layer_window(c, l), peft__prompt_len(m), c->attn_softcap);
    linear_forward(m, c->gemma ? a->ao : a->h, a->att, peft__w_of(m, l, PEFT_MOD_O), peft__bias_of(m, l, PEFT_MOD_O),
                   N, Hq, D, peft__view_of(m, &lv, l, PEFT_MOD_O, train), xa_of(m, l, PEFT_MOD_O), ws->tmp);
    if (c->gemma) /* Gemma 3: the attention output normalised before the residual */
        rmsnorm_forward(m->pool, a->h, a->rstd3, a->ao, peft__norm_weight(m, l, PEFT__NORM_ATTN_OUT), N, D, c->eps);
    else if (c->res_mul != 1.0f) /* Granite: scaled (Gemma's is 1) */
        scale_to(a->h, a->h, c->res_mul, (size_t)N * D);
    add_inplace(a->h, x_in, (size_t)N * D);
    rmsnorm_forward(m->pool, a->xn2, a->rstd2, a->h, peft__norm_weight(m, l, PEFT__NORM_MLP), N, D, c->eps);
    if (c->fused) { /* Phi-3's gate_up_proj: gate first, then up */
        linear_forward(m, ws->fused, a->xn2, peft__w_of(m, l, PEFT_MOD_GATE), NULL, N, D, 2 * F,
                       peft__view_of(m, &lv, l, PEFT_MOD_GATE, train), xa_of(m, l, PEFT_MOD_GATE), ws->tmp);
        float *parts[2] = {a->g, a->u};
        peft__fused_split(m, ws->fused, parts, (const int[2]){F, F}, 2, N, 0);
    } else {
        linear_forward(m, a->g, a->xn2, peft__w_of(m, l, PEFT_MOD_GATE), peft__bias_of(m, l, PEFT_MOD_GATE), N, D, F,
                       peft__view_of(m, &lv, l, PEFT_MOD_GATE, train), xa_of(m, l, PEFT_MOD_GATE), ws->tmp);
        linear_forward(m, a->u, a->xn2, peft__w_of(m, l, PEFT_MOD_UP), peft__bias_of(m, l, PEFT_MOD_UP), N, D, F,
                       peft__view_of(m, &lv, l, PEFT_MOD_UP, train), xa_of(m, l, PEFT_MOD_UP), ws->tmp);
    }
    gated_forward(m->pool, c->gemma, ws->act, a->g, a->u, N, F); /* Gemma: GeGLU */
    linear_forward(m, c->gemma ? a->fo : x_out, ws->act, peft__w_of(m, l, PEFT_MOD_DOWN),
                   peft__bias_of(m, l, PEFT_MOD_DOWN), N, F, D, peft__view_of(m, &lv, l, PEFT_MOD_DOWN, train),
                   xa_of(m, l, PEFT_MOD_DOWN), ws->tmp);
    if (c->gemma) /* and the MLP's */
        rmsnorm_forward(m->pool, x_out, a->rstd4, a->fo, peft__norm_weight(m, l, PEFT__NORM_MLP_OUT), N, D, c->eps);
    else if (c->res_mul != 1.0f)
        scale_to(x_out, x_out, c->res_mul, (size_t)N * D);
    add_inplace(x_out, a->h, (size_t)N * D);
}

/* Qwen3: d/d(q or k before its per-head norm), in place in d, through scratch (n floats) */
static void head_norm_backward(peft_model *m, int l, int slot, float *d, float *scratch, const float *pre,
                               const float *rstd, int64_t rows, int hd)
{
    float *dw = peft__norm_grad(m, l, slot);
    if (dw) /* one weight for every head: summed over rows and heads */
        rmsnorm_backward_w(dw, d, pre, rstd, rows, hd);
    norm_backward_to(m, scratch, d, pre, peft__norm_weight(m, l, slot), rstd, rows, hd);
    memcpy(d, scratch, (size_t)rows * (size_t)hd * sizeof *d);
}

/* whether layer l has an adapted module, or a trained bias, among kinds k0..k1 */
static int has_kind(peft_model *m, int l, int k0, int k1)
{
    for (int k = k0; k <= k1; k++)
        if (m->lora->index[l * PEFT_MOD_COUNT + k] >= 0)
            return 1;
    return peft__bias_trained(m, l, k0, k1);
}

/* ws->dx holds d(loss)/d(layer output); on return, d/d(layer input) unless l is the lowest. */
static void layer_backward(peft_model *m, int l, layer_acts *a)
{
    const peft_config *c = &m->cfg;
    workspace *ws = &m->ws;
    int B = ws->n_seq, T = ws->seq_len, D = c->dim, F = c->ffn_dim;
    int Hq = c->n_heads * c->head_dim, Hk = c->n_kv_heads * c->head_dim;
    int64_t N = (int64_t)B * T;
    int below = l > m->lora->lowest_layer;  /* gradient needed below this layer */
    float *dw1 = peft__norm_grad(m, l, PEFT__NORM_IN), *dw2 = peft__norm_grad(m, l, PEFT__NORM_MLP);
    float *dw3 = peft__norm_grad(m, l, PEFT__NORM_ATTN_OUT), *dw4 = peft__norm_grad(m, l, PEFT__NORM_MLP_OUT);
    int qkv = below || has_kind(m, l, PEFT_MOD_Q, PEFT_MOD_V) || dw1 || peft__norm_grad(m, l, PEFT__NORM_Q) ||
              peft__norm_grad(m, l, PEFT__NORM_K);
    int attn = qkv || has_kind(m, l, PEFT_MOD_Q, PEFT_MOD_O) || dw2 || dw3;
    lora_view lv;

    /* MLP: x_out = h + down(silu(g) * u) (Gemma: h + norm(down(gelu(g) * u))) */
    float *dy = ws->dx;
    if (c->gemma) { /* d/d(down's output), in dxn (free until the norm below) */
        if (dw4)
            rmsnorm_backward_w(dw4, ws->dx, a->fo, a->rstd4, N, D);
        norm_backward_to(m, ws->dxn, ws->dx, a->fo, peft__norm_weight(m, l, PEFT__NORM_MLP_OUT), a->rstd4, N, D);
        dy = ws->dxn;
    } else if (c->res_mul != 1.0f) { /* Granite: d/d(down's output) = res_mul dx, in dxn */
        scale_to(ws->dxn, ws->dx, c->res_mul, (size_t)N * D);
        dy = ws->dxn;
    }
    gated_forward(m->pool, c->gemma, ws->act, a->g, a->u, N, F);
    peft__bias_grad(m, l, PEFT_MOD_DOWN, dy, N, D);
    linear_backward(m, ws->dact, 0.0f, dy, ws->act, peft__w_of(m, l, PEFT_MOD_DOWN), N, F, D,
                    peft__view_of(m, &lv, l, PEFT_MOD_DOWN, 1), xa_of(m, l, PEFT_MOD_DOWN), ws->dxa, ws->tmp);
    gated_backward(m->pool, c->gemma, ws->dg, ws->du, ws->dact, a->g, a->u, N, F);
    peft__bias_grad(m, l, PEFT_MOD_GATE, ws->dg, N, F);
    peft__bias_grad(m, l, PEFT_MOD_UP, ws->du, N, F);
    if (c->fused) {
        float *parts[2] = {ws->dg, ws->du};
        peft__fused_split(m, ws->fused, parts, (const int[2]){F, F}, 2, N, 1);
        linear_backward(m, attn ? ws->dxn : NULL, 0.0f, ws->fused, a->xn2, peft__w_of(m, l, PEFT_MOD_GATE), N, D,
                        2 * F, peft__view_of(m, &lv, l, PEFT_MOD_GATE, 1), xa_of(m, l, PEFT_MOD_GATE), ws->dxa,
                        ws->tmp);
    } else {
        linear_backward(m, attn ? ws->dxn : NULL, 0.0f, ws->dg, a->xn2, peft__w_of(m, l, PEFT_MOD_GATE), N, D, F,
                        peft__view_of(m, &lv, l, PEFT_MOD_GATE, 1), xa_of(m, l, PEFT_MOD_GATE), ws->dxa, ws->tmp);
        linear_backward(m, attn ? ws->dxn : NULL, 1.0f, ws->du, a->xn2, peft__w_of(m, l, PEFT_MOD_UP), N, D, F,
                        peft__view_of(m, &lv, l, PEFT_MOD_UP, 1), xa_of(m, l, PEFT_MOD_UP), ws->dxa, ws->tmp);
    }
    if (!attn)
        return;
    if (dw2)
        rmsnorm_backward_w(dw2, ws->dxn, a->h, a->rstd2, N, D);
    rmsnorm_backward(m->pool, ws->dx, ws->dxn, a->h, peft__norm_weight(m, l, PEFT__NORM_MLP), a->rstd2, N, D);

    /* attention: h = x_in + o(attn(q, k, v)) (Gemma: x_in + norm(o(...))) */
    dy = ws->dx;
    if (c->gemma) {
        if (dw3)
            rmsnorm_backward_w(dw3, ws->dx, a->ao, a->rstd3, N, D);
        norm_backward_to(m, ws->dxn, ws->dx, a->ao, peft__norm_weight(m, l, PEFT__NORM_ATTN_OUT), a->rstd3, N, D);
        dy = ws->dxn;
    } else if (c->res_mul != 1.0f) {
        scale_to(ws->dxn, ws->dx, c->res_mul, (size_t)N * D);
        dy = ws->dxn;
    }
    peft__bias_grad(m, l, PEFT_MOD_O, dy, N, D);
    linear_backward(m, qkv ? ws->datt : NULL, 0.0f, dy, a->att, peft__w_of(m, l, PEFT_MOD_O), N, Hq, D,
                    peft__view_of(m, &lv, l, PEFT_MOD_O, 1), xa_of(m, l, PEFT_MOD_O), ws->dxa, ws->tmp);
    if (!qkv)
        return;
    attention_backward(m->pool, ws->dq, ws->dk, ws->dv, ws->att_scratch, ws->datt, a->q, a->k, a->v, a->att, a->lse,
                       ws->pos, B, T, c->n_heads, c->n_kv_heads, c->head_dim, peft__layer_window(c, l),
                       peft__prompt_len(m), c->attn_softcap);
    const float *rc, *rs;
    rope_of(m, l, &rc, &rs);
    if (c->q_mul != 1.0f)
        for (int64_t i = 0; i < N * Hq; i++)
            ws->dq[i] *= c->q_mul;
    if (peft__layer_rope(c, l)) {
        rope_backward(m->pool, ws->dq, rc, rs, ws->pos, B, T, c->n_heads, c->head_dim, peft__rot_dim(c));
        rope_backward(m->pool, ws->dk, rc, rs, ws->pos, B, T, c->n_kv_heads, c->head_dim, peft__rot_dim(c));
    }
    if (c->qk_norm) { /* datt is free again: the scratch */
        head_norm_backward(m, l, PEFT__NORM_Q, ws->dq, ws->datt, a->q_pre, a->rstd_q, N * c->n_heads, c->head_dim);
        head_norm_backward(m, l, PEFT__NORM_K, ws->dk, ws->datt, a->k_pre, a->rstd_k, N * c->n_kv_heads, c->head_dim);
    }
    peft__bias_grad(m, l, PEFT_MOD_Q, ws->dq, N, Hq);
    peft__bias_grad(m, l, PEFT_MOD_K, ws->dk, N, Hk);
    peft__bias_grad(m, l, PEFT_MOD_V, ws->dv, N, Hk);
    float *dxn = below || dw1 ? ws->dxn : NULL;
    if (c->fused) {
        float *parts[3] = {ws->dq, ws->dk, ws->dv};
        peft__fused_split(m, ws->fused, parts, (const int[3]){Hq, Hk, Hk}, 3, N, 1);
        linear_backward(m, dxn, 0.0f, ws->fused, a->xn1, peft__w_of(m, l, PEFT_MOD_Q), N, D, Hq + 2 * Hk,
                        peft__view_of(m, &lv, l, PEFT_MOD_Q, 1), xa_of(m, l, PEFT_MOD_Q), ws->dxa, ws->tmp);
    } else {
        linear_backward(m, dxn, 0.0f, ws->dq, a->xn1, peft__w_of(m, l, PEFT_MOD_Q), N, D, Hq,
                        peft__view_of(m, &lv, l, PEFT_MOD_Q, 1), xa_of(m, l, PEFT_MOD_Q), ws->dxa, ws->tmp);
        linear_backward(m, dxn, 1.0f, ws->dk, a->xn1, peft__w_of(m, l, PEFT_MOD_K), N, D, Hk,
                        peft__view_of(m, &lv, l, PEFT_MOD_K, 1), xa_of(m, l, PEFT_MOD_K), ws->dxa, ws->tmp);
        linear_backward(m, dxn, 1.0f, ws->dv, a->xn1, peft__w_of(m, l, PEFT_MOD_V), N, D, Hk,
                        peft__view_of(m, &lv, l, PEFT_MOD_V, 1), xa_of(m, l, PEFT_MOD_V), ws->dxa, ws->tmp);
    }
    if (dw1)
        rmsnorm_backward_w(dw1, ws->dxn, a->x_in, a->rstd1, N, D);
    if (below)
        rmsnorm_backward(m->pool, ws->dx, ws->dxn, a->x_in, peft__norm_weight(m, l, PEFT__NORM_IN), a->rstd1, N, D);
}

struct xent_args {
    float *logits, *row_loss;
    const int32_t *labels;
    int V, train;
    float softcap; /* Gemma 2: the logits soft-capped first, the gradient through the cap */
};

static void xent_task(void *vp, int32_t i)
{
    const struct xent_args *a = vp;
    float *row = a->logits + (int64_t)i * a->V;
    int label = a->labels[i];
    if (label < 0) {
        a->row_loss[i] = 0.0f;
        if (a->train)
            memset(row, 0, (size_t)a->V * sizeof *row);
        return;
    }
    a->row_loss[i] = (float)(a->softcap > 0.0f ? xent_row_softcap(row, a->V, label, a->softcap, a->train)
                                               : xent_row(a->train ? row : NULL, row, a->V, label, 1.0f));
}

static int check_batch(const peft_model *m, const peft_batch *b)
{
    if (!b)
        return peft__fail(PEFT_EINVAL, "batch is NULL");
    if (b->version == 0 || b->version > PEFT_BATCH_VERSION)
        return peft__fail(PEFT_EINVAL, "batch: unknown version %u", b->version);
    if (!b->tokens || b->n_seq <= 0 || b->seq_len <= 0)
        return peft__fail(PEFT_EINVAL, "batch: need tokens, n_seq > 0 and seq_len > 0");
    if ((int64_t)b->n_seq * b->seq_len > (1 << 24))
        return peft__fail(PEFT_EINVAL, "batch: n_seq * seq_len too large");
    int64_t n = (int64_t)b->n_seq * b->seq_len;
    for (int64_t i = 0; i < n; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= m->cfg.vocab)
            return peft__fail(PEFT_EINVAL, "batch: token %d at index %lld is outside the vocabulary (0..%d)",
                              b->tokens[i], (long long)i, m->cfg.vocab - 1);
        if (b->labels && b->labels[i] != -100 && (b->labels[i] < 0 || b->labels[i] >= m->cfg.vocab))
            return peft__fail(PEFT_EINVAL, "batch: label %d at index %lld is neither -100 nor a token id",
                              b->labels[i], (long long)i);
    }
    return PEFT_OK;
}

int peft__run(peft_model *m, const peft_batch *batch, int train, double *loss_sum, uint64_t *tokens)
{
    int code = check_batch(m, batch);
    if (code)
        return code;
    if (train && !m->lora)
        return peft__fail(PEFT_ESTATE, "no adapter attached: nothing to train");
    if (train && m->merged)
        return peft__fail(PEFT_ESTATE, "the adapter is merged into the weights (peft_unmerge_adapter first)");
    if (train && m->adapter_off)
        return peft__fail(PEFT_ESTATE, "the adapter is disabled (peft_adapter_enable): nothing to train");
    const peft_config *c = &m->cfg;
    const int32_t *seg = batch->version >= 2 ? batch->seq_ids : NULL;
    /* prompt tuning: P virtual rows before each sequence (PEFT's layout) */
    int P = peft__prompt_len(m);
    int B = batch->n_seq, Tb = batch->seq_len, T = Tb + P, D = c->dim, V = c->vocab;
    int64_t N = (int64_t)B * T;
    if ((code = peft__workspace_ensure(m, B, T, train)))
        return code;
    workspace *ws = &m->ws;
    peft__norms_sync(m);
    rope_tables(ws->rope_cos, ws->rope_sin, T, c);
    if (c->rope_local_theta > 0.0f) {
        peft_config local;
        rope_tables(ws->rope_cos_l, ws->rope_sin_l, T, rope_config_of(c, 0, &local));
    }

    /* positions: packed documents (seq_ids) restart at 0 (at P after a soft prompt of P rows,
       which every document sees); row b*T+t predicts the label of the next row unless a new
       document starts there, except that the last virtual row predicts the first real token */
    const int32_t *lab = batch->labels ? batch->labels : batch->tokens;
    uint64_t count = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int64_t r = (int64_t)b * T + t, u = (int64_t)b * Tb + t - P;
            ws->pos[r] = t < P ? t : t == P || (seg && seg[u] != seg[u - 1]) ? P : ws->pos[r - 1] + 1;
        }
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int64_t r = (int64_t)b * T + t;
            int next = t + 1 < T && t + 1 >= P && (t + 1 == P || ws->pos[r + 1] != P);
            int32_t y = next ? lab[(int64_t)b * Tb + t + 1 - P] : -100;
            ws->labels[r] = y;
            count += y >= 0;
        }

    /* embeddings */
    float *x = train ? ws->acts[0].x_in : ws->res[0];
    if (P > 0)
        for (int b = 0; b < B; b++) {
            memcpy(x + (int64_t)b * T * D, m->lora->params, (size_t)P * D * sizeof(float));
            peft__embed_tokens(m, x + ((int64_t)b * T + P) * D, batch->tokens + (int64_t)b * Tb, Tb);
        }
    else
        peft__embed_tokens(m, x, batch->tokens, N);

    for (int l = 0; l < c->n_layers; l++) {
        float *out;
        layer_acts *a;
        if (train) {
            a = ws->ckpt ? &ws->ckpt_acts : &ws->acts[l];
            out = l + 1 < c->n_layers ? ws->acts[l + 1].x_in : ws->x_final;
        } else { /* one layer's buffers (a workspace planned for checkpointed training has them apart) */
            a = ws->ckpt ? &ws->ckpt_acts : &ws->acts[0];
            out = l + 1 < c->n_layers ? ws->res[(l + 1) & 1] : ws->x_final;
        }
        layer_forward(m, l, x, out, a, train);
        x = out;
    }
    rmsnorm_forward(m->pool, ws->xnf, ws->rstdf, ws->x_final, peft__norm_weight(m, c->n_layers, 0), N, D, c->eps);
    if (c->logit_mul != 1.0f) /* Granite's logits_scaling, on the lm_head's input */
        scale_to(ws->xnf, ws->xnf, c->logit_mul, (size_t)N * D);

    /* loss (and d logits -> d xnf) in row chunks: the N x V logits never exist at once */
    double sum = 0;
    struct xent_args xa = {ws->logits, NULL, NULL, V, train, c->final_softcap};
    int64_t chunk = peft__xent_chunk(N, V);
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
        int64_t rows = N - r0 < chunk ? N - r0 : chunk;
        if ((code = peft__head_logits(m, ws->xnf + r0 * D, rows, ws->logits)))
            return code;
        xa.row_loss = ws->row_loss + r0;
        xa.labels = ws->labels + r0;
        peft__pool_for(m->pool, (int32_t)rows, xent_task, &xa);
        if (train)
            head_backward(m, ws->xnf + r0 * D, rows, ws->logits, ws->dxn + r0 * D);
    }
    for (int64_t i = 0; i < N; i++)
        sum += ws->row_loss[i];
    *loss_sum = sum;
    *tokens = count;
    if (!train)
        return PEFT_OK;

    /* backward */
    memset(ws->dx, 0, (size_t)N * D * sizeof(float));
    if (c->logit_mul != 1.0f)
        scale_to(ws->dxn, ws->dxn, c->logit_mul, (size_t)N * D);
    float *dwf = peft__norm_grad(m, c->n_layers, 0);
    if (dwf)
        rmsnorm_backward_w(dwf, ws->dxn, ws->x_final, ws->rstdf, N, D);
    rmsnorm_backward(m->pool, ws->dx, ws->dxn, ws->x_final, peft__norm_weight(m, c->n_layers, 0), ws->rstdf, N, D);
    /* layer l's gradients are final once its backward is done: tell the host (ready_lo and
       ready_hi bound the contiguous span reported so far) */
    size_t ready_lo = m->lora->n_params, ready_hi = 0, lo, hi;
    for (int l = c->n_layers - 1; l >= (m->lora->lowest_layer > 0 ? m->lora->lowest_layer : 0); l--) {
        layer_acts *a = &ws->acts[l];
        if (ws->ckpt) {
            /* the layer's activations again, from its stored input: the same computation as
               the forward pass (dropout masks are a function of the call, layer and module),
               so the output it rewrites is the value already there; the top layer's are
               still in place */
            a = &ws->ckpt_acts;
            a->x_in = ws->acts[l].x_in;
            if (l + 1 < c->n_layers)
                layer_forward(m, l, a->x_in, ws->acts[l + 1].x_in, a, 1);
        }
        layer_backward(m, l, a);
        if (m->grad_ready && peft__grad_layer_range(m->lora, c->n_layers, l, &lo, &hi)) {
            m->grad_ready(m->grad_ready_user, lo, hi - lo);
            ready_lo = lo;
            if (hi > ready_hi)
                ready_hi = hi;
        }
    }
    if (P > 0) /* the soft prompt's gradient: the virtual rows' */
        for (int b = 0; b < B; b++)
            add_inplace(m->lora->grads, ws->dx + (int64_t)b * T * D, (size_t)P * D);
    else if (m->lora->lowest_layer < 0) { /* ws->dx: d(loss)/d(layer 0 input) */
        if (c->embed_mul != 1.0f)
            for (int64_t i = 0; i < N * D; i++)
                ws->dx[i] *= c->embed_mul;
        embed_backward(m, ws->dx, batch->tokens, N);
    }
    if (m->grad_ready) { /* the rest: below the lowest layer reported, above the top one */
        if (ready_hi == 0)
            ready_lo = ready_hi = m->lora->n_params;
        if (ready_lo > 0)
            m->grad_ready(m->grad_ready_user, 0, ready_lo);
        if (ready_hi < m->lora->n_params)
            m->grad_ready(m->grad_ready_user, ready_hi, m->lora->n_params - ready_hi);
    }
    m->dropout_calls++;
    return PEFT_OK;
}
