/* The systemd notification protocol (sd_notify(3)) without libsystemd: one datagram per
 * state change to the AF_UNIX socket named by $NOTIFY_SOCKET ("@name": abstract namespace).
 * Without $NOTIFY_SOCKET every call does nothing. */
#ifndef GW_NOTIFY_H
#define GW_NOTIFY_H

#include <stdint.h>

/* Send text ("READY=1\nSTATUS=..."): 0, or -1 (no socket, or the send failed). */
int gw_notify(const char *text);
/* The watchdog interval asked by the service manager, in microseconds: $WATCHDOG_USEC when
 * set and $WATCHDOG_PID is unset or names this process, else 0. */
uint64_t gw_notify_watchdog_usec(void);
/* CLOCK_MONOTONIC in microseconds (RELOADING=1 carries it as MONOTONIC_USEC=). */
uint64_t gw_notify_monotonic_usec(void);

#endif
