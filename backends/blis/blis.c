/*
 * BLIS backend: every GEMM through bli_sgemm_ex with strides (transposes without
 * copies) and the model's thread count in a per-call runtime object, so BLIS never
 * starts more threads than the library was asked for.
 *
 * Kernel choice: Debian's BLIS does not recognise every processor (Zen 5, for one)
 * and then silently runs its generic kernels at a fraction of the speed. Before the
 * first bli_init() this backend sets BLIS_ARCH_TYPE from the CPU's features
 * (AVX-512F: skx; AVX2+FMA: haswell) unless the user set it, and refuses to start
 * if BLIS still ends up on its generic kernels on a CPU that has AVX2.
 * Setting the variable is a one-time, process-wide act (pthread_once).
 *
 * The rank-r LoRA products (one side of 16 or fewer: x A^T, dy B, dy^T xa, dxa^T x) are
 * latency-bound in BLIS (its packing and blocking are sized for big products); they run on
 * the CPU backend's narrow kernels instead, which read the wide operand in place.
 */
#include <blis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../lib/internal.h"
#include "../cpu/gemm_fast.h"
#include "peft/backend.h"

typedef struct blis_ctx {
    int32_t n_threads;
    peft_backend_host host;
    gemm_fast_buffers narrow; /* the packed narrow operand of the rank-r products */
} blis_ctx;

static pthread_once_t setup_once = PTHREAD_ONCE_INIT;
static int arch_id = -1;
static int cpu_avx2;

static void setup(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f");
    cpu_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!getenv("BLIS_ARCH_TYPE") && (avx512 || cpu_avx2)) {
        char id[16];
        snprintf(id, sizeof id, "%d", avx512 ? (int)BLIS_ARCH_SKX : (int)BLIS_ARCH_HASWELL);
        setenv("BLIS_ARCH_TYPE", id, 0);
    }
#endif
    bli_init();
    arch_id = (int)bli_arch_query_id();
}

static int blis_init(void **ctx, const peft_backend_host *host)
{
    pthread_once(&setup_once, setup);
    if (arch_id == (int)BLIS_ARCH_GENERIC && cpu_avx2)
        return peft__fail(PEFT_EBACKEND,
                          "blis backend: BLIS chose its generic kernels on a CPU with AVX2 (BLIS_ARCH_TYPE=%s); "
                          "set BLIS_ARCH_TYPE to a kernel set this BLIS has, or use the cpu backend",
                          getenv("BLIS_ARCH_TYPE") ? getenv("BLIS_ARCH_TYPE") : "unset");
    blis_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return peft__fail(PEFT_ENOMEM, "blis backend: out of memory");
    c->n_threads = host->n_threads > 0 ? host->n_threads : 1;
    c->host = *host;
    *ctx = c;
    return PEFT_OK;
}

static void blis_free(void *ctx)
{
    blis_ctx *c = ctx;
    if (c)
        gemm_fast_free(&c->narrow);
    free(c);
}

static void blis_gemm(void *ctx, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                      int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    blis_ctx *bc = ctx;
    /* rank-r products: N <= 16, or M <= 16 computed as C^T = op(B)^T op(A)^T */
    gemm_call gc = {ta, tb, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c, NULL, 0};
    gemm_call gt = {!tb, !ta, n, m, k, ldb, lda, ldc, alpha, beta, b, a, c, NULL, 1};
    if (bc->host.parallel_for && k >= 16 &&
        ((m >= 16 && n <= 16 && gemm_narrow(&gc, &bc->narrow, bc->host.pool, bc->host.parallel_for) == 0) ||
         (n >= 16 && m <= 16 && gemm_narrow(&gt, &bc->narrow, bc->host.pool, bc->host.parallel_for) == 0)))
        return;
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(bc->n_threads, &rntm);
    if (k == 0) {
        /* BLIS may skip the beta scaling when k == 0; do what GEMM means */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
        return;
    }
    /* row-major storage: row stride = leading dimension, column stride = 1 */
    bli_sgemm_ex(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, (dim_t)m,
                 (dim_t)n, (dim_t)k, &alpha, (float *)a, (inc_t)lda, 1, (float *)b, (inc_t)ldb, 1, &beta, c,
                 (inc_t)ldc, 1, NULL, &rntm);
}

static const peft_backend blis_backend = {
    .abi_version = PEFT_BACKEND_ABI_VERSION,
    .struct_size = sizeof(peft_backend),
    .name = "blis",
    .init = blis_init,
    .free = blis_free,
    .gemm = blis_gemm,
};

const peft_backend *peft__backend_blis(void) { return &blis_backend; }
