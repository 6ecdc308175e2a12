/* Decisions at the edge: the gateway's own USER/PASS check on `auth = file` frontends
 * (users_file.h) and `auth = pam` ones (pam_check.h), the backend and account after it
 * (the users file's attributes, user_map.h), the replayed login, and the command policy
 * ([policy NAME], cmd_policy.h) of logged-in sessions. Part of the session module: called
 * from client_cmd.c (commands) and backend.c (the set-up's replayed login).
 *
 * auth = file, in order: USER is answered by the gateway (331); PASS is checked in libuv's
 * thread pool (crypt_r costs milliseconds by design; pending PEND_CHECK); only then is a
 * backend chosen and connected, and its set-up ends with USER (backend_user or the same
 * name) and the client's PASS (steps BE_LOGIN_USER, BE_LOGIN_PASS), whose 2xx is the
 * client's. A failed check is a failed login as a backend's 530 is (delay, ban list, 3 per
 * session) and opens nothing. All of it lives in the session's login part
 * (s->login.edge), which REIN resets whole.
 *
 * auth = pam and auth = ldap run the same way. A PAM conversation or an LDAP bind may block
 * for long (modules sleep, a directory is slow), so each worker runs at most SLOW_PER_WORKER
 * of them at a time in the thread pool (which name lookups share) and queues the rest in
 * order: a burst of logins waits its turn instead of being refused. LDAP's cache answers
 * on the loop, and an unreachable directory answers 421 (edge_ldap_done). */
#include "session_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth_ldap.h"
#include "bans.h"
#include "cmd_policy.h"
#include "ftp_codes.h"
#include "log.h"
#include "metrics.h"
#include "pam_check.h"
#include "users_file.h"

#define SLOW_PER_WORKER 2 /* PAM conversations and LDAP binds at once, per worker */

struct gw_edge {
    uv_work_t work;
    gw_session *s;
    const gw_users *users; /* the session's generation's: stable while the session holds it */
    char name[64];
    char *pw;  /* the client's password, for the check and then the backend's PASS (wiped) */
    bool ok;   /* the check's result (thread pool), read in after_check */
    bool busy; /* in the thread pool or queued for it: the session is held */
    bool pam;  /* auth = pam: the check is a PAM conversation */
    const char *service;          /* pam: the frontend's pam_service (the generation's) */
    enum gw_pam_result pam_res;   /* pam: its result (thread pool) */
    char pam_why[128];            /* pam: PAM's text of a failure */
    char rhost[64];               /* pam: the client's IP address (PAM_RHOST) */
    gw_user_entry pam_who;        /* pam: who passed (name, Unix groups); `who` points here */
    gw_ldap_check *ldap;          /* ldap: the check's state (heap); `who` points into it */
    struct gw_edge *next_waiting; /* pam, ldap: the worker's queue of checks not started yet */
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
    free(e->ldap);
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

/* Does the gateway check the login itself (auth = file, pam or ldap)? */
static bool edge_auth(const gw_session *s)
{
    return (s->fe->conf->auth == GW_AUTH_FILE && s->fe->users) ||
           s->fe->conf->auth == GW_AUTH_PAM || (s->fe->conf->auth == GW_AUTH_LDAP && s->fe->ldap);
}

static const char *method(const gw_session *s)
{
    return s->fe->conf->auth == GW_AUTH_PAM    ? "pam"
           : s->fe->conf->auth == GW_AUTH_LDAP ? "ldap"
                                               : "file";
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
    if (e->ldap) {
        gw_ldap_run(e->s->fe->ldap, e->ldap);
        return;
    }
    if (!e->pam) {
        e->ok = gw_users_verify(e->users, e->name, e->pw, &e->who);
        return;
    }
    e->pam_res = e->name[0] ? gw_pam_check(e->service, e->name, e->pw, e->rhost, e->pam_why,
                                           sizeof e->pam_why)
                            : GW_PAM_UNKNOWN_USER;
    e->ok = e->pam_res == GW_PAM_OK;
    if (e->ok) { /* who passed: the name PAM knows, and its Unix groups */
        memset(&e->pam_who, 0, sizeof e->pam_who);
        snprintf(e->pam_who.name, sizeof e->pam_who.name, "%s", e->name);
        gw_pam_groups(e->name, e->pam_who.groups, sizeof e->pam_who.groups);
        e->who = &e->pam_who;
    }
}

/* auth = pam, ldap: this worker's slow checks running, and those waiting (in order). */
static _Thread_local struct {
    int running;
    struct gw_edge *head, *tail;
} slow_q;

static bool slow(const struct gw_edge *e)
{
    return e->pam || e->ldap;
}

static void after_check(uv_work_t *req, int status);

/* Hand the check to the thread pool; the session is held (s->handles) already. */
static void start_check(struct gw_edge *e)
{
    gw_session *s = e->s;
    if (slow(e))
        slow_q.running++;
    int r = uv_queue_work(s->loop, &e->work, check_work, after_check);
    if (r == 0) {
        if (slow(e))
            GW_LOG_DEBUG(s->id, "event=auth_check_start method=%s running=%d", method(s),
                         slow_q.running);
        return;
    }
    if (slow(e))
        slow_q.running--;
    e->busy = false;
    wipe_pw(e);
    gw_sess_fail(s, GW_R_LOCAL_ERROR, uv_strerror(r));
    gw_sess_release(s);
}

/* A PAM conversation or LDAP bind ended: the next waiting one of a live session starts. */
static void slow_next(void)
{
    slow_q.running--;
    while (slow_q.head && slow_q.running < SLOW_PER_WORKER) {
        struct gw_edge *e = slow_q.head;
        slow_q.head = e->next_waiting;
        if (!slow_q.head)
            slow_q.tail = NULL;
        e->next_waiting = NULL;
        if (e->s->cstate == CS_CLOSING) { /* gone while it waited */
            e->busy = false;
            wipe_pw(e);
            gw_sess_release(e->s);
            continue;
        }
        start_check(e);
    }
}

/* A failed check: logged (never the password), then a failed login as a backend's 530 is
 * (gw_reply_login_failed: its 530 after the delay). */
static void check_failed(gw_session *s, const char *reason)
{
    char who[65];
    GW_LOG_INFO(s->id, "event=auth_failed method=%s user=\"%s\" reason=%s", method(s),
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
    GW_LOG_INFO(s->id, "event=auth_ok method=%s user=\"%s\" backend_user=\"%s\" password=%s%s%s%s",
                method(s), log_name(s->login.user, name, sizeof name),
                log_name(account, acct, sizeof acct), e->fixed ? "fixed" : "client",
                backend[0] ? " backend=" : "", backend, line);
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

/* auth = ldap: the check's answer (from the thread pool or the cache). */
static void edge_ldap_done(gw_session *s)
{
    struct gw_edge *e = s->login.edge;
    gw_ldap_check *c = e->ldap;
    char who[65], be[65];
    gw_ldap_remember(s->fe->ldap, c, gw_sess_now(s));
    if (c->status == GW_LDAP_OK && c->who.backend[0]) { /* the directory names a backend */
        bool found = false;
        for (int i = 0; i < s->fe->n_backends && !found; i++)
            found = strcmp(s->fe->backends[i]->conf->name, c->who.backend) == 0;
        if (!found) {
            c->status = GW_LDAP_UNAVAILABLE;
            snprintf(c->reason, sizeof c->reason, "unknown_backend");
            snprintf(c->detail, sizeof c->detail, "%s is not one of this frontend's backends",
                     log_name(c->who.backend, be, sizeof be));
        }
    }
    if (c->status == GW_LDAP_UNAVAILABLE) {
        wipe_pw(e);
        GW_LOG_WARN(s->id, "event=auth_unavailable method=ldap user=\"%s\" reason=%s detail=\"%s\"",
                    log_name(s->login.user, who, sizeof who), c->reason, c->detail);
        s->login.user_sent = false;
        gw_sess_fail(s, GW_R_UNAVAILABLE, "authentication unavailable");
    } else if (c->status == GW_LDAP_DENIED) {
        wipe_pw(e);
        check_failed(s, c->reason);
    } else {
        if (c->cached)
            GW_LOG_DEBUG(s->id, "event=auth_cached method=ldap");
        e->who = &c->who;
        check_passed(s);
    }
}

static void after_check(uv_work_t *req, int status)
{
    struct gw_edge *e = req->data;
    gw_session *s = e->s;
    e->busy = false;
    if (slow(e))
        slow_next();
    if (e->ldap && s->cstate != CS_CLOSING && status == 0) {
        edge_ldap_done(s);
    } else if (s->cstate == CS_CLOSING || status != 0) {
        wipe_pw(e);
        if (s->cstate != CS_CLOSING)
            gw_sess_fail(s, GW_R_LOCAL_ERROR, "password check cancelled");
    } else if (e->pam && e->pam_res == GW_PAM_ERROR) {
        /* the service failed, not the client: no failed login, no ban count */
        char who[65];
        wipe_pw(e);
        GW_LOG_WARN(s->id, "event=auth_unavailable method=pam user=\"%s\" reason=\"%s\"",
                    log_name(s->login.user, who, sizeof who), e->pam_why);
        gw_sess_fail(s, GW_R_UNAVAILABLE, "authentication unavailable");
    } else if (!e->ok) {
        wipe_pw(e);
        check_failed(s, e->pam                             ? gw_pam_result_name(e->pam_res)
                        : gw_users_find(e->users, e->name) ? "bad_password"
                                                           : "unknown_user");
    } else {
        check_passed(s);
    }
    gw_sess_release(s); /* the check held the session */
}

/* auth = ldap: the check's state; true when the cache answered it (done here). */
static bool edge_ldap_cached(gw_session *s, struct gw_edge *e)
{
    if (!e->ldap && !(e->ldap = malloc(sizeof *e->ldap))) {
        wipe_pw(e);
        gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
        return true;
    }
    memset(e->ldap, 0, sizeof *e->ldap);
    snprintf(e->ldap->name, sizeof e->ldap->name, "%s", e->name);
    e->ldap->password = e->pw;
    if (!gw_ldap_lookup(s->fe->ldap, e->ldap, gw_sess_now(s)))
        return false;
    edge_ldap_done(s);
    return true;
}

/* PASS on an auth = file, pam or ldap frontend: checked off the loop; the queue waits
 * (PEND_CHECK). */
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
    e->pam = s->fe->conf->auth == GW_AUTH_PAM;
    e->service = s->fe->conf->pam_service;
    gw_addr_ip_str(&s->client_peer, e->rhost, sizeof e->rhost);
    e->who = NULL;
    e->fixed = NULL;
    e->ok = false;
    snprintf(e->name, sizeof e->name, "%s", e->too_long ? "" : s->login.user); /* "": nobody */
    e->work.data = e;
    gw_sess_set_pending(s, PEND_CHECK);
    if (s->fe->conf->auth != GW_AUTH_LDAP) {
        free(e->ldap); /* slow() tells an LDAP check by it */
        e->ldap = NULL;
    } else if (edge_ldap_cached(s, e)) {
        return;
    }
    s->handles++; /* the check holds the session until after_check */
    e->busy = true;
    if (slow(e) && slow_q.running >= SLOW_PER_WORKER) {
        GW_LOG_DEBUG(s->id, "event=auth_queued method=%s running=%d", method(s), slow_q.running);
        if (slow_q.tail)
            slow_q.tail->next_waiting = e;
        else
            slow_q.head = e;
        slow_q.tail = e;
        return;
    }
    start_check(e);
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

static uint64_t lower_set(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

void gw_edge_rates(const gw_session *s, gw_rate_spec *down, gw_rate_spec *up)
{
    const gw_frontend_conf *fc = s->fe->conf;
    const gw_policy_conf *p = s->login.logged_in ? session_policy(s) : NULL;
    const gw_user_entry *who = s->login.edge ? s->login.edge->who : NULL;
    *down = (gw_rate_spec){.session = fc->rate_down,
                           .user = lower_set(p ? p->rate_down : 0, who ? who->rate_down : 0),
                           .user_key = s->login.user,
                           .frontend = fc->frontend_rate_down,
                           .frontend_key = fc->name,
                           .seq = s->fe->gen->seq};
    *up = (gw_rate_spec){.session = fc->rate_up,
                         .user = lower_set(p ? p->rate_up : 0, who ? who->rate_up : 0),
                         .user_key = s->login.user,
                         .frontend = fc->frontend_rate_up,
                         .frontend_key = fc->name,
                         .seq = s->fe->gen->seq};
}

bool gw_edge_user(gw_session *s, const char *arg)
{
    if (!edge_auth(s))
        return false;
    if (s->login.logged_in)
        gw_sess_reply(s, GW_R_EDGE_OTHER_USER);
    else
        edge_user(s, arg);
    return true;
}

bool gw_edge_command(gw_session *s, const gw_cmd_def *def, const char *verb, const char *arg)
{
    if (def->id == GW_CMD_PASS && edge_auth(s)) {
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
