/* Text for the admin endpoint (pure: no libuv, no OpenSSL): a growable buffer, JSON, HTML and
 * Prometheus label escaping, and the request path router. Everything the admin endpoint
 * writes that came from a client (user names, file names, addresses) goes through an escaper
 * here. */
#ifndef GW_ADMIN_TEXT_H
#define GW_ADMIN_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer; on out of memory it stops growing and sets oom. */
typedef struct gw_sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} gw_sbuf;

void gw_sbuf_add(gw_sbuf *b, const char *s, size_t n);
void gw_sbuf_str(gw_sbuf *b, const char *s);
void gw_sbuf_printf(gw_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "s" as a JSON string (quotes included): control characters, quote and backslash escaped,
 * bytes >= 0x80 as \u00XX (the output is always valid JSON and ASCII). */
void gw_sbuf_json(gw_sbuf *b, const char *s);
/* s as HTML text or attribute value: & < > " ' escaped, control characters shown as '?'. */
void gw_sbuf_html(gw_sbuf *b, const char *s);
/* s as a Prometheus label value (without quotes): backslash, quote and newline escaped. */
void gw_sbuf_label(gw_sbuf *b, const char *s);
void gw_sbuf_free(gw_sbuf *b);

enum gw_admin_route {
    GW_ADMIN_NOT_FOUND,
    GW_ADMIN_BAD, /* a malformed path: 400 */
    GW_ADMIN_ROOT,
    GW_ADMIN_METRICS,
    GW_ADMIN_HEALTHZ,
    GW_ADMIN_READYZ,
    GW_ADMIN_SESSIONS,
    GW_ADMIN_SESSION,       /* /sessions/ID: *id set */
    GW_ADMIN_BACKEND_STATE, /* /backends/NAME/state: gw_admin_backend_name */
};

/* The route of a request path (no query string: libmicrohttpd strips it). /sessions/ID takes
 * 1 to 19 decimal digits (no sign, no leading zero), anything else after /sessions/ is BAD. */
enum gw_admin_route gw_admin_route(const char *path, uint64_t *id);
/* The NAME of a /backends/NAME/state path (a section name: letters, digits, '.', '-', '_';
 * 1 to cap-1 of them). 0, or -1 when path is no such route. */
int gw_admin_backend_name(const char *path, char *name, size_t cap);

/* A backend's runtime state, set through the admin endpoint (HAProxy's runtime API): ready
 * takes new sessions; drain: running sessions go on, no new ones; maint: no new ones, health
 * probes paused. */
enum gw_be_admin { GW_BE_ADMIN_READY, GW_BE_ADMIN_DRAIN, GW_BE_ADMIN_MAINT };
#define GW_BE_ADMIN_STATES 3
const char *gw_be_admin_name(enum gw_be_admin s);
/* The body of POST /backends/NAME/state: one JSON object {"state": "drain"|"maint"|"ready"}
 * (whitespace allowed, no other member). The state, or -1. */
int gw_admin_parse_state(const char *body, size_t len);

#endif
