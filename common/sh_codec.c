/*  sh_codec.c - the generic msgpack codec behind every Shoal message.

    The per-message encode/decode functions are expanded from the X-macros
    in proto/shoal_proto.h; each is a straight list of calls to the typed
    put/get helpers below. Decoding happens in two steps: a bounds pre-scan
    that rejects frames whose declared array/map lengths exceed what the
    frame could hold (msgpack-c allocates the declared length up front, so
    a 5-byte frame could otherwise ask for hundreds of megabytes) or whose
    nesting is too deep, then msgpack-c's unpacker and a typed walk.
*/
#include <assert.h>
#include <string.h>

#include "sh_codec.h"

sh_str_t sh_str(const char *cstr)
{
    sh_str_t s = {cstr ? cstr : "", cstr ? (uint32_t)strlen(cstr) : 0};
    return s;
}

bool sh_str_eq(sh_str_t s, const char *cstr)
{
    size_t n = strlen(cstr);
    return s.len == n && (n == 0 || memcmp(s.ptr, cstr, n) == 0);
}

char *sh_str_copy(sh_str_t s, char *buf, size_t size)
{
    assert(size > 0);
    size_t n = s.len < size - 1 ? s.len : size - 1;
    if (n)
        memcpy(buf, s.ptr, n);
    buf[n] = 0;
    return buf;
}

/*  --- Encoding: one put per field kind ---------------------------------  */

static int s_put_U64(msgpack_packer *pk, const uint64_t *v, uint32_t max)
{
    (void)max;
    return msgpack_pack_uint64(pk, *v);
}

static int s_put_I64(msgpack_packer *pk, const int64_t *v, uint32_t max)
{
    (void)max;
    return msgpack_pack_int64(pk, *v);
}

static int s_put_BOOL(msgpack_packer *pk, const bool *v, uint32_t max)
{
    (void)max;
    return *v ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

static int s_put_STR(msgpack_packer *pk, const sh_str_t *v, uint32_t max)
{
    if (v->len > max)
        return -1;
    if (msgpack_pack_str(pk, v->len))
        return -1;
    return v->len ? msgpack_pack_str_body(pk, v->ptr, v->len) : 0;
}

__attribute__((unused)) static int s_put_BIN(msgpack_packer *pk, const sh_str_t *v, uint32_t max)
{
    if (v->len > max)
        return -1;
    if (msgpack_pack_bin(pk, v->len))
        return -1;
    return v->len ? msgpack_pack_bin_body(pk, v->ptr, v->len) : 0;
}

/*  --- Decoding: a cursor over the top-level array ----------------------  */

typedef struct {
    const msgpack_object *items;
    uint32_t count;
    uint32_t next;
} s_cursor_t;

/*  Next element, or NULL when the sender sent fewer fields (older
    version): the field keeps its zero value.  */
static const msgpack_object *s_next(s_cursor_t *cur)
{
    return cur->next < cur->count ? &cur->items[cur->next++] : NULL;
}

static int s_get_U64(s_cursor_t *cur, uint64_t *v, uint32_t max)
{
    (void)max;
    const msgpack_object *o = s_next(cur);
    if (!o)
        return 0;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return SH_DECODE_BAD_TYPE;
    *v = o->via.u64;
    return 0;
}

static int s_get_I64(s_cursor_t *cur, int64_t *v, uint32_t max)
{
    (void)max;
    const msgpack_object *o = s_next(cur);
    if (!o)
        return 0;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *v = o->via.i64;
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
        *v = (int64_t)o->via.u64;
    else
        return SH_DECODE_BAD_TYPE;
    return 0;
}

static int s_get_BOOL(s_cursor_t *cur, bool *v, uint32_t max)
{
    (void)max;
    const msgpack_object *o = s_next(cur);
    if (!o)
        return 0;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return SH_DECODE_BAD_TYPE;
    *v = o->via.boolean;
    return 0;
}

static int s_get_bytes(s_cursor_t *cur, sh_str_t *v, uint32_t max, msgpack_object_type type)
{
    const msgpack_object *o = s_next(cur);
    if (!o)
        return 0;
    if (o->type != type)
        return SH_DECODE_BAD_TYPE;
    /*  str and bin share their layout in msgpack_object  */
    uint32_t len = type == MSGPACK_OBJECT_STR ? o->via.str.size : o->via.bin.size;
    const char *ptr = type == MSGPACK_OBJECT_STR ? o->via.str.ptr : o->via.bin.ptr;
    if (len > max)
        return SH_DECODE_BAD_LENGTH;
    v->ptr = len ? ptr : "";
    v->len = len;
    return 0;
}

static int s_get_STR(s_cursor_t *cur, sh_str_t *v, uint32_t max)
{
    return s_get_bytes(cur, v, max, MSGPACK_OBJECT_STR);
}

__attribute__((unused)) static int s_get_BIN(s_cursor_t *cur, sh_str_t *v, uint32_t max)
{
    return s_get_bytes(cur, v, max, MSGPACK_OBJECT_BIN);
}

static int s_open(s_cursor_t *cur, const msgpack_object *root)
{
    if (root->type != MSGPACK_OBJECT_ARRAY)
        return SH_DECODE_NOT_ARRAY;
    cur->items = root->via.array.ptr;
    cur->count = root->via.array.size;
    cur->next = 0;
    return 0;
}

/*  --- Expansion of the model -------------------------------------------  */

#define SH_GEN_COUNT(kind, name, max) +1
#define SH_GEN_PUT(kind, name, max)        \
    if (s_put_##kind(pk, &msg->name, max)) \
        return -1;
#define SH_GEN_GET(kind, name, max)                      \
    if ((rc = s_get_##kind(&cur, &msg->name, max)) != 0) \
        return rc;

#define SH_GEN_CODEC(tname, FIELDS, limit)                                        \
    static int s_encode_##tname(const void *msg_, msgpack_packer *pk)             \
    {                                                                             \
        const sh_##tname##_t *msg = msg_;                                         \
        (void)msg;                                                                \
        if (msgpack_pack_array(pk, 0 FIELDS(SH_GEN_COUNT)))                       \
            return -1;                                                            \
        FIELDS(SH_GEN_PUT)                                                        \
        return 0;                                                                 \
    }                                                                             \
    static int s_decode_##tname(void *msg_, const msgpack_object *root)           \
    {                                                                             \
        sh_##tname##_t *msg = msg_;                                               \
        s_cursor_t cur;                                                           \
        int rc = s_open(&cur, root);                                              \
        (void)msg;                                                                \
        if (rc)                                                                   \
            return rc;                                                            \
        FIELDS(SH_GEN_GET)                                                        \
        return 0;                                                                 \
    }                                                                             \
    const sh_codec_t sh_##tname##_codec = {#tname, sizeof(sh_##tname##_t), limit, \
                                           s_encode_##tname, s_decode_##tname};

/*  Records first: their codecs back the LIST_<record> field kind.  */
#define SH_GEN_RECORD_CODEC(name, FIELDS, max)                                                     \
    SH_GEN_CODEC(name, FIELDS, SH_PROTO_MAX_BODY)                                                  \
    static int s_put_LIST_##name(msgpack_packer *pk, const sh_##name##_list_t *v, uint32_t unused) \
    {                                                                                              \
        (void)unused;                                                                              \
        if (v->count > (max) || msgpack_pack_array(pk, v->count))                                  \
            return -1;                                                                             \
        for (uint32_t i = 0; i < v->count; i++)                                                    \
            if (s_encode_##name(&v->items[i], pk))                                                 \
                return -1;                                                                         \
        return 0;                                                                                  \
    }                                                                                              \
    static int s_get_LIST_##name(s_cursor_t *cur, sh_##name##_list_t *v, uint32_t unused)          \
    {                                                                                              \
        (void)unused;                                                                              \
        const msgpack_object *o = s_next(cur);                                                     \
        if (!o)                                                                                    \
            return 0;                                                                              \
        if (o->type != MSGPACK_OBJECT_ARRAY)                                                       \
            return SH_DECODE_BAD_TYPE;                                                             \
        if (o->via.array.size > (max))                                                             \
            return SH_DECODE_BAD_COUNT;                                                            \
        for (uint32_t i = 0; i < o->via.array.size; i++) {                                         \
            int rc = s_decode_##name(&v->items[i], &o->via.array.ptr[i]);                          \
            if (rc)                                                                                \
                return rc;                                                                         \
        }                                                                                          \
        v->count = o->via.array.size;                                                              \
        return 0;                                                                                  \
    }
SH_RECORD_LIST(SH_GEN_RECORD_CODEC)

SH_GEN_CODEC(envelope, SH_FIELDS_envelope, SH_PROTO_MAX_ENVELOPE)

#define SH_GEN_OP_CODECS(num, name, REQ, REP, idem)  \
    SH_GEN_CODEC(name##_req, REQ, SH_PROTO_MAX_BODY) \
    SH_GEN_CODEC(name##_rep, REP, SH_PROTO_MAX_BODY)
SH_OP_LIST(SH_GEN_OP_CODECS)

#define SH_GEN_OP_ROW(num, name, REQ, REP, idem) \
    {num, #name, &sh_##name##_req_codec, &sh_##name##_rep_codec, idem},
const sh_op_info_t sh_op_table[] = {SH_OP_LIST(SH_GEN_OP_ROW)};
const size_t sh_op_count = sizeof(sh_op_table) / sizeof(sh_op_table[0]);

const sh_op_info_t *sh_op_find(uint64_t type)
{
    for (size_t i = 0; i < sh_op_count; i++)
        if (sh_op_table[i].type == type)
            return &sh_op_table[i];
    return NULL;
}

/*  --- Bounds pre-scan ---------------------------------------------------  */

/*  Reads a big-endian unsigned of n bytes; caller checked the bounds.  */
static uint64_t s_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/*  Walks the msgpack structure without allocating. Each container's
    declared element count must fit in the bytes that remain (every element
    takes at least one byte) and in SH_PROTO_MAX_ITEMS; nesting must stay
    within SH_PROTO_MAX_DEPTH; exactly one object must fill the frame.  */
static int s_prescan(const uint8_t *p, size_t size)
{
    /*  pending[d] = elements still to read at depth d  */
    uint64_t pending[SH_PROTO_MAX_DEPTH + 1];
    int depth = 0;
    size_t pos = 0;
    pending[0] = 1;
    while (depth >= 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        pending[depth]--;
        if (pos >= size)
            return SH_DECODE_BAD_MSGPACK;
        uint8_t b = p[pos++];
        uint64_t skip = 0, count = 0;
        int is_container = 0, lenbytes = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            skip = 0;
        else if (b >= 0x80 && b <= 0x8f)
            count = (uint64_t)(b & 0x0f) * 2, is_container = 1;
        else if (b >= 0x90 && b <= 0x9f)
            count = b & 0x0f, is_container = 1;
        else if (b >= 0xa0 && b <= 0xbf)
            skip = b & 0x1f;
        else {
            switch (b) {
            case 0xc4:
            case 0xd9:
                lenbytes = 1;
                break; /* bin8, str8 */
            case 0xc5:
            case 0xda:
                lenbytes = 2;
                break;
            case 0xc6:
            case 0xdb:
                lenbytes = 4;
                break;
            case 0xc7:
                lenbytes = 1, skip = 1;
                break; /* ext: + type byte */
            case 0xc8:
                lenbytes = 2, skip = 1;
                break;
            case 0xc9:
                lenbytes = 4, skip = 1;
                break;
            case 0xca:
                skip = 4;
                break;
            case 0xcb:
                skip = 8;
                break;
            case 0xcc:
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xd4:
                skip = 2;
                break; /* fixext: type + data */
            case 0xd5:
                skip = 3;
                break;
            case 0xd6:
                skip = 5;
                break;
            case 0xd7:
                skip = 9;
                break;
            case 0xd8:
                skip = 17;
                break;
            case 0xdc:
                lenbytes = 2, is_container = 1;
                break;
            case 0xdd:
                lenbytes = 4, is_container = 1;
                break;
            case 0xde:
                lenbytes = 2, is_container = 2;
                break;
            case 0xdf:
                lenbytes = 4, is_container = 2;
                break;
            default:
                return SH_DECODE_BAD_MSGPACK; /* 0xc1 is never used */
            }
            if (lenbytes) {
                if (size - pos < (size_t)lenbytes)
                    return SH_DECODE_BAD_MSGPACK;
                uint64_t n = s_be(p + pos, lenbytes);
                pos += lenbytes;
                if (is_container)
                    count = is_container == 2 ? n * 2 : n;
                else
                    skip += n;
            }
        }
        if (is_container) {
            if (count > SH_PROTO_MAX_ITEMS * 2 || count > size - pos)
                return SH_DECODE_BAD_COUNT;
            if (count) {
                if (depth + 1 > SH_PROTO_MAX_DEPTH)
                    return SH_DECODE_TOO_DEEP;
                pending[++depth] = count;
            }
        } else {
            if (skip > size - pos)
                return SH_DECODE_BAD_MSGPACK;
            pos += skip;
        }
    }
    return pos == size ? 0 : SH_DECODE_TRAILING;
}

/*  --- Public entry points -----------------------------------------------  */

int sh_codec_encode(const sh_codec_t *codec, const void *msg, msgpack_sbuffer *buf)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, buf, msgpack_sbuffer_write);
    return codec->encode(msg, &pk) ? -1 : 0;
}

static _Thread_local msgpack_zone s_zone;
static _Thread_local bool s_zone_ready;

void sh_codec_thread_release(void)
{
    if (s_zone_ready) {
        msgpack_zone_destroy(&s_zone);
        s_zone_ready = false;
    }
}

int sh_codec_decode(const sh_codec_t *codec, void *msg, const void *data, size_t size)
{

    memset(msg, 0, codec->size);
    if (size > codec->max_bytes)
        return SH_DECODE_TOO_LARGE;
    int rc = s_prescan(data, size);
    if (rc)
        return rc;
    /*  one zone per thread, cleared after each decode: no allocation per
        message once the zone has grown to the largest one seen  */
    if (!s_zone_ready) {
        if (!msgpack_zone_init(&s_zone, MSGPACK_ZONE_CHUNK_SIZE))
            return SH_DECODE_TOO_LARGE;
        s_zone_ready = true;
    }
    msgpack_object root;
    size_t off = 0;
    if (msgpack_unpack(data, size, &off, &s_zone, &root) != MSGPACK_UNPACK_SUCCESS)
        rc = SH_DECODE_BAD_MSGPACK;
    else
        rc = codec->decode(msg, &root);
    msgpack_zone_clear(&s_zone);

    if (rc)
        memset(msg, 0, codec->size);
    return rc;
}

const char *sh_codec_strerror(int rc)
{
#define SH_GEN_DECODE_TEXT(name, value, text) \
    case value:                               \
        return text;
    switch (rc) {
    case 0:
        return "ok";
        SH_DECODE_RESULTS(SH_GEN_DECODE_TEXT)
    }
    return "unknown decode error";
}

int sh_status_http(uint64_t status)
{
#define SH_GEN_STATUS_HTTP(name, value, http, code) \
    case value:                                     \
        return http;
    switch (status) {
        SH_STATUS_LIST(SH_GEN_STATUS_HTTP)
    }
    return 500;
}

const char *sh_member_state_word(uint64_t state)
{
#define SH_GEN_STATE_WORD(name, value, word) \
    case value:                              \
        return word;
    switch (state) {
        SH_MEMBER_STATES(SH_GEN_STATE_WORD)
    }
    return "unknown";
}

const char *sh_status_code(uint64_t status)
{
#define SH_GEN_STATUS_CODE(name, value, http, code) \
    case value:                                     \
        return code;
    switch (status) {
        SH_STATUS_LIST(SH_GEN_STATUS_CODE)
    }
    return "internal";
}
