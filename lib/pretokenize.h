/* Byte-level BPE pre-tokenizers: the expressions of GPT-2, Llama 3, Qwen2, o200k (GPT-4o,
   gpt-oss, Phi-4-mini) and Tekken (Mistral Nemo), matched by hand. */
#ifndef PEFT_PRETOKENIZE_H
#define PEFT_PRETOKENIZE_H

#include <stddef.h>
#include <stdint.h>

enum { PRETOK_GPT2 = 1, PRETOK_LLAMA3, PRETOK_QWEN2, PRETOK_O200K, PRETOK_TEKKEN, PRETOK_DIGITS };

/* The kind of a Split pre-tokenizer's expression, or 0 when it is none of the known ones. */
int peft__pretok_kind(const char *regex);
/* The expression of a kind (PRETOK_GPT2..PRETOK_TEKKEN), or NULL. */
const char *peft__pretok_pattern(int kind);
/* Where the word that starts at cp[i] ends (i < n); cls[k] = peft__uc_class(cp[k]). */
size_t peft__pretok_match(int kind, const uint32_t *cp, const uint8_t *cls, size_t n, size_t i);

#endif
