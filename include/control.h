/* The control socket ([global] control_socket): a unix stream socket on which the running
 * gateway takes commands from `ftpsgate -s COMMAND`. One line per connection ("reload\n"),
 * one line back ("ok reloaded\n" or "failed REASON\n") once the command's outcome is known,
 * then the gateway closes. Only root and the gateway's own user may connect (the socket is
 * 0600 and the peer's credentials are checked). "upgrade\n" starts a hitless upgrade
 * (upgrade.h): "ok upgraded ..." once the new process serves. */
#ifndef GW_CONTROL_H
#define GW_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>
#include "config.h"

/* The socket's path: control_socket, else STATE_DIR/control.sock (the directory of a
 * generated certificate); "" when control_socket = off. 0, or -1 with a message (too long
 * for a unix socket address). */
int gw_control_path(const gw_config *cfg, const char *state_dir, char *out, size_t cap, char *err,
                    size_t errcap);

/* Listen at path on loop (main thread, before other threads start: the umask is changed
 * around bind). A stale socket file is replaced; one a running process answers on is left
 * alone. on_reload is called for each "reload" request; its client waits until
 * gw_control_reload_finished. 0, or -1 with a message (the gateway serves without it). */
int gw_control_start(uv_loop_t *loop, const char *path, void (*on_reload)(void), char *err,
                     size_t cap);
/* A reload begins: the clients that asked so far wait for its outcome (later ones for the
 * next reload's). */
void gw_control_reload_started(void);
/* The outcome of the reload that began last: told to its clients, which are closed. */
void gw_control_reload_finished(bool ok, const char *why);
/* Close the socket and every client, remove the socket file if it is still ours. */
void gw_control_stop(void);

/* Hitless upgrade (upgrade.c). on_upgrade is called for each "upgrade" request; its client
 * waits for gw_control_upgrade_finished (ok: "ok TEXT", else "failed TEXT"). */
void gw_control_on_upgrade(void (*on_upgrade)(void));
void gw_control_upgrade_finished(bool ok, const char *text);
/* The listening socket to hand over, -1 when none. */
int gw_control_fd(void);
/* The new process, once it serves: the socket file (inherited, so left alone until now if
 * the start failed) is its own, removed when it stops. */
void gw_control_serving(void);
/* The old process, once the new one serves: stop accepting; the socket and its file stay
 * (the new process's); answers being written are sent. */
void gw_control_release(void);

/* `ftpsgate -s COMMAND` (blocking, no event loop): send command to the gateway at path and
 * wait up to timeout_s for its answer. 0 with "ok" answers (written to out), 1 when the
 * gateway answered a failure (the reason in out), 2 when it could not be reached or did
 * not answer (why in out). */
int gw_control_send(const char *path, const char *command, int timeout_s, char *out, size_t cap);

#endif
