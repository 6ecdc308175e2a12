/* The running gateway: one per worker, its listeners and its sessions. Configuration
 * generations (generation.h) come and go on SIGHUP; listeners outlive them: a listening
 * address that stays in the configuration keeps its socket. */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "generation.h"
#include "ip_limit.h"

typedef struct gw_server gw_server;
typedef struct gw_sess_entry gw_sess_entry; /* an accepted client (listener.c) */
typedef struct gw_session gw_session;       /* session.h */

/* What the workers (one gw_server and event loop each, [global] workers) share: the
 * process-wide session limits, session numbers, backend counts and health. */
typedef struct gw_shared {
    pthread_mutex_t lock; /* guards per_ip */
    gw_ip_table *per_ip;  /* max_sessions_per_ip */
    _Atomic int sessions; /* max_sessions counts the whole process */
    _Atomic uint64_t next_session_id;
    gw_live_table *live; /* live sessions per backend (max_sessions, leastconn) */
    gw_health *health;   /* backend health, one per process (health.h); set by main */
} gw_shared;
typedef struct gw_listener {
    uv_tcp_t tcp;
    gw_server *srv;
    gw_hostport addr;
    gw_frontend *fe; /* the current generation's frontend on this address */
    uv_tcp_t refuse; /* takes a connection no session could be allocated for */
    bool refusing;   /* refuse is closing; it is initialized again once closed */
    bool waiting;    /* a connection is left pending on tcp until refuse is free */
    bool closed;     /* tcp is closed but refuse is not yet: on_refused frees l */
    bool staged;     /* opened by a reload not yet committed: connections wait in libuv */
    bool held;       /* staged, and a connection is waiting */
} gw_listener;

struct gw_server {
    uv_loop_t *loop;
    gw_shared *shared;
    int worker;            /* 0 .. workers-1, named in session_start lines when there are several */
    bool reuseport;        /* several workers: every listener is opened with SO_REUSEPORT */
    gw_generation *gen;    /* current */
    gw_generation *staged; /* a reload prepared, not yet committed (gw_server_reload_*) */
    gw_listener **stage_next; /* its listeners, one per frontend (heap) */
    bool *stage_fresh;        /* which of them it opened */
    int n_listeners;
    gw_listener **listeners;      /* n_listeners, one per frontend (heap, gw_server_free) */
    int sessions;                 /* this worker's */
    uint64_t last_accept_warn;    /* accept errors are logged at most once a second */
    gw_sess_entry *session_list;  /* every accepted client until it ends, for shutdown */
    struct gw_shport_set *shport; /* pasv_shared_port listeners (shared_port.h) */
    uv_timer_t fd_probe;          /* notices the descriptor limit (see listener.c) */
    bool fd_probe_started;
    bool stopping;
    int pp_waiting; /* connections still sending their PROXY header (listener.c) */
};

/* Build the first generation from cfg (copied), bind and listen. srv->shared, worker and
 * reuseport are set by the caller beforehand. 0, or -1 with a message (and 2 is the exit
 * status: nothing is left listening). */
int gw_server_start(gw_server *srv, uv_loop_t *loop, const gw_config *cfg, char *err, size_t cap);
/* Reload in two steps, so that every worker switches or none does (worker.c). Prepare: a
 * new generation from cfg (copied) with everything that can fail done (TLS contexts, the
 * transfer log, new listeners opened but holding their connections); 0, or -1 with the
 * problem in err and where it lies in *where, nothing changed. Commit: the prepared
 * generation serves new sessions (listeners on addresses that remain kept, dropped ones
 * closed); cannot fail. Abort: the prepared one is dropped, the current one stays. */
int gw_server_reload_prepare(gw_server *srv, const gw_config *cfg, gw_cfg_where *where, char *err,
                             size_t cap);
void gw_server_reload_commit(gw_server *srv);
void gw_server_reload_abort(gw_server *srv);
/* Stop accepting (listeners closed); live sessions go on. */
void gw_server_stop_listening(gw_server *srv);
void gw_server_free(gw_server *srv);
/* A hitless upgrade: fn(kind, fd, arg) for each listening socket ("fe" a frontend, "sp" a
 * shared passive port). From the main thread while no reload runs (the lists are stable). */
void gw_server_each_listen_fd(gw_server *srv, void (*fn)(const char *kind, int fd, void *arg),
                              void *arg);
/* End every live session with 421 (graceful stop after shutdown_grace); each is counted and
 * listed until it has ended. */
void gw_server_close_sessions(gw_server *srv, const char *why);

/* The admin endpoint: fn for every live session of this worker (on its loop's thread). */
void gw_server_each_session(gw_server *srv, void (*fn)(gw_session *s, void *arg), void *arg);

/* No memory to serve the connection pending on listener: accept it and close it, so that
 * libuv keeps watching the listener. Allocates nothing. */
void gw_listener_refuse(uv_stream_t *listener);

#endif
