/* libFuzzer target for the admin users file parser (proxy/admin_users.c). Checks: a parse
 * either fails with an empty result and a "line N:" message, or every user it returns has a
 * name of the allowed characters, a hash starting with '$' without spaces or colons, a role,
 * and is found again by name; the throttle never locks an address on its first failures. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_users.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_admin_users u;
    char err[256] = "";
    if (gw_admin_users_parse((const char *)data, size, &u, err, sizeof err) != 0) {
        if (u.u || u.n || strncmp(err, "line ", 5) != 0)
            abort();
        return 0;
    }
    for (size_t i = 0; i < u.n; i++) {
        const gw_admin_user *a = &u.u[i];
        if (!a->name[0] || strpbrk(a->name, ": \t\r\n") || a->hash[0] != '$' ||
            strpbrk(a->hash, ": \t\r\n") || a->role == GW_ADMIN_ROLE_NONE ||
            gw_admin_users_find(&u, a->name) != a)
            abort();
    }
    gw_admin_users_free(&u);
    gw_throttle *t = calloc(1, sizeof *t);
    if (!t)
        return 0;
    char addr[48];
    snprintf(addr, sizeof addr, "%.*s", (int)(size < 40 ? size : 40), (const char *)data);
    for (int i = 1; i < GW_THROTTLE_FAILS; i++)
        if (gw_throttle_fail(t, addr, i) || gw_throttle_locked(t, addr, i))
            abort();
    free(t);
    return 0;
}
