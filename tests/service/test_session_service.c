/*  test_session_service.c - the real shoal-session process on loopback,
    driven through the production caller pool: standard operations, bad
    input, deadlines, sessions, logins and rate limits in a real Redis
    (inspected with the project's own Redis client), Redis down, stalled
    and without its scripts, draining.
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
#include "sh_redis.h"
#include "sh_transport.h"
#include "sh_util.h"

#define T_ENV_MAX 4

typedef struct {
    char dir[256];
    char log[300];
    int redis_port;
    pid_t redis;
    pid_t service;
    char endpoint[64];
    sh_pool_t *pool;
    const char *env[T_ENV_MAX + 1]; /* extra settings of the service, NULL-ended */
    t_redis_client_t *client;       /* the test's own, once asked for */
} t_fixture_t;

static int s_start_service(t_fixture_t *f, bool with_redis)
{
    f->redis_port = t_free_port();
    if (with_redis) {
        f->redis = t_redis_start(f->redis_port, f->dir);
        if (f->redis < 0)
            return -1;
    }
    t_endpoint(f->endpoint, sizeof f->endpoint);
    char redis[64];
    snprintf(redis, sizeof redis, "SHOAL_REDIS_PORT=%d", f->redis_port);
    const char *env[] = {redis, "SHOAL_INSTANCE=session-test", "SHOAL_REDIS_TIMEOUT_MS=300",
                         "SHOAL_LOAD_MAX_MS=500", NULL};
    t_service_spec_t spec = {"session", f->endpoint, env, f->env, f->log, 5000};
    return t_service_start(&spec, &f->service, &f->pool);
}

static int s_setup(void **state, bool with_redis, const char *const *env)
{
    t_fixture_t *f = t_alloc(sizeof *f);
    for (int i = 0; env && env[i] && i < T_ENV_MAX; i++)
        f->env[i] = env[i];
    if (t_dir_new(f->dir, sizeof f->dir, "session-test"))
        return -1;
    snprintf(f->log, sizeof f->log, "%s/session.log", f->dir);
    *state = f;
    if (s_start_service(f, with_redis)) {
        t_tail(f->log);
        return -1;
    }
    return 0;
}

static int s_setup_plain(void **state)
{
    return s_setup(state, false, NULL);
}

static int s_setup_redis(void **state)
{
    return s_setup(state, true, NULL);
}

/*  Sessions that expire after 1 s without use.  */
static int s_setup_short_idle(void **state)
{
    const char *env[] = {"SHOAL_SESSION_IDLE_TIMEOUT=1", "SHOAL_SESSION_ABSOLUTE_TIMEOUT=3600",
                         NULL};
    return s_setup(state, true, env);
}

/*  Sessions that end 1 s after creation however busy.  */
static int s_setup_short_absolute(void **state)
{
    const char *env[] = {"SHOAL_SESSION_IDLE_TIMEOUT=60", "SHOAL_SESSION_ABSOLUTE_TIMEOUT=1", NULL};
    return s_setup(state, true, env);
}

static int s_teardown(void **state)
{
    t_fixture_t *f = *state;
    t_redis_client_destroy(&f->client);
    sh_pool_destroy(&f->pool);
    if (f->service > 0 && t_wait_exit(f->service, 0) == -1)
        t_kill(f->service);
    if (f->redis > 0)
        t_kill(f->redis);
    t_dir_remove(f->dir);
    free(f);
    return 0;
}

/*  --- the test's own view of Redis ----------------------------------------  */

/*  One command on the fixture's Redis (space-separated words), answered.  */
static void s_redis(t_fixture_t *f, const char *command, t_redis_reply_t *out)
{
    if (!f->client)
        f->client = t_redis_client_new(f->redis_port);
    assert_non_null(f->client);
    char words[256];
    snprintf(words, sizeof words, "%s", command);
    const char *argv[8];
    int argc = 0;
    for (char *save = NULL, *w = strtok_r(words, " ", &save); w && argc < 8;
         w = strtok_r(NULL, " ", &save))
        argv[argc++] = w;
    assert_int_equal(t_redis_command(f->client, argc, argv, out), 0);
}

/*  Name of the only key matching pattern.  */
static void s_only_key(t_fixture_t *f, const char *pattern, char *out, size_t size)
{
    t_redis_reply_t r;
    char command[128];
    snprintf(command, sizeof command, "KEYS %s", pattern);
    s_redis(f, command, &r);
    assert_int_equal(r.count, 1);
    snprintf(out, size, "%s", r.elems[0]);
}

static int64_t s_pttl(t_fixture_t *f, const char *key)
{
    t_redis_reply_t r;
    char command[200];
    snprintf(command, sizeof command, "PTTL %s", key);
    s_redis(f, command, &r);
    assert_int_equal(r.type, SH_REDIS_INT);
    return r.integer;
}

/*  Poll cond (which may talk to Redis) until it holds or timeout_ms passes.  */
static bool s_wait_for(t_fixture_t *f, bool (*cond)(t_fixture_t *f, void *arg), void *arg,
                       int64_t timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    while (!cond(f, arg)) {
        if (sh_clock_mono_ms() >= end)
            return false;
        zmq_poll(NULL, 0, 5); /* wait on nothing: pace the polling */
    }
    return true;
}

typedef struct {
    const char *key;
    int64_t below; /* wait until the key's PTTL is under this (-2: gone) */
} t_ttl_wait_t;

static bool s_ttl_below(t_fixture_t *f, void *arg)
{
    t_ttl_wait_t *w = arg;
    return s_pttl(f, w->key) < w->below;
}

static bool s_no_keys(t_fixture_t *f, void *arg)
{
    t_redis_reply_t r;
    char command[128];
    snprintf(command, sizeof command, "KEYS %s", (const char *)arg);
    s_redis(f, command, &r);
    return r.count == 0;
}

/*  --- calls ----------------------------------------------------------------  */

/*  touch with create until the service has connected to Redis.  */
static void s_new_session(t_fixture_t *f, char id[SH_SESSION_MAX + 1])
{
    t_reply_t r;
    sh_session_touch_req_t touch = {sh_str(""), true, 0};
    int64_t end = sh_clock_mono_ms() + 3000;
    do
        assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    while (r.status == SH_STATUS_UNAVAILABLE && sh_clock_mono_ms() < end);
    assert_int_equal(r.status, SH_STATUS_OK);
    sh_session_touch_rep_t *rec = (sh_session_touch_rep_t *)r.body;
    assert_true(rec->created);
    sh_str_copy(rec->id, id, SH_SESSION_MAX + 1);
}

static uint64_t s_login(t_fixture_t *f, const char *old_id, uint64_t user_id, const char *username,
                        t_reply_t *r)
{
    sh_session_login_req_t login = {sh_str(old_id), user_id, sh_str(username), 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_login, &login, 1000, 2000, r), 0);
    return r->status;
}

static uint64_t s_hit(t_fixture_t *f, const char *key, uint64_t limit, uint64_t window_ms,
                      t_reply_t *r)
{
    sh_ratelimit_hit_req_t hit = {sh_str(key), limit, window_ms, 0};
    assert_int_equal(t_call(f->pool, SH_OP_ratelimit_hit, &hit, 1000, 2000, r), 0);
    return r->status;
}

/*  A CSRF token or session id: 43 characters of base64url.  */
static void s_assert_token(sh_str_t token)
{
    assert_int_equal(token.len, 43);
    for (size_t i = 0; i < token.len; i++) {
        char c = token.ptr[i];
        assert_true((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_');
    }
}

/*  --- tests ----------------------------------------------------------------  */

static void test_session_service_answers_ping_and_info(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    sh_ping_req_t ping = {0};
    assert_int_equal(t_call(f->pool, SH_OP_ping, &ping, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    assert_string_equal(r.instance, "session-test");
    sh_ping_rep_t *pong = (sh_ping_rep_t *)r.body;
    assert_true(sh_str_eq(pong->service, "session"));
    sh_info_req_t info = {0};
    assert_int_equal(t_call(f->pool, SH_OP_info, &info, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    sh_info_rep_t *rep = (sh_info_rep_t *)r.body;
    assert_int_equal(rep->pid, (uint64_t)f->service);
    assert_true(rep->rss_bytes > 0);
    assert_true(rep->requests >= 2);
}

static void test_session_service_load_burns_and_is_capped(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    sh_load_req_t load = {40, 0};
    assert_int_equal(t_call(f->pool, SH_OP_load, &load, 2000, 3000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    assert_true(r.elapsed_ms >= 40);
    load.ms = 501;
    assert_int_equal(t_call(f->pool, SH_OP_load, &load, 2000, 3000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_INVALID);
    /*  a ping is answered while a long load burns: the loop never blocks  */
    load.ms = 400;
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + 3000};
    sh_pool_send(f->pool, SH_OP_load, &load, &opts, NULL, NULL);
    sh_ping_req_t ping = {0};
    assert_int_equal(t_call(f->pool, SH_OP_ping, &ping, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    assert_true(r.elapsed_ms < 300);
}

static void test_session_service_replies_malformed_to_garbage(void **state)
{
    t_fixture_t *f = *state;
    void *dealer = sh_transport_dealer(f->endpoint);
    assert_non_null(dealer);
    int timeout = 3000;
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    /*  a frame that is not msgpack, and a declared 4-billion element array  */
    const char *bad[] = {"\xc1\xc1\xc1", "\xdd\xff\xff\xff\xff"};
    for (int i = 0; i < 2; i++) {
        assert_true(zmq_send(dealer, bad[i], strlen(bad[i]), ZMQ_SNDMORE) >= 0);
        assert_true(zmq_send(dealer, "\x90", 1, 0) >= 0);
        char env_buf[512], body_buf[64];
        int n = zmq_recv(dealer, env_buf, sizeof env_buf, 0);
        assert_true(n > 0);
        assert_true(zmq_recv(dealer, body_buf, sizeof body_buf, 0) >= 0);
        sh_envelope_t env;
        assert_int_equal(sh_codec_decode(&sh_envelope_codec, &env, env_buf, (size_t)n), 0);
        assert_int_equal(env.kind, SH_KIND_REPLY);
        assert_int_equal(env.status, SH_STATUS_MALFORMED);
    }
    sh_transport_close(&dealer);
    /*  still serving  */
    t_reply_t r;
    sh_ping_req_t ping = {0};
    assert_int_equal(t_call(f->pool, SH_OP_ping, &ping, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
}

static void test_session_service_refuses_unknown_op_and_expired_deadline(void **state)
{
    t_fixture_t *f = *state;
    void *dealer = sh_transport_dealer(f->endpoint);
    int timeout = 3000;
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    /*  IMMEDIATE: wait until the connection is up before sending  */
    zmq_pollitem_t out = {dealer, 0, ZMQ_POLLOUT, 0};
    assert_int_equal(zmq_poll(&out, 1, 3000), 1);
    const uint64_t types[] = {4242, SH_OP_ping};
    const uint64_t deadlines[] = {0, 1000}; /* 1000 ms after the epoch: long past */
    const uint64_t expect[] = {SH_STATUS_UNSUPPORTED, SH_STATUS_TIMEOUT};
    for (int i = 0; i < 2; i++) {
        sh_envelope_t env = {0};
        env.version = SH_PROTO_VERSION;
        env.type = types[i];
        env.request_id = sh_str("t-1");
        env.deadline_ms = deadlines[i];
        sh_ping_req_t body = {0};
        assert_int_equal(
            sh_transport_send(dealer, NULL, &env, &sh_ping_req_codec, &body, NULL, NULL, 0), 0);
        char env_buf[512], body_buf[64];
        int n = zmq_recv(dealer, env_buf, sizeof env_buf, 0);
        assert_true(n > 0);
        assert_true(zmq_recv(dealer, body_buf, sizeof body_buf, 0) >= 0);
        sh_envelope_t back;
        assert_int_equal(sh_codec_decode(&sh_envelope_codec, &back, env_buf, (size_t)n), 0);
        assert_true(sh_str_eq(back.request_id, "t-1"));
        assert_int_equal(back.status, expect[i]);
    }
    sh_transport_close(&dealer);
}

static void test_session_service_without_redis_answers_unavailable_fast(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    sh_session_touch_req_t touch = {sh_str(""), true, 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 2000, 3000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_UNAVAILABLE);
    assert_true(r.elapsed_ms < 1000);
    /*  logins and rate limits too: a limit that cannot be checked is not passed  */
    assert_int_equal(s_login(f, "", 7, "alice", &r), SH_STATUS_UNAVAILABLE);
    assert_true(r.elapsed_ms < 1000);
    assert_int_equal(s_hit(f, "login:ip:127.0.0.1", 30, 300000, &r), SH_STATUS_UNAVAILABLE);
    assert_true(r.elapsed_ms < 1000);
}

static void test_session_service_sessions_in_redis(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    sh_session_touch_req_t touch = {sh_str(""), true, 0};
    /*  the service may still be connecting to Redis: retry briefly  */
    int64_t end = sh_clock_mono_ms() + 3000;
    do
        assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    while (r.status == SH_STATUS_UNAVAILABLE && sh_clock_mono_ms() < end);
    assert_int_equal(r.status, SH_STATUS_OK);
    sh_session_touch_rep_t *rec = (sh_session_touch_rep_t *)r.body;
    assert_true(rec->created);
    assert_int_equal(rec->views, 1);
    /*  an anonymous session names no user and has no CSRF token  */
    assert_int_equal(rec->user_id, 0);
    assert_int_equal(rec->username.len, 0);
    assert_int_equal(rec->csrf.len, 0);
    char id[SH_SESSION_MAX + 1];
    sh_str_copy(rec->id, id, sizeof id);
    assert_int_equal(strlen(id), 43);

    touch.id = sh_str(id);
    for (uint64_t views = 2; views <= 5; views++) {
        assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
        assert_int_equal(r.status, SH_STATUS_OK);
        rec = (sh_session_touch_rep_t *)r.body;
        assert_false(rec->created);
        assert_int_equal(rec->views, views);
        assert_true(sh_str_eq(rec->id, id));
    }
    sh_session_get_req_t get = {sh_str(id), 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    assert_int_equal(((sh_session_get_rep_t *)r.body)->views, 5);
    assert_int_equal(((sh_session_get_rep_t *)r.body)->user_id, 0);

    sh_session_destroy_req_t destroy = {sh_str(id), 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_destroy, &destroy, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    assert_true(((sh_session_destroy_rep_t *)r.body)->existed);
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);
    /*  a destroyed id is never revived: touch with create gets a new id  */
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    rec = (sh_session_touch_rep_t *)r.body;
    assert_true(rec->created);
    assert_false(sh_str_eq(rec->id, id));
    /*  without create, an unknown or malformed id is not found  */
    touch.create = false;
    touch.id = sh_str("not-a-session-id");
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);

    /*  Redis killed: unavailable within the Redis timeout, then back  */
    t_kill(f->redis);
    touch.id = rec->id;
    touch.create = true;
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 2000, 3000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_UNAVAILABLE);
    assert_true(r.elapsed_ms < 1000);
    f->redis = t_redis_start(f->redis_port, f->dir);
    assert_true(f->redis > 0);
    end = sh_clock_mono_ms() + 5000;
    do
        assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    while (r.status != SH_STATUS_OK && sh_clock_mono_ms() < end);
    assert_int_equal(r.status, SH_STATUS_OK);
}

static void test_session_service_login_makes_a_new_session(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    char anon[SH_SESSION_MAX + 1];
    s_new_session(f, anon);

    assert_int_equal(s_login(f, anon, 7, "alice", &r), SH_STATUS_OK);
    sh_session_login_rep_t *rec = (sh_session_login_rep_t *)r.body;
    assert_true(rec->created);
    assert_int_equal(rec->views, 0);
    assert_int_equal(rec->user_id, 7);
    assert_true(sh_str_eq(rec->username, "alice"));
    s_assert_token(rec->id);
    s_assert_token(rec->csrf);
    assert_false(sh_str_eq(rec->id, anon));
    char id[SH_SESSION_MAX + 1], csrf[SH_CSRF_MAX + 1];
    sh_str_copy(rec->id, id, sizeof id);
    sh_str_copy(rec->csrf, csrf, sizeof csrf);

    /*  the id from before the login stops working at once  */
    sh_session_get_req_t get = {sh_str(anon), 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);
    sh_session_touch_req_t touch = {sh_str(anon), false, 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);

    /*  get and touch of the new session name the user and its token  */
    get.id = sh_str(id);
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    sh_session_get_rep_t *got = (sh_session_get_rep_t *)r.body;
    assert_int_equal(got->views, 0);
    assert_int_equal(got->user_id, 7);
    assert_true(sh_str_eq(got->username, "alice"));
    assert_true(sh_str_eq(got->csrf, csrf));
    touch.id = sh_str(id);
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    sh_session_touch_rep_t *touched = (sh_session_touch_rep_t *)r.body;
    assert_false(touched->created);
    assert_int_equal(touched->views, 1);
    assert_int_equal(touched->user_id, 7);
    assert_true(sh_str_eq(touched->username, "alice"));
    assert_true(sh_str_eq(touched->csrf, csrf));

    /*  logging in again from a logged-in session: new id, new token  */
    assert_int_equal(s_login(f, id, 7, "alice", &r), SH_STATUS_OK);
    rec = (sh_session_login_rep_t *)r.body;
    assert_false(sh_str_eq(rec->id, id));
    assert_false(sh_str_eq(rec->csrf, csrf));
    char second[SH_SESSION_MAX + 1];
    sh_str_copy(rec->id, second, sizeof second);
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);

    /*  no old session, or a malformed id, is no obstacle  */
    assert_int_equal(s_login(f, "", 8, "bob.B-2_x", &r), SH_STATUS_OK);
    assert_true(sh_str_eq(((sh_session_login_rep_t *)r.body)->username, "bob.B-2_x"));
    assert_int_equal(s_login(f, "not-a-session-id", 8, "bob", &r), SH_STATUS_OK);

    /*  logout: destroy ends the login session  */
    sh_session_destroy_req_t destroy = {sh_str(second), 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_destroy, &destroy, 1000, 2000, &r), 0);
    assert_true(((sh_session_destroy_rep_t *)r.body)->existed);
    get.id = sh_str(second);
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);
}

typedef struct {
    bool done;
    uint64_t status;
    char id[SH_SESSION_MAX + 1];
    char csrf[SH_CSRF_MAX + 1];
} t_login_t;

static void s_on_login(void *arg, const sh_reply_t *reply)
{
    t_login_t *out = arg;
    out->done = true;
    out->status = reply->status;
    const sh_session_login_rep_t *rec = reply->body;
    if (reply->status == SH_STATUS_OK && rec) {
        sh_str_copy(rec->id, out->id, sizeof out->id);
        sh_str_copy(rec->csrf, out->csrf, sizeof out->csrf);
    }
}

/*  A login carrying an idempotency key, as a retrying caller sends it.  */
static void s_login_idem(t_fixture_t *f, const char *idem_key, t_login_t *out)
{
    memset(out, 0, sizeof *out);
    sh_session_login_req_t login = {sh_str(""), 9, sh_str("carol"), 0};
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + 1000, .idem_key = idem_key};
    sh_pool_send(f->pool, SH_OP_session_login, &login, &opts, s_on_login, out);
    int64_t end = sh_clock_mono_ms() + 2000;
    while (!out->done && sh_clock_mono_ms() < end) {
        void *sockets[SH_POOL_SOCKETS];
        zmq_pollitem_t items[SH_POOL_SOCKETS];
        int n = sh_pool_sockets(f->pool, sockets, SH_POOL_SOCKETS);
        for (int i = 0; i < n; i++)
            items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
        zmq_poll(items, n, 20);
        sh_pool_drain(f->pool);
        sh_pool_tick(f->pool);
    }
    assert_true(out->done);
    assert_int_equal(out->status, SH_STATUS_OK);
}

static void test_session_service_login_retry_gets_the_same_session(void **state)
{
    t_fixture_t *f = *state;
    char anon[SH_SESSION_MAX + 1];
    s_new_session(f, anon);
    t_login_t first, again, other;
    s_login_idem(f, "login-retry-1", &first);
    s_login_idem(f, "login-retry-1", &again);
    assert_string_equal(first.id, again.id);
    assert_string_equal(first.csrf, again.csrf);
    s_login_idem(f, "login-retry-2", &other);
    assert_string_not_equal(first.id, other.id);
    assert_string_not_equal(first.csrf, other.csrf);
}

static void test_session_service_rejects_invalid_login_and_ratelimit(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    /*  checked before Redis is asked (this fixture runs without one)  */
    assert_int_equal(s_login(f, "", 0, "alice", &r), SH_STATUS_INVALID);
    char longest[SH_USERNAME_MAX + 2];
    memset(longest, 'a', SH_USERNAME_MAX + 1);
    longest[SH_USERNAME_MAX + 1] = 0;
    const char *names[] = {"", "ab", "bad name", "al/ice", "al\xc3\xa9", "a:b*"};
    for (size_t i = 0; i < SH_ARRAY_SIZE(names); i++)
        assert_int_equal(s_login(f, "", 7, names[i], &r), SH_STATUS_INVALID);
    /*  one byte over the field's limit does not even decode  */
    uint64_t status = s_login(f, "", 7, longest, &r);
    assert_true(status == SH_STATUS_INVALID || status == SH_STATUS_TOO_LARGE);
    /*  the bounds themselves are valid: Redis is asked, and is not there  */
    assert_int_equal(s_login(f, "", 7, "abc", &r), SH_STATUS_UNAVAILABLE);
    longest[SH_USERNAME_MAX] = 0;
    assert_int_equal(s_login(f, "", 7, longest, &r), SH_STATUS_UNAVAILABLE);

    assert_int_equal(s_hit(f, "", 3, 1000, &r), SH_STATUS_INVALID);
    assert_int_equal(s_hit(f, "k", 0, 1000, &r), SH_STATUS_INVALID);
    assert_int_equal(s_hit(f, "k", 3, 0, &r), SH_STATUS_INVALID);
    assert_int_equal(s_hit(f, "k", 3, 86400001, &r), SH_STATUS_INVALID);
    assert_int_equal(s_hit(f, "k", 3, UINT64_MAX, &r), SH_STATUS_INVALID);
    assert_int_equal(s_hit(f, "k", 1, 86400000, &r), SH_STATUS_UNAVAILABLE);
}

static void test_session_service_get_refreshes_idle_expiry(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    char id[SH_SESSION_MAX + 1], key[128];
    s_new_session(f, id);
    s_only_key(f, "shoal:s:*", key, sizeof key);
    assert_true(s_pttl(f, key) <= 1000);
    sh_session_get_req_t get = {sh_str(id), 0};
    /*  used by reads alone, the session outlives its idle timeout (1 s)
        several times over; a read counts no view  */
    for (int round = 0; round < 3; round++) {
        t_ttl_wait_t half = {key, 500};
        assert_true(s_wait_for(f, s_ttl_below, &half, 2000));
        assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
        assert_int_equal(r.status, SH_STATUS_OK);
        assert_int_equal(((sh_session_get_rep_t *)r.body)->views, 1);
        assert_true(s_pttl(f, key) > 800);
    }
    /*  left alone, it expires  */
    t_ttl_wait_t gone = {key, -1};
    assert_true(s_wait_for(f, s_ttl_below, &gone, 3000));
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);
}

static void test_session_service_get_keeps_the_absolute_timeout(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    char id[SH_SESSION_MAX + 1];
    int64_t started = sh_clock_mono_ms();
    s_new_session(f, id);
    sh_session_get_req_t get = {sh_str(id), 0};
    int reads = 0;
    int64_t end = started + 4000;
    do {
        assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
        if (r.status == SH_STATUS_OK) {
            reads++;
            zmq_poll(NULL, 0, 20); /* pace the reads */
        }
    } while (r.status == SH_STATUS_OK && sh_clock_mono_ms() < end);
    /*  busy with reads, it still ends 1 s after it was made  */
    assert_int_equal(r.status, SH_STATUS_NOT_FOUND);
    int64_t lived = sh_clock_mono_ms() - started;
    assert_true(lived >= 950);
    assert_true(lived < 2500);
    assert_true(reads >= 5);
}

static void test_session_service_ratelimit_windows(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    char id[SH_SESSION_MAX + 1];
    s_new_session(f, id); /* Redis is connected */
    const char *key = "login:ip:127.0.0.1";
    for (uint64_t n = 1; n <= 5; n++) {
        assert_int_equal(s_hit(f, key, 3, 500, &r), SH_STATUS_OK);
        sh_ratelimit_hit_rep_t *rep = (sh_ratelimit_hit_rep_t *)r.body;
        assert_int_equal(rep->count, n);
        assert_int_equal(rep->allowed, n <= 3);
        assert_true(rep->retry_after_ms > 0);
        assert_true(rep->retry_after_ms <= 500);
    }
    /*  another name has its own window  */
    assert_int_equal(s_hit(f, "login:account:alice", 3, 500, &r), SH_STATUS_OK);
    assert_int_equal(((sh_ratelimit_hit_rep_t *)r.body)->count, 1);
    /*  names are hashed: no client text in Redis key names  */
    t_redis_reply_t keys;
    s_redis(f, "KEYS shoal:rl:*", &keys);
    assert_int_equal(keys.count, 2);
    for (size_t i = 0; i < keys.count; i++) {
        assert_null(strstr(keys.elems[i], "login"));
        assert_null(strstr(keys.elems[i], "alice"));
    }
    /*  once the window is over, counting starts again  */
    assert_true(s_wait_for(f, s_no_keys, "shoal:rl:*", 3000));
    assert_int_equal(s_hit(f, key, 3, 500, &r), SH_STATUS_OK);
    assert_int_equal(((sh_ratelimit_hit_rep_t *)r.body)->count, 1);
    assert_true(((sh_ratelimit_hit_rep_t *)r.body)->allowed);
    /*  a day-long window: retry_after is what is left of it  */
    const uint64_t day = 86400000;
    assert_int_equal(s_hit(f, "signup:ip:::1", 1, day, &r), SH_STATUS_OK);
    sh_ratelimit_hit_rep_t *rep = (sh_ratelimit_hit_rep_t *)r.body;
    assert_true(rep->allowed);
    assert_true(rep->retry_after_ms <= day && rep->retry_after_ms > day - 5000);
    assert_int_equal(s_hit(f, "signup:ip:::1", 1, day, &r), SH_STATUS_OK);
    rep = (sh_ratelimit_hit_rep_t *)r.body;
    assert_false(rep->allowed);
    assert_int_equal(rep->count, 2);
}

static void test_session_service_survives_a_script_flush(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    char id[SH_SESSION_MAX + 1];
    s_new_session(f, id);
    t_redis_reply_t flushed;
    s_redis(f, "SCRIPT FLUSH", &flushed);
    /*  Redis no longer knows the scripts: each call falls back to EVAL  */
    sh_session_touch_req_t touch = {sh_str(id), false, 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    assert_int_equal(((sh_session_touch_rep_t *)r.body)->views, 2);
    sh_session_get_req_t get = {sh_str(id), 0};
    assert_int_equal(t_call(f->pool, SH_OP_session_get, &get, 1000, 2000, &r), 0);
    assert_int_equal(r.status, SH_STATUS_OK);
    assert_int_equal(s_hit(f, "flush", 2, 1000, &r), SH_STATUS_OK);
    assert_int_equal(s_login(f, id, 3, "dave", &r), SH_STATUS_OK);
    /*  ... and the scripts are loaded again for the calls after  */
    assert_int_equal(s_hit(f, "flush", 2, 1000, &r), SH_STATUS_OK);
    assert_int_equal(((sh_ratelimit_hit_rep_t *)r.body)->count, 2);
}

static void test_session_service_redis_paused_fails_fast_counts_nothing(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    char id[SH_SESSION_MAX + 1];
    s_new_session(f, id);
    sh_session_touch_req_t touch = {sh_str(id), false, 0};
    assert_int_equal(kill(f->redis, SIGSTOP), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 2000, 3000, &r), 0);
        assert_int_equal(r.status, SH_STATUS_UNAVAILABLE);
        assert_true(r.elapsed_ms < 1000);
    }
    assert_int_equal(s_hit(f, "paused", 5, 1000, &r), SH_STATUS_UNAVAILABLE);
    assert_true(r.elapsed_ms < 1000);
    assert_int_equal(kill(f->redis, SIGCONT), 0);
    /*  back: the touches refused while Redis stood still were never counted
        (each failure after the resume may or may not have landed)  */
    int failed = 0;
    int64_t end = sh_clock_mono_ms() + 5000;
    for (;;) {
        assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
        if (r.status == SH_STATUS_OK || sh_clock_mono_ms() >= end)
            break;
        failed++;
    }
    assert_int_equal(r.status, SH_STATUS_OK);
    uint64_t views = ((sh_session_touch_rep_t *)r.body)->views;
    assert_true(views >= 2);
    assert_true(views <= 2 + (uint64_t)failed);
}

static void test_session_service_drains_on_sigterm(void **state)
{
    t_fixture_t *f = *state;
    t_reply_t r;
    sh_load_req_t load = {300, 0};
    /*  start a long load, then ask the service to stop: the load finishes  */
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + 3000};
    sh_pool_send(f->pool, SH_OP_load, &load, &opts, NULL, NULL);
    sh_pool_drain(f->pool);
    /*  ... wait until the service reports it in flight, then SIGTERM  */
    int64_t end = sh_clock_mono_ms() + 2000;
    uint64_t in_flight = 0;
    while (in_flight == 0 && sh_clock_mono_ms() < end) {
        sh_info_req_t info = {0};
        assert_int_equal(t_call(f->pool, SH_OP_info, &info, 1000, 2000, &r), 0);
        in_flight = ((sh_info_rep_t *)r.body)->in_flight;
    }
    assert_true(in_flight >= 1);
    kill(f->service, SIGTERM);
    /*  new work is refused while draining (the signal may be read just
        after a request that arrived with it)  */
    sh_session_touch_req_t touch = {sh_str(""), true, 0};
    end = sh_clock_mono_ms() + 2000;
    do
        assert_int_equal(t_call(f->pool, SH_OP_session_touch, &touch, 1000, 2000, &r), 0);
    while (!strstr(r.error, "draining") && sh_clock_mono_ms() < end);
    /*  the only instance drains: the pool has nowhere else to go  */
    assert_int_equal(r.status, SH_STATUS_UNAVAILABLE);
    assert_non_null(strstr(r.error, "draining"));
    /*  ... and the process exits cleanly once the load is done  */
    assert_int_equal(t_wait_exit(f->service, 5000), 0);
    f->service = 0;
}

int main(void)
{
    sh_crypto_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_session_service_answers_ping_and_info, s_setup_plain,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_load_burns_and_is_capped,
                                        s_setup_plain, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_replies_malformed_to_garbage,
                                        s_setup_plain, s_teardown),
        cmocka_unit_test_setup_teardown(
            test_session_service_refuses_unknown_op_and_expired_deadline, s_setup_plain,
            s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_without_redis_answers_unavailable_fast,
                                        s_setup_plain, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_sessions_in_redis, s_setup_redis,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_login_makes_a_new_session,
                                        s_setup_redis, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_login_retry_gets_the_same_session,
                                        s_setup_redis, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_rejects_invalid_login_and_ratelimit,
                                        s_setup_plain, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_get_refreshes_idle_expiry,
                                        s_setup_short_idle, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_get_keeps_the_absolute_timeout,
                                        s_setup_short_absolute, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_ratelimit_windows, s_setup_redis,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_survives_a_script_flush, s_setup_redis,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_redis_paused_fails_fast_counts_nothing,
                                        s_setup_redis, s_teardown),
        cmocka_unit_test_setup_teardown(test_session_service_drains_on_sigterm, s_setup_plain,
                                        s_teardown),
    };
    int rc = cmocka_run_group_tests_name("session_service", tests, NULL, NULL);
    /*  a failed test may leave a socket open, and terminating the context
        would then wait for it forever  */
    if (rc == 0)
        sh_transport_shutdown();
    return rc;
}
