/*  sh_events.c - history append, PUB, event_range and event_canary (see
    sh_events.h and "Events" in proto/README.md).

    Ordered events wait in one FIFO until Redis gave them an offset. At
    most one append is in flight: it carries up to S_BATCH_MAX events from
    the head of the FIFO in one script call, so a channel's offsets follow
    the publish order even when an append fails and is sent again. An
    append that failed (Redis down, stalled, refusing) is retried from a
    timer, as the same batch under the same id; the first one that
    succeeds drains the backlog. The script remembers the id of the last
    batch it appended, so a retry of an append that did reach Redis (its
    answer was late) returns the offsets it got then instead of appending
    twice.
*/
#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include <sodium.h>

#include "sh_events.h"
#include "sh_log.h"
#include "sh_registry.h"
#include "sh_transport.h"
#include "sh_util.h"

#define S_BATCH_MAX      64   /* events in one append */
#define S_RETRY_MS       100  /* after a failed append */
#define S_ERROR_TRIES    5    /* appends Redis refused with an error before a batch is dropped */
#define S_APPEND_WAIT_MS 2000 /* one append, capped by the Redis client's own timeout */
#define S_RANGE_WAIT_MS  1000 /* event_range without a deadline */
#define S_WARN_EVERY_MS  1000 /* repeated warnings (drops) at most this often */
#define S_EPOCH_BYTES    12   /* 16 characters of base64url */
#define S_BATCH_ID_BYTES 12
#define S_ID_SIZE        24
#define S_KEY_MAX        (64 + 8 + SH_CHANNEL_MAX + 8)
#define S_NUM_MAX        24
#define S_ARGS_FIXED     5 /* batch id, epoch, history, ttl, source */
#define S_ARGS_PER_EVENT 3 /* type, data, ts_us */
#define S_SESSION_HASH   16
#define S_SESSION_PREFIX "s:"
#define S_CANARY_CHANNEL "canary"
#define S_CANARY_TYPE    "canary"
#define S_RANGE_FIELDS   4 /* epoch, top, first, entries */

/*  KEYS[1]: this publisher's last batch; then per event its stream and
    its meta hash. ARGV: batch id, epoch for a channel without meta,
    history length, TTL (s), source; then per event type, data, ts_us.
    Returns {epoch, offset} per event, in order. Key types are checked
    before anything is written, so a refused append changes nothing.  */
static const char *s_append_script =
    "local last = redis.call('GET', KEYS[1]) "
    "if last then "
    "  local sep = string.find(last, ' ', 1, true) "
    "  if sep and string.sub(last, 1, sep - 1) == ARGV[1] then "
    "    local out = {} "
    "    for w in string.gmatch(string.sub(last, sep + 1), '%S+') do out[#out + 1] = w end "
    "    return out "
    "  end "
    "end "
    "local n = (#KEYS - 1) / 2 "
    "for i = 1, n do "
    "  local st = redis.call('TYPE', KEYS[2 * i]).ok "
    "  local mt = redis.call('TYPE', KEYS[2 * i + 1]).ok "
    "  if (st ~= 'none' and st ~= 'stream') or (mt ~= 'none' and mt ~= 'hash') then "
    "    return redis.error_reply('WRONGTYPE event history key ' .. KEYS[2 * i]) "
    "  end "
    "end "
    "local out = {} "
    "for i = 1, n do "
    "  local stream, meta = KEYS[2 * i], KEYS[2 * i + 1] "
    "  local epoch = redis.call('HGET', meta, 'epoch') "
    "  if not epoch then "
    "    epoch = ARGV[2] "
    "    redis.call('DEL', stream) "
    "    redis.call('HSET', meta, 'epoch', epoch, 'top', 0) "
    "  end "
    "  local top = redis.call('HINCRBY', meta, 'top', 1) "
    "  local a = 5 + 3 * (i - 1) "
    "  redis.call('XADD', stream, 'MAXLEN', ARGV[3], string.format('0-%d', top), "
    "             't', ARGV[a + 1], 'd', ARGV[a + 2], 'ts', ARGV[a + 3], 's', ARGV[5]) "
    "  redis.call('EXPIRE', stream, ARGV[4]) "
    "  redis.call('EXPIRE', meta, ARGV[4]) "
    "  out[#out + 1] = epoch "
    "  out[#out + 1] = string.format('%d', top) "
    "end "
    "redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. table.concat(out, ' '), 'EX', ARGV[4]) "
    "return out";

/*  KEYS: the channel's stream and meta hash. ARGV: the first id wanted
    ("0-<after + 1>"), the most entries. Returns {epoch or "", top, id of
    the oldest entry or "", entries}; a stream without meta is stale and
    shows nothing.  */
static const char *s_range_script =
    "local epoch = redis.call('HGET', KEYS[2], 'epoch') "
    "if not epoch then return {'', '0', '', {}} end "
    "local top = redis.call('HGET', KEYS[2], 'top') or '0' "
    "local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1) "
    "local first = '' "
    "if #head > 0 then first = head[1][1] end "
    "local entries = {} "
    "if tonumber(ARGV[2]) > 0 then "
    "  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2]) "
    "end "
    "return {epoch, top, first, entries}";

/*  One ordered event on its way; its strings follow the struct.  */
typedef struct s_event_t {
    struct s_event_t *next;
    int64_t ts_us;
    const char *channel, *type, *data;
    size_t channel_len, type_len, data_len;
    char text[];
} s_event_t;

typedef struct s_batch_t s_batch_t;

struct sh_events_t {
    sh_service_t *service;
    sh_loop_t *loop;
    sh_redis_t *redis;
    const sh_events_settings_t *settings;
    char prefix[64 + 1];
    char source[SH_ID_MAX + 1];
    char endpoint[SH_ENDPOINT_MAX];
    void *pub;
    int append_script;
    int range_script;

    s_event_t *head, *tail; /* waiting for an offset, oldest first */
    size_t pending;
    s_batch_t *in_flight; /* the append on its way, or NULL */
    int retry_timer;      /* > 0 while a retry is scheduled */
    bool down;            /* the last append failed */
    int head_errors;      /* error replies to the batch at the head */
    /*  a failed append is sent again as it was (same events, same id), so
        the script knows it when the first attempt did reach Redis  */
    size_t retry_count;
    char retry_id[S_ID_SIZE];

    int64_t last_drop_warn_ms;
    uint64_t drops_unlogged;

    uint64_t *published_ordered, *published_latest, *appended, *dropped, *append_errors;
    int64_t *pending_gauge;
};

/*  The append in flight. Detached (events NULL) when the publisher goes
    first; the Redis client's answer then only frees it.  */
struct s_batch_t {
    sh_events_t *events;
    size_t count;
    char id[S_ID_SIZE];
};

static void s_pump(sh_events_t *self);

static int64_t s_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void sh_events_session_channel(const char *sid, char out[SH_CHANNEL_MAX + 1])
{
    unsigned char hash[S_SESSION_HASH];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)sid, strlen(sid), NULL, 0);
    memcpy(out, S_SESSION_PREFIX, sizeof S_SESSION_PREFIX);
    sodium_bin2hex(out + strlen(S_SESSION_PREFIX), 2 * S_SESSION_HASH + 1, hash, sizeof hash);
}

/*  True when the names and data fit the event record.  */
static bool s_fits(const char *channel, const char *type, const char *data)
{
    size_t c = channel ? strlen(channel) : 0, t = type ? strlen(type) : 0;
    return c > 0 && c <= SH_CHANNEL_MAX && t > 0 && t <= SH_EVENT_TYPE_MAX && data &&
           strlen(data) <= SH_EVENT_DATA_MAX;
}

/*  PUB one event: [channel][envelope][event].  */
static void s_send(sh_events_t *self, const char *channel, const char *type, const char *data,
                   const char *epoch, uint64_t offset, int64_t ts_us)
{
    sh_envelope_t env;
    memset(&env, 0, sizeof env);
    env.version = SH_PROTO_VERSION;
    env.kind = SH_KIND_EVENT;
    env.type = SH_OP_event;
    env.instance = sh_str(self->source);
    sh_event_req_t ev;
    memset(&ev, 0, sizeof ev);
    ev.channel = sh_str(channel);
    ev.epoch = sh_str(epoch);
    ev.offset = offset;
    ev.type = sh_str(type);
    ev.data = sh_str(data);
    ev.ts_us = (uint64_t)ts_us;
    ev.source = sh_str(self->source);
    /*  a PUB socket never blocks: past its high-water mark a slow
        subscriber loses messages, and the offsets show it the gap  */
    if (sh_transport_publish(self->pub, channel, &env, &sh_event_req_codec, &ev) != 0)
        sh_warn("events: cannot publish on %s: %s", channel, zmq_strerror(errno));
    (*(offset ? self->published_ordered : self->published_latest))++;
}

int sh_events_publish_latest(sh_events_t *self, const char *channel, const char *type,
                             const char *json_data)
{
    if (!s_fits(channel, type, json_data)) {
        sh_warn("events: %s event on %s does not fit", type ? type : "", channel ? channel : "");
        (*self->dropped)++;
        return -1;
    }
    s_send(self, channel, type, json_data, "", 0, s_wall_us());
    return 0;
}

/*  --- the ordered path -----------------------------------------------------------  */

static void s_gauge(sh_events_t *self)
{
    *self->pending_gauge = (int64_t)self->pending;
}

static void s_drop_warn(sh_events_t *self, uint64_t count, const char *why)
{
    (*self->dropped) += count;
    self->drops_unlogged += count;
    int64_t now = sh_clock_mono_ms();
    if (now - self->last_drop_warn_ms >= S_WARN_EVERY_MS) {
        sh_warn("events: %llu dropped (%s)", (unsigned long long)self->drops_unlogged, why);
        self->drops_unlogged = 0;
        self->last_drop_warn_ms = now;
    }
}

int sh_events_publish(sh_events_t *self, const char *channel, const char *type,
                      const char *json_data)
{
    int64_t ts_us = s_wall_us();
    if (!s_fits(channel, type, json_data)) {
        sh_warn("events: %s event on %s does not fit", type ? type : "", channel ? channel : "");
        (*self->dropped)++;
        return -1;
    }
    if (self->pending >= (size_t)self->settings->pending_max) {
        s_drop_warn(self, 1, "too many waiting for Redis");
        return -1;
    }
    size_t c = strlen(channel), t = strlen(type), d = strlen(json_data);
    s_event_t *ev = malloc(sizeof *ev + c + t + d + 3);
    if (!ev) {
        s_drop_warn(self, 1, "out of memory");
        return -1;
    }
    char *p = ev->text;
    ev->next = NULL;
    ev->ts_us = ts_us;
    ev->channel = memcpy(p, channel, c + 1);
    ev->channel_len = c;
    p += c + 1;
    ev->type = memcpy(p, type, t + 1);
    ev->type_len = t;
    p += t + 1;
    ev->data = memcpy(p, json_data, d + 1);
    ev->data_len = d;
    if (self->tail)
        self->tail->next = ev;
    else
        self->head = ev;
    self->tail = ev;
    self->pending++;
    s_gauge(self);
    s_pump(self);
    return 0;
}

/*  Take the oldest event off the queue (the caller owns it).  */
static s_event_t *s_pop(sh_events_t *self)
{
    s_event_t *ev = self->head;
    self->head = ev->next;
    if (!self->head)
        self->tail = NULL;
    self->pending--;
    return ev;
}

static int s_on_retry(sh_loop_t *loop, void *arg)
{
    (void)loop;
    sh_events_t *self = arg;
    self->retry_timer = 0;
    s_pump(self);
    return 0;
}

static void s_retry_later(sh_events_t *self)
{
    if (self->retry_timer <= 0)
        self->retry_timer = sh_loop_timer(self->loop, S_RETRY_MS, false, s_on_retry, self);
}

/*  The append's answer: {epoch, offset} per event of the batch.  */
static bool s_append_ok(const sh_redis_reply_t *reply, size_t count)
{
    if (sh_redis_type(reply) != SH_REDIS_ARRAY || sh_redis_count(reply) != 2 * count)
        return false;
    for (size_t i = 0; i < count; i++) {
        size_t len = 0;
        const char *epoch = sh_redis_str(sh_redis_elem(reply, 2 * i), &len);
        if (!epoch || len == 0 || len > SH_ID_MAX ||
            sh_redis_int(sh_redis_elem(reply, 2 * i + 1), 0) <= 0)
            return false;
    }
    return true;
}

static void s_on_appended(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    s_batch_t *batch = arg;
    sh_events_t *self = batch->events;
    if (!self) {
        free(batch);
        return;
    }
    self->in_flight = NULL;
    size_t count = batch->count;
    self->retry_count = count;
    memcpy(self->retry_id, batch->id, sizeof self->retry_id);
    free(batch);
    if (status == SH_STATUS_OK && reply && s_append_ok(reply, count)) {
        self->retry_count = 0;
        if (self->down)
            sh_info("events: Redis answers again; appending %zu waiting events", self->pending);
        self->down = false;
        self->head_errors = 0;
        for (size_t i = 0; i < count; i++) {
            s_event_t *ev = s_pop(self);
            char epoch[SH_ID_MAX + 1];
            size_t len = 0;
            const char *text = sh_redis_str(sh_redis_elem(reply, 2 * i), &len);
            snprintf(epoch, sizeof epoch, "%.*s", (int)len, text);
            uint64_t offset = (uint64_t)sh_redis_int(sh_redis_elem(reply, 2 * i + 1), 0);
            s_send(self, ev->channel, ev->type, ev->data, epoch, offset, ev->ts_us);
            free(ev);
        }
        (*self->appended) += count;
        s_gauge(self);
        s_pump(self);
        return;
    }
    (*self->append_errors)++;
    if (status == SH_STATUS_OK && reply) {
        /*  Redis answered but refused: a key of the wrong type, out of
            memory. A few more tries, then the batch goes so the channels
            behind it are not held up for ever.  */
        const char *text = sh_redis_str(reply, NULL);
        sh_error("events: history append refused: %.200s", text ? text : "unexpected reply");
        if (++self->head_errors >= S_ERROR_TRIES) {
            for (size_t i = 0; i < count; i++)
                free(s_pop(self));
            self->head_errors = 0;
            self->retry_count = 0;
            s_gauge(self);
            s_drop_warn(self, count, "Redis refused their history append");
            s_pump(self);
            return;
        }
    } else if (!self->down)
        sh_warn("events: Redis unavailable; %zu events wait for it (at most %lld)", self->pending,
                (long long)self->settings->pending_max);
    self->down = true;
    s_retry_later(self);
}

static void s_key(const sh_events_t *self, char out[S_KEY_MAX], const char *channel,
                  const char *suffix)
{
    snprintf(out, S_KEY_MAX, "%sev:%s%s", self->prefix, channel, suffix);
}

/*  Send the next append when none is in flight or waiting for a retry.  */
static void s_pump(sh_events_t *self)
{
    if (self->in_flight || self->retry_timer > 0 || !self->head)
        return;
    s_batch_t *batch = calloc(1, sizeof *batch);
    size_t count = 0;
    size_t most = self->retry_count ? self->retry_count : S_BATCH_MAX;
    for (s_event_t *ev = self->head; ev && count < most; ev = ev->next)
        count++;
    int nkeys = 1 + 2 * (int)count;
    int argc = nkeys + S_ARGS_FIXED + S_ARGS_PER_EVENT * (int)count;
    const char **argv = calloc((size_t)argc, sizeof *argv);
    size_t *lens = calloc((size_t)argc, sizeof *lens);
    char(*keys)[S_KEY_MAX] = calloc((size_t)nkeys, S_KEY_MAX);
    char(*ts)[S_NUM_MAX] = calloc(count, S_NUM_MAX);
    if (!batch || !argv || !lens || !keys || !ts) {
        free(batch);
        batch = NULL;
        sh_warn("events: out of memory for an append");
        s_retry_later(self);
        goto done;
    }
    batch->events = self;
    batch->count = count;
    if (self->retry_count)
        memcpy(batch->id, self->retry_id, sizeof batch->id);
    else
        sh_random_id(batch->id, sizeof batch->id, S_BATCH_ID_BYTES);
    char epoch[S_ID_SIZE], history[S_NUM_MAX], ttl[S_NUM_MAX];
    sh_random_id(epoch, sizeof epoch, S_EPOCH_BYTES);
    snprintf(history, sizeof history, "%lld", (long long)self->settings->history);
    snprintf(ttl, sizeof ttl, "%lld", (long long)self->settings->ttl_s);
    snprintf(keys[0], S_KEY_MAX, "%sevpub:%s", self->prefix, self->source);
    argv[0] = keys[0];
    int a = nkeys;
    argv[a++] = batch->id;
    argv[a++] = epoch;
    argv[a++] = history;
    argv[a++] = ttl;
    argv[a++] = self->source;
    size_t i = 0;
    for (s_event_t *ev = self->head; ev && i < count; ev = ev->next, i++) {
        s_key(self, keys[1 + 2 * i], ev->channel, "");
        s_key(self, keys[2 + 2 * i], ev->channel, ":meta");
        argv[1 + 2 * i] = keys[1 + 2 * i];
        argv[2 + 2 * i] = keys[2 + 2 * i];
        snprintf(ts[i], S_NUM_MAX, "%lld", (long long)ev->ts_us);
        argv[a] = ev->type;
        lens[a++] = ev->type_len;
        argv[a] = ev->data;
        lens[a++] = ev->data_len;
        argv[a++] = ts[i];
    }
    for (int k = 0; k < argc; k++)
        if (!lens[k])
            lens[k] = strlen(argv[k]);
    self->in_flight = batch;
    /*  may answer at once (Redis down): s_on_appended then clears in_flight  */
    sh_redis_eval(self->redis, self->append_script, S_APPEND_WAIT_MS, s_on_appended, batch, nkeys,
                  argc, argv, lens);
done:
    free(argv);
    free(lens);
    free(keys);
    free(ts);
}

/*  --- event_range -----------------------------------------------------------------  */

typedef struct {
    sh_events_t *events;
    sh_request_t *request;
    char channel[SH_CHANNEL_MAX + 1];
} s_range_call_t;

/*  The offset of a stream entry id "0-<offset>"; 0 when it is not one.  */
static uint64_t s_offset_of(const sh_redis_reply_t *id)
{
    size_t len = 0;
    const char *text = sh_redis_str(id, &len);
    char num[S_NUM_MAX];
    int64_t value = 0;
    if (!text || len < 3 || len - 2 >= sizeof num || text[0] != '0' || text[1] != '-')
        return 0;
    memcpy(num, text + 2, len - 2);
    num[len - 2] = 0;
    return sh_parse_int(num, 1, INT64_MAX, &value) == 0 ? (uint64_t)value : 0;
}

/*  Fill one event from a stream entry [id, [field, value, ...]].  */
static bool s_entry_event(const sh_redis_reply_t *entry, sh_event_t *ev)
{
    ev->offset = s_offset_of(sh_redis_elem(entry, 0));
    const sh_redis_reply_t *fields = sh_redis_elem(entry, 1);
    size_t n = sh_redis_count(fields);
    if (!ev->offset || n % 2)
        return false;
    for (size_t i = 0; i + 1 < n; i += 2) {
        size_t nlen = 0, vlen = 0;
        const char *name = sh_redis_str(sh_redis_elem(fields, i), &nlen);
        const char *value = sh_redis_str(sh_redis_elem(fields, i + 1), &vlen);
        if (!name || !value)
            return false;
        sh_str_t v = {value, (uint32_t)vlen};
        if (nlen == 1 && name[0] == 't' && vlen <= SH_EVENT_TYPE_MAX)
            ev->type = v;
        else if (nlen == 1 && name[0] == 'd' && vlen <= SH_EVENT_DATA_MAX)
            ev->data = v;
        else if (nlen == 1 && name[0] == 's' && vlen <= SH_ID_MAX)
            ev->source = v;
        else if (nlen == 2 && memcmp(name, "ts", 2) == 0)
            ev->ts_us = (uint64_t)sh_redis_int(sh_redis_elem(fields, i + 1), 0);
    }
    return ev->type.len > 0;
}

static void s_on_range(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    s_range_call_t *call = arg;
    sh_service_t *service = call->events->service;
    if (status != SH_STATUS_OK || !reply) {
        sh_service_reply(service, &call->request, SH_STATUS_UNAVAILABLE,
                         "event history unavailable", NULL);
        free(call);
        return;
    }
    if (sh_redis_type(reply) != SH_REDIS_ARRAY || sh_redis_count(reply) != S_RANGE_FIELDS) {
        const char *text = sh_redis_str(reply, NULL);
        sh_error("events: history read failed: %.200s", text ? text : "unexpected reply");
        sh_service_reply(service, &call->request, SH_STATUS_INTERNAL, "event history unreadable",
                         NULL);
        free(call);
        return;
    }
    sh_event_range_rep_t *rep = calloc(1, sizeof *rep);
    if (!rep) {
        sh_service_reply(service, &call->request, SH_STATUS_INTERNAL, "out of memory", NULL);
        free(call);
        return;
    }
    size_t len = 0;
    const char *epoch = sh_redis_str(sh_redis_elem(reply, 0), &len);
    rep->epoch = (sh_str_t){epoch ? epoch : "", epoch && len <= SH_ID_MAX ? (uint32_t)len : 0};
    int64_t top = sh_redis_int(sh_redis_elem(reply, 1), 0);
    rep->top = top > 0 ? (uint64_t)top : 0;
    rep->first = s_offset_of(sh_redis_elem(reply, 2));
    const sh_redis_reply_t *entries = sh_redis_elem(reply, 3);
    size_t n = sh_redis_count(entries);
    for (size_t i = 0; i < n && rep->events.count < SH_EVENT_RANGE_MAX; i++) {
        sh_event_t *ev = &rep->events.items[rep->events.count];
        memset(ev, 0, sizeof *ev);
        ev->channel = sh_str(call->channel);
        ev->epoch = rep->epoch;
        if (s_entry_event(sh_redis_elem(entries, i), ev))
            rep->events.count++;
    }
    sh_service_reply(service, &call->request, SH_STATUS_OK, NULL, rep);
    free(rep);
    free(call);
}

static void s_on_event_range(sh_service_t *service, sh_request_t *request, void *arg)
{
    sh_events_t *self = arg;
    sh_event_range_req_t *req = request->body;
    if (req->channel.len == 0) {
        sh_service_reply(service, &request, SH_STATUS_INVALID, "channel: required", NULL);
        return;
    }
    s_range_call_t *call = calloc(1, sizeof *call);
    if (!call) {
        sh_service_reply(service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
        return;
    }
    call->events = self;
    call->request = request;
    sh_str_copy(req->channel, call->channel, sizeof call->channel);
    /*  offsets past INT64_MAX were never given: nothing follows them  */
    uint64_t limit = req->limit > SH_EVENT_RANGE_MAX ? SH_EVENT_RANGE_MAX : req->limit;
    uint64_t after = req->after;
    if (after >= (uint64_t)INT64_MAX) {
        after = (uint64_t)INT64_MAX - 1;
        limit = 0;
    }
    char stream[S_KEY_MAX], meta[S_KEY_MAX], start[S_NUM_MAX], count[S_NUM_MAX];
    s_key(self, stream, call->channel, "");
    s_key(self, meta, call->channel, ":meta");
    snprintf(start, sizeof start, "0-%" PRIu64, after + 1);
    snprintf(count, sizeof count, "%" PRIu64, limit);
    const char *argv[4] = {stream, meta, start, count};
    size_t lens[4] = {strlen(stream), strlen(meta), strlen(start), strlen(count)};
    sh_redis_eval(self->redis, self->range_script,
                  sh_request_remaining_ms(request, S_RANGE_WAIT_MS), s_on_range, call, 2, 4, argv,
                  lens);
}

/*  --- event_canary ----------------------------------------------------------------  */

static void s_on_event_canary(sh_service_t *service, sh_request_t *request, void *arg)
{
    sh_events_t *self = arg;
    sh_event_canary_req_t *req = request->body;
    json_t *data = json_object();
    json_t *token = json_stringn(req->token.ptr ? req->token.ptr : "", req->token.len);
    if (!data || !token || json_object_set_new(data, "token", token) != 0) {
        json_decref(data);
        sh_service_reply(service, &request, SH_STATUS_INVALID, "token: not UTF-8 text", NULL);
        return;
    }
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    bool waiting = self->down || !sh_redis_connected(self->redis);
    int rc = text ? sh_events_publish(self, S_CANARY_CHANNEL, S_CANARY_TYPE, text) : -1;
    free(text);
    if (rc != 0) {
        sh_service_reply(service, &request, SH_STATUS_UNAVAILABLE, "too many events wait", NULL);
        return;
    }
    sh_event_canary_rep_t rep = {.queued = waiting};
    sh_service_reply(service, &request, SH_STATUS_OK, NULL, &rep);
}

/*  --- setup -----------------------------------------------------------------------  */

sh_events_t *sh_events_new(sh_service_t *service, sh_redis_t *redis, const char *prefix,
                           const sh_events_settings_t *settings)
{
    assert(service && redis && settings && settings->bind);
    assert(settings->history > 0 && settings->ttl_s > 0 && settings->pending_max > 0);
    sh_events_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->service = service;
    self->loop = sh_service_loop(service);
    self->redis = redis;
    self->settings = settings;
    snprintf(self->prefix, sizeof self->prefix, "%s", prefix ? prefix : "");
    snprintf(self->source, sizeof self->source, "%s", sh_service_instance(service));
    char bound[SH_ENDPOINT_MAX];
    self->pub = sh_transport_publisher(settings->bind, bound, sizeof bound);
    if (!self->pub) {
        sh_error("events: cannot bind %s: %s", settings->bind, zmq_strerror(errno));
        free(self);
        return NULL;
    }
    if (sh_registry_advertise(settings->advertise, bound, self->endpoint, sizeof self->endpoint)) {
        sh_error("events: advertised endpoint too long");
        sh_transport_close(&self->pub);
        free(self);
        return NULL;
    }
    self->append_script = sh_redis_script(redis, s_append_script);
    self->range_script = sh_redis_script(redis, s_range_script);
    if (self->append_script < 0 || self->range_script < 0) {
        sh_error("events: no room for the history scripts in the Redis client");
        sh_transport_close(&self->pub);
        free(self);
        return NULL;
    }
    sh_metrics_t *m = sh_service_metrics(service);
    self->published_ordered =
        sh_metrics_counter(m, "shoal_events_published_total", "Events published on the PUB socket",
                           "kind=\"ordered\"");
    self->published_latest = sh_metrics_counter(
        m, "shoal_events_published_total", "Events published on the PUB socket", "kind=\"latest\"");
    self->appended = sh_metrics_counter(m, "shoal_events_appended_total",
                                        "Ordered events appended to their channel's history", NULL);
    self->dropped = sh_metrics_counter(m, "shoal_events_dropped_total",
                                       "Events dropped: queue full, too large, or refused", NULL);
    self->append_errors = sh_metrics_counter(m, "shoal_events_append_errors_total",
                                             "History appends that failed (retried)", NULL);
    self->pending_gauge =
        sh_metrics_gauge(m, "shoal_events_pending", "Ordered events waiting for Redis", NULL);
    sh_service_handle(service, SH_OP_event_range, s_on_event_range, self);
    sh_service_handle(service, SH_OP_event_canary, s_on_event_canary, self);
    sh_service_set_events(service, self->endpoint);
    sh_info("events published on %s (advertised %s)", bound, self->endpoint);
    return self;
}

void sh_events_destroy(sh_events_t **self_p)
{
    sh_events_t *self = *self_p;
    if (!self)
        return;
    if (self->in_flight)
        self->in_flight->events = NULL;
    if (self->retry_timer > 0)
        sh_loop_timer_cancel(self->loop, self->retry_timer);
    if (self->pending)
        sh_warn("events: %zu events never reached Redis", self->pending);
    while (self->head)
        free(s_pop(self));
    sh_service_handle(self->service, SH_OP_event_range, NULL, NULL);
    sh_service_handle(self->service, SH_OP_event_canary, NULL, NULL);
    sh_service_set_events(self->service, NULL);
    sh_transport_close(&self->pub);
    free(self);
    *self_p = NULL;
}

const char *sh_events_endpoint(const sh_events_t *self)
{
    return self->endpoint;
}

size_t sh_events_pending(const sh_events_t *self)
{
    return self->pending;
}
