/* FEAT rewriting (RFC 2389, RFC 4217, MS-FTPS §3.2.5.5). Pure: libc only.
 * The gateway answers for the TLS and data-channel features of its own client leg; the
 * backend's other features pass through. */
#include "feat.h"

#include <string.h>
#include <strings.h>

/* Output being built; ok turns false once something did not fit. */
struct out {
    char *buf;
    size_t cap;
    size_t len;
    bool ok;
};

/* Backend features that would describe the backend leg, not the gateway's client leg. */
static const char *const dropped[] = {"AUTH", "PBSZ", "PROT", "CCC",
                                      "CPSV", "SSCN", "EPSV", "EPRT"};

static void put(struct out *o, const char *s, size_t n)
{
    if (!o->ok)
        return;
    if (o->cap - o->len <= n) { /* keep room for the NUL */
        o->ok = false;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void put_feature(struct out *o, const char *s, size_t n)
{
    put(o, " ", 1);
    put(o, s, n);
    put(o, "\r\n", 2);
}

static void put_str_feature(struct out *o, const char *s)
{
    put_feature(o, s, strlen(s));
}

static bool is_dropped(const char *s, size_t n)
{
    size_t i, w;

    for (w = 0; w < n && s[w] != ' '; w++)
        ;
    for (i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++)
        if (strlen(dropped[i]) == w && strncasecmp(s, dropped[i], w) == 0)
            return true;
    return false;
}

/* Already written among the backend features (from offset `from`), ignoring case? */
static bool is_duplicate(const struct out *o, size_t from, const char *s, size_t n)
{
    const char *p = o->buf + from, *end = o->buf + o->len, *eol;

    for (; p < end; p = eol + 1) {
        eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            break;
        /* each line is " <feature>\r\n" */
        if ((size_t)(eol - p) == n + 2 && strncasecmp(p + 1, s, n) == 0)
            return true;
    }
    return false;
}

static void backend_feature(struct out *o, size_t from, const char *s, size_t n)
{
    size_t i;

    /* Some servers prefix every line with "211-" instead of a space. */
    if (n >= 4 && memcmp(s, "211-", 4) == 0) {
        s += 4;
        n -= 4;
    }
    while (n > 0 && (s[0] == ' ' || s[0] == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0)
        return;

    /* SECURITY: backend text goes to the client; only printable ASCII, so no control bytes,
     * NULs or Telnet IACs ride along. */
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return;

    /* A bare "211" is no feature; lenient clients might take it for the end. */
    if (n == 3 && memcmp(s, "211", 3) == 0)
        return;

    if (is_dropped(s, n) || is_duplicate(o, from, s, n))
        return;
    put_feature(o, s, n);
}

/* Copy the features of a "211-" multi-line reply; anything else (a single "211 ..." line, an
 * error such as "500 ...") has none. */
static void backend_features(struct out *o, const char *s, size_t len)
{
    size_t from = o->len, pos = 0, n;
    const char *line, *eol;
    bool first = true;

    while (pos < len) {
        line = s + pos;
        eol = memchr(line, '\n', len - pos);
        n = eol ? (size_t)(eol - line) : len - pos;
        pos += n + 1;
        if (n > 0 && line[n - 1] == '\r')
            n--;

        if (first) {
            if (n < 4 || memcmp(line, "211-", 4) != 0)
                return;
            first = false;
            continue;
        }
        if (n >= 4 && memcmp(line, "211 ", 4) == 0)
            return; /* end of the reply */
        backend_feature(o, from, line, n);
    }
}

size_t gw_feat_rewrite(const char *backend, size_t len, const gw_feat_opts *o, char *out,
                       size_t cap)
{
    struct out b = {out, cap, 0, true};

    put(&b, "211-Features:\r\n", 15);
    if (o->tls) {
        put_str_feature(&b, "AUTH TLS;SSL;");
        put_str_feature(&b, "PBSZ");
        put_str_feature(&b, "PROT C;P;");
        if (o->ccc)
            put_str_feature(&b, "CCC");
    }
    put_str_feature(&b, "EPSV");
    put_str_feature(&b, "EPRT");
    if (backend != NULL)
        backend_features(&b, backend, len);
    put(&b, "211 End\r\n", 9);

    if (!b.ok) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    return b.len;
}
