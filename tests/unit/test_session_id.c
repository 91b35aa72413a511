/*  test_session_id.c - session ids come from the CSPRNG with 256 bits and
    only well-formed ids are accepted; anything else is "no session".
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "session_store.h"
#include "sh_util.h"

static void test_session_id_new_ids_are_valid_and_distinct(void **state)
{
    (void)state;
    char a[SESSION_ID_LEN + 1], b[SESSION_ID_LEN + 1];
    session_id_new(a);
    session_id_new(b);
    assert_int_equal(strlen(a), SESSION_ID_LEN);
    assert_true(session_id_valid(sh_str(a)));
    assert_true(session_id_valid(sh_str(b)));
    assert_string_not_equal(a, b);
}

static void test_session_id_rejects_malformed(void **state)
{
    (void)state;
    char good[SESSION_ID_LEN + 1];
    session_id_new(good);
    const char *bad[] = {"", "short", "../../etc/passwd", "shoal_sid=xyz"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad); i++)
        assert_false(session_id_valid(sh_str(bad[i])));
    char longer[SESSION_ID_LEN + 2];
    snprintf(longer, sizeof longer, "%sA", good);
    assert_false(session_id_valid(sh_str(longer)));
    char wrong = good[5];
    good[5] = '+'; /* not base64url */
    assert_false(session_id_valid(sh_str(good)));
    good[5] = '/';
    assert_false(session_id_valid(sh_str(good)));
    good[5] = wrong;
    assert_true(session_id_valid(sh_str(good)));
}

int main(void)
{
    sh_crypto_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_id_new_ids_are_valid_and_distinct),
        cmocka_unit_test(test_session_id_rejects_malformed),
    };
    return cmocka_run_group_tests_name("session_id", tests, NULL, NULL);
}
