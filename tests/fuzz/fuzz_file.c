/*
 * libFuzzer harness for the file parsers that take a path: the input is written to a
 * temporary file and opened as a safetensors file (FUZZ_SAFETENSORS), a GGUF model
 * (FUZZ_GGUF), converted as a GGUF LoRA adapter to a PEFT directory (FUZZ_GGUF_LORA) or a tokenizer.json (FUZZ_TOKENIZER, then used to encode and decode),
 * or read as the GGUF export reads a vocabulary: a SentencePiece model (FUZZ_SPM) or a
 * tokenizer.json (FUZZ_VOCAB).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../lib/internal.h"
#include "../../lib/safetensors.h"
#include "peft/peft.h"

static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!path[0])
        snprintf(path, sizeof path, "/tmp/peft-fuzz-%d.bin", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    fwrite(data, 1, size, f);
    fclose(f);
#if defined(FUZZ_SAFETENSORS)
    st_file *s = NULL;
    if (st_open(&s, path) == 0) {
        float buf[64];
        for (size_t i = 0; i < s->n_tensors; i++)
            if (s->tensors[i].n_elems <= 64)
                st_read_f32(s, &s->tensors[i], buf, s->tensors[i].n_elems);
    }
    st_close(s);
#elif defined(FUZZ_GGUF)
    peft_model *m = NULL;
    peft_open_options o = PEFT_OPEN_OPTIONS_INIT;
    o.n_threads = 1;
    if (peft_model_open(&m, path, &o) == 0) {
        int32_t tok[4] = {1, 2, 3, 4};
        peft_batch b = PEFT_BATCH_INIT;
        b.tokens = tok;
        b.n_seq = 1;
        b.seq_len = 4;
        peft_eval_result r = PEFT_EVAL_RESULT_INIT;
        peft_eval(m, &b, &r);
    }
    peft_model_close(&m);
#elif defined(FUZZ_SPM)
    peft__vocab_read_check(path, 1);
#elif defined(FUZZ_VOCAB)
    peft__vocab_read_check(path, 0);
#elif defined(FUZZ_GGUF_LORA)
    static char out[80];
    if (!out[0])
        snprintf(out, sizeof out, "/tmp/peft-fuzz-%d.out", (int)getpid());
    peft_convert_options o = PEFT_CONVERT_OPTIONS_INIT;
    o.n_heads = 4;
    o.n_kv_heads = 2;
    if (peft_convert_adapter(path, out, &o) == 0) {
        char p2[128];
        snprintf(p2, sizeof p2, "%s/adapter_model.safetensors", out);
        unlink(p2);
        snprintf(p2, sizeof p2, "%s/adapter_config.json", out);
        unlink(p2);
        rmdir(out);
    }
#elif defined(FUZZ_TOKENIZER)
    peft_tokenizer *t = NULL;
    if (peft_tokenizer_open(&t, path) == 0) {
        static const char text[] = "Hello wörld <s> 123  \n\t😀 cafe\xcc\x81 it'S<|endoftext|>";
        int32_t ids[256];
        size_t n;
        if (peft_tokenize(t, text, sizeof text - 1, 0, ids, 256, &n) == 0) {
            char out[1024];
            size_t len;
            peft_detokenize(t, ids, n, 0, out, sizeof out, &len);
        }
    }
    peft_tokenizer_close(&t);
#endif
    return 0;
}
