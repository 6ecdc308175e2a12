/* LD_PRELOAD shim for tests: the FAILOPEN_NTH-th open(2) or fopen(3) of the path
 * FAILOPEN_PATH fails with EACCES (counted over every thread; other paths are untouched).
 * Lets a test make one worker's part of a reload fail while the other's succeeds
 * (test_reload.py: each worker loads the key file for its own TLS context). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static _Atomic int seen;

static int should_fail(const char *path)
{
    const char *want = getenv("FAILOPEN_PATH"), *nth = getenv("FAILOPEN_NTH");
    if (!want || !nth || !path || strcmp(want, path) != 0)
        return 0;
    return atomic_fetch_add(&seen, 1) + 1 == atoi(nth);
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

#define SHIM(name, ...)                                                                            \
    if (should_fail(path)) {                                                                       \
        errno = EACCES;                                                                            \
        return -1;                                                                                 \
    }                                                                                              \
    static int (*real)();                                                                          \
    if (!real)                                                                                     \
        real = (int (*)())dlsym(RTLD_NEXT, name);                                                  \
    return real(__VA_ARGS__);

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    SHIM("open", path, flags, mode)
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    SHIM("open64", path, flags, mode)
}

int openat(int dir, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    SHIM("openat", dir, path, flags, mode)
}

#define FSHIM(name)                                                                                \
    if (should_fail(path)) {                                                                       \
        errno = EACCES;                                                                            \
        return NULL;                                                                               \
    }                                                                                              \
    static FILE *(*real)(const char *, const char *);                                              \
    if (!real)                                                                                     \
        real = (FILE * (*)(const char *, const char *)) dlsym(RTLD_NEXT, name);                    \
    return real(path, mode);

FILE *fopen(const char *path, const char *mode){FSHIM("fopen")}

FILE *fopen64(const char *path, const char *mode)
{
    FSHIM("fopen64")
}
