/*  sh_pool.c - caller pool: one ROUTER, least in-flight choice, deadlines,
    retries within a budget, pings, membership from the registry.  */
#include <czmq.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sh_log.h"
#include "sh_pool.h"
#include "sh_transport.h"
#include "sh_util.h"

#define SH_POOL_PING_DEADLINE_MS   1000
#define SH_POOL_ATTEMPT_DEFAULT_MS 1000
#define SH_POOL_DRAIN_BATCH        1024
#define SH_POOL_BUDGET_RATIO       0.1 /* retry tokens earned per request */
#define SH_POOL_BUDGET_MAX         100.0
#define SH_POOL_BUDGET_START       10.0
#define SH_POOL_REPLY_STACK        1024

typedef enum { S_FREE = 0, S_LIVE } s_slot_t;

typedef struct {
    s_slot_t slot;
    char endpoint[SH_ENDPOINT_MAX];
    char instance[SH_ID_MAX + 1];
    char peer_id[24]; /* routing id of the connection */
    uint64_t state;   /* SH_MEMBER_* */
    bool from_registry;
    bool connected; /* the ZMTP handshake succeeded and no disconnect since */
    int64_t in_flight;
    int64_t last_ok_ms; /* monotonic time of the last reply */
    int64_t last_ping_ms;
    int64_t dead_since_ms;
} s_instance_t;

typedef struct s_pending_t {
    struct s_pending_t *prev, *next;
    char rid[SH_ID_MAX + 1]; /* of the current attempt */
    uint64_t handle;
    uint64_t type;
    int instance; /* of the current attempt, -1 none */
    int attempts;
    bool retry_safe;
    int64_t deadline_wall;    /* absolute wall ms */
    int64_t deadline_ms;      /* monotonic */
    int64_t attempt_deadline; /* monotonic */
    void *body;               /* encoded once, re-sent as is: small or heap */
    char small[160];          /* most request bodies fit here */

    size_t body_len;
    char traceparent[SH_TRACE_MAX + 1];
    char session[SH_SESSION_MAX + 1];
    char idem_key[SH_ID_MAX + 1];
    char target[SH_ID_MAX + 1]; /* "" or the one instance allowed */
    int64_t attempt_ms;         /* per-attempt timeout */
    const void *raw;            /* raw frame: borrowed for the first attempt only */
    size_t raw_len;

    sh_reply_fn *fn; /* NULL when cancelled */

    void *arg;
} s_pending_t;

struct sh_pool_t {
    char service[SH_NAME_MAX + 1];
    char prefix[24];
    void *socket;
    void *monitor; /* PAIR receiving the socket's connect/disconnect events */
    uint64_t next_handle;
    uint64_t next_peer;
    s_instance_t instances[SH_POOL_MAX_INSTANCES];
    int high; /* slots in use are below this */
    int rotor;
    int64_t attempt_timeout_ms;
    double budget;
    zhashx_t *by_rid; /* rid -> s_pending_t */
    s_pending_t *head, *tail;
    int64_t pending;
    uint64_t local_counters[8];
    uint64_t *none, *late, *timeouts, *sent, *bad, *retries, *no_budget, *failed_fast;
};

/*  --- pending list ------------------------------------------------------  */

/*  Bounded copy of an optional C string (the hot path avoids printf).  */
static void s_copy(char *dst, size_t size, const char *src)
{
    size_t n = src ? strnlen(src, size - 1) : 0;
    memcpy(dst, src ? src : "", n);
    dst[n] = 0;
}

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

/*  Detach the current attempt from its instance and the rid map.  */
static void s_detach_attempt(sh_pool_t *self, s_pending_t *p)
{
    if (p->rid[0])
        zhashx_delete(self->by_rid, p->rid);
    p->rid[0] = 0;
    if (p->instance >= 0)
        self->instances[p->instance].in_flight--;
    p->instance = -1;
}

static void s_unlink(sh_pool_t *self, s_pending_t *p)
{
    s_detach_attempt(self, p);
    if (p->prev)
        p->prev->next = p->next;
    else
        self->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        self->tail = p->prev;
    self->pending--;
}

static void s_free(s_pending_t *p)
{
    if (p->body != p->small)
        free(p->body);
    free(p);
}

/*  Answer the caller from the pool itself.  */
static void s_answer(sh_reply_fn *fn, void *arg, uint64_t status, const char *error, int attempts)
{
    if (!fn)
        return;
    sh_reply_t reply = {status, error, NULL, NULL, attempts, NULL, 0};
    fn(arg, &reply);
}

/*  Finish a pending request with a local answer, then free it.  */
static void s_fail(sh_pool_t *self, s_pending_t *p, uint64_t status, const char *error)
{
    s_unlink(self, p);
    s_answer(p->fn, p->arg, status, error, p->attempts);
    s_free(p);
}

static void s_instance_died(sh_pool_t *self, int index);
static void s_drain_monitor(sh_pool_t *self);

/*  <prefix>-<handle hex>-<attempt>: unique per attempt, without printf.  */
static void s_make_rid(const sh_pool_t *self, s_pending_t *p)
{
    static const char digits[] = "0123456789abcdef";
    char *out = p->rid;
    size_t n = strlen(self->prefix);
    memcpy(out, self->prefix, n);
    out[n++] = '-';
    char hex[17];
    int h = 0;
    uint64_t v = p->handle;
    do {
        hex[h++] = digits[v & 15];
        v >>= 4;
    } while (v);
    while (h)
        out[n++] = hex[--h];
    out[n++] = '-';
    out[n++] = digits[p->attempts & 15];
    out[n] = 0;
}

/*  --- instances -------------------------------------------------------------  */

static bool s_usable(const s_instance_t *inst)
{
    return inst->slot == S_LIVE && inst->connected &&
           (inst->state == SH_MEMBER_UP || inst->state == SH_MEMBER_BUSY);
}

/*  Rank for choosing: up before busy, then fewer in flight.  */
static int64_t s_rank(const s_instance_t *inst)
{
    return inst->in_flight + (inst->state == SH_MEMBER_BUSY ? 1000000 : 0);
}

/*  Usable instances best first (rotating start breaks ties); `avoid` is
    left out. Returns how many.  */
static int s_order(sh_pool_t *self, int avoid, int *order)
{
    int n = 0;
    for (int k = 0; k < self->high; k++) {
        int i = (self->rotor + k) % self->high;
        if (i != avoid && s_usable(&self->instances[i]))
            order[n++] = i;
    }
    self->rotor = self->high ? (self->rotor + 1) % self->high : 0;
    for (int i = 1; i < n; i++) {
        int v = order[i], j = i;
        while (j > 0 && s_rank(&self->instances[order[j - 1]]) > s_rank(&self->instances[v])) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = v;
    }
    return n;
}

static int s_find(sh_pool_t *self, const char *instance, const char *endpoint)
{
    for (int i = 0; i < self->high; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->slot != S_LIVE)
            continue;
        if (instance && instance[0] ? strcmp(inst->instance, instance) == 0
                                    : strcmp(inst->endpoint, endpoint) == 0)
            return i;
    }
    return -1;
}

static int s_connect(sh_pool_t *self, const char *endpoint, const char *instance,
                     bool from_registry, uint64_t state)
{
    int index = -1;
    for (int i = 0; i < SH_POOL_MAX_INSTANCES && index < 0; i++)
        if (self->instances[i].slot == S_FREE)
            index = i;
    if (index < 0 || strlen(endpoint) >= SH_ENDPOINT_MAX)
        return -1;
    s_instance_t *inst = &self->instances[index];
    memset(inst, 0, sizeof *inst);
    snprintf(inst->endpoint, sizeof inst->endpoint, "%s", endpoint);
    snprintf(inst->instance, sizeof inst->instance, "%s", instance ? instance : "");
    snprintf(inst->peer_id, sizeof inst->peer_id, "p%llx", (unsigned long long)++self->next_peer);
    if (sh_transport_connect_peer(self->socket, endpoint, inst->peer_id) != 0) {
        sh_warn("pool %s: cannot connect to %s: %s", self->service, endpoint, zmq_strerror(errno));
        return -1;
    }
    inst->slot = S_LIVE;
    inst->state = state;
    inst->from_registry = from_registry;
    if (index >= self->high)
        self->high = index + 1;
    return index;
}

static void s_disconnect(sh_pool_t *self, int index)
{
    s_instance_t *inst = &self->instances[index];
    zmq_disconnect(self->socket, inst->endpoint);
    inst->slot = S_FREE;
    while (self->high > 0 && self->instances[self->high - 1].slot == S_FREE)
        self->high--;
}

/*  --- sending ------------------------------------------------------------------  */

/*  Send the pending request's next attempt to the best usable instance
    other than `avoid`. Returns 0, or -1 when no instance took it.  */
static int s_attempt(sh_pool_t *self, s_pending_t *p, int avoid)
{
    int order[SH_POOL_MAX_INSTANCES];
    int n = 0;
    if (p->target[0]) {
        /*  a pinned request follows its instance while it drains: work
            begun there (an upload stream) may still end there  */
        for (int i = 0; i < self->high; i++) {
            const s_instance_t *inst = &self->instances[i];
            if (inst->slot == S_LIVE && inst->connected && inst->state != SH_MEMBER_DEAD &&
                strcmp(inst->instance, p->target) == 0)
                order[n++] = i;
        }
    } else
        n = s_order(self, avoid, order);

    sh_envelope_t env = {0};
    env.version = SH_PROTO_VERSION;
    env.kind = SH_KIND_REQUEST;
    env.type = p->type;
    env.deadline_ms = (uint64_t)p->deadline_wall;
    env.traceparent = sh_str(p->traceparent);
    env.session = sh_str(p->session);
    env.idem_key = sh_str(p->idem_key);
    p->attempts++;
    s_make_rid(self, p);
    env.request_id = sh_str(p->rid);
    for (int k = 0; k < n; k++) {
        s_instance_t *inst = &self->instances[order[k]];
        if (sh_transport_send_encoded(self->socket, inst->peer_id, strlen(inst->peer_id), &env,
                                      p->body, p->body_len, p->raw, p->raw_len) == 0) {
            p->instance = order[k];
            inst->in_flight++;
            int64_t now = sh_clock_mono_ms();
            p->attempt_deadline = p->retry_safe && now + p->attempt_ms < p->deadline_ms
                                      ? now + p->attempt_ms
                                      : p->deadline_ms;

            zhashx_insert(self->by_rid, p->rid, p);
            (*self->sent)++;
            return 0;
        }
        /*  EHOSTUNREACH: not connected (yet or any more); try the next  */
    }
    p->rid[0] = 0;
    return -1;
}

/*  The current attempt is lost (instance died, timed out, or is
    draining): try another instance if that is safe and affordable.
    `unapplied` says the instance certainly did not act on it.  */
static void s_retry_or_fail(sh_pool_t *self, s_pending_t *p, bool unapplied, const char *why)
{
    int avoid = p->instance;
    s_detach_attempt(self, p);
    if (!p->fn) {
        s_unlink(self, p);
        s_free(p);
        return;
    }
    if (!unapplied && !p->retry_safe) {
        (*self->failed_fast)++;
        s_fail(self, p, SH_STATUS_UNAVAILABLE, why);
        return;
    }
    if (p->attempts >= SH_POOL_MAX_ATTEMPTS || sh_clock_mono_ms() >= p->deadline_ms) {
        s_fail(self, p, SH_STATUS_UNAVAILABLE, why);
        return;
    }
    if (!unapplied) {
        if (self->budget < 1.0) {
            (*self->no_budget)++;
            s_fail(self, p, SH_STATUS_UNAVAILABLE, "retry budget exhausted");
            return;
        }
        self->budget -= 1.0;
    }
    (*self->retries)++;
    if (s_attempt(self, p, avoid) != 0) {
        char text[SH_ERROR_MAX];
        snprintf(text, sizeof text, "%s; no other instance available", why);
        (*self->none)++;
        s_fail(self, p, SH_STATUS_UNAVAILABLE, text);
    }
}

static uint64_t s_send(sh_pool_t *self, uint64_t type, const void *body, const sh_call_opts_t *opts,
                       sh_reply_fn *fn, void *arg)
{
    const sh_op_info_t *op = sh_op_find(type);
    if (!op) {
        s_answer(fn, arg, SH_STATUS_INTERNAL, "unknown operation", 0);
        return 0;
    }
    int64_t now_wall = sh_clock_wall_ms();

    int64_t deadline = opts->deadline_ms ? opts->deadline_ms : now_wall + SH_POOL_PING_DEADLINE_MS;
    if (deadline <= now_wall) {
        (*self->timeouts)++;
        s_answer(fn, arg, SH_STATUS_TIMEOUT, "deadline passed", 0);
        return 0;
    }
    size_t len = 0;
    const void *encoded = sh_transport_encode_scratch(op->request, body, &len);
    if (!encoded) {
        s_answer(fn, arg, SH_STATUS_TOO_LARGE, "request exceeds the message limits", 0);
        return 0;
    }
    s_pending_t *p = malloc(sizeof *p);
    if (p) {
        memset(p, 0, offsetof(s_pending_t, small));
        p->body = len <= sizeof p->small ? p->small : malloc(len);
    }
    if (!p || !p->body) {
        free(p);
        s_answer(fn, arg, SH_STATUS_INTERNAL, "out of memory", 0);
        return 0;
    }
    memcpy(p->body, encoded, len);
    p->body_len = len;

    p->handle = ++self->next_handle;
    p->type = type;
    p->fn = fn;
    p->arg = arg;
    p->instance = -1;
    p->deadline_wall = deadline;
    p->deadline_ms = sh_clock_mono_ms() + (deadline - now_wall);
    s_copy(p->traceparent, sizeof p->traceparent, opts->traceparent);
    s_copy(p->session, sizeof p->session, opts->session);
    s_copy(p->idem_key, sizeof p->idem_key, opts->idem_key);
    s_copy(p->target, sizeof p->target, opts->instance);
    p->attempt_ms = opts->attempt_ms > 0 ? opts->attempt_ms : self->attempt_timeout_ms;

    p->retry_safe = (op->idempotent || p->idem_key[0]) && !p->target[0] && !opts->raw;
    p->raw = opts->raw;
    p->raw_len = opts->raw_len;

    if (self->budget < SH_POOL_BUDGET_MAX)
        self->budget += SH_POOL_BUDGET_RATIO;
    /*  nothing usable: first learn of connections made since the last drain  */
    if (s_attempt(self, p, -1) != 0 && (s_drain_monitor(self), s_attempt(self, p, -1) != 0)) {

        (*self->none)++;
        s_free(p);
        s_answer(fn, arg, SH_STATUS_UNAVAILABLE, "no instance available", 1);
        return 0;
    }
    p->raw = NULL;
    s_link(self, p);
    return p->handle;
}

uint64_t sh_pool_send(sh_pool_t *self, uint64_t type, const void *body, const sh_call_opts_t *opts,
                      sh_reply_fn *fn, void *arg)
{
    sh_call_opts_t none = {0};
    return s_send(self, type, body, opts ? opts : &none, fn, arg);
}

/*  Send one quiet request to one given instance (pings, broadcasts).  */
static void s_send_to(sh_pool_t *self, int index, uint64_t type, const void *body,
                      const sh_call_opts_t *opts)
{
    const sh_op_info_t *op = sh_op_find(type);
    size_t len = 0;
    const void *encoded = op ? sh_transport_encode_scratch(op->request, body, &len) : NULL;
    if (!encoded)
        return;

    s_instance_t *inst = &self->instances[index];
    sh_envelope_t env = {0};
    char rid[SH_ID_MAX + 1];
    snprintf(rid, sizeof rid, "%s-q%llx", self->prefix, (unsigned long long)++self->next_handle);
    env.version = SH_PROTO_VERSION;
    env.kind = SH_KIND_REQUEST;
    env.type = type;
    env.request_id = sh_str(rid);
    env.deadline_ms = (uint64_t)opts->deadline_ms;
    /*  the envelope has its own scratch buffer: the body's stays valid  */
    sh_transport_send_encoded(self->socket, inst->peer_id, strlen(inst->peer_id), &env, encoded,
                              len, NULL, 0);
}

void sh_pool_broadcast(sh_pool_t *self, uint64_t type, const void *body, const sh_call_opts_t *opts)
{
    sh_call_opts_t none = {.deadline_ms = sh_clock_wall_ms() + SH_POOL_PING_DEADLINE_MS};
    for (int i = 0; i < self->high; i++)
        if (self->instances[i].slot == S_LIVE && self->instances[i].state != SH_MEMBER_DEAD)
            s_send_to(self, i, type, body, opts ? opts : &none);
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

/*  --- receiving ----------------------------------------------------------------  */

static int s_instance_of_peer(sh_pool_t *self, zmq_msg_t *peer)
{
    size_t len = zmq_msg_size(peer);
    for (int i = 0; i < self->high; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->slot == S_LIVE && strlen(inst->peer_id) == len &&
            memcmp(inst->peer_id, zmq_msg_data(peer), len) == 0)
            return i;
    }
    return -1;
}

static void s_on_frames(sh_pool_t *self, sh_frames_t *frames)
{
    sh_envelope_t env;
    if (frames->count < 3 ||
        sh_codec_decode(&sh_envelope_codec, &env, zmq_msg_data(&frames->frames[1]),
                        zmq_msg_size(&frames->frames[1])) ||
        env.kind != SH_KIND_REPLY) {
        (*self->bad)++;
        return;
    }
    int index = s_instance_of_peer(self, &frames->frames[0]);
    if (index >= 0) {
        s_instance_t *inst = &self->instances[index];
        inst->last_ok_ms = sh_clock_mono_ms();
        /*  an answering static instance is up; the registry's word rules the rest  */
        if (!inst->from_registry && inst->state != SH_MEMBER_DRAINING)
            inst->state = SH_MEMBER_UP;
        /*  a static instance is known by name once it answered, so a caller
            can pin later requests to it (opts.instance)  */
        if (!inst->instance[0])
            sh_str_copy(env.instance, inst->instance, sizeof inst->instance);
    }
    char rid[SH_ID_MAX + 1];
    sh_str_copy(env.request_id, rid, sizeof rid);
    s_pending_t *p = zhashx_lookup(self->by_rid, rid);
    if (!p) {
        /*  pings and broadcasts have no entry; others were answered before  */
        if (!strstr(rid, "-q"))
            (*self->late)++;
        return;
    }
    if (env.status == SH_STATUS_DRAINING) {
        if (index >= 0)
            self->instances[index].state = SH_MEMBER_DRAINING;
        s_retry_or_fail(self, p, true, "instance draining");
        return;
    }
    s_unlink(self, p);
    if (!p->fn) {
        (*self->late)++;
        s_free(p);
        return;
    }
    const sh_op_info_t *op = sh_op_find(p->type);
    _Alignas(max_align_t) char stack[SH_POOL_REPLY_STACK];
    void *body = op->reply->size <= sizeof stack ? stack : malloc(op->reply->size);
    char error[SH_ERROR_MAX + 1];
    sh_str_copy(env.error, error, sizeof error);
    sh_reply_t reply = {env.status, error, &env, NULL, p->attempts, NULL, 0};
    if (frames->count > 3) {
        reply.raw = zmq_msg_data(&frames->frames[3]);
        reply.raw_len = zmq_msg_size(&frames->frames[3]);
    }
    if (env.status == SH_STATUS_OK) {
        if (body && sh_codec_decode(op->reply, body, zmq_msg_data(&frames->frames[2]),
                                    zmq_msg_size(&frames->frames[2])) == 0)
            reply.body = body;
        else {
            (*self->bad)++;
            reply.status = SH_STATUS_INTERNAL;
            reply.error = "malformed reply";
        }
    }
    p->fn(p->arg, &reply);
    if (body != stack)
        free(body);
    s_free(p);
}

/*  Connection events: a peer that disconnects (killed: at once; paused:
    after the ZMTP heartbeat timeout) stops being used, and what was in
    flight on it is retried or failed now rather than at its deadline.  */
static void s_drain_monitor(sh_pool_t *self)
{
    while (self->monitor && sh_transport_readable(self->monitor)) {
        sh_frames_t frames;
        if (sh_frames_recv(self->monitor, &frames) != 0)
            break;
        if (frames.count == 2 && zmq_msg_size(&frames.frames[0]) >= 2) {
            uint16_t event;
            memcpy(&event, zmq_msg_data(&frames.frames[0]), sizeof event);
            char endpoint[SH_ENDPOINT_MAX];
            size_t len = zmq_msg_size(&frames.frames[1]);
            if (len < sizeof endpoint) {
                memcpy(endpoint, zmq_msg_data(&frames.frames[1]), len);
                endpoint[len] = 0;
                int index = s_find(self, NULL, endpoint);
                sh_debug("pool %s: event %u on %s (instance %d)", self->service, event, endpoint,
                         index);
                if (index >= 0 && event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
                    self->instances[index].connected = true;
                    /*  ping at the next tick: readiness should not wait a period  */
                    self->instances[index].last_ping_ms = 0;

                    if (!self->instances[index].from_registry)
                        self->instances[index].state = SH_MEMBER_UP;
                } else if (index >= 0 && event == ZMQ_EVENT_DISCONNECTED &&
                           self->instances[index].connected) {
                    self->instances[index].connected = false;
                    sh_info("pool %s: lost the connection to %s", self->service, endpoint);
                    s_instance_died(self, index);
                }
            }
        }
        sh_frames_close(&frames);
    }
}

void sh_pool_drain(sh_pool_t *self)
{
    s_drain_monitor(self);
    for (int budget = SH_POOL_DRAIN_BATCH; budget > 0 && sh_transport_readable(self->socket);
         budget--) {
        sh_frames_t frames;
        if (sh_frames_recv(self->socket, &frames) != 0)
            break;
        s_on_frames(self, &frames);
        sh_frames_close(&frames);
    }
}

/*  --- membership -------------------------------------------------------------------  */

/*  Every pending attempt on a dead instance: retry elsewhere or fail.  */
static void s_instance_died(sh_pool_t *self, int index)
{
    for (s_pending_t *p = self->head, *next; p; p = next) {
        next = p->next;
        if (p->instance == index)
            s_retry_or_fail(self, p, false, "instance died; the request may not have been applied");
    }
}

int sh_pool_update(sh_pool_t *self, const sh_member_t *member)
{
    char instance[SH_ID_MAX + 1], endpoint[SH_ENDPOINT_MAX];
    sh_str_copy(member->instance, instance, sizeof instance);
    sh_str_copy(member->endpoint, endpoint, sizeof endpoint);
    if (!endpoint[0])
        return -1;
    int index = s_find(self, instance, endpoint);
    if (index >= 0 && strcmp(self->instances[index].endpoint, endpoint) != 0) {
        /*  same instance name at a new address: treat as a new connection  */
        s_instance_died(self, index);
        s_disconnect(self, index);
        index = -1;
    }
    if (index < 0) {
        /*  a static entry for the same endpoint becomes the registry's  */
        int same = s_find(self, NULL, endpoint);
        if (same >= 0) {
            index = same;
            snprintf(self->instances[index].instance, SH_ID_MAX + 1, "%s", instance);
        }
    }
    if (index < 0) {
        if (member->state == SH_MEMBER_DEAD)
            return 0;
        index = s_connect(self, endpoint, instance, true, member->state);
        if (index >= 0)
            sh_info("pool %s: %s joined at %s", self->service, instance, endpoint);
        return index >= 0 ? 0 : -1;
    }
    s_instance_t *inst = &self->instances[index];
    uint64_t before = inst->state;
    inst->from_registry = true;
    inst->state = member->state;
    if (member->state == SH_MEMBER_DEAD && before != SH_MEMBER_DEAD) {
        inst->dead_since_ms = sh_clock_mono_ms();
        sh_info("pool %s: %s is dead", self->service, instance);
        s_instance_died(self, index);
    } else if (member->state != SH_MEMBER_DEAD && before == SH_MEMBER_DEAD)
        sh_info("pool %s: %s is back", self->service, instance);
    return 0;
}

/*  --- housekeeping -------------------------------------------------------------------  */

static void s_on_tick_pending(sh_pool_t *self, int64_t now)
{
    for (s_pending_t *p = self->head, *next; p; p = next) {
        next = p->next;
        if (now >= p->deadline_ms) {
            if (p->fn)
                (*self->timeouts)++;
            s_fail(self, p, SH_STATUS_TIMEOUT, "no reply before the deadline");
        } else if (now >= p->attempt_deadline && p->retry_safe)
            s_retry_or_fail(self, p, false, "instance did not answer in time");
    }
}

void sh_pool_tick(sh_pool_t *self)
{
    int64_t now = sh_clock_mono_ms();
    s_on_tick_pending(self, now);
    for (int i = 0; i < self->high; i++) {
        s_instance_t *inst = &self->instances[i];
        if (inst->slot != S_LIVE)
            continue;
        if (inst->state == SH_MEMBER_DEAD) {
            if (now - inst->dead_since_ms > SH_POOL_FORGET_MS)
                s_disconnect(self, i);
            continue;
        }
        if (now - inst->last_ping_ms < SH_POOL_PING_MS)
            continue;
        inst->last_ping_ms = now;
        sh_ping_req_t ping = {0};
        sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + SH_POOL_PING_DEADLINE_MS};
        s_send_to(self, i, SH_OP_ping, &ping, &opts);
    }
    sh_pool_drain(self);
}

/*  --- life ------------------------------------------------------------------------  */

sh_pool_t *sh_pool_new(const char *service, sh_metrics_t *metrics)
{
    sh_pool_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    snprintf(self->service, sizeof self->service, "%s", service);
    char hex[17];
    sh_random_hex(hex, 8);
    snprintf(self->prefix, sizeof self->prefix, "%s", hex);
    char own_id[32];
    snprintf(own_id, sizeof own_id, "c%s", hex);
    self->socket = sh_transport_caller(own_id);
    self->by_rid = zhashx_new();
    if (self->by_rid) {
        /*  keys are the pending entries' own rid buffers: no copies  */
        zhashx_set_key_duplicator(self->by_rid, NULL);
        zhashx_set_key_destructor(self->by_rid, NULL);
    }
    char monitor[64];

    snprintf(monitor, sizeof monitor, "inproc://sh-pool-monitor-%s", hex);
    if (self->socket &&
        zmq_socket_monitor(self->socket, monitor,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) == 0) {
        self->monitor = zmq_socket(sh_transport_ctx(), ZMQ_PAIR);
        if (self->monitor && zmq_connect(self->monitor, monitor) != 0)
            sh_transport_close(&self->monitor);
    }
    self->attempt_timeout_ms = SH_POOL_ATTEMPT_DEFAULT_MS;
    self->budget = SH_POOL_BUDGET_START;
    if (!self->socket || !self->by_rid || !self->monitor) {
        sh_pool_destroy(&self);
        return NULL;
    }
    uint64_t **counters[] = {&self->none, &self->late,    &self->timeouts,  &self->sent,
                             &self->bad,  &self->retries, &self->no_budget, &self->failed_fast};
    static const char *names[][2] = {
        {"shoal_calls_no_instance_total", "Calls failed at once: no usable instance"},
        {"shoal_calls_late_replies_total", "Replies dropped: their call was already over"},
        {"shoal_calls_timeouts_total", "Calls that passed their deadline"},
        {"shoal_calls_total", "Attempts sent to an instance"},
        {"shoal_calls_bad_replies_total", "Replies that could not be decoded"},
        {"shoal_calls_retries_total", "Attempts re-sent to another instance"},
        {"shoal_calls_budget_exhausted_total", "Retries refused by the retry budget"},
        {"shoal_calls_failed_fast_total", "Unsafe calls failed because their instance died"},
    };
    char labels[64];
    snprintf(labels, sizeof labels, "target=\"%s\"", service);
    for (size_t i = 0; i < SH_ARRAY_SIZE(counters); i++)
        *counters[i] = metrics ? sh_metrics_counter(metrics, names[i][0], names[i][1], labels)
                               : &self->local_counters[i];
    return self;
}

void sh_pool_destroy(sh_pool_t **self_p)
{
    sh_pool_t *self = *self_p;
    if (!self)
        return;
    while (self->head)
        s_fail(self, self->head, SH_STATUS_UNAVAILABLE, "shutting down");
    if (self->socket)
        zmq_socket_monitor(self->socket, NULL, 0);
    sh_transport_close(&self->monitor);
    sh_transport_close(&self->socket);
    zhashx_destroy(&self->by_rid);
    free(self);
    *self_p = NULL;
}

int sh_pool_add(sh_pool_t *self, const char *endpoint)
{
    /*  static instances are usable at once; sends fail over while they connect  */
    return s_connect(self, endpoint, NULL, false, SH_MEMBER_UP) >= 0 ? 0 : -1;
}

void sh_pool_set_attempt_timeout(sh_pool_t *self, int64_t ms)
{
    self->attempt_timeout_ms = ms;
}

int sh_pool_sockets(sh_pool_t *self, void **sockets, int max)
{
    int n = 0;
    if (n < max)
        sockets[n++] = self->socket;
    if (n < max)
        sockets[n++] = self->monitor;
    return n;
}

bool sh_pool_ready(const sh_pool_t *self)
{
    int64_t now = sh_clock_mono_ms();
    for (int i = 0; i < self->high; i++)
        if (s_usable(&self->instances[i]) && self->instances[i].last_ok_ms &&
            now - self->instances[i].last_ok_ms < SH_POOL_ALIVE_MS)
            return true;
    return false;
}

const char *sh_pool_service(const sh_pool_t *self)
{
    return self->service;
}

int64_t sh_pool_in_flight(const sh_pool_t *self)
{
    return self->pending;
}

int sh_pool_usable(const sh_pool_t *self)
{
    int n = 0;
    for (int i = 0; i < self->high; i++)
        n += s_usable(&self->instances[i]);
    return n;
}
