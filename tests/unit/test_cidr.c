/* Unit tests for CIDR lists (proxy/cidr.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <string.h>

#include "cidr.h"

static gw_addr ip(const char *s)
{
    gw_addr a;
    memset(&a, 0, sizeof a);
    if (inet_pton(AF_INET, s, a.ip) == 1)
        a.family = 4;
    else if (inet_pton(AF_INET6, s, a.ip) == 1)
        a.family = 6;
    return a;
}

static bool in(const char *list, const char *addr)
{
    gw_addr a = ip(addr);
    return gw_cidr_list_match(list, &a);
}

static void test_match(void **state)
{
    (void)state;
    assert_true(in("10.0.0.0/8", "10.255.1.2"));
    assert_false(in("10.0.0.0/8", "11.0.0.1"));
    assert_true(in("192.0.2.7", "192.0.2.7"));
    assert_false(in("192.0.2.7", "192.0.2.8"));
    assert_true(in("172.16.0.0/12", "172.31.255.255"));
    assert_false(in("172.16.0.0/12", "172.32.0.0"));
    assert_true(in("0.0.0.0/0", "8.8.8.8"));
    assert_false(in("0.0.0.0/0", "::1")); /* families never mix */
    assert_true(in("2001:db8::/32", "2001:db8:ffff::1"));
    assert_false(in("2001:db8::/32", "2001:db9::1"));
    assert_true(in("::1", "::1"));
    assert_true(in("127.0.0.0/8", "::ffff:127.0.0.3")); /* mapped addresses are IPv4 */
    assert_true(in("::ffff:127.0.0.0/104", "127.0.0.3"));
    assert_true(in("1.2.3.4, 10.0.0.0/8  127.0.0.2", "127.0.0.2"));
    assert_false(in("", "127.0.0.1"));
    assert_false(in("bogus, 127.0.0.2", "127.0.0.1"));
}

static void test_check(void **state)
{
    (void)state;
    char why[200];
    assert_int_equal(gw_cidr_list_check("", why, sizeof why), 0);
    assert_int_equal(gw_cidr_list_check("10.0.0.0/8,2001:db8::/32 , 192.0.2.7", why, sizeof why),
                     0);
    const char *bad[] = {"10.0.0.1/8",        "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1",
                         "10.0.0.0/8x",       "example.org", "::/129",    "1.2.3.4/0008",
                         "::ffff:1.2.3.0/64", "1.2.3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = 0;
        assert_int_equal(gw_cidr_list_check(bad[i], why, sizeof why), -1);
        assert_non_null(strstr(why, "expected"));
    }
    gw_cidr c;
    assert_int_equal(gw_cidr_parse("10.0.0.0/8", 10, &c), 0);
    assert_int_equal(c.bits, 8);
    assert_int_equal(gw_cidr_parse("::ffff:10.0.0.0/104", 19, &c), 0);
    assert_int_equal(c.net.family, 4);
    assert_int_equal(c.bits, 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
