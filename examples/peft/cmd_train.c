/* peft train: the host-owned data loop around peft_step. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "par.h"

static const char train_help[] =
    "usage: peft train --model DIR --data FILE --out DIR [options]\n"
    "data:     --seq T (128) --batch B (4) --steps N | --epochs E  --holdout F (0)\n"
    "          --eval-data FILE  --eval-every N (0: start and end only)  --eval-windows N (all)\n"
    "adapter:  --method lora|dora|loha|lokr|ia3|norms|vera|embeddings|prompt|tokens (lora; embeddings: LoRA\n"
    "          on embed_tokens; tokens: only the --token-indices rows)  --rank R (8; vera 256) --alpha A (2R)\n"
    "          --num-virtual-tokens N (prompt: 8)  --prompt-init random|text|vocab (random)\n"
    "          --prompt-init-text TEXT (prompt: the soft prompt starts as this text's embeddings)\n"
    "          --vera-d-initial D (0.1: VeRA's lambda_d at init)\n"
    "          --feedforward LIST (ia3: modules whose input is scaled; down)\n"
    "          --targets all-linear|q,k,v,o,gate,up,down,embed,lm_head (q,v; embed, lm_head: LoRA on the\n"
    "          embeddings, on the output projection)\n"
    "          --modules-to-save embed_tokens,lm_head (trained in full)  --train-norms input,post_attention,\n"
    "          pre_feedforward,post_feedforward,q_norm,k_norm,final|all (RMSNorm weights trained too; with\n"
    "          --method norms: which are tuned, all by default; pre/post_feedforward are Gemma's, q_norm and\n"
    "          k_norm Qwen3's and Gemma 3's)\n"
    "          --token-indices ID,... (only these embedding rows)\n"
    "          --head-token-indices ID,... (only these rows of an untied lm_head)\n"
    "          --bias none|all|lora_only (PEFT's bias: every bias trained, or the adapted modules'; none)\n"
    "          --target-regex RE (PEFT's regex target_modules, matched whole against names such as\n"
    "          model.layers.3.self_attn.q_proj; replaces --targets and --layers)\n"
    "          --exclude-modules NAME,... (PEFT's exclude_modules: the modules so named, or whose names\n"
    "          end with .NAME, left out: model.layers.0.mlp.down_proj, down_proj)  --exclude-regex RE\n"
    "          --rank-pattern KEY=R,...  --alpha-pattern KEY=A,...  (PEFT rank_pattern/alpha_pattern)\n"
    "          --layers all|N,M|N-M|first:N|last:N|every:K  --dropout P (0) --rslora\n"
    "          --init kaiming|gaussian|pissa|olora (pissa, olora: the adapter starts as the principal part\n"
    "          of each weight, the frozen base becomes the residual)  --convert-to-lora DIR (also write a\n"
    "          PiSSA/OLoRA adapter as a plain LoRA of twice the rank for the original base)\n"
    "          --init-adapter DIR (resume from a saved adapter)\n"
    "optimizer:--lr LR (2e-4) --weight-decay W (0) --beta1 --beta2 --eps --grad-clip C (1.0)\n"
    "          --accum K (1) --warmup N (0) --schedule constant|linear|cosine (constant)\n"
    "          --min-lr-ratio R (0)  --loraplus-ratio R (1; LoRA+: B learns at R x LR)\n"
    "          --embed-lr-ratio R (1; embeddings and lm_head, adapted or trained, learn at R x LR)\n"
    "          --embed-weight-decay W  --norm-lr-ratio R (1)  --norm-weight-decay W (-1: --weight-decay)\n"
    "text:     --tokenizer PATH (the model's)  --doc-split paragraph|line  --pad  --eos\n"
    "          --cross-doc (packed documents attend to each other)  --split-at-bos (token files)\n"
    "run:      --seed S (0) --threads N (all CPUs) --backend cpu|blis --save-every N (0)\n"
    "          --frozen-dtype f32|bf16 (f32; bf16: frozen weights held in BFloat16, half the memory)\n"
    "          --activation-checkpointing (keep each layer's input only, recompute in the backward pass)\n"
    "          --checkpoint-every N (adapter + optimizer state in --out)  --resume DIR (exactly)\n"
    "          --format peft|gguf|both (peft; gguf: OUT/adapter.gguf for llama.cpp --lora)\n"
    "          --log-every N --json --quiet\n"
    "mpirun -np N peft train ... trains data-parallel (when built with MPI): every optimizer\n"
    "step takes --accum x --batch windows on each of the N ranks, the adapter gradients are\n"
    "summed across ranks (overlapped with the last backward pass; --no-overlap: after it),\n"
    "and only rank 0 logs and writes files.\n"
    "FILE is .txt (one document per paragraph or line, BOS as the tokenizer says), .jsonl\n"
    "({\"text\"} or {\"prompt\", \"completion\"}, loss masked on the prompt) or uint32\n"
    "little-endian token ids. Documents are packed and cut into non-overlapping windows of\n"
    "T tokens (--pad: one document per window, padded), shuffled with the seed every epoch. With --holdout F the last fraction F of\n"
    "the windows is kept out of training and used for evaluation.\n";

static void fmt_time(char *buf, size_t n, double s)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, n, "--:--");
    else if (s >= 3600)
        snprintf(buf, n, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
    else
        snprintf(buf, n, "%02d:%02d", (int)s / 60, (int)s % 60);
}

/* Mean loss over windows [w0, w1), each rank evaluating its share. */
static int eval_ranks(peft_model *m, const tokens *t, int T, int B, size_t w0, size_t w1, double *loss,
                      uint64_t *count)
{
    size_t n = w1 - w0, r = (size_t)par_rank(), nr = (size_t)par_size();
    double part[2] = {0, 0};
    if (n * r / nr < n * (r + 1) / nr) {
        uint64_t c;
        int code = eval_windows(m, t, T, B, w0 + n * r / nr, w0 + n * (r + 1) / nr, &part[0], &c);
        if (code)
            return code;
        part[0] *= (double)c;
        part[1] = (double)c;
    }
    if (par_sum_doubles(part, 2))
        return PEFT_EIO;
    *loss = part[1] > 0 ? part[0] / part[1] : 0.0;
    *count = (uint64_t)part[1];
    return PEFT_OK;
}

struct opt_flag {
    const char *flag;
    int key;
    double def;
};

int cmd_train(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    if (arg_flag(&a, "--help")) {
        fputs(train_help, stdout);
        args_free(&a);
        return 0;
    }
    int rc = 1, code, agreed = 0;
    peft_model *m = NULL;
    tokens train = {0}, evald = {0};
    sampler smp = {0};
    double *step_secs = NULL;
    int32_t *buf = NULL, *lbuf = NULL, *dbuf = NULL;
    peft_tokenizer *tok = NULL;
    data_options dopt;
    const char *model = arg_str(&a, "--model", NULL), *data = arg_str(&a, "--data", NULL);
    const char *out = arg_str(&a, "--out", NULL), *eval_data = arg_str(&a, "--eval-data", NULL);
    const char *init_adapter = arg_str(&a, "--init-adapter", NULL), *backend = arg_str(&a, "--backend", NULL);
    const char *frozen_dtype = arg_str(&a, "--frozen-dtype", NULL);
    const char *schedule = arg_str(&a, "--schedule", "constant");
    const char *format = arg_str(&a, "--format", "peft");
    int json = arg_flag(&a, "--json"), quiet = arg_flag(&a, "--quiet");
    const int no_overlap = arg_flag(&a, "--no-overlap");
    const int act_ckpt = arg_flag(&a, "--activation-checkpointing");
    const char *convert_dir = arg_str(&a, "--convert-to-lora", NULL);
    if (par_init()) {
        args_free(&a);
        return 1;
    }
    const int rank = par_rank(), nr = par_size();
    if (rank != 0)
        json = 0, quiet = 1; /* rank 0 speaks for the job */
    const int overlap = nr > 1 && !no_overlap;
    long seq, batch, steps, threads, eval_every, max_eval_w, log_every, save_every, ckpt_every;
    const char *resume = arg_str(&a, "--resume", NULL);
    double epochs, holdout, vera_d;
    peft_lora_options lo;
    peft_ia3_options io;
    int use_ia3 = 0;
    const struct opt_flag flags[] = {
        {"--lr", PEFT_OPT_LR, 2e-4},           {"--weight-decay", PEFT_OPT_WEIGHT_DECAY, 0},
        {"--beta1", PEFT_OPT_BETA1, 0.9},      {"--beta2", PEFT_OPT_BETA2, 0.999},
        {"--eps", PEFT_OPT_EPS, 1e-8},         {"--grad-clip", PEFT_OPT_GRAD_CLIP, 1.0},
        {"--accum", PEFT_OPT_ACCUM_STEPS, 1},  {"--warmup", PEFT_OPT_WARMUP_STEPS, 0},
        {"--min-lr-ratio", PEFT_OPT_MIN_LR_RATIO, 0}, {"--loraplus-ratio", PEFT_OPT_LORAPLUS_RATIO, 1},
        {"--embed-lr-ratio", PEFT_OPT_EMBED_LR_RATIO, 1}, {"--embed-weight-decay", PEFT_OPT_EMBED_WEIGHT_DECAY, -1},
        {"--norm-lr-ratio", PEFT_OPT_NORM_LR_RATIO, 1},   {"--norm-weight-decay", PEFT_OPT_NORM_WEIGHT_DECAY, -1},
    };
    double fv[sizeof flags / sizeof flags[0]];
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (arg_double(&a, flags[i].flag, flags[i].def, &fv[i]))
            goto done;
    if (arg_long(&a, "--seq", 128, &seq) || arg_long(&a, "--batch", 4, &batch) ||
        arg_long(&a, "--steps", 0, &steps) || arg_double(&a, "--epochs", 0, &epochs) ||
        arg_long(&a, "--threads", 0, &threads) || arg_long(&a, "--eval-every", 0, &eval_every) ||
        arg_long(&a, "--eval-windows", 0, &max_eval_w) || arg_long(&a, "--log-every", 0, &log_every) ||
        arg_long(&a, "--save-every", 0, &save_every) || arg_long(&a, "--checkpoint-every", 0, &ckpt_every) || arg_double(&a, "--holdout", 0, &holdout) || arg_double(&a, "--vera-d-initial", 0.1, &vera_d) ||
        lora_from_args(&a, &lo, &use_ia3, &io) || !schedule)
        goto done;
    peft_prompt_options po;
    const char *prompt_text = NULL;
    if (use_ia3 == 4 && prompt_from_args(&a, &po, &prompt_text))
        goto done;
    if (!model || !data || !out) {
        fputs(train_help, stderr);
        goto done;
    }
    if (!format || (strcmp(format, "peft") && strcmp(format, "gguf") && strcmp(format, "both"))) {
        fprintf(stderr, "peft train: --format must be peft, gguf or both\n");
        goto done;
    }
    int sched;
    if (!strcmp(schedule, "constant"))
        sched = PEFT_SCHEDULE_CONSTANT;
    else if (!strcmp(schedule, "linear"))
        sched = PEFT_SCHEDULE_LINEAR;
    else if (!strcmp(schedule, "cosine"))
        sched = PEFT_SCHEDULE_COSINE;
    else {
        fprintf(stderr, "peft train: --schedule must be constant, linear or cosine\n");
        goto done;
    }
    if (seq < 2 || batch < 1 || holdout < 0 || holdout >= 1) {
        fprintf(stderr, "peft train: need --seq >= 2, --batch >= 1, 0 <= --holdout < 1\n");
        goto done;
    }

    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = (int32_t)threads;
    oo.backend = backend;
    oo.frozen_dtype = frozen_dtype;
    if ((code = peft_model_open(&m, model, &oo))) {
        rc = fail_lib("open", code);
        goto done;
    }
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &info);
    if (data_from_args(&a, model, info.vocab_size, (int)seq, &dopt, &tok) || args_check_unused(&a) ||
        data_load(&train, data, &dopt))
        goto done;
    size_t nw = train.n / (size_t)seq, n_eval_w = 0, eval_w0 = 0;
    const tokens *ev = NULL;
    if (eval_data) {
        if (data_load(&evald, eval_data, &dopt))
            goto done;
        ev = &evald;
        n_eval_w = evald.n / (size_t)seq;
    } else if (holdout > 0) {
        n_eval_w = (size_t)(holdout * (double)nw);
        if (n_eval_w == 0)
            n_eval_w = 1;
        if (n_eval_w >= nw) {
            fprintf(stderr, "peft train: --holdout leaves no training windows\n");
            goto done;
        }
        nw -= n_eval_w;
        eval_w0 = nw;
        ev = &train;
    }
    if (max_eval_w > 0 && (size_t)max_eval_w < n_eval_w)
        n_eval_w = (size_t)max_eval_w;
    if (nw == 0) {
        fprintf(stderr, "peft train: %s has fewer than %ld tokens (one window)\n", data, seq);
        goto done;
    }
    if ((size_t)batch > nw)
        batch = (long)nw;
    long accum = (long)fv[6];
    if (steps <= 0) {
        if (epochs <= 0)
            steps = 100;
        else
            steps = (long)ceil(epochs * (double)nw / (double)(batch * (accum > 0 ? accum : 1) * nr));
    }

    long start_step = 0;
    if (resume) {
        double done_steps;
        if ((code = peft_load_checkpoint(m, resume)) || (code = peft_opt_get(m, PEFT_OPT_STEP, &done_steps))) {
            rc = fail_lib("resume", code);
            goto done;
        }
        start_step = (long)done_steps;
        if (!quiet)
            fprintf(stderr, "peft train: resuming %s after step %ld\n", resume, start_step);
    } else if (init_adapter) {
        if ((code = peft_load_adapter(m, init_adapter))) {
            rc = fail_lib("init-adapter", code);
            goto done;
        }
    } else if (use_ia3 == 5) {
        if ((code = peft_attach_tokens(m, lo.token_indices, lo.n_token_indices, NULL))) {
            rc = fail_lib("attach", code);
            goto done;
        }
    } else if (use_ia3 == 4) {
        const char *tp = arg_str(&a, "--tokenizer", NULL);
        if (prompt_attach(m, &po, prompt_text, tok, tp ? tp : model))
            goto done;
    } else if (use_ia3 == 3) {
        peft_vera_options vo;
        vera_from_lora(&lo, vera_d, &vo);
        if ((code = peft_attach_vera(m, &vo, NULL))) {
            rc = fail_lib("attach", code);
            goto done;
        }
    } else if (use_ia3 == 2) {
        peft_norms_options no = PEFT_NORMS_OPTIONS_INIT;
        no.layers = lo.layers;
        if (lo.norms) /* --train-norms: which norms (all by default) */
            no.norms = lo.norms;
        if ((code = peft_attach_norms(m, &no, NULL))) {
            rc = fail_lib("attach", code);
            goto done;
        }
    } else if (use_ia3 ? (code = peft_attach_ia3(m, &io, NULL)) : (code = peft_attach_lora(m, &lo, NULL))) {
        rc = fail_lib("attach", code);
        goto done;
    }
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if ((code = peft_opt_set(m, flags[i].key, fv[i]))) {
            rc = fail_lib(flags[i].flag, code);
            goto done;
        }
    if ((code = peft_opt_set(m, PEFT_OPT_SCHEDULE, sched)) ||
        (code = peft_opt_set(m, PEFT_OPT_TOTAL_STEPS, (double)steps)) ||
        (code = peft_opt_set(m, PEFT_OPT_ACTIVATION_CHECKPOINTING, act_ckpt))) {
        rc = fail_lib("optimizer", code);
        goto done;
    }
    peft_model_get_info(m, &info);
    if (nr > 1) { /* every rank starts from rank 0's adapter */
        float *params;
        size_t np;
        if ((code = peft_param_buffer(&params, &np, m)) || par_bcast_floats(params, np)) {
            rc = code ? fail_lib("broadcast", code) : 1;
            goto done;
        }
    }
    if (!quiet) {
        fprintf(stderr, "peft train: %s, %llu trainable parameters (%.3f%%), %zu training windows of %ld, "
                        "%ld steps x %ld x %ld",
                model, (unsigned long long)info.n_trainable,
                100.0 * (double)info.n_trainable / (double)info.n_params, nw, seq, steps, accum, batch);
        if (nr > 1)
            fprintf(stderr, " x %d ranks", nr);
        fprintf(stderr, ", %d threads%s\n", info.n_threads, nr > 1 ? " each" : "");
    }

    double eval_before = NAN, eval_after = NAN;
    uint64_t ecount;
    if (ev && n_eval_w > 0) {
        if ((code = eval_ranks(m, ev, (int)seq, (int)batch, eval_w0, eval_w0 + n_eval_w, &eval_before, &ecount))) {
            rc = fail_lib("eval", code);
            goto done;
        }
        if (!quiet)
            fprintf(stderr, "eval before: loss %.4f (ppl %.3f) over %llu tokens\n", eval_before,
                    exp(eval_before), (unsigned long long)ecount);
    }

    buf = malloc((size_t)batch * (size_t)seq * sizeof *buf);
    lbuf = malloc((size_t)batch * (size_t)seq * sizeof *lbuf);
    dbuf = malloc((size_t)batch * (size_t)seq * sizeof *dbuf);
    if (sampler_init(&smp, nw, lo.seed) || !buf || !lbuf || !dbuf) {
        fprintf(stderr, "peft train: out of memory\n");
        goto done;
    }
    int tty = isatty(2);
    if (log_every <= 0)
        log_every = steps >= 20 ? steps / 20 : 1;
    uint64_t trained_tokens = 0;
    long bad = 0;
    double t0 = now_seconds(), last_loss = NAN;
    par_comm_reset(); /* comm_seconds: the loop's share, as seconds */
    /* a resumed run replays the data order up to where the checkpoint was taken */
    for (long i = 0; i < start_step * accum * batch * nr; i++)
        sampler_next(&smp);
    const char *kill_at = getenv("PEFT_TEST_KILL_AFTER_STEP"); /* crash test hook */
    step_secs = json ? calloc((size_t)(steps > start_step ? steps - start_step : 1), sizeof *step_secs) : NULL;
    for (long step = start_step; step < steps; step++) {
        double ts0 = now_seconds();
        peft_step_result r = PEFT_STEP_RESULT_INIT;
        /* summed over ranks: loss sum, counted tokens, ranks with a non-finite loss, ranks
           with an error */
        double tally[4] = {0, 0, 0, 0};
        /* micro-batch g = micro * nr + j of this step goes to rank j; one process with
           --accum accum*nr sees the same micro-batches in the same order */
        /* overlapped: every rank runs all its backward passes (the all-reduces started during
           the last one must match across ranks), even after a non-finite loss */
        for (long g = 0; g < accum * nr; g++) {
            sampler_fill(&smp, &train, (int)seq, (int)batch, buf, lbuf, dbuf);
            if (g % nr != rank || tally[3] > 0 || (tally[2] > 0 && !overlap))
                continue;
            peft_batch pb = PEFT_BATCH_INIT;
            pb.tokens = buf;
            pb.labels = train.labels ? lbuf : NULL;
            pb.seq_ids = train.docs ? dbuf : NULL;
            pb.n_seq = (int32_t)batch;
            pb.seq_len = (int32_t)seq;
            if (nr > 1 && (code = peft_opt_set(m, PEFT_OPT_DROPOUT_CALL, (double)(step * accum * nr + g)))) {
                fail_lib("step", code);
                tally[3] = 1;
                continue;
            }
            const int last = g == (accum - 1) * nr + rank;
            if (overlap && last && par_overlap_begin(m)) {
                fprintf(stderr, "peft train: step %ld: cannot start the overlapped all-reduce\n", step + 1);
                goto done;
            }
            code = peft_forward_backward(m, &pb, &r);
            if (overlap && last && par_overlap_finish(m))
                goto done;
            if (overlap && code && code != PEFT_ENUMERIC) {
                fail_lib("step", code); /* the other ranks wait in collectives: stop them */
                goto done;
            }
            if (code == PEFT_ENUMERIC) {
                fprintf(stderr, "\npeft train: step %ld: %s; skipped\n", step + 1, peft_last_error());
                tally[2] = 1;
            } else if (code) {
                fail_lib("step", code);
                tally[3] = 1;
            } else {
                tally[0] += r.loss * (double)r.tokens;
                tally[1] += (double)r.tokens;
            }
        }
        const int failed_here = tally[3] > 0;
        if (par_sum_doubles(tally, 4)) {
            fprintf(stderr, "peft train: step %ld: summing across ranks failed\n", step + 1);
            goto done;
        }
        if (tally[3] > 0) {
            if (!failed_here && !quiet)
                fprintf(stderr, "peft train: step %ld failed on another rank; stopping\n", step + 1);
            agreed = 1;
            goto done;
        }
        if (tally[2] > 0) {
            peft_zero_grad(m); /* every rank drops the step */
            if (++bad >= 5) {
                if (!quiet)
                    fprintf(stderr, "peft train: 5 consecutive non-finite steps, stopping\n");
                agreed = 1;
                goto done;
            }
        } else {
            bad = 0;
            float *grads;
            size_t ng;
            if ((code = peft_grad_buffer(&grads, &ng, m)) || (!overlap && par_sum_floats(grads, ng))) {
                rc = code ? fail_lib("step", code) : 1;
                goto done;
            }
            if ((code = peft_apply_update(m, tally[1], &r))) {
                rc = fail_lib("step", code); /* same state on every rank: each stops here */
                agreed = 1;
                goto done;
            }
        }
        double step_loss = tally[0];
        uint64_t step_tokens = (uint64_t)tally[1];
        trained_tokens += (uint64_t)(batch * seq * accum * nr);
        if (step_secs)
            step_secs[step - start_step] = now_seconds() - ts0;
        last_loss = step_tokens ? step_loss / (double)step_tokens : NAN;
        double el = now_seconds() - t0, tps = (double)trained_tokens / el;
        char eta[32];
        fmt_time(eta, sizeof eta, el / (double)(step + 1) * (double)(steps - step - 1));
        if (!quiet && (tty || (step + 1) % log_every == 0 || step + 1 == steps))
            fprintf(stderr, "%sstep %ld/%ld  loss %.4f  lr %.2e  gnorm %.3f  %.0f tok/s  ETA %s%s",
                    tty ? "\r" : "", step + 1, steps, last_loss, r.lr, r.grad_norm, tps, eta,
                    tty ? "   " : "\n");
        if (ev && n_eval_w > 0 && eval_every > 0 && (step + 1) % eval_every == 0 && step + 1 < steps) {
            double el2;
            if ((code = eval_ranks(m, ev, (int)seq, (int)batch, eval_w0, eval_w0 + n_eval_w, &el2, &ecount))) {
                rc = fail_lib("eval", code);
                goto done;
            }
            if (!quiet)
                fprintf(stderr, "%seval step %ld: loss %.4f (ppl %.3f)\n", tty ? "\n" : "", step + 1, el2, exp(el2));
        }
        if (rank == 0 && save_every > 0 && (step + 1) % save_every == 0 && (code = peft_save_adapter(m, out, NULL))) {
            rc = fail_lib("save", code);
            goto done;
        }
        if (rank == 0 && ckpt_every > 0 && (step + 1) % ckpt_every == 0 && (code = peft_save_checkpoint(m, out))) {
            rc = fail_lib("checkpoint", code);
            goto done;
        }
        if (kill_at && step + 1 == atol(kill_at))
            raise(SIGKILL);
    }
    double secs = now_seconds() - t0, comm_secs = par_comm_seconds(); /* (the evaluation after: neither) */
    if (!quiet && tty)
        fputc('\n', stderr);
    if (ev && n_eval_w > 0) {
        if ((code = eval_ranks(m, ev, (int)seq, (int)batch, eval_w0, eval_w0 + n_eval_w, &eval_after, &ecount))) {
            rc = fail_lib("eval", code);
            goto done;
        }
        if (!quiet)
            fprintf(stderr, "eval after:  loss %.4f (ppl %.3f)\n", eval_after, exp(eval_after));
    }
    if (rank != 0) {
        rc = 0;
        goto done;
    }
    if (strcmp(format, "gguf") != 0 &&
        (code = ckpt_every > 0 ? peft_save_checkpoint(m, out) : peft_save_adapter(m, out, NULL))) {
        rc = fail_lib("save", code);
        goto done;
    }
    if (convert_dir) { /* PiSSA/OLoRA as a plain LoRA for the original base */
        peft_save_options so = PEFT_SAVE_OPTIONS_INIT;
        so.convert_to_lora = 1;
        if ((code = peft_save_adapter(m, convert_dir, &so))) {
            rc = fail_lib("save converted", code);
            goto done;
        }
    }
    if (strcmp(format, "peft") != 0) {
        char gpath[4096];
        snprintf(gpath, sizeof gpath, "%s/adapter.gguf", out);
        if (make_dirs(out)) {
            fprintf(stderr, "peft train: cannot create %s\n", out);
            goto done;
        }
        if ((code = peft_save_adapter_gguf(m, gpath, NULL))) {
            rc = fail_lib("save gguf", code);
            goto done;
        }
    }
    if (!quiet)
        fprintf(stderr, "saved adapter to %s (%.1f s, %.0f tokens/s)\n", out, secs, (double)trained_tokens / secs);
    if (json) {
        printf("{\"loss\": %.6f, \"tokens\": %llu, \"tokens_per_s\": %.1f, \"steps\": %ld, "
               "\"seconds\": %.3f, \"trainable_params\": %llu",
               last_loss, (unsigned long long)trained_tokens, (double)trained_tokens / secs, steps, secs,
               (unsigned long long)info.n_trainable);
        if (!isnan(eval_before))
            printf(", \"eval_loss_before\": %.6f, \"eval_loss_after\": %.6f", eval_before, eval_after);
        if (step_secs) {
            printf(", \"step_seconds\": [");
            for (long i = 0; i < steps - start_step; i++)
                printf("%s%.4f", i ? ", " : "", step_secs[i]);
            printf("]");
        }
        if (nr > 1)
            printf(", \"ranks\": %d, \"comm_seconds\": %.4f", nr, comm_secs);
        printf(", \"out\": \"%s\"}\n", out);
    }
    rc = 0;
done:
    free(step_secs);
    sampler_free(&smp);
    free(buf);
    free(lbuf);
    free(dbuf);
    peft_tokenizer_close(&tok);
    tokens_free(&train);
    tokens_free(&evald);
    peft_model_close(&m);
    args_free(&a);
    if (rc && !agreed)
        par_abort(); /* returns only with one rank */
    par_finalize();
    return rc;
}
