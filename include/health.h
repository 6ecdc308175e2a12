/* Backend health, one table for the whole process (every worker reads it): FTP probes
 * (connect, the 220, TLS first when the backend is implicit, QUIT) every health_interval,
 * health_rise good probes mark a backend up, health_fall bad probes or failed session
 * connects in a row mark it down. State is kept by backend name and address, so a reload
 * keeps it for a backend whose address did not change. gw_health_is_up and gw_health_report
 * may be called from any worker; configure, start and stop from the thread of the loop
 * given to gw_health_start (the main thread: worker 0). Sessions find the table through
 * their generation (gw_generation.health). */
#ifndef GW_HEALTH_H
#define GW_HEALTH_H

#include <stdbool.h>
#include <uv.h>
#include "admin_text.h"
#include "config.h"
#include "ftp_addr.h"

typedef struct gw_health gw_health;

gw_health *gw_health_new(void);
/* At start and after each reload: the table follows cfg's backends (new ones start up,
 * kept ones keep their state, dropped ones go). Logs event=frontend_unavailable /
 * frontend_available once per transition of a frontend whose backends are all down. */
int gw_health_configure(gw_health *h, const gw_config *cfg);
/* Probe on this loop (worker 0 only); gw_health_stop closes the probe handles. */
int gw_health_start(gw_health *h, uv_loop_t *loop);
void gw_health_stop(gw_health *h);
void gw_health_free(gw_health *h); /* after the loop has run the close callbacks */

/* May the backend get new sessions (healthy and its runtime state ready)? Unknown names
 * are up. */
bool gw_health_is_up(gw_health *h, const char *backend);
/* The probes' verdict alone (ftpsgate_backend_up, the status page). */
bool gw_health_is_healthy(gw_health *h, const char *backend);

/* The runtime state set through the admin endpoint (any thread): one per backend name for
 * the whole process, so every worker sees it at its next session; kept across reloads while
 * the backend's name stays in the configuration (also when its address changes). set: 0, or
 * -1 for an unknown name; *previous gets the state it had. maint pauses the probes (a
 * probe under way finishes); ready from maint probes again at the next tick. */
int gw_health_set_admin(gw_health *h, const char *backend, enum gw_be_admin state,
                        enum gw_be_admin *previous);
enum gw_be_admin gw_health_admin(gw_health *h, const char *backend);
/* A session's connect to the backend: a failure counts like a failed probe (logged with
 * reason), a success resets the failure count. Failures alone never mark down the last
 * backend of a frontend that is up: at health_fall they start a probe, whose failure
 * does (event=backend_suspect). */
void gw_health_report(gw_health *h, const char *backend, bool ok, const char *reason);

/* Hitless upgrade: fn for every backend down now or whose runtime state is not ready (under
 * the lock: fn must not call back), and such a backend marked down in the new process
 * (until its probes bring it back); its runtime state is restored with gw_health_set_admin. */
void gw_health_each_down(gw_health *h,
                         void (*fn)(const char *backend, bool down, enum gw_be_admin admin,
                                    void *arg),
                         void *arg);
void gw_health_restore_down(gw_health *h, const char *backend);

/* Backend connections of sessions not logged in yet, per frontend name and client address
 * (prelogin_backend_per_ip, prelogin_backend_max; 0: no bound), process-wide. acquire: 1
 * counted; 0 over a bound (not counted); -1 out of memory (not counted). force: counted
 * whatever the bounds (a connection opened at USER). Each counted one is released once. */
int gw_health_prelogin_acquire(gw_health *h, const char *frontend, const gw_addr *peer, int per_ip,
                               int max, bool force);
void gw_health_prelogin_release(gw_health *h, const char *frontend, const gw_addr *peer);
int gw_health_prelogin_count(gw_health *h, const char *frontend);

#endif
