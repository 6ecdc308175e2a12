/* Decisions at the edge: the gateway's own USER/PASS check on `auth = file` frontends
 * (users_file.h), the replayed login toward the backend after it, and the command policy
 * ([policy NAME], cmd_policy.h) of logged-in sessions. Part of the session module: called
 * from client_cmd.c (commands) and backend.c (the set-up's replayed login).
 *
 * auth = file, in order: USER is answered by the gateway (331); PASS is checked in libuv's
 * thread pool (crypt_r costs milliseconds by design; pending PEND_CHECK); only then is a
 * backend chosen and connected, and its set-up ends with USER (backend_user or the same
 * name) and the client's PASS (steps BE_LOGIN_USER, BE_LOGIN_PASS), whose 2xx is the
 * client's. A failed check is a failed login as a backend's 530 is (delay, ban list, 3 per
 * session) and opens nothing. All of it lives in the session's login part
 * (s->login.edge), which REIN resets whole. */
#include "session_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bans.h"
#include "cmd_policy.h"
#include "ftp_codes.h"
#include "log.h"
#include "metrics.h"
#include "users_file.h"

struct gw_edge {
    uv_work_t work;
    gw_session *s;
    const gw_users *users; /* the session's generation's: stable while the session holds it */
    char name[64];
    char *pw; /* the client's password, for the check and then the backend's PASS (wiped) */
    bool ok;  /* the check's result (thread pool), read in after_check */
    bool busy;
    bool too_long; /* the USER argument was cut to fit login.user: no user has that name */
    /* user_map: a fixed account's password (the generation's, which the session holds),
     * sent instead of the client's; NULL: the client's */
    const char *fixed;
    const gw_user_entry *who; /* after a successful check */
};

static void wipe_pw(struct gw_edge *e)
{
    if (!e->pw)
        return;
    explicit_bzero(e->pw, strlen(e->pw));
    free(e->pw);
    e->pw = NULL;
}

void gw_edge_free(gw_session *s)
{
    struct gw_edge *e = s->login.edge;
    if (!e)
        return;
    /* The thread pool holds the session while it checks (s->handles), and no command (REIN)
     * is taken meanwhile. */
    if (GW_SESS_BUG_ON(s, e->busy))
        return;
    wipe_pw(e);
    free(e);
    s->login.edge = NULL;
}

void gw_edge_forget(gw_session *s)
{
    if (s->login.edge)
        wipe_pw(s->login.edge);
}

/* A client-chosen name for a log value: quotes, backslashes and bytes outside printable
 * ASCII become '?', so that it cannot end its quoted value and forge fields. */
static const char *log_name(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (; in[n] && n + 1 < cap; n++) {
        unsigned char c = (unsigned char)in[n];
        out[n] = c < 0x20 || c >= 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
    }
    out[n] = 0;
    return out;
}

static bool file_auth(const gw_session *s)
{
    return s->fe->conf->auth == GW_AUTH_FILE && s->fe->users;
}

/* USER on an auth = file frontend: remembered, answered by the gateway. */
static void edge_user(gw_session *s, const char *arg)
{
    if (s->vh_none) { /* virtual hosts without a default: SNI or HOST must name one */
        gw_sess_reply(s, GW_R_HOST_NONE);
        return;
    }
    if (!s->login.edge && !(s->login.edge = calloc(1, sizeof *s->login.edge))) {
        gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
        return;
    }
    wipe_pw(s->login.edge);
    /* SECURITY: a longer name must not be cut into a listed one */
    s->login.edge->too_long = strlen(arg) >= sizeof s->login.user;
    s->login.user_sent = true;
    snprintf(s->login.user, sizeof s->login.user, "%s", arg);
    gw_sess_reply(s, GW_R_EDGE_PASSWORD);
}

static void check_work(uv_work_t *req)
{
    struct gw_edge *e = req->data;
    e->ok = gw_users_verify(e->users, e->name, e->pw, &e->who);
}

/* A failed check: logged (never the password), then a failed login as a backend's 530 is
 * (gw_reply_login_failed: its 530 after the delay). */
static void check_failed(gw_session *s, const char *reason)
{
    char who[65];
    GW_LOG_INFO(s->id, "event=auth_failed method=file user=\"%s\" reason=%s",
                log_name(s->login.user, who, sizeof who), reason);
    s->login.user_sent = false;
    gw_reply_login_failed(s);
}

/* The check passed: the backend is chosen and connected; its set-up ends with the login
 * replayed (gw_edge_login_due). */
static void check_passed(gw_session *s)
{
    struct gw_edge *e = s->login.edge;
    const gw_user_entry *who = e->who;
    /* The users file's own attributes win, then the user's (or a group's) rule of the
     * user_map, then the frontend's balance and the same name with the client's password. */
    const gw_map_rule *rule = gw_user_map_find(s->fe->user_map, who->name, who->groups);
    const char *backend = who->backend[0] ? who->backend : rule ? rule->backend : "";
    const char *account = who->backend_user[0]       ? who->backend_user
                          : rule && rule->account[0] ? rule->account
                                                     : who->name;
    e->fixed = !who->backend_user[0] && rule ? rule->password : NULL;
    char name[65], acct[65], line[24] = "";
    if (rule)
        snprintf(line, sizeof line, " map_line=%d", rule->line);
    GW_LOG_INFO(s->id,
                "event=auth_ok method=file user=\"%s\" backend_user=\"%s\" password=%s%s%s%s",
                log_name(s->login.user, name, sizeof name), log_name(account, acct, sizeof acct),
                e->fixed ? "fixed" : "client", backend[0] ? " backend=" : "", backend, line);
    int want = -1;
    for (int i = 0; backend[0] && i < s->fe->n_backends; i++)
        if (strcmp(s->fe->backends[i]->conf->name, backend) == 0)
            want = i;
    if (s->route.be && want >= 0 && s->fe->backends[want] != s->route.be) {
        /* REIN (or a refused login) keeps the session's backend, as route_user does */
        GW_LOG_INFO(s->id, "event=route_refused backend=%s reason=\"the session keeps %s\"",
                    backend, s->route.be->conf->name);
        wipe_pw(e);
        e->who = NULL;
        s->login.user_sent = false;
        gw_sess_reply(s, GW_R_ROUTE_REIN_OTHER);
        gw_sess_command_done(s);
        return;
    }
    if (!gw_sess_set_be_user(s, account)) {
        wipe_pw(e);
        gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
        return;
    }
    if (!s->route.be) {
        bool ok = want >= 0 ? gw_backend_choose_index(s, want) : gw_backend_choose(s);
        if (!ok) {
            wipe_pw(e);
            gw_sess_fail(s, want >= 0 ? GW_R_TOO_MANY_CONNECTIONS : GW_R_UNAVAILABLE,
                         "no backend available");
            return;
        }
    }
    gw_backend_connect(s); /* PEND_SETUP from here: the set-up ends with the login */
}

static void after_check(uv_work_t *req, int status)
{
    struct gw_edge *e = req->data;
    gw_session *s = e->s;
    e->busy = false;
    if (s->cstate == CS_CLOSING || status != 0) {
        wipe_pw(e);
        if (s->cstate != CS_CLOSING)
            gw_sess_fail(s, GW_R_LOCAL_ERROR, "password check cancelled");
    } else if (!e->ok) {
        wipe_pw(e);
        check_failed(s, gw_users_find(e->users, e->name) ? "bad_password" : "unknown_user");
    } else {
        check_passed(s);
    }
    gw_sess_release(s); /* the check held the session */
}

/* PASS on an auth = file frontend: checked off the loop; the queue waits (PEND_CHECK). */
static void edge_pass(gw_session *s, const char *arg)
{
    if (s->login.logged_in) {
        gw_sess_reply(s, GW_R_EDGE_LOGGED_IN);
        return;
    }
    if (!s->login.user_sent || !s->login.edge) {
        gw_sess_reply(s, GW_R_EDGE_USER_FIRST);
        return;
    }
    struct gw_edge *e = s->login.edge;
    if (GW_SESS_BUG_ON(s, e->busy))
        return;
    wipe_pw(e);
    e->pw = strdup(arg);
    if (!e->pw) {
        gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
        return;
    }
    e->s = s;
    e->users = s->fe->users;
    e->who = NULL;
    e->fixed = NULL;
    e->ok = false;
    snprintf(e->name, sizeof e->name, "%s", e->too_long ? "" : s->login.user); /* "": nobody */
    e->work.data = e;
    gw_sess_set_pending(s, PEND_CHECK);
    s->handles++;
    int r = uv_queue_work(s->loop, &e->work, check_work, after_check);
    if (r != 0) {
        s->handles--;
        wipe_pw(e);
        gw_sess_fail(s, GW_R_LOCAL_ERROR, uv_strerror(r));
        return;
    }
    e->busy = true;
}

/* The [policy] this logged-in session runs under, or NULL. */
static const gw_policy_conf *session_policy(const gw_session *s)
{
    const gw_config *cfg = s->fe->cfg;
    if (cfg->n_policies == 0)
        return NULL;
    const gw_user_entry *who = s->login.edge ? s->login.edge->who : NULL;
    int i = gw_policy_select(cfg, s->fe->conf->policy_index, s->login.user, who ? who->groups : "",
                             who ? who->policy : NULL);
    return i >= 0 ? &cfg->policies[i] : NULL;
}

bool gw_edge_user(gw_session *s, const char *arg)
{
    if (!file_auth(s))
        return false;
    if (s->login.logged_in)
        gw_sess_reply(s, GW_R_EDGE_OTHER_USER);
    else
        edge_user(s, arg);
    return true;
}

bool gw_edge_command(gw_session *s, const gw_cmd_def *def, const char *verb, const char *arg)
{
    if (def->id == GW_CMD_PASS && file_auth(s)) {
        edge_pass(s, arg);
        return true;
    }
    if (!s->login.logged_in)
        return false;
    switch (def->id) { /* the gateway's own: never the backend's business */
    case GW_CMD_AUTH:
    case GW_CMD_PBSZ:
    case GW_CMD_PROT:
    case GW_CMD_CCC:
    case GW_CMD_REIN:
    case GW_CMD_HOST:
        return false;
    default:
        break;
    }
    const gw_policy_conf *p = session_policy(s);
    if (gw_policy_allows(p, verb))
        return false;
    char name[65];
    GW_LOG_INFO(s->id, "event=policy_refused verb=%s policy=%s user=\"%s\"", verb, p->name,
                log_name(s->login.user, name, sizeof name));
    gw_metric_policy_refused(s->fe->conf->name);
    gw_sess_reply(s, GW_R_POLICY_DENIED);
    return true;
}

bool gw_edge_login_due(const gw_session *s)
{
    const struct gw_edge *e = s->login.edge;
    return e && e->pw && e->who;
}

bool gw_edge_pass_line(gw_session *s, char *line, size_t cap)
{
    struct gw_edge *e = s->login.edge;
    if (!e || !e->pw)
        return false;
    snprintf(line, cap, "PASS %s", e->fixed ? e->fixed : e->pw);
    wipe_pw(e); /* its last use */
    return true;
}

/* The backend refused the replayed login: 530, logged as its refusal (not a failed
 * gateway login: no ban count); its connection part is dropped as REIN drops it (the
 * session keeps its backend), the next PASS connects again. */
void gw_edge_login_refused(gw_session *s, gw_reply_parser *r)
{
    char name[65], acct[65];
    GW_LOG_WARN(
        s->id, "event=backend_login_refused user=\"%s\" backend_user=\"%s\" backend=%s code=%d",
        log_name(s->login.user, name, sizeof name), log_name(GW_SESS_BE_USER(s), acct, sizeof acct),
        s->route.be ? s->route.be->conf->name : "", r->code);
    gw_edge_forget(s);
    gw_sess_reply(s, GW_R_LOGIN_INCORRECT);
    s->login.user_sent = false;
    if (gw_backend_drop(s))
        gw_sess_command_done(s);
}
