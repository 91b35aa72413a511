/*  session_store.c - sessions, login sessions and rate-limit windows as
    Lua scripts and commands on sh_redis.

    Keys are <prefix>s:<hex BLAKE2b-128 of the session id>, so a leaked
    Redis dump does not hand out live session ids. A session is a hash
    {views, created_at, last_seen, user_id, username, csrf} with a TTL of
    the idle timeout (never past the absolute timeout). Every operation
    that reads and writes is one Lua script - atomic, so concurrent
    requests on one session never lose an update.
*/
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "session_store.h"
#include "sh_log.h"
#include "sh_redis.h"
#include "sh_util.h"

#define S_KEY_MAX       128
#define S_NUM_MAX       24
#define S_ERROR_LOG_MAX 200 /* characters of a Redis error put in a log line */

/*  KEYS: [1] the session's key or "-", [2] the key a new session gets,
          [3] the idempotency record's key or "-".
    ARGV: [1] now ms, [2] idle ms, [3] absolute ms, [4] create "1"/"0",
          [5] deadline ms, [6] the new session's id, [7] idempotency TTL ms.
    Returns {views, created_at, created 0/1, id of a created session or "",
    user_id, username, csrf}, or nil when there is no session to count. */
static const char *s_touch_script =
    "local function user(key) "
    "  if key == '-' then return '0', '', '' end "
    "  local u = redis.call('HMGET', key, 'user_id', 'username', 'csrf') "
    "  return u[1] or '0', u[2] or '', u[3] or '' "
    "end "
    /*  a retried call (same idempotency key) gets the first call's answer:
        a view is counted once however many instances saw the request  */
    "if KEYS[3] ~= '-' then "
    "  local prev = redis.call('GET', KEYS[3]) "
    "  if prev then "
    "    local n, c, cr, id = string.match(prev, '^(%d+) (%d+) (%d) ?(.*)$') "
    "    if n then "
    "      local uid, name, csrf = '0', '', '' "
    "      if cr == '0' then uid, name, csrf = user(KEYS[1]) end "
    "      return {tonumber(n), c, tonumber(cr), id, uid, name, csrf} "
    "    end "
    "  end "
    "end "
    /*  a call whose deadline passed while it waited (Redis paused, slow
        network) must not count a view the caller was told failed  */
    "local t = redis.call('TIME') "
    "if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[5]) then "
    "  return redis.error_reply('EXPIRED deadline passed before Redis ran the call') "
    "end "
    "local function done(n, created_at, created, id, uid, name, csrf) "
    "  if KEYS[3] ~= '-' then "
    "    redis.call('SET', KEYS[3], n .. ' ' .. created_at .. ' ' .. created .. ' ' .. id, "
    "               'PX', ARGV[7]) "
    "  end "
    "  return {n, tostring(created_at), created, id, uid, name, csrf} "
    "end "
    "local now = tonumber(ARGV[1]) "
    "local idle = tonumber(ARGV[2]) "
    "local absolute = tonumber(ARGV[3]) "
    "if KEYS[1] ~= '-' then "
    "  local v = redis.call('HMGET', KEYS[1], 'views', 'created_at', 'user_id', 'username', "
    "                       'csrf') "
    "  if v[1] and v[2] then "
    "    local created = tonumber(v[2]) "
    "    if now - created < absolute then "
    "      local n = redis.call('HINCRBY', KEYS[1], 'views', 1) "
    "      redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]) "
    "      redis.call('PEXPIRE', KEYS[1], math.min(idle, absolute - (now - created))) "
    "      return done(n, v[2], 0, '', v[3] or '0', v[4] or '', v[5] or '') "
    "    end "
    "    redis.call('DEL', KEYS[1]) "
    "  end "
    "end "
    "if ARGV[4] == '1' then "
    "  redis.call('HSET', KEYS[2], 'views', 1, 'created_at', ARGV[1], 'last_seen', ARGV[1]) "
    "  redis.call('PEXPIRE', KEYS[2], math.min(idle, absolute)) "
    "  return done(1, ARGV[1], 1, ARGV[6], '0', '', '') "
    "end "
    "return false";

/*  KEYS: [1] the session's key.  ARGV: [1] now ms, [2] idle ms, [3] absolute ms.
    Returns {views, created_at, user_id, username, csrf}, or nil when there
    is no live session. Reading counts as use: the idle timeout restarts. */
static const char *s_get_script =
    "local v = redis.call('HMGET', KEYS[1], 'views', 'created_at', 'user_id', 'username', "
    "                     'csrf') "
    "if not v[1] or not v[2] then return false end "
    "local age = tonumber(ARGV[1]) - tonumber(v[2]) "
    "local absolute = tonumber(ARGV[3]) "
    "if age >= absolute then "
    "  redis.call('DEL', KEYS[1]) "
    "  return false "
    "end "
    "redis.call('HSET', KEYS[1], 'last_seen', ARGV[1]) "
    "redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[2]), absolute - age)) "
    "return {tonumber(v[1]), v[2], v[3] or '0', v[4] or '', v[5] or ''}";

/*  KEYS: [1] the old session's key or "-", [2] the new session's key,
          [3] the idempotency record's key or "-".
    ARGV: [1] now ms, [2] idle ms, [3] absolute ms, [4] deadline ms,
          [5] new id, [6] CSRF token, [7] user id, [8] username,
          [9] idempotency TTL ms.
    Returns {id, created_at, csrf} of the session made.  */
static const char *s_login_script =
    "if KEYS[3] ~= '-' then "
    "  local prev = redis.call('GET', KEYS[3]) "
    "  if prev then "
    "    local id, c, csrf = string.match(prev, '^(%S+) (%d+) (%S+)$') "
    "    if id then return {id, c, csrf} end "
    "  end "
    "end "
    "local t = redis.call('TIME') "
    "if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[4]) then "
    "  return redis.error_reply('EXPIRED deadline passed before Redis ran the call') "
    "end "
    "if KEYS[1] ~= '-' then redis.call('DEL', KEYS[1]) end "
    "redis.call('HSET', KEYS[2], 'views', 0, 'created_at', ARGV[1], 'last_seen', ARGV[1], "
    "           'user_id', ARGV[7], 'username', ARGV[8], 'csrf', ARGV[6]) "
    "redis.call('PEXPIRE', KEYS[2], math.min(tonumber(ARGV[2]), tonumber(ARGV[3]))) "
    "if KEYS[3] ~= '-' then "
    "  redis.call('SET', KEYS[3], ARGV[5] .. ' ' .. ARGV[1] .. ' ' .. ARGV[6], 'PX', ARGV[9]) "
    "end "
    "return {ARGV[5], ARGV[1], ARGV[6]}";

/*  KEYS: [1] the window's key.  ARGV: [1] window ms.
    Returns {hits in the window, ms until it ends}. The window starts with
    its first hit; a key somehow left without a TTL gets one.  */
static const char *s_ratelimit_script = "local n = redis.call('INCR', KEYS[1]) "
                                        "local left = redis.call('PTTL', KEYS[1]) "
                                        "if left < 0 then "
                                        "  redis.call('PEXPIRE', KEYS[1], ARGV[1]) "
                                        "  left = tonumber(ARGV[1]) "
                                        "end "
                                        "return {n, left}";

typedef enum { S_TOUCH, S_GET, S_REMOVE, S_LOGIN, S_RATELIMIT } s_op_t;

struct session_store_t {
    session_store_config_t config;
    sh_redis_t *redis;
    int touch_script;
    int get_script;
    int login_script;
    int ratelimit_script;
};

/*  One operation waiting for its Redis reply.  */
typedef struct {
    session_store_t *store;
    s_op_t op;
    session_store_fn *fn;
    session_ratelimit_fn *rl_fn;
    void *arg;
    session_record_t rec; /* id: the session the call is about */
    uint64_t limit;       /* rate limit */
    int64_t window_ms;
} s_call_t;

/*  --- ids ------------------------------------------------------------------  */

void session_id_new(char out[SESSION_ID_LEN + 1])
{
    sh_random_id(out, SESSION_ID_LEN + 1, SESSION_ID_BYTES);
}

void session_csrf_new(char out[SESSION_CSRF_LEN + 1])
{
    sh_random_id(out, SESSION_CSRF_LEN + 1, SESSION_CSRF_BYTES);
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

/*  <prefix><kind>:<hex BLAKE2b-128 of the text>  */
static void s_key(const session_store_t *self, const char *text, size_t len, const char *kind,
                  char out[S_KEY_MAX])
{
    unsigned char hash[16];
    char hex[33];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)text, len, NULL, 0);
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    snprintf(out, S_KEY_MAX, "%s%s:%s", self->config.prefix, kind, hex);
}

static const char *s_num(char out[S_NUM_MAX], int64_t value)
{
    snprintf(out, S_NUM_MAX, "%lld", (long long)value);
    return out;
}

/*  The Redis timeout of a call, as the client will cap it.  */
static int64_t s_timeout(const session_store_t *self, int64_t timeout_ms)
{
    if (timeout_ms > self->config.timeout_ms)
        timeout_ms = self->config.timeout_ms;
    return timeout_ms < 1 ? 1 : timeout_ms;
}

/*  --- replies ----------------------------------------------------------------  */

/*  UNAVAILABLE for a call Redis did not answer or answered with an error,
    else OK.  */
static uint64_t s_failed(uint64_t status, const sh_redis_reply_t *reply)
{
    if (status != SH_STATUS_OK)
        return SH_STATUS_UNAVAILABLE;
    if (sh_redis_type(reply) != SH_REDIS_ERROR)
        return SH_STATUS_OK;
    size_t len = 0;
    const char *text = sh_redis_str(reply, &len);
    /*  EXPIRED: the deadline passed in the queue; the caller already heard  */
    if (len < 7 || memcmp(text, "EXPIRED", 7) != 0)
        sh_warn("redis error: %.*s", (int)(len > S_ERROR_LOG_MAX ? S_ERROR_LOG_MAX : len), text);
    return SH_STATUS_UNAVAILABLE;
}

/*  Copy a STR reply of at most size - 1 bytes. Returns 0 or -1.  */
static int s_copy(const sh_redis_reply_t *reply, char *out, size_t size)
{
    size_t len = 0;
    const char *text = sh_redis_str(reply, &len);
    if (sh_redis_type(reply) != SH_REDIS_STR || len >= size)
        return -1;
    memcpy(out, text, len);
    out[len] = 0;
    return 0;
}

/*  user_id, username, csrf from elements first.. of an array reply.  */
static int s_user(session_record_t *rec, const sh_redis_reply_t *reply, size_t first)
{
    int64_t user_id = sh_redis_int(sh_redis_elem(reply, first), -1);
    if (user_id < 0)
        return -1;
    rec->user_id = (uint64_t)user_id;
    if (s_copy(sh_redis_elem(reply, first + 1), rec->username, sizeof rec->username) ||
        s_copy(sh_redis_elem(reply, first + 2), rec->csrf, sizeof rec->csrf))
        return -1;
    return 0;
}

/*  Fill call->rec from the reply of a session operation; returns the status.  */
static uint64_t s_decode(s_call_t *call, const sh_redis_reply_t *r)
{
    session_record_t *rec = &call->rec;
    int type = sh_redis_type(r);
    if (type == SH_REDIS_NIL && (call->op == S_TOUCH || call->op == S_GET))
        return SH_STATUS_NOT_FOUND;
    switch (call->op) {
    case S_TOUCH:
        if (sh_redis_count(r) != 7 || s_user(rec, r, 4))
            return SH_STATUS_INTERNAL;
        rec->views = (uint64_t)sh_redis_int(sh_redis_elem(r, 0), 0);
        rec->created_at = sh_redis_int(sh_redis_elem(r, 1), 0);
        rec->created = sh_redis_int(sh_redis_elem(r, 2), 0) == 1;
        /*  a replayed creation names the id the first attempt made  */
        if (rec->created && (s_copy(sh_redis_elem(r, 3), rec->id, sizeof rec->id) || !rec->id[0]))
            return SH_STATUS_INTERNAL;
        rec->last_seen = sh_clock_wall_ms();
        return SH_STATUS_OK;
    case S_GET:
        if (sh_redis_count(r) != 5 || s_user(rec, r, 2))
            return SH_STATUS_INTERNAL;
        rec->views = (uint64_t)sh_redis_int(sh_redis_elem(r, 0), 0);
        rec->created_at = sh_redis_int(sh_redis_elem(r, 1), 0);
        rec->last_seen = sh_clock_wall_ms();
        return SH_STATUS_OK;
    case S_REMOVE:
        if (type != SH_REDIS_INT)
            return SH_STATUS_INTERNAL;
        rec->views = sh_redis_int(r, 0) > 0 ? 1 : 0;
        return SH_STATUS_OK;
    case S_LOGIN:
        if (sh_redis_count(r) != 3 || s_copy(sh_redis_elem(r, 0), rec->id, sizeof rec->id) ||
            s_copy(sh_redis_elem(r, 2), rec->csrf, sizeof rec->csrf))
            return SH_STATUS_INTERNAL;
        rec->created_at = sh_redis_int(sh_redis_elem(r, 1), 0);
        rec->views = 0;
        rec->created = true;
        rec->last_seen = sh_clock_wall_ms();
        return SH_STATUS_OK;
    case S_RATELIMIT:
        break;
    }
    return SH_STATUS_INTERNAL;
}

static uint64_t s_decode_ratelimit(const s_call_t *call, const sh_redis_reply_t *r,
                                   session_ratelimit_t *rl)
{
    if (sh_redis_count(r) != 2)
        return SH_STATUS_INTERNAL;
    int64_t count = sh_redis_int(sh_redis_elem(r, 0), -1);
    int64_t left = sh_redis_int(sh_redis_elem(r, 1), -1);
    if (count < 1)
        return SH_STATUS_INTERNAL;
    /*  a window made earlier with a longer length ends no later than ours would  */
    if (left < 1 || left > call->window_ms)
        left = left < 1 ? 1 : call->window_ms;
    rl->count = (uint64_t)count;
    rl->allowed = rl->count <= call->limit;
    rl->retry_after_ms = (uint64_t)left;
    return SH_STATUS_OK;
}

static void s_on_reply(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    s_call_t *call = arg;
    status = s_failed(status, reply);
    if (call->op == S_RATELIMIT) {
        session_ratelimit_t rl = {0};
        if (status == SH_STATUS_OK)
            status = s_decode_ratelimit(call, reply, &rl);
        if (status == SH_STATUS_INTERNAL)
            sh_warn("redis: unexpected reply to a rate-limit hit");
        call->rl_fn(call->arg, status, status == SH_STATUS_OK ? &rl : NULL);
    } else {
        if (status == SH_STATUS_OK)
            status = s_decode(call, reply);
        if (status == SH_STATUS_INTERNAL)
            sh_warn("redis: unexpected reply to a session call");
        call->fn(call->arg, status, status == SH_STATUS_OK ? &call->rec : NULL);
    }
    free(call);
}

static s_call_t *s_call_new(session_store_t *self, s_op_t op, session_store_fn *fn, void *arg)
{
    s_call_t *call = calloc(1, sizeof *call);
    if (!call) {
        fn(arg, SH_STATUS_INTERNAL, NULL);
        return NULL;
    }
    call->store = self;
    call->op = op;
    call->fn = fn;
    call->arg = arg;
    return call;
}

/*  --- operations ---------------------------------------------------------------  */

void session_store_touch(session_store_t *self, const char *id, const char *new_id, bool create,
                         const char *idem_key, int64_t timeout_ms, session_store_fn *fn, void *arg)
{
    s_call_t *call = s_call_new(self, S_TOUCH, fn, arg);
    if (!call)
        return;
    char old_key[S_KEY_MAX] = "-", new_key[S_KEY_MAX], idem[S_KEY_MAX] = "-";
    if (id && *id)
        s_key(self, id, strlen(id), "s", old_key);
    s_key(self, new_id, strlen(new_id), "s", new_key);
    if (idem_key && *idem_key)
        s_key(self, idem_key, strlen(idem_key), "i", idem);
    snprintf(call->rec.id, sizeof call->rec.id, "%s", id ? id : "");
    int64_t now = sh_clock_wall_ms();
    char now_text[S_NUM_MAX], idle[S_NUM_MAX], absolute[S_NUM_MAX], deadline[S_NUM_MAX],
        idem_ttl[S_NUM_MAX];
    const char *argv[] = {old_key,
                          new_key,
                          idem,
                          s_num(now_text, now),
                          s_num(idle, self->config.idle_ms),
                          s_num(absolute, self->config.absolute_ms),
                          create ? "1" : "0",
                          s_num(deadline, now + s_timeout(self, timeout_ms)),
                          new_id,
                          s_num(idem_ttl, self->config.idem_ttl_ms)};
    sh_redis_eval(self->redis, self->touch_script, timeout_ms, s_on_reply, call, 3,
                  (int)SH_ARRAY_SIZE(argv), argv, NULL);
}

void session_store_get(session_store_t *self, const char *id, int64_t timeout_ms,
                       session_store_fn *fn, void *arg)
{
    s_call_t *call = s_call_new(self, S_GET, fn, arg);
    if (!call)
        return;
    char key[S_KEY_MAX], now[S_NUM_MAX], idle[S_NUM_MAX], absolute[S_NUM_MAX];
    s_key(self, id, strlen(id), "s", key);
    snprintf(call->rec.id, sizeof call->rec.id, "%s", id);
    const char *argv[] = {key, s_num(now, sh_clock_wall_ms()), s_num(idle, self->config.idle_ms),
                          s_num(absolute, self->config.absolute_ms)};
    sh_redis_eval(self->redis, self->get_script, timeout_ms, s_on_reply, call, 1,
                  (int)SH_ARRAY_SIZE(argv), argv, NULL);
}

void session_store_remove(session_store_t *self, const char *id, int64_t timeout_ms,
                          session_store_fn *fn, void *arg)
{
    s_call_t *call = s_call_new(self, S_REMOVE, fn, arg);
    if (!call)
        return;
    char key[S_KEY_MAX];
    s_key(self, id, strlen(id), "s", key);
    const char *argv[] = {"DEL", key};
    sh_redis_command(self->redis, timeout_ms, s_on_reply, call, 2, argv, NULL);
}

void session_store_login(session_store_t *self, const char *old_id, const char *new_id,
                         const char *csrf, uint64_t user_id, const char *username,
                         const char *idem_key, int64_t timeout_ms, session_store_fn *fn, void *arg)
{
    s_call_t *call = s_call_new(self, S_LOGIN, fn, arg);
    if (!call)
        return;
    char old_key[S_KEY_MAX] = "-", new_key[S_KEY_MAX], idem[S_KEY_MAX] = "-";
    if (old_id && *old_id)
        s_key(self, old_id, strlen(old_id), "s", old_key);
    s_key(self, new_id, strlen(new_id), "s", new_key);
    /*  apart from touch's records: one key never names both kinds  */
    if (idem_key && *idem_key)
        s_key(self, idem_key, strlen(idem_key), "il", idem);
    call->rec.user_id = user_id;
    snprintf(call->rec.username, sizeof call->rec.username, "%s", username);
    int64_t now = sh_clock_wall_ms();
    char now_text[S_NUM_MAX], idle[S_NUM_MAX], absolute[S_NUM_MAX], deadline[S_NUM_MAX],
        user[S_NUM_MAX], idem_ttl[S_NUM_MAX];
    snprintf(user, sizeof user, "%llu", (unsigned long long)user_id);
    const char *argv[] = {old_key,
                          new_key,
                          idem,
                          s_num(now_text, now),
                          s_num(idle, self->config.idle_ms),
                          s_num(absolute, self->config.absolute_ms),
                          s_num(deadline, now + s_timeout(self, timeout_ms)),
                          new_id,
                          csrf,
                          user,
                          username,
                          s_num(idem_ttl, self->config.idem_ttl_ms)};
    sh_redis_eval(self->redis, self->login_script, timeout_ms, s_on_reply, call, 3,
                  (int)SH_ARRAY_SIZE(argv), argv, NULL);
}

void session_store_ratelimit(session_store_t *self, const char *key, size_t len, uint64_t limit,
                             int64_t window_ms, int64_t timeout_ms, session_ratelimit_fn *fn,
                             void *arg)
{
    s_call_t *call = calloc(1, sizeof *call);
    if (!call) {
        fn(arg, SH_STATUS_INTERNAL, NULL);
        return;
    }
    call->store = self;
    call->op = S_RATELIMIT;
    call->rl_fn = fn;
    call->arg = arg;
    call->limit = limit;
    call->window_ms = window_ms;
    char window_key[S_KEY_MAX], window[S_NUM_MAX];
    s_key(self, key, len, "rl", window_key);
    const char *argv[] = {window_key, s_num(window, window_ms)};
    sh_redis_eval(self->redis, self->ratelimit_script, timeout_ms, s_on_reply, call, 1,
                  (int)SH_ARRAY_SIZE(argv), argv, NULL);
}

bool session_store_connected(const session_store_t *self)
{
    return sh_redis_connected(self->redis);
}

sh_redis_t *session_store_redis(session_store_t *self)
{
    return self->redis;
}

session_store_t *session_store_new(sh_loop_t *loop, const session_store_config_t *config,
                                   sh_metrics_t *metrics)
{
    session_store_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->config = *config;
    sh_redis_config_t redis = {
        .host = config->host,
        .port = config->port,
        .password = config->password,
        .db = config->db,
        .timeout_ms = config->timeout_ms,
        .max_pending = config->max_pending,
        .label = "redis",
    };
    self->redis = sh_redis_new(loop, &redis, metrics);
    if (!self->redis) {
        free(self);
        return NULL;
    }
    self->touch_script = sh_redis_script(self->redis, s_touch_script);
    self->get_script = sh_redis_script(self->redis, s_get_script);
    self->login_script = sh_redis_script(self->redis, s_login_script);
    self->ratelimit_script = sh_redis_script(self->redis, s_ratelimit_script);
    /*  four scripts always fit the client's empty table  */
    assert(self->touch_script >= 0 && self->get_script >= 0 && self->login_script >= 0 &&
           self->ratelimit_script >= 0);
    return self;
}

void session_store_destroy(session_store_t **self_p)
{
    session_store_t *self = *self_p;
    if (!self)
        return;
    sh_redis_destroy(&self->redis);
    free(self);
    *self_p = NULL;
}
