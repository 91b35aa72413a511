/*  edge_api.c - the edge's operator routes (health, session, load,
    metrics, cluster) and the reply helpers every route shares: JSON
    bodies, errors in one shape, cookies, the same-origin check.
    JSON goes through jansson; service calls through sh_pool.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>

#include "edge.h"
#include "sh_log.h"
#include "sh_util.h"

#define EDGE_COOKIE_ATTR_MAX 256

/*  --- replies -------------------------------------------------------------  */

#define EDGE_INTERNAL_JSON "{\"error\":{\"code\":\"internal\",\"message\":\"reply not encodable\"}}"

void edge_api_json_text(edge_req_t *req, int status, const char *text, size_t len,
                        const char **names, const char **values)
{
    if (!text) {
        /*  a reply that could not be built (out of memory, text that is
            not UTF-8 from a service): say so rather than send half  */
        static const char internal[] = EDGE_INTERNAL_JSON;
        edge_resp_t resp = {500, NULL, internal, sizeof internal - 1, {NULL}, {NULL}};
        edge_http_respond(req->conn, &resp);
        return;
    }
    edge_resp_t resp = {status, "application/json", text, len, {NULL}, {NULL}};
    for (int i = 0; names && names[i] && i < EDGE_RESP_HEADERS - 1; i++) {
        resp.header_names[i] = names[i];
        resp.header_values[i] = values[i];
    }
    edge_http_respond(req->conn, &resp);
}

void edge_api_json(edge_req_t *req, int status, json_t *body, const char **names,
                   const char **values)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    edge_api_json_text(req, status, text, text ? strlen(text) : 0, names, values);
    free(text);
}

void edge_api_error_after(edge_t *edge, edge_req_t *req, int status, const char *code,
                          const char *message, int64_t retry_after_s)
{
    (void)edge;
    const char *names[2] = {NULL}, *values[2] = {NULL};
    char after[24];
    if (retry_after_s > 0) {
        snprintf(after, sizeof after, "%lld", (long long)retry_after_s);
        names[0] = "retry-after:";
        values[0] = after;
    }
    edge_api_json(req, status,
                  json_pack("{s:{s:s, s:s}}", "error", "code", code, "message",
                            message && message[0] ? message : code),
                  names, values);
}

void edge_api_error(edge_t *edge, edge_req_t *req, int status, const char *code,
                    const char *message)
{
    edge_api_error_after(edge, req, status, code, message, status == 503 ? EDGE_RETRY_AFTER_S : 0);
}

void edge_api_call_error(edge_t *edge, edge_req_t *req, const sh_reply_t *reply)
{
    uint64_t status = reply->status;
    int http = sh_status_http(status);
    const char *code = sh_status_code(status);
    if (status == SH_STATUS_DRAINING || status == SH_STATUS_UNSUPPORTED) {
        /*  refused unapplied, or an instance too old for the operation:
            the same call may work in a moment  */
        http = 503;
        code = "unavailable";
    } else if (status == SH_STATUS_OK) {
        /*  OK without a body: the reply did not decode  */
        http = 500;
        code = "internal";
    }
    if (http >= 500)
        sh_warn("call failed: %s (%s)", sh_status_code(status), reply->error);
    edge_api_error(edge, req, http, code, reply->error[0] ? reply->error : "request failed");
}

void edge_api_count(edge_t *edge, int status, int64_t started_us)
{
    char labels[32];
    snprintf(labels, sizeof labels, "code=\"%d\"", status);
    (*sh_metrics_counter(edge->metrics, "shoal_http_responses_total", "HTTP responses by status",
                         labels))++;
    sh_histogram_observe(edge->latency, (double)(sh_clock_mono_us() - started_us) / 1e6);
}

void edge_api_method_not_allowed(edge_t *edge, edge_req_t *req, const char *allow)
{
    const char *names[2] = {"allow:", NULL}, *values[2] = {allow, NULL};
    (void)edge;
    edge_api_json(req, 405,
                  json_pack("{s:{s:s, s:s}}", "error", "code", "method_not_allowed", "message",
                            "method not allowed on this path"),
                  names, values);
}

/*  A service call's outcome: the reply to send, or an error mapped from
    its status. Returns true when the call succeeded.  */
static bool s_call_ok(edge_t *edge, edge_req_t *req, const sh_reply_t *reply)
{
    if (reply->status == SH_STATUS_OK && reply->body)
        return true;
    edge_api_call_error(edge, req, reply);
    return false;
}

/*  Per-call context: the request fields a reply needs, copied, because the
    reply arrives after edge_api_handle returned.  */
typedef struct {
    edge_t *edge;
    edge_conn_t *conn;
    int64_t started_us;
} s_call_t;

static s_call_t *s_call_new(edge_t *edge, edge_req_t *req)
{
    s_call_t *call = malloc(sizeof *call);
    if (!call) {
        edge_api_error(edge, req, 500, "internal", "out of memory");
        return NULL;
    }
    *call = (s_call_t){edge, req->conn, req->started_us};
    return call;
}

static edge_req_t s_req_of(const s_call_t *call)
{
    edge_req_t req;
    memset(&req, 0, sizeof req);
    req.conn = call->conn;
    req.started_us = call->started_us;
    return req;
}

/*  Finish a call: take the request back from its context (freed here) and
    answer an error reply. Returns the edge when the reply succeeded and the
    caller should answer it, NULL when it was answered here.  */
static edge_t *s_call_done(void *arg, const sh_reply_t *reply, edge_req_t *req)
{
    s_call_t *call = arg;
    edge_t *edge = call->edge;
    *req = s_req_of(call);
    free(call);
    return s_call_ok(edge, req, reply) ? edge : NULL;
}

void edge_api_traceparent(char *out)
{
    char trace[33], span[17];
    sh_random_hex(trace, 16);
    sh_random_hex(span, 8);
    snprintf(out, SH_TRACE_MAX + 1, "00-%s-%s-01", trace, span);
}

static sh_call_opts_t s_opts(edge_t *edge, edge_req_t *req, char *traceparent)
{
    edge_api_traceparent(traceparent);
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + edge->config->request_timeout_ms,
                           .traceparent = traceparent,
                           .session = req->cookie};

    return opts;
}

/*  --- /health ---------------------------------------------------------------  */

static void s_health(edge_t *edge, edge_req_t *req)
{
    if (req->method != EDGE_GET) {
        edge_api_method_not_allowed(edge, req, "GET");
        return;
    }
    const char *instance = edge->config->base.instance;
    if (strcmp(req->path, "/health/live") == 0) {
        edge_api_json(req, 200, json_pack("{s:s, s:s}", "status", "live", "instance", instance),
                      NULL, NULL);
        return;
    }

    if (strcmp(req->path, "/health/ready") == 0) {
        const char *reason = edge->draining                   ? "draining"
                             : !sh_pool_ready(edge->sessions) ? "no session instance answers"
                             : edge->queries_known && !sh_pool_ready(edge->queries)
                                 ? "no query instance answers"
                                 : edge_events_unready(edge->events);
        if (reason)
            edge_api_json(req, 503,
                          json_pack("{s:s, s:s, s:s}", "status", "not_ready", "reason", reason,
                                    "instance", instance),
                          NULL, NULL);
        else
            edge_api_json(req, 200,
                          json_pack("{s:s, s:s}", "status", "ready", "instance", instance), NULL,
                          NULL);

        return;
    }
    edge_api_error(edge, req, 404, "not_found", "no such path");
}

/*  --- /api/session ---------------------------------------------------------  */

void edge_api_cookie(edge_t *edge, const char *name, const char *value, long max_age, char *out,
                     size_t size)
{
    snprintf(out, size, "%s=%s; Path=/; Max-Age=%ld; HttpOnly; SameSite=Lax%s", name, value,
             max_age, edge->config->cookie_secure ? "; Secure" : "");
}

static void s_on_touch(void *arg, const sh_reply_t *reply)
{
    edge_req_t req;
    edge_t *edge = s_call_done(arg, reply, &req);
    if (!edge)
        return;
    const sh_session_touch_rep_t *rec = reply->body;
    char id[SH_SESSION_MAX + 1], instance[SH_ID_MAX + 1];
    sh_str_copy(rec->id, id, sizeof id);
    sh_str_copy(reply->env->instance, instance, sizeof instance);
    /*  the logged-in user, if any (null for an anonymous session)  */
    json_t *user = rec->user_id ? json_pack("{s:I, s:s%}", "id", (json_int_t)rec->user_id,
                                            "username", rec->username.ptr ? rec->username.ptr : "",
                                            (size_t)rec->username.len)
                                : json_null();
    json_t *body =
        json_pack("{s:I, s:I, s:s, s:s, s:o}", "views", (json_int_t)rec->views, "created_at",
                  (json_int_t)rec->created_at, "edge", edge->config->base.instance,
                  "session_instance", instance, "user", user);
    const char *names[2] = {NULL}, *values[2] = {NULL};
    char cookie[EDGE_COOKIE_ATTR_MAX];
    if (rec->created) {
        /*  the browser keeps the cookie as long as the session can live  */
        edge_api_cookie(edge, EDGE_COOKIE_NAME, id, (long)edge->config->cookie_max_age, cookie,
                        sizeof cookie);
        names[0] = "set-cookie:";
        values[0] = cookie;
    }
    edge_api_json(&req, 200, body, names, values);
}

static void s_on_destroy(void *arg, const sh_reply_t *reply)
{
    edge_req_t req;
    edge_t *edge = s_call_done(arg, reply, &req);
    if (!edge)
        return;
    char cookie[EDGE_COOKIE_ATTR_MAX];
    edge_api_cookie(edge, EDGE_COOKIE_NAME, "", 0, cookie, sizeof cookie);
    edge_resp_t resp = {204, NULL, NULL, 0, {"set-cookie:"}, {cookie}};
    edge_http_respond(req.conn, &resp);
}

bool edge_api_same_origin(edge_t *edge, const edge_req_t *req)
{
    if (req->fetch_site[0] && strcmp(req->fetch_site, "same-origin") != 0 &&
        strcmp(req->fetch_site, "none") != 0)
        return false;
    if (!req->origin[0])
        return true;
    const char *at = strstr(req->origin, "://");
    if (at && strcmp(at + 3, req->host) == 0)
        return true;
    return edge_origin_listed(edge->config->allowed_origins, req->origin);
}

static void s_session(edge_t *edge, edge_req_t *req)
{
    char traceparent[SH_TRACE_MAX + 1];
    if (req->method == EDGE_GET) {
        s_call_t *call = s_call_new(edge, req);
        if (!call)
            return;
        sh_session_touch_req_t body = {sh_str(req->cookie), true, 0};
        sh_call_opts_t opts = s_opts(edge, req, traceparent);
        /*  a view counts once even when the call is retried elsewhere  */
        char idem[33];
        sh_random_hex(idem, 16);
        opts.idem_key = idem;
        uint64_t handle =
            sh_pool_send(edge->sessions, SH_OP_session_touch, &body, &opts, s_on_touch, call);
        edge_http_await(req->conn, edge->sessions, handle);
        sh_pool_drain(edge->sessions);
    } else if (req->method == EDGE_DELETE) {
        if (!edge_api_same_origin(edge, req)) {
            edge_api_error(edge, req, 403, "forbidden", "cross-origin request refused");
            return;
        }
        s_call_t *call = s_call_new(edge, req);
        if (!call)
            return;
        sh_session_destroy_req_t body = {sh_str(req->cookie), 0};
        sh_call_opts_t opts = s_opts(edge, req, traceparent);
        uint64_t handle =
            sh_pool_send(edge->sessions, SH_OP_session_destroy, &body, &opts, s_on_destroy, call);
        edge_http_await(req->conn, edge->sessions, handle);
        sh_pool_drain(edge->sessions);
    } else
        edge_api_method_not_allowed(edge, req, "GET, DELETE");
}

/*  --- /api/load ------------------------------------------------------------  */

static void s_on_load(void *arg, const sh_reply_t *reply)
{
    edge_req_t req;
    edge_t *edge = s_call_done(arg, reply, &req);
    if (!edge)
        return;
    const sh_load_rep_t *rep = reply->body;
    char instance[SH_ID_MAX + 1];
    sh_str_copy(rep->instance, instance, sizeof instance);
    edge_api_json(&req, 200,
                  json_pack("{s:I, s:s, s:s}", "ms", (json_int_t)rep->ms, "service", "session",
                            "instance", instance),
                  NULL, NULL);
}

/*  Runs on a worker thread: reads only job->ms.  */
static void s_burn(void *arg)
{
    const edge_job_t *job = arg;
    sh_workers_burn_cpu(job->ms);
}

static void s_load(edge_t *edge, edge_req_t *req)
{
    if (req->method != EDGE_GET) {
        edge_api_method_not_allowed(edge, req, "GET");
        return;
    }
    const char *ms_text = edge_arg_find(req->args, req->args_len, "ms");
    const char *service = edge_arg_find(req->args, req->args_len, "service");
    int64_t ms;
    if (!ms_text || sh_parse_int(ms_text, 0, edge->config->base.load_max_ms, &ms)) {
        char why[96];
        snprintf(why, sizeof why, "ms must be a whole number from 0 to %lld",
                 (long long)edge->config->base.load_max_ms);
        edge_api_error(edge, req, 400, "invalid", why);
        return;
    }
    if (!service || strcmp(service, "edge") == 0) {
        edge_job_t *job = calloc(1, sizeof *job);
        if (!job) {
            edge_api_error(edge, req, 500, "internal", "out of memory");
            return;
        }
        job->ms = (uint64_t)ms;
        job->conn = req->conn;
        if (sh_workers_submit(edge->workers, s_burn, job)) {
            free(job);
            edge_api_error(edge, req, 503, "unavailable", "busy: load queue full");
            return;
        }
        edge_http_await_job(req->conn, job);
        return;
    }
    if (strcmp(service, "session") != 0) {
        edge_api_error(edge, req, 400, "invalid", "service must be edge or session");
        return;
    }
    s_call_t *call = s_call_new(edge, req);
    if (!call)
        return;
    char traceparent[SH_TRACE_MAX + 1];
    sh_load_req_t body = {(uint64_t)ms, 0};
    sh_call_opts_t opts = s_opts(edge, req, traceparent);
    /*  the service needs the whole burn time inside the deadline, and an
        attempt is not late before the burn could have finished  */
    opts.deadline_ms += ms;
    opts.attempt_ms = ms + edge->config->request_timeout_ms / 2;

    uint64_t handle = sh_pool_send(edge->sessions, SH_OP_load, &body, &opts, s_on_load, call);
    edge_http_await(req->conn, edge->sessions, handle);
    sh_pool_drain(edge->sessions);
}

/*  --- registry and /api/cluster ---------------------------------------------------  */

void edge_api_beat(edge_t *edge)
{
    if (!edge->registry)
        return;
    edge->last_beat_ms = sh_clock_mono_ms();
    uint64_t in_flight = (uint64_t)edge_api_in_flight(edge);
    uint64_t state = edge->draining                                       ? SH_MEMBER_DRAINING
                     : in_flight >= (uint64_t)edge->config->base.capacity ? SH_MEMBER_BUSY
                                                                          : SH_MEMBER_UP;
    sh_member_t me;
    sh_registry_describe(&me, "edge", edge->config->base.instance, edge->advertised, state,
                         (uint64_t)edge->config->base.capacity, in_flight,
                         (uint64_t)sh_workers_outstanding(edge->workers), *edge->http_requests,
                         edge->started_ms);
    sh_registry_beat(edge->registry, &me, sh_clock_wall_ms() + edge->config->base.heartbeat_ms);
    sh_registry_drain(edge->registry);
}

static json_t *s_member_json(const sh_member_t *m)
{
    char service[SH_NAME_MAX + 1], instance[SH_ID_MAX + 1], version[SH_NAME_MAX + 1];
    char address[SH_ADDR_MAX + 1];
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:I, s:I}",
                     "service", sh_str_copy(m->service, service, sizeof service), "instance",
                     sh_str_copy(m->instance, instance, sizeof instance), "state",
                     sh_member_state_word(m->state), "address",
                     sh_str_copy(m->endpoint, address, sizeof address), "version",
                     sh_str_copy(m->version, version, sizeof version), "uptime_s",
                     (json_int_t)(m->uptime_ms / 1000), "heartbeat_age_ms",
                     (json_int_t)m->heartbeat_age_ms, "in_flight", (json_int_t)m->in_flight,
                     "queue", (json_int_t)m->queue, "rps", (double)m->rps_milli / 1000.0, "cpu_pct",
                     (double)m->cpu_permille / 10.0, "rss_bytes", (json_int_t)m->rss_bytes,
                     "capacity", (json_int_t)m->capacity, "pid", (json_int_t)m->pid);
}

static void s_on_members(void *arg, const sh_reply_t *reply)
{
    edge_req_t req;
    edge_t *edge = s_call_done(arg, reply, &req);
    if (!edge)
        return;
    const sh_members_rep_t *rep = reply->body;
    json_t *instances = json_array();
    for (uint32_t i = 0; i < rep->members.count; i++)
        json_array_append_new(instances, s_member_json(&rep->members.items[i]));
    json_t *healths = json_array();
    bool reachable = false;
    const char *endpoint;
    for (int i = 0; (endpoint = sh_registry_health(edge->registry, i, &reachable)); i++)
        json_array_append_new(healths,
                              json_pack("{s:s, s:b}", "address", endpoint, "reachable", reachable));
    char answered[SH_ID_MAX + 1];
    sh_str_copy(rep->instance, answered, sizeof answered);
    edge_api_json(&req, 200,
                  json_pack("{s:I, s:s, s:o, s:o}", "generated_at", (json_int_t)sh_clock_wall_ms(),
                            "source", answered, "instances", instances, "health", healths),
                  NULL, NULL);
}

/*  The operator views are GETs answered from the registry: true when
    this request may go on, else the error reply was sent.  */
static bool s_registry_get(edge_t *edge, edge_req_t *req)
{
    if (req->method != EDGE_GET) {
        edge_api_method_not_allowed(edge, req, "GET");
        return false;
    }
    if (!edge->registry) {
        edge_api_error(edge, req, 503, "unavailable",
                       "no registry configured (set SHOAL_HEALTH_ENDPOINTS)");
        return false;
    }
    return true;
}

static void s_cluster(edge_t *edge, edge_req_t *req)
{
    if (!s_registry_get(edge, req))
        return;
    s_call_t *call = s_call_new(edge, req);
    if (!call)
        return;
    char traceparent[SH_TRACE_MAX + 1];
    sh_members_req_t body = {sh_str(""), 0};
    sh_call_opts_t opts = s_opts(edge, req, traceparent);
    sh_pool_t *pool = sh_registry_pool(edge->registry);
    uint64_t handle = sh_pool_send(pool, SH_OP_members, &body, &opts, s_on_members, call);
    edge_http_await(req->conn, pool, handle);
    sh_pool_drain(pool);
}

/*  --- /metrics/cluster: every instance's metrics in one exposition ---------------  */

typedef struct {
    edge_job_t job; /* job.conn is NULLed if the client leaves */
    edge_t *edge;
    int64_t started_us;
    int waiting;
    char **texts;
    int count;
} s_scrape_t;

static void s_scrape_finish(s_scrape_t *scrape)
{
    if (--scrape->waiting > 0)
        return;
    edge_t *edge = scrape->edge;
    if (scrape->job.conn) {
        /*  this edge's own series first, then every instance's  */
        sh_buf_t own = {0}, merged = {0};
        sh_metrics_render(edge->metrics, &own);
        scrape->texts[scrape->count++] = own.data ? own.data : strdup("");
        own.data = NULL;
        sh_metrics_merge((const char *const *)scrape->texts, scrape->count, &merged);
        edge_resp_t resp = {200,
                            "text/plain; version=0.0.4; charset=utf-8",
                            merged.data ? merged.data : "",
                            merged.len,
                            {NULL},
                            {NULL}};
        edge_http_respond(scrape->job.conn, &resp);
        sh_buf_free(&merged);
    }
    for (int i = 0; i < scrape->count; i++)
        free(scrape->texts[i]);
    free(scrape->texts);
    free(scrape);
}

static void s_on_scrape_reply(void *arg, const sh_reply_t *reply)
{
    s_scrape_t *scrape = arg;
    if (reply->status == SH_STATUS_OK && reply->body) {
        const sh_metrics_rep_t *rep = reply->body;
        char *text = malloc(rep->text.len + 1);
        if (text) {
            sh_str_copy(rep->text, text, rep->text.len + 1);
            scrape->texts[scrape->count++] = text;
        }
    }
    s_scrape_finish(scrape);
}

static void s_on_scrape_members(void *arg, const sh_reply_t *reply)
{
    s_scrape_t *scrape = arg;
    edge_t *edge = scrape->edge;
    if (reply->status != SH_STATUS_OK || !reply->body) {
        if (scrape->job.conn) {
            edge_req_t req = {0};
            req.conn = scrape->job.conn;
            req.started_us = scrape->started_us;
            scrape->job.conn = NULL;
            edge_api_call_error(edge, &req, reply);
        }
        s_scrape_finish(scrape);
        return;
    }
    const sh_members_rep_t *rep = reply->body;
    /*  one slot per instance plus this edge's own text  */
    scrape->texts = calloc(rep->members.count + 1, sizeof *scrape->texts);
    if (!scrape->texts) {
        scrape->job.conn = NULL;
        s_scrape_finish(scrape);
        return;
    }
    for (uint32_t i = 0; i < rep->members.count; i++) {
        const sh_member_t *m = &rep->members.items[i];
        if (sh_str_eq(m->service, "edge") || m->state == SH_MEMBER_DEAD)
            continue;
        char instance[SH_ID_MAX + 1];
        sh_str_copy(m->instance, instance, sizeof instance);
        sh_pool_update(edge->scrape, m);
        sh_metrics_req_t body = {0};
        sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + edge->config->request_timeout_ms,
                               .instance = instance};
        scrape->waiting++;
        sh_pool_send(edge->scrape, SH_OP_metrics, &body, &opts, s_on_scrape_reply, scrape);
    }
    sh_pool_drain(edge->scrape);
    s_scrape_finish(scrape); /* the members call itself */
}

static void s_metrics_cluster(edge_t *edge, edge_req_t *req)
{
    if (!s_registry_get(edge, req))
        return;
    s_scrape_t *scrape = calloc(1, sizeof *scrape);
    if (!scrape) {
        edge_api_error(edge, req, 500, "internal", "out of memory");
        return;
    }
    scrape->edge = edge;
    scrape->started_us = req->started_us;
    scrape->job.conn = req->conn;
    scrape->waiting = 1;
    edge_http_await_job(req->conn, &scrape->job);
    sh_members_req_t body = {sh_str(""), 0};
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + edge->config->request_timeout_ms};
    sh_pool_t *pool = sh_registry_pool(edge->registry);
    sh_pool_send(pool, SH_OP_members, &body, &opts, s_on_scrape_members, scrape);
    sh_pool_drain(pool);
}

/*  --- /metrics ----
----------------------------------------------------------  */

static void s_metrics(edge_t *edge, edge_req_t *req)
{
    if (req->method != EDGE_GET) {
        edge_api_method_not_allowed(edge, req, "GET");
        return;
    }
    *sh_metrics_gauge(edge->metrics, "shoal_rss_bytes", "Resident memory", NULL) =
        (int64_t)sh_process_rss();
    *sh_metrics_gauge(edge->metrics, "shoal_in_flight", "Calls waiting for a service", NULL) =
        edge_api_in_flight(edge);
    sh_buf_t text = {0};
    if (sh_metrics_render(edge->metrics, &text)) {
        edge_api_error(edge, req, 500, "internal", "out of memory");
        return;
    }
    edge_resp_t resp = {
        200, "text/plain; version=0.0.4; charset=utf-8", text.data, text.len, {NULL}, {NULL}};
    edge_http_respond(req->conn, &resp);
    sh_buf_free(&text);
}

int64_t edge_api_in_flight(const edge_t *edge)
{
    return sh_pool_in_flight(edge->sessions) + sh_pool_in_flight(edge->queries);
}

int edge_api_handle(edge_t *edge, edge_req_t *req)
{
    const char *path = req->path;
    if (strncmp(path, "/health/", 8) == 0 || strcmp(path, "/health") == 0)
        s_health(edge, req);
    else if (strcmp(path, "/metrics") == 0)
        s_metrics(edge, req);
    else if (strcmp(path, "/metrics/cluster") == 0)
        s_metrics_cluster(edge, req);

    else if (strcmp(path, "/api/session") == 0)
        s_session(edge, req);
    else if (strcmp(path, "/api/load") == 0)
        s_load(edge, req);
    else if (strcmp(path, "/api/cluster") == 0)
        s_cluster(edge, req);
    else if (edge_upload_handle(edge, req) || edge_board_handle(edge, req))
        ;
    else if (strncmp(path, "/api/", 5) == 0 || strcmp(path, "/api") == 0)
        edge_api_error(edge, req, 404, "not_found", "no such API path");
    else
        return 0;
    return 1;
}
