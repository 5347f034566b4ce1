/* peft info, merge, convert, combine: what a model or adapter holds, and adapters rewritten */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static const char info_help[] =
    "usage: peft info --model DIR [--adapter DIR] [--method M] [--rank R] [--alpha A] [--targets LIST]\n"
    "                 [--layers SPEC] [--num-virtual-tokens N] [--budget N] [--json]\n"
    "Prints the model's architecture and shapes and, for the given configuration of any method\n"
    "(the adapter flags of peft train), or the adapter's, the exact trainable-parameter count per\n"
    "module kind and the memory it takes.\n"
    "--budget N solves the largest rank (LoRA family) or prompt length whose count fits N parameters.\n";

static void total_row(uint64_t total, const peft_model_info *in)
{
    printf("  %-12s %12llu  (%.4f%% of the base, %.2f MiB as F32 + %.2f MiB AdamW state)\n", "total",
           (unsigned long long)total, 100.0 * (double)total / (double)in->n_params, (double)total * 4 / 1048576.0,
           (double)total * 8 / 1048576.0);
}

/* The parameter table of IA3 (kind 1), norm tuning (2), VeRA (3), prompt tuning (4) or trainable
   tokens (5): a row per
   module kind (norm, or the soft prompt) and the total; -1 after a message, or a library code. */
static int other_method_table(peft_model *m, int kind, const peft_lora_options *o, const peft_ia3_options *io,
                              peft_prompt_options *po, long budget, uint64_t *total)
{
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    uint64_t n;
    int code;
    *total = 0;
    if (kind == 5) { /* trainable tokens: the rows of --token-indices */
        if ((code = peft_count_tokens(&n, m, o->token_indices, o->n_token_indices)))
            return code;
        printf("\ntrainable tokens: %d rows x hidden %d\n", o->n_token_indices, in.hidden_size);
        printf("  %-12s %12llu\n", "token rows", (unsigned long long)n);
        *total = n;
        total_row(n, &in);
        return 0;
    }
    if (kind == 4) {
        if (budget > 0) { /* the most virtual tokens the budget buys */
            po->n_virtual = (int32_t)(budget / in.hidden_size);
            if (po->n_virtual < 1) {
                fprintf(stderr, "peft info: a budget of %ld is below one virtual token (%d parameters)\n", budget,
                        in.hidden_size);
                return -1;
            }
            printf("\nbudget         %ld trainable parameters -> %d virtual tokens\n", budget, po->n_virtual);
        }
        if ((code = peft_count_prompt(&n, m, po)))
            return code;
        printf("\nprompt tuning: %d virtual tokens x hidden %d\n", po->n_virtual, in.hidden_size);
        printf("  %-12s %12llu\n", "prompt", (unsigned long long)n);
        *total = n;
        total_row(n, &in);
        return 0;
    }
    if (budget > 0) {
        fprintf(stderr, "peft info: --budget solves LoRA-family ranks and prompt lengths\n");
        return -1;
    }
    if (kind == 2) {
        static const char *const nn[7] = {"input",           "post_attention", "final", "pre_feedforward",
                                          "post_feedforward", "q_norm",         "k_norm"};
        printf("\nnorm tuning (LN_TUNING) layers=%s\n", o->layers ? o->layers : "all");
        for (int k = 0; k < 7; k++) {
            peft_norms_options no = PEFT_NORMS_OPTIONS_INIT;
            no.norms = 1u << k;
            no.layers = o->layers;
            if (o->norms && !(o->norms & no.norms)) /* --train-norms */
                continue;
            code = peft_count_norms(&n, m, &no);
            if (code == PEFT_EINVAL && k >= 3 && !o->norms) /* Gemma's or q/k norms, on another model */
                continue;
            if (code)
                return code;
            printf("  %-17s %10llu\n", nn[k], (unsigned long long)n);
            *total += n;
        }
        total_row(*total, &in);
        return 0;
    }
    char tbuf[64];
    targets_string(kind == 1 ? io->targets : o->targets, tbuf, sizeof tbuf);
    if (kind == 1)
        printf("\nIA3 targets=%s layers=%s\n", tbuf, o->layers ? o->layers : "all");
    else
        printf("\nVeRA r=%d targets=%s layers=%s (the shared projections are frozen, not counted)\n", o->rank, tbuf,
               o->layers ? o->layers : "all");
    for (int k = 0; k < 7; k++) {
        uint32_t row;
        const char *name = target_row(in.architecture, kind == 1 ? io->targets : o->targets, k, &row);
        if (!name)
            continue;
        if (kind == 1) {
            peft_ia3_options one = *io;
            one.targets = row;
            one.feedforward &= one.targets;
            one.modules_to_save = one.norms = 0;
            code = peft_count_ia3(&n, m, &one);
        } else {
            peft_vera_options vo;
            vera_from_lora(o, 0.1, &vo);
            vo.targets = row;
            vo.modules_to_save = vo.norms = 0;
            code = peft_count_vera(&n, m, &vo);
        }
        if (code)
            return code;
        printf("  %-12s %12llu\n", name, (unsigned long long)n);
        *total += n;
    }
    /* modules_to_save and norms trained alongside: each one's share of the whole */
    uint64_t all, without;
    peft_ia3_options ia = *io;
    peft_vera_options va;
    vera_from_lora(o, 0.1, &va);
    if ((code = kind == 1 ? peft_count_ia3(&all, m, &ia) : peft_count_vera(&all, m, &va)))
        return code;
    static const char *const xn[3] = {"embed (full)", "lm_head (full)", "norms"};
    for (int x = 0; x < 3; x++) {
        uint32_t bit = x == 0 ? PEFT_SAVE_EMBED : PEFT_SAVE_LM_HEAD;
        peft_ia3_options il = ia;
        peft_vera_options vl = va;
        if (x < 2 && (ia.modules_to_save & bit) && kind == 1)
            il.modules_to_save &= ~bit;
        else if (x < 2 && (va.modules_to_save & bit) && kind == 3)
            vl.modules_to_save &= ~bit;
        else if (x == 2 && kind == 1 && ia.norms)
            il.norms = 0;
        else if (x == 2 && kind == 3 && va.norms)
            vl.norms = 0;
        else
            continue;
        if ((code = kind == 1 ? peft_count_ia3(&without, m, &il) : peft_count_vera(&without, m, &vl)))
            return code;
        printf("  %-12s %12llu\n", xn[x], (unsigned long long)(all - without));
        *total += all - without;
    }
    total_row(*total, &in);
    return 0;
}

int cmd_info(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    if (arg_flag(&a, "--help")) {
        fputs(info_help, stdout);
        args_free(&a);
        return 0;
    }
    int rc = 1;
    peft_model *m = NULL;
    const char *model = arg_str(&a, "--model", NULL), *adapter = arg_str(&a, "--adapter", NULL);
    int json = arg_flag(&a, "--json");
    long budget;
    peft_lora_options o;
    peft_ia3_options io;
    peft_prompt_options po;
    const char *ptext = NULL;
    int kind = 0; /* 0 LoRA family, 1 IA3, 2 norms, 3 VeRA, 4 prompt (lora_from_args) */
    if (arg_long(&a, "--budget", 0, &budget) || lora_from_args(&a, &o, &kind, &io) ||
        (kind == 4 && prompt_from_args(&a, &po, &ptext)) || args_check_unused(&a))
        goto done;
    if (!model) {
        fputs(info_help, stderr);
        goto done;
    }
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = 1;
    int code = peft_model_open(&m, model, &oo);
    if (code) {
        rc = fail_lib("open", code);
        goto done;
    }
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    printf("model          %s\n", model);
    printf("architecture   %s\n", in.architecture);
    printf("weights        %s\n", in.weights_dtype);
    printf("layers         %d\n", in.n_layers);
    printf("hidden         %d\n", in.hidden_size);
    printf("intermediate   %d\n", in.intermediate_size);
    printf("heads          %d (kv %d, head_dim %d)\n", in.n_heads, in.n_kv_heads, in.head_dim);
    printf("vocab          %d%s\n", in.vocab_size, in.tied_embeddings ? " (tied embeddings)" : "");
    printf("parameters     %llu\n", (unsigned long long)in.n_params);
    printf("rms_norm_eps   %g, rope_theta %g\n", in.rms_norm_eps, in.rope_theta);
    if (adapter) {
        if ((code = peft_load_adapter(m, adapter))) {
            rc = fail_lib("adapter", code);
            goto done;
        }
        peft_model_get_info(m, &in);
        printf("adapter        %s: %llu trainable parameters (%.4f%% of the base)\n", adapter,
               (unsigned long long)in.n_trainable, 100.0 * (double)in.n_trainable / (double)in.n_params);
    } else if (kind != 0) {
        if ((code = other_method_table(m, kind, &o, &io, &po, budget, &in.n_trainable))) {
            rc = code < 0 ? 1 : fail_lib("count", code);
            goto done;
        }
    } else {
        char tbuf[64];
        if (budget > 0) {
            int32_t r;
            if ((code = peft_solve_rank(&r, m, &o, (uint64_t)budget))) {
                rc = fail_lib("budget", code);
                goto done;
            }
            printf("\nbudget         %ld trainable parameters -> rank %d\n", budget, r);
            o.rank = r;
            o.alpha = 2.0f * (float)r;
        }
        targets_string(o.targets, tbuf, sizeof tbuf);
        printf("\nLoRA r=%d alpha=%g targets=%s layers=%s%s%s%s\n", o.rank, o.alpha, tbuf,
               o.layers ? o.layers : "all", o.use_rslora ? " rslora" : "", o.exclude_regex ? " exclude=" : "",
               o.exclude_regex ? o.exclude_regex : "");
        printf("  %-12s %12s\n", "module", "trainable");
        uint64_t total = 0;
        peft_lora_options plain = o; /* the targets alone */
        plain.modules_to_save = plain.norms = 0;
        plain.n_token_indices = plain.n_head_token_indices = 0;
        plain.bias = PEFT_BIAS_NONE;
        if (o.target_regex) { /* the modules the expression picks, as one row */
            uint64_t n;
            if ((code = peft_count_lora(&n, m, &plain))) {
                rc = fail_lib("count", code);
                goto done;
            }
            printf("  %-12s %12llu  (%s)\n", "regex", (unsigned long long)n, o.target_regex);
            total += n;
        }
        for (int k = 0; k < 9 && !o.target_regex; k++) {
            uint32_t row;
            const char *name = target_row(in.architecture, o.targets, k, &row);
            if (!name)
                continue;
            peft_lora_options one = plain;
            one.targets = row;
            uint64_t n;
            code = peft_count_lora(&n, m, &one);
            if (code == PEFT_EINVAL && o.exclude_regex && peft_count_lora(&n, m, &o) == PEFT_OK)
                n = 0, code = PEFT_OK; /* every module of this kind excluded */
            if (code) {
                rc = fail_lib("count", code);
                goto done;
            }
            printf("  %-12s %12llu\n", name, (unsigned long long)n);
            total += n;
        }
        /* what is trained beyond the targets: each one's share of the whole configuration */
        uint64_t all, without;
        if ((code = peft_count_lora(&all, m, &o))) {
            rc = fail_lib("count", code);
            goto done;
        }
        for (int x = 0; x < 6; x++) {
            static const char *const xn[6] = {"token rows", "embed (full)", "lm_head (full)", "norms", "head rows",
                                              "biases"};
            peft_lora_options less = o;
            if (x == 0 && o.n_token_indices > 0)
                less.n_token_indices = 0;
            else if (x == 4 && o.n_head_token_indices > 0)
                less.n_head_token_indices = 0;
            else if (x == 1 && (o.modules_to_save & PEFT_SAVE_EMBED))
                less.modules_to_save &= ~(uint32_t)PEFT_SAVE_EMBED;
            else if (x == 2 && (o.modules_to_save & PEFT_SAVE_LM_HEAD))
                less.modules_to_save &= ~(uint32_t)PEFT_SAVE_LM_HEAD;
            else if (x == 3 && o.norms)
                less.norms = 0;
            else if (x == 5 && o.bias != PEFT_BIAS_NONE)
                less.bias = PEFT_BIAS_NONE;
            else
                continue;
            if ((code = peft_count_lora(&without, m, &less))) {
                rc = fail_lib("count", code);
                goto done;
            }
            printf("  %-14s %10llu\n", xn[x], (unsigned long long)(all - without));
            total += all - without;
        }
        total_row(total, &in);
        in.n_trainable = total;
    }
    if (json)
        printf("{\"architecture\": \"%s\", \"layers\": %d, \"hidden\": %d, \"intermediate\": %d, "
               "\"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"vocab\": %d, \"tied\": %s, "
               "\"params\": %llu, \"trainable\": %llu, \"weights_dtype\": \"%s\", \"rank\": %d}\n",
               in.architecture, in.n_layers, in.hidden_size, in.intermediate_size, in.n_heads,
               in.n_kv_heads, in.head_dim, in.vocab_size, in.tied_embeddings ? "true" : "false",
               (unsigned long long)in.n_params, (unsigned long long)in.n_trainable, in.weights_dtype, o.rank);
    rc = 0;
done:
    peft_model_close(&m);
    args_free(&a);
    return rc;
}

/* peft merge --model DIR|FILE.gguf [--adapter DIR] --out DIR|FILE.gguf [--type same|f32|f16|bf16|q8_0|q4_0|q4_k|q6_k]
   [--name N] */
int cmd_merge(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    int rc = 1, code;
    peft_model *m = NULL;
    const char *model = arg_str(&a, "--model", NULL), *adapter = arg_str(&a, "--adapter", NULL);
    const char *out = arg_str(&a, "--out", NULL), *type = arg_str(&a, "--type", NULL);
    const char *name = arg_str(&a, "--name", NULL);
    if (args_check_unused(&a))
        goto done;
    if (!model || !out) {
        fprintf(stderr, "usage: peft merge --model DIR|FILE.gguf [--adapter DIR] --out DIR|FILE.gguf\n"
                        "                  [--type same|f32|f16|bf16|q8_0|q4_0|q4_k|q6_k] [--name NAME]\n"
                        "Writes base + adapter (the base alone without --adapter) as a Hugging Face model\n"
                        "directory (F32 weights), or, when --out ends in .gguf, as a GGUF file for llama.cpp.\n"
                        "From a GGUF base: its metadata and vocabulary, unchanged tensors as stored, changed\n"
                        "ones in the base's type (same) or every matrix in --type. From a Hugging Face\n"
                        "directory: the keys and tensors llama.cpp's converter writes, the vocabulary of\n"
                        "tokenizer.model or tokenizer.json, matrices in the weights' type (same) or --type.\n"
                        "K-quants need rows of a multiple of 256 (other rows are written as Q8_0).\n");
        goto done;
    }
    size_t ol = strlen(out);
    int gguf = ol > 5 && !strcmp(out + ol - 5, ".gguf");
    peft_gguf_export_options go = PEFT_GGUF_EXPORT_OPTIONS_INIT;
    static const char *const tn[] = {"same", "f32", "f16", "bf16", "q4_0", "q8_0", "q4_k", "q6_k"};
    static const int tv[] = {PEFT_GGUF_TYPE_SAME, PEFT_GGUF_TYPE_F32,  PEFT_GGUF_TYPE_F16,  PEFT_GGUF_TYPE_BF16,
                             PEFT_GGUF_TYPE_Q4_0, PEFT_GGUF_TYPE_Q8_0, PEFT_GGUF_TYPE_Q4_K, PEFT_GGUF_TYPE_Q6_K};
    if (type) {
        int found = 0;
        for (int i = 0; i < 8; i++)
            if (!strcmp(type, tn[i]))
                go.type = tv[i], found = 1;
        if (!found || !gguf) {
            fprintf(stderr, "peft merge: --type is same, f32, f16, bf16, q8_0, q4_0, q4_k or q6_k, for a .gguf output\n");
            goto done;
        }
    }
    go.name = name;
    if ((code = peft_model_open(&m, model, NULL))) {
        rc = fail_lib("open", code);
        goto done;
    }
    if ((adapter && (code = peft_load_adapter(m, adapter))) ||
        (code = gguf ? peft_save_merged_gguf(m, out, &go) : peft_save_merged(m, out))) {
        rc = fail_lib("merge", code);
        goto done;
    }
    printf("wrote %s (%s%s%s)\n", out, model, adapter ? " + " : "", adapter ? adapter : "");
    rc = 0;
done:
    peft_model_close(&m);
    args_free(&a);
    return rc;
}

/* peft convert --model DIR --adapter DIR --out FILE.gguf */
/* peft convert --adapter SRC --out DST [--model DIR | --n-heads N [--n-kv-heads K]] [--arch A]
   [--name NAME] [--base-model NAME]: a PEFT LoRA directory to a GGUF LoRA file, or back */
int cmd_convert(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    int rc = 1, code;
    long heads, kv_heads, layers;
    peft_model *m = NULL;
    const char *model = arg_str(&a, "--model", NULL), *adapter = arg_str(&a, "--adapter", NULL);
    const char *out = arg_str(&a, "--out", NULL), *name = arg_str(&a, "--name", NULL);
    const char *arch = arg_str(&a, "--arch", NULL), *base = arg_str(&a, "--base-model", NULL);
    if (arg_long(&a, "--n-heads", 0, &heads) || arg_long(&a, "--n-kv-heads", 0, &kv_heads) ||
        arg_long(&a, "--n-layers", 0, &layers) || args_check_unused(&a))
        goto done;
    if (!adapter || !out) {
        fprintf(stderr, "usage: peft convert --adapter DIR --out FILE.gguf [--model DIR | --n-heads N [--n-kv-heads K]]\n"
                        "                    [--arch ARCH (llama)] [--name NAME]\n"
                        "       peft convert --adapter FILE.gguf --out DIR [--model DIR | --n-heads N [--n-kv-heads K]\n"
                        "                    [--n-layers L]] [--base-model NAME]\n"
                        "Converts a LoRA adapter between Hugging Face PEFT (a directory) and llama.cpp's GGUF LoRA\n"
                        "(a file; --lora), either way. The llama architecture's q/k rows are permuted per attention\n"
                        "head: give the base model's head counts, or the model itself (--model, also checking that\n"
                        "the adapter fits it). With the model's layer count a GGUF adapter on every layer gets\n"
                        "layers_to_transform null; without it, the list of its layers.\n");
        goto done;
    }
    struct stat sb;
    int from_peft = stat(adapter, &sb) == 0 && S_ISDIR(sb.st_mode);
    if (model && from_peft && !heads) { /* through the model: checked against it, as before */
        peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
        oo.n_threads = 1;
        if ((code = peft_model_open(&m, model, &oo))) {
            rc = fail_lib("open", code);
            goto done;
        }
        if ((code = peft_load_adapter(m, adapter)) || (code = peft_save_adapter_gguf(m, out, name))) {
            rc = fail_lib("convert", code);
            goto done;
        }
        printf("wrote %s\n", out);
        rc = 0;
        goto done;
    }
    peft_convert_options co = PEFT_CONVERT_OPTIONS_INIT;
    co.n_heads = (int32_t)heads;
    co.n_kv_heads = (int32_t)kv_heads;
    co.n_layers = (int32_t)layers;
    co.architecture = arch;
    co.name = name;
    co.base_model = base;
    if (model) { /* the head counts from the model's configuration */
        peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
        oo.n_threads = 1;
        peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
        if ((code = peft_model_open(&m, model, &oo)) || (code = peft_model_get_info(m, &info))) {
            rc = fail_lib("open", code);
            goto done;
        }
        co.n_heads = info.n_heads;
        co.n_kv_heads = info.n_kv_heads;
        co.n_layers = info.n_layers;
        if (!base)
            co.base_model = model;
    }
    if ((code = peft_convert_adapter(adapter, out, &co))) {
        rc = fail_lib("convert", code);
        goto done;
    }
    if (m && !from_peft && (code = peft_load_adapter(m, out))) { /* the converted adapter must fit the model */
        rc = fail_lib("the converted adapter does not fit the model", code);
        goto done;
    }
    printf("wrote %s\n", out);
    rc = 0;
done:
    peft_model_close(&m);
    args_free(&a);
    return rc;
}

/* peft combine --model DIR --adapters DIR,DIR,... --weights W,W,... --combination NAME
   [--svd-rank R] [--density D] [--majority-sign total|frequency] [--svd-clamp Q] [--seed S] --out DIR */
static const char *const combination_names[] = {"linear", "cat", "svd", "ties", "ties_svd", "dare_linear",
                                                "dare_linear_svd", "dare_ties", "dare_ties_svd", "magnitude_prune",
                                                "magnitude_prune_svd"};

int cmd_combine(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    int rc = 1, code, n = 0;
    peft_model *m = NULL;
    char *dirs = NULL;
    const char *names[64];
    double weights[64];
    char labels[64][16];
    long svd_rank, seed;
    double density, clamp;
    const char *model = arg_str(&a, "--model", NULL), *list = arg_str(&a, "--adapters", NULL);
    const char *wl = arg_str(&a, "--weights", NULL), *out = arg_str(&a, "--out", NULL);
    const char *how = arg_str(&a, "--combination", "cat"), *sign = arg_str(&a, "--majority-sign", "total");
    if (arg_long(&a, "--svd-rank", 0, &svd_rank) || arg_double(&a, "--density", 1.0, &density) ||
        arg_double(&a, "--svd-clamp", 0.0, &clamp) || arg_long(&a, "--seed", 0, &seed) || args_check_unused(&a) ||
        !how || !sign)
        goto done;
    if (!model || !list || !out) {
        fprintf(stderr,
                "usage: peft combine --model DIR --adapters DIR,DIR,... [--weights W,W,... (1 each)]\n"
                "                    [--combination NAME (cat)] [--svd-rank R] [--density D (1)]\n"
                "                    [--majority-sign total|frequency] [--svd-clamp Q] [--seed S] --out DIR\n"
                "Writes one LoRA adapter made of several, as PEFT's add_weighted_adapter: cat keeps the\n"
                "weighted sum of the deltas exactly (rank: the sum), svd truncates it (rank R, default the\n"
                "largest), linear sums the factors (one rank; weights >= 0). ties, dare_linear, dare_ties and\n"
                "magnitude_prune prune each tensor to a fraction D of its values (largest, or random and\n"
                "rescaled for dare) and, for ties, keep the values agreeing with the majority sign; alone they\n"
                "act on the factors as linear does, with _svd on the deltas as svd does.\n");
        goto done;
    }
    int comb = -1;
    for (int i = 0; i < (int)(sizeof combination_names / sizeof combination_names[0]); i++)
        if (!strcmp(how, combination_names[i]))
            comb = i;
    if (comb < 0) {
        fprintf(stderr, "peft combine: --combination must be linear, cat, svd, ties, ties_svd, dare_linear, "
                        "dare_linear_svd, dare_ties, dare_ties_svd, magnitude_prune or magnitude_prune_svd\n");
        goto done;
    }
    if (strcmp(sign, "total") && strcmp(sign, "frequency")) {
        fprintf(stderr, "peft combine: --majority-sign must be total or frequency\n");
        goto done;
    }
    peft_combine_options co = PEFT_COMBINE_OPTIONS_INIT;
    co.combination = comb;
    co.svd_rank = (int32_t)svd_rank;
    co.density = density;
    co.svd_clamp = clamp;
    co.majority_sign = strcmp(sign, "total") ? PEFT_SIGN_FREQUENCY : PEFT_SIGN_TOTAL;
    co.seed = (uint64_t)seed;
    if (!(dirs = strdup(list)))
        goto done;
    for (char *d = strtok(dirs, ","); d; d = strtok(NULL, ",")) {
        if (n == 64) {
            fprintf(stderr, "peft combine: at most 64 adapters\n");
            goto done;
        }
        names[n++] = d;
    }
    for (int i = 0; i < n; i++)
        weights[i] = 1.0;
    if (wl) {
        int k = 0;
        for (const char *p = wl; *p && k <= n;) {
            char *end;
            double v = strtod(p, &end);
            if (end == p || (*end && *end != ',')) {
                k = -1;
                break;
            }
            if (k < n)
                weights[k] = v;
            k++;
            p = *end ? end + 1 : end;
        }
        if (k != n) {
            fprintf(stderr, "peft combine: --weights needs one number per adapter (%d)\n", n);
            goto done;
        }
    }
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    if ((code = peft_model_open(&m, model, &oo))) {
        rc = fail_lib("open", code);
        goto done;
    }
    const char *ids[64];
    for (int i = 0; i < n; i++) {
        snprintf(labels[i], sizeof labels[i], "in%d", i);
        ids[i] = labels[i];
        if ((code = peft_adapter_load(m, names[i], labels[i]))) {
            rc = fail_lib(names[i], code);
            goto done;
        }
    }
    if ((code = peft_adapter_combine_ex(m, ids, weights, n, "combined", &co)) ||
        (code = peft_adapter_set(m, "combined")) || (code = peft_save_adapter(m, out, NULL))) {
        rc = fail_lib("combine", code);
        goto done;
    }
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    printf("wrote %s (%s of %d adapters, %llu parameters)\n", out, how, n, (unsigned long long)in.n_trainable);
    rc = 0;
done:
    free(dirs);
    peft_model_close(&m);
    args_free(&a);
    return rc;
}
