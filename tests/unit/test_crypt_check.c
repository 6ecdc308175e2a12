/* proxy/crypt_check.c: the one password check of the users file and admin_users, against
 * fixed mkpasswd vectors, with and without a caller's scratch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include "crypt_check.h"

/* `mkpasswd -m yescrypt|bcrypt -R 5|sha512crypt 'correct horse'` */
#define Y_HASH "$y$j9T$BkA/Z1hcbX44dDRvvVWfh.$aohk3hI4at3y09YFbC9TmQ0hpmTwQKd8kWKdBLUMlL."
#define B_HASH "$2b$05$acIsWD1SRXtW9PYi9Lefqe6/LfUKPvYzWIuEt2aLeU2zEFt2lGsOG"

static void test_vectors(void **state)
{
    (void)state;
    struct crypt_data *cd = calloc(1, sizeof *cd);
    assert_non_null(cd);
    const char *hashes[] = {Y_HASH, B_HASH};
    for (size_t i = 0; i < 2; i++) {
        assert_true(gw_crypt_check("correct horse", hashes[i], NULL));
        assert_true(gw_crypt_check("correct horse", hashes[i], cd));
        assert_false(gw_crypt_check("correct horsf", hashes[i], NULL));
        assert_false(gw_crypt_check("correct horse ", hashes[i], cd));
        assert_false(gw_crypt_check("", hashes[i], cd));
        assert_false(gw_crypt_check(NULL, hashes[i], NULL));
    }
    /* the caller's scratch is wiped after use */
    static const struct crypt_data zero;
    assert_memory_equal(cd, &zero, sizeof zero);
    free(cd);
}

static void test_refused_hashes(void **state)
{
    (void)state;
    /* what crypt_r refuses ("*0" or NULL) never matches, whatever the password */
    assert_false(gw_crypt_check("correct horse", "", NULL));
    assert_false(gw_crypt_check("*0", "*0", NULL));
    assert_false(gw_crypt_check("x", "$z$nonsense", NULL));
    assert_false(gw_crypt_check("x", NULL, NULL));
    /* the stand-in for unknown names is a real hash: it costs a hash and matches nothing */
    assert_false(gw_crypt_check("", GW_CRYPT_STAND_IN, NULL));
    assert_false(gw_crypt_check("correct horse", GW_CRYPT_STAND_IN, NULL));
    struct crypt_data *cd = calloc(1, sizeof *cd);
    assert_non_null(cd);
    const char *out = crypt_r("anything", GW_CRYPT_STAND_IN, cd);
    assert_non_null(out);
    assert_int_equal(strncmp(out, "$y$", 3), 0);
    free(cd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_refused_hashes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
