/*
 * Allocation-failure injection: this program replaces malloc, calloc, realloc,
 * aligned_alloc and free (glibc lets a program do so; libpeft's calls and libc's own
 * internal ones come here), counts the allocations a scenario of public-API calls makes,
 * then reruns the scenario once for each allocation k, making exactly the k-th fail.
 * Every run must end without a crash, each failing call must return PEFT_ENOMEM with a
 * message, and after the scenario's cleanup every allocation made during it must
 * have been freed (no leak on any error path). Files written by a failed save must not
 * be left half-written.
 * Not built with the sanitizers (they replace malloc themselves).
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <peft/peft.h>

#include "harness.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

/* Only the main thread is counted (the scenarios run with one thread). */
static long g_count;       /* allocations attempted while counting */
static long g_fail_at;     /* the allocation to fail (1-based), 0: none */
static long g_live;        /* successful allocations minus frees while counting */
static int g_on;           /* counting */
static int g_injected;     /* the failure happened */

static int fail_now(void)
{
    if (!g_on)
        return 0;
    g_count++;
    if (g_fail_at && g_count == g_fail_at) {
        g_injected = 1;
        errno = ENOMEM; /* as the real allocator does */
        return 1;
    }
    return 0;
}

#ifndef SANITIZED
void *malloc(size_t n)
{
    if (fail_now())
        return NULL;
    void *p = __libc_malloc(n);
    if (p && g_on)
        g_live++;
    return p;
}

void *calloc(size_t a, size_t b)
{
    if (fail_now())
        return NULL;
    void *p = __libc_calloc(a, b);
    if (p && g_on)
        g_live++;
    return p;
}

void *realloc(void *q, size_t n)
{
    if (fail_now())
        return NULL;
    void *p = __libc_realloc(q, n);
    if (p && !q && g_on)
        g_live++;
    return p;
}

void *aligned_alloc(size_t align, size_t n)
{
    if (fail_now())
        return NULL;
    void *p = __libc_memalign(align, n);
    if (p && g_on)
        g_live++;
    return p;
}

void free(void *p)
{
    if (p && g_on)
        g_live--;
    __libc_free(p);
}
#endif

static char g_dir[256];

/* No temporary or half-written files may stay in the output directory. */
static int stray_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int bad = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp") || strchr(e->d_name, '~'))
            bad++;
    closedir(d);
    return bad;
}

static int scenario_train(void)
{
    peft_model *m = NULL;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = 1;
    int rc = peft_model_open(&m, test_data("tiny"), &oo);
    if (rc)
        return rc;
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    lo.targets = PEFT_TARGET_ALL_LINEAR | PEFT_TARGET_EMBED;
    lo.rank = 2;
    lo.rank_pattern = "q_proj=3";
    int32_t tok[2 * 8];
    for (int i = 0; i < 16; i++)
        tok[i] = (i * 7 + 3) % 48;
    peft_batch b = PEFT_BATCH_INIT;
    b.tokens = tok;
    b.n_seq = 2;
    b.seq_len = 8;
    peft_step_result r = PEFT_STEP_RESULT_INIT;
    peft_eval_result e = PEFT_EVAL_RESULT_INIT;
    char ad[300], ck[300], gg[300];
    snprintf(ad, sizeof ad, "%s/ad", g_dir);
    snprintf(ck, sizeof ck, "%s/ck", g_dir);
    snprintf(gg, sizeof gg, "%s/ad.gguf", g_dir);
    if ((rc = peft_attach_lora(m, &lo, NULL)) || (rc = peft_step(m, &b, &r)) || (rc = peft_eval(m, &b, &e)) ||
        (rc = peft_save_adapter(m, ad, NULL)) || (rc = peft_save_checkpoint(m, ck)) ||
        (rc = peft_detach(m)) || (rc = peft_load_adapter(m, ad)) || (rc = peft_merge_adapter(m)) ||
        (rc = peft_unmerge_adapter(m)) || (rc = peft_detach(m)) || (rc = peft_load_checkpoint(m, ck)) ||
        (rc = peft_detach(m))) {
        peft_model_close(&m);
        return rc;
    }
    lo.targets = PEFT_TARGET_Q | PEFT_TARGET_V;
    lo.rank_pattern = NULL;
    peft_session *s = NULL;
    float logits[64];
    if ((rc = peft_attach_lora(m, &lo, NULL)) || (rc = peft_save_adapter_gguf(m, gg, NULL)) ||
        (rc = peft_session_create(&s, m, 16)) || (rc = peft_session_feed(s, tok, 4, logits))) {
        peft_session_free(&s);
        peft_model_close(&m);
        return rc;
    }
    peft_session_free(&s);
    peft_model_close(&m);
    return 0;
}

/* The tiny model on one thread and a batch of one 8-token row (tok[i] = (i * mul + add) % 48). */
static int open_tiny_row(peft_model **m, int32_t tok[8], peft_batch *b, int mul, int add)
{
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = 1;
    for (int i = 0; i < 8; i++)
        tok[i] = (i * mul + add) % 48;
    *b = (peft_batch)PEFT_BATCH_INIT;
    b->tokens = tok;
    b->n_seq = 1;
    b->seq_len = 8;
    return peft_model_open(m, test_data("tiny"), &oo);
}

static int scenario_methods(void)
{
    peft_model *m = NULL;
    int32_t tok[8];
    peft_batch b;
    int rc = open_tiny_row(&m, tok, &b, 5, 1);
    if (rc)
        return rc;
    peft_ia3_options io = PEFT_IA3_OPTIONS_INIT;
    peft_vera_options vo = PEFT_VERA_OPTIONS_INIT;
    vo.rank = 4;
    peft_norms_options no = PEFT_NORMS_OPTIONS_INIT;
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    lo.variant = PEFT_VARIANT_LOKR;
    lo.rank = 2;
    peft_lora_options ld = PEFT_LORA_OPTIONS_INIT;
    ld.use_dora = 1;
    ld.rank = 2;
    if ((rc = peft_attach_ia3(m, &io, NULL)) || (rc = peft_step(m, &b, NULL)) || (rc = peft_detach(m)) ||
        (rc = peft_attach_vera(m, &vo, NULL)) || (rc = peft_step(m, &b, NULL)) || (rc = peft_detach(m)) ||
        (rc = peft_attach_norms(m, &no, NULL)) || (rc = peft_step(m, &b, NULL)) || (rc = peft_detach(m)) ||
        (rc = peft_attach_lora(m, &lo, NULL)) || (rc = peft_step(m, &b, NULL)) || (rc = peft_detach(m)) ||
        (rc = peft_attach_lora(m, &ld, NULL)) || (rc = peft_step(m, &b, NULL))) {
        peft_model_close(&m);
        return rc;
    }
    peft_model_close(&m);
    return rc;
}

/* Prompt tuning (with its session) and several adapters: load by name, combine, switch. */
static int scenario_prompt_several(void)
{
    peft_model *m = NULL;
    int32_t tok[8];
    peft_batch b;
    int rc = open_tiny_row(&m, tok, &b, 3, 2);
    if (rc)
        return rc;
    char pd[300], ld[300];
    snprintf(pd, sizeof pd, "%s/prompt", g_dir);
    snprintf(ld, sizeof ld, "%s/lora", g_dir);
    peft_prompt_options po = PEFT_PROMPT_OPTIONS_INIT;
    po.n_virtual = 3;
    peft_lora_options lo = PEFT_LORA_OPTIONS_INIT;
    lo.rank = 2;
    peft_session *s = NULL;
    float logits[48];
    const char *xy[2] = {"x", "y"};
    const double w[2] = {0.5, 0.5};
    peft_combine_options ties = PEFT_COMBINE_OPTIONS_INIT, dare = PEFT_COMBINE_OPTIONS_INIT;
    ties.combination = PEFT_COMBINE_TIES_SVD;
    ties.density = dare.density = 0.5;
    dare.combination = PEFT_COMBINE_DARE_TIES;
    if ((rc = peft_attach_prompt(m, &po, NULL)) || (rc = peft_step(m, &b, NULL)) ||
        (rc = peft_save_adapter(m, pd, NULL)) || (rc = peft_session_create(&s, m, 8)) ||
        (rc = peft_session_feed(s, tok, 2, logits)) || (rc = peft_detach(m)) || (rc = peft_load_adapter(m, pd)) ||
        (rc = peft_detach(m)) || (rc = peft_attach_lora(m, &lo, NULL)) || (rc = peft_save_adapter(m, ld, NULL)) ||
        (rc = peft_adapter_load(m, ld, "x")) || (rc = peft_adapter_load(m, pd, "p")) ||
        (rc = peft_adapter_combine(m, xy, w, 1, "y", PEFT_COMBINE_LINEAR, 0)) ||
        (rc = peft_adapter_combine(m, xy, w, 2, "z", PEFT_COMBINE_CAT, 0)) ||
        (rc = peft_adapter_combine(m, xy, w, 2, "v", PEFT_COMBINE_SVD, 2)) ||
        (rc = peft_adapter_combine_ex(m, xy, w, 2, "t", &ties)) || (rc = peft_adapter_combine_ex(m, xy, w, 2, "d", &dare)) ||
        (rc = peft_adapter_set(m, "z")) ||
        (rc = peft_step(m, &b, NULL)) || (rc = peft_adapter_set(m, "p")) || (rc = peft_step(m, &b, NULL)) ||
        (rc = peft_adapter_set(m, NULL)) || (rc = peft_adapter_delete(m, "x"))) {
        peft_session_free(&s);
        peft_model_close(&m);
        return rc;
    }
    peft_session_free(&s);
    peft_model_close(&m);
    return 0;
}

static const char *g_gguf;

static int scenario_gguf(void)
{
    peft_model *m = NULL;
    peft_open_options oo = PEFT_OPEN_OPTIONS_INIT;
    oo.n_threads = 1;
    int rc = peft_model_open(&m, g_gguf, &oo);
    peft_model_close(&m);
    return rc;
}

static const char *g_tokdir;

static int scenario_tokenizer(void)
{
    peft_tokenizer *t = NULL;
    int rc = peft_tokenizer_open(&t, g_tokdir);
    if (rc)
        return rc;
    int32_t ids[64];
    size_t n = 0, len = 0;
    char text[256];
    peft_chat_message msgs[2] = {{"user", "Hi there"}, {"assistant", "Once upon a time"}};
    const char *tmpl = "{% for m in messages %}{{ bos_token + '[' + m['role'] | upper + '] ' + m['content'] | trim }}"
                       "{% if not loop.last %}\n{% endif %}{% endfor %}";
    if (!(rc = peft_tokenize(t, "Once upon a time, 12 cats.", 26, PEFT_TOKENIZE_DEFAULT, ids, 64, &n)) &&
        !(rc = peft_detokenize(t, ids, n, PEFT_DETOKENIZE_DEFAULT, text, sizeof text, &len)))
        rc = peft_chat_render(t, tmpl, msgs, 2, 0, text, sizeof text, &len);
    peft_tokenizer_close(&t);
    return rc;
}

/* a byte-level BPE (GPT-2's alphabet, Qwen2's expression, NFC): written once, opened by the scenario */
static char g_bl_dir[64];

static void write_bytelevel(void)
{
    snprintf(g_bl_dir, sizeof g_bl_dir, "/tmp/peft-alloc-bl-XXXXXX");
    if (!mkdtemp(g_bl_dir))
        return;
    char p[128];
    snprintf(p, sizeof p, "%s/tokenizer.json", g_bl_dir);
    FILE *f = fopen(p, "w");
    if (!f)
        return;
    fputs("{\"added_tokens\": [{\"id\": 260, \"content\": \"<|end|>\", \"special\": true}], "
          "\"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
          "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?"
          "\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "
          "\"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}, "
          "\"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {",
          f);
    /* GPT-2's alphabet of the 256 bytes, then four merges */
    for (int b = 0, extra = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        int c = printable ? b : 256 + extra++;
        if (c == '"' || c == '\\')
            fprintf(f, "\"\\%c\": %d, ", c, b);
        else if (c < 0x80)
            fprintf(f, "\"%c\": %d, ", c, b);
        else
            fprintf(f, "\"%c%c\": %d, ", 0xc0 | c >> 6, 0x80 | (c & 0x3f), b);
    }
    fputs("\"ca\": 256, \"caf\": 257, \"\xc4\xa0" "d\": 258, \"on\": 259}, "
          "\"merges\": [\"c a\", \"ca f\", \"\xc4\xa0 d\", \"o n\"]}}", f);
    fclose(f);
}

static int scenario_bytelevel(void)
{
    peft_tokenizer *t = NULL;
    int rc = peft_tokenizer_open(&t, g_bl_dir);
    if (rc)
        return rc;
    int32_t ids[64];
    size_t n = 0, len = 0;
    char text[256];
    const char *s = "cafe\xcc\x81 don't 123<|end|>";
    if (!(rc = peft_tokenize(t, s, strlen(s), PEFT_TOKENIZE_DEFAULT, ids, 64, &n)))
        rc = peft_detokenize(t, ids, n, PEFT_DETOKENIZE_DEFAULT, text, sizeof text, &len);
    peft_tokenizer_close(&t);
    return rc;
}

/* Run a scenario counting, then failing each allocation in turn. */
static void inject(const char *name, int (*scenario)(void))
{
    g_count = g_live = 0;
    g_fail_at = 0;
    g_on = 1;
    int rc = scenario();
    g_on = 0;
    long total = g_count;
    CHECK_MSG(rc == 0, "%s without injection: %s", name, peft_last_error());
    CHECK_MSG(g_live == 0, "%s leaks %ld allocations without injection", name, g_live);
    long failed = 0, enomem = 0, other = 0, succeeded = 0;
    for (long k = 1; k <= total; k++) {
        g_count = g_live = 0;
        g_injected = 0;
        g_fail_at = k;
        g_on = 1;
        rc = scenario();
        g_on = 0;
        g_fail_at = 0;
        if (!g_injected)
            continue;
        if (rc == 0) {
            succeeded++; /* the allocation was optional (or retried) */
        } else {
            failed++;
            enomem += rc == PEFT_ENOMEM;
            other += rc != PEFT_ENOMEM;
            if (rc != PEFT_ENOMEM && getenv("PEFT_ALLOC_VERBOSE"))
                fprintf(stderr, "%s: allocation %ld: %s (%s)\n", name, k, peft_last_error(), peft_strerror(rc));
            /* out of memory is reported as such, also when it struck inside fopen */
            CHECK_MSG(rc == PEFT_ENOMEM && *peft_last_error(), "%s: allocation %ld: status %d, message '%s'", name,
                      k, rc, peft_last_error());
        }
        CHECK_MSG(g_live == 0, "%s: failing allocation %ld of %ld leaks %ld allocations (status %d: %s)", name,
                  k, total, g_live, rc, peft_last_error());
        CHECK_MSG(stray_files(g_dir) == 0, "%s: failing allocation %ld leaves temporary files", name, k);
        if (h_failures > 20)
            return;
    }
    printf("%s: %ld allocations; failing each: %ld clean errors (%ld PEFT_ENOMEM, %ld other), %ld runs that "
           "did without it (stdio buffers)\n",
           name, total, failed, enomem, other, succeeded);
    CHECK(total > 0 && failed > 0);
}

static int setup(void)
{
#ifdef SANITIZED
    return 0;
#endif
    snprintf(g_dir, sizeof g_dir, "/tmp/peft-alloc-XXXXXX");
    return mkdtemp(g_dir) != NULL;
}

static void cleanup(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
}

TEST(alloc_failures_train_save_load)
{
    if (!setup())
        SKIP("built with a sanitizer (it replaces malloc)");
    inject("open, attach, step, eval, save, checkpoint, load, merge, GGUF export, session", scenario_train);
    cleanup();
}

TEST(alloc_failures_other_methods)
{
    if (!setup())
        SKIP("built with a sanitizer (it replaces malloc)");
    inject("IA3, VeRA, norms, LoKr, DoRA", scenario_methods);
    inject("prompt tuning, several adapters combined and switched", scenario_prompt_several);
    cleanup();
}

TEST(alloc_failures_gguf_and_tokenizer)
{
    const char *sh = shared_dir();
    if (!sh)
        SKIP("no ../shared");
    if (!setup())
        SKIP("built with a sanitizer (it replaces malloc)");
    static char gguf[4200], tok[4200];
    snprintf(gguf, sizeof gguf, "%s/models/stories260K/stories260K-q8_0.gguf", sh);
    snprintf(tok, sizeof tok, "%s/models/stories260K", sh);
    g_gguf = gguf;
    g_tokdir = tok;
    inject("GGUF Q8_0 model open", scenario_gguf);
    inject("tokenizer open, encode, decode, chat template", scenario_tokenizer);
    write_bytelevel();
    inject("byte-level BPE open, NFC, encode, decode", scenario_bytelevel);
    char p[128];
    snprintf(p, sizeof p, "%s/tokenizer.json", g_bl_dir);
    remove(p);
    rmdir(g_bl_dir);
    cleanup();
}

static const struct h_case cases[] = {
    CASE(alloc_failures_train_save_load),
    CASE(alloc_failures_other_methods),
    CASE(alloc_failures_gguf_and_tokenizer),
};

TEST_MAIN(cases)
