/* AdamW over the flat parameter block, learning-rate schedules, clipping, settings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

void peft__opt_defaults(peft_model *m)
{
    m->lr = 1e-4;
    m->beta1 = 0.9;
    m->beta2 = 0.999;
    m->eps = 1e-8;
    m->weight_decay = 0.0;
    m->grad_clip = 0.0;
    m->accum_steps = 1;
    m->warmup_steps = 0;
    m->total_steps = 0;
    m->schedule = PEFT_SCHEDULE_CONSTANT;
    m->min_lr_ratio = 0.0;
    m->loraplus_ratio = 1.0;
    m->embed_lr_ratio = 1.0;
    m->embed_weight_decay = -1.0;
    m->norm_lr_ratio = 1.0;
    m->norm_weight_decay = -1.0;
}

static const struct {
    int key;
    double lo, hi;
} bounds[] = {
    {PEFT_OPT_LR, 0.0, 10.0},           {PEFT_OPT_BETA1, 0.0, 0.999999},
    {PEFT_OPT_BETA2, 0.0, 0.99999999},  {PEFT_OPT_EPS, 0.0, 1.0},
    {PEFT_OPT_WEIGHT_DECAY, 0.0, 10.0}, {PEFT_OPT_GRAD_CLIP, 0.0, 1e9},
    {PEFT_OPT_ACCUM_STEPS, 1, 1 << 20}, {PEFT_OPT_WARMUP_STEPS, 0, 1 << 30},
    {PEFT_OPT_TOTAL_STEPS, 0, 1 << 30}, {PEFT_OPT_SCHEDULE, 0, 2},
    {PEFT_OPT_MIN_LR_RATIO, 0.0, 1.0},  {PEFT_OPT_LORAPLUS_RATIO, 0.0, 1e4},
    {PEFT_OPT_EMBED_LR_RATIO, 0.0, 1e4}, {PEFT_OPT_DROPOUT_CALL, 0, 9007199254740992.0},
    {PEFT_OPT_EMBED_WEIGHT_DECAY, -1.0, 10.0}, {PEFT_OPT_NORM_LR_RATIO, 0.0, 1e4},
    {PEFT_OPT_NORM_WEIGHT_DECAY, -1.0, 10.0}, {PEFT_OPT_ACTIVATION_CHECKPOINTING, 0, 1},
};

int peft_opt_bounds(int key, double *lo, double *hi)
{
    for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++)
        if (bounds[i].key == key) {
            if (lo)
                *lo = bounds[i].lo;
            if (hi)
                *hi = bounds[i].hi;
            return PEFT_OK;
        }
    return peft__fail(PEFT_EINVAL, "unknown optimizer setting %d", key);
}

static int is_integer_key(int key)
{
    return key == PEFT_OPT_ACCUM_STEPS || key == PEFT_OPT_WARMUP_STEPS ||
           key == PEFT_OPT_TOTAL_STEPS || key == PEFT_OPT_SCHEDULE || key == PEFT_OPT_DROPOUT_CALL ||
           key == PEFT_OPT_ACTIVATION_CHECKPOINTING;
}

int peft_opt_set(peft_model *m, int key, double v)
{
    double lo, hi;
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_opt_set: model is NULL");
    if (key == PEFT_OPT_STEP)
        return peft__fail(PEFT_EINVAL, "PEFT_OPT_STEP is read-only");
    int code = peft_opt_bounds(key, &lo, &hi);
    if (code)
        return code;
    if (!isfinite(v) || v < lo || v > hi || (is_integer_key(key) && v != floor(v)))
        return peft__fail(PEFT_EINVAL, "optimizer setting %d: value %g outside [%g, %g]%s", key, v, lo,
                          hi, is_integer_key(key) ? " or not an integer" : "");
    if (key == PEFT_OPT_ACCUM_STEPS && m->micro != 0)
        return peft__fail(PEFT_ESTATE, "cannot change accumulation in the middle of an accumulation");
    switch (key) {
    case PEFT_OPT_LR: m->lr = v; break;
    case PEFT_OPT_BETA1: m->beta1 = v; break;
    case PEFT_OPT_BETA2: m->beta2 = v; break;
    case PEFT_OPT_EPS: m->eps = v; break;
    case PEFT_OPT_WEIGHT_DECAY: m->weight_decay = v; break;
    case PEFT_OPT_GRAD_CLIP: m->grad_clip = v; break;
    case PEFT_OPT_ACCUM_STEPS: m->accum_steps = (int)v; break;
    case PEFT_OPT_WARMUP_STEPS: m->warmup_steps = (int)v; break;
    case PEFT_OPT_TOTAL_STEPS: m->total_steps = (int)v; break;
    case PEFT_OPT_SCHEDULE: m->schedule = (int)v; break;
    case PEFT_OPT_MIN_LR_RATIO: m->min_lr_ratio = v; break;
    case PEFT_OPT_LORAPLUS_RATIO: m->loraplus_ratio = v; break;
    case PEFT_OPT_EMBED_LR_RATIO: m->embed_lr_ratio = v; break;
    case PEFT_OPT_EMBED_WEIGHT_DECAY: m->embed_weight_decay = v; break;
    case PEFT_OPT_NORM_LR_RATIO: m->norm_lr_ratio = v; break;
    case PEFT_OPT_NORM_WEIGHT_DECAY: m->norm_weight_decay = v; break;
    case PEFT_OPT_DROPOUT_CALL: m->dropout_calls = (uint64_t)v; break;
    case PEFT_OPT_ACTIVATION_CHECKPOINTING: m->act_ckpt = (int)v; break;
    }
    return PEFT_OK;
}

int peft_opt_get(const peft_model *m, int key, double *v)
{
    if (!m || !v)
        return peft__fail(PEFT_EINVAL, "peft_opt_get: NULL argument");
    switch (key) {
    case PEFT_OPT_LR: *v = m->lr; break;
    case PEFT_OPT_BETA1: *v = m->beta1; break;
    case PEFT_OPT_BETA2: *v = m->beta2; break;
    case PEFT_OPT_EPS: *v = m->eps; break;
    case PEFT_OPT_WEIGHT_DECAY: *v = m->weight_decay; break;
    case PEFT_OPT_GRAD_CLIP: *v = m->grad_clip; break;
    case PEFT_OPT_ACCUM_STEPS: *v = m->accum_steps; break;
    case PEFT_OPT_WARMUP_STEPS: *v = m->warmup_steps; break;
    case PEFT_OPT_TOTAL_STEPS: *v = m->total_steps; break;
    case PEFT_OPT_SCHEDULE: *v = m->schedule; break;
    case PEFT_OPT_MIN_LR_RATIO: *v = m->min_lr_ratio; break;
    case PEFT_OPT_LORAPLUS_RATIO: *v = m->loraplus_ratio; break;
    case PEFT_OPT_EMBED_LR_RATIO: *v = m->embed_lr_ratio; break;
    case PEFT_OPT_EMBED_WEIGHT_DECAY: *v = m->embed_weight_decay; break;
    case PEFT_OPT_NORM_LR_RATIO: *v = m->norm_lr_ratio; break;
    case PEFT_OPT_NORM_WEIGHT_DECAY: *v = m->norm_weight_decay; break;
    case PEFT_OPT_STEP: *v = (double)m->step; break;
    case PEFT_OPT_DROPOUT_CALL: *v = (double)m->dropout_calls; break;
    case PEFT_OPT_ACTIVATION_CHECKPOINTING: *v = m->act_ckpt; break;
    default: return peft__fail(PEFT_EINVAL, "unknown optimizer setting %d", key);
    }
    return PEFT_OK;
}

/* Learning rate of update number t (0-based): linear warmup over warmup_steps
   (t+1)/warmup, then constant, linear or cosine decay to min_lr_ratio at total_steps. */
static double lr_at(const peft_model *m, int64_t t)
{
    if (t < m->warmup_steps)
        return m->lr * (double)(t + 1) / m->warmup_steps;
    if (m->schedule == PEFT_SCHEDULE_CONSTANT || m->total_steps <= m->warmup_steps)
        return m->lr;
    double p = (double)(t - m->warmup_steps) / (double)(m->total_steps - m->warmup_steps);
    if (p > 1)
        p = 1;
    double f = m->schedule == PEFT_SCHEDULE_LINEAR ? 1.0 - p : 0.5 * (1.0 + cos(M_PI * p));
    return m->lr * (m->min_lr_ratio + (1.0 - m->min_lr_ratio) * f);
}

struct adamw {
    float *g, *p, *m, *v;
    float gs, step_size, bc2_sqrt, b1, b2, eps;
    double lr, weight_decay;
};

/* AdamW on params [off, off + n) at mult x the learning rate, with weight decay wd (< 0: the
   main one). */
static void adamw_group(const struct adamw *a, size_t off, size_t n, double mult, double wd)
{
    float ss = (float)(a->step_size * mult), decay = (float)(1.0 - a->lr * mult * (wd < 0 ? a->weight_decay : wd));
    for (size_t i = off; i < off + n; i++) {
        float gi = a->g[i] * a->gs;
        a->m[i] = a->b1 * a->m[i] + (1.0f - a->b1) * gi;
        a->v[i] = a->b2 * a->v[i] + (1.0f - a->b2) * gi * gi;
        float denom = sqrtf(a->v[i]) / a->bc2_sqrt + a->eps;
        a->p[i] = a->p[i] * decay - ss * a->m[i] / denom;
    }
}

/* The update runs over the thread pool in chunks of OPT_CHUNK parameters (m->opt_chunk where a
   test sets it), fixed whatever the thread count (the gradient norm is summed per chunk, then
   over the chunks in order), so the results never depend on it; with a large adapter (trained
   embeddings: tens of millions of parameters) a serial update was a stretch of the step in
   which the other threads waited. */
#define OPT_CHUNK ((size_t)1 << 16)

/* a run of parameters updated alike: [off, off + n) at mult x the learning rate, decay wd */
typedef struct {
    size_t off, n, start; /* start: its first element's place in the runs laid end to end */
    double mult, wd;
} opt_run;

struct opt_job {
    const struct adamw *a;
    opt_run *runs;
    int n_runs;
    size_t total; /* the runs' elements */
    const float *g;
    double inv, *partial;
    size_t n_params, chunk;
};

static void norm_task(void *vp, int32_t t)
{
    struct opt_job *j = vp;
    size_t lo = (size_t)t * j->chunk, hi = lo + j->chunk < j->n_params ? lo + j->chunk : j->n_params;
    double ss = 0;
    for (size_t i = lo; i < hi; i++) {
        double gi = j->g[i] * j->inv;
        ss += gi * gi;
    }
    j->partial[t] = ss;
}

static void update_task(void *vp, int32_t t)
{
    struct opt_job *j = vp;
    size_t lo = (size_t)t * j->chunk, hi = lo + j->chunk < j->total ? lo + j->chunk : j->total;
    int r = 0, top = j->n_runs; /* the last run that starts at or before lo */
    while (top - r > 1) {
        int mid = (r + top) / 2;
        if (j->runs[mid].start <= lo)
            r = mid;
        else
            top = mid;
    }
    for (; r < j->n_runs && j->runs[r].start < hi; r++) {
        const opt_run *u = &j->runs[r];
        size_t b = lo > u->start ? lo - u->start : 0, e = hi - u->start < u->n ? hi - u->start : u->n;
        if (e > b)
            adamw_group(j->a, u->off + b, e - b, u->mult, u->wd);
    }
}

static void add_run(struct opt_job *j, size_t off, size_t n, double mult, double wd)
{
    if (!n)
        return;
    j->runs[j->n_runs++] = (opt_run){off, n, j->total, mult, wd};
    j->total += n;
}

int peft__opt_apply(peft_model *m, double token_count, peft_step_result *res)
{
    lora_state *l = m->lora;
    size_t n = l->n_params;
    float *g = l->grads, *p = l->params, *mm = l->m, *vv = l->v;
    double inv = token_count > 0 ? 1.0 / token_count : 0.0;
    /* the runs of parameters and their settings: up to three a module, the prompt, and the
       embedding, norm and bias groups */
    opt_run *runs = malloc(((size_t)l->n_modules * 3 + 4) * sizeof *runs);
    size_t chunk = m->opt_chunk ? m->opt_chunk : OPT_CHUNK;
    int32_t chunks = (int32_t)((n + chunk - 1) / chunk);
    double *partial = malloc(((size_t)chunks + 1) * sizeof *partial);
    if (!runs || !partial) {
        free(runs);
        free(partial);
        return peft__fail(PEFT_ENOMEM, "optimizer: out of memory");
    }
    struct opt_job job = {NULL, runs, 0, 0, g, inv, partial, n, chunk};
    peft__pool_for(m->pool, chunks, norm_task, &job);
    double ss = 0;
    for (int32_t c = 0; c < chunks; c++)
        ss += partial[c];
    free(partial);
    double norm = sqrt(ss);
    if (!isfinite(norm)) {
        free(runs);
        memset(g, 0, n * sizeof *g);
        return peft__fail(PEFT_ENUMERIC, "gradient norm is not finite; update skipped, parameters unchanged");
    }
    double clip = 1.0;
    if (m->grad_clip > 0 && norm > m->grad_clip)
        clip = m->grad_clip / (norm + 1e-6);
    float gs = (float)(inv * clip);
    int64_t t = m->step + 1;
    double lr = lr_at(m, m->step);
    double bc1 = 1.0 - pow(m->beta1, (double)t), bc2 = 1.0 - pow(m->beta2, (double)t);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float b1 = (float)m->beta1, b2 = (float)m->beta2, eps = (float)m->eps;
    struct adamw a = {g, p, mm, vv, gs, step_size, bc2_sqrt, b1, b2, eps, lr, m->weight_decay};
    /* LoRA+: the B matrices learn at loraplus_ratio x the learning rate */
    for (int k = 0; l->method != PEFT_METHOD_NORMS && k < l->n_modules; k++) {
        const lora_module *md = &l->mods[k];
        size_t na = (size_t)md->r * (size_t)md->in, nb = (size_t)md->out * (size_t)md->r;
        size_t nm = l->use_dora ? (size_t)md->out : 0;
        if (l->method == PEFT_METHOD_LOHA) { /* the four factors */
            add_run(&job, md->off_a, 2 * (size_t)md->r * ((size_t)md->in + (size_t)md->out), 1.0, -1.0);
        } else if (l->method == PEFT_METHOD_LOKR) {
            add_run(&job, md->off_a, peft__lokr_size(md->in, md->out, md->r), 1.0, -1.0);
        } else if (l->method == PEFT_METHOD_VERA) { /* lambda_d, lambda_b */
            add_run(&job, md->off_a, (size_t)md->r, 1.0, -1.0);
            add_run(&job, md->off_b, (size_t)md->out, 1.0, -1.0);
        } else if (l->method == PEFT_METHOD_IA3) { /* one scaling vector */
            add_run(&job, md->off_a, (size_t)(md->ia3_ff ? md->in : md->out), 1.0, -1.0);
        } else {
            add_run(&job, md->off_a, na, 1.0, -1.0);
            add_run(&job, md->off_b, nb, m->loraplus_ratio, -1.0);
            add_run(&job, md->off_m, nm, 1.0, -1.0);
        }
    }
    if (l->method == PEFT_METHOD_PROMPT) /* the soft prompt: the main group */
        add_run(&job, 0, l->mods_end, 1.0, -1.0);
    /* the embedding group (embedding and lm_head adapters, token rows, full copies) and the
       tuned norms, each at its own learning rate and weight decay */
    add_run(&job, l->mods_end, l->off_norms - l->mods_end, m->embed_lr_ratio, m->embed_weight_decay);
    add_run(&job, l->off_norms, l->n_params - l->n_bias - l->off_norms, m->norm_lr_ratio,
            m->norm_weight_decay);
    /* trained biases: the main learning rate, no weight decay (as the Hugging Face Trainer) */
    add_run(&job, l->n_params - l->n_bias, l->n_bias, 1.0, 0.0);
    job.a = &a;
    peft__pool_for(m->pool, (int32_t)((job.total + chunk - 1) / chunk), update_task, &job);
    free(runs);
    memset(g, 0, n * sizeof *g);
    m->step = t;
    if (res) {
        res->grad_norm = norm;
        res->lr = lr;
        res->updated = 1;
        res->step = t;
    }
    return PEFT_OK;
}
