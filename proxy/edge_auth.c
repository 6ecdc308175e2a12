/* Decisions at the edge: the gateway's own USER/PASS check on `auth = file` frontends
 * (users_file.h), the replayed login toward the backend after it, and the command policy
 * ([policy NAME], cmd_policy.h) of logged-in sessions. Part of the session module: called
 * from client_cmd.c (commands), backend.c (backend ready) and relay.c (its replies).
 *
 * auth = file, in order: USER is answered by the gateway (331); PASS is checked in libuv's
 * thread pool (crypt_r costs milliseconds by design); only then is a backend chosen and
 * connected, and sent USER (backend_user or the same name) and the client's PASS, whose
 * reply is the client's. A failed check is a failed login as a backend's 530 is (delay,
 * ban list, 3 per session) and opens nothing. */
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

#define FAILED_LOGIN_DELAY_MS 1000 /* as relay.c's for a backend's 530 */

struct gw_edge {
    uv_work_t work;
    gw_session *s;
    const gw_users *users; /* the session's generation's: stable while the session holds it */
    char name[64];
    char *pw; /* the client's password, for the check and then the backend's PASS (wiped) */
    bool ok;  /* the check's result (thread pool), read in after_check */
    bool busy;
    bool too_long;            /* the USER argument was cut to fit s->user: no user has that name */
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
    if (!s->edge)
        return;
    wipe_pw(s->edge);
    free(s->edge);
    s->edge = NULL;
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
    if (!s->edge && !(s->edge = calloc(1, sizeof *s->edge))) {
        gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
        return;
    }
    wipe_pw(s->edge);
    /* SECURITY: a longer name must not be cut into a listed one */
    s->edge->too_long = strlen(arg) >= sizeof s->user;
    s->user_sent = true;
    snprintf(s->user, sizeof s->user, "%s", arg);
    gw_sess_reply(s, GW_R_EDGE_PASSWORD);
}

static void check_work(uv_work_t *req)
{
    struct gw_edge *e = req->data;
    e->ok = gw_users_verify(e->users, e->name, e->pw, &e->who);
}

/* A failed check: logged (never the password), counted as a failed login, 530 after the
 * delay (check_deadlines releases it and the queue). */
static void check_failed(gw_session *s, const char *reason)
{
    char who[65];
    GW_LOG_INFO(s->id, "event=auth_failed method=file user=\"%s\" reason=%s",
                log_name(s->user, who, sizeof who), reason);
    GW_LOG_INFO(s->id, "event=login_failed count=%d", s->failed_logins + 1);
    gw_sinfo_login(s, false);
    s->user_sent = false;
    if (gw_bans_login_failed(s->fe->cfg, &s->client_peer, s->id)) {
        gw_sess_fail(s, GW_R_BANNED, "client address banned");
        return;
    }
    if (++s->failed_logins >= 3) {
        gw_sess_fail(s, GW_R_TOO_MANY_LOGINS, "3 failed logins");
        return;
    }
    s->reply_delay_until = gw_sess_now(s) + FAILED_LOGIN_DELAY_MS;
    gw_sess_rearm(s);
}

/* The check passed: the backend is chosen and connected; gw_edge_backend_ready replays the
 * login once it is ready. */
static void check_passed(gw_session *s)
{
    struct gw_edge *e = s->edge;
    const gw_user_entry *who = e->who;
    const char *account = who->backend_user[0] ? who->backend_user : who->name;
    char name[65], acct[65];
    GW_LOG_INFO(s->id, "event=auth_ok method=file user=\"%s\" backend_user=\"%s\"%s%s",
                log_name(s->user, name, sizeof name), log_name(account, acct, sizeof acct),
                who->backend[0] ? " backend=" : "", who->backend);
    snprintf(s->be_user, sizeof s->be_user, "%s", account);
    if (!s->be) {
        int want = -1;
        for (int i = 0; who->backend[0] && i < s->fe->n_backends; i++)
            if (strcmp(s->fe->backends[i]->conf->name, who->backend) == 0)
                want = i;
        bool ok = want >= 0 ? gw_backend_choose_index(s, want) : gw_backend_choose(s);
        if (!ok) {
            wipe_pw(e);
            gw_sess_fail(s, want >= 0 ? GW_R_TOO_MANY_CONNECTIONS : GW_R_UNAVAILABLE,
                         "no backend available");
            return;
        }
    }
    s->user_waiting = true;
    gw_backend_connect(s);
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

/* PASS on an auth = file frontend: checked off the loop; the queue waits (PEND_EDGE_CHECK). */
static void edge_pass(gw_session *s, const char *arg)
{
    if (s->logged_in) {
        gw_sess_reply(s, GW_R_EDGE_LOGGED_IN);
        return;
    }
    if (!s->user_sent || !s->edge) {
        gw_sess_reply(s, GW_R_EDGE_USER_FIRST);
        return;
    }
    struct gw_edge *e = s->edge;
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
    e->ok = false;
    snprintf(e->name, sizeof e->name, "%s", e->too_long ? "" : s->user); /* "": nobody */
    e->work.data = e;
    gw_sess_set_pending(s, PEND_EDGE_CHECK);
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
    const gw_user_entry *who = s->edge ? s->edge->who : NULL;
    int i = gw_policy_select(cfg, s->fe->conf->policy_index, s->user, who ? who->groups : "",
                             who ? who->policy : NULL);
    return i >= 0 ? &cfg->policies[i] : NULL;
}

bool gw_edge_user(gw_session *s, const char *arg)
{
    if (!file_auth(s))
        return false;
    if (s->logged_in)
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
    if (!s->logged_in)
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
                log_name(s->user, name, sizeof name));
    gw_metric_policy_refused(s->fe->conf->name);
    gw_sess_reply(s, GW_R_POLICY_DENIED);
    return true;
}

bool gw_edge_backend_ready(gw_session *s)
{
    struct gw_edge *e = s->edge;
    if (!e || !e->pw || !e->who)
        return false;
    char line[GW_CMD_LINE_MAX + 8];
    snprintf(line, sizeof line, "USER %s", s->be_user);
    gw_backend_send(s, line, PEND_EDGE_USER);
    return true;
}

/* The backend refused the replayed login: 530, logged as its refusal (not a failed
 * gateway login: no ban count); its connection is closed as REIN does, the next PASS
 * connects again. */
static void backend_refused(gw_session *s, gw_reply_parser *r)
{
    char name[65], acct[65];
    GW_LOG_WARN(s->id,
                "event=backend_login_refused user=\"%s\" backend_user=\"%s\" backend=%s code=%d",
                log_name(s->user, name, sizeof name), log_name(s->be_user, acct, sizeof acct),
                s->be ? s->be->conf->name : "", r->code);
    if (s->edge)
        wipe_pw(s->edge);
    gw_sess_reply(s, GW_R_LOGIN_INCORRECT);
    s->user_sent = false;
    if (s->backend)
        gw_conn_close(s->backend);
    s->backend = NULL;
    gw_sess_set_backend_state(s, BS_IDLE);
    gw_reply_init(&s->reply);
    gw_sess_command_done(s);
}

void gw_edge_reply(gw_session *s, gw_reply_parser *r)
{
    if (r->code == 230 || (s->pending == PEND_EDGE_PASS && r->code >= 200 && r->code < 300)) {
        /* logged in: the reply is the client's answer to its PASS, relayed as any */
        if (s->edge)
            wipe_pw(s->edge);
        gw_sess_set_pending(s, PEND_RELAY);
        gw_relay_line(s, r);
        return;
    }
    if (!r->last)
        return;
    if (s->pending == PEND_EDGE_USER && r->code == 331 && s->edge && s->edge->pw) {
        char line[GW_CMD_LINE_MAX + 8];
        snprintf(line, sizeof line, "PASS %s", s->edge->pw);
        gw_backend_send(s, line, PEND_EDGE_PASS);
        explicit_bzero(line, sizeof line);
        wipe_pw(s->edge);
        return;
    }
    backend_refused(s, r);
}
