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

#include "bans.h"
#include "conn.h"
#include "ftp_codes.h"
#include "inherit.h"
#include "log.h"
#include "proxy_proto.h"
#include "metrics.h"
#include "server.h"
#include "session.h"
#include "shared_port.h"

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
    gw_addr peer; /* the client: the PROXY header's source when there is one */
    bool ip_counted;
    struct gw_sess_entry *next, *prev;
    /* Until a session serves it: the connection, and while a PROXY header is read (pp set)
     * the frontend it came to (its generation referenced), the real peer, and when. */
    gw_conn *c;
    gw_frontend *fe;
    gw_pp_reader *pp;
    uint64_t pp_started;
    gw_addr real_peer, local, reached; /* reached: the PROXY destination, else local */
    bool quiet;                        /* a balancer's health check (v2 LOCAL): no session lines */
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
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
    /* After a burst glibc keeps the freed heap; give it back when the gateway goes idle.
     * Not under ASan: glibc's own allocator is unused there, and the lazy set-up that
     * malloc_trim then does is not safe from two worker threads at once. */
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

static void pp_refuse(gw_sess_entry *e, const char *why);

static void on_unserved_eof(gw_conn *c, bool clean)
{
    gw_sess_entry *e = c->owner;
    if (e->pp && e->pp->n == 0) { /* a balancer's plain TCP check: not news */
        GW_LOG_DEBUG(e->id, "event=proxy_missing peer=%s reason=\"closed before a byte\"",
                     gw_addr_str(&e->real_peer));
        e->quiet = true;
    } else if (e->pp) {
        pp_refuse(e, "closed inside the PROXY header");
        return;
    }
    gw_conn_close(c);
}

static void pp_done(gw_sess_entry *e);

static void on_unserved_close(gw_conn *c)
{
    gw_sess_entry *e = c->owner;
    pp_done(e);
    if (!e->quiet)
        GW_LOG_INFO(e->id, "event=session_end");
    entry_end(e);
}

static void on_unserved_data(gw_conn *c, const char *buf, size_t n);

static const gw_conn_ops unserved_ops = {
    .on_data = on_unserved_data,
    .on_error = on_unserved_error,
    .on_eof = on_unserved_eof,
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

/* A banned address (bans.h): refused before anything else, like the limits above (421 in
 * clear, a bare close on implicit) and before any backend connection; behind a balancer,
 * once the PROXY header is read, on its source address. */
static bool refuse_banned(gw_sess_entry *e, gw_frontend *fe, gw_conn *c)
{
    if (!gw_bans_check(fe->cfg, &e->peer))
        return false;
    GW_LOG_INFO(e->id, "event=session_refused peer=%s reason=banned worker=%d",
                gw_addr_str(&e->peer), e->srv->worker);
    unserved_close(e, c, fe->conf->mode != GW_FE_IMPLICIT ? GW_R_BANNED : NULL, "banned");
    return true;
}

/* The client is known (its PROXY header read, when there is one): limits, then a session. */
static void admit(gw_sess_entry *e, gw_frontend *fe, gw_conn *c)
{
    gw_server *srv = e->srv;
    if (refuse_banned(e, fe, c) || refuse_over_limit(e, fe, c))
        return;
    if (e->real_peer.family) {
        char via[64];
        gw_addr_ip_str(&e->real_peer, via, sizeof via);
        GW_LOG_INFO(e->id, "event=session_start frontend=%s peer=%s via=%s worker=%d",
                    fe->conf->name, gw_addr_str(&e->peer), via, srv->worker);
    } else {
        GW_LOG_INFO(e->id, "event=session_start frontend=%s peer=%s worker=%d", fe->conf->name,
                    gw_addr_str(&e->peer), srv->worker);
    }
    e->s = gw_session_start(fe, srv->loop, e->id, c, &e->peer, &e->local, &e->reached, &entry_hooks,
                            e);
    if (!e->s) {
        GW_LOG_WARN(e->id, "event=accept_failed frontend=%s reason=\"out of memory\"",
                    fe->conf->name);
        unserved_close(e, c, NULL, "out of memory");
    }
}

/* ---- PROXY protocol (proxy_proto.h): the header is read before anything else ---- */

/* The header is read or given up: the reader and the generation reference go. */
static void pp_done(gw_sess_entry *e)
{
    if (!e->pp)
        return;
    free(e->pp);
    e->pp = NULL;
    e->srv->pp_waiting--;
    if (e->c)
        e->c->read_max = 0;
    gw_generation_unref(e->fe->gen);
}

static void pp_refuse(gw_sess_entry *e, const char *why)
{
    GW_LOG_WARN(e->id, "event=proxy_refused frontend=%s peer=%s reason=\"%s\"", e->fe->conf->name,
                gw_addr_str(&e->real_peer), why);
    pp_done(e);
    unserved_close(e, e->c, NULL, why);
}

static void pp_start(gw_sess_entry *e, gw_frontend *fe, gw_conn *c)
{
    e->real_peer = e->peer;
    e->fe = fe;
    if (!gw_cidr_list_match(fe->conf->proxy_protocol_from, &e->peer)) {
        GW_LOG_WARN(e->id, "event=proxy_refused frontend=%s peer=%s reason=\"%s\"", fe->conf->name,
                    gw_addr_str(&e->peer), "not in proxy_protocol_from");
        unserved_close(e, c, NULL, "PROXY header from an address not in proxy_protocol_from");
        return;
    }
    e->pp = malloc(sizeof *e->pp);
    if (!e->pp) {
        unserved_close(e, c, NULL, "out of memory");
        return;
    }
    e->pp->n = 0;
    gw_generation_ref(fe->gen);
    e->srv->pp_waiting++;
    e->pp_started = uv_now(e->srv->loop);
    c->read_max = gw_pp_first_read(fe->conf->proxy_protocol);
    int r = gw_conn_start_read(c);
    if (r != 0)
        pp_refuse(e, uv_strerror(r));
}

static void on_unserved_data(gw_conn *c, const char *buf, size_t n)
{
    gw_sess_entry *e = c->owner;
    if (!e->pp || c->closing)
        return;
    gw_pp_header h;
    size_t need;
    const char *why;
    int rc = gw_pp_feed(e->pp, buf, n, e->fe->conf->proxy_protocol, &h, &need, &why);
    if (rc == GW_PP_MORE) {
        c->read_max = need;
        return;
    }
    if (rc == GW_PP_BAD) {
        pp_refuse(e, why);
        return;
    }
    gw_conn_pause(c); /* what follows is the session's (TLS ClientHello or commands) */
    gw_frontend *fe = e->fe;
    gw_generation_ref(fe->gen);
    pp_done(e);
    if (h.local) { /* a balancer's health check: closed quietly */
        GW_LOG_DEBUG(e->id, "event=proxy_local peer=%s", gw_addr_str(&e->real_peer));
        e->quiet = true;
        gw_conn_close(c);
    } else {
        if (!h.unknown) {
            e->peer = h.src;
            e->reached = h.dst;
            gw_addr_normalize(&e->peer);
            gw_addr_normalize(&e->reached);
        }
        GW_LOG_DEBUG(e->id, "event=proxy_header version=%d src=%s", h.version,
                     h.unknown ? "unknown" : gw_addr_str(&e->peer));
        admit(e, fe, c);
    }
    gw_generation_unref(fe->gen);
}

/* Headers that do not come within login_timeout (from the fd probe's tick). */
static void pp_sweep(gw_server *srv)
{
    uint64_t now = uv_now(srv->loop);
    for (gw_sess_entry *e = srv->session_list; e && srv->pp_waiting > 0; e = e->next)
        if (e->pp && now - e->pp_started >= (uint64_t)e->fe->cfg->login_timeout * 1000)
            pp_refuse(e, "no PROXY header within login_timeout");
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
        /* Most often a peer gone before the accept (a balancer's TCP check): not news. */
        GW_LOG_DEBUG(e->id, "event=accept_gone reason=\"accept failed\"");
        e->quiet = true;
        gw_conn_close(c);
        return;
    }
    gw_addr_normalize(&e->peer);
    e->c = c;
    e->local = e->reached = local;
    if (fe->conf->proxy_protocol) {
        pp_start(e, fe, c);
        return;
    }
    admit(e, fe, c);
}

void gw_server_close_sessions(gw_server *srv, const char *why)
{
    for (gw_sess_entry *e = srv->session_list; e; e = e->next)
        if (e->s)
            gw_session_close(e->s, why);
        else if (e->pp)
            pp_refuse(e, why);
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
    if (l->staged) { /* a reload not yet committed: libuv keeps it until commit_listeners */
        l->held = true;
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
        snprintf(err, cap, "cannot resolve %s", fc->listen.host);
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
    /* A hitless upgrade hands the old process's socket over: it never stops listening. */
    socklen_t len =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int fd = gw_inherit_take("fe", (struct sockaddr *)&ss, len), r;
    if (fd >= 0) {
        r = uv_tcp_open(&l->tcp, fd);
        if (r != 0)
            close(fd);
        else
            GW_LOG_INFO(0, "event=listener_inherited addr=%s worker=%d", gw_addr_str(&la),
                        srv->worker);
    } else {
        r = srv->reuseport ? bind_reuseport(&l->tcp, &ss)
                           : uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, 0);
    }
    if (r == 0)
        r = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
    if (r != 0) {
        snprintf(err, cap, "cannot listen on %s: %s", gw_addr_str(&la), uv_strerror(r));
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

/* Listeners for generation g, switched to only by commit_listeners: those whose address
 * stays are kept, new ones opened, staged (they hold connections until the commit, so no
 * client meets a generation that may still be dropped). On failure the new listeners are
 * closed and nothing else changes. */
static int stage_listeners(gw_server *srv, gw_generation *g, gw_cfg_where *where, char *err,
                           size_t cap)
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
                *where = (gw_cfg_where){"frontend", i, "listen"};
                for (int j = 0; j < i; j++)
                    if (fresh[j])
                        close_listener(next[j]);
                free(next);
                free(fresh);
                return -1;
            }
            next[i]->staged = true;
        }
    }
    srv->stage_next = next;
    srv->stage_fresh = fresh;
    return 0;
}

/* Point the listeners at generation g (staged by stage_listeners): close those it does not
 * name, let the new ones accept. Cannot fail. */
static void commit_listeners(gw_server *srv, gw_generation *g)
{
    gw_listener **next = srv->stage_next;
    bool *fresh = srv->stage_fresh;
    srv->stage_next = NULL;
    srv->stage_fresh = NULL;
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
    for (int i = 0; i < kept_n; i++) {
        gw_listener *l = next[i];
        if (!l->staged)
            continue;
        l->staged = false;
        if (l->held) { /* a client came while staged: serve it now */
            l->held = false;
            on_connection((uv_stream_t *)&l->tcp, 0);
        }
    }
}

static void abort_listeners(gw_server *srv, gw_generation *g)
{
    for (int i = 0; srv->stage_next && i < g->n_frontends; i++)
        if (srv->stage_fresh[i] && srv->stage_next[i])
            close_listener(srv->stage_next[i]); /* a held connection is closed with it */
    free(srv->stage_next);
    free(srv->stage_fresh);
    srv->stage_next = NULL;
    srv->stage_fresh = NULL;
}

/* At the descriptor limit libuv's accept loop closes new connections itself (with a spare
 * descriptor) and tells nobody. A cheap probe each second makes it visible in the log. */
static void on_fd_probe(uv_timer_t *t)
{
    gw_server *srv = t->data;
    if (srv->gen)
        gw_bans_tick(&srv->gen->cfg); /* ended bans are logged within a second */
    if (srv->pp_waiting > 0)
        pp_sweep(srv);
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
    gw_cfg_where where;
    char problem[1024];
    srv->loop = loop;
    srv->gen = gw_generation_new(cfg, srv->shared->health, srv->shared->live, &where, problem,
                                 sizeof problem);
    if (!srv->gen) {
        gw_cfg_where_format(cfg, &where, problem, err, cap);
        return -1;
    }
    uv_timer_init(loop, &srv->fd_probe);
    srv->fd_probe.data = srv;
    srv->fd_probe_started = true;
    uv_timer_start(&srv->fd_probe, on_fd_probe, 1000, 1000);
    uv_unref((uv_handle_t *)&srv->fd_probe);
    if (stage_listeners(srv, srv->gen, &where, problem, sizeof problem) != 0) {
        gw_cfg_where_format(cfg, &where, problem, err, cap);
        return -1;
    }
    commit_listeners(srv, srv->gen);
    return gw_shport_switch(&srv->shport, loop, srv->reuseport, srv->gen, true, err, cap);
}

int gw_server_reload_prepare(gw_server *srv, const gw_config *cfg, gw_cfg_where *where, char *err,
                             size_t cap)
{
    *where = (gw_cfg_where){NULL, 0, NULL};
    if (srv->staged) {
        snprintf(err, cap, "a reload is already prepared");
        return -1;
    }
    gw_generation *g =
        gw_generation_new(cfg, srv->shared->health, srv->shared->live, where, err, cap);
    if (!g)
        return -1;
    if (gw_shport_switch(&srv->shport, srv->loop, srv->reuseport, g, false, err, cap) != 0) {
        gw_generation_unref(g);
        return -1;
    }
    if (stage_listeners(srv, g, where, err, cap) != 0) {
        char e[64];
        /* Only the old generation's shared ports stay (nothing to open: cannot fail but
         * for memory). */
        (void)gw_shport_switch(&srv->shport, srv->loop, srv->reuseport, srv->gen, true, e,
                               sizeof e);
        gw_generation_unref(g);
        return -1;
    }
    srv->staged = g;
    return 0;
}

void gw_server_reload_commit(gw_server *srv)
{
    gw_generation *g = srv->staged;
    char e[64];
    if (!g)
        return;
    srv->staged = NULL;
    commit_listeners(srv, g);
    /* Only the ports the new generation names stay (nothing to open now: cannot fail). */
    (void)gw_shport_switch(&srv->shport, srv->loop, srv->reuseport, g, true, e, sizeof e);
    gw_generation *old = srv->gen;
    srv->gen = g;
    gw_generation_unref(old); /* freed when its last session ends */
}

void gw_server_reload_abort(gw_server *srv)
{
    gw_generation *g = srv->staged;
    char e[64];
    if (!g)
        return;
    srv->staged = NULL;
    abort_listeners(srv, g);
    (void)gw_shport_switch(&srv->shport, srv->loop, srv->reuseport, srv->gen, true, e, sizeof e);
    gw_generation_unref(g);
}

void gw_server_stop_listening(gw_server *srv)
{
    gw_server_reload_abort(srv); /* a prepared reload's listeners close too */
    if (srv->fd_probe_started && !uv_is_closing((uv_handle_t *)&srv->fd_probe))
        uv_close((uv_handle_t *)&srv->fd_probe, NULL);
    for (int i = 0; i < srv->n_listeners; i++)
        close_listener(srv->listeners[i]);
    srv->n_listeners = 0;
    /* A graceful stop keeps the shared passive port: live sessions still transfer. */
    if (!srv->stopping)
        gw_shport_close(srv->shport);
}

void gw_server_each_listen_fd(gw_server *srv, void (*fn)(const char *kind, int fd, void *arg),
                              void *arg)
{
    uv_os_fd_t fd;
    for (int i = 0; i < srv->n_listeners; i++)
        if (!uv_is_closing((uv_handle_t *)&srv->listeners[i]->tcp) &&
            uv_fileno((uv_handle_t *)&srv->listeners[i]->tcp, &fd) == 0)
            fn("fe", fd, arg);
    gw_shport_each_fd(srv->shport, fn, arg);
}

void gw_server_free(gw_server *srv)
{
    if (srv->staged)
        gw_generation_unref(srv->staged);
    srv->staged = NULL;
    free(srv->stage_next); /* staged listeners were closed with the loop's handles */
    free(srv->stage_fresh);
    srv->stage_next = NULL;
    srv->stage_fresh = NULL;
    if (srv->gen)
        gw_generation_unref(srv->gen);
    srv->gen = NULL;
    free(srv->listeners);
    srv->listeners = NULL;
    srv->n_listeners = 0;
    gw_shport_set_free(srv->shport);
    srv->shport = NULL;
}
