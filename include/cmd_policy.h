/* Command policies ([policy NAME]): which verbs a logged-in session may send to its backend.
 * A refused verb gets "550 Permission denied." from the gateway. Pure: no libuv, no OpenSSL.
 * Reference: config/README.md "[policy NAME]". */
#ifndef GW_CMD_POLICY_H
#define GW_CMD_POLICY_H

#include <stdbool.h>
#include "config.h"

/* read_only = yes refuses these (they change the server's files). */
#define GW_POLICY_WRITE_VERBS "STOR APPE STOU DELE RMD XRMD MKD XMKD RNFR RNTO SITE"
/* allow = ... never refuses these: without them no session could log in or transfer. */
#define GW_POLICY_SESSION_VERBS                                                                    \
    "USER PASS AUTH PBSZ PROT FEAT SYST NOOP QUIT OPTS TYPE MODE STRU PWD CWD CDUP PASV EPSV "     \
    "PORT EPRT REST ABOR"

/* Does policy p allow verb (any case)? p NULL: everything. Order: deny refuses; read_only
 * refuses the write verbs; a non-empty allow refuses what it and the session verbs do not
 * name. */
bool gw_policy_allows(const gw_policy_conf *p, const char *verb);

/* Is verb (any case) one of the blank-separated verbs of list? */
bool gw_policy_verb_in(const char *list, const char *verb);

/* The policy a session of `user` (its groups: blank-separated names, may be "") runs under,
 * as a cfg->policies index, -1: none. First the user's own (`own`, a policy name from the
 * users file, NULL or "": none), then the first [policy] whose `users` names the user or
 * @one of its groups, then the frontend's (fe_policy, an index or -1). */
int gw_policy_select(const gw_config *cfg, int fe_policy, const char *user, const char *groups,
                     const char *own);

#endif
