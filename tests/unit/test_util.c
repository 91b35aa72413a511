/*  test_util.c - helpers of sh_util: the constant-time compare of secrets
    (CSRF tokens) says equal only for equal, non-empty byte strings.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sh_util.h"

static void test_util_secret_eq_equal_only(void **state)
{
    (void)state;
    char a[44], b[44];
    assert_int_equal(sh_random_id(a, sizeof a, 32), 0);
    memcpy(b, a, sizeof a);
    assert_true(sh_secret_eq(a, strlen(a), b, strlen(b)));
    /*  one byte differs, at the start, middle or end  */
    size_t n = strlen(a);
    size_t where[] = {0, n / 2, n - 1};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        b[where[i]] ^= 1;
        assert_false(sh_secret_eq(a, n, b, n));
        b[where[i]] ^= 1;
    }
    /*  a prefix or an extension is not the secret  */
    assert_false(sh_secret_eq(a, n, b, n - 1));
    assert_false(sh_secret_eq(a, n - 1, b, n));
}

static void test_util_secret_eq_empty_never_matches(void **state)
{
    (void)state;
    assert_false(sh_secret_eq("", 0, "", 0));
    assert_false(sh_secret_eq("x", 1, "", 0));
    assert_false(sh_secret_eq("", 0, "x", 1));
    assert_true(sh_secret_eq("x", 1, "x", 1));
}

int main(void)
{
    sh_crypto_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_util_secret_eq_equal_only),
        cmocka_unit_test(test_util_secret_eq_empty_never_matches),
    };
    return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
