/* libFuzzer target for proxy/proxy_proto.c: the input is parsed whole and fed in pieces of
 * the size the parser asks for (the result must agree and never read past the header); a
 * complete header is rebuilt and parsed back; the input is also taken as CIDR lists. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_proto.h"

static void feed_in_pieces(const uint8_t *d, size_t n, int mode, int whole, const gw_pp_header *wh)
{
    static gw_pp_reader r;
    gw_pp_header h;
    const char *why;
    size_t need = gw_pp_first_read(mode), pos = 0;
    r.n = 0;
    for (;;) {
        size_t take = need;
        if (pos + take > n)
            return; /* the input ends inside the header */
        int rc = gw_pp_feed(&r, d + pos, take, mode, &h, &need, &why);
        pos += take;
        if (rc == GW_PP_MORE) {
            if (need == 0)
                abort();
            continue;
        }
        /* A prefix decides no differently from the whole */
        if (rc != whole)
            abort();
        if (rc == GW_PP_DONE && (h.len != pos || h.len != wh->len))
            abort();
        if (rc == GW_PP_BAD && why == NULL)
            abort();
        return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_pp_header h;
    size_t need;
    const char *why;
    for (int mode = GW_PP_V1; mode <= GW_PP_ANY; mode++) {
        int rc = gw_pp_parse(data, size, mode, &h, &need, &why);
        if (rc == GW_PP_MORE && (need == 0 || size + need > GW_PP_V2_MAX))
            abort();
        if (rc == GW_PP_DONE && (h.len == 0 || h.len > size))
            abort();
        if (rc == GW_PP_DONE && h.version == 1 && h.len > GW_PP_V1_MAX)
            abort();
        if (rc != GW_PP_MORE)
            feed_in_pieces(data, size, mode, rc, &h);
        if (rc == GW_PP_DONE && !h.local && !h.unknown) {
            uint8_t buf[GW_PP_BUILD_MAX];
            gw_pp_header b;
            for (int v = 1; v <= 2; v++) {
                size_t n = gw_pp_build(v, buf, sizeof buf, &h.src, &h.dst);
                if (n == 0 || gw_pp_parse(buf, n, GW_PP_ANY, &b, &need, &why) != GW_PP_DONE)
                    abort();
                if (!gw_addr_same_host(&b.src, &h.src) || b.src.port != h.src.port ||
                    !gw_addr_same_host(&b.dst, &h.dst) || b.dst.port != h.dst.port)
                    abort();
            }
        }
    }
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = 0;
    char why2[256];
    gw_addr a = {.family = 4, .ip = {10, 1, 2, 3}}, out;
    bool ok = gw_cidr_list_check(s, why2, sizeof why2) == 0;
    bool m = gw_cidr_list_match(s, &a);
    if (m && !ok && !strpbrk(s, ", \t"))
        abort(); /* a single item (cidr.h: commas or blanks separate) that matches is valid */
    if (gw_pp_addr_for(s, &a, &out) && out.family != 4)
        abort();
    (void)gw_pp_addr_for_check(s, why2, sizeof why2);
    free(s);
    return 0;
}
