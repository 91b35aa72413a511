/*  test_redis.c - the asynchronous Redis client without a Redis: nobody
    listening, and a peer that accepts connections but never answers (or
    answers what the test writes for it). Calls end by their deadline,
    stalled connections are redialled, a process pause is not taken for a
    stalled Redis, and the client never holds more calls than allowed.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <zmq.h>

#include "sh_codec.h"
#include "sh_metrics.h"
#include "sh_redis.h"
#include "sh_util.h"

#define T_TIMEOUT_MS 200
#define T_LABELS     "backend=\"unit\""
#define T_PORT_LOW   20000 /* test ports stay below the ephemeral range */
#define T_PORT_SPAN  12000

typedef struct {
    sh_loop_t *loop;
    sh_metrics_t *metrics;
    sh_redis_t *redis;
    int listener; /* the silent peer, or -1 */
    int port;
} t_fixture_t;

typedef struct {
    int calls;
    uint64_t status;
    int type;
    int64_t elapsed_ms;
    int64_t started_ms;
} t_answer_t;

static void s_on_answer(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    t_answer_t *a = arg;
    a->calls++;
    a->status = status;
    a->type = reply ? sh_redis_type(reply) : -1;
    a->elapsed_ms = sh_clock_mono_ms() - a->started_ms;
}

static uint64_t *s_counter(t_fixture_t *f, const char *name)
{
    return sh_metrics_counter(f->metrics, name, "", T_LABELS);
}

/*  A listening socket on a free loopback port below the ephemeral range.
    The kernel completes connections to it, but nobody reads or answers.  */
static int s_listen(int *port)
{
    unsigned start = (unsigned)getpid() * 7919u + (unsigned)sh_clock_mono_us();
    for (unsigned i = 0; i < T_PORT_SPAN; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return -1;
        struct sockaddr_in addr = {0};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons((uint16_t)(T_PORT_LOW + (start + i) % T_PORT_SPAN));
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && listen(fd, 16) == 0) {
            *port = ntohs(addr.sin_port);
            return fd;
        }
        close(fd);
    }
    return -1;
}

static int s_setup(void **state, bool with_peer, int64_t max_pending)
{
    t_fixture_t *f = calloc(1, sizeof *f);
    f->listener = -1;
    if (with_peer) {
        f->listener = s_listen(&f->port);
        if (f->listener < 0)
            return -1;
    } else {
        /*  a port nobody listens on: bound for a moment, then let go  */
        int fd = s_listen(&f->port);
        if (fd < 0)
            return -1;
        close(fd);
    }
    f->loop = sh_loop_new();
    f->metrics = sh_metrics_new("test", "unit");
    sh_redis_config_t config = {"127.0.0.1", f->port, "", 0, T_TIMEOUT_MS, max_pending, "unit"};
    f->redis = sh_redis_new(f->loop, &config, f->metrics);
    *state = f;
    return f->redis ? 0 : -1;
}

static int s_setup_nobody(void **state)
{
    return s_setup(state, false, 100);
}

static int s_setup_silent(void **state)
{
    return s_setup(state, true, 100);
}

static int s_setup_silent_small(void **state)
{
    return s_setup(state, true, 2);
}

static int s_teardown(void **state)
{
    t_fixture_t *f = *state;
    sh_redis_destroy(&f->redis);
    sh_loop_destroy(&f->loop);
    sh_metrics_destroy(&f->metrics);
    if (f->listener >= 0)
        close(f->listener);
    free(f);
    return 0;
}

/*  cond(f, arg) for sh_loop_run_until.  */
typedef struct {
    t_fixture_t *f;
    bool (*cond)(t_fixture_t *f, void *arg);
    void *arg;
} t_cond_t;

static bool s_cond(void *arg)
{
    t_cond_t *c = arg;
    return c->cond(c->f, c->arg);
}

/*  Run the loop until cond holds or timeout_ms passes.  */
static bool s_run_until(t_fixture_t *f, bool (*cond)(t_fixture_t *f, void *arg), void *arg,
                        int64_t timeout_ms)
{
    t_cond_t c = {f, cond, arg};
    return sh_loop_run_until(f->loop, s_cond, &c, timeout_ms);
}

static bool s_connected(t_fixture_t *f, void *arg)
{
    (void)arg;
    return sh_redis_connected(f->redis);
}

static bool s_answered(t_fixture_t *f, void *arg)
{
    (void)f;
    return ((t_answer_t *)arg)->calls > 0;
}

static bool s_connects_at_least(t_fixture_t *f, void *arg)
{
    return *s_counter(f, "shoal_backend_connects_total") >= *(uint64_t *)arg;
}

static void s_ping(t_fixture_t *f, int64_t timeout_ms, t_answer_t *a)
{
    const char *argv[] = {"PING"};
    *a = (t_answer_t){.started_ms = sh_clock_mono_ms()};
    sh_redis_command(f->redis, timeout_ms, s_on_answer, a, 1, argv, NULL);
}

static void test_redis_unreachable_refuses_at_once_and_redials(void **state)
{
    t_fixture_t *f = *state;
    t_answer_t a;
    s_ping(f, 1000, &a);
    /*  not connected: answered before the call returns  */
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, SH_STATUS_UNAVAILABLE);
    assert_int_equal(*s_counter(f, "shoal_backend_calls_total"), 1);
    assert_int_equal(*s_counter(f, "shoal_backend_refused_total"), 1);
    /*  the client keeps dialling, backing off (100, 200, ... ms)  */
    uint64_t want = 3;
    int64_t started = sh_clock_mono_ms();
    assert_true(s_run_until(f, s_connects_at_least, &want, 3000));
    assert_true(sh_clock_mono_ms() - started >= 250);
    assert_false(sh_redis_connected(f->redis));
    const char *script_argv[] = {"k"};
    sh_redis_eval(f->redis, sh_redis_script(f->redis, "return 1"), 1000, s_on_answer, &a, 1, 1,
                  script_argv, NULL);
    assert_int_equal(a.calls, 2);
    assert_int_equal(a.status, SH_STATUS_UNAVAILABLE);
}

static void test_redis_silent_peer_calls_end_at_their_deadline(void **state)
{
    t_fixture_t *f = *state;
    assert_true(s_run_until(f, s_connected, NULL, 2000));
    t_answer_t quick, capped;
    s_ping(f, 60, &quick);
    s_ping(f, 60000, &capped); /* capped by the configured timeout */
    assert_true(s_run_until(f, s_answered, &quick, 2000));
    assert_int_equal(quick.status, SH_STATUS_UNAVAILABLE);
    assert_true(quick.elapsed_ms >= 60);
    assert_true(quick.elapsed_ms < T_TIMEOUT_MS);
    assert_true(s_run_until(f, s_answered, &capped, 2000));
    assert_int_equal(capped.status, SH_STATUS_UNAVAILABLE);
    assert_true(capped.elapsed_ms >= T_TIMEOUT_MS);
    assert_true(capped.elapsed_ms < T_TIMEOUT_MS + 150);
    assert_int_equal(*s_counter(f, "shoal_backend_timeouts_total"), 2);
    /*  no reply for twice the timeout: the connection is dropped and redialled  */
    uint64_t want = 2;
    assert_true(s_run_until(f, s_connects_at_least, &want, 3000));
    assert_int_equal(quick.calls, 1);
    assert_int_equal(capped.calls, 1);
}

static void test_redis_max_pending_refuses_more(void **state)
{
    t_fixture_t *f = *state;
    assert_true(s_run_until(f, s_connected, NULL, 2000));
    t_answer_t a[3];
    for (int i = 0; i < 3; i++)
        s_ping(f, 1000, &a[i]);
    assert_int_equal(a[0].calls, 0);
    assert_int_equal(a[1].calls, 0);
    assert_int_equal(a[2].calls, 1);
    assert_int_equal(a[2].status, SH_STATUS_UNAVAILABLE);
    assert_int_equal(*s_counter(f, "shoal_backend_refused_total"), 1);
    /*  destroy answers what still waits, once  */
    sh_redis_destroy(&f->redis);
    assert_null(f->redis);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].status, SH_STATUS_UNAVAILABLE);
    }
}

static void test_redis_script_table_is_bounded(void **state)
{
    t_fixture_t *f = *state;
    for (int i = 0; i < SH_REDIS_MAX_SCRIPTS; i++)
        assert_int_equal(sh_redis_script(f->redis, "return 1"), i);
    assert_int_equal(sh_redis_script(f->redis, "return 1"), -1);
}

typedef struct {
    t_fixture_t *f;
    int64_t pause_ms;
    sh_loop_item_t *item;
    int peer;
} t_pause_t;

/*  The peer answers, and the process stops running for a while before it
    reads the answer (the blocking wait stands for SIGSTOP). Runs as the
    listener's handler, so the loop's timers run next, before its poll.  */
static int s_on_peer(sh_loop_t *loop, short revents, void *arg)
{
    (void)revents;
    t_pause_t *p = arg;
    p->peer = accept(p->f->listener, NULL, NULL);
    assert_true(p->peer >= 0);
    assert_int_equal(write(p->peer, "+PONG\r\n", 7), 7);
    zmq_poll(NULL, 0, (long)p->pause_ms);
    sh_loop_remove(loop, &p->item);
    return 0;
}

static bool s_late_reply(t_fixture_t *f, void *arg)
{
    (void)arg;
    return *s_counter(f, "shoal_backend_late_replies_total") >= 1;
}

static void test_redis_own_pause_is_not_a_stalled_redis(void **state)
{
    t_fixture_t *f = *state;
    assert_true(s_run_until(f, s_connected, NULL, 2000));
    t_answer_t a;
    s_ping(f, 1000, &a);
    t_pause_t pause = {f, T_TIMEOUT_MS * 4, NULL, -1};
    pause.item = sh_loop_add_fd(f->loop, f->listener, SH_LOOP_IN, s_on_peer, &pause);
    assert_non_null(pause.item);
    assert_true(s_run_until(f, s_late_reply, NULL, 3000));
    /*  the call ran out of time while the process stood still, but the
        reply waiting in the socket was read: the connection was kept  */
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, SH_STATUS_UNAVAILABLE);
    assert_int_equal(*s_counter(f, "shoal_backend_connects_total"), 1);
    assert_true(sh_redis_connected(f->redis));
    close(pause.peer);
}

static void test_redis_reply_accessors_without_a_reply(void **state)
{
    (void)state;
    assert_int_equal(sh_redis_type(NULL), SH_REDIS_NIL);
    assert_int_equal(sh_redis_int(NULL, 42), 42);
    size_t len = 7;
    assert_null(sh_redis_str(NULL, &len));
    assert_int_equal(len, 0);
    assert_int_equal(sh_redis_count(NULL), 0);
    assert_null(sh_redis_elem(NULL, 0));
}

int main(void)
{
    sh_crypto_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_redis_unreachable_refuses_at_once_and_redials,
                                        s_setup_nobody, s_teardown),
        cmocka_unit_test_setup_teardown(test_redis_silent_peer_calls_end_at_their_deadline,
                                        s_setup_silent, s_teardown),
        cmocka_unit_test_setup_teardown(test_redis_max_pending_refuses_more, s_setup_silent_small,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_redis_script_table_is_bounded, s_setup_nobody,
                                        s_teardown),
        cmocka_unit_test_setup_teardown(test_redis_own_pause_is_not_a_stalled_redis, s_setup_silent,
                                        s_teardown),
        cmocka_unit_test(test_redis_reply_accessors_without_a_reply),
    };
    return cmocka_run_group_tests_name("redis", tests, NULL, NULL);
}
