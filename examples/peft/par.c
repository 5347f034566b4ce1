/* par.h over MPI (PEFT_HAVE_MPI) or over one process. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "par.h"

#ifdef PEFT_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank, g_size = 1;
static double g_comm;
#ifdef PEFT_HAVE_MPI
static int g_mpi; /* MPI_Init ran */
#endif

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

#ifdef PEFT_HAVE_MPI
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
#endif

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

#ifdef PEFT_HAVE_MPI
static void overlap_free(void);
#endif

void par_finalize(void)
{
#ifdef PEFT_HAVE_MPI
    overlap_free();
    if (g_mpi)
        MPI_Finalize();
    g_mpi = 0;
#endif
}

int par_rank(void) { return g_rank; }
int par_size(void) { return g_size; }
double par_comm_seconds(void) { return g_comm; }
void par_comm_reset(void) { g_comm = 0; }

#ifdef PEFT_HAVE_MPI
/* MPI counts are ints: sum (or, with bcast, broadcast from rank 0) large buffers in chunks. */
static int chunks(void *buf, size_t n, size_t elem, MPI_Datatype t, int bcast)
{
    double t0 = now();
    for (size_t off = 0; off < n;) {
        size_t k = n - off > (1u << 30) ? (1u << 30) : n - off;
        void *p = (char *)buf + off * elem;
        if ((bcast ? MPI_Bcast(p, (int)k, t, 0, MPI_COMM_WORLD)
                   : MPI_Allreduce(MPI_IN_PLACE, p, (int)k, t, MPI_SUM, MPI_COMM_WORLD)) != MPI_SUCCESS)
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
        return chunks(buf, n, sizeof *buf, MPI_FLOAT, 0);
#endif
    (void)buf, (void)n;
    return 0;
}

int par_sum_doubles(double *buf, size_t n)
{
#ifdef PEFT_HAVE_MPI
    if (g_size > 1)
        return chunks(buf, n, sizeof *buf, MPI_DOUBLE, 0);
#endif
    (void)buf, (void)n;
    return 0;
}

int par_bcast_floats(float *buf, size_t n)
{
#ifdef PEFT_HAVE_MPI
    if (g_size > 1)
        return chunks(buf, n, sizeof *buf, MPI_FLOAT, 1);
#endif
    (void)buf, (void)n;
    return 0;
}

#ifdef PEFT_HAVE_MPI
static struct {
    float *grads, *buf;
    size_t n;
    MPI_Request *req;
    int nreq, cap, failed;
} g_ov;

static void ov_ready(void *user, size_t off, size_t cnt)
{
    (void)user;
    double t0 = now();
    if (g_ov.nreq == g_ov.cap || cnt > INT_MAX || off + cnt > g_ov.n) {
        g_ov.failed = 1;
        return;
    }
    memcpy(g_ov.buf + off, g_ov.grads + off, cnt * sizeof(float));
    if (MPI_Iallreduce(MPI_IN_PLACE, g_ov.buf + off, (int)cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                       &g_ov.req[g_ov.nreq++]) != MPI_SUCCESS)
        g_ov.failed = 1;
    int done; /* drive progress: Open MPI advances non-blocking collectives inside MPI calls */
    MPI_Testall(g_ov.nreq, g_ov.req, &done, MPI_STATUSES_IGNORE);
    g_comm += now() - t0;
}
#endif

#ifdef PEFT_HAVE_MPI
static void overlap_free(void)
{
    free(g_ov.buf);
    free(g_ov.req);
    memset(&g_ov, 0, sizeof g_ov);
}
#endif

int par_overlap_begin(peft_model *m)
{
#ifdef PEFT_HAVE_MPI
    float *g;
    size_t n;
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    if (peft_grad_buffer(&g, &n, m) || peft_model_get_info(m, &info))
        return -1;
    if (n != g_ov.n || !g_ov.buf) {
        free(g_ov.buf);
        g_ov.buf = malloc((n ? n : 1) * sizeof(float));
        g_ov.n = n;
    }
    int cap = info.n_layers + 8; /* one range per layer, then at most two more */
    if (cap > g_ov.cap) {
        free(g_ov.req);
        g_ov.req = malloc((size_t)cap * sizeof *g_ov.req);
        g_ov.cap = g_ov.req ? cap : 0;
    }
    if (!g_ov.buf || !g_ov.req) {
        fprintf(stderr, "peft: out of memory for the all-reduce buffer\n");
        return -1;
    }
    g_ov.grads = g;
    g_ov.nreq = 0;
    g_ov.failed = 0;
    return peft_set_grad_ready(m, ov_ready, NULL) ? -1 : 0;
#else
    (void)m;
    return -1;
#endif
}

int par_overlap_finish(peft_model *m)
{
#ifdef PEFT_HAVE_MPI
    peft_set_grad_ready(m, NULL, NULL);
    double t0 = now();
    int rc = MPI_Waitall(g_ov.nreq, g_ov.req, MPI_STATUSES_IGNORE) == MPI_SUCCESS && !g_ov.failed ? 0 : -1;
    g_comm += now() - t0;
    if (rc == 0)
        memcpy(g_ov.grads, g_ov.buf, g_ov.n * sizeof(float));
    else
        fprintf(stderr, "peft: the overlapped all-reduce failed\n");
    g_ov.nreq = 0;
    return rc;
#else
    (void)m;
    return -1;
#endif
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
