/*  test_upload_sniff.c - content sniffing of uploads: signatures, the
    text rule (strict UTF-8, a sequence cut only at the window's edge, no
    control bytes but tab, newline, carriage return, form feed and escape),
    and which declared types the sniffed type must agree with.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "upload_sniff.h"

#define T_BIG 2048
/*  A string literal's bytes, without its terminating NUL.  */
#define T_SNIFF(lit, more) s_sniff(lit, sizeof(lit) - 1, more)

static const char *s_sniff(const char *bytes, size_t len, bool more)
{
    return upload_sniff_type((const uint8_t *)bytes, len, more);
}

static bool s_agrees(const char *declared, const char *sniffed)
{
    return upload_sniff_agrees(declared, strlen(declared), sniffed);
}

static void test_upload_sniff_signatures(void **state)
{
    (void)state;
    assert_string_equal(T_SNIFF("\x89PNG\r\n\x1a\n\0\0\0\rIHDR", false), UPLOAD_TYPE_PNG);
    assert_string_equal(T_SNIFF("\xff\xd8\xff\xe0", false), UPLOAD_TYPE_JPEG);
    assert_string_equal(T_SNIFF("\xff\xd8\xff", false), UPLOAD_TYPE_JPEG);
    assert_string_equal(T_SNIFF("GIF87a\x01\x00", false), UPLOAD_TYPE_GIF);
    assert_string_equal(T_SNIFF("GIF89a", false), UPLOAD_TYPE_GIF);
    assert_string_equal(T_SNIFF("RIFF\x24\0\0\0WEBPVP8 ", false), UPLOAD_TYPE_WEBP);
    assert_string_equal(T_SNIFF("%PDF-1.7\n", false), UPLOAD_TYPE_PDF);
    assert_string_equal(T_SNIFF("PK\x03\x04\x14\0", false), UPLOAD_TYPE_ZIP);
    assert_string_equal(T_SNIFF("PK\x05\x06\0\0\0\0", false), UPLOAD_TYPE_ZIP);
}

static void test_upload_sniff_near_misses(void **state)
{
    (void)state;
    /*  a signature cut short or bent is not that type  */
    assert_string_equal(T_SNIFF("\x89PNG\r\n\x1a", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("\xff\xd8", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("GIF88a", false), UPLOAD_TYPE_TEXT);
    assert_string_equal(T_SNIFF("RIFF\x24\0\0\0WAVEfmt ", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("RIFFxxxxWEB", false), UPLOAD_TYPE_TEXT);
    assert_string_equal(T_SNIFF("%PDF", false), UPLOAD_TYPE_TEXT);
    assert_string_equal(T_SNIFF("PK\x03\x05", false), UPLOAD_TYPE_OCTET);
    /*  the magic must be at the start  */
    assert_string_equal(T_SNIFF(" %PDF-1.4", false), UPLOAD_TYPE_TEXT);
}

static void test_upload_sniff_empty_is_octet_stream(void **state)
{
    (void)state;
    assert_string_equal(upload_sniff_type(NULL, 0, false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("", true), UPLOAD_TYPE_OCTET);
}

static void test_upload_sniff_text(void **state)
{
    (void)state;
    assert_string_equal(T_SNIFF("hello\n", false), UPLOAD_TYPE_TEXT);
    assert_string_equal(T_SNIFF("a\tb\r\nc\fd\x1b[0m", false), UPLOAD_TYPE_TEXT);
    /*  HTML is text: stored as text/plain, never served as HTML  */
    assert_string_equal(T_SNIFF("<!doctype html><script>", false), UPLOAD_TYPE_TEXT);
    /*  2-, 3- and 4-byte UTF-8  */
    assert_string_equal(T_SNIFF("gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80", false),
                        UPLOAD_TYPE_TEXT);
}

static void test_upload_sniff_control_bytes_are_not_text(void **state)
{
    (void)state;
    assert_string_equal(T_SNIFF("ab\0cd", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("ab\x01", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("ab\x0b", false), UPLOAD_TYPE_OCTET); /* vertical tab */
    assert_string_equal(T_SNIFF("ab\x1f", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("ab\x7f", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("\x08", false), UPLOAD_TYPE_OCTET);
}

static void test_upload_sniff_bad_utf8_is_not_text(void **state)
{
    (void)state;
    assert_string_equal(T_SNIFF("\xc0\xaf", false), UPLOAD_TYPE_OCTET); /* overlong '/' */
    assert_string_equal(T_SNIFF("\xe0\x80\xaf", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("\xed\xa0\x80", false), UPLOAD_TYPE_OCTET); /* surrogate */
    assert_string_equal(T_SNIFF("\xf4\x90\x80\x80", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("\x80", false), UPLOAD_TYPE_OCTET);
    assert_string_equal(T_SNIFF("\xff", false), UPLOAD_TYPE_OCTET);
    /*  the whole file, cut inside a character: not text  */
    assert_string_equal(T_SNIFF("ab\xe2\x82", false), UPLOAD_TYPE_OCTET);
}

/*  A sequence cut by the 512-byte window is fine when the file goes on;
    an impossible start is not, even there.  */
static void test_upload_sniff_cut_at_the_edge(void **state)
{
    (void)state;
    char buf[T_BIG];
    memset(buf, 'a', sizeof buf);
    memcpy(buf + UPLOAD_SNIFF_BYTES - 2, "\xe2\x82\xac", 3); /* the euro sign across the edge */
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_TEXT);
    assert_string_equal(s_sniff(buf, UPLOAD_SNIFF_BYTES, true), UPLOAD_TYPE_TEXT);
    /*  the file ends there: a cut character is broken text  */
    assert_string_equal(s_sniff(buf, UPLOAD_SNIFF_BYTES, false), UPLOAD_TYPE_OCTET);

    memset(buf, 'a', sizeof buf);
    memcpy(buf + UPLOAD_SNIFF_BYTES - 3, "\xf0\x9f\x98\x80", 4); /* 3 of 4 bytes inside */
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_TEXT);
    memset(buf, 'a', sizeof buf);
    buf[UPLOAD_SNIFF_BYTES - 1] = (char)0xf4; /* needs 80..8F next: possible */
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_TEXT);
    buf[UPLOAD_SNIFF_BYTES - 1] = (char)0xe0; /* needs A0..BF next: possible */
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_TEXT);

    /*  no completion exists: E0 80 is always overlong, ED A0 a surrogate  */
    memset(buf, 'a', sizeof buf);
    memcpy(buf + UPLOAD_SNIFF_BYTES - 2, "\xe0\x80", 2);
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_OCTET);
    memcpy(buf + UPLOAD_SNIFF_BYTES - 2, "\xed\xa0", 2);
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_OCTET);
    memcpy(buf + UPLOAD_SNIFF_BYTES - 2, "a\xc1", 2); /* C1 never starts a character */
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_OCTET);
    memcpy(buf + UPLOAD_SNIFF_BYTES - 2, "a\xf5", 2);
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_OCTET);
}

/*  Only the first 512 bytes count: a NUL after them does not matter.  */
static void test_upload_sniff_window_only(void **state)
{
    (void)state;
    char buf[T_BIG];
    memset(buf, 'x', sizeof buf);
    buf[UPLOAD_SNIFF_BYTES] = 0;
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_TEXT);
    buf[UPLOAD_SNIFF_BYTES - 1] = 0;
    assert_string_equal(s_sniff(buf, sizeof buf, false), UPLOAD_TYPE_OCTET);
}

static void test_upload_sniff_declared_signature_types_must_match(void **state)
{
    (void)state;
    assert_true(s_agrees("image/png", UPLOAD_TYPE_PNG));
    assert_false(s_agrees("image/png", UPLOAD_TYPE_JPEG));
    assert_false(s_agrees("image/png", UPLOAD_TYPE_TEXT));
    assert_false(s_agrees("image/png", UPLOAD_TYPE_OCTET));
    assert_false(s_agrees("image/jpeg", UPLOAD_TYPE_PNG));
    assert_false(s_agrees("image/gif", UPLOAD_TYPE_OCTET));
    assert_false(s_agrees("image/webp", UPLOAD_TYPE_OCTET));
    assert_false(s_agrees("application/pdf", UPLOAD_TYPE_TEXT));
    assert_false(s_agrees("application/zip", UPLOAD_TYPE_OCTET));
    assert_true(s_agrees("application/zip", UPLOAD_TYPE_ZIP));
    /*  parameters, case and blanks do not matter  */
    assert_true(s_agrees("  IMAGE/PNG ; foo=bar", UPLOAD_TYPE_PNG));
    assert_false(s_agrees("Image/Png;x=1", UPLOAD_TYPE_GIF));
}

static void test_upload_sniff_declared_text_must_be_text(void **state)
{
    (void)state;
    assert_true(s_agrees("text/plain", UPLOAD_TYPE_TEXT));
    assert_true(s_agrees("text/plain; charset=utf-8", UPLOAD_TYPE_TEXT));
    assert_false(s_agrees("Text/Plain;charset=utf-8", UPLOAD_TYPE_OCTET));
    assert_false(s_agrees("text/plain", UPLOAD_TYPE_PNG));
}

static void test_upload_sniff_declared_other_types_accepted(void **state)
{
    (void)state;
    const char *others[] = {"",           "application/octet-stream",
                            "text/html",  "image/svg+xml",
                            "x/unknown",  "image/pngx",
                            "image/jpg",  ";",
                            "text/plainx"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        assert_true(s_agrees(others[i], UPLOAD_TYPE_OCTET));
        assert_true(s_agrees(others[i], UPLOAD_TYPE_TEXT));
        assert_true(s_agrees(others[i], UPLOAD_TYPE_PNG));
    }
    assert_true(upload_sniff_agrees(NULL, 0, UPLOAD_TYPE_OCTET));
    /*  the length given counts, not a NUL  */
    assert_true(upload_sniff_agrees("image/pngXYZ", 12, UPLOAD_TYPE_OCTET));
    assert_false(upload_sniff_agrees("image/pngXYZ", 9, UPLOAD_TYPE_OCTET));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upload_sniff_signatures),
        cmocka_unit_test(test_upload_sniff_near_misses),
        cmocka_unit_test(test_upload_sniff_empty_is_octet_stream),
        cmocka_unit_test(test_upload_sniff_text),
        cmocka_unit_test(test_upload_sniff_control_bytes_are_not_text),
        cmocka_unit_test(test_upload_sniff_bad_utf8_is_not_text),
        cmocka_unit_test(test_upload_sniff_cut_at_the_edge),
        cmocka_unit_test(test_upload_sniff_window_only),
        cmocka_unit_test(test_upload_sniff_declared_signature_types_must_match),
        cmocka_unit_test(test_upload_sniff_declared_text_must_be_text),
        cmocka_unit_test(test_upload_sniff_declared_other_types_accepted),
    };
    return cmocka_run_group_tests_name("upload_sniff", tests, NULL, NULL);
}
