/* Unit tests for proxy/ftp_addr.c: 227/229/PORT/EPRT/EPSV parsing, formatting, helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ftp_addr.h"

static gw_addr v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port)
{
    gw_addr x;

    memset(&x, 0, sizeof(x));
    x.family = 4;
    x.ip[0] = a;
    x.ip[1] = b;
    x.ip[2] = c;
    x.ip[3] = d;
    x.port = port;
    return x;
}

static gw_addr v6(const uint8_t ip[16], uint16_t port)
{
    gw_addr x;

    memset(&x, 0, sizeof(x));
    x.family = 6;
    memcpy(x.ip, ip, 16);
    x.port = port;
    return x;
}

static const uint8_t ip6_loopback[16] = {[15] = 1};
static const uint8_t ip6_mapped[16] = {
    [10] = 0xff, [11] = 0xff, [12] = 192, [13] = 0, [14] = 2, [15] = 1};

static void assert_v4(const gw_addr *a, uint8_t b0, uint8_t b1, uint8_t b2, uint8_t b3,
                      uint16_t port)
{
    assert_int_equal(a->family, 4);
    assert_int_equal(a->ip[0], b0);
    assert_int_equal(a->ip[1], b1);
    assert_int_equal(a->ip[2], b2);
    assert_int_equal(a->ip[3], b3);
    assert_int_equal(a->port, port);
}

static void test_227_variants(void **state)
{
    static const char *const ok[] = {
        "227 Entering Passive Mode (127,0,0,1,4,1)",
        "227 Entering Passive Mode (127,0,0,1,4,1).",
        "227 Entering Passive Mode (127,0,0,1,4,1).\r\n",
        "227 =127,0,0,1,4,1",
        "227 Entering Passive Mode 127,0,0,1,4,1",
        "227 Entering Passive Mode (127, 0, 0, 1, 4, 1)",
        "227 Entering Passive Mode (127,000,000,001,004,001)",
        "227-Entering Passive Mode (127,0,0,1,4,1)",
        "227 Port 21 is control; data at (127,0,0,1,4,1)",
        "227 (1,2,3) then 127,0,0,1,4,1",
        "227 Mode ,127,0,0,1,4,1",
        "227 127,0,0,1,4,1,",
    };
    size_t i;

    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        gw_addr a;

        if (gw_parse_227(ok[i], &a) != 0)
            fail_msg("rejected: %s", ok[i]);
        assert_v4(&a, 127, 0, 0, 1, 1025);
    }
}

static void test_227_rejects(void **state)
{
    static const char *const bad[] = {
        "227 Entering Passive Mode (256,0,0,1,4,1)",
        "227 Entering Passive Mode (127,0,0,1,4,256)",
        "227 Entering Passive Mode (127,0,0,1,999,1)",
        "227 Entering Passive Mode (127,0,0,1,4)",
        "227 Entering Passive Mode (127,0,0,1,4,1,7)",
        "227 Entering Passive Mode (127,0,0,1,0,0)",
        "227 Entering Passive Mode (1270,0,0,1,4,1)",
        "227 Entering Passive Mode (127,0,0,1,4,0001)",
        "227 Entering Passive Mode (-127,0,0,1,4,-1)",
        "227 Entering Passive Mode (127 ,0,0,1,4,1)",
        "227 Entering Passive Mode",
        "227",
        "",
        "200 Entering Passive Mode (127,0,0,1,4,1)",
        "22",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gw_addr a;

        if (gw_parse_227(bad[i], &a) != -1)
            fail_msg("accepted: %s", bad[i]);
    }
}

static void test_227_any_address(void **state)
{
    gw_addr a;

    assert_int_equal(gw_parse_227("227 Entering Passive Mode (0,0,0,0,195,80)", &a), 0);
    assert_v4(&a, 0, 0, 0, 0, 50000);
    assert_int_equal(gw_parse_227("227 Entering Passive Mode (255,255,255,255,255,255)", &a), 0);
    assert_v4(&a, 255, 255, 255, 255, 65535);
}

static void test_229_variants(void **state)
{
    static const struct {
        const char *text;
        uint16_t port;
    } ok[] = {
        {"229 Entering Extended Passive Mode (|||6446|)", 6446},
        {"229 Entering Extended Passive Mode (|||6446|)\r\n", 6446},
        {"229 Entering Extended Passive Mode (!!!6446!)", 6446},
        {"229 ok (###21#)", 21},
        {"229 (~~~65535~)", 65535},
        {"229 (|||1|)", 1},
        {"229 (|||06446|)", 6446},
        {"229 (|||6446|", 6446},
        {"229-Entering (x) and (|||6446|)", 6446},
    };
    static const char *const bad[] = {
        "229 Entering Extended Passive Mode (|||0|)",
        "229 Entering Extended Passive Mode (|||65536|)",
        "229 Entering Extended Passive Mode (|||123456|)",
        "229 Entering Extended Passive Mode (|||6446!)",
        "229 Entering Extended Passive Mode (||6446|)",
        "229 Entering Extended Passive Mode (|!|6446|)",
        "229 Entering Extended Passive Mode (|||6446)",
        "229 Entering Extended Passive Mode (||||)",
        "229 Entering Extended Passive Mode (1116446)",
        "229 Entering Extended Passive Mode (   6446 )",
        "229 Entering Extended Passive Mode |||6446|",
        "229 Entering Extended Passive Mode (|1|127.0.0.1|6446|)",
        "227 Entering Extended Passive Mode (|||6446|)",
        "229 (",
        "",
    };
    size_t i;
    uint16_t port;

    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        port = 0;
        if (gw_parse_229(ok[i].text, &port) != 0)
            fail_msg("rejected: %s", ok[i].text);
        assert_int_equal(port, ok[i].port);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (gw_parse_229(bad[i], &port) != -1)
            fail_msg("accepted: %s", bad[i]);
}

static void test_port_arg(void **state)
{
    static const char *const bad[] = {
        "",
        "127,0,0,1,4",
        "127,0,0,1,4,1,1",
        "127,0,0,1,4,256",
        "256,0,0,1,4,1",
        "127,0,0,1,0,0",
        "127,0,0,1,4,1 ",
        " 127,0,0,1,4,1",
        "127, 0,0,1,4,1",
        "127,0,0,1,4,",
        "127,,0,1,4,1",
        "127.0.0.1,4,1",
        "1270,0,0,1,4,1",
        "+127,0,0,1,4,1",
        "127,0,0,1,4,1x",
    };
    gw_addr a;
    size_t i;

    assert_int_equal(gw_parse_port_arg("127,0,0,1,4,1", &a), 0);
    assert_v4(&a, 127, 0, 0, 1, 1025);
    assert_int_equal(gw_parse_port_arg("10,1,2,3,0,1", &a), 0);
    assert_v4(&a, 10, 1, 2, 3, 1);
    assert_int_equal(gw_parse_port_arg("192,168,001,010,255,255", &a), 0);
    assert_v4(&a, 192, 168, 1, 10, 65535);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (gw_parse_port_arg(bad[i], &a) != -1)
            fail_msg("accepted: %s", bad[i]);
}

static void test_eprt_ok(void **state)
{
    gw_addr a;

    assert_int_equal(gw_parse_eprt_arg("|1|132.235.1.2|6275|", &a), 0);
    assert_v4(&a, 132, 235, 1, 2, 6275);

    assert_int_equal(gw_parse_eprt_arg("|2|::1|5282|", &a), 0);
    assert_int_equal(a.family, 6);
    assert_memory_equal(a.ip, ip6_loopback, 16);
    assert_int_equal(a.port, 5282);

    assert_int_equal(gw_parse_eprt_arg("!2!::1!5282!", &a), 0);
    assert_int_equal(a.family, 6);
    assert_memory_equal(a.ip, ip6_loopback, 16);
    assert_int_equal(a.port, 5282);

    assert_int_equal(gw_parse_eprt_arg("|2|1080::8:800:200C:417A|5282|", &a), 0);
    assert_int_equal(a.family, 6);
    assert_int_equal(a.ip[0], 0x10);
    assert_int_equal(a.ip[15], 0x7a);

    assert_int_equal(gw_parse_eprt_arg("~1~10.0.0.1~65535~", &a), 0);
    assert_v4(&a, 10, 0, 0, 1, 65535);

    /* IPv4-mapped stays family 6 until normalised */
    assert_int_equal(gw_parse_eprt_arg("|2|::ffff:192.0.2.1|2121|", &a), 0);
    assert_int_equal(a.family, 6);
    assert_memory_equal(a.ip, ip6_mapped, 16);
    gw_addr_normalize(&a);
    assert_v4(&a, 192, 0, 2, 1, 2121);
}

static void test_eprt_unknown_family(void **state)
{
    gw_addr a;

    assert_int_equal(gw_parse_eprt_arg("|3|foo|21|", &a), -2);
    assert_int_equal(gw_parse_eprt_arg("|0|1.2.3.4|21|", &a), -2);
    assert_int_equal(gw_parse_eprt_arg("|99999999999999|1.2.3.4|21|", &a), -2);
}

static void test_eprt_syntax(void **state)
{
    static const char *const bad[] = {
        "",
        "|",
        "||||",
        "|1|1.2.3.4|21",
        "|1|1.2.3.4|21|x",
        "|1|1.2.3.4|21||",
        "|1|1.2.3.4||",
        "|1||21|",
        "||1.2.3.4|21|",
        "|a|1.2.3.4|21|",
        "|1 |1.2.3.4|21|",
        "|1|::1|21|",
        "|2|1.2.3.4|21|",
        "|1|1.2.3.256|21|",
        "|1|01.2.3.4|21|",
        "|1|1.2.3|21|",
        "|1| 1.2.3.4|21|",
        "|2|fe80::1%eth0|21|",
        "|2|::1|21!",
        "!1!1.2.3.4|21|",
        "1121.2.3.41211",
        " |1|1.2.3.4|21|",
        "\x7f"
        "1\x7f"
        "1.2.3.4\x7f"
        "21\x7f",
        "|1|1.2.3.4|0|",
        "|1|1.2.3.4|65536|",
        "|1|1.2.3.4|123456|",
        "|1|1.2.3.4|-1|",
        "|2|0000:0000:0000:0000:0000:0000:0000:0000:0000:0001|21|",
    };
    gw_addr a;
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (gw_parse_eprt_arg(bad[i], &a) != -1)
            fail_msg("not a syntax error: %s", bad[i]);
}

static void test_epsv_arg(void **state)
{
    int fam = -9;

    assert_int_equal(gw_parse_epsv_arg("", &fam), 0);
    assert_int_equal(fam, 0);
    assert_int_equal(gw_parse_epsv_arg("1", &fam), 0);
    assert_int_equal(fam, 4);
    assert_int_equal(gw_parse_epsv_arg("2", &fam), 0);
    assert_int_equal(fam, 6);
    assert_int_equal(gw_parse_epsv_arg("ALL", &fam), 1);
    assert_int_equal(fam, 1);
    assert_int_equal(gw_parse_epsv_arg("all", &fam), 1);
    assert_int_equal(gw_parse_epsv_arg("aLl", &fam), 1);
    assert_int_equal(gw_parse_epsv_arg("3", &fam), -2);
    assert_int_equal(gw_parse_epsv_arg("0", &fam), -2);
    assert_int_equal(gw_parse_epsv_arg("12", &fam), -2);
    assert_int_equal(gw_parse_epsv_arg("01", &fam), -2);
    assert_int_equal(gw_parse_epsv_arg("ALLX", &fam), -1);
    assert_int_equal(gw_parse_epsv_arg("1 ", &fam), -1);
    assert_int_equal(gw_parse_epsv_arg(" 1", &fam), -1);
    assert_int_equal(gw_parse_epsv_arg("-1", &fam), -1);
    assert_int_equal(gw_parse_epsv_arg("foo", &fam), -1);
}

static void test_format_227(void **state)
{
    gw_addr a = v4(192, 168, 1, 2, 50000), b;
    char buf[64];
    size_t n;

    n = gw_format_227(buf, sizeof(buf), &a);
    assert_string_equal(buf, "227 Entering Passive Mode (192,168,1,2,195,80).\r\n");
    assert_int_equal(n, strlen(buf));
    assert_int_equal(gw_parse_227(buf, &b), 0);
    assert_v4(&b, 192, 168, 1, 2, 50000);

    assert_int_equal(gw_format_227(buf, n, &a), 0); /* no room for the NUL */
    assert_string_equal(buf, "");
    assert_int_equal(gw_format_227(buf, n + 1, &a), n);
    assert_int_equal(gw_format_227(buf, 0, &a), 0);

    b = v6(ip6_loopback, 21);
    assert_int_equal(gw_format_227(buf, sizeof(buf), &b), 0);
    b = v6(ip6_mapped, 21);
    assert_int_equal(gw_format_227(buf, sizeof(buf), &b), 45);
    assert_string_equal(buf, "227 Entering Passive Mode (192,0,2,1,0,21).\r\n");
    memset(&b, 0, sizeof(b));
    assert_int_equal(gw_format_227(buf, sizeof(buf), &b), 0);
}

static void test_format_229(void **state)
{
    char buf[64];
    uint16_t port = 0;
    size_t n;

    n = gw_format_229(buf, sizeof(buf), 6446);
    assert_string_equal(buf, "229 Entering Extended Passive Mode (|||6446|)\r\n");
    assert_int_equal(n, strlen(buf));
    assert_int_equal(gw_parse_229(buf, &port), 0);
    assert_int_equal(port, 6446);
    assert_int_equal(gw_format_229(buf, n, 6446), 0);
    assert_int_equal(gw_format_229(buf, n + 1, 6446), n);
}

static void test_format_port(void **state)
{
    gw_addr a = v4(10, 0, 0, 7, 1025), b;
    char buf[64];
    size_t n;

    n = gw_format_port(buf, sizeof(buf), &a);
    assert_string_equal(buf, "PORT 10,0,0,7,4,1\r\n");
    assert_int_equal(n, 19);
    buf[n - 2] = '\0';
    assert_int_equal(gw_parse_port_arg(buf + 5, &b), 0);
    assert_v4(&b, 10, 0, 0, 7, 1025);
    assert_int_equal(gw_format_port(buf, 19, &a), 0);
    b = v6(ip6_loopback, 21);
    assert_int_equal(gw_format_port(buf, sizeof(buf), &b), 0);
}

static void test_format_eprt(void **state)
{
    gw_addr a = v4(132, 235, 1, 2, 6275), b;
    char buf[96];
    size_t n;

    n = gw_format_eprt(buf, sizeof(buf), &a);
    assert_string_equal(buf, "EPRT |1|132.235.1.2|6275|\r\n");
    assert_int_equal(n, strlen(buf));
    buf[n - 2] = '\0';
    assert_int_equal(gw_parse_eprt_arg(buf + 5, &b), 0);
    assert_v4(&b, 132, 235, 1, 2, 6275);

    a = v6(ip6_loopback, 5282);
    n = gw_format_eprt(buf, sizeof(buf), &a);
    assert_string_equal(buf, "EPRT |2|::1|5282|\r\n");
    buf[n - 2] = '\0';
    assert_int_equal(gw_parse_eprt_arg(buf + 5, &b), 0);
    assert_int_equal(b.family, 6);
    assert_memory_equal(b.ip, ip6_loopback, 16);
    assert_int_equal(b.port, 5282);
    assert_int_equal(gw_format_eprt(buf, 19, &a), 0);
    assert_int_equal(gw_format_eprt(buf, 20, &a), 19);

    a = v6(ip6_mapped, 2121); /* written as IPv4: every backend understands |1| */
    gw_format_eprt(buf, sizeof(buf), &a);
    assert_string_equal(buf, "EPRT |1|192.0.2.1|2121|\r\n");

    memset(&a, 0, sizeof(a));
    assert_int_equal(gw_format_eprt(buf, sizeof(buf), &a), 0);
}

static void test_normalize(void **state)
{
    gw_addr a = v6(ip6_mapped, 99), b = v6(ip6_loopback, 1), c = v4(1, 2, 3, 4, 5);
    static const uint8_t almost[16] = {[10] = 0xff, [11] = 0xfe, [15] = 1};

    gw_addr_normalize(&a);
    assert_v4(&a, 192, 0, 2, 1, 99);
    for (int i = 4; i < 16; i++)
        assert_int_equal(a.ip[i], 0);
    gw_addr_normalize(&b);
    assert_int_equal(b.family, 6);
    assert_memory_equal(b.ip, ip6_loopback, 16);
    gw_addr_normalize(&c);
    assert_v4(&c, 1, 2, 3, 4, 5);
    b = v6(almost, 1);
    gw_addr_normalize(&b);
    assert_int_equal(b.family, 6);
}

static void test_same_host(void **state)
{
    gw_addr a = v4(192, 0, 2, 1, 21), b = v6(ip6_mapped, 5000), c = v4(192, 0, 2, 2, 21),
            d = v6(ip6_loopback, 1), e = v4(0, 0, 0, 1, 1), z;

    memset(&z, 0, sizeof(z));
    assert_true(gw_addr_same_host(&a, &b)); /* ports ignored, mapped normalised */
    assert_true(gw_addr_same_host(&b, &a));
    assert_false(gw_addr_same_host(&a, &c));
    assert_false(gw_addr_same_host(&d, &e)); /* ::1 is not 0.0.0.1 */
    assert_true(gw_addr_same_host(&d, &d));
    assert_false(gw_addr_same_host(&z, &z));
    assert_false(gw_addr_same_host(&a, &z));
    /* the mapped form was not modified */
    assert_int_equal(b.family, 6);
}

static void test_ip_str(void **state)
{
    gw_addr a = v4(203, 0, 113, 9, 1), b = v6(ip6_mapped, 1), z;
    char buf[64];

    memset(&z, 0, sizeof(z));
    assert_ptr_equal(gw_addr_ip_str(&a, buf, sizeof(buf)), buf);
    assert_string_equal(buf, "203.0.113.9");
    assert_string_equal(gw_addr_ip_str(&b, buf, sizeof(buf)), "::ffff:192.0.2.1");
    assert_string_equal(gw_addr_ip_str(&z, buf, sizeof(buf)), "");
    assert_string_equal(gw_addr_ip_str(&a, buf, 5), ""); /* too small */
    assert_ptr_equal(gw_addr_ip_str(&a, buf, 0), buf);
}

static void test_private_or_any(void **state)
{
    static const struct {
        const char *ip;
        bool want;
    } cases[] = {
        {"|1|0.0.0.0|1|", true},
        {"|1|0.1.2.3|1|", true},
        {"|1|10.1.2.3|1|", true},
        {"|1|172.16.0.1|1|", true},
        {"|1|172.31.255.255|1|", true},
        {"|1|172.32.0.1|1|", false},
        {"|1|172.15.0.1|1|", false},
        {"|1|192.168.0.1|1|", true},
        {"|1|192.169.0.1|1|", false},
        {"|1|169.254.1.1|1|", true},
        {"|1|127.0.0.1|1|", false},
        {"|1|8.8.8.8|1|", false},
        {"|1|100.64.0.1|1|", false},
        {"|2|::|1|", true},
        {"|2|::1|1|", false},
        {"|2|fc00::1|1|", true},
        {"|2|fd12:3456::1|1|", true},
        {"|2|fe80::1|1|", true},
        {"|2|febf::1|1|", true},
        {"|2|fec0::1|1|", false},
        {"|2|2001:db8::1|1|", false},
        {"|2|::ffff:10.0.0.1|1|", true},
        {"|2|::ffff:127.0.0.1|1|", false},
        {"|2|::ffff:0.0.0.0|1|", true},
    };
    size_t i;
    gw_addr a;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(gw_parse_eprt_arg(cases[i].ip, &a), 0);
        if (gw_addr_is_private_or_any(&a) != cases[i].want)
            fail_msg("%s", cases[i].ip);
    }
    memset(&a, 0, sizeof(a));
    assert_false(gw_addr_is_private_or_any(&a));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_227_variants),
        cmocka_unit_test(test_227_rejects),
        cmocka_unit_test(test_227_any_address),
        cmocka_unit_test(test_229_variants),
        cmocka_unit_test(test_port_arg),
        cmocka_unit_test(test_eprt_ok),
        cmocka_unit_test(test_eprt_unknown_family),
        cmocka_unit_test(test_eprt_syntax),
        cmocka_unit_test(test_epsv_arg),
        cmocka_unit_test(test_format_227),
        cmocka_unit_test(test_format_229),
        cmocka_unit_test(test_format_port),
        cmocka_unit_test(test_format_eprt),
        cmocka_unit_test(test_normalize),
        cmocka_unit_test(test_same_host),
        cmocka_unit_test(test_ip_str),
        cmocka_unit_test(test_private_or_any),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
