/*  test_edge_req.c - the edge's request-field helpers: cookies compared by
    whole name, the read-your-writes token, URL arguments, ids, trusted
    proxy lists with CIDRs, and the client address behind them.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "edge.h"
#include "sh_util.h"

static void test_edge_req_cookie_whole_names(void **state)
{
    (void)state;
    char out[EDGE_COOKIE_MAX];
    assert_int_equal(edge_cookie_get("shoal_sid=abc", "shoal_sid", out, sizeof out), 0);
    assert_string_equal(out, "abc");
    /*  a name that only ends or starts with ours is someone else's  */
    assert_int_equal(
        edge_cookie_get("x_shoal_sid=evil; shoal_sid=good", "shoal_sid", out, sizeof out), 0);
    assert_string_equal(out, "good");
    assert_int_equal(edge_cookie_get("shoal_sid_x=evil", "shoal_sid", out, sizeof out), -1);
    assert_string_equal(out, "");
    /*  both cookies of one header, blanks around pairs ignored  */
    const char *header = "a=1;  shoal_lsn=42 ; shoal_sid=s1d,other=2";
    assert_int_equal(edge_cookie_get(header, "shoal_lsn", out, sizeof out), 0);
    assert_string_equal(out, "42");
    assert_int_equal(edge_cookie_get(header, "shoal_sid", out, sizeof out), 0);
    assert_string_equal(out, "s1d");
    /*  the first of two wins; an empty value is a value  */
    assert_int_equal(edge_cookie_get("shoal_sid=1; shoal_sid=2", "shoal_sid", out, sizeof out), 0);
    assert_string_equal(out, "1");
    assert_int_equal(edge_cookie_get("shoal_sid=", "shoal_sid", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(edge_cookie_get("", "shoal_sid", out, sizeof out), -1);
    assert_int_equal(edge_cookie_get("shoal_sid", "shoal_sid", out, sizeof out), -1);
}

static void test_edge_req_cookie_too_long_is_absent(void **state)
{
    (void)state;
    char small[4];
    assert_int_equal(edge_cookie_get("shoal_sid=abcd", "shoal_sid", small, sizeof small), -1);
    assert_string_equal(small, "");
    assert_int_equal(edge_cookie_get("shoal_sid=abc", "shoal_sid", small, sizeof small), 0);
    assert_string_equal(small, "abc");
}

static void test_edge_req_lsn_invalid_is_zero(void **state)
{
    (void)state;
    assert_int_equal(edge_lsn_parse("123456789"), 123456789);
    assert_int_equal(edge_lsn_parse("9223372036854775807"), INT64_MAX);
    const char *bad[] = {"",
                         "0",
                         "-1",
                         "+5",
                         " 5",
                         "5 ",
                         "1e3",
                         "0x10",
                         "abc",
                         "12a",
                         "9223372036854775808",
                         "99999999999999999999999"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad); i++)
        assert_int_equal(edge_lsn_parse(bad[i]), 0);
    assert_int_equal(edge_lsn_parse(NULL), 0);
}

static void test_edge_req_ids_digits_only(void **state)
{
    (void)state;
    uint64_t id = 0;
    assert_int_equal(edge_parse_id("7", &id), 0);
    assert_int_equal(id, 7);
    assert_int_equal(edge_parse_id("007", &id), 0);
    assert_int_equal(id, 7);
    const char *bad[] = {"", "0", "-7", "+7", "7/", "7.0", " 7", "seven", "18446744073709551616"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad); i++)
        assert_int_equal(edge_parse_id(bad[i], &id), -1);
}

static void test_edge_req_args_by_name(void **state)
{
    (void)state;
    static const char args[] = "q=a&b c\0cursor=12\0limit=\0flag\0qq=no";
    size_t len = sizeof args; /* every entry ends with its NUL */
    assert_string_equal(edge_arg_find(args, len, "q"), "a&b c");
    assert_string_equal(edge_arg_find(args, len, "cursor"), "12");
    assert_string_equal(edge_arg_find(args, len, "limit"), "");
    assert_string_equal(edge_arg_find(args, len, "flag"), "");
    assert_string_equal(edge_arg_find(args, len, "qq"), "no");
    assert_null(edge_arg_find(args, len, "cur"));
    assert_null(edge_arg_find(args, len, "missing"));
    assert_null(edge_arg_find(NULL, 0, "q"));
}

static void test_edge_req_proxy_list_checked(void **state)
{
    (void)state;
    char bad[64];
    assert_int_equal(edge_proxies_check("", bad, sizeof bad), 0);
    assert_int_equal(edge_proxies_check(" 10.0.0.1 , 10.0.0.0/8,fd00::/8, ::1 ", bad, sizeof bad),
                     0);
    const char *wrong[] = {"10.0.0.0/33", "fd00::/129",   "10.0.0.0/",
                           "10.0.0.0/-1", "10.0.0.0/8x",  "10.0.0",
                           "example.com", "10.0.0.1/8/8", "1.2.3.4 5.6.7.8"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(wrong); i++) {
        char list[96];
        snprintf(list, sizeof list, "127.0.0.1,%s", wrong[i]);
        assert_int_equal(edge_proxies_check(list, bad, sizeof bad), -1);
        assert_string_equal(bad, wrong[i]);
    }
}

static void test_edge_req_cidr_match(void **state)
{
    (void)state;
    const char *list = "10.1.0.0/16, 192.168.1.7, 2001:db8::/32, 172.16.0.0/12";
    assert_true(edge_ip_in_list("10.1.255.3", list));
    assert_false(edge_ip_in_list("10.2.0.1", list));
    assert_true(edge_ip_in_list("192.168.1.7", list));
    assert_false(edge_ip_in_list("192.168.1.8", list));
    assert_true(edge_ip_in_list("172.31.255.255", list));
    assert_false(edge_ip_in_list("172.32.0.0", list));
    assert_true(edge_ip_in_list("2001:db8:ffff::1", list));
    assert_false(edge_ip_in_list("2001:db9::1", list));
    /*  an IPv4-mapped IPv6 peer matches IPv4 rules  */
    assert_true(edge_ip_in_list("::ffff:10.1.2.3", list));
    assert_true(edge_ip_in_list("1.2.3.4", "0.0.0.0/0"));
    assert_false(edge_ip_in_list("::1", "0.0.0.0/0"));
    assert_false(edge_ip_in_list("10.1.2.3", ""));
    assert_false(edge_ip_in_list("not an address", list));
    /*  a prefix that is not a multiple of 8  */
    assert_true(edge_ip_in_list("10.0.0.127", "10.0.0.0/25"));
    assert_false(edge_ip_in_list("10.0.0.128", "10.0.0.0/25"));
}

static void test_edge_req_client_ip_behind_trusted_proxy(void **state)
{
    (void)state;
    char ip[EDGE_IP_MAX];
    const char *trusted = "10.0.0.0/8";
    /*  a trusted peer: the last X-Forwarded-For entry is the client  */
    assert_string_equal(edge_client_ip("10.0.0.5", "6.6.6.6, 1.2.3.4", trusted, ip, sizeof ip),
                        "1.2.3.4");
    assert_string_equal(edge_client_ip("10.0.0.5", " 2001:DB8::1 ", trusted, ip, sizeof ip),
                        "2001:db8::1");
    assert_string_equal(edge_client_ip("10.0.0.5", "::ffff:1.2.3.4", trusted, ip, sizeof ip),
                        "1.2.3.4");
    /*  an untrusted peer: a forged header changes nothing  */
    assert_string_equal(edge_client_ip("8.8.8.8", "1.2.3.4", trusted, ip, sizeof ip), "8.8.8.8");
    assert_string_equal(edge_client_ip("8.8.8.8", "1.2.3.4", "", ip, sizeof ip), "8.8.8.8");
    /*  no header, or a last entry that is not an address: the peer  */
    assert_string_equal(edge_client_ip("10.0.0.5", NULL, trusted, ip, sizeof ip), "10.0.0.5");
    assert_string_equal(edge_client_ip("10.0.0.5", "", trusted, ip, sizeof ip), "10.0.0.5");
    assert_string_equal(edge_client_ip("10.0.0.5", "1.2.3.4, unknown", trusted, ip, sizeof ip),
                        "10.0.0.5");
    assert_string_equal(edge_client_ip("10.0.0.5", "1.2.3.4,", trusted, ip, sizeof ip), "10.0.0.5");
}

static void test_edge_req_lowercase_ascii(void **state)
{
    (void)state;
    char out[SH_USERNAME_MAX + 1];
    edge_lowercase("Alice.B_9-X", 11, out, sizeof out);
    assert_string_equal(out, "alice.b_9-x");
    edge_lowercase("ABCDEF", 3, out, sizeof out);
    assert_string_equal(out, "abc");
    char tiny[3];
    edge_lowercase("ABCDEF", 6, tiny, sizeof tiny);
    assert_string_equal(tiny, "ab");
}

static void test_edge_req_file_names_decoded_strictly(void **state)
{
    (void)state;
    char out[SH_FILENAME_MAX + 1];
    const char *why = NULL;
    assert_int_equal(edge_file_name_decode("report%20(1).pdf", out, sizeof out, &why), 14);
    assert_string_equal(out, "report (1).pdf");
    /*  a traversal is data: decoded as written, never a path  */
    assert_int_equal(edge_file_name_decode("..%2F..%2Fetc%2Fpasswd", out, sizeof out, &why), 16);
    assert_string_equal(out, "../../etc/passwd");
    assert_int_equal(edge_file_name_decode("%E2%82%AC.txt", out, sizeof out, &why), 7);
    /*  NUL, CR/LF, DEL, overlong '.', a lone surrogate, bad escapes, empty  */
    const char *bad[] = {"a%00b",     "a%0D%0Ab", "a%7F", "a%C2%85b", "%C0%AE%C0%AE",
                         "%ED%A0%80", "50%",      "%4",   "%G0",      ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why = NULL;
        assert_int_equal(edge_file_name_decode(bad[i], out, sizeof out, &why), -1);
        assert_non_null(why);
    }
    /*  1024 bytes pass, 1025 do not  */
    char name[SH_FILENAME_MAX + 2];
    memset(name, 'a', sizeof name - 1);
    name[SH_FILENAME_MAX] = 0;
    assert_int_equal(edge_file_name_decode(name, out, sizeof out, &why), SH_FILENAME_MAX);
    name[SH_FILENAME_MAX] = 'a';
    name[SH_FILENAME_MAX + 1] = 0;
    assert_int_equal(edge_file_name_decode(name, out, sizeof out, &why), -1);
}

static void test_edge_req_content_disposition_is_safe(void **state)
{
    (void)state;
    char out[64 + SH_FILENAME_MAX * 4];
    assert_int_equal(edge_content_disposition("report.pdf", out, sizeof out), 0);
    assert_string_equal(out, "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf");
    assert_int_equal(edge_content_disposition("a \"b\"\\c/d;e%f.txt", out, sizeof out), 0);
    assert_string_equal(out, "attachment; filename=\"a _b__c_d;e_f.txt\"; "
                             "filename*=UTF-8''a%20%22b%22%5Cc%2Fd%3Be%25f.txt");
    assert_int_equal(edge_content_disposition("\xe2\x82\xac", out, sizeof out), 0);
    assert_string_equal(out, "attachment; filename=\"___\"; filename*=UTF-8''%E2%82%AC");
    /*  does not fit  */
    assert_int_equal(edge_content_disposition("report.pdf", out, 20), -1);
}

static void test_edge_req_ranges(void **state)
{
    (void)state;
    uint64_t a = 0, b = 0;
    assert_int_equal(edge_range_parse("bytes=0-9", 100, &a, &b), 1);
    assert_true(a == 0 && b == 9);
    assert_int_equal(edge_range_parse("bytes=90-", 100, &a, &b), 1);
    assert_true(a == 90 && b == 99);
    assert_int_equal(edge_range_parse("bytes=-10", 100, &a, &b), 1);
    assert_true(a == 90 && b == 99);
    assert_int_equal(edge_range_parse("bytes=-1000", 100, &a, &b), 1);
    assert_true(a == 0 && b == 99);
    assert_int_equal(edge_range_parse("bytes=50-1000", 100, &a, &b), 1);
    assert_true(a == 50 && b == 99);
    /*  unsatisfiable  */
    assert_int_equal(edge_range_parse("bytes=100-", 100, &a, &b), -1);
    assert_int_equal(edge_range_parse("bytes=-0", 100, &a, &b), -1);
    assert_int_equal(edge_range_parse("bytes=0-", 0, &a, &b), -1);
    /*  the whole object: none, several, other units, junk, reversed  */
    const char *whole[] = {"",
                           "bytes=0-1,5-6",
                           "items=0-1",
                           "bytes=a-b",
                           "bytes=-",
                           "bytes=9-1",
                           "bytes=99999999999999999999-"};
    for (size_t i = 0; i < sizeof whole / sizeof whole[0]; i++)
        assert_int_equal(edge_range_parse(whole[i], 100, &a, &b), 0);
    assert_int_equal(edge_range_parse(NULL, 100, &a, &b), 0);
}

static void test_edge_req_ws_proof_binds_session_user_and_time(void **state)
{
    (void)state;
    unsigned char key[EDGE_SECRET_BYTES], other_key[EDGE_SECRET_BYTES];
    memset(key, 7, sizeof key);
    memset(other_key, 8, sizeof other_key);
    char proof[EDGE_COOKIE_MAX];
    edge_ws_proof_make(key, "sid-A", 42, 1000, proof, sizeof proof);
    assert_int_equal(edge_ws_proof_check(key, "sid-A", proof, 999), 42);
    assert_int_equal(edge_ws_proof_check(key, "sid-A", proof, 1000), 42);
    /*  expired, another session, another key  */
    assert_int_equal(edge_ws_proof_check(key, "sid-A", proof, 1001), 0);
    assert_int_equal(edge_ws_proof_check(key, "sid-B", proof, 999), 0);
    assert_int_equal(edge_ws_proof_check(other_key, "sid-A", proof, 999), 0);
    assert_int_equal(edge_ws_proof_check(key, "", proof, 999), 0);
    /*  the user id and the expiry are signed: changing either breaks it  */
    char forged[EDGE_COOKIE_MAX];
    snprintf(forged, sizeof forged, "43%s", proof + 2);
    assert_int_equal(edge_ws_proof_check(key, "sid-A", forged, 999), 0);
    snprintf(forged, sizeof forged, "%.3s9%s", proof, proof + 4);
    assert_int_equal(edge_ws_proof_check(key, "sid-A", forged, 999), 0);
    /*  malformed  */
    const char *bad[] = {"",
                         "42",
                         "42.1000",
                         "42.1000.",
                         "x.1000.AAAA",
                         "42.-1.AAAA",
                         "42.1000.!!!!",
                         "0.1000.AAAA",
                         "42.99999999999999999999999.AAAA"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(edge_ws_proof_check(key, "sid-A", bad[i], 0), 0);
    /*  a truncated signature  */
    snprintf(forged, sizeof forged, "%.*s", (int)strlen(proof) - 2, proof);
    assert_int_equal(edge_ws_proof_check(key, "sid-A", forged, 999), 0);
}

static void test_edge_req_origin_listed_whole_entries(void **state)
{
    (void)state;
    const char *list = "https://a.example, http://b.example:8080 ,https://c.example";
    assert_true(edge_origin_listed(list, "https://a.example"));
    assert_true(edge_origin_listed(list, "http://b.example:8080"));
    assert_true(edge_origin_listed(list, "https://c.example"));
    /*  whole entries only: no prefixes, suffixes, other schemes or ports  */
    assert_false(edge_origin_listed(list, "https://a.exampl"));
    assert_false(edge_origin_listed(list, "https://a.example.evil"));
    assert_false(edge_origin_listed(list, "http://a.example"));
    assert_false(edge_origin_listed(list, "http://b.example"));
    assert_false(edge_origin_listed(list, ""));
    assert_false(edge_origin_listed("", "https://a.example"));
    assert_false(edge_origin_listed(",, ,", ""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_req_cookie_whole_names),
        cmocka_unit_test(test_edge_req_cookie_too_long_is_absent),
        cmocka_unit_test(test_edge_req_lsn_invalid_is_zero),
        cmocka_unit_test(test_edge_req_ids_digits_only),
        cmocka_unit_test(test_edge_req_args_by_name),
        cmocka_unit_test(test_edge_req_proxy_list_checked),
        cmocka_unit_test(test_edge_req_cidr_match),
        cmocka_unit_test(test_edge_req_client_ip_behind_trusted_proxy),
        cmocka_unit_test(test_edge_req_lowercase_ascii),
        cmocka_unit_test(test_edge_req_file_names_decoded_strictly),
        cmocka_unit_test(test_edge_req_content_disposition_is_safe),
        cmocka_unit_test(test_edge_req_ranges),
        cmocka_unit_test(test_edge_req_ws_proof_binds_session_user_and_time),
        cmocka_unit_test(test_edge_req_origin_listed_whole_entries),
    };
    return cmocka_run_group_tests_name("edge_req", tests, NULL, NULL);
}
