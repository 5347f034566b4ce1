/*
 * Packed, register-blocked SGEMM for the CPU backend (the reference loops in
 * cpu.c stay as the oracle and the small-matrix path).
 *
 * C (M,N) = alpha op(A) op(B) + beta C. op(B) is packed per (KC x NC) block into
 * panels of NR columns; each task packs its MC rows of op(A) into panels of MR
 * rows; a MR x NR micro-kernel accumulates a tile in registers over the KC block. Wide
 * products run as column tasks instead: each packs a group of op(B) panels and runs it
 * against every row.
 * Every element of C is reduced over K in the same order whatever the number of
 * threads, so results never depend on the thread count. On x86-64 with GCC the
 * micro-kernel is compiled for AVX-512, AVX2+FMA and baseline and chosen at run
 * time (results then differ across those instruction sets by rounding only).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/internal.h"
#include "gemm_fast.h"

#define MR 8
#define MR_WIDE 16
#define NR 16
#define KC 640 /* the deepest k block (k_block: equal blocks up to this) */
#define MC GEMM_MC
#define NC 1024

typedef float v16 __attribute__((vector_size(64), aligned(4)));

#if defined(__GNUC__) && !defined(__clang__)
/* let the compiler fuse the micro-kernel's multiply-adds (ISO C mode turns it off) */
#pragma GCC optimize("fp-contract=fast")
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__) /* TSan cannot run ifunc resolvers during relocation */
/* dispatch on CPU features (not models: "arch=" clones miss AMD processors) */
#define KERNEL_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#define KERNEL_WIDE
#include <immintrin.h>
#else
#define KERNEL_CLONES
#endif

/* c (mr x nr of an R x NR tile of C, row stride ldc) += alpha * a (kc x R, packed) * b (kc x NR, packed) */
#define MICRO_KERNEL_BODY(R)                                                                       \
    v16 acc[R];                                                                                    \
    _Pragma("GCC unroll 16") for (int i = 0; i < R; i++) acc[i] = (v16){0};                        \
    for (int i = 0; i < mr; i++) { /* the tile of C arrives while the k loop runs */               \
        __builtin_prefetch(c + (int64_t)i * ldc, 1, 3);                                            \
        __builtin_prefetch(c + (int64_t)i * ldc + NR - 1, 1, 3);                                   \
    }                                                                                              \
    for (int p = 0; p < kc; p++) {                                                                 \
        v16 bv;                                                                                    \
        memcpy(&bv, b + (int64_t)p * NR, sizeof bv);                                               \
        const float *ap = a + (int64_t)p * R;                                                      \
        __builtin_prefetch(ap + 32 * R);                                                           \
        _Pragma("GCC unroll 16") for (int i = 0; i < R; i++) acc[i] += ap[i] * bv;                 \
    }                                                                                              \
    STORE_TILE(R)

/* the accumulated tile acc (mr x nr used) into c: c = alpha acc (store) or c += alpha acc. A
   whole tile is written with constant bounds, so the accumulators stay in registers (a loop to
   a run-time mr made the compiler keep them in memory: zeroed there on every call, and spilled
   after the k loop); a partial one goes through a copy */
#define STORE_TILE(R)                                                                              \
    if (mr == R && nr == NR) {                                                                     \
        _Pragma("GCC unroll 16") for (int i = 0; i < R; i++) {                                     \
            v16 ci = (v16){0};                                                                     \
            if (!store)                                                                            \
                memcpy(&ci, c + (int64_t)i * ldc, sizeof ci);                                      \
            ci += alpha * acc[i];                                                                  \
            memcpy(c + (int64_t)i * ldc, &ci, sizeof ci);                                          \
        }                                                                                          \
        return;                                                                                    \
    }                                                                                              \
    float t[R][NR];                                                                                \
    _Pragma("GCC unroll 16") for (int i = 0; i < R; i++) {                                         \
        v16 ai = acc[i];                                                                           \
        memcpy(t[i], &ai, sizeof ai);                                                              \
    }                                                                                              \
    for (int i = 0; i < mr; i++) {                                                                 \
        float *ci = c + (int64_t)i * ldc;                                                          \
        for (int j = 0; j < nr; j++)                                                               \
            ci[j] = (store ? 0.0f : ci[j]) + alpha * t[i][j];                                      \
    }

KERNEL_CLONES
static void micro_kernel(int kc, const float *a, const float *b, float *c, int64_t ldc, float alpha, int mr,
                         int nr, int store)
{
    MICRO_KERNEL_BODY(MR)
}

#ifdef KERNEL_WIDE
/* AVX-512 has 32 vector registers: a 16 x 16 tile keeps 16 independent accumulators in flight
   (the 8-row tile's 8 leave the two FMA pipes waiting on latency) */
__attribute__((target("avx512f"))) static void micro_kernel_wide(int kc, const float *a, const float *b, float *c,
                                                                 int64_t ldc, float alpha, int mr, int nr, int store)
{
    MICRO_KERNEL_BODY(MR_WIDE)
}
#endif

/* Narrow products (N <= NR: the rank-r LoRA ones): op(A) read in place, element (i, p) at
   a[i si + p sp] (rows past mr read row mr - 1, results dropped), against one packed NR-column
   panel of op(B) over the whole K; no A packing, whose cost would rival the flops. */
#define NARROW_KERNEL_BODY(R)                                                                      \
    v16 acc[R];                                                                                    \
    int64_t off[R];                                                                                \
    for (int i = 0; i < R; i++) {                                                                  \
        acc[i] = (v16){0};                                                                         \
        off[i] = (int64_t)(i < mr ? i : mr - 1) * si;                                              \
    }                                                                                              \
    for (int64_t p = 0; p < kc; p++) {                                                             \
        v16 bv;                                                                                    \
        memcpy(&bv, b + p * NR, sizeof bv);                                                        \
        const float *ap = a + p * sp;                                                              \
        for (int i = 0; i < R; i++)                                                                \
            acc[i] += ap[off[i]] * bv;                                                             \
    }                                                                                              \
    if (tc) {                                                                                      \
        store_tile_t(acc, c, ldc, alpha, mr, nr, store);                                           \
        return;                                                                                    \
    }                                                                                              \
    STORE_TILE(R)

/* the tile acc (mr x nr used, acc[i] = row i) into c transposed: c[j ldc + i] = alpha acc[i][j]
   (store) or += */
static void store_tile_t(const void *acc, float *c, int64_t ldc, float alpha, int mr, int nr, int store)
{
    float t[MR_WIDE > MR ? MR_WIDE : MR][NR];
    memcpy(t, acc, (size_t)mr * sizeof t[0]);
    for (int j = 0; j < nr; j++) {
        float *cj = c + (int64_t)j * ldc;
        for (int i = 0; i < mr; i++)
            cj[i] = (store ? 0.0f : cj[i]) + alpha * t[i][j];
    }
}

KERNEL_CLONES
static void narrow_kernel(int64_t kc, const float *a, int64_t si, int64_t sp, const float *b, float *c, int64_t ldc,
                          float alpha, int mr, int nr, int store, int tc)
{
    NARROW_KERNEL_BODY(MR)
}

#ifdef KERNEL_WIDE
__attribute__((target("avx512f"))) static void narrow_kernel_wide(int64_t kc, const float *a, int64_t si, int64_t sp,
                                                                  const float *b, float *c, int64_t ldc, float alpha,
                                                                  int mr, int nr, int store, int tc)
{
    NARROW_KERNEL_BODY(MR_WIDE)
}
#endif

#ifdef KERNEL_WIDE
/* dst[p * 16 + i] = src[i * ld + p] for i, p < 16: a 16 x 16 block transposed in registers
   (packing row-major op(A) rows or op(B) columns one float at a time cost 15% of a training
   step) */
__attribute__((target("avx512f"))) static void transpose16(const float *src, int64_t ld, float *dst)
{
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_ps(src + i * ld);
    for (int i = 0; i < 16; i += 2) { /* per 128-bit lane: (r_i[0], r_i+1[0], r_i[1], r_i+1[1]), ... */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* r[i + c], lane L: column 4L + c of rows i..i+3 */
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) { /* gather lane L of rows 0-3, 4-7, 8-11, 12-15: column 4L + c */
        __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88),
               w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        _mm512_storeu_ps(dst + (0 + c) * 16, _mm512_shuffle_f32x4(v0, w0, 0x88));
        _mm512_storeu_ps(dst + (8 + c) * 16, _mm512_shuffle_f32x4(v0, w0, 0xDD));
        _mm512_storeu_ps(dst + (4 + c) * 16, _mm512_shuffle_f32x4(v1, w1, 0x88));
        _mm512_storeu_ps(dst + (12 + c) * 16, _mm512_shuffle_f32x4(v1, w1, 0xDD));
    }
}
#endif

/* dst[p * 16 + i] = src[i * ld + p] for i < 16, p < kc (16 full rows), in register
   transposes where the processor has AVX-512; returns the p where the scalar tail starts */
static int64_t transpose_rows16(const float *src, int64_t ld, int64_t kc, float *dst)
{
    int64_t p = 0;
#ifdef KERNEL_WIDE
    if (__builtin_cpu_supports("avx512f"))
        for (; p + 16 <= kc; p += 16)
            transpose16(src + p, ld, dst + p * 16);
#endif
    (void)src, (void)ld, (void)kc, (void)dst;
    return p;
}

/* rows per A panel: MR_WIDE on processors with AVX-512, else MR */
static int panel_rows(void)
{
#ifdef KERNEL_WIDE
    static int rows;
    if (!rows)
        rows = __builtin_cpu_supports("avx512f") ? MR_WIDE : MR;
    return rows;
#else
    return MR;
#endif
}

struct fast_args {
    const gemm_call *g;
    int64_t k0, kc, n0, nc;
    const float *bp;
    float *ap_all, *bp_out;
    const struct fast_args *tail; /* a second product, packed and summed into each tile with this one */
};

/* pack op(A)[i0:i0+mc, k0:k0+kc] of row task `task` into MR-row panels, k-major, zero-padded
   (the tail product's rows too) */
static void pack_a_task(void *vp, int32_t task)
{
    const struct fast_args *a = vp;
    const gemm_call *g = a->g;
    if (a->tail)
        pack_a_task((void *)a->tail, task);
    int64_t i0 = (int64_t)task * MC, mc = g->m - i0 < MC ? g->m - i0 : MC;
    float *ap = a->ap_all + (int64_t)task * MC * KC;
    int R = panel_rows();
    for (int64_t ir = 0; ir < mc; ir += R) {
        float *dst = ap + ir * a->kc;
        if (g->ta) { /* op(A) rows are columns of A: read along p-rows of A */
            for (int64_t p = 0; p < a->kc; p++) {
                const float *src = g->a + (a->k0 + p) * g->lda + i0 + ir;
                if (ir + R <= mc) {
                    memcpy(dst + p * R, src, (size_t)R * sizeof(float));
                    continue;
                }
                for (int i = 0; i < R; i++)
                    dst[p * R + i] = ir + i < mc ? src[i] : 0.0f;
            }
        } else { /* read each row of A contiguously */
            const float *a0 = g->a + (i0 + ir) * g->lda + a->k0;
            int64_t p0 = R == 16 && ir + 16 <= mc ? transpose_rows16(a0, g->lda, a->kc, dst) : 0;
            for (int i = 0; i < R; i++) {
                if (ir + i >= mc) {
                    for (int64_t p = 0; p < a->kc; p++)
                        dst[p * R + i] = 0.0f;
                    continue;
                }
                const float *src = g->a + (i0 + ir + i) * g->lda + a->k0;
                for (int64_t p = p0; p < a->kc; p++)
                    dst[p * R + i] = src[p];
            }
        }
    }
}

#define B_PANELS_PER_TASK 8

static inline float widen(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* the panel at column jr of a BFloat16 op(B), widened (exactly) to float32 */
static void pack_b_bf16(const struct fast_args *a, int64_t jr, float *dst)
{
    const gemm_call *g = a->g;
    for (int j = 0; j < NR; j++) {
        if (jr + j >= a->nc) {
            for (int64_t p = 0; p < a->kc; p++)
                dst[p * NR + j] = 0.0f;
            continue;
        }
        if (g->tb) {
            const uint16_t *src = g->bh + (a->n0 + jr + j) * g->ldb + a->k0;
            for (int64_t p = 0; p < a->kc; p++)
                dst[p * NR + j] = widen(src[p]);
        } else {
            const uint16_t *src = g->bh + a->k0 * g->ldb + a->n0 + jr + j;
            for (int64_t p = 0; p < a->kc; p++)
                dst[p * NR + j] = widen(src[p * g->ldb]);
        }
    }
}

/* pack op(B)[k0:k0+kc, n0:n0+nc] into NR-column panels, k-major, zero-padded; a task packs
   B_PANELS_PER_TASK panels (and the tail product's same panels) */
static void pack_b_task(void *vp, int32_t task)
{
    const struct fast_args *a = vp;
    const gemm_call *g = a->g;
    if (a->tail)
        pack_b_task((void *)a->tail, task);
    int64_t j_end = ((int64_t)task + 1) * B_PANELS_PER_TASK * NR;
    if (j_end > a->nc)
        j_end = a->nc;
    int64_t j_begin = (int64_t)task * B_PANELS_PER_TASK * NR, j_full = j_begin + (j_end - j_begin) / NR * NR;
    if (!g->bh && !g->tb && j_full > j_begin) {
        /* full panels of a row-major op(B): row by row across the task's panels, so that each
           row of B is read as one contiguous piece (panel by panel, every row was a new line) */
        for (int64_t p = 0; p < a->kc; p++) {
            const float *src = g->b + (a->k0 + p) * g->ldb + a->n0;
            for (int64_t jr = j_begin; jr < j_full; jr += NR)
                memcpy(a->bp_out + jr * a->kc + p * NR, src + jr, NR * sizeof(float));
        }
        j_begin = j_full;
    }
    for (int64_t jr = j_begin; jr < j_end; jr += NR) {
        float *dst = a->bp_out + jr * a->kc;
        if (g->bh) {
            pack_b_bf16(a, jr, dst);
            continue;
        }
        if (g->tb) { /* op(B) columns are rows of B: read each contiguously */
            const float *b0 = g->b + (a->n0 + jr) * g->ldb + a->k0;
            int64_t p0 = jr + NR <= a->nc ? transpose_rows16(b0, g->ldb, a->kc, dst) : 0;
            for (int j = 0; j < NR; j++) {
                if (jr + j >= a->nc) {
                    for (int64_t p = 0; p < a->kc; p++)
                        dst[p * NR + j] = 0.0f;
                    continue;
                }
                const float *src = b0 + j * g->ldb;
                for (int64_t p = p0; p < a->kc; p++)
                    dst[p * NR + j] = src[p];
            }
        } else {
            for (int64_t p = 0; p < a->kc; p++) {
                const float *src = g->b + (a->k0 + p) * g->ldb + a->n0 + jr;
                for (int j = 0; j < NR; j++)
                    dst[p * NR + j] = jr + j < a->nc ? src[j] : 0.0f;
            }
        }
    }
}

static void kernel(int kc, const float *a, const float *b, float *c, int64_t ldc, float alpha, int mr, int nr,
                   int store)
{
#ifdef KERNEL_WIDE
    if (panel_rows() == MR_WIDE) {
        micro_kernel_wide(kc, a, b, c, ldc, alpha, mr, nr, store);
        return;
    }
#endif
    micro_kernel(kc, a, b, c, ldc, alpha, mr, nr, store);
}

/* the tiles of C in rows [i0, i0 + mc) and panel columns [j_begin, j_end) of the n block, from
   the packed rows of op(A) at ap and the packed panels of op(B); with a tail product, its
   rows packed at ap2, each tile gets the tail's sum added right after, while it is in cache */
static void run_tiles(const struct fast_args *a, int64_t i0, int64_t mc, const float *ap, const float *ap2,
                      int64_t j_begin, int64_t j_end)
{
    const gemm_call *g = a->g;
    const struct fast_args *t = a->tail;
    int R = panel_rows();
    int store = a->k0 == 0 && g->beta == 0.0f; /* the first k block writes C instead of adding */
    for (int64_t jr = j_begin; jr < j_end; jr += NR) {
        const float *bpanel = a->bp + jr * a->kc;
        int nr = (int)(a->nc - jr < NR ? a->nc - jr : NR);
        for (int64_t ir = 0; ir < mc; ir += R) {
            int mr = (int)(mc - ir < R ? mc - ir : R);
            float *ct = g->c + (i0 + ir) * g->ldc + a->n0 + jr;
            kernel((int)a->kc, ap + ir * a->kc, bpanel, ct, g->ldc, g->alpha, mr, nr, store);
            if (t)
                kernel((int)t->kc, ap2 + ir * t->kc, t->bp + jr * t->kc, ct, g->ldc, t->g->alpha, mr, nr, 0);
        }
    }
}

/* Row tasks: MC rows of C across the n block (op(A) and op(B) packed beforehand) */
static void row_task(void *vp, int32_t task)
{
    const struct fast_args *a = vp;
    int64_t i0 = (int64_t)task * MC, mc = a->g->m - i0 < MC ? a->g->m - i0 : MC;
    const float *ap2 = a->tail ? a->tail->ap_all + (int64_t)task * MC * KC : NULL;
    run_tiles(a, i0, mc, a->ap_all + (int64_t)task * MC * KC, ap2, 0, a->nc);
}

/* Column tasks, for wide products (GEMM_WIDE_N: the lm_head's, gate's and up's): the task packs
   one group of B_PANELS_PER_TASK op(B) panels and runs it against every row of C (op(A)
   packed beforehand), so each thread reads panels it packed itself, from its own cache, instead
   of panels the other thread packed. About 5-10% faster than row tasks at those shapes
   (bench-gemm, 2 threads), slower where there are few groups to share out (N = 576). */
static void col_task(void *vp, int32_t q)
{
    const struct fast_args *a = vp;
    pack_b_task(vp, q);
    int64_t j0 = (int64_t)q * B_PANELS_PER_TASK * NR, j1 = j0 + B_PANELS_PER_TASK * NR;
    for (int64_t i0 = 0; i0 < a->g->m; i0 += MC)
        run_tiles(a, i0, a->g->m - i0 < MC ? a->g->m - i0 : MC, a->ap_all + i0 * KC,
                  a->tail ? a->tail->ap_all + i0 * KC : NULL, j0, j1 < a->nc ? j1 : a->nc);
}

struct scale_args {
    float *c;
    int64_t m, n, ldc;
    float beta;
};

static void scale_task(void *vp, int32_t task)
{
    const struct scale_args *a = vp;
    int64_t i0 = (int64_t)task * MC, i1 = i0 + MC < a->m ? i0 + MC : a->m;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t j = 0; j < a->n; j++)
            a->c[i * a->ldc + j] *= a->beta;
}

void gemm_scale_c(float *c, int64_t m, int64_t n, int64_t ldc, float beta, void *pool,
                  void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *))
{
    if (beta == 0.0f || beta == 1.0f) /* 0: the first k block stores, 1: it adds */
        return;
    struct scale_args sa = {c, m, n, ldc, beta};
    parallel_for(pool, (int32_t)((m + MC - 1) / MC), scale_task, &sa);
}

int gemm_fast_reserve(gemm_fast_buffers *buf, int64_t m)
{
    int64_t tasks = (m + MC - 1) / MC;
    size_t need_a = (size_t)tasks * MC * KC, need_b = (size_t)KC * NC;
    if (need_a > buf->cap_a) {
        peft__free(buf->a);
        buf->a = peft__alloc_floats(need_a);
        buf->cap_a = buf->a ? need_a : 0;
    }
    if (!buf->b) {
        buf->b = peft__alloc_floats(need_b);
    }
    return buf->a && buf->b ? 0 : -1;
}

/* the tail product's buffers (gemm_fast2), as large as the first's */
static int reserve_tail(gemm_fast_buffers *buf, int64_t m)
{
    size_t need_a = (size_t)((m + MC - 1) / MC) * MC * KC;
    if (need_a > buf->cap_a2) {
        peft__free(buf->a2);
        buf->a2 = peft__alloc_floats(need_a);
        buf->cap_a2 = buf->a2 ? need_a : 0;
    }
    if (!buf->b2)
        buf->b2 = peft__alloc_floats((size_t)KC * NC);
    return buf->a2 && buf->b2 ? 0 : -1;
}

void gemm_fast_free(gemm_fast_buffers *buf)
{
    peft__free(buf->a);
    peft__free(buf->b);
    peft__free(buf->a2);
    peft__free(buf->b2);
    memset(buf, 0, sizeof *buf);
}

/* The depth of the k blocks of a K-deep product: as few blocks as KC allows, of equal depth
   (a multiple of 16): K = 1536 runs as 3 x 512, not 640 + 640 + 256 (a thin block costs a pass
   over C and its synchronisation for little work). KC = 640 rather than 320: K = 576 in one
   block and 1536 in three, not two and five, made a training step about 6% faster (fewer passes
   over C and rounds of tasks; bench/RESULTS.md, session 17) */
static int64_t k_block(int64_t k)
{
    int64_t nk = (k + KC - 1) / KC, kc = ((k + nk - 1) / nk + 15) / 16 * 16;
    return kc < KC ? kc : KC;
}

/* Returns 0 when done, -1 when buffers could not be allocated (the caller falls back). */
int gemm_fast(const gemm_call *g, gemm_fast_buffers *buf, void *pool,
              void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *))
{
    return gemm_fast2(g, NULL, buf, pool, parallel_for);
}

int gemm_fast2_prepare(const gemm_call *g, const gemm_call *g2, gemm_fast_buffers *buf, int64_t m)
{
    if (g2 && (g2->m != g->m || g2->n != g->n || g2->k > KC || g2->k < 1))
        return -1;
    return gemm_fast_reserve(buf, m) || (g2 && reserve_tail(buf, m)) ? -1 : 0;
}

int gemm_fast2(const gemm_call *g, const gemm_call *g2, gemm_fast_buffers *buf, void *pool,
               void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *))
{
    if (gemm_fast2_prepare(g, g2, buf, g->m))
        return -1;
    int32_t tasks = (int32_t)((g->m + MC - 1) / MC);
    gemm_scale_c(g->c, g->m, g->n, g->ldc, g->beta, pool, parallel_for);
    /* k blocks outermost: op(A) is packed once per k block (not once per n block), and every
       element of C still accumulates its k blocks in increasing order; the tail product after
       the last */
    int64_t kb = k_block(g->k);
    for (int64_t k0 = 0; k0 < g->k; k0 += kb) {
        int64_t kc = g->k - k0 < kb ? g->k - k0 : kb;
        struct fast_args ft = {g2, 0, g2 ? g2->k : 0, 0, 0, buf->b2, buf->a2, buf->b2, NULL};
        struct fast_args fa = {g, k0, kc, 0, 0, buf->b, buf->a, buf->b, g2 && k0 + kc >= g->k ? &ft : NULL};
        parallel_for(pool, tasks, pack_a_task, &fa);
        for (int64_t n0 = 0; n0 < g->n; n0 += NC) {
            fa.n0 = ft.n0 = n0;
            fa.nc = ft.nc = g->n - n0 < NC ? g->n - n0 : NC;
            int64_t panels = (fa.nc + NR - 1) / NR;
            int32_t groups = (int32_t)((panels + B_PANELS_PER_TASK - 1) / B_PANELS_PER_TASK);
            if (g->n >= GEMM_WIDE_N) {
                parallel_for(pool, groups, col_task, &fa);
                continue;
            }
            parallel_for(pool, groups, pack_b_task, &fa);
            parallel_for(pool, tasks, row_task, &fa);
        }
    }
    return 0;
}

/* K in blocks of NARROW_KC: the block's packed op(B) rows (16 KiB) stay in L1 while the task's
   row tiles run over them, and the rows of op(A) a block reads span few pages */
#define NARROW_KC 256

static void narrow_task(void *vp, int32_t task)
{
    const struct fast_args *a = vp;
    const gemm_call *g = a->g;
    int64_t i0 = (int64_t)task * MC, mc = g->m - i0 < MC ? g->m - i0 : MC;
    int64_t si = g->ta ? 1 : g->lda, sp = g->ta ? g->lda : 1;
    int R = panel_rows(), nr = (int)g->n;
    for (int64_t k0 = 0; k0 < g->k; k0 += NARROW_KC) {
        int64_t kc = g->k - k0 < NARROW_KC ? g->k - k0 : NARROW_KC;
        int store = k0 == 0 && g->beta == 0.0f; /* the first k block writes C instead of adding */
        for (int64_t ir = 0; ir < mc; ir += R) {
            int mr = (int)(mc - ir < R ? mc - ir : R);
            const float *ap = g->a + (i0 + ir) * si + k0 * sp, *bp = a->bp + k0 * NR;
            float *ct = g->tc ? g->c + i0 + ir : g->c + (i0 + ir) * g->ldc;
#ifdef KERNEL_WIDE
            if (R == MR_WIDE) {
                narrow_kernel_wide(kc, ap, si, sp, bp, ct, g->ldc, g->alpha, mr, nr, store, g->tc);
                continue;
            }
#endif
            narrow_kernel(kc, ap, si, sp, bp, ct, g->ldc, g->alpha, mr, nr, store, g->tc);
        }
    }
}

/* op(A) = A^T (A stored K x M): C rows i += A[p][i] op(B)[p] for p in order, NT_P rows of A at
   a time, each read contiguously (a 16-row tile over K read one 64-byte piece of every row of
   A: a large stride, at about 20 GFLOP/s); the task's NT_ROWS x 16 block of C is summed in a
   buffer in L1 */
#define NT_ROWS 128
#define NT_P 8
#define NT_I 8

KERNEL_CLONES
static void narrow_t_rows(const gemm_call *g, const float *bp, int64_t i0, int64_t mc, float *buf)
{
    memset(buf, 0, (size_t)mc * NR * sizeof *buf);
    int64_t p = 0;
    for (; p + NT_P <= g->k; p += NT_P) {
        v16 bv[NT_P];
        for (int q = 0; q < NT_P; q++)
            memcpy(&bv[q], bp + (p + q) * NR, sizeof bv[q]);
        const float *ar = g->a + p * g->lda + i0;
        int64_t i = 0, ahead = p + 2 * NT_P <= g->k; /* the next NT_P rows exist */
        for (; i + NT_I <= mc; i += NT_I) { /* NT_I independent chains hide the FMA latency */
            v16 c[NT_I];
            memcpy(c, buf + i * NR, sizeof c);
            for (int q = 0; q < NT_P && ahead; q++) /* the next rows' pieces (short streams) */
                __builtin_prefetch(ar + (q + NT_P) * g->lda + i);
            for (int q = 0; q < NT_P; q++)
                for (int r = 0; r < NT_I; r++)
                    c[r] += ar[q * g->lda + i + r] * bv[q];
            memcpy(buf + i * NR, c, sizeof c);
        }
        for (; i < mc; i++) {
            v16 c;
            memcpy(&c, buf + i * NR, sizeof c);
            for (int q = 0; q < NT_P; q++)
                c += ar[q * g->lda + i] * bv[q];
            memcpy(buf + i * NR, &c, sizeof c);
        }
    }
    for (; p < g->k; p++) {
        v16 bv;
        memcpy(&bv, bp + p * NR, sizeof bv);
        const float *ar = g->a + p * g->lda + i0;
        for (int64_t i = 0; i < mc; i++) {
            v16 c;
            memcpy(&c, buf + i * NR, sizeof c);
            c += ar[i] * bv;
            memcpy(buf + i * NR, &c, sizeof c);
        }
    }
}

static void narrow_t_task(void *vp, int32_t task)
{
    const struct fast_args *a = vp;
    const gemm_call *g = a->g;
    int64_t i0 = (int64_t)task * NT_ROWS, mc = g->m - i0 < NT_ROWS ? g->m - i0 : NT_ROWS;
    float buf[NT_ROWS * NR];
    narrow_t_rows(g, a->bp, i0, mc, buf);
    int store = g->beta == 0.0f;
    for (int64_t i = 0; i < mc; i++)
        for (int64_t j = 0; j < g->n; j++) {
            float *c = g->tc ? g->c + j * g->ldc + i0 + i : g->c + (i0 + i) * g->ldc + j;
            *c = (store ? 0.0f : *c) + g->alpha * buf[i * NR + j];
        }
}

int gemm_narrow(const gemm_call *g, gemm_fast_buffers *buf, void *pool,
                void (*parallel_for)(void *, int32_t, void (*)(void *, int32_t), void *))
{
    if (g->n > NR || g->k > (int64_t)KC * NC / NR || gemm_fast_reserve(buf, 1))
        return -1;
    int32_t tasks = (int32_t)((g->m + MC - 1) / MC);
    if (g->tc)
        gemm_scale_c(g->c, g->n, g->m, g->ldc, g->beta, pool, parallel_for);
    else
        gemm_scale_c(g->c, g->m, g->n, g->ldc, g->beta, pool, parallel_for);
    struct fast_args fa = {g, 0, g->k, 0, g->n, buf->b, buf->a, buf->b, NULL};
    pack_b_task(&fa, 0); /* one NR-column panel of the whole K */
    if (g->ta)
        parallel_for(pool, (int32_t)((g->m + NT_ROWS - 1) / NT_ROWS), narrow_t_task, &fa);
    else
        parallel_for(pool, tasks, narrow_task, &fa);
    return 0;
}
