/*
 * Frozen weight matrices kept as they are stored: float32, or ggml-quantized rows (Q8_0,
 * Q4_0, Q4_K, Q6_K) left in the mapped GGUF file. Products with a quantized matrix
 * dequantize it a panel of rows at a time into a small buffer (in parallel) and run the
 * float GEMM on the panel, so a 4-bit base costs 4-bit memory, not float32.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model.h"

/* ---- ggml block formats (little-endian) ---- */

static float h2f(const uint8_t *p) { return peft__f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes */
static void k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *mn = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

int peft__dequant(float *dst, const uint8_t *p, uint64_t n, uint32_t t)
{
    switch (t) {
    case PEFT_GG_F32: memcpy(dst, p, n * 4); return 0;
    case PEFT_GG_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = h2f(p + 2 * i);
        return 0;
    case PEFT_GG_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = peft__bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        return 0;
    case PEFT_GG_Q8_0: /* 32 weights: f16 d, 32 x int8 */
        for (uint64_t b = 0; b < n / 32; b++, p += 34) {
            float d = h2f(p);
            for (int j = 0; j < 32; j++)
                dst[b * 32 + (uint64_t)j] = d * (float)(int8_t)p[2 + j];
        }
        return 0;
    case PEFT_GG_Q4_0: /* 32 weights: f16 d, 16 bytes: low nibbles are 0..15, high 16..31 */
        for (uint64_t b = 0; b < n / 32; b++, p += 18) {
            float d = h2f(p);
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + (uint64_t)j] = (float)((p[2 + j] & 15) - 8) * d;
                dst[b * 32 + (uint64_t)j + 16] = (float)((p[2 + j] >> 4) - 8) * d;
            }
        }
        return 0;
    case PEFT_GG_Q4_K: /* 256 weights: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes */
        for (uint64_t b = 0; b < n / 256; b++, p += 144) {
            float d = h2f(p), dmin = h2f(p + 2);
            const uint8_t *sc = p + 4, *q = p + 16;
            float *y = dst + b * 256;
            for (int j = 0; j < 8; j += 2, q += 32) { /* 64 weights: 32 low nibbles, 32 high */
                uint8_t s1, m1, s2, m2;
                k_scale_min(j, sc, &s1, &m1);
                k_scale_min(j + 1, sc, &s2, &m2);
                float d1 = d * s1, o1 = dmin * m1, d2 = d * s2, o2 = dmin * m2;
                for (int l = 0; l < 32; l++)
                    *y++ = d1 * (float)(q[l] & 0xF) - o1;
                for (int l = 0; l < 32; l++)
                    *y++ = d2 * (float)(q[l] >> 4) - o2;
            }
        }
        return 0;
    case PEFT_GG_Q6_K: /* 256 weights: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, f16 d */
        for (uint64_t b = 0; b < n / 256; b++, p += 210) {
            const uint8_t *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            float d = h2f(p + 208);
            float *y = dst + b * 256;
            for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8)
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = (int)((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
                    int q2 = (int)((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
                    int q3 = (int)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                    int q4 = (int)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                    y[l] = d * sc[is] * (float)q1;
                    y[l + 32] = d * sc[is + 2] * (float)q2;
                    y[l + 64] = d * sc[is + 4] * (float)q3;
                    y[l + 96] = d * sc[is + 6] * (float)q4;
                }
        }
        return 0;
    default: return -1;
    }
}

static void f2h(uint8_t *p, float f)
{
    uint16_t h = peft__f32_to_f16(f);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* ---- K-quant encoders: any valid encoding decodes the same way; these fit each sub-block's
   scale (and offset) by least squares over a few placements of its grid, then round the
   sub-block scales to the super-block's 6- or 8-bit steps and requantize with them. ---- */

static int clampi(long v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : (int)v; }

/* x[0..n) ~ s L - o with L in 0..nmax and o >= 0 (ggml's Q4_K subtracts a non-negative minimum),
   the squared errors weighted by w = rms(x) + |x| so that large weights are kept closer:
   returns s, o in *o */
static float fit_offset(const float *x, int n, int nmax, float *o)
{
    float lo = x[0], hi = x[0], w[32];
    double ss = 0;
    for (int i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
        ss += (double)x[i] * x[i];
    }
    float rms = (float)sqrt(ss / n);
    for (int i = 0; i < n; i++)
        w[i] = rms + fabsf(x[i]);
    lo = lo > 0 ? 0 : lo;
    *o = -lo;
    if (!(hi > lo))
        return 0.0f;
    double best = INFINITY;
    float bs = (hi - lo) / (float)nmax, bo = -lo;
    for (int step = -10; step <= 10; step++) {
        float is = ((float)nmax + 0.1f * (float)step) / (hi - lo);
        double sw = 0, sl = 0, sx = 0, sll = 0, slx = 0;
        for (int i = 0; i < n; i++) {
            double l = clampi(lroundf(is * (x[i] - lo)), 0, nmax);
            sw += w[i], sl += w[i] * l, sx += w[i] * x[i], sll += w[i] * l * l, slx += w[i] * l * x[i];
        }
        double det = sw * sll - sl * sl, sc, b;
        if (det <= 0)
            continue;
        sc = (sw * slx - sl * sx) / det;
        b = (sll * sx - sl * slx) / det;
        if (b > 0) /* the offset may only lower the values */
            b = 0, sc = slx / sll;
        if (sc <= 0)
            continue;
        double err = 0;
        for (int i = 0; i < n; i++) {
            int l = clampi(lroundf((float)((x[i] - b) / sc)), 0, nmax);
            double e = sc * l + b - x[i];
            err += w[i] * e * e;
        }
        if (err < best)
            best = err, bs = (float)sc, bo = (float)-b;
    }
    *o = bo;
    return bs;
}

/* x[0..n) ~ s L with L in -32..31, the squared errors weighted by x^2: returns s (signed: the
   extreme maps near -32) */
static float fit_symmetric(const float *x, int n)
{
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax)
            amax = fabsf(x[i]), max = x[i];
    if (amax == 0)
        return 0.0f;
    double best = INFINITY;
    float bs = max / -32.0f;
    for (int step = -9; step <= 9; step++) {
        float is = -(32.0f + 0.1f * (float)step) / max;
        double slx = 0, sll = 0;
        for (int i = 0; i < n; i++) {
            double l = clampi(lroundf(is * x[i]), -32, 31), w = (double)x[i] * x[i];
            slx += w * l * x[i], sll += w * l * l;
        }
        if (sll <= 0)
            continue;
        double sc = slx / sll, err = 0;
        for (int i = 0; i < n; i++) {
            double e = sc * clampi(lroundf((float)(x[i] / sc)), -32, 31) - x[i];
            err += (double)x[i] * x[i] * e * e;
        }
        if (err < best)
            best = err, bs = (float)sc;
    }
    return bs;
}

/* one Q4_K block: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles */
static void quantize_q4_k(uint8_t *dst, const float *x)
{
    float s[8], o[8], smax = 0, omax = 0;
    for (int j = 0; j < 8; j++) {
        s[j] = fit_offset(x + 32 * j, 32, 15, &o[j]);
        smax = s[j] > smax ? s[j] : smax;
        omax = o[j] > omax ? o[j] : omax;
    }
    f2h(dst, smax / 63.0f);
    f2h(dst + 2, omax / 63.0f);
    float d = h2f(dst), dm = h2f(dst + 2);
    uint8_t sc[8], mn[8], *k = dst + 4;
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)(d > 0 ? clampi(lroundf(s[j] / d), 0, 63) : 0);
        mn[j] = (uint8_t)(dm > 0 ? clampi(lroundf(o[j] / dm), 0, 63) : 0);
    }
    for (int j = 0; j < 4; j++) {
        k[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        k[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        k[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
    uint8_t L[256];
    for (int j = 0; j < 8; j++) {
        float ds = d * sc[j], om = dm * mn[j];
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)(ds > 0 ? clampi(lroundf((x[32 * j + i] + om) / ds), 0, 15) : 0);
    }
    for (int p = 0; p < 4; p++) /* 64 weights: sub-block 2p in the low nibbles, 2p + 1 in the high */
        for (int l = 0; l < 32; l++)
            dst[16 + 32 * p + l] = (uint8_t)(L[64 * p + l] | L[64 * p + 32 + l] << 4);
}

/* one Q6_K block: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales, f16 d */
static void quantize_q6_k(uint8_t *dst, const float *x)
{
    float s[16], smax = 0;
    for (int k = 0; k < 16; k++) {
        s[k] = fit_symmetric(x + 16 * k, 16);
        smax = fabsf(s[k]) > fabsf(smax) ? s[k] : smax;
    }
    f2h(dst + 208, smax / -128.0f);
    float d = h2f(dst + 208);
    int8_t *sc = (int8_t *)(dst + 192);
    int L[256];
    for (int k = 0; k < 16; k++) {
        sc[k] = (int8_t)(d != 0 ? clampi(lroundf(s[k] / d), -128, 127) : 0);
        float ds = d * sc[k];
        for (int i = 0; i < 16; i++)
            L[16 * k + i] = (ds != 0 ? clampi(lroundf(x[16 * k + i] / ds), -32, 31) : 0) + 32;
    }
    for (int h = 0; h < 2; h++) {
        uint8_t *ql = dst + 64 * h, *qh = dst + 128 + 32 * h;
        const int *q = L + 128 * h;
        for (int l = 0; l < 32; l++) {
            ql[l] = (uint8_t)((q[l] & 15) | (q[l + 64] & 15) << 4);
            ql[l + 32] = (uint8_t)((q[l + 32] & 15) | (q[l + 96] & 15) << 4);
            qh[l] = (uint8_t)(q[l] >> 4 | (q[l + 32] >> 4) << 2 | (q[l + 64] >> 4) << 4 | (q[l + 96] >> 4) << 6);
        }
    }
}

/* float32 -> ggml F32, F16, BF16, Q8_0 or Q4_0 (n a multiple of 32 for the blocks) as ggml's
   reference quantizers round, or Q4_K / Q6_K (n a multiple of 256) by the fits above; -1 for another type */
int peft__quantize(uint8_t *dst, const float *src, uint64_t n, uint32_t t)
{
    switch (t) {
    case PEFT_GG_F32: memcpy(dst, src, n * 4); return 0;
    case PEFT_GG_F16:
        for (uint64_t i = 0; i < n; i++)
            f2h(dst + 2 * i, src[i]);
        return 0;
    case PEFT_GG_BF16: /* the top half, rounded to nearest even; NaNs stay quiet NaNs */
        for (uint64_t i = 0; i < n; i++) {
            uint16_t u = peft__f32_to_bf16(src[i]);
            dst[2 * i] = (uint8_t)u;
            dst[2 * i + 1] = (uint8_t)(u >> 8);
        }
        return 0;
    case PEFT_GG_Q8_0: /* d = max |x| / 127, q = round(x / d) */
        for (uint64_t b = 0; b < n / 32; b++, dst += 34, src += 32) {
            float amax = 0;
            for (int i = 0; i < 32; i++)
                amax = fabsf(src[i]) > amax ? fabsf(src[i]) : amax;
            float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
            f2h(dst, d);
            for (int i = 0; i < 32; i++)
                dst[2 + i] = (uint8_t)(int8_t)lroundf(src[i] * id);
        }
        return 0;
    case PEFT_GG_Q4_0: /* d = (the value of largest magnitude) / -8, q = x / d + 8.5 truncated, at most 15 */
        for (uint64_t b = 0; b < n / 32; b++, dst += 18, src += 32) {
            float amax = 0, max = 0;
            for (int i = 0; i < 32; i++)
                if (fabsf(src[i]) > amax) {
                    amax = fabsf(src[i]);
                    max = src[i];
                }
            float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
            f2h(dst, d);
            for (int i = 0; i < 16; i++) {
                int q0 = (int)(src[i] * id + 8.5f), q1 = (int)(src[i + 16] * id + 8.5f);
                q0 = q0 > 15 ? 15 : q0 < 0 ? 0 : q0;
                q1 = q1 > 15 ? 15 : q1 < 0 ? 0 : q1;
                dst[2 + i] = (uint8_t)(q0 | q1 << 4);
            }
        }
        return 0;
    case PEFT_GG_Q4_K:
        for (uint64_t b = 0; b < n / 256; b++)
            quantize_q4_k(dst + b * 144, src + b * 256);
        return 0;
    case PEFT_GG_Q6_K:
        for (uint64_t b = 0; b < n / 256; b++)
            quantize_q6_k(dst + b * 210, src + b * 256);
        return 0;
    default: return -1;
    }
}

size_t peft__gg_row_bytes(uint32_t t, uint64_t n)
{
    switch (t) {
    case PEFT_GG_F32: return (size_t)n * 4;
    case PEFT_GG_F16:
    case PEFT_GG_BF16: return (size_t)n * 2;
    case PEFT_GG_Q8_0: return n % 32 ? 0 : (size_t)(n / 32 * 34);
    case PEFT_GG_Q4_0: return n % 32 ? 0 : (size_t)(n / 32 * 18);
    case PEFT_GG_Q4_K: return n % 256 ? 0 : (size_t)(n / 256 * 144);
    case PEFT_GG_Q6_K: return n % 256 ? 0 : (size_t)(n / 256 * 210);
    default: return 0;
    }
}

/* ---- products ---- */

struct dq_args {
    const peft_w *w;
    int64_t r0;
    float *dst;
};

static void dq_task(void *arg, int32_t i)
{
    const struct dq_args *a = arg;
    peft__dequant(a->dst + (int64_t)i * a->w->cols, a->w->q + (size_t)(a->r0 + i) * a->w->row_bytes,
                  (uint64_t)a->w->cols, a->w->qtype);
}

void peft__w_rows(const peft_model *m, const peft_w *w, int64_t r0, int64_t n, float *dst)
{
    if (w->f) {
        memcpy(dst, w->f + r0 * w->cols, (size_t)(n * w->cols) * sizeof(float));
        return;
    }
    struct dq_args a = {w, r0, dst};
    if (m && n > 1)
        peft__pool_for(m->pool, (int32_t)n, dq_task, &a);
    else
        for (int32_t i = 0; i < (int32_t)n; i++)
            dq_task(&a, i);
}

/* rows of a quantized matrix dequantized at once (a panel) */
static int64_t panel_rows(const peft_model *m, const peft_w *w)
{
    int64_t p = m->qpanel_floats / (w->cols > 0 ? w->cols : 1);
    return p < 1 ? 1 : p;
}

/* the backend's products with BF16 weights, when it has them */
static int be_bf16(const peft_model *m)
{
    return m->be->struct_size >= offsetof(peft_backend, gemm_bf16) + sizeof m->be->gemm_bf16 && m->be->gemm_bf16;
}

static int be_sum(const peft_model *m)
{
    return m->be->struct_size >= offsetof(peft_backend, gemm_sum) + sizeof m->be->gemm_sum && m->be->gemm_sum;
}

/* a BF16 copy as a quantized matrix of type BF16 (widened panel by panel) */
static peft_w bf16_as_q(const peft_w *w)
{
    return (peft_w){.q = (const uint8_t *)w->bf16, .qtype = PEFT_GG_BF16, .rows = w->rows, .cols = w->cols,
                    .row_bytes = (size_t)w->cols * 2};
}

void peft__gemm_xwt(peft_model *m, int64_t N, const float *x, int64_t ldx, const peft_w *w, float beta, float *y,
                    int64_t ldy)
{
    if (w->bf16 && be_bf16(m)) {
        m->be->gemm_bf16(m->be_ctx, 1, N, w->rows, w->cols, 1.0f, x, ldx, w->bf16, w->cols, beta, y, ldy);
        return;
    }
    peft_w wq;
    if (w->bf16)
        w = (wq = bf16_as_q(w), &wq);
    if (w->f) {
        peft__gemm(m, 0, 1, N, w->rows, w->cols, 1.0f, x, ldx, w->f, w->cols, beta, y, ldy);
        return;
    }
    int64_t P = panel_rows(m, w);
    for (int64_t r0 = 0; r0 < w->rows; r0 += P) {
        int64_t n = w->rows - r0 < P ? w->rows - r0 : P;
        peft__w_rows(m, w, r0, n, m->qpanel);
        peft__gemm(m, 0, 1, N, n, w->cols, 1.0f, x, ldx, m->qpanel, w->cols, beta, y + r0, ldy);
    }
}

void peft__gemm_w_sum(peft_model *m, int wt, int64_t N, const float *x, int64_t ldx, const peft_w *w,
                      const peft_gemm_term *t, float beta, float *y, int64_t ldy)
{
    int64_t n = wt ? w->rows : w->cols;
    if (w->f && !w->bf16 && be_sum(m)) {
        peft_gemm_term terms[2] = {{0, wt, wt ? w->cols : w->rows, 1.0f, x, ldx, w->f, w->cols}, *t};
        m->be->gemm_sum(m->be_ctx, N, n, 2, terms, beta, y, ldy);
        return;
    }
    if (wt)
        peft__gemm_xwt(m, N, x, ldx, w, beta, y, ldy);
    else
        peft__gemm_dyw(m, N, x, ldx, w, beta, y, ldy);
    peft__gemm(m, t->trans_a, t->trans_b, N, n, t->k, t->alpha, t->a, t->lda, t->b, t->ldb, 1.0f, y, ldy);
}

void peft__gemm_dyw(peft_model *m, int64_t N, const float *dy, int64_t lddy, const peft_w *w, float beta, float *dx,
                    int64_t lddx)
{
    if (w->bf16 && be_bf16(m)) {
        m->be->gemm_bf16(m->be_ctx, 0, N, w->cols, w->rows, 1.0f, dy, lddy, w->bf16, w->cols, beta, dx, lddx);
        return;
    }
    peft_w wq;
    if (w->bf16)
        w = (wq = bf16_as_q(w), &wq);
    if (w->f) {
        peft__gemm(m, 0, 0, N, w->cols, w->rows, 1.0f, dy, lddy, w->f, w->cols, beta, dx, lddx);
        return;
    }
    int64_t P = panel_rows(m, w);
    for (int64_t r0 = 0; r0 < w->rows; r0 += P) {
        int64_t n = w->rows - r0 < P ? w->rows - r0 : P;
        peft__w_rows(m, w, r0, n, m->qpanel);
        peft__gemm(m, 0, 0, N, w->cols, n, 1.0f, dy + r0, lddy, m->qpanel, w->cols, r0 == 0 ? beta : 1.0f, dx, lddx);
    }
}

int peft__w_differs(const peft_w *w, const float *x, float *row)
{
    size_t n = (size_t)w->cols;
    if (w->f)
        return memcmp(w->f, x, (size_t)w->rows * n * sizeof *x) != 0;
    for (int64_t r = 0; r < w->rows; r++) {
        peft__w_rows(NULL, w, r, 1, row);
        if (memcmp(row, x + (size_t)r * n, n * sizeof *x))
            return 1;
    }
    return 0;
}

const float *peft__w_dense(const peft_model *m, const peft_w *w, float *scratch)
{
    if (w->f)
        return w->f;
    peft__w_rows(m, w, 0, w->rows, scratch);
    return scratch;
}

/* ---- frozen_dtype "bf16" ---- */

/* bytes bytes at p, when they lie in a file mapping: its pages released (a private, read-only
   mapping: they come back from the file when read again); 1 when they do */
static int release_mapped(const peft_model *m, const void *p, size_t bytes)
{
    if (!peft__in_mapping(m, p, bytes))
        return 0;
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p, e = a + bytes;
    a = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    e &= ~((uintptr_t)pg - 1);
    if (e > a)
        madvise((void *)a, e - a, MADV_DONTNEED);
    return 1;
}

/* n floats of f as a BF16 copy owned by the model (NULL: out of memory, reported); *exact:
   every value is a BF16 number (NaNs count as such) */
static uint16_t *bf16_copy(peft_model *m, const float *f, size_t n, int *exact)
{
    uint16_t *h = (uint16_t *)peft__alloc_floats((n + 1) / 2);
    if (!h || peft__gguf_add_owned(m, (float *)h)) {
        peft__free(h);
        peft__fail(PEFT_ENOMEM, "%s: out of memory for the BF16 weights", m->path);
        return NULL;
    }
    int ex = 1;
    for (size_t i = 0; i < n; i++) {
        h[i] = peft__f32_to_bf16(f[i]);
        ex &= peft__bf16_to_f32(h[i]) == f[i] || f[i] != f[i];
    }
    *exact = ex;
    return h;
}

/* A BF16 copy of w's float32 matrix. Pages of a memory-mapped file are released (they are read
   back only if the exact weights are needed again: merging, exports); an owned float32 copy
   whose values are all BF16 numbers (a BF16 file) is freed and w becomes a BF16 matrix. */
static int to_bf16(peft_model *m, peft_w *w)
{
    if (!w->f || w->bf16)
        return PEFT_OK;
    size_t n = (size_t)w->rows * (size_t)w->cols;
    int exact;
    uint16_t *h = bf16_copy(m, w->f, n, &exact);
    if (!h)
        return PEFT_ENOMEM;
    w->bf16 = h;
    if (!release_mapped(m, w->f, n * sizeof(float)) && exact && peft__owned_release(m, w->f) == 0) {
        *w = (peft_w){.q = (const uint8_t *)h, .qtype = PEFT_GG_BF16, .rows = w->rows, .cols = w->cols,
                      .row_bytes = (size_t)w->cols * 2, .bf16 = h};
    }
    return PEFT_OK;
}

int peft__weights_to_bf16(peft_model *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            int code = to_bf16(m, &m->layers[l].w[k]);
            if (code)
                return code;
        }
    if (!m->cfg.tied)
        return to_bf16(m, &m->head);
    /* a tied lm_head keeps the embedding matrix for the lookups (its f), the copy is for the
       products only; the mapped pages are released, lookups read back only their rows */
    if (!m->head.f)
        return PEFT_OK;
    size_t n = (size_t)m->head.rows * (size_t)m->head.cols;
    int exact;
    if (!(m->head.bf16 = bf16_copy(m, m->head.f, n, &exact)))
        return PEFT_ENOMEM;
    release_mapped(m, m->head.f, n * sizeof(float));
    return PEFT_OK;
}

/* ---- mapped weights on 2 MiB pages ---- */

/* whether the kernel gives anonymous memory transparent huge pages when asked ("always" or
   "madvise" mode) */
int peft__huge_pages_offered(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char s[128] = "";
    if (!f)
        return 0;
    if (!fgets(s, sizeof s, f))
        s[0] = 0;
    fclose(f);
    return strstr(s, "[always]") || strstr(s, "[madvise]");
}

/* weight i of the model: the layers' linear weights, then the embeddings and lm_head */
static peft_w *nth_weight(peft_model *m, int i)
{
    int per = PEFT_MOD_COUNT;
    if (i < m->cfg.n_layers * per)
        return &m->layers[i / per].w[i % per];
    i -= m->cfg.n_layers * per;
    return i == 0 ? &m->embed : i == 1 ? &m->head : NULL;
}

/* bytes bytes of the mapping at p read into dst with read calls on the file (no page faults in
   the mapping: about a third of the time of copying through it); 0, or -1 when it could not be
   read that way (the caller copies through the mapping) */
static int read_from_file(const peft_model *m, const void *p, void *dst, size_t bytes)
{
    uint64_t off;
    const char *path = peft__mapping_file(m, p, &off);
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < bytes) {
        ssize_t r = pread(fd, (uint8_t *)dst + done, bytes - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        done += (size_t)r;
    }
    close(fd);
    return done == bytes ? 0 : -1;
}

const void *peft__w_storage(const peft_w *w, size_t *bytes)
{
    *bytes = w->f ? (size_t)w->rows * (size_t)w->cols * sizeof(float) : (size_t)w->rows * w->row_bytes;
    return w->bf16 ? NULL : w->f ? (const void *)w->f : (const void *)w->q;
}

/* the bytes of w that the products read in place from a file mapping, or NULL */
static const void *mapped_bytes(const peft_model *m, const peft_w *w, size_t *bytes)
{
    const void *p = peft__w_storage(w, bytes);
    return p && peft__in_mapping(m, p, *bytes) ? p : NULL;
}

/* The frozen float32 matrices and quantized blocks that the products read in place from a file
   mapping (4 KiB pages, with a TLB miss every 4 KiB as a product streams them) copied into one
   allocation on 2 MiB pages, each distinct matrix once (a tied lm_head is the embedding
   matrix): a training step about 3-5% faster on a VM (bench/RESULTS.md, session 18). Not where
   the kernel offers no transparent huge pages, nor with PEFT_MMAP_WEIGHTS=1 (the pages then stay
   the file's, shared with other processes that map it). Never an error: without the memory,
   they stay mapped. */
int peft__weights_to_memory(peft_model *m)
{
    const char *env = getenv("PEFT_MMAP_WEIGHTS");
    if ((env && env[0] && strcmp(env, "0") != 0) || !peft__huge_pages_offered())
        return PEFT_OK;
    int total = m->cfg.n_layers * PEFT_MOD_COUNT + 2;
    const void **from = calloc((size_t)total, sizeof *from);
    uint8_t **to = calloc((size_t)total, sizeof *to);
    size_t bytes = 0, n;
    int count = 0;
    for (int i = 0; from && to && i < total; i++) {
        const void *p = mapped_bytes(m, nth_weight(m, i), &n);
        int seen = !p;
        for (int j = 0; j < count && !seen; j++)
            seen = from[j] == p;
        if (!seen) {
            from[count++] = p;
            bytes += (n + 63) & ~(size_t)63;
        }
    }
    const size_t huge = (size_t)2 << 20;
    size_t round = (bytes + huge - 1) & ~(huge - 1);
    uint8_t *arena = count && from && to ? aligned_alloc(huge, round) : NULL;
    if (!arena || peft__gguf_add_owned(m, (float *)arena)) { /* not worth an error: stay mapped */
        free(arena);
        free(from);
        free(to);
        return PEFT_OK;
    }
#ifdef MADV_HUGEPAGE
    madvise(arena, round, MADV_HUGEPAGE);
#endif
    /* matrix by matrix, read from the file; where a matrix had to be copied through the mapping,
       its pages are released once copied: the peak never holds the model twice */
    size_t off = 0;
    for (int i = 0, c = 0; i < total && c < count; i++) {
        const void *p = mapped_bytes(m, nth_weight(m, i), &n);
        if (p != from[c])
            continue;
        to[c] = arena + off;
        if (read_from_file(m, p, to[c], n))
            memcpy(to[c], p, n);
        release_mapped(m, p, n);
        off += (n + 63) & ~(size_t)63;
        c++;
    }
    for (int i = 0; i < total; i++) {
        peft_w *w = nth_weight(m, i);
        for (int j = 0; j < count; j++) {
            if (w->f && (const void *)w->f == from[j]) {
                w->f = (const float *)(const void *)to[j];
                break;
            }
            if (w->q && (const void *)w->q == from[j]) {
                w->q = to[j];
                break;
            }
        }
    }
    free(from);
    free(to);
    return PEFT_OK;
}
