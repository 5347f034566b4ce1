/* Open-addressing (linear probing) hash maps with power-of-two capacity. */
#include "hashmap.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t cap_for(size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2 + 1)
        cap *= 2;
    return cap;
}

int str_map_init(str_map *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    m->cap = cap_for(expected);
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->lens = calloc(m->cap, sizeof *m->lens);
    m->vals = calloc(m->cap, sizeof *m->vals);
    if (!m->keys || !m->lens || !m->vals) {
        str_map_free(m);
        return -1;
    }
    return 0;
}

void str_map_free(str_map *m)
{
    free(m->keys);
    free(m->lens);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int str_grow(str_map *m)
{
    str_map n;
    if (str_map_init(&n, m->cap))
        return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i])
            str_map_put(&n, m->keys[i], m->lens[i], m->vals[i]);
    str_map_free(m);
    *m = n;
    return 0;
}

int str_map_put(str_map *m, const char *key, size_t len, int32_t val)
{
    if ((m->n + 1) * 2 > m->cap && str_grow(m))
        return -1;
    size_t i = hash_bytes(key, len) & (m->cap - 1);
    while (m->keys[i]) {
        if (m->lens[i] == len && memcmp(m->keys[i], key, len) == 0) {
            m->vals[i] = val;
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->keys[i] = key;
    m->lens[i] = (uint32_t)len;
    m->vals[i] = val;
    m->n++;
    return 0;
}

int32_t str_map_get(const str_map *m, const char *key, size_t len)
{
    if (!m->cap)
        return -1;
    size_t i = hash_bytes(key, len) & (m->cap - 1);
    while (m->keys[i]) {
        if (m->lens[i] == len && memcmp(m->keys[i], key, len) == 0)
            return m->vals[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

/* keys are stored +1 so that 0 marks an empty slot */
int u64_map_init(u64_map *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    m->cap = cap_for(expected);
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->a = calloc(m->cap, sizeof *m->a);
    m->b = calloc(m->cap, sizeof *m->b);
    if (!m->keys || !m->a || !m->b) {
        u64_map_free(m);
        return -1;
    }
    return 0;
}

void u64_map_free(u64_map *m)
{
    free(m->keys);
    free(m->a);
    free(m->b);
    memset(m, 0, sizeof *m);
}

int u64_map_put(u64_map *m, uint64_t key, int32_t a, int32_t b)
{
    if ((m->n + 1) * 2 > m->cap) {
        u64_map n;
        if (u64_map_init(&n, m->cap))
            return -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i])
                u64_map_put(&n, m->keys[i] - 1, m->a[i], m->b[i]);
        u64_map_free(m);
        *m = n;
    }
    size_t i = hash_u64(key) & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != key + 1)
        i = (i + 1) & (m->cap - 1);
    if (!m->keys[i])
        m->n++;
    m->keys[i] = key + 1;
    m->a[i] = a;
    m->b[i] = b;
    return 0;
}

int u64_map_get(const u64_map *m, uint64_t key, int32_t *a, int32_t *b)
{
    if (!m->cap)
        return 0;
    size_t i = hash_u64(key) & (m->cap - 1);
    while (m->keys[i]) {
        if (m->keys[i] == key + 1) {
            *a = m->a[i];
            *b = m->b[i];
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return 0;
}
