/*  test_codec.c - every message of proto/shoal_proto.h round-trips, and
    malformed input of every shape is reported, never trusted.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sh_codec.h"

static char s_text[SH_PROTO_MAX_BODY];
static sh_members_rep_t s_big;

/*  Fill a field with a value that exercises its limit.  */
static void t_fill_U64(uint64_t *v, uint32_t max)
{
    (void)max;
    *v = UINT64_MAX - 7;
}
static void t_fill_I64(int64_t *v, uint32_t max)
{
    (void)max;
    *v = INT64_MIN + 3;
}
static void t_fill_BOOL(bool *v, uint32_t max)
{
    (void)max;
    *v = true;
}
static void t_fill_STR(sh_str_t *v, uint32_t max)
{
    v->ptr = s_text;
    v->len = max;
}
static void t_fill_STR(sh_str_t *v, uint32_t max);
static void t_fill_U64(uint64_t *v, uint32_t max);
/*  A list at its limit (or as many records as fit in a body frame), every
    record at its limits.  */
static void t_check_STR(const sh_str_t *a, const sh_str_t *b);
static void t_check_U64(const uint64_t *a, const uint64_t *b);
static void t_check_I64(const int64_t *a, const int64_t *b);
static void t_check_BOOL(const bool *a, const bool *b);
static void t_fill_I64(int64_t *v, uint32_t max);
#define T_RECORD_BYTES(kind, name, limit) +(limit) + 9
#define T_LIST_CODEC(rname, FIELDS, max)                                                         \
    static void t_fill_LIST_##rname(sh_##rname##_list_t *v, uint32_t unused)                     \
    {                                                                                            \
        (void)unused;                                                                            \
        size_t fit = (SH_PROTO_MAX_BODY - 64) / (size_t)(1 FIELDS(T_RECORD_BYTES));              \
        v->count = (uint32_t)(fit < (max) ? fit : (max));                                        \
        for (uint32_t i = 0; i < v->count; i++) {                                                \
            sh_##rname##_t *m = &v->items[i];                                                    \
            FIELDS(T_FILL_RECORD)                                                                \
        }                                                                                        \
    }                                                                                            \
    static void t_check_LIST_##rname(const sh_##rname##_list_t *a, const sh_##rname##_list_t *b) \
    {                                                                                            \
        assert_int_equal(a->count, b->count);                                                    \
        for (uint32_t i = 0; i < a->count; i++) {                                                \
            FIELDS(T_CHECK_RECORD)                                                               \
        }                                                                                        \
    }
#define T_FILL_RECORD(kind, name, limit)  t_fill_##kind(&m->name, limit);
#define T_CHECK_RECORD(kind, name, limit) t_check_##kind(&a->items[i].name, &b->items[i].name);
SH_RECORD_LIST(T_LIST_CODEC)

static void t_check_U64(const uint64_t *a, const uint64_t *b)
{
    assert_true(*a == *b);
}
static void t_check_I64(const int64_t *a, const int64_t *b)
{
    assert_true(*a == *b);
}
static void t_check_BOOL(const bool *a, const bool *b)
{
    assert_int_equal(*a, *b);
}
static void t_check_STR(const sh_str_t *a, const sh_str_t *b)
{
    assert_int_equal(a->len, b->len);
    assert_memory_equal(a->ptr, b->ptr, a->len);
}

#define T_FILL(kind, name, max)  t_fill_##kind(&msg.name, max);
#define T_CHECK(kind, name, max) t_check_##kind(&msg.name, &back.name);
#define T_COUNT(kind, name, max) +1

/*  For each message: round trip at the limits, and a string one byte over
    its limit is refused by the encoder.  */
#define T_ROUNDTRIP(tname, FIELDS)                                                             \
    static void test_codec_roundtrip_##tname(void **state)                                     \
    {                                                                                          \
        (void)state;                                                                           \
        sh_##tname##_t msg, back;                                                              \
        memset(&msg, 0, sizeof msg);                                                           \
        FIELDS(T_FILL)                                                                         \
        msgpack_sbuffer buf;                                                                   \
        msgpack_sbuffer_init(&buf);                                                            \
        assert_int_equal(sh_codec_encode(&sh_##tname##_codec, &msg, &buf), 0);                 \
        assert_int_equal(sh_codec_decode(&sh_##tname##_codec, &back, buf.data, buf.size), 0);  \
        FIELDS(T_CHECK)                                                                        \
        /*  every strict prefix is malformed, never a crash  */                                \
        for (size_t n = 0; n < buf.size; n++)                                                  \
            assert_int_not_equal(sh_codec_decode(&sh_##tname##_codec, &back, buf.data, n), 0); \
        msgpack_sbuffer_destroy(&buf);                                                         \
    }
#define T_OP_ROUNDTRIPS(num, name, REQ, REP, idem) \
    T_ROUNDTRIP(name##_req, REQ)                   \
    T_ROUNDTRIP(name##_rep, REP)
T_ROUNDTRIP(envelope, SH_FIELDS_envelope)
SH_OP_LIST(T_OP_ROUNDTRIPS)

static void test_codec_encode_refuses_string_over_limit(void **state)
{
    (void)state;
    sh_envelope_t env = {0};
    env.request_id.ptr = s_text;
    env.request_id.len = SH_ID_MAX + 1;
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    assert_int_equal(sh_codec_encode(&sh_envelope_codec, &env, &buf), -1);
    msgpack_sbuffer_destroy(&buf);
}

static int s_decode_bytes(const sh_codec_t *codec, const char *bytes, size_t len)
{
    _Alignas(max_align_t) char out[2048];
    assert_true(codec->size <= sizeof out);
    return sh_codec_decode(codec, out, bytes, len);
}

static void test_codec_rejects_malformed_shapes(void **state)
{
    (void)state;
    const sh_codec_t *env = &sh_envelope_codec;
    /*  empty, a bare integer, a map, nil  */
    assert_int_equal(s_decode_bytes(env, "", 0), SH_DECODE_BAD_MSGPACK);
    assert_int_equal(s_decode_bytes(env, "\x01", 1), SH_DECODE_NOT_ARRAY);
    assert_int_equal(s_decode_bytes(env, "\x81\x01\x02", 3), SH_DECODE_NOT_ARRAY);
    assert_int_equal(s_decode_bytes(env, "\xc0", 1), SH_DECODE_NOT_ARRAY);
    /*  0xc1 is never valid msgpack  */
    assert_int_equal(s_decode_bytes(env, "\x91\xc1", 2), SH_DECODE_BAD_MSGPACK);
    /*  a field of the wrong type: version as a string  */
    assert_int_equal(s_decode_bytes(env, "\x91\xa1x", 3), SH_DECODE_BAD_TYPE);
    /*  negative where unsigned is required  */
    assert_int_equal(s_decode_bytes(env, "\x91\xff", 2), SH_DECODE_BAD_TYPE);
    /*  trailing bytes after the message  */
    assert_int_equal(s_decode_bytes(env, "\x90\x00", 2), SH_DECODE_TRAILING);
}

static void test_codec_rejects_declared_lengths_beyond_frame(void **state)
{
    (void)state;
    /*  array32 declaring 4 billion elements in 5 bytes: refused before any
        allocation  */
    assert_int_equal(s_decode_bytes(&sh_envelope_codec, "\xdd\xff\xff\xff\xff", 5),
                     SH_DECODE_BAD_COUNT);
    /*  map32 likewise  */
    assert_int_equal(s_decode_bytes(&sh_envelope_codec, "\xdf\x00\x10\x00\x00", 5),
                     SH_DECODE_BAD_COUNT);
    /*  str32 longer than the frame  */
    assert_int_equal(s_decode_bytes(&sh_envelope_codec, "\x91\xdb\x00\x00\x10\x00", 6),
                     SH_DECODE_BAD_MSGPACK);
    /*  more elements than any message has, even if bytes were there  */
    size_t n = SH_PROTO_MAX_ITEMS * 2 + 1;
    char *wide = calloc(1, 3 + n);
    assert_non_null(wide);
    wide[0] = (char)0xdc;
    wide[1] = (char)(n >> 8);
    wide[2] = (char)(n & 0xff);
    assert_int_equal(sh_codec_decode(&sh_members_rep_codec, &s_big, wide, 3 + n),
                     SH_DECODE_BAD_COUNT);
    free(wide);
}

static void test_codec_rejects_deep_nesting(void **state)
{
    (void)state;
    char deep[64];
    memset(deep, 0x91, sizeof deep); /* [[[[...]]]] */
    deep[sizeof deep - 1] = 0x00;
    assert_int_equal(s_decode_bytes(&sh_envelope_codec, deep, sizeof deep), SH_DECODE_TOO_DEEP);
}

static void test_codec_rejects_oversized_frames(void **state)
{
    (void)state;
    size_t size = SH_PROTO_MAX_ENVELOPE + 1;
    char *big = calloc(1, size);
    assert_non_null(big);
    assert_int_equal(s_decode_bytes(&sh_envelope_codec, big, size), SH_DECODE_TOO_LARGE);
    free(big);
}

static void test_codec_rejects_string_over_field_limit(void **state)
{
    (void)state;
    /*  session_get_req {id: 65 bytes} (limit 64)  */
    char frame[3 + 2 + SH_SESSION_MAX + 1];
    frame[0] = (char)0x91;
    frame[1] = (char)0xd9;
    frame[2] = (char)(SH_SESSION_MAX + 1);
    memset(frame + 3, 'a', SH_SESSION_MAX + 1);
    assert_int_equal(s_decode_bytes(&sh_session_get_req_codec, frame, 3 + SH_SESSION_MAX + 1),
                     SH_DECODE_BAD_LENGTH);
    frame[2] = (char)SH_SESSION_MAX;
    assert_int_equal(s_decode_bytes(&sh_session_get_req_codec, frame, 3 + SH_SESSION_MAX), 0);
}

static void test_codec_tolerates_older_and_newer_senders(void **state)
{
    (void)state;
    /*  an older sender: fewer fields; the rest decode as zero  */
    sh_envelope_t env;
    assert_int_equal(sh_codec_decode(&sh_envelope_codec, &env, "\x92\x01\x01", 3), 0);
    assert_true(env.version == 1 && env.kind == 1 && env.type == 0);
    assert_int_equal(env.request_id.len, 0);
    /*  a newer sender: one field more than we know is ignored  */
    sh_ping_req_t ping;
    assert_int_equal(sh_codec_decode(&sh_ping_req_codec, &ping, "\x91\x2a", 2), 0);
}

static void test_codec_op_table_is_consistent(void **state)
{
    (void)state;
    for (size_t i = 0; i < sh_op_count; i++) {
        assert_ptr_equal(sh_op_find(sh_op_table[i].type), &sh_op_table[i]);
        for (size_t j = i + 1; j < sh_op_count; j++)
            assert_true(sh_op_table[i].type != sh_op_table[j].type);
    }
    assert_null(sh_op_find(999999));
    assert_int_equal(sh_status_http(SH_STATUS_UNAVAILABLE), 503);
    assert_string_equal(sh_status_code(SH_STATUS_NOT_FOUND), "not_found");
    assert_int_equal(sh_status_http(12345), 500);
}

#define T_TEST(tname)                         cmocka_unit_test(test_codec_roundtrip_##tname),
#define T_OP_TESTS(num, name, REQ, REP, idem) T_TEST(name##_req) T_TEST(name##_rep)

int main(void)
{
    memset(s_text, 'x', sizeof s_text);
    const struct CMUnitTest tests[] = {
        T_TEST(envelope) SH_OP_LIST(T_OP_TESTS)
            cmocka_unit_test(test_codec_encode_refuses_string_over_limit),
        cmocka_unit_test(test_codec_rejects_malformed_shapes),
        cmocka_unit_test(test_codec_rejects_declared_lengths_beyond_frame),
        cmocka_unit_test(test_codec_rejects_deep_nesting),
        cmocka_unit_test(test_codec_rejects_oversized_frames),
        cmocka_unit_test(test_codec_rejects_string_over_field_limit),
        cmocka_unit_test(test_codec_tolerates_older_and_newer_senders),
        cmocka_unit_test(test_codec_op_table_is_consistent),
    };
    return cmocka_run_group_tests_name("codec", tests, NULL, NULL);
}
