/* CIDR lists ("10.0.0.0/8, 2001:db8::/32, 192.0.2.7"): checked once when the configuration
 * is read, matched against client addresses. Pure: no libuv, no OpenSSL. */
#ifndef GW_CIDR_H
#define GW_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include "ftp_addr.h"

typedef struct gw_cidr {
    gw_addr net; /* normalised, host bits zero */
    int bits;    /* 0..32 (IPv4) or 0..128 (IPv6) */
} gw_cidr;

/* One item of n bytes: "ADDR/BITS" or "ADDR" (a single host). The address is an IPv4 or
 * IPv6 literal (::ffff:a.b.c.d counts as IPv4, BITS then 96..128); host bits must be zero
 * ("10.0.0.1/8" is refused: a typo for /32 or for 10.0.0.0/8). 0, or -1. */
int gw_cidr_parse(const char *s, size_t n, gw_cidr *out);
/* Is a (normalised here) inside c? Different families never match. */
bool gw_cidr_match(const gw_cidr *c, const gw_addr *a);
/* A list: items separated by commas and/or blanks; "" is the empty list. 0, or -1 with the
 * problem written to why. */
int gw_cidr_list_check(const char *list, char *why, size_t cap);
/* Does any item of a list (checked beforehand: bad items match nothing) contain a? */
bool gw_cidr_list_match(const char *list, const gw_addr *a);

#endif
