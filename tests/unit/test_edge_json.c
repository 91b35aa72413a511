/*  test_edge_json.c - the edge's JSON writer writes what jansson reads
    back as the same values: every byte that needs escaping, every UTF-8
    length, and items as the API shows them; text that is not UTF-8 is
    refused, never sent.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "edge.h"

/*  Write text, parse it back with jansson, expect the same bytes.  */
static void s_roundtrip(const char *text, size_t len)
{
    sh_buf_t buf = {0};
    assert_int_equal(edge_json_str(&buf, text, len), 0);
    json_error_t error;
    json_t *back = json_loadb(buf.data, buf.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
    assert_non_null(back);
    assert_true(json_is_string(back));
    assert_int_equal(json_string_length(back), len);
    assert_memory_equal(json_string_value(back), text, len);
    json_decref(back);
    sh_buf_free(&buf);
}

static void test_edge_json_every_ascii_byte(void **state)
{
    (void)state;
    char all[128];
    for (int i = 0; i < 128; i++)
        all[i] = (char)i;
    s_roundtrip(all, sizeof all);
    s_roundtrip("", 0);
    s_roundtrip("</script><script>alert(1)</script>", 34);
    s_roundtrip("quote \" backslash \\ slash / tab \t", 34);
}

static void test_edge_json_utf8_of_every_length(void **state)
{
    (void)state;
    const char *texts[] = {"h\xC3\xA9llo", "\xE2\x82\xAC 5", "\xF0\x9F\x90\x9F fish",
                           "\xE2\x80\xA8 line separator", "\xEF\xBF\xBF"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(texts); i++)
        s_roundtrip(texts[i], strlen(texts[i]));
}

static void test_edge_json_refuses_bad_utf8(void **state)
{
    (void)state;
    const char *bad[] = {"\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF", "ok \xE2\x82"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad); i++) {
        sh_buf_t buf = {0};
        assert_int_equal(edge_json_str(&buf, bad[i], strlen(bad[i])), -1);
        sh_buf_free(&buf);
    }
}

static void test_edge_json_item_whole_and_excerpt(void **state)
{
    (void)state;
    sh_item_t item = {.id = 9223372036854775807ULL, /* the largest bigserial */
                      .author_id = 7,
                      .author = sh_str("alice"),
                      .title = sh_str("a \"title\"\n"),
                      .body = sh_str("body \xE2\x82\xAC"),
                      .created_at = -5,
                      .views = 3};
    for (int whole = 0; whole <= 1; whole++) {
        sh_buf_t buf = {0};
        assert_int_equal(edge_json_item(&buf, &item, whole), 0);
        json_error_t error;
        json_t *o = json_loadb(buf.data, buf.len, 0, &error);
        assert_non_null(o);
        assert_string_equal(json_string_value(json_object_get(o, "title")), "a \"title\"\n");
        assert_string_equal(json_string_value(json_object_get(o, whole ? "body" : "excerpt")),
                            "body \xE2\x82\xAC");
        assert_null(json_object_get(o, whole ? "excerpt" : "body"));
        assert_string_equal(json_string_value(json_object_get(o, "author")), "alice");
        assert_int_equal(json_integer_value(json_object_get(o, "author_id")), 7);
        assert_int_equal(json_integer_value(json_object_get(o, "created_at")), -5);
        assert_int_equal(json_object_get(o, "views") != NULL, whole);
        assert_true(json_integer_value(json_object_get(o, "id")) == INT64_MAX);
        json_decref(o);
        sh_buf_free(&buf);
    }
}

static void test_edge_json_attachment_fields(void **state)
{
    (void)state;
    sh_attachment_t file = {.id = 12,
                            .item_id = 3,
                            .owner_id = 1,
                            .owner = sh_str("alice"),
                            .name = sh_str("a \"q\"\\..\\/\xe2\x82\xac.pdf"),
                            .content_type = sh_str("application/pdf"),
                            .size = 5242881,
                            .sha256 = sh_str("ab12"),
                            .key = sh_str("uploads/secret"),
                            .created_at = 1763800000000};
    sh_buf_t buf = {0};
    assert_int_equal(edge_json_attachment(&buf, &file), 0);
    json_error_t error;
    json_t *back = json_loadb(buf.data, buf.len, 0, &error);
    assert_non_null(back);
    assert_int_equal(json_integer_value(json_object_get(back, "id")), 12);
    assert_int_equal(json_integer_value(json_object_get(back, "item_id")), 3);
    assert_int_equal(json_integer_value(json_object_get(back, "size")), 5242881);
    assert_string_equal(json_string_value(json_object_get(back, "name")),
                        "a \"q\"\\..\\/\xe2\x82\xac.pdf");
    assert_string_equal(json_string_value(json_object_get(back, "url")), "/api/uploads/12");
    assert_string_equal(json_string_value(json_object_get(back, "owner")), "alice");
    /*  the storage key stays inside  */
    assert_null(json_object_get(back, "key"));
    assert_null(strstr(buf.data, "secret"));
    json_decref(back);
    sh_buf_free(&buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_json_every_ascii_byte),
        cmocka_unit_test(test_edge_json_utf8_of_every_length),
        cmocka_unit_test(test_edge_json_refuses_bad_utf8),
        cmocka_unit_test(test_edge_json_item_whole_and_excerpt),
        cmocka_unit_test(test_edge_json_attachment_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
