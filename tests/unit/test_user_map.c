/* proxy/user_map.c: the rule syntax and its errors by line, first match wins (users and
 * @groups), and the password files: read at load, refused when others may read them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "user_map.h"

static int parse(const char *text, gw_user_map *m, char *err, size_t cap)
{
    return gw_user_map_parse(text, strlen(text), "map", m, err, cap);
}

static void test_rules(void **state)
{
    (void)state;
    gw_user_map m;
    char err[256] = "";
    const char *text = "# comment\n"
                       "\n"
                       "alice b1\r\n"
                       "  @partners\t*:acme\n"
                       "bob b2:svc:/etc/x:y.pw   \n"
                       "carol *::keep\n"
                       "@partners b1:never\n";
    assert_int_equal(parse(text, &m, err, sizeof err), 0);
    assert_int_equal(m.n, 5);
    assert_string_equal(m.v[0].who, "alice");
    assert_false(m.v[0].group);
    assert_string_equal(m.v[0].backend, "b1");
    assert_string_equal(m.v[0].account, "");
    assert_null(m.v[0].pass_file);
    assert_int_equal(m.v[0].line, 3);
    assert_true(m.v[1].group);
    assert_string_equal(m.v[1].who, "partners");
    assert_string_equal(m.v[1].backend, ""); /* *: the balance */
    assert_string_equal(m.v[1].account, "acme");
    assert_null(m.v[1].pass_file); /* no third field: the client's password */
    assert_string_equal(m.v[2].account, "svc");
    assert_string_equal(m.v[2].pass_file, "/etc/x:y.pw"); /* all after the second ':' */
    assert_string_equal(m.v[3].account, "");
    assert_null(m.v[3].pass_file);

    /* first match wins: a user's own rule, else the first of its groups' */
    assert_ptr_equal(gw_user_map_find(&m, "alice", "partners"), &m.v[0]);
    assert_ptr_equal(gw_user_map_find(&m, "dave", "staff partners"), &m.v[1]);
    assert_ptr_equal(gw_user_map_find(&m, "bob", "partners"), &m.v[1]);
    assert_null(gw_user_map_find(&m, "dave", "staff partner"));
    assert_null(gw_user_map_find(&m, "dave", NULL));
    assert_null(gw_user_map_find(&m, "Alice", ""));     /* exact */
    assert_null(gw_user_map_find(&m, "partners", ""));  /* a user is not a group */
    assert_null(gw_user_map_find(&m, "@partners", "")); /* nor is "@name" a user */
    assert_ptr_equal(gw_user_map_find(&m, "carol", ""), &m.v[3]);
    gw_user_map_free(&m);
    assert_null(m.v);
}

static void test_errors_name_their_line(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"alice\n", "map:1: expected \"user-or-@group backend"},
        {"\nalice b1 extra\n", "map:2: expected"},
        {"@ b1\n", "map:1: @group: not a group name"},
        {"alice :x\n", "map:1: alice: backend: a backend's name or *"},
        {"alice b1:a:b:c\n", "map:1: alice: expected keep or the absolute path"},
        {"alice b1:acct:relative.pw\n", "map:1: alice: expected keep or the absolute path"},
        {"alice b1::/etc/pw\n", "map:1: alice: a password file is a fixed account's"},
        {"alice b1:acct:\n", "map:1: alice: expected keep"},
        {"# x\n\n\nbob b1\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx b1\n",
         "map:5: user: not a user name"},
        {"alice b1:\x01\n", "map:1: control character 0x01 in line"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gw_user_map m = {.n = 99};
        char err[256] = "";
        assert_int_equal(parse(cases[i].text, &m, err, sizeof err), -1);
        if (strstr(err, cases[i].want) == NULL)
            fail_msg("case %zu: \"%s\" does not contain \"%s\"", i, err, cases[i].want);
        assert_null(m.v);
        assert_int_equal(m.n, 0);
    }
    gw_user_map m;
    char err[64];
    assert_int_equal(gw_user_map_parse("a b\0c d\n", 8, "map", &m, err, sizeof err), -1);
    assert_string_equal(err, "map:1: a NUL byte");
}

static char *write_file(const char *dir, const char *name, const char *text, mode_t mode)
{
    char *path = malloc(strlen(dir) + strlen(name) + 2);
    assert_non_null(path);
    sprintf(path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
    return path;
}

static void test_password_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_user_map.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *pw = write_file(dir, "svc.pw", "s3cr:et pw\nsecond line\n", 0600);
    char text[512];
    snprintf(text, sizeof text, "@ops b1:svc:%s\nalice b1\n", pw);
    char *map = write_file(dir, "map", text, 0644); /* the map itself holds no secret */
    gw_user_map m;
    char err[512] = "";
    assert_int_equal(gw_user_map_load_file(map, &m, err, sizeof err), 0);
    assert_int_equal(m.n, 2);
    assert_string_equal(m.v[0].password, "s3cr:et pw"); /* the first line, all of it */
    assert_null(m.v[1].password);
    gw_user_map_free(&m);

    assert_int_equal(chmod(pw, 0640), 0);
    assert_int_equal(gw_user_map_load_file(map, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, ":1: password file "));
    assert_non_null(strstr(err, "mode 0640: readable or writable by group or others"));
    assert_null(m.v);

    assert_int_equal(chmod(pw, 0400), 0);
    free(write_file(dir, "empty.pw", "\nx\n", 0600));
    snprintf(text, sizeof text, "alice b1\n@ops b1:svc:%s/empty.pw\n", dir);
    free(write_file(dir, "map", text, 0644));
    assert_int_equal(gw_user_map_load_file(map, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, ":2: password file "));
    assert_non_null(strstr(err, "the first line is empty"));

    snprintf(text, sizeof text, "alice b1:svc:%s/missing.pw\n", dir);
    free(write_file(dir, "map", text, 0644));
    assert_int_equal(gw_user_map_load_file(map, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot read: No such file"));

    snprintf(text, sizeof text, "%s/none", dir);
    assert_int_equal(gw_user_map_load_file(text, &m, err, sizeof err), -1);
    assert_non_null(strstr(err, ": cannot read"));

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(pw);
    free(map);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_errors_name_their_line),
        cmocka_unit_test(test_password_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
