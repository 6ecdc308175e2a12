/* Resumable FTP reply parser, one line per call, multi-line aware (RFC 959 §4.2).
 * Pure: libc only. The parser's position is the partial line itself (p->line, p->len) plus
 * p->in_multi and p->code, so input may arrive in any pieces. The line lives on the heap,
 * grown as it arrives: a parser per backend connection costs little while idle. */
#include "ftp_reply.h"

#include <stdlib.h>
#include <string.h>

void gw_reply_init(gw_reply_parser *p)
{
    memset(p, 0, sizeof(*p));
    p->line = (char *)"";
}

void gw_reply_free(gw_reply_parser *p)
{
    if (p->cap)
        free(p->line);
    gw_reply_init(p);
}

/* Room for need bytes at p->line (need <= GW_REPLY_LINE_MAX + 3): doubled from
 * GW_REPLY_LINE_MIN, so a long line costs a few reallocs, an idle parser little. */
static bool reserve(gw_reply_parser *p, size_t need)
{
    if (need <= p->cap)
        return true;
    size_t cap = p->cap ? p->cap : GW_REPLY_LINE_MIN;
    while (cap < need)
        cap *= 2;
    if (cap > GW_REPLY_LINE_MAX + 3)
        cap = GW_REPLY_LINE_MAX + 3;
    char *n = realloc(p->cap ? p->line : NULL, cap);
    if (!n)
        return false;
    if (!p->cap)
        n[0] = '\0';
    p->line = n;
    p->cap = cap;
    return true;
}

static bool is_reply_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Can the first len bytes of a reply's first line still become "ddd ", "ddd-" or "ddd\r\n"?
 * Checked as bytes arrive so that a peer speaking something else is caught at once. */
static bool start_prefix_ok(const char *s, size_t len)
{
    size_t i;

    if (len > 0 && (s[0] < '1' || s[0] > '5'))
        return false;
    for (i = 1; i < 3 && i < len; i++)
        if (!is_reply_digit(s[i]))
            return false;
    if (len > 3 && s[3] != ' ' && s[3] != '-' && s[3] != '\r')
        return false;
    if (len > 4 && s[3] == '\r')
        return false; /* only LF may follow "ddd\r" */
    return true;
}

/* A complete first line (text without CRLF): "ddd", "ddd ..." or "ddd-...". */
static bool start_ok(const char *s, size_t len)
{
    if (len < 3 || !start_prefix_ok(s, 3))
        return false;
    return len == 3 || s[3] == ' ' || s[3] == '-';
}

static int code_of(const char *s)
{
    return (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
}

/* LF seen: classify the line and finish it with CRLF. */
static int end_line(gw_reply_parser *p)
{
    size_t t = p->len;

    if (t > 0 && p->line[t - 1] == '\r')
        t--;
    if (!reserve(p, t + 3))
        return GW_REPLY_TOOLONG;

    if (!p->in_multi) {
        if (!start_ok(p->line, t))
            return GW_REPLY_INVALID;
        p->code = code_of(p->line);
        p->first = true;
        p->last = t == 3 || p->line[3] == ' ';
        p->in_multi = !p->last;
    } else {
        /* Only "ddd " with the same code ends a multi-line reply: middle lines may start
         * with digits, another code, or even "ddd-" or a bare "ddd". */
        p->first = false;
        p->last = t >= 4 && is_reply_digit(p->line[0]) && is_reply_digit(p->line[1]) &&
                  is_reply_digit(p->line[2]) && code_of(p->line) == p->code && p->line[3] == ' ';
        p->in_multi = !p->last;
    }

    p->line[t++] = '\r';
    p->line[t++] = '\n';
    p->line[t] = '\0';
    p->len = t;
    p->done = true;
    return GW_REPLY_LINE;
}

int gw_reply_feed(gw_reply_parser *p, const uint8_t *in, size_t n, size_t *used)
{
    size_t i;
    uint8_t ch;

    if (p->done) {
        p->done = false;
        p->first = false;
        p->last = false;
        p->len = 0;
        if (p->cap > GW_REPLY_LINE_KEEP) { /* a long line's buffer is not kept idle */
            free(p->line);
            p->line = (char *)"";
            p->cap = 0;
        } else if (p->cap) {
            p->line[0] = '\0';
        }
    }

    for (i = 0; i < n; i++) {
        ch = in[i];

        if (ch == '\n') {
            *used = i + 1;
            return end_line(p);
        }
        /* NUL is a Telnet no-op; dropping it keeps p->line a C string of length len. */
        if (ch == '\0')
            continue;

        /* SECURITY: the line is capped. One byte past the cap is allowed only because it
         * may be the CR of the CRLF, which is not counted. */
        if (p->len > GW_REPLY_LINE_MAX || (p->len == GW_REPLY_LINE_MAX && ch != '\r') ||
            !reserve(p, p->len + 2)) {
            *used = i + 1;
            return GW_REPLY_TOOLONG;
        }
        p->line[p->len++] = (char)ch;
        p->line[p->len] = '\0';

        if (!p->in_multi && p->len <= 5 && !start_prefix_ok(p->line, p->len)) {
            *used = i + 1;
            return GW_REPLY_INVALID;
        }
    }

    *used = n;
    return GW_REPLY_AGAIN;
}
