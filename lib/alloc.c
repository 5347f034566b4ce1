/* Aligned, zeroed allocations. Every failure is reported by the caller. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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
    /* Big buffers (the workspace, weight copies) on 2 MiB pages where the kernel allows it
       (transparent huge pages in "madvise" mode): a fresh 4 KiB page costs a fault on first
       touch, which on some VMs is about 13 microseconds; a step's buffers are most of its
       first step's time. */
    const size_t huge = (size_t)2 << 20;
    if (bytes >= 2 * huge && bytes <= SIZE_MAX - huge) {
        size_t round = (bytes + huge - 1) & ~(huge - 1);
        void *p = aligned_alloc(huge, round);
        if (p) {
#ifdef MADV_HUGEPAGE
            madvise(p, round, MADV_HUGEPAGE);
#endif
            memset(p, 0, round);
        }
        return p;
    }
    void *p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void *peft__alloc_floats(size_t n) { return peft__calloc(n, sizeof(float)); }

void peft__free(void *p) { free(p); }
