/* Unit tests for the sibling-resumption registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "siblings.h"

static gw_addr v4(uint8_t d, uint16_t port)
{
    gw_addr x = {.family = 4, .ip = {127, 0, 0, d}, .port = port};
    return x;
}

static void tag(uint8_t t[GW_SIB_TAG_LEN], uint8_t n)
{
    for (int i = 0; i < GW_SIB_TAG_LEN; i++)
        t[i] = (uint8_t)(n * 37 + i);
}

static int setup(void **state)
{
    (void)state;
    gw_sib_reset();
    return 0;
}

static void test_siblings(void **state)
{
    (void)state;
    uint8_t a[16], b[16], c[16], d[16], e[16], unknown[16];
    tag(a, 1), tag(b, 2), tag(c, 3), tag(d, 4), tag(e, 5), tag(unknown, 9);
    gw_addr x1 = v4(1, 40000), x1b = v4(1, 40001), x2 = v4(2, 40000);
    gw_sib_issued(a, &x1, 100);
    gw_sib_issued(b, &x1b, 100); /* another port of the same host: the same client address */
    gw_sib_issued(c, &x1, 100);
    gw_sib_issued(d, &x2, 100);
    gw_sib_issued(e, &x1, 100);
    assert_int_equal(gw_sib_count(), 5);
    assert_int_equal(gw_sib_check(b, a, 100), GW_SIB_NOT_LOGGED_IN);
    gw_sib_login(a, "alice", "be");
    gw_sib_login(b, "alice", "be");
    gw_sib_login(c, "bob", "be");
    gw_sib_login(d, "alice", "be");
    gw_sib_login(e, "alice", "other");
    assert_int_equal(gw_sib_check(b, a, 100), GW_SIB_SIBLING);
    assert_int_equal(gw_sib_check(a, b, 100), GW_SIB_SIBLING);
    assert_int_equal(gw_sib_check(c, a, 100), GW_SIB_OTHER_USER);
    assert_int_equal(gw_sib_check(e, a, 100), GW_SIB_OTHER_USER); /* same name, other backend */
    assert_int_equal(gw_sib_check(d, a, 100), GW_SIB_OTHER_ADDRESS);
    assert_int_equal(gw_sib_check(b, unknown, 100), GW_SIB_UNKNOWN);
    assert_int_equal(gw_sib_check_route(b, a, 100), GW_SIB_SIBLING);
    assert_int_equal(gw_sib_check_route(c, a, 100), GW_SIB_OTHER_USER);
    /* Recently ended: still a sibling; past the grace: unknown, and pruned. */
    gw_sib_ended(a, 200);
    assert_int_equal(gw_sib_check(b, a, 200 + GW_SIB_GRACE_S - 1), GW_SIB_SIBLING);
    assert_int_equal(gw_sib_check(b, a, 200 + GW_SIB_GRACE_S), GW_SIB_UNKNOWN);
    /* Logged out (REIN): no longer anyone's sibling. */
    gw_sib_login(b, NULL, NULL);
    assert_int_equal(gw_sib_check(e, b, 100), GW_SIB_NOT_LOGGED_IN);
    assert_string_equal(gw_sib_reason(GW_SIB_OTHER_USER), "resumed the session of another user");
    assert_string_equal(gw_sib_reason(GW_SIB_OTHER_ADDRESS),
                        "resumed the session of another client address");
}

static void test_prune_on_issue(void **state)
{
    (void)state;
    uint8_t a[16], b[16];
    tag(a, 1);
    memcpy(b, a, sizeof b);
    b[15] ^= 0xff; /* the same bucket */
    gw_addr x = v4(1, 1);
    gw_sib_issued(a, &x, 100);
    gw_sib_ended(a, 100);
    gw_sib_issued(b, &x, 100 + GW_SIB_GRACE_S + 1);
    assert_int_equal(gw_sib_count(), 1);
}

/* Entries fill blocks of their own (off the malloc heap): more than one block's worth all
 * stay findable, gw_sib_bytes counts the pages written to, and a reset gives them back. */
static void test_blocks(void **state)
{
    (void)state;
    enum { N = 1000 }; /* several 64 KiB blocks */
    gw_addr x = v4(1, 1);
    uint8_t t[16], first[16];
    size_t empty = gw_sib_bytes();
    for (int i = 0; i < N; i++) {
        memset(t, 0, sizeof t);
        memcpy(t, &i, sizeof i);
        gw_sib_issued(t, &x, 100);
        gw_sib_login(t, "alice", "be");
    }
    assert_int_equal(gw_sib_count(), N);
    size_t held = gw_sib_bytes();
    assert_true(held >= N * 200 && held <= N * 300 + 4 * 65536);
    memset(first, 0, sizeof first);
    for (int i = 1; i < N; i++) {
        memset(t, 0, sizeof t);
        memcpy(t, &i, sizeof i);
        assert_int_equal(gw_sib_check(first, t, 100), GW_SIB_SIBLING);
    }
    gw_sib_reset();
    assert_int_equal(gw_sib_count(), 0);
    assert_true(gw_sib_bytes() <= (empty > 0 ? empty : 65536));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_siblings, setup),
        cmocka_unit_test_setup(test_prune_on_issue, setup),
        cmocka_unit_test_setup(test_blocks, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
