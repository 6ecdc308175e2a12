/* Inside a transfer's data channels: the gw_data struct and what proxy/data.c (the legs,
 * the relay, EOF ordering, the state) and proxy/data_accept.c (the gateway's listeners for
 * data connections: the client's passive port, the shared port's hand-off, the backend's
 * active mode, PROXY headers) call of each other. Nothing else includes it. */
#ifndef GW_DATA_INT_H
#define GW_DATA_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "conn.h"
#include "data.h"
#include "proxy_proto.h"
#include "splice.h"
#include "tls.h"

enum data_state {
    DS_ARMED,
    DS_STARTED,
    DS_STREAMING,
    DS_DRAINING,
    DS_DONE,
    DS_ABANDONED, /* released before DONE */
    DS_RELEASED,  /* released after DONE */
    DS_FREEING,   /* nothing left open: the timer's close frees the object */
};

/* Per-leg facts (gw_data.legs). */
enum {
    LEG_CLIENT_UP = 1u << 0,         /* connected and, with TLS, handshake done */
    LEG_BACKEND_UP = 1u << 1,        /* likewise */
    LEG_BACKEND_CONNECTED = 1u << 2, /* TCP connected or accepted */
};

struct data_rate; /* bandwidth limits (data.c); NULL when none applies */

struct gw_data {
    gw_data_done_cb done; /* the owner's callback; NULL once released by the owner */
    void *owner;
    uv_loop_t *loop;
    uint64_t sid;
    uv_tcp_t *client_listener, *backend_listener;
    gw_pasv_pool *pool; /* the client listener's port comes from here */
    uint16_t client_port;
    gw_conn *client, *backend;
    gw_splice *splice; /* both legs clear: the relay runs in the kernel */
    int strays;        /* refused connections still closing */
    uv_timer_t *timer;
    gw_addr expect_client, expect_backend; /* who may connect to our listeners */
    gw_addr client_to, client_from;        /* client leg active: connect there from here */
    SSL_CTX *tls_ctx;
    gw_tls *backend_engine; /* attached once the backend data connection is open */
    uint8_t tag[GW_TLS_TAG_LEN];
    uint64_t shared_id; /* waiting on the shared port (gw_shport_wait), 0 when not */
    int client_resumed; /* see gw_data_client_resumed */
    uint64_t last_progress, connect_timeout_ms, data_timeout_ms;
    enum data_state state;
    unsigned legs; /* per-leg facts: LEG_* */
    /* configuration of this transfer */
    bool client_active, backend_passive, upload, reuse_required, strict_eof;
    bool eof_settled, eof_clean;      /* an upload's bare FIN waited for the control's (data.c) */
    bool reset_backend;               /* released: reset (not close) the backend leg at the timer */
    bool (*client_gone)(void *owner); /* gw_data_limits.client_gone */
    bool reuse_exempt, has_cert; /* TLS policy: data_session_reuse_exempt, client certificate */
    uint8_t cert_sha256[32];
    enum gw_splice_mode splice_mode;
    /* A download released before it streamed: the server gets (or keeps) its data
     * connection and ends the transfer on it, with one final reply (gw_data_release). */
    bool started, streamed, hand_over;
    gw_data *live_prev, *live_next; /* the process-wide list (gw_data_cut_all) */
    /* deferred upload: the backend leg waits for gw_data_backend_go; leg_cb tells the owner */
    bool defer_backend;
    gw_data_leg_cb leg_cb;
    /* proxy_protocol_data: the client leg's PROXY header (gw_data_client_proxy) */
    int pp_mode;
    const char *pp_from;
    gw_conn *pp_conn; /* accepted, its header being read (counted in strays) */
    gw_pp_reader *pp;
    struct data_rate *rate;
};

/* data.c */
bool data_released(const gw_data *d); /* the owner let go (RELEASED, ABANDONED, FREEING) */
void data_maybe_free(gw_data *d);     /* frees d once nothing of it is open */
void data_close_listener(gw_data *d, uv_tcp_t *l);
void data_fail(gw_data *d, enum gw_data_result result, const char *why);
void data_start_client_leg(gw_data *d);  /* the client leg is open: TLS or relay */
void data_start_backend_leg(gw_data *d); /* likewise the backend leg */
void data_hand_over_backend(gw_data *d); /* released download: let the server end it */
extern const gw_conn_ops data_client_leg_ops, data_backend_leg_ops;

#endif
