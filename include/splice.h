/* Zero-copy relay of one direction between two clear TCP sockets: splice(2) from the source
 * into a pipe and from the pipe into the destination, driven by uv_poll on duplicates of the
 * two descriptors (the uv_tcp handles stay idle meanwhile and take over again afterwards).
 * Bytes never enter user space; backpressure is the pipe itself. */
#ifndef GW_SPLICE_H
#define GW_SPLICE_H

#include <stddef.h>
#include <uv.h>

typedef struct gw_splice gw_splice;

typedef struct gw_splice_ops {
    void (*on_progress)(void *arg, size_t n); /* n more bytes reached the destination */
    void (*on_eof)(void *arg);                /* the source ended and every byte is out */
    void (*on_error)(void *arg, const char *why);
    /* Optional (bandwidth limits): the most the next splice may take from the source; 0:
     * none now, the relay stops polling until gw_splice_resume. */
    size_t (*budget)(void *arg);
} gw_splice_ops;

/* Start relaying src -> dst. NULL when it cannot (no descriptors, no memory): the caller
 * relays through user space instead. No callback runs from inside this call. */
gw_splice *gw_splice_start(uv_loop_t *loop, uv_os_fd_t src, uv_os_fd_t dst,
                           const gw_splice_ops *ops, void *arg);
/* After a budget of 0: poll again. */
void gw_splice_resume(gw_splice *sp);
/* Stop; no callback runs after this. The object frees itself once its handles closed. */
void gw_splice_stop(gw_splice *sp);

#endif
