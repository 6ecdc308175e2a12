/* Configuration generations. A generation (the config plus, per frontend, its TLS contexts,
 * resolved addresses and port pool, and the transfer log) is immutable; SIGHUP builds a new
 * one for new sessions while live sessions keep a reference to theirs. */
#ifndef GW_GENERATION_H
#define GW_GENERATION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "auth_ldap.h"
#include "config.h"
#include "balance.h"
#include "ftp_addr.h"
#include "health.h"
#include "pasv_pool.h"
#include "tls.h"
#include "user_map.h"
#include "users_file.h"

typedef struct gw_generation gw_generation;

/* Live session counts per backend name, one table for the whole process (every worker and
 * every generation): a reload keeps the count of a backend that remains. Thread-safe. */
typedef struct gw_live_table gw_live_table;
gw_live_table *gw_live_table_new(void);
void gw_live_table_free(gw_live_table *t);
/* The counter of the backend named name (0 the first time); NULL when out of memory. */
_Atomic int *gw_live_counter(gw_live_table *t, const char *name);

/* A backend as a generation runs it. */
typedef struct gw_backend_rt {
    const gw_backend_conf *conf;
    SSL_CTX *tls_ctx;     /* NULL when its tls = none */
    const char *host;     /* SNI and certificate name (sni, else the address host) */
    gw_addr addr;         /* an IP literal's address; for a name, the last resolution */
    bool by_name;         /* the address is a host name: resolved per session */
    bool no_extended;     /* it answered EPSV/EPRT with 500/501/502: PASV/PORT from then on */
    bool prepared;        /* some frontend uses it: addresses and TLS context ready */
    _Atomic int *live;    /* its live sessions, process-wide (gw_live_table) */
    _Atomic int own_live; /* used when the process-wide table is absent (no memory) */
} gw_backend_rt;

typedef struct gw_frontend {
    const gw_frontend_conf *conf;
    const gw_config *cfg; /* the generation's whole configuration */
    gw_generation *gen;
    SSL_CTX *tls_ctx;  /* client-facing, NULL on plain frontends */
    gw_addr pasv_addr; /* family 0: advertise the control connection's local address */
    bool pasv_auto;    /* pasv_address = auto: the address the client connected to */
    gw_pasv_pool *pool;
    int n_backends;
    gw_backend_rt **backends; /* n_backends: conf->backend_list, in its order (heap) */
    gw_bal_state bal;         /* selection state: this worker's, the one mutable part */
    /* Virtual hosts: the frontend whose listener accepts for this one (of those sharing its
     * address, the one without server_name, else the first); itself when alone. */
    struct gw_frontend *vh_listen;
    bool vhosted;    /* shares its address or has server_name: the gateway greets, SNI/HOST pick */
    gw_users *users; /* auth = file: its users file as this generation read it (heap) */
    gw_ldap *ldap;   /* auth = ldap: the service password, the cache (this worker's) */
    gw_user_map *user_map; /* user_map: as this generation read it, passwords loaded (heap) */
} gw_frontend;

struct gw_generation {
    gw_config cfg;
    int xferlog_fd; /* -1: no transfer log */
    /* The process's backend health (gw_health_is_up, gw_health_report from any worker),
     * NULL when there is none. Not owned: it outlives every generation. */
    gw_health *health;
    gw_backend_rt *backends; /* cfg.n_backends: cfg.backends, same indexes (heap) */
    int refs;                /* 1 while current, plus one per live session */
    int n_frontends;
    gw_frontend *frontends; /* cfg.n_frontends (heap) */
    uint64_t seq;           /* 1, 2, ... in the order made: the newer configuration's rates win */
};

/* Where a problem found while building a generation lies in the configuration: section
 * ("global", "tls", "frontend", "backend"; NULL when no key is to blame), the frontend or
 * backend index, and the key (NULL: the section). */
typedef struct gw_cfg_where {
    const char *section;
    int index;
    const char *key;
} gw_cfg_where;
/* "FILE:LINE: [section NAME] key: problem" (gw_config_where on cfg, the parsed file), or
 * problem alone when w names no section. */
void gw_cfg_where_format(const gw_config *cfg, const gw_cfg_where *w, const char *problem,
                         char *out, size_t cap);

/* A generation for cfg (copied): every frontend prepared (addresses resolved, TLS contexts,
 * port pools; its backends with their process-wide live counters from live), the transfer
 * log opened; health (may be NULL) is kept for the sessions. Its one reference is the caller's.
 * NULL with the problem in err and where it lies in *where (may be NULL). live may be NULL
 * (-t: counts per generation). */
gw_generation *gw_generation_new(const gw_config *cfg, gw_health *health, gw_live_table *live,
                                 gw_cfg_where *where, char *err, size_t cap);
/* What start needs from files and the network, checked by building a generation and
 * dropping it (-t, and start before it binds): certificates, keys and their match, CA and
 * CRL files, the users files of auth = file frontends (mode, syntax, attributes), the LDAP
 * service password file and CA file of auth = ldap frontends, the
 * transfer log opened for appending (created as start would), backend
 * addresses, and listen addresses that are this host's. 0, or -1 as gw_generation_new. */
int gw_generation_check(const gw_config *cfg, gw_cfg_where *where, char *err, size_t cap);
void gw_generation_ref(gw_generation *g);
/* The last reference frees it (TLS contexts, transfer log). */
void gw_generation_unref(gw_generation *g);

/* Virtual hosts: of the frontends listening with lfe (lfe->vh_listen == lfe), the one whose
 * server_name matches name, else the one without server_name, else NULL. */
gw_frontend *gw_vhost_find(gw_frontend *lfe, const char *name);

/* host (a name or an IP literal) and port to an address, IPv4 preferred (blocking: for
 * configuration only). 0 or -1. */
int gw_resolve_host(const char *host, uint16_t port, gw_addr *out);

#endif
