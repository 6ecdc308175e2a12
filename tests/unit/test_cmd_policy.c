/* proxy/cmd_policy.c and the configuration keys it reads: [policy NAME] sections, the
 * frontend's auth, auth_file and policy, with their errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "cmd_policy.h"
#include "config.h"

#define BASE                                                                                       \
    "[backend b]\naddress = 127.0.0.1:2121\n"                                                      \
    "[frontend f]\nlisten = 127.0.0.1:2100\nmode = plain\n"

static int parse(const char *text, gw_config *cfg, char *err, size_t cap)
{
    return gw_config_parse(text, strlen(text), "t.conf", cfg, err, cap);
}

static void test_read_only(void **state)
{
    gw_policy_conf p = {.read_only = true};
    static const char *const writes[] = {"STOR", "APPE", "STOU", "DELE", "RMD",  "XRMD",
                                         "MKD",  "XMKD", "RNFR", "RNTO", "SITE", "stor"};
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++)
        assert_false(gw_policy_allows(&p, writes[i]));
    static const char *const reads[] = {"RETR", "LIST", "NLST", "MLSD", "SIZE", "MDTM",
                                        "CWD",  "PWD",  "TYPE", "PASV", "STAT", "retr"};
    for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++)
        assert_true(gw_policy_allows(&p, reads[i]));
    assert_true(gw_policy_allows(NULL, "DELE"));
    gw_policy_conf none = {0};
    assert_true(gw_policy_allows(&none, "DELE"));
    (void)state;
}

static void test_deny_and_allow(void **state)
{
    gw_policy_conf d = {0};
    snprintf(d.deny, sizeof d.deny, "DELE SITE");
    assert_false(gw_policy_allows(&d, "DELE"));
    assert_false(gw_policy_allows(&d, "site"));
    assert_true(gw_policy_allows(&d, "STOR"));
    assert_true(gw_policy_allows(&d, "DEL")); /* a word, not a prefix */
    gw_policy_conf a = {0};
    snprintf(a.allow, sizeof a.allow, "RETR LIST");
    assert_true(gw_policy_allows(&a, "RETR"));
    assert_true(gw_policy_allows(&a, "LIST"));
    assert_false(gw_policy_allows(&a, "NLST"));
    assert_false(gw_policy_allows(&a, "STOR"));
    assert_false(gw_policy_allows(&a, "SIZE"));
    /* the session verbs stay allowed under a whitelist */
    static const char *const session[] = {"USER", "PASS", "PWD",  "CWD",  "CDUP", "TYPE", "PASV",
                                          "EPSV", "PORT", "EPRT", "REST", "ABOR", "QUIT", "NOOP",
                                          "FEAT", "SYST", "OPTS", "MODE", "STRU"};
    for (size_t i = 0; i < sizeof session / sizeof session[0]; i++)
        assert_true(gw_policy_allows(&a, session[i]));
    /* deny wins over allow */
    snprintf(a.deny, sizeof a.deny, "RETR");
    assert_false(gw_policy_allows(&a, "RETR"));
    (void)state;
}

static void test_config_sections(void **state)
{
    gw_config cfg;
    char err[512];
    const char *text = BASE "auth = file\nauth_file = /etc/ftpsgate/users\npolicy = ro\n"
                            "[policy ro]\nread_only = yes\n"
                            "[policy partners]\nallow = retr, list  nlst\ndeny = size\n"
                            "users = carol @partners\n";
    if (parse(text, &cfg, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(cfg.n_policies, 2);
    const gw_frontend_conf *f = &cfg.frontends[0];
    assert_int_equal(f->auth, GW_AUTH_FILE);
    assert_string_equal(f->auth_file, "/etc/ftpsgate/users");
    assert_int_equal(f->policy_index, 0);
    assert_true(cfg.policies[0].read_only);
    assert_string_equal(cfg.policies[1].allow, "RETR LIST NLST");
    assert_string_equal(cfg.policies[1].deny, "SIZE");
    /* selection: own policy, then users/@groups, then the frontend's */
    assert_int_equal(gw_policy_select(&cfg, 0, "alice", "", NULL), 0);
    assert_int_equal(gw_policy_select(&cfg, 0, "carol", "", NULL), 1);
    assert_int_equal(gw_policy_select(&cfg, 0, "Carol", "", NULL), 0);
    assert_int_equal(gw_policy_select(&cfg, 0, "dave", "staff partners", NULL), 1);
    assert_int_equal(gw_policy_select(&cfg, 0, "dave", "partner", NULL), 0);
    assert_int_equal(gw_policy_select(&cfg, -1, "dave", "", NULL), -1);
    assert_int_equal(gw_policy_select(&cfg, -1, "carol", "", "ro"), 0);
    char where[256];
    gw_config_where(&cfg, "policy", 1, "users", where, sizeof where);
    assert_string_equal(where, "t.conf:14: [policy partners] users");
    gw_config copy;
    assert_int_equal(gw_config_copy(&copy, &cfg), 0);
    assert_int_equal(copy.n_policies, 2);
    assert_string_equal(copy.policies[1].name, "partners");
    gw_config_free(&copy);
    gw_config_free(&cfg);
    /* the default: the backend checks, no policy */
    assert_int_equal(parse(BASE, &cfg, err, sizeof err), 0);
    assert_int_equal(cfg.frontends[0].auth, GW_AUTH_BACKEND);
    assert_int_equal(cfg.frontends[0].policy_index, -1);
    assert_int_equal(cfg.n_policies, 0);
    gw_config_free(&cfg);
    (void)state;
}

static void expect_error(const char *text, const char *want)
{
    gw_config cfg;
    char err[512];
    assert_int_equal(parse(text, &cfg, err, sizeof err), -1);
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not contain \"%s\"", err, want);
}

static void test_config_errors(void **state)
{
    expect_error(BASE "auth = ldap\n", "t.conf:6: [frontend f] auth: ldap needs ldap_uri");
    expect_error(BASE "auth = kerberos\n", "\"kerberos\": expected backend | file | pam | ldap");
    expect_error(BASE "auth = pam\npam_service = ../x\n",
                 "t.conf:7: [frontend f] pam_service: \"../x\": not a PAM service name");
    expect_error(BASE "auth = file\n", "t.conf:6: [frontend f] auth: file needs auth_file");
    expect_error(BASE "auth = file\nauth_file = /x\nroute_user = yes\n",
                 "t.conf:8: [frontend f] route_user: not with auth = file, pam or ldap");
    expect_error(BASE "auth_file = /x\n", "[frontend f] auth_file: set without auth = file");
    expect_error(BASE "policy = nope\n", "t.conf:6: [frontend f] policy: no [policy nope] section");
    expect_error(BASE "[policy p]\ndeny = DELETE\n",
                 "t.conf:7: [policy p] deny: \"DELETE\": not an");
    expect_error(BASE "[policy p]\nallow = RE7R\n", "[policy p] allow: \"RE7R\": not an FTP verb");
    expect_error(BASE "[policy p]\nread_only = maybe\n", "[policy p] read_only:");
    expect_error(BASE "[policy p]\n[policy p]\n", "t.conf:7: [policy p]: duplicate section");
    expect_error(BASE "[policy p]\nlisten = 1.2.3.4:5\n", "[policy p] listen: unknown key");
    expect_error(BASE "[policy a/b]\nread_only = yes\n",
                 "t.conf:6: [policy a/b]: invalid section name");
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_only),
        cmocka_unit_test(test_deny_and_allow),
        cmocka_unit_test(test_config_sections),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
