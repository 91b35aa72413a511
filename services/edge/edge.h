/*  edge.h - the edge: HTTP in front, ZeroMQ behind.

    edge_http.c is the only module that includes libwebsockets: it accepts
    connections, reads request bodies, copies requests into edge_req_t,
    serves static files and writes edge_resp_t replies. edge_api.c holds
    the operator routes (health, session, load, metrics, cluster) and the
    reply helpers; edge_board.c the board's routes (accounts, items).
    Both talk to services through sh_pool. edge_req.c has the pure helpers
    that read request fields (cookies, arguments, client address).

    Live updates: edge_ws.c (the second module that includes libwebsockets)
    holds the WebSocket connections of /ws - checks at the upgrade, the
    JSON messages, limits and each connection's bounded queue.
    edge_events.c holds the channels: it subscribes to every instance
    that publishes events, orders each channel's events by offset, fills
    gaps from the history, replays what a resuming client missed, and
    checks delivery end to end with canary events (readiness).
*/
#ifndef EDGE_H_INCLUDED
#define EDGE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sh_config.h"
#include "sh_metrics.h"
#include "sh_pool.h"
#include "sh_registry.h"
#include "sh_transport.h"
#include "sh_workers.h"

#define EDGE_COOKIE_NAME   "shoal_sid"
#define EDGE_LSN_COOKIE    "shoal_lsn" /* read-your-writes token */
#define EDGE_LSN_MAX_AGE_S 300
#define EDGE_COOKIE_MAX    128
#define EDGE_HEADER_SMALL  256
#define EDGE_IP_MAX        46 /* INET6_ADDRSTRLEN */
#define EDGE_RESP_HEADERS  8
#define EDGE_RETRY_AFTER_S 1
#define EDGE_WS_COOKIE     "shoal_ws" /* proof that the session was checked */
#define EDGE_WS_PRE        16         /* bytes before a WebSocket message (LWS_PRE) */
#define EDGE_SECRET_BYTES  32

typedef struct {
    sh_base_config_t base;
    char *http_addr;
    int64_t http_port;
    char *session_endpoints;
    char *query_endpoints;
    char *static_dir;
    int64_t request_timeout_ms;
    bool cookie_secure;
    int64_t cookie_max_age;
    char *allowed_origins;
    int64_t max_body_bytes;
    int64_t max_header_bytes;
    int64_t max_connections;
    int64_t drain_grace_ms;
    char *trusted_proxies;
    int64_t login_ip_limit;
    int64_t login_account_limit;
    int64_t login_window_s;
    int64_t signup_ip_limit;
    int64_t signup_window_s;
    char *upload_endpoints;
    int64_t upload_max_bytes;
    int64_t upload_quota_bytes;
    int64_t upload_timeout_ms;
    int64_t upload_finish_timeout_ms;
    char *download_mode; /* "stream" (through the edge) or "presigned" (302 to S3) */
    int64_t download_url_ttl_s;
    char *edge_secret; /* hex; signs the WebSocket proof cookie */
    int64_t ws_proof_ttl_s;
    int64_t ws_max_connections;
    int64_t ws_connect_rate;
    int64_t ws_max_message_bytes;
    int64_t ws_message_rate;
    int64_t ws_max_channels;
    int64_t ws_queue_bytes;
    int64_t ws_ping_s;
    int64_t ws_pong_timeout_s;
    int64_t events_canary_ms;
    int64_t events_ready_timeout_ms;
    int64_t events_gap_wait_ms;
    char *event_endpoints;
} edge_config_t;

typedef enum {
    EDGE_GET,
    EDGE_HEAD,
    EDGE_POST,
    EDGE_PUT,
    EDGE_PATCH,
    EDGE_DELETE,
    EDGE_OPTIONS,
    EDGE_OTHER
} edge_method_t;

typedef struct edge_conn_t edge_conn_t;
typedef struct edge_t edge_t;

/*  CPU burnt on a worker thread for /api/load?service=edge. The worker
    reads only ms; conn is the loop's and is NULLed if the client leaves.  */
typedef struct {
    uint64_t ms;
    edge_conn_t *conn;
} edge_job_t;

/*  A request, copied out of libwebsockets when its headers arrived; valid
    during edge_api_handle only (routes copy what a later reply needs).  */
typedef struct {
    edge_method_t method;
    const char *path;
    char cookie[EDGE_COOKIE_MAX]; /* value of the session cookie, "" if none */
    uint64_t lsn;                 /* shoal_lsn cookie; 0 if absent or invalid */
    char origin[EDGE_HEADER_SMALL];
    char host[EDGE_HEADER_SMALL];
    char fetch_site[32];
    char csrf[EDGE_HEADER_SMALL]; /* X-CSRF-Token, "" if absent or too long */
    char client_ip[EDGE_IP_MAX];  /* TCP peer, or per SHOAL_TRUSTED_PROXIES */
    const char *args;             /* URL arguments, decoded: "k=v\0k=v\0" */
    size_t args_len;
    const char *body; /* the request body, NUL-terminated ("" without one) */
    size_t body_len;
    int64_t content_length; /* -1 when absent */
    bool streamed;          /* the body is not read: the route takes it (edge_http_body_sink) */
    char content_type[SH_MIME_MAX + 1]; /* "" if absent or too long */
    char range[EDGE_HEADER_SMALL];      /* Range */
    char if_none_match[EDGE_HEADER_SMALL];
    const char *file_name; /* X-File-Name as sent (percent-encoded), "" if absent */
    edge_conn_t *conn;
    int64_t started_us;
} edge_req_t;

/*  A reply. Strings are copied by edge_http_respond.  */
typedef struct {
    int status;
    const char *content_type;
    const char *body;
    size_t body_len;
    const char *header_names[EDGE_RESP_HEADERS]; /* "retry-after:" style, NULL-ended */
    const char *header_values[EDGE_RESP_HEADERS];
} edge_resp_t;

/*  Where a streamed request body goes (edge_http_body_sink). data gets
    each piece as it arrives (returns 0, or -1 to stop reading); done runs
    once the whole body arrived; closed when the client went away before
    the reply (the sink is dropped after it).  */
typedef struct {
    int (*data)(void *arg, const void *bytes, size_t len);
    void (*done)(void *arg);
    void (*closed)(void *arg);
    void *arg;
} edge_body_sink_t;

/*  Where a streamed response body comes from (edge_http_stream_begin).
    more runs when the connection has room for more bytes (push them with
    edge_http_stream_push, now or later); ended once, when the last byte
    was written or the client went away (not after edge_http_stream_abort).  */
typedef struct {
    void (*more)(void *arg);
    void (*ended)(void *arg);
    void *arg;
} edge_body_source_t;

/*  One message for WebSocket clients, shared by every connection that
    queues it (refcounted): EDGE_WS_PRE bytes for the frame header, then
    len bytes of JSON. A latest value (a counter) carries a key: a newer
    message with the same key replaces it in a queue.  */
typedef struct {
    int refs;
    uint64_t key; /* 0: ordered, never replaced */
    size_t len;
    unsigned char bytes[];
} edge_msg_t;

typedef struct edge_ws_t edge_ws_t;
typedef struct edge_events_t edge_events_t;

struct edge_t {
    edge_config_t *config;
    sh_metrics_t *metrics;
    sh_pool_t *sessions;
    sh_pool_t *queries;
    sh_pool_t *uploads;
    bool queries_known; /* query instances are configured or the registry named one */
    sh_pool_t *scrape;  /* every non-edge instance, for /metrics/cluster */

    sh_registry_t *registry; /* NULL without health endpoints */
    sh_workers_t *workers;
    int64_t started_ms;
    int64_t last_beat_ms;
    char advertised[SH_ENDPOINT_MAX];
    int signal_fd; /* reads SIGTERM/SIGINT; -1 if it could not be made */
    bool draining;
    bool stop;
    int64_t drain_started_ms;
    uint64_t *http_requests;
    uint64_t *http_rejected;
    uint64_t *late_replies;
    int64_t *connections;
    sh_histogram_t *latency;
    unsigned char secret[EDGE_SECRET_BYTES];
    edge_events_t *events;
};

/*  --- edge_http.c ---  */
/*  Start listening; returns 0 or -1 (logged).  */
int edge_http_start(edge_t *edge);
/*  Serve until edge->stop; then close everything. Returns 0.  */
int edge_http_run(edge_t *edge);
/*  Queue the reply for the connection (the request is over after it).  */
void edge_http_respond(edge_conn_t *conn, const edge_resp_t *resp);
/*  Remember the pool call a connection waits for (cancelled if it closes).  */
void edge_http_await(edge_conn_t *conn, sh_pool_t *pool, uint64_t handle);
/*  Remember the worker job a connection waits for (detached if it closes).  */
void edge_http_await_job(edge_conn_t *conn, edge_job_t *job);
/*  True for the requests whose body the route streams instead of the edge
    reading it first (POST /api/uploads).  */
bool edge_http_streams_body(edge_method_t method, const char *path);
/*  Take the body of a streamed request piece by piece. Reading starts
    paused: call edge_http_body_pause(conn, false) when ready.  */
void edge_http_body_sink(edge_conn_t *conn, const edge_body_sink_t *sink);
/*  Stop (true) or go on (false) reading the request body: back-pressure.  */
void edge_http_body_pause(edge_conn_t *conn, bool pause);
/*  Start a response whose body of length bytes is streamed from source
    (resp's body is ignored; HEAD sends the headers only). Returns 0 or -1
    (answered 500).  */
int edge_http_stream_begin(edge_conn_t *conn, const edge_resp_t *resp, uint64_t length,
                           const edge_body_source_t *source);
/*  Queue len bytes of the body (copied). Returns 0, or -1 when memory ran
    out or more than the announced length was pushed (the connection is
    closed).  */
int edge_http_stream_push(edge_conn_t *conn, const void *bytes, size_t len);
/*  Bytes queued and not yet written.  */
size_t edge_http_stream_queued(const edge_conn_t *conn);
/*  The body cannot be completed: close the connection (the client sees a
    short body against its Content-Length).  */
void edge_http_stream_abort(edge_conn_t *conn);

/*  --- edge_json.c ---  */
/*  Append text (len bytes of UTF-8) as a quoted, escaped JSON string.
    Returns 0, or -1 when text is not UTF-8 or memory ran out.  */
int edge_json_str(sh_buf_t *buf, const char *text, size_t len);
/*  Append an item as a JSON object: id, title, body (or, unless whole,
    "excerpt"), author, author_id, created_at, and views when whole.
    Returns 0 or -1.  */
int edge_json_item(sh_buf_t *buf, const sh_item_t *item, bool whole);
/*  Append an attachment as a JSON object (id, item_id, owner_id, owner,
    name, content_type, size, sha256, created_at, url); the object key
    stays inside. Returns 0 or -1.  */
int edge_json_attachment(sh_buf_t *buf, const sh_attachment_t *file);

/*  --- edge_api.c ---  */
struct json_t; /* jansson's; only edge_api.c and edge_board.c see inside */

/*  Route one request under /api, /health or /metrics. Returns 1 when it
    took the request, 0 when the path is not an API path (static files).  */
int edge_api_handle(edge_t *edge, edge_req_t *req);
/*  Reply with a JSON error {"error": {"code", "message"}}; a 503 carries
    Retry-After.  */
void edge_api_error(edge_t *edge, edge_req_t *req, int status, const char *code,
                    const char *message);
/*  The same with Retry-After: retry_after_s (none when 0).  */
void edge_api_error_after(edge_t *edge, edge_req_t *req, int status, const char *code,
                          const char *message, int64_t retry_after_s);
/*  Reply 405 with Allow: allow.  */
void edge_api_method_not_allowed(edge_t *edge, edge_req_t *req, const char *allow);
/*  Reply with the error a failed service call came back with (status
    mapped to HTTP and to the error codes browsers know).  */
void edge_api_call_error(edge_t *edge, edge_req_t *req, const sh_reply_t *reply);
/*  Reply with JSON body (taken: freed here; NULL answers 500) and up to
    EDGE_RESP_HEADERS - 1 extra headers (names NULL-ended, may be NULL).  */
/*  Reply with JSON text already written (NULL text: a 500, as when a
    reply could not be built); names/values as for edge_api_json.  */
void edge_api_json_text(edge_req_t *req, int status, const char *text, size_t len,
                        const char **names, const char **values);
void edge_api_json(edge_req_t *req, int status, struct json_t *body, const char **names,
                   const char **values);
/*  True when a state-changing request comes from our own pages: no
    cross-site Sec-Fetch-Site, and Origin absent, the request's own host or
    listed in SHOAL_ALLOWED_ORIGINS.  */
bool edge_api_same_origin(edge_t *edge, const edge_req_t *req);
/*  Set-Cookie value for cookie `name` with the edge's attributes.  */
void edge_api_cookie(edge_t *edge, const char *name, const char *value, long max_age, char *out,
                     size_t size);
/*  A new W3C traceparent into out (SH_TRACE_MAX + 1 bytes).  */
void edge_api_traceparent(char *out);
/*  Send this edge's heartbeat to the registry (no-op without one).  */
void edge_api_beat(edge_t *edge);
/*  Count a finished request for metrics.  */
void edge_api_count(edge_t *edge, int status, int64_t started_us);
/*  Calls in flight to every service pool.  */
int64_t edge_api_in_flight(const edge_t *edge);

/*  --- edge_board.c ---  */
/*  Route /api/auth/..., /api/me and /api/items...: returns 1 when it took
    the request, 0 when the path is not one of the board's.  */
int edge_board_handle(edge_t *edge, edge_req_t *req);

/*  --- edge_upload.c ---  */
/*  Route POST /api/uploads, GET|HEAD /api/uploads/<id> and GET
    /api/items/<id>/attachments: 1 when taken, else 0.  */
int edge_upload_handle(edge_t *edge, edge_req_t *req);

/*  Check the caller is logged in (and, with need_csrf, sent the session's
    CSRF token), then call fn exactly once: with the user, or with user_id
    0 when the check failed (401/403/503 already answered here) or the
    client left meanwhile - then fn only cleans up.  */
typedef void(edge_user_fn)(void *arg, uint64_t user_id, const char *username);
void edge_board_with_user(edge_t *edge, edge_req_t *req, bool need_csrf, edge_user_fn *fn,
                          void *arg);

/*  --- edge_ws.c ---  */
/*  Queue msg for the client (a reference is taken). Returns 0, or -1 when
    the connection is closing (a laggard past its queue bound is closed
    here with 4001).  */
int edge_ws_send(edge_ws_t *ws, edge_msg_t *msg);
/*  Send json (a jansson value, taken: freed here; NULL sends nothing) as
    a text message for this connection only.  */
void edge_ws_send_json(edge_ws_t *ws, struct json_t *json);
/*  Send a text message built for this connection only. 0 or -1.  */
int edge_ws_send_text(edge_ws_t *ws, const char *text, size_t len);
/*  Close with code and reason (the connection ends after queued messages
    are dropped).  */
void edge_ws_close(edge_ws_t *ws, int code, const char *reason);
/*  The connection's session channel (s:<hex>) and user.  */
const char *edge_ws_session_channel(const edge_ws_t *ws);
/*  Where edge_events keeps the connection's subscriptions.  */
void **edge_ws_subs(edge_ws_t *ws, int **count);
/*  Connections open, for metrics and draining.  */
int64_t edge_ws_count(void);
/*  Ping idle clients, drop those that did not answer; call every tick.  */
void edge_ws_tick(void);
/*  Close the connections of session channel `channel` with 4401.  */
void edge_ws_close_session(const char *channel);
/*  Close every connection with 1001 (draining).  */
void edge_ws_close_all(void);
/*  Register metrics and read settings; call before edge_http_start.  */
int edge_ws_init(edge_t *edge);

/*  --- edge_msg (edge_events.c) ---  */
/*  A message of len bytes of text (copied), refs 1. NULL when out of memory.  */
edge_msg_t *edge_msg_new(const char *text, size_t len, uint64_t key);
void edge_msg_ref(edge_msg_t *msg);
void edge_msg_unref(edge_msg_t *msg);

/*  --- edge_events.c ---  */
/*  Create the SUB socket and the channels; NULL on failure (logged).  */
edge_events_t *edge_events_new(edge_t *edge);
void edge_events_destroy(edge_events_t **self_p);
/*  The SUB socket, to watch in the loop.  */
void *edge_events_socket(edge_events_t *self);
/*  Read every waiting event.  */
void edge_events_drain(edge_events_t *self);
/*  Canaries, gap timers; call every few ms.  */
void edge_events_tick(edge_events_t *self);
/*  The registry saw a change: (dis)connect publishers, tell `cluster`.  */
void edge_events_member(edge_events_t *self, const sh_member_t *member);
/*  NULL when delivery works, else why not (for /health/ready).  */
const char *edge_events_unready(edge_events_t *self);
/*  A client message for the connection: subscribe, unsubscribe, ping.
    json is the parsed message (a jansson object).  */
void edge_events_message(edge_events_t *self, edge_ws_t *ws, struct json_t *json);
/*  The connection is gone: drop its subscriptions.  */
void edge_events_forget(edge_events_t *self, edge_ws_t *ws);

/*  --- edge_req.c (pure: no connection, no library) ---  */
/*  Value of cookie `name` in a Cookie header into out (size bytes).
    Names compare whole. Returns 0, or -1 when absent or too long.  */
int edge_cookie_get(const char *header, const char *name, char *out, size_t size);
/*  A positive decimal id (digits only, at most INT64_MAX). 0 or -1.  */
int edge_parse_id(const char *text, uint64_t *out);
/*  The shoal_lsn cookie's value as a number; 0 when it is not one.  */
uint64_t edge_lsn_parse(const char *text);
/*  Value of URL argument `name` in args ("k=v\0k=v\0", len bytes):
    a pointer into args ("" for a bare "k"), or NULL when absent.  */
const char *edge_arg_find(const char *args, size_t len, const char *name);
/*  Check a SHOAL_TRUSTED_PROXIES list (addresses or CIDRs, comma-
    separated). Returns 0, or -1 with the first bad entry in bad.  */
int edge_proxies_check(const char *list, char *bad, size_t bad_size);
/*  True when address ip is inside an entry of list.  */
bool edge_ip_in_list(const char *ip, const char *list);
/*  The client's address: the last X-Forwarded-For entry when the TCP peer
    is a trusted proxy and that entry is an address, else the peer.
    Written normalised into out (EDGE_IP_MAX bytes); returns out.  */
const char *edge_client_ip(const char *peer, const char *forwarded, const char *trusted, char *out,
                           size_t size);
/*  ASCII-lowercase len bytes of in into out (size bytes, NUL-ended).  */
void edge_lowercase(const char *in, size_t len, char *out, size_t size);
/*  Decode a percent-encoded file name into out (size bytes). The result
    must be 1..SH_FILENAME_MAX bytes of strict UTF-8 without control
    characters (C0, DEL, C1: the query service's rule for text).
    Returns its length, or -1 with the reason in *why.  */
int edge_file_name_decode(const char *in, char *out, size_t size, const char **why);
/*  Content-Disposition: attachment with an ASCII fallback filename and the
    exact name as filename* (RFC 6266, RFC 8187). Returns 0, or -1 when it
    does not fit in size bytes.  */
int edge_content_disposition(const char *name, char *out, size_t size);
/*  One byte range of a Range header against an object of size bytes:
    1 and [*first, *last] for a satisfiable single range, 0 when the whole
    object should be sent (no header, several ranges, not bytes, bad
    syntax), -1 when unsatisfiable (416).  */
int edge_range_parse(const char *header, uint64_t size, uint64_t *first, uint64_t *last);
/*  True when origin is an entry of list (SHOAL_ALLOWED_ORIGINS: comma-
    separated, spaces around entries ignored, compared whole).  */
bool edge_origin_listed(const char *list, const char *origin);
/*  The WebSocket proof cookie's value for session sid and user_id,
    valid until expires_s (Unix seconds), signed with key.  */
void edge_ws_proof_make(const unsigned char *key, const char *sid, uint64_t user_id,
                        int64_t expires_s, char *out, size_t size);
/*  Check a proof against sid at now_s: the user id, or 0 when it is
    malformed, forged, for another session or expired.  */
uint64_t edge_ws_proof_check(const unsigned char *key, const char *sid, const char *proof,
                             int64_t now_s);
#endif
