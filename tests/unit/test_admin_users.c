/* Unit tests for the admin users file (admin_users.c): lines, roles, refusals with their
 * line number, and the failed-login throttle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_users.h"

#define HASH "$y$j9T$abcdefghijklmnop$ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef"

static int parse(const char *text, gw_admin_users *u, char *err)
{
    return gw_admin_users_parse(text, strlen(text), u, err, 200);
}

static void test_users_ok(void **state)
{
    (void)state;
    gw_admin_users u;
    char err[200] = "";
    assert_int_equal(
        parse("# admins\n\nprom:" HASH " read\r\n  ops.1:$6$salt$xyz\toperate  \n", &u, err), 0);
    assert_int_equal(u.n, 2);
    const gw_admin_user *a = gw_admin_users_find(&u, "prom");
    assert_non_null(a);
    assert_string_equal(a->hash, HASH);
    assert_int_equal(a->role, GW_ADMIN_ROLE_READ);
    a = gw_admin_users_find(&u, "ops.1");
    assert_non_null(a);
    assert_string_equal(a->hash, "$6$salt$xyz");
    assert_int_equal(a->role, GW_ADMIN_ROLE_OPERATE);
    assert_null(gw_admin_users_find(&u, "nobody"));
    assert_null(gw_admin_users_find(&u, "pro"));
    gw_admin_users_free(&u);
    assert_int_equal(parse("", &u, err), 0);
    assert_int_equal(u.n, 0);
    gw_admin_users_free(&u);
}

static void test_users_refused(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"a:" HASH " admin\n", "line 1: user a: expected the role"},
        {"a:" HASH "\n", "line 1: user a: expected the role"},
        {"a:" HASH " read extra\n", "line 1: user a: expected the role"},
        {"\na:secret read\n", "line 2: user a: expected a crypt(3) hash"},
        {"a: " HASH " read\n", "line 1: user a: expected a crypt(3) hash"},
        {"a:" HASH ":x read\n", "line 1: user a: expected a crypt(3) hash"},
        {":" HASH " read\n", "line 1: expected \"name:crypt-hash role\""},
        {"a b:" HASH " read\n", "line 1: expected \"name:crypt-hash role\""},
        {"a:" HASH " read\na:" HASH " operate\n", "line 2: user a is already defined"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gw_admin_users u = {(gw_admin_user *)1, 1};
        char err[200] = "";
        assert_int_equal(parse(cases[i].text, &u, err), -1);
        if (strncmp(err, cases[i].want, strlen(cases[i].want)) != 0)
            fail_msg("case %zu: got \"%s\", want \"%s...\"", i, err, cases[i].want);
        assert_null(u.u);
        assert_int_equal(u.n, 0);
    }
    gw_admin_users u;
    char err[200];
    assert_int_equal(gw_admin_users_parse("a:$6$x read\0", 12, &u, err, sizeof err), -1);
    assert_string_equal(err, "line 1: a NUL byte");
    char longname[100];
    memset(longname, 'n', 70);
    strcpy(longname + 70, ":$6$x read");
    assert_int_equal(parse(longname, &u, err), -1);
    assert_non_null(strstr(err, "longer than 63"));
}

static void test_throttle(void **state)
{
    (void)state;
    gw_throttle *t = calloc(1, sizeof *t);
    assert_non_null(t);
    int64_t now = 1000000;
    for (int i = 1; i < GW_THROTTLE_FAILS; i++) {
        assert_false(gw_throttle_fail(t, "10.0.0.1", now + i));
        assert_int_equal(gw_throttle_locked(t, "10.0.0.1", now + i), 0);
    }
    assert_true(gw_throttle_fail(t, "10.0.0.1", now + 10));
    assert_int_equal(gw_throttle_locked(t, "10.0.0.1", now + 10), GW_THROTTLE_LOCK_MS / 1000);
    assert_int_equal(gw_throttle_locked(t, "10.0.0.2", now + 10), 0); /* another address */
    assert_int_equal(gw_throttle_locked(t, "10.0.0.1", now + 10 + GW_THROTTLE_LOCK_MS - 1), 1);
    assert_int_equal(gw_throttle_locked(t, "10.0.0.1", now + 10 + GW_THROTTLE_LOCK_MS), 0);
    /* Failures spread wider than the window never lock. */
    for (int i = 0; i < 3 * GW_THROTTLE_FAILS; i++)
        assert_false(
            gw_throttle_fail(t, "10.0.0.3", now + (int64_t)i * (GW_THROTTLE_WINDOW_MS / 2)));
    /* A success forgets the failures. */
    for (int i = 1; i < GW_THROTTLE_FAILS; i++)
        gw_throttle_fail(t, "10.0.0.4", now);
    gw_throttle_ok(t, "10.0.0.4");
    assert_false(gw_throttle_fail(t, "10.0.0.4", now));
    /* A full table reuses the oldest slot, keeping the locked-out address. */
    for (int i = 0; i < GW_THROTTLE_FAILS; i++)
        gw_throttle_fail(t, "10.0.0.5", now);
    assert_true(gw_throttle_locked(t, "10.0.0.5", now) > 0);
    char a[48];
    for (int i = 0; i < 2 * GW_THROTTLE_SLOTS; i++) {
        snprintf(a, sizeof a, "192.0.2.%d/%d", i % 256, i);
        gw_throttle_fail(t, a, now + 1 + i);
    }
    assert_true(gw_throttle_locked(t, "10.0.0.5", now + 1000) > 0);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_users_ok),
        cmocka_unit_test(test_users_refused),
        cmocka_unit_test(test_throttle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
