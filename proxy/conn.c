/* Byte streams over libuv TCP with optional TLS (in-memory BIOs: no socket I/O inside
 * OpenSSL). Ownership rules: a write request owns its bytes (a copy, or the engine's
 * buffer); the conn is freed only in the close callback; after any owner callback the conn
 * may be closing, so every loop checks c->closing. */
#include "conn.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

#define READ_BUF_SIZE (256 * 1024)
/* A clear source (a plain backend's download, a clear upload) is read 512 KiB at a time:
 * half the reads, and the records it becomes leave in one write. Measured on the download
 * path (tests/bench/RESULTS.md): 0.86-0.90 x the CPU of 256 KiB reads; a TLS source keeps
 * 256 KiB (its records are gathered to plain_buf's size). */
#define CLEAR_READ_SIZE (512 * 1024)

typedef struct write_req {
    uv_write_t req;
    size_t len; /* bytes queued by this request */
    char *base; /* malloc'ed block holding them, freed with the request */
} write_req;

/* Reads are handled synchronously in the read callback, so one buffer per thread serves
 * every connection: memory per idle session stays small. */
static __thread char read_buf[CLEAR_READ_SIZE];
static __thread char plain_buf[READ_BUF_SIZE];

static void process_input(gw_conn *c);

/* Every ops slot is optional (NULL: the owner is not interested), as libuv's callbacks are. */
static void deliver(gw_conn *c, const char *buf, size_t n)
{
    if (c->ops->on_data)
        c->ops->on_data(c, buf, n); /* NULL: the bytes are dropped */
}

gw_conn *gw_conn_new(uv_loop_t *loop, const gw_conn_ops *ops, void *owner, uint64_t sid,
                     const char *name)
{
    gw_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (uv_tcp_init(loop, &c->tcp) != 0) {
        free(c);
        return NULL;
    }
    c->tcp.data = c;
    c->ops = ops;
    c->owner = owner;
    c->sid = sid;
    c->name = name;
    return c;
}

static void fail_conn(gw_conn *c, const char *why)
{
    if (c->closing || c->failed)
        return;
    c->failed = true;
    if (c->ops->on_error)
        c->ops->on_error(c, why);
    else
        gw_conn_close(c); /* nobody to tell: the conn ends itself */
}

int gw_conn_accept(gw_conn *c, uv_stream_t *server)
{
    int r = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (r == 0)
        uv_tcp_nodelay(&c->tcp, 1);
    return r;
}

void gw_conn_set_owner(gw_conn *c, const gw_conn_ops *ops, void *owner)
{
    c->ops = ops;
    c->owner = owner;
}

static void on_connected(uv_connect_t *req, int status)
{
    gw_conn *c = req->handle->data;
    if (c->closing)
        return;
    if (status == 0)
        uv_tcp_nodelay(&c->tcp, 1);
    if (c->ops->on_connect)
        c->ops->on_connect(c, status);
}

int gw_conn_connect(gw_conn *c, const gw_addr *to)
{
    struct sockaddr_storage ss;
    gw_addr_to_sockaddr(to, &ss);
    return uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&ss, on_connected);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    const gw_conn *c = h->data;
    size_t max = c->tls ? READ_BUF_SIZE : CLEAR_READ_SIZE;
    buf->base = read_buf;
    buf->len = c->read_max && c->read_max < max ? c->read_max : max;
}

static void on_written(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    gw_conn *c = req->handle->data;
    c->queued -= w->len;
    free(w->base);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        fail_conn(c, uv_strerror(status));
        return;
    }
    if (c->want_drain && c->queued <= (c->tls ? GW_TLS_LOW_WATERMARK : GW_LOW_WATERMARK)) {
        c->want_drain = false;
        if (c->ops->on_drain)
            c->ops->on_drain(c);
    }
}

/* Try to hand n bytes to the socket at once (uv_try_write, no copy, no request), never
 * overtaking queued bytes: how many it took, or -1 after failing the conn. */
static ssize_t try_send(gw_conn *c, const char *buf, size_t n)
{
    if (c->queued)
        return 0;
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)n);
    int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r < 0 && r != UV_EAGAIN) {
        fail_conn(c, uv_strerror(r));
        return -1;
    }
    return r > 0 ? r : 0;
}

/* Queue what the socket did not take: from `owned` (a malloc'ed block we then keep, its
 * first `done` bytes already sent) or from a copy of buf + done. */
static void queue_rest(gw_conn *c, const char *buf, size_t n, size_t done, char *owned)
{
    write_req *w = malloc(sizeof *w);
    char *rest = owned ? owned : malloc(n - done);
    if (!w || !rest) {
        free(w);
        free(rest);
        fail_conn(c, "out of memory");
        return;
    }
    if (!owned)
        memcpy(rest, buf + done, n - done);
    w->base = rest;
    w->len = n - done;
    uv_buf_t b = uv_buf_init(owned ? owned + done : rest, (unsigned)(n - done));
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (r != 0) {
        free(rest);
        free(w);
        fail_conn(c, uv_strerror(r));
        return;
    }
    c->queued += w->len;
    if (c->queued > (c->tls ? GW_TLS_HIGH_WATERMARK : GW_HIGH_WATERMARK))
        c->want_drain = true;
}

/* Write n bytes at buf (copied only if the socket does not take them at once). */
static void send_bytes(gw_conn *c, const char *buf, size_t n)
{
    if (n == 0 || c->closing)
        return;
    c->bytes_out += n;
    ssize_t done = try_send(c, buf, n);
    if (done >= 0 && (size_t)done < n)
        queue_rest(c, buf, n, (size_t)done, NULL);
}

/* Move whatever ciphertext OpenSSL produced onto the wire, without another copy: sent
 * whole, the engine keeps its buffer for the next records; else the buffer itself goes
 * into the write request. */
static void flush_tls(gw_conn *c)
{
    char *buf;
    size_t n = gw_tls_out_peek(c->tls, &buf);
    if (n == 0 || c->closing)
        return;
    c->bytes_out += n;
    ssize_t done = try_send(c, buf, n);
    if (done < 0)
        return;
    if ((size_t)done == n) {
        gw_tls_out_sent(c->tls);
        return;
    }
    gw_tls_out_take_buffer(c->tls, &buf);
    queue_rest(c, buf, n, (size_t)done, buf);
}

void gw_conn_write(gw_conn *c, const void *buf, size_t n)
{
    if (c->closing || c->shut || n == 0)
        return;
    c->payload_out += n;
    if (!c->tls) {
        send_bytes(c, buf, n);
        return;
    }
    if (gw_tls_write(c->tls, buf, n) != 0) {
        fail_conn(c, gw_tls_last_error(c->tls));
        return;
    }
    flush_tls(c);
}

void gw_conn_write_str(gw_conn *c, const char *s)
{
    gw_conn_write(c, s, strlen(s));
}

static void deliver_eof(gw_conn *c, bool clean)
{
    if (c->eof)
        return;
    c->eof = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
    if (c->ops->on_eof)
        c->ops->on_eof(c, clean);
}

/* A peer that writes the end of its handshake in two small segments without TCP_NODELAY
 * (lftp's GnuTLS: ChangeCipherSpec, then Finished) holds the second under Nagle until we
 * acknowledge the first, and our delayed ACK costs it 40 ms per handshake. While the
 * handshake runs, acknowledge what we read at once (a no-op when no ACK is pending). */
static void ack_now(gw_conn *c)
{
    uv_os_fd_t fd;
    int one = 1;
    if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

static void process_tls(gw_conn *c)
{
    if (!gw_tls_handshake_done(c->tls)) {
        int r = gw_tls_handshake(c->tls);
        flush_tls(c);
        if (r == GW_TLS_ERROR) {
            gw_metric_tls_conn(c->name, false, NULL);
            fail_conn(c, gw_tls_last_error(c->tls));
            return;
        }
        if (r == GW_TLS_AGAIN && !c->closing)
            ack_now(c);
        if (r == GW_TLS_AGAIN || c->closing)
            return;
        gw_metric_tls_conn(c->name, true, gw_tls_describe(c->tls));
        if (c->ops->on_handshake)
            c->ops->on_handshake(c);
    }
    while (!c->closing && !c->paused && !c->eof) {
        /* Gather several records before handing them on: one write downstream per 64 KiB,
         * not one per 16 KiB record. */
        size_t got = 0;
        int r;
        while ((r = gw_tls_read(c->tls, plain_buf + got, sizeof plain_buf - got)) > 0) {
            got += (size_t)r;
            if (got == sizeof plain_buf)
                break;
        }
        if (got)
            deliver(c, plain_buf, got);
        if (r > 0 || c->closing)
            continue;
        flush_tls(c); /* post-handshake messages may need an answer */
        if (r == GW_TLS_EOF)
            deliver_eof(c, true);
        else if (r == GW_TLS_ERROR)
            fail_conn(c, gw_tls_last_error(c->tls));
        break;
    }
}

/* Guarded so that a resume from inside a callback does not recurse. */
static void process_input(gw_conn *c)
{
    if (c->in_process) {
        c->again = true;
        return;
    }
    c->in_process = true;
    do {
        c->again = false;
        if (c->tls && !c->closing)
            process_tls(c);
    } while (c->again && !c->closing);
    c->in_process = false;
}

/* TLS record content types 20-23: change_cipher_spec, alert, handshake, application data.
 * A command line starts with a letter, so one byte tells them apart. */
static bool looks_like_tls(const char *buf, size_t n)
{
    return n > 0 && buf[0] >= 20 && buf[0] <= 23;
}

void gw_conn_clear_tls(gw_conn *c, SSL_CTX *restart_ctx)
{
    if (!c->tls || c->closing)
        return;
    gw_tls_close_notify(c->tls);
    flush_tls(c);
    c->clearing = true;
    c->restart_ctx = restart_ctx;
}

/* The old engine is finished: continue in clear, or with a fresh handshake (REIN). */
static void finish_clearing(gw_conn *c, const char *rest, size_t n)
{
    gw_tls_free(c->tls);
    c->tls = NULL;
    c->clearing = false;
    if (c->restart_ctx) {
        c->tls = gw_tls_new(c->restart_ctx, GW_TLS_SERVER_CONTROL);
        c->restart_ctx = NULL;
        if (!c->tls) {
            fail_conn(c, "out of memory");
            return;
        }
        if (n && gw_tls_feed(c->tls, rest, n) != 0) {
            fail_conn(c, gw_tls_last_error(c->tls));
            return;
        }
        process_input(c);
        return;
    }
    if (n)
        deliver(c, rest, n);
}

/* Input while clearing: the peer's close_notify (consumed), a new ClientHello, or clear. */
static void read_while_clearing(gw_conn *c, const char *buf, size_t n)
{
    bool hello = n > 0 && buf[0] == 22;
    if (!looks_like_tls(buf, n) || (c->restart_ctx && hello)) {
        finish_clearing(c, buf, n);
        return;
    }
    if (gw_tls_feed(c->tls, buf, n) != 0) {
        fail_conn(c, gw_tls_last_error(c->tls));
        return;
    }
    int r;
    while ((r = gw_tls_read(c->tls, plain_buf, sizeof plain_buf)) > 0)
        ; /* data after our close_notify is dropped */
    if (r == GW_TLS_AGAIN)
        return;
    if (r == GW_TLS_ERROR) {
        fail_conn(c, gw_tls_last_error(c->tls));
        return;
    }
    size_t left = gw_tls_take_unread(c->tls, read_buf, sizeof read_buf);
    finish_clearing(c, read_buf, left);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_conn *c = s->data;
    if (c->closing || nread == 0) /* 0 is EAGAIN, not EOF */
        return;
    if (nread == UV_EOF) {
        deliver_eof(c, !c->tls); /* TCP FIN without close_notify is not a clean TLS end */
        return;
    }
    if (nread < 0) {
        fail_conn(c, uv_strerror((int)nread));
        return;
    }
    c->bytes_in += (uint64_t)nread;
    if (c->clearing) {
        read_while_clearing(c, buf->base, (size_t)nread);
        return;
    }
    if (!c->tls) {
        deliver(c, buf->base, (size_t)nread);
        return;
    }
    /* OpenSSL reads the records from the thread's read buffer itself; what it leaves (a
     * partial record, or all of it while the relay is paused) is kept before the buffer
     * serves another connection. */
    gw_tls *t = c->tls;
    gw_tls_feed_lent(t, buf->base, (size_t)nread);
    process_input(c);
    if (gw_tls_feed_end(t) != 0 && !c->closing)
        fail_conn(c, gw_tls_last_error(t));
}

int gw_conn_start_read(gw_conn *c)
{
    if (c->reading || c->closing || c->eof)
        return 0;
    c->paused = false;
    int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (r == 0)
        c->reading = true;
    return r;
}

int gw_conn_open(gw_conn *c, int fd)
{
    int r = uv_tcp_open(&c->tcp, fd);
    if (r == 0)
        uv_tcp_nodelay(&c->tcp, 1);
    return r;
}

int gw_conn_unread(gw_conn *c, const void *buf, size_t n)
{
    char *p = n ? malloc(n) : NULL;
    if (n && !p)
        return UV_ENOMEM;
    if (n)
        memcpy(p, buf, n);
    free(c->unread);
    c->unread = p;
    c->unread_len = n;
    return 0;
}

int gw_conn_attach_tls(gw_conn *c, gw_tls *t)
{
    if (!t)
        return UV_ENOMEM;
    c->tls = t;
    if (c->unread) { /* read before the engine existed (a shared port's ClientHello) */
        int f = gw_tls_feed(t, c->unread, c->unread_len);
        free(c->unread);
        c->unread = NULL;
        c->unread_len = 0;
        if (f != 0)
            return UV_ENOMEM;
    }
    int r = gw_conn_start_read(c);
    /* A client engine speaks first: this sends the ClientHello. */
    if (r == 0)
        process_input(c);
    return r;
}

int gw_conn_start_tls(gw_conn *c, SSL_CTX *ctx, enum gw_tls_role role)
{
    return gw_conn_attach_tls(c, gw_tls_new(ctx, role));
}

void gw_conn_pause(gw_conn *c)
{
    if (c->paused || c->closing)
        return;
    c->paused = true;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

void gw_conn_resume(gw_conn *c)
{
    if (!c->paused || c->closing)
        return;
    c->paused = false;
    if (!c->eof)
        gw_conn_start_read(c);
    /* Plaintext may already wait inside OpenSSL from an earlier read. */
    if (c->tls)
        process_input(c);
}

int gw_conn_fd(const gw_conn *c)
{
    uv_os_fd_t fd;
    return uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0 ? fd : -1;
}

void gw_conn_count_spliced(gw_conn *src, gw_conn *dst, size_t n)
{
    src->bytes_in += n;
    dst->bytes_out += n;
    dst->payload_out += n;
}

void gw_conn_input_ended(gw_conn *c)
{
    c->eof = true;
}

static void on_shut(uv_shutdown_t *req, int status)
{
    gw_conn *c = req->handle->data;
    if (c->closing)
        return;
    if (c->ops->on_shutdown)
        c->ops->on_shutdown(c, status);
}

void gw_conn_shutdown(gw_conn *c)
{
    if (c->shut || c->closing)
        return;
    if (c->tls) {
        gw_tls_close_notify(c->tls);
        flush_tls(c);
    }
    c->shut = true;
    int r = uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shut);
    if (r != 0)
        fail_conn(c, uv_strerror(r));
}

static void on_closed(uv_handle_t *h)
{
    gw_conn *c = h->data;
    if (c->ops->on_close)
        c->ops->on_close(c);
    gw_tls_free(c->tls);
    free(c->unread);
    free(c);
}

void gw_conn_close(gw_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

void gw_conn_reset(gw_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (uv_tcp_close_reset(&c->tcp, on_closed) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static int name_of(const gw_conn *c, gw_addr *a, bool peer)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int r = peer ? uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len)
                 : uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &len);
    if (r != 0)
        return r;
    gw_addr_from_sockaddr(a, (struct sockaddr *)&ss);
    return 0;
}

int gw_conn_peer(const gw_conn *c, gw_addr *a)
{
    return name_of(c, a, true);
}

int gw_conn_local(const gw_conn *c, gw_addr *a)
{
    return name_of(c, a, false);
}
