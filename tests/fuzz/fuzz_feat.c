/* libFuzzer target for proxy/feat.c. The first byte holds the options; the rest is the
 * backend's FEAT reply. The output must be a well-formed 211 reply that carries no backend
 * TLS or data-channel line, no duplicate and no control byte, and must not depend on cap
 * beyond fitting or not. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "feat.h"

static const char head[] = "211-Features:\r\n";
static const char end[] = "211 End\r\n";

static bool word_is(const char *s, size_t n, const char *w)
{
    size_t k = 0;

    while (k < n && s[k] != ' ')
        k++;
    return k == strlen(w) && strncasecmp(s, w, k) == 0;
}

/* Gateway lines come first; returns how many there are for these options. */
static size_t gateway_lines(const gw_feat_opts *o)
{
    return (o->tls ? 3 + (o->ccc ? 1 : 0) : 0) + 2;
}

static void check_output(const char *out, size_t n, const gw_feat_opts *o)
{
    static const char *const dropped[] = {"AUTH", "PBSZ", "PROT", "CCC",
                                          "CPSV", "SSCN", "EPSV", "EPRT"};
    const char *p, *eol, *q, *qe;
    size_t i, line = 0, len;

    if (strlen(out) != n || n < sizeof(head) - 1 + sizeof(end) - 1)
        abort();
    if (memcmp(out, head, sizeof(head) - 1) != 0)
        abort();
    if (memcmp(out + n - (sizeof(end) - 1), end, sizeof(end) - 1) != 0)
        abort();

    for (p = out + sizeof(head) - 1; p < out + n - (sizeof(end) - 1); p = eol + 1, line++) {
        eol = memchr(p, '\n', (size_t)(out + n - p));
        if (eol == NULL || eol - p < 3 || eol[-1] != '\r' || p[0] != ' ' || p[1] == ' ')
            abort();
        len = (size_t)(eol - p) - 2; /* without the space and CRLF */
        for (i = 1; i <= len; i++)
            if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] > 0x7e)
                abort();
        if (p[len] == ' ')
            abort(); /* trimmed */

        if (line < gateway_lines(o))
            continue;
        for (i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++)
            if (word_is(p + 1, len, dropped[i]))
                abort();
        /* no earlier backend line may be the same, ignoring case */
        for (q = out + sizeof(head) - 1, i = 0; q < p; q = qe + 1, i++) {
            qe = memchr(q, '\n', (size_t)(p - q));
            if (i >= gateway_lines(o) && qe - q == eol - p && strncasecmp(q, p, len + 1) == 0)
                abort();
        }
    }
    if (line < gateway_lines(o))
        abort();
    if (o->tls != (strstr(out, "\n AUTH TLS;SSL;\r\n") != NULL))
        abort();
    if ((o->tls && o->ccc) != (strstr(out, "\n CCC\r\n") != NULL))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_feat_opts o;
    const char *backend;
    size_t len, cap, n;
    char *out, *out2;

    if (size == 0)
        return 0;
    o.tls = data[0] & 1;
    o.ccc = data[0] & 2;
    backend = (const char *)data + 1;
    len = size - 1;

    /* each backend line of k bytes gives at most k + 3 bytes (" " and CRLF, LF dropped) */
    cap = 128 + 4 * len;
    out = malloc(cap);
    out2 = malloc(cap);
    if (out == NULL || out2 == NULL)
        abort();

    n = gw_feat_rewrite(backend, len, &o, out, cap);
    if (n == 0)
        abort();
    check_output(out, n, &o);

    /* exactly enough room works and gives the same bytes; one less fails cleanly */
    if (gw_feat_rewrite(backend, len, &o, out2, n + 1) != n || memcmp(out, out2, n + 1) != 0)
        abort();
    if (gw_feat_rewrite(backend, len, &o, out2, n) != 0 || out2[0] != '\0')
        abort();
    if (gw_feat_rewrite(backend, len, &o, out2, data[0] % (n + 1)) != 0)
        abort();

    free(out);
    free(out2);
    return 0;
}
