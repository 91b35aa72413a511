/*  test_query_text.c - the query service's text rules: strict UTF-8, no
    control characters (except line breaks and tabs in bodies), limits in
    characters rather than bytes; usernames from a small alphabet; the
    checks of a new attachment and the key list sent to Postgres.
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

#define T_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static void test_query_sha256_lowercase_hex_only(void **state)
{
    (void)state;
    assert_true(query_sha256_valid(T_SHA256, strlen(T_SHA256)));
    assert_false(query_sha256_valid(T_SHA256, strlen(T_SHA256) - 1));
    assert_false(query_sha256_valid(T_SHA256 "0", strlen(T_SHA256) + 1));
    char upper[] = T_SHA256;
    upper[0] = 'E';
    assert_false(query_sha256_valid(upper, strlen(upper)));
    char not_hex[] = T_SHA256;
    not_hex[63] = 'g';
    assert_false(query_sha256_valid(not_hex, strlen(not_hex)));
    assert_false(query_sha256_valid("", 0));
}

static void test_query_objkey_bytes_and_characters(void **state)
{
    (void)state;
    char longest[SH_OBJKEY_MAX + 2];
    memset(longest, 'k', sizeof longest);
    assert_true(query_objkey_valid(longest, SH_OBJKEY_MAX));
    assert_false(query_objkey_valid(longest, SH_OBJKEY_MAX + 1));
    assert_false(query_objkey_valid("", 0));
    assert_true(query_objkey_valid("u/1/ab-c_d.e", 12));
    assert_false(query_objkey_valid("a\nb", 3));
    assert_false(query_objkey_valid("a\0b", 3));
    assert_false(query_objkey_valid("\xC0\xAF", 2));
}

static sh_attachment_create_req_t s_valid_create(void)
{
    sh_attachment_create_req_t req = {0};
    req.user_id = 1;
    req.item_id = 2;
    req.key = sh_str("u/1/abc");
    req.size = 10;
    req.sha256 = sh_str(T_SHA256);
    req.content_type = sh_str("image/png");
    req.name = sh_str("\xF0\x9F\x90\x9F fish.png");
    return req;
}

static void test_query_attachment_problem_names_the_field(void **state)
{
    (void)state;
    char why[128];
    sh_attachment_create_req_t req = s_valid_create();
    assert_null(query_attachment_problem(&req, why, sizeof why));
    /*  an unknown item is not a malformed request  */
    req.item_id = 0;
    assert_null(query_attachment_problem(&req, why, sizeof why));

    static char long_name[SH_FILENAME_MAX + 1], longest_name[SH_FILENAME_MAX];
    memset(long_name, 'n', sizeof long_name);
    memset(longest_name, 'n', sizeof longest_name);
    req = s_valid_create();
    req.name = (sh_str_t){longest_name, sizeof longest_name};
    assert_null(query_attachment_problem(&req, why, sizeof why));

    struct {
        const char *field;
        sh_attachment_create_req_t req;
    } cases[13];
    for (size_t i = 0; i < SH_ARRAY_SIZE(cases); i++)
        cases[i].req = s_valid_create();
    size_t n = 0;
    cases[n].field = "user_id", cases[n++].req.user_id = 0;
    cases[n].field = "user_id", cases[n++].req.user_id = (uint64_t)INT64_MAX + 1;
    cases[n].field = "key", cases[n++].req.key = sh_str("");
    cases[n].field = "key", cases[n++].req.key = sh_str("a\rb");
    cases[n].field = "size", cases[n++].req.size = UINT64_MAX;
    cases[n].field = "sha256", cases[n++].req.sha256 = sh_str("abc");
    cases[n].field = "content_type", cases[n++].req.content_type = sh_str("");
    cases[n].field = "content_type", cases[n++].req.content_type = sh_str("text/html\n");
    cases[n].field = "name", cases[n++].req.name = sh_str("");
    cases[n].field = "name", cases[n++].req.name = sh_str("tab\there");
    cases[n].field = "name", cases[n++].req.name = (sh_str_t){long_name, sizeof long_name};
    cases[n].field = "name", cases[n++].req.name = (sh_str_t){"a\0b", 3};
    cases[n].field = "quota", cases[n++].req.quota = (uint64_t)INT64_MAX + 1;
    assert_int_equal(n, SH_ARRAY_SIZE(cases));
    for (size_t i = 0; i < n; i++) {
        const char *got = query_attachment_problem(&cases[i].req, why, sizeof why);
        assert_non_null(got);
        assert_ptr_equal(got, why);
        assert_memory_equal(got, cases[i].field, strlen(cases[i].field));
    }
}

static void test_query_keys_array_quotes_and_skips(void **state)
{
    (void)state;
    sh_objkey_list_t keys = {0};
    const char *given[] = {"plain", "has \"quote\"", "back\\slash", "bad\x01", "", "{a,b}", "NULL"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(given); i++)
        keys.items[keys.count++].key = sh_str(given[i]);
    sh_buf_t out = {0};
    assert_int_equal(query_keys_array(&keys, &out), 5);
    assert_string_equal(out.data,
                        "{\"plain\",\"has \\\"quote\\\"\",\"back\\\\slash\",\"{a,b}\",\"NULL\"}");
    sh_buf_free(&out);

    /*  nothing usable: an empty array, and the caller asks nothing  */
    sh_objkey_list_t bad = {0};
    bad.items[bad.count++].key = sh_str("\n");
    assert_int_equal(query_keys_array(&bad, &out), 0);
    assert_string_equal(out.data, "{}");
    sh_buf_free(&out);
}

/*  An excerpt cuts by characters, as Postgres's left() does.  */
static void test_query_excerpt_len_counts_characters(void **state)
{
    (void)state;
    assert_int_equal(query_excerpt_len("abcdef", 6, 3), 3);
    assert_int_equal(query_excerpt_len("ab", 2, 3), 2);
    assert_int_equal(query_excerpt_len("", 0, 3), 0);
    /*  U+00E9 takes two bytes, U+1F4AC four  */
    assert_int_equal(query_excerpt_len("\xC3\xA9\xC3\xA9\xC3\xA9", 6, 2), 4);
    assert_int_equal(query_excerpt_len("a\xF0\x9F\x92\xAC"
                                       "b",
                                       6, 2),
                     5);
    assert_int_equal(query_excerpt_len("abc", 3, 0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_text_accepts_unicode_by_characters),
        cmocka_unit_test(test_query_text_rejects_bad_utf8),
        cmocka_unit_test(test_query_text_control_characters),
        cmocka_unit_test(test_query_username_alphabet_and_length),
        cmocka_unit_test(test_query_sha256_lowercase_hex_only),
        cmocka_unit_test(test_query_objkey_bytes_and_characters),
        cmocka_unit_test(test_query_attachment_problem_names_the_field),
        cmocka_unit_test(test_query_keys_array_quotes_and_skips),
        cmocka_unit_test(test_query_excerpt_len_counts_characters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
