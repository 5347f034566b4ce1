/* Linear layer with an optional LoRA branch (see lora_linear.c). */
#ifndef PEFT_LORA_LINEAR_H
#define PEFT_LORA_LINEAR_H

#include "model.h"

typedef struct lora_view {
    const float *A, *B; /* (r,in), (out,r) */
    float *dA, *dB;     /* gradients, accumulated */
    int r;
    float scale, dropout;
    uint64_t dropout_seed;
    /* DoRA (mag != NULL): y = mag / norm * (W x + s B A x), norm constant in backward */
    const float *mag;   /* (out) */
    float *dmag;        /* (out) gradient, accumulated */
    float *norm;        /* (out) written by the forward */
    float *wtmp;        /* (out, in) scratch */
    float *z;           /* (N, out) pre-scale output kept for backward, or NULL */
    float *dz;          /* (N, out) scratch for backward */
    /* IA3 (ia3 != NULL, no A/B): output scaling y = (W x) * l, or with ia3_ff input
       scaling y = W (x * l); z/dz as for DoRA, tmp holds x * l */
    const float *ia3;
    float *dia3;
    int ia3_ff;
    /* VeRA (lam_b != NULL): A is the shared projection with row stride lda, frozen (dA NULL);
       B = B_eff = lam_b * B[:out] * lam_d (out, r), rebuilt by peft__view_of; dB points to a
       scratch that linear_backward reduces into dlam_b and dlam_d */
    /* LoHa (loha != NULL): w1_a (out, r), w1_b (r, in), w2_a (out, r), w2_b (r, in) contiguous;
       delta W = scale (w1_a w1_b) * (w2_a w2_b); loha_tmp holds 3 out x in scratch matrices */
    const float *loha;
    float *dloha, *loha_tmp;
    int lokr; /* LoKr (with loha/dloha/loha_tmp): w1, then w2 or w2_a, w2_b (lib/model.h lokr_dims) */
    int lda;               /* row stride of A (0: in) */
    const float *vera_B;   /* B[:out] (out, r) */
    const float *lam_b, *lam_d;
    float *dlam_b, *dlam_d;
} lora_view;

void linear_forward(peft_model *m, float *y, const float *x, const peft_w *W, const float *bias, int64_t N,
                    int in, int out, const lora_view *lv, float *xa, float *tmp);
void linear_backward(peft_model *m, float *dx, float beta_dx, const float *dy, const float *x,
                     const peft_w *W, int64_t N, int in, int out, const lora_view *lv,
                     const float *xa, float *dxa, float *tmp);

/* LoHa: W + delta W into dst (out, in), using lv->loha_tmp's second and third matrices. */
void peft__loha_weight(peft_model *m, const lora_view *lv, const float *W, int in, int out, float *dst);
/* LoHa or LoKr (lv->lokr): W + delta W into dst */
void peft__delta_weight(peft_model *m, const lora_view *lv, const float *W, int in, int out, float *dst);

/* The LoRA branch of (layer, kind) of the model's attachment, or NULL (forward.c). */
const lora_view *peft__view_of(peft_model *m, lora_view *lv, int layer, int kind, int train);

#endif
