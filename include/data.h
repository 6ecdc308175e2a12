/* Data channels: each transfer has a client leg and a backend leg, each passive (the gateway
 * listens) or active (the gateway connects), the two-leg relay with backpressure, and
 * EOF/close_notify ordering. */
#ifndef GW_DATA_H
#define GW_DATA_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "ftp_addr.h"
#include "pasv_pool.h"
#include "rate.h"
#include "shared_port.h"
#include "tls.h"

typedef struct gw_data gw_data;

/* How the data legs of a transfer ended; the owner maps it to the client's reply. */
enum gw_data_result {
    GW_DATA_OK,
    GW_DATA_ABORTED,    /* a leg broke: 426 */
    GW_DATA_TIMEOUT,    /* no progress for data_timeout: 426 */
    GW_DATA_UNSAFE_EOF, /* upload delivered, but ended without close_notify (strict_tls_eof): 426 */
    GW_DATA_NOT_RESUMED,    /* data TLS did not resume this control session: 522 */
    GW_DATA_CLIENT_FAILED,  /* the client's leg could not be opened: 425 */
    GW_DATA_BACKEND_FAILED, /* the backend's leg could not be opened: 425 */
};

/* Called once per transfer when its legs are done; bytes: payload that reached the
 * destination. Never called after gw_data_release. */
typedef void (*gw_data_done_cb)(void *owner, enum gw_data_result result, uint64_t bytes);

typedef struct gw_data_limits {
    uint64_t connect_timeout_ms; /* data_connect_timeout */
    uint64_t data_timeout_ms;    /* data_timeout */
    enum gw_splice_mode splice;
    /* Optional: true when the client's control connection is gone (or going), asked when
     * an upload ends without a close_notify to prove it: such an upload is cut, not done. */
    bool (*client_gone)(void *owner);
    /* Bandwidth limits by direction (rate.h); the keys (user and frontend names) are
     * copied. */
    gw_rate_spec rate_down, rate_up;
} gw_data_limits;

/* TLS of the two data legs; a NULL context or engine means that leg is in clear. */
typedef struct gw_data_tls {
    SSL_CTX *client_ctx;        /* PROT P toward the client: the gateway is the TLS server */
    const uint8_t *tag;         /* the client control session's tag, for the resumption check */
    bool reuse_required;        /* data_session_reuse = required */
    bool strict_eof;            /* strict_tls_eof: a protected upload must end with close_notify */
    bool reuse_exempt;          /* data_session_reuse_exempt: this client may skip resumption */
    const uint8_t *cert_sha256; /* the control connection's client certificate, NULL: none */
    gw_tls *backend_engine;     /* PROT P toward the backend: a client engine, owned by data */
} gw_data_tls;

/* Cut uploads whose backend leg waits for its reset (gw_data_release), process-wide: a
 * stopping worker lets them go out before it closes its loop. */
int gw_data_resets_pending(void);
/* Data channels not freed yet, process-wide: released ones linger (LINGER_MS at most)
 * until their peers close; a stopping worker waits for them. */
int gw_data_live(void);
/* A stopping worker whose sessions are gone: every data channel of its loop is closed now
 * (repeated while some are left: at most 64 a call). */
void gw_data_cut_all(uv_loop_t *loop);

/* Data connections opened without resumption under data_session_reuse_exempt, process-wide
 * (for metrics). */
uint64_t gw_data_reuse_exempt_count(void);
/* Data connections accepted resuming a sibling control connection's session (siblings.h),
 * process-wide (for metrics). */
uint64_t gw_data_sibling_count(void);

gw_data *gw_data_new(uv_loop_t *loop, uint64_t sid, const gw_data_limits *lim, gw_data_done_cb done,
                     void *owner);
/* Client leg, passive: listen on bind_addr with a port from the pool (written back). 0 or -1
 * when no port is free. Only `expect` (the control peer) may connect. */
int gw_data_client_passive(gw_data *d, gw_addr *bind_addr, gw_pasv_pool *pool,
                           const gw_addr *expect);
/* Client leg, passive on the frontend's shared port: wait there for the connection the
 * shared port matches to this session. 0, or -1 when the gateway cannot guarantee the
 * match now (the caller uses pasv_ports, or refuses). */
int gw_data_client_shared(gw_data *d, const gw_shport_want *w, const gw_addr *expect);
/* The client's TLS data connection: 1 resumed the control session, -1 it did not, 0 no TLS
 * handshake finished (yet). */
int gw_data_client_resumed(const gw_data *d);
/* Client leg, passive, behind a load balancer (proxy_protocol_data): the connection must
 * come from an address in `from` (a CIDR list, read at accept time: it must outlive the
 * listener) and start with a PROXY header of the versions in mode (proxy_proto.h) whose
 * source is `expect`; the data leg proceeds once it is read. */
void gw_data_client_proxy(gw_data *d, int mode, const char *from);
/* Client leg, active: connect to `to` from `from` (port 0: any) when the transfer starts. */
void gw_data_client_active(gw_data *d, const gw_addr *to, const gw_addr *from);
/* Backend leg, active: listen on bind_addr (port written back); only `expect` may connect. */
int gw_data_backend_active(gw_data *d, gw_addr *bind_addr, const gw_addr *expect);
/* Backend leg, passive: connect to `to` now, as a client would right after the 227/229
 * (servers with a short accept window refuse late connections); TLS starts with the
 * transfer. 0, or -1 when the connect cannot even be started. */
int gw_data_backend_passive(gw_data *d, const gw_addr *to);
/* Deferred upload (PROTOCOL.md §5): what the client leg reports before the backend is
 * told of the transfer. CONNECTED: its TCP connection exists and its TLS handshake is about
 * to run (TLS legs only); READY: handshake, resumption and source checks passed. */
enum gw_data_leg_event { GW_DATA_CLIENT_CONNECTED, GW_DATA_CLIENT_READY };
typedef void (*gw_data_leg_cb)(void *owner, enum gw_data_leg_event ev);
/* Before gw_data_start: the backend leg stays untouched until gw_data_backend_go. */
void gw_data_defer_backend(gw_data *d, gw_data_leg_cb cb);
/* The deferred transfer command reached the backend: its data leg may open now. */
void gw_data_backend_go(gw_data *d);
/* Released now (not ok), the server ends the transfer by itself with one final reply: it
 * holds its data connection, or a download's will still be accepted and ended by a FIN. */
bool gw_data_server_ends(const gw_data *d);
/* The transfer command was forwarded: open what is still closed, relay when both are up. */
void gw_data_start(gw_data *d, bool upload, const gw_data_tls *tls);
/* The session lets go. ok: the transfer finished, let shut legs linger until the peer's
 * close. Otherwise abort: both legs are reset so that neither peer can take a cut-off
 * transfer for a complete one. The object frees itself. */
void gw_data_release(gw_data *d, bool ok);
/* Still able to carry a transfer (listeners open or legs connected). */
bool gw_data_usable(const gw_data *d);

/* The bandwidth limit in force on the running transfer: the tightest rate (0: none), the
 * measured rate (bytes/s) and the time spent waiting for tokens. false: no limit applies. */
typedef struct gw_data_rate_info {
    uint64_t limit, current, limited_ms;
} gw_data_rate_info;
bool gw_data_rate(const gw_data *d, gw_data_rate_info *out);

/* Payload bytes that reached the destination so far (the admin endpoint's live view). */
uint64_t gw_data_progress(const gw_data *d);

#endif
