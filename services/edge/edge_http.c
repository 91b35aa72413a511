/*  edge_http.c - libwebsockets adapter of the edge (with edge_ws.c, the
    only files that include it): one thread, one lws event loop, with the ZeroMQ sockets'
    fds and a signalfd adopted into it as raw files.

    A request is copied into the connection's edge_req_t when its headers
    arrive; one with a body is routed once the body is read (up to
    SHOAL_MAX_BODY_BYTES) into a per-connection buffer, so keep-alive goes
    on after it. Replies to service calls arrive on ZeroMQ; they reach the
    connection through the pool's request-id map, and a connection that
    closes cancels its pending call or detaches its job, so no reply ever
    touches a freed connection.
*/
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "edge.h"
#include "edge_lws.h"
#include "sh_log.h"
#include "sh_transport.h"

#define EDGE_TICK_US             10000
#define EDGE_HEADERS_RESERVE     2048
#define EDGE_STATIC_HEADERS      1024
#define EDGE_HEADER_SPACE_FACTOR 2  /* lws header buffer vs. the limit we enforce */
#define EDGE_BODY_REPEATS_MAX    64 /* see s_on_body_complete */
#define EDGE_IMMUTABLE           "public, max-age=31536000, immutable"
#define EDGE_CSP                                                                      \
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; " \
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

struct edge_conn_t {
    struct lws *wsi;
    sh_pool_t *pool;
    uint64_t handle;
    edge_job_t *job;
    unsigned char *out; /* LWS_PRE bytes, then the response */
    size_t out_len;
    bool close_after;
    bool reading_body; /* routed at LWS_CALLBACK_HTTP_BODY_COMPLETION */
    bool body_done;    /* BODY_COMPLETION was seen for this request */
    int body_repeats;  /* BODY_COMPLETION calls after the first */
    int64_t started_us;
    edge_req_t req;  /* the current request, copied out of lws */
    char *path;      /* storage of req.path */
    char *file_name; /* storage of req.file_name */
    sh_buf_t args;   /* storage of req.args */
    sh_buf_t body;   /* storage of req.body */

    /*  a streamed request body (req.streamed)  */
    edge_body_sink_t sink;
    bool rx_paused;

    /*  a streamed response: headers in out, then the body from source  */
    bool streaming;
    bool headers_sent;
    bool head_only;
    edge_body_source_t source;
    uint64_t stream_length;                 /* body bytes announced */
    uint64_t stream_sent;                   /* body bytes written */
    unsigned char *queue;                   /* LWS_PRE bytes, then queued body bytes */
    size_t queue_cap, queue_off, queue_len; /* queued bytes are [off, len) after LWS_PRE */
};

static struct {
    edge_t *edge;
    struct lws_context *context;
    struct lws_vhost *vhost;
    lws_sorted_usec_list_t tick;
    int signal_fd;
    char root[PATH_MAX]; /* realpath of the static dir, "" if missing */
} s_http;

/*  --- responses ---------------------------------------------------------  */

static const char *s_default_header_names[] = {
    "x-content-type-options:", "x-frame-options:", "referrer-policy:"};
static const char *s_default_header_values[] = {"nosniff", "DENY", "same-origin"};

static int s_add_header(struct lws *wsi, const char *name, const char *value, unsigned char **p,
                        unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                       (const unsigned char *)value, (int)strlen(value), p, end);
}

/*  Stop taking a streamed request body: the reply is decided, whatever
    of the body is left is read and dropped, and the connection closes.  */
static void s_sink_drop(edge_conn_t *conn)
{
    if (!conn->req.streamed)
        return;
    memset(&conn->sink, 0, sizeof conn->sink);
    if (!conn->body_done)
        conn->close_after = true;
    if (conn->rx_paused) {
        /*  lws gives no POLLOUT to a connection with rx flow stopped  */
        conn->rx_paused = false;
        lws_rx_flow_control(conn->wsi, 1);
    }
}

/*  Write the status line and headers into conn->out (room for extra body
    bytes after them). Returns the header length, or -1 (out of memory or
    headers that do not fit: a bug in a route, never client input).  */
static int s_build_headers(edge_conn_t *conn, const edge_resp_t *resp, uint64_t content_length,
                           size_t extra)
{
    struct lws *wsi = conn->wsi;
    free(conn->out);
    /*  the fixed headers fit the reserve; a route's own (a long
        Content-Disposition) are counted as they are  */
    size_t cap = LWS_PRE + EDGE_HEADERS_RESERVE + extra;
    for (int i = 0; i < EDGE_RESP_HEADERS && resp->header_names[i]; i++)
        cap += strlen(resp->header_names[i]) + strlen(resp->header_values[i]) + 4;
    conn->out = malloc(cap);
    conn->out_len = 0;
    if (!conn->out)
        return -1;
    unsigned char *start = conn->out + LWS_PRE, *p = start, *end = conn->out + cap;
    bool own_cache = false;
    for (int i = 0; i < EDGE_RESP_HEADERS && resp->header_names[i]; i++)
        own_cache |= strcmp(resp->header_names[i], "cache-control:") == 0;
    int rc = lws_add_http_header_status(wsi, (unsigned int)resp->status, &p, end);
    rc |= s_add_header(wsi, "content-type:",
                       resp->content_type ? resp->content_type : "application/json", &p, end);
    rc |= lws_add_http_header_content_length(wsi, content_length, &p, end);
    for (size_t i = 0; i < SH_ARRAY_SIZE(s_default_header_names); i++)
        rc |= s_add_header(wsi, s_default_header_names[i], s_default_header_values[i], &p, end);
    if (!own_cache)
        rc |= s_add_header(wsi, "cache-control:", "no-store", &p, end);
    for (int i = 0; i < EDGE_RESP_HEADERS && resp->header_names[i]; i++)
        rc |= s_add_header(wsi, resp->header_names[i], resp->header_values[i], &p, end);
    if (conn->close_after || s_http.edge->draining) {
        conn->close_after = true;
        rc |= s_add_header(wsi, "connection:", "close", &p, end);
    }
    rc |= lws_finalize_http_header(wsi, &p, end);
    if (rc) {
        sh_error("response headers too large for status %d", resp->status);
        return -1;
    }
    return (int)(p - start);
}

void edge_http_respond(edge_conn_t *conn, const edge_resp_t *resp)
{
    struct lws *wsi = conn->wsi;
    conn->pool = NULL;
    conn->handle = 0;
    conn->job = NULL;
    s_sink_drop(conn);
    int n = s_build_headers(conn, resp, resp->body_len, resp->body_len);
    if (n < 0) {
        conn->close_after = true;
        conn->out_len = 0;
    } else {
        if (resp->body_len)
            memcpy(conn->out + LWS_PRE + n, resp->body, resp->body_len);
        conn->out_len = (size_t)n + resp->body_len;
    }
    edge_api_count(s_http.edge, resp->status, conn->started_us);
    lws_callback_on_writable(wsi);
}

int edge_http_stream_begin(edge_conn_t *conn, const edge_resp_t *resp, uint64_t length,
                           const edge_body_source_t *source)
{
    conn->pool = NULL;
    conn->handle = 0;
    conn->job = NULL;
    s_sink_drop(conn);
    int n = s_build_headers(conn, resp, length, 0);
    if (n < 0) {
        edge_resp_t fail = {500, NULL, NULL, 0, {NULL}, {NULL}};
        edge_http_respond(conn, &fail);
        return -1;
    }
    conn->out_len = (size_t)n;
    conn->streaming = true;
    conn->headers_sent = false;
    conn->head_only = conn->req.method == EDGE_HEAD;
    conn->source = *source;
    conn->stream_length = conn->head_only ? 0 : length;
    conn->stream_sent = 0;
    edge_api_count(s_http.edge, resp->status, conn->started_us);
    lws_callback_on_writable(conn->wsi);
    return 0;
}

int edge_http_stream_push(edge_conn_t *conn, const void *bytes, size_t len)
{
    uint64_t queued = conn->queue_len - conn->queue_off;
    if (!conn->streaming || conn->stream_sent + queued + len > conn->stream_length) {
        edge_http_stream_abort(conn);
        return -1;
    }
    if (conn->queue_off && conn->queue_off == conn->queue_len)
        conn->queue_off = conn->queue_len = 0;
    if (LWS_PRE + conn->queue_len + len > conn->queue_cap) {
        /*  move what is left to the front first: the queue stays small  */
        if (conn->queue_off) {
            memmove(conn->queue + LWS_PRE, conn->queue + LWS_PRE + conn->queue_off, queued);
            conn->queue_off = 0;
            conn->queue_len = queued;
        }
        if (LWS_PRE + conn->queue_len + len > conn->queue_cap) {
            size_t cap = LWS_PRE + conn->queue_len + len;
            unsigned char *grown = realloc(conn->queue, cap);
            if (!grown) {
                edge_http_stream_abort(conn);
                return -1;
            }
            conn->queue = grown;
            conn->queue_cap = cap;
        }
    }
    memcpy(conn->queue + LWS_PRE + conn->queue_len, bytes, len);
    conn->queue_len += len;
    lws_callback_on_writable(conn->wsi);
    return 0;
}

size_t edge_http_stream_queued(const edge_conn_t *conn)
{
    return conn->queue_len - conn->queue_off;
}

void edge_http_stream_abort(edge_conn_t *conn)
{
    /*  the source called this: it knows  */
    memset(&conn->source, 0, sizeof conn->source);
    conn->close_after = true;
    conn->streaming = false;
    free(conn->out);
    conn->out = NULL;
    /*  an empty out with close_after closes at the next writeable  */
    conn->out = malloc(LWS_PRE);
    conn->out_len = 0;
    lws_callback_on_writable(conn->wsi);
}

bool edge_http_streams_body(edge_method_t method, const char *path)
{
    return method == EDGE_POST && strcmp(path, "/api/uploads") == 0;
}

void edge_http_body_sink(edge_conn_t *conn, const edge_body_sink_t *sink)
{
    conn->sink = *sink;
}

void edge_http_body_pause(edge_conn_t *conn, bool pause)
{
    if (conn->rx_paused == pause || !conn->req.streamed || !conn->sink.data)
        return;
    conn->rx_paused = pause;
    lws_rx_flow_control(conn->wsi, pause ? 0 : 1);
}

void edge_http_await(edge_conn_t *conn, sh_pool_t *pool, uint64_t handle)
{
    if (handle) {
        conn->pool = pool;
        conn->handle = handle;
    }
}

void edge_http_await_job(edge_conn_t *conn, edge_job_t *job)
{
    conn->job = job;
}

/*  --- static files ---------------------------------------------------------  */

static const struct {
    const char *ext;
    const char *mime;
} s_mime[] = {
    {".html", "text/html; charset=utf-8"},
    {".js", "text/javascript; charset=utf-8"},
    {".mjs", "text/javascript; charset=utf-8"},
    {".css", "text/css; charset=utf-8"},
    {".json", "application/json"},
    {".map", "application/json"},
    {".svg", "image/svg+xml"},
    {".png", "image/png"},
    {".jpg", "image/jpeg"},
    {".jpeg", "image/jpeg"},
    {".gif", "image/gif"},
    {".webp", "image/webp"},
    {".ico", "image/x-icon"},
    {".woff", "font/woff"},
    {".woff2", "font/woff2"},
    {".txt", "text/plain; charset=utf-8"},
    {".wasm", "application/wasm"},
};

static const char *s_mime_for(const char *path)
{
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (dot && (!slash || dot > slash))
        for (size_t i = 0; i < SH_ARRAY_SIZE(s_mime); i++)
            if (strcmp(dot, s_mime[i].ext) == 0)
                return s_mime[i].mime;
    return "application/octet-stream";
}

/*  Resolves a URL path to a file inside the static root. Returns 0 and the
    file in out, or -1 (not found / outside the root).  */
static int s_resolve(const char *url_path, char *out, bool *is_index)
{
    char candidate[PATH_MAX];
    *is_index = false;
    if (!s_http.root[0] || strstr(url_path, "..") || url_path[0] != '/')
        return -1;
    const char *last = strrchr(url_path, '/');
    bool has_ext = last && strchr(last, '.');
    if (strcmp(url_path, "/") == 0) {
        if (snprintf(candidate, sizeof candidate, "%s/index.html", s_http.root) >=
            (int)sizeof candidate)
            return -1;
        *is_index = true;
    } else if (snprintf(candidate, sizeof candidate, "%s%s", s_http.root, url_path) >=
               (int)sizeof candidate)
        return -1;
    struct stat st;
    if (realpath(candidate, out) && stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
        size_t root_len = strlen(s_http.root);
        if (strncmp(out, s_http.root, root_len) == 0 && out[root_len] == '/')
            return 0;
        return -1;
    }
    if (has_ext)
        return -1;
    /*  a client-side route of the single-page app: serve index.html  */
    if (snprintf(candidate, sizeof candidate, "%s/index.html", s_http.root) >=
        (int)sizeof candidate)
        return -1;
    *is_index = true;
    return realpath(candidate, out) && stat(out, &st) == 0 ? 0 : -1;
}

static int s_serve_static(edge_req_t *req)
{
    edge_conn_t *conn = req->conn;
    if (req->method != EDGE_GET) {
        edge_resp_t resp = {405, NULL, NULL, 0, {"allow:"}, {"GET"}};
        const char *body = "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"use GET\"}}";
        resp.body = body;
        resp.body_len = strlen(body);
        edge_http_respond(conn, &resp);
        return 0;
    }
    char file[PATH_MAX];
    bool is_index;
    if (s_resolve(req->path, file, &is_index)) {
        edge_api_error(s_http.edge, req, 404, "not_found", "no such file");
        return 0;
    }
    unsigned char headers[EDGE_STATIC_HEADERS], *p = headers, *end = headers + sizeof headers;
    int rc = 0;
    for (size_t i = 0; i < SH_ARRAY_SIZE(s_default_header_names); i++)
        rc |=
            s_add_header(conn->wsi, s_default_header_names[i], s_default_header_values[i], &p, end);
    rc |= s_add_header(conn->wsi, "content-security-policy:", EDGE_CSP, &p, end);
    bool hashed = strncmp(req->path, "/assets/", 8) == 0 && !is_index;
    rc |= s_add_header(conn->wsi, "cache-control:", hashed ? EDGE_IMMUTABLE : "no-cache", &p, end);
    if (rc) {
        edge_api_error(s_http.edge, req, 500, "internal", "header space");
        return 0;
    }
    edge_api_count(s_http.edge, 200, req->started_us);
    int n = lws_serve_http_file(conn->wsi, file, s_mime_for(file), (const char *)headers,
                                (int)(p - headers));
    if (n < 0 || (n > 0 && lws_http_transaction_completed(conn->wsi)))
        return -1;
    return 0;
}

/*  --- request intake ---------------------------------------------------------  */

static edge_method_t s_method(struct lws *wsi)
{
    static const struct {
        enum lws_token_indexes token;
        edge_method_t method;
    } methods[] = {{WSI_TOKEN_GET_URI, EDGE_GET},       {WSI_TOKEN_POST_URI, EDGE_POST},
                   {WSI_TOKEN_DELETE_URI, EDGE_DELETE}, {WSI_TOKEN_PUT_URI, EDGE_PUT},
                   {WSI_TOKEN_PATCH_URI, EDGE_PATCH},   {WSI_TOKEN_OPTIONS_URI, EDGE_OPTIONS},
                   {WSI_TOKEN_HEAD_URI, EDGE_HEAD}};
    for (size_t i = 0; i < SH_ARRAY_SIZE(methods); i++)
        if (lws_hdr_total_length(wsi, methods[i].token) > 0)
            return methods[i].method;
    return EDGE_OTHER;
}

void edge_lws_header(struct lws *wsi, enum lws_token_indexes token, char *buf, int size)
{
    buf[0] = 0;
    if (lws_hdr_total_length(wsi, token) >= size || lws_hdr_copy(wsi, buf, size, token) < 0)
        buf[0] = 0;
}

/*  Bytes of the headers lws knows by name. lws 4.1 cannot enumerate
    unknown headers; those count against its own buffer (twice the limit),
    past which it closes the connection without a reply.  */
static int s_header_bytes(struct lws *wsi)
{
    int total = 0;
    for (int t = 0; t < WSI_TOKEN_COUNT; t++)
        total += lws_hdr_total_length(wsi, (enum lws_token_indexes)t);
    return total;
}

/*  A whole header (all its fragments) on the heap, or NULL when absent.  */
static char *s_header_dup(struct lws *wsi, enum lws_token_indexes token)
{
    int len = lws_hdr_total_length(wsi, token);
    char *copy = len > 0 ? malloc((size_t)len + 1) : NULL;
    if (copy && lws_hdr_copy(wsi, copy, len + 1, token) < 0) {
        free(copy);
        copy = NULL;
    }
    return copy;
}

static void s_custom_header(struct lws *wsi, const char *name, char *buf, int size)
{
    int nlen = (int)strlen(name);
    int len = lws_hdr_custom_length(wsi, name, nlen);
    buf[0] = 0;
    if (len > 0 && len < size)
        lws_hdr_custom_copy(wsi, buf, size, name, nlen);
}

/*  The cookies the edge reads. lws_http_cookie_get matches names by
    substring ("x_shoal_sid" would do), so the header is split by
    edge_cookie_get and names compared whole.  */
static void s_cookies(struct lws *wsi, edge_req_t *req)
{
    char *header = s_header_dup(wsi, WSI_TOKEN_HTTP_COOKIE);
    char lsn[32];
    if (!header)
        return;
    edge_cookie_get(header, EDGE_COOKIE_NAME, req->cookie, sizeof req->cookie);
    if (edge_cookie_get(header, EDGE_LSN_COOKIE, lsn, sizeof lsn) == 0)
        req->lsn = edge_lsn_parse(lsn);
    free(header);
}

/*  URL arguments as lws stored them (one decoded fragment per k=v),
    copied so that a route reading them after the body still can.  */
static int s_args(struct lws *wsi, edge_conn_t *conn)
{
    int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);
    if (total <= 0)
        return 0;
    char *fragment = malloc((size_t)total + 1);
    if (!fragment)
        return -1;
    int rc = 0;
    for (int i = 0; rc == 0; i++) {
        int n = lws_hdr_copy_fragment(wsi, fragment, total + 1, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            break;
        rc = sh_buf_append(&conn->args, fragment, (size_t)n + 1);
    }
    free(fragment);
    return rc;
}

static void s_client_ip(struct lws *wsi, edge_req_t *req)
{
    char peer[EDGE_IP_MAX] = "";
    const char *trusted = s_http.edge->config->trusted_proxies;
    lws_get_peer_simple(wsi, peer, sizeof peer);
    char *forwarded = trusted[0] ? s_header_dup(wsi, WSI_TOKEN_X_FORWARDED_FOR) : NULL;
    edge_client_ip(peer, forwarded, trusted, req->client_ip, sizeof req->client_ip);
    free(forwarded);
}

/*  Forget the last request of a keep-alive connection (or a closed one).  */
static void s_conn_reset(edge_conn_t *conn)
{
    free(conn->out);
    free(conn->path);
    free(conn->file_name);
    free(conn->queue);
    sh_buf_free(&conn->args);
    sh_buf_free(&conn->body);
    memset(conn, 0, sizeof *conn);
}

static int s_route(edge_conn_t *conn)
{
    if (edge_api_handle(s_http.edge, &conn->req))
        return 0;
    return s_serve_static(&conn->req);
}

/*  Refuse a request at intake; the connection closes after the reply
    because the rest of the request was not read.  */
static int s_reject(edge_conn_t *conn, int status, const char *code, const char *message)
{
    conn->close_after = true;
    (*s_http.edge->http_rejected)++;
    edge_api_error(s_http.edge, &conn->req, status, code, message);
    return 0;
}

static int s_on_request(struct lws *wsi, edge_conn_t *conn, const char *path)
{
    edge_t *edge = s_http.edge;
    s_conn_reset(conn);
    conn->wsi = wsi;
    conn->started_us = sh_clock_mono_us();
    (*edge->http_requests)++;

    edge_req_t *req = &conn->req;
    req->conn = conn;
    conn->path = strdup(path);
    req->path = conn->path ? conn->path : "/";
    req->body = "";
    req->method = s_method(wsi);
    req->started_us = conn->started_us;
    req->content_length = -1;
    if (!conn->path)
        return s_reject(conn, 500, "internal", "out of memory");
    if (s_header_bytes(wsi) > edge->config->max_header_bytes)
        return s_reject(conn, 431, "headers_too_large",
                        "request header block exceeds the size limit");
    char value[EDGE_HEADER_SMALL];
    edge_lws_header(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, value, sizeof value);
    if (value[0] && sh_parse_int(value, 0, INT64_MAX, &req->content_length))
        return s_reject(conn, 400, "bad_request", "invalid Content-Length");
    edge_lws_header(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING, value, sizeof value);
    if (value[0])
        /*  lws cannot stream chunked request bodies: ask for a length  */
        return s_reject(conn, 411, "length_required",
                        "chunked request bodies are not accepted; send Content-Length");
    req->streamed = edge_http_streams_body(req->method, req->path);
    if (req->content_length > edge->config->max_body_bytes && !req->streamed)
        return s_reject(conn, 413, "too_large", "request body exceeds the size limit");
    edge_lws_header(wsi, WSI_TOKEN_ORIGIN, req->origin, sizeof req->origin);
    edge_lws_header(wsi, WSI_TOKEN_HOST, req->host, sizeof req->host);
    s_custom_header(wsi, "sec-fetch-site:", req->fetch_site, sizeof req->fetch_site);
    s_custom_header(wsi, "x-csrf-token:", req->csrf, sizeof req->csrf);
    edge_lws_header(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, req->content_type, sizeof req->content_type);
    edge_lws_header(wsi, WSI_TOKEN_HTTP_RANGE, req->range, sizeof req->range);
    edge_lws_header(wsi, WSI_TOKEN_HTTP_IF_NONE_MATCH, req->if_none_match,
                    sizeof req->if_none_match);
    int name_len = lws_hdr_custom_length(wsi, "x-file-name:", 12);
    if (name_len > 0) {
        conn->file_name = malloc((size_t)name_len + 1);
        if (!conn->file_name)
            return s_reject(conn, 500, "internal", "out of memory");
        lws_hdr_custom_copy(wsi, conn->file_name, name_len + 1, "x-file-name:", 12);
    }
    req->file_name = conn->file_name ? conn->file_name : "";
    s_cookies(wsi, req);
    s_client_ip(wsi, req);
    if (s_args(wsi, conn))
        return s_reject(conn, 500, "internal", "out of memory");
    req->args = conn->args.data;
    req->args_len = conn->args.len;
    if (req->streamed && req->content_length > 0) {
        /*  the route takes the body as it comes, once it is ready for it  */
        conn->rx_paused = true;
        lws_rx_flow_control(wsi, 0);
        return s_route(conn);
    }
    if (req->content_length > 0) {
        /*  lws delivers the body next; the route runs when it is complete  */
        conn->reading_body = true;
        return 0;
    }
    return s_route(conn);
}

static int s_on_body(edge_conn_t *conn, const void *in, size_t len)
{
    if (conn->req.streamed) {
        /*  after the reply was decided the rest is dropped  */
        if (!conn->sink.data)
            return 0;
        return conn->sink.data(conn->sink.arg, in, len) ? -1 : 0;
    }
    if (!conn->reading_body)
        return 0; /* a rejected request's rest: the connection closes */
    if ((int64_t)(conn->body.len + len) > conn->req.content_length) {
        conn->reading_body = false;
        return s_reject(conn, 400, "bad_request", "body longer than its Content-Length");
    }
    if (sh_buf_append(&conn->body, in, len)) {
        conn->reading_body = false;
        return s_reject(conn, 500, "internal", "out of memory");
    }
    return 0;
}

static int s_on_body_complete(edge_conn_t *conn)
{
    if (conn->body_done) {
        /*  Bytes arrived after the body: a request pipelined behind it
            (RFC 9112 9.3.2 says clients should not). lws 4.1 calls this
            again for every pass over them until the transaction is over,
            and once they sit in its buffer list it does so in a loop that
            never returns to poll() - the reply could never be written (rx
            flow control does not help: lws then skips POLLOUT too). So
            answer this request, then close; should the loop spin, close
            at once.  */
        conn->close_after = true;
        return ++conn->body_repeats > EDGE_BODY_REPEATS_MAX ? -1 : 0;
    }
    conn->body_done = true;
    if (conn->req.streamed) {
        if (conn->sink.done)
            conn->sink.done(conn->sink.arg);
        return 0;
    }
    if (!conn->reading_body)
        return 0; /* lws completes the empty body of a POST too; routed already */
    conn->reading_body = false;
    conn->req.body = conn->body.data ? conn->body.data : "";
    conn->req.body_len = conn->body.len;
    return s_route(conn);
}

#define EDGE_STREAM_SLICE 65536 /* body bytes per write of a streamed response */

/*  Tell the source its stream is over (once).  */
static void s_source_ended(edge_conn_t *conn)
{
    edge_body_source_t source = conn->source;
    memset(&conn->source, 0, sizeof conn->source);
    if (source.ended)
        source.ended(source.arg);
}

/*  The last byte of a streamed response went out.  */
static int s_stream_done(struct lws *wsi, edge_conn_t *conn)
{
    conn->streaming = false;
    s_source_ended(conn);
    if (conn->close_after)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/*  One write of a streamed response: the headers, then slices of the
    queue; asks the source for more when the queue runs low.  */
static int s_stream_writeable(struct lws *wsi, edge_conn_t *conn)
{
    if (!conn->headers_sent) {
        bool final = conn->stream_length == 0;
        int n = lws_write(wsi, conn->out + LWS_PRE, conn->out_len,
                          final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP_HEADERS);
        free(conn->out);
        conn->out = NULL;
        conn->headers_sent = true;
        if (n < 0)
            return -1;
        if (final)
            return s_stream_done(wsi, conn);
    } else if (conn->queue_len > conn->queue_off) {
        size_t len = conn->queue_len - conn->queue_off;
        if (len > EDGE_STREAM_SLICE)
            len = EDGE_STREAM_SLICE;
        bool final = conn->stream_sent + len == conn->stream_length;
        if (lws_write(wsi, conn->queue + LWS_PRE + conn->queue_off, len,
                      final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) < 0)
            return -1;
        conn->queue_off += len;
        conn->stream_sent += len;
        if (final)
            return s_stream_done(wsi, conn);
    }
    if (conn->queue_len > conn->queue_off)
        lws_callback_on_writable(wsi);
    else if (conn->source.more)
        conn->source.more(conn->source.arg);
    return 0;
}

static int s_on_writeable(struct lws *wsi, edge_conn_t *conn)
{
    if (conn->streaming)
        return s_stream_writeable(wsi, conn);
    if (!conn->out)
        return conn->close_after ? -1 : 0;
    int n = conn->out_len ? lws_write(wsi, conn->out + LWS_PRE, conn->out_len, LWS_WRITE_HTTP_FINAL)
                          : 0;
    free(conn->out);
    conn->out = NULL;
    if (n < 0 || conn->close_after || conn->out_len == 0)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static void s_on_closed(edge_conn_t *conn)
{
    /*  a streamed body or response in progress learns its client left  */
    if (conn->sink.closed) {
        edge_body_sink_t sink = conn->sink;
        memset(&conn->sink, 0, sizeof conn->sink);
        sink.closed(sink.arg);
    }
    s_source_ended(conn);
    if (conn->pool && conn->handle) {
        sh_pool_cancel(conn->pool, conn->handle);
        (*s_http.edge->late_replies)++;
    }
    /*  a flow or job goes on without the connection and ends quietly  */
    if (conn->job)
        conn->job->conn = NULL;
    s_conn_reset(conn);
}

static int s_callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                           size_t len)
{
    edge_conn_t *conn = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        return s_on_request(wsi, conn, in ? (const char *)in : "/");
    case LWS_CALLBACK_HTTP_BODY:
        return s_on_body(conn, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return s_on_body_complete(conn);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return s_on_writeable(wsi, conn);
    case LWS_CALLBACK_HTTP_FILE_COMPLETION:
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (conn)
            s_on_closed(conn);
        return 0;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        /*  only /ws upgrades, and only after its checks  */
        return edge_ws_confirm(wsi);
    case LWS_CALLBACK_HTTP_BIND_PROTOCOL:
        (*s_http.edge->connections)++;
        break;
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        /*  lws skips CLOSED_HTTP for a connection it closes mid-body  */
        if (conn)
            s_on_closed(conn);
        (*s_http.edge->connections)--;
        break;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/*  --- ZeroMQ, workers and signals in the lws loop --------------------------  */

static void s_drain_workers(edge_t *edge)
{
    void *done;
    while (sh_workers_recv(edge->workers, &done) == 0) {
        edge_job_t *job = done;
        if (job->conn) {
            char body[64];
            int n = snprintf(body, sizeof body, "{\"ms\":%llu,\"service\":\"edge\"}",
                             (unsigned long long)job->ms);
            edge_resp_t resp = {200, NULL, body, (size_t)n, {NULL}, {NULL}};
            job->conn->job = NULL;
            edge_http_respond(job->conn, &resp);
        }
        free(job);
    }
}

static void s_drain_all(edge_t *edge)
{
    sh_pool_drain(edge->sessions);
    sh_pool_drain(edge->queries);
    sh_pool_drain(edge->uploads);
    sh_pool_drain(edge->scrape);
    if (edge->registry)
        sh_registry_drain(edge->registry);
    edge_events_drain(edge->events);
    s_drain_workers(edge);
}

static void s_on_signal(edge_t *edge)
{
    struct signalfd_siginfo info;
    while (read(s_http.signal_fd, &info, sizeof info) == (ssize_t)sizeof info) {
        if (edge->draining) {
            sh_warn("second signal %u: exiting now", info.ssi_signo);
            edge->stop = true;
        } else {
            edge->draining = true;
            edge->drain_started_ms = sh_clock_mono_ms();
            /*  live clients reconnect to another edge and resume there  */
            edge_ws_close_all();
            if (edge->registry) {
                edge_api_beat(edge);
                sh_registry_leave(edge->registry, "edge", edge->config->base.instance);
            }
            sh_info("signal %u: draining (%lld calls in flight)", info.ssi_signo,
                    (long long)edge_api_in_flight(edge));
        }
    }
}

static int s_callback_raw(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                          size_t len)
{
    edge_t *edge = s_http.edge;
    if (reason == LWS_CALLBACK_RAW_RX_FILE) {
        if (lws_get_socket_fd(wsi) == s_http.signal_fd)
            s_on_signal(edge);
        else
            s_drain_all(edge);
        return 0;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void s_on_tick(lws_sorted_usec_list_t *sul)
{
    edge_t *edge = s_http.edge;
    sh_pool_tick(edge->sessions);
    sh_pool_tick(edge->queries);
    sh_pool_tick(edge->uploads);
    sh_pool_tick(edge->scrape);
    if (edge->registry) {
        sh_registry_tick(edge->registry);
        if (sh_clock_mono_ms() - edge->last_beat_ms >= edge->config->base.heartbeat_ms)
            edge_api_beat(edge);
    }
    edge_events_tick(edge->events);
    edge_ws_tick();
    s_drain_all(edge);
    if (edge->draining) {
        int64_t elapsed = sh_clock_mono_ms() - edge->drain_started_ms;
        bool idle = edge_api_in_flight(edge) == 0 && sh_workers_outstanding(edge->workers) == 0;
        if ((idle && elapsed >= edge->config->drain_grace_ms) ||
            elapsed >= edge->config->base.drain_timeout_ms)
            edge->stop = true;
    }
    if (edge->stop)
        lws_cancel_service(s_http.context);
    else
        lws_sul_schedule(s_http.context, 0, sul, s_on_tick, EDGE_TICK_US);
}

static int s_adopt(int fd, const char *protocol)
{
    lws_sock_file_fd_type desc;
    desc.filefd = fd;
    if (!lws_adopt_descriptor_vhost(s_http.vhost, LWS_ADOPT_RAW_FILE_DESC, desc, protocol, NULL)) {
        sh_error("cannot adopt fd %d into the event loop", fd);
        return -1;
    }
    return 0;
}

#define S_WS_RX_BUFFER 1024 /* bytes lws reads at once per WebSocket; messages are reassembled */
static const lws_retry_bo_t s_no_validity; /* all zero: no ping, no hangup timers */
static struct lws_protocols s_protocols[] = {
    {"http", s_callback_http, sizeof(edge_conn_t), 0, 0, NULL, 0},
    {"shoal-raw", s_callback_raw, 0, 0, 0, NULL, 0},
    {"shoal.v1", edge_ws_callback, 0, S_WS_RX_BUFFER, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

static void s_lws_log(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    sh_log(level == LLL_ERR ? SH_LOG_ERROR : SH_LOG_WARN, NULL, "lws: %.*s", (int)n, line);
}

int edge_http_start(edge_t *edge)
{
    s_http.edge = edge;
    if (!realpath(edge->config->static_dir, s_http.root)) {
        sh_warn("static dir %s not found: only the API is served", edge->config->static_dir);
        s_http.root[0] = 0;
    }
    lws_set_log_level(LLL_ERR | LLL_WARN, s_lws_log);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = (int)edge->config->http_port;
    info.iface = edge->config->http_addr;
    s_protocols[2].per_session_data_size = edge_ws_size();
    info.protocols = s_protocols;

    /*  Debian's lws listens on every interface for "127.0.0.1" unless IPv6 is off  */
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    int64_t header_space = edge->config->max_header_bytes * EDGE_HEADER_SPACE_FACTOR;
    info.max_http_header_data =
        (unsigned short)(header_space > UINT16_MAX ? UINT16_MAX : header_space);
    info.max_http_header_pool = (unsigned short)edge->config->max_connections;
    info.fd_limit_per_thread = (unsigned int)edge->config->max_connections + 64;
    info.keepalive_timeout = 5;
    info.timeout_secs = 10;
    /*  no per-connection validity timers: lws re-sorts one into a list as
        long as the connections on every read and write. edge_ws.c pings
        idle clients itself, in one sweep a second.  */
    info.retry_and_idle_policy = &s_no_validity;
    info.server_string = "shoal";
    s_http.context = lws_create_context(&info);
    if (!s_http.context) {
        sh_error("cannot listen on %s:%lld", edge->config->http_addr,
                 (long long)edge->config->http_port);
        return -1;
    }
    s_http.vhost = lws_get_vhost_by_name(s_http.context, "default");
    s_http.signal_fd = edge->signal_fd;
    if (!s_http.vhost || s_http.signal_fd < 0 || s_adopt(s_http.signal_fd, "shoal-raw"))
        return -1;
    void *sockets[SH_REGISTRY_SOCKETS + 4 * SH_POOL_SOCKETS + 2];
    int n = sh_pool_sockets(edge->sessions, sockets, SH_POOL_SOCKETS);
    n += sh_pool_sockets(edge->queries, sockets + n, SH_POOL_SOCKETS);
    n += sh_pool_sockets(edge->uploads, sockets + n, SH_POOL_SOCKETS);
    n += sh_pool_sockets(edge->scrape, sockets + n, SH_POOL_SOCKETS);

    sockets[n++] = sh_workers_socket(edge->workers);
    sockets[n++] = edge_events_socket(edge->events);
    if (edge->registry)
        n += sh_registry_sockets(edge->registry, sockets + n, SH_REGISTRY_SOCKETS);
    for (int i = 0; i < n; i++)
        /*  lws closes what it adopts: give it a dup of ZMQ_FD  */
        if (s_adopt(dup(sh_transport_fd(sockets[i])), "shoal-raw"))
            return -1;
    lws_sul_schedule(s_http.context, 0, &s_http.tick, s_on_tick, EDGE_TICK_US);
    sh_info("edge listening on http://%s:%lld", edge->config->http_addr,
            (long long)edge->config->http_port);
    return 0;
}

int edge_http_run(edge_t *edge)
{
    while (!edge->stop)
        if (lws_service(s_http.context, 0) < 0)
            break;
    lws_context_destroy(s_http.context);
    s_http.context = NULL;
    return 0;
}
