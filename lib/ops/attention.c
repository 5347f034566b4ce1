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
 * in backward, the values) of its kv head into a (hd, T) scratch, so that every inner loop
 * below runs over contiguous key positions j and vectorises: a row of scores is
 * sum_d q[d] * Kt[d][j0..i]; in backward, dKt[d][j] += q[d] ds[j] and dVt[d][j] += dout[d] p[j].
 * Nothing of size T x T exists; a task's scratch is (4 hd + 4) T floats.
 */
struct att_args {
    float *out, *lse, *dq, *dk, *dv, *scratch;
    const float *q, *k, *v, *dout, *o, *lse_in;
    const int32_t *pos;
    int B, T, H, Hkv, hd, window, prefix;
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

size_t attention_scratch_floats(int B, int T, int Hkv, int hd)
{
    return (size_t)B * (size_t)Hkv * (4 * (size_t)hd + 4) * (size_t)T;
}

static float *task_scratch(const struct att_args *a, int32_t task)
{
    return a->scratch + (size_t)task * (4 * (size_t)a->hd + 4) * (size_t)a->T;
}

/* xt (hd, T) <- rows x[b*T + j][g*hd .. g*hd + hd) of a (B*T, stride) matrix */
static void transpose_in(float *xt, const float *x, int64_t stride, int b, int g, int T, int hd)
{
    for (int j = 0; j < T; j++) {
        const float *row = x + ((int64_t)b * T + j) * stride + (int64_t)g * hd;
        for (int d = 0; d < hd; d++)
            xt[(int64_t)d * T + j] = row[d];
    }
}

/* s[j] = scale * sum_d q[d] xt[d][j] for j in [j0, j1) */
ATT_CLONES static void scores(float *s, const float *q, const float *xt, int T, int hd, int j0, int j1, float scale)
{
    for (int j = j0; j < j1; j++)
        s[j] = 0.0f;
    for (int d = 0; d < hd; d++) {
        const float *x = xt + (int64_t)d * T;
        float qd = q[d];
        for (int j = j0; j < j1; j++)
            s[j] += qd * x[j];
    }
    for (int j = j0; j < j1; j++)
        s[j] *= scale;
}

/* o[d] += sum_j w[j] x[j][d] over the rows of a (B*T, stride) matrix (x already offset) */
ATT_CLONES static void weighted_rows(float *o, const float *w, const float *x, int64_t stride, int j0, int j1, int hd)
{
    for (int j = j0; j < j1; j++) {
        const float *xj = x + (int64_t)j * stride;
        float wj = w[j];
        for (int d = 0; d < hd; d++)
            o[d] += wj * xj[d];
    }
}

/* acc[d][j] += u[d] * w[j] for j in [j0, j1) */
ATT_CLONES static void outer_add(float *acc, const float *u, const float *w, int T, int hd, int j0, int j1)
{
    for (int d = 0; d < hd; d++) {
        float *r = acc + (int64_t)d * T;
        float ud = u[d];
        for (int j = j0; j < j1; j++)
            r[j] += ud * w[j];
    }
}

/* task = b * Hkv + g: every query head of kv head g */
PEFT_VEC_CLONES static void fwd_task(void *vp, int32_t task)
{
    const struct att_args *a = vp;
    int b = task / a->Hkv, g = task % a->Hkv, hd = a->hd, T = a->T, rep = a->H / a->Hkv;
    int64_t qs = (int64_t)a->H * hd, ks = (int64_t)a->Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *kt = task_scratch(a, task), *p = kt + (int64_t)hd * T;
    transpose_in(kt, a->k, ks, b, g, T, hd);
    const float *vb = a->v + (int64_t)b * T * ks + (int64_t)g * hd;
    for (int h = g * rep; h < (g + 1) * rep; h++)
        for (int i = 0; i < T; i++) {
            const float *qi = a->q + ((int64_t)b * T + i) * qs + (int64_t)h * hd;
            float *oi = a->out + ((int64_t)b * T + i) * qs + (int64_t)h * hd;
            int r[4];
            key_ranges(a, b, i, r);
            float mx = -INFINITY, sum = 0;
            for (int s = 0; s < 4; s += 2) {
                scores(p, qi, kt, T, hd, r[s], r[s + 1], scale);
                for (int j = r[s]; j < r[s + 1]; j++)
                    mx = p[j] > mx ? p[j] : mx;
            }
            for (int s = 0; s < 4; s += 2)
                for (int j = r[s]; j < r[s + 1]; j++) {
                    p[j] = peft__expf(p[j] - mx);
                    sum += p[j];
                }
            float inv = 1.0f / sum;
            memset(oi, 0, (size_t)hd * sizeof *oi);
            for (int s = 0; s < 4; s += 2) {
                for (int j = r[s]; j < r[s + 1]; j++)
                    p[j] *= inv;
                weighted_rows(oi, p, vb, ks, r[s], r[s + 1], hd);
            }
            a->lse[((int64_t)b * a->H + h) * T + i] = mx + logf(sum);
        }
}

// out (B*T, H*hd), lse (B,H,T) <- q (B*T, H*hd), k, v (B*T, Hkv*hd); scratch: attention_scratch_floats
void attention_forward(void *pool, float *out, float *lse, float *scratch, const float *q,
                       const float *k, const float *v, const int32_t *pos, int B, int T, int H,
                       int Hkv, int hd, int window, int prefix)
{
    struct att_args a = {.out = out, .lse = lse, .scratch = scratch, .q = q, .k = k, .v = v, .pos = pos,
                         .B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd, .window = window, .prefix = prefix};
    peft__pool_for(pool, B * Hkv, fwd_task, &a);
}

/* task = b * Hkv + g: owns dk, dv of kv head g and dq of its query heads */
PEFT_VEC_CLONES static void bwd_task(void *vp, int32_t task)
{
    const struct att_args *a = vp;
    int b = task / a->Hkv, g = task % a->Hkv, hd = a->hd, T = a->T, rep = a->H / a->Hkv;
    int64_t qs = (int64_t)a->H * hd, ks = (int64_t)a->Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *kt = task_scratch(a, task), *vt = kt + (int64_t)hd * T, *dkt = vt + (int64_t)hd * T;
    float *dvt = dkt + (int64_t)hd * T, *p = dvt + (int64_t)hd * T, *dp = p + T;
    transpose_in(kt, a->k, ks, b, g, T, hd);
    transpose_in(vt, a->v, ks, b, g, T, hd);
    memset(dkt, 0, 2 * (size_t)hd * (size_t)T * sizeof *dkt);
    for (int h = g * rep; h < (g + 1) * rep; h++)
        for (int i = 0; i < T; i++) {
            int64_t qo = ((int64_t)b * T + i) * qs + (int64_t)h * hd;
            const float *qi = a->q + qo, *doi = a->dout + qo, *oi = a->o + qo;
            float lse = a->lse_in[((int64_t)b * a->H + h) * T + i];
            float D = 0;
            for (int d = 0; d < hd; d++)
                D += doi[d] * oi[d];
            int r[4];
            key_ranges(a, b, i, r);
            memset(a->dq + qo, 0, (size_t)hd * sizeof(float));
            for (int s = 0; s < 4; s += 2) {
                int j0 = r[s], j1 = r[s + 1];
                scores(p, qi, kt, T, hd, j0, j1, scale);
                for (int j = j0; j < j1; j++)
                    p[j] = peft__expf(p[j] - lse);
                scores(dp, doi, vt, T, hd, j0, j1, 1.0f);
                for (int j = j0; j < j1; j++)
                    dp[j] = p[j] * (dp[j] - D) * scale; /* ds */
                weighted_rows(a->dq + qo, dp, a->k + (int64_t)b * T * ks + (int64_t)g * hd, ks, j0, j1, hd);
                outer_add(dkt, qi, dp, T, hd, j0, j1);
                outer_add(dvt, doi, p, T, hd, j0, j1);
            }
        }
    for (int j = 0; j < T; j++) {
        float *dkj = a->dk + ((int64_t)b * T + j) * ks + (int64_t)g * hd;
        float *dvj = a->dv + ((int64_t)b * T + j) * ks + (int64_t)g * hd;
        for (int d = 0; d < hd; d++) {
            dkj[d] = dkt[(int64_t)d * T + j];
            dvj[d] = dvt[(int64_t)d * T + j];
        }
    }
}

void attention_backward(void *pool, float *dq, float *dk, float *dv, float *scratch, const float *dout,
                        const float *q, const float *k, const float *v, const float *out,
                        const float *lse, const int32_t *pos, int B, int T, int H, int Hkv,
                        int hd, int window, int prefix)
{
    struct att_args a = {.dq = dq, .dk = dk, .dv = dv, .scratch = scratch, .dout = dout, .q = q, .k = k, .v = v,
                         .pos = pos, .o = out, .lse_in = lse, .B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd,
                         .window = window, .prefix = prefix};
    peft__pool_for(pool, B * Hkv, bwd_task, &a);
}
