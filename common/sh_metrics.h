/*  sh_metrics.h - counters, gauges and latency histograms for one process,
    rendered in the Prometheus text exposition format (version 0.0.4).

    Single-threaded: a metrics registry belongs to the thread of the event
    loop that updates it. Every series gets the labels service="..." and
    instance="..." of the registry in front of its own labels.
*/
#ifndef SH_METRICS_H_INCLUDED
#define SH_METRICS_H_INCLUDED

#include <stdint.h>

#include "sh_util.h"

#define SH_HISTOGRAM_BUCKETS 14

typedef struct sh_metrics_t sh_metrics_t;

typedef struct {
    uint64_t counts[SH_HISTOGRAM_BUCKETS + 1]; /* per bucket, last is +Inf */
    uint64_t count;
    double sum;
} sh_histogram_t;

/*  Upper bounds of the histogram buckets, in seconds.  */
extern const double sh_histogram_bounds[SH_HISTOGRAM_BUCKETS];

/*  New registry; strings are copied. Returns NULL when memory runs out.  */
sh_metrics_t *sh_metrics_new(const char *service, const char *instance);
/*  Destroy a registry and every series it handed out; nulls *self_p.  */
void sh_metrics_destroy(sh_metrics_t **self_p);

/*  Get or create a series. `labels` is the inside of {} without the
    service/instance labels, e.g. "op=\"ping\"" or NULL. The pointer stays
    valid for the registry's life and belongs to it.  */
uint64_t *sh_metrics_counter(sh_metrics_t *self, const char *name, const char *help,
                             const char *labels);
int64_t *sh_metrics_gauge(sh_metrics_t *self, const char *name, const char *help,
                          const char *labels);
sh_histogram_t *sh_metrics_histogram(sh_metrics_t *self, const char *name, const char *help,
                                     const char *labels);

/*  The series of one backing store, shoal_backend_*{<labels>}: every
    adapter (Redis, Postgres, S3) counts the same things under the same
    names. Without a registry (metrics NULL) they count into the struct's
    own storage, so callers never check for NULL; the struct must not move
    after sh_backend_metrics_init.  */
typedef struct {
    uint64_t *calls, *errors, *timeouts, *late, *connects, *refused, *retries;
    sh_histogram_t *latency;
    uint64_t own[7];
    sh_histogram_t own_latency;
} sh_backend_metrics_t;

/*  Register (or find) the series under labels, e.g. backend="redis".  */
void sh_backend_metrics_init(sh_backend_metrics_t *self, sh_metrics_t *metrics, const char *labels);

/*  Record one observation (seconds).  */
void sh_histogram_observe(sh_histogram_t *hist, double seconds);
/*  Estimate the q-quantile (0..1) from the buckets; 0 when empty.  */
double sh_histogram_quantile(const sh_histogram_t *hist, double q);

/*  Append the text exposition of every series to out. Returns 0 or -1.  */
int sh_metrics_render(sh_metrics_t *self, sh_buf_t *out);

/*  Merge expositions of several instances (each as rendered above) into
    one valid exposition: one HELP/TYPE per family, every family's samples
    together, families in order of first appearance. Returns 0 or -1.  */
int sh_metrics_merge(const char *const *texts, int count, sh_buf_t *out);

#endif
