/* Unit tests for proxy/config.c (cmocka). Run from the repository root (the sample files
 * under config/ are parsed too). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static gw_config cfg;
static char err[512];

static int parse(const char *text)
{
    memset(err, 'X', sizeof err);
    gw_config_free(&cfg); /* the previous test's result */
    return gw_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof err);
}

/* A minimal valid tail that error tests append their section to. */
#define FE "[frontend a]\nlisten = 127.0.0.1:990\n"
#define BE "[backend b]\naddress = 127.0.0.1:2121\n"

/* The parse fails and the message starts with `prefix` and contains `part`. */
static void expect_error(const char *text, const char *prefix, const char *part)
{
    int rc = parse(text);
    if (rc != -1 || strncmp(err, prefix, strlen(prefix)) != 0 || (part && !strstr(err, part)))
        print_error("text:\n%s\nrc=%d err=%s\nwant prefix \"%s\" containing \"%s\"\n", text, rc,
                    rc ? err : "", prefix, part ? part : "");
    assert_int_equal(rc, -1);
    assert_true(strncmp(err, prefix, strlen(prefix)) == 0);
    if (part)
        assert_non_null(strstr(err, part));
}

static void expect_ok(const char *text)
{
    int rc = parse(text);
    if (rc != 0)
        print_error("text:\n%s\nerr=%s\n", text, err);
    assert_int_equal(rc, 0);
}

/* No fixed cap: 100 frontends and 100 backends (the last frontend balances over all of
 * them), then a deep copy that outlives the original. */
static void test_many_sections(void **state)
{
    (void)state;
    enum { N = 100, ALL = N };
    size_t cap = (size_t)N * 200 + 1024, used = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    for (int i = 0; i < N; i++)
        used += (size_t)snprintf(text + used, cap - used,
                                 "[backend b%d]\naddress = 127.0.0.1:%d\nweight = %d\n", i,
                                 20000 + i, 1 + i % 7);
    for (int i = 0; i < N - 1; i++)
        used += (size_t)snprintf(text + used, cap - used,
                                 "[frontend f%d]\nlisten = 127.0.0.1:%d\nmode = plain\n"
                                 "backend = b%d, b%d\n",
                                 i, 30000 + i, i, (i + 1) % N);
    used += (size_t)snprintf(text + used, cap - used,
                             "[frontend all]\nlisten = 127.0.0.1:31000\nmode = plain\nbackend = ");
    for (int i = 0; i < ALL; i++)
        used += (size_t)snprintf(text + used, cap - used, "%sb%d", i ? "," : "", i);
    used += (size_t)snprintf(text + used, cap - used, "\n");
    assert_true(used < cap);
    expect_ok(text);
    free(text);
    assert_int_equal(cfg.n_backends, N);
    assert_int_equal(cfg.n_frontends, N);
    assert_string_equal(cfg.backends[N - 1].name, "b99");
    assert_int_equal(cfg.backends[N - 1].address.port, 20000 + N - 1);
    assert_int_equal(cfg.frontends[42].n_backends, 2);
    assert_int_equal(cfg.frontends[42].backend_list[1], 43);
    assert_int_equal(cfg.frontends[N - 2].backend_list[1], N - 1);
    const gw_frontend_conf *all = &cfg.frontends[N - 1];
    assert_int_equal(all->n_backends, ALL);
    for (int i = 0; i < ALL; i++)
        assert_int_equal(all->backend_list[i], i);

    gw_config copy;
    assert_int_equal(gw_config_copy(&copy, &cfg), 0);
    gw_config_free(&cfg);
    assert_null(cfg.frontends);
    assert_int_equal(cfg.n_backends, 0);
    gw_config_free(&cfg); /* idempotent */
    assert_int_equal(copy.n_frontends, N);
    assert_int_equal(copy.frontends[N - 1].backend_list[ALL - 1], ALL - 1);
    assert_string_equal(copy.frontends[7].name, "f7");
    assert_int_equal(copy.backends[5].weight, 1 + 5 % 7);
    gw_config_free(&copy);

    /* A failed parse leaves nothing to free. */
    expect_error("[backend b]\naddress = 127.0.0.1:1\n[frontend a]\nlisten = 127.0.0.1:2\n"
                 "backend = nope\n",
                 "t.conf:", "no [backend nope]");
    assert_null(cfg.frontends);
    assert_null(cfg.backends);
}

static void test_default_parses(void **state)
{
    (void)state;
    gw_config_free(&cfg);
    assert_int_equal(gw_config_parse(gw_config_default_ini, strlen(gw_config_default_ini),
                                     "<embedded default>", &cfg, err, sizeof err),
                     0);
    assert_int_equal(cfg.workers, 1);
    assert_int_equal(cfg.log_level, GW_LOG_INFO);
    assert_false(cfg.log_json);
    assert_string_equal(cfg.user, "");
    assert_string_equal(cfg.xferlog, "");
    assert_int_equal(cfg.max_sessions, 10000);
    assert_int_equal(cfg.max_sessions_per_ip, 50);
    assert_int_equal(cfg.idle_timeout, 600);
    assert_int_equal(cfg.login_timeout, 60);
    assert_int_equal(cfg.data_connect_timeout, 60);
    assert_int_equal(cfg.data_timeout, 300);
    assert_int_equal(cfg.shutdown_grace, 30);
    assert_string_equal(cfg.cert, "");
    assert_string_equal(cfg.key, "");
    assert_int_equal(cfg.tls_min_version, GW_TLS_1_2);
    assert_true(cfg.data_session_reuse_required);
    assert_int_equal(cfg.strict_tls_eof, -1);
    assert_int_equal(cfg.splice, GW_SPLICE_NO);

    assert_int_equal(cfg.n_frontends, 2);
    assert_string_equal(cfg.frontends[1].name, "explicit");
    assert_int_equal(cfg.frontends[1].listen.port, 2100);
    assert_int_equal(cfg.frontends[1].mode, GW_FE_EXPLICIT);
    assert_int_equal(cfg.frontends[1].backend_index, 0);
    const gw_frontend_conf *f = &cfg.frontends[0];
    assert_string_equal(f->name, "implicit");
    assert_string_equal(f->listen.host, "127.0.0.1");
    assert_int_equal(f->listen.port, 9990);
    assert_int_equal(f->mode, GW_FE_IMPLICIT);
    assert_string_equal(f->backend, "legacy");
    assert_int_equal(f->backend_index, 0);
    assert_true(f->require_tls);
    assert_true(f->require_prot_p);
    assert_false(f->allow_ccc);
    assert_false(f->auth_ssl_protects_data);
    assert_string_equal(f->pasv_address, "");
    assert_int_equal(f->pasv_port_min, 30000);
    assert_int_equal(f->pasv_port_max, 30099);
    assert_int_equal(f->active_source_port, -1);

    assert_int_equal(cfg.n_backends, 1);
    const gw_backend_conf *b = &cfg.backends[0];
    assert_string_equal(b->name, "legacy");
    assert_string_equal(b->address.host, "127.0.0.1");
    assert_int_equal(b->address.port, 2121);
    assert_int_equal(b->tls, GW_BE_TLS_NONE);
    assert_true(b->tls_verify);
    assert_int_equal(b->min_version, GW_TLS_1_2);
    assert_int_equal(b->max_version, GW_TLS_ANY);
    assert_int_equal(b->data_mode, GW_DATA_PASSIVE);
    assert_int_equal(b->connect_timeout, 10);
}

static const char full[] = "; a complete file\n"
                           "[global]\n"
                           "workers = 1\n"
                           "user =\n"
                           "log_level = debug\n"
                           "log_format = text\n"
                           "xferlog =\n"
                           "max_sessions = 10000\n"
                           "max_sessions_per_ip = 50\n"
                           "idle_timeout = 120\n"
                           "login_timeout = 15\n"
                           "data_connect_timeout = 60\n"
                           "data_timeout = 300\n"
                           "shutdown_grace = 30\n"
                           "\n"
                           "[tls]\n"
                           "cert = /etc/ftpsgate/gw.crt\n"
                           "key = /etc/ftpsgate/gw.key\n"
                           "min_version = TLSv1.3\n"
                           "ciphers =\n"
                           "ciphersuites =\n"
                           "data_session_reuse = optional\n"
                           "strict_tls_eof =\n"
                           "\n"
                           "[frontend ftps]\n"
                           "listen = 0.0.0.0:990\n"
                           "mode = implicit\n"
                           "backend = second\n"
                           "require_tls = yes\n"
                           "require_prot_p = no\n"
                           "allow_ccc = no\n"
                           "pasv_address = 203.0.113.7\n"
                           "pasv_ports = 40000-40999\n"
                           "active_source_port = 989\n"
                           "cert = fe.crt\n"
                           "key = fe.key\n"
                           "\n"
                           "[frontend v6]\n"
                           "listen = [::]:990\n"
                           "backend = legacy\n"
                           "pasv_ports = 40000-40999\n"
                           "active_source_port = 0\n"
                           "\n"
                           "[backend legacy]\n"
                           "address = 127.0.0.1:2121\n"
                           "tls = none\n"
                           "tls_verify = yes\n"
                           "ca_file =\n"
                           "sni =\n"
                           "min_version = TLSv1.2\n"
                           "max_version =\n"
                           "ciphers =\n"
                           "data_mode = passive\n"
                           "connect_timeout = 5\n"
                           "\n"
                           "[backend second]\n"
                           "address = ftp.example.net:21\n";

static void test_full_file(void **state)
{
    (void)state;
    expect_ok(full);
    assert_int_equal(cfg.log_level, GW_LOG_DEBUG);
    assert_int_equal(cfg.idle_timeout, 120);
    assert_int_equal(cfg.login_timeout, 15);
    assert_string_equal(cfg.cert, "/etc/ftpsgate/gw.crt");
    assert_string_equal(cfg.key, "/etc/ftpsgate/gw.key");
    assert_int_equal(cfg.tls_min_version, GW_TLS_1_3);
    assert_false(cfg.data_session_reuse_required);
    assert_int_equal(cfg.n_frontends, 2);
    assert_int_equal(cfg.n_backends, 2);
    const gw_frontend_conf *f = &cfg.frontends[0];
    assert_string_equal(f->name, "ftps");
    assert_string_equal(f->listen.host, "0.0.0.0");
    assert_int_equal(f->listen.port, 990);
    assert_int_equal(f->backend_index, 1);
    assert_false(f->require_prot_p);
    assert_string_equal(f->pasv_address, "203.0.113.7");
    assert_int_equal(f->pasv_port_min, 40000);
    assert_int_equal(f->pasv_port_max, 40999);
    assert_int_equal(f->active_source_port, 989);
    assert_string_equal(f->cert, "fe.crt");
    assert_string_equal(f->key, "fe.key");
    f = &cfg.frontends[1];
    assert_string_equal(f->cert, "/etc/ftpsgate/gw.crt"); /* merged from [tls] */
    assert_string_equal(f->key, "/etc/ftpsgate/gw.key");
    assert_int_equal(f->tls_min_version, GW_TLS_1_3);
    assert_false(f->data_session_reuse_required);
    assert_string_equal(f->listen.host, "::");
    assert_int_equal(f->backend_index, 0);
    assert_int_equal(f->active_source_port, 0);
    assert_true(f->require_prot_p);
    assert_int_equal(cfg.backends[0].connect_timeout, 5);
    assert_string_equal(cfg.backends[1].address.host, "ftp.example.net");
    assert_int_equal(cfg.backends[1].address.port, 21);
    assert_int_equal(cfg.backends[1].connect_timeout, 10);
}

static void test_splice(void **state)
{
    (void)state;
    expect_ok("[global]\nsplice = yes\n" FE BE);
    assert_int_equal(cfg.splice, GW_SPLICE_YES);
    expect_ok("[global]\nsplice = NO\n" FE BE);
    assert_int_equal(cfg.splice, GW_SPLICE_NO);
    expect_ok("[global]\nsplice = downloads\n" FE BE);
    assert_int_equal(cfg.splice, GW_SPLICE_DOWNLOADS);
    expect_error("[global]\nsplice = uploads\n" FE BE,
                 "t.conf:2: [global] splice: ", "expected no | downloads | yes");
}

/* Bandwidth limits: bytes/s with K, M, G (1024s), default 0, per frontend and policy. */
static void test_rate_keys(void **state)
{
    (void)state;
    expect_ok(FE BE);
    assert_true(cfg.frontends[0].rate_down == 0 && cfg.frontends[0].frontend_rate_up == 0);
    expect_ok(FE "rate_down = 1M\nrate_up = 512k\nfrontend_rate_down = 2G\n"
                 "frontend_rate_up = 1000\n" BE "[policy p]\nrate_down = 64K\nrate_up = 3M\n");
    assert_true(cfg.frontends[0].rate_down == 1024 * 1024);
    assert_true(cfg.frontends[0].rate_up == 512 * 1024);
    assert_true(cfg.frontends[0].frontend_rate_down == 2ULL * 1024 * 1024 * 1024);
    assert_true(cfg.frontends[0].frontend_rate_up == 1000);
    assert_true(cfg.policies[0].rate_down == 64 * 1024 && cfg.policies[0].rate_up == 3 << 20);
    expect_error(FE "rate_down = 1.5M\n" BE,
                 "t.conf:3: [frontend a] rate_down: ", "expected bytes/s");
    expect_error(FE "frontend_rate_up = 1T\n" BE,
                 "t.conf:3: [frontend a] frontend_rate_up: ", NULL);
    expect_error(FE BE "[policy p]\nrate_up = fast\n", "t.conf:6: [policy p] rate_up: ", NULL);
    expect_error("[global]\nrate_down = 1M\n" FE BE, "t.conf:2: ", "rate_down");
}

/* prelogin_backend_per_ip / prelogin_backend_max: defaults, 0 (no bound), range. */
static void test_prelogin_keys(void **state)
{
    (void)state;
    expect_ok(FE BE);
    assert_int_equal(cfg.frontends[0].prelogin_backend_per_ip, 20);
    assert_int_equal(cfg.frontends[0].prelogin_backend_max, 100);
    expect_ok(FE "prelogin_backend_per_ip = 0\nprelogin_backend_max = 3\n" BE);
    assert_int_equal(cfg.frontends[0].prelogin_backend_per_ip, 0);
    assert_int_equal(cfg.frontends[0].prelogin_backend_max, 3);
    expect_error(FE "prelogin_backend_per_ip = -1\n" BE,
                 "t.conf:3: [frontend a] prelogin_backend_per_ip: ", NULL);
    expect_error(FE "prelogin_backend_max = many\n" BE,
                 "t.conf:3: [frontend a] prelogin_backend_max: ", NULL);
    expect_error("[global]\nprelogin_backend_max = 5\n" FE BE,
                 "t.conf:2: ", "prelogin_backend_max");
}

static void test_proxy_protocol_keys(void **state)
{
    (void)state;
    expect_ok(FE "proxy_protocol = any\nproxy_protocol_from = 10.0.0.0/8, ::1\n"
                 "proxy_protocol_data = yes\npasv_address = auto\n"
                 "pasv_address_for = 10.0.0.0/8=10.0.0.5, 0.0.0.0/0 = 203.0.113.7\n" BE
                 "proxy_protocol = v2\n");
    assert_int_equal(cfg.frontends[0].proxy_protocol, 3);
    assert_true(cfg.frontends[0].proxy_protocol_data);
    assert_string_equal(cfg.frontends[0].pasv_address, "auto");
    assert_int_equal(cfg.backends[0].proxy_protocol, 2);
    expect_ok(FE BE);
    assert_int_equal(cfg.frontends[0].proxy_protocol, 0);
    assert_int_equal(cfg.backends[0].proxy_protocol, 0);
    expect_error(FE "proxy_protocol = v2\n" BE,
                 "t.conf:3: [frontend a] proxy_protocol: ", "needs proxy_protocol_from");
    expect_error(FE "proxy_protocol_data = yes\n" BE,
                 "t.conf:3: [frontend a] proxy_protocol_data: ", "needs proxy_protocol");
    expect_error(FE "proxy_protocol_from = 10.0.0.0/40\n" BE,
                 "t.conf:3: [frontend a] proxy_protocol_from: ", "NETWORK/BITS");
    expect_error(FE "pasv_address_for = 10.0.0.0/8\n" BE,
                 "t.conf:3: [frontend a] pasv_address_for: ", "CIDR=IPV4ADDR");
    expect_error(FE BE "proxy_protocol = any\n",
                 "t.conf:5: [backend b] proxy_protocol: ", "expected no | v1 | v2");
    expect_error(FE "server_name = a.example\n" BE
                    "[frontend c]\nlisten = 127.0.0.1:990\nproxy_protocol = v1\n"
                    "proxy_protocol_from = 10.0.0.1\n",
                 "t.conf:7: [frontend c] proxy_protocol: ", "differs from [frontend a]");
}

/* admin_listen: empty is off; an IP literal and port; never a frontend's address or port. */
static void test_admin_listen(void **state)
{
    (void)state;
    expect_ok(FE BE);
    assert_int_equal(cfg.admin_listen.port, 0);
    expect_ok("[global]\nadmin_listen = 127.0.0.1:9100\n" FE BE);
    assert_string_equal(cfg.admin_listen.host, "127.0.0.1");
    assert_int_equal(cfg.admin_listen.port, 9100);
    expect_ok("[global]\nadmin_listen = [::1]:9100\n" FE BE);
    assert_string_equal(cfg.admin_listen.host, "::1");
    expect_error("[global]\nadmin_listen = localhost:9100\n" FE BE,
                 "t.conf:2: [global] admin_listen: ", "expected IP:PORT");
    expect_error("[global]\nadmin_listen = 127.0.0.1:990\n" FE BE,
                 "t.conf:2: [global] admin_listen: ", "[frontend a]");
    expect_error("[global]\nadmin_listen = 0.0.0.0:990\n" FE BE,
                 "t.conf:2: [global] admin_listen: ", "[frontend a]");
    expect_ok("[global]\nadmin_listen = 127.0.0.2:991\n" FE BE);
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_error("[global]\nlog_level = info\nworkerz = 1\n" FE BE,
                 "t.conf:3: [global] workerz: ", "unknown key");
    /* A key valid in another section is still unknown here. */
    expect_error(FE BE "[frontend c]\nlisten = 127.0.0.1:991\nsni = x\n",
                 "t.conf:7: [frontend c] sni: ", "unknown key");
    /* Key names are exact. */
    expect_error("[global]\nLog_Level = info\n" FE BE,
                 "t.conf:2: [global] Log_Level: ", "unknown key");
}

static void test_unknown_section(void **state)
{
    (void)state;
    expect_error(FE BE "\n[frontned x]\nlisten = 127.0.0.1:1\n",
                 "t.conf:6: [frontned x]: ", "unknown section");
    /* Empty sections are seen too. */
    expect_error("[global]\n[bogus]\n" FE BE, "t.conf:2: [bogus]: ", "unknown section");
    expect_error("[global extra]\n" FE BE, "t.conf:1: [global extra]: ", "takes no name");
    expect_error("[frontend a b]\n" FE BE, "t.conf:1: [frontend a b]: ", "invalid section name");
    expect_error("[]\n", "t.conf:1: []: ", "unknown section");
}

static void test_bad_number(void **state)
{
    (void)state;
    expect_error("[global]\n\nidle_timeout = 10m\n" FE BE,
                 "t.conf:3: [global] idle_timeout: ", "not a number");
    expect_error(FE BE "connect_timeout = ten\n",
                 "t.conf:5: [backend b] connect_timeout: ", "not a number");
    expect_error(FE "active_source_port = 0x10\n" BE,
                 "t.conf:3: [frontend a] active_source_port: ", "not a number");
}

static void test_out_of_range(void **state)
{
    (void)state;
    expect_error("[global]\nlogin_timeout = 0\n" FE BE,
                 "t.conf:2: [global] login_timeout: ", "out of range");
    expect_error("[global]\nidle_timeout = -5\n" FE BE,
                 "t.conf:2: [global] idle_timeout: ", "out of range");
    expect_error("[global]\nidle_timeout = 99999999999999999999\n" FE BE,
                 "t.conf:2: [global] idle_timeout: ", "out of range");
    expect_error(FE "active_source_port = 65536\n" BE,
                 "t.conf:3: [frontend a] active_source_port: ", "out of range");
    expect_error("[global]\nworkers = 0\n" FE BE, "t.conf:2: [global] workers: ", "out of range");
}

static void test_bad_port_range(void **state)
{
    (void)state;
    static const char *const bad[] = {"30000",       "30100-30000",  "80-100",
                                      "30000-70000", "-30000",       "30000-",
                                      "a-b",         "30000--30001", "30000 - 30001"};
    char text[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text,
                 "[frontend ftps]\nlisten = 127.0.0.1:990\n\npasv_ports = %s\n" BE, bad[i]);
        expect_error(text,
                     "t.conf:4: [frontend ftps] pasv_ports: expected LOW-HIGH with 1024 <= LOW "
                     "<= HIGH <= 65535",
                     NULL);
    }
    expect_ok(FE "pasv_ports =\n" BE); /* empty: no range */
    expect_ok(FE "pasv_ports = 1024-1024\n" BE);
    assert_int_equal(cfg.frontends[0].pasv_port_min, 1024);
    assert_int_equal(cfg.frontends[0].pasv_port_max, 1024);
    expect_ok(FE "pasv_ports = 65535-65535\n" BE);
}

static void test_shared_port(void **state)
{
    (void)state;
    const char *ok = "[frontend a]\nlisten = 127.0.0.1:990\npasv_shared_port = 2121\n"
                     "[frontend b]\nlisten = 127.0.0.1:21\nmode = explicit\n"
                     "pasv_ports = 31000-31009\npasv_shared_port = 2121\n" BE;
    expect_ok(ok);
    assert_int_equal(cfg.frontends[0].pasv_shared_port, 2121);
    assert_int_equal(cfg.frontends[1].pasv_shared_port, 2121);
    expect_ok(FE BE);
    assert_int_equal(cfg.frontends[0].pasv_shared_port, -1);
    expect_error(FE "pasv_shared_port = 30005\n" BE, "t.conf:3: [frontend a] pasv_shared_port: ",
                 "30005 is inside pasv_ports 30000-30099");
    expect_error("[frontend a]\nlisten = 127.0.0.1:2100\npasv_shared_port = 2100\n" BE,
                 "t.conf:3: [frontend a] pasv_shared_port: ", "2100 is the listen port");
    expect_error(FE "pasv_shared_port = 80\n" BE,
                 "t.conf:3: [frontend a] pasv_shared_port: ", NULL);
    const char *hosts = "[frontend a]\nlisten = 127.0.0.1:990\npasv_shared_port = 2121\n"
                        "[frontend b]\nlisten = 127.0.0.2:21\nmode = explicit\n"
                        "pasv_ports = 31000-31009\npasv_shared_port = 2121\n" BE;
    expect_error(hosts, "t.conf:", "shared with [frontend b], which listens on another host");
}

static void test_bad_address(void **state)
{
    (void)state;
    static const char *const bad[] = {"127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:990",
                                      "[::1]990",  "[::1:990",    "[nothost]:990",   ":990",
                                      "1.2.3:990", "host:port",   "a..b:21",         "[]:21",
                                      "a b:21",    "1.2.3.4:+21", "1.2.3.4:021021"};
    char text[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, FE "[backend b]\naddress = %s\n", bad[i]);
        expect_error(text, "t.conf:4: [backend b] address: ", "expected HOST:PORT");
    }
    /* Listening needs an IP literal. */
    expect_error("[frontend a]\nlisten = localhost:990\n" BE,
                 "t.conf:2: [frontend a] listen: ", "expected IP:PORT");
    expect_error(FE "pasv_address = ::1\n" BE, "t.conf:3: [frontend a] pasv_address: ", "IPv4");
    expect_error(FE "pasv_address = a b\n" BE,
                 "t.conf:3: [frontend a] pasv_address: ", "host name");
    expect_ok(FE "pasv_address = ftp.example.net\n" BE);
    expect_error(FE BE "[frontend c]\n", "t.conf:5: [frontend c] listen: ", "missing");
    expect_error(FE "[backend b]\ntls = none\n", "t.conf:3: [backend b] address: ", "missing");
}

static void test_unknown_backend(void **state)
{
    (void)state;
    expect_error("[frontend a]\nlisten = 127.0.0.1:990\nbackend = nope\n" BE,
                 "t.conf:3: [frontend a] backend: ", "no [backend nope] section");
    /* Without `backend`, a single backend is used; with two it is required. */
    expect_ok(FE BE);
    assert_string_equal(cfg.frontends[0].backend, "b");
    assert_int_equal(cfg.frontends[0].backend_index, 0);
    expect_error(BE "[backend c]\naddress = 127.0.0.1:21\n\n" FE,
                 "t.conf:6: [frontend a] backend: ", "missing");
    expect_error("[global]\n", "t.conf:0: ", "no [frontend NAME] section");
    expect_error(FE, "t.conf:0: ", "no [backend NAME] section");
    expect_error(FE "backend = a/b\n" BE, "t.conf:3: [frontend a] backend: ", "section name");
    /* Several backends, balance, weight and max_sessions. */
    expect_ok("[frontend a]\nlisten = 127.0.0.1:990\nbackend = c, b\nbalance = leastconn\n" BE
              "weight = 3\nmax_sessions = 5\n[backend c]\naddress = 127.0.0.1:22\n");
    assert_int_equal(cfg.frontends[0].n_backends, 2);
    assert_int_equal(cfg.frontends[0].backend_list[0], 1);
    assert_int_equal(cfg.frontends[0].backend_list[1], 0);
    assert_int_equal(cfg.frontends[0].balance, GW_BALANCE_LEASTCONN);
    assert_int_equal(cfg.backends[0].weight, 3);
    assert_int_equal(cfg.backends[0].max_sessions, 5);
    expect_error("[frontend a]\nlisten = 127.0.0.1:990\nbackend = b, b\n" BE,
                 "t.conf:3: [frontend a] backend: ", "b named twice");
}

static void test_spellings(void **state)
{
    (void)state;
    /* workers: auto is 0, a number is itself. */
    expect_ok("[global]\nworkers = auto\n" FE BE);
    assert_int_equal(cfg.workers, 0);
    expect_ok("[global]\nworkers = 4\n" FE BE);
    assert_int_equal(cfg.workers, 4);

    /* The default value spelled differently is the default. */
    expect_ok("[global]\nworkers = 1\nlog_format = TEXT\n[tls]\nstrict_tls_eof =\n" FE
              "require_tls = on\nallow_ccc = false\n" BE "tls_verify = 1\n");
    expect_ok(FE "auth_ssl_protects_data = yes\n" BE);
    assert_true(cfg.frontends[0].auth_ssl_protects_data);
    /* An invalid value names the valid ones. */
    expect_error(FE "mode = sideways\n" BE,
                 "t.conf:3: [frontend a] mode: ", "expected implicit | explicit | plain");
    expect_error(FE BE "min_version = SSLv3\n", "t.conf:5: [backend b] min_version: ",
                 "expected TLSv1 | TLSv1.1 | TLSv1.2 | TLSv1.3");
    expect_error("[tls]\nmin_version = TLSv1.1\n" FE BE,
                 "t.conf:2: [tls] min_version: ", "expected TLSv1.2 | TLSv1.3");
}

/* Issue 14: every [tls] key may be set per frontend and replaces the [tls] value there
 * (lists are not merged); unset keys take the [tls] value wherever [tls] is in the file. */
static void test_tls_policy_overrides(void **state)
{
    (void)state;
    expect_ok("[frontend legacy]\nlisten = 127.0.0.1:990\nmin_version = TLSv1.2\n"
              "ciphers = AES128-SHA\ndata_session_reuse = optional\nstrict_tls_eof = no\n"
              "data_session_reuse_exempt = 10.0.0.0/8\n"
              "[frontend strict]\nlisten = 127.0.0.1:991\n"
              "[tls]\nmin_version = TLSv1.3\nciphersuites = TLS_AES_256_GCM_SHA384\n"
              "data_session_reuse_exempt = 127.0.0.2, 192.0.2.0/24\n"
              "strict_tls_eof_exempt = ::1\nclient_cert = optional\nclient_ca = ca.pem\n" BE);
    const gw_frontend_conf *l = &cfg.frontends[0], *st = &cfg.frontends[1];
    assert_int_equal(l->tls_min_version, GW_TLS_1_2);
    assert_string_equal(l->ciphers, "AES128-SHA");
    assert_string_equal(l->ciphersuites, "TLS_AES_256_GCM_SHA384"); /* from [tls] */
    assert_false(l->data_session_reuse_required);
    assert_int_equal(l->strict_tls_eof, 0);
    assert_string_equal(l->data_session_reuse_exempt, "10.0.0.0/8"); /* replaced, not merged */
    assert_string_equal(l->strict_tls_eof_exempt, "::1");
    assert_int_equal(l->client_cert, GW_CERT_OPTIONAL);
    assert_int_equal(st->tls_min_version, GW_TLS_1_3);
    assert_string_equal(st->ciphers, "");
    assert_true(st->data_session_reuse_required);
    assert_int_equal(st->strict_tls_eof, -1);
    assert_string_equal(st->data_session_reuse_exempt, "127.0.0.2, 192.0.2.0/24");
    assert_string_equal(st->client_ca, "ca.pem");
    /* Defaults: strict, no client certificates. */
    expect_ok(FE BE);
    assert_int_equal(cfg.frontends[0].client_cert, GW_CERT_NONE);
    assert_true(cfg.frontends[0].data_session_reuse_required);
    assert_string_equal(cfg.frontends[0].data_session_reuse_exempt, "");
    /* A frontend may set client_cert = none under a [tls] that asks for certificates. */
    expect_ok("[tls]\nclient_cert = required\nclient_ca = ca.pem\nclient_cert_user = yes\n" FE
              "client_cert = none\nclient_cert_user = no\n" BE);
    assert_int_equal(cfg.frontends[0].client_cert, GW_CERT_NONE);

    expect_error(FE "client_cert = required\n" BE,
                 "t.conf:3: [frontend a] client_cert: ", "needs client_ca");
    expect_error("[tls]\nclient_cert_user = yes\n" FE BE,
                 "t.conf:2: [frontend a] client_cert_user: ", "needs client_cert");
    expect_error(FE "client_cert = sometimes\n" BE,
                 "t.conf:3: [frontend a] client_cert: ", "expected none | optional | required");
    expect_error(FE "data_session_reuse_exempt = 10.0.0.0/33\n" BE,
                 "t.conf:3: [frontend a] data_session_reuse_exempt: ", "10.0.0.0/33");
    expect_error("[tls]\nstrict_tls_eof_exempt = 10.0.0.1/8\n" FE BE,
                 "t.conf:2: [tls] strict_tls_eof_exempt: ", "expected ADDRESS");
    expect_error(FE "min_version = TLSv1\n" BE,
                 "t.conf:3: [frontend a] min_version: ", "expected TLSv1.2 | TLSv1.3");
    expect_error("[frontend p]\nlisten = 127.0.0.1:21\nmode = plain\nclient_cert = none\n" BE,
                 "t.conf:4: [frontend p] client_cert: ", "not allowed on a mode = plain");
}

/* The whole-file checks (admin_listen against the listeners, the backend list, the TLS
 * policy after [tls] is merged) once returned 0 on failure as on success: the parse went on
 * and only a latched flag made it fail. Now the result is their return value alone, so each
 * case below fails only if its check stops the parse: alone in an otherwise valid file,
 * and first of two problems (the later one must not be reported). */
static void test_each_check_stops_the_parse(void **state)
{
    (void)state;
    static const struct {
        const char *text, *prefix, *part;
    } cases[] = {
        {"[global]\nadmin_listen = 127.0.0.1:990\n" FE BE,
         "t.conf:2: [global] admin_listen: ", "is the listen address of [frontend a]"},
        {FE "backend = nope\n" BE, "t.conf:3: [frontend a] backend: ", "no [backend nope]"},
        {FE "backend = b, b\n" BE, "t.conf:3: [frontend a] backend: ", "b named twice"},
        {FE "client_cert = optional\n" BE,
         "t.conf:3: [frontend a] client_cert: ", "needs client_ca"},
        {"[tls]\nclient_cert_user = yes\n" FE BE,
         "t.conf:2: [frontend a] client_cert_user: ", "needs client_cert"},
        {"[frontend a]\nlisten = 127.0.0.1:2100\npasv_shared_port = 2100\n" BE,
         "t.conf:3: [frontend a] pasv_shared_port: ", "is the listen port"},
        /* first of two: the second problem (a shared port in the passive range) is not
         * reached */
        {FE "backend = nope\npasv_shared_port = 30001\n" BE,
         "t.conf:3: [frontend a] backend: ", "no [backend nope]"},
        {FE "client_cert = required\npasv_shared_port = 30001\n" BE,
         "t.conf:3: [frontend a] client_cert: ", "needs client_ca"},
        {"[global]\nadmin_listen = 127.0.0.1:990\n" FE,
         "t.conf:2: [global] admin_listen: ", "[frontend a]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_error(cases[i].text, cases[i].prefix, cases[i].part);
        assert_null(cfg.frontends); /* a failed parse holds nothing */
    }
}

/* No line length limit (inih cut lines at 198 characters): a frontend balancing over 100
 * backends with long names, a line over 1,000 characters, loads; a value too long for its
 * field is an error naming the key and its line. */
static void test_long_lines(void **state)
{
    (void)state;
    enum { N = 100 };
    size_t cap = (size_t)N * 160 + 1024, used = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    for (int i = 0; i < N; i++)
        used += (size_t)snprintf(text + used, cap - used,
                                 "[backend backend-server-%03d]\naddress = 127.0.0.1:%d\n", i,
                                 20000 + i);
    used += (size_t)snprintf(text + used, cap - used,
                             "[frontend a]\nlisten = 127.0.0.1:990\nbackend = ");
    size_t line_start = used - strlen("backend = ");
    for (int i = 0; i < N; i++)
        used += (size_t)snprintf(text + used, cap - used, "%sbackend-server-%03d", i ? ", " : "",
                                 N - 1 - i);
    size_t line_len = used - line_start;
    used += (size_t)snprintf(text + used, cap - used, "   ; %0*d\nbalance = leastconn\n", 900, 0);
    assert_true(used < cap && line_len > 1000);
    expect_ok(text);
    assert_int_equal(cfg.frontends[0].n_backends, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(cfg.frontends[0].backend_list[i], N - 1 - i);
    assert_int_equal(cfg.frontends[0].balance, GW_BALANCE_LEASTCONN);
    assert_int_equal(strlen(cfg.frontends[0].backend), line_len - strlen("backend = "));

    /* A long comment line, a long value within its field (GW_PATH_MAX - 1 characters). */
    char path[GW_PATH_MAX + 1];
    memset(path, 'p', sizeof path);
    path[GW_PATH_MAX - 1] = '\0';
    snprintf(text, cap, "; %0*d\n" FE "xferlog = %s\n" BE, 3000, 0, path);
    expect_error(text, "t.conf:4: [frontend a] xferlog: ", "unknown key");
    snprintf(text, cap, "; %0*d\n[global]\nxferlog = %s\n" FE BE, 3000, 0, path);
    expect_ok(text);
    assert_int_equal(strlen(cfg.xferlog), GW_PATH_MAX - 1);
    /* One character more: the field's limit, on the right line. */
    path[GW_PATH_MAX - 1] = 'p';
    path[GW_PATH_MAX] = '\0';
    snprintf(text, cap, "[global]\n\nxferlog = %s\n" FE BE, path);
    expect_error(text, "t.conf:3: [global] xferlog: ", "too long (at most 511 characters)");
    /* Also on the last line without a newline. */
    snprintf(text, cap, FE BE "; %0*d", 5000, 0);
    expect_ok(text);
    free(text);
}

static void test_duplicate_section(void **state)
{
    (void)state;
    expect_error(FE BE "[frontend a]\nlisten = 127.0.0.1:991\n",
                 "t.conf:5: [frontend a]: ", "duplicate section (first on line 1)");
    expect_error(FE BE "\n[backend b]\n", "t.conf:6: [backend b]: ", "duplicate section");
    expect_error("[tls]\n" FE BE "[tls]\n", "t.conf:6: [tls]: ", "duplicate section");
    expect_error("[global]\n[global]\n", "t.conf:2: [global]: ", "duplicate section");
    /* [frontend] is [frontend default]. */
    expect_error("[frontend]\nlisten = 127.0.0.1:1\n[frontend default]\n",
                 "t.conf:3: [frontend default]: ", "duplicate section");
    /* Frontend and backend names live apart. */
    expect_ok("[frontend x]\nlisten = 127.0.0.1:1\n[backend x]\naddress = h:21\n");
    /* Duplicate keys too. */
    expect_error(FE "pasv_ports = 40000-40010\n\npasv_ports = 40000-40010\n" BE,
                 "t.conf:5: [frontend a] pasv_ports: ", "duplicate key (first set on line 3)");
}

static void test_comments(void **state)
{
    (void)state;
    expect_ok("; semicolon comment\n"
              "# hash comment\n"
              "   ; indented comment\n"
              "[global] ; after a header\n"
              "idle_timeout = 30   ; inline semicolon\n"
              "login_timeout = 20\t# inline hash\n"
              "\t\tlog_level = warn\n"
              "\n"
              "[frontend a]  # hash after a header\n"
              "  listen = 127.0.0.1:990\n"
              "  pasv_address =  ; empty with a comment\n"
              "[backend b]\n"
              "address = 127.0.0.1:2121 ; trailing\n");
    assert_int_equal(cfg.idle_timeout, 30);
    assert_int_equal(cfg.login_timeout, 20);
    assert_int_equal(cfg.log_level, GW_LOG_WARN);
    assert_string_equal(cfg.frontends[0].pasv_address, "");
    assert_int_equal(cfg.backends[0].address.port, 2121);
}

static void test_comment_needs_blank(void **state)
{
    (void)state;
    /* ';' or '#' inside a value without a blank before it is part of the value. */
    expect_error(FE "[backend b]\naddress = 127.0.0.1:2121#x\n",
                 "t.conf:4: [backend b] address: ", "\"127.0.0.1:2121#x\"");
    expect_ok(FE BE "[frontend c]\nlisten = 127.0.0.1:991\ncert = a#b;c\nkey = k\n");
    assert_string_equal(cfg.frontends[1].cert, "a#b;c");
}

static void test_ipv6_listen(void **state)
{
    (void)state;
    expect_ok("[frontend v6]\nlisten = [::1]:990\n" BE);
    assert_string_equal(cfg.frontends[0].listen.host, "::1");
    assert_int_equal(cfg.frontends[0].listen.port, 990);
    expect_ok("[frontend v6]\nlisten = [2001:db8::1]:21\n[backend b]\naddress = [::1]:2121\n");
    assert_string_equal(cfg.backends[0].address.host, "::1");
    assert_int_equal(cfg.backends[0].address.port, 2121);
}

static void test_duplicate_listen(void **state)
{
    (void)state;
    expect_error(FE "[frontend c]\nlisten = 127.0.0.1:990\n" BE,
                 "t.conf:4: [frontend c] listen: ", "same address as [frontend a] (line 2)");
    expect_error("[frontend a]\nlisten = [::1]:21\n[frontend c]\nlisten = [0:0::1]:21\n" BE,
                 "t.conf:4: [frontend c] listen: ", "same address");
    expect_ok(FE "[frontend c]\nlisten = 127.0.0.1:991\n" BE);
    /* Passive ranges are shared when identical, else must not overlap. */
    expect_error(FE "[frontend c]\nlisten = 127.0.0.1:991\npasv_ports = 30050-30150\n" BE,
                 "t.conf:5: [frontend c] pasv_ports: ", "overlaps 30000-30099");
    expect_ok(FE "[frontend c]\nlisten = 127.0.0.1:991\npasv_ports = 30100-30150\n" BE);
}

static void test_server_name(void **state)
{
    (void)state;
    /* Frontends share an address when all but one have server_name, and the same mode. */
    expect_ok(FE "[frontend c]\nlisten = 127.0.0.1:990\nserver_name = a.example, *.b.example\n" BE);
    assert_string_equal(cfg.frontends[1].server_name, "a.example, *.b.example");
    expect_ok("[frontend a]\nlisten = 127.0.0.1:990\nserver_name = a.example\n"
              "[frontend c]\nlisten = 127.0.0.1:990\nserver_name = c.example\n" BE);
    expect_error(FE "[frontend c]\nlisten = 127.0.0.1:990\nserver_name = c\nmode = explicit\n" BE,
                 "t.conf:4: [frontend c] listen: ", "with another mode");
    expect_error(FE "[frontend c]\nlisten = 127.0.0.1:990\nserver_name = a*.example\n" BE,
                 "t.conf:5: [frontend c] server_name: ", "not a host name or *.suffix");
    expect_error(FE "[frontend c]\nlisten = 127.0.0.1:990\nserver_name = a,,b\n" BE,
                 "t.conf:5: [frontend c] server_name: ", "expected host names");
    /* Matching: tests/unit/test_server_name.c. */
}

static void test_syntax(void **state)
{
    (void)state;
    expect_error("idle_timeout = 5\n" FE BE, "t.conf:1: idle_timeout: ", "outside of any section");
    expect_error("[global]\njust words\n", "t.conf:2: [global]: ", "expected KEY = VALUE");
    expect_error("[global]\n= 5\n", "t.conf:2: [global]: ", "missing key");
    expect_error("[global\n", "t.conf:1: ", "section header");
    expect_error("[global] x\n", "t.conf:1: ", "section header");
    expect_error("[global]\nidle_timeout = 5\x01\n", "t.conf:2: ", "control character");
    static const char nul[] = "[global]\nidle_timeout = 5\0\n";
    assert_int_equal(gw_config_parse(nul, sizeof nul - 1, "t.conf", &cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "t.conf:2: "));
    /* The first error wins. */
    expect_error("[global]\nfoo = 1\nbar = 2\n[bogus]\n", "t.conf:2: [global] foo: ", NULL);
    /* Booleans. */
    expect_error(FE "require_prot_p = maybe\n" BE,
                 "t.conf:3: [frontend a] require_prot_p: ", "expected yes or no");
    static const char *const yes[] = {"yes", "YES", "true", "on", "1"};
    static const char *const no[] = {"no", "No", "false", "off", "0"};
    char text[256];
    for (size_t i = 0; i < 5; i++) {
        snprintf(text, sizeof text, FE "require_prot_p = %s\n" BE, yes[i]);
        expect_ok(text);
        assert_true(cfg.frontends[0].require_prot_p);
        snprintf(text, sizeof text, FE "require_prot_p = %s\n" BE, no[i]);
        expect_ok(text);
        assert_false(cfg.frontends[0].require_prot_p);
    }
    /* cert and key go together. */
    expect_error("[tls]\ncert = a.crt\n" FE BE, "t.conf:2: [tls] cert: ", "without key");
    expect_error(FE "key = a.key\n" BE, "t.conf:3: [frontend a] key: ", "without cert");
}

static void test_line_endings_and_bom(void **state)
{
    (void)state;
    expect_ok("\xEF\xBB\xBF[global]\r\nidle_timeout = 42\r\n[frontend a]\r\nlisten = "
              "127.0.0.1:990\r\n[backend b]\r\naddress = h:21");
    assert_int_equal(cfg.idle_timeout, 42);
    assert_string_equal(cfg.backends[0].address.host, "h");
    expect_error("\r\n\r\n[glob]\r\n", "t.conf:3: [glob]: ", "unknown section");
}

static void test_small_error_buffer(void **state)
{
    (void)state;
    char small[12];
    memset(small, 'X', sizeof small);
    const char *text = "[bogus]\n";
    assert_int_equal(gw_config_parse(text, strlen(text), "t.conf", &cfg, small, sizeof small), -1);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_int_equal(strncmp(small, "t.conf:1: [", sizeof small - 1), 0);
    /* No buffer at all is fine. */
    assert_int_equal(gw_config_parse(text, strlen(text), "t.conf", &cfg, NULL, 0), -1);
}

static void test_hostport(void **state)
{
    (void)state;
    gw_hostport hp;
    assert_int_equal(gw_parse_hostport("192.0.2.1:21", &hp), 0);
    assert_string_equal(hp.host, "192.0.2.1");
    assert_int_equal(hp.port, 21);
    assert_int_equal(gw_parse_hostport("[fe80::1]:65535", &hp), 0);
    assert_string_equal(hp.host, "fe80::1");
    assert_int_equal(hp.port, 65535);
    assert_int_equal(gw_parse_hostport("ftp-1.example_corp.net.:2121", &hp), 0);
    assert_string_equal(hp.host, "ftp-1.example_corp.net.");
    assert_int_equal(gw_parse_hostport("::1:21", &hp), -1);
    assert_int_equal(gw_parse_hostport("[192.0.2.1]:21", &hp), -1);
    assert_int_equal(gw_parse_hostport("256.1.1.1:21", &hp), -1);
    assert_int_equal(gw_parse_hostport("h:", &hp), -1);
    assert_int_equal(gw_parse_hostport("", &hp), -1);
    assert_int_equal(gw_parse_hostport(NULL, &hp), -1);
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "[frontend a]\nlisten = 127.0.0.1:990\n[backend b]\naddress = h:21\nx = 1\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(gw_config_load_file(path, &cfg, err, sizeof err), -1);
    char want[128];
    snprintf(want, sizeof want, "%s:5: [backend b] x: unknown key", path);
    assert_string_equal(err, want);
    unlink(path);

    assert_int_equal(gw_config_load_file("/nonexistent/ftpsgate.conf", &cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/ftpsgate.conf:0: cannot read"));
}

/* Load one sample; its error is printed when it does not parse. */
static int load_sample(const char *path)
{
    int r = gw_config_load_file(path, &cfg, err, sizeof err);
    if (r != 0)
        print_error("%s\n", err);
    return r;
}

/* The samples shipped in config/ parse today. */
static void test_sample_files(void **state)
{
    (void)state;
    if (access("config/ftpsgate.conf", R_OK) != 0)
        skip();
    assert_int_equal(load_sample("config/ftpsgate.conf"), 0);
    gw_config_free(&cfg);
    assert_int_equal(load_sample("config/minimal.conf"), 0);
    assert_int_equal(cfg.n_frontends, 1);
    assert_int_equal(cfg.n_backends, 1);
    gw_config_free(&cfg);
    assert_int_equal(load_sample("config/three-backends.conf"), 0);
    assert_int_equal(cfg.frontends[0].n_backends, 3);
    assert_int_equal(cfg.backends[0].weight, 3);
    assert_int_equal(cfg.backends[2].max_sessions, 20);
    gw_config_free(&cfg);
}

/* The spelling of TLS versions (the weak-TLS warning in main.c names them). */
static void test_tls_version_name(void **state)
{
    (void)state;
    assert_string_equal(gw_tls_version_name(GW_TLS_1_0), "TLSv1");
    assert_string_equal(gw_tls_version_name(GW_TLS_1_1), "TLSv1.1");
    assert_string_equal(gw_tls_version_name(GW_TLS_1_3), "TLSv1.3");
    assert_string_equal(gw_tls_version_name(GW_TLS_ANY), "");
}

/* Where keys were set, for problems found after parsing (-t, a reload). */
static void test_where(void **state)
{
    (void)state;
    char at[GW_PATH_MAX + 128];
    assert_int_equal(parse("[global]\nxferlog = /x\n[tls]\nkey = /k\ncert = /c\n"
                           "[frontend a]\nlisten = 127.0.0.1:990\n"
                           "[frontend b]\nlisten = 127.0.0.1:991\nkey = /kb\ncert = /cb\n" BE),
                     0);
    gw_config_where(&cfg, "global", 0, "xferlog", at, sizeof at);
    assert_string_equal(at, "t.conf:2: [global] xferlog");
    gw_config_where(&cfg, "frontend", 1, "key", at, sizeof at);
    assert_string_equal(at, "t.conf:10: [frontend b] key");
    /* a frontend without its own key inherits [tls]'s: that line is named */
    gw_config_where(&cfg, "frontend", 0, "key", at, sizeof at);
    assert_string_equal(at, "t.conf:4: [tls] key");
    /* a key set nowhere: the section's header */
    gw_config_where(&cfg, "frontend", 0, "pasv_address", at, sizeof at);
    assert_string_equal(at, "t.conf:6: [frontend a] pasv_address");
    gw_config_where(&cfg, "backend", 0, "address", at, sizeof at);
    assert_string_equal(at, "t.conf:13: [backend b] address");
    gw_config_where(&cfg, "backend", 0, NULL, at, sizeof at);
    assert_string_equal(at, "t.conf:12: [backend b]");
    gw_config copy;
    assert_int_equal(gw_config_copy(&copy, &cfg), 0);
    assert_null(copy.lines); /* copies do not carry the lines */
    gw_config_where(&copy, "global", 0, "xferlog", at, sizeof at);
    assert_string_equal(at, "<config>:0: [global] xferlog");
    gw_config_free(&copy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_parses),
        cmocka_unit_test(test_many_sections),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_splice),
        cmocka_unit_test(test_prelogin_keys),
        cmocka_unit_test(test_rate_keys),
        cmocka_unit_test(test_proxy_protocol_keys),
        cmocka_unit_test(test_admin_listen),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_bad_number),
        cmocka_unit_test(test_out_of_range),
        cmocka_unit_test(test_bad_port_range),
        cmocka_unit_test(test_bad_address),
        cmocka_unit_test(test_shared_port),
        cmocka_unit_test(test_unknown_backend),
        cmocka_unit_test(test_spellings),
        cmocka_unit_test(test_each_check_stops_the_parse),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_duplicate_section),
        cmocka_unit_test(test_comments),
        cmocka_unit_test(test_comment_needs_blank),
        cmocka_unit_test(test_ipv6_listen),
        cmocka_unit_test(test_duplicate_listen),
        cmocka_unit_test(test_server_name),
        cmocka_unit_test(test_tls_policy_overrides),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_line_endings_and_bom),
        cmocka_unit_test(test_small_error_buffer),
        cmocka_unit_test(test_hostport),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_sample_files),
        cmocka_unit_test(test_tls_version_name),
        cmocka_unit_test(test_where),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
