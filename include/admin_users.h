/* The admin endpoint's users ([global] admin_users) and its failed-login throttle (pure: no
 * libuv, no OpenSSL, no libcrypt; admin.c checks the hashes: crypt_check.h).
 *
 * The file: one user a line, "name:crypt-hash role", role read or operate; blank lines and
 * lines starting with '#' are ignored. The hash is crypt(3)'s modular format ("$y$...",
 * "$6$...", "$2b$..."), never a plain password. */
#ifndef GW_ADMIN_USERS_H
#define GW_ADMIN_USERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_ADMIN_USER_MAX 64  /* name, NUL included */
#define GW_ADMIN_HASH_MAX 256 /* hash, NUL included */
#define GW_ADMIN_USERS_MAX 1000

enum gw_admin_role { GW_ADMIN_ROLE_NONE, GW_ADMIN_ROLE_READ, GW_ADMIN_ROLE_OPERATE };

typedef struct gw_admin_user {
    char name[GW_ADMIN_USER_MAX];
    char hash[GW_ADMIN_HASH_MAX];
    enum gw_admin_role role;
} gw_admin_user;

typedef struct gw_admin_users {
    gw_admin_user *u;
    size_t n;
} gw_admin_users;

/* Parse text (len bytes, NUL bytes refused). 0, or -1 with "line N: problem" in err (out
 * is then empty). */
int gw_admin_users_parse(const char *text, size_t len, gw_admin_users *out, char *err, size_t cap);
const gw_admin_user *gw_admin_users_find(const gw_admin_users *u, const char *name);
void gw_admin_users_free(gw_admin_users *u);
const char *gw_admin_role_name(enum gw_admin_role r);

/* Failed logins per client address: GW_THROTTLE_FAILS failures within GW_THROTTLE_WINDOW_MS
 * lock the address out for GW_THROTTLE_LOCK_MS (its requests are refused unchecked, so a
 * guesser gets a few tries a minute and costs no hashing). A fixed table: when it is full,
 * the oldest entry is reused. Not thread-safe: the caller serialises. */
#define GW_THROTTLE_SLOTS 256
#define GW_THROTTLE_FAILS 5
#define GW_THROTTLE_WINDOW_MS 60000
#define GW_THROTTLE_LOCK_MS 60000

typedef struct gw_throttle_entry {
    char addr[48];
    unsigned fails;
    int64_t first_ms, last_ms, locked_until_ms;
} gw_throttle_entry;

typedef struct gw_throttle {
    gw_throttle_entry e[GW_THROTTLE_SLOTS];
} gw_throttle;

/* Seconds left of addr's lockout (rounded up), 0 when it may try. */
unsigned gw_throttle_locked(const gw_throttle *t, const char *addr, int64_t now_ms);
/* A failure: true when it locks the address out (from now). */
bool gw_throttle_fail(gw_throttle *t, const char *addr, int64_t now_ms);
/* A success: addr's failures are forgotten. */
void gw_throttle_ok(gw_throttle *t, const char *addr);

#endif
