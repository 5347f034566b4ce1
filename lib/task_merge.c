/*
 * The task-arithmetic merges of PEFT's add_weighted_adapter (peft/utils/merge_utils.py's
 * formulas): n task tensors of len values each, weights w_i, into one tensor.
 *
 *   prune:  magnitude: keep the k = floor(density len) largest |x| (ties: the lower index first);
 *           random (DARE): keep each value with probability density, then divide by density.
 *           density >= 1 prunes nothing.
 *   elect:  majority sign per element: sign(sum_i p_i) (total) or sign(sum_i sign(p_i))
 *           (frequency); zero counts as +.
 *   merge:  task arithmetic sum_i w_i p_i, or (ties) the disjoint mean
 *           sum_i w_i p_i [sign p_i = elected] / max(1, #{i: sign p_i = elected}).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

typedef struct {
    float mag;
    uint32_t idx;
} ranked;

static int by_magnitude(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    if (a->mag != b->mag)
        return a->mag > b->mag ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* x: keep its k largest magnitudes, zero the rest; rk: len scratch entries */
static void magnitude_prune(float *x, size_t len, double density, ranked *rk)
{
    size_t k = (size_t)(density * (double)len);
    for (size_t j = 0; j < len; j++) {
        rk[j].mag = fabsf(x[j]);
        rk[j].idx = (uint32_t)j;
    }
    qsort(rk, len, sizeof *rk, by_magnitude);
    for (size_t j = k; j < len; j++)
        x[rk[j].idx] = 0.0f;
}

static void random_prune(float *x, size_t len, double density, peft_rng *rng)
{
    for (size_t j = 0; j < len; j++)
        x[j] = peft__rng_uniform(rng) < density ? (float)(x[j] / density) : 0.0f;
}

static int sgn(float v) { return (v > 0) - (v < 0); }

int peft__task_merge(float *out, float *const *t, const double *w, int n, size_t len, int prune, int ties,
                     double density, int frequency, uint64_t seed)
{
    if (len > UINT32_MAX)
        return peft__fail(PEFT_EINVAL, "task merge: a tensor of %zu values is too large", len);
    if (prune != PEFT__PRUNE_NONE && density < 1.0) {
        ranked *rk = prune == PEFT__PRUNE_MAGNITUDE ? malloc(len * sizeof *rk) : NULL;
        if (prune == PEFT__PRUNE_MAGNITUDE && !rk)
            return peft__fail(PEFT_ENOMEM, "task merge: out of memory");
        for (int i = 0; i < n; i++) {
            if (prune == PEFT__PRUNE_MAGNITUDE) {
                magnitude_prune(t[i], len, density, rk);
            } else {
                peft_rng rng;
                peft__rng_seed(&rng, seed ^ peft__hash64((uint64_t)i + 1));
                random_prune(t[i], len, density, &rng);
            }
        }
        free(rk);
    }
    for (size_t j = 0; j < len; j++) {
        double acc = 0;
        if (!ties) {
            for (int i = 0; i < n; i++)
                acc += w[i] * t[i][j];
            out[j] = (float)acc;
            continue;
        }
        double total = 0;
        for (int i = 0; i < n; i++)
            total += frequency ? sgn(t[i][j]) : t[i][j];
        int elected = total >= 0 ? 1 : -1, kept = 0;
        for (int i = 0; i < n; i++)
            if (sgn(t[i][j]) == elected) {
                acc += w[i] * t[i][j];
                kept++;
            }
        out[j] = (float)(acc / (kept > 1 ? kept : 1));
    }
    return PEFT_OK;
}

/* torch.quantile's linear interpolation of the sorted values at q */
static int by_value(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

int peft__clamp_quantile(float *a, size_t na, float *b, size_t nb, double q)
{
    size_t n = na + nb;
    float *all = malloc(n * sizeof *all);
    if (!all)
        return peft__fail(PEFT_ENOMEM, "svd clamp: out of memory");
    memcpy(all, a, na * sizeof *a);
    memcpy(all + na, b, nb * sizeof *b);
    qsort(all, n, sizeof *all, by_value);
    double pos = q * (double)(n - 1);
    size_t lo = (size_t)floor(pos), hi = lo + 1 < n ? lo + 1 : lo;
    float top = (float)(all[lo] + (pos - (double)lo) * (all[hi] - all[lo]));
    free(all);
    for (size_t j = 0; j < na; j++)
        a[j] = fminf(fmaxf(a[j], -top), top);
    for (size_t j = 0; j < nb; j++)
        b[j] = fminf(fmaxf(b[j], -top), top);
    return PEFT_OK;
}
