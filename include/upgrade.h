/* Hitless upgrade (ARCHITECTURE.md "Hitless upgrade"): `ftpsgate -s upgrade` asks the running
 * process (control.h), which starts the binary on disk with its own command line and hands it
 * every listening socket (frontends, shared passive ports, admin, control) by inheritance
 * ($FTPSGATE_INHERIT, inherit.h). The new process adopts the sockets its configuration names,
 * binds the rest, and says "ready" on a socketpair ($FTPSGATE_UPGRADE_FD) once it serves; only
 * then does the old one stop accepting and let its sessions finish (upgrade_grace). */
#ifndef GW_UPGRADE_H
#define GW_UPGRADE_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>
#include "health.h"

/* At start, before anything else: the binary to start later (argv[0] resolved now, so that
 * a relative path or a changed directory does not matter) and the command line. */
void gw_upgrade_remember(int argc, char **argv);

/* The old process (main thread). The ban list and the backends health checks marked down
 * (health) go to the new process. done(ok, pid, text) on the main loop: ok once the new
 * process (pid) serves; else it exited, was not ready within the timeout (then killed), or
 * could not be started, and text says why. 0, or -1 with a message (done is not called). */
typedef void (*gw_upgrade_done)(bool ok, long pid, const char *text);
int gw_upgrade_start(uv_loop_t *loop, gw_health *health, gw_upgrade_done done, char *err,
                     size_t cap);

/* The new process: read the old one's state (bans restored now) and adopt $FTPSGATE_INHERIT
 * (before the listeners are opened). 0, or -1 with a message. Without the variables it
 * does nothing. */
int gw_upgrade_child_init(char *err, size_t cap);
/* Once health is configured: the backends that were down in the old process are down. */
void gw_upgrade_apply_health(gw_health *h);
/* Started by an upgrade (the old process waits for our readiness). */
bool gw_upgrade_is_child(void);
/* Every listener up: inherited sockets no one took are closed, and the old process is told
 * (it stops accepting once it reads this). */
void gw_upgrade_child_ready(void);

#endif
