/* Gated MLP activations: SwiGLU, act = silu(g) * u, silu(g) = g * sigmoid(g); and Gemma's
   GeGLU, act = gelu(g) * u with the tanh form of GELU (PyTorch's approximate="tanh"). */
#include <math.h>

#include "../internal.h"
#include "ops.h"

struct swiglu_args {
    float *act, *dg, *du;
    const float *g, *u, *dact;
    int64_t n;
};

#define SW_CHUNK 4096

/* task's elements [*i0, *i1) of the N*F */
static inline void chunk_of(const struct swiglu_args *a, int32_t task, int64_t *i0, int64_t *i1)
{
    *i0 = (int64_t)task * SW_CHUNK;
    *i1 = *i0 + SW_CHUNK < a->n ? *i0 + SW_CHUNK : a->n;
}

static void run_chunks(void *pool, struct swiglu_args *a, void (*task)(void *, int32_t))
{
    peft__pool_for(pool, (int32_t)((a->n + SW_CHUNK - 1) / SW_CHUNK), task, a);
}

PEFT_VEC_CLONES static void fwd_task(void *vp, int32_t task)
{
    const struct swiglu_args *a = vp;
    int64_t i0, i1;
    chunk_of(a, task, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        float g = a->g[i];
        a->act[i] = g / (1.0f + peft__expf(-g)) * a->u[i];
    }
}

// act (N,F) <- g (N,F), u (N,F)
void swiglu_forward(void *pool, float *act, const float *g, const float *u, int64_t N, int F)
{
    struct swiglu_args a = {.act = act, .g = g, .u = u, .n = N * F};
    run_chunks(pool, &a, fwd_task);
}

PEFT_VEC_CLONES static void bwd_task(void *vp, int32_t task)
{
    const struct swiglu_args *a = vp;
    int64_t i0, i1;
    chunk_of(a, task, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        float g = a->g[i], sg = 1.0f / (1.0f + peft__expf(-g));
        float silu = g * sg;
        a->du[i] = a->dact[i] * silu;
        a->dg[i] = a->dact[i] * a->u[i] * sg * (1.0f + g * (1.0f - sg));
    }
}

// dg, du (N,F) overwritten
void swiglu_backward(void *pool, float *dg, float *du, const float *dact, const float *g,
                     const float *u, int64_t N, int F)
{
    struct swiglu_args a = {.dg = dg, .du = du, .g = g, .u = u, .dact = dact, .n = N * F};
    run_chunks(pool, &a, bwd_task);
}

/* gelu(g) = g/2 (1 + tanh(c (g + 0.044715 g^3))), tanh(z) = 1 - 2 / (e^2z + 1) */
#define GELU_C 0.7978845608028654f
static inline float gelu_tanh_of(float g) { return peft__tanhf(GELU_C * (g + 0.044715f * g * g * g)); }

PEFT_VEC_CLONES static void gelu_fwd_task(void *vp, int32_t task)
{
    const struct swiglu_args *a = vp;
    int64_t i0, i1;
    chunk_of(a, task, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        float g = a->g[i];
        a->act[i] = 0.5f * g * (1.0f + gelu_tanh_of(g)) * a->u[i];
    }
}

void geglu_forward(void *pool, float *act, const float *g, const float *u, int64_t N, int F)
{
    struct swiglu_args a = {.act = act, .g = g, .u = u, .n = N * F};
    run_chunks(pool, &a, gelu_fwd_task);
}

PEFT_VEC_CLONES static void gelu_bwd_task(void *vp, int32_t task)
{
    const struct swiglu_args *a = vp;
    int64_t i0, i1;
    chunk_of(a, task, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        float g = a->g[i], t = gelu_tanh_of(g);
        float gelu = 0.5f * g * (1.0f + t);
        float dgelu = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * 0.044715f * g * g);
        a->du[i] = a->dact[i] * gelu;
        a->dg[i] = a->dact[i] * a->u[i] * dgelu;
    }
}

void geglu_backward(void *pool, float *dg, float *du, const float *dact, const float *g, const float *u, int64_t N,
                    int F)
{
    struct swiglu_args a = {.dg = dg, .du = du, .g = g, .u = u, .dact = dact, .n = N * F};
    run_chunks(pool, &a, gelu_bwd_task);
}

void gated_forward(void *pool, int gelu, float *act, const float *g, const float *u, int64_t N, int F)
{
    (gelu ? geglu_forward : swiglu_forward)(pool, act, g, u, N, F);
}

void gated_backward(void *pool, int gelu, float *dg, float *du, const float *dact, const float *g, const float *u,
                    int64_t N, int F)
{
    (gelu ? geglu_backward : swiglu_backward)(pool, dg, du, dact, g, u, N, F);
}
