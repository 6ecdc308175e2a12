/* Sessions per client address (max_sessions_per_ip). Pure: no libuv, no OpenSSL. */
#ifndef GW_IP_LIMIT_H
#define GW_IP_LIMIT_H

#include "ftp_addr.h"

typedef struct gw_ip_table gw_ip_table;

gw_ip_table *gw_ip_table_new(void);
void gw_ip_table_free(gw_ip_table *t);
/* Count one more session for the address (normalised) unless it already has `max`.
 * 0: counted; -1: over the limit (not counted) or out of memory. */
int gw_ip_acquire(gw_ip_table *t, const gw_addr *a, int max);
void gw_ip_release(gw_ip_table *t, const gw_addr *a);
int gw_ip_count(const gw_ip_table *t, const gw_addr *a);

#endif
