/* Cross-entropy over the vocabulary for one row, with its gradient; dropout masks. */
#include <math.h>

#include "../internal.h"
#include "ops.h"

// logits (V); dlogits (V) = scale * (softmax(logits) - onehot(label)); may alias logits
PEFT_VEC_CLONES double xent_row(float *dlogits, const float *logits, int V, int label, float scale)
{
    float mx = peft__maxf(logits + 1, V - 1, logits[0]);
    /* e^(l - max) in float, summed in 8 double lanes (a fixed order, vectorized) */
    double lanes[8] = {0};
    int i = 0;
    for (; i + 8 <= V; i += 8)
        for (int j = 0; j < 8; j++)
            lanes[j] += (double)peft__expf(logits[i + j] - mx);
    double sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (; i < V; i++)
        sum += (double)peft__expf(logits[i] - mx);
    double lse = mx + log(sum);
    double loss = lse - logits[label]; /* before dlogits, which may alias logits */
    if (dlogits) { /* softmax = e^(l - max) / sum */
        float c = (float)(scale / sum);
        for (i = 0; i < V; i++)
            dlogits[i] = c * peft__expf(logits[i] - mx);
        dlogits[label] -= scale;
    }
    return loss;
}

// row (V): logits soft-capped in place, c = cap tanh(z / cap) (Gemma 2's final_logit_softcapping);
// returns the loss of c; grad: row = d loss / d z = (softmax(c) - onehot(label)) (1 - (c / cap)^2)
PEFT_VEC_CLONES double xent_row_softcap(float *row, int V, int label, float cap, int grad)
{
    peft__softcap(row, V, cap);
    float tl = row[label] / cap;
    double loss = xent_row(NULL, row, V, label, 1.0f);
    if (grad) { /* softmax = e^(c - lse), lse = loss + c[label] */
        float lse = (float)(loss + row[label]);
        for (int i = 0; i < V; i++) {
            float t = row[i] / cap;
            row[i] = peft__expf(row[i] - lse) * (1.0f - t * t);
        }
        row[label] -= 1.0f - tl * tl;
    }
    return loss;
}

float dropout_scale(uint64_t seed, uint64_t idx, float p)
{
    uint64_t h = peft__hash64(seed ^ peft__hash64(idx));
    double u = (double)(h >> 11) * 0x1.0p-53;
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}
