/*
 * Hugging Face tokenizer.json: BPE models in the SentencePiece style (Llama 2,
 * TinyLlama, Mistral, stories260K): "▁" for spaces (Prepend + Replace normalizers
 * or a Metaspace pre-tokenizer), merges applied by rank, byte fallback for
 * characters outside the vocabulary, added/special tokens matched verbatim.
 * Byte-level BPE (GPT-2 style: GPT-2, Llama 3, Qwen2/3, SmolLM): pieces spelled in
 * GPT-2's printable alphabet of the 256 bytes, words split by the pre-tokenizer's
 * expression (pretokenize.c), NFC where the normalizer asks for it (unicode.c),
 * merges by rank within each word (or the whole word when it is a piece and the model
 * says ignore_merges), BOS/EOS as the TemplateProcessing post-processor says.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fsutil.h"
#include "hashmap.h"
#include "internal.h"
#include "chat.h"
#include "json.h"
#include "pretokenize.h"
#include "unicode.h"

#define SPACE_MARK "\xe2\x96\x81" /* U+2581 "▁" */

typedef struct added_token {
    const char *content;
    size_t len;
    int32_t id;
    int special;
    uint8_t lstrip, rstrip, single_word; /* tokenizer.json's flags: whitespace absorbed, whole words only */
} added_token;

struct peft_tokenizer {
    json_doc *doc;
    int32_t n_vocab;
    const char **pieces;
    uint32_t *piece_len;
    uint8_t *is_special;
    uint8_t *is_added; /* added tokens: their content verbatim, not spelled in bytes */
    str_map vocab;
    u64_map merges; /* (left << 32 | right) -> (rank, merged id) */
    int byte_fallback, fuse_unk;
    int32_t byte_id[256];
    int32_t unk_id, bos_id, eos_id;
    int add_bos, add_eos;
    char *chat_template;      /* tokenizer_config.json, or NULL */
    char *bos_text, *eos_text; /* tokenizer_config.json bos_token / eos_token, or NULL */
    int prepend;        /* prepend "▁" to the text (first segment only when prepend_first) */
    int prepend_first;
    int replace_space;  /* " " -> "▁" */
    int strip_leading;  /* decoder strips this many leading spaces */
    added_token *added;
    int n_added;
    uint8_t added_first[256]; /* the first bytes of the added tokens */
    /* GGUF "llama" vocabularies: SentencePiece merges by score, not by a merge list */
    int spm;
    int32_t *score_rank; /* per id: rank of its score, highest first */
    gguf_vocab gv;
    /* byte-level BPE */
    int byte_level;
    int nfc;                  /* NFC normalizer */
    int ignore_merges;        /* a word that is a piece is not merged */
    int add_prefix_space;     /* ByteLevel: a space before each piece that lacks one */
    int stages[3], n_stages;  /* pre-tokenizer expressions (PRETOK_*), applied in turn */
    int32_t byte_char[256];   /* the code point that spells each byte */
    int32_t char_byte[324];   /* and back (-1: not a byte's) */
};

static int32_t piece_id(const peft_tokenizer *t, const char *s, size_t n) { return str_map_get(&t->vocab, s, n); }

/* a vocabulary piece or an added token */
static int32_t token_id(const peft_tokenizer *t, const char *s, size_t n)
{
    for (int a = 0; a < t->n_added; a++)
        if (t->added[a].len == n && !memcmp(t->added[a].content, s, n))
            return t->added[a].id;
    return piece_id(t, s, n);
}

static int parse_normalizer(peft_tokenizer *t, const json_value *n, const char *path)
{
    if (!n || n->type == JSON_NULL)
        return PEFT_OK;
    const json_value *type = json_get(n, "type");
    if (!type || type->type != JSON_STRING)
        return peft__fail(PEFT_EFORMAT, "%s: normalizer without a type", path);
    if (!strcmp(type->string, "Sequence")) {
        const json_value *list = json_get(n, "normalizers");
        if (!list || list->type != JSON_ARRAY)
            return peft__fail(PEFT_EFORMAT, "%s: Sequence normalizer without a list", path);
        for (size_t i = 0; i < list->length; i++) {
            int rc = parse_normalizer(t, &list->items[i], path);
            if (rc)
                return rc;
        }
        return PEFT_OK;
    }
    if (!strcmp(type->string, "Prepend")) {
        const json_value *p = json_get(n, "prepend");
        if (!p || p->type != JSON_STRING || strcmp(p->string, SPACE_MARK) != 0)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: Prepend normalizer with another string than \"\\u2581\"", path);
        t->prepend = 1;
        return PEFT_OK;
    }
    if (!strcmp(type->string, "Replace")) {
        const json_value *pat = json_get(n, "pattern"), *c = json_get(n, "content");
        const json_value *s = pat ? json_get(pat, "String") : NULL;
        if (!s || s->type != JSON_STRING || strcmp(s->string, " ") || !c || c->type != JSON_STRING ||
            strcmp(c->string, SPACE_MARK))
            return peft__fail(PEFT_EUNSUPPORTED, "%s: only the Replace normalizer \" \" -> \"\\u2581\" is supported", path);
        t->replace_space = 1;
        return PEFT_OK;
    }
    if (!strcmp(type->string, "NFC")) {
        t->nfc = 1;
        return PEFT_OK;
    }
    if (!strcmp(type->string, "NFKC"))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: %s normalization is not supported yet", path, type->string);
    return peft__fail(PEFT_EUNSUPPORTED, "%s: normalizer \"%s\" is not supported yet", path, type->string);
}

static int parse_pretokenizer(peft_tokenizer *t, const json_value *p, const char *path)
{
    if (!p || p->type == JSON_NULL)
        return PEFT_OK;
    const json_value *type = json_get(p, "type");
    if (!type || type->type != JSON_STRING)
        return peft__fail(PEFT_EFORMAT, "%s: pre_tokenizer without a type", path);
    if (!strcmp(type->string, "Metaspace")) {
        const json_value *split = json_get(p, "split"), *scheme = json_get(p, "prepend_scheme"),
                         *add = json_get(p, "add_prefix_space");
        if (split && split->type == JSON_BOOL && split->boolean)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: Metaspace with split=true is not supported yet", path);
        t->replace_space = 1;
        if (scheme && scheme->type == JSON_STRING) {
            t->prepend = strcmp(scheme->string, "never") != 0;
            t->prepend_first = strcmp(scheme->string, "first") == 0;
        } else {
            t->prepend = !(add && add->type == JSON_BOOL && !add->boolean);
        }
        return PEFT_OK;
    }
    if (!strcmp(type->string, "Sequence")) {
        const json_value *list = json_get(p, "pretokenizers");
        if (!list || list->type != JSON_ARRAY)
            return peft__fail(PEFT_EFORMAT, "%s: Sequence pre_tokenizer without a list", path);
        for (size_t i = 0; i < list->length; i++) {
            int rc = parse_pretokenizer(t, &list->items[i], path);
            if (rc)
                return rc;
        }
        return PEFT_OK;
    }
    if (t->n_stages == 3)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: more than three splitting pre-tokenizers", path);
    if (!strcmp(type->string, "ByteLevel")) {
        const json_value *re = json_get(p, "use_regex"), *ap = json_get(p, "add_prefix_space");
        t->byte_level = 1;
        t->add_prefix_space = ap && ap->type == JSON_BOOL && ap->boolean;
        if (t->add_prefix_space && t->n_stages)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: ByteLevel with add_prefix_space after another split", path);
        if (!(re && re->type == JSON_BOOL && !re->boolean))
            t->stages[t->n_stages++] = PRETOK_GPT2;
        return PEFT_OK;
    }
    if (!strcmp(type->string, "Digits")) {
        const json_value *ind = json_get(p, "individual_digits");
        if (!ind || ind->type != JSON_BOOL || !ind->boolean)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: Digits pre-tokenizer without individual_digits", path);
        t->stages[t->n_stages++] = PRETOK_DIGITS;
        return PEFT_OK;
    }
    if (!strcmp(type->string, "Split")) {
        const json_value *pat = json_get(p, "pattern"), *re = pat ? json_get(pat, "Regex") : NULL,
                         *beh = json_get(p, "behavior"), *inv = json_get(p, "invert");
        const json_value *str = pat ? json_get(pat, "String") : NULL;
        /* Gemma: a split at " " after a normalizer that replaced every " " with "▁" splits nothing */
        if (str && str->type == JSON_STRING && !strcmp(str->string, " ") && t->replace_space && !t->byte_level)
            return PEFT_OK;
        int kind = re && re->type == JSON_STRING ? peft__pretok_kind(re->string) : 0;
        if (!kind)
            return peft__fail(PEFT_EUNSUPPORTED,
                              "%s: Split pre-tokenizer with an expression that is not GPT-2's, Llama 3's, "
                              "Qwen2's, o200k's or Tekken's (%s)",
                              path, re && re->type == JSON_STRING ? re->string : "no Regex");
        if (!beh || beh->type != JSON_STRING || strcmp(beh->string, "Isolated") ||
            (inv && inv->type == JSON_BOOL && inv->boolean))
            return peft__fail(PEFT_EUNSUPPORTED, "%s: Split pre-tokenizer other than Isolated, not inverted", path);
        t->stages[t->n_stages++] = kind;
        return PEFT_OK;
    }
    return peft__fail(PEFT_EUNSUPPORTED, "%s: pre_tokenizer \"%s\" is not supported yet", path, type->string);
}

/* BOS/EOS from the TemplateProcessing post-processor (its "single" template) */
static int parse_post_processor(peft_tokenizer *t, const json_value *p, const char *path)
{
    const json_value *type = p ? json_get(p, "type") : NULL;
    if (!type || type->type != JSON_STRING)
        return PEFT_OK;
    if (!strcmp(type->string, "Sequence")) {
        const json_value *list = json_get(p, "processors");
        for (size_t i = 0; list && list->type == JSON_ARRAY && i < list->length; i++) {
            int rc = parse_post_processor(t, &list->items[i], path);
            if (rc)
                return rc;
        }
        return PEFT_OK;
    }
    if (strcmp(type->string, "TemplateProcessing"))
        return PEFT_OK; /* ByteLevel (offsets only) and the others add no tokens */
    t->add_bos = t->add_eos = 0; /* the template says which */
    const json_value *single = json_get(p, "single"), *specials = json_get(p, "special_tokens");
    int after = 0, n_before = 0, n_after = 0;
    for (size_t i = 0; single && single->type == JSON_ARRAY && i < single->length; i++) {
        const json_value *it = &single->items[i], *st = json_get(it, "SpecialToken");
        if (json_get(it, "Sequence")) {
            after = 1;
            continue;
        }
        const json_value *id = st ? json_get(st, "id") : NULL;
        if (!id || id->type != JSON_STRING)
            return peft__fail(PEFT_EFORMAT, "%s: TemplateProcessing item %zu is malformed", path, i);
        const json_value *sp = specials ? json_get(specials, id->string) : NULL, *ids = sp ? json_get(sp, "ids") : NULL;
        int32_t tok = ids && ids->type == JSON_ARRAY && ids->length == 1 && ids->items[0].type == JSON_NUMBER
                          ? (int32_t)ids->items[0].number
                          : token_id(t, id->string, id->length);
        if (tok < 0 || tok >= t->n_vocab)
            return peft__fail(PEFT_EFORMAT, "%s: TemplateProcessing token \"%s\" is not in the vocabulary", path,
                              id->string);
        if ((after ? ++n_after : ++n_before) > 1)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: TemplateProcessing with more than one token on a side", path);
        if (after) {
            t->eos_id = tok;
            t->add_eos = 1;
        } else {
            t->bos_id = tok;
            t->add_bos = 1;
        }
    }
    return PEFT_OK;
}

static int parse_decoder(peft_tokenizer *t, const json_value *d)
{
    if (!d || d->type == JSON_NULL)
        return PEFT_OK;
    const json_value *type = json_get(d, "type");
    if (!type || type->type != JSON_STRING)
        return PEFT_OK;
    if (!strcmp(type->string, "Sequence")) {
        const json_value *list = json_get(d, "decoders");
        for (size_t i = 0; list && list->type == JSON_ARRAY && i < list->length; i++)
            parse_decoder(t, &list->items[i]);
    } else if (!strcmp(type->string, "Strip")) {
        const json_value *start = json_get(d, "start");
        if (start && start->type == JSON_NUMBER)
            t->strip_leading = (int)start->number;
    } else if (!strcmp(type->string, "Metaspace")) {
        t->strip_leading = 1;
    }
    return PEFT_OK;
}

/* The file `name` beside tokenizer.json, when there is one (else PEFT_OK and nothing set): its
   text (NUL-terminated) into *text, or, with text NULL, its JSON into *doc. */
static int read_beside(const char *dir, const char *name, char **text, json_doc **doc)
{
    char *p = peft__path_join(dir, name), *buf;
    size_t len;
    if (!p)
        return peft__fail(PEFT_ENOMEM, "out of memory");
    int rc = peft__read_file(&buf, &len, p, 16u << 20);
    if (rc == PEFT_ENOTFOUND) {
        peft__clear_error();
        rc = PEFT_OK;
    } else if (!rc && text) {
        *text = buf;
    } else if (!rc) {
        rc = json_parse(doc, buf, len, p);
        free(buf);
    }
    free(p);
    return rc;
}

static int read_special(const char *dir, peft_tokenizer *t)
{
    /* tokenizer_config.json beside tokenizer.json: add_bos_token / add_eos_token */
    json_doc *doc = NULL;
    int rc = read_beside(dir, "tokenizer_config.json", NULL, &doc);
    if (rc || !doc)
        return rc;
    const json_value *v = json_get(json_root(doc), "add_bos_token");
    if (v && v->type == JSON_BOOL)
        t->add_bos = v->boolean;
    v = json_get(json_root(doc), "add_eos_token");
    if (v && v->type == JSON_BOOL)
        t->add_eos = v->boolean;
    /* chat_template: a string, or a list of {"name", "template"} (the "default" one) */
    v = json_get(json_root(doc), "chat_template");
    const char *tmpl = v && v->type == JSON_STRING ? v->string : NULL;
    for (size_t i = 0; v && v->type == JSON_ARRAY && i < v->length && !tmpl; i++) {
        const json_value *nm = json_get(&v->items[i], "name"), *tp = json_get(&v->items[i], "template");
        if (nm && nm->type == JSON_STRING && !strcmp(nm->string, "default") && tp && tp->type == JSON_STRING)
            tmpl = tp->string;
    }
    const char *names[2] = {"bos_token", "eos_token"};
    char **dst[2] = {&t->bos_text, &t->eos_text};
    for (int k = 0; k < 2; k++) {
        const json_value *b = json_get(json_root(doc), names[k]);
        if (b && b->type == JSON_OBJECT)
            b = json_get(b, "content");
        if (b && b->type == JSON_STRING && !(*dst[k] = strdup(b->string)))
            rc = peft__fail(PEFT_ENOMEM, "out of memory");
    }
    /* byte-level vocabularies name their BOS/EOS only there (Qwen: "<|im_end|>") */
    for (int k = 0; k < 2 && t->byte_level; k++) {
        int32_t id = *dst[k] ? token_id(t, *dst[k], strlen(*dst[k])) : -1;
        if (id >= 0 && k == 0 && t->bos_id < 0)
            t->bos_id = id;
        if (id >= 0 && k == 1)
            t->eos_id = id;
    }
    if (tmpl && !(t->chat_template = strdup(tmpl)))
        rc = peft__fail(PEFT_ENOMEM, "out of memory");
    json_free(doc);
    return rc;
}

/* The chat template in its own file, as newer transformers save it: chat_template.jinja (it takes
   precedence over tokenizer_config.json's), else chat_template.json {"chat_template": ...} when
   tokenizer_config.json has none. */
static int read_chat_template_file(const char *dir, peft_tokenizer *t)
{
    char *text = NULL;
    int rc = read_beside(dir, "chat_template.jinja", &text, NULL);
    if (rc || text) {
        if (text) {
            free(t->chat_template);
            t->chat_template = text;
        }
        return rc;
    }
    json_doc *doc = NULL;
    if (t->chat_template || (rc = read_beside(dir, "chat_template.json", NULL, &doc)) || !doc)
        return rc;
    const json_value *v = json_get(json_root(doc), "chat_template");
    if (v && v->type == JSON_STRING && !(t->chat_template = strdup(v->string)))
        rc = peft__fail(PEFT_ENOMEM, "out of memory");
    json_free(doc);
    return rc;
}

/* merge `rank`: left a (la bytes) + right b (lb bytes) */
static int add_merge(peft_tokenizer *t, const char *a, size_t la, const char *b, size_t lb, size_t rank,
                     const char *path)
{
    int32_t ia = piece_id(t, a, la), ib = piece_id(t, b, lb);
    char joined[4096];
    if (la + lb >= sizeof joined)
        return peft__fail(PEFT_EFORMAT, "%s: merge %zu too long", path, rank);
    memcpy(joined, a, la);
    memcpy(joined + la, b, lb);
    int32_t im = piece_id(t, joined, la + lb);
    if (ia < 0 || ib < 0 || im < 0)
        return peft__fail(PEFT_EFORMAT, "%s: merge %zu uses a piece outside the vocabulary", path, rank);
    uint64_t key = (uint64_t)ia << 32 | (uint32_t)ib;
    int32_t r0, m0;
    if (!u64_map_get(&t->merges, key, &r0, &m0) && u64_map_put(&t->merges, key, (int32_t)rank, im))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    return PEFT_OK;
}

/* GPT-2's alphabet: the printable bytes spell themselves, the others U+0100 on in byte order */
static void byte_alphabet(peft_tokenizer *t)
{
    int extra = 0;
    t->byte_level = 1;
    for (int b = 0; b < 324; b++)
        t->char_byte[b] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        t->byte_char[b] = printable ? b : 256 + extra++;
        t->char_byte[t->byte_char[b]] = b;
    }
}

static int load(peft_tokenizer *t, const char *path)
{
    char *text;
    size_t len;
    int rc = peft__read_file(&text, &len, path, 512u << 20);
    if (rc)
        return rc;
    rc = json_parse(&t->doc, text, len, path);
    free(text);
    if (rc)
        return rc;
    const json_value *root = json_root(t->doc), *model = json_get(root, "model");
    if (!model || model->type != JSON_OBJECT)
        return peft__fail(PEFT_EFORMAT, "%s: missing \"model\"", path);
    const json_value *type = json_get(model, "type");
    if (type && (type->type != JSON_STRING || strcmp(type->string, "BPE") != 0))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: tokenizer model \"%s\" is not supported (BPE)", path,
                          type->type == JSON_STRING ? type->string : "?");
    const json_value *vocab = json_get(model, "vocab"), *merges = json_get(model, "merges");
    if (!vocab || vocab->type != JSON_OBJECT || !merges || merges->type != JSON_ARRAY)
        return peft__fail(PEFT_EFORMAT, "%s: BPE model without vocab or merges", path);
    const json_value *bf = json_get(model, "byte_fallback"), *fu = json_get(model, "fuse_unk");
    t->byte_fallback = bf && bf->type == JSON_BOOL && bf->boolean;
    t->fuse_unk = fu && fu->type == JSON_BOOL && fu->boolean;
    /* vocabulary: ids must be dense 0..n-1 (added tokens may extend it) */
    const json_value *added = json_get(root, "added_tokens");
    size_t n_added = added && added->type == JSON_ARRAY ? added->length : 0;
    int32_t max_id = -1;
    for (size_t i = 0; i < vocab->length; i++) {
        const json_value *v = &vocab->items[i];
        if (v->type != JSON_NUMBER || !v->is_integer || v->number < 0 || v->number >= (1 << 24))
            return peft__fail(PEFT_EFORMAT, "%s: vocab entry '%s' has a bad id", path, vocab->keys[i]);
        if ((int32_t)v->number > max_id)
            max_id = (int32_t)v->number;
    }
    for (size_t i = 0; i < n_added; i++) {
        const json_value *id = json_get(&added->items[i], "id");
        if (!id || id->type != JSON_NUMBER || !id->is_integer || id->number < 0 || id->number >= (1 << 24))
            return peft__fail(PEFT_EFORMAT, "%s: added token %zu has a bad id", path, i);
        if ((int32_t)id->number > max_id)
            max_id = (int32_t)id->number;
    }
    t->n_vocab = max_id + 1;
    t->pieces = calloc((size_t)t->n_vocab, sizeof *t->pieces);
    t->piece_len = calloc((size_t)t->n_vocab, sizeof *t->piece_len);
    t->is_special = calloc((size_t)t->n_vocab, 1);
    t->is_added = calloc((size_t)t->n_vocab, 1);
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->pieces || !t->piece_len || !t->is_special || !t->is_added || !t->added ||
        str_map_init(&t->vocab, vocab->length + n_added) || u64_map_init(&t->merges, merges->length))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < vocab->length; i++) {
        int32_t id = (int32_t)vocab->items[i].number;
        t->pieces[id] = vocab->keys[i];
        t->piece_len[id] = (uint32_t)strlen(vocab->keys[i]);
        if (str_map_put(&t->vocab, vocab->keys[i], t->piece_len[id], id))
            return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < n_added; i++) {
        const json_value *a = &added->items[i], *c = json_get(a, "content"), *sp = json_get(a, "special");
        if (!c || c->type != JSON_STRING || c->length == 0)
            return peft__fail(PEFT_EFORMAT, "%s: added token %zu without content", path, i);
        added_token *at = &t->added[t->n_added++];
        at->content = c->string;
        at->len = c->length;
        at->id = (int32_t)json_get(a, "id")->number;
        at->special = sp && sp->type == JSON_BOOL && sp->boolean;
        const json_value *ls = json_get(a, "lstrip"), *rs = json_get(a, "rstrip"), *sw = json_get(a, "single_word");
        at->lstrip = ls && ls->type == JSON_BOOL && ls->boolean;
        at->rstrip = rs && rs->type == JSON_BOOL && rs->boolean;
        at->single_word = sw && sw->type == JSON_BOOL && sw->boolean;
        t->pieces[at->id] = c->string;
        t->piece_len[at->id] = (uint32_t)c->length;
        t->is_special[at->id] = (uint8_t)at->special;
        t->is_added[at->id] = 1;
    }
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (!t->pieces[i])
            return peft__fail(PEFT_EFORMAT, "%s: token id %d has no piece (ids must be dense)", path, i);
    /* merges: "a b" strings or ["a", "b"] pairs; rank = position */
    for (size_t i = 0; i < merges->length; i++) {
        const json_value *mv = &merges->items[i];
        const char *a, *b;
        size_t la, lb;
        char buf[1024];
        if (mv->type == JSON_STRING) {
            const char *sp = strchr(mv->string, ' ');
            if (!sp || strchr(sp + 1, ' ') || mv->length >= sizeof buf)
                return peft__fail(PEFT_EFORMAT, "%s: merge %zu is not \"left right\"", path, i);
            memcpy(buf, mv->string, mv->length + 1);
            a = buf;
            la = (size_t)(sp - mv->string);
            b = buf + la + 1;
            lb = mv->length - la - 1;
        } else if (mv->type == JSON_ARRAY && mv->length == 2 && mv->items[0].type == JSON_STRING &&
                   mv->items[1].type == JSON_STRING) {
            a = mv->items[0].string;
            la = mv->items[0].length;
            b = mv->items[1].string;
            lb = mv->items[1].length;
        } else {
            return peft__fail(PEFT_EFORMAT, "%s: merge %zu is malformed", path, i);
        }
        if ((rc = add_merge(t, a, la, b, lb, i, path)))
            return rc;
    }
    for (int i = 0; i < 256; i++) {
        char p[8];
        snprintf(p, sizeof p, "<0x%02X>", i);
        t->byte_id[i] = piece_id(t, p, 6);
        if (t->byte_fallback && t->byte_id[i] < 0)
            return peft__fail(PEFT_EFORMAT, "%s: byte_fallback without the piece %s", path, p);
    }
    const json_value *unk = json_get(model, "unk_token");
    t->unk_id = unk && unk->type == JSON_STRING ? piece_id(t, unk->string, unk->length) : -1;
    t->bos_id = piece_id(t, "<s>", 3);
    t->eos_id = piece_id(t, "</s>", 4);
    t->add_bos = t->bos_id >= 0;
    if ((rc = parse_normalizer(t, json_get(root, "normalizer"), path)) ||
        (rc = parse_pretokenizer(t, json_get(root, "pre_tokenizer"), path)))
        return rc;
    const json_value *dec = json_get(root, "decoder"), *dt = dec ? json_get(dec, "type") : NULL;
    if (!t->byte_level && dt && dt->type == JSON_STRING && !strcmp(dt->string, "ByteLevel"))
        return peft__fail(PEFT_EUNSUPPORTED, "%s: a ByteLevel decoder without a ByteLevel pre-tokenizer", path);
    if (t->byte_level) {
        const json_value *im = json_get(model, "ignore_merges");
        t->ignore_merges = im && im->type == JSON_BOOL && im->boolean;
        if (t->byte_fallback || t->replace_space || t->prepend)
            return peft__fail(PEFT_EUNSUPPORTED, "%s: a byte-level BPE with SentencePiece settings", path);
        byte_alphabet(t);
        t->bos_id = t->eos_id = -1;
        t->add_bos = 0;
    }
    /* BOS/EOS as the post-processor's template adds them (Gemma: "<bos>"); without one, "<s>" */
    if ((rc = parse_post_processor(t, json_get(root, "post_processor"), path)))
        return rc;
    parse_decoder(t, dec);
    return PEFT_OK;
}

void peft_tokenizer_close(peft_tokenizer **pt)
{
    if (!pt || !*pt)
        return;
    peft_tokenizer *t = *pt;
    peft__gguf_vocab_free(&t->gv);
    free(t->chat_template);
    free(t->bos_text);
    free(t->eos_text);
    free(t->score_rank);
    json_free(t->doc);
    free(t->pieces);
    free(t->piece_len);
    free(t->is_special);
    free(t->is_added);
    free(t->added);
    str_map_free(&t->vocab);
    u64_map_free(&t->merges);
    free(t);
    *pt = NULL;
}

typedef struct scored_id {
    float score;
    int32_t id;
} scored_id;

/* highest score first (no global state: tokenizers may be opened in several threads at once) */
static int cmp_score(const void *a, const void *b)
{
    float x = ((const scored_id *)a)->score, y = ((const scored_id *)b)->score;
    return x > y ? -1 : x < y ? 1 : 0;
}

/* A byte-level BPE vocabulary from a GGUF file (tokenizer.ggml.model "gpt2"): the pieces, the merges
   in rank order, the pre-tokenizer by llama.cpp's name for it (Qwen2's with the NFC its tokenizer.json
   asks for, Llama 3's with ignore_merges); control and user-defined tokens matched in the text. */
static int load_gguf_bpe(peft_tokenizer *t, const char *path)
{
    gguf_vocab *v = &t->gv;
    const char *pre = v->pre;
    if (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3")) {
        t->stages[t->n_stages++] = PRETOK_LLAMA3;
        t->ignore_merges = 1;
    } else if (!strcmp(pre, "qwen2")) {
        t->stages[t->n_stages++] = PRETOK_QWEN2;
        t->nfc = 1;
    } else if (!strcmp(pre, "gpt-4o")) {
        t->stages[t->n_stages++] = PRETOK_O200K;
    } else if (!strcmp(pre, "tekken")) { /* llama.cpp: ignore_merges, BOS */
        t->stages[t->n_stages++] = PRETOK_TEKKEN;
        t->ignore_merges = 1;
    } else if (!strcmp(pre, "smollm")) {
        t->stages[t->n_stages++] = PRETOK_DIGITS;
        t->stages[t->n_stages++] = PRETOK_GPT2;
    } else if (!strcmp(pre, "gpt-2") || !strcmp(pre, "gpt2") || !strcmp(pre, "default") || !pre[0]) {
        t->stages[t->n_stages++] = PRETOK_GPT2;
    } else {
        return peft__fail(PEFT_EUNSUPPORTED,
                          "%s: byte-level BPE pre-tokenizer \"%s\" is not supported "
                          "(llama-bpe, qwen2, gpt-4o, tekken, smollm, gpt-2)", path, pre);
    }
    t->n_vocab = v->n;
    t->pieces = calloc((size_t)v->n, sizeof *t->pieces);
    t->piece_len = calloc((size_t)v->n, sizeof *t->piece_len);
    t->is_special = calloc((size_t)v->n, 1);
    t->is_added = calloc((size_t)v->n, 1);
    t->added = calloc((size_t)v->n, sizeof *t->added);
    if (!t->pieces || !t->piece_len || !t->is_special || !t->is_added || !t->added ||
        str_map_init(&t->vocab, (size_t)v->n) || u64_map_init(&t->merges, (size_t)v->n_merges))
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < v->n; i++) {
        t->pieces[i] = v->tokens[i];
        t->piece_len[i] = v->lens[i];
        int type = v->types ? v->types[i] : 1;
        if ((type == 3 || type == 4) && v->lens[i]) { /* control and user-defined tokens: added tokens */
            t->is_special[i] = type == 3;
            t->is_added[i] = 1;
            t->added[t->n_added++] = (added_token){v->tokens[i], v->lens[i], i, type == 3, 0, 0, 0};
        } else if (v->lens[i] && str_map_put(&t->vocab, v->tokens[i], v->lens[i], i)) {
            return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
        }
    }
    for (int i = 0; i < v->n_merges; i++) {
        const char *m = v->merges[i], *sp = memchr(m, ' ', v->merge_lens[i]);
        if (!sp || sp == m || memchr(sp + 1, ' ', v->merge_lens[i] - (size_t)(sp - m) - 1))
            return peft__fail(PEFT_EFORMAT, "%s: merge %d is not \"left right\"", path, i);
        int rc = add_merge(t, m, (size_t)(sp - m), sp + 1, v->merge_lens[i] - (size_t)(sp - m) - 1, (size_t)i, path);
        if (rc)
            return rc;
    }
    byte_alphabet(t);
    t->unk_id = -1;
    t->bos_id = v->bos >= 0 && v->bos < v->n ? v->bos : -1;
    t->eos_id = v->eos >= 0 && v->eos < v->n ? v->eos : -1;
    /* llama.cpp adds BOS for Llama 3 and Tekken when the file does not say */
    t->add_bos = v->has_add_bos ? v->add_bos : t->ignore_merges;
    t->add_eos = v->add_eos;
    return PEFT_OK;
}

/* A vocabulary from a GGUF file: SentencePiece-style (tokenizer.ggml.model "llama") or byte-level BPE ("gpt2"). */
static int load_gguf(peft_tokenizer *t, const char *path)
{
    int rc = peft__gguf_vocab(&t->gv, path);
    if (rc)
        return rc;
    gguf_vocab *v = &t->gv;
    if (!strcmp(v->model, "gpt2"))
        return load_gguf_bpe(t, path);
    t->n_vocab = v->n;
    t->pieces = calloc((size_t)v->n, sizeof *t->pieces);
    t->piece_len = calloc((size_t)v->n, sizeof *t->piece_len);
    t->is_special = calloc((size_t)v->n, 1);
    t->added = calloc((size_t)v->n, sizeof *t->added);
    t->score_rank = malloc((size_t)v->n * sizeof *t->score_rank);
    scored_id *order = malloc((size_t)v->n * sizeof *order);
    if (!t->pieces || !t->piece_len || !t->is_special || !t->added || !t->score_rank || !order ||
        str_map_init(&t->vocab, (size_t)v->n)) {
        free(order);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < v->n; i++) {
        t->pieces[i] = v->tokens[i];
        t->piece_len[i] = v->lens[i];
        int type = v->types ? v->types[i] : 1;
        if (type == 3) { /* control tokens: matched in text like added special tokens */
            t->is_special[i] = 1;
            t->added[t->n_added++] = (added_token){v->tokens[i], v->lens[i], i, 1, 0, 0, 0};
        }
        if (v->lens[i] && str_map_put(&t->vocab, v->tokens[i], v->lens[i], i)) {
            free(order);
            return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
        }
        order[i] = (scored_id){v->scores[i], i};
    }
    qsort(order, (size_t)v->n, sizeof *order, cmp_score);
    for (int i = 0, rank = 0; i < v->n; i++) { /* equal scores share a rank */
        if (i > 0 && order[i].score != order[i - 1].score)
            rank = i;
        t->score_rank[order[i].id] = rank;
    }
    free(order);
    t->spm = 1;
    t->byte_fallback = 1;
    for (int i = 0; i < 256; i++) {
        char p[8];
        snprintf(p, sizeof p, "<0x%02X>", i);
        t->byte_id[i] = piece_id(t, p, 6);
        if (t->byte_id[i] < 0)
            return peft__fail(PEFT_EFORMAT, "%s: the vocabulary has no byte piece %s", path, p);
    }
    t->unk_id = v->unk;
    t->bos_id = v->bos;
    t->eos_id = v->eos;
    t->add_bos = v->add_bos;
    t->add_eos = v->add_eos;
    t->prepend = !v->no_space_prefix; /* llama.cpp strips the first space only where it added one */
    t->replace_space = 1;
    t->strip_leading = !v->no_space_prefix;
    return PEFT_OK;
}

int peft_tokenizer_open(peft_tokenizer **out, const char *path)
{
    if (!out || !path)
        return peft__fail(PEFT_EINVAL, "peft_tokenizer_open: NULL argument");
    *out = NULL;
    struct stat sb;
    char *file = NULL, *dir = NULL;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        file = peft__path_join(path, "tokenizer.json");
        dir = strdup(path);
    } else {
        file = strdup(path);
        dir = strdup(path);
        if (dir) {
            char *slash = strrchr(dir, '/');
            if (slash)
                *slash = '\0';
            else
                strcpy(dir, ".");
        }
    }
    peft_tokenizer *t = calloc(1, sizeof *t);
    char magic[4] = {0};
    FILE *mf = file ? fopen(file, "rb") : NULL;
    if (mf) {
        if (fread(magic, 1, 4, mf) != 4)
            magic[0] = 0;
        fclose(mf);
    }
    int is_gguf = memcmp(magic, "GGUF", 4) == 0;
    int rc = !file || !dir || !t ? peft__fail(PEFT_ENOMEM, "out of memory") : is_gguf ? load_gguf(t, file) : load(t, file);
    if (!rc && !is_gguf)
        rc = read_special(dir, t);
    if (!rc && !is_gguf)
        rc = read_chat_template_file(dir, t);
    free(file);
    free(dir);
    if (rc) {
        peft_tokenizer_close(&t);
        return rc;
    }
    for (int a = 0; a < t->n_added; a++)
        t->added_first[(unsigned char)t->added[a].content[0]] = 1;
    *out = t;
    return PEFT_OK;
}

/* ---- encoding ---- */

typedef struct tok_out {
    int32_t *ids;
    size_t cap, n;
} tok_out;

static void emit(tok_out *o, int32_t id)
{
    if (o->n < o->cap)
        o->ids[o->n] = id;
    o->n++;
}

static size_t utf8_len(unsigned char c)
{
    return c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
}

/* Heap of candidate merges ordered by (rank, position): the lowest rank first,
   the leftmost on ties, as Hugging Face's BPE does. Entries are checked lazily. */
typedef struct merge_cand {
    int32_t rank, pos, left_id, right_id;
} merge_cand;

static int cand_less(const merge_cand *a, const merge_cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(merge_cand *h, size_t *n, merge_cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static merge_cand heap_pop(merge_cand *h, size_t *n)
{
    merge_cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const merge_cand *best = &last;
        if (l < *n && cand_less(&h[l], best))
            m = l, best = &h[l];
        if (r < *n && cand_less(&h[r], best))
            m = r;
        if (m == i)
            break;
        h[i] = h[m];
        i = m;
    }
    if (*n)
        h[i] = last;
    return top;
}

static void consider(const peft_tokenizer *t, merge_cand *heap, size_t *nh, const int32_t *sym, int32_t i,
                     int32_t j)
{
    if (i < 0 || j < 0)
        return;
    int32_t rank, merged;
    if (u64_map_get(&t->merges, (uint64_t)sym[i] << 32 | (uint32_t)sym[j], &rank, &merged)) {
        merge_cand c = {rank, i, sym[i], sym[j]};
        heap_push(heap, nh, c);
    }
}

/* BPE over one normalized segment: O(n log n). */
static int bpe_segment(const peft_tokenizer *t, const char *s, size_t n, tok_out *o)
{
    int32_t *sym = malloc((n + 1) * sizeof *sym);
    int32_t *nxt = malloc((n + 1) * sizeof *nxt);
    int32_t *prv = malloc((n + 1) * sizeof *prv);
    merge_cand *heap = malloc((2 * n + 2) * sizeof *heap);
    int rc = PEFT_OK;
    if (!sym || !nxt || !prv || !heap) {
        rc = peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
        goto done;
    }
    /* initial symbols: characters in the vocabulary, else their bytes (or unk) */
    int32_t count = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_len((unsigned char)s[i]);
        if (i + cl > n)
            cl = n - i;
        int32_t id = piece_id(t, s + i, cl);
        if (id >= 0) {
            sym[count++] = id;
        } else if (t->byte_fallback) {
            for (size_t b = 0; b < cl; b++)
                sym[count++] = t->byte_id[(unsigned char)s[i + b]];
        } else if (t->unk_id >= 0) {
            if (!(t->fuse_unk && count > 0 && sym[count - 1] == t->unk_id))
                sym[count++] = t->unk_id;
        }
        i += cl;
    }
    size_t nh = 0;
    for (int32_t i = 0; i < count; i++) {
        nxt[i] = i + 1 < count ? i + 1 : -1;
        prv[i] = i - 1;
    }
    for (int32_t i = 0; i + 1 < count; i++)
        consider(t, heap, &nh, sym, i, i + 1);
    while (nh > 0) {
        merge_cand c = heap_pop(heap, &nh);
        int32_t i = c.pos, j = sym[i] == c.left_id && sym[i] >= 0 ? nxt[i] : -1;
        if (j < 0 || sym[j] != c.right_id)
            continue; /* stale */
        int32_t rank, merged;
        u64_map_get(&t->merges, (uint64_t)c.left_id << 32 | (uint32_t)c.right_id, &rank, &merged);
        sym[i] = merged;
        sym[j] = -1; /* dead */
        nxt[i] = nxt[j];
        if (nxt[j] >= 0)
            prv[nxt[j]] = i;
        consider(t, heap, &nh, sym, prv[i], i);
        consider(t, heap, &nh, sym, i, nxt[i]);
    }
    for (int32_t i = count ? 0 : -1; i >= 0; i = nxt[i])
        emit(o, sym[i]);
done:
    free(sym);
    free(nxt);
    free(prv);
    free(heap);
    return rc;
}

/* SentencePiece merges (GGUF vocabularies): adjacent spans merge when their concatenation is
   a piece, the highest-scoring piece first, the leftmost on ties (as llama.cpp); spans that end
   up outside the vocabulary fall back to bytes. */
static int spm_segment(const peft_tokenizer *t, const char *s, size_t n, tok_out *o)
{
    int32_t *start = malloc((n + 1) * sizeof *start), *len = malloc((n + 1) * sizeof *len);
    int32_t *nxt = malloc((n + 1) * sizeof *nxt), *prv = malloc((n + 1) * sizeof *prv);
    merge_cand *heap = malloc((2 * n + 2) * sizeof *heap);
    int rc = PEFT_OK;
    if (!start || !len || !nxt || !prv || !heap) {
        rc = peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
        goto done;
    }
    int32_t count = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_len((unsigned char)s[i]);
        if (i + cl > n)
            cl = n - i;
        start[count] = (int32_t)i;
        len[count++] = (int32_t)cl;
        i += cl;
    }
    for (int32_t i = 0; i < count; i++) {
        nxt[i] = i + 1 < count ? i + 1 : -1;
        prv[i] = i - 1;
    }
    size_t nh = 0;
#define SPM_CONSIDER(a, b)                                                                         \
    do {                                                                                           \
        if ((a) >= 0 && (b) >= 0) {                                                                \
            int32_t id = piece_id(t, s + start[a], (size_t)(len[a] + len[b]));                     \
            if (id >= 0) {                                                                         \
                merge_cand c_ = {t->score_rank[id], (a), len[a], len[b]};                          \
                heap_push(heap, &nh, c_);                                                          \
            }                                                                                      \
        }                                                                                          \
    } while (0)
    for (int32_t i = 0; i + 1 < count; i++)
        SPM_CONSIDER(i, i + 1);
    while (nh > 0) {
        merge_cand c = heap_pop(heap, &nh);
        int32_t i = c.pos, j = len[i] == c.left_id ? nxt[i] : -1;
        if (j < 0 || len[j] != c.right_id)
            continue; /* stale */
        len[i] += len[j];
        len[j] = 0;
        nxt[i] = nxt[j];
        if (nxt[j] >= 0)
            prv[nxt[j]] = i;
        SPM_CONSIDER(prv[i], i);
        SPM_CONSIDER(i, nxt[i]);
    }
#undef SPM_CONSIDER
    for (int32_t i = count ? 0 : -1; i >= 0; i = nxt[i]) {
        int32_t id = piece_id(t, s + start[i], (size_t)len[i]);
        if (id >= 0)
            emit(o, id);
        else
            for (int32_t b = 0; b < len[i]; b++)
                emit(o, t->byte_id[(unsigned char)s[start[i] + b]]);
    }
done:
    free(start);
    free(len);
    free(nxt);
    free(prv);
    free(heap);
    return rc;
}

/* ---- byte-level BPE ---- */

/* One word: its bytes spelled in GPT-2's alphabet, then the whole word if ignore_merges and it is
   a piece, else merges by rank. */
static int encode_word(const peft_tokenizer *t, const char *s, size_t n, tok_out *o)
{
    char small[256], *buf = n * 2 <= sizeof small ? small : malloc(n * 2);
    if (!buf)
        return peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->byte_char[(unsigned char)s[i]];
        if (c < 0x80) {
            buf[k++] = (char)c;
        } else { /* below U+0800: two bytes */
            buf[k++] = (char)(0xc0 | c >> 6);
            buf[k++] = (char)(0x80 | (c & 0x3f));
        }
    }
    int rc = PEFT_OK;
    int32_t id = t->ignore_merges ? piece_id(t, buf, k) : -1;
    if (id >= 0)
        emit(o, id);
    else
        rc = bpe_segment(t, buf, k, o);
    if (buf != small)
        free(buf);
    return rc;
}

/* Split cp[a..b) by the pre-tokenizer stage `stage` and hand each piece to the next stage; the
   words of the last one are encoded. off[i] is the byte offset of cp[i] in s (off[n] = its length). */
static int split_stage(const peft_tokenizer *t, int stage, const char *s, const uint32_t *cp, const uint8_t *cls,
                       const size_t *off, size_t a, size_t b, tok_out *o)
{
    if (stage >= t->n_stages || stage >= 3)
        return encode_word(t, s + off[a], off[b] - off[a], o);
    for (size_t i = a; i < b;) {
        size_t e = a + peft__pretok_match(t->stages[stage], cp + a, cls + a, b - a, i - a);
        if (e <= i) /* cannot happen: every expression matches a character */
            e = i + 1;
        int rc = split_stage(t, stage + 1, s, cp, cls, off, i, e, o);
        if (rc)
            return rc;
        i = e;
    }
    return PEFT_OK;
}

static int encode_bytelevel(const peft_tokenizer *t, const char *s, size_t n, tok_out *o)
{
    char *norm = NULL, *pre = NULL;
    size_t nn;
    int rc = t->nfc ? peft__nfc(s, n, &norm, &nn) : PEFT_OK;
    if (rc)
        return rc;
    if (norm) {
        s = norm;
        n = nn;
    }
    if (t->add_prefix_space && s[0] != ' ') {
        if (!(pre = malloc(n + 1))) {
            free(norm);
            return peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
        }
        pre[0] = ' ';
        memcpy(pre + 1, s, n);
        s = pre;
        n++;
    }
    uint32_t *cp = malloc(n * sizeof *cp);
    uint8_t *cls = malloc(n);
    size_t *off = malloc((n + 1) * sizeof *off), m = 0;
    if (!cp || !cls || !off) {
        rc = peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n;) {
        size_t l;
        cp[m] = peft__utf8_decode(s + i, n - i, &l);
        cls[m] = (uint8_t)peft__uc_class(cp[m]);
        off[m++] = i;
        i += l;
    }
    off[m] = n;
    rc = split_stage(t, 0, s, cp, cls, off, 0, m, o);
done:
    free(cp);
    free(cls);
    free(off);
    free(norm);
    free(pre);
    return rc;
}

/* Normalize (spaces -> "▁", optional leading "▁") and run BPE on one plain segment. */
static int encode_plain(const peft_tokenizer *t, const char *s, size_t n, int first, tok_out *o)
{
    if (n == 0)
        return PEFT_OK;
    if (t->byte_level)
        return encode_bytelevel(t, s, n, o);
    size_t extra = 0;
    for (size_t i = 0; i < n; i++)
        extra += s[i] == ' ';
    char *buf = malloc(n + 2 * extra + 4);
    if (!buf)
        return peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
    size_t k = 0;
    if (t->prepend && (first || !t->prepend_first)) {
        memcpy(buf, SPACE_MARK, 3);
        k = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ' && t->replace_space) {
            memcpy(buf + k, SPACE_MARK, 3);
            k += 3;
        } else {
            buf[k++] = s[i];
        }
    }
    int rc = t->spm ? spm_segment(t, buf, k, o) : bpe_segment(t, buf, k, o);
    free(buf);
    return rc;
}

/* an added token marked single_word matches text[b..e) only between non-word characters (or the ends) */
static int word_char(uint32_t c) { return c == '_' || (peft__uc_class(c) & (UC_LETTER | UC_NUMBER)); }

/* the code point that ends at text[*pos] (which is > lo), *pos moved to its first byte */
static uint32_t char_before(const char *text, size_t lo, size_t *pos)
{
    size_t p = *pos - 1, l;
    while (p > lo && ((unsigned char)text[p] & 0xc0) == 0x80)
        p--;
    uint32_t c = peft__utf8_decode(text + p, *pos - p, &l);
    *pos = p;
    return c;
}

static int whole_word(const char *text, size_t len, size_t b, size_t e)
{
    size_t l;
    if (e < len && word_char(peft__utf8_decode(text + e, len - e, &l)))
        return 0;
    return b == 0 || !word_char(char_before(text, 0, &b));
}

int peft_tokenize(const peft_tokenizer *t, const char *text, size_t len, int32_t flags, int32_t *ids,
                  size_t cap, size_t *n_out)
{
    if (!t || (!text && len) || !n_out || (!ids && cap))
        return peft__fail(PEFT_EINVAL, "peft_tokenize: NULL argument");
    tok_out o = {ids, cap, 0};
    int add_bos = (flags & PEFT_TOKENIZE_NO_BOS) ? 0 : (flags & PEFT_TOKENIZE_BOS) ? 1 : t->add_bos;
    int add_eos = (flags & PEFT_TOKENIZE_EOS) ? 1 : t->add_eos;
    if (add_bos && t->bos_id >= 0)
        emit(&o, t->bos_id);
    int parse_special = !(flags & PEFT_TOKENIZE_NO_SPECIAL);
    size_t start = 0, i = 0;
    int first = 1, rc;
    while (i < len) {
        const added_token *hit = NULL;
        if (t->added_first[(unsigned char)text[i]])
            for (int a = 0; a < t->n_added; a++) {
                const added_token *at = &t->added[a]; /* NO_SPECIAL: the non-special added tokens still match */
                if ((parse_special || !at->special) && at->len <= len - i &&
                    memcmp(text + i, at->content, at->len) == 0 && (!hit || at->len > hit->len))
                    hit = at;
            }
        if (hit && hit->single_word && !whole_word(text, len, i, i + hit->len))
            hit = NULL;
        if (!hit) {
            i++;
            continue;
        }
        /* lstrip / rstrip: the whitespace before / after the token is part of its match */
        size_t seg_end = i, next = i + hit->len, l;
        while (hit->lstrip && seg_end > start) {
            size_t b = seg_end;
            if (!(peft__uc_class(char_before(text, start, &b)) & UC_SPACE))
                break;
            seg_end = b;
        }
        while (hit->rstrip && next < len && (peft__uc_class(peft__utf8_decode(text + next, len - next, &l)) & UC_SPACE))
            next += l;
        if ((rc = encode_plain(t, text + start, seg_end - start, first, &o)))
            return rc;
        first = first && seg_end == start;
        emit(&o, hit->id);
        i = start = next;
    }
    if ((rc = encode_plain(t, text + start, len - start, first, &o)))
        return rc;
    if (add_eos && t->eos_id >= 0)
        emit(&o, t->eos_id);
    *n_out = o.n;
    if (o.n > cap)
        return peft__fail(PEFT_ERANGE, "peft_tokenize: %zu ids do not fit in a buffer of %zu", o.n, cap);
    return PEFT_OK;
}

/* ---- decoding ---- */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int peft_detokenize(const peft_tokenizer *t, const int32_t *ids, size_t n, int32_t flags, char *buf, size_t cap,
                    size_t *len_out)
{
    if (!t || (!ids && n) || !len_out || (!buf && cap))
        return peft__fail(PEFT_EINVAL, "peft_detokenize: NULL argument");
    size_t k = 0;
    int strip = (flags & PEFT_DETOKENIZE_NO_STRIP) ? 0 : t->strip_leading;
    int keep_special = flags & PEFT_DETOKENIZE_SPECIAL;
#define PUT(c)                                                                                     \
    do {                                                                                           \
        if (strip > 0 && k == 0 && (c) == ' ') {                                                   \
            strip--;                                                                               \
        } else {                                                                                   \
            if (k < cap)                                                                           \
                buf[k] = (char)(c);                                                                \
            k++;                                                                                   \
        }                                                                                          \
    } while (0)
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab)
            return peft__fail(PEFT_EINVAL, "peft_detokenize: id %d outside the vocabulary (%d)", id, t->n_vocab);
        if (t->is_special[id] && !keep_special)
            continue;
        const char *p = t->pieces[id];
        size_t pl = t->piece_len[id];
        if (t->byte_level && !t->is_added[id]) { /* each character of the piece spells one byte */
            for (size_t j = 0; j < pl;) {
                size_t l;
                uint32_t c = peft__utf8_decode(p + j, pl - j, &l);
                int b = c < 324 ? t->char_byte[c] : -1;
                if (b >= 0) {
                    PUT(b);
                } else {
                    for (size_t q = 0; q < l; q++)
                        PUT(p[j + q]);
                }
                j += l;
            }
            continue;
        }
        if (t->byte_fallback && pl == 6 && p[0] == '<' && p[1] == '0' && p[2] == 'x' && p[5] == '>' &&
            hexval(p[3]) >= 0 && hexval(p[4]) >= 0) {
            int b = hexval(p[3]) * 16 + hexval(p[4]);
            PUT(b);
            continue;
        }
        for (size_t j = 0; j < pl; j++) {
            if (t->replace_space && j + 3 <= pl && memcmp(p + j, SPACE_MARK, 3) == 0) {
                PUT(' ');
                j += 2;
            } else {
                PUT(p[j]);
            }
        }
    }
#undef PUT
    *len_out = k;
    if (k < cap)
        buf[k] = '\0';
    if (k >= cap && cap)
        return peft__fail(PEFT_ERANGE, "peft_detokenize: %zu bytes do not fit in a buffer of %zu", k + 1, cap);
    return PEFT_OK;
}

int32_t peft_tokenizer_vocab_size(const peft_tokenizer *t) { return t ? t->n_vocab : 0; }

int32_t peft_tokenizer_special(const peft_tokenizer *t, int32_t which)
{
    if (!t)
        return -1;
    switch (which) {
    case PEFT_TOKEN_BOS: return t->bos_id;
    case PEFT_TOKEN_EOS: return t->eos_id;
    case PEFT_TOKEN_UNK: return t->unk_id;
    default: return -1;
    }
}

const char *peft_tokenizer_chat_template(const peft_tokenizer *t) { return t ? t->chat_template : NULL; }

/* The text of a special token: tokenizer_config.json's, else the vocabulary piece. */
static const char *special_text(const peft_tokenizer *t, const char *cfg, int32_t id)
{
    if (cfg)
        return cfg;
    return id >= 0 && id < t->n_vocab && t->pieces[id] ? t->pieces[id] : NULL;
}

int peft_chat_render(const peft_tokenizer *t, const char *tmpl, const peft_chat_message *msgs, size_t n,
                     int32_t add_generation_prompt, char *buf, size_t cap, size_t *len_out)
{
    if (!len_out || (!msgs && n) || (!buf && cap))
        return peft__fail(PEFT_EINVAL, "peft_chat_render: NULL argument");
    if (!tmpl)
        tmpl = t ? t->chat_template : NULL;
    if (!tmpl)
        return peft__fail(PEFT_ENOTFOUND, "peft_chat_render: no chat template (tokenizer_config.json has none)");
    peft__chat_msg *m = malloc((n ? n : 1) * sizeof *m);
    if (!m)
        return peft__fail(PEFT_ENOMEM, "peft_chat_render: out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            free(m);
            return peft__fail(PEFT_EINVAL, "peft_chat_render: message %zu has no role or content", i);
        }
        m[i].role = msgs[i].role;
        m[i].content = msgs[i].content;
    }
    char *out;
    size_t len;
    int rc = peft__chat_render(&out, &len, tmpl, m, n, add_generation_prompt != 0,
                               t ? special_text(t, t->bos_text, t->bos_id) : NULL,
                               t ? special_text(t, t->eos_text, t->eos_id) : NULL);
    free(m);
    if (rc)
        return rc;
    *len_out = len;
    if (len + 1 > cap) {
        free(out);
        return cap ? peft__fail(PEFT_ERANGE, "peft_chat_render: %zu bytes needed", len + 1) : PEFT_ERANGE;
    }
    memcpy(buf, out, len + 1);
    free(out);
    return PEFT_OK;
}
