/*  edge_events.c - the edge's channels: events in from every publishing
    instance, out to the WebSocket connections subscribed to them.

    One SUB socket connects to every instance the registry says publishes
    events (and to SHOAL_EVENT_ENDPOINTS). Ordered channels (board,
    item:<id>) carry offsets 1, 2, 3... per epoch: a channel dispatches
    them strictly in order, holds what arrives early, and when a gap does
    not close by itself within SHOAL_EVENTS_GAP_WAIT_MS it reads the
    missing events from the history (event_range on a session instance).
    History that no longer covers a gap is said to the subscribers as
    "subscribed ... recovered: false", never skipped in silence.

    A subscription with `since` is replayed from the history, then from
    the channel's ring of recent events, then goes live - in order and
    without duplicates, because each subscription keeps its own position.

    Latest values (counters: offset 0) and the cluster channel go straight
    to the subscribers; their queues coalesce them.

    Readiness: canary events published through the session and query
    services must come back here within SHOAL_EVENTS_READY_TIMEOUT_MS.
*/
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"
#include "sh_log.h"
#include "sh_util.h"

#define S_BUCKETS         1024
#define S_RING            128  /* recent events a channel keeps for catching up */
#define S_HELD_MAX        1024 /* early events a channel holds while a gap is open */
#define S_PUBLISHERS_MAX  256
#define S_RANGE_MS        2000 /* deadline of one history read */
#define S_RETRY_MAX_MS    2000
#define S_SUB_HWM         100000
#define S_CANARY_SERVICES 2

typedef struct {
    uint64_t offset;
    edge_msg_t *msg;
} s_slot_t;

typedef struct s_channel_t s_channel_t;
typedef struct s_sub_t s_sub_t;

struct s_channel_t {
    edge_events_t *events;
    char name[SH_CHANNEL_MAX + 1];
    s_channel_t *next; /* in its bucket */
    bool ordered;
    char epoch[SH_ID_MAX + 1]; /* "" until known */
    uint64_t last;             /* last offset dispatched; 0 until known */
    s_slot_t ring[S_RING];
    int ring_start, ring_len;
    s_slot_t *held; /* early events, by offset */
    int held_len, held_cap;
    int64_t gap_at_ms; /* when the open gap was seen; 0 for none */
    uint64_t fetch;    /* pool handle of the history read filling the gap */
    int failures;
    int64_t retry_at_ms;
    s_sub_t **subs;
    int nsubs, subs_cap;
};

struct s_sub_t {
    edge_events_t *events;
    s_channel_t *channel;
    edge_ws_t *ws;
    int index; /* in channel->subs */
    bool active;
    uint64_t pos; /* last offset the client has */
    char epoch[SH_ID_MAX + 1];
    bool resume; /* `since` was given */
    char since_epoch[SH_ID_MAX + 1];
    uint64_t since;
    uint64_t call; /* pool handle of a history read for it */
};

struct edge_events_t {
    edge_t *edge;
    char members[S_PUBLISHERS_MAX][SH_NAME_MAX + SH_ID_MAX + 2]; /* "service/instance" known */
    int nmembers;
    void *sub;
    s_channel_t *buckets[S_BUCKETS];
    char publishers[S_PUBLISHERS_MAX][SH_ENDPOINT_MAX];
    int npublishers;
    uint64_t canary_seq;
    int64_t canary_sent_ms;
    int64_t canary_seen_ms[S_CANARY_SERVICES];
    int64_t started_ms;
    uint64_t *received, *bad, *gaps, *recovered, *lost, *replayed, *dupes;
    int64_t *canary_age_ms, *channels;
};

static const char *s_canary_service[S_CANARY_SERVICES] = {"session", "query"};

/*  --- messages -----------------------------------------------------------------------  */

edge_msg_t *edge_msg_new(const char *text, size_t len, uint64_t key)
{
    edge_msg_t *msg = malloc(sizeof *msg + EDGE_WS_PRE + len);
    if (!msg)
        return NULL;
    msg->refs = 1;
    msg->key = key;
    msg->len = len;
    memcpy(msg->bytes + EDGE_WS_PRE, text, len);
    return msg;
}

void edge_msg_ref(edge_msg_t *msg)
{
    msg->refs++;
}

void edge_msg_unref(edge_msg_t *msg)
{
    if (msg && --msg->refs == 0)
        free(msg);
}

static uint64_t s_hash(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const char *p = a; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ '|') * 1099511628211ULL;
    for (const char *p = b; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h ? h : 1;
}

/*  The name browsers know a channel by.  */
static const char *s_public_name(const char *channel)
{
    return strncmp(channel, "s:", 2) == 0 ? "me" : channel;
}

/*  {"type":"event",...} for one event; NULL when its data is not a JSON
    object or memory ran out (counted by the caller).  */
static edge_msg_t *s_event_msg(const sh_event_t *ev, uint64_t key)
{
    json_error_t error;
    json_t *data = ev->data.len ? json_loadb(ev->data.ptr, ev->data.len, 0, &error) : NULL;
    bool object = data && json_is_object(data);
    json_decref(data);
    if (!object)
        return NULL;
    char channel[SH_CHANNEL_MAX + 1], type[SH_EVENT_TYPE_MAX + 1];
    sh_str_copy(ev->channel, channel, sizeof channel);
    sh_str_copy(ev->type, type, sizeof type);
    sh_buf_t buf = {0};
    int rc = sh_buf_printf(&buf, "{\"type\":\"event\",\"channel\":");
    const char *name = s_public_name(channel);
    rc |= edge_json_str(&buf, name, strlen(name));
    rc |= sh_buf_printf(&buf, ",\"event\":");
    rc |= edge_json_str(&buf, type, strlen(type));
    rc |= sh_buf_printf(&buf, ",\"data\":");
    rc |= sh_buf_append(&buf, ev->data.ptr, ev->data.len);
    if (ev->offset) {
        rc |= sh_buf_printf(&buf, ",\"epoch\":");
        rc |= edge_json_str(&buf, ev->epoch.ptr ? ev->epoch.ptr : "", ev->epoch.len);
        rc |= sh_buf_printf(&buf, ",\"offset\":%llu", (unsigned long long)ev->offset);
    }
    rc |= sh_buf_printf(&buf, ",\"ts\":%llu}", (unsigned long long)ev->ts_us);
    edge_msg_t *msg = rc ? NULL : edge_msg_new(buf.data, buf.len, key);
    sh_buf_free(&buf);
    return msg;
}

static void s_send_error(edge_ws_t *ws, const char *code, const char *message, const char *channel)
{
    json_t *json = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message);
    if (json && channel)
        json_object_set_new(json, "channel", json_string(channel));
    edge_ws_send_json(ws, json);
}

/*  subscribed: recovered is 1 (true), 0 (false) or -1 (absent).  */
static void s_send_subscribed(s_sub_t *sub, int recovered)
{
    const char *name = s_public_name(sub->channel->name);
    json_t *json = json_pack("{s:s, s:s}", "type", "subscribed", "channel", name);
    if (!json)
        return;
    if (sub->channel->ordered) {
        json_object_set_new(json, "epoch", json_string(sub->epoch));
        json_object_set_new(json, "offset", json_integer((json_int_t)sub->pos));
    }
    if (recovered >= 0)
        json_object_set_new(json, "recovered", json_boolean(recovered));
    edge_ws_send_json(sub->ws, json);
}

/*  --- channels -------------------------------------------------------------------------  */

static bool s_ordered(const char *name)
{
    return strcmp(name, "board") == 0 || strncmp(name, "item:", 5) == 0;
}

static s_channel_t **s_slot_of(edge_events_t *self, const char *name)
{
    s_channel_t **link = &self->buckets[s_hash(name, "") % S_BUCKETS];
    while (*link && strcmp((*link)->name, name) != 0)
        link = &(*link)->next;
    return link;
}

static s_channel_t *s_channel_find(edge_events_t *self, const char *name)
{
    return *s_slot_of(self, name);
}

static s_channel_t *s_channel_get(edge_events_t *self, const char *name)
{
    s_channel_t **link = s_slot_of(self, name);
    if (*link)
        return *link;
    s_channel_t *ch = calloc(1, sizeof *ch);
    if (!ch)
        return NULL;
    ch->events = self;
    snprintf(ch->name, sizeof ch->name, "%s", name);
    ch->ordered = s_ordered(name);
    *link = ch;
    (*self->channels)++;
    return ch;
}

static void s_ring_clear(s_channel_t *ch)
{
    for (int i = 0; i < ch->ring_len; i++)
        edge_msg_unref(ch->ring[(ch->ring_start + i) % S_RING].msg);
    ch->ring_start = ch->ring_len = 0;
}

static void s_held_clear(s_channel_t *ch)
{
    for (int i = 0; i < ch->held_len; i++)
        edge_msg_unref(ch->held[i].msg);
    ch->held_len = 0;
    ch->gap_at_ms = 0;
}

/*  Free a channel nobody listens to any more (after its history read).  */
static void s_channel_gc(edge_events_t *self, s_channel_t *ch)
{
    if (ch->nsubs > 0 || ch->fetch)
        return;
    s_channel_t **link = s_slot_of(self, ch->name);
    *link = ch->next;
    s_ring_clear(ch);
    s_held_clear(ch);
    free(ch->held);
    free(ch->subs);
    free(ch);
    (*self->channels)--;
}

/*  The client of sub gets msg (offset 0: a latest value).  */
static void s_deliver(s_sub_t *sub, uint64_t offset, edge_msg_t *msg)
{
    if (offset) {
        if (offset <= sub->pos)
            return;
        sub->pos = offset;
    }
    edge_ws_send(sub->ws, msg);
}

/*  The next event of an ordered channel, in order: to its ring and to
    every active subscription.  */
static void s_dispatch(s_channel_t *ch, uint64_t offset, edge_msg_t *msg)
{
    if (ch->ring_len == S_RING) {
        edge_msg_unref(ch->ring[ch->ring_start].msg);
        ch->ring_start = (ch->ring_start + 1) % S_RING;
        ch->ring_len--;
    }
    edge_msg_ref(msg);
    ch->ring[(ch->ring_start + ch->ring_len) % S_RING] = (s_slot_t){offset, msg};
    ch->ring_len++;
    ch->last = offset;
    for (int i = 0; i < ch->nsubs; i++)
        if (ch->subs[i]->active)
            s_deliver(ch->subs[i], offset, msg);
}

/*  The channel's history was lost or does not reach back far enough:
    its subscribers resume at (epoch, offset) and must refetch.  */
static void s_channel_skip(edge_events_t *self, s_channel_t *ch, const char *epoch, uint64_t offset)
{
    if (offset > ch->last)
        *self->lost += offset - ch->last;
    if (epoch != ch->epoch)
        snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
    ch->last = offset;
    s_ring_clear(ch);
    for (int i = 0; i < ch->nsubs; i++) {
        s_sub_t *sub = ch->subs[i];
        if (!sub->active)
            continue;
        snprintf(sub->epoch, sizeof sub->epoch, "%s", epoch);
        sub->pos = offset;
        s_send_subscribed(sub, 0);
    }
}

/*  Dispatch the held events that now follow in order.  */
static void s_flush_held(s_channel_t *ch)
{
    int n = 0;
    while (n < ch->held_len && ch->held[n].offset <= ch->last + 1) {
        if (ch->held[n].offset == ch->last + 1)
            s_dispatch(ch, ch->held[n].offset, ch->held[n].msg);
        edge_msg_unref(ch->held[n].msg);
        n++;
    }
    memmove(ch->held, ch->held + n, (size_t)(ch->held_len - n) * sizeof *ch->held);
    ch->held_len -= n;
    if (ch->held_len == 0)
        ch->gap_at_ms = 0;
}

static void s_hold(edge_events_t *self, s_channel_t *ch, uint64_t offset, edge_msg_t *msg)
{
    int at = ch->held_len;
    while (at > 0 && ch->held[at - 1].offset > offset)
        at--;
    if (at > 0 && ch->held[at - 1].offset == offset) {
        (*self->dupes)++;
        return;
    }
    if (ch->held_len == ch->held_cap) {
        int cap = ch->held_cap ? ch->held_cap * 2 : 16;
        s_slot_t *held = cap <= S_HELD_MAX ? realloc(ch->held, (size_t)cap * sizeof *held) : NULL;
        if (!held) {
            /*  the gap stays open too long: what is missing is lost to us  */
            sh_warn("channel %s: %d events wait for offset %llu; skipping the gap", ch->name,
                    ch->held_len, (unsigned long long)(ch->last + 1));
            s_channel_skip(self, ch, ch->epoch, ch->held[0].offset - 1);
            s_flush_held(ch);
            if (offset == ch->last + 1) {
                s_dispatch(ch, offset, msg);
                return;
            }
            if (ch->held_len == ch->held_cap)
                return;
        } else {
            ch->held = held;
            ch->held_cap = cap;
        }
    }
    memmove(ch->held + at + 1, ch->held + at, (size_t)(ch->held_len - at) * sizeof *ch->held);
    edge_msg_ref(msg);
    ch->held[at] = (s_slot_t){offset, msg};
    ch->held_len++;
    if (!ch->gap_at_ms) {
        ch->gap_at_ms = sh_clock_mono_ms();
        (*self->gaps)++;
    }
}

/*  One ordered event from a publisher or from the history.  */
static void s_on_ordered(edge_events_t *self, s_channel_t *ch, const char *epoch, uint64_t offset,
                         edge_msg_t *msg)
{
    if (ch->epoch[0] && strcmp(ch->epoch, epoch) != 0) {
        /*  the history was lost and begun again  */
        sh_warn("channel %s: epoch %s replaced by %s", ch->name, ch->epoch, epoch);
        s_held_clear(ch);
        s_channel_skip(self, ch, epoch, offset - 1);
    }
    if (!ch->epoch[0]) {
        snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
        if (!ch->last)
            ch->last = offset - 1;
    }
    if (offset <= ch->last) {
        (*self->dupes)++;
        return;
    }
    if (offset == ch->last + 1 && ch->held_len == 0) {
        s_dispatch(ch, offset, msg);
        return;
    }
    s_hold(self, ch, offset, msg);
    s_flush_held(ch);
}

/*  --- reading the history ----------------------------------------------------------------  */

static uint64_t s_range(edge_events_t *self, const char *channel, uint64_t after, uint64_t limit,
                        sh_reply_fn *fn, void *arg)
{
    sh_event_range_req_t req = {.channel = sh_str(channel), .after = after, .limit = limit};
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + S_RANGE_MS};
    return sh_pool_send(self->edge->sessions, SH_OP_event_range, &req, &opts, fn, arg);
}

static void s_gap_fetch(edge_events_t *self, s_channel_t *ch);

static void s_on_gap_range(void *arg, const sh_reply_t *reply)
{
    s_channel_t *ch = arg;
    edge_events_t *self = ch->events;
    ch->fetch = 0;
    if (!ch->nsubs) {
        /*  every subscriber left meanwhile: nobody needs the gap filled  */
        s_channel_gc(self, ch);
        return;
    }
    const sh_event_range_rep_t *rep = reply->body;
    if (reply->status != SH_STATUS_OK || !rep) {
        ch->failures++;
        int64_t wait = 100LL << (ch->failures < 5 ? ch->failures : 5);
        ch->retry_at_ms = sh_clock_mono_ms() + (wait < S_RETRY_MAX_MS ? wait : S_RETRY_MAX_MS);
        s_channel_gc(self, ch);
        return;
    }
    ch->failures = 0;
    char epoch[SH_ID_MAX + 1];
    sh_str_copy(rep->epoch, epoch, sizeof epoch);
    if (ch->held_len == 0) {
        s_channel_gc(self, ch);
        return;
    }
    if (strcmp(epoch, ch->epoch) != 0 || rep->first == 0 || rep->first > ch->last + 1) {
        /*  the history no longer holds what is missing  */
        s_channel_skip(self, ch, ch->epoch, ch->held[0].offset - 1);
        s_flush_held(ch);
        return;
    }
    for (size_t i = 0; i < rep->events.count; i++) {
        const sh_event_t *ev = &rep->events.items[i];
        edge_msg_t *msg = s_event_msg(ev, 0);
        if (!msg) {
            (*self->bad)++;
            continue;
        }
        if (ev->offset == ch->last + 1) {
            s_dispatch(ch, ev->offset, msg);
            (*self->recovered)++;
        }
        edge_msg_unref(msg);
    }
    s_flush_held(ch);
    if (ch->held_len)
        s_gap_fetch(self, ch); /* more than one read's worth was missing */
}

static void s_gap_fetch(edge_events_t *self, s_channel_t *ch)
{
    uint64_t missing = ch->held[0].offset - ch->last - 1;
    ch->fetch =
        s_range(self, ch->name, ch->last,
                missing < SH_EVENT_RANGE_MAX ? missing : SH_EVENT_RANGE_MAX, s_on_gap_range, ch);
    sh_pool_drain(self->edge->sessions);
}

/*  --- subscriptions ------------------------------------------------------------------------  */

static void s_sub_range(s_sub_t *sub, uint64_t after, uint64_t limit);

/*  The subscription is caught up: live from here.  */
static void s_sub_activate(s_sub_t *sub, int recovered)
{
    sub->active = true;
    s_send_subscribed(sub, recovered);
}

/*  Replay the channel's ring after sub->pos; false when the ring does not
    reach back that far (read the history again).  */
static bool s_sub_catch_up(s_sub_t *sub)
{
    s_channel_t *ch = sub->channel;
    if (ch->last <= sub->pos)
        return true;
    if (!ch->ring_len || ch->ring[ch->ring_start].offset > sub->pos + 1)
        return false;
    for (int i = 0; i < ch->ring_len; i++) {
        s_slot_t *slot = &ch->ring[(ch->ring_start + i) % S_RING];
        s_deliver(sub, slot->offset, slot->msg);
    }
    return true;
}

static void s_on_sub_range(void *arg, const sh_reply_t *reply)
{
    s_sub_t *sub = arg;
    s_channel_t *ch = sub->channel;
    edge_events_t *self = sub->events;
    sub->call = 0;
    const sh_event_range_rep_t *rep = reply->body;
    if (reply->status != SH_STATUS_OK || !rep) {
        /*  no history now: the client starts from what the edge knows and refetches  */
        snprintf(sub->epoch, sizeof sub->epoch, "%s", ch->epoch);
        sub->pos = ch->last;
        s_sub_activate(sub, sub->resume ? 0 : -1);
        return;
    }
    char epoch[SH_ID_MAX + 1];
    sh_str_copy(rep->epoch, epoch, sizeof epoch);
    if (epoch[0] && strcmp(epoch, ch->epoch) != 0) {
        if (ch->epoch[0])
            s_channel_skip(self, ch, epoch, rep->top > ch->last ? rep->top : ch->last);
        else {
            snprintf(ch->epoch, sizeof ch->epoch, "%s", epoch);
            if (!ch->last)
                ch->last = rep->top;
        }
    }
    if (!sub->active && !sub->epoch[0])
        snprintf(sub->epoch, sizeof sub->epoch, "%s", epoch);
    if (!sub->resume) {
        /*  a fresh subscription: the client loads the rest over REST  */
        sub->pos = rep->top > ch->last ? rep->top : ch->last;
        s_sub_activate(sub, -1);
        return;
    }
    bool covered = strcmp(epoch, sub->since_epoch) == 0 && sub->since <= rep->top &&
                   (sub->pos >= rep->top || (rep->first && rep->first <= sub->pos + 1));
    if (!covered) {
        snprintf(sub->epoch, sizeof sub->epoch, "%s", epoch);
        sub->pos = rep->top > ch->last ? rep->top : ch->last;
        s_sub_activate(sub, 0);
        return;
    }
    for (size_t i = 0; i < rep->events.count; i++) {
        const sh_event_t *ev = &rep->events.items[i];
        if (ev->offset != sub->pos + 1)
            continue;
        edge_msg_t *msg = s_event_msg(ev, 0);
        if (!msg) {
            (*self->bad)++;
            continue;
        }
        s_deliver(sub, ev->offset, msg);
        (*self->replayed)++;
        edge_msg_unref(msg);
    }
    if (sub->pos < rep->top && rep->events.count > 0) {
        s_sub_range(sub, sub->pos, SH_EVENT_RANGE_MAX);
        return;
    }
    if (!s_sub_catch_up(sub)) {
        if (sub->pos < rep->top || rep->events.count > 0) {
            s_sub_range(sub, sub->pos, SH_EVENT_RANGE_MAX);
            return;
        }
        /*  the history ends before what the edge has seen: refetch  */
        sub->pos = ch->last;
        s_sub_activate(sub, 0);
        return;
    }
    s_sub_activate(sub, 1);
}

static void s_sub_range(s_sub_t *sub, uint64_t after, uint64_t limit)
{
    sub->call = s_range(sub->events, sub->channel->name, after, limit, s_on_sub_range, sub);
    sh_pool_drain(sub->events->edge->sessions);
}

static void s_sub_free(edge_events_t *self, s_sub_t *sub)
{
    s_channel_t *ch = sub->channel;
    if (sub->call)
        sh_pool_cancel(self->edge->sessions, sub->call);
    ch->nsubs--;
    if (sub->index != ch->nsubs) {
        ch->subs[sub->index] = ch->subs[ch->nsubs];
        ch->subs[sub->index]->index = sub->index;
    }
    free(sub);
    s_channel_gc(self, ch);
}

/*  The connection's subscription list: (array, count).  */
static s_sub_t **s_subs(edge_ws_t *ws, int **count)
{
    return (s_sub_t **)edge_ws_subs(ws, count);
}

static int s_sub_find(edge_ws_t *ws, s_channel_t *ch)
{
    int *count;
    s_sub_t **subs = s_subs(ws, &count);
    for (int i = 0; i < *count; i++)
        if (subs[i]->channel == ch)
            return i;
    return -1;
}

static void s_sub_remove(edge_events_t *self, edge_ws_t *ws, int i)
{
    int *count;
    s_sub_t **subs = s_subs(ws, &count);
    s_sub_free(self, subs[i]);
    subs[i] = subs[--*count];
}

/*  The internal channel a client's name stands for, or NULL (unknown).  */
static const char *s_channel_name(edge_ws_t *ws, const char *name, char *out, size_t size)
{
    uint64_t id;
    if (strcmp(name, "board") == 0 || strcmp(name, "cluster") == 0)
        snprintf(out, size, "%s", name);
    else if (strcmp(name, "me") == 0)
        snprintf(out, size, "%s", edge_ws_session_channel(ws));
    else if (strncmp(name, "item:", 5) == 0 && edge_parse_id(name + 5, &id) == 0)
        snprintf(out, size, "item:%llu", (unsigned long long)id);
    else
        return NULL;
    return out;
}

static void s_subscribe(edge_events_t *self, edge_ws_t *ws, json_t *json)
{
    const char *name = json_string_value(json_object_get(json, "channel"));
    json_t *since = json_object_get(json, "since");
    char internal[SH_CHANNEL_MAX + 1];
    if (!name) {
        s_send_error(ws, "invalid", "subscribe needs a channel", NULL);
        return;
    }
    if (!s_channel_name(ws, name, internal, sizeof internal)) {
        s_send_error(ws, "unknown_channel", "channels are board, item:<id>, cluster and me", name);
        return;
    }
    const char *since_epoch = NULL;
    json_int_t since_offset = 0;
    if (since && !json_is_null(since)) {
        since_epoch = json_string_value(json_object_get(since, "epoch"));
        json_t *offset = json_object_get(since, "offset");
        since_offset = json_is_integer(offset) ? json_integer_value(offset) : -1;
        if (!since_epoch || strlen(since_epoch) > SH_ID_MAX || since_offset < 0) {
            s_send_error(ws, "invalid", "since needs an epoch and an offset >= 0", name);
            return;
        }
    }
    /*  subscribing again starts over (a client re-syncing a channel); the
        channel may go with its last subscription, so look it up after  */
    s_channel_t *ch = s_channel_find(self, internal);
    int existing = ch ? s_sub_find(ws, ch) : -1;
    if (existing >= 0)
        s_sub_remove(self, ws, existing);
    ch = s_channel_get(self, internal);
    if (!ch) {
        s_send_error(ws, "unavailable", "out of memory", name);
        return;
    }
    int *count;
    s_sub_t **subs = s_subs(ws, &count);
    s_sub_t *sub = NULL;
    if (*count >= self->edge->config->ws_max_channels ||
        (ch->nsubs == ch->subs_cap && ch->subs_cap >= S_SUB_HWM)) {
        s_send_error(ws, "too_many_channels", "too many channels on this connection", name);
        s_channel_gc(self, ch);
        return;
    }
    if (ch->nsubs == ch->subs_cap) {
        int cap = ch->subs_cap ? ch->subs_cap * 2 : 8;
        s_sub_t **grown = realloc(ch->subs, (size_t)cap * sizeof *grown);
        if (!grown) {
            s_send_error(ws, "unavailable", "out of memory", name);
            s_channel_gc(self, ch);
            return;
        }
        ch->subs = grown;
        ch->subs_cap = cap;
    }
    sub = calloc(1, sizeof *sub);
    if (!sub) {
        s_send_error(ws, "unavailable", "out of memory", name);
        s_channel_gc(self, ch);
        return;
    }
    sub->events = self;
    sub->channel = ch;
    sub->ws = ws;
    sub->index = ch->nsubs;
    ch->subs[ch->nsubs++] = sub;
    subs[(*count)++] = sub;
    if (!ch->ordered) {
        s_sub_activate(sub, -1);
        return;
    }
    if (since_epoch) {
        sub->resume = true;
        snprintf(sub->since_epoch, sizeof sub->since_epoch, "%s", since_epoch);
        snprintf(sub->epoch, sizeof sub->epoch, "%s", since_epoch);
        sub->since = sub->pos = (uint64_t)since_offset;
        s_sub_range(sub, sub->pos, SH_EVENT_RANGE_MAX);
    } else
        s_sub_range(sub, 0, 0);
}

void edge_events_message(edge_events_t *self, edge_ws_t *ws, json_t *json)
{
    const char *type = json_string_value(json_object_get(json, "type"));
    if (!type) {
        s_send_error(ws, "invalid", "a message is an object with a type", NULL);
    } else if (strcmp(type, "ping") == 0) {
        edge_ws_send_text(ws, "{\"type\":\"pong\"}", 15);
    } else if (strcmp(type, "subscribe") == 0) {
        s_subscribe(self, ws, json);
    } else if (strcmp(type, "unsubscribe") == 0) {
        const char *name = json_string_value(json_object_get(json, "channel"));
        char internal[SH_CHANNEL_MAX + 1];
        s_channel_t *ch = name && s_channel_name(ws, name, internal, sizeof internal)
                              ? s_channel_find(self, internal)
                              : NULL;
        int i = ch ? s_sub_find(ws, ch) : -1;
        if (i < 0) {
            s_send_error(ws, "invalid", "not subscribed", name);
            return;
        }
        s_sub_remove(self, ws, i);
        edge_ws_send_json(ws, json_pack("{s:s, s:s}", "type", "unsubscribed", "channel", name));
    } else
        s_send_error(ws, "invalid", "types are subscribe, unsubscribe and ping", NULL);
}

void edge_events_forget(edge_events_t *self, edge_ws_t *ws)
{
    int *count;
    s_subs(ws, &count);
    while (*count > 0)
        s_sub_remove(self, ws, *count - 1);
}

/*  --- events in ----------------------------------------------------------------------------  */

static void s_on_canary(edge_events_t *self, const sh_event_t *ev)
{
    json_error_t error;
    json_t *data = json_loadb(ev->data.ptr ? ev->data.ptr : "", ev->data.len, 0, &error);
    const char *token = json_string_value(json_object_get(data, "token"));
    const char *me = self->edge->config->base.instance;
    size_t me_len = strlen(me);
    if (token && strncmp(token, me, me_len) == 0 && token[me_len] == '.')
        for (int i = 0; i < S_CANARY_SERVICES; i++) {
            size_t n = strlen(s_canary_service[i]);
            if (strncmp(token + me_len + 1, s_canary_service[i], n) == 0 &&
                token[me_len + 1 + n] == '.')
                self->canary_seen_ms[i] = sh_clock_mono_ms();
        }
    json_decref(data);
}

static void s_on_event(edge_events_t *self, const sh_event_t *ev)
{
    char name[SH_CHANNEL_MAX + 1];
    sh_str_copy(ev->channel, name, sizeof name);
    if (strcmp(name, "canary") == 0) {
        s_on_canary(self, ev);
        return;
    }
    char type[SH_EVENT_TYPE_MAX + 1];
    sh_str_copy(ev->type, type, sizeof type);
    if (strncmp(name, "s:", 2) == 0 && strcmp(type, "ended") == 0) {
        /*  logged out (on any edge): its live connections here end too  */
        edge_ws_close_session(name);
        return;
    }
    s_channel_t *ch = s_channel_find(self, name);
    if (!ch)
        return; /* nobody here listens */
    if (ev->offset && !ch->ordered) {
        (*self->bad)++;
        return;
    }
    edge_msg_t *msg = s_event_msg(ev, ev->offset ? 0 : s_hash(name, type));
    if (!msg) {
        (*self->bad)++;
        return;
    }
    if (ev->offset) {
        char epoch[SH_ID_MAX + 1];
        sh_str_copy(ev->epoch, epoch, sizeof epoch);
        s_on_ordered(self, ch, epoch, ev->offset, msg);
    } else
        for (int i = 0; i < ch->nsubs; i++)
            if (ch->subs[i]->active)
                s_deliver(ch->subs[i], 0, msg);
    edge_msg_unref(msg);
}

void edge_events_drain(edge_events_t *self)
{
    while (sh_transport_readable(self->sub)) {
        sh_frames_t frames;
        if (sh_frames_recv(self->sub, &frames) != 0)
            break;
        sh_event_t *ev = calloc(1, sizeof *ev);
        if (ev && sh_frames_event(&frames, SH_OP_event, &sh_event_req_codec, ev) == 0) {
            (*self->received)++;
            s_on_event(self, ev);
        } else
            (*self->bad)++;
        free(ev);
        sh_frames_close(&frames);
    }
}

/*  --- publishers and the cluster channel ------------------------------------------------  */

static int s_publisher_find(edge_events_t *self, const char *endpoint)
{
    for (int i = 0; i < self->npublishers; i++)
        if (strcmp(self->publishers[i], endpoint) == 0)
            return i;
    return -1;
}

static void s_connect(edge_events_t *self, const char *endpoint)
{
    if (s_publisher_find(self, endpoint) >= 0 || self->npublishers == S_PUBLISHERS_MAX)
        return;
    if (zmq_connect(self->sub, endpoint) != 0) {
        sh_warn("cannot subscribe to events at %s: %s", endpoint, zmq_strerror(zmq_errno()));
        return;
    }
    snprintf(self->publishers[self->npublishers++], SH_ENDPOINT_MAX, "%s", endpoint);
    sh_info("subscribed to events at %s", endpoint);
}

static void s_disconnect(edge_events_t *self, const char *endpoint)
{
    int i = s_publisher_find(self, endpoint);
    if (i < 0)
        return;
    zmq_disconnect(self->sub, endpoint);
    self->npublishers--;
    if (i != self->npublishers)
        memcpy(self->publishers[i], self->publishers[self->npublishers], SH_ENDPOINT_MAX);
    sh_info("unsubscribed from events at %s", endpoint);
}

/*  joined (first seen alive), left (dead: the registry's view drops it)
    or changed; the edge remembers which instances it has seen.  */
static const char *s_member_change(edge_events_t *self, const char *service, const char *instance,
                                   uint64_t state)
{
    char name[SH_NAME_MAX + SH_ID_MAX + 2];
    snprintf(name, sizeof name, "%s/%s", service, instance);
    int i = 0;
    while (i < self->nmembers && strcmp(self->members[i], name) != 0)
        i++;
    bool known = i < self->nmembers;
    if (state == SH_MEMBER_DEAD) {
        if (known)
            memcpy(self->members[i], self->members[--self->nmembers], sizeof self->members[i]);
        return "left";
    }
    if (known)
        return "changed";
    if (self->nmembers < S_PUBLISHERS_MAX)
        memcpy(self->members[self->nmembers++], name, sizeof name);
    return "joined";
}

void edge_events_member(edge_events_t *self, const sh_member_t *member)
{
    char endpoint[SH_ENDPOINT_MAX], service[SH_NAME_MAX + 1], instance[SH_ID_MAX + 1];
    sh_str_copy(member->events, endpoint, sizeof endpoint);
    sh_str_copy(member->service, service, sizeof service);
    sh_str_copy(member->instance, instance, sizeof instance);
    if (endpoint[0] && strcmp(service, "health") != 0) {
        if (member->state == SH_MEMBER_DEAD)
            s_disconnect(self, endpoint);
        else
            s_connect(self, endpoint);
        edge_events_drain(self);
    }
    const char *change = s_member_change(self, service, instance, member->state);
    s_channel_t *ch = s_channel_find(self, "cluster");
    if (!ch || !ch->nsubs)
        return;
    json_t *data = json_pack("{s:s, s:s, s:s, s:s%, s:s}", "service", service, "instance", instance,
                             "state", sh_member_state_word(member->state), "endpoint",
                             member->endpoint.ptr ? member->endpoint.ptr : "",
                             (size_t)member->endpoint.len, "change", change);
    json_t *json = data ? json_pack("{s:s, s:s, s:s, s:o}", "type", "event", "channel", "cluster",
                                    "event", "member", "data", data)
                        : NULL;
    char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    edge_msg_t *msg = text ? edge_msg_new(text, strlen(text), s_hash("cluster", instance)) : NULL;
    free(text);
    if (!msg)
        return;
    for (int i = 0; i < ch->nsubs; i++)
        if (ch->subs[i]->active)
            s_deliver(ch->subs[i], 0, msg);
    edge_msg_unref(msg);
}

/*  --- canaries and gaps --------------------------------------------------------------------  */

void edge_events_tick(edge_events_t *self)
{
    edge_t *edge = self->edge;
    int64_t now = sh_clock_mono_ms();
    if (now - self->canary_sent_ms >= edge->config->events_canary_ms) {
        self->canary_sent_ms = now;
        sh_pool_t *pools[S_CANARY_SERVICES] = {edge->sessions, edge->queries};
        for (int i = 0; i < S_CANARY_SERVICES; i++) {
            if (!sh_pool_usable(pools[i]))
                continue;
            char token[SH_ID_MAX + 1];
            snprintf(token, sizeof token, "%s.%s.%llu", edge->config->base.instance,
                     s_canary_service[i], (unsigned long long)++self->canary_seq);
            sh_event_canary_req_t req = {.token = sh_str(token)};
            sh_call_opts_t opts = {.deadline_ms =
                                       sh_clock_wall_ms() + edge->config->events_canary_ms};
            /*  to every instance: one that just died must not look like broken delivery  */
            sh_pool_broadcast(pools[i], SH_OP_event_canary, &req, &opts);
            sh_pool_drain(pools[i]);
        }
        int64_t oldest = 0;
        for (int i = 0; i < S_CANARY_SERVICES; i++)
            if (sh_pool_usable(pools[i])) {
                int64_t age =
                    now - (self->canary_seen_ms[i] ? self->canary_seen_ms[i] : self->started_ms);
                if (age > oldest)
                    oldest = age;
            }
        *self->canary_age_ms = oldest;
    }
    for (int b = 0; b < S_BUCKETS; b++)
        for (s_channel_t *ch = self->buckets[b]; ch; ch = ch->next)
            if (ch->held_len && !ch->fetch && now >= ch->retry_at_ms &&
                now - ch->gap_at_ms >= edge->config->events_gap_wait_ms)
                s_gap_fetch(self, ch);
}

const char *edge_events_unready(edge_events_t *self)
{
    static char why[128];
    edge_t *edge = self->edge;
    int64_t now = sh_clock_mono_ms();
    sh_pool_t *pools[S_CANARY_SERVICES] = {edge->sessions, edge->queries};
    for (int i = 0; i < S_CANARY_SERVICES; i++) {
        if (!sh_pool_usable(pools[i]))
            continue;
        int64_t seen = self->canary_seen_ms[i];
        if (!seen && now - self->started_ms < edge->config->events_ready_timeout_ms)
            continue; /* starting: the first canary is on its way */
        if (!seen || now - seen > edge->config->events_ready_timeout_ms) {
            snprintf(why, sizeof why, "events: no canary back through %s for %lld ms",
                     s_canary_service[i], (long long)(now - (seen ? seen : self->started_ms)));
            return why;
        }
    }
    return NULL;
}

/*  --- life ----------------------------------------------------------------------------------  */

edge_events_t *edge_events_new(edge_t *edge)
{
    edge_events_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->edge = edge;
    self->started_ms = sh_clock_mono_ms();
    self->sub = sh_transport_subscriber("");
    if (!self->sub) {
        sh_error("cannot make the events SUB socket: %s", zmq_strerror(zmq_errno()));
        edge_events_destroy(&self);
        return NULL;
    }
    sh_metrics_t *m = edge->metrics;
    self->received = sh_metrics_counter(m, "shoal_events_received_total",
                                        "events received from publishers", NULL);
    self->bad = sh_metrics_counter(m, "shoal_events_bad_total",
                                   "events dropped: malformed or not JSON", NULL);
    self->gaps =
        sh_metrics_counter(m, "shoal_events_gaps_total", "gaps seen in ordered channels", NULL);
    self->recovered = sh_metrics_counter(m, "shoal_events_recovered_total",
                                         "events read from the history to fill gaps", NULL);
    self->lost = sh_metrics_counter(m, "shoal_events_lost_total",
                                    "offsets skipped: the history no longer had them", NULL);
    self->replayed = sh_metrics_counter(m, "shoal_events_replayed_total",
                                        "events replayed to resuming clients", NULL);
    self->dupes = sh_metrics_counter(m, "shoal_events_duplicate_total",
                                     "events already dispatched, dropped", NULL);
    self->canary_age_ms = sh_metrics_gauge(m, "shoal_events_canary_age_ms",
                                           "age of the oldest canary that came back", NULL);
    self->channels =
        sh_metrics_gauge(m, "shoal_events_channels", "channels with subscribers", NULL);
    if (!self->received || !self->bad || !self->gaps || !self->recovered || !self->lost ||
        !self->replayed || !self->dupes || !self->canary_age_ms || !self->channels) {
        edge_events_destroy(&self);
        return NULL;
    }
    char list[4096];
    snprintf(list, sizeof list, "%s", edge->config->event_endpoints);
    char *save = NULL;
    for (char *ep = strtok_r(list, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        while (*ep == ' ')
            ep++;
        if (*ep)
            s_connect(self, ep);
    }
    return self;
}

void edge_events_destroy(edge_events_t **self_p)
{
    edge_events_t *self = *self_p;
    if (!self)
        return;
    for (int b = 0; b < S_BUCKETS; b++)
        while (self->buckets[b]) {
            s_channel_t *ch = self->buckets[b];
            self->buckets[b] = ch->next;
            s_ring_clear(ch);
            s_held_clear(ch);
            for (int i = 0; i < ch->nsubs; i++)
                free(ch->subs[i]);
            free(ch->held);
            free(ch->subs);
            free(ch);
        }
    if (self->sub)
        zmq_close(self->sub);
    free(self);
    *self_p = NULL;
}

void *edge_events_socket(edge_events_t *self)
{
    return self->sub;
}
