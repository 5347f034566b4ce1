/*
 * The smallest complete libpeft host: open a model, attach LoRA, train on a token
 * file, save the adapter, reload it into a fresh handle and evaluate.
 *   minimal MODEL_DIR TOKENS.bin OUT_DIR [steps]
 * Builds against an installed libpeft: cc minimal.c $(pkg-config --cflags --libs peft)
 */
#include <stdio.h>
#include <stdlib.h>

#include <peft/peft.h>

#define T 32
#define B 4

static int die(const char *what, int rc)
{
    fprintf(stderr, "%s: %s (%s)\n", what, peft_last_error(), peft_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL_DIR TOKENS.bin OUT_DIR [steps]\n", argv[0]);
        return 2;
    }
    int steps = argc > 4 ? atoi(argv[4]) : 50;
    FILE *f = fopen(argv[2], "rb");
    if (!f)
        return perror(argv[2]), 1;
    static int32_t tok[1 << 20];
    size_t n = fread(tok, 4, sizeof tok / 4, f); /* uint32 little-endian ids */
    fclose(f);
    size_t windows = n / T;
    if (windows < B)
        return fprintf(stderr, "not enough tokens\n"), 1;

    peft_model *m;
    int rc = peft_model_open(&m, argv[1], NULL);
    if (rc)
        return die("open", rc);
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    lo.targets = PEFT_TARGET_ALL_LINEAR;
    lo.rank = 8;
    lo.alpha = 16;
    uint64_t trainable;
    if ((rc = peft_attach_lora(m, &lo, &trainable)))
        return die("attach", rc);
    peft_opt_set(m, PEFT_OPT_LR, 1e-2);
    printf("%s: %llu trainable parameters (libpeft %s)\n", argv[1], (unsigned long long)trainable, peft_version());

    double first = 0, last = 0;
    for (int s = 0; s < steps; s++) {
        peft_batch b = PEFT_BATCH_INIT;
        b.tokens = tok + ((size_t)s * B % (windows - B + 1)) * T;
        b.n_seq = B;
        b.seq_len = T;
        peft_step_result r = PEFT_STEP_RESULT_INIT;
        if ((rc = peft_step(m, &b, &r)))
            return die("step", rc);
        if (s == 0)
            first = r.loss;
        last = r.loss;
    }
    printf("training loss %.4f -> %.4f\n", first, last);
    if ((rc = peft_save_adapter(m, argv[3], NULL)))
        return die("save", rc);

    peft_batch b = PEFT_BATCH_INIT;
    b.tokens = tok;
    b.n_seq = B;
    b.seq_len = T;
    peft_eval_result e1 = PEFT_EVAL_RESULT_INIT, e2 = PEFT_EVAL_RESULT_INIT;
    peft_eval(m, &b, &e1);
    peft_model_close(&m);

    if ((rc = peft_model_open(&m, argv[1], NULL)) || (rc = peft_load_adapter(m, argv[3])))
        return die("reload", rc);
    peft_eval(m, &b, &e2);
    peft_model_close(&m);
    printf("reloaded adapter: loss %.6f (trained handle %.6f)\n", e2.loss_sum / (double)e2.tokens,
           e1.loss_sum / (double)e1.tokens);
    if (e1.loss_sum != e2.loss_sum || !(last < first))
        return fprintf(stderr, "unexpected result\n"), 1;
    return 0;
}
