/* proxy/textfile.c: the line walker (LF and CRLF, comments, blanks, bad bytes by line) and
 * the whole-file reader (regular files only, size bound, modes refused for secrets). */
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

#include "textfile.h"

static void test_lines(void **state)
{
    (void)state;
    static const char text[] = "# comment\r\n\n  first  \r\n\t\n  # indented comment\n"
                               "second\tword\nlast";
    gw_lines it = gw_lines_start(text, sizeof text - 1);
    const char *s;
    size_t n;
    assert_true(gw_lines_next(&it, &s, &n));
    assert_int_equal(it.line, 3);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "first", 5);
    assert_true(gw_lines_next(&it, &s, &n));
    assert_int_equal(it.line, 6);
    assert_int_equal(n, 11);
    assert_memory_equal(s, "second\tword", 11);
    assert_true(gw_lines_next(&it, &s, &n));
    assert_int_equal(it.line, 7);
    assert_memory_equal(s, "last", 4);
    assert_false(gw_lines_next(&it, &s, &n));
    assert_int_equal(it.bad, 0);

    gw_lines none = gw_lines_start(NULL, 0);
    assert_false(gw_lines_next(&none, &s, &n));
    assert_int_equal(none.bad, 0);
}

static void test_bad_bytes(void **state)
{
    (void)state;
    char buf[64];
    static const char nul[] = "a\nb\n\nc\0d\ne\n";
    gw_lines it = gw_lines_start(nul, sizeof nul - 1);
    const char *s;
    size_t n;
    assert_true(gw_lines_next(&it, &s, &n));
    assert_true(gw_lines_next(&it, &s, &n));
    assert_false(gw_lines_next(&it, &s, &n)); /* stops at line 4, e is never reached */
    assert_int_equal(it.line, 4);
    assert_string_equal(gw_lines_bad_text(&it, buf, sizeof buf), "a NUL byte");
    assert_false(gw_lines_next(&it, &s, &n));

    static const char esc[] = "ok\n# \x1b[2J in a comment too\n";
    it = gw_lines_start(esc, sizeof esc - 1);
    assert_true(gw_lines_next(&it, &s, &n));
    assert_false(gw_lines_next(&it, &s, &n));
    assert_int_equal(it.line, 2);
    assert_string_equal(gw_lines_bad_text(&it, buf, sizeof buf), "control character 0x1b in line");
}

static void test_fail_format(void **state)
{
    (void)state;
    char err[64];
    assert_int_equal(gw_textfile_fail(err, sizeof err, "f.txt", 3, "bad %s", "thing"), -1);
    assert_string_equal(err, "f.txt:3: bad thing");
    gw_textfile_fail(err, sizeof err, "f.txt", 0, "cannot read");
    assert_string_equal(err, "f.txt: cannot read");
    assert_int_equal(gw_textfile_fail(NULL, 0, "f", 1, "x"), -1);
}

static void test_read(void **state)
{
    (void)state;
    char dir[] = "/tmp/gw-textfile-XXXXXX", path[128], err[512];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/f", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("hello\nworld\n", f);
    fclose(f);
    size_t len = 0;

    assert_int_equal(chmod(path, 0600), 0);
    char *t = gw_textfile_read(path, 1024, GW_TEXTFILE_OWNER_ONLY, &len, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(len, 12);
    assert_string_equal(t, "hello\nworld\n");
    free(t);

    assert_int_equal(chmod(path, 0640), 0); /* a group may read a NO_OTHERS file */
    t = gw_textfile_read(path, 1024, GW_TEXTFILE_NO_OTHERS, &len, err, sizeof err);
    assert_non_null(t);
    free(t);
    assert_null(gw_textfile_read(path, 1024, GW_TEXTFILE_OWNER_ONLY, &len, err, sizeof err));
    assert_non_null(strstr(err, "mode 0640: readable or writable by group or others"));

    assert_int_equal(chmod(path, 0604), 0);
    assert_null(gw_textfile_read(path, 1024, GW_TEXTFILE_NO_OTHERS, &len, err, sizeof err));
    assert_non_null(strstr(err, "mode 0604: readable or writable by others (chmod o-rwx)"));
    t = gw_textfile_read(path, 1024, 0, &len, err, sizeof err); /* not a secret */
    assert_non_null(t);
    free(t);

    assert_null(gw_textfile_read(path, 11, 0, &len, err, sizeof err));
    assert_non_null(strstr(err, "file too large (more than 11 bytes)"));
    assert_null(gw_textfile_read(dir, 1024, 0, &len, err, sizeof err));
    assert_non_null(strstr(err, "not a regular file"));
    unlink(path);
    assert_null(gw_textfile_read(path, 1024, 0, &len, err, sizeof err));
    assert_non_null(strstr(err, ": cannot read: "));
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_bad_bytes),
        cmocka_unit_test(test_fail_format),
        cmocka_unit_test(test_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
