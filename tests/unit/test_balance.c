/* Unit tests for backend selection (proxy/balance.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "balance.h"

static void cands(gw_bal_cand *c, int n, const int *weights)
{
    for (int i = 0; i < n; i++)
        c[i] = (gw_bal_cand){.weight = weights[i], .up = true};
}

/* picks sessions one after another (each stays open when hold) and counts them. */
static void run(enum gw_balance p, gw_bal_cand *c, int n, int picks, bool hold, int *count)
{
    gw_bal_state st;
    memset(&st, 0, sizeof st);
    uint32_t rnd = 12345;
    for (int k = 0; k < picks; k++) {
        rnd = rnd * 1103515245u + 12345u;
        uint8_t key[4] = {10, 0, (uint8_t)(k >> 8), (uint8_t)k};
        int i = gw_balance_pick(p, c, n, &st, 0, rnd >> 8, key, sizeof key);
        assert_true(i >= 0 && i < n);
        count[i]++;
        if (hold)
            c[i].live++;
    }
    gw_bal_state_free(&st);
}

static void test_roundrobin(void **state)
{
    (void)state;
    gw_bal_cand c[3];
    int count[3] = {0};
    cands(c, 3, (int[]){1, 1, 1});
    run(GW_BALANCE_ROUNDROBIN, c, 3, 60, false, count);
    assert_int_equal(count[0], 20);
    assert_int_equal(count[1], 20);
    assert_int_equal(count[2], 20);

    int two[2] = {0};
    cands(c, 2, (int[]){3, 1});
    run(GW_BALANCE_ROUNDROBIN, c, 2, 600, false, two);
    assert_int_equal(two[0], 450);
    assert_int_equal(two[1], 150);

    /* Smooth: 3,1,1 interleaves (a a b a c), never three of a in a row at the start. */
    gw_bal_state st;
    memset(&st, 0, sizeof st);
    cands(c, 3, (int[]){3, 1, 1});
    int seq[5];
    for (int k = 0; k < 5; k++)
        seq[k] = gw_balance_pick(GW_BALANCE_ROUNDROBIN, c, 3, &st, 0, 0, NULL, 0);
    assert_int_equal(seq[0], 0);
    assert_int_equal(seq[1], 1);
    assert_int_equal(seq[2], 0);
    assert_int_equal(seq[3], 2);
    assert_int_equal(seq[4], 0);
    int three[3] = {0};
    run(GW_BALANCE_ROUNDROBIN, c, 3, 60, false, three);
    assert_int_equal(three[0], 36);
    assert_int_equal(three[1], 12);
    assert_int_equal(three[2], 12);
    gw_bal_state_free(&st);
}

static void test_leastconn(void **state)
{
    (void)state;
    gw_bal_cand c[3];
    int count[3] = {0};
    cands(c, 3, (int[]){1, 1, 1});
    run(GW_BALANCE_LEASTCONN, c, 3, 60, true, count); /* sessions held: always balanced */
    assert_int_equal(count[0], 20);
    assert_int_equal(count[1], 20);
    assert_int_equal(count[2], 20);
    int two[2] = {0};
    cands(c, 2, (int[]){3, 1});
    run(GW_BALANCE_LEASTCONN, c, 2, 600, true, two);
    assert_int_equal(two[0], 450);
    assert_int_equal(two[1], 150);
    /* Sessions that end at once: equals are taken in turn. */
    int free3[3] = {0};
    cands(c, 3, (int[]){1, 1, 1});
    run(GW_BALANCE_LEASTCONN, c, 3, 60, false, free3);
    assert_int_equal(free3[0], 20);
    assert_int_equal(free3[1], 20);
    /* The least loaded wins. */
    gw_bal_state st;
    memset(&st, 0, sizeof st);
    c[0].live = 4;
    c[1].live = 1;
    c[2].live = 3;
    assert_int_equal(gw_balance_pick(GW_BALANCE_LEASTCONN, c, 3, &st, 0, 0, NULL, 0), 1);
    c[2].weight = 4; /* 3/4 < 1/1 */
    assert_int_equal(gw_balance_pick(GW_BALANCE_LEASTCONN, c, 3, &st, 0, 0, NULL, 0), 2);
    gw_bal_state_free(&st);
}

static void test_random(void **state)
{
    (void)state;
    gw_bal_cand c[3];
    int count[3] = {0};
    cands(c, 3, (int[]){1, 1, 1});
    run(GW_BALANCE_RANDOM, c, 3, 600, false, count);
    for (int i = 0; i < 3; i++)
        assert_true(count[i] > 150 && count[i] < 250);
    int two[2] = {0};
    cands(c, 2, (int[]){3, 1});
    run(GW_BALANCE_RANDOM, c, 2, 600, false, two);
    assert_true(two[0] > 400 && two[0] < 500);
    /* The random number decides, weighted: 0..2 -> a, 3 -> b. */
    gw_bal_state st;
    memset(&st, 0, sizeof st);
    assert_int_equal(gw_balance_pick(GW_BALANCE_RANDOM, c, 2, &st, 0, 2, NULL, 0), 0);
    assert_int_equal(gw_balance_pick(GW_BALANCE_RANDOM, c, 2, &st, 0, 3, NULL, 0), 1);
    assert_int_equal(gw_balance_pick(GW_BALANCE_RANDOM, c, 2, &st, 0, 7, NULL, 0), 1);
    gw_bal_state_free(&st);
}

static void test_source(void **state)
{
    (void)state;
    gw_bal_cand c[3];
    gw_bal_state st;
    memset(&st, 0, sizeof st);
    cands(c, 3, (int[]){1, 1, 1});
    int seen[3] = {0};
    for (int k = 0; k < 60; k++) {
        uint8_t key[4] = {127, 0, 0, (uint8_t)(k + 2)};
        int first = gw_balance_pick(GW_BALANCE_SOURCE, c, 3, &st, 0, (uint32_t)k, key, 4);
        assert_true(first >= 0);
        seen[first]++;
        for (int again = 0; again < 5; again++) /* stable, whatever rnd says */
            assert_int_equal(
                gw_balance_pick(GW_BALANCE_SOURCE, c, 3, &st, 0, (uint32_t)again, key, 4), first);
        /* Its backend down: the next one; the others' clients do not move. */
        c[first].up = false;
        int next = gw_balance_pick(GW_BALANCE_SOURCE, c, 3, &st, 0, 0, key, 4);
        assert_int_equal(next, (first + 1) % 3);
        c[first].up = true;
        assert_int_equal(gw_balance_pick(GW_BALANCE_SOURCE, c, 3, &st, 0, 0, key, 4), first);
    }
    for (int i = 0; i < 3; i++) /* 60 neighbouring addresses spread over all three */
        assert_true(seen[i] >= 8);
    gw_bal_state_free(&st);
}

/* balance = user: the USER name is the key; sticky, next in order when down, spread. */
static void test_user(void **state)
{
    (void)state;
    gw_bal_cand c[3];
    gw_bal_state st;
    memset(&st, 0, sizeof st);
    cands(c, 3, (int[]){1, 1, 1});
    int seen[3] = {0};
    for (int k = 0; k < 60; k++) {
        char name[16];
        snprintf(name, sizeof name, "user%d", k);
        const uint8_t *key = (const uint8_t *)name;
        size_t len = strlen(name);
        int first = gw_balance_pick(GW_BALANCE_USER, c, 3, &st, 0, (uint32_t)k, key, len);
        assert_true(first >= 0);
        seen[first]++;
        for (int again = 0; again < 5; again++)
            assert_int_equal(
                gw_balance_pick(GW_BALANCE_USER, c, 3, &st, 0, (uint32_t)again, key, len), first);
        c[first].up = false;
        assert_int_equal(gw_balance_pick(GW_BALANCE_USER, c, 3, &st, 0, 0, key, len),
                         (first + 1) % 3);
        c[first].up = true;
        /* failover: the home backend tried already, the next in hash order */
        assert_int_equal(gw_balance_pick(GW_BALANCE_USER, c, 3, &st, 1u << first, 0, key, len),
                         (first + 1) % 3);
    }
    for (int i = 0; i < 3; i++)
        assert_true(seen[i] >= 8);
    assert_string_equal(gw_balance_name(GW_BALANCE_USER), "user");
    gw_bal_state_free(&st);
}

static void test_exclusions_and_none(void **state)
{
    (void)state;
    const enum gw_balance all[] = {GW_BALANCE_ROUNDROBIN, GW_BALANCE_LEASTCONN, GW_BALANCE_RANDOM,
                                   GW_BALANCE_SOURCE, GW_BALANCE_USER};
    uint8_t key[4] = {127, 0, 0, 1};
    for (size_t p = 0; p < sizeof all / sizeof all[0]; p++) {
        gw_bal_cand c[3];
        gw_bal_state st;
        memset(&st, 0, sizeof st);
        cands(c, 3, (int[]){1, 1, 1});
        for (int k = 0; k < 30; k++) {
            int i = gw_balance_pick(all[p], c, 3, &st, 1u << 0 | 1u << 2, (uint32_t)k, key, 4);
            assert_int_equal(i, 1);
        }
        assert_int_equal(gw_balance_pick(all[p], c, 3, &st, 7, 0, key, 4), -1);
        /* Down or full: skipped; all of them: -1. */
        c[0].up = false;
        c[1].max_sessions = 2;
        c[1].live = 2;
        for (int k = 0; k < 10; k++)
            assert_int_equal(gw_balance_pick(all[p], c, 3, &st, 0, (uint32_t)k, key, 4), 2);
        c[2].up = false;
        assert_int_equal(gw_balance_pick(all[p], c, 3, &st, 0, 0, key, 4), -1);
        c[1].live = 1; /* a place frees up */
        assert_int_equal(gw_balance_pick(all[p], c, 3, &st, 0, 0, key, 4), 1);
        assert_int_equal(gw_balance_pick(all[p], c, 0, &st, 0, 0, key, 4), -1);
        gw_bal_state_free(&st);
    }
    assert_string_equal(gw_balance_name(GW_BALANCE_SOURCE), "source");
}

/* route_user: the LAST '@' separates; no '@' or nothing after it: routed by the policy. */
static void test_route_user_split(void **state)
{
    (void)state;
    char a[] = "alice@b";
    assert_string_equal(gw_route_user_split(a), "b");
    assert_string_equal(a, "alice");
    char b[] = "a@corp.example@c";
    assert_string_equal(gw_route_user_split(b), "c");
    assert_string_equal(b, "a@corp.example");
    char c[] = "bob";
    assert_null(gw_route_user_split(c));
    assert_string_equal(c, "bob");
    char d[] = "carol@";
    assert_null(gw_route_user_split(d));
    assert_string_equal(d, "carol@");
    char e[] = "@b";
    assert_string_equal(gw_route_user_split(e), "b");
    assert_string_equal(e, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundrobin),
        cmocka_unit_test(test_leastconn),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_source),
        cmocka_unit_test(test_user),
        cmocka_unit_test(test_exclusions_and_none),
        cmocka_unit_test(test_route_user_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
