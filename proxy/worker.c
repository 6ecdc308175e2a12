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
    pthread_mutex_t lock; /* guards done and the mailbox */
    _Atomic bool done;    /* its loop has ended: nothing may be posted to it any more */
    gw_config *reload_cfg;
    int stop_requests;
    int stops_seen; /* the worker's own count of stop requests handled */
} gw_worker;

static gw_worker *workers;
static int n_workers;
static gw_shared shared = {.lock = PTHREAD_MUTEX_INITIALIZER};

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
        /* Released data channels may linger for their peers' close (a server ending a
         * handed-over transfer): closed here with their callbacks, so that they are freed
         * (wind_down would close their handles without). Other workers' count too. */
        uint64_t now = uv_now(w->loop);
        if (!w->idle_since)
            w->idle_since = now;
        if (gw_data_live() > 0 && now - w->idle_since < DATA_LINGER_WAIT_MS) {
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

static void apply_reload(gw_worker *w, gw_config *cfg)
{
    char err[1024];
    if (w->srv.stopping) {
        drop_cfg(cfg);
        return;
    }
    if (cfg->workers != w->srv.gen->cfg.workers && w->index == 0)
        GW_LOG_WARN(0,
                    "event=reload_note note=\"workers is read at start: %d stay until a "
                    "restart\"",
                    n_workers);
    if (gw_server_reload(&w->srv, cfg, err, sizeof err) != 0) {
        GW_LOG_ERR(0,
                   "event=reload_failed worker=%d reason=\"%s\" note=\"old configuration "
                   "stays\"",
                   w->index, err);
        if (w->index == 0)
            gw_metric_reload(false);
    } else {
        if (w->index == 0) {
            gw_log_set_level(w->srv.gen->cfg.log_level);
            gw_log_set_json(w->srv.gen->cfg.log_json);
            /* Once per reload: worker 0 runs on the main loop, where the probes run. */
            if (shared.health && gw_health_configure(shared.health, &w->srv.gen->cfg) != 0)
                GW_LOG_ERR(0, "event=health_reload_failed reason=\"out of memory\"");
            gw_admin_config(&w->srv.gen->cfg);
            gw_metric_reload(true);
        }
        GW_LOG_INFO(0, "event=reloaded worker=%d sessions=%d", w->index, w->srv.sessions);
    }
    drop_cfg(cfg);
}

static void on_wake(uv_async_t *a)
{
    gw_worker *w = a->data;
    pthread_mutex_lock(&w->lock);
    gw_config *cfg = w->reload_cfg;
    w->reload_cfg = NULL;
    int stops = w->stop_requests;
    pthread_mutex_unlock(&w->lock);
    if (cfg)
        apply_reload(w, cfg);
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

static void post(gw_worker *w, gw_config *cfg, bool stop)
{
    pthread_mutex_lock(&w->lock);
    if (w->done) {
        drop_cfg(cfg);
    } else {
        if (cfg) {
            drop_cfg(w->reload_cfg); /* a newer reload replaces one not yet applied */
            w->reload_cfg = cfg;
        }
        if (stop)
            w->stop_requests++;
        uv_async_send(&w->wake); /* under the lock: its loop cannot close meanwhile */
    }
    pthread_mutex_unlock(&w->lock);
}

void gw_workers_reload(const gw_config *cfg)
{
    for (int i = 0; i < n_workers; i++) {
        gw_config *copy = malloc(sizeof *copy);
        if (!copy || gw_config_copy(copy, cfg) != 0) {
            free(copy);
            GW_LOG_ERR(0, "event=reload_failed worker=%d reason=\"out of memory\"", i);
            continue;
        }
        post(&workers[i], copy, false);
    }
}

void gw_workers_stop(void)
{
    for (int i = 0; i < n_workers; i++)
        post(&workers[i], NULL, true);
}

void gw_workers_finish(void)
{
    if (n_workers == 0)
        return;
    mark_done(&workers[0]);
    wind_down(&workers[0]);
    for (int i = 1; i < n_workers; i++)
        if (workers[i].thread_started)
            uv_thread_join(&workers[i].thread);
    free_workers(n_workers);
}
