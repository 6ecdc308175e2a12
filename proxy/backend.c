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
    if (!s->be_tried)
        s->be_tried = calloc((size_t)fe->n_backends / 32 + 1, sizeof *s->be_tried);
    gw_bal_cand *c = malloc((size_t)(fe->n_backends ? fe->n_backends : 1) * sizeof *c);
    if (!s->be_tried || !c) {
        free(c);
        return false;
    }
    for (;;) {
        for (int i = 0; i < fe->n_backends; i++) {
            const gw_backend_rt *be = fe->backends[i];
            c[i] = (gw_bal_cand){.weight = be->conf->weight,
                                 .live = atomic_load(be->live),
                                 .max_sessions = be->conf->max_sessions,
                                 .up = !(s->be_tried[i / 32] & (1u << i % 32)) &&
                                       (!h || gw_health_is_up(h, be->conf->name))};
        }
        const uint8_t *key = s->client_peer.ip;
        size_t keylen = s->client_peer.family == 6 ? 16 : 4;
        if (fe->conf->balance == GW_BALANCE_USER) { /* the name sent to the backend */
            key = (const uint8_t *)s->be_user;
            keylen = strlen(s->be_user);
        }
        int i = gw_balance_pick(fe->conf->balance, c, fe->n_backends, &fe->bal, 0,
                                next_random(s->id), key, keylen);
        if (i < 0) {
            free(c);
            return false;
        }
        gw_backend_rt *be = fe->backends[i];
        s->be_tried[i / 32] |= 1u << i % 32;
        /* Another worker may have taken the last place meanwhile: count first, then look. */
        int now = atomic_fetch_add(be->live, 1) + 1;
        if (be->conf->max_sessions > 0 && now > be->conf->max_sessions) {
            atomic_fetch_sub(be->live, 1);
            continue;
        }
        s->be = be;
        s->be_counted = true;
        GW_LOG_INFO(s->id, "event=backend_chosen backend=%s policy=%s live=%d", be->conf->name,
                    gw_balance_name(fe->conf->balance), now);
        free(c);
        return true;
    }
}

bool gw_backend_choose_index(gw_session *s, int i)
{
    gw_backend_rt *be = s->fe->backends[i];
    int now = atomic_fetch_add(be->live, 1) + 1;
    if (be->conf->max_sessions > 0 && now > be->conf->max_sessions) {
        atomic_fetch_sub(be->live, 1);
        GW_LOG_WARN(s->id, "event=backend_full backend=%s policy=route_user", be->conf->name);
        return false;
    }
    /* Pinned: never failed over, so the tried set is not needed. */
    s->be = be;
    s->be_counted = true;
    s->be_pinned = true;
    GW_LOG_INFO(s->id, "event=backend_chosen backend=%s policy=route_user live=%d", be->conf->name,
                now);
    return true;
}

void gw_backend_uncount(gw_session *s)
{
    if (s->be_counted)
        atomic_fetch_sub(s->be->live, 1);
    s->be_counted = false;
}

bool gw_backend_prelogin_admit(gw_session *s)
{
    const gw_frontend_conf *fc = s->fe->conf;
    int r =
        gw_health_prelogin_acquire(s->fe->gen->health, fc->name, &s->client_peer,
                                   fc->prelogin_backend_per_ip, fc->prelogin_backend_max, false);
    if (r == 1) {
        s->prelogin_counted = true;
        s->prelogin_fe = s->fe;
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
    if (!s->prelogin_counted)
        return;
    s->prelogin_counted = false;
    gw_health_prelogin_release(s->prelogin_fe->gen->health, s->prelogin_fe->conf->name,
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
    if (!s->be || s->cstate == CS_CLOSING)
        return false;
    if (!s->be_reported) {
        s->be_reported = true;
        if (s->fe->gen->health)
            gw_health_report(s->fe->gen->health, s->be->conf->name, false, reason);
        gw_sinfo_backend(s, false, reason);
    }
    if (s->be_committed || s->be_resolving || s->be_pinned)
        return false;
    gw_backend_rt *from = s->be;
    gw_backend_uncount(s);
    if (!gw_backend_choose(s)) {
        s->be = from; /* for the failure's messages; no longer counted */
        GW_LOG_WARN(s->id, "event=backend_failover from=%s reason=\"%s\" to=none", from->conf->name,
                    reason);
        return false;
    }
    GW_LOG_WARN(s->id, "event=backend_failover from=%s reason=\"%s\" to=%s", from->conf->name,
                reason, s->be->conf->name);
    if (s->backend)
        gw_conn_close(s->backend); /* its close callback releases its handle */
    s->backend = NULL;
    gw_reply_init(&s->reply);
    gw_sess_set_backend_state(s, BS_IDLE);
    gw_backend_connect(s);
    return true;
}

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
    if (s->user_waiting) {
        /* self_greet: the client's OPTS UTF8 ON (answered by the gateway), then its USER,
         * whose reply is the answer to the client's USER. */
        if (s->utf8_replay) {
            s->utf8_replay = false;
            gw_backend_send(s, "OPTS UTF8 ON", PEND_BE_OPTS);
            return;
        }
        s->user_waiting = false;
        if (gw_edge_backend_ready(s)) /* auth = file: the gateway's login, replayed */
            return;
        char line[GW_CMD_LINE_MAX + 8];
        snprintf(line, sizeof line, s->be_user[0] ? "USER %s" : "USER", s->be_user);
        gw_backend_send(s, line, PEND_RELAY);
        return;
    }
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
                               gw_tls_new_client(s->be->tls_ctx, GW_TLS_CLIENT_CONTROL, s->be->host,
                                                 s->be->conf->tls_verify, NULL)) != 0)
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
    default: /* only the three internal commands above are routed here */
        GW_SESS_BUG_ON(s, s->pending < PEND_BE_AUTH || s->pending > PEND_BE_PROT);
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
    if (!s->swallow_greeting && !s->self_greet && (r->code == 120 || r->code == 220))
        gw_sess_reply(s, r->line);
    if (!r->last || r->code == 120)
        return;
    if (r->code >= 400 && r->code < 500) {
        /* Busy (max_clients reached, 421), not dead: another backend if there is one, else
         * 421 to this client only; health does not count it. */
        char text[100], why[60];
        snprintf(text, sizeof text, GW_R_FMT_BUSY_GREETING, r->code);
        snprintf(why, sizeof why, "backend busy (greeted %d)", r->code);
        GW_LOG_INFO(s->id, "event=backend_busy backend=%s code=%d", s->be->conf->name, r->code);
        if (!s->be_reported) {
            s->be_reported = true;
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
    s->swallow_greeting = false;
    s->be_committed = true; /* from here on the client's commands reach this backend */
    if (!s->be_reported) {
        s->be_reported = true;
        if (s->fe->gen->health)
            gw_health_report(s->fe->gen->health, s->be->conf->name, true, "greeting");
        gw_sinfo_backend(s, true, "greeting");
    }
    if (s->be->conf->tls == GW_BE_TLS_EXPLICIT)
        gw_backend_send(s, "AUTH TLS", PEND_BE_AUTH);
    else if (s->be->conf->tls == GW_BE_TLS_IMPLICIT)
        gw_backend_send(s, "PBSZ 0", PEND_BE_PBSZ);
    else
        gw_backend_ready(s);
}

static void on_backend_data(gw_conn *c, const char *buf, size_t n)
{
    gw_session *s = c->owner;
    const uint8_t *p = (const uint8_t *)buf;
    while (n > 0 && s->cstate != CS_CLOSING && s->backend == c) { /* c is gone on failover */
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
    if (s->client && s->client->want_drain && s->backend == c)
        gw_conn_pause(c);
}

static void on_backend_connect(gw_conn *c, int status)
{
    gw_session *s = c->owner;
    if (status != 0) {
        GW_LOG_WARN(s->id, "event=backend_connect_failed backend=%s:%u reason=\"%s\" name=%s%s",
                    s->be->conf->address.host, s->be->conf->address.port, uv_strerror(status),
                    s->be->conf->name, local_failure(status) ? " side=gateway" : "");
        if (local_failure(status)) {
            s->be_reported = true; /* not the backend's failure: health is not told */
            if (status == UV_EMFILE || status == UV_ENFILE)
                gw_metric_fd_limit();
            gw_sess_fail(s, GW_R_UNAVAILABLE_RESOURCES, uv_strerror(status));
            return;
        }
        if (!gw_backend_failover(s, uv_strerror(status)))
            gw_sess_fail(s, GW_R_BACKEND_UNREACHABLE, "backend unreachable");
        return;
    }
    gw_conn_peer(c, &s->backend_peer);
    gw_addr_normalize(&s->backend_peer);
    s->be_attempt_ms = gw_sess_now(s); /* the greeting gets its own connect_timeout */
    gw_sess_set_backend_state(s, BS_GREETING);
    if (s->be->conf->proxy_protocol) { /* before anything else, TLS included */
        uint8_t hdr[GW_PP_BUILD_MAX];
        size_t n = gw_pp_build(s->be->conf->proxy_protocol, hdr, sizeof hdr, &s->client_peer,
                               &s->client_reached);
        if (n)
            gw_conn_write(c, hdr, n);
    }
    if (s->be->conf->tls == GW_BE_TLS_IMPLICIT) {
        if (gw_conn_attach_tls(c, gw_tls_new_client(s->be->tls_ctx, GW_TLS_CLIENT_CONTROL,
                                                    s->be->host, s->be->conf->tls_verify, NULL)) !=
            0)
            gw_sess_fail(s, GW_R_UNAVAILABLE_NOMEM, "out of memory");
        return;
    }
    gw_conn_start_read(c);
}

static void backend_gone(gw_session *s)
{
    if (s->pending == PEND_TRANSFER)
        gw_sess_reply(s, GW_R_XFER_ABORTED);
    gw_sess_fail(s, GW_R_BACKEND_CLOSED, "backend closed the connection");
}

static void on_backend_eof(gw_conn *c, bool clean)
{
    gw_session *s = c->owner;
    if (!s->be_committed && gw_backend_failover(s, "closed before the greeting"))
        return;
    backend_gone(s);
}

static void on_backend_error(gw_conn *c, const char *why)
{
    gw_session *s = c->owner;
    GW_LOG_WARN(s->id, "event=backend_error reason=\"%s\"", why);
    if (!s->be_committed && gw_backend_failover(s, why))
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
    if (s->be->conf->tls == GW_BE_TLS_IMPLICIT)
        return;                                        /* the greeting comes over it */
    if (GW_SESS_BUG_ON(s, s->pending != PEND_BE_AUTH)) /* explicit: only AUTH TLS's 234 */
        return;
    gw_sess_set_backend_state(s, BS_GREETING);
    gw_backend_send(s, "PBSZ 0", PEND_BE_PBSZ);
}

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
        to.port = s->be->conf->address.port;
    }
    uv_freeaddrinfo(res);
    s->be_resolving = false;
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
    if (!s->logged_in && !s->prelogin_counted && /* at USER, REIN: counted, never refused */
        gw_health_prelogin_acquire(s->fe->gen->health, s->fe->conf->name, &s->client_peer, 0, 0,
                                   true) == 1) {
        s->prelogin_counted = true;
        s->prelogin_fe = s->fe;
    }
    s->handles++;
    s->be_reported = false;
    s->be_attempt_ms = gw_sess_now(s);
    gw_sess_set_backend_state(s, BS_CONNECTING);
    gw_sess_set_pending(s, PEND_GREETING);
    if (!s->be->by_name) {
        connect_backend_to(s, &s->be->addr);
        return;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    s->resolve_req.data = s;
    s->handles++;
    s->be_resolving = true;
    int r = uv_getaddrinfo(s->loop, &s->resolve_req, on_backend_resolved, s->be->conf->address.host,
                           NULL, &hints);
    if (r != 0) {
        s->be_resolving = false;
        s->handles--;
        on_backend_connect(s->backend, r);
    }
}
