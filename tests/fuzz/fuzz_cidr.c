/* libFuzzer target for proxy/cidr.c and proxy/ban.c. The input up to the first NUL is a CIDR
 * list (checked, then matched against an address made of the next 17 bytes); the rest drives
 * a small ban table: 3 bytes per step (address, time step, policy), checking its invariants
 * (never more entries than the cap, a banned address reported as banned). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ban.h"
#include "cidr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char list[256];
    size_t n = 0;
    while (n < size && n < sizeof list - 1 && data[n])
        n++;
    memcpy(list, data, n);
    list[n] = 0;
    char why[256];
    bool ok = gw_cidr_list_check(list, why, sizeof why) == 0;
    data += n < size ? n + 1 : n;
    size -= n < size ? n + 1 : n;
    gw_addr a;
    memset(&a, 0, sizeof a);
    if (size >= 17) {
        a.family = (data[0] & 1) ? 6 : 4;
        memcpy(a.ip, data + 1, 16);
        if (a.family == 4)
            memset(a.ip + 4, 0, 12);
        data += 17;
        size -= 17;
    }
    bool m = gw_cidr_list_match(list, &a);
    if (m && !list[0])
        __builtin_trap(); /* the empty list matches nothing */
    gw_ban_table *t = gw_ban_table_new(8);
    if (!t)
        return 0;
    gw_ban_policy p = {.after = 3, .window = 5, .time = 3, .exempt = ok ? list : NULL};
    uint64_t now = 0;
    for (size_t i = 0; i + 3 <= size; i += 3) {
        gw_addr x = {.family = (data[i] & 0x80) ? 6 : 4};
        x.ip[0] = (uint8_t)(data[i] & 0x0f);
        x.ip[7] = (uint8_t)(data[i] >> 4 & 3);
        x.ip[15] = 1;
        if (x.family == 4)
            memset(x.ip + 4, 0, 12);
        now += (uint64_t)data[i + 1] * 50;
        p.after = 1 + data[i + 2] % GW_BAN_AFTER_MAX;
        gw_ban_result r;
        if (data[i + 2] & 0x80) {
            gw_ban_expire(t, now, &p, NULL, NULL);
        } else {
            gw_ban_fail(t, &x, now, &p, &r);
            if ((r.what == GW_BAN_NEW || r.what == GW_BAN_ALREADY) &&
                gw_ban_left(t, &x, now, &p) == 0)
                __builtin_trap();
            if (r.what == GW_BAN_NEW && r.failures < p.after)
                __builtin_trap();
        }
        if (gw_ban_tracked(t) > 8 || gw_ban_banned(t) > gw_ban_tracked(t))
            __builtin_trap();
    }
    gw_ban_table_free(t);
    return 0;
}
