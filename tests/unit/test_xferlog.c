/* Unit tests for the transfer log lines (xferlog.c) and the xferlog_format key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "xferlog.h"

/* 2026-12-03 17:57:53 UTC, a Thursday, and 2026-11-25 09:05:07 UTC (a single-digit hour
 * and a two-digit day). */
#define T_DEC3 ((time_t)1796320673)
#define T_NOV25 ((time_t)1795597507)

static gw_xfer_rec retr(void)
{
    gw_xfer_rec r = {.end = T_DEC3,
                     .ms = 1500,
                     .session = 17,
                     .peer = "127.0.0.1:40312",
                     .host = "127.0.0.1",
                     .user = "alice",
                     .verb = "RETR",
                     .file = "/pub/data.bin",
                     .bytes = 1048576,
                     .code = 226,
                     .result = "ok"};
    return r;
}

/* Blank-separated fields as xferstats splits them (runs of blanks). */
static int fields(const char *line, char out[][256], int max)
{
    int n = 0;
    const char *p = line;
    while (*p && *p != '\n') {
        while (*p == ' ')
            p++;
        if (!*p || *p == '\n')
            break;
        size_t k = strcspn(p, " \n");
        if (n < max)
            snprintf(out[n], 256, "%.*s", (int)k, p);
        n++;
        p += k;
    }
    return n;
}

static void test_wuftpd_download(void **state)
{
    (void)state;
    char line[512];
    gw_xfer_rec r = retr();
    size_t n = gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r);
    const char *want = "Thu Dec  3 17:57:53 2026 2 127.0.0.1 1048576 /pub/data.bin b _ o r alice "
                       "ftp 0 * c\n";
    assert_string_equal(line, want);
    assert_int_equal(n, strlen(want));
}

static void test_wuftpd_upload_spaces_ascii_failed(void **state)
{
    (void)state;
    char line[512], f[20][256];
    gw_xfer_rec r = retr();
    r.end = T_NOV25;
    r.verb = "STOR";
    r.file = "my report\t2026.txt";
    r.ascii = true;
    r.bytes = 0;
    r.ms = 0;
    r.code = 451;
    r.result = "failed";
    gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r);
    assert_string_equal(line, "Wed Nov 25 09:05:07 2026 1 127.0.0.1 0 my_report_2026.txt a _ i r "
                              "alice ftp 0 * i\n");
    assert_int_equal(fields(line, f, 20), 18);
    /* A 2xx from the backend but a broken client leg is not complete either. */
    r.code = 226;
    gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r);
    assert_int_equal(fields(line, f, 20), 18);
    assert_string_equal(f[17], "i");
    r.result = "ok";
    gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r);
    fields(line, f, 20);
    assert_string_equal(f[17], "c");
    for (const char *const *v = (const char *const[]){"STOU", "APPE", "stor", NULL}; *v; v++) {
        r.verb = *v;
        assert_true(gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r) > 0);
        fields(line, f, 20);
        assert_string_equal(f[11], "i");
    }
}

static void test_wuftpd_anonymous_and_odd_fields(void **state)
{
    (void)state;
    char line[512], f[20][256];
    gw_xfer_rec r = retr();
    r.user = "Anonymous";
    gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r);
    fields(line, f, 20);
    assert_string_equal(f[12], "a");
    assert_string_equal(f[13], "Anonymous"); /* never its password (an e-mail) */
    /* No user yet, an empty name, control bytes and a CR/LF: still 18 fields, one line. */
    r.user = "";
    r.file = "";
    gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r);
    assert_int_equal(fields(line, f, 20), 18);
    assert_string_equal(f[8], "-");
    assert_string_equal(f[13], "*");
    r.user = "bob smith";
    r.file = "a\r\nForged line\x01\x7f";
    r.host = NULL;
    size_t n = gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r);
    assert_int_equal(fields(line, f, 20), 18);
    assert_string_equal(f[8], "a??Forged_line??");
    assert_string_equal(f[13], "bob_smith");
    assert_string_equal(f[6], "-");
    assert_ptr_equal(strchr(line, '\n'), line + n - 1);
}

static void test_wuftpd_skips_listings(void **state)
{
    (void)state;
    char line[512] = "x";
    gw_xfer_rec r = retr();
    for (const char *const *v = (const char *const[]){"LIST", "NLST", "MLSD", "", NULL}; *v; v++) {
        r.verb = *v;
        assert_int_equal(gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r), 0);
        assert_string_equal(line, "");
    }
    r.verb = NULL;
    assert_int_equal(gw_xferlog_line(line, sizeof line, GW_XFERLOG_WUFTPD, &r), 0);
    r.verb = "LIST";
    assert_true(gw_xferlog_line(line, sizeof line, GW_XFERLOG_KV, &r) > 0); /* kv logs them */
}

static void test_kv_is_the_old_format(void **state)
{
    (void)state;
    char line[512];
    gw_xfer_rec r = retr();
    gw_xferlog_line(line, sizeof line, GW_XFERLOG_KV, &r);
    assert_string_equal(line, "2026-12-03T17:57:53Z session=17 peer=127.0.0.1:40312 "
                              "user=\"alice\" verb=RETR file=\"/pub/data.bin\" bytes=1048576 "
                              "ms=1500 code=226 result=ok\n");
    r.file = "two\nlines";
    gw_xferlog_line(line, sizeof line, GW_XFERLOG_KV, &r);
    assert_non_null(strstr(line, "file=\"two?lines\""));
}

static void test_long_names_are_cut(void **state)
{
    (void)state;
    char big[2000], line[200];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    gw_xfer_rec r = retr();
    r.file = big;
    for (int f = GW_XFERLOG_KV; f <= GW_XFERLOG_WUFTPD; f++) {
        size_t n = gw_xferlog_line(line, sizeof line, (enum gw_xferlog_format)f, &r);
        assert_int_equal(n, sizeof line - 1);
        assert_int_equal(strlen(line), n);
        assert_int_equal(line[n - 1], '\n');
        assert_non_null(strstr(line, f == GW_XFERLOG_KV ? "result=ok\n" : "ftp 0 * c\n"));
    }
    /* Too small for the fixed fields: nothing, rather than a line without its status. */
    assert_int_equal(gw_xferlog_line(line, 40, GW_XFERLOG_WUFTPD, &r), 0);
    assert_int_equal(gw_xferlog_line(line, 40, GW_XFERLOG_KV, &r), 0);
    assert_int_equal(gw_xferlog_line(line, 0, GW_XFERLOG_KV, &r), 0);
}

static void test_config_key(void **state)
{
    (void)state;
    static const char *const ini[] = {"", "xferlog_format = kv\n", "xferlog_format = wuftpd\n"};
    static const enum gw_xferlog_format want[] = {GW_XFERLOG_KV, GW_XFERLOG_KV, GW_XFERLOG_WUFTPD};
    char text[512], err[512];
    for (int i = 0; i < 3; i++) {
        gw_config cfg;
        snprintf(text, sizeof text,
                 "[global]\nxferlog = /tmp/x.log\n%s[frontend f]\nlisten = 127.0.0.1:2990\n"
                 "backend = b\n[backend b]\naddress = 127.0.0.1:21\n",
                 ini[i]);
        assert_int_equal(gw_config_parse(text, strlen(text), "t.ini", &cfg, err, sizeof err), 0);
        assert_int_equal(cfg.xferlog_format, want[i]);
        gw_config_free(&cfg);
    }
    gw_config cfg;
    snprintf(text, sizeof text, "[global]\nxferlog_format = clf\n");
    assert_int_not_equal(gw_config_parse(text, strlen(text), "t.ini", &cfg, err, sizeof err), 0);
    assert_non_null(strstr(err, "xferlog_format"));
    assert_non_null(strstr(err, "kv | wuftpd"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wuftpd_download),
        cmocka_unit_test(test_wuftpd_upload_spaces_ascii_failed),
        cmocka_unit_test(test_wuftpd_anonymous_and_odd_fields),
        cmocka_unit_test(test_wuftpd_skips_listings),
        cmocka_unit_test(test_kv_is_the_old_format),
        cmocka_unit_test(test_long_names_are_cut),
        cmocka_unit_test(test_config_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
