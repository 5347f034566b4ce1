/* GEMM against BFloat16 weights used by the CPU backend (see gemm_bf16.c). */
#ifndef PEFT_GEMM_BF16_H
#define PEFT_GEMM_BF16_H

#include <stdint.h>

#include "gemm_fast.h"

/* C (m, n) = alpha A op(B) + beta C; A (m, k) float32, B BF16: (k, n) or, tb, (n, k) */
typedef struct gemm_bf16_call {
    int tb;
    int64_t m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a;
    const uint16_t *b;
    float *c;
} gemm_bf16_call;

/* 0 when done, -1 when the processor lacks AVX512-BF16 or the buffers could not be allocated */
int gemm_bf16(const gemm_bf16_call *g, gemm_fast_buffers *buf, void *pool,
              void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *));
/* 1 when the processor has AVX512-BF16's dot products */
int gemm_bf16_native(void);

#endif
