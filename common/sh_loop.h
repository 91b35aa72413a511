/*  sh_loop.h - the event loop of a service process: ZeroMQ sockets, file
    descriptors and timers over zmq_poll, in one thread.

    Handlers return 0 to go on or -1 to stop the loop. Before the loop
    sleeps it runs the before-sleep hooks (used to flush pending writes,
    as Redis does). Interest in events can change at any time.
*/
#ifndef SH_LOOP_H_INCLUDED
#define SH_LOOP_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

/*  Event bits, equal to ZMQ_POLLIN / ZMQ_POLLOUT / ZMQ_POLLERR.  */
#define SH_LOOP_IN  1
#define SH_LOOP_OUT 2
#define SH_LOOP_ERR 4

typedef struct sh_loop_t sh_loop_t;
typedef struct sh_loop_item_t sh_loop_item_t;

/*  revents: ZMQ_POLLIN / ZMQ_POLLOUT / ZMQ_POLLERR bits.  */
typedef int(sh_loop_io_fn)(sh_loop_t *loop, short revents, void *arg);
typedef int(sh_loop_timer_fn)(sh_loop_t *loop, void *arg);

sh_loop_t *sh_loop_new(void);
/*  Destroy; items and timers are released, their sockets and fds are not.  */
void sh_loop_destroy(sh_loop_t **self_p);

/*  Watch a ZeroMQ socket or a file descriptor. Returns the item (owned by
    the loop) or NULL when the loop is full.  */
sh_loop_item_t *sh_loop_add_socket(sh_loop_t *self, void *socket, short events, sh_loop_io_fn *fn,
                                   void *arg);
sh_loop_item_t *sh_loop_add_fd(sh_loop_t *self, int fd, short events, sh_loop_io_fn *fn, void *arg);
/*  Change the events an item waits for (0 pauses it).  */
void sh_loop_set_events(sh_loop_item_t *item, short events);
short sh_loop_events(const sh_loop_item_t *item);
/*  Stop watching; safe from inside a handler. Nulls *item_p.  */
void sh_loop_remove(sh_loop_t *self, sh_loop_item_t **item_p);

/*  Call fn every interval_ms (or once). Returns a timer id > 0, or -1.  */
int sh_loop_timer(sh_loop_t *self, int64_t interval_ms, bool repeat, sh_loop_timer_fn *fn,
                  void *arg);
void sh_loop_timer_cancel(sh_loop_t *self, int timer_id);

/*  Run fn each time before the loop waits. Returns 0 or -1 (full).  */
int sh_loop_before_sleep(sh_loop_t *self, sh_loop_timer_fn *fn, void *arg);

/*  Run until a handler returns -1 or sh_loop_stop. Returns 0.  */
int sh_loop_run(sh_loop_t *self);

/*  Run until done(arg) holds (checked at once, then every
    SH_LOOP_UNTIL_POLL_MS) or timeout_ms passed; with done NULL, run for
    timeout_ms. Returns whether done held. For code that drives a loop by
    hand, such as tests.  */
#define SH_LOOP_UNTIL_POLL_MS 2
typedef bool(sh_loop_cond_fn)(void *arg);
bool sh_loop_run_until(sh_loop_t *self, sh_loop_cond_fn *done, void *arg, int64_t timeout_ms);
void sh_loop_stop(sh_loop_t *self);

#endif
