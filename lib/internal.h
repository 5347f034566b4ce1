/* Internal declarations shared by the core's files. Not installed. */
#ifndef PEFT_INTERNAL_H
#define PEFT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "peft/backend.h"
#include "peft/peft.h"

#if defined(__GNUC__)
#define PEFT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PEFT_PRINTF(a, b)
#endif

/* error.c: record a message for the calling thread and return code. */
int peft__fail(int code, const char *fmt, ...) PEFT_PRINTF(2, 3);
/* Prefix the current message with "prefix: " (keeps the code). */
int peft__context(int code, const char *prefix);
void peft__clear_error(void);

/* Overflow-checked size arithmetic: return false on overflow. */
static inline bool peft__mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return false;
    *out = a * b;
    return true;
}

/* alloc.c: allocation helpers (64-byte aligned, zeroed). NULL on failure. */
void *peft__calloc(size_t n, size_t size);
void *peft__alloc_floats(size_t n);
void peft__free(void *p);

/* threadpool.c */
typedef struct peft_pool peft_pool;
int peft__pool_create(peft_pool **out, int n_threads);
void peft__pool_destroy(peft_pool *pool);
int peft__pool_threads(const peft_pool *pool);
int peft__cpu_count(void); /* processors this process may run on (its affinity mask) */
/* fn(arg, i) for i in [0, n) over the pool; a NULL pool runs them in order on the caller */
void peft__pool_for(void *pool, int32_t n, void (*fn)(void *arg, int32_t i), void *arg);

/* rng.c: splitmix64-seeded xoshiro256** */
typedef struct peft_rng {
    uint64_t s[4];
} peft_rng;
void peft__rng_seed(peft_rng *rng, uint64_t seed);
uint64_t peft__rng_next(peft_rng *rng);
double peft__rng_uniform(peft_rng *rng);  /* [0, 1) */
double peft__rng_normal(peft_rng *rng);   /* N(0, 1) */
uint64_t peft__hash64(uint64_t x);

/* fp.c: conversions */
float peft__f16_to_f32(uint16_t h);
/* Element-wise loops compiled for AVX-512, AVX+FMA and baseline x86-64, chosen at run time by
   CPU features (GCC on x86-64 Linux; TSan cannot run the ifunc resolvers) */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__SANITIZE_THREAD__)
#define PEFT_VEC_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define PEFT_VEC_CLONES
#endif

float peft__bf16_to_f32(uint16_t h);
uint16_t peft__f32_to_bf16(float f);
uint16_t peft__f32_to_f16(float f);

/* backends */
const peft_backend *peft__backend_cpu(void);
const peft_backend *peft__backend_blis(void); /* NULL when not built */

/* The module kinds a LoRA can target inside a decoder layer. */
enum peft_module_kind {
    PEFT_MOD_Q = 0,
    PEFT_MOD_K,
    PEFT_MOD_V,
    PEFT_MOD_O,
    PEFT_MOD_GATE,
    PEFT_MOD_UP,
    PEFT_MOD_DOWN,
    PEFT_MOD_COUNT
};
extern const char *const peft__module_names[PEFT_MOD_COUNT]; /* "q_proj", ... */
extern const char *const peft__module_parents[PEFT_MOD_COUNT]; /* "self_attn", "mlp" */

/* config.c */
typedef struct peft_config {
    char architecture[32];
    int n_layers, dim, ffn_dim, n_heads, n_kv_heads, head_dim, vocab;
    int tied;
    float eps, rope_theta;
    int bos_id, eos_id;
    int sliding_window; /* Mistral: attend to the last sliding_window positions only (0: all) */
    int window_from;    /* the first layer that uses the window (Qwen2/3: max_window_layers; Mistral 0) */
    /* RoPE scaling: 0 none; 1 linear (every inverse frequency / rope_factor); 2 a divisor per
       pair (Llama 3's "llama3" scaling, or a GGUF file's rope_freqs.weight) */
    int rope_scaling;
    float rope_factor;
    float rope_div[256]; /* head_dim / 2 divisors when rope_scaling is 2 */
    uint32_t bias_mask;  /* 1 << kind: that linear module has a bias (Qwen2: q, k, v; Llama's
                            attention_bias: q, k, v, o; mlp_bias: gate, up, down) */
    int qk_norm;         /* Qwen3: RMSNorm over each head of q and k (weights [head_dim]) before RoPE */
    int ctx_len;         /* max_position_embeddings / <arch>.context_length (0: not given) */
    /* Gemma 3 (model_type gemma3_text) and Gemma 2: RMSNorm weights stored zero-centred (1 + w applied),
       a norm after attention and after the MLP as well, embeddings times sqrt(hidden), GELU
       (tanh) gating, q/k norms; every window_pattern-th layer global, the others sliding with
       their own RoPE base (rope_local_theta, unscaled); queries times q_mul (query_pre_attn_scalar;
       below) */
    int gemma;           /* 2 or 3: Gemma 2 has neither q/k norms nor a local RoPE base (rope_local_theta 0) */
    int window_pattern;  /* > 0: layer l is global when (l + 1) % window_pattern == 0 */
    float rope_local_theta, q_mul, embed_mul;
    /* Gemma 2: scores and logits soft-capped, cap tanh(x / cap) (0: none) */
    float attn_softcap, final_softcap;
    int nope_every;      /* SmolLM3: > 0: layer l has no RoPE (NoPE) when (l + 1) % nope_every == 0 */
    /* Scalars, 1 but where a family sets them: the embeddings times embed_mul (Gemma: sqrt(hidden);
       Granite: embedding_multiplier), the attention scores times q_mul / sqrt(head_dim) (Gemma:
       query_pre_attn_scalar; Granite: attention_multiplier), the attention and MLP outputs times
       res_mul before their residuals and the logits times logit_mul (Granite: residual_multiplier,
       1 / logits_scaling) */
    float res_mul, logit_mul;
    /* Gemma 3's multimodal checkpoints (model_type gemma3, Gemma3ForConditionalGeneration): the
       text model of text_config is trained; its modules are named as transformers (4.52 on)
       names them, "model.language_model.layers.N...", and the vision tower is left alone */
    int multimodal;
    /* Phi-3 (model_type phi3): q, k and v are one module, qkv_proj (out = (heads + 2 kv heads) x
       head_dim), and gate and up one, gate_up_proj (out = 2 x intermediate, gate first); they
       live in the q and gate slots, which then have the fused widths (peft__module_out) */
    int fused;
    /* RoPE on the first rot_dim dimensions of a head only (partial_rotary_factor; 0: all) */
    int rot_dim;
    /* LongRoPE (Phi-3.5, Phi-4-mini): rope_div holds short_factor; from a length above
       rope_long_from (original_max_position_embeddings) long_factor (rope_div_long); cos and
       sin times rope_mscale (the attention factor; 0: 1) */
    int rope_long_from;
    float rope_mscale;
    float rope_div_long[256];
} peft_config;
/* Whether the model has module kind k as a module of its own (Phi-3 folds k and v into q's
   qkv_proj and up into gate's gate_up_proj; c NULL: a plain model's) */
static inline int peft__has_mod(const peft_config *c, int k)
{
    return !c || !c->fused || (k != PEFT_MOD_K && k != PEFT_MOD_V && k != PEFT_MOD_UP);
}
/* PEFT_TARGET_* bits on such a model: any of q, k, v is qkv_proj (the q bit), gate or up is
   gate_up_proj (the gate bit); other bits are kept */
static inline uint32_t peft__fold_targets(const peft_config *c, uint32_t t)
{
    if (!c->fused)
        return t;
    const uint32_t qkv = 1u << PEFT_MOD_Q | 1u << PEFT_MOD_K | 1u << PEFT_MOD_V;
    const uint32_t gu = 1u << PEFT_MOD_GATE | 1u << PEFT_MOD_UP;
    return (t & ~(qkv | gu)) | (t & qkv ? 1u << PEFT_MOD_Q : 0) | (t & gu ? 1u << PEFT_MOD_GATE : 0);
}
/* Module kind k's name ("q_proj", ...; "qkv_proj" and "gate_up_proj" on a fused model; c NULL: the plain names) */
const char *peft__mod_name(const peft_config *c, int k);
/* Its output width: q's heads x head_dim, ...; the fused widths on a fused model */
int peft__mod_out(const peft_config *c, int k);
/* The rotated dimensions of a head */
static inline int peft__rot_dim(const peft_config *c)
{
    return c->rot_dim > 0 ? c->rot_dim : c->head_dim;
}
/* The module path of the decoder in PEFT's names: "model." ("model.language_model." in a
   multimodal checkpoint); lm_head stays "lm_head" in both */
static inline const char *peft__prefix(const peft_config *c)
{
    return c->multimodal ? "model.language_model." : "model.";
}
/* the same as a regular expression */
static inline const char *peft__prefix_re(const peft_config *c)
{
    return c->multimodal ? "model\\.language_model\\." : "model\\.";
}
/* The attention window of layer l (0: the whole context) */
static inline int peft__layer_window(const peft_config *c, int l)
{
    if (c->window_pattern > 0)
        return (l + 1) % c->window_pattern ? c->sliding_window : 0;
    return l >= c->window_from ? c->sliding_window : 0;
}
/* Whether layer l rotates q and k at all (SmolLM3's NoPE layers do not) */
static inline int peft__layer_rope(const peft_config *c, int l)
{
    return c->nope_every <= 0 || (l + 1) % c->nope_every != 0;
}
/* Whether layer l rotates with the local RoPE base (Gemma 3's sliding layers) */
static inline int peft__rope_local(const peft_config *c, int l)
{
    return c->rope_local_theta > 0.0f && peft__layer_window(c, l) > 0;
}
/* LongRoPE's attention factor when the config leaves it out: sqrt(1 + ln f / ln original) for the
   extension f = max / original positions (1 when f <= 1), as transformers derives it */
double peft__longrope_attention(double factor, double orig);
/* The inverse frequency of RoPE pair i (0 <= i < rot_dim / 2) with the config's scaling. */
double peft__rope_inv_freq(const peft_config *c, int i);
int peft__config_parse(peft_config *cfg, const char *json, size_t len, const char *what);
int peft__config_validate(const peft_config *cfg, const char *what);
uint64_t peft__extra_layer_params(const peft_config *c); /* biases, q/k norms of one layer */

/* gguf.c: what llama.cpp fixes for its gemma2/gemma3 architectures rather than storing it, set
   in c by c->gemma (2 or 3) and its shapes: the global-layer pattern, the local RoPE base, q_mul */
void peft__gguf_gemma_fixed(peft_config *c);
/* llama.cpp's smollm3 leaves RoPE out of every fourth layer, fixed (no key says it) */
#define PEFT__GGUF_NOPE_EVERY 4

/* gguf.c: the tokenizer.ggml.* vocabulary of a GGUF file */
typedef struct gguf_vocab {
    int n;
    char **tokens;
    uint32_t *lens;
    float *scores;
    int32_t *types; /* 1 normal, 2 unknown, 3 control, 6 byte (llama.cpp), or NULL */
    int bos, eos, unk, add_bos, add_eos;
    int has_add_bos;
    int no_space_prefix; /* tokenizer.ggml.add_space_prefix false (Gemma): no "▁" before the text */
    char model[16];
    char pre[32];    /* tokenizer.ggml.pre ("gpt2" vocabularies), or "" */
    char **merges;   /* tokenizer.ggml.merges: n_merges "left right" strings ("gpt2"), or NULL */
    uint32_t *merge_lens;
    int n_merges;
} gguf_vocab;
int peft__gguf_vocab(gguf_vocab *v, const char *path);
void peft__gguf_vocab_free(gguf_vocab *v);

#endif /* PEFT_INTERNAL_H */
