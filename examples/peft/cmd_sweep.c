/*
 * peft sweep: train a family of adapter configurations matched to one trainable-parameter
 * budget on the same tokens, evaluate each on held-out data (and optionally on a
 * "forgetting" set from the base model's domain), and report which gives the most.
 *
 * Every run is a child process: a crash, an out-of-memory kill or a NaN in one
 * configuration is reported and the sweep goes on, and the peak memory of each run is its
 * own. Each finished run leaves OUT/runs/NAME/seedS/{adapter/, result.txt, metrics.json,
 * log.txt}; a sweep started again with the same settings skips the finished runs.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "sweep.h"

static const char sweep_help[] =
    "usage: peft sweep --model DIR --train FILE --eval FILE --budget N[,N...] --out DIR [options]\n"
    "Trains every configuration at the same trainable-parameter budget (the LoRA rank solved per\n"
    "configuration, a few modules one rank higher so the count lands within 2%) for the same\n"
    "tokens, evaluates each on --eval and writes OUT/report.md, OUT/chart.svg, OUT/curves.svg\n"
    "and OUT/metrics.jsonl. Several budgets run every configuration at each (NAME@BUDGET).\n"
    "sweep:    --families all|none|NAME,... (all)  --config FILE (more configurations)\n"
    "          --seeds K (1) --seed S (0): seeds S..S+K-1   --last N (layers of last_n; L/4)\n"
    "          --forget FILE (loss before/after on the base model's own domain)\n"
    "          --retry-failed  --mem-limit MIB (address-space limit of each run)\n"
    "training: --steps N (100) --batch B (8) --seq T (128) --lr LR (1e-3) --schedule S (constant)\n"
    "          --warmup N (0) --grad-clip C (1.0) --holdout F (0.1; without --eval)\n"
    "          --eval-windows N (all) --eval-every N (0)\n"
    "text:     --tokenizer PATH --doc-split paragraph|line --pad --eos --cross-doc\n"
    "run:      --threads N --backend cpu|blis --json --quiet\n"
    "families: attn_qv attn_qkv attn_qkvo mlp_gate mlp_up mlp_down mlp all_linear early_half\n"
    "          late_half last_n norms ia3 dora loraplus embed_lora (embeddings at 0.1 x LR)\n"
    "          embed_lora_1x all_linear_embed vera loha lokr prompt (soft prompt, tokens\n"
    "          sampled from the vocabulary, 10 x LR; its rank column is the prompt length)\n"
    "          embed_rows (the embedding rows of the most frequent training tokens, 0.1 x LR;\n"
    "          its rank column is the number of rows)\n"
    "--config FILE: one configuration per line, NAME then `peft train` adapter flags\n"
    "(--method --targets --layers --rank --alpha --rslora --dropout --init --feedforward\n"
    "--rank-pattern --alpha-pattern --lr --lr-ratio --loraplus-ratio --embed-lr-ratio\n"
    "--vera-d-initial --weight-decay --num-virtual-tokens --prompt-init --bias);\n"
    "# starts a comment. Without --rank or --rank-pattern the rank is solved for the budget.\n";

/* The built-in families. %H is half the layers, %N the --last count. */
static const struct family {
    const char *name, *flags, *unavailable;
} families[] = {
    {"attn_qv", "--targets q,v", NULL},
    {"attn_qkv", "--targets q,k,v", NULL},
    {"attn_qkvo", "--targets q,k,v,o", NULL},
    {"mlp_gate", "--targets gate", NULL},
    {"mlp_up", "--targets up", NULL},
    {"mlp_down", "--targets down", NULL},
    {"mlp", "--targets gate,up,down", NULL},
    {"all_linear", "--targets all-linear", NULL},
    {"early_half", "--targets all-linear --layers first:%H", NULL},
    {"late_half", "--targets all-linear --layers last:%H", NULL},
    {"last_n", "--targets all-linear --layers last:%N", NULL},
    {"norms", "--method norms", NULL},
    {"ia3", "--method ia3 --targets k,v,down", NULL},
    {"dora", "--method dora --targets all-linear", NULL},
    {"loraplus", "--targets all-linear --loraplus-ratio 16", NULL},
    {"embed_lora", "--targets embed --embed-lr-ratio 0.1", NULL},
    {"embed_lora_1x", "--targets embed", NULL},
    {"all_linear_embed", "--targets all-linear,embed --embed-lr-ratio 0.1", NULL},
    {"embed_rows", "--method tokens --embed-lr-ratio 0.1", NULL},
    {"vera", "--method vera --targets all-linear --lr-ratio 10", NULL},
    {"loha", "--method loha --targets all-linear", NULL},
    {"lokr", "--method lokr --targets all-linear", NULL},
    {"prompt", "--method prompt --prompt-init vocab --lr-ratio 10", NULL},
};

typedef struct sweep {
    const char *model, *out, *backend, *schedule_name;
    long steps, batch, seq, threads, warmup, eval_every, mem_limit;
    double lr, grad_clip;
    int schedule, quiet;
    int n_layers;
    tokens train, evald, forget;
    const tokens *ev; /* evald or train (holdout) */
    size_t nw, eval_w0, eval_w1, n_forget_w;
} sweep;

/* ---- configurations ----------------------------------------------------- */

static int split_flags(sweep_cfg *c, const char *text)
{
    char *copy = strdup(text);
    size_t cap = 8;
    c->argv = malloc(cap * sizeof *c->argv);
    c->argc = 0;
    if (!copy || !c->argv) {
        free(copy);
        return -1;
    }
    for (char *tok = strtok(copy, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) {
        if (strchr(tok, '"') || strchr(tok, '\'')) {
            fprintf(stderr, "peft sweep: %s: quotes are not supported in configuration flags\n", c->name);
            free(copy);
            return -1;
        }
        if ((size_t)c->argc + 1 >= cap) {
            char **n = realloc(c->argv, 2 * cap * sizeof *n);
            if (!n) {
                free(copy);
                return -1;
            }
            c->argv = n;
            cap *= 2;
        }
        c->argv[c->argc++] = strdup(tok);
        if (!c->argv[c->argc - 1]) {
            free(copy);
            return -1;
        }
    }
    free(copy);
    return 0;
}

static void cfg_free(sweep_cfg *c)
{
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
    free(c->argv);
    free(c->rank_pattern);
    free(c->alpha_pattern);
    free(c->tok_ids);
}

static int has_flag(const sweep_cfg *c, const char *f)
{
    for (int i = 0; i < c->argc; i++)
        if (!strcmp(c->argv[i], f))
            return 1;
    return 0;
}

/* Parse a configuration's flags into its options. */
static int cfg_parse(sweep_cfg *c, double sweep_lr)
{
    cli_args a;
    if (split_flags(c, c->flags) || args_init(&a, c->argc, c->argv))
        return -1;
    double lr, ratio, vera_d;
    const char *ptext = NULL;
    int rc = -1;
    if (arg_double(&a, "--lr", sweep_lr, &lr) || arg_double(&a, "--lr-ratio", 1.0, &ratio) ||
        arg_double(&a, "--loraplus-ratio", 1.0, &c->loraplus) || arg_double(&a, "--weight-decay", 0.0, &c->wd) ||
        arg_double(&a, "--embed-lr-ratio", 1.0, &c->embed_lr) || arg_double(&a, "--vera-d-initial", 0.1, &vera_d) ||
        lora_from_args(&a, &c->lo, &c->kind, &c->io) ||
        (c->kind == KIND_PROMPT && prompt_from_args(&a, &c->po, &ptext)) || args_check_unused(&a)) {
        fprintf(stderr, "peft sweep: configuration %s: cannot use '%s'\n", c->name, c->flags);
        goto done;
    }
    if (c->kind == KIND_PROMPT && c->po.init == PEFT_PROMPT_INIT_TEXT) {
        fprintf(stderr, "peft sweep: configuration %s: --prompt-init text is not available in sweeps (random, vocab)\n",
                c->name);
        goto done;
    }
    if (has_flag(c, "--seed")) {
        fprintf(stderr, "peft sweep: configuration %s: the seeds are the sweep's (--seed, --seeds)\n", c->name);
        goto done;
    }
    c->lr = lr * ratio;
    peft_norms_options no = PEFT_NORMS_OPTIONS_INIT;
    c->no = no;
    c->no.layers = c->lo.layers;
    vera_from_lora(&c->lo, vera_d, &c->vo);
    snprintf(c->method, sizeof c->method, "%s",
             c->kind == KIND_IA3     ? "ia3"
             : c->kind == KIND_NORMS ? "norms"
             : c->kind == KIND_VERA  ? "vera"
             : c->kind == KIND_PROMPT ? "prompt"
             : c->kind == KIND_TOKENS ? "tokens"
             : c->lo.use_dora        ? "dora"
             : c->lo.variant == PEFT_VARIANT_LOHA ? "loha"
             : c->lo.variant == PEFT_VARIANT_LOKR ? "lokr"
                                     : "lora");
    rc = 0;
done:
    args_free(&a);
    return rc;
}

static int append(char **s, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int append(char **s, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*s ? *s + *len : NULL, *s ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return -1;
        if (*s && *len + (size_t)n < *cap) {
            *len += (size_t)n;
            return 0;
        }
        size_t nc = (*cap + (size_t)n + 1) * 2;
        char *p = realloc(*s, nc);
        if (!p)
            return -1;
        if (!*s)
            p[0] = '\0';
        *s = p;
        *cap = nc;
    }
}

/* The rank_pattern key of one module: "layers.L.self_attn.q_proj" (a Phi-3's "...qkv_proj" for q,
   none for k, v and up, folded into the fused modules: NULL), or "embed_tokens" (target 7) */
static const char *pattern_key(char *buf, size_t n, const char *arch, int layer, int target)
{
    uint32_t row;
    const char *name = target_row(arch, PEFT_TARGET_ALL_LINEAR | PEFT_TARGET_EMBED, target, &row);
    if (!name)
        return NULL;
    if (target == 7)
        snprintf(buf, n, "%s", name);
    else
        snprintf(buf, n, "layers.%d.%s.%s", layer, target < 4 ? "self_attn" : "mlp", name);
    return buf;
}

struct module_cost {
    int layer, target;
    uint64_t cost;
};

static int by_cost(const void *x, const void *y)
{
    const struct module_cost *a = x, *b = y;
    if (a->cost != b->cost)
        return a->cost < b->cost ? 1 : -1;
    return a->layer != b->layer ? a->layer - b->layer : a->target - b->target;
}

/*
 * Match the budget: the largest uniform rank r that fits, then modules raised to r + 1
 * (largest first, spread over the layers) while the count stays within the budget. Each
 * module's cost of one more rank is measured with the library's own count.
 */
static int solve_lora(sweep_cfg *c, const peft_model *m, const sweep *sw)
{
    int32_t r;
    int code = peft_solve_rank(&r, m, &c->lo, c->budget);
    if (code == PEFT_ERANGE) {
        c->available = 0;
        snprintf(c->note, sizeof c->note, "does not fit the budget: %s", peft_last_error());
        return 0;
    }
    if (code)
        return fail_lib(c->name, code), -1;
    int default_alpha = !has_flag(c, "--alpha");
    c->lo.rank = r;
    if (default_alpha)
        c->lo.alpha = 2.0f * (float)r;
    uint64_t n0;
    if ((code = peft_count_lora(&n0, m, &c->lo)))
        return fail_lib(c->name, code), -1;
    struct module_cost *mc = malloc(((size_t)sw->n_layers * 7 + 1) * sizeof *mc);
    size_t nm = 0;
    if (!mc)
        return -1;
    char key[96], mod[80];
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &info);
    /* every (layer, linear target), then the embeddings (layer -1, target 7) */
    for (int i = 0; i <= sw->n_layers * 7; i++) {
        int l = i < sw->n_layers * 7 ? i / 7 : -1, t = i < sw->n_layers * 7 ? i % 7 : 7;
        uint32_t row;
        if (!target_row(info.architecture, c->lo.targets, t, &row) ||
            !pattern_key(mod, sizeof mod, info.architecture, l, t))
            continue;
        snprintf(key, sizeof key, "%s=%d", mod, r + 1);
        peft_lora_options one = c->lo;
        one.rank_pattern = key;
        uint64_t n1;
        if ((code = peft_count_lora(&n1, m, &one))) {
            free(mc);
            return fail_lib(c->name, code), -1;
        }
        if (n1 > n0)
            mc[nm++] = (struct module_cost){l, t, n1 - n0};
    }
    qsort(mc, nm, sizeof *mc, by_cost);
    uint64_t left = c->budget - n0;
    char *rp = NULL, *ap = NULL;
    size_t rl = 0, rc = 0, al = 0, ac = 0;
    int bumped = 0;
    /* greedy fill from below; then the cheapest module left at rank r is raised instead of
       the ones after it when overshooting with it lands nearer the budget */
    size_t last_out = nm;
    for (size_t i = 0; i < nm; i++)
        if (mc[i].cost > left)
            last_out = i;
        else
            left -= mc[i].cost;
    uint64_t under = left;
    left = c->budget - n0;
    for (size_t i = 0; i < nm; i++) {
        if (i == last_out && mc[i].cost - left < under)
            left = 0;
        else if (mc[i].cost <= left)
            left -= mc[i].cost;
        else
            continue;
        bumped++;
        pattern_key(mod, sizeof mod, info.architecture, mc[i].layer, mc[i].target);
        if (append(&rp, &rl, &rc, "%s%s=%d", rl ? "," : "", mod, r + 1) ||
            (default_alpha && append(&ap, &al, &ac, "%s%s=%d", al ? "," : "", mod, 2 * (r + 1)))) {
            free(mc);
            free(rp);
            free(ap);
            return -1;
        }
    }
    uint64_t min_cost = nm ? mc[nm - 1].cost : 0;
    free(mc);
    c->rank_pattern = rp;
    c->alpha_pattern = ap;
    c->lo.rank_pattern = rp;
    c->lo.alpha_pattern = ap;
    c->rank = r;
    c->rank_hi = bumped ? r + 1 : r;
    if ((code = peft_count_lora(&c->params, m, &c->lo)))
        return fail_lib(c->name, code), -1;
    c->budget_err = ((double)c->params - (double)c->budget) / (double)c->budget;
    if (fabs(c->budget_err) > 0.02)
        snprintf(c->note, sizeof c->note,
                 "%+.1f%% off the budget: one more rank on the smallest module costs %llu parameters",
                 100.0 * c->budget_err, (unsigned long long)min_cost);
    return 0;
}

struct token_count {
    uint64_t n;
    int32_t id;
};

/* the most frequent first; ties by id */
static int by_frequency(const void *x, const void *y)
{
    const struct token_count *a = x, *b = y;
    if (a->n != b->n)
        return a->n < b->n ? 1 : -1;
    return a->id - b->id;
}

/* Trainable tokens: the rows a budget buys (one hidden-size row each) are those of the most
   frequent tokens of the training windows, unless the configuration names them. */
static int plan_tokens(sweep_cfg *c, const peft_model *m, const sweep *sw)
{
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &in);
    uint64_t D = (uint64_t)in.hidden_size;
    int V = in.vocab_size, n;
    if (c->lo.n_token_indices > 0) {
        n = c->lo.n_token_indices;
        if (!(c->tok_ids = malloc((size_t)n * sizeof *c->tok_ids)))
            return -1;
        memcpy(c->tok_ids, c->lo.token_indices, (size_t)n * sizeof *c->tok_ids);
    } else {
        uint64_t want = (c->budget + D / 2) / D;
        if (want < 1) {
            c->available = 0;
            snprintf(c->note, sizeof c->note, "does not fit the budget: one embedding row has %llu parameters",
                     (unsigned long long)D);
            return 0;
        }
        struct token_count *tc = calloc((size_t)V, sizeof *tc);
        n = want > (uint64_t)V ? V : (int)want;
        if (!tc || !(c->tok_ids = malloc((size_t)n * sizeof *c->tok_ids))) {
            free(tc);
            return -1;
        }
        for (int t = 0; t < V; t++)
            tc[t].id = t;
        for (size_t i = 0; i < sw->nw * (size_t)sw->seq && i < sw->train.n; i++)
            tc[sw->train.ids[i]].n++;
        qsort(tc, (size_t)V, sizeof *tc, by_frequency);
        for (int i = 0; i < n; i++)
            c->tok_ids[i] = tc[i].id;
        free(tc);
    }
    c->n_tok = n;
    int code = peft_count_tokens(&c->params, m, c->tok_ids, n);
    if (code)
        return fail_lib(c->name, code), -1;
    c->rank = c->rank_hi = n;
    c->budget_err = ((double)c->params - (double)c->budget) / (double)c->budget;
    if (fabs(c->budget_err) > 0.02)
        snprintf(c->note, sizeof c->note, "%+.1f%% off the budget: %s", 100.0 * c->budget_err,
                 c->lo.n_token_indices > 0 ? "rows set by the configuration"
                                           : "one more row costs one hidden size of parameters");
    return 0;
}

static int cfg_plan(sweep_cfg *c, const peft_model *m, const sweep *sw)
{
    int code;
    c->available = 1;
    if (c->kind == KIND_IA3 || c->kind == KIND_NORMS) {
        code = c->kind == KIND_IA3 ? peft_count_ia3(&c->params, m, &c->io) : peft_count_norms(&c->params, m, &c->no);
        if (code)
            return fail_lib(c->name, code), -1;
        c->rank = c->rank_hi = 0;
        c->budget_err = ((double)c->params - (double)c->budget) / (double)c->budget;
        if (fabs(c->budget_err) > 0.02)
            snprintf(c->note, sizeof c->note, "fixed size: %s has no rank; %llu parameters is %.1f%% of the budget",
                     c->kind == KIND_IA3 ? "IA3" : "norm tuning", (unsigned long long)c->params,
                     100.0 * (double)c->params / (double)c->budget);
    } else if (c->kind == KIND_TOKENS) {
        if ((code = plan_tokens(c, m, sw)))
            return code;
    } else if (c->kind == KIND_PROMPT) {
        /* one virtual token costs one hidden-size row: the count nearest the budget */
        peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
        peft_model_get_info(m, &in);
        uint64_t D = (uint64_t)in.hidden_size;
        if (!has_flag(c, "--num-virtual-tokens")) {
            if (c->budget < (D + 1) / 2) {
                c->available = 0;
                snprintf(c->note, sizeof c->note, "does not fit the budget: one virtual token has %llu parameters",
                         (unsigned long long)D);
                return 0;
            }
            uint64_t n = (c->budget + D / 2) / D;
            c->po.n_virtual = (int32_t)(n < 1 ? 1 : n > 65536 ? 65536 : n);
        }
        if ((code = peft_count_prompt(&c->params, m, &c->po)))
            return fail_lib(c->name, code), -1;
        c->rank = c->rank_hi = c->po.n_virtual;
        c->budget_err = ((double)c->params - (double)c->budget) / (double)c->budget;
        if (fabs(c->budget_err) > 0.02)
            snprintf(c->note, sizeof c->note, "%+.1f%% off the budget: one more virtual token costs %llu parameters",
                     100.0 * c->budget_err, (unsigned long long)D);
    } else if (c->kind == KIND_VERA) {
        /* lambda_d is the rank's share: count(r) = fixed + per * r; the nearest rank */
        uint64_t n1, n2;
        if (!has_flag(c, "--rank")) {
            c->vo.rank = 1;
            if ((code = peft_count_vera(&n1, m, &c->vo)))
                return fail_lib(c->name, code), -1;
            c->vo.rank = 2;
            if ((code = peft_count_vera(&n2, m, &c->vo)))
                return fail_lib(c->name, code), -1;
            uint64_t per = n2 - n1, fixed = n1 - per;
            if (c->budget < n1) {
                c->available = 0;
                snprintf(c->note, sizeof c->note, "does not fit the budget: VeRA at rank 1 has %llu parameters",
                         (unsigned long long)n1);
                return 0;
            }
            uint64_t r = (c->budget - fixed) / per;
            if (c->budget - (fixed + per * r) > fixed + per * (r + 1) - c->budget)
                r++;
            c->vo.rank = (int32_t)(r > 65536 ? 65536 : r);
        }
        if ((code = peft_count_vera(&c->params, m, &c->vo)))
            return fail_lib(c->name, code), -1;
        c->rank = c->rank_hi = c->vo.rank;
        c->budget_err = ((double)c->params - (double)c->budget) / (double)c->budget;
        if (fabs(c->budget_err) > 0.02)
            snprintf(c->note, sizeof c->note, "%+.1f%% off the budget: %s", 100.0 * c->budget_err,
                     has_flag(c, "--rank") ? "rank set by the configuration" : "one more rank costs one parameter per module");
    } else if (c->lo.variant == PEFT_VARIANT_LOKR && !has_flag(c, "--rank") && !c->lo.rank_pattern) {
        /* LoKr's size grows with the rank until its factors are full, then stops: the rank
           whose count is nearest the budget, searched upward until the size saturates */
        uint64_t best = 0, prev = 0, n;
        int32_t best_r = 1;
        for (int32_t r = 1; r <= 65536; r++) {
            c->lo.rank = r;
            if ((code = peft_count_lora(&n, m, &c->lo)))
                return fail_lib(c->name, code), -1;
            double e = fabs((double)n - (double)c->budget), eb = fabs((double)best - (double)c->budget);
            if (r == 1 || e < eb) {
                best = n;
                best_r = r;
            }
            if ((r > 1 && n == prev) || n > c->budget)
                break;
            prev = n;
        }
        c->lo.rank = best_r;
        if (!has_flag(c, "--alpha"))
            c->lo.alpha = 2.0f * (float)best_r;
        c->params = best;
        c->rank = c->rank_hi = best_r;
        c->budget_err = ((double)c->params - (double)c->budget) / (double)c->budget;
        if (fabs(c->budget_err) > 0.02)
            snprintf(c->note, sizeof c->note, "%+.1f%% off the budget: LoKr %s", 100.0 * c->budget_err,
                     best < c->budget  ? "saturates below it (all its Kronecker factors full)"
                     : best_r == 1     ? "already exceeds it at rank 1"
                                       : "steps past it from one rank to the next");
    } else if (has_flag(c, "--rank") || c->lo.rank_pattern) {
        if ((code = peft_count_lora(&c->params, m, &c->lo)))
            return fail_lib(c->name, code), -1;
        c->rank = c->rank_hi = c->lo.rank;
        c->budget_err = ((double)c->params - (double)c->budget) / (double)c->budget;
        if (fabs(c->budget_err) > 0.02)
            snprintf(c->note, sizeof c->note, "rank set by the configuration: %llu parameters is %.1f%% of the budget",
                     (unsigned long long)c->params, 100.0 * (double)c->params / (double)c->budget);
    } else if (solve_lora(c, m, sw)) {
        return -1;
    }
    char tb[64];
    targets_string(c->kind == KIND_IA3 ? c->io.targets : c->lo.targets, tb, sizeof tb);
    if (c->kind == KIND_TOKENS) { /* the "rank" column holds the number of rows */
        snprintf(c->plan, sizeof c->plan, "tokens rows=%d (ids %d, %d, ...) params=%llu lr=%g embed_lr=%g wd=%g",
                 c->n_tok, c->tok_ids[0], c->n_tok > 1 ? c->tok_ids[1] : -1, (unsigned long long)c->params, c->lr,
                 c->embed_lr, c->wd);
        return 0;
    }
    if (c->kind == KIND_PROMPT) { /* the "rank" column holds the number of virtual tokens */
        snprintf(c->plan, sizeof c->plan, "prompt virtual_tokens=%d init=%s params=%llu lr=%g wd=%g", c->po.n_virtual,
                 c->po.init == PEFT_PROMPT_INIT_SAMPLE_VOCAB ? "vocab" : "random", (unsigned long long)c->params, c->lr,
                 c->wd);
        return 0;
    }
    snprintf(c->plan, sizeof c->plan,
             "%s targets=%s layers=%s rank=%d..%d alpha=%g params=%llu lr=%g loraplus=%g wd=%g embed_lr=%g",
             c->method, c->kind == KIND_NORMS ? "norms" : tb, c->lo.layers ? c->lo.layers : "all", c->rank,
             c->rank_hi, c->lo.alpha, (unsigned long long)c->params, c->lr, c->loraplus, c->wd, c->embed_lr);
    return 0;
}

static int valid_name(const char *s)
{
    if (!*s || strlen(s) >= 48)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return 0;
    return 1;
}

static int add_cfg(sweep_cfg **cfg, int *n, const char *family, uint64_t budget, int several, const char *flags,
                   const char *unavailable, int user)
{
    char name[96];
    if (several)
        snprintf(name, sizeof name, "%s@%llu", family, (unsigned long long)budget);
    else
        snprintf(name, sizeof name, "%s", family);
    for (int i = 0; i < *n; i++)
        if (!strcmp((*cfg)[i].name, name)) {
            fprintf(stderr, "peft sweep: configuration '%s' appears twice\n", name);
            return -1;
        }
    sweep_cfg *p = realloc(*cfg, (size_t)(*n + 1) * sizeof *p);
    if (!p)
        return -1;
    *cfg = p;
    sweep_cfg *c = &p[(*n)++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->family, sizeof c->family, "%s", family);
    c->budget = budget;
    snprintf(c->flags, sizeof c->flags, "%s", flags);
    c->user = user;
    c->available = unavailable == NULL;
    if (unavailable)
        snprintf(c->note, sizeof c->note, "not measured: %s", unavailable);
    if (strlen(flags) >= sizeof c->flags) {
        fprintf(stderr, "peft sweep: configuration %s: flags too long\n", name);
        return -1;
    }
    return 0;
}

static int load_config_file(sweep_cfg **cfg, int *n, const char *path, const uint64_t *budgets, int n_budgets)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "peft sweep: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int lineno = 0, rc = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            fprintf(stderr, "peft sweep: %s:%d: line too long\n", path, lineno);
            rc = -1;
            break;
        }
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            continue;
        char *name = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (*p)
            *p++ = '\0';
        if (!valid_name(name)) {
            fprintf(stderr, "peft sweep: %s:%d: '%s' is not a configuration name (letters, digits, _ - .)\n", path,
                    lineno, name);
            rc = -1;
            break;
        }
        for (int b = 0; b < n_budgets && !rc; b++)
            rc = add_cfg(cfg, n, name, budgets[b], n_budgets > 1, p, NULL, 1);
    }
    fclose(f);
    return rc;
}

static int expand_family(char *out, size_t cap, const char *flags, int half, int last)
{
    size_t o = 0;
    for (const char *p = flags; *p; p++) {
        int v = -1;
        if (p[0] == '%' && p[1] == 'H')
            v = half;
        else if (p[0] == '%' && p[1] == 'N')
            v = last;
        int n = v >= 0 ? snprintf(out + o, cap - o, "%d", v) : snprintf(out + o, cap - o, "%c", *p);
        if (n < 0 || (size_t)n >= cap - o)
            return -1;
        o += (size_t)n;
        if (v >= 0)
            p++;
    }
    return 0;
}

/* ---- files ------------------------------------------------------------------ */

int write_file_atomic(const char *path, const char *text, size_t len)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}



/* result.txt: "key value" lines, written by the run (or by the sweep for a run that died). */
static int write_result(const char *dir, const char *plan, const run_result *r)
{
    char *s = NULL;
    size_t len = 0, cap = 0;
    int e = append(&s, &len, &cap,
                   "plan %s\nstatus %s\nerror %s\nparams %llu\ntokens %llu\nseconds %.6f\ntokens_per_s %.3f\n"
                   "peak_mib %.3f\neval_loss_after %.9g\nforget_loss_after %.9g\ntrain_loss",
                   plan, r->status == 0 ? "ok" : "failed", r->error, (unsigned long long)r->params,
                   (unsigned long long)r->tokens, r->seconds, r->tps, r->peak_mib, r->eval_after, r->forget_after);
    for (int i = 0; i < r->n_train && !e; i++)
        e = append(&s, &len, &cap, " %.6g", r->train_loss[i]);
    e = e || append(&s, &len, &cap, "\neval_curve");
    for (int i = 0; i < r->n_eval && !e; i++)
        e = append(&s, &len, &cap, " %.0f:%.6g", r->eval_step[i], r->eval_loss[i]);
    e = e || append(&s, &len, &cap, "\n");
    char path[4400];
    snprintf(path, sizeof path, "%s/result.txt", dir);
    e = e || write_file_atomic(path, s, len);
    free(s);
    return e ? -1 : 0;
}

static void result_free(run_result *r)
{
    free(r->train_loss);
    free(r->eval_step);
    free(r->eval_loss);
    r->train_loss = r->eval_step = r->eval_loss = NULL;
    r->n_train = r->n_eval = 0;
}

static double num(const char *s)
{
    return strncmp(s, "nan", 3) == 0 || strncmp(s, "-nan", 4) == 0 ? NAN : strtod(s, NULL);
}

/* Read a run's result.txt; 1 when there is none or it belongs to another plan. */
static int read_result(const char *dir, const char *plan, run_result *r)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/result.txt", dir);
    char *text = read_text(path);
    if (!text)
        return 1;
    memset(r, 0, sizeof *r);
    r->status = -1;
    int plan_ok = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *v = strchr(line, ' ');
        v = v ? (*v = '\0', v + 1) : line + strlen(line);
        if (!strcmp(line, "plan"))
            plan_ok = !strcmp(v, plan);
        else if (!strcmp(line, "status"))
            r->status = !strcmp(v, "ok") ? 0 : 1;
        else if (!strcmp(line, "error"))
            snprintf(r->error, sizeof r->error, "%s", v);
        else if (!strcmp(line, "params"))
            r->params = strtoull(v, NULL, 10);
        else if (!strcmp(line, "tokens"))
            r->tokens = strtoull(v, NULL, 10);
        else if (!strcmp(line, "seconds"))
            r->seconds = num(v);
        else if (!strcmp(line, "tokens_per_s"))
            r->tps = num(v);
        else if (!strcmp(line, "peak_mib"))
            r->peak_mib = num(v);
        else if (!strcmp(line, "eval_loss_after"))
            r->eval_after = num(v);
        else if (!strcmp(line, "forget_loss_after"))
            r->forget_after = num(v);
        else if (!strcmp(line, "train_loss") || !strcmp(line, "eval_curve")) {
            int is_train = line[0] == 't';
            size_t n = 0;
            for (const char *p = v; *p; p++)
                n += *p == ' ';
            n++;
            double *a = calloc(n, sizeof *a), *b = is_train ? NULL : calloc(n, sizeof *b);
            if (!a || (!is_train && !b)) {
                free(a);
                free(b);
                break;
            }
            int k = 0;
            for (char *p = v; *p;) {
                while (*p == ' ')
                    p++;
                if (!*p)
                    break;
                char *end;
                if (is_train) {
                    a[k++] = num(p);
                    end = strchr(p, ' ');
                } else {
                    a[k] = strtod(p, &end);
                    if (*end == ':')
                        b[k++] = num(end + 1);
                    end = strchr(p, ' ');
                }
                if (!end)
                    break;
                p = end;
            }
            if (is_train) {
                r->train_loss = a;
                r->n_train = k;
            } else {
                r->eval_step = a;
                r->eval_loss = b;
                r->n_eval = k;
            }
        }
    }
    free(text);
    if (!plan_ok || r->status < 0) {
        result_free(r);
        return 1;
    }
    return 0;
}

void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* ---- one run (in a child process) ------------------------------------------ */

static int child_train(const sweep *sw, const sweep_cfg *c, uint64_t seed, const char *dir, run_result *r)
{
    peft_model *m = NULL;
    int32_t *buf = NULL, *lbuf = NULL, *dbuf = NULL;
    sampler smp = {0};
    int code, rc = -1;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = (int32_t)sw->threads;
    oo.backend = sw->backend;
    peft_lora_options lo = c->lo;
    lo.seed = seed;
    if ((code = peft_model_open(&m, sw->model, &oo))) {
        snprintf(r->error, sizeof r->error, "open: %s", peft_last_error());
        goto done;
    }
    peft_vera_options vo = c->vo;
    vo.seed = seed;
    peft_prompt_options po = c->po;
    po.seed = seed;
    code = c->kind == KIND_TOKENS  ? peft_attach_tokens(m, c->tok_ids, c->n_tok, &r->params)
           : c->kind == KIND_PROMPT ? peft_attach_prompt(m, &po, &r->params)
           : c->kind == KIND_IA3   ? peft_attach_ia3(m, &c->io, &r->params)
           : c->kind == KIND_NORMS ? peft_attach_norms(m, &c->no, &r->params)
           : c->kind == KIND_VERA  ? peft_attach_vera(m, &vo, &r->params)
                                   : peft_attach_lora(m, &lo, &r->params);
    if (code) {
        snprintf(r->error, sizeof r->error, "attach: %s", peft_last_error());
        goto done;
    }
    const struct {
        int key;
        double v;
    } opts[] = {{PEFT_OPT_LR, c->lr},
                {PEFT_OPT_WEIGHT_DECAY, c->wd},
                {PEFT_OPT_GRAD_CLIP, sw->grad_clip},
                {PEFT_OPT_WARMUP_STEPS, (double)sw->warmup},
                {PEFT_OPT_TOTAL_STEPS, (double)sw->steps},
                {PEFT_OPT_SCHEDULE, sw->schedule},
                {PEFT_OPT_LORAPLUS_RATIO, c->loraplus},
                {PEFT_OPT_EMBED_LR_RATIO, c->embed_lr}};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        if ((code = peft_opt_set(m, opts[i].key, opts[i].v))) {
            snprintf(r->error, sizeof r->error, "optimizer: %s", peft_last_error());
            goto done;
        }
    size_t n = (size_t)sw->batch * (size_t)sw->seq;
    buf = malloc(n * sizeof *buf);
    lbuf = malloc(n * sizeof *lbuf);
    dbuf = malloc(n * sizeof *dbuf);
    r->train_loss = malloc((size_t)sw->steps * sizeof *r->train_loss);
    long n_evals = sw->eval_every > 0 ? sw->steps / sw->eval_every + 1 : 1;
    r->eval_step = malloc((size_t)n_evals * sizeof *r->eval_step);
    r->eval_loss = malloc((size_t)n_evals * sizeof *r->eval_loss);
    if (!buf || !lbuf || !dbuf || !r->train_loss || !r->eval_step || !r->eval_loss ||
        sampler_init(&smp, sw->nw, seed)) {
        snprintf(r->error, sizeof r->error, "out of memory");
        goto done;
    }
    double train_s = 0;
    long bad = 0;
    uint64_t ecount;
    for (long step = 0; step < sw->steps; step++) {
        double t0 = now_seconds();
        sampler_fill(&smp, &sw->train, (int)sw->seq, (int)sw->batch, buf, lbuf, dbuf);
        peft_batch pb = PEFT_BATCH_INIT;
        pb.tokens = buf;
        pb.labels = sw->train.labels ? lbuf : NULL;
        pb.seq_ids = sw->train.docs ? dbuf : NULL;
        pb.n_seq = (int32_t)sw->batch;
        pb.seq_len = (int32_t)sw->seq;
        peft_step_result sr = PEFT_STEP_RESULT_INIT;
        code = peft_step(m, &pb, &sr);
        train_s += now_seconds() - t0;
        r->tokens += n;
        r->train_loss[r->n_train++] = code ? NAN : sr.loss;
        if (code == PEFT_ENUMERIC) {
            fprintf(stderr, "step %ld: %s; skipped\n", step + 1, peft_last_error());
            if (++bad >= 5) {
                snprintf(r->error, sizeof r->error, "5 consecutive non-finite steps (last at step %ld: %s)", step + 1,
                         peft_last_error());
                goto done;
            }
            continue;
        }
        if (code) {
            snprintf(r->error, sizeof r->error, "step %ld: %s", step + 1, peft_last_error());
            goto done;
        }
        bad = 0;
        fprintf(stderr, "step %ld/%ld loss %.4f lr %.2e gnorm %.3f\n", step + 1, sw->steps, sr.loss, sr.lr,
                sr.grad_norm);
        if (sw->eval_every > 0 && (step + 1) % sw->eval_every == 0 && step + 1 < sw->steps) {
            double el;
            if ((code = eval_windows(m, sw->ev, (int)sw->seq, (int)sw->batch, sw->eval_w0, sw->eval_w1, &el, &ecount))) {
                snprintf(r->error, sizeof r->error, "eval: %s", peft_last_error());
                goto done;
            }
            r->eval_step[r->n_eval] = (double)(step + 1);
            r->eval_loss[r->n_eval++] = el;
            fprintf(stderr, "eval at step %ld: %.4f\n", step + 1, el);
        }
    }
    r->seconds = train_s;
    r->tps = train_s > 0 ? (double)r->tokens / train_s : 0;
    if ((code = eval_windows(m, sw->ev, (int)sw->seq, (int)sw->batch, sw->eval_w0, sw->eval_w1, &r->eval_after,
                             &ecount))) {
        snprintf(r->error, sizeof r->error, "eval: %s", peft_last_error());
        goto done;
    }
    r->eval_step[r->n_eval] = (double)sw->steps;
    r->eval_loss[r->n_eval++] = r->eval_after;
    if (!isfinite(r->eval_after)) {
        snprintf(r->error, sizeof r->error, "the eval loss after training is not finite");
        goto done;
    }
    r->forget_after = NAN;
    if (sw->n_forget_w &&
        (code = eval_windows(m, &sw->forget, (int)sw->seq, (int)sw->batch, 0, sw->n_forget_w, &r->forget_after, &ecount))) {
        snprintf(r->error, sizeof r->error, "forget eval: %s", peft_last_error());
        goto done;
    }
    char adir[4400];
    snprintf(adir, sizeof adir, "%s/adapter", dir);
    if ((code = peft_save_adapter(m, adir, NULL))) {
        snprintf(r->error, sizeof r->error, "save: %s", peft_last_error());
        goto done;
    }
    rc = 0;
done:
    sampler_free(&smp);
    free(buf);
    free(lbuf);
    free(dbuf);
    peft_model_close(&m);
    return rc;
}

static int child_main(const sweep *sw, const sweep_cfg *c, uint64_t seed, const char *dir)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/log.txt", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    if (sw->mem_limit > 0) {
        struct rlimit rl = {(rlim_t)sw->mem_limit << 20, (rlim_t)sw->mem_limit << 20};
        setrlimit(RLIMIT_AS, &rl);
    }
    fprintf(stderr, "configuration %s seed %llu: %s\n", c->name, (unsigned long long)seed, c->plan);
    run_result r = {0};
    r.forget_after = NAN;
    r.eval_after = NAN;
    r.status = child_train(sw, c, seed, dir, &r) ? 1 : 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    r.peak_mib = (double)ru.ru_maxrss / 1024.0;
    if (r.status)
        fprintf(stderr, "failed: %s\n", r.error);
    int e = write_result(dir, c->plan, &r);
    result_free(&r);
    fflush(NULL);
    return e ? 2 : r.status ? 3 : 0;
}

/* The last line of a run's log, for a run that died without a word. */
static void last_log_line(const char *dir, char *out, size_t cap)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/log.txt", dir);
    char *t = read_text(path);
    out[0] = '\0';
    if (!t)
        return;
    size_t n = strlen(t);
    while (n && (t[n - 1] == '\n' || t[n - 1] == '\r'))
        t[--n] = '\0';
    char *nl = strrchr(t, '\n');
    snprintf(out, cap, "%s", nl ? nl + 1 : t);
    free(t);
}

/* An interrupted sweep takes its running child with it; the run is redone on resume. */
static volatile sig_atomic_t running_child;

static void on_signal(int sig)
{
    if (running_child > 0)
        kill((pid_t)running_child, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static pid_t spawn(void)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    } else if (pid > 0) {
        running_child = pid;
    } else {
        fprintf(stderr, "peft sweep: fork: %s\n", strerror(errno));
    }
    return pid;
}

static int run_one(const sweep *sw, const sweep_cfg *c, uint64_t seed, const char *dir, run_result *r)
{
    pid_t pid = spawn();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(child_main(sw, c, seed, dir));
    int st;
    struct rusage ru;
    pid_t w;
    while ((w = wait4(pid, &st, 0, &ru)) < 0 && errno == EINTR)
        ;
    running_child = 0;
    if (w < 0) {
        fprintf(stderr, "peft sweep: wait: %s\n", strerror(errno));
        return -1;
    }
    if (read_result(dir, c->plan, r) == 0)
        return 0;
    /* the run died before writing its result: record why */
    memset(r, 0, sizeof *r);
    r->status = 1;
    r->eval_after = r->forget_after = NAN;
    r->peak_mib = (double)ru.ru_maxrss / 1024.0;
    char last[200];
    last_log_line(dir, last, sizeof last);
    if (WIFSIGNALED(st))
        snprintf(r->error, sizeof r->error, "killed by signal %d%s%s%s", WTERMSIG(st),
                 WTERMSIG(st) == SIGKILL ? " (out of memory?)" : "", *last ? ": " : "", last);
    else
        snprintf(r->error, sizeof r->error, "exited with status %d%s%s", WEXITSTATUS(st), *last ? ": " : "", last);
    for (char *p = r->error; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return write_result(dir, c->plan, r);
}

/* The base model's losses, evaluated once per sweep directory (in a child, like the runs). */
static int base_losses(const sweep *sw, double *eval_loss, double *forget_loss, uint64_t *eval_tokens)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/base.txt", sw->out);
    char *t = read_text(path);
    if (t) {
        unsigned long long et = 0;
        char e1[64], e2[64];
        int ok = sscanf(t, "eval_loss %63s\nforget_loss %63s\neval_tokens %llu", e1, e2, &et) == 3;
        free(t);
        if (ok) {
            *eval_loss = num(e1);
            *forget_loss = num(e2);
            *eval_tokens = et;
            if (isfinite(*eval_loss))
                return 0;
        }
    }
    pid_t pid = spawn();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        peft_model *m = NULL;
        peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
        oo.n_threads = (int32_t)sw->threads;
        oo.backend = sw->backend;
        double el = NAN, fl = NAN;
        uint64_t n = 0, fn;
        int code = peft_model_open(&m, sw->model, &oo);
        if (!code)
            code = eval_windows(m, sw->ev, (int)sw->seq, (int)sw->batch, sw->eval_w0, sw->eval_w1, &el, &n);
        if (!code && sw->n_forget_w)
            code = eval_windows(m, &sw->forget, (int)sw->seq, (int)sw->batch, 0, sw->n_forget_w, &fl, &fn);
        if (code) {
            fail_lib("base model", code);
            _exit(1);
        }
        peft_model_close(&m);
        char text[256];
        int len = snprintf(text, sizeof text, "eval_loss %.9g\nforget_loss %.9g\neval_tokens %llu\n", el, fl,
                           (unsigned long long)n);
        _exit(write_file_atomic(path, text, (size_t)len) ? 1 : 0);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    running_child = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "peft sweep: evaluating the base model failed\n");
        return -1;
    }
    return base_losses(sw, eval_loss, forget_loss, eval_tokens);
}

/* ---- the command ------------------------------------------------------------- */

int cmd_sweep(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    if (arg_flag(&a, "--help")) {
        fputs(sweep_help, stdout);
        args_free(&a);
        return 0;
    }
    int rc = 1, code, n_cfg = 0, lock_fd = -1;
    sweep sw;
    memset(&sw, 0, sizeof sw);
    sweep_cfg *cfg = NULL;
    run_result *runs = NULL;
    peft_model *m = NULL;
    peft_tokenizer *tok = NULL;
    data_options dopt;
    const char *train = arg_str(&a, "--train", NULL), *eval = arg_str(&a, "--eval", NULL);
    const char *forget = arg_str(&a, "--forget", NULL), *config = arg_str(&a, "--config", NULL);
    const char *fam = arg_str(&a, "--families", "all");
    sw.model = arg_str(&a, "--model", NULL);
    sw.out = arg_str(&a, "--out", NULL);
    sw.backend = arg_str(&a, "--backend", NULL);
    sw.schedule_name = arg_str(&a, "--schedule", "constant");
    int json = arg_flag(&a, "--json"), retry = arg_flag(&a, "--retry-failed");
    sw.quiet = arg_flag(&a, "--quiet");
    long seeds = 0, seed0 = 0, last = 0, eval_windows_max = 0;
    double holdout;
    const char *budget_arg = arg_str(&a, "--budget", NULL);
    uint64_t budgets[16];
    int n_budgets = 0;
    for (const char *p = budget_arg; p && *p;) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || end == p || v == 0 || v > (1ull << 50) || (*end && *end != ',') || n_budgets == 16) {
            fprintf(stderr, "peft sweep: --budget: expected up to 16 positive integers separated by commas\n");
            goto done;
        }
        for (int b = 0; b < n_budgets; b++)
            if (budgets[b] == v) {
                fprintf(stderr, "peft sweep: --budget: %llu appears twice\n", v);
                goto done;
            }
        budgets[n_budgets++] = v;
        p = *end ? end + 1 : end;
    }
    if (arg_long(&a, "--steps", 100, &sw.steps) ||
        arg_long(&a, "--batch", 8, &sw.batch) || arg_long(&a, "--seq", 128, &sw.seq) ||
        arg_double(&a, "--lr", 1e-3, &sw.lr) || arg_long(&a, "--warmup", 0, &sw.warmup) ||
        arg_double(&a, "--grad-clip", 1.0, &sw.grad_clip) || arg_double(&a, "--holdout", 0.1, &holdout) ||
        arg_long(&a, "--eval-windows", 0, &eval_windows_max) || arg_long(&a, "--eval-every", 0, &sw.eval_every) ||
        arg_long(&a, "--seeds", 1, &seeds) || arg_long(&a, "--seed", 0, &seed0) || arg_long(&a, "--last", 0, &last) ||
        arg_long(&a, "--threads", 0, &sw.threads) || arg_long(&a, "--mem-limit", 0, &sw.mem_limit) || !fam ||
        !sw.schedule_name)
        goto done;
    if (!sw.model || !train || !sw.out || n_budgets == 0) {
        fputs(sweep_help, stderr);
        goto done;
    }
    if (sw.steps < 1 || sw.batch < 1 || sw.seq < 2 || seeds < 1 || seeds > 1000 || holdout <= 0 || holdout >= 1 ||
        !(sw.lr > 0)) {
        fprintf(stderr, "peft sweep: need --steps >= 1, --batch >= 1, --seq >= 2, 1 <= --seeds <= 1000, "
                        "0 < --holdout < 1, --lr > 0\n");
        goto done;
    }
    if (!strcmp(sw.schedule_name, "constant"))
        sw.schedule = PEFT_SCHEDULE_CONSTANT;
    else if (!strcmp(sw.schedule_name, "linear"))
        sw.schedule = PEFT_SCHEDULE_LINEAR;
    else if (!strcmp(sw.schedule_name, "cosine"))
        sw.schedule = PEFT_SCHEDULE_COSINE;
    else {
        fprintf(stderr, "peft sweep: --schedule must be constant, linear or cosine\n");
        goto done;
    }

    /* the model, for counting; the runs open their own */
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = 1;
    if ((code = peft_model_open(&m, sw.model, &oo))) {
        rc = fail_lib("open", code);
        goto done;
    }
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &info);
    sw.n_layers = info.n_layers;
    if (data_from_args(&a, sw.model, info.vocab_size, (int)sw.seq, &dopt, &tok) || args_check_unused(&a) ||
        data_load(&sw.train, train, &dopt))
        goto done;
    sw.nw = sw.train.n / (size_t)sw.seq;
    if (eval) {
        if (data_load(&sw.evald, eval, &dopt))
            goto done;
        sw.ev = &sw.evald;
        sw.eval_w0 = 0;
        sw.eval_w1 = sw.evald.n / (size_t)sw.seq;
    } else {
        size_t ne = (size_t)(holdout * (double)sw.nw);
        if (ne == 0)
            ne = 1;
        if (ne >= sw.nw) {
            fprintf(stderr, "peft sweep: %s is too short to hold out evaluation windows\n", train);
            goto done;
        }
        sw.nw -= ne;
        sw.ev = &sw.train;
        sw.eval_w0 = sw.nw;
        sw.eval_w1 = sw.nw + ne;
    }
    if (eval_windows_max > 0 && sw.eval_w1 - sw.eval_w0 > (size_t)eval_windows_max)
        sw.eval_w1 = sw.eval_w0 + (size_t)eval_windows_max;
    if (sw.nw == 0 || sw.eval_w1 == sw.eval_w0) {
        fprintf(stderr, "peft sweep: need at least one window of %ld tokens to train on and one to evaluate\n",
                sw.seq);
        goto done;
    }
    if ((size_t)sw.batch > sw.nw)
        sw.batch = (long)sw.nw;
    if (forget) {
        if (data_load(&sw.forget, forget, &dopt))
            goto done;
        sw.n_forget_w = sw.forget.n / (size_t)sw.seq;
        if (eval_windows_max > 0 && sw.n_forget_w > (size_t)eval_windows_max)
            sw.n_forget_w = (size_t)eval_windows_max;
        if (!sw.n_forget_w) {
            fprintf(stderr, "peft sweep: %s has fewer than %ld tokens\n", forget, sw.seq);
            goto done;
        }
    }

    /* the configurations */
    int half = info.n_layers / 2 > 0 ? info.n_layers / 2 : 1;
    if (last <= 0)
        last = info.n_layers / 4 > 0 ? info.n_layers / 4 : 1;
    if (last > info.n_layers)
        last = info.n_layers;
    int all = !strcmp(fam, "all");
    if (!all && strcmp(fam, "none") != 0) {
        char *copy = strdup(fam);
        for (char *f = copy ? strtok(copy, ",") : NULL; f; f = strtok(NULL, ",")) {
            size_t k = 0;
            while (k < sizeof families / sizeof families[0] && strcmp(families[k].name, f))
                k++;
            if (k == sizeof families / sizeof families[0]) {
                fprintf(stderr, "peft sweep: --families: unknown family '%s' (see peft sweep --help)\n", f);
                free(copy);
                goto done;
            }
        }
        free(copy);
    }
    for (size_t k = 0; k < sizeof families / sizeof families[0]; k++) {
        int chosen = all;
        if (!all) {
            size_t nl = strlen(families[k].name);
            for (const char *p = strstr(fam, families[k].name); p && !chosen; p = strstr(p + 1, families[k].name))
                chosen = (p == fam || p[-1] == ',') && (p[nl] == ',' || p[nl] == '\0');
        }
        if (!chosen)
            continue;
        char flags[512];
        if (expand_family(flags, sizeof flags, families[k].flags, half, (int)last))
            goto done;
        for (int b = 0; b < n_budgets; b++)
            if (add_cfg(&cfg, &n_cfg, families[k].name, budgets[b], n_budgets > 1, flags, families[k].unavailable, 0))
                goto done;
    }
    if (config && load_config_file(&cfg, &n_cfg, config, budgets, n_budgets))
        goto done;
    if (n_cfg == 0) {
        fprintf(stderr, "peft sweep: no configurations (--families none and no --config)\n");
        goto done;
    }
    for (int i = 0; i < n_cfg; i++) {
        if (!cfg[i].available)
            continue;
        if (cfg_parse(&cfg[i], sw.lr) || cfg_plan(&cfg[i], m, &sw))
            goto done;
    }
    peft_model_close(&m);

    /* the sweep directory: settings must match a sweep already there */
    char path[4200], settings[4096];
    if (make_dirs(sw.out)) {
        fprintf(stderr, "peft sweep: cannot create %s: %s\n", sw.out, strerror(errno));
        goto done;
    }
    /* one sweep at a time in a directory */
    snprintf(path, sizeof path, "%s/.lock", sw.out);
    lock_fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "peft sweep: %s: %s\n", sw.out,
                lock_fd < 0 ? strerror(errno) : "another sweep is running in this directory");
        goto done;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int sl = snprintf(settings, sizeof settings,
                      "model %s\ntrain %s\neval %s\nholdout %g\nforget %s\nbudget %s\nsteps %ld\nbatch %ld\nseq %ld\n"
                      "lr %g\nschedule %s\nwarmup %ld\ngrad_clip %g\neval_windows %zu\nforget_windows %zu\n",
                      sw.model, train, eval ? eval : "-", eval ? 0.0 : holdout, forget ? forget : "-",
                      budget_arg, sw.steps, sw.batch, sw.seq, sw.lr, sw.schedule_name, sw.warmup,
                      sw.grad_clip, sw.eval_w1 - sw.eval_w0, sw.n_forget_w);
    snprintf(path, sizeof path, "%s/sweep.txt", sw.out);
    char *old = read_text(path);
    if (old && strcmp(old, settings) != 0) {
        fprintf(stderr, "peft sweep: %s holds a sweep with other settings (%s); use another --out\n", sw.out, path);
        free(old);
        goto done;
    }
    free(old);
    if (write_file_atomic(path, settings, (size_t)sl)) {
        fprintf(stderr, "peft sweep: cannot write %s: %s\n", path, strerror(errno));
        goto done;
    }
    double base_eval, base_forget;
    uint64_t eval_tokens;
    if (base_losses(&sw, &base_eval, &base_forget, &eval_tokens))
        goto done;
    if (!sw.quiet) {
        fprintf(stderr, "peft sweep: budget %s, %d configurations x %ld seeds, %ld steps x %ld x %ld tokens; "
                        "base model: eval loss %.4f",
                budget_arg, n_cfg, seeds, sw.steps, sw.batch, sw.seq, base_eval);
        if (forget)
            fprintf(stderr, ", forgetting-set loss %.4f", base_forget);
        fputc('\n', stderr);
    }

    runs = calloc((size_t)n_cfg * (size_t)seeds, sizeof *runs);
    if (!runs)
        goto done;
    int total = 0, done_n = 0;
    for (int i = 0; i < n_cfg; i++)
        total += cfg[i].available ? (int)seeds : 0;
    for (int i = 0; i < n_cfg; i++) {
        sweep_cfg *c = &cfg[i];
        for (long s = 0; s < seeds; s++) {
            run_result *r = &runs[(size_t)i * (size_t)seeds + (size_t)s];
            r->status = -1;
            if (!c->available)
                continue;
            done_n++;
            uint64_t seed = (uint64_t)(seed0 + s);
            char dir[4200];
            snprintf(dir, sizeof dir, "%s/runs/%s/seed%llu", sw.out, c->name, (unsigned long long)seed);
            int have = read_result(dir, c->plan, r) == 0;
            if (have && r->status != 0 && retry) {
                result_free(r);
                have = 0;
            }
            if (have) {
                if (!sw.quiet)
                    fprintf(stderr, "[%d/%d] %-12s seed %llu: done before (%s)\n", done_n, total, c->name,
                            (unsigned long long)seed, r->status ? "failed" : "kept");
                continue;
            }
            if (make_dirs(dir)) {
                fprintf(stderr, "peft sweep: cannot create %s: %s\n", dir, strerror(errno));
                goto done;
            }
            if (!sw.quiet)
                fprintf(stderr, "[%d/%d] %-12s seed %llu: %s, %llu parameters, rank %d%s ... ", done_n, total, c->name,
                        (unsigned long long)seed, c->method, (unsigned long long)c->params, c->rank,
                        c->rank_hi > c->rank ? "+" : "");
            if (run_one(&sw, c, seed, dir, r))
                goto done;
            if (!sw.quiet) {
                if (r->status == 0)
                    fprintf(stderr, "eval loss %.4f -> %.4f (%.1f s, %.0f tokens/s)\n", base_eval, r->eval_after,
                            r->seconds, r->tps);
                else
                    fprintf(stderr, "FAILED: %s\n", r->error);
            }
        }
    }

    sweep_report rep = {.model = sw.model, .train = train, .eval = eval, .forget = forget, .out = sw.out,
                        .budget = budgets[0], .budgets = budget_arg, .n_budgets = n_budgets, .tokens_per_run = (uint64_t)(sw.steps * sw.batch * sw.seq),
                        .eval_tokens = eval_tokens, .steps = sw.steps, .batch = sw.batch, .seq = sw.seq,
                        .seeds = seeds, .seed0 = seed0, .lr = sw.lr, .base_eval = base_eval,
                        .base_forget = base_forget, .schedule = sw.schedule_name, .n_cfg = n_cfg, .cfg = cfg,
                        .runs = runs};
    rc = sweep_write_report(&rep, sw.quiet, json) ? 1 : 0;
done:
    if (runs)
        for (size_t i = 0; i < (size_t)n_cfg * (size_t)(seeds > 0 ? seeds : 0); i++)
            result_free(&runs[i]);
    free(runs);
    for (int i = 0; i < n_cfg; i++)
        cfg_free(&cfg[i]);
    free(cfg);
    if (lock_fd >= 0)
        close(lock_fd);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    peft_model_close(&m);
    peft_tokenizer_close(&tok);
    tokens_free(&sw.train);
    tokens_free(&sw.evald);
    tokens_free(&sw.forget);
    args_free(&a);
    return rc;
}
