/*
 * PiSSA and OLoRA initialisation (PEFT's init_lora_weights "pissa" and "olora"): the adapter
 * starts as the principal part of each adapted weight, and the frozen weight becomes the
 * residual.
 *
 * PiSSA: W = U S V^T; A = diag(sqrt(S_r / s)) V_r^T, B = U_r diag(sqrt(S_r / s)), residual
 * W - s B A = W - U_r S_r V_r^T. The top-r singular triplets come from a subspace iteration
 * (block power method with Rayleigh-Ritz) with oversampling, run until the Ritz values settle
 * to float precision (at most 100 steps), from a seeded start: deterministic, and the top part
 * of a full SVD where the spectrum has a top part to speak of.
 *
 * OLoRA: W = Q R by Householder reflections with LAPACK's sign convention (R_jj = -sign(a_jj)
 * ||a||); B = Q[:, :r], A = R[:r, :], residual W - s B A.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

/* Orthonormalise the q columns of Y (n x q, row-major) in place: modified Gram-Schmidt,
   twice, in double (w: n doubles). A column that vanishes becomes a unit vector. */
static void orthonormalise(float *Y, int64_t n, int q, double *w)
{
    for (int j = 0; j < q; j++) {
        for (int64_t i = 0; i < n; i++)
            w[i] = Y[i * q + j];
        for (int pass = 0; pass < 2; pass++)
            for (int k = 0; k < j; k++) {
                double d = 0;
                for (int64_t i = 0; i < n; i++)
                    d += w[i] * Y[i * q + k];
                for (int64_t i = 0; i < n; i++)
                    w[i] -= d * Y[i * q + k];
            }
        double nn = 0;
        for (int64_t i = 0; i < n; i++)
            nn += w[i] * w[i];
        nn = sqrt(nn);
        if (nn < 1e-30) { /* degenerate: any direction not yet taken (j < n) */
            for (int64_t i = 0; i < n; i++)
                w[i] = i == j % n ? 1.0 : 0.0;
            nn = 1.0;
        }
        for (int64_t i = 0; i < n; i++)
            Y[i * q + j] = (float)(w[i] / nn);
    }
}

/* Eigen-decomposition of the symmetric q x q matrix C (double, destroyed) by cyclic Jacobi:
   eigenvalues in lam, eigenvectors in the columns of E, sorted by decreasing eigenvalue. */
static void jacobi_eigen(double *C, int q, double *lam, double *E)
{
    for (int i = 0; i < q; i++)
        for (int j = 0; j < q; j++)
            E[i * q + j] = i == j;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < q; i++)
            for (int j = 0; j < q; j++) {
                double c2 = C[i * q + j] * C[i * q + j];
                if (i == j)
                    diag += c2;
                else
                    off += c2;
            }
        if (off <= 1e-30 * diag || off == 0)
            break;
        for (int p = 0; p < q; p++)
            for (int r = p + 1; r < q; r++) {
                double apr = C[p * q + r];
                if (fabs(apr) < 1e-300)
                    continue;
                double theta = (C[r * q + r] - C[p * q + p]) / (2 * apr);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < q; k++) { /* columns p, r */
                    double a = C[k * q + p], b = C[k * q + r];
                    C[k * q + p] = cs * a - sn * b;
                    C[k * q + r] = sn * a + cs * b;
                }
                for (int k = 0; k < q; k++) { /* rows p, r */
                    double a = C[p * q + k], b = C[r * q + k];
                    C[p * q + k] = cs * a - sn * b;
                    C[r * q + k] = sn * a + cs * b;
                }
                for (int k = 0; k < q; k++) {
                    double a = E[k * q + p], b = E[k * q + r];
                    E[k * q + p] = cs * a - sn * b;
                    E[k * q + r] = sn * a + cs * b;
                }
            }
    }
    for (int i = 0; i < q; i++)
        lam[i] = C[i * q + i];
    for (int i = 0; i < q; i++) { /* selection sort, descending, columns of E along */
        int best = i;
        for (int j = i + 1; j < q; j++)
            if (lam[j] > lam[best])
                best = j;
        if (best == i)
            continue;
        double t = lam[i];
        lam[i] = lam[best];
        lam[best] = t;
        for (int k = 0; k < q; k++) {
            t = E[k * q + i];
            E[k * q + i] = E[k * q + best];
            E[k * q + best] = t;
        }
    }
}

/* PiSSA factors of W (out x in, float32): A (r x in), B (out x r) for scale s. */
int peft__svd_factors(peft_model *m, const float *W, int out, int in, int r, float s, uint64_t seed, float *A,
                      float *B)
{
    int k = out < in ? out : in;
    int q = 2 * r + 8 < k ? 2 * r + 8 : k; /* oversampling: the iteration converges as (s_q / s_r)^2 per step */
    int64_t nmax = out > in ? out : in;
    float *Y = peft__alloc_floats((size_t)out * q), *Z = peft__alloc_floats((size_t)in * q);
    float *Bs = peft__alloc_floats((size_t)q * in);
    double *w = malloc((size_t)nmax * sizeof *w), *C = malloc((size_t)q * q * sizeof *C);
    double *E = malloc((size_t)q * q * sizeof *E), *lam = malloc((size_t)q * sizeof *lam);
    double *prev = calloc((size_t)q, sizeof *prev);
    int code = PEFT_OK;
    if (!Y || !Z || !Bs || !w || !C || !E || !lam || !prev) {
        code = peft__fail(PEFT_ENOMEM, "PiSSA: out of memory");
        goto done;
    }
    peft_rng rng;
    peft__rng_seed(&rng, seed);
    for (size_t i = 0; i < (size_t)in * q; i++)
        Z[i] = (float)peft__rng_normal(&rng);
    peft__gemm(m, 0, 0, out, q, in, 1.0f, W, in, Z, q, 0.0f, Y, q); /* Y = W Z */
    orthonormalise(Y, out, q, w);
    for (int it = 0;; it++) {
        /* Rayleigh-Ritz on span(Y): Bs = Y^T W (q x in), C = Bs Bs^T = E diag(lam) E^T */
        peft__gemm(m, 1, 0, q, in, out, 1.0f, Y, q, W, in, 0.0f, Bs, in);
        for (int i = 0; i < q; i++)
            for (int j = 0; j <= i; j++) {
                double d = 0;
                for (int c = 0; c < in; c++)
                    d += (double)Bs[(int64_t)i * in + c] * Bs[(int64_t)j * in + c];
                C[i * q + j] = C[j * q + i] = d;
            }
        jacobi_eigen(C, q, lam, E);
        /* done when the top r Ritz values settle (to about float precision), when the basis
           spans everything (q = k), or after 100 steps: a flat spectrum (random weights) has
           no distinguished top part; the residual stays exact either way */
        double change = 0;
        for (int j = 0; j < r; j++) {
            double sv = sqrt(lam[j] > 0 ? lam[j] : 0);
            change = fmax(change, fabs(sv - prev[j]));
            prev[j] = sv;
        }
        if (q == k || it >= 100 || (it >= 2 && change <= 1e-7 * prev[0]))
            break;
        peft__gemm(m, 1, 0, in, q, out, 1.0f, W, in, Y, q, 0.0f, Z, q); /* Z = W^T Y */
        orthonormalise(Z, in, q, w);
        peft__gemm(m, 0, 0, out, q, in, 1.0f, W, in, Z, q, 0.0f, Y, q); /* Y = W Z */
        orthonormalise(Y, out, q, w);
    }
    for (int j = 0; j < r; j++) {
        double sv = sqrt(lam[j] > 0 ? lam[j] : 0), g = sqrt(sv / s);
        /* U_j = Y E_j (out), V_j = Bs^T E_j / sv (in) */
        for (int64_t i = 0; i < out; i++) {
            double u = 0;
            for (int t = 0; t < q; t++)
                u += (double)Y[i * q + t] * E[t * q + j];
            B[i * r + j] = (float)(u * g);
        }
        for (int c = 0; c < in; c++) {
            double v = 0;
            for (int t = 0; t < q; t++)
                v += (double)Bs[(int64_t)t * in + c] * E[t * q + j];
            A[(int64_t)j * in + c] = sv > 0 ? (float)(v / sv * g) : 0.0f;
        }
    }
done:
    peft__free(Y);
    peft__free(Z);
    peft__free(Bs);
    free(w);
    free(C);
    free(E);
    free(lam);
    free(prev);
    return code;
}

/* OLoRA factors of W (out x in): the first r Householder steps of W = Q R. */
static int olora_factors(const float *W, int out, int in, int r, float *A, float *B)
{
    double *R = malloc((size_t)out * in * sizeof *R), *V = malloc((size_t)out * r * sizeof *V);
    double *tau = malloc((size_t)r * sizeof *tau), *e = malloc((size_t)out * sizeof *e);
    if (!R || !V || !tau || !e) {
        free(R);
        free(V);
        free(tau);
        free(e);
        return peft__fail(PEFT_ENOMEM, "OLoRA: out of memory");
    }
    for (size_t i = 0; i < (size_t)out * in; i++)
        R[i] = W[i];
    for (int j = 0; j < r; j++) {
        /* the reflector H_j = I - tau v v^T (v_j = 1) zeroing column j below the diagonal */
        double xnorm = 0; /* below the diagonal */
        for (int i = j + 1; i < out; i++)
            xnorm += R[(int64_t)i * in + j] * R[(int64_t)i * in + j];
        xnorm = sqrt(xnorm);
        double alpha = R[(int64_t)j * in + j];
        for (int i = 0; i < out; i++)
            V[(int64_t)i * r + j] = 0;
        V[(int64_t)j * r + j] = 1;
        if (xnorm == 0) { /* LAPACK's dlarfg: H = I */
            tau[j] = 0;
            continue;
        }
        double beta = -copysign(hypot(alpha, xnorm), alpha); /* R_jj = -sign(alpha) ||x|| */
        tau[j] = (beta - alpha) / beta;
        for (int i = j + 1; i < out; i++)
            V[(int64_t)i * r + j] = R[(int64_t)i * in + j] / (alpha - beta);
        for (int c = j; c < in; c++) { /* R = H_j R */
            double d = 0;
            for (int i = j; i < out; i++)
                d += V[(int64_t)i * r + j] * R[(int64_t)i * in + c];
            d *= tau[j];
            for (int i = j; i < out; i++)
                R[(int64_t)i * in + c] -= d * V[(int64_t)i * r + j];
        }
    }
    for (int j = 0; j < r; j++) /* A = R[:r] (upper triangular part kept, below it zero) */
        for (int c = 0; c < in; c++)
            A[(int64_t)j * in + c] = c >= j ? (float)R[(int64_t)j * in + c] : 0.0f;
    for (int j = 0; j < r; j++) { /* B[:, j] = H_0 ... H_{r-1} e_j */
        for (int i = 0; i < out; i++)
            e[i] = i == j;
        for (int h = r - 1; h >= 0; h--) {
            double d = 0;
            for (int i = h; i < out; i++)
                d += V[(int64_t)i * r + h] * e[i];
            d *= tau[h];
            for (int i = h; i < out; i++)
                e[i] -= d * V[(int64_t)i * r + h];
        }
        for (int i = 0; i < out; i++)
            B[(int64_t)i * r + j] = (float)e[i];
    }
    free(R);
    free(V);
    free(tau);
    free(e);
    return PEFT_OK;
}

int peft__pissa_init(lora_state *l, const peft_model *cm)
{
    peft_model *m = (peft_model *)cm; /* the GEMMs run on the model's backend and threads */
    if (!(l->res = calloc((size_t)l->n_modules, sizeof *l->res)) ||
        !(l->init_ab = peft__alloc_floats(l->mods_end ? l->mods_end : 1)))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", l->init == PEFT_INIT_PISSA ? "PiSSA" : "OLoRA");
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        float *R = peft__alloc_floats((size_t)md->out * (size_t)md->in);
        if (!R)
            return peft__fail(PEFT_ENOMEM, "PiSSA/OLoRA: out of memory for the residual weights");
        l->res[i] = (peft_w){.f = R, .rows = md->out, .cols = md->in};
        peft__w_rows(m, &m->layers[md->layer].w[md->kind], 0, md->out, R); /* W, dequantized if need be */
        float *A = l->params + md->off_a, *B = l->params + md->off_b;
        int k = md->out < md->in ? md->out : md->in;
        if (md->r > k)
            return peft__fail(PEFT_EINVAL, "%s: rank %d exceeds min(out, in) = %d of layer %d's %s",
                              l->init == PEFT_INIT_PISSA ? "PiSSA" : "OLoRA", md->r, k, md->layer,
                              peft__mod_name(&m->cfg, md->kind));
        int code = l->init == PEFT_INIT_PISSA
                       ? peft__svd_factors(m, R, md->out, md->in, md->r, md->scale,
                                       l->seed ^ peft__hash64(((uint64_t)md->layer << 8) | (uint64_t)md->kind), A, B)
                       : olora_factors(R, md->out, md->in, md->r, A, B);
        if (code)
            return code;
        /* the residual: W - s B A */
        peft__gemm(m, 0, 0, md->out, md->in, md->r, -md->scale, B, md->r, A, md->in, 1.0f, R, md->in);
    }
    memcpy(l->init_ab, l->params, l->mods_end * sizeof(float));
    return PEFT_OK;
}
