/* Unit tests for proxy/ftp_cmd.c: command lines, Telnet handling, line cap, split/format. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ftp_cmd.h"

/* What a parser produced: line events (with got_ip) and the Telnet refusals, separately, so
 * that feeding the same bytes in different pieces can be compared. */
struct transcript {
    char ev[3 * GW_CMD_LINE_MAX];
    size_t ev_len;
    uint8_t tn[4096];
    size_t tn_len;
};

static void ev_put(struct transcript *t, const void *s, size_t n)
{
    assert_true(t->ev_len + n <= sizeof(t->ev));
    memcpy(t->ev + t->ev_len, s, n);
    t->ev_len += n;
}

static void ev_printf(struct transcript *t, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    ev_put(t, tmp, (size_t)n);
}

/* Feed one piece completely, recording every event. */
static void feed_piece(gw_cmd_parser *p, const uint8_t *in, size_t n, struct transcript *t)
{
    size_t off = 0, used;
    int rc;

    do {
        rc = gw_cmd_feed(p, in + off, n - off, &used);
        assert_true(used <= n - off);
        off += used;

        assert_true(p->tn_reply_len <= sizeof(p->tn_reply));
        assert_true(t->tn_len + p->tn_reply_len <= sizeof(t->tn));
        memcpy(t->tn + t->tn_len, p->tn_reply, p->tn_reply_len);
        t->tn_len += p->tn_reply_len;
        p->tn_reply_len = 0;

        if (rc == GW_CMD_LINE) {
            assert_true(p->len <= GW_CMD_LINE_MAX);
            assert_int_equal(p->line[p->len], '\0');
            ev_printf(t, "L%zu:", p->len);
            ev_put(t, p->line, p->len);
            ev_printf(t, "|ip=%d\n", p->got_ip);
            p->got_ip = false;
        } else if (rc == GW_CMD_TOOLONG) {
            assert_int_equal(p->len, 0);
            ev_printf(t, "T|ip=%d\n", p->got_ip);
            p->got_ip = false;
        } else {
            assert_int_equal(rc, GW_CMD_AGAIN);
            assert_int_equal(off, n);
        }
    } while (off < n);
}

/* Feed in pieces ending at the given cut positions (ascending), then the rest. */
static void run_cuts(const uint8_t *in, size_t n, const size_t *cuts, size_t ncuts,
                     struct transcript *t)
{
    gw_cmd_parser p;
    size_t i, from = 0;

    memset(t, 0, sizeof(*t));
    gw_cmd_init(&p);
    for (i = 0; i < ncuts; i++) {
        feed_piece(&p, in + from, cuts[i] - from, t);
        from = cuts[i];
    }
    feed_piece(&p, in + from, n - from, t);
    ev_printf(t, "end|ip=%d", p.got_ip);
    gw_cmd_free(&p);
}

static void assert_same(const struct transcript *a, const struct transcript *b)
{
    assert_int_equal(a->ev_len, b->ev_len);
    assert_memory_equal(a->ev, b->ev, a->ev_len);
    assert_int_equal(a->tn_len, b->tn_len);
    if (a->tn_len > 0)
        assert_memory_equal(a->tn, b->tn, a->tn_len);
}

/* Whole, split at every position, and one byte at a time must all agree. */
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
        assert_same(whole, t);
    }
    for (k = 0; k < n; k++)
        cuts[k] = k + 1;
    run_cuts(in, n, cuts, n, t);
    assert_same(whole, t);
    free(cuts);
    free(t);
}

static int feed_str(gw_cmd_parser *p, const char *s, size_t n, size_t *used)
{
    return gw_cmd_feed(p, (const uint8_t *)s, n, used);
}

static void test_single_line(void **state)
{
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, "USER bob\r\n", 10, &used), GW_CMD_LINE);
    assert_int_equal(used, 10);
    assert_string_equal(p.line, "USER bob");
    assert_int_equal(p.len, 8);
    assert_false(p.got_ip);
    assert_int_equal(p.tn_reply_len, 0);
    gw_cmd_free(&p);
}

static void test_bare_lf_ends_line(void **state)
{
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, "NOOP\n", 5, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NOOP");
    gw_cmd_free(&p);
}

static void test_partial_then_rest(void **state)
{
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, "RE", 2, &used), GW_CMD_AGAIN);
    assert_int_equal(used, 2);
    assert_int_equal(feed_str(&p, "TR f\r", 5, &used), GW_CMD_AGAIN);
    assert_int_equal(feed_str(&p, "\n", 1, &used), GW_CMD_LINE);
    assert_int_equal(used, 1);
    assert_string_equal(p.line, "RETR f");
    gw_cmd_free(&p);
}

static void test_several_lines_one_buffer(void **state)
{
    static const char in[] = "TYPE I\r\nPASV\r\nLIST -a\r\nNO";
    gw_cmd_parser p;
    size_t off = 0, used, n = sizeof(in) - 1;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in + off, n - off, &used), GW_CMD_LINE);
    assert_int_equal(used, 8);
    assert_string_equal(p.line, "TYPE I");
    off += used;
    assert_int_equal(feed_str(&p, in + off, n - off, &used), GW_CMD_LINE);
    assert_int_equal(used, 6);
    assert_string_equal(p.line, "PASV");
    off += used;
    assert_int_equal(feed_str(&p, in + off, n - off, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "LIST -a");
    off += used;
    assert_int_equal(feed_str(&p, in + off, n - off, &used), GW_CMD_AGAIN);
    assert_int_equal(used, 2);
    assert_int_equal(off + used, n);
    assert_int_equal(feed_str(&p, "OP\r\n", 4, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NOOP");
    gw_cmd_free(&p);
}

static void test_len_reset_on_next_call(void **state)
{
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, "PWD\r\n", 5, &used), GW_CMD_LINE);
    assert_int_equal(p.len, 3);
    assert_int_equal(feed_str(&p, "", 0, &used), GW_CMD_AGAIN);
    assert_int_equal(used, 0);
    assert_int_equal(p.len, 0);
    assert_string_equal(p.line, "");
    gw_cmd_free(&p);
}

static void test_empty_line(void **state)
{
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, "\r\n", 2, &used), GW_CMD_LINE);
    assert_int_equal(p.len, 0);
    assert_string_equal(p.line, "");
    gw_cmd_free(&p);
}

static void test_cr_and_nul_dropped(void **state)
{
    static const char in[] = "NO\rOP\0\r\0\r\n";
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_int_equal(used, sizeof(in) - 1);
    assert_string_equal(p.line, "NOOP");
    assert_int_equal(p.len, 4);
    gw_cmd_free(&p);
}

static void test_iac_iac_is_literal_ff(void **state)
{
    static const char in[] = "MKD a\xff\xff"
                             "b\r\n";
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_int_equal(p.len, 7);
    assert_memory_equal(p.line,
                        "MKD a\xff"
                        "b",
                        8);
    assert_int_equal(p.tn_reply_len, 0);
    gw_cmd_free(&p);
}

static void test_iac_do_will_refused(void **state)
{
    /* IAC DO ECHO(1), IAC WILL SGA(3) in the middle of a command */
    static const char in[] = "NO\xff\xfd\x01O\xff\xfb\x03P\r\n";
    static const uint8_t want[] = {0xff, 0xfc, 0x01, 0xff, 0xfe, 0x03};
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NOOP");
    assert_int_equal(p.tn_reply_len, sizeof(want));
    assert_memory_equal(p.tn_reply, want, sizeof(want));
    gw_cmd_free(&p);
}

static void test_iac_wont_dont_not_answered(void **state)
{
    static const char in[] = "\xff\xfc\x01\xff\xfe\x03QUIT\r\n";
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "QUIT");
    assert_int_equal(p.tn_reply_len, 0);
    gw_cmd_free(&p);
}

static void test_iac_ip_dm_before_abor(void **state)
{
    static const char in[] = "\xff\xf4\xff\xf2"
                             "ABOR\r\n";
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_true(p.got_ip);
    assert_string_equal(p.line, "ABOR");
    assert_int_equal(p.tn_reply_len, 0);
    gw_cmd_free(&p);
}

static void test_iac_nop_dropped(void **state)
{
    static const char in[] = "SY\xff\xf1ST\r\n";
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "SYST");
    assert_false(p.got_ip);
    gw_cmd_free(&p);
}

static void test_iac_sb_dropped(void **state)
{
    /* SB TTYPE IS ... with an escaped IAC, then IAC SE */
    static const char in[] = "US\xff\xfa\x18\x00xterm\xff\xff\xff\xf0"
                             "ER x\r\n";
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_int_equal(used, sizeof(in) - 1);
    assert_string_equal(p.line, "USER x");
    gw_cmd_free(&p);
}

static void test_iac_sb_unterminated_ends_at_lf(void **state)
{
    /* IAC SB never closed by IAC SE: the LF ends it and its line; the next command is read. */
    static const char in[] = "NO\xff\xfa\x18xterm\xff\r\nNOOP\r\n";
    gw_cmd_parser p;
    size_t used, off;
    struct transcript whole;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NO");
    off = used;
    assert_int_equal(feed_str(&p, in + off, sizeof(in) - 1 - off, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NOOP");
    assert_int_equal(off + used, sizeof(in) - 1);
    check_split_invariance((const uint8_t *)in, sizeof(in) - 1, &whole);
    gw_cmd_free(&p);
}

static void test_stray_iac_keeps_byte(void **state)
{
    static const char in[] = "AB\xff"
                             "CD\xff\nNOOP\r\n";
    gw_cmd_parser p;
    size_t used;

    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, in, sizeof(in) - 1, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "ABCD");
    assert_int_equal(used, 7);
    assert_int_equal(feed_str(&p, in + used, sizeof(in) - 1 - used, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NOOP");
    gw_cmd_free(&p);
}

static void test_refusal_queue_bounded(void **state)
{
    uint8_t in[3 * 40 + 2];
    gw_cmd_parser p;
    size_t used, i;

    for (i = 0; i < 40; i++) {
        in[3 * i] = 0xff;
        in[3 * i + 1] = 0xfd;
        in[3 * i + 2] = (uint8_t)i;
    }
    in[120] = '\r';
    in[121] = '\n';
    gw_cmd_init(&p);
    assert_int_equal(gw_cmd_feed(&p, in, sizeof(in), &used), GW_CMD_LINE);
    assert_int_equal(used, sizeof(in));
    assert_int_equal(p.tn_reply_len, 63); /* 21 refusals fit; the rest are dropped */
    for (i = 0; i < 21; i++) {
        assert_int_equal(p.tn_reply[3 * i], 0xff);
        assert_int_equal(p.tn_reply[3 * i + 1], 0xfc);
        assert_int_equal(p.tn_reply[3 * i + 2], i);
    }
    gw_cmd_free(&p);
}

static uint8_t *long_line(size_t text, const char *tail, size_t *n)
{
    size_t tl = strlen(tail);
    uint8_t *b = malloc(text + tl);

    assert_non_null(b);
    memset(b, 'a', text);
    memcpy(b + text, tail, tl);
    *n = text + tl;
    return b;
}

static void test_line_cap_4096_ok(void **state)
{
    gw_cmd_parser p;
    size_t n, used;
    uint8_t *b = long_line(GW_CMD_LINE_MAX, "\r\n", &n);

    gw_cmd_init(&p);
    assert_int_equal(gw_cmd_feed(&p, b, n, &used), GW_CMD_LINE);
    assert_int_equal(used, n);
    assert_int_equal(p.len, GW_CMD_LINE_MAX);
    assert_int_equal(strlen(p.line), GW_CMD_LINE_MAX);
    assert_false(p.overflow);
    free(b);
    gw_cmd_free(&p);
}

static void test_line_cap_4097_toolong_then_next(void **state)
{
    gw_cmd_parser p;
    size_t n, used;
    uint8_t *b = long_line(GW_CMD_LINE_MAX + 1, "\r\nNOOP\r\n", &n);

    gw_cmd_init(&p);
    assert_int_equal(gw_cmd_feed(&p, b, n, &used), GW_CMD_TOOLONG);
    assert_int_equal(used, GW_CMD_LINE_MAX + 3);
    assert_int_equal(p.len, 0);
    assert_string_equal(p.line, "");
    assert_int_equal(gw_cmd_feed(&p, b + used, n - used, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NOOP");
    assert_false(p.overflow);
    free(b);
    gw_cmd_free(&p);
}

static void test_telnet_bytes_do_not_count_toward_cap(void **state)
{
    gw_cmd_parser p;
    size_t n, used;
    uint8_t *b = long_line(GW_CMD_LINE_MAX, "\xff\xf1\r\xff\xfd\x01\r\n", &n);

    gw_cmd_init(&p);
    assert_int_equal(gw_cmd_feed(&p, b, n, &used), GW_CMD_LINE);
    assert_int_equal(p.len, GW_CMD_LINE_MAX);
    assert_int_equal(p.tn_reply_len, 3);
    free(b);
    gw_cmd_free(&p);
}

static void test_split_everywhere_mixed(void **state)
{
    static const char in[] = "user Bob\r\n"
                             "PASS \xff\xffsecret\xff\xfd\x05\r\n"
                             "\xff\xf4\xff\xf2"
                             "ABOR\r\n"
                             "SITE \xff\xfa\x01\x02\xff\xff\xff\xf0x\xff\xfb\x22y\r\0\n"
                             "NO\xff\xfc\x01OP\n"
                             "PARTIAL\xff";
    struct transcript *whole = malloc(sizeof(*whole));
    static const char want[] = "L8:user Bob|ip=0\n"
                               "L12:PASS \xffsecret|ip=0\n"
                               "L4:ABOR|ip=1\n"
                               "L7:SITE xy|ip=0\n"
                               "L4:NOOP|ip=0\n"
                               "end|ip=0";
    static const uint8_t want_tn[] = {0xff, 0xfc, 0x05, 0xff, 0xfe, 0x22};

    assert_non_null(whole);
    check_split_invariance((const uint8_t *)in, sizeof(in) - 1, whole);
    assert_int_equal(whole->ev_len, sizeof(want) - 1);
    assert_memory_equal(whole->ev, want, sizeof(want) - 1);
    assert_int_equal(whole->tn_len, sizeof(want_tn));
    assert_memory_equal(whole->tn, want_tn, sizeof(want_tn));
    free(whole);
}

static void test_split_everywhere_toolong(void **state)
{
    struct transcript *whole = malloc(sizeof(*whole));
    size_t n;
    uint8_t *b = long_line(GW_CMD_LINE_MAX + 1, "\xff\xf4\r\nNOOP\r\n", &n);
    static const char want[] = "T|ip=1\nL4:NOOP|ip=0\nend|ip=0";

    assert_non_null(whole);
    check_split_invariance(b, n, whole);
    assert_int_equal(whole->ev_len, sizeof(want) - 1);
    assert_memory_equal(whole->ev, want, sizeof(want) - 1);
    free(whole);
    free(b);
}

static void test_split_everywhere_exact_cap(void **state)
{
    struct transcript *whole = malloc(sizeof(*whole));
    size_t n;
    uint8_t *b = long_line(GW_CMD_LINE_MAX, "\r\nQUIT\r\n", &n);

    assert_non_null(whole);
    check_split_invariance(b, n, whole);
    assert_int_equal(whole->ev_len, 6 + GW_CMD_LINE_MAX + 6 + 13 + 8);
    assert_memory_equal(whole->ev, "L4096:", 6);
    free(whole);
    free(b);
}

static void test_split_verb_uppercased(void **state)
{
    gw_cmd c;

    assert_int_equal(gw_cmd_split("user bob", &c), 0);
    assert_string_equal(c.verb, "USER");
    assert_string_equal(c.arg, "bob");
    assert_int_equal(gw_cmd_split("pAsV", &c), 0);
    assert_string_equal(c.verb, "PASV");
    assert_string_equal(c.arg, "");
}

static void test_split_arguments(void **state)
{
    static const char line[] = "STOR a b  c";
    gw_cmd c;

    assert_int_equal(gw_cmd_split(line, &c), 0);
    assert_string_equal(c.verb, "STOR");
    assert_ptr_equal(c.arg, line + 5);
    assert_string_equal(c.arg, "a b  c");
    assert_int_equal(gw_cmd_split("CWD  dir", &c), 0);
    assert_string_equal(c.arg, " dir"); /* only one space separates */
    assert_int_equal(gw_cmd_split("NOOP ", &c), 0);
    assert_string_equal(c.arg, "");
    assert_int_equal(gw_cmd_split("SITE \xff", &c), 0);
    assert_string_equal(c.arg, "\xff");
}

static void test_split_verb_length(void **state)
{
    gw_cmd c;

    assert_int_equal(gw_cmd_split("ABCDEFG x", &c), 0);
    assert_string_equal(c.verb, "ABCDEFG");
    assert_int_equal(gw_cmd_split("ABCDEFG", &c), 0);
    assert_int_equal(gw_cmd_split("ABCDEFGH x", &c), -1);
    assert_int_equal(gw_cmd_split("ABCDEFGH", &c), -1);
}

static void test_split_rejects(void **state)
{
    gw_cmd c;

    assert_int_equal(gw_cmd_split("", &c), -1);
    assert_int_equal(gw_cmd_split(" USER", &c), -1);
    assert_int_equal(gw_cmd_split("US3R x", &c), -1);
    assert_int_equal(gw_cmd_split("USER\tbob", &c), -1);
    assert_int_equal(gw_cmd_split("U\xc3\x9f", &c), -1);
    assert_int_equal(gw_cmd_split("\xff\xf4", &c), -1);
    assert_int_equal(gw_cmd_split("[USER]", &c), -1);
    assert_string_equal(c.arg, "");
}

static void test_format_doubles_iac(void **state)
{
    char out[32];

    assert_int_equal(gw_cmd_format(out, sizeof(out), "SITE \xff"), 9);
    assert_memory_equal(out, "SITE \xff\xff\r\n", 10);
    assert_int_equal(gw_cmd_format(out, sizeof(out), ""), 2);
    assert_string_equal(out, "\r\n");
}

static void test_format_cap(void **state)
{
    char out[16];

    assert_int_equal(gw_cmd_format(out, 7, "NOOP"), 6); /* "NOOP\r\n" + NUL */
    assert_string_equal(out, "NOOP\r\n");
    assert_int_equal(gw_cmd_format(out, 6, "NOOP"), 0);
    assert_int_equal(gw_cmd_format(out, 0, "NOOP"), 0);
    assert_int_equal(gw_cmd_format(out, 4, "\xff"), 0); /* needs 5 */
    assert_int_equal(gw_cmd_format(out, 5, "\xff"), 4);
}

static void test_format_rejects_line_breaks(void **state)
{
    char out[64];

    assert_int_equal(gw_cmd_format(out, sizeof(out), "USER a\r\nDELE x"), 0);
    assert_int_equal(gw_cmd_format(out, sizeof(out), "USER a\nDELE x"), 0);
    assert_int_equal(gw_cmd_format(out, sizeof(out), "USER a\r"), 0);
}

static void test_format_roundtrip(void **state)
{
    static const char line[] = "SITE \xff\xff x\xff";
    char out[64];
    gw_cmd_parser p;
    size_t n, used;

    n = gw_cmd_format(out, sizeof(out), line);
    assert_int_equal(n, sizeof(line) - 1 + 3 + 2);
    gw_cmd_init(&p);
    assert_int_equal(gw_cmd_feed(&p, (const uint8_t *)out, n, &used), GW_CMD_LINE);
    assert_int_equal(used, n);
    assert_string_equal(p.line, line);
    gw_cmd_free(&p);
}

/* The verb lists session.c used before the table; the table must give the same sets. */
static const char *const old_download[] = {"RETR", "LIST", "NLST", "MLSD"};
static const char *const old_upload[] = {"STOR", "STOU", "APPE"};
static const char *const old_before_tls[] = {"AUTH", "FEAT", "HELP", "QUIT", "SYST",
                                             "NOOP", "OPTS", "PBSZ", "PROT"};
static const char *const old_local[] = {"AUTH", "PBSZ", "PROT", "CCC",  "CPSV", "SSCN",
                                        "PASV", "EPSV", "PORT", "EPRT", "REIN"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static bool in_list(const char *verb, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(verb, list[i]) == 0)
            return true;
    return false;
}

static void test_lookup_table_sorted_unique(void **state)
{
    size_t n, i;
    const gw_cmd_def *t = gw_cmd_table(&n);

    assert_true(n > 0);
    for (i = 0; i < n; i++) {
        assert_non_null(t[i].verb);
        assert_true(strlen(t[i].verb) >= 3 && strlen(t[i].verb) <= 7);
        for (const char *c = t[i].verb; *c; c++)
            assert_true(*c >= 'A' && *c <= 'Z');
        assert_int_not_equal(t[i].id, GW_CMD_OTHER);
        if (i > 0)
            assert_true(strcmp(t[i - 1].verb, t[i].verb) < 0);
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(t[i].id, t[j].id); /* one entry per id */
        assert_ptr_equal(gw_cmd_lookup(t[i].verb), &t[i]);
        /* UPLOAD only qualifies a transfer. */
        if (t[i].flags & GW_CMDF_UPLOAD)
            assert_true(t[i].flags & GW_CMDF_TRANSFER);
    }
}

/* Each flag's set of verbs is exactly the old list's. */
static void check_flag_set(unsigned mask, unsigned want, const char *const *list, size_t len)
{
    size_t n, i, hits = 0;
    const gw_cmd_def *t = gw_cmd_table(&n);

    for (i = 0; i < n; i++) {
        bool set = (t[i].flags & mask) == want;
        assert_int_equal(set, in_list(t[i].verb, list, len));
        hits += set;
    }
    assert_int_equal(hits, len);
    for (i = 0; i < len; i++)
        assert_int_equal(gw_cmd_lookup(list[i])->flags & mask, want);
}

static void test_lookup_transfer_sets(void **state)
{
    check_flag_set(GW_CMDF_TRANSFER | GW_CMDF_UPLOAD, GW_CMDF_TRANSFER, old_download,
                   COUNT(old_download));
    check_flag_set(GW_CMDF_TRANSFER | GW_CMDF_UPLOAD, GW_CMDF_TRANSFER | GW_CMDF_UPLOAD, old_upload,
                   COUNT(old_upload));
    check_flag_set(GW_CMDF_UPLOAD, GW_CMDF_UPLOAD, old_upload, COUNT(old_upload));
}

static void test_lookup_before_tls_set(void **state)
{
    check_flag_set(GW_CMDF_BEFORE_TLS, GW_CMDF_BEFORE_TLS, old_before_tls, COUNT(old_before_tls));
    /* SECURITY: credentials never in clear under require_tls. */
    assert_false(gw_cmd_lookup("USER")->flags & GW_CMDF_BEFORE_TLS);
    assert_false(gw_cmd_lookup("PASS")->flags & GW_CMDF_BEFORE_TLS);
}

static void test_lookup_local_set(void **state)
{
    check_flag_set(GW_CMDF_LOCAL, GW_CMDF_LOCAL, old_local, COUNT(old_local));
}

/* The ids handle_command dispatches on. */
static void test_lookup_ids(void **state)
{
    static const struct {
        const char *verb;
        enum gw_cmd_id id;
    } want[] = {
        {"USER", GW_CMD_USER}, {"PASS", GW_CMD_PASS}, {"AUTH", GW_CMD_AUTH}, {"PBSZ", GW_CMD_PBSZ},
        {"PROT", GW_CMD_PROT}, {"CCC", GW_CMD_CCC},   {"CPSV", GW_CMD_CPSV}, {"SSCN", GW_CMD_SSCN},
        {"PASV", GW_CMD_PASV}, {"EPSV", GW_CMD_EPSV}, {"PORT", GW_CMD_PORT}, {"EPRT", GW_CMD_EPRT},
        {"REIN", GW_CMD_REIN}, {"FEAT", GW_CMD_FEAT}, {"QUIT", GW_CMD_QUIT}, {"ABOR", GW_CMD_ABOR},
        {"RETR", GW_CMD_RETR}, {"LIST", GW_CMD_LIST}, {"NLST", GW_CMD_NLST}, {"MLSD", GW_CMD_MLSD},
        {"STOR", GW_CMD_STOR}, {"STOU", GW_CMD_STOU}, {"APPE", GW_CMD_APPE}, {"HELP", GW_CMD_HELP},
        {"SYST", GW_CMD_SYST}, {"NOOP", GW_CMD_NOOP}, {"OPTS", GW_CMD_OPTS}, {"HOST", GW_CMD_HOST},
    };

    for (size_t i = 0; i < COUNT(want); i++) {
        const gw_cmd_def *d = gw_cmd_lookup(want[i].verb);
        assert_int_equal(d->id, want[i].id);
        assert_string_equal(d->verb, want[i].verb);
    }
    /* Informational, but must not contradict RFC 959: the login sequence needs no login. */
    assert_false(gw_cmd_lookup("USER")->flags & GW_CMDF_NEEDS_LOGIN);
    assert_false(gw_cmd_lookup("PASS")->flags & GW_CMDF_NEEDS_LOGIN);
    assert_false(gw_cmd_lookup("AUTH")->flags & GW_CMDF_NEEDS_LOGIN);
    assert_true(gw_cmd_lookup("RETR")->flags & GW_CMDF_NEEDS_LOGIN);
    assert_true(gw_cmd_lookup("PASV")->flags & GW_CMDF_NEEDS_LOGIN);
    assert_true(gw_cmd_lookup("CWD")->flags & GW_CMDF_NEEDS_LOGIN);
}

static void test_lookup_unknown_and_case(void **state)
{
    static const char *const unknown[] = {"XYZZY", "",     "RET",  "RETRR", "ABCDEFGH", "RE TR",
                                          "RETR ", "R3TR", "\xff", "XCWD",  "MACB"};
    const gw_cmd_def *other = gw_cmd_lookup("XYZZY");

    assert_non_null(other);
    assert_int_equal(other->id, GW_CMD_OTHER);
    assert_int_equal(other->flags, 0);
    assert_string_equal(other->verb, "");
    for (size_t i = 0; i < COUNT(unknown); i++)
        assert_ptr_equal(gw_cmd_lookup(unknown[i]), other);

    assert_ptr_equal(gw_cmd_lookup("retr"), gw_cmd_lookup("RETR"));
    assert_ptr_equal(gw_cmd_lookup("Stor"), gw_cmd_lookup("STOR"));
    assert_ptr_equal(gw_cmd_lookup("ePsV"), gw_cmd_lookup("EPSV"));
    assert_ptr_equal(gw_cmd_lookup("ccc"), gw_cmd_lookup("CCC"));
}

static void test_split_fills_def(void **state)
{
    gw_cmd c;

    assert_int_equal(gw_cmd_split("stor a.bin", &c), 0);
    assert_int_equal(c.def->id, GW_CMD_STOR);
    assert_int_equal(c.def->flags & (GW_CMDF_TRANSFER | GW_CMDF_UPLOAD),
                     GW_CMDF_TRANSFER | GW_CMDF_UPLOAD);
    assert_int_equal(gw_cmd_split("XYZZY 1", &c), 0);
    assert_int_equal(c.def->id, GW_CMD_OTHER);
    assert_int_equal(gw_cmd_split("US3R x", &c), -1);
    assert_non_null(c.def);
    assert_int_equal(c.def->id, GW_CMD_OTHER);
}

/* The line buffer: nothing until text comes, grown for a long line, given back once that
 * line is taken (an idle session keeps at most GW_CMD_LINE_KEEP bytes). */
static void test_line_buffer_grows_and_is_released(void **state)
{
    gw_cmd_parser p;
    size_t n, used;
    uint8_t *b = long_line(3000, "\r\n", &n);

    (void)state;
    gw_cmd_init(&p);
    assert_int_equal(p.cap, 0);
    assert_string_equal(p.line, "");
    assert_int_equal(feed_str(&p, "\r\n", 2, &used), GW_CMD_LINE); /* empty: no buffer */
    assert_int_equal(p.cap, 0);
    assert_int_equal(gw_cmd_feed(&p, b, n, &used), GW_CMD_LINE);
    assert_int_equal(strlen(p.line), 3000);
    assert_true(p.cap > GW_CMD_LINE_KEEP);
    assert_int_equal(feed_str(&p, "NOOP\r\n", 6, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "NOOP");
    assert_true(p.cap > 0 && p.cap <= GW_CMD_LINE_KEEP);
    gw_cmd_free(&p);
    assert_int_equal(p.cap, 0);
    free(b);
}

/* A clone parses on without touching the original (the session's peek for ABOR). */
static void test_clone_is_independent(void **state)
{
    gw_cmd_parser p, q;
    size_t used;

    (void)state;
    gw_cmd_init(&p);
    assert_int_equal(feed_str(&p, "AB", 2, &used), GW_CMD_AGAIN);
    assert_true(gw_cmd_clone(&q, &p));
    assert_ptr_not_equal(q.line, p.line);
    assert_int_equal(feed_str(&q, "OR\r\n", 4, &used), GW_CMD_LINE);
    assert_string_equal(q.line, "ABOR");
    assert_string_equal(p.line, "AB");
    assert_int_equal(p.len, 2);
    assert_int_equal(feed_str(&p, "C\r\n", 3, &used), GW_CMD_LINE);
    assert_string_equal(p.line, "ABC");
    gw_cmd_free(&q);
    gw_cmd_free(&p);
    gw_cmd_init(&p); /* a fresh parser clones to a fresh one */
    assert_true(gw_cmd_clone(&q, &p));
    assert_int_equal(q.cap, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_line),
        cmocka_unit_test(test_line_buffer_grows_and_is_released),
        cmocka_unit_test(test_clone_is_independent),
        cmocka_unit_test(test_bare_lf_ends_line),
        cmocka_unit_test(test_partial_then_rest),
        cmocka_unit_test(test_several_lines_one_buffer),
        cmocka_unit_test(test_len_reset_on_next_call),
        cmocka_unit_test(test_empty_line),
        cmocka_unit_test(test_cr_and_nul_dropped),
        cmocka_unit_test(test_iac_iac_is_literal_ff),
        cmocka_unit_test(test_iac_do_will_refused),
        cmocka_unit_test(test_iac_wont_dont_not_answered),
        cmocka_unit_test(test_iac_ip_dm_before_abor),
        cmocka_unit_test(test_iac_nop_dropped),
        cmocka_unit_test(test_iac_sb_dropped),
        cmocka_unit_test(test_iac_sb_unterminated_ends_at_lf),
        cmocka_unit_test(test_stray_iac_keeps_byte),
        cmocka_unit_test(test_refusal_queue_bounded),
        cmocka_unit_test(test_line_cap_4096_ok),
        cmocka_unit_test(test_line_cap_4097_toolong_then_next),
        cmocka_unit_test(test_telnet_bytes_do_not_count_toward_cap),
        cmocka_unit_test(test_split_everywhere_mixed),
        cmocka_unit_test(test_split_everywhere_toolong),
        cmocka_unit_test(test_split_everywhere_exact_cap),
        cmocka_unit_test(test_split_verb_uppercased),
        cmocka_unit_test(test_split_arguments),
        cmocka_unit_test(test_split_verb_length),
        cmocka_unit_test(test_split_rejects),
        cmocka_unit_test(test_format_doubles_iac),
        cmocka_unit_test(test_format_cap),
        cmocka_unit_test(test_format_rejects_line_breaks),
        cmocka_unit_test(test_format_roundtrip),
        cmocka_unit_test(test_lookup_table_sorted_unique),
        cmocka_unit_test(test_lookup_transfer_sets),
        cmocka_unit_test(test_lookup_before_tls_set),
        cmocka_unit_test(test_lookup_local_set),
        cmocka_unit_test(test_lookup_ids),
        cmocka_unit_test(test_lookup_unknown_and_case),
        cmocka_unit_test(test_split_fills_def),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
