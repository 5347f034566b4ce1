/*
 * Inference sessions: one position at a time with a KV cache, adapters applied
 * (unless disabled). Used for generation; the training path is forward.c.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lora_linear.h"
#include "model.h"
#include "ops/ops.h"

struct peft_session {
    peft_model *m;
    int32_t max_len, pos;
    float *kc, *vc; /* (L, max_len, Hkv*hd) */
    float *x, *xn, *q, *k, *v, *att, *h, *g, *u, *act, *tmp, *xa, *scores;
    float *fused; /* Phi-3: qkv_proj's or gate_up_proj's output */
    float *block;
    int rank;     /* LoRA rank the scratch was sized for */
    int virt_cap; /* positions reserved for a soft prompt (prompt tuning) beyond max_len */
    int virt;     /* virtual positions at the start of the cache */
};

int peft_adapter_enable(peft_model *m, int32_t enabled)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_adapter_enable: model is NULL");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_adapter_enable: no adapter attached");
    m->adapter_off = !enabled;
    return PEFT_OK;
}

int peft_session_create(peft_session **out, peft_model *m, int32_t max_len)
{
    if (!out || !m)
        return peft__fail(PEFT_EINVAL, "peft_session_create: NULL argument");
    *out = NULL;
    if (max_len <= 0 || max_len > (1 << 20))
        return peft__fail(PEFT_EINVAL, "peft_session_create: max_len %d out of range", max_len);
    const peft_config *c = &m->cfg;
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim, qd = (size_t)c->n_heads * c->head_dim;
    size_t D = (size_t)c->dim, F = (size_t)c->ffn_dim, big = D > qd ? D : qd;
    big = big > F ? big : F;
    int virt = m->lora && m->lora->method == PEFT_METHOD_PROMPT ? m->lora->n_virtual : 0;
    max_len += virt; /* the soft prompt's positions come on top */
    size_t cache = (size_t)c->n_layers * (size_t)max_len * kvd;
    size_t maxr = m->lora ? (size_t)m->lora->max_rank : 1;
    size_t wq = (size_t)peft__mod_out(c, PEFT_MOD_Q), wg = (size_t)peft__mod_out(c, PEFT_MOD_GATE);
    size_t fw = c->fused ? (wq > wg ? wq : wg) : 1; /* one fused module's output at a time */
    size_t sizes[] = {cache, cache, D, D, qd, kvd, kvd, qd, D, F, F, F, big, maxr, (size_t)max_len, fw};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += (sizes[i] + 15) & ~(size_t)15;
    peft_session *s = calloc(1, sizeof *s);
    float *block = s ? peft__alloc_floats(total) : NULL;
    if (!block) {
        free(s);
        return peft__fail(PEFT_ENOMEM, "peft_session_create: cannot allocate %zu MiB", total * 4 >> 20);
    }
    float **ptrs[] = {&s->kc, &s->vc, &s->x, &s->xn, &s->q, &s->k, &s->v, &s->att, &s->h, &s->g,
                      &s->u, &s->act, &s->tmp, &s->xa, &s->scores, &s->fused};
    size_t off = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *ptrs[i] = block + off;
        off += (sizes[i] + 15) & ~(size_t)15;
    }
    s->block = block;
    s->m = m;
    s->max_len = max_len;
    s->rank = (int)maxr;
    s->virt_cap = virt;
    *out = s;
    return PEFT_OK;
}

void peft_session_free(peft_session **ps)
{
    if (!ps || !*ps)
        return;
    peft__free((*ps)->block);
    free(*ps);
    *ps = NULL;
}

int peft_session_reset(peft_session *s)
{
    if (!s)
        return peft__fail(PEFT_EINVAL, "peft_session_reset: session is NULL");
    s->pos = 0;
    s->virt = 0;
    return PEFT_OK;
}

int32_t peft_session_length(const peft_session *s) { return s ? s->pos - s->virt : 0; }

static const lora_view *view(peft_session *s, lora_view *lv, int l, int kind)
{
    return peft__view_of(s->m, lv, l, kind, 0);
}

/* one position: token tok, or the embedding row emb when it is not NULL, of a feed that ends at
   position rope_len - 1 (as transformers, LongRoPE's long factors rotate a whole feed, the
   prefill of a prompt included, whose last position is past the original length) */
static void feed_one(peft_session *s, int32_t tok, const float *emb, int rope_len)
{
    peft_model *m = s->m;
    const peft_config *c = &m->cfg;
    int D = c->dim, F = c->ffn_dim, hd = c->head_dim, H = c->n_heads, Hk = c->n_kv_heads;
    int qd = H * hd, kvd = Hk * hd, pos = s->pos;
    float scale = c->q_mul / sqrtf((float)hd), cap = c->attn_softcap;
    lora_view lv;
    if (emb)
        memcpy(s->x, emb, (size_t)D * sizeof *s->x);
    else
        peft__embed_tokens(m, s->x, &tok, 1);
    for (int l = 0; l < c->n_layers; l++) {
        float rstd;
        float *kc = s->kc + ((size_t)l * s->max_len) * kvd, *vc = s->vc + ((size_t)l * s->max_len) * kvd;
        rmsnorm_forward(NULL, s->xn, &rstd, s->x, peft__norm_weight(m, l, PEFT__NORM_IN), 1, D, c->eps);
        if (c->fused) { /* Phi-3's qkv_proj: q, then k and v into the caches */
            linear_forward(m, s->fused, s->xn, peft__w_of(m, l, PEFT_MOD_Q), NULL, 1, D, qd + 2 * kvd,
                           view(s, &lv, l, PEFT_MOD_Q), s->xa, s->tmp);
            float *parts[3] = {s->q, kc + (size_t)pos * kvd, vc + (size_t)pos * kvd};
            peft__fused_split(m, s->fused, parts, (const int[3]){qd, kvd, kvd}, 3, 1, 0);
        } else {
            linear_forward(m, s->q, s->xn, peft__w_of(m, l, PEFT_MOD_Q), peft__bias_of(m, l, PEFT_MOD_Q), 1, D, qd,
                           view(s, &lv, l, PEFT_MOD_Q), s->xa, s->tmp);
            linear_forward(m, kc + (size_t)pos * kvd, s->xn, peft__w_of(m, l, PEFT_MOD_K),
                           peft__bias_of(m, l, PEFT_MOD_K), 1, D, kvd, view(s, &lv, l, PEFT_MOD_K), s->xa, s->tmp);
            linear_forward(m, vc + (size_t)pos * kvd, s->xn, peft__w_of(m, l, PEFT_MOD_V),
                           peft__bias_of(m, l, PEFT_MOD_V), 1, D, kvd, view(s, &lv, l, PEFT_MOD_V), s->xa, s->tmp);
        }
        float *kp = kc + (size_t)pos * kvd;
        const float *qn = c->qk_norm ? peft__norm_weight(m, l, PEFT__NORM_Q) : NULL;
        const float *kn = c->qk_norm ? peft__norm_weight(m, l, PEFT__NORM_K) : NULL;
        for (int h = 0; qn && h < H; h++) /* Qwen3, Gemma 3: each head normalised (in place) */
            rmsnorm_forward(NULL, s->q + h * hd, &rstd, s->q + h * hd, qn, 1, hd, c->eps);
        for (int h = 0; kn && h < Hk; h++)
            rmsnorm_forward(NULL, kp + h * hd, &rstd, kp + h * hd, kn, 1, hd, c->eps);
        peft_config local;
        const peft_config *rc = rope_config_of(c, l, &local);
        if (peft__layer_rope(c, l)) { /* SmolLM3's NoPE layers: no rotation */
            rope_at(s->q, H, pos, rope_len, rc);
            rope_at(kp, Hk, pos, rope_len, rc);
        }
        const int win = peft__layer_window(c, l), j0 = win > 0 && pos - win + 1 > 0 ? pos - win + 1 : 0;
        for (int h = 0; h < H; h++) {
            int g = h / (H / Hk);
            const float *qh = s->q + h * hd;
            float mx = -INFINITY;
            for (int j = j0; j <= pos; j++) {
                const float *kj = kc + (size_t)j * kvd + g * hd;
                float d = 0;
                for (int e = 0; e < hd; e++)
                    d += qh[e] * kj[e];
                s->scores[j] = cap > 0.0f ? cap * peft__tanhf(d * scale / cap) : d * scale; /* Gemma 2's cap */
                mx = s->scores[j] > mx ? s->scores[j] : mx;
            }
            float sum = 0;
            for (int j = j0; j <= pos; j++) {
                s->scores[j] = expf(s->scores[j] - mx);
                sum += s->scores[j];
            }
            float *o = s->att + h * hd;
            memset(o, 0, (size_t)hd * sizeof *o);
            for (int j = j0; j <= pos; j++) {
                const float *vj = vc + (size_t)j * kvd + g * hd;
                float p = s->scores[j] / sum;
                for (int e = 0; e < hd; e++)
                    o[e] += p * vj[e];
            }
        }
        linear_forward(m, s->h, s->att, peft__w_of(m, l, PEFT_MOD_O), peft__bias_of(m, l, PEFT_MOD_O), 1, qd, D,
                       view(s, &lv, l, PEFT_MOD_O), s->xa, s->tmp);
        if (c->gemma) /* Gemma 3: the attention and MLP outputs normalised before their residuals */
            rmsnorm_forward(NULL, s->h, &rstd, s->h, peft__norm_weight(m, l, PEFT__NORM_ATTN_OUT), 1, D, c->eps);
        for (int i = 0; c->res_mul != 1.0f && i < D; i++) /* Granite: scaled */
            s->h[i] *= c->res_mul;
        for (int i = 0; i < D; i++)
            s->h[i] += s->x[i];
        rmsnorm_forward(NULL, s->xn, &rstd, s->h, peft__norm_weight(m, l, PEFT__NORM_MLP), 1, D, c->eps);
        if (c->fused) { /* gate_up_proj: gate, then up */
            linear_forward(m, s->fused, s->xn, peft__w_of(m, l, PEFT_MOD_GATE), NULL, 1, D, 2 * F,
                           view(s, &lv, l, PEFT_MOD_GATE), s->xa, s->tmp);
            gated_forward(NULL, c->gemma, s->act, s->fused, s->fused + F, 1, F);
        } else {
            linear_forward(m, s->g, s->xn, peft__w_of(m, l, PEFT_MOD_GATE), peft__bias_of(m, l, PEFT_MOD_GATE), 1, D,
                           F, view(s, &lv, l, PEFT_MOD_GATE), s->xa, s->tmp);
            linear_forward(m, s->u, s->xn, peft__w_of(m, l, PEFT_MOD_UP), peft__bias_of(m, l, PEFT_MOD_UP), 1, D, F,
                           view(s, &lv, l, PEFT_MOD_UP), s->xa, s->tmp);
            gated_forward(NULL, c->gemma, s->act, s->g, s->u, 1, F);
        }
        linear_forward(m, s->x, s->act, peft__w_of(m, l, PEFT_MOD_DOWN), peft__bias_of(m, l, PEFT_MOD_DOWN), 1, F, D,
                       view(s, &lv, l, PEFT_MOD_DOWN), s->xa, s->tmp);
        if (c->gemma)
            rmsnorm_forward(NULL, s->x, &rstd, s->x, peft__norm_weight(m, l, PEFT__NORM_MLP_OUT), 1, D, c->eps);
        for (int i = 0; c->res_mul != 1.0f && i < D; i++)
            s->x[i] *= c->res_mul;
        for (int i = 0; i < D; i++)
            s->x[i] += s->h[i];
    }
    s->pos++;
}

int peft_session_feed(peft_session *s, const int32_t *tokens, int32_t n, float *logits)
{
    if (!s || (!tokens && n > 0) || n < 0)
        return peft__fail(PEFT_EINVAL, "peft_session_feed: bad arguments");
    peft_model *m = s->m;
    if (m->lora && m->lora->max_rank > s->rank)
        return peft__fail(PEFT_ESTATE, "peft_session_feed: the adapter changed since the session was created");
    int P = s->pos == 0 ? peft__prompt_len(m) : 0; /* a soft prompt goes first (a feed of no tokens
                                                        puts it alone) */
    if (P > s->virt_cap)
        return peft__fail(PEFT_ESTATE, "peft_session_feed: the adapter changed since the session was created");
    if (n > s->max_len - s->virt_cap - (s->pos - s->virt))
        return peft__fail(PEFT_ERANGE, "peft_session_feed: %d more positions exceed the session's %d", n,
                          s->max_len - s->virt_cap);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab)
            return peft__fail(PEFT_EINVAL, "peft_session_feed: token %d outside the vocabulary", tokens[i]);
    peft__norms_sync(m);
    int rope_len = s->pos + P + n;
    for (int i = 0; i < P; i++)
        feed_one(s, 0, m->lora->params + (size_t)i * m->cfg.dim, rope_len);
    s->virt += P;
    for (int32_t i = 0; i < n; i++)
        feed_one(s, tokens[i], NULL, rope_len);
    if (logits) {
        if (s->pos == 0)
            return peft__fail(PEFT_ESTATE, "peft_session_feed: no position to predict from");
        float rstd;
        rmsnorm_forward(NULL, s->xn, &rstd, s->x, peft__norm_weight(m, m->cfg.n_layers, 0), 1, m->cfg.dim, m->cfg.eps);
        for (int i = 0; m->cfg.logit_mul != 1.0f && i < m->cfg.dim; i++) /* Granite's logits_scaling */
            s->xn[i] *= m->cfg.logit_mul;
        int code = peft__head_logits(m, s->xn, 1, logits);
        if (!code && m->cfg.final_softcap > 0.0f) /* Gemma 2 */
            peft__softcap(logits, m->cfg.vocab, m->cfg.final_softcap);
        return code;
    }
    return PEFT_OK;
}
