/* The step's buffers: planned and allocated once per batch shape, then reused. */
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "ops/ops.h"

struct plan_item {
    float **ptr;
    size_t n;
};

struct plan {
    struct plan_item *dyn;
    int n_dyn, cap_dyn;
    int oom;
};

static void want(struct plan *p, float **ptr, size_t n)
{
    if (p->n_dyn == p->cap_dyn) {
        int cap = p->cap_dyn ? 2 * p->cap_dyn : 64;
        struct plan_item *d = realloc(p->dyn, (size_t)cap * sizeof *d);
        if (!d) {
            p->oom = 1;
            return;
        }
        p->dyn = d;
        p->cap_dyn = cap;
    }
    p->dyn[p->n_dyn].ptr = ptr;
    p->dyn[p->n_dyn].n = n;
    p->n_dyn++;
}

void peft__workspace_free(workspace *ws)
{
    peft__free(ws->block);
    free(ws->acts);
    free(ws->labels);
    free(ws->pos);
    memset(ws, 0, sizeof *ws);
}

static size_t max3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* Allocate the workspace for B x T (train: activations of every layer and gradients). */
int peft__workspace_ensure(peft_model *m, int B, int T, int train)
{
    workspace *ws = &m->ws;
    const peft_config *c = &m->cfg;
    int n_store = train ? c->n_layers : 1;
    size_t lora_floats = 0;
    if (m->lora)
        lora_floats = m->lora->sum_rank;
    if (m->lora && (m->lora->use_dora || m->lora->method == PEFT_METHOD_IA3))
        lora_floats += m->lora->sum_out + 1; /* a DoRA attachment needs its own plan */
    size_t max_rank = m->lora ? (size_t)m->lora->max_rank : 1;
    int ckpt = train && m->act_ckpt;
    if (ws->block && ws->n_seq == B && ws->seq_len == T && ws->n_layers_stored >= n_store &&
        ws->lora_floats == lora_floats && ws->max_rank == max_rank && (ws->has_grads || !train) &&
        (ws->ckpt == ckpt || !train))
        return PEFT_OK;
    peft__workspace_free(ws);
    size_t N = (size_t)B * T, D = (size_t)c->dim, F = (size_t)c->ffn_dim;
    size_t Hq = (size_t)c->n_heads * c->head_dim, Hk = (size_t)c->n_kv_heads * c->head_dim;
    size_t r = m->lora ? (size_t)m->lora->max_rank : 1;
    lora_floats = m->lora ? m->lora->sum_rank : 0;
    ws->acts = calloc((size_t)n_store, sizeof *ws->acts);
    if (!ws->acts)
        return peft__fail(PEFT_ENOMEM, "workspace: out of memory");
    struct plan p = {0};
    for (int l = 0; l < n_store + ckpt; l++) {
        /* checkpointing: every layer's input, and the rest of one layer's activations */
        layer_acts *a = l < n_store ? &ws->acts[l] : &ws->ckpt_acts;
        if (l < n_store)
            want(&p, &a->x_in, N * D);
        if (ckpt && l < n_store)
            continue;
        want(&p, &a->xn1, N * D);
        want(&p, &a->rstd1, N);
        want(&p, &a->q, N * Hq);
        want(&p, &a->k, N * Hk);
        want(&p, &a->v, N * Hk);
        want(&p, &a->att, N * Hq);
        want(&p, &a->lse, N * (size_t)c->n_heads);
        want(&p, &a->h, N * D);
        want(&p, &a->xn2, N * D);
        want(&p, &a->rstd2, N);
        want(&p, &a->g, N * F);
        want(&p, &a->u, N * F);
        if (c->qk_norm) {
            want(&p, &a->q_pre, N * Hq);
            want(&p, &a->k_pre, N * Hk);
            want(&p, &a->rstd_q, N * (size_t)c->n_heads);
            want(&p, &a->rstd_k, N * (size_t)c->n_kv_heads);
        }
        if (c->gemma) {
            want(&p, &a->ao, N * D);
            want(&p, &a->rstd3, N);
            want(&p, &a->fo, N * D);
            want(&p, &a->rstd4, N);
        }
    }
    want(&p, &ws->res[0], N * D);
    want(&p, &ws->res[1], N * D);
    want(&p, &ws->x_final, N * D);
    want(&p, &ws->xnf, N * D);
    want(&p, &ws->rstdf, N);
    want(&p, &ws->xa, N * (lora_floats ? lora_floats : 1));
    if (m->lora && (m->lora->use_dora || m->lora->method == PEFT_METHOD_IA3))
        lora_floats += m->lora->sum_out + 1;
    want(&p, &ws->act, N * F);
    want(&p, &ws->att_scratch, attention_scratch_floats(B, T, c->n_kv_heads, c->head_dim));
    want(&p, &ws->tmp, N * max3(D, Hq, F));
    want(&p, &ws->logits, (size_t)peft__xent_chunk((int64_t)N, c->vocab) * (size_t)c->vocab);
    want(&p, &ws->row_loss, N);
    want(&p, &ws->rope_cos, (size_t)T * (size_t)c->head_dim / 2);
    want(&p, &ws->rope_sin, (size_t)T * (size_t)c->head_dim / 2);
    if (c->rope_local_theta > 0.0f) { /* Gemma 3's sliding layers */
        want(&p, &ws->rope_cos_l, (size_t)T * (size_t)c->head_dim / 2);
        want(&p, &ws->rope_sin_l, (size_t)T * (size_t)c->head_dim / 2);
    }
    if (c->fused) {
        size_t wq = (size_t)peft__mod_out(c, PEFT_MOD_Q), wg = (size_t)peft__mod_out(c, PEFT_MOD_GATE);
        want(&p, &ws->fused, N * (wq > wg ? wq : wg));
    }
    if (m->lora && (m->lora->use_dora || m->lora->method == PEFT_METHOD_IA3) && train) {
        want(&p, &ws->dora_z, N * m->lora->sum_out);
        want(&p, &ws->dora_dz, N * m->lora->max_out);
    }
    if (train) {
        want(&p, &ws->dx, N * D);
        want(&p, &ws->dxn, N * D);
        want(&p, &ws->dq, N * Hq);
        want(&p, &ws->dk, N * Hk);
        want(&p, &ws->dv, N * Hk);
        want(&p, &ws->datt, N * Hq);
        want(&p, &ws->dact, N * F);
        want(&p, &ws->dg, N * F);
        want(&p, &ws->du, N * F);
        want(&p, &ws->dxa, N * r);
    }
    if (p.oom) {
        free(p.dyn);
        peft__workspace_free(ws);
        return peft__fail(PEFT_ENOMEM, "workspace: out of memory");
    }
    size_t total = 0;
    for (int i = 0; i < p.n_dyn; i++) {
        size_t n = (p.dyn[i].n + 15) & ~(size_t)15; /* keep every piece 64-byte aligned */
        if (n > SIZE_MAX / 4 - total) {
            free(p.dyn);
            peft__workspace_free(ws);
            return peft__fail(PEFT_ENOMEM, "workspace: size overflow");
        }
        total += n;
    }
    float *block = peft__calloc(total, sizeof(float));
    if (!block) {
        free(p.dyn);
        peft__workspace_free(ws);
        return peft__fail(PEFT_ENOMEM, "workspace: cannot allocate %zu MiB for B=%d T=%d",
                          total * sizeof(float) >> 20, B, T);
    }
    size_t off = 0;
    for (int i = 0; i < p.n_dyn; i++) {
        *p.dyn[i].ptr = block + off;
        off += (p.dyn[i].n + 15) & ~(size_t)15;
    }
    free(p.dyn);
    ws->labels = malloc(N * sizeof *ws->labels);
    ws->pos = malloc(N * sizeof *ws->pos);
    ws->block = block;
    if (!ws->labels || !ws->pos) {
        peft__workspace_free(ws);
        return peft__fail(PEFT_ENOMEM, "workspace: out of memory");
    }
    ws->block = block;
    ws->bytes = total * sizeof(float);
    ws->n_seq = B;
    ws->seq_len = T;
    ws->n_layers_stored = n_store;
    ws->lora_floats = lora_floats;
    ws->max_rank = max_rank;
    ws->has_grads = train;
    ws->ckpt = ckpt;
    return PEFT_OK;
}
