/*
 * Python's string semantics over UTF-8 for chat templates (Jinja2 runs on Python str): code
 * points, str.isspace(), strip, and case mapping for the scripts mapped here (Latin-1, Latin
 * Extended-A and Additional, Greek, Cyrillic); any other cased character is reported so that
 * the template is refused rather than rendered differently.
 */
#include "chat_internal.h"
#include "unicode.h"

uint32_t peft__utf8_next(const char *s, size_t n, size_t *i)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t c = u[*i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (len == 1 || *i + (size_t)len > n) {
        (*i)++;
        return c;
    }
    c &= 0x7fu >> len;
    for (int k = 1; k < len; k++)
        c = (c << 6) | (u[*i + (size_t)k] & 0x3fu);
    *i += (size_t)len;
    return c;
}

size_t peft__utf8_offset(const char *s, size_t n, long long k)
{
    size_t i = 0;
    while (k-- > 0 && i < n)
        peft__utf8_next(s, n, &i);
    return i;
}

size_t peft__utf8_len(const char *s, size_t n)
{
    size_t i = 0, count = 0;
    while (i < n) {
        peft__utf8_next(s, n, &i);
        count++;
    }
    return count;
}

/* Simple case pairs (upper, lower) of the scripts mapped here: Latin-1, Latin Extended-A and
   Additional, Greek, Cyrillic and its Supplement, Armenian, fullwidth Latin, Deseret. *cased
   tells whether c has case; -1 when it lies in a cased block not mapped here, or its Python
   mapping is not one-to-one (then the caller refuses); *up is 0 for a small letter whose
   capital is several code points (the caller refuses only the upper mapping). */
static void case_pair(uint32_t c, uint32_t *up, uint32_t *lo, int *cased)
{
    *up = *lo = c;
    *cased = 0;
    if (c < 0x80) {
        if (c >= 'a' && c <= 'z')
            *up = c - 32, *cased = 1;
        else if (c >= 'A' && c <= 'Z')
            *lo = c + 32, *cased = 1;
        return;
    }
    if (c == 0xdf || c == 0x149 || c == 0x390 || c == 0x3b0 || c == 0x587 || (c >= 0x1e96 && c <= 0x1e9a)) {
        *up = 0, *cased = 1; /* small letters whose capital is several code points (sharp s, ...) */
        return;
    }
    if (c == 0x130 || c == 0x131 || c == 0x138 || c == 0x17f || c == 0x3a3 || c == 0x3c2 || c == 0xb5 ||
        c == 0x1e9b || c == 0x1e9e) {
        *cased = -1; /* special mappings (dotted I, final sigma, ...) */
        return;
    }
    if (c >= 0xc0 && c <= 0xde && c != 0xd7)
        *lo = c + 32, *cased = 1;
    else if (c >= 0xe0 && c <= 0xfe && c != 0xf7)
        *up = c - 32, *cased = 1;
    else if (c == 0xff)
        *up = 0x178, *cased = 1;
    else if (c == 0x178)
        *lo = 0xff, *cased = 1;
    else if ((c >= 0x100 && c <= 0x137) || (c >= 0x14a && c <= 0x177) || (c >= 0x1e00 && c <= 0x1e95) ||
             (c >= 0x1ea0 && c <= 0x1eff)) {
        *cased = 1;
        if (c % 2)
            *up = c - 1;
        else
            *lo = c + 1;
    } else if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e)) {
        *cased = 1;
        if (c % 2)
            *lo = c + 1;
        else
            *up = c - 1;
    } else if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) {
        *lo = c + 32, *cased = 1;
    } else if (c >= 0x3b1 && c <= 0x3c9) {
        *up = c - 32, *cased = 1;
    } else if (c == 0x386 || (c >= 0x388 && c <= 0x38a) || c == 0x38c || c == 0x38e || c == 0x38f) {
        *lo = c == 0x386 ? 0x3ac : c == 0x38c ? 0x3cc : c >= 0x38e ? c + 63 : c + 37, *cased = 1;
    } else if (c == 0x3ac || (c >= 0x3ad && c <= 0x3af) || c == 0x3cc || c == 0x3cd || c == 0x3ce) {
        *up = c == 0x3ac ? 0x386 : c == 0x3cc ? 0x38c : c >= 0x3cd ? c - 63 : c - 37, *cased = 1;
    } else if (c >= 0x410 && c <= 0x42f) {
        *lo = c + 32, *cased = 1;
    } else if (c >= 0x430 && c <= 0x44f) {
        *up = c - 32, *cased = 1;
    } else if (c >= 0x400 && c <= 0x40f) {
        *lo = c + 80, *cased = 1;
    } else if (c >= 0x450 && c <= 0x45f) {
        *up = c - 80, *cased = 1;
    } else if (c >= 0x460 && c <= 0x52f) { /* Cyrillic Supplement: upper, lower pairs */
        if (c >= 0x482 && c <= 0x489) /* a sign and combining marks */
            return;
        *cased = 1;
        if (c == 0x4c0 || c == 0x4cf) /* palochka */
            *lo = 0x4cf, *up = 0x4c0;
        else if ((c >= 0x4c1 && c <= 0x4ce) == (c % 2 == 1))
            *lo = c + 1;
        else
            *up = c - 1;
    } else if ((c >= 0x531 && c <= 0x556) || (c >= 0x561 && c <= 0x586) || (c >= 0xff21 && c <= 0xff3a) ||
               (c >= 0xff41 && c <= 0xff5a) || (c >= 0x10400 && c <= 0x1044f)) {
        /* Armenian, fullwidth Latin, Deseret: a block of capitals, then one of small letters */
        uint32_t first = c >= 0x10400 ? 0x10400 : c >= 0xff21 ? 0xff21 : 0x531;
        uint32_t d = first == 0x10400 ? 40 : first == 0xff21 ? 32 : 48;
        *cased = 1;
        if (c < first + d)
            *lo = c + d;
        else
            *up = c - d;
    } else if (c == 0x560 || c == 0x588) { /* Armenian small letters without a capital */
        *cased = 1;
    } else if ((c >= 0x180 && c <= 0x2af) || (c >= 0x370 && c <= 0x3ff) || c == 0x587 || (c >= 0x10a0 && c <= 0x10ff) ||
               (c >= 0x13a0 && c <= 0x13ff) ||
               (c >= 0x1c80 && c <= 0x1cbf) || (c >= 0x1d00 && c <= 0x1dbf) || (c >= 0x1e00 && c <= 0x1fff) ||
               (c >= 0x2100 && c <= 0x218f) || (c >= 0x24b6 && c <= 0x24e9) || (c >= 0x2c00 && c <= 0x2d2f) ||
               (c >= 0xa640 && c <= 0xa69f) || (c >= 0xa720 && c <= 0xa7ff) || (c >= 0xab30 && c <= 0xabbf) ||
               (c >= 0xfb00 && c <= 0xfb17) || (c >= 0x10450 && c <= 0x104ff) ||
               (c >= 0x10c80 && c <= 0x10cff) || (c >= 0x118a0 && c <= 0x118ff) || (c >= 0x16e40 && c <= 0x16e9f) ||
               (c >= 0x1e900 && c <= 0x1e95f)) {
        *cased = -1;
    }
}

/* Python's str.isspace() */
int peft__py_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static int in_chars(uint32_t cp, const char *chars, size_t n_chars)
{
    size_t i = 0;
    while (i < n_chars)
        if (peft__utf8_next(chars, n_chars, &i) == cp)
            return 1;
    return 0;
}

static int stripped(uint32_t cp, const char *chars, size_t n_chars)
{
    return chars ? in_chars(cp, chars, n_chars) : peft__py_space(cp);
}

void peft__py_strip(const char *s, size_t n, int left, int right, const char *chars, size_t n_chars, size_t *b,
                    size_t *e)
{
    size_t lo = 0, hi = n;
    while (left && lo < hi) {
        size_t j = lo;
        if (!stripped(peft__utf8_next(s, hi, &j), chars, n_chars))
            break;
        lo = j;
    }
    while (right && hi > lo) {
        size_t j = hi - 1;
        while (j > lo && ((unsigned char)s[j] & 0xc0) == 0x80)
            j--;
        size_t k = j;
        if (!stripped(peft__utf8_next(s, hi, &k), chars, n_chars))
            break;
        hi = j;
    }
    *b = lo;
    *e = hi;
}

size_t peft__case_map(char *dst, const char *s, size_t len, int mode, uint32_t *bad)
{
    size_t i = 0, n = 0;
    int prev_cased = 0, first = 1, word_start = 1;
    while (i < len) {
        uint32_t cp = peft__utf8_next(s, len, &i), up, lo;
        int cased;
        case_pair(cp, &up, &lo, &cased);
        if (cased < 0) {
            *bad = cp;
            return (size_t)-1;
        }
        uint32_t r = cp;
        if (mode == 0)
            r = lo;
        else if (mode == 1)
            r = up;
        else if (mode == 2)
            r = cased ? (prev_cased ? lo : up) : cp;
        else if (mode == 3)
            r = first ? up : lo;
        else
            r = word_start ? up : lo;
        if (r == 0 && cased) { /* a capital of several code points (up 0) */
            *bad = cp;
            return (size_t)-1;
        }
        prev_cased = cased;
        first = 0;
        word_start = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || peft__py_space(cp);
        n += peft__utf8_encode(dst + n, r);
    }
    dst[n] = '\0';
    return n;
}
