/*  edge_upload.c - files on items.

    POST /api/uploads streams the request body to one upload instance in
    chunks (upload_begin, upload_chunk..., upload_finish) and then records
    the attachment through the query service; GET|HEAD /api/uploads/<id>
    streams an object back with upload_read; GET /api/items/<id>/attachments
    lists an item's files.

    Flow control on the way in: the upload instance grants `window`
    credits; every chunk sent spends one and its reply gives it back. With
    no credit left the edge stops reading the socket, so it holds at most
    one chunk being filled (plus what lws had read already) whatever the
    size of the file; the client's TCP window does the rest. On the way
    out, reads run S_READ_AHEAD chunks ahead of the socket at most.

    A transfer's state outlives its connection while calls are out: a
    client that leaves sets conn to NULL, the stream is aborted, and the
    state is freed when its last reply (or timeout) came back.
*/
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"
#include "sh_log.h"
#include "sh_util.h"

#define S_UPLOADS_PATH  "/api/uploads"
#define S_ITEMS_PATH    "/api/items/"
#define S_READ_BYTES    262144 /* one upload_read */
#define S_READ_AHEAD    2      /* chunks queued or in flight per download */
#define S_COOKIE_MAX    256
#define S_DISPOSITION   (64 + SH_FILENAME_MAX * 4) /* the fallback, and every byte as %XX */
#define S_QUOTA_ERROR   "upload quota exceeded"
#define S_DOWNLOAD_CSP  "default-src 'none'; sandbox"
#define S_DOWNLOAD_HDRS 7

typedef enum {
    S_AUTH,   /* waiting for the session check */
    S_USAGE,  /* attachment_usage */
    S_BEGIN,  /* upload_begin */
    S_STREAM, /* chunks */
    S_FINISH, /* upload_finish */
    S_RECORD, /* attachment_create */
    S_OVER    /* answered or abandoned: waiting for calls still out */
} s_phase_t;

/*  What every route here keeps of its request.  */
typedef struct {
    edge_job_t link; /* link.conn: the client while a call waits on it */
    edge_t *edge;
    edge_conn_t *conn; /* NULL once the client left */
    int64_t started_us;
    char traceparent[SH_TRACE_MAX + 1];
    char sid[EDGE_COOKIE_MAX];
    uint64_t lsn;
} s_call_t;

typedef struct {
    s_call_t call;
    s_phase_t phase;
    int outstanding; /* calls out that will still call back */
    bool gone;       /* the client left during the session check */

    uint64_t item_id;
    uint64_t size;
    char name[SH_FILENAME_MAX + 1];
    char declared[SH_MIME_MAX + 1];
    uint64_t user_id;

    /*  the stream on its upload instance  */
    char stream[SH_ID_MAX + 1];
    char key[SH_OBJKEY_MAX + 1];
    char instance[SH_ID_MAX + 1];
    uint64_t chunk_max;
    uint64_t window;
    uint64_t credits;
    uint64_t sent;  /* bytes sent in chunks */
    uint64_t taken; /* bytes taken from the client */
    bool body_done; /* every byte of the body arrived */
    bool aborted;   /* upload_abort was sent */
    bool pumping;   /* in s_pump: a reply drained meanwhile must not re-enter it */
    bool repump;    /* ... but asks it to look again */
    sh_buf_t fill;  /* taken, not yet sent */
} s_upload_t;

typedef struct {
    s_call_t call;
    int outstanding;
    bool over; /* answered or abandoned */
    uint64_t id;
    edge_method_t method;
    char range[EDGE_HEADER_SMALL];
    char if_none_match[EDGE_HEADER_SMALL];
    char key[SH_OBJKEY_MAX + 1];
    uint64_t next;      /* next byte to read */
    uint64_t read_from; /* first byte of the read in flight */
    uint64_t end;       /* one past the last byte to send */
} s_download_t;

/*  --- shared ---------------------------------------------------------------------------  */

static void s_ignore(void *arg, const sh_reply_t *reply)
{
    (void)arg;
    (void)reply;
}

static sh_call_opts_t s_opts(const char *traceparent, const char *sid, int64_t timeout_ms)
{
    sh_call_opts_t opts = {
        .deadline_ms = sh_clock_wall_ms() + timeout_ms, .traceparent = traceparent, .session = sid};
    return opts;
}

/*  The request to answer through (valid while conn is).  */
static edge_req_t s_req(edge_conn_t *conn, int64_t started_us)
{
    edge_req_t req;
    memset(&req, 0, sizeof req);
    req.conn = conn;
    req.started_us = started_us;
    return req;
}

/*  A route's state of size bytes, its s_call_t head filled from req;
    NULL when memory ran out (answered here).  */
static void *s_call_new(edge_t *edge, edge_req_t *req, size_t size)
{
    s_call_t *call = calloc(1, size);
    if (!call) {
        edge_api_error(edge, req, 500, "internal", "out of memory");
        return NULL;
    }
    call->edge = edge;
    call->conn = req->conn;
    call->started_us = req->started_us;
    call->lsn = req->lsn;
    snprintf(call->sid, sizeof call->sid, "%s", req->cookie);
    edge_api_traceparent(call->traceparent);
    return call;
}

/*  Send a query-service call for the waiting client: a client that
    leaves meanwhile NULLs call->link.conn, which fn must check.  */
static void s_call_query(s_call_t *call, uint64_t op, const void *body, sh_reply_fn *fn, void *arg)
{
    sh_call_opts_t opts =
        s_opts(call->traceparent, call->sid, call->edge->config->request_timeout_ms);
    call->link.conn = call->conn;
    edge_http_await_job(call->conn, &call->link);
    sh_pool_send(call->edge->queries, op, body, &opts, fn, arg);
    sh_pool_drain(call->edge->queries);
}

/*  --- upload: life ---------------------------------------------------------------------  */

static void s_upload_free(s_upload_t *up)
{
    sh_buf_free(&up->fill);
    free(up);
}

/*  Free the upload when nothing will call back any more.  */
static void s_upload_settle(s_upload_t *up)
{
    if (up->phase == S_OVER && up->outstanding == 0 && !up->call.conn)
        s_upload_free(up);
}

/*  Throw the stream away on its instance (once).  */
static void s_upload_abort_stream(s_upload_t *up)
{
    if (!up->stream[0] || up->aborted)
        return;
    up->aborted = true;
    sh_upload_abort_req_t body = {.stream = sh_str(up->stream)};
    sh_call_opts_t opts =
        s_opts(up->call.traceparent, up->call.sid, up->call.edge->config->upload_timeout_ms);
    opts.instance = up->instance;
    sh_pool_send(up->call.edge->uploads, SH_OP_upload_abort, &body, &opts, s_ignore, NULL);
}

/*  The request is over for this upload: no more body, the connection is
    the route's no more.  */
static void s_upload_release(s_upload_t *up)
{
    up->phase = S_OVER;
    if (up->call.conn) {
        edge_body_sink_t none = {0};
        edge_http_body_sink(up->call.conn, &none);
        up->call.conn = NULL;
    }
    s_upload_settle(up);
}

static void s_upload_fail(s_upload_t *up, int status, const char *code, const char *message)
{
    if (up->phase != S_FINISH && up->phase != S_RECORD)
        s_upload_abort_stream(up);
    if (up->call.conn) {
        edge_req_t req = s_req(up->call.conn, up->call.started_us);
        edge_body_sink_t none = {0};
        edge_http_body_sink(up->call.conn, &none);
        edge_api_error(up->call.edge, &req, status, code, message);
    }
    s_upload_release(up);
}

static void s_upload_fail_call(s_upload_t *up, const sh_reply_t *reply)
{
    if (up->phase != S_FINISH && up->phase != S_RECORD)
        s_upload_abort_stream(up);
    if (up->call.conn) {
        edge_req_t req = s_req(up->call.conn, up->call.started_us);
        edge_body_sink_t none = {0};
        edge_http_body_sink(up->call.conn, &none);
        if (reply->status == SH_STATUS_TOO_LARGE && strcmp(reply->error, S_QUOTA_ERROR) == 0)
            edge_api_error(up->call.edge, &req, 413, "quota_exceeded", reply->error);
        else
            edge_api_call_error(up->call.edge, &req, reply);
    }
    s_upload_release(up);
}

/*  Send one call of the upload; fn takes the reply (maybe before this
    returns). Returns false when the upload is over: the caller must not
    touch it again (it may be freed).  */
static bool s_upload_send(s_upload_t *up, sh_pool_t *pool, uint64_t op, const void *body,
                          sh_call_opts_t *opts, sh_reply_fn *fn)
{
    up->outstanding += 2; /* the call, and a hold while it is sent */
    sh_pool_send(pool, op, body, opts, fn, up);
    sh_pool_drain(pool);
    up->outstanding--;
    if (up->phase == S_OVER) {
        s_upload_settle(up);
        return false;
    }
    return true;
}

/*  A reply came back: false when the upload is over and must not go on
    (it may have been freed).  */
static bool s_upload_back(s_upload_t *up)
{
    up->outstanding--;
    if (up->phase == S_OVER || !up->call.conn) {
        up->phase = S_OVER;
        s_upload_settle(up);
        return false;
    }
    return true;
}

/*  The body of a step's reply, or NULL when the upload cannot go on: it
    is over, or the call failed (answered here).  */
static const void *s_upload_step(s_upload_t *up, const sh_reply_t *reply)
{
    if (!s_upload_back(up))
        return NULL;
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_upload_fail_call(up, reply);
        return NULL;
    }
    return reply->body;
}

/*  --- upload: steps ---------------------------------------------------------------------  */

static void s_on_recorded(void *arg, const sh_reply_t *reply)
{
    s_upload_t *up = arg;
    if (!s_upload_back(up))
        return; /* a row without a reply is still a good row: the client may list it */
    if (reply->status != SH_STATUS_OK || !reply->body) {
        /*  the object has no row: delete it now (the sweeper would later)  */
        sh_upload_delete_req_t body = {.key = sh_str(up->key)};
        sh_call_opts_t opts =
            s_opts(up->call.traceparent, up->call.sid, up->call.edge->config->upload_timeout_ms);
        sh_pool_send(up->call.edge->uploads, SH_OP_upload_delete, &body, &opts, s_ignore, NULL);
        s_upload_fail_call(up, reply);
        return;
    }
    const sh_attachment_create_rep_t *rep = reply->body;
    sh_attachment_t file;
    SH_RECORD_COPY(SH_FIELDS_attachment, &file, rep);
    sh_buf_t buf = {0};
    int rc = sh_buf_append(&buf, "{\"attachment\":", 14);
    rc |= edge_json_attachment(&buf, &file);
    rc |= sh_buf_append(&buf, "}", 1);
    char cookie[S_COOKIE_MAX], lsn[24];
    uint64_t keep = rep->lsn > up->call.lsn ? rep->lsn : up->call.lsn;
    const char *names[2] = {NULL}, *values[2] = {NULL};
    if (keep) {
        snprintf(lsn, sizeof lsn, "%" PRIu64, keep);
        edge_api_cookie(up->call.edge, EDGE_LSN_COOKIE, lsn, EDGE_LSN_MAX_AGE_S, cookie,
                        sizeof cookie);
        names[0] = "set-cookie:";
        values[0] = cookie;
    }
    edge_req_t req = s_req(up->call.conn, up->call.started_us);
    edge_api_json_text(&req, 201, rc == 0 ? buf.data : NULL, buf.len, names, values);
    sh_buf_free(&buf);
    sh_info("upload %s: %" PRIu64 " bytes stored as attachment %" PRIu64, up->stream, up->size,
            rep->id);
    s_upload_release(up);
}

static void s_on_finished(void *arg, const sh_reply_t *reply)
{
    s_upload_t *up = arg;
    const sh_upload_finish_rep_t *rep = s_upload_step(up, reply);
    if (!rep)
        return;
    up->phase = S_RECORD;
    sh_attachment_create_req_t body = {.user_id = up->user_id,
                                       .item_id = up->item_id,
                                       .key = rep->key,
                                       .size = rep->size,
                                       .sha256 = rep->sha256,
                                       .content_type = rep->content_type,
                                       .name = sh_str(up->name),
                                       .quota =
                                           (uint64_t)up->call.edge->config->upload_quota_bytes};
    sh_str_copy(rep->key, up->key, sizeof up->key);
    sh_call_opts_t opts =
        s_opts(up->call.traceparent, up->call.sid, up->call.edge->config->request_timeout_ms);
    /*  the key is unique: a re-sent create finds the row the first made  */
    opts.idem_key = up->stream;
    s_upload_send(up, up->call.edge->queries, SH_OP_attachment_create, &body, &opts, s_on_recorded);
}

static void s_finish(s_upload_t *up)
{
    up->phase = S_FINISH;
    sh_upload_finish_req_t body = {.stream = sh_str(up->stream)};
    sh_call_opts_t opts =
        s_opts(up->call.traceparent, up->call.sid, up->call.edge->config->upload_finish_timeout_ms);
    opts.instance = up->instance;
    opts.attempt_ms = up->call.edge->config->upload_finish_timeout_ms;
    s_upload_send(up, up->call.edge->uploads, SH_OP_upload_finish, &body, &opts, s_on_finished);
}

static void s_on_chunk(void *arg, const sh_reply_t *reply);

/*  One pass: send what the credits allow. Returns false when the upload
    is over (it may be freed).  */
static bool s_pump_once(s_upload_t *up)
{
    while (up->phase == S_STREAM && up->credits > 0 &&
           (up->fill.len >= up->chunk_max || (up->body_done && up->fill.len > 0))) {
        size_t len = up->fill.len < up->chunk_max ? up->fill.len : (size_t)up->chunk_max;
        sh_upload_chunk_req_t body = {.stream = sh_str(up->stream), .offset = up->sent};
        sh_call_opts_t opts =
            s_opts(up->call.traceparent, up->call.sid, up->call.edge->config->upload_timeout_ms);
        opts.instance = up->instance;
        opts.raw = up->fill.data;
        opts.raw_len = len;
        up->credits--;
        up->sent += len;
        /*  the pool copied the bytes into the message before it returns  */
        if (!s_upload_send(up, up->call.edge->uploads, SH_OP_upload_chunk, &body, &opts,
                           s_on_chunk))
            return false;
        memmove(up->fill.data, up->fill.data + len, up->fill.len - len);
        up->fill.len -= len;
    }
    return true;
}

/*  Send what credits allow; stop or resume reading the client; finish
    when every byte went and came back acknowledged. Replies drained while
    a chunk is sent come back here: they only ask for another pass.  */
static void s_pump(s_upload_t *up)
{
    if (up->pumping) {
        up->repump = true;
        return;
    }
    up->pumping = true;
    do {
        up->repump = false;
        if (!s_pump_once(up))
            return;
    } while (up->phase == S_STREAM && up->repump);
    up->pumping = false;
    if (up->phase != S_STREAM || !up->call.conn)
        return;
    if (!up->body_done)
        edge_http_body_pause(up->call.conn, up->fill.len >= up->chunk_max);
    else if (up->fill.len == 0 && up->credits == up->window)
        s_finish(up);
}

static void s_on_chunk(void *arg, const sh_reply_t *reply)
{
    s_upload_t *up = arg;
    if (!s_upload_step(up, reply))
        return;
    up->credits++;
    s_pump(up);
}

static int s_on_data(void *arg, const void *bytes, size_t len)
{
    s_upload_t *up = arg;
    if (up->taken + len > up->size) {
        s_upload_fail(up, 400, "bad_request", "body longer than its Content-Length");
        return 0;
    }
    if (sh_buf_append(&up->fill, bytes, len)) {
        s_upload_fail(up, 500, "internal", "out of memory");
        return 0;
    }
    up->taken += len;
    if (up->phase == S_STREAM)
        s_pump(up);
    return 0;
}

static void s_on_body_done(void *arg)
{
    s_upload_t *up = arg;
    up->body_done = true;
    if (up->phase == S_STREAM)
        s_pump(up);
}

static void s_on_upload_closed(void *arg)
{
    s_upload_t *up = arg;
    up->call.conn = NULL;
    if (up->phase == S_AUTH) {
        /*  the session check still calls back once: free then  */
        up->gone = true;
        return;
    }
    if (up->phase != S_FINISH && up->phase != S_RECORD)
        s_upload_abort_stream(up);
    up->phase = S_OVER;
    s_upload_settle(up);
}

static void s_on_begun(void *arg, const sh_reply_t *reply)
{
    s_upload_t *up = arg;
    if (reply->status == SH_STATUS_OK && reply->body && reply->env) {
        /*  remember the stream even if the client left: it must be aborted  */
        const sh_upload_begin_rep_t *rep = reply->body;
        sh_str_copy(rep->stream, up->stream, sizeof up->stream);
        sh_str_copy(rep->key, up->key, sizeof up->key);
        sh_str_copy(reply->env->instance, up->instance, sizeof up->instance);
        up->chunk_max = rep->chunk_max;
        up->window = rep->window;
    }
    if (up->phase == S_OVER || !up->call.conn) {
        s_upload_abort_stream(up);
        s_upload_back(up);
        return;
    }
    if (!s_upload_back(up))
        return;
    if (reply->status != SH_STATUS_OK || !reply->body) {
        s_upload_fail_call(up, reply);
        return;
    }
    if (!up->stream[0] || up->chunk_max == 0 || up->chunk_max > SH_CHUNK_MAX || up->window == 0) {
        s_upload_fail(up, 500, "internal", "the upload service gave an unusable stream");
        return;
    }
    up->phase = S_STREAM;
    up->credits = up->window;
    s_pump(up);
}

static void s_on_usage(void *arg, const sh_reply_t *reply)
{
    s_upload_t *up = arg;
    const sh_attachment_usage_rep_t *rep = s_upload_step(up, reply);
    if (!rep)
        return;
    uint64_t quota = (uint64_t)up->call.edge->config->upload_quota_bytes;
    if (!rep->item_exists) {
        s_upload_fail(up, 404, "not_found", "no such item");
        return;
    }
    if (rep->item_author_id != up->user_id) {
        s_upload_fail(up, 403, "forbidden", "only the item's author may attach files");
        return;
    }
    if (rep->item_attachments >= SH_ATTACH_MAX) {
        s_upload_fail(up, 413, "too_large", "the item has 100 attachments");
        return;
    }
    if (quota && (rep->used_bytes > quota || up->size > quota - rep->used_bytes)) {
        s_upload_fail(up, 413, "quota_exceeded", S_QUOTA_ERROR);
        return;
    }
    up->phase = S_BEGIN;
    sh_upload_begin_req_t body = {.size = up->size, .declared_type = sh_str(up->declared)};
    sh_call_opts_t opts =
        s_opts(up->call.traceparent, up->call.sid, up->call.edge->config->upload_timeout_ms);
    s_upload_send(up, up->call.edge->uploads, SH_OP_upload_begin, &body, &opts, s_on_begun);
}

static void s_on_upload_user(void *arg, uint64_t user_id, const char *username)
{
    (void)username;
    s_upload_t *up = arg;
    if (!user_id || up->gone) {
        /*  answered already (401, 403, 503), or the client left  */
        up->call.conn = NULL;
        up->phase = S_OVER;
        s_upload_settle(up);
        return;
    }
    up->user_id = user_id;
    up->phase = S_USAGE;
    sh_attachment_usage_req_t body = {.user_id = user_id, .item_id = up->item_id};
    sh_call_opts_t opts =
        s_opts(up->call.traceparent, up->call.sid, up->call.edge->config->request_timeout_ms);
    s_upload_send(up, up->call.edge->queries, SH_OP_attachment_usage, &body, &opts, s_on_usage);
}

/*  POST /api/uploads?item_id=<id>  */
static void s_upload(edge_t *edge, edge_req_t *req)
{
    const edge_config_t *config = edge->config;
    if (req->method != EDGE_POST) {
        edge_api_method_not_allowed(edge, req, "POST");
        return;
    }
    if (!edge_api_same_origin(edge, req)) {
        edge_api_error(edge, req, 403, "forbidden", "cross-origin request refused");
        return;
    }
    if (req->content_length < 0) {
        edge_api_error(edge, req, 411, "length_required", "send the file with a Content-Length");
        return;
    }
    if (req->content_length > config->upload_max_bytes) {
        char message[96];
        snprintf(message, sizeof message, "files are limited to %" PRId64 " bytes",
                 config->upload_max_bytes);
        edge_api_error(edge, req, 413, "too_large", message);
        return;
    }
    uint64_t item_id;
    const char *item = edge_arg_find(req->args, req->args_len, "item_id");
    if (!item || edge_parse_id(item, &item_id)) {
        edge_api_error(edge, req, 400, "invalid", "item_id (a positive number) is required");
        return;
    }
    char name[SH_FILENAME_MAX + 1];
    const char *why = NULL;
    if (edge_file_name_decode(req->file_name, name, sizeof name, &why) < 0) {
        edge_api_error(edge, req, 400, "invalid", why);
        return;
    }
    s_upload_t *up = s_call_new(edge, req, sizeof *up);
    if (!up)
        return;
    memcpy(up->name, name, sizeof name);
    up->item_id = item_id;
    up->size = (uint64_t)req->content_length;
    up->body_done = up->size == 0;
    snprintf(up->declared, sizeof up->declared, "%s", req->content_type);
    /*  also for an empty body: the sink is how a leaving client is heard  */
    edge_body_sink_t sink = {s_on_data, s_on_body_done, s_on_upload_closed, up};
    edge_http_body_sink(req->conn, &sink);
    up->phase = S_AUTH;
    edge_board_with_user(edge, req, true, s_on_upload_user, up);
}

/*  --- download ----------------------------------------------------------------------------  */

static void s_download_settle(s_download_t *dl)
{
    if (dl->over && dl->outstanding == 0 && !dl->call.conn)
        free(dl);
}

static void s_download_end(s_download_t *dl)
{
    dl->over = true;
    dl->call.conn = NULL;
    s_download_settle(dl);
}

static void s_on_read(void *arg, const sh_reply_t *reply);

/*  Keep up to S_READ_AHEAD chunks queued or in flight, one read at a
    time: reads may go to different instances, and one at a time keeps
    the bytes in order.  */
static void s_read_more(s_download_t *dl)
{
    while (!dl->over && dl->call.conn && dl->next < dl->end && dl->outstanding == 0 &&
           edge_http_stream_queued(dl->call.conn) < (uint64_t)(S_READ_AHEAD - 1) * S_READ_BYTES) {
        uint64_t len = dl->end - dl->next < S_READ_BYTES ? dl->end - dl->next : S_READ_BYTES;
        sh_upload_read_req_t body = {.key = sh_str(dl->key), .offset = dl->next, .length = len};
        sh_call_opts_t opts =
            s_opts(dl->call.traceparent, dl->call.sid, dl->call.edge->config->upload_timeout_ms);
        dl->read_from = dl->next;
        dl->next += len;
        dl->outstanding += 2; /* the call, and a hold while it is sent */
        sh_pool_send(dl->call.edge->uploads, SH_OP_upload_read, &body, &opts, s_on_read, dl);
        sh_pool_drain(dl->call.edge->uploads);
        dl->outstanding--;
        if (dl->over) {
            s_download_settle(dl);
            return;
        }
    }
}

static void s_on_read(void *arg, const sh_reply_t *reply)
{
    s_download_t *dl = arg;
    dl->outstanding--;
    if (dl->over || !dl->call.conn) {
        s_download_settle(dl);
        return;
    }
    const sh_upload_read_rep_t *rep = reply->body;
    if (reply->status != SH_STATUS_OK || !rep || !reply->raw || reply->raw_len != rep->length ||
        rep->length == 0) {
        /*  the status line went out already: all we can do is cut it short  */
        sh_warn("download of %s failed at byte %" PRIu64 ": %s (%s)", dl->key, dl->read_from,
                sh_status_code(reply->status), reply->error);
        edge_http_stream_abort(dl->call.conn);
        s_download_end(dl);
        return;
    }
    if (edge_http_stream_push(dl->call.conn, reply->raw, reply->raw_len)) {
        s_download_end(dl);
        return;
    }
    s_read_more(dl);
}

static void s_on_more(void *arg)
{
    s_read_more(arg);
}

/*  The stream ended: every byte written, or the client left.  */
static void s_on_download_ended(void *arg)
{
    s_download_t *dl = arg;
    s_download_end(dl);
}

/*  302 to the presigned URL.  */
static void s_on_presigned(void *arg, const sh_reply_t *reply)
{
    s_download_t *dl = arg;
    dl->outstanding--;
    dl->call.conn = dl->call.link.conn;
    if (dl->over || !dl->call.conn) {
        s_download_end(dl);
        return;
    }
    edge_req_t req = s_req(dl->call.conn, dl->call.started_us);
    const sh_upload_presign_rep_t *rep = reply->body;
    if (reply->status != SH_STATUS_OK || !rep) {
        edge_api_call_error(dl->call.edge, &req, reply);
        s_download_end(dl);
        return;
    }
    char *location = malloc(rep->url.len + 1);
    sh_buf_t buf = {0};
    int rc = location ? 0 : -1;
    if (location) {
        sh_str_copy(rep->url, location, rep->url.len + 1);
        rc |= sh_buf_append(&buf, "{\"url\":", 7);
        rc |= edge_json_str(&buf, location, rep->url.len);
        rc |= sh_buf_append(&buf, "}", 1);
    }
    const char *names[2] = {"location:", NULL}, *values[2] = {location, NULL};
    edge_api_json_text(&req, 302, rc == 0 ? buf.data : NULL, buf.len, names, values);
    sh_buf_free(&buf);
    free(location);
    s_download_end(dl);
}

static void s_on_attachment(void *arg, const sh_reply_t *reply)
{
    s_download_t *dl = arg;
    dl->outstanding--;
    dl->call.conn = dl->call.link.conn;
    if (dl->over || !dl->call.conn) {
        dl->over = true;
        s_download_settle(dl);
        return;
    }
    edge_req_t req = s_req(dl->call.conn, 0);
    req.started_us = sh_clock_mono_us();
    if (reply->status != SH_STATUS_OK || !reply->body) {
        if (reply->status == SH_STATUS_NOT_FOUND)
            edge_api_error(dl->call.edge, &req, 404, "not_found", "no such file");
        else
            edge_api_call_error(dl->call.edge, &req, reply);
        s_download_end(dl);
        return;
    }
    const sh_attachment_get_rep_t *rep = reply->body;
    char etag[SH_SHA256_HEX + 3], type[SH_MIME_MAX + 1], name[SH_FILENAME_MAX + 1];
    char disposition[S_DISPOSITION], range[96];
    snprintf(etag, sizeof etag, "\"%.*s\"", (int)rep->sha256.len, rep->sha256.ptr);
    sh_str_copy(rep->content_type, type, sizeof type);
    sh_str_copy(rep->name, name, sizeof name);
    sh_str_copy(rep->key, dl->key, sizeof dl->key);
    if (edge_content_disposition(name, disposition, sizeof disposition))
        snprintf(disposition, sizeof disposition, "attachment");
    edge_resp_t resp = {200, type[0] ? type : "application/octet-stream", NULL, 0, {NULL}, {NULL}};
    const char *names[S_DOWNLOAD_HDRS] = {"etag:",
                                          "content-disposition:",
                                          "accept-ranges:",
                                          "cache-control:",
                                          "content-security-policy:",
                                          NULL,
                                          NULL};
    const char *values[S_DOWNLOAD_HDRS] = {
        etag, disposition, "bytes", "private, no-cache", S_DOWNLOAD_CSP, NULL, NULL};
    for (int i = 0; i < S_DOWNLOAD_HDRS; i++) {
        resp.header_names[i] = names[i];
        resp.header_values[i] = values[i];
    }
    if (dl->if_none_match[0] &&
        (strcmp(dl->if_none_match, etag) == 0 || strcmp(dl->if_none_match, "*") == 0)) {
        resp.status = 304;
        edge_http_respond(dl->call.conn, &resp);
        s_download_end(dl);
        return;
    }
    if (strcmp(dl->call.edge->config->download_mode, "presigned") == 0) {
        /*  S3 serves the bytes (ranges and conditions too) with our headers  */
        sh_upload_presign_req_t body = {.key = rep->key,
                                        .expires_s =
                                            (uint64_t)dl->call.edge->config->download_url_ttl_s,
                                        .disposition = sh_str(disposition),
                                        .content_type = sh_str(resp.content_type)};
        sh_call_opts_t opts =
            s_opts(dl->call.traceparent, dl->call.sid, dl->call.edge->config->request_timeout_ms);
        dl->call.link.conn = dl->call.conn;
        edge_http_await_job(dl->call.conn, &dl->call.link);
        dl->outstanding++;
        sh_pool_send(dl->call.edge->uploads, SH_OP_upload_presign, &body, &opts, s_on_presigned,
                     dl);
        sh_pool_drain(dl->call.edge->uploads);
        return;
    }
    uint64_t size = rep->size, first = 0, last = size ? size - 1 : 0;
    int ranged = edge_range_parse(dl->range, size, &first, &last);
    if (ranged < 0) {
        static const char text[] = "{\"error\":{\"code\":\"range_not_satisfiable\","
                                   "\"message\":\"the range is outside the file\"}}";
        snprintf(range, sizeof range, "bytes */%" PRIu64, size);
        const char *rn[2] = {"content-range:", NULL}, *rv[2] = {range, NULL};
        edge_api_json_text(&req, 416, text, sizeof text - 1, rn, rv);
        s_download_end(dl);
        return;
    }
    if (ranged > 0) {
        resp.status = 206;
        snprintf(range, sizeof range, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, first, last, size);
        resp.header_names[5] = "content-range:";
        resp.header_values[5] = range;
    }
    dl->next = first;
    dl->end = size ? last + 1 : 0;
    edge_body_source_t source = {s_on_more, s_on_download_ended, dl};
    if (edge_http_stream_begin(dl->call.conn, &resp, dl->end - dl->next, &source)) {
        s_download_end(dl);
        return;
    }
    if (dl->method == EDGE_HEAD)
        dl->next = dl->end;
    s_read_more(dl);
}

static void s_on_download_user(void *arg, uint64_t user_id, const char *username)
{
    (void)username;
    s_download_t *dl = arg;
    if (!user_id) {
        s_download_end(dl);
        return;
    }
    sh_attachment_get_req_t body = {.id = dl->id, .min_lsn = dl->call.lsn};
    dl->outstanding++;
    s_call_query(&dl->call, SH_OP_attachment_get, &body, s_on_attachment, dl);
}

/*  GET|HEAD /api/uploads/<id>  */
static void s_download(edge_t *edge, edge_req_t *req, const char *id_text)
{
    uint64_t id;
    if (edge_parse_id(id_text, &id)) {
        edge_api_error(edge, req, 404, "not_found", "no such file");
        return;
    }
    if (req->method != EDGE_GET && req->method != EDGE_HEAD) {
        edge_api_method_not_allowed(edge, req, "GET, HEAD");
        return;
    }
    s_download_t *dl = s_call_new(edge, req, sizeof *dl);
    if (!dl)
        return;
    dl->id = id;
    dl->method = req->method;
    snprintf(dl->range, sizeof dl->range, "%s", req->range);
    snprintf(dl->if_none_match, sizeof dl->if_none_match, "%s", req->if_none_match);
    edge_board_with_user(edge, req, false, s_on_download_user, dl);
}

/*  --- list ------------------------------------------------------------------------------  */

typedef struct {
    s_call_t call;
    uint64_t item_id;
} s_list_t;

static void s_on_list(void *arg, const sh_reply_t *reply)
{
    s_list_t *list = arg;
    if (!list->call.link.conn) {
        free(list);
        return;
    }
    edge_req_t req = s_req(list->call.link.conn, list->call.started_us);
    if (reply->status != SH_STATUS_OK || !reply->body) {
        edge_api_call_error(list->call.edge, &req, reply);
        free(list);
        return;
    }
    const sh_attachment_list_rep_t *rep = reply->body;
    sh_buf_t buf = {0};
    int rc = sh_buf_append(&buf, "{\"attachments\":[", 16);
    for (uint32_t i = 0; i < rep->attachments.count && rc == 0; i++) {
        if (i)
            rc |= sh_buf_append(&buf, ",", 1);
        rc |= edge_json_attachment(&buf, &rep->attachments.items[i]);
    }
    rc |= sh_buf_append(&buf, "]}", 2);
    edge_api_json_text(&req, 200, rc == 0 ? buf.data : NULL, buf.len, NULL, NULL);
    sh_buf_free(&buf);
    free(list);
}

static void s_on_list_user(void *arg, uint64_t user_id, const char *username)
{
    (void)username;
    s_list_t *list = arg;
    if (!user_id) {
        free(list);
        return;
    }
    sh_attachment_list_req_t body = {.item_id = list->item_id, .min_lsn = list->call.lsn};
    s_call_query(&list->call, SH_OP_attachment_list, &body, s_on_list, list);
}

/*  GET /api/items/<id>/attachments  */
static void s_list(edge_t *edge, edge_req_t *req, uint64_t item_id)
{
    if (req->method != EDGE_GET) {
        edge_api_method_not_allowed(edge, req, "GET");
        return;
    }
    s_list_t *list = s_call_new(edge, req, sizeof *list);
    if (!list)
        return;
    list->item_id = item_id;
    edge_board_with_user(edge, req, false, s_on_list_user, list);
}

int edge_upload_handle(edge_t *edge, edge_req_t *req)
{
    const char *path = req->path;
    if (strcmp(path, S_UPLOADS_PATH) == 0)
        s_upload(edge, req);
    else if (strncmp(path, S_UPLOADS_PATH "/", sizeof S_UPLOADS_PATH) == 0)
        s_download(edge, req, path + sizeof S_UPLOADS_PATH);
    else if (strncmp(path, S_ITEMS_PATH, sizeof S_ITEMS_PATH - 1) == 0) {
        const char *id = path + sizeof S_ITEMS_PATH - 1;
        const char *slash = strchr(id, '/');
        char digits[24];
        uint64_t item_id;
        if (!slash || strcmp(slash, "/attachments") != 0 || (size_t)(slash - id) >= sizeof digits)
            return 0;
        memcpy(digits, id, (size_t)(slash - id));
        digits[slash - id] = 0;
        if (edge_parse_id(digits, &item_id)) {
            edge_api_error(edge, req, 404, "not_found", "no such item");
            return 1;
        }
        s_list(edge, req, item_id);
    } else
        return 0;
    return 1;
}
