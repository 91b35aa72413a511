/*  upload_sweep.h - the sweeper: removes what uploads leave behind in S3.

    One pass (1) lists the multipart uploads under the prefix and aborts
    every one initiated longer ago than the sweep age that is not a live
    stream of this instance; (2) lists the objects under the prefix and,
    for those last modified longer ago than the sweep age, asks the query
    service (attachment_keys, up to SH_PAGE_MAX keys per call) which have
    an attachment row, and deletes the others. Only keys this service
    makes are touched, and when the query service does not answer, nothing
    is deleted: never delete when unsure.

    Passes run on the loop, one call at a time, every interval (with
    jitter), or once on demand (`shoal-upload sweep`).
*/
#ifndef UPLOAD_SWEEP_H_INCLUDED
#define UPLOAD_SWEEP_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#include "sh_loop.h"
#include "sh_metrics.h"
#include "sh_pool.h"
#include "upload_s3.h"

typedef struct upload_sweep_t upload_sweep_t;

typedef struct {
    const char *prefix;       /* of the keys to sweep (borrowed) */
    int64_t age_ms;           /* only what is older than this is touched */
    int64_t s3_timeout_ms;    /* of one S3 call */
    int64_t query_timeout_ms; /* of one attachment_keys call */
} upload_sweep_config_t;

/*  What one pass did.  */
typedef struct {
    uint64_t uploads_seen, objects_seen; /* listed under the prefix */
    uint64_t aborted, deleted;
    uint64_t errors; /* calls that failed; a failed listing or query ends its step */
    int64_t ms;      /* how long the pass took */
} upload_sweep_report_t;

/*  Whether a multipart upload belongs to a live stream (arg is yours).  */
typedef bool(upload_sweep_live_fn)(void *arg, const char *upload_id);
/*  Called once at the end of a pass requested with upload_sweep_run.  */
typedef void(upload_sweep_done_fn)(void *arg, const upload_sweep_report_t *report);

/*  A sweeper on loop using s3 and the query pool (both borrowed; query
    may be NULL, then no object is ever deleted). live may be NULL.
    Returns NULL when memory runs out.  */
upload_sweep_t *upload_sweep_new(sh_loop_t *loop, upload_s3_t *s3, sh_pool_t *query,
                                 const upload_sweep_config_t *config, sh_metrics_t *metrics,
                                 upload_sweep_live_fn *live, void *live_arg);

/*  Cancel the timer and a pending query call; frees. Destroy the S3
    client first (it answers the pass's pending S3 call). Nulls *self_p.  */
void upload_sweep_destroy(upload_sweep_t **self_p);

/*  Run a pass every interval_ms +-20 %, the first one interval after now
    (0: never). Returns 0, or -1 when no timer is left.  */
int upload_sweep_every(upload_sweep_t *self, int64_t interval_ms);

/*  Start one pass now; done (may be NULL) hears its report. Returns 0, or
    -1 when a pass is running already.  */
int upload_sweep_run(upload_sweep_t *self, upload_sweep_done_fn *done, void *arg);

#endif
