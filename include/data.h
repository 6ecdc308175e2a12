/* Data channels: the passive listener toward the client, the connection to the backend, and
 * the two-leg relay with backpressure and EOF/close_notify ordering. */
#ifndef GW_DATA_H
#define GW_DATA_H

#include <stdbool.h>
#include "ftp_addr.h"
#include "pasv_pool.h"
#include "tls.h"

struct gw_session;
typedef struct gw_data gw_data;

/* Open a passive listener for the client on bind_addr (port from the pool, written back).
 * NULL when no port is free. */
gw_data *gw_data_listen(struct gw_session *s, gw_addr *bind_addr, gw_pasv_pool *pool);
/* The transfer command was forwarded: connect to the backend, relay when both legs are up.
 * tls_ctx non-NULL: the client leg is TLS (PROT P). */
void gw_data_start(gw_data *d, const gw_addr *backend, bool upload, SSL_CTX *tls_ctx,
                   const uint8_t *session_tag, bool reuse_required);
/* The session lets go. ok: the transfer finished, let shut legs linger until the peer's
 * close. Otherwise abort: the backend leg of an unfinished upload is reset so that the
 * backend cannot report success for a truncated file. The object frees itself. */
void gw_data_release(gw_data *d, bool ok);
bool gw_data_usable(const gw_data *d); /* listener still open or client already connected */

#endif
