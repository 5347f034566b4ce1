/* libFuzzer harness: the JSON reader (config.json, safetensors headers, adapter_config.json). */
#include <stddef.h>
#include <stdint.h>

#include "../../lib/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_doc *d = NULL;
    if (json_parse(&d, (const char *)data, size, "fuzz") == 0) {
        const json_value *r = json_root(d);
        (void)json_get(r, "model_type");
    }
    json_free(d);
    return 0;
}
