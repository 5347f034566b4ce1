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
} lora_view;

void linear_forward(peft_model *m, float *y, const float *x, const float *W, int64_t N, int in,
                    int out, const lora_view *lv, float *xa, float *tmp);
void linear_backward(peft_model *m, float *dx, float beta_dx, const float *dy, const float *x,
                     const float *W, int64_t N, int in, int out, const lora_view *lv,
                     const float *xa, float *dxa, float *tmp);

/* The LoRA branch of (layer, kind) of the model's attachment, or NULL (forward.c). */
const lora_view *peft__view_of(peft_model *m, lora_view *lv, int layer, int kind, int train);

#endif
