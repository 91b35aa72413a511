/*  session_store.h - sessions, login sessions and rate-limit windows in
    Redis, through the asynchronous client sh_redis (no Redis round trip
    ever blocks the loop; commands pipeline under load).

    Every call has a deadline; a Redis that is down, restarting or stalled
    makes calls complete with SH_STATUS_UNAVAILABLE within it, and the
    client reconnects by itself when Redis returns.
*/
#ifndef SESSION_STORE_H_INCLUDED
#define SESSION_STORE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sh_codec.h"
#include "sh_loop.h"
#include "sh_metrics.h"

#define SESSION_ID_BYTES   32 /* 256 bits from the CSPRNG */
#define SESSION_ID_LEN     43 /* base64url without padding */
#define SESSION_CSRF_BYTES 32 /* 256 bits from the CSPRNG */
#define SESSION_CSRF_LEN   43
/*  The longest rate-limit window.  */
#define SESSION_RATELIMIT_WINDOW_MAX_MS 86400000

typedef struct session_store_t session_store_t;

typedef struct {
    char id[SESSION_ID_LEN + 1];
    uint64_t views;
    int64_t created_at; /* ms since the epoch */
    int64_t last_seen;
    bool created;
    uint64_t user_id; /* the logged-in user, 0 for none */
    char username[SH_USERNAME_MAX + 1];
    char csrf[SESSION_CSRF_LEN + 1]; /* "" unless logged in */
} session_record_t;

/*  One hit counted in a rate-limit window.  */
typedef struct {
    bool allowed;            /* count <= limit */
    uint64_t count;          /* hits in the window, this one included */
    uint64_t retry_after_ms; /* until the window ends */
} session_ratelimit_t;

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
    int64_t idem_ttl_ms; /* how long the idempotency record of a touch or login lives */
} session_store_config_t;

/*  status is SH_STATUS_OK, NOT_FOUND, UNAVAILABLE or INTERNAL; rec is NULL
    unless OK (for destroy, rec->views is 1 when the session existed).  */
typedef void(session_store_fn)(void *arg, uint64_t status, const session_record_t *rec);
/*  status is SH_STATUS_OK, UNAVAILABLE or INTERNAL; rl is NULL unless OK.  */
typedef void(session_ratelimit_fn)(void *arg, uint64_t status, const session_ratelimit_t *rl);

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
/*  Read session `id` without counting a view; refreshes its idle timeout
    (never past the absolute one). NOT_FOUND when missing or expired.  */
void session_store_get(session_store_t *self, const char *id, int64_t timeout_ms,
                       session_store_fn *fn, void *arg);
/*  Delete session `id`.  */
void session_store_remove(session_store_t *self, const char *id, int64_t timeout_ms,
                          session_store_fn *fn, void *arg);
/*  Atomically create session new_id for user_id/username with CSRF token
    csrf and views 0, and delete session old_id (NULL or "" for none). A
    call repeating an earlier idem_key gets the earlier answer (the session
    that call made). The record has created set.  */
void session_store_login(session_store_t *self, const char *old_id, const char *new_id,
                         const char *csrf, uint64_t user_id, const char *username,
                         const char *idem_key, int64_t timeout_ms, session_store_fn *fn, void *arg);
/*  Count one hit in the fixed window named key (len bytes, any content) of
    window_ms (1..SESSION_RATELIMIT_WINDOW_MAX_MS), which starts with its
    first hit; allowed while at most `limit` (> 0) hits fell in it.  */
void session_store_ratelimit(session_store_t *self, const char *key, size_t len, uint64_t limit,
                             int64_t window_ms, int64_t timeout_ms, session_ratelimit_fn *fn,
                             void *arg);

/*  True while connected to Redis.  */
bool session_store_connected(const session_store_t *self);
/*  The store's Redis client, which the event history shares (borrowed).  */
struct sh_redis_t *session_store_redis(session_store_t *self);

/*  A new random session id (SESSION_ID_LEN chars + NUL).  */
void session_id_new(char out[SESSION_ID_LEN + 1]);
/*  True when text is a well-formed session id (not whether it exists).  */
bool session_id_valid(sh_str_t text);
/*  A new random CSRF token (SESSION_CSRF_LEN chars + NUL).  */
void session_csrf_new(char out[SESSION_CSRF_LEN + 1]);

#endif
