/* libFuzzer target for proxy/ftp_reply.c. The first byte picks a split position; the rest is
 * fed whole, in two pieces and one byte at a time, and the three runs must agree, including
 * where each line ended. After INVALID/TOOLONG the parser is re-initialised and goes on. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ftp_reply.h"

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;

    while (n--)
        h = (h ^ *b++) * 0x100000001b3ULL;
    return h;
}

static bool starts_with_code(const char *s, int code)
{
    return s[0] == '0' + code / 100 && s[1] == '0' + code / 10 % 10 && s[2] == '0' + code % 10;
}

static void check_line(const gw_reply_parser *p)
{
    if (p->code < 100 || p->code > 599)
        abort();
    if (p->len < 2 || p->len > GW_REPLY_LINE_MAX + 2)
        abort();
    if (p->line[p->len] != '\0' || strlen(p->line) != p->len)
        abort();
    if (p->line[p->len - 2] != '\r' || p->line[p->len - 1] != '\n')
        abort();
    if (memchr(p->line, '\n', p->len - 1) != NULL)
        abort();
    if (p->in_multi == p->last)
        abort();
    if (p->first) {
        if (p->len < 5 || !starts_with_code(p->line, p->code))
            abort();
        if (p->line[3] != ' ' && p->line[3] != '-' && p->len != 5)
            abort();
        if (p->last != (p->line[3] != '-'))
            abort();
    } else if (p->last) {
        if (p->len < 6 || !starts_with_code(p->line, p->code) || p->line[3] != ' ')
            abort();
    }
}

/* Feed one piece; offsets are absolute so that runs with different pieces compare. */
static uint64_t feed(gw_reply_parser *p, const uint8_t *in, size_t n, size_t base, uint64_t h)
{
    size_t off = 0, used, at;
    int rc;

    do {
        rc = gw_reply_feed(p, in + off, n - off, &used);
        if (used > n - off)
            abort();
        off += used;
        at = base + off;
        if (rc == GW_REPLY_AGAIN) {
            if (off != n)
                abort();
            if (p->len > GW_REPLY_LINE_MAX + 1 || p->line[p->len] != '\0')
                abort();
            continue;
        }
        if (used == 0)
            abort();
        h = mix(h, &rc, sizeof(rc));
        h = mix(h, &at, sizeof(at));
        if (rc == GW_REPLY_LINE) {
            check_line(p);
            h = mix(h, &p->code, sizeof(p->code));
            h = mix(h, &p->first, 1);
            h = mix(h, &p->last, 1);
            h = mix(h, p->line, p->len);
        } else if (rc == GW_REPLY_INVALID || rc == GW_REPLY_TOOLONG) {
            gw_reply_free(p); /* the reset: as gw_reply_init leaves it */
        } else {
            abort();
        }
    } while (off < n);
    return h;
}

static uint64_t run(const uint8_t *in, size_t n, size_t step, size_t split)
{
    static gw_reply_parser p;
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t off;

    gw_reply_free(&p); /* the previous input's buffer; static: zeroed at first */
    if (step == 0) {
        h = feed(&p, in, split, 0, h);
        h = feed(&p, in + split, n - split, split, h);
    } else {
        for (off = 0; off < n; off += step)
            h = feed(&p, in + off, step < n - off ? step : n - off, off, h);
    }
    /* An empty call ends every run: it drops a returned line, as the next call would. */
    h = feed(&p, (const uint8_t *)"", 0, n, h);
    h = mix(h, &p.in_multi, 1);
    return mix(h, &p.len, sizeof(p.len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t whole;
    size_t n;

    if (size == 0)
        return 0;
    n = size - 1;
    whole = run(data + 1, n, n ? n : 1, 0);
    if (run(data + 1, n, 0, (size_t)data[0] * n / 255) != whole)
        abort();
    if (run(data + 1, n, 1, 0) != whole)
        abort();
    return 0;
}
