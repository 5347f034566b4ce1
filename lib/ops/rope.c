/* Rotary position embedding, Hugging Face rotate-half convention:
   pairs (i, i + hd/2), angle pos * theta^(-2i/hd). */
#include <math.h>

#include "../internal.h"
#include "ops.h"

// cos_t, sin_t (T, hd/2), the config's head_dim, theta and scaling
void rope_tables(float *cos_t, float *sin_t, int T, const peft_config *c)
{
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double inv = peft__rope_inv_freq(c, i);
        for (int t = 0; t < T; t++) {
            cos_t[t * half + i] = (float)cos(t * inv);
            sin_t[t * half + i] = (float)sin(t * inv);
        }
    }
}

struct rope_args {
    float *x;
    const float *c, *s;
    const int32_t *pos;
    int T, H, hd;
    float sign; /* +1 forward, -1 backward (inverse rotation) */
};

static void rope_task(void *vp, int32_t row)
{
    const struct rope_args *a = vp;
    int t = a->pos ? a->pos[row] : row % a->T, half = a->hd / 2;
    const float *c = a->c + (int64_t)t * half, *s = a->s + (int64_t)t * half;
    float *x = a->x + (int64_t)row * a->H * a->hd;
    for (int h = 0; h < a->H; h++, x += a->hd) {
        for (int i = 0; i < half; i++) {
            float x0 = x[i], x1 = x[i + half], sn = a->sign * s[i];
            x[i] = x0 * c[i] - x1 * sn;
            x[i + half] = x1 * c[i] + x0 * sn;
        }
    }
}

// x (B*T, H*hd) in place; pos (B*T) or NULL
void rope_forward(void *pool, float *x, const float *cos_t, const float *sin_t, const int32_t *pos,
                  int B, int T, int n_heads, int hd)
{
    struct rope_args a = {x, cos_t, sin_t, pos, T, n_heads, hd, 1.0f};
    peft__pool_for(pool, B * T, rope_task, &a);
}

// dx (B*T, H*hd) in place: the rotation is orthogonal, its transpose is the inverse
void rope_backward(void *pool, float *dx, const float *cos_t, const float *sin_t, const int32_t *pos,
                   int B, int T, int n_heads, int hd)
{
    struct rope_args a = {dx, cos_t, sin_t, pos, T, n_heads, hd, -1.0f};
    peft__pool_for(pool, B * T, rope_task, &a);
}

// x (n_heads*hd) at position pos, in place (inference with a KV cache)
void rope_at(float *x, int n_heads, int pos, const peft_config *cf)
{
    int hd = cf->head_dim, half = hd / 2;
    for (int i = 0; i < half; i++) {
        double inv = peft__rope_inv_freq(cf, i);
        float c = (float)cos(pos * inv), s = (float)sin(pos * inv);
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (int64_t)h * hd;
            float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * c - x1 * s;
            v[i + half] = x1 * c + x0 * s;
        }
    }
}

const peft_config *rope_config_of(const peft_config *c, int l, peft_config *tmp)
{
    if (!peft__rope_local(c, l))
        return c;
    *tmp = *c;
    tmp->rope_theta = c->rope_local_theta;
    tmp->rope_scaling = 0;
    return tmp;
}
