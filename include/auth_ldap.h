/* auth = ldap: the gateway checks USER/PASS by binding to an LDAP server as the user
 * (a DN from the ldap_user_dn template, or found by a service account's search), reads the
 * user's groups and backend from the entry, and remembers successes for auth_cache_ttl
 * seconds (a salted hash of the password, never the password). Reference: config/README.md
 * "LDAP".
 *
 * Threads: gw_ldap_run blocks (libldap's synchronous calls, each bounded by ldap_timeout)
 * and runs in libuv's thread pool, queued per worker with PAM's conversations (edge_auth.c,
 * SLOW_PER_WORKER at once). Everything else runs on the loop of the worker owning the gw_ldap:
 * one per frontend and generation, and each worker builds its own generations. */
#ifndef GW_AUTH_LDAP_H
#define GW_AUTH_LDAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "users_file.h"

/* A failed check is remembered this long (at most auth_cache_ttl): a client retrying the
 * same wrong password does not reach the server each time. */
#define GW_LDAP_NEGATIVE_TTL_S 5

typedef struct gw_ldap gw_ldap;

enum gw_ldap_status { GW_LDAP_OK, GW_LDAP_DENIED, GW_LDAP_UNAVAILABLE };

/* One check: name and password in, status and (OK) who out. */
typedef struct gw_ldap_check {
    char name[GW_USER_NAME_MAX]; /* "": nobody (a name too long to keep) */
    const char *password;        /* the caller's; never copied, never logged */
    enum gw_ldap_status status;
    char reason[48];   /* DENIED / UNAVAILABLE: a log token (bad_password, server_down...) */
    char detail[120];  /* UNAVAILABLE: the server's or libldap's message (sanitised), or "" */
    bool cached;       /* answered from the cache */
    gw_user_entry who; /* OK: name, groups (ldap_group_attr), backend (ldap_backend_attr) */
    unsigned char digest[32]; /* name and password, salted: the cache's key */
} gw_ldap_check;

/* The frontend's LDAP set-up for one generation: the service account's password read from
 * ldap_bind_password_file (refused when readable or writable by group or others, or
 * empty), ldap_ca_file readable as a certificate file. 0, or -1 with the problem in err. */
int gw_ldap_open(const gw_frontend_conf *fc, gw_ldap **out, char *err, size_t cap);
void gw_ldap_close(gw_ldap *l);

/* On the loop, before the thread pool: the digest is computed; true when the cache answers
 * (c->status, c->who, c->reason set; c->cached). */
bool gw_ldap_lookup(gw_ldap *l, gw_ldap_check *c, uint64_t now_ms);
/* Thread pool: the check itself (blocking, at most a few times ldap_timeout). */
void gw_ldap_run(const gw_ldap *l, gw_ldap_check *c);
/* On the loop, after: an OK or DENIED answer is remembered (UNAVAILABLE never). */
void gw_ldap_remember(gw_ldap *l, const gw_ldap_check *c, uint64_t now_ms);

#endif
