/*
 * Python's string semantics over UTF-8 for chat templates (Jinja2 runs on Python str): code
 * points, str.isspace(), strip, and case mapping as Python 3.11 does it (Unicode 14, tables in
 * case_tables.h): full mappings (ß -> SS), titlecase letters, and the final sigma.
 */
#include "chat_internal.h"

#include <stdlib.h>

#include "case_tables.h"
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

#define N_OF(a) (sizeof(a) / sizeof(a)[0])

/* the uc_case row of c, or NULL (not cased, maps to itself) */
static const uint32_t *case_row(uint32_t c)
{
    size_t lo = 0, hi = N_OF(uc_case);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t m = uc_case[mid][0] & ~UC_CASED;
        if (c < m)
            hi = mid;
        else if (c > m)
            lo = mid + 1;
        else
            return uc_case[mid];
    }
    return NULL;
}

static int is_cased(uint32_t c)
{
    const uint32_t *r = case_row(c);
    return r && (r[0] & UC_CASED);
}

static int case_ignorable(uint32_t c)
{
    size_t lo = 0, hi = N_OF(uc_case_ignorable);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < uc_case_ignorable[mid][0])
            hi = mid;
        else if (c > uc_case_ignorable[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* Python's Final_Sigma for the capital sigma at cp[i] of cp[b..e): after a cased letter and not
   before one, case-ignorable characters skipped both ways */
static int final_sigma(const uint32_t *cp, size_t b, size_t e, size_t i)
{
    size_t j = i;
    while (j > b && case_ignorable(cp[j - 1]))
        j--;
    if (j == b || !is_cased(cp[j - 1]))
        return 0;
    j = i + 1;
    while (j < e && case_ignorable(cp[j]))
        j++;
    return j == e || !is_cased(cp[j]);
}

/* append mapping `which` (1 lower, 2 upper, 3 title) of cp[i] */
static size_t put_mapped(char *dst, const uint32_t *cp, size_t b, size_t e, size_t i, int which)
{
    if (which == 1 && cp[i] == 0x3a3)
        return peft__utf8_encode(dst, final_sigma(cp, b, e, i) ? 0x3c2 : 0x3c3);
    const uint32_t *r = case_row(cp[i]);
    uint32_t m = r ? r[which] : cp[i];
    if (!(m & UC_MULTI))
        return peft__utf8_encode(dst, m);
    const uint32_t *q = uc_case_multi + (m & ~UC_MULTI);
    size_t n = 0;
    for (uint32_t k = 1; k <= q[0]; k++)
        n += peft__utf8_encode(dst + n, q[k]);
    return n;
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

/* the characters of Jinja's title filter's word boundaries */
static int title_sep(uint32_t c)
{
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || peft__py_space(c);
}

int peft__case_map(char *dst, size_t *dst_len, const char *s, size_t len, int mode)
{
    uint32_t *cp = malloc((len + 1) * sizeof *cp);
    if (!cp)
        return PEFT_ENOMEM;
    size_t m = 0, n = 0;
    for (size_t i = 0; i < len;)
        cp[m++] = peft__utf8_next(s, len, &i);
    int prev_cased = 0;
    size_t item = 0, item_end = 0; /* Jinja's title filter: the current item (a word or a separator run) */
    for (size_t i = 0; i < m; i++) {
        uint32_t c = cp[i];
        if (mode == 0) {
            n += put_mapped(dst + n, cp, 0, m, i, 1);
        } else if (mode == 1) {
            n += put_mapped(dst + n, cp, 0, m, i, 2);
        } else if (mode == 2) { /* str.title(): title after an uncased character, else lower */
            n += put_mapped(dst + n, cp, 0, m, i, prev_cased ? 1 : 3);
            prev_cased = is_cased(c);
        } else if (mode == 3) { /* str.capitalize(): title, then lower */
            n += put_mapped(dst + n, cp, 0, m, i, i == 0 ? 3 : 1);
        } else { /* item[0].upper() + item[1:].lower() for the items of re.split(r"([-\s({\[<]+)", s) */
            if (i == item_end) {
                int sep = title_sep(c);
                item = i;
                for (item_end = i + 1; item_end < m && title_sep(cp[item_end]) == sep;)
                    item_end++;
            }
            n += put_mapped(dst + n, cp, item + 1, item_end, i, i == item ? 2 : 1);
        }
    }
    free(cp);
    dst[n] = '\0';
    *dst_len = n;
    return PEFT_OK;
}
