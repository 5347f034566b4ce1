/* File helpers: whole-file reads and atomic writes. */
#ifndef PEFT_FSUTIL_H
#define PEFT_FSUTIL_H

#include <stddef.h>

/* Read a whole (small) file; *out is NUL-terminated, free() it. max bytes limit. */
int peft__read_file(char **out, size_t *len, const char *path, size_t max);
/* Write len bytes to path atomically: temp file in the same directory, fsync, rename. */
int peft__write_atomic(const char *path, const void *data, size_t len);
/* Create a directory (and parents); ok if it exists. */
int peft__mkdirs(const char *path);
/* Join a directory and a file name into a malloc'ed string. */
char *peft__path_join(const char *dir, const char *name);

#endif
