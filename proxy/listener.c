/* Listeners: listen on every frontend of the current generation (generation.c builds it),
 * accept, and swap generations on reload. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "ftp_codes.h"
#include "log.h"
#include "metrics.h"
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

/* Accept errors are logged at most once a second. */
static void warn_accept(gw_listener *l, const char *why)
{
    uint64_t now = uv_now(l->srv->loop);
    if (now - l->srv->last_accept_warn >= 1000) {
        l->srv->last_accept_warn = now;
        GW_LOG_WARN(0, "event=accept_failed frontend=%s reason=\"%s\"", l->fe->conf->name, why);
    }
}

/* libuv stops watching a listener whose connection callback did not uv_accept(), until the
 * next uv_accept(): one allocation failure would stop the frontend for good. The connection
 * is accepted into the listener's own spare handle and closed. While that handle is still
 * closing, a second one waits in libuv (the listener paused) until on_refused. */
void gw_listener_refuse(uv_stream_t *listener)
{
    gw_listener *l = listener->data;
    warn_accept(l, "out of memory");
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

/* One accepted client connection, from accept until its session (or its refusal) has ended:
 * it holds a place in the session counters and, once counted, one of its address's
 * max_sessions_per_ip, and it is linked into srv->session_list for shutdown. */
struct gw_sess_entry {
    gw_server *srv;
    gw_session *s; /* NULL until the session runs, and for a refused connection */
    uint64_t id;
    gw_addr peer;
    bool ip_counted;
    struct gw_sess_entry *next, *prev;
};

static void entry_end(void *host)
{
    gw_sess_entry *e = host;
    gw_server *srv = e->srv;
    srv->sessions--;
    srv->shared->sessions--;
    if (e->ip_counted) {
        pthread_mutex_lock(&srv->shared->lock);
        gw_ip_release(srv->shared->per_ip, &e->peer);
        pthread_mutex_unlock(&srv->shared->lock);
    }
    if (e->prev)
        e->prev->next = e->next;
    else
        srv->session_list = e->next;
    if (e->next)
        e->next->prev = e->prev;
    free(e);
#ifdef __GLIBC__
    /* After a burst glibc keeps the freed heap; give it back when the gateway goes idle. */
    if (srv->sessions == 0)
        malloc_trim(0);
#endif
}

static const gw_session_hooks entry_hooks = {.on_end = entry_end};

/* A connection no session serves (refused, or its accept failed): its last reply is out,
 * or it is closed at once. */
static void on_unserved_error(gw_conn *c, const char *why)
{
    gw_conn_close(c);
}

static void on_unserved_shutdown(gw_conn *c, int status)
{
    gw_conn_close(c);
}

static void on_unserved_eof(gw_conn *c, bool clean)
{
    gw_conn_close(c);
}

static void on_unserved_drain(gw_conn *c) {}

static void on_unserved_close(gw_conn *c)
{
    gw_sess_entry *e = c->owner;
    GW_LOG_INFO(e->id, "event=session_end");
    entry_end(e);
}

static const gw_conn_ops unserved_ops = {
    .on_error = on_unserved_error,
    .on_eof = on_unserved_eof,
    .on_drain = on_unserved_drain,
    .on_shutdown = on_unserved_shutdown,
    .on_close = on_unserved_close,
};

/* End a connection no session serves: text (in clear) then FIN, or a bare close. */
static void unserved_close(gw_sess_entry *e, gw_conn *c, const char *text, const char *why)
{
    GW_LOG_INFO(e->id, "event=session_close reason=\"%s\"", why);
    if (text) {
        gw_conn_write_str(c, text);
        gw_conn_shutdown(c);
    } else {
        gw_conn_close(c);
    }
}

/* max_sessions and max_sessions_per_ip: 421 in clear on explicit/plain frontends, a bare
 * close on implicit ones (never a byte in clear there, PROTOCOL.md §7). The connection is
 * counted already; false when it may be served. */
static bool refuse_over_limit(gw_sess_entry *e, gw_frontend *fe, gw_conn *c)
{
    const gw_config *cfg = fe->cfg;
    gw_shared *sh = e->srv->shared;
    const char *why = NULL;
    if (sh->sessions > cfg->max_sessions) {
        why = "max_sessions reached";
    } else {
        pthread_mutex_lock(&sh->lock);
        if (gw_ip_acquire(sh->per_ip, &e->peer, cfg->max_sessions_per_ip) != 0)
            why = "max_sessions_per_ip reached";
        else
            e->ip_counted = true;
        pthread_mutex_unlock(&sh->lock);
    }
    if (!why)
        return false;
    GW_LOG_WARN(e->id, "event=session_refused peer=%s reason=\"%s\" worker=%d",
                gw_addr_str(&e->peer), why, e->srv->worker);
    unserved_close(e, c, fe->conf->mode != GW_FE_IMPLICIT ? GW_R_TOO_MANY_CONNECTIONS : NULL, why);
    return true;
}

/* A new client: counted and listed from here until its session (or refusal) ends. */
static void accept_client(gw_listener *l, uv_stream_t *server)
{
    gw_server *srv = l->srv;
    gw_frontend *fe = l->fe;
    gw_sess_entry *e = calloc(1, sizeof *e);
    if (!e) {
        gw_listener_refuse(server);
        return;
    }
    e->srv = srv;
    e->id = ++srv->shared->next_session_id;
    gw_conn *c = gw_conn_new(srv->loop, &unserved_ops, e, e->id, "client");
    if (!c) {
        free(e);
        gw_listener_refuse(server);
        return;
    }
    srv->sessions++;
    srv->shared->sessions++;
    e->next = srv->session_list;
    if (e->next)
        e->next->prev = e;
    srv->session_list = e;
    gw_addr local;
    if (gw_conn_accept(c, server) != 0 || gw_conn_peer(c, &e->peer) || gw_conn_local(c, &local)) {
        unserved_close(e, c, NULL, "accept failed");
        return;
    }
    gw_addr_normalize(&e->peer);
    if (refuse_over_limit(e, fe, c))
        return;
    GW_LOG_INFO(e->id, "event=session_start frontend=%s peer=%s worker=%d", fe->conf->name,
                gw_addr_str(&e->peer), srv->worker);
    e->s = gw_session_start(fe, srv->loop, e->id, c, &e->peer, &local, &entry_hooks, e);
    if (!e->s) {
        warn_accept(l, "out of memory");
        unserved_close(e, c, NULL, "out of memory");
    }
}

void gw_server_close_sessions(gw_server *srv, const char *why)
{
    for (gw_sess_entry *e = srv->session_list; e; e = e->next)
        if (e->s)
            gw_session_close(e->s, why);
}

void gw_server_each_session(gw_server *srv, void (*fn)(gw_session *s, void *arg), void *arg)
{
    for (gw_sess_entry *e = srv->session_list; e; e = e->next)
        if (e->s)
            fn(e->s, arg);
}

static void on_connection(uv_stream_t *server, int status)
{
    gw_listener *l = server->data;
    if (status < 0) {
        /* libuv closes the pending connection itself on EMFILE (its spare descriptor), so
         * the loop neither spins nor dies; we only keep the log readable. */
        warn_accept(l, uv_strerror(status));
        return;
    }
    accept_client(l, server);
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
    socklen_t len =
        ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
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
    char backend[4096]; /* a long list is cut: the rest is in the configuration */
    size_t used = 0;
    backend[0] = 0;
    for (int i = 0; i < fe->n_backends && used < sizeof backend; i++) {
        const gw_hostport *a = &fe->backends[i]->conf->address;
        bool b6 = strchr(a->host, ':') != NULL;
        int n = snprintf(backend + used, sizeof backend - used, "%s%s%s%s:%u", i ? "," : "",
                         b6 ? "[" : "", a->host, b6 ? "]" : "", a->port);
        if (n > 0)
            used += (size_t)n;
    }
    const char *lh = fe->conf->listen.host;
    bool l6 = strchr(lh, ':') != NULL;
    GW_LOG_INFO(0, "event=%s frontend=%s mode=%s addr=%s%s%s:%u backend=%s%s%s", event,
                fe->conf->name, mode_name(fe->conf->mode), l6 ? "[" : "", lh, l6 ? "]" : "",
                fe->conf->listen.port, backend, fe->n_backends > 1 ? " balance=" : "",
                fe->n_backends > 1 ? gw_balance_name(fe->conf->balance) : "");
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
    size_t n = (size_t)(g->n_frontends ? g->n_frontends : 1);
    gw_listener **next = calloc(n, sizeof *next);
    bool *fresh = calloc(n, sizeof *fresh);
    if (!next || !fresh) {
        free(next);
        free(fresh);
        snprintf(err, cap, "out of memory");
        return -1;
    }
    for (int i = 0; i < g->n_frontends; i++) {
        if (g->frontends[i].vh_listen != &g->frontends[i])
            continue; /* virtual hosts: accepted by the listener of their address */
        next[i] = find_listener(srv, &g->frontends[i].conf->listen);
        if (!next[i]) {
            next[i] = open_listener(srv, &g->frontends[i], err, cap);
            fresh[i] = true;
            if (!next[i]) {
                for (int j = 0; j < i; j++)
                    if (fresh[j])
                        close_listener(next[j]);
                free(next);
                free(fresh);
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
    int kept_n = 0;
    for (int i = 0; i < g->n_frontends; i++) {
        long li = g->frontends[i].vh_listen - g->frontends; /* its address's listener */
        log_frontend(&g->frontends[i], fresh[li] ? "listening" : "listening_kept");
        if (!next[i])
            continue;
        next[i]->fe = &g->frontends[i];
        next[kept_n++] = next[i]; /* compacted: one listener per address */
    }
    free(srv->listeners);
    srv->listeners = next;
    srv->n_listeners = kept_n;
    free(fresh);
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
        gw_metric_fd_limit();
    if (errno == EMFILE || errno == ENFILE)
        GW_LOG_WARN(0,
                    "event=descriptor_limit sessions=%d note=\"new connections are closed "
                    "at accept until descriptors are free\"",
                    srv->sessions);
}

int gw_server_start(gw_server *srv, uv_loop_t *loop, const gw_config *cfg, char *err, size_t cap)
{
    srv->loop = loop;
    srv->gen = gw_generation_new(cfg, srv->shared->health, srv->shared->live, err, cap);
    if (!srv->gen)
        return -1;
    uv_timer_init(loop, &srv->fd_probe);
    srv->fd_probe.data = srv;
    srv->fd_probe_started = true;
    uv_timer_start(&srv->fd_probe, on_fd_probe, 1000, 1000);
    uv_unref((uv_handle_t *)&srv->fd_probe);
    return switch_listeners(srv, srv->gen, err, cap);
}

int gw_server_reload(gw_server *srv, const gw_config *cfg, char *err, size_t cap)
{
    gw_generation *g = gw_generation_new(cfg, srv->shared->health, srv->shared->live, err, cap);
    if (!g)
        return -1;
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
    free(srv->listeners);
    srv->listeners = NULL;
    srv->n_listeners = 0;
}
