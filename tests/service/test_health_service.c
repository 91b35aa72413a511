/*  test_health_service.c - the real shoal-health process(es) on loopback,
    driven by the production client code: sh_pool for requests, a raw SUB
    socket for the published membership changes, and sh_registry (announce
    only for the fake instances, watching for the merged view).

    Every wait is a condition polled with zmq_poll under a timeout; the
    only fixed windows are the ones that check that something does NOT
    happen (an instance is not declared dead), a few heartbeat intervals.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <zmq.h>

#include "harness.h"
#include "sh_log.h"
#include "sh_metrics.h"
#include "sh_registry.h"
#include "sh_transport.h"
#include "sh_util.h"

#define T_HB_MS      100 /* SHOAL_HEARTBEAT_MS of every health process */
#define T_BEAT_EVERY 50  /* how often the fake instances beat */
#define T_MAX_HEALTH 2
#define T_MAX_INST   12
#define T_MAX_SEEN   32
#define T_MAX_EVENTS 1024
#define T_WAIT_MS    5000
#define T_SERVICE    "test"

/*  --- fixture ---------------------------------------------------------------  */

typedef struct {
    pid_t pid;
    int port, pub_port;
    char name[32];
    char endpoint[64], events[64];
    char log[320];
    sh_pool_t *pool; /* requests to this health instance only */
} t_health_t;

/*  A fake instance that heartbeats through its own announce-only
    sh_registry (as services do).  */
typedef struct {
    sh_registry_t *reg;
    bool owned; /* reg belongs to this entry */
    sh_member_owned_t rec;
    bool beating;
    int64_t next_ms, last_ms;
} t_inst_t;

/*  One event as a raw subscriber received it.  */
typedef struct {
    char epoch[SH_ID_MAX + 1];
    uint64_t seq, change;
    char source[SH_ID_MAX + 1];
    sh_member_owned_t m;
    int64_t at_ms;
} t_event_t;

typedef struct {
    void *sub;
    int count;
    bool overflow;
    t_event_t ev[T_MAX_EVENTS];
} t_sub_t;

/*  What the watching sh_registry told its callback about one instance.  */
typedef struct {
    char instance[SH_ID_MAX + 1];
    char service[SH_NAME_MAX + 1];
    char endpoint[SH_ADDR_MAX + 1];
    uint64_t state;
    unsigned states_seen; /* bit per SH_MEMBER_* ever reported */
    int calls;
} t_seen_t;

typedef struct {
    char dir[256];
    t_health_t health[T_MAX_HEALTH];
    t_inst_t inst[T_MAX_INST];
    int ninst;
    t_sub_t *subs[T_MAX_HEALTH];
    sh_metrics_t *metrics;
    sh_registry_t *watch;
    t_seen_t seen[T_MAX_SEEN];
    int nseen;
    uint64_t *resyncs, *gaps, *events;
    sh_member_owned_t *members; /* SH_MEMBERS_MAX, for snapshots */
} t_fix_t;

/*  One answer of a health instance, kept beyond the callback.  */
typedef struct {
    bool done;
    uint64_t type;
    uint64_t status;
    char error[SH_ERROR_MAX + 1];
    char epoch[SH_ID_MAX + 1];
    uint64_t seq;
    char events[SH_ADDR_MAX + 1];
    char instance[SH_ID_MAX + 1];
    bool known;
    int count;
    sh_member_owned_t *members; /* count records (members replies) */
} t_answer_t;

static int s_setup(void **state)
{
    t_fix_t *f = t_alloc(sizeof *f);
    *state = f;
    if (t_dir_new(f->dir, sizeof f->dir, "health-test"))
        return -1;
    f->members = calloc(SH_MEMBERS_MAX, sizeof *f->members);
    f->metrics = sh_metrics_new("test", "test-1");
    return f->members && f->metrics ? 0 : -1;
}

/*  A sanitizer report in a health log (the sanitized build's binaries).  */
static bool s_log_has_report(const char *log)
{
    FILE *file = fopen(log, "r");
    if (!file)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, file))
        found = strstr(line, "Sanitizer") || strstr(line, "runtime error:");
    fclose(file);
    return found;
}

static int s_teardown(void **state)
{
    t_fix_t *f = *state;
    int rc = 0;
    for (int i = 0; i < f->ninst; i++)
        if (f->inst[i].owned)
            sh_registry_destroy(&f->inst[i].reg);
    sh_registry_destroy(&f->watch);
    for (int i = 0; i < T_MAX_HEALTH; i++) {
        t_health_t *h = &f->health[i];
        if (f->subs[i]) {
            sh_transport_close(&f->subs[i]->sub);
            free(f->subs[i]);
        }
        sh_pool_destroy(&h->pool);
        /*  SIGTERM: a clean exit (and the sanitizers' leak check)  */
        if (h->pid > 0) {
            kill(h->pid, SIGTERM);
            int status = t_wait_exit(h->pid, T_WAIT_MS);
            if (status == -1)
                t_kill(h->pid);
            if (status != 0) {
                fprintf(stderr, "%s exited with %d on SIGTERM\n", h->name, status);
                rc = -1;
            }
        }
        if (h->log[0] && s_log_has_report(h->log)) {
            fprintf(stderr, "sanitizer report in %s:\n", h->log);
            t_tail(h->log);
            rc = -1;
        }
    }
    sh_metrics_destroy(&f->metrics);
    free(f->members);
    t_dir_remove(f->dir);
    free(f);
    return rc;
}

static void s_tail_all(t_fix_t *f)
{
    for (int i = 0; i < T_MAX_HEALTH; i++)
        if (f->health[i].log[0]) {
            fprintf(stderr, "--- %s\n", f->health[i].log);
            t_tail(f->health[i].log);
        }
}

/*  --- health processes ------------------------------------------------------  */

static void s_health_spawn(t_health_t *h)
{
    char instance[96], bind[96], pub[96], beat[64], forget[64];
    snprintf(instance, sizeof instance, "SHOAL_INSTANCE=%s", h->name);
    snprintf(bind, sizeof bind, "SHOAL_BIND=%s", h->endpoint);
    snprintf(pub, sizeof pub, "SHOAL_PUB_BIND=%s", h->events);
    snprintf(beat, sizeof beat, "SHOAL_HEARTBEAT_MS=%d", T_HB_MS);
    snprintf(forget, sizeof forget, "SHOAL_FORGET_MS=60000");
    char *env[] = {instance, bind, pub, beat, forget, NULL};
    char program[512];
    snprintf(program, sizeof program, "%s/shoal-health", t_bin_dir());
    h->pid = t_spawn(program, env, h->log);
}

/*  Start health instance i (on its old ports when it ran before) and wait
    until it answers ping.  */
static int s_health_start(t_fix_t *f, int i, const char *name)
{
    t_health_t *h = &f->health[i];
    if (!h->port) {
        h->port = t_free_port();
        do
            h->pub_port = t_free_port();
        while (h->pub_port == h->port);
        snprintf(h->name, sizeof h->name, "%s", name);
        snprintf(h->endpoint, sizeof h->endpoint, "tcp://127.0.0.1:%d", h->port);
        snprintf(h->events, sizeof h->events, "tcp://127.0.0.1:%d", h->pub_port);
        char dir[sizeof f->dir];
        memcpy(dir, f->dir, sizeof dir);
        snprintf(h->log, sizeof h->log, "%s/%s.log", dir, name);
        h->pool = sh_pool_new("health", NULL);
        if (!h->pool || sh_pool_add(h->pool, h->endpoint))
            return -1;
    }
    s_health_spawn(h);
    if (t_wait_ready(h->pool, T_WAIT_MS)) {
        s_tail_all(f);
        return -1;
    }
    return 0;
}

static void s_health_kill(t_fix_t *f, int i)
{
    t_kill(f->health[i].pid);
    f->health[i].pid = 0;
}

/*  --- raw subscriber ----------------------------------------------------------  */

static void s_sub_open(t_fix_t *f, int i)
{
    t_sub_t *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->sub = zmq_socket(sh_transport_ctx(), ZMQ_SUB);
    assert_non_null(s->sub);
    int linger = 0;
    zmq_setsockopt(s->sub, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(
        zmq_setsockopt(s->sub, ZMQ_SUBSCRIBE, SH_TOPIC_MEMBERS, strlen(SH_TOPIC_MEMBERS)), 0);
    assert_int_equal(zmq_connect(s->sub, f->health[i].events), 0);
    f->subs[i] = s;
}

static void s_sub_drain(t_sub_t *s)
{
    while (sh_transport_readable(s->sub)) {
        sh_frames_t frames;
        if (sh_frames_recv(s->sub, &frames) != 0)
            break;
        sh_envelope_t env;
        sh_member_event_req_t ev;
        bool ok =
            frames.count == 3 && zmq_msg_size(&frames.frames[0]) == strlen(SH_TOPIC_MEMBERS) &&
            memcmp(zmq_msg_data(&frames.frames[0]), SH_TOPIC_MEMBERS, strlen(SH_TOPIC_MEMBERS)) ==
                0 &&
            sh_codec_decode(&sh_envelope_codec, &env, zmq_msg_data(&frames.frames[1]),
                            zmq_msg_size(&frames.frames[1])) == 0 &&
            env.kind == SH_KIND_EVENT && env.type == SH_OP_member_event &&
            sh_codec_decode(&sh_member_event_req_codec, &ev, zmq_msg_data(&frames.frames[2]),
                            zmq_msg_size(&frames.frames[2])) == 0;
        /*  every published frame must decode: a broken one fails the test  */
        assert_true(ok);
        if (s->count < T_MAX_EVENTS) {
            t_event_t *e = &s->ev[s->count++];
            memset(e, 0, sizeof *e);
            sh_str_copy(ev.epoch, e->epoch, sizeof e->epoch);
            sh_str_copy(ev.source, e->source, sizeof e->source);
            e->seq = ev.seq;
            e->change = ev.change;
            sh_member_t m;
#define T_EVENT_FIELD(kind, name, max) m.name = ev.name;
            memset(&m, 0, sizeof m);
            SH_FIELDS_member(T_EVENT_FIELD);
#undef T_EVENT_FIELD
            sh_member_own(&e->m, &m);
            e->at_ms = sh_clock_mono_ms();
        } else
            s->overflow = true;
        sh_frames_close(&frames);
    }
}

/*  The first event at or after index `from` matching instance (NULL: any),
    change and state (-1: any).  */
static const t_event_t *s_find_event(const t_sub_t *s, int from, const char *instance,
                                     int64_t change, int64_t state)
{
    for (int i = from; i < s->count; i++) {
        const t_event_t *e = &s->ev[i];
        if ((!instance || strcmp(e->m.instance, instance) == 0) &&
            (change < 0 || e->change == (uint64_t)change) &&
            (state < 0 || e->m.state == (uint64_t)state))
            return e;
    }
    return NULL;
}

/*  --- fake instances and the watcher ------------------------------------------  */

static int s_inst_add(t_fix_t *f, const char *endpoints, const char *instance, uint64_t state)
{
    assert_true(f->ninst < T_MAX_INST);
    t_inst_t *in = &f->inst[f->ninst];
    memset(in, 0, sizeof *in);
    in->reg = sh_registry_new(endpoints, NULL, NULL, NULL);
    assert_non_null(in->reg);
    in->owned = true;
    /*  the same instance name always advertises the same endpoint  */
    char endpoint[SH_ADDR_MAX + 1];
    snprintf(endpoint, sizeof endpoint, "tcp://%s.test:7100", instance);
    sh_member_t m;
    memset(&m, 0, sizeof m);
    m.service = sh_str(T_SERVICE);
    m.instance = sh_str(instance);
    m.version = sh_str("0.1.0");
    m.endpoint = sh_str(endpoint);
    m.state = state;
    m.capacity = 100;
    m.pid = (uint64_t)getpid();
    sh_member_own(&in->rec, &m);
    in->beating = true;
    return f->ninst++;
}

static void s_inst_beat(t_inst_t *in)
{
    sh_member_t m;
    in->rec.requests += 10;
    in->rec.uptime_ms += T_BEAT_EVERY;
    sh_member_view(&in->rec, &m);
    sh_registry_beat(in->reg, &m, sh_clock_wall_ms() + 1000);
    sh_registry_drain(in->reg);
    in->last_ms = sh_clock_mono_ms();
    in->next_ms = in->last_ms + T_BEAT_EVERY;
}

static t_seen_t *s_seen(t_fix_t *f, const char *instance)
{
    for (int i = 0; i < f->nseen; i++)
        if (strcmp(f->seen[i].instance, instance) == 0)
            return &f->seen[i];
    return NULL;
}

static void s_on_change(void *arg, const sh_member_t *member)
{
    t_fix_t *f = arg;
    char name[SH_ID_MAX + 1];
    sh_str_copy(member->instance, name, sizeof name);
    t_seen_t *s = s_seen(f, name);
    if (!s) {
        assert_true(f->nseen < T_MAX_SEEN);
        s = &f->seen[f->nseen++];
        snprintf(s->instance, sizeof s->instance, "%s", name);
    }
    sh_str_copy(member->service, s->service, sizeof s->service);
    sh_str_copy(member->endpoint, s->endpoint, sizeof s->endpoint);
    s->state = member->state;
    s->states_seen |= 1u << member->state;
    s->calls++;
}

/*  Watch the health instances at endpoints; with `self_name`, the watcher
    also heartbeats as that instance (as a service does).  */
static void s_watch_start(t_fix_t *f, const char *endpoints, const char *self_name)
{
    f->watch = sh_registry_new(endpoints, s_on_change, f, f->metrics);
    assert_non_null(f->watch);
    f->resyncs = sh_metrics_counter(f->metrics, "shoal_registry_resyncs_total",
                                    "Membership snapshots applied", NULL);
    f->gaps = sh_metrics_counter(f->metrics, "shoal_registry_gaps_total",
                                 "Membership change sequences found broken", NULL);
    f->events = sh_metrics_counter(f->metrics, "shoal_registry_events_total",
                                   "Membership events received", NULL);
    if (self_name) {
        int i = s_inst_add(f, endpoints, self_name, SH_MEMBER_UP);
        sh_registry_destroy(&f->inst[i].reg);
        f->inst[i].reg = f->watch;
        f->inst[i].owned = false;
    }
}

/*  The watcher's SUB socket (found among its sockets by type).  */
static void *s_watch_sub(t_fix_t *f)
{
    void *sockets[SH_REGISTRY_SOCKETS];
    int n = sh_registry_sockets(f->watch, sockets, SH_REGISTRY_SOCKETS);
    for (int i = 0; i < n; i++) {
        int type = 0;
        size_t size = sizeof type;
        if (zmq_getsockopt(sockets[i], ZMQ_TYPE, &type, &size) == 0 && type == ZMQ_SUB)
            return sockets[i];
    }
    return NULL;
}

/*  --- the loop --------------------------------------------------------------------  */

#define T_MAX_ITEMS (T_MAX_INST * SH_REGISTRY_SOCKETS + SH_REGISTRY_SOCKETS + 3 * T_MAX_HEALTH)

/*  One round: beat whoever is due, wait up to wait_ms for any socket, then
    drain and tick everything.  */
static void s_pump_once(t_fix_t *f, int wait_ms)
{
    int64_t now = sh_clock_mono_ms();
    for (int i = 0; i < f->ninst; i++)
        if (f->inst[i].beating && now >= f->inst[i].next_ms)
            s_inst_beat(&f->inst[i]);
    void *sockets[T_MAX_ITEMS];
    int n = 0;
    for (int i = 0; i < f->ninst; i++)
        if (f->inst[i].owned)
            n += sh_registry_sockets(f->inst[i].reg, sockets + n, T_MAX_ITEMS - n);
    if (f->watch)
        n += sh_registry_sockets(f->watch, sockets + n, T_MAX_ITEMS - n);
    for (int i = 0; i < T_MAX_HEALTH; i++) {
        if (f->health[i].pool)
            n += sh_pool_sockets(f->health[i].pool, sockets + n, T_MAX_ITEMS - n);
        if (f->subs[i] && n < T_MAX_ITEMS)
            sockets[n++] = f->subs[i]->sub;
    }
    zmq_pollitem_t items[T_MAX_ITEMS];
    for (int i = 0; i < n; i++)
        items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
    zmq_poll(items, n, wait_ms);
    for (int i = 0; i < f->ninst; i++)
        if (f->inst[i].owned) {
            sh_registry_drain(f->inst[i].reg);
            sh_registry_tick(f->inst[i].reg);
        }
    if (f->watch) {
        sh_registry_drain(f->watch);
        sh_registry_tick(f->watch);
    }
    for (int i = 0; i < T_MAX_HEALTH; i++) {
        if (f->health[i].pool) {
            sh_pool_drain(f->health[i].pool);
            sh_pool_tick(f->health[i].pool);
        }
        if (f->subs[i])
            s_sub_drain(f->subs[i]);
    }
}

typedef bool(t_cond_fn)(t_fix_t *f, const void *arg);

/*  Pump until cond holds or timeout_ms passes. Returns whether it held.  */
static bool s_wait(t_fix_t *f, t_cond_fn *cond, const void *arg, int timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    for (;;) {
        if (cond(f, arg))
            return true;
        if (sh_clock_mono_ms() >= end)
            break;
        s_pump_once(f, 10);
    }
    s_tail_all(f);
    return false;
}

/*  Keep everything running for ms: only to check that something does NOT
    happen within a window.  */
static void s_run(t_fix_t *f, int ms)
{
    int64_t end = sh_clock_mono_ms() + ms;
    while (sh_clock_mono_ms() < end)
        s_pump_once(f, 10);
}

/*  Conditions.  */
typedef struct {
    int sub, from;
    const char *instance;
    int64_t change, state;
} t_event_q_t;

static bool c_event(t_fix_t *f, const void *arg)
{
    const t_event_q_t *q = arg;
    return s_find_event(f->subs[q->sub], q->from, q->instance, q->change, q->state) != NULL;
}

typedef struct {
    const char *instance;
    uint64_t state;
} t_state_q_t;

static bool c_seen(t_fix_t *f, const void *arg)
{
    const t_state_q_t *q = arg;
    const t_seen_t *s = s_seen(f, q->instance);
    return s && s->state == q->state;
}

/*  Every listed instance has the given state in the merged view (ends
    with a NULL instance).  */
static bool c_seen_all(t_fix_t *f, const void *arg)
{
    for (const t_state_q_t *q = arg; q->instance; q++)
        if (!c_seen(f, q))
            return false;
    return true;
}

typedef struct {
    const uint64_t *counter;
    uint64_t above;
} t_count_q_t;

static bool c_counter_above(t_fix_t *f, const void *arg)
{
    (void)f;
    const t_count_q_t *q = arg;
    return *q->counter > q->above;
}

static bool c_reachable_one(t_fix_t *f, const void *arg)
{
    (void)arg;
    return sh_registry_reachable(f->watch) == 1;
}

/*  A raw subscriber is live: it heard a tick (published every second).  */
static const t_event_t *s_wait_tick(t_fix_t *f, int sub)
{
    t_event_q_t q = {sub, f->subs[sub]->count, NULL, SH_CHANGE_TICK, -1};
    if (!s_wait(f, c_event, &q, 3000))
        return NULL;
    return s_find_event(f->subs[sub], q.from, NULL, SH_CHANGE_TICK, -1);
}

/*  --- requests ----------------------------------------------------------------------  */

static void s_on_answer(void *arg, const sh_reply_t *reply)
{
    t_answer_t *a = arg;
    a->done = true;
    a->status = reply->status;
    snprintf(a->error, sizeof a->error, "%s", reply->error);
    if (reply->env)
        sh_str_copy(reply->env->instance, a->instance, sizeof a->instance);
    if (!reply->body)
        return;
    if (a->type == SH_OP_heartbeat) {
        const sh_heartbeat_rep_t *rep = reply->body;
        sh_str_copy(rep->epoch, a->epoch, sizeof a->epoch);
        sh_str_copy(rep->events, a->events, sizeof a->events);
        a->seq = rep->seq;
    } else if (a->type == SH_OP_leave) {
        const sh_leave_rep_t *rep = reply->body;
        a->known = rep->known;
    } else if (a->type == SH_OP_members) {
        const sh_members_rep_t *rep = reply->body;
        sh_str_copy(rep->epoch, a->epoch, sizeof a->epoch);
        sh_str_copy(rep->events, a->events, sizeof a->events);
        a->seq = rep->seq;
        a->count = 0;
        for (uint32_t i = 0; i < rep->members.count && a->members && i < SH_MEMBERS_MAX; i++)
            sh_member_own(&a->members[a->count++], &rep->members.items[i]);
    }
}

/*  Send a request to health instance h and pump until it is answered.  */
static int s_request(t_fix_t *f, int h, uint64_t type, const void *body, t_answer_t *a)
{
    sh_member_owned_t *members = a->members;
    memset(a, 0, sizeof *a);
    a->type = type;
    a->members = members;
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + 1000};
    uint64_t handle = sh_pool_send(f->health[h].pool, type, body, &opts, s_on_answer, a);
    int64_t end = sh_clock_mono_ms() + 3000;
    while (!a->done && sh_clock_mono_ms() < end)
        s_pump_once(f, 10);
    if (!a->done) {
        sh_pool_cancel(f->health[h].pool, handle);
        return -1;
    }
    return 0;
}

/*  A membership snapshot of health instance h (every service: "").  */
static int s_members(t_fix_t *f, int h, const char *service, t_answer_t *a)
{
    a->members = f->members;
    sh_members_req_t req = {sh_str(service), 0};
    if (s_request(f, h, SH_OP_members, &req, a) || a->status != SH_STATUS_OK)
        return -1;
    return 0;
}

static const sh_member_owned_t *s_listed(const t_answer_t *a, const char *instance)
{
    for (int i = 0; i < a->count; i++)
        if (strcmp(a->members[i].instance, instance) == 0)
            return &a->members[i];
    return NULL;
}

/*  Health instance h lists instance with state (polling its snapshot).  */
static bool s_wait_listed(t_fix_t *f, int h, const char *instance, uint64_t state, int timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    t_answer_t a = {0};
    do {
        if (s_members(f, h, "", &a) == 0) {
            const sh_member_owned_t *m = s_listed(&a, instance);
            if (m && m->state == state)
                return true;
        }
        s_run(f, T_HB_MS / 2);
    } while (sh_clock_mono_ms() < end);
    s_tail_all(f);
    return false;
}

static void s_member_record(sh_member_t *m, const char *instance, const char *endpoint,
                            uint64_t state)
{
    memset(m, 0, sizeof *m);
    m->service = sh_str(T_SERVICE);
    m->instance = sh_str(instance);
    m->version = sh_str("0.1.0");
    m->endpoint = sh_str(endpoint);
    m->state = state;
    m->capacity = 100;
}

/*  --- tests ---------------------------------------------------------------------------  */

static void test_health_service_registers_and_publishes_joined(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-a"), 0);
    s_sub_open(f, 0);
    const t_event_t *tick = s_wait_tick(f, 0);
    assert_non_null(tick);
    uint64_t before = tick->seq;
    char epoch[SH_ID_MAX + 1];
    snprintf(epoch, sizeof epoch, "%s", tick->epoch);
    assert_true(strlen(epoch) > 0);
    assert_string_equal(tick->source, "health-a");

    /*  a heartbeat for a new instance  */
    int from = f->subs[0]->count;
    sh_member_t m;
    s_member_record(&m, "svc-1", "tcp://127.0.0.1:39001", SH_MEMBER_UP);
    t_answer_t a = {0};
    assert_int_equal(s_request(f, 0, SH_OP_heartbeat, &m, &a), 0);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_string_equal(a.epoch, epoch);
    assert_int_equal(a.seq, before + 1);
    assert_string_equal(a.events, f->health[0].events);
    assert_string_equal(a.instance, "health-a");

    /*  ... is published as JOINED with the next sequence number  */
    t_event_q_t q = {0, from, "svc-1", SH_CHANGE_JOINED, -1};
    assert_true(s_wait(f, c_event, &q, 2000));
    const t_event_t *e = s_find_event(f->subs[0], from, "svc-1", SH_CHANGE_JOINED, -1);
    assert_int_equal(e->seq, before + 1);
    assert_string_equal(e->epoch, epoch);
    assert_string_equal(e->source, "health-a");
    assert_string_equal(e->m.service, T_SERVICE);
    assert_string_equal(e->m.endpoint, "tcp://127.0.0.1:39001");
    assert_int_equal(e->m.state, SH_MEMBER_UP);
    assert_int_equal(e->m.capacity, 100);

    /*  ... and listed in the snapshot, after the health instance itself  */
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_string_equal(a.epoch, epoch);
    assert_int_equal(a.seq, before + 1);
    assert_string_equal(a.events, f->health[0].events);
    assert_int_equal(a.count, 2);
    assert_string_equal(a.members[0].service, "health");
    assert_string_equal(a.members[0].instance, "health-a");
    assert_string_equal(a.members[0].endpoint, f->health[0].endpoint);
    assert_string_equal(a.members[0].events, f->health[0].events);
    assert_int_equal(a.members[0].state, SH_MEMBER_UP);
    assert_int_equal(a.members[0].pid, (uint64_t)f->health[0].pid);
    const sh_member_owned_t *svc = s_listed(&a, "svc-1");
    assert_non_null(svc);
    assert_string_equal(svc->service, T_SERVICE);
    assert_string_equal(svc->endpoint, "tcp://127.0.0.1:39001");
    assert_int_equal(svc->state, SH_MEMBER_UP);
    assert_true(svc->heartbeat_age_ms < 1000);

    /*  the service filter  */
    assert_int_equal(s_members(f, 0, "health", &a), 0);
    assert_int_equal(a.count, 1);
    assert_string_equal(a.members[0].instance, "health-a");
    assert_int_equal(s_members(f, 0, T_SERVICE, &a), 0);
    assert_int_equal(a.count, 1);
    assert_string_equal(a.members[0].instance, "svc-1");

    /*  a refresh with the same state is no change: no new sequence number  */
    assert_int_equal(s_request(f, 0, SH_OP_heartbeat, &m, &a), 0);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_int_equal(a.seq, before + 1);
    /*  a state change is: CHANGED with seq + 1  */
    from = f->subs[0]->count;
    m.state = SH_MEMBER_BUSY;
    assert_int_equal(s_request(f, 0, SH_OP_heartbeat, &m, &a), 0);
    assert_int_equal(a.seq, before + 2);
    t_event_q_t busy = {0, from, "svc-1", SH_CHANGE_CHANGED, SH_MEMBER_BUSY};
    assert_true(s_wait(f, c_event, &busy, 2000));
    e = s_find_event(f->subs[0], from, "svc-1", SH_CHANGE_CHANGED, SH_MEMBER_BUSY);
    assert_int_equal(e->seq, before + 2);
    /*  nothing else was published in between  */
    assert_null(s_find_event(f->subs[0], from, NULL, SH_CHANGE_JOINED, -1));
}

static void test_health_service_expires_silent_instances(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-a"), 0);
    s_sub_open(f, 0);
    assert_non_null(s_wait_tick(f, 0));
    int from = f->subs[0]->count;
    const char *eps = f->health[0].endpoint;
    int quiet = s_inst_add(f, eps, "quiet-1", SH_MEMBER_UP);
    s_inst_add(f, eps, "busy-1", SH_MEMBER_BUSY);
    t_event_q_t j1 = {0, from, "quiet-1", SH_CHANGE_JOINED, SH_MEMBER_UP};
    t_event_q_t j2 = {0, from, "busy-1", SH_CHANGE_JOINED, SH_MEMBER_BUSY};
    assert_true(s_wait(f, c_event, &j1, 2000));
    assert_true(s_wait(f, c_event, &j2, 2000));

    /*  quiet-1 stops beating: dead after 3 missed intervals  */
    from = f->subs[0]->count;
    f->inst[quiet].beating = false;
    int64_t last = f->inst[quiet].last_ms;
    t_event_q_t dead = {0, from, "quiet-1", SH_CHANGE_CHANGED, SH_MEMBER_DEAD};
    assert_true(s_wait(f, c_event, &dead, 3000));
    const t_event_t *e = s_find_event(f->subs[0], from, "quiet-1", SH_CHANGE_CHANGED, -1);
    assert_int_equal(e->m.state, SH_MEMBER_DEAD);
    int64_t after = e->at_ms - last;
    assert_true(after >= 3 * T_HB_MS);
    assert_true(after < 3 * T_HB_MS + 1200);
    t_answer_t a = {0};
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_int_equal(s_listed(&a, "quiet-1")->state, SH_MEMBER_DEAD);
    assert_true(s_listed(&a, "quiet-1")->heartbeat_age_ms >= 3 * T_HB_MS);

    /*  busy-1 keeps beating as busy: never declared dead (10 intervals)  */
    s_run(f, 10 * T_HB_MS);
    assert_null(s_find_event(f->subs[0], 0, "busy-1", -1, SH_MEMBER_DEAD));
    assert_null(s_find_event(f->subs[0], 0, "busy-1", SH_CHANGE_CHANGED, -1));
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_int_equal(s_listed(&a, "busy-1")->state, SH_MEMBER_BUSY);
    assert_true(s_listed(&a, "busy-1")->heartbeat_age_ms < 3 * T_HB_MS);

    /*  the dead one comes back with its next heartbeat  */
    from = f->subs[0]->count;
    f->inst[quiet].beating = true;
    t_event_q_t back = {0, from, "quiet-1", SH_CHANGE_CHANGED, SH_MEMBER_UP};
    assert_true(s_wait(f, c_event, &back, 2000));

    /*  leave: dead at once, well before expiry could say so  */
    int leaver = s_inst_add(f, eps, "leaver-1", SH_MEMBER_UP);
    t_event_q_t j3 = {0, from, "leaver-1", SH_CHANGE_JOINED, -1};
    assert_true(s_wait(f, c_event, &j3, 2000));
    f->inst[leaver].beating = false;
    sh_leave_req_t leave = {sh_str(T_SERVICE), sh_str("leaver-1"), 0};
    assert_int_equal(s_request(f, 0, SH_OP_leave, &leave, &a), 0);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_true(a.known);
    assert_int_equal(s_members(f, 0, "", &a), 0);
    const sh_member_owned_t *left = s_listed(&a, "leaver-1");
    assert_non_null(left);
    assert_int_equal(left->state, SH_MEMBER_DEAD);
    assert_true(left->heartbeat_age_ms < 3 * T_HB_MS); /* not by expiry */
    t_event_q_t gone = {0, from, "leaver-1", SH_CHANGE_CHANGED, SH_MEMBER_DEAD};
    assert_true(s_wait(f, c_event, &gone, 2000));

    /*  the production path: sh_registry_leave  */
    int leaver2 = s_inst_add(f, eps, "leaver-2", SH_MEMBER_UP);
    t_event_q_t j4 = {0, from, "leaver-2", SH_CHANGE_JOINED, -1};
    assert_true(s_wait(f, c_event, &j4, 2000));
    f->inst[leaver2].beating = false;
    sh_registry_leave(f->inst[leaver2].reg, T_SERVICE, "leaver-2");
    int64_t asked = sh_clock_mono_ms();
    t_event_q_t gone2 = {0, from, "leaver-2", SH_CHANGE_CHANGED, SH_MEMBER_DEAD};
    assert_true(s_wait(f, c_event, &gone2, 2000));
    e = s_find_event(f->subs[0], from, "leaver-2", SH_CHANGE_CHANGED, SH_MEMBER_DEAD);
    assert_true(e->at_ms - f->inst[leaver2].last_ms < 3 * T_HB_MS || e->at_ms - asked < T_HB_MS);

    /*  leaving twice or unknown: answered, not known  */
    sh_leave_req_t unknown = {sh_str(T_SERVICE), sh_str("nobody"), 0};
    assert_int_equal(s_request(f, 0, SH_OP_leave, &unknown, &a), 0);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_false(a.known);
}

static void test_health_service_client_resyncs_after_a_gap(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-a"), 0);
    s_sub_open(f, 0);
    const char *eps = f->health[0].endpoint;
    int a_inst = s_inst_add(f, eps, "gap-a", SH_MEMBER_UP);
    s_watch_start(f, eps, NULL);
    t_state_q_t up_a = {"gap-a", SH_MEMBER_UP};
    assert_true(s_wait(f, c_seen, &up_a, T_WAIT_MS));
    assert_true(*f->resyncs >= 1);
    /*  the watcher's subscription is live once it has heard an event  */
    t_count_q_t heard = {f->events, *f->events};
    assert_true(s_wait(f, c_counter_above, &heard, 3000));
    assert_non_null(s_wait_tick(f, 0));
    uint64_t gaps = *f->gaps, resyncs = *f->resyncs;

    /*  cut the watcher's SUB link: what is published now is lost to it  */
    void *sub = s_watch_sub(f);
    assert_non_null(sub);
    assert_int_equal(zmq_disconnect(sub, f->health[0].events), 0);
    int from = f->subs[0]->count;
    s_inst_add(f, eps, "gap-b", SH_MEMBER_UP);
    f->inst[a_inst].rec.state = SH_MEMBER_BUSY;
    t_event_q_t joined = {0, from, "gap-b", SH_CHANGE_JOINED, -1};
    t_event_q_t busy = {0, from, "gap-a", SH_CHANGE_CHANGED, SH_MEMBER_BUSY};
    assert_true(s_wait(f, c_event, &joined, 2000));
    assert_true(s_wait(f, c_event, &busy, 2000));
    assert_null(s_seen(f, "gap-b"));
    assert_int_equal(s_seen(f, "gap-a")->state, SH_MEMBER_UP);
    assert_int_equal(*f->gaps, gaps);

    /*  reconnect: the next event (a tick at the latest) reveals the gap  */
    assert_int_equal(zmq_connect(sub, f->health[0].events), 0);
    t_count_q_t gap = {f->gaps, gaps};
    assert_true(s_wait(f, c_counter_above, &gap, 3000));
    t_count_q_t resync = {f->resyncs, resyncs};
    assert_true(s_wait(f, c_counter_above, &resync, 3000));
    t_state_q_t want[] = {{"gap-a", SH_MEMBER_BUSY}, {"gap-b", SH_MEMBER_UP}, {NULL, 0}};
    assert_true(s_wait(f, c_seen_all, want, 3000));

    /*  the merged view equals the snapshot  */
    t_answer_t a = {0};
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_int_equal(a.count, f->nseen);
    for (int i = 0; i < a.count; i++) {
        const t_seen_t *s = s_seen(f, a.members[i].instance);
        assert_non_null(s);
        assert_int_equal(s->state, a.members[i].state);
        assert_string_equal(s->endpoint, a.members[i].endpoint);
        assert_string_equal(s->service, a.members[i].service);
    }
}

static void test_health_service_late_joiner_gets_snapshot(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-a"), 0);
    const char *eps = f->health[0].endpoint;
    s_inst_add(f, eps, "early-1", SH_MEMBER_UP);
    s_inst_add(f, eps, "early-2", SH_MEMBER_BUSY);
    int gone = s_inst_add(f, eps, "early-3", SH_MEMBER_UP);
    assert_true(s_wait_listed(f, 0, "early-1", SH_MEMBER_UP, T_WAIT_MS));
    assert_true(s_wait_listed(f, 0, "early-2", SH_MEMBER_BUSY, T_WAIT_MS));
    assert_true(s_wait_listed(f, 0, "early-3", SH_MEMBER_UP, T_WAIT_MS));
    f->inst[gone].beating = false;
    sh_registry_leave(f->inst[gone].reg, T_SERVICE, "early-3");
    assert_true(s_wait_listed(f, 0, "early-3", SH_MEMBER_DEAD, T_WAIT_MS));

    /*  a client that starts now learns all of them from the snapshot  */
    s_watch_start(f, eps, NULL);
    t_state_q_t want[] = {{"early-1", SH_MEMBER_UP},
                          {"early-2", SH_MEMBER_BUSY},
                          {"early-3", SH_MEMBER_DEAD},
                          {"health-a", SH_MEMBER_UP},
                          {NULL, 0}};
    assert_true(s_wait(f, c_seen_all, want, T_WAIT_MS));
    assert_true(*f->resyncs >= 1);
    assert_string_equal(s_seen(f, "health-a")->service, "health");
    assert_string_equal(s_seen(f, "health-a")->endpoint, f->health[0].endpoint);
    assert_string_equal(s_seen(f, "early-1")->service, T_SERVICE);
    assert_string_equal(s_seen(f, "early-1")->endpoint, f->inst[0].rec.endpoint);
}

static void test_health_service_restart_resyncs_and_keeps_last_view(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-a"), 0);
    const char *eps = f->health[0].endpoint;
    s_inst_add(f, eps, "live-1", SH_MEMBER_UP);
    int quiet = s_inst_add(f, eps, "quiet-1", SH_MEMBER_UP);
    s_watch_start(f, eps, NULL);
    t_state_q_t want[] = {{"live-1", SH_MEMBER_UP}, {"quiet-1", SH_MEMBER_UP}, {NULL, 0}};
    assert_true(s_wait(f, c_seen_all, want, T_WAIT_MS));
    t_answer_t a = {0};
    assert_int_equal(s_members(f, 0, "", &a), 0);
    char epoch[SH_ID_MAX + 1];
    snprintf(epoch, sizeof epoch, "%s", a.epoch);

    /*  kill -9; quiet-1 stops beating at the same moment  */
    s_health_kill(f, 0);
    f->inst[quiet].beating = false;
    uint64_t resyncs = *f->resyncs;
    /*  far more than 3 heartbeat intervals without any health instance  */
    s_run(f, 10 * T_HB_MS);
    assert_true(c_seen_all(f, want));
    assert_int_equal(s_seen(f, "live-1")->states_seen, 1u << SH_MEMBER_UP);
    assert_int_equal(s_seen(f, "quiet-1")->states_seen, 1u << SH_MEMBER_UP);

    /*  restart on the same ports: a new epoch, the client resyncs, beats
        repopulate the registry  */
    assert_int_equal(s_health_start(f, 0, "health-a"), 0);
    t_count_q_t resync = {f->resyncs, resyncs};
    assert_true(s_wait(f, c_counter_above, &resync, T_WAIT_MS));
    assert_true(s_wait_listed(f, 0, "live-1", SH_MEMBER_UP, T_WAIT_MS));
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_string_not_equal(a.epoch, epoch);
    /*  the restarted health never heard of quiet-1  */
    assert_null(s_listed(&a, "quiet-1"));
    /*  the client: live-1 up all along; quiet-1 keeps its last state  */
    assert_true(s_wait(f, c_seen_all, want, T_WAIT_MS));
    s_run(f, 5 * T_HB_MS);
    assert_true(c_seen_all(f, want));
    assert_int_equal(s_seen(f, "live-1")->states_seen, 1u << SH_MEMBER_UP);
    assert_int_equal(s_seen(f, "quiet-1")->states_seen, 1u << SH_MEMBER_UP);
}

static void test_health_service_merges_two_health_instances(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-1"), 0);
    assert_int_equal(s_health_start(f, 1, "health-2"), 0);
    s_sub_open(f, 0);
    s_sub_open(f, 1);
    assert_non_null(s_wait_tick(f, 0));
    assert_non_null(s_wait_tick(f, 1));
    char both[160];
    snprintf(both, sizeof both, "%s,%s", f->health[0].endpoint, f->health[1].endpoint);
    s_inst_add(f, both, "multi-a", SH_MEMBER_UP);
    s_inst_add(f, f->health[0].endpoint, "multi-x", SH_MEMBER_UP);
    int x2 = s_inst_add(f, f->health[1].endpoint, "multi-x", SH_MEMBER_UP);
    s_watch_start(f, both, "watcher-1");
    t_state_q_t want[] = {{"multi-a", SH_MEMBER_UP},   {"multi-x", SH_MEMBER_UP},
                          {"health-1", SH_MEMBER_UP},  {"health-2", SH_MEMBER_UP},
                          {"watcher-1", SH_MEMBER_UP}, {NULL, 0}};
    assert_true(s_wait(f, c_seen_all, want, T_WAIT_MS));
    /*  sh_registry_beat reached both  */
    assert_true(s_wait_listed(f, 0, "multi-a", SH_MEMBER_UP, T_WAIT_MS));
    assert_true(s_wait_listed(f, 1, "multi-a", SH_MEMBER_UP, T_WAIT_MS));

    /*  health-2 declares multi-x dead; health-1 still sees it up  */
    int from = f->subs[1]->count;
    f->inst[x2].beating = false;
    t_event_q_t dead = {1, from, "multi-x", SH_CHANGE_CHANGED, SH_MEMBER_DEAD};
    assert_true(s_wait(f, c_event, &dead, 3000));
    /*  a later change from health-2 proves the watcher got past that one  */
    s_inst_add(f, f->health[1].endpoint, "marker-1", SH_MEMBER_UP);
    t_state_q_t marker = {"marker-1", SH_MEMBER_UP};
    assert_true(s_wait(f, c_seen, &marker, T_WAIT_MS));
    t_answer_t a = {0};
    assert_int_equal(s_members(f, 1, "", &a), 0);
    assert_int_equal(s_listed(&a, "multi-x")->state, SH_MEMBER_DEAD);
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_int_equal(s_listed(&a, "multi-x")->state, SH_MEMBER_UP);
    /*  the most optimistic view wins  */
    assert_int_equal(s_seen(f, "multi-x")->state, SH_MEMBER_UP);
    assert_int_equal(s_seen(f, "multi-x")->states_seen, 1u << SH_MEMBER_UP);

    /*  ... unless one says draining  */
    f->inst[x2].rec.state = SH_MEMBER_DRAINING;
    f->inst[x2].beating = true;
    t_state_q_t draining = {"multi-x", SH_MEMBER_DRAINING};
    assert_true(s_wait(f, c_seen, &draining, T_WAIT_MS));

    /*  stop health-2: the merged view still shows the instances up  */
    s_health_kill(f, 1);
    assert_true(s_wait(f, c_reachable_one, NULL, T_WAIT_MS));
    assert_int_equal(s_seen(f, "multi-a")->state, SH_MEMBER_UP);
    assert_int_equal(s_seen(f, "multi-a")->states_seen, 1u << SH_MEMBER_UP);
    assert_int_equal(s_seen(f, "watcher-1")->state, SH_MEMBER_UP);
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_int_equal(s_listed(&a, "multi-a")->state, SH_MEMBER_UP);
}

/*  One health instance dies while an instance is up; then that instance
    dies too, and the health instance still running says so. The dead
    health's frozen view must not keep it alive in the merged view for
    ever ("an instance no view knows keeps its last state" is for when no
    health instance can tell).  */
static void test_health_service_live_verdict_beats_stale_view(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-1"), 0);
    assert_int_equal(s_health_start(f, 1, "health-2"), 0);
    char both[160];
    snprintf(both, sizeof both, "%s,%s", f->health[0].endpoint, f->health[1].endpoint);
    int z = s_inst_add(f, both, "doomed-1", SH_MEMBER_UP);
    s_watch_start(f, both, "watcher-1");
    t_state_q_t up = {"doomed-1", SH_MEMBER_UP};
    assert_true(s_wait(f, c_seen, &up, T_WAIT_MS));
    assert_true(s_wait_listed(f, 1, "doomed-1", SH_MEMBER_UP, T_WAIT_MS));

    s_health_kill(f, 1);
    assert_true(s_wait(f, c_reachable_one, NULL, T_WAIT_MS));
    f->inst[z].beating = false;
    assert_true(s_wait_listed(f, 0, "doomed-1", SH_MEMBER_DEAD, T_WAIT_MS));
    /*  the merged view follows the only health instance that can still tell  */
    t_state_q_t dead = {"doomed-1", SH_MEMBER_DEAD};
    s_wait(f, c_seen, &dead, 3000);
    assert_int_equal(s_seen(f, "doomed-1")->state, SH_MEMBER_DEAD);
}

static void test_health_service_refuses_bad_input(void **state)
{
    t_fix_t *f = *state;
    assert_int_equal(s_health_start(f, 0, "health-a"), 0);
    t_answer_t a = {0};
    sh_member_t m;
    /*  empty instance, empty service, unknown state: INVALID  */
    s_member_record(&m, "", "tcp://127.0.0.1:39001", SH_MEMBER_UP);
    assert_int_equal(s_request(f, 0, SH_OP_heartbeat, &m, &a), 0);
    assert_int_equal(a.status, SH_STATUS_INVALID);
    s_member_record(&m, "bad-1", "tcp://127.0.0.1:39001", SH_MEMBER_UP);
    m.service = sh_str("");
    assert_int_equal(s_request(f, 0, SH_OP_heartbeat, &m, &a), 0);
    assert_int_equal(a.status, SH_STATUS_INVALID);
    s_member_record(&m, "bad-1", "tcp://127.0.0.1:39001", 9);
    assert_int_equal(s_request(f, 0, SH_OP_heartbeat, &m, &a), 0);
    assert_int_equal(a.status, SH_STATUS_INVALID);
    /*  none of them was registered  */
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_int_equal(a.count, 1);
    assert_int_equal(a.seq, 0);

    /*  malformed frames: envelope garbage, body garbage, wrong body type  */
    void *dealer = sh_transport_dealer(f->health[0].endpoint);
    assert_non_null(dealer);
    int timeout = 3000;
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_pollitem_t out = {dealer, 0, ZMQ_POLLOUT, 0};
    assert_int_equal(zmq_poll(&out, 1, 3000), 1);
    sh_envelope_t env = {0};
    env.version = SH_PROTO_VERSION;
    env.kind = SH_KIND_REQUEST;
    env.type = SH_OP_heartbeat;
    env.request_id = sh_str("bad-rid");
    msgpack_sbuffer good_env;
    msgpack_sbuffer_init(&good_env);
    assert_int_equal(sh_codec_encode(&sh_envelope_codec, &env, &good_env), 0);
    struct {
        const char *env;
        size_t env_len;
        const char *body;
        size_t body_len;
    } bad[] = {
        {"\xc1\xc1\xc1", 3, "\x90", 1},                            /* envelope not msgpack */
        {"\xdd\xff\xff\xff\xff", 5, "\x90", 1},                    /* 4-billion element envelope */
        {good_env.data, good_env.size, "\xc1", 1},                 /* body not msgpack */
        {good_env.data, good_env.size, "\x91\x92\x01\x02", 4},     /* service is an array */
        {good_env.data, good_env.size, "\xdd\xff\xff\xff\xff", 5}, /* huge body array */
        {good_env.data, good_env.size, "\x81\xa1x\x01", 4},        /* a map, not an array */
    };
    for (size_t i = 0; i < SH_ARRAY_SIZE(bad); i++) {
        assert_true(zmq_send(dealer, bad[i].env, bad[i].env_len, ZMQ_SNDMORE) >= 0);
        assert_true(zmq_send(dealer, bad[i].body, bad[i].body_len, 0) >= 0);
        char env_buf[512], body_buf[64];
        int n = zmq_recv(dealer, env_buf, sizeof env_buf, 0);
        assert_true(n > 0);
        assert_true(zmq_recv(dealer, body_buf, sizeof body_buf, 0) >= 0);
        sh_envelope_t back;
        assert_int_equal(sh_codec_decode(&sh_envelope_codec, &back, env_buf, (size_t)n), 0);
        assert_int_equal(back.kind, SH_KIND_REPLY);
        assert_int_equal(back.status, SH_STATUS_MALFORMED);
    }
    msgpack_sbuffer_destroy(&good_env);
    sh_transport_close(&dealer);

    /*  still serving, and nothing was registered  */
    s_member_record(&m, "good-1", "tcp://127.0.0.1:39002", SH_MEMBER_UP);
    assert_int_equal(s_request(f, 0, SH_OP_heartbeat, &m, &a), 0);
    assert_int_equal(a.status, SH_STATUS_OK);
    assert_int_equal(a.seq, 1);
    assert_int_equal(s_members(f, 0, "", &a), 0);
    assert_int_equal(a.count, 2);
    assert_non_null(s_listed(&a, "good-1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_health_service_registers_and_publishes_joined, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_health_service_expires_silent_instances, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_health_service_client_resyncs_after_a_gap, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_health_service_late_joiner_gets_snapshot, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_health_service_restart_resyncs_and_keeps_last_view,
                                        s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_health_service_merges_two_health_instances, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_health_service_live_verdict_beats_stale_view, s_setup,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_health_service_refuses_bad_input, s_setup, s_teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    /*  the client code's own info lines (connections lost on purpose) are noise here  */
    sh_log_init("test", "test-1", SH_LOG_WARN, false);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
