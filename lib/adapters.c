/*
 * Several adapters on one model (PEFT's load_adapter, set_adapter, delete_adapter and
 * add_weighted_adapter): the active attachment is m->lora (named m->lora_name); the inactive
 * ones wait in m->held with their optimizer counters. Switching moves the attachment states
 * and counters; nothing is copied.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static int valid_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 63)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '.' || *s == '-'))
            return 0;
    return 1;
}

static int held_index(const peft_model *m, const char *name)
{
    for (int i = 0; i < m->n_held; i++)
        if (!strcmp(m->held[i].name, name))
            return i;
    return -1;
}

static int name_taken(const peft_model *m, const char *name)
{
    return (m->lora && !strcmp(m->lora_name, name)) || held_index(m, name) >= 0;
}

static int check_new_name(const peft_model *m, const char *name, const char *what)
{
    if (!valid_name(name))
        return peft__fail(PEFT_EINVAL, "%s: adapter name \"%s\" must be 1..63 characters of A-Z a-z 0-9 _ . -",
                          what, name ? name : "(null)");
    if (name_taken(m, name))
        return peft__fail(PEFT_EINVAL, "%s: an adapter named \"%s\" exists already", what, name);
    return PEFT_OK;
}

void peft__name_active(peft_model *m)
{
    snprintf(m->lora_name, sizeof m->lora_name, "default");
    for (int k = 1; held_index(m, m->lora_name) >= 0; k++)
        snprintf(m->lora_name, sizeof m->lora_name, "default.%d", k);
}

void peft__held_free(peft_model *m)
{
    for (int i = 0; i < m->n_held; i++)
        peft__lora_free(m->held[i].l);
    free(m->held);
    m->held = NULL;
    m->n_held = 0;
}

/* The active attachment and its counters, into h (named name); m then has none. */
static void stash_active(peft_model *m, held_adapter *h)
{
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "%s", m->lora_name);
    h->l = m->lora;
    h->step = m->step;
    h->micro = m->micro;
    h->accum_tokens = m->accum_tokens;
    h->dropout_calls = m->dropout_calls;
    m->lora = NULL;
}

static void restore_active(peft_model *m, const held_adapter *h)
{
    m->lora = h->l;
    snprintf(m->lora_name, sizeof m->lora_name, "%s", h->name);
    m->step = h->step;
    m->micro = h->micro;
    m->accum_tokens = h->accum_tokens;
    m->dropout_calls = h->dropout_calls;
}

static int push_held(peft_model *m, const held_adapter *h)
{
    held_adapter *n = realloc(m->held, (size_t)(m->n_held + 1) * sizeof *n);
    if (!n)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    m->held = n;
    m->held[m->n_held++] = *h;
    return PEFT_OK;
}

static void remove_held(peft_model *m, int i)
{
    memmove(m->held + i, m->held + i + 1, (size_t)(m->n_held - i - 1) * sizeof *m->held);
    m->n_held--;
}

int peft_adapter_load(peft_model *m, const char *dir, const char *name)
{
    if (!m || !dir)
        return peft__fail(PEFT_EINVAL, "peft_adapter_load: NULL argument");
    if (m->merged)
        return peft__fail(PEFT_ESTATE, "peft_adapter_load: an adapter is merged (peft_unmerge_adapter first)");
    int code = check_new_name(m, name, "peft_adapter_load");
    if (code)
        return code;
    held_adapter active, loaded;
    stash_active(m, &active);
    code = peft_load_adapter(m, dir); /* into an empty model: a new attachment */
    stash_active(m, &loaded);
    restore_active(m, &active);
    if (code)
        return code;
    snprintf(loaded.name, sizeof loaded.name, "%s", name); /* its counters: install's fresh ones */
    if ((code = push_held(m, &loaded)))
        peft__lora_free(loaded.l);
    return code;
}

int peft_adapter_set(peft_model *m, const char *name)
{
    if (!m)
        return peft__fail(PEFT_EINVAL, "peft_adapter_set: model is NULL");
    if (m->merged)
        return peft__fail(PEFT_ESTATE, "peft_adapter_set: an adapter is merged (peft_unmerge_adapter first)");
    if (name && m->lora && !strcmp(name, m->lora_name)) {
        m->adapter_off = 0;
        return PEFT_OK;
    }
    int i = name ? held_index(m, name) : -1;
    if (name && i < 0)
        return peft__fail(PEFT_ENOTFOUND, "peft_adapter_set: no adapter named \"%s\"", name);
    if (m->lora) {
        held_adapter old;
        stash_active(m, &old);
        if (push_held(m, &old)) {
            restore_active(m, &old);
            return peft__fail(PEFT_ENOMEM, "peft_adapter_set: out of memory");
        }
    }
    if (name) {
        i = held_index(m, name);
        restore_active(m, &m->held[i]);
        remove_held(m, i);
    }
    m->adapter_off = 0;
    peft__workspace_free(&m->ws); /* planned for the previous attachment's ranks */
    return PEFT_OK;
}

int peft_adapter_delete(peft_model *m, const char *name)
{
    if (!m || !name)
        return peft__fail(PEFT_EINVAL, "peft_adapter_delete: NULL argument");
    if (m->lora && !strcmp(name, m->lora_name))
        return peft_detach(m);
    int i = held_index(m, name);
    if (i < 0)
        return peft__fail(PEFT_ENOTFOUND, "peft_adapter_delete: no adapter named \"%s\"", name);
    peft__lora_free(m->held[i].l);
    remove_held(m, i);
    return PEFT_OK;
}

int peft_adapter_list(const peft_model *m, const char **names, int32_t cap, int32_t *n, int32_t *active)
{
    if (!m || !n || (cap > 0 && !names))
        return peft__fail(PEFT_EINVAL, "peft_adapter_list: NULL argument");
    int k = 0;
    if (m->lora) {
        if (k < cap)
            names[k] = m->lora_name;
        k++;
    }
    for (int i = 0; i < m->n_held; i++, k++)
        if (k < cap)
            names[k] = m->held[i].name;
    *n = k;
    if (active)
        *active = m->lora != NULL;
    return PEFT_OK;
}

/* ---- add_weighted_adapter ---- */

static const lora_state *by_name(const peft_model *m, const char *name)
{
    if (m->lora && !strcmp(name, m->lora_name))
        return m->lora;
    int i = held_index(m, name);
    return i >= 0 ? m->held[i].l : NULL;
}

/* A source PEFT can combine: plain LoRA on linear modules, one rank everywhere. */
static int combinable(const lora_state *l, const char *name)
{
    if (l->method != PEFT_METHOD_LORA || l->use_dora)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_adapter_combine: \"%s\" is not a plain LoRA adapter (%s)", name,
                          l->use_dora ? "DoRA" : "another method");
    if (l->res)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_adapter_combine: \"%s\" has a PiSSA/OLoRA residual base", name);
    if (l->mods_end != l->n_params || l->embed_r > 0)
        return peft__fail(PEFT_EUNSUPPORTED,
                          "peft_adapter_combine: \"%s\" trains more than linear modules (embeddings, lm_head, "
                          "token rows, modules_to_save, norms or biases)", name);
    for (int i = 0; i < l->n_modules; i++)
        if (l->mods[i].r != l->rank)
            return peft__fail(PEFT_EUNSUPPORTED, "peft_adapter_combine: \"%s\" has per-module ranks (rank_pattern)",
                              name);
    return PEFT_OK;
}

/* Options for a LoRA on exactly the modules in sel (layer * PEFT_MOD_COUNT + kind): targets and
   layers when they form a grid, else a regular expression of the names (into buf). */
static void union_options(peft_lora_options *o, const peft_config *c, const uint8_t *sel, char *buf, size_t cap)
{
    int L = c->n_layers;
    uint32_t targets = 0;
    int grid = 1;
    size_t n = 0;
    for (int i = 0; i < L * PEFT_MOD_COUNT; i++)
        if (sel[i])
            targets |= 1u << (i % PEFT_MOD_COUNT);
    for (int layer = 0; layer < L; layer++) {
        uint32_t here = 0;
        for (int k = 0; k < PEFT_MOD_COUNT; k++)
            here |= (uint32_t)sel[layer * PEFT_MOD_COUNT + k] << k;
        if (here && here != targets)
            grid = 0;
        if (here)
            n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%s%d", n ? "," : "", layer);
    }
    if (grid) {
        o->targets = targets;
        o->layers = buf;
        return;
    }
    n = 0;
    for (int i = 0; i < L * PEFT_MOD_COUNT; i++)
        if (sel[i])
            n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%s%slayers\\.%d\\.%s\\.%s", n ? "|" : "",
                                  peft__prefix_re(c), i / PEFT_MOD_COUNT, peft__module_parents[i % PEFT_MOD_COUNT],
                                  peft__mod_name(c, i % PEFT_MOD_COUNT));
    o->targets = 0;
    o->target_regex = buf;
}

/* The combination's family: how A, B come about (plain linear and cat are their own). */
typedef struct {
    int svd, prune, ties;
} comb_kind;

static comb_kind kind_of(int comb)
{
    comb_kind k = {0, PEFT__PRUNE_NONE, 0};
    switch (comb) {
    case PEFT_COMBINE_SVD: k.svd = 1; break;
    case PEFT_COMBINE_TIES_SVD: k.svd = 1; /* fallthrough */
    case PEFT_COMBINE_TIES: k.prune = PEFT__PRUNE_MAGNITUDE, k.ties = 1; break;
    case PEFT_COMBINE_DARE_LINEAR_SVD: k.svd = 1; /* fallthrough */
    case PEFT_COMBINE_DARE_LINEAR: k.prune = PEFT__PRUNE_RANDOM; break;
    case PEFT_COMBINE_DARE_TIES_SVD: k.svd = 1; /* fallthrough */
    case PEFT_COMBINE_DARE_TIES: k.prune = PEFT__PRUNE_RANDOM, k.ties = 1; break;
    case PEFT_COMBINE_MAGNITUDE_PRUNE_SVD: k.svd = 1; /* fallthrough */
    case PEFT_COMBINE_MAGNITUDE_PRUNE: k.prune = PEFT__PRUNE_MAGNITUDE; break;
    default: break;
    }
    return k;
}

/* Scratch for one module: n task tensors of `big` floats and the merged delta. */
typedef struct {
    float **t;
    float *delta;
    double *w;
} comb_scratch;

/* The new module's A (R x in) and B (out x R) from the sources' modules at (layer, kind). */
static int combine_module(peft_model *m, const lora_state *const *src, const double *w, int n,
                          const peft_combine_options *o, const lora_module *md, float *A, float *B, comb_scratch *sc)
{
    int R = md->r, in = md->in, out = md->out, off = 0, comb = o->combination, nv = 0;
    comb_kind kd = kind_of(comb);
    uint64_t seed = o->seed ^ peft__hash64(((uint64_t)md->layer << 8) | (uint64_t)md->kind);
    memset(A, 0, (size_t)R * in * sizeof *A);
    memset(B, 0, (size_t)out * R * sizeof *B);
    for (int i = 0; i < n; i++) {
        int idx = src[i]->index[md->layer * PEFT_MOD_COUNT + md->kind], r = src[i]->rank;
        if (idx < 0) {
            off += comb == PEFT_COMBINE_CAT ? r : 0;
            continue;
        }
        const lora_module *sm = &src[i]->mods[idx];
        const float *Ai = src[i]->params + sm->off_a, *Bi = src[i]->params + sm->off_b;
        double ws = w[i] * sm->scale;
        if (comb == PEFT_COMBINE_CAT) {
            for (size_t j = 0; j < (size_t)r * in; j++)
                A[(size_t)off * in + j] = (float)ws * Ai[j];
            for (int o2 = 0; o2 < out; o2++)
                memcpy(B + (size_t)o2 * R + off, Bi + (size_t)o2 * r, (size_t)r * sizeof *B);
            off += r;
        } else if (kd.svd) { /* task tensor s_i B_i A_i, weight w_i */
            peft__gemm(m, 0, 0, out, in, r, (float)sm->scale, Bi, r, Ai, in, 0.0f, sc->t[nv], in);
            sc->w[nv++] = w[i];
        } else { /* A_i and B_i, weight sqrt(w_i s_i) */
            memcpy(sc->t[nv], Ai, (size_t)r * in * sizeof *Ai);
            memcpy(sc->t[n + nv], Bi, (size_t)out * r * sizeof *Bi);
            sc->w[nv++] = sqrt(ws);
        }
    }
    if (comb == PEFT_COMBINE_CAT)
        return PEFT_OK;
    int freq = o->majority_sign == PEFT_SIGN_FREQUENCY, code;
    if (!kd.svd) {
        if ((code = peft__task_merge(A, sc->t, sc->w, nv, (size_t)R * in, kd.prune, kd.ties, o->density, freq, seed)))
            return code;
        return peft__task_merge(B, sc->t + n, sc->w, nv, (size_t)out * R, kd.prune, kd.ties, o->density, freq,
                                peft__hash64(seed));
    }
    if (R > (in < out ? in : out))
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: svd rank %d exceeds the size of %s (%d x %d)", R,
                          peft__mod_name(&m->cfg, md->kind), out, in);
    code = peft__task_merge(sc->delta, sc->t, sc->w, nv, (size_t)out * in, kd.prune, kd.ties, o->density, freq, seed);
    if (code || (code = peft__svd_factors(m, sc->delta, out, in, R, 1.0f, 0x737664ull /* "svd" */, A, B)))
        return code;
    /* balanced U sqrt(S), sqrt(S) V^T -> PEFT's B = U S, A = V^T: column j of B has norm sqrt(S_j) */
    for (int j = 0; j < R; j++) {
        double g = 0;
        for (int o2 = 0; o2 < out; o2++)
            g += (double)B[(size_t)o2 * R + j] * B[(size_t)o2 * R + j];
        g = sqrt(g);
        for (int o2 = 0; o2 < out; o2++)
            B[(size_t)o2 * R + j] = (float)(B[(size_t)o2 * R + j] * g);
        for (int c = 0; c < in; c++)
            A[(size_t)j * in + c] = g > 0 ? (float)(A[(size_t)j * in + c] / g) : 0.0f;
    }
    return o->svd_clamp > 0 ? peft__clamp_quantile(B, (size_t)out * R, A, (size_t)R * in, o->svd_clamp) : PEFT_OK;
}

int peft_adapter_combine_ex(peft_model *m, const char *const *names, const double *weights, int32_t n,
                            const char *new_name, const peft_combine_options *opts)
{
    peft_combine_options o = PEFT_COMBINE_OPTIONS_INIT;
    if (opts) {
        if (opts->version < 1 || opts->version > PEFT_COMBINE_OPTIONS_VERSION)
            return peft__fail(PEFT_EINVAL, "peft_adapter_combine: options version %u is not 1..%d", opts->version,
                              PEFT_COMBINE_OPTIONS_VERSION);
        o = *opts;
    }
    if (!m || !names || !weights || n <= 0)
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: NULL argument or no adapters");
    if (o.combination < PEFT_COMBINE_LINEAR || o.combination > PEFT_COMBINE_MAGNITUDE_PRUNE_SVD)
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: unknown combination %d", o.combination);
    if (!(o.density >= 0 && o.density <= 1) || !(o.svd_clamp >= 0 && o.svd_clamp <= 1) ||
        (o.majority_sign != PEFT_SIGN_TOTAL && o.majority_sign != PEFT_SIGN_FREQUENCY) || o.svd_rank < 0)
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: density %g and svd_clamp %g must be in [0, 1], "
                                       "majority_sign %d 0 or 1, svd_rank %d >= 0",
                          o.density, o.svd_clamp, o.majority_sign, o.svd_rank);
    if (m->merged)
        return peft__fail(PEFT_ESTATE, "peft_adapter_combine: an adapter is merged (peft_unmerge_adapter first)");
    int code = check_new_name(m, new_name, "peft_adapter_combine");
    if (code)
        return code;
    if (n == 1) /* as PEFT: one adapter is combined linearly */
        o.combination = PEFT_COMBINE_LINEAR;
    const int comb = o.combination;
    const comb_kind kd = kind_of(comb);
    const int uniform = comb != PEFT_COMBINE_CAT && !kd.svd; /* linear, ties, dare_*, magnitude_prune */
    const int L = m->cfg.n_layers;
    const lora_state **src = calloc((size_t)n, sizeof *src);
    uint8_t *sel = calloc((size_t)L * PEFT_MOD_COUNT, 1);
    char *buf = malloc(65536);
    comb_scratch sc = {calloc(2 * (size_t)n, sizeof *sc.t), NULL, calloc((size_t)n, sizeof *sc.w)};
    if (!src || !sel || !buf || !sc.t || !sc.w) {
        code = peft__fail(PEFT_ENOMEM, "peft_adapter_combine: out of memory");
        goto done;
    }
    int R = 0, rmax = 0;
    for (int i = 0; i < n; i++) {
        if (!names[i] || !(src[i] = by_name(m, names[i]))) {
            code = peft__fail(PEFT_ENOTFOUND, "peft_adapter_combine: no adapter named \"%s\"",
                              names[i] ? names[i] : "(null)");
            goto done;
        }
        if ((code = combinable(src[i], names[i])))
            goto done;
        if (!isfinite(weights[i]) || (uniform && weights[i] < 0)) {
            code = peft__fail(PEFT_EINVAL, "peft_adapter_combine: weight %g of \"%s\" (linear, ties, dare and "
                                           "magnitude_prune take sqrt(weight x scale): weights >= 0)",
                              weights[i], names[i]);
            goto done;
        }
        if (uniform && src[i]->rank != src[0]->rank) {
            code = peft__fail(PEFT_EINVAL, "peft_adapter_combine: linear, ties, dare and magnitude_prune need one "
                                           "rank (\"%s\" has %d, \"%s\" %d); use cat or an svd combination",
                              names[0], src[0]->rank, names[i], src[i]->rank);
            goto done;
        }
        R += src[i]->rank;
        rmax = src[i]->rank > rmax ? src[i]->rank : rmax;
        for (int k = 0; k < src[i]->n_modules; k++)
            sel[src[i]->mods[k].layer * PEFT_MOD_COUNT + src[i]->mods[k].kind] = 1;
    }
    R = uniform ? src[0]->rank : comb == PEFT_COMBINE_CAT ? R : o.svd_rank > 0 ? o.svd_rank : rmax;
    /* the new attachment: built as if attached, then kept inactive */
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    union_options(&lo, &m->cfg, sel, buf, 65536);
    lo.rank = R;
    lo.alpha = (float)R;
    lo.dropout = src[0]->dropout;
    lo.seed = src[0]->seed;
    held_adapter active, made;
    stash_active(m, &active);
    code = peft_attach_lora(m, &lo, NULL);
    stash_active(m, &made);
    restore_active(m, &active);
    if (code)
        goto done;
    size_t big = 0; /* the largest task tensor: a delta (svd family), else an A or a B */
    for (int k = 0; k < made.l->n_modules; k++) {
        const lora_module *md = &made.l->mods[k];
        size_t sz = kd.svd ? (size_t)md->out * md->in : (size_t)(md->out > md->in ? md->out : md->in) * R;
        big = sz > big ? sz : big;
    }
    if (comb != PEFT_COMBINE_CAT) {
        for (int i = 0; i < 2 * n && !code; i++)
            if ((i < n || !kd.svd) && !(sc.t[i] = peft__alloc_floats(big)))
                code = peft__fail(PEFT_ENOMEM, "peft_adapter_combine: out of memory");
        if (!code && kd.svd && !(sc.delta = peft__alloc_floats(big)))
            code = peft__fail(PEFT_ENOMEM, "peft_adapter_combine: out of memory");
    }
    for (int k = 0; !code && k < made.l->n_modules; k++) {
        const lora_module *md = &made.l->mods[k];
        code = combine_module(m, src, weights, n, &o, md, made.l->params + md->off_a, made.l->params + md->off_b, &sc);
    }
    for (size_t j = 0; !code && j < made.l->n_params; j++)
        if (!isfinite(made.l->params[j]))
            code = peft__fail(PEFT_ENUMERIC, "peft_adapter_combine: the combination is not finite");
    snprintf(made.name, sizeof made.name, "%s", new_name); /* its counters: install's fresh ones */
    if (!code)
        code = push_held(m, &made);
    if (code)
        peft__lora_free(made.l);
done:
    if (sc.t)
        for (int i = 0; i < 2 * n; i++)
            peft__free(sc.t[i]);
    free(sc.t);
    free(sc.w);
    peft__free(sc.delta);
    free(src);
    free(sel);
    free(buf);
    return code;
}

int peft_adapter_combine(peft_model *m, const char *const *names, const double *weights, int32_t n,
                         const char *new_name, int32_t comb, int32_t svd_rank)
{
    if (comb < PEFT_COMBINE_LINEAR || comb > PEFT_COMBINE_SVD)
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: combination %d needs peft_adapter_combine_ex "
                                       "(only linear, cat and svd here)", comb);
    peft_combine_options o = PEFT_COMBINE_OPTIONS_INIT;
    o.combination = comb;
    o.svd_rank = svd_rank;
    return peft_adapter_combine_ex(m, names, weights, n, new_name, &o);
}
