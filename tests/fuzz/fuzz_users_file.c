/* libFuzzer target for proxy/users_file.c (the parser; no crypt_r: a hash costs
 * milliseconds). Checked: a failed parse leaves nothing and names a line; a successful one
 * holds unique, non-empty names that gw_users_find returns, hashes with a supported prefix,
 * and normalised groups (no leading, trailing or double blank). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "users_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_users u;
    char err[256];
    if (gw_users_parse((const char *)data, size, "f", &u, err, sizeof err) != 0) {
        if (u.v || u.n || strncmp(err, "f:", 2) != 0)
            abort();
        return 0;
    }
    for (size_t i = 0; i < u.n; i++) {
        const gw_user_entry *e = &u.v[i];
        if (!e->name[0] || gw_users_find(&u, e->name) != e || e->hash[0] != '$')
            abort();
        if (strncmp(e->hash, "$y$", 3) && strncmp(e->hash, "$2", 2) && strncmp(e->hash, "$6$", 3))
            abort();
        size_t g = strlen(e->groups);
        if (g && (e->groups[0] == ' ' || e->groups[g - 1] == ' ' || strstr(e->groups, "  ")))
            abort();
        if (e->line < 1)
            abort();
    }
    gw_users_free(&u);
    return 0;
}
