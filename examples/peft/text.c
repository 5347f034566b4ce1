/*
 * Training and evaluation data: uint32 token files, plain text (.txt: one
 * document per paragraph or per line) and JSONL (.jsonl: {"text": ...} or
 * {"prompt": ..., "completion": ...} with the loss masked on the prompt).
 * Documents are packed into a stream cut into windows, or padded one per window.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int push(tokens *t, size_t *cap, int32_t id, int32_t label, int32_t doc)
{
    if (t->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4096;
        int32_t *ni = realloc(t->ids, nc * sizeof *ni), *nl, *nd;
        if (!ni)
            return -1;
        t->ids = ni;
        nl = realloc(t->labels, nc * sizeof *nl);
        if (!nl)
            return -1;
        t->labels = nl;
        nd = realloc(t->docs, nc * sizeof *nd);
        if (!nd)
            return -1;
        t->docs = nd;
        *cap = nc;
    }
    t->ids[t->n] = id;
    t->labels[t->n] = label;
    t->docs[t->n] = doc;
    t->n++;
    return 0;
}

struct doc_ctx {
    const peft_tokenizer *tok;
    tokens *out;
    size_t cap;
    int T, pad, any_mask;
    int32_t pad_id, doc;
    size_t truncated;
};

/* Add one document. With a prompt, prompt + text is tokenized as one string and the
   loss is masked on the first len(tokenize(prompt)) positions (as TRL does), so the
   completion is tokenized in context. */
static int add_doc(struct doc_ctx *c, const char *prompt, size_t plen, const char *text, size_t tlen, int eos)
{
    size_t np = 0, n = 0;
    int32_t *ids = NULL;
    char *joined = NULL;
    int rc = 0;
    if (prompt) {
        joined = malloc(plen + tlen + 1);
        if (!joined)
            return -1;
        memcpy(joined, prompt, plen);
        memcpy(joined + plen, text, tlen);
        peft_tokenize(c->tok, prompt, plen, 0, NULL, 0, &np);
        text = joined;
        tlen += plen;
    }
    int flags = eos ? PEFT_TOKENIZE_EOS : 0;
    /* usually at most one id per byte plus BOS and EOS: one pass; resize if not */
    size_t cap = tlen + 3;
    ids = malloc(cap * sizeof *ids);
    int trc = ids ? peft_tokenize(c->tok, text, tlen, flags, ids, cap, &n) : PEFT_ENOMEM;
    if (trc == PEFT_ERANGE) {
        int32_t *bigger = realloc(ids, (n + 1) * sizeof *ids);
        trc = bigger ? peft_tokenize(c->tok, text, tlen, flags, bigger, n + 1, &n) : PEFT_ENOMEM;
        if (bigger)
            ids = bigger;
    }
    if (trc)
        rc = -1;
    size_t start = c->out->n;
    for (size_t i = 0; i < n && !rc; i++)
        rc = push(c->out, &c->cap, ids[i], i < np ? -100 : ids[i], c->doc);
    if (!rc && c->pad) {
        if (n > (size_t)c->T) {
            c->out->n = start + (size_t)c->T;
            c->truncated++;
        }
        while (!rc && c->out->n < start + (size_t)c->T)
            rc = push(c->out, &c->cap, c->pad_id, -100, c->doc);
    }
    c->doc++;
    free(ids);
    free(joined);
    if (rc)
        fprintf(stderr, "peft: tokenizing failed: %s\n", peft_last_error());
    return rc;
}

static void trim(const char **s, size_t *n)
{
    while (*n && isspace((unsigned char)**s))
        (*s)++, (*n)--;
    while (*n && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

/* Minimal JSON string reader for one JSONL field: returns a malloc'ed UTF-8 string. */
static char *json_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(line, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (isspace((unsigned char)*p))
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (isspace((unsigned char)*p))
        p++;
    if (*p != '"')
        return NULL;
    p++;
    char *out = malloc(strlen(p) * 4 + 1), *o = out;
    if (!out)
        return NULL;
    while (*p && *p != '"') {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        p++;
        char e = *p++;
        switch (e) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 0; i < 4 && *p; i++, p++)
                cp = cp * 16 + (unsigned)(isdigit((unsigned char)*p) ? *p - '0' : (tolower((unsigned char)*p) - 'a' + 10));
            if (cp >= 0xd800 && cp <= 0xdbff && p[0] == '\\' && p[1] == 'u') {
                unsigned lo = 0;
                p += 2;
                for (int i = 0; i < 4 && *p; i++, p++)
                    lo = lo * 16 + (unsigned)(isdigit((unsigned char)*p) ? *p - '0' : (tolower((unsigned char)*p) - 'a' + 10));
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (cp < 0x80) *o++ = (char)cp;
            else if (cp < 0x800) { *o++ = (char)(0xc0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3f)); }
            else if (cp < 0x10000) { *o++ = (char)(0xe0 | (cp >> 12)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f)); }
            else { *o++ = (char)(0xf0 | (cp >> 18)); *o++ = (char)(0x80 | ((cp >> 12) & 0x3f)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f)); }
            break;
        }
        default: *o++ = e; break;
        }
    }
    *o = '\0';
    return out;
}

int data_load(tokens *t, const char *path, const data_options *o)
{
    t->ids = t->labels = t->docs = NULL;
    t->n = 0;
    t->padded = 0;
    int is_txt = ends_with(path, ".txt"), is_jsonl = ends_with(path, ".jsonl");
    if (!is_txt && !is_jsonl) {
        if (tokens_load(t, path, o->vocab))
            return -1;
        if (o->split_at_bos && t->n) {
            t->docs = malloc(t->n * sizeof *t->docs);
            if (!t->docs) {
                tokens_free(t);
                return -1;
            }
            int32_t d = 0;
            for (size_t i = 0; i < t->n; i++)
                t->docs[i] = d += (i > 0 && t->ids[i] == o->bos);
        }
        return 0;
    }
    if (!o->tokenizer) {
        fprintf(stderr, "peft: %s is text, but no tokenizer was found (--tokenizer PATH)\n", path);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    char *text = malloc((size_t)size + 1);
    if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        free(text);
        fprintf(stderr, "peft: %s: read failed\n", path);
        return -1;
    }
    fclose(f);
    text[size] = '\0';
    struct doc_ctx c = {o->tokenizer, t, 0, o->seq, o->pad, 0, 0, 0, 0};
    c.pad_id = peft_tokenizer_special(o->tokenizer, PEFT_TOKEN_EOS);
    if (c.pad_id < 0)
        c.pad_id = 0;
    t->padded = o->pad;
    int rc = 0, by_line = is_jsonl || (o->split && !strcmp(o->split, "line"));
    size_t docs = 0;
    const char *p = text, *end = text + size;
    while (p < end && !rc) {
        const char *q;
        if (by_line) {
            q = memchr(p, '\n', (size_t)(end - p));
            if (!q)
                q = end;
        } else {
            /* a paragraph ends at a blank line */
            q = p;
            for (;;) {
                const char *nl = memchr(q, '\n', (size_t)(end - q));
                if (!nl) {
                    q = end;
                    break;
                }
                const char *r = nl + 1;
                while (r < end && (*r == ' ' || *r == '\t' || *r == '\r'))
                    r++;
                if (r >= end || *r == '\n') {
                    q = nl;
                    break;
                }
                q = nl + 1;
            }
        }
        const char *s = p;
        size_t n = (size_t)(q - p);
        p = q < end ? q + 1 : end;
        trim(&s, &n);
        if (!n)
            continue;
        docs++;
        if (!is_jsonl) {
            rc = add_doc(&c, NULL, 0, s, n, o->eos);
            continue;
        }
        char *line = strndup(s, n);
        char *tx = line ? json_field(line, "text") : NULL, *pr = NULL, *co = NULL;
        if (tx) {
            rc = add_doc(&c, NULL, 0, tx, strlen(tx), o->eos);
        } else if (line && (pr = json_field(line, "prompt")) && (co = json_field(line, "completion"))) {
            rc = add_doc(&c, pr, strlen(pr), co, strlen(co), 1);
        } else {
            fprintf(stderr, "peft: %s: document %zu has neither \"text\" nor \"prompt\"/\"completion\" "
                            "(chat \"messages\" are not supported yet)\n", path, docs);
            rc = -1;
        }
        free(tx);
        free(pr);
        free(co);
        free(line);
    }
    free(text);
    if (!rc && c.truncated)
        fprintf(stderr, "peft: %s: %zu of %zu documents were longer than --seq %d and were truncated\n", path,
                c.truncated, docs, o->seq);
    if (!rc && t->n == 0) {
        fprintf(stderr, "peft: %s: no documents\n", path);
        rc = -1;
    }
    if (!rc && (o->cross_doc || o->pad)) {
        free(t->docs); /* padded windows hold one document each already */
        t->docs = NULL;
    }
    if (rc)
        tokens_free(t);
    return rc;
}
