/*  sh_registry.c - heartbeats to every health instance, and the merged
    membership view (snapshot + sequence-numbered changes).  */
#include <arpa/inet.h>
#include <czmq.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "sh_log.h"
#include "sh_pool.h"
#include "sh_registry.h"
#include "sh_transport.h"
#include "sh_util.h"

#define S_RESYNC_MS     1000 /* retry a snapshot this often while out of sync */
#define S_REACHABLE_MS  3000
#define S_CALL_DEADLINE 1000
#define S_VERSION       "0.1.0"

/*  --- owned records ---------------------------------------------------------  */

#define S_OWN_STR(name, max)   sh_str_copy(member->name, owned->name, sizeof owned->name);
#define S_OWN_U64(name, max)   owned->name = member->name;
#define S_OWN(kind, name, max) S_OWN_##kind(name, max)
void sh_member_own(sh_member_owned_t *owned, const sh_member_t *member)
{
    SH_FIELDS_member(S_OWN)
}

#define S_VIEW_STR(name, max)   member->name = sh_str(owned->name);
#define S_VIEW_U64(name, max)   member->name = owned->name;
#define S_VIEW(kind, name, max) S_VIEW_##kind(name, max)
void sh_member_view(const sh_member_owned_t *owned, sh_member_t *member)
{
    memset(member, 0, sizeof *member);
    SH_FIELDS_member(S_VIEW)
}

/*  --- state -----------------------------------------------------------------------  */

typedef struct {
    sh_registry_t *owner;
    char endpoint[SH_ENDPOINT_MAX];
    char instance[SH_ID_MAX + 1]; /* the health instance's name */
    char events[SH_ENDPOINT_MAX];
    bool events_connected;
    sh_pool_t *pool;
    char epoch[SH_ID_MAX + 1];
    uint64_t seq;
    bool synced;
    bool syncing;
    bool beat_lost; /* the last heartbeat could not be sent: re-send at the next tick */

    int64_t last_sync_try_ms;
    int64_t last_ok_ms;
    zhashx_t *members; /* instance -> sh_member_owned_t */
} s_view_t;

struct sh_registry_t {
    sh_registry_fn *fn;
    void *arg;
    s_view_t views[SH_REGISTRY_MAX_HEALTH];
    int count;
    void *sub;            /* NULL when not watching */
    sh_member_owned_t me; /* the last record announced */
    bool announced;
    int64_t beat_deadline_span;
    sh_pool_t *all;   /* every health instance, for callers' requests */
    zhashx_t *merged; /* instance -> sh_member_owned_t as last told */
    uint64_t *resyncs, *gaps, *events;
    uint64_t local[3];
};

static void s_record_free(void **item)
{
    free(*item);
    *item = NULL;
}

static zhashx_t *s_record_map(void)
{
    zhashx_t *map = zhashx_new();
    if (map)
        zhashx_set_destructor(map, s_record_free);
    return map;
}

/*  Merge every view's word on `instance` and tell fn when the state or
    the address changed. An instance no view knows keeps its last state.  */
static bool s_view_reachable(const s_view_t *view, int64_t now);

static void s_merge(sh_registry_t *self, const char *instance)
{
    const sh_member_owned_t *best = NULL;
    uint64_t state = SH_MEMBER_DEAD;
    bool draining = false;
    /*  the views of health instances that answer now decide; the frozen
        view of a dead one counts only when no live view knows the instance  */
    int64_t now = sh_clock_mono_ms();
    bool live_knows = false;
    for (int i = 0; i < self->count && !live_knows; i++)
        live_knows = s_view_reachable(&self->views[i], now) &&
                     zhashx_lookup(self->views[i].members, instance);
    for (int i = 0; i < self->count; i++) {
        if (live_knows && !s_view_reachable(&self->views[i], now))
            continue;
        const sh_member_owned_t *rec = zhashx_lookup(self->views[i].members, instance);
        if (!rec)
            continue;

        if (rec->state == SH_MEMBER_DRAINING)
            draining = true;
        if (rec->state < state)
            state = rec->state;
        if (!best || rec->heartbeat_age_ms < best->heartbeat_age_ms)
            best = rec;
    }
    if (!best)
        return;
    if (draining && state != SH_MEMBER_DEAD)
        state = SH_MEMBER_DRAINING;
    sh_member_owned_t *last = zhashx_lookup(self->merged, instance);
    bool changed = !last || last->state != state || strcmp(last->endpoint, best->endpoint) != 0;
    if (!last) {
        last = calloc(1, sizeof *last);
        if (!last)
            return;
        zhashx_insert(self->merged, instance, last);
    }
    *last = *best;
    last->state = state;
    if (changed && self->fn) {
        sh_member_t view;
        sh_member_view(last, &view);
        self->fn(self->arg, &view);
    }
}

static void s_request_snapshot(s_view_t *view);

/*  --- replies from health ---------------------------------------------------------  */

static void s_learn(s_view_t *view, sh_str_t epoch, sh_str_t instance, sh_str_t events)
{
    sh_registry_t *self = view->owner;
    view->last_ok_ms = sh_clock_mono_ms();
    sh_str_copy(instance, view->instance, sizeof view->instance);
    if (events.len && !view->events_connected && self->sub) {
        sh_str_copy(events, view->events, sizeof view->events);
        if (zmq_connect(self->sub, view->events) == 0)
            view->events_connected = true;
        else
            sh_warn("registry: cannot subscribe to %s", view->events);
    }
    if (self->sub && (!view->synced || !sh_str_eq(epoch, view->epoch)) && !view->syncing)
        s_request_snapshot(view);
}

static void s_on_heartbeat(void *arg, const sh_reply_t *reply)
{
    s_view_t *view = arg;
    /*  not sent at all (the connection is still being made): a new instance
        should not wait a whole period to be known, so try again next tick  */
    view->beat_lost = !reply->env && reply->status == SH_STATUS_UNAVAILABLE;
    if (reply->status != SH_STATUS_OK)
        return;

    const sh_heartbeat_rep_t *rep = reply->body;
    s_learn(view, rep->epoch, rep->instance, rep->events);
}

static void s_on_snapshot(void *arg, const sh_reply_t *reply)
{
    s_view_t *view = arg;
    sh_registry_t *self = view->owner;
    view->syncing = false;
    if (reply->status != SH_STATUS_OK)
        return;
    const sh_members_rep_t *rep = reply->body;
    (*self->resyncs)++;
    zhashx_t *old = view->members;
    view->members = s_record_map();
    for (uint32_t i = 0; i < rep->members.count; i++) {
        sh_member_owned_t *rec = calloc(1, sizeof *rec);
        if (!rec)
            break;
        sh_member_own(rec, &rep->members.items[i]);
        zhashx_update(view->members, rec->instance, rec);
    }
    sh_str_copy(rep->epoch, view->epoch, sizeof view->epoch);
    view->seq = rep->seq;
    view->synced = true;
    s_learn(view, rep->epoch, rep->instance, rep->events);
    /*  merging looks names up in every view: iterate over copies of the
        names, never over a hash that the merge reads  */
    zlistx_t *names = zlistx_new();
    if (names) {
        zlistx_set_destructor(names, (zlistx_destructor_fn *)zstr_free);
        for (void *rec = zhashx_first(view->members); rec; rec = zhashx_next(view->members))
            zlistx_add_end(names, strdup((const char *)zhashx_cursor(view->members)));
        /*  and the instances this view forgot: other views (or the last
            known state) rule for them  */
        for (void *rec = zhashx_first(old); rec; rec = zhashx_next(old))
            if (!zhashx_lookup(view->members, zhashx_cursor(old)))
                zlistx_add_end(names, strdup((const char *)zhashx_cursor(old)));
        for (const char *name = zlistx_first(names); name; name = zlistx_next(names))
            s_merge(self, name);
        zlistx_destroy(&names);
    }
    zhashx_destroy(&old);
}

static void s_request_snapshot(s_view_t *view)
{
    view->syncing = true;
    view->last_sync_try_ms = sh_clock_mono_ms();
    sh_members_req_t req = {sh_str(""), 0};
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + S_CALL_DEADLINE};
    sh_pool_send(view->pool, SH_OP_members, &req, &opts, s_on_snapshot, view);
}

/*  --- events -----------------------------------------------------------------------  */

static s_view_t *s_view_of(sh_registry_t *self, sh_str_t source)
{
    for (int i = 0; i < self->count; i++)
        if (self->views[i].instance[0] && sh_str_eq(source, self->views[i].instance))
            return &self->views[i];
    return NULL;
}

static void s_on_event(sh_registry_t *self, const sh_member_event_req_t *ev)
{
    s_view_t *view = s_view_of(self, ev->source);
    (*self->events)++;
    if (!view || view->syncing)
        return;
    if (!view->synced || !sh_str_eq(ev->epoch, view->epoch)) {
        s_request_snapshot(view);
        return;
    }
    if (ev->change == SH_CHANGE_TICK) {
        if (ev->seq > view->seq) {
            (*self->gaps)++;
            s_request_snapshot(view);
        }
        return;
    }
    if (ev->seq <= view->seq)
        return; /* already known */
    if (ev->seq != view->seq + 1) {
        (*self->gaps)++;
        s_request_snapshot(view);
        return;
    }
    view->seq = ev->seq;
    sh_member_t member;
    memset(&member, 0, sizeof member);
#define S_EVENT_FIELD(kind, name, max) member.name = ev->name;
    SH_FIELDS_member(S_EVENT_FIELD) char name[SH_ID_MAX + 1];
    sh_str_copy(member.instance, name, sizeof name);
    if (ev->change == SH_CHANGE_LEFT)
        zhashx_delete(view->members, name);
    else {
        sh_member_owned_t *rec = zhashx_lookup(view->members, name);
        if (!rec) {
            rec = calloc(1, sizeof *rec);
            if (!rec)
                return;
            zhashx_insert(view->members, name, rec);
        }
        sh_member_own(rec, &member);
    }
    s_merge(self, name);
}

static void s_drain_sub(sh_registry_t *self)
{
    while (self->sub && sh_transport_readable(self->sub)) {
        sh_frames_t frames;
        if (sh_frames_recv(self->sub, &frames) != 0)
            break;
        sh_member_event_req_t *ev = calloc(1, sizeof *ev);
        if (ev && sh_frames_event(&frames, SH_OP_member_event, &sh_member_event_req_codec, ev) == 0)
            s_on_event(self, ev);
        free(ev);
        sh_frames_close(&frames);
    }
}

/*  --- public ---------------------------------------------------------------------  */

sh_registry_t *sh_registry_new(const char *endpoints, sh_registry_fn *fn, void *arg,
                               sh_metrics_t *metrics)
{
    sh_registry_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->fn = fn;
    self->arg = arg;
    self->merged = s_record_map();
    self->all = sh_pool_new("health", metrics);
    uint64_t **counters[] = {&self->resyncs, &self->gaps, &self->events};
    static const char *names[][2] = {
        {"shoal_registry_resyncs_total", "Membership snapshots applied"},
        {"shoal_registry_gaps_total", "Membership change sequences found broken"},
        {"shoal_registry_events_total", "Membership events received"},
    };
    for (size_t i = 0; i < SH_ARRAY_SIZE(counters); i++)
        *counters[i] =
            metrics ? sh_metrics_counter(metrics, names[i][0], names[i][1], NULL) : &self->local[i];
    if (fn) {
        self->sub = sh_transport_subscriber(SH_TOPIC_MEMBERS);
    }
    char *copy = strdup(endpoints ? endpoints : ""), *save = NULL;
    bool ok = copy && self->merged && self->all && (!fn || self->sub);
    for (char *ep = copy ? strtok_r(copy, ",", &save) : NULL; ep && ok;
         ep = strtok_r(NULL, ",", &save)) {
        while (*ep == ' ')
            ep++;
        if (!*ep)
            continue;
        if (self->count >= SH_REGISTRY_MAX_HEALTH) {
            ok = false;
            break;
        }
        s_view_t *view = &self->views[self->count];
        view->owner = self;
        snprintf(view->endpoint, sizeof view->endpoint, "%s", ep);
        view->pool = sh_pool_new("health", NULL);
        view->members = s_record_map();
        ok = view->pool && view->members && sh_pool_add(view->pool, ep) == 0 &&
             sh_pool_add(self->all, ep) == 0;
        self->count++;
    }
    free(copy);
    if (!ok || self->count == 0) {
        sh_registry_destroy(&self);
        return NULL;
    }
    return self;
}

void sh_registry_destroy(sh_registry_t **self_p)
{
    sh_registry_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->count; i++) {
        sh_pool_destroy(&self->views[i].pool);
        zhashx_destroy(&self->views[i].members);
    }
    sh_pool_destroy(&self->all);
    sh_transport_close(&self->sub);
    zhashx_destroy(&self->merged);
    free(self);
    *self_p = NULL;
}

void sh_registry_beat(sh_registry_t *self, const sh_member_t *me, int64_t deadline_ms)
{
    sh_member_own(&self->me, me);
    self->announced = true;
    self->beat_deadline_span = deadline_ms - sh_clock_wall_ms();
    sh_call_opts_t opts = {.deadline_ms = deadline_ms};
    for (int i = 0; i < self->count; i++)
        sh_pool_send(self->views[i].pool, SH_OP_heartbeat, me, &opts, s_on_heartbeat,
                     &self->views[i]);
}

void sh_registry_leave(sh_registry_t *self, const char *service, const char *instance)
{
    sh_leave_req_t req = {sh_str(service), sh_str(instance), 0};
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + S_CALL_DEADLINE};
    for (int i = 0; i < self->count; i++)
        sh_pool_broadcast(self->views[i].pool, SH_OP_leave, &req, &opts);
}

int sh_registry_sockets(sh_registry_t *self, void **sockets, int max)
{
    int n = 0;
    for (int i = 0; i < self->count; i++)
        n += sh_pool_sockets(self->views[i].pool, sockets + n, max - n);
    n += sh_pool_sockets(self->all, sockets + n, max - n);
    if (self->sub && n < max)
        sockets[n++] = self->sub;
    return n;
}

void sh_registry_drain(sh_registry_t *self)
{
    for (int i = 0; i < self->count; i++)
        sh_pool_drain(self->views[i].pool);
    sh_pool_drain(self->all);
    s_drain_sub(self);
}

void sh_registry_tick(sh_registry_t *self)
{
    int64_t now = sh_clock_mono_ms();
    for (int i = 0; i < self->count; i++) {
        s_view_t *view = &self->views[i];
        sh_pool_tick(view->pool);
        if (view->beat_lost && self->announced) {
            view->beat_lost = false;
            sh_member_t me;
            sh_member_view(&self->me, &me);
            sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + self->beat_deadline_span};
            sh_pool_send(view->pool, SH_OP_heartbeat, &me, &opts, s_on_heartbeat, view);
        }

        if (self->sub && !view->synced && !view->syncing &&
            now - view->last_sync_try_ms > S_RESYNC_MS)
            s_request_snapshot(view);
    }
    sh_pool_tick(self->all);
    s_drain_sub(self);
}

static bool s_view_reachable(const s_view_t *view, int64_t now)
{
    return view->last_ok_ms && now - view->last_ok_ms < S_REACHABLE_MS;
}

int sh_registry_reachable(const sh_registry_t *self)
{

    int n = 0;
    int64_t now = sh_clock_mono_ms();
    for (int i = 0; i < self->count; i++)
        n += self->views[i].last_ok_ms && now - self->views[i].last_ok_ms < S_REACHABLE_MS;
    return n;
}

const char *sh_registry_health(const sh_registry_t *self, int i, bool *reachable)
{
    if (i < 0 || i >= self->count)
        return NULL;
    int64_t now = sh_clock_mono_ms();
    *reachable = self->views[i].last_ok_ms && now - self->views[i].last_ok_ms < S_REACHABLE_MS;
    return self->views[i].endpoint;
}

struct sh_pool_t *sh_registry_pool(sh_registry_t *self)
{
    return self->all;
}

/*  CPU time used since the previous call, in permille of one core.  */
static uint64_t s_cpu_permille(void)
{
    static int64_t last_cpu_us, last_wall_us;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    int64_t cpu = (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
                  (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    int64_t wall = sh_clock_mono_us();
    uint64_t permille = 0;
    if (last_wall_us && wall > last_wall_us)
        permille = (uint64_t)((cpu - last_cpu_us) * 1000 / (wall - last_wall_us));
    last_cpu_us = cpu;
    last_wall_us = wall;
    return permille;
}

void sh_registry_describe(sh_member_t *member, const char *service, const char *instance,
                          const char *endpoint, uint64_t state, uint64_t capacity,
                          uint64_t in_flight, uint64_t queue, uint64_t requests,
                          int64_t started_wall_ms)
{
    memset(member, 0, sizeof *member);
    member->service = sh_str(service);
    member->instance = sh_str(instance);
    member->version = sh_str(S_VERSION);
    member->endpoint = sh_str(endpoint);
    member->state = state;
    member->capacity = capacity;
    member->in_flight = in_flight;
    member->queue = queue;
    member->cpu_permille = s_cpu_permille();
    member->requests = requests;
    member->uptime_ms = (uint64_t)(sh_clock_wall_ms() - started_wall_ms);
    member->pid = (uint64_t)getpid();
    member->rss_bytes = sh_process_rss();
}

/*  This host's first non-loopback IPv4 address.  */
static int s_host_address(char *out, size_t size)
{
    struct ifaddrs *list = NULL;
    if (getifaddrs(&list) != 0)
        return -1;
    int rc = -1;
    for (struct ifaddrs *ifa = list; ifa && rc; ifa = ifa->ifa_next) {
        if (!ifa->ifa_addr || ifa->ifa_addr->sa_family != AF_INET)
            continue;
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ifa->ifa_addr;
        if ((ntohl(sin->sin_addr.s_addr) >> 24) == 127)
            continue;
        if (inet_ntop(AF_INET, &sin->sin_addr, out, (socklen_t)size))
            rc = 0;
    }
    freeifaddrs(list);
    return rc;
}

int sh_registry_advertise(const char *advertise, const char *bound, char *out, size_t size)
{
    if (advertise && *advertise)
        return snprintf(out, size, "%s", advertise) < (int)size ? 0 : -1;
    /*  tcp://HOST:PORT; HOST may be *, 0.0.0.0 or [::]  */
    const char *scheme_end = strstr(bound, "://");
    const char *colon = strrchr(bound, ':');
    if (!scheme_end || !colon || colon < scheme_end + 3)
        return snprintf(out, size, "%s", bound) < (int)size ? 0 : -1;
    const char *host = scheme_end + 3;
    size_t host_len = (size_t)(colon - host);
    bool wildcard = (host_len == 1 && host[0] == '*') ||
                    (host_len == 7 && !strncmp(host, "0.0.0.0", 7)) ||
                    (host_len == 4 && !strncmp(host, "[::]", 4));
    if (!wildcard)
        return snprintf(out, size, "%s", bound) < (int)size ? 0 : -1;
    char address[64];
    if (s_host_address(address, sizeof address) != 0)
        snprintf(address, sizeof address, "127.0.0.1");
    return snprintf(out, size, "%.*s%s%s", (int)(scheme_end + 3 - bound), bound, address, colon) <
                   (int)size
               ? 0
               : -1;
}
