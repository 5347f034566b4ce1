/* GGUF v3 (llama.cpp) files: a validated header parser shared by the model and LoRA readers. */
#ifndef PEFT_GGUF_H
#define PEFT_GGUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct gg_tensor {
    char name[96];
    int n_dims;
    uint64_t ne[4], n;
    uint32_t type;
    uint64_t offset; /* relative to the data section */
} gg_tensor;

/* One key/value: integers and bools in iv, floats in fv, a string in s/sl (not terminated);
   arrays are walked and given with s = NULL. */
typedef struct gg_kv {
    const char *key;
    size_t key_len;
    uint32_t type;
    int64_t iv;
    double fv;
    const char *s;
    size_t sl;
    size_t raw_off, raw_len; /* the whole entry (key, type, value) in the file */
} gg_kv;

typedef struct gg_file {
    void *map;
    size_t size;
    const char *path;
    gg_tensor *ts; /* owned */
    uint64_t nt;
    const uint8_t *data; /* the aligned data section; every tensor's bytes lie inside the file */
} gg_file;

/* Map the file read-only (f->map, f->size, f->path). */
int peft__gguf_map(gg_file *f, const char *path);
/* Parse and validate the header of the mapped file: magic, version 3, bounded counts, every
   key (kv is called for each; a nonzero return stops with that code), the tensor infos
   (names, 1-4 dimensions, overflow-checked sizes, known types) and their data ranges. */
int peft__gguf_parse(gg_file *f, int (*kv)(void *ctx, const gg_kv *kv), void *ctx);
/* Free the tensor list and unmap (when unmap is set). */
void peft__gguf_release(gg_file *f, int unmap);
const gg_tensor *peft__gguf_find(const gg_file *f, const char *name);
/* the key equals want */
int peft__gg_key_is(const gg_kv *kv, const char *want);
/* a string value copied into buf (truncated to cap - 1) */
void peft__gg_str(const gg_kv *kv, char *buf, size_t cap);
const char *peft__gg_type_name(uint32_t type);
struct peft_config;
/* llama.cpp's tensor name of linear module kind k: "attn_q", ..., "ffn_down"; a fused model's
   (phi3) "attn_qkv" and "ffn_up" in q's and gate's slots (c NULL: the separate modules') */
const char *peft__gguf_mod_name(const struct peft_config *c, int k);

/* ---- writing (gguf_keys.c): a growing byte buffer (oom set, further output dropped, when
   memory runs out; free(b.p) when done), little-endian values, typed keys ---- */
typedef struct gg_buf {
    unsigned char *p;
    size_t n, cap;
    int oom;
} gg_buf;
void peft__gb_put(gg_buf *b, const void *d, size_t n);
void peft__gb_u32(gg_buf *b, uint32_t v);
void peft__gb_u64(gg_buf *b, uint64_t v);
void peft__gb_str(gg_buf *b, const char *s); /* u64 length + bytes */
void peft__gb_kv_str(gg_buf *b, const char *key, const char *v);
void peft__gb_kv_u32(gg_buf *b, const char *key, uint32_t v);
void peft__gb_kv_f32(gg_buf *b, const char *key, float v);
void peft__gb_kv_bool(gg_buf *b, const char *key, int v);
/* an array key's header: element type, count (the elements follow) */
void peft__gb_kv_array(gg_buf *b, const char *key, uint32_t elem_type, uint64_t n);

/* Read the vocabulary of a SentencePiece model (spm 1) or a tokenizer.json (spm 0) as the GGUF
   export does, and free it: PEFT_OK or the reader's error (tests and fuzzing). */
int peft__vocab_read_check(const char *path, int spm);

struct peft_model;
/* The keys of a merged GGUF model made from a Hugging Face directory, as llama.cpp's converter
   writes them: general.*, the architecture's hyperparameters, rope scaling, and the
   tokenizer.* vocabulary of tokenizer.model (SentencePiece) or tokenizer.json beside it, with
   tokenizer_config.json's BOS/EOS settings and chat template. *n_keys counts them. */
int peft__gguf_hf_keys(gg_buf *b, uint64_t *n_keys, const struct peft_model *m, const char *name, int file_type);

#endif
