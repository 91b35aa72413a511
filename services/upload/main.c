/*  shoal-upload - file bytes in S3-compatible storage: upload streams
    pinned to one instance, ranged reads, deletes, and the sweeper of what
    failed uploads leave behind. The attachment rows live in the query
    service; this service only ever sees object keys it made itself.

    `shoal-upload sweep` runs one sweeper pass, prints a summary line and
    exits (0, or 1 when a step failed).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sh_log.h"
#include "sh_pool.h"
#include "sh_registry.h"
#include "sh_service.h"
#include "upload_s3.h"
#include "upload_server.h"
#include "upload_sweep.h"

#define S_LOW_SPEED_BYTES     1024 /* a transfer slower than this ... */
#define S_LOW_SPEED_SECS      10   /* ... for this long is retried */
#define S_BACKOFF_BASE_MS     100
#define S_BACKOFF_CAP_MS      2000
#define S_QUERY_TIMEOUT_MS    5000 /* one attachment_keys call of the sweeper */
#define S_SWEEP_READY_WAIT_MS 3000 /* `sweep`: how long to wait for a query instance */
#define S_SWEEP_TICK_MS       20
#define S_CLOSE_WAIT_MS       2000 /* at exit, for the aborts of unfinished uploads */
#define S_PREFIX_MAX          (SH_OBJKEY_MAX - UPLOAD_KEY_HEX)
#define S_MAX_OBJECT          5497558138880LL /* S3's largest object: 5 TiB */

typedef struct {
    sh_base_config_t base;
    char *bind;
    char *s3_endpoint;
    char *s3_public_endpoint;
    char *s3_region;
    char *s3_bucket;
    bool s3_path_style;
    char *s3_access_key;
    char *s3_secret_key;
    int64_t s3_timeout_ms;
    int64_t s3_connect_timeout_ms;
    int64_t s3_retries;
    int64_t upload_max_bytes;
    int64_t upload_part_bytes;
    int64_t upload_chunk_bytes;
    int64_t upload_window;
    int64_t upload_max_streams;
    int64_t upload_max_buffer_bytes;
    int64_t upload_idle_ms;
    char *upload_prefix;
    int64_t upload_sweep_interval_ms;
    int64_t upload_sweep_age_ms;
    char *query_endpoints;
} upload_config_t;

#define SH_CONFIG_T upload_config_t
static const sh_setting_t s_settings[] = {
    SH_BASE_SETTINGS,
    SH_SETTING(STR, "bind", bind, "tcp://127.0.0.1:7301", 0, 255,
               "ZeroMQ endpoint the request ROUTER binds (port 0 picks a free port)"),
    SH_SETTING(STR, "s3_endpoint", s3_endpoint, "http://127.0.0.1:9300", 0, 255,
               "S3 endpoint, http(s)://host[:port] without a path"),
    SH_SETTING(STR, "s3_public_endpoint", s3_public_endpoint, "", 0, 255,
               "the S3 endpoint browsers reach, for presigned download URLs (empty: s3_endpoint)"),
    SH_SETTING(STR, "s3_region", s3_region, "us-east-1", 0, 63, "signing region"),
    SH_SETTING(STR, "s3_bucket", s3_bucket, "shoal-uploads", 0, 63,
               "the bucket every object goes to (it must exist)"),
    SH_SETTING(BOOL, "s3_path_style", s3_path_style, "true", 0, 0,
               "path-style URLs endpoint/bucket/key (MinIO, Ceph RGW, the test server); false: "
               "virtual-host style bucket.host/key (AWS)"),
    SH_SETTING(STR, "s3_access_key", s3_access_key, "S3RVER", 0, 255, "S3 access key id"),
    SH_SETTING(STR, "s3_secret_key", s3_secret_key, "S3RVER", 0, 255, "S3 secret access key"),
    SH_SETTING(INT, "s3_timeout_ms", s3_timeout_ms, "30000", 100, 3600000,
               "longest S3 call, retries included; capped by the request's deadline, except part "
               "uploads"),
    SH_SETTING(INT, "s3_connect_timeout_ms", s3_connect_timeout_ms, "2000", 10, 60000,
               "longest connect to S3"),
    SH_SETTING(INT, "s3_retries", s3_retries, "4", 0, 20,
               "retries of a failed S3 call (5xx, SlowDown, connection failures), deadline "
               "permitting"),
    SH_SETTING(INT, "upload_max_bytes", upload_max_bytes, "1073741824", 0, S_MAX_OBJECT,
               "largest upload; larger ones get 413 before any byte moves"),
    SH_SETTING(INT, "upload_part_bytes", upload_part_bytes, "6291456", 5242880, 536870912,
               "multipart part size; smaller uploads are one PutObject. Memory per stream is at "
               "most 2 parts + window chunks"),
    SH_SETTING(INT, "upload_chunk_bytes", upload_chunk_bytes, "262144", 1024, SH_CHUNK_MAX,
               "largest chunk of one upload_chunk request (chunk_max)"),
    SH_SETTING(INT, "upload_window", upload_window, "4", 1, 64,
               "chunks a caller may keep unanswered per stream"),
    SH_SETTING(INT, "upload_max_streams", upload_max_streams, "256", 1, 4096,
               "upload streams open at once per instance; more get 503 busy"),
    SH_SETTING(INT, "upload_max_buffer_bytes", upload_max_buffer_bytes, "268435456", 1048576,
               68719476736,
               "memory the open streams of an instance may hold together (each reserves its "
               "worst case at begin: 2 parts, or its size, + window chunks); more get 503 busy"),
    SH_SETTING(INT, "upload_idle_ms", upload_idle_ms, "30000", 100, 3600000,
               "a stream without a request for this long is aborted"),
    SH_SETTING(STR, "upload_prefix", upload_prefix, "uploads/", 0, S_PREFIX_MAX,
               "prefix of every object key: letters, digits, - _ /, ending with /"),
    SH_SETTING(INT, "upload_sweep_interval_ms", upload_sweep_interval_ms, "300000", 0, 604800000,
               "sweeper pass every this long, +-20 % (0: off)"),
    SH_SETTING(INT, "upload_sweep_age_ms", upload_sweep_age_ms, "21600000", 1000, 31536000000LL,
               "the sweeper touches only multipart uploads and objects older than this (keep it "
               "above the longest upload)"),
    SH_SETTING(STR, "query_endpoints", query_endpoints, "", 0, 2047,
               "query instances outside the registry, for the sweeper (comma-separated ZeroMQ "
               "endpoints)"),
};
#undef SH_CONFIG_T

/*  Checks the table cannot express. Returns 0, or -1 (printed why).  */
static int s_check(const upload_config_t *c)
{
    const char *p = c->upload_prefix;
    size_t len = strlen(p);
    bool ok = len > 0 && p[0] != '/' && p[len - 1] == '/' && !strstr(p, "//");
    for (size_t i = 0; ok && i < len; i++)
        ok = (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
             (p[i] >= '0' && p[i] <= '9') || p[i] == '-' || p[i] == '_' || p[i] == '/';
    if (!ok) {
        fprintf(stderr,
                "invalid upload_prefix \"%s\": letters, digits, - _ /, ending with one /, "
                "no empty segment\n",
                p);
        return -1;
    }
    if ((c->upload_max_bytes + c->upload_part_bytes - 1) / c->upload_part_bytes >
        UPLOAD_S3_MAX_PARTS) {
        fprintf(
            stderr, "invalid upload_max_bytes=%lld: more than %d parts of upload_part_bytes=%lld\n",
            (long long)c->upload_max_bytes, UPLOAD_S3_MAX_PARTS, (long long)c->upload_part_bytes);
        return -1;
    }
    if (!c->s3_endpoint[0] || !c->s3_bucket[0] || !c->s3_region[0]) {
        fprintf(stderr, "s3_endpoint, s3_region and s3_bucket must be set\n");
        return -1;
    }
    return 0;
}

static upload_s3_config_t s_s3_config(const upload_config_t *c)
{
    return (upload_s3_config_t){
        .endpoint = c->s3_endpoint,
        .public_endpoint = c->s3_public_endpoint,
        .region = c->s3_region,
        .bucket = c->s3_bucket,
        .path_style = c->s3_path_style,
        .access_key = c->s3_access_key,
        .secret_key = c->s3_secret_key,
        .timeout_ms = c->s3_timeout_ms,
        .connect_timeout_ms = c->s3_connect_timeout_ms,
        .low_speed_bytes = S_LOW_SPEED_BYTES,
        .low_speed_secs = S_LOW_SPEED_SECS,
        .max_retries = (int)c->s3_retries,
        .backoff_base_ms = S_BACKOFF_BASE_MS,
        .backoff_cap_ms = S_BACKOFF_CAP_MS,
    };
}

static upload_sweep_config_t s_sweep_config(const upload_config_t *c)
{
    return (upload_sweep_config_t){c->upload_prefix, c->upload_sweep_age_ms, c->s3_timeout_ms,
                                   S_QUERY_TIMEOUT_MS};
}

/*  --- the service -------------------------------------------------------------  */

static void s_on_bucket(void *arg, uint64_t status, const upload_s3_result_t *result)
{
    const char *bucket = arg;
    if (status == SH_STATUS_OK)
        sh_info("S3 bucket %s answers", bucket);
    else
        sh_warn("S3 bucket %s does not answer (%s, HTTP %d %s); uploads fail until it does", bucket,
                sh_status_code(status), result->http_status, result->error_code);
}

static int s_serve(upload_config_t *c)
{
    sh_service_t *service = sh_service_new("upload", &c->base, c->bind);
    if (!service)
        return 1;
    sh_loop_t *loop = sh_service_loop(service);
    sh_metrics_t *metrics = sh_service_metrics(service);
    upload_s3_config_t s3_config = s_s3_config(c);
    upload_s3_t *s3 = upload_s3_new(loop, &s3_config, metrics);
    sh_pool_t *query = s3 ? sh_service_pool(service, "query", c->query_endpoints) : NULL;
    upload_server_config_t server_config = {
        .prefix = c->upload_prefix,
        .max_bytes = (uint64_t)c->upload_max_bytes,
        .part_bytes = (uint64_t)c->upload_part_bytes,
        .chunk_bytes = (uint64_t)c->upload_chunk_bytes,
        .window = (uint64_t)c->upload_window,
        .max_streams = c->upload_max_streams,
        .max_buffer = c->upload_max_buffer_bytes,
        .idle_ms = c->upload_idle_ms,
        .s3_timeout_ms = c->s3_timeout_ms,
    };
    upload_server_t *server = query ? upload_server_new(service, s3, &server_config) : NULL;
    upload_sweep_config_t sweep_config = s_sweep_config(c);
    upload_sweep_t *sweep = server ? upload_sweep_new(loop, s3, query, &sweep_config, metrics,
                                                      upload_server_live, server)
                                   : NULL;
    int rc = 1;
    if (sweep && upload_sweep_every(sweep, c->upload_sweep_interval_ms) == 0) {
        /*  a warning only: S3 may come up later, each call checks again  */
        upload_s3_list_objects(s3, c->upload_prefix, NULL, 1, c->s3_timeout_ms, s_on_bucket,
                               c->s3_bucket);
        sh_service_run(service);
        upload_server_close(server, S_CLOSE_WAIT_MS);
        rc = 0;
    } else
        sh_error("cannot start the upload service");
    /*  the S3 client first: it answers its pending calls while the streams
        and passes they belong to still exist  */
    upload_s3_destroy(&s3);
    upload_sweep_destroy(&sweep);
    upload_server_destroy(&server);
    sh_service_destroy(&service);
    return rc;
}

/*  --- `shoal-upload sweep` ------------------------------------------------------  */

typedef struct {
    sh_loop_t *loop;
    sh_pool_t *pool;         /* NULL without query endpoints or registry */
    sh_registry_t *registry; /* NULL without health endpoints */
    upload_sweep_t *sweep;
    int64_t started_ms;
    bool running;
    bool finished;
    upload_sweep_report_t report;
} s_once_t;

static void s_on_member(void *arg, const sh_member_t *member)
{
    s_once_t *once = arg;
    if (sh_str_eq(member->service, "query"))
        sh_pool_update(once->pool, member);
}

static int s_on_readable(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_pool_drain(arg);
    return 0;
}

static int s_on_registry(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_registry_drain(arg);
    return 0;
}

static void s_on_swept(void *arg, const upload_sweep_report_t *report)
{
    s_once_t *once = arg;
    once->report = *report;
    once->finished = true;
    sh_loop_stop(once->loop);
}

/*  Tick the pool and the registry; start the pass once a query instance
    answers (or after a short wait: then the object step fails safe).  */
static int s_on_once_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    s_once_t *once = arg;
    if (once->registry)
        sh_registry_tick(once->registry);
    if (once->pool) {
        sh_pool_tick(once->pool);
        sh_pool_drain(once->pool);
    }
    bool ready = !once->pool || sh_pool_ready(once->pool) ||
                 sh_clock_mono_ms() - once->started_ms >= S_SWEEP_READY_WAIT_MS;
    if (!once->running && ready) {
        once->running = true;
        upload_sweep_run(once->sweep, s_on_swept, once);
    }
    return 0;
}

static int s_watch(sh_loop_t *loop, void **sockets, int n, sh_loop_io_fn *fn, void *arg)
{
    for (int i = 0; i < n; i++)
        if (!sh_loop_add_socket(loop, sockets[i], ZMQ_POLLIN, fn, arg))
            return -1;
    return 0;
}

static int s_sweep_once(upload_config_t *c)
{
    sh_crypto_init();
    sh_log_init("upload", c->base.instance, (sh_log_level_t)sh_log_level_parse(c->base.log_level),
                c->base.log_json);
    s_once_t once = {.started_ms = sh_clock_mono_ms()};
    once.loop = sh_loop_new();
    sh_metrics_t *metrics = sh_metrics_new("upload", c->base.instance);
    upload_s3_config_t s3_config = s_s3_config(c);
    upload_s3_t *s3 = once.loop && metrics ? upload_s3_new(once.loop, &s3_config, metrics) : NULL;
    bool with_query = c->query_endpoints[0] || c->base.health_endpoints[0];
    int rc = s3 ? 0 : -1;
    if (rc == 0 && with_query) {
        once.pool = sh_pool_new("query", metrics);
        char list[2048];
        snprintf(list, sizeof list, "%s", c->query_endpoints);
        char *save = NULL;
        for (char *ep = strtok_r(list, ", ", &save); ep && once.pool && rc == 0;
             ep = strtok_r(NULL, ", ", &save))
            if (sh_pool_add(once.pool, ep)) {
                sh_error("invalid query endpoint \"%s\"", ep);
                rc = -1;
            }
        void *sockets[SH_REGISTRY_SOCKETS];
        if (!once.pool ||
            s_watch(once.loop, sockets, sh_pool_sockets(once.pool, sockets, SH_POOL_SOCKETS),
                    s_on_readable, once.pool))
            rc = -1;
        if (rc == 0 && c->base.health_endpoints[0]) {
            once.registry = sh_registry_new(c->base.health_endpoints, s_on_member, &once, NULL);
            if (!once.registry ||
                s_watch(once.loop, sockets,
                        sh_registry_sockets(once.registry, sockets, SH_REGISTRY_SOCKETS),
                        s_on_registry, once.registry))
                rc = -1;
        }
    }
    upload_sweep_config_t sweep_config = s_sweep_config(c);
    if (rc == 0)
        once.sweep = upload_sweep_new(once.loop, s3, once.pool, &sweep_config, metrics, NULL, NULL);
    if (once.sweep && sh_loop_timer(once.loop, S_SWEEP_TICK_MS, true, s_on_once_tick, &once) > 0)
        sh_loop_run(once.loop);
    else
        sh_error("cannot start the sweeper");
    upload_s3_destroy(&s3);
    upload_sweep_destroy(&once.sweep);
    sh_pool_destroy(&once.pool);
    sh_registry_destroy(&once.registry);
    sh_loop_destroy(&once.loop);
    sh_metrics_destroy(&metrics);
    if (!once.finished)
        return 1;
    const upload_sweep_report_t *r = &once.report;
    printf("sweep: aborted=%llu deleted=%llu errors=%llu uploads_listed=%llu "
           "objects_listed=%llu ms=%lld\n",
           (unsigned long long)r->aborted, (unsigned long long)r->deleted,
           (unsigned long long)r->errors, (unsigned long long)r->uploads_seen,
           (unsigned long long)r->objects_seen, (long long)r->ms);
    fflush(stdout);
    return r->errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    /*  `shoal-upload sweep [--flags]`: one sweeper pass  */
    bool sweep_only = argc > 1 && strcmp(argv[1], "sweep") == 0;
    if (sweep_only) {
        argv[1] = argv[0];
        argc--;
        argv++;
    }
    upload_config_t config = {0};
    int rc = sh_config_start(s_settings, SH_ARRAY_SIZE(s_settings), &config, &config.base, "upload",
                             "The Shoal upload service: file bytes in S3-compatible storage. "
                             "Run `shoal-upload sweep` for one sweeper pass.",
                             argc, argv);
    if (rc >= 0)
        return rc;
    if (s_check(&config))
        rc = 2;
    else
        rc = sweep_only ? s_sweep_once(&config) : s_serve(&config);
    sh_transport_shutdown();
    sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
    return rc;
}
