/* Inherited listening sockets: see inherit.h. */
#include "inherit.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_INHERIT 4096

typedef struct {
    char kind[8];
    int fd;
    bool taken;
    struct sockaddr_storage sa;
    socklen_t len;
} inherited;

static inherited *items;
static int n_items;

static void drop_all(void)
{
    free(items);
    items = NULL;
    n_items = 0;
}

int gw_inherit_load(const char *list, char *err, size_t cap)
{
    drop_all();
    if (!list || !*list)
        return 0;
    size_t max = 1;
    for (const char *p = list; *p; p++)
        max += *p == ',';
    if (max > MAX_INHERIT) {
        snprintf(err, cap, "FTPSGATE_INHERIT: more than %d sockets", MAX_INHERIT);
        return -1;
    }
    items = calloc(max, sizeof *items);
    if (!items) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        const char *eq = memchr(p, '=', n);
        char *end = NULL;
        long fd = eq ? strtol(eq + 1, &end, 10) : -1;
        inherited *it = &items[n_items];
        if (!eq || eq == p || (size_t)(eq - p) >= sizeof it->kind || end != p + n ||
            end == eq + 1 || fd < 0 || fd > 1 << 24) {
            snprintf(err, cap, "FTPSGATE_INHERIT: bad item \"%.*s\"", (int)n, p);
            drop_all();
            return -1;
        }
        memcpy(it->kind, p, (size_t)(eq - p));
        it->fd = (int)fd;
        it->len = sizeof it->sa;
        int type = 0;
        socklen_t tl = sizeof type;
        errno = 0;
        if (getsockname(it->fd, (struct sockaddr *)&it->sa, &it->len) != 0 ||
            getsockopt(it->fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM) {
            snprintf(err, cap, "FTPSGATE_INHERIT: descriptor %d (%s) is no stream socket: %s",
                     it->fd, it->kind, errno ? strerror(errno) : "wrong type");
            drop_all();
            return -1;
        }
        (void)fcntl(it->fd, F_SETFD, FD_CLOEXEC); /* no further program gets it by accident */
        n_items++;
        p += n + (p[n] == ',');
    }
    return 0;
}

static bool same_addr(const struct sockaddr_storage *a, socklen_t alen, const struct sockaddr *b,
                      socklen_t blen)
{
    if (a->ss_family != b->sa_family)
        return false;
    if (b->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (b->sa_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    if (b->sa_family == AF_UNIX) {
        const struct sockaddr_un *x = (const void *)a, *y = (const void *)b;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        if (alen <= off || blen <= off)
            return false;
        return strncmp(x->sun_path, y->sun_path, sizeof x->sun_path) == 0;
    }
    return false;
}

int gw_inherit_take(const char *kind, const struct sockaddr *sa, socklen_t len)
{
    for (int i = 0; i < n_items; i++) {
        inherited *it = &items[i];
        if (!it->taken && strcmp(it->kind, kind) == 0 && same_addr(&it->sa, it->len, sa, len)) {
            it->taken = true;
            return it->fd;
        }
    }
    return -1;
}

int gw_inherit_close_unused(void)
{
    int closed = 0;
    for (int i = 0; i < n_items; i++)
        if (!items[i].taken) {
            close(items[i].fd);
            items[i].taken = true;
            closed++;
        }
    return closed;
}

int gw_inherit_count(void)
{
    return n_items;
}
