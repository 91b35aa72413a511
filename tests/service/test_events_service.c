/*  test_events_service.c - the live-event publisher (common/sh_events) in
    the real shoal-session process, with a real Redis that keeps an
    append-only file, watched through a SUB socket: ordered events get
    offsets 1, 2, 3 in order and are kept (trimmed) in the channel's
    history, which event_range reads; latest values skip Redis; events
    published while Redis is down wait and are appended in order, under
    the same epoch, once it is back; a channel whose history meta is lost
    starts a new epoch; and the heartbeat advertises the events endpoint.
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
#include <jansson.h>
#include <zmq.h>

#include "harness.h"
#include "sh_events.h"
#include "sh_redis.h"
#include "sh_transport.h"
#include "sh_util.h"

#define T_ENV_MAX  4
#define T_WAIT_MS  5000 /* longest wait for a reply or an event */
#define T_PREFIX   "shoal:"
#define T_INSTANCE "session-events-test"
#define T_TEXT_MAX 256

typedef struct {
    char dir[256];
    char log[300];
    int redis_port;
    pid_t redis;
    pid_t service;
    pid_t health;
    char endpoint[64];
    char events[64];
    char health_endpoint[64];
    sh_pool_t *pool;
    void *sub;
    const char *env[T_ENV_MAX + 1]; /* extra settings of the service, NULL-ended */
    t_redis_client_t *client;       /* the test's own, once asked for */
} t_fixture_t;

/*  One event as received on the SUB socket (strings copied).  */
typedef struct {
    char topic[SH_CHANNEL_MAX + 1];
    uint64_t kind, type;
    char channel[SH_CHANNEL_MAX + 1];
    char epoch[SH_ID_MAX + 1];
    uint64_t offset;
    char event[SH_EVENT_TYPE_MAX + 1];
    char data[SH_EVENT_DATA_MAX + 1];
    uint64_t ts_us;
    char source[SH_ID_MAX + 1];
} t_event_t;

/*  --- fixture ---------------------------------------------------------------  */

static int s_start_service(t_fixture_t *f)
{
    t_endpoint(f->endpoint, sizeof f->endpoint);
    t_endpoint(f->events, sizeof f->events);
    char redis[64], events[96], health[96];
    snprintf(redis, sizeof redis, "SHOAL_REDIS_PORT=%d", f->redis_port);
    snprintf(events, sizeof events, "SHOAL_EVENTS_BIND=%s", f->events);
    snprintf(health, sizeof health, "SHOAL_HEALTH_ENDPOINTS=%s", f->health_endpoint);
    const char *env[] = {
        redis, events, health, "SHOAL_INSTANCE=" T_INSTANCE, "SHOAL_REDIS_TIMEOUT_MS=300", NULL};
    t_service_spec_t spec = {"session", f->endpoint, env, f->env, f->log, T_WAIT_MS};
    return t_service_start(&spec, &f->service, &f->pool);
}

static int s_teardown(void **state);

static int s_setup_with(void **state, const char *const *env, bool with_health)
{
    t_fixture_t *f = t_alloc(sizeof *f);
    for (int i = 0; env && env[i] && i < T_ENV_MAX; i++)
        f->env[i] = env[i];
    *state = f;
    if (t_dir_new(f->dir, sizeof f->dir, "events-test"))
        return t_setup_failed(state, s_teardown, NULL);
    snprintf(f->log, sizeof f->log, "%s/session.log", f->dir);
    f->redis_port = t_free_port();
    f->redis = t_redis_start_aof(f->redis_port, f->dir);
    if (f->redis < 0)
        return t_setup_failed(state, s_teardown, f->log);
    if (with_health) {
        char pub[96], bind[96], program[512];
        t_endpoint(f->health_endpoint, sizeof f->health_endpoint);
        snprintf(bind, sizeof bind, "SHOAL_BIND=%s", f->health_endpoint);
        snprintf(pub, sizeof pub, "SHOAL_PUB_BIND=tcp://127.0.0.1:%d", t_free_port());
        char *env_health[] = {bind, pub, "SHOAL_INSTANCE=health-events-test", NULL};
        snprintf(program, sizeof program, "%s/shoal-health", t_bin_dir());
        f->health = t_spawn(program, env_health, f->log);
    }
    if (s_start_service(f))
        return t_setup_failed(state, s_teardown, f->log);
    f->sub = t_sub_open(f->events);
    if (!f->sub)
        return t_setup_failed(state, s_teardown, f->log);
    return 0;
}

static int s_setup(void **state)
{
    return s_setup_with(state, NULL, false);
}

/*  History of 5 events per channel.  */
static int s_setup_short_history(void **state)
{
    const char *env[] = {"SHOAL_EVENTS_HISTORY=5", NULL};
    return s_setup_with(state, env, false);
}

static int s_setup_health(void **state)
{
    return s_setup_with(state, NULL, true);
}

static int s_teardown(void **state)
{
    t_fixture_t *f = *state;
    if (!f)
        return 0;
    t_redis_client_destroy(&f->client);
    sh_pool_destroy(&f->pool);
    if (f->sub)
        sh_transport_close(&f->sub);
    if (f->service > 0)
        t_kill(f->service);
    if (f->health > 0)
        t_kill(f->health);
    if (f->redis > 0)
        t_kill(f->redis);
    t_dir_remove(f->dir);
    free(f);
    return 0;
}

/*  --- helpers ---------------------------------------------------------------  */

static void s_copy(sh_str_t s, char *out, size_t size)
{
    sh_str_copy(s, out, size);
}

/*  The next event on the SUB socket within timeout_ms. Returns 0, or -1
    when none came.  */
static int s_recv_event(t_fixture_t *f, t_event_t *out, int timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = end - sh_clock_mono_ms();
        if (left <= 0)
            return -1;
        zmq_pollitem_t item = {f->sub, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, (long)left) <= 0)
            continue;
        sh_frames_t frames;
        if (sh_frames_recv(f->sub, &frames) != 0)
            continue;
        assert_int_equal(frames.count, 3);
        memset(out, 0, sizeof *out);
        size_t topic_len = zmq_msg_size(&frames.frames[0]);
        assert_true(topic_len <= SH_CHANNEL_MAX);
        memcpy(out->topic, zmq_msg_data(&frames.frames[0]), topic_len);
        sh_envelope_t env;
        assert_int_equal(sh_codec_decode(&sh_envelope_codec, &env, zmq_msg_data(&frames.frames[1]),
                                         zmq_msg_size(&frames.frames[1])),
                         0);
        out->kind = env.kind;
        out->type = env.type;
        sh_event_req_t ev;
        assert_int_equal(sh_codec_decode(&sh_event_req_codec, &ev, zmq_msg_data(&frames.frames[2]),
                                         zmq_msg_size(&frames.frames[2])),
                         0);
        s_copy(ev.channel, out->channel, sizeof out->channel);
        s_copy(ev.epoch, out->epoch, sizeof out->epoch);
        out->offset = ev.offset;
        s_copy(ev.type, out->event, sizeof out->event);
        s_copy(ev.data, out->data, sizeof out->data);
        out->ts_us = ev.ts_us;
        s_copy(ev.source, out->source, sizeof out->source);
        sh_frames_close(&frames);
        return 0;
    }
}

/*  The next event on channel (others are skipped) within timeout_ms.  */
static int s_recv_on(t_fixture_t *f, const char *channel, t_event_t *out, int timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    while (sh_clock_mono_ms() < end)
        if (s_recv_event(f, out, (int)(end - sh_clock_mono_ms())) == 0 &&
            strcmp(out->channel, channel) == 0)
            return 0;
    return -1;
}

/*  session_touch (creating a session when id is ""); the session id goes
    to sid.  */
static uint64_t s_touch(t_fixture_t *f, const char *id, char sid[SH_SESSION_MAX + 1])
{
    sh_session_touch_req_t req = {sh_str(id), true, 0};
    t_reply_t *r = t_reply_new();
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    sh_session_touch_rep_t *rep = (sh_session_touch_rep_t *)r->body;
    s_copy(rep->id, sid, SH_SESSION_MAX + 1);
    uint64_t views = rep->views;
    free(r);
    return views;
}

/*  A SUB socket only receives once its subscription reached the
    publisher: touch a session until its view count comes through.
    Latest values take no offsets, so this leaves every ordered channel
    untouched.  */
static void s_sub_ready(t_fixture_t *f)
{
    char sid[SH_SESSION_MAX + 1] = "", channel[SH_CHANNEL_MAX + 1];
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    while (sh_clock_mono_ms() < end) {
        s_touch(f, sid, sid);
        sh_events_session_channel(sid, channel);
        t_event_t ev;
        if (s_recv_on(f, channel, &ev, 100) == 0)
            return;
    }
    fail_msg("the SUB socket never received an event");
}

/*  event_canary with token; returns the status, *queued the reply's flag.  */
static uint64_t s_canary(t_fixture_t *f, const char *token, bool *queued)
{
    sh_event_canary_req_t req = {sh_str(token), 0};
    t_reply_t *r = t_reply_new();
    assert_int_equal(t_call(f->pool, SH_OP_event_canary, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    uint64_t status = r->status;
    if (queued)
        *queued = ((sh_event_canary_rep_t *)r->body)->queued;
    free(r);
    return status;
}

/*  The canary event for token, as its data should read.  */
static void s_canary_data(const char *token, char *out, size_t size)
{
    snprintf(out, size, "{\"token\":\"%s\"}", token);
}

/*  Receive the canary of token with the given offset (and epoch, unless NULL).  */
static void s_expect_canary(t_fixture_t *f, const char *token, uint64_t offset, const char *epoch,
                            t_event_t *ev)
{
    assert_int_equal(s_recv_on(f, "canary", ev, T_WAIT_MS), 0);
    char data[T_TEXT_MAX];
    s_canary_data(token, data, sizeof data);
    assert_string_equal(ev->data, data);
    assert_int_equal(ev->offset, offset);
    assert_true(ev->epoch[0] != 0);
    if (epoch)
        assert_string_equal(ev->epoch, epoch);
}

/*  event_range into r; returns the reply body.  */
static sh_event_range_rep_t *s_range(t_fixture_t *f, const char *channel, uint64_t after,
                                     uint64_t limit, t_reply_t *r)
{
    sh_event_range_req_t req = {sh_str(channel), after, limit, 0};
    assert_int_equal(t_call(f->pool, SH_OP_event_range, &req, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_OK);
    return (sh_event_range_rep_t *)r->body;
}

/*  The value of an unlabelled series (beyond the service/instance labels)
    in the service's metrics; -1 when absent.  */
static int64_t s_metric(t_fixture_t *f, const char *name)
{
    sh_metrics_req_t req = {0};
    t_reply_t *r = t_reply_new();
    int64_t value = -1;
    if (t_call(f->pool, SH_OP_metrics, &req, T_WAIT_MS, T_WAIT_MS, r) == 0 &&
        r->status == SH_STATUS_OK) {
        sh_metrics_rep_t *rep = (sh_metrics_rep_t *)r->body;
        char *text = calloc(1, rep->text.len + 1);
        assert_non_null(text);
        memcpy(text, rep->text.ptr, rep->text.len);
        char want[128];
        snprintf(want, sizeof want, "\n%s{", name);
        const char *line = strstr(text, want);
        const char *close = line ? strchr(line, '}') : NULL;
        if (close)
            value = strtoll(close + 1, NULL, 10);
        free(text);
    }
    free(r);
    return value;
}

typedef struct {
    const char *name;
    int64_t value;
} t_metric_wait_t;

static bool s_metric_is(t_fixture_t *f, const t_metric_wait_t *w, int64_t timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    while (s_metric(f, w->name) != w->value) {
        if (sh_clock_mono_ms() >= end)
            return false;
        zmq_poll(NULL, 0, 10); /* wait on nothing: pace the polling */
    }
    return true;
}

/*  --- the test's own Redis client ---------------------------------------------  */

/*  One command (argc words) on the fixture's Redis, answered.  */
static void s_redis(t_fixture_t *f, int argc, const char **argv, t_redis_reply_t *out)
{
    if (!f->client)
        f->client = t_redis_client_new(f->redis_port);
    assert_non_null(f->client);
    assert_int_equal(t_redis_command(f->client, argc, argv, out), 0);
}

/*  --- tests -------------------------------------------------------------------  */

/*  Three canaries arrive in order with offsets 1, 2, 3 of one epoch, as
    the envelope and event record describe.  */
static void test_events_ordered_offsets(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    const char *tokens[] = {"first", "second", "third"};
    int64_t before_us = sh_clock_wall_ms() * 1000;
    for (int i = 0; i < 3; i++) {
        bool queued = true;
        assert_int_equal(s_canary(f, tokens[i], &queued), SH_STATUS_OK);
        assert_false(queued);
    }
    int64_t after_us = (sh_clock_wall_ms() + 1) * 1000;
    char epoch[SH_ID_MAX + 1] = "";
    for (int i = 0; i < 3; i++) {
        t_event_t ev;
        s_expect_canary(f, tokens[i], (uint64_t)i + 1, i ? epoch : NULL, &ev);
        snprintf(epoch, sizeof epoch, "%s", ev.epoch);
        assert_string_equal(ev.topic, "canary");
        assert_string_equal(ev.event, "canary");
        assert_string_equal(ev.source, T_INSTANCE);
        assert_int_equal(ev.kind, SH_KIND_EVENT);
        assert_int_equal(ev.type, SH_OP_event);
        assert_true((int64_t)ev.ts_us >= before_us && (int64_t)ev.ts_us <= after_us);
    }
    assert_int_equal(s_metric(f, "shoal_events_appended_total"), 3);
    assert_int_equal(s_metric(f, "shoal_events_pending"), 0);
}

/*  event_range reads back what was published: after/limit select,
    first/top/epoch describe the history.  */
static void test_events_range(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    const char *tokens[] = {"a", "b", "c"};
    t_event_t ev;
    for (int i = 0; i < 3; i++)
        assert_int_equal(s_canary(f, tokens[i], NULL), SH_STATUS_OK);
    for (int i = 0; i < 3; i++)
        s_expect_canary(f, tokens[i], (uint64_t)i + 1, NULL, &ev);

    t_reply_t *r = t_reply_new();
    sh_event_range_rep_t *rep = s_range(f, "canary", 0, 10, r);
    assert_true(sh_str_eq(rep->epoch, ev.epoch));
    assert_int_equal(rep->first, 1);
    assert_int_equal(rep->top, 3);
    assert_int_equal(rep->events.count, 3);
    for (uint32_t i = 0; i < 3; i++) {
        sh_event_t *e = &rep->events.items[i];
        char data[T_TEXT_MAX];
        s_canary_data(tokens[i], data, sizeof data);
        assert_int_equal(e->offset, i + 1);
        assert_true(sh_str_eq(e->channel, "canary"));
        assert_true(sh_str_eq(e->epoch, ev.epoch));
        assert_true(sh_str_eq(e->type, "canary"));
        assert_true(sh_str_eq(e->data, data));
        assert_true(sh_str_eq(e->source, T_INSTANCE));
        assert_true(e->ts_us > 0);
    }
    /*  the last event's history record is what was published  */
    assert_int_equal(rep->events.items[2].ts_us, ev.ts_us);

    rep = s_range(f, "canary", 1, 1, r);
    assert_int_equal(rep->events.count, 1);
    assert_int_equal(rep->events.items[0].offset, 2);
    assert_int_equal(rep->top, 3);

    rep = s_range(f, "canary", 3, 10, r);
    assert_int_equal(rep->events.count, 0);
    assert_int_equal(rep->top, 3);

    rep = s_range(f, "canary", 0, 0, r);
    assert_int_equal(rep->events.count, 0);
    assert_int_equal(rep->first, 1);
    assert_int_equal(rep->top, 3);
    assert_true(sh_str_eq(rep->epoch, ev.epoch));

    /*  a limit past the most one reply carries is capped  */
    rep = s_range(f, "canary", 0, 100000, r);
    assert_int_equal(rep->events.count, 3);

    rep = s_range(f, "item:424242", 0, 10, r);
    assert_int_equal(rep->epoch.len, 0);
    assert_int_equal(rep->first, 0);
    assert_int_equal(rep->top, 0);
    assert_int_equal(rep->events.count, 0);

    sh_event_range_req_t bad = {sh_str(""), 0, 10, 0};
    assert_int_equal(t_call(f->pool, SH_OP_event_range, &bad, T_WAIT_MS, T_WAIT_MS, r), 0);
    assert_int_equal(r->status, SH_STATUS_INVALID);
    free(r);
}

/*  With SHOAL_EVENTS_HISTORY=5 a channel keeps its 5 newest events; top
    still counts every one.  */
static void test_events_history_trimmed(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    char token[16];
    for (int i = 1; i <= 8; i++) {
        snprintf(token, sizeof token, "t%d", i);
        assert_int_equal(s_canary(f, token, NULL), SH_STATUS_OK);
    }
    t_event_t ev;
    for (int i = 1; i <= 8; i++) {
        snprintf(token, sizeof token, "t%d", i);
        s_expect_canary(f, token, (uint64_t)i, NULL, &ev);
    }
    t_reply_t *r = t_reply_new();
    sh_event_range_rep_t *rep = s_range(f, "canary", 0, 100, r);
    assert_int_equal(rep->first, 4);
    assert_int_equal(rep->top, 8);
    assert_int_equal(rep->events.count, 5);
    for (uint32_t i = 0; i < 5; i++)
        assert_int_equal(rep->events.items[i].offset, i + 4);
    free(r);
}

/*  A touch publishes the session's count on its own channel as a latest
    value: offset 0, no epoch, nothing in Redis.  */
static void test_events_latest_skips_redis(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    char sid[SH_SESSION_MAX + 1], channel[SH_CHANNEL_MAX + 1];
    assert_int_equal(s_touch(f, "", sid), 1);
    sh_events_session_channel(sid, channel);
    assert_int_equal(strlen(channel), 2 + 32);
    assert_memory_equal(channel, "s:", 2);
    assert_int_equal(strspn(channel + 2, "0123456789abcdef"), 32);
    t_event_t ev;
    assert_int_equal(s_recv_on(f, channel, &ev, T_WAIT_MS), 0);
    assert_string_equal(ev.event, "views");
    assert_string_equal(ev.data, "{\"views\":1}");
    assert_int_equal(ev.offset, 0);
    assert_string_equal(ev.epoch, "");
    assert_int_equal(s_touch(f, sid, sid), 2);
    assert_int_equal(s_recv_on(f, channel, &ev, T_WAIT_MS), 0);
    assert_string_equal(ev.data, "{\"views\":2}");
    assert_int_equal(ev.offset, 0);

    t_reply_t *r = t_reply_new();
    sh_event_range_rep_t *rep = s_range(f, channel, 0, 10, r);
    assert_int_equal(rep->epoch.len, 0);
    assert_int_equal(rep->top, 0);
    free(r);
    char stream[128];
    snprintf(stream, sizeof stream, T_PREFIX "ev:%s", channel);
    const char *argv[] = {"EXISTS", stream};
    t_redis_reply_t reply;
    s_redis(f, 2, argv, &reply);
    assert_int_equal(reply.integer, 0);
    assert_int_equal(s_metric(f, "shoal_events_appended_total"), 0);
}

/*  Redis goes away while events are published: they wait, in order, and
    once Redis is back (with its append-only file) they are appended
    after the ones before, with no gap and under the same epoch.  */
static void test_events_redis_down_queued(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    t_event_t ev;
    assert_int_equal(s_canary(f, "up1", NULL), SH_STATUS_OK);
    assert_int_equal(s_canary(f, "up2", NULL), SH_STATUS_OK);
    s_expect_canary(f, "up1", 1, NULL, &ev);
    char epoch[SH_ID_MAX + 1];
    snprintf(epoch, sizeof epoch, "%s", ev.epoch);
    s_expect_canary(f, "up2", 2, epoch, &ev);

    t_kill(f->redis);
    f->redis = 0;
    const char *tokens[] = {"down3", "down4", "down5"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(s_canary(f, tokens[i], NULL), SH_STATUS_OK);
    /*  all three wait: none was published  */
    t_metric_wait_t waiting = {"shoal_events_pending", 3};
    assert_true(s_metric_is(f, &waiting, T_WAIT_MS));
    bool queued = false;
    assert_int_equal(s_canary(f, "down6", &queued), SH_STATUS_OK);
    assert_true(queued);
    assert_true(s_metric(f, "shoal_events_append_errors_total") > 0);

    f->redis = t_redis_start_aof(f->redis_port, f->dir);
    assert_true(f->redis > 0);
    for (int i = 0; i < 3; i++)
        s_expect_canary(f, tokens[i], (uint64_t)i + 3, epoch, &ev);
    s_expect_canary(f, "down6", 6, epoch, &ev);
    t_metric_wait_t drained = {"shoal_events_pending", 0};
    assert_true(s_metric_is(f, &drained, T_WAIT_MS));
    assert_int_equal(s_metric(f, "shoal_events_dropped_total"), 0);
    assert_int_equal(s_canary(f, "up7", NULL), SH_STATUS_OK);
    s_expect_canary(f, "up7", 7, epoch, &ev);

    t_reply_t *r = t_reply_new();
    sh_event_range_rep_t *rep = s_range(f, "canary", 0, 100, r);
    assert_true(sh_str_eq(rep->epoch, epoch));
    assert_int_equal(rep->top, 7);
    assert_int_equal(rep->events.count, 7);
    for (uint32_t i = 0; i < 7; i++)
        assert_int_equal(rep->events.items[i].offset, i + 1);
    free(r);
}

/*  An append whose answer came too late (Redis paused) is sent again;
    Redis runs both, and the second returns the first one's offset
    instead of appending the event twice.  */
static void test_events_late_append_not_doubled(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    t_event_t ev;
    assert_int_equal(s_canary(f, "before", NULL), SH_STATUS_OK);
    s_expect_canary(f, "before", 1, NULL, &ev);
    char epoch[SH_ID_MAX + 1];
    snprintf(epoch, sizeof epoch, "%s", ev.epoch);

    assert_int_equal(kill(f->redis, SIGSTOP), 0);
    assert_int_equal(s_canary(f, "paused", NULL), SH_STATUS_OK);
    /*  the append timed out, and its retry did too  */
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    while (s_metric(f, "shoal_events_append_errors_total") < 2 && sh_clock_mono_ms() < end)
        zmq_poll(NULL, 0, 10); /* wait on nothing: pace the polling */
    assert_true(s_metric(f, "shoal_events_append_errors_total") >= 2);
    assert_int_equal(kill(f->redis, SIGCONT), 0);

    s_expect_canary(f, "paused", 2, epoch, &ev);
    assert_int_equal(s_canary(f, "after", NULL), SH_STATUS_OK);
    s_expect_canary(f, "after", 3, epoch, &ev);
    t_reply_t *r = t_reply_new();
    sh_event_range_rep_t *rep = s_range(f, "canary", 0, 100, r);
    assert_int_equal(rep->top, 3);
    assert_int_equal(rep->events.count, 3);
    assert_true(sh_str_eq(rep->events.items[1].data, "{\"token\":\"paused\"}"));
    free(r);
}

/*  A channel whose meta hash is gone (evicted, flushed) starts again
    under a new epoch at offset 1, without the old entries.  */
static void test_events_meta_lost_new_epoch(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    t_event_t ev;
    assert_int_equal(s_canary(f, "old1", NULL), SH_STATUS_OK);
    assert_int_equal(s_canary(f, "old2", NULL), SH_STATUS_OK);
    s_expect_canary(f, "old1", 1, NULL, &ev);
    char epoch[SH_ID_MAX + 1];
    snprintf(epoch, sizeof epoch, "%s", ev.epoch);
    s_expect_canary(f, "old2", 2, epoch, &ev);

    const char *argv[] = {"DEL", T_PREFIX "ev:canary:meta"};
    t_redis_reply_t reply;
    s_redis(f, 2, argv, &reply);
    assert_int_equal(reply.integer, 1);

    assert_int_equal(s_canary(f, "new1", NULL), SH_STATUS_OK);
    s_expect_canary(f, "new1", 1, NULL, &ev);
    assert_string_not_equal(ev.epoch, epoch);
    t_reply_t *r = t_reply_new();
    sh_event_range_rep_t *rep = s_range(f, "canary", 0, 100, r);
    assert_true(sh_str_eq(rep->epoch, ev.epoch));
    assert_int_equal(rep->first, 1);
    assert_int_equal(rep->top, 1);
    assert_int_equal(rep->events.count, 1);
    assert_true(sh_str_eq(rep->events.items[0].data, "{\"token\":\"new1\"}"));
    free(r);
}

/*  A canary's token comes back JSON-escaped; one that is not UTF-8 is
    refused.  */
static void test_events_canary_token(void **state)
{
    t_fixture_t *f = *state;
    s_sub_ready(f);
    assert_int_equal(s_canary(f, "q\"uote\\", NULL), SH_STATUS_OK);
    t_event_t ev;
    assert_int_equal(s_recv_on(f, "canary", &ev, T_WAIT_MS), 0);
    json_error_t error;
    json_t *data = json_loads(ev.data, 0, &error);
    assert_non_null(data);
    assert_string_equal(json_string_value(json_object_get(data, "token")), "q\"uote\\");
    json_decref(data);
    assert_int_equal(s_canary(f, "\xff\xfe", NULL), SH_STATUS_INVALID);
}

/*  What the registry lists as the events endpoint of this test's
    session instance ("" while it does not list the instance).  */
typedef struct {
    bool done;
    char events[SH_ADDR_MAX + 1];
} t_listed_t;

/*  The members reply is larger than a t_reply_t holds: look at it here.  */
static void s_on_members(void *arg, const sh_reply_t *reply)
{
    t_listed_t *listed = arg;
    listed->done = true;
    const sh_members_rep_t *rep = reply->body;
    if (reply->status != SH_STATUS_OK || !rep)
        return;
    for (uint32_t i = 0; i < rep->members.count; i++)
        if (sh_str_eq(rep->members.items[i].instance, T_INSTANCE))
            sh_str_copy(rep->members.items[i].events, listed->events, sizeof listed->events);
}

static void s_listed(sh_pool_t *health, t_listed_t *listed)
{
    memset(listed, 0, sizeof *listed);
    sh_members_req_t req = {sh_str("session"), 0};
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + T_WAIT_MS};
    uint64_t handle = sh_pool_send(health, SH_OP_members, &req, &opts, s_on_members, listed);
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    while (!listed->done && sh_clock_mono_ms() < end) {
        void *sockets[SH_POOL_SOCKETS];
        zmq_pollitem_t items[SH_POOL_SOCKETS];
        int count = sh_pool_sockets(health, sockets, SH_POOL_SOCKETS);
        for (int i = 0; i < count; i++)
            items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
        zmq_poll(items, count, 20);
        sh_pool_drain(health);
        sh_pool_tick(health);
    }
    if (!listed->done)
        sh_pool_cancel(health, handle);
    assert_true(listed->done);
}

/*  The heartbeat carries the events endpoint: the registry lists it.  */
static void test_events_endpoint_advertised(void **state)
{
    t_fixture_t *f = *state;
    sh_pool_t *health = sh_pool_new("health", NULL);
    sh_pool_add(health, f->health_endpoint);
    assert_int_equal(t_wait_ready(health, T_WAIT_MS), 0);
    t_listed_t listed;
    int64_t end = sh_clock_mono_ms() + T_WAIT_MS;
    do {
        s_listed(health, &listed);
        if (!listed.events[0])
            zmq_poll(NULL, 0, 20); /* wait on nothing: the first heartbeat is on its way */
    } while (!listed.events[0] && sh_clock_mono_ms() < end);
    assert_string_equal(listed.events, f->events);
    sh_pool_destroy(&health);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_events_ordered_offsets, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_range, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_history_trimmed, s_setup_short_history,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_events_latest_skips_redis, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_redis_down_queued, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_late_append_not_doubled, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_meta_lost_new_epoch, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_canary_token, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_events_endpoint_advertised, s_setup_health,
                                        s_teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    sh_transport_shutdown();
    return failed;
}
