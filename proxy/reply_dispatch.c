/* Backend reply dispatch: each reply of the backend goes where the pending exchange says
 * (PROTOCOL.md §4-§6): the backend's set-up (PEND_SETUP) to backend.c, PASV/PORT replies, transfers
 * and ABOR to transfer.c; FEAT is rewritten here, relayed replies pass through, USER/PASS replies
 * count logins, QUIT's ends the session. */
#include "session_int.h"

#include <stdlib.h>
#include <string.h>

#include "bans.h"
#include "feat.h"
#include "ftp_codes.h"
#include "log.h"

#define FEAT_MAX (16 * 1024) /* a backend FEAT reply larger than this is cut */
#define FAILED_LOGIN_DELAY_MS 1000

/* The client address the ban list counts: the control connection's peer, normalised (with
 * a PROXY header, its source: wherever the session keeps the client's address). */
static const gw_addr *ban_peer(const gw_session *s)
{
    return &s->client_peer;
}

/* FEAT is buffered whole and rewritten (PROTOCOL.md §3). */
static void on_feat_line(gw_session *s, gw_reply_parser *r)
{
    gw_sess_append(&s->cur.feat, &s->cur.featlen, r->line, r->len, FEAT_MAX);
    if (r->last) {
        char out[FEAT_MAX + 512];
        gw_feat_opts o = {.tls = s->fe->conf->mode != GW_FE_PLAIN,
                          .ccc = s->fe->conf->allow_ccc && s->fe->conf->mode == GW_FE_EXPLICIT};
        if (gw_feat_rewrite(s->cur.feat ? s->cur.feat : "", s->cur.featlen, &o, out, sizeof out))
            gw_sess_reply(s, out);
        else
            gw_sess_reply(s, GW_R_FEAT_END);
        free(s->cur.feat);
        s->cur.feat = NULL;
        s->cur.featlen = 0;
        gw_sess_command_done(s);
    }
}

/* A relayed command's reply; USER/PASS and QUIT have their extra duties here. */
static void on_relayed_line(gw_session *s, gw_reply_parser *r)
{
    if (r->code == 530 && !strcmp(s->cur.verb, "PASS")) {
        gw_sess_append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
        if (!r->last)
            return;
    } else if (r->code == 230 && s->bconn.data == BE_DATA_LATER) {
        if (!r->last) {
            gw_sess_append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
            return;
        }
    } else {
        gw_sess_reply(s, r->line);
    }
    if (!r->last || r->code < 200)
        return;
    if (r->code == 230) {
        gw_sinfo_login(s, true);
        s->login.logged_in = true;
        gw_backend_prelogin_release(s);
        if (s->ctl.cert) /* client_cert: who logged in with which certificate */
            GW_LOG_INFO(s->id, "event=login_cert user=\"%s\" subject=\"%s\" issuer=\"%s\"",
                        s->login.user, s->ctl.cert->subject, s->ctl.cert->issuer);
        if (s->bconn.data == BE_DATA_LATER) {
            /* PROTOCOL.md §6: hold the 230 until PBSZ and PROT are answered. */
            gw_sess_append(&s->cur.held, &s->cur.heldlen, r->line, r->len, HELD_MAX);
            gw_backend_advance(s, r);
            return;
        }
    }
    if (s->pending == PEND_QUIT) {
        gw_sess_fail(s, NULL, "quit");
        return;
    }
    if (r->code == 530 && strcmp(s->cur.verb, "PASS") == 0) {
        gw_reply_login_failed(s); /* on_tick releases the 530 and the queue */
        return;
    }
    gw_sess_command_done(s);
}

void gw_reply_login_failed(gw_session *s)
{
    GW_LOG_INFO(s->id, "event=login_failed count=%d", s->login.failed + 1);
    gw_sinfo_login(s, false);
    /* The ban list counts it per client address (bans.h): a banned address's session
     * ends now, its other sessions at their next failure, new ones at accept. */
    if (gw_bans_login_failed(s->fe->cfg, ban_peer(s), s->id)) {
        gw_sess_fail(s, GW_R_BANNED, "client address banned");
        return;
    }
    if (++s->login.failed >= 3) {
        gw_sess_fail(s, GW_R_TOO_MANY_LOGINS, "3 failed logins");
        return;
    }
    s->login.reply_delay_until = gw_sess_now(s) + FAILED_LOGIN_DELAY_MS;
    gw_sess_rearm(s);
}

/* Nothing outstanding: typically a 421 before the server closes. */
static void on_unsolicited_line(gw_session *s, gw_reply_parser *r)
{
    /* Unsolicited: typically 421 before the server closes. */
    gw_sess_reply(s, r->line);
    if (r->last && r->code == 421)
        gw_sess_fail(s, NULL, "backend sent 421");
}

void gw_reply_dispatch_line(gw_session *s, gw_reply_parser *r)
{
    switch (s->pending) {
    case PEND_SETUP:
        gw_backend_setup_line(s, r);
        return;
    case PEND_PASV:
        gw_xfer_pasv_reply(s, r);
        return;
    case PEND_PORT:
        gw_xfer_port_reply(s, r);
        return;
    case PEND_ABORT:
        gw_xfer_abort_reply(s, r);
        return;
    case PEND_FEAT:
        on_feat_line(s, r);
        return;
    case PEND_TRANSFER:
        if (s->cur.be_sent)
            gw_xfer_final_reply(s, r);
        else /* a deferred upload not sent yet: nothing is owed */
            on_unsolicited_line(s, r);
        return;
    case PEND_RELAY:
    case PEND_QUIT:
        on_relayed_line(s, r);
        return;
    case PEND_CHECK: /* the gateway checks a PASS: nothing was sent, the backend speaks
                        out of turn (a backend refusal's connection is dropped) */
    case PEND_NONE:
        on_unsolicited_line(s, r);
        return;
    }
    GW_SESS_BUG_ON(s, (unsigned)s->pending > PEND_LAST); /* not a gw_pending */
}
