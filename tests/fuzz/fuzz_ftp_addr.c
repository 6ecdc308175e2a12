/* libFuzzer target for proxy/ftp_addr.c. The input is given to every parser as it is and
 * behind "227 "/"229 "; every success is formatted and parsed back to the same address.
 * The raw bytes are also taken as a gw_addr and run through the formatters and helpers. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ftp_addr.h"

static bool same_addr(const gw_addr *a, const gw_addr *b)
{
    return gw_addr_same_host(a, b) && a->port == b->port;
}

/* A formatter's output: NUL-terminated, its length returned, ending in CRLF. */
static void check_formatted(const char *buf, size_t n)
{
    if (n < 2 || strlen(buf) != n || buf[n - 2] != '\r' || buf[n - 1] != '\n')
        abort();
    if (memchr(buf, '\n', n - 1) != NULL || memchr(buf, '\r', n - 2) != NULL)
        abort();
}

/* Strip "VERB " and CRLF in place to get a command argument back. */
static char *argument_of(char *buf, size_t n)
{
    buf[n - 2] = '\0';
    return buf + 5;
}

/* Every formatter that accepts a, parsed back. a has a nonzero port. */
static void roundtrip(const gw_addr *a)
{
    char buf[128];
    gw_addr b, v = *a;
    uint16_t port;
    size_t n;

    gw_addr_normalize(&v);
    if (!gw_addr_same_host(a, a) || !gw_addr_same_host(a, &v))
        abort();

    n = gw_format_227(buf, sizeof(buf), a);
    if ((n != 0) != (v.family == 4))
        abort();
    if (n != 0) {
        check_formatted(buf, n);
        if (gw_parse_227(buf, &b) != 0 || !same_addr(a, &b) || b.family != 4)
            abort();
        if (gw_format_227(buf, n, a) != 0 || gw_format_227(buf, n + 1, a) != n)
            abort();
    }

    n = gw_format_port(buf, sizeof(buf), a);
    if ((n != 0) != (v.family == 4))
        abort();
    if (n != 0) {
        check_formatted(buf, n);
        if (gw_parse_port_arg(argument_of(buf, n), &b) != 0 || !same_addr(a, &b))
            abort();
    }

    n = gw_format_eprt(buf, sizeof(buf), a);
    if (n == 0)
        abort();
    check_formatted(buf, n);
    if (gw_parse_eprt_arg(argument_of(buf, n), &b) != 0 || !same_addr(a, &b))
        abort();
    if (b.family != v.family)
        abort(); /* written normalised */

    n = gw_format_229(buf, sizeof(buf), a->port);
    check_formatted(buf, n);
    if (gw_parse_229(buf, &port) != 0 || port != a->port)
        abort();
}

static void check_parsed(const gw_addr *a)
{
    char ip[64];

    if (a->family != 4 && a->family != 6)
        abort();
    if (a->port == 0)
        abort();
    if (a->family == 4)
        for (size_t i = 4; i < sizeof(a->ip); i++)
            if (a->ip[i] != 0)
                abort();
    if (gw_addr_ip_str(a, ip, sizeof(ip))[0] == '\0')
        abort();
    (void)gw_addr_is_private_or_any(a);
    roundtrip(a);
}

static void parse_all(const char *s)
{
    gw_addr a;
    uint16_t port;
    int rc, fam = -99;

    if (gw_parse_227(s, &a) == 0) {
        if (a.family != 4)
            abort();
        check_parsed(&a);
    }
    if (gw_parse_229(s, &port) == 0) {
        gw_addr b;

        if (port == 0)
            abort();
        memset(&b, 0, sizeof(b));
        b.family = 4;
        b.port = port;
        roundtrip(&b);
    }
    if (gw_parse_port_arg(s, &a) == 0) {
        if (a.family != 4)
            abort();
        check_parsed(&a);
    }
    rc = gw_parse_eprt_arg(s, &a);
    if (rc < -2 || rc > 0)
        abort();
    if (rc == 0)
        check_parsed(&a);

    rc = gw_parse_epsv_arg(s, &fam);
    if (rc < -2 || rc > 1)
        abort();
    if (rc == 0 && fam != 0 && fam != 4 && fam != 6)
        abort();
    if (rc == 1 && fam != 1)
        abort();
}

/* The raw bytes as an address: formatters must succeed or return 0, never overflow. */
static void raw_addr(const uint8_t *d, size_t n)
{
    char buf[80], ip[46]; /* INET6_ADDRSTRLEN */
    gw_addr a;
    size_t cap;

    if (n < 20)
        return;
    memset(&a, 0, sizeof(a));
    a.family = d[0] % 3 == 0 ? 4 : d[0] % 3 == 1 ? 6 : d[0];
    memcpy(a.ip, d + 1, 16);
    if (a.family == 4)
        memset(a.ip + 4, 0, 12);
    a.port = (uint16_t)(d[17] << 8 | d[18]);
    cap = d[19] % sizeof(buf);

    gw_addr_ip_str(&a, ip, d[19] % sizeof(ip));
    (void)gw_addr_is_private_or_any(&a);
    if (gw_format_227(buf, cap, &a) >= cap && cap > 0)
        abort();
    if (gw_format_229(buf, cap, a.port) >= cap && cap > 0)
        abort();
    if (gw_format_port(buf, cap, &a) >= cap && cap > 0)
        abort();
    if (gw_format_eprt(buf, cap, &a) >= cap && cap > 0)
        abort();
    if ((a.family == 4 || a.family == 6) && a.port != 0)
        roundtrip(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 5);

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    parse_all(s);

    memcpy(s, "227 ", 4);
    memcpy(s + 4, data, size);
    s[size + 4] = '\0';
    parse_all(s);
    s[2] = '9';
    parse_all(s);

    free(s);
    raw_addr(data, size);
    return 0;
}
