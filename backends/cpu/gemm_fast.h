/* Packed SGEMM used by the CPU backend (see gemm_fast.c). */
#ifndef PEFT_GEMM_FAST_H
#define PEFT_GEMM_FAST_H

#include <stddef.h>
#include <stdint.h>

typedef struct gemm_call {
    int ta, tb;
    int64_t m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
    const uint16_t *bh; /* non-NULL: B is BFloat16 (b unused), widened to float32 as it is packed */
    int tc;             /* gemm_narrow only: C is stored transposed, element (i, j) at c[j ldc + i] */
} gemm_call;

typedef struct gemm_fast_buffers {
    float *a, *b;
    size_t cap_a;
    float *a2, *b2; /* gemm_fast2's second product */
    size_t cap_a2;
} gemm_fast_buffers;

#define GEMM_MC 64        /* rows of C a row task of gemm_fast computes */
#define GEMM_WIDE_N 1024 /* gemm_fast runs products at least this wide as column tasks */

int gemm_fast(const gemm_call *g, gemm_fast_buffers *buf, void *pool,
              void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *));
/* C = g's product + g2's (same M, N and C; g2's beta and c unused, its K at most 640, one
   block): g2's sum over its K is added to each tile of C after g's last k block, as a gemm
   of g2 with beta 1 would add it, while the tile is in cache. -1: shapes or buffers (the
   caller falls back) */
int gemm_fast2(const gemm_call *g, const gemm_call *g2, gemm_fast_buffers *buf, void *pool,
               void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *));
/* N <= 16 (LoRA's rank-r products): op(A) read in place, op(B) packed once, K in blocks of
   256; with tc set, C^T = op(B)^T op(A)^T is what is computed (M <= 16 products); -1 when the
   shape does not fit (the caller falls back) */
int gemm_narrow(const gemm_call *g, gemm_fast_buffers *buf, void *pool,
                void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *));
int gemm_fast_reserve(gemm_fast_buffers *buf, int64_t m);
/* gemm_fast2's checks of the shapes, and its buffers reserved for products of up to m rows:
   0, or -1 (gemm_fast2 would fail without touching C) */
int gemm_fast2_prepare(const gemm_call *g, const gemm_call *g2, gemm_fast_buffers *buf, int64_t m);
/* C (m x n, row stride ldc) *= beta, unless beta is 0 or 1 (the kernels store or add) */
void gemm_scale_c(float *c, int64_t m, int64_t n, int64_t ldc, float beta, void *pool,
                  void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *));
void gemm_fast_free(gemm_fast_buffers *buf);

#endif
