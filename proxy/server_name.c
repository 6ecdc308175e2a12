/* Virtual hosts: server_name matching (server_name.h). */
#include "server_name.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

/* One pattern (n bytes) against name: case-insensitive; "*.suffix" needs one more label. */
static bool name_matches(const char *pat, size_t n, const char *name)
{
    size_t len = strlen(name);
    if (len && name[len - 1] == '.') /* an absolute name */
        len--;
    if (n >= 2 && pat[0] == '*' && pat[1] == '.') {
        size_t sl = n - 1; /* ".suffix" */
        if (len <= sl || strncasecmp(name + len - sl, pat + 1, sl) != 0)
            return false;
        return memchr(name, '.', len - sl) == NULL; /* exactly one label before it */
    }
    return len == n && strncasecmp(name, pat, n) == 0;
}

bool gw_server_name_match(const char *list, const char *name)
{
    if (!list || !name || !name[0])
        return false;
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        while (n && (*p == ' ' || *p == '\t'))
            p++, n--;
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n && name_matches(p, n, name))
            return true;
        if (!comma)
            break;
        p = comma + 1;
    }
    return false;
}
