/*  sh_registry.h - an instance's side of the registry (services/health).

    Announce: sh_registry_beat sends this instance's record (state, load)
    to every health instance; sh_registry_leave says it is going.

    Watch (optional): the membership of every service, learned from every
    health instance - a snapshot, then sequence-numbered changes on its PUB
    socket; a gap, a new epoch (health restarted) or a late start resyncs
    from a snapshot. The views of several health instances are merged: an
    instance is as alive as the most optimistic view says (unless one says
    it is draining), and an instance no view knows keeps its last state -
    so if every health instance dies, traffic goes on with the last known
    membership. fn hears every change of the merged view.

    Foreign event loops: watch every socket of sh_registry_sockets, call
    sh_registry_drain when one is readable and after sh_registry_beat, and
    sh_registry_tick every few ms.
*/
#ifndef SH_REGISTRY_H_INCLUDED
#define SH_REGISTRY_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#include "sh_codec.h"
#include "sh_metrics.h"

#define SH_REGISTRY_MAX_HEALTH 8
/*  Sockets a registry asks its owner to watch, at most.  */
#define SH_REGISTRY_SOCKETS ((SH_REGISTRY_MAX_HEALTH + 1) * 2 + 1)

typedef struct sh_registry_t sh_registry_t;

/*  A member record that owns its strings (sh_member_t borrows them).  */
#define SH_OWNED_STR(name, max)         char name[(max) + 1];
#define SH_OWNED_U64(name, max)         uint64_t name;
#define SH_OWNED_FIELD(kind, name, max) SH_OWNED_##kind(name, max)
typedef struct {
    SH_FIELDS_member(SH_OWNED_FIELD)
} sh_member_owned_t;

/*  Copy a borrowed record into an owned one, and borrow one back.  */
void sh_member_own(sh_member_owned_t *owned, const sh_member_t *member);
void sh_member_view(const sh_member_owned_t *owned, sh_member_t *member);

/*  Heard for every change of the merged view; member is valid during the
    call only.  */
typedef void(sh_registry_fn)(void *arg, const sh_member_t *member);

/*  A client of the health instances at `endpoints` (comma-separated
    ROUTER endpoints). fn may be NULL: announce only, no watching.
    Returns NULL on a bad endpoint list.  */
sh_registry_t *sh_registry_new(const char *endpoints, sh_registry_fn *fn, void *arg,
                               sh_metrics_t *metrics);
void sh_registry_destroy(sh_registry_t **self_p);

/*  Send this instance's record to every health instance.  */
void sh_registry_beat(sh_registry_t *self, const sh_member_t *me, int64_t deadline_ms);
/*  Tell every health instance this instance leaves.  */
void sh_registry_leave(sh_registry_t *self, const char *service, const char *instance);

/*  The sockets to watch (up to max); returns how many.  */
int sh_registry_sockets(sh_registry_t *self, void **sockets, int max);
void sh_registry_drain(sh_registry_t *self);
void sh_registry_tick(sh_registry_t *self);

/*  Health instances that answered within the last few heartbeats.  */
int sh_registry_reachable(const sh_registry_t *self);
/*  The health endpoint of slot i (0..count-1) and whether it answers.
    Returns NULL past the last.  */
const char *sh_registry_health(const sh_registry_t *self, int i, bool *reachable);
/*  A pool holding every health instance, for requests such as members.  */
struct sh_pool_t *sh_registry_pool(sh_registry_t *self);

/*  Fill member with the facts of this process every service reports.
    Strings are borrowed from the arguments.  */
void sh_registry_describe(sh_member_t *member, const char *service, const char *instance,
                          const char *endpoint, uint64_t state, uint64_t capacity,
                          uint64_t in_flight, uint64_t queue, uint64_t requests,
                          int64_t started_wall_ms);

/*  The endpoint others should use to reach `bound` (what a socket bound):
    `advertise` when set, else bound with a wildcard or loopback-any host
    replaced by this host's first non-loopback IPv4 address. Writes out
    (size bytes) and returns 0, or -1.  */
int sh_registry_advertise(const char *advertise, const char *bound, char *out, size_t size);

#endif
