/*  sh_pool.h - the caller side: the instances of one service behind one
    ROUTER socket that connects out to each of them.

    Instances come from the registry (sh_pool_update) or a static list
    (sh_pool_add). A request goes to the usable instance with the fewest
    requests in flight (up before busy; never draining or dead). Every
    request has a deadline. When its instance dies, times out or says it is
    draining, a request that is safe to repeat - an idempotent operation,
    or one carrying an idempotency key the service deduplicates - is sent
    again to another instance, within a retry budget (about 10 % of
    traffic); anything else fails at once with UNAVAILABLE. Replies are
    matched by request id, one per attempt: a late reply to a request that
    was already answered or retried is dropped and counted.

    Foreign event loops: watch the fds of sh_pool_sockets, call sh_pool_drain
    after every sh_pool_send and whenever the fd turns readable (ZMQ_FD is
    edge-triggered), and call sh_pool_tick every few ms.
*/
#ifndef SH_POOL_H_INCLUDED
#define SH_POOL_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#include "sh_codec.h"
#include "sh_metrics.h"

#define SH_POOL_MAX_INSTANCES 256
#define SH_POOL_PING_MS       1000  /* ping every instance this often */
#define SH_POOL_ALIVE_MS      3000  /* usable for readiness if it answered within */
#define SH_POOL_FORGET_MS     60000 /* a dead instance is disconnected after */
#define SH_POOL_MAX_ATTEMPTS  3

typedef struct sh_pool_t sh_pool_t;

/*  What a request came back with. env and body (op reply struct, NULL
    unless status is OK) are valid only during the callback.  */
typedef struct {
    uint64_t status;
    const char *error;        /* text, never NULL */
    const sh_envelope_t *env; /* NULL when the pool answered itself */
    const void *body;
    int attempts;    /* instances tried */
    const void *raw; /* the reply's raw frame (NULL: none), during the callback */
    size_t raw_len;
} sh_reply_t;

typedef void(sh_reply_fn)(void *arg, const sh_reply_t *reply);

/*  Per-request options; every field may be zero.  */
typedef struct {
    int64_t deadline_ms; /* absolute wall-clock ms */
    const char *traceparent;
    const char *session;
    const char *idem_key; /* makes a write safe to repeat */
    const char *instance; /* only this instance (by name), never another */
    int64_t attempt_ms;   /* per-attempt timeout if the work itself takes long (0: default) */
    const void *raw;      /* one raw frame after the body (copied by the send, never re-sent: */
    size_t raw_len;       /* a request carrying one is not retried elsewhere) */
} sh_call_opts_t;

/*  A pool for calls to `service`. metrics is borrowed (may be NULL).  */
sh_pool_t *sh_pool_new(const char *service, sh_metrics_t *metrics);
/*  Fail every pending request with UNAVAILABLE, close; nulls *self_p.  */
void sh_pool_destroy(sh_pool_t **self_p);

/*  Connect to an instance that is not in the registry. Returns 0 or -1.  */
int sh_pool_add(sh_pool_t *self, const char *endpoint);
/*  Apply what the registry says of one instance of this service: join,
    change state, or (SH_MEMBER_DEAD) die. Returns 0 or -1 (pool full).  */
int sh_pool_update(sh_pool_t *self, const sh_member_t *member);

/*  Per-attempt timeout for requests safe to repeat (default 1000 ms).  */
void sh_pool_set_attempt_timeout(sh_pool_t *self, int64_t ms);

/*  Send request `type` with body (op request struct). fn is called exactly
    once with the reply, a timeout, or UNAVAILABLE (maybe before this
    returns). Returns a handle for sh_pool_cancel (0 when already answered).  */
uint64_t sh_pool_send(sh_pool_t *self, uint64_t type, const void *body, const sh_call_opts_t *opts,
                      sh_reply_fn *fn, void *arg);
/*  Send to every usable instance, ignoring the replies.  */
void sh_pool_broadcast(sh_pool_t *self, uint64_t type, const void *body,
                       const sh_call_opts_t *opts);
/*  Forget the callback of a pending request (its caller went away).  */
void sh_pool_cancel(sh_pool_t *self, uint64_t handle);

/*  Read every waiting reply and dispatch it.  */
void sh_pool_drain(sh_pool_t *self);
/*  Expire deadlines, retry timed-out attempts, ping, forget the long dead;
    call every 10-50 ms.  */
void sh_pool_tick(sh_pool_t *self);

/*  The sockets to watch (the caller socket and its connection monitor),
    up to max. Returns how many (SH_POOL_SOCKETS).  */
#define SH_POOL_SOCKETS 2
int sh_pool_sockets(sh_pool_t *self, void **sockets, int max);
/*  True when some usable instance answered within SH_POOL_ALIVE_MS.  */
bool sh_pool_ready(const sh_pool_t *self);
/*  The service this pool calls.  */
const char *sh_pool_service(const sh_pool_t *self);
/*  Requests in flight.  */
int64_t sh_pool_in_flight(const sh_pool_t *self);
/*  Instances that are neither draining nor dead.  */
int sh_pool_usable(const sh_pool_t *self);

#endif
