/* One client session, opaque outside the session files (proxy/session.c, backend.c,
 * client_cmd.c, reply_dispatch.c, transfer.c, session_info.c): the listener accepts the
 * client's connection, counts it against the limits and hands it over; the session tells it
 * through its hooks when it has ended. */
#ifndef GW_SESSION_H
#define GW_SESSION_H

#include <stdint.h>
#include <uv.h>
#include "conn.h"
#include "ftp_addr.h"
#include "generation.h"
#include "timeline.h"

typedef struct gw_session gw_session;

typedef struct gw_session_hooks {
    /* The session is gone (its last handle closed, its memory freed): called once. */
    void (*on_end)(void *host);
} gw_session_hooks;

/* Serve client, accepted on a listener of fe (peer: its normalised address, or the PROXY
 * header's source; local: the socket's local address; reached: the address the client
 * connected to, the PROXY header's destination, else local): the session takes the
 * connection over (its callbacks and owner) and a reference to fe's generation. NULL when
 * out of memory: client is still the caller's and nothing else happened. */
gw_session *gw_session_start(gw_frontend *fe, uv_loop_t *loop, uint64_t id, gw_conn *client,
                             const gw_addr *peer, const gw_addr *local, const gw_addr *reached,
                             const gw_session_hooks *hooks, void *host);
/* End the session with 421 (graceful stop after shutdown_grace). Its end is reported later,
 * through on_end. */
void gw_session_close(gw_session *s, const char *why);

/* The admin endpoint (session_info.c), on the session's worker thread only. */
uint64_t gw_session_get_id(const gw_session *s);
void gw_session_summarize(gw_session *s, gw_sess_summary *out);
/* Its timeline, and its states by name (client, backend set-up step, pending, transfer). */
void gw_session_timeline(gw_session *s, gw_timeline *out, gw_sess_states *states);

#endif
