/* libFuzzer target for the admin endpoint's own parsing and escaping (proxy/admin_text.c,
 * proxy/timeline.c): libmicrohttpd parses HTTP itself; what ftpsgate parses is the request
 * path (/sessions/ID), and what it escapes is client input (user and file names) into JSON,
 * HTML and Prometheus labels. Checks: the router never accepts a path with anything after
 * the ID and parses the ID back exactly; JSON output has no raw control or non-ASCII byte and
 * balanced quotes; HTML output has no raw < > " '; a PASS argument never appears in a
 * timeline. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_text.h"
#include "timeline.h"

/* A backend route names a section and nothing else; a state body parses to a state whose
 * canonical body parses back the same. */
static void check_backend(const char *s, size_t size)
{
    char name[64];
    if (gw_admin_backend_name(s, name, sizeof name) == 0) {
        char back[96];
        snprintf(back, sizeof back, "/backends/%s/state", name);
        if (strcmp(back, s) != 0 || strstr(name, "/") || strcmp(name, "..") == 0)
            abort();
    }
    int st = gw_admin_parse_state(s, size);
    if (st >= 0) {
        char body[64];
        snprintf(body, sizeof body, "{\"state\":\"%s\"}", gw_be_admin_name(st));
        if (gw_admin_parse_state(body, strlen(body)) != st || !strstr(s, gw_be_admin_name(st)))
            abort();
    }
}

static void check_route(const char *s)
{
    uint64_t id = 0;
    enum gw_admin_route r = gw_admin_route(s, &id);
    if (r == GW_ADMIN_SESSION) {
        char back[48];
        snprintf(back, sizeof back, "/sessions/%llu", (unsigned long long)id);
        if (strcmp(back, s) != 0)
            abort();
    }
}

static void check_json(const char *s)
{
    gw_sbuf b = {0};
    gw_sbuf_json(&b, s);
    if (b.oom)
        return;
    if (b.len < 2 || b.p[0] != '"' || b.p[b.len - 1] != '"')
        abort();
    for (size_t i = 1; i + 1 < b.len; i++) {
        unsigned char c = (unsigned char)b.p[i];
        if (c < 0x20 || c >= 0x7f)
            abort();
        if (c == '\\') {
            i++; /* the escaped character */
            continue;
        }
        if (c == '"')
            abort();
    }
    gw_sbuf_free(&b);
}

static void check_html(const char *s)
{
    gw_sbuf b = {0};
    gw_sbuf_html(&b, s);
    if (b.p && strpbrk(b.p, "<>\"'"))
        abort();
    gw_sbuf_free(&b);
    gw_sbuf_label(&b, s);
    for (size_t i = 0; b.p && i < b.len; i++) {
        if (b.p[i] == '\n')
            abort();
        if (b.p[i] == '\\')
            i++;
        else if (b.p[i] == '"')
            abort();
    }
    gw_sbuf_free(&b);
}

static void check_timeline(const char *s)
{
    static gw_timeline t;
    static const char secret[] = "S3cr3tPa55";
    char arg[128];
    memset(&t, 0, sizeof t); /* a ring per input: an earlier input may hold the secret */
    snprintf(arg, sizeof arg, "%.40s%s", s, secret);
    gw_tl_command(&t, "PASS", arg);
    gw_tl_command(&t, "STOR", s);
    gw_tl_add(&t, GW_TL_REPLY_FAILED, "%s", s);
    gw_sess_states st = {0};
    snprintf(st.transfer, sizeof st.transfer, "%s", s); /* the states are JSON-escaped too */
    gw_sbuf b = {0};
    gw_tl_json(&t, 1, &st, &b);
    if (b.p && !b.oom && strstr(b.p, secret) && !strstr(s, secret))
        abort();
    gw_sbuf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    check_route(s);
    check_backend(s, size);
    check_json(s);
    check_html(s);
    check_timeline(s);
    free(s);
    return 0;
}
