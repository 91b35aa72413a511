/*  sh_pool.h - the caller side: a pool of connections, one DEALER per
    instance of one service, with deadlines on every request.

    A request goes to the usable instance with the fewest requests in
    flight. Replies are matched by request id, never by pointer; a reply
    that comes after its request was answered (deadline, cancel) is dropped
    and counted. No usable instance: the callback gets UNAVAILABLE at once.

    Foreign event loops: watch the fd of every socket (sh_pool_sockets),
    and call sh_pool_drain after every sh_pool_send and whenever a watched
    fd turns readable (ZMQ_FD is edge-triggered); call sh_pool_tick every
    few ms for deadlines and instance pings.
*/
#ifndef SH_POOL_H_INCLUDED
#define SH_POOL_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#include "sh_codec.h"
#include "sh_metrics.h"

#define SH_POOL_MAX_INSTANCES 64
#define SH_POOL_PING_MS       1000 /* ping every instance this often */
#define SH_POOL_ALIVE_MS      3000 /* usable for readiness if it answered within */

typedef struct sh_pool_t sh_pool_t;

/*  What a request came back with. env and body (op reply struct, NULL
    unless status is OK) are valid only during the callback.  */
typedef struct {
    uint64_t status;
    const char *error;        /* text, never NULL */
    const sh_envelope_t *env; /* NULL when the pool answered itself */
    const void *body;
} sh_reply_t;

typedef void(sh_reply_fn)(void *arg, const sh_reply_t *reply);

/*  Per-request options; every field may be zero.  */
typedef struct {
    int64_t deadline_ms; /* absolute wall-clock ms */
    const char *traceparent;
    const char *session;
    const char *idem_key;
} sh_call_opts_t;

/*  A pool for calls to `service`. metrics is borrowed (may be NULL).  */
sh_pool_t *sh_pool_new(const char *service, sh_metrics_t *metrics);
/*  Fail every pending request with UNAVAILABLE, close sockets; nulls *self_p.  */
void sh_pool_destroy(sh_pool_t **self_p);

/*  Connect to one more instance endpoint. Returns 0 or -1.  */
int sh_pool_add(sh_pool_t *self, const char *endpoint);

/*  Send request `type` with body (op request struct). fn is called exactly
    once with the reply, a timeout, or UNAVAILABLE (maybe before this
    returns). Returns a handle for sh_pool_cancel (0 when already answered).  */
uint64_t sh_pool_send(sh_pool_t *self, uint64_t type, const void *body, const sh_call_opts_t *opts,
                      sh_reply_fn *fn, void *arg);
/*  Forget the callback of a pending request (its caller went away).  */
void sh_pool_cancel(sh_pool_t *self, uint64_t handle);

/*  Read every waiting reply and dispatch it.  */
void sh_pool_drain(sh_pool_t *self);
/*  Expire deadlines and ping instances; call every 10-50 ms.  */
void sh_pool_tick(sh_pool_t *self);

/*  The sockets to watch, up to max. Returns how many.  */
int sh_pool_sockets(sh_pool_t *self, void **sockets, int max);
/*  True when some instance answered within SH_POOL_ALIVE_MS.  */
bool sh_pool_ready(const sh_pool_t *self);
/*  Requests in flight.  */
int64_t sh_pool_in_flight(const sh_pool_t *self);

#endif
