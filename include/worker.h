/* Workers ([global] workers): one event loop and one gw_server each. Worker 0 runs on the
 * main thread's loop, beside the signal handlers; the others on threads of their own. All
 * listen on every frontend address (SO_REUSEPORT when there are several) and share the
 * process-wide limits (server.h, gw_shared). Other threads reach a worker only through its
 * mailbox (mailbox.h): reload rounds and stops, the admin endpoint's snapshots, the shared
 * port's hand-offs. */
#ifndef GW_WORKER_H
#define GW_WORKER_H

#include <stdbool.h>
#include <uv.h>
#include "config.h"
#include "health.h"
#include "mailbox.h"
#include "server.h"

/* n workers (0 = one per available core) on cfg, every listener bound when it returns.
 * Worker 0 uses main_loop. health (may be NULL) is the process's backend health: every
 * generation points to it, and worker 0 reconfigures it after each successful reload.
 * 0, or -1 with a message (nothing is left listening). */
int gw_workers_start(int n, uv_loop_t *main_loop, const gw_config *cfg, gw_health *health,
                     char *err, size_t cap);
/* Start the other workers' threads (after the privileges are dropped). */
int gw_workers_run(void);
int gw_workers_count(void);
/* From the main thread. Reload: every worker prepares cfg (copied: TLS contexts, transfer
 * log, new listeners), then, only if all of them could, every worker switches to it for new
 * sessions; else every worker keeps the current one. done(ok, err, arg) is called on the
 * main loop once every worker has answered both rounds; err names what failed ("FILE:LINE:
 * [section] key: problem" from cfg, which must stay valid until then). -1 when a reload
 * is already under way (one at a time). */
typedef void (*gw_reload_done)(bool ok, const char *err, void *arg);
int gw_workers_reload(const gw_config *cfg, gw_reload_done done, void *arg);
/* Stop: the first call stops accepting and lets sessions finish for shutdown_grace; a
 * second one closes every session at once. */
void gw_workers_stop(void);
/* Hitless upgrade (upgrade.c), main thread. fn(kind, fd, arg) for every listening socket of
 * every worker (server.h); -1 while a reload runs (the lists may change then). */
int gw_workers_each_listen_fd(void (*fn)(const char *kind, int fd, void *arg), void *arg);
/* The new process serves: stop as gw_workers_stop, but sessions finish for upgrade_grace (0:
 * no limit) and the shared passive ports close too; done() runs on the main loop once no
 * worker accepts any more. A later gw_workers_stop closes every session at once. */
void gw_workers_hand_over(void (*done)(void));
/* Any thread: fn(m, ...) runs on worker i's loop (mailbox.h). 0, or -1 when there is no
 * such worker or its loop has ended (m is the caller's again); safe to call until and
 * during gw_workers_finish. */
int gw_workers_post(int i, gw_mail *m, gw_mail_fn fn);
/* Worker i's server: only for a function posted to worker i (its loop's thread). */
gw_server *gw_workers_server(int i);
/* Main thread, after its loop returned: wait for the other workers, free everything. */
void gw_workers_finish(void);

#endif
