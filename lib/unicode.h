/* Unicode for the byte-level BPE tokenizers: the character classes of Hugging Face
   tokenizers' pre-tokenizer expressions, and NFC normalization as it does it. */
#ifndef PEFT_UNICODE_H
#define PEFT_UNICODE_H

#include <stddef.h>
#include <stdint.h>

enum { UC_LETTER = 1, UC_NUMBER = 2, UC_SPACE = 4, UC_UPPERISH = 8, UC_LOWERISH = 16 };

/* The classes of a code point as the reference's expressions match them: \p{L}, \p{N}, \s, and
   the o200k expression's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] (UPPERISH), [\p{Ll}\p{Lm}\p{Lo}\p{M}] (LOWERISH). */
int peft__uc_class(uint32_t cp);

/* Decode one UTF-8 character of s[0..n) (n >= 1): its code point, its length in *len. A
   malformed or truncated sequence reads as one byte with the code point 0xFFFD. */
uint32_t peft__utf8_decode(const char *s, size_t n, size_t *len);

/* Write cp (at most U+10FFFF) as UTF-8 at out (up to 4 bytes); returns the length. */
size_t peft__utf8_encode(char *out, uint32_t cp);

/* NFC of s[0..n): *out is NULL when s is already in NFC (nothing to change), else a malloc'd
   string of *out_len bytes. Malformed UTF-8 bytes are kept as they are. */
int peft__nfc(const char *s, size_t n, char **out, size_t *out_len);

#endif
