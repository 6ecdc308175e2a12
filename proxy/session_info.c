/* What the admin endpoint sees of a session: its timeline ring (kept in the session), the
 * metrics its events count, and its summary for /sessions. Every function runs on the
 * session's own worker thread; the admin thread only gets copies (admin.c). */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "data.h"
#include "metrics.h"
#include "session_int.h"
#include "siblings.h"

static bool verb_is(const char *verb, const char *a)
{
    return strcasecmp(verb, a) == 0;
}

/* File transfers only: listings are not counted as transfers. 1 upload, 0 download, -1. */
static int xfer_direction(const char *verb)
{
    if (verb_is(verb, "RETR"))
        return 0;
    if (verb_is(verb, "STOR") || verb_is(verb, "APPE") || verb_is(verb, "STOU"))
        return 1;
    return -1;
}

void gw_sinfo_start(gw_session *s)
{
    gw_metric_session_start(s->fe->conf->name);
    gw_tl_add(&s->tl, GW_TL_CONNECT, "from %s to frontend %s", gw_addr_str(&s->client_peer),
              s->fe->conf->name);
}

void gw_sinfo_end(gw_session *s)
{
    gw_metric_session_end(s->fe->conf->name);
    if (s->ctl.has_tag) /* its tickets stay good for its siblings a while (siblings.h) */
        gw_sib_ended(s->ctl.tag, uv_hrtime() / 1000000000u);
}

void gw_sinfo_frontend(gw_session *s, gw_frontend *to)
{
    if (to != s->fe)
        gw_metric_session_move(s->fe->conf->name, to->conf->name);
}

void gw_sinfo_handshake(gw_session *s)
{
    gw_tl_add(&s->tl, GW_TL_HANDSHAKE, "%s", gw_tls_describe(s->client->tls));
}

void gw_sinfo_command(gw_session *s, const char *verb, const char *arg)
{
    gw_tl_command(&s->tl, verb, arg); /* PASS masked there */
}

void gw_sinfo_reply(gw_session *s, const char *text)
{
    if (text && text[0] >= '4' && text[0] <= '5') {
        size_t n = strcspn(text, "\r\n");
        gw_tl_add(&s->tl, GW_TL_REPLY_FAILED, "%.*s", (int)(n < 80 ? n : 80), text);
    }
}

void gw_sinfo_login(gw_session *s, bool ok)
{
    gw_metric_login(s->fe->conf->name, ok);
    if (ok && s->ctl.has_tag)
        gw_sib_login(s->ctl.tag, s->login.user, s->route.be ? s->route.be->conf->name : "");
    gw_tl_add(&s->tl, ok ? GW_TL_LOGIN : GW_TL_LOGIN_FAILED, "user %.64s", s->login.user);
}

void gw_sinfo_backend(gw_session *s, bool ok, const char *why)
{
    if (!s->route.be)
        return;
    uint64_t ms = gw_sess_now(s) - s->bconn.attempt_ms;
    gw_metric_backend_connect(s->route.be->conf->name, ok, ms);
    gw_tl_add(&s->tl, GW_TL_BACKEND, "%s %s (%s, %llu ms)", s->route.be->conf->name,
              ok ? "greeted" : "failed", why ? why : "", (unsigned long long)ms);
}

void gw_sinfo_backend_busy(gw_session *s, int code)
{
    gw_metric_backend_busy(s->route.be->conf->name);
    gw_tl_add(&s->tl, GW_TL_BACKEND, "%s busy (greeted %d)", s->route.be->conf->name, code);
}

void gw_sinfo_transfer_end(gw_session *s, const char *result)
{
    gw_tl_add(&s->tl, GW_TL_TRANSFER, "%s %.40s: %s, %llu bytes", s->cur.verb, s->xfer.arg, result,
              (unsigned long long)s->xfer.bytes);
    int dir = xfer_direction(s->cur.verb);
    if (dir < 0)
        return;
    enum gw_m_xfer_result r = strcmp(result, "ok") == 0        ? GW_M_XFER_OK
                              : strcmp(result, "aborted") == 0 ? GW_M_XFER_ABORTED
                                                               : GW_M_XFER_FAILED;
    gw_metric_transfer(dir == 1, r, s->xfer.bytes, gw_sess_now(s) - s->xfer.started_ms);
}

void gw_sinfo_data_done(gw_session *s, int result, uint64_t bytes)
{
    static const char *const names[] = {
        [GW_DATA_OK] = "ok",
        [GW_DATA_ABORTED] = "aborted",
        [GW_DATA_TIMEOUT] = "timeout",
        [GW_DATA_UNSAFE_EOF] = "upload without close_notify",
        [GW_DATA_NOT_RESUMED] = "data TLS did not resume the control session",
        [GW_DATA_CLIENT_FAILED] = "client data connection failed",
        [GW_DATA_BACKEND_FAILED] = "backend data connection failed",
    };
    const char *name =
        result >= 0 && result < (int)(sizeof names / sizeof names[0]) && names[result]
            ? names[result]
            : "?";
    gw_tl_add(&s->tl, GW_TL_DATA, "data connection done: %s, %llu bytes", name,
              (unsigned long long)bytes);
}

static const char *state_name(const gw_session *s)
{
    if (s->cstate == CS_CLOSING)
        return "closing";
    if (s->cstate == CS_HANDSHAKE || s->cstate == CS_AUTH)
        return "handshake";
    if (s->pending == PEND_TRANSFER || s->pending == PEND_ABORT)
        return "transfer";
    if (!s->login.logged_in)
        return "login";
    return s->pending == PEND_NONE ? "idle" : "command";
}

uint64_t gw_session_get_id(const gw_session *s)
{
    return s->id;
}

void gw_session_summarize(gw_session *s, gw_sess_summary *o)
{
    uint64_t now = gw_sess_now(s);
    memset(o, 0, sizeof *o);
    o->id = s->id;
    snprintf(o->frontend, sizeof o->frontend, "%s", s->fe->conf->name);
    snprintf(o->backend, sizeof o->backend, "%s", s->route.be ? s->route.be->conf->name : "");
    snprintf(o->client, sizeof o->client, "%s", gw_addr_str(&s->client_peer));
    snprintf(o->user, sizeof o->user, "%s", s->login.user);
    snprintf(o->state, sizeof o->state, "%s", state_name(s));
    snprintf(o->tls, sizeof o->tls, "%s",
             s->prot.tls_up && !s->prot.ccc && s->client && s->client->tls
                 ? gw_tls_describe(s->client->tls)
                 : "none");
    o->age_s = (now - s->login.started_ms) / 1000;
    o->idle_s = (now - s->last_active_ms) / 1000;
    if (s->pending == PEND_TRANSFER) {
        o->in_transfer = true;
        snprintf(o->verb, sizeof o->verb, "%s", s->cur.verb);
        snprintf(o->file, sizeof o->file, "%s", s->xfer.arg);
        o->bytes = s->xfer.data ? gw_data_progress(s->xfer.data) : s->xfer.bytes;
        gw_data_rate_info ri;
        if (s->xfer.data && gw_data_rate(s->xfer.data, &ri)) {
            o->rate_running = true;
            o->rate_limit = ri.limit;
            o->rate_current = ri.current;
            o->rate_limited_ms = ri.limited_ms;
        }
    }
    gw_rate_spec rs[2];
    gw_edge_rates(s, &rs[0], &rs[1]);
    for (int d = 0; d < 2; d++) {
        o->rate_limits[d][0] = rs[d].session;
        o->rate_limits[d][1] = rs[d].user;
        o->rate_limits[d][2] = rs[d].frontend;
        o->has_rates = o->has_rates || gw_rate_spec_any(&rs[d]);
    }
}

/* The data channel and the transfer on it, by name. */
static const char *transfer_state(const gw_session *s)
{
    switch (s->pending) {
    case PEND_ABORT:
        return "aborting";
    case PEND_PASV:
    case PEND_PORT:
        return "arming"; /* the backend leg: its reply awaited */
    case PEND_TRANSFER:
        if (!s->cur.be_sent)
            return "deferred"; /* an upload, until the client's data leg is accepted */
        return s->xfer.finished ? "final_reply" : "running";
    default:
        return s->xfer.data ? "armed" : "none";
    }
}

void gw_session_timeline(gw_session *s, gw_timeline *out, gw_sess_states *st)
{
    *out = s->tl;
    snprintf(st->client, sizeof st->client, "%s", gw_sess_client_state_name(s->cstate));
    snprintf(st->backend, sizeof st->backend, "%s", gw_sess_backend_step_name(s->bconn.step));
    snprintf(st->pending, sizeof st->pending, "%s", gw_sess_pending_name(s->pending));
    snprintf(st->transfer, sizeof st->transfer, "%s", transfer_state(s));
}
