/* Workers: see worker.h. Everything a worker owns (loop, server, sessions, handles) is
 * touched only by its own thread; other threads reach it only through its mailbox. */
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bans.h"
#include "data.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "shared_port.h"

#define MAX_WORKERS 1024
#define DATA_LINGER_WAIT_MS 2000 /* most linger far less than data.c's LINGER_MS (5 s) */
#define RESET_WAIT_MS 1000       /* cut uploads' resets are due 300 ms after their release */

typedef struct gw_worker {
    int index;
    uv_loop_t *loop;
    uv_loop_t own_loop; /* workers other than 0 */
    gw_server srv;
    gw_mailbox mailbox;
    bool mailbox_ready;
    uv_timer_t stop_timer;
    uint64_t stop_deadline;
    uint64_t idle_since; /* stopping: when the last session ended (0: not yet) */
    uv_thread_t thread;
    bool thread_started;
    _Atomic bool done; /* its loop has ended (its mailbox is closed) */
    /* Stops coalesce into one message: the requests are counted, the message is posted
     * when it is not queued already, and the worker handles each request once. */
    gw_mail stop_mail;
    _Atomic bool stop_posted;
    _Atomic int stop_requests;
    int stops_seen; /* the worker's own count of stop requests handled */
    /* the coordinator's (main thread): this worker's answer to the current round */
    unsigned answered_round;
    bool answer_ok;
    gw_cfg_where answer_where;
    char answer_err[512];
} gw_worker;

static gw_worker *workers;
static _Atomic int n_workers; /* read by other threads (gw_workers_count) */
/* Other threads post to workers (gw_workers_post) until free_workers frees them. */
static pthread_mutex_t post_lock = PTHREAD_MUTEX_INITIALIZER;
static int n_postable;
static gw_shared shared = {.lock = PTHREAD_MUTEX_INITIALIZER};
/* The stop is a hitless upgrade's hand-over (gw_workers_hand_over): upgrade_grace instead of
 * shutdown_grace, and the shared passive ports close too (the new process accepts there). */
static _Atomic bool handing_over;
static _Atomic int handover_left;   /* workers still listening */
static void (*handover_done)(void); /* called on the main loop once none is */
static gw_mail handover_mail;

/* The reload coordinator, on the main thread: a first round prepares on every worker, a
 * second commits (all prepared) or aborts (any failed); the caller hears once every worker
 * has answered both. Each round has a number of its own (an answer counts for that round
 * only). A round's message goes to the worker's mailbox and comes back, answered, through
 * worker 0's (the main loop's); one that cannot run (the worker's loop has ended) answers
 * "worker N has stopped". */
static struct {
    bool active;
    unsigned round; /* of the workers' replies expected now */
    bool second;    /* the round is the second one (commit or abort) */
    bool commit;    /* it commits */
    const gw_config *cfg;
    gw_reload_done done;
    void *arg;
    char err[1024];
} rl;

/* One round's message to one worker, and its answer on the way back. */
typedef struct rl_msg {
    gw_mail mail;
    gw_worker *w;
    unsigned round;
    enum { RL_PREPARE, RL_COMMIT, RL_ABORT } what;
    gw_config *cfg; /* RL_PREPARE: a deep copy, freed by the worker */
    bool ok;
    gw_cfg_where where;
    char err[512];
} rl_msg;

static void on_reload_answer(gw_mail *m, bool cancelled);

int gw_workers_count(void)
{
    return n_workers;
}

static bool others_done(void)
{
    for (int i = 1; i < n_workers; i++)
        if (!workers[i].done)
            return false;
    return true;
}

static void on_stop_tick(uv_timer_t *t)
{
    gw_worker *w = t->data;
    if (w->srv.sessions == 0) {
        uint64_t now = uv_now(w->loop);
        if (!w->idle_since)
            w->idle_since = now;
        /* Cut uploads still owe their servers a reset (data.c, after the control close
         * that ended their session): their timers send it, up to RESET_WAIT_MS. */
        if (gw_data_resets_pending() > 0 && now - w->idle_since < RESET_WAIT_MS)
            return;
        /* Released data channels may linger for their peers' close (a server ending a
         * handed-over transfer): closed here with their callbacks, so that they are freed
         * (wind_down would close their handles without). Other workers' count too. */
        if (gw_data_live() > 0 && now - w->idle_since < RESET_WAIT_MS + DATA_LINGER_WAIT_MS) {
            gw_data_cut_all(w->loop);
            return;
        }
        /* Worker 0 keeps the main loop, and with it the signal handlers (a second SIGTERM
         * closes every session at once), until every other worker is done. */
        if (w->index != 0 || others_done())
            uv_stop(w->loop);
        return;
    }
    if (uv_now(w->loop) >= w->stop_deadline) {
        bool up = atomic_load(&handing_over);
        GW_LOG_INFO(0, "event=%s_grace_over worker=%d sessions=%d", up ? "upgrade" : "shutdown",
                    w->index, w->srv.sessions);
        gw_server_close_sessions(&w->srv, up ? "gateway upgraded, please reconnect"
                                             : "gateway shutting down");
        w->stop_deadline = UINT64_MAX;
    }
}

static void on_handover_mail(gw_mail *m, bool cancelled)
{
    if (handover_done)
        handover_done();
}

/* This worker accepts no more: the last one tells the main loop. */
static void handed_over(gw_worker *w)
{
    if (atomic_fetch_sub(&handover_left, 1) == 1 &&
        gw_mailbox_post(&workers[0].mailbox, &handover_mail, on_handover_mail) != 0 &&
        handover_done)
        handover_done(); /* the main loop has ended: nobody accepts anyway */
}

static void begin_stop(gw_worker *w)
{
    if (w->srv.stopping) {
        GW_LOG_INFO(0, "event=stop_now worker=%d", w->index);
        gw_server_close_sessions(&w->srv, "gateway stopped");
        return;
    }
    w->srv.stopping = true;
    bool up = atomic_load(&handing_over);
    int grace = up ? w->srv.gen->cfg.upgrade_grace : w->srv.gen->cfg.shutdown_grace;
    GW_LOG_INFO(0, "event=%s worker=%d sessions=%d grace=%d", up ? "handed_over" : "stopping",
                w->index, w->srv.sessions, grace);
    gw_server_stop_listening(&w->srv);
    if (up) { /* the new process has these sockets: a data connection now belongs to it */
        gw_shport_close(w->srv.shport);
        handed_over(w);
    }
    w->stop_deadline = up && grace == 0 ? UINT64_MAX : uv_now(w->loop) + (uint64_t)grace * 1000;
    uv_timer_start(&w->stop_timer, on_stop_tick, 0, 100);
}

/* A configuration posted to a worker (gw_workers_reload's deep copy). */
static void drop_cfg(gw_config *cfg)
{
    if (cfg)
        gw_config_free(cfg);
    free(cfg);
}

/* Round one: everything that can fail, nothing switched yet. */
static void prepare_reload(gw_worker *w, rl_msg *m)
{
    m->ok = false;
    if (w->srv.stopping) {
        snprintf(m->err, sizeof m->err, "the gateway is stopping");
    } else if (gw_server_reload_prepare(&w->srv, m->cfg, &m->where, m->err, sizeof m->err) != 0) {
        GW_LOG_INFO(0, "event=reload_prepare_failed worker=%d reason=\"%s\"", w->index, m->err);
    } else {
        if (m->cfg->workers != w->srv.gen->cfg.workers && w->index == 0)
            GW_LOG_WARN(0,
                        "event=reload_note note=\"workers is read at start: %d stay until a "
                        "restart\"",
                        n_workers);
        m->ok = true;
    }
}

/* Round two: switch (cannot fail) or drop what round one prepared. */
static void finish_reload(gw_worker *w, rl_msg *m)
{
    bool commit = m->what == RL_COMMIT;
    if (commit && w->srv.staged && !w->srv.stopping) {
        gw_server_reload_commit(&w->srv);
        GW_LOG_INFO(0, "event=reloaded worker=%d sessions=%d", w->index, w->srv.sessions);
        m->ok = true;
        return;
    }
    gw_server_reload_abort(&w->srv);
    m->ok = !commit;
    if (commit)
        snprintf(m->err, sizeof m->err, "the gateway is stopping");
}

/* On the worker's loop: do the round's work and send the answer to the coordinator. */
static void on_reload_mail(gw_mail *mail, bool cancelled)
{
    rl_msg *m = GW_MAIL_OWNER(mail, rl_msg, mail);
    if (cancelled) {
        m->ok = false;
        snprintf(m->err, sizeof m->err, "worker %d has stopped", m->w->index);
    } else if (m->what == RL_PREPARE) {
        prepare_reload(m->w, m);
    } else {
        finish_reload(m->w, m);
    }
    drop_cfg(m->cfg);
    m->cfg = NULL;
    if (gw_mailbox_post(&workers[0].mailbox, &m->mail, on_reload_answer) != 0)
        free(m); /* the main loop has ended: nobody waits */
}

static void on_stop_mail(gw_mail *mail, bool cancelled)
{
    gw_worker *w = GW_MAIL_OWNER(mail, gw_worker, stop_mail);
    atomic_store(&w->stop_posted, false); /* before the count is read: no request is missed */
    if (cancelled)
        return;
    int stops = atomic_load(&w->stop_requests);
    while (w->stops_seen < stops) {
        w->stops_seen++;
        begin_stop(w);
    }
}

static void close_any(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* The loop returned (its sessions are gone): close what is left and let it finish. */
static void wind_down(gw_worker *w)
{
    gw_server_close_sessions(&w->srv, "gateway stopped");
    uv_walk(w->loop, close_any, NULL);
    uv_run(w->loop, UV_RUN_DEFAULT);
}

/* What is still posted to it runs as cancelled (mailbox.h): a reload counts the worker as
 * failed, a snapshot stops waiting for it, a shared-port hand-off is closed. */
static void mark_done(gw_worker *w)
{
    w->done = true;
    if (w->mailbox_ready)
        gw_mailbox_close(&w->mailbox);
}

static void run_worker(void *arg)
{
    gw_worker *w = arg;
    uv_run(w->loop, UV_RUN_DEFAULT);
    mark_done(w); /* its mailbox first: what is queued there runs (cancelled) now */
    wind_down(w);
    uv_loop_close(w->loop);
}

static void free_workers(int n)
{
    pthread_mutex_lock(&post_lock);
    n_postable = 0;
    pthread_mutex_unlock(&post_lock);
    for (int i = 0; i < n; i++) {
        gw_server_free(&workers[i].srv);
        if (workers[i].mailbox_ready)
            gw_mailbox_destroy(&workers[i].mailbox);
    }
    free(workers);
    workers = NULL;
    n_workers = 0;
    rl.active = false;
    gw_ip_table_free(shared.per_ip);
    shared.per_ip = NULL;
    gw_live_table_free(shared.live);
    shared.live = NULL;
    gw_pasv_pool_free_all();
    gw_bans_free_all();
    gw_shport_free_all();
    shared.health = NULL;
}

int gw_workers_start(int n, uv_loop_t *main_loop, const gw_config *cfg, gw_health *health,
                     char *err, size_t cap)
{
    shared.health = health;
    if (n <= 0)
        n = (int)uv_available_parallelism();
    if (n > MAX_WORKERS)
        n = MAX_WORKERS;
    shared.per_ip = gw_ip_table_new();
    shared.live = gw_live_table_new();
    workers = calloc((size_t)n, sizeof *workers);
    if (!shared.per_ip || !shared.live || !workers) {
        snprintf(err, cap, "out of memory");
        free(workers);
        workers = NULL;
        free_workers(0);
        return -1;
    }
    n_workers = n;
    for (int i = 0; i < n; i++) {
        gw_worker *w = &workers[i];
        w->index = i;
        w->loop = main_loop;
        if (i > 0) {
            w->loop = &w->own_loop;
            if (uv_loop_init(w->loop) != 0) {
                snprintf(err, cap, "cannot create the event loop of worker %d", i);
                w->loop = NULL;
            }
        }
        w->srv.shared = &shared;
        w->srv.worker = i;
        w->srv.reuseport = n > 1;
        if (!w->loop || gw_server_start(&w->srv, w->loop, cfg, err, cap) != 0) {
            /* Undo: nothing may stay listening. */
            for (int j = 0; j <= i; j++) {
                if (!workers[j].loop)
                    continue;
                gw_server_stop_listening(&workers[j].srv);
                if (j > 0) {
                    uv_walk(workers[j].loop, close_any, NULL);
                    uv_run(workers[j].loop, UV_RUN_DEFAULT);
                    uv_loop_close(workers[j].loop);
                } else {
                    uv_run(main_loop, UV_RUN_NOWAIT);
                }
            }
            free_workers(i + 1);
            return -1;
        }
        if (gw_mailbox_init(&w->mailbox, w->loop) != 0)
            GW_LOG_ERR(0, "event=mailbox_failed worker=%d", i);
        w->mailbox_ready = true;
        uv_timer_init(w->loop, &w->stop_timer);
        w->stop_timer.data = w;
    }
    pthread_mutex_lock(&post_lock);
    n_postable = n;
    pthread_mutex_unlock(&post_lock);
    if (n > 1)
        GW_LOG_INFO(0, "event=workers count=%d note=\"listeners shared with SO_REUSEPORT\"", n);
    return 0;
}

int gw_workers_run(void)
{
    for (int i = 1; i < n_workers; i++) {
        if (uv_thread_create(&workers[i].thread, run_worker, &workers[i]) != 0) {
            for (int j = i; j < n_workers; j++)
                mark_done(&workers[j]); /* never run: nothing to wait for */
            return -1;
        }
        workers[i].thread_started = true;
    }
    return 0;
}

/* The coordinator's record of w's answer to the current round. */
static void answered(gw_worker *w, bool ok, const gw_cfg_where *where, const char *err)
{
    w->answered_round = rl.round;
    w->answer_ok = ok;
    w->answer_where = where ? *where : (gw_cfg_where){NULL, 0, NULL};
    snprintf(w->answer_err, sizeof w->answer_err, "%s", err ? err : "");
}

/* The round's message to w (cfg: RL_PREPARE's copy, the message's from here on). A
 * message that cannot go (no memory, or w's loop has ended) is answered at once: failed. */
static void send_round(gw_worker *w, int what, gw_config *cfg)
{
    rl_msg *m = calloc(1, sizeof *m);
    if (m) {
        *m = (rl_msg){.w = w, .round = rl.round, .what = what, .cfg = cfg};
        if (gw_mailbox_post(&w->mailbox, &m->mail, on_reload_mail) == 0)
            return;
    }
    char err[64] = "out of memory";
    if (m)
        snprintf(err, sizeof err, "worker %d has stopped", w->index);
    answered(w, false, NULL, err);
    drop_cfg(cfg);
    free(m);
}

static void start_second(bool commit)
{
    rl.second = true;
    rl.commit = commit;
    rl.round++;
    for (int i = 0; i < n_workers; i++)
        send_round(&workers[i], commit ? RL_COMMIT : RL_ABORT, NULL);
}

/* Main thread: once every worker answered the round, start the second round or report. */
static void round_progress(void)
{
    bool all_ok = true;
    for (int i = 0; i < n_workers; i++) {
        gw_worker *w = &workers[i];
        if (w->answered_round != rl.round)
            return; /* wait for it */
        if (!w->answer_ok && !rl.err[0])
            gw_cfg_where_format(rl.cfg, &w->answer_where, w->answer_err, rl.err, sizeof rl.err);
        all_ok &= w->answer_ok;
    }
    if (!rl.second) { /* prepared everywhere, or not: commit or abort everywhere */
        start_second(all_ok);
        round_progress(); /* in case every worker has ended meanwhile */
        return;
    }
    bool ok = rl.commit && all_ok;
    char err[sizeof rl.err];
    snprintf(err, sizeof err, "%s", ok ? "" : rl.err[0] ? rl.err : "the gateway is stopping");
    gw_reload_done done = rl.done;
    void *arg = rl.arg;
    rl.active = false;
    rl.cfg = NULL;
    rl.done = NULL;
    done(ok, err, arg); /* may start the next reload */
}

/* Main thread, a worker's answer (through worker 0's mailbox). */
static void on_reload_answer(gw_mail *mail, bool cancelled)
{
    rl_msg *m = GW_MAIL_OWNER(mail, rl_msg, mail);
    bool current = !cancelled && rl.active && m->round == rl.round;
    if (current)
        answered(m->w, m->ok, &m->where, m->err);
    free(m);
    if (current)
        round_progress();
}

int gw_workers_reload(const gw_config *cfg, gw_reload_done done, void *arg)
{
    if (rl.active || n_workers == 0)
        return -1;
    rl.active = true;
    rl.second = false;
    rl.round++;
    rl.cfg = cfg;
    rl.done = done;
    rl.arg = arg;
    rl.commit = false;
    rl.err[0] = 0;
    bool oom = false;
    for (int i = 0; i < n_workers; i++) {
        gw_config *copy = malloc(sizeof *copy);
        if (!copy || gw_config_copy(copy, cfg) != 0) {
            free(copy);
            snprintf(rl.err, sizeof rl.err, "out of memory");
            oom = true;
            continue;
        }
        send_round(&workers[i], RL_PREPARE, copy);
    }
    if (oom) /* a worker got nothing to prepare: abort at once, everywhere */
        start_second(false);
    return 0; /* worker 0 runs this loop: it answers later, so done is never called here */
}

int gw_workers_post(int i, gw_mail *m, gw_mail_fn fn)
{
    pthread_mutex_lock(&post_lock);
    int r = i >= 0 && i < n_postable ? gw_mailbox_post(&workers[i].mailbox, m, fn) : -1;
    pthread_mutex_unlock(&post_lock);
    return r;
}

gw_server *gw_workers_server(int i)
{
    return &workers[i].srv;
}

void gw_workers_stop(void)
{
    for (int i = 0; i < n_workers; i++) {
        gw_worker *w = &workers[i];
        atomic_fetch_add(&w->stop_requests, 1);
        if (!atomic_exchange(&w->stop_posted, true) &&
            gw_mailbox_post(&w->mailbox, &w->stop_mail, on_stop_mail) != 0)
            atomic_store(&w->stop_posted, false); /* its loop has ended */
    }
}

int gw_workers_each_listen_fd(void (*fn)(const char *kind, int fd, void *arg), void *arg)
{
    if (rl.active || n_workers == 0)
        return -1; /* a reload may be switching listeners on the workers' threads */
    for (int i = 0; i < n_workers; i++)
        gw_server_each_listen_fd(&workers[i].srv, fn, arg);
    return 0;
}

void gw_workers_hand_over(void (*done)(void))
{
    handover_done = done;
    atomic_store(&handover_left, n_workers);
    atomic_store(&handing_over, true);
    gw_workers_stop();
}

void gw_workers_finish(void)
{
    if (n_workers == 0)
        return;
    mark_done(&workers[0]); /* answers still on their way to the coordinator are dropped */
    wind_down(&workers[0]);
    for (int i = 1; i < n_workers; i++)
        if (workers[i].thread_started)
            uv_thread_join(&workers[i].thread);
    free_workers(n_workers);
}
