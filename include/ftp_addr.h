/* Pure parse/format of 227, 229, PORT and EPRT, address helpers (RFC 959, RFC 2428), and
 * sockaddr conversion and text forms for logs. */
#ifndef GW_FTP_ADDR_H
#define GW_FTP_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct gw_addr {
    int family;     /* 4 or 6 (0: unset) */
    uint8_t ip[16]; /* 4 bytes used for family 4 */
    uint16_t port;
} gw_addr;

/* 227 reply text (whole line, code included): tolerant, scans for six numbers 0-255 after
 * the code, with or without parentheses or '='. 0 on success, -1 otherwise. */
int gw_parse_227(const char *text, gw_addr *out);
/* 229 reply text: "(<d><d><d>port<d>)" with any delimiter 33-126. 0 or -1. */
int gw_parse_229(const char *text, uint16_t *port);
/* PORT argument "h1,h2,h3,h4,p1,p2". 0 or -1 (syntax). */
int gw_parse_port_arg(const char *arg, gw_addr *out);
/* EPRT argument "<d>af<d>addr<d>port<d>": 0 ok, -1 syntax error (501),
 * -2 unsupported address family (522). */
int gw_parse_eprt_arg(const char *arg, gw_addr *out);
/* EPSV argument: "" -> 0 (any), "1" -> 4, "2" -> 6, "ALL" (any case) -> 1 (ALL),
 * other numbers -> -2 (522), garbage -> -1 (501). */
int gw_parse_epsv_arg(const char *arg, int *family);

/* Each formatter writes a NUL-terminated line ending in "\r\n"; returns its length or 0. */
/* "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).\r\n" */
size_t gw_format_227(char *buf, size_t cap, const gw_addr *a);
/* "229 Entering Extended Passive Mode (|||port|)\r\n" */
size_t gw_format_229(char *buf, size_t cap, uint16_t port);
/* "PORT h1,h2,h3,h4,p1,p2\r\n" (family 4) */
size_t gw_format_port(char *buf, size_t cap, const gw_addr *a);
/* "EPRT |1|a.b.c.d|port|\r\n" or |2|v6| */
size_t gw_format_eprt(char *buf, size_t cap, const gw_addr *a);

/* ::ffff:a.b.c.d -> family 4. */
void gw_addr_normalize(gw_addr *a);
/* Same family and IP after normalising both (ports ignored). */
bool gw_addr_same_host(const gw_addr *a, const gw_addr *b);
/* Text form of the IP (inet_ntop), NUL-terminated; returns buf. */
const char *gw_addr_ip_str(const gw_addr *a, char *buf, size_t cap);
/* 0.0.0.0, loopback excluded; true for RFC 1918, 0.0.0.0/8, link-local, ULA fc00::/7, :: */
bool gw_addr_is_private_or_any(const gw_addr *a);

/* sockaddr <-> gw_addr */
void gw_addr_from_sockaddr(gw_addr *a, const struct sockaddr *sa);
void gw_addr_to_sockaddr(const gw_addr *a, struct sockaddr_storage *ss);
/* "1.2.3.4:5" / "[::1]:5" into a per-thread buffer for logs */
const char *gw_addr_str(const gw_addr *a);

#endif
