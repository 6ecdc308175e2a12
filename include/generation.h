/* Configuration generations. A generation (the config plus, per frontend, its TLS contexts,
 * resolved addresses and port pool, and the transfer log) is immutable; SIGHUP builds a new
 * one for new sessions while live sessions keep a reference to theirs. */
#ifndef GW_GENERATION_H
#define GW_GENERATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "config.h"
#include "ftp_addr.h"
#include "health.h"
#include "pasv_pool.h"
#include "tls.h"

typedef struct gw_generation gw_generation;

typedef struct gw_frontend {
    const gw_frontend_conf *conf;
    const gw_backend_conf *backend;
    const gw_config *cfg; /* the generation's whole configuration */
    gw_generation *gen;
    SSL_CTX *tls_ctx;         /* client-facing, NULL on plain frontends */
    SSL_CTX *backend_tls_ctx; /* toward the backend, NULL when its tls = none */
    const char *backend_host; /* SNI and certificate name (sni, else the address host) */
    gw_addr pasv_addr;        /* family 0: advertise the control connection's local address */
    gw_addr backend_addr;     /* an IP literal's address; for a name, the last resolution */
    bool backend_by_name;     /* the backend address is a host name: resolved per session */
    gw_pasv_pool *pool;
} gw_frontend;

struct gw_generation {
    gw_config cfg;
    int xferlog_fd; /* -1: no transfer log */
    /* Backends that answered EPSV/EPRT with 500/501/502: PASV/PORT from then on. */
    bool no_extended[GW_MAX_BACKENDS];
    int refs; /* 1 while current, plus one per live session */
    /* The process's backend health (gw_health_is_up, gw_health_report from any worker);
     * set by the listener when it builds the generation, NULL when there is none. Not
     * owned: it outlives every generation. */
    gw_health *health;
    int n_frontends;
    gw_frontend frontends[GW_MAX_FRONTENDS];
};

/* A generation for cfg (copied): every frontend prepared (addresses resolved, TLS contexts,
 * port pools), the transfer log opened. Its one reference is the caller's. NULL with a
 * message in err. */
gw_generation *gw_generation_new(const gw_config *cfg, char *err, size_t cap);
void gw_generation_ref(gw_generation *g);
/* The last reference frees it (TLS contexts, transfer log). */
void gw_generation_unref(gw_generation *g);

/* host (a name or an IP literal) and port to an address, IPv4 preferred (blocking: for
 * configuration only). 0 or -1. */
int gw_resolve_host(const char *host, uint16_t port, gw_addr *out);

#endif
