/*
 * The machine's measured float32 FMA peak: each thread runs a loop of independent fused
 * multiply-adds (24 vector accumulators, more than latency x throughput on current cores) for
 * about half a second, the widest vectors the processor has (AVX-512, else AVX2 with FMA,
 * else scalar C). Prints the median of 5 runs, all threads together, as
 *   {"threads": T, "isa": "avx512", "gflops": G, "runs": [...]}
 *   build/bench/bench-peak [threads]
 * bench/torch_vs_peft.py divides a step's GFLOP/s by this figure.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PEAK_X86 1
#endif

#define CHAINS 24 /* the accumulators, named one by one in EACH */
#define ITERS 4096L

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* 24 named accumulators: an array of them would be kept in memory by the compiler */
#define EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) \
    X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23)

/* Each function runs `rounds` x ITERS x CHAINS FMAs and returns a sum of the accumulators
 * (so that the loop is not removed); the flops per FMA are returned through *flops. */
#ifdef PEAK_X86
__attribute__((target("avx512f"))) static float fma_avx512(long rounds, double *flops)
{
    __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f), s = _mm512_setzero_ps();
#define DECL(i) __m512 a##i = _mm512_set1_ps((float)i);
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, x, y);
#define SUM(i) s = _mm512_add_ps(s, a##i);
    EACH(DECL)
    for (long r = 0; r < rounds * ITERS; r++) {
        EACH(STEP)
    }
    EACH(SUM)
    *flops = 32.0;
    return _mm512_reduce_add_ps(s);
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx2,fma"))) static float fma_avx2(long rounds, double *flops)
{
    __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f), s = _mm256_setzero_ps();
#define DECL(i) __m256 a##i = _mm256_set1_ps((float)i);
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, x, y);
#define SUM(i) s = _mm256_add_ps(s, a##i);
    EACH(DECL)
    for (long r = 0; r < rounds * ITERS; r++) {
        EACH(STEP)
    }
    EACH(SUM)
    float v[8], t = 0.0f;
    _mm256_storeu_ps(v, s);
    for (int i = 0; i < 8; i++)
        t += v[i];
    *flops = 16.0;
    return t;
#undef DECL
#undef STEP
#undef SUM
}
#endif

static float fma_scalar(long rounds, double *flops)
{
    float s = 0.0f;
#define DECL(i) float a##i = (float)i;
#define STEP(i) a##i = a##i * 0.999999f + 1e-7f;
#define SUM(i) s += a##i;
    EACH(DECL)
    for (long r = 0; r < rounds * ITERS; r++) {
        EACH(STEP)
    }
    EACH(SUM)
    *flops = 2.0;
    return s;
#undef DECL
#undef STEP
#undef SUM
}

typedef float (*fma_fn)(long, double *);

static volatile float sink; /* the loops' sums go here, so that they are computed */

struct job {
    fma_fn fn;
    long rounds;
    double flops, seconds;
    float sink;
};

static void *worker(void *p)
{
    struct job *j = p;
    double t = now();
    j->sink = j->fn(j->rounds, &j->flops);
    j->seconds = now() - t;
    j->flops *= (double)j->rounds * ITERS * CHAINS;
    return NULL;
}

/* All threads' flops over the slowest thread's time, in GFLOP/s; -1 if a thread fails. */
static double measure(fma_fn fn, int threads, long rounds)
{
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    struct job *jobs = calloc((size_t)threads, sizeof *jobs);
    double flops = 0.0, seconds = 0.0, result = -1.0;
    int started = 0;
    if (!tid || !jobs)
        goto out;
    for (; started < threads; started++) {
        jobs[started] = (struct job){fn, rounds, 0.0, 0.0, 0.0f};
        if (pthread_create(&tid[started], NULL, worker, &jobs[started]))
            break;
    }
    for (int i = 0; i < started; i++) {
        pthread_join(tid[i], NULL);
        flops += jobs[i].flops;
        seconds = jobs[i].seconds > seconds ? jobs[i].seconds : seconds;
        sink += jobs[i].sink;
    }
    if (started == threads && seconds > 0.0)
        result = flops / seconds / 1e9;
out:
    free(tid);
    free(jobs);
    return result;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 1024) {
        fprintf(stderr, "usage: bench-peak [threads]\n");
        return 2;
    }
    fma_fn fn = fma_scalar;
    const char *isa = "scalar";
#ifdef PEAK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        fn = fma_avx512;
        isa = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        fn = fma_avx2;
        isa = "avx2";
    }
#endif
    /* calibrate one thread's rounds to about half a second */
    long rounds = 1;
    for (;;) {
        double t = now();
        if (measure(fn, 1, rounds) < 0.0)
            return 1;
        t = now() - t;
        if (t > 0.05 || rounds > (1L << 30))
            break;
        rounds *= 2;
    }
    rounds *= 10;
    double runs[5];
    for (int r = 0; r < 5; r++)
        if ((runs[r] = measure(fn, threads, rounds)) < 0.0) {
            fprintf(stderr, "bench-peak: could not start %d threads\n", threads);
            return 1;
        }
    double sorted[5];
    for (int r = 0; r < 5; r++)
        sorted[r] = runs[r];
    qsort(sorted, 5, sizeof *sorted, cmp);
    printf("{\"threads\": %d, \"isa\": \"%s\", \"gflops\": %.1f, \"runs\": [%.1f, %.1f, %.1f, %.1f, %.1f]}\n",
           threads, isa, sorted[2], runs[0], runs[1], runs[2], runs[3], runs[4]);
    return 0;
}
