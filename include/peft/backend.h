/*
 * libpeft tensor backend interface (for backend implementers).
 *
 * A backend is a table of function pointers. The table is append-only:
 * `abi_version` and `struct_size` tell the core which slots exist. Every
 * slot takes the backend's `void *ctx` first. Optional slots may be NULL;
 * the core then uses its reference implementation.
 *
 * All matrices are row-major float32.
 */
#ifndef PEFT_BACKEND_H
#define PEFT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PEFT_BACKEND_ABI_VERSION 1

/* Services the core offers to a backend. */
typedef struct peft_backend_host {
    uint32_t struct_size;
    int32_t n_threads;
    void *pool;
    /* Run fn(arg, i) for i in [0, n) on the core's thread pool; returns when all are done.
       The tasks run in any order, on any of its n_threads threads (the caller's included): each
       must write only its own outputs, so that results do not depend on the scheduling. */
    void (*parallel_for)(void *pool, int32_t n, void (*fn)(void *arg, int32_t i), void *arg);
} peft_backend_host;

/* One product of a sum (gemm_sum): alpha op(A) op(B), op(A) M x k, op(B) k x N, the
   transposes and strides as in gemm. */
typedef struct peft_gemm_term {
    int32_t trans_a, trans_b;
    int64_t k;
    float alpha;
    const float *a;
    int64_t lda;
    const float *b;
    int64_t ldb;
} peft_gemm_term;

typedef struct peft_backend {
    uint32_t abi_version; /* PEFT_BACKEND_ABI_VERSION */
    uint32_t struct_size; /* sizeof(peft_backend) of the implementer */
    const char *name;

    /* Create the backend context. Returns 0 or a negative PEFT_E* code. Required. */
    int (*init)(void **ctx, const peft_backend_host *host);
    /* Free the context. Required. */
    void (*free)(void *ctx);

    /*
     * C = alpha * op(A) * op(B) + beta * C. Required.
     *   op(A) is M x K: A is (M, K) with lda >= K if !trans_a, else (K, M) with lda >= M.
     *   op(B) is K x N: B is (K, N) with ldb >= N if !trans_b, else (N, K) with ldb >= K.
     *   C is (M, N) with ldc >= N. beta == 0 means C is not read.
     * Results must not depend on the thread count (each element of C is
     * reduced over K in a fixed order).
     */
    void (*gemm)(void *ctx, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                 float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                 float beta, float *c, int64_t ldc);

    /*
     * Optional (appended in 0.1.0; check struct_size). Products with BFloat16 weights:
     * C = alpha * A * op(B) + beta * C, A (M, K) float32 with lda >= K, B BFloat16 (the upper
     * 16 bits of float32 values): (K, N) with ldb >= N if !trans_b, else (N, K) with
     * ldb >= K. The backend may round A to BFloat16 and must accumulate in float32 (the
     * processor's BF16 dot products). Same rules as gemm otherwise. NULL: the core widens
     * B to float32 panel by panel and calls gemm.
     */
    void (*gemm_bf16)(void *ctx, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                      int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc);

    /*
     * Optional (appended in 0.1.0; check struct_size). A sum of products into one C:
     * C = sum over the n_terms terms of alpha op(A) op(B), + beta * C. Each term is a product as
     * gemm takes it, with its own k; M, N and C are shared. The result must be what gemm gives
     * for the first term (with beta) followed by gemm for each further term (beta 1), to
     * float tolerance. NULL: the core makes those calls. The LoRA modules use it for
     * x W^T + s x_a B^T and dy W + s dx_a A (the CPU backend adds the rank-r term to each tile
     * of C while it is in cache, instead of in a second pass over C).
     */
    void (*gemm_sum)(void *ctx, int64_t m, int64_t n, int32_t n_terms, const peft_gemm_term *terms, float beta,
                     float *c, int64_t ldc);
} peft_backend;

#ifdef __cplusplus
}
#endif

#endif /* PEFT_BACKEND_H */
