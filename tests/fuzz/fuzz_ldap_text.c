/* libFuzzer target for proxy/ldap_text.c. The input is a user name (up to the first NUL)
 * and, after it, a template and a group attribute value. Checked: the DN escaping leaves
 * no unescaped special character and reads back (as a DN's first RDN value) as the name
 * when that is a usable group name; the filter escaping leaves none of * ( ) \ raw and no
 * control byte; a template that passes gw_ldap_template_check expands to exactly the
 * expected length when that fits, and fails when it does not; the group-name and URI parsers stay
 * within their buffers and return names without blanks, commas or control bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ldap_text.h"

static bool usable(const char *s)
{
    if (!s[0])
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= 0x20 || *p == 0x7f || *p == ',' || *p == ':')
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char name[96], rest[256];
    size_t n = strnlen((const char *)data, size);
    if (n >= sizeof name)
        return 0;
    memcpy(name, data, n);
    name[n] = 0;
    size_t r = size > n ? size - n - 1 : 0;
    if (r >= sizeof rest)
        r = sizeof rest - 1;
    memcpy(rest, data + (size > n ? n + 1 : size), r);
    rest[r] = 0;

    char esc[3 * sizeof name + 1], dn[sizeof esc + 16], back[sizeof name];
    if (gw_ldap_escape_dn(name, esc, sizeof esc) != 0)
        abort(); /* 3 bytes per input byte always fit */
    for (const char *p = esc; *p; p++) {
        if (*p == '\\') {
            if (!p[1])
                abort();
            p++;
            continue;
        }
        if (strchr(",+\"<>;=", *p) || (unsigned char)*p < 0x20)
            abort();
    }
    snprintf(dn, sizeof dn, "cn=%s,dc=x", esc);
    int g = gw_ldap_group_name(dn, strlen(dn), back, sizeof back);
    if (usable(name) && (g != 0 || strcmp(back, name) != 0))
        abort();
    if (g == 0 && !usable(back))
        abort();

    char fesc[3 * sizeof name + 1];
    if (gw_ldap_escape_filter(name, fesc, sizeof fesc) != 0)
        abort();
    for (const unsigned char *p = (const unsigned char *)fesc; *p; p++)
        if (*p == '*' || *p == '(' || *p == ')' || *p < 0x20 || (*p == '\\' && !(p[1] && p[2])))
            abort();

    char why[160], out[1024];
    if (gw_ldap_template_check(rest, why, sizeof why) == 0) {
        size_t want = 0; /* the expansion's length: %u is fesc, %% one byte */
        for (const char *p = rest; *p; p++)
            if (*p == '%') {
                want += p[1] == 'u' ? strlen(fesc) : 1;
                p++;
            } else {
                want++;
            }
        int e = gw_ldap_expand(rest, fesc, out, sizeof out);
        if (want < sizeof out ? e != 0 || strlen(out) != want : e == 0)
            abort();
    }

    if (gw_ldap_group_name(rest, r, back, sizeof back) == 0 && !usable(back))
        abort();
    int count;
    bool ldaps;
    if (gw_ldap_uris_check(rest, out, sizeof out, &count, &ldaps, why, sizeof why) == 0 &&
        (count < 1 || strncmp(out, "ldap", 4) != 0))
        abort();
    (void)gw_ldap_attr_ok(rest);
    return 0;
}
