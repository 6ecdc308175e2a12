/* The HTTP admin endpoint: see admin.h.
 *
 * libmicrohttpd runs its own polling thread (MHD_USE_INTERNAL_POLLING_THREAD): the admin
 * side never shares a loop with FTP sessions, so a slow scrape or a slow admin client cannot
 * delay a transfer, and MHD keeps its own limits (connections, per-address connections,
 * request memory, idle timeout). Requests are answered one at a time on that thread.
 *
 * Threads: metrics are atomics (no lock). The configuration view is a copy under cfg_lock.
 * Live sessions belong to their worker's loop: the HTTP thread opens a request (under
 * snap_lock), posts a message to every worker's mailbox and waits on snap_cond (at most
 * SNAP_WAIT_MS); each worker copies its sessions' summaries (or the asked session's
 * timeline) under snap_lock and counts itself done (a worker whose loop ends first counts
 * itself done with nothing). A worker that is late finds its request withdrawn. */
#include "admin.h"

#ifndef GW_NO_ADMIN
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin_text.h"
#include "bans.h"
#include "data.h"
#include "inherit.h"
#include "log.h"
#include "metrics.h"
#include "siblings.h"
#include "session.h"
#include "shared_port.h"
#include "timeline.h"
#include "version.h"
#include "worker.h"

#define ADMIN_CONNECTIONS 32     /* at once, all clients */
#define ADMIN_PER_IP 8           /* at once, one client address */
#define ADMIN_TIMEOUT_S 5        /* a connection idle (or a request unfinished) this long ends */
#define ADMIN_REQUEST_MEM 16384  /* request line and headers: more gets 431/414 */
#define SNAP_WAIT_MS 2000        /* workers answering a /sessions request */
#define SNAP_MAX_SESSIONS 100000 /* listed at most */

static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t snap_cond;
static bool snap_cond_ready;
static struct {
    bool active;
    unsigned no;   /* of the request: a late answer to an earlier one is dropped */
    bool timeline; /* /sessions/ID: only that session's timeline */
    uint64_t id;
    int pending;
    gw_sess_summary *list;
    size_t n, cap;
    bool found;
    gw_timeline tl;
} req;

/* The configuration the page and /readyz describe. */
typedef struct fe_view {
    char name[GW_NAME_MAX], listen[GW_HOST_MAX + 8], mode[10], backends[GW_LIST_MAX];
    int n_backends;
    int *backend_idx;
} fe_view;
typedef struct be_view {
    char name[GW_NAME_MAX], address[GW_HOST_MAX + 8], tls[10];
} be_view;
static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;
static fe_view *fes;
static int n_fes;
static be_view *bes;
static int n_bes;

static struct MHD_Daemon *daemon_h;
static int request_marker, listing_marker; /* what a connection's request is (con_cls) */
static gw_hostport started_on;             /* admin_listen at start (port 0: off) */
static bool config_seen;
static gw_health *health;
static atomic_bool stopping;
static time_t started_at;

/* Some frontend has a pasv_shared_port (under cfg_lock). */
static bool any_shared_port;

/* ---- worker side ---- */

static void on_snapshot_session(gw_session *s, void *arg)
{
    (void)arg;
    if (req.timeline) {
        if (gw_session_get_id(s) == req.id) {
            gw_session_timeline(s, &req.tl);
            req.found = true;
        }
        return;
    }
    if (req.n >= SNAP_MAX_SESSIONS)
        return;
    if (req.n == req.cap) {
        size_t cap = req.cap ? req.cap * 2 : 64;
        gw_sess_summary *p = realloc(req.list, cap * sizeof *p);
        if (!p)
            return;
        req.list = p;
        req.cap = cap;
    }
    gw_session_summarize(s, &req.list[req.n++]);
}

/* A request to one worker. */
typedef struct snap_mail {
    gw_mail mail;
    int worker;
    unsigned no;
} snap_mail;

/* On the worker's loop (or, cancelled, as its loop ends). */
static void on_snapshot_mail(gw_mail *m, bool cancelled)
{
    snap_mail *sm = GW_MAIL_OWNER(m, snap_mail, mail);
    pthread_mutex_lock(&snap_lock);
    if (req.active && req.no == sm->no) {
        if (!cancelled) {
            size_t first = req.n;
            gw_server_each_session(gw_workers_server(sm->worker), on_snapshot_session, NULL);
            for (size_t i = first; i < req.n; i++)
                req.list[i].worker = sm->worker;
        }
        req.pending--;
        pthread_cond_broadcast(&snap_cond);
    }
    pthread_mutex_unlock(&snap_lock);
    free(sm);
}

/* ---- HTTP side: ask every worker, wait for them ---- */

/* Under snap_lock on return, with req filled (or withdrawn after the timeout). */
static void snapshot(bool timeline, uint64_t id)
{
    pthread_mutex_lock(&snap_lock);
    req.active = true;
    req.timeline = timeline;
    req.id = id;
    req.n = 0;
    req.found = false;
    req.pending = 0;
    req.no++;
    for (int i = 0; i < gw_workers_count(); i++) {
        snap_mail *m = malloc(sizeof *m);
        if (!m)
            continue; /* that worker's sessions are left out */
        m->worker = i;
        m->no = req.no;
        if (gw_workers_post(i, &m->mail, on_snapshot_mail) == 0)
            req.pending++;
        else
            free(m); /* its loop has ended */
    }
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += SNAP_WAIT_MS / 1000;
    while (req.pending > 0)
        if (pthread_cond_timedwait(&snap_cond, &snap_lock, &until) == ETIMEDOUT)
            break;
    req.active = false; /* a worker that did not answer in time is not waited for again */
}

/* The request's copies are freed at once: idle sessions should cost the same whether or not
 * the endpoint lists them every second. Releases snap_lock. */
static void snapshot_done(void)
{
    free(req.list);
    req.list = NULL;
    req.n = req.cap = 0;
    pthread_mutex_unlock(&snap_lock);
}

/* ---- configuration view ---- */

static void free_view(void)
{
    for (int i = 0; i < n_fes; i++)
        free(fes[i].backend_idx);
    free(fes);
    free(bes);
    fes = NULL;
    bes = NULL;
    n_fes = n_bes = 0;
}

static void hostport_str(const gw_hostport *hp, char *out, size_t cap)
{
    bool v6 = strchr(hp->host, ':') != NULL;
    snprintf(out, cap, "%s%s%s:%u", v6 ? "[" : "", hp->host, v6 ? "]" : "", hp->port);
}

void gw_admin_config(const gw_config *cfg)
{
    static const char *const modes[] = {"implicit", "explicit", "plain"};
    static const char *const be_tls[] = {"none", "explicit", "implicit"};
    fe_view *f = calloc((size_t)cfg->n_frontends, sizeof *f);
    be_view *b = calloc((size_t)cfg->n_backends, sizeof *b);
    if (!f || !b) {
        free(f);
        free(b);
        return; /* the old view stays */
    }
    for (int i = 0; i < cfg->n_frontends; i++) {
        const gw_frontend_conf *c = &cfg->frontends[i];
        snprintf(f[i].name, sizeof f[i].name, "%s", c->name);
        hostport_str(&c->listen, f[i].listen, sizeof f[i].listen);
        snprintf(f[i].mode, sizeof f[i].mode, "%s", modes[c->mode % 3]);
        snprintf(f[i].backends, sizeof f[i].backends, "%s", c->backend);
        f[i].backend_idx = malloc((size_t)(c->n_backends ? c->n_backends : 1) * sizeof(int));
        if (f[i].backend_idx) {
            memcpy(f[i].backend_idx, c->backend_list, (size_t)c->n_backends * sizeof(int));
            f[i].n_backends = c->n_backends;
        }
    }
    for (int i = 0; i < cfg->n_backends; i++) {
        const gw_backend_conf *c = &cfg->backends[i];
        snprintf(b[i].name, sizeof b[i].name, "%s", c->name);
        hostport_str(&c->address, b[i].address, sizeof b[i].address);
        snprintf(b[i].tls, sizeof b[i].tls, "%s", be_tls[c->tls % 3]);
    }
    if (config_seen && (cfg->admin_listen.port != started_on.port ||
                        strcmp(cfg->admin_listen.host, started_on.host) != 0))
        GW_LOG_WARN(0, "event=reload_note note=\"admin_listen is read at start: the admin "
                       "endpoint stays as it was until a restart\"");
    config_seen = true;
    bool shared = false;
    for (int i = 0; i < cfg->n_frontends; i++)
        shared = shared || cfg->frontends[i].pasv_shared_port > 0;
    pthread_mutex_lock(&cfg_lock);
    any_shared_port = shared;
    free_view();
    fes = f;
    n_fes = cfg->n_frontends;
    bes = b;
    n_bes = cfg->n_backends;
    pthread_mutex_unlock(&cfg_lock);
}

void gw_admin_set_stopping(void)
{
    atomic_store(&stopping, true);
}

/* ---- pages (under cfg_lock) ---- */

static void render_metrics(gw_sbuf *o)
{
    const char **fnames = calloc((size_t)n_fes + 1, sizeof *fnames);
    const char **bnames = calloc((size_t)n_bes + 1, sizeof *bnames);
    bool *up = calloc((size_t)n_bes + 1, sizeof *up);
    if (!fnames || !bnames || !up) {
        o->oom = true;
    } else {
        for (int i = 0; i < n_fes; i++)
            fnames[i] = fes[i].name;
        for (int i = 0; i < n_bes; i++) {
            bnames[i] = bes[i].name;
            up[i] = gw_health_is_up(health, bes[i].name);
        }
        gw_metrics_view v = {.n_frontends = n_fes,
                             .frontends = fnames,
                             .n_backends = n_bes,
                             .backends = bnames,
                             .backend_up = up,
                             .version = GW_VERSION,
                             .openssl = OpenSSL_version(OPENSSL_VERSION),
                             .libuv = uv_version_string(),
                             .bans_active = gw_bans_active(),
                             .data_reuse_exempt = gw_data_reuse_exempt_count(),
                             .data_sibling = gw_data_sibling_count(),
                             .sibling_bytes = gw_sib_bytes(),
                             .shared_port = any_shared_port};
        const gw_shport_stats *sp = gw_shport_stats_get();
        v.shport_resumption = atomic_load_explicit(&sp->matched_resumption, memory_order_relaxed);
        v.shport_address = atomic_load_explicit(&sp->matched_address, memory_order_relaxed);
        v.shport_unmatched = atomic_load_explicit(&sp->unmatched, memory_order_relaxed);
        v.shport_fallback = atomic_load_explicit(&sp->fallback_range, memory_order_relaxed);
        v.shport_refused = atomic_load_explicit(&sp->refused, memory_order_relaxed);
        gw_metrics_render(&gw_metrics_g, &v, o);
    }
    free(fnames);
    free(bnames);
    free(up);
}

/* 200 when not stopping and every frontend has a backend that is up; else the reasons. */
static bool render_ready(gw_sbuf *o)
{
    bool ok = true;
    if (atomic_load(&stopping)) {
        gw_sbuf_str(o, "not ready: stopping\n");
        return false;
    }
    for (int i = 0; i < n_fes; i++) {
        bool any = false;
        for (int j = 0; j < fes[i].n_backends && !any; j++) {
            int k = fes[i].backend_idx[j];
            any = k >= 0 && k < n_bes && gw_health_is_up(health, bes[k].name);
        }
        if (!any) {
            gw_sbuf_printf(o, "not ready: frontend %s has no healthy backend (%s)\n", fes[i].name,
                           fes[i].backends);
            ok = false;
        }
    }
    if (ok)
        gw_sbuf_printf(o, "ready: %d frontend(s) listening, each with a healthy backend\n", n_fes);
    return ok;
}

static void render_sessions_json(gw_sbuf *o)
{
    snapshot(false, 0);
    gw_sbuf_str(o, "[");
    for (size_t i = 0; i < req.n; i++) {
        if (i)
            gw_sbuf_str(o, ",\n");
        gw_sess_summary_json(&req.list[i], o);
    }
    gw_sbuf_str(o, "]\n");
    snapshot_done();
}

static bool render_timeline(gw_sbuf *o, uint64_t id)
{
    snapshot(true, id);
    bool found = req.found;
    if (found) {
        gw_tl_json(&req.tl, id, o);
        gw_sbuf_str(o, "\n");
    }
    snapshot_done();
    return found;
}

static void html_cell(gw_sbuf *o, const char *text)
{
    gw_sbuf_str(o, "<td>");
    gw_sbuf_html(o, text);
    gw_sbuf_str(o, "</td>");
}

static void html_num(gw_sbuf *o, unsigned long long v)
{
    gw_sbuf_printf(o, "<td class=n>%llu</td>", v);
}

#define M(field) atomic_load_explicit(&gw_metrics_g.field, memory_order_relaxed)

static void html_frontends(gw_sbuf *o)
{
    gw_sbuf_str(o, "<h2>Frontends</h2>\n<table><tr><th>name</th><th>listen</th><th>mode</th>"
                   "<th>backends</th><th>active</th><th>sessions</th><th>logins ok</th>"
                   "<th>logins failed</th></tr>\n");
    for (int i = 0; i < n_fes; i++) {
        gw_sbuf_str(o, "<tr>");
        html_cell(o, fes[i].name);
        html_cell(o, fes[i].listen);
        html_cell(o, fes[i].mode);
        html_cell(o, fes[i].backends);
        int k = -1;
        for (int j = 0; j < GW_M_SLOTS; j++)
            if (atomic_load(&gw_metrics_g.fe_names[j].used) &&
                strcmp(gw_metrics_g.fe_names[j].name, fes[i].name) == 0)
                k = j;
        const gw_m_frontend *m = k >= 0 ? &gw_metrics_g.fe[k] : NULL;
        html_num(o, m ? (unsigned long long)atomic_load(&m->sessions_active) : 0);
        html_num(o, m ? atomic_load(&m->sessions_total) : 0);
        html_num(o, m ? atomic_load(&m->logins_ok) : 0);
        html_num(o, m ? atomic_load(&m->logins_failed) : 0);
        gw_sbuf_str(o, "</tr>\n");
    }
    gw_sbuf_str(o, "</table>\n");
}

static void html_backends(gw_sbuf *o)
{
    gw_sbuf_str(o, "<h2>Backends</h2>\n<table><tr><th>name</th><th>address</th><th>tls</th>"
                   "<th>health</th><th>connects ok</th><th>connects failed</th></tr>\n");
    for (int i = 0; i < n_bes; i++) {
        bool up = gw_health_is_up(health, bes[i].name);
        gw_sbuf_printf(o, "<tr class=%s>", up ? "up" : "down");
        html_cell(o, bes[i].name);
        html_cell(o, bes[i].address);
        html_cell(o, bes[i].tls);
        html_cell(o, up ? "UP" : "DOWN");
        int k = -1;
        for (int j = 0; j < GW_M_SLOTS; j++)
            if (atomic_load(&gw_metrics_g.be_names[j].used) &&
                strcmp(gw_metrics_g.be_names[j].name, bes[i].name) == 0)
                k = j;
        html_num(o, k >= 0 ? atomic_load(&gw_metrics_g.be[k].connects_ok) : 0);
        html_num(o, k >= 0 ? atomic_load(&gw_metrics_g.be[k].connects_failed) : 0);
        gw_sbuf_str(o, "</tr>\n");
    }
    gw_sbuf_str(o, "</table>\n");
}

static void html_counters(gw_sbuf *o)
{
    static const char *const sides[GW_M_SIDES] = {"client", "backend", "data"};
    gw_sbuf_str(o, "<h2>Counters</h2>\n<table><tr><th>counter</th><th>value</th></tr>\n");
    struct {
        const char *name;
        unsigned long long v;
    } rows[] = {
        {"downloads ok", M(transfers[0][GW_M_XFER_OK])},
        {"downloads failed", M(transfers[0][GW_M_XFER_FAILED])},
        {"uploads ok", M(transfers[1][GW_M_XFER_OK])},
        {"uploads failed", M(transfers[1][GW_M_XFER_FAILED])},
        {"bytes downloaded", M(transfer_bytes[0])},
        {"bytes uploaded", M(transfer_bytes[1])},
        {"data connections refused: not resumed", M(refused[GW_M_REFUSED_NOT_RESUMED])},
        {"data connections refused: foreign address", M(refused[GW_M_REFUSED_FOREIGN_ADDRESS])},
        {"data connections refused: timeout", M(refused[GW_M_REFUSED_TIMEOUT])},
        {"bans", M(bans)},
        {"reloads ok", M(reloads_ok)},
        {"reloads failed", M(reloads_failed)},
        {"descriptor limit events", M(fd_limit_events)},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        gw_sbuf_str(o, "<tr>");
        html_cell(o, rows[i].name);
        html_num(o, rows[i].v);
        gw_sbuf_str(o, "</tr>\n");
    }
    for (int s = 0; s < GW_M_SIDES; s++) {
        unsigned long long ok = 0;
        for (int v = 1; v < GW_M_TLSV; v++)
            ok += M(tls[s][v]);
        char name[64];
        snprintf(name, sizeof name, "TLS handshakes (%s) ok", sides[s]);
        gw_sbuf_str(o, "<tr>");
        html_cell(o, name);
        html_num(o, ok);
        snprintf(name, sizeof name, "TLS handshakes (%s) failed", sides[s]);
        gw_sbuf_str(o, "</tr>\n<tr>");
        html_cell(o, name);
        html_num(o, M(tls[s][GW_M_TLS_NONE]));
        gw_sbuf_str(o, "</tr>\n");
    }
    gw_sbuf_str(o, "</table>\n");
}

static void html_sessions(gw_sbuf *o)
{
    snapshot(false, 0);
    gw_sbuf_printf(o,
                   "<h2>Live sessions (%zu)</h2>\n<table><tr><th>id</th><th>frontend</th>"
                   "<th>client</th><th>user</th><th>backend</th><th>state</th><th>tls</th>"
                   "<th>age s</th><th>idle s</th><th>transfer</th></tr>\n",
                   req.n);
    for (size_t i = 0; i < req.n; i++) {
        const gw_sess_summary *s = &req.list[i];
        gw_sbuf_printf(o, "<tr><td><a href=\"/sessions/%llu\">%llu</a></td>",
                       (unsigned long long)s->id, (unsigned long long)s->id);
        html_cell(o, s->frontend);
        html_cell(o, s->client);
        html_cell(o, s->user);
        html_cell(o, s->backend);
        html_cell(o, s->state);
        html_cell(o, s->tls);
        html_num(o, s->age_s);
        html_num(o, s->idle_s);
        gw_sbuf_str(o, "<td>");
        if (s->in_transfer) {
            gw_sbuf_html(o, s->verb);
            gw_sbuf_str(o, " ");
            gw_sbuf_html(o, s->file);
            gw_sbuf_printf(o, " (%llu bytes)", (unsigned long long)s->bytes);
        }
        gw_sbuf_str(o, "</td></tr>\n");
    }
    gw_sbuf_str(o, "</table>\n");
    snapshot_done();
}

static void render_html(gw_sbuf *o)
{
    gw_sbuf_str(o, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                   "<meta http-equiv=\"refresh\" content=\"5\"><title>ftpsgate status</title>"
                   "<style>body{font-family:sans-serif;font-size:13px}"
                   "table{border-collapse:collapse;margin-bottom:1em}"
                   "td,th{border:1px solid #999;padding:2px 6px}th{background:#ddd}"
                   ".n{text-align:right}.up{background:#cfc}.down{background:#fcc}</style>"
                   "</head><body>\n<h1>ftpsgate ");
    gw_sbuf_html(o, GW_VERSION);
    gw_sbuf_str(o, "</h1>\n<p>");
    gw_sbuf_html(o, OpenSSL_version(OPENSSL_VERSION));
    gw_sbuf_str(o, ", libuv ");
    gw_sbuf_html(o, uv_version_string());
    gw_sbuf_printf(o,
                   ", up %llu s, %s. <a href=\"/metrics\">metrics</a> "
                   "<a href=\"/sessions\">sessions (JSON)</a> <a href=\"/readyz\">readyz</a></p>\n",
                   (unsigned long long)(time(NULL) - started_at),
                   atomic_load(&stopping) ? "stopping" : "serving");
    html_frontends(o);
    html_backends(o);
    html_counters(o);
    pthread_mutex_unlock(&cfg_lock);
    html_sessions(o);
    gw_sbuf_str(o, "</body></html>\n");
}

/* ---- libmicrohttpd ---- */

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type,
                               gw_sbuf *body)
{
    if (body->oom) {
        gw_sbuf_free(body);
        gw_sbuf_str(body, "out of memory\n");
        status = MHD_HTTP_SERVICE_UNAVAILABLE;
        type = "text/plain; charset=utf-8";
    }
    if (!body->p)
        gw_sbuf_add(body, "", 0);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(body->len, body->p ? body->p : (char *)"",
                                        body->p ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        gw_sbuf_free(body);
        return MHD_NO;
    }
    body->p = NULL; /* MHD owns it */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    gw_sbuf body = {0};
    const char *text = "text/plain; charset=utf-8";
    bool first = *con_cls == NULL;
    *con_cls = &request_marker;
    if (first)
        atomic_fetch_add_explicit(&gw_metrics_g.admin_requests, 1, memory_order_relaxed);
    /* Refused at the headers (first call), before any body is read. */
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    bool head = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (!get && !head) {
        *upload_data_size = 0;
        gw_sbuf_str(&body, "only GET and HEAD\n");
        return respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, &body);
    }
    /* SECURITY: requests carry no body here; one is refused, not buffered. */
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (*upload_data_size != 0 || (cl && strcmp(cl, "0") != 0) ||
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        *upload_data_size = 0;
        gw_sbuf_str(&body, "a request body is not accepted\n");
        return respond(c, MHD_HTTP_CONTENT_TOO_LARGE, text, &body);
    }
    uint64_t id = 0;
    enum gw_admin_route route = gw_admin_route(url, &id);
    unsigned status = MHD_HTTP_OK;
    /* The session routes wait for the workers: never while holding cfg_lock, which worker 0
     * takes on reload. */
    bool locked = route != GW_ADMIN_SESSIONS && route != GW_ADMIN_SESSION;
    if (route == GW_ADMIN_SESSIONS || route == GW_ADMIN_ROOT)
        *con_cls = &listing_marker;
    if (locked)
        pthread_mutex_lock(&cfg_lock);
    switch (route) {
    case GW_ADMIN_METRICS:
        render_metrics(&body);
        text = "text/plain; version=0.0.4; charset=utf-8";
        break;
    case GW_ADMIN_HEALTHZ:
        gw_sbuf_str(&body, "ok\n");
        break;
    case GW_ADMIN_READYZ:
        if (!render_ready(&body))
            status = MHD_HTTP_SERVICE_UNAVAILABLE;
        break;
    case GW_ADMIN_SESSIONS:
        render_sessions_json(&body);
        text = "application/json";
        break;
    case GW_ADMIN_SESSION:
        text = "application/json";
        if (!render_timeline(&body, id)) {
            gw_sbuf_str(&body, "{\"error\":\"no such live session\"}\n");
            status = MHD_HTTP_NOT_FOUND;
        }
        break;
    case GW_ADMIN_ROOT:
        render_html(&body); /* unlocks cfg_lock before it asks the workers */
        locked = false;
        text = "text/html; charset=utf-8";
        break;
    case GW_ADMIN_BAD:
        gw_sbuf_str(&body, "malformed path\n");
        status = MHD_HTTP_BAD_REQUEST;
        break;
    case GW_ADMIN_NOT_FOUND:
        gw_sbuf_str(&body, "not found: try / /metrics /healthz /readyz /sessions\n");
        status = MHD_HTTP_NOT_FOUND;
        break;
    }
    if (locked)
        pthread_mutex_unlock(&cfg_lock);
    return respond(c, status, text, &body);
}

/* A listing's buffers (the session copies, the JSON or HTML body) are gone once the
 * response is sent: give the memory back, as listener.c does when the gateway goes idle. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
    if (*con_cls == &listing_marker)
        malloc_trim(0);
#endif
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\r\n")] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '"')
            *p = '\'';
    GW_LOG_DEBUG(0, "event=admin_http note=\"%s\"", msg);
}

int gw_admin_start(const gw_config *cfg, gw_health *h, char *err, size_t cap)
{
    const gw_hostport *hp = &cfg->admin_listen;
    started_on = *hp;
    config_seen = true;
    if (hp->port == 0)
        return 0;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    if (inet_pton(AF_INET, hp->host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_port = htons(hp->port);
    } else if (inet_pton(AF_INET6, hp->host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons(hp->port);
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, cap, "admin_listen: %s is not an IP address", hp->host);
        return -1;
    }
    if (!snap_cond_ready) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&snap_cond, &ca);
        pthread_condattr_destroy(&ca);
        snap_cond_ready = true;
    }
    health = h;
    started_at = time(NULL);
    gw_admin_config(cfg);
    /* A hitless upgrade hands the old process's socket over (upgrade.c); ITC lets
     * gw_admin_quiesce give it back without a shutdown(2) that would stop it listening. */
    flags |= MHD_USE_ITC;
    socklen_t len =
        ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    int inherited = gw_inherit_take("admin", (struct sockaddr *)&ss, len);
    struct MHD_OptionItem where[] = {
        inherited >= 0 ? (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, inherited, NULL}
                       : (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &ss},
        {MHD_OPTION_END, 0, NULL}};
    daemon_h = MHD_start_daemon(
        flags, hp->port, NULL, NULL, on_request, NULL, MHD_OPTION_ARRAY, where,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)ADMIN_CONNECTIONS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)ADMIN_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)ADMIN_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)ADMIN_REQUEST_MEM,
        MHD_OPTION_STRICT_FOR_CLIENT, (int)1, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!daemon_h) {
        if (inherited >= 0)
            close(inherited);
        snprintf(err, cap, "admin_listen: cannot listen on %s:%u", hp->host, hp->port);
        return -1;
    }
    GW_LOG_INFO(0, "event=admin_listening addr=%s:%u%s", hp->host, hp->port,
                inherited >= 0 ? " inherited=yes" : "");
    return 0;
}

int gw_admin_listen_fd(void)
{
    const union MHD_DaemonInfo *i =
        daemon_h ? MHD_get_daemon_info(daemon_h, MHD_DAEMON_INFO_LISTEN_FD) : NULL;
    return i ? (int)i->listen_fd : -1;
}

void gw_admin_quiesce(void)
{
    MHD_socket fd = daemon_h ? MHD_quiesce_daemon(daemon_h) : MHD_INVALID_SOCKET;
    if (fd != MHD_INVALID_SOCKET)
        close(fd); /* the new process has its own descriptor of the socket */
}

void gw_admin_stop(void)
{
    if (daemon_h) {
        MHD_stop_daemon(daemon_h);
        daemon_h = NULL;
    }
    pthread_mutex_lock(&snap_lock);
    free(req.list);
    req.list = NULL;
    req.n = req.cap = 0;
    pthread_mutex_unlock(&snap_lock);
    pthread_mutex_lock(&cfg_lock);
    free_view();
    pthread_mutex_unlock(&cfg_lock);
}

#else /* GW_NO_ADMIN (`make ADMIN=no`: no libmicrohttpd): no endpoint, admin_listen refused */
#include <stdio.h>

int gw_admin_start(const gw_config *cfg, gw_health *h, char *err, size_t cap)
{
    (void)h;
    if (cfg->admin_listen.port == 0)
        return 0;
    snprintf(err, cap, "admin_listen: this build has no admin endpoint (built with make ADMIN=no)");
    return -1;
}

void gw_admin_config(const gw_config *cfg)
{
    (void)cfg;
}

void gw_admin_set_stopping(void) {}

int gw_admin_listen_fd(void)
{
    return -1;
}

void gw_admin_quiesce(void) {}

void gw_admin_stop(void) {}
#endif
