/* Chat templates: a Jinja2 subset (lib/chat.c). */
#ifndef PEFT_CHAT_H
#define PEFT_CHAT_H

#include <stddef.h>

typedef struct peft__chat_msg {
    const char *role, *content;
} peft__chat_msg;

/* Render tmpl with messages, add_generation_prompt, bos_token and eos_token (NULL: undefined).
   *out (malloc'd, NUL-terminated) on success. */
int peft__chat_render(char **out, size_t *out_len, const char *tmpl, const peft__chat_msg *msgs, size_t n,
                      int add_generation_prompt, const char *bos, const char *eos);

#endif
