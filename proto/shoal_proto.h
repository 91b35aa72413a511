/*  shoal_proto.h - the message model: every message Shoal sends over ZeroMQ.

    This file is the single source of truth for the wire protocol. It holds
    only X-macro definitions; common/sh_codec.[ch] expands them into C
    structs, field descriptor tables and one generic msgpack codec. Nobody
    packs or unpacks a message by hand.

    Wire format (see proto/README.md): a request or reply is a ZeroMQ
    multipart message [envelope][body][raw frames...]; envelope and body are
    each a msgpack array whose elements are the fields below, in order.

    Evolution rules: fields are append-only. A decoder ignores trailing
    fields it does not know and gives fields a sender did not send their
    zero value. Changing the meaning or type of a field, or reusing an
    operation number, requires a new SH_PROTO_VERSION.
*/
#ifndef SHOAL_PROTO_H_INCLUDED
#define SHOAL_PROTO_H_INCLUDED

#define SH_PROTO_VERSION 1

/*  Limits every decoder enforces before it looks at a field.  */
#define SH_PROTO_MAX_ENVELOPE 4096    /* bytes in an envelope frame */
#define SH_PROTO_MAX_BODY     1048576 /* bytes in a body frame */
#define SH_PROTO_MAX_DEPTH    4       /* nesting of arrays/maps */
#define SH_PROTO_MAX_FIELDS   64      /* elements in one array */
#define SH_PROTO_MAX_RAW      16      /* raw frames after the body */

/*  String limits used by the fields below.  */
#define SH_ID_MAX      64  /* request ids, instance names, idempotency keys */
#define SH_TRACE_MAX   55  /* W3C traceparent: 00-<32>-<16>-<2> */
#define SH_ERROR_MAX   256 /* human-readable error text in a reply */
#define SH_SESSION_MAX 64  /* session ids (43 chars base64url today) */
#define SH_NAME_MAX    32  /* service names */

/*  Envelope kinds.  */
#define SH_KIND_REQUEST 0
#define SH_KIND_REPLY   1
#define SH_KIND_EVENT   2

/*  Reply statuses: S(NAME, value, HTTP status, code word for JSON errors).
    The edge maps them to HTTP; the code word is what browsers see.  */
#define SH_STATUS_LIST(S)                   \
    S(OK, 0, 200, "ok")                     \
    S(INVALID, 1, 400, "invalid")           \
    S(MALFORMED, 2, 400, "malformed")       \
    S(UNAUTHORIZED, 3, 401, "unauthorized") \
    S(FORBIDDEN, 4, 403, "forbidden")       \
    S(NOT_FOUND, 5, 404, "not_found")       \
    S(CONFLICT, 6, 409, "conflict")         \
    S(TOO_LARGE, 7, 413, "too_large")       \
    S(RATE_LIMITED, 8, 429, "rate_limited") \
    S(INTERNAL, 9, 500, "internal")         \
    S(UNSUPPORTED, 10, 501, "unsupported")  \
    S(UNAVAILABLE, 11, 503, "unavailable")  \
    S(TIMEOUT, 12, 504, "timeout")

/*  Field kinds: U64 (unsigned), I64 (signed), BOOL, STR (UTF-8 text,
    max bytes), BIN (bytes, max bytes). The third argument is the limit
    (0 for numbers and booleans).  */

/*  The envelope every request, reply and event carries.  */
#define SH_FIELDS_envelope(F)                                                           \
    F(U64, version, 0)                /* SH_PROTO_VERSION of the sender */              \
    F(U64, kind, 0)                   /* SH_KIND_* */                                   \
    F(U64, type, 0)                   /* operation number, SH_OP_LIST */                \
    F(STR, request_id, SH_ID_MAX)     /* set by the first hop, echoed in the reply */   \
    F(U64, deadline_ms, 0)            /* absolute, ms since the Unix epoch; 0 = none */ \
    F(STR, traceparent, SH_TRACE_MAX) /* W3C trace context */                           \
    F(STR, session, SH_SESSION_MAX)   /* the caller's session id, if any */             \
    F(STR, idem_key, SH_ID_MAX)       /* idempotency key for writes */                  \
    F(U64, status, 0)                 /* reply: SH_STATUS_* */                          \
    F(STR, error, SH_ERROR_MAX)       /* reply: error text when status != OK */         \
    F(STR, instance, SH_ID_MAX)       /* reply: the instance that answered */

/*  Standard operations every service answers.  */
#define SH_FIELDS_ping_req(F)
#define SH_FIELDS_ping_rep(F)    \
    F(STR, service, SH_NAME_MAX) \
    F(STR, instance, SH_ID_MAX)  \
    F(U64, uptime_ms, 0)

#define SH_FIELDS_info_req(F)
#define SH_FIELDS_info_rep(F)    \
    F(STR, service, SH_NAME_MAX) \
    F(STR, instance, SH_ID_MAX)  \
    F(STR, version, SH_NAME_MAX) \
    F(U64, pid, 0)               \
    F(U64, uptime_ms, 0)         \
    F(U64, rss_bytes, 0)         \
    F(U64, requests, 0)          \
    F(U64, errors, 0)            \
    F(U64, in_flight, 0)

#define SH_FIELDS_load_req(F) F(U64, ms, 0) /* CPU time to burn; capped by the service */
#define SH_FIELDS_load_rep(F)          \
    F(U64, ms, 0) /* what was burnt */ \
    F(STR, instance, SH_ID_MAX)

/*  Session service.  A session record as replies carry it.  */
#define SH_FIELDS_session_rep(F)                   \
    F(STR, id, SH_SESSION_MAX)                     \
    F(U64, views, 0)                               \
    F(I64, created_at, 0) /* ms since the epoch */ \
    F(I64, last_seen, 0)                           \
    F(BOOL, created, 0) /* true when this call created the session */

/*  touch: views + 1 and refresh the idle timeout. With create set, a
    missing, expired or empty id creates a new session (new id, views 1).  */
#define SH_FIELDS_session_touch_req(F) \
    F(STR, id, SH_SESSION_MAX)         \
    F(BOOL, create, 0)
#define SH_FIELDS_session_get_req(F)     F(STR, id, SH_SESSION_MAX)
#define SH_FIELDS_session_destroy_req(F) F(STR, id, SH_SESSION_MAX)
#define SH_FIELDS_session_destroy_rep(F) F(BOOL, existed, 0)

/*  Operations: OP(number, name, request fields, reply fields, idempotent).
    Numbers are never reused. "idempotent" says a caller may re-send the
    request to another instance without an idempotency key.  */
#define SH_OP_LIST(OP)                                                           \
    OP(1, ping, SH_FIELDS_ping_req, SH_FIELDS_ping_rep, 1)                       \
    OP(2, info, SH_FIELDS_info_req, SH_FIELDS_info_rep, 1)                       \
    OP(3, load, SH_FIELDS_load_req, SH_FIELDS_load_rep, 1)                       \
    OP(10, session_touch, SH_FIELDS_session_touch_req, SH_FIELDS_session_rep, 0) \
    OP(11, session_get, SH_FIELDS_session_get_req, SH_FIELDS_session_rep, 1)     \
    OP(12, session_destroy, SH_FIELDS_session_destroy_req, SH_FIELDS_session_destroy_rep, 1)

#endif
