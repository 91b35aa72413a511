/*  sh_pool.c - caller pool: least-in-flight choice, deadlines, pings.  */
#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sh_log.h"
#include "sh_pool.h"
#include "sh_transport.h"
#include "sh_util.h"

#define SH_POOL_PING_DEADLINE_MS 1000
#define SH_POOL_DRAIN_BATCH      1024

typedef struct {
    char endpoint[SH_ENDPOINT_MAX];
    void *socket;
    int64_t in_flight;
    int64_t last_ok_ms; /* monotonic time of the last reply */
    int64_t last_ping_ms;
} s_instance_t;

typedef struct s_pending_t {
    struct s_pending_t *prev, *next;
    char rid[SH_ID_MAX + 1];
    uint64_t handle;
    uint64_t type;
    int instance;
    int64_t deadline_ms; /* monotonic */
    sh_reply_fn *fn;     /* NULL when cancelled */
    void *arg;
} s_pending_t;

struct sh_pool_t {
    char service[SH_NAME_MAX + 1];
    char prefix[24];
    uint64_t next_handle;
    s_instance_t instances[SH_POOL_MAX_INSTANCES];
    int count;
    int rotor;
    zhashx_t *by_rid; /* rid -> s_pending_t */
    s_pending_t *head, *tail;
    int64_t pending;
    uint64_t none_metric, late_metric, timeout_metric, sent_metric, bad_metric;
    uint64_t *none, *late, *timeouts, *sent, *bad;
};

static void s_link(sh_pool_t *self, s_pending_t *p)
{
    p->prev = self->tail;
    p->next = NULL;
    if (self->tail)
        self->tail->next = p;
    else
        self->head = p;
    self->tail = p;
    self->pending++;
}

static void s_unlink(sh_pool_t *self, s_pending_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        self->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        self->tail = p->prev;
    self->pending--;
    zhashx_delete(self->by_rid, p->rid);
    if (p->instance >= 0)
        self->instances[p->instance].in_flight--;
}

/*  Answer locally (no reply from an instance).  */
static void s_answer(sh_reply_fn *fn, void *arg, uint64_t status, const char *error)
{
    if (!fn)
        return;
    sh_reply_t reply = {status, error, NULL, NULL};
    fn(arg, &reply);
}

sh_pool_t *sh_pool_new(const char *service, sh_metrics_t *metrics)
{
    sh_pool_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    snprintf(self->service, sizeof self->service, "%s", service);
    char hex[17];
    sh_random_hex(hex, 8);
    snprintf(self->prefix, sizeof self->prefix, "%s", hex);
    self->by_rid = zhashx_new();
    if (!self->by_rid) {
        free(self);
        return NULL;
    }
    char labels[64];
    snprintf(labels, sizeof labels, "target=\"%s\"", service);
    self->none = &self->none_metric;
    self->late = &self->late_metric;
    self->timeouts = &self->timeout_metric;
    self->sent = &self->sent_metric;
    self->bad = &self->bad_metric;
    if (metrics) {
        self->none = sh_metrics_counter(metrics, "shoal_calls_no_instance_total",
                                        "Calls failed at once: no usable instance", labels);
        self->late =
            sh_metrics_counter(metrics, "shoal_calls_late_replies_total",
                               "Replies dropped because their call was already over", labels);
        self->timeouts = sh_metrics_counter(metrics, "shoal_calls_timeouts_total",
                                            "Calls that passed their deadline", labels);
        self->sent = sh_metrics_counter(metrics, "shoal_calls_total", "Calls sent", labels);
        self->bad = sh_metrics_counter(metrics, "shoal_calls_bad_replies_total",
                                       "Replies that could not be decoded", labels);
    }
    return self;
}

void sh_pool_destroy(sh_pool_t **self_p)
{
    sh_pool_t *self = *self_p;
    if (!self)
        return;
    while (self->head) {
        s_pending_t *p = self->head;
        s_unlink(self, p);
        s_answer(p->fn, p->arg, SH_STATUS_UNAVAILABLE, "shutting down");
        free(p);
    }
    for (int i = 0; i < self->count; i++)
        sh_transport_close(&self->instances[i].socket);
    zhashx_destroy(&self->by_rid);
    free(self);
    *self_p = NULL;
}

int sh_pool_add(sh_pool_t *self, const char *endpoint)
{
    if (self->count >= SH_POOL_MAX_INSTANCES || strlen(endpoint) >= SH_ENDPOINT_MAX)
        return -1;
    void *socket = sh_transport_dealer(endpoint);
    if (!socket)
        return -1;
    s_instance_t *inst = &self->instances[self->count++];
    memset(inst, 0, sizeof *inst);
    snprintf(inst->endpoint, sizeof inst->endpoint, "%s", endpoint);
    inst->socket = socket;
    return 0;
}

/*  Instances ordered by in-flight count, ties broken by a rotating start.  */
static int s_order(sh_pool_t *self, int *order)
{
    int n = 0;
    for (int k = 0; k < self->count; k++)
        order[n++] = (self->rotor + k) % self->count;
    self->rotor = self->count ? (self->rotor + 1) % self->count : 0;
    for (int i = 1; i < n; i++) {
        int v = order[i], j = i;
        while (j > 0 && self->instances[order[j - 1]].in_flight > self->instances[v].in_flight) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = v;
    }
    return n;
}

static uint64_t s_send_to(sh_pool_t *self, int only, uint64_t type, const void *body,
                          const sh_call_opts_t *opts, sh_reply_fn *fn, void *arg)
{
    const sh_op_info_t *op = sh_op_find(type);
    if (!op) {
        s_answer(fn, arg, SH_STATUS_INTERNAL, "unknown operation");
        return 0;
    }
    int64_t now_wall = sh_clock_wall_ms();
    if (opts->deadline_ms && opts->deadline_ms <= now_wall) {
        (*self->timeouts)++;
        s_answer(fn, arg, SH_STATUS_TIMEOUT, "deadline passed");
        return 0;
    }
    s_pending_t *p = calloc(1, sizeof *p);
    if (!p) {
        s_answer(fn, arg, SH_STATUS_INTERNAL, "out of memory");
        return 0;
    }
    p->handle = ++self->next_handle;
    snprintf(p->rid, sizeof p->rid, "%s-%llx", self->prefix, (unsigned long long)p->handle);
    p->type = type;
    p->fn = fn;
    p->arg = arg;
    p->instance = -1;
    p->deadline_ms = sh_clock_mono_ms() +
                     (opts->deadline_ms ? opts->deadline_ms - now_wall : SH_POOL_PING_DEADLINE_MS);

    sh_envelope_t env = {0};
    env.version = SH_PROTO_VERSION;
    env.kind = SH_KIND_REQUEST;
    env.type = type;
    env.request_id = sh_str(p->rid);
    env.deadline_ms =
        (uint64_t)(opts->deadline_ms ? opts->deadline_ms : now_wall + SH_POOL_PING_DEADLINE_MS);
    env.traceparent = sh_str(opts->traceparent);
    env.session = sh_str(opts->session);
    env.idem_key = sh_str(opts->idem_key);

    int order[SH_POOL_MAX_INSTANCES];
    int n = 0;
    if (only >= 0)
        order[n++] = only;
    else
        n = s_order(self, order);
    for (int k = 0; k < n && p->instance < 0; k++) {
        s_instance_t *inst = &self->instances[order[k]];
        if (sh_transport_send(inst->socket, NULL, &env, op->request, body, NULL, NULL, 0) == 0) {
            p->instance = order[k];
            inst->in_flight++;
        } else if (errno == EMSGSIZE) {
            free(p);
            s_answer(fn, arg, SH_STATUS_TOO_LARGE, "request exceeds the message limits");
            return 0;
        }
    }
    if (p->instance < 0) {
        free(p);
        if (only < 0)
            (*self->none)++;
        s_answer(fn, arg, SH_STATUS_UNAVAILABLE, "no instance available");
        return 0;
    }
    (*self->sent)++;
    zhashx_insert(self->by_rid, p->rid, p);
    s_link(self, p);
    return p->handle;
}

uint64_t sh_pool_send(sh_pool_t *self, uint64_t type, const void *body, const sh_call_opts_t *opts,
                      sh_reply_fn *fn, void *arg)
{
    sh_call_opts_t none = {0};
    return s_send_to(self, -1, type, body, opts ? opts : &none, fn, arg);
}

void sh_pool_cancel(sh_pool_t *self, uint64_t handle)
{
    if (!handle)
        return;
    /*  walk from the newest: a cancelled call is usually recent  */
    for (s_pending_t *p = self->tail; p; p = p->prev)
        if (p->handle == handle) {
            p->fn = NULL;
            return;
        }
}

static void s_on_frames(sh_pool_t *self, int index, sh_frames_t *frames)
{
    sh_envelope_t env;
    if (frames->count < 2 ||
        sh_codec_decode(&sh_envelope_codec, &env, zmq_msg_data(&frames->frames[0]),
                        zmq_msg_size(&frames->frames[0])) ||
        env.kind != SH_KIND_REPLY) {
        (*self->bad)++;
        return;
    }
    char rid[SH_ID_MAX + 1];
    sh_str_copy(env.request_id, rid, sizeof rid);
    s_pending_t *p = zhashx_lookup(self->by_rid, rid);
    self->instances[index].last_ok_ms = sh_clock_mono_ms();
    if (!p) {
        (*self->late)++;
        return;
    }
    s_unlink(self, p);
    if (!p->fn) {
        (*self->late)++;
        free(p);
        return;
    }
    const sh_op_info_t *op = sh_op_find(p->type);
    _Alignas(max_align_t) char body[1024];
    sh_reply_t reply = {env.status, "", &env, NULL};
    char error[SH_ERROR_MAX + 1];
    sh_str_copy(env.error, error, sizeof error);
    reply.error = error;
    if (env.status == SH_STATUS_OK) {
        int rc = -1;
        if (op->reply->size <= sizeof body)
            rc = sh_codec_decode(op->reply, body, zmq_msg_data(&frames->frames[1]),
                                 zmq_msg_size(&frames->frames[1]));
        if (rc) {
            (*self->bad)++;
            reply.status = SH_STATUS_INTERNAL;
            reply.error = "malformed reply";
        } else
            reply.body = body;
    }
    p->fn(p->arg, &reply);
    free(p);
}

void sh_pool_drain(sh_pool_t *self)
{
    int budget = SH_POOL_DRAIN_BATCH;
    bool again = true;
    while (again && budget > 0) {
        again = false;
        for (int i = 0; i < self->count; i++) {
            s_instance_t *inst = &self->instances[i];
            if (!sh_transport_readable(inst->socket))
                continue;
            sh_frames_t frames;
            if (sh_frames_recv(inst->socket, &frames) == 0) {
                s_on_frames(self, i, &frames);
                sh_frames_close(&frames);
                budget--;
                again = true;
            }
        }
    }
}

static void s_on_pong(void *arg, const sh_reply_t *reply)
{
    (void)arg;
    (void)reply; /* last_ok_ms was updated on receipt */
}

void sh_pool_tick(sh_pool_t *self)
{
    int64_t now = sh_clock_mono_ms();
    for (s_pending_t *p = self->head, *next; p; p = next) {
        next = p->next;
        if (p->deadline_ms > now)
            continue;
        s_unlink(self, p);
        if (p->fn) {
            (*self->timeouts)++;
            s_answer(p->fn, p->arg, SH_STATUS_TIMEOUT, "no reply before the deadline");
        }
        free(p);
    }
    for (int i = 0; i < self->count; i++) {
        s_instance_t *inst = &self->instances[i];
        if (now - inst->last_ping_ms < SH_POOL_PING_MS)
            continue;
        inst->last_ping_ms = now;
        sh_ping_req_t ping = {0};
        sh_call_opts_t opts = {sh_clock_wall_ms() + SH_POOL_PING_DEADLINE_MS, NULL, NULL, NULL};
        s_send_to(self, i, SH_OP_ping, &ping, &opts, s_on_pong, NULL);
    }
    sh_pool_drain(self);
}

int sh_pool_sockets(sh_pool_t *self, void **sockets, int max)
{
    int n = 0;
    for (int i = 0; i < self->count && n < max; i++)
        sockets[n++] = self->instances[i].socket;
    return n;
}

bool sh_pool_ready(const sh_pool_t *self)
{
    int64_t now = sh_clock_mono_ms();
    for (int i = 0; i < self->count; i++)
        if (self->instances[i].last_ok_ms && now - self->instances[i].last_ok_ms < SH_POOL_ALIVE_MS)
            return true;
    return false;
}

int64_t sh_pool_in_flight(const sh_pool_t *self)
{
    return self->pending;
}
