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
/* TLS of the two data legs; a NULL context means that leg is in clear. */
typedef struct gw_data_tls {
    SSL_CTX *client_ctx;     /* PROT P toward the client: the gateway is the TLS server */
    const uint8_t *tag;      /* the client control session's tag, for the resumption check */
    bool reuse_required;     /* data_session_reuse = required */
    gw_tls *backend_engine;  /* PROT P toward the backend: a client engine, owned by data */
} gw_data_tls;

/* The transfer command was forwarded: connect to the backend, relay when both legs are up. */
void gw_data_start(gw_data *d, const gw_addr *backend, bool upload, const gw_data_tls *tls);
/* The session lets go. ok: the transfer finished, let shut legs linger until the peer's
 * close. Otherwise abort: the backend leg of an unfinished upload is reset so that the
 * backend cannot report success for a truncated file. The object frees itself. */
void gw_data_release(gw_data *d, bool ok);
bool gw_data_usable(const gw_data *d); /* listener still open or client already connected */

#endif
