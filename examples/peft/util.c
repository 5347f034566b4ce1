/* Argument parsing, token files, evaluation loop. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"

int args_init(cli_args *a, int argc, char **argv)
{
    a->argc = argc;
    a->argv = argv;
    a->used = calloc((size_t)argc + 1, 1);
    return a->used ? 0 : -1;
}

void args_free(cli_args *a) { free(a->used); }

static int find(cli_args *a, const char *name)
{
    for (int i = 0; i < a->argc; i++)
        if (strcmp(a->argv[i], name) == 0)
            return i;
    return -1;
}

const char *arg_str(cli_args *a, const char *name, const char *def)
{
    int i = find(a, name);
    if (i < 0)
        return def;
    a->used[i] = 1;
    if (i + 1 >= a->argc) {
        fprintf(stderr, "peft: %s needs a value\n", name);
        return NULL;
    }
    a->used[i + 1] = 1;
    return a->argv[i + 1];
}

int arg_flag(cli_args *a, const char *name)
{
    int i = find(a, name);
    if (i < 0)
        return 0;
    a->used[i] = 1;
    return 1;
}

int arg_long(cli_args *a, const char *name, long def, long *out)
{
    int i = find(a, name);
    *out = def;
    if (i < 0)
        return 0;
    const char *s = arg_str(a, name, NULL);
    if (!s)
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s) {
        fprintf(stderr, "peft: %s: '%s' is not an integer\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

int arg_double(cli_args *a, const char *name, double def, double *out)
{
    int i = find(a, name);
    *out = def;
    if (i < 0)
        return 0;
    const char *s = arg_str(a, name, NULL);
    if (!s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s) {
        fprintf(stderr, "peft: %s: '%s' is not a number\n", name, s);
        return -1;
    }
    *out = v;
    return 0;
}

int args_check_unused(cli_args *a)
{
    for (int i = 0; i < a->argc; i++)
        if (!a->used[i]) {
            fprintf(stderr, "peft: unknown argument '%s'\n", a->argv[i]);
            return -1;
        }
    return 0;
}

int tokens_load(tokens *t, const char *path, int vocab)
{
    t->ids = t->labels = t->docs = NULL;
    t->n = 0;
    t->padded = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "peft: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        fprintf(stderr, "peft: %s: cannot seek\n", path);
        return -1;
    }
    long size = ftell(f);
    rewind(f);
    if (size < 0 || size % 4 != 0) {
        fclose(f);
        fprintf(stderr, "peft: %s: size %ld is not a multiple of 4 (expected uint32 token ids)\n", path, size);
        return -1;
    }
    size_t n = (size_t)size / 4;
    uint8_t *raw = malloc(n * 4 + 1);
    t->ids = malloc((n ? n : 1) * sizeof *t->ids);
    if (!raw || !t->ids || fread(raw, 4, n, f) != n) {
        fclose(f);
        free(raw);
        tokens_free(t);
        fprintf(stderr, "peft: %s: read failed\n", path);
        return -1;
    }
    fclose(f);
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
                     (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24;
        if (vocab > 0 && v >= (uint32_t)vocab) {
            fprintf(stderr, "peft: %s: token %u at index %zu is outside the model's vocabulary (%d)\n",
                    path, v, i, vocab);
            free(raw);
            tokens_free(t);
            return -1;
        }
        t->ids[i] = (int32_t)v;
    }
    free(raw);
    t->n = n;
    return 0;
}

void tokens_free(tokens *t)
{
    free(t->ids);
    free(t->labels);
    free(t->docs);
    t->ids = t->labels = t->docs = NULL;
    t->n = 0;
}

int data_from_args(cli_args *a, const char *model_dir, int vocab, int seq, data_options *o,
                   peft_tokenizer **tok_out)
{
    *tok_out = NULL;
    const char *tp = arg_str(a, "--tokenizer", NULL);
    o->split = arg_str(a, "--doc-split", "paragraph");
    o->pad = arg_flag(a, "--pad");
    o->eos = arg_flag(a, "--eos");
    o->cross_doc = arg_flag(a, "--cross-doc");
    o->split_at_bos = arg_flag(a, "--split-at-bos");
    o->vocab = vocab;
    o->seq = seq;
    o->tokenizer = NULL;
    if (!o->split || (strcmp(o->split, "paragraph") && strcmp(o->split, "line"))) {
        fprintf(stderr, "peft: --doc-split must be paragraph or line\n");
        return -1;
    }
    /* the tokenizer is optional for token files: open it quietly when it is there */
    int rc = peft_tokenizer_open(tok_out, tp ? tp : model_dir);
    if (rc && tp)
        return fail_lib("tokenizer", rc), -1;
    o->tokenizer = *tok_out;
    o->bos = *tok_out ? peft_tokenizer_special(*tok_out, PEFT_TOKEN_BOS) : 1;
    o->chat_template = NULL;
    const char *ct = arg_str(a, "--chat-template", NULL);
    if (ct) {
        /* the template's text, kept for the program's lifetime (data_options holds a pointer) */
        static char *loaded;
        free(loaded);
        if (!(loaded = read_text(ct))) {
            fprintf(stderr, "peft: --chat-template %s: %s\n", ct, strerror(errno));
            return -1;
        }
        o->chat_template = loaded;
    }
    return 0;
}

static const char *const target_names[] = {"q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head"};

int parse_targets(const char *s, uint32_t *out)
{
    *out = 0;
    char *copy = strdup(s);
    if (!copy)
        return -1;
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
        if (strcmp(tok, "all-linear") == 0 || strcmp(tok, "all") == 0) {
            *out |= PEFT_TARGET_ALL_LINEAR;
            continue;
        }
        size_t len = strlen(tok);
        if (len > 5 && strcmp(tok + len - 5, "_proj") == 0)
            tok[len - 5] = '\0';
        if (strcmp(tok, "embed_tokens") == 0)
            tok[5] = '\0';
        if (strcmp(tok, "qkv") == 0 || strcmp(tok, "gate_up") == 0) { /* Phi-3's fused modules */
            *out |= tok[0] == 'q' ? PEFT_TARGET_Q | PEFT_TARGET_K | PEFT_TARGET_V : PEFT_TARGET_GATE | PEFT_TARGET_UP;
            continue;
        }
        int found = -1;
        for (int k = 0; k < 9; k++)
            if (strcmp(tok, target_names[k]) == 0)
                found = k;
        if (found < 0) {
            fprintf(stderr, "peft: --targets: unknown module '%s' (q,k,v,o,gate,up,down,embed,lm_head, qkv_proj and "
                            "gate_up_proj on Phi-3, or all-linear)\n", tok);
            free(copy);
            return -1;
        }
        *out |= 1u << found;
    }
    free(copy);
    return *out ? 0 : -1;
}

const char *target_row(const char *arch, uint32_t targets, int k, uint32_t *one)
{
    static const char *const names[9] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                         "embed_tokens", "lm_head"};
    const uint32_t qkv = PEFT_TARGET_Q | PEFT_TARGET_K | PEFT_TARGET_V, gu = PEFT_TARGET_GATE | PEFT_TARGET_UP;
    if (!strcmp(arch, "phi3") && (k == 0 || k == 4)) { /* the library folds the parts' bits the same way */
        *one = k ? PEFT_TARGET_GATE : PEFT_TARGET_Q;
        return targets & (k ? gu : qkv) ? (k ? "gate_up_proj" : "qkv_proj") : NULL;
    }
    if (!strcmp(arch, "phi3") && (k == 1 || k == 2 || k == 5))
        return NULL;
    *one = 1u << k;
    return targets & *one ? names[k] : NULL;
}

void targets_string(uint32_t t, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < 9; k++)
        if (t & (1u << k))
            used += (size_t)snprintf(buf + used, used < n ? n - used : 0, "%s%s", used ? "," : "",
                                     target_names[k]);
}

/* Bits of a comma list of names (names[k] -> 1 << k; "all": every name); -1 on an unknown one. */
static int name_bits(const char *flag, const char *s, const char *const *names, int n, uint32_t *out)
{
    *out = 0;
    char *copy = strdup(s);
    if (!copy)
        return -1;
    for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
        int found = -1;
        for (int k = 0; k < n; k++)
            if (!strcmp(tok, names[k]))
                found = k;
        if (found < 0 && strcmp(tok, "all") != 0) {
            fprintf(stderr, "peft: %s: unknown name '%s'\n", flag, tok);
            free(copy);
            return -1;
        }
        *out |= found < 0 ? (1u << n) - 1 : 1u << found;
    }
    free(copy);
    return 0;
}

/* Memory that options point into for the rest of the run (each sweep configuration keeps its
   own), freed at exit. */
static void **kept;
static size_t n_kept;

static void free_kept(void)
{
    for (size_t i = 0; i < n_kept; i++)
        free(kept[i]);
    free(kept);
    kept = NULL;
    n_kept = 0;
}

static int keep_until_exit(void *p)
{
    void **k = realloc(kept, (n_kept + 1) * sizeof *k);
    if (!k)
        return -1;
    if (!kept && atexit(free_kept) != 0) {
        free(k);
        return -1;
    }
    kept = k;
    kept[n_kept++] = p;
    return 0;
}

/* Token ids separated by commas (kept until exit) into *out, *n; 1 when absent, -1 on error. */
static int id_list(const char *flag, const char *ids, const int32_t **out, int32_t *n_out)
{
    if (!ids)
        return 1;
    size_t n = 1;
    for (const char *p = ids; *p; p++)
        n += *p == ',';
    int32_t *v = malloc(n * sizeof *v);
    if (!v || keep_until_exit(v)) {
        free(v);
        fprintf(stderr, "peft: out of memory\n");
        return -1;
    }
    n = 0;
    for (const char *p = ids; *p;) {
        char *end;
        long t = strtol(p, &end, 10);
        if (end == p || t < 0 || t > INT32_MAX || (*end && *end != ',')) {
            fprintf(stderr, "peft: %s: expected token ids separated by commas\n", flag);
            return -1;
        }
        v[n++] = (int32_t)t;
        p = *end ? end + 1 : end;
    }
    *out = v;
    *n_out = (int32_t)n;
    return 0;
}

/* What LoRA trains beyond the linear modules: --modules-to-save embed_tokens,lm_head,
   --train-norms input,post_attention,pre_feedforward,post_feedforward,q_norm,k_norm,final|all,
   --token-indices ID,ID,...,
   --head-token-indices ID,ID,... (rows of an untied lm_head), --bias none|all|lora_only */
static int extras_from_args(cli_args *a, peft_lora_options *o)
{
    static const char *const save_names[] = {"embed_tokens", "lm_head"};
    /* PEFT_NORM_* bit order; pre/post_feedforward are Gemma's, q/k norms Qwen3's and Gemma 3's */
    static const char *const norm_names[] = {"input",  "post_attention", "final", "pre_feedforward", "post_feedforward",
                                             "q_norm", "k_norm"};
    const char *save = arg_str(a, "--modules-to-save", NULL), *norms = arg_str(a, "--train-norms", NULL);
    if ((save && name_bits("--modules-to-save", save, save_names, 2, &o->modules_to_save)) ||
        (norms && name_bits("--train-norms", norms, norm_names, 7, &o->norms)))
        return -1;
    if (id_list("--token-indices", arg_str(a, "--token-indices", NULL), &o->token_indices, &o->n_token_indices) < 0 ||
        id_list("--head-token-indices", arg_str(a, "--head-token-indices", NULL), &o->head_token_indices,
                &o->n_head_token_indices) < 0)
        return -1;
    const char *bias = arg_str(a, "--bias", "none");
    if (!bias)
        return -1;
    static const char *const bias_names[] = {"none", "all", "lora_only"};
    for (o->bias = 0; o->bias < 3 && strcmp(bias, bias_names[o->bias]) != 0; o->bias++)
        ;
    if (o->bias == 3) {
        fprintf(stderr, "peft: --bias must be none, all or lora_only (got '%s')\n", bias);
        return -1;
    }
    return 0;
}

/* --exclude-regex RE, or --exclude-modules NAME,... as PEFT's list (a module named so, or whose
   name ends with "." NAME): the expression (.*\.)?(NAME|...) */
static int exclude_from_args(cli_args *a, peft_lora_options *o)
{
    static char re[4096];
    const char *names = arg_str(a, "--exclude-modules", NULL);
    o->exclude_regex = arg_str(a, "--exclude-regex", NULL);
    if (!names)
        return 0;
    if (o->exclude_regex || !*names || strlen(names) > (sizeof re - 16) / 2) {
        fprintf(stderr, "peft: --exclude-modules takes a list of module names (not with --exclude-regex)\n");
        return -1;
    }
    char *w = re + sprintf(re, "(.*\\.)?(");
    for (const char *c = names; *c; c++) {
        if (strchr(".^$*+?()[]{}|\\", *c))
            *w++ = '\\';
        *w++ = *c == ',' ? '|' : *c;
    }
    strcpy(w, ")");
    o->exclude_regex = re;
    return 0;
}

int lora_from_args(cli_args *a, peft_lora_options *o, int *ia3, peft_ia3_options *io)
{
    if (ia3)
        *ia3 = 0;
    long rank, seed;
    double alpha, dropout;
    peft_lora_options d = PEFT_LORA_OPTIONS_INIT;
    *o = d;
    if (arg_long(a, "--rank", 8, &rank) || arg_double(a, "--alpha", -1, &alpha) ||
        arg_double(a, "--dropout", 0.0, &dropout) || arg_long(a, "--seed", 0, &seed))
        return -1;
    const char *targets = arg_str(a, "--targets", "q,v");
    const char *init = arg_str(a, "--init", "kaiming");
    const char *method = arg_str(a, "--method", "lora");
    if (!method)
        return -1;
    const char *ff = arg_str(a, "--feedforward", "down");
    if (!ff)
        return -1;
    if (!strcmp(method, "embeddings")) { /* LoRA on embed_tokens unless --targets says more */
        if (find(a, "--targets") < 0)
            targets = "embed";
    } else if (!strcmp(method, "dora")) {
        o->use_dora = 1;
    } else if (!strcmp(method, "loha")) {
        o->variant = PEFT_VARIANT_LOHA;
    } else if (!strcmp(method, "lokr")) {
        o->variant = PEFT_VARIANT_LOKR;
    } else if (!strcmp(method, "norms") && ia3) {
        *ia3 = 2; /* handled by the caller through norms_from_method */
    } else if (!strcmp(method, "vera") && ia3) {
        *ia3 = 3;
    } else if (!strcmp(method, "prompt") && ia3) {
        *ia3 = 4; /* handled by the caller through prompt_from_args */
    } else if (!strcmp(method, "tokens") && ia3) {
        *ia3 = 5; /* trainable tokens: the rows of --token-indices (the caller attaches them) */
    } else if (!strcmp(method, "ia3") && ia3) {
        peft_ia3_options d3 = PEFT_IA3_OPTIONS_INIT;
        *io = d3;
        *ia3 = 1;
        if (targets && strcmp(targets, "q,v") != 0 && parse_targets(targets, &io->targets))
            return -1;
        if (parse_targets(ff, &io->feedforward))
            return -1;
        io->feedforward &= io->targets;
    } else if (strcmp(method, "lora") != 0) {
        fprintf(stderr, "peft: --method %s is not available yet (lora, dora, loha, lokr, embeddings%s)\n", method,
                ia3 ? ", ia3, norms, vera, prompt, tokens" : "");
        return -1;
    }
    if (extras_from_args(a, o))
        return -1;
    if (ia3 && *ia3 == 1) { /* IA3 trains modules_to_save and norms alongside too */
        io->modules_to_save = o->modules_to_save;
        io->norms = o->norms;
    }
    o->use_dora |= arg_flag(a, "--dora");
    o->rank_pattern = arg_str(a, "--rank-pattern", NULL);
    o->alpha_pattern = arg_str(a, "--alpha-pattern", NULL);
    o->target_regex = arg_str(a, "--target-regex", NULL);
    if (exclude_from_args(a, o))
        return -1;
    if (o->target_regex) { /* PEFT's regex target_modules: it alone selects */
        o->targets = 0;
    } else if (!targets || !init || parse_targets(targets, &o->targets)) {
        return -1;
    }
    if (!init)
        return -1;
    o->layers = arg_str(a, "--layers", NULL);
    if (ia3 && *ia3)
        io->layers = o->layers;
    o->rank = (int32_t)rank;
    if (ia3 && *ia3 == 3 && find(a, "--rank") < 0)
        o->rank = 256; /* PEFT's VeRA default */
    o->alpha = alpha > 0 ? (float)alpha : (float)(2 * rank);
    o->dropout = (float)dropout;
    o->use_rslora = arg_flag(a, "--rslora");
    o->seed = (uint64_t)seed;
    if (strcmp(init, "kaiming") == 0)
        o->init = PEFT_INIT_KAIMING;
    else if (strcmp(init, "gaussian") == 0)
        o->init = PEFT_INIT_GAUSSIAN;
    else if (strcmp(init, "pissa") == 0)
        o->init = PEFT_INIT_PISSA;
    else if (strcmp(init, "olora") == 0)
        o->init = PEFT_INIT_OLORA;
    else {
        fprintf(stderr, "peft: --init: '%s' is not kaiming, gaussian, pissa or olora\n", init);
        return -1;
    }
    return 0;
}

int prompt_from_args(cli_args *a, peft_prompt_options *po, const char **init_text)
{
    peft_prompt_options d = PEFT_PROMPT_OPTIONS_INIT;
    *po = d;
    long n, seed;
    const char *init = arg_str(a, "--prompt-init", "random");
    *init_text = arg_str(a, "--prompt-init-text", NULL);
    if (arg_long(a, "--num-virtual-tokens", 8, &n) || arg_long(a, "--seed", 0, &seed) || !init)
        return -1;
    if (n < 1 || n > 65536) {
        fprintf(stderr, "peft: --num-virtual-tokens must be in 1..65536\n");
        return -1;
    }
    po->n_virtual = (int32_t)n;
    po->seed = (uint64_t)seed;
    if (!strcmp(init, "random"))
        po->init = PEFT_PROMPT_INIT_RANDOM;
    else if (!strcmp(init, "text"))
        po->init = PEFT_PROMPT_INIT_TEXT;
    else if (!strcmp(init, "vocab"))
        po->init = PEFT_PROMPT_INIT_SAMPLE_VOCAB;
    else {
        fprintf(stderr, "peft: --prompt-init: '%s' is not random, text or vocab\n", init);
        return -1;
    }
    if ((po->init == PEFT_PROMPT_INIT_TEXT) != (*init_text != NULL)) {
        fprintf(stderr, "peft: --prompt-init text and --prompt-init-text TEXT go together\n");
        return -1;
    }
    return 0;
}

int prompt_attach(peft_model *m, peft_prompt_options *po, const char *init_text, const peft_tokenizer *tok,
                  const char *tokenizer_path)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int code;
    if (po->init == PEFT_PROMPT_INIT_TEXT) {
        /* as PEFT: tokenizer(text)["input_ids"], BOS as the tokenizer adds it */
        if (!tok) {
            fprintf(stderr, "peft: --prompt-init text needs the model's tokenizer (or --tokenizer)\n");
            return -1;
        }
        if ((code = peft_tokenize(tok, init_text, strlen(init_text), PEFT_TOKENIZE_DEFAULT, NULL, 0, &n)) &&
            code != PEFT_ERANGE)
            return fail_lib("prompt-init-text", code), -1;
        if (n == 0 || !(ids = malloc(n * sizeof *ids))) {
            fprintf(stderr, "peft: --prompt-init-text gives no tokens\n");
            return -1;
        }
        if ((code = peft_tokenize(tok, init_text, strlen(init_text), PEFT_TOKENIZE_DEFAULT, ids, n, &n))) {
            free(ids);
            return fail_lib("prompt-init-text", code), -1;
        }
        po->init_tokens = ids;
        po->n_init_tokens = (int32_t)n;
        po->init_text = init_text;
        po->tokenizer_name_or_path = tokenizer_path;
    }
    code = peft_attach_prompt(m, po, NULL);
    free(ids);
    po->init_tokens = NULL;
    return code ? (fail_lib("attach", code), -1) : 0;
}

int eval_windows(peft_model *m, const tokens *t, int T, int B, size_t w0, size_t w1, double *loss,
                 uint64_t *count)
{
    double sum = 0;
    uint64_t n = 0;
    for (size_t w = w0; w < w1; w += (size_t)B) {
        int nb = (int)(w1 - w < (size_t)B ? w1 - w : (size_t)B);
        peft_batch b = PEFT_BATCH_INIT;
        b.tokens = t->ids + w * (size_t)T;
        b.labels = t->labels ? t->labels + w * (size_t)T : NULL;
        b.seq_ids = t->docs ? t->docs + w * (size_t)T : NULL;
        b.n_seq = nb;
        b.seq_len = T;
        peft_eval_result r = PEFT_EVAL_RESULT_INIT;
        int code = peft_eval(m, &b, &r);
        if (code)
            return code;
        sum += r.loss_sum;
        n += r.tokens;
    }
    *loss = n ? sum / (double)n : 0.0;
    *count = n;
    return 0;
}

int fail_lib(const char *what, int code)
{
    fprintf(stderr, "peft: %s: %s (%s)\n", what, peft_last_error(), peft_strerror(code));
    return 1;
}

double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int exact_match(peft_model *m, const tokens *t, int T, int32_t eos, size_t w0, size_t w1, size_t *hits,
                size_t *asked)
{
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &info);
    float *logits = malloc((size_t)info.vocab_size * sizeof *logits);
    peft_session *s = NULL;
    int rc = logits ? peft_session_create(&s, m, T) : PEFT_ENOMEM;
    *hits = *asked = 0;
    for (size_t w = w0; w < w1 && !rc; w++) {
        const int32_t *ids = t->ids + w * (size_t)T, *lab = t->labels + w * (size_t)T;
        int p = 0;
        while (p < T && lab[p] == -100)
            p++;
        int e = p;
        while (e < T && lab[e] != -100)
            e++;
        /* the answer ends at its EOS (the end of the completion, or of the assistant's turn in a
           chat template, which may add text after it) */
        for (int i = p; i < e && eos >= 0; i++)
            if (ids[i] == eos) {
                e = i;
                break;
            }
        if (p == 0 || e <= p)
            continue;
        (*asked)++;
        peft_session_reset(s);
        if ((rc = peft_session_feed(s, ids, p, logits)))
            break;
        int ok = 1;
        for (int i = p; i < e && ok; i++) {
            int32_t best = 0;
            for (int v = 1; v < info.vocab_size; v++)
                if (logits[v] > logits[best])
                    best = v;
            ok = best == ids[i];
            if (ok && i + 1 < e)
                rc = peft_session_feed(s, &best, 1, logits);
        }
        *hits += (size_t)ok;
    }
    peft_session_free(&s);
    free(logits);
    return rc;
}

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int sampler_init(sampler *s, size_t n_windows, uint64_t seed)
{
    s->order = malloc((n_windows ? n_windows : 1) * sizeof *s->order);
    s->nw = n_windows;
    s->pos = n_windows;
    s->epoch = -1;
    s->seed = seed;
    return s->order ? 0 : -1;
}

void sampler_free(sampler *s)
{
    free(s->order);
    s->order = NULL;
}

size_t sampler_next(sampler *s)
{
    if (s->pos >= s->nw) {
        s->epoch++;
        /* Fisher-Yates with a seed of its own per epoch */
        uint64_t r = mix(s->seed ^ (uint64_t)s->epoch * 0x5851f42d4c957f2dull);
        for (size_t i = 0; i < s->nw; i++)
            s->order[i] = i;
        for (size_t i = s->nw; i > 1; i--) {
            r = mix(r);
            size_t j = (size_t)(r % i), t = s->order[i - 1];
            s->order[i - 1] = s->order[j];
            s->order[j] = t;
        }
        s->pos = 0;
    }
    return s->order[s->pos++];
}

void sampler_fill(sampler *s, const tokens *t, int T, int B, int32_t *ids, int32_t *labels, int32_t *docs)
{
    for (int b = 0; b < B; b++) {
        size_t w = sampler_next(s), n = (size_t)T;
        memcpy(ids + (size_t)b * n, t->ids + w * n, n * sizeof *ids);
        if (t->labels)
            memcpy(labels + (size_t)b * n, t->labels + w * n, n * sizeof *labels);
        if (t->docs)
            memcpy(docs + (size_t)b * n, t->docs + w * n, n * sizeof *docs);
    }
}

void vera_from_lora(const peft_lora_options *lo, double d_initial, peft_vera_options *vo)
{
    peft_vera_options d = PEFT_VERA_OPTIONS_INIT;
    *vo = d;
    vo->targets = lo->targets;
    vo->layers = lo->layers;
    vo->rank = lo->rank;
    vo->dropout = lo->dropout;
    vo->seed = lo->seed;
    vo->d_initial = (float)d_initial;
    vo->modules_to_save = lo->modules_to_save;
    vo->norms = lo->norms;
}

int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *s = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            char *n = realloc(s, cap = (cap + 4096) * 2);
            if (!n) {
                free(s);
                fclose(f);
                return NULL;
            }
            s = n;
        }
        size_t r = fread(s + len, 1, 4096, f);
        len += r;
        if (r < 4096)
            break;
    }
    fclose(f);
    s[len] = '\0';
    return s;
}
