/* The client command pipeline: the queue of the client's bytes, one command at a time,
 * the policy gate before TLS, and the commands the gateway answers itself (AUTH, PBSZ,
 * PROT, CCC, REIN, PASV/EPSV/PORT/EPRT, ABOR, the PROT check of transfers). Everything else
 * is relayed to the backend. */
#include "session_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "balance.h"
#include "cidr.h"
#include "data.h"
#include "feat.h"
#include "ftp_codes.h"
#include "log.h"

#define MAX_LONG_LINES 3

/* RFC 4217 §4 / PROTOCOL.md §3: with require_tls only a few commands are served in clear. */
static bool gate_before_tls(gw_session *s, const gw_cmd_def *def)
{
    const gw_frontend_conf *fc = s->fe->conf;
    if (fc->mode != GW_FE_EXPLICIT || !fc->require_tls || s->prot.tls_up || s->prot.ccc)
        return false;
    if (def->flags & GW_CMDF_BEFORE_TLS)
        return false;
    /* SECURITY: no credentials in clear. */
    if (def->id == GW_CMD_USER || def->id == GW_CMD_PASS)
        gw_sess_reply(s, GW_R_TLS_REQUIRED_LOGIN);
    else
        gw_sess_reply(s, GW_R_TLS_REQUIRED);
    return true;
}

/* client_cert_user: USER (its name part under route_user) must equal the client
 * certificate's CN or its first DNS/email SAN. False after answering 530. */
static bool cert_user_ok(gw_session *s, const char *arg)
{
    const gw_frontend_conf *fc = s->fe->conf;
    /* SECURITY: client_cert = required also when an explicit client skipped AUTH
     * (require_tls = no): no login without a verified certificate. */
    if (fc->client_cert == GW_CERT_REQUIRED && !s->ctl.cert) {
        GW_LOG_INFO(s->id, "event=cert_user result=no_certificate");
        gw_sess_reply(s, GW_R_CERT_REQUIRED);
        return false;
    }
    if (!fc->client_cert_user)
        return true;
    char name[GW_CMD_LINE_MAX + 1];
    snprintf(name, sizeof name, "%s", arg);
    if (fc->route_user)
        gw_route_user_split(name);
    /* SECURITY: exact, case-sensitive comparison; no certificate never matches. */
    const gw_tls_peer *c = s->ctl.cert;
    bool ok = c && name[0] && (!strcmp(name, c->cn) || !strcmp(name, c->san));
    GW_LOG_INFO(s->id, "event=cert_user result=%s user=\"%.64s\" cn=\"%s\" san=\"%s\"",
                ok ? "match" : "mismatch", name, c ? c->cn : "", c ? c->san : "");
    if (!ok)
        gw_sess_reply(s, GW_R_CERT_USER_MISMATCH);
    return ok;
}

static void cmd_auth(gw_session *s, const char *arg)
{
    const gw_frontend_conf *fc = s->fe->conf;
    if (fc->mode == GW_FE_PLAIN) {
        gw_sess_reply(s, GW_R_AUTH_UNSUPPORTED);
        return;
    }
    if (s->prot.tls_up || s->prot.ccc) {
        gw_sess_reply(s, fc->mode == GW_FE_IMPLICIT ? GW_R_AUTH_IMPLICIT : GW_R_AUTH_ALREADY);
        return;
    }
    if (s->login.user_sent) {
        gw_sess_reply(s, GW_R_AUTH_AFTER_USER);
        return;
    }
    if (strcasecmp(arg, "TLS") && strcasecmp(arg, "TLS-C") && strcasecmp(arg, "SSL")) {
        gw_sess_reply(s, GW_R_AUTH_BAD_MECH);
        return;
    }
    gw_sess_reply(s, GW_R_AUTH_OK);
    /* vsftpd protects an AUTH SSL session's data at once: legacy clients (weex) expect it
     * and never send PBSZ/PROT. [MS-FTPS] makes SSL a synonym of TLS: opt-in. (arg lives
     * in s->cmdq.parser, cleared below.) */
    if (fc->auth_ssl_protects_data && !strcasecmp(arg, "SSL")) {
        s->prot.prot_p = true;
        GW_LOG_INFO(s->id, "event=auth_ssl_protects_data");
    }
    /* SECURITY: plaintext pipelined after AUTH must not be taken as protected commands. */
    if (s->cmdq.len)
        GW_LOG_WARN(s->id, "event=auth_pipelined discarded=%zu", s->cmdq.len);
    s->cmdq.len = 0;
    gw_cmd_free(&s->cmdq.parser);
    gw_sess_set_client_state(s, CS_AUTH);
    int r = gw_sess_start_tls(s);
    if (r != 0)
        gw_sess_fail(s, NULL, uv_strerror(r));
}

/* RFC 7151 HOST on a frontend with virtual hosts: before USER, choose the frontend by name
 * (unknown: the default, else 504); TLS SNI chose already: only the same frontend. */
static void cmd_host(gw_session *s, const char *arg)
{
    if (s->login.user_sent || s->login.logged_in || s->bconn.conn) {
        gw_sess_reply(s, GW_R_HOST_LATE);
        return;
    }
    char name[GW_HOST_MAX];
    snprintf(name, sizeof name, "%s", arg);
    gw_frontend *fe = gw_vhost_find(s->fe->vh_listen, name);
    /* SECURITY: after the handshake the session stays under the TLS policy that ran it. */
    if (!fe || ((s->vh_sni || s->prot.tls_up) && fe != s->fe)) {
        GW_LOG_INFO(s->id, "event=host_refused host=\"%.64s\" reason=%s", name,
                    !fe         ? "unknown"
                    : s->vh_sni ? "sni_other"
                                : "tls_other");
        gw_sess_reply(s, fe ? GW_R_HOST_OTHER : GW_R_HOST_UNKNOWN);
        return;
    }
    gw_sess_set_frontend(s, fe, "host");
    gw_sess_reply(s, GW_R_HOST_OK);
}

/* RFC 4217 §5: 200, then our close_notify at once (curl never answers with its own). */
static void cmd_ccc(gw_session *s)
{
    const gw_frontend_conf *fc = s->fe->conf;
    if (!s->prot.tls_up) {
        gw_sess_reply(s, GW_R_CCC_NEEDS_TLS);
        return;
    }
    if (fc->mode == GW_FE_IMPLICIT || !fc->allow_ccc) {
        gw_sess_reply(s, fc->mode == GW_FE_IMPLICIT ? GW_R_CCC_IMPLICIT : GW_R_CCC_REFUSED);
        return;
    }
    gw_sess_reply(s, GW_R_CCC_OK);
    gw_conn_clear_tls(s->client, NULL);
    s->prot.tls_up = false;
    s->prot.ccc = true;
    GW_LOG_INFO(s->id, "event=ccc note=\"control connection in clear from now on\"");
}

/* REIN under TLS: the protection ends with the reset, so what the client queued behind it
 * is not run in the new state (SECURITY: nothing crosses from TLS into clear); each
 * complete command gets 503 inside TLS and a partial line is dropped. In clear the queue is
 * simply taken after the reset, in order. */
static void answer_queued_before_reset(gw_session *s)
{
    int answered = 0;
    size_t off = 0, partial = 0;
    while (off < s->cmdq.len) {
        size_t used = 0;
        int r = gw_cmd_feed(&s->cmdq.parser, (const uint8_t *)s->cmdq.buf + off, s->cmdq.len - off,
                            &used);
        off += used;
        if (r == GW_CMD_AGAIN) {
            partial = s->cmdq.parser.len;
            break;
        }
        gw_sess_reply(s, GW_R_REIN_PIPELINED);
        answered++;
    }
    if (answered || partial)
        GW_LOG_INFO(s->id, "event=rein_pipelined answered=%d dropped_bytes=%zu", answered, partial);
    s->cmdq.len = 0;
    gw_cmd_free(&s->cmdq.parser);
}

/* REIN: the gateway answers it (vsftpd says 502); the session starts over with a fresh
 * backend connection (PROTOCOL.md §2, §3, §6). */
static void cmd_rein(gw_session *s)
{
    bool implicit = s->fe->conf->mode == GW_FE_IMPLICIT;
    bool was_tls = s->prot.tls_up;
    gw_sess_reply(s, GW_R_REIN_OK);
    gw_sess_drop_data(s, false);
    if (was_tls)
        answer_queued_before_reset(s);
    if (!gw_backend_drop(s))
        return;
    /* The login and the protection levels start over, whole. SECURITY: the count of
     * failed logins survives: REIN must not buy a client more guesses. */
    uint64_t now = gw_sess_now(s);
    gw_edge_free(s); /* the login part's heap: the gateway's check and who passed it */
    gw_sess_set_be_user(s, NULL);
    s->login = (gw_sess_login){.failed = s->login.failed, .started_ms = now};
    s->prot = (gw_sess_prot){0};
    s->last_active_ms = now;
    GW_LOG_INFO(s->id, "event=rein");
    gw_sess_rearm(s);
    if (was_tls)
        gw_conn_clear_tls(s->client, implicit ? s->ctl.ctx : NULL);
    if (implicit) {
        gw_sess_set_client_state(s, CS_HANDSHAKE); /* a new ClientHello, then a fresh greeting */
        return;
    }
    if (s->route.self_greet)
        return; /* the 220 above is the greeting; the same backend is connected at USER */
    s->bconn.swallow_greeting = true;
    gw_backend_connect(s);
}

static void cmd_pbsz(gw_session *s, const char *arg)
{
    if (!s->prot.tls_up) {
        gw_sess_reply(s, GW_R_PBSZ_NEEDS_TLS);
        return;
    }
    if (!*arg || strspn(arg, "0123456789") != strlen(arg)) {
        gw_sess_reply(s, GW_R_PBSZ_BAD_ARG);
        return;
    }
    s->prot.pbsz = true;
    gw_sess_reply(s, GW_R_PBSZ_OK);
}

static void cmd_prot(gw_session *s, const char *arg)
{
    if (!s->prot.tls_up || !s->prot.pbsz) {
        gw_sess_reply(s, GW_R_PROT_NEEDS_PBSZ);
        return;
    }
    if (!arg[0] || arg[1]) {
        gw_sess_reply(s, arg[0] ? GW_R_PROT_BAD_LEVEL : GW_R_PROT_NO_ARG);
        return;
    }
    switch (arg[0] | 0x20) {
    case 'c':
        s->prot.prot_p = false;
        gw_sess_reply(s, GW_R_PROT_C_OK);
        return;
    case 'p':
        s->prot.prot_p = true;
        gw_sess_reply(s, GW_R_PROT_P_OK);
        return;
    case 's':
    case 'e':
        gw_sess_reply(s, GW_R_PROT_UNSUPPORTED);
        return;
    default:
        gw_sess_reply(s, GW_R_PROT_BAD_LEVEL);
    }
}

static void cmd_pasv(gw_session *s, bool epsv, const char *arg)
{
    gw_addr_normalize(&s->client_local);
    if (epsv && arg[0]) {
        int family = 0;
        int r = gw_parse_epsv_arg(arg, &family);
        if (r == 1) {
            s->prot.epsv_all = true;
            gw_sess_drop_data(s, false);
            gw_sess_reply(s, GW_R_EPSV_ALL_OK);
            return;
        }
        if (r < 0 || (family && family != s->client_local.family)) {
            gw_sess_reply(s, r == -1 ? GW_R_BAD_EPSV : GW_R_BAD_NETPROTO);
            return;
        }
    }
    if (!epsv && s->prot.epsv_all) {
        gw_sess_reply(s, GW_R_EPSV_ALL_IN_EFFECT);
        return;
    }
    /* A 227 cannot carry an IPv6 address (vsftpd refuses PASV there too). */
    gw_addr adv;
    if (!epsv && !gw_xfer_pasv_addr(s, &s->client_local, &adv)) {
        gw_sess_reply(s, GW_R_PASV_IPV4_ONLY);
        return;
    }
    s->cur.want = epsv ? WANT_EPSV : WANT_PASV;
    gw_xfer_arm_backend_leg(s);
}

/* PORT/EPRT: the gateway will connect to the client. */
static void cmd_port(gw_session *s, bool eprt, const char *arg)
{
    if (s->prot.epsv_all) {
        gw_sess_reply(s, GW_R_EPSV_ALL_IN_EFFECT);
        return;
    }
    gw_addr a;
    int r = eprt ? gw_parse_eprt_arg(arg, &a) : gw_parse_port_arg(arg, &a);
    if (r == -2) {
        gw_sess_reply(s, GW_R_BAD_NETPROTO);
        return;
    }
    if (r != 0) {
        gw_sess_reply(s, eprt ? GW_R_BAD_EPRT : GW_R_BAD_PORT);
        return;
    }
    gw_addr_normalize(&a);
    /* SECURITY: RFC 2577 bounce attack: only the control peer, only unprivileged ports. */
    if (!gw_addr_same_host(&a, &s->client_peer) || a.port < 1024) {
        GW_LOG_WARN(s->id, "event=port_refused addr=%s reason=\"%s\"", gw_addr_str(&a),
                    a.port < 1024 ? "privileged port" : "not the control peer");
        gw_sess_reply(s, GW_R_PORT_BOUNCE);
        return;
    }
    s->cur.want = eprt ? WANT_EPRT : WANT_PORT;
    s->cur.want_addr = a;
    gw_xfer_arm_backend_leg(s);
}

static void cmd_transfer(gw_session *s, const char *line, const char *verb, bool upload)
{
    /* SECURITY: require_prot_p keeps data off the wire in clear (RFC 4217 §10.2). */
    if (s->fe->conf->require_prot_p && s->fe->conf->mode != GW_FE_PLAIN && !s->prot.prot_p) {
        gw_sess_reply(s, GW_R_PROT_P_REQUIRED);
        return;
    }
    if (!s->xfer.data || !gw_data_usable(s->xfer.data)) {
        gw_sess_drop_data(s, false);
        gw_sess_reply(s, GW_R_NEED_DATA_CMD);
        return;
    }
    if (!s->bconn.conn) {
        gw_sess_reply(s, GW_R_LOCAL_ERROR);
        return;
    }
    /* SECURITY (data safety): an upload reaches the server only once the client's data leg
     * is accepted, so that a refused leg never truncates the server's file. */
    if (upload) {
        if (!gw_xfer_defer_upload(s, line))
            return;
    } else {
        gw_backend_send(s, line, PEND_TRANSFER);
        s->cur.be_sent = true;
    }
    s->cur.held_code = 0;
    s->xfer.finished = false;
    s->xfer.bytes = 0;
    s->xfer.started_ms = gw_sess_now(s);
    s->xfer.open = true;
    const char *sp = strchr(line, ' ');
    snprintf(s->xfer.arg, sizeof s->xfer.arg, "%s", sp ? sp + 1 : "");
    GW_LOG_INFO(s->id, "event=transfer_start verb=%s prot=%s", verb, s->prot.prot_p ? "P" : "C");
    gw_data_tls tls = {
        .client_ctx = s->prot.prot_p ? (s->ctl.ctx ? s->ctl.ctx : s->fe->tls_ctx) : NULL,
        .tag = s->ctl.has_tag ? s->ctl.tag : NULL,
        .reuse_required = s->fe->conf->data_session_reuse_required,
        .reuse_exempt = gw_cidr_list_match(s->fe->conf->data_session_reuse_exempt, &s->client_peer),
        /* Default yes: curl, lftp and ftplib all end uploads with close_notify (measured);
         * netkit ftp-ssl does not (strict_tls_eof_exempt, or strict_tls_eof = no). */
        .strict_eof = s->fe->conf->strict_tls_eof != 0 &&
                      !gw_cidr_list_match(s->fe->conf->strict_tls_eof_exempt, &s->client_peer),
        .cert_sha256 = s->ctl.cert ? s->ctl.cert->sha256 : NULL,
    };
    if (upload && tls.client_ctx && !tls.strict_eof && s->fe->conf->strict_tls_eof != 0)
        GW_LOG_DEBUG(s->id, "event=strict_tls_eof_exempt");
    if (s->bconn.data == BE_DATA_TLS) {
        /* Offer the backend control session: servers such as vsftpd require it. */
        tls.backend_engine =
            gw_tls_new_client(s->route.be->tls_ctx, GW_TLS_CLIENT_DATA, s->route.be->host,
                              s->route.be->conf->tls_verify, s->bconn.conn->tls);
    }
    gw_data_start(s->xfer.data, upload, &tls);
}

static void cmd_abort(gw_session *s);

/* self_greet frontends before their backend exists: the gateway's own FEAT, the lines it
 * honours without a backend (after login FEAT is the backend's, rewritten, as always). */
static void cmd_feat_own(gw_session *s)
{
    static const char own[] = "211-Features:\r\n UTF8\r\n211 End\r\n";
    char out[512];
    gw_feat_opts o = {.tls = s->fe->conf->mode != GW_FE_PLAIN,
                      .ccc = s->fe->conf->allow_ccc && s->fe->conf->mode == GW_FE_EXPLICIT};
    if (gw_feat_rewrite(own, sizeof own - 1, &o, out, sizeof out))
        gw_sess_reply(s, out);
    else
        gw_sess_reply(s, GW_R_FEAT_END);
}

/* USER on a self_greet frontend: route_user takes BACKEND from name@BACKEND (the last '@'),
 * user_map from the name's rule (its backend, or * for the policy, and its account),
 * balance = user hashes the name, else the frontend's policy; then the backend is connected
 * and gets "USER name" (or the mapped account) once it is set up (backend.c). After REIN
 * the session keeps its backend: a name routed to another gets 530. */
static void cmd_user_routed(gw_session *s, const char *arg)
{
    if (s->vh_none) { /* virtual hosts without a default: SNI or HOST must name one */
        gw_sess_reply(s, GW_R_HOST_NONE);
        return;
    }
    char name[GW_CMD_LINE_MAX + 1];
    snprintf(name, sizeof name, "%s", arg);
    int want = -1;
    const char *named = s->fe->conf->route_user ? gw_route_user_split(name) : NULL;
    /* user_map (never with route_user): the first rule for the name; no groups here */
    const gw_map_rule *rule = gw_user_map_find(s->fe->user_map, name, NULL);
    if (rule) {
        GW_LOG_INFO(s->id, "event=user_mapped map_line=%d backend=%s backend_user=%s", rule->line,
                    rule->backend[0] ? rule->backend : "*",
                    rule->account[0] ? rule->account : "(same)");
        named = rule->backend[0] ? rule->backend : NULL;
    }
    if (named) {
        for (int i = 0; i < s->fe->n_backends; i++)
            if (strcmp(s->fe->backends[i]->conf->name, named) == 0) {
                want = i;
                break;
            }
        if (want < 0) {
            GW_LOG_INFO(s->id, "event=route_refused backend=\"%.64s\" reason=unknown", named);
            gw_sess_reply(s, GW_R_ROUTE_UNKNOWN);
            return;
        }
        if (s->route.be && s->fe->backends[want] != s->route.be) {
            GW_LOG_INFO(s->id, "event=route_refused backend=%s reason=\"the session keeps %s\"",
                        named, s->route.be->conf->name);
            gw_sess_reply(s, GW_R_ROUTE_REIN_OTHER);
            return;
        }
    }
    s->login.user_sent = true;
    size_t n = strnlen(name, sizeof s->login.user - 1); /* the transfer log's copy may be cut */
    memcpy(s->login.user, name, n);
    s->login.user[n] = 0;
    if (!gw_sess_set_be_user(s, rule && rule->account[0] ? rule->account : name)) {
        gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
        return;
    }
    if (s->bconn.conn) { /* connected already: a second USER */
        char line[GW_CMD_LINE_MAX + 8];
        snprintf(line, sizeof line, GW_SESS_BE_USER(s)[0] ? "USER %s" : "USER", GW_SESS_BE_USER(s));
        gw_backend_send(s, line, PEND_RELAY);
        return;
    }
    if (!s->route.be) {
        bool ok = want >= 0 ? gw_backend_choose_index(s, want) : gw_backend_choose(s);
        if (!ok) {
            gw_sess_fail(s, want >= 0 ? GW_R_TOO_MANY_CONNECTIONS : GW_R_UNAVAILABLE,
                         "no backend available");
            return;
        }
    }
    gw_backend_connect(s); /* the USER goes once it is set up (gw_backend_advance) */
}

/* self_greet and no backend yet: true when the gateway answered the command itself. */
static bool cmd_before_backend(gw_session *s, const gw_cmd_def *def, const char *arg)
{
    switch (def->id) {
    case GW_CMD_AUTH:
    case GW_CMD_PBSZ:
    case GW_CMD_PROT:
    case GW_CMD_CCC:
    case GW_CMD_REIN:
    case GW_CMD_USER:
        return false; /* the gateway's own in any case */
    case GW_CMD_FEAT:
        cmd_feat_own(s);
        break;
    case GW_CMD_SYST:
        gw_sess_reply(s, GW_R_SYST);
        break;
    case GW_CMD_NOOP:
        gw_sess_reply(s, GW_R_NOOP_OK);
        break;
    case GW_CMD_HELP:
        gw_sess_reply(s, GW_R_HELP);
        break;
    case GW_CMD_OPTS:
        if (strcasecmp(arg, "UTF8 ON") == 0 || strcasecmp(arg, "UTF8") == 0) {
            s->login.utf8 = true; /* sent to the backend once it greets */
            gw_sess_reply(s, GW_R_OPTS_UTF8_OK);
        } else {
            gw_sess_reply(s, GW_R_PRELOGIN);
        }
        break;
    case GW_CMD_QUIT:
        gw_sess_fail(s, GW_R_GOODBYE, "quit");
        break;
    default:
        gw_sess_reply(s, GW_R_PRELOGIN);
        break;
    }
    return true;
}

/* Transfers and the commands that set up their data connection. */
static bool opens_data(const gw_cmd_def *def)
{
    return (def->flags & GW_CMDF_TRANSFER) || def->id == GW_CMD_PASV || def->id == GW_CMD_EPSV ||
           def->id == GW_CMD_PORT || def->id == GW_CMD_EPRT;
}

static void handle_command(gw_session *s, const char *line)
{
    gw_cmd cmd;
    s->last_active_ms = gw_sess_now(s);
    if (gw_cmd_split(line, &cmd) != 0) {
        gw_sess_reply(s, GW_R_SYNTAX);
        return;
    }
    const gw_cmd_def *def = cmd.def;
    /* SECURITY: the PASS argument never reaches a log line. */
    GW_LOG_DEBUG(s->id, "event=command verb=%s arg=\"%.64s\"", cmd.verb,
                 def->id == GW_CMD_PASS ? "***" : cmd.arg);
    gw_sinfo_command(s, cmd.verb, cmd.arg); /* PASS masked there */
    free(s->cur.held); /* released with the previous command's reply; never carried over */
    free(s->cur.feat);
    memset(&s->cur, 0, sizeof s->cur);
    snprintf(s->cur.verb, sizeof s->cur.verb, "%s", cmd.verb);
    if (def->id == GW_CMD_HOST && s->fe->vhosted) { /* RFC 7151: before AUTH too */
        cmd_host(s, cmd.arg);
        return;
    }
    if (gate_before_tls(s, def))
        return;
    if (!s->login.logged_in && opens_data(def)) { /* vsftpd's answer, before any data port opens */
        gw_sess_reply(s, GW_R_PRELOGIN);
        return;
    }
    if (gw_edge_command(s, def, cmd.verb, cmd.arg)) /* auth = file's PASS, [policy] */
        return;
    if (s->route.self_greet && !s->bconn.conn && cmd_before_backend(s, def, cmd.arg))
        return;
    if (def->flags & GW_CMDF_TRANSFER) {
        cmd_transfer(s, line, cmd.verb, (def->flags & GW_CMDF_UPLOAD) != 0);
        return;
    }
    switch (def->id) {
    case GW_CMD_AUTH:
        cmd_auth(s, cmd.arg);
        break;
    case GW_CMD_PBSZ:
        cmd_pbsz(s, cmd.arg);
        break;
    case GW_CMD_PROT:
        cmd_prot(s, cmd.arg);
        break;
    case GW_CMD_CCC:
        cmd_ccc(s);
        break;
    case GW_CMD_CPSV:
    case GW_CMD_SSCN:
        gw_sess_reply(s, GW_R_NOT_IMPLEMENTED);
        break;
    case GW_CMD_PASV:
    case GW_CMD_EPSV:
        cmd_pasv(s, def->id == GW_CMD_EPSV, cmd.arg);
        break;
    case GW_CMD_PORT:
    case GW_CMD_EPRT:
        cmd_port(s, def->id == GW_CMD_EPRT, cmd.arg);
        break;
    case GW_CMD_REIN:
        cmd_rein(s);
        break;
    case GW_CMD_FEAT:
        gw_backend_send(s, "FEAT", PEND_FEAT);
        break;
    case GW_CMD_QUIT:
        gw_backend_send(s, "QUIT", PEND_QUIT);
        break;
    case GW_CMD_ABOR:
        cmd_abort(s);
        break;
    case GW_CMD_USER:
        if (!cert_user_ok(s, cmd.arg) || gw_edge_user(s, cmd.arg))
            break;
        if (s->route.self_greet) {
            cmd_user_routed(s, cmd.arg);
            break;
        }
        s->login.user_sent = true;
        snprintf(s->login.user, sizeof s->login.user, "%s", cmd.arg);
        gw_backend_send(s, line, PEND_RELAY);
        break;
    case GW_CMD_TYPE: /* relayed; remembered for the transfer log */
        s->xfer.type_ascii = cmd.arg[0] == 'A' || cmd.arg[0] == 'a';
        gw_backend_send(s, line, PEND_RELAY);
        break;
    default: /* every other verb is relayed verbatim */
        gw_backend_send(s, line, PEND_RELAY);
        break;
    }
}

static void cmd_abort(gw_session *s)
{
    GW_LOG_INFO(s->id, "event=abort during_transfer=%s",
                s->pending == PEND_TRANSFER ? "yes" : "no");
    if (s->pending != PEND_TRANSFER) {
        gw_sess_drop_data(s, false);
        gw_backend_send(s, "ABOR", PEND_RELAY);
        return;
    }
    if (!s->cur.be_sent) { /* a deferred upload the server never heard of: ours to answer */
        gw_xfer_end_unsent(s, s->cur.own_1xx ? GW_R_XFER_ABORTED : NULL, "aborted", "ABOR");
        gw_sess_reply(s, GW_R_ABOR_OK);
        gw_sess_command_done(s);
        return;
    }
    /* Close both legs now; the backend then reports the transfer, then ABOR. */
    gw_sess_drop_data(s, false);
    s->cur.abort_expect = 2;
    s->cur.abort_xfer_sent = false;
    if (s->cur.held_code) { /* the transfer's final reply is already here */
        gw_sess_reply(s, GW_R_XFER_ABORTED);
        gw_xfer_record(s, GW_R_XFER_ABORTED, "aborted", "ABOR");
        s->cur.abort_xfer_sent = true;
        s->cur.abort_expect = 1;
    }
    free(s->cur.held);
    s->cur.held = NULL;
    s->cur.heldlen = 0;
    s->cur.held_code = 0;
    s->cur.abort_started_ms = gw_sess_now(s);
    gw_backend_send(s, "ABOR", PEND_ABORT);
    gw_sess_rearm(s);
}

/* During a transfer only ABOR (with or without IAC IP / IAC DM before it) is taken out of
 * the queue; anything else waits for the transfer's end. */
static void consume(gw_session *s, size_t n);

static void peek_abort(gw_session *s)
{
    gw_cmd_parser tmp; /* a copy with its own line: the queue's parser is left as it was */
    if (!gw_cmd_clone(&tmp, &s->cmdq.parser))
        return;
    size_t used = 0;
    gw_cmd c;
    if (gw_cmd_feed(&tmp, (const uint8_t *)s->cmdq.buf, s->cmdq.len, &used) == GW_CMD_LINE &&
        gw_cmd_split(tmp.line, &c) == 0 && c.def->id == GW_CMD_ABOR) {
        gw_cmd_free(&s->cmdq.parser);
        s->cmdq.parser = tmp;
        s->cmdq.parser.tn_reply_len = 0;
        consume(s, used);
        s->last_active_ms = gw_sess_now(s);
        cmd_abort(s);
        return;
    }
    gw_cmd_free(&tmp);
}

static void consume(gw_session *s, size_t n)
{
    memmove(s->cmdq.buf, s->cmdq.buf + n, s->cmdq.len - n);
    s->cmdq.len -= n;
}

/* Take commands from the queue while nothing is outstanding. */
void gw_cmdq_pump(gw_session *s)
{
    if (s->pending == PEND_TRANSFER && s->cmdq.len && s->cstate != CS_CLOSING)
        peek_abort(s);
    while (s->cstate != CS_CLOSING && s->pending == PEND_NONE && s->cstate == CS_READY &&
           s->cmdq.len) {
        size_t used = 0;
        int r = gw_cmd_feed(&s->cmdq.parser, (const uint8_t *)s->cmdq.buf, s->cmdq.len, &used);
        consume(s, used);
        if (s->cmdq.parser.tn_reply_len) {
            gw_conn_write(s->client, s->cmdq.parser.tn_reply, s->cmdq.parser.tn_reply_len);
            s->cmdq.parser.tn_reply_len = 0;
        }
        if (r == GW_CMD_LINE) {
            handle_command(s, s->cmdq.parser.line);
        } else if (r == GW_CMD_TOOLONG) {
            GW_LOG_WARN(s->id, "event=line_too_long max=%d", GW_CMD_LINE_MAX);
            if (++s->cmdq.too_long >= MAX_LONG_LINES)
                gw_sess_fail(s, GW_R_TOO_MANY_LONG_LINES, "line abuse");
            else
                gw_sess_reply(s, GW_R_LINE_TOO_LONG);
        }
    }
    if (s->client && s->client->paused && s->cmdq.len < INBUF_MAX / 2 && s->cstate != CS_CLOSING)
        gw_conn_resume(s->client);
}

/* The client's bytes join the queue; commands are taken while nothing is outstanding. */
void gw_cmdq_receive(gw_session *s, const char *buf, size_t n)
{
    if (s->cmdq.len + n > s->cmdq.cap) {
        size_t cap = s->cmdq.len + n;
        char *nb = realloc(s->cmdq.buf, cap);
        if (!nb) {
            gw_sess_fail(s, GW_R_OUT_OF_MEMORY, "out of memory");
            return;
        }
        s->cmdq.buf = nb;
        s->cmdq.cap = cap;
    }
    memcpy(s->cmdq.buf + s->cmdq.len, buf, n);
    s->cmdq.len += n;
    gw_cmdq_pump(s);
    /* The queue is full: stop reading until commands are answered. */
    if (s->cmdq.len > INBUF_MAX)
        gw_conn_pause(s->client);
}
