/* Unit tests for the token buckets and the limiter (rate.h): rates over simulated time,
 * debt and waits, shared buckets by key, fair shares, the chunk size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "rate.h"

#define MS 1000000ull
#define S 1000000000ull
#define MiB (1024ull * 1024)

static void test_burst(void **state)
{
    (void)state;
    assert_int_equal(gw_rate_burst(MiB), MiB / 10);
    assert_int_equal(gw_rate_burst(1000), GW_RATE_MIN_CHUNK); /* small rates: one page */
}

/* A reader that takes `chunk` bytes whenever the bucket lets it, for `secs` simulated
 * seconds: the bytes moved are rate * secs plus the burst, within one chunk. */
static uint64_t drive(gw_bucket *b, uint64_t chunk, uint64_t secs)
{
    uint64_t now = 0, moved = 0;
    while (now < secs * S) {
        uint64_t w = gw_bucket_wait_ns(b, now);
        if (w) {
            now += w;
            continue;
        }
        gw_bucket_take(b, chunk, now);
        moved += chunk;
    }
    return moved;
}

static void test_bucket_rate(void **state)
{
    (void)state;
    gw_bucket b;
    gw_bucket_init(&b, MiB, 0);
    uint64_t moved = drive(&b, 65536, 10);
    uint64_t want = 10 * MiB + gw_rate_burst(MiB);
    assert_true(moved >= want - 65536 && moved <= want + 65536);
    /* an odd rate and odd reads: still exact over time (no token lost to rounding) */
    gw_bucket_init(&b, 333333, 0);
    moved = drive(&b, 7777, 30);
    want = 30 * 333333ull + gw_rate_burst(333333);
    assert_true(moved >= want - 7777 && moved <= want + 7777);
}

static void test_bucket_debt_and_wait(void **state)
{
    (void)state;
    gw_bucket b;
    gw_bucket_init(&b, 1000 * 1000, 0); /* 1 byte per microsecond, burst 100000 */
    assert_int_equal(gw_bucket_wait_ns(&b, 0), 0);
    gw_bucket_take(&b, 300000, 0); /* one large read: 200000 in debt */
    assert_int_equal(gw_bucket_tokens(&b, 0), -200000);
    uint64_t w = gw_bucket_wait_ns(&b, 0);
    assert_true(w >= 200 * MS && w <= 201 * MS + 1000);
    assert_int_equal(gw_bucket_wait_ns(&b, w), 0);
    /* refilled to the burst, never beyond */
    assert_int_equal(gw_bucket_tokens(&b, 100 * S), 100000);
    /* a lower rate cuts the tokens to the new burst */
    gw_bucket_set_rate(&b, 50000, 100 * S);
    assert_int_equal(gw_bucket_tokens(&b, 100 * S), GW_RATE_MIN_CHUNK + 904); /* 5000 */
    gw_bucket b0;
    gw_bucket_init(&b0, 0, 0); /* no limit */
    gw_bucket_take(&b0, 1ull << 40, 0);
    assert_int_equal(gw_bucket_wait_ns(&b0, 0), 0);
}

static void test_shared_by_key(void **state)
{
    (void)state;
    gw_rate_shared *a = gw_rate_shared_get("fe:x:down", MiB, 1, 0);
    gw_rate_shared *b = gw_rate_shared_get("fe:x:down", 2 * MiB, 2, 0);
    gw_rate_shared *c = gw_rate_shared_get("fe:y:down", MiB, 1, 0);
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, c);
    assert_int_equal(gw_rate_shared_active(a), 2);
    assert_int_equal(gw_rate_shared_count(), 2);
    /* an older configuration (a session from before a reload) does not bring its rate back */
    gw_rate_shared *old = gw_rate_shared_get("fe:x:down", MiB / 2, 1, 0);
    gw_rate_spec spec = {.frontend = 1, .frontend_key = "fe:x:down", .seq = 1};
    gw_rate_lim l;
    assert_int_equal(gw_rate_lim_attach(&l, &spec, 0), 0);
    gw_rate_lim_wait_ns(&l, 0);
    assert_int_equal(gw_rate_lim_limit(&l), 2 * MiB / 4); /* the newest rate, four users */
    gw_rate_lim_detach(&l);
    gw_rate_shared_put(old);
    gw_rate_shared_put(a);
    gw_rate_shared_put(b);
    gw_rate_shared_put(c);
    assert_int_equal(gw_rate_shared_count(), 0);
}

/* Four transfers under one 4 MiB/s frontend bucket, each greedy, served in turn by who waits
 * least: each gets about 1 MiB/s, all together 4 MiB/s. */
static void test_fair_shares(void **state)
{
    (void)state;
    enum { N = 4 };
    gw_rate_spec spec = {.frontend = 4 * MiB, .frontend_key = "fe:f:down"};
    gw_rate_lim l[N];
    uint64_t moved[N] = {0}, next[N] = {0};
    for (int i = 0; i < N; i++)
        assert_int_equal(gw_rate_lim_attach(&l[i], &spec, 0), 0);
    gw_rate_lim_wait_ns(&l[0], 0); /* shares follow the count of transfers when asked */
    assert_int_equal(gw_rate_lim_limit(&l[0]), MiB);
    size_t chunk = gw_rate_lim_chunk(&l[0]);
    assert_int_equal(chunk, MiB / 10);
    /* a greedy transfer 0 reads 4 times as often as the others would: its share stops it */
    for (uint64_t now = 0; now < 10 * S; now += MS) {
        for (int i = 0; i < N; i++) {
            if (now < next[i])
                continue;
            uint64_t w = gw_rate_lim_wait_ns(&l[i], now);
            if (w) {
                next[i] = now + (i == 0 ? 1 : w);
                continue;
            }
            gw_rate_lim_charge(&l[i], chunk, now);
            moved[i] += chunk;
        }
    }
    uint64_t total = 0;
    for (int i = 0; i < N; i++) {
        total += moved[i];
        assert_true(moved[i] > 10 * MiB * 95 / 100 && moved[i] < 10 * MiB * 105 / 100);
        assert_true(l[i].current > MiB * 9 / 10 && l[i].current < MiB * 11 / 10);
    }
    assert_true(total > 40 * MiB * 97 / 100 && total < 40 * MiB * 103 / 100);
    /* one leaves: the others' shares grow to a third each */
    gw_rate_lim_detach(&l[3]);
    gw_rate_lim_wait_ns(&l[0], 10 * S);
    assert_int_equal(gw_rate_lim_limit(&l[0]), 4 * MiB / 3);
    for (int i = 0; i < N - 1; i++)
        gw_rate_lim_detach(&l[i]);
    assert_int_equal(gw_rate_shared_count(), 0);
}

/* Nested: a 1 MiB/s session under a 10 MiB/s user: the session's rate rules; a 512 KiB/s
 * user rules over it. */
static void test_nested_most_restrictive(void **state)
{
    (void)state;
    gw_rate_spec spec = {.session = MiB, .user = 10 * MiB, .user_key = "u:alice:down"};
    gw_rate_lim l;
    assert_int_equal(gw_rate_lim_attach(&l, &spec, 0), 0);
    assert_int_equal(gw_rate_lim_limit(&l), MiB);
    gw_rate_lim_detach(&l);
    spec.user = MiB / 2;
    assert_int_equal(gw_rate_lim_attach(&l, &spec, 0), 0);
    assert_int_equal(gw_rate_lim_limit(&l), MiB / 2);
    uint64_t now = 0, moved = 0;
    while (now < 10 * S) {
        uint64_t w = gw_rate_lim_wait_ns(&l, now);
        if (w) {
            now += w;
            continue;
        }
        gw_rate_lim_charge(&l, 32768, now);
        moved += 32768;
    }
    assert_true(moved > 5 * MiB * 98 / 100 && moved < 5 * MiB * 104 / 100);
    gw_rate_lim_detach(&l);
    gw_rate_spec none = {.user = MiB}; /* a user rate without a key: nothing */
    assert_false(gw_rate_spec_any(&none));
    assert_true(gw_rate_spec_any(&spec));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst),
        cmocka_unit_test(test_bucket_rate),
        cmocka_unit_test(test_bucket_debt_and_wait),
        cmocka_unit_test(test_shared_by_key),
        cmocka_unit_test(test_fair_shares),
        cmocka_unit_test(test_nested_most_restrictive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
