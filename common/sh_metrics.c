/*  sh_metrics.c - metrics registry and Prometheus text rendering.  */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sh_metrics.h"

const double sh_histogram_bounds[SH_HISTOGRAM_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};

typedef enum { S_COUNTER, S_GAUGE, S_HISTOGRAM } s_type_t;

typedef struct s_series_t {
    struct s_series_t *next;
    char *labels;
    union {
        uint64_t counter;
        int64_t gauge;
        sh_histogram_t hist;
    } v;
} s_series_t;

typedef struct s_family_t {
    struct s_family_t *next;
    char *name;
    char *help;
    s_type_t type;
    s_series_t *series;
    s_series_t **tail;
} s_family_t;

struct sh_metrics_t {
    char *base_labels; /* service="x",instance="y" */
    s_family_t *families;
    s_family_t **tail;
};

sh_metrics_t *sh_metrics_new(const char *service, const char *instance)
{
    sh_metrics_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    sh_buf_t labels = {0};
    sh_buf_printf(&labels, "service=\"%s\",instance=\"%s\"", service, instance);
    self->base_labels = labels.data;
    self->tail = &self->families;
    if (!self->base_labels) {
        free(self);
        return NULL;
    }
    return self;
}

void sh_metrics_destroy(sh_metrics_t **self_p)
{
    sh_metrics_t *self = *self_p;
    if (!self)
        return;
    for (s_family_t *f = self->families, *fn; f; f = fn) {
        fn = f->next;
        for (s_series_t *s = f->series, *sn; s; s = sn) {
            sn = s->next;
            free(s->labels);
            free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    free(self->base_labels);
    free(self);
    *self_p = NULL;
}

static s_series_t *s_series(sh_metrics_t *self, const char *name, const char *help,
                            const char *labels, s_type_t type)
{
    s_family_t *family = NULL;
    for (s_family_t *f = self->families; f && !family; f = f->next)
        if (strcmp(f->name, name) == 0)
            family = f;
    if (!family) {
        family = calloc(1, sizeof *family);
        if (!family)
            return NULL;
        family->name = strdup(name);
        family->help = strdup(help);
        family->type = type;
        family->tail = &family->series;
        *self->tail = family;
        self->tail = &family->next;
    }
    /*  a name is one type for its whole life: asking otherwise is a bug  */
    if (family->type != type)
        abort();
    labels = labels ? labels : "";
    for (s_series_t *s = family->series; s; s = s->next)
        if (strcmp(s->labels, labels) == 0)
            return s;
    s_series_t *series = calloc(1, sizeof *series);
    if (!series)
        return NULL;
    series->labels = strdup(labels);
    *family->tail = series;
    family->tail = &series->next;
    return series;
}

uint64_t *sh_metrics_counter(sh_metrics_t *self, const char *name, const char *help,
                             const char *labels)
{
    s_series_t *s = s_series(self, name, help, labels, S_COUNTER);
    return s ? &s->v.counter : NULL;
}

int64_t *sh_metrics_gauge(sh_metrics_t *self, const char *name, const char *help,
                          const char *labels)
{
    s_series_t *s = s_series(self, name, help, labels, S_GAUGE);
    return s ? &s->v.gauge : NULL;
}

sh_histogram_t *sh_metrics_histogram(sh_metrics_t *self, const char *name, const char *help,
                                     const char *labels)
{
    s_series_t *s = s_series(self, name, help, labels, S_HISTOGRAM);
    return s ? &s->v.hist : NULL;
}

void sh_histogram_observe(sh_histogram_t *hist, double seconds)
{
    size_t i = 0;
    while (i < SH_HISTOGRAM_BUCKETS && seconds > sh_histogram_bounds[i])
        i++;
    hist->counts[i]++;
    hist->count++;
    hist->sum += seconds;
}

double sh_histogram_quantile(const sh_histogram_t *hist, double q)
{
    if (!hist->count)
        return 0;
    double rank = q * (double)hist->count;
    uint64_t seen = 0;
    for (size_t i = 0; i <= SH_HISTOGRAM_BUCKETS; i++) {
        if (seen + hist->counts[i] >= rank && hist->counts[i]) {
            double lower = i ? sh_histogram_bounds[i - 1] : 0;
            if (i == SH_HISTOGRAM_BUCKETS)
                return lower;
            double upper = sh_histogram_bounds[i];
            double within = (rank - (double)seen) / (double)hist->counts[i];
            return lower + (upper - lower) * within;
        }
        seen += hist->counts[i];
    }
    return sh_histogram_bounds[SH_HISTOGRAM_BUCKETS - 1];
}

static void s_labels(sh_buf_t *out, const char *base, const char *own, const char *extra)
{
    sh_buf_printf(out, "{%s%s%s%s%s}", base, *own ? "," : "", own, extra ? "," : "",
                  extra ? extra : "");
}

int sh_metrics_render(sh_metrics_t *self, sh_buf_t *out)
{
    static const char *types[] = {"counter", "gauge", "histogram"};
    for (s_family_t *f = self->families; f; f = f->next) {
        sh_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                      types[f->type]);
        for (s_series_t *s = f->series; s; s = s->next) {
            if (f->type == S_HISTOGRAM) {
                uint64_t cumulative = 0;
                for (size_t i = 0; i <= SH_HISTOGRAM_BUCKETS; i++) {
                    char le[48];
                    cumulative += s->v.hist.counts[i];
                    if (i < SH_HISTOGRAM_BUCKETS)
                        snprintf(le, sizeof le, "le=\"%g\"", sh_histogram_bounds[i]);
                    else
                        snprintf(le, sizeof le, "le=\"+Inf\"");
                    sh_buf_printf(out, "%s_bucket", f->name);
                    s_labels(out, self->base_labels, s->labels, le);
                    sh_buf_printf(out, " %llu\n", (unsigned long long)cumulative);
                }
                sh_buf_printf(out, "%s_sum", f->name);
                s_labels(out, self->base_labels, s->labels, NULL);
                sh_buf_printf(out, " %.9g\n%s_count", s->v.hist.sum, f->name);
                s_labels(out, self->base_labels, s->labels, NULL);
                sh_buf_printf(out, " %llu\n", (unsigned long long)s->v.hist.count);
            } else {
                sh_buf_append(out, f->name, strlen(f->name));
                s_labels(out, self->base_labels, s->labels, NULL);
                if (f->type == S_COUNTER)
                    sh_buf_printf(out, " %llu\n", (unsigned long long)s->v.counter);
                else
                    sh_buf_printf(out, " %lld\n", (long long)s->v.gauge);
            }
        }
    }
    return out->data ? 0 : -1;
}

/*  --- merging expositions ---------------------------------------------------  */

typedef struct {
    char name[128];
    sh_buf_t head; /* HELP and TYPE lines, from the first text that has them */
    sh_buf_t body; /* samples from every text */
} s_merge_family_t;

/*  Family name of a "# HELP name ..." or "# TYPE name ..." line.  */
static void s_family_name(const char *line, size_t len, char *out, size_t size)
{
    const char *p = line + 7, *end = line + len;
    size_t n = 0;
    while (p < end && *p != ' ' && n + 1 < size)
        out[n++] = *p++;
    out[n] = 0;
}

int sh_metrics_merge(const char *const *texts, int count, sh_buf_t *out)
{
    s_merge_family_t *families = NULL;
    size_t used = 0, cap = 0;
    int rc = 0;
    for (int t = 0; t < count && rc == 0; t++) {
        s_merge_family_t *current = NULL;
        bool fresh = false; /* current family's header came from this text */
        for (const char *line = texts[t]; line && *line;) {
            const char *nl = strchr(line, '\n');
            size_t len = nl ? (size_t)(nl - line) : strlen(line);
            bool help = len > 7 && strncmp(line, "# HELP ", 7) == 0;
            bool type = len > 7 && strncmp(line, "# TYPE ", 7) == 0;
            if (help || type) {
                char name[128];
                s_family_name(line, len, name, sizeof name);
                if (!current || strcmp(current->name, name) != 0) {
                    current = NULL;
                    for (size_t i = 0; i < used && !current; i++)
                        if (strcmp(families[i].name, name) == 0)
                            current = &families[i];
                    fresh = !current;
                    if (!current) {
                        if (used == cap) {
                            size_t grown = cap ? cap * 2 : 64;
                            s_merge_family_t *more = realloc(families, grown * sizeof *more);
                            if (!more) {
                                rc = -1;
                                break;
                            }
                            families = more;
                            cap = grown;
                        }
                        current = &families[used++];
                        memset(current, 0, sizeof *current);
                        snprintf(current->name, sizeof current->name, "%s", name);
                    }
                }
                if (fresh) {
                    sh_buf_append(&current->head, line, len);
                    sh_buf_append(&current->head, "\n", 1);
                }
            } else if (len && current) {
                sh_buf_append(&current->body, line, len);
                sh_buf_append(&current->body, "\n", 1);
            }
            line = nl ? nl + 1 : line + len;
        }
    }
    for (size_t i = 0; i < used; i++) {
        if (rc == 0) {
            if (families[i].head.len)
                sh_buf_append(out, families[i].head.data, families[i].head.len);
            if (families[i].body.len)
                sh_buf_append(out, families[i].body.data, families[i].body.len);
        }
        sh_buf_free(&families[i].head);
        sh_buf_free(&families[i].body);
    }
    free(families);
    return rc;
}

void sh_backend_metrics_init(sh_backend_metrics_t *self, sh_metrics_t *metrics, const char *labels)
{
    static const struct {
        const char *name, *help;
    } series[] = {
        {"shoal_backend_calls_total", "Calls made to a backing store"},
        {"shoal_backend_errors_total", "Backing store calls that failed"},
        {"shoal_backend_timeouts_total", "Backing store calls that passed their deadline"},
        {"shoal_backend_late_replies_total", "Replies that arrived after their deadline"},
        {"shoal_backend_connects_total", "Connection attempts to a backing store"},
        {"shoal_backend_refused_total",
         "Calls refused because the store was unreachable or too busy"},
        {"shoal_backend_retries_total",
         "Backing store calls tried again after a transient failure"},
    };
    uint64_t **slots[] = {&self->calls,    &self->errors,  &self->timeouts, &self->late,
                          &self->connects, &self->refused, &self->retries};
    _Static_assert(SH_ARRAY_SIZE(series) == SH_ARRAY_SIZE(slots), "one slot per series");
    _Static_assert(SH_ARRAY_SIZE(slots) == SH_ARRAY_SIZE(self->own), "own storage per slot");
    for (size_t i = 0; i < SH_ARRAY_SIZE(slots); i++) {
        *slots[i] =
            metrics ? sh_metrics_counter(metrics, series[i].name, series[i].help, labels) : NULL;
        if (!*slots[i])
            *slots[i] = &self->own[i];
    }
    self->latency = metrics ? sh_metrics_histogram(metrics, "shoal_backend_seconds",
                                                   "Backing store call latency", labels)
                            : NULL;
    if (!self->latency)
        self->latency = &self->own_latency;
}
