/* See crypt_check.h. */
#include "crypt_check.h"

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

/* Equal strings, in time that depends on the lengths only. */
static bool same_secret(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    volatile unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n && i < m; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

bool gw_crypt_check(const char *password, const char *hash, struct crypt_data *scratch)
{
    if (!hash)
        return false;
    struct crypt_data *cd = scratch ? scratch : calloc(1, sizeof *cd); /* not on the stack */
    if (!cd)
        return false;
    const char *out = crypt_r(password ? password : "", hash, cd);
    /* libxcrypt returns NULL or a string starting with '*' on failure */
    bool ok = out && out[0] != '*' && same_secret(out, hash);
    explicit_bzero(cd, sizeof *cd);
    if (!scratch)
        free(cd);
    return ok;
}
