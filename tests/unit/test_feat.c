/* Unit tests for proxy/feat.c: FEAT rewriting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "feat.h"

#define GW_TLS_LINES " AUTH TLS;SSL;\r\n PBSZ\r\n PROT C;P;\r\n"
#define GW_DATA_LINES " EPSV\r\n EPRT\r\n"
#define HEAD "211-Features:\r\n"
#define END "211 End\r\n"

static const gw_feat_opts tls_opts = {.tls = true, .ccc = false};

static void check(const char *backend, size_t len, const gw_feat_opts *o, const char *want)
{
    char out[2048];
    size_t n;

    memset(out, 'x', sizeof(out));
    n = gw_feat_rewrite(backend, len, o, out, sizeof(out));
    if (n != strlen(want) || strcmp(out, want) != 0)
        fail_msg("got (%zu):\n%s\nwant (%zu):\n%s", n, out, strlen(want), want);
}

static void check_str(const char *backend, const gw_feat_opts *o, const char *want)
{
    check(backend, strlen(backend), o, want);
}

static void test_vsftpd(void **state)
{
    check_str("211-Features:\r\n"
              " AUTH SSL\r\n"
              " AUTH TLS\r\n"
              " EPRT\r\n"
              " EPSV\r\n"
              " MDTM\r\n"
              " PASV\r\n"
              " PBSZ\r\n"
              " PROT\r\n"
              " REST STREAM\r\n"
              " SIZE\r\n"
              " TVFS\r\n"
              " UTF8\r\n"
              "211 End\r\n",
              &tls_opts,
              HEAD GW_TLS_LINES GW_DATA_LINES " MDTM\r\n PASV\r\n REST STREAM\r\n SIZE\r\n"
                                              " TVFS\r\n UTF8\r\n" END);
}

static void test_proftpd_drops_tls_keeps_rest(void **state)
{
    check_str("211-Features:\r\n"
              " LANG en-US*\r\n"
              " MDTM\r\n"
              " MFMT\r\n"
              " TVFS\r\n"
              " UTF8\r\n"
              " auth tls\r\n"
              " Pbsz\r\n"
              " PROT C;P;\r\n"
              " CCC\r\n"
              " CPSV\r\n"
              " sscn\r\n"
              " MLST modify*;perm*;size*;type*;unique*;UNIX.mode*;\r\n"
              " SITE MKDIR\r\n"
              " SITE RMDIR\r\n"
              " SITE UTIME\r\n"
              " REST STREAM\r\n"
              " SIZE\r\n"
              "211 End\r\n",
              &tls_opts,
              HEAD GW_TLS_LINES GW_DATA_LINES
              " LANG en-US*\r\n"
              " MDTM\r\n"
              " MFMT\r\n"
              " TVFS\r\n"
              " UTF8\r\n"
              " MLST modify*;perm*;size*;type*;unique*;UNIX.mode*;\r\n"
              " SITE MKDIR\r\n"
              " SITE RMDIR\r\n"
              " SITE UTIME\r\n"
              " REST STREAM\r\n"
              " SIZE\r\n" END);
}

static void test_backend_error_gives_gateway_lines(void **state)
{
    check_str("500 Unknown command.\r\n", &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES END);
    check_str("502 Command not implemented\r\n", &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES END);
    check_str("530-Please login\r\n UTF8\r\n530 with USER and PASS.\r\n", &tls_opts,
              HEAD GW_TLS_LINES GW_DATA_LINES END);
}

static void test_single_line_211(void **state)
{
    check_str("211 No features supported\r\n", &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES END);
}

static void test_empty_backend(void **state)
{
    check("", 0, &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES END);
    check(NULL, 0, &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES END);
}

static void test_no_tls(void **state)
{
    gw_feat_opts o = {.tls = false, .ccc = false};
    static const char backend[] = "211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n UTF8\r\n"
                                  "211 End\r\n";

    check_str(backend, &o, HEAD GW_DATA_LINES " UTF8\r\n" END);
    o.ccc = true; /* CCC only makes sense with TLS */
    check_str(backend, &o, HEAD GW_DATA_LINES " UTF8\r\n" END);
}

static void test_ccc_when_allowed(void **state)
{
    gw_feat_opts o = {.tls = true, .ccc = true};

    check_str("211-Features:\r\n SIZE\r\n211 End\r\n", &o,
              HEAD GW_TLS_LINES " CCC\r\n" GW_DATA_LINES " SIZE\r\n" END);
}

static void test_duplicates_dropped(void **state)
{
    check_str("211-Features:\r\n"
              " UTF8\r\n"
              " SIZE\r\n"
              " utf8\r\n"
              " UTF8 \r\n"
              " MDTM\r\n"
              " SIZE\r\n"
              " UTF\r\n"
              " UTF8X\r\n"
              "211 End\r\n",
              &tls_opts,
              HEAD GW_TLS_LINES GW_DATA_LINES " UTF8\r\n SIZE\r\n MDTM\r\n UTF\r\n UTF8X\r\n" END);
}

static void test_first_word_only(void **state)
{
    check_str("211-Features:\r\n"
              " AUTHX\r\n"
              " EPSV4\r\n"
              " PROTOCOL x\r\n"
              " EPRT\r\n"
              " eprt 1,2\r\n"
              "211 End\r\n",
              &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES " AUTHX\r\n EPSV4\r\n PROTOCOL x\r\n" END);
}

static void test_tolerant_layouts(void **state)
{
    /* bare LF, no leading space, "211-" on every line, tabs, blank lines, a bare "211" */
    check_str("211-Extensions supported:\n"
              "SIZE\n"
              "211-MDTM\n"
              "211-\n"
              "\t REST STREAM \t\r\n"
              "\r\n"
              "211\r\n"
              "   \r\n"
              "211 END\n"
              " TVFS\r\n"
              "226 unrelated\r\n",
              &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES " SIZE\r\n MDTM\r\n REST STREAM\r\n" END);
}

static void test_unfinished_reply(void **state)
{
    check_str("211-Features:\r\n SIZE\r\n MD", &tls_opts,
              HEAD GW_TLS_LINES GW_DATA_LINES " SIZE\r\n MD\r\n" END);
}

static void test_control_bytes_dropped(void **state)
{
    static const char backend[] = "211-Features:\r\n"
                                  " SIZE\r\n"
                                  " EVIL\0X\r\n"
                                  " IAC\xff\xf4\r\n"
                                  " BEL\a\r\n"
                                  " UTF8\x80\r\n"
                                  " DEL\x7f\r\n"
                                  " CR\rLF\r\n"
                                  " MDTM\r\n"
                                  "211 End\r\n";

    check(backend, sizeof(backend) - 1, &tls_opts,
          HEAD GW_TLS_LINES GW_DATA_LINES " SIZE\r\n MDTM\r\n" END);
}

static void test_len_is_respected(void **state)
{
    static const char backend[] = "211-Features:\r\n SIZE\r\n MDTM\r\n211 End\r\n";

    /* only the bytes up to " SIZE" are part of the reply */
    check(backend, 20, &tls_opts, HEAD GW_TLS_LINES GW_DATA_LINES " SIZE\r\n" END);
}

static void test_cap(void **state)
{
    static const char backend[] = "211-Features:\r\n SIZE\r\n211 End\r\n";
    static const char want[] = HEAD GW_TLS_LINES GW_DATA_LINES " SIZE\r\n" END;
    char out[256];
    size_t n = sizeof(want) - 1, cap;

    assert_int_equal(gw_feat_rewrite(backend, sizeof(backend) - 1, &tls_opts, out, n + 1), n);
    assert_string_equal(out, want);
    for (cap = 0; cap <= n; cap++) {
        memset(out, 'x', sizeof(out));
        assert_int_equal(gw_feat_rewrite(backend, sizeof(backend) - 1, &tls_opts, out, cap), 0);
        if (cap > 0)
            assert_int_equal(out[0], '\0');
        assert_int_equal(out[cap], 'x'); /* nothing written past cap */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vsftpd),
        cmocka_unit_test(test_proftpd_drops_tls_keeps_rest),
        cmocka_unit_test(test_backend_error_gives_gateway_lines),
        cmocka_unit_test(test_single_line_211),
        cmocka_unit_test(test_empty_backend),
        cmocka_unit_test(test_no_tls),
        cmocka_unit_test(test_ccc_when_allowed),
        cmocka_unit_test(test_duplicates_dropped),
        cmocka_unit_test(test_first_word_only),
        cmocka_unit_test(test_tolerant_layouts),
        cmocka_unit_test(test_unfinished_reply),
        cmocka_unit_test(test_control_bytes_dropped),
        cmocka_unit_test(test_len_is_respected),
        cmocka_unit_test(test_cap),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
