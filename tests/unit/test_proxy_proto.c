/* Unit tests for the PROXY protocol parser and builder (proxy/proxy_proto.c), with the
 * examples of HAProxy's doc/proxy-protocol.txt, and its CIDR lists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "proxy_proto.h"

static const uint8_t SIG[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static int parse_str(const char *s, int mode, gw_pp_header *h, size_t *need, const char **why)
{
    return gw_pp_parse((const uint8_t *)s, strlen(s), mode, h, need, why);
}

static void assert_ip(const gw_addr *a, const char *ip, uint16_t port)
{
    char buf[64];
    assert_string_equal(gw_addr_ip_str(a, buf, sizeof buf), ip);
    assert_int_equal(a->port, port);
}

static void test_v1_spec_examples(void **state)
{
    (void)state;
    gw_pp_header h;
    size_t need;
    const char *why;
    /* The spec's example line. */
    const char *l = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
    assert_int_equal(parse_str(l, GW_PP_V1, &h, &need, &why), GW_PP_DONE);
    assert_int_equal(h.version, 1);
    assert_int_equal(h.len, strlen("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"));
    assert_ip(&h.src, "192.168.0.1", 56324);
    assert_ip(&h.dst, "192.168.0.11", 443);
    /* The worst cases of section 2.1: 56, 104 and 107 bytes. */
    l = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_int_equal(strlen(l), 56);
    assert_int_equal(parse_str(l, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
    l = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_int_equal(strlen(l), 104);
    assert_int_equal(parse_str(l, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
    assert_int_equal(h.src.family, 6);
    l = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_int_equal(strlen(l), 107);
    assert_int_equal(parse_str(l, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
    assert_true(h.unknown);
    assert_int_equal(parse_str("PROXY UNKNOWN\r\n", GW_PP_V1, &h, &need, &why), GW_PP_DONE);
    assert_true(h.unknown);
    assert_int_equal(h.len, 15);
    l = "PROXY TCP6 2001:db8::1 ::1 1024 21\r\n";
    assert_int_equal(parse_str(l, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
    assert_ip(&h.src, "2001:db8::1", 1024);
    assert_ip(&h.dst, "::1", 21);
}

static void test_v1_malformed(void **state)
{
    (void)state;
    gw_pp_header h;
    size_t need;
    const char *why;
    static const char *const bad[] = {
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",             /* LF without CR */
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",          /* double space */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",          /* trailing space */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",             /* a field missing */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",       /* port range */
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",          /* leading zero */
        "PROXY TCP4 ::1 5.6.7.8 1 2\r\n",               /* family mismatch */
        "PROXY TCP6 1.2.3.4 ::1 1 2\r\n",               /* family mismatch */
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",         /* address */
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",           /* protocol */
        "PROXY UNKNOWNX\r\n",                           /* protocol */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",         /* CR without LF */
        "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",          /* control character */
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",           /* case */
        "USER anonymous\r\n",                           /* no header at all */
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a ClientHello */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int r = parse_str(bad[i], GW_PP_ANY, &h, &need, &why);
        if (r != GW_PP_BAD)
            fail_msg("accepted: %s", bad[i]);
        assert_non_null(why);
    }
    /* 107 bytes without CRLF: too long. */
    char longline[120];
    memset(longline, 'a', sizeof longline);
    memcpy(longline, "PROXY UNKNOWN ", 14);
    longline[119] = 0;
    assert_int_equal(parse_str(longline, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
    /* The wrong version for the mode. */
    assert_int_equal(parse_str("PROXY UNKNOWN\r\n", GW_PP_V2, &h, &need, &why), GW_PP_BAD);
}

/* Fed one byte at a time, never reading past the end: *need never overshoots. */
static void feed_bytewise(const uint8_t *hdr, size_t len, int mode)
{
    gw_pp_reader r = {0};
    gw_pp_header h;
    const char *why;
    size_t need = gw_pp_first_read(mode), pos = 0;
    for (;;) {
        assert_true(need >= 1);
        assert_true(pos + need <= len);           /* never asks for bytes past the header */
        size_t take = need > 3 ? need - 2 : need; /* short reads, as TCP may give */
        int rc = gw_pp_feed(&r, hdr + pos, take, mode, &h, &need, &why);
        pos += take;
        if (rc == GW_PP_DONE)
            break;
        assert_int_equal(rc, GW_PP_MORE);
    }
    assert_int_equal(pos, len);
    assert_int_equal(h.len, len);
}

static void test_need_never_overreads(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "PROXY UNKNOWN\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        "PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        feed_bytewise((const uint8_t *)lines[i], strlen(lines[i]), GW_PP_V1);
        feed_bytewise((const uint8_t *)lines[i], strlen(lines[i]), GW_PP_ANY);
    }
    gw_addr s = {.family = 6, .ip = {0x20, 0x01, 0x0d, 0xb8, [15] = 1}, .port = 4242};
    gw_addr d = {.family = 6, .ip = {[15] = 1}, .port = 21};
    uint8_t buf[GW_PP_BUILD_MAX];
    size_t n = gw_pp_build(2, buf, sizeof buf, &s, &d);
    feed_bytewise(buf, n, GW_PP_V2);
    feed_bytewise(buf, n, GW_PP_ANY);
}

static void test_v2(void **state)
{
    (void)state;
    gw_pp_header h;
    size_t need;
    const char *why;
    uint8_t b[64];
    memcpy(b, SIG, 12);
    b[12] = 0x21; /* v2 PROXY */
    b[13] = 0x11; /* TCP over IPv4 */
    b[14] = 0;
    b[15] = 12 + 7; /* addresses and a TLV (type 0x04 NOOP, 4 bytes) */
    uint8_t addr[12] = {10, 0, 0, 1, 192, 168, 0, 11, 0xdc, 0x04, 0x01, 0xbb};
    memcpy(b + 16, addr, 12);
    uint8_t tlv[7] = {0x04, 0x00, 0x04, 0, 0, 0, 0};
    memcpy(b + 28, tlv, 7);
    size_t len = 35;
    for (size_t i = 0; i < len; i++) {
        int r = gw_pp_parse(b, i, GW_PP_V2, &h, &need, &why);
        assert_int_equal(r, GW_PP_MORE);
        assert_true(i + need <= len);
    }
    assert_int_equal(gw_pp_parse(b, len, GW_PP_V2, &h, &need, &why), GW_PP_DONE);
    assert_int_equal(h.len, len);
    assert_ip(&h.src, "10.0.0.1", 56324);
    assert_ip(&h.dst, "192.168.0.11", 443);
    assert_false(h.local);
    /* LOCAL: accepted whatever follows in the block */
    b[12] = 0x20;
    assert_int_equal(gw_pp_parse(b, len, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
    assert_true(h.local);
    b[15] = 0;
    assert_int_equal(gw_pp_parse(b, 16, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
    assert_true(h.local);
    assert_int_equal(h.len, 16);
    /* Malformed: command, version, short address block, family, protocol, v1 mode */
    b[12] = 0x22;
    assert_int_equal(gw_pp_parse(b, 16, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
    b[12] = 0x11;
    assert_int_equal(gw_pp_parse(b, 16, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
    b[12] = 0x21;
    b[15] = 8;
    assert_int_equal(gw_pp_parse(b, 24, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
    b[15] = 12;
    b[13] = 0x12; /* DGRAM */
    assert_int_equal(gw_pp_parse(b, 28, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
    b[13] = 0x31; /* AF_UNIX */
    assert_int_equal(gw_pp_parse(b, 28, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
    b[13] = 0x00; /* UNSPEC: the connection's addresses */
    assert_int_equal(gw_pp_parse(b, 28, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
    assert_true(h.unknown);
    b[13] = 0x11;
    assert_int_equal(gw_pp_parse(b, 28, GW_PP_V1, &h, &need, &why), GW_PP_BAD);
    b[3] = 0x0B; /* broken signature */
    assert_int_equal(gw_pp_parse(b, 5, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
    /* Too long */
    memcpy(b, SIG, 12);
    b[14] = 0xff;
    b[15] = 0xff;
    assert_int_equal(gw_pp_parse(b, 16, GW_PP_ANY, &h, &need, &why), GW_PP_BAD);
}

static void test_build_roundtrip(void **state)
{
    (void)state;
    gw_addr s4 = {.family = 4, .ip = {203, 0, 113, 7}, .port = 40000};
    gw_addr d4 = {.family = 4, .ip = {127, 0, 0, 2}, .port = 990};
    gw_addr d6 = {.family = 6, .ip = {[15] = 1}, .port = 21};
    uint8_t buf[GW_PP_BUILD_MAX + 60];
    gw_pp_header h;
    size_t need;
    const char *why;
    size_t n = gw_pp_build(1, buf, sizeof buf, &s4, &d4);
    assert_int_equal(n, strlen("PROXY TCP4 203.0.113.7 127.0.0.2 40000 990\r\n"));
    assert_memory_equal(buf, "PROXY TCP4 203.0.113.7 127.0.0.2 40000 990\r\n", n);
    for (int v = 1; v <= 2; v++) {
        n = gw_pp_build(v, buf, sizeof buf, &s4, &d4);
        assert_int_equal(gw_pp_parse(buf, n, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
        assert_int_equal(h.version, v);
        assert_int_equal(h.len, n);
        assert_true(gw_addr_same_host(&h.src, &s4) && h.src.port == 40000);
        assert_true(gw_addr_same_host(&h.dst, &d4) && h.dst.port == 990);
        /* Mixed families: IPv6 with the IPv4 address mapped */
        n = gw_pp_build(v, buf, sizeof buf, &s4, &d6);
        assert_int_equal(gw_pp_parse(buf, n, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
        assert_int_equal(h.src.family, 6);
        assert_true(gw_addr_same_host(&h.src, &s4));
        assert_true(gw_addr_same_host(&h.dst, &d6));
        assert_int_equal(gw_pp_build(v, buf, 10, &s4, &d4), 0);
        n = gw_pp_build_local(v, buf, sizeof buf);
        assert_int_equal(gw_pp_parse(buf, n, GW_PP_ANY, &h, &need, &why), GW_PP_DONE);
        assert_int_equal(h.len, n);
        assert_true(v == 1 ? h.unknown : h.local);
    }
}

static void test_cidr(void **state)
{
    (void)state;
    char why[200];
    gw_addr a = {.family = 4, .ip = {10, 1, 2, 3}};
    gw_addr m = {.family = 6, .ip = {[10] = 0xff, [11] = 0xff, 127, 0, 0, 1}};
    gw_addr six = {.family = 6, .ip = {0xfd, 0, [15] = 5}};
    assert_true(gw_cidr_list_match("10.0.0.0/8", &a));
    assert_true(gw_cidr_list_match(" 192.168.0.0/16 ,10.1.2.3", &a));
    assert_false(gw_cidr_list_match("10.1.2.0/31", &a));
    assert_true(gw_cidr_list_match("10.1.2.2/31", &a));
    assert_true(gw_cidr_list_match("0.0.0.0/0", &a));
    assert_false(gw_cidr_list_match("", &a));
    assert_true(gw_cidr_list_match("127.0.0.1", &m)); /* mapped matches IPv4 */
    assert_true(gw_cidr_list_match("::ffff:127.0.0.0/104", &m));
    assert_true(gw_cidr_list_match("fd00::/8", &six));
    assert_false(gw_cidr_list_match("fd00::/8", &a));
    assert_int_equal(gw_cidr_list_check("10.0.0.0/8, ::1, fd00::/8", why, sizeof why), 0);
    assert_int_equal(gw_cidr_list_check("", why, sizeof why), 0);
    assert_int_equal(gw_cidr_list_check("10.0.0.0/33", why, sizeof why), -1);
    assert_int_equal(gw_cidr_list_check("example.org", why, sizeof why), -1);
    assert_int_equal(gw_cidr_list_check("10.0.0.0/", why, sizeof why), -1);

    gw_addr out;
    const char *list = "10.0.0.0/8=10.0.0.1, 127.0.0.0/8 = 127.0.0.9, 0.0.0.0/0=198.51.100.1";
    assert_int_equal(gw_pp_addr_for_check(list, why, sizeof why), 0);
    assert_true(gw_pp_addr_for(list, &a, &out));
    assert_true(out.family == 4 && out.ip[0] == 10 && out.ip[3] == 1);
    assert_true(gw_pp_addr_for(list, &m, &out));
    assert_int_equal(out.ip[3], 9);
    assert_false(gw_pp_addr_for("10.0.0.0/8=10.0.0.1", &six, &out));
    assert_int_equal(gw_pp_addr_for_check("10.0.0.0/8", why, sizeof why), -1);
    assert_int_equal(gw_pp_addr_for_check("10.0.0.0/8=::1", why, sizeof why), -1);
    assert_int_equal(gw_pp_addr_for_check("10.0.0.0/8=host.example", why, sizeof why), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_spec_examples),     cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_need_never_overreads), cmocka_unit_test(test_v2),
        cmocka_unit_test(test_build_roundtrip),      cmocka_unit_test(test_cidr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
