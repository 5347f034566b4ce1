/*
 * The pre-tokenizer expressions of byte-level BPE tokenizers, matched by hand (as
 * llama.cpp does): GPT-2's (Hugging Face's ByteLevel with use_regex, SmolLM, StarCoder),
 * Llama 3's and Qwen2's (a Split before a ByteLevel without its own expression). Each is
 * an alternation tried left to right at a position; peft__pretok_match returns where the
 * first alternative that matches there ends. Every character is matched by one of them,
 * so a text splits into consecutive words.
 *
 *   GPT-2:  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   Qwen2:  Llama 3's with \p{N} for \p{N}{1,3}
 *   o200k (GPT-4o, gpt-oss, Phi-4-mini):
 *           [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|...)?|
 *           [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|...)?|
 *           \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   Tekken (Mistral Nemo): o200k's without the contractions and with \p{N} for \p{N}{1,3}
 */
#include "pretokenize.h"

#include <string.h>

#include "unicode.h"

static const char *const patterns[] = {
    [PRETOK_GPT2] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
    [PRETOK_LLAMA3] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    [PRETOK_QWEN2] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    [PRETOK_O200K] = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
                     "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
                     "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| "
                     "?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    [PRETOK_TEKKEN] = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
                      "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
                      "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

int peft__pretok_kind(const char *regex)
{
    for (int k = PRETOK_GPT2; k <= PRETOK_TEKKEN; k++)
        if (!strcmp(regex, patterns[k]))
            return k;
    return 0;
}

const char *peft__pretok_pattern(int kind)
{
    return kind >= PRETOK_GPT2 && kind <= PRETOK_TEKKEN ? patterns[kind] : NULL;
}

/* the letter of a contraction at cp[i] (case-insensitive: ASCII, and the long s that folds to s) */
static uint32_t fold(uint32_t c, int icase)
{
    if (!icase)
        return c;
    if (c == 0x17f)
        return 's';
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* 's|'t|'re|'ve|'m|'ll|'d at i: the end, or 0 */
static size_t contraction(const uint32_t *cp, size_t n, size_t i, int icase)
{
    if (i + 1 >= n || cp[i] != '\'')
        return 0;
    uint32_t a = fold(cp[i + 1], icase);
    if (a == 's' || a == 't' || a == 'm' || a == 'd')
        return i + 2;
    if (i + 2 >= n)
        return 0;
    uint32_t b = fold(cp[i + 2], icase);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
        return i + 3;
    return 0;
}

#define IS(k, bit) ((cls[k] & (bit)) != 0)
#define OTHER(k) (!(cls[k] & (UC_LETTER | UC_NUMBER | UC_SPACE)))
#define NEWLINE(k) (cp[k] == '\r' || cp[k] == '\n')

/* \s+(?!\S)|\s+ at a whitespace position i */
static size_t spaces(const uint8_t *cls, size_t n, size_t i)
{
    size_t j = i;
    while (j < n && IS(j, UC_SPACE))
        j++;
    /* (?!\S): at the end of the text the whole run; else the run less its last space, if that leaves one */
    if (j == n || j - 1 == i)
        return j;
    return j - 1;
}

/* \s*[\r\n]+|\s+(?!\S)|\s+ at a whitespace position i: the run up to its last line break, else spaces() */
static size_t newline_run(const uint32_t *cp, const uint8_t *cls, size_t n, size_t i)
{
    size_t end = i, last = n;
    while (end < n && IS(end, UC_SPACE)) {
        if (NEWLINE(end))
            last = end;
        end++;
    }
    if (last != n)
        return last + 1;
    return spaces(cls, n, i);
}

/* the alternatives Llama 3's, Qwen2's and o200k's expressions end with, at i:
   \p{N}{1,digits}| ?[^\s\p{L}\p{N}]+[\r\n]* (o200k: [\r\n/]*)|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t tail(const uint32_t *cp, const uint8_t *cls, size_t n, size_t i, int digits, int slash)
{
    size_t j = i;
    if (IS(i, UC_NUMBER)) {
        while (j < n && j - i < (size_t)digits && IS(j, UC_NUMBER))
            j++;
        return j;
    }
    j = i + (cp[i] == ' ' && i + 1 < n && OTHER(i + 1));
    if (OTHER(j)) {
        while (j < n && OTHER(j))
            j++;
        while (j < n && (NEWLINE(j) || (slash && cp[j] == '/')))
            j++;
        return j;
    }
    return newline_run(cp, cls, n, i);
}

static size_t gpt2(const uint32_t *cp, const uint8_t *cls, size_t n, size_t i)
{
    size_t e = contraction(cp, n, i, 0), j;
    if (e)
        return e;
    j = i + (cp[i] == ' ' && i + 1 < n && !IS(i + 1, UC_SPACE));
    if (IS(j, UC_LETTER)) {
        while (j < n && IS(j, UC_LETTER))
            j++;
        return j;
    }
    if (IS(j, UC_NUMBER)) {
        while (j < n && IS(j, UC_NUMBER))
            j++;
        return j;
    }
    if (OTHER(j)) {
        while (j < n && OTHER(j))
            j++;
        return j;
    }
    return spaces(cls, n, i);
}

static size_t llama3(const uint32_t *cp, const uint8_t *cls, size_t n, size_t i, int digits)
{
    size_t e = contraction(cp, n, i, 1), j;
    if (e)
        return e;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    j = i + (!NEWLINE(i) && !IS(i, UC_LETTER | UC_NUMBER) && i + 1 < n && IS(i + 1, UC_LETTER));
    if (IS(j, UC_LETTER)) {
        while (j < n && IS(j, UC_LETTER))
            j++;
        return j;
    }
    return tail(cp, cls, n, i, digits, 0);
}

/* [^\r\n\p{L}\p{N}]: the optional character before a word */
#define PREFIX(k) (!NEWLINE(k) && !IS(k, UC_LETTER | UC_NUMBER))

/* o200k's and Tekken's words from j: U*W+ (first) or U+W* (second), U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}],
   W = [\p{Ll}\p{Lm}\p{Lo}\p{M}], then (o200k) an optional contraction; 0 when the form does not match */
static size_t o200k_word(const uint32_t *cp, const uint8_t *cls, size_t n, size_t j, int second, int contractions)
{
    size_t k = j, e;
    while (k < n && IS(k, UC_UPPERISH))
        k++;
    if (second) {
        if (k == j)
            return 0;
        e = k;
    } else { /* U* gives back characters until W+ can match (U and W share Lm, Lo and M) */
        size_t t = k;
        while (!(t < n && IS(t, UC_LOWERISH))) {
            if (t == j)
                return 0;
            t--;
        }
        e = t;
    }
    while (e < n && IS(e, UC_LOWERISH))
        e++;
    size_t c = contractions ? contraction(cp, n, e, 1) : 0;
    return c ? c : e;
}

/* o200k (contractions after words, up to 3 digits) and Tekken (neither) */
static size_t o200k(const uint32_t *cp, const uint8_t *cls, size_t n, size_t i, int tekken)
{
    for (int second = 0; second < 2; second++) {
        size_t e;
        if (PREFIX(i) && i + 1 < n && (e = o200k_word(cp, cls, n, i + 1, second, !tekken)))
            return e;
        if ((e = o200k_word(cp, cls, n, i, second, !tekken)))
            return e;
    }
    return tail(cp, cls, n, i, tekken ? 1 : 3, 1);
}

size_t peft__pretok_match(int kind, const uint32_t *cp, const uint8_t *cls, size_t n, size_t i)
{
    switch (kind) {
    case PRETOK_GPT2: return gpt2(cp, cls, n, i);
    case PRETOK_LLAMA3: return llama3(cp, cls, n, i, 3);
    case PRETOK_QWEN2: return llama3(cp, cls, n, i, 1);
    case PRETOK_O200K: return o200k(cp, cls, n, i, 0);
    case PRETOK_TEKKEN: return o200k(cp, cls, n, i, 1);
    case PRETOK_DIGITS: /* each numeric character alone, the runs between them whole */
        if (IS(i, UC_NUMBER))
            return i + 1;
        while (i < n && !IS(i, UC_NUMBER))
            i++;
        return i;
    default: return n;
    }
}
