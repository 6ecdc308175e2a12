/* RFC 4514 / 4515 escaping, %u templates, URI lists and group names for auth = ldap. */
#include "ldap_text.h"

#include <stdio.h>
#include <string.h>

static const char HEX[] = "0123456789abcdef";

/* out[*n..] = the bytes of s (len), if they fit with a final NUL. */
static int put(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n + len >= cap)
        return -1;
    memcpy(out + *n, s, len);
    *n += len;
    out[*n] = 0;
    return 0;
}

static int put_hex(char *out, size_t cap, size_t *n, unsigned char c)
{
    char b[3] = {'\\', HEX[c >> 4], HEX[c & 15]};
    return put(out, cap, n, b, 3);
}

int gw_ldap_escape_dn(const char *in, char *out, size_t cap)
{
    size_t n = 0, len = strlen(in);
    if (cap == 0)
        return -1;
    out[0] = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        int r;
        if (c < 0x20 || c == 0x7f)
            r = put_hex(out, cap, &n, c);
        else if (strchr(",+\"\\<>;=", c) || (i == 0 && (c == '#' || c == ' ')) ||
                 (i == len - 1 && c == ' ')) {
            char b[2] = {'\\', (char)c};
            r = put(out, cap, &n, b, 2);
        } else {
            r = put(out, cap, &n, (const char *)&in[i], 1);
        }
        if (r != 0)
            return -1;
    }
    return 0;
}

int gw_ldap_escape_filter(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    if (cap == 0)
        return -1;
    out[0] = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        int r = *p < 0x20 || *p == 0x7f || strchr("*()\\", *p)
                    ? put_hex(out, cap, &n, *p)
                    : put(out, cap, &n, (const char *)p, 1);
        if (r != 0)
            return -1;
    }
    return 0;
}

int gw_ldap_expand(const char *tmpl, const char *value, char *out, size_t cap)
{
    size_t n = 0;
    if (cap == 0)
        return -1;
    out[0] = 0;
    for (const char *p = tmpl; *p; p++) {
        int r;
        if (*p != '%')
            r = put(out, cap, &n, p, 1);
        else if (p[1] == 'u')
            r = put(out, cap, &n, value, strlen(value));
        else if (p[1] == '%')
            r = put(out, cap, &n, "%", 1);
        else
            return -1;
        if (r != 0)
            return -1;
        if (*p == '%')
            p++;
    }
    return 0;
}

int gw_ldap_template_check(const char *tmpl, char *why, size_t cap)
{
    int users = 0;
    for (const char *p = tmpl; *p; p++) {
        if (*p != '%')
            continue;
        if (p[1] == 'u')
            users++;
        else if (p[1] != '%') {
            snprintf(why, cap, "only %%u (the escaped user name) and %%%% may follow %%");
            return -1;
        }
        p++;
    }
    if (users == 0) {
        snprintf(why, cap, "needs %%u (the escaped user name)");
        return -1;
    }
    return 0;
}

int gw_ldap_uris_check(const char *v, char *out, size_t cap, int *n, bool *ldaps, char *why,
                       size_t whycap)
{
    size_t used = 0;
    *n = 0;
    *ldaps = false;
    if (out && cap)
        out[0] = 0;
    for (const char *p = v; *p;) {
        p += strspn(p, " \t,");
        size_t len = strcspn(p, " \t,");
        if (len == 0)
            break;
        size_t scheme = strncmp(p, "ldap://", 7) == 0 ? 7 : strncmp(p, "ldaps://", 8) == 0 ? 8 : 0;
        if (scheme == 0 || len == scheme || p[scheme] == '/' || p[scheme] == ':') {
            snprintf(why, whycap, "\"%.*s\": expected ldap://HOST[:PORT] or ldaps://HOST[:PORT]",
                     (int)(len < 80 ? len : 80), p);
            return -1;
        }
        if (scheme == 8)
            *ldaps = true;
        if (out && ((used && put(out, cap, &used, " ", 1) != 0) || put(out, cap, &used, p, len))) {
            snprintf(why, whycap, "too long");
            return -1;
        }
        (*n)++;
        p += len;
    }
    if (*n == 0) {
        snprintf(why, whycap, "no URI (expected ldap://HOST or ldaps://HOST)");
        return -1;
    }
    return 0;
}

static bool alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool digit(char c)
{
    return c >= '0' && c <= '9';
}

bool gw_ldap_attr_ok(const char *s)
{
    if (!s[0] || strlen(s) > 63)
        return false;
    if (digit(s[0])) { /* numericoid: digits separated by single dots */
        for (const char *p = s; *p; p++)
            if (!digit(*p) && !(*p == '.' && p[1] && digit(p[1]) && p > s))
                return false;
        return true;
    }
    if (!alpha(s[0]))
        return false;
    for (const char *p = s; *p; p++)
        if (!alpha(*p) && !digit(*p) && *p != '-')
            return false;
    return true;
}

static int hexval(char c)
{
    return digit(c)                 ? c - '0'
           : (c >= 'a' && c <= 'f') ? c - 'a' + 10
           : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                    : -1;
}

int gw_ldap_group_name(const char *value, size_t len, char *out, size_t cap)
{
    if (cap == 0)
        return -1;
    out[0] = 0;
    /* A DN: an attribute type, '=', then the first RDN's value up to an unescaped , or +. */
    size_t t = 0;
    while (t < len && (alpha(value[t]) || digit(value[t]) || value[t] == '-' || value[t] == '.'))
        t++;
    size_t start = 0, end = len;
    bool dn = t > 0 && t < len && value[t] == '=';
    if (dn)
        start = t + 1;
    size_t n = 0;
    for (size_t i = start; i < end; i++) {
        unsigned char c = (unsigned char)value[i];
        if (dn && (c == ',' || c == '+'))
            break;
        if (dn && c == '\\') {
            if (i + 2 < end && hexval(value[i + 1]) >= 0 && hexval(value[i + 2]) >= 0) {
                c = (unsigned char)(hexval(value[i + 1]) * 16 + hexval(value[i + 2]));
                i += 2;
            } else if (i + 1 < end) {
                c = (unsigned char)value[++i];
            } else {
                return -1;
            }
        }
        if (c <= 0x20 || c == 0x7f || c == ',' || c == ':' || n + 1 >= cap)
            return -1;
        out[n++] = (char)c;
    }
    out[n] = 0;
    return n > 0 ? 0 : -1;
}
