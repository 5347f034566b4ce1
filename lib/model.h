/* The model handle and the training state it owns. */
#ifndef PEFT_MODEL_H
#define PEFT_MODEL_H

#include "internal.h"
#include "safetensors.h"

/* ggml tensor types (GGUF) */
enum { PEFT_GG_F32 = 0, PEFT_GG_F16 = 1, PEFT_GG_Q4_0 = 2, PEFT_GG_Q8_0 = 8, PEFT_GG_Q4_K = 12, PEFT_GG_Q6_K = 14,
       PEFT_GG_BF16 = 30 };

/* A frozen weight matrix (rows, cols), row-major: float32 (f), or ggml-quantized rows of
   row_bytes each (q, qtype), kept as stored and dequantized panel by panel in products. */
typedef struct peft_w {
    const float *f;
    const uint8_t *q;
    uint32_t qtype;
    int64_t rows, cols;
    size_t row_bytes;
    const uint16_t *bf16; /* frozen_dtype "bf16": the matrix in BF16 for the products (rows x cols) */
} peft_w;

typedef struct peft_layer_weights {
    const float *attn_norm, *ffn_norm;
    peft_w w[PEFT_MOD_COUNT];      /* q, k, v, o, gate, up, down: (out, in) */
    peft_w w_base[PEFT_MOD_COUNT]; /* the unmerged weights while an adapter is merged */
    const float *bias[PEFT_MOD_COUNT]; /* (out) or NULL (cfg.bias_mask) */
    const float *bias_base[PEFT_MOD_COUNT]; /* the unmerged bias while an IA3 vector scaling it is merged */
    const float *q_norm, *k_norm;      /* (head_dim) when cfg.qk_norm */
    /* Gemma: the norms after attention and after the MLP (dim); every norm weight of a Gemma
       layer is held as 1 + w, and zero-centred (w, as Hugging Face files hold it) in file_norm
       for exports: input, pre-feedforward, post-attention, post-feedforward, q, k */
    const float *post_attn_norm, *post_ffn_norm;
    const float *file_norm[6];
} peft_layer_weights;

/* One LoRA module: y += scale * B (A x), A (r, in), B (out, r). */
typedef struct lora_module {
    int layer, kind, in, out, r;
    float alpha, scale;
    size_t off_a, off_b; /* offsets into the parameter block */
    size_t off_m;        /* DoRA magnitude (out), when use_dora */
    size_t off_xa;       /* sum of `r` over the modules before this one */
    int ia3_ff;          /* IA3: scales the input (in) rather than the output (out) */
    size_t off_out;      /* sum of `out` over the modules before this one */
} lora_module;

enum peft_method { PEFT_METHOD_LORA = 0, PEFT_METHOD_IA3 = 1, PEFT_METHOD_NORMS = 2, PEFT_METHOD_VERA = 3,
                   PEFT_METHOD_LOHA = 4, /* per module at off_a: w1_a (out, r), w1_b (r, in), w2_a, w2_b */
                   PEFT_METHOD_LOKR = 5, /* per module at off_a: w1 (l, m), then w2 (k, n) or w2_a (k, r), w2_b (r, n) */
                   PEFT_METHOD_PROMPT = 6, /* the soft prompt (n_virtual, dim) at 0 */
                   PEFT_METHOD_TOKENS = 7  /* trainable token rows only (n_tok, dim) at off_tok = 0 */ };

/* LoKr's split of a module: out = l k, in = m n; full: w2 is a full (k, n) matrix */
typedef struct lokr_dims {
    int l, k, m, n, full;
} lokr_dims;
void peft__lokr_dims(lokr_dims *d, int in, int out, int r);
size_t peft__lokr_size(int in, int out, int r);

typedef struct lora_state {
    int method;           /* PEFT_METHOD_*: LoRA/DoRA modules (A, B[, m]) or IA3 vectors (off_a) */
    uint32_t feedforward; /* IA3: kinds whose input is scaled */
    uint32_t targets;
    int rank;
    float alpha, dropout;
    int use_rslora, init, use_dora;
    int max_rank;
    size_t sum_rank;
    char *rank_pattern, *alpha_pattern; /* normalised copies ("key=value,..."), or NULL */
    float *dora_norm;   /* (sum of out) ||W + sBA|| per output row, recomputed each forward */
    float *dora_w;      /* (max out * in) scratch */
    size_t sum_out, max_out, max_w;
    uint64_t seed;
    uint8_t *layer_on;  /* n_layers flags */
    int n_modules;
    lora_module *mods;
    int *index;         /* n_layers * PEFT_MOD_COUNT module index or -1 */
    int lowest_layer;   /* backward stops here (-1: down to the embeddings) */
    /* VeRA: lambda_d (r) at off_a and lambda_b (out) at off_b per module; the frozen shared
       projections A (rank, vera_in) and B (vera_out, rank); scratch for B_eff and its gradient */
    float *vera_A, *vera_B, *vera_beff, *vera_m;
    float *loha_tmp;    /* LoHa, LoKr: 3 x max_w scratch (W + delta or its gradient, the factors) */
    int vera_in, vera_out;
    float vera_d_initial;
    int embed_r;        /* LoRA on the token embeddings: rank (0: none), A (r, vocab) at off_ea, */
    float embed_alpha, embed_scale; /* B (dim, r) at off_eb */
    size_t off_ea, off_eb;
    int64_t *norm_off;  /* NORMS, or LoRA's norms option: (n_layers * PEFT__NORM_SLOTS + 1)
                           offsets of tuned RMSNorm weights or -1 (peft__norm_index), laid out
                           one after another; they hold the weights as files do (Gemma: w) */
    float *norm_applied; /* Gemma: 1 + the tuned norms ([norm_at, + norm_n)), what the layers apply */
    size_t norm_at, norm_n;
    uint32_t norms;     /* LoRA's norms option (PEFT_NORM_* bits), saved as modules_to_save */
    char *target_regex; /* target_modules as a regular expression (its copy), or NULL */
    char *exclude_regex; /* exclude_modules as a regular expression (its copy), or NULL */
    /* Beyond the linear modules (LoRA method), laid out after them from mods_end on:
       embedding LoRA, lm_head LoRA (A (r, dim) at off_ha, B (vocab, r) at off_hb), trainable
       token rows (n_tok, dim) at off_tok, full copies of the embeddings (off_se) and of lm_head
       (off_sh), then the norms from off_norms on. The embedding group is [mods_end, off_norms). */
    size_t mods_end, off_norms;
    int head_r;
    float head_alpha, head_scale;
    size_t off_ha, off_hb;
    int n_tok;
    int32_t *tok_idx;   /* (n_tok) token ids */
    int32_t *tok_slot;  /* (vocab) row of each token in the trained rows, or -1 */
    size_t off_tok;
    int n_htok;         /* trained rows of an untied lm_head (n_htok, dim) at off_htok, after the token rows */
    int32_t *htok_idx;
    size_t off_htok;
    int save_embed, save_head;
    size_t off_se, off_sh;
    float *head_u;      /* lm_head LoRA intermediates (rows, head_r), head_u_cap floats */
    size_t head_u_cap;
    /* PiSSA / OLoRA: per module the residual frozen weight W - s B0 A0 (float32, owned), and
       the initial factors (the module area of the parameter block, mods_end floats) */
    peft_w *res;
    float *init_ab;
    /* prompt tuning: n_virtual rows; the config's init name, text and tokenizer (copies or NULL) */
    int n_virtual;
    int prompt_init;
    char *prompt_text, *prompt_tokenizer;
    /* PEFT's bias option (LoRA): the trained biases, the last n_bias floats of the parameter
       block; bias_off (n_layers * PEFT_MOD_COUNT): each module's offset, or -1 (frozen or none) */
    int bias_mode;
    int64_t *bias_off;
    size_t n_bias;
    size_t n_params;
    float *params, *grads, *m, *v;
} lora_state;

/* Activations of one decoder layer kept for backward (N = B*T rows). */
typedef struct layer_acts {
    float *x_in;        /* (N, D) layer input */
    float *xn1, *rstd1; /* (N, D), (N) */
    float *q, *k, *v;   /* (N, H*hd), (N, Hkv*hd) x2, after RoPE */
    float *att, *lse;   /* (N, H*hd), (B, H, T) */
    float *h;           /* (N, D) after attention residual */
    float *xn2, *rstd2;
    float *g, *u;       /* (N, F) */
    float *q_pre, *k_pre, *rstd_q, *rstd_k; /* qk_norm: q, k before their norms; (N, heads) */
    float *ao, *rstd3, *fo, *rstd4; /* Gemma 3: o_proj's and down_proj's outputs (N, D) before their norms */
} layer_acts;

typedef struct workspace {
    int n_seq, seq_len, n_layers_stored;
    size_t bytes;
    layer_acts *acts;
    float *res[2];       /* residual ping-pong for eval */
    float *x_final, *xnf, *rstdf;
    float *xa;           /* n_modules * N * r LoRA intermediates */
    float *act, *dx, *dxn, *dq, *dk, *dv, *datt, *dact, *dg, *du, *tmp, *dxa;
    float *logits, *row_loss, *att_scratch;
    float *rope_cos, *rope_sin; /* (T, hd/2) */
    float *rope_cos_l, *rope_sin_l; /* Gemma 3's sliding layers (their own base), or NULL */
    float *fused;               /* Phi-3: (N, widest fused module) qkv_proj's or gate_up_proj's output or
                                   its gradient, between the module and the separate q, k, v (g, u) */
    int32_t *labels;            /* (N) label of each row's prediction, -100 = none */
    int32_t *pos;               /* (N) position of each row inside its document */
    size_t lora_floats, max_rank;
    float *dora_z, *dora_dz; /* (N, sum of out) pre-scale outputs of DoRA modules; (N, max out) */
    int has_grads;
    int ckpt;         /* activation checkpointing: acts[l] hold only x_in, one layer's in ckpt_acts */
    layer_acts ckpt_acts;
    void *block;
} workspace;

/* An inactive named adapter (peft_adapter_load / _set / _combine) and its optimizer counters. */
typedef struct held_adapter {
    char name[64];
    lora_state *l;
    int64_t step;
    int micro;
    double accum_tokens;
    uint64_t dropout_calls;
} held_adapter;

struct peft_model {
    char *path;
    peft_config cfg;
    st_file **files;
    int n_files;
    float **owned;
    int n_owned, cap_owned;
    peft_w embed;       /* token embeddings (vocab, dim): float32, or quantized rows of a GGUF file */
    peft_w head;        /* lm_head (vocab, dim); a tied one is the same matrix as embed */
    const float *final_norm;
    const float *final_norm_file; /* Gemma: the zero-centred final norm (final_norm is 1 + it) */
    peft_w embed_base;  /* the unmerged embeddings while an embedding adapter is merged (rows 0: none) */
    peft_layer_weights *layers;
    uint64_t n_params;
    char weights_dtype[8];
    int mm_layout;      /* a multimodal Gemma 3's tensor names: 1 language_model.model.*, 2 model.language_model.*
                           (peft__file_tensor_name) */
    void *gguf_map;     /* a GGUF model file, mapped */
    size_t gguf_size;

    peft_pool *pool;
    int n_threads;
    const peft_backend *be;
    void *be_ctx;
    peft_backend_host host;

    lora_state *lora;
    char lora_name[64];  /* the active attachment's name */
    held_adapter *held;  /* the inactive adapters */
    int n_held;
    workspace ws;

    int act_ckpt; /* PEFT_OPT_ACTIVATION_CHECKPOINTING */
    /* optimizer */
    double lr, beta1, beta2, eps, weight_decay, grad_clip, min_lr_ratio, loraplus_ratio, embed_lr_ratio;
    double embed_weight_decay, norm_lr_ratio, norm_weight_decay; /* < 0: weight_decay */
    int accum_steps, warmup_steps, total_steps, schedule;
    size_t opt_chunk;   /* parameters per task of the update (0: the default; tests set others) */
    int64_t step;       /* updates done */
    int micro;          /* micro-batches accumulated since the last update */
    double accum_tokens;
    uint64_t dropout_calls;
    int adapter_off;    /* peft_adapter_enable(m, 0) */
    int merged;         /* peft_merge_adapter: the adapter lives in merged weight copies */
    float **merged_copies;
    float *qpanel;         /* dequantized rows of a quantized weight (qpanel_floats) */
    int64_t qpanel_floats;
    peft_grad_ready_fn grad_ready; /* peft_set_grad_ready */
    void *grad_ready_user;
};

/* gguf.c / model.c */
int peft__gguf_open(peft_model *m, const char *path);
int peft__gguf_add_owned(peft_model *m, float *p);
/* p (from the owned list) freed and removed from it; 0, or -1 when it is not there */
int peft__owned_release(peft_model *m, const void *p);
/* model.c: 1 when [p, p + n) lies inside one of the model's file mappings */
int peft__in_mapping(const peft_model *m, const void *p, size_t n);
/* model.c: the path of the file whose mapping holds p, and p's offset in it (each mapping is a
   whole file from its start); NULL if none */
const char *peft__mapping_file(const peft_model *m, const void *p, uint64_t *offset);
/* qweight.c: frozen_dtype "bf16": BF16 copies of the float32 linear weights and lm_head */
int peft__weights_to_bf16(peft_model *m);
/* qweight.c: whether the kernel gives anonymous memory transparent huge pages on request */
int peft__huge_pages_offered(void);
/* qweight.c: what the products read of w in place, its float32 matrix or its quantized blocks,
   and its size (NULL where a BF16 copy does the products, or w has neither) */
const void *peft__w_storage(const peft_w *w, size_t *bytes);
/* qweight.c: the float32 matrices and quantized blocks used in place from a file mapping
   copied onto 2 MiB pages */
int peft__weights_to_memory(peft_model *m);

/* The frozen weight of (layer, kind) in effect: the attachment's PiSSA/OLoRA residual, or the
   model's (merged copies included). */
static inline const peft_w *peft__w_of(const peft_model *m, int layer, int kind)
{
    const lora_state *l = m->lora;
    int idx = l && l->res && !m->merged ? l->index[layer * PEFT_MOD_COUNT + kind] : -1;
    return idx >= 0 ? &l->res[idx] : &m->layers[layer].w[kind];
}

/* lora.c: a new attachment state for the model's layers ("all" when layers is NULL); its
   parameter, gradient and AdamW blocks of n floats; making it the model's attachment with a
   fresh optimizer state */
int peft__state_new(lora_state **out, const peft_config *c, const char *layers, const char *what);
int peft__state_alloc(lora_state *l, size_t n, const char *what);
int peft__state_install(peft_model *m, lora_state *l, uint64_t *n_trainable);

/* adapters.c: name a new active attachment "default" (or "default.N" when an inactive adapter
   holds that name); free the inactive adapters */
void peft__name_active(peft_model *m);
void peft__held_free(peft_model *m);
/* adapter.c: write the tensors ({"format": "pt"}) and the config text of w (freed), atomically */
struct jw;
int peft__write_adapter(const peft_config *c, const char *st_path, st_out_tensor *ts, size_t n, const char *cfg_path,
                        struct jw *w);
/* adapter.c: the names of the module kinds in bits as items of a JSON list, one a line; first:
   none written before them. Returns whether none has been written still. */
int peft__jw_mod_names(struct jw *w, const peft_config *c, uint32_t bits, int first);
/* adapter.c: an adapter's tensor file opened with a multimodal Gemma 3's text model keys renamed
   to the library's (text model) names, whichever of transformers' layouts it holds */
int peft__adapter_open(st_file **f, const char *path);
/* model.c: the checkpoint's name of a text model tensor ("model.X", "lm_head.weight"): name
   itself, or a multimodal Gemma 3's in the layout its files use (in buf) */
const char *peft__file_tensor_name(const peft_model *m, const char *name, char *buf, size_t cap);
/* adapter.c: after loading into a new attachment, on success drop the previous one (saved), on
   failure drop the new one and put the previous one back */
int peft__keep_or_restore(peft_model *m, lora_state *saved, int code);
/* adapter_norms.c: LN_TUNING adapters (m->lora of method NORMS) saved, and loaded from the
   parsed adapter_config.json (root) and its tensor file */
int peft__save_norms(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name);
int peft__load_norms(peft_model *m, const struct json_value *root, const char *cfg_path, const char *st_path);

/* adapter.c: the end of loading a one-tensor adapter (key, d0 x d1) into l: onto the matching
   attachment m->lora (weights only), or l becomes the attachment; l freed unless installed */
int peft__load_single(peft_model *m, lora_state *l, const char *st_path, const char *key, int64_t d0, int64_t d1,
                      const char *what);

/* tokens.c: PEFT TRAINABLE_TOKENS files */
int peft__save_tokens(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name);
int peft__load_tokens(peft_model *m, const struct json_value *root, const char *cfg_path, const char *st_path);

/* pissa.c: a rank-r factorisation of W (out x in) from its top singular triplets:
   A = sqrt(S / s) V^T (r x in), B = U sqrt(S / s) (out x r) */
int peft__svd_factors(peft_model *m, const float *W, int out, int in, int r, float s, uint64_t seed, float *A,
                      float *B);

/* adapter_extras.c: adapter_config.json's modules_to_save -> o->modules_to_save, o->norms (layers:
   the adapted layers' "N,M" list, "" = all); trainable_token_indices -> o->token_indices and
   o->head_token_indices (*ids malloc'ed, holding both). */
struct json_value;
/* adapter.c: a PEFT LoRA adapter_config.json into options (layers: a buffer of layers_cap bytes that also holds
   the patterns; *tok, *regex and *exclude: owned copies the caller frees) */
int peft__read_lora_config(const peft_config *c, peft_lora_options *o, char *layers, size_t layers_cap,
                           int32_t **tok, char **regex, char **exclude, const char *path);
/* adapter_extras.c: a module name of an adapter_config.json as the library names it: a multimodal
   Gemma 3's "model.language_model.X" (or "language_model.model.X") is "model.X", its
   "language_model.lm_head" "lm_head" (buf holds the result when it differs; else s itself) */
const char *peft__canon_module(const char *s, char *buf, size_t cap);
/* "model.layers.N.self_attn.q_proj" (or a bare module name: layer -1) -> kind and layer; -1 if not one */
int peft__parse_module_name(const peft_config *c, const char *s, int *kind, int *layer);
/* lora.c: the value of the first "key=value" item whose key ends module `name` at a dot, or def */
double peft__pattern_value(const char *pat, const char *name, double def);
int peft__read_modules_to_save(const struct json_value *v, peft_lora_options *o, const char *layers, const char *path);
int peft__read_token_indices(const struct json_value *v, peft_lora_options *o, int32_t **ids, const char *path);

/* task_merge.c: PEFT's merge_utils over n tensors t[i] of len values (pruned in place): out =
   sum_i w_i p_i, or the TIES disjoint mean when ties; frequency: the majority sign by count. */
enum { PEFT__PRUNE_NONE = 0, PEFT__PRUNE_MAGNITUDE = 1, PEFT__PRUNE_RANDOM = 2 };
int peft__task_merge(float *out, float *const *t, const double *w, int n, size_t len, int prune, int ties,
                     double density, int frequency, uint64_t seed);
/* Clamp a[] and b[] to [-v, v], v the q-quantile (linear interpolation) of their values together. */
int peft__clamp_quantile(float *a, size_t na, float *b, size_t nb, double q);

/* prompt.c: the number of virtual tokens put before each sequence now (0: none, or the adapter
   is off) */
static inline int peft__prompt_len(const peft_model *m)
{
    const lora_state *l = m->lora;
    return l && l->method == PEFT_METHOD_PROMPT && !m->adapter_off ? l->n_virtual : 0;
}
/* prompt.c: PEFT PROMPT_TUNING files */
int peft__save_prompt(peft_model *m, const char *st_path, const char *cfg_path, const char *base_name);
struct json_value;
int peft__load_prompt(peft_model *m, const struct json_value *root, const char *cfg_path, const char *st_path);

/* pissa.c: PiSSA / OLoRA initialisation of every module of l (A, B in the parameter block,
   the residual weights, the copy of the initial factors) */
int peft__pissa_init(lora_state *l, const peft_model *m);

/* lora.c */
/* The range [*lo, *hi) of the parameter (and gradient) block that belongs to decoder layer
   `layer`; 0 when the layer has no trainable parameters. Layers are laid out in order. */
int peft__grad_layer_range(const lora_state *l, int n_layers, int layer, size_t *lo, size_t *hi);
int peft__layers_parse(uint8_t *on, int n_layers, const char *spec);
/* PEFT's key of a module's tensor: "base_model.model.model.layers.L.<parent>.<module>.<suffix>";
   peft__module_key's suffix by which: 0 lora_A, 1 lora_B, 2 DoRA magnitude, 3 IA3 vector */
const char *peft__module_key(const peft_config *c, char *buf, size_t n, int layer, int kind, int which);
const char *peft__module_tensor(const peft_config *c, char *buf, size_t n, int layer, int kind, const char *suffix);

/* A layer's RMSNorms by their place (slots of lora_state.norm_off); the final norm is slot 0 of
   layer n_layers. */
enum {
    PEFT__NORM_IN,       /* before attention: input_layernorm */
    PEFT__NORM_MLP,      /* before the MLP: post_attention_layernorm (Gemma: pre_feedforward_layernorm) */
    PEFT__NORM_ATTN_OUT, /* Gemma: after attention, post_attention_layernorm */
    PEFT__NORM_MLP_OUT,  /* Gemma: after the MLP, post_feedforward_layernorm */
    PEFT__NORM_Q,        /* Qwen3, Gemma 3: self_attn.q_norm (head_dim, every head) */
    PEFT__NORM_K,        /* self_attn.k_norm */
    PEFT__NORM_SLOTS
};
/* lora.c: the PEFT_NORM_* bit of a slot (0: the model has no norm there), a bit's module
   name ("input_layernorm", ..., "self_attn.q_norm", "norm") and a slot's width (dim, or head_dim
   for the q/k norms) */
uint32_t peft__norm_bit(const peft_config *c, int slot);
const char *peft__norm_name(uint32_t bit);
static inline int peft__norm_width(const peft_config *c, int slot)
{
    return slot >= PEFT__NORM_Q ? c->head_dim : c->dim;
}
static inline int peft__norm_index(const peft_config *c, int layer, int slot)
{
    return layer * PEFT__NORM_SLOTS + (layer < c->n_layers ? slot : 0);
}

/* forward.c: the RMSNorm weight in effect (Gemma: 1 + w), the weight as files hold it (Gemma: w)
   and its gradient (NULL when not tuned), of a slot of a layer (n_layers: the final norm) */
const float *peft__norm_weight(const peft_model *m, int layer, int slot);
const float *peft__norm_file(const peft_model *m, int layer, int slot);
float *peft__norm_grad(peft_model *m, int layer, int slot);
/* forward.c: the base model's norm of a slot, applied (file 0) or as its file holds it (file 1) */
const float *peft__norm_base(const peft_model *m, int layer, int slot, int file);
/* forward.c: Gemma's norm_applied brought up to date with the tuned norms (before a pass or an
   export reads peft__norm_weight; the host may have written the parameters) */
void peft__norms_sync(peft_model *m);

/* forward.c: Phi-3's fused modules: the columns of f (N, sum of w) split into parts[i] (N, w[i]),
   or (join) the parts' columns gathered into f; rows in parallel */
void peft__fused_split(peft_model *m, float *f, float *const *parts, const int *w, int n, int64_t N, int join);
/* forward.c: the embeddings of n tokens into x (n, dim), with the embedding adapter's delta */
void peft__embed_tokens(peft_model *m, float *x, const int32_t *tokens, int64_t n);
/* forward.c: logits (rows, vocab) of final-norm outputs x (rows, dim) through the lm_head in
   effect (trained copy, tied token rows, lm_head adapter) */
int peft__head_logits(peft_model *m, const float *x, int64_t rows, float *logits);
/* *out = p + shift (n floats), owned by the model (Gemma's norms, both ways) */
int peft__shifted_copy(peft_model *m, const float *p, int64_t n, float shift, const float **out);
/* forward.c: dst (vocab, dim) += s (B A)^T, the embedding adapter's delta */
void peft__embed_delta_add(peft_model *m, float *dst);
/* forward.c: the input embeddings in effect (vocab, dim) into dst */
void peft__effective_embed(peft_model *m, float *dst);
/* forward.c: the lm_head in effect (vocab, dim) into dst; 1 when the attachment changes it */
int peft__effective_head(peft_model *m, float *dst);

/* forward.c */
int peft__run(peft_model *m, const peft_batch *batch, int train, double *loss_sum,
              uint64_t *tokens);

/* optim.c */
void peft__opt_defaults(peft_model *m);
int peft__opt_apply(peft_model *m, double token_count, peft_step_result *res);

/* exec helpers */
static inline void peft__gemm(peft_model *m, int ta, int tb, int64_t M, int64_t N, int64_t K,
                              float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                              float beta, float *c, int64_t ldc)
{
    m->be->gemm(m->be_ctx, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* qweight.c: quantized frozen weights */
int peft__dequant(float *dst, const uint8_t *p, uint64_t n, uint32_t type); /* -1: unknown type */
size_t peft__gg_row_bytes(uint32_t type, uint64_t n);                        /* 0: not a whole row */
/* merge.c: module kind of layer l as the model computes it now (the adapter merged in): the model's
   floats when usable as they are, else dst (out x in) filled (dst NULL: NULL then, a buffer is
   needed); *changed: differs from the base file */
const float *peft__effective_weight(peft_model *m, int l, int kind, float *dst, int *changed);
/* the bias of module `kind` of layer l as the model applies it (NULL: none): the base one, or
   scaled by the attached IA3 vector that scales the module's output, into dst (out floats) */
const float *peft__effective_bias(const peft_model *m, int l, int kind, float *dst);
/* the bias the forward pass adds to module `kind` of layer l: the trained one (PEFT's bias
   option) or the model's (NULL: none) */
const float *peft__bias_of(const peft_model *m, int l, int kind);
/* the trained bias's gradient of module `kind` of layer l += the column sums of dy (N, out);
   nothing when that bias is not trained */
void peft__bias_grad(peft_model *m, int l, int kind, const float *dy, int64_t N, int out);
/* whether layer l has a trained bias among kinds k0..k1 */
int peft__bias_trained(const peft_model *m, int l, int k0, int k1);
int peft__quantize(uint8_t *dst, const float *src, uint64_t n, uint32_t type); /* F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K; -1 else */
/* rows [r0, r0 + n) of w as float32 into dst (n x cols); m (or NULL) parallelises */
void peft__w_rows(const peft_model *m, const peft_w *w, int64_t r0, int64_t n, float *dst);
/* y (N, rows) = x (N, cols) w^T + beta y */
void peft__gemm_xwt(peft_model *m, int64_t N, const float *x, int64_t ldx, const peft_w *w, float beta, float *y,
                    int64_t ldy);
/* dx (N, cols) = dy (N, rows) w + beta dx */
void peft__gemm_dyw(peft_model *m, int64_t N, const float *dy, int64_t lddy, const peft_w *w, float beta, float *dx,
                    int64_t lddx);
/* y = x w^T (wt: y is N x rows) or x w (N x cols), + a further product t (LoRA's s x_a B^T,
   s dx_a A) + beta y: one pass of the backend's gemm_sum where it has one and w is float32,
   else the product with w and a gemm for t */
void peft__gemm_w_sum(peft_model *m, int wt, int64_t N, const float *x, int64_t ldx, const peft_w *w,
                      const peft_gemm_term *t, float beta, float *y, int64_t ldy);
/* 1 when a row of w differs from the same row of x (rows x cols); row: cols floats of scratch */
int peft__w_differs(const peft_w *w, const float *x, float *row);
/* w as float32: w->f, or all of it dequantized into scratch (rows x cols) */
const float *peft__w_dense(const peft_model *m, const peft_w *w, float *scratch);

void peft__workspace_free(workspace *ws);
int peft__workspace_ensure(peft_model *m, int B, int T, int train);
void peft__lora_free(lora_state *l);

/* Rows of logits computed at once: as many as fit about 64M floats (256 MiB), at least 256, so
   that the frozen lm_head is streamed (and packed by the GEMM) a few times per step, not once
   per 64 rows (with Gemma 3's 262144-word vocabulary, 64-row chunks spent a quarter of the step
   packing lm_head: 256 rows made the step 1.4x faster; SmolLM's whole 1024-row batch at once
   1.1x); a multiple of 128 rows, so that the GEMM's 64-row tasks split evenly over two or four
   threads (341 rows of a 49152-word vocabulary left one thread a third idle). */
static inline int64_t peft__xent_chunk(int64_t rows, int64_t vocab)
{
    int64_t c = ((int64_t)64 << 20) / (vocab > 0 ? vocab : 1);
    c = c >= 256 ? c / 128 * 128 : 256;
    return c < rows ? c : rows;
}

#endif
