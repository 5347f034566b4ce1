/*
 * Causal grouped-query attention, scale 1/sqrt(hd). The forward keeps only
 * the output and the log-sum-exp of each query row; the backward recomputes
 * the probabilities row by row, so no T x T matrix is ever stored.
 */
#include <math.h>
#include <string.h>

#include "../internal.h"
#include "ops.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__) /* TSan cannot run ifunc resolvers during relocation */
#define ATT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ATT_CLONES
#endif

/*
 * Layout of the work: one task per (sequence b, kv head g). The task transposes the keys (and,
 * in backward, the values) of its kv head into a scratch of (hd, 16) panels, one per 16 key
 * positions (T rounded up to tp, a multiple of 16, the pad zeroed; a panel is contiguous, where
 * rows of tp floats put every d of a column on one cache set once tp reached 1024), and takes
 * its query rows QB at a time: a block of scores is
 * S (QB, j) = Q (QB, hd) Kt (hd, j), computed 16 key positions at a time in registers, so
 * each key is loaded once per block instead of once per row; the weighted sums and, in
 * backward, dKt[d][j] += sum_r q_r[d] ds_r[j] are blocked the same way. A row's probabilities
 * are zero outside its own key ranges, and every sum runs in the order of the row-by-row
 * loops (over d, then j increasing, then rows in order). Nothing of size T x T exists; a
 * task's scratch is attention_task_floats.
 */
#define QB 8

typedef float v16 __attribute__((vector_size(64), aligned(4)));

struct att_args {
    float *out, *lse, *dq, *dk, *dv, *scratch;
    const float *q, *k, *v, *dout, *o, *lse_in;
    const int32_t *pos;
    int B, T, H, Hkv, hd, window, prefix;
    float softcap; /* > 0: scores soft-capped, cap tanh(s / cap) (Gemma 2) */
};

/* The key rows query row i of sequence b attends to: [r[2], r[3]) = its document up to itself,
   and [r[0], r[1]) = the part of a shared prefix (a soft prompt, the first `prefix` rows, at
   positions 0 .. prefix - 1) outside that range; both within the sliding window, by position. */
static void key_ranges(const struct att_args *a, int b, int i, int r[4])
{
    int pi = a->pos ? a->pos[(int64_t)b * a->T + i] : i;
    int j0 = a->pos ? i - pi + (i >= a->prefix ? a->prefix : 0) : 0;
    if (a->window > 0 && j0 < i - a->window + 1)
        j0 = i - a->window + 1;
    r[0] = a->window > 0 && pi - a->window + 1 > 0 ? pi - a->window + 1 : 0;
    r[1] = a->prefix < j0 ? a->prefix : j0;
    if (r[1] < r[0])
        r[1] = r[0];
    r[2] = j0;
    r[3] = i + 1;
}

static int pad16(int n)
{
    return (n + 15) & ~15;
}

/* floats from one probability row to the next: T padded, plus 16 (rows of a power of two
   floats would share cache sets) */
static int prow(int T)
{
    return pad16(T) + 16;
}

/* element (d, j) of a (hd, 16)-panel matrix */
static inline int64_t pan(int d, int j, int hd)
{
    return (int64_t)(j >> 4) * hd * 16 + d * 16 + (j & 15);
}

static size_t attention_task_floats(int T, int hd)
{
    return 4 * (size_t)hd * (size_t)pad16(T) + 2 * QB * (size_t)prow(T) + 2 * (size_t)QB * (size_t)hd + (size_t)hd;
}

size_t attention_scratch_floats(int B, int T, int Hkv, int hd)
{
    return (size_t)B * (size_t)Hkv * attention_task_floats(T, hd);
}

static float *task_scratch(const struct att_args *a, int32_t task)
{
    return a->scratch + (size_t)task * attention_task_floats(a->T, a->hd);
}

/* xt (hd, tp) in panels <- rows x[b*T + j][g*hd .. g*hd + hd) of a (B*T, stride) matrix,
   columns T..tp zero */
static void transpose_in(float *xt, const float *x, int64_t stride, int b, int g, int T, int hd)
{
    for (int j = 0; j < T; j++) {
        const float *row = x + ((int64_t)b * T + j) * stride + (int64_t)g * hd;
        for (int d = 0; d < hd; d++)
            xt[pan(d, j, hd)] = row[d];
    }
    for (int j = T; j < pad16(T); j++)
        for (int d = 0; d < hd; d++)
            xt[pan(d, j, hd)] = 0.0f;
}

/* xt[d * QB + k] <- row k of the block (zero for k >= nb): rows at x + k * stride */
static void gather_rows(float *xt, const float *x, int64_t stride, int nb, int hd)
{
    for (int d = 0; d < hd; d++)
        for (int k = 0; k < QB; k++)
            xt[d * QB + k] = k < nb ? x[k * stride + d] : 0.0f;
}

/* A block of query rows i0 .. i0 + nb - 1 of head h: their key ranges r, the hull [lo, hi) of
   them (and [lo16, hi16), rounded out to panels), the offset of row i0 in q, out, dout, and
   the block's query rows gathered into qt */
struct block {
    int nb, r[QB][4], lo, hi, lo16, hi16;
    int64_t row0;
};

static void block_at(const struct att_args *a, int b, int h, int i0, struct block *k, float *qt)
{
    k->nb = a->T - i0 < QB ? a->T - i0 : QB;
    k->lo = a->T, k->hi = 0;
    for (int i = 0; i < k->nb; i++) {
        key_ranges(a, b, i0 + i, k->r[i]);
        int first = k->r[i][0] < k->r[i][1] ? k->r[i][0] : k->r[i][2];
        k->lo = first < k->lo ? first : k->lo;
        k->hi = k->r[i][3] > k->hi ? k->r[i][3] : k->hi;
    }
    k->lo16 = k->lo & ~15, k->hi16 = pad16(k->hi);
    k->row0 = ((int64_t)b * a->T + i0) * a->H * a->hd + (int64_t)h * a->hd;
    gather_rows(qt, a->q + k->row0, (int64_t)a->H * a->hd, k->nb, a->hd);
}

/* p_k[j] <- 0 for j in [j0, j1) outside row k's ranges r */
static void mask_row(float *p, const int r[4], int j0, int j1)
{
    for (int j = j0; j < r[0] && j < j1; j++)
        p[j] = 0.0f;
    for (int j = r[1] > j0 ? r[1] : j0; j < r[2]; j++)
        p[j] = 0.0f;
    for (int j = r[3]; j < j1; j++)
        p[j] = 0.0f;
}

/* The kernels below run over nv (1 or 2) vectors of 16 floats per broadcast value: two where
   they fit (fewer loads per multiply-add), one for the tail; always inlined, so that each call
   is compiled for its constant nv */
#define ATT_INLINE static inline __attribute__((always_inline))

/* scores of key positions j .. j + 16 nv */
ATT_INLINE void scores_cols(float *s, int ps, const float *qt, const float *xt, int hd, int j, float scale,
                            int nv)
{
    v16 acc[2][QB];
    for (int v = 0; v < nv; v++)
        for (int k = 0; k < QB; k++)
            acc[v][k] = (v16){0};
    for (int d = 0; d < hd; d++) {
        v16 x[2];
        for (int v = 0; v < nv; v++)
            memcpy(&x[v], xt + pan(d, j + 16 * v, hd), sizeof x[v]);
        for (int k = 0; k < QB; k++)
            for (int v = 0; v < nv; v++)
                acc[v][k] += qt[d * QB + k] * x[v];
    }
    for (int k = 0; k < QB; k++)
        for (int v = 0; v < nv; v++) {
            v16 t = acc[v][k] * scale;
            memcpy(s + (int64_t)k * ps + j + 16 * v, &t, sizeof t);
        }
}

/* s_k[j] = scale * sum_d qt[d][k] xt[d][j] for the QB rows k (s_k at s + k ps), j in [j0, j1)
   (j0, j1 multiples of 16 within tp; xt in panels) */
ATT_CLONES static void scores_block(float *s, int ps, const float *qt, const float *xt, int hd, int j0, int j1,
                                    float scale)
{
    int j = j0;
    for (; j + 32 <= j1; j += 32)
        scores_cols(s, ps, qt, xt, hd, j, scale, 2);
    for (; j < j1; j += 16)
        scores_cols(s, ps, qt, xt, hd, j, scale, 1);
}

/* weighted sums of the pieces d0 .. d0 + 16 nv of the rows of x */
ATT_INLINE void weighted_cols(float *const *o, const float *w, int ps, const float *x, int64_t stride, int j0,
                              int j1, int d0, int nv)
{
    v16 acc[2][QB];
    for (int v = 0; v < nv; v++)
        for (int k = 0; k < QB; k++)
            acc[v][k] = (v16){0};
    for (int j = j0; j < j1; j++) {
        v16 xj[2];
        for (int v = 0; v < nv; v++)
            memcpy(&xj[v], x + (int64_t)j * stride + d0 + 16 * v, sizeof xj[v]);
        for (int k = 0; k < QB; k++)
            for (int v = 0; v < nv; v++)
                acc[v][k] += w[(int64_t)k * ps + j] * xj[v];
    }
    for (int k = 0; k < QB; k++)
        for (int v = 0; v < nv; v++)
            memcpy(o[k] + d0 + 16 * v, &acc[v][k], sizeof acc[v][k]);
}

/* o_k[d] = sum_{j in [j0, j1)} w_k[j] x[j][d] (w_k at w + k ps; x rows at stride, already offset) */
ATT_CLONES static void weighted_block(float *const *o, const float *w, int ps, const float *x, int64_t stride,
                                      int j0, int j1, int hd)
{
    int d0 = 0;
    for (; d0 + 32 <= hd; d0 += 32)
        weighted_cols(o, w, ps, x, stride, j0, j1, d0, 2);
    for (; d0 + 16 <= hd; d0 += 16)
        weighted_cols(o, w, ps, x, stride, j0, j1, d0, 1);
    for (int k = 0; k < QB; k++)
        for (int d = d0; d < hd; d++) {
            float sum = 0.0f;
            for (int j = j0; j < j1; j++)
                sum += w[(int64_t)k * ps + j] * x[(int64_t)j * stride + d];
            o[k][d] = sum;
        }
}

/* the key/value gradient panels of positions j .. j + 16 nv */
ATT_INLINE void outer_cols(float *acc, int ps, const float *ut, const float *w, int hd, int j, int nv)
{
    v16 wk[2][QB];
    for (int k = 0; k < QB; k++)
        for (int v = 0; v < nv; v++)
            memcpy(&wk[v][k], w + (int64_t)k * ps + j + 16 * v, sizeof wk[v][k]);
    for (int d = 0; d < hd; d++) {
        v16 t[2];
        for (int v = 0; v < nv; v++)
            memcpy(&t[v], acc + pan(d, j + 16 * v, hd), sizeof t[v]);
        for (int k = 0; k < QB; k++)
            for (int v = 0; v < nv; v++)
                t[v] += ut[d * QB + k] * wk[v][k];
        for (int v = 0; v < nv; v++)
            memcpy(acc + pan(d, j + 16 * v, hd), &t[v], sizeof t[v]);
    }
}

/* acc[d][j] += sum_k ut[d][k] w_k[j] (acc in panels, w_k at w + k ps), rows k in order, j in
   [j0, j1) */
ATT_CLONES static void outer_block(float *acc, int ps, const float *ut, const float *w, int hd, int j0, int j1)
{
    int j = j0;
    for (; j + 32 <= j1; j += 32)
        outer_cols(acc, ps, ut, w, hd, j, 2);
    for (; j < j1; j += 16)
        outer_cols(acc, ps, ut, w, hd, j, 1);
}

/* task = b * Hkv + g: every query head of kv head g */
PEFT_VEC_CLONES static void fwd_task(void *vp, int32_t task)
{
    const struct att_args *a = vp;
    int b = task / a->Hkv, g = task % a->Hkv, hd = a->hd, T = a->T, rep = a->H / a->Hkv, tp = pad16(T), ps = prow(T);
    int64_t qs = (int64_t)a->H * hd, ks = (int64_t)a->Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *kt = task_scratch(a, task), *p = kt + (int64_t)hd * tp, *qt = p + (int64_t)QB * ps;
    float *dummy = qt + 2 * QB * hd;
    transpose_in(kt, a->k, ks, b, g, T, hd);
    const float *vb = a->v + (int64_t)b * T * ks + (int64_t)g * hd;
    for (int h = g * rep; h < (g + 1) * rep; h++)
        for (int i0 = 0; i0 < T; i0 += QB) {
            struct block bk;
            block_at(a, b, h, i0, &bk, qt);
            int nb = bk.nb, lo16 = bk.lo16, hi16 = bk.hi16;
            int64_t row0 = bk.row0;
            scores_block(p, ps, qt, kt, hd, lo16, hi16, scale);
            float *o[QB];
            for (int k = 0; k < QB; k++) {
                float *pk = p + (int64_t)k * ps;
                if (k >= nb) {
                    memset(pk + lo16, 0, (size_t)(hi16 - lo16) * sizeof *pk);
                    o[k] = dummy;
                    continue;
                }
                const int *rk = bk.r[k];
                float mx = -INFINITY, sum = 0;
                for (int s = 0; a->softcap > 0.0f && s < 4; s += 2)
                    peft__softcap(pk + rk[s], rk[s + 1] - rk[s], a->softcap);
                for (int s = 0; s < 4; s += 2)
                    mx = peft__maxf(pk + rk[s], rk[s + 1] - rk[s], mx);
                for (int s = 0; s < 4; s += 2) {
                    for (int j = rk[s]; j < rk[s + 1]; j++)
                        pk[j] = peft__expf(pk[j] - mx);
                    sum += peft__sumf(pk + rk[s], rk[s + 1] - rk[s]);
                }
                float inv = 1.0f / sum;
                for (int s = 0; s < 4; s += 2)
                    for (int j = rk[s]; j < rk[s + 1]; j++)
                        pk[j] *= inv;
                mask_row(pk, rk, lo16, hi16);
                o[k] = a->out + row0 + k * qs;
                a->lse[((int64_t)b * a->H + h) * T + i0 + k] = mx + logf(sum);
            }
            weighted_block(o, p, ps, vb, ks, bk.lo, bk.hi, hd);
        }
}

// out (B*T, H*hd), lse (B,H,T) <- q (B*T, H*hd), k, v (B*T, Hkv*hd); scratch: attention_scratch_floats
void attention_forward(void *pool, float *out, float *lse, float *scratch, const float *q,
                       const float *k, const float *v, const int32_t *pos, int B, int T, int H,
                       int Hkv, int hd, int window, int prefix, float softcap)
{
    struct att_args a = {.out = out, .lse = lse, .scratch = scratch, .q = q, .k = k, .v = v, .pos = pos,
                         .B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd, .window = window, .prefix = prefix,
                         .softcap = softcap};
    peft__pool_for(pool, B * Hkv, fwd_task, &a);
}

/* task = b * Hkv + g: owns dk, dv of kv head g and dq of its query heads */
PEFT_VEC_CLONES static void bwd_task(void *vp, int32_t task)
{
    const struct att_args *a = vp;
    int b = task / a->Hkv, g = task % a->Hkv, hd = a->hd, T = a->T, rep = a->H / a->Hkv, tp = pad16(T), ps = prow(T);
    int64_t qs = (int64_t)a->H * hd, ks = (int64_t)a->Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *kt = task_scratch(a, task), *vt = kt + (int64_t)hd * tp, *dkt = vt + (int64_t)hd * tp;
    float *dvt = dkt + (int64_t)hd * tp, *p = dvt + (int64_t)hd * tp, *dp = p + (int64_t)QB * ps;
    float *qt = dp + (int64_t)QB * ps, *dt = qt + QB * hd, *dummy = dt + QB * hd;
    transpose_in(kt, a->k, ks, b, g, T, hd);
    transpose_in(vt, a->v, ks, b, g, T, hd);
    memset(dkt, 0, 2 * (size_t)hd * (size_t)tp * sizeof *dkt);
    const float *kb = a->k + (int64_t)b * T * ks + (int64_t)g * hd;
    for (int h = g * rep; h < (g + 1) * rep; h++)
        for (int i0 = 0; i0 < T; i0 += QB) {
            struct block bk;
            block_at(a, b, h, i0, &bk, qt);
            int nb = bk.nb, lo16 = bk.lo16, hi16 = bk.hi16;
            int64_t row0 = bk.row0;
            gather_rows(dt, a->dout + row0, qs, nb, hd);
            scores_block(p, ps, qt, kt, hd, lo16, hi16, scale);
            scores_block(dp, ps, dt, vt, hd, lo16, hi16, 1.0f);
            float *dq[QB];
            for (int k = 0; k < QB; k++) {
                float *pk = p + (int64_t)k * ps, *dpk = dp + (int64_t)k * ps;
                if (k >= nb) {
                    memset(pk + lo16, 0, (size_t)(hi16 - lo16) * sizeof *pk);
                    memset(dpk + lo16, 0, (size_t)(hi16 - lo16) * sizeof *dpk);
                    dq[k] = dummy;
                    continue;
                }
                const float *doi = a->dout + row0 + k * qs, *oi = a->o + row0 + k * qs;
                float lse = a->lse_in[((int64_t)b * a->H + h) * T + i0 + k], D = 0;
                for (int d = 0; d < hd; d++)
                    D += doi[d] * oi[d];
                const int *rk = bk.r[k];
                if (a->softcap > 0.0f) { /* through cap tanh(s / cap): times 1 - tanh^2 */
                    for (int s = 0; s < 4; s += 2)
                        for (int j = rk[s]; j < rk[s + 1]; j++) {
                            float t = peft__tanhf(pk[j] / a->softcap);
                            pk[j] = peft__expf(a->softcap * t - lse);
                            dpk[j] = pk[j] * (dpk[j] - D) * (1.0f - t * t) * scale;
                        }
                } else {
                    for (int s = 0; s < 4; s += 2)
                        for (int j = rk[s]; j < rk[s + 1]; j++) {
                            pk[j] = peft__expf(pk[j] - lse);
                            dpk[j] = pk[j] * (dpk[j] - D) * scale; /* ds */
                        }
                }
                mask_row(pk, rk, lo16, hi16);
                mask_row(dpk, rk, lo16, hi16);
                dq[k] = a->dq + row0 + k * qs;
            }
            weighted_block(dq, dp, ps, kb, ks, bk.lo, bk.hi, hd);
            outer_block(dkt, ps, qt, dp, hd, lo16, hi16);
            outer_block(dvt, ps, dt, p, hd, lo16, hi16);
        }
    for (int j = 0; j < T; j++) {
        float *dkj = a->dk + ((int64_t)b * T + j) * ks + (int64_t)g * hd;
        float *dvj = a->dv + ((int64_t)b * T + j) * ks + (int64_t)g * hd;
        for (int d = 0; d < hd; d++) {
            dkj[d] = dkt[pan(d, j, hd)];
            dvj[d] = dvt[pan(d, j, hd)];
        }
    }
}

void attention_backward(void *pool, float *dq, float *dk, float *dv, float *scratch, const float *dout,
                        const float *q, const float *k, const float *v, const float *out,
                        const float *lse, const int32_t *pos, int B, int T, int H, int Hkv,
                        int hd, int window, int prefix, float softcap)
{
    struct att_args a = {.dq = dq, .dk = dk, .dv = dv, .scratch = scratch, .dout = dout, .q = q, .k = k, .v = v,
                         .pos = pos, .o = out, .lse_in = lse, .B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd,
                         .window = window, .prefix = prefix, .softcap = softcap};
    peft__pool_for(pool, B * Hkv, bwd_task, &a);
}
