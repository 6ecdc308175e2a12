/* auth = pam: one blocking PAM conversation (pam_authenticate, then pam_acct_mgmt) for a
 * user and password, and the account's Unix groups. No libuv, no OpenSSL; links libpam.
 * Blocking (PAM modules may sleep, read files, ask the network): run it off the event loop
 * (edge_auth.c: the thread pool, a few at a time). */
#ifndef GW_PAM_CHECK_H
#define GW_PAM_CHECK_H

#include <stddef.h>

enum gw_pam_result {
    GW_PAM_OK,
    GW_PAM_BAD_PASSWORD, /* PAM_AUTH_ERR (and what else pam_authenticate refuses) */
    GW_PAM_UNKNOWN_USER, /* PAM_USER_UNKNOWN */
    GW_PAM_ACCOUNT,      /* pam_acct_mgmt refused: expired, locked, password to change */
    GW_PAM_ERROR,        /* the service or a module failed (PAM's text in `why`) */
};

/* Check user/password with PAM service `service` for a client at rhost (its IP address:
 * PAM_RHOST, numeric so that no module resolves it). PAM's own failure delay is not slept
 * (the gateway delays its 530 itself). `why` (cap bytes): PAM's text of the failure, ""
 * when OK. */
enum gw_pam_result gw_pam_check(const char *service, const char *user, const char *password,
                                const char *rhost, char *why, size_t cap);

/* The log's reason= of a failure: bad_password, unknown_user, account_refused, pam_error. */
const char *gw_pam_result_name(enum gw_pam_result r);

/* user's Unix groups by name, blank-separated, into out (cap bytes; names that do not fit
 * are left out): the primary group and the supplementary ones (getgrouplist). "" when
 * the user is unknown to NSS. */
void gw_pam_groups(const char *user, char *out, size_t cap);

#endif
