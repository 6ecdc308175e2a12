/* The session's data-channel wiring (PROTOCOL.md §5): the backend leg armed by PASV/EPSV or
 * PORT/EPRT toward the server (EPSV/EPRT first, PASV/PORT for an IPv4 server that refused
 * them), then the client's leg and the gateway's own 227/229/200; transfers started, deferred
 * uploads released once the client's leg is accepted, the final reply held until the data
 * legs are done, ABOR's replies sequenced, what the server still owes consumed; and each
 * transfer's one record (transfer_end, the transfer log, the metrics). */
#include "session_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "data.h"
#include "ftp_codes.h"
#include "log.h"
#include "proxy_proto.h"
#include "xferlog.h"

/* One line per finished transfer, in the configured xferlog_format (xferlog.h). */
static void write_xferlog(gw_session *s, int code, const char *result)
{
    int fd = s->fe->gen->xferlog_fd;
    if (fd < 0)
        return;
    char line[1024], host[64];
    gw_addr_ip_str(&s->client_peer, host, sizeof host);
    gw_xfer_rec rec = {.end = time(NULL),
                       .ms = gw_sess_now(s) - s->xfer.started_ms,
                       .session = s->id,
                       .peer = gw_addr_str(&s->client_peer),
                       .host = host,
                       .user = s->login.user,
                       .verb = s->cur.verb,
                       .file = s->xfer.arg,
                       .bytes = s->xfer.bytes,
                       .code = code,
                       .result = result,
                       .ascii = s->xfer.type_ascii};
    size_t n = gw_xferlog_line(line, sizeof line, s->fe->cfg->xferlog_format, &rec);
    if (n > 0) {
        ssize_t w = write(fd, line, n); /* one write(2): lines never interleave */
        (void)w;
    }
}

static int reply_code(const char *text)
{
    if (!text || text[0] < '1' || text[0] > '5')
        return 0;
    return (text[0] - '0') * 100 + (text[1] - '0') * 10 + (text[2] - '0');
}

void gw_xfer_record(gw_session *s, const char *reply, const char *result, const char *why)
{
    if (!s->xfer.open)
        return; /* recorded already, or never started */
    s->xfer.open = false;
    int code = reply_code(reply);
    if (s->xfer.data && !s->xfer.finished)
        s->xfer.bytes = gw_data_progress(s->xfer.data); /* cut in the middle: what got through */
    const char *data = !s->xfer.finished ? "unused" : s->xfer.ok ? "ok" : "failed";
    GW_LOG_INFO(s->id, "event=transfer_end verb=%s code=%d data=%s bytes=%llu result=%s%s%s%s",
                s->cur.verb, code, data, (unsigned long long)s->xfer.bytes, result,
                why ? " reason=\"" : "", why ? why : "", why ? "\"" : "");
    write_xferlog(s, code, result);
    gw_sinfo_transfer_end(s, result);
}

static void complete_transfer(gw_session *s)
{
    bool backend_ok = s->cur.held_code >= 200 && s->cur.held_code < 300;
    const char *sent = NULL;
    if (s->xfer.finished && !s->xfer.ok)
        sent = s->xfer.fail_reply; /* the client's leg broke: never report success */
    else if (s->cur.held)
        sent = s->cur.held;
    if (sent)
        gw_sess_reply(s, sent);
    /* What the client got decides: a 2xx after a data leg that did not fail is a success. */
    int code = reply_code(sent);
    const char *result = code >= 200 && code < 300 && (s->xfer.ok || !s->xfer.finished) ? "ok"
                         : !s->xfer.finished && code >= 400                             ? "unused"
                                                                                        : "failed";
    gw_xfer_record(s, sent, result, NULL);
    gw_sess_drop_data(s, backend_ok && s->xfer.ok);
    free(s->cur.held);
    s->cur.held = NULL;
    s->cur.heldlen = 0;
    gw_sess_command_done(s);
}

/* The transfer cannot end normally and the client gets `text` now (PROTOCOL.md §5, "One
 * reply per command"): what the backend still owes for the command is consumed, never
 * relayed. It is counted: when the server holds its data connection for the transfer
 * (owe_only), that connection is reset and the server ends the transfer by itself with
 * exactly one final reply, so one final reply is owed and no ABOR is sent (an ABOR then
 * races the transfer's own end: pyftpdlib answers it 225 and sends the transfer's 226
 * later, after the marker below). Otherwise the server may wait for a data connection
 * that never comes: it gets an ABOR with a NOOP behind it, and the NOOP's 200 marks the
 * end (servers differ in whether the waiting transfer gets a final reply of its own, and
 * none can come from a data connection it never had). An upload always takes the ABOR
 * route: its backend leg is reset only after the ABOR (gw_data_release), so that the
 * server records a failure. A backend that answers nothing within ABORT_TIMEOUT_MS ends
 * the session. */
static void end_owed(gw_session *s, const char *text, const char *why, bool owe_only)
{
    gw_sess_reply(s, text);
    gw_xfer_record(s, text, "failed", why);
    GW_LOG_INFO(s->id, "event=transfer_abort note=\"%s\"",
                owe_only ? "the server ends it: its final reply is consumed"
                         : "ABOR sent to the server");
    /* Before the ABOR: the server's reply for a download cut now comes before the NOOP's
     * 200 (an upload's backend leg is reset only after the ABOR: gw_data_release). */
    gw_sess_drop_data(s, false);
    free(s->cur.held);
    s->cur.held = NULL;
    s->cur.heldlen = 0;
    s->cur.abort_internal = true;
    s->cur.abort_started_ms = gw_sess_now(s);
    if (owe_only) {
        s->cur.owed = 1;
        gw_sess_set_pending(s, PEND_ABORT);
        gw_sess_rearm(s);
        return;
    }
    gw_xfer_abort_marked(s);
}

void gw_xfer_abort_marked(gw_session *s)
{
    s->cur.owed = 0;
    s->cur.abort_marked = true;
    s->cur.abort_started_ms = gw_sess_now(s);
    gw_backend_send(s, "ABOR", PEND_ABORT);
    if (s->bconn.conn)
        gw_conn_write_str(s->bconn.conn, "NOOP\r\n");
    gw_sess_rearm(s);
}

void gw_xfer_abort(gw_session *s, const char *text, const char *why)
{
    end_owed(s, text, why, false);
}

/* A deferred upload ends before its command reached the backend: the server owes nothing
 * for it, and its file was never opened. text NULL: the client already has its answer. */
void gw_xfer_end_unsent(gw_session *s, const char *text, const char *result, const char *why)
{
    if (text)
        gw_sess_reply(s, text);
    gw_xfer_record(s, text, result, why);
    GW_LOG_INFO(s->id, "event=transfer_unsent note=\"the server was not told\"");
    gw_sess_drop_data(s, false);
}

/* data.c, deferred upload: the client's TCP leg exists (its TLS handshake waits for a 1yz
 * with ftplib and curl), then the leg is accepted: now the server gets the command. */
static void on_client_leg(void *owner, enum gw_data_leg_event ev)
{
    gw_session *s = owner;
    if (s->pending != PEND_TRANSFER || s->cur.be_sent)
        return;
    if (ev == GW_DATA_CLIENT_CONNECTED) {
        if (!s->cur.own_1xx)
            gw_sess_reply(s, GW_R_UPLOAD_OPENING);
        s->cur.own_1xx = true;
        return;
    }
    GW_LOG_DEBUG(s->id, "event=upload_released note=\"client data leg accepted\"");
    gw_backend_send(s, s->xfer.line ? s->xfer.line : "", PEND_TRANSFER);
    free(s->xfer.line); /* sent: not kept for the transfer's length */
    s->xfer.line = NULL;
    s->cur.be_sent = true;
    if (s->xfer.data)
        gw_data_backend_go(s->xfer.data);
}

bool gw_xfer_defer_upload(gw_session *s, const char *line)
{
    free(s->xfer.line);
    if (!(s->xfer.line = strdup(line))) {
        gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
        return false;
    }
    s->cur.deferred = true;
    gw_sess_set_pending(s, PEND_TRANSFER);
    gw_data_defer_backend(s->xfer.data, on_client_leg);
    return true;
}

static const char *data_result_reply(enum gw_data_result r)
{
    switch (r) {
    case GW_DATA_OK:
        return NULL;
    case GW_DATA_TIMEOUT:
        return GW_R_XFER_DATA_TIMEOUT;
    case GW_DATA_UNSAFE_EOF:
        return GW_R_XFER_NO_CLOSE_NOTIFY;
    case GW_DATA_NOT_RESUMED:
        return GW_R_DATA_TLS_NOT_RESUMED;
    case GW_DATA_CLIENT_FAILED:
        return GW_R_CANT_OPEN_DATA;
    case GW_DATA_BACKEND_FAILED:
        return GW_R_CANT_OPEN_DATA_BACKEND;
    case GW_DATA_ABORTED:
        break;
    }
    GW_BUG_ON(r != GW_DATA_ABORTED); /* not a gw_data_result: answered as an abort */
    return GW_R_XFER_ABORTED;
}

/* data.c: the transfer's data legs are done (or failed). */
static void on_data_done(void *owner, enum gw_data_result result, uint64_t bytes)
{
    gw_session *s = owner;
    bool ok = result == GW_DATA_OK;
    s->xfer.finished = true;
    s->xfer.done_ms = gw_sess_now(s);
    s->xfer.bytes = bytes;
    s->xfer.ok = ok;
    gw_sinfo_data_done(s, result, bytes);
    if (!ok) {
        snprintf(s->xfer.fail_reply, sizeof s->xfer.fail_reply, "%s", data_result_reply(result));
    }
    if (!ok && s->pending == PEND_TRANSFER && !s->cur.be_sent) {
        /* A deferred upload whose client leg was refused or never came: the server never
         * had the command (a broken handshake is a leg that could not be opened). */
        const char *text = result == GW_DATA_ABORTED ? GW_R_CANT_OPEN_DATA : s->xfer.fail_reply;
        gw_xfer_end_unsent(s, text, "failed", "client data leg refused");
        gw_sess_command_done(s);
        return;
    }
    if (!ok) {
        /* A download's server that holds its data connection ends the transfer by itself
         * once that connection ends (end_owed). An upload is aborted whatever the server
         * holds: only an ABOR before its leg's reset makes every server record a failure
         * (pyftpdlib counts a reset upload complete); the NOOP behind it marks the end. */
        bool owe_only = s->xfer.data && !s->cur.deferred && gw_data_server_ends(s->xfer.data);
        /* Abort both legs now so the backend notices. */
        gw_data_release(s->xfer.data, false);
        s->xfer.data = NULL;
        if (s->pending == PEND_TRANSFER && !s->cur.held_code) {
            end_owed(s, s->xfer.fail_reply, "data leg failed", owe_only);
            return;
        }
    }
    if (s->pending == PEND_TRANSFER && s->cur.held_code)
        complete_transfer(s);
    else
        gw_sess_rearm(s); /* the final reply now has data_timeout to arrive */
}

/* The client's control connection is gone or going: closed here, or its FIN (or reset)
 * arrived and waits to be read (a killed client's kernel sends it before the data
 * connection's, both in one go). */
static bool client_gone(void *owner)
{
    gw_session *s = owner;
    if (!s->client || s->cstate == CS_CLOSING || s->client->eof || s->client->failed)
        return true;
    int fd = gw_conn_fd(s->client);
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    return fd >= 0 && getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
           ti.tcpi_state != TCP_ESTABLISHED;
}

static gw_data *new_data(gw_session *s)
{
    const gw_config *cfg = s->fe->cfg;
    gw_data_limits lim = {
        .connect_timeout_ms = (uint64_t)cfg->data_connect_timeout * 1000,
        .data_timeout_ms = (uint64_t)cfg->data_timeout * 1000,
        .splice = cfg->splice,
        .client_gone = client_gone,
    };
    gw_edge_rates(s, &lim.rate_down, &lim.rate_up);
    return gw_data_new(s->loop, s->id, &lim, on_data_done, s);
}

/* A client that resumes each TLS 1.3 ticket once (curl, OpenSSL) finds a fresh one, tagged
 * for this control connection, in front of the reply that precedes its data connection. */
static void offer_data_ticket(gw_session *s)
{
    if (s->prot.prot_p && s->prot.tls_up && s->client && s->client->tls &&
        gw_tls_new_ticket(s->client->tls) != 0)
        GW_LOG_WARN(s->id, "event=ticket_failed note=\"the data connection may not resume\"");
}

/* pasv_shared_port: 1 when the client leg waits on the shared port (bind->port set), 0 to
 * use pasv_ports, -1 when refused (425 sent). A TLS client is matched by the route of its
 * ticket unless it showed it does not resume (or may not, with data_session_reuse =
 * optional): then, like clear data, by address, which needs it alone on that address. */
static int arm_shared_port(gw_session *s, gw_addr *bind)
{
    const gw_frontend_conf *fc = s->fe->conf;
    if (fc->pasv_shared_port <= 0)
        return 0;
    bool tls = s->prot.prot_p && s->ctl.has_tag;
    bool presumed = s->ctl.data_resumed == 0 && fc->data_session_reuse_required;
    gw_shport_want w = {
        .port = (uint16_t)fc->pasv_shared_port,
        .tls = tls,
        .by_ticket = tls && (s->ctl.data_resumed == 1 || presumed),
        .tag = s->ctl.tag,
        .unproven = s->ctl.data_resumed == 0,
    };
    if (gw_data_client_shared(s->xfer.data, &w, &s->client_peer) == 0) {
        bind->port = w.port;
        return 1;
    }
    bool range = s->fe->pool != NULL;
    gw_shport_count_fallback(!range);
    GW_LOG_INFO(s->id, "event=shared_port_%s reason=\"another session from this address waits\"",
                range ? "fallback" : "refused");
    if (range)
        return 0;
    gw_sess_drop_data(s, false);
    gw_sess_reply(s, GW_R_SHARED_PORT_BUSY);
    return -1;
}

bool gw_xfer_pasv_addr(gw_session *s, const gw_addr *bind, gw_addr *adv)
{
    const gw_frontend *fe = s->fe;
    if (fe->conf->pasv_address_for[0] &&
        gw_pp_addr_for(fe->conf->pasv_address_for, &s->client_peer, adv))
        return true;
    *adv = fe->pasv_auto ? s->client_reached : fe->pasv_addr.family ? fe->pasv_addr : *bind;
    gw_addr_normalize(adv);
    return adv->family == 4;
}

/* The backend leg is armed: now the client's leg, and the client's answer. */
static void arm_client_leg(gw_session *s)
{
    char buf[128];
    const gw_frontend_conf *fc = s->fe->conf;
    if (s->cur.want == WANT_PORT || s->cur.want == WANT_EPRT) {
        gw_addr from = s->client_local;
        gw_addr_normalize(&from);
        int port = fc->active_source_port >= 0  ? fc->active_source_port
                   : fc->mode == GW_FE_IMPLICIT ? 989
                                                : 20;
        from.port = (uint16_t)port;
        gw_data_client_active(s->xfer.data, &s->cur.want_addr, &from);
        offer_data_ticket(s);
        gw_sess_reply(s, s->cur.want == WANT_PORT ? GW_R_PORT_OK : GW_R_EPRT_OK);
        return;
    }
    gw_addr bind = s->client_local;
    gw_addr_normalize(&bind);
    /* Before the wait on the shared port starts: its hand-off checks the header source. */
    if (fc->proxy_protocol_data)
        gw_data_client_proxy(s->xfer.data, fc->proxy_protocol, fc->proxy_protocol_from);
    int shared = arm_shared_port(s, &bind);
    if (shared < 0)
        return;
    if (!shared && (!s->fe->pool || gw_data_client_passive(s->xfer.data, &bind, s->fe->pool,
                                                           &s->client_peer) != 0)) {
        if (s->fe->pool)
            GW_LOG_WARN(s->id, "event=pasv_failed reason=\"no free port in %u-%u\"",
                        fc->pasv_port_min, fc->pasv_port_max);
        else
            GW_LOG_WARN(s->id, "event=pasv_failed reason=\"pasv_ports is empty\"");
        gw_sess_drop_data(s, false);
        gw_sess_reply(s, GW_R_NO_PASV_PORT);
        return;
    }
    if (s->cur.want == WANT_EPSV) {
        gw_format_229(buf, sizeof buf, bind.port);
    } else {
        gw_addr adv;
        (void)gw_xfer_pasv_addr(s, &bind, &adv); /* cmd_pasv checked it is IPv4 */
        adv.port = bind.port;
        gw_format_227(buf, sizeof buf, &adv);
    }
    GW_LOG_DEBUG(s->id, "event=client_data_armed port=%u", bind.port);
    gw_tl_add(&s->tl, GW_TL_DATA, "passive port %u", bind.port);
    offer_data_ticket(s);
    gw_sess_reply(s, buf);
}

static bool *no_extended(gw_session *s)
{
    return &s->route.be->no_extended;
}

/* EPSV/EPRT refused as unknown (500/501/502): remember it for this backend and retry with
 * PASV/PORT, which an IPv4 backend understands. True when the retry was sent. */
static bool fall_back_to_classic(gw_session *s, gw_reply_parser *r, bool passive)
{
    if (!s->cur.sent_extended || (r->code != 500 && r->code != 501 && r->code != 502) ||
        s->bconn.peer.family != 4)
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
        gw_backend_send(s, "PASV", PEND_PASV);
        return true;
    }
    char line[128];
    size_t n = gw_format_port(line, sizeof line, &s->cur.be_listen);
    if (n < 2)
        return false;
    line[n - 2] = 0;
    gw_backend_send(s, line, PEND_PORT);
    return true;
}

void gw_xfer_pasv_reply(gw_session *s, gw_reply_parser *r)
{
    if (fall_back_to_classic(s, r, true))
        return;
    if (r->code != 227 && r->code != 229) {
        gw_sess_reply(s, r->line); /* the backend's refusal (530, 425 ...) is the client's answer */
        if (r->last)
            gw_sess_command_done(s);
        return;
    }
    if (!r->last)
        return;
    gw_addr addr = s->bconn.peer, parsed;
    uint16_t port;
    int ok = r->code == 227 ? gw_parse_227(r->line, &parsed) : gw_parse_229(r->line, &port);
    if (ok != 0) {
        GW_LOG_WARN(s->id, "event=bad_pasv_reply reply=\"%.*s\"", (int)r->len - 2, r->line);
        gw_sess_reply(s, GW_R_CANT_OPEN_DATA_BAD_PASV);
        gw_sess_command_done(s);
        return;
    }
    /* SECURITY: data goes only to the backend we already talk to, whatever the 227 names
     * (0.0.0.0, a private address behind NAT, or a third host). */
    addr.port = r->code == 227 ? parsed.port : port;
    if (r->code == 227 && !gw_addr_same_host(&parsed, &s->bconn.peer))
        GW_LOG_DEBUG(s->id, "event=pasv_address_replaced named=%s", gw_addr_str(&parsed));
    s->xfer.data = new_data(s);
    if (!s->xfer.data) {
        gw_sess_reply(s, GW_R_CANT_OPEN_DATA_NOMEM);
        gw_sess_command_done(s);
        return;
    }
    if (gw_data_backend_passive(s->xfer.data, &addr) != 0) {
        gw_sess_drop_data(s, false);
        gw_sess_reply(s, GW_R_CANT_OPEN_DATA_BACKEND);
        gw_sess_command_done(s);
        return;
    }
    arm_client_leg(s);
    gw_sess_command_done(s);
}

void gw_xfer_port_reply(gw_session *s, gw_reply_parser *r)
{
    if (fall_back_to_classic(s, r, false))
        return;
    if (r->code >= 300 || r->code < 200) {
        gw_sess_reply(s, r->line);
        if (r->last) {
            gw_sess_drop_data(s, false);
            gw_sess_command_done(s);
        }
        return;
    }
    if (!r->last)
        return;
    arm_client_leg(s);
    gw_sess_command_done(s);
}

/* Arm the backend leg as data_mode says: EPSV/PASV (it listens) or EPRT/PORT (we do).
 * EPSV/EPRT first (no address to parse or trust); PASV/PORT for IPv4 backends that refused
 * them once. */
void gw_xfer_arm_backend_leg(gw_session *s)
{
    gw_sess_drop_data(s, false); /* a new PASV/PORT closes the previous listeners */
    bool v6 = s->bconn.peer.family == 6;
    bool ext = v6 || !*no_extended(s);
    s->cur.sent_extended = ext;
    if (s->route.be->conf->data_mode == GW_DATA_PASSIVE) {
        gw_backend_send(s, ext ? "EPSV" : "PASV", PEND_PASV);
        return;
    }
    gw_addr local;
    s->xfer.data = new_data(s);
    if (!s->xfer.data || gw_conn_local(s->bconn.conn, &local) != 0 ||
        (gw_addr_normalize(&local), gw_data_backend_active(s->xfer.data, &local, &s->bconn.peer))) {
        gw_sess_drop_data(s, false);
        gw_sess_reply(s, GW_R_CANT_OPEN_DATA_NO_LISTEN);
        return;
    }
    s->cur.be_listen = local;
    char line[128];
    size_t n =
        ext ? gw_format_eprt(line, sizeof line, &local) : gw_format_port(line, sizeof line, &local);
    if (n < 2) {
        gw_sess_drop_data(s, false);
        gw_sess_reply(s, GW_R_CANT_OPEN_DATA);
        return;
    }
    line[n - 2] = 0; /* gw_backend_send() adds the CRLF */
    gw_backend_send(s, line, PEND_PORT);
}

/* A transfer command's reply (PEND_TRANSFER, the command reached the server): a 1yz is
 * relayed unless the client has the gateway's 150; the final reply waits for the data legs. */
void gw_xfer_final_reply(gw_session *s, gw_reply_parser *r)
{
    if (r->code < 200) {
        if (!s->cur.own_1xx) /* else the client has the gateway's 150 already */
            gw_sess_reply(s, r->line);
        return;
    }
    gw_sess_append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
    if (!r->last)
        return;
    s->cur.held_code = r->code;
    bool backend_ok = r->code < 300;
    if (!backend_ok || !s->xfer.data || s->xfer.finished) {
        if (!backend_ok && s->xfer.data) {
            gw_sess_drop_data(s, false);
            s->xfer.finished = false;
        }
        complete_transfer(s);
    }
}

/* ABOR's replies (PEND_ABORT): the transfer's, then ABOR's; or, when the gateway answered
 * the transfer itself, what the server owes, consumed. */
void gw_xfer_abort_reply(gw_session *s, gw_reply_parser *r)
{
    if (s->cur.abort_internal) {
        /* Nothing of this reaches the client: it has its answer. 1yz are not final. */
        if (!r->last || r->code < 200)
            return;
        if (s->cur.abort_marked ? r->code != 200 : --s->cur.owed > 0)
            return; /* marked: the transfer's and ABOR's replies come before the NOOP's 200 */
        s->cur.abort_internal = s->cur.abort_marked = false;
        GW_LOG_DEBUG(s->id, "event=owed_replies_consumed verb=%s", s->cur.verb);
        gw_sess_command_done(s);
        return;
    }
    bool for_transfer = !s->cur.abort_xfer_sent && s->cur.abort_expect == 2;
    if (r->code < 200)
        return; /* a late 150 for the aborted transfer */
    if (for_transfer) {
        /* The client's leg was cut: its transfer did not succeed, whatever the server says. */
        if (r->last) {
            const char *sent = r->code < 300 ? GW_R_XFER_ABORTED : r->line;
            gw_sess_reply(s, sent);
            gw_xfer_record(s, sent, "aborted", "ABOR");
        } else if (r->code >= 300) {
            gw_sess_reply(s, r->line);
        }
    } else {
        gw_sess_reply(s, r->line);
    }
    if (!r->last)
        return;
    if (for_transfer)
        s->cur.abort_xfer_sent = true;
    if (--s->cur.abort_expect <= 0)
        gw_sess_command_done(s);
}
