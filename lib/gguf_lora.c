/*
 * GGUF LoRA adapters, as llama.cpp's --lora loads them (DESIGN.md section 5):
 * KVs general.architecture, general.type = "adapter", adapter.type = "lora",
 * general.name, adapter.lora.alpha (f32), general.quantization_version;
 * F32 tensors "<base tensor>.lora_a" ne = [in, r] and ".lora_b" ne = [r, out] holding
 * the bytes of PEFT's A and B, data aligned to 32 bytes. llama.cpp applies one
 * alpha / r per file, so per-module alpha and rsLoRA are folded into B; the rows of
 * q and k lora_b follow llama.cpp's RoPE permutation (GGUF row 2i+j = HF row j*hd/2+i).
 *
 * Written from an attached adapter (peft_save_adapter_gguf) or converted either way
 * without the model (peft_convert_adapter): a PEFT directory from its config and tensors,
 * a GGUF LoRA file (F32, F16, BF16 or Q8_0 tensors, as llama.cpp's converter writes them)
 * back to a PEFT directory.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fsutil.h"
#include "gguf.h"
#include "json.h"
#include "model.h"
#include "safetensors.h"

/* The module layout of a GGUF architecture: phi3's fused qkv_proj and gate_up_proj, or NULL
   (the separate modules of the others) */
static const peft_config *arch_cfg(const char *arch)
{
    static const peft_config phi3 = {.fused = 1};
    return arch && !strcmp(arch, "phi3") ? &phi3 : NULL;
}

/* One LoRA module in both worlds: A (r, in), B (out, r) in Hugging Face's row order, the
   module's own scale (alpha / r or alpha / sqrt(r)). */
typedef struct gl_module {
    int layer, kind, r, in, out;
    const float *A, *B;
    float scale;
} gl_module;

/* llama.cpp permutes the q/k rows of the llama, smollm3 and granite architectures only */
static int permutes(const char *arch)
{
    return !strcmp(arch, "llama") || !strcmp(arch, "smollm3") || !strcmp(arch, "granite");
}

/* HF row of GGUF row `row` for heads of hd rows: GGUF h*hd + 2i + j <- HF h*hd + j*hd/2 + i */
static int hf_row(int row, int hd)
{
    int h = row / hd, rr = row % hd;
    return h * hd + (rr % 2) * (hd / 2) + rr / 2;
}

struct gt {
    char hf[160]; /* PEFT key, for the file order */
    char name[96];
    int64_t ne0, ne1;
    float *data; /* owned copy (permuted / folded) */
};

static int cmp_gt(const void *a, const void *b) { return strcmp(((const struct gt *)a)->hf, ((const struct gt *)b)->hf); }

/* The GGUF LoRA file of modules: alpha is the file's adapter.lora.alpha; hd_q, hd_k the head
   sizes of the q/k permutation (0: none). */
static int write_gguf_lora(const char *path, const char *arch, const char *name, float alpha, const gl_module *mods,
                           int n_mods, int hd_q, int hd_k)
{
    int n_t = n_mods * 2, code = PEFT_OK;
    const peft_config *c = arch_cfg(arch);
    struct gt *ts = calloc((size_t)n_t + 1, sizeof *ts);
    gg_buf b = {0};
    if (!ts)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < n_mods; i++) {
        const gl_module *md = &mods[i];
        for (int which = 0; which < 2; which++) {
            struct gt *t = &ts[2 * i + which];
            peft__module_key(c, t->hf, sizeof t->hf, md->layer, md->kind, which);
            snprintf(t->name, sizeof t->name, "blk.%d.%s.weight.lora_%c", md->layer, peft__gguf_mod_name(c, md->kind),
                     which ? 'b' : 'a');
            size_t n = which ? (size_t)md->out * md->r : (size_t)md->r * md->in;
            t->data = malloc(n * sizeof(float));
            if (!t->data) {
                code = peft__fail(PEFT_ENOMEM, "out of memory");
                goto done;
            }
            if (!which) {
                t->ne0 = md->in;
                t->ne1 = md->r;
                memcpy(t->data, md->A, n * sizeof(float));
                continue;
            }
            t->ne0 = md->r;
            t->ne1 = md->out;
            /* fold this module's scale into B: llama.cpp multiplies by alpha / r (1 when alpha is 0) */
            float file_scale = alpha != 0.0f ? alpha / (float)md->r : 1.0f;
            float fold = md->scale / file_scale;
            int hd = md->kind == PEFT_MOD_Q ? hd_q : md->kind == PEFT_MOD_K ? hd_k : 0;
            for (int row = 0; row < md->out; row++) {
                const float *src = md->B + (size_t)(hd ? hf_row(row, hd) : row) * md->r;
                for (int k = 0; k < md->r; k++)
                    t->data[(size_t)row * md->r + k] = fold == 1.0f ? src[k] : src[k] * fold;
            }
        }
    }
    qsort(ts, (size_t)n_t, sizeof *ts, cmp_gt);
    peft__gb_put(&b, "GGUF", 4);
    peft__gb_u32(&b, 3);
    peft__gb_u64(&b, (uint64_t)n_t);
    peft__gb_u64(&b, 6);
    peft__gb_kv_str(&b, "general.architecture", arch);
    peft__gb_kv_str(&b, "general.type", "adapter");
    peft__gb_kv_str(&b, "adapter.type", "lora");
    peft__gb_kv_str(&b, "general.name", name ? name : "libpeft adapter");
    peft__gb_kv_f32(&b, "adapter.lora.alpha", alpha);
    peft__gb_kv_u32(&b, "general.quantization_version", 2);
    uint64_t off = 0;
    for (int i = 0; i < n_t; i++) {
        peft__gb_str(&b, ts[i].name);
        peft__gb_u32(&b, 2);
        peft__gb_u64(&b, (uint64_t)ts[i].ne0);
        peft__gb_u64(&b, (uint64_t)ts[i].ne1);
        peft__gb_u32(&b, 0); /* F32 */
        peft__gb_u64(&b, off);
        off += ((uint64_t)ts[i].ne0 * (uint64_t)ts[i].ne1 * 4 + 31) & ~(uint64_t)31;
    }
    static const unsigned char zeros[32];
    peft__gb_put(&b, zeros, (32 - b.n % 32) % 32);
    for (int i = 0; i < n_t; i++) {
        size_t bytes = (size_t)ts[i].ne0 * (size_t)ts[i].ne1 * 4;
        peft__gb_put(&b, ts[i].data, bytes);
        peft__gb_put(&b, zeros, (32 - bytes % 32) % 32);
    }
    code = b.oom ? peft__fail(PEFT_ENOMEM, "out of memory") : peft__write_atomic(path, b.p, b.n);
done:
    for (int i = 0; i < n_t; i++)
        free(ts[i].data);
    free(ts);
    free(b.p);
    return code;
}

int peft_save_adapter_gguf(peft_model *m, const char *path, const char *name)
{
    if (!m || !path)
        return peft__fail(PEFT_EINVAL, "peft_save_adapter_gguf: NULL argument");
    if (!m->lora)
        return peft__fail(PEFT_ESTATE, "peft_save_adapter_gguf: a LoRA adapter must be attached");
    if (m->lora->method != PEFT_METHOD_LORA) {
        static const char *const names[] = {"LoRA", "IA3", "norm tuning", "VeRA", "LoHa", "LoKr", "prompt tuning", "trainable tokens"};
        int k = m->lora->method;
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: llama.cpp's GGUF LoRA format holds LoRA "
                                             "adapters only (this one is %s)",
                          k >= 0 && k < 8 ? names[k] : "another method");
    }
    lora_state *l = m->lora;
    if (l->use_dora)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: llama.cpp's LoRA format has no DoRA magnitude");
    if (l->embed_r > 0)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: the embedding adapter is not exported to "
                                             "GGUF yet (llama.cpp's converter handles only linear LoRA modules here)");
    if (l->res)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: a PiSSA/OLoRA adapter needs its residual base; "
                                             "save it with convert_to_lora (a plain LoRA of twice the rank) and "
                                             "export that");
    if (l->head_r > 0 || l->n_tok > 0 || l->n_htok > 0 || l->save_embed || l->save_head || l->norms)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: llama.cpp's LoRA files hold the linear "
                                             "modules' lora_a/lora_b only, not lm_head LoRA, token rows or "
                                             "modules trained in full");
    if (l->n_bias > 0)
        return peft__fail(PEFT_EUNSUPPORTED, "peft_save_adapter_gguf: llama.cpp's LoRA format cannot hold the trained "
                                             "biases (PEFT's bias option): export the merged model instead");
    gl_module *mods = calloc((size_t)l->n_modules + 1, sizeof *mods);
    if (!mods)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < l->n_modules; i++) {
        const lora_module *md = &l->mods[i];
        mods[i] = (gl_module){md->layer, md->kind, md->r, md->in, md->out, l->params + md->off_a,
                              l->params + md->off_b, md->scale};
    }
    /* llama.cpp converts Mistral models as the llama architecture */
    const char *arch = !strcmp(m->cfg.architecture, "mistral") ? "llama" : m->cfg.architecture;
    int hd = permutes(arch) ? m->cfg.head_dim : 0;
    int code = write_gguf_lora(path, arch, name, l->alpha, mods, l->n_modules, hd, hd);
    free(mods);
    return code;
}

/* ---- model-free conversion ---- */

static int head_sizes(const gl_module *mods, int n, const char *arch, const peft_convert_options *o, int *hd_q,
                      int *hd_k, const char *path)
{
    *hd_q = *hd_k = 0;
    if (!permutes(arch))
        return PEFT_OK;
    int n_heads = o->n_heads, n_kv = o->n_kv_heads > 0 ? o->n_kv_heads : o->n_heads;
    for (int i = 0; i < n; i++) {
        if (mods[i].kind != PEFT_MOD_Q && mods[i].kind != PEFT_MOD_K)
            continue;
        int heads = mods[i].kind == PEFT_MOD_Q ? n_heads : n_kv;
        if (heads <= 0)
            return peft__fail(PEFT_EINVAL, "%s: the q/k rows of a llama adapter are permuted per attention head: "
                                           "give the base model's head counts (n_heads, n_kv_heads)", path);
        int out = mods[i].out, hd = out / heads;
        if (out % heads || hd % 2)
            return peft__fail(PEFT_ESHAPE, "%s: %s of layer %d has %d rows, not %d heads of an even size", path,
                              peft__mod_name(NULL, mods[i].kind), mods[i].layer, out, heads);
        int *dst = mods[i].kind == PEFT_MOD_Q ? hd_q : hd_k;
        if (*dst && *dst != hd)
            return peft__fail(PEFT_ESHAPE, "%s: the layers' %s sizes differ", path, peft__mod_name(NULL, mods[i].kind));
        *dst = hd;
    }
    return PEFT_OK;
}

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* PEFT directory -> GGUF LoRA file */
static int peft_to_gguf(const char *dir, const char *dst, const peft_convert_options *o)
{
    char cfg_path[4200], st_path[4200], *regex = NULL, *exclude = NULL;
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", dir);
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", dir);
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    int32_t *tok = NULL;
    static char layers[32768];
    st_file *f = NULL;
    gl_module *mods = NULL;
    float *data = NULL;
    const char *arch = o->architecture ? o->architecture : "llama";
    int code = peft__read_lora_config(arch_cfg(arch), &lo, layers, sizeof layers, &tok, &regex, &exclude, cfg_path);
    if (code)
        goto done;
    if (lo.use_dora || lo.init == PEFT_INIT_PISSA || lo.init == PEFT_INIT_OLORA) {
        code = peft__fail(PEFT_EUNSUPPORTED, "%s: %s", cfg_path,
                          lo.use_dora ? "llama.cpp's LoRA format has no DoRA magnitude"
                                      : "a PiSSA/OLoRA adapter needs its residual base (convert it to a plain LoRA "
                                        "first, PEFT's path_initial_model_for_weight_conversion)");
        goto done;
    }
    if (lo.modules_to_save || lo.norms || lo.n_token_indices || lo.n_head_token_indices ||
        (lo.targets & (PEFT_TARGET_EMBED | PEFT_TARGET_LM_HEAD))) {
        code = peft__fail(PEFT_EUNSUPPORTED, "%s: llama.cpp's LoRA files hold the linear modules' lora_a/lora_b only, "
                                             "not embedding or lm_head LoRA, token rows or modules trained in full",
                          cfg_path);
        goto done;
    }
    if ((code = peft__adapter_open(&f, st_path)))
        goto done;
    size_t n_t = f->n_tensors, total = 0;
    for (size_t i = 0; i < n_t; i++) {
        size_t len = strlen(f->tensors[i].name);
        if (len > 5 && !strcmp(f->tensors[i].name + len - 5, ".bias")) {
            code = peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s' is a trained bias (PEFT's bias option), which "
                                                 "llama.cpp's LoRA format cannot hold: merge the adapter into the "
                                                 "model instead", st_path, f->tensors[i].name);
            goto done;
        }
    }
    if (n_t == 0 || n_t % 2) {
        code = peft__fail(PEFT_EFORMAT, "%s: %zu tensors, not lora_A/lora_B pairs", st_path, n_t);
        goto done;
    }
    for (size_t i = 0; i < n_t; i++) {
        if (f->tensors[i].n_elems > (1ull << 34)) {
            code = peft__fail(PEFT_ESHAPE, "%s: tensor '%s' is too large", st_path, f->tensors[i].name);
            goto done;
        }
        total += (size_t)f->tensors[i].n_elems;
    }
    mods = calloc(n_t / 2, sizeof *mods);
    data = malloc((total ? total : 1) * sizeof *data);
    if (!mods || !data) {
        code = peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    int n = 0;
    size_t used = 0;
    for (size_t i = 0; i < n_t && !code; i++) {
        const st_tensor *ta = &f->tensors[i];
        const char *nm = ta->name, *pre = "base_model.model.";
        size_t len = strlen(nm), pl = strlen(pre), sl = strlen(".lora_A.weight");
        char mod[160];
        int kind, layer;
        if (len <= pl + sl || strncmp(nm, pre, pl) != 0 ||
            (strcmp(nm + len - sl, ".lora_A.weight") != 0 && strcmp(nm + len - sl, ".lora_B.weight") != 0) ||
            len - pl - sl >= sizeof mod) {
            code = peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s' is not a linear module's lora_A/lora_B", st_path, nm);
            break;
        }
        if (nm[len - sl + 6] == 'B')
            continue; /* found through its A */
        memcpy(mod, nm + pl, len - pl - sl);
        mod[len - pl - sl] = '\0';
        if (peft__parse_module_name(arch_cfg(arch), mod, &kind, &layer) || layer < 0) {
            code = peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s' is not a linear module's lora_A/lora_B", st_path, nm);
            break;
        }
        char bname[200];
        snprintf(bname, sizeof bname, "%s%s.lora_B.weight", pre, mod);
        const st_tensor *tb = st_find(f, bname);
        if (!tb || ta->n_dims != 2 || tb->n_dims != 2 || ta->shape[0] != tb->shape[1] || ta->shape[0] > 65536 ||
            ta->shape[1] > (1 << 24) || tb->shape[0] > (1 << 24)) {
            code = peft__fail(tb ? PEFT_ESHAPE : PEFT_EFORMAT, "%s: %s: lora_A %s and lora_B %s are not a pair (r x in, out x r)",
                              st_path, mod, "found", tb ? "found" : "missing");
            break;
        }
        gl_module *md = &mods[n++];
        md->layer = layer;
        md->kind = kind;
        md->r = (int)ta->shape[0];
        md->in = (int)ta->shape[1];
        md->out = (int)tb->shape[0];
        int r_cfg = (int)peft__pattern_value(lo.rank_pattern, mod, lo.rank);
        if (r_cfg != md->r) {
            code = peft__fail(PEFT_ESHAPE, "%s: %s has rank %d, the config says %d", st_path, mod, md->r, r_cfg);
            break;
        }
        float alpha = (float)peft__pattern_value(lo.alpha_pattern, mod, lo.alpha);
        md->scale = lo.use_rslora ? alpha / sqrtf((float)md->r) : alpha / (float)md->r;
        float *pa = data + used, *pb = pa + ta->n_elems;
        used += (size_t)ta->n_elems + (size_t)tb->n_elems;
        if ((code = st_read_f32(f, ta, pa, ta->n_elems)) || (code = st_read_f32(f, tb, pb, tb->n_elems)))
            break;
        md->A = pa;
        md->B = pb;
    }
    if (code)
        goto done;
    if (n * 2 != (int)n_t) {
        code = peft__fail(PEFT_EFORMAT, "%s: a lora_B without its lora_A", st_path);
        goto done;
    }
    int hd_q, hd_k;
    if (!(code = head_sizes(mods, n, arch, o, &hd_q, &hd_k, dir)))
        code = write_gguf_lora(dst, arch, o->name, lo.alpha, mods, n, hd_q, hd_k);
done:
    st_close(f);
    free(mods);
    free(data);
    free(tok);
    free(regex);
    free(exclude);
    return code;
}

/* ---- GGUF LoRA file -> PEFT directory ---- */

struct lora_keys {
    char arch[32], type[32], adapter[32], name[128];
    float alpha;
    int have_alpha;
};

static int lora_key(void *ctx, const gg_kv *kv)
{
    struct lora_keys *k = ctx;
    if (kv->type == 8 && peft__gg_key_is(kv, "general.architecture"))
        peft__gg_str(kv, k->arch, sizeof k->arch);
    else if (kv->type == 8 && peft__gg_key_is(kv, "general.type"))
        peft__gg_str(kv, k->type, sizeof k->type);
    else if (kv->type == 8 && peft__gg_key_is(kv, "adapter.type"))
        peft__gg_str(kv, k->adapter, sizeof k->adapter);
    else if (kv->type == 8 && peft__gg_key_is(kv, "general.name"))
        peft__gg_str(kv, k->name, sizeof k->name);
    else if (peft__gg_key_is(kv, "adapter.lora.alpha") && (kv->type == 6 || kv->type == 12)) {
        k->alpha = (float)kv->fv;
        k->have_alpha = 1;
    }
    return PEFT_OK;
}

/* "blk.N.<gguf name>.weight.lora_a|b" -> layer, kind, which (0 a, 1 b) */
static int parse_peft__gguf_mod_name(const peft_config *c, const char *s, int *layer, int *kind, int *which)
{
    if (strncmp(s, "blk.", 4) != 0)
        return -1;
    char *end;
    long l = strtol(s + 4, &end, 10);
    if (end == s + 4 || *end != '.' || l < 0 || l > 100000)
        return -1;
    for (int k = 0; k < PEFT_MOD_COUNT; k++) {
        size_t gl = strlen(peft__gguf_mod_name(c, k));
        if (peft__has_mod(c, k) && strncmp(end + 1, peft__gguf_mod_name(c, k), gl) == 0 &&
            (!strcmp(end + 1 + gl, ".weight.lora_a") || !strcmp(end + 1 + gl, ".weight.lora_b"))) {
            *layer = (int)l;
            *kind = k;
            *which = end[1 + gl + 13] == 'b';
            return 0;
        }
    }
    return -1;
}

static int cmp_mod(const void *a, const void *b)
{
    const gl_module *x = a, *y = b;
    return x->layer != y->layer ? (x->layer < y->layer ? -1 : 1) : (x->kind > y->kind) - (x->kind < y->kind);
}

static int cmp_int(const void *a, const void *b) { return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b); }

/* adapter_config.json of a plain LoRA over these modules (sorted by layer, kind), in the form
   peft_save_adapter writes: one rank (the most common) with rank_pattern for the others, the
   file's alpha (or, for alpha 0, llama.cpp's scale 1: alpha = r per module). */
static int write_config(const char *path, const peft_config *c, const gl_module *mods, int n, float alpha,
                        const char *base, int n_model_layers)
{
    struct jw w = {0};
    int *ranks = malloc((size_t)n * sizeof *ranks);
    if (!ranks)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        ranks[i] = mods[i].r;
    qsort(ranks, (size_t)n, sizeof *ranks, cmp_int);
    int r = ranks[0], best = 0;
    for (int i = 0, run = 0; i < n; i++) {
        run = i && ranks[i] == ranks[i - 1] ? run + 1 : 1;
        if (run > best) {
            best = run;
            r = ranks[i];
        }
    }
    free(ranks);
    /* which kinds on which layers: a product (target_modules x layers_to_transform) or a regex */
    uint32_t kinds = 0, per_layer[1024] = {0};
    int n_layers = 0, product = 1, max_layer = 0;
    for (int i = 0; i < n; i++) {
        kinds |= 1u << mods[i].kind;
        max_layer = mods[i].layer > max_layer ? mods[i].layer : max_layer;
    }
    if (max_layer >= 1024)
        product = 0;
    for (int i = 0; i < n && product; i++)
        per_layer[mods[i].layer] |= 1u << mods[i].kind;
    for (int l = 0; l <= max_layer && product; l++) {
        n_layers += per_layer[l] != 0;
        product &= per_layer[l] == 0 || per_layer[l] == kinds;
    }
    /* the modules of another rank, "name=r,...": rank_pattern, and alpha_pattern when alpha is 0 */
    struct jw pat = {0};
    for (int i = 0; i < n; i++)
        if (mods[i].r != r)
            jw_put(&pat, "%smodel.layers.%d.%s.%s=%d", pat.n ? "," : "", mods[i].layer,
                   peft__module_parents[mods[i].kind], peft__mod_name(c, mods[i].kind), mods[i].r);
    if (pat.oom)
        w.oom = 1;
    int first;
    jw_put(&w, "{\n  \"alpha_pattern\": ");
    jw_pattern(&w, alpha == 0.0f ? pat.s : NULL, 0, 1.0);
    jw_put(&w, ",\n  \"base_model_name_or_path\": ");
    jw_str(&w, base);
    jw_put(&w, ",\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"inference_mode\": true,\n");
    jw_put(&w, "  \"init_lora_weights\": true,\n  \"layers_pattern\": null,\n  \"layers_to_transform\": ");
    if (!product || (n_model_layers > 0 && n_layers == n_model_layers)) {
        jw_put(&w, "null");
    } else {
        jw_put(&w, "[");
        first = 1;
        for (int l = 0; l <= max_layer; l++)
            if (per_layer[l]) {
                jw_put(&w, "%s\n    %d", first ? "" : ",", l);
                first = 0;
            }
        jw_put(&w, "\n  ]");
    }
    jw_put(&w, ",\n  \"lora_alpha\": ");
    jw_number(&w, alpha != 0.0f ? alpha : (float)r);
    jw_put(&w, ",\n  \"lora_dropout\": 0.0,\n  \"modules_to_save\": null,\n  \"peft_type\": \"LORA\",\n");
    jw_put(&w, "  \"r\": %d,\n  \"rank_pattern\": ", r);
    jw_pattern(&w, pat.s, 1, 1.0);
    free(pat.s);
    jw_put(&w, ",\n  \"revision\": null,\n  \"target_modules\": ");
    if (product) {
        jw_put(&w, "[");
        first = 1;
        first = peft__jw_mod_names(&w, c, kinds, first);
        jw_put(&w, "\n  ]");
    } else { /* the modules by name, as one regular expression (PEFT: re.fullmatch) */
        struct jw re = {0};
        for (int i = 0; i < n; i++)
            jw_put(&re, "%smodel\\.layers\\.%d\\.%s\\.%s", i ? "|" : "", mods[i].layer,
                   peft__module_parents[mods[i].kind], peft__mod_name(c, mods[i].kind));
        if (re.oom)
            w.oom = 1;
        else
            jw_str(&w, re.s);
        free(re.s);
    }
    jw_put(&w, ",\n  \"task_type\": \"CAUSAL_LM\",\n  \"use_dora\": false,\n  \"use_rslora\": false\n}");
    return peft__jw_write_atomic(&w, path);
}

static int gguf_to_peft(const char *src, const char *dir, const peft_convert_options *o)
{
    gg_file g;
    struct lora_keys k = {0};
    gl_module *mods = NULL;
    float *data = NULL;
    st_out_tensor *ts = NULL;
    char(*names)[128] = NULL;
    int code = peft__gguf_map(&g, src);
    if (code)
        return code;
    if ((code = peft__gguf_parse(&g, lora_key, &k)))
        goto done;
    if (strcmp(k.type, "adapter") != 0 || strcmp(k.adapter, "lora") != 0) {
        code = peft__fail(PEFT_EFORMAT, "%s: not a GGUF LoRA adapter (general.type \"%s\", adapter.type \"%s\")", src,
                          k.type, k.adapter);
        goto done;
    }
    if (!k.have_alpha || !(k.alpha >= 0.0f && k.alpha < 1e6f)) {
        code = peft__fail(PEFT_EFORMAT, "%s: adapter.lora.alpha is missing or out of range", src);
        goto done;
    }
    if (o->architecture && strcmp(o->architecture, k.arch) != 0) {
        code = peft__fail(PEFT_EINVAL, "%s: the adapter is for architecture \"%s\", not \"%s\"", src, k.arch,
                          o->architecture);
        goto done;
    }
    if (g.nt == 0 || g.nt % 2 || g.nt > 200000) {
        code = peft__fail(PEFT_EFORMAT, "%s: %llu tensors, not lora_a/lora_b pairs", src, (unsigned long long)g.nt);
        goto done;
    }
    for (uint64_t i = 0; i < g.nt; i++) {
        int layer, kind, which;
        if (parse_peft__gguf_mod_name(arch_cfg(k.arch), g.ts[i].name, &layer, &kind, &which)) {
            code = peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s' is not a linear module's lora_a/lora_b (blk.N.{attn_q,"
                                                 "attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight.lora_a|b; "
                                                 "phi3: attn_qkv, attn_output, ffn_up, ffn_down)",
                              src, g.ts[i].name);
            goto done;
        }
        uint32_t ty = g.ts[i].type; /* known types: the parser has bounded the data by the file */
        if (ty != PEFT_GG_F32 && ty != PEFT_GG_F16 && ty != PEFT_GG_BF16 && ty != PEFT_GG_Q8_0) {
            code = peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s' has ggml type %s (%u) (F32, F16, BF16, Q8_0)", src,
                              g.ts[i].name, peft__gg_type_name(ty), ty);
            goto done;
        }
        if (!peft__gg_row_bytes(ty, g.ts[i].ne[0])) {
            code = peft__fail(PEFT_EFORMAT, "%s: tensor '%s': rows are not whole blocks", src, g.ts[i].name);
            goto done;
        }
    }
    int n = (int)(g.nt / 2);
    size_t total = 0;
    for (uint64_t i = 0; i < g.nt; i++)
        total += (size_t)g.ts[i].n;
    mods = calloc((size_t)n, sizeof *mods);
    names = calloc(g.nt, sizeof *names);
    ts = calloc(g.nt, sizeof *ts);
    if (total > (1ull << 34) || !mods || !names || !ts || !(data = malloc(total * sizeof *data))) {
        code = peft__fail(PEFT_ENOMEM, "%s: out of memory", src);
        goto done;
    }
    int got = 0;
    size_t used = 0;
    for (uint64_t i = 0; i < g.nt && !code; i++) {
        const gg_tensor *ta = &g.ts[i];
        int layer, kind, which;
        parse_peft__gguf_mod_name(arch_cfg(k.arch), ta->name, &layer, &kind, &which); /* checked above */
        if (which)
            continue;
        char bname[96];
        snprintf(bname, sizeof bname, "blk.%d.%s.weight.lora_b", layer, peft__gguf_mod_name(arch_cfg(k.arch), kind));
        const gg_tensor *tb = peft__gguf_find(&g, bname);
        if (!tb || ta->n_dims != 2 || tb->n_dims != 2 || ta->ne[1] != tb->ne[0] || ta->ne[1] > 65536 ||
            ta->ne[0] > (1u << 24) || tb->ne[1] > (1u << 24)) {
            code = peft__fail(tb ? PEFT_ESHAPE : PEFT_EFORMAT, "%s: %s: lora_a and lora_b are not a pair "
                              "(ne [in, r] and [r, out])%s", src, ta->name, tb ? "" : ": lora_b missing");
            break;
        }
        for (int j = 0; j < got; j++)
            if (mods[j].layer == layer && mods[j].kind == kind) {
                code = peft__fail(PEFT_EFORMAT, "%s: %s appears twice", src, ta->name);
                break;
            }
        if (code)
            break;
        gl_module *md = &mods[got++];
        md->layer = layer;
        md->kind = kind;
        md->r = (int)ta->ne[1];
        md->in = (int)ta->ne[0];
        md->out = (int)tb->ne[1];
        float *pa = data + used, *pb = pa + ta->n;
        used += (size_t)(ta->n + tb->n);
        const gg_tensor *pair[2] = {ta, tb};
        for (int t = 0; t < 2 && !code; t++) {
            uint32_t ty = pair[t]->type;
            if (peft__dequant(t ? pb : pa, g.data + pair[t]->offset, pair[t]->n, ty))
                code = peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s': type %u", src, pair[t]->name, ty);
        }
        md->A = pa;
        md->B = pb;
    }
    if (code)
        goto done;
    if (got != n) {
        code = peft__fail(PEFT_EFORMAT, "%s: a lora_b without its lora_a", src);
        goto done;
    }
    qsort(mods, (size_t)n, sizeof *mods, cmp_mod);
    for (int i = 0; i < n && !code; i++) /* the same kind has the same sizes in every layer */
        for (int j = 0; j < i; j++)
            if (mods[j].kind == mods[i].kind && (mods[j].in != mods[i].in || mods[j].out != mods[i].out)) {
                code = peft__fail(PEFT_ESHAPE, "%s: %s of layers %d and %d differ in shape", src,
                                  peft__gguf_mod_name(arch_cfg(k.arch), mods[i].kind), mods[j].layer, mods[i].layer);
                break;
            }
    int hd_q, hd_k;
    if (code || (code = head_sizes(mods, n, k.arch, o, &hd_q, &hd_k, src)))
        goto done;
    /* B back to Hugging Face's q/k row order, in place (a row buffer per module) */
    for (int i = 0; i < n && !code; i++) {
        int hd = mods[i].kind == PEFT_MOD_Q ? hd_q : mods[i].kind == PEFT_MOD_K ? hd_k : 0;
        if (!hd)
            continue;
        size_t bytes = (size_t)mods[i].out * mods[i].r * sizeof(float);
        float *tmp = malloc(bytes), *B = (float *)mods[i].B;
        if (!tmp) {
            code = peft__fail(PEFT_ENOMEM, "out of memory");
            break;
        }
        memcpy(tmp, B, bytes);
        for (int row = 0; row < mods[i].out; row++)
            memcpy(B + (size_t)hf_row(row, hd) * mods[i].r, tmp + (size_t)row * mods[i].r, (size_t)mods[i].r * sizeof(float));
        free(tmp);
    }
    if (code)
        goto done;
    for (int i = 0; i < n; i++)
        for (int which = 0; which < 2; which++) {
            st_out_tensor *t = &ts[2 * i + which];
            peft__module_key(arch_cfg(k.arch), names[2 * i + which], sizeof names[0], mods[i].layer, mods[i].kind,
                             which);
            t->name = names[2 * i + which];
            t->n_dims = 2;
            t->shape[0] = which ? mods[i].out : mods[i].r;
            t->shape[1] = which ? mods[i].r : mods[i].in;
            t->data = which ? mods[i].B : mods[i].A;
        }
    if ((code = peft__mkdirs(dir)))
        goto done;
    char st_path[4200], cfg_path[4200];
    snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", dir);
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    const char *base = o->base_model ? o->base_model : k.name[0] ? k.name : "";
    if (!(code = st_write(st_path, ts, g.nt, mk, mv, 1)))
        code = write_config(cfg_path, arch_cfg(k.arch), mods, n, k.alpha, base, o->n_layers);
done:
    peft__gguf_release(&g, 1);
    free(mods);
    free(names);
    free(ts);
    free(data);
    return code;
}

int peft_convert_adapter(const char *src, const char *dst, const peft_convert_options *opts)
{
    peft_convert_options o = PEFT_CONVERT_OPTIONS_INIT;
    if (!src || !dst)
        return peft__fail(PEFT_EINVAL, "peft_convert_adapter: NULL argument");
    if (opts) {
        if (opts->version < 1 || opts->version > PEFT_CONVERT_OPTIONS_VERSION)
            return peft__fail(PEFT_EINVAL, "peft_convert_adapter: options version %d (1..%d)", opts->version,
                              PEFT_CONVERT_OPTIONS_VERSION);
        o = *opts;
    }
    if (o.n_heads < 0 || o.n_kv_heads < 0 || o.n_heads > 65536 || o.n_kv_heads > 65536 || o.n_layers < 0)
        return peft__fail(PEFT_EINVAL, "peft_convert_adapter: bad head or layer counts %d, %d, %d", o.n_heads,
                          o.n_kv_heads, o.n_layers);
    if (o.architecture && (!*o.architecture || strlen(o.architecture) > 31))
        return peft__fail(PEFT_EINVAL, "peft_convert_adapter: bad architecture name");
    return is_dir(src) ? peft_to_gguf(src, dst, &o) : gguf_to_peft(src, dst, &o);
}
