/* A byte stream over a uv TCP handle with optional TLS: read, write with ownership,
 * watermarks, shutdown, close. The conn is freed after its close callback (on_close). */
#ifndef GW_CONN_H
#define GW_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "ftp_addr.h"
#include "tls.h"

#define GW_HIGH_WATERMARK (1024 * 1024) /* stop reading the source above this */
#define GW_LOW_WATERMARK (256 * 1024)   /* resume it below this */
/* Toward a TLS peer the queue is the engine's own ciphertext buffers (no copy to make it):
 * lower marks bound what a stalled reader holds (2,000 stalled TLS transfers: 380 MB of
 * RSS instead of 620 MB) at no measured cost; clear copies keep the larger ones. */
#define GW_TLS_HIGH_WATERMARK (256 * 1024)
#define GW_TLS_LOW_WATERMARK (64 * 1024)

typedef struct gw_conn gw_conn;

/* Every slot is optional: NULL means the owner is not interested (a NULL on_data drops the
 * bytes, a NULL on_error closes the conn). */
typedef struct gw_conn_ops {
    void (*on_connect)(gw_conn *c, int status);             /* outgoing connect: 0 or uv error */
    void (*on_handshake)(gw_conn *c);                       /* TLS established */
    void (*on_data)(gw_conn *c, const char *buf, size_t n); /* plaintext; take it all */
    void (*on_eof)(gw_conn *c, bool clean);        /* peer done; clean: plain FIN or close_notify */
    void (*on_error)(gw_conn *c, const char *why); /* fatal: the owner closes */
    void (*on_drain)(gw_conn *c);                  /* output fell below the low watermark */
    void (*on_shutdown)(gw_conn *c, int status);   /* all output, close_notify and FIN sent */
    void (*on_close)(gw_conn *c);                  /* handle closed: c is freed on return */
} gw_conn_ops;

struct gw_conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    const gw_conn_ops *ops;
    void *owner;
    uint64_t sid;     /* session id for logs */
    const char *name; /* which leg, for logs */
    gw_tls *tls;
    size_t queued;                /* bytes written but not yet sent */
    uint64_t bytes_in, bytes_out; /* on the wire (ciphertext when TLS) */
    uint64_t payload_out;         /* plaintext the owner wrote */
    bool reading, paused, want_drain, eof, closing, shut, failed, in_process, again;
    bool clearing;        /* CCC/REIN: our close_notify is out, the peer's may follow */
    SSL_CTX *restart_ctx; /* REIN on implicit: a new handshake follows on this connection */
    char *unread;         /* bytes read by someone else before this conn existed (gw_conn_unread) */
    size_t unread_len;
    size_t read_max; /* > 0: read at most this many bytes at a time (a PROXY header is
                        read without taking a byte past it: proxy_proto.h) */
};

gw_conn *gw_conn_new(uv_loop_t *loop, const gw_conn_ops *ops, void *owner, uint64_t sid,
                     const char *name);
int gw_conn_accept(gw_conn *c, uv_stream_t *server);
/* Adopt a connected descriptor (handed over from another loop). 0 or a libuv error (the
 * descriptor is then still the caller's). */
int gw_conn_open(gw_conn *c, int fd);
/* Bytes already taken from the socket by someone else: the TLS engine attached next reads
 * them first. 0 or UV_ENOMEM. */
int gw_conn_unread(gw_conn *c, const void *buf, size_t n);
/* Hand the conn to another owner (the listener accepts, the session serves): its callbacks
 * go to ops and owner from now on. */
void gw_conn_set_owner(gw_conn *c, const gw_conn_ops *ops, void *owner);
int gw_conn_connect(gw_conn *c, const gw_addr *to);
/* Begin a TLS handshake as server on this connection; reading starts if it had not. */
int gw_conn_start_tls(gw_conn *c, SSL_CTX *ctx, enum gw_tls_role role);
/* Run TLS with an engine made by the caller (client engines: the handshake starts now). */
int gw_conn_attach_tls(gw_conn *c, gw_tls *t);
int gw_conn_start_read(gw_conn *c);
void gw_conn_pause(gw_conn *c);
void gw_conn_resume(gw_conn *c);
/* Copies the bytes. Errors arrive through on_error. */
void gw_conn_write(gw_conn *c, const void *buf, size_t n);
void gw_conn_write_str(gw_conn *c, const char *s);
/* CCC and REIN: send close_notify now (without waiting for the peer's) and continue in
 * clear. If the peer's next bytes are a TLS record, its close_notify is consumed first.
 * restart_ctx non-NULL (REIN on implicit): a new server handshake follows instead, and
 * on_handshake fires again. */
void gw_conn_clear_tls(gw_conn *c, SSL_CTX *restart_ctx);
/* close_notify (when TLS) and FIN after everything queued; then on_shutdown. */
void gw_conn_shutdown(gw_conn *c);
void gw_conn_close(gw_conn *c); /* idempotent */
void gw_conn_reset(gw_conn *c); /* close with RST: the peer must not see a clean end */
/* Zero-copy relays (splice.h) move bytes past the conn on its descriptor; these keep its
 * state true: the descriptor (-1 if none), the byte counts, and the source's end. */
int gw_conn_fd(const gw_conn *c);
void gw_conn_count_spliced(gw_conn *src, gw_conn *dst, size_t n);
void gw_conn_input_ended(gw_conn *c); /* like a read EOF, without the callback */
int gw_conn_peer(const gw_conn *c, gw_addr *a);
int gw_conn_local(const gw_conn *c, gw_addr *a);

#endif
