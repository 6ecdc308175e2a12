/* pasv_shared_port (shared_port.h). Three parts:
 *   the registry: every session waiting on a shared port (one process-wide list, one lock);
 *   the acceptors: each worker listens on each shared port (SO_REUSEPORT with several
 *     workers), reads a TLS ClientHello when that is needed to choose, and claims one waiter;
 *   the hand-off: the connection (a duplicate of its descriptor and the bytes already read)
 *     goes to the waiter's callback on the waiter's loop, directly or as a message to that
 *     loop's mailbox (mailbox.h). What the waiter does with it is not this file's concern.
 * SECURITY: a connection is handed to a session only when the choice is unambiguous: the
 * route its ClientHello offers (a ticket or session ID issued to that session's control
 * connection) from the session's own client address, or the client address alone when
 * exactly one session from it waits and that session may be matched by address. A waiter
 * is claimed once, under the lock, so no two connections can reach one session and no
 * connection reaches two. Everything else is closed and logged.
 * Behind a load balancer (proxy_protocol_data on the frontends of the port): the connection
 * must come from proxy_protocol_from and start with a PROXY header; its source is the client
 * address for the match and for the session's passive source check. */
#include "shared_port.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "conn.h"
#include "inherit.h"
#include "log.h"
#include "mailbox.h"
#include "proxy_proto.h"
#include "siblings.h"
#include "tls.h"
#include "tls_hello.h"

#define HELLO_MAX (20 * 1024) /* a ClientHello larger than this is refused */
#define HELLO_TIMEOUT_MS                                                                           \
    10000                /* a connection has this long to send its ClientHello (and its            \
                            PROXY header before it) */
#define PENDING_MAX 1024 /* per worker: connections still sending their ClientHello */

/* ---- the registry ---- */

typedef struct waiter {
    struct waiter *next;
    uint64_t id, sid;
    uint16_t port;
    gw_addr client;
    bool by_ticket, unproven, claimed;
    uint8_t route[GW_ROUTE_LEN];
    uv_loop_t *loop;
    gw_shport_conn_fn fn; /* NULL once the session cancelled while a connection was on its way */
    void *arg;
} waiter;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static waiter *reg;
static uint64_t reg_next_id;
static gw_shport_stats stats;

const gw_shport_stats *gw_shport_stats_get(void)
{
    return &stats;
}

void gw_shport_count_fallback(bool refused)
{
    if (refused)
        stats.refused++;
    else
        stats.fallback_range++;
}

static bool waits_for(const waiter *w, uint16_t port, const gw_addr *client)
{
    return !w->claimed && w->port == port && gw_addr_same_host(&w->client, client);
}

int gw_shport_wait(const gw_shport_want *want, const gw_addr *client, uv_loop_t *loop, uint64_t sid,
                   gw_shport_conn_fn fn, void *arg, uint64_t *id)
{
    waiter *n = calloc(1, sizeof *n);
    if (!n)
        return -1;
    n->port = want->port;
    n->client = *client;
    gw_addr_normalize(&n->client);
    n->by_ticket = want->by_ticket && want->tag;
    n->unproven = want->unproven;
    if (n->by_ticket)
        memcpy(n->route, want->tag, GW_ROUTE_LEN);
    n->loop = loop;
    n->sid = sid;
    n->fn = fn;
    n->arg = arg;
    pthread_mutex_lock(&reg_lock);
    /* Admission keeps matching unambiguous: per port and client address, either one waiter
     * matched by address and nothing else, or only waiters matched by their route. */
    int others = 0, by_addr = 0;
    for (waiter *w = reg; w; w = w->next)
        if (waits_for(w, n->port, &n->client)) {
            others++;
            by_addr += !w->by_ticket;
        }
    bool ok = n->by_ticket ? by_addr == 0 : others == 0;
    if (ok) {
        n->id = ++reg_next_id;
        n->next = reg;
        reg = n;
        *id = n->id;
    }
    pthread_mutex_unlock(&reg_lock);
    if (!ok) {
        free(n);
        return -1;
    }
    return 0;
}

/* Unlink waiter id (under the lock); NULL when absent. */
static waiter *unlink_waiter(uint64_t id)
{
    for (waiter **pp = &reg; *pp; pp = &(*pp)->next)
        if ((*pp)->id == id) {
            waiter *w = *pp;
            *pp = w->next;
            return w;
        }
    return NULL;
}

void gw_shport_cancel(uint64_t id)
{
    pthread_mutex_lock(&reg_lock);
    waiter *w = NULL;
    for (waiter *x = reg; x; x = x->next)
        if (x->id == id)
            w = x;
    if (w && w->claimed)
        w->fn = NULL; /* the hand-off in flight finds it gone and closes the connection */
    else if (w)
        free(unlink_waiter(id));
    pthread_mutex_unlock(&reg_lock);
}

/* What a claim hands on. */
typedef struct claim {
    uint64_t id, sid;
    uv_loop_t *loop;
    const char *rule;
} claim;

static void take(waiter *w, const char *rule, claim *out)
{
    w->claimed = true;
    out->id = w->id;
    out->sid = w->sid;
    out->loop = w->loop;
    out->rule = rule;
}

static void unclaim(uint64_t id)
{
    pthread_mutex_lock(&reg_lock);
    waiter *w = reg;
    while (w && w->id != id)
        w = w->next;
    if (w && w->fn)
        w->claimed = false; /* waiting again */
    else if (w)
        free(unlink_waiter(id)); /* cancelled meanwhile */
    pthread_mutex_unlock(&reg_lock);
}

enum verdict { V_UNMATCHED, V_MATCHED, V_NEED_HELLO };

/* At accept: the only waiter of this address matched by address takes it at once (a clear
 * download's client sends nothing); waiters matched by route need the ClientHello. */
static enum verdict classify(uint16_t port, const gw_addr *peer, claim *c, const char **why)
{
    enum verdict v = V_UNMATCHED;
    int n = 0;
    waiter *addr = NULL;
    pthread_mutex_lock(&reg_lock);
    for (waiter *w = reg; w; w = w->next)
        if (waits_for(w, port, peer)) {
            n++;
            if (!w->by_ticket)
                addr = w;
        }
    if (n == 0) {
        *why = "no session from this address waits";
    } else if (addr && n == 1) {
        take(addr, "address", c);
        v = V_MATCHED;
    } else if (addr) {
        *why = "ambiguous: several sessions from this address wait";
    } else {
        v = V_NEED_HELLO;
    }
    pthread_mutex_unlock(&reg_lock);
    return v;
}

/* After the ClientHello: the waiter whose route it offers; else the only waiter of this
 * address if it never proved that it resumes (it then fails the resumption check with its
 * clear 522 rather than a bare close). */
static bool match_hello(uint16_t port, const gw_addr *peer, uint8_t (*routes)[GW_ROUTE_LEN], int nr,
                        claim *c, const char **why)
{
    bool ok = false;
    int n = 0;
    waiter *only = NULL;
    pthread_mutex_lock(&reg_lock);
    for (waiter *w = reg; w && !ok; w = w->next) {
        if (!waits_for(w, port, peer))
            continue;
        n++;
        only = w;
        for (int i = 0; i < nr && !ok; i++)
            if (w->by_ticket && memcmp(w->route, routes[i], GW_ROUTE_LEN) == 0) {
                take(w, "resumption", c);
                ok = true;
            }
    }
    if (!ok && n == 1 && only->by_ticket && only->unproven && nr == 0) {
        take(only, "address", c);
        ok = true;
    }
    /* Sibling resumption (siblings.h): the session of another control connection of the
     * same user and address goes to the one waiting sibling; several: ambiguous. */
    int siblings = 0;
    waiter *sib = NULL;
    enum gw_sib_verdict refused = GW_SIB_UNKNOWN; /* what a refusal found, for the log */
    uint64_t now_s = uv_hrtime() / 1000000000u;
    for (waiter *w = reg; !ok && w; w = w->next) {
        if (!waits_for(w, port, peer) || !w->by_ticket)
            continue;
        for (int i = 0; i < nr; i++) {
            enum gw_sib_verdict v = gw_sib_check_route(w->route, routes[i], now_s);
            if (v == GW_SIB_SIBLING) {
                siblings++;
                sib = w;
                break;
            }
            if (v != GW_SIB_UNKNOWN)
                refused = v;
        }
    }
    if (!ok && siblings == 1) {
        take(sib, "sibling", c);
        ok = true;
    }
    if (!ok && n == 0)
        *why = "no session from this address waits";
    else if (!ok && nr == 0)
        *why = "the ClientHello resumes no session of this gateway";
    else if (!ok && siblings > 1)
        *why = "ambiguous: several sibling sessions from this address wait";
    else if (!ok)
        *why = refused != GW_SIB_UNKNOWN ? gw_sib_reason(refused)
                                         : "the ClientHello resumes no waiting session";
    pthread_mutex_unlock(&reg_lock);
    return ok;
}

/* ---- hand-off ---- */

typedef struct handoff {
    gw_mail mail; /* to the waiter's loop, when another worker accepted it */
    claim c;
    int fd;
    gw_addr peer; /* the client: the PROXY header's source when proxied */
    gw_addr via;  /* proxied: the balancer (the TCP peer) */
    bool proxied;
    uint16_t port;
    bool via_mailbox; /* accepted by another worker */
    size_t n;
    uint8_t buf[]; /* bytes already read (the ClientHello) */
} handoff;

/* via: the balancer when the connection came with a PROXY header (peer is then its source),
 * else NULL. */
static void unmatched(const gw_addr *peer, const gw_addr *via, uint16_t port, const char *why)
{
    stats.unmatched++;
    if (via) {
        char b[64];
        gw_addr_ip_str(via, b, sizeof b);
        GW_LOG_WARN(0, "event=shared_port_unmatched peer=%s via=%s port=%u reason=\"%s\"",
                    gw_addr_str(peer), b, port, why);
    } else {
        GW_LOG_WARN(0, "event=shared_port_unmatched peer=%s port=%u reason=\"%s\"",
                    gw_addr_str(peer), port, why);
    }
}

/* On the waiter's own loop. */
static void deliver(handoff *h)
{
    pthread_mutex_lock(&reg_lock);
    waiter *w = unlink_waiter(h->c.id);
    gw_shport_conn_fn fn = w ? w->fn : NULL;
    void *arg = w ? w->arg : NULL;
    pthread_mutex_unlock(&reg_lock);
    free(w);
    if (!fn) {
        unmatched(&h->peer, h->proxied ? &h->via : NULL, h->port, "its session stopped waiting");
        close(h->fd);
    } else {
        if (strcmp(h->c.rule, "address") != 0) /* resumption, sibling: by route */
            stats.matched_resumption++;
        else
            stats.matched_address++;
        char b[64] = "";
        if (h->proxied)
            gw_addr_ip_str(&h->via, b, sizeof b);
        GW_LOG_INFO(h->c.sid, "event=shared_port_match peer=%s port=%u rule=%s via=%s%s%s",
                    gw_addr_str(&h->peer), h->port, h->c.rule, h->via_mailbox ? "worker" : "direct",
                    h->proxied ? " balancer=" : "", b);
        fn(arg, h->fd, h->buf, h->n, h->proxied ? &h->peer : NULL);
    }
    free(h);
}

/* The waiter's worker has stopped (its loop ended before the hand-off could run there). */
static void undeliverable(handoff *h)
{
    pthread_mutex_lock(&reg_lock);
    free(unlink_waiter(h->c.id));
    pthread_mutex_unlock(&reg_lock);
    unmatched(&h->peer, h->proxied ? &h->via : NULL, h->port, "the session's worker has stopped");
    close(h->fd);
    free(h);
}

static void on_handoff_mail(gw_mail *m, bool cancelled)
{
    handoff *h = GW_MAIL_OWNER(m, handoff, mail);
    if (cancelled)
        undeliverable(h);
    else
        deliver(h);
}

static void post(handoff *h, uv_loop_t *here)
{
    h->via_mailbox = h->c.loop != here;
    if (!h->via_mailbox) {
        deliver(h);
        return;
    }
    gw_mailbox *mb = gw_mailbox_of(h->c.loop);
    if (!mb || gw_mailbox_post(mb, &h->mail, on_handoff_mail) != 0)
        undeliverable(h);
}

void gw_shport_free_all(void)
{
    pthread_mutex_lock(&reg_lock);
    while (reg) {
        waiter *w = reg;
        reg = w->next;
        free(w);
    }
    pthread_mutex_unlock(&reg_lock);
}

/* ---- acceptors ---- */

static __thread int pendings; /* this worker's connections still sending their ClientHello */

typedef struct pending {
    gw_conn *c;
    uv_timer_t timer;
    uv_loop_t *loop;
    uint16_t port;
    gw_addr peer; /* the client: the TCP peer, or the PROXY header's source once read */
    gw_addr via;  /* proxied: the balancer (the TCP peer) */
    int pp_mode;  /* > 0 while the PROXY header is still due (enum gw_pp_mode) */
    bool proxied; /* the header was read: peer is its source */
    uint8_t *buf;
    size_t n;
    int handles;
    bool finished, counted;
} pending;

static void pending_release(pending *p)
{
    if (--p->handles > 0)
        return;
    if (p->counted)
        pendings--;
    free(p->buf);
    free(p);
}

static void on_pending_timer_closed(uv_handle_t *h)
{
    pending_release(h->data);
}

/* The pending connection is done with: its handles close (the descriptor, if handed on,
 * lives on as a duplicate). */
static void pending_finish(pending *p)
{
    if (p->finished)
        return;
    p->finished = true;
    if (p->handles > 1) {
        uv_timer_stop(&p->timer);
        uv_close((uv_handle_t *)&p->timer, on_pending_timer_closed);
    }
    gw_conn_close(p->c);
}

static void pending_unmatched(pending *p, const char *why)
{
    unmatched(&p->peer, p->proxied ? &p->via : NULL, p->port, why);
    pending_finish(p);
}

/* Hand the connection (a duplicate of its descriptor and the bytes read) to its claim. */
static void hand_over(pending *p, const claim *c)
{
    int fd = gw_conn_fd(p->c);
    int dup = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    handoff *h = dup >= 0 ? malloc(sizeof *h + p->n) : NULL;
    if (!h) {
        if (dup >= 0)
            close(dup);
        unclaim(c->id);
        pending_unmatched(p, dup < 0 ? strerror(errno) : "out of memory");
        return;
    }
    h->c = *c;
    h->fd = dup;
    h->peer = p->peer;
    h->via = p->via;
    h->proxied = p->proxied;
    h->port = p->port;
    h->n = p->n;
    if (p->n)
        memcpy(h->buf, p->buf, p->n);
    pending_finish(p);
    post(h, p->loop);
}

/* ---- hitless upgrade: connections for the process before the upgrade ----
 * Once a new process holds the shared port, the old one's sessions still wait for data
 * connections there. What the new process cannot match goes to the old one (a SOCK_SEQPACKET
 * socket, one message per connection: the descriptor as SCM_RIGHTS, a fixed header, the
 * bytes read so far), which matches it to its own waiters as if it had accepted it. A
 * chain of upgrades forwards from each process to the one before it: never in a loop. */

#define FWD_MAGIC "FGS1"
#define FWD_HDR (4 + 1 + 2 + 2 * 19 + 4) /* magic, proxied, port, peer, via, n */

static _Atomic int forward_fd = -1; /* to the process before this one, -1: none (any more) */

void gw_shport_forward_to(int fd)
{
    atomic_store(&forward_fd, fd);
}

static uint8_t *put_addr(uint8_t *o, const gw_addr *a)
{
    o[0] = (uint8_t)a->family;
    memcpy(o + 1, a->ip, 16);
    o[17] = (uint8_t)(a->port >> 8);
    o[18] = (uint8_t)a->port;
    return o + 19;
}

static const uint8_t *get_addr(const uint8_t *i, gw_addr *a)
{
    memset(a, 0, sizeof *a);
    a->family = i[0];
    memcpy(a->ip, i + 1, 16);
    a->port = (uint16_t)(i[17] << 8 | i[18]);
    return i + 19;
}

/* Give p to the process before the upgrade: true when it took it (p is finished). */
static bool forward(pending *p)
{
    int to = atomic_load(&forward_fd);
    int fd = gw_conn_fd(p->c);
    if (to < 0 || fd < 0)
        return false;
    uint8_t hdr[FWD_HDR], *o = hdr;
    memcpy(o, FWD_MAGIC, 4);
    o[4] = p->proxied;
    o[5] = (uint8_t)(p->port >> 8);
    o[6] = (uint8_t)p->port;
    o = put_addr(o + 7, &p->peer);
    o = put_addr(o, &p->via);
    uint32_t n = (uint32_t)p->n;
    o[0] = (uint8_t)(n >> 24), o[1] = (uint8_t)(n >> 16), o[2] = (uint8_t)(n >> 8),
    o[3] = (uint8_t)n;
    struct iovec iov[2] = {{hdr, sizeof hdr}, {p->buf, p->n}};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {.msg_iov = iov,
                       .msg_iovlen = p->n ? 2 : 1,
                       .msg_control = u.buf,
                       .msg_controllen = sizeof u.buf};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    if (sendmsg(to, &m, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS &&
            atomic_compare_exchange_strong(&forward_fd, &to, -1)) {
            GW_LOG_INFO(0,
                        "event=shared_port_forward_over reason=\"%s\" note=\"the process "
                        "before the upgrade has gone\"",
                        strerror(errno));
            close(to);
        }
        return false;
    }
    GW_LOG_INFO(0,
                "event=shared_port_forwarded peer=%s port=%u note=\"to the process before "
                "the upgrade\"",
                gw_addr_str(&p->peer), p->port);
    pending_finish(p); /* the socket lives on in the message, then in that process */
    return true;
}

static void pending_read(pending *p);
static void pending_hello(pending *p);
static void pending_classify(pending *p);
static const gw_conn_ops pending_ops;

void gw_shport_adopt(uv_loop_t *loop, int fd, const uint8_t *msg, size_t len)
{
    gw_addr peer, via;
    uint32_t n = 0;
    bool ok = len >= FWD_HDR && memcmp(msg, FWD_MAGIC, 4) == 0;
    if (ok) {
        const uint8_t *i = get_addr(get_addr(msg + 7, &peer), &via);
        n = (uint32_t)i[0] << 24 | (uint32_t)i[1] << 16 | (uint32_t)i[2] << 8 | i[3];
        ok = n == len - FWD_HDR && n <= HELLO_MAX;
    }
    pending *p = ok ? calloc(1, sizeof *p) : NULL;
    gw_conn *c = p ? gw_conn_new(loop, &pending_ops, p, 0, "shared-port") : NULL;
    if (!c) {
        free(p);
        close(fd);
        stats.unmatched++;
        GW_LOG_WARN(0, "event=shared_port_unmatched reason=\"%s\"",
                    ok ? "out of memory" : "bad message from the new process");
        return;
    }
    p->c = c;
    p->loop = loop;
    p->port = (uint16_t)(msg[5] << 8 | msg[6]);
    p->handles = 1;
    p->proxied = msg[4] != 0;
    p->peer = peer;
    p->via = via;
    if (gw_conn_open(c, fd) != 0) {
        close(fd);
        pending_unmatched(p, "cannot open the handed-back connection");
        return;
    }
    GW_LOG_DEBUG(0, "event=shared_port_handed_back peer=%s port=%u bytes=%u", gw_addr_str(&p->peer),
                 p->port, (unsigned)n);
    if (n == 0) { /* as at accept: by address at once, or its ClientHello is awaited */
        pending_classify(p);
        return;
    }
    pending_read(p); /* the ClientHello read by the new process, then what follows */
    if (p->finished)
        return;
    memcpy(p->buf, msg + FWD_HDR, n);
    p->n = n;
    pending_hello(p);
}

static __thread uint8_t hello_scratch[HELLO_MAX];

/* The ClientHello in p->buf so far: wait for more, or match and hand over, or refuse. */
static void pending_hello(pending *p)
{
    gw_conn *c = p->c;
    gw_tls_hello h;
    enum gw_hello_status st =
        gw_tls_hello_parse(p->buf, p->n, hello_scratch, sizeof hello_scratch, &h);
    if (st == GW_HELLO_AGAIN)
        return;
    if (st != GW_HELLO_OK) {
        pending_unmatched(p, st == GW_HELLO_NOT_TLS
                                 ? "not a TLS ClientHello (only TLS sessions wait)"
                                 : "malformed ClientHello");
        return;
    }
    uint8_t routes[2 + GW_HELLO_MAX_PSK][GW_ROUTE_LEN];
    int nr = 0;
    nr += gw_route_from_identity(h.session_id.p, h.session_id.len, routes[nr], NULL);
    nr += gw_route_from_identity(h.ticket.p, h.ticket.len, routes[nr], NULL);
    for (int i = 0; i < h.n_psk; i++)
        nr += gw_route_from_identity(h.psk[i].p, h.psk[i].len, routes[nr], NULL);
    claim cl;
    const char *why = NULL;
    gw_conn_pause(c);
    if (match_hello(p->port, &p->peer, routes, nr, &cl, &why))
        hand_over(p, &cl);
    else if (!forward(p))
        pending_unmatched(p, why);
}

/* The connection starts as classify() says: matched by address at once, refused, or its
 * ClientHello is awaited (reading, with the time limit running). */
static void pending_classify(pending *p);

/* proxy_protocol_data: the PROXY header in p->buf so far (read no further than its end). */
static void pending_header(pending *p)
{
    gw_pp_header h;
    size_t need;
    const char *why;
    int rc = gw_pp_parse(p->buf, p->n, p->pp_mode, &h, &need, &why);
    if (rc == GW_PP_MORE) {
        p->c->read_max = need;
        return;
    }
    if (rc == GW_PP_BAD) {
        pending_unmatched(p, why);
        return;
    }
    if (h.local || h.unknown) {
        pending_unmatched(p, h.local ? "PROXY LOCAL header (no client behind it)"
                                     : "PROXY header names no client (UNKNOWN/UNSPEC)");
        return;
    }
    /* SECURITY: from here on the header's source is the client: the match and the
     * session's passive source check use it (the TCP peer is the balancer). */
    p->pp_mode = 0;
    p->proxied = true;
    p->peer = h.src;
    gw_addr_normalize(&p->peer);
    p->n = 0; /* exactly the header was read */
    p->c->read_max = 0;
    pending_classify(p);
}

static void on_pending_data(gw_conn *c, const char *buf, size_t n)
{
    pending *p = c->owner;
    if (p->finished)
        return;
    if (n > HELLO_MAX - p->n) {
        pending_unmatched(p, p->pp_mode ? "PROXY header too large" : "ClientHello too large");
        return;
    }
    memcpy(p->buf + p->n, buf, n);
    p->n += n;
    if (p->pp_mode)
        pending_header(p);
    else
        pending_hello(p);
}

static void on_pending_eof(gw_conn *c, bool clean)
{
    pending *p = c->owner;
    pending_unmatched(p, p->pp_mode ? "closed before its PROXY header"
                                    : "closed before its ClientHello");
}

static void on_pending_error(gw_conn *c, const char *why)
{
    pending_unmatched(c->owner, why);
}

static void on_pending_close(gw_conn *c)
{
    pending_release(c->owner);
}

static const gw_conn_ops pending_ops = {
    .on_data = on_pending_data,
    .on_eof = on_pending_eof,
    .on_error = on_pending_error,
    .on_close = on_pending_close,
};

static void on_pending_timeout(uv_timer_t *t)
{
    pending *p = t->data;
    pending_unmatched(p, p->pp_mode ? "no PROXY header in time" : "no ClientHello in time");
}

typedef struct shport_listener {
    uv_tcp_t tcp;
    uint16_t port;
    char host[GW_HOST_MAX];
    /* proxy_protocol_data of the port's frontends (config.c makes them agree): the
     * versions accepted (0: no header expected) and from where */
    int pp_mode;
    char pp_from[GW_PATH_MAX];
} shport_listener;

struct gw_shport_set {
    int n;
    shport_listener **v;
};

/* Accept and close at once without allocating (libuv stops watching a listener whose
 * connection was not accepted). */
static void drop_connection(uv_stream_t *server)
{
    uv_os_fd_t lfd;
    if (uv_fileno((uv_handle_t *)server, &lfd) == 0) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0)
            close(fd);
    }
}

/* Reading starts (the ClientHello or the PROXY header is due): the buffer, the time limit. */
static void pending_read(pending *p)
{
    if (pendings >= PENDING_MAX || !(p->buf = malloc(HELLO_MAX))) {
        pending_unmatched(p, p->pp_mode ? "too many connections waiting for their PROXY header"
                                        : "too many connections waiting for their ClientHello");
        return;
    }
    pendings++;
    p->counted = true;
    uv_timer_init(p->loop, &p->timer);
    p->timer.data = p;
    p->handles++;
    uv_timer_start(&p->timer, on_pending_timeout, HELLO_TIMEOUT_MS, 0);
    if (p->pp_mode)
        p->c->read_max = gw_pp_first_read(p->pp_mode);
    if (gw_conn_start_read(p->c) != 0)
        pending_unmatched(p, "cannot read");
}

static void pending_classify(pending *p)
{
    claim cl;
    const char *why = NULL;
    switch (classify(p->port, &p->peer, &cl, &why)) {
    case V_UNMATCHED:
        if (!forward(p))
            pending_unmatched(p, why);
        return;
    case V_MATCHED:
        if (p->buf)
            gw_conn_pause(p->c); /* reading already (after a PROXY header) */
        hand_over(p, &cl);
        return;
    case V_NEED_HELLO:
        break;
    }
    if (!p->buf)
        pending_read(p); /* else reading goes on: the ClientHello follows the header */
}

static void on_shport_connection(uv_stream_t *server, int status)
{
    shport_listener *l = server->data;
    if (status < 0)
        return;
    uv_loop_t *loop = server->loop;
    pending *p = calloc(1, sizeof *p);
    gw_conn *c = p ? gw_conn_new(loop, &pending_ops, p, 0, "shared-port") : NULL;
    if (!c) {
        free(p);
        drop_connection(server);
        GW_LOG_WARN(0, "event=shared_port_unmatched port=%u reason=\"out of memory\"", l->port);
        stats.unmatched++;
        return;
    }
    p->c = c;
    p->loop = loop;
    p->port = l->port;
    p->handles = 1;
    if (gw_conn_accept(c, server) != 0 || gw_conn_peer(c, &p->peer) != 0) {
        pending_finish(p);
        return;
    }
    gw_addr_normalize(&p->peer);
    if (!l->pp_mode) {
        pending_classify(p);
        return;
    }
    /* SECURITY: behind a balancer only the balancer may connect, and its PROXY header names
     * the client; nothing is matched before the header has been read. */
    if (!gw_cidr_list_match(l->pp_from, &p->peer)) {
        pending_unmatched(p, "not in proxy_protocol_from");
        return;
    }
    p->via = p->peer;
    p->pp_mode = l->pp_mode;
    pending_read(p);
}

static void on_shport_listener_closed(uv_handle_t *h)
{
    free(h->data);
}

static shport_listener *open_shport(uv_loop_t *loop, bool reuseport, const char *host,
                                    uint16_t port, char *err, size_t cap)
{
    gw_addr a;
    if (gw_resolve_host(host, port, &a) != 0) {
        snprintf(err, cap, "pasv_shared_port: cannot resolve %s", host);
        return NULL;
    }
    struct sockaddr_storage ss;
    gw_addr_to_sockaddr(&a, &ss);
    socklen_t len =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    /* A hitless upgrade hands the old process's socket over: never closed, never bound. */
    int fd = gw_inherit_take("sp", (struct sockaddr *)&ss, len);
    bool adopted = fd >= 0;
    if (!adopted)
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
        snprintf(err, cap, "pasv_shared_port %u: %s", port, strerror(errno));
        return NULL;
    }
    if (ss.ss_family == AF_INET6 && !adopted)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &(int){0}, sizeof(int));
    if (!adopted &&
        (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
         (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
         bind(fd, (struct sockaddr *)&ss, len) != 0)) {
        snprintf(err, cap, "cannot listen on pasv_shared_port %s: %s", gw_addr_str(&a),
                 strerror(errno));
        close(fd);
        return NULL;
    }
    shport_listener *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    uv_tcp_init(loop, &l->tcp);
    l->tcp.data = l;
    l->port = port;
    snprintf(l->host, sizeof l->host, "%s", host);
    int r = uv_tcp_open(&l->tcp, fd);
    if (r != 0)
        close(fd);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&l->tcp, 511, on_shport_connection);
    if (r != 0) {
        snprintf(err, cap, "cannot listen on pasv_shared_port %s: %s", gw_addr_str(&a),
                 uv_strerror(r));
        uv_close((uv_handle_t *)&l->tcp, on_shport_listener_closed);
        return NULL;
    }
    GW_LOG_INFO(0, "event=shared_port_listening addr=%s%s", gw_addr_str(&a),
                adopted ? " inherited=yes" : "");
    return l;
}

static shport_listener *find_shport(gw_shport_set *set, const char *host, uint16_t port)
{
    for (int i = 0; set && i < set->n; i++)
        if (set->v[i]->port == port && strcmp(set->v[i]->host, host) == 0)
            return set->v[i];
    return NULL;
}

int gw_shport_switch(gw_shport_set **setp, uv_loop_t *loop, bool reuseport, gw_generation *g,
                     bool close_others, char *err, size_t cap)
{
    gw_shport_set *old = *setp;
    size_t max = (size_t)g->n_frontends + 1 + (size_t)(old ? old->n : 0);
    shport_listener **next = calloc(max, sizeof *next);
    bool *fresh = calloc(max, sizeof *fresh);
    gw_shport_set *set = old ? old : calloc(1, sizeof *set);
    if (!next || !fresh || !set) {
        free(next);
        free(fresh);
        if (set != old)
            free(set);
        snprintf(err, cap, "out of memory");
        return -1;
    }
    int n = 0;
    for (int i = 0; i < g->n_frontends; i++) {
        const gw_frontend_conf *fc = g->frontends[i].conf;
        if (fc->pasv_shared_port <= 0)
            continue;
        bool dup = false;
        for (int j = 0; j < n; j++)
            dup |= next[j]->port == fc->pasv_shared_port;
        if (dup)
            continue;
        next[n] = find_shport(old, fc->listen.host, (uint16_t)fc->pasv_shared_port);
        if (!next[n]) {
            next[n] = open_shport(loop, reuseport, fc->listen.host, (uint16_t)fc->pasv_shared_port,
                                  err, cap);
            fresh[n] = true;
            if (!next[n]) {
                for (int j = 0; j < n; j++)
                    if (fresh[j])
                        uv_close((uv_handle_t *)&next[j]->tcp, on_shport_listener_closed);
                free(next);
                free(fresh);
                if (set != old)
                    free(set);
                return -1;
            }
        }
        /* What a connection must start with follows the configuration (on a reload too:
         * the header check applies from the switch on). */
        if (close_others || fresh[n]) {
            next[n]->pp_mode = fc->proxy_protocol_data ? fc->proxy_protocol : 0;
            snprintf(next[n]->pp_from, sizeof next[n]->pp_from, "%s", fc->proxy_protocol_from);
        }
        n++;
    }
    for (int i = 0; old && i < old->n; i++) {
        bool kept = false;
        for (int j = 0; j < n; j++)
            kept |= next[j] == old->v[i];
        if (kept)
            continue;
        if (!close_others) {
            next[n++] = old->v[i]; /* kept until the switch is final */
            continue;
        }
        if (!uv_is_closing((uv_handle_t *)&old->v[i]->tcp))
            uv_close((uv_handle_t *)&old->v[i]->tcp, on_shport_listener_closed);
    }
    free(fresh);
    free(set->v);
    set->v = next;
    set->n = n;
    *setp = set;
    return 0;
}

void gw_shport_close(gw_shport_set *set)
{
    for (int i = 0; set && i < set->n; i++)
        if (!uv_is_closing((uv_handle_t *)&set->v[i]->tcp))
            uv_close((uv_handle_t *)&set->v[i]->tcp, NULL);
}

void gw_shport_each_fd(gw_shport_set *set, void (*fn)(const char *kind, int fd, void *arg),
                       void *arg)
{
    uv_os_fd_t fd;
    for (int i = 0; set && i < set->n; i++)
        if (!uv_is_closing((uv_handle_t *)&set->v[i]->tcp) &&
            uv_fileno((uv_handle_t *)&set->v[i]->tcp, &fd) == 0)
            fn("sp", fd, arg);
}

void gw_shport_set_free(gw_shport_set *set)
{
    if (!set)
        return;
    for (int i = 0; i < set->n; i++)
        free(set->v[i]); /* closed with the loop's other handles */
    free(set->v);
    free(set);
}
