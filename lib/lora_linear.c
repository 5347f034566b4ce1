/*
 * Linear layer with an optional LoRA branch, forward and backward:
 *   y = x W^T + s * (d(x) A^T) B^T,  d = inverted dropout (training only)
 * x (N,in), W (out,in) frozen, A (r,in), B (out,r).
 */
#include "lora_linear.h"

#include <math.h>
#include <string.h>

#include "ops/ops.h"

struct drop_args {
    float *dst;
    const float *src;
    int64_t n;
    uint64_t seed;
    float p;
    int accumulate;
};

#define DROP_CHUNK 4096

static void drop_task(void *vp, int32_t t)
{
    const struct drop_args *a = vp;
    int64_t i0 = (int64_t)t * DROP_CHUNK, i1 = i0 + DROP_CHUNK < a->n ? i0 + DROP_CHUNK : a->n;
    for (int64_t i = i0; i < i1; i++) {
        float v = a->src[i] * dropout_scale(a->seed, (uint64_t)i, a->p);
        a->dst[i] = a->accumulate ? a->dst[i] + v : v;
    }
}

static void apply_dropout(peft_model *m, float *dst, const float *src, int64_t n, uint64_t seed,
                          float p, int accumulate)
{
    struct drop_args a = {dst, src, n, seed, p, accumulate};
    peft__pool_for(m->pool, (int32_t)((n + DROP_CHUNK - 1) / DROP_CHUNK), drop_task, &a);
}

/* DoRA: norm (out) = || W + s B A || per output row (over the input dimension); row (in) is
   scratch for a row of a quantized W */
static void dora_norms(peft_model *m, const lora_view *lv, const peft_w *W, int in, int out, float *row)
{
    peft__gemm(m, 0, 0, out, in, lv->r, 1.0f, lv->B, lv->r, lv->A, in, 0.0f, lv->wtmp, in);
    for (int o = 0; o < out; o++) {
        const float *w = W->f ? W->f + (int64_t)o * in : row, *ba = lv->wtmp + (int64_t)o * in;
        if (!W->f)
            peft__w_rows(NULL, W, o, 1, row);
        double ss = 0;
        for (int i = 0; i < in; i++) {
            double v = (double)w[i] + (double)lv->scale * ba[i];
            ss += v * v;
        }
        lv->norm[o] = (float)sqrt(ss);
    }
}

/* LoHa: P1 = w1_a w1_b, P2 = w2_a w2_b into t + out*in and t + 2*out*in, and W + s P1 * P2 into dst */
void peft__loha_weight(peft_model *m, const lora_view *lv, const float *W, int in, int out, float *dst)
{
    int r = lv->r;
    size_t n = (size_t)out * (size_t)in;
    const float *w1a = lv->loha, *w1b = w1a + (size_t)out * r, *w2a = w1b + (size_t)r * in, *w2b = w2a + (size_t)out * r;
    float *t = lv->loha_tmp, *p1 = t + n, *p2 = t + 2 * n;
    peft__gemm(m, 0, 0, out, in, r, 1.0f, w1a, r, w1b, in, 0.0f, p1, in);
    peft__gemm(m, 0, 0, out, in, r, 1.0f, w2a, r, w2b, in, 0.0f, p2, in);
    for (size_t i = 0; i < n; i++)
        dst[i] = W[i] + lv->scale * p1[i] * p2[i];
}

/* LoKr: W2 = w2 or w2_a w2_b into t + 2*out*in; W + s kron(w1, W2) into dst */
static void lokr_weight(peft_model *m, const lora_view *lv, const float *W, int in, int out, float *dst)
{
    lokr_dims d;
    peft__lokr_dims(&d, in, out, lv->r);
    size_t n = (size_t)out * (size_t)in;
    const float *w1 = lv->loha, *w2 = w1 + (size_t)d.l * d.m;
    float *W2 = lv->loha_tmp + 2 * n;
    if (d.full)
        memcpy(W2, w2, (size_t)d.k * d.n * sizeof *W2);
    else
        peft__gemm(m, 0, 0, d.k, d.n, lv->r, 1.0f, w2, lv->r, w2 + (size_t)d.k * lv->r, d.n, 0.0f, W2, d.n);
    for (int a = 0; a < d.l; a++)
        for (int i = 0; i < d.k; i++) {
            int64_t row = (int64_t)(a * d.k + i) * in;
            for (int b = 0; b < d.m; b++) {
                float s = lv->scale * w1[a * d.m + b];
                const float *w2i = W2 + (size_t)i * d.n;
                for (int j = 0; j < d.n; j++)
                    dst[row + b * d.n + j] = W[row + b * d.n + j] + s * w2i[j];
            }
        }
}

/* LoKr backward from G = dy^T x: dw1[a][b] = s sum_ij G[ak+i][bn+j] W2[i][j],
   dW2[i][j] = s sum_ab G[ak+i][bn+j] w1[a][b], then w2_a, w2_b through W2 = w2_a w2_b */
static void lokr_backward(peft_model *m, const lora_view *lv, const float *dy, const float *x, int64_t N, int in,
                          int out)
{
    lokr_dims d;
    peft__lokr_dims(&d, in, out, lv->r);
    size_t n = (size_t)out * (size_t)in;
    const float *w1 = lv->loha, *w2 = w1 + (size_t)d.l * d.m;
    float *dw1 = lv->dloha, *dw2 = dw1 + (size_t)d.l * d.m;
    float *g = lv->loha_tmp, *dW2 = g + n, *W2 = g + 2 * n; /* W2 from the forward recompute */
    peft__gemm(m, 1, 0, out, in, N, 1.0f, dy, out, x, in, 0.0f, g, in);
    memset(dW2, 0, (size_t)d.k * d.n * sizeof *dW2);
    for (int a = 0; a < d.l; a++)
        for (int b = 0; b < d.m; b++) {
            double acc = 0;
            float w = lv->scale * w1[a * d.m + b];
            for (int i = 0; i < d.k; i++) {
                const float *gr = g + (int64_t)(a * d.k + i) * in + b * d.n, *w2i = W2 + (size_t)i * d.n;
                float *dw2i = dW2 + (size_t)i * d.n;
                for (int j = 0; j < d.n; j++) {
                    acc += (double)gr[j] * w2i[j];
                    dw2i[j] += w * gr[j];
                }
            }
            dw1[a * d.m + b] += (float)(lv->scale * acc);
        }
    if (d.full) {
        for (size_t i = 0; i < (size_t)d.k * d.n; i++)
            dw2[i] += dW2[i];
        return;
    }
    const float *w2a = w2, *w2b = w2 + (size_t)d.k * lv->r;
    float *dw2a = dw2, *dw2b = dw2 + (size_t)d.k * lv->r;
    peft__gemm(m, 0, 1, d.k, lv->r, d.n, 1.0f, dW2, d.n, w2b, d.n, 1.0f, dw2a, lv->r);
    peft__gemm(m, 1, 0, lv->r, d.n, d.k, 1.0f, w2a, lv->r, dW2, d.n, 1.0f, dw2b, d.n);
}

void peft__delta_weight(peft_model *m, const lora_view *lv, const float *W, int in, int out, float *dst)
{
    if (lv->lokr)
        lokr_weight(m, lv, W, in, out, dst);
    else
        peft__loha_weight(m, lv, W, in, out, dst);
}

/* LoHa backward: G = dy^T x; dP1 = s G * P2, dP2 = s G * P1; then the four factor gradients */
static void loha_backward(peft_model *m, const lora_view *lv, const float *dy, const float *x, int64_t N, int in,
                          int out)
{
    int r = lv->r;
    size_t n = (size_t)out * (size_t)in;
    const float *w1a = lv->loha, *w1b = w1a + (size_t)out * r, *w2a = w1b + (size_t)r * in, *w2b = w2a + (size_t)out * r;
    float *d1a = lv->dloha, *d1b = d1a + (size_t)out * r, *d2a = d1b + (size_t)r * in, *d2b = d2a + (size_t)out * r;
    float *g = lv->loha_tmp, *p1 = g + n, *p2 = g + 2 * n;
    peft__gemm(m, 1, 0, out, in, N, 1.0f, dy, out, x, in, 0.0f, g, in);
    for (size_t i = 0; i < n; i++) {
        float a = p1[i], b = p2[i], gi = lv->scale * g[i];
        p1[i] = gi * b;
        p2[i] = gi * a;
    }
    peft__gemm(m, 0, 1, out, r, in, 1.0f, p1, in, w1b, in, 1.0f, d1a, r);
    peft__gemm(m, 1, 0, r, in, out, 1.0f, w1a, r, p1, in, 1.0f, d1b, in);
    peft__gemm(m, 0, 1, out, r, in, 1.0f, p2, in, w2b, in, 1.0f, d2a, r);
    peft__gemm(m, 1, 0, r, in, out, 1.0f, w2a, r, p2, in, 1.0f, d2b, in);
}

// y (N,out) <- x (N,in), W (out,in); xa (N,r) saved for backward; tmp (N,in) scratch
/* W + delta W (LoHa, LoKr) into lv->loha_tmp; a quantized W is dequantized there first */
static void delta_weight(peft_model *m, const lora_view *lv, const peft_w *W, int in, int out)
{
    peft__delta_weight(m, lv, peft__w_dense(m, W, lv->loha_tmp), in, out, lv->loha_tmp);
}

/* y (N, out) += the module's bias b, if it has one */
static void add_bias(float *y, const float *b, int64_t N, int out)
{
    for (int64_t t = 0; b && t < N; t++)
        for (int o = 0; o < out; o++)
            y[t * out + o] += b[o];
}

/* y (N, out) = the module applied to x (N, in): W (out, in), its bias (out, or NULL) and the
   adapter lv (NULL: none). IA3 scaling the output scales the bias with it, as PEFT's
   base_layer(x) * l; DoRA's magnitude scales W x and leaves the bias, as PEFT's. */
void linear_forward(peft_model *m, float *y, const float *x, const peft_w *W, const float *bias, int64_t N,
                    int in, int out, const lora_view *lv, float *xa, float *tmp)
{
    if (lv && lv->ia3) {
        if (lv->ia3_ff) { /* y = W (x * l) */
            for (int64_t t = 0; t < N; t++)
                for (int i = 0; i < in; i++)
                    tmp[t * in + i] = x[t * in + i] * lv->ia3[i];
            peft__gemm_xwt(m, N, tmp, in, W, 0.0f, y, out);
            add_bias(y, bias, N, out);
        } else { /* y = (W x + b) * l */
            peft__gemm_xwt(m, N, x, in, W, 0.0f, y, out);
            add_bias(y, bias, N, out);
            if (lv->z)
                memcpy(lv->z, y, (size_t)N * out * sizeof *y);
            for (int64_t t = 0; t < N; t++)
                for (int o = 0; o < out; o++)
                    y[t * out + o] *= lv->ia3[o];
        }
        return;
    }
    if (lv && lv->loha) { /* y = x (W + delta W)^T */
        delta_weight(m, lv, W, in, out);
        peft__gemm(m, 0, 1, N, out, in, 1.0f, x, in, lv->loha_tmp, in, 0.0f, y, out);
        add_bias(y, bias, N, out);
        return;
    }
    if (!lv) {
        peft__gemm_xwt(m, N, x, in, W, 0.0f, y, out);
        add_bias(y, bias, N, out);
        return;
    }
    const float *xd = x;
    if (lv->dropout > 0.0f) {
        apply_dropout(m, tmp, x, N * in, lv->dropout_seed, lv->dropout, 0);
        xd = tmp;
    }
    peft__gemm(m, 0, 1, N, lv->r, in, 1.0f, xd, in, lv->A, lv->lda ? lv->lda : in, 0.0f, xa, lv->r);
    /* y = x W^T + s xa B^T */
    peft_gemm_term lora = {0, 1, lv->r, lv->scale, xa, lv->r, lv->B, lv->r};
    peft__gemm_w_sum(m, 1, N, x, in, W, &lora, 0.0f, y, out);
    if (lv->mag) {
        dora_norms(m, lv, W, in, out, tmp);
        if (lv->z)
            memcpy(lv->z, y, (size_t)N * out * sizeof *y);
        for (int64_t t = 0; t < N; t++)
            for (int o = 0; o < out; o++)
                y[t * out + o] *= lv->mag[o] / lv->norm[o];
    }
    add_bias(y, bias, N, out);
}

/*
 * dx (N,in) = (beta_dx ? dx : 0) + dy W + s * d'(dxa A)   (skipped if dx == NULL)
 * dB (out,r) += s * dy^T xa;  dxa = dy B;  dA (r,in) += s * dxa^T d(x)
 * dxa (N,r), tmp (N,in) are scratch.
 */
void linear_backward(peft_model *m, float *dx, float beta_dx, const float *dy, const float *x,
                     const peft_w *W, int64_t N, int in, int out, const lora_view *lv,
                     const float *xa, float *dxa, float *tmp)
{
    if (lv && lv->loha) {
        delta_weight(m, lv, W, in, out);
        if (dx)
            peft__gemm(m, 0, 0, N, in, out, 1.0f, dy, out, lv->loha_tmp, in, beta_dx, dx, in);
        if (lv->lokr)
            lokr_backward(m, lv, dy, x, N, in, out);
        else
            loha_backward(m, lv, dy, x, N, in, out);
        return;
    }
    if (lv && lv->ia3 && lv->ia3_ff) {
        /* y = W (x * l): d(x*l) = dy W; dl += sum_t d(x*l) * x; dx += d(x*l) * l */
        peft__gemm_dyw(m, N, dy, out, W, 0.0f, tmp, in);
        for (int i = 0; i < in; i++) {
            double s = 0;
            for (int64_t t = 0; t < N; t++)
                s += (double)tmp[t * in + i] * x[t * in + i];
            lv->dia3[i] += (float)s;
        }
        if (dx)
            for (int64_t t = 0; t < N; t++)
                for (int i = 0; i < in; i++)
                    dx[t * in + i] = (beta_dx != 0.0f ? dx[t * in + i] : 0.0f) + tmp[t * in + i] * lv->ia3[i];
        return;
    }
    if (lv && lv->ia3) {
        /* y = z * l: dl += sum_t dy z; dz = dy * l; dx = dz W */
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int64_t t = 0; t < N; t++)
                s += (double)dy[t * out + o] * lv->z[t * out + o];
            lv->dia3[o] += (float)s;
        }
        for (int64_t t = 0; t < N; t++)
            for (int o = 0; o < out; o++)
                lv->dz[t * out + o] = dy[t * out + o] * lv->ia3[o];
        if (dx)
            peft__gemm_dyw(m, N, lv->dz, out, W, beta_dx, dx, in);
        return;
    }
    if (lv && lv->mag) {
        /* y = g * z with g = mag / norm (norm constant): dmag += sum_t dy z / norm, dz = dy g */
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int64_t t = 0; t < N; t++)
                s += (double)dy[t * out + o] * lv->z[t * out + o];
            lv->dmag[o] += (float)(s / lv->norm[o]);
        }
        for (int64_t t = 0; t < N; t++)
            for (int o = 0; o < out; o++)
                lv->dz[t * out + o] = dy[t * out + o] * (lv->mag[o] / lv->norm[o]);
        dy = lv->dz;
    }
    if (!lv) {
        if (dx)
            peft__gemm_dyw(m, N, dy, out, W, beta_dx, dx, in);
        return;
    }
    int r = lv->r, lda = lv->lda ? lv->lda : in;
    if (lv->lam_b) {
        /* VeRA: M = dy^T xa is the gradient of B_eff = lam_b * B * lam_d; chain it into the vectors */
        peft__gemm(m, 1, 0, out, r, N, 1.0f, dy, out, xa, r, 0.0f, lv->dB, r);
        for (int o = 0; o < out; o++) {
            const float *mo = lv->dB + (int64_t)o * r, *bo = lv->vera_B + (int64_t)o * r;
            double acc = 0;
            for (int k = 0; k < r; k++)
                acc += (double)mo[k] * bo[k] * lv->lam_d[k];
            lv->dlam_b[o] += (float)acc;
        }
        for (int k = 0; k < r; k++) {
            double acc = 0;
            for (int o = 0; o < out; o++)
                acc += (double)lv->dB[(int64_t)o * r + k] * lv->vera_B[(int64_t)o * r + k] * lv->lam_b[o];
            lv->dlam_d[k] += (float)acc;
        }
    } else {
        peft__gemm(m, 1, 0, out, r, N, lv->scale, dy, out, xa, r, 1.0f, lv->dB, r);
    }
    peft__gemm(m, 0, 0, N, r, out, 1.0f, dy, out, lv->B, r, 0.0f, dxa, r);
    if (lv->dA) {
        const float *xd = x;
        if (lv->dropout > 0.0f) {
            apply_dropout(m, tmp, x, N * in, lv->dropout_seed, lv->dropout, 0);
            xd = tmp;
        }
        peft__gemm(m, 1, 0, r, in, N, lv->scale, dxa, r, xd, in, 1.0f, lv->dA, in);
    }
    if (!dx)
        return;
    if (lv->dropout > 0.0f) {
        peft__gemm_dyw(m, N, dy, out, W, beta_dx, dx, in);
        peft__gemm(m, 0, 0, N, in, r, lv->scale, dxa, r, lv->A, lda, 0.0f, tmp, in);
        apply_dropout(m, dx, tmp, N * in, lv->dropout_seed, lv->dropout, 1);
    } else { /* dx = dy W + s dxa A */
        peft_gemm_term lora = {0, 0, r, lv->scale, dxa, r, lv->A, lda};
        peft__gemm_w_sum(m, 0, N, dy, out, W, &lora, beta_dx, dx, in);
    }
}
