/* libFuzzer harness: config.json to model configuration. */
#include <stddef.h>
#include <stdint.h>

#include "../../lib/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    peft_config c;
    (void)peft__config_parse(&c, (const char *)data, size, "fuzz");
    return 0;
}
