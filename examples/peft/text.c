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

/* Append one document's ids (an id i < 0 stands for token -1 - i with its label masked), padded
   or truncated to one window with --pad. */
static int push_doc(struct doc_ctx *c, const int32_t *ids, size_t n)
{
    int rc = 0;
    size_t start = c->out->n;
    for (size_t i = 0; i < n && !rc; i++)
        rc = push(c->out, &c->cap, ids[i] < 0 ? -1 - ids[i] : ids[i], ids[i] < 0 ? -100 : ids[i], c->doc);
    if (!rc && c->pad) {
        if (n > (size_t)c->T) {
            c->out->n = start + (size_t)c->T;
            c->truncated++;
        }
        while (!rc && c->out->n < start + (size_t)c->T)
            rc = push(c->out, &c->cap, c->pad_id, -100, c->doc);
    }
    c->doc++;
    return rc;
}

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
    for (size_t i = 0; i < n && !rc; i++)
        if (i < np)
            ids[i] = -1 - ids[i]; /* masked: label -100 */
    if (!rc)
        rc = push_doc(c, ids, n);
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

/* A JSON string at p (at its opening quote): *out receives it decoded (malloc'ed UTF-8);
   returns the position after the closing quote, or NULL if malformed. */
static const char *read_string(const char *p, char **out)
{
    *out = NULL;
    if (*p != '"')
        return NULL;
    p++;
    char *buf = malloc(strlen(p) * 4 + 1), *o = buf;
    if (!buf)
        return NULL;
    while (*p && *p != '"') {
        if (*p != '\\') {
            *o++ = *p++;
            continue;
        }
        p++;
        char e = *p ? *p++ : 0;
        switch (e) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            unsigned cp = 0;
            for (int i = 0; i < 4; i++, p++) {
                if (!isxdigit((unsigned char)*p)) {
                    free(buf);
                    return NULL;
                }
                cp = cp * 16 + (unsigned)(isdigit((unsigned char)*p) ? *p - '0' : (tolower((unsigned char)*p) - 'a' + 10));
            }
            if (cp >= 0xd800 && cp <= 0xdbff && p[0] == '\\' && p[1] == 'u') {
                unsigned lo = 0;
                p += 2;
                for (int i = 0; i < 4 && isxdigit((unsigned char)*p); i++, p++)
                    lo = lo * 16 + (unsigned)(isdigit((unsigned char)*p) ? *p - '0' : (tolower((unsigned char)*p) - 'a' + 10));
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (cp < 0x80) *o++ = (char)cp;
            else if (cp < 0x800) { *o++ = (char)(0xc0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3f)); }
            else if (cp < 0x10000) { *o++ = (char)(0xe0 | (cp >> 12)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f)); }
            else { *o++ = (char)(0xf0 | (cp >> 18)); *o++ = (char)(0x80 | ((cp >> 12) & 0x3f)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f)); }
            break;
        }
        case 0: free(buf); return NULL;
        default: *o++ = e; break;
        }
    }
    if (*p != '"') {
        free(buf);
        return NULL;
    }
    *o = '\0';
    *out = buf;
    return p + 1;
}

static const char *skip_ws(const char *p)
{
    while (isspace((unsigned char)*p))
        p++;
    return p;
}

/* Minimal JSON string reader for one JSONL field: returns a malloc'ed UTF-8 string. */
static char *json_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(line, pat);
    if (!p)
        return NULL;
    p = skip_ws(p + strlen(pat));
    if (*p != ':')
        return NULL;
    char *out;
    read_string(skip_ws(p + 1), &out);
    return out;
}

/* Skip one JSON value (any type); NULL if malformed or nested too deep. */
static const char *skip_value(const char *p, int depth)
{
    p = skip_ws(p);
    if (depth > 64)
        return NULL;
    if (*p == '"') {
        char *s;
        p = read_string(p, &s);
        free(s);
        return p;
    }
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = skip_ws(p + 1);
        if (*p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                char *k;
                p = read_string(skip_ws(p), &k);
                free(k);
                if (!p || *(p = skip_ws(p)) != ':')
                    return NULL;
                p++;
            }
            if (!(p = skip_value(p, depth + 1)))
                return NULL;
            p = skip_ws(p);
            if (*p == ',') {
                p++;
                continue;
            }
            return *p == close ? p + 1 : NULL;
        }
    }
    const char *b = p;
    while (*p && (isalnum((unsigned char)*p) || strchr("+-.", *p)))
        p++;
    return p > b ? p : NULL;
}

/* {"messages": [{"role": "...", "content": "..."}, ...]} anywhere in the line's top-level object.
   Returns the count (>= 1), 0 when the line has no "messages", -1 when malformed. */
static long parse_messages(const char *line, peft_chat_message **out, char ***strs)
{
    *out = NULL;
    *strs = NULL;
    const char *p = skip_ws(line);
    if (*p != '{')
        return 0;
    p++;
    for (;;) {
        char *key;
        p = read_string(skip_ws(p), &key);
        if (!p || *(p = skip_ws(p)) != ':') {
            free(key);
            return -1;
        }
        p = skip_ws(p + 1);
        int is_messages = !strcmp(key, "messages");
        free(key);
        if (is_messages)
            break;
        if (!(p = skip_value(p, 0)))
            return -1;
        p = skip_ws(p);
        if (*p != ',')
            return 0;
        p++;
    }
    if (*p != '[')
        return -1;
    size_t n = 0, cap = 0;
    peft_chat_message *m = NULL;
    char **s = NULL;
    p = skip_ws(p + 1);
    while (*p != ']') {
        if (*p != '{')
            goto bad;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            peft_chat_message *nm = realloc(m, cap * sizeof *nm);
            char **ns = realloc(s, 2 * cap * sizeof *ns);
            if (nm)
                m = nm;
            if (ns)
                s = ns;
            if (!nm || !ns)
                goto bad;
        }
        s[2 * n] = s[2 * n + 1] = NULL;
        p = skip_ws(p + 1);
        while (*p != '}') {
            char *k, *v = NULL;
            p = read_string(p, &k);
            if (!p || *(p = skip_ws(p)) != ':') {
                free(k);
                goto bad_item;
            }
            p = skip_ws(p + 1);
            int slot = !strcmp(k, "role") ? 0 : !strcmp(k, "content") ? 1 : -1;
            free(k);
            if (slot >= 0) {
                if (!(p = read_string(p, &v)) || s[2 * n + slot]) {
                    free(v);
                    goto bad_item;
                }
                s[2 * n + slot] = v;
            } else if (!(p = skip_value(p, 0))) {
                goto bad_item;
            }
            p = skip_ws(p);
            if (*p == ',')
                p = skip_ws(p + 1);
            else if (*p != '}')
                goto bad_item;
        }
        if (!s[2 * n] || !s[2 * n + 1])
            goto bad_item;
        m[n].role = s[2 * n];
        m[n].content = s[2 * n + 1];
        n++;
        p = skip_ws(p + 1);
        if (*p == ',')
            p = skip_ws(p + 1);
        else if (*p != ']')
            goto bad;
        continue;
    bad_item:
        free(s[2 * n]);
        free(s[2 * n + 1]);
        goto bad;
    }
    if (n == 0)
        goto bad;
    *out = m;
    *strs = s;
    return (long)n;
bad:
    for (size_t i = 0; i < 2 * n; i++)
        free(s[i]);
    free(s);
    free(m);
    return -1;
}

/* Render with the chat template into a malloc'ed string. */
static char *render_chat(const data_options *o, const peft_chat_message *m, size_t n, int agp)
{
    size_t len = 0;
    int rc = peft_chat_render(o->tokenizer, o->chat_template, m, n, agp, NULL, 0, &len);
    if (rc != PEFT_ERANGE)
        return NULL;
    char *buf = malloc(len + 1);
    if (buf && peft_chat_render(o->tokenizer, o->chat_template, m, n, agp, buf, len + 1, &len)) {
        free(buf);
        return NULL;
    }
    return buf;
}

static size_t count_tokens(const peft_tokenizer *t, const char *s)
{
    size_t n = 0;
    peft_tokenize(t, s, strlen(s), PEFT_TOKENIZE_NO_BOS, NULL, 0, &n);
    return n;
}

/* A conversation: rendered with the chat template and tokenized as transformers does
   (special tokens from the template's text, no added BOS); the loss is on the assistant
   turns only: for assistant message j, the tokens between render(messages[:j],
   add_generation_prompt) and render(messages[:j+1]), which must both be prefixes of the
   whole conversation's text. */
static int add_chat(struct doc_ctx *c, const data_options *o, const peft_chat_message *m, size_t n, int *trained)
{
    char *full = render_chat(o, m, n, 0);
    if (!full) {
        fprintf(stderr, "peft: chat template: %s\n", peft_last_error());
        return -1;
    }
    size_t nt = 0, len = strlen(full);
    int32_t *ids = NULL;
    int rc = peft_tokenize(c->tok, full, len, PEFT_TOKENIZE_NO_BOS, NULL, 0, &nt);
    if (rc == PEFT_ERANGE || rc == PEFT_OK) {
        ids = malloc((nt + 1) * sizeof *ids);
        rc = ids ? peft_tokenize(c->tok, full, len, PEFT_TOKENIZE_NO_BOS, ids, nt + 1, &nt) : PEFT_ENOMEM;
    }
    unsigned char *keep = rc ? NULL : calloc(nt + 1, 1);
    if (rc || !keep) {
        fprintf(stderr, "peft: tokenizing a conversation failed: %s\n", peft_last_error());
        free(ids);
        free(full);
        return -1;
    }
    for (size_t j = 0; j < n && !rc; j++) {
        if (strcmp(m[j].role, "assistant") != 0)
            continue;
        char *pre = render_chat(o, m, j, 1), *post = render_chat(o, m, j + 1, 0);
        if (!pre || !post || strncmp(full, pre, strlen(pre)) != 0 || strncmp(full, post, strlen(post)) != 0 ||
            strlen(pre) > strlen(post)) {
            fprintf(stderr, "peft: chat template: %s\n",
                    !pre || !post ? peft_last_error()
                                  : "the rendering of the first turns is not a prefix of the whole conversation; "
                                    "assistant turns cannot be located for loss masking");
            rc = -1;
        } else {
            size_t a = count_tokens(c->tok, pre), b = count_tokens(c->tok, post);
            for (size_t i = a; i < b && i < nt; i++)
                keep[i] = 1;
            *trained += b > a;
        }
        free(pre);
        free(post);
    }
    for (size_t i = 0; i < nt && !rc; i++)
        if (!keep[i])
            ids[i] = -1 - ids[i];
    if (!rc)
        rc = push_doc(c, ids, nt);
    free(keep);
    free(ids);
    free(full);
    return rc;
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
        peft_chat_message *msgs = NULL;
        char **strs = NULL;
        long nm = line ? parse_messages(line, &msgs, &strs) : -1;
        if (nm != 0) {
            if (nm < 0) {
                fprintf(stderr, "peft: %s: document %zu: \"messages\" must be a non-empty list of "
                                "{\"role\": string, \"content\": string}\n", path, docs);
                rc = -1;
            } else {
                int trained = 0;
                rc = add_chat(&c, o, msgs, (size_t)nm, &trained);
                if (!rc && !trained) {
                    fprintf(stderr, "peft: %s: conversation %zu has no assistant turn to train on\n", path, docs);
                    rc = -1;
                }
                for (long i = 0; i < 2 * nm; i++)
                    free(strs[i]);
            }
            free(strs);
            free(msgs);
            free(line);
            continue;
        }
        char *tx = line ? json_field(line, "text") : NULL, *pr = NULL, *co = NULL;
        if (tx) {
            rc = add_doc(&c, NULL, 0, tx, strlen(tx), o->eos);
        } else if (line && (pr = json_field(line, "prompt")) && (co = json_field(line, "completion"))) {
            rc = add_doc(&c, pr, strlen(pr), co, strlen(co), 1);
        } else {
            fprintf(stderr, "peft: %s: document %zu has neither \"text\", \"prompt\"/\"completion\" nor "
                            "\"messages\"\n", path, docs);
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
