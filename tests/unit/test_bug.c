/* Unit tests for GW_BUG_ON (include/bug.h): it aborts in the abort mode (SAN=1, fuzzing)
 * with file:line and the condition, and in release logs `event=bug` and returns. Each case
 * runs in a child process (abort ends it), its stderr read through a pipe. */
#define GW_BUG_ABORT 1 /* this file checks the abort mode whatever the build */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bug.h"

/* Run fn in a child with stderr captured into out; returns its wait status. */
static int run_child(void (*fn)(int), int arg, char *out, size_t cap)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        dup2(p[1], STDERR_FILENO);
        signal(SIGABRT, SIG_DFL);
        fn(arg);
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(p[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(p[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static const int bug_line = __LINE__ + 4; /* the line of the GW_BUG_ON below */

static void check_abort_mode(int x)
{
    if (GW_BUG_ON(x == 2))
        _exit(3); /* not reached in the abort mode */
}

static void check_release_mode(int x)
{
    /* what GW_BUG_ON calls in a release build */
    _exit(gw_bug(42, __FILE__, 7, "x == 2", false) ? x : 1);
}

static void test_false_is_silent(void **state)
{
    char out[512];
    int st = run_child(check_abort_mode, 1, out, sizeof out);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_string_equal(out, "");
    assert_false(GW_BUG_ON(1 + 1 == 3)); /* in this process too */
}

static void test_fires_and_aborts(void **state)
{
    char out[512], where[64];
    int st = run_child(check_abort_mode, 2, out, sizeof out);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGABRT);
    snprintf(where, sizeof where, "test_bug.c:%d", bug_line);
    assert_non_null(strstr(out, where));
    assert_non_null(strstr(out, "x == 2"));
}

static void test_release_logs_and_returns(void **state)
{
    char out[512];
    int st = run_child(check_release_mode, 5, out, sizeof out);
    assert_true(WIFEXITED(st)); /* no abort */
    assert_int_equal(WEXITSTATUS(st), 5);
    assert_non_null(strstr(out, "level=error session=42 event=bug at="));
    assert_non_null(strstr(out, "test_bug.c:7 cond=\"x == 2\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_false_is_silent),
        cmocka_unit_test(test_fires_and_aborts),
        cmocka_unit_test(test_release_logs_and_returns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
