/*  session_store.h - sessions in Redis. The only module that includes
    hiredis: it runs hiredis's async API inside the service's event loop,
    so Redis round trips never block the loop and pipeline naturally.

    Every call has a deadline; a Redis that is down, restarting or stalled
    makes calls complete with SH_STATUS_UNAVAILABLE within it, and the store
    reconnects by itself when Redis returns.
*/
#ifndef SESSION_STORE_H_INCLUDED
#define SESSION_STORE_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#include "sh_codec.h"
#include "sh_loop.h"
#include "sh_metrics.h"

#define SESSION_ID_BYTES 32 /* 256 bits from the CSPRNG */
#define SESSION_ID_LEN   43 /* base64url without padding */

typedef struct session_store_t session_store_t;

typedef struct {
    char id[SESSION_ID_LEN + 1];
    uint64_t views;
    int64_t created_at; /* ms since the epoch */
    int64_t last_seen;
    bool created;
} session_record_t;

typedef struct {
    const char *host;
    int port;
    const char *password; /* "" for none */
    int db;
    const char *prefix;  /* key prefix, e.g. "shoal:" */
    int64_t timeout_ms;  /* per Redis call, capped by the request deadline */
    int64_t idle_ms;     /* a session unused this long expires */
    int64_t absolute_ms; /* a session older than this expires */
    int64_t max_pending; /* calls waiting for Redis at most */
    int64_t idem_ttl_ms; /* how long a touch's idempotency record lives */
} session_store_config_t;

/*  status is SH_STATUS_OK, NOT_FOUND or UNAVAILABLE; rec is NULL unless OK
    (for destroy, rec->views is 1 when the session existed).  */
typedef void(session_store_fn)(void *arg, uint64_t status, const session_record_t *rec);

/*  Create the store and start connecting. config strings must outlive it.  */
session_store_t *session_store_new(sh_loop_t *loop, const session_store_config_t *config,
                                   sh_metrics_t *metrics);
/*  Fail every pending call with UNAVAILABLE, disconnect, free; nulls *self_p.  */
void session_store_destroy(session_store_t **self_p);

/*  views + 1 on session `id`; with create, a missing/expired/empty id gets
    a new session whose id is new_id. A call repeating an earlier idem_key
    (may be NULL or "") gets the earlier answer and counts nothing. fn is
    called exactly once, maybe before this returns.  */
void session_store_touch(session_store_t *self, const char *id, const char *new_id, bool create,
                         const char *idem_key, int64_t timeout_ms, session_store_fn *fn, void *arg);
void session_store_get(session_store_t *self, const char *id, int64_t timeout_ms,
                       session_store_fn *fn, void *arg);
void session_store_remove(session_store_t *self, const char *id, int64_t timeout_ms,
                          session_store_fn *fn, void *arg);

/*  True while connected to Redis.  */
bool session_store_connected(const session_store_t *self);

/*  A new random session id (SESSION_ID_LEN chars + NUL).  */
void session_id_new(char out[SESSION_ID_LEN + 1]);
/*  True when text is a well-formed session id (not whether it exists).  */
bool session_id_valid(sh_str_t text);

#endif
