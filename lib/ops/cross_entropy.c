/* Cross-entropy over the vocabulary for one row, with its gradient; dropout masks. */
#include <math.h>

#include "../internal.h"
#include "ops.h"

// logits (V); dlogits (V) = scale * (softmax(logits) - onehot(label)); may alias logits
double xent_row(float *dlogits, const float *logits, int V, int label, float scale)
{
    float mx = logits[0];
    for (int i = 1; i < V; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    double loss = lse - logits[label]; /* before dlogits, which may alias logits */
    if (dlogits) {
        for (int i = 0; i < V; i++)
            dlogits[i] = scale * (float)exp((double)logits[i] - lse);
        dlogits[label] -= scale;
    }
    return loss;
}

float dropout_scale(uint64_t seed, uint64_t idx, float p)
{
    uint64_t h = peft__hash64(seed ^ peft__hash64(idx));
    double u = (double)(h >> 11) * 0x1.0p-53;
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}
