/* The HTTP admin endpoint ([global] admin_listen): /metrics, /healthz, /readyz, /sessions,
 * /sessions/ID and an HTML status page at /; the runtime API (POST /backends/NAME/state,
 * DELETE /sessions/ID); basic auth (admin_users) and HTTPS (admin_tls_cert/key). libmicrohttpd
 * serves it on a thread of its own; metrics are read from the process-wide atomics (metrics.h), and
 * live sessions are copied out by each worker on its own loop (a message to its mailbox, worker.h)
 * while the HTTP thread waits. */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include "config.h"
#include "health.h"

/* Start serving when cfg->admin_listen is set (read at start only). 0, or -1 with a message
 * (the address cannot be bound). */
int gw_admin_start(const gw_config *cfg, gw_health *health, char *err, size_t cap);
/* -t and start (before binding): the admin_users file loads and is private, the HTTPS
 * certificate and key files load. 0, or -1 with *key (the key at fault) and a problem. */
int gw_admin_check(const gw_config *cfg, const char **key, char *err, size_t cap);
/* The configuration the status page and /readyz describe (at start and after each reload). */
void gw_admin_config(const gw_config *cfg);
/* A stop was requested: /readyz answers 503 from now on. */
void gw_admin_set_stopping(void);
/* After the workers are done. */
void gw_admin_stop(void);
/* Hitless upgrade (upgrade.c): the listening socket to hand over (-1: none), and, once the
 * new process serves, stop accepting without closing the socket for it (no shutdown(2)). */
int gw_admin_listen_fd(void);
void gw_admin_quiesce(void);

#endif
