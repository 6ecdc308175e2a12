/* One client session, opaque outside the session files (proxy/session*.c, backend.c,
 * client_cmd.c, relay.c): the listener hands it an accepted connection, shutdown ends it. */
#ifndef GW_SESSION_H
#define GW_SESSION_H

#include <uv.h>
#include "server.h"

typedef struct gw_session gw_session;


void gw_session_accept(gw_frontend *fe, uv_stream_t *listener);
/* End every live session with 421 (graceful stop after shutdown_grace). */
void gw_session_close_all(gw_server *srv, const char *why);

#endif
