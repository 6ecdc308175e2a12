/* proxy/ldap_text.c: the user name escaped for a DN (RFC 4514) and a filter (RFC 4515),
 * %u templates, ldap_uri lists, attribute names, and group names from DNs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ldap_text.h"

static void test_escape_dn(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(gw_ldap_escape_dn("alice", out, sizeof out), 0);
    assert_string_equal(out, "alice");
    assert_int_equal(gw_ldap_escape_dn("a,ou=admins", out, sizeof out), 0);
    assert_string_equal(out, "a\\,ou\\=admins");
    assert_int_equal(gw_ldap_escape_dn("x+y\"z\\<>;", out, sizeof out), 0);
    assert_string_equal(out, "x\\+y\\\"z\\\\\\<\\>\\;");
    assert_int_equal(gw_ldap_escape_dn("#lead trail ", out, sizeof out), 0);
    assert_string_equal(out, "\\#lead trail\\ ");
    assert_int_equal(gw_ldap_escape_dn(" x", out, sizeof out), 0);
    assert_string_equal(out, "\\ x");
    assert_int_equal(gw_ldap_escape_dn("a\r\nb\x7f", out, sizeof out), 0);
    assert_string_equal(out, "a\\0d\\0ab\\7f");
    assert_int_equal(gw_ldap_escape_dn("j\xc3\xbcrgen", out, sizeof out), 0); /* UTF-8 kept */
    assert_string_equal(out, "j\xc3\xbcrgen");
    assert_int_equal(gw_ldap_escape_dn("", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(gw_ldap_escape_dn(",,,", out, 6), -1); /* needs 7 */
    assert_int_equal(gw_ldap_escape_dn(",,,", out, 7), 0);
}

static void test_escape_filter(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(gw_ldap_escape_filter("alice", out, sizeof out), 0);
    assert_string_equal(out, "alice");
    assert_int_equal(gw_ldap_escape_filter("x*)(uid=*", out, sizeof out), 0);
    assert_string_equal(out, "x\\2a\\29\\28uid=\\2a");
    assert_int_equal(gw_ldap_escape_filter("a\\b\x01", out, sizeof out), 0);
    assert_string_equal(out, "a\\5cb\\01");
    assert_int_equal(gw_ldap_escape_filter("*", out, 3), -1);
    assert_int_equal(gw_ldap_escape_filter("*", out, 4), 0);
}

static void test_templates(void **state)
{
    (void)state;
    char out[64], why[128];
    assert_int_equal(gw_ldap_expand("uid=%u,ou=people", "bob", out, sizeof out), 0);
    assert_string_equal(out, "uid=bob,ou=people");
    assert_int_equal(gw_ldap_expand("(|(uid=%u)(mail=%u@x))", "b", out, sizeof out), 0);
    assert_string_equal(out, "(|(uid=b)(mail=b@x))");
    assert_int_equal(gw_ldap_expand("100%%-%u", "b", out, sizeof out), 0);
    assert_string_equal(out, "100%-b");
    assert_int_equal(gw_ldap_expand("%s", "b", out, sizeof out), -1);
    assert_int_equal(gw_ldap_expand("x%", "b", out, sizeof out), -1);
    assert_int_equal(gw_ldap_expand("uid=%u", "0123456789", out, 14), -1);
    assert_int_equal(gw_ldap_expand("uid=%u", "0123456789", out, 15), 0);
    assert_int_equal(gw_ldap_template_check("uid=%u,dc=x", why, sizeof why), 0);
    assert_int_equal(gw_ldap_template_check("(uid=%u)(x=%%)", why, sizeof why), 0);
    assert_int_equal(gw_ldap_template_check("uid=bob", why, sizeof why), -1);
    assert_non_null(strstr(why, "needs %u"));
    assert_int_equal(gw_ldap_template_check("uid=%s", why, sizeof why), -1);
    assert_int_equal(gw_ldap_template_check("uid=%u%", why, sizeof why), -1);
}

static void test_uris(void **state)
{
    (void)state;
    char out[128], why[128];
    int n;
    bool ldaps;
    assert_int_equal(gw_ldap_uris_check(" ldap://a:389, ldaps://b ", out, sizeof out, &n, &ldaps,
                                        why, sizeof why),
                     0);
    assert_int_equal(n, 2);
    assert_true(ldaps);
    assert_string_equal(out, "ldap://a:389 ldaps://b");
    assert_int_equal(gw_ldap_uris_check("ldap://[::1]:1389", NULL, 0, &n, &ldaps, why, sizeof why),
                     0);
    assert_false(ldaps);
    const char *bad[] = {"",
                         " , ",
                         "http://a",
                         "ldap://",
                         "ldap:///dc=x",
                         "ldapi://%2fs",
                         "ldap://a ldap:/b",
                         "ldaps://:636"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(gw_ldap_uris_check(bad[i], NULL, 0, &n, &ldaps, why, sizeof why), -1);
    assert_int_equal(gw_ldap_uris_check("ldap://a ldap://b", out, 12, &n, &ldaps, why, sizeof why),
                     -1);
}

static void test_attr(void **state)
{
    (void)state;
    assert_true(gw_ldap_attr_ok("memberOf"));
    assert_true(gw_ldap_attr_ok("x-ftp-backend"));
    assert_true(gw_ldap_attr_ok("1.3.6.1.4.1.1466.115.121.1.15"));
    assert_false(gw_ldap_attr_ok(""));
    assert_false(gw_ldap_attr_ok("member of"));
    assert_false(gw_ldap_attr_ok("-x"));
    assert_false(gw_ldap_attr_ok("1..2"));
    assert_false(gw_ldap_attr_ok("1.2."));
    assert_false(gw_ldap_attr_ok("cn;lang-de"));
}

static int group(const char *v, char *out, size_t cap)
{
    return gw_ldap_group_name(v, strlen(v), out, cap);
}

static void test_group_names(void **state)
{
    (void)state;
    char g[16];
    assert_int_equal(group("cn=ftp-ro,ou=groups,dc=example,dc=org", g, sizeof g), 0);
    assert_string_equal(g, "ftp-ro");
    assert_int_equal(group("CN=Admins+uid=x,dc=ad", g, sizeof g), 0);
    assert_string_equal(g, "Admins");
    assert_int_equal(group("cn=a\\2cb,dc=x", g, sizeof g), -1); /* a comma: no usable name */
    assert_int_equal(group("cn=a\\=b\\41,dc=x", g, sizeof g), 0);
    assert_string_equal(g, "a=bA");
    assert_int_equal(group("staff", g, sizeof g), 0); /* not a DN: the value itself */
    assert_string_equal(g, "staff");
    assert_int_equal(group("cn=two words,dc=x", g, sizeof g), -1);
    assert_int_equal(group("cn=,dc=x", g, sizeof g), -1);
    assert_int_equal(group("", g, sizeof g), -1);
    assert_int_equal(group("cn=x\\", g, sizeof g), -1);
    assert_int_equal(group("cn=0123456789abcdef", g, sizeof g), -1); /* does not fit */
    assert_int_equal(group("cn=0123456789abcde", g, sizeof g), 0);
    assert_int_equal(gw_ldap_group_name("cn=ab,dc=x", 4, g, sizeof g), 0); /* the length */
    assert_string_equal(g, "a");
}

/* What the DN escaping makes is read back by the group-name parser as the same name. */
static void test_round_trip(void **state)
{
    (void)state;
    const char *names[] = {"alice", "a+b", "#x", "q\"uo<te>;", "back\\slash", "x=y"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char esc[64], dn[80], back[64];
        assert_int_equal(gw_ldap_escape_dn(names[i], esc, sizeof esc), 0);
        assert_int_equal(gw_ldap_expand("cn=%u,ou=g", esc, dn, sizeof dn), 0);
        assert_int_equal(gw_ldap_group_name(dn, strlen(dn), back, sizeof back), 0);
        assert_string_equal(back, names[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_dn),  cmocka_unit_test(test_escape_filter),
        cmocka_unit_test(test_templates),  cmocka_unit_test(test_uris),
        cmocka_unit_test(test_attr),       cmocka_unit_test(test_group_names),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
