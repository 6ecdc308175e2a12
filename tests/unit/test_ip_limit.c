/* Unit tests for the per-address session counter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "ip_limit.h"

static gw_addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    gw_addr x = {.family = 4, .ip = {a, b, c, d}};
    return x;
}

static void test_limit_and_release(void **state)
{
    (void)state;
    gw_ip_table *t = gw_ip_table_new();
    gw_addr a = v4(127, 0, 0, 1), b = v4(127, 0, 0, 2);
    assert_int_equal(gw_ip_acquire(t, &a, 2), 0);
    assert_int_equal(gw_ip_acquire(t, &a, 2), 0);
    assert_int_equal(gw_ip_acquire(t, &a, 2), -1);
    assert_int_equal(gw_ip_acquire(t, &b, 2), 0); /* other addresses are independent */
    assert_int_equal(gw_ip_count(t, &a), 2);
    gw_ip_release(t, &a);
    assert_int_equal(gw_ip_acquire(t, &a, 2), 0);
    gw_ip_release(t, &a);
    gw_ip_release(t, &a);
    gw_ip_release(t, &a); /* extra releases are harmless */
    assert_int_equal(gw_ip_count(t, &a), 0);
    assert_int_equal(gw_ip_count(t, &b), 1);
    gw_ip_table_free(t);
}

static void test_mapped_is_same_client(void **state)
{
    (void)state;
    gw_ip_table *t = gw_ip_table_new();
    gw_addr a = v4(10, 1, 2, 3);
    gw_addr m = {.family = 6, .ip = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3}};
    assert_int_equal(gw_ip_acquire(t, &a, 1), 0);
    /* SECURITY: ::ffff:10.1.2.3 must not get a second quota. */
    assert_int_equal(gw_ip_acquire(t, &m, 1), -1);
    gw_ip_release(t, &m);
    assert_int_equal(gw_ip_count(t, &a), 0);
    gw_ip_table_free(t);
}

static void test_many_addresses(void **state)
{
    (void)state;
    gw_ip_table *t = gw_ip_table_new();
    for (int i = 0; i < 20000; i++) {
        gw_addr a = v4(10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i);
        assert_int_equal(gw_ip_acquire(t, &a, 1), 0);
    }
    for (int i = 0; i < 20000; i++) {
        gw_addr a = v4(10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i);
        assert_int_equal(gw_ip_count(t, &a), 1);
        gw_ip_release(t, &a);
    }
    gw_ip_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limit_and_release),
        cmocka_unit_test(test_mapped_is_same_client),
        cmocka_unit_test(test_many_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
