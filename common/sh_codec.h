/*  sh_codec.h - message structs and codecs expanded from proto/shoal_proto.h.

    For every operation NAME in SH_OP_LIST this header declares
    sh_NAME_req_t and sh_NAME_rep_t, their codecs sh_NAME_req_codec and
    sh_NAME_rep_codec, and SH_OP_<NAME>. Strings in decoded messages point
    into the buffer that was decoded: they live as long as that buffer.
*/
#ifndef SH_CODEC_H_INCLUDED
#define SH_CODEC_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>

#include "shoal_proto.h"

/*  A length-delimited byte string; not NUL-terminated. Borrowed.  */
typedef struct {
    const char *ptr;
    uint32_t len;
} sh_str_t;

#define SH_STR_NULL ((sh_str_t){NULL, 0})
/*  Borrow a NUL-terminated C string (NULL gives the empty string).  */
sh_str_t sh_str(const char *cstr);
/*  True when the string equals the C string.  */
bool sh_str_eq(sh_str_t s, const char *cstr);
/*  Copy into buf (size bytes, NUL-terminated, truncated). Returns buf.  */
char *sh_str_copy(sh_str_t s, char *buf, size_t size);

#define SH_CTYPE_U64  uint64_t
#define SH_CTYPE_I64  int64_t
#define SH_CTYPE_BOOL bool
#define SH_CTYPE_STR  sh_str_t
#define SH_CTYPE_BIN  sh_str_t

#define SH_GEN_MEMBER(kind, name, max) SH_CTYPE_##kind name;

typedef struct {
    SH_FIELDS_envelope(SH_GEN_MEMBER)
} sh_envelope_t;

/*  Records (sh_<name>_t) and their lists (sh_<name>_list_t).  */
#define SH_GEN_RECORD_TYPES(name, FIELDS, max) \
    typedef struct {                           \
        FIELDS(SH_GEN_MEMBER) uint8_t unused_; \
    } sh_##name##_t;                           \
    typedef struct {                           \
        uint32_t count;                        \
        sh_##name##_t items[max];              \
    } sh_##name##_list_t;
SH_RECORD_LIST(SH_GEN_RECORD_TYPES)

/*  Copy the fields of record `name` (e.g. item) from src to dst, where
    either may be any message whose fields include the record's by name
    (an op reply built with SH_FIELDS_item(F) and more, say).  */
#define SH_GEN_COPY_FIELD(kind, name, max) sh_copy_dst_->name = sh_copy_src_->name;
#define SH_RECORD_COPY(FIELDS, dst, src)      \
    do {                                      \
        __typeof__(dst) sh_copy_dst_ = (dst); \
        __typeof__(src) sh_copy_src_ = (src); \
        FIELDS(SH_GEN_COPY_FIELD)             \
    } while (0)

#define SH_GEN_STATE_ENUM(name, value, word) SH_MEMBER_##name = value,
typedef enum { SH_MEMBER_STATES(SH_GEN_STATE_ENUM) } sh_member_state_t;
#define SH_GEN_CHANGE_ENUM(name, value, word) SH_CHANGE_##name = value,
typedef enum { SH_MEMBER_CHANGES(SH_GEN_CHANGE_ENUM) } sh_member_change_t;

/*  Word for a member state ("up", "busy", ...); "unknown" otherwise.  */
const char *sh_member_state_word(uint64_t state);

/*  Empty field lists still need one member in C.  */
#define SH_GEN_OP_STRUCTS(num, name, REQ, REP, idem) \
    typedef struct {                                 \
        REQ(SH_GEN_MEMBER) uint8_t unused_;          \
    } sh_##name##_req_t;                             \
    typedef struct {                                 \
        REP(SH_GEN_MEMBER) uint8_t unused_;          \
    } sh_##name##_rep_t;
SH_OP_LIST(SH_GEN_OP_STRUCTS)

#define SH_GEN_OP_ENUM(num, name, REQ, REP, idem) SH_OP_##name = num,
typedef enum { SH_OP_LIST(SH_GEN_OP_ENUM) } sh_op_t;

#define SH_GEN_STATUS_ENUM(name, value, http, code) SH_STATUS_##name = value,
typedef enum { SH_STATUS_LIST(SH_GEN_STATUS_ENUM) } sh_status_t;

/*  Decoder results (0 is success).  */
#define SH_DECODE_RESULTS(R)                                            \
    R(TOO_LARGE, -1, "frame exceeds the size limit")                    \
    R(BAD_MSGPACK, -2, "not valid msgpack")                             \
    R(TOO_DEEP, -3, "nesting exceeds the depth limit")                  \
    R(BAD_COUNT, -4, "array or map longer than the limit or the frame") \
    R(NOT_ARRAY, -5, "message is not an array")                         \
    R(BAD_TYPE, -6, "field has the wrong type")                         \
    R(BAD_LENGTH, -7, "string longer than its limit")                   \
    R(TRAILING, -8, "bytes after the message")
#define SH_GEN_DECODE_ENUM(name, value, text) SH_DECODE_##name = value,
enum { SH_DECODE_RESULTS(SH_GEN_DECODE_ENUM) };

typedef int(sh_encode_fn)(const void *msg, msgpack_packer *pk);
typedef int(sh_decode_fn)(void *msg, const msgpack_object *root);

/*  A codec for one message type.  */
typedef struct {
    const char *name;
    size_t size;      /* sizeof the struct */
    size_t max_bytes; /* largest frame the decoder accepts */
    sh_encode_fn *encode;
    sh_decode_fn *decode;
} sh_codec_t;

/*  One operation of SH_OP_LIST.  */
typedef struct {
    uint64_t type;
    const char *name;
    const sh_codec_t *request;
    const sh_codec_t *reply;
    bool idempotent;
} sh_op_info_t;

extern const sh_codec_t sh_envelope_codec;
#define SH_GEN_CODEC_DECL(num, name, REQ, REP, idem) \
    extern const sh_codec_t sh_##name##_req_codec;   \
    extern const sh_codec_t sh_##name##_rep_codec;
SH_OP_LIST(SH_GEN_CODEC_DECL)

extern const sh_op_info_t sh_op_table[];
extern const size_t sh_op_count;

/*  Look up an operation by number; NULL when unknown.  */
const sh_op_info_t *sh_op_find(uint64_t type);

/*  Append the msgpack encoding of msg to buf. Returns 0, or -1 when a
    field exceeds its limit (nothing useful is left in buf then).  */
int sh_codec_encode(const sh_codec_t *codec, const void *msg, msgpack_sbuffer *buf);

/*  Decode data (size bytes) into msg (zeroed first). Returns 0, or a
    negative SH_DECODE_* value for malformed input. Never trusts the input:
    size, depth, counts and string lengths are checked before use.  */
int sh_codec_decode(const sh_codec_t *codec, void *msg, const void *data, size_t size);

/*  Release the calling thread's decoding memory (at thread or process end).  */
void sh_codec_thread_release(void);

/*  Text for a SH_DECODE_* result.  */

const char *sh_codec_strerror(int rc);

/*  HTTP status and JSON code word for a SH_STATUS_* value.  */
int sh_status_http(uint64_t status);
const char *sh_status_code(uint64_t status);

#endif
