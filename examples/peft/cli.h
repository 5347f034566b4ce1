/* The `peft` command-line tool: shared helpers. Uses only the public API. */
#ifndef PEFT_CLI_H
#define PEFT_CLI_H

#include <stddef.h>
#include <stdint.h>

#include <peft/peft.h>

/* Command-line options: --name value pairs and --switches. */
typedef struct cli_args {
    int argc;
    char **argv;
    unsigned char *used;
} cli_args;

int args_init(cli_args *a, int argc, char **argv);
void args_free(cli_args *a);
const char *arg_str(cli_args *a, const char *name, const char *def);
int arg_flag(cli_args *a, const char *name);
/* Parse numbers; on a malformed value print an error and return -1. */
int arg_long(cli_args *a, const char *name, long def, long *out);
int arg_double(cli_args *a, const char *name, double def, double *out);
/* Report any option nobody asked for; returns -1 if there is one. */
int args_check_unused(cli_args *a);

/* Token files: flat uint32 little-endian ids. */
typedef struct tokens {
    int32_t *ids;
    int32_t *labels; /* NULL: labels = ids; -100 = not trained on */
    int32_t *docs;   /* NULL, or the document index of every token (attention boundaries) */
    size_t n;
    int padded;      /* one document per window */
} tokens;
int tokens_load(tokens *t, const char *path, int vocab);
void tokens_free(tokens *t);

/* Text data (.txt, .jsonl) is tokenized; anything else is a uint32 token file. */
typedef struct data_options {
    const peft_tokenizer *tokenizer; /* NULL: only token files */
    const char *split;               /* "paragraph" (default) or "line" for .txt */
    int vocab, seq, pad, eos;        /* pad: one document per window of seq tokens */
    int cross_doc;                   /* packed documents attend to each other (no boundaries) */
    int split_at_bos;                /* token files: a BOS starts a new document */
    int32_t bos;
    const char *chat_template;       /* NULL: the tokenizer's (for {"messages": [...]} lines) */
} data_options;
int data_load(tokens *t, const char *path, const data_options *o);

/* Training windows in a seeded random order, reshuffled every epoch. */
typedef struct sampler {
    size_t *order;
    size_t nw, pos;
    long epoch;
    uint64_t seed;
} sampler;
int sampler_init(sampler *s, size_t n_windows, uint64_t seed);
void sampler_free(sampler *s);
/* The next window index. */
size_t sampler_next(sampler *s);
/* Copy the next B windows of T tokens (and labels/documents where t has them) into buffers. */
void sampler_fill(sampler *s, const tokens *t, int T, int B, int32_t *ids, int32_t *labels, int32_t *docs);

/* LoRA options from --rank --alpha --targets --layers --dropout --rslora --init --seed */
/* ia3 (may be NULL: IA3 and norms refused) receives 1 and io the IA3 options with
   --method ia3, 2 with --method norms (norm tuning of the layers in o->layers), 3 with --method vera,
   4 with --method prompt (prompt_from_args), 5 with --method tokens (o->token_indices alone). */
int lora_from_args(cli_args *a, peft_lora_options *o, int *ia3, peft_ia3_options *io);
/* VeRA options (--method vera: *ia3 == 3) from the LoRA ones: targets, layers, rank, dropout, seed. */
void vera_from_lora(const peft_lora_options *lo, double d_initial, peft_vera_options *vo);
/* Prompt tuning options (--method prompt: *ia3 == 4) from --num-virtual-tokens N (8),
   --prompt-init random|text|vocab, --prompt-init-text TEXT, --seed. */
int prompt_from_args(cli_args *a, peft_prompt_options *po, const char **init_text);
/* Attach them; text initialisation tokenizes init_text with tok (recorded as tokenizer_path). */
int prompt_attach(peft_model *m, peft_prompt_options *po, const char *init_text, const peft_tokenizer *tok,
                  const char *tokenizer_path);
int parse_targets(const char *s, uint32_t *out);
void targets_string(uint32_t t, char *buf, size_t n);
/* Module kind k (0-8) of targets as a row of `peft info`: its name, or NULL when it is not a row;
   Phi-3's fused modules are one row each, qkv_proj (kind 0) for q, k, v and gate_up_proj (kind 4)
   for gate, up. *one: the targets of the row. */
const char *target_row(const char *arch, uint32_t targets, int k, uint32_t *one);

/* Mean loss over non-overlapping windows of T tokens [w0, w1) in batches of B. */
int eval_windows(peft_model *m, const tokens *t, int T, int B, size_t w0, size_t w1,
                 double *loss, uint64_t *count);
/* Padded prompt/completion (or chat) windows: greedy-generate each answer (the first run of
   trained tokens, up to its first EOS) and count exact matches. */
int exact_match(peft_model *m, const tokens *t, int T, int32_t eos, size_t w0, size_t w1, size_t *hits,
                size_t *asked);

/* Data flags shared by train and eval: --tokenizer --doc-split --pad --eos. tok_out gets the
   tokenizer (model directory's if present), to close by the caller. */
int data_from_args(cli_args *a, const char *model_dir, int vocab, int seq, data_options *o,
                   peft_tokenizer **tok_out);

int fail_lib(const char *what, int code); /* prints the library's message, returns 1 */
int make_dirs(const char *path);          /* mkdir -p; -1 with errno on failure */
char *read_text(const char *path);        /* a whole file, NUL-terminated (malloc'ed), or NULL */
double now_seconds(void);

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_init_model(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_combine(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

#endif
