/*  harness.h - what the service tests share: free ports, scratch
    directories, child processes (started and stopped by PID), a service
    binary with a caller pool, a real Redis (and a client of the test's
    own), a real Postgres (primary and streaming replica), shoal-query
    over both, and synchronous calls through the production caller pool.
*/
#ifndef TEST_HARNESS_H_INCLUDED
#define TEST_HARNESS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sh_codec.h"
#include "sh_pool.h"

/*  size zeroed bytes on the heap (the caller frees them). Out of memory,
    it aborts: a test cannot go on without.  */
void *t_alloc(size_t size);
/*  For a cmocka setup that fails part way: print log (unless NULL), run
    teardown on state to stop what did start, and leave *state NULL (cmocka
    runs no teardown after a failed test setup; the one after a failed
    group setup then finds nothing). Returns -1, the setup's result.  */
int t_setup_failed(void **state, int (*teardown)(void **state), const char *log);
/*  A free TCP port on 127.0.0.1 below the ephemeral range.  */
int t_free_port(void);
/*  "tcp://127.0.0.1:<a free port>" in out.  */
void t_endpoint(char *out, size_t size);
/*  A fresh directory /tmp/shoal-<name>-XXXXXX in dir. Returns 0, or -1
    with dir "".  */
int t_dir_new(char *dir, size_t size, const char *name);
/*  Remove dir and all it holds ("": nothing). A failure is printed, not
    returned: it leaves litter, not a wrong result.  */
void t_dir_remove(const char *dir);
/*  Directory of the binaries under test ($SHOAL_BIN_DIR or build/bin).  */
const char *t_bin_dir(void);
/*  Start a program with extra environment (NULL-ended "K=V" list), its
    stdout/stderr appended to log. Returns the pid.  */
pid_t t_spawn(const char *program, char *const env[], const char *log);
/*  Wait for pid to exit within timeout_ms; returns its exit status, or
    -1 on timeout (the process is left running), -2 if killed by a signal.  */
int t_wait_exit(pid_t pid, int timeout_ms);
/*  SIGKILL and reap.  */
void t_kill(pid_t pid);
/*  Start redis-server on port with data in dir; waits until it answers.  */
pid_t t_redis_start(int port, const char *dir);
/*  The same with its append-only file in dir (every write synced): a
    server started again on the same dir has every write it answered.  */
pid_t t_redis_start_aof(int port, const char *dir);
/*  A Redis reply as a test reads it (strings copied).  */
#define T_REDIS_ELEMS_MAX 8
typedef struct {
    bool done;
    uint64_t status; /* SH_STATUS_OK: answered (maybe with an error reply) */
    int type;        /* SH_REDIS_INT, ... */
    int64_t integer;
    char text[256];
    size_t count; /* elements of an array */
    char elems[T_REDIS_ELEMS_MAX][128];
} t_redis_reply_t;
/*  The test's own client of the Redis on 127.0.0.1:port: the project's
    sh_redis on a loop that runs only inside t_redis_command.  */
typedef struct t_redis_client_t t_redis_client_t;
/*  A client that starts connecting. Returns NULL on failure.  */
t_redis_client_t *t_redis_client_new(int port);
/*  Disconnect and free; nulls *self_p.  */
void t_redis_client_destroy(t_redis_client_t **self_p);
/*  Run one command (argc words), connecting first if need be, into out.
    Returns 0 when Redis answered and not with an error; else -1 (what went
    wrong is printed).  */
int t_redis_command(t_redis_client_t *self, int argc, const char **argv, t_redis_reply_t *out);

/*  Print the last lines of a log (on failure).  */
void t_tail(const char *log);

/*  A service binary to start with t_service_start.  */
typedef struct {
    const char *name;         /* "query": runs shoal-query, pool of service "query" */
    const char *endpoint;     /* where it binds (SHOAL_BIND) */
    const char *const *env;   /* settings "K=V", NULL-ended (NULL: none) */
    const char *const *extra; /* more after env (a later setting wins) */
    const char *log;          /* its stdout/stderr, appended */
    int ready_ms;             /* how long it may take to answer ping */
} t_service_spec_t;
#define T_SERVICE_ENV_MAX 32 /* settings in env and extra together */

/*  Start spec's binary from t_bin_dir() into *pid and a pool connected to
    it into *pool, and wait until it answers ping. Returns 0 when it does;
    either way *pid and *pool are the caller's to stop and destroy.  */
int t_service_start(const t_service_spec_t *spec, pid_t *pid, sh_pool_t **pool);
/*  A SUB socket connected to endpoint, subscribed to every topic; NULL on
    failure. The caller closes it (sh_transport_close).  */
void *t_sub_open(const char *endpoint);

/*  The role and database t_postgres_start creates (owner: the role).  */
#define T_PG_ROLE "shoal"
#define T_PG_DB   "shoal"
/*  Start Postgres on 127.0.0.1:port with data in dir/pg-<port>, output
    appended to log. primary_port 0: a primary (initdb, trust
    authentication, UTF8, the role and database above). Else a hot-standby
    replica of the primary on primary_port (pg_basebackup -R), returned
    once it streams. As root, Postgres runs as the postgres OS user (dir is
    opened to it). Binaries from $SHOAL_PG_BIN_DIR, else Debian's newest
    /usr/lib/postgresql/<n>/bin, else PATH. Returns the postmaster's pid,
    or -1 (what ran is in log).  */
pid_t t_postgres_start(int port, const char *dir, int primary_port, const char *log);
/*  Fast shutdown (SIGINT), reaped; SIGKILL if it takes over 10 s.  */
void t_postgres_stop(pid_t pid);
/*  Run sql with psql as the superuser on 127.0.0.1:port, database db;
    the output (unaligned, tuples only, trailing newline cut) goes to out.
    Returns psql's exit status (0: success), or -1 when it did not finish
    within 10 s.  */
int t_psql(int port, const char *db, const char *sql, char *out, size_t size);

/*  shoal-query on loopback over stores of its own, all under one fresh
    directory: Redis, a Postgres primary and, when asked, a streaming
    replica.  */
typedef struct {
    char dir[256];
    char log[300];    /* shoal-query's output */
    char pg_log[300]; /* Postgres's */
    int redis_port;
    pid_t redis;
    int primary_port;
    pid_t primary;
    pid_t replica; /* 0 without one */
    pid_t service;
    char endpoint[64];
    sh_pool_t *pool;
} t_query_t;

/*  Start (q zeroed) the stores, then shoal-query with env (NULL-ended,
    may be NULL) after the settings that point it at them, all in
    /tmp/shoal-<name>-XXXXXX. Returns 0 once it answers ping; else -1
    after printing the log that tells why. Either way t_query_stop stops
    what started.  */
int t_query_start(t_query_t *q, const char *name, bool with_replica, const char *const env[]);
/*  Destroy the pool, stop the processes and remove the directory.  */
void t_query_stop(t_query_t *q);

/*  One captured reply.  */
typedef struct {
    bool done;
    uint64_t status;
    char error[SH_ERROR_MAX + 1];
    char instance[SH_ID_MAX + 1];
    _Alignas(max_align_t) char body[16384]; /* decoded reply struct (strings point into raw) */
    char raw[131072];                       /* re-encoded body the strings point into */
    int64_t elapsed_ms;
} t_reply_t;

/*  Send through pool and wait (zmq_poll, no sleeps) up to wait_ms.
    deadline_ms is relative (0: pool default). Returns 0 when answered.  */
int t_call(sh_pool_t *pool, uint64_t type, const void *body, int64_t deadline_ms, int wait_ms,
           t_reply_t *out);
/*  Send n requests of one type (bodies[i], at most T_CALLS_MAX) at once,
    then wait up to wait_ms for every reply (out[i] answers bodies[i]).
    Returns 0 when all were answered.  */
#define T_CALLS_MAX 64
int t_call_all(sh_pool_t *pool, uint64_t type, const void *const *bodies, int n,
               int64_t deadline_ms, int wait_ms, t_reply_t *out);
/*  Call ping until it answers OK or timeout_ms passes. Returns 0 when up.  */
int t_wait_ready(sh_pool_t *pool, int timeout_ms);
/*  A zeroed reply on the heap (the caller frees it).  */
t_reply_t *t_reply_new(void);

#endif
