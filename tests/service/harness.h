/*  harness.h - helpers for service tests: free ports, child processes
    (started and stopped by PID), a real Redis, and synchronous calls
    through the production caller pool.
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
/*  Print the last lines of a log (on failure).  */
void t_tail(const char *log);

/*  One captured reply.  */
typedef struct {
    bool done;
    uint64_t status;
    char error[SH_ERROR_MAX + 1];
    char instance[SH_ID_MAX + 1];
    _Alignas(max_align_t) char body[4096]; /* decoded reply struct (strings point into raw) */
    char raw[8192];                        /* re-encoded body the strings point into */
    int64_t elapsed_ms;
} t_reply_t;

/*  Send through pool and wait (zmq_poll, no sleeps) up to wait_ms.
    deadline_ms is relative (0: pool default). Returns 0 when answered.  */
int t_call(sh_pool_t *pool, uint64_t type, const void *body, int64_t deadline_ms, int wait_ms,
           t_reply_t *out);
/*  Call ping until it answers OK or timeout_ms passes. Returns 0 when up.  */
int t_wait_ready(sh_pool_t *pool, int timeout_ms);

#endif
