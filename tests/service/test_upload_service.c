/*  test_upload_service.c - the real shoal-upload process against the S3
    test server (deploy/local/s3/s3-server), driven through the production
    caller pool: uploads of 0 B, 1 B, part-1 and part+1 bytes (part size
    5 MiB) read back byte for byte with their SHA-256; held chunk replies
    while a part is in flight (the memory bound); sniffing; bad requests;
    busy; idle streams; draining; ranged reads; deletes; and the sweeper,
    as `shoal-upload sweep` and inside the service, with a stand-in for the
    query service (a ROUTER in this file answering attachment_keys).

    The test's own S3 client (upload_s3, on the test's loop) looks behind
    the service: multipart uploads in progress, objects, and old leftovers
    it creates itself.
*/
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>
#include <zmq.h>

#include "harness.h"
#include "sh_loop.h"
#include "sh_transport.h"
#include "sh_util.h"
#include "upload_s3.h"

#define T_PART       (5 * 1024 * 1024) /* SHOAL_UPLOAD_PART_BYTES: S3's smallest */
#define T_CHUNK      262144
#define T_WINDOW     4
#define T_MAX_BYTES  (64 * 1024 * 1024)
#define T_STREAMS    4
#define T_CALL_MS    30000 /* deadline of one call */
#define T_WAIT_MS    20000 /* the longest wait for an answer */
#define T_QUIET_MS   500   /* a reply that must not come does not come within this */
#define T_ENV_MAX    8
#define T_ROWS_MAX   8
#define T_PREFIX_MAX 48
#define T_SHA_HEX    (2 * crypto_hash_sha256_BYTES + 1)

/*  An S3 test server: one for the whole program, and one of its own for
    a test that kills it.  */
typedef struct {
    char dir[256];
    char log[300];
    int port;
    pid_t pid;
    char endpoint[64];
} t_s3_server_t;
static t_s3_server_t g_s3;

typedef struct {
    char dir[256];
    char log[300];
    char prefix[T_PREFIX_MAX];
    char endpoint[64];
    pid_t service;
    t_s3_server_t own_s3;           /* when the test has one */
    t_s3_server_t *server;          /* the S3 server in use: g_s3 or own_s3 */
    const char *env[T_ENV_MAX + 1]; /* extra settings, NULL-ended */
    sh_loop_t *loop;
    upload_s3_t *s3;
    sh_pool_t *pool;
    /*  the stand-in query service  */
    void *fake;
    char fake_endpoint[64];
    uint64_t fake_status; /* what attachment_keys answers */
    char rows[T_ROWS_MAX][SH_OBJKEY_MAX + 1];
    int row_count;
    int asked;               /* attachment_keys calls answered */
    char pin[SH_ID_MAX + 1]; /* "" or the instance every request goes to */
} t_fixture_t;

/*  One reply captured beyond its callback.  */
typedef struct {
    bool done;
    uint64_t status;
    char error[SH_ERROR_MAX + 1];
    const sh_codec_t *codec;
    _Alignas(max_align_t) char body[1024]; /* the reply struct; strings point into enc */
    char enc[4096];
    char instance[SH_ID_MAX + 1]; /* that answered */
    uint8_t *raw;                 /* the reply's raw frame (malloc), or NULL */
    size_t raw_len;
    char *text; /* metrics replies: the exposition (malloc) */
} t_answer_t;

/*  --- the loop -----------------------------------------------------------  */

/*  cond(f, arg) for sh_loop_run_until.  */
typedef struct {
    t_fixture_t *f;
    bool (*cond)(t_fixture_t *f, void *arg);
    void *arg;
} t_cond_t;

static bool s_cond(void *arg)
{
    t_cond_t *c = arg;
    return c->cond(c->f, c->arg);
}

/*  Run the test's loop (pool, S3 client, stand-in query service) until
    cond holds or timeout_ms passes.  */
static bool s_run_until(t_fixture_t *f, bool (*cond)(t_fixture_t *f, void *arg), void *arg,
                        int64_t timeout_ms)
{
    t_cond_t c = {f, cond, arg};
    return sh_loop_run_until(f->loop, s_cond, &c, timeout_ms);
}

static bool s_done(t_fixture_t *f, void *arg)
{
    (void)f;
    return ((t_answer_t *)arg)->done;
}

static bool s_never(t_fixture_t *f, void *arg)
{
    (void)f;
    (void)arg;
    return false;
}

/*  Let the loop run for ms (a reply that must not come has its chance).  */
static void s_run_for(t_fixture_t *f, int64_t ms)
{
    s_run_until(f, s_never, NULL, ms);
}

/*  Poll cond, which may run the loop itself (calls, S3 listings), until
    it holds or timeout_ms passes.  */
static bool s_wait_for(t_fixture_t *f, bool (*cond)(t_fixture_t *f, void *arg), void *arg,
                       int64_t timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    while (!cond(f, arg)) {
        if (sh_clock_mono_ms() >= end)
            return false;
        s_run_for(f, 10);
    }
    return true;
}

static int s_on_pool(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_pool_drain(arg);
    return 0;
}

static int s_on_pool_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_pool_tick(arg);
    sh_pool_drain(arg);
    return 0;
}

/*  --- calls through the pool ----------------------------------------------  */

static void s_reply_free(t_answer_t *r)
{
    free(r->raw);
    free(r->text);
    r->raw = NULL;
    r->text = NULL;
}

static void s_on_reply(void *arg, const sh_reply_t *reply)
{
    t_answer_t *out = arg;
    out->done = true;
    out->status = reply->status;
    snprintf(out->error, sizeof out->error, "%s", reply->error);
    if (reply->env)
        sh_str_copy(reply->env->instance, out->instance, sizeof out->instance);
    if (!reply->body)
        return;
    if (out->codec == &sh_metrics_rep_codec) {
        const sh_metrics_rep_t *m = reply->body;
        out->text = malloc(m->text.len + 1);
        memcpy(out->text, m->text.ptr, m->text.len);
        out->text[m->text.len] = 0;
        return;
    }
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    if (out->codec->size <= sizeof out->body &&
        sh_codec_encode(out->codec, reply->body, &buf) == 0 && buf.size <= sizeof out->enc) {
        memcpy(out->enc, buf.data, buf.size);
        sh_codec_decode(out->codec, out->body, out->enc, buf.size);
    }
    msgpack_sbuffer_destroy(&buf);
    if (reply->raw) {
        out->raw = malloc(reply->raw_len ? reply->raw_len : 1);
        memcpy(out->raw, reply->raw, reply->raw_len);
        out->raw_len = reply->raw_len;
    }
}

/*  Send a request (with one raw frame when raw is not NULL); out hears
    the reply while the loop runs.  */
static void s_send(t_fixture_t *f, uint64_t type, const void *body, const void *raw, size_t len,
                   t_answer_t *out)
{
    s_reply_free(out);
    memset(out, 0, sizeof *out);
    out->codec = sh_op_find(type)->reply;
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + T_CALL_MS,
                           .raw = raw,
                           .raw_len = len,
                           .instance = f->pin[0] ? f->pin : NULL};
    sh_pool_send(f->pool, type, body, &opts, s_on_reply, out);
}

/*  Send and wait for the answer; returns its status.  */
static uint64_t s_call(t_fixture_t *f, uint64_t type, const void *body, const void *raw, size_t len,
                       t_answer_t *out)
{
    s_send(f, type, body, raw, len, out);
    assert_true(s_run_until(f, s_done, out, T_WAIT_MS));
    return out->status;
}

static uint64_t s_begin(t_fixture_t *f, uint64_t size, const char *declared, t_answer_t *r)
{
    sh_upload_begin_req_t req = {.size = size, .declared_type = sh_str(declared)};
    return s_call(f, SH_OP_upload_begin, &req, NULL, 0, r);
}

static void s_send_chunk(t_fixture_t *f, const char *stream, uint64_t offset, const void *data,
                         size_t len, t_answer_t *r)
{
    sh_upload_chunk_req_t req = {.stream = sh_str(stream), .offset = offset};
    s_send(f, SH_OP_upload_chunk, &req, data, len, r);
}

static uint64_t s_chunk(t_fixture_t *f, const char *stream, uint64_t offset, const void *data,
                        size_t len, t_answer_t *r)
{
    s_send_chunk(f, stream, offset, data, len, r);
    assert_true(s_run_until(f, s_done, r, T_WAIT_MS));
    return r->status;
}

static uint64_t s_stream_op(t_fixture_t *f, uint64_t type, const char *stream, t_answer_t *r)
{
    sh_upload_finish_req_t req = {.stream = sh_str(stream)};
    return s_call(f, type, &req, NULL, 0, r);
}

static uint64_t s_read(t_fixture_t *f, const char *key, uint64_t offset, uint64_t length,
                       t_answer_t *r)
{
    sh_upload_read_req_t req = {.key = sh_str(key), .offset = offset, .length = length};
    return s_call(f, SH_OP_upload_read, &req, NULL, 0, r);
}

/*  A counter or gauge of the service's metrics whose line starts with
    name{ and contains label (may be ""); -1 when absent.  */
static int64_t s_metric(t_fixture_t *f, const char *name, const char *label)
{
    t_answer_t r = {0};
    sh_metrics_req_t req = {0};
    if (s_call(f, SH_OP_metrics, &req, NULL, 0, &r) != SH_STATUS_OK || !r.text) {
        s_reply_free(&r);
        return -1;
    }
    int64_t value = -1;
    size_t nlen = strlen(name);
    for (char *line = r.text; line && *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = 0;
        if (strncmp(line, name, nlen) == 0 && line[nlen] == '{' && strstr(line, label)) {
            const char *sp = strrchr(line, ' ');
            if (sp)
                value = strtoll(sp + 1, NULL, 10);
        }
        line = end ? end + 1 : NULL;
    }
    s_reply_free(&r);
    return value;
}

/*  --- the test's view of S3 -------------------------------------------------  */

typedef struct {
    bool done;
    uint64_t status;
    char upload_id[256];
    size_t count;
    char keys[16][SH_OBJKEY_MAX + 1];
} t_s3_reply_t;

static void s_on_s3(void *arg, uint64_t status, const upload_s3_result_t *r)
{
    t_s3_reply_t *out = arg;
    out->done = true;
    out->status = status;
    snprintf(out->upload_id, sizeof out->upload_id, "%s", r->upload_id);
    out->count = r->count;
    for (size_t i = 0; i < r->count && i < 16; i++)
        snprintf(out->keys[i], sizeof out->keys[i], "%s", r->entries[i].key);
}

static bool s_s3_done(t_fixture_t *f, void *arg)
{
    (void)f;
    return ((t_s3_reply_t *)arg)->done;
}

/*  Multipart uploads in progress under prefix (a key is a prefix too).  */
static size_t s_s3_uploads(t_fixture_t *f, const char *prefix)
{
    t_s3_reply_t r = {0};
    upload_s3_list_multipart_uploads(f->s3, prefix, NULL, NULL, 0, 5000, s_on_s3, &r);
    assert_true(s_run_until(f, s_s3_done, &r, T_WAIT_MS));
    assert_int_equal(r.status, SH_STATUS_OK);
    return r.count;
}

static uint64_t s_s3_head(t_fixture_t *f, const char *key)
{
    t_s3_reply_t r = {0};
    upload_s3_head_object(f->s3, key, 5000, s_on_s3, &r);
    assert_true(s_run_until(f, s_s3_done, &r, T_WAIT_MS));
    return r.status;
}

/*  A multipart upload nobody will finish, made behind the service.  */
static void s_s3_leftover(t_fixture_t *f, const char *key)
{
    t_s3_reply_t r = {0};
    upload_s3_create_multipart(f->s3, key, NULL, true, 5000, s_on_s3, &r);
    assert_true(s_run_until(f, s_s3_done, &r, T_WAIT_MS));
    assert_int_equal(r.status, SH_STATUS_OK);
}

static bool s_no_uploads(t_fixture_t *f, void *arg)
{
    return s_s3_uploads(f, arg) == 0;
}

/*  --- the stand-in query service ---------------------------------------------  */

static void s_fake_answer(t_fixture_t *f, sh_frames_t *frames)
{
    sh_envelope_t env;
    zmq_msg_t *e = &frames->frames[1], *b = &frames->frames[2];
    if (frames->count < 3 ||
        sh_codec_decode(&sh_envelope_codec, &env, zmq_msg_data(e), zmq_msg_size(e)) != 0)
        return;
    sh_envelope_t rep_env = {.version = SH_PROTO_VERSION,
                             .kind = SH_KIND_REPLY,
                             .type = env.type,
                             .request_id = env.request_id,
                             .instance = sh_str("query-stand-in")};
    if (env.type == SH_OP_ping) {
        sh_ping_rep_t rep = {sh_str("query"), sh_str("query-stand-in"), 1, 0};
        sh_transport_send(f->fake, &frames->frames[0], &rep_env, &sh_ping_rep_codec, &rep, NULL,
                          NULL, 0);
        return;
    }
    static sh_attachment_keys_req_t req;
    static sh_attachment_keys_rep_t rep;
    memset(&rep, 0, sizeof rep);
    if (env.type != SH_OP_attachment_keys ||
        sh_codec_decode(&sh_attachment_keys_req_codec, &req, zmq_msg_data(b), zmq_msg_size(b))) {
        rep_env.status = SH_STATUS_UNSUPPORTED;
    } else if (f->fake_status != SH_STATUS_OK) {
        rep_env.status = f->fake_status;
        rep_env.error = sh_str("the stand-in says no");
    } else {
        for (uint32_t i = 0; i < req.keys.count; i++)
            for (int k = 0; k < f->row_count; k++)
                if (sh_str_eq(req.keys.items[i].key, f->rows[k]))
                    rep.keys.items[rep.keys.count++].key = req.keys.items[i].key;
    }
    if (env.type == SH_OP_attachment_keys)
        f->asked++;
    sh_transport_send(f->fake, &frames->frames[0], &rep_env,
                      rep_env.status ? &sh_ping_req_codec : &sh_attachment_keys_rep_codec,
                      rep_env.status ? (const void *)&(sh_ping_req_t){0} : (const void *)&rep, NULL,
                      NULL, 0);
}

static int s_on_fake(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    t_fixture_t *f = arg;
    sh_frames_t frames;
    while (sh_frames_recv(f->fake, &frames) == 0) {
        s_fake_answer(f, &frames);
        sh_frames_close(&frames);
    }
    return 0;
}

/*  --- processes --------------------------------------------------------------  */

/*  Start a program with arguments (NULL-ended) and extra environment,
    its output appended to log. Returns the pid.  */
static pid_t s_spawn(const char *const argv[], const char *const env[], const char *log)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    for (int i = 0; env && env[i]; i++)
        putenv((char *)env[i]);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    execvp(argv[0], (char *const *)argv);
    _exit(127);
}

/*  --- S3 test servers --------------------------------------------------------  */

/*  Start s3-server for s (a new directory and port, or again on its
    own); returns 0 once it answers.  */
static int s_s3_start(t_s3_server_t *s)
{
    if (!s->dir[0]) {
        if (t_dir_new(s->dir, sizeof s->dir, "upload-s3"))
            return -1;
        snprintf(s->log, sizeof s->log, "%s/s3.log", s->dir);
        s->port = t_free_port();
        snprintf(s->endpoint, sizeof s->endpoint, "http://127.0.0.1:%d", s->port);
    }
    char data[300], ready[300], port[16], script[512];
    snprintf(data, sizeof data, "%s/data", s->dir);
    snprintf(ready, sizeof ready, "%s/ready", s->dir);
    unlink(ready);
    snprintf(port, sizeof port, "%d", s->port);
    const char *src = getenv("SHOAL_SOURCE_DIR");
    snprintf(script, sizeof script, "%s/deploy/local/s3/s3-server", src && *src ? src : ".");
    const char *node = getenv("SHOAL_NODE");
    char node_path[256];
    snprintf(node_path, sizeof node_path, "%s", node && *node ? node : "node");
    const char *argv[] = {node_path,
                          "--openssl-legacy-provider",
                          script,
                          "--dir",
                          data,
                          "--port",
                          port,
                          "--bucket",
                          "shoal-uploads",
                          "--ready-file",
                          ready,
                          "--quiet",
                          NULL};
    s->pid = s_spawn(argv, NULL, s->log);
    int64_t end = sh_clock_mono_ms() + 20000;
    struct stat st;
    while (sh_clock_mono_ms() < end) {
        if (stat(ready, &st) == 0)
            return 0;
        if (waitpid(s->pid, NULL, WNOHANG) == s->pid)
            break;
        zmq_poll(NULL, 0, 20); /* wait on nothing: pace the polling */
    }
    t_tail(s->log);
    return -1;
}

static void s_s3_stop(t_s3_server_t *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGCONT);
        kill(s->pid, SIGTERM);
        if (t_wait_exit(s->pid, 5000) == -1)
            t_kill(s->pid);
        s->pid = 0;
    }
    t_dir_remove(s->dir);
}

/*  The environment of shoal-upload in this fixture (static storage).  */
static const char *const *s_service_env(t_fixture_t *f, const char *bind)
{
    static char vars[16 + T_ENV_MAX][160];
    static const char *env[16 + T_ENV_MAX + 1];
    int n = 0;
    snprintf(vars[n++], sizeof vars[0], "SHOAL_S3_ENDPOINT=%s", f->server->endpoint);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_UPLOAD_PREFIX=%s", f->prefix);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_UPLOAD_PART_BYTES=%d", T_PART);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_UPLOAD_CHUNK_BYTES=%d", T_CHUNK);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_UPLOAD_WINDOW=%d", T_WINDOW);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_UPLOAD_MAX_BYTES=%d", T_MAX_BYTES);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_UPLOAD_MAX_STREAMS=%d", T_STREAMS);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_S3_TIMEOUT_MS=20000");
    snprintf(vars[n++], sizeof vars[0], "SHOAL_QUERY_ENDPOINTS=%s", f->fake_endpoint);
    snprintf(vars[n++], sizeof vars[0], "SHOAL_INSTANCE=upload-test");
    snprintf(vars[n++], sizeof vars[0], "SHOAL_DRAIN_TIMEOUT_MS=5000");
    /*  later settings win: the test's own come last  */
    snprintf(vars[n++], sizeof vars[0], "SHOAL_UPLOAD_SWEEP_INTERVAL_MS=0");
    if (bind)
        snprintf(vars[n++], sizeof vars[0], "SHOAL_BIND=%s", bind);
    for (int i = 0; i < T_ENV_MAX && f->env[i]; i++)
        snprintf(vars[n++], sizeof vars[0], "%s", f->env[i]);
    for (int i = 0; i < n; i++)
        env[i] = vars[i];
    env[n] = NULL;
    return env;
}

static int s_setup_with(void **state, const char *const *env, bool own_s3)
{
    t_fixture_t *f = t_alloc(sizeof *f);
    *state = f;
    f->server = &g_s3;
    if (own_s3) {
        f->server = &f->own_s3;
        if (s_s3_start(f->server))
            return -1;
    }
    for (int i = 0; env && env[i] && i < T_ENV_MAX; i++)
        f->env[i] = env[i];
    if (t_dir_new(f->dir, sizeof f->dir, "upload-test"))
        return -1;
    snprintf(f->log, sizeof f->log, "%s/upload.log", f->dir);
    /*  a prefix of its own: tests never see each other's objects  */
    char hex[9];
    sh_random_hex(hex, 4);
    snprintf(f->prefix, sizeof f->prefix, "test-%s/", hex);

    f->loop = sh_loop_new();
    upload_s3_config_t s3 = {.endpoint = f->server->endpoint,
                             .region = "us-east-1",
                             .bucket = "shoal-uploads",
                             .path_style = true,
                             .access_key = "S3RVER",
                             .secret_key = "S3RVER",
                             .timeout_ms = 10000,
                             .connect_timeout_ms = 1000,
                             .max_retries = 2,
                             .backoff_base_ms = 50,
                             .backoff_cap_ms = 200,
                             .label = "test"};
    f->s3 = upload_s3_new(f->loop, &s3, NULL);
    t_endpoint(f->fake_endpoint, sizeof f->fake_endpoint);
    f->fake = sh_transport_router(f->fake_endpoint, NULL, 0);
    if (!f->loop || !f->s3 || !f->fake)
        return -1;
    sh_loop_add_socket(f->loop, f->fake, ZMQ_POLLIN, s_on_fake, f);

    t_endpoint(f->endpoint, sizeof f->endpoint);
    char program[512];
    snprintf(program, sizeof program, "%s/shoal-upload", t_bin_dir());
    const char *argv[] = {program, NULL};
    f->service = s_spawn(argv, s_service_env(f, f->endpoint), f->log);
    f->pool = sh_pool_new("upload", NULL);
    sh_pool_add(f->pool, f->endpoint);
    void *sockets[SH_POOL_SOCKETS];
    int n = sh_pool_sockets(f->pool, sockets, SH_POOL_SOCKETS);
    for (int i = 0; i < n; i++)
        sh_loop_add_socket(f->loop, sockets[i], ZMQ_POLLIN, s_on_pool, f->pool);
    sh_loop_timer(f->loop, 10, true, s_on_pool_tick, f->pool);
    int64_t end = sh_clock_mono_ms() + 10000;
    while (sh_clock_mono_ms() < end) {
        t_answer_t r = {0};
        sh_ping_req_t ping = {0};
        s_send(f, SH_OP_ping, &ping, NULL, 0, &r);
        if (s_run_until(f, s_done, &r, 1000) && r.status == SH_STATUS_OK)
            return 0;
        s_run_for(f, 20);
    }
    t_tail(f->log);
    return -1;
}

static int s_setup(void **state)
{
    return s_setup_with(state, NULL, false);
}

/*  Streams abandoned after 300 ms of silence.  */
static int s_setup_short_idle(void **state)
{
    const char *env[] = {"SHOAL_UPLOAD_IDLE_MS=300", NULL};
    return s_setup_with(state, env, false);
}

/*  A sweeper pass about every second that takes what is older than 1 s.  */
static int s_setup_sweeping(void **state)
{
    const char *env[] = {"SHOAL_UPLOAD_SWEEP_INTERVAL_MS=1000", "SHOAL_UPLOAD_SWEEP_AGE_MS=1000",
                         NULL};
    return s_setup_with(state, env, false);
}

static int s_teardown(void **state)
{
    t_fixture_t *f = *state;
    if (!f)
        return 0;
    /*  a test that stopped S3 and failed must not leave it stopped  */
    kill(g_s3.pid, SIGCONT);
    s_s3_stop(&f->own_s3);
    /*  the S3 client and the pool before their loop  */
    upload_s3_destroy(&f->s3);
    sh_pool_destroy(&f->pool);
    sh_loop_destroy(&f->loop);
    sh_transport_close(&f->fake);
    int rc = 0;
    if (f->service > 0) {
        /*  a clean drain exits 0; leaks and sanitizer reports do not  */
        kill(f->service, SIGTERM);
        int status = t_wait_exit(f->service, 10000);
        if (status == -1)
            t_kill(f->service);
        if (status != 0) {
            fprintf(stderr, "shoal-upload exited with %d\n", status);
            t_tail(f->log);
            rc = -1;
        }
    }
    t_dir_remove(f->dir);
    free(f);
    return rc;
}

/*  --- uploads ------------------------------------------------------------------  */

typedef struct {
    char stream[SH_ID_MAX + 1];
    char key[SH_OBJKEY_MAX + 1];
    uint64_t size;
    char sha256[T_SHA_HEX];
    char content_type[SH_MIME_MAX + 1];
} t_upload_t;

static void s_hex_sha256(const uint8_t *data, size_t len, char out[T_SHA_HEX])
{
    uint8_t digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, data, len);
    sodium_bin2hex(out, T_SHA_HEX, digest, sizeof digest);
}

static void s_begun(const t_answer_t *r, t_upload_t *up)
{
    const sh_upload_begin_rep_t *rep = (const void *)r->body;
    sh_str_copy(rep->stream, up->stream, sizeof up->stream);
    sh_str_copy(rep->key, up->key, sizeof up->key);
}

/*  Send bytes [from, to) of data as chunks, `window` in flight, each
    answered OK with the bytes taken so far.  */
static void s_send_range(t_fixture_t *f, const t_upload_t *up, const uint8_t *data, size_t from,
                         size_t to)
{
    t_answer_t replies[T_WINDOW] = {0};
    uint64_t ends[T_WINDOW] = {0};
    size_t sent = from, answered = 0, total = (to - from + T_CHUNK - 1) / T_CHUNK, issued = 0;
    while (answered < total) {
        while (issued < total && issued - answered < T_WINDOW) {
            size_t len = to - sent < T_CHUNK ? to - sent : T_CHUNK;
            t_answer_t *r = &replies[issued % T_WINDOW];
            s_send_chunk(f, up->stream, sent, data + sent, len, r);
            ends[issued % T_WINDOW] = sent + len;
            sent += len;
            issued++;
        }
        t_answer_t *oldest = &replies[answered % T_WINDOW];
        assert_true(s_run_until(f, s_done, oldest, T_WAIT_MS));
        if (oldest->status != SH_STATUS_OK)
            fprintf(stderr, "chunk: %s\n", oldest->error);
        assert_int_equal(oldest->status, SH_STATUS_OK);
        assert_int_equal(((sh_upload_chunk_rep_t *)oldest->body)->received,
                         ends[answered % T_WINDOW]);
        answered++;
    }
    for (int i = 0; i < T_WINDOW; i++)
        s_reply_free(&replies[i]);
}

static uint64_t s_finish(t_fixture_t *f, t_upload_t *up)
{
    t_answer_t r = {0};
    uint64_t status = s_stream_op(f, SH_OP_upload_finish, up->stream, &r);
    if (status == SH_STATUS_OK) {
        const sh_upload_finish_rep_t *rep = (const void *)r.body;
        char key[SH_OBJKEY_MAX + 1];
        assert_string_equal(sh_str_copy(rep->key, key, sizeof key), up->key);
        up->size = rep->size;
        sh_str_copy(rep->sha256, up->sha256, sizeof up->sha256);
        sh_str_copy(rep->content_type, up->content_type, sizeof up->content_type);
    } else
        fprintf(stderr, "finish: %s\n", r.error);
    return status;
}

/*  A whole upload; the finish reply's facts land in up.  */
static void s_upload(t_fixture_t *f, const uint8_t *data, size_t len, const char *declared,
                     t_upload_t *up)
{
    t_answer_t r = {0};
    memset(up, 0, sizeof *up);
    assert_int_equal(s_begin(f, len, declared, &r), SH_STATUS_OK);
    s_begun(&r, up);
    const sh_upload_begin_rep_t *rep = (const void *)r.body;
    assert_int_equal(rep->chunk_max, T_CHUNK);
    assert_int_equal(rep->window, T_WINDOW);
    s_send_range(f, up, data, 0, len);
    assert_int_equal(s_finish(f, up), SH_STATUS_OK);
}

/*  Read the object back in reads of 1 MiB and compare.  */
static void s_assert_object(t_fixture_t *f, const char *key, const uint8_t *data, size_t len)
{
    t_answer_t r = {0};
    size_t at = 0;
    do {
        assert_int_equal(s_read(f, key, at, SH_CHUNK_MAX, &r), SH_STATUS_OK);
        const sh_upload_read_rep_t *rep = (const void *)r.body;
        assert_int_equal(rep->size, len);
        size_t want = len - at < SH_CHUNK_MAX ? len - at : SH_CHUNK_MAX;
        assert_int_equal(rep->length, want);
        assert_int_equal(r.raw_len, want);
        assert_memory_equal(r.raw, data + at, want);
        at += want;
    } while (at < len);
    s_reply_free(&r);
}

static uint8_t *s_random_bytes(size_t len)
{
    uint8_t *data = malloc(len ? len : 1);
    randombytes_buf(data, len);
    if (len)
        data[0] = 0; /* never text */
    return data;
}

/*  --- tests ------------------------------------------------------------------------  */

/*  0 B, 1 B, part-1 (one PutObject) and part+1 (two parts): stored,
    hashed and read back byte for byte; no multipart upload is left.  */
static void test_upload_service_sizes_round_trip(void **state)
{
    t_fixture_t *f = *state;
    size_t sizes[] = {0, 1, T_PART - 1, T_PART + 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t len = sizes[i];
        uint8_t *data = s_random_bytes(len);
        if (len == 1)
            data[0] = 'x';
        t_upload_t up;
        s_upload(f, data, len, "", &up);
        char sha[T_SHA_HEX];
        s_hex_sha256(data, len, sha);
        assert_int_equal(up.size, len);
        assert_string_equal(up.sha256, sha);
        assert_string_equal(up.content_type, len == 1 ? "text/plain" : "application/octet-stream");
        assert_int_equal(strncmp(up.key, f->prefix, strlen(f->prefix)), 0);
        assert_int_equal(strlen(up.key), strlen(f->prefix) + 32);
        if (len > 0)
            s_assert_object(f, up.key, data, len);
        else {
            t_answer_t r = {0};
            assert_int_equal(s_read(f, up.key, 0, 10, &r), SH_STATUS_OK);
            assert_int_equal(((sh_upload_read_rep_t *)r.body)->size, 0);
            assert_int_equal(((sh_upload_read_rep_t *)r.body)->length, 0);
            s_reply_free(&r);
        }
        free(data);
    }
    assert_int_equal(s_s3_uploads(f, f->prefix), 0);
    assert_int_equal(s_metric(f, "shoal_uploads_total", "result=\"ok\""), 4);
    assert_int_equal(s_metric(f, "shoal_upload_bytes_total", ""), 2 * T_PART + 1);
    assert_int_equal(s_metric(f, "shoal_upload_streams", ""), 0);
    assert_int_equal(s_metric(f, "shoal_upload_buffer_bytes", ""), 0);
}

/*  With a part in flight and the next buffer full, a chunk's reply is
    held until the part is stored: the caller's credit stops, and the
    stream's memory stays at two parts and a window of chunks.  */
static void test_upload_service_full_buffer_holds_the_reply(void **state)
{
    t_fixture_t *f = *state;
    size_t len = 3 * T_PART;
    uint8_t *data = s_random_bytes(len);
    t_upload_t up;
    t_answer_t r = {0};
    assert_int_equal(s_begin(f, len, "application/octet-stream", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    /*  S3 stops answering: the first part cannot land  */
    assert_int_equal(kill(g_s3.pid, SIGSTOP), 0);
    s_send_range(f, &up, data, 0, 2 * T_PART);
    t_answer_t held[T_WINDOW] = {0};
    for (int i = 0; i < T_WINDOW; i++)
        s_send_chunk(f, up.stream, 2 * T_PART + (size_t)i * T_CHUNK,
                     data + 2 * T_PART + (size_t)i * T_CHUNK, T_CHUNK, &held[i]);
    s_run_for(f, T_QUIET_MS);
    for (int i = 0; i < T_WINDOW; i++)
        assert_false(held[i].done);
    int64_t buffered = s_metric(f, "shoal_upload_buffer_bytes", "");
    assert_true(buffered >= 2 * T_PART);
    assert_true(buffered <= 2 * T_PART + T_WINDOW * T_CHUNK);
    /*  S3 answers again: the part lands, the held replies come  */
    assert_int_equal(kill(g_s3.pid, SIGCONT), 0);
    for (int i = 0; i < T_WINDOW; i++) {
        assert_true(s_run_until(f, s_done, &held[i], T_WAIT_MS));
        assert_int_equal(held[i].status, SH_STATUS_OK);
        assert_int_equal(((sh_upload_chunk_rep_t *)held[i].body)->received,
                         2 * T_PART + (size_t)(i + 1) * T_CHUNK);
    }
    s_send_range(f, &up, data, 2 * T_PART + T_WINDOW * T_CHUNK, len);
    assert_int_equal(s_finish(f, &up), SH_STATUS_OK);
    char sha[T_SHA_HEX];
    s_hex_sha256(data, len, sha);
    assert_string_equal(up.sha256, sha);
    s_assert_object(f, up.key, data, len);
    assert_int_equal(s_s3_uploads(f, f->prefix), 0);
    free(data);
}

/*  Parts that S3 does not take within the S3 timeout, on an S3 server of
    the test's own.  */
static int s_setup_short_s3_timeout(void **state)
{
    const char *env[] = {"SHOAL_S3_TIMEOUT_MS=1500", NULL};
    return s_setup_with(state, env, true);
}

static bool s_swept_leftover(t_fixture_t *f, void *arg);

/*  A part S3 does not take fails the stream with S3's status: the held
    chunk replies get it, the next request hears it once. S3 is gone, so
    the abort may fail too; once S3 is back, nothing of the upload is left.  */
static void test_upload_service_storage_failure_fails_the_stream(void **state)
{
    t_fixture_t *f = *state;
    size_t len = 2 * T_PART + T_WINDOW * T_CHUNK;
    uint8_t *data = s_random_bytes(len);
    t_upload_t up;
    t_answer_t r = {0};
    assert_int_equal(s_begin(f, len, "", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    assert_int_equal(kill(f->server->pid, SIGSTOP), 0);
    s_send_range(f, &up, data, 0, 2 * T_PART);
    t_answer_t held[T_WINDOW] = {0};
    for (int i = 0; i < T_WINDOW; i++)
        s_send_chunk(f, up.stream, 2 * T_PART + (size_t)i * T_CHUNK,
                     data + 2 * T_PART + (size_t)i * T_CHUNK, T_CHUNK, &held[i]);
    for (int i = 0; i < T_WINDOW; i++) {
        assert_true(s_run_until(f, s_done, &held[i], T_WAIT_MS));
        assert_int_equal(held[i].status, SH_STATUS_TIMEOUT);
        assert_non_null(strstr(held[i].error, "storage part 1"));
    }
    /*  down for good (resumed, the test server would write the abandoned
        part into the aborted upload and crash)  */
    t_kill(f->server->pid);
    f->server->pid = 0;
    assert_int_equal(s_stream_op(f, SH_OP_upload_finish, up.stream, &r), SH_STATUS_TIMEOUT);
    assert_non_null(strstr(r.error, "storage part 1"));
    assert_int_equal(s_stream_op(f, SH_OP_upload_finish, up.stream, &r), SH_STATUS_NOT_FOUND);
    assert_int_equal(s_metric(f, "shoal_uploads_total", "result=\"failed\""), 1);
    assert_int_equal(s_metric(f, "shoal_upload_streams", ""), 0);
    assert_int_equal(s_metric(f, "shoal_upload_buffer_bytes", ""), 0);
    assert_int_equal(s_s3_start(f->server), 0);
    /*  the service's abort, retried within its deadline, may reach the
        restarted server first; else the sweeper removes the upload
        (test_upload_service_sweep_command proves that one on its own)  */
    assert_true(s_wait_for(f, s_swept_leftover, up.key, T_WAIT_MS));
    free(data);
}

/*  Bytes that contradict an allowed declared type: 415, and the multipart
    upload is aborted. Declared types are compared without parameters and
    case; an undeclared or unknown type takes what was sniffed.  */
static void test_upload_service_sniff_mismatch_aborts(void **state)
{
    t_fixture_t *f = *state;
    size_t len = T_PART + 1;
    uint8_t *data = s_random_bytes(len);
    t_upload_t up;
    t_answer_t r = {0};
    assert_int_equal(s_begin(f, len, "image/png", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    assert_int_equal(s_s3_uploads(f, up.key), 1);
    assert_int_equal(s_chunk(f, up.stream, 0, data, T_CHUNK, &r), SH_STATUS_UNSUPPORTED_TYPE);
    assert_non_null(strstr(r.error, "image/png"));
    assert_true(s_wait_for(f, s_no_uploads, up.key, T_WAIT_MS));
    /*  the next request hears why once, then the stream is gone  */
    assert_int_equal(s_chunk(f, up.stream, T_CHUNK, data, T_CHUNK, &r), SH_STATUS_UNSUPPORTED_TYPE);
    assert_int_equal(s_chunk(f, up.stream, T_CHUNK, data, T_CHUNK, &r), SH_STATUS_NOT_FOUND);

    /*  declared text, but binary; small: one PUT, nothing stored  */
    assert_int_equal(s_begin(f, 600, "Text/Plain; charset=utf-8", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    assert_int_equal(s_chunk(f, up.stream, 0, data, 600, &r), SH_STATUS_UNSUPPORTED_TYPE);
    assert_int_equal(s_s3_head(f, up.key), SH_STATUS_NOT_FOUND);
    /*  an empty file is octet-stream: declared PNG fails at begin  */
    assert_int_equal(s_begin(f, 0, "image/png", &r), SH_STATUS_UNSUPPORTED_TYPE);

    /*  a real PNG signature under an odd spelling of its type  */
    memcpy(data, "\x89PNG\r\n\x1a\n", 8);
    s_upload(f, data, 1000, " IMAGE/PNG ;x=y", &up);
    assert_string_equal(up.content_type, "image/png");
    /*  HTML declared as HTML is stored as what it is: text  */
    const char *html = "<!doctype html><script>alert(1)</script>";
    s_upload(f, (const uint8_t *)html, strlen(html), "text/html", &up);
    assert_string_equal(up.content_type, "text/plain");
    assert_int_equal(s_metric(f, "shoal_uploads_total", "result=\"rejected\""), 3);
    free(data);
}

/*  Wrong offsets, missing or oversized frames, early finishes, unknown
    streams, too large uploads: each an error reply with a reason; a bad
    chunk ends its stream and aborts its multipart upload.  */
static void test_upload_service_refuses_bad_requests(void **state)
{
    t_fixture_t *f = *state;
    size_t len = T_PART + 10;
    uint8_t *data = s_random_bytes(T_CHUNK + 1);
    t_upload_t up;
    t_answer_t r = {0};
    assert_int_equal(s_begin(f, T_MAX_BYTES + 1, "", &r), SH_STATUS_TOO_LARGE);
    assert_int_equal(s_chunk(f, "no-such-stream", 0, data, 10, &r), SH_STATUS_NOT_FOUND);
    assert_int_equal(s_stream_op(f, SH_OP_upload_finish, "no-such-stream", &r),
                     SH_STATUS_NOT_FOUND);

    assert_int_equal(s_begin(f, len, "", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    assert_int_equal(s_chunk(f, up.stream, 0, data, 100, &r), SH_STATUS_OK);
    assert_int_equal(s_chunk(f, up.stream, 50, data, 100, &r), SH_STATUS_INVALID);
    assert_non_null(strstr(r.error, "expected 100"));
    assert_true(s_wait_for(f, s_no_uploads, up.key, T_WAIT_MS));
    assert_int_equal(s_chunk(f, up.stream, 100, data, 100, &r), SH_STATUS_INVALID);
    assert_int_equal(s_chunk(f, up.stream, 100, data, 100, &r), SH_STATUS_NOT_FOUND);

    const struct {
        uint64_t offset;
        size_t len;
        bool raw;
        const char *why;
    } bad[] = {
        {0, 10, false, "raw frame"},              /* no frame */
        {0, T_CHUNK + 1, true, "over chunk_max"}, /* too big */
        {0, 0, true, "raw frame"},                /* empty */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(s_begin(f, 1000, "", &r), SH_STATUS_OK);
        s_begun(&r, &up);
        sh_upload_chunk_req_t req = {.stream = sh_str(up.stream), .offset = bad[i].offset};
        assert_int_equal(
            s_call(f, SH_OP_upload_chunk, &req, bad[i].raw ? data : NULL, bad[i].len, &r),
            SH_STATUS_INVALID);
        assert_non_null(strstr(r.error, bad[i].why));
    }
    /*  past the declared size; finish before every byte; finish twice  */
    assert_int_equal(s_begin(f, 10, "", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    assert_int_equal(s_chunk(f, up.stream, 0, data, 11, &r), SH_STATUS_INVALID);
    assert_non_null(strstr(r.error, "past the declared size"));
    assert_int_equal(s_begin(f, 10, "", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    assert_int_equal(s_chunk(f, up.stream, 0, data, 5, &r), SH_STATUS_OK);
    assert_int_equal(s_stream_op(f, SH_OP_upload_finish, up.stream, &r), SH_STATUS_INVALID);
    assert_non_null(strstr(r.error, "only 5 of 10"));
    assert_int_equal(s_metric(f, "shoal_upload_streams", ""), 0);
    s_reply_free(&r);
    free(data);
}

/*  upload_abort: known or not; the multipart upload goes. More streams
    than allowed: 503 busy until one ends.  */
static void test_upload_service_abort_and_busy(void **state)
{
    t_fixture_t *f = *state;
    t_upload_t ups[T_STREAMS];
    t_answer_t r = {0};
    for (int i = 0; i < T_STREAMS; i++) {
        assert_int_equal(s_begin(f, T_PART, "", &r), SH_STATUS_OK);
        s_begun(&r, &ups[i]);
    }
    assert_int_equal(s_s3_uploads(f, f->prefix), T_STREAMS);
    assert_int_equal(s_begin(f, 10, "", &r), SH_STATUS_UNAVAILABLE);
    assert_non_null(strstr(r.error, "busy"));
    assert_int_equal(s_metric(f, "shoal_upload_streams", ""), T_STREAMS);
    for (int i = 0; i < T_STREAMS; i++) {
        assert_int_equal(s_stream_op(f, SH_OP_upload_abort, ups[i].stream, &r), SH_STATUS_OK);
        assert_true(((sh_upload_abort_rep_t *)r.body)->known);
    }
    assert_int_equal(s_stream_op(f, SH_OP_upload_abort, ups[0].stream, &r), SH_STATUS_OK);
    assert_false(((sh_upload_abort_rep_t *)r.body)->known);
    assert_true(s_wait_for(f, s_no_uploads, f->prefix, T_WAIT_MS));
    assert_int_equal(s_begin(f, 10, "", &r), SH_STATUS_OK);
    assert_int_equal(s_metric(f, "shoal_uploads_total", "result=\"aborted\""), T_STREAMS);
    assert_int_equal(s_metric(f, "shoal_uploads_total", "result=\"rejected\""), 1);
}

/*  Ranged reads: the object's size and the bytes asked for (fewer at the
    end); past the end, bad lengths, foreign and missing keys refused.
    upload_delete removes the object.  */
static void test_upload_service_reads_ranges_and_deletes(void **state)
{
    t_fixture_t *f = *state;
    uint8_t data[1000];
    randombytes_buf(data, sizeof data);
    t_upload_t up;
    s_upload(f, data, sizeof data, "", &up);
    t_answer_t r = {0};
    const struct {
        uint64_t offset, length, want;
    } ok[] = {{0, 10, 10}, {990, 100, 10}, {999, 1, 1}, {500, 500, 500}, {0, SH_CHUNK_MAX, 1000}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(s_read(f, up.key, ok[i].offset, ok[i].length, &r), SH_STATUS_OK);
        const sh_upload_read_rep_t *rep = (const void *)r.body;
        assert_int_equal(rep->size, 1000);
        assert_int_equal(rep->length, ok[i].want);
        assert_int_equal(r.raw_len, ok[i].want);
        assert_memory_equal(r.raw, data + ok[i].offset, ok[i].want);
    }
    assert_int_equal(s_read(f, up.key, 1000, 10, &r), SH_STATUS_INVALID);
    assert_int_equal(s_read(f, up.key, 0, 0, &r), SH_STATUS_INVALID);
    assert_int_equal(s_read(f, up.key, 0, SH_CHUNK_MAX + 1, &r), SH_STATUS_INVALID);
    char other[SH_OBJKEY_MAX + 1];
    snprintf(other, sizeof other, "%s", up.key);
    other[strlen(other) - 1] = other[strlen(other) - 1] == '0' ? '1' : '0';
    assert_int_equal(s_read(f, other, 0, 10, &r), SH_STATUS_NOT_FOUND);
    const char *foreign[] = {"uploads/../etc/passwd", "other/0123456789abcdef0123456789abcdef", "",
                             "test/ABCDEF0123456789abcdef0123456789"};
    for (size_t i = 0; i < sizeof foreign / sizeof foreign[0]; i++) {
        assert_int_equal(s_read(f, foreign[i], 0, 10, &r), SH_STATUS_INVALID);
        sh_upload_delete_req_t del = {.key = sh_str(foreign[i])};
        assert_int_equal(s_call(f, SH_OP_upload_delete, &del, NULL, 0, &r), SH_STATUS_INVALID);
    }
    assert_int_equal(s_metric(f, "shoal_upload_read_bytes_total", ""), 10 + 10 + 1 + 500 + 1000);
    sh_upload_delete_req_t del = {.key = sh_str(up.key)};
    assert_int_equal(s_call(f, SH_OP_upload_delete, &del, NULL, 0, &r), SH_STATUS_OK);
    assert_int_equal(s_s3_head(f, up.key), SH_STATUS_NOT_FOUND);
    assert_int_equal(s_read(f, up.key, 0, 10, &r), SH_STATUS_NOT_FOUND);
    s_reply_free(&r);
}

typedef struct {
    const char *name;
    const char *label;
    int64_t want;
} t_metric_wait_t;

static bool s_metric_is(t_fixture_t *f, void *arg)
{
    t_metric_wait_t *w = arg;
    return s_metric(f, w->name, w->label) == w->want;
}

/*  A stream whose caller went silent is aborted, multipart upload and all.  */
static void test_upload_service_idle_stream_aborted(void **state)
{
    t_fixture_t *f = *state;
    t_upload_t up;
    t_answer_t r = {0};
    uint8_t data[100] = {0};
    assert_int_equal(s_begin(f, T_PART + 1, "", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    assert_int_equal(s_chunk(f, up.stream, 0, data, sizeof data, &r), SH_STATUS_OK);
    t_metric_wait_t aborted = {"shoal_uploads_total", "result=\"aborted\"", 1};
    assert_true(s_wait_for(f, s_metric_is, &aborted, T_WAIT_MS));
    assert_int_equal(s_metric(f, "shoal_upload_streams", ""), 0);
    assert_true(s_wait_for(f, s_no_uploads, up.key, T_WAIT_MS));
    assert_int_equal(s_chunk(f, up.stream, 100, data, sizeof data, &r), SH_STATUS_NOT_FOUND);
}

/*  SIGTERM: a new upload is refused, an open one goes on to the end (its
    chunks and finish are served while draining) and the process exits
    once it is stored.  */
static void test_upload_service_draining_finishes_open_streams(void **state)
{
    t_fixture_t *f = *state;
    t_upload_t up;
    t_answer_t r = {0}, refused = {0};
    size_t len = T_PART + 1;
    uint8_t *data = malloc(len);
    assert_non_null(data);
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    assert_int_equal(s_begin(f, len, "", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    /*  the stream's requests follow its instance while it drains  */
    snprintf(f->pin, sizeof f->pin, "%s", r.instance);
    s_send_range(f, &up, data, 0, T_CHUNK);
    assert_int_equal(kill(f->service, SIGTERM), 0);
    /*  the signal lands a moment later: a begin before it is taken (and
        aborted here), the first one after it is refused  */
    int64_t until = sh_clock_mono_ms() + T_WAIT_MS;
    while (s_begin(f, 10, "", &refused) == SH_STATUS_OK && sh_clock_mono_ms() < until) {
        t_upload_t early;
        t_answer_t aborted = {0};
        s_begun(&refused, &early);
        assert_int_equal(s_stream_op(f, SH_OP_upload_abort, early.stream, &aborted), SH_STATUS_OK);
        s_reply_free(&aborted);
        s_reply_free(&refused);
        refused = (t_answer_t){0};
    }
    assert_int_equal(refused.status, SH_STATUS_UNAVAILABLE);
    s_send_range(f, &up, data, T_CHUNK, len);
    assert_int_equal(s_finish(f, &up), SH_STATUS_OK);
    assert_int_equal(t_wait_exit(f->service, 10000), 0);
    f->service = 0;
    f->pin[0] = 0;
    /*  stored whole (the service is gone: ask S3 itself)  */
    uint8_t digest[crypto_hash_sha256_BYTES];
    char hex[T_SHA_HEX];
    crypto_hash_sha256(digest, data, len);
    sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    assert_string_equal(up.sha256, hex);
    assert_int_equal(up.size, len);
    assert_int_equal(s_s3_head(f, up.key), SH_STATUS_OK);
    assert_int_equal(s_s3_uploads(f, up.key), 0);
    s_reply_free(&r);
    s_reply_free(&refused);
    free(data);
}

/*  `shoal-upload sweep` with this fixture's settings and sweep age.  */
static int s_sweep_once(t_fixture_t *f, int64_t age_ms)
{
    char program[512], age[64];
    snprintf(program, sizeof program, "%s/shoal-upload", t_bin_dir());
    snprintf(age, sizeof age, "--upload-sweep-age-ms=%lld", (long long)age_ms);
    const char *argv[] = {program, "sweep", age, NULL};
    pid_t pid = s_spawn(argv, s_service_env(f, NULL), f->log);
    /*  the stand-in query service answers while the pass runs  */
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    int status = -1;
    while (sh_clock_mono_ms() < end) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
        s_run_for(f, 10);
    }
    t_kill(pid);
    return -1;
}

/*  Run passes (sweep age 1 s) until the stand-in was asked want_asked
    times; rc is the last pass's exit status.  */
typedef struct {
    int want_asked;
    int rc;
} t_asked_wait_t;

static bool s_swept_asking(t_fixture_t *f, void *arg)
{
    t_asked_wait_t *w = arg;
    w->rc = s_sweep_once(f, 1000);
    return f->asked >= w->want_asked;
}

/*  The stream's abort or else a sweeper pass removed the upload.  */
static bool s_swept_leftover(t_fixture_t *f, void *arg)
{
    return s_s3_uploads(f, arg) == 0 || (s_sweep_once(f, 1000), s_s3_uploads(f, arg) == 0);
}

/*  Run passes (sweep age 1 s) until the leftover multipart upload and
    the object without a row are gone.  */
typedef struct {
    const char *leftover;
    const char *orphan;
    int rc;
} t_gone_wait_t;

static bool s_swept_away(t_fixture_t *f, void *arg)
{
    t_gone_wait_t *w = arg;
    w->rc = s_sweep_once(f, 1000);
    return s_s3_uploads(f, w->leftover) == 0 && s_s3_head(f, w->orphan) == SH_STATUS_NOT_FOUND;
}

static void s_leftover_key(t_fixture_t *f, char out[SH_OBJKEY_MAX + 1])
{
    char hex[33];
    sh_random_hex(hex, 16);
    snprintf(out, SH_OBJKEY_MAX + 1, "%s%s", f->prefix, hex);
}

/*  One pass: old multipart uploads are aborted; old objects without an
    attachment row are deleted, those with one kept; no object is deleted
    when the query service does not answer; young things stay.  */
static void test_upload_service_sweep_command(void **state)
{
    t_fixture_t *f = *state;
    char leftover[SH_OBJKEY_MAX + 1];
    s_leftover_key(f, leftover);
    s_s3_leftover(f, leftover);
    t_upload_t a, b, c;
    s_upload(f, (const uint8_t *)"kept, it has a row", 18, "", &a);
    s_upload(f, (const uint8_t *)"no row: deleted", 15, "", &b);
    snprintf(f->rows[f->row_count++], sizeof f->rows[0], "%s", a.key);

    /*  the query service refuses: once the objects are old enough to be
        asked about, the pass fails (exit 1) and deletes nothing  */
    f->fake_status = SH_STATUS_UNAVAILABLE;
    t_asked_wait_t asked = {1, -1};
    assert_true(s_wait_for(f, s_swept_asking, &asked, T_WAIT_MS));
    assert_int_equal(asked.rc, 1);
    assert_int_equal(s_s3_head(f, a.key), SH_STATUS_OK);
    assert_int_equal(s_s3_head(f, b.key), SH_STATUS_OK);

    /*  it answers: the leftover and the object without a row go  */
    f->fake_status = SH_STATUS_OK;
    t_gone_wait_t gone = {leftover, b.key, -1};
    assert_true(s_wait_for(f, s_swept_away, &gone, T_WAIT_MS));
    assert_int_equal(gone.rc, 0);
    assert_int_equal(s_s3_head(f, a.key), SH_STATUS_OK);

    /*  young ones stay, and young objects are never asked about  */
    s_leftover_key(f, leftover);
    s_s3_leftover(f, leftover);
    s_upload(f, (const uint8_t *)"young", 5, "", &c);
    int before = f->asked;
    assert_int_equal(s_sweep_once(f, 60000), 0);
    assert_int_equal(f->asked, before);
    assert_int_equal(s_s3_head(f, c.key), SH_STATUS_OK);
    assert_int_equal(s_s3_uploads(f, leftover), 1);
}

typedef struct {
    int64_t after_ms; /* wall clock */
    int64_t mark;     /* passes finished when after_ms came; -1 before */
} t_pass_wait_t;

/*  Two passes finished after after_ms: the second began after it.  */
static bool s_passes_after(t_fixture_t *f, void *arg)
{
    t_pass_wait_t *w = arg;
    int64_t runs = s_metric(f, "shoal_sweep_runs_total", "");
    if (w->mark < 0) {
        if (sh_clock_wall_ms() >= w->after_ms)
            w->mark = runs;
        return false;
    }
    return runs >= w->mark + 2;
}

/*  The service's own sweeper aborts an old leftover but never the
    multipart upload of a stream that is still open, however old.  */
static void test_upload_service_sweeper_spares_live_streams(void **state)
{
    t_fixture_t *f = *state;
    size_t len = T_PART + 1;
    uint8_t *data = s_random_bytes(len);
    t_upload_t up;
    t_answer_t r = {0};
    assert_int_equal(s_begin(f, len, "", &r), SH_STATUS_OK);
    s_begun(&r, &up);
    int64_t begun = sh_clock_wall_ms();
    char leftover[SH_OBJKEY_MAX + 1];
    s_leftover_key(f, leftover);
    s_s3_leftover(f, leftover);
    s_send_range(f, &up, data, 0, T_CHUNK);
    /*  both older than the age of 1 s, and two passes later ...  */
    t_pass_wait_t w = {begun + 1500, -1};
    assert_true(s_wait_for(f, s_passes_after, &w, T_WAIT_MS));
    assert_int_equal(s_s3_uploads(f, leftover), 0);
    assert_int_equal(s_s3_uploads(f, up.key), 1);
    assert_true(s_metric(f, "shoal_sweep_aborted_total", "") >= 1);
    /*  ... the stream goes on and completes  */
    s_send_range(f, &up, data, T_CHUNK, len);
    assert_int_equal(s_finish(f, &up), SH_STATUS_OK);
    s_assert_object(f, up.key, data, len);
    free(data);
}

int main(void)
{
    sh_crypto_init();
    if (s_s3_start(&g_s3)) {
        fprintf(stderr, "the S3 test server did not start\n");
        s_s3_stop(&g_s3);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_upload_service_sizes_round_trip, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_full_buffer_holds_the_reply, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_storage_failure_fails_the_stream,
                                        s_setup_short_s3_timeout, s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_sniff_mismatch_aborts, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_refuses_bad_requests, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_abort_and_busy, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_reads_ranges_and_deletes, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_idle_stream_aborted, s_setup_short_idle,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_draining_finishes_open_streams, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_sweep_command, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_upload_service_sweeper_spares_live_streams,
                                        s_setup_sweeping, s_teardown),
    };
    int rc = cmocka_run_group_tests_name("upload_service", tests, NULL, NULL);
    if (rc != 0)
        t_tail(g_s3.log);
    s_s3_stop(&g_s3);
    if (rc == 0)
        sh_transport_shutdown();
    return rc;
}
