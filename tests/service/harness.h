/*  harness.h - helpers for service tests: free ports, child processes
    (started and stopped by PID), a real Redis, a real Postgres (primary
    and streaming replica), and synchronous calls through the production
    caller pool.
*/
#ifndef TEST_HARNESS_H_INCLUDED
#define TEST_HARNESS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sh_codec.h"
#include "sh_pool.h"

/*  A free TCP port on 127.0.0.1 below the ephemeral range.  */
int t_free_port(void);
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
/*  Print the last lines of a log (on failure).  */
void t_tail(const char *log);

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

#endif
