/* libFuzzer target for proxy/ftp_cmd.c. The first byte picks a split position; the rest is
 * fed whole, in two pieces and one byte at a time, and the three runs must agree. Every
 * line is checked, split into verb/argument (looked up in the command table), formatted
 * and parsed back. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ftp_cmd.h"

struct result {
    uint64_t events; /* lines, TOOLONGs, got_ip, in order */
    uint64_t tn;     /* Telnet refusals, in order */
    bool tn_full;    /* a refusal may have been dropped: tn depends on the piece sizes */
};

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;

    while (n--)
        h = (h ^ *b++) * 0x100000001b3ULL;
    return h;
}

static void check_format_roundtrip(const gw_cmd_parser *p)
{
    static char out[2 * GW_CMD_LINE_MAX + 3];
    static gw_cmd_parser q;
    size_t n, used;

    n = gw_cmd_format(out, sizeof(out), p->line);
    if (n < 2 || n > sizeof(out) - 1 || out[n] != '\0')
        abort();
    if (gw_cmd_format(out, n, p->line) != 0)
        abort(); /* no room for the NUL */
    n = gw_cmd_format(out, sizeof(out), p->line);

    gw_cmd_free(&q); /* the previous round's buffer; static: zeroed at first */
    if (gw_cmd_feed(&q, (const uint8_t *)out, n, &used) != GW_CMD_LINE)
        abort();
    if (used != n || q.len != p->len || memcmp(q.line, p->line, p->len + 1) != 0)
        abort();
    if (q.tn_reply_len != 0 || q.got_ip)
        abort();
}

static void check_split(const gw_cmd_parser *p)
{
    gw_cmd c;
    size_t i;

    if (gw_cmd_split(p->line, &c) != 0)
        return;
    for (i = 0; c.verb[i] != '\0'; i++)
        if (i >= 7 || c.verb[i] < 'A' || c.verb[i] > 'Z')
            abort();
    if (i == 0 || c.arg < p->line || c.arg > p->line + p->len)
        abort();
    if (c.arg != p->line + p->len && c.arg != p->line + i + 1)
        abort();
    /* The table entry: never NULL, the same as a fresh lookup, and a hit names this verb. */
    if (c.def == NULL || c.def != gw_cmd_lookup(c.verb))
        abort();
    if (c.def->id == GW_CMD_OTHER ? c.def->flags != 0 : strcmp(c.def->verb, c.verb) != 0)
        abort();
    if ((c.def->flags & GW_CMDF_UPLOAD) && !(c.def->flags & GW_CMDF_TRANSFER))
        abort();
    /* Lookups on raw line text must be safe too (any bytes, any length). */
    if (gw_cmd_lookup(p->line) == NULL)
        abort();
}

static void check_parser(const gw_cmd_parser *p, int rc)
{
    size_t i;

    if (p->len > GW_CMD_LINE_MAX || p->line[p->len] != '\0')
        abort();
    if (p->tn_reply_len > sizeof(p->tn_reply) || p->tn_reply_len % 3 != 0)
        abort();
    for (i = 0; i < p->tn_reply_len; i += 3)
        if (p->tn_reply[i] != 0xff || (p->tn_reply[i + 1] != 0xfc && p->tn_reply[i + 1] != 0xfe))
            abort();
    if (rc == GW_CMD_AGAIN)
        return;
    if (strlen(p->line) != p->len)
        abort(); /* no NUL inside */
    if (memchr(p->line, '\r', p->len) || memchr(p->line, '\n', p->len))
        abort();
    if (rc == GW_CMD_TOOLONG && p->len != 0)
        abort();
}

static void feed(gw_cmd_parser *p, const uint8_t *in, size_t n, struct result *r)
{
    size_t off = 0, used;
    int rc;

    do {
        rc = gw_cmd_feed(p, in + off, n - off, &used);
        if (used > n - off)
            abort();
        off += used;
        check_parser(p, rc);

        if (p->tn_reply_len + 3 > sizeof(p->tn_reply))
            r->tn_full = true;
        r->tn = mix(r->tn, p->tn_reply, p->tn_reply_len);
        p->tn_reply_len = 0;

        if (rc == GW_CMD_LINE) {
            check_split(p);
            check_format_roundtrip(p);
            r->events = mix(r->events, "L", 1);
            r->events = mix(r->events, &p->len, sizeof(p->len));
            r->events = mix(r->events, p->line, p->len);
        } else if (rc == GW_CMD_TOOLONG) {
            r->events = mix(r->events, "T", 1);
        } else if (rc != GW_CMD_AGAIN || off != n) {
            abort();
        }
        if (rc != GW_CMD_AGAIN) {
            r->events = mix(r->events, &p->got_ip, 1);
            p->got_ip = false;
        }
    } while (off < n);
}

static void run(const uint8_t *in, size_t n, size_t step, size_t split, struct result *r)
{
    static gw_cmd_parser p;
    size_t off;

    memset(r, 0, sizeof(*r));
    r->events = r->tn = 0xcbf29ce484222325ULL;
    gw_cmd_free(&p); /* the previous input's buffer; static: zeroed at first */
    if (step == 0) {
        feed(&p, in, split, r);
        feed(&p, in + split, n - split, r);
    } else {
        for (off = 0; off < n; off += step)
            feed(&p, in + off, step < n - off ? step : n - off, r);
    }
    /* An empty call ends every run: it drops a returned line, as the next call would. */
    feed(&p, (const uint8_t *)"", 0, r);
    r->events = mix(r->events, &p.got_ip, 1);
    r->events = mix(r->events, &p.len, sizeof(p.len));
}

static void same(const struct result *a, const struct result *b)
{
    if (a->events != b->events)
        abort();
    if (!a->tn_full && !b->tn_full && a->tn != b->tn)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct result whole, split, bytes;
    size_t n;

    if (size == 0)
        return 0;
    n = size - 1;
    run(data + 1, n, n ? n : 1, 0, &whole);
    run(data + 1, n, 0, (size_t)data[0] * n / 255, &split);
    run(data + 1, n, 1, 0, &bytes);
    same(&whole, &split);
    same(&whole, &bytes);
    return 0;
}
