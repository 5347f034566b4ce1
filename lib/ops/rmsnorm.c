/* RMSNorm: y = x * rsqrt(mean(x^2) + eps) * w, and its backward. */
#include <math.h>

#include "../internal.h"
#include "ops.h"

struct rms_args {
    float *out, *rstd, *dx;
    const float *x, *w, *dout, *rstd_in;
    int64_t N;
    int D;
    float eps;
};

#define RMS_ROWS 16

static void rms_fwd_task(void *vp, int32_t task)
{
    const struct rms_args *a = vp;
    int64_t r0 = (int64_t)task * RMS_ROWS, r1 = r0 + RMS_ROWS < a->N ? r0 + RMS_ROWS : a->N;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = a->x + r * a->D;
        float *o = a->out + r * a->D;
        double ss = 0;
        for (int i = 0; i < a->D; i++)
            ss += (double)x[i] * x[i];
        float rs = (float)(1.0 / sqrt(ss / a->D + a->eps));
        a->rstd[r] = rs;
        for (int i = 0; i < a->D; i++)
            o[i] = x[i] * rs * a->w[i];
    }
}

// out (N,D), rstd (N) <- x (N,D), w (D)
void rmsnorm_forward(void *pool, float *out, float *rstd, const float *x, const float *w,
                     int64_t N, int D, float eps)
{
    struct rms_args a = {.out = out, .rstd = rstd, .x = x, .w = w, .N = N, .D = D, .eps = eps};
    peft__pool_for(pool, (int32_t)((N + RMS_ROWS - 1) / RMS_ROWS), rms_fwd_task, &a);
}

/* dx_i += r * w_i * dy_i - r^3 / D * x_i * sum_j(w_j * dy_j * x_j) */
static void rms_bwd_task(void *vp, int32_t task)
{
    const struct rms_args *a = vp;
    int64_t r0 = (int64_t)task * RMS_ROWS, r1 = r0 + RMS_ROWS < a->N ? r0 + RMS_ROWS : a->N;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = a->x + r * a->D, *dy = a->dout + r * a->D;
        float *dx = a->dx + r * a->D;
        float rs = a->rstd_in[r];
        double dot = 0;
        for (int i = 0; i < a->D; i++)
            dot += (double)a->w[i] * dy[i] * x[i];
        float c = (float)(dot * rs * rs * rs / a->D);
        for (int i = 0; i < a->D; i++)
            dx[i] += rs * a->w[i] * dy[i] - c * x[i];
    }
}

void rmsnorm_backward(void *pool, float *dx, const float *dout, const float *x, const float *w,
                      const float *rstd, int64_t N, int D)
{
    struct rms_args a = {.dx = dx, .dout = dout, .x = x, .w = w, .rstd_in = rstd, .N = N, .D = D};
    peft__pool_for(pool, (int32_t)((N + RMS_ROWS - 1) / RMS_ROWS), rms_bwd_task, &a);
}

// dw (D) += sum_t dout (N,D) * x (N,D) * rstd (N)
void rmsnorm_backward_w(float *dw, const float *dout, const float *x, const float *rstd, int64_t N, int D)
{
    for (int i = 0; i < D; i++) {
        double s = 0;
        for (int64_t t = 0; t < N; t++)
            s += (double)dout[t * D + i] * x[t * D + i] * rstd[t];
        dw[i] += (float)s;
    }
}
