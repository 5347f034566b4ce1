/*
 * Forward/backward pairs of the model's operations (llm.c style: outputs,
 * then inputs, then sizes; a shape comment on each). Backward functions
 * accumulate (+=) into their gradient outputs unless stated otherwise.
 * `pool` is the model's thread pool (NULL: run on the calling thread).
 */
#ifndef PEFT_OPS_H
#define PEFT_OPS_H

#include <stdint.h>
#include <string.h>

/* out (N,D), rstd (N) <- x (N,D), w (D) */
void rmsnorm_forward(void *pool, float *out, float *rstd, const float *x, const float *w,
                     int64_t N, int D, float eps);
/* dx (N,D) += d/dx of rmsnorm given dout (N,D) */
void rmsnorm_backward(void *pool, float *dx, const float *dout, const float *x, const float *w,
                      const float *rstd, int64_t N, int D);

/* dw (D) += sum over rows of dout * x * rstd (the weight's gradient) */
void rmsnorm_backward_w(float *dw, const float *dout, const float *x, const float *rstd, int64_t N, int D);

/* RoPE tables cos/sin (T, rot_dim/2), HF rotate-half convention */
void rope_tables(float *cos_t, float *sin_t, int T, const peft_config *c);
/* x (B*T, n_heads*hd) rotated in place (the first rot of each head's hd dimensions); row r is
   at position pos[r] (NULL: r % T) */
void rope_forward(void *pool, float *x, const float *cos_t, const float *sin_t, const int32_t *pos,
                  int B, int T, int n_heads, int hd, int rot);
/* dx rotated back in place (the transpose of rope_forward) */
void rope_backward(void *pool, float *dx, const float *cos_t, const float *sin_t, const int32_t *pos,
                   int B, int T, int n_heads, int hd, int rot);

/* x (n_heads*hd) of one position rotated in place */
void rope_at(float *x, int n_heads, int pos, int len, const peft_config *c);
/* The config of layer l's RoPE: c itself, or (Gemma 3's sliding layers) *tmp made from c
   with the local base and no scaling */
const peft_config *rope_config_of(const peft_config *c, int l, peft_config *tmp);

/* Causal GQA attention, scale 1/sqrt(hd). Query row i of a sequence attends to rows
   i - pos[i] .. i (its own document when sequences are packed; pos NULL: 0 .. i), and with
   window > 0 only to the last `window` of them (i - window + 1 .. i: Mistral's sliding window).
   prefix > 0: the first prefix rows of each sequence (a soft prompt, positions 0 .. prefix - 1)
   are seen by every later row, whose positions then count from prefix at each document start
   (i - pos[i] + prefix .. i, plus the prefix rows within the window by position).
   softcap > 0: each score s becomes softcap tanh(s / softcap) before the softmax (Gemma 2).
   out (B*T, H*hd), lse (B,H,T) <- q (B*T, H*hd), k, v (B*T, Hkv*hd);
   scratch: attention_scratch_floats(B, T, Hkv, hd) floats (also for the backward) */
size_t attention_scratch_floats(int B, int T, int Hkv, int hd);
void attention_forward(void *pool, float *out, float *lse, float *scratch, const float *q,
                       const float *k, const float *v, const int32_t *pos, int B, int T, int H,
                       int Hkv, int hd, int window, int prefix, float softcap);
/* dq, dk, dv are overwritten (not accumulated); scores are recomputed from lse. */
void attention_backward(void *pool, float *dq, float *dk, float *dv, float *scratch, const float *dout,
                        const float *q, const float *k, const float *v, const float *out,
                        const float *lse, const int32_t *pos, int B, int T, int H, int Hkv,
                        int hd, int window, int prefix, float softcap);

/* act (N,F) = silu(g) * u */
void swiglu_forward(void *pool, float *act, const float *g, const float *u, int64_t N, int F);
/* dg, du (N,F) overwritten from dact */
void swiglu_backward(void *pool, float *dg, float *du, const float *dact, const float *g,
                     const float *u, int64_t N, int F);

/* act (N,F) = gelu_tanh(g) * u (Gemma's GeGLU); its backward as swiglu_backward's */
void geglu_forward(void *pool, float *act, const float *g, const float *u, int64_t N, int F);
void geglu_backward(void *pool, float *dg, float *du, const float *dact, const float *g,
                    const float *u, int64_t N, int F);

/* the gated MLP's activation, SwiGLU or (gelu) GeGLU, and its backward */
void gated_forward(void *pool, int gelu, float *act, const float *g, const float *u, int64_t N, int F);
void gated_backward(void *pool, int gelu, float *dg, float *du, const float *dact, const float *g, const float *u,
                    int64_t N, int F);

/* Cross-entropy of one row of logits (V): returns logsumexp - logits[label];
   if dlogits != NULL writes softmax - onehot(label) scaled by `scale`. */
double xent_row(float *dlogits, const float *logits, int V, int label, float scale);
/* The same of soft-capped logits: row (V) becomes cap tanh(row / cap), the loss is that of the
   capped row, and with grad the row then holds d loss / d (the uncapped logits) */
double xent_row_softcap(float *row, int V, int label, float cap, int grad);

/* e^x in float, branch-free so that loops over it vectorize (libm's expf is a call per
   element): x = k ln2 + r with |r| <= ln2/2, e^r by its degree-7 Taylor polynomial (relative
   error below 2e-7, about 2 ulp), 2^k put into the exponent bits. Below -87.3 (past the
   smallest normal) it returns 0, above 88.3 e^88.3 (about 2e38, no infinity); NaN gives
   NaN. */
static inline float peft__expf(float x)
{
    float xc = x > 88.3f ? 88.3f : x; /* k <= 127: 2^k stays a finite float */
    xc = xc < -87.3f ? -87.3f : xc;
    xc = x != x ? 0.0f : xc; /* NaN: a finite stand-in (converting NaN to int is undefined) */
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = xc * 1.44269504f + magic, k = t - magic;
    float r = xc - k * 0.693359375f;  /* ln2 = 0.693359375 - 2.12194440e-4, the first part exact in k */
    r = r + k * 2.12194440e-4f;
    float pz = 1.0f / 5040.0f;
    pz = pz * r + 1.0f / 720.0f;
    pz = pz * r + 1.0f / 120.0f;
    pz = pz * r + 1.0f / 24.0f;
    pz = pz * r + 1.0f / 6.0f;
    pz = pz * r + 0.5f;
    pz = pz * r + 1.0f;
    pz = pz * r + 1.0f;
    int32_t ki = (int32_t)k + 127;
    uint32_t bits = (uint32_t)ki << 23;
    float two_k;
    __builtin_memcpy(&two_k, &bits, sizeof two_k);
    float y = pz * two_k;
    y = x < -87.3f ? 0.0f : y;
    return x != x ? x : y;
}

/* tanh(x) = 1 - 2 / (e^2x + 1) with peft__expf (absolute error about 2e-7; +-1 beyond |x| 44) */
static inline float peft__tanhf(float x) { return 1.0f - 2.0f / (peft__expf(2.0f * x) + 1.0f); }

/* x[0..n) soft-capped in place: cap tanh(x / cap) (Gemma 2's scores and logits) */
static inline void peft__softcap(float *x, int64_t n, float cap)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = cap * peft__tanhf(x[i] / cap);
}

/* Inverted dropout mask value for element idx of a call: 0 or 1/(1-p). */
float dropout_scale(uint64_t seed, uint64_t idx, float p);

/* max(init, x[0..n)) as `x > m ? x : m` folds it (a NaN in x is skipped, a NaN init stays), in
   16 lanes so that it vectorizes (a scalar fold is a chain of compares); the result is the same */
static inline float peft__maxf(const float *x, int n, float init)
{
    typedef float f16v __attribute__((vector_size(64), aligned(4)));
    typedef int32_t i16v __attribute__((vector_size(64), aligned(4)));
    f16v lane = init - (f16v){0}; /* every lane init (a vector x - 0 keeps a NaN) */
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        f16v v;
        memcpy(&v, x + i, sizeof v);
        i16v gt = v > lane;
        lane = (f16v)(((i16v)v & gt) | ((i16v)lane & ~gt));
    }
    float m = init;
    for (int k = 0; k < 16; k++)
        m = lane[k] > m ? lane[k] : m;
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* sum of x[0..n) in 16 lanes (a fixed order, vectorized), combined pairwise */
static inline float peft__sumf(const float *x, int n)
{
    float lane[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++)
            lane[k] += x[i + k];
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; k++)
            lane[k] += lane[k + w];
    for (; i < n; i++)
        lane[0] += x[i];
    return lane[0];
}

#endif
