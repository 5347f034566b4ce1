/* File helpers. Saving never leaves a half-written file where a good one was. */
#define _POSIX_C_SOURCE 200809L
#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

char *peft__path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s)
        return NULL;
    memcpy(s, dir, a);
    size_t n = a;
    if (a > 0 && dir[a - 1] != '/')
        s[n++] = '/';
    memcpy(s + n, name, b + 1);
    return s;
}

int peft__read_file(char **out, size_t *len, const char *path, size_t max)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return peft__fail(errno == ENOENT ? PEFT_ENOTFOUND : errno == ENOMEM ? PEFT_ENOMEM : PEFT_EIO, "%s: cannot open: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return peft__fail(PEFT_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        fclose(f);
        return peft__fail(PEFT_EFORMAT, "%s: file too large (%lld bytes, limit %zu)", path,
                          (long long)st.st_size, max);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    }
    if (n && fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return peft__fail(PEFT_EIO, "%s: read error", path);
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return PEFT_OK;
}

int peft__write_atomic(const char *path, const void *data, size_t len)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp)
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    snprintf(tmp, plen + 16, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return peft__fail(PEFT_EIO, "%s: cannot create temporary file: %s", path, strerror(e));
    }
    const char *p = data;
    size_t left = len;
    int err = 0;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (!err && fsync(fd) != 0)
        err = errno;
    if (!err)
        fchmod(fd, 0644);
    if (close(fd) != 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) != 0)
        err = errno;
    if (err) {
        unlink(tmp);
        free(tmp);
        return peft__fail(PEFT_EIO, "%s: write failed: %s (previous file left intact)", path,
                          strerror(err));
    }
    free(tmp);
    /* make the rename durable */
    char *dcopy = strdup(path);
    if (dcopy) {
        int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dcopy);
    }
    return PEFT_OK;
}

int peft__mkdirs(const char *path)
{
    char *s = strdup(path);
    if (!s)
        return peft__fail(PEFT_ENOMEM, "%s: out of memory", path);
    size_t n = strlen(s);
    for (size_t i = 1; i <= n; i++) {
        if (s[i] == '/' || s[i] == '\0') {
            char c = s[i];
            s[i] = '\0';
            if (mkdir(s, 0755) != 0 && errno != EEXIST) {
                int e = errno;
                int code = peft__fail(PEFT_EIO, "%s: cannot create directory: %s", s, strerror(e));
                free(s);
                return code;
            }
            s[i] = c;
        }
    }
    free(s);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return peft__fail(PEFT_EIO, "%s: not a directory", path);
    return PEFT_OK;
}
