/*  sh_workers.c - worker threads behind inproc sockets.  */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "sh_transport.h"
#include "sh_util.h"
#include "sh_workers.h"

#define SH_WORKERS_MAX 64

typedef struct {
    sh_job_fn *fn; /* NULL asks the worker to stop */
    void *arg;
} s_job_t;

typedef struct {
    pthread_t thread;
    char jobs_endpoint[64];
    char done_endpoint[64];
} s_worker_t;

struct sh_workers_t {
    void *jobs; /* PUSH, bound */
    void *done; /* PULL, bound */
    int threads;
    int outstanding;
    int max_queued;
    s_worker_t workers[SH_WORKERS_MAX];
};

static void *s_worker_main(void *arg)
{
    s_worker_t *self = arg;
    void *jobs = zmq_socket(sh_transport_ctx(), ZMQ_PULL);
    void *done = zmq_socket(sh_transport_ctx(), ZMQ_PUSH);
    int zero = 0;
    zmq_setsockopt(done, ZMQ_LINGER, &zero, sizeof zero);
    zmq_connect(jobs, self->jobs_endpoint);
    zmq_connect(done, self->done_endpoint);
    while (1) {
        s_job_t job;
        if (zmq_recv(jobs, &job, sizeof job, 0) != (int)sizeof job)
            continue;
        if (!job.fn)
            break;
        job.fn(job.arg);
        zmq_send(done, &job, sizeof job, 0);
    }
    zmq_close(jobs);
    zmq_close(done);
    return NULL;
}

sh_workers_t *sh_workers_new(int threads, int max_queued)
{
    if (threads < 1 || threads > SH_WORKERS_MAX)
        return NULL;
    sh_workers_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    char jobs_ep[64], done_ep[64];
    snprintf(jobs_ep, sizeof jobs_ep, "inproc://sh-workers-jobs-%p", (void *)self);
    snprintf(done_ep, sizeof done_ep, "inproc://sh-workers-done-%p", (void *)self);
    self->jobs = zmq_socket(sh_transport_ctx(), ZMQ_PUSH);
    self->done = zmq_socket(sh_transport_ctx(), ZMQ_PULL);
    int zero = 0;
    zmq_setsockopt(self->jobs, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(self->jobs, jobs_ep) || zmq_bind(self->done, done_ep)) {
        zmq_close(self->jobs);
        zmq_close(self->done);
        free(self);
        return NULL;
    }
    self->max_queued = max_queued;
    for (int i = 0; i < threads; i++) {
        s_worker_t *w = &self->workers[i];
        snprintf(w->jobs_endpoint, sizeof w->jobs_endpoint, "%s", jobs_ep);
        snprintf(w->done_endpoint, sizeof w->done_endpoint, "%s", done_ep);
        if (pthread_create(&w->thread, NULL, s_worker_main, w) != 0)
            break;
        self->threads++;
    }
    if (self->threads == 0) {
        sh_workers_destroy(&self);
        return NULL;
    }
    return self;
}

void sh_workers_destroy(sh_workers_t **self_p)
{
    sh_workers_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->threads; i++) {
        s_job_t stop = {NULL, NULL};
        zmq_send(self->jobs, &stop, sizeof stop, 0);
    }
    for (int i = 0; i < self->threads; i++)
        pthread_join(self->workers[i].thread, NULL);
    zmq_close(self->jobs);
    zmq_close(self->done);
    free(self);
    *self_p = NULL;
}

int sh_workers_submit(sh_workers_t *self, sh_job_fn *fn, void *arg)
{
    if (self->outstanding >= self->max_queued)
        return -1;
    s_job_t job = {fn, arg};
    if (zmq_send(self->jobs, &job, sizeof job, ZMQ_DONTWAIT) != (int)sizeof job)
        return -1;
    self->outstanding++;
    return 0;
}

void *sh_workers_socket(sh_workers_t *self)
{
    return self->done;
}

int sh_workers_recv(sh_workers_t *self, void **arg_p)
{
    s_job_t job;
    if (zmq_recv(self->done, &job, sizeof job, ZMQ_DONTWAIT) != (int)sizeof job)
        return -1;
    self->outstanding--;
    *arg_p = job.arg;
    return 0;
}

int sh_workers_outstanding(const sh_workers_t *self)
{
    return self->outstanding;
}

static int64_t s_thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void sh_workers_burn_cpu(uint64_t ms)
{
    int64_t cpu_end = s_thread_cpu_us() + (int64_t)ms * 1000;
    int64_t wall_end = sh_clock_mono_us() + (int64_t)ms * 4000;
    volatile uint64_t x = 0;
    while (s_thread_cpu_us() < cpu_end && sh_clock_mono_us() < wall_end)
        for (int i = 0; i < 1000; i++)
            x += (uint64_t)i * 2654435761u;
}
