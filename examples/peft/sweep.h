/* peft sweep: configurations, run results and the report writer. */
#ifndef PEFT_SWEEP_H
#define PEFT_SWEEP_H

#include <stdint.h>

#include "cli.h"

enum { KIND_LORA = 0, KIND_IA3 = 1, KIND_NORMS = 2, KIND_VERA = 3, KIND_PROMPT = 4, KIND_TOKENS = 5 };

typedef struct sweep_cfg {
    char name[96];    /* the family, or FAMILY@BUDGET when the sweep has several budgets */
    char family[64];
    uint64_t budget;
    char flags[512];  /* the adapter flags as written (family table or config file) */
    char method[16];  /* lora, dora, loha, lokr, ia3, norms, vera, prompt, tokens */
    char note[320];   /* why the budget is not matched, or why it was not measured */
    int available;    /* 0: not measured (note says why) */
    int user;         /* from the --config file */
    int kind;         /* KIND_* */
    char **argv;      /* the split flags; options point into them */
    int argc;
    peft_lora_options lo;
    peft_ia3_options io;
    peft_norms_options no;
    peft_vera_options vo;
    peft_prompt_options po;            /* prompt tuning (its rank is the number of virtual tokens) */
    int32_t *tok_ids;                  /* trainable tokens: the rows (owned), the most frequent training */
    int n_tok;                         /* tokens unless the configuration lists them */
    char *rank_pattern, *alpha_pattern; /* solved per-module ranks (owned) */
    int rank, rank_hi;                  /* every module has rank or rank_hi (= rank + 1) */
    uint64_t params;
    double budget_err;                  /* (params - budget) / budget */
    double lr, loraplus, wd, embed_lr;  /* per-configuration optimizer settings */
    char plan[640];                     /* the resolved configuration, stored with each run */
} sweep_cfg;

typedef struct run_result {
    int status;         /* 0 ok, 1 failed, -1 not run */
    char error[320];
    uint64_t params, tokens;
    double seconds, tps, peak_mib, eval_after, forget_after;
    double *train_loss; /* per optimizer step (NaN where skipped) */
    int n_train;
    double *eval_step, *eval_loss; /* periodic evaluations */
    int n_eval;
} run_result;

typedef struct sweep_report {
    const char *model, *train, *eval, *forget, *out;
    uint64_t budget, tokens_per_run, eval_tokens; /* budget: the first of budgets */
    const char *budgets;                          /* "N" or "N,M,..." */
    int n_budgets;
    long steps, batch, seq, seeds, seed0;
    double lr, base_eval, base_forget;
    const char *schedule;
    int n_cfg;
    sweep_cfg *cfg;
    run_result *runs; /* n_cfg * seeds, [config * seeds + seed index] */
} sweep_report;

/* report.md, chart.svg, curves.svg and metrics.jsonl in r->out; the table on stderr
   (unless quiet) and the JSON summary on stdout (json). Returns 0 or -1. */
int sweep_write_report(const sweep_report *r, int quiet, int json);
/* JSON string literal of s into f. */
void json_string(FILE *f, const char *s);
/* Write text to path atomically (temporary file, fsync, rename). */
int write_file_atomic(const char *path, const char *text, size_t len);

#endif
