/*
 * libpeft — parameter-efficient fine-tuning of transformer LLMs on the CPU.
 *
 * Public API. Conventions:
 *  - opaque handles; out-parameters first; every function returns an int
 *    status: 0 (PEFT_OK) or a negative PEFT_E* code (pinned forever);
 *  - after a failure, peft_last_error() returns a message with context for
 *    the calling thread;
 *  - options structs start with `uint32_t version`; initialise them with the
 *    *_INIT macro or the *_init() function; NULL means defaults; fields are
 *    only ever appended;
 *  - nothing in the library aborts or exits.
 */
#ifndef PEFT_PEFT_H
#define PEFT_PEFT_H

#include <stddef.h>
#include <stdint.h>

#include "peft/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PEFT_API
#elif defined(__GNUC__)
#define PEFT_API __attribute__((visibility("default")))
#else
#define PEFT_API
#endif

/* ---- status codes (pinned: values never change) ----------------------- */

enum peft_status {
    PEFT_OK = 0,
    PEFT_EINVAL = -1,       /* invalid argument */
    PEFT_ENOMEM = -2,       /* allocation failed */
    PEFT_EIO = -3,          /* read/write/open failure, full disk */
    PEFT_EFORMAT = -4,      /* malformed file */
    PEFT_EUNSUPPORTED = -5, /* valid but unsupported (dtype, architecture) */
    PEFT_ESHAPE = -6,       /* shapes disagree */
    PEFT_ENOTFOUND = -7,    /* file or tensor missing */
    PEFT_ESTATE = -8,       /* call not valid in the current state */
    PEFT_ENUMERIC = -9,     /* NaN or Inf in loss or gradients */
    PEFT_EBACKEND = -10,    /* backend failure */
    PEFT_ERANGE = -11       /* output buffer too small (the needed size is reported) */
};

/* Static description of a status code; never NULL. */
PEFT_API const char *peft_strerror(int status);
/* Message of the last failure on the calling thread ("" if none). */
PEFT_API const char *peft_last_error(void);
/* Library version "MAJOR.MINOR.PATCH" at run time. */
PEFT_API const char *peft_version(void);
/* PEFT_VERSION_NUMBER of the library at run time. */
PEFT_API uint32_t peft_version_number(void);

/* ---- model ------------------------------------------------------------- */

typedef struct peft_model peft_model;

typedef struct peft_open_options {
    uint32_t version;
    int32_t n_threads;   /* <= 0: the CPUs this process may run on (its affinity mask) */
    const char *backend; /* NULL: default ("cpu"); "cpu", "blis" */
    /* version 2: how the frozen float32 linear weights and lm_head are held for the products.
       NULL or "f32": as read. "bf16": rounded to BFloat16 (half the memory; the float32 pages
       of a memory-mapped file are released; a BF16 file's weights are kept exactly, with no
       float32 copy); products multiply float32 activations by the BF16 weights widened in the
       GEMM (cpu backend). Quantized GGUF weights are unaffected. Off by default: the frozen
       weights then differ from the file's by up to 2^-9 relative, so losses move by about 1e-3. */
    const char *frozen_dtype;
} peft_open_options;

#define PEFT_OPEN_OPTIONS_VERSION 2
#define PEFT_OPEN_OPTIONS_INIT {PEFT_OPEN_OPTIONS_VERSION, 0, NULL, NULL}
PEFT_API int peft_open_options_init(peft_open_options *opts, uint32_t version);

/*
 * Open a Hugging Face model directory (config.json + model.safetensors or
 * model.safetensors.index.json shards; F32, F16 or BF16 weights), or a GGUF v3 file of the
 * llama, qwen2, qwen3, gemma2, gemma3, smollm3 or granite architecture (F32, F16, BF16, Q8_0,
 * Q4_0, Q4_K, Q6_K; the quantized linear weights, embeddings and lm_head stay quantized in
 * memory and are dequantized panel by panel inside products, row by row in embedding lookups).
 * The base weights are frozen. Float32 and quantized weights are memory-mapped and then, where
 * the kernel offers transparent huge pages, copied onto 2 MiB pages (read from the file; fewer
 * TLB misses in the products); the environment variable PEFT_MMAP_WEIGHTS=1 keeps them in the
 * mapping (shared with other processes that map the file).
 * *out is NULL on failure.
 */
PEFT_API int peft_model_open(peft_model **out, const char *path,
                             const peft_open_options *opts);
/* Free a model and everything attached; sets *model to NULL. NULL is a no-op. */
PEFT_API void peft_model_close(peft_model **model);

typedef struct peft_model_info {
    uint32_t version;
    char architecture[32]; /* e.g. "llama" */
    int32_t n_layers;
    int32_t hidden_size;
    int32_t intermediate_size;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t vocab_size;
    int32_t tied_embeddings;
    uint64_t n_params;     /* frozen base parameters */
    uint64_t n_trainable;  /* trainable parameters attached now */
    float rms_norm_eps;
    float rope_theta;
    char backend[16];      /* backend in use */
    int32_t n_threads;
    char weights_dtype[8]; /* dtype of the linear weights on disk: "F32", "F16", "BF16", "mixed" */
    /* version 2: the attachment, by its PEFT peft_type ("LORA" (DoRA too), "LOHA", "LOKR", "IA3",
       "VERA", "LN_TUNING", "PROMPT_TUNING", "TRAINABLE_TOKENS"; "" when nothing is attached), and the number of
       virtual tokens a prompt-tuning attachment puts before each sequence (0 otherwise) */
    char adapter_type[32];
    int32_t n_virtual_tokens;
} peft_model_info;

#define PEFT_MODEL_INFO_VERSION 2
/* info->version must be set by the caller (PEFT_MODEL_INFO_VERSION). */
PEFT_API int peft_model_get_info(const peft_model *model, peft_model_info *info);

/* ---- LoRA -------------------------------------------------------------- */

/* Target module bits. */
enum peft_target {
    PEFT_TARGET_Q = 1u << 0,
    PEFT_TARGET_K = 1u << 1,
    PEFT_TARGET_V = 1u << 2,
    PEFT_TARGET_O = 1u << 3,
    PEFT_TARGET_GATE = 1u << 4,
    PEFT_TARGET_UP = 1u << 5,
    PEFT_TARGET_DOWN = 1u << 6,
    PEFT_TARGET_ALL_LINEAR = 0x7fu,
    /* Phi-3 (phi3) holds q, k and v as one module, qkv_proj, and gate and up as one,
       gate_up_proj, adapted whole as PEFT adapts them: any of a module's parts' bits selects it
       (QKV and GATE_UP name them); other models have no such modules */
    PEFT_TARGET_QKV = PEFT_TARGET_Q | PEFT_TARGET_K | PEFT_TARGET_V,
    PEFT_TARGET_GATE_UP = PEFT_TARGET_GATE | PEFT_TARGET_UP,
    /* LoRA on the token embeddings (PEFT's "embed_tokens": lora_embedding_A (r, vocab)
       initialised to zeros, lora_embedding_B (hidden, r) to N(0, 1)); the delta applies to
       the input lookup only, also when lm_head shares the embedding matrix, as in PEFT.
       Not part of ALL_LINEAR; LoRA only (not DoRA); its rank and alpha are the options'
       unless rank_pattern/alpha_pattern name "embed_tokens". */
    PEFT_TARGET_EMBED = 1u << 7,
    /* LoRA on the output projection (PEFT's "lm_head": lora_A (r, hidden), lora_B (vocab, r),
       initialised as the linear modules). With tied embeddings it changes the logits only, as
       in PEFT. Not part of ALL_LINEAR; LoRA only; rank and alpha from rank_pattern /
       alpha_pattern key "lm_head" or the options'. */
    PEFT_TARGET_LM_HEAD = 1u << 8
};

/* Modules trained in full next to a LoRA-family attachment (PEFT's modules_to_save; saved as
   base_model.model.<module>.weight). */
enum peft_save_module {
    PEFT_SAVE_EMBED = 1u << 0,   /* model.embed_tokens: a trained copy (vocab x hidden) for the
                                    input lookup; a tied lm_head keeps the base matrix, as in PEFT */
    PEFT_SAVE_LM_HEAD = 1u << 1  /* lm_head: a trained copy for the logits */
};

enum peft_init {
    PEFT_INIT_KAIMING = 0,  /* PEFT default: A kaiming-uniform, B = 0 */
    PEFT_INIT_GAUSSIAN = 1, /* A ~ N(0, 1/r), B = 0 */
    /* PiSSA (PEFT init_lora_weights "pissa"): B A = the top-r singular part of W / s, and the
       frozen weight becomes the residual W - s B A (held as a float32 copy while attached;
       adapter off evaluates the residual model, as in PEFT). The singular vectors come from a
       seeded subspace iteration with Rayleigh-Ritz, run until the top r singular values settle
       to float precision (at most 100 steps: a flat spectrum has no distinguished top part);
       the residual is exact whatever the convergence. */
    PEFT_INIT_PISSA = 2,
    /* OLoRA (PEFT "olora"): W = Q R (Householder, LAPACK's signs), B = Q[:, :r], A = R[:r],
       residual W - s B A as for PiSSA. */
    PEFT_INIT_OLORA = 3
    /* PiSSA and OLoRA: LoRA on linear targets only (no DoRA, LoHa, LoKr, embed_tokens or
       lm_head). Save with peft_save_options.convert_to_lora for an adapter that applies to the
       original base (rank 2r). */
};

typedef struct peft_lora_options {
    uint32_t version;
    uint32_t targets;   /* PEFT_TARGET_* bits */
    const char *layers; /* NULL or "all"; "0,3,5"; "2-7"; "first:N"; "last:N";
                           "every:K"; items may be combined with commas */
    int32_t rank;
    float alpha;
    int32_t use_rslora; /* scale alpha/sqrt(r) instead of alpha/r */
    float dropout;      /* on the LoRA input, training only */
    int32_t init;       /* PEFT_INIT_* */
    uint64_t seed;
    /* version 2 */
    int32_t use_dora;   /* DoRA: y = m * (W + sBA) x / ||W + sBA||_row, m trained (dropout 0) */
    /* Per-module rank and alpha, PEFT's rank_pattern / alpha_pattern: "KEY=VALUE,...";
       KEY matches a module whose name ("model.layers.3.self_attn.q_proj") ends with
       "." KEY (or is KEY); the first matching key wins. NULL: none. */
    const char *rank_pattern;
    const char *alpha_pattern;
    /* version 3 */
    int32_t variant;    /* PEFT_VARIANT_*: the form of the update (LoRA, LoHa, LoKr) */
    /* version 4: trained alongside the adapter, in the same PEFT LoRA file */
    uint32_t modules_to_save; /* PEFT_SAVE_* bits: embeddings and/or lm_head trained in full */
    uint32_t norms;           /* PEFT_NORM_* bits: RMSNorm weights trained in full (modules_to_save),
                                 the layer norms on the selected layers, the final norm */
    /* PEFT's trainable_token_indices: only these rows of the embedding matrix are trained
       (initialised to their base values; saved as
       model.embed_tokens.token_adapter.trainable_tokens_delta, n x hidden). With tied
       embeddings the same rows also replace lm_head's rows, as PEFT ties them. Distinct ids,
       not combined with PEFT_TARGET_EMBED or PEFT_SAVE_EMBED. NULL: none. */
    const int32_t *token_indices;
    int32_t n_token_indices;
    /* version 5: PEFT's target_modules given as a regular expression (a string): the modules
       whose full name ("model.layers.3.self_attn.q_proj", "model.embed_tokens", "lm_head") it
       matches entirely, as Python's re.fullmatch, are adapted; targets and layers are then
       ignored (must be 0 and NULL). POSIX extended syntax plus Python's \d, \D and (?:...).
       NULL: targets and layers select. */
    const char *target_regex;
    /* version 6: trainable rows of an untied lm_head (PEFT's trainable_token_indices in its dict
       form {"lm_head": [...]}): these rows of the output matrix are trained, initialised to their
       base values, saved as lm_head.token_adapter.trainable_tokens_delta (n x hidden). Distinct
       ids; not on tied models (there the token_indices rows replace lm_head's), nor with
       PEFT_TARGET_LM_HEAD or PEFT_SAVE_LM_HEAD. NULL: none. */
    const int32_t *head_token_indices;
    int32_t n_head_token_indices;
    /* version 7: PEFT's bias option. PEFT_BIAS_NONE: biases frozen. PEFT_BIAS_ALL: every bias of
       the model trained (all layers, adapted modules or not). PEFT_BIAS_LORA_ONLY: the biases of
       the adapted modules. Initialised to the base values, trained at the main learning rate
       without weight decay (as the Hugging Face Trainer excludes biases from it), saved as
       PEFT does: an adapted module's as "...<module>.base_layer.bias", another's as
       "...<module>.bias" (a missing lora_only bias, as PEFT before 0.19.2 saved none, loads as
       the base one). LoRA and DoRA only (not LoHa, LoKr); no effect on a model without biases. */
    int32_t bias;
    /* version 8: PEFT's exclude_modules in its string form, a regular expression (the syntax of
       target_regex): the modules whose full name ("model.layers.3.mlp.down_proj",
       "model.embed_tokens", "lm_head") it matches entirely are left out of what targets and
       layers (or target_regex) select. PEFT's list form, names each excluding the modules whose
       name is it or ends with "." + it, is the expression (.*\.)?(name1|name2|...) with the
       names' dots escaped. LoRA, DoRA, LoHa and LoKr. NULL: none. */
    const char *exclude_regex;
} peft_lora_options;

enum peft_bias { PEFT_BIAS_NONE = 0, PEFT_BIAS_ALL = 1, PEFT_BIAS_LORA_ONLY = 2 };

enum peft_variant {
    PEFT_VARIANT_LORA = 0, /* delta W = s B A */
    /* LoHa (PEFT peft_type "LOHA"): delta W = s (w1_a w1_b) * (w2_a w2_b), a Hadamard product of
       two rank-r products, 2 r (in + out) parameters per module; w1_a, w1_b, w2_a kaiming-uniform,
       w2_b zeros, s = alpha / r. Linear targets only; no dropout, DoRA or rsLoRA. */
    PEFT_VARIANT_LOHA = 1,
    /* LoKr (PEFT peft_type "LOKR", decompose_both false, decompose_factor -1): delta W =
       s kron(w1, w2) with out = l k and in = m n split near their square roots (LyCORIS's
       factorization), w1 (l, m) full and initialised to zeros, w2 (k, n) = w2_a w2_b of rank r
       (or full when r >= max(k, n) / 2), kaiming-uniform; s = alpha / r. Its size saturates
       with the rank. Linear targets only; no dropout, DoRA or rsLoRA. */
    PEFT_VARIANT_LOKR = 2
};

#define PEFT_LORA_OPTIONS_VERSION 8
#define PEFT_LORA_OPTIONS_INIT                                                 \
    {PEFT_LORA_OPTIONS_VERSION, PEFT_TARGET_Q | PEFT_TARGET_V, NULL, 8, 16.0f, \
     0, 0.0f, PEFT_INIT_KAIMING, 0, 0, NULL, NULL, PEFT_VARIANT_LORA, 0, 0, NULL, 0, NULL, NULL, 0, PEFT_BIAS_NONE, NULL}
PEFT_API int peft_lora_options_init(peft_lora_options *opts, uint32_t version);

/* IA3 (Hugging Face PEFT peft_type "IA3"): learned scaling vectors, initialised to ones.
   A target module's output is scaled per output feature (its bias included, as PEFT's
   base_layer(x) * l), or, for the feedforward modules, its input per input feature. One
   attachment (LoRA or IA3) per model. */
typedef struct peft_ia3_options {
    uint32_t version;
    uint32_t targets;     /* PEFT_TARGET_* bits (PEFT's default for Llama: K | V | DOWN) */
    uint32_t feedforward; /* the subset of targets whose input is scaled (default DOWN) */
    const char *layers;   /* as for LoRA */
    /* version 2: trained alongside, saved in the same file as PEFT's modules_to_save */
    uint32_t modules_to_save; /* PEFT_SAVE_* bits: embeddings and/or lm_head trained in full */
    uint32_t norms;           /* PEFT_NORM_* bits: RMSNorm weights (the selected layers', the final) */
} peft_ia3_options;

#define PEFT_IA3_OPTIONS_VERSION 2
#define PEFT_IA3_OPTIONS_INIT \
    {PEFT_IA3_OPTIONS_VERSION, PEFT_TARGET_K | PEFT_TARGET_V | PEFT_TARGET_DOWN, PEFT_TARGET_DOWN, NULL, 0, 0}

PEFT_API int peft_attach_ia3(peft_model *model, const peft_ia3_options *opts, uint64_t *n_trainable);
PEFT_API int peft_count_ia3(uint64_t *n_trainable, const peft_model *model, const peft_ia3_options *opts);

/* VeRA (PEFT peft_type "VERA"): frozen random projections A (rank, max in) and B (max out, rank)
   shared by every target module, and per module trainable vectors lambda_d (rank),
   initialised to d_initial, and lambda_b (out), initialised to zeros:
   y = W x + lambda_b * (B[:out] (lambda_d * (A[:, :in] x))).
   A and B are saved with the adapter (PEFT's save_projection), so PEFT loads them as they are. */
typedef struct peft_vera_options {
    uint32_t version;
    uint32_t targets;   /* PEFT_TARGET_* bits of linear modules */
    const char *layers; /* as for LoRA */
    int32_t rank;       /* PEFT's default is 256 */
    float d_initial;    /* PEFT's default 0.1 */
    float dropout;      /* on the VeRA input, training only */
    uint64_t seed;      /* the projections' seed (PEFT's projection_prng_key) */
    /* version 2: as for IA3 */
    uint32_t modules_to_save;
    uint32_t norms;
} peft_vera_options;

#define PEFT_VERA_OPTIONS_VERSION 2
#define PEFT_VERA_OPTIONS_INIT \
    {PEFT_VERA_OPTIONS_VERSION, PEFT_TARGET_Q | PEFT_TARGET_V, NULL, 256, 0.1f, 0.0f, 0, 0, 0}

PEFT_API int peft_attach_vera(peft_model *model, const peft_vera_options *opts, uint64_t *n_trainable);
PEFT_API int peft_count_vera(uint64_t *n_trainable, const peft_model *model, const peft_vera_options *opts);

/* Norm tuning (PEFT peft_type "LN_TUNING"): the RMSNorm weights themselves are trained. The
   bits name the checkpoint's norms; a model without some of them (Llama has no
   pre/post_feedforward_layernorm) tunes those it has, and a set naming none of its norms is an
   error. On Gemma 2 and 3, post_attention_layernorm is the norm of the attention output and
   pre_feedforward_layernorm the one before the MLP; their weights are zero-centred (1 + w is
   applied) and are trained, saved and loaded as the files hold them (w). The q/k norms (Qwen3,
   Gemma 3: one head_dim weight each, applied to every head) are self_attn.q_norm and
   self_attn.k_norm. */
enum peft_norm {
    PEFT_NORM_INPUT = 1u << 0,             /* input_layernorm of each selected layer */
    PEFT_NORM_POST_ATTENTION = 1u << 1,    /* post_attention_layernorm of each selected layer */
    PEFT_NORM_FINAL = 1u << 2,             /* the final norm (model.norm) */
    PEFT_NORM_PRE_FEEDFORWARD = 1u << 3,   /* Gemma 2 and 3: pre_feedforward_layernorm */
    PEFT_NORM_POST_FEEDFORWARD = 1u << 4,  /* Gemma 2 and 3: post_feedforward_layernorm */
    PEFT_NORM_Q = 1u << 5,                 /* Qwen3, Gemma 3: self_attn.q_norm */
    PEFT_NORM_K = 1u << 6,                 /* Qwen3, Gemma 3: self_attn.k_norm */
    PEFT_NORM_ALL = 0x7fu                  /* every norm the model has */
};

typedef struct peft_norms_options {
    uint32_t version;
    uint32_t norms;     /* PEFT_NORM_* bits */
    const char *layers; /* as for LoRA (the final norm does not depend on it) */
} peft_norms_options;

#define PEFT_NORMS_OPTIONS_VERSION 1
#define PEFT_NORMS_OPTIONS_INIT {PEFT_NORMS_OPTIONS_VERSION, PEFT_NORM_ALL, NULL}

PEFT_API int peft_attach_norms(peft_model *model, const peft_norms_options *opts, uint64_t *n_trainable);
PEFT_API int peft_count_norms(uint64_t *n_trainable, const peft_model *model, const peft_norms_options *opts);

/* Prompt tuning (PEFT peft_type "PROMPT_TUNING", task CAUSAL_LM): n_virtual trained embedding
   rows (the soft prompt, saved as "prompt_embeddings" (n_virtual, hidden)) are put before every
   sequence, as PEFT does: the real tokens take positions n_virtual.., the virtual ones predict
   nothing, except the last one, which predicts the first real token (PEFT prefixes the labels
   with -100 for the virtual tokens only, so the first token of each row is counted). Packed
   documents (peft_batch.seq_ids) each see the prompt, their positions restarting after it, as if
   each were a row of its own; only the row's first document has its first token predicted. A
   session fed from position 0 puts the prompt first (a feed of no tokens puts it alone); its
   positions are not counted by peft_session_length and do not use max_len. Not mergeable. */
enum peft_prompt_init {
    PEFT_PROMPT_INIT_RANDOM = 0,       /* N(0, 1) (torch.nn.Embedding's default): PEFT "RANDOM" */
    PEFT_PROMPT_INIT_TEXT = 1,         /* the embeddings of init_tokens, repeated or cut to
                                          n_virtual: PEFT "TEXT" (the host tokenizes the text as
                                          the tokenizer does by default, BOS included) */
    PEFT_PROMPT_INIT_SAMPLE_VOCAB = 2  /* the embeddings of uniformly drawn token ids: "SAMPLE_VOCAB" */
};

typedef struct peft_prompt_options {
    uint32_t version;
    int32_t n_virtual;             /* num_virtual_tokens */
    int32_t init;                  /* PEFT_PROMPT_INIT_* */
    const int32_t *init_tokens;    /* TEXT: the token ids of the text */
    int32_t n_init_tokens;
    const char *init_text;         /* TEXT: the text itself, saved as prompt_tuning_init_text (may be NULL) */
    const char *tokenizer_name_or_path; /* saved as tokenizer_name_or_path (may be NULL) */
    uint64_t seed;                 /* RANDOM, SAMPLE_VOCAB */
} peft_prompt_options;

#define PEFT_PROMPT_OPTIONS_VERSION 1
#define PEFT_PROMPT_OPTIONS_INIT {PEFT_PROMPT_OPTIONS_VERSION, 8, PEFT_PROMPT_INIT_RANDOM, NULL, 0, NULL, NULL, 0}

PEFT_API int peft_attach_prompt(peft_model *model, const peft_prompt_options *opts, uint64_t *n_trainable);
PEFT_API int peft_count_prompt(uint64_t *n_trainable, const peft_model *model, const peft_prompt_options *opts);

/* Trainable tokens (PEFT peft_type "TRAINABLE_TOKENS"): only the embedding rows of the n given
   token ids are trained (initialised to their base values; saved as
   model.embed_tokens.trainable_tokens_delta, n x hidden, with token_indices); with tied
   embeddings the rows also replace lm_head's, as PEFT ties them. The parameters belong to the
   embedding group (PEFT_OPT_EMBED_LR_RATIO, PEFT_OPT_EMBED_WEIGHT_DECAY). */
PEFT_API int peft_attach_tokens(peft_model *model, const int32_t *token_ids, int32_t n, uint64_t *n_trainable);
PEFT_API int peft_count_tokens(uint64_t *n_trainable, const peft_model *model, const int32_t *token_ids, int32_t n);

/*
 * Attach LoRA adapters to the model. At most one attachment per model for now.
 * n_trainable (may be NULL) receives the exact number of trainable parameters.
 */
PEFT_API int peft_attach_lora(peft_model *model, const peft_lora_options *opts,
                              uint64_t *n_trainable);
/* Count trainable parameters of a configuration without attaching it. */
PEFT_API int peft_count_lora(uint64_t *n_trainable, const peft_model *model,
                             const peft_lora_options *opts);
/* Remove the attachment (no-op if none). */
PEFT_API int peft_detach(peft_model *model);

/* ---- training ---------------------------------------------------------- */

/* Keyed optimizer settings (zstd style). All values are doubles. */
enum peft_opt {
    PEFT_OPT_LR = 1,            /* peak learning rate, default 1e-4 */
    PEFT_OPT_BETA1 = 2,         /* default 0.9 */
    PEFT_OPT_BETA2 = 3,         /* default 0.999 */
    PEFT_OPT_EPS = 4,           /* default 1e-8 */
    PEFT_OPT_WEIGHT_DECAY = 5,  /* decoupled (AdamW), default 0 */
    PEFT_OPT_GRAD_CLIP = 6,     /* max global L2 norm; 0 = off (default) */
    PEFT_OPT_ACCUM_STEPS = 7,   /* micro-batches per update, default 1 */
    PEFT_OPT_WARMUP_STEPS = 8,  /* linear warmup updates, default 0 */
    PEFT_OPT_TOTAL_STEPS = 9,   /* updates for the decay schedule, default 0 */
    PEFT_OPT_SCHEDULE = 10,     /* PEFT_SCHEDULE_*, default constant */
    PEFT_OPT_MIN_LR_RATIO = 11, /* floor of the decay, fraction of LR, default 0 */
    PEFT_OPT_LORAPLUS_RATIO = 12, /* LoRA+: learning rate of B = ratio x LR, default 1 */
    PEFT_OPT_STEP = 13,           /* read-only: optimizer updates done (restored by checkpoints) */
    PEFT_OPT_EMBED_LR_RATIO = 14, /* learning rate of the embedding adapter = ratio x LR, default 1 */
    /* Position in the dropout stream: the index of the next training forward pass (each
       one advances it by 1; checkpoints restore it). A data-parallel host sets it to the
       global micro-batch index so every rank draws the masks one process would draw. */
    PEFT_OPT_DROPOUT_CALL = 15,
    /* The embedding group (embedding and lm_head LoRA, trainable token rows, embeddings and
       lm_head trained in full) uses EMBED_LR_RATIO and this weight decay; -1 (default): the
       main PEFT_OPT_WEIGHT_DECAY. */
    PEFT_OPT_EMBED_WEIGHT_DECAY = 16,
    /* Tuned RMSNorm weights (the norms option, LN tuning): learning rate = ratio x LR
       (default 1) and weight decay (-1, default: the main one). */
    PEFT_OPT_NORM_LR_RATIO = 17,
    PEFT_OPT_NORM_WEIGHT_DECAY = 18,
    /* Activation checkpointing: 1 keeps only each decoder layer's input during the forward
       pass and recomputes the layer's activations in the backward pass (memory no longer
       grows with the layer count; about one more forward pass of compute, the same results
       bit for bit); 0 (default) keeps every layer's activations. */
    PEFT_OPT_ACTIVATION_CHECKPOINTING = 19
};

enum peft_schedule {
    PEFT_SCHEDULE_CONSTANT = 0,
    PEFT_SCHEDULE_LINEAR = 1,
    PEFT_SCHEDULE_COSINE = 2
};

PEFT_API int peft_opt_set(peft_model *model, int key, double value);
PEFT_API int peft_opt_get(const peft_model *model, int key, double *value);
PEFT_API int peft_opt_bounds(int key, double *lower, double *upper);

typedef struct peft_batch {
    uint32_t version;
    const int32_t *tokens; /* n_seq * seq_len token ids, row-major */
    const int32_t *labels; /* NULL: labels = tokens; else n_seq * seq_len, -100 = ignored */
    int32_t n_seq;         /* B */
    int32_t seq_len;       /* T; position t is trained to predict labels[t+1] */
    /* version 2: packed documents. NULL: each row is one sequence. Else n_seq * seq_len
       document ids: where the id changes from one token to the next a new document starts;
       tokens attend only within their document, positions (RoPE) restart at 0, and the last
       token of a document predicts nothing. */
    const int32_t *seq_ids;
} peft_batch;

#define PEFT_BATCH_VERSION 2
#define PEFT_BATCH_INIT {PEFT_BATCH_VERSION, NULL, NULL, 0, 0, NULL}

typedef struct peft_step_result {
    uint32_t version;
    double loss;       /* mean cross-entropy over counted tokens of this batch */
    double grad_norm;  /* global L2 norm before clipping (only when updated) */
    uint64_t tokens;   /* counted (labelled) tokens of this batch */
    double lr;         /* learning rate used for the update (when updated) */
    int32_t updated;   /* 1 if this call applied an optimizer update */
    int64_t step;      /* optimizer updates done so far */
} peft_step_result;

#define PEFT_STEP_RESULT_VERSION 1
#define PEFT_STEP_RESULT_INIT {PEFT_STEP_RESULT_VERSION, 0, 0, 0, 0, 0, 0}

/*
 * Forward + backward + (every PEFT_OPT_ACCUM_STEPS-th call) AdamW update.
 * Gradients are accumulated as sums over tokens and divided by the total
 * counted-token count of the accumulated micro-batches at the update, so
 * accumulation equals one big batch exactly. res may be NULL.
 */
PEFT_API int peft_step(peft_model *model, const peft_batch *batch,
                       peft_step_result *res);

/* The two halves of peft_step, for hosts doing data-parallel training. */
/* Forward + backward; adds d(sum of token losses)/d(params) into the gradient buffer. */
PEFT_API int peft_forward_backward(peft_model *model, const peft_batch *batch,
                                   peft_step_result *res);
/* The flat gradient buffer (n floats, same order as the parameter block). */
PEFT_API int peft_grad_buffer(float **grads, size_t *n, peft_model *model);
/* The flat trainable-parameter block (to broadcast an initial adapter). */
PEFT_API int peft_param_buffer(float **params, size_t *n, peft_model *model);
/*
 * Apply one optimizer update with the buffered gradients divided by
 * token_count (0: the count accumulated by peft_forward_backward on this
 * handle), then zero the gradient buffer.
 */
PEFT_API int peft_apply_update(peft_model *model, double token_count,
                               peft_step_result *res);
/* Zero the gradient buffer and the accumulated token count. */
PEFT_API int peft_zero_grad(peft_model *model);

/*
 * Gradient-ready notification, for overlapping a host's all-reduce with the backward pass.
 * During each peft_forward_backward (and peft_step), on the calling thread, fn(user, offset,
 * count) is called as soon as the floats [offset, offset + count) of the gradient buffer
 * (peft_grad_buffer) have received the last contribution of that call: once per decoder
 * layer that has trainable parameters, from the top layer down, then for whatever remains
 * (the embedding adapter, the final norm). The calls cover the whole buffer exactly once,
 * in the same sequence on every call and for every model with the same configuration,
 * also when the loss turns out non-finite. fn must not call into the model; it may read
 * (not write) the range. fn NULL removes the notification.
 */
typedef void (*peft_grad_ready_fn)(void *user, size_t offset, size_t count);
PEFT_API int peft_set_grad_ready(peft_model *model, peft_grad_ready_fn fn, void *user);

typedef struct peft_eval_result {
    uint32_t version;
    double loss_sum;  /* sum of token cross-entropies (nats) */
    uint64_t tokens;  /* counted tokens */
} peft_eval_result;

#define PEFT_EVAL_RESULT_VERSION 1
#define PEFT_EVAL_RESULT_INIT {PEFT_EVAL_RESULT_VERSION, 0, 0}

/* Loss of a batch with the adapters applied (no dropout), nothing updated. */
PEFT_API int peft_eval(peft_model *model, const peft_batch *batch,
                       peft_eval_result *res);

/* ---- adapter files ----------------------------------------------------- */

typedef struct peft_save_options {
    uint32_t version;
    const char *base_model_name_or_path; /* NULL: the path the model was opened from */
    /* version 2: a PiSSA or OLoRA adapter saved as a plain LoRA for the original base, as
       PEFT's path_initial_model_for_weight_conversion does: A' = [A; A0], B' = [B, -B0]
       (A0, B0: the initial factors), r and alpha doubled (alpha x sqrt(2) with rsLoRA), patterns
       doubled, init_lora_weights true. Ignored for other adapters. */
    int32_t convert_to_lora;
} peft_save_options;

#define PEFT_SAVE_OPTIONS_VERSION 2
#define PEFT_SAVE_OPTIONS_INIT {PEFT_SAVE_OPTIONS_VERSION, NULL, 0}

/*
 * Save the attached adapter as a Hugging Face PEFT directory
 * (adapter_model.safetensors + adapter_config.json), creating the directory
 * if needed. Each file is written atomically (temp file, fsync, rename).
 */
PEFT_API int peft_save_adapter(peft_model *model, const char *dir,
                               const peft_save_options *opts);
/*
 * Load a Hugging Face PEFT adapter directory (any method libpeft saves): attaches it
 * with its adapter_config.json settings when nothing is attached, or replaces a
 * matching attachment (same method and parameter layout; else PEFT_ESHAPE and the
 * attachment stays). Either way the weights are the file's and the optimizer state
 * starts afresh (step 0, no moments); peft_load_checkpoint resumes training instead.
 */
PEFT_API int peft_load_adapter(peft_model *model, const char *dir);

/* ---- several adapters (PEFT's load_adapter / set_adapter / add_weighted_adapter) ----------
   Besides the active attachment (the one trained, saved, evaluated and generated from; it is
   named "default" unless it came from this section), a model holds any number of named,
   inactive adapters, each with its own optimizer state. Names are 1..63 bytes of [A-Za-z0-9_.-]
   and unique among the adapters of the model. */

/* Load a saved adapter directory (any method peft_load_adapter reads) as the inactive adapter
   `name`; the active one is untouched. */
PEFT_API int peft_adapter_load(peft_model *model, const char *dir, const char *name);
/* Make adapter `name` the active one; the previously active one becomes inactive under its
   name (optimizer state and all). name NULL: none active (the base model). Not while merged. */
PEFT_API int peft_adapter_set(peft_model *model, const char *name);
/* Free adapter `name` (the active one too: then none is active). */
PEFT_API int peft_adapter_delete(peft_model *model, const char *name);
/* The adapters' names, the active one (if any) first: up to cap pointers into names (valid until
   the next call that changes the adapters), their number in *n (all of them, even past cap),
   *active 1 when names[0] is the active one. */
PEFT_API int peft_adapter_list(const peft_model *model, const char **names, int32_t cap, int32_t *n,
                               int32_t *active);

enum peft_combination {
    /* PEFT "linear": every adapter the same rank r; A = sum sqrt(w_i s_i) A_i, B = sum sqrt(w_i s_i) B_i
       (weights >= 0; the product is not the weighted sum of the deltas, as in PEFT) */
    PEFT_COMBINE_LINEAR = 0,
    /* PEFT "cat": rank sum r_i; A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1, B_2, ...]: exactly the
       weighted sum of the deltas (a module missing from an adapter gets zeros there) */
    PEFT_COMBINE_CAT = 1,
    /* PEFT "svd": the weighted sum of the deltas truncated to rank svd_rank (0: the largest r_i) by
       its singular value decomposition, B = U S, A = V^T. Each delta s_i B_i A_i counts with weight
       w_i: the scale once (PEFT's code multiplies the weight by s_i again). */
    PEFT_COMBINE_SVD = 2,
    /* The task-arithmetic merges (peft_adapter_combine_ex only; density and majority_sign from its
       options). Without _SVD they act as "linear" does, on the A's and on the B's separately (one
       rank, weights sqrt(w_i s_i)); with _SVD on the deltas s_i B_i A_i with weights w_i, then as
       "svd". Pruning keeps a fraction `density` of each tensor's values: the largest magnitudes
       (ties, magnitude_prune) or a random choice rescaled by 1/density (dare_*). TIES then keeps,
       per value, the tensors agreeing with the majority sign and averages them. */
    PEFT_COMBINE_TIES = 3,
    PEFT_COMBINE_TIES_SVD = 4,
    PEFT_COMBINE_DARE_LINEAR = 5,
    PEFT_COMBINE_DARE_LINEAR_SVD = 6,
    PEFT_COMBINE_DARE_TIES = 7,
    PEFT_COMBINE_DARE_TIES_SVD = 8,
    PEFT_COMBINE_MAGNITUDE_PRUNE = 9,
    PEFT_COMBINE_MAGNITUDE_PRUNE_SVD = 10
};

enum peft_majority_sign {
    PEFT_SIGN_TOTAL = 0,    /* PEFT "total": the sign of the sum of the pruned tensors */
    PEFT_SIGN_FREQUENCY = 1 /* PEFT "frequency": the sign held by more tensors */
};

typedef struct peft_combine_options {
    uint32_t version;
    int32_t combination;   /* enum peft_combination */
    int32_t svd_rank;      /* svd family: the new rank; 0: the largest r_i */
    int32_t majority_sign; /* ties family: enum peft_majority_sign */
    double density;        /* ties, dare, magnitude_prune: the fraction of values kept, in [0, 1]
                              (1: no pruning) */
    double svd_clamp;      /* svd family: clamp B and A to the q-quantile of their values (as PEFT's
                              svd_clamp), q in (0, 1]; 0: no clamping */
    uint64_t seed;         /* dare: the random masks */
} peft_combine_options;

#define PEFT_COMBINE_OPTIONS_VERSION 1
#define PEFT_COMBINE_OPTIONS_INIT {PEFT_COMBINE_OPTIONS_VERSION, PEFT_COMBINE_SVD, 0, PEFT_SIGN_TOTAL, 1.0, 0.0, 0}

/* PEFT's add_weighted_adapter: a new inactive LoRA adapter `new_name` from the named LoRA adapters
   (the active one may be among them; plain LoRA on linear modules, uniform rank, no DoRA,
   rank_pattern, PiSSA residual or extras) with the given weights; lora_alpha = r (scale 1) and
   the union of the modules. */
PEFT_API int peft_adapter_combine(peft_model *model, const char *const *names, const double *weights, int32_t n,
                                  const char *new_name, int32_t combination, int32_t svd_rank);
/* The same with every add_weighted_adapter setting (opts NULL: PEFT_COMBINE_OPTIONS_INIT, PEFT's
   default "svd"); peft_adapter_combine(...) is this with density 1 and no clamping. */
PEFT_API int peft_adapter_combine_ex(peft_model *model, const char *const *names, const double *weights,
                                     int32_t n, const char *new_name, const peft_combine_options *opts);

/* Turn the attached adapter off (0) or on (1) without detaching it: the base
   model alone is evaluated and generated from while it is off. */
PEFT_API int peft_adapter_enable(peft_model *model, int32_t enabled);

/* Merge the attached adapter into (copies of) the base weights: W' = W + s B A.
   Evaluation and generation then run at base-model cost; training needs unmerging. */
PEFT_API int peft_merge_adapter(peft_model *model);
/* Restore the exact base weights (the adapter stays attached and active). */
PEFT_API int peft_unmerge_adapter(peft_model *model);
/* Write base + adapter as a Hugging Face model directory (config.json +
   model.safetensors, F32), atomically, loadable like the original. */
PEFT_API int peft_save_merged(peft_model *model, const char *dir);
/* The largest LoRA rank whose trainable-parameter count fits the budget for the
   configuration in opts (its rank is ignored); PEFT_ERANGE below rank 1. */
PEFT_API int peft_solve_rank(int32_t *rank, const peft_model *model, const peft_lora_options *opts,
                             uint64_t budget);

/* Save the attached LoRA adapter as a GGUF LoRA file that llama.cpp's --lora loads
   (per-module alpha and rsLoRA folded into B, q/k rows in llama.cpp's RoPE order).
   name: general.name (NULL: "libpeft adapter"). Written atomically. */
PEFT_API int peft_save_adapter_gguf(peft_model *model, const char *path, const char *name);

/* The merged model (base + the attached adapter, as peft_save_merged; the base alone when no
   adapter is attached) as a GGUF file for llama.cpp. From a GGUF base: its keys
   (hyperparameters, vocabulary, chat template) copied, general.name set, tensors in its order;
   those the adapter leaves alone copied byte for byte, the changed ones (merged linear weights,
   trained norms, embeddings, lm_head) encoded as `type` says. From a Hugging Face directory:
   the keys and tensors llama.cpp's convert_hf_to_gguf.py writes (q/k rows and biases permuted
   for llama and Mistral), the vocabulary of the tokenizer.model (SentencePiece) or
   tokenizer.json (BPE with byte fallback, or byte-level BPE with Llama 3's, Qwen2's or GPT-2's
   pre-tokenizer) beside it and tokenizer_config.json's special tokens and chat template;
   matrices in the weights' type (same) or `type`. Written to a temporary file beside path,
   then renamed. */
enum {
    PEFT_GGUF_TYPE_SAME = -1, /* each tensor in the base's type */
    PEFT_GGUF_TYPE_F32 = 0,   /* every matrix (linear weights, embeddings, lm_head) in this type */
    PEFT_GGUF_TYPE_F16 = 1,
    PEFT_GGUF_TYPE_BF16 = 30,
    PEFT_GGUF_TYPE_Q4_0 = 2,
    PEFT_GGUF_TYPE_Q8_0 = 8,
    PEFT_GGUF_TYPE_Q4_K = 12, /* K-quants: rows of a multiple of 256 (others: Q8_0, else F32) */
    PEFT_GGUF_TYPE_Q6_K = 14
};
#define PEFT_GGUF_EXPORT_OPTIONS_VERSION 1
typedef struct peft_gguf_export_options {
    uint32_t version;
    int32_t type;     /* PEFT_GGUF_TYPE_* */
    const char *name; /* general.name (NULL: "merged with libpeft") */
} peft_gguf_export_options;
#define PEFT_GGUF_EXPORT_OPTIONS_INIT {PEFT_GGUF_EXPORT_OPTIONS_VERSION, PEFT_GGUF_TYPE_SAME, NULL}
PEFT_API int peft_save_merged_gguf(peft_model *model, const char *path, const peft_gguf_export_options *opts);

/* Converting a LoRA adapter between the two formats without the model. */
#define PEFT_CONVERT_OPTIONS_VERSION 1
typedef struct peft_convert_options {
    int32_t version;
    /* the base model's attention heads and key/value heads (0: as n_heads): the llama, smollm3
       and granite architectures' q/k rows are permuted per head, so an adapter on q_proj or k_proj
       needs them */
    int32_t n_heads, n_kv_heads;
    /* the base model's layers, for a PEFT output: layers_to_transform is null when the adapter
       covers them all, else the list (0: unknown, always the list) */
    int32_t n_layers;
    /* GGUF general.architecture of a GGUF output, or the one a GGUF input must have
       (NULL: "llama" out, any in) */
    const char *architecture;
    const char *name;       /* general.name of a GGUF output (NULL: "libpeft adapter") */
    const char *base_model; /* base_model_name_or_path of a PEFT output (NULL: the GGUF's general.name) */
} peft_convert_options;
#define PEFT_CONVERT_OPTIONS_INIT {PEFT_CONVERT_OPTIONS_VERSION, 0, 0, 0, NULL, NULL, NULL}

/* src a PEFT LoRA adapter directory: written to dst as a GGUF LoRA file, as
   peft_save_adapter_gguf would (rank/alpha patterns and rsLoRA folded into B).
   src a GGUF LoRA file (F32, F16, BF16 or Q8_0 tensors): written to the directory dst
   (created) as a PEFT LoRA adapter with the file's alpha, one rank and rank_pattern for
   modules of other ranks, q/k rows back in Hugging Face's order. A plain PEFT adapter
   (no alpha_pattern, no rsLoRA) comes back bit-identical. Files written atomically.
   opts: NULL for the defaults. */
PEFT_API int peft_convert_adapter(const char *src, const char *dst, const peft_convert_options *opts);

/* A training checkpoint: the adapter directory plus optimizer.safetensors (AdamW moments,
   gradients accumulated so far, step counters), each file written atomically. Loading it
   into a model with nothing attached resumes training exactly (same result as an
   uninterrupted run); the optimizer settings are the host's to set again. */
PEFT_API int peft_save_checkpoint(peft_model *model, const char *dir);
PEFT_API int peft_load_checkpoint(peft_model *model, const char *dir);

/* ---- inference sessions (KV cache) -------------------------------------- */

typedef struct peft_session peft_session;

/* A session caches keys and values for up to max_len positions. The model must
   outlive it; do not train the model while a session of it runs a feed. */
PEFT_API int peft_session_create(peft_session **out, peft_model *model, int32_t max_len);
PEFT_API void peft_session_free(peft_session **session);
/* Forget all positions. */
PEFT_API int peft_session_reset(peft_session *session);
/* Positions filled so far. */
PEFT_API int32_t peft_session_length(const peft_session *session);
/*
 * Append n tokens at the next positions; if logits is not NULL, write the
 * vocab_size next-token logits after the last one. The adapter state
 * (peft_adapter_enable) in force during each feed is used. LongRoPE (Phi-3)
 * rotates a whole feed with the long factors when its last position is past
 * original_max_position_embeddings, as transformers does per forward call: a
 * long prompt prefilled in one feed is rotated as the batched forward rotates it.
 */
PEFT_API int peft_session_feed(peft_session *session, const int32_t *tokens, int32_t n, float *logits);

/* ---- tokenizers --------------------------------------------------------- */

typedef struct peft_tokenizer peft_tokenizer;

/* Open a Hugging Face tokenizer.json (or a directory holding one; its
   tokenizer_config.json sets add_bos_token/add_eos_token and names BOS/EOS), or the
   vocabulary of a GGUF file. SentencePiece-style BPE with byte fallback (Llama 2,
   TinyLlama, Mistral) and byte-level BPE (Llama 3, Qwen2/3, SmolLM, GPT-2: their split
   expressions, NFC, ignore_merges) give Hugging Face's ids; other pre-tokenizers and
   normalizers fail with PEFT_EUNSUPPORTED naming them. A tokenizer may be used from
   several threads at once (encoding and decoding do not modify it). */
PEFT_API int peft_tokenizer_open(peft_tokenizer **out, const char *path);
PEFT_API void peft_tokenizer_close(peft_tokenizer **tokenizer);

enum peft_tokenize_flags {
    PEFT_TOKENIZE_DEFAULT = 0,     /* BOS/EOS as the tokenizer's settings say */
    PEFT_TOKENIZE_BOS = 1,         /* force a leading BOS */
    PEFT_TOKENIZE_NO_BOS = 2,      /* never add BOS */
    PEFT_TOKENIZE_EOS = 4,         /* append EOS */
    PEFT_TOKENIZE_NO_SPECIAL = 8   /* do not match special tokens written in the text (other added
                                      tokens still match, as Hugging Face's split_special_tokens) */
};

/* Encode UTF-8 text. *n_out receives the number of ids; if it exceeds cap the call
   fails with PEFT_ERANGE (call with cap 0 to size the buffer). */
PEFT_API int peft_tokenize(const peft_tokenizer *tokenizer, const char *text, size_t len, int32_t flags,
                           int32_t *ids, size_t cap, size_t *n_out);

enum peft_detokenize_flags {
    PEFT_DETOKENIZE_DEFAULT = 0,   /* skip special tokens, strip as the decoder says */
    PEFT_DETOKENIZE_SPECIAL = 1,   /* keep special tokens' text */
    PEFT_DETOKENIZE_NO_STRIP = 2   /* keep the leading space of the first piece */
};

/* Decode ids to UTF-8; *len_out receives the length (without the NUL written
   when it fits); PEFT_ERANGE when it does not fit (cap 0 sizes the buffer). */
PEFT_API int peft_detokenize(const peft_tokenizer *tokenizer, const int32_t *ids, size_t n, int32_t flags,
                             char *buf, size_t cap, size_t *len_out);

PEFT_API int32_t peft_tokenizer_vocab_size(const peft_tokenizer *tokenizer);

enum peft_special_token { PEFT_TOKEN_BOS = 0, PEFT_TOKEN_EOS = 1, PEFT_TOKEN_UNK = 2 };
/* Id of a special token, or -1. */
PEFT_API int32_t peft_tokenizer_special(const peft_tokenizer *tokenizer, int32_t which);

/* ---- chat templates ------------------------------------------------------ */

typedef struct peft_chat_message {
    const char *role;    /* "system", "user", "assistant", ... */
    const char *content;
} peft_chat_message;

/* The tokenizer's chat template: tokenizer_config.json "chat_template" (the "default" entry of a
   list), or NULL when it has none. Valid while the tokenizer is open. */
PEFT_API const char *peft_tokenizer_chat_template(const peft_tokenizer *tokenizer);

/* Render a conversation as transformers' apply_chat_template(tokenize=False) does: Jinja2 with
   trim_blocks and lstrip_blocks, variables messages, add_generation_prompt, bos_token and
   eos_token (the tokenizer's; undefined when tokenizer is NULL), and raise_exception(msg)
   (PEFT_EINVAL with the template's message). tmpl NULL: the tokenizer's template. The subset of
   Jinja2 chat templates use is implemented (for, if, set, filters, tests, string methods);
   anything else is PEFT_EUNSUPPORTED, never a different text. *len_out receives the length;
   PEFT_ERANGE when buf (cap bytes, NUL included) is too small (cap 0 sizes it). */
PEFT_API int peft_chat_render(const peft_tokenizer *tokenizer, const char *tmpl, const peft_chat_message *messages,
                              size_t n, int32_t add_generation_prompt, char *buf, size_t cap, size_t *len_out);

#ifdef __cplusplus
}
#endif

#endif /* PEFT_PEFT_H */
