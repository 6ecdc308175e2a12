/* Unit tests for proxy/server_name.c (cmocka): virtual-host name matching. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "server_name.h"

/* Case-insensitive, a trailing dot ignored, a wildcard is exactly one label. */
static void test_match(void **state)
{
    (void)state;
    assert_true(gw_server_name_match("a.example", "A.Example"));
    assert_true(gw_server_name_match("x.y, a.example", "a.example."));
    assert_true(gw_server_name_match(" x.y ,\ta.example\t", "a.example"));
    assert_false(gw_server_name_match("a.example", "b.example"));
    assert_false(gw_server_name_match("a.example", "xa.example"));
    assert_false(gw_server_name_match("a.example", "a.example.org"));
    assert_true(gw_server_name_match("*.example.org", "www.EXAMPLE.org"));
    assert_false(gw_server_name_match("*.example.org", "example.org"));
    assert_false(gw_server_name_match("*.example.org", "a.b.example.org"));
    assert_false(gw_server_name_match("*.example.org", ".example.org"));
    assert_false(gw_server_name_match("", "a"));
    assert_false(gw_server_name_match("a", ""));
    assert_false(gw_server_name_match(NULL, "a"));
    assert_false(gw_server_name_match("a", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
