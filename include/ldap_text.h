/* The text side of `auth = ldap` (auth_ldap.h): escaping a user name for a DN (RFC 4514)
 * and for a search filter (RFC 4515), the %u templates of ldap_user_dn and ldap_filter,
 * ldap_uri lists, and a group name from a group attribute's value. Pure: no libuv, no
 * OpenSSL, no libldap (unit-tested and fuzzed alone). */
#ifndef GW_LDAP_TEXT_H
#define GW_LDAP_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* An attribute value for a DN (RFC 4514 section 2.4): , + " \ < > ; are backslash-escaped,
 * so are a leading # or blank and a trailing blank; control bytes (and 0x7f) become \XX.
 * Other bytes (UTF-8) are kept. 0, or -1 when out (cap) is too small. */
int gw_ldap_escape_dn(const char *in, char *out, size_t cap);

/* An assertion value for a filter (RFC 4515 section 3): * ( ) \ and control bytes become
 * \XX. 0, or -1 when out is too small. */
int gw_ldap_escape_filter(const char *in, char *out, size_t cap);

/* A template: %u is replaced by value (already escaped for where it goes), %% by %.
 * 0, or -1 (too long, or another % sequence). */
int gw_ldap_expand(const char *tmpl, const char *value, char *out, size_t cap);

/* A template as configured: exactly the sequences %u and %%, at least one %u. 0, or -1
 * with the reason in why. */
int gw_ldap_template_check(const char *tmpl, char *why, size_t cap);

/* ldap_uri: one or more ldap:// or ldaps:// URIs separated by blanks or commas, each with a
 * host. 0 (*n: how many, *ldaps: whether any is ldaps://), or -1 with the reason in why.
 * out (may be NULL) receives them separated by single blanks (ldap_initialize's form). */
int gw_ldap_uris_check(const char *v, char *out, size_t cap, int *n, bool *ldaps, char *why,
                       size_t whycap);

/* An attribute description as ldap_group_attr / ldap_backend_attr name it: a letter, then
 * letters, digits and hyphens (RFC 4512 descr), or an OID. */
bool gw_ldap_attr_ok(const char *s);

/* The group a value of the group attribute names: a DN's first RDN's value, unescaped
 * ("cn=ftp-ro,ou=groups,dc=example" -> "ftp-ro"), else the value itself. The name must fit
 * a users file's groups= (no blank, comma, control byte; at most cap - 1 bytes). 0, or -1
 * when the value gives no usable name. */
int gw_ldap_group_name(const char *value, size_t len, char *out, size_t cap);

#endif
