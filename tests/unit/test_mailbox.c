/* Unit tests for the loop mailbox: real threads posting to a real libuv loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <uv.h>

#include "mailbox.h"

#define POSTERS 4
#define PER_POSTER 20000

typedef struct msg {
    gw_mail mail; /* first: a gw_mail * is the msg */
    int poster, seq;
} msg;

/* What the loop saw (written on its thread only). */
static int last_seq[POSTERS];
static int ran, cancelled_n, out_of_order;
static uv_thread_t loop_thread;
static bool wrong_thread;

static void on_msg(gw_mail *m, bool cancelled)
{
    msg *x = (msg *)m;
    uv_thread_t self = uv_thread_self();
    if (!uv_thread_equal(&self, &loop_thread))
        wrong_thread = true;
    if (x->seq != last_seq[x->poster] + 1)
        out_of_order++;
    last_seq[x->poster] = x->seq;
    if (cancelled)
        cancelled_n++;
    else
        ran++;
    free(x);
}

static gw_mailbox mb;

static void poster(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int i = 1; i <= PER_POSTER; i++) {
        msg *x = malloc(sizeof *x);
        x->poster = id;
        x->seq = i;
        if (gw_mailbox_post(&mb, &x->mail, on_msg) != 0)
            abort(); /* the mailbox is open all along */
    }
}

static void reset(void)
{
    for (int i = 0; i < POSTERS; i++)
        last_seq[i] = 0;
    ran = cancelled_n = out_of_order = 0;
    wrong_thread = false;
    loop_thread = uv_thread_self();
}

/* Several threads post at once: every message runs once, on the loop's thread, each
 * poster's in its order. */
static void test_many_posters(void **state)
{
    (void)state;
    reset();
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(gw_mailbox_init(&mb, &loop), 0);
    assert_ptr_equal(gw_mailbox_of(&loop), &mb);
    uv_thread_t t[POSTERS];
    for (int i = 0; i < POSTERS; i++)
        assert_int_equal(uv_thread_create(&t[i], poster, (void *)(intptr_t)i), 0);
    while (ran < POSTERS * PER_POSTER)
        uv_run(&loop, UV_RUN_ONCE);
    for (int i = 0; i < POSTERS; i++)
        uv_thread_join(&t[i]);
    assert_int_equal(ran, POSTERS * PER_POSTER);
    assert_int_equal(out_of_order, 0);
    assert_false(wrong_thread);
    gw_mailbox_close(&mb);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0); /* the handle closed: nothing left */
    assert_int_equal(uv_loop_close(&loop), 0);
    gw_mailbox_destroy(&mb);
}

/* Closing runs what is queued as cancelled, in order; later posts fail and the poster keeps
 * its message. */
static void test_close_cancels_then_refuses(void **state)
{
    (void)state;
    reset();
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(gw_mailbox_init(&mb, &loop), 0);
    for (int i = 1; i <= 3; i++) {
        msg *x = calloc(1, sizeof *x);
        x->seq = i;
        assert_int_equal(gw_mailbox_post(&mb, &x->mail, on_msg), 0);
    }
    gw_mailbox_close(&mb); /* the loop never ran them */
    assert_int_equal(cancelled_n, 3);
    assert_int_equal(ran, 0);
    assert_int_equal(out_of_order, 0);
    msg late = {.seq = 4};
    assert_int_equal(gw_mailbox_post(&mb, &late.mail, on_msg), -1);
    gw_mailbox_close(&mb); /* twice: harmless */
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    gw_mailbox_destroy(&mb);
}

/* The mailbox keeps its loop running while open. */
static void test_keeps_loop_alive(void **state)
{
    (void)state;
    reset();
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(gw_mailbox_init(&mb, &loop), 0);
    assert_true(uv_loop_alive(&loop));
    msg *x = calloc(1, sizeof *x);
    x->seq = 1;
    assert_int_equal(gw_mailbox_post(&mb, &x->mail, on_msg), 0);
    assert_int_equal(uv_run(&loop, UV_RUN_NOWAIT), 1); /* ran it, still alive */
    assert_int_equal(ran, 1);
    gw_mailbox_close(&mb);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    gw_mailbox_destroy(&mb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_posters),
        cmocka_unit_test(test_close_cancels_then_refuses),
        cmocka_unit_test(test_keeps_loop_alive),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
