/* ClientHello parsing in clear (RFC 8446 §4.1.2, §4.2.11; RFC 5077; RFC 5246 §7.4.1.2). */
#include "tls_hello.h"

#include <string.h>

const uint8_t gw_ticket_magic[3] = {'f', 'g', 'w'};

#define REC_HANDSHAKE 22
#define HS_CLIENT_HELLO 1
#define EXT_SESSION_TICKET 35
#define EXT_PRE_SHARED_KEY 41

/* A bounds-checked reader over one span. */
typedef struct rd {
    const uint8_t *p;
    size_t n;
    int bad;
} rd;

static size_t rd_int(rd *r, size_t width)
{
    size_t v = 0;
    if (r->bad || r->n < width) {
        r->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < width; i++)
        v = v << 8 | r->p[i];
    r->p += width;
    r->n -= width;
    return v;
}

/* A length-prefixed vector: width bytes of length, then that many bytes. */
static rd rd_vec(rd *r, size_t width)
{
    rd sub = {NULL, 0, 1};
    size_t len = rd_int(r, width);
    if (r->bad || r->n < len) {
        r->bad = 1;
        return sub;
    }
    sub.p = r->p;
    sub.n = len;
    sub.bad = 0;
    r->p += len;
    r->n -= len;
    return sub;
}

static void parse_psk(rd ext, gw_tls_hello *h)
{
    rd ids = rd_vec(&ext, 2);
    while (!ids.bad && ids.n > 0 && h->n_psk < GW_HELLO_MAX_PSK) {
        rd id = rd_vec(&ids, 2);
        rd_int(&ids, 4); /* obfuscated_ticket_age */
        if (ids.bad || id.bad)
            return;
        h->psk[h->n_psk].p = id.p;
        h->psk[h->n_psk].len = id.n;
        h->n_psk++;
    }
}

static enum gw_hello_status parse_body(rd body, gw_tls_hello *h)
{
    rd_int(&body, 2); /* legacy_version */
    rd rnd = {body.p, 32, 0};
    if (body.n < 32)
        return GW_HELLO_BAD;
    body.p += 32;
    body.n -= 32;
    (void)rnd;
    rd sid = rd_vec(&body, 1);
    rd_vec(&body, 2); /* cipher_suites */
    rd_vec(&body, 1); /* legacy_compression_methods */
    if (body.bad || sid.n > 32)
        return GW_HELLO_BAD;
    h->session_id.p = sid.p;
    h->session_id.len = sid.n;
    if (body.n == 0)
        return GW_HELLO_OK; /* no extensions (SSL 3.0 style) */
    rd exts = rd_vec(&body, 2);
    if (body.bad)
        return GW_HELLO_BAD;
    while (exts.n > 0) {
        size_t type = rd_int(&exts, 2);
        rd ext = rd_vec(&exts, 2);
        if (exts.bad)
            return GW_HELLO_BAD;
        if (type == EXT_SESSION_TICKET) {
            h->ticket.p = ext.p;
            h->ticket.len = ext.n;
        } else if (type == EXT_PRE_SHARED_KEY) {
            parse_psk(ext, h);
        }
    }
    return GW_HELLO_OK;
}

enum gw_hello_status gw_tls_hello_parse(const uint8_t *in, size_t n, uint8_t *scratch, size_t cap,
                                        gw_tls_hello *h)
{
    memset(h, 0, sizeof *h);
    size_t have = 0; /* handshake bytes reassembled in scratch */
    size_t pos = 0;
    while (1) {
        if (have >= 4) {
            size_t msg = (size_t)scratch[1] << 16 | (size_t)scratch[2] << 8 | scratch[3];
            if (scratch[0] != HS_CLIENT_HELLO || msg + 4 > cap)
                return GW_HELLO_BAD;
            if (have >= msg + 4) {
                rd body = {scratch + 4, msg, 0};
                return parse_body(body, h);
            }
        }
        if (n - pos < 5) {
            /* The first byte alone tells a TLS record from anything else. */
            if (pos == 0 && n > 0 && in[0] != REC_HANDSHAKE)
                return GW_HELLO_NOT_TLS;
            return GW_HELLO_AGAIN;
        }
        const uint8_t *rec = in + pos;
        size_t len = (size_t)rec[3] << 8 | rec[4];
        if (rec[0] != REC_HANDSHAKE || rec[1] != 3)
            return pos == 0 ? GW_HELLO_NOT_TLS : GW_HELLO_BAD;
        if (len == 0 || len > 16384 + 2048)
            return GW_HELLO_BAD;
        if (n - pos - 5 < len)
            return GW_HELLO_AGAIN;
        if (have + len > cap)
            return GW_HELLO_BAD;
        memcpy(scratch + have, rec + 5, len);
        have += len;
        pos += 5 + len;
    }
}

void gw_ticket_name_make(uint8_t name[GW_TICKET_NAME_LEN], uint8_t gen,
                         const uint8_t route[GW_ROUTE_LEN])
{
    memcpy(name, gw_ticket_magic, 3);
    name[3] = gen;
    memcpy(name + 4, route, GW_ROUTE_LEN);
}

void gw_session_id_make(uint8_t id[GW_SESSION_ID_LEN], const uint8_t route[GW_ROUTE_LEN],
                        const uint8_t rnd[16])
{
    gw_ticket_name_make(id, 0xff, route);
    memcpy(id + 16, rnd, 16);
}

int gw_route_from_identity(const uint8_t *p, size_t len, uint8_t route[GW_ROUTE_LEN], uint8_t *gen)
{
    if (!p || len < GW_TICKET_NAME_LEN || memcmp(p, gw_ticket_magic, 3) != 0)
        return 0;
    memcpy(route, p + 4, GW_ROUTE_LEN);
    if (gen)
        *gen = p[3];
    return 1;
}
