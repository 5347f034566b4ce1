/*
 * Reference CPU backend: plain, obviously-correct C. GEMM rows are split
 * into fixed blocks handed to the core's thread pool; each element of C is
 * reduced over K in a fixed order, so results never depend on threads.
 */
#include <stdlib.h>
#include <string.h>

#include "../../lib/internal.h"
#include "gemm_bf16.h"
#include "gemm_fast.h"
#include "peft/backend.h"

typedef struct cpu_ctx {
    peft_backend_host host;
    gemm_fast_buffers fast;
    gemm_fast_buffers *slab; /* n_threads buffers of the slab split (packed_run) */
    int reference; /* PEFT_CPU_REFERENCE=1: plain loops only */
    int bf16_dot;  /* PEFT_CPU_BF16_DOT=1 and AVX512-BF16: BF16 dot products for BF16 weights */
} cpu_ctx;

static int cpu_init(void **ctx, const peft_backend_host *host)
{
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return peft__fail(PEFT_ENOMEM, "cpu backend: out of memory");
    c->host = *host;
    if (host->n_threads > 1 && !(c->slab = calloc((size_t)host->n_threads, sizeof *c->slab))) {
        free(c);
        return peft__fail(PEFT_ENOMEM, "cpu backend: out of memory");
    }
    const char *ref = getenv("PEFT_CPU_REFERENCE");
    c->reference = ref && *ref && strcmp(ref, "0") != 0;
    const char *dot = getenv("PEFT_CPU_BF16_DOT");
    c->bf16_dot = dot && *dot && strcmp(dot, "0") != 0 && gemm_bf16_native();
    *ctx = c;
    return PEFT_OK;
}

static void cpu_free(void *ctx)
{
    cpu_ctx *c = ctx;
    gemm_fast_free(&c->fast);
    for (int32_t i = 0; c->slab && i < c->host.n_threads; i++)
        gemm_fast_free(&c->slab[i]);
    free(c->slab);
    free(c);
}

struct gemm_args {
    int ta, tb;
    int64_t m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
};

#define ROWS 8

static float dot(const float *x, const float *y, int64_t n)
{
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += x[i + j] * y[i + j];
    float t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (; i < n; i++)
        t += x[i] * y[i];
    return t;
}

static float dot_strided(const float *x, int64_t sx, const float *y, int64_t sy, int64_t n)
{
    float t = 0;
    for (int64_t i = 0; i < n; i++)
        t += x[i * sx] * y[i * sy];
    return t;
}

static void gemm_task(void *vp, int32_t task)
{
    const struct gemm_args *g = vp;
    int64_t i0 = (int64_t)task * ROWS, i1 = i0 + ROWS < g->m ? i0 + ROWS : g->m;
    for (int64_t i = i0; i < i1; i++) {
        float *c = g->c + i * g->ldc;
        if (g->beta == 0.0f)
            memset(c, 0, (size_t)g->n * sizeof *c);
        else if (g->beta != 1.0f)
            for (int64_t j = 0; j < g->n; j++)
                c[j] *= g->beta;
        if (!g->tb) {
            /* C[i,:] += alpha * op(A)[i,p] * B[p,:] */
            for (int64_t p = 0; p < g->k; p++) {
                float av = g->alpha * (g->ta ? g->a[p * g->lda + i] : g->a[i * g->lda + p]);
                const float *b = g->b + p * g->ldb;
                for (int64_t j = 0; j < g->n; j++)
                    c[j] += av * b[j];
            }
        } else if (!g->ta) {
            /* C[i,j] += alpha * A[i,:] . B[j,:] */
            const float *a = g->a + i * g->lda;
            for (int64_t j = 0; j < g->n; j++)
                c[j] += g->alpha * dot(a, g->b + j * g->ldb, g->k);
        } else {
            for (int64_t j = 0; j < g->n; j++)
                c[j] += g->alpha * dot_strided(g->a + i, g->lda, g->b + j * g->ldb, 1, g->k);
        }
    }
}

/* g's rows [i0, i0 + rows) as a product of their own */
static gemm_call rows_of(const gemm_call *g, int64_t i0, int64_t rows)
{
    gemm_call r = *g;
    r.m = rows;
    r.a = g->ta ? g->a + i0 : g->a + i0 * g->lda;
    r.c = g->c + i0 * g->ldc;
    return r;
}

struct slab_args {
    cpu_ctx *cc;
    const gemm_call *g, *g2;
    int64_t rows; /* per slab, a multiple of the packed kernel's row block GEMM_MC */
};

static void slab_task(void *vp, int32_t t)
{
    struct slab_args *s = vp;
    int64_t i0 = t * s->rows, rows = s->g->m - i0 < s->rows ? s->g->m - i0 : s->rows;
    if (rows <= 0)
        return;
    gemm_call g = rows_of(s->g, i0, rows), g2 = s->g2 ? rows_of(s->g2, i0, rows) : g;
    /* one thread (the pool's for with no pool runs the tasks in order); prepared: cannot fail */
    (void)gemm_fast2(&g, s->g2 ? &g2 : NULL, &s->cc->slab[t], NULL, peft__pool_for);
}

/* The packed kernel (g, and g2 summed into it when not NULL). With several threads, a product
   narrower than the column tasks' GEMM_WIDE_N and tall enough runs as one slab of rows of C per
   thread, each a one-thread product that packs its own op(B): no synchronisation between its
   k blocks and each thread reads only panels it packed, at the cost of packing op(B) once per
   thread (see bench/RESULTS.md, session 20). The sums are the same, bit for bit. 0, or -1 as
   gemm_fast2. */
static int packed_run(cpu_ctx *cc, const gemm_call *g, const gemm_call *g2)
{
    int32_t th = cc->host.n_threads;
    if (cc->slab && g->n < GEMM_WIDE_N && g->m >= (int64_t)th * 256) { /* slab: only with n_threads > 1 */
        int64_t rows = ((g->m + th - 1) / th + GEMM_MC - 1) / GEMM_MC * GEMM_MC;
        int ready = 1;
        for (int32_t t = 0; t < th && ready; t++) /* every slab's buffers first: C is not touched unless all run */
            ready = gemm_fast2_prepare(g, g2, &cc->slab[t], rows) == 0;
        if (ready) {
            struct slab_args s = {cc, g, g2, rows};
            cc->host.parallel_for(cc->host.pool, th, slab_task, &s);
            return 0;
        }
    }
    return gemm_fast2(g, g2, &cc->fast, cc->host.pool, cc->host.parallel_for);
}

/* The kernel for a product of this shape. Narrow products (n <= 16: LoRA's x A^T, dy B,
   dy^T xa at rank <= 16) read op(A) in place against one packed panel of op(B); m <= 16 ones
   (LoRA's dxa^T x) run as C^T = op(B)^T op(A)^T, a narrow product stored transposed, instead
   of packing all of op(B) for 16 rows of C; the packed kernel pays off once there is enough
   work per packed panel; anything smaller runs as row-by-row dot products. */
static int narrow_shape(int64_t m, int64_t n, int64_t k) { return m >= 16 && n <= 16 && k >= 16; }
static int narrow_t_shape(int64_t m, int64_t n, int64_t k) { return n >= 16 && m <= 16 && k >= 16; }
static int packed_shape(int ta, int tb, int64_t m, int64_t n) { return m >= 16 && n >= 16 && !(n < 32 && !ta && tb); }

static void cpu_gemm(void *ctx, int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha,
                     const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                     int64_t ldc)
{
    cpu_ctx *cc = ctx;
    gemm_call gc = {ta, tb, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c, NULL, 0};
    if (!cc->reference && narrow_shape(m, n, k) &&
        gemm_narrow(&gc, &cc->fast, cc->host.pool, cc->host.parallel_for) == 0)
        return;
    gemm_call gt = {!tb, !ta, n, m, k, ldb, lda, ldc, alpha, beta, b, a, c, NULL, 1};
    if (!cc->reference && narrow_t_shape(m, n, k) &&
        gemm_narrow(&gt, &cc->fast, cc->host.pool, cc->host.parallel_for) == 0)
        return;
    if (!cc->reference && packed_shape(ta, tb, m, n) && packed_run(cc, &gc, NULL) == 0)
        return;
    struct gemm_args g = {ta, tb, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c};
    int32_t tasks = (int32_t)((m + ROWS - 1) / ROWS);
    cc->host.parallel_for(cc->host.pool, tasks, gemm_task, &g);
}

/* whether cpu_gemm runs the term on the packed kernel */
static int term_packed(const peft_gemm_term *t, int64_t m, int64_t n)
{
    return !narrow_shape(m, n, t->k) && !narrow_t_shape(m, n, t->k) && packed_shape(t->trans_a, t->trans_b, m, n);
}

/* A sum of products. Two (LoRA's frozen product and its rank-r term) that cpu_gemm would both
   run on the packed kernel run as one packed product with the second summed into each tile of
   C after the first: the same sums as the two calls, bit for bit. Anything else as one call
   per term. */
static void cpu_gemm_sum(void *ctx, int64_t m, int64_t n, int32_t n_terms, const peft_gemm_term *t, float beta,
                         float *c, int64_t ldc)
{
    cpu_ctx *cc = ctx;
    if (n_terms == 2 && !cc->reference && term_packed(&t[0], m, n) && term_packed(&t[1], m, n)) {
        gemm_call g = {t[0].trans_a, t[0].trans_b, m, n, t[0].k, t[0].lda, t[0].ldb, ldc, t[0].alpha, beta,
                       t[0].a, t[0].b, c, NULL, 0};
        gemm_call g2 = {t[1].trans_a, t[1].trans_b, m, n, t[1].k, t[1].lda, t[1].ldb, ldc, t[1].alpha, 1.0f,
                        t[1].a, t[1].b, c, NULL, 0};
        if (packed_run(cc, &g, &g2) == 0)
            return;
    }
    for (int32_t i = 0; i < n_terms; i++)
        cpu_gemm(ctx, t[i].trans_a, t[i].trans_b, m, n, t[i].k, t[i].alpha, t[i].a, t[i].lda, t[i].b, t[i].ldb,
                 i == 0 ? beta : 1.0f, c, ldc);
}

/* reference: the weights widened to float32 (exact), products summed in k order */
static void bf16_task(void *vp, int32_t task)
{
    const gemm_bf16_call *g = vp;
    int64_t i0 = (int64_t)task * ROWS, i1 = i0 + ROWS < g->m ? i0 + ROWS : g->m;
    for (int64_t i = i0; i < i1; i++)
        for (int64_t j = 0; j < g->n; j++) {
            float t = 0;
            for (int64_t p = 0; p < g->k; p++)
                t += g->a[i * g->lda + p] * peft__bf16_to_f32(g->tb ? g->b[j * g->ldb + p] : g->b[p * g->ldb + j]);
            float *c = g->c + i * g->ldc + j;
            *c = g->alpha * t + (g->beta == 0.0f ? 0.0f : g->beta * *c);
        }
}

/* Products with BFloat16 weights. By default the packed float32 kernel multiplies the
   activations, unrounded, by the weights widened while B is packed; PEFT_CPU_BF16_DOT=1 on a
   processor with AVX512-BF16 rounds the activations to BF16 too and uses its BF16 dot
   products (vdpbf16ps), which are slower than float32 FMAs on some processors (Zen 5: half
   their rate, see bench/RESULTS.md) */
static void cpu_gemm_bf16(void *ctx, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                          int64_t lda, const uint16_t *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    cpu_ctx *cc = ctx;
    gemm_bf16_call g = {tb, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c};
    if (!cc->reference && cc->bf16_dot && gemm_bf16(&g, &cc->fast, cc->host.pool, cc->host.parallel_for) == 0)
        return;
    gemm_call gc = {0, tb, m, n, k, lda, ldb, ldc, alpha, beta, a, NULL, c, b, 0};
    if (!cc->reference && m >= 16 && n >= 16 && k >= 16 && packed_run(cc, &gc, NULL) == 0)
        return;
    int32_t tasks = (int32_t)((m + ROWS - 1) / ROWS);
    cc->host.parallel_for(cc->host.pool, tasks, bf16_task, &g);
}

static const peft_backend cpu_backend = {
    .abi_version = PEFT_BACKEND_ABI_VERSION,
    .struct_size = sizeof(peft_backend),
    .name = "cpu",
    .init = cpu_init,
    .free = cpu_free,
    .gemm = cpu_gemm,
    .gemm_bf16 = cpu_gemm_bf16,
    .gemm_sum = cpu_gemm_sum,
};

const peft_backend *peft__backend_cpu(void) { return &cpu_backend; }
