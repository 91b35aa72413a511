/*  sh_service.h - the skeleton every Shoal service runs on.

    A service binds a ROUTER, decodes each request (envelope, then body,
    never trusting either), rejects what is malformed, expired or unknown
    with an error reply and a counter, answers the standard operations
    (ping, info, load) itself and hands the rest to the handler registered
    for the operation. A handler owns the request until it calls
    sh_service_reply, which it may do later (after a Redis round trip).
    SIGTERM/SIGINT start draining: new requests are refused with
    UNAVAILABLE so callers go elsewhere, in-flight ones finish, then run()
    returns.
*/
#ifndef SH_SERVICE_H_INCLUDED
#define SH_SERVICE_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#include "sh_codec.h"
#include "sh_config.h"
#include "sh_loop.h"
#include "sh_metrics.h"
#include "sh_transport.h"
#include "sh_workers.h"

typedef struct sh_service_t sh_service_t;

/*  One request in flight. Handlers read env, op and body; the rest is the
    service's. Strings in env and body live as long as the request.  */
typedef struct {
    sh_envelope_t env;
    const sh_op_info_t *op;
    void *body;              /* decoded op->request struct */
    char rid[SH_ID_MAX + 1]; /* request id, NUL-terminated, for logs */
    int64_t received_us;     /* monotonic */
    sh_frames_t frames;      /* [identity][envelope][body][raw...] */
} sh_request_t;

typedef void(sh_handler_fn)(sh_service_t *service, sh_request_t *request, void *arg);
typedef void(sh_service_done_fn)(sh_service_t *service, void *arg);

/*  What every Shoal process does first: block SIGTERM/SIGINT (every
    thread created later inherits the mask), ignore SIGPIPE, initialise
    libsodium and logging. Returns a signalfd that reads the stop signals,
    or -1.  */
int sh_process_start(const char *name, const sh_base_config_t *base);

/*  Block SIGTERM/SIGINT (so every thread created later inherits it), bind
    the ROUTER at `bind` and set up logging, metrics and workers. Call it
    before anything creates threads. Returns NULL (error logged).  */
sh_service_t *sh_service_new(const char *name, const sh_base_config_t *base, const char *bind);
/*  Destroy the service; nulls *self_p.  */
void sh_service_destroy(sh_service_t **self_p);

/*  Route requests of operation `type` to fn. Returns 0 or -1.  */
int sh_service_handle(sh_service_t *self, uint64_t type, sh_handler_fn *fn, void *arg);

/*  Keep serving operation `type` while draining (it continues work begun
    before, such as the chunks of an open upload); others are refused
    then. Returns 0 or -1.  */
int sh_service_serve_while_draining(sh_service_t *self, uint64_t type);
/*  Count work that is not a request in flight (an open upload stream) up
    (+1) or down (-1): the drain waits for it too, up to the drain timeout.  */
void sh_service_hold(sh_service_t *self, int delta);
/*  Send the reply and free the request (*request_p is nulled). body is
    the op's reply struct, or NULL for an empty one (error replies).  */
void sh_service_reply(sh_service_t *self, sh_request_t **request_p, uint64_t status,
                      const char *error, const void *body);

/*  Send an OK reply whose body is already encoded (len bytes of the op's
    reply, e.g. kept in a cache) and free the request (*request_p nulled).  */
void sh_service_reply_encoded(sh_service_t *self, sh_request_t **request_p, const void *body,
                              size_t len);

/*  Send an OK reply with body (the op's reply struct) and one raw frame
    of len bytes after it; free the request (*request_p nulled).  */
void sh_service_reply_raw(sh_service_t *self, sh_request_t **request_p, const void *body,
                          const void *raw, size_t len);
/*  The request's first raw frame (after the body) and its length, or NULL
    when it has none.  */
const void *sh_request_raw(const sh_request_t *request, size_t *len);
/*  Milliseconds until the request's deadline (at least 1; a request with
    no deadline gets `fallback`).  */
int64_t sh_request_remaining_ms(const sh_request_t *request, int64_t fallback);

/*  Run work(arg) on a worker thread (CPU-heavy work that must not block
    the loop), then done(service, arg) back on the loop. arg belongs to the
    worker until done runs. Returns 0, or -1 when the queue is full.  */
int sh_service_offload(sh_service_t *self, sh_job_fn *work, sh_service_done_fn *done, void *arg);

/*  A pool for calls to another service, owned by this one: fed by the
    registry (when health endpoints are set) and by `endpoints` (comma-
    separated, may be empty), watched and ticked on the service loop.
    Returns NULL on a bad endpoint (logged) or when SH_SERVICE_POOLS exist.  */
#define SH_SERVICE_POOLS 4
struct sh_pool_t *sh_service_pool(sh_service_t *self, const char *service, const char *endpoints);
sh_loop_t *sh_service_loop(sh_service_t *self);
sh_metrics_t *sh_service_metrics(sh_service_t *self);
const char *sh_service_instance(const sh_service_t *self);
const char *sh_service_endpoint(const sh_service_t *self);
bool sh_service_draining(const sh_service_t *self);
/*  Advertise endpoint (copied; NULL or "" for none) as where this
    instance publishes its live events: the `events` field of every
    heartbeat from now on.  */
void sh_service_set_events(sh_service_t *self, const char *endpoint);

/*  Run the loop until a signal asks to stop and in-flight work drained
    (or the drain timeout passed). Returns 0.  */
int sh_service_run(sh_service_t *self);

#endif
