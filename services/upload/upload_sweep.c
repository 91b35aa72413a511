/*  upload_sweep.c - the sweeper of leftover multipart uploads and objects
    without a row (see upload_sweep.h).

    A pass is a sequence of single calls: list a page, act on its
    candidates one by one, list the next page. Each callback clears
    `waiting` and calls s_advance, which takes the next step; callbacks
    that come before their call returned only end the wait, the loop in
    s_advance goes on. So a pass holds one page of candidates at a time
    and never nests.
*/
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#include "sh_log.h"
#include "upload_server.h"
#include "upload_sweep.h"

#define S_PAGE         1000 /* entries per listing page (S3's maximum) */
#define S_JITTER_PCT   20   /* passes every interval +- this many percent */
#define S_KEYS_PER_ASK SH_PAGE_MAX

typedef enum { S_IDLE, S_UPLOADS, S_OBJECTS } s_phase_t;

typedef struct {
    char *key;
    char *upload_id; /* S_UPLOADS only */
    bool keep;       /* S_OBJECTS: the object has a row */
} s_candidate_t;

struct upload_sweep_t {
    sh_loop_t *loop;
    upload_s3_t *s3;
    sh_pool_t *query;
    upload_sweep_config_t config;
    upload_sweep_live_fn *live;
    void *live_arg;
    int timer;
    int64_t interval_ms;

    s_phase_t phase;
    bool waiting;  /* a call of the pass is pending */
    bool stepping; /* inside s_advance */
    bool started;  /* the phase asked for its first page */
    bool loaded;   /* a page of candidates is here */
    bool more;     /* another page follows */
    char *marker;  /* next page: key marker, or continuation token */
    char *upload_marker;
    s_candidate_t *candidates;
    size_t count, next;
    size_t checked; /* candidates before this one have their query answer */
    uint64_t ask;   /* pool handle of the pending attachment_keys call */
    upload_sweep_report_t report;
    int64_t started_ms;
    upload_sweep_done_fn *done;
    void *done_arg;

    uint64_t *runs, *aborted, *deleted, *errors;
};

static void s_advance(upload_sweep_t *self);

static void s_page_free(upload_sweep_t *self)
{
    for (size_t i = 0; i < self->count; i++) {
        free(self->candidates[i].key);
        free(self->candidates[i].upload_id);
    }
    free(self->candidates);
    self->candidates = NULL;
    self->count = self->next = self->checked = 0;
    self->loaded = false;
}

static void s_markers_free(upload_sweep_t *self)
{
    free(self->marker);
    free(self->upload_marker);
    self->marker = self->upload_marker = NULL;
}

static void s_phase(upload_sweep_t *self, s_phase_t phase)
{
    s_page_free(self);
    s_markers_free(self);
    self->phase = phase;
    self->started = self->more = false;
}

static void s_error(upload_sweep_t *self)
{
    self->report.errors++;
    (*self->errors)++;
}

/*  Keep the next page's markers; a truncated page without them would
    list the same page for ever, so it ends the phase.  */
static void s_markers(upload_sweep_t *self, const upload_s3_result_t *r)
{
    s_markers_free(self);
    self->more = r->truncated;
    if (!self->more)
        return;
    self->marker = strdup(r->next_marker);
    self->upload_marker = strdup(r->next_upload_id_marker);
    if (!self->marker || !self->upload_marker ||
        (!r->next_marker[0] && !r->next_upload_id_marker[0])) {
        sh_warn("sweep: a truncated listing without a marker; the rest waits for the next pass");
        s_error(self);
        self->more = false;
    }
}

/*  Add a candidate (strings copied). Returns 0, or -1 out of memory.  */
static int s_candidate_add(upload_sweep_t *self, const char *key, const char *upload_id)
{
    s_candidate_t c = {strdup(key), upload_id ? strdup(upload_id) : NULL, false};
    if (!c.key || (upload_id && !c.upload_id)) {
        free(c.key);
        free(c.upload_id);
        return -1;
    }
    self->candidates[self->count++] = c;
    return 0;
}

/*  Older than the sweep age, and one of our keys.  */
static bool s_old_and_ours(const upload_sweep_t *self, const upload_s3_entry_t *e, int64_t now)
{
    return e->time_ms >= 0 && now - e->time_ms > self->config.age_ms &&
           upload_key_valid(self->config.prefix, e->key, strlen(e->key));
}

/*  A listing page arrived: keep its candidates.  */
static void s_on_page(upload_sweep_t *self, uint64_t status, const upload_s3_result_t *r)
{
    self->waiting = false;
    bool uploads = self->phase == S_UPLOADS;
    if (status != SH_STATUS_OK) {
        sh_warn("sweep: listing %s failed: %s (HTTP %d %s)",
                uploads ? "multipart uploads" : "objects", sh_status_code(status), r->http_status,
                r->error_code);
        s_error(self);
        if (uploads)
            s_phase(self, S_OBJECTS);
        else
            self->more = false; /* no page, none to follow: s_step ends the pass */
        s_advance(self);
        return;
    }
    s_markers(self, r);
    self->candidates = r->count ? calloc(r->count, sizeof *self->candidates) : NULL;
    if (r->count && !self->candidates) {
        s_error(self);
        self->more = false;
    }
    int64_t now = sh_clock_wall_ms();
    for (size_t i = 0; i < r->count && self->candidates; i++) {
        const upload_s3_entry_t *e = &r->entries[i];
        if (uploads)
            self->report.uploads_seen++;
        else
            self->report.objects_seen++;
        if (!s_old_and_ours(self, e, now))
            continue;
        if (uploads &&
            (!e->upload_id[0] || (self->live && self->live(self->live_arg, e->upload_id))))
            continue;
        if (s_candidate_add(self, e->key, uploads ? e->upload_id : NULL)) {
            s_error(self);
            self->more = false;
            break;
        }
    }
    self->loaded = true;
    s_advance(self);
}

static void s_on_uploads(void *arg, uint64_t status, const upload_s3_result_t *r)
{
    s_on_page(arg, status, r);
}

static void s_on_objects(void *arg, uint64_t status, const upload_s3_result_t *r)
{
    s_on_page(arg, status, r);
}

/*  An abort or delete answered. S3 failing (down, slow, refusing us)
    ends the phase: the next pass tries again.  */
static void s_on_removed(void *arg, uint64_t status, const upload_s3_result_t *r)
{
    upload_sweep_t *self = arg;
    self->waiting = false;
    s_candidate_t *c = &self->candidates[self->next++];
    bool uploads = self->phase == S_UPLOADS;
    if (status == SH_STATUS_OK) {
        if (uploads) {
            self->report.aborted++;
            (*self->aborted)++;
        } else {
            self->report.deleted++;
            (*self->deleted)++;
        }
        sh_debug("sweep: %s %s", uploads ? "aborted the multipart upload of" : "deleted", c->key);
    } else if (status != SH_STATUS_NOT_FOUND) {
        sh_warn("sweep: %s %s failed: %s (HTTP %d %s)", uploads ? "abort" : "delete", c->key,
                sh_status_code(status), r->http_status, r->error_code);
        s_error(self);
        if (status != SH_STATUS_INVALID) {
            self->next = self->count;
            self->more = false;
        }
    }
    s_advance(self);
}

static void s_on_keys(void *arg, const sh_reply_t *reply)
{
    upload_sweep_t *self = arg;
    self->waiting = false;
    self->ask = 0;
    size_t end =
        self->next + S_KEYS_PER_ASK < self->count ? self->next + S_KEYS_PER_ASK : self->count;
    if (reply->status != SH_STATUS_OK) {
        /*  no answer, no deletes: an object might have its row  */
        sh_warn("sweep: attachment_keys failed: %s: %s; no object deleted",
                sh_status_code(reply->status), reply->error);
        s_error(self);
        self->next = self->count;
        self->more = false;
        s_advance(self);
        return;
    }
    const sh_attachment_keys_rep_t *rep = reply->body;
    for (uint32_t k = 0; k < rep->keys.count; k++)
        for (size_t i = self->next; i < end; i++)
            if (sh_str_eq(rep->keys.items[k].key, self->candidates[i].key))
                self->candidates[i].keep = true;
    self->checked = end;
    s_advance(self);
}

/*  Ask the query service which of the next candidates have a row.  */
static void s_ask(upload_sweep_t *self)
{
    sh_attachment_keys_req_t req = {0};
    size_t end =
        self->next + S_KEYS_PER_ASK < self->count ? self->next + S_KEYS_PER_ASK : self->count;
    for (size_t i = self->next; i < end; i++)
        req.keys.items[req.keys.count++].key = sh_str(self->candidates[i].key);
    self->waiting = true;
    if (!self->query) {
        sh_reply_t none = {.status = SH_STATUS_UNAVAILABLE, .error = "no query service configured"};
        s_on_keys(self, &none);
        return;
    }
    sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + self->config.query_timeout_ms};
    self->ask = sh_pool_send(self->query, SH_OP_attachment_keys, &req, &opts, s_on_keys, self);
}

static void s_end(upload_sweep_t *self)
{
    s_phase(self, S_IDLE);
    self->report.ms = sh_clock_mono_ms() - self->started_ms;
    (*self->runs)++;
    const upload_sweep_report_t *r = &self->report;
    sh_info("sweep: %" PRIu64 " multipart uploads aborted, %" PRIu64 " objects deleted, %" PRIu64
            " errors (%" PRIu64 " uploads and %" PRIu64 " objects listed under %s) in %" PRId64
            " ms",
            r->aborted, r->deleted, r->errors, r->uploads_seen, r->objects_seen,
            self->config.prefix, r->ms);
    upload_sweep_done_fn *done = self->done;
    self->done = NULL;
    if (done)
        done(self->done_arg, r);
}

/*  Take one step of the pass: a call (waiting set), or a change of phase.  */
static void s_step(upload_sweep_t *self)
{
    bool uploads = self->phase == S_UPLOADS;
    if (!self->loaded) {
        if (self->started && !self->more) {
            if (uploads)
                s_phase(self, S_OBJECTS);
            else
                s_end(self);
            return;
        }
        self->started = true;
        self->waiting = true;
        if (uploads)
            upload_s3_list_multipart_uploads(self->s3, self->config.prefix, self->marker,
                                             self->upload_marker, S_PAGE,
                                             self->config.s3_timeout_ms, s_on_uploads, self);
        else
            upload_s3_list_objects(self->s3, self->config.prefix, self->marker, S_PAGE,
                                   self->config.s3_timeout_ms, s_on_objects, self);
        return;
    }
    if (self->next == self->count) {
        s_page_free(self);
        return;
    }
    s_candidate_t *c = &self->candidates[self->next];
    if (uploads) {
        self->waiting = true;
        upload_s3_abort_multipart(self->s3, c->key, c->upload_id, self->config.s3_timeout_ms,
                                  s_on_removed, self);
        return;
    }
    if (self->next == self->checked) {
        s_ask(self);
        return;
    }
    if (c->keep) {
        self->next++;
        return;
    }
    self->waiting = true;
    upload_s3_delete_object(self->s3, c->key, self->config.s3_timeout_ms, s_on_removed, self);
}

static void s_advance(upload_sweep_t *self)
{
    if (self->stepping)
        return;
    self->stepping = true;
    while (!self->waiting && self->phase != S_IDLE)
        s_step(self);
    self->stepping = false;
}

int upload_sweep_run(upload_sweep_t *self, upload_sweep_done_fn *done, void *arg)
{
    if (self->phase != S_IDLE)
        return -1;
    memset(&self->report, 0, sizeof self->report);
    self->started_ms = sh_clock_mono_ms();
    self->done = done;
    self->done_arg = arg;
    s_phase(self, S_UPLOADS);
    s_advance(self);
    return 0;
}

static void s_arm(upload_sweep_t *self);

static int s_on_timer(sh_loop_t *loop, void *arg)
{
    (void)loop;
    upload_sweep_t *self = arg;
    self->timer = -1;
    if (upload_sweep_run(self, NULL, NULL) != 0)
        sh_warn("sweep: the last pass is still running; skipping this one");
    s_arm(self);
    return 0;
}

static void s_arm(upload_sweep_t *self)
{
    int64_t spread = self->interval_ms * 2 * S_JITTER_PCT / 100;
    int64_t delay = self->interval_ms - spread / 2 +
                    (spread > 0 ? (int64_t)randombytes_uniform((uint32_t)spread) : 0);
    self->timer = sh_loop_timer(self->loop, delay, false, s_on_timer, self);
}

int upload_sweep_every(upload_sweep_t *self, int64_t interval_ms)
{
    if (self->timer > 0)
        sh_loop_timer_cancel(self->loop, self->timer);
    self->timer = -1;
    self->interval_ms = interval_ms;
    if (interval_ms <= 0)
        return 0;
    s_arm(self);
    return self->timer > 0 ? 0 : -1;
}

upload_sweep_t *upload_sweep_new(sh_loop_t *loop, upload_s3_t *s3, sh_pool_t *query,
                                 const upload_sweep_config_t *config, sh_metrics_t *metrics,
                                 upload_sweep_live_fn *live, void *live_arg)
{
    upload_sweep_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->s3 = s3;
    self->query = query;
    self->config = *config;
    self->live = live;
    self->live_arg = live_arg;
    self->timer = -1;
    self->runs =
        sh_metrics_counter(metrics, "shoal_sweep_runs_total", "Sweeper passes finished", NULL);
    self->aborted = sh_metrics_counter(metrics, "shoal_sweep_aborted_total",
                                       "Leftover multipart uploads aborted by the sweeper", NULL);
    self->deleted =
        sh_metrics_counter(metrics, "shoal_sweep_deleted_total",
                           "Objects without an attachment row deleted by the sweeper", NULL);
    self->errors =
        sh_metrics_counter(metrics, "shoal_sweep_errors_total", "Sweeper calls that failed", NULL);
    if (!self->runs || !self->aborted || !self->deleted || !self->errors) {
        free(self);
        return NULL;
    }
    return self;
}

void upload_sweep_destroy(upload_sweep_t **self_p)
{
    upload_sweep_t *self = *self_p;
    if (!self)
        return;
    if (self->timer > 0)
        sh_loop_timer_cancel(self->loop, self->timer);
    if (self->ask && self->query)
        sh_pool_cancel(self->query, self->ask);
    s_page_free(self);
    s_markers_free(self);
    free(self);
    *self_p = NULL;
}
