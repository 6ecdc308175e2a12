/* Admin endpoint text: see admin_text.h. */
#include "admin_text.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool sbuf_grow(gw_sbuf *b, size_t more)
{
    if (b->oom)
        return false;
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more + 1) {
        if (cap > ((size_t)1 << 30)) {
            b->oom = true;
            return false;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void gw_sbuf_add(gw_sbuf *b, const char *s, size_t n)
{
    if (!sbuf_grow(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void gw_sbuf_str(gw_sbuf *b, const char *s)
{
    gw_sbuf_add(b, s, strlen(s));
}

void gw_sbuf_printf(gw_sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !sbuf_grow(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void gw_sbuf_json(gw_sbuf *b, const char *s)
{
    gw_sbuf_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            gw_sbuf_add(b, esc, 2);
        } else if (*p < 0x20 || *p >= 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            gw_sbuf_add(b, esc, 6);
        } else {
            gw_sbuf_add(b, (const char *)p, 1);
        }
    }
    gw_sbuf_add(b, "\"", 1);
}

void gw_sbuf_html(gw_sbuf *b, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '&':
            gw_sbuf_str(b, "&amp;");
            break;
        case '<':
            gw_sbuf_str(b, "&lt;");
            break;
        case '>':
            gw_sbuf_str(b, "&gt;");
            break;
        case '"':
            gw_sbuf_str(b, "&quot;");
            break;
        case '\'':
            gw_sbuf_str(b, "&#39;");
            break;
        default:
            /* SECURITY: client input (user, file names) never carries markup or controls. */
            if (*p < 0x20 || *p == 0x7f)
                gw_sbuf_add(b, "?", 1);
            else
                gw_sbuf_add(b, (const char *)p, 1);
        }
    }
}

void gw_sbuf_label(gw_sbuf *b, const char *s)
{
    for (const char *p = s; *p; p++) {
        if (*p == '\\')
            gw_sbuf_add(b, "\\\\", 2);
        else if (*p == '"')
            gw_sbuf_add(b, "\\\"", 2);
        else if (*p == '\n')
            gw_sbuf_add(b, "\\n", 2);
        else
            gw_sbuf_add(b, p, 1);
    }
}

void gw_sbuf_free(gw_sbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

enum gw_admin_route gw_admin_route(const char *path, uint64_t *id)
{
    static const struct {
        const char *path;
        enum gw_admin_route route;
    } fixed[] = {
        {"/", GW_ADMIN_ROOT},
        {"/metrics", GW_ADMIN_METRICS},
        {"/healthz", GW_ADMIN_HEALTHZ},
        {"/readyz", GW_ADMIN_READYZ},
        {"/sessions", GW_ADMIN_SESSIONS},
    };
    if (!path || path[0] != '/')
        return GW_ADMIN_BAD;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (strcmp(path, fixed[i].path) == 0)
            return fixed[i].route;
    static const char prefix[] = "/sessions/";
    if (strncmp(path, "/backends/", 10) == 0) {
        char name[64];
        return gw_admin_backend_name(path, name, sizeof name) == 0 ? GW_ADMIN_BACKEND_STATE
                                                                   : GW_ADMIN_BAD;
    }
    if (strncmp(path, prefix, sizeof prefix - 1) != 0)
        return GW_ADMIN_NOT_FOUND;
    const char *d = path + sizeof prefix - 1;
    size_t n = strspn(d, "0123456789");
    /* SECURITY: a bounded number, nothing after it (no overflow, no traversal). */
    if (n == 0 || n > 19 || d[n] != '\0' || (d[0] == '0' && n > 1))
        return GW_ADMIN_BAD;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (uint64_t)(d[i] - '0');
    *id = v;
    return GW_ADMIN_SESSION;
}

int gw_admin_backend_name(const char *path, char *name, size_t cap)
{
    static const char prefix[] = "/backends/", suffix[] = "/state";
    if (!path || strncmp(path, prefix, sizeof prefix - 1) != 0)
        return -1;
    const char *p = path + sizeof prefix - 1;
    size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-");
    /* SECURITY: a section name and nothing else ("..", "/", "%2F" never pass). */
    if (n == 0 || n >= cap || strcmp(p + n, suffix) != 0 || strspn(p, ".") == n)
        return -1;
    memcpy(name, p, n);
    name[n] = 0;
    return 0;
}

const char *gw_be_admin_name(enum gw_be_admin s)
{
    static const char *const names[GW_BE_ADMIN_STATES] = {"ready", "drain", "maint"};
    return (unsigned)s < GW_BE_ADMIN_STATES ? names[s] : "ready";
}

static size_t skip_ws(const char *b, size_t len, size_t i)
{
    while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n'))
        i++;
    return i;
}

/* A JSON string without escapes at b[i] (the names and values wanted here have none). */
static bool json_word(const char *b, size_t len, size_t *i, const char **w, size_t *wl)
{
    if (*i >= len || b[*i] != '"')
        return false;
    size_t s = ++*i;
    while (*i < len && b[*i] != '"' && b[*i] != '\\' && (unsigned char)b[*i] >= 0x20)
        ++*i;
    if (*i >= len || b[*i] != '"')
        return false;
    *w = b + s;
    *wl = *i - s;
    ++*i;
    return true;
}

int gw_admin_parse_state(const char *body, size_t len)
{
    const char *k, *v;
    size_t kl, vl, i = skip_ws(body, len, 0);
    if (!body || i >= len || body[i++] != '{')
        return -1;
    i = skip_ws(body, len, i);
    if (!json_word(body, len, &i, &k, &kl) || kl != 5 || memcmp(k, "state", 5) != 0)
        return -1;
    i = skip_ws(body, len, i);
    if (i >= len || body[i++] != ':')
        return -1;
    i = skip_ws(body, len, i);
    if (!json_word(body, len, &i, &v, &vl))
        return -1;
    i = skip_ws(body, len, i);
    if (i >= len || body[i++] != '}' || skip_ws(body, len, i) != len)
        return -1;
    for (int s = 0; s < GW_BE_ADMIN_STATES; s++) {
        const char *name = gw_be_admin_name((enum gw_be_admin)s);
        if (strlen(name) == vl && memcmp(name, v, vl) == 0)
            return s;
    }
    return -1;
}
