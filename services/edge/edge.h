/*  edge.h - the edge: HTTP in front, ZeroMQ behind.

    edge_http.c is the only module that includes libwebsockets: it accepts
    connections, parses requests into edge_req_t, serves static files and
    writes edge_resp_t replies. edge_api.c holds the routes (health,
    session, load, metrics) and talks to services through sh_pool.
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
#define EDGE_COOKIE_MAX    128
#define EDGE_HEADER_SMALL  256
#define EDGE_RESP_HEADERS  6
#define EDGE_RETRY_AFTER_S "1"

typedef struct {
    sh_base_config_t base;
    char *http_addr;
    int64_t http_port;
    char *session_endpoints;
    char *static_dir;
    int64_t request_timeout_ms;
    bool cookie_secure;
    int64_t cookie_max_age;
    char *allowed_origins;
    int64_t max_body_bytes;
    int64_t max_header_bytes;
    int64_t max_connections;
    int64_t drain_grace_ms;
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

/*  A parsed request, valid during edge_api_handle only.  */
typedef struct {
    edge_method_t method;
    const char *path;
    char cookie[EDGE_COOKIE_MAX]; /* value of the session cookie, "" if none */
    char origin[EDGE_HEADER_SMALL];
    char host[EDGE_HEADER_SMALL];
    char fetch_site[32];
    char query[EDGE_HEADER_SMALL];
    int64_t content_length; /* -1 when absent */
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

struct edge_t {
    edge_config_t *config;
    sh_metrics_t *metrics;
    sh_pool_t *sessions;
    sh_pool_t *scrape; /* every non-edge instance, for /metrics/cluster */

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
/*  Value of query argument `name` into buf; returns buf or NULL.  */
const char *edge_http_arg(edge_conn_t *conn, const char *name, char *buf, int len);

/*  --- edge_api.c ---  */
/*  Route one request under /api, /health or /metrics. Returns 1 when it
    took the request, 0 when the path is not an API path (static files).  */
int edge_api_handle(edge_t *edge, edge_req_t *req);
/*  Reply with a JSON error {"error": code, "message": message}.  */
void edge_api_error(edge_t *edge, edge_req_t *req, int status, const char *code,
                    const char *message);
/*  Send this edge's heartbeat to the registry (no-op without one).  */
void edge_api_beat(edge_t *edge);
/*  Count a finished request for metrics.  */
void edge_api_count(edge_t *edge, int status, int64_t started_us);

#endif
