/*
 * GEMM throughput of the CPU backend at the shapes of a training step
 * (SmolLM-135M-like: 1024 tokens, hidden 576, intermediate 1536, vocab 49152, LoRA rank 16),
 * the packed kernel against the plain reference loops and, for the products with frozen
 * weights, the BF16-weight kernel (the model's frozen_dtype "bf16"), side by side.
 *   build/bench/bench-gemm [threads [FILTER]]
 * FILTER: only the shapes whose line contains it (e.g. "forward", "lm_head", "x576").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../lib/internal.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static double run(const peft_backend *be, void *ctx, int ta, int tb, int m, int n, int k, float *a, float *b,
                  float *c)
{
    int lda = ta ? m : k, ldb = tb ? k : n;
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t = now();
        be->gemm(ctx, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, n);
        t = now() - t;
        best = t < best ? t : best;
    }
    return 2.0 * m * n * k / best / 1e9;
}

static double run_bf16(const peft_backend *be, void *ctx, int tb, int m, int n, int k, float *a, uint16_t *b,
                       float *c)
{
    double best = 1e9;
    for (int r = 0; r < 5; r++) {
        double t = now();
        be->gemm_bf16(ctx, tb, m, n, k, 1.0f, a, k, b, tb ? k : n, 0.0f, c, n);
        t = now() - t;
        best = t < best ? t : best;
    }
    return 2.0 * m * n * k / best / 1e9;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    peft_pool *pool;
    if (peft__pool_create(&pool, threads))
        return 1;
    peft_backend_host host = {sizeof host, threads, pool, peft__pool_for};
    const peft_backend *be = peft__backend_cpu();
    void *fast, *ref;
    be->init(&fast, &host);
    setenv("PEFT_CPU_REFERENCE", "1", 1);
    be->init(&ref, &host);
    size_t big = (size_t)1024 * 49152;
    float *a = malloc(big * 4), *b = malloc(big * 4), *c = malloc(big * 4);
    uint16_t *bh = malloc(big * 2);
    if (!a || !b || !c || !bh) {
        fprintf(stderr, "bench-gemm: out of memory (%zu MB)\n", big * 14 >> 20);
        return 1;
    }
    for (size_t i = 0; i < big; i++) {
        a[i] = (float)(i % 7) * 0.1f;
        b[i] = (float)(i % 5) * 0.1f;
        bh[i] = peft__f32_to_bf16(b[i]);
    }
    const struct {
        int ta, tb, m, n, k;
        const char *what;
    } cs[] = {
        {0, 1, 1024, 1536, 576, "forward  x W^T    1024x1536x576"},
        {0, 1, 1024, 576, 576, "forward  x W^T    1024x576x576"},
        {0, 1, 1024, 192, 576, "forward  x W^T    1024x192x576"},
        {0, 1, 1024, 576, 1536, "forward  x W^T    1024x576x1536"},
        {0, 0, 1024, 576, 1536, "backward dy W     1024x576x1536"},
        {0, 0, 1024, 1536, 576, "backward dy W     1024x1536x576"},
        {0, 0, 1024, 576, 576, "backward dy W     1024x576x576"},
        {0, 1, 1024, 16, 576, "LoRA     x A^T    1024x16x576"},
        {1, 0, 1536, 16, 1024, "LoRA     dy^T xa  1536x16x1024"},
        {1, 0, 16, 576, 1024, "LoRA     dxa^T x  16x576x1024"},
        {0, 1, 1024, 576, 16, "LoRA     xa B^T   1024x576x16"},
        {0, 1, 1024, 1536, 16, "LoRA     xa B^T   1024x1536x16"},
        {0, 0, 1024, 576, 16, "LoRA     dxa A    1024x576x16"},
        {0, 1, 1024, 49152, 576, "lm_head  x E^T    1024x49152x576"},
        {0, 0, 1024, 576, 49152, "lm_head  dz E     1024x576x49152"},
    };
    const peft_backend *bl = peft__backend_blis();
    void *blctx = NULL;
    if (bl && bl->init(&blctx, &host))
        bl = NULL;
    printf("threads %d: GFLOP/s, best of 5\n%-34s %10s %10s %7s %10s %10s\n", threads, "shape", "packed", "reference",
           "ratio", "bf16 W", bl ? "blis" : "");
    for (size_t q = 0; q < sizeof cs / sizeof cs[0]; q++) {
        if (argc > 2 && !strstr(cs[q].what, argv[2]))
            continue;
        double f = run(be, fast, cs[q].ta, cs[q].tb, cs[q].m, cs[q].n, cs[q].k, a, b, c);
        /* the reference loops would take minutes at the vocabulary's size */
        double r = cs[q].n * (double)cs[q].k < 1e7 ? run(be, ref, cs[q].ta, cs[q].tb, cs[q].m, cs[q].n, cs[q].k, a, b, c)
                                                   : 0.0;
        if (r > 0.0)
            printf("%-34s %10.1f %10.1f %6.1fx", cs[q].what, f, r, f / r);
        else
            printf("%-34s %10.1f %10s %7s", cs[q].what, f, "", "");
        if (!cs[q].ta && cs[q].n > 16)
            printf(" %10.1f", run_bf16(be, fast, cs[q].tb, cs[q].m, cs[q].n, cs[q].k, a, bh, c));
        else
            printf(" %10s", "");
        if (bl)
            printf(" %10.1f", run(bl, blctx, cs[q].ta, cs[q].tb, cs[q].m, cs[q].n, cs[q].k, a, b, c));
        printf("\n");
    }
    if (bl)
        bl->free(blctx);
    be->free(fast);
    be->free(ref);
    peft__pool_destroy(pool);
    free(a), free(b), free(c), free(bh);
    return 0;
}
