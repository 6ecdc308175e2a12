/* LD_PRELOAD shim for fault tests: makes exactly one allocation fail, when a test asks.
 *
 *   FAILALLOC_TRIGGER=path  while this file exists, the next allocation (after SKIP) fails
 *                           and the file is removed: the test waits for it to disappear
 *   FAILALLOC_SKIP=n        let n allocations through first (default 0)
 *   FAILALLOC_FUNCS=list    which of calloc,malloc,realloc may fail (default calloc)
 *
 * Only one failure per trigger keeps the test deterministic: an idle gateway allocates
 * nothing, so the failure lands on the first allocation the test's connection causes.
 * Build: cc -shared -fPIC -O2 -o failalloc.so failalloc.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { F_CALLOC = 1, F_MALLOC = 2, F_REALLOC = 4 };

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);

/* dlsym may itself call calloc/malloc before the real ones are known: serve those from a
 * static buffer that is never freed. */
static _Alignas(max_align_t) char boot[16384];
static size_t boot_used;
static int resolving;

static const char *trigger;
static unsigned long skip;
static int funcs = F_CALLOC;
static atomic_ulong seen;

static void *boot_alloc(size_t n)
{
    size_t a = (n + 15) & ~(size_t)15;
    if (a < n || a > sizeof boot - boot_used)
        return NULL;
    void *p = boot + boot_used;
    boot_used += a;
    return p; /* static storage: already zero */
}

static int in_boot(const void *p)
{
    return (const char *)p >= boot && (const char *)p < boot + sizeof boot;
}

static void init(void)
{
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_free = dlsym(RTLD_NEXT, "free");
    resolving = 0;

    trigger = getenv("FAILALLOC_TRIGGER");
    const char *s = getenv("FAILALLOC_SKIP");
    skip = s ? strtoul(s, NULL, 10) : 0;
    const char *f = getenv("FAILALLOC_FUNCS");
    if (f)
        funcs = (strstr(f, "calloc") ? F_CALLOC : 0) | (strstr(f, "malloc") ? F_MALLOC : 0) |
                (strstr(f, "realloc") ? F_REALLOC : 0);
}

static int should_fail(int which)
{
    if (!trigger || !(funcs & which))
        return 0;
    if (access(trigger, F_OK) != 0) {
        atomic_store(&seen, 0);
        return 0;
    }
    if (atomic_fetch_add(&seen, 1) < skip)
        return 0;
    /* One failure per trigger: whoever removes the file fails (threads may race here). */
    if (unlink(trigger) != 0)
        return 0;
    errno = ENOMEM;
    return 1;
}

void *malloc(size_t n)
{
    if (!real_malloc) {
        if (resolving)
            return boot_alloc(n);
        init();
    }
    return should_fail(F_MALLOC) ? NULL : real_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (!real_calloc) {
        if (resolving)
            return size && n > SIZE_MAX / size ? NULL : boot_alloc(n * size);
        init();
    }
    return should_fail(F_CALLOC) ? NULL : real_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (!real_realloc)
        init();
    if (in_boot(p)) {
        void *q = malloc(n);
        if (q)
            memcpy(q, p,
                   n < (size_t)(boot + sizeof boot - (char *)p)
                       ? n
                       : (size_t)(boot + sizeof boot - (char *)p));
        return q;
    }
    return should_fail(F_REALLOC) ? NULL : real_realloc(p, n);
}

void free(void *p)
{
    if (!p || in_boot(p))
        return;
    if (!real_free)
        init();
    real_free(p);
}
