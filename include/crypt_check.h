/* A password against a crypt(3) hash (libcrypt's crypt_r): the one check of both the users
 * file of auth = file frontends (users_file.c) and the admin endpoint's admin_users
 * (admin.c). Pure: no libuv, no OpenSSL. Blocking: a hash costs milliseconds by design. */
#ifndef GW_CRYPT_CHECK_H
#define GW_CRYPT_CHECK_H

#include <stdbool.h>

struct crypt_data;

/* A valid yescrypt hash of nothing anybody knows: an unknown name is checked against it
 * (and fails), so that timing does not tell which names exist. */
#define GW_CRYPT_STAND_IN                                                                          \
    "$y$j9T$WY919qO0fa4gFHguJpcAz/$UD/8c5sfhgPlLzMR8LzT3meKTQ8Megus6I2s6XLWSz1"

/* Does password hash to `hash`? The result is compared in time that depends on the lengths
 * only. scratch: crypt_r's 32 KiB (a caller that checks often keeps one), NULL: allocated
 * for this call. Wiped after use either way. false for a hash crypt_r refuses. */
bool gw_crypt_check(const char *password, const char *hash, struct crypt_data *scratch);

#endif
