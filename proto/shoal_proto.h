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
#define SH_PROTO_MAX_FIELDS   64      /* fields of one message or record */
#define SH_PROTO_MAX_ITEMS    1024    /* elements in one array or map */
#define SH_PROTO_MAX_RAW      16      /* raw frames after the body */

/*  String limits used by the fields below.  */
#define SH_ID_MAX      64  /* request ids, instance names, idempotency keys */
#define SH_TRACE_MAX   55  /* W3C traceparent: 00-<32>-<16>-<2> */
#define SH_ERROR_MAX   256 /* human-readable error text in a reply */
#define SH_SESSION_MAX 64  /* session ids (43 chars base64url today) */
#define SH_NAME_MAX    32  /* service names */
#define SH_ADDR_MAX    255 /* ZeroMQ endpoints, host:port */
#define SH_MEMBERS_MAX 256 /* instances in one membership snapshot */

/*  The board (accounts and items). Text limits are in bytes of UTF-8; the
    query service also checks the limits in characters that users see.  */
#define SH_USERNAME_MAX 32    /* [A-Za-z0-9_.-], 3..32 characters */
#define SH_PASSWORD_MAX 1024  /* 8..256 characters */
#define SH_CSRF_MAX     64    /* CSRF tokens (43 chars base64url today) */
#define SH_RLKEY_MAX    160   /* rate-limit window names */
#define SH_TITLE_MAX    800   /* 1..200 characters */
#define SH_TEXT_MAX     40000 /* item bodies: 0..10,000 characters */
#define SH_SEARCH_MAX   400   /* search text: 0..100 characters */
#define SH_SOURCE_MAX   16    /* where a read was served from */
#define SH_PAGE_MAX     100   /* items in one page */

/*  Uploads and attachments.  */
#define SH_FILENAME_MAX 1024    /* original file names: UTF-8 data, never a path */
#define SH_MIME_MAX     128     /* content types */
#define SH_OBJKEY_MAX   128     /* S3 object keys (made by the upload service) */
#define SH_SHA256_HEX   64      /* a SHA-256 in lowercase hex */
#define SH_CHUNK_MAX    1048576 /* bytes in the raw frame of one upload or read chunk */
#define SH_ATTACH_MAX   100     /* attachments of one item */

/*  Live events (see "Events" in proto/README.md).  */
#define SH_CHANNEL_MAX     64   /* channel names: board, item:<id>, s:<hex>, canary */
#define SH_EVENT_TYPE_MAX  32   /* event names: item_created, views, ... */
#define SH_EVENT_DATA_MAX  8192 /* the event's JSON object */
#define SH_EVENT_RANGE_MAX 100  /* events in one event_range reply */

/*  Envelope kinds.  */
#define SH_KIND_REQUEST 0
#define SH_KIND_REPLY   1
#define SH_KIND_EVENT   2

/*  Reply statuses: S(NAME, value, HTTP status, code word for JSON errors).
    The edge maps them to HTTP; the code word is what browsers see.  */
#define SH_STATUS_LIST(S)                                                                 \
    S(OK, 0, 200, "ok")                                                                   \
    S(INVALID, 1, 400, "invalid")                                                         \
    S(MALFORMED, 2, 400, "malformed")                                                     \
    S(UNAUTHORIZED, 3, 401, "unauthorized")                                               \
    S(FORBIDDEN, 4, 403, "forbidden")                                                     \
    S(NOT_FOUND, 5, 404, "not_found")                                                     \
    S(CONFLICT, 6, 409, "conflict")                                                       \
    S(TOO_LARGE, 7, 413, "too_large")                                                     \
    S(RATE_LIMITED, 8, 429, "rate_limited")                                               \
    S(INTERNAL, 9, 500, "internal")                                                       \
    S(UNSUPPORTED, 10, 501, "unsupported")                                                \
    S(UNAVAILABLE, 11, 503, "unavailable")                                                \
    S(TIMEOUT, 12, 504, "timeout")                                                        \
    S(DRAINING, 13, 503, "draining") /* refused unapplied: the caller may go elsewhere */ \
    S(UNSUPPORTED_TYPE, 14, 415, "unsupported_media_type")

/*  Field kinds: U64 (unsigned), I64 (signed), BOOL, STR (UTF-8 text,
    max bytes), BIN (bytes, max bytes), LIST_<record> (an array of records,
    see SH_RECORD_LIST). The third argument is the limit (0 for numbers,
    booleans and lists, whose limit is the record's).  */

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

/*  metrics: the instance's Prometheus text exposition.  */
#define SH_METRICS_MAX           524288
#define SH_FIELDS_metrics_rep(F) F(STR, text, SH_METRICS_MAX)

#define SH_FIELDS_load_req(F) F(U64, ms, 0) /* CPU time to burn; capped by the service */

#define SH_FIELDS_load_rep(F)          \
    F(U64, ms, 0) /* what was burnt */ \
    F(STR, instance, SH_ID_MAX)

/*  Session service.  A session record as replies carry it.  */
#define SH_FIELDS_session_rep(F)                                      \
    F(STR, id, SH_SESSION_MAX)                                        \
    F(U64, views, 0)                                                  \
    F(I64, created_at, 0) /* ms since the epoch */                    \
    F(I64, last_seen, 0)                                              \
    F(BOOL, created, 0) /* true when this call created the session */ \
    F(U64, user_id, 0)  /* the logged-in user, 0 for none */          \
    F(STR, username, SH_USERNAME_MAX)                                 \
    F(STR, csrf, SH_CSRF_MAX) /* CSRF token of a logged-in session, else "" */

/*  touch: views + 1 and refresh the idle timeout. With create set, a
    missing, expired or empty id creates a new session (new id, views 1).  */
#define SH_FIELDS_session_touch_req(F) \
    F(STR, id, SH_SESSION_MAX)         \
    F(BOOL, create, 0)
#define SH_FIELDS_session_get_req(F)     F(STR, id, SH_SESSION_MAX)
#define SH_FIELDS_session_destroy_req(F) F(STR, id, SH_SESSION_MAX)
#define SH_FIELDS_session_destroy_rep(F) F(BOOL, existed, 0)

/*  login: a new session (new id, new CSRF token) for user_id; the session
    old_id (may be "") is destroyed, so a pre-login id stops working.  */
#define SH_FIELDS_session_login_req(F) \
    F(STR, old_id, SH_SESSION_MAX)     \
    F(U64, user_id, 0)                 \
    F(STR, username, SH_USERNAME_MAX)

/*  ratelimit_hit: count one hit in the fixed window `key` of window_ms;
    allowed is false once more than `limit` hits fell in the window.  */
#define SH_FIELDS_ratelimit_hit_req(F) \
    F(STR, key, SH_RLKEY_MAX)          \
    F(U64, limit, 0)                   \
    F(U64, window_ms, 0)
#define SH_FIELDS_ratelimit_hit_rep(F) \
    F(BOOL, allowed, 0)                \
    F(U64, count, 0)                   \
    F(U64, retry_after_ms, 0) /* until the window ends */

/*  Query service: accounts.  */
#define SH_FIELDS_user_create_req(F)  \
    F(STR, username, SH_USERNAME_MAX) \
    F(STR, password, SH_PASSWORD_MAX)
#define SH_FIELDS_user_login_req(F) SH_FIELDS_user_create_req(F)
#define SH_FIELDS_user_rep(F)         \
    F(U64, id, 0)                     \
    F(STR, username, SH_USERNAME_MAX) \
    F(I64, created_at, 0)

/*  Query service: items. An item as replies carry it (lists carry an
    excerpt of the body).  */
#define SH_FIELDS_item(F)                          \
    F(U64, id, 0)                                  \
    F(U64, author_id, 0)                           \
    F(STR, author, SH_USERNAME_MAX)                \
    F(STR, title, SH_TITLE_MAX)                    \
    F(STR, body, SH_TEXT_MAX)                      \
    F(I64, created_at, 0) /* ms since the epoch */ \
    F(U64, views, 0)      /* item_get: views including this one */

/*  Reads name min_lsn: the caller's last write position (0: none). A read
    is served only from data that has replayed past it.  source says where
    the read was served: "cache", "replica" or "primary".  */
#define SH_FIELDS_item_create_req(F) \
    F(U64, user_id, 0)               \
    F(STR, title, SH_TITLE_MAX)      \
    F(STR, body, SH_TEXT_MAX)
#define SH_FIELDS_item_write_rep(F) \
    SH_FIELDS_item(F) F(U64, lsn, 0) /* WAL position after the write committed */
#define SH_FIELDS_item_get_req(F) \
    F(U64, id, 0)                 \
    F(U64, min_lsn, 0)
#define SH_FIELDS_item_get_rep(F) SH_FIELDS_item(F) F(STR, source, SH_SOURCE_MAX)
#define SH_FIELDS_item_list_req(F)         \
    F(STR, q, SH_SEARCH_MAX)               \
    F(U64, cursor, 0) /* 0: newest page */ \
    F(U64, limit, 0)                       \
    F(U64, min_lsn, 0)
#define SH_FIELDS_item_list_rep(F)                  \
    F(LIST_item, items, 0)                          \
    F(U64, next_cursor, 0) /* 0: no further page */ \
    F(STR, source, SH_SOURCE_MAX)
#define SH_FIELDS_item_delete_req(F) \
    F(U64, id, 0)                    \
    F(U64, user_id, 0)
#define SH_FIELDS_item_delete_rep(F) F(U64, lsn, 0)

/*  Attachments: a file on an item. The row is written only after the
    object is complete in S3; key is the S3 object key, name the client's
    file name (data only), content_type what the bytes were sniffed as.  */
#define SH_FIELDS_attachment(F)       \
    F(U64, id, 0)                     \
    F(U64, item_id, 0)                \
    F(U64, owner_id, 0)               \
    F(STR, owner, SH_USERNAME_MAX)    \
    F(STR, name, SH_FILENAME_MAX)     \
    F(STR, content_type, SH_MIME_MAX) \
    F(U64, size, 0)                   \
    F(STR, sha256, SH_SHA256_HEX)     \
    F(STR, key, SH_OBJKEY_MAX)        \
    F(I64, created_at, 0) /* ms since the epoch */
#define SH_FIELDS_objkey(F) F(STR, key, SH_OBJKEY_MAX)

/*  attachment_create: only the item's author may attach (FORBIDDEN);
    NOT_FOUND without the item; TOO_LARGE when the owner's attachments would
    pass quota bytes (0: no quota) or the item has SH_ATTACH_MAX already.  */
#define SH_FIELDS_attachment_create_req(F) \
    F(U64, user_id, 0)                     \
    F(U64, item_id, 0)                     \
    F(STR, key, SH_OBJKEY_MAX)             \
    F(U64, size, 0)                        \
    F(STR, sha256, SH_SHA256_HEX)          \
    F(STR, content_type, SH_MIME_MAX)      \
    F(STR, name, SH_FILENAME_MAX)          \
    F(U64, quota, 0)
#define SH_FIELDS_attachment_write_rep(F) SH_FIELDS_attachment(F) F(U64, lsn, 0)
#define SH_FIELDS_attachment_get_req(F) \
    F(U64, id, 0)                       \
    F(U64, min_lsn, 0)
#define SH_FIELDS_attachment_get_rep(F) SH_FIELDS_attachment(F) F(STR, source, SH_SOURCE_MAX)
#define SH_FIELDS_attachment_list_req(F) \
    F(U64, item_id, 0)                   \
    F(U64, min_lsn, 0)
#define SH_FIELDS_attachment_list_rep(F) \
    F(LIST_attachment, attachments, 0)   \
    F(STR, source, SH_SOURCE_MAX)
/*  attachment_usage: what a new upload is checked against before its
    bytes move: the user's stored bytes, and who wrote the item.  */
#define SH_FIELDS_attachment_usage_req(F) \
    F(U64, user_id, 0)                    \
    F(U64, item_id, 0)
#define SH_FIELDS_attachment_usage_rep(F) \
    F(U64, used_bytes, 0)                 \
    F(U64, count, 0)                      \
    F(BOOL, item_exists, 0)               \
    F(U64, item_author_id, 0)             \
    F(U64, item_attachments, 0)
/*  attachment_keys: which of these object keys have a row (the sweeper
    deletes objects that have none). Read on the primary.  */
#define SH_FIELDS_attachment_keys_req(F) F(LIST_objkey, keys, 0)
#define SH_FIELDS_attachment_keys_rep(F) F(LIST_objkey, keys, 0)

/*  Upload service. An upload is a stream pinned to one instance: begin
    (the declared size and type) gives a stream id, a chunk size and a
    window; the caller sends upload_chunk requests (offset + one raw frame
    of at most chunk_max bytes, in order) and keeps at most `window` of
    them unanswered: each reply is one credit back. finish completes the
    object; abort (or silence longer than the idle timeout) throws it away.
    Chunks are sniffed: bytes that contradict an allowed declared type get
    UNSUPPORTED_TYPE.  */
#define SH_FIELDS_upload_begin_req(F) \
    F(U64, size, 0)                   \
    F(STR, declared_type, SH_MIME_MAX)
#define SH_FIELDS_upload_begin_rep(F) \
    F(STR, stream, SH_ID_MAX)         \
    F(STR, key, SH_OBJKEY_MAX)        \
    F(U64, chunk_max, 0)              \
    F(U64, window, 0)
#define SH_FIELDS_upload_chunk_req(F) \
    F(STR, stream, SH_ID_MAX)         \
    F(U64, offset, 0)                                      /* of this chunk's first byte */
#define SH_FIELDS_upload_chunk_rep(F)  F(U64, received, 0) /* bytes taken so far */
#define SH_FIELDS_upload_stream_req(F) F(STR, stream, SH_ID_MAX)
#define SH_FIELDS_upload_finish_rep(F) \
    F(STR, key, SH_OBJKEY_MAX)         \
    F(U64, size, 0)                    \
    F(STR, sha256, SH_SHA256_HEX)      \
    F(STR, content_type, SH_MIME_MAX)
#define SH_FIELDS_upload_abort_rep(F) F(BOOL, known, 0)
/*  upload_read: length bytes (at most SH_CHUNK_MAX) of object key from
    offset, in the reply's raw frame; size is the object's whole size.  */
#define SH_FIELDS_upload_read_req(F) \
    F(STR, key, SH_OBJKEY_MAX)       \
    F(U64, offset, 0)                \
    F(U64, length, 0)
#define SH_FIELDS_upload_read_rep(F) \
    F(U64, size, 0)                  \
    F(U64, length, 0)
#define SH_FIELDS_upload_delete_req(F) F(STR, key, SH_OBJKEY_MAX)
/*  upload_presign: a short-lived URL that reads key straight from S3,
    answering with the given Content-Disposition and Content-Type.  */
#define SH_URL_MAX 8192
#define SH_FIELDS_upload_presign_req(F)           \
    F(STR, key, SH_OBJKEY_MAX)                    \
    F(U64, expires_s, 0)                          \
    F(STR, disposition, 16 + 4 * SH_FILENAME_MAX) \
    F(STR, content_type, SH_MIME_MAX)
#define SH_FIELDS_upload_presign_rep(F) F(STR, url, SH_URL_MAX)

/*  Instance states in the registry: S(NAME, value, word).  */
#define SH_MEMBER_STATES(S)                                       \
    S(UP, 0, "up")             /* serving */                      \
    S(BUSY, 1, "busy")         /* alive, at capacity: use last */ \
    S(DRAINING, 2, "draining") /* leaving: no new work */         \
    S(DEAD, 3, "dead")         /* missed its heartbeats or left */

/*  Membership changes a health instance publishes.  */
#define SH_MEMBER_CHANGES(S)                                 \
    S(JOINED, 0, "joined")                                   \
    S(CHANGED, 1, "changed") /* state changed */             \
    S(LEFT, 2, "left")       /* removed from the registry */ \
    S(TICK, 3, "tick")       /* no change: carries the current seq for gap detection */

/*  One instance as the registry knows it.  */
#define SH_FIELDS_member(F)                                                             \
    F(STR, service, SH_NAME_MAX)                                                        \
    F(STR, instance, SH_ID_MAX)                                                         \
    F(STR, version, SH_NAME_MAX)                                                        \
    F(STR, endpoint, SH_ADDR_MAX) /* where requests go (ZeroMQ or HTTP for the edge) */ \
    F(STR, events, SH_ADDR_MAX)   /* where its events are published, if any */          \
    F(U64, state, 0)              /* SH_MEMBER_* */                                     \
    F(U64, capacity, 0)           /* requests it takes at once before it is busy */     \
    F(U64, in_flight, 0)                                                                \
    F(U64, queue, 0)        /* jobs waiting for its workers */                          \
    F(U64, cpu_permille, 0) /* CPU use of the process since the last heartbeat */       \
    F(U64, requests, 0)     /* requests handled since start */                          \
    F(U64, uptime_ms, 0)                                                                \
    F(U64, pid, 0)                                                                      \
    F(U64, rss_bytes, 0)                                                                \
    F(U64, heartbeat_age_ms, 0) /* filled by health */                                  \
    F(U64, rps_milli, 0)        /* filled by health: requests per 1000 s */

/*  Records that appear in lists: R(name, fields, max count). Each needs
    its C type named for the LIST_ field kind.  */
#define SH_RECORD_LIST(R)                              \
    R(member, SH_FIELDS_member, SH_MEMBERS_MAX)        \
    R(item, SH_FIELDS_item, SH_PAGE_MAX)               \
    R(attachment, SH_FIELDS_attachment, SH_ATTACH_MAX) \
    R(objkey, SH_FIELDS_objkey, SH_PAGE_MAX)           \
    R(event, SH_FIELDS_event, SH_EVENT_RANGE_MAX)
#define SH_CTYPE_LIST_member     sh_member_list_t
#define SH_CTYPE_LIST_item       sh_item_list_t
#define SH_CTYPE_LIST_attachment sh_attachment_list_t
#define SH_CTYPE_LIST_objkey     sh_objkey_list_t
#define SH_CTYPE_LIST_event      sh_event_list_t

/*  Health service (registry).  heartbeat registers or refreshes one
    instance with its load; the reply says where membership is published.  */
#define SH_FIELDS_heartbeat_req(F) SH_FIELDS_member(F)
#define SH_FIELDS_heartbeat_rep(F)                                           \
    F(STR, epoch, SH_ID_MAX) /* changes when the health instance restarts */ \
    F(U64, seq, 0)                                                           \
    F(STR, events, SH_ADDR_MAX) /* the health instance's PUB endpoint */     \
    F(STR, instance, SH_ID_MAX)
#define SH_FIELDS_leave_req(F)   \
    F(STR, service, SH_NAME_MAX) \
    F(STR, instance, SH_ID_MAX)
#define SH_FIELDS_leave_rep(F)   F(BOOL, known, 0)
#define SH_FIELDS_members_req(F) F(STR, service, SH_NAME_MAX) /* "" for every service */
#define SH_FIELDS_members_rep(F) \
    F(STR, epoch, SH_ID_MAX)     \
    F(U64, seq, 0)               \
    F(STR, events, SH_ADDR_MAX)  \
    F(STR, instance, SH_ID_MAX)  \
    F(LIST_member, members, 0)

/*  Published on the health PUB socket under topic SH_TOPIC_MEMBERS as
    [topic][envelope kind=EVENT type=member_event][body].  */
#define SH_TOPIC_MEMBERS "members"
#define SH_FIELDS_member_event(F)                                                   \
    F(STR, epoch, SH_ID_MAX)                                                        \
    F(U64, seq, 0)            /* +1 per change; a tick repeats the current value */ \
    F(U64, change, 0)         /* SH_CHANGE_* */                                     \
    F(STR, source, SH_ID_MAX) /* the health instance */                             \
    SH_FIELDS_member(F)
#define SH_FIELDS_empty(F)

/*  Live events. A service publishes each on its PUB socket as
    [topic = channel][envelope kind=EVENT type=event][body]. An event of an
    ordered channel (board, item:<id>) has offset > 0: offsets of one
    channel count 1, 2, 3... within its epoch, are assigned by Redis when
    the event is appended to the channel's history (a Redis stream), and
    reveal gaps. An event with offset 0 is a latest value (a counter): it
    is not kept in history and a newer one replaces it.  */
#define SH_FIELDS_event(F)                                                               \
    F(STR, channel, SH_CHANNEL_MAX)                                                      \
    F(STR, epoch, SH_ID_MAX) /* the channel's history; changes if history is lost */     \
    F(U64, offset, 0)        /* 1, 2, ... in the epoch; 0 for a latest value */          \
    F(STR, type, SH_EVENT_TYPE_MAX)                                                      \
    F(STR, data, SH_EVENT_DATA_MAX) /* a JSON object */                                  \
    F(U64, ts_us, 0)                /* wall clock when it was published, microseconds */ \
    F(STR, source, SH_ID_MAX)       /* the publishing instance */

/*  event_range: what a channel's history holds after offset `after`
    (limit 0: only epoch, first and top).  */
#define SH_FIELDS_event_range_req(F) \
    F(STR, channel, SH_CHANNEL_MAX)  \
    F(U64, after, 0)                 \
    F(U64, limit, 0) /* at most SH_EVENT_RANGE_MAX */
#define SH_FIELDS_event_range_rep(F)                                     \
    F(STR, epoch, SH_ID_MAX) /* "" when the channel has no history */    \
    F(U64, first, 0)         /* oldest offset still kept; 0 when none */ \
    F(U64, top, 0)           /* newest offset assigned */                \
    F(LIST_event, events, 0) /* offsets after `after`, in order */

/*  event_canary: publish an event of type "canary" with data
    {"token": token} on channel "canary" through the same path as every
    ordered event (history append, then PUB).  */
#define SH_FIELDS_event_canary_req(F) F(STR, token, SH_ID_MAX)
#define SH_FIELDS_event_canary_rep(F) F(BOOL, queued, 0) /* waiting for Redis */

/*  Operations: OP(number, name, request fields, reply fields, idempotent).
    Numbers are never reused. "idempotent" says a caller may re-send the
    request to another instance without an idempotency key.  */
#define SH_OP_LIST(OP)                                                                            \
    OP(1, ping, SH_FIELDS_ping_req, SH_FIELDS_ping_rep, 1)                                        \
    OP(2, info, SH_FIELDS_info_req, SH_FIELDS_info_rep, 1)                                        \
    OP(3, load, SH_FIELDS_load_req, SH_FIELDS_load_rep, 1)                                        \
    OP(4, metrics, SH_FIELDS_empty, SH_FIELDS_metrics_rep, 1)                                     \
    OP(10, session_touch, SH_FIELDS_session_touch_req, SH_FIELDS_session_rep, 0)                  \
    OP(11, session_get, SH_FIELDS_session_get_req, SH_FIELDS_session_rep, 1)                      \
    OP(12, session_destroy, SH_FIELDS_session_destroy_req, SH_FIELDS_session_destroy_rep, 1)      \
    OP(13, session_login, SH_FIELDS_session_login_req, SH_FIELDS_session_rep, 0)                  \
    OP(14, ratelimit_hit, SH_FIELDS_ratelimit_hit_req, SH_FIELDS_ratelimit_hit_rep, 1)            \
    OP(20, heartbeat, SH_FIELDS_heartbeat_req, SH_FIELDS_heartbeat_rep, 1)                        \
    OP(21, leave, SH_FIELDS_leave_req, SH_FIELDS_leave_rep, 1)                                    \
    OP(22, members, SH_FIELDS_members_req, SH_FIELDS_members_rep, 1)                              \
    OP(23, member_event, SH_FIELDS_member_event, SH_FIELDS_empty, 1)                              \
    OP(40, user_create, SH_FIELDS_user_create_req, SH_FIELDS_user_rep, 0)                         \
    OP(41, user_login, SH_FIELDS_user_login_req, SH_FIELDS_user_rep, 1)                           \
    OP(42, item_create, SH_FIELDS_item_create_req, SH_FIELDS_item_write_rep, 0)                   \
    OP(43, item_get, SH_FIELDS_item_get_req, SH_FIELDS_item_get_rep, 1)                           \
    OP(44, item_list, SH_FIELDS_item_list_req, SH_FIELDS_item_list_rep, 1)                        \
    OP(45, item_delete, SH_FIELDS_item_delete_req, SH_FIELDS_item_delete_rep, 1)                  \
    OP(46, attachment_create, SH_FIELDS_attachment_create_req, SH_FIELDS_attachment_write_rep, 0) \
    OP(47, attachment_get, SH_FIELDS_attachment_get_req, SH_FIELDS_attachment_get_rep, 1)         \
    OP(48, attachment_list, SH_FIELDS_attachment_list_req, SH_FIELDS_attachment_list_rep, 1)      \
    OP(49, attachment_usage, SH_FIELDS_attachment_usage_req, SH_FIELDS_attachment_usage_rep, 1)   \
    OP(50, attachment_keys, SH_FIELDS_attachment_keys_req, SH_FIELDS_attachment_keys_rep, 1)      \
    OP(60, upload_begin, SH_FIELDS_upload_begin_req, SH_FIELDS_upload_begin_rep, 0)               \
    OP(61, upload_chunk, SH_FIELDS_upload_chunk_req, SH_FIELDS_upload_chunk_rep, 0)               \
    OP(62, upload_finish, SH_FIELDS_upload_stream_req, SH_FIELDS_upload_finish_rep, 0)            \
    OP(63, upload_abort, SH_FIELDS_upload_stream_req, SH_FIELDS_upload_abort_rep, 1)              \
    OP(64, upload_read, SH_FIELDS_upload_read_req, SH_FIELDS_upload_read_rep, 1)                  \
    OP(65, upload_delete, SH_FIELDS_upload_delete_req, SH_FIELDS_empty, 1)                        \
    OP(66, upload_presign, SH_FIELDS_upload_presign_req, SH_FIELDS_upload_presign_rep, 1)         \
    OP(70, event_range, SH_FIELDS_event_range_req, SH_FIELDS_event_range_rep, 1)                  \
    OP(71, event_canary, SH_FIELDS_event_canary_req, SH_FIELDS_event_canary_rep, 1)               \
    OP(72, event, SH_FIELDS_event, SH_FIELDS_empty, 1)

#endif
