/* See pam_check.h. */
#include "pam_check.h"

#include <grp.h>
#include <pwd.h>
#include <security/pam_appl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* The conversation: the password for a hidden prompt; informational messages get no
 * answer; a visible prompt (a module asking for more than a password) fails it. */
static int conv(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
    const char *password = data;
    if (n <= 0 || n > PAM_MAX_NUM_MSG)
        return PAM_CONV_ERR;
    struct pam_response *r = calloc((size_t)n, sizeof *r);
    if (!r)
        return PAM_BUF_ERR;
    for (int i = 0; i < n; i++) {
        switch (msg[i]->msg_style) {
        case PAM_PROMPT_ECHO_OFF:
            if (!(r[i].resp = strdup(password)))
                goto fail;
            break;
        case PAM_ERROR_MSG:
        case PAM_TEXT_INFO:
            break;
        default:
            goto fail;
        }
    }
    *resp = r;
    return PAM_SUCCESS;
fail:
    for (int i = 0; i < n; i++)
        if (r[i].resp) {
            explicit_bzero(r[i].resp, strlen(r[i].resp));
            free(r[i].resp);
        }
    free(r);
    return PAM_CONV_ERR;
}

/* PAM_FAIL_DELAY: the gateway's own 1 s delay answers a failure, no thread sleeps. */
static void no_delay(int retval, unsigned usec_delay, void *appdata)
{
    (void)retval;
    (void)usec_delay;
    (void)appdata;
}

enum gw_pam_result gw_pam_check(const char *service, const char *user, const char *password,
                                const char *rhost, char *why, size_t cap)
{
    why[0] = 0;
    struct pam_conv c = {conv, (void *)password};
    pam_handle_t *h = NULL;
    int rc = pam_start(service, user, &c, &h);
    if (rc != PAM_SUCCESS) {
        snprintf(why, cap, "pam_start: %s", h ? pam_strerror(h, rc) : "failed");
        if (h)
            pam_end(h, rc);
        return GW_PAM_ERROR;
    }
    pam_set_item(h, PAM_FAIL_DELAY, (const void *)no_delay);
    pam_set_item(h, PAM_RHOST, rhost); /* a name here costs modules a DNS lookup */
    enum gw_pam_result res = GW_PAM_OK;
    rc = pam_authenticate(h, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
    if (rc == PAM_SUCCESS) {
        rc = pam_acct_mgmt(h, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
        if (rc != PAM_SUCCESS)
            res = GW_PAM_ACCOUNT;
    } else if (rc == PAM_USER_UNKNOWN) {
        res = GW_PAM_UNKNOWN_USER;
    } else if (rc == PAM_AUTH_ERR || rc == PAM_MAXTRIES || rc == PAM_CRED_INSUFFICIENT) {
        res = GW_PAM_BAD_PASSWORD;
    } else {
        res = GW_PAM_ERROR;
    }
    if (res != GW_PAM_OK)
        snprintf(why, cap, "%s", pam_strerror(h, rc));
    pam_end(h, rc);
    return res;
}

const char *gw_pam_result_name(enum gw_pam_result r)
{
    switch (r) {
    case GW_PAM_OK:
        return "ok";
    case GW_PAM_BAD_PASSWORD:
        return "bad_password";
    case GW_PAM_UNKNOWN_USER:
        return "unknown_user";
    case GW_PAM_ACCOUNT:
        return "account_refused";
    case GW_PAM_ERROR:
        break;
    }
    return "pam_error";
}

void gw_pam_groups(const char *user, char *out, size_t cap)
{
    out[0] = 0;
    struct passwd pw, *pwp = NULL;
    char buf[4096];
    if (getpwnam_r(user, &pw, buf, sizeof buf, &pwp) != 0 || !pwp)
        return;
    gid_t gids[64];
    int n = (int)(sizeof gids / sizeof gids[0]);
    if (getgrouplist(user, pw.pw_gid, gids, &n) < 0)
        n = (int)(sizeof gids / sizeof gids[0]); /* more than fit: the first ones */
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        struct group g, *gp = NULL;
        char gbuf[4096];
        if (getgrgid_r(gids[i], &g, gbuf, sizeof gbuf, &gp) != 0 || !gp)
            continue;
        size_t gl = strlen(g.gr_name);
        if (gl == 0 || len + gl + (len ? 1 : 0) + 1 > cap)
            continue;
        if (len)
            out[len++] = ' ';
        memcpy(out + len, g.gr_name, gl + 1);
        len += gl;
    }
}
