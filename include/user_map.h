/* A frontend's user map (user_map): per user or @group, the backend and the account used
 * toward it. Pure: no libuv, no OpenSSL. Reference: config/README.md "User map".
 *
 * One rule a line, "WHO BACKEND[:ACCOUNT[:PASSWORD-FILE|keep]]": WHO a user name or @group;
 * BACKEND one of the frontend's backends, or * for its balance; ACCOUNT the name sent to
 * the backend (absent or empty: the client's own); then `keep` (the client's password, the
 * default) or the absolute path of a file holding ACCOUNT's password (a fixed account; the
 * file readable by the gateway's user only). '#' comment lines and blank lines are ignored;
 * the first rule that matches wins. */
#ifndef GW_USER_MAP_H
#define GW_USER_MAP_H

#include <stdbool.h>
#include <stddef.h>

#define GW_MAP_NAME_MAX 64      /* who, backend, account: at most 63 bytes */
#define GW_MAP_PATH_MAX 4096    /* a password file's path */
#define GW_MAP_PASSWORD_MAX 256 /* a password file's first line: at most 255 bytes */

typedef struct gw_map_rule {
    char who[GW_MAP_NAME_MAX]; /* a user name, or (group) a group name without its '@' */
    bool group;
    char backend[GW_MAP_NAME_MAX]; /* "": the frontend's balance (written *) */
    char account[GW_MAP_NAME_MAX]; /* "": the client's own name */
    char *pass_file;               /* NULL: the client's password (keep); heap */
    char *password;                /* pass_file's password once loaded (gw_user_map_load) */
    int line;
} gw_map_rule;

typedef struct gw_user_map {
    gw_map_rule *v; /* n rules (heap), in file order */
    size_t n;
} gw_user_map;

/* Parse the text of a map; `origin` names it in messages. 0, or -1 with
 * "ORIGIN:LINE: problem" in err (m then holds nothing). Password files are not read. */
int gw_user_map_parse(const char *text, size_t len, const char *origin, gw_user_map *m, char *err,
                      size_t errcap);

/* Read and parse path, then read each rule's password file: refused (-1, message in err)
 * when one cannot be read, is not a regular file, is readable or writable by group or
 * others (mode & 077), or holds an empty first line. */
int gw_user_map_load_file(const char *path, gw_user_map *m, char *err, size_t errcap);

/* Passwords are wiped. */
void gw_user_map_free(gw_user_map *m);

/* The first rule for `user` (exact) or one of `groups` ("a b c"; NULL or "": none), or
 * NULL. */
const gw_map_rule *gw_user_map_find(const gw_user_map *m, const char *user, const char *groups);

#endif
