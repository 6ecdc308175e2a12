/* Bandwidth limits (rate_down/rate_up per session, per user, per frontend): token buckets
 * that may run into debt, composed into one limiter per transfer. Pure: no libuv, no
 * OpenSSL; the caller passes a monotonic clock in nanoseconds (the same clock in every
 * thread: shared buckets are taken from every worker). Reference: config/README.md
 * "Bandwidth limits".
 *
 * A transfer takes what it read from every bucket that applies (its session's, its fair
 * share of its user's and of its frontend's, and those shared buckets themselves), so the
 * most restrictive rules. A bucket may go below zero by one read; the reader then pauses
 * until every bucket is positive again, so over time no bucket passes its rate by more
 * than its burst plus one read. */
#ifndef GW_RATE_H
#define GW_RATE_H

#include <stddef.h>
#include <stdint.h>

#define GW_RATE_MIN_CHUNK 4096u         /* the smallest read a limited relay asks for */
#define GW_RATE_MAX_CHUNK (256u * 1024) /* and the largest (the relay's read buffer) */

typedef struct gw_bucket {
    uint64_t rate;  /* bytes/s; 0: no limit */
    uint64_t burst; /* most tokens it holds: gw_rate_burst(rate) */
    int64_t tokens; /* may be negative: a debt the reader waits out */
    uint64_t last_ns;
} gw_bucket;

/* The burst allowed at rate: a tenth of a second's worth, at least GW_RATE_MIN_CHUNK. */
uint64_t gw_rate_burst(uint64_t rate);
/* Full at rate (0: unlimited). */
void gw_bucket_init(gw_bucket *b, uint64_t rate, uint64_t now_ns);
/* A new rate from now on; the tokens held stay (cut to the new burst). */
void gw_bucket_set_rate(gw_bucket *b, uint64_t rate, uint64_t now_ns);
/* The tokens at now (refilled). */
int64_t gw_bucket_tokens(gw_bucket *b, uint64_t now_ns);
/* n bytes moved: taken, into debt if need be. */
void gw_bucket_take(gw_bucket *b, uint64_t n, uint64_t now_ns);
/* Nanoseconds until the bucket holds a token again; 0: it does (or no limit). */
uint64_t gw_bucket_wait_ns(gw_bucket *b, uint64_t now_ns);

/* A bucket shared by sessions of every worker (a frontend's or a user's), process-wide,
 * found by key; it lives while a limiter holds it, so a reload keeps the transfers running
 * under it sharing it (the rate is the newest configuration's). */
typedef struct gw_rate_shared gw_rate_shared;
/* seq: the configuration's (its generation's) order: an older one's rate never replaces a
 * newer one's (sessions from before a reload keep running). */
gw_rate_shared *gw_rate_shared_get(const char *key, uint64_t rate, uint64_t seq, uint64_t now_ns);
void gw_rate_shared_put(gw_rate_shared *sh);
/* Transfers drawing from it now. */
int gw_rate_shared_active(gw_rate_shared *sh);
/* Shared buckets alive (tests, leaks). */
int gw_rate_shared_count(void);

/* What limits one direction of one session's transfers: rates in bytes/s, 0 none; a
 * shared limit applies only with its key (user name, frontend name). */
typedef struct gw_rate_spec {
    uint64_t session;
    uint64_t user;
    const char *user_key;
    uint64_t frontend;
    const char *frontend_key;
    uint64_t seq; /* the configuration's order (gw_rate_shared_get) */
} gw_rate_spec;

enum { GW_RATE_USER, GW_RATE_FRONTEND, GW_RATE_NSHARED };

/* One transfer's limiter: attach when it starts relaying, detach when it stops. */
typedef struct gw_rate_lim {
    gw_bucket own;                             /* the session's rate */
    gw_rate_shared *shared[GW_RATE_NSHARED];   /* the user's and the frontend's */
    gw_bucket share[GW_RATE_NSHARED];          /* this transfer's fair share of each */
    uint64_t window_ns, window_bytes, current; /* the measured rate, bytes/s (1 s windows) */
    uint64_t limited_ns;                       /* time spent waiting for tokens */
} gw_rate_lim;

/* Does spec limit anything? */
int gw_rate_spec_any(const gw_rate_spec *spec);
/* 0, or -1 when out of memory (nothing attached then). */
int gw_rate_lim_attach(gw_rate_lim *l, const gw_rate_spec *spec, uint64_t now_ns);
void gw_rate_lim_detach(gw_rate_lim *l);
/* n bytes moved: taken from every bucket. */
void gw_rate_lim_charge(gw_rate_lim *l, uint64_t n, uint64_t now_ns);
/* Nanoseconds to wait before moving more bytes; 0: go. */
uint64_t gw_rate_lim_wait_ns(gw_rate_lim *l, uint64_t now_ns);
/* The most a read should take now (so that one read overshoots by a little). */
size_t gw_rate_lim_chunk(const gw_rate_lim *l);
/* The tightest rate in force: the session's, the fair shares (0: none). */
uint64_t gw_rate_lim_limit(const gw_rate_lim *l);

#endif
