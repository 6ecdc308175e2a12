/* Workers: see worker.h. Everything a worker owns (loop, server, sessions, handles) is
 * touched only by its own thread; the main thread writes only the mailbox, under its lock. */
#include "worker.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bans.h"
#include "data.h"
#include "admin.h"
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
    uv_async_t wake;
    uv_timer_t stop_timer;
    uint64_t stop_deadline;
    uint64_t idle_since; /* stopping: when the last session ended (0: not yet) */
    uv_thread_t thread;
    bool thread_started;
    pthread_mutex_t lock; /* guards done, the mailbox and the reply */
    _Atomic bool done;    /* its loop has ended: nothing may be posted to it any more */
    /* mailbox: a reload to prepare, then commit or abort, each tagged with its round */
    gw_config *reload_cfg;
    unsigned prepare_round;
    enum { RL_NONE, RL_COMMIT, RL_ABORT } finish;
    unsigned finish_round;
    int stop_requests;
    int stops_seen; /* the worker's own count of stop requests handled */
    /* reply to the coordinator: the last round answered and how */
    unsigned reply_round;
    bool reply_ok;
    gw_cfg_where reply_where;
    char reply_err[512];
} gw_worker;

static gw_worker *workers;
static int n_workers;
static gw_shared shared = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The reload coordinator, on the main thread: a first round prepares on every worker, a
 * second commits (all prepared) or aborts (any failed); the caller hears once every worker
 * has answered both. Each round has a number of its own (a reply counts for that round
 * only); the workers answer through rl.async. */
static struct {
    pthread_mutex_t lock; /* guards async_open (workers poke from their threads) */
    uv_async_t async;
    bool async_open;
    bool active;
    unsigned round; /* of the workers' replies expected now */
    bool second;    /* the round is the second one (commit or abort) */
    bool commit;    /* it commits */
    const gw_config *cfg;
    gw_reload_done done;
    void *arg;
    char err[1024];
} rl = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void on_reload_reply(uv_async_t *a);

static void rl_poke(void)
{
    pthread_mutex_lock(&rl.lock);
    if (rl.async_open)
        uv_async_send(&rl.async);
    pthread_mutex_unlock(&rl.lock);
}

static void reply(gw_worker *w, unsigned round, bool ok, const gw_cfg_where *where, const char *err)
{
    pthread_mutex_lock(&w->lock);
    w->reply_round = round;
    w->reply_ok = ok;
    w->reply_where = where ? *where : (gw_cfg_where){NULL, 0, NULL};
    snprintf(w->reply_err, sizeof w->reply_err, "%s", err ? err : "");
    pthread_mutex_unlock(&w->lock);
    rl_poke();
}

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
        GW_LOG_INFO(0, "event=shutdown_grace_over worker=%d sessions=%d", w->index,
                    w->srv.sessions);
        gw_server_close_sessions(&w->srv, "gateway shutting down");
        w->stop_deadline = UINT64_MAX;
    }
}

static void begin_stop(gw_worker *w)
{
    if (w->srv.stopping) {
        GW_LOG_INFO(0, "event=stop_now worker=%d", w->index);
        gw_server_close_sessions(&w->srv, "gateway stopped");
        return;
    }
    w->srv.stopping = true;
    GW_LOG_INFO(0, "event=stopping worker=%d sessions=%d grace=%d", w->index, w->srv.sessions,
                w->srv.gen->cfg.shutdown_grace);
    gw_server_stop_listening(&w->srv);
    w->stop_deadline = uv_now(w->loop) + (uint64_t)w->srv.gen->cfg.shutdown_grace * 1000;
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
static void prepare_reload(gw_worker *w, gw_config *cfg, unsigned round)
{
    char err[512];
    gw_cfg_where where = {NULL, 0, NULL};
    bool ok = false;
    if (w->srv.stopping) {
        snprintf(err, sizeof err, "the gateway is stopping");
    } else if (gw_server_reload_prepare(&w->srv, cfg, &where, err, sizeof err) != 0) {
        GW_LOG_INFO(0, "event=reload_prepare_failed worker=%d reason=\"%s\"", w->index, err);
    } else {
        if (cfg->workers != w->srv.gen->cfg.workers && w->index == 0)
            GW_LOG_WARN(0,
                        "event=reload_note note=\"workers is read at start: %d stay until a "
                        "restart\"",
                        n_workers);
        ok = true;
    }
    drop_cfg(cfg);
    reply(w, round, ok, &where, ok ? NULL : err);
}

/* Round two: switch (cannot fail) or drop what round one prepared. */
static void finish_reload(gw_worker *w, bool commit, unsigned round)
{
    bool staged = w->srv.staged != NULL;
    if (commit && staged && !w->srv.stopping) {
        gw_server_reload_commit(&w->srv);
        GW_LOG_INFO(0, "event=reloaded worker=%d sessions=%d", w->index, w->srv.sessions);
        reply(w, round, true, NULL, NULL);
        return;
    }
    gw_server_reload_abort(&w->srv);
    reply(w, round, !commit, NULL, commit ? "the gateway is stopping" : NULL);
}

static void on_wake(uv_async_t *a)
{
    gw_worker *w = a->data;
    pthread_mutex_lock(&w->lock);
    gw_config *cfg = w->reload_cfg;
    w->reload_cfg = NULL;
    unsigned prepare_round = w->prepare_round, finish_round = w->finish_round;
    int finish = w->finish;
    w->finish = RL_NONE;
    int stops = w->stop_requests;
    pthread_mutex_unlock(&w->lock);
    if (cfg)
        prepare_reload(w, cfg, prepare_round);
    if (finish != RL_NONE)
        finish_reload(w, finish == RL_COMMIT, finish_round);
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

static void mark_done(gw_worker *w)
{
    gw_admin_detach(w->index);
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_mutex_unlock(&w->lock);
    gw_shport_worker_done(w->index);
    rl_poke(); /* a reload waiting for it counts it as failed */
}

static void run_worker(void *arg)
{
    gw_worker *w = arg;
    uv_run(w->loop, UV_RUN_DEFAULT);
    mark_done(w); /* before its async handle closes */
    wind_down(w);
    uv_loop_close(w->loop);
}

static void free_workers(int n)
{
    for (int i = 0; i < n; i++) {
        gw_server_free(&workers[i].srv);
        pthread_mutex_destroy(&workers[i].lock);
        drop_cfg(workers[i].reload_cfg);
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
        pthread_mutex_init(&w->lock, NULL);
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
        uv_async_init(w->loop, &w->wake, on_wake);
        w->wake.data = w;
        if (gw_shport_worker_init(i, w->loop) != 0)
            GW_LOG_ERR(0, "event=shared_port_inbox_failed worker=%d", i);
        uv_timer_init(w->loop, &w->stop_timer);
        w->stop_timer.data = w;
        gw_admin_attach(i, w->loop, &w->srv);
    }
    uv_async_init(main_loop, &rl.async, on_reload_reply);
    uv_unref((uv_handle_t *)&rl.async);
    pthread_mutex_lock(&rl.lock);
    rl.async_open = true;
    pthread_mutex_unlock(&rl.lock);
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

/* Into w's mailbox: a configuration to prepare, a finish command, or a stop. */
static void post(gw_worker *w, gw_config *cfg, int finish, bool stop)
{
    pthread_mutex_lock(&w->lock);
    if (w->done) {
        drop_cfg(cfg);
    } else {
        if (cfg) {
            drop_cfg(w->reload_cfg); /* the coordinator never has two in flight */
            w->reload_cfg = cfg;
            w->prepare_round = rl.round;
        }
        if (finish != RL_NONE) {
            w->finish = finish;
            w->finish_round = rl.round;
        }
        if (stop)
            w->stop_requests++;
        uv_async_send(&w->wake); /* under the lock: its loop cannot close meanwhile */
    }
    pthread_mutex_unlock(&w->lock);
}

static void start_second(bool commit)
{
    rl.second = true;
    rl.commit = commit;
    rl.round++;
    for (int i = 0; i < n_workers; i++)
        post(&workers[i], NULL, commit ? RL_COMMIT : RL_ABORT, false);
}

/* Main thread, on rl.async: once every worker answered the round (a worker whose loop has
 * ended counts as failed), start the second round or report. */
static void on_reload_reply(uv_async_t *a)
{
    if (!rl.active)
        return;
    bool all_ok = true;
    for (int i = 0; i < n_workers; i++) {
        gw_worker *w = &workers[i];
        pthread_mutex_lock(&w->lock);
        bool answered = w->reply_round == rl.round, ok = answered && w->reply_ok;
        bool done = w->done;
        if (!ok && (answered || done) && !rl.err[0]) {
            if (answered)
                gw_cfg_where_format(rl.cfg, &w->reply_where, w->reply_err, rl.err, sizeof rl.err);
            else
                snprintf(rl.err, sizeof rl.err, "worker %d has stopped", i);
        }
        pthread_mutex_unlock(&w->lock);
        if (!answered && !done)
            return; /* wait for it */
        all_ok &= ok;
    }
    if (!rl.second) { /* prepared everywhere, or not: commit or abort everywhere */
        start_second(all_ok);
        on_reload_reply(a); /* in case every worker has ended meanwhile */
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
    for (int i = 0; i < n_workers; i++) {
        gw_config *copy = malloc(sizeof *copy);
        if (!copy || gw_config_copy(copy, cfg) != 0) {
            free(copy);
            snprintf(rl.err, sizeof rl.err, "out of memory");
            continue;
        }
        post(&workers[i], copy, RL_NONE, false);
    }
    if (rl.err[0]) /* a worker got nothing to prepare: abort at once, everywhere */
        start_second(false);
    return 0;
}

void gw_workers_stop(void)
{
    for (int i = 0; i < n_workers; i++)
        post(&workers[i], NULL, RL_NONE, true);
}

void gw_workers_finish(void)
{
    if (n_workers == 0)
        return;
    mark_done(&workers[0]);
    pthread_mutex_lock(&rl.lock);
    rl.async_open = false; /* wind_down closes it with the loop's other handles */
    pthread_mutex_unlock(&rl.lock);
    wind_down(&workers[0]);
    for (int i = 1; i < n_workers; i++)
        if (workers[i].thread_started)
            uv_thread_join(&workers[i].thread);
    free_workers(n_workers);
}
