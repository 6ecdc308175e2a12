/* Passive data ports: one process-wide pool per configured range, shared by every frontend
 * that names the same range. Ports are picked at random (not predictable by other clients). */
#ifndef GW_PASV_POOL_H
#define GW_PASV_POOL_H

#include <stdint.h>
#include "ftp_addr.h"

typedef struct gw_pasv_pool gw_pasv_pool;

gw_pasv_pool *gw_pasv_pool_get(uint16_t lo, uint16_t hi); /* find or create */
/* A listening socket on bind_addr with a free port of the pool (stored in bind_addr->port).
 * Returns the fd, or -1 when the range is exhausted or binding fails. */
int gw_pasv_pool_listen(gw_pasv_pool *p, gw_addr *bind_addr);
void gw_pasv_pool_release(gw_pasv_pool *p, uint16_t port);
void gw_pasv_pool_free_all(void);

#endif
