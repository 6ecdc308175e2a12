/* Passive port pools. The socket is created here (not by libuv) so that a port taken by
 * another process is simply skipped: libuv reports EADDRINUSE only at uv_listen. */
#include "pasv_pool.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/rand.h>

#include "ftp_addr.h"
#include "metrics.h"

struct gw_pasv_pool {
    uint16_t lo, hi;
    uint8_t *used; /* one byte per port: simple and small (at most 64 KiB) */
    struct gw_pasv_pool *next;
};

static gw_pasv_pool *pools;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;

gw_pasv_pool *gw_pasv_pool_get(uint16_t lo, uint16_t hi)
{
    pthread_mutex_lock(&pools_lock);
    gw_pasv_pool *p;
    for (p = pools; p; p = p->next)
        if (p->lo == lo && p->hi == hi)
            break;
    if (!p && (p = calloc(1, sizeof *p))) {
        p->lo = lo;
        p->hi = hi;
        p->used = calloc((size_t)(hi - lo) + 1, 1);
        if (!p->used) {
            free(p);
            p = NULL;
        } else {
            p->next = pools;
            pools = p;
        }
    }
    pthread_mutex_unlock(&pools_lock);
    gw_metric_pasv(lo, hi, 0); /* the range's series exist from the start */
    return p;
}

static int try_port(gw_addr *bind_addr, uint16_t port)
{
    struct sockaddr_storage ss;
    bind_addr->port = port;
    gw_addr_to_sockaddr(bind_addr, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    socklen_t len =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    /* A port we used a moment ago sits in TIME_WAIT: the pool, not the kernel, says whether
     * it is free. */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, len) == 0 && listen(fd, 1) == 0)
        return fd;
    close(fd);
    return -1;
}

int gw_pasv_pool_listen(gw_pasv_pool *p, gw_addr *bind_addr)
{
    uint32_t n = (uint32_t)(p->hi - p->lo) + 1, start;
    RAND_bytes((unsigned char *)&start, sizeof start);
    int fd = -1;
    pthread_mutex_lock(&pools_lock);
    for (uint32_t i = 0; i < n && fd < 0; i++) {
        uint32_t idx = (start + i) % n;
        if (p->used[idx])
            continue;
        fd = try_port(bind_addr, (uint16_t)(p->lo + idx));
        if (fd >= 0)
            p->used[idx] = 1;
    }
    pthread_mutex_unlock(&pools_lock);
    gw_metric_pasv(p->lo, p->hi, fd >= 0 ? 1 : 0);
    if (fd < 0)
        gw_metric_pasv_exhausted(p->lo, p->hi);
    return fd;
}

void gw_pasv_pool_release(gw_pasv_pool *p, uint16_t port)
{
    if (port < p->lo || port > p->hi)
        return;
    pthread_mutex_lock(&pools_lock);
    bool was = p->used[port - p->lo];
    p->used[port - p->lo] = 0;
    pthread_mutex_unlock(&pools_lock);
    gw_metric_pasv(p->lo, p->hi, was ? -1 : 0);
}

void gw_pasv_pool_free_all(void)
{
    pthread_mutex_lock(&pools_lock);
    while (pools) {
        gw_pasv_pool *next = pools->next;
        free(pools->used);
        free(pools);
        pools = next;
    }
    pthread_mutex_unlock(&pools_lock);
}
