/*
 * Causal grouped-query attention, scale 1/sqrt(hd). The forward keeps only
 * the output and the log-sum-exp of each query row; the backward recomputes
 * the probabilities row by row, so no T x T matrix is ever stored.
 */
#include <math.h>
#include <string.h>

#include "../internal.h"
#include "ops.h"

struct att_args {
    float *out, *lse, *dq, *dk, *dv, *scratch;
    const float *q, *k, *v, *dout, *o, *lse_in;
    const int32_t *pos;
    int B, T, H, Hkv, hd;
};

static float dot(const float *a, const float *b, int n)
{
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++)
        s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* task = b * H + h */
static void fwd_task(void *vp, int32_t task)
{
    const struct att_args *a = vp;
    int b = task / a->H, h = task % a->H, g = h / (a->H / a->Hkv), hd = a->hd, T = a->T;
    int64_t qs = (int64_t)a->H * hd, ks = (int64_t)a->Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    float *p = a->scratch + (int64_t)task * T;
    for (int i = 0; i < T; i++) {
        const float *qi = a->q + ((int64_t)b * T + i) * qs + (int64_t)h * hd;
        int j0 = a->pos ? i - a->pos[(int64_t)b * T + i] : 0;
        float mx = -INFINITY;
        for (int j = j0; j <= i; j++) {
            p[j] = scale * dot(qi, a->k + ((int64_t)b * T + j) * ks + (int64_t)g * hd, hd);
            mx = p[j] > mx ? p[j] : mx;
        }
        float sum = 0;
        for (int j = j0; j <= i; j++) {
            p[j] = expf(p[j] - mx);
            sum += p[j];
        }
        float inv = 1.0f / sum;
        float *oi = a->out + ((int64_t)b * T + i) * qs + (int64_t)h * hd;
        memset(oi, 0, (size_t)hd * sizeof *oi);
        for (int j = j0; j <= i; j++) {
            const float *vj = a->v + ((int64_t)b * T + j) * ks + (int64_t)g * hd;
            float w = p[j] * inv;
            for (int d = 0; d < hd; d++)
                oi[d] += w * vj[d];
        }
        a->lse[((int64_t)b * a->H + h) * T + i] = mx + logf(sum);
    }
}

// out (B*T, H*hd), lse (B,H,T) <- q (B*T, H*hd), k, v (B*T, Hkv*hd); scratch (B,H,T)
void attention_forward(void *pool, float *out, float *lse, float *scratch, const float *q,
                       const float *k, const float *v, const int32_t *pos, int B, int T, int H,
                       int Hkv, int hd)
{
    struct att_args a = {.out = out, .lse = lse, .scratch = scratch, .q = q, .k = k, .v = v, .pos = pos,
                         .B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd};
    peft__pool_for(pool, B * H, fwd_task, &a);
}

/* task = b * Hkv + g: owns dk, dv of kv head g and dq of its query heads */
static void bwd_task(void *vp, int32_t task)
{
    const struct att_args *a = vp;
    int b = task / a->Hkv, g = task % a->Hkv, hd = a->hd, T = a->T, rep = a->H / a->Hkv;
    int64_t qs = (int64_t)a->H * hd, ks = (int64_t)a->Hkv * hd;
    float scale = 1.0f / sqrtf((float)hd);
    for (int j = 0; j < T; j++) {
        memset(a->dk + ((int64_t)b * T + j) * ks + (int64_t)g * hd, 0, (size_t)hd * sizeof(float));
        memset(a->dv + ((int64_t)b * T + j) * ks + (int64_t)g * hd, 0, (size_t)hd * sizeof(float));
    }
    for (int h = g * rep; h < (g + 1) * rep; h++) {
        for (int i = 0; i < T; i++) {
            int64_t qo = ((int64_t)b * T + i) * qs + (int64_t)h * hd;
            const float *qi = a->q + qo, *doi = a->dout + qo, *oi = a->o + qo;
            float *dqi = a->dq + qo;
            float lse = a->lse_in[((int64_t)b * a->H + h) * T + i];
            float D = dot(doi, oi, hd);
            memset(dqi, 0, (size_t)hd * sizeof *dqi);
            int j0 = a->pos ? i - a->pos[(int64_t)b * T + i] : 0;
            for (int j = j0; j <= i; j++) {
                int64_t ko = ((int64_t)b * T + j) * ks + (int64_t)g * hd;
                const float *kj = a->k + ko, *vj = a->v + ko;
                float p = expf(scale * dot(qi, kj, hd) - lse);
                float dp = dot(doi, vj, hd);
                float ds = p * (dp - D) * scale;
                float *dkj = a->dk + ko, *dvj = a->dv + ko;
                for (int d = 0; d < hd; d++) {
                    dvj[d] += p * doi[d];
                    dqi[d] += ds * kj[d];
                    dkj[d] += ds * qi[d];
                }
            }
        }
    }
}

void attention_backward(void *pool, float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *k, const float *v, const float *out,
                        const float *lse, const int32_t *pos, int B, int T, int H, int Hkv,
                        int hd)
{
    struct att_args a = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .q = q, .k = k, .v = v, .pos = pos,
                         .o = out, .lse_in = lse, .B = B, .T = T, .H = H, .Hkv = Hkv, .hd = hd};
    peft__pool_for(pool, B * Hkv, bwd_task, &a);
}
