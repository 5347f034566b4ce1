/*
 * Writing GGUF key/values: a growing byte buffer with typed keys, and the keys of a merged
 * model made from a Hugging Face directory, as llama.cpp's convert_hf_to_gguf.py writes them:
 * general.*, the architecture's hyperparameters, and the vocabulary (tokenizer.ggml.*) of
 * the tokenizer beside the model:
 *   - tokenizer.model (SentencePiece's protobuf): its pieces, scores and piece types, as the
 *     converter's SentencePiece path copies them (model "llama");
 *   - else tokenizer.json: a BPE with byte fallback (SentencePiece-style: model "llama"; the
 *     k-th distinct token the merges make scored -k, then the other normal pieces in id order,
 *     as SentencePiece scores its pieces, so llama.cpp's merge-by-score follows the merges) or a byte-level BPE (model "gpt2": tokens and
 *     merges, the pre-tokenizer named from its regular expression);
 *   - tokenizer_config.json: add_bos_token, add_eos_token, the special tokens' ids and the
 *     chat template.
 * The vocabulary is padded to the model's row count with "[PADn]" tokens of type unused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "gguf.h"
#include "hashmap.h"
#include "json.h"
#include "pretokenize.h"
#include "model.h"

/* ---- the byte buffer ---- */

void peft__gb_put(gg_buf *b, const void *d, size_t n)
{
    if (b->oom || !n)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

void peft__gb_u32(gg_buf *b, uint32_t v) { peft__gb_put(b, &v, 4); } /* little-endian hosts */
void peft__gb_u64(gg_buf *b, uint64_t v) { peft__gb_put(b, &v, 8); }

static void gb_strn(gg_buf *b, const char *s, size_t n)
{
    peft__gb_u64(b, n);
    peft__gb_put(b, s, n);
}

void peft__gb_str(gg_buf *b, const char *s) { gb_strn(b, s, strlen(s)); }

enum { GV_U32 = 4, GV_I32 = 5, GV_F32 = 6, GV_BOOL = 7, GV_STR = 8, GV_ARR = 9 };

void peft__gb_kv_str(gg_buf *b, const char *key, const char *v)
{
    peft__gb_str(b, key);
    peft__gb_u32(b, GV_STR);
    peft__gb_str(b, v);
}

void peft__gb_kv_u32(gg_buf *b, const char *key, uint32_t v)
{
    peft__gb_str(b, key);
    peft__gb_u32(b, GV_U32);
    peft__gb_u32(b, v);
}

void peft__gb_kv_f32(gg_buf *b, const char *key, float v)
{
    peft__gb_str(b, key);
    peft__gb_u32(b, GV_F32);
    peft__gb_put(b, &v, 4);
}

void peft__gb_kv_bool(gg_buf *b, const char *key, int v)
{
    uint8_t x = v != 0;
    peft__gb_str(b, key);
    peft__gb_u32(b, GV_BOOL);
    peft__gb_put(b, &x, 1);
}

void peft__gb_kv_array(gg_buf *b, const char *key, uint32_t elem_type, uint64_t n)
{
    peft__gb_str(b, key);
    peft__gb_u32(b, GV_ARR);
    peft__gb_u32(b, elem_type);
    peft__gb_u64(b, n);
}

/* ---- the vocabulary ---- */

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

typedef struct vocab_out {
    int n;
    char **tok;     /* n owned strings */
    uint32_t *len;
    float *score;
    int32_t *type;
    char **merges;  /* gpt2: n_merges owned "a b" strings */
    int n_merges;
    const char *model, *pre;
    int unk;
} vocab_out;

static void vocab_free(vocab_out *v)
{
    for (int i = 0; v->tok && i < v->n; i++)
        free(v->tok[i]);
    for (int i = 0; v->merges && i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->tok);
    free(v->len);
    free(v->score);
    free(v->type);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

/* room for n tokens (the new ones empty) */
static int vocab_alloc(vocab_out *v, int n, const char *what)
{
    char **t = realloc(v->tok, (size_t)n * sizeof *t);
    if (t)
        v->tok = t;
    uint32_t *l = realloc(v->len, (size_t)n * sizeof *l);
    if (l)
        v->len = l;
    float *s = realloc(v->score, (size_t)n * sizeof *s);
    if (s)
        v->score = s;
    int32_t *y = realloc(v->type, (size_t)n * sizeof *y);
    if (y)
        v->type = y;
    if (!t || !l || !s || !y)
        return peft__fail(PEFT_ENOMEM, "%s: out of memory for the vocabulary", what);
    for (int i = v->n; i < n; i++)
        v->tok[i] = NULL, v->len[i] = 0, v->score[i] = 0.0f, v->type[i] = 0;
    v->n = n;
    return PEFT_OK;
}

static int set_tok(vocab_out *v, int id, const char *s, size_t n, float score, int type, const char *what)
{
    free(v->tok[id]);
    if (!(v->tok[id] = malloc(n + 1)))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory for the vocabulary", what);
    memcpy(v->tok[id], s, n);
    v->tok[id][n] = 0;
    v->len[id] = (uint32_t)n;
    v->score[id] = score;
    v->type[id] = type;
    return PEFT_OK;
}

/* SentencePiece's ModelProto: field 1 repeated SentencePiece {1: piece, 2: score (float),
   3: type (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, BYTE 6, UNUSED 5)}; the other
   fields are skipped by their wire type. */
static int pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (int s = 0; s < 64 && *p < end; s += 7) {
        uint8_t c = *(*p)++;
        *v |= (uint64_t)(c & 127) << s;
        if (!(c & 128))
            return 0;
    }
    return -1;
}

/* the field at *p: number, wire type, and for wire type 2 its bytes [*d, *d + *dn) */
static int pb_field(const uint8_t **p, const uint8_t *end, uint64_t *field, int *wire, const uint8_t **d, uint64_t *dn,
                    uint64_t *iv)
{
    uint64_t k;
    if (pb_varint(p, end, &k))
        return -1;
    *field = k >> 3;
    *wire = (int)(k & 7);
    switch (*wire) {
    case 0: return pb_varint(p, end, iv);
    case 1:
        if (end - *p < 8)
            return -1;
        *p += 8;
        return 0;
    case 5:
        if (end - *p < 4)
            return -1;
        memcpy(iv, *p, 4); /* the float's bits */
        *p += 4;
        return 0;
    case 2:
        if (pb_varint(p, end, dn) || *dn > (uint64_t)(end - *p))
            return -1;
        *d = *p;
        *p += *dn;
        return 0;
    default: return -1;
    }
}

static int read_spm(vocab_out *v, const char *path)
{
    char *text;
    size_t len;
    int code = peft__read_file(&text, &len, path, (size_t)1 << 30);
    if (code)
        return code;
    const uint8_t *p = (const uint8_t *)text, *end = p + len, *d;
    uint64_t field, dn, iv;
    int wire, n = 0;
    v->unk = -1;
    while (p < end) { /* count the pieces */
        if (pb_field(&p, end, &field, &wire, &d, &dn, &iv)) {
            free(text);
            return peft__fail(PEFT_EFORMAT, "%s: not a SentencePiece model (bad protobuf)", path);
        }
        n += field == 1 && wire == 2;
    }
    if (n <= 0 || n > (1 << 24) || (code = vocab_alloc(v, n, path))) {
        free(text);
        return code ? code : peft__fail(PEFT_EFORMAT, "%s: %d pieces", path, n);
    }
    p = (const uint8_t *)text;
    for (int i = 0; p < end && !code;) {
        pb_field(&p, end, &field, &wire, &d, &dn, &iv);
        if (field != 1 || wire != 2)
            continue;
        const uint8_t *q = d, *qe = d + dn, *s = NULL;
        uint64_t sn = 0, f2, typ = TT_NORMAL;
        float score = 0;
        int w2;
        while (q < qe) {
            const uint8_t *d2;
            uint64_t n2, v2 = 0;
            if (pb_field(&q, qe, &f2, &w2, &d2, &n2, &v2)) {
                code = peft__fail(PEFT_EFORMAT, "%s: piece %d: bad protobuf", path, i);
                break;
            }
            if (f2 == 1 && w2 == 2)
                s = d2, sn = n2;
            else if (f2 == 2 && w2 == 5) {
                uint32_t bits = (uint32_t)v2;
                memcpy(&score, &bits, 4);
            } else if (f2 == 3 && w2 == 0)
                typ = v2;
        }
        if (!code && (!s || typ < 1 || typ > 6))
            code = peft__fail(PEFT_EFORMAT, "%s: piece %d has no text or an unknown type", path, i);
        if (!code)
            code = set_tok(v, i, (const char *)s, (size_t)sn, score, (int)typ, path);
        if (!code && typ == TT_UNKNOWN && v->unk < 0)
            v->unk = i;
        i++;
    }
    free(text);
    v->model = "llama";
    v->pre = "default";
    return code;
}

static int is_byte_token(const char *s, size_t n)
{
    return n == 6 && !strncmp(s, "<0x", 3) && s[5] == '>' && strchr("0123456789ABCDEF", s[3]) &&
           strchr("0123456789ABCDEF", s[4]);
}

/* a json value of "type" name, or a Sequence holding one (pre_tokenizers / decoders) */
static const json_value *find_type(const json_value *v, const char *name)
{
    if (!v || v->type != JSON_OBJECT)
        return NULL;
    const json_value *t = json_get(v, "type");
    if (t && t->type == JSON_STRING && !strcmp(t->string, name))
        return v;
    for (size_t k = 0; k < v->length; k++)
        if (v->items[k].type == JSON_ARRAY)
            for (size_t i = 0; i < v->items[k].length; i++) {
                const json_value *f = find_type(&v->items[k].items[i], name);
                if (f)
                    return f;
            }
    return NULL;
}

/* the pre-tokenizer name llama.cpp gives a byte-level BPE: from the Split's expression (pretokenize.c
   knows them), GPT-2's ByteLevel expression alone, or after single digits (SmolLM) */
static const char *bpe_pre(const json_value *pre)
{
    const json_value *sp = find_type(pre, "Split"), *pat = sp ? json_get(sp, "pattern") : NULL;
    const json_value *re = pat && pat->type == JSON_OBJECT ? json_get(pat, "Regex") : NULL;
    const json_value *dg = find_type(pre, "Digits"), *ind = dg ? json_get(dg, "individual_digits") : NULL;
    int digits = ind && ind->type == JSON_BOOL && ind->boolean;
    if (!re || re->type != JSON_STRING) {
        const json_value *bl = find_type(pre, "ByteLevel"), *ur = bl ? json_get(bl, "use_regex") : NULL;
        if (!bl || sp || (dg && !digits) || (ur && !(ur->type == JSON_BOOL && ur->boolean)))
            return NULL;
        return digits ? "smollm" : "gpt-2";
    }
    if (dg)
        return NULL;
    switch (peft__pretok_kind(re->string)) {
    case PRETOK_LLAMA3: return "llama-bpe";
    case PRETOK_QWEN2: return "qwen2";
    case PRETOK_GPT2: return "gpt-2";
    case PRETOK_O200K: return "gpt-4o";
    case PRETOK_TEKKEN: return "tekken";
    default: return NULL;
    }
}

/* a merge ("a b", or ["a", "b"]) into out "a b"; -1 if neither */
static int merge_text(const json_value *mv, char **out)
{
    if (mv->type == JSON_STRING) {
        *out = malloc(mv->length + 1);
        if (*out)
            memcpy(*out, mv->string, mv->length + 1);
        return *out ? 0 : -2;
    }
    if (mv->type != JSON_ARRAY || mv->length != 2 || mv->items[0].type != JSON_STRING ||
        mv->items[1].type != JSON_STRING)
        return -1;
    size_t a = mv->items[0].length, b = mv->items[1].length;
    if (!(*out = malloc(a + b + 2)))
        return -2;
    memcpy(*out, mv->items[0].string, a);
    (*out)[a] = ' ';
    memcpy(*out + a + 1, mv->items[1].string, b + 1);
    return 0;
}

static int read_tokenizer_json(vocab_out *v, const char *path)
{
    char *text;
    size_t len;
    json_doc *doc = NULL;
    int code = peft__read_file(&text, &len, path, (size_t)1 << 30);
    if (code)
        return code;
    code = json_parse(&doc, text, len, path);
    free(text);
    if (code)
        return code;
    const json_value *root = json_root(doc), *model = json_get(root, "model");
    const json_value *vocab = model ? json_get(model, "vocab") : NULL, *merges = model ? json_get(model, "merges") : NULL;
    const json_value *type = model ? json_get(model, "type") : NULL, *added = json_get(root, "added_tokens");
    const json_value *pre = json_get(root, "pre_tokenizer"), *dec = json_get(root, "decoder");
    str_map ids = {0};
    v->unk = -1;
    if (!type || type->type != JSON_STRING || strcmp(type->string, "BPE") != 0 || !vocab ||
        vocab->type != JSON_OBJECT || (merges && merges->type != JSON_ARRAY)) {
        code = peft__fail(PEFT_EUNSUPPORTED, "%s: only BPE tokenizers are written to GGUF (this one: %s)", path,
                          type && type->type == JSON_STRING ? type->string : "no model type");
        goto done;
    }
    int byte_level = find_type(pre, "ByteLevel") || find_type(dec, "ByteLevel");
    v->pre = byte_level ? bpe_pre(pre) : "default";
    v->model = byte_level ? "gpt2" : "llama";
    if (!v->pre) {
        code = peft__fail(PEFT_EUNSUPPORTED,
                          "%s: a byte-level BPE whose pre-tokenizer is not Llama 3's, Qwen2's, o200k's, Tekken's, "
                          "GPT-2's or SmolLM's: convert the merged directory with llama.cpp's convert_hf_to_gguf.py",
                          path);
        goto done;
    }
    int n = 0;
    for (size_t i = 0; i < vocab->length; i++) {
        const json_value *id = &vocab->items[i];
        if (id->type != JSON_NUMBER || !id->is_integer || id->number < 0 || id->number >= (1 << 24)) {
            code = peft__fail(PEFT_EFORMAT, "%s: vocab entry %zu has a bad id", path, i);
            goto done;
        }
        n = (int)id->number + 1 > n ? (int)id->number + 1 : n;
    }
    for (size_t i = 0; added && added->type == JSON_ARRAY && i < added->length; i++) {
        const json_value *id = json_get(&added->items[i], "id");
        if (!id || id->type != JSON_NUMBER || !id->is_integer || id->number < 0 || id->number >= (1 << 24)) {
            code = peft__fail(PEFT_EFORMAT, "%s: added token %zu has a bad id", path, i);
            goto done;
        }
        n = (int)id->number + 1 > n ? (int)id->number + 1 : n;
    }
    if ((code = vocab_alloc(v, n, path)) || str_map_init(&ids, (size_t)n)) {
        code = code ? code : peft__fail(PEFT_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < vocab->length && !code; i++) {
        const char *s = vocab->keys[i];
        size_t sl = strlen(s);
        int id = (int)vocab->items[i].number;
        code = set_tok(v, id, s, sl, 0.0f, !byte_level && is_byte_token(s, sl) ? TT_BYTE : TT_NORMAL, path);
        if (!code && str_map_put(&ids, s, sl, id)) /* keys borrowed from the document */
            code = peft__fail(PEFT_ENOMEM, "out of memory");
    }
    const json_value *unk = json_get(model, "unk_token");
    for (size_t i = 0; added && added->type == JSON_ARRAY && i < added->length && !code; i++) {
        const json_value *a = &added->items[i], *c = json_get(a, "content"), *sp = json_get(a, "special");
        if (!c || c->type != JSON_STRING) {
            code = peft__fail(PEFT_EFORMAT, "%s: added token %zu has no content", path, i);
            break;
        }
        int id = (int)json_get(a, "id")->number, special = sp && sp->type == JSON_BOOL && sp->boolean;
        int t = unk && unk->type == JSON_STRING && !strcmp(unk->string, c->string) ? TT_UNKNOWN
                : special                                                            ? TT_CONTROL
                                                                                     : TT_USER;
        code = set_tok(v, id, c->string, c->length, 0.0f, t, path);
        if (!code && str_map_put(&ids, c->string, c->length, id))
            code = peft__fail(PEFT_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n && !code; i++)
        if (!v->tok[i])
            code = peft__fail(PEFT_EFORMAT, "%s: no token has id %d", path, i);
    v->unk = unk && unk->type == JSON_STRING ? str_map_get(&ids, unk->string, strlen(unk->string)) : -1;
    size_t nm = merges ? merges->length : 0;
    int n_made = 0; /* pieces scored so far: SentencePiece scores its k-th normal piece -k, merged ones first */
    uint8_t *made = calloc((size_t)n + 1, 1);
    if (!made && !code)
        code = peft__fail(PEFT_ENOMEM, "out of memory");
    if (!code && byte_level && nm && !(v->merges = calloc(nm, sizeof *v->merges)))
        code = peft__fail(PEFT_ENOMEM, "out of memory");
    for (size_t r = 0; r < nm && !code; r++) {
        char *mt = NULL;
        int e = merge_text(&merges->items[r], &mt);
        if (e) {
            code = e == -2 ? peft__fail(PEFT_ENOMEM, "out of memory") : peft__fail(PEFT_EFORMAT, "%s: merge %zu is not "
                                                                                               "a pair", path, r);
            break;
        }
        if (byte_level) {
            v->merges[v->n_merges++] = mt;
            continue;
        }
        /* SentencePiece-style: the token a merge makes scores minus the merge's rank */
        char *sp = strchr(mt, ' ');
        if (sp)
            memmove(sp, sp + 1, strlen(sp));
        int32_t id = sp ? str_map_get(&ids, mt, strlen(mt)) : -1;
        free(mt);
        if (id < 0) {
            code = peft__fail(PEFT_EFORMAT, "%s: merge %zu makes a token that is not in the vocabulary", path, r);
            break;
        }
        if (!made[id])
            v->score[id] = -(float)n_made++, made[id] = 1;
    }
    for (int i = 0; !byte_level && i < n && !code; i++) /* the other pieces (characters) after them */
        if (v->type[i] == TT_NORMAL && !made[i])
            v->score[i] = -(float)n_made++;
    free(made);
done:
    str_map_free(&ids);
    json_free(doc);
    return code;
}

int peft__vocab_read_check(const char *path, int spm)
{
    vocab_out v = {0};
    int code = spm ? read_spm(&v, path) : read_tokenizer_json(&v, path);
    vocab_free(&v);
    return code;
}

/* the id of a tokenizer_config.json special token (a string, or {"content": ...}); -1 */
static int special_id(const json_value *cfg, const char *key, const vocab_out *v)
{
    const json_value *t = cfg ? json_get(cfg, key) : NULL;
    if (t && t->type == JSON_OBJECT)
        t = json_get(t, "content");
    if (!t || t->type != JSON_STRING)
        return -1;
    for (int i = 0; i < v->n; i++)
        if (v->len[i] == t->length && !memcmp(v->tok[i], t->string, t->length))
            return i;
    return -1;
}

static int tokenizer_keys(gg_buf *b, uint64_t *nk, const peft_model *m)
{
    const peft_config *c = &m->cfg;
    size_t pl = strlen(m->path) + 32;
    char *p = malloc(pl);
    vocab_out v = {0};
    json_doc *doc = NULL;
    if (!p)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    int code;
    FILE *f;
    snprintf(p, pl, "%s/tokenizer.model", m->path);
    if ((f = fopen(p, "rb"))) {
        fclose(f);
        code = read_spm(&v, p);
    } else {
        snprintf(p, pl, "%s/tokenizer.json", m->path);
        if ((f = fopen(p, "rb"))) {
            fclose(f);
            code = read_tokenizer_json(&v, p);
        } else {
            code = peft__fail(PEFT_ENOTFOUND, "%s: no tokenizer.model or tokenizer.json beside the model: a GGUF file "
                                              "needs the vocabulary", m->path);
        }
    }
    if (!code && v.n > c->vocab)
        code = peft__fail(PEFT_ESHAPE, "%s: the tokenizer has %d tokens, the model %d rows of embeddings", m->path, v.n,
                          c->vocab);
    int n0 = v.n;
    if (!code && n0 < c->vocab) { /* padded as the converter pads */
        code = vocab_alloc(&v, c->vocab, m->path);
        for (int i = n0; i < c->vocab && !code; i++) {
            char pad[24];
            int k = snprintf(pad, sizeof pad, "[PAD%d]", i);
            code = set_tok(&v, i, pad, (size_t)k, -1000.0f, TT_UNUSED, m->path);
        }
    }
    json_value const *tc = NULL;
    if (!code) {
        char *text;
        size_t len;
        snprintf(p, pl, "%s/tokenizer_config.json", m->path);
        if ((f = fopen(p, "rb"))) {
            fclose(f);
            if (!(code = peft__read_file(&text, &len, p, (size_t)64 << 20))) {
                code = json_parse(&doc, text, len, p);
                free(text);
            }
            tc = doc ? json_root(doc) : NULL;
        }
    }
    if (!code) {
        int gpt2 = !strcmp(v.model, "gpt2");
        peft__gb_kv_str(b, "tokenizer.ggml.model", v.model);
        peft__gb_kv_str(b, "tokenizer.ggml.pre", v.pre);
        peft__gb_kv_array(b, "tokenizer.ggml.tokens", GV_STR, (uint64_t)v.n);
        for (int i = 0; i < v.n; i++)
            gb_strn(b, v.tok[i], v.len[i]);
        *nk += 3;
        if (!gpt2) {
            peft__gb_kv_array(b, "tokenizer.ggml.scores", GV_F32, (uint64_t)v.n);
            peft__gb_put(b, v.score, (size_t)v.n * sizeof *v.score);
            ++*nk;
        }
        peft__gb_kv_array(b, "tokenizer.ggml.token_type", GV_I32, (uint64_t)v.n);
        peft__gb_put(b, v.type, (size_t)v.n * sizeof *v.type);
        ++*nk;
        if (gpt2) {
            peft__gb_kv_array(b, "tokenizer.ggml.merges", GV_STR, (uint64_t)v.n_merges);
            for (int i = 0; i < v.n_merges; i++)
                peft__gb_str(b, v.merges[i]);
            ++*nk;
        }
        int bos = special_id(tc, "bos_token", &v), eos = special_id(tc, "eos_token", &v);
        int unk = special_id(tc, "unk_token", &v), pad = special_id(tc, "pad_token", &v);
        bos = bos >= 0 ? bos : c->bos_id >= 0 && c->bos_id < v.n ? c->bos_id : -1;
        eos = eos >= 0 ? eos : c->eos_id >= 0 && c->eos_id < v.n ? c->eos_id : -1;
        unk = unk >= 0 ? unk : v.unk;
        const char *kn[4] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                             "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"};
        int kv[4] = {bos, eos, unk, pad};
        for (int i = 0; i < 4; i++)
            if (kv[i] >= 0) {
                peft__gb_kv_u32(b, kn[i], (uint32_t)kv[i]);
                ++*nk;
            }
        const json_value *ab = tc ? json_get(tc, "add_bos_token") : NULL, *ae = tc ? json_get(tc, "add_eos_token") : NULL;
        const json_value *ct = tc ? json_get(tc, "chat_template") : NULL;
        if (ab && ab->type == JSON_BOOL) {
            peft__gb_kv_bool(b, "tokenizer.ggml.add_bos_token", ab->boolean);
            ++*nk;
        }
        if (ae && ae->type == JSON_BOOL) {
            peft__gb_kv_bool(b, "tokenizer.ggml.add_eos_token", ae->boolean);
            ++*nk;
        }
        if (ct && ct->type == JSON_STRING) {
            peft__gb_kv_str(b, "tokenizer.chat_template", ct->string);
            ++*nk;
        }
        if (c->gemma && !gpt2) { /* as llama.cpp's converter writes Gemma's SentencePiece vocabulary */
            peft__gb_kv_bool(b, "tokenizer.ggml.add_space_prefix", 0);
            ++*nk;
        }
    }
    json_free(doc);
    vocab_free(&v);
    free(p);
    return code;
}

int peft__gguf_hf_keys(gg_buf *b, uint64_t *nk, const peft_model *m, const char *name, int file_type)
{
    const peft_config *c = &m->cfg;
    const char *arch = !strcmp(c->architecture, "mistral") ? "llama" : c->architecture; /* as llama.cpp converts */
    char k[96];
    *nk = 0;
    peft__gb_kv_str(b, "general.architecture", arch);
    peft__gb_kv_str(b, "general.type", "model");
    peft__gb_kv_str(b, "general.name", name);
    *nk += 3;
#define U32(key, v) (snprintf(k, sizeof k, "%s." key, arch), peft__gb_kv_u32(b, k, (uint32_t)(v)), ++*nk)
#define F32(key, v) (snprintf(k, sizeof k, "%s." key, arch), peft__gb_kv_f32(b, k, (float)(v)), ++*nk)
    U32("block_count", c->n_layers);
    U32("context_length", c->ctx_len > 0 ? c->ctx_len : 2048); /* transformers' default */
    U32("embedding_length", c->dim);
    U32("feed_forward_length", c->ffn_dim);
    U32("attention.head_count", c->n_heads);
    U32("attention.head_count_kv", c->n_kv_heads);
    F32("rope.freq_base", c->rope_theta);
    F32("attention.layer_norm_rms_epsilon", c->eps);
    U32("attention.key_length", c->head_dim);
    U32("attention.value_length", c->head_dim);
    peft__gb_kv_u32(b, "general.file_type", (uint32_t)file_type);
    ++*nk;
    U32("vocab_size", c->vocab);
    U32("rope.dimension_count", peft__rot_dim(c));
    if (c->gemma || (c->fused && c->sliding_window > 0))
        U32("attention.sliding_window", c->sliding_window);
    if (c->rope_long_from > 0) { /* LongRoPE (phi3): the factors are tensors */
        F32("rope.scaling.attn_factor", c->rope_mscale > 0.0f ? c->rope_mscale : 1.0f);
        U32("rope.scaling.original_context_length", c->rope_long_from);
    }
    if (c->gemma == 2) {
        F32("attn_logit_softcapping", c->attn_softcap);
        F32("final_logit_softcapping", c->final_softcap);
    }
    if (!strcmp(c->architecture, "granite")) { /* as llama.cpp's converter names Granite's multipliers */
        F32("embedding_scale", c->embed_mul);
        F32("residual_scale", c->res_mul);
        F32("attention.scale", c->q_mul / sqrtf((float)c->head_dim));
        F32("logit_scale", 1.0f / c->logit_mul);
    }
    if (c->rope_scaling == 1) {
        snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
        peft__gb_kv_str(b, k, "linear");
        ++*nk;
        F32("rope.scaling.factor", c->rope_factor);
    }
#undef U32
#undef F32
    int code = tokenizer_keys(b, nk, m);
    if (!code) {
        peft__gb_kv_u32(b, "general.quantization_version", 2);
        ++*nk;
    }
    return code ? code : b->oom ? peft__fail(PEFT_ENOMEM, "out of memory") : PEFT_OK;
}
