/* The PROXY protocol (HAProxy's doc/proxy-protocol.txt, versions 1 and 2): parse the header a
 * load balancer puts in front of a connection, and build one for a backend. Also the CIDR
 * lists its configuration uses (proxy_protocol_from, pasv_address_for). Pure: no libuv, no
 * OpenSSL. */
#ifndef GW_PROXY_PROTO_H
#define GW_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "cidr.h"
#include "ftp_addr.h"

/* Which header versions a frontend accepts ([frontend] proxy_protocol). */
enum gw_pp_mode { GW_PP_OFF = 0, GW_PP_V1 = 1, GW_PP_V2 = 2, GW_PP_ANY = 3 };

#define GW_PP_V1_MAX 107         /* a v1 line, CRLF included */
#define GW_PP_V2_MAX (16 + 2048) /* a v2 header with its TLVs; longer ones are refused */
#define GW_PP_BUILD_MAX 108      /* room for any header gw_pp_build writes (a v1 line and NUL) */

enum gw_pp_result { GW_PP_BAD = -1, GW_PP_MORE = 0, GW_PP_DONE = 1 };

typedef struct gw_pp_header {
    int version;  /* 1 or 2 */
    bool local;   /* v2 LOCAL (a balancer's health check): no client behind it */
    bool unknown; /* v1 UNKNOWN, v2 UNSPEC: the connection's own addresses stand */
    gw_addr src;  /* the client (when neither local nor unknown) */
    gw_addr dst;  /* the address the client connected to */
    size_t len;   /* bytes of the header */
} gw_pp_header;

/* Parse the first n bytes of a connection. GW_PP_DONE: h is filled, the header is h->len
 * bytes. GW_PP_MORE: a prefix of a valid header; *need is how many more bytes may be read
 * without reading past the header's end (>= 1). GW_PP_BAD: *why says what is wrong (a static
 * string). `mode` is the versions accepted (GW_PP_V1, GW_PP_V2 or GW_PP_ANY). */
int gw_pp_parse(const uint8_t *buf, size_t n, int mode, gw_pp_header *h, size_t *need,
                const char **why);

/* Accumulates a header read in pieces (a connection's first bytes). */
typedef struct gw_pp_reader {
    size_t n;
    uint8_t buf[GW_PP_V2_MAX];
} gw_pp_reader;
/* Append (at most what fits) and parse what is there; as gw_pp_parse. Bytes past *need are
 * never expected: the caller reads at most *need next. */
int gw_pp_feed(gw_pp_reader *r, const void *data, size_t n, int mode, gw_pp_header *h, size_t *need,
               const char **why);
/* How many bytes to read first for mode (nothing past the shortest header). */
size_t gw_pp_first_read(int mode);

/* A header naming src (the client) and dst (the address it reached); version 1 or 2. Mixed
 * families are written as IPv6 (IPv4-mapped). Returns its length, 0 when cap is too small. */
size_t gw_pp_build(int version, uint8_t *buf, size_t cap, const gw_addr *src, const gw_addr *dst);

/* A header that names no client (health checks): v1 "PROXY UNKNOWN", v2 LOCAL. Its length,
 * 0 when cap is too small. */
size_t gw_pp_build_local(int version, uint8_t *buf, size_t cap);

/* pasv_address_for: "CIDR=ADDR, ..." with ADDR an IPv4 address; the first CIDR matching
 * client gives *out (port 0). true on a match. */
bool gw_pp_addr_for(const char *list, const gw_addr *client, gw_addr *out);
int gw_pp_addr_for_check(const char *list, char *why, size_t cap);

#endif
