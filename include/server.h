/* The running gateway: configuration, frontends with their listeners and TLS contexts. */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "config.h"
#include "ftp_addr.h"
#include "ip_limit.h"
#include "pasv_pool.h"
#include "tls.h"

typedef struct gw_server gw_server;
struct gw_session;

typedef struct gw_frontend {
    const gw_frontend_conf *conf;
    const gw_backend_conf *backend;
    gw_server *srv;
    SSL_CTX *tls_ctx;     /* client-facing, NULL on plain frontends */
    SSL_CTX *backend_tls_ctx; /* toward the backend, NULL when its tls = none */
    const char *backend_host; /* SNI and certificate name (sni, else the address host) */
    gw_addr pasv_addr;    /* family 0: advertise the control connection's local address */
    gw_addr backend_addr; /* an IP literal's address; for a name, the last resolution */
    bool backend_by_name; /* the backend address is a host name: resolved per session */
    gw_pasv_pool *pool;
    uv_tcp_t listener;
    bool listening;
} gw_frontend;

struct gw_server {
    uv_loop_t *loop;
    gw_config *cfg;
    int n_frontends;
    gw_frontend frontends[GW_MAX_FRONTENDS];
    uint64_t next_session_id;
    int sessions;
    gw_ip_table *per_ip;      /* max_sessions_per_ip */
    uint64_t last_accept_warn; /* accept errors are logged at most once a second */
    struct gw_session *session_list; /* every live session, for shutdown */
    bool stopping;
};

/* Resolve addresses, build TLS contexts, bind and listen. 0, or -1 with a message. */
int gw_server_start(gw_server *srv, uv_loop_t *loop, gw_config *cfg, char *err, size_t cap);
/* Stop accepting (listeners closed); live sessions go on. */
void gw_server_stop_listening(gw_server *srv);
void gw_server_free(gw_server *srv);

#endif
