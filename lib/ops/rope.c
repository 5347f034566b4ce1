/* Rotary position embedding, Hugging Face rotate-half convention: pairs (i, i + d/2) of the
   first d = rot_dim dimensions of a head (the rest pass through), angle pos * theta^(-2i/d);
   LongRoPE's attention factor scales cos and sin. */
#include <math.h>
#include <string.h>

#include "../internal.h"
#include "ops.h"

/* The config for positions below len: LongRoPE's long factors past its original length
   (transformers switches on the largest position + 1) */
static const peft_config *long_or_short(const peft_config *c, int len, peft_config *tmp)
{
    if (!c->rope_long_from || len <= c->rope_long_from)
        return c;
    *tmp = *c;
    memcpy(tmp->rope_div, c->rope_div_long, sizeof tmp->rope_div);
    return tmp;
}

// cos_t, sin_t (T, rot_dim/2), the config's rotated dimensions, theta and scaling
void rope_tables(float *cos_t, float *sin_t, int T, const peft_config *cf)
{
    peft_config tmp;
    const peft_config *c = long_or_short(cf, T, &tmp);
    int half = peft__rot_dim(c) / 2;
    double ms = c->rope_mscale > 0 ? c->rope_mscale : 1.0;
    for (int i = 0; i < half; i++) {
        double inv = peft__rope_inv_freq(c, i);
        for (int t = 0; t < T; t++) {
            cos_t[t * half + i] = (float)(ms * cos(t * inv));
            sin_t[t * half + i] = (float)(ms * sin(t * inv));
        }
    }
}

struct rope_args {
    float *x;
    const float *c, *s;
    const int32_t *pos;
    int T, H, hd, half;
    float sign; /* +1 forward, -1 backward (inverse rotation) */
};

static void rope_task(void *vp, int32_t row)
{
    const struct rope_args *a = vp;
    int t = a->pos ? a->pos[row] : row % a->T, half = a->half;
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

// x (B*T, H*hd) in place, the first rot dimensions of each head; pos (B*T) or NULL
void rope_forward(void *pool, float *x, const float *cos_t, const float *sin_t, const int32_t *pos,
                  int B, int T, int n_heads, int hd, int rot)
{
    struct rope_args a = {x, cos_t, sin_t, pos, T, n_heads, hd, rot / 2, 1.0f};
    peft__pool_for(pool, B * T, rope_task, &a);
}

// dx (B*T, H*hd) in place: the transpose of the rotation (its inverse, times the attention
// factor squared where LongRoPE scales it)
void rope_backward(void *pool, float *dx, const float *cos_t, const float *sin_t, const int32_t *pos,
                   int B, int T, int n_heads, int hd, int rot)
{
    struct rope_args a = {dx, cos_t, sin_t, pos, T, n_heads, hd, rot / 2, -1.0f};
    peft__pool_for(pool, B * T, rope_task, &a);
}

// x (n_heads*hd) at position pos, in place (inference with a KV cache), in a forward call whose
// largest position is len - 1 (LongRoPE's factors are chosen by it, for the whole call)
void rope_at(float *x, int n_heads, int pos, int len, const peft_config *cf)
{
    peft_config tmp;
    const peft_config *rc = long_or_short(cf, len, &tmp);
    int hd = cf->head_dim, half = peft__rot_dim(cf) / 2;
    double ms = cf->rope_mscale > 0 ? cf->rope_mscale : 1.0;
    for (int i = 0; i < half; i++) {
        double inv = peft__rope_inv_freq(rc, i);
        float c = (float)(ms * cos(pos * inv)), s = (float)(ms * sin(pos * inv));
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
    tmp->rope_long_from = 0;
    tmp->rope_mscale = 0.0f;
    return tmp;
}
