/* libFuzzer target for proxy/user_map.c (the parser; password files are not read).
 * Checked: a failed parse leaves nothing and names a line; a successful one holds rules with
 * a non-empty name, a backend and account without ':' or blanks, a password file only as an
 * absolute path with an account, lines in increasing order; and gw_user_map_find returns,
 * for each rule's own name, that rule or an earlier one (first match wins). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "user_map.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gw_user_map m;
    char err[256];
    if (gw_user_map_parse((const char *)data, size, "f", &m, err, sizeof err) != 0) {
        if (m.v || m.n || strncmp(err, "f:", 2) != 0)
            abort();
        return 0;
    }
    int last = 0;
    for (size_t i = 0; i < m.n; i++) {
        const gw_map_rule *r = &m.v[i];
        if (!r->who[0] || strpbrk(r->who, ": \t") || strpbrk(r->backend, ": \t") ||
            strpbrk(r->account, ": \t") || r->password || r->line <= last)
            abort();
        if (r->pass_file && (r->pass_file[0] != '/' || !r->account[0]))
            abort();
        last = r->line;
        const gw_map_rule *f =
            r->group ? gw_user_map_find(&m, "", r->who) : gw_user_map_find(&m, r->who, NULL);
        if (!f || f > r)
            abort();
    }
    gw_user_map_free(&m);
    return 0;
}
