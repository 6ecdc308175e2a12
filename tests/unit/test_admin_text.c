/* Unit tests for the admin endpoint's pure parts: escaping, the path router, the session
 * timeline ring (PASS masked), the /sessions summary and the Prometheus exposition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "admin_text.h"
#include "metrics.h"
#include "timeline.h"

static void test_json_escape(void **state)
{
    (void)state;
    gw_sbuf b = {0};
    gw_sbuf_json(&b, "a\"b\\c\n\x01\xc3\xa9</script>");
    assert_string_equal(b.p, "\"a\\\"b\\\\c\\u000a\\u0001\\u00c3\\u00a9</script>\"");
    gw_sbuf_free(&b);
}

static void test_html_escape(void **state)
{
    (void)state;
    gw_sbuf b = {0};
    gw_sbuf_html(&b, "<img src=x onerror='a'>&\"\r");
    assert_string_equal(b.p, "&lt;img src=x onerror=&#39;a&#39;&gt;&amp;&quot;?");
    gw_sbuf_free(&b);
}

static void test_label_escape(void **state)
{
    (void)state;
    gw_sbuf b = {0};
    gw_sbuf_label(&b, "a\"b\\c\nd");
    assert_string_equal(b.p, "a\\\"b\\\\c\\nd");
    gw_sbuf_free(&b);
}

static void test_routes(void **state)
{
    (void)state;
    uint64_t id = 0;
    assert_int_equal(gw_admin_route("/", &id), GW_ADMIN_ROOT);
    assert_int_equal(gw_admin_route("/metrics", &id), GW_ADMIN_METRICS);
    assert_int_equal(gw_admin_route("/healthz", &id), GW_ADMIN_HEALTHZ);
    assert_int_equal(gw_admin_route("/readyz", &id), GW_ADMIN_READYZ);
    assert_int_equal(gw_admin_route("/sessions", &id), GW_ADMIN_SESSIONS);
    assert_int_equal(gw_admin_route("/sessions/17", &id), GW_ADMIN_SESSION);
    assert_int_equal(id, 17);
    assert_int_equal(gw_admin_route("/sessions/18446744073709551615", &id), GW_ADMIN_BAD);
    assert_int_equal(gw_admin_route("/sessions/9999999999999999999", &id), GW_ADMIN_SESSION);
    assert_int_equal(gw_admin_route("/sessions/", &id), GW_ADMIN_BAD);
    assert_int_equal(gw_admin_route("/sessions/-1", &id), GW_ADMIN_BAD);
    assert_int_equal(gw_admin_route("/sessions/01", &id), GW_ADMIN_BAD);
    assert_int_equal(gw_admin_route("/sessions/1/..", &id), GW_ADMIN_BAD);
    assert_int_equal(gw_admin_route("/metrics/", &id), GW_ADMIN_NOT_FOUND);
    assert_int_equal(gw_admin_route("metrics", &id), GW_ADMIN_BAD);
    assert_int_equal(gw_admin_route(NULL, &id), GW_ADMIN_BAD);
    char name[64];
    assert_int_equal(gw_admin_route("/backends/be-1.x_y/state", &id), GW_ADMIN_BACKEND_STATE);
    assert_int_equal(gw_admin_backend_name("/backends/be-1.x_y/state", name, sizeof name), 0);
    assert_string_equal(name, "be-1.x_y");
    static const char *const bad[] = {
        "/backends/",        "/backends//state",     "/backends/../state",
        "/backends/./state", "/backends/a/b/state",  "/backends/a/state/",
        "/backends/a",       "/backends/a%20/state", "/backends/a/State"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(gw_admin_route(bad[i], &id), GW_ADMIN_BAD);
        assert_int_equal(gw_admin_backend_name(bad[i], name, sizeof name), -1);
    }
    assert_int_equal(gw_admin_backend_name("/backends/abcdef/state", name, 6), -1); /* too long */
    assert_int_equal(gw_admin_route("/backends", &id), GW_ADMIN_NOT_FOUND);
}

static void test_state_body(void **state)
{
    (void)state;
#define P(s) gw_admin_parse_state(s, strlen(s))
    assert_int_equal(P("{\"state\":\"drain\"}"), GW_BE_ADMIN_DRAIN);
    assert_int_equal(P(" {\n \"state\" : \"maint\" }\n"), GW_BE_ADMIN_MAINT);
    assert_int_equal(P("{\"state\":\"ready\"}"), GW_BE_ADMIN_READY);
    assert_int_equal(P("{\"state\":\"down\"}"), -1);
    assert_int_equal(P("{\"state\":\"drain\",\"x\":1}"), -1);
    assert_int_equal(P("{\"state\":\"drain\"}x"), -1);
    assert_int_equal(P("{\"State\":\"drain\"}"), -1);
    assert_int_equal(P("{\"state\":\"dr\\u0061in\"}"), -1);
    assert_int_equal(P("{\"state\":drain}"), -1);
    assert_int_equal(P("{\"state\":\"drain\""), -1);
    assert_int_equal(P(""), -1);
    assert_int_equal(gw_admin_parse_state("{\"state\":\"drain\"}", 10), -1); /* cut */
#undef P
    assert_string_equal(gw_be_admin_name(GW_BE_ADMIN_MAINT), "maint");
}

static void test_timeline_masks_pass_and_wraps(void **state)
{
    (void)state;
    gw_timeline *t = calloc(1, sizeof *t);
    gw_tl_command(t, "USER", "alice");
    gw_tl_command(t, "PASS", "hunter2");
    gw_tl_command(t, "pass", "hunter2");
    gw_tl_command(t, "ACCT", "hunter2");
    gw_sbuf b = {0};
    gw_tl_json(t, 5, NULL, &b);
    assert_null(strstr(b.p, "hunter2"));
    assert_non_null(strstr(b.p, "\"USER alice\""));
    assert_non_null(strstr(b.p, "\"PASS ****\""));
    assert_non_null(strstr(b.p, "\"id\":5"));
    gw_sbuf_free(&b);
    for (int i = 0; i < 3 * GW_TL_EVENTS; i++)
        gw_tl_add(t, GW_TL_DATA, "event %d", i);
    gw_tl_json(t, 5, NULL, &b);
    assert_null(strstr(b.p, "USER"));         /* fell out of the ring */
    assert_non_null(strstr(b.p, "event 47")); /* the newest stays */
    assert_null(strstr(b.p, "\"event 31\""));
    assert_null(strstr(b.p, "\"state\""));
    gw_sbuf_free(&b);
    /* /sessions/ID: the session's states by name, before its events. */
    gw_sess_states st = {.client = "ready", .backend = "late_pbsz", .pending = "setup"};
    memset(st.transfer, 'x', sizeof st.transfer); /* not terminated: cut, never overread */
    gw_tl_json(t, 5, &st, &b);
    assert_non_null(strstr(b.p,
                           "{\"id\":5,\"state\":{\"client\":\"ready\",\"backend\":"
                           "\"late_pbsz\",\"pending\":\"setup\",\"transfer\":\"xxxxxxxxxxxxxxxx\"},"
                           "\"events_total\":"));
    gw_sbuf_free(&b);
    free(t);
}

static void test_summary_json(void **state)
{
    (void)state;
    gw_sess_summary s = {.id = 9, .age_s = 3, .idle_s = 1, .in_transfer = true, .bytes = 42};
    strcpy(s.frontend, "fe");
    strcpy(s.user, "bob\"<");
    strcpy(s.verb, "RETR");
    strcpy(s.file, "a\nb");
    gw_sbuf b = {0};
    gw_sess_summary_json(&s, &b);
    assert_string_equal(b.p, "{\"id\":9,\"worker\":0,\"frontend\":\"fe\",\"client\":\"\",\"user\":"
                             "\"bob\\\"<\",\"backend\":\"\",\"state\":\"\",\"tls\":\"\","
                             "\"age_seconds\":3,\"idle_seconds\":1,\"transfer\":{\"verb\":"
                             "\"RETR\",\"file\":\"a\\u000ab\",\"bytes\":42}}");
    gw_sbuf_free(&b);
}

static void test_exposition(void **state)
{
    (void)state;
    gw_metric_session_start("fe\"x");
    gw_metric_transfer(true, GW_M_XFER_OK, 1000, 20);
    gw_metric_backend_connect("be", true, 3);
    gw_metric_tls_conn("client", true, "TLSv1.3/TLS_AES_256_GCM_SHA384");
    gw_metric_tls_conn("probe", true, "TLSv1.3/x"); /* not counted */
    gw_metric_pasv(30000, 30009, 1);
    const char *fes[] = {"fe\"x", "other"}, *bes[] = {"be"};
    bool up[] = {true};
    gw_metrics_view v = {.n_frontends = 2,
                         .frontends = fes,
                         .n_backends = 1,
                         .backends = bes,
                         .backend_up = up,
                         .version = "1",
                         .openssl = "OpenSSL 3",
                         .libuv = "1.44",
                         .shared_port = true,
                         .shport_unmatched = 5};
    gw_sbuf b = {0};
    gw_metrics_render(&gw_metrics_g, &v, &b);
    assert_false(b.oom);
    assert_non_null(strstr(b.p, "ftpsgate_sessions_total{frontend=\"fe\\\"x\"} 1\n"));
    assert_non_null(strstr(b.p, "ftpsgate_sessions_total{frontend=\"other\"} 0\n"));
    assert_non_null(strstr(b.p, "ftpsgate_transfer_bytes_total{direction=\"upload\"} 1000\n"));
    assert_non_null(strstr(b.p, "ftpsgate_transfer_duration_seconds_bucket{le=\"0.1\"} 1\n"));
    assert_non_null(strstr(b.p, "ftpsgate_transfer_duration_seconds_count 1\n"));
    assert_non_null(strstr(b.p, "ftpsgate_backend_up{backend=\"be\"} 1\n"));
    assert_non_null(strstr(b.p, "ftpsgate_pasv_ports_in_use{range=\"30000-30009\"} 1\n"));
    assert_non_null(strstr(b.p, "side=\"client\",result=\"ok\",version=\"TLSv1.3\"} 1\n"));
    assert_non_null(strstr(b.p, "# TYPE ftpsgate_backend_connect_seconds histogram\n"));
    assert_non_null(strstr(b.p, "ftpsgate_shared_port_connections_total{match=\"unmatched\"} 5\n"));
    assert_non_null(strstr(b.p, "ftpsgate_build_info{version=\"1\",openssl=\"OpenSSL 3\","
                                "libuv=\"1.44\"} 1\n"));
    gw_sbuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_escape),  cmocka_unit_test(test_state_body),
        cmocka_unit_test(test_html_escape),  cmocka_unit_test(test_label_escape),
        cmocka_unit_test(test_routes),       cmocka_unit_test(test_timeline_masks_pass_and_wraps),
        cmocka_unit_test(test_summary_json), cmocka_unit_test(test_exposition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
