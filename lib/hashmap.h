/* Open-addressing hash maps: string -> int32 and uint64 -> (int32, int32). */
#ifndef PEFT_HASHMAP_H
#define PEFT_HASHMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct str_map {
    const char **keys; /* borrowed: the caller keeps the strings alive */
    uint32_t *lens;
    int32_t *vals;
    size_t cap, n;
} str_map;

int str_map_init(str_map *m, size_t expected);
void str_map_free(str_map *m);
/* Returns 0, or -1 on allocation failure; existing keys are overwritten. */
int str_map_put(str_map *m, const char *key, size_t len, int32_t val);
/* -1 when absent */
int32_t str_map_get(const str_map *m, const char *key, size_t len);

typedef struct u64_map {
    uint64_t *keys;
    int32_t *a, *b;
    size_t cap, n;
} u64_map;

int u64_map_init(u64_map *m, size_t expected);
void u64_map_free(u64_map *m);
int u64_map_put(u64_map *m, uint64_t key, int32_t a, int32_t b);
/* 1 and the values when present, 0 when absent */
int u64_map_get(const u64_map *m, uint64_t key, int32_t *a, int32_t *b);

#endif
