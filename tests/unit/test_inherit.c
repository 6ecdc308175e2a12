/* Unit tests for inherited listening sockets (proxy/inherit.c): $FTPSGATE_INHERIT parsed,
 * sockets matched by kind and bound address, the rest closed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ban.h"
#include "inherit.h"

/* A listening TCP socket on 127.0.0.1 (port 0: any; the one given: SO_REUSEPORT), not
 * close-on-exec; its address in *sa. */
static int tcp_listener(uint16_t port, struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &sa->sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)sa, sizeof *sa), 0);
    assert_int_equal(listen(fd, 8), 0);
    socklen_t len = sizeof *sa;
    getsockname(fd, (struct sockaddr *)sa, &len);
    return fd;
}

static bool is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

static void test_match_by_kind_and_address(void **state)
{
    struct sockaddr_in a, b, other;
    int fa1 = tcp_listener(0, &a);
    int fa2 = tcp_listener(ntohs(a.sin_port), &a); /* a second worker's, same address */
    int fb = tcp_listener(0, &b);
    char list[128], err[256] = "";
    snprintf(list, sizeof list, "fe=%d,fe=%d,sp=%d", fa1, fa2, fb);
    assert_int_equal(gw_inherit_load(list, err, sizeof err), 0);
    assert_int_equal(gw_inherit_count(), 3);
    assert_int_equal(fcntl(fa1, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC); /* no further exec */
    /* b is an "sp" socket: not a frontend's */
    assert_int_equal(gw_inherit_take("fe", (struct sockaddr *)&b, sizeof b), -1);
    assert_int_equal(gw_inherit_take("fe", (struct sockaddr *)&a, sizeof a), fa1);
    assert_int_equal(gw_inherit_take("fe", (struct sockaddr *)&a, sizeof a), fa2);
    assert_int_equal(gw_inherit_take("fe", (struct sockaddr *)&a, sizeof a), -1); /* taken */
    other = a;
    other.sin_port = htons((uint16_t)(ntohs(a.sin_port) + 1));
    assert_int_equal(gw_inherit_take("fe", (struct sockaddr *)&other, sizeof other), -1);
    /* nobody took fb: closed */
    assert_int_equal(gw_inherit_close_unused(), 1);
    assert_false(is_open(fb));
    assert_true(is_open(fa1));
    close(fa1);
    close(fa2);
}

static void test_unix_socket(void **state)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "/tmp/ftpsgate-unit-inherit-%d.sock", (int)getpid());
    unlink(sa.sun_path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 1), 0);
    char list[64], err[256];
    snprintf(list, sizeof list, "ctl=%d", fd);
    assert_int_equal(gw_inherit_load(list, err, sizeof err), 0);
    struct sockaddr_un wrong = sa;
    wrong.sun_path[strlen(wrong.sun_path) - 1] = 'x';
    assert_int_equal(gw_inherit_take("ctl", (struct sockaddr *)&wrong, sizeof wrong), -1);
    assert_int_equal(gw_inherit_take("ctl", (struct sockaddr *)&sa, sizeof sa), fd);
    assert_int_equal(gw_inherit_close_unused(), 0);
    close(fd);
    unlink(sa.sun_path);
}

static void test_bad_lists(void **state)
{
    char err[256];
    assert_int_equal(gw_inherit_load("", err, sizeof err), 0);
    assert_int_equal(gw_inherit_count(), 0);
    assert_int_equal(gw_inherit_load(NULL, err, sizeof err), 0);
    const char *bad[] = {"fe", "fe=", "=5", "fe=x", "fe=5x", "toolongkind=5", "fe=-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        assert_int_equal(gw_inherit_load(bad[i], err, sizeof err), -1);
        assert_non_null(strstr(err, "bad item"));
        assert_int_equal(gw_inherit_count(), 0);
    }
    /* a descriptor that is no socket (a pipe), or not open */
    int p[2];
    assert_int_equal(pipe(p), 0);
    char list[64];
    snprintf(list, sizeof list, "fe=%d", p[0]);
    assert_int_equal(gw_inherit_load(list, err, sizeof err), -1);
    assert_non_null(strstr(err, "no stream socket"));
    close(p[0]);
    close(p[1]);
    snprintf(list, sizeof list, "fe=%d", p[0]);
    assert_int_equal(gw_inherit_load(list, err, sizeof err), -1);
    assert_int_equal(gw_inherit_count(), 0);
}

/* The ban list's part of the hand-over (ban.c): every ban listed, and put back. */
static void collect(const gw_addr *key, uint64_t until_ms, void *arg)
{
    uint64_t *sum = arg;
    sum[0]++;
    sum[1] += until_ms;
    (void)key;
}

static void test_ban_each_and_restore(void **state)
{
    gw_ban_policy p = {.after = 1, .window = 60, .time = 100, .exempt = NULL};
    gw_ban_table *old = gw_ban_table_new(0), *fresh = gw_ban_table_new(0);
    gw_addr a = {.family = 4, .ip = {10, 0, 0, 1}}, b = {.family = 4, .ip = {10, 0, 0, 2}};
    gw_ban_result r;
    gw_ban_fail(old, &a, 1000, &p, &r);
    assert_int_equal(r.what, GW_BAN_NEW);
    gw_ban_fail(old, &b, 2000, &p, &r);
    uint64_t sum[2] = {0, 0};
    gw_ban_each(old, collect, sum);
    assert_int_equal(sum[0], 2);
    assert_int_equal(sum[1], 101000 + 102000);
    assert_int_equal(gw_ban_restore(fresh, &a, 101000), 0);
    assert_int_equal(gw_ban_restore(fresh, &a, 50000), 0); /* the later end stays */
    assert_int_equal(gw_ban_left(fresh, &a, 1000, &p), 100000);
    assert_int_equal(gw_ban_left(fresh, &b, 1000, &p), 0);
    assert_int_equal(gw_ban_banned(fresh), 1);
    assert_int_equal(gw_ban_expire(fresh, 101000, &p, NULL, NULL), 1);
    assert_int_equal(gw_ban_banned(fresh), 0);
    gw_ban_table_free(old);
    gw_ban_table_free(fresh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_by_kind_and_address),
        cmocka_unit_test(test_unix_socket),
        cmocka_unit_test(test_bad_lists),
        cmocka_unit_test(test_ban_each_and_restore),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
