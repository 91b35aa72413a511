/*  upload_s3.c - S3 over libcurl's multi interface on an sh_loop (see
    upload_s3.h).

    libcurl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and
    when to call it back (CURLMOPT_TIMERFUNCTION); both map onto sh_loop
    items and one-shot timers. Finished transfers are collected after each
    curl_multi_socket_action, outside every libcurl callback, so a caller's
    callback may start new calls. A call that failed transiently waits for
    its backoff in a list served by one timer, then its easy handle goes
    back into the multi handle with the time that is left.

    Signing: CURLOPT_AWS_SIGV4 signs every header we add (libcurl 7.88
    also signs an empty "Expect:" it then does not send, which MinIO and
    parts of AWS reject), so we add no "Expect:"; libcurl's own
    "Expect: 100-continue" on uploads is unsigned, and the wait for the 100
    is set to 0 ms so the body follows at once. libcurl 7.88 signs the
    query as written, so parameters are written sorted, values encoded,
    empty values with '='. x-amz-content-sha256 is always sent: libcurl
    would otherwise hash an empty body.
*/
#include <assert.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <curl/curl.h>
#include <sodium.h>

#include "sh_codec.h"
#include "sh_log.h"
#include "sh_util.h"
#include "upload_hash.h"
#include "upload_s3.h"
#include "upload_xml.h"

#define S_LABELS_MAX       160
#define S_URL_MAX          (3 * UPLOAD_S3_MAX_KEY + 1024)
#define S_QUERY_MAX        (3 * 2048 + 256)
#define S_HEADER_MAX       512 /* one request header line we build */
#define S_VALUE_MAX        256 /* a reply header value we keep (ETag, Content-Range) */
#define S_REPLY_MAX        (16 * 1024 * 1024) /* a reply document (listing page) at most */
#define S_TEXT_MAX         2048               /* an upload id, marker or token at most */
#define S_RANGE_MAX        64
#define S_LIST_MAX         1000
#define S_MIN_TRY_MS       10 /* a try with less time left than this is not started */
#define S_EMPTY_SHA256     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define S_UNSIGNED         "UNSIGNED-PAYLOAD"
#define S_XMLNS            "http://s3.amazonaws.com/doc/2006-03-01/"
#define S_CONTENT_TYPE_MAX 255

typedef enum {
    S_PUT,
    S_CREATE,
    S_PART,
    S_COMPLETE,
    S_ABORT,
    S_GET,
    S_HEAD,
    S_DELETE,
    S_LIST_UPLOADS,
    S_LIST_OBJECTS,
} s_op_t;

/*  A listing entry while the reply is parsed: offsets into the text arena
    (it may move while it grows).  */
typedef struct {
    size_t key, upload_id, etag; /* 0: none (the arena starts with "") */
    int64_t time_ms;
    int64_t size;
} s_raw_entry_t;

/*  What the reply document said.  */
typedef struct {
    sh_buf_t text; /* NUL-separated strings; offset 0 is "" */
    s_raw_entry_t *raw;
    size_t count, cap;
    bool in_entry;
    const char *entry_path; /* "ListBucketResult/Contents" or ".../Upload" */
    size_t root_error;      /* the root element is <Error> */
    size_t code, upload_id, etag, next_marker, next_upload_id_marker;
    bool truncated;
    bool overflow;
} s_doc_t;

struct upload_s3_call_t {
    struct upload_s3_call_t *prev, *next;
    upload_s3_t *s3;
    s_op_t op;
    CURL *easy;
    struct curl_slist *headers;
    bool in_multi; /* added to the multi handle */
    bool waiting;  /* waiting for its retry */
    int64_t retry_at_ms;
    int64_t started_ms;
    int64_t deadline_ms;
    int tries;
    /* request body: borrowed (part, object) or owned (complete) */
    const uint8_t *body;
    size_t body_len;
    size_t body_off;
    char *owned_body;
    /* reply */
    int http_status;
    bool streaming; /* GET 2xx: the body goes to chunk */
    bool streamed;  /* chunk has taken bytes: no retry any more */
    bool paused;
    bool resume;
    sh_buf_t reply;
    char etag[S_VALUE_MAX];
    char content_range[S_VALUE_MAX];
    char content_type[S_VALUE_MAX];
    int64_t content_length;
    upload_s3_chunk_fn *chunk;
    upload_s3_fn *fn;
    void *arg;
};

/*  One socket libcurl asked us to watch.  */
typedef struct s_sock_t {
    struct s_sock_t *prev, *next;
    upload_s3_t *s3;
    curl_socket_t fd;
    sh_loop_item_t *item;
} s_sock_t;

struct upload_s3_t {
    sh_loop_t *loop;
    upload_s3_config_t config;
    CURLM *multi;
    char base[S_URL_MAX];        /* scheme://host[:port][/bucket] with the addressing applied */
    char public_base[S_URL_MAX]; /* the same for presigned URLs (public_endpoint) */
    char sigv4[S_HEADER_MAX];
    char userpwd[S_HEADER_MAX];
    struct curl_slist *connect_to;
    int curl_timer;  /* sh_loop timer for libcurl, -1 when none */
    int retry_timer; /* for the earliest waiting retry */
    int resume_timer;
    bool closing;
    upload_s3_call_t *head, *tail;
    s_sock_t *socks; /* the sockets libcurl has us watch */

    sh_backend_metrics_t m;
};

static void s_drive(upload_s3_t *self);

/*  --- text helpers ------------------------------------------------------------  */

static bool s_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/*  RFC 3986 encoding; '/' kept when keep_slash. Returns length or -1.  */
static int s_encode(const char *in, bool keep_slash, char *out, size_t out_size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        if (s_unreserved(*p) || (keep_slash && *p == '/')) {
            if (n + 1 >= out_size)
                return -1;
            out[n++] = (char)*p;
        } else {
            if (n + 3 >= out_size)
                return -1;
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    if (n >= out_size)
        return -1;
    out[n] = 0;
    return (int)n;
}

int upload_s3_encode_key(const char *key, char *out, size_t out_size)
{
    return s_encode(key, true, out, out_size);
}

static bool s_key_ok(const char *key)
{
    size_t len = key ? strlen(key) : 0;
    return len > 0 && len <= UPLOAD_S3_MAX_KEY;
}

/*  A header value we were given: printable ASCII only (no CR/LF).  */
static bool s_header_value_ok(const char *value, size_t max)
{
    size_t len = 0;
    for (const char *p = value; *p; p++, len++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            return false;
    return len > 0 && len <= max;
}

static bool s_range_ok(const char *range)
{
    if (strncmp(range, "bytes=", 6) != 0 || strlen(range) >= S_RANGE_MAX || !range[6])
        return false;
    for (const char *p = range + 6; *p; p++)
        if (!isdigit((unsigned char)*p) && *p != '-' && *p != ',')
            return false;
    return true;
}

/*  "2013-05-24T00:00:00.000Z" -> Unix ms, or -1.  */
static int64_t s_parse_time(const char *text)
{
    struct tm tm = {0};
    int ms = 0;
    char frac[8] = "";
    if (sscanf(text, "%4d-%2d-%2dT%2d:%2d:%2d%7[.0-9]", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, frac) < 6)
        return -1;
    if (frac[0] == '.')
        for (int i = 1; i <= 3; i++)
            ms = ms * 10 + (isdigit((unsigned char)frac[i]) ? frac[i] - '0' : 0);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    return t == (time_t)-1 ? -1 : (int64_t)t * 1000 + ms;
}

static void s_hex(const uint8_t *digest, char out[2 * UPLOAD_S3_SHA256 + 1])
{
    sodium_bin2hex(out, 2 * UPLOAD_S3_SHA256 + 1, digest, UPLOAD_S3_SHA256);
}

/*  --- reply documents ---------------------------------------------------------  */

static size_t s_doc_keep(s_doc_t *d, const char *text, size_t len)
{
    size_t at = d->text.len;
    if (sh_buf_append(&d->text, text, len) != 0 || sh_buf_append(&d->text, "", 1) != 0) {
        d->overflow = true;
        return 0;
    }
    return at;
}

static void s_on_element(void *arg, const char *path, const char *text, size_t len)
{
    s_doc_t *d = arg;
    const char *slash = strchr(path, '/');
    if (!text) {
        if (!slash && strcmp(path, "Error") == 0)
            d->root_error = 1;
        if (d->entry_path && strcmp(path, d->entry_path) == 0) {
            if (d->count == d->cap) {
                size_t cap = d->cap ? d->cap * 2 : 64;
                s_raw_entry_t *raw = realloc(d->raw, cap * sizeof *raw);
                if (!raw) {
                    d->overflow = true;
                    return;
                }
                d->raw = raw;
                d->cap = cap;
            }
            d->raw[d->count++] = (s_raw_entry_t){0, 0, 0, -1, -1};
            d->in_entry = true;
        }
        return;
    }
    const char *leaf = strrchr(path, '/');
    leaf = leaf ? leaf + 1 : path;
    size_t plen = d->entry_path ? strlen(d->entry_path) : 0;
    if (d->in_entry && d->count && strncmp(path, d->entry_path, plen) == 0) {
        s_raw_entry_t *e = &d->raw[d->count - 1];
        if (path[plen] == 0)
            d->in_entry = false;
        else if (path[plen] == '/' && !strchr(path + plen + 1, '/')) {
            if (strcmp(leaf, "Key") == 0)
                e->key = s_doc_keep(d, text, len);
            else if (strcmp(leaf, "UploadId") == 0)
                e->upload_id = s_doc_keep(d, text, len);
            else if (strcmp(leaf, "ETag") == 0)
                e->etag = s_doc_keep(d, text, len);
            else if (strcmp(leaf, "Initiated") == 0 || strcmp(leaf, "LastModified") == 0)
                e->time_ms = s_parse_time(text);
            else if (strcmp(leaf, "Size") == 0 && sh_parse_int(text, 0, INT64_MAX, &e->size) != 0)
                e->size = -1;
        }
        return;
    }
    /*  fields directly under the root  */
    if (!slash || strchr(slash + 1, '/'))
        return;
    if (strcmp(leaf, "Code") == 0)
        d->code = s_doc_keep(d, text, len);
    else if (strcmp(leaf, "UploadId") == 0)
        d->upload_id = s_doc_keep(d, text, len);
    else if (strcmp(leaf, "ETag") == 0)
        d->etag = s_doc_keep(d, text, len);
    else if (strcmp(leaf, "IsTruncated") == 0)
        d->truncated = strcmp(text, "true") == 0;
    else if (strcmp(leaf, "NextContinuationToken") == 0 || strcmp(leaf, "NextKeyMarker") == 0)
        d->next_marker = s_doc_keep(d, text, len);
    else if (strcmp(leaf, "NextUploadIdMarker") == 0)
        d->next_upload_id_marker = s_doc_keep(d, text, len);
}

/*  Parse a reply document; an empty reply is an empty document.
    Returns 0 or -1 (malformed).  */
static int s_doc_parse(s_doc_t *d, const upload_s3_call_t *c)
{
    if (sh_buf_append(&d->text, "", 1) != 0)
        return -1;
    if (c->op == S_LIST_OBJECTS)
        d->entry_path = "ListBucketResult/Contents";
    else if (c->op == S_LIST_UPLOADS)
        d->entry_path = "ListMultipartUploadsResult/Upload";
    if (c->reply.len == 0)
        return 0;
    if (upload_xml_parse(c->reply.data, c->reply.len, s_on_element, d) != 0 || d->overflow)
        return -1;
    return 0;
}

static void s_doc_free(s_doc_t *d)
{
    sh_buf_free(&d->text);
    free(d->raw);
}

/*  --- calls -------------------------------------------------------------------  */

static void s_unlink(upload_s3_t *self, upload_s3_call_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        self->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        self->tail = c->prev;
    c->prev = c->next = NULL;
}

static void s_call_free(upload_s3_call_t *c)
{
    if (c->easy) {
        if (c->in_multi)
            curl_multi_remove_handle(c->s3->multi, c->easy);
        curl_easy_cleanup(c->easy);
    }
    curl_slist_free_all(c->headers);
    free(c->owned_body);
    sh_buf_free(&c->reply);
    free(c);
}

/*  A result with nothing in it: every string "", no length.  */
static const upload_s3_result_t s_no_result = {.error_code = "",
                                               .upload_id = "",
                                               .etag = "",
                                               .content_length = -1,
                                               .content_range = "",
                                               .content_type = "",
                                               .next_marker = "",
                                               .next_upload_id_marker = ""};

/*  Answer the caller once, unlink and free the call.  */
static void s_answer(upload_s3_call_t *c, uint64_t status, const upload_s3_result_t *given)
{
    upload_s3_t *self = c->s3;
    upload_s3_result_t r = given ? *given : s_no_result;
    if (!given) {
        r.http_status = c->http_status;
        r.etag = c->etag;
    }
    if (status == SH_STATUS_TIMEOUT)
        (*self->m.timeouts)++;
    else if (status == SH_STATUS_UNAVAILABLE || status == SH_STATUS_INTERNAL)
        (*self->m.errors)++;
    sh_histogram_observe(self->m.latency, (double)(sh_clock_mono_ms() - c->started_ms) / 1e3);
    s_unlink(self, c);
    /*  out of libcurl's hands before the callback: the caller may free
        what the call borrowed (the body) as soon as it is answered  */
    if (c->in_multi) {
        curl_multi_remove_handle(self->multi, c->easy);
        c->in_multi = false;
    }
    c->fn(c->arg, status, &r);
    s_call_free(c);
}

/*  Answer a call that never reached libcurl (refused on arrival).  */
static void s_refuse(upload_s3_t *self, uint64_t status, upload_s3_fn *fn, void *arg)
{
    upload_s3_result_t r = s_no_result;
    (*self->m.calls)++;
    if (status != SH_STATUS_INVALID)
        (*self->m.errors)++;
    fn(arg, status, &r);
}

/*  --- libcurl callbacks -------------------------------------------------------  */

static size_t s_on_read(char *buffer, size_t size, size_t nitems, void *arg)
{
    upload_s3_call_t *c = arg;
    size_t room = size * nitems;
    size_t left = c->body_len - c->body_off;
    size_t n = left < room ? left : room;
    if (n)
        memcpy(buffer, c->body + c->body_off, n);
    c->body_off += n;
    return n;
}

/*  libcurl rewinds the body when it must send it again on a new
    connection (a reused one that the server had closed).  */
static int s_on_seek(void *arg, curl_off_t offset, int origin)
{
    upload_s3_call_t *c = arg;
    if (origin != SEEK_SET || offset < 0 || (size_t)offset > c->body_len)
        return CURL_SEEKFUNC_CANTSEEK;
    c->body_off = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

static void s_keep_value(char *out, const char *value, size_t len)
{
    while (len && (value[len - 1] == '\r' || value[len - 1] == '\n' || value[len - 1] == ' '))
        len--;
    while (len && (*value == ' ' || *value == '\t')) {
        value++;
        len--;
    }
    if (len >= S_VALUE_MAX)
        len = 0; /* too long to be real: keep nothing */
    memcpy(out, value, len);
    out[len] = 0;
}

static size_t s_on_header(char *buffer, size_t size, size_t nitems, void *arg)
{
    upload_s3_call_t *c = arg;
    size_t len = size * nitems;
    int status = 0;
    if (len > 9 && strncmp(buffer, "HTTP/", 5) == 0) {
        /*  a new response (after a 100 Continue, say): forget the last  */
        const char *sp = memchr(buffer, ' ', len);
        if (sp && sp + 4 <= buffer + len && sscanf(sp + 1, "%3d", &status) == 1)
            c->http_status = status;
        c->etag[0] = c->content_range[0] = c->content_type[0] = 0;
        c->content_length = -1;
        return len;
    }
    const char *colon = memchr(buffer, ':', len);
    if (!colon)
        return len;
    size_t name_len = (size_t)(colon - buffer);
    const char *value = colon + 1;
    size_t value_len = len - name_len - 1;
    if (name_len == 4 && strncasecmp(buffer, "ETag", 4) == 0)
        s_keep_value(c->etag, value, value_len);
    else if (name_len == 13 && strncasecmp(buffer, "Content-Range", 13) == 0)
        s_keep_value(c->content_range, value, value_len);
    else if (name_len == 12 && strncasecmp(buffer, "Content-Type", 12) == 0)
        s_keep_value(c->content_type, value, value_len);
    else if (name_len == 14 && strncasecmp(buffer, "Content-Length", 14) == 0) {
        char text[S_VALUE_MAX];
        s_keep_value(text, value, value_len);
        if (sh_parse_int(text, 0, INT64_MAX, &c->content_length) != 0)
            c->content_length = -1;
    }
    return len;
}

static size_t s_on_write(char *data, size_t size, size_t nmemb, void *arg)
{
    upload_s3_call_t *c = arg;
    size_t len = size * nmemb;
    if (c->op == S_GET && c->http_status >= 200 && c->http_status < 300) {
        c->streaming = true;
        if (c->chunk(c->arg, (const uint8_t *)data, len) == UPLOAD_S3_PAUSE) {
            c->paused = true;
            return CURL_WRITEFUNC_PAUSE;
        }
        if (len)
            c->streamed = true;
        return len;
    }
    if (c->reply.len + len > S_REPLY_MAX || sh_buf_append(&c->reply, data, len) != 0)
        return 0; /* CURLE_WRITE_ERROR */
    return len;
}

static int s_on_io(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    s_sock_t *sock = arg;
    upload_s3_t *self = sock->s3;
    curl_socket_t fd = sock->fd; /* sock may be freed by the action */
    int mask = 0;
    if (revents & SH_LOOP_IN)
        mask |= CURL_CSELECT_IN;
    if (revents & SH_LOOP_OUT)
        mask |= CURL_CSELECT_OUT;
    if (revents & SH_LOOP_ERR)
        mask |= CURL_CSELECT_ERR;
    int running = 0;
    curl_multi_socket_action(self->multi, fd, mask, &running);
    s_drive(self);
    return 0;
}

static void s_sock_free(upload_s3_t *self, s_sock_t *sock)
{
    sh_loop_remove(self->loop, &sock->item);
    if (sock->prev)
        sock->prev->next = sock->next;
    else
        self->socks = sock->next;
    if (sock->next)
        sock->next->prev = sock->prev;
    free(sock);
}

static int s_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    upload_s3_t *self = userp;
    s_sock_t *sock = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sock) {
            curl_multi_assign(self->multi, fd, NULL);
            s_sock_free(self, sock);
        }
        return 0;
    }
    short events = (short)(((what & CURL_POLL_IN) ? SH_LOOP_IN : 0) |
                           ((what & CURL_POLL_OUT) ? SH_LOOP_OUT : 0));
    if (!sock) {
        sock = calloc(1, sizeof *sock);
        if (!sock)
            return -1;
        sock->s3 = self;
        sock->fd = fd;
        sock->item = sh_loop_add_fd(self->loop, fd, events, s_on_io, sock);
        if (!sock->item) {
            sh_error("s3: the event loop is full");
            free(sock);
            return -1;
        }
        sock->next = self->socks;
        if (self->socks)
            self->socks->prev = sock;
        self->socks = sock;
        curl_multi_assign(self->multi, fd, sock);
    } else {
        sh_loop_set_events(sock->item, events);
    }
    return 0;
}

static int s_on_curl_timer(sh_loop_t *loop, void *arg)
{
    (void)loop;
    upload_s3_t *self = arg;
    self->curl_timer = -1;
    int running = 0;
    curl_multi_socket_action(self->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    s_drive(self);
    return 0;
}

/*  libcurl wants to be called in timeout_ms (-1: never).  */
static int s_on_timer_set(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    upload_s3_t *self = userp;
    if (self->curl_timer > 0)
        sh_loop_timer_cancel(self->loop, self->curl_timer);
    self->curl_timer = -1;
    if (timeout_ms >= 0) {
        self->curl_timer = sh_loop_timer(self->loop, timeout_ms, false, s_on_curl_timer, self);
        if (self->curl_timer < 0) {
            sh_error("s3: no timer left in the event loop");
            return -1;
        }
    }
    return 0;
}

/*  --- tries and retries ---------------------------------------------------------  */

static void s_arm_retry_timer(upload_s3_t *self);

/*  Start (again) the transfer of c with the time left. Returns 0, or -1
    when it could not be started (c is left for the caller).  */
static int s_start(upload_s3_call_t *c)
{
    upload_s3_t *self = c->s3;
    int64_t left = c->deadline_ms - sh_clock_mono_ms();
    if (left < S_MIN_TRY_MS)
        left = S_MIN_TRY_MS;
    int64_t connect =
        self->config.connect_timeout_ms < left ? self->config.connect_timeout_ms : left;
    c->tries++;
    c->waiting = false;
    c->http_status = 0;
    c->body_off = 0;
    c->etag[0] = c->content_range[0] = c->content_type[0] = 0;
    c->content_length = -1;
    sh_buf_reset(&c->reply);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, (long)left);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)connect);
    if (curl_multi_add_handle(self->multi, c->easy) != CURLM_OK)
        return -1;
    c->in_multi = true;
    return 0;
}

static bool s_retryable_code(const char *code)
{
    return strcmp(code, "SlowDown") == 0 || strcmp(code, "RequestTimeout") == 0 ||
           strcmp(code, "InternalError") == 0 || strcmp(code, "ServiceUnavailable") == 0;
}

/*  Wait for a retry if one is allowed and fits the deadline; returns true
    when c now waits.  */
static bool s_schedule_retry(upload_s3_call_t *c)
{
    upload_s3_t *self = c->s3;
    if (self->closing || c->streamed || c->tries > self->config.max_retries)
        return false;
    int shift = c->tries - 1 < 30 ? c->tries - 1 : 30;
    int64_t ceiling = self->config.backoff_base_ms << shift;
    if (ceiling > self->config.backoff_cap_ms || ceiling <= 0)
        ceiling = self->config.backoff_cap_ms;
    /*  full jitter: anywhere in [0, ceiling)  */
    int64_t wait = ceiling > 0 ? (int64_t)randombytes_uniform((uint32_t)ceiling) : 0;
    int64_t now = sh_clock_mono_ms();
    if (now + wait + S_MIN_TRY_MS > c->deadline_ms)
        return false;
    (*self->m.retries)++;
    c->waiting = true;
    c->retry_at_ms = now + wait;
    s_arm_retry_timer(self);
    return true;
}

static int s_on_retry_timer(sh_loop_t *loop, void *arg)
{
    (void)loop;
    upload_s3_t *self = arg;
    self->retry_timer = -1;
    int64_t now = sh_clock_mono_ms();
    upload_s3_call_t *next;
    for (upload_s3_call_t *c = self->head; c; c = next) {
        next = c->next;
        if (c->waiting && c->retry_at_ms <= now && s_start(c) != 0)
            s_answer(c, SH_STATUS_INTERNAL, NULL);
    }
    s_arm_retry_timer(self);
    return 0;
}

static void s_arm_retry_timer(upload_s3_t *self)
{
    if (self->retry_timer > 0)
        sh_loop_timer_cancel(self->loop, self->retry_timer);
    self->retry_timer = -1;
    int64_t first = -1;
    for (upload_s3_call_t *c = self->head; c; c = c->next)
        if (c->waiting && (first < 0 || c->retry_at_ms < first))
            first = c->retry_at_ms;
    if (first < 0)
        return;
    int64_t in = first - sh_clock_mono_ms();
    self->retry_timer = sh_loop_timer(self->loop, in > 0 ? in : 0, false, s_on_retry_timer, self);
}

/*  Worth another try: S3 overloaded or failing inside.  */
static bool s_transient(int http, const char *code)
{
    return (http >= 500 && http != 501) || http == 429 || s_retryable_code(code);
}

/*  The status of a failed reply (the last try's).  */
static uint64_t s_status_for(int http, const char *code)
{
    if (http == 404 || strcmp(code, "NoSuchKey") == 0 || strcmp(code, "NoSuchUpload") == 0 ||
        strcmp(code, "NoSuchBucket") == 0)
        return SH_STATUS_NOT_FOUND;
    if (s_transient(http, code))
        return SH_STATUS_UNAVAILABLE;
    /*  refused credentials, a redirect (wrong region), a missing feature,
        an error inside a 200: our configuration, not the caller's input  */
    if (http < 400 || http == 401 || http == 403 || http == 405 || http >= 500)
        return SH_STATUS_INTERNAL;
    return SH_STATUS_INVALID;
}

/*  Build the result of a successful reply from its document.  */
static void s_succeed(upload_s3_call_t *c, s_doc_t *d)
{
    const char *t = d->text.data;
    upload_s3_entry_t *entries = NULL;
    if (d->count) {
        entries = calloc(d->count, sizeof *entries);
        if (!entries) {
            s_answer(c, SH_STATUS_INTERNAL, NULL);
            return;
        }
        for (size_t i = 0; i < d->count; i++)
            entries[i] = (upload_s3_entry_t){t + d->raw[i].key, t + d->raw[i].upload_id,
                                             d->raw[i].time_ms, d->raw[i].size, t + d->raw[i].etag};
    }
    upload_s3_result_t r = {
        .http_status = c->http_status,
        .error_code = "",
        .upload_id = t + d->upload_id,
        .etag = d->etag ? t + d->etag : c->etag,
        .content_length = c->content_length,
        .content_range = c->content_range,
        .content_type = c->content_type,
        .entries = entries,
        .count = d->count,
        .truncated = d->truncated,
        .next_marker = t + d->next_marker,
        .next_upload_id_marker = t + d->next_upload_id_marker,
    };
    s_answer(c, SH_STATUS_OK, &r);
    free(entries);
}

/*  A try ended with result (CURLE_*): answer, or wait for a retry.  */
static void s_finish(upload_s3_call_t *c, CURLcode result)
{
    upload_s3_t *self = c->s3;
    curl_multi_remove_handle(self->multi, c->easy);
    c->in_multi = false;
    c->paused = c->resume = false;

    if (result != CURLE_OK) {
        bool timed_out = result == CURLE_OPERATION_TIMEDOUT;
        bool transient = timed_out || result == CURLE_COULDNT_CONNECT ||
                         result == CURLE_COULDNT_RESOLVE_HOST || result == CURLE_SEND_ERROR ||
                         result == CURLE_RECV_ERROR || result == CURLE_GOT_NOTHING ||
                         result == CURLE_PARTIAL_FILE || result == CURLE_SSL_CONNECT_ERROR;
        if (transient && s_schedule_retry(c))
            return;
        uint64_t status = SH_STATUS_INTERNAL;
        if (timed_out)
            status = SH_STATUS_TIMEOUT;
        else if (transient)
            status =
                sh_clock_mono_ms() >= c->deadline_ms ? SH_STATUS_TIMEOUT : SH_STATUS_UNAVAILABLE;
        sh_warn("s3: %s try %d: %s", self->config.bucket, c->tries, curl_easy_strerror(result));
        s_answer(c, status, NULL);
        return;
    }

    s_doc_t doc = {0};
    bool ok_status = c->http_status >= 200 && c->http_status < 300;
    int parsed = s_doc_parse(&doc, c); /* a streamed body was not kept: empty */
    const char *code = doc.code ? doc.text.data + doc.code : "";
    /*  CompleteMultipartUpload may answer 200 and fail in the body  */
    if (ok_status && doc.root_error)
        ok_status = false;
    if (ok_status && parsed == 0) {
        s_succeed(c, &doc);
        s_doc_free(&doc);
        return;
    }
    if (ok_status) {
        sh_warn("s3: unreadable reply document (HTTP %d)", c->http_status);
        s_doc_free(&doc);
        s_answer(c, SH_STATUS_INTERNAL, NULL);
        return;
    }
    if (s_transient(c->http_status, code) && s_schedule_retry(c)) {
        s_doc_free(&doc);
        return;
    }
    uint64_t status = s_status_for(c->http_status, code);
    if (status != SH_STATUS_NOT_FOUND)
        sh_warn("s3: HTTP %d %s after %d tries", c->http_status, code, c->tries);
    char code_copy[S_VALUE_MAX];
    snprintf(code_copy, sizeof code_copy, "%s", code);
    s_doc_free(&doc);
    upload_s3_result_t r = {.http_status = c->http_status,
                            .error_code = code_copy,
                            .upload_id = "",
                            .etag = "",
                            .content_length = -1,
                            .content_range = "",
                            .content_type = "",
                            .next_marker = "",
                            .next_upload_id_marker = ""};
    s_answer(c, status, &r);
}

/*  Collect the finished transfers (outside every libcurl callback).  */
static void s_drive(upload_s3_t *self)
{
    CURLMsg *msg;
    int left = 0;
    while ((msg = curl_multi_info_read(self->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        upload_s3_call_t *c = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        CURLcode result = msg->data.result;
        if (c)
            s_finish(c, result);
    }
}

static int s_on_resume_timer(sh_loop_t *loop, void *arg)
{
    (void)loop;
    upload_s3_t *self = arg;
    self->resume_timer = -1;
    for (upload_s3_call_t *c = self->head; c; c = c->next)
        if (c->resume && c->paused && c->in_multi) {
            c->resume = false;
            c->paused = false;
            /*  may deliver the held chunk at once, and pause again  */
            curl_easy_pause(c->easy, CURLPAUSE_CONT);
        }
    int running = 0;
    curl_multi_socket_action(self->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    s_drive(self);
    return 0;
}

void upload_s3_resume(upload_s3_t *self, upload_s3_call_t *call)
{
    assert(call && call->s3 == self);
    call->resume = true;
    if (self->resume_timer < 0)
        self->resume_timer = sh_loop_timer(self->loop, 0, false, s_on_resume_timer, self);
}

/*  --- building requests ---------------------------------------------------------  */

static int s_add_header(upload_s3_call_t *c, const char *fmt, ...) SH_PRINTF(2, 3);
static int s_add_header(upload_s3_call_t *c, const char *fmt, ...)
{
    char line[S_HEADER_MAX];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    if (n < 0 || (size_t)n >= sizeof line)
        return -1;
    struct curl_slist *l = curl_slist_append(c->headers, line);
    if (!l)
        return -1;
    c->headers = l;
    return 0;
}

/*  A new call with its easy handle set up for method and URL (key NULL:
    the bucket itself; query without '?', sorted by name, or ""). The
    payload hash is sent as x-amz-content-sha256. Returns NULL after
    answering the caller when it cannot be built.  */
static upload_s3_call_t *s_call_new(upload_s3_t *self, s_op_t op, const char *method,
                                    const char *key, const char *query, const char *payload_sha,
                                    int64_t timeout_ms, upload_s3_fn *fn, void *arg)
{
    /*  every operation but the listings is about one object  */
    bool bucket_op = op == S_LIST_UPLOADS || op == S_LIST_OBJECTS;
    if (!bucket_op && !s_key_ok(key)) {
        s_refuse(self, SH_STATUS_INVALID, fn, arg);
        return NULL;
    }
    if (self->closing) {
        s_refuse(self, SH_STATUS_UNAVAILABLE, fn, arg);
        return NULL;
    }
    char path[3 * UPLOAD_S3_MAX_KEY + 1] = "";
    if (key && upload_s3_encode_key(key, path, sizeof path) < 0) {
        s_refuse(self, SH_STATUS_INVALID, fn, arg);
        return NULL;
    }
    upload_s3_call_t *c = calloc(1, sizeof *c);
    char *url = NULL;
    if (c) {
        c->s3 = self;
        c->op = op;
        c->fn = fn;
        c->arg = arg;
        c->content_length = -1;
        c->easy = curl_easy_init();
        size_t url_len = strlen(self->base) + strlen(path) + strlen(query) + 4;
        url = malloc(url_len);
        if (url)
            snprintf(url, url_len, "%s/%s%s%s", self->base, path, query[0] ? "?" : "", query);
    }
    if (!c || !c->easy || !url || s_add_header(c, "x-amz-content-sha256: %s", payload_sha) != 0) {
        free(url);
        if (c)
            s_call_free(c);
        s_refuse(self, SH_STATUS_INTERNAL, fn, arg);
        return NULL;
    }
    for (const char *const *h = self->config.extra_headers; h && *h; h++)
        if (s_add_header(c, "%s", *h) != 0) {
            free(url);
            s_call_free(c);
            s_refuse(self, SH_STATUS_INTERNAL, fn, arg);
            return NULL;
        }
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url); /* libcurl copies it */
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)c);
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L); /* a key "a/../b" is a name, not a path */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_AWS_SIGV4, self->sigv4);
    curl_easy_setopt(e, CURLOPT_USERPWD, self->userpwd);
    curl_easy_setopt(e, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    if (self->config.low_speed_bytes > 0 && self->config.low_speed_secs > 0) {
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, (long)self->config.low_speed_bytes);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)self->config.low_speed_secs);
    }
    if (self->connect_to)
        curl_easy_setopt(e, CURLOPT_CONNECT_TO, self->connect_to);
    if (strcmp(method, "GET") == 0)
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    else if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "DELETE") == 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
    else {
        /*  PUT and POST both go as an upload of body (maybe empty), so
            libcurl adds no form Content-Type to sign and not send  */
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, s_on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, c);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, s_on_seek);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, c);
        if (strcmp(method, "PUT") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    int64_t cap = self->config.timeout_ms;
    c->started_ms = sh_clock_mono_ms();
    c->deadline_ms = c->started_ms + (timeout_ms > 0 && timeout_ms < cap ? timeout_ms : cap);
    c->prev = self->tail;
    if (self->tail)
        self->tail->next = c;
    else
        self->head = c;
    self->tail = c;
    (*self->m.calls)++;
    return c;
}

/*  Headers set, body set: hand the call to libcurl.  */
static void s_go(upload_s3_call_t *c, bool header_failed)
{
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(c->easy, CURLOPT_INFILESIZE_LARGE, (curl_off_t)c->body_len);
    if (header_failed) {
        s_answer(c, SH_STATUS_INVALID, NULL);
        return;
    }
    if (s_start(c) != 0)
        s_answer(c, SH_STATUS_INTERNAL, NULL);
}

static int s_content_type(upload_s3_call_t *c, const char *content_type)
{
    if (!content_type)
        return 0;
    if (!s_header_value_ok(content_type, S_CONTENT_TYPE_MAX))
        return -1;
    return s_add_header(c, "Content-Type: %s", content_type);
}

/*  "name=value" with the value encoded, appended with '&' when needed.  */
static int s_query_add(char *query, size_t size, const char *name, const char *value)
{
    char enc[3 * S_TEXT_MAX + 1];
    if (strlen(value) > S_TEXT_MAX || s_encode(value, false, enc, sizeof enc) < 0)
        return -1;
    size_t at = strlen(query);
    int n = snprintf(query + at, size - at, "%s%s=%s", at ? "&" : "", name, enc);
    return n < 0 || (size_t)n >= size - at ? -1 : 0;
}

/*  --- operations ------------------------------------------------------------------  */

void upload_s3_put_object(upload_s3_t *self, const char *key, const void *body, size_t len,
                          const uint8_t *sha256, const char *content_type, int64_t timeout_ms,
                          upload_s3_fn *fn, void *arg)
{
    assert(fn && (body || len == 0));
    /*  hashing a body of several MiB here would hold up the loop; a caller
        that hashed it while it arrived passes the digest  */
    uint8_t digest[UPLOAD_S3_SHA256];
    char hex[2 * UPLOAD_S3_SHA256 + 1];
    if (!sha256) {
        upload_hash_once(body, len, digest);
        sha256 = digest;
    }
    s_hex(sha256, hex);
    upload_s3_call_t *c = s_call_new(self, S_PUT, "PUT", key, "", hex, timeout_ms, fn, arg);
    if (!c)
        return;
    c->body = body;
    c->body_len = len;
    s_go(c, s_content_type(c, content_type) != 0);
}

void upload_s3_create_multipart(upload_s3_t *self, const char *key, const char *content_type,
                                bool checksums, int64_t timeout_ms, upload_s3_fn *fn, void *arg)
{
    assert(fn);
    upload_s3_call_t *c =
        s_call_new(self, S_CREATE, "POST", key, "uploads=", S_EMPTY_SHA256, timeout_ms, fn, arg);
    if (!c)
        return;
    bool failed = s_content_type(c, content_type) != 0;
    if (checksums && s_add_header(c, "x-amz-checksum-algorithm: SHA256") != 0)
        failed = true;
    s_go(c, failed);
}

void upload_s3_upload_part(upload_s3_t *self, const char *key, const char *upload_id, int number,
                           const void *data, size_t len, const uint8_t *sha256, bool checksum,
                           int64_t timeout_ms, upload_s3_fn *fn, void *arg)
{
    assert(fn && (data || len == 0));
    char query[S_QUERY_MAX] = "";
    char num[16];
    snprintf(num, sizeof num, "%d", number);
    if (!upload_id || !upload_id[0] || number < 1 || number > UPLOAD_S3_MAX_PARTS ||
        (checksum && !sha256) || s_query_add(query, sizeof query, "partNumber", num) != 0 ||
        s_query_add(query, sizeof query, "uploadId", upload_id) != 0) {
        s_refuse(self, SH_STATUS_INVALID, fn, arg);
        return;
    }
    char hex[2 * UPLOAD_S3_SHA256 + 1] = S_UNSIGNED;
    if (sha256)
        s_hex(sha256, hex);
    upload_s3_call_t *c = s_call_new(self, S_PART, "PUT", key, query, hex, timeout_ms, fn, arg);
    if (!c)
        return;
    c->body = data;
    c->body_len = len;
    bool failed = false;
    if (checksum) {
        char b64[sodium_base64_ENCODED_LEN(UPLOAD_S3_SHA256, sodium_base64_VARIANT_ORIGINAL)];
        sodium_bin2base64(b64, sizeof b64, sha256, UPLOAD_S3_SHA256,
                          sodium_base64_VARIANT_ORIGINAL);
        failed = s_add_header(c, "x-amz-checksum-sha256: %s", b64) != 0;
    }
    s_go(c, failed);
}

/*  Append text with the five XML entities escaped.  */
static int s_xml_text(sh_buf_t *out, const char *text)
{
    for (const char *p = text; *p; p++) {
        const char *rep = NULL;
        switch (*p) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&apos;";
            break;
        default:
            break;
        }
        if (rep ? sh_buf_append(out, rep, strlen(rep)) : sh_buf_append(out, p, 1))
            return -1;
    }
    return 0;
}

void upload_s3_complete_multipart(upload_s3_t *self, const char *key, const char *upload_id,
                                  const upload_s3_part_t *parts, size_t count, int64_t timeout_ms,
                                  upload_s3_fn *fn, void *arg)
{
    assert(fn && (parts || count == 0));
    char query[S_QUERY_MAX] = "";
    bool valid = upload_id && upload_id[0] && count > 0 && count <= UPLOAD_S3_MAX_PARTS &&
                 s_query_add(query, sizeof query, "uploadId", upload_id) == 0;
    sh_buf_t xml = {0};
    int rc = sh_buf_printf(&xml, "<CompleteMultipartUpload xmlns=\"%s\">", S_XMLNS);
    for (size_t i = 0; valid && i < count; i++) {
        const upload_s3_part_t *p = &parts[i];
        if (p->number < 1 || p->number > UPLOAD_S3_MAX_PARTS ||
            (i > 0 && p->number <= parts[i - 1].number) || !p->etag || !p->etag[0] ||
            strlen(p->etag) >= S_VALUE_MAX) {
            valid = false;
            break;
        }
        rc |= sh_buf_printf(&xml, "<Part><PartNumber>%d</PartNumber><ETag>", p->number);
        rc |= s_xml_text(&xml, p->etag);
        rc |= sh_buf_printf(&xml, "</ETag>");
        if (p->sha256) {
            char b64[sodium_base64_ENCODED_LEN(UPLOAD_S3_SHA256, sodium_base64_VARIANT_ORIGINAL)];
            sodium_bin2base64(b64, sizeof b64, p->sha256, UPLOAD_S3_SHA256,
                              sodium_base64_VARIANT_ORIGINAL);
            rc |= sh_buf_printf(&xml, "<ChecksumSHA256>%s</ChecksumSHA256>", b64);
        }
        rc |= sh_buf_printf(&xml, "</Part>");
    }
    rc |= sh_buf_printf(&xml, "</CompleteMultipartUpload>");
    if (!valid || rc != 0) {
        sh_buf_free(&xml);
        s_refuse(self, valid ? SH_STATUS_INTERNAL : SH_STATUS_INVALID, fn, arg);
        return;
    }
    uint8_t digest[UPLOAD_S3_SHA256];
    char hex[2 * UPLOAD_S3_SHA256 + 1];
    upload_hash_once(xml.data, xml.len, digest);
    s_hex(digest, hex);
    upload_s3_call_t *c =
        s_call_new(self, S_COMPLETE, "POST", key, query, hex, timeout_ms, fn, arg);
    if (!c) {
        sh_buf_free(&xml);
        return;
    }
    c->owned_body = xml.data; /* the call owns the document now */
    c->body = (const uint8_t *)xml.data;
    c->body_len = xml.len;
    s_go(c, s_add_header(c, "Content-Type: application/xml") != 0);
}

void upload_s3_abort_multipart(upload_s3_t *self, const char *key, const char *upload_id,
                               int64_t timeout_ms, upload_s3_fn *fn, void *arg)
{
    assert(fn);
    char query[S_QUERY_MAX] = "";
    if (!upload_id || !upload_id[0] ||
        s_query_add(query, sizeof query, "uploadId", upload_id) != 0) {
        s_refuse(self, SH_STATUS_INVALID, fn, arg);
        return;
    }
    upload_s3_call_t *c =
        s_call_new(self, S_ABORT, "DELETE", key, query, S_EMPTY_SHA256, timeout_ms, fn, arg);
    if (c)
        s_go(c, false);
}

upload_s3_call_t *upload_s3_get_object(upload_s3_t *self, const char *key, const char *range,
                                       int64_t timeout_ms, upload_s3_chunk_fn *chunk,
                                       upload_s3_fn *fn, void *arg)
{
    assert(fn && chunk);
    if (range && !s_range_ok(range)) {
        s_refuse(self, SH_STATUS_INVALID, fn, arg);
        return NULL;
    }
    upload_s3_call_t *c =
        s_call_new(self, S_GET, "GET", key, "", S_EMPTY_SHA256, timeout_ms, fn, arg);
    if (!c)
        return NULL;
    c->chunk = chunk;
    /*  a header of ours, not CURLOPT_RANGE: libcurl signs only those  */
    bool failed = range && s_add_header(c, "Range: %s", range) != 0;
    s_go(c, failed);
    /*  s_go may have answered already; then c is gone  */
    for (upload_s3_call_t *p = self->head; p; p = p->next)
        if (p == c)
            return c;
    return NULL;
}

void upload_s3_head_object(upload_s3_t *self, const char *key, int64_t timeout_ms, upload_s3_fn *fn,
                           void *arg)
{
    assert(fn);
    upload_s3_call_t *c =
        s_call_new(self, S_HEAD, "HEAD", key, "", S_EMPTY_SHA256, timeout_ms, fn, arg);
    if (c)
        s_go(c, false);
}

void upload_s3_delete_object(upload_s3_t *self, const char *key, int64_t timeout_ms,
                             upload_s3_fn *fn, void *arg)
{
    assert(fn);
    upload_s3_call_t *c =
        s_call_new(self, S_DELETE, "DELETE", key, "", S_EMPTY_SHA256, timeout_ms, fn, arg);
    if (c)
        s_go(c, false);
}

void upload_s3_list_multipart_uploads(upload_s3_t *self, const char *prefix, const char *key_marker,
                                      const char *upload_id_marker, int max, int64_t timeout_ms,
                                      upload_s3_fn *fn, void *arg)
{
    assert(fn);
    char query[S_QUERY_MAX] = "";
    char num[16];
    snprintf(num, sizeof num, "%d", max);
    /*  sorted by name: libcurl 7.88 signs the query as written  */
    int rc = 0;
    if (key_marker && key_marker[0])
        rc |= s_query_add(query, sizeof query, "key-marker", key_marker);
    if (max > 0)
        rc |= s_query_add(query, sizeof query, "max-uploads", num);
    if (prefix && prefix[0])
        rc |= s_query_add(query, sizeof query, "prefix", prefix);
    if (upload_id_marker && upload_id_marker[0])
        rc |= s_query_add(query, sizeof query, "upload-id-marker", upload_id_marker);
    rc |= s_query_add(query, sizeof query, "uploads", "");
    if (rc != 0 || max < 0 || max > S_LIST_MAX) {
        s_refuse(self, SH_STATUS_INVALID, fn, arg);
        return;
    }
    upload_s3_call_t *c =
        s_call_new(self, S_LIST_UPLOADS, "GET", NULL, query, S_EMPTY_SHA256, timeout_ms, fn, arg);
    if (c)
        s_go(c, false);
}

void upload_s3_list_objects(upload_s3_t *self, const char *prefix, const char *token, int max,
                            int64_t timeout_ms, upload_s3_fn *fn, void *arg)
{
    assert(fn);
    char query[S_QUERY_MAX] = "";
    char num[16];
    snprintf(num, sizeof num, "%d", max);
    int rc = 0;
    if (token && token[0])
        rc |= s_query_add(query, sizeof query, "continuation-token", token);
    rc |= s_query_add(query, sizeof query, "list-type", "2");
    if (max > 0)
        rc |= s_query_add(query, sizeof query, "max-keys", num);
    if (prefix && prefix[0])
        rc |= s_query_add(query, sizeof query, "prefix", prefix);
    if (rc != 0 || max < 0 || max > S_LIST_MAX) {
        s_refuse(self, SH_STATUS_INVALID, fn, arg);
        return;
    }
    upload_s3_call_t *c =
        s_call_new(self, S_LIST_OBJECTS, "GET", NULL, query, S_EMPTY_SHA256, timeout_ms, fn, arg);
    if (c)
        s_go(c, false);
}

/*  --- the client --------------------------------------------------------------------  */

/*  Endpoint + addressing style -> the URL every request starts with.  */
/*  --- presigned URLs (SigV4 in the query string) ---------------------------  */

static void s_hmac(const uint8_t *key, size_t key_len, const char *msg, uint8_t out[32])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)msg, strlen(msg));
    crypto_auth_hmacsha256_final(&st, out);
}

/*  Append "&name=value" (value encoded, '/' too) to buf; 0 or -1.  */
static int s_param(sh_buf_t *buf, const char *name, const char *value)
{
    char enc[3 * UPLOAD_S3_PRESIGN_MAX + 1];
    if (s_encode(value, false, enc, sizeof enc) < 0)
        return -1;
    return sh_buf_printf(buf, "%s%s=%s", buf->len ? "&" : "", name, enc) < 0 ? -1 : 0;
}

int upload_s3_presign_get(upload_s3_t *self, const char *key, int64_t expires_s, int64_t now_s,
                          const char *disposition, const char *content_type, char *out, size_t size)
{
    const upload_s3_config_t *cf = &self->config;
    char path[3 * UPLOAD_S3_MAX_KEY + 1], date[9], stamp[17], scope[160], credential[400];
    if (!s_key_ok(key) || upload_s3_encode_key(key, path, sizeof path) < 0 || expires_s < 1 ||
        expires_s > UPLOAD_S3_PRESIGN_MAX_S)
        return -1;
    /*  the base is scheme://host[:port][/bucket]: host as the Host header has it  */
    const char *base = self->public_base;
    const char *host = strstr(base, "://") + 3;
    const char *prefix = strchr(host, '/');
    size_t host_len = prefix ? (size_t)(prefix - host) : strlen(host);
    if (!prefix)
        prefix = "";
    time_t t = (time_t)now_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%Y%m%d", &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(scope, sizeof scope, "%s/%s/s3/aws4_request", date, cf->region);
    snprintf(credential, sizeof credential, "%s/%s", cf->access_key, scope);
    char expires[24];
    snprintf(expires, sizeof expires, "%lld", (long long)expires_s);

    /*  parameters sorted by name: upper-case X before lower-case r  */
    sh_buf_t query = {0}, canonical = {0}, sts = {0};
    int rc = s_param(&query, "X-Amz-Algorithm", "AWS4-HMAC-SHA256");
    rc |= s_param(&query, "X-Amz-Credential", credential);
    rc |= s_param(&query, "X-Amz-Date", stamp);
    rc |= s_param(&query, "X-Amz-Expires", expires);
    rc |= s_param(&query, "X-Amz-SignedHeaders", "host");
    if (disposition && disposition[0])
        rc |= s_param(&query, "response-content-disposition", disposition);
    if (content_type && content_type[0])
        rc |= s_param(&query, "response-content-type", content_type);
    rc |= sh_buf_printf(&canonical, "GET\n%s/%s\n%s\nhost:%.*s\n\nhost\nUNSIGNED-PAYLOAD", prefix,
                        path, query.data ? query.data : "", (int)host_len, host) < 0
              ? -1
              : 0;
    uint8_t digest[UPLOAD_S3_SHA256];
    char hex[2 * UPLOAD_S3_SHA256 + 1];
    if (rc == 0 && upload_hash_once(canonical.data, canonical.len, digest) == 0) {
        s_hex(digest, hex);
        rc |= sh_buf_printf(&sts, "AWS4-HMAC-SHA256\n%s\n%s\n%s", stamp, scope, hex) < 0 ? -1 : 0;
    } else
        rc = -1;
    if (rc == 0) {
        /*  the signing key: HMAC chain from "AWS4" + secret over date, region, service  */
        char secret[256];
        uint8_t k[32];
        snprintf(secret, sizeof secret, "AWS4%s", cf->secret_key);
        s_hmac((const uint8_t *)secret, strlen(secret), date, k);
        s_hmac(k, sizeof k, cf->region, k);
        s_hmac(k, sizeof k, "s3", k);
        s_hmac(k, sizeof k, "aws4_request", k);
        s_hmac(k, sizeof k, sts.data, digest);
        sodium_memzero(secret, sizeof secret);
        sodium_memzero(k, sizeof k);
        s_hex(digest, hex);
        int n = snprintf(out, size, "%.*s%.*s%s/%s?%s&X-Amz-Signature=%s", (int)(host - base), base,
                         (int)host_len, host, prefix, path, query.data, hex);
        rc = n > 0 && (size_t)n < size ? 0 : -1;
    }
    sh_buf_free(&query);
    sh_buf_free(&canonical);
    sh_buf_free(&sts);
    return rc;
}

/*  scheme://host[:port]/bucket (path style) or scheme://bucket.host[:port]
    of endpoint into base (size bytes). Returns 0 or -1.  */
static int s_base_url(const upload_s3_config_t *cf, const char *endpoint, char *base, size_t size)
{
    const char *sep = strstr(endpoint, "://");
    if (!sep || (strncmp(endpoint, "http://", 7) != 0 && strncmp(endpoint, "https://", 8) != 0))
        return -1;
    const char *host = sep + 3;
    size_t host_len = strlen(host);
    while (host_len && host[host_len - 1] == '/')
        host_len--;
    if (host_len == 0 || memchr(host, '/', host_len) || !cf->bucket[0])
        return -1;
    for (const char *p = cf->bucket; *p; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '-' || *p == '.'))
            return -1; /* S3 bucket names: nothing to encode */
    int n;
    if (cf->path_style)
        n = snprintf(base, size, "%.*s%.*s/%s", (int)(host - endpoint), endpoint, (int)host_len,
                     host, cf->bucket);
    else
        n = snprintf(base, size, "%.*s%s.%.*s", (int)(host - endpoint), endpoint, cf->bucket,
                     (int)host_len, host);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

upload_s3_t *upload_s3_new(sh_loop_t *loop, const upload_s3_config_t *config, sh_metrics_t *metrics)
{
    assert(loop && config && config->endpoint && config->region && config->bucket);
    assert(config->access_key && config->secret_key);
    assert(config->timeout_ms > 0 && config->connect_timeout_ms > 0 && config->max_retries >= 0);
    assert(config->backoff_base_ms >= 0 && config->backoff_cap_ms >= config->backoff_base_ms);
    static bool curl_ready = false;
    if (!curl_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || sodium_init() < 0) {
            sh_error("s3: libcurl or libsodium could not initialise");
            return NULL;
        }
        curl_ready = true;
    }
    upload_s3_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    self->curl_timer = self->retry_timer = self->resume_timer = -1;
    if (!self->config.label)
        self->config.label = "s3";
    const char *public_endpoint = config->public_endpoint && config->public_endpoint[0]
                                      ? config->public_endpoint
                                      : config->endpoint;
    if (s_base_url(config, config->endpoint, self->base, sizeof self->base) != 0 ||
        s_base_url(config, public_endpoint, self->public_base, sizeof self->public_base) != 0) {
        sh_error("s3: endpoint must be http(s)://host[:port] and the bucket a plain name");
        free(self);
        return NULL;
    }
    int n1 = snprintf(self->sigv4, sizeof self->sigv4, "aws:amz:%s:s3", config->region);
    int n2 = snprintf(self->userpwd, sizeof self->userpwd, "%s:%s", config->access_key,
                      config->secret_key);
    if (n1 < 0 || (size_t)n1 >= sizeof self->sigv4 || n2 < 0 ||
        (size_t)n2 >= sizeof self->userpwd || strchr(config->access_key, ':') ||
        strchr(config->region, ':')) {
        sh_error("s3: region or credentials unusable");
        free(self);
        return NULL;
    }
    if (config->connect_to && config->connect_to[0]) {
        self->connect_to = curl_slist_append(NULL, config->connect_to);
        if (!self->connect_to) {
            free(self);
            return NULL;
        }
    }
    self->multi = curl_multi_init();
    if (!self->multi) {
        curl_slist_free_all(self->connect_to);
        free(self);
        return NULL;
    }
    curl_multi_setopt(self->multi, CURLMOPT_SOCKETFUNCTION, s_on_socket);
    curl_multi_setopt(self->multi, CURLMOPT_SOCKETDATA, self);
    curl_multi_setopt(self->multi, CURLMOPT_TIMERFUNCTION, s_on_timer_set);
    curl_multi_setopt(self->multi, CURLMOPT_TIMERDATA, self);
    char labels[S_LABELS_MAX];
    snprintf(labels, sizeof labels, "backend=\"%s\"", self->config.label);
    sh_backend_metrics_init(&self->m, metrics, labels);
    return self;
}

void upload_s3_destroy(upload_s3_t **self_p)
{
    upload_s3_t *self = *self_p;
    if (!self)
        return;
    /*  calls made from the callbacks below are refused at once  */
    self->closing = true;
    while (self->head)
        s_answer(self->head, SH_STATUS_UNAVAILABLE, NULL);
    curl_multi_cleanup(self->multi);
    /*  sockets of connections libcurl kept open until the cleanup  */
    while (self->socks)
        s_sock_free(self, self->socks);
    int timers[] = {self->curl_timer, self->retry_timer, self->resume_timer};
    for (size_t i = 0; i < SH_ARRAY_SIZE(timers); i++)
        if (timers[i] > 0)
            sh_loop_timer_cancel(self->loop, timers[i]);
    curl_slist_free_all(self->connect_to);
    free(self);
    *self_p = NULL;
}
