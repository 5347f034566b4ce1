/* peft generate: greedy or sampled continuation with a KV cache, streamed as it comes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char gen_help[] =
    "usage: peft generate --model DIR [--adapter DIR] --prompt TEXT [--max-tokens N (128)]\n"
    "                     [--temperature T (0.8; 0 = greedy)] [--top-k K (40; 0 = off)]\n"
    "                     [--top-p P (0.95)] [--seed S] [--tokenizer PATH] [--compare]\n"
    "                     [--threads N] [--json] [--chat [--system TEXT] [--chat-template FILE]]\n"
    "An empty prompt starts from BOS. --compare generates without and then with the adapter.\n"
    "--chat renders the prompt as the user's turn with the chat template (the tokenizer's, or\n"
    "FILE) and add_generation_prompt, as transformers' apply_chat_template does.\n";

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

struct cand {
    float p;
    int32_t id;
};

static int cmp_cand(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    return x->p < y->p ? 1 : x->p > y->p ? -1 : (x->id > y->id) - (x->id < y->id);
}

static int32_t sample(const float *logits, int V, double temp, int top_k, double top_p, uint64_t *rng,
                      struct cand *c)
{
    int32_t best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best])
            best = i;
    if (temp <= 0)
        return best;
    double mx = logits[best], sum = 0;
    for (int i = 0; i < V; i++) {
        c[i].id = i;
        c[i].p = (float)exp((logits[i] - mx) / temp);
    }
    qsort(c, (size_t)V, sizeof *c, cmp_cand);
    int n = top_k > 0 && top_k < V ? top_k : V;
    for (int i = 0; i < n; i++)
        sum += c[i].p;
    if (top_p > 0 && top_p < 1) {
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += c[i].p / sum;
            if (acc >= top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0;
        for (int i = 0; i < n; i++)
            sum += c[i].p;
    }
    double u = (double)(rng_next(rng) >> 11) * 0x1.0p-53 * sum;
    for (int i = 0; i < n; i++) {
        u -= c[i].p;
        if (u <= 0)
            return c[i].id;
    }
    return c[n - 1].id;
}

/* Generate and stream to stdout; the text (without the prompt) goes to *out. */
static int run(peft_model *m, const peft_tokenizer *tok, const int32_t *prompt, size_t np, long max_tokens,
               double temp, long top_k, double top_p, uint64_t seed, char **out)
{
    peft_model_info info = {.version = PEFT_MODEL_INFO_VERSION};
    peft_model_get_info(m, &info);
    int V = info.vocab_size, rc;
    peft_session *s = NULL;
    float *logits = malloc((size_t)V * sizeof *logits);
    struct cand *c = malloc((size_t)V * sizeof *c);
    int32_t *all = malloc((np + (size_t)max_tokens + 1) * sizeof *all);
    size_t cap = 1 << 16, shown = 0;
    char *text = malloc(cap);
    if (!logits || !c || !all || !text) {
        rc = PEFT_ENOMEM;
        goto done;
    }
    if ((rc = peft_session_create(&s, m, (int32_t)(np + (size_t)max_tokens))) ||
        (rc = peft_session_feed(s, prompt, (int32_t)np, logits)))
        goto done;
    memcpy(all, prompt, np * sizeof *all);
    size_t n = np, len;
    if ((rc = peft_detokenize(tok, all, n, 0, text, cap, &len)))
        goto done;
    shown = len;
    int32_t eos = peft_tokenizer_special(tok, PEFT_TOKEN_EOS);
    for (long i = 0; i < max_tokens; i++) {
        int32_t next = sample(logits, V, temp, (int)top_k, top_p, &seed, c);
        if (next == eos)
            break;
        all[n++] = next;
        if ((rc = peft_detokenize(tok, all, n, 0, text, cap, &len)) == PEFT_ERANGE) {
            char *bigger = realloc(text, len + 1);
            if (!bigger) {
                rc = PEFT_ENOMEM;
                goto done;
            }
            text = bigger;
            cap = len + 1;
            rc = peft_detokenize(tok, all, n, 0, text, cap, &len);
        }
        if (rc)
            goto done;
        fwrite(text + shown, 1, len - shown, stdout);
        fflush(stdout);
        shown = len;
        if (i + 1 < max_tokens && (rc = peft_session_feed(s, &next, 1, logits)))
            goto done;
    }
    fputc('\n', stdout);
    if (out) {
        size_t plen;
        peft_detokenize(tok, prompt, np, 0, NULL, 0, &plen);
        *out = strdup(text + (plen < len ? plen : len));
    }
done:
    peft_session_free(&s);
    free(logits);
    free(c);
    free(all);
    free(text);
    return rc;
}

/* Length of a valid UTF-8 sequence at s, or 0. */
static int utf8_valid(const unsigned char *s)
{
    int n = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 && s[0] >= 0xc2 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3
          : (s[0] & 0xf8) == 0xf0 && s[0] <= 0xf4 ? 4 : 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

/* JSON string; bytes that are not valid UTF-8 (a sampled byte token, say) become U+FFFD. */
static void json_string(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    putchar('"');
    while (*s) {
        int n = utf8_valid(s);
        if (n == 0) {
            fputs("\\ufffd", stdout);
            s++;
        } else if (n > 1) {
            fwrite(s, 1, (size_t)n, stdout);
            s += n;
        } else {
            if (*s == '"' || *s == '\\')
                printf("\\%c", *s);
            else if (*s < 0x20)
                printf("\\u%04x", *s);
            else
                putchar(*s);
            s++;
        }
    }
    putchar('"');
}

int cmd_generate(int argc, char **argv)
{
    cli_args a;
    if (args_init(&a, argc, argv))
        return 1;
    if (arg_flag(&a, "--help")) {
        fputs(gen_help, stdout);
        args_free(&a);
        return 0;
    }
    int rc = 1, code;
    peft_model *m = NULL;
    peft_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    char *text_base = NULL, *text = NULL;
    const char *model = arg_str(&a, "--model", NULL), *adapter = arg_str(&a, "--adapter", NULL);
    const char *prompt = arg_str(&a, "--prompt", ""), *tpath = arg_str(&a, "--tokenizer", NULL);
    const char *system = arg_str(&a, "--system", NULL), *ctpath = arg_str(&a, "--chat-template", NULL);
    int compare = arg_flag(&a, "--compare"), json = arg_flag(&a, "--json"), chat = arg_flag(&a, "--chat");
    char *chat_text = NULL, *tmpl = NULL;
    long max_tokens, top_k, seed, threads;
    double temp, top_p;
    if (arg_long(&a, "--max-tokens", 128, &max_tokens) || arg_long(&a, "--top-k", 40, &top_k) ||
        arg_long(&a, "--seed", 0, &seed) || arg_long(&a, "--threads", 1, &threads) ||
        arg_double(&a, "--temperature", 0.8, &temp) || arg_double(&a, "--top-p", 0.95, &top_p) || !prompt ||
        args_check_unused(&a))
        goto done;
    if (!model || max_tokens < 1 || (compare && !adapter)) {
        fputs(gen_help, stderr);
        goto done;
    }
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = (int32_t)threads;
    if ((code = peft_model_open(&m, model, &oo))) {
        rc = fail_lib("open", code);
        goto done;
    }
    if ((code = peft_tokenizer_open(&tok, tpath ? tpath : model))) {
        rc = fail_lib("tokenizer", code);
        goto done;
    }
    if (adapter && (code = peft_load_adapter(m, adapter))) {
        rc = fail_lib("adapter", code);
        goto done;
    }
    const char *user_prompt = prompt;
    int tflags = PEFT_TOKENIZE_BOS;
    if (chat || ctpath || system) {
        /* the prompt as the user's turn (after the --system one) in the chat template, with the
           assistant's turn opened; the template's text carries BOS as transformers does */
        if (ctpath && !(tmpl = read_text(ctpath))) {
            fprintf(stderr, "peft generate: cannot read --chat-template %s\n", ctpath);
            goto done;
        }
        peft_chat_message msgs[2] = {{"system", system ? system : ""}, {"user", prompt}};
        size_t nm = system ? 2 : 1, len = 0;
        const peft_chat_message *first = system ? msgs : msgs + 1;
        code = peft_chat_render(tok, tmpl, first, nm, 1, NULL, 0, &len);
        if (code == PEFT_ERANGE && (chat_text = malloc(len + 1)))
            code = peft_chat_render(tok, tmpl, first, nm, 1, chat_text, len + 1, &len);
        if (code) {
            rc = fail_lib("chat template", code);
            goto done;
        }
        prompt = chat_text;
        tflags = PEFT_TOKENIZE_NO_BOS;
    }
    size_t np;
    peft_tokenize(tok, prompt, strlen(prompt), tflags, NULL, 0, &np);
    ids = malloc((np + 1) * sizeof *ids);
    if (!ids || (code = peft_tokenize(tok, prompt, strlen(prompt), tflags, ids, np + 1, &np))) {
        rc = fail_lib("tokenize", code);
        goto done;
    }
    if (compare) {
        peft_adapter_enable(m, 0);
        printf("--- without the adapter\n%s", prompt);
        if ((code = run(m, tok, ids, np, max_tokens, temp, top_k, top_p, (uint64_t)seed, &text_base))) {
            rc = fail_lib("generate", code);
            goto done;
        }
        peft_adapter_enable(m, 1);
        printf("--- with the adapter %s\n", adapter);
    }
    printf("%s", prompt);
    fflush(stdout);
    if ((code = run(m, tok, ids, np, max_tokens, temp, top_k, top_p, (uint64_t)seed, &text))) {
        rc = fail_lib("generate", code);
        goto done;
    }
    if (json) {
        printf("{\"prompt\": ");
        json_string(user_prompt);
        printf(", \"text\": ");
        json_string(text ? text : "");
        if (text_base) {
            printf(", \"text_without_adapter\": ");
            json_string(text_base);
        }
        printf("}\n");
    }
    rc = 0;
done:
    free(chat_text);
    free(tmpl);
    free(ids);
    free(text);
    free(text_base);
    peft_tokenizer_close(&tok);
    peft_model_close(&m);
    args_free(&a);
    return rc;
}
