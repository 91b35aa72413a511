/*  sh_events.h - the live events a service publishes (see "Events" in
    proto/README.md).

    An ordered event (board, item:<id>, canary) is first appended to its
    channel's history in Redis, which gives it the next offset of the
    channel's epoch, then published on the service's PUB socket with that
    epoch and offset. Appends go out one batch at a time on the service's
    own Redis connection, so a channel's offsets follow the publish order.
    While Redis is down, events wait in a bounded queue and are appended in
    order once an append succeeds again. A latest-value event (a counter)
    skips Redis and is published at once with offset 0.

    The publisher also answers event_range (what a channel's history
    holds) and event_canary (publish a canary through the ordered path),
    and makes the service advertise its PUB endpoint in its heartbeats.
*/
#ifndef SH_EVENTS_H_INCLUDED
#define SH_EVENTS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sh_config.h"
#include "sh_redis.h"
#include "sh_service.h"

typedef struct sh_events_t sh_events_t;

/*  The event settings of a service: embed as member `events` of its
    config struct and list SH_EVENTS_SETTINGS in its settings table.  */
typedef struct {
    char *bind;
    char *advertise;
    int64_t history;
    int64_t ttl_s;
    int64_t pending_max;
} sh_events_settings_t;

#define SH_EVENTS_SETTINGS                                                                      \
    SH_SETTING(STR, "events_bind", events.bind, "tcp://127.0.0.1:*", 1, 255,                    \
               "ZeroMQ endpoint the events PUB socket binds (port * or 0 picks a free port)"),  \
        SH_SETTING(STR, "events_advertise", events.advertise, "", 0, 255,                       \
                   "events endpoint edges connect to (default: the bound one, a wildcard host " \
                   "replaced by this host's address)"),                                         \
        SH_SETTING(INT, "events_history", events.history, "1000", 1, 1000000,                   \
                   "events kept per channel in Redis for clients that resume"),                 \
        SH_SETTING(INT, "events_ttl_s", events.ttl_s, "86400", 1, 31536000,                     \
                   "seconds after its last event at which a channel's history expires"),        \
        SH_SETTING(INT, "events_pending_max", events.pending_max, "10000", 1, 10000000,         \
                   "events waiting for Redis at most; more are dropped (counted and logged)")

/*  The channel of session sid: "s:" and 32 lowercase hex digits of the
    first 16 bytes of BLAKE2b(sid) (crypto_generichash), written to out.  */
void sh_events_session_channel(const char *sid, char out[SH_CHANNEL_MAX + 1]);

/*  Bind the PUB socket, register the event_range and event_canary
    handlers on service and advertise the events endpoint in its
    heartbeats. redis (the service's own client; keys under prefix) and
    settings are borrowed and must outlive the publisher. Returns NULL
    (logged) when the socket cannot be bound or the endpoint is too long.  */
sh_events_t *sh_events_new(sh_service_t *service, sh_redis_t *redis, const char *prefix,
                           const sh_events_settings_t *settings);
/*  Close the socket and drop what still waits for Redis; nulls *self_p.
    An append in flight is answered into the void.  */
void sh_events_destroy(sh_events_t **self_p);

/*  Publish an ordered event: type (e.g. "item_created") with data (a JSON
    object, copied) on channel, after its history append. Returns 0 when
    published or queued, -1 when dropped (queue full, or a name or the data
    is empty or too long).  */
int sh_events_publish(sh_events_t *self, const char *channel, const char *type,
                      const char *json_data);
/*  Publish a latest-value event (offset 0) at once, without history.
    Returns 0, or -1 when the names or data do not fit.  */
int sh_events_publish_latest(sh_events_t *self, const char *channel, const char *type,
                             const char *json_data);

/*  The PUB endpoint as others reach it (what heartbeats advertise).  */
const char *sh_events_endpoint(const sh_events_t *self);
/*  Ordered events not yet appended (waiting, or in the append in flight).  */
size_t sh_events_pending(const sh_events_t *self);

#endif
