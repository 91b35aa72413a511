/*  sh_workers.h - a small pool of threads for work that would block the
    event loop (CPU burn for `load`, later slow calls). Jobs travel to the
    threads and back as ZeroMQ messages over inproc: no shared state, no
    locks. The argument of a job belongs to the worker until the job comes
    back through sh_workers_recv.
*/
#ifndef SH_WORKERS_H_INCLUDED
#define SH_WORKERS_H_INCLUDED

#include <stdint.h>

typedef struct sh_workers_t sh_workers_t;
typedef void(sh_job_fn)(void *arg);

/*  Start `threads` workers accepting at most max_queued outstanding jobs.
    Returns NULL on failure.  */
sh_workers_t *sh_workers_new(int threads, int max_queued);
/*  Stop the threads (after their current job) and free; nulls *self_p.  */
void sh_workers_destroy(sh_workers_t **self_p);

/*  Queue fn(arg). Returns 0, or -1 when the queue is full.  */
int sh_workers_submit(sh_workers_t *self, sh_job_fn *fn, void *arg);
/*  The socket that turns readable when a job is done (watch it).  */
void *sh_workers_socket(sh_workers_t *self);
/*  Take one finished job's arg without blocking. Returns 0 or -1 (none).  */
int sh_workers_recv(sh_workers_t *self, void **arg_p);
/*  Jobs submitted and not yet received.  */
int sh_workers_outstanding(const sh_workers_t *self);

/*  Burn ms of this thread's CPU time (bounded by 4x ms of wall time).  */
void sh_workers_burn_cpu(uint64_t ms);

#endif
