/* Data channels. Per transfer (enum data_state, changed only by set_state):
 *   ARMED      listeners open or addresses known; the backend passive leg may be connecting
 *   STARTED    the transfer command was forwarded: the remaining legs open, TLS handshakes
 *   STREAMING  both legs up: relay with watermarks
 *   DRAINING   the source ended: the destination's close_notify + FIN are in flight
 *   DONE       the owner was told (any failure also leads here, from any earlier state)
 * then the owner releases it: RELEASED after DONE, ABANDONED before (ABOR, session end;
 * an abandoned transfer whose destination still completes its shutdown becomes RELEASED).
 * Released legs linger until the peers close or LINGER_MS, then FREEING -> freed. */
#include "data_int.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bug.h"
#include "ftp_codes.h"
#include "log.h"
#include "metrics.h"
#include "siblings.h"

#define LINGER_MS 5000
#define EOF_SETTLE_MS 25   /* an upload's bare FIN waits this long for its control's */
#define ABORT_RESET_MS 300 /* a cut upload's backend leg is reset this long after its ABOR */

static _Atomic uint64_t reuse_exempt_used;
static _Atomic int resets_pending;

int gw_data_resets_pending(void)
{
    return resets_pending;
}

/* The backend leg's delayed reset is done, or no longer due (the leg is gone). */
static void reset_done(gw_data *d)
{
    if (d->reset_backend)
        resets_pending--;
    d->reset_backend = false;
}

/* Every gw_data not freed yet, process-wide (workers share it): a stopping worker cuts
 * its own (gw_data_cut_all) rather than leave them to a loop that is closing. */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static gw_data *live_head;
static int live_channels;

int gw_data_live(void)
{
    pthread_mutex_lock(&live_lock);
    int n = live_channels;
    pthread_mutex_unlock(&live_lock);
    return n;
}

static void live_add(gw_data *d)
{
    pthread_mutex_lock(&live_lock);
    d->live_next = live_head;
    if (live_head)
        live_head->live_prev = d;
    live_head = d;
    live_channels++;
    pthread_mutex_unlock(&live_lock);
}

static void live_remove(gw_data *d)
{
    pthread_mutex_lock(&live_lock);
    if (d->live_prev)
        d->live_prev->live_next = d->live_next;
    else
        live_head = d->live_next;
    if (d->live_next)
        d->live_next->live_prev = d->live_prev;
    live_channels--;
    pthread_mutex_unlock(&live_lock);
}

uint64_t gw_data_reuse_exempt_count(void)
{
    return reuse_exempt_used;
}

static _Atomic uint64_t sibling_used;

uint64_t gw_data_sibling_count(void)
{
    return sibling_used;
}

static const char *const state_names[] = {"armed", "started",   "streaming",     "draining",
                                          "done",  "abandoned", "data_released", "freeing"};

static void set_state(gw_data *d, enum data_state st)
{
    /* The states only move forward (the order of enum data_state). */
    if (d->state == st || GW_BUG_ON_SID(d->sid, st < d->state || st > DS_FREEING))
        return;
    GW_LOG_DEBUG(d->sid, "event=data_state from=%s to=%s", state_names[d->state], state_names[st]);
    d->state = st;
}

/* The owner has let go (gw_data_release). */
bool data_released(const gw_data *d)
{
    return d->state >= DS_ABANDONED;
}

/* The relay runs: bytes flow from the source to the destination. */
static bool relaying(const gw_data *d)
{
    return d->state == DS_STREAMING || d->state == DS_DRAINING;
}

/* ---- bandwidth limits (rate.h) ----
 * The relay takes what it moved from the transfer's limiter; when a bucket is empty the
 * source stops being read (uv_read_stop, or the splice stops polling) and a timer resumes
 * it once every bucket holds tokens again. Reads are cut to the limiter's chunk, so nothing
 * is buffered beyond one read and the watermarks. */
struct data_rate {
    uv_timer_t timer;
    gw_data *d;
    gw_rate_spec spec[2]; /* [0] downloads, [1] uploads; keys point into the names below */
    char user[GW_NAME_MAX * 2], frontend[GW_NAME_MAX];
    gw_rate_lim lim;
    bool attached, waiting;
    uint64_t wait_from_ns;
};

static gw_conn *source(gw_data *d);
static gw_conn *other(gw_data *d, gw_conn *c);

static struct data_rate *rate_new(gw_data *d, const gw_data_limits *lim)
{
    if (!gw_rate_spec_any(&lim->rate_down) && !gw_rate_spec_any(&lim->rate_up))
        return NULL;
    struct data_rate *r = calloc(1, sizeof *r);
    if (!r) { /* unlimited rather than no transfer */
        GW_LOG_WARN(d->sid, "event=rate_limit_failed reason=\"out of memory\" note=\"unlimited\"");
        return NULL;
    }
    r->d = d;
    const gw_rate_spec *in[2] = {&lim->rate_down, &lim->rate_up};
    for (int i = 0; i < 2; i++) {
        r->spec[i] = *in[i];
        if (in[i]->user_key)
            snprintf(r->user, sizeof r->user, "%s", in[i]->user_key);
        if (in[i]->frontend_key)
            snprintf(r->frontend, sizeof r->frontend, "%s", in[i]->frontend_key);
    }
    uv_timer_init(d->loop, &r->timer);
    r->timer.data = r;
    return r;
}

/* The transfer starts relaying: its direction's buckets (shared ones by key: "f:NAME:down",
 * "u:NAME:up"; a user's key is its name, whatever frontend it came through). */
static void rate_attach(gw_data *d)
{
    struct data_rate *r = d->rate;
    if (!r || r->attached)
        return;
    int dir = d->upload ? 1 : 0;
    const char *sfx = d->upload ? "up" : "down";
    char ukey[sizeof r->user + 8], fkey[sizeof r->frontend + 8];
    snprintf(ukey, sizeof ukey, "u:%s:%s", r->user, sfx);
    snprintf(fkey, sizeof fkey, "f:%s:%s", r->frontend, sfx);
    gw_rate_spec sp = r->spec[dir];
    sp.user_key = r->user[0] ? ukey : NULL;
    sp.frontend_key = r->frontend[0] ? fkey : NULL;
    if (!gw_rate_spec_any(&sp))
        return;
    if (gw_rate_lim_attach(&r->lim, &sp, uv_hrtime()) != 0) {
        GW_LOG_WARN(d->sid, "event=rate_limit_failed reason=\"out of memory\" note=\"unlimited\"");
        return;
    }
    r->attached = true;
    GW_LOG_DEBUG(d->sid, "event=rate_limit direction=%s session=%llu user=%llu frontend=%llu",
                 d->upload ? "upload" : "download", (unsigned long long)sp.session,
                 (unsigned long long)(sp.user_key ? sp.user : 0),
                 (unsigned long long)(sp.frontend_key ? sp.frontend : 0));
}

static void rate_note_wait_end(struct data_rate *r)
{
    if (!r->waiting)
        return;
    r->waiting = false;
    uint64_t ns = uv_hrtime() - r->wait_from_ns;
    r->lim.limited_ns += ns;
    gw_metric_rate_limited(r->frontend, r->d->upload, ns);
}

static void rate_detach(gw_data *d)
{
    struct data_rate *r = d->rate;
    if (!r || !r->attached)
        return;
    rate_note_wait_end(r);
    uv_timer_stop(&r->timer);
    gw_rate_lim_detach(&r->lim);
    r->attached = false;
}

static void on_rate_timer(uv_timer_t *t);

/* 0: go on; otherwise the wait has begun (the timer runs). */
static uint64_t rate_check(gw_data *d)
{
    struct data_rate *r = d->rate;
    uint64_t now = uv_hrtime();
    uint64_t w = gw_rate_lim_wait_ns(&r->lim, now);
    if (!w)
        return 0;
    if (!r->waiting) {
        r->waiting = true;
        r->wait_from_ns = now;
    }
    uv_timer_start(&r->timer, on_rate_timer, (w + 999999) / 1000000, 0);
    return w;
}

static bool rate_on(const gw_data *d)
{
    return d->rate && d->rate->attached;
}

/* n bytes moved by the copying relay: paused while the buckets are empty. */
static void rate_charge(gw_data *d, gw_conn *src, size_t n)
{
    struct data_rate *r = d->rate;
    gw_rate_lim_charge(&r->lim, n, uv_hrtime());
    src->read_max = gw_rate_lim_chunk(&r->lim);
    if (rate_check(d))
        gw_conn_pause(src);
}

static void on_rate_timer(uv_timer_t *t)
{
    struct data_rate *r = t->data;
    gw_data *d = r->d;
    if (!r->attached || data_released(d))
        return;
    if (rate_check(d))
        return; /* another transfer took the tokens first */
    rate_note_wait_end(r);
    if (!relaying(d))
        return;
    if (d->splice) {
        gw_splice_resume(d->splice);
        return;
    }
    gw_conn *src = source(d), *dst = src ? other(d, src) : NULL;
    if (src && dst && !dst->want_drain) /* else the destination's drain resumes it */
        gw_conn_resume(src);
}

/* The splice relay asks before each read of the source. */
static size_t splice_budget(void *arg)
{
    gw_data *d = arg;
    if (!rate_on(d))
        return SIZE_MAX;
    if (rate_check(d))
        return 0;
    return gw_rate_lim_chunk(&d->rate->lim);
}

bool gw_data_rate(const gw_data *d, gw_data_rate_info *out)
{
    const struct data_rate *r = d->rate;
    if (!r || !r->attached)
        return false;
    out->limit = gw_rate_lim_limit(&r->lim);
    out->current = r->lim.current;
    out->limited_ms = r->lim.limited_ns / 1000000;
    return true;
}

static void on_rate_timer_closed(uv_handle_t *h);

static void on_data_timer_closed(uv_handle_t *h)
{
    gw_data *d = h->data;
    free(h);
    gw_tls_free(d->backend_engine);
    live_remove(d);
    free(d->pp);
    free(d);
}

void data_maybe_free(gw_data *d)
{
    if (!data_released(d) || d->state == DS_FREEING || d->client || d->backend ||
        d->client_listener || d->backend_listener || d->strays)
        return;
    set_state(d, DS_FREEING);
    if (d->rate) { /* its close then closes the data timer */
        rate_detach(d);
        uv_close((uv_handle_t *)&d->rate->timer, on_rate_timer_closed);
        return;
    }
    uv_close((uv_handle_t *)d->timer, on_data_timer_closed);
}

static void on_rate_timer_closed(uv_handle_t *h)
{
    struct data_rate *r = h->data;
    gw_data *d = r->d;
    d->rate = NULL;
    free(r);
    uv_close((uv_handle_t *)d->timer, on_data_timer_closed);
}

static void on_data_listener_closed(uv_handle_t *h)
{
    gw_data *d = h->data;
    if ((uv_tcp_t *)h == d->client_listener)
        d->client_listener = NULL;
    else
        d->backend_listener = NULL;
    free(h);
    data_maybe_free(d);
}

void data_close_listener(gw_data *d, uv_tcp_t *l)
{
    if (!l || uv_is_closing((uv_handle_t *)l))
        return;
    if (l == d->client_listener && d->pool)
        gw_pasv_pool_release(d->pool, d->client_port);
    uv_close((uv_handle_t *)l, on_data_listener_closed);
}

static void stop_shared_wait(gw_data *d)
{
    if (d->shared_id)
        gw_shport_cancel(d->shared_id);
    d->shared_id = 0;
}

static void stop_splice(gw_data *d)
{
    gw_splice_stop(d->splice);
    d->splice = NULL;
}

static void finish(gw_data *d, enum gw_data_result result)
{
    if (d->state == DS_DONE || d->state >= DS_RELEASED)
        return;
    /* Abandoned: the owner is gone and is not told, and the LINGER_MS timer keeps running
     * (it closes a leg whose peer never closes). */
    bool abandoned = d->state == DS_ABANDONED;
    set_state(d, abandoned ? DS_RELEASED : DS_DONE);
    stop_splice(d);
    rate_detach(d);
    if (!abandoned)
        uv_timer_stop(d->timer);
    gw_conn *dst = d->upload ? d->backend : d->client;
    if (d->done)
        d->done(d->owner, result, dst ? dst->payload_out : 0);
}

void data_fail(gw_data *d, enum gw_data_result result, const char *why)
{
    GW_LOG_WARN(d->sid, "event=data_failed reason=\"%s\"", why);
    finish(d, result);
}

static gw_conn *other(gw_data *d, gw_conn *c)
{
    return c == d->client ? d->backend : d->client;
}

static gw_conn *source(gw_data *d)
{
    return d->upload ? d->client : d->backend;
}

static bool is_source(gw_data *d, gw_conn *c)
{
    return c == source(d);
}

static void on_spliced(void *arg, size_t n)
{
    gw_data *d = arg;
    d->last_progress = uv_now(d->loop);
    gw_conn_count_spliced(source(d), other(d, source(d)), n);
    if (rate_on(d))
        gw_rate_lim_charge(&d->rate->lim, n, uv_hrtime()); /* splice_budget asks next */
}

static void on_leg_eof(gw_conn *c, bool clean);

static void on_splice_eof(void *arg)
{
    gw_data *d = arg;
    d->splice = NULL; /* it stopped itself */
    gw_conn_input_ended(source(d));
    on_leg_eof(source(d), true); /* a FIN is the clean end of a clear leg */
}

static void on_splice_error(void *arg, const char *why)
{
    gw_data *d = arg;
    d->splice = NULL;
    data_fail(d, GW_DATA_ABORTED, why);
}

static const gw_splice_ops splice_ops = {on_spliced, on_splice_eof, on_splice_error, NULL};
/* Under a bandwidth limit the splice takes what the buckets allow. */
static const gw_splice_ops splice_rate_ops = {on_spliced, on_splice_eof, on_splice_error,
                                              splice_budget};

/* Both legs in clear: splice(2) them, no byte passes through user space. Off by default:
 * it halves the gateway's CPU, but a receiver on the same host reads the spliced pages
 * dearer than the copy they save (tests/bench/RESULTS.md). */
static bool start_splice(gw_data *d)
{
    if (d->splice_mode == GW_SPLICE_NO || (d->splice_mode == GW_SPLICE_DOWNLOADS && d->upload) ||
        d->client->tls || d->backend->tls)
        return false;
    gw_conn *src = source(d), *dst = other(d, src);
    int sfd = gw_conn_fd(src), dfd = gw_conn_fd(dst);
    if (sfd < 0 || dfd < 0 || dst->queued)
        return false;
    d->splice = gw_splice_start(d->loop, sfd, dfd, rate_on(d) ? &splice_rate_ops : &splice_ops, d);
    return d->splice != NULL;
}

static void maybe_relay(gw_data *d)
{
    const unsigned both = LEG_CLIENT_UP | LEG_BACKEND_UP;
    if (d->state != DS_STARTED || (d->legs & both) != both)
        return;
    set_state(d, DS_STREAMING);
    d->streamed = true;
    d->last_progress = uv_now(d->loop);
    rate_attach(d);
    bool spliced = start_splice(d);
    GW_LOG_DEBUG(d->sid, "event=data_relay direction=%s path=%s", d->upload ? "upload" : "download",
                 spliced ? "splice" : "copy");
    if (spliced)
        return;
    if (rate_on(d)) /* one read at a time takes no more than the buckets can give soon */
        source(d)->read_max = gw_rate_lim_chunk(&d->rate->lim);
    gw_conn_resume(d->client);
    gw_conn_resume(d->backend);
    gw_conn_start_read(d->client);
    gw_conn_start_read(d->backend);
}

static void on_leg_data(gw_conn *c, const char *buf, size_t n)
{
    gw_data *d = c->owner;
    if (!relaying(d) || !is_source(d, c))
        return; /* bytes against the transfer's direction are dropped */
    gw_conn *dst = other(d, c);
    d->last_progress = uv_now(d->loop);
    gw_conn_write(dst, buf, n);
    if (dst->want_drain)
        gw_conn_pause(c); /* backpressure: the destination's queue is full */
    if (rate_on(d))
        rate_charge(d, c, n);
}

static void on_leg_drain(gw_conn *c)
{
    gw_data *d = c->owner;
    gw_conn *src = other(d, c);
    if (src && relaying(d) && !(d->rate && d->rate->waiting)) /* else the rate timer resumes */
        gw_conn_resume(src);
}

static void linger_or_close(gw_conn *c)
{
    if (!c)
        return;
    if (c->eof || c->failed || !c->shut) {
        gw_conn_close(c);
        return;
    }
    /* Keep reading until the peer closes: closing with unread input would send a reset
     * and could destroy data still in flight. */
    gw_conn_resume(c);
    gw_conn_start_read(c);
}

static void on_timer(uv_timer_t *t);

static void on_eof_settled(uv_timer_t *t)
{
    gw_data *d = t->data;
    uv_timer_start(d->timer, on_timer, 1000, 1000);
    if (d->state == DS_STREAMING && d->client)
        on_leg_eof(d->client, d->eof_clean);
}

static void on_leg_eof(gw_conn *c, bool clean)
{
    gw_data *d = c->owner;
    if (data_released(d)) {
        gw_conn_close(c);
        data_maybe_free(d);
        return;
    }
    if (!relaying(d) || !is_source(d, c))
        return; /* the sink half-closed; its final state comes from the other leg */
    if (!clean) {
        GW_LOG_WARN(d->sid, "event=data_eof leg=%s close_notify=no note=\"possible truncation\"",
                    c->name);
        /* SECURITY: RFC 4217 §12.6: a TCP FIN alone may be an attacker (or a crash) cutting
         * the upload: the client gets 426 and the server must not count the upload done
         * either, so its leg is reset, never closed cleanly (the owner also sends ABOR). */
        if (d->strict_eof && c == d->client) {
            GW_LOG_WARN(d->sid, "event=data_unsafe_eof note=\"answered 426, aborted toward the "
                                "server\"");
            data_fail(d, GW_DATA_UNSAFE_EOF, "upload ended without close_notify");
            return;
        }
    }
    /* An upload whose end no close_notify proves (clear, or exempt from strict_tls_eof)
     * while the client's control connection is gone: a killed client, not a finished
     * upload (a client that finished waits for its reply). Its kernel closes both
     * connections at once, in either order: the control one gets EOF_SETTLE_MS to show. */
    if (d->upload && c == d->client && !(c->tls && clean) && d->client_gone) {
        if (d->client_gone(d->owner)) {
            data_fail(d, GW_DATA_ABORTED, "client gone before its upload's reply");
            return;
        }
        if (!d->eof_settled) {
            d->eof_settled = true;
            d->eof_clean = clean;
            uv_timer_start(d->timer, on_eof_settled, EOF_SETTLE_MS, 0);
            return;
        }
    }
    set_state(d, DS_DRAINING);
    gw_conn_shutdown(other(d, c));
    /* Answer the source's close_notify too: servers such as vsftpd wait for it before they
     * send their final reply. A peer that sent none is gone or never reads one. */
    if (clean)
        gw_conn_shutdown(c);
}

static void on_leg_shutdown(gw_conn *c, int status)
{
    gw_data *d = c->owner;
    if (is_source(d, c) || d->state == DS_DONE || d->state >= DS_RELEASED)
        return; /* our answer to the source's close; the transfer ends at the destination */
    /* A client may stop reading at the size SIZE told it and close before our close_notify
     * and FIN go out (curl does, under load): its reset makes shutdown() fail with
     * ENOTCONN although every byte was written and the write queue drained. That download
     * was delivered, as vsftpd also counts it; any other failure is a cut transfer. */
    if (status == UV_ENOTCONN && !d->upload) {
        GW_LOG_INFO(d->sid, "event=data_peer_closed_first bytes=%llu",
                    (unsigned long long)c->payload_out);
    } else if (status != 0) {
        data_fail(d, GW_DATA_ABORTED, uv_strerror(status));
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=data_done direction=%s bytes=%llu",
                 d->upload ? "upload" : "download", (unsigned long long)c->payload_out);
    finish(d, GW_DATA_OK);
}

static void on_leg_error(gw_conn *c, const char *why)
{
    gw_data *d = c->owner;
    GW_LOG_INFO(d->sid, "event=data_error leg=%s reason=\"%s\"", c->name, why);
    if (d->state >= DS_DONE) {
        gw_conn_close(c);
        return;
    }
    data_fail(d, GW_DATA_ABORTED, why);
}

static void on_leg_close(gw_conn *c)
{
    gw_data *d = c->owner;
    if (c == d->client)
        d->client = NULL;
    else if (c == d->backend) {
        d->backend = NULL;
        reset_done(d);
    } else if (!GW_BUG_ON_SID(d->sid, d->strays <= 0)) {
        d->strays--;
    }
    data_maybe_free(d);
}

static void leg_ready(gw_data *d, gw_conn *c)
{
    const unsigned both = LEG_CLIENT_UP | LEG_BACKEND_UP;
    d->legs |= c == d->client ? LEG_CLIENT_UP : LEG_BACKEND_UP;
    if ((d->legs & both) != both)
        gw_conn_pause(c); /* nothing to relay to yet */
    if (c == d->client && d->defer_backend) {
        d->leg_cb(d->owner, GW_DATA_CLIENT_READY); /* the owner now tells the backend */
        return;
    }
    maybe_relay(d);
}

static void on_client_data_handshake(gw_conn *c)
{
    gw_data *d = c->owner;
    int r = gw_tls_resumed_from(c->tls, d->tag);
    const char *why = "session not resumed";
    uint8_t other[GW_TLS_TAG_LEN];
    if (r == -1) {
        /* Another control connection's session: accepted from a sibling (the same user on
         * the same backend from the same address: Go's one session cache per host, rclone),
         * else the reason names what differs. */
        enum gw_sib_verdict v = gw_tls_resumed_tag(c->tls, other)
                                    ? gw_sib_check(d->tag, other, uv_hrtime() / 1000000000u)
                                    : GW_SIB_UNKNOWN;
        if (v == GW_SIB_SIBLING) {
            sibling_used++;
            GW_LOG_INFO(d->sid, "event=data_tls_resumed rule=sibling tls=%s",
                        gw_tls_describe(c->tls));
            r = 1;
        } else {
            why = gw_sib_reason(v);
        }
    }
    d->client_resumed = r == 1 ? 1 : -1; /* before an exemption: the client's own record */
    gw_tls_peer peer;
    /* SECURITY: a data leg presenting a client certificate (its own, or the resumed
     * session's) must present the control connection's. */
    if (gw_tls_peer_cert(c->tls, &peer) &&
        (!d->has_cert || memcmp(peer.sha256, d->cert_sha256, sizeof peer.sha256) != 0)) {
        GW_LOG_WARN(d->sid,
                    "event=data_tls_refused reason=\"another client certificate\" "
                    "subject=\"%s\"",
                    peer.subject);
        gw_conn_shutdown(c);
        finish(d, GW_DATA_NOT_RESUMED);
        return;
    }
    if (r == 0 && d->reuse_required && d->reuse_exempt) {
        /* Clients that cannot resume (some .NET, Go, Java stacks), by network. A session
         * resumed from another client (r == -1) is never exempt. */
        reuse_exempt_used++;
        GW_LOG_INFO(d->sid, "event=data_reuse_exempt tls=%s", gw_tls_describe(c->tls));
        r = 1;
    }
    /* SECURITY: only a handshake that resumes this control connection's own session proves
     * the data connection belongs to the control connection's owner. */
    if (r != 1) {
        if (d->reuse_required) {
            GW_LOG_WARN(d->sid, "event=data_tls_refused reason=\"%s\"", why);
            gw_metric_data_refused(GW_M_REFUSED_NOT_RESUMED);
            /* A clean close, as vsftpd does, so that the client goes on to read the 522. */
            gw_conn_shutdown(c);
            finish(d, GW_DATA_NOT_RESUMED);
            return;
        }
        GW_LOG_INFO(d->sid, "event=data_tls_not_resumed policy=optional");
    }
    GW_LOG_DEBUG(d->sid, "event=data_tls tls=%s", gw_tls_describe(c->tls));
    leg_ready(d, c);
}

static void on_backend_data_handshake(gw_conn *c)
{
    gw_data *d = c->owner;
    if (data_released(d)) {
        /* Completed only so that the server does not see a cut handshake; now cut. */
        GW_LOG_DEBUG(d->sid, "event=backend_data_completed note=\"handshake finished, leg reset\"");
        gw_conn_reset(c);
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=backend_data_tls tls=%s resumed=%s", gw_tls_describe(c->tls),
                 gw_tls_resumed(c->tls) ? "yes" : "no");
    leg_ready(d, c);
}

void data_start_client_leg(gw_data *d)
{
    if (!d->tls_ctx && d->client->unread) {
        /* Matched on the shared port by its ClientHello, then PROT C: not this transfer. */
        data_fail(d, GW_DATA_CLIENT_FAILED, "TLS ClientHello on a clear data connection");
        return;
    }
    if (!d->tls_ctx) {
        leg_ready(d, d->client);
        return;
    }
    /* ftplib and curl start their data TLS only after the 1yz: they get the gateway's. */
    if (d->defer_backend)
        d->leg_cb(d->owner, GW_DATA_CLIENT_CONNECTED);
    /* The gateway is the TLS server toward the client whichever side connected. */
    int r = gw_conn_start_tls(d->client, d->tls_ctx, GW_TLS_SERVER_DATA);
    if (r != 0)
        data_fail(d, GW_DATA_CLIENT_FAILED, uv_strerror(r));
}

void data_start_backend_leg(gw_data *d)
{
    if (d->defer_backend)
        return; /* the server has not had the upload command yet */
    if (!d->backend_engine) {
        leg_ready(d, d->backend);
        return;
    }
    gw_tls *t = d->backend_engine;
    d->backend_engine = NULL;
    int r = gw_conn_attach_tls(d->backend, t);
    if (r != 0)
        data_fail(d, GW_DATA_BACKEND_FAILED, uv_strerror(r));
}

static void on_leg_connect(gw_conn *c, int status)
{
    gw_data *d = c->owner;
    bool client = c == d->client;
    if (data_released(d)) {
        /* A backend leg kept to complete its handshake, or handed over (gw_data_release). */
        if (status == 0 && !client && d->hand_over) {
            d->legs |= LEG_BACKEND_CONNECTED;
            data_hand_over_backend(d);
        } else if (status == 0 && !client && d->backend_engine) {
            data_start_backend_leg(d);
        } else {
            gw_conn_reset(c);
        }
        return;
    }
    if (status != 0 && d->state == DS_ARMED) {
        /* The early connect to the backend's passive port: the transfer command, if it
         * comes, gets the 425. */
        GW_LOG_WARN(d->sid, "event=data_connect_failed leg=%s reason=\"%s\"", c->name,
                    uv_strerror(status));
        gw_conn_close(c);
        return;
    }
    if (status != 0) {
        data_fail(d, client ? GW_DATA_CLIENT_FAILED : GW_DATA_BACKEND_FAILED, uv_strerror(status));
        return;
    }
    if (!client)
        d->legs |= LEG_BACKEND_CONNECTED;
    if (d->state == DS_ARMED)
        return; /* connected as soon as the 227/229 came; the handshake waits for the command */
    if (client)
        data_start_client_leg(d);
    else
        data_start_backend_leg(d);
}

const gw_conn_ops data_client_leg_ops = {
    .on_connect = on_leg_connect,
    .on_handshake = on_client_data_handshake,
    .on_data = on_leg_data,
    .on_eof = on_leg_eof,
    .on_error = on_leg_error,
    .on_drain = on_leg_drain,
    .on_shutdown = on_leg_shutdown,
    .on_close = on_leg_close,
};

const gw_conn_ops data_backend_leg_ops = {
    .on_connect = on_leg_connect,
    .on_handshake = on_backend_data_handshake,
    .on_data = on_leg_data,
    .on_eof = on_leg_eof,
    .on_error = on_leg_error,
    .on_drain = on_leg_drain,
    .on_shutdown = on_leg_shutdown,
    .on_close = on_leg_close,
};

static void on_timer(uv_timer_t *t)
{
    gw_data *d = t->data;
    if (data_released(d)) {
        data_close_listener(d, d->backend_listener); /* hand_over: the server never came */
        if (d->client)
            gw_conn_close(d->client);
        if (d->backend && d->reset_backend) {
            gw_conn_reset(d->backend); /* its close counts the reset done */
            uv_timer_start(d->timer, on_timer, LINGER_MS, 0);
        } else if (d->backend) {
            gw_conn_close(d->backend);
        }
        if (d->pp_conn)
            gw_conn_close(d->pp_conn);
        return;
    }
    uint64_t now = uv_now(d->loop);
    if (d->state == DS_ARMED || d->state == DS_STARTED) {
        if (now - d->last_progress < d->connect_timeout_ms)
            return;
        gw_metric_data_refused(GW_M_REFUSED_TIMEOUT);
        if (d->state == DS_STARTED) {
            data_fail(d, GW_DATA_CLIENT_FAILED, "data connection timeout");
        } else {
            GW_LOG_INFO(d->sid, "event=data_listener_timeout");
            stop_shared_wait(d);
            if (d->pp_conn)
                gw_conn_close(d->pp_conn);
            data_close_listener(d, d->client_listener);
            data_close_listener(d, d->backend_listener);
            if (d->backend)
                gw_conn_close(d->backend); /* the early passive connection, unused */
        }
        return;
    }
    if (now - d->last_progress >= d->data_timeout_ms)
        data_fail(d, GW_DATA_TIMEOUT, "data timeout");
}

gw_data *gw_data_new(uv_loop_t *loop, uint64_t sid, const gw_data_limits *lim, gw_data_done_cb done,
                     void *owner)
{
    gw_data *d = calloc(1, sizeof *d);
    uv_timer_t *t = malloc(sizeof *t);
    if (!d || !t) {
        free(d);
        free(t);
        return NULL;
    }
    uv_timer_init(loop, t);
    t->data = d;
    live_add(d);
    d->done = done;
    d->owner = owner;
    d->loop = loop;
    d->sid = sid;
    d->timer = t;
    d->connect_timeout_ms = lim->connect_timeout_ms;
    d->data_timeout_ms = lim->data_timeout_ms;
    d->splice_mode = lim->splice;
    d->client_gone = lim->client_gone;
    d->rate = rate_new(d, lim);
    d->last_progress = uv_now(d->loop);
    uv_timer_start(t, on_timer, 1000, 1000);
    return d;
}

int gw_data_client_resumed(const gw_data *d)
{
    return d->client_resumed;
}

void gw_data_client_active(gw_data *d, const gw_addr *to, const gw_addr *from)
{
    d->client_active = true;
    d->client_to = *to;
    d->client_from = *from;
}

static gw_conn *connect_leg(gw_data *d, bool client, const gw_addr *to, const gw_addr *from);

int gw_data_backend_passive(gw_data *d, const gw_addr *to)
{
    d->backend_passive = true;
    d->backend = connect_leg(d, false, to, NULL);
    return d->backend ? 0 : -1;
}

/* Open an outgoing leg; `from` with a port binds the source (989/20 by convention). */
static gw_conn *connect_leg(gw_data *d, bool client, const gw_addr *to, const gw_addr *from)
{
    gw_conn *c = gw_conn_new(d->loop, client ? &data_client_leg_ops : &data_backend_leg_ops, d,
                             d->sid, client ? "client-data" : "backend-data");
    if (!c)
        return NULL;
    if (from && from->port) {
        struct sockaddr_storage ss;
        gw_addr_to_sockaddr(from, &ss);
        int r = uv_tcp_bind(&c->tcp, (struct sockaddr *)&ss, 0);
        if (r != 0) /* a low port needs the privilege we may have dropped: use any port */
            GW_LOG_WARN(d->sid, "event=active_source_port_failed port=%u reason=\"%s\"", from->port,
                        uv_strerror(r));
    }
    int r = gw_conn_connect(c, to);
    if (r != 0) {
        d->strays++; /* not a leg yet: on_leg_close counts it down */
        gw_conn_close(c);
        return NULL;
    }
    return c;
}

void gw_data_start(gw_data *d, bool upload, const gw_data_tls *tls)
{
    set_state(d, DS_STARTED);
    d->started = true;
    d->upload = upload;
    d->tls_ctx = tls->client_ctx;
    d->reuse_required = tls->reuse_required;
    d->strict_eof = tls->strict_eof;
    d->reuse_exempt = tls->reuse_exempt;
    d->has_cert = tls->cert_sha256 != NULL;
    if (d->has_cert)
        memcpy(d->cert_sha256, tls->cert_sha256, sizeof d->cert_sha256);
    d->backend_engine = tls->backend_engine;
    if (tls->tag)
        memcpy(d->tag, tls->tag, GW_TLS_TAG_LEN);
    d->last_progress = uv_now(d->loop);
    if (d->backend_passive && !d->backend) {
        data_fail(d, GW_DATA_BACKEND_FAILED, "connect failed");
        return;
    }
    if (d->backend && (d->legs & LEG_BACKEND_CONNECTED))
        data_start_backend_leg(d); /* else on_leg_connect starts it */
    /* The shared port hands a connection over only after its ClientHello, which ftplib
     * sends only after a 1yz: on a deferred upload the 150 cannot wait for the TCP leg. */
    if (d->defer_backend && d->tls_ctx && d->shared_id && !d->client)
        d->leg_cb(d->owner, GW_DATA_CLIENT_CONNECTED);
    if (d->client_active) {
        d->client = connect_leg(d, true, &d->client_to, &d->client_from);
        if (!d->client)
            data_fail(d, GW_DATA_CLIENT_FAILED, "connect failed");
    } else if (d->client) {
        data_start_client_leg(d);
    }
}

void gw_data_defer_backend(gw_data *d, gw_data_leg_cb cb)
{
    d->defer_backend = cb != NULL;
    d->leg_cb = cb;
}

void gw_data_backend_go(gw_data *d)
{
    if (!d->defer_backend || d->state != DS_STARTED)
        return;
    d->defer_backend = false;
    d->last_progress = uv_now(d->loop); /* the backend leg gets its own connect time */
    if (d->backend && (d->legs & LEG_BACKEND_CONNECTED))
        data_start_backend_leg(d); /* else on_leg_connect or the accept starts it */
}

bool gw_data_server_ends(const gw_data *d)
{
    bool listening =
        d->backend_listener && !uv_is_closing((const uv_handle_t *)d->backend_listener);
    return (d->legs & LEG_BACKEND_CONNECTED) || (!d->upload && listening);
}

bool gw_data_usable(const gw_data *d)
{
    bool client = d->client_active || d->client || d->shared_id ||
                  (d->client_listener && !uv_is_closing((const uv_handle_t *)d->client_listener));
    bool backend =
        d->backend_passive || d->backend ||
        (d->backend_listener && !uv_is_closing((const uv_handle_t *)d->backend_listener));
    return client && backend;
}

/* The backend data leg was opened for a transfer and its TLS handshake has not finished.
 * Cutting it now would fail the server's handshake, and vsftpd (among others) ends the
 * whole session for that: it is completed first, then reset (under LINGER_MS). */
static bool backend_handshake_due(const gw_data *d)
{
    const gw_conn *b = d->backend;
    return d->state != DS_ARMED && !d->defer_backend && b && !(d->legs & LEG_BACKEND_UP) &&
           (d->backend_engine || (b->tls && !gw_tls_handshake_done(b->tls)));
}

/* SO_LINGER 0: whoever closes the socket (a timer, the worker's wind-down, the process's
 * exit), the peer gets a reset, not a FIN. */
static void reset_on_close(gw_conn *c)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    int fd = gw_conn_fd(c);
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0)
        GW_LOG_DEBUG(0, "event=so_linger_failed");
}

/* A download given up before any byte moved (the client's leg failed): the server may
 * hold the transfer queued until its data connection comes, and pyftpdlib keeps such a
 * transfer even across ABOR, to send it on the next data connection. So the server gets
 * its data connection (accepted, or the early passive one kept), ended by a FIN of ours:
 * it ends the transfer there itself, with exactly one final reply (PROTOCOL.md §5, "One
 * reply per command"). A TLS leg completes its handshake first and is then reset. */
void data_hand_over_backend(gw_data *d)
{
    gw_conn *b = d->backend;
    if (d->backend_engine) {
        d->defer_backend = false;
        data_start_backend_leg(d); /* on_backend_data_handshake resets it once done */
        return;
    }
    if (b->tls) {
        gw_conn_reset(b);
        return;
    }
    GW_LOG_DEBUG(d->sid, "event=backend_data_handed_over note=\"FIN: the server ends it\"");
    gw_conn_shutdown(b);
    gw_conn_resume(b);
    gw_conn_start_read(b); /* whatever it sends is dropped until it closes or LINGER_MS */
}

void gw_data_release(gw_data *d, bool ok)
{
    if (data_released(d))
        return;
    bool finished = d->state == DS_DONE;
    bool complete_backend = backend_handshake_due(d); /* judged before the state changes */
    d->hand_over = !ok && d->started && !d->upload && !d->streamed && !complete_backend;
    /* An upload the server had its command for (a deferred one that was never sent owes
     * the server nothing: its leg is simply reset). */
    bool upload_sent = d->upload && d->state != DS_ARMED && !d->defer_backend;
    set_state(d, finished ? DS_RELEASED : DS_ABANDONED);
    d->done = NULL;
    stop_splice(d);
    rate_detach(d);
    stop_shared_wait(d);
    data_close_listener(d, d->client_listener);
    if (!d->hand_over)
        data_close_listener(d, d->backend_listener); /* else kept for the server's connect */
    if (d->pp_conn)
        gw_conn_reset(d->pp_conn);
    uv_timer_start(d->timer, on_timer, LINGER_MS, 0);
    if (ok && finished) {
        linger_or_close(d->client);
        linger_or_close(d->backend);
    } else {
        /* A leg we already shut down cleanly on purpose lingers; the rest are reset. */
        if (d->client)
            d->client->shut ? linger_or_close(d->client) : gw_conn_reset(d->client);
        if (d->backend && complete_backend) {
            GW_LOG_DEBUG(d->sid, "event=backend_data_completing");
        } else if (d->backend && upload_sent && !d->backend->shut) {
            /* A cut upload: the server must record a failure. Its leg is reset (a FIN or
             * close_notify would be a clean end), but only after the ABOR or the control
             * connection's close that the owner sends now: a server that sees the reset
             * first may count the upload complete (pyftpdlib does). */
            gw_conn_pause(d->backend);
            reset_on_close(d->backend); /* also if the process ends first */
            d->reset_backend = true;
            resets_pending++;
            uv_timer_start(d->timer, on_timer, ABORT_RESET_MS, 0);
        } else if (d->backend && d->hand_over && (d->legs & LEG_BACKEND_CONNECTED)) {
            data_hand_over_backend(d);
        } else if (d->backend) {
            gw_conn_reset(d->backend);
        }
    }
    data_maybe_free(d);
}

void gw_data_cut_all(uv_loop_t *loop)
{
    gw_data *mine[64];
    int n = 0;
    pthread_mutex_lock(&live_lock);
    for (gw_data *d = live_head; d && n < 64; d = d->live_next)
        if (d->loop == loop && d->state != DS_FREEING)
            mine[n++] = d; /* freed only by this loop's callbacks: safe after the unlock */
    pthread_mutex_unlock(&live_lock);
    for (int i = 0; i < n; i++) {
        gw_data *d = mine[i];
        gw_data_release(d, false);
        d->hand_over = false;
        on_timer(d->timer); /* released: closes every leg and listener left */
    }
}

uint64_t gw_data_progress(const gw_data *d)
{
    const gw_conn *dst = d->upload ? d->backend : d->client;
    return dst ? dst->payload_out : 0;
}
