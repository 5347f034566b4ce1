/* Finite differences of a model's loss with respect to its adapter parameters (the parameter
   block of peft_param_buffer), shared by the API, method and golden tests. */
#ifndef PEFT_TESTS_FD_HELPERS_H
#define PEFT_TESTS_FD_HELPERS_H

#include <math.h>
#include <stdio.h>

#include "harness.h"
#include "peft/peft.h"

/* d(summed loss of b) / d p[i] by central differences of step h; p[i] is restored */
static inline double fd_param(peft_model *m, const peft_batch *b, float *p, size_t i, float h)
{
    float save = p[i];
    peft_eval_result ep = PEFT_EVAL_RESULT_INIT, em = PEFT_EVAL_RESULT_INIT;
    p[i] = save + h;
    CHECK_OK(peft_eval(m, b, &ep));
    p[i] = save - h;
    CHECK_OK(peft_eval(m, b, &em));
    p[i] = save;
    return (ep.loss_sum - em.loss_sum) / (2.0 * h);
}

/* The analytic gradient ga (n floats) against central differences (step 1e-2) at every
   stride-th parameter of p: returns how many are off by more than 2e-3 of the largest gradient
   plus 2% of the value (the first five reported under `what`); *checked counts the parameters
   compared, *nonzero those whose numeric gradient exceeds 1e-3 of the largest */
static inline int fd_sweep(peft_model *m, const peft_batch *b, float *p, const float *ga, size_t n, size_t stride,
                           const char *what, int *checked, int *nonzero)
{
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(ga[i]));
    int bad = 0;
    *checked = *nonzero = 0;
    for (size_t i = 0; i < n; i += stride) {
        double num = fd_param(m, b, p, i, 1e-2f);
        (*checked)++;
        *nonzero += fabs(num) > 1e-3 * gmax;
        if (fabs(num - ga[i]) > 2e-3 * gmax + 2e-2 * fabs(num) && bad++ < 5)
            fprintf(stderr, "%s: param %zu of %zu: analytic %.6g numeric %.6g\n", what, i, n, ga[i], num);
    }
    return bad;
}

#endif
