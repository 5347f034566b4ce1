/* Opening a Hugging Face model directory; the model handle's life cycle. */
#define _POSIX_C_SOURCE 200809L
#include "model.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "json.h"

const char *const peft__module_names[PEFT_MOD_COUNT] = {"q_proj",    "k_proj",  "v_proj",
                                                        "o_proj",    "gate_proj", "up_proj",
                                                        "down_proj"};
const char *const peft__module_parents[PEFT_MOD_COUNT] = {"self_attn", "self_attn", "self_attn",
                                                          "self_attn", "mlp",       "mlp",
                                                          "mlp"};

const char *peft__mod_name(const peft_config *c, int k)
{
    if (c && c->fused && k == PEFT_MOD_Q)
        return "qkv_proj";
    if (c && c->fused && k == PEFT_MOD_GATE)
        return "gate_up_proj";
    return peft__module_names[k];
}

int peft__mod_out(const peft_config *c, int k)
{
    int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    switch (k) {
    case PEFT_MOD_Q: return c->fused ? qd + 2 * kvd : qd;
    case PEFT_MOD_K:
    case PEFT_MOD_V: return kvd;
    case PEFT_MOD_GATE: return c->fused ? 2 * c->ffn_dim : c->ffn_dim;
    case PEFT_MOD_UP: return c->ffn_dim;
    default: return c->dim;
    }
}

int peft_open_options_init(peft_open_options *opts, uint32_t version)
{
    if (!opts || version == 0 || version > PEFT_OPEN_OPTIONS_VERSION)
        return peft__fail(PEFT_EINVAL, "peft_open_options_init: bad arguments");
    /* only the fields of that version (an older header's struct is smaller) */
    static const size_t size[PEFT_OPEN_OPTIONS_VERSION + 1] = {0, offsetof(peft_open_options, frozen_dtype),
                                                               sizeof(peft_open_options)};
    peft_open_options d = PEFT_OPEN_OPTIONS_INIT;
    d.version = version;
    memcpy(opts, &d, size[version]);
    return PEFT_OK;
}

static int add_owned(peft_model *m, float *p)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        float **n = realloc(m->owned, (size_t)cap * sizeof *n);
        if (!n)
            return -1;
        m->owned = n;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return 0;
}

int peft__gguf_add_owned(peft_model *m, float *p) { return add_owned(m, p); }

int peft__owned_release(peft_model *m, const void *p)
{
    for (int i = 0; i < m->n_owned; i++)
        if ((const void *)m->owned[i] == p) {
            peft__free(m->owned[i]);
            m->owned[i] = m->owned[--m->n_owned];
            return 0;
        }
    return -1;
}

/* the mapping that holds p: its start and size, and the path of its file; NULL if none */
static const char *mapping_of(const peft_model *m, const void *p, const uint8_t **start, size_t *size)
{
    const uint8_t *a = p;
    if (m->gguf_map && a >= (const uint8_t *)m->gguf_map && a < (const uint8_t *)m->gguf_map + m->gguf_size) {
        *start = m->gguf_map;
        *size = m->gguf_size;
        return m->path;
    }
    for (int i = 0; i < m->n_files; i++) {
        const uint8_t *b = m->files[i]->map;
        if (b && a >= b && a < b + m->files[i]->map_size) {
            *start = b;
            *size = m->files[i]->map_size;
            return m->files[i]->path;
        }
    }
    return NULL;
}

int peft__in_mapping(const peft_model *m, const void *p, size_t n)
{
    const uint8_t *start;
    size_t size;
    return mapping_of(m, p, &start, &size) && n <= size && (size_t)((const uint8_t *)p - start) <= size - n;
}

const char *peft__mapping_file(const peft_model *m, const void *p, uint64_t *offset)
{
    const uint8_t *start;
    size_t size;
    const char *path = mapping_of(m, p, &start, &size);
    if (path)
        *offset = (uint64_t)((const uint8_t *)p - start);
    return path;
}
int peft__gguf_open(peft_model *m, const char *path);

/* The panel buffer of quantized weights: 1M floats (4 MiB), or 16 rows of the widest. */
static int alloc_qpanel(peft_model *m)
{
    int64_t widest = m->embed.q || m->head.q || m->head.bf16 ? m->cfg.dim : 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            const peft_w *w = &m->layers[l].w[k];
            if ((w->q || w->bf16) && w->cols > widest)
                widest = w->cols;
        }
    if (!widest)
        return PEFT_OK;
    m->qpanel_floats = widest * 16 > ((int64_t)1 << 20) ? widest * 16 : (int64_t)1 << 20;
    if (!(m->qpanel = peft__alloc_floats((size_t)m->qpanel_floats)))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory for the dequantization panel", m->path);
    return PEFT_OK;
}

/* 1: a GGUF file, 0: not one, -1: it could not be read for lack of memory */
static int is_gguf_file(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 0;
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    if (!f && errno == ENOMEM)
        return -1;
    if (f) {
        if (fread(magic, 1, 4, f) != 4)
            magic[0] = 0;
        fclose(f);
    }
    return memcmp(magic, "GGUF", 4) == 0;
}

/* A text model tensor ("model.X", "lm_head.weight") across the open shards, under a multimodal
   Gemma 3's names: transformers before 4.52 saved "language_model.model.X" and
   "language_model.lm_head.weight", later ones "model.language_model.X" and "lm_head.weight" */
const char *peft__file_tensor_name(const peft_model *m, const char *name, char *buf, size_t cap)
{
    if (!m->cfg.multimodal)
        return name;
    int legacy = m->mm_layout == 1, inner = !strncmp(name, "model.", 6);
    snprintf(buf, cap, "%s%s", inner ? (legacy ? "language_model.model." : "model.language_model.")
                                     : (legacy ? "language_model." : ""), inner ? name + 6 : name);
    return buf;
}

static const st_tensor *find_tensor(const peft_model *m, const char *name, const st_file **in)
{
    char buf[192];
    name = peft__file_tensor_name(m, name, buf, sizeof buf);
    for (int i = 0; i < m->n_files; i++) {
        const st_tensor *t = st_find(m->files[i], name);
        if (t) {
            *in = m->files[i];
            return t;
        }
    }
    return NULL;
}

/* Find a tensor across the open shards, check its shape, return float32 data. */
static int load_tensor(peft_model *m, const float **out, const char *name, int64_t d0, int64_t d1)
{
    const st_file *f = NULL;
    const st_tensor *t = find_tensor(m, name, &f);
    if (!t)
        return peft__fail(PEFT_ENOTFOUND, "%s: tensor '%s' not found%s", m->path, name,
                          m->cfg.multimodal ? " (in the multimodal checkpoint's text model)" : "");
    int nd = d1 > 0 ? 2 : 1;
    if (t->n_dims != nd || t->shape[0] != d0 || (nd == 2 && t->shape[1] != d1)) {
        char got[96] = "", *p = got;
        for (int i = 0; i < t->n_dims && p < got + sizeof got - 24; i++)
            p += snprintf(p, 24, i ? ", %lld" : "%lld", (long long)t->shape[i]);
        if (nd == 2)
            return peft__fail(PEFT_ESHAPE, "%s: tensor '%s' has shape [%s], config.json implies [%lld, %lld]",
                              f->path, name, got, (long long)d0, (long long)d1);
        return peft__fail(PEFT_ESHAPE, "%s: tensor '%s' has shape [%s], config.json implies [%lld]",
                          f->path, name, got, (long long)d0);
    }
    if (d1 > 0 && strcmp(name, "model.embed_tokens.weight") != 0) {
        const char *dt = st_dtype_name(t->dtype);
        if (!m->weights_dtype[0])
            snprintf(m->weights_dtype, sizeof m->weights_dtype, "%s", dt);
        else if (strcmp(m->weights_dtype, dt) != 0)
            snprintf(m->weights_dtype, sizeof m->weights_dtype, "mixed");
    }
    const float *in_place = st_f32_in_place(f, t);
    if (in_place) {
        *out = in_place;
        return PEFT_OK;
    }
    float *buf = peft__alloc_floats(t->n_elems);
    if (!buf || add_owned(m, buf)) {
        peft__free(buf);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory converting '%s'", f->path, name);
    }
    int code = st_read_f32(f, t, buf, t->n_elems);
    if (code)
        return code;
    *out = buf;
    return PEFT_OK;
}

static int open_shards(peft_model *m)
{
    char *single = peft__path_join(m->path, "model.safetensors");
    char *index = peft__path_join(m->path, "model.safetensors.index.json");
    int code = PEFT_OK;
    struct stat sb;
    json_doc *doc = NULL;
    if (!single || !index) {
        code = peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    if (stat(single, &sb) == 0) {
        m->files = calloc(1, sizeof *m->files);
        if (!m->files) {
            code = peft__fail(PEFT_ENOMEM, "out of memory");
            goto done;
        }
        code = st_open(&m->files[0], single);
        if (!code)
            m->n_files = 1;
        goto done;
    }
    char *text;
    size_t len;
    code = peft__read_file(&text, &len, index, 64u << 20);
    if (code == PEFT_ENOTFOUND) {
        code = peft__fail(PEFT_ENOTFOUND, "%s: neither model.safetensors nor model.safetensors.index.json found",
                          m->path);
        goto done;
    }
    if (code)
        goto done;
    code = json_parse(&doc, text, len, index);
    free(text);
    if (code)
        goto done;
    const json_value *wm = json_get(json_root(doc), "weight_map");
    if (!wm || wm->type != JSON_OBJECT || wm->length == 0) {
        code = peft__fail(PEFT_EFORMAT, "%s: missing \"weight_map\"", index);
        goto done;
    }
    m->files = calloc(wm->length, sizeof *m->files);
    if (!m->files) {
        code = peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < wm->length; i++) {
        const json_value *v = &wm->items[i];
        if (v->type != JSON_STRING || strchr(v->string, '/') || strcmp(v->string, "..") == 0) {
            code = peft__fail(PEFT_EFORMAT, "%s: bad shard name for '%s'", index, wm->keys[i]);
            goto done;
        }
        int seen = 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(wm->items[j].string, v->string) == 0;
        if (seen)
            continue;
        char *p = peft__path_join(m->path, v->string);
        if (!p) {
            code = peft__fail(PEFT_ENOMEM, "out of memory");
            goto done;
        }
        code = st_open(&m->files[m->n_files], p);
        free(p);
        if (code)
            goto done;
        m->n_files++;
    }
done:
    json_free(doc);
    free(single);
    free(index);
    return code;
}

int peft__shifted_copy(peft_model *m, const float *p, int64_t n, float shift, const float **out)
{
    float *q = peft__alloc_floats((size_t)n);
    if (!q || add_owned(m, q)) {
        peft__free(q);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", m->path);
    }
    for (int64_t i = 0; i < n; i++)
        q[i] = p[i] + shift;
    *out = q;
    return PEFT_OK;
}

/* a norm weight; Gemma's: the file's tensor (zero-centred) in *file and 1 + it in *out */
static int load_norm(peft_model *m, const float **out, const float **file, const char *name, int64_t n)
{
    int code = load_tensor(m, out, name, n, 0);
    if (code || !m->cfg.gemma)
        return code;
    *file = *out;
    return peft__shifted_copy(m, *file, n, 1.0f, out);
}

static int load_weights(peft_model *m)
{
    const peft_config *c = &m->cfg;
    char name[160];
    int code;
    int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    m->embed = (peft_w){.rows = c->vocab, .cols = c->dim};
    const st_file *f;
    m->mm_layout = 1; /* which of the two multimodal layouts the files hold */
    if (c->multimodal && !find_tensor(m, "model.embed_tokens.weight", &f))
        m->mm_layout = 2;
    if ((code = load_tensor(m, &m->embed.f, "model.embed_tokens.weight", c->vocab, c->dim)) ||
        (code = load_norm(m, &m->final_norm, &m->final_norm_file, "model.norm.weight", c->dim)))
        return code;
    /* lm_head: tied when the config says so or the tensor is absent */
    int has_head = find_tensor(m, "lm_head.weight", &f) != NULL;
    if (c->tied || !has_head) {
        m->head = m->embed;
        m->cfg.tied = 1;
    } else if ((m->head = m->embed, code = load_tensor(m, &m->head.f, "lm_head.weight", c->vocab, c->dim))) {
        return code;
    }
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    const int64_t shp[PEFT_MOD_COUNT][2] = {{peft__mod_out(c, PEFT_MOD_Q), c->dim}, {kvd, c->dim},
                                            {kvd, c->dim},        {c->dim, qd},
                                            {peft__mod_out(c, PEFT_MOD_GATE), c->dim}, {c->ffn_dim, c->dim},
                                            {c->dim, c->ffn_dim}};
    for (int l = 0; l < c->n_layers; l++) {
        peft_layer_weights *w = &m->layers[l];
        /* Gemma 3's post_attention_layernorm follows attention; its MLP's input norm is
           pre_feedforward_layernorm */
        const float **norms[6] = {&w->attn_norm, &w->ffn_norm, &w->post_attn_norm, &w->post_ffn_norm, &w->q_norm,
                                  &w->k_norm};
        static const char *const nn[6] = {"input_layernorm", "post_attention_layernorm", "post_attention_layernorm",
                                          "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm"};
        for (int i = 0; i < 6; i++) {
            if ((i == 2 || i == 3) && !c->gemma)
                continue;
            if (i >= 4 && !c->qk_norm)
                continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l,
                     c->gemma && i == 1 ? "pre_feedforward_layernorm" : nn[i]);
            if ((code = load_norm(m, norms[i], &w->file_norm[i], name, i >= 4 ? c->head_dim : c->dim)))
                return code;
        }
        for (int k = 0; k < PEFT_MOD_COUNT; k++) {
            if (!peft__has_mod(c, k)) /* Phi-3: k and v are rows of q's qkv_proj, up of gate's gate_up_proj */
                continue;
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l, peft__module_parents[k],
                     peft__mod_name(c, k));
            w->w[k] = (peft_w){.rows = shp[k][0], .cols = shp[k][1]};
            if ((code = load_tensor(m, &w->w[k].f, name, shp[k][0], shp[k][1])))
                return code;
            snprintf(name, sizeof name, "model.layers.%d.%s.%s.bias", l, peft__module_parents[k], peft__mod_name(c, k));
            if ((c->bias_mask >> k & 1) && (code = load_tensor(m, &w->bias[k], name, shp[k][0], 0)))
                return code;
        }
    }
    uint64_t per_layer = 2ull * c->dim + (uint64_t)c->dim * (uint64_t)(2 * qd + 2 * kvd) +
                         3ull * (uint64_t)c->dim * (uint64_t)c->ffn_dim + peft__extra_layer_params(c);
    m->n_params = (uint64_t)c->vocab * c->dim * (c->tied ? 1 : 2) + c->dim +
                  per_layer * (uint64_t)c->n_layers;
    return PEFT_OK;
}

static int pick_backend(peft_model *m, const char *name)
{
    if (!name || strcmp(name, "cpu") == 0) {
        m->be = peft__backend_cpu();
    } else if (strcmp(name, "blis") == 0) {
        m->be = peft__backend_blis();
        if (!m->be)
            return peft__fail(PEFT_EUNSUPPORTED, "backend 'blis' was not built into this libpeft "
                                                 "(configure with -Dblis=enabled)");
    } else {
        return peft__fail(PEFT_EINVAL, "unknown backend '%s' (available: cpu%s)", name,
                          peft__backend_blis() ? ", blis" : "");
    }
    m->host.struct_size = sizeof m->host;
    m->host.n_threads = m->n_threads;
    m->host.pool = m->pool;
    m->host.parallel_for = peft__pool_for;
    int code = m->be->init(&m->be_ctx, &m->host);
    if (code)
        return code < 0 ? code : PEFT_EBACKEND;
    return PEFT_OK;
}

int peft_model_open(peft_model **out, const char *path, const peft_open_options *opts)
{
    if (!out)
        return peft__fail(PEFT_EINVAL, "peft_model_open: out is NULL");
    *out = NULL;
    if (!path)
        return peft__fail(PEFT_EINVAL, "peft_model_open: path is NULL");
    peft_open_options o = PEFT_OPEN_OPTIONS_INIT;
    if (opts) {
        if (opts->version == 0 || opts->version > PEFT_OPEN_OPTIONS_VERSION)
            return peft__fail(PEFT_EINVAL, "peft_model_open: unknown options version %u", opts->version);
        o.n_threads = opts->n_threads; /* a version 1 caller's struct ends after backend */
        o.backend = opts->backend;
        if (opts->version >= 2)
            o.frozen_dtype = opts->frozen_dtype;
    }
    /* the options checked before the model is read */
    int bf16 = o.frozen_dtype && strcmp(o.frozen_dtype, "f32") != 0;
    if (bf16 && strcmp(o.frozen_dtype, "bf16") != 0)
        return peft__fail(PEFT_EINVAL, "unknown frozen_dtype '%s' (f32, bf16)", o.frozen_dtype);
    peft__clear_error();
    peft_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return peft__fail(PEFT_ENOMEM, "out of memory");
    }
    int code, gguf = is_gguf_file(path);
    if (gguf < 0) {
        code = peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    } else if (gguf) {
        code = peft__gguf_open(m, path);
    } else {
        char *cfg_path = peft__path_join(path, "config.json");
        char *text = NULL;
        size_t len;
        code = cfg_path ? peft__read_file(&text, &len, cfg_path, 16u << 20) : peft__fail(PEFT_ENOMEM, "out of memory");
        if (!code)
            code = peft__config_parse(&m->cfg, text, len, cfg_path);
        free(text);
        free(cfg_path);
        if (!code)
            code = open_shards(m);
        if (!code)
            code = load_weights(m);
    }
    if (!code) {
        int nt = o.n_threads;
        if (nt <= 0)
            nt = peft__cpu_count();
        if (nt > 256)
            nt = 256;
        m->n_threads = nt;
        code = peft__pool_create(&m->pool, nt);
    }
    if (!code)
        code = pick_backend(m, o.backend);
    if (!code)
        code = bf16 ? peft__weights_to_bf16(m) : peft__weights_to_memory(m);
    if (!code)
        code = alloc_qpanel(m);
    if (code) {
        peft_model_close(&m);
        return code;
    }
    peft__opt_defaults(m);
    *out = m;
    return PEFT_OK;
}



void peft_model_close(peft_model **pm)
{
    if (!pm || !*pm)
        return;
    peft_model *m = *pm;
    if (m->be && m->be_ctx)
        m->be->free(m->be_ctx);
    peft__pool_destroy(m->pool);
    if (m->merged)
        peft_unmerge_adapter(m);
    peft__lora_free(m->lora);
    peft__held_free(m);
    peft__workspace_free(&m->ws);
    peft__free(m->qpanel);
    for (int i = 0; i < m->n_owned; i++)
        peft__free(m->owned[i]);
    free(m->owned);
    for (int i = 0; i < m->n_files; i++)
        st_close(m->files[i]);
    if (m->gguf_map)
        munmap(m->gguf_map, m->gguf_size);
    free(m->files);
    free(m->layers);
    free(m->path);
    free(m);
    *pm = NULL;
}

int peft_model_get_info(const peft_model *m, peft_model_info *info)
{
    if (!m || !info)
        return peft__fail(PEFT_EINVAL, "peft_model_get_info: NULL argument");
    if (info->version == 0 || info->version > PEFT_MODEL_INFO_VERSION)
        return peft__fail(PEFT_EINVAL, "peft_model_get_info: unknown info version %u", info->version);
    uint32_t v = info->version;
    /* a version 1 caller's struct ends before the version 2 fields */
    memset(info, 0, v >= 2 ? sizeof *info : offsetof(peft_model_info, adapter_type));
    info->version = v;
    snprintf(info->architecture, sizeof info->architecture, "%s", m->cfg.architecture);
    info->n_layers = m->cfg.n_layers;
    info->hidden_size = m->cfg.dim;
    info->intermediate_size = m->cfg.ffn_dim;
    info->n_heads = m->cfg.n_heads;
    info->n_kv_heads = m->cfg.n_kv_heads;
    info->head_dim = m->cfg.head_dim;
    info->vocab_size = m->cfg.vocab;
    info->tied_embeddings = m->cfg.tied;
    info->n_params = m->n_params;
    info->n_trainable = m->lora ? m->lora->n_params : 0;
    info->rms_norm_eps = m->cfg.eps;
    info->rope_theta = m->cfg.rope_theta;
    snprintf(info->backend, sizeof info->backend, "%s", m->be->name);
    info->n_threads = m->n_threads;
    snprintf(info->weights_dtype, sizeof info->weights_dtype, "%s", m->weights_dtype);
    if (v >= 2 && m->lora) {
        static const char *const types[] = {"LORA", "IA3", "LN_TUNING", "VERA", "LOHA", "LOKR", "PROMPT_TUNING",
                                             "TRAINABLE_TOKENS"};
        snprintf(info->adapter_type, sizeof info->adapter_type, "%s", types[m->lora->method]);
        info->n_virtual_tokens = m->lora->method == PEFT_METHOD_PROMPT ? m->lora->n_virtual : 0;
    }
    return PEFT_OK;
}
