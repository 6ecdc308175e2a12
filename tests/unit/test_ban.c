/* Unit tests for the ban table (proxy/ban.c): the window, bans and their expiry, exempt
 * networks, IPv6 /64 keys and the cap. Time is passed in (milliseconds). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "ban.h"
#include "config.h"

static gw_addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    gw_addr x = {.family = 4, .ip = {a, b, c, d}, .port = 1234};
    return x;
}

static int fail_at(gw_ban_table *t, gw_addr a, uint64_t ms, const gw_ban_policy *p, int *n)
{
    gw_ban_result r;
    gw_ban_fail(t, &a, ms, p, &r);
    if (n)
        *n = r.failures;
    return (int)r.what;
}

static int expired;
static gw_addr expired_key;
static void on_expired(const gw_addr *k, void *arg)
{
    (void)arg;
    expired++;
    expired_key = *k;
}

static void test_window_and_ban(void **state)
{
    (void)state;
    gw_ban_policy p = {.after = 3, .window = 10, .time = 60};
    gw_ban_table *t = gw_ban_table_new(0);
    gw_addr a = v4(127, 0, 0, 2), b = v4(127, 0, 0, 3);
    int n;
    assert_int_equal(fail_at(t, a, 1000, &p, &n), GW_BAN_COUNTED);
    assert_int_equal(n, 1);
    assert_int_equal(fail_at(t, a, 5000, &p, &n), GW_BAN_COUNTED);
    assert_int_equal(n, 2);
    /* the first failure leaves the window (sliding): still two */
    assert_int_equal(fail_at(t, a, 11500, &p, &n), GW_BAN_COUNTED);
    assert_int_equal(n, 2);
    assert_int_equal(fail_at(t, b, 12000, &p, &n), GW_BAN_COUNTED); /* its own count */
    assert_int_equal(n, 1);
    assert_int_equal(gw_ban_left(t, &a, 12000, &p), 0);
    assert_int_equal(fail_at(t, a, 12000, &p, &n), GW_BAN_NEW);
    assert_int_equal(n, 3);
    assert_int_equal(gw_ban_left(t, &a, 12000, &p), 60000);
    assert_int_equal(gw_ban_left(t, &a, 71999, &p), 1);
    assert_int_equal(gw_ban_left(t, &b, 12000, &p), 0);
    assert_int_equal(gw_ban_banned(t), 1);
    /* banned: further failures are not counted and do not extend it */
    assert_int_equal(fail_at(t, a, 30000, &p, NULL), GW_BAN_ALREADY);
    assert_int_equal(gw_ban_left(t, &a, 30000, &p), 42000);
    gw_ban_table_free(t);
}

static void test_expiry(void **state)
{
    (void)state;
    gw_ban_policy p = {.after = 2, .window = 600, .time = 2};
    gw_ban_table *t = gw_ban_table_new(0);
    gw_addr a = v4(10, 0, 0, 1);
    expired = 0;
    fail_at(t, a, 0, &p, NULL);
    assert_int_equal(fail_at(t, a, 100, &p, NULL), GW_BAN_NEW);
    assert_int_equal(gw_ban_expire(t, 2099, &p, on_expired, NULL), 0);
    assert_int_equal(expired, 0);
    assert_true(gw_ban_left(t, &a, 2099, &p) > 0);
    assert_int_equal(gw_ban_left(t, &a, 2100, &p), 0); /* over, even before the sweep */
    assert_int_equal(gw_ban_expire(t, 2100, &p, on_expired, NULL), 1);
    assert_int_equal(expired, 1);
    assert_memory_equal(expired_key.ip, a.ip, 4);
    assert_int_equal(gw_ban_tracked(t), 0);
    /* the count starts again from zero */
    int n;
    assert_int_equal(fail_at(t, a, 2200, &p, &n), GW_BAN_COUNTED);
    assert_int_equal(n, 1);
    /* watched addresses are forgotten once their last failure leaves the window */
    assert_int_equal(gw_ban_expire(t, 2200 + 599000, &p, NULL, NULL), 0);
    assert_int_equal(gw_ban_tracked(t), 1);
    assert_int_equal(gw_ban_expire(t, 2200 + 601000, &p, NULL, NULL), 0);
    assert_int_equal(gw_ban_tracked(t), 0);
    /* bans end in their order even when ban_time shrank (a reload) */
    gw_addr x = v4(10, 0, 0, 2), y = v4(10, 0, 0, 3);
    p.after = 1;
    p.time = 100;
    assert_int_equal(fail_at(t, x, 1000000, &p, NULL), GW_BAN_NEW);
    p.time = 10;
    assert_int_equal(fail_at(t, y, 1001000, &p, NULL), GW_BAN_NEW);
    expired = 0;
    assert_int_equal(gw_ban_expire(t, 1011000, &p, on_expired, NULL), 1);
    assert_memory_equal(expired_key.ip, y.ip, 4);
    assert_int_equal(gw_ban_expire(t, 1100000, &p, on_expired, NULL), 1);
    assert_memory_equal(expired_key.ip, x.ip, 4);
    gw_ban_table_free(t);
}

static void test_off_and_exempt(void **state)
{
    (void)state;
    gw_ban_policy p = {.after = 1, .window = 60, .time = 60, .exempt = "127.0.0.0/30, ::1"};
    gw_ban_table *t = gw_ban_table_new(0);
    gw_addr ex = v4(127, 0, 0, 2), other = v4(127, 0, 0, 5);
    assert_int_equal(fail_at(t, ex, 0, &p, NULL), GW_BAN_IGNORED);
    assert_int_equal(gw_ban_tracked(t), 0);
    assert_int_equal(fail_at(t, other, 0, &p, NULL), GW_BAN_NEW);
    /* exempt later (a reload): refused no more */
    assert_true(gw_ban_left(t, &other, 0, &p) > 0);
    gw_ban_policy q = p;
    q.exempt = "127.0.0.5";
    assert_int_equal(gw_ban_left(t, &other, 0, &q), 0);
    /* off: nothing counted, nothing refused, the ban kept */
    q = p;
    q.after = 0;
    assert_int_equal(fail_at(t, v4(1, 2, 3, 4), 0, &q, NULL), GW_BAN_IGNORED);
    assert_int_equal(gw_ban_left(t, &other, 0, &q), 0);
    assert_true(gw_ban_left(t, &other, 0, &p) > 0);
    assert_int_equal(gw_ban_tracked(t), 1);
    gw_ban_table_free(t);
}

static void test_keys(void **state)
{
    (void)state;
    gw_ban_policy p = {.after = 2, .window = 60, .time = 60};
    gw_ban_table *t = gw_ban_table_new(0);
    /* one /64: two addresses count together */
    gw_addr a = {.family = 6, .ip = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}};
    gw_addr b = a, c = a;
    b.ip[15] = 2;
    c.ip[7] = 2; /* another /64 */
    assert_int_equal(fail_at(t, a, 0, &p, NULL), GW_BAN_COUNTED);
    assert_int_equal(fail_at(t, c, 0, &p, NULL), GW_BAN_COUNTED);
    assert_int_equal(fail_at(t, b, 0, &p, NULL), GW_BAN_NEW);
    assert_true(gw_ban_left(t, &b, 0, &p) > 0);
    assert_int_equal(gw_ban_left(t, &c, 0, &p), 0);
    /* ::ffff:10.1.1.1 is 10.1.1.1 */
    gw_addr m = {.family = 6, .ip = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 1, 1}};
    assert_int_equal(fail_at(t, m, 0, &p, NULL), GW_BAN_COUNTED);
    assert_int_equal(fail_at(t, v4(10, 1, 1, 1), 0, &p, NULL), GW_BAN_NEW);
    gw_addr k;
    gw_ban_key(&m, &k);
    assert_int_equal(k.family, 4);
    assert_int_equal(k.port, 0);
    gw_ban_table_free(t);
}

static void test_cap(void **state)
{
    (void)state;
    gw_ban_policy p = {.after = 2, .window = 600, .time = 600};
    gw_ban_table *t = gw_ban_table_new(4);
    gw_ban_result r;
    gw_addr banned = v4(9, 9, 9, 9);
    fail_at(t, banned, 0, &p, NULL);
    assert_int_equal(fail_at(t, banned, 0, &p, NULL), GW_BAN_NEW);
    /* a spray of addresses: the table stays at 4, the oldest watched one goes first and the
     * ban stays */
    for (int i = 0; i < 1000; i++) {
        gw_addr a = v4(10, 0, (uint8_t)(i >> 8), (uint8_t)i);
        gw_ban_fail(t, &a, (uint64_t)i, &p, &r);
        assert_int_equal(r.what, GW_BAN_COUNTED);
        assert_true(gw_ban_tracked(t) <= 4);
        assert_false(r.evicted_ban);
    }
    assert_int_equal(gw_ban_tracked(t), 4);
    assert_true(gw_ban_left(t, &banned, 1000, &p) > 0);
    /* the three newest are still counted: one more failure bans 10.0.3.231 */
    assert_int_equal(fail_at(t, v4(10, 0, 3, 231), 1000, &p, NULL), GW_BAN_NEW);
    /* a recently active address refreshed is kept over older ones */
    assert_int_equal(fail_at(t, v4(10, 0, 3, 230), 1001, &p, NULL), GW_BAN_NEW);
    assert_int_equal(fail_at(t, v4(10, 0, 3, 229), 1002, &p, NULL), GW_BAN_NEW);
    /* all four banned: a new address evicts the ban that ends first */
    gw_ban_fail(t, &(gw_addr){.family = 4, .ip = {1, 1, 1, 1}}, 1003, &p, &r);
    assert_true(r.evicted_ban);
    assert_memory_equal(r.evicted_key.ip, banned.ip, 4);
    assert_int_equal(gw_ban_tracked(t), 4);
    assert_int_equal(gw_ban_banned(t), 3);
    gw_ban_table_free(t);
}

static void test_ring_full(void **state)
{
    (void)state;
    /* ban_after = 32 (the most): the ring holds exactly the failures needed */
    gw_ban_policy p = {.after = GW_BAN_AFTER_MAX, .window = 100, .time = 1};
    gw_ban_table *t = gw_ban_table_new(0);
    gw_addr a = v4(1, 1, 1, 1);
    int n = 0;
    /* 40 failures spread over 200 s: never 32 within 100 s */
    for (int i = 0; i < 40; i++)
        assert_int_equal(fail_at(t, a, (uint64_t)i * 5000, &p, &n), GW_BAN_COUNTED);
    assert_int_equal(n, 20);
    for (int i = 0; i < 31; i++)
        fail_at(t, a, 300000 + (uint64_t)i, &p, &n);
    assert_int_equal(n, 31);
    assert_int_equal(fail_at(t, a, 300100, &p, &n), GW_BAN_NEW);
    assert_int_equal(n, 32);
    gw_ban_table_free(t);
}

/* The four keys in [global]: defaults, values, and a bad CIDR named with its line. */
static void test_config_keys(void **state)
{
    (void)state;
    static const char base[] = "[frontend f]\nlisten = 127.0.0.1:2100\nbackend = b\n"
                               "[backend b]\naddress = 127.0.0.1:2121\n";
    char text[1024], err[512];
    gw_config cfg;
    assert_int_equal(gw_config_parse(base, strlen(base), "t.conf", &cfg, err, sizeof err), 0);
    assert_int_equal(cfg.ban_after, 0);
    assert_int_equal(cfg.ban_window, 600);
    assert_int_equal(cfg.ban_time, 900);
    assert_string_equal(cfg.ban_exempt, "");
    gw_config_free(&cfg);
    snprintf(text, sizeof text,
             "[global]\nban_after = 5\nban_window = 60\nban_time = 2\n"
             "ban_exempt = 10.0.0.0/8, ::1\n%s",
             base);
    assert_int_equal(gw_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof err), 0);
    assert_int_equal(cfg.ban_after, 5);
    assert_int_equal(cfg.ban_window, 60);
    assert_int_equal(cfg.ban_time, 2);
    assert_string_equal(cfg.ban_exempt, "10.0.0.0/8, ::1");
    gw_config_free(&cfg);
    snprintf(text, sizeof text, "[global]\nban_exempt = 10.0.0.1/8\n%s", base);
    assert_int_equal(gw_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "t.conf:2: [global] ban_exempt"));
    snprintf(text, sizeof text, "[global]\nban_after = 33\n%s", base);
    assert_int_equal(gw_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "out of range"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_and_ban),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_off_and_exempt),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_ring_full),
        cmocka_unit_test(test_config_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
