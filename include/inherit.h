/* Listening sockets inherited from the process that started this one in a hitless upgrade
 * (`ftpsgate -s upgrade`, ARCHITECTURE.md "Hitless upgrade"). The old process lists them in
 * $FTPSGATE_INHERIT as "KIND=FD" items separated by commas (KIND: fe a frontend, sp a shared
 * passive port, admin, ctl the control socket); each is matched here by its kind and the
 * address it is bound to, so the new configuration decides which are used. Called from the
 * main thread while the workers are built, before any other thread starts. */
#ifndef GW_INHERIT_H
#define GW_INHERIT_H

#include <stddef.h>
#include <sys/socket.h>

/* Parse list (the variable's value); every descriptor is made close-on-exec again. 0, or -1
 * with a message (an item that is no socket, a bad item): nothing is kept then. */
int gw_inherit_load(const char *list, char *err, size_t cap);
/* An inherited socket of kind bound to sa (IP: family, address and port; unix: the path),
 * taken (the caller owns it), or -1 when there is none left. Several of one address (one a
 * worker with SO_REUSEPORT) are taken in the order listed. */
int gw_inherit_take(const char *kind, const struct sockaddr *sa, socklen_t len);
/* Close those nobody took (an address the new configuration dropped): how many. */
int gw_inherit_close_unused(void);
/* How many were loaded (for the log). */
int gw_inherit_count(void);

#endif
