/*  upload_server.c - upload streams, object reads and deletes (see
    upload_server.h).

    A stream is a small state machine. Requests and S3 callbacks change
    its state and then call s_pump, which does whatever can be done next:
    copy held chunks into the part buffer, send a full part, complete the
    object. S3 calls may answer before they return, so s_pump never nests:
    a call made from inside it only asks it to go round once more. A
    stream is freed only by the outermost s_pump, once it left the table
    and no S3 call of it is pending.

    Stream states: CREATING (multipart upload being created, the begin
    request waiting), OPEN, FAILED (answers the next request of the stream
    with the failure, then leaves the table), DONE.
*/
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "sh_log.h"
#include "upload_hash.h"
#include "upload_server.h"
#include "upload_sniff.h"

#define S_STREAM_ID_BYTES  16 /* 22 characters of base64url */
#define S_KEY_RANDOM_BYTES (UPLOAD_KEY_HEX / 2)
#define S_TICK_MIN_MS      20   /* housekeeping: idle streams, draining */
#define S_TICK_MAX_MS      1000 /* idle streams are found within a quarter of the idle time */
#define S_RANGE_MAX        64
#define S_SHA256_HEX       (2 * UPLOAD_HASH_BYTES + 1)

typedef enum { S_CREATING, S_OPEN, S_FAILED, S_DONE } s_state_t;

/*  shoal_uploads_total{result}: how streams ended.  */
typedef enum {
    S_RESULT_OK,       /* stored */
    S_RESULT_ABORTED,  /* by the caller, by silence, or by draining */
    S_RESULT_FAILED,   /* S3 or memory failed */
    S_RESULT_REJECTED, /* refused at begin, or bad input (offset, size, type) */
    S_RESULTS
} s_result_t;
static const char *const s_result_names[S_RESULTS] = {"ok", "aborted", "failed", "rejected"};

typedef struct {
    char *etag;
    uint8_t sha256[UPLOAD_HASH_BYTES];
} s_part_t;

typedef struct s_stream_t {
    struct s_stream_t *prev, *next;
    upload_server_t *server;
    bool linked; /* in the server's table: its id finds it */
    s_state_t state;
    char id[SH_ID_MAX + 1];
    char key[SH_OBJKEY_MAX + 1];
    char declared[SH_MIME_MAX];
    size_t declared_len;
    const char *content_type; /* sniffed (static string); NULL until the first bytes are in */
    uint64_t size;
    uint64_t accepted;    /* bytes of the chunks taken: copied or held */
    uint64_t copied;      /* bytes in the buffers and the hashes */
    int64_t last_ms;      /* monotonic time of the stream's last request */
    upload_hash_t *whole; /* of the object */
    upload_hash_t *part;  /* of the part being filled */
    bool multipart;
    char *upload_id;
    size_t cap;       /* bytes of each buffer: the part size, or the whole file */
    int64_t reserved; /* its share of the instance's buffer budget while live */
    uint8_t *fill;    /* the part being filled */
    size_t fill_len;
    uint8_t *spare;  /* a sent part's buffer, to fill again */
    uint8_t *flight; /* the part being sent (borrowed by S3 until its callback) */
    s_part_t *parts; /* sent or being sent */
    size_t part_count, part_cap;
    sh_request_t **held; /* chunk requests not yet copied: a ring of `window` */
    size_t held_first, held_count;
    size_t head_used; /* bytes of the first held chunk already copied */
    uint64_t held_bytes;
    sh_request_t *begin;  /* waiting for the multipart upload */
    sh_request_t *finish; /* waiting for the object */
    bool committing;      /* CompleteMultipartUpload or PutObject pending */
    bool abort_due;       /* abort the multipart upload once no call is pending */
    int calls;            /* S3 calls of this stream pending */
    bool pumping, again;
    uint64_t fail_status;
    char fail_error[SH_ERROR_MAX + 1];
    char sha_hex[S_SHA256_HEX];
} s_stream_t;

struct upload_server_t {
    sh_service_t *service;
    upload_s3_t *s3;
    upload_server_config_t config;
    s_stream_t *head;
    int64_t live;     /* streams creating or open */
    int64_t reserved; /* bytes the live streams may hold at most */
    int64_t calls;    /* S3 calls of streams pending */
    int64_t buffered;
    int tick;
    bool draining;
    bool closing;
    uint64_t *results[S_RESULTS];
    uint64_t *bytes;
    uint64_t *read_bytes;
    int64_t *streams_gauge;
    int64_t *buffer_gauge;
};

/*  upload_server_close waiting for the last aborts.  */
typedef struct {
    upload_server_t *server;
    int64_t end_ms;
} s_close_wait_t;

/*  An upload_read or upload_delete waiting for S3.  */
typedef struct {
    upload_server_t *server;
    sh_request_t *request;
    uint64_t offset, length;
    sh_buf_t data;
    bool overflow;
} s_call_t;

static void s_pump(s_stream_t *st);

bool upload_key_valid(const char *prefix, const char *key, size_t len)
{
    size_t plen = strlen(prefix);
    if (!key || len != plen + UPLOAD_KEY_HEX || memcmp(key, prefix, plen) != 0)
        return false;
    for (size_t i = plen; i < len; i++) {
        char c = key[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/*  --- bookkeeping ----------------------------------------------------------  */

static void s_gauges(upload_server_t *self)
{
    *self->streams_gauge = self->live;
    int64_t held = 0;
    for (s_stream_t *st = self->head; st; st = st->next)
        held += (int64_t)st->held_bytes;
    *self->buffer_gauge = self->buffered + held;
}

static uint8_t *s_buffer_new(s_stream_t *st)
{
    uint8_t *buf = malloc(st->cap ? st->cap : 1);
    if (buf)
        st->server->buffered += (int64_t)st->cap;
    return buf;
}

static void s_buffer_free(s_stream_t *st, uint8_t **buf_p)
{
    if (!*buf_p)
        return;
    free(*buf_p);
    *buf_p = NULL;
    st->server->buffered -= (int64_t)st->cap;
}

/*  An S3 call of the stream starts or ends: the stream (and the server,
    which waits for them when it closes) counts them.  */
static void s_call_started(s_stream_t *st)
{
    st->calls++;
    st->server->calls++;
}

static void s_call_ended(s_stream_t *st)
{
    st->calls--;
    st->server->calls--;
}

static void s_link(upload_server_t *self, s_stream_t *st)
{
    st->next = self->head;
    if (self->head)
        self->head->prev = st;
    self->head = st;
    st->linked = true;
}

/*  Take the stream out of the table: its id finds nothing any more.  */
static void s_unlink(s_stream_t *st)
{
    if (!st->linked)
        return;
    upload_server_t *self = st->server;
    if (st->prev)
        st->prev->next = st->next;
    else
        self->head = st->next;
    if (st->next)
        st->next->prev = st->prev;
    st->prev = st->next = NULL;
    st->linked = false;
}

static void s_stream_free(s_stream_t *st)
{
    s_buffer_free(st, &st->fill);
    s_buffer_free(st, &st->spare);
    s_buffer_free(st, &st->flight);
    for (size_t i = 0; i < st->part_count; i++)
        free(st->parts[i].etag);
    free(st->parts);
    free(st->held);
    free(st->upload_id);
    upload_hash_destroy(&st->whole);
    upload_hash_destroy(&st->part);
    s_gauges(st->server);
    free(st);
}

/*  The stream named by a request, open or failed (a stream being created
    has an id nobody knows yet).  */
static s_stream_t *s_find(upload_server_t *self, sh_str_t id)
{
    for (s_stream_t *st = self->head; st; st = st->next)
        if ((st->state == S_OPEN || st->state == S_FAILED) && sh_str_eq(id, st->id))
            return st;
    return NULL;
}

/*  "storage <what>: <status> (HTTP <n> <code>)" for an S3 failure.  */
static void s_storage_why(char *out, size_t size, const char *what, uint64_t status,
                          const upload_s3_result_t *r)
{
    if (r && r->http_status)
        snprintf(out, size, "storage %s: %s (HTTP %d%s%s)", what, sh_status_code(status),
                 r->http_status, r->error_code[0] ? " " : "", r->error_code);
    else
        snprintf(out, size, "storage %s: %s", what, sh_status_code(status));
}

/*  The stream ends with status: every request of it still waiting gets
    that answer, the buffers go (the part in flight when its call
    returns), and the multipart upload is aborted once no call is pending.
    The stream stays in the table to answer its next request.  */
static void s_fail(s_stream_t *st, uint64_t status, const char *why, s_result_t result)
{
    if (st->state == S_FAILED || st->state == S_DONE)
        return;
    upload_server_t *self = st->server;
    st->state = S_FAILED;
    st->fail_status = status;
    snprintf(st->fail_error, sizeof st->fail_error, "%s", why);
    (*self->results[result])++;
    self->live--;
    self->reserved -= st->reserved;
    sh_service_hold(self->service, -1);
    sh_log(result == S_RESULT_FAILED ? SH_LOG_WARN : SH_LOG_INFO, NULL, "upload %s ended: %s",
           st->key, why);
    while (st->held_count) {
        sh_request_t *request = st->held[st->held_first];
        st->held_first = (st->held_first + 1) % self->config.window;
        st->held_count--;
        sh_service_reply(self->service, &request, status, why, NULL);
    }
    st->held_bytes = 0;
    st->head_used = 0;
    sh_service_reply(self->service, &st->begin, status, why, NULL);
    sh_service_reply(self->service, &st->finish, status, why, NULL);
    /*  a PutObject in flight borrows the buffer until its callback  */
    if (!st->committing || st->multipart)
        s_buffer_free(st, &st->fill);
    s_buffer_free(st, &st->spare);
    if (st->upload_id)
        st->abort_due = true;
    /*  inside s_pump: one more round starts the abort  */
    st->again = true;
    s_gauges(self);
}

/*  A failed stream's next request hears why, and the stream is gone.
    Returns true when it answered the request.  */
static bool s_answer_failed(s_stream_t *st, sh_request_t **request_p)
{
    if (st->state != S_FAILED)
        return false;
    char why[SH_ERROR_MAX + 1];
    snprintf(why, sizeof why, "upload stream ended: %.*s", (int)(sizeof why - 24), st->fail_error);
    sh_service_reply(st->server->service, request_p, st->fail_status, why, NULL);
    s_unlink(st);
    s_pump(st);
    return true;
}

/*  --- S3 callbacks ---------------------------------------------------------  */

static void s_on_aborted(void *arg, uint64_t status, const upload_s3_result_t *result)
{
    s_stream_t *st = arg;
    s_call_ended(st);
    /*  NOT_FOUND: gone already (completed, or aborted by another pass)  */
    if (status != SH_STATUS_OK && status != SH_STATUS_NOT_FOUND) {
        char why[SH_ERROR_MAX];
        s_storage_why(why, sizeof why, "abort", status, result);
        sh_warn("upload %s: %s; the sweeper will retry", st->key, why);
    }
    s_pump(st);
}

static void s_on_created(void *arg, uint64_t status, const upload_s3_result_t *result)
{
    s_stream_t *st = arg;
    upload_server_t *self = st->server;
    s_call_ended(st);
    if (status == SH_STATUS_OK) {
        st->upload_id = result->upload_id[0] ? strdup(result->upload_id) : NULL;
        if (!st->upload_id) {
            /*  out of memory: the upload is left to the sweeper  */
            s_fail(st, SH_STATUS_INTERNAL, "storage create: no upload id kept", S_RESULT_FAILED);
            s_unlink(st);
        } else if (st->state == S_CREATING) {
            st->state = S_OPEN;
            sh_upload_begin_rep_t rep = {.stream = sh_str(st->id),
                                         .key = sh_str(st->key),
                                         .chunk_max = self->config.chunk_bytes,
                                         .window = self->config.window};
            sh_service_reply(self->service, &st->begin, SH_STATUS_OK, NULL, &rep);
        } else
            st->abort_due = true; /* failed while being created */
    } else if (st->state == S_CREATING) {
        char why[SH_ERROR_MAX];
        s_storage_why(why, sizeof why, "create", status, result);
        s_fail(st, status, why, S_RESULT_FAILED);
        /*  its id was never given out  */
        s_unlink(st);
    }
    s_pump(st);
}

static void s_on_part(void *arg, uint64_t status, const upload_s3_result_t *result)
{
    s_stream_t *st = arg;
    s_call_ended(st);
    s_part_t *part = &st->parts[st->part_count - 1];
    if (status == SH_STATUS_OK && st->state == S_OPEN) {
        part->etag = result->etag[0] ? strdup(result->etag) : NULL;
        if (!part->etag)
            s_fail(st, SH_STATUS_INTERNAL, "storage part: no ETag kept", S_RESULT_FAILED);
    } else if (status != SH_STATUS_OK) {
        char what[32], why[SH_ERROR_MAX];
        snprintf(what, sizeof what, "part %zu", st->part_count);
        s_storage_why(why, sizeof why, what, status, result);
        s_fail(st, status, why, S_RESULT_FAILED);
    }
    /*  the sent part's buffer is filled again, unless the stream is over  */
    if (st->state == S_OPEN && !st->spare) {
        st->spare = st->flight;
        st->flight = NULL;
    } else
        s_buffer_free(st, &st->flight);
    s_pump(st);
}

static void s_on_committed(void *arg, uint64_t status, const upload_s3_result_t *result)
{
    s_stream_t *st = arg;
    upload_server_t *self = st->server;
    s_call_ended(st);
    st->committing = false;
    if (st->state == S_OPEN && status == SH_STATUS_OK) {
        sh_upload_finish_rep_t rep = {.key = sh_str(st->key),
                                      .size = st->size,
                                      .sha256 = sh_str(st->sha_hex),
                                      .content_type = sh_str(st->content_type)};
        sh_service_reply(self->service, &st->finish, SH_STATUS_OK, NULL, &rep);
        st->state = S_DONE;
        self->live--;
        self->reserved -= st->reserved;
        sh_service_hold(self->service, -1);
        (*self->results[S_RESULT_OK])++;
        s_buffer_free(st, &st->fill);
        s_buffer_free(st, &st->spare);
        sh_log(SH_LOG_INFO, NULL, "upload %s stored: %" PRIu64 " bytes, %s, %zu parts", st->key,
               st->size, st->content_type, st->part_count);
        s_unlink(st);
        s_gauges(self);
    } else if (st->state == S_OPEN) {
        char why[SH_ERROR_MAX];
        s_storage_why(why, sizeof why, st->multipart ? "complete" : "put", status, result);
        s_fail(st, status, why, S_RESULT_FAILED);
    }
    if (st->state != S_OPEN)
        s_buffer_free(st, &st->fill);
    s_pump(st);
}

/*  --- the stream machine ---------------------------------------------------  */

/*  Send the filled buffer as the next part. Returns 0, or -1 when the
    stream failed.  */
static int s_ship(s_stream_t *st)
{
    upload_server_t *self = st->server;
    if (st->part_count == st->part_cap) {
        size_t cap = st->part_cap ? 2 * st->part_cap : 16;
        s_part_t *parts = realloc(st->parts, cap * sizeof *parts);
        if (!parts) {
            s_fail(st, SH_STATUS_INTERNAL, "out of memory", S_RESULT_FAILED);
            return -1;
        }
        st->parts = parts;
        st->part_cap = cap;
    }
    s_part_t *part = &st->parts[st->part_count++];
    part->etag = NULL;
    upload_hash_final(st->part, part->sha256);
    size_t len = st->fill_len;
    st->flight = st->fill;
    st->fill = st->spare;
    st->spare = NULL;
    st->fill_len = 0;
    s_call_started(st);
    /*  a part gets the whole S3 timeout, whatever the chunk's deadline  */
    upload_s3_upload_part(self->s3, st->key, st->upload_id, (int)st->part_count, st->flight, len,
                          part->sha256, true, self->config.s3_timeout_ms, s_on_part, st);
    return st->state == S_OPEN ? 0 : -1;
}

/*  The first bytes are in: sniff them. Returns 0, or -1 when they
    contradict the declared type (the stream failed).  */
static int s_sniff(s_stream_t *st)
{
    size_t n = st->copied < UPLOAD_SNIFF_BYTES ? (size_t)st->copied : UPLOAD_SNIFF_BYTES;
    st->content_type = upload_sniff_type(st->fill, n, st->size > n);
    if (upload_sniff_agrees(st->declared, st->declared_len, st->content_type))
        return 0;
    char why[SH_ERROR_MAX];
    snprintf(why, sizeof why, "the bytes are %s, not the declared %.*s", st->content_type,
             (int)st->declared_len, st->declared);
    s_fail(st, SH_STATUS_UNSUPPORTED_TYPE, why, S_RESULT_REJECTED);
    return -1;
}

/*  Copy held chunks into the part buffer while there is room, sending
    full parts; answer each chunk once all of it is copied. Returns -1
    when the stream failed.  */
static int s_take(s_stream_t *st)
{
    upload_server_t *self = st->server;
    while (st->held_count) {
        sh_request_t *request = st->held[st->held_first];
        size_t len = 0;
        const uint8_t *data = sh_request_raw(request, &len);
        if (st->fill_len == st->cap) {
            if (st->multipart && !st->flight) {
                if (s_ship(st))
                    return -1;
                continue;
            }
            return 0; /* both buffers busy: the reply waits, that is the back-pressure */
        }
        if (!st->fill && !(st->fill = s_buffer_new(st))) {
            s_fail(st, SH_STATUS_INTERNAL, "out of memory", S_RESULT_FAILED);
            return -1;
        }
        size_t room = st->cap - st->fill_len;
        size_t n = len - st->head_used < room ? len - st->head_used : room;
        const uint8_t *from = data + st->head_used;
        memcpy(st->fill + st->fill_len, from, n);
        upload_hash_update(st->whole, from, n);
        if (st->multipart)
            upload_hash_update(st->part, from, n);
        st->fill_len += n;
        st->head_used += n;
        st->copied += n;
        /*  the first part buffer starts at byte 0 and holds more than the
            sniffed window, so the window is here before any part leaves  */
        if (!st->content_type &&
            st->copied >= (st->size < UPLOAD_SNIFF_BYTES ? st->size : UPLOAD_SNIFF_BYTES) &&
            s_sniff(st))
            return -1;
        if (st->head_used == len) {
            st->held_first = (st->held_first + 1) % self->config.window;
            st->held_count--;
            st->held_bytes -= len;
            st->head_used = 0;
            sh_upload_chunk_rep_t rep = {.received = st->copied};
            sh_service_reply(self->service, &request, SH_STATUS_OK, NULL, &rep);
        }
    }
    return 0;
}

/*  Every byte is in and the finish request waits: send the last part
    and complete, or put the small object.  */
static void s_commit(s_stream_t *st)
{
    upload_server_t *self = st->server;
    if (st->committing)
        return;
    if (st->multipart) {
        if (st->fill_len > 0) {
            if (!st->flight)
                s_ship(st);
            return;
        }
        if (st->flight)
            return;
    }
    uint8_t digest[UPLOAD_HASH_BYTES];
    upload_hash_final(st->whole, digest);
    sodium_bin2hex(st->sha_hex, sizeof st->sha_hex, digest, sizeof digest);
    if (!st->content_type) /* an empty file */
        st->content_type = upload_sniff_type(NULL, 0, false);
    int64_t timeout = sh_request_remaining_ms(st->finish, self->config.s3_timeout_ms);
    st->committing = true;
    s_call_started(st);
    if (st->multipart) {
        upload_s3_part_t *parts = calloc(st->part_count, sizeof *parts);
        if (!parts) {
            s_call_ended(st);
            st->committing = false;
            s_fail(st, SH_STATUS_INTERNAL, "out of memory", S_RESULT_FAILED);
            return;
        }
        for (size_t i = 0; i < st->part_count; i++)
            parts[i] = (upload_s3_part_t){(int)i + 1, st->parts[i].etag, st->parts[i].sha256};
        upload_s3_complete_multipart(self->s3, st->key, st->upload_id, parts, st->part_count,
                                     timeout, s_on_committed, st);
        free(parts);
    } else {
        /*  the buffer holds the whole object, so its digest is the one
            computed while the chunks arrived: no second pass on the loop  */
        upload_s3_put_object(self->s3, st->key, st->fill, st->fill_len, digest, NULL, timeout,
                             s_on_committed, st);
    }
}

static void s_step(s_stream_t *st)
{
    upload_server_t *self = st->server;
    if (st->state == S_FAILED || st->state == S_DONE) {
        /*  abort once no part or commit is pending: a part that lands after
            the abort would leave bytes behind on some S3 implementations  */
        if (st->abort_due && st->calls == 0 && !self->closing) {
            st->abort_due = false;
            s_call_started(st);
            upload_s3_abort_multipart(self->s3, st->key, st->upload_id, self->config.s3_timeout_ms,
                                      s_on_aborted, st);
        }
        return;
    }
    if (st->state != S_OPEN || s_take(st))
        return;
    if (st->multipart && st->fill_len == st->cap && !st->flight && s_ship(st))
        return;
    if (st->finish && st->held_count == 0)
        s_commit(st);
}

static void s_pump(s_stream_t *st)
{
    if (st->pumping) {
        st->again = true;
        return;
    }
    st->pumping = true;
    do {
        st->again = false;
        s_step(st);
    } while (st->again);
    st->pumping = false;
    if (!st->linked && st->calls == 0 && (!st->abort_due || st->server->closing))
        s_stream_free(st);
    else
        s_gauges(st->server);
}

/*  --- operations ----------------------------------------------------------  */

/*  The most a stream of size bytes holds: two part buffers (or one of its
    size) and a window of chunks waiting.  */
static int64_t s_reserve(const upload_server_config_t *cf, uint64_t size)
{
    uint64_t buffers = size >= cf->part_bytes ? 2 * cf->part_bytes : size;
    return (int64_t)(buffers + cf->window * cf->chunk_bytes);
}

static void s_on_begin(sh_service_t *service, sh_request_t *request, void *arg)
{
    upload_server_t *self = arg;
    sh_upload_begin_req_t *req = request->body;
    const upload_server_config_t *cf = &self->config;
    char why[SH_ERROR_MAX];
    uint64_t status = SH_STATUS_OK;
    if (req->size > cf->max_bytes ||
        (req->size + cf->part_bytes - 1) / cf->part_bytes > UPLOAD_S3_MAX_PARTS) {
        status = SH_STATUS_TOO_LARGE;
        snprintf(why, sizeof why, "an upload of %" PRIu64 " bytes is over the limit of %" PRIu64,
                 req->size, cf->max_bytes);
    } else if (self->live >= cf->max_streams ||
               self->reserved + s_reserve(cf, req->size) > cf->max_buffer) {
        status = SH_STATUS_UNAVAILABLE;
        snprintf(why, sizeof why,
                 "busy: %" PRId64 " uploads open on this instance holding up to %" PRId64 " bytes",
                 self->live, self->reserved);
    } else if (req->size == 0 && !upload_sniff_agrees(req->declared_type.ptr,
                                                      req->declared_type.len, UPLOAD_TYPE_OCTET)) {
        status = SH_STATUS_UNSUPPORTED_TYPE;
        snprintf(why, sizeof why, "an empty file is %s, not the declared %.*s", UPLOAD_TYPE_OCTET,
                 (int)req->declared_type.len, req->declared_type.ptr);
    }
    if (status != SH_STATUS_OK) {
        (*self->results[S_RESULT_REJECTED])++;
        sh_service_reply(service, &request, status, why, NULL);
        return;
    }
    s_stream_t *st = calloc(1, sizeof *st);
    if (st) {
        st->held = calloc(cf->window, sizeof *st->held);
        st->whole = upload_hash_new();
        st->part = upload_hash_new();
    }
    if (!st || !st->held || !st->whole || !st->part) {
        if (st) {
            free(st->held);
            upload_hash_destroy(&st->whole);
            upload_hash_destroy(&st->part);
        }
        free(st);
        (*self->results[S_RESULT_FAILED])++;
        sh_service_reply(service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
        return;
    }
    st->server = self;
    st->size = req->size;
    st->multipart = req->size >= cf->part_bytes;
    st->cap = st->multipart ? (size_t)cf->part_bytes : (size_t)req->size;
    st->declared_len =
        req->declared_type.len < sizeof st->declared ? req->declared_type.len : sizeof st->declared;
    memcpy(st->declared, req->declared_type.ptr ? req->declared_type.ptr : "", st->declared_len);
    st->last_ms = sh_clock_mono_ms();
    sh_random_id(st->id, sizeof st->id, S_STREAM_ID_BYTES);
    char hex[UPLOAD_KEY_HEX + 1];
    sh_random_hex(hex, S_KEY_RANDOM_BYTES);
    snprintf(st->key, sizeof st->key, "%s%s", cf->prefix, hex);
    s_link(self, st);
    self->live++;
    /*  a drain waits for the stream to end (up to the drain timeout)  */
    sh_service_hold(self->service, 1);
    st->reserved = s_reserve(cf, st->size);
    self->reserved += st->reserved;
    if (!st->multipart) {
        st->state = S_OPEN;
        sh_upload_begin_rep_t rep = {.stream = sh_str(st->id),
                                     .key = sh_str(st->key),
                                     .chunk_max = cf->chunk_bytes,
                                     .window = cf->window};
        sh_service_reply(service, &request, SH_STATUS_OK, NULL, &rep);
        s_gauges(self);
        return;
    }
    /*  create before the reply: S3 being down shows at begin  */
    st->state = S_CREATING;
    st->begin = request;
    s_call_started(st);
    upload_s3_create_multipart(self->s3, st->key, NULL, true,
                               sh_request_remaining_ms(request, cf->s3_timeout_ms), s_on_created,
                               st);
}

/*  The open stream a request names, its clock reset; NULL when there is
    none (answered not_found) or it failed (answered with why).  */
static s_stream_t *s_stream_of(upload_server_t *self, sh_request_t **request_p, sh_str_t stream)
{
    s_stream_t *st = s_find(self, stream);
    if (!st) {
        sh_service_reply(self->service, request_p, SH_STATUS_NOT_FOUND, "no such upload stream",
                         NULL);
        return NULL;
    }
    if (s_answer_failed(st, request_p))
        return NULL;
    st->last_ms = sh_clock_mono_ms();
    return st;
}

static void s_on_chunk(sh_service_t *service, sh_request_t *request, void *arg)
{
    upload_server_t *self = arg;
    sh_upload_chunk_req_t *req = request->body;
    s_stream_t *st = s_stream_of(self, &request, req->stream);
    if (!st)
        return;
    size_t len = 0;
    const void *raw = sh_request_raw(request, &len);
    char why[SH_ERROR_MAX] = "";
    if (st->finish)
        snprintf(why, sizeof why, "upload_chunk after upload_finish");
    else if (!raw || len == 0)
        snprintf(why, sizeof why, "upload_chunk needs one raw frame of 1..%" PRIu64 " bytes",
                 self->config.chunk_bytes);
    else if (len > self->config.chunk_bytes)
        snprintf(why, sizeof why, "a chunk of %zu bytes is over chunk_max %" PRIu64, len,
                 self->config.chunk_bytes);
    else if (req->offset != st->accepted)
        snprintf(why, sizeof why, "chunk offset %" PRIu64 ", expected %" PRIu64, req->offset,
                 st->accepted);
    else if (len > st->size - st->accepted)
        snprintf(why, sizeof why, "the chunk ends at %" PRIu64 ", past the declared size %" PRIu64,
                 st->accepted + len, st->size);
    else if (st->held_count == self->config.window)
        snprintf(why, sizeof why, "more than window=%" PRIu64 " chunks unanswered",
                 self->config.window);
    if (why[0]) {
        s_fail(st, SH_STATUS_INVALID, why, S_RESULT_REJECTED);
        sh_service_reply(service, &request, SH_STATUS_INVALID, why, NULL);
        s_pump(st);
        return;
    }
    st->accepted += len;
    *self->bytes += len;
    st->held[(st->held_first + st->held_count) % self->config.window] = request;
    st->held_count++;
    st->held_bytes += len;
    s_pump(st);
}

static void s_on_finish(sh_service_t *service, sh_request_t *request, void *arg)
{
    upload_server_t *self = arg;
    sh_upload_finish_req_t *req = request->body;
    s_stream_t *st = s_stream_of(self, &request, req->stream);
    if (!st)
        return;
    if (st->finish) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, "upload_finish already asked for",
                         NULL);
        return;
    }
    if (st->accepted != st->size) {
        char why[SH_ERROR_MAX];
        snprintf(why, sizeof why, "only %" PRIu64 " of %" PRIu64 " bytes arrived", st->accepted,
                 st->size);
        s_fail(st, SH_STATUS_INVALID, why, S_RESULT_REJECTED);
        sh_service_reply(service, &request, SH_STATUS_INVALID, why, NULL);
        s_pump(st);
        return;
    }
    st->finish = request;
    s_pump(st);
}

static void s_on_abort(sh_service_t *service, sh_request_t *request, void *arg)
{
    upload_server_t *self = arg;
    sh_upload_abort_req_t *req = request->body;
    s_stream_t *st = s_find(self, req->stream);
    sh_upload_abort_rep_t rep = {.known = st != NULL};
    sh_service_reply(service, &request, SH_STATUS_OK, NULL, &rep);
    if (!st)
        return;
    s_fail(st, SH_STATUS_INVALID, "upload aborted by the caller", S_RESULT_ABORTED);
    s_unlink(st);
    s_pump(st);
}

static void s_call_done(s_call_t *call)
{
    sh_buf_free(&call->data);
    free(call);
}

static int s_on_read_chunk(void *arg, const uint8_t *data, size_t len)
{
    s_call_t *call = arg;
    /*  more than the range asked for: S3 ignored it; keep nothing more  */
    if (call->overflow || call->data.len + len > call->length ||
        sh_buf_append(&call->data, data, len) != 0)
        call->overflow = true;
    return 0;
}

/*  The object's whole size from "bytes a-b/size"; -1 when unknown.  */
static int64_t s_range_total(const char *content_range)
{
    const char *slash = strrchr(content_range, '/');
    int64_t total = -1;
    if (!slash || sh_parse_int(slash + 1, 0, INT64_MAX, &total) != 0)
        return -1;
    return total;
}

static void s_on_read_done(void *arg, uint64_t status, const upload_s3_result_t *result)
{
    s_call_t *call = arg;
    upload_server_t *self = call->server;
    char why[SH_ERROR_MAX];
    if (status == SH_STATUS_OK) {
        int64_t size = result->content_range[0] ? s_range_total(result->content_range)
                                                : result->content_length;
        if (call->overflow || size < 0) {
            sh_service_reply(self->service, &call->request, SH_STATUS_INTERNAL,
                             call->overflow ? "storage sent more than the range asked for"
                                            : "storage sent no object size",
                             NULL);
        } else {
            sh_upload_read_rep_t rep = {.size = (uint64_t)size, .length = call->data.len};
            *self->read_bytes += call->data.len;
            sh_service_reply_raw(self->service, &call->request, &rep, call->data.data,
                                 call->data.len);
        }
    } else if (status == SH_STATUS_INVALID && strcmp(result->error_code, "InvalidRange") == 0) {
        if (call->offset == 0) {
            /*  bytes 0.. of an object exist unless it is empty  */
            sh_upload_read_rep_t rep = {.size = 0, .length = 0};
            sh_service_reply_raw(self->service, &call->request, &rep, NULL, 0);
        } else {
            snprintf(why, sizeof why, "offset %" PRIu64 " is past the end of the object",
                     call->offset);
            sh_service_reply(self->service, &call->request, SH_STATUS_INVALID, why, NULL);
        }
    } else if (status == SH_STATUS_NOT_FOUND)
        sh_service_reply(self->service, &call->request, status, "no such object", NULL);
    else {
        s_storage_why(why, sizeof why, "read", status, result);
        sh_service_reply(self->service, &call->request, status, why, NULL);
    }
    s_call_done(call);
}

/*  The key of a read or delete, checked and copied; NULL after answering.  */
static s_call_t *s_call_new(upload_server_t *self, sh_request_t *request, sh_str_t key,
                            char out[SH_OBJKEY_MAX + 1])
{
    if (!upload_key_valid(self->config.prefix, key.ptr, key.len)) {
        sh_service_reply(self->service, &request, SH_STATUS_INVALID, "not an upload key", NULL);
        return NULL;
    }
    s_call_t *call = calloc(1, sizeof *call);
    if (!call) {
        sh_service_reply(self->service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
        return NULL;
    }
    call->server = self;
    call->request = request;
    sh_str_copy(key, out, SH_OBJKEY_MAX + 1);
    return call;
}

static void s_on_read(sh_service_t *service, sh_request_t *request, void *arg)
{
    upload_server_t *self = arg;
    sh_upload_read_req_t *req = request->body;
    if (req->length < 1 || req->length > SH_CHUNK_MAX || req->offset > INT64_MAX - req->length) {
        char why[SH_ERROR_MAX];
        snprintf(why, sizeof why, "length must be 1..%d and offset + length at most %" PRId64,
                 SH_CHUNK_MAX, INT64_MAX);
        sh_service_reply(service, &request, SH_STATUS_INVALID, why, NULL);
        return;
    }
    char key[SH_OBJKEY_MAX + 1];
    s_call_t *call = s_call_new(self, request, req->key, key);
    if (!call)
        return;
    call->offset = req->offset;
    call->length = req->length;
    char range[S_RANGE_MAX];
    snprintf(range, sizeof range, "bytes=%" PRIu64 "-%" PRIu64, req->offset,
             req->offset + req->length - 1);
    upload_s3_get_object(self->s3, key, range,
                         sh_request_remaining_ms(request, self->config.s3_timeout_ms),
                         s_on_read_chunk, s_on_read_done, call);
}

static void s_on_deleted(void *arg, uint64_t status, const upload_s3_result_t *result)
{
    s_call_t *call = arg;
    if (status == SH_STATUS_OK)
        sh_service_reply(call->server->service, &call->request, SH_STATUS_OK, NULL, NULL);
    else {
        char why[SH_ERROR_MAX];
        s_storage_why(why, sizeof why, "delete", status, result);
        sh_service_reply(call->server->service, &call->request, status, why, NULL);
    }
    s_call_done(call);
}

static void s_on_delete(sh_service_t *service, sh_request_t *request, void *arg)
{
    (void)service;
    upload_server_t *self = arg;
    sh_upload_delete_req_t *req = request->body;
    char key[SH_OBJKEY_MAX + 1];
    s_call_t *call = s_call_new(self, request, req->key, key);
    if (call)
        upload_s3_delete_object(self->s3, key,
                                sh_request_remaining_ms(request, self->config.s3_timeout_ms),
                                s_on_deleted, call);
}

/*  A presigned GET URL: no I/O, answered at once.  */
static void s_on_presign(sh_service_t *service, sh_request_t *request, void *arg)
{
    upload_server_t *self = arg;
    sh_upload_presign_req_t *req = request->body;
    char key[SH_OBJKEY_MAX + 1], disposition[16 + 4 * SH_FILENAME_MAX + 1], type[SH_MIME_MAX + 1];
    if (!upload_key_valid(self->config.prefix, req->key.ptr, req->key.len)) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, "not an upload key", NULL);
        return;
    }
    sh_str_copy(req->key, key, sizeof key);
    sh_str_copy(req->disposition, disposition, sizeof disposition);
    sh_str_copy(req->content_type, type, sizeof type);
    char *url = malloc(SH_URL_MAX + 1);
    if (!url ||
        upload_s3_presign_get(self->s3, key, (int64_t)req->expires_s, sh_clock_wall_ms() / 1000,
                              disposition, type, url, SH_URL_MAX + 1) != 0) {
        free(url);
        sh_service_reply(service, &request, SH_STATUS_INVALID,
                         "cannot presign: expiry out of 1..604800 s, or the URL is too long", NULL);
        return;
    }
    sh_upload_presign_rep_t rep = {.url = sh_str(url)};
    sh_service_reply(service, &request, SH_STATUS_OK, NULL, &rep);
    free(url);
}

/*  --- housekeeping -------------------------------------------------------  */

/*  Streams whose caller went silent are aborted. While the instance
    drains, new uploads are refused but open streams go on (their chunks,
    finish and abort are still served) and the drain waits for them up to
    the drain timeout; upload_server_close aborts what is left then.  */
static int s_on_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    upload_server_t *self = arg;
    int64_t now = sh_clock_mono_ms();
    if (!self->draining && sh_service_draining(self->service)) {
        self->draining = true;
        if (self->live)
            sh_info("draining: waiting for %" PRId64 " open uploads", self->live);
    }
    s_stream_t *next;
    for (s_stream_t *st = self->head; st; st = next) {
        next = st->next;
        bool quiet = now - st->last_ms >= self->config.idle_ms && st->held_count == 0 &&
                     !st->finish && st->state != S_CREATING;
        if (quiet) {
            if (st->state == S_OPEN) {
                char why[SH_ERROR_MAX];
                snprintf(why, sizeof why, "no request for %" PRId64 " ms", self->config.idle_ms);
                s_fail(st, SH_STATUS_TIMEOUT, why, S_RESULT_ABORTED);
            }
            s_unlink(st);
        } else
            continue;
        s_pump(st);
    }
    return 0;
}

/*  --- the server ----------------------------------------------------------  */

upload_server_t *upload_server_new(sh_service_t *service, upload_s3_t *s3,
                                   const upload_server_config_t *config)
{
    assert(service && s3 && config && config->prefix);
    assert(config->part_bytes > 0 && config->window > 0 && config->chunk_bytes > 0);
    upload_server_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->service = service;
    self->s3 = s3;
    self->config = *config;
    sh_metrics_t *m = sh_service_metrics(service);
    for (int i = 0; i < S_RESULTS; i++) {
        char labels[32];
        snprintf(labels, sizeof labels, "result=\"%s\"", s_result_names[i]);
        self->results[i] = sh_metrics_counter(m, "shoal_uploads_total",
                                              "Upload streams by how they ended", labels);
    }
    self->bytes =
        sh_metrics_counter(m, "shoal_upload_bytes_total", "Bytes taken from upload chunks", NULL);
    self->read_bytes = sh_metrics_counter(m, "shoal_upload_read_bytes_total",
                                          "Bytes of objects sent by upload_read", NULL);
    self->streams_gauge = sh_metrics_gauge(m, "shoal_upload_streams", "Upload streams open", NULL);
    self->buffer_gauge =
        sh_metrics_gauge(m, "shoal_upload_buffer_bytes",
                         "Bytes held for upload streams: part buffers and unanswered chunks", NULL);
    int64_t tick = config->idle_ms / 4;
    tick = tick < S_TICK_MIN_MS ? S_TICK_MIN_MS : tick > S_TICK_MAX_MS ? S_TICK_MAX_MS : tick;
    self->tick = sh_loop_timer(sh_service_loop(service), tick, true, s_on_tick, self);
    if (self->tick < 0) {
        free(self);
        return NULL;
    }
    sh_service_handle(service, SH_OP_upload_begin, s_on_begin, self);
    sh_service_handle(service, SH_OP_upload_chunk, s_on_chunk, self);
    sh_service_handle(service, SH_OP_upload_finish, s_on_finish, self);
    sh_service_handle(service, SH_OP_upload_abort, s_on_abort, self);
    /*  what continues an open stream is served while draining  */
    sh_service_serve_while_draining(service, SH_OP_upload_chunk);
    sh_service_serve_while_draining(service, SH_OP_upload_finish);
    sh_service_serve_while_draining(service, SH_OP_upload_abort);
    sh_service_handle(service, SH_OP_upload_read, s_on_read, self);
    sh_service_handle(service, SH_OP_upload_delete, s_on_delete, self);
    sh_service_handle(service, SH_OP_upload_presign, s_on_presign, self);
    return self;
}

static bool s_closed(upload_server_t *self, int64_t end_ms)
{
    return self->calls == 0 || sh_clock_mono_ms() >= end_ms;
}

static int s_on_close_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    s_close_wait_t *w = arg;
    return s_closed(w->server, w->end_ms) ? -1 : 0;
}

void upload_server_close(upload_server_t *self, int64_t wait_ms)
{
    s_stream_t *next;
    for (s_stream_t *st = self->head; st; st = next) {
        next = st->next;
        if (st->state == S_OPEN || st->state == S_CREATING)
            s_fail(st, SH_STATUS_UNAVAILABLE, "the upload instance is shutting down",
                   S_RESULT_ABORTED);
        s_unlink(st);
        s_pump(st);
    }
    /*  the loop may be stopped again by others (the service's drain
        check): run it until the aborts are answered or time is up  */
    sh_loop_t *loop = sh_service_loop(self->service);
    s_close_wait_t w = {self, sh_clock_mono_ms() + wait_ms};
    while (!s_closed(self, w.end_ms)) {
        int timer = sh_loop_timer(loop, S_TICK_MIN_MS, true, s_on_close_tick, &w);
        if (timer < 0)
            break;
        sh_loop_run(loop);
        sh_loop_timer_cancel(loop, timer);
    }
    if (self->calls)
        sh_warn("%" PRId64 " aborts of unfinished uploads left to the sweeper", self->calls);
}

void upload_server_destroy(upload_server_t **self_p)
{
    upload_server_t *self = *self_p;
    if (!self)
        return;
    self->closing = true; /* no S3 calls from here on: the client is gone */
    sh_loop_timer_cancel(sh_service_loop(self->service), self->tick);
    while (self->head) {
        s_stream_t *st = self->head;
        s_fail(st, SH_STATUS_UNAVAILABLE, "the upload instance is shutting down", S_RESULT_ABORTED);
        s_unlink(st);
        /*  the S3 client answered every call of it when it was destroyed  */
        assert(st->calls == 0);
        s_stream_free(st);
    }
    free(self);
    *self_p = NULL;
}

bool upload_server_live(void *arg, const char *upload_id)
{
    upload_server_t *self = arg;
    for (s_stream_t *st = self->head; st; st = st->next)
        if (st->upload_id && strcmp(st->upload_id, upload_id) == 0)
            return true;
    return false;
}
