/*  sh_redis.h - an asynchronous Redis client inside an sh_loop. The only
    module that includes hiredis: it runs hiredis's async API on the
    service's event loop, so Redis round trips never block the loop and
    commands pipeline naturally.

    Every call has a deadline (capped by the configured timeout); a Redis
    that is down, restarting or stalled makes calls complete with
    SH_STATUS_UNAVAILABLE within it, and the client reconnects by itself
    (AUTH, SELECT, scripts reloaded) when Redis returns. A process pause
    (SIGSTOP) is not mistaken for a stalled Redis.
*/
#ifndef SH_REDIS_H_INCLUDED
#define SH_REDIS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sh_config.h"
#include "sh_loop.h"
#include "sh_metrics.h"

typedef struct sh_redis_t sh_redis_t;
/*  A view of one Redis reply, valid only during the callback.  */
typedef struct sh_redis_reply_t sh_redis_reply_t;

/*  Reply types.  */
#define SH_REDIS_NIL    0
#define SH_REDIS_INT    1
#define SH_REDIS_STR    2
#define SH_REDIS_ARRAY  3
#define SH_REDIS_STATUS 4
#define SH_REDIS_ERROR  5

#define SH_REDIS_MAX_SCRIPTS 8

typedef struct {
    const char *host;
    int port;
    const char *password; /* "" for none */
    int db;
    int64_t timeout_ms;  /* per call, capped by the caller's timeout */
    int64_t max_pending; /* calls waiting for Redis at most; more are refused */
    const char *label;   /* value of the metrics label backend="..." */
} sh_redis_config_t;

/*  The Redis settings of a service: embed as member `redis` of its config
    struct and list SH_REDIS_SETTINGS in its settings table.  */
typedef struct {
    char *host;
    int64_t port;
    char *password;
    int64_t db;
    char *prefix;
    int64_t timeout_ms;
} sh_redis_settings_t;

#define SH_REDIS_SETTINGS(timeout_default, timeout_help)                                  \
    SH_SETTING(STR, "redis_host", redis.host, "127.0.0.1", 0, 255, "Redis host"),         \
        SH_SETTING(INT, "redis_port", redis.port, "6379", 1, 65535, "Redis port"),        \
        SH_SETTING(STR, "redis_password", redis.password, "", 0, 255,                     \
                   "Redis AUTH password (empty: none)"),                                  \
        SH_SETTING(INT, "redis_db", redis.db, "0", 0, 255, "Redis database number"),      \
        SH_SETTING(STR, "redis_prefix", redis.prefix, "shoal:", 0, 64,                    \
                   "prefix of every Redis key"),                                          \
        SH_SETTING(INT, "redis_timeout_ms", redis.timeout_ms, timeout_default, 10, 60000, \
                   timeout_help)

/*  status is SH_STATUS_OK with a reply (which may be an ERROR reply), or
    SH_STATUS_UNAVAILABLE with reply NULL (down, refused, timed out).  */
typedef void(sh_redis_fn)(void *arg, uint64_t status, const sh_redis_reply_t *reply);

/*  Create the client and start connecting. config strings must outlive it.  */
sh_redis_t *sh_redis_new(sh_loop_t *loop, const sh_redis_config_t *config, sh_metrics_t *metrics);
/*  Fail every pending call with UNAVAILABLE, disconnect, free; nulls *self_p.  */
void sh_redis_destroy(sh_redis_t **self_p);

/*  Send one command (argv with lengths). fn is called exactly once, maybe
    before this returns; a reply after the deadline is dropped and counted.  */
void sh_redis_command(sh_redis_t *self, int64_t timeout_ms, sh_redis_fn *fn, void *arg, int argc,
                      const char **argv, const size_t *argvlen);

/*  Register a Lua script (text must outlive the client). Returns its id
    (>= 0) for sh_redis_eval, or -1 when the table is full.  */
int sh_redis_script(sh_redis_t *self, const char *text);
/*  Run script `id` with nkeys keys followed by the other arguments in
    argv: EVALSHA, falling back to EVAL when Redis does not know it.  */
void sh_redis_eval(sh_redis_t *self, int id, int64_t timeout_ms, sh_redis_fn *fn, void *arg,
                   int nkeys, int argc, const char **argv, const size_t *argvlen);

/*  True while connected.  */
bool sh_redis_connected(const sh_redis_t *self);

/*  Reading a reply.  */
int sh_redis_type(const sh_redis_reply_t *reply);
/*  An INT reply, or a STR reply holding a whole number; else fallback.  */
int64_t sh_redis_int(const sh_redis_reply_t *reply, int64_t fallback);
/*  The text of a STR, STATUS or ERROR reply (len may be NULL); else NULL.  */
const char *sh_redis_str(const sh_redis_reply_t *reply, size_t *len);
/*  Elements of an ARRAY reply (0 otherwise), and element i (NULL past the end).  */
size_t sh_redis_count(const sh_redis_reply_t *reply);
const sh_redis_reply_t *sh_redis_elem(const sh_redis_reply_t *reply, size_t i);

#endif
