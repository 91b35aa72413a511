/*  sh_redis.c - hiredis's async API on an sh_loop (see sh_redis.h).

    The connection's socket is an sh_loop item whose events follow what
    hiredis asks for; commands queued during a loop turn go out in one
    write before the loop sleeps. Every call waiting for Redis sits in one
    list, oldest first: a periodic tick answers the ones past their
    deadline, drops a connection whose oldest call has had no answer for
    too long (unless this process itself was not running) and redials with
    backoff. Lua scripts are known by their SHA1 once SCRIPT LOAD answered;
    until then, and when Redis forgot them, they travel as EVAL.
*/
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "sh_codec.h"
#include "sh_log.h"
#include "sh_redis.h"
#include "sh_util.h"

#define S_TICK_MS          20
#define S_RECONNECT_MIN_MS 100
#define S_RECONNECT_MAX_MS 1000
#define S_STALL_FACTOR     2  /* the oldest call this many timeouts old: Redis stalled */
#define S_PAUSE_TICKS      10 /* a tick this many periods late: we were not running */
#define S_SHA_LEN          40
#define S_NUM_MAX          24
#define S_LABELS_MAX       160
#define S_ERROR_LOG_MAX    200 /* characters of a Redis error put in a log line */

typedef struct {
    const char *text;
    size_t len;
    char sha[S_SHA_LEN + 1]; /* "" until SCRIPT LOAD answered */
    bool loading;            /* a SCRIPT LOAD is on its way */
} s_script_t;

typedef enum {
    S_USER,  /* a caller's command */
    S_SETUP, /* AUTH or SELECT on a new connection */
    S_LOAD,  /* SCRIPT LOAD */
} s_kind_t;

/*  A call waiting for Redis. Freed when hiredis hands back its reply (NULL
    when the connection goes away); `done` is set once the caller has its
    answer (deadline passed), so a late reply is only counted.  */
typedef struct s_call_t {
    struct s_call_t *prev, *next;
    sh_redis_t *redis;
    s_kind_t kind;
    bool done;
    int script; /* S_LOAD: the script; S_USER by EVALSHA: the one to EVAL on NOSCRIPT; else -1 */
    const char *what; /* S_SETUP: the command, for the log */
    int64_t started_ms;
    int64_t deadline_ms;
    sh_redis_fn *fn;
    void *arg;
    /*  EVAL/EVALSHA: the whole command, copied after this struct, so it
        can be sent again as EVAL  */
    int argc;
    const char **argv;
    size_t *argvlen;
    char nkeys[S_NUM_MAX];
} s_call_t;

struct sh_redis_t {
    sh_loop_t *loop;
    sh_redis_config_t config;
    redisAsyncContext *ac;
    bool connected;
    sh_loop_item_t *item;
    short events;
    int timer;
    int64_t connect_started_ms;
    int64_t reconnect_at_ms;
    int64_t backoff_ms;
    int64_t last_tick_ms;
    int64_t stall_grace_until_ms;

    s_script_t scripts[SH_REDIS_MAX_SCRIPTS];
    int script_count;
    s_call_t *head; /* oldest first */
    s_call_t *tail;
    int64_t pending;

    sh_backend_metrics_t m;
};

/*  --- pending calls ---------------------------------------------------------  */

static s_call_t *s_call_new(sh_redis_t *self, s_kind_t kind, int64_t timeout_ms, sh_redis_fn *fn,
                            void *arg, size_t extra)
{
    s_call_t *p = calloc(1, sizeof *p + extra);
    if (!p)
        return NULL;
    p->redis = self;
    p->kind = kind;
    p->script = -1;
    p->started_ms = sh_clock_mono_ms();
    if (timeout_ms > self->config.timeout_ms)
        timeout_ms = self->config.timeout_ms;
    p->deadline_ms = p->started_ms + (timeout_ms < 1 ? 1 : timeout_ms);
    p->fn = fn;
    p->arg = arg;
    p->prev = self->tail;
    if (self->tail)
        self->tail->next = p;
    else
        self->head = p;
    self->tail = p;
    self->pending++;
    return p;
}

static void s_unlink(sh_redis_t *self, s_call_t *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        self->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        self->tail = p->prev;
    p->prev = p->next = NULL;
    self->pending--;
}

/*  Answer the caller once.  */
static void s_answer(s_call_t *p, uint64_t status, const redisReply *reply)
{
    if (p->done || !p->fn)
        return;
    p->done = true;
    p->fn(p->arg, status, (const sh_redis_reply_t *)(const void *)reply);
}

static void s_on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/*  Hand a call to hiredis; on failure it is answered and freed.  */
static void s_submit(sh_redis_t *self, s_call_t *p, int argc, const char **argv,
                     const size_t *argvlen)
{
    if (self->ac && redisAsyncCommandArgv(self->ac, s_on_reply, p, argc, argv, argvlen) == REDIS_OK)
        return;
    if (p->kind == S_USER)
        (*self->m.errors)++;
    else if (p->kind == S_LOAD)
        self->scripts[p->script].loading = false;
    s_unlink(self, p);
    s_answer(p, SH_STATUS_UNAVAILABLE, NULL);
    free(p);
}

static void s_script_load(sh_redis_t *self, int id)
{
    s_script_t *s = &self->scripts[id];
    s_call_t *p = s_call_new(self, S_LOAD, self->config.timeout_ms, NULL, NULL, 0);
    if (!p)
        return;
    p->script = id;
    s->loading = true;
    const char *argv[] = {"SCRIPT", "LOAD", s->text};
    const size_t argvlen[] = {6, 4, s->len};
    s_submit(self, p, 3, argv, argvlen);
}

/*  Redis does not know the script (flushed, or a new server behind the
    same address): send the same call as EVAL, and load the script again
    for the calls that follow. Returns 0 when resent.  */
static int s_eval_again(sh_redis_t *self, redisAsyncContext *ac, s_call_t *p)
{
    s_script_t *s = &self->scripts[p->script];
    s->sha[0] = 0;
    p->argv[0] = "EVAL";
    p->argvlen[0] = 4;
    p->argv[1] = s->text;
    p->argvlen[1] = s->len;
    p->script = -1; /* once */
    if (!s->loading)
        s_script_load(self, (int)(s - self->scripts));
    return redisAsyncCommandArgv(ac, s_on_reply, p, p->argc, p->argv, p->argvlen) == REDIS_OK ? 0
                                                                                              : -1;
}

static void s_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    s_call_t *p = privdata;
    sh_redis_t *self = p->redis;
    const redisReply *r = reply;
    /*  no reply: the connection is going away; take nothing more on it  */
    if (!r)
        self->connected = false;
    bool is_error = r && r->type == REDIS_REPLY_ERROR;
    switch (p->kind) {
    case S_SETUP:
        if (is_error)
            sh_error("redis %s:%d: %s failed: %.*s", self->config.host, self->config.port, p->what,
                     S_ERROR_LOG_MAX, r->str);
        break;
    case S_LOAD: {
        s_script_t *s = &self->scripts[p->script];
        s->loading = false;
        if (r && r->type == REDIS_REPLY_STRING && r->len == S_SHA_LEN)
            memcpy(s->sha, r->str, S_SHA_LEN + 1);
        else if (is_error)
            sh_error("redis %s:%d: SCRIPT LOAD failed: %.*s", self->config.host, self->config.port,
                     S_ERROR_LOG_MAX, r->str);
        break;
    }
    case S_USER:
        if (is_error && p->script >= 0 && !p->done && strncmp(r->str, "NOSCRIPT", 8) == 0) {
            if (s_eval_again(self, ac, p) == 0)
                return; /* the same call, still in its place in the list */
            r = NULL;
        }
        if (p->done) {
            if (r)
                (*self->m.late)++;
            break;
        }
        if (!r || r->type == REDIS_REPLY_ERROR)
            (*self->m.errors)++;
        if (r)
            sh_histogram_observe(self->m.latency,
                                 (double)(sh_clock_mono_ms() - p->started_ms) / 1e3);
        s_unlink(self, p);
        s_answer(p, r ? SH_STATUS_OK : SH_STATUS_UNAVAILABLE, r);
        free(p);
        return;
    }
    s_unlink(self, p);
    free(p);
}

/*  --- event loop glue --------------------------------------------------------  */

static void s_update_events(sh_redis_t *self)
{
    if (self->item)
        sh_loop_set_events(self->item, self->events);
}

static void s_ev_add_read(void *data)
{
    sh_redis_t *self = data;
    self->events |= SH_LOOP_IN;
    s_update_events(self);
}

static void s_ev_del_read(void *data)
{
    sh_redis_t *self = data;
    self->events &= (short)~SH_LOOP_IN;
    s_update_events(self);
}

static void s_ev_add_write(void *data)
{
    sh_redis_t *self = data;
    self->events |= SH_LOOP_OUT;
    s_update_events(self);
}

static void s_ev_del_write(void *data)
{
    sh_redis_t *self = data;
    self->events &= (short)~SH_LOOP_OUT;
    s_update_events(self);
}

static void s_ev_cleanup(void *data)
{
    sh_redis_t *self = data;
    self->events = 0;
    sh_loop_remove(self->loop, &self->item);
}

static int s_on_io(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    sh_redis_t *self = arg;
    redisAsyncContext *ac = self->ac;
    if (ac && (revents & (SH_LOOP_IN | SH_LOOP_ERR)))
        redisAsyncHandleRead(ac);
    /*  the read may have freed the context (disconnect)  */
    if (ac && self->ac == ac && (revents & SH_LOOP_OUT))
        redisAsyncHandleWrite(ac);
    return 0;
}

/*  Before the loop sleeps, write what commands queued (saves a poll).  */
static int s_before_sleep(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_redis_t *self = arg;
    if (self->ac && self->connected && (self->events & SH_LOOP_OUT))
        redisAsyncHandleWrite(self->ac);
    return 0;
}

/*  --- connection -------------------------------------------------------------  */

static void s_schedule_reconnect(sh_redis_t *self)
{
    self->reconnect_at_ms = sh_clock_mono_ms() + self->backoff_ms;
    self->backoff_ms =
        self->backoff_ms * 2 > S_RECONNECT_MAX_MS ? S_RECONNECT_MAX_MS : self->backoff_ms * 2;
}

static void s_on_connect(const redisAsyncContext *ac, int status)
{
    sh_redis_t *self = ac->ev.data;
    if (status != REDIS_OK) {
        sh_warn("redis %s:%d: connect failed: %s", self->config.host, self->config.port,
                ac->errstr);
        /*  hiredis frees the context after this callback  */
        self->ac = NULL;
        self->connected = false;
        s_schedule_reconnect(self);
        return;
    }
    self->connected = true;
    self->backoff_ms = S_RECONNECT_MIN_MS;
    sh_info("redis %s:%d connected", self->config.host, self->config.port);
}

static void s_on_disconnect(const redisAsyncContext *ac, int status)
{
    sh_redis_t *self = ac->ev.data;
    if (self->ac != ac)
        return; /* dropped on purpose: already handled */
    if (status != REDIS_OK)
        sh_warn("redis %s:%d: connection lost: %s", self->config.host, self->config.port,
                ac->errstr);
    self->ac = NULL;
    self->connected = false;
    s_schedule_reconnect(self);
}

static void s_setup(sh_redis_t *self, const char *what, int argc, const char **argv)
{
    s_call_t *p = s_call_new(self, S_SETUP, self->config.timeout_ms, NULL, NULL, 0);
    if (!p)
        return;
    p->what = what;
    s_submit(self, p, argc, argv, NULL);
}

static void s_connect(sh_redis_t *self)
{
    (*self->m.connects)++;
    redisAsyncContext *ac = redisAsyncConnect(self->config.host, self->config.port);
    if (!ac || ac->err) {
        sh_warn("redis %s:%d: %s", self->config.host, self->config.port,
                ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        s_schedule_reconnect(self);
        return;
    }
    self->events = 0;
    self->item = sh_loop_add_fd(self->loop, ac->c.fd, 0, s_on_io, self);
    if (!self->item) {
        sh_error("redis %s:%d: the event loop is full", self->config.host, self->config.port);
        redisAsyncFree(ac);
        s_schedule_reconnect(self);
        return;
    }
    self->ac = ac;
    self->connected = false;
    self->connect_started_ms = sh_clock_mono_ms();
    ac->ev.data = self;
    ac->ev.addRead = s_ev_add_read;
    ac->ev.delRead = s_ev_del_read;
    ac->ev.addWrite = s_ev_add_write;
    ac->ev.delWrite = s_ev_del_write;
    ac->ev.cleanup = s_ev_cleanup;
    redisAsyncSetConnectCallback(ac, s_on_connect);
    redisAsyncSetDisconnectCallback(ac, s_on_disconnect);
    /*  queued now, these go out first once connected, ahead of any call  */
    if (self->config.password[0]) {
        const char *argv[] = {"AUTH", self->config.password};
        s_setup(self, "AUTH", 2, argv);
    }
    if (self->config.db) {
        char db[S_NUM_MAX];
        snprintf(db, sizeof db, "%d", self->config.db);
        const char *argv[] = {"SELECT", db};
        s_setup(self, "SELECT", 2, argv);
    }
    /*  a restarted Redis has forgotten every script  */
    for (int i = 0; i < self->script_count; i++)
        s_script_load(self, i);
}

/*  Drop a connection that stopped answering; pending calls fail.  */
static void s_drop(sh_redis_t *self, const char *why)
{
    sh_warn("redis %s:%d: %s; reconnecting", self->config.host, self->config.port, why);
    redisAsyncContext *ac = self->ac;
    self->ac = NULL;
    self->connected = false;
    if (ac)
        redisAsyncFree(ac); /* calls every pending callback with NULL */
    s_schedule_reconnect(self);
}

static int s_on_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_redis_t *self = arg;
    int64_t now = sh_clock_mono_ms();
    /*  A tick long overdue means this process did not run (paused, starved):
        what looks like a silent Redis is our own absence. Give the replies
        that are already waiting a chance before blaming Redis.  */
    if (now - self->last_tick_ms > S_TICK_MS * S_PAUSE_TICKS)
        self->stall_grace_until_ms = now + self->config.timeout_ms;
    self->last_tick_ms = now;
    for (s_call_t *p = self->head; p; p = p->next)
        if (p->fn && !p->done && p->deadline_ms <= now) {
            (*self->m.timeouts)++;
            s_answer(p, SH_STATUS_UNAVAILABLE, NULL);
        }
    if (self->ac && !self->connected && now - self->connect_started_ms > self->config.timeout_ms)
        s_drop(self, "connect timed out");
    else if (self->ac && self->head && now >= self->stall_grace_until_ms &&
             now - self->head->started_ms > self->config.timeout_ms * S_STALL_FACTOR)
        s_drop(self, "no reply in time");

    if (!self->ac && now >= self->reconnect_at_ms)
        s_connect(self);
    return 0;
}

/*  --- public calls ---------------------------------------------------------  */

sh_redis_t *sh_redis_new(sh_loop_t *loop, const sh_redis_config_t *config, sh_metrics_t *metrics)
{
    assert(loop && config && config->host);
    assert(config->timeout_ms > 0 && config->max_pending > 0);
    sh_redis_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    if (!self->config.password)
        self->config.password = "";
    if (!self->config.label)
        self->config.label = "redis";
    self->backoff_ms = S_RECONNECT_MIN_MS;
    /*  a pause before the first tick is a pause too  */
    self->last_tick_ms = sh_clock_mono_ms();
    char labels[S_LABELS_MAX];
    snprintf(labels, sizeof labels, "backend=\"%s\"", self->config.label);
    sh_backend_metrics_init(&self->m, metrics, labels);
    self->timer = sh_loop_timer(loop, S_TICK_MS, true, s_on_tick, self);
    if (self->timer < 0) {
        sh_error("redis %s:%d: no timer left in the event loop", config->host, config->port);
        free(self);
        return NULL;
    }
    /*  without the hook, writes still go out when the socket polls writable  */
    if (sh_loop_before_sleep(loop, s_before_sleep, self) != 0)
        sh_warn("redis: no before-sleep hook left in the event loop");
    s_connect(self);
    return self;
}

/*  The before-sleep hook cannot be taken back from the loop: destroy the
    client only once its loop no longer runs.  */
void sh_redis_destroy(sh_redis_t **self_p)
{
    sh_redis_t *self = *self_p;
    if (!self)
        return;
    sh_loop_timer_cancel(self->loop, self->timer);
    if (self->ac) {
        redisAsyncContext *ac = self->ac;
        self->ac = NULL;
        self->connected = false;
        redisAsyncFree(ac);
    }
    while (self->head) {
        s_call_t *p = self->head;
        s_unlink(self, p);
        s_answer(p, SH_STATUS_UNAVAILABLE, NULL);
        free(p);
    }
    free(self);
    *self_p = NULL;
}

/*  Count the call, and answer it at once when it cannot be sent.  */
static bool s_admit(sh_redis_t *self, sh_redis_fn *fn, void *arg)
{
    (*self->m.calls)++;
    if (!self->ac || !self->connected || self->pending >= self->config.max_pending) {
        (*self->m.refused)++;
        fn(arg, SH_STATUS_UNAVAILABLE, NULL);
        return false;
    }
    return true;
}

void sh_redis_command(sh_redis_t *self, int64_t timeout_ms, sh_redis_fn *fn, void *arg, int argc,
                      const char **argv, const size_t *argvlen)
{
    assert(fn && argc > 0 && argv);
    if (!s_admit(self, fn, arg))
        return;
    s_call_t *p = s_call_new(self, S_USER, timeout_ms, fn, arg, 0);
    if (!p) {
        (*self->m.errors)++;
        fn(arg, SH_STATUS_UNAVAILABLE, NULL);
        return;
    }
    s_submit(self, p, argc, argv, argvlen);
}

int sh_redis_script(sh_redis_t *self, const char *text)
{
    assert(text);
    if (self->script_count >= SH_REDIS_MAX_SCRIPTS)
        return -1;
    int id = self->script_count++;
    self->scripts[id] = (s_script_t){.text = text, .len = strlen(text)};
    if (self->ac)
        s_script_load(self, id);
    return id;
}

void sh_redis_eval(sh_redis_t *self, int id, int64_t timeout_ms, sh_redis_fn *fn, void *arg,
                   int nkeys, int argc, const char **argv, const size_t *argvlen)
{
    assert(id >= 0 && id < self->script_count);
    assert(fn && nkeys >= 0 && nkeys <= argc && argc >= 0 && (argc == 0 || argv));
    if (!s_admit(self, fn, arg))
        return;
    s_script_t *s = &self->scripts[id];
    /*  the command is kept with the call: [EVALSHA|EVAL] [sha|text] nkeys args...  */
    int total = argc + 3;
    size_t bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += argvlen ? argvlen[i] : strlen(argv[i]);
    s_call_t *p = s_call_new(self, S_USER, timeout_ms, fn, arg,
                             (size_t)total * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (!p) {
        (*self->m.errors)++;
        fn(arg, SH_STATUS_UNAVAILABLE, NULL);
        return;
    }
    p->argc = total;
    p->argv = (const char **)(void *)(p + 1);
    p->argvlen = (size_t *)(void *)(p->argv + total);
    char *copy = (char *)(p->argvlen + total);
    snprintf(p->nkeys, sizeof p->nkeys, "%d", nkeys);
    if (s->sha[0]) {
        p->script = id;
        p->argv[0] = "EVALSHA";
        p->argv[1] = s->sha;
        p->argvlen[1] = S_SHA_LEN;
    } else {
        p->argv[0] = "EVAL";
        p->argv[1] = s->text;
        p->argvlen[1] = s->len;
        if (!s->loading)
            s_script_load(self, id);
    }
    p->argvlen[0] = strlen(p->argv[0]);
    p->argv[2] = p->nkeys;
    p->argvlen[2] = strlen(p->nkeys);
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        if (len)
            memcpy(copy, argv[i], len);
        p->argv[3 + i] = copy;
        p->argvlen[3 + i] = len;
        copy += len;
    }
    s_submit(self, p, p->argc, p->argv, p->argvlen);
}

bool sh_redis_connected(const sh_redis_t *self)
{
    return self->connected;
}

/*  --- replies ------------------------------------------------------------------  */

static const redisReply *s_reply(const sh_redis_reply_t *reply)
{
    return (const redisReply *)(const void *)reply;
}

int sh_redis_type(const sh_redis_reply_t *reply)
{
    const redisReply *r = s_reply(reply);
    if (!r)
        return SH_REDIS_NIL;
    switch (r->type) {
    case REDIS_REPLY_INTEGER:
        return SH_REDIS_INT;
    case REDIS_REPLY_STRING:
        return SH_REDIS_STR;
    case REDIS_REPLY_ARRAY:
        return SH_REDIS_ARRAY;
    case REDIS_REPLY_STATUS:
        return SH_REDIS_STATUS;
    case REDIS_REPLY_ERROR:
        return SH_REDIS_ERROR;
    default:
        return SH_REDIS_NIL;
    }
}

int64_t sh_redis_int(const sh_redis_reply_t *reply, int64_t fallback)
{
    const redisReply *r = s_reply(reply);
    if (!r)
        return fallback;
    if (r->type == REDIS_REPLY_INTEGER)
        return (int64_t)r->integer;
    int64_t value = 0;
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && strlen(r->str) == r->len &&
        sh_parse_int(r->str, INT64_MIN, INT64_MAX, &value) == 0)
        return value;
    return fallback;
}

const char *sh_redis_str(const sh_redis_reply_t *reply, size_t *len)
{
    const redisReply *r = s_reply(reply);
    if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS &&
               r->type != REDIS_REPLY_ERROR)) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = r->len;
    return r->str;
}

size_t sh_redis_count(const sh_redis_reply_t *reply)
{
    const redisReply *r = s_reply(reply);
    return r && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
}

const sh_redis_reply_t *sh_redis_elem(const sh_redis_reply_t *reply, size_t i)
{
    const redisReply *r = s_reply(reply);
    if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements)
        return NULL;
    return (const sh_redis_reply_t *)(const void *)r->element[i];
}
