/*  test_upload_s3.c - the S3 client against a small HTTP server inside
    the test's own event loop, which records each request and answers
    what the test queued. Signing is checked against AWS's published
    SigV4 examples and against a signature computed here independently;
    retries, deadlines, reply parsing, key encoding, paused downloads and
    destroying the client with calls pending are checked too.
*/
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>

#include "sh_codec.h"
#include "sh_loop.h"
#include "sh_metrics.h"
#include "sh_util.h"
#include "upload_s3.h"

#define T_PORT_LOW    20000 /* test ports stay below the ephemeral range */
#define T_PORT_SPAN   12000
#define T_MAX_REQS    256
#define T_MAX_REPLIES 16
#define T_MAX_CONNS   32
#define T_WAIT_MS     5000 /* the longest any condition is waited for */
#define T_LABELS      "backend=\"unit\""
#define T_BIG         (256 * 1024)

/*  AWS's published example credentials (SigV4 documentation).  */
#define T_ACCESS "AKIAIOSFODNN7EXAMPLE"
#define T_SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define T_DATE   "20130524T000000Z"
#define T_EMPTY  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/*  --- the capture server --------------------------------------------------------  */

typedef enum { T_ANSWER, T_HANG, T_CLOSE } t_action_t;

typedef struct {
    t_action_t action;
    int status;
    const char *headers; /* extra header lines, each ending "\r\n" */
    const char *body;
    size_t body_len;
} t_reply_t;

typedef struct {
    char *head; /* request line and headers */
    char *body;
    size_t body_len;
} t_req_t;

typedef struct t_server_t t_server_t;

typedef struct {
    t_server_t *server;
    int fd;
    sh_loop_item_t *item;
    sh_buf_t in;
    sh_buf_t out;
    size_t out_off;
} t_conn_t;

struct t_server_t {
    sh_loop_t *loop;
    int listener;
    int port;
    t_reply_t replies[T_MAX_REPLIES]; /* answered in order; the last one repeats */
    int reply_count;
    int next_reply;
    t_req_t reqs[T_MAX_REQS];
    int req_count;
    t_conn_t *conns[T_MAX_CONNS];
};

static void t_conn_close(t_conn_t *c)
{
    t_server_t *s = c->server;
    for (int i = 0; i < T_MAX_CONNS; i++)
        if (s->conns[i] == c)
            s->conns[i] = NULL;
    sh_loop_remove(s->loop, &c->item);
    close(c->fd);
    sh_buf_free(&c->in);
    sh_buf_free(&c->out);
    free(c);
}

static void t_queue(t_server_t *s, t_reply_t reply)
{
    assert_true(s->reply_count < T_MAX_REPLIES);
    s->replies[s->reply_count++] = reply;
}

static t_reply_t t_xml(int status, const char *headers, const char *body)
{
    return (t_reply_t){T_ANSWER, status, headers, body, body ? strlen(body) : 0};
}

/*  Serve every complete request in the input. Returns -1 when closed.  */
static int t_serve(t_conn_t *c)
{
    t_server_t *s = c->server;
    for (;;) {
        char *end = c->in.len ? memmem(c->in.data, c->in.len, "\r\n\r\n", 4) : NULL;
        if (!end)
            return 0;
        size_t head_len = (size_t)(end - c->in.data) + 4;
        size_t body_len = 0;
        for (char *p = c->in.data; p < end; p = strstr(p, "\r\n") + 2)
            if (strncasecmp(p, "Content-Length:", 15) == 0)
                body_len = strtoul(p + 15, NULL, 10);
        if (c->in.len < head_len + body_len)
            return 0;
        assert_true(s->req_count < T_MAX_REQS);
        t_req_t *r = &s->reqs[s->req_count++];
        r->head = strndup(c->in.data, head_len);
        r->body = malloc(body_len + 1);
        memcpy(r->body, c->in.data + head_len, body_len);
        r->body[body_len] = 0;
        r->body_len = body_len;
        memmove(c->in.data, c->in.data + head_len + body_len, c->in.len - head_len - body_len);
        c->in.len -= head_len + body_len;

        t_reply_t reply = {T_ANSWER, 500, NULL, NULL, 0};
        if (s->reply_count)
            reply =
                s->replies[s->next_reply < s->reply_count ? s->next_reply++ : s->reply_count - 1];
        if (reply.action == T_HANG)
            continue;
        if (reply.action == T_CLOSE) {
            t_conn_close(c);
            return -1;
        }
        sh_buf_printf(&c->out, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n%s\r\n", reply.status,
                      reply.body_len, reply.headers ? reply.headers : "");
        if (reply.body_len)
            sh_buf_append(&c->out, reply.body, reply.body_len);
        sh_loop_set_events(c->item, SH_LOOP_IN | SH_LOOP_OUT);
    }
}

static int t_on_conn(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    t_conn_t *c = arg;
    if (revents & SH_LOOP_IN) {
        char buf[65536];
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            t_conn_close(c);
            return 0;
        }
        if (n > 0) {
            sh_buf_append(&c->in, buf, (size_t)n);
            if (t_serve(c) != 0)
                return 0;
        }
    }
    if ((revents & SH_LOOP_OUT) && c->out.len > c->out_off) {
        ssize_t n = write(c->fd, c->out.data + c->out_off, c->out.len - c->out_off);
        if (n > 0)
            c->out_off += (size_t)n;
        if (c->out_off == c->out.len) {
            sh_buf_reset(&c->out);
            c->out_off = 0;
            sh_loop_set_events(c->item, SH_LOOP_IN);
        }
    }
    return 0;
}

static int t_on_accept(sh_loop_t *loop, short revents, void *arg)
{
    (void)revents;
    t_server_t *s = arg;
    int fd = accept(s->listener, NULL, NULL);
    if (fd < 0)
        return 0;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    for (int i = 0; i < T_MAX_CONNS; i++)
        if (!s->conns[i]) {
            t_conn_t *c = calloc(1, sizeof *c);
            c->server = s;
            c->fd = fd;
            c->item = sh_loop_add_fd(loop, fd, SH_LOOP_IN, t_on_conn, c);
            s->conns[i] = c;
            return 0;
        }
    close(fd);
    return 0;
}

static void t_server_start(t_server_t *s, sh_loop_t *loop)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    unsigned start = (unsigned)getpid() * 7919u + (unsigned)sh_clock_mono_us();
    for (unsigned i = 0; i < T_PORT_SPAN; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fd >= 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in addr = {0};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons((uint16_t)(T_PORT_LOW + (start + i) % T_PORT_SPAN));
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(fd, 64) == 0) {
            s->listener = fd;
            s->port = ntohs(addr.sin_port);
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            assert_non_null(sh_loop_add_fd(loop, fd, SH_LOOP_IN, t_on_accept, s));
            return;
        }
        close(fd);
    }
    fail_msg("no free port");
}

static void t_server_stop(t_server_t *s)
{
    for (int i = 0; i < T_MAX_CONNS; i++)
        if (s->conns[i])
            t_conn_close(s->conns[i]);
    close(s->listener);
    for (int i = 0; i < s->req_count; i++) {
        free(s->reqs[i].head);
        free(s->reqs[i].body);
    }
}

/*  The value of header name in a recorded request, copied into out.  */
static const char *t_header(const t_req_t *r, const char *name, char *out, size_t size)
{
    size_t len = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n"))
        if (strncasecmp(p + 2, name, len) == 0 && p[2 + len] == ':') {
            const char *v = p + 3 + len;
            while (*v == ' ')
                v++;
            size_t n = strcspn(v, "\r");
            snprintf(out, size, "%.*s", (int)n, v);
            return out;
        }
    return NULL;
}

/*  The request line without " HTTP/1.1".  */
static const char *t_line(const t_req_t *r, char *out, size_t size)
{
    size_t n = strcspn(r->head, "\r");
    if (n > 9)
        n -= 9;
    snprintf(out, size, "%.*s", (int)n, r->head);
    return out;
}

/*  --- fixture --------------------------------------------------------------------  */

typedef struct {
    int calls;
    uint64_t status;
    int http_status;
    char error_code[64];
    char upload_id[128];
    char etag[128];
    int64_t content_length;
    char content_range[64];
    size_t count;
    upload_s3_entry_t entries[4];
    char keys[4][64];
    char ids[4][64];
    bool truncated;
    char next_marker[128];
    char next_upload_id_marker[128];
    int requests_seen; /* requests the server had when the answer came */
    int64_t started_ms;
    int64_t elapsed_ms;
    /* streamed GET */
    sh_buf_t body;
    int chunks;
    int pause_on; /* refuse chunk number n (1-based) once */
    bool paused;
    upload_s3_call_t *call;
} t_answer_t;

typedef struct {
    sh_loop_t *loop;
    sh_metrics_t *metrics;
    t_server_t server;
    upload_s3_t *s3;
    char endpoint[64];
    char connect_to[128];
    upload_s3_config_t config;
} t_fixture_t;

static t_fixture_t *t_current;

static void t_on_answer(void *arg, uint64_t status, const upload_s3_result_t *r)
{
    t_answer_t *a = arg;
    a->calls++;
    a->status = status;
    a->http_status = r->http_status;
    snprintf(a->error_code, sizeof a->error_code, "%s", r->error_code);
    snprintf(a->upload_id, sizeof a->upload_id, "%s", r->upload_id);
    snprintf(a->etag, sizeof a->etag, "%s", r->etag);
    snprintf(a->content_range, sizeof a->content_range, "%s", r->content_range);
    snprintf(a->next_marker, sizeof a->next_marker, "%s", r->next_marker);
    snprintf(a->next_upload_id_marker, sizeof a->next_upload_id_marker, "%s",
             r->next_upload_id_marker);
    a->content_length = r->content_length;
    a->truncated = r->truncated;
    a->count = r->count;
    for (size_t i = 0; i < r->count && i < 4; i++) {
        a->entries[i] = r->entries[i];
        snprintf(a->keys[i], sizeof a->keys[i], "%s", r->entries[i].key);
        snprintf(a->ids[i], sizeof a->ids[i], "%s", r->entries[i].upload_id);
    }
    a->requests_seen = t_current ? t_current->server.req_count : 0;
    a->elapsed_ms = sh_clock_mono_ms() - a->started_ms;
}

static int t_on_chunk(void *arg, const uint8_t *data, size_t len)
{
    t_answer_t *a = arg;
    a->chunks++;
    if (a->chunks == a->pause_on && !a->paused) {
        a->paused = true;
        return UPLOAD_S3_PAUSE;
    }
    sh_buf_append(&a->body, data, len);
    return 0;
}

static int t_setup(void **state)
{
    t_fixture_t *f = calloc(1, sizeof *f);
    f->loop = sh_loop_new();
    f->metrics = sh_metrics_new("test", "unit");
    t_server_start(&f->server, f->loop);
    snprintf(f->endpoint, sizeof f->endpoint, "http://127.0.0.1:%d", f->server.port);
    f->config = (upload_s3_config_t){
        .endpoint = f->endpoint,
        .region = "us-east-1",
        .bucket = "bucket",
        .path_style = true,
        .access_key = T_ACCESS,
        .secret_key = T_SECRET,
        .timeout_ms = 3000,
        .connect_timeout_ms = 1000,
        .low_speed_bytes = 1,
        .low_speed_secs = 10,
        .max_retries = 5,
        .backoff_base_ms = 5,
        .backoff_cap_ms = 20,
        .label = "unit",
    };
    t_current = f;
    *state = f;
    return 0;
}

static int t_teardown(void **state)
{
    t_fixture_t *f = *state;
    upload_s3_destroy(&f->s3);
    t_server_stop(&f->server);
    sh_loop_destroy(&f->loop);
    sh_metrics_destroy(&f->metrics);
    t_current = NULL;
    free(f);
    return 0;
}

/*  Point the client at the server as virtual-host style AWS: the URL and
    the signed Host keep examplebucket.s3.amazonaws.com.  */
static void t_as_aws(t_fixture_t *f, const char *const *extra_headers)
{
    snprintf(f->connect_to, sizeof f->connect_to, "examplebucket.s3.amazonaws.com:80:127.0.0.1:%d",
             f->server.port);
    f->config.endpoint = "http://s3.amazonaws.com";
    f->config.bucket = "examplebucket";
    f->config.path_style = false;
    f->config.connect_to = f->connect_to;
    f->config.extra_headers = extra_headers;
}

static void t_client(t_fixture_t *f)
{
    f->s3 = upload_s3_new(f->loop, &f->config, f->metrics);
    assert_non_null(f->s3);
}

typedef bool(t_cond_fn)(t_fixture_t *f, void *arg);

/*  cond(f, arg) for sh_loop_run_until.  */
typedef struct {
    t_fixture_t *f;
    t_cond_fn *cond;
    void *arg;
} t_cond_t;

static bool t_cond(void *arg)
{
    t_cond_t *c = arg;
    return c->cond(c->f, c->arg);
}

/*  Run the loop until cond holds (true) or timeout_ms passed (false);
    with cond NULL, run for timeout_ms.  */
static bool t_run(t_fixture_t *f, t_cond_fn *cond, void *arg, int64_t timeout_ms)
{
    t_cond_t c = {f, cond, arg};
    return sh_loop_run_until(f->loop, cond ? t_cond : NULL, &c, timeout_ms);
}

static bool t_answered(t_fixture_t *f, void *arg)
{
    (void)f;
    return ((t_answer_t *)arg)->calls > 0;
}

static bool t_requests(t_fixture_t *f, void *arg)
{
    return f->server.req_count >= *(int *)arg;
}

static void t_wait_answer(t_fixture_t *f, t_answer_t *a)
{
    assert_true(t_run(f, t_answered, a, T_WAIT_MS));
    assert_int_equal(a->calls, 1);
}

static uint64_t t_counter(t_fixture_t *f, const char *name)
{
    return *sh_metrics_counter(f->metrics, name, "", T_LABELS);
}

static const char *t_signature(const t_req_t *r, char *out, size_t size)
{
    char auth[512];
    assert_non_null(t_header(r, "Authorization", auth, sizeof auth));
    const char *sig = strstr(auth, "Signature=");
    assert_non_null(sig);
    snprintf(out, size, "%s", sig + 10);
    return out;
}

/*  --- SigV4 against AWS's published examples ---------------------------------------  */

/*  "GET Object": the first 10 bytes of test.txt in examplebucket.  */
static void test_upload_s3_sigv4_get_object_example(void **state)
{
    t_fixture_t *f = *state;
    static const char *const headers[] = {"x-amz-date: " T_DATE, NULL};
    t_as_aws(f, headers);
    t_client(f);
    t_queue(&f->server,
            t_xml(206, "Content-Range: bytes 0-9/443\r\nETag: \"e1\"\r\n", "0123456789"));
    t_answer_t a = {.started_ms = sh_clock_mono_ms()};
    upload_s3_get_object(f->s3, "test.txt", "bytes=0-9", 2000, t_on_chunk, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_int_equal(a.http_status, 206);
    assert_string_equal(a.content_range, "bytes 0-9/443");
    assert_int_equal(a.content_length, 10);
    assert_int_equal(a.body.len, 10);
    assert_memory_equal(a.body.data, "0123456789", 10);

    const t_req_t *r = &f->server.reqs[0];
    char line[256], value[512], sig[128];
    assert_string_equal(t_line(r, line, sizeof line), "GET /test.txt");
    assert_string_equal(t_header(r, "Host", value, sizeof value), "examplebucket.s3.amazonaws.com");
    assert_string_equal(t_header(r, "x-amz-content-sha256", value, sizeof value), T_EMPTY);
    assert_non_null(strstr(t_header(r, "Authorization", value, sizeof value),
                           "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/"
                           "s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;"
                           "x-amz-date, "));
    assert_string_equal(t_signature(r, sig, sizeof sig),
                        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    sh_buf_free(&a.body);
}

/*  "PUT Object": "Welcome to Amazon S3." as test$file.text, storage class
    REDUCED_REDUNDANCY, with a Date header.  */
static void test_upload_s3_sigv4_put_object_example(void **state)
{
    t_fixture_t *f = *state;
    static const char *const headers[] = {"Date: Fri, 24 May 2013 00:00:00 GMT",
                                          "x-amz-date: " T_DATE,
                                          "x-amz-storage-class: REDUCED_REDUNDANCY", NULL};
    t_as_aws(f, headers);
    t_client(f);
    t_queue(&f->server, t_xml(200, "ETag: \"put-etag\"\r\n", NULL));
    static const char body[] = "Welcome to Amazon S3.";
    t_answer_t a = {0};
    upload_s3_put_object(f->s3, "test$file.text", body, strlen(body), NULL, NULL, 2000, t_on_answer,
                         &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_string_equal(a.etag, "\"put-etag\"");

    const t_req_t *r = &f->server.reqs[0];
    char line[256], value[512], sig[128];
    assert_string_equal(t_line(r, line, sizeof line), "PUT /test%24file.text");
    assert_string_equal(t_header(r, "x-amz-content-sha256", value, sizeof value),
                        "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
    assert_string_equal(r->body, body);
    assert_non_null(strstr(t_header(r, "Authorization", value, sizeof value),
                           "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;"
                           "x-amz-storage-class, "));
    assert_string_equal(t_signature(r, sig, sizeof sig),
                        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

/*  --- SigV4 computed here, for a key that needs encoding -----------------------------  */

static void t_hmac(const uint8_t *key, size_t key_len, const char *msg, uint8_t out[32])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)msg, strlen(msg));
    crypto_auth_hmacsha256_final(&st, out);
}

static void t_sha_hex(const char *text, char out[65])
{
    uint8_t d[32];
    crypto_hash_sha256(d, (const uint8_t *)text, strlen(text));
    sodium_bin2hex(out, 65, d, 32);
}

/*  The SigV4 signature of a request whose only signed headers are host,
    x-amz-content-sha256 (payload_hex) and x-amz-date (T_DATE), as the
    canonical request, string to sign and signing key define it.  */
static void t_expected_signature(const t_fixture_t *f, const char *method, const char *path,
                                 const char *payload_hex, char out[65])
{
    char host[64], canonical[1024], hash[65], to_sign[512];
    snprintf(host, sizeof host, "127.0.0.1:%d", f->server.port);
    snprintf(canonical, sizeof canonical,
             "%s\n%s\n\nhost:%s\nx-amz-content-sha256:%s\nx-amz-date:%s\n\n"
             "host;x-amz-content-sha256;x-amz-date\n%s",
             method, path, host, payload_hex, T_DATE, payload_hex);
    t_sha_hex(canonical, hash);
    snprintf(to_sign, sizeof to_sign,
             "AWS4-HMAC-SHA256\n%s\n20130524/us-east-1/s3/aws4_request\n%s", T_DATE, hash);
    uint8_t k1[32], k2[32], k3[32], k4[32], s[32];
    const char *secret = "AWS4" T_SECRET;
    t_hmac((const uint8_t *)secret, strlen(secret), "20130524", k1);
    t_hmac(k1, 32, "us-east-1", k2);
    t_hmac(k2, 32, "s3", k3);
    t_hmac(k3, 32, "aws4_request", k4);
    t_hmac(k4, 32, to_sign, s);
    sodium_bin2hex(out, 65, s, 32);
}

static void test_upload_s3_sigv4_encoded_key(void **state)
{
    t_fixture_t *f = *state;
    static const char *const headers[] = {"x-amz-date: " T_DATE, NULL};
    f->config.extra_headers = headers;
    t_client(f);
    t_queue(&f->server, t_xml(200, NULL, "x"));
    t_answer_t a = {0};
    const char *key = "photos/2024 summer/\xc3\xbcn\xc3\xaf+a=b&c$.jpg";
    const char *path = "/bucket/photos/2024%20summer/%C3%BCn%C3%AF%2Ba%3Db%26c%24.jpg";
    upload_s3_get_object(f->s3, key, NULL, 2000, t_on_chunk, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    const t_req_t *r = &f->server.reqs[0];
    char line[512], value[512], sig[128];
    snprintf(value, sizeof value, "GET %s", path);
    assert_string_equal(t_line(r, line, sizeof line), value);

    char expect[65];
    t_expected_signature(f, "GET", path, T_EMPTY, expect);
    assert_string_equal(t_signature(r, sig, sizeof sig), expect);
    /*  nothing signed that is not sent: no "expect" among the signed headers  */
    assert_null(strstr(t_header(r, "Authorization", value, sizeof value), "expect"));
    sh_buf_free(&a.body);
}

/*  A PutObject given the body's SHA-256 sends and signs that digest as it
    is: the body is not hashed again. The digest given here is not the
    body's, so a digest computed from the body would show.  */
static void test_upload_s3_put_object_given_sha256_is_signed(void **state)
{
    t_fixture_t *f = *state;
    static const char *const headers[] = {"x-amz-date: " T_DATE, NULL};
    f->config.extra_headers = headers;
    t_client(f);
    t_queue(&f->server, t_xml(200, "ETag: \"given\"\r\n", NULL));
    t_queue(&f->server, t_xml(200, "ETag: \"computed\"\r\n", NULL));
    static const char body[] = "the object's bytes";
    uint8_t given[32];
    crypto_hash_sha256(given, (const uint8_t *)"some other bytes", 16);
    char given_hex[65], body_hex[65];
    sodium_bin2hex(given_hex, sizeof given_hex, given, sizeof given);
    t_sha_hex(body, body_hex);
    assert_string_not_equal(given_hex, body_hex);

    t_answer_t a = {0}, b = {0};
    upload_s3_put_object(f->s3, "k", body, strlen(body), given, NULL, 2000, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_string_equal(a.etag, "\"given\"");
    /*  NULL: the body's own SHA-256, computed by the client  */
    upload_s3_put_object(f->s3, "k", body, strlen(body), NULL, NULL, 2000, t_on_answer, &b);
    t_wait_answer(f, &b);
    assert_int_equal(b.status, SH_STATUS_OK);
    assert_string_equal(b.etag, "\"computed\"");

    assert_int_equal(f->server.req_count, 2);
    const char *const sent[] = {given_hex, body_hex};
    for (int i = 0; i < 2; i++) {
        const t_req_t *r = &f->server.reqs[i];
        char line[64], value[512], sig[128], expect[65];
        assert_string_equal(t_line(r, line, sizeof line), "PUT /bucket/k");
        assert_string_equal(r->body, body);
        assert_string_equal(t_header(r, "x-amz-content-sha256", value, sizeof value), sent[i]);
        t_expected_signature(f, "PUT", "/bucket/k", sent[i], expect);
        assert_string_equal(t_signature(r, sig, sizeof sig), expect);
    }
}

/*  --- retries and deadlines ------------------------------------------------------------  */

#define T_SLOWDOWN                                                                             \
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please " \
    "reduce your request rate.</Message></Error>"

static void test_upload_s3_retries_slowdown_then_succeeds(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server, t_xml(503, NULL, T_SLOWDOWN));
    t_queue(&f->server, t_xml(503, NULL, T_SLOWDOWN));
    t_queue(&f->server, t_xml(200, "ETag: \"ok\"\r\n", NULL));
    t_answer_t a = {0};
    upload_s3_put_object(f->s3, "k", "abc", 3, NULL, "text/plain", 2000, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_string_equal(a.etag, "\"ok\"");
    assert_int_equal(f->server.req_count, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(f->server.reqs[i].body, "abc"); /* the same bytes each time */
    assert_int_equal(t_counter(f, "shoal_backend_retries_total"), 2);
    assert_int_equal(t_counter(f, "shoal_backend_calls_total"), 1);
    assert_int_equal(t_counter(f, "shoal_backend_errors_total"), 0);
}

static void test_upload_s3_no_retry_on_403_or_404(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server,
            t_xml(403, NULL, "<Error><Code>AccessDenied</Code><Message>no</Message></Error>"));
    t_queue(&f->server, t_xml(404, NULL, "<Error><Code>NoSuchKey</Code><Key>k</Key></Error>"));
    t_queue(&f->server, t_xml(404, NULL, NULL));
    t_answer_t a = {0}, b = {0}, c = {0};
    upload_s3_put_object(f->s3, "k", "x", 1, NULL, NULL, 2000, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_INTERNAL);
    assert_int_equal(a.http_status, 403);
    assert_string_equal(a.error_code, "AccessDenied");
    assert_int_equal(a.requests_seen, 1);

    upload_s3_get_object(f->s3, "k", NULL, 2000, t_on_chunk, t_on_answer, &b);
    t_wait_answer(f, &b);
    assert_int_equal(b.status, SH_STATUS_NOT_FOUND);
    assert_string_equal(b.error_code, "NoSuchKey");
    assert_int_equal(b.chunks, 0); /* an error body is not object data */
    assert_int_equal(b.requests_seen, 2);

    upload_s3_head_object(f->s3, "k", 2000, t_on_answer, &c);
    t_wait_answer(f, &c);
    assert_int_equal(c.status, SH_STATUS_NOT_FOUND);
    assert_int_equal(c.requests_seen, 3);
    assert_int_equal(t_counter(f, "shoal_backend_retries_total"), 0);
}

static void test_upload_s3_deadline_ends_retries(void **state)
{
    t_fixture_t *f = *state;
    f->config.max_retries = 1000;
    f->config.backoff_base_ms = 10;
    f->config.backoff_cap_ms = 40;
    t_client(f);
    t_queue(&f->server, t_xml(503, NULL, T_SLOWDOWN)); /* every time */
    t_answer_t a = {.started_ms = sh_clock_mono_ms()};
    upload_s3_delete_object(f->s3, "k", 300, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_UNAVAILABLE);
    assert_string_equal(a.error_code, "SlowDown");
    assert_true(a.elapsed_ms <= 300 + 100);
    assert_true(f->server.req_count >= 2 && f->server.req_count < 1000);
    assert_int_equal(t_counter(f, "shoal_backend_retries_total"),
                     (uint64_t)f->server.req_count - 1);
}

static void test_upload_s3_deadline_on_silent_server(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server, (t_reply_t){T_HANG, 0, NULL, NULL, 0});
    t_answer_t a = {.started_ms = sh_clock_mono_ms()};
    upload_s3_head_object(f->s3, "k", 200, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_TIMEOUT);
    assert_true(a.elapsed_ms >= 150 && a.elapsed_ms <= 200 + 150);
    assert_int_equal(t_counter(f, "shoal_backend_timeouts_total"), 1);
}

static void test_upload_s3_connection_closed_is_retried(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server, (t_reply_t){T_CLOSE, 0, NULL, NULL, 0});
    t_queue(&f->server, t_xml(204, NULL, NULL));
    t_answer_t a = {0};
    upload_s3_delete_object(f->s3, "k", 2000, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_int_equal(f->server.req_count, 2);
}

/*  --- multipart ----------------------------------------------------------------------------  */

static void test_upload_s3_multipart_ids_and_etags(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server,
            t_xml(200, NULL,
                  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult "
                  "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>bucket</Bucket>"
                  "<Key>obj key</Key><UploadId>VXBs+/=.x</UploadId>"
                  "</InitiateMultipartUploadResult>"));
    t_queue(&f->server, t_xml(200, "ETag: \"abc123\"\r\n", NULL));
    /*  an error inside a 200 is retried like the same error with its status  */
    t_queue(&f->server,
            t_xml(200, NULL, "<Error><Code>InternalError</Code><Message>x</Message></Error>"));
    t_queue(&f->server, t_xml(200, NULL,
                              "<CompleteMultipartUploadResult><Location>l</Location>"
                              "<Key>obj key</Key><ETag>&quot;final-2&quot;</ETag>"
                              "</CompleteMultipartUploadResult>"));
    t_queue(&f->server, t_xml(204, NULL, NULL));

    t_answer_t create = {0}, part = {0}, done = {0}, abort_ = {0};
    upload_s3_create_multipart(f->s3, "obj key", "image/png", true, 2000, t_on_answer, &create);
    t_wait_answer(f, &create);
    assert_int_equal(create.status, SH_STATUS_OK);
    assert_string_equal(create.upload_id, "VXBs+/=.x");
    char line[512], value[512];
    const t_req_t *r = &f->server.reqs[0];
    assert_string_equal(t_line(r, line, sizeof line), "POST /bucket/obj%20key?uploads=");
    assert_string_equal(t_header(r, "Content-Type", value, sizeof value), "image/png");
    assert_string_equal(t_header(r, "x-amz-checksum-algorithm", value, sizeof value), "SHA256");
    assert_string_equal(t_header(r, "x-amz-content-sha256", value, sizeof value), T_EMPTY);

    static const char data[] = "part three bytes";
    uint8_t sha[32];
    char hex[65], b64[64];
    crypto_hash_sha256(sha, (const uint8_t *)data, strlen(data));
    sodium_bin2hex(hex, sizeof hex, sha, 32);
    sodium_bin2base64(b64, sizeof b64, sha, 32, sodium_base64_VARIANT_ORIGINAL);
    upload_s3_upload_part(f->s3, "obj key", create.upload_id, 3, data, strlen(data), sha, true,
                          2000, t_on_answer, &part);
    t_wait_answer(f, &part);
    assert_int_equal(part.status, SH_STATUS_OK);
    assert_string_equal(part.etag, "\"abc123\"");
    r = &f->server.reqs[1];
    assert_string_equal(t_line(r, line, sizeof line),
                        "PUT /bucket/obj%20key?partNumber=3&uploadId=VXBs%2B%2F%3D.x");
    assert_string_equal(t_header(r, "x-amz-content-sha256", value, sizeof value), hex);
    assert_string_equal(t_header(r, "x-amz-checksum-sha256", value, sizeof value), b64);
    assert_string_equal(r->body, data);

    upload_s3_part_t parts[] = {{3, part.etag, sha}};
    upload_s3_complete_multipart(f->s3, "obj key", create.upload_id, parts, 1, 2000, t_on_answer,
                                 &done);
    t_wait_answer(f, &done);
    assert_int_equal(done.status, SH_STATUS_OK);
    assert_string_equal(done.etag, "\"final-2\"");
    assert_int_equal(f->server.req_count, 4);
    r = &f->server.reqs[3];
    assert_string_equal(t_line(r, line, sizeof line),
                        "POST /bucket/obj%20key?uploadId=VXBs%2B%2F%3D.x");
    snprintf(value, sizeof value,
             "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Part>"
             "<PartNumber>3</PartNumber><ETag>&quot;abc123&quot;</ETag><ChecksumSHA256>%s"
             "</ChecksumSHA256></Part></CompleteMultipartUpload>",
             b64);
    assert_string_equal(r->body, value);

    upload_s3_abort_multipart(f->s3, "obj key", create.upload_id, 2000, t_on_answer, &abort_);
    t_wait_answer(f, &abort_);
    assert_int_equal(abort_.status, SH_STATUS_OK);
    assert_string_equal(t_line(&f->server.reqs[4], line, sizeof line),
                        "DELETE /bucket/obj%20key?uploadId=VXBs%2B%2F%3D.x");

    /*  refused before anything is sent  */
    t_answer_t bad = {0};
    upload_s3_part_t unordered[] = {{2, "\"a\"", NULL}, {1, "\"b\"", NULL}};
    upload_s3_complete_multipart(f->s3, "obj key", "id", unordered, 2, 2000, t_on_answer, &bad);
    assert_int_equal(bad.calls, 1);
    assert_int_equal(bad.status, SH_STATUS_INVALID);
    assert_int_equal(f->server.req_count, 5);
}

static void test_upload_s3_error_codes_parsed(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server,
            t_xml(400, NULL,
                  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>EntityTooSmall"
                  "</Code>\n  <Message>Your proposed upload is smaller than the minimum allowed "
                  "object size.</Message>\n  <RequestId>4442587FB7D0A2F9</RequestId>\n</Error>"));
    t_queue(&f->server, t_xml(404, NULL, "<Error><Code>NoSuchUpload</Code></Error>"));
    t_queue(&f->server, t_xml(200, NULL, "<not-closed>"));
    t_queue(&f->server, t_xml(200, NULL,
                              "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><InitiateMultipartUploadResult>"
                              "<UploadId>&a;</UploadId></InitiateMultipartUploadResult>"));
    t_answer_t a = {0}, b = {0}, c = {0}, d = {0};
    upload_s3_part_t parts[] = {{1, "\"e\"", NULL}};
    upload_s3_complete_multipart(f->s3, "k", "u", parts, 1, 2000, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_INVALID);
    assert_string_equal(a.error_code, "EntityTooSmall");
    upload_s3_abort_multipart(f->s3, "k", "u", 2000, t_on_answer, &b);
    t_wait_answer(f, &b);
    assert_int_equal(b.status, SH_STATUS_NOT_FOUND);
    assert_string_equal(b.error_code, "NoSuchUpload");
    upload_s3_create_multipart(f->s3, "k", NULL, false, 2000, t_on_answer, &c);
    t_wait_answer(f, &c);
    assert_int_equal(c.status, SH_STATUS_INTERNAL); /* not well-formed */
    upload_s3_create_multipart(f->s3, "k", NULL, false, 2000, t_on_answer, &d);
    t_wait_answer(f, &d);
    assert_int_equal(d.status, SH_STATUS_INTERNAL); /* a DOCTYPE is refused */
    assert_string_equal(d.upload_id, "");
}

/*  --- keys -------------------------------------------------------------------------------------
 */

static void test_upload_s3_odd_keys_encoded(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server, t_xml(204, NULL, NULL));
    static const char *const cases[][2] = {
        {"a b", "/bucket/a%20b"},
        {"../../etc/passwd", "/bucket/../../etc/passwd"},
        {"%2e%2e%2f", "/bucket/%252e%252e%252f"},
        {"dir//x/", "/bucket/dir//x/"},
        {"\xc3\xbc", "/bucket/%C3%BC"},
        {"q?x=1#f", "/bucket/q%3Fx%3D1%23f"},
        {"a+b~c_d-e.f", "/bucket/a%2Bb~c_d-e.f"},
        {"\r\nX: y", "/bucket/%0D%0AX%3A%20y"},
        {"\\;:@&=$,'()*!", "/bucket/%5C%3B%3A%40%26%3D%24%2C%27%28%29%2A%21"},
    };
    for (size_t i = 0; i < SH_ARRAY_SIZE(cases); i++) {
        t_answer_t a = {0};
        upload_s3_delete_object(f->s3, cases[i][0], 2000, t_on_answer, &a);
        t_wait_answer(f, &a);
        assert_int_equal(a.status, SH_STATUS_OK);
        char line[256], want[256];
        snprintf(want, sizeof want, "DELETE %s", cases[i][1]);
        assert_string_equal(t_line(&f->server.reqs[i], line, sizeof line), want);
    }
    /*  refused without a request: empty, too long, a header in the type  */
    char long_key[UPLOAD_S3_MAX_KEY + 2];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = 0;
    t_answer_t e = {0}, l = {0}, t = {0};
    upload_s3_head_object(f->s3, "", 2000, t_on_answer, &e);
    upload_s3_head_object(f->s3, long_key, 2000, t_on_answer, &l);
    upload_s3_put_object(f->s3, "k", "x", 1, NULL, "text/plain\r\nX-Evil: 1", 2000, t_on_answer,
                         &t);
    assert_int_equal(e.status, SH_STATUS_INVALID);
    assert_int_equal(l.status, SH_STATUS_INVALID);
    assert_true(t_run(f, t_answered, &t, T_WAIT_MS));
    assert_int_equal(t.status, SH_STATUS_INVALID);
    assert_int_equal(f->server.req_count, (int)SH_ARRAY_SIZE(cases));

    char out[16];
    assert_int_equal(upload_s3_encode_key("a b/c", out, sizeof out), 7);
    assert_string_equal(out, "a%20b/c");
    assert_int_equal(upload_s3_encode_key("\xff\xff\xff\xff\xff\xff", out, sizeof out), -1);
}

/*  --- streamed GET with back-pressure -------------------------------------------------------  */

static bool t_paused(t_fixture_t *f, void *arg)
{
    (void)f;
    return ((t_answer_t *)arg)->paused;
}

static void test_upload_s3_get_pause_and_resume(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    static char big[T_BIG];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + (i * 7) % 26);
    t_queue(&f->server, (t_reply_t){T_ANSWER, 200, "ETag: \"big\"\r\n", big, sizeof big});
    t_answer_t a = {.pause_on = 2};
    a.call = upload_s3_get_object(f->s3, "big", NULL, 4000, t_on_chunk, t_on_answer, &a);
    assert_non_null(a.call);
    assert_true(t_run(f, t_paused, &a, T_WAIT_MS));
    size_t before = a.body.len;
    int chunks = a.chunks;
    /*  paused: nothing more arrives while the loop keeps running  */
    t_run(f, NULL, NULL, 100);
    assert_int_equal(a.chunks, chunks);
    assert_int_equal(a.body.len, before);
    assert_int_equal(a.calls, 0);
    upload_s3_resume(f->s3, a.call);
    assert_int_equal(a.chunks, chunks); /* never from inside the resume call */
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_string_equal(a.etag, "\"big\"");
    assert_int_equal(a.content_length, T_BIG);
    assert_int_equal(a.body.len, T_BIG); /* the refused chunk came again */
    assert_memory_equal(a.body.data, big, T_BIG);
    sh_buf_free(&a.body);
}

/*  --- listings -------------------------------------------------------------------------------  */

static void test_upload_s3_lists_parsed(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server,
            t_xml(200, NULL,
                  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://"
                  "s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name><Prefix>up/</Prefix>"
                  "<KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>"
                  "<NextContinuationToken>tok/+=</NextContinuationToken>"
                  "<Contents><Key>up/a</Key><LastModified>2009-10-12T17:50:30.000Z"
                  "</LastModified><ETag>&quot;e1&quot;</ETag><Size>434234</Size>"
                  "<StorageClass>STANDARD</StorageClass></Contents>"
                  "<Contents><Key>up/b &amp; c</Key><LastModified>2009-10-12T17:50:31Z"
                  "</LastModified><ETag>&quot;e2&quot;</ETag><Size>0</Size></Contents>"
                  "</ListBucketResult>"));
    t_queue(&f->server,
            t_xml(200, NULL,
                  "<ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                  "<Bucket>bucket</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"
                  "<NextKeyMarker>my-movie.m2ts</NextKeyMarker><NextUploadIdMarker>YW55IGlkZWEgd2h5"
                  "</NextUploadIdMarker><MaxUploads>3</MaxUploads><IsTruncated>true</IsTruncated>"
                  "<Upload><Key>my-divisor</Key><UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5n"
                  "</UploadId><Initiator><ID>x</ID></Initiator><StorageClass>STANDARD"
                  "</StorageClass><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>"
                  "<Upload><Key>my-movie.m2ts</Key><UploadId>VXBsb2FkIElEIGZvciBlbHZpbmcn"
                  "</UploadId><Initiated>2010-11-10T20:48:33.123Z</Initiated></Upload>"
                  "</ListMultipartUploadsResult>"));
    t_answer_t a = {0}, b = {0};
    upload_s3_list_objects(f->s3, "up/", "prev/+=", 2, 2000, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_int_equal(a.count, 2);
    assert_string_equal(a.keys[0], "up/a");
    assert_string_equal(a.keys[1], "up/b & c");
    assert_int_equal(a.entries[0].size, 434234);
    assert_int_equal(a.entries[1].size, 0);
    assert_int_equal(a.entries[0].time_ms, 1255369830000LL);
    assert_int_equal(a.entries[1].time_ms, 1255369831000LL);
    assert_true(a.truncated);
    assert_string_equal(a.next_marker, "tok/+=");
    char line[512];
    assert_string_equal(t_line(&f->server.reqs[0], line, sizeof line),
                        "GET /bucket/?continuation-token=prev%2F%2B%3D&list-type=2&max-keys=2&"
                        "prefix=up%2F");

    upload_s3_list_multipart_uploads(f->s3, "my", "k m", NULL, 3, 2000, t_on_answer, &b);
    t_wait_answer(f, &b);
    assert_int_equal(b.status, SH_STATUS_OK);
    assert_int_equal(b.count, 2);
    assert_string_equal(b.keys[0], "my-divisor");
    assert_string_equal(b.ids[0], "XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5n");
    assert_string_equal(b.keys[1], "my-movie.m2ts");
    assert_int_equal(b.entries[0].time_ms, 1289422113000LL);
    assert_int_equal(b.entries[1].time_ms, 1289422113123LL);
    assert_true(b.truncated);
    assert_string_equal(b.next_marker, "my-movie.m2ts");
    assert_string_equal(b.next_upload_id_marker, "YW55IGlkZWEgd2h5");
    assert_string_equal(t_line(&f->server.reqs[1], line, sizeof line),
                        "GET /bucket/?key-marker=k%20m&max-uploads=3&prefix=my&uploads=");
}

static void test_upload_s3_head_object_fields(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server, (t_reply_t){T_ANSWER, 200,
                                    "ETag: \"h1\"\r\nContent-Type: image/png\r\n"
                                    "Content-Length: 12345\r\n",
                                    NULL, 0});
    t_answer_t a = {0};
    upload_s3_head_object(f->s3, "k", 2000, t_on_answer, &a);
    t_wait_answer(f, &a);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_string_equal(a.etag, "\"h1\"");
    assert_int_equal(a.content_length, 12345);
    char line[64];
    assert_string_equal(t_line(&f->server.reqs[0], line, sizeof line), "HEAD /bucket/k");
}

/*  --- destroy with calls pending ------------------------------------------------------------  */

static void test_upload_s3_destroy_answers_pending_once(void **state)
{
    t_fixture_t *f = *state;
    t_client(f);
    t_queue(&f->server, (t_reply_t){T_HANG, 0, NULL, NULL, 0});
    t_answer_t a = {0}, b = {0}, c = {0}, d = {0};
    upload_s3_head_object(f->s3, "a", 5000, t_on_answer, &a);
    upload_s3_put_object(f->s3, "b", "body", 4, NULL, NULL, 5000, t_on_answer, &b);
    upload_s3_get_object(f->s3, "c", NULL, 5000, t_on_chunk, t_on_answer, &c);
    int three = 3;
    assert_true(t_run(f, t_requests, &three, T_WAIT_MS));
    /*  and one waiting for its retry  */
    f->server.reply_count = 0; /* no replies queued: the server answers 500 */
    upload_s3_delete_object(f->s3, "d", 5000, t_on_answer, &d);
    int four = 4;
    assert_true(t_run(f, t_requests, &four, T_WAIT_MS));
    assert_int_equal(a.calls + b.calls + c.calls + d.calls, 0);
    upload_s3_destroy(&f->s3);
    assert_null(f->s3);
    t_answer_t *all[] = {&a, &b, &c, &d};
    for (size_t i = 0; i < SH_ARRAY_SIZE(all); i++) {
        assert_int_equal(all[i]->calls, 1);
        assert_int_equal(all[i]->status, SH_STATUS_UNAVAILABLE);
    }
    /*  the loop runs on without the client: nothing more is called  */
    t_run(f, NULL, NULL, 50);
    for (size_t i = 0; i < SH_ARRAY_SIZE(all); i++)
        assert_int_equal(all[i]->calls, 1);
}

/*  AWS's presigned URL example ("Authenticating Requests: Using Query
    Parameters"): test.txt in examplebucket, 24 hours from 20130524T000000Z.  */
static void test_upload_s3_presigned_url_example(void **state)
{
    t_fixture_t *f = *state;
    t_as_aws(f, NULL);
    t_client(f);
    char url[4096];
    const int64_t may_24_2013 = 1369353600;
    assert_int_equal(
        upload_s3_presign_get(f->s3, "test.txt", 86400, may_24_2013, NULL, NULL, url, sizeof url),
        0);
    assert_string_equal(url, "http://examplebucket.s3.amazonaws.com/test.txt"
                             "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                             "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2F"
                             "aws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400"
                             "&X-Amz-SignedHeaders=host&X-Amz-Signature="
                             "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    /*  response-* parameters are signed, after the X-Amz-* ones  */
    assert_int_equal(upload_s3_presign_get(f->s3, "test.txt", 60, may_24_2013,
                                           "attachment; filename=\"a b.txt\"", "text/plain", url,
                                           sizeof url),
                     0);
    assert_non_null(strstr(url, "&X-Amz-SignedHeaders=host&response-content-disposition="
                                "attachment%3B%20filename%3D%22a%20b.txt%22"
                                "&response-content-type=text%2Fplain&X-Amz-Signature="));
    /*  bad keys, expiries out of range, no room  */
    assert_int_equal(upload_s3_presign_get(f->s3, "", 60, may_24_2013, NULL, NULL, url, sizeof url),
                     -1);
    assert_int_equal(
        upload_s3_presign_get(f->s3, "test.txt", 0, may_24_2013, NULL, NULL, url, sizeof url), -1);
    assert_int_equal(upload_s3_presign_get(f->s3, "test.txt", UPLOAD_S3_PRESIGN_MAX_S + 1,
                                           may_24_2013, NULL, NULL, url, sizeof url),
                     -1);
    assert_int_equal(upload_s3_presign_get(f->s3, "test.txt", 60, may_24_2013, NULL, NULL, url, 40),
                     -1);
}

int main(void)
{
    sh_crypto_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upload_s3_sigv4_get_object_example, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_sigv4_put_object_example, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_sigv4_encoded_key, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_put_object_given_sha256_is_signed, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_retries_slowdown_then_succeeds, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_no_retry_on_403_or_404, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_deadline_ends_retries, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_deadline_on_silent_server, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_connection_closed_is_retried, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_multipart_ids_and_etags, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_error_codes_parsed, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_odd_keys_encoded, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_get_pause_and_resume, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_lists_parsed, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_head_object_fields, t_setup, t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_destroy_answers_pending_once, t_setup,
                                        t_teardown),
        cmocka_unit_test_setup_teardown(test_upload_s3_presigned_url_example, t_setup, t_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
