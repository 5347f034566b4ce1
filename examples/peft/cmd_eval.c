/* peft eval --model DIR [--adapter DIR] --data FILE --seq T [--batch B] [--threads N] [--json] */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char eval_help[] =
    "usage: peft eval --model DIR [--adapter DIR] --data FILE --seq T [--batch B]\n"
    "                 [--max-windows N] [--threads N] [--backend NAME] [--frozen-dtype f32|bf16] [--json]\n"
    "                 [--tokenizer PATH] [--doc-split paragraph|line] [--pad] [--eos]\n"
    "                 [--exact-match]  (prompt/completion JSONL with --pad: greedy answers\n"
    "                                   compared with the completions)\n"
    "FILE is .txt, .jsonl or uint32 token ids (see peft train --help). Splits it into non-overlapping windows of T tokens (the\n"
    "partial tail is dropped) and prints the mean next-token loss and perplexity.\n";

int cmd_eval(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    if (arg_flag(&a, "--help")) {
        fputs(eval_help, stdout);
        args_free(&a);
        return 0;
    }
    int rc = 1;
    peft_model *m = NULL;
    tokens t = {0};
    peft_tokenizer *tok = NULL;
    data_options dopt;
    long seq, batch, threads, maxw;
    const char *model = arg_str(&a, "--model", NULL), *adapter = arg_str(&a, "--adapter", NULL);
    const char *data = arg_str(&a, "--data", NULL), *backend = arg_str(&a, "--backend", NULL);
    const char *frozen_dtype = arg_str(&a, "--frozen-dtype", NULL);
    int json = arg_flag(&a, "--json"), exact = arg_flag(&a, "--exact-match");
    if (arg_long(&a, "--seq", 128, &seq) || arg_long(&a, "--batch", 8, &batch) ||
        arg_long(&a, "--threads", 0, &threads) || arg_long(&a, "--max-windows", 0, &maxw))
        goto done;
    if (!model || !data) {
        fputs(eval_help, stderr);
        goto done;
    }
    if (seq < 2 || batch < 1) {
        fprintf(stderr, "peft eval: --seq must be >= 2 and --batch >= 1\n");
        goto done;
    }
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = (int32_t)threads;
    oo.backend = backend;
    oo.frozen_dtype = frozen_dtype;
    int code = peft_model_open(&m, model, &oo);
    if (code) {
        rc = fail_lib("open", code);
        goto done;
    }
    if (adapter && (code = peft_load_adapter(m, adapter))) {
        rc = fail_lib("adapter", code);
        goto done;
    }
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &info);
    if (data_from_args(&a, model, info.vocab_size, (int)seq, &dopt, &tok) || args_check_unused(&a) ||
        data_load(&t, data, &dopt))
        goto done;
    size_t nw = t.n / (size_t)seq;
    if (maxw > 0 && (size_t)maxw < nw)
        nw = (size_t)maxw;
    if (nw == 0) {
        fprintf(stderr, "peft eval: %s has fewer than %ld tokens\n", data, seq);
        goto done;
    }
    double loss, t0 = now_seconds();
    uint64_t count;
    if ((code = eval_windows(m, &t, (int)seq, (int)batch, 0, nw, &loss, &count))) {
        rc = fail_lib("eval", code);
        goto done;
    }
    double secs = now_seconds() - t0;
    printf("loss %.6f  ppl %.4f  tokens %llu  windows %zu  (%.1f tokens/s)\n", loss, exp(loss),
           (unsigned long long)count, nw, (double)nw * seq / secs);
    size_t hits = 0, asked = 0;
    if (exact) {
        if (!t.labels || !t.padded) {
            fprintf(stderr, "peft eval: --exact-match needs prompt/completion JSONL data and --pad\n");
            goto done;
        }
        if ((code = exact_match(m, &t, (int)seq, peft_tokenizer_special(tok, PEFT_TOKEN_EOS), 0, nw, &hits, &asked))) {
            rc = fail_lib("exact-match", code);
            goto done;
        }
        printf("exact match %zu / %zu (%.1f%%)\n", hits, asked, asked ? 100.0 * (double)hits / (double)asked : 0.0);
    }
    if (json) {
        printf("{\"loss\": %.8f, \"perplexity\": %.6f, \"tokens\": %llu, \"windows\": %zu, \"seq\": %ld, "
               "\"seconds\": %.3f",
               loss, exp(loss), (unsigned long long)count, nw, seq, secs);
        if (exact)
            printf(", \"exact_match\": %.6f, \"examples\": %zu", asked ? (double)hits / (double)asked : 0.0, asked);
        printf("}\n");
    }
    rc = 0;
done:
    tokens_free(&t);
    peft_tokenizer_close(&tok);
    peft_model_close(&m);
    args_free(&a);
    return rc;
}
