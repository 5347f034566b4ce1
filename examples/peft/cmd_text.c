/* peft tokenize: text to token ids, and back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char tok_help[] =
    "usage: peft tokenize --tokenizer PATH (--text STRING | --in FILE.txt|.jsonl --out FILE.bin)\n"
    "                     [--doc-split paragraph|line] [--no-bos] [--eos] [--chat-template FILE]\n"
    "       peft tokenize --tokenizer PATH --decode \"ID ID ...\"\n"
    "PATH is a tokenizer.json, a model directory holding one, or a GGUF file (its vocabulary).\n"
    "SentencePiece-style and byte-level BPE (Llama 2/3, Qwen2/3, SmolLM, GPT-2).\n";

int cmd_tokenize(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    if (arg_flag(&a, "--help")) {
        fputs(tok_help, stdout);
        args_free(&a);
        return 0;
    }
    int rc = 1, code;
    peft_tokenizer *tok = NULL;
    tokens t = {0};
    int32_t *ids = NULL;
    const char *tp = arg_str(&a, "--tokenizer", NULL), *text = arg_str(&a, "--text", NULL);
    const char *in = arg_str(&a, "--in", NULL), *out = arg_str(&a, "--out", NULL);
    const char *decode = arg_str(&a, "--decode", NULL), *split = arg_str(&a, "--doc-split", "paragraph");
    const char *ctpath = arg_str(&a, "--chat-template", NULL);
    char *tmpl = NULL;
    int no_bos = arg_flag(&a, "--no-bos"), eos = arg_flag(&a, "--eos");
    if (args_check_unused(&a))
        goto done;
    if (!tp || (!text && !in && !decode) || (in && !out)) {
        fputs(tok_help, stderr);
        goto done;
    }
    if ((code = peft_tokenizer_open(&tok, tp))) {
        rc = fail_lib("tokenizer", code);
        goto done;
    }
    if (decode) {
        size_t n = 0, cap = strlen(decode) / 2 + 1, len;
        ids = malloc(cap * sizeof *ids);
        for (char *p = (char *)decode, *e; ids && *p; p = e) {
            long v = strtol(p, &e, 10);
            if (e == p) {
                if (*e == ',' || *e == ' ' || *e == '[' || *e == ']') {
                    e++;
                    continue;
                }
                fprintf(stderr, "peft tokenize: --decode: not a list of ids\n");
                goto done;
            }
            ids[n++] = (int32_t)v;
        }
        peft_detokenize(tok, ids, n, 0, NULL, 0, &len);
        char *s = malloc(len + 1);
        if (!s || (code = peft_detokenize(tok, ids, n, 0, s, len + 1, &len))) {
            free(s);
            rc = fail_lib("decode", code);
            goto done;
        }
        printf("%s\n", s);
        free(s);
        rc = 0;
        goto done;
    }
    if (text) {
        int flags = (no_bos ? PEFT_TOKENIZE_NO_BOS : 0) | (eos ? PEFT_TOKENIZE_EOS : 0);
        size_t n;
        peft_tokenize(tok, text, strlen(text), flags, NULL, 0, &n);
        ids = malloc((n + 1) * sizeof *ids);
        if (!ids || (code = peft_tokenize(tok, text, strlen(text), flags, ids, n, &n))) {
            rc = fail_lib("tokenize", code);
            goto done;
        }
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        rc = 0;
        goto done;
    }
    if (ctpath && !(tmpl = read_text(ctpath))) {
        fprintf(stderr, "peft tokenize: --chat-template %s: %s\n", ctpath, strerror(errno));
        goto done;
    }
    data_options o = {tok, split, 0, 0, 0, eos, 0, 0, 1, tmpl};
    if (data_load(&t, in, &o))
        goto done;
    FILE *f = fopen(out, "wb");
    if (!f) {
        perror(out);
        goto done;
    }
    for (size_t i = 0; i < t.n; i++) {
        uint32_t v = (uint32_t)t.ids[i];
        unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
        fwrite(b, 1, 4, f);
    }
    if (ferror(f) | fclose(f)) {
        fprintf(stderr, "peft tokenize: write to %s failed\n", out);
        goto done;
    }
    fprintf(stderr, "wrote %zu tokens to %s\n", t.n, out);
    rc = 0;
done:
    free(tmpl);
    free(ids);
    tokens_free(&t);
    peft_tokenizer_close(&tok);
    args_free(&a);
    return rc;
}
