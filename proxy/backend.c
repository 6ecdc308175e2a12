/* The backend control leg: the backend chosen (and failed over), resolve, connect
 * (connect_timeout in the core's timer), and its set-up, one step at a time
 * (gw_backend_advance): the greeting, implicit or explicit TLS toward the server with
 * PBSZ 0 / PROT P (again after login when refused before), the self-greeting session's
 * OPTS UTF8 ON and USER (auth = file: the login the gateway checked, USER and PASS); then
 * the reply stream fed to reply_dispatch.c. */
#include "session_int.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ftp_codes.h"
#include "log.h"
#include "metrics.h"
#include "proxy_proto.h"

/* random: a per-thread generator (splitmix64), seeded once from the clock. */
static uint32_t next_random(uint64_t salt)
{
    static _Thread_local uint64_t x;
    if (!x)
        x = uv_hrtime() ^ (salt * 0x9e3779b97f4a7c15ull) ^ 1;
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

bool gw_backend_choose(gw_session *s)
{
    gw_frontend *fe = s->fe;
    gw_health *h = fe->gen->health;
    if (!s->route.tried)
        s->route.tried = calloc((size_t)fe->n_backends / 32 + 1, sizeof *s->route.tried);
    gw_bal_cand *c = malloc((size_t)(fe->n_backends ? fe->n_backends : 1) * sizeof *c);
    if (!s->route.tried || !c) {
        free(c);
        return false;
    }
    for (;;) {
        for (int i = 0; i < fe->n_backends; i++) {
            const gw_backend_rt *be = fe->backends[i];
            c[i] = (gw_bal_cand){.weight = be->conf->weight,
                                 .live = atomic_load(be->live),
                                 .max_sessions = be->conf->max_sessions,
                                 .up = !(s->route.tried[i / 32] & (1u << i % 32)) &&
                                       (!h || gw_health_is_up(h, be->conf->name))};
        }
        const uint8_t *key = s->client_peer.ip;
        size_t keylen = s->client_peer.family == 6 ? 16 : 4;
        if (fe->conf->balance == GW_BALANCE_USER) { /* the name sent to the backend */
            key = (const uint8_t *)GW_SESS_BE_USER(s);
            keylen = strlen(GW_SESS_BE_USER(s));
        }
        int i = gw_balance_pick(fe->conf->balance, c, fe->n_backends, &fe->bal, 0,
                                next_random(s->id), key, keylen);
        if (i < 0) {
            free(c);
            return false;
        }
        gw_backend_rt *be = fe->backends[i];
        s->route.tried[i / 32] |= 1u << i % 32;
        /* Another worker may have taken the last place meanwhile: count first, then look. */
        int now = atomic_fetch_add(be->live, 1) + 1;
        if (be->conf->max_sessions > 0 && now > be->conf->max_sessions) {
            atomic_fetch_sub(be->live, 1);
            continue;
        }
        s->route.be = be;
        s->route.counted = true;
        GW_LOG_INFO(s->id, "event=backend_chosen backend=%s policy=%s live=%d", be->conf->name,
                    gw_balance_name(fe->conf->balance), now);
        free(c);
        return true;
    }
}

bool gw_backend_choose_index(gw_session *s, int i)
{
    gw_backend_rt *be = s->fe->backends[i];
    gw_health *h = s->fe->gen->health; /* an operator's drain or maint holds when named too */
    if (h && gw_health_admin(h, be->conf->name) != GW_BE_ADMIN_READY) {
        GW_LOG_WARN(s->id, "event=backend_unavailable backend=%s policy=route_user state=%s",
                    be->conf->name, gw_be_admin_name(gw_health_admin(h, be->conf->name)));
        return false;
    }
    int now = atomic_fetch_add(be->live, 1) + 1;
    if (be->conf->max_sessions > 0 && now > be->conf->max_sessions) {
        atomic_fetch_sub(be->live, 1);
        GW_LOG_WARN(s->id, "event=backend_full backend=%s policy=route_user", be->conf->name);
        return false;
    }
    /* Pinned: never failed over, so the tried set is not needed. */
    s->route.be = be;
    s->route.counted = true;
    s->route.pinned = true;
    GW_LOG_INFO(s->id, "event=backend_chosen backend=%s policy=route_user live=%d", be->conf->name,
                now);
    return true;
}

void gw_backend_uncount(gw_session *s)
{
    if (s->route.counted)
        atomic_fetch_sub(s->route.be->live, 1);
    s->route.counted = false;
}

bool gw_backend_prelogin_admit(gw_session *s)
{
    const gw_frontend_conf *fc = s->fe->conf;
    int r =
        gw_health_prelogin_acquire(s->fe->gen->health, fc->name, &s->client_peer,
                                   fc->prelogin_backend_per_ip, fc->prelogin_backend_max, false);
    if (r == 1) {
        s->route.prelogin_counted = true;
        s->route.prelogin_fe = s->fe;
        return true;
    }
    GW_LOG_INFO(s->id,
                "event=prelogin_deferred frontend=%s per_ip=%d max=%d note=\"the gateway greets; "
                "the backend is connected at USER\"",
                fc->name, fc->prelogin_backend_per_ip, fc->prelogin_backend_max);
    return false;
}

void gw_backend_prelogin_release(gw_session *s)
{
    if (!s->route.prelogin_counted)
        return;
    s->route.prelogin_counted = false;
    gw_health_prelogin_release(s->route.prelogin_fe->gen->health, s->route.prelogin_fe->conf->name,
                               &s->client_peer);
}

/* Errors of the gateway's own making (descriptors, memory, local ports): never the
 * backend's fault, so neither counted against it nor a reason to try another. */
static bool local_failure(int status)
{
    return status == UV_EMFILE || status == UV_ENFILE || status == UV_ENOMEM ||
           status == UV_ENOBUFS || status == UV_EADDRNOTAVAIL || status == UV_EAI_MEMORY;
}

bool gw_backend_failover(gw_session *s, const char *reason)
{
    if (!s->route.be || s->cstate == CS_CLOSING)
        return false;
    if (!s->bconn.reported) {
        s->bconn.reported = true;
        if (s->fe->gen->health)
            gw_health_report(s->fe->gen->health, s->route.be->conf->name, false, reason);
        gw_sinfo_backend(s, false, reason);
    }
    if (s->route.committed || s->bconn.resolving || s->route.pinned)
        return false;
    gw_backend_rt *from = s->route.be;
    gw_backend_uncount(s);
    if (!gw_backend_choose(s)) {
        s->route.be = from; /* for the failure's messages; no longer counted */
        GW_LOG_WARN(s->id, "event=backend_failover from=%s reason=\"%s\" to=none", from->conf->name,
                    reason);
        return false;
    }
    GW_LOG_WARN(s->id, "event=backend_failover from=%s reason=\"%s\" to=%s", from->conf->name,
                reason, s->route.be->conf->name);
    if (gw_backend_drop(s))
        gw_backend_connect(s);
    return true;
}

bool gw_backend_drop(gw_session *s)
{
    /* A running lookup would connect the new connection: failover waits for it, and REIN
     * is a command, never taken during the set-up. */
    if (GW_SESS_BUG_ON(s, s->bconn.resolving))
        return false;
    if (s->bconn.conn)
        gw_conn_close(s->bconn.conn); /* its close callback releases its handle */
    gw_sess_set_backend_state(s, BE_IDLE);
    gw_reply_free(&s->bconn.reply);
    s->bconn = (gw_sess_bconn){.step = BE_IDLE};
    gw_reply_init(&s->bconn.reply);
    return true;
}

void gw_backend_send(gw_session *s, const char *line, enum gw_pending pending)
{
    char buf[2 * GW_CMD_LINE_MAX + 3];
    size_t n = gw_cmd_format(buf, sizeof buf, line);
    if (n == 0 || !s->bconn.conn) {
        gw_sess_reply(s, GW_R_LOCAL_ERROR);
        return;
    }
    gw_conn_write(s->bconn.conn, buf, n);
    gw_sess_set_pending(s, pending);
}

/* A set-up step that is a command of the gateway's own: its reply is the gateway's too. */
static void step_send(gw_session *s, enum gw_be_step to, const char *line)
{
    gw_sess_set_backend_state(s, to);
    gw_backend_send(s, line, PEND_SETUP);
}

static void attach_tls(gw_session *s)
{
    const gw_backend_rt *be = s->route.be;
    if (gw_conn_attach_tls(s->bconn.conn, gw_tls_new_client(be->tls_ctx, GW_TLS_CLIENT_CONTROL,
                                                            be->host, be->conf->tls_verify, NULL)))
        gw_sess_fail(s, GW_R_UNAVAILABLE_NOMEM, "out of memory");
}

/* The TCP connection is up: a PROXY header before anything else (TLS included), then
 * (implicit) the handshake, then the 220. */
static void connected(gw_session *s)
{
    const gw_backend_conf *bc = s->route.be->conf;
    gw_sess_set_backend_state(s, BE_GREETING);
    if (bc->proxy_protocol) {
        uint8_t hdr[GW_PP_BUILD_MAX];
        size_t n =
            gw_pp_build(bc->proxy_protocol, hdr, sizeof hdr, &s->client_peer, &s->client_reached);
        if (n)
            gw_conn_write(s->bconn.conn, hdr, n);
    }
    if (bc->tls == GW_BE_TLS_IMPLICIT) {
        attach_tls(s);
        return;
    }
    gw_conn_start_read(s->bconn.conn);
}

/* PBSZ 0 or PROT P refused: many servers want them only after login, so they are tried
 * again after the 230; refused then too (or after a login), its data legs stay in clear. */
static void prot_refused(gw_session *s, bool late)
{
    if (late || s->login.logged_in) {
        s->bconn.data = BE_DATA_CLEAR;
        GW_LOG_WARN(s->id, "event=backend_prot_refused note=\"backend data legs stay in clear\"");
    } else {
        s->bconn.data = BE_DATA_LATER;
    }
}

/* The server is set up. self_greet: this connection was opened by the client's USER
 * (cmd_user_routed), which waits, behind the client's OPTS UTF8 ON (the gateway answered
 * it); the USER's reply is the answer to the client's USER. Otherwise the session's first
 * command (or the one after REIN) may go. */
static void set_up(gw_session *s)
{
    if (s->route.self_greet && s->login.utf8 && s->bconn.step != BE_UTF8) {
        step_send(s, BE_UTF8, "OPTS UTF8 ON");
        return;
    }
    char line[GW_CMD_LINE_MAX + 8];
    if (s->route.self_greet && gw_edge_login_due(s)) {
        /* auth = file: the login the gateway checked, replayed; READY at its 2xx */
        snprintf(line, sizeof line, "USER %s", GW_SESS_BE_USER(s));
        step_send(s, BE_LOGIN_USER, line);
        return;
    }
    gw_sess_set_backend_state(s, BE_READY);
    if (!s->route.self_greet) {
        gw_sess_command_done(s);
        return;
    }
    if (GW_SESS_BUG_ON(s, !s->login.user_sent)) /* self_greet connects at USER only */
        return;
    snprintf(line, sizeof line, GW_SESS_BE_USER(s)[0] ? "USER %s" : "USER", GW_SESS_BE_USER(s));
    gw_backend_send(s, line, PEND_RELAY);
}

/* The round after the 230 is over: the held 230 is the answer to the client's PASS. */
static void set_up_late(gw_session *s)
{
    gw_sess_set_backend_state(s, BE_READY);
    if (s->cur.held)
        gw_sess_reply(s, s->cur.held);
    free(s->cur.held);
    s->cur.held = NULL;
    s->cur.heldlen = 0;
    gw_sess_command_done(s);
}

void gw_backend_advance(gw_session *s, gw_reply_parser *r)
{
    /* A line relayed on the way here (the greeting) may have ended the session: writing
     * to a client that reset fails it at once (BE_CLOSED). Nothing is left to set up. */
    if (s->cstate == CS_CLOSING)
        return;
    enum gw_be_step step = s->bconn.step;
    bool late = step == BE_LATE_PBSZ || step == BE_LATE_PROT;
    /* CONNECT and TLS end with an event, every other step with the server's last line. */
    if (GW_SESS_BUG_ON(s, (step == BE_CONNECT || step == BE_TLS) != !r))
        return;
    bool ok = r && r->code >= 200 && r->code < 300;
    switch (step) {
    case BE_CONNECT:
        connected(s);
        return;
    case BE_GREETING: /* its 220 */
        if (s->route.be->conf->tls == GW_BE_TLS_EXPLICIT)
            step_send(s, BE_AUTH, "AUTH TLS");
        else if (s->route.be->conf->tls == GW_BE_TLS_IMPLICIT)
            step_send(s, BE_PBSZ, "PBSZ 0");
        else
            set_up(s);
        return;
    case BE_AUTH:
        if (r->code != 234) {
            gw_sess_fail(s, GW_R_BACKEND_REFUSED_AUTH, "backend refused AUTH TLS");
            return;
        }
        /* Bytes after the 234 line are TLS: the engine takes over this connection. */
        gw_sess_set_backend_state(s, BE_TLS);
        attach_tls(s);
        return;
    case BE_TLS: /* its handshake is done */
        step_send(s, BE_PBSZ, "PBSZ 0");
        return;
    case BE_PBSZ:
    case BE_LATE_PBSZ:
        if (ok) {
            step_send(s, late ? BE_LATE_PROT : BE_PROT, "PROT P");
            return;
        }
        prot_refused(s, late);
        break;
    case BE_PROT:
    case BE_LATE_PROT:
        if (ok)
            s->bconn.data = BE_DATA_TLS;
        else
            prot_refused(s, late);
        break;
    case BE_UTF8: /* its reply is swallowed: the client had the gateway's 200 */
        set_up(s);
        return;
    case BE_LOGIN_USER: /* its 331: the client's password follows */
        if (r->code == 331) {
            char line[GW_CMD_LINE_MAX + 8];
            bool have = gw_edge_pass_line(s, line, sizeof line);
            if (have)
                step_send(s, BE_LOGIN_PASS, line);
            explicit_bzero(line, sizeof line);
            if (have)
                return;
        }
        gw_edge_login_refused(s, r);
        return;
    case BE_LOGIN_PASS: /* not a 2xx (those are the client's: gw_backend_setup_line) */
        gw_edge_login_refused(s, r);
        return;
    case BE_READY: /* the login's 230 (held by the caller): PBSZ/PROT waited for it */
        if (GW_SESS_BUG_ON(s, s->bconn.data != BE_DATA_LATER))
            return;
        step_send(s, BE_LATE_PBSZ, "PBSZ 0");
        return;
    case BE_IDLE:
    case BE_CLOSED:
    default:
        (void)GW_SESS_BUG_ON(s, true); /* no connection to set up, or not a gw_be_step */
        return;
    }
    /* PBSZ/PROT answered: set up, or the round after the login is over. */
    if (late)
        set_up_late(s);
    else
        set_up(s);
}

void gw_backend_setup_line(gw_session *s, gw_reply_parser *r)
{
    switch (s->bconn.step) {
    case BE_GREETING:
        gw_backend_greeting_line(s, r);
        return;
    case BE_AUTH:
    case BE_PBSZ:
    case BE_PROT:
    case BE_UTF8:
    case BE_LATE_PBSZ:
    case BE_LATE_PROT:
        if (!r->last)
            return;
        GW_LOG_DEBUG(s->id, "event=backend_setup_reply step=%s reply=\"%.*s\"",
                     gw_sess_backend_step_name(s->bconn.step), (int)r->len - 2, r->line);
        gw_backend_advance(s, r);
        return;
    case BE_LOGIN_USER:
    case BE_LOGIN_PASS:
        if ((r->code == 230 && s->bconn.step == BE_LOGIN_USER) ||
            (r->code >= 200 && r->code < 300 && s->bconn.step == BE_LOGIN_PASS)) {
            /* Logged in: the reply is the answer to the client's PASS, relayed from its
             * first line as any login's (a late PBSZ/PROT may still hold it). */
            gw_edge_forget(s);
            gw_sess_set_backend_state(s, BE_READY);
            gw_sess_set_pending(s, PEND_RELAY);
            gw_reply_dispatch_line(s, r);
            return;
        }
        if (r->last)
            gw_backend_advance(s, r);
        return;
    case BE_TLS: /* clear text after the 234, where the handshake should be */
        if (r->last)
            gw_sess_fail(s, GW_R_BACKEND_REFUSED_AUTH, "backend refused AUTH TLS");
        return;
    case BE_IDLE:
    case BE_CONNECT:
    case BE_READY:
    case BE_CLOSED:
        break;
    }
    /* PEND_SETUP is set with a step that waits for the server (gw_backend_connect, step_send) */
    (void)GW_SESS_BUG_ON(s, true);
}

/* The backend greeting (BE_GREETING): relayed, or swallowed after REIN. */
void gw_backend_greeting_line(gw_session *s, gw_reply_parser *r)
{
    /* RFC 959: 120 (ready in nnn minutes) comes before the 220. Any other greeting is
     * not relayed (a 230 or 5xx would mislead the client): it gets a 421 naming it. */
    if (!s->bconn.swallow_greeting && !s->route.self_greet && (r->code == 120 || r->code == 220))
        gw_sess_reply(s, r->line);
    if (!r->last || r->code == 120)
        return;
    if (r->code >= 400 && r->code < 500) {
        /* Busy (max_clients reached, 421), not dead: another backend if there is one, else
         * 421 to this client only; health does not count it. */
        char text[100], why[60];
        snprintf(text, sizeof text, GW_R_FMT_BUSY_GREETING, r->code);
        snprintf(why, sizeof why, "backend busy (greeted %d)", r->code);
        GW_LOG_INFO(s->id, "event=backend_busy backend=%s code=%d", s->route.be->conf->name,
                    r->code);
        if (!s->bconn.reported) {
            s->bconn.reported = true;
            gw_sinfo_backend_busy(s, r->code);
        }
        if (!gw_backend_failover(s, why))
            gw_sess_fail(s, text, why);
        return;
    }
    if (r->code != 220) {
        char text[100], why[60];
        snprintf(text, sizeof text, GW_R_FMT_BAD_GREETING, r->code);
        snprintf(why, sizeof why, "backend greeted with %d", r->code);
        if (!gw_backend_failover(s, why))
            gw_sess_fail(s, text, why);
        return;
    }
    s->bconn.swallow_greeting = false;
    s->route.committed = true; /* from here on the client's commands reach this backend */
    if (!s->bconn.reported) {
        s->bconn.reported = true;
        if (s->fe->gen->health)
            gw_health_report(s->fe->gen->health, s->route.be->conf->name, true, "greeting");
        gw_sinfo_backend(s, true, "greeting");
    }
    gw_backend_advance(s, r);
}

static void on_backend_data(gw_conn *c, const char *buf, size_t n)
{
    gw_session *s = c->owner;
    const uint8_t *p = (const uint8_t *)buf;
    while (n > 0 && s->cstate != CS_CLOSING && s->bconn.conn == c) { /* c is gone on failover */
        size_t used = 0;
        int r = gw_reply_feed(&s->bconn.reply, p, n, &used);
        p += used;
        n -= used;
        if (r == GW_REPLY_AGAIN)
            break;
        if (r != GW_REPLY_LINE) {
            gw_sess_fail(s, GW_R_BACKEND_BAD_REPLY,
                         r == GW_REPLY_TOOLONG ? "backend reply line too long"
                                               : "backend sent an invalid reply");
            return;
        }
        gw_reply_dispatch_line(s, &s->bconn.reply);
    }
    /* Backpressure on the control leg: a client that does not read its replies (not on a
     * leg left to the server after the session ended: its close must still be seen). */
    if (s->cstate != CS_CLOSING && s->client && s->client->want_drain && s->bconn.conn == c)
        gw_conn_pause(c);
}

static void on_backend_connect(gw_conn *c, int status)
{
    gw_session *s = c->owner;
    if (status != 0) {
        GW_LOG_WARN(s->id, "event=backend_connect_failed backend=%s:%u reason=\"%s\" name=%s%s",
                    s->route.be->conf->address.host, s->route.be->conf->address.port,
                    uv_strerror(status), s->route.be->conf->name,
                    local_failure(status) ? " side=gateway" : "");
        if (local_failure(status)) {
            s->bconn.reported = true; /* not the backend's failure: health is not told */
            if (status == UV_EMFILE || status == UV_ENFILE)
                gw_metric_fd_limit();
            gw_sess_fail(s, GW_R_UNAVAILABLE_RESOURCES, uv_strerror(status));
            return;
        }
        if (!gw_backend_failover(s, uv_strerror(status)))
            gw_sess_fail(s, GW_R_BACKEND_UNREACHABLE, "backend unreachable");
        return;
    }
    gw_conn_peer(c, &s->bconn.peer);
    gw_addr_normalize(&s->bconn.peer);
    s->bconn.attempt_ms = gw_sess_now(s); /* the greeting gets its own connect_timeout */
    gw_backend_advance(s, NULL);
}

static void backend_gone(gw_session *s)
{
    if (s->pending == PEND_TRANSFER)
        gw_sess_reply(s, GW_R_XFER_ABORTED);
    gw_sess_fail(s, GW_R_BACKEND_CLOSED, "backend closed the connection");
}

/* The session ended while the server ran a transfer (gw_sess_fail shut its leg down):
 * whatever the server says now has no one to go to; its close ends the leg. */
static bool closing_leg(gw_session *s, gw_conn *c)
{
    if (s->cstate != CS_CLOSING)
        return false;
    gw_conn_close(c);
    return true;
}

static void on_backend_eof(gw_conn *c, bool clean)
{
    gw_session *s = c->owner;
    if (closing_leg(s, c))
        return;
    if (!s->route.committed && gw_backend_failover(s, "closed before the greeting"))
        return;
    backend_gone(s);
}

static void on_backend_error(gw_conn *c, const char *why)
{
    gw_session *s = c->owner;
    if (closing_leg(s, c))
        return;
    GW_LOG_WARN(s->id, "event=backend_error reason=\"%s\"", why);
    if (!s->route.committed && gw_backend_failover(s, why))
        return;
    if (c->tls && !gw_tls_handshake_done(c->tls)) {
        /* Name the reason: an operator must see "certificate verify failed" at once. */
        char text[300];
        snprintf(text, sizeof text, GW_R_FMT_BACKEND_TLS_FAILED, why);
        gw_sess_fail(s, text, "backend TLS handshake failed");
        return;
    }
    backend_gone(s);
}

static void on_backend_handshake(gw_conn *c)
{
    gw_session *s = c->owner;
    GW_LOG_INFO(s->id, "event=backend_tls tls=%s", gw_tls_describe(c->tls));
    if (s->route.be->conf->tls == GW_BE_TLS_IMPLICIT)
        return;                                     /* the greeting comes over it */
    if (GW_SESS_BUG_ON(s, s->bconn.step != BE_TLS)) /* explicit: only after AUTH TLS's 234 */
        return;
    gw_backend_advance(s, NULL);
}

static void on_backend_close(gw_conn *c)
{
    gw_session *s = c->owner;
    if (s->bconn.conn == c) /* REIN may already have a new one */
        s->bconn.conn = NULL;
    gw_sess_leg_closed(s);
}

static const gw_conn_ops backend_ops = {
    .on_connect = on_backend_connect,
    .on_handshake = on_backend_handshake,
    .on_data = on_backend_data,
    .on_eof = on_backend_eof,
    .on_error = on_backend_error,
    .on_close = on_backend_close,
};

static void connect_backend_to(gw_session *s, const gw_addr *to)
{
    int r = gw_conn_connect(s->bconn.conn, to);
    if (r != 0)
        on_backend_connect(s->bconn.conn, r);
}

static void on_backend_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    gw_session *s = req->data;
    gw_addr to = {0};
    if (status == 0 && res) {
        const struct addrinfo *pick = res;
        for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
            if (ai->ai_family == AF_INET) { /* legacy servers and 227 replies are IPv4 */
                pick = ai;
                break;
            }
        gw_addr_from_sockaddr(&to, pick->ai_addr);
        to.port = s->route.be->conf->address.port;
    }
    uv_freeaddrinfo(res);
    s->bconn.resolving = false;
    if (s->bconn.conn && s->cstate != CS_CLOSING) {
        if (to.family)
            connect_backend_to(s, &to);
        else
            on_backend_connect(s->bconn.conn, status ? status : UV_EAI_NONAME);
    }
    gw_sess_release(s); /* the pending lookup held the session */
}

void gw_backend_connect(gw_session *s)
{
    s->bconn.conn = gw_conn_new(s->loop, &backend_ops, s, s->id, "backend");
    if (!s->bconn.conn) {
        gw_sess_fail(s, GW_R_UNAVAILABLE_NOMEM, "out of memory");
        return;
    }
    if (!s->login.logged_in &&
        !s->route.prelogin_counted && /* at USER, REIN: counted, never refused */
        gw_health_prelogin_acquire(s->fe->gen->health, s->fe->conf->name, &s->client_peer, 0, 0,
                                   true) == 1) {
        s->route.prelogin_counted = true;
        s->route.prelogin_fe = s->fe;
    }
    s->handles++;
    s->bconn.reported = false;
    s->bconn.attempt_ms = gw_sess_now(s);
    gw_sess_set_backend_state(s, BE_CONNECT);
    gw_sess_set_pending(s, PEND_SETUP);
    if (!s->route.be->by_name) {
        connect_backend_to(s, &s->route.be->addr);
        return;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    s->resolve_req.data = s;
    s->handles++;
    s->bconn.resolving = true;
    int r = uv_getaddrinfo(s->loop, &s->resolve_req, on_backend_resolved,
                           s->route.be->conf->address.host, NULL, &hints);
    if (r != 0) {
        s->bconn.resolving = false;
        s->handles--;
        on_backend_connect(s->bconn.conn, r);
    }
}
