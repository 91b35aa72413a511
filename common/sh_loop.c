/*  sh_loop.c - a small zmq_poll event loop (items, timers, hooks).  */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "sh_loop.h"
#include "sh_util.h"

#define SH_LOOP_MAX_ITEMS  128
#define SH_LOOP_MAX_TIMERS 32
#define SH_LOOP_MAX_HOOKS  8

struct sh_loop_item_t {
    void *socket;
    int fd;
    short events;
    bool removed;
    sh_loop_io_fn *fn;
    void *arg;
};

typedef struct {
    int id; /* 0 = free slot */
    int64_t interval_ms;
    int64_t due_ms;
    bool repeat;
    sh_loop_timer_fn *fn;
    void *arg;
} s_timer_t;

typedef struct {
    sh_loop_timer_fn *fn;
    void *arg;
} s_hook_t;

struct sh_loop_t {
    sh_loop_item_t *items[SH_LOOP_MAX_ITEMS];
    int item_count;
    s_timer_t timers[SH_LOOP_MAX_TIMERS];
    int next_timer_id;
    s_hook_t hooks[SH_LOOP_MAX_HOOKS];
    int hook_count;
    bool stopped;
};

sh_loop_t *sh_loop_new(void)
{
    return calloc(1, sizeof(sh_loop_t));
}

void sh_loop_destroy(sh_loop_t **self_p)
{
    sh_loop_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->item_count; i++)
        free(self->items[i]);
    free(self);
    *self_p = NULL;
}

static sh_loop_item_t *s_add(sh_loop_t *self, void *socket, int fd, short events, sh_loop_io_fn *fn,
                             void *arg)
{
    if (self->item_count >= SH_LOOP_MAX_ITEMS)
        return NULL;
    sh_loop_item_t *item = calloc(1, sizeof *item);
    if (!item)
        return NULL;
    *item = (sh_loop_item_t){socket, fd, events, false, fn, arg};
    self->items[self->item_count++] = item;
    return item;
}

sh_loop_item_t *sh_loop_add_socket(sh_loop_t *self, void *socket, short events, sh_loop_io_fn *fn,
                                   void *arg)
{
    assert(socket);
    return s_add(self, socket, -1, events, fn, arg);
}

sh_loop_item_t *sh_loop_add_fd(sh_loop_t *self, int fd, short events, sh_loop_io_fn *fn, void *arg)
{
    assert(fd >= 0);
    return s_add(self, NULL, fd, events, fn, arg);
}

void sh_loop_set_events(sh_loop_item_t *item, short events)
{
    item->events = events;
}

short sh_loop_events(const sh_loop_item_t *item)
{
    return item->events;
}

void sh_loop_remove(sh_loop_t *self, sh_loop_item_t **item_p)
{
    (void)self;
    if (*item_p) {
        (*item_p)->removed = true;
        (*item_p)->events = 0;
    }
    *item_p = NULL;
}

/*  Frees removed items; only between dispatch rounds.  */
static void s_compact(sh_loop_t *self)
{
    int kept = 0;
    for (int i = 0; i < self->item_count; i++) {
        if (self->items[i]->removed)
            free(self->items[i]);
        else
            self->items[kept++] = self->items[i];
    }
    self->item_count = kept;
}

int sh_loop_timer(sh_loop_t *self, int64_t interval_ms, bool repeat, sh_loop_timer_fn *fn,
                  void *arg)
{
    for (int i = 0; i < SH_LOOP_MAX_TIMERS; i++) {
        s_timer_t *t = &self->timers[i];
        if (t->id == 0) {
            *t = (s_timer_t){++self->next_timer_id,
                             interval_ms,
                             sh_clock_mono_ms() + interval_ms,
                             repeat,
                             fn,
                             arg};
            return t->id;
        }
    }
    return -1;
}

void sh_loop_timer_cancel(sh_loop_t *self, int timer_id)
{
    for (int i = 0; i < SH_LOOP_MAX_TIMERS; i++)
        if (self->timers[i].id == timer_id && timer_id > 0)
            self->timers[i].id = 0;
}

int sh_loop_before_sleep(sh_loop_t *self, sh_loop_timer_fn *fn, void *arg)
{
    if (self->hook_count >= SH_LOOP_MAX_HOOKS)
        return -1;
    self->hooks[self->hook_count++] = (s_hook_t){fn, arg};
    return 0;
}

void sh_loop_stop(sh_loop_t *self)
{
    self->stopped = true;
}

/*  Runs due timers; returns ms until the next one (-1 = none).  */
static long s_run_timers(sh_loop_t *self)
{
    int64_t now = sh_clock_mono_ms();
    /*  fire what is due, earliest first (a late loop may find several due),
        each timer at most once per round  */
    int fired[SH_LOOP_MAX_TIMERS] = {0};
    while (!self->stopped) {
        s_timer_t *next = NULL;
        for (int i = 0; i < SH_LOOP_MAX_TIMERS; i++) {
            s_timer_t *t = &self->timers[i];
            if (t->id && !fired[i] && t->due_ms <= now && (!next || t->due_ms < next->due_ms))
                next = t;
        }
        if (!next)
            break;
        fired[next - self->timers] = 1;
        if (next->repeat)
            next->due_ms = now + next->interval_ms;
        else
            next->id = 0;
        if (next->fn(self, next->arg) != 0)
            self->stopped = true;
    }
    long wait = -1;
    for (int i = 0; i < SH_LOOP_MAX_TIMERS; i++) {
        const s_timer_t *t = &self->timers[i];
        if (t->id == 0)
            continue;
        long left = (long)(t->due_ms - now);
        if (wait < 0 || left < wait)
            wait = left < 0 ? 0 : left;
    }
    return wait;
}

int sh_loop_run(sh_loop_t *self)
{
    zmq_pollitem_t polls[SH_LOOP_MAX_ITEMS];
    sh_loop_item_t *owners[SH_LOOP_MAX_ITEMS];
    self->stopped = false;
    while (!self->stopped) {
        long wait = s_run_timers(self);
        for (int i = 0; i < self->hook_count && !self->stopped; i++)
            if (self->hooks[i].fn(self, self->hooks[i].arg) != 0)
                self->stopped = true;
        if (self->stopped)
            break;
        s_compact(self);
        int n = 0;
        for (int i = 0; i < self->item_count; i++) {
            sh_loop_item_t *item = self->items[i];
            if (!item->events)
                continue;
            polls[n] = (zmq_pollitem_t){item->socket, item->fd, item->events, 0};
            owners[n++] = item;
        }
        int rc = zmq_poll(polls, n, wait);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (int i = 0; i < n && !self->stopped; i++) {
            if (!polls[i].revents || owners[i]->removed)
                continue;
            if (owners[i]->fn(self, polls[i].revents, owners[i]->arg) != 0)
                self->stopped = true;
        }
    }
    return 0;
}

typedef struct {
    sh_loop_cond_fn *done;
    void *arg;
    int64_t end_ms;
    bool met;
} s_until_t;

static int s_on_until(sh_loop_t *loop, void *arg)
{
    (void)loop;
    s_until_t *u = arg;
    u->met = u->done && u->done(u->arg);
    return u->met || sh_clock_mono_ms() >= u->end_ms ? -1 : 0;
}

bool sh_loop_run_until(sh_loop_t *self, sh_loop_cond_fn *done, void *arg, int64_t timeout_ms)
{
    if (done && done(arg))
        return true;
    /*  on the heap: the loop keeps the timer's argument  */
    s_until_t *u = malloc(sizeof *u);
    if (!u)
        return false;
    *u = (s_until_t){done, arg, sh_clock_mono_ms() + timeout_ms, false};
    int timer = sh_loop_timer(self, SH_LOOP_UNTIL_POLL_MS, true, s_on_until, u);
    if (timer > 0) {
        sh_loop_run(self);
        sh_loop_timer_cancel(self, timer);
    }
    bool met = u->met;
    free(u);
    return met;
}
