/*  health_registry.c - registration, heartbeats, expiry, snapshot, events.

    Every change (joined, state changed, left) gets the next sequence number
    and is published; a tick repeats the current number every second so a
    subscriber that lost a change notices within a second and resyncs from
    a snapshot. The epoch is new at every start, so subscribers also resync
    after a restart; the registry then rebuilds itself from the next
    heartbeats, which carry each instance's full record.
*/
#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health_registry.h"
#include "sh_log.h"
#include "sh_registry.h"
#include "sh_transport.h"
#include "sh_util.h"

#define H_MISSED_BEATS 3
#define H_TICK_MS      1000
#define H_RPS_SMOOTH   0.5 /* weight of the newest rate sample */

typedef struct {
    sh_member_owned_t rec;
    int64_t last_beat_ms;
    int64_t dead_since_ms;
    uint64_t prev_requests;
    int64_t prev_beat_ms;
    double rps;
} h_entry_t;

struct health_registry_t {
    sh_service_t *service;
    health_registry_config_t config;
    void *pub;
    char events[SH_ENDPOINT_MAX];
    char self_endpoint[SH_ENDPOINT_MAX];
    char epoch[SH_ID_MAX + 1];
    uint64_t seq;
    int64_t started_ms;
    zhashx_t *entries; /* instance -> h_entry_t */
    int expiry_timer, tick_timer;
    uint64_t *beats, *joined, *died, *left;
};

static void s_entry_free(void **item)
{
    free(*item);
    *item = NULL;
}

static void s_publish(health_registry_t *self, uint64_t change, const sh_member_owned_t *rec)
{
    sh_member_event_req_t ev;
    memset(&ev, 0, sizeof ev);
    if (change != SH_CHANGE_TICK)
        self->seq++;
    ev.epoch = sh_str(self->epoch);
    ev.seq = self->seq;
    ev.change = change;
    ev.source = sh_str(sh_service_instance(self->service));
    if (rec) {
        sh_member_t member;
        sh_member_view(rec, &member);
#define H_EVENT_FIELD(kind, name, max) ev.name = member.name;
        SH_FIELDS_member(H_EVENT_FIELD)
    }
    sh_envelope_t env = {0};
    env.version = SH_PROTO_VERSION;
    env.kind = SH_KIND_EVENT;
    env.type = SH_OP_member_event;
    env.instance = ev.source;
    if (sh_transport_publish(self->pub, SH_TOPIC_MEMBERS, &env, &sh_member_event_req_codec, &ev))
        sh_warn("membership event %llu not published", (unsigned long long)ev.seq);
}

static void s_fill_ages(health_registry_t *self, h_entry_t *e, int64_t now)
{
    (void)self;
    e->rec.heartbeat_age_ms = (uint64_t)(now - e->last_beat_ms);
    e->rec.rps_milli = (uint64_t)(e->rps * 1000.0);
}

static void s_on_heartbeat(sh_service_t *service, sh_request_t *request, void *arg)
{
    health_registry_t *self = arg;
    const sh_heartbeat_req_t *beat = request->body;
    sh_member_t member;
#define H_COPY_FIELD(kind, name, max) member.name = beat->name;
    SH_FIELDS_member(H_COPY_FIELD) if (!member.instance.len || !member.service.len ||
                                       member.state > SH_MEMBER_DEAD)
    {
        sh_service_reply(service, &request, SH_STATUS_INVALID,
                         "heartbeat needs service, instance "
                         "and a known state",
                         NULL);
        return;
    }
    (*self->beats)++;
    char name[SH_ID_MAX + 1];
    sh_str_copy(member.instance, name, sizeof name);
    int64_t now = sh_clock_mono_ms();
    h_entry_t *e = zhashx_lookup(self->entries, name);
    bool joined = !e;
    uint64_t before = e ? e->rec.state : SH_MEMBER_DEAD;
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e) {
            sh_service_reply(service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
            return;
        }
        zhashx_insert(self->entries, name, e);
    } else if (e->prev_beat_ms && now > e->prev_beat_ms && member.requests >= e->prev_requests) {
        double sample =
            (double)(member.requests - e->prev_requests) * 1000.0 / (double)(now - e->prev_beat_ms);
        e->rps = e->rps * (1 - H_RPS_SMOOTH) + sample * H_RPS_SMOOTH;
    }
    e->prev_requests = member.requests;
    e->prev_beat_ms = now;
    sh_member_own(&e->rec, &member);
    e->last_beat_ms = now;
    e->dead_since_ms = 0;
    s_fill_ages(self, e, now);
    if (joined) {
        (*self->joined)++;
        sh_info("%s %s joined at %s", e->rec.service, name, e->rec.endpoint);
        s_publish(self, SH_CHANGE_JOINED, &e->rec);
    } else if (before != e->rec.state) {
        sh_info("%s %s: %s -> %s", e->rec.service, name, sh_member_state_word(before),
                sh_member_state_word(e->rec.state));
        s_publish(self, SH_CHANGE_CHANGED, &e->rec);
    }
    sh_heartbeat_rep_t rep = {sh_str(self->epoch), self->seq, sh_str(self->events),
                              sh_str(sh_service_instance(service)), 0};
    sh_service_reply(service, &request, SH_STATUS_OK, NULL, &rep);
}

static void s_mark_dead(health_registry_t *self, h_entry_t *e, const char *why)
{
    e->rec.state = SH_MEMBER_DEAD;
    e->dead_since_ms = sh_clock_mono_ms();
    (*self->died)++;
    sh_info("%s %s is dead: %s", e->rec.service, e->rec.instance, why);
    s_publish(self, SH_CHANGE_CHANGED, &e->rec);
}

static void s_on_leave(sh_service_t *service, sh_request_t *request, void *arg)
{
    health_registry_t *self = arg;
    const sh_leave_req_t *req = request->body;
    char name[SH_ID_MAX + 1];
    sh_str_copy(req->instance, name, sizeof name);
    h_entry_t *e = zhashx_lookup(self->entries, name);
    if (e && e->rec.state != SH_MEMBER_DEAD)
        s_mark_dead(self, e, "left");
    sh_leave_rep_t rep = {e != NULL, 0};
    sh_service_reply(service, &request, SH_STATUS_OK, NULL, &rep);
}

static void s_on_members(sh_service_t *service, sh_request_t *request, void *arg)
{
    health_registry_t *self = arg;
    const sh_members_req_t *req = request->body;
    sh_members_rep_t *rep = calloc(1, sizeof *rep);
    if (!rep) {
        sh_service_reply(service, &request, SH_STATUS_INTERNAL, "out of memory", NULL);
        return;
    }
    int64_t now = sh_clock_mono_ms();
    /*  this health instance itself comes first  */
    sh_member_owned_t me;
    sh_member_t my;
    sh_registry_describe(&my, "health", sh_service_instance(service), self->self_endpoint,
                         SH_MEMBER_UP, 0, 0, 0, 0, self->started_ms);
    my.events = sh_str(self->events);
    sh_member_own(&me, &my);
    bool registered = zhashx_lookup(self->entries, sh_service_instance(service)) != NULL;
    if (!registered && (req->service.len == 0 || sh_str_eq(req->service, "health")))
        sh_member_view(&me, &rep->members.items[rep->members.count++]);

    for (h_entry_t *e = zhashx_first(self->entries); e && rep->members.count < SH_MEMBERS_MAX;
         e = zhashx_next(self->entries)) {
        if (req->service.len && !sh_str_eq(req->service, e->rec.service))
            continue;
        s_fill_ages(self, e, now);
        sh_member_view(&e->rec, &rep->members.items[rep->members.count++]);
    }
    rep->epoch = sh_str(self->epoch);
    rep->seq = self->seq;
    rep->events = sh_str(self->events);
    rep->instance = sh_str(sh_service_instance(service));
    sh_service_reply(service, &request, SH_STATUS_OK, NULL, rep);
    free(rep);
}

static int s_on_expiry(sh_loop_t *loop, void *arg)
{
    (void)loop;
    health_registry_t *self = arg;
    int64_t now = sh_clock_mono_ms();
    int64_t limit = self->config.heartbeat_ms * H_MISSED_BEATS;
    zlistx_t *gone = zlistx_new();
    for (h_entry_t *e = zhashx_first(self->entries); e; e = zhashx_next(self->entries)) {
        if (e->rec.state != SH_MEMBER_DEAD && now - e->last_beat_ms > limit)
            s_mark_dead(self, e, "missed its heartbeats");
        else if (e->rec.state == SH_MEMBER_DEAD && e->dead_since_ms &&
                 now - e->dead_since_ms > self->config.forget_ms && gone)
            zlistx_add_end(gone, (void *)zhashx_cursor(self->entries));
    }
    for (const char *name = gone ? zlistx_first(gone) : NULL; name; name = zlistx_next(gone)) {
        h_entry_t *e = zhashx_lookup(self->entries, name);
        (*self->left)++;
        s_publish(self, SH_CHANGE_LEFT, &e->rec);
        zhashx_delete(self->entries, name);
    }
    zlistx_destroy(&gone);
    return 0;
}

static int s_on_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    health_registry_t *self = arg;
    s_publish(self, SH_CHANGE_TICK, NULL);
    return 0;
}

health_registry_t *health_registry_new(sh_service_t *service,
                                       const health_registry_config_t *config)
{
    health_registry_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->service = service;
    self->config = *config;
    self->started_ms = sh_clock_wall_ms();
    sh_random_hex(self->epoch, 8);
    self->entries = zhashx_new();
    char bound[SH_ENDPOINT_MAX] = "";
    self->pub = sh_transport_publisher(config->pub_bind, bound, sizeof bound);
    if (!self->entries || !self->pub) {
        sh_error("cannot bind the membership publisher at %s", config->pub_bind);
        health_registry_destroy(&self);
        return NULL;
    }
    zhashx_set_destructor(self->entries, s_entry_free);
    /*  subscribers learn the PUB endpoint from replies: advertise it  */
    if (sh_registry_advertise(NULL, bound, self->events, sizeof self->events) ||
        sh_registry_advertise(config->advertise, sh_service_endpoint(service), self->self_endpoint,
                              sizeof self->self_endpoint)) {
        health_registry_destroy(&self);
        return NULL;
    }
    sh_metrics_t *m = sh_service_metrics(service);
    self->beats =
        sh_metrics_counter(m, "shoal_health_heartbeats_total", "Heartbeats received", NULL);
    self->joined =
        sh_metrics_counter(m, "shoal_health_joined_total", "Instances that joined", NULL);
    self->died = sh_metrics_counter(m, "shoal_health_dead_total",
                                    "Instances declared dead or that left", NULL);
    self->left = sh_metrics_counter(m, "shoal_health_forgotten_total",
                                    "Dead instances removed from the registry", NULL);
    sh_service_handle(service, SH_OP_heartbeat, s_on_heartbeat, self);
    sh_service_handle(service, SH_OP_leave, s_on_leave, self);
    sh_service_handle(service, SH_OP_members, s_on_members, self);
    sh_loop_t *loop = sh_service_loop(service);
    int64_t every = config->heartbeat_ms / 2 > 10 ? config->heartbeat_ms / 2 : 10;
    self->expiry_timer = sh_loop_timer(loop, every, true, s_on_expiry, self);
    self->tick_timer = sh_loop_timer(loop, H_TICK_MS, true, s_on_tick, self);
    sh_info("registry epoch %s publishing at %s (heartbeat %lld ms, dead after %d missed)",
            self->epoch, self->events, (long long)config->heartbeat_ms, H_MISSED_BEATS);
    return self;
}

void health_registry_destroy(health_registry_t **self_p)
{
    health_registry_t *self = *self_p;
    if (!self)
        return;
    if (self->service) {
        sh_loop_timer_cancel(sh_service_loop(self->service), self->expiry_timer);
        sh_loop_timer_cancel(sh_service_loop(self->service), self->tick_timer);
    }
    zhashx_destroy(&self->entries);
    sh_transport_close(&self->pub);
    free(self);
    *self_p = NULL;
}
