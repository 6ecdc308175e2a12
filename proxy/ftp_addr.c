/* Parse and format 227, 229, PORT, EPRT and EPSV (RFC 959, RFC 2428), address helpers.
 * Pure: libc only. Every parser takes untrusted text and never reads past its NUL. */
#include "ftp_addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool is_addr_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 2428 delimiters are 33-126. Digits are refused: they would make the port ambiguous. */
static bool is_delim(char c)
{
    return c >= 33 && c <= 126 && !is_addr_digit(c);
}

/* One byte value of PORT/227: 1-3 digits, 0-255. Returns the end, or NULL. */
static const char *parse_byte(const char *s, unsigned *v)
{
    unsigned val = 0;
    int digits = 0;

    while (is_addr_digit(*s) && digits < 4) {
        val = val * 10 + (unsigned)(*s++ - '0');
        digits++;
    }
    if (digits == 0 || digits > 3 || val > 255)
        return NULL;
    *v = val;
    return s;
}

/* A TCP port of 1-5 digits, 1-65535, that must be followed by the delimiter d. */
static const char *parse_port(const char *s, char d, uint16_t *port)
{
    unsigned long val = 0;
    int digits = 0;

    while (is_addr_digit(*s) && digits < 6) {
        val = val * 10 + (unsigned long)(*s++ - '0');
        digits++;
    }
    /* SECURITY: port 0 would mean "any port" to connect()/bind(). */
    if (digits == 0 || digits > 5 || val == 0 || val > 65535 || *s != d)
        return NULL;
    *port = (uint16_t)val;
    return s + 1;
}

static int set_v4(gw_addr *out, const unsigned v[6])
{
    unsigned port = v[4] * 256 + v[5];
    int i;

    if (port == 0)
        return -1;
    memset(out, 0, sizeof(*out));
    out->family = 4;
    for (i = 0; i < 4; i++)
        out->ip[i] = (uint8_t)v[i];
    out->port = (uint16_t)port;
    return 0;
}

/* A maximal run "n,n,...,n" (spaces allowed after commas) at s. Returns how many numbers it
 * holds (capped at 7), stores the first six in v, sets *end after the run and *ok to whether
 * every number was a byte value. */
static int number_run(const char *s, unsigned v[6], const char **end, bool *ok)
{
    const char *t;
    int count = 0;

    *ok = true;
    for (;;) {
        unsigned val;
        const char *after = parse_byte(s, &val);

        if (after == NULL) {
            *ok = false;
            while (is_addr_digit(*s))
                s++;
        } else {
            s = after;
        }
        if (count < 6)
            v[count] = after ? val : 0;
        if (count < 7)
            count++;

        t = s;
        if (*t != ',')
            break;
        for (t++; *t == ' '; t++)
            ;
        if (!is_addr_digit(*t))
            break;
        s = t;
    }
    *end = s;
    return count;
}

int gw_parse_227(const char *text, gw_addr *out)
{
    const char *s, *end;
    unsigned v[6];
    bool ok;

    if (strncmp(text, "227", 3) != 0)
        return -1;

    /* Servers word 227 differently ("(h,h,h,h,p,p)", "=h,...", bare numbers): take the first
     * run of exactly six byte values after the code. */
    for (s = text + 3; *s != '\0';) {
        if (!is_addr_digit(*s)) {
            s++;
            continue;
        }
        if (number_run(s, v, &end, &ok) == 6 && ok)
            return set_v4(out, v);
        s = end;
    }
    return -1;
}

int gw_parse_229(const char *text, uint16_t *port)
{
    const char *s;
    char d;

    if (strncmp(text, "229", 3) != 0)
        return -1;

    for (s = strchr(text + 3, '('); s != NULL; s = strchr(s + 1, '(')) {
        d = s[1];
        if (!is_delim(d) || s[2] != d || s[3] != d)
            continue;
        if (parse_port(s + 4, d, port) != NULL)
            return 0;
    }
    return -1;
}

int gw_parse_port_arg(const char *arg, gw_addr *out)
{
    const char *s = arg;
    unsigned v[6];
    int i;

    for (i = 0; i < 6; i++) {
        s = parse_byte(s, &v[i]);
        if (s == NULL)
            return -1;
        if (i < 5 && *s++ != ',')
            return -1;
    }
    if (*s != '\0')
        return -1;
    return set_v4(out, v);
}

int gw_parse_eprt_arg(const char *arg, gw_addr *out)
{
    char d = arg[0], host[64];
    const char *af, *addr, *port;
    unsigned long fam = 0;
    size_t i, len;
    uint16_t p;
    gw_addr a;

    if (!is_delim(d))
        return -1;
    af = arg + 1;
    addr = strchr(af, d);
    if (addr == NULL)
        return -1;
    addr++;
    port = strchr(addr, d);
    if (port == NULL)
        return -1;
    port++;

    if (addr - af < 2)
        return -1; /* empty family */
    for (i = 0; af + i < addr - 1; i++) {
        if (!is_addr_digit(af[i]))
            return -1;
        if (fam < 1000)
            fam = fam * 10 + (unsigned long)(af[i] - '0');
    }
    if (fam != 1 && fam != 2)
        return -2;

    len = (size_t)(port - 1 - addr);
    if (len == 0 || len >= sizeof(host))
        return -1;
    memcpy(host, addr, len);
    host[len] = '\0';

    memset(&a, 0, sizeof(a));
    a.family = fam == 1 ? 4 : 6;
    /* inet_pton takes only dotted quads for AF_INET and no zone ids for AF_INET6. */
    if (inet_pton(fam == 1 ? AF_INET : AF_INET6, host, a.ip) != 1)
        return -1;

    port = parse_port(port, d, &p);
    if (port == NULL || *port != '\0')
        return -1;
    a.port = p;
    *out = a;
    return 0;
}

int gw_parse_epsv_arg(const char *arg, int *family)
{
    const char *s;

    if (arg[0] == '\0') {
        *family = 0;
        return 0;
    }
    if (strcasecmp(arg, "ALL") == 0) {
        *family = 1;
        return 1;
    }
    for (s = arg; *s != '\0'; s++)
        if (!is_addr_digit(*s))
            return -1;
    if (strcmp(arg, "1") == 0) {
        *family = 4;
        return 0;
    }
    if (strcmp(arg, "2") == 0) {
        *family = 6;
        return 0;
    }
    return -2;
}

/* snprintf's result as a formatter's: the length, or 0 (and "") if it did not fit. */
static size_t fitted(int n, char *buf, size_t cap)
{
    if (n > 0 && (size_t)n < cap)
        return (size_t)n;
    if (cap > 0)
        buf[0] = '\0';
    return 0;
}

/* Copy a with IPv4-mapped IPv6 turned into IPv4; false unless the result is family 4. */
static bool as_v4(const gw_addr *a, gw_addr *v4)
{
    *v4 = *a;
    gw_addr_normalize(v4);
    return v4->family == 4;
}

size_t gw_format_227(char *buf, size_t cap, const gw_addr *a)
{
    gw_addr v;

    if (!as_v4(a, &v))
        return fitted(-1, buf, cap);
    return fitted(snprintf(buf, cap, "227 Entering Passive Mode (%u,%u,%u,%u,%u,%u).\r\n", v.ip[0],
                           v.ip[1], v.ip[2], v.ip[3], v.port >> 8, v.port & 0xff),
                  buf, cap);
}

size_t gw_format_229(char *buf, size_t cap, uint16_t port)
{
    return fitted(snprintf(buf, cap, "229 Entering Extended Passive Mode (|||%u|)\r\n", port), buf,
                  cap);
}

size_t gw_format_port(char *buf, size_t cap, const gw_addr *a)
{
    gw_addr v;

    if (!as_v4(a, &v))
        return fitted(-1, buf, cap);
    return fitted(snprintf(buf, cap, "PORT %u,%u,%u,%u,%u,%u\r\n", v.ip[0], v.ip[1], v.ip[2],
                           v.ip[3], v.port >> 8, v.port & 0xff),
                  buf, cap);
}

size_t gw_format_eprt(char *buf, size_t cap, const gw_addr *a)
{
    char ip[INET6_ADDRSTRLEN];
    gw_addr v = *a;

    gw_addr_normalize(&v);
    if (v.family != 4 && v.family != 6)
        return fitted(-1, buf, cap);
    gw_addr_ip_str(&v, ip, sizeof(ip));
    return fitted(snprintf(buf, cap, "EPRT |%d|%s|%u|\r\n", v.family == 4 ? 1 : 2, ip, v.port), buf,
                  cap);
}

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

void gw_addr_normalize(gw_addr *a)
{
    if (a->family != 6 || memcmp(a->ip, v4_mapped_prefix, sizeof(v4_mapped_prefix)) != 0)
        return;
    a->family = 4;
    memmove(a->ip, a->ip + 12, 4);
    memset(a->ip + 4, 0, sizeof(a->ip) - 4); /* so that memcmp of whole addresses works */
}

bool gw_addr_same_host(const gw_addr *a, const gw_addr *b)
{
    gw_addr x = *a, y = *b;

    gw_addr_normalize(&x);
    gw_addr_normalize(&y);
    if (x.family != y.family)
        return false;
    if (x.family == 4)
        return memcmp(x.ip, y.ip, 4) == 0;
    if (x.family == 6)
        return memcmp(x.ip, y.ip, 16) == 0;
    return false; /* unset addresses match nothing */
}

const char *gw_addr_ip_str(const gw_addr *a, char *buf, size_t cap)
{
    int af = a->family == 4 ? AF_INET : a->family == 6 ? AF_INET6 : -1;

    if (cap == 0)
        return buf;
    if (af < 0 || cap > 0x7fffffff || inet_ntop(af, a->ip, buf, (socklen_t)cap) == NULL)
        buf[0] = '\0';
    return buf;
}

bool gw_addr_is_private_or_any(const gw_addr *a)
{
    gw_addr v = *a;
    const uint8_t *ip = v.ip;
    static const uint8_t zero[16];

    gw_addr_normalize(&v);
    if (v.family == 4) {
        return ip[0] == 0 ||                             /* 0.0.0.0/8 */
               ip[0] == 10 ||                            /* 10/8 */
               (ip[0] == 172 && (ip[1] & 0xf0) == 16) || /* 172.16/12 */
               (ip[0] == 192 && ip[1] == 168) ||         /* 192.168/16 */
               (ip[0] == 169 && ip[1] == 254);           /* link-local */
    }
    if (v.family == 6) {
        return memcmp(ip, zero, 16) == 0 ||               /* :: */
               (ip[0] & 0xfe) == 0xfc ||                  /* ULA fc00::/7 */
               (ip[0] == 0xfe && (ip[1] & 0xc0) == 0x80); /* link-local fe80::/10 */
    }
    return false;
}

void gw_addr_from_sockaddr(gw_addr *a, const struct sockaddr *sa)
{
    memset(a, 0, sizeof *a);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        a->family = 4;
        memcpy(a->ip, &in->sin_addr, 4);
        a->port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        a->family = 6;
        memcpy(a->ip, &in6->sin6_addr, 16);
        a->port = ntohs(in6->sin6_port);
    }
}

void gw_addr_to_sockaddr(const gw_addr *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof *ss);
    if (a->family == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, a->ip, 4);
        in->sin_port = htons(a->port);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, a->ip, 16);
        in6->sin6_port = htons(a->port);
    }
}

const char *gw_addr_str(const gw_addr *a)
{
    static _Thread_local char buf[80]; /* per thread: workers log at once */
    char ip[64];
    gw_addr_ip_str(a, ip, sizeof ip);
    snprintf(buf, sizeof buf, a->family == 6 ? "[%s]:%u" : "%s:%u", ip, a->port);
    return buf;
}
