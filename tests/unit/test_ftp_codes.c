/* Unit tests for include/ftp_codes.h: every named reply text is one well-formed line. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ftp_codes.h"

struct named {
    const char *name;
    const char *text;
};

#define ENTRY(name) {#name, name},
static const struct named texts[] = {GW_REPLY_TEXTS(ENTRY)};
#undef ENTRY

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* "ddd text\r\n": a code 100-599, one space, printable text, CRLF once, at the end. */
static bool well_formed(const char *t)
{
    size_t n = strlen(t), i;

    if (n < 7 || t[0] < '1' || t[0] > '5' || t[1] < '0' || t[1] > '9' || t[2] < '0' || t[2] > '9' ||
        t[3] != ' ' || t[4] == ' ' || t[n - 2] != '\r' || t[n - 1] != '\n')
        return false;
    for (i = 4; i < n - 2; i++)
        if (t[i] < 0x20 || t[i] >= 0x7f)
            return false; /* no CR, LF or other control bytes */
    return true;
}

static void check_form(const char *name, const char *t)
{
    if (!well_formed(t))
        fail_msg("%s is not \"ddd text\\r\\n\": \"%s\"", name, t);
}

static void test_form_checker(void **state)
{
    assert_true(well_formed("200 PBSZ=0\r\n"));
    assert_false(well_formed("200 PBSZ=0\n"));
    assert_false(well_formed("200 PBSZ=0\r\n\r\n"));
    assert_false(well_formed("200-PBSZ=0\r\n"));
    assert_false(well_formed("20 PBSZ=0\r\n"));
    assert_false(well_formed("600 PBSZ=0\r\n"));
    assert_false(well_formed("200 a\rb\r\n"));
    assert_false(well_formed("200 \r\n"));
}

static void test_every_text_is_one_reply_line(void **state)
{
    assert_true(COUNT(texts) > 60);
    for (size_t i = 0; i < COUNT(texts); i++)
        check_form(texts[i].name, texts[i].text);
}

static void test_names_and_texts_unique(void **state)
{
    for (size_t i = 0; i < COUNT(texts); i++)
        for (size_t j = 0; j < i; j++) {
            assert_string_not_equal(texts[i].name, texts[j].name);
            assert_string_not_equal(texts[i].text, texts[j].text);
        }
}

/* The format is no fixed text but has the same shape around its %s. */
static void test_format_text(void **state)
{
    char buf[256];

    snprintf(buf, sizeof(buf), GW_R_FMT_BACKEND_TLS_FAILED, "handshake failure");
    check_form("GW_R_FMT_BACKEND_TLS_FAILED", buf);
    assert_string_equal(buf, "421 Service not available: backend TLS failed (handshake "
                             "failure).\r\n");
}

/* Texts tests and clients match on, byte for byte. */
static void test_known_texts(void **state)
{
    assert_string_equal(GW_R_PBSZ_OK, "200 PBSZ=0\r\n");
    assert_string_equal(GW_R_AUTH_OK, "234 Proceed with TLS negotiation.\r\n");
    assert_string_equal(GW_R_XFER_ABORTED, "426 Connection closed; transfer aborted.\r\n");
    assert_string_equal(GW_R_BAD_NETPROTO, "522 Network protocol not supported, use (1,2)\r\n");
    assert_int_equal(GW_FTP_AUTH_OK, 234);
}

/* Every GW_R_ text defined in the header is in GW_REPLY_TEXTS (run from the repository root,
 * as `make unit` does). */
static void test_list_complete(void **state)
{
    FILE *f = fopen("include/ftp_codes.h", "r");
    char line[512], name[128];
    size_t defined = 0;

    if (!f)
        skip();
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "#define %127[A-Z0-9_]", name) == 1 && strncmp(name, "GW_R_", 5) == 0 &&
            strncmp(name, "GW_R_FMT_", 9) != 0) {
            size_t i;
            for (i = 0; i < COUNT(texts); i++)
                if (strcmp(texts[i].name, name) == 0)
                    break;
            if (i == COUNT(texts))
                fail_msg("%s is missing from GW_REPLY_TEXTS", name);
            defined++;
        }
    fclose(f);
    assert_int_equal(defined, COUNT(texts));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_checker),
        cmocka_unit_test(test_every_text_is_one_reply_line),
        cmocka_unit_test(test_names_and_texts_unique),
        cmocka_unit_test(test_format_text),
        cmocka_unit_test(test_known_texts),
        cmocka_unit_test(test_list_complete),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
