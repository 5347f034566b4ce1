/* Status codes, messages and the thread-local last error. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static _Thread_local char last_error[1024];

const char *peft_strerror(int status)
{
    switch (status) {
    case PEFT_OK: return "success";
    case PEFT_EINVAL: return "invalid argument";
    case PEFT_ENOMEM: return "out of memory";
    case PEFT_EIO: return "input/output error";
    case PEFT_EFORMAT: return "malformed file";
    case PEFT_EUNSUPPORTED: return "unsupported";
    case PEFT_ESHAPE: return "shape mismatch";
    case PEFT_ENOTFOUND: return "not found";
    case PEFT_ESTATE: return "invalid state";
    case PEFT_ENUMERIC: return "non-finite number";
    case PEFT_EBACKEND: return "backend failure";
    case PEFT_ERANGE: return "buffer too small";
    default: return "unknown status";
    }
}

const char *peft_last_error(void) { return last_error; }

void peft__clear_error(void) { last_error[0] = '\0'; }

int peft__fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

int peft__context(int code, const char *prefix)
{
    char tmp[2 * sizeof last_error + 64];
    snprintf(tmp, sizeof tmp, "%.*s: %s", (int)sizeof last_error, prefix, last_error);
    memcpy(last_error, tmp, sizeof last_error);
    last_error[sizeof last_error - 1] = '\0';
    return code;
}

const char *peft_version(void) { return PEFT_VERSION_STRING; }

uint32_t peft_version_number(void) { return PEFT_VERSION_NUMBER; }
