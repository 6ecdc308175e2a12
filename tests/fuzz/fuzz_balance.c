/* libFuzzer target for proxy/balance.c. Byte 0: policy and candidate count; byte 1-4: the
 * exclusion mask and the random number; then 4 bytes per candidate (weight, live,
 * max_sessions, up); the rest is the source key. The pick must be -1 exactly when nothing is
 * eligible, else an eligible index; source must be stable for the same input. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "balance.h"

#define MAX_CANDS 40 /* past 32: exclude covers candidates 0..31 only */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* route_user's split: any bytes as a user name (NUL-terminated copy). */
    char user[256];
    size_t ulen = size < sizeof user - 1 ? size : sizeof user - 1;
    memcpy(user, data, ulen);
    user[ulen] = 0;
    size_t before = strlen(user);
    const char *be = gw_route_user_split(user);
    if (be && strlen(user) + 1 + strlen(be) != before)
        __builtin_trap();
    if (size < 5)
        return 0;
    enum gw_balance policy = (enum gw_balance)(data[0] & 3);
    int n = (data[0] >> 2) % (MAX_CANDS + 1);
    uint32_t exclude = (uint32_t)data[1] | (uint32_t)data[2] << 8;
    uint32_t rnd = (uint32_t)data[3] << 8 | data[4];
    data += 5;
    size -= 5;
    gw_bal_cand c[MAX_CANDS];
    int have = 0;
    for (; have < n && size >= 4; have++, data += 4, size -= 4)
        c[have] = (gw_bal_cand){.weight = data[0] % 12 - 1,
                                .live = data[1] % 8,
                                .max_sessions = data[2] % 6,
                                .up = data[3] & 1};
    gw_bal_state st;
    memset(&st, 0, sizeof st);
    bool any = false;
    for (int i = 0; i < have; i++)
        any = any || gw_balance_eligible(c, i, exclude);
    /* Several rounds with the same state (roundrobin's weights move). */
    for (int round = 0; round < 8; round++) {
        int i = gw_balance_pick(policy, c, have, &st, exclude, rnd + (uint32_t)round, data, size);
        if (any != (i >= 0))
            abort();
        if (i >= 0 && (i >= have || !gw_balance_eligible(c, i, exclude)))
            abort();
        if (policy == GW_BALANCE_SOURCE && i >= 0 &&
            gw_balance_pick(policy, c, have, &st, exclude, 0, data, size) != i)
            abort();
    }
    gw_bal_state_free(&st);
    return 0;
}
