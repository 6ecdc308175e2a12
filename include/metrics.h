/* Process-wide metrics: counters, gauges and histograms in one struct of C11 atomics
 * (relaxed), written by every worker and read by the admin thread without locks. Labelled
 * series by frontend, backend and passive range live in small fixed tables keyed by name: a
 * slot is claimed once (under a mutex) and survives reloads, so counters stay monotonic.
 * Pure: no libuv, no OpenSSL. Exposition in Prometheus text format 0.0.4. */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include "admin_text.h"

#define GW_M_SLOTS 64 /* frontends, backends and passive ranges each; more share no series */
#define GW_M_NAME 64

enum gw_m_side { GW_M_CLIENT, GW_M_BACKEND, GW_M_DATA, GW_M_SIDES };
/* Handshake versions: index 0 is a failed handshake ("none"). */
enum { GW_M_TLS_NONE, GW_M_TLS10, GW_M_TLS11, GW_M_TLS12, GW_M_TLS13, GW_M_TLS_OTHER, GW_M_TLSV };
enum gw_m_xfer_result { GW_M_XFER_OK, GW_M_XFER_FAILED, GW_M_XFER_ABORTED, GW_M_XFER_RESULTS };
enum gw_m_refused {
    GW_M_REFUSED_NOT_RESUMED,
    GW_M_REFUSED_FOREIGN_ADDRESS,
    GW_M_REFUSED_TIMEOUT,
    GW_M_REFUSED_REASONS
};

#define GW_M_XFER_BUCKETS 10
#define GW_M_CONNECT_BUCKETS 10

typedef struct gw_m_hist {
    _Atomic uint64_t bucket[GW_M_XFER_BUCKETS]; /* non-cumulative; the last is +Inf */
    _Atomic uint64_t count, sum_us;
} gw_m_hist;

typedef struct gw_m_frontend {
    _Atomic int64_t sessions_active;
    _Atomic uint64_t sessions_total, logins_ok, logins_failed;
    _Atomic uint64_t policy_refused; /* commands a [policy] refused (gw_metric_policy_refused) */
    _Atomic uint64_t rate_limited_ns[2]; /* relays paused by a bandwidth limit: down, up */
} gw_m_frontend;

typedef struct gw_m_backend {
    _Atomic uint64_t connects_ok, connects_failed;
    _Atomic uint64_t connects_busy; /* greeted 4xx (max_clients reached): not a failure */
    gw_m_hist connect;
} gw_m_backend;

typedef struct gw_m_range {
    _Atomic int64_t in_use;
    _Atomic uint64_t exhausted;
} gw_m_range;

typedef struct gw_m_slot_names {
    _Atomic int used; /* claimed; name is written before used is set (release) */
    char name[GW_M_NAME];
} gw_m_slot_names;

typedef struct gw_metrics {
    gw_m_slot_names fe_names[GW_M_SLOTS], be_names[GW_M_SLOTS], range_names[GW_M_SLOTS];
    gw_m_frontend fe[GW_M_SLOTS];
    gw_m_backend be[GW_M_SLOTS];
    gw_m_range range[GW_M_SLOTS];
    _Atomic uint64_t tls[GW_M_SIDES][GW_M_TLSV];      /* [side][version]; [..][NONE] = failed */
    _Atomic uint64_t transfers[2][GW_M_XFER_RESULTS]; /* [upload][result] */
    _Atomic uint64_t transfer_bytes[2];               /* [upload] */
    gw_m_hist transfer_duration;
    _Atomic uint64_t refused[GW_M_REFUSED_REASONS];
    _Atomic uint64_t bans; /* the ban list counts here (gw_metric_ban) */
    _Atomic uint64_t reloads_ok, reloads_failed;
    _Atomic uint64_t fd_limit_events;
    _Atomic uint64_t admin_requests;
    _Atomic uint64_t admin_deadline_cuts; /* requests cut at their total deadline */
    _Atomic uint64_t admin_auth_failed;   /* basic auth refused (admin_users) */
} gw_metrics;

extern gw_metrics gw_metrics_g;

/* Hooks: one call at each place where the event happens. Names may be NULL (ignored). */
void gw_metric_session_start(const char *frontend);
void gw_metric_session_end(const char *frontend);
/* Virtual hosts: the session moved from one frontend to another. */
void gw_metric_session_move(const char *from, const char *to);
void gw_metric_login(const char *frontend, bool ok);
void gw_metric_policy_refused(const char *frontend);
/* A relay of this frontend waited ns for a bandwidth limit's tokens. */
void gw_metric_rate_limited(const char *frontend, bool upload, uint64_t ns);
/* version: OpenSSL's name ("TLSv1.3"), ignored when !ok. */
void gw_metric_tls(enum gw_m_side side, bool ok, const char *version);
/* A connection's handshake by its gw_conn name: "client" (control), "backend" (control),
 * "client-data"/"backend-data" (data); others (health probes) are not counted. describe:
 * gw_tls_describe ("TLSv1.3/cipher") when ok. */
void gw_metric_tls_conn(const char *conn_name, bool ok, const char *describe);
void gw_metric_transfer(bool upload, enum gw_m_xfer_result result, uint64_t bytes,
                        uint64_t duration_ms);
void gw_metric_data_refused(enum gw_m_refused reason);
/* Passive ports of the range lo-hi: delta +1 taken, -1 given back; exhausted: none free. */
void gw_metric_pasv(unsigned lo, unsigned hi, int delta);
void gw_metric_pasv_exhausted(unsigned lo, unsigned hi);
void gw_metric_backend_connect(const char *backend, bool ok, uint64_t ms);
/* A session's connect greeted 4xx: the backend is busy (counted as result="busy"). */
void gw_metric_backend_busy(const char *backend);
void gw_metric_reload(bool ok);
void gw_metric_fd_limit(void);
void gw_metric_ban(void);

/* What the exposition needs from outside: the current configuration's names (their series
 * are shown even at zero) and backend health. */
typedef struct gw_metrics_view {
    int n_frontends;
    const char *const *frontends;
    int n_backends;
    const char *const *backends;
    const bool *backend_up;
    const int *backend_admin; /* enum gw_be_admin per backend; NULL: all ready */
    const char *version, *openssl, *libuv;
    /* Counted by the modules above this one (bans.h, data.h, shared_port.h). */
    uint64_t bans_active;
    uint64_t data_reuse_exempt;
    uint64_t data_sibling;  /* data TLS resumptions of a sibling's session (data.h) */
    uint64_t sibling_bytes; /* memory of the sibling registry (siblings.h) */
    bool shared_port;       /* some frontend has pasv_shared_port: its counters follow */
    uint64_t shport_resumption, shport_address, shport_unmatched, shport_fallback, shport_refused;
} gw_metrics_view;

/* Prometheus text format 0.0.4, HELP and TYPE for every family. */
void gw_metrics_render(const gw_metrics *m, const gw_metrics_view *v, gw_sbuf *out);

#endif
