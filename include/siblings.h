/* Sibling resumption: which control connection each TLS tag (tls.h) was issued to. A data
 * connection may resume a session of another control connection when both belong to the
 * same logged-in user on the same backend from the same client address (Go's TLS, hence
 * rclone, keeps one session cache per host:port for all its connections). One registry
 * for the process (workers are threads): a mutex. Pure: no libuv, no OpenSSL. */
#ifndef GW_SIBLINGS_H
#define GW_SIBLINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "ftp_addr.h"

#define GW_SIB_TAG_LEN 16   /* GW_TLS_TAG_LEN */
#define GW_SIB_ROUTE_LEN 12 /* GW_ROUTE_LEN: a tag's prefix */
#define GW_SIB_GRACE_S 600  /* a session stays a sibling this long after its end */
#define GW_SIB_MAX 50000    /* entries kept at most (oldest ended ones go first): ~10 MB */

enum gw_sib_verdict {
    GW_SIB_SIBLING = 0,   /* same user, backend and client address: accept */
    GW_SIB_UNKNOWN,       /* not issued here, or ended too long ago */
    GW_SIB_NOT_LOGGED_IN, /* one of the two has no login (yet or any more) */
    GW_SIB_OTHER_USER,    /* another user (or the same name on another backend) */
    GW_SIB_OTHER_ADDRESS, /* the same user from another client address */
};

/* The control connection with this tag finished its TLS handshake from client. */
void gw_sib_issued(const uint8_t tag[GW_SIB_TAG_LEN], const gw_addr *client, uint64_t now_s);
/* It logged in (230) as user on backend (user NULL: logged out, REIN). */
void gw_sib_login(const uint8_t tag[GW_SIB_TAG_LEN], const char *user, const char *backend);
/* It ended: a sibling for GW_SIB_GRACE_S more seconds. */
void gw_sib_ended(const uint8_t tag[GW_SIB_TAG_LEN], uint64_t now_s);
/* May the connection tagged own use the session tagged other? */
enum gw_sib_verdict gw_sib_check(const uint8_t own[GW_SIB_TAG_LEN],
                                 const uint8_t other[GW_SIB_TAG_LEN], uint64_t now_s);
/* The same by routes (pasv_shared_port: the ClientHello shows only a route). */
enum gw_sib_verdict gw_sib_check_route(const uint8_t own[GW_SIB_ROUTE_LEN],
                                       const uint8_t other[GW_SIB_ROUTE_LEN], uint64_t now_s);
/* The log reason of a refusal ("another user", ...). */
const char *gw_sib_reason(enum gw_sib_verdict v);
/* Memory the entries hold: the pages of their blocks written to (bytes; /metrics: it grows
 * by design for GW_SIB_GRACE_S after sessions end, up to GW_SIB_MAX entries). */
size_t gw_sib_bytes(void);
/* Entries held (tests). */
int gw_sib_count(void);
/* Forget everything (tests). */
void gw_sib_reset(void);

#endif
