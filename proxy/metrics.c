/* Process-wide metrics: see metrics.h. Relaxed atomics everywhere: each series is
 * independent and a scrape is a snapshot "at about now". */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

gw_metrics gw_metrics_g;
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;

#define ADD(field, n) atomic_fetch_add_explicit(&(field), (n), memory_order_relaxed)
#define GET(field) atomic_load_explicit(&(field), memory_order_relaxed)

static const double xfer_le[GW_M_XFER_BUCKETS - 1] = {0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300};
static const double connect_le[GW_M_CONNECT_BUCKETS - 1] = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                            0.05,  0.1,    0.5,   1};

/* The slot of name, claimed when new; -1 when name is NULL or every slot is taken. */
static int slot_find(gw_m_slot_names *t, const char *name, bool claim)
{
    if (!name || !name[0])
        return -1;
    for (int i = 0; i < GW_M_SLOTS; i++) {
        if (!atomic_load_explicit(&t[i].used, memory_order_acquire))
            break; /* slots are claimed in order */
        if (strncmp(t[i].name, name, GW_M_NAME - 1) == 0)
            return i;
    }
    if (!claim)
        return -1;
    pthread_mutex_lock(&slot_lock);
    int found = -1;
    for (int i = 0; i < GW_M_SLOTS && found < 0; i++) {
        if (!atomic_load_explicit(&t[i].used, memory_order_acquire)) {
            snprintf(t[i].name, GW_M_NAME, "%s", name);
            atomic_store_explicit(&t[i].used, 1, memory_order_release);
            found = i;
        } else if (strncmp(t[i].name, name, GW_M_NAME - 1) == 0) {
            found = i;
        }
    }
    pthread_mutex_unlock(&slot_lock);
    return found;
}

static void hist_observe(gw_m_hist *h, const double *le, int n, uint64_t us)
{
    double s = (double)us / 1e6;
    int i = 0;
    while (i < n - 1 && s > le[i])
        i++;
    ADD(h->bucket[i], 1);
    ADD(h->count, 1);
    ADD(h->sum_us, us);
}

void gw_metric_session_start(const char *frontend)
{
    int i = slot_find(gw_metrics_g.fe_names, frontend, true);
    if (i < 0)
        return;
    ADD(gw_metrics_g.fe[i].sessions_active, 1);
    ADD(gw_metrics_g.fe[i].sessions_total, 1);
}

void gw_metric_session_end(const char *frontend)
{
    int i = slot_find(gw_metrics_g.fe_names, frontend, true);
    if (i >= 0)
        ADD(gw_metrics_g.fe[i].sessions_active, -1);
}

void gw_metric_session_move(const char *from, const char *to)
{
    gw_metric_session_end(from);
    int i = slot_find(gw_metrics_g.fe_names, to, true);
    if (i >= 0)
        ADD(gw_metrics_g.fe[i].sessions_active, 1);
}

void gw_metric_policy_refused(const char *frontend)
{
    int i = slot_find(gw_metrics_g.fe_names, frontend, true);
    if (i >= 0)
        ADD(gw_metrics_g.fe[i].policy_refused, 1);
}

void gw_metric_rate_limited(const char *frontend, bool upload, uint64_t ns)
{
    int i = slot_find(gw_metrics_g.fe_names, frontend, true);
    if (i >= 0)
        ADD(gw_metrics_g.fe[i].rate_limited_ns[upload ? 1 : 0], ns);
}

void gw_metric_login(const char *frontend, bool ok)
{
    int i = slot_find(gw_metrics_g.fe_names, frontend, true);
    if (i < 0)
        return;
    if (ok)
        ADD(gw_metrics_g.fe[i].logins_ok, 1);
    else
        ADD(gw_metrics_g.fe[i].logins_failed, 1);
}

static const char *const tls_version_names[GW_M_TLSV] = {"none",    "TLSv1",   "TLSv1.1",
                                                         "TLSv1.2", "TLSv1.3", "other"};

void gw_metric_tls(enum gw_m_side side, bool ok, const char *version)
{
    int v = GW_M_TLS_NONE;
    if (ok) {
        v = GW_M_TLS_OTHER;
        for (int i = GW_M_TLS10; i <= GW_M_TLS13; i++)
            if (version && strcmp(version, tls_version_names[i]) == 0)
                v = i;
    }
    if ((unsigned)side < GW_M_SIDES)
        ADD(gw_metrics_g.tls[side][v], 1);
}

void gw_metric_tls_conn(const char *conn_name, bool ok, const char *describe)
{
    enum gw_m_side side;
    if (!conn_name)
        return;
    if (strcmp(conn_name, "client") == 0)
        side = GW_M_CLIENT;
    else if (strcmp(conn_name, "backend") == 0)
        side = GW_M_BACKEND;
    else if (strstr(conn_name, "-data"))
        side = GW_M_DATA;
    else
        return;
    char version[16] = "";
    if (ok && describe) {
        size_t n = strcspn(describe, "/");
        snprintf(version, sizeof version, "%.*s", (int)(n < 15 ? n : 15), describe);
    }
    gw_metric_tls(side, ok, version);
}

void gw_metric_transfer(bool upload, enum gw_m_xfer_result result, uint64_t bytes,
                        uint64_t duration_ms)
{
    if ((unsigned)result >= GW_M_XFER_RESULTS)
        result = GW_M_XFER_FAILED;
    ADD(gw_metrics_g.transfers[upload][result], 1);
    ADD(gw_metrics_g.transfer_bytes[upload], bytes);
    hist_observe(&gw_metrics_g.transfer_duration, xfer_le, GW_M_XFER_BUCKETS, duration_ms * 1000);
}

void gw_metric_data_refused(enum gw_m_refused reason)
{
    if ((unsigned)reason < GW_M_REFUSED_REASONS)
        ADD(gw_metrics_g.refused[reason], 1);
}

static int range_slot(unsigned lo, unsigned hi)
{
    char name[24];
    snprintf(name, sizeof name, "%u-%u", lo, hi);
    return slot_find(gw_metrics_g.range_names, name, true);
}

void gw_metric_pasv(unsigned lo, unsigned hi, int delta)
{
    int i = range_slot(lo, hi);
    if (i >= 0)
        ADD(gw_metrics_g.range[i].in_use, delta);
}

void gw_metric_pasv_exhausted(unsigned lo, unsigned hi)
{
    int i = range_slot(lo, hi);
    if (i >= 0)
        ADD(gw_metrics_g.range[i].exhausted, 1);
}

void gw_metric_backend_connect(const char *backend, bool ok, uint64_t ms)
{
    int i = slot_find(gw_metrics_g.be_names, backend, true);
    if (i < 0)
        return;
    if (ok) {
        ADD(gw_metrics_g.be[i].connects_ok, 1);
        hist_observe(&gw_metrics_g.be[i].connect, connect_le, GW_M_CONNECT_BUCKETS, ms * 1000);
    } else {
        ADD(gw_metrics_g.be[i].connects_failed, 1);
    }
}

void gw_metric_backend_busy(const char *backend)
{
    int i = slot_find(gw_metrics_g.be_names, backend, true);
    if (i >= 0)
        ADD(gw_metrics_g.be[i].connects_busy, 1);
}

void gw_metric_reload(bool ok)
{
    if (ok)
        ADD(gw_metrics_g.reloads_ok, 1);
    else
        ADD(gw_metrics_g.reloads_failed, 1);
}

void gw_metric_fd_limit(void)
{
    ADD(gw_metrics_g.fd_limit_events, 1);
}

void gw_metric_ban(void)
{
    ADD(gw_metrics_g.bans, 1);
}

/* ---- exposition ---- */

static void family(gw_sbuf *o, const char *name, const char *type, const char *help)
{
    gw_sbuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{key="value"} */
static void series1(gw_sbuf *o, const char *name, const char *key, const char *value)
{
    gw_sbuf_printf(o, "%s{%s=\"", name, key);
    gw_sbuf_label(o, value);
    gw_sbuf_str(o, "\"}");
}

static void hist_render(gw_sbuf *o, const char *name, const char *key, const char *value,
                        const gw_m_hist *h, const double *le, int n)
{
    uint64_t cum = 0;
    for (int i = 0; i < n; i++) {
        cum += GET(h->bucket[i]);
        gw_sbuf_printf(o, "%s_bucket{", name);
        if (key) {
            gw_sbuf_printf(o, "%s=\"", key);
            gw_sbuf_label(o, value);
            gw_sbuf_str(o, "\",");
        }
        if (i < n - 1)
            gw_sbuf_printf(o, "le=\"%g\"} %llu\n", le[i], (unsigned long long)cum);
        else
            gw_sbuf_printf(o, "le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    /* count from the buckets: _count equals the +Inf bucket even mid-update */
    const char *suffix[2] = {"_sum", "_count"};
    for (int k = 0; k < 2; k++) {
        char full[128];
        snprintf(full, sizeof full, "%s%s", name, suffix[k]);
        if (key)
            series1(o, full, key, value);
        else
            gw_sbuf_str(o, full);
        if (k == 0)
            gw_sbuf_printf(o, " %.6f\n", (double)GET(h->sum_us) / 1e6);
        else
            gw_sbuf_printf(o, " %llu\n", (unsigned long long)cum);
    }
}

static int slots_used(const gw_m_slot_names *t)
{
    int n = 0;
    while (n < GW_M_SLOTS && atomic_load_explicit(&t[n].used, memory_order_acquire))
        n++;
    return n;
}

/* Frontend series: every slot ever used (counters stay monotonic across reloads), plus the
 * configuration's frontends not seen yet at zero. */
static void render_frontends(const gw_metrics *m, const gw_metrics_view *v, gw_sbuf *o)
{
    int used = slots_used(m->fe_names);
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"ftpsgate_sessions_active", "gauge", "Client sessions open now."},
        {"ftpsgate_sessions_total", "counter", "Client sessions started."},
        {"ftpsgate_logins_total", "counter", "Logins by result (ok, failed)."},
        {"ftpsgate_policy_refused_total", "counter",
         "Commands refused with 550 by a [policy] (never sent to the backend)."},
    };
    for (int f = 0; f < 4; f++) {
        family(o, fam[f].name, fam[f].type, fam[f].help);
        for (int pass = 0; pass < 2; pass++) {
            int n = pass == 0 ? used : v->n_frontends;
            for (int i = 0; i < n; i++) {
                const char *name = pass == 0 ? m->fe_names[i].name : v->frontends[i];
                const gw_m_frontend *fe = pass == 0 ? &m->fe[i] : NULL;
                if (pass == 1 && slot_find((gw_m_slot_names *)m->fe_names, name, false) >= 0)
                    continue;
                if (f != 2) {
                    series1(o, fam[f].name, "frontend", name);
                    long long val = !fe      ? 0
                                    : f == 0 ? (long long)GET(fe->sessions_active)
                                    : f == 1 ? (long long)GET(fe->sessions_total)
                                             : (long long)GET(fe->policy_refused);
                    gw_sbuf_printf(o, " %lld\n", val);
                    continue;
                }
                for (int ok = 1; ok >= 0; ok--) {
                    gw_sbuf_str(o, "ftpsgate_logins_total{frontend=\"");
                    gw_sbuf_label(o, name);
                    unsigned long long val = !fe  ? 0
                                             : ok ? GET(fe->logins_ok)
                                                  : GET(fe->logins_failed);
                    gw_sbuf_printf(o, "\",result=\"%s\"} %llu\n", ok ? "ok" : "failed", val);
                }
            }
        }
    }
}

/* Time relays waited for bandwidth-limit tokens: the frontends that ever waited. */
static void render_rate_limited(const gw_metrics *m, gw_sbuf *o)
{
    family(o, "ftpsgate_rate_limited_seconds_total", "counter",
           "Time data relays were paused by a bandwidth limit (rate_down, rate_up, "
           "frontend_rate_*, per-user rates).");
    int used = slots_used(m->fe_names);
    for (int i = 0; i < used; i++)
        for (int dir = 0; dir < 2; dir++) {
            uint64_t ns = GET(m->fe[i].rate_limited_ns[dir]);
            if (!ns)
                continue;
            gw_sbuf_str(o, "ftpsgate_rate_limited_seconds_total{frontend=\"");
            gw_sbuf_label(o, m->fe_names[i].name);
            gw_sbuf_printf(o, "\",direction=\"%s\"} %.3f\n", dir ? "up" : "down", (double)ns / 1e9);
        }
}

static void render_backends(const gw_metrics *m, const gw_metrics_view *v, gw_sbuf *o)
{
    family(o, "ftpsgate_backend_up", "gauge", "Backend health: 1 up, 0 down.");
    for (int i = 0; i < v->n_backends; i++) {
        series1(o, "ftpsgate_backend_up", "backend", v->backends[i]);
        gw_sbuf_printf(o, " %d\n", v->backend_up[i] ? 1 : 0);
    }
    family(o, "ftpsgate_backend_admin_state", "gauge",
           "Backend runtime state set through the admin endpoint: 1 for the current one "
           "(ready, drain: no new sessions, maint: no new sessions and no probes).");
    for (int i = 0; i < v->n_backends; i++)
        for (int st = 0; st < GW_BE_ADMIN_STATES; st++) {
            gw_sbuf_str(o, "ftpsgate_backend_admin_state{backend=\"");
            gw_sbuf_label(o, v->backends[i]);
            int cur = v->backend_admin ? v->backend_admin[i] : GW_BE_ADMIN_READY;
            gw_sbuf_printf(o, "\",state=\"%s\"} %d\n", gw_be_admin_name((enum gw_be_admin)st),
                           cur == st ? 1 : 0);
        }
    int used = slots_used(m->be_names);
    family(o, "ftpsgate_backend_connects_total", "counter",
           "Session connects to backends by result (ok, failed, busy: greeted 4xx).");
    for (int pass = 0; pass < 2; pass++) {
        int n = pass == 0 ? used : v->n_backends;
        for (int i = 0; i < n; i++) {
            const char *name = pass == 0 ? m->be_names[i].name : v->backends[i];
            if (pass == 1 && slot_find((gw_m_slot_names *)m->be_names, name, false) >= 0)
                continue;
            static const char *const results[] = {"ok", "failed", "busy"};
            for (int r = 0; r < 3; r++) {
                gw_sbuf_str(o, "ftpsgate_backend_connects_total{backend=\"");
                gw_sbuf_label(o, name);
                unsigned long long val = pass == 1 ? 0
                                         : r == 0  ? GET(m->be[i].connects_ok)
                                         : r == 1  ? GET(m->be[i].connects_failed)
                                                   : GET(m->be[i].connects_busy);
                gw_sbuf_printf(o, "\",result=\"%s\"} %llu\n", results[r], val);
            }
        }
    }
    family(o, "ftpsgate_backend_connect_seconds", "histogram",
           "Time from connect to the backend's greeting.");
    for (int i = 0; i < used; i++)
        hist_render(o, "ftpsgate_backend_connect_seconds", "backend", m->be_names[i].name,
                    &m->be[i].connect, connect_le, GW_M_CONNECT_BUCKETS);
}

static void render_tls(const gw_metrics *m, gw_sbuf *o)
{
    static const char *const sides[GW_M_SIDES] = {"client", "backend", "data"};
    family(o, "ftpsgate_tls_handshakes_total", "counter",
           "TLS handshakes by side (client, backend, data), result and version.");
    for (int s = 0; s < GW_M_SIDES; s++)
        for (int v = 0; v < GW_M_TLSV; v++) {
            uint64_t n = GET(m->tls[s][v]);
            /* Always the common ones, the rest once seen. */
            if (n == 0 && v != GW_M_TLS_NONE && v != GW_M_TLS12 && v != GW_M_TLS13)
                continue;
            gw_sbuf_printf(o,
                           "ftpsgate_tls_handshakes_total{side=\"%s\",result=\"%s\","
                           "version=\"%s\"} %llu\n",
                           sides[s], v == GW_M_TLS_NONE ? "failed" : "ok", tls_version_names[v],
                           (unsigned long long)n);
        }
}

static void render_transfers(const gw_metrics *m, gw_sbuf *o)
{
    static const char *const dirs[2] = {"download", "upload"};
    static const char *const results[GW_M_XFER_RESULTS] = {"ok", "failed", "aborted"};
    family(o, "ftpsgate_transfers_total", "counter",
           "Finished transfers by direction (download, upload) and result.");
    for (int d = 0; d < 2; d++)
        for (int r = 0; r < GW_M_XFER_RESULTS; r++)
            gw_sbuf_printf(o, "ftpsgate_transfers_total{direction=\"%s\",result=\"%s\"} %llu\n",
                           dirs[d], results[r], (unsigned long long)GET(m->transfers[d][r]));
    family(o, "ftpsgate_transfer_bytes_total", "counter",
           "Bytes of finished transfers by direction.");
    for (int d = 0; d < 2; d++)
        gw_sbuf_printf(o, "ftpsgate_transfer_bytes_total{direction=\"%s\"} %llu\n", dirs[d],
                       (unsigned long long)GET(m->transfer_bytes[d]));
    family(o, "ftpsgate_transfer_duration_seconds", "histogram",
           "Transfer duration, from the transfer command to its last byte.");
    hist_render(o, "ftpsgate_transfer_duration_seconds", NULL, NULL, &m->transfer_duration, xfer_le,
                GW_M_XFER_BUCKETS);
    static const char *const reasons[GW_M_REFUSED_REASONS] = {"not_resumed", "foreign_address",
                                                              "timeout"};
    family(o, "ftpsgate_data_connections_refused_total", "counter",
           "Data connections refused or never made, by reason.");
    for (int r = 0; r < GW_M_REFUSED_REASONS; r++)
        gw_sbuf_printf(o, "ftpsgate_data_connections_refused_total{reason=\"%s\"} %llu\n",
                       reasons[r], (unsigned long long)GET(m->refused[r]));
}

static void render_pasv(const gw_metrics *m, gw_sbuf *o)
{
    int used = slots_used(m->range_names);
    family(o, "ftpsgate_pasv_ports_in_use", "gauge", "Passive data ports taken, per range.");
    for (int i = 0; i < used; i++) {
        series1(o, "ftpsgate_pasv_ports_in_use", "range", m->range_names[i].name);
        gw_sbuf_printf(o, " %lld\n", (long long)GET(m->range[i].in_use));
    }
    family(o, "ftpsgate_pasv_ports_exhausted_total", "counter",
           "PASV/EPSV answered without a port: the range had none free.");
    for (int i = 0; i < used; i++) {
        series1(o, "ftpsgate_pasv_ports_exhausted_total", "range", m->range_names[i].name);
        gw_sbuf_printf(o, " %llu\n", (unsigned long long)GET(m->range[i].exhausted));
    }
    /* The size of each range, so that alerts can compare in_use with it. */
    family(o, "ftpsgate_pasv_ports_capacity", "gauge", "Passive data ports in each range.");
    for (int i = 0; i < used; i++) {
        unsigned lo, hi;
        if (sscanf(m->range_names[i].name, "%u-%u", &lo, &hi) != 2 || hi < lo)
            continue;
        series1(o, "ftpsgate_pasv_ports_capacity", "range", m->range_names[i].name);
        gw_sbuf_printf(o, " %u\n", hi - lo + 1);
    }
}

static void render_policy(const gw_metrics_view *v, gw_sbuf *o)
{
    family(o, "ftpsgate_bans_active", "gauge", "Client addresses banned right now.");
    gw_sbuf_printf(o, "ftpsgate_bans_active %llu\n", (unsigned long long)v->bans_active);
    family(o, "ftpsgate_data_reuse_exempt_total", "counter",
           "Data TLS handshakes let in without resumption by data_session_reuse_exempt.");
    gw_sbuf_printf(o, "ftpsgate_data_reuse_exempt_total %llu\n",
                   (unsigned long long)v->data_reuse_exempt);
    family(o, "ftpsgate_data_tls_sibling_resumptions_total", "counter",
           "Data TLS handshakes accepted resuming the session of another control connection "
           "of the same user, backend and client address.");
    gw_sbuf_printf(o, "ftpsgate_data_tls_sibling_resumptions_total %llu\n",
                   (unsigned long long)v->data_sibling);
    family(o, "ftpsgate_tls_sibling_registry_bytes", "gauge",
           "Memory of the registry of control connections whose sessions siblings may "
           "resume (kept 10 minutes after a logged-in session ends).");
    gw_sbuf_printf(o, "ftpsgate_tls_sibling_registry_bytes %llu\n",
                   (unsigned long long)v->sibling_bytes);
    if (!v->shared_port)
        return;
    family(o, "ftpsgate_shared_port_connections_total", "counter",
           "Connections to a pasv_shared_port by how they were matched to a session.");
    const char *how[] = {"resumption", "address", "unmatched"};
    uint64_t n[] = {v->shport_resumption, v->shport_address, v->shport_unmatched};
    for (int i = 0; i < 3; i++)
        gw_sbuf_printf(o, "ftpsgate_shared_port_connections_total{match=\"%s\"} %llu\n", how[i],
                       (unsigned long long)n[i]);
    family(o, "ftpsgate_shared_port_pasv_elsewhere_total", "counter",
           "PASV/EPSV that could not use the shared port: a pasv_ports port, or refused (425).");
    gw_sbuf_printf(o, "ftpsgate_shared_port_pasv_elsewhere_total{result=\"range\"} %llu\n",
                   (unsigned long long)v->shport_fallback);
    gw_sbuf_printf(o, "ftpsgate_shared_port_pasv_elsewhere_total{result=\"refused\"} %llu\n",
                   (unsigned long long)v->shport_refused);
}

void gw_metrics_render(const gw_metrics *m, const gw_metrics_view *v, gw_sbuf *o)
{
    family(o, "ftpsgate_build_info", "gauge", "Versions of ftpsgate and its libraries.");
    gw_sbuf_str(o, "ftpsgate_build_info{version=\"");
    gw_sbuf_label(o, v->version ? v->version : "");
    gw_sbuf_str(o, "\",openssl=\"");
    gw_sbuf_label(o, v->openssl ? v->openssl : "");
    gw_sbuf_str(o, "\",libuv=\"");
    gw_sbuf_label(o, v->libuv ? v->libuv : "");
    gw_sbuf_str(o, "\"} 1\n");
    render_frontends(m, v, o);
    render_rate_limited(m, o);
    render_tls(m, o);
    render_transfers(m, o);
    render_pasv(m, o);
    render_backends(m, v, o);
    family(o, "ftpsgate_bans_total", "counter", "Client addresses banned.");
    gw_sbuf_printf(o, "ftpsgate_bans_total %llu\n", (unsigned long long)GET(m->bans));
    render_policy(v, o);
    family(o, "ftpsgate_reloads_total", "counter", "Configuration reloads by result.");
    gw_sbuf_printf(o, "ftpsgate_reloads_total{result=\"ok\"} %llu\n",
                   (unsigned long long)GET(m->reloads_ok));
    gw_sbuf_printf(o, "ftpsgate_reloads_total{result=\"failed\"} %llu\n",
                   (unsigned long long)GET(m->reloads_failed));
    family(o, "ftpsgate_fd_limit_events_total", "counter",
           "Times the descriptor limit was reached (accepts or connects failed with EMFILE).");
    gw_sbuf_printf(o, "ftpsgate_fd_limit_events_total %llu\n",
                   (unsigned long long)GET(m->fd_limit_events));
    family(o, "ftpsgate_admin_requests_total", "counter", "Requests to the admin endpoint.");
    gw_sbuf_printf(o, "ftpsgate_admin_requests_total %llu\n",
                   (unsigned long long)GET(m->admin_requests));
    family(o, "ftpsgate_admin_deadline_total", "counter",
           "Admin requests cut at their total deadline (headers, body and answer).");
    gw_sbuf_printf(o, "ftpsgate_admin_deadline_total %llu\n",
                   (unsigned long long)GET(m->admin_deadline_cuts));
    family(o, "ftpsgate_admin_auth_failures_total", "counter",
           "Admin requests refused for wrong or unknown credentials (admin_users).");
    gw_sbuf_printf(o, "ftpsgate_admin_auth_failures_total %llu\n",
                   (unsigned long long)GET(m->admin_auth_failed));
}
