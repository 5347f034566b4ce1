/* libFuzzer harness: chat templates (the Jinja2 subset of lib/chat.c) on a fixed conversation. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *tmpl = malloc(size + 1);
    if (!tmpl)
        return 0;
    memcpy(tmpl, data, size);
    tmpl[size] = '\0';
    static const peft__chat_msg msgs[3] = {
        {"system", "Be brief."}, {"user", "  caf\xc3\xa9 \xf0\x9f\x98\x80 Q?"}, {"assistant", "A."}};
    for (int agp = 0; agp < 2; agp++) {
        char *out = NULL;
        size_t len;
        if (peft__chat_render(&out, &len, tmpl, msgs, 3, agp, "<s>", "</s>") == 0 && strlen(out) != len)
            abort(); /* the length reported is the text's (templates here emit no NUL) */
        free(out);
    }
    free(tmpl);
    return 0;
}
