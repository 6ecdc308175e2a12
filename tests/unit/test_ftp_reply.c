/* Unit tests for proxy/ftp_reply.c: reply lines, multi-line replies, errors, line cap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ftp_reply.h"

/* Every event with the absolute input offset after it, so that feeding the same bytes in
 * different pieces can be compared, including what `used` reported. */
struct transcript {
    char ev[4 * GW_REPLY_LINE_MAX];
    size_t ev_len;
};

static void ev_put(struct transcript *t, const void *s, size_t n)
{
    assert_true(t->ev_len + n <= sizeof(t->ev));
    memcpy(t->ev + t->ev_len, s, n);
    t->ev_len += n;
}

static void ev_printf(struct transcript *t, const char *fmt, ...)
{
    char tmp[96];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    ev_put(t, tmp, (size_t)n);
}

/* Feed one piece starting at absolute offset base; false once the parser failed. */
static bool feed_piece(gw_reply_parser *p, const uint8_t *in, size_t n, size_t base,
                       struct transcript *t)
{
    size_t off = 0, used;
    int rc;

    do {
        rc = gw_reply_feed(p, in + off, n - off, &used);
        assert_true(used <= n - off);
        off += used;
        switch (rc) {
        case GW_REPLY_LINE:
            assert_true(p->len >= 2 && p->len <= GW_REPLY_LINE_MAX + 2);
            assert_int_equal(strlen(p->line), p->len);
            assert_memory_equal(p->line + p->len - 2, "\r\n", 2);
            ev_printf(t, "@%zu L%d%c%c:", base + off, p->code, p->first ? 'F' : '-',
                      p->last ? 'E' : '-');
            ev_put(t, p->line, p->len);
            break;
        case GW_REPLY_INVALID:
            ev_printf(t, "@%zu INVALID", base + off);
            return false;
        case GW_REPLY_TOOLONG:
            ev_printf(t, "@%zu TOOLONG", base + off);
            return false;
        default:
            assert_int_equal(rc, GW_REPLY_AGAIN);
            assert_int_equal(off, n);
        }
    } while (off < n);
    return true;
}

static void run_cuts(const uint8_t *in, size_t n, const size_t *cuts, size_t ncuts,
                     struct transcript *t)
{
    gw_reply_parser *p = malloc(sizeof(*p));
    size_t i, from = 0;
    bool ok = true;

    assert_non_null(p);
    t->ev_len = 0;
    gw_reply_init(p);
    for (i = 0; i < ncuts && ok; i++) {
        ok = feed_piece(p, in + from, cuts[i] - from, from, t);
        from = cuts[i];
    }
    if (ok && feed_piece(p, in + from, n - from, from, t))
        ev_printf(t, " end multi=%d", p->in_multi);
    gw_reply_free(p);
    free(p);
}

static void check_split_invariance(const uint8_t *in, size_t n, struct transcript *whole)
{
    struct transcript *t = malloc(sizeof(*t));
    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    size_t k;

    assert_non_null(t);
    assert_non_null(cuts);
    run_cuts(in, n, NULL, 0, whole);
    for (k = 0; k <= n; k++) {
        run_cuts(in, n, &k, 1, t);
        assert_int_equal(t->ev_len, whole->ev_len);
        assert_memory_equal(t->ev, whole->ev, whole->ev_len);
    }
    for (k = 0; k < n; k++)
        cuts[k] = k + 1;
    run_cuts(in, n, cuts, n, t);
    assert_int_equal(t->ev_len, whole->ev_len);
    assert_memory_equal(t->ev, whole->ev, whole->ev_len);
    free(cuts);
    free(t);
}

static void assert_transcript(const struct transcript *t, const char *want)
{
    if (t->ev_len != strlen(want) || memcmp(t->ev, want, t->ev_len) != 0)
        fail_msg("got:\n%.*s\nwant:\n%s", (int)t->ev_len, t->ev, want);
}

static gw_reply_parser *new_parser(void)
{
    gw_reply_parser *p = malloc(sizeof(*p));

    assert_non_null(p);
    gw_reply_init(p);
    return p;
}

static int feed_str(gw_reply_parser *p, const char *s, size_t *used)
{
    return gw_reply_feed(p, (const uint8_t *)s, strlen(s), used);
}

static void test_single_line(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t used;

    assert_int_equal(feed_str(p, "220 Hello\r\n", &used), GW_REPLY_LINE);
    assert_int_equal(used, 11);
    assert_int_equal(p->code, 220);
    assert_true(p->first);
    assert_true(p->last);
    assert_false(p->in_multi);
    assert_int_equal(p->len, 11);
    assert_string_equal(p->line, "220 Hello\r\n");
    gw_reply_free(p);
    free(p);
}

static void test_bare_code_is_single_line(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t used;

    assert_int_equal(feed_str(p, "200\r\n", &used), GW_REPLY_LINE);
    assert_int_equal(p->code, 200);
    assert_true(p->first && p->last);
    assert_string_equal(p->line, "200\r\n");
    assert_int_equal(feed_str(p, "226\n", &used), GW_REPLY_LINE);
    assert_int_equal(p->code, 226);
    assert_true(p->first && p->last);
    assert_string_equal(p->line, "226\r\n");
    gw_reply_free(p);
    free(p);
}

static void test_bare_lf_gets_crlf(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t used;

    assert_int_equal(feed_str(p, "200 ok\n", &used), GW_REPLY_LINE);
    assert_string_equal(p->line, "200 ok\r\n");
    assert_int_equal(p->len, 8);
    gw_reply_free(p);
    free(p);
}

static void test_partial_line(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t used;

    assert_int_equal(feed_str(p, "33", &used), GW_REPLY_AGAIN);
    assert_int_equal(used, 2);
    assert_int_equal(feed_str(p, "1 Password required\r", &used), GW_REPLY_AGAIN);
    assert_int_equal(feed_str(p, "\n", &used), GW_REPLY_LINE);
    assert_int_equal(used, 1);
    assert_int_equal(p->code, 331);
    assert_string_equal(p->line, "331 Password required\r\n");
    assert_int_equal(feed_str(p, "", &used), GW_REPLY_AGAIN);
    assert_int_equal(p->len, 0); /* reset on the next call */
    assert_false(p->first || p->last);
    gw_reply_free(p);
    free(p);
}

static void test_multiline_digits_and_other_codes(void **state)
{
    static const char in[] = "211-Status of server\r\n"
                             " 123 leading space\r\n"
                             "123 digits first\r\n"
                             "200 another code with a space\r\n"
                             "211-same code with a dash\r\n"
                             "211\r\n"
                             "2110 four digits\r\n"
                             "211x not a space\r\n"
                             "\r\n"
                             "211 End of status\r\n"
                             "200 next\r\n";
    static const char want[] = "@22 L211F-:211-Status of server\r\n"
                               "@42 L211--: 123 leading space\r\n"
                               "@60 L211--:123 digits first\r\n"
                               "@91 L211--:200 another code with a space\r\n"
                               "@118 L211--:211-same code with a dash\r\n"
                               "@123 L211--:211\r\n"
                               "@141 L211--:2110 four digits\r\n"
                               "@159 L211--:211x not a space\r\n"
                               "@161 L211--:\r\n"
                               "@180 L211-E:211 End of status\r\n"
                               "@190 L200FE:200 next\r\n"
                               " end multi=0";
    struct transcript *t = malloc(sizeof(*t));

    assert_non_null(t);
    check_split_invariance((const uint8_t *)in, sizeof(in) - 1, t);
    assert_transcript(t, want);
    free(t);
}

static void test_multiline_unfinished(void **state)
{
    static const char in[] = "230-Welcome\r\n230-more\r\n23";
    struct transcript *t = malloc(sizeof(*t));

    assert_non_null(t);
    check_split_invariance((const uint8_t *)in, sizeof(in) - 1, t);
    assert_transcript(t, "@13 L230F-:230-Welcome\r\n@23 L230--:230-more\r\n end multi=1");
    free(t);
}

static void test_two_replies_one_read(void **state)
{
    static const char in[] = "150 Opening BINARY mode data connection\r\n226 Transfer complete\r\n";
    gw_reply_parser *p = new_parser();
    size_t used, off;

    assert_int_equal(feed_str(p, in, &used), GW_REPLY_LINE);
    assert_int_equal(p->code, 150);
    assert_true(p->first && p->last);
    off = used;
    assert_int_equal(feed_str(p, in + off, &used), GW_REPLY_LINE);
    assert_int_equal(p->code, 226);
    assert_true(p->first && p->last);
    assert_int_equal(off + used, sizeof(in) - 1);
    gw_reply_free(p);
    free(p);
}

static void test_split_everywhere_mixed(void **state)
{
    static const char in[] = "220-vsFTPd\n"
                             "220-\r\n"
                             "220 ready\r\n"
                             "331 Please specify the password.\r\n"
                             "230 Login successful.\r\n"
                             "227 Entering Passive Mode (127,0,0,1,4,1).\r\n"
                             "150\r\n"
                             "226-Transfer\r\r\n"
                             "226 done\n"
                             "5";
    static const char want[] = "@11 L220F-:220-vsFTPd\r\n"
                               "@17 L220--:220-\r\n"
                               "@28 L220-E:220 ready\r\n"
                               "@62 L331FE:331 Please specify the password.\r\n"
                               "@85 L230FE:230 Login successful.\r\n"
                               "@129 L227FE:227 Entering Passive Mode (127,0,0,1,4,1).\r\n"
                               "@134 L150FE:150\r\n"
                               "@149 L226F-:226-Transfer\r\r\n"
                               "@158 L226-E:226 done\r\n"
                               " end multi=0";
    struct transcript *t = malloc(sizeof(*t));

    assert_non_null(t);
    check_split_invariance((const uint8_t *)in, sizeof(in) - 1, t);
    assert_transcript(t, want);
    free(t);
}

static void test_invalid_first_lines(void **state)
{
    static const struct {
        const char *in;
        size_t used;
    } cases[] = {
        {"hello\r\n", 1},     {"099 x\r\n", 1},    {"600 x\r\n", 1},
        {"20\r\n", 3},        {"2\n", 2},          {"200x\r\n", 4},
        {"200\rx\r\n", 5},    {"\r\n", 1},         {"\n", 1},
        {"2a0 x\r\n", 2},     {"20a x\r\n", 3},    {"200\t\r\n", 4},
        {"SSH-2.0-x\r\n", 1}, {"\x16\x03\x01", 1}, {"200\r\r\n", 5},
        {" 200 x\r\n", 1},
    };
    size_t i, used;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gw_reply_parser *p = new_parser();

        if (feed_str(p, cases[i].in, &used) != GW_REPLY_INVALID || used != cases[i].used)
            fail_msg("case %zu (%s): used %zu", i, cases[i].in, used);
        gw_reply_free(p);
        free(p);
    }
}

static void test_invalid_after_valid_reply(void **state)
{
    static const char in[] = "200 ok\r\nHTTP/1.1 400 Bad Request\r\n";
    struct transcript *t = malloc(sizeof(*t));

    assert_non_null(t);
    check_split_invariance((const uint8_t *)in, sizeof(in) - 1, t);
    assert_transcript(t, "@8 L200FE:200 ok\r\n@9 INVALID");
    free(t);
}

static void test_code_range(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t used;

    assert_int_equal(feed_str(p, "100 x\r\n", &used), GW_REPLY_LINE);
    assert_int_equal(p->code, 100);
    assert_int_equal(feed_str(p, "599 x\r\n", &used), GW_REPLY_LINE);
    assert_int_equal(p->code, 599);
    assert_int_equal(feed_str(p, "000 x\r\n", &used), GW_REPLY_INVALID);
    gw_reply_free(p);
    free(p);
}

static void test_nul_dropped_cr_inside_kept(void **state)
{
    static const char in[] = "200 a\0b\rc\0\r\0\n";
    gw_reply_parser *p = new_parser();
    size_t used;

    assert_int_equal(gw_reply_feed(p, (const uint8_t *)in, sizeof(in) - 1, &used), GW_REPLY_LINE);
    assert_int_equal(used, sizeof(in) - 1);
    assert_string_equal(p->line, "200 ab\rc\r\n");
    assert_int_equal(p->len, 10);
    gw_reply_free(p);
    free(p);
}

static uint8_t *long_reply(const char *head, size_t text, const char *tail, size_t *n)
{
    size_t hl = strlen(head), tl = strlen(tail);
    uint8_t *b = malloc(text + tl);

    assert_non_null(b);
    assert_true(hl <= text);
    memcpy(b, head, hl);
    memset(b + hl, 'a', text - hl);
    memcpy(b + text, tail, tl);
    *n = text + tl;
    return b;
}

static void test_line_cap_exact(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t n, used;
    uint8_t *b = long_reply("200 ", GW_REPLY_LINE_MAX, "\r\n", &n);

    assert_int_equal(gw_reply_feed(p, b, n, &used), GW_REPLY_LINE);
    assert_int_equal(used, n);
    assert_int_equal(p->len, GW_REPLY_LINE_MAX + 2);
    assert_int_equal(strlen(p->line), GW_REPLY_LINE_MAX + 2);
    free(b);
    gw_reply_free(p);
    free(p);
}

static void test_line_cap_exact_bare_lf(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t n, used;
    uint8_t *b = long_reply("200 ", GW_REPLY_LINE_MAX, "\n", &n);

    assert_int_equal(gw_reply_feed(p, b, n, &used), GW_REPLY_LINE);
    assert_int_equal(p->len, GW_REPLY_LINE_MAX + 2);
    assert_memory_equal(p->line + GW_REPLY_LINE_MAX, "\r\n", 3);
    free(b);
    gw_reply_free(p);
    free(p);
}

static void test_line_cap_one_over(void **state)
{
    struct transcript *t = malloc(sizeof(*t));
    size_t n;
    uint8_t *b = long_reply("200 ", GW_REPLY_LINE_MAX + 1, "\r\n", &n);
    char want[64];

    assert_non_null(t);
    check_split_invariance(b, n, t);
    snprintf(want, sizeof(want), "@%d TOOLONG", GW_REPLY_LINE_MAX + 1);
    assert_transcript(t, want);
    free(b);
    free(t);
}

static void test_line_cap_cr_then_text(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t n, used;
    uint8_t *b = long_reply("200 ", GW_REPLY_LINE_MAX, "\rx\r\n", &n);

    assert_int_equal(gw_reply_feed(p, b, n, &used), GW_REPLY_TOOLONG);
    assert_int_equal(used, GW_REPLY_LINE_MAX + 2);
    free(b);
    gw_reply_free(p);
    free(p);
}

static void test_line_cap_middle_line(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t n, used;
    uint8_t *b = long_reply(" ", GW_REPLY_LINE_MAX + 1, "\r\n", &n);

    assert_int_equal(feed_str(p, "214-Help\r\n", &used), GW_REPLY_LINE);
    assert_int_equal(gw_reply_feed(p, b, n, &used), GW_REPLY_TOOLONG);
    free(b);
    gw_reply_free(p);
    free(p);
}

static void test_split_everywhere_at_cap(void **state)
{
    struct transcript *t = malloc(sizeof(*t));
    size_t n;
    uint8_t *b = long_reply("211-", GW_REPLY_LINE_MAX, "\r\n211 End\r\n", &n);
    char want[64];

    assert_non_null(t);
    check_split_invariance(b, n, t);
    assert_true(t->ev_len > 20);
    snprintf(want, sizeof(want), "@%d L211F-:211-aaa", GW_REPLY_LINE_MAX + 2);
    assert_memory_equal(t->ev, want, strlen(want));
    free(b);
    free(t);
}

/* The line buffer: nothing until bytes come, grown for a long line, given back once that
 * line is consumed (an idle backend connection keeps at most GW_REPLY_LINE_KEEP bytes). */
static void test_line_buffer_grows_and_is_released(void **state)
{
    gw_reply_parser *p = new_parser();
    size_t n, used;
    uint8_t *b = long_reply("211-", 5000, "\r\n", &n);

    assert_int_equal(p->cap, 0);
    assert_string_equal(p->line, "");
    assert_int_equal(feed_str(p, "220 hi\r\n", &used), GW_REPLY_LINE);
    assert_true(p->cap > 0 && p->cap <= GW_REPLY_LINE_KEEP);
    assert_int_equal(gw_reply_feed(p, b, n, &used), GW_REPLY_LINE);
    assert_int_equal(p->len, 5002);
    assert_true(p->cap >= 5003);
    assert_memory_equal(p->line, b, n);
    assert_int_equal(feed_str(p, "211 End\r\n", &used), GW_REPLY_LINE);
    assert_string_equal(p->line, "211 End\r\n");
    assert_true(p->last);
    assert_true(p->cap <= GW_REPLY_LINE_KEEP);
    gw_reply_free(p);
    assert_int_equal(p->cap, 0);
    assert_string_equal(p->line, "");
    assert_int_equal(feed_str(p, "230 ok\r\n", &used), GW_REPLY_LINE); /* usable after */
    gw_reply_free(p);
    free(p);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_line),
        cmocka_unit_test(test_line_buffer_grows_and_is_released),
        cmocka_unit_test(test_bare_code_is_single_line),
        cmocka_unit_test(test_bare_lf_gets_crlf),
        cmocka_unit_test(test_partial_line),
        cmocka_unit_test(test_multiline_digits_and_other_codes),
        cmocka_unit_test(test_multiline_unfinished),
        cmocka_unit_test(test_two_replies_one_read),
        cmocka_unit_test(test_split_everywhere_mixed),
        cmocka_unit_test(test_invalid_first_lines),
        cmocka_unit_test(test_invalid_after_valid_reply),
        cmocka_unit_test(test_code_range),
        cmocka_unit_test(test_nul_dropped_cr_inside_kept),
        cmocka_unit_test(test_line_cap_exact),
        cmocka_unit_test(test_line_cap_exact_bare_lf),
        cmocka_unit_test(test_line_cap_one_over),
        cmocka_unit_test(test_line_cap_cr_then_text),
        cmocka_unit_test(test_line_cap_middle_line),
        cmocka_unit_test(test_split_everywhere_at_cap),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
