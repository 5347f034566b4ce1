/*
 * Unicode for the byte-level BPE tokenizers (tables in unicode_classes.h and unicode_nfc.h,
 * generated from the reference: see tests/golden/make_unicode_tables.py).
 *
 * NFC is the standard algorithm (UAX #15): full canonical decomposition (Hangul
 * syllables algorithmically), canonical ordering of combining marks by class, then
 * canonical composition of starters with the marks not blocked from them. Text whose
 * code points are all below U+0300 is already in NFC and is passed through untouched.
 */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "unicode_classes.h"
#include "unicode_nfc.h"

#define N_OF(a) (sizeof(a) / sizeof(a)[0])

int peft__uc_class(uint32_t cp)
{
    if (cp < 0x80) {
        if (cp >= 'a' && cp <= 'z')
            return UC_LETTER | UC_LOWERISH;
        if (cp >= 'A' && cp <= 'Z')
            return UC_LETTER | UC_UPPERISH;
        if (cp >= '0' && cp <= '9')
            return UC_NUMBER;
        return cp == ' ' || (cp >= '\t' && cp <= '\r') ? UC_SPACE : 0;
    }
    size_t lo = 0, hi = N_OF(uc_classes);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uc_classes[mid][0])
            hi = mid;
        else if (cp > uc_classes[mid][1])
            lo = mid + 1;
        else
            return (int)uc_classes[mid][2];
    }
    return 0;
}

uint32_t peft__utf8_decode(const char *str, size_t n, size_t *len)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned c = s[0];
    size_t l = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (l == 1) {
        *len = 1;
        return c;
    }
    uint32_t cp = l == 2 ? c & 0x1f : l == 3 ? c & 0x0f : c & 0x07;
    if (l == 0 || l > n)
        goto bad;
    for (size_t i = 1; i < l; i++) {
        if ((s[i] & 0xc0) != 0x80)
            goto bad;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    /* overlong forms, surrogates and values past U+10FFFF are malformed */
    if ((l == 2 && cp < 0x80) || (l == 3 && cp < 0x800) || (l == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        goto bad;
    *len = l;
    return cp;
bad:
    *len = 1;
    return 0xfffd;
}

size_t peft__utf8_encode(char *out, uint32_t cp)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

static int ccc(uint32_t cp)
{
    if (cp < 0x300)
        return 0;
    size_t lo = 0, hi = N_OF(uc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uc_ccc[mid][0])
            hi = mid;
        else if (cp > uc_ccc[mid][0])
            lo = mid + 1;
        else
            return (int)uc_ccc[mid][1];
    }
    return 0;
}

#define HANGUL_S 0xac00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11a7u
#define HANGUL_VN 21u
#define HANGUL_TN 28u
#define HANGUL_N (19u * HANGUL_VN * HANGUL_TN)

/* the full canonical decomposition of cp into d (up to 18 code points); its length */
static size_t decompose(uint32_t cp, uint32_t *d)
{
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_N) {
        uint32_t s = cp - HANGUL_S, t = s % HANGUL_TN;
        d[0] = HANGUL_L + s / (HANGUL_VN * HANGUL_TN);
        d[1] = HANGUL_V + s % (HANGUL_VN * HANGUL_TN) / HANGUL_TN;
        if (!t)
            return 2;
        d[2] = HANGUL_T + t;
        return 3;
    }
    if (cp >= 0xc0) {
        size_t lo = 0, hi = N_OF(uc_decomp);
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (cp < uc_decomp[mid][0]) {
                hi = mid;
            } else if (cp > uc_decomp[mid][0]) {
                lo = mid + 1;
            } else {
                memcpy(d, uc_decomp_pool + uc_decomp[mid][1], uc_decomp[mid][2] * sizeof *d);
                return uc_decomp[mid][2];
            }
        }
    }
    d[0] = cp;
    return 1;
}

/* the primary composite of a + b, or 0 */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + 19 && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_N && (a - HANGUL_S) % HANGUL_TN == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_TN)
        return a + (b - HANGUL_T);
    size_t lo = 0, hi = N_OF(uc_compose);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *e = uc_compose[mid];
        if (a < e[0] || (a == e[0] && b < e[1]))
            hi = mid;
        else if (a > e[0] || b > e[1])
            lo = mid + 1;
        else
            return e[2];
    }
    return 0;
}

/* a malformed byte is carried as 0x80000000 | byte: class 0, composes with nothing */
#define RAW_BYTE 0x80000000u

int peft__nfc(const char *s, size_t n, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    size_t i = 0;
    while (i < n && (unsigned char)s[i] < 0xcc) /* code points below U+0300: already NFC */
        i++;
    if (i == n)
        return PEFT_OK;
    /* decomposed code points (at most 18 per input byte is far above the need: 4 per byte) */
    uint32_t *cp = malloc((4 * n + 18) * sizeof *cp);
    if (!cp)
        return peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
    size_t m = 0;
    for (size_t k = 0; k < n;) {
        size_t l;
        uint32_t c = peft__utf8_decode(s + k, n - k, &l);
        if (c == 0xfffd && !(l == 3 && !memcmp(s + k, "\xef\xbf\xbd", 3)))
            cp[m++] = RAW_BYTE | (unsigned char)s[k];
        else
            m += decompose(c, cp + m);
        k += l;
    }
    /* canonical ordering: a stable insertion sort of each run of marks by class */
    for (size_t k = 1; k < m; k++) {
        int ck = cp[k] & RAW_BYTE ? 0 : ccc(cp[k]);
        if (!ck)
            continue;
        uint32_t c = cp[k];
        size_t j = k;
        while (j > 0 && !(cp[j - 1] & RAW_BYTE) && ccc(cp[j - 1]) > ck) {
            cp[j] = cp[j - 1];
            j--;
        }
        cp[j] = c;
    }
    /* composition: each mark joins the last starter unless a mark of the same or a higher class,
       or a starter, stands between them */
    size_t w = 0;
    ptrdiff_t starter = -1;
    int last_cc = -1;
    for (size_t k = 0; k < m; k++) {
        uint32_t c = cp[k];
        int cc = c & RAW_BYTE ? 0 : ccc(c);
        if (starter >= 0 && !(c & RAW_BYTE) && !(cp[starter] & RAW_BYTE) &&
            (last_cc < cc || (last_cc == 0 && (size_t)starter == w - 1))) {
            uint32_t comp = compose(cp[starter], c);
            if (comp) {
                cp[starter] = comp;
                continue;
            }
        }
        if (cc == 0) {
            starter = (ptrdiff_t)w;
            last_cc = 0;
        } else {
            last_cc = cc;
        }
        cp[w++] = c;
    }
    char *o = malloc(4 * w + 1);
    if (!o) {
        free(cp);
        return peft__fail(PEFT_ENOMEM, "tokenizer: out of memory");
    }
    size_t len = 0;
    for (size_t k = 0; k < w; k++) {
        if (cp[k] & RAW_BYTE)
            o[len++] = (char)(cp[k] & 0xff);
        else
            len += peft__utf8_encode(o + len, cp[k]);
    }
    free(cp);
    if (len == n && !memcmp(o, s, n)) {
        free(o);
        return PEFT_OK;
    }
    *out = o;
    *out_len = len;
    return PEFT_OK;
}
