/*  test_events.c - the parts of common/sh_events that need no server: a
    session's channel name, checked against BLAKE2b-128 computed
    independently (Python's hashlib.blake2b(sid, digest_size=16)).
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sh_events.h"
#include "sh_util.h"

static void test_events_session_channel_known_answers(void **state)
{
    (void)state;
    sh_crypto_init();
    char channel[SH_CHANNEL_MAX + 1];
    sh_events_session_channel("abc", channel);
    assert_string_equal(channel, "s:cf4ab791c62b8d2b2109c90275287816");
    sh_events_session_channel("", channel);
    assert_string_equal(channel, "s:cae66941d9efbd404e4d88758ea67670");
    /*  a session id as the session service makes them (43 characters)  */
    sh_events_session_channel("Zx7Qn1p0cV3bK8mWfR2tY6uI4oP9aS5dF1gH3jL7kE0", channel);
    assert_string_equal(channel, "s:11acc1ff57385c7731f459c25687d90a");
    assert_true(strlen(channel) <= SH_CHANNEL_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events_session_channel_known_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
