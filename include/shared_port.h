/* pasv_shared_port: one passive port for every data connection of a frontend. Sessions
 * register what they wait for (gw_shport_wait); each connection to the port is matched to
 * exactly one waiting session (by the route in its TLS ClientHello, else by client address
 * when that is unambiguous) and handed to the waiter's callback on the waiter's own loop
 * (through that loop's mailbox when another worker accepted it), or closed and logged. The
 * shared port knows nothing of what waits (a data channel, data_accept.c). */
#ifndef GW_SHARED_PORT_H
#define GW_SHARED_PORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include "ftp_addr.h"
#include "generation.h"

/* What a session's PASV/EPSV waits for on the shared port. */
typedef struct gw_shport_want {
    uint16_t port;
    bool tls;           /* the data connection will be TLS (PROT P) */
    bool by_ticket;     /* matched by the route of its ticket/ID (else by address alone) */
    const uint8_t *tag; /* by_ticket: the control session's tag (GW_TLS_TAG_LEN) */
    bool unproven;      /* by_ticket, and the client never resumed yet: if its hello offers
                           nothing of ours while it is the only waiter of its address, it is
                           still given the connection (the resumption check then refuses it) */
} gw_shport_want;

/* Counters for metrics (process-wide). */
typedef struct gw_shport_stats {
    _Atomic uint64_t matched_resumption; /* connections matched by their ClientHello's route */
    _Atomic uint64_t matched_address;    /* matched by client address */
    _Atomic uint64_t unmatched;          /* closed: no waiting session matched */
    _Atomic uint64_t fallback_range;     /* PASV answered from pasv_ports instead */
    _Atomic uint64_t refused;            /* PASV refused with 425 (no pasv_ports) */
} gw_shport_stats;
const gw_shport_stats *gw_shport_stats_get(void);
void gw_shport_count_fallback(bool refused);

/* The connection matched to a waiter, on the waiter's loop: its descriptor (now the
 * callee's), the bytes already read from it, and pp_src, the source its PROXY header named
 * (the TCP peer is then a balancer), NULL when it came without one. */
typedef void (*gw_shport_conn_fn)(void *arg, int fd, const uint8_t *buf, size_t n,
                                  const gw_addr *pp_src);
/* A session waits on the shared port: 0 with *id set, or -1 when the match cannot be
 * guaranteed now (another session from the same address waits and one of the two can
 * only be matched by address). fn(arg, ...) is called on loop (which has a mailbox,
 * mailbox.h) unless the wait is cancelled first. */
int gw_shport_wait(const gw_shport_want *w, const gw_addr *client, uv_loop_t *loop, uint64_t sid,
                   gw_shport_conn_fn fn, void *arg, uint64_t *id);
/* The session stops waiting (its own loop); a connection already on its way is closed. */
void gw_shport_cancel(uint64_t id);

/* After every worker has finished: the waiters left. */
void gw_shport_free_all(void);

/* A worker's shared-port listeners (one per distinct port of the generation's frontends). */
typedef struct gw_shport_set gw_shport_set;
/* Listen on every shared port of g (keeping those already open); close the others when
 * close_others (a reload first opens, then, once the rest of the switch succeeded, closes).
 * 0 or -1 with a message (nothing changed). */
int gw_shport_switch(gw_shport_set **set, uv_loop_t *loop, bool reuseport, gw_generation *g,
                     bool close_others, char *err, size_t cap);
/* Stop listening (the memory stays until gw_shport_set_free). */
void gw_shport_close(gw_shport_set *set);
/* A hitless upgrade: fn(kind "sp", fd, arg) for each listening socket of set (the set's
 * loop's thread, or the main thread while no reload runs). */
void gw_shport_each_fd(gw_shport_set *set, void (*fn)(const char *kind, int fd, void *arg),
                       void *arg);
/* Hitless upgrade. The new process: connections no session of its own waits for go to
 * the old process over fd (a SOCK_SEQPACKET socket; -1 once that process has gone). The
 * old process: such a message (msg, len bytes) with its descriptor fd is matched to this
 * process's waiters as if accepted on loop (a loop with a mailbox), or closed. */
void gw_shport_forward_to(int fd);
void gw_shport_adopt(uv_loop_t *loop, int fd, const uint8_t *msg, size_t len);
/* After the loop has ended (its handles closed): free the set. */
void gw_shport_set_free(gw_shport_set *set);

#endif
