/* Listeners: listen on every frontend of the current generation (generation.c builds it),
 * accept, and swap generations on reload. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "log.h"
#include "server.h"
#include "session.h"

static const char *mode_name(enum gw_fe_mode m)
{
    return m == GW_FE_IMPLICIT ? "implicit" : m == GW_FE_EXPLICIT ? "explicit" : "plain";
}

static void on_connection(uv_stream_t *server, int status);

static void on_listener_closed(uv_handle_t *h)
{
    gw_listener *l = h->data;
    if (l->refusing)
        l->closed = true; /* refuse still closing: on_refused frees l */
    else
        free(l);
}

static void on_refused(uv_handle_t *h)
{
    gw_listener *l = h->data;
    l->refusing = false;
    if (l->closed) {
        free(l);
    } else if (l->waiting && !uv_is_closing((uv_handle_t *)&l->tcp)) {
        l->waiting = false;
        on_connection((uv_stream_t *)&l->tcp, 0); /* memory may be back: try to serve it */
    }
}

/* libuv stops watching a listener whose connection callback did not uv_accept(), until the
 * next uv_accept(): one allocation failure would stop the frontend for good. The connection
 * is accepted into the listener's own spare handle and closed. While that handle is still
 * closing, a second one waits in libuv (the listener paused) until on_refused. */
void gw_listener_refuse(uv_stream_t *listener)
{
    gw_listener *l = listener->data;
    uint64_t now = uv_now(l->srv->loop);
    if (now - l->srv->last_accept_warn >= 1000) {
        l->srv->last_accept_warn = now;
        GW_LOG_WARN(0, "event=accept_failed frontend=%s reason=\"out of memory\"",
                    l->fe->conf->name);
    }
    if (l->refusing) {
        l->waiting = true;
        return;
    }
    uv_tcp_init(l->srv->loop, &l->refuse);
    l->refuse.data = l;
    l->refusing = true;
    (void)uv_accept(listener, (uv_stream_t *)&l->refuse);
    uv_close((uv_handle_t *)&l->refuse, on_refused);
}

static void on_connection(uv_stream_t *server, int status)
{
    gw_listener *l = server->data;
    if (status < 0) {
        /* libuv closes the pending connection itself on EMFILE (its spare descriptor), so
         * the loop neither spins nor dies; we only keep the log readable. */
        uint64_t now = uv_now(l->srv->loop);
        if (now - l->srv->last_accept_warn >= 1000) {
            l->srv->last_accept_warn = now;
            GW_LOG_WARN(0, "event=accept_failed frontend=%s reason=\"%s\"", l->fe->conf->name,
                        uv_strerror(status));
        }
        return;
    }
    gw_session_accept(l->fe, server);
}

static bool same_listen_addr(const gw_hostport *a, const gw_hostport *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

static gw_listener *find_listener(gw_server *srv, const gw_hostport *addr)
{
    for (int i = 0; i < srv->n_listeners; i++)
        if (same_listen_addr(&srv->listeners[i]->addr, addr))
            return srv->listeners[i];
    return NULL;
}

/* Several workers listen on one address, each with a socket of its own: the kernel spreads
 * new connections over them (SO_REUSEPORT). libuv 1.44 has no flag for it. */
static int bind_reuseport(uv_tcp_t *tcp, const struct sockaddr_storage *ss)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int one = 1;
    socklen_t len = ss->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                             : sizeof(struct sockaddr_in6);
    if (ss->ss_family == AF_INET6) /* as uv_tcp_bind: [::] is dual stack */
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &(int){0}, sizeof(int));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        bind(fd, (const struct sockaddr *)ss, len) != 0) {
        int e = errno;
        close(fd);
        return uv_translate_sys_error(e);
    }
    int r = uv_tcp_open(tcp, fd);
    if (r != 0)
        close(fd);
    return r;
}

static gw_listener *open_listener(gw_server *srv, gw_frontend *fe, char *err, size_t cap)
{
    const gw_frontend_conf *fc = fe->conf;
    gw_addr la;
    if (gw_resolve_host(fc->listen.host, fc->listen.port, &la)) {
        snprintf(err, cap, "[frontend %s] listen: cannot resolve %s", fc->name, fc->listen.host);
        return NULL;
    }
    gw_listener *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    struct sockaddr_storage ss;
    gw_addr_to_sockaddr(&la, &ss);
    uv_tcp_init(srv->loop, &l->tcp);
    l->tcp.data = l;
    l->srv = srv;
    l->addr = fc->listen;
    l->fe = fe;
    int r = srv->reuseport ? bind_reuseport(&l->tcp, &ss)
                           : uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
    if (r != 0) {
        snprintf(err, cap, "[frontend %s] cannot listen on %s: %s", fc->name, gw_addr_str(&la),
                 uv_strerror(r));
        uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
        return NULL;
    }
    return l;
}

static void log_frontend(const gw_frontend *fe, const char *event)
{
    char backend[GW_HOST_MAX + 8];
    const char *bh = fe->backend->address.host, *lh = fe->conf->listen.host;
    bool b6 = strchr(bh, ':') != NULL, l6 = strchr(lh, ':') != NULL;
    snprintf(backend, sizeof backend, "%s%s%s:%u", b6 ? "[" : "", bh, b6 ? "]" : "",
             fe->backend->address.port);
    GW_LOG_INFO(0, "event=%s frontend=%s mode=%s addr=%s%s%s:%u backend=%s", event,
                fe->conf->name, mode_name(fe->conf->mode), l6 ? "[" : "", lh, l6 ? "]" : "",
                fe->conf->listen.port, backend);
}

static void close_listener(gw_listener *l)
{
    if (!uv_is_closing((uv_handle_t *)&l->tcp))
        uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
}

/* Point listeners at generation g: keep those whose address stays, open new ones, close the
 * rest. On failure the new listeners are closed and nothing else changes. */
static int switch_listeners(gw_server *srv, gw_generation *g, char *err, size_t cap)
{
    gw_listener *next[GW_MAX_FRONTENDS] = {0};
    bool fresh[GW_MAX_FRONTENDS] = {0};
    for (int i = 0; i < g->n_frontends; i++) {
        next[i] = find_listener(srv, &g->frontends[i].conf->listen);
        if (!next[i]) {
            next[i] = open_listener(srv, &g->frontends[i], err, cap);
            fresh[i] = true;
            if (!next[i]) {
                for (int j = 0; j < i; j++)
                    if (fresh[j])
                        close_listener(next[j]);
                return -1;
            }
        }
    }
    for (int i = 0; i < srv->n_listeners; i++) {
        bool kept = false;
        for (int j = 0; j < g->n_frontends; j++)
            kept |= next[j] == srv->listeners[i];
        if (!kept) {
            GW_LOG_INFO(0, "event=listener_closed addr=%s:%u", srv->listeners[i]->addr.host,
                        srv->listeners[i]->addr.port);
            close_listener(srv->listeners[i]);
        }
    }
    for (int i = 0; i < g->n_frontends; i++) {
        next[i]->fe = &g->frontends[i];
        srv->listeners[i] = next[i];
        log_frontend(&g->frontends[i], fresh[i] ? "listening" : "listening_kept");
    }
    srv->n_listeners = g->n_frontends;
    return 0;
}

/* At the descriptor limit libuv's accept loop closes new connections itself (with a spare
 * descriptor) and tells nobody. A cheap probe each second makes it visible in the log. */
static void on_fd_probe(uv_timer_t *t)
{
    gw_server *srv = t->data;
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        return;
    }
    if (errno == EMFILE || errno == ENFILE)
        GW_LOG_WARN(0, "event=descriptor_limit sessions=%d note=\"new connections are closed "
                       "at accept until descriptors are free\"",
                    srv->sessions);
}

int gw_server_start(gw_server *srv, uv_loop_t *loop, const gw_config *cfg, char *err,
                    size_t cap)
{
    srv->loop = loop;
    srv->gen = gw_generation_new(cfg, err, cap);
    if (!srv->gen)
        return -1;
    for (int i = 0; i < srv->gen->n_frontends; i++)
        srv->gen->frontends[i].srv = srv;
    uv_timer_init(loop, &srv->fd_probe);
    srv->fd_probe.data = srv;
    srv->fd_probe_started = true;
    uv_timer_start(&srv->fd_probe, on_fd_probe, 1000, 1000);
    uv_unref((uv_handle_t *)&srv->fd_probe);
    return switch_listeners(srv, srv->gen, err, cap);
}

int gw_server_reload(gw_server *srv, const gw_config *cfg, char *err, size_t cap)
{
    gw_generation *g = gw_generation_new(cfg, err, cap);
    if (!g)
        return -1;
    for (int i = 0; i < g->n_frontends; i++)
        g->frontends[i].srv = srv;
    if (switch_listeners(srv, g, err, cap) != 0) {
        gw_generation_unref(g);
        return -1;
    }
    gw_generation *old = srv->gen;
    srv->gen = g;
    gw_generation_unref(old); /* freed when its last session ends */
    return 0;
}

void gw_server_stop_listening(gw_server *srv)
{
    if (srv->fd_probe_started && !uv_is_closing((uv_handle_t *)&srv->fd_probe))
        uv_close((uv_handle_t *)&srv->fd_probe, NULL);
    for (int i = 0; i < srv->n_listeners; i++)
        close_listener(srv->listeners[i]);
    srv->n_listeners = 0;
}

void gw_server_free(gw_server *srv)
{
    if (srv->gen)
        gw_generation_unref(srv->gen);
    srv->gen = NULL;
}
