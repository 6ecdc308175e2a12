/* The process's ban list ([global] ban_after, ban_window, ban_time, ban_exempt): one table
 * (ban.h) shared by every worker under a mutex, the monotonic clock, the log lines and the
 * bans counter. Failed logins are the backend's 530 to PASS (proxy/reply_dispatch.c); a
 * banned address is refused at accept (proxy/listener.c). */
#ifndef GW_BANS_H
#define GW_BANS_H

#include <stdbool.h>
#include <stdint.h>
#include "config.h"
#include "ftp_addr.h"

/* A failed login from a (session: the session's id, for the log line). true when a is
 * banned now (this failure banned it: `event=ban` logged once, counted; or it was banned
 * already): the session ends with GW_R_BANNED. */
bool gw_bans_login_failed(const gw_config *cfg, const gw_addr *a, uint64_t session);
/* At accept: is a banned? (Its refusal is the caller's to log.) */
bool gw_bans_check(const gw_config *cfg, const gw_addr *a);
/* Each second from every worker: ended bans are logged (`event=ban_expired`). */
void gw_bans_tick(const gw_config *cfg);
/* Bans so far (ftpsgate_bans_total) and addresses banned now. */
uint64_t gw_bans_total(void);
uint64_t gw_bans_active(void);
/* Hitless upgrade: every ban in force (key, end on the monotonic clock in ms, the same for
 * every process of the machine), and one put back in the new process (0, or -1: table full
 * or no memory). */
void gw_bans_each(void (*fn)(const gw_addr *key, uint64_t until_ms, void *arg), void *arg);
int gw_bans_restore(const gw_addr *key, uint64_t until_ms);
/* At exit: the table is freed (bans live as long as the process: a reload keeps them). */
void gw_bans_free_all(void);

#endif
