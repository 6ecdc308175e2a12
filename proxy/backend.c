/* The backend control leg: resolve, connect (connect_timeout in the core's timer), the
 * greeting, implicit or explicit TLS toward the server with PBSZ 0 / PROT P (again after
 * login when refused before), and the reply stream fed to the relay. */
#include "session_int.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ftp_codes.h"
#include "log.h"

void gw_backend_send(gw_session *s, const char *line, enum gw_pending pending)
{
    char buf[2 * GW_CMD_LINE_MAX + 3];
    size_t n = gw_cmd_format(buf, sizeof buf, line);
    if (n == 0 || !s->backend) {
        gw_sess_reply(s, GW_R_LOCAL_ERROR);
        return;
    }
    gw_conn_write(s->backend, buf, n);
    gw_sess_set_pending(s, pending);
}

void gw_backend_ready(gw_session *s)
{
    gw_sess_set_backend_state(s, BS_READY);
    if (s->be_after_login) {
        s->be_after_login = false;
        if (s->cur.held)
            gw_sess_reply(s, s->cur.held);
        free(s->cur.held);
        s->cur.held = NULL;
        s->cur.heldlen = 0;
    }
    gw_sess_command_done(s);
}

/* AUTH TLS, PBSZ 0 and PROT P toward the backend: their replies are the gateway's own. */
void gw_backend_tls_reply(gw_session *s, gw_reply_parser *r)
{
    if (!r->last)
        return;
    bool ok = r->code >= 200 && r->code < 300;
    GW_LOG_DEBUG(s->id, "event=backend_tls_reply reply=\"%.*s\"", (int)r->len - 2, r->line);
    switch (s->pending) {
    case PEND_BE_AUTH:
        if (r->code != 234) {
            gw_sess_fail(s, GW_R_BACKEND_REFUSED_AUTH, "backend refused AUTH TLS");
            return;
        }
        /* Bytes after the 234 line are TLS: the engine takes over this connection. */
        gw_sess_set_backend_state(s, BS_TLS);
        if (gw_conn_attach_tls(s->backend,
                               gw_tls_new_client(s->fe->backend_tls_ctx, GW_TLS_CLIENT_CONTROL,
                                                 s->fe->backend_host, s->fe->backend->tls_verify,
                                                 NULL)) != 0)
            gw_sess_fail(s, GW_R_UNAVAILABLE_NOMEM, "out of memory");
        return;
    case PEND_BE_PBSZ:
        if (ok) {
            gw_backend_send(s, "PROT P", PEND_BE_PROT);
            return;
        }
        break;
    case PEND_BE_PROT:
        if (ok) {
            s->be_prot_p = true;
            gw_backend_ready(s);
            return;
        }
        break;
    default:
        return;
    }
    if (s->be_after_login || s->logged_in) {
        GW_LOG_WARN(s->id, "event=backend_prot_refused note=\"backend data legs stay in clear\"");
    } else {
        s->be_prot_later = true; /* many servers want PBSZ/PROT only after login */
    }
    gw_backend_ready(s);
}

/* The backend greeting (PEND_GREETING): relayed, or swallowed after REIN. */
void gw_backend_greeting_line(gw_session *s, gw_reply_parser *r)
{
    /* RFC 959: 120 (ready in nnn minutes) comes before the 220. Any other greeting is
     * not relayed (a 230 or 5xx would mislead the client): it gets a 421 naming it. */
    if (!s->swallow_greeting && (r->code == 120 || r->code == 220))
        gw_sess_reply(s, r->line);
    if (!r->last || r->code == 120)
        return;
    if (r->code != 220) {
        char text[100], why[60];
        snprintf(text, sizeof text, GW_R_FMT_BAD_GREETING, r->code);
        snprintf(why, sizeof why, "backend greeted with %d", r->code);
        gw_sess_fail(s, text, why);
        return;
    }
    s->swallow_greeting = false;
    if (s->fe->backend->tls == GW_BE_TLS_EXPLICIT)
        gw_backend_send(s, "AUTH TLS", PEND_BE_AUTH);
    else if (s->fe->backend->tls == GW_BE_TLS_IMPLICIT)
        gw_backend_send(s, "PBSZ 0", PEND_BE_PBSZ);
    else
        gw_backend_ready(s);
}

static void on_backend_data(gw_conn *c, const char *buf, size_t n)
{
    gw_session *s = c->owner;
    const uint8_t *p = (const uint8_t *)buf;
    while (n > 0 && s->cstate != CS_CLOSING) {
        size_t used = 0;
        int r = gw_reply_feed(&s->reply, p, n, &used);
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
        gw_relay_line(s, &s->reply);
    }
    /* Backpressure on the control leg: a client that does not read its replies. */
    if (s->client && s->client->want_drain)
        gw_conn_pause(c);
}

static void on_backend_connect(gw_conn *c, int status)
{
    gw_session *s = c->owner;
    if (status != 0) {
        GW_LOG_WARN(s->id, "event=backend_connect_failed backend=%s:%u reason=\"%s\"",
                    s->fe->backend->address.host, s->fe->backend->address.port,
                    uv_strerror(status));
        gw_sess_fail(s, GW_R_BACKEND_UNREACHABLE, "backend unreachable");
        return;
    }
    gw_conn_peer(c, &s->backend_peer);
    gw_addr_normalize(&s->backend_peer);
    gw_sess_set_backend_state(s, BS_GREETING);
    if (s->fe->backend->tls == GW_BE_TLS_IMPLICIT) {
        if (gw_conn_attach_tls(c, gw_tls_new_client(s->fe->backend_tls_ctx, GW_TLS_CLIENT_CONTROL,
                                                    s->fe->backend_host, s->fe->backend->tls_verify,
                                                    NULL)) != 0)
            gw_sess_fail(s, GW_R_UNAVAILABLE_NOMEM, "out of memory");
        return;
    }
    gw_conn_start_read(c);
}

static void on_backend_eof(gw_conn *c, bool clean)
{
    gw_session *s = c->owner;
    if (s->pending == PEND_TRANSFER)
        gw_sess_reply(s, GW_R_XFER_ABORTED);
    gw_sess_fail(s, GW_R_BACKEND_CLOSED, "backend closed the connection");
}

static void on_backend_error(gw_conn *c, const char *why)
{
    gw_session *s = c->owner;
    GW_LOG_WARN(s->id, "event=backend_error reason=\"%s\"", why);
    if (c->tls && !gw_tls_handshake_done(c->tls)) {
        /* Name the reason: an operator must see "certificate verify failed" at once. */
        char text[300];
        snprintf(text, sizeof text, GW_R_FMT_BACKEND_TLS_FAILED, why);
        gw_sess_fail(s, text, "backend TLS handshake failed");
        return;
    }
    on_backend_eof(c, false);
}

static void on_backend_handshake(gw_conn *c)
{
    gw_session *s = c->owner;
    GW_LOG_INFO(s->id, "event=backend_tls tls=%s", gw_tls_describe(c->tls));
    if (s->pending == PEND_BE_AUTH) {
        gw_sess_set_backend_state(s, BS_GREETING);
        gw_backend_send(s, "PBSZ 0", PEND_BE_PBSZ);
    }
}

static void on_backend_drain(gw_conn *c) {}

static void on_backend_shutdown(gw_conn *c, int status) {}

static void on_backend_close(gw_conn *c)
{
    gw_session *s = c->owner;
    if (s->backend == c) /* REIN may already have a new one */
        s->backend = NULL;
    gw_sess_release(s);
}

static const gw_conn_ops backend_ops = {
    .on_connect = on_backend_connect,
    .on_handshake = on_backend_handshake,
    .on_data = on_backend_data,
    .on_eof = on_backend_eof,
    .on_error = on_backend_error,
    .on_drain = on_backend_drain,
    .on_shutdown = on_backend_shutdown,
    .on_close = on_backend_close,
};

static void connect_backend_to(gw_session *s, const gw_addr *to)
{
    int r = gw_conn_connect(s->backend, to);
    if (r != 0)
        on_backend_connect(s->backend, r);
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
        to.port = s->fe->backend->address.port;
    }
    uv_freeaddrinfo(res);
    if (s->backend && s->cstate != CS_CLOSING) {
        if (to.family)
            connect_backend_to(s, &to);
        else
            on_backend_connect(s->backend, status ? status : UV_EAI_NONAME);
    }
    gw_sess_release(s); /* the pending lookup held the session */
}

void gw_backend_connect(gw_session *s)
{
    s->backend = gw_conn_new(s->loop, &backend_ops, s, s->id, "backend");
    if (!s->backend) {
        gw_sess_fail(s, GW_R_UNAVAILABLE_NOMEM, "out of memory");
        return;
    }
    s->handles++;
    gw_sess_set_backend_state(s, BS_CONNECTING);
    gw_sess_set_pending(s, PEND_GREETING);
    if (!s->fe->backend_by_name) {
        connect_backend_to(s, &s->fe->backend_addr);
        return;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    s->resolve_req.data = s;
    s->handles++;
    int r = uv_getaddrinfo(s->loop, &s->resolve_req, on_backend_resolved,
                           s->fe->backend->address.host, NULL, &hints);
    if (r != 0) {
        s->handles--;
        on_backend_connect(s->backend, r);
    }
}
