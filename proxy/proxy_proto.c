/* The PROXY protocol, versions 1 and 2 (HAProxy's doc/proxy-protocol.txt), and CIDR lists.
 * Pure: no libuv, no OpenSSL. */
#include "proxy_proto.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char v1_sig[] = "PROXY ";
#define V1_MIN 15 /* "PROXY UNKNOWN\r\n" */
#define V2_HDR 16

size_t gw_pp_first_read(int mode)
{
    return mode == GW_PP_V2 ? V2_HDR : V1_MIN;
}

static int pp_bad(const char **why, const char *text)
{
    *why = text;
    return GW_PP_BAD;
}

static size_t pp_min(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* A decimal port: 0..65535, digits only, no leading zero. */
static int pp_parse_port(const char *s, size_t n, uint16_t *out)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int pp_parse_ip(const char *s, size_t n, int family, gw_addr *a)
{
    char tmp[64];
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    memset(a, 0, sizeof *a);
    a->family = family;
    return inet_pton(family == 4 ? AF_INET : AF_INET6, tmp, a->ip) == 1 ? 0 : -1;
}

/* A whole v1 line (CRLF at line[len-2]). */
static int parse_v1_line(const char *line, size_t len, gw_pp_header *h, const char **why)
{
    const char *p = line + 6, *end = line + len - 2;
    if (end - p >= 7 && memcmp(p, "UNKNOWN", 7) == 0 && (end - p == 7 || p[7] == ' ')) {
        h->unknown = true; /* the rest of the line is ignored (spec 2.1) */
        return GW_PP_DONE;
    }
    int family;
    if (end - p >= 5 && memcmp(p, "TCP4 ", 5) == 0)
        family = 4;
    else if (end - p >= 5 && memcmp(p, "TCP6 ", 5) == 0)
        family = 6;
    else
        return pp_bad(why, "v1: unknown protocol");
    p += 5;
    const char *f[4];
    size_t fl[4];
    for (int i = 0; i < 4; i++) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        const char *stop = i < 3 ? sp : end;
        if (!stop || (i == 3 && sp))
            return pp_bad(why, "v1: expected four fields separated by single spaces");
        f[i] = p;
        fl[i] = (size_t)(stop - p);
        p = stop + 1;
    }
    if (pp_parse_ip(f[0], fl[0], family, &h->src) || pp_parse_ip(f[1], fl[1], family, &h->dst))
        return pp_bad(why, "v1: bad address");
    if (pp_parse_port(f[2], fl[2], &h->src.port) || pp_parse_port(f[3], fl[3], &h->dst.port))
        return pp_bad(why, "v1: bad port");
    return GW_PP_DONE;
}

/* The fewest bytes still due before a v1 line can end (n bytes seen, no CRLF yet). */
static size_t v1_need(const char *buf, size_t n)
{
    if (n < V1_MIN)
        return V1_MIN - n;
    if (buf[n - 1] == '\r')
        return 1;
    size_t need = 2;
    if (memcmp(buf + 6, "TCP4 ", 5) == 0 || memcmp(buf + 6, "TCP6 ", 5) == 0) {
        size_t spaces = 0;
        for (size_t i = 0; i < n; i++)
            spaces += buf[i] == ' ';
        if (spaces <= 5) /* each missing separator needs a field after it */
            need = (5 - spaces) * 2 + 2 + (buf[n - 1] == ' ');
    }
    return pp_min(need, GW_PP_V1_MAX - n);
}

static int parse_v1(const uint8_t *ubuf, size_t n, gw_pp_header *h, size_t *need, const char **why)
{
    const char *buf = (const char *)ubuf;
    size_t cmp = pp_min(n, sizeof v1_sig - 1);
    if (memcmp(buf, v1_sig, cmp) != 0)
        return pp_bad(why, "not a PROXY header");
    size_t scan = pp_min(n, GW_PP_V1_MAX);
    for (size_t i = 0; i < scan; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\n') {
            if (i == 0 || buf[i - 1] != '\r')
                return pp_bad(why, "v1: LF without CR");
            h->version = 1;
            h->len = i + 1;
            return parse_v1_line(buf, i + 1, h, why);
        }
        if (c == '\r' && i + 1 < scan && buf[i + 1] != '\n')
            return pp_bad(why, "v1: CR without LF");
        if (c != '\r' && (c < 0x20 || c > 0x7e))
            return pp_bad(why, "v1: control character");
    }
    if (n >= GW_PP_V1_MAX)
        return pp_bad(why, "v1: longer than 107 bytes");
    *need = v1_need(buf, n);
    return GW_PP_MORE;
}

static int parse_v2(const uint8_t *buf, size_t n, gw_pp_header *h, size_t *need, const char **why)
{
    size_t cmp = pp_min(n, sizeof v2_sig);
    if (memcmp(buf, v2_sig, cmp) != 0)
        return pp_bad(why, "not a PROXY header");
    if (n >= 13 && (buf[12] >> 4) != 2)
        return pp_bad(why, "v2: unknown version");
    if (n >= 13 && (buf[12] & 0x0f) > 1)
        return pp_bad(why, "v2: unknown command");
    if (n < V2_HDR) {
        *need = V2_HDR - n;
        return GW_PP_MORE;
    }
    size_t len = ((size_t)buf[14] << 8) | buf[15];
    if (V2_HDR + len > GW_PP_V2_MAX)
        return pp_bad(why, "v2: header too long");
    if (n < V2_HDR + len) {
        *need = V2_HDR + len - n;
        return GW_PP_MORE;
    }
    h->version = 2;
    h->len = V2_HDR + len;
    if ((buf[12] & 0x0f) == 0) {
        h->local = true; /* LOCAL: the address block (if any) is ignored */
        return GW_PP_DONE;
    }
    unsigned fam = buf[13] >> 4, proto = buf[13] & 0x0f;
    if (fam == 0) {
        h->unknown = true; /* UNSPEC: the connection's own addresses */
        return GW_PP_DONE;
    }
    if (proto != 1)
        return pp_bad(why, "v2: not a stream");
    const uint8_t *a = buf + V2_HDR;
    if (fam == 1) {
        if (len < 12)
            return pp_bad(why, "v2: address block too short");
        h->src.family = h->dst.family = 4;
        memcpy(h->src.ip, a, 4);
        memcpy(h->dst.ip, a + 4, 4);
        h->src.port = (uint16_t)(a[8] << 8 | a[9]);
        h->dst.port = (uint16_t)(a[10] << 8 | a[11]);
        return GW_PP_DONE;
    }
    if (fam == 2) {
        if (len < 36)
            return pp_bad(why, "v2: address block too short");
        h->src.family = h->dst.family = 6;
        memcpy(h->src.ip, a, 16);
        memcpy(h->dst.ip, a + 16, 16);
        h->src.port = (uint16_t)(a[32] << 8 | a[33]);
        h->dst.port = (uint16_t)(a[34] << 8 | a[35]);
        return GW_PP_DONE;
    }
    return pp_bad(why, "v2: unsupported address family"); /* AF_UNIX: no client address */
}

int gw_pp_parse(const uint8_t *buf, size_t n, int mode, gw_pp_header *h, size_t *need,
                const char **why)
{
    memset(h, 0, sizeof *h);
    *need = 0;
    *why = NULL;
    if (n == 0) {
        *need = gw_pp_first_read(mode);
        return GW_PP_MORE;
    }
    if (buf[0] == 'P' && (mode & GW_PP_V1))
        return parse_v1(buf, n, h, need, why);
    if (buf[0] == v2_sig[0] && (mode & GW_PP_V2))
        return parse_v2(buf, n, h, need, why);
    if (buf[0] == 'P' || buf[0] == v2_sig[0])
        return pp_bad(why, mode == GW_PP_V1 ? "v2 header where v1 is expected"
                                            : "v1 header where v2 is expected");
    return pp_bad(why, "not a PROXY header");
}

int gw_pp_feed(gw_pp_reader *r, const void *data, size_t n, int mode, gw_pp_header *h, size_t *need,
               const char **why)
{
    size_t room = sizeof r->buf - r->n;
    if (n > room)
        n = room;
    memcpy(r->buf + r->n, data, n);
    r->n += n;
    return gw_pp_parse(r->buf, r->n, mode, h, need, why);
}

/* Both of one family: IPv4 stays IPv4 when both are; otherwise IPv6 (IPv4-mapped). */
static int pp_common_family(const gw_addr *src, const gw_addr *dst, gw_addr *s, gw_addr *d)
{
    *s = *src;
    *d = *dst;
    gw_addr_normalize(s);
    gw_addr_normalize(d);
    if (s->family == d->family)
        return s->family;
    gw_addr *v4 = s->family == 4 ? s : d;
    uint8_t ip[4];
    memcpy(ip, v4->ip, 4);
    memset(v4->ip, 0, 16);
    v4->ip[10] = v4->ip[11] = 0xff;
    memcpy(v4->ip + 12, ip, 4);
    v4->family = 6;
    return 6;
}

size_t gw_pp_build(int version, uint8_t *buf, size_t cap, const gw_addr *src, const gw_addr *dst)
{
    gw_addr s, d;
    int fam = pp_common_family(src, dst, &s, &d);
    if (version == 1) {
        char a[64], b[64];
        gw_addr_ip_str(&s, a, sizeof a);
        gw_addr_ip_str(&d, b, sizeof b);
        int n =
            snprintf((char *)buf, cap, "PROXY TCP%d %s %s %u %u\r\n", fam, a, b, s.port, d.port);
        return n > 0 && (size_t)n < cap ? (size_t)n : 0;
    }
    size_t alen = fam == 4 ? 12 : 36, iplen = fam == 4 ? 4 : 16;
    if (cap < V2_HDR + alen)
        return 0;
    memcpy(buf, v2_sig, sizeof v2_sig);
    buf[12] = 0x21; /* version 2, PROXY */
    buf[13] = fam == 4 ? 0x11 : 0x21;
    buf[14] = 0;
    buf[15] = (uint8_t)alen;
    uint8_t *p = buf + V2_HDR;
    memcpy(p, s.ip, iplen);
    memcpy(p + iplen, d.ip, iplen);
    p += 2 * iplen;
    p[0] = (uint8_t)(s.port >> 8);
    p[1] = (uint8_t)s.port;
    p[2] = (uint8_t)(d.port >> 8);
    p[3] = (uint8_t)d.port;
    return V2_HDR + alen;
}

size_t gw_pp_build_local(int version, uint8_t *buf, size_t cap)
{
    if (version == 1) {
        static const char line[] = "PROXY UNKNOWN\r\n";
        if (cap < sizeof line - 1)
            return 0;
        memcpy(buf, line, sizeof line - 1);
        return sizeof line - 1;
    }
    if (cap < V2_HDR)
        return 0;
    memcpy(buf, v2_sig, sizeof v2_sig);
    buf[12] = 0x20; /* version 2, LOCAL */
    buf[13] = buf[14] = buf[15] = 0;
    return V2_HDR;
}

/* ---- pasv_address_for: CIDR=ADDR lists (the CIDR part: cidr.h) ---- */

/* Next comma-separated item of *p, trimmed, into out; false at the end of the list. */
static bool pp_next_item(const char **p, char *out, size_t cap, bool *toolong)
{
    const char *s = *p;
    *toolong = false;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s)
        return false;
    const char *comma = strchr(s, ',');
    const char *e = comma ? comma : s + strlen(s);
    *p = comma ? comma + 1 : e;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    size_t n = (size_t)(e - s);
    if (n >= cap) {
        *toolong = true;
        n = 0;
    }
    memcpy(out, s, n);
    out[n] = 0;
    return true;
}

/* "CIDR=ADDR" */
static int parse_for_item(char *item, gw_cidr *net, gw_addr *to)
{
    char *eq = strchr(item, '=');
    if (!eq)
        return -1;
    char *l = item, *r = eq + 1;
    char *le = eq;
    while (le > l && (le[-1] == ' ' || le[-1] == '\t'))
        le--;
    *le = 0;
    while (*r == ' ' || *r == '\t')
        r++;
    memset(to, 0, sizeof *to);
    if (gw_cidr_parse(l, strlen(l), net) != 0 || inet_pton(AF_INET, r, to->ip) != 1)
        return -1;
    to->family = 4;
    return 0;
}

bool gw_pp_addr_for(const char *list, const gw_addr *client, gw_addr *out)
{
    char item[160];
    bool toolong;
    const char *p = list;
    while (pp_next_item(&p, item, sizeof item, &toolong)) {
        gw_cidr net;
        gw_addr to;
        if (!toolong && parse_for_item(item, &net, &to) == 0 && gw_cidr_match(&net, client)) {
            *out = to;
            return true;
        }
    }
    return false;
}

int gw_pp_addr_for_check(const char *list, char *why, size_t cap)
{
    char item[160], shown[160];
    bool toolong;
    const char *p = list;
    while (pp_next_item(&p, item, sizeof item, &toolong)) {
        gw_cidr net;
        gw_addr to;
        snprintf(shown, sizeof shown, "%s", item);
        if (toolong || parse_for_item(item, &net, &to) != 0) {
            snprintf(why, cap, "\"%s\": expected CIDR=IPV4ADDR items separated by commas",
                     shown[0] ? shown : list);
            return -1;
        }
    }
    return 0;
}
