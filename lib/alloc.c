/* Aligned, zeroed allocations. Every failure is reported by the caller. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void *peft__calloc(size_t n, size_t size)
{
    size_t bytes;
    if (!peft__mul_size(n, size, &bytes))
        return NULL;
    if (bytes == 0)
        bytes = 1;
    /* round up to the alignment, as aligned_alloc requires */
    if (bytes > SIZE_MAX - 63)
        return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void *peft__alloc_floats(size_t n) { return peft__calloc(n, sizeof(float)); }

void peft__free(void *p) { free(p); }
