/* The session core: the session's states and the one function that changes each, its timer
 * (handshake, login, idle, connect, ABOR deadlines), the client control connection's
 * callbacks, and the single fail/close path. Commands are taken from the client's input
 * one at a time (client_cmd.c): the next line is parsed only when the previous command
 * has its final reply, so the client's bytes are the ordered queue (PROTOCOL.md §4) and
 * local replies can never overtake relayed ones. */
#include "session_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "ftp_codes.h"
#include "log.h"
#include "siblings.h"

#define HANDSHAKE_TIMEOUT 30  /* seconds, capped by login_timeout */
#define CLOSE_GRACE_MS 5000   /* waiting for our final reply and close_notify to leave */
#define ABORT_TIMEOUT_MS 5000 /* a backend that does not answer ABOR by then is given up */
#define OWED_FALLBACK_MS 3000 /* a transfer's owed final reply overdue: ABOR it */

static const char *const client_state_names[] = {"handshake", "ready", "auth", "closing"};
static const char *const backend_step_names[] = {
    [BE_IDLE] = "idle",
    [BE_CONNECT] = "connecting",
    [BE_GREETING] = "greeting",
    [BE_AUTH] = "auth",
    [BE_TLS] = "tls",
    [BE_PBSZ] = "pbsz",
    [BE_PROT] = "prot",
    [BE_UTF8] = "utf8",
    [BE_LOGIN_USER] = "login_user",
    [BE_LOGIN_PASS] = "login_pass",
    [BE_READY] = "ready",
    [BE_LATE_PBSZ] = "late_pbsz",
    [BE_LATE_PROT] = "late_prot",
    [BE_CLOSED] = "closed",
};
static const char *const pending_names[] = {
    [PEND_NONE] = "none",   [PEND_SETUP] = "setup",       [PEND_RELAY] = "relay",
    [PEND_PASV] = "pasv",   [PEND_PORT] = "port",         [PEND_ABORT] = "abort",
    [PEND_FEAT] = "feat",   [PEND_TRANSFER] = "transfer", [PEND_QUIT] = "quit",
    [PEND_CHECK] = "check",
};

const char *gw_sess_client_state_name(enum gw_client_state st)
{
    return (unsigned)st <= CS_CLOSING ? client_state_names[st] : "?";
}

const char *gw_sess_backend_step_name(enum gw_be_step st)
{
    return (unsigned)st <= BE_CLOSED ? backend_step_names[st] : "?";
}

const char *gw_sess_pending_name(enum gw_pending p)
{
    return (unsigned)p <= PEND_LAST ? pending_names[p] : "?";
}

static void on_tick(uv_timer_t *t);

/* Does this frontend send its own 220 and open the backend connection at USER? (greeting
 * set, balance = user, route_user = yes, user_map, or auth at the gateway) */
static bool fe_self_greets(const gw_frontend_conf *fc)
{
    return fc->greeting[0] || fc->route_user || fc->balance == GW_BALANCE_USER ||
           fc->auth != GW_AUTH_BACKEND || /* nothing reaches a backend before the check */
           fc->user_map[0];               /* the backend follows from the USER name */
}

/* The text after "220 " of such a frontend's greeting. */
static const char *fe_greeting(const gw_frontend_conf *fc)
{
    return fc->greeting[0] ? fc->greeting : "FTP gateway ready";
}

void gw_sess_set_client_state(gw_session *s, enum gw_client_state st)
{
    if (s->cstate == st || GW_SESS_BUG_ON(s, (unsigned)st > CS_CLOSING))
        return;
    GW_LOG_DEBUG(s->id, "event=state leg=client from=%s to=%s",
                 gw_sess_client_state_name(s->cstate), gw_sess_client_state_name(st));
    s->cstate = st;
}

/* The backend connection's set-up step (gw_backend_advance), logged like the others. */
void gw_sess_set_backend_state(gw_session *s, enum gw_be_step st)
{
    if (s->bconn.step == st || GW_SESS_BUG_ON(s, (unsigned)st > BE_CLOSED))
        return;
    GW_LOG_DEBUG(s->id, "event=state leg=backend from=%s to=%s",
                 gw_sess_backend_step_name(s->bconn.step), gw_sess_backend_step_name(st));
    s->bconn.step = st;
}

/* What the one outstanding exchange with the backend waits for (curl's _ftp_state). */
void gw_sess_set_pending(gw_session *s, enum gw_pending p)
{
    if (s->pending == p || GW_SESS_BUG_ON(s, (unsigned)p > PEND_LAST))
        return;
    GW_LOG_DEBUG(s->id, "event=pending from=%s to=%s verb=%s", gw_sess_pending_name(s->pending),
                 gw_sess_pending_name(p), s->cur.verb);
    s->pending = p;
}

uint64_t gw_sess_now(gw_session *s)
{
    return uv_now(s->loop);
}

void gw_sess_reply(gw_session *s, const char *text)
{
    gw_sinfo_reply(s, text);
    if (s->client && s->cstate == CS_READY)
        gw_conn_write_str(s->client, text);
}

void gw_sess_greet(gw_session *s)
{
    char text[GW_HOST_MAX + 8];
    snprintf(text, sizeof text, GW_R_FMT_GREETING, fe_greeting(s->fe->conf));
    for (char *p = text + 4; p < text + strlen(text) - 2; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' '; /* one reply line, whatever the configuration holds */
    gw_sess_reply(s, text);
}

void gw_sess_release(gw_session *s)
{
    /* A release without a handle would free the session twice: report, keep it. */
    if (GW_BUG_ON_SID(s->id, s->handles <= 0) || --s->handles > 0)
        return;
    GW_LOG_INFO(s->id, "event=session_end");
    gw_sinfo_end(s);
    gw_backend_uncount(s);
    gw_backend_prelogin_release(s);
    gw_generation_unref(s->fe->gen); /* a reloaded-away generation ends with its sessions */
    const gw_session_hooks *hooks = s->hooks;
    void *host = s->host;
    free(s->cmdq.buf);
    gw_cmd_free(&s->cmdq.parser);
    gw_reply_free(&s->bconn.reply);
    free(s->login.be_user);
    free(s->xfer.line);
    free(s->cur.feat);
    free(s->cur.held);
    free(s->route.tried);
    free(s->ctl.cert);
    gw_edge_free(s);
    free(s);
    hooks->on_end(host);
}

static void on_session_timer_closed(uv_handle_t *h)
{
    gw_sess_release(h->data);
}

void gw_sess_drop_data(gw_session *s, bool ok)
{
    if (s->xfer.data) {
        int r = gw_data_client_resumed(s->xfer.data); /* pasv_shared_port learns how it matches */
        if (r)
            s->ctl.data_resumed = (int8_t)r;
        gw_data_release(s->xfer.data, ok);
        s->xfer.data = NULL;
    }
    s->xfer.finished = false;
    free(s->xfer.line); /* a deferred upload without its data channel is never sent */
    s->xfer.line = NULL;
}

bool gw_sess_set_be_user(gw_session *s, const char *name)
{
    char *copy = NULL;
    if (name && !(copy = strdup(name)))
        return false;
    free(s->login.be_user);
    s->login.be_user = copy;
    return true;
}

/* The single way a session ends. text: the last reply the client gets (inside TLS), or
 * NULL. The client leg is shut down politely (close_notify, FIN), then closed; on_tick
 * closes it after CLOSE_GRACE_MS if the peer never lets the output drain. */
void gw_sess_fail(gw_session *s, const char *text, const char *why)
{
    if (s->cstate == CS_CLOSING)
        return;
    bool was_ready = s->cstate == CS_READY;
    /* The server is running a transfer for us: its control leg is only shut down (FIN),
     * not closed, so that the server can still answer the reset of its data connection
     * and record the transfer as failed (vsftpd logs it after writing its 426; a closed
     * socket resets that write and vsftpd exits without a word). It closes when the
     * server closes, or after CLOSE_GRACE_MS (check_deadlines). */
    bool server_busy = s->pending == PEND_TRANSFER && s->cur.be_sent && s->bconn.conn &&
                       !s->bconn.conn->eof && !s->bconn.conn->failed;
    gw_sess_set_client_state(s, CS_CLOSING);
    GW_LOG_INFO(s->id, "event=session_close reason=\"%s\"", why);
    gw_tl_add(&s->tl, GW_TL_CLOSE, "%s", why);
    /* A transfer cut with its session is recorded too, with the session's last reply. */
    gw_xfer_record(s, was_ready && s->client && !s->client->failed ? text : NULL, "failed", why);
    gw_sess_drop_data(s, false); /* a cut upload's backend leg is reset after the close below */
    if (server_busy)
        gw_conn_shutdown(s->bconn.conn);
    else if (s->bconn.conn)
        gw_conn_close(s->bconn.conn);
    gw_backend_prelogin_release(s);
    gw_sess_set_backend_state(s, BE_CLOSED);
    if (s->client) {
        if (was_ready && !s->client->failed) {
            if (text)
                gw_conn_write_str(s->client, text);
            gw_conn_shutdown(s->client);
        } else {
            gw_conn_close(s->client);
        }
    }
    gw_sess_set_client_state(s, CS_CLOSING);
    s->last_active_ms = gw_sess_now(s);
    gw_sess_rearm(s);
}

bool gw_sess_bug(gw_session *s, const char *file, int line, const char *cond)
{
    gw_bug(s->id, file, line, cond, GW_BUG_FATAL);
    gw_sess_fail(s, GW_R_INTERNAL_ERROR, "internal error");
    return true;
}

/* One timer per session. It ticks every second while a short deadline is near (handshake,
 * login, connect, ABOR, a delayed reply, closing) and otherwise sleeps until the idle
 * deadline: 10,000 idle sessions cost no wake-ups. */
void gw_sess_rearm(gw_session *s)
{
    if (uv_is_closing((uv_handle_t *)&s->timer))
        return;
    uint64_t delay = 1000;
    bool fine = s->cstate == CS_CLOSING || s->login.reply_delay_until || s->pending == PEND_ABORT ||
                (s->pending == PEND_TRANSFER && s->xfer.finished) || s->cstate != CS_READY ||
                s->bconn.step != BE_READY || !s->login.logged_in;
    if (!fine) {
        uint64_t deadline = s->last_active_ms + (uint64_t)s->fe->cfg->idle_timeout * 1000;
        uint64_t now = gw_sess_now(s);
        delay = deadline > now + 1000 ? deadline - now : 1000;
    }
    uv_timer_start(&s->timer, on_tick, delay, 0);
}

static void check_deadlines(gw_session *s)
{
    uint64_t now = gw_sess_now(s);
    const gw_config *cfg = s->fe->cfg;
    uint64_t since_start = now - s->login.started_ms, idle = now - s->last_active_ms;
    if (s->cstate == CS_CLOSING) {
        if (idle >= CLOSE_GRACE_MS && s->client)
            gw_conn_close(s->client);
        if (idle >= CLOSE_GRACE_MS && s->bconn.conn)
            gw_conn_close(s->bconn.conn); /* a server that never closed after our FIN */
        return;
    }
    if (s->login.reply_delay_until && now >= s->login.reply_delay_until) {
        s->login.reply_delay_until = 0;
        gw_sess_reply(s, s->cur.held ? s->cur.held : GW_R_LOGIN_INCORRECT);
        free(s->cur.held);
        s->cur.held = NULL;
        s->cur.heldlen = 0;
        gw_sess_command_done(s);
        return;
    }
    if (s->pending == PEND_ABORT && s->cur.abort_internal && !s->cur.abort_marked &&
        now - s->cur.abort_started_ms >= OWED_FALLBACK_MS) {
        /* The server kept its transfer open after its data connection was reset
         * (pyftpdlib waits for another one): it is aborted, and the count becomes a mark. */
        GW_LOG_INFO(s->id, "event=owed_reply_overdue verb=%s note=\"ABOR sent\"", s->cur.verb);
        gw_xfer_abort_marked(s);
        return;
    }
    if (s->pending == PEND_ABORT && now - s->cur.abort_started_ms >= ABORT_TIMEOUT_MS) {
        /* PROTOCOL.md §5: answer for the silent backend, then end the session (a new
         * backend login would need the password and lose CWD, TYPE and REST). */
        if (!s->cur.abort_internal && !s->cur.abort_xfer_sent) {
            gw_sess_reply(s, GW_R_XFER_ABORTED);
            gw_xfer_record(s, GW_R_XFER_ABORTED, "aborted", "ABOR");
        }
        if (!s->cur.abort_internal)
            gw_sess_reply(s, GW_R_ABOR_OK);
        gw_sess_fail(s, GW_R_BACKEND_NO_ABOR_REPLY, "backend silent after ABOR");
        return;
    }
    if (s->pending == PEND_TRANSFER && s->xfer.finished && !s->cur.held_code &&
        now - s->xfer.done_ms >= (uint64_t)cfg->data_timeout * 1000) {
        gw_xfer_abort(s, GW_R_XFER_NO_FINAL_REPLY, "server silent after the data connection ended");
        return;
    }
    int hs = cfg->login_timeout < HANDSHAKE_TIMEOUT ? cfg->login_timeout : HANDSHAKE_TIMEOUT;
    if (s->cstate == CS_HANDSHAKE && since_start >= (uint64_t)hs * 1000)
        gw_sess_fail(s, NULL, "TLS handshake timeout");
    else if (s->cstate == CS_AUTH && idle >= (uint64_t)hs * 1000)
        gw_sess_fail(s, NULL, "TLS handshake timeout after AUTH");
    else if (s->bconn.step == BE_CONNECT &&
             now - s->bconn.attempt_ms >= (uint64_t)s->route.be->conf->connect_timeout * 1000) {
        if (!gw_backend_failover(s, "connect timeout"))
            gw_sess_fail(s, GW_R_BACKEND_CONNECT_TIMEOUT, "backend connect timeout");
    } else if (s->bconn.step == BE_GREETING && !s->route.committed &&
               now - s->bconn.attempt_ms >= (uint64_t)s->route.be->conf->connect_timeout * 1000) {
        /* Accepted but silent (or an implicit-TLS handshake that stalls): like a refusal. */
        char why[48];
        snprintf(why, sizeof why, "no greeting within %d s", s->route.be->conf->connect_timeout);
        if (!gw_backend_failover(s, why))
            gw_sess_fail(s, GW_R_BACKEND_NO_GREETING, why);
    } else if (!s->login.logged_in && since_start >= (uint64_t)cfg->login_timeout * 1000)
        gw_sess_fail(s, GW_R_LOGIN_TIMEOUT, "login timeout");
    else if (s->pending != PEND_TRANSFER && s->pending != PEND_ABORT &&
             idle >= (uint64_t)cfg->idle_timeout * 1000)
        gw_sess_fail(s, GW_R_IDLE_TIMEOUT, "idle timeout");
}

static void on_tick(uv_timer_t *t)
{
    gw_session *s = t->data;
    check_deadlines(s);
    gw_sess_rearm(s);
}

void gw_sess_append(char **buf, size_t *len, const char *p, size_t n, size_t max)
{
    if (*len + n > max)
        return; /* cut: the caller reports what fits */
    char *nb = realloc(*buf, *len + n + 1);
    if (!nb)
        return;
    memcpy(nb + *len, p, n);
    *len += n;
    nb[*len] = 0;
    *buf = nb;
}

void gw_sess_command_done(gw_session *s)
{
    gw_sess_set_pending(s, PEND_NONE);
    gw_cmdq_pump(s);
}

static void on_client_data(gw_conn *c, const char *buf, size_t n)
{
    gw_session *s = c->owner;
    if (s->cstate != CS_CLOSING)
        gw_cmdq_receive(s, buf, n);
}

void gw_sess_set_frontend(gw_session *s, gw_frontend *fe, const char *by)
{
    s->vh_none = false;
    if (fe == s->fe)
        return;
    GW_LOG_INFO(s->id, "event=vhost frontend=%s from=%s by=%s", fe->conf->name, s->fe->conf->name,
                by);
    gw_sinfo_frontend(s, fe);
    s->fe = fe; /* the same generation: its reference stays */
}

int gw_sess_start_tls(gw_session *s)
{
    s->ctl.ctx = s->fe->tls_ctx;
    return gw_conn_start_tls(s->client, s->ctl.ctx, GW_TLS_SERVER_CONTROL);
}

/* Of the virtual hosts sharing fe's listener, the one whose TLS context is ctx. */
static gw_frontend *vhost_of_ctx(gw_frontend *fe, SSL_CTX *ctx)
{
    gw_generation *g = fe->gen;
    for (int i = 0; i < g->n_frontends; i++)
        if (g->frontends[i].vh_listen == fe->vh_listen && g->frontends[i].tls_ctx == ctx)
            return &g->frontends[i];
    return NULL;
}

static void on_client_handshake(gw_conn *c)
{
    gw_session *s = c->owner;
    /* Handshakes run only after connect, AUTH TLS (CS_AUTH) or an implicit REIN. */
    if (GW_SESS_BUG_ON(s, s->cstate != CS_HANDSHAKE && s->cstate != CS_AUTH))
        return;
    GW_LOG_INFO(s->id, "event=tls_established tls=%s", gw_tls_describe(c->tls));
    gw_sinfo_handshake(s);
    /* The handshake switched to the frontend SNI named already (gw_tls_server_ctx_set_sni):
     * the session is the frontend whose TLS policy ran it. */
    const char *sni = s->fe->vhosted ? gw_tls_sni(c->tls) : NULL;
    gw_frontend *vfe = s->fe->vhosted ? vhost_of_ctx(s->fe, gw_tls_ctx(c->tls)) : NULL;
    if (vfe && (sni || vfe != s->fe)) {
        gw_sess_set_frontend(s, vfe, "sni");
        s->vh_sni = true;
    }
    /* Data connections start under the same policy (and session cache). */
    s->ctl.ctx = gw_tls_ctx(c->tls);
    s->last_active_ms = gw_sess_now(s);
    s->prot.tls_up = true;
    uint64_t now_s = uv_hrtime() / 1000000000u;
    if (s->ctl.has_tag) /* a new handshake (implicit REIN): the old tag's connection is over */
        gw_sib_ended(s->ctl.tag, now_s);
    s->ctl.has_tag = true;
    memcpy(s->ctl.tag, gw_tls_tag(c->tls), GW_TLS_TAG_LEN);
    gw_sib_issued(s->ctl.tag, &s->client_peer, now_s);
    gw_tls_peer peer;
    if (!s->ctl.cert && gw_tls_peer_cert(c->tls, &peer) && (s->ctl.cert = malloc(sizeof peer))) {
        *s->ctl.cert = peer; /* verified by OpenSSL against client_ca (and client_crl) */
        GW_LOG_INFO(s->id, "event=client_cert subject=\"%s\" issuer=\"%s\"", peer.subject,
                    peer.issuer);
    }
    if (s->cstate == CS_AUTH) {
        gw_sess_set_client_state(s,
                                 CS_READY); /* explicit: PROT stays C until the client sends PROT */
        gw_cmdq_pump(s);
        return;
    }
    /* MS-FTPS: implicit TLS implies AUTH TLS, PBSZ 0 and PROT P. */
    s->prot.prot_p = s->prot.pbsz = true;
    gw_sess_set_client_state(s, CS_READY);
    if (!s->route.self_greet && !s->route.committed && !gw_backend_prelogin_admit(s))
        s->route.self_greet = true; /* over the pre-login bound: connected at USER */
    if (s->route.self_greet) {
        gw_sess_greet(s);
        gw_cmdq_pump(s);
        return;
    }
    gw_backend_connect(s);
}

static void on_client_eof(gw_conn *c, bool clean)
{
    gw_session *s = c->owner;
    if (s->cstate == CS_CLOSING) {
        gw_conn_close(c);
        return;
    }
    gw_sess_fail(s, NULL, clean ? "client closed" : "client closed without close_notify");
}

static void on_client_error(gw_conn *c, const char *why)
{
    gw_session *s = c->owner;
    GW_LOG_INFO(s->id, "event=client_error reason=\"%s\"", why);
    if (s->cstate == CS_CLOSING)
        gw_conn_close(c);
    else
        gw_sess_fail(s, NULL, s->cstate == CS_HANDSHAKE ? "TLS handshake failed" : "client error");
}

static void on_client_drain(gw_conn *c)
{
    gw_session *s = c->owner;
    if (s->bconn.conn && s->bconn.conn->paused)
        gw_conn_resume(s->bconn.conn);
}

static void on_client_shutdown(gw_conn *c, int status)
{
    gw_conn_close(c);
}

void gw_sess_leg_closed(gw_session *s)
{
    /* The timer outlives the client leg while a backend leg lingers (gw_sess_fail). */
    if (!s->client && !s->bconn.conn && !uv_is_closing((uv_handle_t *)&s->timer))
        uv_close((uv_handle_t *)&s->timer, on_session_timer_closed);
    gw_sess_release(s);
}

static void on_client_close(gw_conn *c)
{
    gw_session *s = c->owner;
    s->client = NULL;
    if (s->cstate != CS_CLOSING)
        gw_sess_fail(s, NULL, "client gone");
    gw_sess_leg_closed(s);
}

static const gw_conn_ops client_ops = {
    .on_handshake = on_client_handshake,
    .on_data = on_client_data,
    .on_eof = on_client_eof,
    .on_error = on_client_error,
    .on_drain = on_client_drain,
    .on_shutdown = on_client_shutdown,
    .on_close = on_client_close,
};

gw_session *gw_session_start(gw_frontend *fe, uv_loop_t *loop, uint64_t id, gw_conn *client,
                             const gw_addr *peer, const gw_addr *local, const gw_addr *reached,
                             const gw_session_hooks *hooks, void *host)
{
    gw_session *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->id = id;
    s->fe = fe;
    gw_generation_ref(fe->gen);
    s->loop = loop;
    s->hooks = hooks;
    s->host = host;
    s->client = client;
    gw_conn_set_owner(client, &client_ops, s);
    s->client_peer = *peer;
    s->client_local = *local;
    s->client_reached = *reached;
    uv_timer_init(s->loop, &s->timer);
    s->timer.data = s;
    s->handles = 2; /* client conn and timer */
    gw_cmd_init(&s->cmdq.parser);
    gw_reply_init(&s->bconn.reply);
    s->login.started_ms = s->last_active_ms = gw_sess_now(s);
    gw_sinfo_start(s);
    uv_timer_start(&s->timer, on_tick, 1000, 0);
    /* Virtual hosts: the default frontend serves until SNI or HOST names another. */
    s->vh_none = fe->vhosted && fe->conf->server_name[0];
    /* Explicit and plain frontends connect the backend now, before any command, unless too
     * many sessions (of this address, of this frontend) hold one without a login: silent
     * connections must not fill the backend's max_clients. Implicit ones ask after the
     * handshake. */
    bool eager = !fe_self_greets(fe->conf) && !fe->vhosted;
    if (eager && fe->conf->mode != GW_FE_IMPLICIT && !gw_backend_prelogin_admit(s))
        eager = false;
    if (!eager) {
        /* The backend is chosen and connected at USER (routing needs the name). */
        s->route.self_greet = true;
        int r = 0;
        if (fe->conf->mode == GW_FE_IMPLICIT) {
            r = gw_sess_start_tls(s);
        } else {
            gw_sess_set_client_state(s, CS_READY);
            r = gw_conn_start_read(s->client);
            if (r == 0)
                gw_sess_greet(s);
        }
        if (r != 0)
            gw_sess_fail(s, NULL, uv_strerror(r));
        return s;
    }
    bool chosen = gw_backend_choose(s);
    if (!chosen)
        GW_LOG_DEBUG(s->id, "event=no_backend frontend=%s", fe->conf->name);
    if (fe->conf->mode != GW_FE_IMPLICIT) {
        gw_sess_set_client_state(s, CS_READY); /* the backend's greeting is relayed in clear */
        if (!chosen) {
            gw_sess_fail(s, GW_R_UNAVAILABLE, "no backend available");
            return s;
        }
        int r = gw_conn_start_read(s->client);
        if (r != 0)
            gw_sess_fail(s, NULL, uv_strerror(r));
        else
            gw_backend_connect(s);
        return s;
    }
    if (!chosen) { /* implicit: not a byte in clear (PROTOCOL.md §7) */
        gw_sess_fail(s, NULL, "no backend available");
        return s;
    }
    /* MS-FTPS: nothing is sent before the handshake completes. */
    int r = gw_sess_start_tls(s);
    if (r != 0)
        gw_sess_fail(s, NULL, uv_strerror(r));
    return s;
}

void gw_session_close(gw_session *s, const char *why)
{
    gw_sess_fail(s, GW_R_SHUTTING_DOWN, why);
}
