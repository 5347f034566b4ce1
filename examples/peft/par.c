/* par.h over MPI (PEFT_HAVE_MPI) or over one process. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "par.h"

#ifdef PEFT_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank, g_size = 1, g_mpi;
static double g_comm;

/* The world size an MPI launcher announced to this process (0: not launched by one). */
static int launcher_size(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return atoi(v);
    }
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int par_init(void)
{
    int launched = launcher_size();
#ifdef PEFT_HAVE_MPI
    if (launched <= 0)
        return 0;
    if (MPI_Init(NULL, NULL) != MPI_SUCCESS) {
        fprintf(stderr, "peft: MPI_Init failed\n");
        return -1;
    }
    g_mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    return 0;
#else
    if (launched > 1) {
        fprintf(stderr, "peft: launched as one of %d MPI ranks, but this peft was built without MPI "
                        "(install libopenmpi-dev and configure with -Dmpi=enabled)\n", launched);
        return -1;
    }
    return 0;
#endif
}

void par_finalize(void)
{
#ifdef PEFT_HAVE_MPI
    if (g_mpi)
        MPI_Finalize();
    g_mpi = 0;
#endif
}

int par_rank(void) { return g_rank; }
int par_size(void) { return g_size; }
double par_comm_seconds(void) { return g_comm; }

#ifdef PEFT_HAVE_MPI
/* MPI counts are ints: reduce large buffers in chunks. */
static int sum_chunks(void *buf, size_t n, size_t elem, MPI_Datatype t)
{
    double t0 = now();
    for (size_t off = 0; off < n;) {
        size_t k = n - off > (1u << 30) ? (1u << 30) : n - off;
        if (MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * elem, (int)k, t, MPI_SUM, MPI_COMM_WORLD) !=
            MPI_SUCCESS)
            return -1;
        off += k;
    }
    g_comm += now() - t0;
    return 0;
}
#endif

int par_sum_floats(float *buf, size_t n)
{
#ifdef PEFT_HAVE_MPI
    if (g_size > 1)
        return sum_chunks(buf, n, sizeof *buf, MPI_FLOAT);
#endif
    (void)buf, (void)n;
    return 0;
}

int par_sum_doubles(double *buf, size_t n)
{
#ifdef PEFT_HAVE_MPI
    if (g_size > 1)
        return sum_chunks(buf, n, sizeof *buf, MPI_DOUBLE);
#endif
    (void)buf, (void)n;
    return 0;
}

int par_max_int(int v)
{
#ifdef PEFT_HAVE_MPI
    if (g_size > 1) {
        double t0 = now();
        int out = v;
        MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        g_comm += now() - t0;
        return out;
    }
#endif
    return v;
}

int par_bcast_floats(float *buf, size_t n)
{
#ifdef PEFT_HAVE_MPI
    if (g_size > 1) {
        double t0 = now();
        for (size_t off = 0; off < n;) {
            size_t k = n - off > (1u << 30) ? (1u << 30) : n - off;
            if (MPI_Bcast(buf + off, (int)k, MPI_FLOAT, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
                return -1;
            off += k;
        }
        g_comm += now() - t0;
    }
#endif
    (void)buf, (void)n;
    return 0;
}

void par_abort(void)
{
#ifdef PEFT_HAVE_MPI
    if (g_size > 1) {
        fprintf(stderr, "peft: rank %d of %d failed (see above); stopping all ranks\n", g_rank, g_size);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
#endif
}
