/* Backend health: see health.h. The table (state, counts, the frontends' view) is guarded by
 * one mutex, because every worker asks it; the probes (timers, lookups, connections) live on
 * the loop given to gw_health_start and are touched only by its thread, which is also the
 * thread that calls gw_health_configure and gw_health_stop (the main thread, worker 0). */
#include "health.h"

#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "bug.h"
#include "conn.h"
#include "ftp_addr.h"
#include "ftp_reply.h"
#include "ip_limit.h"
#include "log.h"
#include "proxy_proto.h"
#include "tls.h"

#define REASON_MAX 160

typedef struct hb hb;

/* One probe: lookup, connection, deadline. Freed when all three are over. */
typedef struct probe {
    hb *b;
    uv_getaddrinfo_t gai;
    uv_timer_t timer;
    gw_conn *c;
    gw_reply_parser rp;
    bool resolving, timer_open, finished;
} probe;

/* One backend, keyed by name and address. */
struct hb {
    gw_health *h;
    gw_backend_conf conf;
    /* Under h->lock: */
    bool up;
    int good, bad;
    bool confirm;           /* passive failures reached health_fall: a probe must confirm (now) */
    enum gw_be_admin admin; /* runtime state (admin endpoint) */
    char reason[REASON_MAX];
    /* Loop thread only: */
    SSL_CTX *ctx; /* tls = implicit: the probe's client context */
    uv_timer_t tick;
    bool tick_open;
    probe *p;     /* the running probe, if any */
    int handles;  /* open handles and probes: the struct is freed at 0 once dropped */
    bool dropped; /* no longer in the table */
    hb *next_dropped;
};

typedef struct hfe {
    char name[GW_NAME_MAX];
    int n;
    char (*backends)[GW_NAME_MAX]; /* n (heap) */
    bool unavailable;
} hfe;

/* Pre-login backend connections of one frontend (by name: they outlive reloads). */
typedef struct prelogin {
    struct prelogin *next;
    char name[GW_NAME_MAX];
    int count;
    gw_ip_table *per_ip;
} prelogin;

struct gw_health {
    pthread_mutex_t lock;
    int n;
    hb **b; /* n (heap) */
    int n_fe;
    hfe *fe;     /* n_fe (heap) */
    hb *dropped; /* waiting for their handles to close */
    prelogin *prelogin;
    uv_loop_t *loop;
    uv_async_t wake; /* any worker -> the probe loop: a backend's fall wants a probe now */
    bool wake_open;  /* under the lock: wake may be sent */
    bool stopping;
};

static void probe_begin(hb *b);
static void probe_cancel(probe *p);

gw_health *gw_health_new(void)
{
    gw_health *h = calloc(1, sizeof *h);
    if (h)
        pthread_mutex_init(&h->lock, NULL);
    return h;
}

/* ---------------------------------------------------------------------------------------
 * State (under the lock) */

static hb *find(gw_health *h, const char *name)
{
    for (int i = 0; i < h->n; i++)
        if (strcmp(h->b[i]->conf.name, name) == 0)
            return h->b[i];
    return NULL;
}

/* Log a frontend's transition when all of its backends went down, or one came back. */
static void check_frontends(gw_health *h)
{
    for (int i = 0; i < h->n_fe; i++) {
        hfe *f = &h->fe[i];
        bool all_down = f->n > 0;
        for (int j = 0; j < f->n && all_down; j++) {
            hb *b = find(h, f->backends[j]);
            if (!b || b->up)
                all_down = false;
        }
        if (all_down && !f->unavailable)
            GW_LOG_WARN(0, "event=frontend_unavailable frontend=%s backends=%d", f->name, f->n);
        else if (!all_down && f->unavailable)
            GW_LOG_INFO(0, "event=frontend_available frontend=%s", f->name);
        f->unavailable = all_down;
    }
}

/* No other backend of some frontend of b's is up: marking b down empties that frontend. */
static bool last_usable(gw_health *h, const hb *b)
{
    for (int i = 0; i < h->n_fe; i++) {
        const hfe *f = &h->fe[i];
        bool has = false, other = false;
        for (int j = 0; j < f->n; j++) {
            if (strcmp(f->backends[j], b->conf.name) == 0) {
                has = true;
                continue;
            }
            const hb *o = find(h, f->backends[j]);
            if (!o || o->up)
                other = true;
        }
        if (has && !other)
            return true;
    }
    return false;
}

/* A good or bad probe, or a session's connect (probe false: never counts toward rise). */
static void record(gw_health *h, hb *b, bool ok, bool probe_result, const char *reason)
{
    if (ok) {
        b->bad = 0;
        if (probe_result)
            b->confirm = false;
        if (!probe_result) /* a session's connect: only probes bring a backend back */
            return;
        if (b->up) {
            b->good = 0;
            return;
        }
        if (++b->good < b->conf.health_rise) {
            GW_LOG_DEBUG(0, "event=health_probe backend=%s result=good count=%d rise=%d",
                         b->conf.name, b->good, b->conf.health_rise);
            return;
        }
        b->up = true;
        b->good = 0;
        b->reason[0] = 0;
        GW_LOG_INFO(0, "event=backend_up backend=%s address=%s:%u", b->conf.name,
                    b->conf.address.host, b->conf.address.port);
        check_frontends(h);
        return;
    }
    b->good = 0;
    snprintf(b->reason, sizeof b->reason, "%s", reason ? reason : "failed");
    if (b->conf.health_interval == 0) /* no probes: never marked down */
        return;
    b->bad++;
    if (!b->up || b->bad < b->conf.health_fall) {
        GW_LOG_DEBUG(0, "event=health_probe backend=%s result=bad count=%d fall=%d reason=\"%s\"",
                     b->conf.name, b->bad, b->conf.health_fall, b->reason);
        return;
    }
    /* Failed session connects alone (a burst, a moment at max_clients) never empty a
     * frontend: a probe, started now, must confirm; until then sessions keep trying it. */
    if (!probe_result && last_usable(h, b)) {
        if (!b->confirm) {
            b->confirm = true;
            GW_LOG_INFO(0,
                        "event=backend_suspect backend=%s reason=\"%s\" count=%d "
                        "note=\"last usable backend: a probe decides\"",
                        b->conf.name, b->reason, b->bad);
            if (b->h->wake_open)
                uv_async_send(&b->h->wake);
        }
        return;
    }
    b->confirm = false;
    b->up = false;
    GW_LOG_WARN(0, "event=backend_down backend=%s address=%s:%u reason=\"%s\" count=%d",
                b->conf.name, b->conf.address.host, b->conf.address.port, b->reason, b->bad);
    check_frontends(h);
}

bool gw_health_is_up(gw_health *h, const char *backend)
{
    if (!h)
        return true;
    pthread_mutex_lock(&h->lock);
    hb *b = find(h, backend);
    bool up = !b || (b->up && b->admin == GW_BE_ADMIN_READY);
    pthread_mutex_unlock(&h->lock);
    return up;
}

bool gw_health_is_healthy(gw_health *h, const char *backend)
{
    if (!h)
        return true;
    pthread_mutex_lock(&h->lock);
    hb *b = find(h, backend);
    bool up = !b || b->up;
    pthread_mutex_unlock(&h->lock);
    return up;
}

int gw_health_set_admin(gw_health *h, const char *backend, enum gw_be_admin state,
                        enum gw_be_admin *previous)
{
    if (!h)
        return -1;
    pthread_mutex_lock(&h->lock);
    hb *b = find(h, backend);
    if (b) {
        *previous = b->admin;
        b->admin = state;
    }
    pthread_mutex_unlock(&h->lock);
    return b ? 0 : -1;
}

enum gw_be_admin gw_health_admin(gw_health *h, const char *backend)
{
    if (!h)
        return GW_BE_ADMIN_READY;
    pthread_mutex_lock(&h->lock);
    hb *b = find(h, backend);
    enum gw_be_admin s = b ? b->admin : GW_BE_ADMIN_READY;
    pthread_mutex_unlock(&h->lock);
    return s;
}

void gw_health_report(gw_health *h, const char *backend, bool ok, const char *reason)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    hb *b = find(h, backend);
    if (b)
        record(h, b, ok, false, reason);
    pthread_mutex_unlock(&h->lock);
}

/* ---------------------------------------------------------------------------------------
 * Pre-login backend connections (under the lock) */

static prelogin *prelogin_find(gw_health *h, const char *frontend, bool make)
{
    for (prelogin *p = h->prelogin; p; p = p->next)
        if (strcmp(p->name, frontend) == 0)
            return p;
    if (!make)
        return NULL;
    prelogin *p = calloc(1, sizeof *p);
    if (!p || !(p->per_ip = gw_ip_table_new())) {
        free(p);
        return NULL;
    }
    snprintf(p->name, sizeof p->name, "%s", frontend);
    p->next = h->prelogin;
    h->prelogin = p;
    return p;
}

int gw_health_prelogin_acquire(gw_health *h, const char *frontend, const gw_addr *peer, int per_ip,
                               int max, bool force)
{
    if (!h)
        return force ? -1 : 1;
    int r = -1;
    pthread_mutex_lock(&h->lock);
    prelogin *p = prelogin_find(h, frontend, true);
    if (p) {
        if (!force && max > 0 && p->count >= max) {
            r = 0;
        } else if (gw_ip_acquire(p->per_ip, peer, !force && per_ip > 0 ? per_ip : INT_MAX) != 0) {
            r = force || gw_ip_count(p->per_ip, peer) < per_ip ? -1 : 0; /* -1: no memory */
        } else {
            p->count++;
            r = 1;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return r;
}

void gw_health_prelogin_release(gw_health *h, const char *frontend, const gw_addr *peer)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    prelogin *p = prelogin_find(h, frontend, false);
    if (p && p->count > 0) {
        p->count--;
        gw_ip_release(p->per_ip, peer);
    }
    pthread_mutex_unlock(&h->lock);
}

int gw_health_prelogin_count(gw_health *h, const char *frontend)
{
    if (!h)
        return 0;
    pthread_mutex_lock(&h->lock);
    prelogin *p = prelogin_find(h, frontend, false);
    int n = p ? p->count : 0;
    pthread_mutex_unlock(&h->lock);
    return n;
}

/* ---------------------------------------------------------------------------------------
 * Handles (loop thread) */

static void hb_free(hb *b)
{
    gw_tls_ctx_free(b->ctx);
    free(b);
}

/* A handle or probe of b is gone: a dropped backend is freed with its last one. */
static void hb_release(hb *b)
{
    if (GW_BUG_ON(b->handles <= 0) || --b->handles > 0 || !b->dropped)
        return; /* (a release without a handle would free b twice) */
    gw_health *h = b->h;
    for (hb **pp = &h->dropped; *pp; pp = &(*pp)->next_dropped)
        if (*pp == b) {
            *pp = b->next_dropped;
            break;
        }
    hb_free(b);
}

static void on_tick_closed(uv_handle_t *t)
{
    hb *b = t->data;
    b->tick_open = false;
    hb_release(b);
}

/* Timers and the running probe closed (stop, drop, or a changed configuration). */
static void hb_quiesce(hb *b)
{
    if (b->p)
        probe_cancel(b->p);
    if (b->tick_open && !uv_is_closing((uv_handle_t *)&b->tick))
        uv_close((uv_handle_t *)&b->tick, on_tick_closed);
}

static void on_tick(uv_timer_t *t)
{
    hb *b = t->data;
    pthread_mutex_lock(&b->h->lock);
    bool maint = b->admin == GW_BE_ADMIN_MAINT; /* probes paused */
    pthread_mutex_unlock(&b->h->lock);
    if (maint)
        GW_LOG_DEBUG(0, "event=health_probe_skipped backend=%s state=maint", b->conf.name);
    if (!b->p && !b->h->stopping && !maint)
        probe_begin(b);
}

/* Probes every health_interval from now, the first after first_ms. */
static void hb_schedule(hb *b, uint64_t first_ms)
{
    gw_health *h = b->h;
    if (!h->loop || h->stopping || b->conf.health_interval <= 0)
        return;
    if (!b->tick_open) {
        if (uv_timer_init(h->loop, &b->tick) != 0)
            return;
        b->tick.data = b;
        b->tick_open = true;
        b->handles++;
    }
    uint64_t every = (uint64_t)b->conf.health_interval * 1000;
    uv_timer_start(&b->tick, on_tick, first_ms, every);
}

/* The client context of an implicit-TLS probe, as sessions build theirs. */
static void hb_make_ctx(hb *b)
{
    if (b->conf.tls != GW_BE_TLS_IMPLICIT || b->conf.health_interval <= 0)
        return;
    char e[256];
    b->ctx = gw_tls_client_ctx_new(&b->conf, e, sizeof e);
    if (!b->ctx)
        GW_LOG_WARN(0, "event=health_tls_failed backend=%s reason=\"%s\"", b->conf.name, e);
}

/* ---------------------------------------------------------------------------------------
 * A probe: resolve, connect, (TLS,) read the 220, QUIT. */

static void probe_maybe_free(probe *p)
{
    if (p->resolving || p->timer_open || p->c)
        return;
    hb *b = p->b;
    if (b->p == p)
        b->p = NULL;
    gw_reply_free(&p->rp);
    free(p);
    hb_release(b);
}

static void on_probe_timer_closed(uv_handle_t *t)
{
    probe *p = t->data;
    p->timer_open = false;
    probe_maybe_free(p);
}

/* The result (once), then everything closed. A cancelled probe records nothing. */
static void probe_end(probe *p, bool record_it, bool ok, const char *reason)
{
    if (!p->finished) {
        p->finished = true;
        if (record_it) {
            gw_health *h = p->b->h;
            pthread_mutex_lock(&h->lock);
            record(h, p->b, ok, true, reason);
            pthread_mutex_unlock(&h->lock);
        }
    }
    if (p->b->p == p)
        p->b->p = NULL; /* the next tick may start another */
    if (p->timer_open && !uv_is_closing((uv_handle_t *)&p->timer))
        uv_close((uv_handle_t *)&p->timer, on_probe_timer_closed);
    if (p->resolving)
        uv_cancel((uv_req_t *)&p->gai); /* else its callback comes and sees finished */
    if (p->c)
        gw_conn_close(p->c);
}

static void probe_cancel(probe *p)
{
    probe_end(p, false, false, NULL);
}

static void probe_fail(probe *p, const char *reason)
{
    probe_end(p, true, false, reason);
}

/* A 4xx greeting (max_clients reached) to a probe that was to confirm session failures:
 * the server is alive, only full, so nothing is confirmed and the count starts over.
 * Otherwise (a routine probe) it is a bad probe as before. true: handled. */
static bool probe_busy_answers(probe *p)
{
    gw_health *h = p->b->h;
    pthread_mutex_lock(&h->lock);
    bool confirming = p->b->confirm;
    if (confirming) {
        p->b->confirm = false;
        p->b->bad = 0;
        GW_LOG_INFO(0, "event=backend_busy backend=%s code=%d note=\"alive: not marked down\"",
                    p->b->conf.name, p->rp.code);
    }
    pthread_mutex_unlock(&h->lock);
    if (confirming)
        probe_end(p, false, false, NULL);
    return confirming;
}

static void on_probe_timeout(uv_timer_t *t)
{
    probe *p = t->data;
    char why[64];
    snprintf(why, sizeof why, "timeout after %d s", p->b->conf.health_timeout);
    probe_fail(p, why);
}

static void on_probe_connect(gw_conn *c, int status)
{
    probe *p = c->owner;
    if (p->finished)
        return;
    if (status != 0) {
        char why[REASON_MAX];
        if (status == UV_ECONNREFUSED)
            snprintf(why, sizeof why, "connect refused");
        else
            snprintf(why, sizeof why, "connect failed: %s", uv_strerror(status));
        probe_fail(p, why);
        return;
    }
    hb *b = p->b;
    if (b->conf.proxy_protocol) { /* a backend that expects a header gets one naming no client */
        uint8_t hdr[GW_PP_BUILD_MAX];
        size_t n = gw_pp_build_local(b->conf.proxy_protocol, hdr, sizeof hdr);
        gw_conn_write(c, hdr, n);
    }
    if (b->conf.tls == GW_BE_TLS_IMPLICIT) {
        if (!b->ctx) {
            probe_fail(p, "no TLS context");
            return;
        }
        const char *host = b->conf.sni[0] ? b->conf.sni : b->conf.address.host;
        if (gw_conn_attach_tls(c, gw_tls_new_client(b->ctx, GW_TLS_CLIENT_CONTROL, host,
                                                    b->conf.tls_verify, NULL)) != 0)
            probe_fail(p, "out of memory");
        return;
    }
    if (gw_conn_start_read(c) != 0)
        probe_fail(p, "cannot read");
}

static void on_probe_data(gw_conn *c, const char *buf, size_t n)
{
    probe *p = c->owner;
    size_t used;
    while (n > 0 && !p->finished) {
        int r = gw_reply_feed(&p->rp, (const uint8_t *)buf, n, &used);
        buf += used;
        n -= used;
        if (r == GW_REPLY_AGAIN)
            return;
        if (r != GW_REPLY_LINE) {
            probe_fail(p, r == GW_REPLY_TOOLONG ? "greeting line too long" : "invalid greeting");
            return;
        }
        if (!p->rp.last)
            continue;
        if (p->rp.code >= 100 && p->rp.code < 200) /* 120: ready in a while; 220 follows */
            continue;
        if (p->rp.code != 220) {
            char why[32];
            snprintf(why, sizeof why, "greeted %d", p->rp.code);
            if (p->rp.code >= 400 && p->rp.code < 500 && probe_busy_answers(p))
                return;
            probe_fail(p, why);
            return;
        }
        /* Up: record it now, then say goodbye politely and close once it is out. */
        p->finished = true;
        gw_health *h = p->b->h;
        pthread_mutex_lock(&h->lock);
        record(h, p->b, true, true, NULL);
        pthread_mutex_unlock(&h->lock);
        gw_conn_write_str(c, "QUIT\r\n");
        gw_conn_pause(c);
        gw_conn_shutdown(c);
        return;
    }
}

static void on_probe_eof(gw_conn *c, bool clean)
{
    probe *p = c->owner;
    if (p->finished) {
        probe_end(p, false, false, NULL);
        return;
    }
    probe_fail(p, "closed before greeting");
}

static void on_probe_error(gw_conn *c, const char *why)
{
    probe *p = c->owner;
    if (p->finished) {
        probe_end(p, false, false, NULL);
        return;
    }
    char text[REASON_MAX];
    if (c->tls && !gw_tls_handshake_done(c->tls))
        snprintf(text, sizeof text, "TLS handshake failed: %s", why);
    else
        snprintf(text, sizeof text, "%s", why);
    for (char *q = text; *q; q++)
        if (*q == '"')
            *q = '\'';
    probe_fail(p, text);
}

static void on_probe_shutdown(gw_conn *c, int status)
{
    probe_end(c->owner, false, false, NULL);
}

static void on_probe_close(gw_conn *c)
{
    probe *p = c->owner;
    p->c = NULL;
    probe_maybe_free(p);
}

static const gw_conn_ops probe_ops = {
    .on_connect = on_probe_connect,
    .on_data = on_probe_data,
    .on_eof = on_probe_eof,
    .on_error = on_probe_error,
    .on_shutdown = on_probe_shutdown,
    .on_close = on_probe_close,
};

static void probe_connect(probe *p, const gw_addr *to)
{
    p->c = gw_conn_new(p->b->h->loop, &probe_ops, p, 0, "probe");
    if (!p->c) {
        probe_fail(p, "out of memory");
        return;
    }
    int r = gw_conn_connect(p->c, to);
    if (r != 0)
        on_probe_connect(p->c, r);
}

static void on_probe_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    probe *p = req->data;
    p->resolving = false;
    gw_addr to = {0};
    if (status == 0 && res) {
        const struct addrinfo *pick = res;
        for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
            if (ai->ai_family == AF_INET) { /* as sessions pick: IPv4 first */
                pick = ai;
                break;
            }
        gw_addr_from_sockaddr(&to, pick->ai_addr);
        to.port = p->b->conf.address.port;
    }
    uv_freeaddrinfo(res);
    if (!p->finished) {
        if (to.family)
            probe_connect(p, &to);
        else
            probe_fail(p, "cannot resolve the address");
    }
    probe_maybe_free(p);
}

static void probe_begin(hb *b)
{
    gw_health *h = b->h;
    probe *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->b = b;
    gw_reply_init(&p->rp);
    if (uv_timer_init(h->loop, &p->timer) != 0) {
        free(p);
        return;
    }
    b->handles++;
    b->p = p;
    p->timer.data = p;
    p->timer_open = true;
    uv_timer_start(&p->timer, on_probe_timeout, (uint64_t)b->conf.health_timeout * 1000, 0);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    p->gai.data = p;
    p->resolving = true;
    int r = uv_getaddrinfo(h->loop, &p->gai, on_probe_resolved, b->conf.address.host, NULL, &hints);
    if (r != 0) {
        p->resolving = false;
        probe_fail(p, "cannot resolve the address");
    }
}

/* ---------------------------------------------------------------------------------------
 * Configuration, start, stop */

static bool same_key(const gw_backend_conf *a, const gw_backend_conf *b)
{
    return strcmp(a->name, b->name) == 0 && strcmp(a->address.host, b->address.host) == 0 &&
           a->address.port == b->address.port;
}

/* Out of the table (the lock is held): freed now, or once its handles have closed. */
static void hb_drop(gw_health *h, hb *b)
{
    b->dropped = true;
    hb_quiesce(b);
    if (b->handles == 0) {
        hb_free(b);
        return;
    }
    b->next_dropped = h->dropped;
    h->dropped = b;
}

/* What a probe depends on. Field by field: the strings' bytes past their NUL are not
 * defined (a memcmp of the structs read uninitialised memory under valgrind). */
static bool probe_conf_same(const gw_backend_conf *a, const gw_backend_conf *b)
{
    return strcmp(a->address.host, b->address.host) == 0 && a->address.port == b->address.port &&
           a->tls == b->tls && a->tls_verify == b->tls_verify &&
           strcmp(a->ca_file, b->ca_file) == 0 && strcmp(a->sni, b->sni) == 0 &&
           a->min_version == b->min_version && a->max_version == b->max_version &&
           strcmp(a->ciphers, b->ciphers) == 0 && a->health_interval == b->health_interval &&
           a->health_timeout == b->health_timeout && a->health_rise == b->health_rise &&
           a->health_fall == b->health_fall;
}

int gw_health_configure(gw_health *h, const gw_config *cfg)
{
    size_t nb = (size_t)cfg->n_backends + 1, nf = (size_t)cfg->n_frontends + 1;
    hb **next = calloc(nb, sizeof *next), **old = NULL;
    bool *fresh = calloc(nb, sizeof *fresh);
    hfe *fe = calloc(nf, sizeof *fe);
    bool locked = false;
    if (!next || !fresh || !fe)
        goto fail;
    for (int i = 0; i < cfg->n_frontends; i++) {
        fe[i].backends = calloc((size_t)cfg->frontends[i].n_backends + 1, GW_NAME_MAX);
        if (!fe[i].backends)
            goto fail;
    }
    pthread_mutex_lock(&h->lock);
    locked = true;
    int n_old = h->n;
    old = malloc(((size_t)n_old + 1) * sizeof *old); /* taken ones become NULL */
    if (!old)
        goto fail;
    if (n_old)
        memcpy(old, h->b, (size_t)n_old * sizeof *old);
    for (int i = 0; i < cfg->n_backends; i++) {
        const gw_backend_conf *bc = &cfg->backends[i];
        for (int j = 0; j < n_old; j++)
            if (old[j] && same_key(&old[j]->conf, bc)) {
                next[i] = old[j];
                old[j] = NULL;
                break;
            }
        if (!next[i]) {
            next[i] = calloc(1, sizeof *next[i]);
            if (!next[i])
                goto fail;
            fresh[i] = true;
            next[i]->h = h;
            next[i]->up = true;
            /* Same name, new address: the operator's runtime state stays. */
            for (int j = 0; j < n_old; j++)
                if (strcmp(h->b[j]->conf.name, bc->name) == 0)
                    next[i]->admin = h->b[j]->admin;
        }
    }
    for (int j = 0; j < n_old; j++)
        if (old[j])
            hb_drop(h, old[j]);
    free(old);
    for (int i = 0; i < cfg->n_backends; i++) {
        hb *b = next[i];
        bool changed = fresh[i] || !probe_conf_same(&b->conf, &cfg->backends[i]);
        b->conf = cfg->backends[i];
        if (b->conf.health_interval == 0 && !b->up) {
            b->up = true; /* no probes: never down */
            GW_LOG_INFO(0, "event=backend_up backend=%s note=\"health_interval = 0\"",
                        b->conf.name);
        }
        if (!changed)
            continue;
        /* New settings: a running probe is cancelled and the timer restarted. */
        b->good = b->bad = 0;
        b->confirm = false;
        if (b->p)
            probe_cancel(b->p);
        gw_tls_ctx_free(b->ctx);
        b->ctx = NULL;
        hb_make_ctx(b);
        if (b->conf.health_interval > 0)
            hb_schedule(b, fresh[i] ? 0 : (uint64_t)b->conf.health_interval * 1000);
        else if (b->tick_open)
            uv_timer_stop(&b->tick);
    }
    h->n = cfg->n_backends;
    free(h->b);
    h->b = next;
    free(fresh);
    /* Frontends keep their "unavailable" flag by name, so a reload logs no transition
     * that did not happen. */
    for (int i = 0; i < cfg->n_frontends; i++) {
        const gw_frontend_conf *fc = &cfg->frontends[i];
        snprintf(fe[i].name, sizeof fe[i].name, "%s", fc->name);
        fe[i].n = fc->n_backends;
        for (int j = 0; j < fc->n_backends; j++)
            snprintf(fe[i].backends[j], GW_NAME_MAX, "%s", cfg->backends[fc->backend_list[j]].name);
        for (int k = 0; k < h->n_fe; k++)
            if (strcmp(h->fe[k].name, fc->name) == 0)
                fe[i].unavailable = h->fe[k].unavailable;
    }
    for (int k = 0; k < h->n_fe; k++)
        free(h->fe[k].backends);
    free(h->fe);
    h->n_fe = cfg->n_frontends;
    h->fe = fe;
    check_frontends(h);
    pthread_mutex_unlock(&h->lock);
    return 0;

fail: /* out of memory: nothing changed; what was taken over from old is still in h->b */
    if (locked)
        pthread_mutex_unlock(&h->lock);
    for (int k = 0; next && fresh && k < cfg->n_backends; k++)
        if (fresh[k])
            free(next[k]);
    for (int i = 0; fe && i < cfg->n_frontends; i++)
        free(fe[i].backends);
    free(old);
    free(fe);
    free(next);
    free(fresh);
    return -1;
}

/* A backend's passive failures want a probe at once (record(): the last usable one). */
static void on_wake(uv_async_t *a)
{
    gw_health *h = a->data;
    if (h->stopping)
        return;
    for (int i = 0; i < h->n; i++) { /* h->b changes only on this thread */
        hb *b = h->b[i];
        pthread_mutex_lock(&h->lock);
        bool want = b->confirm;
        pthread_mutex_unlock(&h->lock);
        if (want && !b->p)
            probe_begin(b);
    }
}

int gw_health_start(gw_health *h, uv_loop_t *loop)
{
    h->loop = loop;
    if (uv_async_init(loop, &h->wake, on_wake) == 0) {
        h->wake.data = h;
        pthread_mutex_lock(&h->lock);
        h->wake_open = true;
        pthread_mutex_unlock(&h->lock);
    }
    for (int i = 0; i < h->n; i++)
        hb_schedule(h->b[i], 0);
    return 0;
}

void gw_health_stop(gw_health *h)
{
    if (!h || h->stopping)
        return;
    h->stopping = true;
    pthread_mutex_lock(&h->lock);
    bool close_wake = h->wake_open;
    h->wake_open = false;
    pthread_mutex_unlock(&h->lock);
    if (close_wake)
        uv_close((uv_handle_t *)&h->wake, NULL);
    for (int i = 0; i < h->n; i++)
        hb_quiesce(h->b[i]);
}

void gw_health_free(gw_health *h)
{
    if (!h)
        return;
    for (int i = 0; i < h->n; i++)
        hb_free(h->b[i]);
    while (h->dropped) {
        hb *b = h->dropped;
        h->dropped = b->next_dropped;
        hb_free(b);
    }
    free(h->b);
    for (int k = 0; k < h->n_fe; k++)
        free(h->fe[k].backends);
    free(h->fe);
    while (h->prelogin) {
        prelogin *p = h->prelogin;
        h->prelogin = p->next;
        gw_ip_table_free(p->per_ip);
        free(p);
    }
    pthread_mutex_destroy(&h->lock);
    free(h);
}

/* ---------------------------------------------------------------------------------------
 * Hitless upgrade (upgrade.c): the backends down or drained, handed to the new process */

void gw_health_each_down(gw_health *h,
                         void (*fn)(const char *backend, bool down, enum gw_be_admin admin,
                                    void *arg),
                         void *arg)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    for (int i = 0; i < h->n; i++)
        if (!h->b[i]->up || h->b[i]->admin != GW_BE_ADMIN_READY)
            fn(h->b[i]->conf.name, !h->b[i]->up, h->b[i]->admin, arg);
    pthread_mutex_unlock(&h->lock);
}

void gw_health_restore_down(gw_health *h, const char *backend)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    hb *b = find(h, backend);
    if (b && b->up && b->conf.health_interval > 0) { /* probes will bring it back */
        b->up = false;
        b->good = b->bad = 0;
        snprintf(b->reason, sizeof b->reason, "down before the upgrade");
        GW_LOG_INFO(0, "event=backend_down backend=%s address=%s:%u reason=\"%s\"", b->conf.name,
                    b->conf.address.host, b->conf.address.port, b->reason);
        check_frontends(h);
    }
    pthread_mutex_unlock(&h->lock);
}
