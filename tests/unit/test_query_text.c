/*  test_query_text.c - the query service's text rules: strict UTF-8, no
    control characters (except line breaks and tabs in bodies), limits in
    characters rather than bytes; usernames from a small alphabet.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "query_server.h"
#include "sh_util.h"

static const char *s_check(const char *text, size_t min, size_t max, bool multiline)
{
    return query_text_problem(text, strlen(text), min, max, multiline);
}

static void test_query_text_accepts_unicode_by_characters(void **state)
{
    (void)state;
    assert_null(s_check("héllo wörld", 1, 11, false));
    /*  four characters of four bytes each: within a limit of 4 characters  */
    assert_null(
        s_check("\xF0\x9F\x90\x9F\xF0\x9F\x90\x9F\xF0\x9F\x90\x9F\xF0\x9F\x90\x9F", 1, 4, false));
    assert_non_null(
        s_check("\xF0\x9F\x90\x9F\xF0\x9F\x90\x9F\xF0\x9F\x90\x9F\xF0\x9F\x90\x9F", 1, 3, false));
    assert_null(s_check("", 0, 10, true));
    assert_string_equal(s_check("", 1, 10, false), "must not be empty");
}

static void test_query_text_rejects_bad_utf8(void **state)
{
    (void)state;
    const char *bad[] = {
        "\xC0\xAF",         /* overlong '/' */
        "\xE0\x80\xAF",     /* overlong, three bytes */
        "\xED\xA0\x80",     /* a surrogate */
        "\xF4\x90\x80\x80", /* past U+10FFFF */
        "\xFF",             /* never valid */
        "abc\xE2\x82",      /* cut short */
        "\x80",             /* a lone continuation byte */
    };
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad); i++)
        assert_string_equal(s_check(bad[i], 0, 100, true), "is not valid UTF-8");
}

static void test_query_text_control_characters(void **state)
{
    (void)state;
    assert_null(s_check("line one\nline two\r\n\tindented", 0, 100, true));
    assert_non_null(s_check("title\nwith a break", 1, 100, false));
    assert_non_null(s_check("bell\x07", 0, 100, true));
    assert_non_null(s_check("del\x7F", 0, 100, true));
    assert_non_null(s_check("c1 \xC2\x85", 0, 100, true)); /* U+0085 */
    /*  a NUL inside the text counts, it does not end it  */
    assert_non_null(query_text_problem("a\0b", 3, 0, 100, true));
}

static void test_query_username_alphabet_and_length(void **state)
{
    (void)state;
    const char *good[] = {"bob", "Alice_1", "a.b-c", "x23456789012345678901234567890yz"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(good); i++)
        assert_true(query_username_valid(good[i], strlen(good[i])));
    const char *bad[] = {"ab",
                         "x234567890123456789012345678901yz",
                         "bob smith",
                         "bob'--",
                         "b\xC3\xB6"
                         "b",
                         "../x",
                         "a;b",
                         ""};
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad); i++)
        assert_false(query_username_valid(bad[i], strlen(bad[i])));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_text_accepts_unicode_by_characters),
        cmocka_unit_test(test_query_text_rejects_bad_utf8),
        cmocka_unit_test(test_query_text_control_characters),
        cmocka_unit_test(test_query_username_alphabet_and_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
