/*  sh_service.c - request intake, standard operations and draining.  */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "sh_log.h"
#include "sh_pool.h"
#include "sh_registry.h"
#include "sh_service.h"
#include "sh_workers.h"

#define SH_SERVICE_BATCH       256 /* requests read per wake-up before others get a turn */
#define SH_SERVICE_LOAD_QUEUE  4   /* queued load jobs per worker */
#define SH_SERVICE_TICK_MS     100
#define SH_SERVICE_VERSION     "0.1.0"
#define SH_SERVICE_REGISTRY_MS 20 /* registry housekeeping */
#define SH_SERVICE_DRAIN_BEATS 2  /* heartbeats callers get to learn we leave */

typedef struct {
    sh_handler_fn *fn;
    void *arg;
    bool while_draining; /* served during the drain (work already begun) */
    uint64_t *requests;  /* shoal_requests_total{op} */
    sh_histogram_t *latency;
} s_route_t;

struct sh_service_t {
    char name[SH_NAME_MAX + 1];
    char instance[SH_ID_MAX + 1];
    char endpoint[SH_ENDPOINT_MAX];
    const sh_base_config_t *base;
    void *router;
    sh_loop_t *loop;
    sh_metrics_t *metrics;
    sh_workers_t *workers;
    int signal_fd;
    int64_t started_ms;
    bool draining;
    int64_t drain_started_ms;
    int64_t drain_deadline_ms;
    int64_t in_flight;
    int64_t holds;     /* work outside requests the drain waits for */
    s_route_t *routes; /* indexed like sh_op_table */
    uint64_t *malformed;
    uint64_t *expired;
    uint64_t *unroutable;
    uint64_t *errors;
    uint64_t *requests_all;
    int64_t *in_flight_gauge;
    int64_t *rss_gauge;
    sh_registry_t *registry; /* NULL without health endpoints */
    char advertised[SH_ENDPOINT_MAX];
    char events[SH_ENDPOINT_MAX];       /* advertised PUB endpoint of its live events, or "" */
    sh_pool_t *pools[SH_SERVICE_POOLS]; /* calls to other services */
    int pool_count;
    sh_registry_t *watcher; /* membership for the pools; NULL without them */
};

/*  A job on the worker threads: work runs there, done back on the loop.  */
typedef struct {
    sh_job_fn *work;
    sh_service_done_fn *done;
    void *arg;
} s_job_t;

typedef struct {
    uint64_t ms;
    sh_request_t *request; /* touched only by the loop thread */
} s_load_job_t;

static int s_route_index(uint64_t type)
{
    const sh_op_info_t *op = sh_op_find(type);
    return op ? (int)(op - sh_op_table) : -1;
}

static void s_request_free(sh_request_t **request_p)
{
    sh_request_t *request = *request_p;
    if (!request)
        return;
    sh_frames_close(&request->frames);
    free(request->body);
    free(request);
    *request_p = NULL;
}

/*  The reply envelope of a request.  */
static void s_reply_env(const sh_service_t *self, const sh_request_t *request, uint64_t status,
                        const char *error, sh_envelope_t *env)
{
    memset(env, 0, sizeof *env);
    env->version = SH_PROTO_VERSION;
    env->kind = SH_KIND_REPLY;
    env->type = request->env.type;
    env->request_id = request->env.request_id;
    env->traceparent = request->env.traceparent;
    env->status = status;
    env->error = sh_str(error);
    if (env->error.len > SH_ERROR_MAX)
        env->error.len = SH_ERROR_MAX;
    env->instance = sh_str(self->instance);
}

/*  After a reply was sent (sent: 0) or not: count it and free the request.  */
static void s_replied(sh_service_t *self, sh_request_t **request_p, uint64_t status, int sent)
{
    sh_request_t *request = *request_p;
    if (sent) {
        /*  the caller vanished (EHOSTUNREACH) or is not reading (EAGAIN)  */
        sh_log(SH_LOG_WARN, request->rid, "reply dropped: %s", zmq_strerror(errno));
        (*sh_metrics_counter(self->metrics, "shoal_replies_dropped_total",
                             "Replies that could not be delivered to the caller", NULL))++;
    }
    if (status != SH_STATUS_OK)
        (*self->errors)++;
    if (request->op) {
        s_route_t *route = &self->routes[request->op - sh_op_table];
        sh_histogram_observe(route->latency,
                             (double)(sh_clock_mono_us() - request->received_us) / 1e6);
        if (status != SH_STATUS_OK) {
            char labels[96];
            snprintf(labels, sizeof labels, "op=\"%s\",status=\"%s\"", request->op->name,
                     sh_status_code(status));
            (*sh_metrics_counter(self->metrics, "shoal_request_errors_total",
                                 "Requests answered with an error status", labels))++;
        }
        self->in_flight--;
    }
    s_request_free(request_p);
}

void sh_service_reply(sh_service_t *self, sh_request_t **request_p, uint64_t status,
                      const char *error, const void *body)
{
    sh_request_t *request = *request_p;
    if (!request)
        return;
    const sh_codec_t *codec = request->op ? request->op->reply : &sh_ping_req_codec;
    _Alignas(max_align_t) char empty[1024] = {0};
    if (!body) {
        if (codec->size > sizeof empty)
            codec = &sh_ping_req_codec;
        body = empty;
    }
    sh_envelope_t env;
    s_reply_env(self, request, status, error, &env);
    int rc = sh_transport_send(self->router, &request->frames.frames[0], &env, codec, body, NULL,
                               NULL, 0);
    s_replied(self, request_p, status, rc);
}

void sh_service_reply_encoded(sh_service_t *self, sh_request_t **request_p, const void *body,
                              size_t len)
{
    sh_request_t *request = *request_p;
    if (!request)
        return;
    sh_envelope_t env;
    s_reply_env(self, request, SH_STATUS_OK, NULL, &env);
    zmq_msg_t *identity = &request->frames.frames[0];
    int rc = sh_transport_send_encoded(self->router, zmq_msg_data(identity), zmq_msg_size(identity),
                                       &env, body, len, NULL, 0);
    s_replied(self, request_p, SH_STATUS_OK, rc);
}

void sh_service_reply_raw(sh_service_t *self, sh_request_t **request_p, const void *body,
                          const void *raw, size_t len)
{
    sh_request_t *request = *request_p;
    if (!request)
        return;
    size_t body_len = 0;
    const void *encoded = sh_transport_encode_scratch(request->op->reply, body, &body_len);
    if (!encoded) {
        sh_service_reply(self, request_p, SH_STATUS_INTERNAL, "reply exceeds the limits", NULL);
        return;
    }
    sh_envelope_t env;
    s_reply_env(self, request, SH_STATUS_OK, NULL, &env);
    zmq_msg_t *identity = &request->frames.frames[0];
    int rc = sh_transport_send_encoded(self->router, zmq_msg_data(identity), zmq_msg_size(identity),
                                       &env, encoded, body_len, raw ? raw : "", len);
    s_replied(self, request_p, SH_STATUS_OK, rc);
}

const void *sh_request_raw(const sh_request_t *request, size_t *len)
{
    if (request->frames.count < 4) {
        *len = 0;
        return NULL;
    }
    zmq_msg_t *frame = (zmq_msg_t *)&request->frames.frames[3];
    *len = zmq_msg_size(frame);
    return zmq_msg_data(frame);
}

int64_t sh_request_remaining_ms(const sh_request_t *request, int64_t fallback)
{
    if (!request->env.deadline_ms)
        return fallback;
    int64_t left = (int64_t)request->env.deadline_ms - sh_clock_wall_ms();
    return left < 1 ? 1 : left;
}

/*  --- standard operations ----------------------------------------------  */

static void s_on_ping(sh_service_t *self, sh_request_t *request, void *arg)
{
    (void)arg;
    sh_ping_rep_t rep = {sh_str(self->name), sh_str(self->instance),
                         (uint64_t)(sh_clock_wall_ms() - self->started_ms), 0};
    sh_service_reply(self, &request, SH_STATUS_OK, NULL, &rep);
}

static void s_on_info(sh_service_t *self, sh_request_t *request, void *arg)
{
    (void)arg;
    sh_info_rep_t rep = {0};
    rep.service = sh_str(self->name);
    rep.instance = sh_str(self->instance);
    rep.version = sh_str(SH_SERVICE_VERSION);
    rep.pid = (uint64_t)getpid();
    rep.uptime_ms = (uint64_t)(sh_clock_wall_ms() - self->started_ms);
    rep.rss_bytes = sh_process_rss();
    rep.requests = *self->requests_all;
    rep.errors = *self->errors;
    rep.in_flight = (uint64_t)self->in_flight;
    sh_service_reply(self, &request, SH_STATUS_OK, NULL, &rep);
}

static void s_on_metrics(sh_service_t *self, sh_request_t *request, void *arg)
{
    (void)arg;
    sh_buf_t text = {0};
    if (sh_metrics_render(sh_service_metrics(self), &text) || text.len > SH_METRICS_MAX) {
        sh_buf_free(&text);
        sh_service_reply(self, &request, SH_STATUS_INTERNAL, "metrics do not fit", NULL);
        return;
    }
    sh_metrics_rep_t rep = {{text.data, (uint32_t)text.len}, 0};
    sh_service_reply(self, &request, SH_STATUS_OK, NULL, &rep);
    sh_buf_free(&text);
}

static void s_burn(void *arg)
{
    s_load_job_t *job = arg;
    sh_workers_burn_cpu(job->ms);
}

static void s_on_burnt(sh_service_t *self, void *arg)
{
    s_load_job_t *job = arg;
    sh_load_rep_t rep = {job->ms, sh_str(self->instance), 0};
    sh_service_reply(self, &job->request, SH_STATUS_OK, NULL, &rep);
    free(job);
}

static void s_on_load(sh_service_t *self, sh_request_t *request, void *arg)
{
    (void)arg;
    sh_load_req_t *req = request->body;
    if (req->ms > (uint64_t)self->base->load_max_ms) {
        char why[96];
        snprintf(why, sizeof why, "ms must be at most %lld", (long long)self->base->load_max_ms);
        sh_service_reply(self, &request, SH_STATUS_INVALID, why, NULL);
        return;
    }
    s_load_job_t *job = calloc(1, sizeof *job);
    if (!job) {
        sh_service_reply(self, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
        return;
    }
    job->ms = req->ms;
    job->request = request;
    if (sh_service_offload(self, s_burn, s_on_burnt, job)) {
        free(job);
        sh_service_reply(self, &request, SH_STATUS_UNAVAILABLE, "busy: load queue full", NULL);
    }
}

static void s_run_job(void *arg)
{
    s_job_t *job = arg;
    job->work(job->arg);
}

int sh_service_offload(sh_service_t *self, sh_job_fn *work, sh_service_done_fn *done, void *arg)
{
    s_job_t *job = malloc(sizeof *job);
    if (!job)
        return -1;
    *job = (s_job_t){work, done, arg};
    if (sh_workers_submit(self->workers, s_run_job, job)) {
        free(job);
        return -1;
    }
    return 0;
}

static int s_on_workers(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_service_t *self = arg;
    void *finished;
    while (sh_workers_recv(self->workers, &finished) == 0) {
        s_job_t *job = finished;
        job->done(self, job->arg);
        free(job);
    }
    return 0;
}

/*  --- intake ------------------------------------------------------------  */

/*  Reply to a request that never reached a handler (no op accounting).  */
static void s_reject(sh_service_t *self, sh_request_t **request_p, uint64_t status, const char *why)
{
    sh_log(SH_LOG_DEBUG, (*request_p)->rid, "rejected: %s", why);
    (*request_p)->op = NULL;
    sh_service_reply(self, request_p, status, why, NULL);
}

static void s_intake(sh_service_t *self, sh_request_t *request)
{
    (*self->requests_all)++;
    if (request->frames.count < 3 || request->frames.truncated) {
        (*self->malformed)++;
        /*  no envelope to answer: drop, counted  */
        s_request_free(&request);
        return;
    }
    zmq_msg_t *env_frame = &request->frames.frames[1];
    int rc = sh_codec_decode(&sh_envelope_codec, &request->env, zmq_msg_data(env_frame),
                             zmq_msg_size(env_frame));
    sh_str_copy(request->env.request_id, request->rid, sizeof request->rid);
    if (rc) {
        (*self->malformed)++;
        s_reject(self, &request, SH_STATUS_MALFORMED, sh_codec_strerror(rc));
        return;
    }
    if (request->env.version != SH_PROTO_VERSION || request->env.kind != SH_KIND_REQUEST) {
        (*self->malformed)++;
        s_reject(self, &request, SH_STATUS_UNSUPPORTED, "unsupported version or kind");
        return;
    }
    int index = s_route_index(request->env.type);
    if (index < 0 || !self->routes[index].fn) {
        (*self->unroutable)++;
        s_reject(self, &request, SH_STATUS_UNSUPPORTED, "unknown operation");
        return;
    }
    if (request->env.deadline_ms && (int64_t)request->env.deadline_ms <= sh_clock_wall_ms()) {
        (*self->expired)++;
        s_reject(self, &request, SH_STATUS_TIMEOUT, "deadline passed before work started");
        return;
    }
    const sh_op_info_t *op = &sh_op_table[index];
    request->body = calloc(1, op->request->size);
    zmq_msg_t *body_frame = &request->frames.frames[2];
    rc = request->body ? sh_codec_decode(op->request, request->body, zmq_msg_data(body_frame),
                                         zmq_msg_size(body_frame))
                       : SH_DECODE_TOO_LARGE;
    if (rc) {
        (*self->malformed)++;
        s_reject(self, &request, SH_STATUS_MALFORMED, sh_codec_strerror(rc));
        return;
    }
    if (self->draining && op->type != SH_OP_ping && !self->routes[index].while_draining) {
        s_reject(self, &request, SH_STATUS_DRAINING, "draining");
        return;
    }
    request->op = op;
    self->in_flight++;
    (*self->routes[index].requests)++;
    self->routes[index].fn(self, request, self->routes[index].arg);
}

static int s_on_router(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_service_t *self = arg;
    for (int i = 0; i < SH_SERVICE_BATCH; i++) {
        sh_request_t *request = calloc(1, sizeof *request);
        if (!request)
            return 0;
        if (sh_frames_recv(self->router, &request->frames) != 0) {
            free(request);
            break;
        }
        request->received_us = sh_clock_mono_us();
        s_intake(self, request);
    }
    return 0;
}

/*  --- registry ------------------------------------------------------------  */

static uint64_t s_state(const sh_service_t *self)
{
    if (self->draining)
        return SH_MEMBER_DRAINING;
    if (self->in_flight >= self->base->capacity ||
        sh_workers_outstanding(self->workers) >= (int)self->base->workers * SH_SERVICE_LOAD_QUEUE)
        return SH_MEMBER_BUSY;
    return SH_MEMBER_UP;
}

/*  Runs on the loop, which never blocks: a busy instance reports busy,
    it never goes silent.  */
static int s_on_beat(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_service_t *self = arg;
    sh_member_t me;
    sh_registry_describe(&me, self->name, self->instance, self->advertised, s_state(self),
                         (uint64_t)self->base->capacity, (uint64_t)self->in_flight,
                         (uint64_t)sh_workers_outstanding(self->workers), *self->requests_all,
                         self->started_ms);
    me.events = sh_str(self->events);
    sh_registry_beat(self->registry, &me, sh_clock_wall_ms() + self->base->heartbeat_ms);
    sh_registry_drain(self->registry);
    return 0;
}

static int s_on_registry(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_service_t *self = arg;
    sh_registry_drain(self->registry);
    return 0;
}

static int s_on_registry_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_service_t *self = arg;
    sh_registry_tick(self->registry);
    return 0;
}

static int s_on_signal(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_service_t *self = arg;
    struct signalfd_siginfo info;
    if (read(self->signal_fd, &info, sizeof info) != (ssize_t)sizeof info)
        return 0;
    if (self->draining) {
        sh_warn("second signal %u: exiting now", info.ssi_signo);
        return -1;
    }
    self->draining = true;
    self->drain_started_ms = sh_clock_mono_ms();
    self->drain_deadline_ms = self->drain_started_ms + self->base->drain_timeout_ms;
    sh_info("signal %u: draining %lld in-flight requests", info.ssi_signo,
            (long long)self->in_flight);
    if (self->registry) {
        /*  say so at once: callers stop sending new work here  */
        s_on_beat(loop, self);
        sh_registry_leave(self->registry, self->name, self->instance);
        sh_registry_drain(self->registry);
    }
    return 0;
}

static int s_on_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_service_t *self = arg;
    *self->in_flight_gauge = self->in_flight;
    if (self->draining) {
        /*  with a registry, stay a few heartbeats so callers learn we leave;
            what they still send meanwhile is refused as draining, unapplied  */
        int64_t grace = self->registry ? self->base->heartbeat_ms * SH_SERVICE_DRAIN_BEATS : 0;
        if (self->in_flight == 0 && self->holds == 0 &&
            sh_clock_mono_ms() - self->drain_started_ms >= grace) {
            sh_info("drained; exiting");
            return -1;
        }
        if (sh_clock_mono_ms() >= self->drain_deadline_ms) {
            sh_warn("drain timeout with %lld requests in flight and %lld held; exiting",
                    (long long)self->in_flight, (long long)self->holds);
            return -1;
        }
    }
    return 0;
}

int sh_process_start(const char *name, const sh_base_config_t *base)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    sh_crypto_init();
    sh_log_init(name, base->instance, (sh_log_level_t)sh_log_level_parse(base->log_level),
                base->log_json);
    return signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
}

sh_service_t *sh_service_new(const char *name, const sh_base_config_t *base, const char *bind)
{
    int signal_fd = sh_process_start(name, base);

    sh_service_t *self = calloc(1, sizeof *self);
    if (!self) {
        if (signal_fd >= 0)
            close(signal_fd);
        return NULL;
    }
    snprintf(self->name, sizeof self->name, "%s", name);
    snprintf(self->instance, sizeof self->instance, "%s", base->instance);
    self->base = base;
    self->started_ms = sh_clock_wall_ms();
    self->signal_fd = signal_fd;
    self->loop = sh_loop_new();
    self->metrics = sh_metrics_new(name, base->instance);
    self->routes = calloc(sh_op_count, sizeof *self->routes);
    self->workers = sh_workers_new((int)base->workers, (int)base->workers * SH_SERVICE_LOAD_QUEUE);
    self->router = sh_transport_router(bind, self->endpoint, sizeof self->endpoint);
    if (!self->router)
        sh_error("cannot bind %s: %s", bind, zmq_strerror(errno));
    if (self->signal_fd < 0 || !self->loop || !self->metrics || !self->routes || !self->workers ||
        !self->router) {
        sh_service_destroy(&self);
        return NULL;
    }
    sh_metrics_t *m = self->metrics;
    self->requests_all = sh_metrics_counter(m, "shoal_requests_received_total",
                                            "Requests received, valid or not", NULL);
    self->malformed = sh_metrics_counter(m, "shoal_requests_malformed_total",
                                         "Requests rejected as malformed or unsupported", NULL);
    self->expired = sh_metrics_counter(m, "shoal_requests_expired_total",
                                       "Requests whose deadline passed before work started", NULL);
    self->unroutable = sh_metrics_counter(m, "shoal_requests_unknown_op_total",
                                          "Requests for an operation this service lacks", NULL);
    self->errors = sh_metrics_counter(m, "shoal_replies_error_total",
                                      "Replies with a status other than ok", NULL);
    self->in_flight_gauge =
        sh_metrics_gauge(m, "shoal_in_flight", "Requests being worked on", NULL);
    self->rss_gauge = sh_metrics_gauge(m, "shoal_rss_bytes", "Resident memory", NULL);
    for (size_t i = 0; i < sh_op_count; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "op=\"%s\"", sh_op_table[i].name);
        self->routes[i].requests =
            sh_metrics_counter(m, "shoal_requests_total", "Requests handed to a handler", labels);
        self->routes[i].latency =
            sh_metrics_histogram(m, "shoal_request_seconds", "Time from receipt to reply", labels);
    }
    sh_service_handle(self, SH_OP_ping, s_on_ping, NULL);
    sh_service_handle(self, SH_OP_info, s_on_info, NULL);
    sh_service_handle(self, SH_OP_load, s_on_load, NULL);
    sh_service_handle(self, SH_OP_metrics, s_on_metrics, NULL);

    sh_loop_add_socket(self->loop, self->router, ZMQ_POLLIN, s_on_router, self);
    sh_loop_add_socket(self->loop, sh_workers_socket(self->workers), ZMQ_POLLIN, s_on_workers,
                       self);
    sh_loop_add_fd(self->loop, self->signal_fd, ZMQ_POLLIN, s_on_signal, self);
    sh_loop_timer(self->loop, SH_SERVICE_TICK_MS, true, s_on_tick, self);
    if (sh_registry_advertise(base->advertise, self->endpoint, self->advertised,
                              sizeof self->advertised)) {
        sh_error("advertised endpoint too long");
        sh_service_destroy(&self);
        return NULL;
    }
    if (base->health_endpoints && base->health_endpoints[0]) {
        self->registry = sh_registry_new(base->health_endpoints, NULL, NULL, self->metrics);
        if (!self->registry) {
            sh_error("invalid health_endpoints \"%s\"", base->health_endpoints);
            sh_service_destroy(&self);
            return NULL;
        }
        void *sockets[SH_REGISTRY_SOCKETS];
        int n = sh_registry_sockets(self->registry, sockets, SH_REGISTRY_SOCKETS);
        for (int i = 0; i < n; i++)
            sh_loop_add_socket(self->loop, sockets[i], ZMQ_POLLIN, s_on_registry, self);
        sh_loop_timer(self->loop, base->heartbeat_ms, true, s_on_beat, self);
        sh_loop_timer(self->loop, SH_SERVICE_REGISTRY_MS, true, s_on_registry_tick, self);
        s_on_beat(self->loop, self);
    }
    sh_info("%s listening on %s (advertised %s)", name, self->endpoint, self->advertised);
    return self;
}

void sh_service_destroy(sh_service_t **self_p)
{
    sh_service_t *self = *self_p;
    if (!self)
        return;
    sh_registry_destroy(&self->watcher);
    for (int i = 0; i < self->pool_count; i++)
        sh_pool_destroy(&self->pools[i]);
    sh_workers_destroy(&self->workers);
    sh_registry_destroy(&self->registry);
    sh_transport_close(&self->router);
    sh_loop_destroy(&self->loop);
    sh_metrics_destroy(&self->metrics);
    if (self->signal_fd >= 0)
        close(self->signal_fd);
    free(self->routes);
    free(self);
    *self_p = NULL;
}

int sh_service_serve_while_draining(sh_service_t *self, uint64_t type)
{
    int index = s_route_index(type);
    if (index < 0)
        return -1;
    self->routes[index].while_draining = true;
    return 0;
}

void sh_service_hold(sh_service_t *self, int delta)
{
    self->holds += delta;
}

int sh_service_handle(sh_service_t *self, uint64_t type, sh_handler_fn *fn, void *arg)
{
    int index = s_route_index(type);
    if (index < 0)
        return -1;
    self->routes[index].fn = fn;
    self->routes[index].arg = arg;
    return 0;
}

/*  --- pools to other services ---------------------------------------------  */

static void s_on_member(void *arg, const sh_member_t *member)
{
    sh_service_t *self = arg;
    char service[SH_NAME_MAX + 1];
    sh_str_copy(member->service, service, sizeof service);
    for (int i = 0; i < self->pool_count; i++)
        if (strcmp(sh_pool_service(self->pools[i]), service) == 0)
            sh_pool_update(self->pools[i], member);
}

static int s_on_pool(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_pool_drain(arg);
    return 0;
}

static int s_on_watcher(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    (void)revents;
    sh_registry_drain(arg);
    return 0;
}

static int s_on_pools_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_service_t *self = arg;
    if (self->watcher)
        sh_registry_tick(self->watcher);
    for (int i = 0; i < self->pool_count; i++) {
        sh_pool_tick(self->pools[i]);
        sh_pool_drain(self->pools[i]);
    }
    return 0;
}

sh_pool_t *sh_service_pool(sh_service_t *self, const char *service, const char *endpoints)
{
    if (self->pool_count == SH_SERVICE_POOLS)
        return NULL;
    sh_pool_t *pool = sh_pool_new(service, self->metrics);
    if (!pool)
        return NULL;
    char list[4096];
    snprintf(list, sizeof list, "%s", endpoints ? endpoints : "");
    char *save = NULL;
    for (char *ep = strtok_r(list, ", ", &save); ep; ep = strtok_r(NULL, ", ", &save))
        if (sh_pool_add(pool, ep)) {
            sh_error("invalid %s endpoint \"%s\"", service, ep);
            sh_pool_destroy(&pool);
            return NULL;
        }
    void *sockets[SH_POOL_SOCKETS];
    int n = sh_pool_sockets(pool, sockets, SH_POOL_SOCKETS);
    for (int i = 0; i < n; i++)
        sh_loop_add_socket(self->loop, sockets[i], ZMQ_POLLIN, s_on_pool, pool);
    if (self->pool_count == 0)
        sh_loop_timer(self->loop, SH_SERVICE_REGISTRY_MS, true, s_on_pools_tick, self);
    self->pools[self->pool_count++] = pool;
    const char *health = self->base->health_endpoints;
    if (!self->watcher && health && health[0]) {
        self->watcher = sh_registry_new(health, s_on_member, self, NULL);
        if (self->watcher) {
            void *watched[SH_REGISTRY_SOCKETS];
            int k = sh_registry_sockets(self->watcher, watched, SH_REGISTRY_SOCKETS);
            for (int i = 0; i < k; i++)
                sh_loop_add_socket(self->loop, watched[i], ZMQ_POLLIN, s_on_watcher, self->watcher);
        }
    }
    return pool;
}

sh_loop_t *sh_service_loop(sh_service_t *self)
{
    return self->loop;
}

sh_metrics_t *sh_service_metrics(sh_service_t *self)
{
    *self->rss_gauge = (int64_t)sh_process_rss();
    return self->metrics;
}

const char *sh_service_instance(const sh_service_t *self)
{
    return self->instance;
}

void sh_service_set_events(sh_service_t *self, const char *endpoint)
{
    snprintf(self->events, sizeof self->events, "%s", endpoint ? endpoint : "");
    /*  tell the registry now rather than at the next heartbeat  */
    if (self->registry && !self->draining)
        s_on_beat(self->loop, self);
}

const char *sh_service_endpoint(const sh_service_t *self)
{
    return self->endpoint;
}

bool sh_service_draining(const sh_service_t *self)
{
    return self->draining;
}

int sh_service_run(sh_service_t *self)
{
    return sh_loop_run(self->loop);
}
