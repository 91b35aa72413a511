/*  test_session_service.c - the real shoal-session process on loopback,
    driven through the production caller pool: standard operations, bad
    input, deadlines, sessions in a real Redis, Redis down, draining.
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
#include "sh_transport.h"
#include "sh_util.h"

typedef struct {
    char dir[256];
    char log[300];
    int redis_port;
    pid_t redis;
    pid_t service;
    char endpoint[64];
    sh_pool_t *pool;
} t_fixture_t;

static int s_start_service(t_fixture_t *f, bool with_redis)
{
    int port = t_free_port();
    f->redis_port = t_free_port();
    if (with_redis) {
        f->redis = t_redis_start(f->redis_port, f->dir);
        if (f->redis < 0)
            return -1;
    }
    snprintf(f->endpoint, sizeof f->endpoint, "tcp://127.0.0.1:%d", port);
    static char bind[96], redis[64], instance[64], timeout[64], load[64];
    snprintf(bind, sizeof bind, "SHOAL_BIND=%s", f->endpoint);
    snprintf(redis, sizeof redis, "SHOAL_REDIS_PORT=%d", f->redis_port);
    snprintf(instance, sizeof instance, "SHOAL_INSTANCE=session-test");
    snprintf(timeout, sizeof timeout, "SHOAL_REDIS_TIMEOUT_MS=300");
    snprintf(load, sizeof load, "SHOAL_LOAD_MAX_MS=500");
    char *env[] = {bind, redis, instance, timeout, load, NULL};
    char program[512];
    snprintf(program, sizeof program, "%s/shoal-session", t_bin_dir());
    f->service = t_spawn(program, env, f->log);
    f->pool = sh_pool_new("session", NULL);
    sh_pool_add(f->pool, f->endpoint);
    return t_wait_ready(f->pool, 5000);
}

static int s_setup(void **state, bool with_redis)
{
    t_fixture_t *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/shoal-service-test-XXXXXX");
    if (!mkdtemp(f->dir))
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
    return s_setup(state, false);
}

static int s_setup_redis(void **state)
{
    return s_setup(state, true);
}

static int s_teardown(void **state)
{
    t_fixture_t *f = *state;
    sh_pool_destroy(&f->pool);
    if (f->service > 0 && t_wait_exit(f->service, 0) == -1)
        t_kill(f->service);
    if (f->redis > 0)
        t_kill(f->redis);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", f->dir);
    free(f);
    return 0;
}

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
