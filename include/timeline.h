/* A session's recent history for the admin endpoint (/sessions/ID): a small ring of events
 * with wall-clock timestamps, kept inside the session (GW_TL_EVENTS x ~96 bytes), and the
 * summary of a live session (/sessions). Pure: no libuv, no OpenSSL. */
#ifndef GW_TIMELINE_H
#define GW_TIMELINE_H

#include <stdbool.h>
#include <stdint.h>
#include "admin_text.h"

#define GW_TL_EVENTS 16
#define GW_TL_DETAIL 84

enum gw_tl_kind {
    GW_TL_CONNECT,
    GW_TL_HANDSHAKE,
    GW_TL_BACKEND,
    GW_TL_COMMAND,
    GW_TL_LOGIN,
    GW_TL_LOGIN_FAILED,
    GW_TL_DATA,
    GW_TL_TRANSFER,
    GW_TL_REPLY_FAILED,
    GW_TL_CLOSE,
    GW_TL_KINDS
};

typedef struct gw_tl_event {
    uint64_t ms; /* wall clock, milliseconds since the epoch */
    uint8_t kind;
    char detail[GW_TL_DETAIL];
} gw_tl_event;

typedef struct gw_timeline {
    uint32_t total; /* events ever added; the ring keeps the last GW_TL_EVENTS */
    gw_tl_event ev[GW_TL_EVENTS];
} gw_timeline;

uint64_t gw_tl_wall_ms(void);
/* Add an event (detail printf-style, cut at GW_TL_DETAIL-1, control characters replaced). */
void gw_tl_add(gw_timeline *t, enum gw_tl_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A client command: PASS (and ACCT) arguments are replaced by "****".
 * SECURITY: the password never reaches the ring. */
void gw_tl_command(gw_timeline *t, const char *verb, const char *arg);
/* A live session's states by name, as its worker saw them (/sessions/ID): the client
 * leg, the backend connection's set-up step, what is pending toward the backend, and the
 * data channel or transfer (none, arming, armed, deferred, running, final_reply, aborting). */
typedef struct gw_sess_states {
    char client[16], backend[16], pending[16], transfer[16];
} gw_sess_states;

/* {"id":N,"state":{"client":..,"backend":..,"pending":..,"transfer":..},"events_total":N,
 * "events":[{"time":"2026-...Z","event":"command","detail":"..."},...]}; st NULL: no
 * "state". */
void gw_tl_json(const gw_timeline *t, uint64_t id, const gw_sess_states *st, gw_sbuf *out);
const char *gw_tl_kind_name(int kind);

/* One live session as /sessions shows it (copied out on the session's worker). */
typedef struct gw_sess_summary {
    uint64_t id;
    int worker;
    char frontend[64], backend[64], client[64], user[64], state[24], tls[48];
    uint64_t age_s, idle_s;
    bool in_transfer;
    char verb[8];
    char file[256];
    uint64_t bytes;
    /* Bandwidth limits in force (bytes/s, 0: none): [0] down, [1] up, each the session's,
     * the user's and the frontend's; on the running transfer the tightest rate applied to
     * it (its fair share of shared ones) and the rate measured. */
    bool has_rates;
    uint64_t rate_limits[2][3];
    bool rate_running;
    uint64_t rate_limit, rate_current, rate_limited_ms;
} gw_sess_summary;

void gw_sess_summary_json(const gw_sess_summary *s, gw_sbuf *out);

#endif
