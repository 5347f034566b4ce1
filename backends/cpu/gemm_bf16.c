/*
 * GEMM against BFloat16 weights for the CPU backend (the backend's gemm_bf16 slot):
 * C (M,N) = alpha A op(B) + beta C with A float32, B BFloat16 (a frozen weight held as the
 * upper halves of float32 values), float32 accumulation.
 *
 * Blocked like gemm_fast.c, over pairs of k: op(A) is rounded to BFloat16 (to nearest even)
 * while each task packs its MC rows into R-row panels whose elements are 32-bit words holding
 * (k, k + 1); op(B) is packed per block into 16-column panels of the same pairs; an R x 16
 * micro-kernel accumulates a tile over the block with one vdpbf16ps per row and pair (two
 * multiply-adds per lane per instruction). Used only where the processor has AVX512-BF16 and
 * PEFT_CPU_BF16_DOT=1 asks for it: on Zen 5 the instruction runs at a quarter of the FMA's
 * rate (half its flops), so by default cpu.c widens the weights into the float32 kernel. The
 * packing and blocking do not depend on the thread count, so neither do the results.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/internal.h"
#include "gemm_bf16.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_DPBF16 1
#endif

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
#endif

#define R 16        /* rows per A panel */
#define NR 16       /* columns per B panel */
#define KP 256      /* pairs of k per block (the gemm_fast buffers hold MC x KP and KP x NC words) */
#define MC GEMM_MC  /* within the gemm_fast buffers it borrows */
#define NC 1024

typedef float v16 __attribute__((vector_size(64), aligned(4)));

static int use_dpbf16(void)
{
#ifdef HAVE_DPBF16
    static int have = -1;
    if (have < 0)
        have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    return have;
#else
    return 0;
#endif
}

/* the tile acc (mr x nr used) into c: c = alpha acc when store, else c += alpha acc */
static inline void store_tile(const v16 *acc, float *c, int64_t ldc, float alpha, int mr, int nr, int store)
{
    for (int i = 0; i < mr; i++) {
        float *ci = c + (int64_t)i * ldc;
        if (nr == NR) {
            v16 t = (v16){0};
            if (!store)
                memcpy(&t, ci, sizeof t);
            t += alpha * acc[i];
            memcpy(ci, &t, sizeof t);
            continue;
        }
        float t[NR];
        memcpy(t, &acc[i], sizeof t);
        for (int j = 0; j < nr; j++)
            ci[j] = (store ? 0.0f : ci[j]) + alpha * t[j];
    }
}

#ifdef HAVE_DPBF16
__attribute__((target("avx512f,avx512bf16"))) static void kernel_dp(int64_t kp, const uint32_t *a, const uint32_t *b,
                                                                    float *c, int64_t ldc, float alpha, int mr,
                                                                    int nr, int store)
{
    __m512 acc[R];
    for (int i = 0; i < R; i++)
        acc[i] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kp; p++) {
        __m512bh bv = (__m512bh)_mm512_loadu_si512(b + p * NR);
        const uint32_t *ap = a + p * R;
        for (int i = 0; i < R; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_set1_epi32((int)ap[i]), bv);
    }
    v16 out[R];
    memcpy(out, acc, sizeof out);
    store_tile(out, c, ldc, alpha, mr, nr, store);
}
#endif

struct bf_args {
    const gemm_bf16_call *g;
    int64_t k0, kc, kp, n0, nc;
    uint32_t *ap_all, *bp;
};

static inline uint32_t pair_of(const float *src, int64_t n_left)
{
    uint32_t lo = peft__f32_to_bf16(src[0]);
    uint32_t hi = n_left > 1 ? peft__f32_to_bf16(src[1]) : 0u;
    return lo | hi << 16;
}

/* A[i0:i0+mc, k0:k0+kc] of row task `task`, rounded, into R-row panels of pairs, zero-padded */
static void pack_a_task(void *vp, int32_t task)
{
    const struct bf_args *a = vp;
    const gemm_bf16_call *g = a->g;
    int64_t i0 = (int64_t)task * MC, mc = g->m - i0 < MC ? g->m - i0 : MC;
    uint32_t *ap = a->ap_all + (int64_t)task * MC * KP;
    for (int64_t ir = 0; ir < mc; ir += R) {
        uint32_t *dst = ap + ir * a->kp;
        for (int i = 0; i < R; i++) {
            if (ir + i >= mc) {
                for (int64_t p = 0; p < a->kp; p++)
                    dst[p * R + i] = 0u;
                continue;
            }
            const float *src = g->a + (i0 + ir + i) * g->lda + a->k0;
            for (int64_t p = 0; p < a->kp; p++)
                dst[p * R + i] = pair_of(src + 2 * p, a->kc - 2 * p);
        }
    }
}

#define B_PANELS_PER_TASK 8

/* op(B)[k0:k0+kc, n0:n0+nc] into NR-column panels of pairs, zero-padded */
static void pack_b_task(void *vp, int32_t task)
{
    const struct bf_args *a = vp;
    const gemm_bf16_call *g = a->g;
    int64_t j_end = ((int64_t)task + 1) * B_PANELS_PER_TASK * NR;
    if (j_end > a->nc)
        j_end = a->nc;
    for (int64_t jr = (int64_t)task * B_PANELS_PER_TASK * NR; jr < j_end; jr += NR) {
        uint32_t *dst = a->bp + jr * a->kp;
        for (int j = 0; j < NR; j++) {
            if (jr + j >= a->nc) {
                for (int64_t p = 0; p < a->kp; p++)
                    dst[p * NR + j] = 0u;
                continue;
            }
            int64_t col = a->n0 + jr + j;
            if (g->tb) { /* op(B) column = row of B: its pairs are adjacent */
                const uint16_t *src = g->b + col * g->ldb + a->k0;
                for (int64_t p = 0; p < a->kp; p++) {
                    uint32_t lo = src[2 * p], hi = 2 * p + 1 < a->kc ? src[2 * p + 1] : 0u;
                    dst[p * NR + j] = lo | hi << 16;
                }
            } else { /* op(B) column = column of B: a pair spans two rows */
                const uint16_t *src = g->b + a->k0 * g->ldb + col;
                for (int64_t p = 0; p < a->kp; p++) {
                    uint32_t lo = src[2 * p * g->ldb], hi = 2 * p + 1 < a->kc ? src[(2 * p + 1) * g->ldb] : 0u;
                    dst[p * NR + j] = lo | hi << 16;
                }
            }
        }
    }
}

static void row_task(void *vp, int32_t task)
{
    const struct bf_args *a = vp;
    const gemm_bf16_call *g = a->g;
    int64_t i0 = (int64_t)task * MC, mc = g->m - i0 < MC ? g->m - i0 : MC;
    const uint32_t *ap = a->ap_all + (int64_t)task * MC * KP;
    int store = a->k0 == 0 && g->beta == 0.0f;
    for (int64_t jr = 0; jr < a->nc; jr += NR) {
        const uint32_t *bpanel = a->bp + jr * a->kp;
        int nr = (int)(a->nc - jr < NR ? a->nc - jr : NR);
        for (int64_t ir = 0; ir < mc; ir += R) {
            int mr = (int)(mc - ir < R ? mc - ir : R);
            float *ct = g->c + (i0 + ir) * g->ldc + a->n0 + jr;
#ifdef HAVE_DPBF16
            kernel_dp(a->kp, ap + ir * a->kp, bpanel, ct, g->ldc, g->alpha, mr, nr, store);
#else
            (void)ap, (void)bpanel, (void)ct, (void)mr, (void)store;
#endif
        }
    }
}

int gemm_bf16(const gemm_bf16_call *g, gemm_fast_buffers *buf, void *pool,
              void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *))
{
    /* the gemm_fast buffers: MC x KC floats per task for A, KC x NC for B, KC == KP words */
    if (!use_dpbf16() || gemm_fast_reserve(buf, g->m))
        return -1;
    int32_t tasks = (int32_t)((g->m + MC - 1) / MC);
    gemm_scale_c(g->c, g->m, g->n, g->ldc, g->beta, pool, parallel_for);
    for (int64_t k0 = 0; k0 < g->k; k0 += 2 * KP) {
        int64_t kc = g->k - k0 < 2 * KP ? g->k - k0 : 2 * KP;
        struct bf_args fa = {g, k0, kc, (kc + 1) / 2, 0, 0, (uint32_t *)(void *)buf->a, (uint32_t *)(void *)buf->b};
        parallel_for(pool, tasks, pack_a_task, &fa);
        for (int64_t n0 = 0; n0 < g->n; n0 += NC) {
            fa.n0 = n0;
            fa.nc = g->n - n0 < NC ? g->n - n0 : NC;
            int64_t panels = (fa.nc + NR - 1) / NR;
            parallel_for(pool, (int32_t)((panels + B_PANELS_PER_TASK - 1) / B_PANELS_PER_TASK), pack_b_task, &fa);
            parallel_for(pool, tasks, row_task, &fa);
        }
    }
    return 0;
}

int gemm_bf16_native(void) { return use_dpbf16(); }
