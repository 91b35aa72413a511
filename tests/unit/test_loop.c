/*  test_loop.c - timers fire in order and stop the loop when asked; fds
    and ZeroMQ sockets wake their handlers; removal inside a handler is safe.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <zmq.h>

#include "sh_loop.h"
#include "sh_transport.h"
#include "sh_util.h"

typedef struct {
    int fired[8];
    int count;
    sh_loop_item_t *item;
    int fd;
} t_state_t;

static int s_record(sh_loop_t *loop, void *arg, int id)
{
    (void)loop;
    t_state_t *st = arg;
    st->fired[st->count++] = id;
    return st->count >= 3 ? -1 : 0;
}
static int s_t1(sh_loop_t *l, void *a)
{
    return s_record(l, a, 1);
}
static int s_t2(sh_loop_t *l, void *a)
{
    return s_record(l, a, 2);
}

static void test_loop_timers_fire_in_due_order(void **state)
{
    (void)state;
    sh_loop_t *loop = sh_loop_new();
    t_state_t st = {0};
    int64_t start = sh_clock_mono_ms();
    assert_true(sh_loop_timer(loop, 30, false, s_t2, &st) > 0);
    assert_true(sh_loop_timer(loop, 10, true, s_t1, &st) > 0);
    sh_loop_run(loop);
    /*  t1 at 10, 20; t2 at 30 (or t1 at 30 first)  */
    assert_int_equal(st.count, 3);
    assert_int_equal(st.fired[0], 1);
    assert_int_equal(st.fired[1], 1);
    assert_true(sh_clock_mono_ms() - start >= 20);
    sh_loop_destroy(&loop);
    assert_null(loop);
}

static int s_on_fd(sh_loop_t *loop, short revents, void *arg)
{
    t_state_t *st = arg;
    char byte;
    assert_true(revents & SH_LOOP_IN);
    assert_int_equal(read(st->fd, &byte, 1), 1);
    st->fired[st->count++] = byte;
    sh_loop_remove(loop, &st->item);
    assert_null(st->item);
    return -1;
}

static void test_loop_fd_wakes_handler_and_removal_is_safe(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    sh_loop_t *loop = sh_loop_new();
    t_state_t st = {0};
    st.fd = fds[0];
    st.item = sh_loop_add_fd(loop, fds[0], SH_LOOP_IN, s_on_fd, &st);
    assert_non_null(st.item);
    assert_int_equal(write(fds[1], "z", 1), 1);
    sh_loop_run(loop);
    assert_int_equal(st.count, 1);
    assert_int_equal(st.fired[0], 'z');
    /*  the removed item no longer wakes anything: a timer ends the run  */
    assert_int_equal(write(fds[1], "y", 1), 1);
    sh_loop_timer(loop, 5, false, s_t1, &st);
    st.count = 2;
    sh_loop_run(loop);
    assert_int_equal(st.fired[2], 1);
    sh_loop_destroy(&loop);
    close(fds[0]);
    close(fds[1]);
}

typedef struct {
    void *socket;
    int received;
} t_socket_state_t;

static int s_on_socket(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    t_socket_state_t *st = arg;
    assert_true(revents & SH_LOOP_IN);
    char buf[16];
    assert_int_equal(zmq_recv(st->socket, buf, sizeof buf, ZMQ_DONTWAIT), 5);
    st->received++;
    return -1;
}

static void test_loop_socket_wakes_handler(void **state)
{
    (void)state;
    void *pull = zmq_socket(sh_transport_ctx(), ZMQ_PULL);
    void *push = zmq_socket(sh_transport_ctx(), ZMQ_PUSH);
    assert_int_equal(zmq_bind(pull, "inproc://test-loop"), 0);
    assert_int_equal(zmq_connect(push, "inproc://test-loop"), 0);
    sh_loop_t *loop = sh_loop_new();
    t_socket_state_t st = {pull, 0};
    assert_non_null(sh_loop_add_socket(loop, pull, SH_LOOP_IN, s_on_socket, &st));
    assert_int_equal(zmq_send(push, "hello", 5, 0), 5);
    sh_loop_run(loop);
    assert_int_equal(st.received, 1);
    sh_loop_destroy(&loop);
    zmq_close(pull);
    zmq_close(push);
}

static int s_set_flag(sh_loop_t *loop, void *arg)
{
    (void)loop;
    *(bool *)arg = true;
    return 0;
}

static bool s_flag_set(void *arg)
{
    return *(bool *)arg;
}

/*  run_until: true as soon as the condition holds (at once, or when a
    handler made it so), false at the timeout; with no condition it runs
    for the timeout.  */
static void test_loop_run_until_condition_or_timeout(void **state)
{
    (void)state;
    sh_loop_t *loop = sh_loop_new();
    bool flag = true;
    int64_t t0 = sh_clock_mono_ms();
    assert_true(sh_loop_run_until(loop, s_flag_set, &flag, 1000));
    assert_true(sh_clock_mono_ms() - t0 < 100);
    flag = false;
    assert_true(sh_loop_timer(loop, 30, false, s_set_flag, &flag) > 0);
    t0 = sh_clock_mono_ms();
    assert_true(sh_loop_run_until(loop, s_flag_set, &flag, 5000));
    int64_t took = sh_clock_mono_ms() - t0;
    assert_true(took >= 30 && took < 1000);
    flag = false;
    t0 = sh_clock_mono_ms();
    assert_false(sh_loop_run_until(loop, s_flag_set, &flag, 50));
    assert_true(sh_clock_mono_ms() - t0 >= 50);
    t0 = sh_clock_mono_ms();
    assert_false(sh_loop_run_until(loop, NULL, NULL, 40));
    assert_true(sh_clock_mono_ms() - t0 >= 40);
    sh_loop_destroy(&loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loop_timers_fire_in_due_order),
        cmocka_unit_test(test_loop_fd_wakes_handler_and_removal_is_safe),
        cmocka_unit_test(test_loop_socket_wakes_handler),
        cmocka_unit_test(test_loop_run_until_condition_or_timeout),
    };
    int rc = cmocka_run_group_tests_name("loop", tests, NULL, NULL);
    sh_transport_shutdown();
    return rc;
}
