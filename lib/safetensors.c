/*
 * safetensors reader and writer.
 * File: u64 LE header length N, N bytes of JSON, then the data section.
 * The reader enforces: N <= ST_MAX_HEADER; 8 + N <= file size; every entry
 * has a known dtype, a shape and data_offsets; byte size == elements x dtype
 * size (overflow-checked); offsets sorted start at 0 and are contiguous;
 * the last end + 8 + N == file size.
 */
#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "internal.h"

static const struct {
    const char *name;
    unsigned size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_F64] = {"F64", 8},   [ST_F32] = {"F32", 4},         [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I64] = {"I64", 8},         [ST_I32] = {"I32", 4},
    [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},           [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1}, [ST_U16] = {"U16", 2},         [ST_U32] = {"U32", 4},
    [ST_U64] = {"U64", 8},   [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(enum st_dtype dt) { return dt < ST_DTYPE_COUNT ? dtypes[dt].name : "?"; }

static int cmp_begin(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int get_u64(const json_value *v, uint64_t *out)
{
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->number < 0 || v->number > 9007199254740992.0)
        return -1;
    *out = (uint64_t)v->number;
    return 0;
}

static int parse_entry(st_tensor *t, const char *name, const json_value *e, const char *path)
{
    t->name = name;
    if (e->type != JSON_OBJECT)
        return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': entry is not an object", path, name);
    const json_value *dt = json_get(e, "dtype"), *sh = json_get(e, "shape"),
                     *off = json_get(e, "data_offsets");
    if (!dt || dt->type != JSON_STRING)
        return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': missing dtype", path, name);
    int found = -1;
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (strcmp(dt->string, dtypes[i].name) == 0)
            found = i;
    if (found < 0)
        return peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s': unknown dtype '%s'", path, name,
                          dt->string);
    t->dtype = (enum st_dtype)found;
    if (!sh || sh->type != JSON_ARRAY)
        return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': missing shape", path, name);
    if (sh->length > ST_MAX_DIMS)
        return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': %zu dimensions (max %d)", path, name,
                          sh->length, ST_MAX_DIMS);
    t->n_dims = (int)sh->length;
    uint64_t n = 1;
    for (size_t i = 0; i < sh->length; i++) {
        uint64_t d;
        if (get_u64(&sh->items[i], &d))
            return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': bad shape entry", path, name);
        t->shape[i] = (int64_t)d;
        if (d != 0 && n > UINT64_MAX / d)
            return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': shape overflows", path, name);
        n *= d;
    }
    t->n_elems = n;
    if (!off || off->type != JSON_ARRAY || off->length != 2 || get_u64(&off->items[0], &t->begin) ||
        get_u64(&off->items[1], &t->end) || t->end < t->begin)
        return peft__fail(PEFT_EFORMAT, "%s: tensor '%s': bad data_offsets", path, name);
    if (n > UINT64_MAX / dtypes[t->dtype].size || n * dtypes[t->dtype].size != t->end - t->begin)
        return peft__fail(PEFT_EFORMAT,
                          "%s: tensor '%s': data_offsets span %llu bytes but shape x dtype is "
                          "%llu elements of %u bytes",
                          path, name, (unsigned long long)(t->end - t->begin),
                          (unsigned long long)n, dtypes[t->dtype].size);
    return PEFT_OK;
}

int st_open(st_file **out, const char *path)
{
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    }
    int code = PEFT_OK;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        code = peft__fail(errno == ENOENT ? PEFT_ENOTFOUND : errno == ENOMEM ? PEFT_ENOMEM : PEFT_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        code = peft__fail(PEFT_EIO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) {
        close(fd);
        code = peft__fail(PEFT_EFORMAT, "%s: truncated (%llu bytes, no header length)", path,
                          (unsigned long long)size);
        goto fail;
    }
    f->map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        code = peft__fail(PEFT_EIO, "%s: cannot map: %s", path, strerror(errno));
        goto fail;
    }
    f->map_size = (size_t)size;
    const uint8_t *bytes = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | bytes[i];
    if (hlen > ST_MAX_HEADER) {
        code = peft__fail(PEFT_EFORMAT, "%s: header length %llu exceeds the limit of %llu", path,
                          (unsigned long long)hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > size - 8) {
        code = peft__fail(PEFT_EFORMAT, "%s: header length %llu past the end of the file (%llu bytes)",
                          path, (unsigned long long)hlen, (unsigned long long)size);
        goto fail;
    }
    code = json_parse(&f->doc, (const char *)bytes + 8, (size_t)hlen, path);
    if (code)
        goto fail;
    const json_value *root = json_root(f->doc);
    if (root->type != JSON_OBJECT) {
        code = peft__fail(PEFT_EFORMAT, "%s: header is not a JSON object", path);
        goto fail;
    }
    f->data = bytes + 8 + hlen;
    f->tensors = calloc(root->length ? root->length : 1, sizeof *f->tensors);
    if (!f->tensors) {
        code = peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < root->length; i++) {
        if (strcmp(root->keys[i], "__metadata__") == 0) {
            const json_value *m = &root->items[i];
            if (m->type != JSON_OBJECT) {
                code = peft__fail(PEFT_EFORMAT, "%s: __metadata__ is not an object", path);
                goto fail;
            }
            for (size_t k = 0; k < m->length; k++)
                if (m->items[k].type != JSON_STRING) {
                    code = peft__fail(PEFT_EFORMAT, "%s: __metadata__ value '%s' is not a string",
                                      path, m->keys[k]);
                    goto fail;
                }
            f->metadata = m;
            continue;
        }
        code = parse_entry(&f->tensors[f->n_tensors], root->keys[i], &root->items[i], path);
        if (code)
            goto fail;
        f->n_tensors++;
    }
    /* contiguity: sorted by begin, starting at 0, no holes or overlaps */
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_begin);
    uint64_t pos = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->begin != pos) {
            code = peft__fail(PEFT_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu) %s", path,
                              t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                              t->begin < pos ? "overlap the previous tensor" : "leave a hole");
            goto fail;
        }
        pos = t->end;
    }
    if (pos != size - 8 - hlen) {
        code = peft__fail(PEFT_EFORMAT,
                          "%s: data section is %llu bytes but the tensors cover %llu (%s)", path,
                          (unsigned long long)(size - 8 - hlen), (unsigned long long)pos,
                          pos > size - 8 - hlen ? "data_offsets past end of file"
                                                : "trailing bytes");
        goto fail;
    }
    /* names sorted for lookup */
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_name);
    *out = f;
    return PEFT_OK;
fail:
    st_close(f);
    return code;
}

int st_rename(st_file *f, const char *(*rename)(const char *name, char *buf, size_t cap))
{
    char buf[512];
    for (size_t i = 0; i < f->n_tensors; i++) {
        char *name = (char *)f->tensors[i].name; /* the header document's own copy */
        const char *to = rename(name, buf, sizeof buf);
        if (to != name && strlen(to) <= strlen(name))
            memmove(name, to, strlen(to) + 1);
    }
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_name);
    for (size_t i = 1; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
            return -1;
    return 0;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_size);
    json_free(f->doc);
    free(f->tensors);
    free(f->path);
    free(f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0)
            return &f->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const float *st_f32_in_place(const st_file *f, const st_tensor *t)
{
    const uint8_t *p = f->data + t->begin;
    if (t->dtype != ST_F32 || ((uintptr_t)p & 3u) != 0)
        return NULL;
    return (const float *)(const void *)p;
}

int st_read_f32(const st_file *f, const st_tensor *t, float *dst, uint64_t n)
{
    if (t->n_elems != n)
        return peft__fail(PEFT_ESHAPE, "%s: tensor '%s' has %llu elements, expected %llu", f->path,
                          t->name, (unsigned long long)t->n_elems, (unsigned long long)n);
    const uint8_t *p = f->data + t->begin;
    switch (t->dtype) {
    case ST_F32:
        memcpy(dst, p, n * 4);
        return PEFT_OK;
    case ST_F16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = peft__f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return PEFT_OK;
    case ST_BF16:
        for (uint64_t i = 0; i < n; i++)
            dst[i] = peft__bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return PEFT_OK;
    default:
        return peft__fail(PEFT_EUNSUPPORTED, "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16)",
                          f->path, t->name, st_dtype_name(t->dtype));
    }
}

/* ---- writer ---- */

struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_json_string(struct sbuf *b, const char *s)
{
    sb_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            sb_put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_puts(b, esc);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_puts(b, "\"");
}

static int cmp_out(const void *a, const void *b)
{
    return strcmp(((const st_out_tensor *)a)->name, ((const st_out_tensor *)b)->name);
}

int st_write(const char *path, st_out_tensor *tensors, size_t n, const char *const *meta_keys,
             const char *const *meta_values, size_t n_meta)
{
    qsort(tensors, n, sizeof *tensors, cmp_out);
    struct sbuf h = {0};
    char num[64];
    uint64_t pos = 0;
    sb_puts(&h, "{");
    for (size_t i = 0; i < n; i++) {
        uint64_t elems = 1;
        if (i)
            sb_puts(&h, ",");
        sb_json_string(&h, tensors[i].name);
        sb_puts(&h, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < tensors[i].n_dims; d++) {
            snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)tensors[i].shape[d]);
            sb_puts(&h, num);
            elems *= (uint64_t)tensors[i].shape[d];
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)pos,
                 (unsigned long long)(pos + elems * 4));
        sb_puts(&h, num);
        pos += elems * 4;
    }
    if (n_meta) {
        sb_puts(&h, n ? ",\"__metadata__\":{" : "\"__metadata__\":{");
        for (size_t i = 0; i < n_meta; i++) {
            if (i)
                sb_puts(&h, ",");
            sb_json_string(&h, meta_keys[i]);
            sb_puts(&h, ":");
            sb_json_string(&h, meta_values[i]);
        }
        sb_puts(&h, "}");
    }
    sb_puts(&h, "}");
    while (!h.oom && h.n % 8 != 0)
        sb_puts(&h, " ");
    if (h.oom) {
        free(h.s);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    }
    size_t total = 8 + h.n + (size_t)pos;
    uint8_t *buf = malloc(total);
    if (!buf) {
        free(h.s);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory (%zu bytes)", path, total);
    }
    uint64_t hl = h.n;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hl >> (8 * i));
    memcpy(buf + 8, h.s, h.n);
    free(h.s);
    uint8_t *p = buf + 8 + hl;
    for (size_t i = 0; i < n; i++) {
        uint64_t elems = 1;
        for (int d = 0; d < tensors[i].n_dims; d++)
            elems *= (uint64_t)tensors[i].shape[d];
        memcpy(p, tensors[i].data, elems * 4); /* little-endian hosts */
        p += elems * 4;
    }
    int code = peft__write_atomic(path, buf, total);
    free(buf);
    return code;
}
