/*
 * A small persistent thread pool owned by a model handle (no global state).
 * peft__pool_for(pool, n, fn, arg) runs fn(arg, i) for every i in [0, n);
 * the calling thread takes part. Tasks are handed out through an atomic
 * counter; every task writes its own outputs, so results never depend on
 * the number of threads or on scheduling.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"

struct peft_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;
    int stop;
    /* current job */
    void (*fn)(void *, int32_t);
    void *arg;
    int32_t n;
    atomic_int next;
    int active; /* workers still running the current job */
};

static void run_tasks(peft_pool *p)
{
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n)
            break;
        p->fn(p->arg, i);
    }
}

static void *worker_main(void *vp)
{
    peft_pool *p = vp;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop)
            break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_tasks(p);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
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
    p->stop = 1;
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    atomic_store(&p->next, 0);
    p->active = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
