/* One client session. Commands are taken from the client's input one at a time: the next
 * line is parsed only when the previous command has its final reply, so the client's bytes
 * are the ordered queue (PROTOCOL.md §4) and local replies can never overtake relayed ones. */
#include "session.h"

#include <pthread.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <netdb.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "data.h"
#include "feat.h"
#include "ftp_codes.h"
#include "log.h"

#define INBUF_MAX (16 * 1024)  /* queued client bytes before we stop reading it */
#define FEAT_MAX (16 * 1024)   /* a backend FEAT reply larger than this is cut */
#define HELD_MAX (8 * 1024)    /* a held final transfer reply larger than this is cut */
#define HANDSHAKE_TIMEOUT 30   /* seconds, capped by login_timeout */
#define CLOSE_GRACE_MS 5000    /* waiting for our final reply and close_notify to leave */
#define MAX_LONG_LINES 3
#define FAILED_LOGIN_DELAY_MS 1000
#define ABORT_TIMEOUT_MS 5000 /* a backend that does not answer ABOR by then is given up */

static const char *const client_state_names[] = {"handshake", "ready", "auth", "closing"};
static const char *const backend_state_names[] = {"idle",  "connecting", "greeting",
                                                  "tls",   "ready",      "closed"};
static const char *const pending_names[] = {
    "none", "greeting", "relay", "pasv", "port", "abort", "feat", "transfer", "quit",
    "be_auth", "be_pbsz", "be_prot",
};

static void pump(gw_session *s);
static void cmd_abort(gw_session *s);
static void command_done(gw_session *s);
static void on_tick(uv_timer_t *t);
static void rearm(gw_session *s);
static void abort_backend_transfer(gw_session *s, const char *text, const char *why);
static void session_fail(gw_session *s, const char *reply, const char *why);

static void set_client_state(gw_session *s, enum gw_client_state st)
{
    if (s->cstate == st)
        return;
    GW_LOG_DEBUG(s->id, "event=state leg=client from=%s to=%s", client_state_names[s->cstate],
                 client_state_names[st]);
    s->cstate = st;
}

static void set_backend_state(gw_session *s, enum gw_backend_state st)
{
    if (s->bstate == st)
        return;
    GW_LOG_DEBUG(s->id, "event=state leg=backend from=%s to=%s", backend_state_names[s->bstate],
                 backend_state_names[st]);
    s->bstate = st;
}

/* What the one outstanding exchange with the backend waits for (curl's _ftp_state). */
static void set_pending(gw_session *s, enum gw_pending p)
{
    if (s->pending == p)
        return;
    GW_LOG_DEBUG(s->id, "event=pending from=%s to=%s verb=%s", pending_names[s->pending],
                 pending_names[p], s->cur.verb);
    s->pending = p;
}

static uint64_t now_ms(gw_session *s)
{
    return uv_now(s->loop);
}

static void reply(gw_session *s, const char *text)
{
    if (s->client && s->cstate == CS_READY)
        gw_conn_write_str(s->client, text);
}

static void release(gw_session *s)
{
    if (--s->handles > 0)
        return;
    GW_LOG_INFO(s->id, "event=session_end");
    gw_server *srv = s->fe->srv;
    srv->sessions--;
    srv->shared->sessions--;
    if (s->ip_counted) {
        pthread_mutex_lock(&srv->shared->lock);
        gw_ip_release(srv->shared->per_ip, &s->client_peer);
        pthread_mutex_unlock(&srv->shared->lock);
    }
    gw_generation_unref(s->fe->gen); /* a reloaded-away generation ends with its sessions */
#ifdef __GLIBC__
    /* After a burst glibc keeps the freed heap; give it back when the gateway goes idle. */
    if (srv->sessions == 0)
        malloc_trim(0);
#endif
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->session_list = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s->inbuf);
    free(s->featbuf);
    free(s->cur.held);
    free(s);
}

static void on_timer_closed(uv_handle_t *h)
{
    release(h->data);
}

static void drop_data(gw_session *s, bool ok)
{
    if (s->data) {
        gw_data_release(s->data, ok);
        s->data = NULL;
    }
    s->data_finished = false;
}

/* The single way a session ends. text: the last reply the client gets (inside TLS), or
 * NULL. The client leg is shut down politely (close_notify, FIN), then closed; on_tick
 * closes it after CLOSE_GRACE_MS if the peer never lets the output drain. */
static void session_fail(gw_session *s, const char *text, const char *why)
{
    if (s->cstate == CS_CLOSING)
        return;
    bool was_ready = s->cstate == CS_READY;
    set_client_state(s, CS_CLOSING);
    GW_LOG_INFO(s->id, "event=session_close reason=\"%s\"", why);
    drop_data(s, false);
    if (s->backend)
        gw_conn_close(s->backend);
    set_backend_state(s, BS_CLOSED);
    if (s->client) {
        if (was_ready && !s->client->failed) {
            if (text)
                gw_conn_write_str(s->client, text);
            gw_conn_shutdown(s->client);
        } else {
            gw_conn_close(s->client);
        }
    }
    set_client_state(s, CS_CLOSING);
    s->last_active_ms = now_ms(s);
    rearm(s);
}

/* One timer per session. It ticks every second while a short deadline is near (handshake,
 * login, connect, ABOR, a delayed reply, closing) and otherwise sleeps until the idle
 * deadline: 10,000 idle sessions cost no wake-ups. */
static void rearm(gw_session *s)
{
    if (uv_is_closing((uv_handle_t *)&s->timer))
        return;
    uint64_t delay = 1000;
    bool fine = s->cstate == CS_CLOSING || s->reply_delay_until || s->pending == PEND_ABORT ||
                (s->pending == PEND_TRANSFER && s->data_finished) ||
                s->cstate != CS_READY || s->bstate != BS_READY || !s->logged_in;
    if (!fine) {
        uint64_t deadline = s->last_active_ms + (uint64_t)s->fe->cfg->idle_timeout * 1000;
        uint64_t now = now_ms(s);
        delay = deadline > now + 1000 ? deadline - now : 1000;
    }
    uv_timer_start(&s->timer, on_tick, delay, 0);
}

static void check_deadlines(gw_session *s)
{
    uint64_t now = now_ms(s);
    const gw_config *cfg = s->fe->cfg;
    uint64_t since_start = now - s->started_ms, idle = now - s->last_active_ms;
    if (s->cstate == CS_CLOSING) {
        if (idle >= CLOSE_GRACE_MS && s->client)
            gw_conn_close(s->client);
        return;
    }
    if (s->reply_delay_until && now >= s->reply_delay_until) {
        s->reply_delay_until = 0;
        reply(s, s->cur.held ? s->cur.held : "530 Login incorrect.\r\n");
        free(s->cur.held);
        s->cur.held = NULL;
        s->cur.heldlen = 0;
        command_done(s);
        return;
    }
    if (s->pending == PEND_ABORT && now - s->cur.abort_started_ms >= ABORT_TIMEOUT_MS) {
        /* PROTOCOL.md §5: answer for the silent backend, then end the session (a new
         * backend login would need the password and lose CWD, TYPE and REST). */
        if (!s->cur.abort_internal && !s->cur.abort_xfer_sent)
            reply(s, "426 Connection closed; transfer aborted.\r\n");
        if (!s->cur.abort_internal)
            reply(s, "226 ABOR successful.\r\n");
        session_fail(s, "421 Service not available: the server did not answer ABOR.\r\n",
                     "backend silent after ABOR");
        return;
    }
    if (s->pending == PEND_TRANSFER && s->data_finished && !s->cur.held_code &&
        now - s->data_done_ms >= (uint64_t)cfg->data_timeout * 1000) {
        abort_backend_transfer(s, "426 Transfer aborted: no final reply from the server.\r\n",
                               "server silent after the data connection ended");
        return;
    }
    int hs = cfg->login_timeout < HANDSHAKE_TIMEOUT ? cfg->login_timeout : HANDSHAKE_TIMEOUT;
    if (s->cstate == CS_HANDSHAKE && since_start >= (uint64_t)hs * 1000)
        session_fail(s, NULL, "TLS handshake timeout");
    else if (s->cstate == CS_AUTH && idle >= (uint64_t)hs * 1000)
        session_fail(s, NULL, "TLS handshake timeout after AUTH");
    else if (s->bstate == BS_CONNECTING &&
             since_start >= (uint64_t)s->fe->backend->connect_timeout * 1000)
        session_fail(s, "421 Service not available: backend connect timeout.\r\n",
                     "backend connect timeout");
    else if (!s->logged_in && since_start >= (uint64_t)cfg->login_timeout * 1000)
        session_fail(s, "421 Login timeout.\r\n", "login timeout");
    else if (s->pending != PEND_TRANSFER && s->pending != PEND_ABORT &&
             idle >= (uint64_t)cfg->idle_timeout * 1000)
        session_fail(s, "421 Idle timeout, closing control connection.\r\n", "idle timeout");
}

static void on_tick(uv_timer_t *t)
{
    gw_session *s = t->data;
    check_deadlines(s);
    rearm(s);
}

/* ---- backend control leg ---- */

static void forward(gw_session *s, const char *line, enum gw_pending pending)
{
    char buf[2 * GW_CMD_LINE_MAX + 3];
    size_t n = gw_cmd_format(buf, sizeof buf, line);
    if (n == 0 || !s->backend) {
        reply(s, "451 Local error in processing.\r\n");
        return;
    }
    gw_conn_write(s->backend, buf, n);
    set_pending(s, pending);
}

static void append(char **buf, size_t *len, const char *p, size_t n, size_t max)
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

static void command_done(gw_session *s)
{
    set_pending(s, PEND_NONE);
    pump(s);
}

/* One line per finished transfer, key=value like the main log. */
static void write_xferlog(gw_session *s, const char *result)
{
    int fd = s->fe->gen->xferlog_fd;
    if (fd < 0)
        return;
    char line[768], ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    int n = snprintf(line, sizeof line,
                     "%s session=%llu peer=%s user=\"%s\" verb=%s file=\"%s\" bytes=%llu "
                     "ms=%llu code=%d result=%s\n",
                     ts, (unsigned long long)s->id, gw_addr_str(&s->client_peer), s->user,
                     s->cur.verb, s->xfer_arg, (unsigned long long)s->xfer_bytes,
                     (unsigned long long)(now_ms(s) - s->xfer_started_ms), s->cur.held_code, result);
    if (n > 0) {
        ssize_t w = write(fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        (void)w;
    }
}

static void complete_transfer(gw_session *s)
{
    bool backend_ok = s->cur.held_code >= 200 && s->cur.held_code < 300;
    if (s->data_finished && !s->data_ok)
        reply(s, s->data_fail_reply); /* the client's leg broke: never report success */
    else if (s->cur.held)
        reply(s, s->cur.held);
    const char *result = !s->data_finished ? "unused" : s->data_ok ? "ok" : "failed";
    GW_LOG_INFO(s->id, "event=transfer_end verb=%s code=%d data=%s bytes=%llu", s->cur.verb,
                s->cur.held_code, result, (unsigned long long)s->xfer_bytes);
    write_xferlog(s, result);
    drop_data(s, backend_ok && s->data_ok);
    free(s->cur.held);
    s->cur.held = NULL;
    s->cur.heldlen = 0;
    command_done(s);
}

/* The transfer cannot end normally: the client gets `text` now, the backend an ABOR with a
 * NOOP behind it. The NOOP's 200 marks the end of the exchange: it cannot be mistaken for
 * the transfer's reply or ABOR's (225/226), however many of those come. A backend that
 * answers nothing within ABORT_TIMEOUT_MS ends the session. */
static void abort_backend_transfer(gw_session *s, const char *text, const char *why)
{
    GW_LOG_INFO(s->id, "event=transfer_end verb=%s code=0 data=failed reason=\"%s\" "
                       "note=\"ABOR sent to the server\"",
                s->cur.verb, why);
    drop_data(s, false);
    reply(s, text);
    write_xferlog(s, "failed");
    free(s->cur.held);
    s->cur.held = NULL;
    s->cur.heldlen = 0;
    s->cur.abort_internal = true;
    s->cur.abort_expect = 2;
    s->cur.abort_started_ms = now_ms(s);
    forward(s, "ABOR", PEND_ABORT);
    if (s->backend)
        gw_conn_write_str(s->backend, "NOOP\r\n");
    rearm(s);
}

void gw_session_data_finished(gw_session *s, bool ok, const char *text, uint64_t bytes)
{
    s->data_finished = true;
    s->data_done_ms = now_ms(s);
    s->xfer_bytes = bytes;
    s->data_ok = ok;
    if (!ok) {
        snprintf(s->data_fail_reply, sizeof s->data_fail_reply, "%s", text);
        /* Abort both legs now so the backend notices. */
        gw_data_release(s->data, false);
        s->data = NULL;
        /* The backend may never end this transfer by itself (pyftpdlib waits for a new
         * data connection after a reset one). */
        if (s->pending == PEND_TRANSFER && !s->cur.held_code) {
            abort_backend_transfer(s, s->data_fail_reply, "data leg failed");
            return;
        }
    }
    if (s->pending == PEND_TRANSFER && s->cur.held_code)
        complete_transfer(s);
    else
        rearm(s); /* the final reply now has data_timeout to arrive */
}

/* A client that resumes each TLS 1.3 ticket once (curl, OpenSSL) finds a fresh one, tagged
 * for this control connection, in front of the reply that precedes its data connection. */
static void offer_data_ticket(gw_session *s)
{
    if (s->prot_p && s->tls_up && s->client && s->client->tls &&
        gw_tls_new_ticket(s->client->tls) != 0)
        GW_LOG_WARN(s->id, "event=ticket_failed note=\"the data connection may not resume\"");
}

/* The backend leg is armed: now the client's leg, and the client's answer. */
static void arm_client_leg(gw_session *s)
{
    char buf[128];
    const gw_frontend_conf *fc = s->fe->conf;
    if (s->cur.want == WANT_PORT || s->cur.want == WANT_EPRT) {
        gw_addr from = s->client_local;
        gw_addr_normalize(&from);
        int port = fc->active_source_port >= 0 ? fc->active_source_port
                   : fc->mode == GW_FE_IMPLICIT ? 989
                                                : 20;
        from.port = (uint16_t)port;
        gw_data_client_active(s->data, &s->cur.want_addr, &from);
        offer_data_ticket(s);
        reply(s, s->cur.want == WANT_PORT ? "200 PORT command successful.\r\n"
                                      : "200 EPRT command successful.\r\n");
        return;
    }
    gw_addr bind = s->client_local;
    gw_addr_normalize(&bind);
    if (gw_data_client_passive(s->data, &bind, s->fe->pool) != 0) {
        GW_LOG_WARN(s->id, "event=pasv_failed reason=\"no free port in %u-%u\"",
                    fc->pasv_port_min, fc->pasv_port_max);
        drop_data(s, false);
        reply(s, "425 Can't open passive connection: no free port.\r\n");
        return;
    }
    if (s->cur.want == WANT_EPSV) {
        gw_format_229(buf, sizeof buf, bind.port);
    } else {
        gw_addr adv = s->fe->pasv_addr.family ? s->fe->pasv_addr : bind;
        adv.port = bind.port;
        gw_format_227(buf, sizeof buf, &adv);
    }
    GW_LOG_DEBUG(s->id, "event=client_data_armed port=%u", bind.port);
    offer_data_ticket(s);
    reply(s, buf);
}

static bool *no_extended(gw_session *s)
{
    return &s->fe->gen->no_extended[s->fe->backend - s->fe->cfg->backends];
}

/* EPSV/EPRT refused as unknown (500/501/502): remember it for this backend and retry with
 * PASV/PORT, which an IPv4 backend understands. True when the retry was sent. */
static bool fall_back_to_classic(gw_session *s, gw_reply_parser *r, bool passive)
{
    if (!s->cur.sent_extended || (r->code != 500 && r->code != 501 && r->code != 502) ||
        s->backend_peer.family != 4)
        return false;
    /* vsftpd's fatal "500 OOPS: ..." (it exits next) says nothing about EPSV: relay it. */
    if (r->len >= 8 && memcmp(r->line, "500 OOPS", 8) == 0)
        return false;
    if (!r->last)
        return true; /* wait for the end of the refusal */
    *no_extended(s) = true;
    s->cur.sent_extended = false;
    GW_LOG_INFO(s->id, "event=backend_no_%s note=\"using %s from now on\"",
                passive ? "epsv" : "eprt", passive ? "PASV" : "PORT");
    if (passive) {
        forward(s, "PASV", PEND_PASV);
        return true;
    }
    char line[128];
    size_t n = gw_format_port(line, sizeof line, &s->cur.be_listen);
    if (n < 2)
        return false;
    line[n - 2] = 0;
    forward(s, line, PEND_PORT);
    return true;
}

static void on_pasv_reply(gw_session *s, gw_reply_parser *r)
{
    if (fall_back_to_classic(s, r, true))
        return;
    if (r->code != 227 && r->code != 229) {
        reply(s, r->line); /* the backend's refusal (530, 425 ...) is the client's answer */
        if (r->last)
            command_done(s);
        return;
    }
    if (!r->last)
        return;
    gw_addr addr = s->backend_peer, parsed;
    uint16_t port;
    int ok = r->code == 227 ? gw_parse_227(r->line, &parsed) : gw_parse_229(r->line, &port);
    if (ok != 0) {
        GW_LOG_WARN(s->id, "event=bad_pasv_reply reply=\"%.*s\"", (int)r->len - 2, r->line);
        reply(s, "425 Can't open data connection: bad passive reply from the server.\r\n");
        command_done(s);
        return;
    }
    /* SECURITY: data goes only to the backend we already talk to, whatever the 227 names
     * (0.0.0.0, a private address behind NAT, or a third host). */
    addr.port = r->code == 227 ? parsed.port : port;
    if (r->code == 227 && !gw_addr_same_host(&parsed, &s->backend_peer))
        GW_LOG_DEBUG(s->id, "event=pasv_address_replaced named=%s", gw_addr_str(&parsed));
    s->data = gw_data_new(s);
    if (!s->data) {
        reply(s, "425 Can't open data connection: out of memory.\r\n");
        command_done(s);
        return;
    }
    if (gw_data_backend_passive(s->data, &addr) != 0) {
        drop_data(s, false);
        reply(s, "425 Can't open data connection to the server.\r\n");
        command_done(s);
        return;
    }
    arm_client_leg(s);
    command_done(s);
}

static void on_port_reply(gw_session *s, gw_reply_parser *r)
{
    if (fall_back_to_classic(s, r, false))
        return;
    if (r->code >= 300 || r->code < 200) {
        reply(s, r->line);
        if (r->last) {
            drop_data(s, false);
            command_done(s);
        }
        return;
    }
    if (!r->last)
        return;
    arm_client_leg(s);
    command_done(s);
}

/* Arm the backend leg as data_mode says: EPSV/PASV (it listens) or EPRT/PORT (we do).
 * EPSV/EPRT first (no address to parse or trust); PASV/PORT for IPv4 backends that refused
 * them once. */
static void arm_backend_leg(gw_session *s)
{
    drop_data(s, false); /* a new PASV/PORT closes the previous listeners */
    bool v6 = s->backend_peer.family == 6;
    bool ext = v6 || !*no_extended(s);
    s->cur.sent_extended = ext;
    if (s->fe->backend->data_mode == GW_DATA_PASSIVE) {
        forward(s, ext ? "EPSV" : "PASV", PEND_PASV);
        return;
    }
    gw_addr local;
    s->data = gw_data_new(s);
    if (!s->data || gw_conn_local(s->backend, &local) != 0 ||
        (gw_addr_normalize(&local), gw_data_backend_active(s->data, &local, &s->backend_peer))) {
        drop_data(s, false);
        reply(s, "425 Can't open data connection: cannot listen toward the server.\r\n");
        return;
    }
    s->cur.be_listen = local;
    char line[128];
    size_t n = ext ? gw_format_eprt(line, sizeof line, &local)
                   : gw_format_port(line, sizeof line, &local);
    if (n < 2) {
        drop_data(s, false);
        reply(s, "425 Can't open data connection.\r\n");
        return;
    }
    line[n - 2] = 0; /* forward() adds the CRLF */
    forward(s, line, PEND_PORT);
}

static void on_transfer_reply(gw_session *s, gw_reply_parser *r)
{
    if (r->code < 200) {
        reply(s, r->line);
        return;
    }
    append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
    if (!r->last)
        return;
    s->cur.held_code = r->code;
    bool backend_ok = r->code < 300;
    if (!backend_ok || !s->data || s->data_finished) {
        if (!backend_ok && s->data) {
            drop_data(s, false);
            s->data_finished = false;
        }
        complete_transfer(s);
    }
}

static void backend_ready(gw_session *s)
{
    set_backend_state(s, BS_READY);
    if (s->be_after_login) {
        s->be_after_login = false;
        if (s->cur.held)
            reply(s, s->cur.held);
        free(s->cur.held);
        s->cur.held = NULL;
        s->cur.heldlen = 0;
    }
    command_done(s);
}

/* AUTH TLS, PBSZ 0 and PROT P toward the backend: their replies are the gateway's own. */
static void on_backend_tls_reply(gw_session *s, gw_reply_parser *r)
{
    if (!r->last)
        return;
    bool ok = r->code >= 200 && r->code < 300;
    GW_LOG_DEBUG(s->id, "event=backend_tls_reply reply=\"%.*s\"", (int)r->len - 2, r->line);
    switch (s->pending) {
    case PEND_BE_AUTH:
        if (r->code != 234) {
            session_fail(s, "421 Service not available: the server refused AUTH TLS.\r\n",
                         "backend refused AUTH TLS");
            return;
        }
        /* Bytes after the 234 line are TLS: the engine takes over this connection. */
        set_backend_state(s, BS_TLS);
        if (gw_conn_attach_tls(s->backend, gw_tls_new_client(s->fe->backend_tls_ctx,
                                                             GW_TLS_CLIENT_CONTROL,
                                                             s->fe->backend_host,
                                                             s->fe->backend->tls_verify,
                                                             NULL)) != 0)
            session_fail(s, "421 Service not available: out of memory.\r\n", "out of memory");
        return;
    case PEND_BE_PBSZ:
        if (ok) {
            forward(s, "PROT P", PEND_BE_PROT);
            return;
        }
        break;
    case PEND_BE_PROT:
        if (ok) {
            s->be_prot_p = true;
            backend_ready(s);
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
    backend_ready(s);
}

static void on_abort_reply(gw_session *s, gw_reply_parser *r)
{
    if (s->cur.abort_internal) {
        /* Nothing of this reaches the client: it has its answer. The transfer's reply (if
         * any) and ABOR's come first; the NOOP's 200 ends the exchange. */
        if (r->last && r->code == 200) {
            s->cur.abort_internal = false;
            command_done(s);
        }
        return;
    }
    bool for_transfer = !s->cur.abort_xfer_sent && s->cur.abort_expect == 2;
    if (r->code < 200)
        return; /* a late 150 for the aborted transfer */
    if (for_transfer) {
        /* The client's leg was cut: its transfer did not succeed, whatever the server says. */
        if (r->last)
            reply(s, r->code < 300 ? "426 Connection closed; transfer aborted.\r\n" : r->line);
        else if (r->code >= 300)
            reply(s, r->line);
    } else {
        reply(s, r->line);
    }
    if (!r->last)
        return;
    if (for_transfer)
        s->cur.abort_xfer_sent = true;
    if (--s->cur.abort_expect <= 0)
        command_done(s);
}

/* The backend greeting (PEND_GREETING): relayed, or swallowed after REIN. */
static void on_greeting_line(gw_session *s, gw_reply_parser *r)
{
    /* RFC 959: 120 (ready in nnn minutes) comes before the 220. Any other greeting is
     * not relayed (a 230 or 5xx would mislead the client): it gets a 421 naming it. */
    if (!s->swallow_greeting && (r->code == 120 || r->code == 220))
        reply(s, r->line);
    if (!r->last || r->code == 120)
        return;
    if (r->code != 220) {
        char text[100], why[60];
        snprintf(text, sizeof text,
                 "421 Service not available: the server greeted with %d.\r\n", r->code);
        snprintf(why, sizeof why, "backend greeted with %d", r->code);
        session_fail(s, text, why);
        return;
    }
    s->swallow_greeting = false;
    if (s->fe->backend->tls == GW_BE_TLS_EXPLICIT)
        forward(s, "AUTH TLS", PEND_BE_AUTH);
    else if (s->fe->backend->tls == GW_BE_TLS_IMPLICIT)
        forward(s, "PBSZ 0", PEND_BE_PBSZ);
    else
        backend_ready(s);
}

/* FEAT is buffered whole and rewritten (PROTOCOL.md §3). */
static void on_feat_line(gw_session *s, gw_reply_parser *r)
{
    append(&s->featbuf, &s->featlen, r->line, r->len, FEAT_MAX);
    if (r->last) {
        char out[FEAT_MAX + 512];
        gw_feat_opts o = {.tls = s->fe->conf->mode != GW_FE_PLAIN,
                          .ccc = s->fe->conf->allow_ccc && s->fe->conf->mode == GW_FE_EXPLICIT};
        if (gw_feat_rewrite(s->featbuf ? s->featbuf : "", s->featlen, &o, out, sizeof out))
            reply(s, out);
        else
            reply(s, "211 End\r\n");
        free(s->featbuf);
        s->featbuf = NULL;
        s->featlen = 0;
        command_done(s);
    }
}

/* A relayed command's reply; USER/PASS and QUIT have their extra duties here. */
static void on_relayed_line(gw_session *s, gw_reply_parser *r)
{
    if (r->code == 530 && !strcmp(s->cur.verb, "PASS")) {
        append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
        if (!r->last)
            return;
    } else if (r->code == 230 && s->be_prot_later) {
        if (!r->last) {
            append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
            return;
        }
    } else {
        reply(s, r->line);
    }
    if (!r->last || r->code < 200)
        return;
    if (r->code == 230) {
        s->logged_in = true;
        if (s->be_prot_later) {
            /* PROTOCOL.md §6: hold the 230 until PBSZ and PROT are answered. */
            append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
            s->be_prot_later = false;
            s->be_after_login = true;
            forward(s, "PBSZ 0", PEND_BE_PBSZ);
            return;
        }
    }
    if (s->pending == PEND_QUIT) {
        session_fail(s, NULL, "quit");
        return;
    }
    if (r->code == 530 && strcmp(s->cur.verb, "PASS") == 0) {
        GW_LOG_INFO(s->id, "event=login_failed count=%d", s->failed_logins + 1);
        if (++s->failed_logins >= 3) {
            session_fail(s, "421 Too many failed logins.\r\n", "3 failed logins");
            return;
        }
        s->reply_delay_until = now_ms(s) + FAILED_LOGIN_DELAY_MS;
        rearm(s);
        return; /* on_tick releases the 530 and the queue */
    }
    command_done(s);
}

/* Nothing outstanding: typically a 421 before the server closes. */
static void on_unsolicited_line(gw_session *s, gw_reply_parser *r)
{
    /* Unsolicited: typically 421 before the server closes. */
    reply(s, r->line);
    if (r->last && r->code == 421)
        session_fail(s, NULL, "backend sent 421");
}

static void on_reply_line(gw_session *s, gw_reply_parser *r)
{
    switch (s->pending) {
    case PEND_GREETING:
        on_greeting_line(s, r);
        return;
    case PEND_BE_AUTH:
    case PEND_BE_PBSZ:
    case PEND_BE_PROT:
        on_backend_tls_reply(s, r);
        return;
    case PEND_PASV:
        on_pasv_reply(s, r);
        return;
    case PEND_PORT:
        on_port_reply(s, r);
        return;
    case PEND_ABORT:
        on_abort_reply(s, r);
        return;
    case PEND_FEAT:
        on_feat_line(s, r);
        return;
    case PEND_TRANSFER:
        on_transfer_reply(s, r);
        return;
    case PEND_RELAY:
    case PEND_QUIT:
        on_relayed_line(s, r);
        return;
    case PEND_NONE:
        on_unsolicited_line(s, r);
        return;
    }
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
            session_fail(s, "421 Service not available: invalid reply from the server.\r\n",
                         r == GW_REPLY_TOOLONG ? "backend reply line too long"
                                               : "backend sent an invalid reply");
            return;
        }
        on_reply_line(s, &s->reply);
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
        session_fail(s, "421 Service not available: backend unreachable.\r\n",
                     "backend unreachable");
        return;
    }
    gw_conn_peer(c, &s->backend_peer);
    gw_addr_normalize(&s->backend_peer);
    set_backend_state(s, BS_GREETING);
    if (s->fe->backend->tls == GW_BE_TLS_IMPLICIT) {
        if (gw_conn_attach_tls(c, gw_tls_new_client(s->fe->backend_tls_ctx, GW_TLS_CLIENT_CONTROL,
                                                    s->fe->backend_host,
                                                    s->fe->backend->tls_verify, NULL)) != 0)
            session_fail(s, "421 Service not available: out of memory.\r\n", "out of memory");
        return;
    }
    gw_conn_start_read(c);
}

static void on_backend_eof(gw_conn *c, bool clean)
{
    gw_session *s = c->owner;
    if (s->pending == PEND_TRANSFER)
        reply(s, "426 Connection closed; transfer aborted.\r\n");
    session_fail(s, "421 Service not available: the server closed the connection.\r\n",
                 "backend closed the connection");
}

static void on_backend_error(gw_conn *c, const char *why)
{
    gw_session *s = c->owner;
    GW_LOG_WARN(s->id, "event=backend_error reason=\"%s\"", why);
    if (c->tls && !gw_tls_handshake_done(c->tls)) {
        /* Name the reason: an operator must see "certificate verify failed" at once. */
        char text[300];
        snprintf(text, sizeof text, "421 Service not available: backend TLS failed (%s).\r\n",
                 why);
        session_fail(s, text, "backend TLS handshake failed");
        return;
    }
    on_backend_eof(c, false);
}

static void on_backend_handshake(gw_conn *c)
{
    gw_session *s = c->owner;
    GW_LOG_INFO(s->id, "event=backend_tls tls=%s", gw_tls_describe(c->tls));
    if (s->pending == PEND_BE_AUTH) {
        set_backend_state(s, BS_GREETING);
        forward(s, "PBSZ 0", PEND_BE_PBSZ);
    }
}

static void on_backend_drain(gw_conn *c)
{
}

static void on_backend_shutdown(gw_conn *c, int status)
{
}

static void on_backend_close(gw_conn *c)
{
    gw_session *s = c->owner;
    if (s->backend == c) /* REIN may already have a new one */
        s->backend = NULL;
    release(s);
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
    release(s); /* the pending lookup held the session */
}

static void connect_backend(gw_session *s)
{
    s->backend = gw_conn_new(s->loop, &backend_ops, s, s->id, "backend");
    if (!s->backend) {
        session_fail(s, "421 Service not available: out of memory.\r\n", "out of memory");
        return;
    }
    s->handles++;
    set_backend_state(s, BS_CONNECTING);
    set_pending(s, PEND_GREETING);
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

/* ---- client commands ---- */

static bool is_transfer(const char *verb, bool *upload)
{
    static const char *const down[] = {"RETR", "LIST", "NLST", "MLSD"};
    static const char *const up[] = {"STOR", "STOU", "APPE"};
    for (size_t i = 0; i < sizeof down / sizeof *down; i++)
        if (strcmp(verb, down[i]) == 0)
            return !(*upload = false);
    for (size_t i = 0; i < sizeof up / sizeof *up; i++)
        if (strcmp(verb, up[i]) == 0)
            return (*upload = true);
    return false;
}

/* RFC 4217 §4 / PROTOCOL.md §3: with require_tls only a few commands are served in clear. */
static bool gate_before_tls(gw_session *s, const char *v)
{
    const gw_frontend_conf *fc = s->fe->conf;
    if (fc->mode != GW_FE_EXPLICIT || !fc->require_tls || s->tls_up || s->ccc)
        return false;
    static const char *const allowed[] = {"AUTH", "FEAT", "HELP", "QUIT", "SYST",
                                          "NOOP", "OPTS", "PBSZ", "PROT"};
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++)
        if (!strcmp(v, allowed[i]))
            return false;
    /* SECURITY: no credentials in clear. */
    if (!strcmp(v, "USER") || !strcmp(v, "PASS"))
        reply(s, "530 TLS required: send AUTH TLS before USER and PASS.\r\n");
    else
        reply(s, "530 Please log in over TLS (AUTH TLS) first.\r\n");
    return true;
}

static void cmd_auth(gw_session *s, const char *arg)
{
    const gw_frontend_conf *fc = s->fe->conf;
    if (fc->mode == GW_FE_PLAIN) {
        reply(s, "502 AUTH not supported on this frontend.\r\n");
        return;
    }
    if (s->tls_up || s->ccc) {
        reply(s, fc->mode == GW_FE_IMPLICIT
                     ? "503 AUTH not allowed: TLS is already active (implicit FTPS).\r\n"
                     : "503 Already protected by TLS.\r\n");
        return;
    }
    if (s->user_sent) {
        reply(s, "503 AUTH must come before USER.\r\n");
        return;
    }
    if (strcasecmp(arg, "TLS") && strcasecmp(arg, "TLS-C") && strcasecmp(arg, "SSL")) {
        reply(s, "504 AUTH mechanism not supported (use TLS or SSL).\r\n");
        return;
    }
    reply(s, "234 Proceed with TLS negotiation.\r\n");
    /* SECURITY: plaintext pipelined after AUTH must not be taken as protected commands. */
    if (s->inlen)
        GW_LOG_WARN(s->id, "event=auth_pipelined discarded=%zu", s->inlen);
    s->inlen = 0;
    gw_cmd_init(&s->cmd);
    set_client_state(s, CS_AUTH);
    int r = gw_conn_start_tls(s->client, s->fe->tls_ctx, GW_TLS_SERVER_CONTROL);
    if (r != 0)
        session_fail(s, NULL, uv_strerror(r));
}

/* RFC 4217 §5: 200, then our close_notify at once (curl never answers with its own). */
static void cmd_ccc(gw_session *s)
{
    const gw_frontend_conf *fc = s->fe->conf;
    if (!s->tls_up) {
        reply(s, "533 CCC needs a protected control connection.\r\n");
        return;
    }
    if (fc->mode == GW_FE_IMPLICIT || !fc->allow_ccc) {
        reply(s, fc->mode == GW_FE_IMPLICIT
                     ? "534 CCC refused: implicit FTPS sessions stay protected.\r\n"
                     : "534 CCC refused by policy.\r\n");
        return;
    }
    reply(s, "200 Control connection now in clear.\r\n");
    gw_conn_clear_tls(s->client, NULL);
    s->tls_up = false;
    s->ccc = true;
    GW_LOG_INFO(s->id, "event=ccc note=\"control connection in clear from now on\"");
}

static void connect_backend(gw_session *s);

/* REIN under TLS: the protection ends with the reset, so what the client queued behind it
 * is not run in the new state (SECURITY: nothing crosses from TLS into clear); each
 * complete command gets 503 inside TLS and a partial line is dropped. In clear the queue is
 * simply taken after the reset, in order. */
static void answer_queued_before_reset(gw_session *s)
{
    int answered = 0;
    size_t off = 0, partial = 0;
    while (off < s->inlen) {
        size_t used = 0;
        int r = gw_cmd_feed(&s->cmd, (const uint8_t *)s->inbuf + off, s->inlen - off, &used);
        off += used;
        if (r == GW_CMD_AGAIN) {
            partial = s->cmd.len;
            break;
        }
        reply(s, "503 Command sent before REIN completed; send it again.\r\n");
        answered++;
    }
    if (answered || partial)
        GW_LOG_INFO(s->id, "event=rein_pipelined answered=%d dropped_bytes=%zu", answered,
                    partial);
    s->inlen = 0;
    gw_cmd_init(&s->cmd);
}

/* REIN: the gateway answers it (vsftpd says 502); the session starts over with a fresh
 * backend connection (PROTOCOL.md §2, §3, §6). */
static void cmd_rein(gw_session *s)
{
    bool implicit = s->fe->conf->mode == GW_FE_IMPLICIT;
    reply(s, "220 Service ready for new user.\r\n");
    drop_data(s, false);
    if (s->tls_up)
        answer_queued_before_reset(s);
    s->logged_in = s->user_sent = s->prot_p = s->pbsz = s->epsv_all = s->ccc = false;
    s->be_prot_p = s->be_prot_later = s->be_after_login = false;
    s->started_ms = s->last_active_ms = now_ms(s);
    if (s->backend)
        gw_conn_close(s->backend);
    s->backend = NULL;
    set_backend_state(s, BS_IDLE);
    gw_reply_init(&s->reply);
    GW_LOG_INFO(s->id, "event=rein");
    rearm(s);
    if (s->tls_up) {
        s->tls_up = false;
        gw_conn_clear_tls(s->client, implicit ? s->fe->tls_ctx : NULL);
    }
    if (implicit) {
        set_client_state(s, CS_HANDSHAKE); /* a new ClientHello, then a fresh greeting */
        return;
    }
    s->swallow_greeting = true;
    connect_backend(s);
}

static void cmd_pbsz(gw_session *s, const char *arg)
{
    if (!s->tls_up) {
        reply(s, "503 PBSZ needs a protected control connection (AUTH TLS first).\r\n");
        return;
    }
    if (!*arg || strspn(arg, "0123456789") != strlen(arg)) {
        reply(s, "501 PBSZ needs a number.\r\n");
        return;
    }
    s->pbsz = true;
    reply(s, "200 PBSZ=0\r\n");
}

static void cmd_prot(gw_session *s, const char *arg)
{
    if (!s->tls_up || !s->pbsz) {
        reply(s, "503 PROT needs PBSZ first.\r\n");
        return;
    }
    if (!arg[0] || arg[1]) {
        reply(s, arg[0] ? "504 PROT level not supported.\r\n" : "501 PROT needs a level.\r\n");
        return;
    }
    switch (arg[0] | 0x20) {
    case 'c':
        s->prot_p = false;
        reply(s, "200 PROT now Clear.\r\n");
        return;
    case 'p':
        s->prot_p = true;
        reply(s, "200 PROT now Private.\r\n");
        return;
    case 's':
    case 'e':
        reply(s, "536 PROT level not supported.\r\n");
        return;
    default:
        reply(s, "504 PROT level not supported.\r\n");
    }
}

static void cmd_pasv(gw_session *s, bool epsv, const char *arg)
{
    gw_addr_normalize(&s->client_local);
    if (epsv && arg[0]) {
        int family = 0;
        int r = gw_parse_epsv_arg(arg, &family);
        if (r == 1) {
            s->epsv_all = true;
            drop_data(s, false);
            reply(s, "200 EPSV ALL ok.\r\n");
            return;
        }
        if (r < 0 || (family && family != s->client_local.family)) {
            reply(s, r == -1 ? "501 Bad EPSV argument.\r\n"
                             : "522 Network protocol not supported, use (1,2)\r\n");
            return;
        }
    }
    if (!epsv && s->epsv_all) {
        reply(s, "503 EPSV ALL in effect: use EPSV.\r\n");
        return;
    }
    /* A 227 cannot carry an IPv6 address (vsftpd refuses PASV there too). */
    if (!epsv && !s->fe->pasv_addr.family && s->client_local.family == 6) {
        reply(s, "522 PASV is IPv4 only: use EPSV.\r\n");
        return;
    }
    s->cur.want = epsv ? WANT_EPSV : WANT_PASV;
    arm_backend_leg(s);
}

/* PORT/EPRT: the gateway will connect to the client. */
static void cmd_port(gw_session *s, bool eprt, const char *arg)
{
    if (s->epsv_all) {
        reply(s, "503 EPSV ALL in effect: use EPSV.\r\n");
        return;
    }
    gw_addr a;
    int r = eprt ? gw_parse_eprt_arg(arg, &a) : gw_parse_port_arg(arg, &a);
    if (r == -2) {
        reply(s, "522 Network protocol not supported, use (1,2)\r\n");
        return;
    }
    if (r != 0) {
        reply(s, eprt ? "501 Bad EPRT argument.\r\n" : "501 Bad PORT argument.\r\n");
        return;
    }
    gw_addr_normalize(&a);
    /* SECURITY: RFC 2577 bounce attack: only the control peer, only unprivileged ports. */
    if (!gw_addr_same_host(&a, &s->client_peer) || a.port < 1024) {
        GW_LOG_WARN(s->id, "event=port_refused addr=%s reason=\"%s\"", gw_addr_str(&a),
                    a.port < 1024 ? "privileged port" : "not the control peer");
        reply(s, "504 Command not implemented for that parameter (bounce refused).\r\n");
        return;
    }
    s->cur.want = eprt ? WANT_EPRT : WANT_PORT;
    s->cur.want_addr = a;
    arm_backend_leg(s);
}

static void cmd_transfer(gw_session *s, const char *line, const char *verb, bool upload)
{
    /* SECURITY: require_prot_p keeps data off the wire in clear (RFC 4217 §10.2). */
    if (s->fe->conf->require_prot_p && s->fe->conf->mode != GW_FE_PLAIN && !s->prot_p) {
        reply(s, "521 Data connection cannot be opened with this PROT setting.\r\n");
        return;
    }
    if (!s->data || !gw_data_usable(s->data)) {
        drop_data(s, false);
        reply(s, "425 Use PORT, EPRT, PASV or EPSV first.\r\n");
        return;
    }
    forward(s, line, PEND_TRANSFER);
    s->cur.held_code = 0;
    s->data_finished = false;
    s->xfer_bytes = 0;
    s->xfer_started_ms = now_ms(s);
    const char *sp = strchr(line, ' ');
    snprintf(s->xfer_arg, sizeof s->xfer_arg, "%s", sp ? sp + 1 : "");
    GW_LOG_INFO(s->id, "event=transfer_start verb=%s prot=%s", verb, s->prot_p ? "P" : "C");
    gw_data_tls tls = {
        .client_ctx = s->prot_p ? s->fe->tls_ctx : NULL,
        .tag = s->has_tag ? s->tag : NULL,
        .reuse_required = s->fe->cfg->data_session_reuse_required,
        /* Default yes: curl, lftp and ftplib all end uploads with close_notify (measured). */
        .strict_eof = s->fe->cfg->strict_tls_eof != 0,
    };
    if (s->be_prot_p) {
        /* Offer the backend control session: servers such as vsftpd require it. */
        tls.backend_engine =
            gw_tls_new_client(s->fe->backend_tls_ctx, GW_TLS_CLIENT_DATA, s->fe->backend_host,
                              s->fe->backend->tls_verify, s->backend->tls);
    }
    gw_data_start(s->data, upload, &tls);
}

static void handle_command(gw_session *s, const char *line)
{
    gw_cmd cmd;
    s->last_active_ms = now_ms(s);
    if (gw_cmd_split(line, &cmd) != 0) {
        reply(s, "500 Syntax error, command unrecognized.\r\n");
        return;
    }
    /* SECURITY: the PASS argument never reaches a log line. */
    GW_LOG_DEBUG(s->id, "event=command verb=%s arg=\"%.64s\"", cmd.verb,
                 strcmp(cmd.verb, "PASS") == 0 ? "***" : cmd.arg);
    free(s->cur.held); /* released with the previous command's reply; never carried over */
    memset(&s->cur, 0, sizeof s->cur);
    snprintf(s->cur.verb, sizeof s->cur.verb, "%s", cmd.verb);
    const char *v = cmd.verb;
    bool upload;
    if (gate_before_tls(s, v))
        return;
    if (!strcmp(v, "AUTH"))
        cmd_auth(s, cmd.arg);
    else if (!strcmp(v, "PBSZ"))
        cmd_pbsz(s, cmd.arg);
    else if (!strcmp(v, "PROT"))
        cmd_prot(s, cmd.arg);
    else if (!strcmp(v, "CCC"))
        cmd_ccc(s);
    else if (!strcmp(v, "CPSV") || !strcmp(v, "SSCN"))
        reply(s, "502 Command not implemented.\r\n");
    else if (!strcmp(v, "PASV") || !strcmp(v, "EPSV"))
        cmd_pasv(s, v[0] == 'E', cmd.arg);
    else if (!strcmp(v, "PORT") || !strcmp(v, "EPRT"))
        cmd_port(s, v[0] == 'E', cmd.arg);
    else if (!strcmp(v, "REIN"))
        cmd_rein(s);
    else if (!strcmp(v, "FEAT"))
        forward(s, "FEAT", PEND_FEAT);
    else if (!strcmp(v, "QUIT"))
        forward(s, "QUIT", PEND_QUIT);
    else if (!strcmp(v, "ABOR"))
        cmd_abort(s);
    else if (is_transfer(v, &upload))
        cmd_transfer(s, line, v, upload);
    else {
        if (!strcmp(v, "USER")) {
            s->user_sent = true;
            snprintf(s->user, sizeof s->user, "%s", cmd.arg);
        }
        forward(s, line, PEND_RELAY);
    }
}

static void cmd_abort(gw_session *s)
{
    GW_LOG_INFO(s->id, "event=abort during_transfer=%s", s->pending == PEND_TRANSFER ? "yes" : "no");
    if (s->pending != PEND_TRANSFER) {
        drop_data(s, false);
        forward(s, "ABOR", PEND_RELAY);
        return;
    }
    /* Close both legs now; the backend then reports the transfer, then ABOR. */
    drop_data(s, false);
    s->cur.abort_expect = 2;
    s->cur.abort_xfer_sent = false;
    if (s->cur.held_code) { /* the transfer's final reply is already here */
        reply(s, "426 Connection closed; transfer aborted.\r\n");
        s->cur.abort_xfer_sent = true;
        s->cur.abort_expect = 1;
    }
    free(s->cur.held);
    s->cur.held = NULL;
    s->cur.heldlen = 0;
    s->cur.held_code = 0;
    s->cur.abort_started_ms = now_ms(s);
    forward(s, "ABOR", PEND_ABORT);
    rearm(s);
}

static void consume(gw_session *s, size_t n);

/* During a transfer only ABOR (with or without IAC IP / IAC DM before it) is taken out of
 * the queue; anything else waits for the transfer's end. */
static void peek_abort(gw_session *s)
{
    gw_cmd_parser *tmp = malloc(sizeof *tmp);
    if (!tmp)
        return;
    *tmp = s->cmd;
    size_t used = 0;
    gw_cmd c;
    if (gw_cmd_feed(tmp, (const uint8_t *)s->inbuf, s->inlen, &used) == GW_CMD_LINE &&
        gw_cmd_split(tmp->line, &c) == 0 && !strcmp(c.verb, "ABOR")) {
        s->cmd = *tmp;
        s->cmd.tn_reply_len = 0;
        consume(s, used);
        s->last_active_ms = now_ms(s);
        cmd_abort(s);
    }
    free(tmp);
}

static void consume(gw_session *s, size_t n)
{
    memmove(s->inbuf, s->inbuf + n, s->inlen - n);
    s->inlen -= n;
}

/* Take commands from the queue while nothing is outstanding. */
static void pump(gw_session *s)
{
    if (s->pending == PEND_TRANSFER && s->inlen && s->cstate != CS_CLOSING)
        peek_abort(s);
    while (s->cstate != CS_CLOSING && s->pending == PEND_NONE && s->cstate == CS_READY && s->inlen) {
        size_t used = 0;
        int r = gw_cmd_feed(&s->cmd, (const uint8_t *)s->inbuf, s->inlen, &used);
        consume(s, used);
        if (s->cmd.tn_reply_len) {
            gw_conn_write(s->client, s->cmd.tn_reply, s->cmd.tn_reply_len);
            s->cmd.tn_reply_len = 0;
        }
        if (r == GW_CMD_LINE) {
            handle_command(s, s->cmd.line);
        } else if (r == GW_CMD_TOOLONG) {
            GW_LOG_WARN(s->id, "event=line_too_long max=%d", GW_CMD_LINE_MAX);
            if (++s->too_long >= MAX_LONG_LINES)
                session_fail(s, "421 Too many overlong command lines.\r\n", "line abuse");
            else
                reply(s, "500 Command line too long.\r\n");
        }
    }
    if (s->client && s->client->paused && s->inlen < INBUF_MAX / 2 && s->cstate != CS_CLOSING)
        gw_conn_resume(s->client);
}

static void on_client_data(gw_conn *c, const char *buf, size_t n)
{
    gw_session *s = c->owner;
    if (s->cstate == CS_CLOSING)
        return;
    if (s->inlen + n > s->incap) {
        size_t cap = s->inlen + n;
        char *nb = realloc(s->inbuf, cap);
        if (!nb) {
            session_fail(s, "421 Out of memory.\r\n", "out of memory");
            return;
        }
        s->inbuf = nb;
        s->incap = cap;
    }
    memcpy(s->inbuf + s->inlen, buf, n);
    s->inlen += n;
    pump(s);
    /* The queue is full: stop reading until commands are answered. */
    if (s->inlen > INBUF_MAX)
        gw_conn_pause(c);
}

static void on_client_handshake(gw_conn *c)
{
    gw_session *s = c->owner;
    GW_LOG_INFO(s->id, "event=tls_established tls=%s", gw_tls_describe(c->tls));
    s->last_active_ms = now_ms(s);
    s->tls_up = true;
    s->has_tag = true;
    memcpy(s->tag, gw_tls_tag(c->tls), GW_TLS_TAG_LEN);
    if (s->cstate == CS_AUTH) {
        set_client_state(s, CS_READY); /* explicit: PROT stays C until the client sends PROT */
        pump(s);
        return;
    }
    /* MS-FTPS: implicit TLS implies AUTH TLS, PBSZ 0 and PROT P. */
    s->prot_p = s->pbsz = true;
    set_client_state(s, CS_READY);
    connect_backend(s);
}

static void on_client_eof(gw_conn *c, bool clean)
{
    gw_session *s = c->owner;
    if (s->cstate == CS_CLOSING) {
        gw_conn_close(c);
        return;
    }
    session_fail(s, NULL, clean ? "client closed" : "client closed without close_notify");
}

static void on_client_error(gw_conn *c, const char *why)
{
    gw_session *s = c->owner;
    GW_LOG_INFO(s->id, "event=client_error reason=\"%s\"", why);
    if (s->cstate == CS_CLOSING)
        gw_conn_close(c);
    else
        session_fail(s, NULL, s->cstate == CS_HANDSHAKE ? "TLS handshake failed" : "client error");
}

static void on_client_drain(gw_conn *c)
{
    gw_session *s = c->owner;
    if (s->backend && s->backend->paused)
        gw_conn_resume(s->backend);
}

static void on_client_shutdown(gw_conn *c, int status)
{
    gw_conn_close(c);
}

static void on_client_close(gw_conn *c)
{
    gw_session *s = c->owner;
    s->client = NULL;
    if (s->cstate != CS_CLOSING)
        session_fail(s, NULL, "client gone");
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
    release(s);
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

/* max_sessions and max_sessions_per_ip: 421 in clear on explicit/plain frontends, a bare
 * close on implicit ones (never a byte in clear there, PROTOCOL.md §7). */
static bool refuse_over_limit(gw_session *s)
{
    const gw_config *cfg = s->fe->cfg;
    gw_shared *sh = s->fe->srv->shared;
    const char *why = NULL;
    if (sh->sessions > cfg->max_sessions) {
        why = "max_sessions reached";
    } else {
        pthread_mutex_lock(&sh->lock);
        if (gw_ip_acquire(sh->per_ip, &s->client_peer, cfg->max_sessions_per_ip) != 0)
            why = "max_sessions_per_ip reached";
        else
            s->ip_counted = true;
        pthread_mutex_unlock(&sh->lock);
    }
    if (!why)
        return false;
    GW_LOG_WARN(s->id, "event=session_refused peer=%s reason=\"%s\" worker=%d",
                gw_addr_str(&s->client_peer), why, s->fe->srv->worker);
    if (s->fe->conf->mode != GW_FE_IMPLICIT) {
        set_client_state(s, CS_READY);
        session_fail(s, "421 Too many connections, try again later.\r\n", why);
    } else {
        session_fail(s, NULL, why);
    }
    return true;
}

void gw_session_accept(gw_frontend *fe, uv_stream_t *listener)
{
    gw_server *srv = fe->srv;
    gw_session *s = calloc(1, sizeof *s);
    if (!s) {
        gw_listener_refuse(listener);
        return;
    }
    s->id = ++srv->shared->next_session_id;
    s->fe = fe;
    gw_generation_ref(fe->gen);
    s->loop = srv->loop;
    s->client = gw_conn_new(s->loop, &client_ops, s, s->id, "client");
    if (!s->client) {
        gw_generation_unref(fe->gen);
        free(s);
        gw_listener_refuse(listener);
        return;
    }
    uv_timer_init(s->loop, &s->timer);
    s->timer.data = s;
    s->handles = 2; /* client conn and timer */
    srv->sessions++;
    srv->shared->sessions++;
    s->next = srv->session_list;
    if (s->next)
        s->next->prev = s;
    srv->session_list = s;
    gw_cmd_init(&s->cmd);
    gw_reply_init(&s->reply);
    s->started_ms = s->last_active_ms = now_ms(s);
    uv_timer_start(&s->timer, on_tick, 1000, 0);
    if (gw_conn_accept(s->client, listener) != 0 || gw_conn_peer(s->client, &s->client_peer) ||
        gw_conn_local(s->client, &s->client_local)) {
        session_fail(s, NULL, "accept failed");
        return;
    }
    gw_addr_normalize(&s->client_peer);
    if (refuse_over_limit(s))
        return;
    GW_LOG_INFO(s->id, "event=session_start frontend=%s peer=%s worker=%d", fe->conf->name,
                gw_addr_str(&s->client_peer), srv->worker);
    if (fe->conf->mode != GW_FE_IMPLICIT) {
        set_client_state(s, CS_READY); /* the backend's greeting is relayed in clear */
        int r = gw_conn_start_read(s->client);
        if (r != 0)
            session_fail(s, NULL, uv_strerror(r));
        else
            connect_backend(s);
        return;
    }
    /* MS-FTPS: nothing is sent before the handshake completes. */
    int r = gw_conn_start_tls(s->client, fe->tls_ctx, GW_TLS_SERVER_CONTROL);
    if (r != 0)
        session_fail(s, NULL, uv_strerror(r));
}

void gw_session_close_all(gw_server *srv, const char *why)
{
    for (gw_session *s = srv->session_list; s; s = s->next)
        session_fail(s, "421 Service not available: the gateway is shutting down.\r\n", why);
}
