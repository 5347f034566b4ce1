/* Deterministic random numbers: splitmix64 seeding, xoshiro256** stream. */
#include <math.h>

#include "internal.h"

uint64_t peft__hash64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void peft__rng_seed(peft_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        seed = peft__hash64(seed);
        rng->s[i] = seed;
    }
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t peft__rng_next(peft_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double peft__rng_uniform(peft_rng *rng) { return (double)(peft__rng_next(rng) >> 11) * 0x1.0p-53; }

double peft__rng_normal(peft_rng *rng)
{
    /* Box-Muller; u1 in (0, 1] so log() is finite */
    double u1 = 1.0 - peft__rng_uniform(rng);
    double u2 = peft__rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}
