/* Virtual hosts: a frontend's server_name list against the name a client asked for (TLS SNI
 * or the HOST command). Pure: no libuv, no OpenSSL; the caller is gw_vhost_find
 * (generation.c). The list's syntax is checked by the configuration parser. */
#ifndef GW_SERVER_NAME_H
#define GW_SERVER_NAME_H

#include <stdbool.h>

/* Does name match one of list ("a.example.org, *.example.org": case-insensitive, a
 * wildcard stands for exactly one label, a trailing dot on name is ignored)? */
bool gw_server_name_match(const char *list, const char *name);

#endif
