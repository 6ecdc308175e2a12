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
 * itself done with nothing). A worker that is late finds its request withdrawn. DELETE
 * /sessions/ID takes the same path: the owning worker closes the session.
 *
 * A reaper thread enforces a total deadline per request (tracked, below). Access: the users
 * (admin_users) are swapped on reload by worker 0 under auth_lock; basic auth is checked on
 * the HTTP thread with crypt_r. Backend runtime states live in the health table (health.h),
 * one per process. */
#include "admin.h"

#ifndef GW_NO_ADMIN
#include <arpa/inet.h>
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#define MHD_NO_DEPRECATION 1 /* newer libmicrohttpd deprecates the 0.9.75 auth calls used here */
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "admin_text.h"
#include "admin_users.h"
#include "crypt_check.h"
#include "bans.h"
#include "data.h"
#include "inherit.h"
#include "log.h"
#include "metrics.h"
#include "siblings.h"
#include "textfile.h"
#include "session.h"
#include "shared_port.h"
#include "timeline.h"
#include "version.h"
#include "worker.h"

#define ADMIN_CONNECTIONS 64     /* at once, all clients */
#define ADMIN_PER_IP 8           /* at once, one client address */
#define ADMIN_TIMEOUT_S 5        /* a connection idle (or a request unfinished) this long ends */
#define ADMIN_DEADLINE_S 10      /* a request's total time, headers, body and answer: see tracked */
#define REAPER_TICK_MS 250       /* how often the deadline is checked */
#define ADMIN_REQUEST_MEM 16384  /* request line and headers: more gets 431/414 */
#define SNAP_WAIT_MS 2000        /* workers answering a /sessions request */
#define SNAP_MAX_SESSIONS 100000 /* listed at most */
#define ADMIN_BODY_MAX 1024      /* a runtime API request's JSON body */
#define ADMIN_FILE_MAX (1 << 20) /* admin_users, admin_tls_cert, admin_tls_key */
#define ADMIN_REALM "ftpsgate admin"

static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t snap_cond;
static bool snap_cond_ready;
static struct {
    bool active;
    unsigned no;   /* of the request: a late answer to an earlier one is dropped */
    bool timeline; /* /sessions/ID: only that session's timeline */
    bool kill;     /* DELETE /sessions/ID: end that session */
    char why[160]; /* kill: the reason its log line gives */
    uint64_t id;
    int pending;
    gw_sess_summary *list;
    size_t n, cap;
    bool found;
    gw_timeline tl;
    gw_sess_states states;
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
static gw_hostport started_on; /* admin_listen at start (port 0: off) */
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
    if (req.kill) {
        if (gw_session_get_id(s) == req.id) {
            gw_session_close(s, req.why); /* 421; freed later, on its loop */
            req.found = true;
        }
        return;
    }
    if (req.timeline) {
        if (gw_session_get_id(s) == req.id) {
            gw_session_timeline(s, &req.tl, &req.states);
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
static void snapshot_kill(bool timeline, bool kill, const char *why, uint64_t id)
{
    pthread_mutex_lock(&snap_lock);
    req.active = true;
    req.timeline = timeline;
    req.kill = kill;
    snprintf(req.why, sizeof req.why, "%s", why ? why : "");
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

static void snapshot(bool timeline, uint64_t id)
{
    snapshot_kill(timeline, false, NULL, id);
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

static void config_users(const gw_config *cfg);

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
    if (started_on.port)
        config_users(cfg);
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
    int *adm = calloc((size_t)n_bes + 1, sizeof *adm);
    if (!fnames || !bnames || !up || !adm) {
        o->oom = true;
    } else {
        for (int i = 0; i < n_fes; i++)
            fnames[i] = fes[i].name;
        for (int i = 0; i < n_bes; i++) {
            bnames[i] = bes[i].name;
            up[i] = gw_health_is_healthy(health, bes[i].name);
            adm[i] = (int)gw_health_admin(health, bes[i].name);
        }
        gw_metrics_view v = {.n_frontends = n_fes,
                             .frontends = fnames,
                             .n_backends = n_bes,
                             .backends = bnames,
                             .backend_up = up,
                             .backend_admin = adm,
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
    free(adm);
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
        gw_tl_json(&req.tl, id, &req.states, o);
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
                   "<th>health</th><th>state</th><th>connects ok</th><th>connects failed</th>"
                   "</tr>\n");
    for (int i = 0; i < n_bes; i++) {
        bool up = gw_health_is_healthy(health, bes[i].name);
        enum gw_be_admin st = gw_health_admin(health, bes[i].name);
        gw_sbuf_printf(o, "<tr class=%s>", up && st == GW_BE_ADMIN_READY ? "up" : "down");
        html_cell(o, bes[i].name);
        html_cell(o, bes[i].address);
        html_cell(o, bes[i].tls);
        html_cell(o, up ? "UP" : "DOWN");
        html_cell(o, gw_be_admin_name(st));
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

/* ---- total deadline per request ----
 *
 * MHD's connection timeout counts idle time only: a client that sends one header line a
 * second keeps its connection (and its place under the connection limits) for ever. Each
 * connection is tracked from its start (or from its previous request's end, keep-alive) to
 * its request's end; the reaper thread shuts down the socket of one past ADMIN_DEADLINE_S,
 * and MHD, reading EOF, closes it. A tracked entry is removed (under track_lock) before MHD
 * closes the descriptor, so the reaper never touches a descriptor that was reused. */

typedef struct tracked {
    struct tracked *prev, *next;
    int fd;
    struct timespec since; /* start of the current request; tv_sec 0: none under way */
    bool cut;
    char peer[INET6_ADDRSTRLEN];
} tracked;

static pthread_mutex_t track_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t track_cond;
static tracked *track_head;
static pthread_t reaper;
static bool reaper_running, reaper_stop;

static void peer_text(const struct sockaddr *sa, char *out, size_t cap)
{
    out[0] = 0;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        tracked *t = calloc(1, sizeof *t);
        if (!t)
            return; /* untracked: only the idle timeout applies to it */
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *addr =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        t->fd = fd ? fd->connect_fd : -1;
        peer_text(addr ? addr->client_addr : NULL, t->peer, sizeof t->peer);
        clock_gettime(CLOCK_MONOTONIC, &t->since);
        pthread_mutex_lock(&track_lock);
        t->next = track_head;
        if (track_head)
            track_head->prev = t;
        track_head = t;
        pthread_mutex_unlock(&track_lock);
        *socket_context = t;
        return;
    }
    tracked *t = *socket_context;
    if (!t)
        return;
    pthread_mutex_lock(&track_lock);
    if (t->prev)
        t->prev->next = t->next;
    else
        track_head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    pthread_mutex_unlock(&track_lock);
    free(t);
    *socket_context = NULL;
}

/* The connection's tracked entry (NULL when untracked). */
static tracked *tracked_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* A request ended: the next one on this connection gets a deadline of its own. */
static void request_ended(struct MHD_Connection *c)
{
    tracked *t = tracked_of(c);
    if (!t)
        return;
    pthread_mutex_lock(&track_lock);
    clock_gettime(CLOCK_MONOTONIC, &t->since);
    pthread_mutex_unlock(&track_lock);
}

static void *reaper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&track_lock);
    while (!reaper_stop) {
        struct timespec now, until;
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (tracked *t = track_head; t; t = t->next) {
            if (t->cut || t->fd < 0 || now.tv_sec - t->since.tv_sec < ADMIN_DEADLINE_S)
                continue;
            t->cut = true;
            shutdown(t->fd, SHUT_RDWR); /* MHD sees the end and closes it */
            atomic_fetch_add_explicit(&gw_metrics_g.admin_deadline_cuts, 1, memory_order_relaxed);
            GW_LOG_WARN(0, "event=admin_deadline client=%s limit_s=%d", t->peer, ADMIN_DEADLINE_S);
        }
        until = now;
        until.tv_nsec += REAPER_TICK_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&track_cond, &track_lock, &until);
    }
    pthread_mutex_unlock(&track_lock);
    return NULL;
}

static void reaper_start(void)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&track_cond, &ca);
    pthread_condattr_destroy(&ca);
    reaper_stop = false;
    reaper_running = pthread_create(&reaper, NULL, reaper_main, NULL) == 0;
    if (!reaper_running)
        GW_LOG_WARN(0, "event=admin_http note=\"no deadline thread: only the idle timeout "
                       "applies\"");
}

static void reaper_end(void)
{
    if (!reaper_running)
        return;
    pthread_mutex_lock(&track_lock);
    reaper_stop = true;
    pthread_cond_signal(&track_cond);
    pthread_mutex_unlock(&track_lock);
    pthread_join(reaper, NULL);
    reaper_running = false;
    pthread_cond_destroy(&track_cond);
}

/* ---- libmicrohttpd ---- */

/* ---- access: admin_users, the failed-login throttle, files ----
 *
 * The users are replaced on reload by worker 0 and read by the HTTP thread: auth_lock. The
 * throttle is the HTTP thread's alone (requests are answered one at a time there). */

static pthread_mutex_t auth_lock = PTHREAD_MUTEX_INITIALIZER;
static gw_admin_users users;
static bool users_set; /* admin_users is set (its file loaded at least once) */
static char users_path[GW_PATH_MAX];
static bool loopback_bind;       /* admin_listen is 127.0.0.0/8 or ::1 */
static char *tls_cert, *tls_key; /* PEM, for MHD (HTTPS) */
static size_t tls_key_len;
static gw_throttle *throttle;
static struct crypt_data *crypt_buf; /* crypt_r's scratch (32 KiB): the HTTP thread's */

/* A whole small file (textfile.h); private: refused when others may read or write it. */
static char *read_file(const char *path, bool private, size_t *len, char *err, size_t cap)
{
    return gw_textfile_read(path, ADMIN_FILE_MAX, private ? GW_TEXTFILE_NO_OTHERS : 0, len, err,
                            cap);
}

static int load_users(const char *path, gw_admin_users *out, char *err, size_t cap)
{
    size_t len = 0;
    char why[256];
    char *text = read_file(path, true, &len, err, cap);
    if (!text)
        return -1;
    int r = gw_admin_users_parse(text, len, out, why, sizeof why);
    if (r != 0)
        snprintf(err, cap, "%s: %s", path, why);
    free(text);
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls);

/* The files the admin keys name, as start reads them: "key: problem" parts in err. */
int gw_admin_check(const gw_config *cfg, const char **key, char *err, size_t cap)
{
    if (cfg->admin_users[0]) {
        gw_admin_users u;
        *key = "admin_users";
        if (load_users(cfg->admin_users, &u, err, cap) != 0)
            return -1;
        gw_admin_users_free(&u);
    }
    if (cfg->admin_tls_cert[0] && cfg->admin_listen.port) {
        *key = "admin_tls_cert";
        if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
            snprintf(err, cap, "this libmicrohttpd has no TLS support (built without GnuTLS)");
            return -1;
        }
        size_t n;
        char *pem = read_file(cfg->admin_tls_cert, false, &n, err, cap);
        if (!pem)
            return -1;
        if (!strstr(pem, "-----BEGIN CERTIFICATE-----")) {
            free(pem);
            snprintf(err, cap, "%s: no PEM certificate", cfg->admin_tls_cert);
            return -1;
        }
        *key = "admin_tls_key";
        size_t kn;
        char *kpem = read_file(cfg->admin_tls_key, false, &kn, err, cap);
        if (!kpem)
            return -1;
        bool key_ok = strstr(kpem, "PRIVATE KEY-----") != NULL && !strstr(kpem, "ENCRYPTED");
        if (!key_ok)
            snprintf(err, cap, "%s: no unencrypted PEM private key", cfg->admin_tls_key);
        /* As start will load them: GnuTLS through MHD, with no socket (a key that does not
         * belong to the certificate fails here). */
        struct MHD_Daemon *d =
            key_ok ? MHD_start_daemon(MHD_USE_TLS | MHD_USE_NO_LISTEN_SOCKET, 0, NULL, NULL,
                                      on_request, NULL, MHD_OPTION_HTTPS_MEM_CERT, pem,
                                      MHD_OPTION_HTTPS_MEM_KEY, kpem, MHD_OPTION_END)
                   : NULL;
        explicit_bzero(kpem, kn);
        free(kpem);
        free(pem);
        if (key_ok && !d) {
            *key = "admin_tls_cert";
            snprintf(err, cap,
                     "%s and %s: GnuTLS cannot use them (unreadable PEM, or a key "
                     "that is not the certificate's)",
                     cfg->admin_tls_cert, cfg->admin_tls_key);
        }
        if (d)
            MHD_stop_daemon(d);
        if (!d)
            return -1;
    }
    return 0;
}

/* At start and on reload (worker 0): admin_users reread; a failure keeps the users. */
static void config_users(const gw_config *cfg)
{
    gw_admin_users u = {0};
    char err[512];
    if (cfg->admin_users[0] && load_users(cfg->admin_users, &u, err, sizeof err) != 0) {
        GW_LOG_ERR(0, "event=admin_users_failed reason=\"%s\" note=\"the previous users stay\"",
                   err);
        return;
    }
    pthread_mutex_lock(&auth_lock);
    gw_admin_users_free(&users);
    users = u;
    users_set = cfg->admin_users[0] != '\0';
    snprintf(users_path, sizeof users_path, "%s", cfg->admin_users);
    pthread_mutex_unlock(&auth_lock);
    if (users_set)
        GW_LOG_INFO(0, "event=admin_users_loaded users=%zu", u.n);
}

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A user name for the log: the characters a user file allows, others as '?'. */
static void log_name(const char *in, char *out, size_t cap)
{
    size_t i = 0;
    for (; in && in[i] && i + 1 < cap; i++) {
        char c = in[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_' || c == '@';
        out[i] = ok ? c : '?';
    }
    out[i] = 0;
}

enum auth_result { AUTH_OK, AUTH_NONE, AUTH_FAILED, AUTH_LOCKED };

/* Basic auth against admin_users (the HTTP thread). *role and user (the name, for logs) on
 * AUTH_OK; *retry_s on AUTH_LOCKED. The password is wiped and never logged. */
static enum auth_result check_auth(struct MHD_Connection *c, const char *peer,
                                   enum gw_admin_role *role, char *user, size_t ucap,
                                   unsigned *retry_s)
{
    char *pass = NULL;
    char *name = MHD_basic_auth_get_username_password(c, &pass);
    if (!name) {
        if (pass)
            MHD_free(pass);
        return AUTH_NONE;
    }
    enum auth_result r = AUTH_FAILED;
    char shown[GW_ADMIN_USER_MAX];
    log_name(name, shown, sizeof shown);
    snprintf(user, ucap, "%s", shown);
    int64_t now = now_ms();
    *retry_s = gw_throttle_locked(throttle, peer, now);
    if (*retry_s > 0) {
        r = AUTH_LOCKED;
    } else {
        char hash[GW_ADMIN_HASH_MAX];
        enum gw_admin_role found = GW_ADMIN_ROLE_NONE;
        pthread_mutex_lock(&auth_lock);
        const gw_admin_user *u = gw_admin_users_find(&users, name);
        /* an unknown user costs the same hashing as a known one */
        snprintf(hash, sizeof hash, "%s", u ? u->hash : GW_CRYPT_STAND_IN);
        if (u)
            found = u->role;
        pthread_mutex_unlock(&auth_lock);
        bool ok = gw_crypt_check(pass, hash, crypt_buf) && found != GW_ADMIN_ROLE_NONE;
        explicit_bzero(hash, sizeof hash);
        if (ok) {
            gw_throttle_ok(throttle, peer);
            *role = found;
            r = AUTH_OK;
        } else {
            atomic_fetch_add_explicit(&gw_metrics_g.admin_auth_failed, 1, memory_order_relaxed);
            bool locked = gw_throttle_fail(throttle, peer, now);
            GW_LOG_WARN(0, "event=admin_auth_failed client=%s user=\"%s\" reason=%s%s", peer, shown,
                        found == GW_ADMIN_ROLE_NONE ? "unknown_user" : "wrong_password",
                        locked ? " note=\"locked out\"" : "");
            if (locked) {
                GW_LOG_WARN(0, "event=admin_auth_lockout client=%s seconds=%d fails=%d", peer,
                            GW_THROTTLE_LOCK_MS / 1000, GW_THROTTLE_FAILS);
            }
        }
    }
    if (pass) {
        explicit_bzero(pass, strlen(pass));
        MHD_free(pass);
    }
    MHD_free(name);
    return r;
}

/* One request's state, from its headers to its end (con_cls). */
typedef struct areq {
    enum gw_admin_route route;
    uint64_t id;
    char backend[GW_NAME_MAX];
    char user[GW_ADMIN_USER_MAX]; /* who asked ("-": anonymous on loopback) */
    char peer[INET6_ADDRSTRLEN];
    bool listing; /* its buffers are large: trimmed after */
    bool post;    /* a body is read before the answer */
    bool too_big;
    size_t len;
    char body[ADMIN_BODY_MAX + 1];
} areq;

static enum MHD_Result respond_hdr(struct MHD_Connection *c, unsigned status, const char *type,
                                   gw_sbuf *body, const char *allow, unsigned retry_s)
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
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow ? allow : "GET, HEAD");
    if (retry_s) {
        char v[16];
        snprintf(v, sizeof v, "%u", retry_s);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    enum MHD_Result ret = status == MHD_HTTP_UNAUTHORIZED && users_set
                              ? MHD_queue_basic_auth_fail_response(c, ADMIN_REALM, r)
                              : MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond(struct MHD_Connection *c, unsigned status, const char *type,
                               gw_sbuf *body)
{
    return respond_hdr(c, status, type, body, NULL, 0);
}

static void client_of(struct MHD_Connection *c, char *out, size_t cap)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    peer_text(i ? i->client_addr : NULL, out, cap);
    if (!out[0])
        snprintf(out, cap, "-");
}

/* POST /backends/NAME/state (operate). */
static unsigned set_backend_state(areq *q, gw_sbuf *o)
{
    int st = q->too_big ? -1 : gw_admin_parse_state(q->body, q->len);
    if (st < 0) {
        gw_sbuf_str(o, "{\"error\":\"expected {\\\"state\\\": \\\"drain\\\"|\\\"maint\\\"|"
                       "\\\"ready\\\"}\"}\n");
        return MHD_HTTP_BAD_REQUEST;
    }
    enum gw_be_admin prev;
    if (gw_health_set_admin(health, q->backend, (enum gw_be_admin)st, &prev) != 0) {
        gw_sbuf_str(o, "{\"error\":\"no such backend\"}\n");
        return MHD_HTTP_NOT_FOUND;
    }
    GW_LOG_WARN(0,
                "event=backend_admin_state backend=%s state=%s previous=%s user=\"%s\" client=%s",
                q->backend, gw_be_admin_name((enum gw_be_admin)st), gw_be_admin_name(prev), q->user,
                q->peer);
    gw_sbuf_str(o, "{\"backend\":");
    gw_sbuf_json(o, q->backend);
    gw_sbuf_printf(o, ",\"state\":\"%s\",\"previous\":\"%s\"}\n",
                   gw_be_admin_name((enum gw_be_admin)st), gw_be_admin_name(prev));
    return MHD_HTTP_OK;
}

/* DELETE /sessions/ID (operate): 421 to its client, on its worker's loop. */
static unsigned kill_session(areq *q, gw_sbuf *o)
{
    char why[160];
    snprintf(why, sizeof why, "ended by admin user %s from %s", q->user, q->peer);
    snapshot_kill(false, true, why, q->id);
    bool found = req.found;
    snapshot_done();
    GW_LOG_WARN(found ? q->id : 0,
                "event=admin_session_kill session_id=%llu user=\"%s\" client=%s "
                "result=%s",
                (unsigned long long)q->id, q->user, q->peer, found ? "closed" : "not_found");
    if (!found) {
        gw_sbuf_str(o, "{\"error\":\"no such live session\"}\n");
        return MHD_HTTP_NOT_FOUND;
    }
    gw_sbuf_printf(o, "{\"session\":%llu,\"result\":\"closed\"}\n", (unsigned long long)q->id);
    return MHD_HTTP_OK;
}

/* The headers are in: method, access, body. MHD_YES with nothing queued: read the body. */
static enum MHD_Result on_headers(struct MHD_Connection *c, areq *q, const char *url,
                                  const char *method, size_t *upload_data_size)
{
    gw_sbuf body = {0};
    const char *text = "text/plain; charset=utf-8";
    q->route = gw_admin_route(url, &q->id);
    if (q->route == GW_ADMIN_BACKEND_STATE)
        gw_admin_backend_name(url, q->backend, sizeof q->backend);
    client_of(c, q->peer, sizeof q->peer);
    snprintf(q->user, sizeof q->user, "-");
    bool get =
        strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    bool del = strcmp(method, MHD_HTTP_METHOD_DELETE) == 0;
    q->post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    /* Refused at the headers, before any body is read. */
    const char *allow = q->route == GW_ADMIN_BACKEND_STATE ? "POST"
                        : q->route == GW_ADMIN_SESSION     ? "GET, HEAD, DELETE"
                                                           : "GET, HEAD";
    bool allowed = q->route == GW_ADMIN_BACKEND_STATE ? q->post
                   : q->route == GW_ADMIN_SESSION     ? get || del
                                                      : get;
    if (!allowed && q->route != GW_ADMIN_NOT_FOUND && q->route != GW_ADMIN_BAD) {
        *upload_data_size = 0;
        gw_sbuf_printf(&body, "only %s here\n", allow);
        return respond_hdr(c, MHD_HTTP_METHOD_NOT_ALLOWED, text, &body, allow, 0);
    }
    if (q->route == GW_ADMIN_BAD) {
        *upload_data_size = 0;
        gw_sbuf_str(&body, "malformed path\n");
        return respond(c, MHD_HTTP_BAD_REQUEST, text, &body);
    }
    /* Access: /healthz and /readyz answer anyone (probes); the rest as admin_users says. */
    bool open = q->route == GW_ADMIN_HEALTHZ || q->route == GW_ADMIN_READYZ;
    bool write = q->post || del;
    enum gw_admin_role role = GW_ADMIN_ROLE_READ;
    bool anonymous = true;
    if (!open) {
        pthread_mutex_lock(&auth_lock);
        bool need = users_set;
        pthread_mutex_unlock(&auth_lock);
        unsigned retry = 0;
        if (need) {
            switch (check_auth(c, q->peer, &role, q->user, sizeof q->user, &retry)) {
            case AUTH_OK:
                anonymous = false;
                break;
            case AUTH_NONE:
            case AUTH_FAILED:
                *upload_data_size = 0;
                gw_sbuf_str(&body, "authentication required\n");
                return respond(c, MHD_HTTP_UNAUTHORIZED, text, &body);
            case AUTH_LOCKED:
                *upload_data_size = 0;
                gw_sbuf_str(&body, "too many failed logins from this address: try later\n");
                return respond_hdr(c, MHD_HTTP_TOO_MANY_REQUESTS, text, &body, NULL, retry);
            }
        } else if (!loopback_bind) {
            *upload_data_size = 0;
            gw_sbuf_str(&body, "admin_users is not set: on this address only /healthz and "
                               "/readyz answer\n");
            return respond(c, MHD_HTTP_UNAUTHORIZED, text, &body);
        }
    }
    if (write && role != GW_ADMIN_ROLE_OPERATE) {
        *upload_data_size = 0;
        gw_sbuf_str(&body, anonymous ? "the runtime API needs admin_users and a user with the "
                                       "operate role\n"
                                     : "this needs the operate role\n");
        if (!anonymous)
            GW_LOG_WARN(0, "event=admin_forbidden user=\"%s\" client=%s path=%s", q->user, q->peer,
                        q->route == GW_ADMIN_SESSION ? "/sessions/ID" : "/backends/NAME/state");
        return respond(c, MHD_HTTP_FORBIDDEN, text, &body);
    }
    /* SECURITY: only POST carries a body, and a small one; others are refused, not read. */
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    bool chunked =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
    if (q->post ? (chunked || !cl || strtoull(cl, NULL, 10) > ADMIN_BODY_MAX)
                : (*upload_data_size != 0 || (cl && strcmp(cl, "0") != 0) || chunked)) {
        *upload_data_size = 0;
        gw_sbuf_str(&body, q->post ? "expected a JSON body of at most 1024 bytes with its "
                                     "Content-Length\n"
                                   : "a request body is not accepted\n");
        return respond(c, MHD_HTTP_CONTENT_TOO_LARGE, text, &body);
    }
    return MHD_YES; /* the answer on the next call */
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    gw_sbuf body = {0};
    const char *text = "text/plain; charset=utf-8";
    areq *q = *con_cls;
    if (!q) {
        q = calloc(1, sizeof *q);
        if (!q)
            return MHD_NO;
        *con_cls = q;
        atomic_fetch_add_explicit(&gw_metrics_g.admin_requests, 1, memory_order_relaxed);
        return on_headers(c, q, url, method, upload_data_size);
    }
    if (*upload_data_size != 0) { /* POST body, bounded */
        size_t n = *upload_data_size;
        if (q->len + n > ADMIN_BODY_MAX)
            q->too_big = true;
        else
            memcpy(q->body + q->len, upload_data, n);
        q->len += q->too_big ? 0 : n;
        *upload_data_size = 0;
        return MHD_YES;
    }
    uint64_t id = q->id;
    unsigned status = MHD_HTTP_OK;
    if (q->route == GW_ADMIN_BACKEND_STATE) {
        status = set_backend_state(q, &body);
        return respond(c, status, "application/json", &body);
    }
    if (q->route == GW_ADMIN_SESSION && strcmp(method, MHD_HTTP_METHOD_DELETE) == 0) {
        status = kill_session(q, &body);
        return respond(c, status, "application/json", &body);
    }
    enum gw_admin_route route = q->route;
    /* The session routes wait for the workers: never while holding cfg_lock, which worker 0
     * takes on reload. */
    bool locked = route != GW_ADMIN_SESSIONS && route != GW_ADMIN_SESSION;
    if (route == GW_ADMIN_SESSIONS || route == GW_ADMIN_ROOT)
        q->listing = true;
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
    case GW_ADMIN_BACKEND_STATE: /* answered above */
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
    areq *q = *con_cls;
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
    if (q && q->listing)
        malloc_trim(0);
#endif
    if (q)
        explicit_bzero(q->body, sizeof q->body);
    free(q);
    *con_cls = NULL;
    request_ended(c);
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
    loopback_bind = strncmp(hp->host, "127.", 4) == 0 || strcmp(hp->host, "::1") == 0;
    throttle = calloc(1, sizeof *throttle);
    crypt_buf = calloc(1, sizeof *crypt_buf);
    if (!throttle || !crypt_buf) {
        snprintf(err, cap, "admin_listen: out of memory");
        return -1;
    }
    /* HTTPS: the files are read now (before privileges are dropped) and kept until stop. */
    struct MHD_OptionItem tls_opts[3] = {{MHD_OPTION_END, 0, NULL}};
    if (cfg->admin_tls_cert[0]) {
        size_t n;
        if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
            snprintf(err, cap, "admin_tls_cert: this libmicrohttpd has no TLS support");
            return -1;
        }
        if (!(tls_cert = read_file(cfg->admin_tls_cert, false, &n, err, cap)) ||
            !(tls_key = read_file(cfg->admin_tls_key, false, &tls_key_len, err, cap)))
            return -1;
        flags |= MHD_USE_TLS;
        tls_opts[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, tls_cert};
        tls_opts[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, tls_key};
        tls_opts[2] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    }
    gw_admin_config(cfg);
    reaper_start();
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
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL, MHD_OPTION_ARRAY, tls_opts,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!daemon_h) {
        reaper_end();
        if (inherited >= 0)
            close(inherited);
        snprintf(err, cap, "admin_listen: cannot listen on %s:%u%s", hp->host, hp->port,
                 tls_cert ? " (or admin_tls_cert/admin_tls_key do not load)" : "");
        return -1;
    }
    GW_LOG_INFO(0, "event=admin_listening addr=%s:%u scheme=%s auth=%s%s", hp->host, hp->port,
                tls_cert ? "https" : "http",
                users_set       ? "basic"
                : loopback_bind ? "none_loopback"
                                : "probes_only",
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
    reaper_end();
    pthread_mutex_lock(&snap_lock);
    free(req.list);
    req.list = NULL;
    req.n = req.cap = 0;
    pthread_mutex_unlock(&snap_lock);
    pthread_mutex_lock(&cfg_lock);
    free_view();
    pthread_mutex_unlock(&cfg_lock);
    pthread_mutex_lock(&auth_lock);
    gw_admin_users_free(&users);
    pthread_mutex_unlock(&auth_lock);
    free(throttle);
    throttle = NULL;
    free(crypt_buf);
    crypt_buf = NULL;
    if (tls_key)
        explicit_bzero(tls_key, tls_key_len);
    free(tls_key);
    free(tls_cert);
    tls_key = tls_cert = NULL;
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

int gw_admin_check(const gw_config *cfg, const char **key, char *err, size_t cap)
{
    (void)cfg;
    (void)key;
    (void)err;
    (void)cap;
    return 0; /* admin_listen itself is refused at start */
}
#endif
