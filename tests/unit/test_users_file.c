/* proxy/users_file.c: the users file's syntax, its errors with line numbers, the mode check,
 * and password checks against real hashes: fixed vectors made by mkpasswd (Debian whois)
 * and hashes made here with crypt_gensalt_rn/crypt_r for every supported method. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "users_file.h"

/* `mkpasswd -m yescrypt|bcrypt -R 5|sha512crypt 'correct horse'` */
#define Y_HASH "$y$j9T$BkA/Z1hcbX44dDRvvVWfh.$aohk3hI4at3y09YFbC9TmQ0hpmTwQKd8kWKdBLUMlL."
#define B_HASH "$2b$05$acIsWD1SRXtW9PYi9Lefqe6/LfUKPvYzWIuEt2aLeU2zEFt2lGsOG"
#define S_HASH                                                                                     \
    "$6$3mIZABtA3o.EjNSm$pYraHxhbhMZls.uNGcZZsXotnBooIZUcY8iq75qcxA1bO0jLo0qjd/"                   \
    "yFFM8Mr42SvXSHGhwCi"                                                                          \
    "c2.yGOqV1ABI0"
/* `mkpasswd -m sha512crypt 's3cr:et,with=odd chars'` */
#define ODD_HASH                                                                                   \
    "$6$N7ibqxUz2rSqcpoM$r8qDahcO6cXmSnmhQueamQukDf/fW/"                                           \
    "Qd5ywuvfQA1NhUIrUgoTcXZeFva.03dg3U03b2C8ucoH"                                                 \
    "C7SAYox0h2p."

static int parse(const char *text, gw_users *u, char *err, size_t cap)
{
    return gw_users_parse(text, strlen(text), "users", u, err, cap);
}

static void test_fixed_vectors(void **state)
{
    const char *text = "# the partners\n"
                       "\n"
                       "  alice:" Y_HASH "\n"
                       "bob:" B_HASH ":groups=staff ro,backend=legacy\r\n"
                       "carol:" S_HASH ":backend_user=ftp_carol , policy=readonly\n"
                       "dave:" ODD_HASH "\n";
    gw_users u;
    char err[256];
    assert_int_equal(parse(text, &u, err, sizeof err), 0);
    assert_int_equal(u.n, 4);
    const gw_user_entry *who = NULL;
    assert_true(gw_users_verify(&u, "alice", "correct horse", &who));
    assert_string_equal(who->name, "alice");
    assert_true(gw_users_verify(&u, "bob", "correct horse", &who));
    assert_string_equal(who->backend, "legacy");
    assert_true(gw_user_in_group(who, "staff"));
    assert_true(gw_user_in_group(who, "ro"));
    assert_false(gw_user_in_group(who, "st"));
    assert_true(gw_users_verify(&u, "carol", "correct horse", &who));
    assert_string_equal(who->backend_user, "ftp_carol");
    assert_string_equal(who->policy, "readonly");
    assert_true(gw_users_verify(&u, "dave", "s3cr:et,with=odd chars", NULL));
    /* wrong passwords, near misses, another user's password, unknown users */
    assert_false(gw_users_verify(&u, "alice", "correct horse ", &who));
    assert_null(who);
    assert_false(gw_users_verify(&u, "alice", "Correct horse", NULL));
    assert_false(gw_users_verify(&u, "bob", "", NULL));
    assert_false(gw_users_verify(&u, "carol", "s3cr:et,with=odd chars", NULL));
    assert_false(gw_users_verify(&u, "Alice", "correct horse", NULL));
    assert_false(gw_users_verify(&u, "mallory", "correct horse", &who));
    assert_null(who);
    assert_false(gw_users_verify(&u, "", "", NULL));
    gw_users_free(&u);
    (void)state;
}

/* Each method, hashed here with a fresh salt: the parser accepts it and verify agrees. */
static void test_generated_hashes(void **state)
{
    static const struct {
        const char *prefix;
        unsigned long cost;
    } methods[] = {{"$y$", 0}, {"$2b$", 5}, {"$6$", 5000}};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        char salt[CRYPT_GENSALT_OUTPUT_SIZE];
        assert_non_null(
            crypt_gensalt_rn(methods[i].prefix, methods[i].cost, NULL, 0, salt, sizeof salt));
        struct crypt_data *cd = calloc(1, sizeof *cd);
        assert_non_null(cd);
        char pw[32];
        snprintf(pw, sizeof pw, "pw-%zu-%d", i, (int)getpid());
        const char *h = crypt_r(pw, salt, cd);
        assert_non_null(h);
        assert_true(h[0] == '$');
        char text[512];
        snprintf(text, sizeof text, "u%zu:%s:groups=g%zu\n", i, h, i);
        free(cd);
        gw_users u;
        char err[256];
        assert_int_equal(parse(text, &u, err, sizeof err), 0);
        char name[8];
        snprintf(name, sizeof name, "u%zu", i);
        assert_true(gw_users_verify(&u, name, pw, NULL));
        pw[0] = 'P';
        assert_false(gw_users_verify(&u, name, pw, NULL));
        gw_users_free(&u);
    }
    (void)state;
}

static void expect_error(const char *text, const char *want)
{
    gw_users u;
    char err[256];
    assert_int_equal(parse(text, &u, err, sizeof err), -1);
    assert_null(u.v);
    assert_int_equal(u.n, 0);
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not contain \"%s\"", err, want);
}

static void test_errors_name_their_line(void **state)
{
    expect_error("alice\n", "users:1: expected user:crypt-hash");
    expect_error("# c\n\nalice:" Y_HASH "\nbob:secret\n", "users:4: user bob: not a yescrypt");
    expect_error("alice:$1$abcdefgh$0123456789012345678901\n", "users:1: user alice: not a");
    expect_error("alice:" Y_HASH "\nalice:" B_HASH "\n",
                 "users:2: user alice: listed twice (first on line 1)");
    expect_error("alice:" Y_HASH ":colour=blue\n",
                 "users:1: user alice: attribute colour: unknown");
    expect_error("alice:" Y_HASH ":backend=a b\n", "users:1: user alice: attribute backend:");
    expect_error("alice:" Y_HASH ":policy=x,policy=y\n", "attribute policy: given twice");
    expect_error("alice:" Y_HASH ":rate_down=10X\n", "attribute rate_down: expected bytes/s");
    expect_error("alice:" Y_HASH ":groups=\n", "attribute groups: groups: empty");
    expect_error("alice:" Y_HASH ":groups=a,\n", "users:1: user alice: empty attribute");
    expect_error("alice:" Y_HASH ":backend\n", "attribute backend: expected attr=value");
    expect_error(":" Y_HASH "\n", "users:1: bad user name");
    expect_error("al ice:" Y_HASH "\n", "users:1: bad user name");
    expect_error("alice:" Y_HASH "\x01\n", "users:1: control character 0x01");
    expect_error("alice:$y$j9T$abc%def$0123456789012345678901\n", "outside crypt's alphabet");
    expect_error("alice:\n", "users:1: user alice: not a");
    (void)state;
}

static void test_attributes_and_rates(void **state)
{
    gw_users u;
    char err[256];
    assert_int_equal(
        parse("a:" S_HASH ":rate_down=10M, rate_up=512k,groups= x  y ", &u, err, sizeof err), 0);
    assert_int_equal(u.v[0].rate_down, 10ULL * 1024 * 1024);
    assert_int_equal(u.v[0].rate_up, 512ULL * 1024);
    assert_string_equal(u.v[0].groups, "x y");
    assert_ptr_equal(gw_users_find(&u, "a"), &u.v[0]);
    assert_null(gw_users_find(&u, "b"));
    gw_users_free(&u);
    uint64_t r;
    assert_int_equal(gw_parse_rate("0", &r), 0);
    assert_int_equal(r, 0);
    assert_int_equal(gw_parse_rate("1G", &r), 0);
    assert_int_equal(r, 1ULL << 30);
    assert_int_equal(gw_parse_rate("1024G", &r), 0);
    assert_int_equal(gw_parse_rate("1025G", &r), -1);
    assert_int_equal(gw_parse_rate("", &r), -1);
    assert_int_equal(gw_parse_rate("K", &r), -1);
    assert_int_equal(gw_parse_rate("1KB", &r), -1);
    assert_int_equal(gw_parse_rate("-1", &r), -1);
    assert_int_equal(gw_parse_rate("99999999999999999999", &r), -1);
    /* an empty file is valid (nobody logs in) and verify says no */
    assert_int_equal(parse("# nobody yet\n", &u, err, sizeof err), 0);
    assert_int_equal(u.n, 0);
    assert_false(gw_users_verify(&u, "a", "b", NULL));
    gw_users_free(&u);
    (void)state;
}

static void test_load_file_mode(void **state)
{
    char path[] = "/tmp/test_users_file_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "alice:" Y_HASH "\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    gw_users u;
    char err[256];
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(gw_users_load_file(path, &u, err, sizeof err), 0);
    assert_true(gw_users_verify(&u, "alice", "correct horse", NULL));
    gw_users_free(&u);
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(gw_users_load_file(path, &u, err, sizeof err), -1);
    assert_non_null(strstr(err, "mode 0640: readable or writable by group or others"));
    assert_int_equal(chmod(path, 0604), 0);
    assert_int_equal(gw_users_load_file(path, &u, err, sizeof err), -1);
    unlink(path);
    assert_int_equal(gw_users_load_file(path, &u, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot read"));
    assert_int_equal(gw_users_load_file("/tmp", &u, err, sizeof err), -1);
    (void)state;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An unknown name pays for a hash as a wrong password does (bcrypt cost 8: tens of ms, far
 * above the noise; a lookup alone would take microseconds). */
static void test_unknown_user_costs_a_hash(void **state)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    assert_non_null(crypt_gensalt_rn("$2b$", 8, NULL, 0, salt, sizeof salt));
    struct crypt_data *cd = calloc(1, sizeof *cd);
    assert_non_null(cd);
    char text[256];
    snprintf(text, sizeof text, "known:%s\n", crypt_r("secret", salt, cd));
    free(cd);
    gw_users u;
    char err[256];
    assert_int_equal(parse(text, &u, err, sizeof err), 0);
    double known = 0, unknown = 0;
    for (int i = 0; i < 3; i++) {
        double t0 = now_s();
        assert_false(gw_users_verify(&u, "known", "wrong", NULL));
        double t1 = now_s();
        assert_false(gw_users_verify(&u, "unknown", "secret", NULL));
        double t2 = now_s();
        known += t1 - t0;
        unknown += t2 - t1;
    }
    if (unknown < known / 2 || unknown > known * 2)
        fail_msg("unknown user %.4f s, known user %.4f s: not alike", unknown, known);
    assert_true(known > 0.005); /* a real bcrypt ran */
    gw_users_free(&u);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixed_vectors),
        cmocka_unit_test(test_generated_hashes),
        cmocka_unit_test(test_errors_name_their_line),
        cmocka_unit_test(test_attributes_and_rates),
        cmocka_unit_test(test_load_file_mode),
        cmocka_unit_test(test_unknown_user_costs_a_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
