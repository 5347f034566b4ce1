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
                          "token rows, modules_to_save or norms)", name);
    for (int i = 0; i < l->n_modules; i++)
        if (l->mods[i].r != l->rank)
            return peft__fail(PEFT_EUNSUPPORTED, "peft_adapter_combine: \"%s\" has per-module ranks (rank_pattern)",
                              name);
    return PEFT_OK;
}

/* Options for a LoRA on exactly the modules in sel (layer * PEFT_MOD_COUNT + kind): targets and
   layers when they form a grid, else a regular expression of the names (into buf). */
static void union_options(peft_lora_options *o, const uint8_t *sel, int L, char *buf, size_t cap)
{
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
            n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "%smodel\\.layers\\.%d\\.%s\\.%s", n ? "|" : "",
                                  i / PEFT_MOD_COUNT, peft__module_parents[i % PEFT_MOD_COUNT],
                                  peft__module_names[i % PEFT_MOD_COUNT]);
    o->targets = 0;
    o->target_regex = buf;
}

/* The new module's A (R x in) and B (out x R) from the sources' modules at (layer, kind). */
static int combine_module(peft_model *m, const lora_state *const *src, const double *w, int n, int comb,
                          const lora_module *md, float *A, float *B, float *delta)
{
    int R = md->r, in = md->in, out = md->out, off = 0;
    memset(A, 0, (size_t)R * in * sizeof *A);
    memset(B, 0, (size_t)out * R * sizeof *B);
    if (comb == PEFT_COMBINE_SVD)
        memset(delta, 0, (size_t)out * in * sizeof *delta);
    for (int i = 0; i < n; i++) {
        int idx = src[i]->index[md->layer * PEFT_MOD_COUNT + md->kind], r = src[i]->rank;
        if (idx < 0) {
            off += comb == PEFT_COMBINE_CAT ? r : 0;
            continue;
        }
        const lora_module *sm = &src[i]->mods[idx];
        const float *Ai = src[i]->params + sm->off_a, *Bi = src[i]->params + sm->off_b;
        double ws = w[i] * sm->scale;
        if (comb == PEFT_COMBINE_LINEAR) {
            float g = (float)sqrt(ws);
            for (size_t j = 0; j < (size_t)R * in; j++)
                A[j] += g * Ai[j];
            for (size_t j = 0; j < (size_t)out * R; j++)
                B[j] += g * Bi[j];
        } else if (comb == PEFT_COMBINE_CAT) {
            for (size_t j = 0; j < (size_t)r * in; j++)
                A[(size_t)off * in + j] = (float)ws * Ai[j];
            for (int o = 0; o < out; o++)
                memcpy(B + (size_t)o * R + off, Bi + (size_t)o * r, (size_t)r * sizeof *B);
            off += r;
        } else { /* delta += w s B_i A_i */
            peft__gemm(m, 0, 0, out, in, r, (float)ws, Bi, r, Ai, in, 1.0f, delta, in);
        }
    }
    if (comb != PEFT_COMBINE_SVD)
        return PEFT_OK;
    if (R > (in < out ? in : out))
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: svd rank %d exceeds the size of %s (%d x %d)", R,
                          peft__module_names[md->kind], out, in);
    int code = peft__svd_factors(m, delta, out, in, R, 1.0f, 0x737664ull /* "svd" */, A, B);
    if (code)
        return code;
    /* balanced U sqrt(S), sqrt(S) V^T -> PEFT's B = U S, A = V^T: column j of B has norm sqrt(S_j) */
    for (int j = 0; j < R; j++) {
        double g = 0;
        for (int o = 0; o < out; o++)
            g += (double)B[(size_t)o * R + j] * B[(size_t)o * R + j];
        g = sqrt(g);
        for (int o = 0; o < out; o++)
            B[(size_t)o * R + j] = (float)(B[(size_t)o * R + j] * g);
        for (int c = 0; c < in; c++)
            A[(size_t)j * in + c] = g > 0 ? (float)(A[(size_t)j * in + c] / g) : 0.0f;
    }
    return PEFT_OK;
}

int peft_adapter_combine(peft_model *m, const char *const *names, const double *weights, int32_t n,
                         const char *new_name, int32_t comb, int32_t svd_rank)
{
    if (!m || !names || !weights || n <= 0)
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: NULL argument or no adapters");
    if (comb < PEFT_COMBINE_LINEAR || comb > PEFT_COMBINE_SVD)
        return peft__fail(PEFT_EINVAL, "peft_adapter_combine: unknown combination %d", comb);
    if (m->merged)
        return peft__fail(PEFT_ESTATE, "peft_adapter_combine: an adapter is merged (peft_unmerge_adapter first)");
    int code = check_new_name(m, new_name, "peft_adapter_combine");
    if (code)
        return code;
    if (n == 1) /* as PEFT: one adapter is combined linearly */
        comb = PEFT_COMBINE_LINEAR;
    const int L = m->cfg.n_layers;
    const lora_state **src = calloc((size_t)n, sizeof *src);
    uint8_t *sel = calloc((size_t)L * PEFT_MOD_COUNT, 1);
    char *buf = malloc(65536);
    float *scratch = NULL;
    if (!src || !sel || !buf) {
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
        if (!isfinite(weights[i]) || (comb == PEFT_COMBINE_LINEAR && weights[i] < 0)) {
            code = peft__fail(PEFT_EINVAL, "peft_adapter_combine: weight %g of \"%s\" (linear needs weights >= 0)",
                              weights[i], names[i]);
            goto done;
        }
        if (comb == PEFT_COMBINE_LINEAR && src[i]->rank != src[0]->rank) {
            code = peft__fail(PEFT_EINVAL, "peft_adapter_combine: linear needs one rank (\"%s\" has %d, \"%s\" %d); "
                                           "use cat or svd", names[0], src[0]->rank, names[i], src[i]->rank);
            goto done;
        }
        R += src[i]->rank;
        rmax = src[i]->rank > rmax ? src[i]->rank : rmax;
        for (int k = 0; k < src[i]->n_modules; k++)
            sel[src[i]->mods[k].layer * PEFT_MOD_COUNT + src[i]->mods[k].kind] = 1;
    }
    R = comb == PEFT_COMBINE_LINEAR ? src[0]->rank : comb == PEFT_COMBINE_CAT ? R : svd_rank > 0 ? svd_rank : rmax;
    /* the new attachment: built as if attached, then kept inactive */
    peft_lora_options o = PEFT_LORA_OPTIONS_INIT;
    union_options(&o, sel, L, buf, 65536);
    o.rank = R;
    o.alpha = (float)R;
    o.dropout = src[0]->dropout;
    o.seed = src[0]->seed;
    held_adapter active, made;
    stash_active(m, &active);
    code = peft_attach_lora(m, &o, NULL);
    stash_active(m, &made);
    restore_active(m, &active);
    if (code)
        goto done;
    size_t big = 0;
    for (int k = 0; k < made.l->n_modules; k++)
        if ((size_t)made.l->mods[k].out * made.l->mods[k].in > big)
            big = (size_t)made.l->mods[k].out * made.l->mods[k].in;
    if (comb == PEFT_COMBINE_SVD && !(scratch = peft__alloc_floats(big)))
        code = peft__fail(PEFT_ENOMEM, "peft_adapter_combine: out of memory");
    for (int k = 0; !code && k < made.l->n_modules; k++) {
        const lora_module *md = &made.l->mods[k];
        code = combine_module(m, src, weights, n, comb, md, made.l->params + md->off_a, made.l->params + md->off_b,
                              scratch);
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
    free(src);
    free(sel);
    free(buf);
    peft__free(scratch);
    return code;
}
