/* splice(2) relay between two clear sockets; see splice.h. */
#include "splice.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PIPE_SIZE (1024 * 1024)       /* asked of F_SETPIPE_SZ; the kernel may grant less */
#define ROUND_BYTES (8 * 1024 * 1024) /* per wake-up, so that other sessions get their turn */

struct gw_splice {
    uv_poll_t src_poll, dst_poll;
    int src, dst; /* our duplicates; each is closed once its poll handle has closed */
    int pipe_r, pipe_w;
    size_t in_pipe; /* bytes taken from the source, not yet given to the destination */
    size_t pipe_size;
    const gw_splice_ops *ops;
    void *arg;
    int handles; /* poll handles not yet closed */
    bool stopped;
};

static void on_poll_closed(uv_handle_t *h)
{
    gw_splice *sp = h->data;
    close(h == (uv_handle_t *)&sp->src_poll ? sp->src : sp->dst);
    if (--sp->handles == 0)
        free(sp);
}

void gw_splice_stop(gw_splice *sp)
{
    if (!sp || sp->stopped)
        return;
    sp->stopped = true;
    close(sp->pipe_r); /* bytes still in the pipe belong to a transfer that failed */
    close(sp->pipe_w);
    uv_close((uv_handle_t *)&sp->src_poll, on_poll_closed);
    uv_close((uv_handle_t *)&sp->dst_poll, on_poll_closed);
}

static void on_ready(uv_poll_t *p, int status, int events);

/* Wait for the one side that blocks: the source when the pipe is empty, else the
 * destination. */
static void wait_for(gw_splice *sp, bool dst)
{
    uv_poll_stop(dst ? &sp->src_poll : &sp->dst_poll);
    uv_poll_start(dst ? &sp->dst_poll : &sp->src_poll, dst ? UV_WRITABLE : UV_READABLE, on_ready);
}

static void fail_splice(gw_splice *sp, int err)
{
    const gw_splice_ops *ops = sp->ops;
    void *arg = sp->arg;
    gw_splice_stop(sp);
    ops->on_error(arg, strerror(err));
}

static void pump(gw_splice *sp)
{
    size_t moved = 0;
    while (moved < ROUND_BYTES) {
        if (sp->in_pipe == 0) {
            size_t want = sp->pipe_size;
            if (sp->ops->budget) { /* rate-limited: the limiter says how much, or to pause */
                size_t b = sp->ops->budget(sp->arg);
                if (b == 0) {
                    uv_poll_stop(&sp->src_poll);
                    uv_poll_stop(&sp->dst_poll);
                    return;
                }
                want = b < want ? b : want;
            }
            ssize_t n =
                splice(sp->src, NULL, sp->pipe_w, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n == 0) { /* the source's FIN, and the pipe is empty: all delivered */
                const gw_splice_ops *ops = sp->ops;
                void *arg = sp->arg;
                gw_splice_stop(sp);
                ops->on_eof(arg);
                return;
            }
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN) { /* the pipe is empty, so it is the socket */
                    wait_for(sp, false);
                    return;
                }
                fail_splice(sp, errno);
                return;
            }
            sp->in_pipe = (size_t)n;
        }
        ssize_t m =
            splice(sp->pipe_r, NULL, sp->dst, NULL, sp->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (m < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                wait_for(sp, true);
                return;
            }
            fail_splice(sp, errno);
            return;
        }
        sp->in_pipe -= (size_t)m;
        moved += (size_t)m;
        sp->ops->on_progress(sp->arg, (size_t)m);
        if (sp->stopped)
            return;
    }
    wait_for(sp, sp->in_pipe > 0); /* level-triggered: we are called again next turn */
}

void gw_splice_resume(gw_splice *sp)
{
    if (sp && !sp->stopped)
        wait_for(sp, sp->in_pipe > 0);
}

static void on_ready(uv_poll_t *p, int status, int events)
{
    (void)status; /* an error on a socket shows as the errno of the next splice */
    (void)events;
    gw_splice *sp = p->data;
    if (!sp->stopped)
        pump(sp);
}

gw_splice *gw_splice_start(uv_loop_t *loop, uv_os_fd_t src, uv_os_fd_t dst,
                           const gw_splice_ops *ops, void *arg)
{
    gw_splice *sp = calloc(1, sizeof *sp);
    if (!sp)
        return NULL;
    int fds[2];
    sp->src = fcntl(src, F_DUPFD_CLOEXEC, 0);
    sp->dst = fcntl(dst, F_DUPFD_CLOEXEC, 0);
    if (sp->src < 0 || sp->dst < 0 || pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        if (sp->src >= 0)
            close(sp->src);
        if (sp->dst >= 0)
            close(sp->dst);
        free(sp);
        return NULL;
    }
    sp->pipe_r = fds[0];
    sp->pipe_w = fds[1];
    (void)fcntl(sp->pipe_w, F_SETPIPE_SZ, PIPE_SIZE); /* fewer, larger splices */
    int size = fcntl(sp->pipe_w, F_GETPIPE_SZ);
    sp->pipe_size = size > 0 ? (size_t)size : 65536;
    sp->ops = ops;
    sp->arg = arg;
    /* Duplicates, so that libuv sees descriptors of its own: the uv_tcp handles keep theirs. */
    if (uv_poll_init(loop, &sp->src_poll, sp->src) != 0) {
        close(sp->src);
        close(sp->dst);
        close(sp->pipe_r);
        close(sp->pipe_w);
        free(sp);
        return NULL;
    }
    sp->src_poll.data = sp;
    sp->handles = 1;
    if (uv_poll_init(loop, &sp->dst_poll, sp->dst) != 0) {
        sp->stopped = true;
        close(sp->pipe_r);
        close(sp->pipe_w);
        close(sp->dst);
        sp->dst = -1;
        uv_close((uv_handle_t *)&sp->src_poll, on_poll_closed);
        return NULL;
    }
    sp->dst_poll.data = sp;
    sp->handles = 2;
    wait_for(sp, false);
    return sp;
}
