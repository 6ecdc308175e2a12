/* The gateway's listeners for data connections, one connection each: the client's passive
 * port (pasv_ports), the shared port's hand-off (shared_port.c matched the connection to this
 * transfer), the backend's active-mode listener, and the PROXY header that a balancer puts
 * in front of a client's data connection (proxy_protocol_data). Every connection is checked
 * against the peer it must come from before it becomes a leg (data.c). */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "data_int.h"
#include "log.h"
#include "metrics.h"
#include "pasv_pool.h"
#include "shared_port.h"

static void client_leg_accepted(gw_data *d, gw_conn *c)
{
    d->client = c;
    data_close_listener(d, d->client_listener); /* one connection per listener */
    if (d->state != DS_ARMED)
        data_start_client_leg(d);
}

/* ---- proxy_protocol_data: a PROXY header before the client data leg proceeds ---- */

static void pp_leg_refuse(gw_data *d, gw_conn *c, const gw_addr *peer, const char *why)
{
    GW_LOG_WARN(d->sid, "event=data_refused leg=client-data peer=%s reason=\"%s\"",
                gw_addr_str(peer), why);
    if (c == d->pp_conn)
        d->pp_conn = NULL; /* still counted in strays until it has closed */
    gw_conn_reset(c);
}

static void on_pp_leg_data(gw_conn *c, const char *buf, size_t n)
{
    gw_data *d = c->owner;
    if (c != d->pp_conn || c->closing)
        return;
    gw_pp_header h;
    size_t need;
    const char *why;
    int rc = gw_pp_feed(d->pp, buf, n, d->pp_mode, &h, &need, &why);
    if (rc == GW_PP_MORE) {
        c->read_max = need;
        return;
    }
    gw_addr peer;
    if (gw_conn_peer(c, &peer) != 0)
        memset(&peer, 0, sizeof peer);
    if (rc == GW_PP_BAD) {
        pp_leg_refuse(d, c, &peer, why);
        return;
    }
    gw_addr src = h.src;
    gw_addr_normalize(&src);
    /* SECURITY: port theft behind the balancer: the header must name the control client. */
    if (h.local || h.unknown || !gw_addr_same_host(&src, &d->expect_client) || d->client) {
        pp_leg_refuse(d, c, h.local || h.unknown ? &peer : &src,
                      "PROXY source not the control peer");
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=data_accept leg=client-data peer=%s via=proxy", gw_addr_str(&src));
    c->read_max = 0;
    gw_conn_pause(c); /* the TLS handshake or the relay starts it again */
    d->pp_conn = NULL;
    d->strays--;
    gw_conn_set_owner(c, &data_client_leg_ops, d);
    client_leg_accepted(d, c);
}

static void on_pp_leg_eof(gw_conn *c, bool clean)
{
    gw_data *d = c->owner;
    if (c == d->pp_conn)
        d->pp_conn = NULL;
    gw_conn_close(c);
}

static void on_pp_leg_error(gw_conn *c, const char *why)
{
    on_pp_leg_eof(c, false);
}

static void on_pp_leg_close(gw_conn *c)
{
    gw_data *d = c->owner;
    if (c == d->pp_conn)
        d->pp_conn = NULL;
    d->strays--;
    data_maybe_free(d);
}

static void on_pp_leg_shutdown(gw_conn *c, int status)
{
    gw_conn_close(c);
}

static const gw_conn_ops pp_leg_ops = {
    .on_data = on_pp_leg_data,
    .on_eof = on_pp_leg_eof,
    .on_error = on_pp_leg_error,
    .on_shutdown = on_pp_leg_shutdown,
    .on_close = on_pp_leg_close,
};

/* Accepted on the client listener: from a balancer in pp_from, one header read at a time. */
static void pp_leg_accepted(gw_data *d, gw_conn *c, const gw_addr *peer)
{
    d->strays++;
    gw_conn_set_owner(c, &pp_leg_ops, d);
    if (!gw_cidr_list_match(d->pp_from, peer)) {
        pp_leg_refuse(d, c, peer, "not in proxy_protocol_from");
        return;
    }
    if (d->client || d->pp_conn) {
        pp_leg_refuse(d, c, peer, "a data connection is already open");
        return;
    }
    if (!d->pp && !(d->pp = malloc(sizeof *d->pp))) {
        pp_leg_refuse(d, c, peer, "out of memory");
        return;
    }
    d->pp->n = 0;
    d->pp_conn = c;
    c->read_max = gw_pp_first_read(d->pp_mode);
    if (gw_conn_start_read(c) != 0)
        pp_leg_refuse(d, c, peer, "read failed");
}

void gw_data_client_proxy(gw_data *d, int mode, const char *from)
{
    d->pp_mode = mode;
    d->pp_from = from;
}

static void on_data_connection(uv_stream_t *server, int status)
{
    gw_data *d = server->data;
    bool client = (uv_tcp_t *)server == d->client_listener;
    if (status < 0 || (data_released(d) && (client || !d->hand_over)))
        return; /* hand_over: the server's connection is still taken (data.c) */
    gw_conn *c = gw_conn_new(d->loop, client ? &data_client_leg_ops : &data_backend_leg_ops, d,
                             d->sid, client ? "client-data" : "backend-data");
    if (!c) {
        /* Left pending, the connection would stop libuv watching this listener; closing the
         * listener closes it too (one connection per listener in any case). */
        GW_LOG_WARN(d->sid, "event=accept_failed leg=%s reason=\"out of memory\"",
                    client ? "client-data" : "backend-data");
        data_close_listener(d, (uv_tcp_t *)server);
        if (d->state != DS_ARMED)
            data_fail(d, GW_DATA_CLIENT_FAILED, "out of memory");
        return;
    }
    gw_addr peer;
    if (gw_conn_accept(c, server) != 0 || gw_conn_peer(c, &peer) != 0) {
        d->strays++;
        gw_conn_close(c);
        return;
    }
    gw_addr_normalize(&peer);
    /* SECURITY: port theft. Only the control connection's peer (or, on the backend side, the
     * backend) may connect; anyone else is reset at once and the listener stays open. */
    const gw_addr *expect = client ? &d->expect_client : &d->expect_backend;
    if (client && d->pp_mode) {
        pp_leg_accepted(d, c, &peer);
        return;
    }
    if (!gw_addr_same_host(&peer, expect) || (client ? d->client : d->backend)) {
        GW_LOG_WARN(d->sid, "event=data_refused leg=%s peer=%s reason=\"not the %s\"", c->name,
                    gw_addr_str(&peer), client ? "control peer" : "backend");
        gw_metric_data_refused(GW_M_REFUSED_FOREIGN_ADDRESS);
        d->strays++;
        gw_conn_reset(c);
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=data_accept leg=%s peer=%s", c->name, gw_addr_str(&peer));
    if (client) {
        client_leg_accepted(d, c);
    } else {
        d->backend = c;
        d->legs |= LEG_BACKEND_CONNECTED;
        data_close_listener(d, d->backend_listener);
        if (data_released(d))
            data_hand_over_backend(d);
        else if (d->state != DS_ARMED)
            data_start_backend_leg(d);
    }
}

static uv_tcp_t *listen_on_fd(gw_data *d, int fd)
{
    uv_tcp_t *l = malloc(sizeof *l);
    if (!l) {
        close(fd);
        return NULL;
    }
    uv_tcp_init(d->loop, l);
    l->data = d;
    if (uv_tcp_open(l, fd) != 0 || uv_listen((uv_stream_t *)l, 4, on_data_connection) != 0) {
        uv_close((uv_handle_t *)l, (uv_close_cb)free);
        return NULL;
    }
    return l;
}

int gw_data_client_passive(gw_data *d, gw_addr *bind_addr, gw_pasv_pool *pool,
                           const gw_addr *expect)
{
    int fd = gw_pasv_pool_listen(pool, bind_addr);
    if (fd < 0)
        return -1;
    d->client_listener = listen_on_fd(d, fd);
    if (!d->client_listener) {
        gw_pasv_pool_release(pool, bind_addr->port);
        return -1;
    }
    d->pool = pool;
    d->client_port = bind_addr->port;
    d->expect_client = *expect;
    gw_addr_normalize(&d->expect_client);
    return 0;
}

/* The shared port's hand-off (gw_shport_conn_fn), on d's loop: the connection matched to
 * d, its descriptor now d's. */
static void on_shared_connection(void *arg, int fd, const uint8_t *buf, size_t n,
                                 const gw_addr *pp_src)
{
    gw_data *d = arg;
    d->shared_id = 0; /* no longer waiting */
    if (data_released(d) || d->client) {
        close(fd);
        return;
    }
    gw_conn *c = gw_conn_new(d->loop, &data_client_leg_ops, d, d->sid, "client-data");
    if (!c) {
        close(fd);
        if (d->state != DS_ARMED)
            data_fail(d, GW_DATA_CLIENT_FAILED, "out of memory");
        return;
    }
    gw_addr peer;
    if (gw_conn_open(c, fd) != 0) {
        close(fd);
        d->strays++;
        gw_conn_close(c);
        return;
    }
    /* SECURITY: the passive source check holds on the shared port too (shared_port.c
     * matched on this address already; checked again on the adopted descriptor). Behind a
     * balancer (proxy_protocol_data) the TCP peer must be a balancer and the client is the
     * PROXY header's source, which must be the control connection's client. */
    const char *why = NULL;
    gw_addr client;
    if (gw_conn_peer(c, &peer) != 0)
        memset(&peer, 0, sizeof peer);
    gw_addr_normalize(&peer);
    client = pp_src ? *pp_src : peer;
    gw_addr_normalize(&client);
    if (!pp_src != !d->pp_mode)
        why = d->pp_mode ? "no PROXY header" : "a PROXY header where none is expected";
    else if (pp_src && !gw_cidr_list_match(d->pp_from, &peer))
        why = "not in proxy_protocol_from";
    else if (!gw_addr_same_host(&client, &d->expect_client))
        why = pp_src ? "PROXY source not the control peer" : "not the control peer";
    else if (gw_conn_unread(c, buf, n) != 0)
        why = "out of memory";
    if (why) {
        GW_LOG_WARN(d->sid, "event=data_refused leg=client-data peer=%s reason=\"%s\"",
                    gw_addr_str(&client), why);
        d->strays++;
        gw_conn_reset(c);
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=data_accept leg=client-data peer=%s shared=yes%s",
                 gw_addr_str(&client), pp_src ? " via=proxy" : "");
    d->client = c;
    if (d->state != DS_ARMED)
        data_start_client_leg(d);
}

int gw_data_client_shared(gw_data *d, const gw_shport_want *w, const gw_addr *expect)
{
    d->expect_client = *expect;
    gw_addr_normalize(&d->expect_client);
    return gw_shport_wait(w, &d->expect_client, d->loop, d->sid, on_shared_connection, d,
                          &d->shared_id);
}

int gw_data_backend_active(gw_data *d, gw_addr *bind_addr, const gw_addr *expect)
{
    struct sockaddr_storage ss;
    bind_addr->port = 0;
    gw_addr_to_sockaddr(bind_addr, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    socklen_t len =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
        close(fd);
        return -1;
    }
    gw_addr_from_sockaddr(bind_addr, (struct sockaddr *)&ss);
    d->backend_listener = listen_on_fd(d, fd);
    if (!d->backend_listener)
        return -1;
    d->expect_backend = *expect;
    gw_addr_normalize(&d->expect_backend);
    return 0;
}
