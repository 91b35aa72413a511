/*  session_store.c - Redis adapter for sessions (hiredis async in sh_loop).

    Keys are <prefix>s:<hex BLAKE2b-128 of the session id>, so a leaked
    Redis dump does not hand out live session ids. A session is a hash
    {views, created_at, last_seen} with a TTL of the idle timeout (never past
    the absolute timeout). touch is one Lua script: read, check the absolute
    timeout, increment, refresh the TTL - atomic, so concurrent requests on
    one session never lose an update.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sodium.h>

#include "session_store.h"
#include "sh_log.h"
#include "sh_util.h"

#define S_KEY_MAX          128
#define S_TICK_MS          20
#define S_RECONNECT_MIN_MS 100
#define S_RECONNECT_MAX_MS 1000
#define S_STALL_FACTOR     2  /* a call this many timeouts old means Redis stalled */
#define S_PAUSE_TICKS      10 /* a tick this many periods late: we were not running */

/*  KEYS: [1] the session's key or "-", [2] the key a new session gets,
          [3] the idempotency record's key or "-".
    ARGV: [1] now ms, [2] idle ms, [3] absolute ms, [4] create "1"/"0",
          [5] deadline ms, [6] the new session's id, [7] idempotency TTL ms.
    Returns {views, created_at, created 0/1, id of a created session or ""}. */
static const char *s_touch_script =
    /*  a retried call (same idempotency key) gets the first call's answer:
        a view is counted once however many instances saw the request  */
    "if KEYS[3] ~= '-' then "
    "  local prev = redis.call('GET', KEYS[3]) "
    "  if prev then "
    "    local n, c, cr, id = string.match(prev, '^(%d+) (%d+) (%d) ?(.*)$') "
    "    if n then return {tonumber(n), c, tonumber(cr), id} end "
    "  end "
    "end "
    /*  a call whose deadline passed while it waited (Redis paused, slow
        network) must not count a view the caller was told failed  */
    "local t = redis.call('TIME') "
    "if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[5]) then "
    "  return redis.error_reply('EXPIRED deadline passed before Redis ran the call') "
    "end "
    "local function done(n, created_at, created, id) "
    "  if KEYS[3] ~= '-' then "
    "    redis.call('SET', KEYS[3], n .. ' ' .. created_at .. ' ' .. created .. ' ' .. id, "
    "               'PX', ARGV[7]) "
    "  end "
    "  return {n, tostring(created_at), created, id} "
    "end "
    "local now = tonumber(ARGV[1]) "
    "local idle = tonumber(ARGV[2]) "
    "local absolute = tonumber(ARGV[3]) "
    "if KEYS[1] ~= '-' then "
    "  local v = redis.call('HMGET', KEYS[1], 'views', 'created_at') "
    "  if v[1] and v[2] then "
    "    local created = tonumber(v[2]) "
    "    if now - created < absolute then "
    "      local n = redis.call('HINCRBY', KEYS[1], 'views', 1) "
    "      redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]) "
    "      redis.call('PEXPIRE', KEYS[1], math.min(idle, absolute - (now - created))) "
    "      return done(n, v[2], 0, '') "
    "    end "
    "    redis.call('DEL', KEYS[1]) "
    "  end "
    "end "
    "if ARGV[4] == '1' then "
    "  redis.call('HSET', KEYS[2], 'views', 1, 'created_at', ARGV[1], 'last_seen', ARGV[1]) "
    "  redis.call('PEXPIRE', KEYS[2], math.min(idle, absolute)) "
    "  return done(1, ARGV[1], 1, ARGV[6]) "
    "end "
    "return false";

typedef enum { S_TOUCH, S_GET, S_REMOVE, S_SCRIPT } s_kind_t;

/*  A call waiting for Redis. Freed when hiredis hands back its reply (or
    NULL on disconnect); `done` is set when the caller was already answered
    (deadline passed), so a late reply is dropped.  */
typedef struct s_pending_t {
    struct s_pending_t *prev, *next;
    session_store_t *store;
    s_kind_t kind;
    bool done;
    int64_t started_ms;
    int64_t deadline_ms;
    session_store_fn *fn;
    void *arg;
    session_record_t rec;            /* id: the session the call is about */
    char new_id[SESSION_ID_LEN + 1]; /* touch: the id a created session gets */
} s_pending_t;

struct session_store_t {
    sh_loop_t *loop;
    session_store_config_t config;
    redisAsyncContext *ac;
    bool connected;
    sh_loop_item_t *item;
    short events;
    int timer;
    int64_t connect_started_ms;
    int64_t reconnect_at_ms;
    int64_t last_tick_ms;
    int64_t stall_grace_until_ms;

    int64_t backoff_ms;
    char sha[48];
    s_pending_t *head; /* oldest first */
    s_pending_t *tail;
    int64_t pending;
    uint64_t *calls, *errors, *timeouts, *late, *reconnects, *refused;
    sh_histogram_t *latency;
};

/*  --- ids ------------------------------------------------------------------  */

void session_id_new(char out[SESSION_ID_LEN + 1])
{
    sh_random_id(out, SESSION_ID_LEN + 1, SESSION_ID_BYTES);
}

bool session_id_valid(sh_str_t text)
{
    unsigned char bin[SESSION_ID_BYTES];
    size_t len = 0;
    if (text.len != SESSION_ID_LEN)
        return false;
    return sodium_base642bin(bin, sizeof bin, text.ptr, text.len, NULL, &len, NULL,
                             sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0 &&
           len == SESSION_ID_BYTES;
}

/*  <prefix><kind>:<hex BLAKE2b-128 of text>  */
static void s_key(const session_store_t *self, const char *text, char out[S_KEY_MAX],
                  const char *kind)
{
    unsigned char hash[16];
    char hex[33];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)text, strlen(text), NULL, 0);
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    snprintf(out, S_KEY_MAX, "%s%s:%s", self->config.prefix, kind, hex);
}

/*  --- pending calls ---------------------------------------------------------  */

static void s_unlink(session_store_t *self, s_pending_t *p)
{
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

/*  Answer the caller once.  */
static void s_finish(s_pending_t *p, uint64_t status, const session_record_t *rec)
{
    if (p->done || !p->fn)
        return;
    p->done = true;
    p->fn(p->arg, status, rec);
}

static int64_t s_int(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING) {
        int64_t v = 0;
        return sh_parse_int(r->str, INT64_MIN, INT64_MAX, &v) == 0 ? v : -1;
    }
    return -1;
}

/*  Turns a Redis reply into a status + record for the caller.  */
static uint64_t s_decode(session_store_t *self, s_pending_t *p, const redisReply *r)
{
    if (!r)
        return SH_STATUS_UNAVAILABLE;
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "EXPIRED", 7) == 0)
            return SH_STATUS_UNAVAILABLE; /* the caller already heard so */
        sh_warn("redis error: %.200s", r->str);
        if (strncmp(r->str, "NOSCRIPT", 8) == 0)
            self->sha[0] = 0; /* next touch uses EVAL and reloads */
        return SH_STATUS_UNAVAILABLE;
    }
    switch (p->kind) {
    case S_TOUCH:
        if (r->type == REDIS_REPLY_NIL)
            return SH_STATUS_NOT_FOUND;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 4)
            return SH_STATUS_INTERNAL;
        p->rec.views = (uint64_t)s_int(r->element[0]);
        p->rec.created_at = s_int(r->element[1]);
        p->rec.created = s_int(r->element[2]) == 1;
        /*  a replayed creation names the id the first attempt made  */
        if (p->rec.created) {
            const redisReply *id = r->element[3];
            if (id->type != REDIS_REPLY_STRING || id->len != SESSION_ID_LEN)
                return SH_STATUS_INTERNAL;
            memcpy(p->rec.id, id->str, SESSION_ID_LEN);
            p->rec.id[SESSION_ID_LEN] = 0;
        }
        p->rec.last_seen = sh_clock_wall_ms();
        return SH_STATUS_OK;
    case S_GET:
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3)
            return SH_STATUS_INTERNAL;
        if (r->element[0]->type == REDIS_REPLY_NIL)
            return SH_STATUS_NOT_FOUND;
        p->rec.views = (uint64_t)s_int(r->element[0]);
        p->rec.created_at = s_int(r->element[1]);
        p->rec.last_seen = s_int(r->element[2]);
        if (sh_clock_wall_ms() - p->rec.created_at >= self->config.absolute_ms)
            return SH_STATUS_NOT_FOUND;
        return SH_STATUS_OK;
    case S_REMOVE:
        p->rec.views = s_int(r) > 0 ? 1 : 0;
        return SH_STATUS_OK;
    case S_SCRIPT:
        if (r->type == REDIS_REPLY_STRING && r->len < (int)sizeof self->sha)
            snprintf(self->sha, sizeof self->sha, "%s", r->str);
        return SH_STATUS_OK;
    }
    return SH_STATUS_INTERNAL;
}

static void s_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    s_pending_t *p = privdata;
    session_store_t *self = p->store;
    uint64_t status = s_decode(self, p, reply);
    if (p->done) {
        if (p->kind != S_SCRIPT)
            (*self->late)++;
    } else {
        sh_histogram_observe(self->latency, (double)(sh_clock_mono_ms() - p->started_ms) / 1e3);
        if (status == SH_STATUS_UNAVAILABLE || status == SH_STATUS_INTERNAL)
            (*self->errors)++;
        s_finish(p, status, status == SH_STATUS_OK ? &p->rec : NULL);
    }
    s_unlink(self, p);
    free(p);
}

/*  --- event loop glue --------------------------------------------------------  */

static void s_update_events(session_store_t *self)
{
    if (self->item)
        sh_loop_set_events(self->item, self->events);
}

static void s_ev_add_read(void *data)
{
    session_store_t *self = data;
    self->events |= SH_LOOP_IN;
    s_update_events(self);
}

static void s_ev_del_read(void *data)
{
    session_store_t *self = data;
    self->events &= (short)~SH_LOOP_IN;
    s_update_events(self);
}

static void s_ev_add_write(void *data)
{
    session_store_t *self = data;
    self->events |= SH_LOOP_OUT;
    s_update_events(self);
}

static void s_ev_del_write(void *data)
{
    session_store_t *self = data;
    self->events &= (short)~SH_LOOP_OUT;
    s_update_events(self);
}

static void s_ev_cleanup(void *data)
{
    session_store_t *self = data;
    self->events = 0;
    sh_loop_remove(self->loop, &self->item);
}

static int s_on_io(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    session_store_t *self = arg;
    redisAsyncContext *ac = self->ac;
    if (ac && (revents & (SH_LOOP_IN | SH_LOOP_ERR)))
        redisAsyncHandleRead(ac);
    /*  the read may have freed the context (disconnect)  */
    if (self->ac == ac && ac && (revents & SH_LOOP_OUT))
        redisAsyncHandleWrite(ac);
    return 0;
}

/*  Before the loop sleeps, write what commands queued (saves a poll).  */
static int s_before_sleep(sh_loop_t *loop, void *arg)
{
    (void)loop;
    session_store_t *self = arg;
    if (self->ac && self->connected && (self->events & SH_LOOP_OUT))
        redisAsyncHandleWrite(self->ac);
    return 0;
}

static void s_schedule_reconnect(session_store_t *self)
{
    self->reconnect_at_ms = sh_clock_mono_ms() + self->backoff_ms;
    self->backoff_ms =
        self->backoff_ms * 2 > S_RECONNECT_MAX_MS ? S_RECONNECT_MAX_MS : self->backoff_ms * 2;
}

static void s_on_connect(const redisAsyncContext *ac, int status)
{
    session_store_t *self = ac->ev.data;
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
    session_store_t *self = ac->ev.data;
    if (status != REDIS_OK)
        sh_warn("redis %s:%d: connection lost: %s", self->config.host, self->config.port,
                ac->errstr);
    self->ac = NULL;
    self->connected = false;
    s_schedule_reconnect(self);
}

static s_pending_t *s_pending_new(session_store_t *self, s_kind_t kind, int64_t timeout_ms,
                                  session_store_fn *fn, void *arg)
{
    s_pending_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->store = self;
    p->kind = kind;
    p->started_ms = sh_clock_mono_ms();
    if (timeout_ms > self->config.timeout_ms)
        timeout_ms = self->config.timeout_ms;
    p->deadline_ms = p->started_ms + timeout_ms;
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

static void s_script_load(session_store_t *self)
{
    s_pending_t *p = s_pending_new(self, S_SCRIPT, self->config.timeout_ms, NULL, NULL);
    if (p &&
        redisAsyncCommand(self->ac, s_on_reply, p, "SCRIPT LOAD %s", s_touch_script) != REDIS_OK) {
        s_unlink(self, p);
        free(p);
    }
}

static void s_connect(session_store_t *self)
{
    (*self->reconnects)++;
    redisAsyncContext *ac = redisAsyncConnect(self->config.host, self->config.port);
    if (!ac || ac->err) {
        sh_warn("redis %s:%d: %s", self->config.host, self->config.port,
                ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        s_schedule_reconnect(self);
        return;
    }
    self->ac = ac;
    self->connected = false;
    self->connect_started_ms = sh_clock_mono_ms();
    self->events = 0;
    self->sha[0] = 0;
    ac->ev.data = self;
    ac->ev.addRead = s_ev_add_read;
    ac->ev.delRead = s_ev_del_read;
    ac->ev.addWrite = s_ev_add_write;
    ac->ev.delWrite = s_ev_del_write;
    ac->ev.cleanup = s_ev_cleanup;
    self->item = sh_loop_add_fd(self->loop, ac->c.fd, 0, s_on_io, self);
    redisAsyncSetConnectCallback(ac, s_on_connect);
    redisAsyncSetDisconnectCallback(ac, s_on_disconnect);
    /*  queued commands go out first once connected: AUTH, SELECT, script  */
    if (self->config.password[0])
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", self->config.password);
    if (self->config.db)
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", self->config.db);
    s_script_load(self);
}

/*  Drop a connection that stopped answering; pending calls fail.  */
static void s_drop(session_store_t *self, const char *why)
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
    session_store_t *self = arg;
    int64_t now = sh_clock_mono_ms();
    /*  A tick long overdue means this process did not run (paused, starved):
        what looks like a silent Redis is our own absence. Give the replies
        that are already waiting a chance before blaming Redis.  */
    if (self->last_tick_ms && now - self->last_tick_ms > S_TICK_MS * S_PAUSE_TICKS)
        self->stall_grace_until_ms = now + self->config.timeout_ms;
    self->last_tick_ms = now;
    for (s_pending_t *p = self->head; p; p = p->next)
        if (!p->done && p->deadline_ms <= now) {
            (*self->timeouts)++;
            s_finish(p, SH_STATUS_UNAVAILABLE, NULL);
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

static bool s_admit(session_store_t *self, session_store_fn *fn, void *arg)
{
    (*self->calls)++;
    if (!self->ac || !self->connected || self->pending >= self->config.max_pending) {
        (*self->refused)++;
        fn(arg, SH_STATUS_UNAVAILABLE, NULL);
        return false;
    }
    return true;
}

static void s_submit_failed(session_store_t *self, s_pending_t *p)
{
    s_finish(p, SH_STATUS_UNAVAILABLE, NULL);
    s_unlink(self, p);
    free(p);
}

void session_store_touch(session_store_t *self, const char *id, const char *new_id, bool create,
                         const char *idem_key, int64_t timeout_ms, session_store_fn *fn, void *arg)
{
    if (!s_admit(self, fn, arg))
        return;
    s_pending_t *p = s_pending_new(self, S_TOUCH, timeout_ms, fn, arg);
    if (!p) {
        fn(arg, SH_STATUS_INTERNAL, NULL);
        return;
    }
    char old_key[S_KEY_MAX] = "-", new_key[S_KEY_MAX], idem[S_KEY_MAX] = "-";
    if (id && *id)
        s_key(self, id, old_key, "s");
    s_key(self, new_id, new_key, "s");
    if (idem_key && *idem_key)
        s_key(self, idem_key, idem, "i");
    snprintf(p->rec.id, sizeof p->rec.id, "%s", id ? id : "");
    snprintf(p->new_id, sizeof p->new_id, "%s", new_id);
    char now[24], idle[24], absolute[24], deadline[24], idem_ttl[24];
    snprintf(idem_ttl, sizeof idem_ttl, "%lld", (long long)self->config.idem_ttl_ms);
    int64_t wall = sh_clock_wall_ms();
    snprintf(now, sizeof now, "%lld", (long long)wall);
    snprintf(deadline, sizeof deadline, "%lld",
             (long long)(wall + (p->deadline_ms - p->started_ms)));
    snprintf(idle, sizeof idle, "%lld", (long long)self->config.idle_ms);
    snprintf(absolute, sizeof absolute, "%lld", (long long)self->config.absolute_ms);
    int rc;
    if (self->sha[0])
        rc =
            redisAsyncCommand(self->ac, s_on_reply, p, "EVALSHA %s 3 %s %s %s %s %s %s %s %s %s %s",
                              self->sha, old_key, new_key, idem, now, idle, absolute,
                              create ? "1" : "0", deadline, new_id, idem_ttl);
    else
        rc = redisAsyncCommand(self->ac, s_on_reply, p, "EVAL %s 3 %s %s %s %s %s %s %s %s %s %s",
                               s_touch_script, old_key, new_key, idem, now, idle, absolute,
                               create ? "1" : "0", deadline, new_id, idem_ttl);
    if (rc != REDIS_OK)
        s_submit_failed(self, p);
    else if (!self->sha[0] && self->head && self->head->kind != S_SCRIPT)
        s_script_load(self);
}

void session_store_get(session_store_t *self, const char *id, int64_t timeout_ms,
                       session_store_fn *fn, void *arg)
{
    if (!s_admit(self, fn, arg))
        return;
    s_pending_t *p = s_pending_new(self, S_GET, timeout_ms, fn, arg);
    if (!p) {
        fn(arg, SH_STATUS_INTERNAL, NULL);
        return;
    }
    char key[S_KEY_MAX];
    s_key(self, id, key, "s");
    snprintf(p->rec.id, sizeof p->rec.id, "%s", id);
    if (redisAsyncCommand(self->ac, s_on_reply, p, "HMGET %s views created_at last_seen", key) !=
        REDIS_OK)
        s_submit_failed(self, p);
}

void session_store_remove(session_store_t *self, const char *id, int64_t timeout_ms,
                          session_store_fn *fn, void *arg)
{
    if (!s_admit(self, fn, arg))
        return;
    s_pending_t *p = s_pending_new(self, S_REMOVE, timeout_ms, fn, arg);
    if (!p) {
        fn(arg, SH_STATUS_INTERNAL, NULL);
        return;
    }
    char key[S_KEY_MAX];
    s_key(self, id, key, "s");
    if (redisAsyncCommand(self->ac, s_on_reply, p, "DEL %s", key) != REDIS_OK)
        s_submit_failed(self, p);
}

bool session_store_connected(const session_store_t *self)
{
    return self->connected;
}

session_store_t *session_store_new(sh_loop_t *loop, const session_store_config_t *config,
                                   sh_metrics_t *metrics)
{
    session_store_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    self->backoff_ms = S_RECONNECT_MIN_MS;
    const char *labels = "backend=\"redis\"";
    self->calls = sh_metrics_counter(metrics, "shoal_backend_calls_total",
                                     "Calls made to a backing store", labels);
    self->errors = sh_metrics_counter(metrics, "shoal_backend_errors_total",
                                      "Backing store calls that failed", labels);
    self->timeouts = sh_metrics_counter(metrics, "shoal_backend_timeouts_total",
                                        "Backing store calls that passed their deadline", labels);
    self->late = sh_metrics_counter(metrics, "shoal_backend_late_replies_total",
                                    "Replies that arrived after their deadline", labels);
    self->reconnects = sh_metrics_counter(metrics, "shoal_backend_connects_total",
                                          "Connection attempts to a backing store", labels);
    self->refused = sh_metrics_counter(metrics, "shoal_backend_refused_total",
                                       "Calls refused because the store was unreachable", labels);
    self->latency = sh_metrics_histogram(metrics, "shoal_backend_seconds",
                                         "Backing store call latency", labels);
    self->timer = sh_loop_timer(loop, S_TICK_MS, true, s_on_tick, self);
    sh_loop_before_sleep(loop, s_before_sleep, self);
    s_connect(self);
    return self;
}

void session_store_destroy(session_store_t **self_p)
{
    session_store_t *self = *self_p;
    if (!self)
        return;
    sh_loop_timer_cancel(self->loop, self->timer);
    if (self->ac) {
        redisAsyncContext *ac = self->ac;
        self->ac = NULL;
        redisAsyncFree(ac);
    }
    free(self);
    *self_p = NULL;
}
