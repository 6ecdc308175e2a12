/* Data channels. Per transfer: ARMED (listener open) -> the transfer command starts the
 * backend connect -> both legs up -> relay with watermarks -> the source's EOF becomes the
 * destination's close_notify + FIN -> session told -> legs linger until the peers close. */
#include "data.h"

#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "ftp_codes.h"
#include "log.h"
#include "session.h"

#define LINGER_MS 5000

struct gw_data {
    struct gw_session *s; /* NULL once released by the session */
    uv_loop_t *loop;
    uint64_t sid;
    uv_tcp_t *listener;
    gw_pasv_pool *pool;
    uint16_t port;
    gw_conn *client, *backend;
    int strays; /* refused connections still closing */
    uv_timer_t *timer;
    gw_addr expect_peer;
    SSL_CTX *tls_ctx;
    gw_tls *backend_engine; /* attached once the backend data connection is open */
    uint8_t tag[GW_TLS_TAG_LEN];
    uint64_t last_progress, connect_timeout_ms, data_timeout_ms;
    bool started, upload, client_up, backend_up, relaying, finished, released, lingering;
    bool reuse_required, timer_closing;
};

static void start_client_leg(gw_data *d);

static void on_timer_closed(uv_handle_t *h)
{
    gw_data *d = h->data;
    free(h);
    gw_tls_free(d->backend_engine);
    free(d);
}

static void maybe_free(gw_data *d)
{
    if (!d->released || d->client || d->backend || d->listener || d->strays || d->timer_closing)
        return;
    d->timer_closing = true;
    uv_close((uv_handle_t *)d->timer, on_timer_closed);
}

static void on_listener_closed(uv_handle_t *h)
{
    gw_data *d = h->data;
    free(h);
    d->listener = NULL;
    maybe_free(d);
}

static void close_listener(gw_data *d)
{
    if (!d->listener || uv_is_closing((uv_handle_t *)d->listener))
        return;
    gw_pasv_pool_release(d->pool, d->port);
    uv_close((uv_handle_t *)d->listener, on_listener_closed);
}

static void finish(gw_data *d, bool ok, const char *reply)
{
    if (d->finished)
        return;
    d->finished = true;
    uv_timer_stop(d->timer);
    if (d->s)
        gw_session_data_finished(d->s, ok, reply);
}

static void fail(gw_data *d, const char *reply, const char *why)
{
    GW_LOG_WARN(d->sid, "event=data_failed reason=\"%s\"", why);
    finish(d, false, reply);
}

static gw_conn *other(gw_data *d, gw_conn *c)
{
    return c == d->client ? d->backend : d->client;
}

static bool is_source(gw_data *d, gw_conn *c)
{
    return d->upload ? c == d->client : c == d->backend;
}

static void maybe_relay(gw_data *d)
{
    if (d->relaying || !d->client_up || !d->backend_up || d->finished)
        return;
    d->relaying = true;
    d->last_progress = uv_now(d->loop);
    GW_LOG_DEBUG(d->sid, "event=data_relay direction=%s", d->upload ? "upload" : "download");
    gw_conn_resume(d->client);
    gw_conn_start_read(d->client);
    gw_conn_start_read(d->backend);
}

static void on_leg_data(gw_conn *c, const char *buf, size_t n)
{
    gw_data *d = c->owner;
    if (d->finished || !is_source(d, c))
        return; /* bytes against the transfer's direction are dropped */
    gw_conn *dst = other(d, c);
    d->last_progress = uv_now(d->loop);
    gw_conn_write(dst, buf, n);
    if (dst->want_drain)
        gw_conn_pause(c); /* backpressure: the destination's queue is full */
}

static void on_leg_drain(gw_conn *c)
{
    gw_data *d = c->owner;
    gw_conn *src = other(d, c);
    if (src && !d->finished)
        gw_conn_resume(src);
}

static void linger_or_close(gw_data *d, gw_conn *c)
{
    if (!c)
        return;
    if (c->eof || c->failed) {
        gw_conn_close(c);
        return;
    }
    /* Keep reading until the peer closes: closing with unread input would send a reset
     * and could destroy data still in flight. */
    gw_conn_resume(c);
    gw_conn_start_read(c);
}

static void on_leg_eof(gw_conn *c, bool clean)
{
    gw_data *d = c->owner;
    if (d->lingering || d->released) {
        gw_conn_close(c);
        maybe_free(d);
        return;
    }
    if (!d->relaying || !is_source(d, c))
        return; /* the sink half-closed; its final state comes from the other leg */
    if (!clean)
        GW_LOG_WARN(d->sid, "event=data_eof leg=%s close_notify=no note=\"possible truncation\"",
                    c->name);
    gw_conn_shutdown(other(d, c));
    /* Answer the source's close_notify too: servers such as vsftpd wait for it before they
     * send their final reply. */
    gw_conn_shutdown(c);
}

static void on_leg_shutdown(gw_conn *c, int status)
{
    gw_data *d = c->owner;
    if (is_source(d, c))
        return; /* our answer to the source's close; the transfer ends at the destination */
    if (status != 0) {
        fail(d, "426 Connection closed; transfer aborted.\r\n", uv_strerror(status));
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=data_done direction=%s bytes=%llu",
                 d->upload ? "upload" : "download", (unsigned long long)c->bytes_out);
    finish(d, true, NULL);
}

static void on_leg_error(gw_conn *c, const char *why)
{
    gw_data *d = c->owner;
    GW_LOG_INFO(d->sid, "event=data_error leg=%s reason=\"%s\"", c->name, why);
    if (d->finished || d->released) {
        gw_conn_close(c);
        return;
    }
    fail(d, "426 Connection closed; transfer aborted.\r\n", why);
}

static void on_leg_close(gw_conn *c)
{
    gw_data *d = c->owner;
    if (c == d->client)
        d->client = NULL;
    else if (c == d->backend)
        d->backend = NULL;
    else
        d->strays--;
    maybe_free(d);
}

static void on_client_handshake(gw_conn *c)
{
    gw_data *d = c->owner;
    int r = gw_tls_resumed_from(c->tls, d->tag);
    /* SECURITY: only a handshake that resumes this control connection's own session proves
     * the data connection belongs to the control connection's owner. */
    if (r != 1) {
        if (d->reuse_required) {
            GW_LOG_WARN(d->sid, "event=data_tls_refused reason=\"%s\"",
                        r == 0 ? "session not resumed" : "resumed another client's session");
            gw_conn_reset(c);
            finish(d, false, "522 TLS session of data connection not resumed.\r\n");
            return;
        }
        GW_LOG_INFO(d->sid, "event=data_tls_not_resumed policy=optional");
    }
    GW_LOG_DEBUG(d->sid, "event=data_tls tls=%s", gw_tls_describe(c->tls));
    d->client_up = true;
    if (!d->backend_up)
        gw_conn_pause(c);
    maybe_relay(d);
}

static void on_backend_handshake(gw_conn *c)
{
    gw_data *d = c->owner;
    GW_LOG_DEBUG(d->sid, "event=backend_data_tls tls=%s resumed=%s", gw_tls_describe(c->tls),
                 gw_tls_resumed(c->tls) ? "yes" : "no");
    d->backend_up = true;
    if (!d->client_up)
        gw_conn_pause(c); /* nothing to relay to yet */
    maybe_relay(d);
}

static void on_backend_connect(gw_conn *c, int status)
{
    gw_data *d = c->owner;
    if (status != 0) {
        fail(d, "425 Can't open data connection to the server.\r\n", uv_strerror(status));
        return;
    }
    if (d->backend_engine) {
        gw_tls *t = d->backend_engine;
        d->backend_engine = NULL;
        int r = gw_conn_attach_tls(c, t);
        if (r != 0)
            fail(d, "425 Can't open data connection to the server.\r\n", uv_strerror(r));
        return;
    }
    d->backend_up = true;
    maybe_relay(d);
}

static const gw_conn_ops client_ops = {
    .on_handshake = on_client_handshake,
    .on_data = on_leg_data,
    .on_eof = on_leg_eof,
    .on_error = on_leg_error,
    .on_drain = on_leg_drain,
    .on_shutdown = on_leg_shutdown,
    .on_close = on_leg_close,
};

static const gw_conn_ops backend_ops = {
    .on_connect = on_backend_connect,
    .on_handshake = on_backend_handshake,
    .on_data = on_leg_data,
    .on_eof = on_leg_eof,
    .on_error = on_leg_error,
    .on_drain = on_leg_drain,
    .on_shutdown = on_leg_shutdown,
    .on_close = on_leg_close,
};

static void on_data_connection(uv_stream_t *server, int status)
{
    gw_data *d = server->data;
    if (status < 0 || d->released)
        return;
    gw_conn *c = gw_conn_new(d->loop, &client_ops, d, d->sid, "client-data");
    if (!c)
        return;
    gw_addr peer;
    if (gw_conn_accept(c, server) != 0 || gw_conn_peer(c, &peer) != 0) {
        d->strays++;
        gw_conn_close(c);
        return;
    }
    gw_addr_normalize(&peer);
    /* SECURITY: port theft. Only the control connection's peer may connect; anyone else is
     * closed at once and the listener stays open for the real client. */
    if (!gw_addr_same_host(&peer, &d->expect_peer) || d->client) {
        GW_LOG_WARN(d->sid, "event=data_refused peer=%s reason=\"not the control peer\"",
                    gw_addr_str(&peer));
        d->strays++;
        gw_conn_reset(c);
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=data_accept peer=%s", gw_addr_str(&peer));
    d->client = c;
    close_listener(d); /* one connection per listener */
    if (d->started)
        start_client_leg(d);
}

static void on_timer(uv_timer_t *t)
{
    gw_data *d = t->data;
    if (d->lingering || d->released) {
        if (d->client)
            gw_conn_close(d->client);
        if (d->backend)
            gw_conn_close(d->backend);
        return;
    }
    uint64_t now = uv_now(d->loop);
    if (!d->relaying) {
        if (now - d->last_progress < d->connect_timeout_ms)
            return;
        if (d->started)
            fail(d, "425 Can't open data connection.\r\n", "data connection timeout");
        else
            close_listener(d);
        return;
    }
    if (now - d->last_progress >= d->data_timeout_ms)
        fail(d, "426 Connection closed; transfer aborted (data timeout).\r\n", "data timeout");
}

gw_data *gw_data_listen(struct gw_session *s, gw_addr *bind_addr, gw_pasv_pool *pool)
{
    gw_data *d = calloc(1, sizeof *d);
    uv_tcp_t *l = malloc(sizeof *l);
    uv_timer_t *t = malloc(sizeof *t);
    if (!d || !l || !t)
        goto fail;
    int fd = gw_pasv_pool_listen(pool, bind_addr);
    if (fd < 0)
        goto fail;
    uv_tcp_init(s->loop, l);
    l->data = d;
    if (uv_tcp_open(l, fd) != 0 || uv_listen((uv_stream_t *)l, 4, on_data_connection) != 0) {
        gw_pasv_pool_release(pool, bind_addr->port);
        uv_close((uv_handle_t *)l, (uv_close_cb)free);
        free(t);
        free(d);
        return NULL;
    }
    uv_timer_init(s->loop, t);
    t->data = d;
    d->s = s;
    d->loop = s->loop;
    d->sid = s->id;
    d->listener = l;
    d->pool = pool;
    d->port = bind_addr->port;
    d->timer = t;
    d->expect_peer = s->client_peer;
    gw_addr_normalize(&d->expect_peer);
    const gw_config *cfg = s->fe->srv->cfg;
    d->connect_timeout_ms = (uint64_t)cfg->data_connect_timeout * 1000;
    d->data_timeout_ms = (uint64_t)cfg->data_timeout * 1000;
    d->last_progress = uv_now(d->loop);
    uv_timer_start(t, on_timer, 1000, 1000);
    return d;
fail:
    free(d);
    free(l);
    free(t);
    return NULL;
}

static void start_client_leg(gw_data *d)
{
    int r = d->tls_ctx ? gw_conn_start_tls(d->client, d->tls_ctx, GW_TLS_SERVER_DATA)
                       : gw_conn_start_read(d->client);
    if (r != 0) {
        fail(d, "425 Can't open data connection.\r\n", uv_strerror(r));
        return;
    }
    if (!d->tls_ctx) {
        d->client_up = true;
        if (!d->backend_up)
            gw_conn_pause(d->client);
        maybe_relay(d);
    }
}

void gw_data_start(gw_data *d, const gw_addr *backend, bool upload, const gw_data_tls *tls)
{
    d->started = true;
    d->upload = upload;
    d->tls_ctx = tls->client_ctx;
    d->reuse_required = tls->reuse_required;
    d->backend_engine = tls->backend_engine;
    if (tls->tag)
        memcpy(d->tag, tls->tag, GW_TLS_TAG_LEN);
    d->last_progress = uv_now(d->loop);
    d->backend = gw_conn_new(d->loop, &backend_ops, d, d->sid, "backend-data");
    int r = d->backend ? gw_conn_connect(d->backend, backend) : UV_ENOMEM;
    if (r != 0) {
        if (d->backend)
            gw_conn_close(d->backend);
        fail(d, "425 Can't open data connection to the server.\r\n", uv_strerror(r));
        return;
    }
    if (d->client)
        start_client_leg(d);
}

bool gw_data_usable(const gw_data *d)
{
    return d->client || (d->listener && !uv_is_closing((const uv_handle_t *)d->listener));
}

void gw_data_release(gw_data *d, bool ok)
{
    if (d->released)
        return;
    d->released = true;
    d->s = NULL;
    close_listener(d);
    if (ok && d->finished) {
        d->lingering = true;
        uv_timer_start(d->timer, on_timer, LINGER_MS, 0);
        linger_or_close(d, d->client);
        linger_or_close(d, d->backend);
    } else {
        /* SECURITY: a reset, not a FIN, so that neither peer can take a cut-off transfer
         * for a complete one. */
        if (d->client)
            gw_conn_reset(d->client);
        if (d->backend)
            gw_conn_reset(d->backend);
    }
    maybe_free(d);
}
