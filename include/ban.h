/* The ban list's table ([global] ban_after, ban_window, ban_time, ban_exempt): failed
 * logins per client address, and the addresses banned for them. Pure: no libuv, no OpenSSL,
 * no locking and no clock (the caller passes the time: proxy/bans.c shares one table
 * between the workers under a mutex). */
#ifndef GW_BAN_H
#define GW_BAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "ftp_addr.h"

#define GW_BAN_AFTER_MAX 32 /* ban_after's upper bound: failure times kept per address */
#define GW_BAN_CAP 65536    /* addresses tracked at most (the process's table) */

typedef struct gw_ban_policy {
    int after;          /* failures within window that ban; 0: off (nothing counted) */
    int window;         /* seconds */
    int time;           /* seconds a ban lasts */
    const char *exempt; /* CIDR list (cidr.h) never counted nor banned; NULL: none */
} gw_ban_policy;

typedef struct gw_ban_table gw_ban_table;

/* What one failure did. */
typedef struct gw_ban_result {
    enum { GW_BAN_IGNORED, GW_BAN_COUNTED, GW_BAN_NEW, GW_BAN_ALREADY } what;
    int failures;     /* within the window, this one included (GW_BAN_COUNTED, GW_BAN_NEW) */
    gw_addr key;      /* the address as counted (IPv6: its /64) */
    bool evicted;     /* the table was full: the entry with the oldest last failure went */
    bool evicted_ban; /* ... and it was a ban (every entry was banned): evicted_key */
    gw_addr evicted_key;
} gw_ban_result;

/* cap: addresses tracked at most (0: GW_BAN_CAP). NULL when out of memory. */
gw_ban_table *gw_ban_table_new(size_t cap);
void gw_ban_table_free(gw_ban_table *t);
/* The address as the table counts it: normalised (::ffff:a.b.c.d is IPv4), port 0, and an
 * IPv6 address cut to its /64 (one host or LAN; a /64 holds more addresses than any table). */
void gw_ban_key(const gw_addr *a, gw_addr *key);
/* A failed login from a at now_ms. Counted unless the policy is off or a is exempt
 * (GW_BAN_IGNORED) or a is banned already (GW_BAN_ALREADY: not counted, the ban is not
 * extended). GW_BAN_NEW when this failure is the policy's `after`-th within `window`: a is
 * banned until now_ms + time and its failures are forgotten. Out of memory: GW_BAN_IGNORED. */
void gw_ban_fail(gw_ban_table *t, const gw_addr *a, uint64_t now_ms, const gw_ban_policy *p,
                 gw_ban_result *r);
/* Milliseconds left of a's ban at now_ms; 0 when it is not banned, exempt, or the policy is
 * off (the bans are kept meanwhile: they apply again when it is turned back on). */
uint64_t gw_ban_left(const gw_ban_table *t, const gw_addr *a, uint64_t now_ms,
                     const gw_ban_policy *p);
/* Bans ended by now_ms are removed, each reported to cb (its key) when cb is set; addresses
 * whose last failure is older than the policy's window are forgotten. Returns the number of
 * bans ended. */
size_t gw_ban_expire(gw_ban_table *t, uint64_t now_ms, const gw_ban_policy *p,
                     void (*cb)(const gw_addr *key, void *arg), void *arg);
/* Hitless upgrade: fn for every ban (its key and end, soonest first), and a ban put back as
 * it was (a key already banned keeps the later end). 0, or -1 (table full, no memory). */
void gw_ban_each(const gw_ban_table *t,
                 void (*fn)(const gw_addr *key, uint64_t until_ms, void *arg), void *arg);
int gw_ban_restore(gw_ban_table *t, const gw_addr *a, uint64_t until_ms);
size_t gw_ban_tracked(const gw_ban_table *t); /* addresses in the table */
size_t gw_ban_banned(const gw_ban_table *t);  /* of which banned */

#endif
