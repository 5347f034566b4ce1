/*
 * A small persistent thread pool owned by a model handle (no global state).
 * peft__pool_for(pool, n, fn, arg) runs fn(arg, i) for every i in [0, n);
 * the calling thread takes part. Tasks are handed out through an atomic
 * counter, in runs of consecutive tasks where there are many; every task
 * writes its own outputs, so results never depend on the number of threads
 * or on scheduling.
 *
 * A training step hands out thousands of jobs, many of a few tens of
 * microseconds, with short serial stretches between them. Waking a sleeping
 * thread costs about as much on a virtual machine (a futex call and an
 * interrupt to the other core), so a worker that has finished a job watches
 * for the next one for a short while (SPIN_NS) before it sleeps on the
 * condition variable, and the caller watches for the workers' end the same
 * way, yielding the processor between polls. A pool with more threads than the
 * processors this process may run on never watches.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SPIN_NS 200000 /* how long a thread watches before it sleeps */

struct peft_pool {
    int n_threads; /* including the caller */
    int spin;      /* watch before sleeping (threads <= processors) */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_uint_fast64_t generation; /* bumped once per job, after the job is set */
    atomic_int stop;
    atomic_int sleepers;       /* workers in (or about to enter) the wake wait */
    atomic_int caller_waiting; /* the caller is in (or about to enter) the done wait */
    /* current job */
    void (*fn)(void *, int32_t);
    void *arg;
    int32_t n, grab; /* tasks, and tasks taken at a time */
    atomic_int active; /* workers still running the current job */
    /* the counter the threads take tasks from, alone on its cache line: every take writes it,
       and the fields above, which every thread reads as it joins a job, are kept off that line */
    char pad0[64];
    atomic_int next;
    char pad1[64];
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Watches until done(p, arg) holds or SPIN_NS pass; returns whether it holds. Between polls the
   thread yields its processor: where other processes' threads wait for it (two training runs
   on two cores, four threads), they run, and the watch costs them little; where none waits,
   sched_yield returns at once. */
static int spin_until(peft_pool *p, int (*done)(peft_pool *, const void *), const void *arg)
{
    if (!p->spin)
        return done(p, arg);
    int64_t deadline = now_ns() + SPIN_NS;
    while (!done(p, arg)) {
        if (now_ns() > deadline)
            return 0;
        sched_yield();
    }
    return 1;
}

static int job_posted(peft_pool *p, const void *seen)
{
    return atomic_load_explicit(&p->generation, memory_order_acquire) != *(const uint64_t *)seen ||
           atomic_load_explicit(&p->stop, memory_order_relaxed);
}

static int workers_done(peft_pool *p, const void *unused)
{
    (void)unused;
    return atomic_load_explicit(&p->active, memory_order_acquire) == 0;
}

static void run_tasks(peft_pool *p)
{
    void (*fn)(void *, int32_t) = p->fn;
    void *arg = p->arg;
    int32_t n = p->n, grab = p->grab;
    for (;;) {
        int32_t i = atomic_fetch_add_explicit(&p->next, grab, memory_order_relaxed);
        if (i >= n)
            break;
        for (int32_t end = n - i < grab ? n : i + grab; i < end; i++)
            fn(arg, i);
    }
}

static void *worker_main(void *vp)
{
    peft_pool *p = vp;
    uint64_t seen = 0;
    for (;;) {
        if (!spin_until(p, job_posted, &seen)) {
            /* sleep: announce it first, so that a job posted from now on wakes this thread
               (the caller reads sleepers after it bumps generation; this thread bumps
               sleepers before it reads generation: one of the two sees the other) */
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (!job_posted(p, &seen))
                pthread_cond_wait(&p->wake, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        run_tasks(p);
        /* the same handshake for the end of the job, with the caller's caller_waiting */
        if (atomic_fetch_sub(&p->active, 1) == 1 && atomic_load(&p->caller_waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

int peft__cpu_count(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set); /* what taskset or a container's cpuset leaves to this process */
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int peft__pool_create(peft_pool **out, int n_threads)
{
    *out = NULL;
    if (n_threads < 1)
        n_threads = 1;
    peft_pool *p = calloc(1, sizeof *p);
    if (!p)
        return peft__fail(PEFT_ENOMEM, "thread pool: out of memory");
    p->n_threads = 1;
    p->spin = n_threads <= peft__cpu_count();
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads) {
            peft__pool_destroy(p);
            return peft__fail(PEFT_ENOMEM, "thread pool: out of memory");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
                peft__pool_destroy(p);
                return peft__fail(PEFT_EIO, "thread pool: cannot start thread %d of %d", i + 2,
                                  n_threads);
            }
            p->n_threads++;
        }
    }
    *out = p;
    return PEFT_OK;
}

void peft__pool_destroy(peft_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads - 1; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int peft__pool_threads(const peft_pool *p) { return p ? p->n_threads : 1; }

void peft__pool_for(void *vp, int32_t n, void (*fn)(void *arg, int32_t i), void *arg)
{
    peft_pool *p = vp;
    if (n <= 0)
        return;
    if (!p || p->n_threads == 1 || n == 1) {
        for (int32_t i = 0; i < n; i++)
            fn(arg, i);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    /* many small tasks (a row each: RoPE, norms, cross-entropy) are taken in runs of about
       1/32 of a thread's share, not one by one: each take is a write to the counter's line that
       the other cores must fetch (RoPE's row tasks took 3.3x the processor time on two threads
       that they took on one); jobs of up to 32 tasks a thread (the GEMMs' row and column
       tasks) are still taken one by one */
    p->grab = n / (p->n_threads * 32) > 1 ? n / (p->n_threads * 32) : 1;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->active, p->n_threads - 1, memory_order_relaxed);
    atomic_fetch_add(&p->generation, 1); /* publishes the job (sequentially consistent) */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    run_tasks(p);
    if (spin_until(p, workers_done, NULL))
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->caller_waiting, 1);
    while (atomic_load(&p->active) > 0)
        pthread_cond_wait(&p->done, &p->mu);
    atomic_store(&p->caller_waiting, 0);
    pthread_mutex_unlock(&p->mu);
}
