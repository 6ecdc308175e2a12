/* CIDR lists: parsed with inet_pton on each use (lists are short and matched once per
 * connection), so a configuration keeps them as the text it was given. */
#include "cidr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gw_cidr_parse(const char *s, size_t n, gw_cidr *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *slash = strchr(buf, '/');
    long bits = -1;
    if (slash) {
        char *end;
        *slash = 0;
        if (slash[1] < '0' || slash[1] > '9' || strlen(slash + 1) > 3)
            return -1;
        bits = strtol(slash + 1, &end, 10);
        if (*end)
            return -1;
    }
    gw_cidr c;
    memset(&c, 0, sizeof c);
    if (inet_pton(AF_INET, buf, c.net.ip) == 1) {
        c.net.family = 4;
    } else if (inet_pton(AF_INET6, buf, c.net.ip) == 1) {
        c.net.family = 6;
    } else {
        return -1;
    }
    long max = c.net.family == 4 ? 32 : 128;
    if (bits < 0)
        bits = max;
    if (bits > max)
        return -1;
    gw_addr_normalize(&c.net);
    if (c.net.family == 4 && max == 128) { /* ::ffff:a.b.c.d/BITS */
        if (bits < 96)
            return -1;
        bits -= 96;
    }
    c.bits = (int)bits;
    /* host bits must be zero */
    size_t len = c.net.family == 4 ? 4 : 16;
    for (size_t i = 0; i < len; i++) {
        int keep = c.bits - (int)i * 8; /* bits of this byte inside the prefix */
        uint8_t mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
        if (c.net.ip[i] & (uint8_t)~mask)
            return -1;
    }
    *out = c;
    return 0;
}

bool gw_cidr_match(const gw_cidr *c, const gw_addr *addr)
{
    gw_addr a = *addr;
    gw_addr_normalize(&a);
    if (a.family != c->net.family || (a.family != 4 && a.family != 6))
        return false;
    int whole = c->bits / 8, rest = c->bits % 8;
    if (memcmp(a.ip, c->net.ip, (size_t)whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a.ip[whole] & mask) == c->net.ip[whole];
}

static bool is_sep(char ch)
{
    return ch == ',' || ch == ' ' || ch == '\t';
}

/* The next item of a list from *p (NULL when none is left): its start and length. */
static const char *cidr_next(const char **p, size_t *n)
{
    const char *s = *p;
    while (*s && is_sep(*s))
        s++;
    if (!*s)
        return NULL;
    const char *e = s;
    while (*e && !is_sep(*e))
        e++;
    *n = (size_t)(e - s);
    *p = e;
    return s;
}

int gw_cidr_list_check(const char *list, char *why, size_t cap)
{
    const char *p = list, *item;
    size_t n;
    gw_cidr c;
    while ((item = cidr_next(&p, &n)))
        if (gw_cidr_parse(item, n, &c) != 0) {
            snprintf(why, cap,
                     "\"%.*s\": expected ADDRESS or NETWORK/BITS (IPv4 or IPv6, host bits zero)",
                     (int)(n > 64 ? 64 : n), item);
            return -1;
        }
    return 0;
}

bool gw_cidr_list_match(const char *list, const gw_addr *a)
{
    const char *p = list, *item;
    size_t n;
    gw_cidr c;
    while ((item = cidr_next(&p, &n)))
        if (gw_cidr_parse(item, n, &c) == 0 && gw_cidr_match(&c, a))
            return true;
    return false;
}
