/* safetensors: validated reader (memory-mapped) and atomic writer. */
#ifndef PEFT_SAFETENSORS_H
#define PEFT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

#define ST_MAX_HEADER 100000000ull
#define ST_MAX_DIMS 8

enum st_dtype {
    ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL,
    ST_U16, ST_U32, ST_U64, ST_F8_E4M3, ST_F8_E5M2, ST_DTYPE_COUNT
};

typedef struct st_tensor {
    const char *name;
    enum st_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    uint64_t n_elems;
    uint64_t begin, end; /* relative to the data section */
} st_tensor;

typedef struct st_file {
    char *path;
    void *map;
    size_t map_size;
    const uint8_t *data; /* start of the data section */
    json_doc *doc;
    const json_value *metadata; /* "__metadata__" or NULL */
    st_tensor *tensors;
    size_t n_tensors;
} st_file;

const char *st_dtype_name(enum st_dtype dt);

/* Open and validate. Errors name the file and the tensor. */
int st_open(st_file **out, const char *path);
void st_close(st_file *f);
const st_tensor *st_find(const st_file *f, const char *name);
/* Rename tensors in place: each name becomes rename(name, buf, cap) (name itself, or a name no
   longer than it in buf). Returns -1 when two tensors end up with one name. */
int st_rename(st_file *f, const char *(*rename)(const char *name, char *buf, size_t cap));
/* Read a tensor of n elements as float32 (F32, F16, BF16). */
int st_read_f32(const st_file *f, const st_tensor *t, float *dst, uint64_t n);
/* Pointer to the F32 data if it can be used in place (aligned), else NULL. */
const float *st_f32_in_place(const st_file *f, const st_tensor *t);

/* Writer: tensors are F32, written sorted by name, "__metadata__" last. */
typedef struct st_out_tensor {
    const char *name;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const float *data;
} st_out_tensor;

/* Write atomically to path. meta_keys/meta_values: n_meta string pairs. */
int st_write(const char *path, st_out_tensor *tensors, size_t n, const char *const *meta_keys,
             const char *const *meta_values, size_t n_meta);

#endif
