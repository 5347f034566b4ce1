/* Tokenizers, inference sessions and generation, through the public API. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "peft/peft.h"

static void write_file(const char *path, const char *s)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    fputs(s, f);
    fclose(f);
}


/* A tiny reader for the golden file's {"text": "...", "ids": [...]} entries (JSON escapes). */
static const char *next_case(const char *p, char *text, int32_t *ids, size_t *n)
{
    p = strstr(p, "\"text\": \"");
    if (!p)
        return NULL;
    p += 9;
    size_t k = 0;
    while (*p != '"') {
        if (*p == '\\') {
            p++;
            char e = *p++;
            if (e == 'n') text[k++] = '\n';
            else if (e == 't') text[k++] = '\t';
            else text[k++] = e; /* the corpus uses only \n, \t, \", \\ */
        } else {
            text[k++] = *p++;
        }
    }
    text[k] = 0;
    p = strstr(p, "\"ids\": [") + 8;
    *n = 0;
    while (*p != ']') {
        char *e;
        ids[(*n)++] = (int32_t)strtol(p, &e, 10);
        p = e;
        while (*p == ',' || *p == ' ' || *p == '\n')
            p++;
    }
    return p;
}

static void sentencepiece_case(const char *rel)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", shared_dir(), rel);
    peft_tokenizer *t;
    CHECK_OK(peft_tokenizer_open(&t, path));
    if (!t)
        return;
    CHECK(peft_tokenizer_vocab_size(t) == 512 && peft_tokenizer_special(t, PEFT_TOKEN_BOS) == 1 &&
          peft_tokenizer_special(t, PEFT_TOKEN_EOS) == 2 && peft_tokenizer_special(t, PEFT_TOKEN_UNK) == 0);
    char *g = read_whole(test_data("tokenizer_golden.json"), NULL);
    CHECK(g != NULL);
    static char text[4096], back[4096];
    static int32_t want[2048], got[2048];
    size_t nw, ng, cases = 0;
    for (const char *p = g; p && (p = next_case(p, text, want, &nw)); cases++) {
        CHECK_OK(peft_tokenize(t, text, strlen(text), PEFT_TOKENIZE_NO_BOS, got, 2048, &ng));
        CHECK_MSG(ng == nw && memcmp(got, want, nw * sizeof *got) == 0, "ids differ for '%s'", text);
        /* lossless round trip */
        size_t len;
        CHECK_OK(peft_detokenize(t, got, ng, 0, back, sizeof back, &len));
        CHECK_MSG(len == strlen(text) && strcmp(back, text) == 0, "round trip of '%s' gave '%s'", text, back);
    }
    CHECK(cases >= 15);
    free(g);
    /* BOS by the tokenizer's settings (add_bos_token), EOS on request */
    CHECK_OK(peft_tokenize(t, "Hello", 5, PEFT_TOKENIZE_DEFAULT | PEFT_TOKENIZE_EOS, got, 2048, &ng));
    CHECK(ng >= 3 && got[0] == 1 && got[ng - 1] == 2);
    /* special tokens written in the text are matched, unless asked not to */
    CHECK_OK(peft_tokenize(t, "<s>Hi</s>", 9, PEFT_TOKENIZE_NO_BOS, got, 2048, &ng));
    CHECK(got[0] == 1 && got[ng - 1] == 2);
    size_t ng2;
    CHECK_OK(peft_tokenize(t, "<s>Hi</s>", 9, PEFT_TOKENIZE_NO_BOS | PEFT_TOKENIZE_NO_SPECIAL, got, 2048, &ng2));
    CHECK(ng2 > ng && got[0] != 1);
    /* buffer sizing */
    size_t need;
    CHECK_OK(peft_tokenize(t, "Hello world", 11, 0, NULL, 0, &need) == PEFT_ERANGE ? 0 : 1);
    CHECK(need > 2);
    CHECK(peft_tokenize(t, "Hello world", 11, 0, got, 1, &need) == PEFT_ERANGE);
    int32_t bad = 512;
    size_t len;
    CHECK(peft_detokenize(t, &bad, 1, 0, back, sizeof back, &len) == PEFT_EINVAL);
    peft_tokenizer_close(&t);
    CHECK(t == NULL);
}

TEST(tokenizer_matches_sentencepiece)
{
    if (!shared_dir())
        SKIP("../shared not present");
    sentencepiece_case("models/stories260K"); /* tokenizer.json */
}

TEST(gguf_vocab_matches_sentencepiece)
{
    if (!shared_dir())
        SKIP("../shared not present");
    sentencepiece_case("models/stories260K/stories260K-q8_0.gguf"); /* tokenizer.ggml.* scores */
}

/* tokenizer.ggml.add_space_prefix false (Gemma's GGUF files): no "▁" before the text and none
   stripped in decoding; a text with a leading space then tokenizes as the prefixed one does */
TEST(gguf_vocab_without_space_prefix)
{
    if (!shared_dir())
        SKIP("../shared not present");
    char path[4200], out[] = "/tmp/peft-nospace-XXXXXX";
    snprintf(path, sizeof path, "%s/models/stories260K/stories260K-q8_0.gguf", shared_dir());
    size_t len;
    char *g = read_whole(path, &len);
    int fd = mkstemp(out);
    CHECK(g != NULL && len > 24 && fd >= 0);
    if (!g || len <= 24 || fd < 0) {
        free(g);
        return;
    }
    /* the key first among the key/values (the tensors are not read for a vocabulary) */
    static const char key[] = "tokenizer.ggml.add_space_prefix";
    unsigned char kv[8 + sizeof key - 1 + 5];
    uint64_t kl = sizeof key - 1, nkv;
    uint32_t type = 7;
    memcpy(kv, &kl, 8);
    memcpy(kv + 8, key, kl);
    memcpy(kv + 8 + kl, &type, 4);
    kv[8 + kl + 4] = 0;
    memcpy(&nkv, g + 16, 8);
    nkv++;
    memcpy(g + 16, &nkv, 8);
    CHECK(write(fd, g, 24) == 24 && write(fd, kv, sizeof kv) == (ssize_t)sizeof kv &&
          write(fd, g + 24, len - 24) == (ssize_t)(len - 24));
    close(fd);
    peft_tokenizer *a = NULL, *b = NULL;
    CHECK_OK(peft_tokenizer_open(&a, path));
    CHECK_OK(peft_tokenizer_open(&b, out));
    if (a && b) {
        int32_t ia[64], ib[64];
        size_t na, nb;
        CHECK_OK(peft_tokenize(a, "Once upon a time", 16, PEFT_TOKENIZE_NO_BOS, ia, 64, &na));
        CHECK_OK(peft_tokenize(b, "Once upon a time", 16, PEFT_TOKENIZE_NO_BOS, ib, 64, &nb));
        CHECK(na > 0 && nb > 0 && ia[0] != ib[0]); /* "▁Once" against pieces of "Once" */
        CHECK_OK(peft_tokenize(b, " Once upon a time", 17, PEFT_TOKENIZE_NO_BOS, ib, 64, &nb));
        CHECK(nb == na && memcmp(ia, ib, na * sizeof *ia) == 0);
        char back[64];
        size_t bl;
        CHECK_OK(peft_detokenize(b, ib, nb, 0, back, sizeof back, &bl));
        CHECK(bl == 17 && !memcmp(back, " Once upon a time", 17)); /* the space kept */
    }
    peft_tokenizer_close(&a);
    peft_tokenizer_close(&b);
    unlink(out);
    free(g);
}

/* ---- byte-level BPE against Hugging Face tokenizers (tests/data/bytelevel/golden.txt) ---- */

typedef struct bl_case {
    char text[8192];
    size_t len;
    int32_t ids[4096], ids_special[4096];
    size_t n_ids, n_special;
} bl_case;

static size_t parse_ids(const char *p, int32_t *ids)
{
    size_t n = 0;
    while (*p) {
        char *e;
        long v = strtol(p, &e, 10);
        if (e == p)
            break;
        ids[n++] = (int32_t)v;
        p = e;
    }
    return n;
}

/* Run fn on each case of the golden file's section `name` with the tokenizer at tests/data/`tok`;
   returns the number of cases. */
static int bl_cases(const char *name, const char *tok,
                    void (*fn)(peft_tokenizer *t, const bl_case *c, const char *name))
{
    FILE *f = fopen(test_data("bytelevel/golden.txt"), "r");
    CHECK(f != NULL);
    if (!f)
        return 0;
    static char line[1 << 16];
    static bl_case c;
    peft_tokenizer *t = NULL;
    CHECK_OK(peft_tokenizer_open(&t, test_data(tok)));
    int in = 0, cases = 0;
    while (t && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (line[0] == 'N')
            in = !strcmp(line + 2, name);
        if (!in)
            continue;
        if (line[0] == 'T') {
            c.len = 0;
            for (const char *h = line + 2; h[0] && h[1] && c.len + 1 < sizeof c.text; h += 2) {
                char b[3] = {h[0], h[1], 0};
                c.text[c.len++] = (char)strtol(b, NULL, 16);
            }
            c.text[c.len] = 0;
        } else if (line[0] == 'I') {
            c.n_ids = parse_ids(line + 1, c.ids);
        } else if (line[0] == 'S') {
            c.n_special = parse_ids(line + 1, c.ids_special);
            fn(t, &c, name);
            cases++;
        }
    }
    fclose(f);
    peft_tokenizer_close(&t);
    return cases;
}

static void bl_check(peft_tokenizer *t, const bl_case *c, const char *name)
{
    static int32_t got[8192];
    static char back[16384];
    size_t ng, len;
    CHECK_OK(peft_tokenize(t, c->text, c->len, PEFT_TOKENIZE_NO_BOS, got, 8192, &ng));
    CHECK_MSG(ng == c->n_ids && memcmp(got, c->ids, ng * sizeof *got) == 0, "%s: ids differ for '%s'", name, c->text);
    CHECK_OK(peft_tokenize(t, c->text, c->len, PEFT_TOKENIZE_DEFAULT, got, 8192, &ng));
    CHECK_MSG(ng == c->n_special && memcmp(got, c->ids_special, ng * sizeof *got) == 0,
              "%s: ids with special tokens differ for '%s'", name, c->text);
    /* decoding: byte-level BPE is lossless (Qwen3's NFC, whitespace absorbed by lstrip/rstrip tokens and GPT-2's
       prefix space aside: there decoding then encoding again is stable) */
    CHECK_OK(peft_detokenize(t, c->ids, c->n_ids, PEFT_DETOKENIZE_SPECIAL, back, sizeof back, &len));
    if (strncmp(name, "qwen3", 5) != 0 && strcmp(name, "gpt2_prefix") != 0) {
        CHECK_MSG(len == c->len && memcmp(back, c->text, len) == 0, "%s: '%s' decodes as '%s'", name, c->text, back);
    } else {
        CHECK_OK(peft_tokenize(t, back, len, PEFT_TOKENIZE_NO_BOS, got, 8192, &ng));
        CHECK_MSG(ng == c->n_ids && memcmp(got, c->ids, ng * sizeof *got) == 0, "%s: '%s' does not re-encode", name,
                  back);
    }
}

/* the tokenizer.json directory, and (but for GPT-2's prefix space, which GGUF cannot say) the same
   vocabulary as llama.cpp's converter writes it into a GGUF file */
static void bytelevel_golden(const char *name)
{
    char rel[256];
    snprintf(rel, sizeof rel, "bytelevel/%s", name);
    CHECK(bl_cases(name, rel, bl_check) >= 350);
    if (strcmp(name, "gpt2_prefix") != 0 && strcmp(name, "qwen3_strip") != 0) { /* GGUF has no strip flags */
        snprintf(rel, sizeof rel, "bytelevel/%s.gguf", name);
        CHECK(bl_cases(name, rel, bl_check) >= 350);
    }
}

TEST(bytelevel_matches_hf_qwen3) { bytelevel_golden("qwen3"); }
TEST(bytelevel_matches_hf_llama3) { bytelevel_golden("llama3"); }
TEST(bytelevel_matches_hf_added_token_flags) { bytelevel_golden("qwen3_strip"); }
TEST(bytelevel_matches_hf_o200k) { bytelevel_golden("gptoss"); }
TEST(bytelevel_matches_hf_tekken) { bytelevel_golden("tekken"); }
/* SentencePiece-style BPE with byte fallback, cut from Llama 2's and Gemma 3's tokenizer.json */
TEST(sentencepiece_style_matches_hf_llama2_gemma3)
{
    CHECK(bl_cases("llama2", "bytelevel/llama2", bl_check) >= 350);
    CHECK(bl_cases("gemma3", "bytelevel/gemma3", bl_check) >= 350);
}
TEST(bytelevel_matches_hf_smollm) { bytelevel_golden("smollm"); }
TEST(bytelevel_matches_hf_gpt2_prefix) { bytelevel_golden("gpt2_prefix"); }

TEST(bytelevel_gguf_vocabulary)
{
    /* what the GGUF file says: BOS/EOS ids, add_bos_token, control tokens */
    peft_tokenizer *t;
    CHECK_OK(peft_tokenizer_open(&t, test_data("bytelevel/llama3.gguf")));
    CHECK(peft_tokenizer_vocab_size(t) == 4108 && peft_tokenizer_special(t, PEFT_TOKEN_BOS) == 4096 &&
          peft_tokenizer_special(t, PEFT_TOKEN_EOS) == 4097);
    int32_t ids[16];
    size_t n;
    CHECK_OK(peft_tokenize(t, "<|end_of_text|>", 15, PEFT_TOKENIZE_DEFAULT, ids, 16, &n));
    CHECK(n == 2 && ids[0] == 4096 && ids[1] == 4097);
    peft_tokenizer_close(&t);
    /* hostile files: an unknown pre-tokenizer, a merge outside the vocabulary, a truncated file */
    size_t len;
    char *g = read_whole(test_data("bytelevel/qwen3.gguf"), &len);
    CHECK(g != NULL);
    if (!g)
        return;
    char path[] = "/tmp/peft-blgguf-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    char *pre = memmem(g, len, "qwen2", 5), *merge = memmem(g, len, "\xc4\xa0 \xc4\xa0", 5);
    CHECK(pre != NULL && merge != NULL);
    if (fd < 0 || !pre || !merge) {
        free(g);
        return;
    }
    memcpy(pre, "qwen9", 5);
    CHECK(write(fd, g, len) == (ssize_t)len);
    CHECK(peft_tokenizer_open(&t, path) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "qwen9"));
    memcpy(pre, "qwen2", 5);
    merge[0] = 'Z'; /* "Z\xa0 \xc4\xa0": not a piece */
    CHECK(pwrite(fd, g, len, 0) == (ssize_t)len);
    CHECK(peft_tokenizer_open(&t, path) == PEFT_EFORMAT && strstr(peft_last_error(), "outside the vocabulary"));
    CHECK(ftruncate(fd, (off_t)(len / 2)) == 0);
    CHECK(peft_tokenizer_open(&t, path) == PEFT_EFORMAT);
    CHECK(t == NULL);
    close(fd);
    unlink(path);
    free(g);
}

TEST(bytelevel_special_tokens)
{
    peft_tokenizer *t;
    int32_t ids[64];
    size_t n;
    /* Llama 3: BOS by the post-processor's template, EOS named by tokenizer_config.json */
    CHECK_OK(peft_tokenizer_open(&t, test_data("bytelevel/llama3")));
    int32_t bos = peft_tokenizer_special(t, PEFT_TOKEN_BOS), eos = peft_tokenizer_special(t, PEFT_TOKEN_EOS);
    CHECK(bos == 4096 && eos == 4097);
    size_t n2;
    CHECK_OK(peft_tokenize(t, "Hi", 2, PEFT_TOKENIZE_DEFAULT | PEFT_TOKENIZE_EOS, ids, 64, &n));
    CHECK(n >= 3 && ids[0] == bos && ids[n - 1] == eos);
    CHECK_OK(peft_tokenize(t, "Hi", 2, PEFT_TOKENIZE_NO_BOS, ids, 64, &n2));
    CHECK(n2 == n - 2 && ids[0] != bos);
    peft_tokenizer_close(&t);
    /* Qwen3: no BOS; "<|im_end|>" is the EOS; special tokens in the text matched unless asked not to */
    CHECK_OK(peft_tokenizer_open(&t, test_data("bytelevel/qwen3")));
    CHECK(peft_tokenizer_special(t, PEFT_TOKEN_BOS) == -1);
    eos = peft_tokenizer_special(t, PEFT_TOKEN_EOS);
    const char *chat = "<|im_start|>user<|im_end|>";
    CHECK_OK(peft_tokenize(t, chat, strlen(chat), PEFT_TOKENIZE_DEFAULT, ids, 64, &n));
    CHECK(n >= 3 && ids[n - 1] == eos && ids[0] == eos - 1 && ids[1] < 4096); /* "<|im_start|>", a word, EOS */
    size_t n_plain;
    CHECK_OK(peft_tokenize(t, chat, strlen(chat), PEFT_TOKENIZE_NO_SPECIAL, ids, 64, &n_plain));
    CHECK(n_plain > 6);
    for (size_t i = 0; i < n_plain; i++)
        CHECK(ids[i] != eos);
    /* ... but the non-special added tokens still do ("<think>" in Qwen3) */
    CHECK_OK(peft_tokenize(t, "a<think>b", 9, PEFT_TOKENIZE_NO_SPECIAL, ids, 64, &n_plain));
    CHECK(n_plain == 3 && ids[1] == 4120);
    /* special tokens are skipped in decoding unless asked for */
    char back[128];
    size_t len;
    CHECK_OK(peft_tokenize(t, chat, strlen(chat), PEFT_TOKENIZE_DEFAULT, ids, 64, &n));
    CHECK_OK(peft_detokenize(t, ids, n, 0, back, sizeof back, &len));
    CHECK(strcmp(back, "user") == 0);
    CHECK_OK(peft_detokenize(t, ids, n, PEFT_DETOKENIZE_SPECIAL, back, sizeof back, &len));
    CHECK(strcmp(back, chat) == 0);
    /* malformed UTF-8 goes through byte for byte */
    const char bad[] = "a\xc3\x28\xff\xe2\x82";
    CHECK_OK(peft_tokenize(t, bad, sizeof bad - 1, 0, ids, 64, &n));
    CHECK_OK(peft_detokenize(t, ids, n, 0, back, sizeof back, &len));
    CHECK(len == sizeof bad - 1 && memcmp(back, bad, len) == 0);
    peft_tokenizer_close(&t);
}



/* chat templates in their own files: chat_template.jinja first, then tokenizer_config.json's, then
   chat_template.json */
TEST(chat_template_files)
{
    char dir[] = "/tmp/peft-ct-XXXXXX", p[256], cmd[512];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cmd, sizeof cmd, "cp '%s'/* '%s'/", test_data("bytelevel/qwen3"), dir);
    CHECK(system(cmd) == 0);
    peft_tokenizer *t;
    CHECK_OK(peft_tokenizer_open(&t, dir));
    CHECK(peft_tokenizer_chat_template(t) == NULL);
    peft_tokenizer_close(&t);
    snprintf(p, sizeof p, "%s/chat_template.json", dir);
    write_file(p, "{\"chat_template\": \"{{ messages[0].content }}|json\"}");
    CHECK_OK(peft_tokenizer_open(&t, dir));
    CHECK(t && peft_tokenizer_chat_template(t) &&
          !strcmp(peft_tokenizer_chat_template(t), "{{ messages[0].content }}|json"));
    peft_tokenizer_close(&t);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    write_file(p, "{\"eos_token\": \"<|im_end|>\", \"chat_template\": \"config\"}");
    CHECK_OK(peft_tokenizer_open(&t, dir));
    CHECK(t && !strcmp(peft_tokenizer_chat_template(t), "config"));
    peft_tokenizer_close(&t);
    snprintf(p, sizeof p, "%s/chat_template.jinja", dir);
    write_file(p, "{{ messages[0].content }}|jinja");
    CHECK_OK(peft_tokenizer_open(&t, dir));
    CHECK(t && !strcmp(peft_tokenizer_chat_template(t), "{{ messages[0].content }}|jinja"));
    peft_chat_message m = {"user", "hi"};
    char out[64];
    size_t len;
    CHECK_OK(peft_chat_render(t, NULL, &m, 1, 0, out, sizeof out, &len));
    CHECK(!strcmp(out, "hi|jinja"));
    peft_tokenizer_close(&t);
    /* a malformed chat_template.json is an error, not a silent absence */
    remove(p);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    write_file(p, "{}");
    snprintf(p, sizeof p, "%s/chat_template.json", dir);
    write_file(p, "{\"chat_template\": ");
    CHECK(peft_tokenizer_open(&t, dir) == PEFT_EFORMAT && t == NULL);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

TEST(tokenizer_unsupported_and_malformed)
{
    char dir[] = "/tmp/peft-tok-XXXXXX", p[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    peft_tokenizer *t = NULL;
    /* byte-level BPE: a Split expression that is none of the known ones, other behaviours */
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                  "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", "
                  "\"pattern\": {\"Regex\": \"\\\\p{L}+\"}, \"behavior\": \"Isolated\"}, {\"type\": \"ByteLevel\", "
                  "\"use_regex\": false}]}}");
    CHECK(peft_tokenizer_open(&t, dir) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "\\p{L}+"));
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                  "\"pre_tokenizer\": {\"type\": \"Digits\", \"individual_digits\": false}}");
    CHECK(peft_tokenizer_open(&t, dir) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "individual_digits"));
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                  "\"normalizer\": {\"type\": \"NFKC\"}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
    CHECK(peft_tokenizer_open(&t, dir) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "NFKC"));
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                  "\"decoder\": {\"type\": \"ByteLevel\"}}");
    CHECK(peft_tokenizer_open(&t, dir) == PEFT_EUNSUPPORTED && strstr(peft_last_error(), "ByteLevel decoder"));
    /* a ByteLevel whose alphabet lacks bytes: characters outside the vocabulary are dropped, never a crash */
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]},"
                  "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
    CHECK_OK(peft_tokenizer_open(&t, dir));
    {
        int32_t got[8];
        size_t ng;
        CHECK_OK(peft_tokenize(t, "ab\xff\xfe\x80 ab", 8, 0, got, 8, &ng));
        CHECK(ng == 2 && got[0] == 2 && got[1] == 2);
        peft_tokenizer_close(&t);
    }
    write_file(p, "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
    CHECK(peft_tokenizer_open(&t, p) == PEFT_EUNSUPPORTED);
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 5}, \"merges\": []}}");
    CHECK(peft_tokenizer_open(&t, p) == PEFT_EFORMAT && strstr(peft_last_error(), "dense"));
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]}}");
    CHECK(peft_tokenizer_open(&t, p) == PEFT_EFORMAT && strstr(peft_last_error(), "outside the vocabulary"));
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0");
    CHECK(peft_tokenizer_open(&t, p) == PEFT_EFORMAT);
    /* a minimal valid BPE: merges by rank */
    write_file(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4, "
                  "\"abc\": 5}, \"merges\": [[\"b\", \"c\"], [\"a\", \"b\"], [\"a\", \"bc\"]]}}");
    CHECK_OK(peft_tokenizer_open(&t, p));
    int32_t ids[8];
    size_t n;
    CHECK_OK(peft_tokenize(t, "abcab", 5, 0, ids, 8, &n));
    CHECK(n == 2 && ids[0] == 5 && ids[1] == 3); /* "b c" (rank 0) before "a b", then "a bc" */
    peft_tokenizer_close(&t);
    CHECK(peft_tokenizer_open(&t, "/nonexistent/tok") == PEFT_ENOTFOUND);
    remove(p);
    rmdir(dir);
}

/* Feeding a session token by token gives the same losses as the batched forward. */
static void session_vs_forward_with(const char *model, const char *adapter)
{
    int with_adapter = adapter != NULL;
    peft_model *m;
    CHECK_OK(peft_model_open(&m, model, NULL));
    if (with_adapter)
        CHECK_OK(peft_load_adapter(m, adapter));
    int32_t tok[20];
    for (int i = 0; i < 20; i++)
        tok[i] = (i * 11 + 7) % 48;
    peft_batch b = {PEFT_BATCH_VERSION, tok, NULL, 1, 20, NULL};
    peft_eval_result r = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(m, &b, &r));
    peft_session *s;
    CHECK_OK(peft_session_create(&s, m, 20));
    float logits[48];
    double sum = 0;
    for (int i = 0; i + 1 < 20; i++) {
        CHECK_OK(peft_session_feed(s, &tok[i], 1, logits));
        sum += logits_nll(logits, 48, tok[i + 1]);
    }
    CHECK(peft_session_length(s) == 19);
    CHECK_CLOSE(sum, r.loss_sum, 1e-5);
    CHECK(peft_session_feed(s, tok, 2, NULL) == PEFT_ERANGE); /* 19 + 2 > 20 */
    CHECK_OK(peft_session_reset(s));
    CHECK(peft_session_length(s) == 0);
    if (with_adapter) {
        /* disabled adapter = the base model */
        peft_model *base;
        CHECK_OK(peft_model_open(&base, model, NULL));
        peft_eval_result rb = PEFT_EVAL_RESULT_INIT, rd = PEFT_EVAL_RESULT_INIT;
        CHECK_OK(peft_eval(base, &b, &rb));
        CHECK_OK(peft_adapter_enable(m, 0));
        CHECK_OK(peft_eval(m, &b, &rd));
        CHECK(rb.loss_sum == rd.loss_sum && rd.loss_sum != r.loss_sum);
        CHECK(peft_step(m, &b, NULL) == PEFT_ESTATE);
        CHECK_OK(peft_adapter_enable(m, 1));
        peft_model_close(&base);
    }
    peft_session_free(&s);
    CHECK(s == NULL);
    peft_model_close(&m);
}

static void session_vs_forward(const char *model, int with_adapter)
{
    session_vs_forward_with(model, with_adapter ? test_data("tiny/all_linear/adapter") : NULL);
}

TEST(session_matches_forward_base) { session_vs_forward(test_data("tiny"), 0); }
/* Qwen2's biases and Qwen3's q/k norms in the one-position path too */
TEST(session_matches_forward_qwen2_qwen3)
{
    session_vs_forward_with(test_data("tiny_qwen2"), test_data("tiny_qwen2/all_linear/adapter"));
    session_vs_forward_with(test_data("tiny_qwen3"), test_data("tiny_qwen3/all_linear/adapter"));
    session_vs_forward_with(test_data("tiny_llama_bias"), test_data("tiny_llama_bias/all_linear/adapter"));
}
/* Gemma 3 and 2: scaled embeddings, four norms a layer, GeGLU, the query scalar, sliding layers with
   their own RoPE base */
TEST(session_matches_forward_gemma)
{
    session_vs_forward_with(test_data("tiny_gemma3"), NULL);
    session_vs_forward_with(test_data("tiny_gemma3"), test_data("tiny_gemma3/all_linear/adapter"));
    /* Gemma 2's soft-caps */
    session_vs_forward_with(test_data("tiny_gemma2"), test_data("tiny_gemma2/all_linear/adapter"));
    /* tuned norms: all four of every layer (LN tuning), those after attention and the MLP
       beside LoRA */
    session_vs_forward_with(test_data("tiny_gemma3"), test_data("tiny_gemma3/norms_all/adapter"));
    session_vs_forward_with(test_data("tiny_gemma2"), test_data("tiny_gemma2/lora_post_norms/adapter"));
}
/* SmolLM3's layer without RoPE, Granite's multipliers */
TEST(session_matches_forward_smollm3)
{
    session_vs_forward_with(test_data("tiny_smollm3"), test_data("tiny_smollm3/all_linear/adapter"));
    /* and Granite's multipliers */
    session_vs_forward_with(test_data("tiny_granite"), test_data("tiny_granite/all_linear/adapter"));
    session_vs_forward_with(test_data("tiny_phi3"), test_data("tiny_phi3/all_linear/adapter"));
    session_vs_forward_with(test_data("tiny_phi3"), test_data("tiny_phi3/ia3/adapter"));
}
TEST(session_matches_forward_adapter) { session_vs_forward(test_data("tiny"), 1); }

/* A copy of test model `base` (weights linked) whose config.json gains `extra` members (a
   "use_sliding_window" there replaces the model's own); a non-NULL arch replaces its
   model_type "llama". */
static int model_variant(char *dir, const char *base, const char *extra, const char *arch)
{
    char path[300], src[4096];
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/config.json", base);
    FILE *in = fopen(test_data(path), "rb");
    size_t n = in ? fread(src, 1, sizeof src - 1, in) : 0;
    if (in)
        fclose(in);
    src[n] = 0;
    char *sw = strstr(src, ",\n  \"use_sliding_window\": false");
    if (sw && strstr(extra, "use_sliding_window"))
        memset(sw, ' ', strlen(",\n  \"use_sliding_window\": false"));
    char *brace = strchr(src, '{'), *mt = strstr(src, "\"model_type\": \"llama\"");
    if (arch && mt) { /* blank the member out; the new one comes with extra */
        memset(mt, ' ', strlen("\"model_type\": \"llama\""));
        char *comma = strchr(mt, ',');
        if (comma)
            *comma = ' ';
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *out = brace ? fopen(path, "wb") : NULL;
    if (!out)
        return -1;
    fprintf(out, "{%s%s%s%s,%s", extra, arch ? ", \"model_type\": \"" : "", arch ? arch : "", arch ? "\"" : "",
            brace + 1);
    fclose(out);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    char weights[300], *target;
    snprintf(weights, sizeof weights, "%s/model.safetensors", base);
    if (!(target = realpath(test_data(weights), NULL)))
        return -1;
    int rc = symlink(target, path);
    free(target);
    return rc;
}

static int tiny_variant(char *dir, const char *extra, const char *arch) { return model_variant(dir, "tiny", extra, arch); }

/* The loss of 20 tokens under the tiny model and a variant differ. */
static void variant_changes_loss(const char *dir)
{
    peft_model *a, *b;
    CHECK_OK(peft_model_open(&a, dir, NULL));
    CHECK_OK(peft_model_open(&b, test_data("tiny"), NULL));
    int32_t tok[20];
    for (int i = 0; i < 20; i++)
        tok[i] = (i * 5 + 3) % 48;
    peft_batch bt = {PEFT_BATCH_VERSION, tok, NULL, 1, 20, NULL};
    peft_eval_result ra = PEFT_EVAL_RESULT_INIT, rb = PEFT_EVAL_RESULT_INIT;
    CHECK_OK(peft_eval(a, &bt, &ra));
    CHECK_OK(peft_eval(b, &bt, &rb));
    CHECK(fabs(ra.loss_sum - rb.loss_sum) > 1e-6);
    peft_model_close(&a);
    peft_model_close(&b);
}

/* The tiny model with Llama 3's rope_scaling: the session's per-position rotation uses the
   same scaled frequencies as the batched forward; and the scaling changes the loss. */
TEST(session_matches_forward_rope_scaling)
{
    char dir[] = "/tmp/peft-rope-XXXXXX";
    CHECK(tiny_variant(dir, "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
                            "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 16}", NULL) == 0);
    session_vs_forward(dir, 0);
    variant_changes_loss(dir);
    model_dir_remove(dir);
}

/* As Mistral with a sliding window of 5: the session attends to the same window as the
   batched forward, and the window changes the loss of 20 tokens. */
TEST(session_matches_forward_sliding_window)
{
    char dir[] = "/tmp/peft-swa-XXXXXX";
    CHECK(tiny_variant(dir, "\"sliding_window\": 5", "mistral") == 0);
    session_vs_forward(dir, 0);
    variant_changes_loss(dir);
    peft_model *m;
    CHECK_OK(peft_model_open(&m, dir, NULL));
    peft_model_info in = {.version = PEFT_MODEL_INFO_VERSION};
    CHECK_OK(peft_model_get_info(m, &in));
    CHECK(strcmp(in.architecture, "mistral") == 0);
    peft_model_close(&m);
    model_dir_remove(dir);
    /* Qwen2's window on the layers from max_window_layers on: the session's attention per layer */
    char qdir[] = "/tmp/peft-swa-XXXXXX";
    CHECK(model_variant(qdir, "tiny_qwen2", "\"use_sliding_window\": true, \"sliding_window\": 4, \"max_window_layers\": 1",
                        NULL) == 0);
    session_vs_forward_with(qdir, test_data("tiny_qwen2/all_linear/adapter"));
    model_dir_remove(qdir);
}

TEST(greedy_generation_matches_reference)
{
    if (!shared_dir())
        SKIP("../shared not present");
    char path[4200];
    snprintf(path, sizeof path, "%s/models/stories260K", shared_dir());
    peft_model *m;
    peft_tokenizer *t;
    CHECK_OK(peft_model_open(&m, path, NULL));
    CHECK_OK(peft_tokenizer_open(&t, path));
    if (!m || !t)
        return;
    peft_session *s;
    CHECK_OK(peft_session_create(&s, m, 64));
    int32_t ids[64] = {1};
    float logits[512];
    CHECK_OK(peft_session_feed(s, ids, 1, logits));
    int n = 1;
    while (n < 64) {
        int32_t best = 0;
        for (int v = 1; v < 512; v++)
            if (logits[v] > logits[best])
                best = v;
        ids[n++] = best;
        if (n < 64)
            CHECK_OK(peft_session_feed(s, &best, 1, logits));
    }
    char text[1024];
    size_t len;
    CHECK_OK(peft_detokenize(t, ids, (size_t)n, 0, text, sizeof text, &len));
    const char *ref = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
                      "One day, she saw a big, red ball. She wanted to play with it, but it was too high.";
    CHECK_MSG(strncmp(text, ref, strlen(text) < strlen(ref) ? strlen(text) : strlen(ref)) == 0 && len > 150,
              "generated: %s", text);
    peft_session_free(&s);
    peft_tokenizer_close(&t);
    peft_model_close(&m);
}

static const struct h_case cases[] = {
    CASE(tokenizer_matches_sentencepiece), CASE(bytelevel_matches_hf_qwen3), CASE(bytelevel_matches_hf_llama3), CASE(bytelevel_matches_hf_added_token_flags), CASE(bytelevel_matches_hf_o200k), CASE(bytelevel_matches_hf_tekken), CASE(sentencepiece_style_matches_hf_llama2_gemma3),
    CASE(bytelevel_matches_hf_smollm), CASE(bytelevel_matches_hf_gpt2_prefix), CASE(bytelevel_special_tokens), CASE(bytelevel_gguf_vocabulary), CASE(chat_template_files),
    CASE(gguf_vocab_matches_sentencepiece), CASE(gguf_vocab_without_space_prefix), CASE(tokenizer_unsupported_and_malformed),
    CASE(session_matches_forward_base), CASE(session_matches_forward_qwen2_qwen3), CASE(session_matches_forward_gemma), CASE(session_matches_forward_smollm3), CASE(session_matches_forward_adapter), CASE(session_matches_forward_rope_scaling), CASE(session_matches_forward_sliding_window),
    CASE(greedy_generation_matches_reference),
};
TEST_MAIN(cases)
