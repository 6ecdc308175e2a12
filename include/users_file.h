/* The users file of `auth = file` frontends: "user:crypt-hash[:attr=value,...]" lines, and
 * password checks against it with libcrypt's crypt_r (yescrypt, bcrypt, sha512-crypt).
 * Pure: no libuv, no OpenSSL. Reference: config/README.md "Users file". */
#ifndef GW_USERS_FILE_H
#define GW_USERS_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_USER_NAME_MAX 64    /* user, backend, backend_user, policy: at most 63 bytes */
#define GW_USER_HASH_MAX 160   /* yescrypt is 73 characters, sha512-crypt at most 123 */
#define GW_USER_GROUPS_MAX 256 /* groups=: names separated by single blanks */

typedef struct gw_user_entry {
    char name[GW_USER_NAME_MAX];
    char hash[GW_USER_HASH_MAX];
    char groups[GW_USER_GROUPS_MAX];     /* "a b c" (normalised: one blank between names) */
    char backend[GW_USER_NAME_MAX];      /* empty: the frontend's balance */
    char backend_user[GW_USER_NAME_MAX]; /* empty: the same name toward the backend */
    char policy[GW_USER_NAME_MAX];       /* empty: none of its own */
    uint64_t rate_down, rate_up;         /* bytes/s, 0: not set */
    int line;
} gw_user_entry;

typedef struct gw_users {
    gw_user_entry *v; /* n entries (heap), in file order; names unique */
    size_t n;
} gw_users;

/* Parse the text of a users file. `origin` names it in messages. 0, or -1 with
 * "ORIGIN:LINE: problem" in err (u then holds nothing). Release u with gw_users_free. */
int gw_users_parse(const char *text, size_t len, const char *origin, gw_users *u, char *err,
                   size_t errcap);

/* Read and parse path. Refused (-1, message in err): a file that cannot be read, is not a
 * regular file, is readable or writable by group or others (mode & 077), or does not parse. */
int gw_users_load_file(const char *path, gw_users *u, char *err, size_t errcap);

void gw_users_free(gw_users *u);

/* The entry of `name` (exact, case-sensitive), or NULL. */
const gw_user_entry *gw_users_find(const gw_users *u, const char *name);

/* Is `group` one of e's groups? */
bool gw_user_in_group(const gw_user_entry *e, const char *group);

/* Check name/password. true only for a listed user whose hash the password matches; *who
 * (may be NULL) is then its entry. An unknown user costs a crypt_r as a known one does (the
 * first entry's hash stands in), so response time does not tell names apart. Blocking: a
 * hash costs milliseconds by design (run it off the event loop). */
bool gw_users_verify(const gw_users *u, const char *name, const char *password,
                     const gw_user_entry **who);

/* A rate as the file and the configuration write it: digits with an optional K, M or G
 * (powers of 1024). 0, or -1 when it is not one (or above 1 TiB/s). */
int gw_parse_rate(const char *s, uint64_t *out);

#endif
