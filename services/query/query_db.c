/*  query_db.c - libpq adapter: connection pools to the primary and the
    replica on the event loop, pipelined calls, replica lag tracking and
    migrations.

    A call on a connection is one pipeline:
        set_config('statement_timeout') ; the statement ; SYNC
        [writes: pg_current_wal_insert_lsn() ; SYNC]
    The LSN is read after the first SYNC, i.e. after the commit, so a
    replica that replayed past it sees the write.

    Lag: the primary's insert LSN is sampled every QUERY_PROBE_MS and kept in
    a ring; the replica's replay LSN is probed as often. The replica lags by
    the age of the newest primary sample it has not replayed yet.
*/
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libpq-fe.h>

#include "query_db.h"
#include "sh_codec.h"
#include "sh_log.h"
#include "sh_util.h"

#define QUERY_PROBE_MS       50
#define QUERY_PROBE_STALE_MS 1000 /* a replica not heard from this long is out */
/*  primary down: how long a read waits for the replica to replay the
    caller's write (short: the edge may try a second instance within its
    own deadline)  */
#define QUERY_REPLAY_WAIT_MS   250
#define QUERY_SAMPLES          128 /* primary LSN samples kept (6.4 s at 50 ms) */
#define QUERY_TICK_MS          10
#define QUERY_RECONNECT_MIN_MS 100
#define QUERY_RECONNECT_MAX_MS 2000
#define QUERY_STALL_GRACE_MS   1000 /* beyond statement_timeout: the server stopped answering */
#define QUERY_PAUSE_MS         200  /* a tick this late: this process did not run */
#define QUERY_WAL_PAGE         8192 /* XLOG_BLCKSZ */
#define QUERY_WAL_PAGE_HEADER  40   /* SizeOfXLogLongPHD: the most a page header adds */
#define QUERY_MAX_POOL         32
#define QUERY_MAX_PARAMS       9
#define QUERY_PARAM_MAX        (SH_TEXT_MAX + 1)
#define QUERY_MIGRATE_LOCK     "7431001" /* pg_advisory_lock key of the migrations */
#define QUERY_MIGRATE_RETRY_MS 250

#define QUERY_STMT_SQL(name, writes, sql) sql,
static const char *const s_sql[] = {QUERY_STATEMENTS(QUERY_STMT_SQL)};
#define QUERY_STMT_WRITES(name, writes, sql) writes,
static const bool s_writes[] = {QUERY_STATEMENTS(QUERY_STMT_WRITES)};
#define QUERY_STMT_NAME(name, writes, sql) #name,
static const char *const s_names[] = {QUERY_STATEMENTS(QUERY_STMT_NAME)};

/*  Internal statements every connection prepares besides QUERY_STATEMENTS.  */
#define S_TIMEOUT_NAME "set_timeout"
#define S_TIMEOUT_SQL  "SELECT set_config('statement_timeout', $1, false)"
#define S_LSN_NAME     "lsn"
#define S_LSN_SQL      "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
#define S_REPLAY_NAME  "replay"
#define S_REPLAY_SQL \
    "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, pg_is_in_recovery()"

typedef enum { S_PRIMARY, S_REPLICA, S_ROLES } s_role_t;
static const char *const s_role_names[] = {QUERY_SOURCE_PRIMARY, QUERY_SOURCE_REPLICA};

typedef enum { S_DOWN, S_CONNECTING, S_PREPARING, S_READY, S_BUSY } s_state_t;

typedef enum { S_CALL_USER, S_CALL_PROBE } s_call_kind_t;

struct query_rows_t {
    PGresult *res;
};

/*  A call waiting for, or running on, a connection. Parameters are copied.  */
typedef struct s_call_t {
    struct s_call_t *next;
    s_call_kind_t kind;
    query_stmt_t stmt;
    bool write;
    bool read; /* may move to the other server if its connection breaks */
    bool primary_only;
    uint64_t min_lsn;
    int nparams;
    char *params[QUERY_MAX_PARAMS];
    int64_t deadline_ms; /* monotonic */
    int64_t started_ms;
    query_db_fn *fn;
    void *arg;
    bool answered;
    uint64_t seen_lsn;     /* replica reads: its replay LSN when the call was routed */
    int64_t wait_until_ms; /* waiting for the replica to replay min_lsn (monotonic) */
} s_call_t;

/*  What a pipeline still has to hand back, in order.  */
typedef enum { S_EXPECT_RESULT, S_EXPECT_END, S_EXPECT_SYNC } s_expect_t;
#define S_EXPECT_MAX 8

typedef struct {
    struct query_db_t *db;
    s_role_t role;
    int index;
    PGconn *pg;
    s_state_t state;
    int fd;
    sh_loop_item_t *item;
    int64_t state_since_ms;
    int64_t reconnect_at_ms;
    int64_t backoff_ms;
    s_call_t *call;
    s_expect_t expect[S_EXPECT_MAX];
    int expect_count;
    int expect_at;
    int results_seen; /* results of the current pipeline so far */
    PGresult *main;   /* the statement's result */
    PGresult *lsn;    /* the write's LSN */
    bool failed;      /* some result of the pipeline was an error */
    uint64_t status;  /* mapped from the first error */
    char error[SH_ERROR_MAX];
} s_conn_t;

typedef struct {
    const char *conninfo;
    s_conn_t conns[QUERY_MAX_POOL];
    s_call_t *queue_head, *queue_tail;
    int64_t queued;
    int64_t last_probe_ok_ms; /* monotonic, 0 never */
    uint64_t lsn;             /* primary: insert LSN; replica: replay LSN */
    bool probing;
    bool recovery; /* the server says it is a standby */
    int64_t *up_gauge;
    int64_t *lag_gauge;
    sh_backend_metrics_t m;
} s_server_t;

struct query_db_t {
    sh_loop_t *loop;
    query_db_config_t config;
    s_server_t servers[S_ROLES];
    bool has_replica;
    int timer;
    int64_t last_tick_ms;
    int64_t stall_grace_until_ms;
    int64_t last_probe_ms;
    struct {
        int64_t at_ms;
        uint64_t lsn;
    } samples[QUERY_SAMPLES];
    int sample_next;
    int sample_count;
    int64_t replica_lag_ms;
    uint64_t *rerouted;
    s_call_t *waiting; /* reads waiting for the replica to replay their min_lsn */
    int64_t nwaiting;
};

static void s_recheck_waiting(query_db_t *self);
static void s_probe(query_db_t *self, s_role_t role);

/*  --- results -------------------------------------------------------------  */

int query_rows_count(const query_rows_t *rows)
{
    return rows && rows->res ? PQntuples(rows->res) : 0;
}

const char *query_rows_text(const query_rows_t *rows, int row, int col)
{
    if (!rows || !rows->res || row >= PQntuples(rows->res) || col >= PQnfields(rows->res) ||
        PQgetisnull(rows->res, row, col))
        return "";
    return PQgetvalue(rows->res, row, col);
}

int64_t query_rows_int(const query_rows_t *rows, int row, int col)
{
    int64_t v = 0;
    if (sh_parse_int(query_rows_text(rows, row, col), INT64_MIN, INT64_MAX, &v))
        return 0;
    return v;
}

/*  --- calls -----------------------------------------------------------------  */

static void s_call_free(s_call_t *call)
{
    for (int i = 0; i < call->nparams; i++)
        free(call->params[i]);
    free(call);
}

static void s_answer(s_call_t *call, uint64_t status, const char *error, PGresult *res,
                     uint64_t lsn, s_role_t role)
{
    if (call->answered || !call->fn)
        return;
    call->answered = true;
    query_rows_t rows = {res};
    query_outcome_t out = {status, error ? error : "", status == SH_STATUS_OK ? &rows : NULL,
                           lsn,    s_role_names[role], role == S_REPLICA ? call->seen_lsn : 0};
    call->fn(call->arg, &out);
}

/*  SQLSTATE to status: the classes a caller can act on.  */
static uint64_t s_status_of(const char *sqlstate)
{
    if (!sqlstate)
        return SH_STATUS_UNAVAILABLE;
    if (strcmp(sqlstate, "23505") == 0)
        return SH_STATUS_CONFLICT; /* unique_violation */
    if (strcmp(sqlstate, "23503") == 0 || strncmp(sqlstate, "22", 2) == 0)
        return SH_STATUS_INVALID; /* foreign key, data exception */
    if (strcmp(sqlstate, "57014") == 0)
        return SH_STATUS_TIMEOUT; /* statement_timeout */
    if (strncmp(sqlstate, "08", 2) == 0 || strncmp(sqlstate, "57P", 3) == 0 ||
        strcmp(sqlstate, "25006") == 0 || strncmp(sqlstate, "53", 2) == 0)
        return SH_STATUS_UNAVAILABLE; /* connection, shutdown, read-only, resources */
    return SH_STATUS_INTERNAL;
}

static const char *s_status_text(uint64_t status)
{
    switch (status) {
    case SH_STATUS_CONFLICT:
        return "conflicts with existing data";
    case SH_STATUS_INVALID:
        return "invalid value";
    case SH_STATUS_TIMEOUT:
        return "database statement timed out";
    case SH_STATUS_UNAVAILABLE:
        return "database unavailable";
    default:
        return "database error";
    }
}

/*  --- connections -------------------------------------------------------------  */

static void s_dispatch(query_db_t *self, s_role_t role);
static int s_on_io(sh_loop_t *loop, short revents, void *arg);
static void s_fail_or_reroute(query_db_t *self, s_role_t role, s_call_t *call, uint64_t status,
                              const char *why);

static void s_watch(s_conn_t *conn, short events)
{
    query_db_t *self = conn->db;
    int fd = conn->pg ? PQsocket(conn->pg) : -1;
    if (conn->item && fd != conn->fd)
        sh_loop_remove(self->loop, &conn->item);
    conn->fd = fd;
    if (fd < 0)
        return;
    if (!conn->item) {
        conn->item = sh_loop_add_fd(self->loop, fd, events, s_on_io, conn);
    } else
        sh_loop_set_events(conn->item, events);
}

static void s_set_state(s_conn_t *conn, s_state_t state)
{
    conn->state = state;
    conn->state_since_ms = sh_clock_mono_ms();
}

static bool s_ready_any(const s_server_t *server, int pool)
{
    for (int i = 0; i < pool; i++)
        if (server->conns[i].state == S_READY || server->conns[i].state == S_BUSY)
            return true;
    return false;
}

/*  Close the connection; its call (if any) fails or moves to the other server.  */
static void s_drop(s_conn_t *conn, const char *why)
{
    query_db_t *self = conn->db;
    if (conn->state != S_CONNECTING)
        sh_warn("postgres %s #%d: %s", s_role_names[conn->role], conn->index, why);
    if (conn->item)
        sh_loop_remove(self->loop, &conn->item);
    conn->fd = -1;
    if (conn->pg)
        PQfinish(conn->pg);
    conn->pg = NULL;
    PQclear(conn->main);
    PQclear(conn->lsn);
    conn->main = conn->lsn = NULL;
    s_call_t *call = conn->call;
    conn->call = NULL;
    s_set_state(conn, S_DOWN);
    conn->reconnect_at_ms = sh_clock_mono_ms() + conn->backoff_ms;
    conn->backoff_ms = conn->backoff_ms * 2 > QUERY_RECONNECT_MAX_MS ? QUERY_RECONNECT_MAX_MS
                                                                     : conn->backoff_ms * 2;
    s_server_t *server = &self->servers[conn->role];
    int64_t was_up = *server->up_gauge;
    *server->up_gauge = 0;
    for (int i = 0; i < self->config.pool; i++)
        if (server->conns[i].state == S_READY || server->conns[i].state == S_BUSY)
            *server->up_gauge += 1;
    if (was_up > 0 && *server->up_gauge == 0) {
        sh_warn("postgres %s down: no live connection", s_role_names[conn->role]);
        /*  a restarted standby may show less than it did: trust only new probes  */
        server->lsn = 0;
        server->last_probe_ok_ms = 0;
        server->recovery = false;
    }
    if (call) {
        if (call->kind == S_CALL_PROBE)
            server->probing = false;
        s_fail_or_reroute(self, conn->role, call, SH_STATUS_UNAVAILABLE, "database unavailable");
    }
    /*  with no live connection left, waiting calls would only time out  */
    if (!s_ready_any(server, self->config.pool))
        while (server->queue_head) {
            s_call_t *q = server->queue_head;
            server->queue_head = q->next;
            server->queued--;
            s_fail_or_reroute(self, conn->role, q, SH_STATUS_UNAVAILABLE, "database unavailable");
        }
    if (!server->queue_head)
        server->queue_tail = NULL;
}

static void s_connect(s_conn_t *conn)
{
    query_db_t *self = conn->db;
    s_server_t *server = &self->servers[conn->role];
    (*server->m.connects)++;
    conn->pg = PQconnectStart(server->conninfo);
    if (!conn->pg || PQstatus(conn->pg) == CONNECTION_BAD) {
        s_set_state(conn, S_CONNECTING);
        s_drop(conn, conn->pg ? PQerrorMessage(conn->pg) : "out of memory");
        return;
    }
    PQsetnonblocking(conn->pg, 1);
    s_set_state(conn, S_CONNECTING);
    conn->fd = -1;
    s_watch(conn, SH_LOOP_OUT);
}

/*  Send the pipeline and remember what comes back. Returns 0 or -1.  */
static int s_send_prepares(s_conn_t *conn)
{
    PGconn *pg = conn->pg;
    bool replica = conn->role == S_REPLICA;
    int rc = PQenterPipelineMode(pg) ? 0 : -1;
    conn->expect_count = conn->expect_at = 0;
    const char *names[] = {S_TIMEOUT_NAME, S_LSN_NAME, S_REPLAY_NAME};
    const char *sqls[] = {S_TIMEOUT_SQL, S_LSN_SQL, S_REPLAY_SQL};
    for (size_t i = 0; rc == 0 && i < SH_ARRAY_SIZE(names); i++) {
        if (replica && strcmp(names[i], S_LSN_NAME) == 0)
            continue;
        rc = PQsendPrepare(pg, names[i], sqls[i], 0, NULL) ? 0 : -1;
    }
    /*  a standby refuses nothing at prepare time, but writes are never sent there  */
    for (int i = 0; rc == 0 && i < QUERY_STMT_COUNT; i++)
        if (!(replica && s_writes[i]))
            rc = PQsendPrepare(pg, s_names[i], s_sql[i], 0, NULL) ? 0 : -1;
    if (rc == 0)
        rc = PQpipelineSync(pg) ? 0 : -1;
    return rc;
}

static void s_expect(s_conn_t *conn, s_expect_t what)
{
    assert(conn->expect_count < S_EXPECT_MAX);
    conn->expect[conn->expect_count++] = what;
}

static int s_flush(s_conn_t *conn)
{
    int rc = PQflush(conn->pg);
    if (rc < 0)
        return -1;
    s_watch(conn, rc == 1 ? (SH_LOOP_IN | SH_LOOP_OUT) : SH_LOOP_IN);
    return 0;
}

static void s_start_call(s_conn_t *conn, s_call_t *call)
{
    query_db_t *self = conn->db;
    int64_t now = sh_clock_mono_ms();
    int64_t left = call->deadline_ms - now;
    if (left > self->config.timeout_ms)
        left = self->config.timeout_ms;
    if (left < 1)
        left = 1;
    char timeout[24];
    snprintf(timeout, sizeof timeout, "%lld", (long long)left);
    const char *tp[1] = {timeout};
    PGconn *pg = conn->pg;
    conn->call = call;
    conn->expect_count = conn->expect_at = 0;
    conn->results_seen = 0;
    conn->failed = false;
    conn->status = SH_STATUS_OK;
    conn->error[0] = 0;
    int rc = PQsendQueryPrepared(pg, S_TIMEOUT_NAME, 1, tp, NULL, NULL, 0) ? 0 : -1;
    s_expect(conn, S_EXPECT_RESULT);
    s_expect(conn, S_EXPECT_END);
    if (call->kind == S_CALL_PROBE) {
        const char *name = conn->role == S_PRIMARY ? S_LSN_NAME : S_REPLAY_NAME;
        rc |= PQsendQueryPrepared(pg, name, 0, NULL, NULL, NULL, 0) ? 0 : -1;
    } else
        rc |= PQsendQueryPrepared(pg, s_names[call->stmt], call->nparams,
                                  (const char *const *)call->params, NULL, NULL, 0)
                  ? 0
                  : -1;
    s_expect(conn, S_EXPECT_RESULT);
    s_expect(conn, S_EXPECT_END);
    rc |= PQpipelineSync(pg) ? 0 : -1;
    s_expect(conn, S_EXPECT_SYNC);
    if (call->write) {
        rc |= PQsendQueryPrepared(pg, S_LSN_NAME, 0, NULL, NULL, NULL, 0) ? 0 : -1;
        s_expect(conn, S_EXPECT_RESULT);
        s_expect(conn, S_EXPECT_END);
        rc |= PQpipelineSync(pg) ? 0 : -1;
        s_expect(conn, S_EXPECT_SYNC);
    }
    s_set_state(conn, S_BUSY);
    if (rc || s_flush(conn))
        s_drop(conn, PQerrorMessage(pg));
}

/*  The whole pipeline came back: answer the call, take the next one.  */
static void s_complete(s_conn_t *conn)
{
    query_db_t *self = conn->db;
    s_server_t *server = &self->servers[conn->role];
    s_call_t *call = conn->call;
    conn->call = NULL;
    s_set_state(conn, S_READY);
    conn->backoff_ms = QUERY_RECONNECT_MIN_MS;
    int64_t now = sh_clock_mono_ms();
    if (call && call->kind == S_CALL_PROBE) {
        server->probing = false;
        if (!conn->failed && conn->main && PQntuples(conn->main) == 1) {
            int64_t lsn = 0;
            sh_parse_int(PQgetvalue(conn->main, 0, 0), 0, INT64_MAX, &lsn);
            server->lsn = (uint64_t)lsn;
            server->last_probe_ok_ms = now;
            server->recovery = conn->role == S_REPLICA && PQnfields(conn->main) > 1 &&
                               PQgetvalue(conn->main, 0, 1)[0] == 't';
            if (conn->role == S_REPLICA && self->waiting)
                s_recheck_waiting(self);
            if (conn->role == S_PRIMARY) {
                self->samples[self->sample_next].at_ms = now;
                self->samples[self->sample_next].lsn = (uint64_t)lsn;
                self->sample_next = (self->sample_next + 1) % QUERY_SAMPLES;
                if (self->sample_count < QUERY_SAMPLES)
                    self->sample_count++;
            }
        }
        s_call_free(call);
    } else if (call) {
        sh_histogram_observe(server->m.latency, (double)(now - call->started_ms) / 1e3);
        if (conn->failed) {
            (*server->m.errors)++;
            s_fail_or_reroute(self, conn->role, call, conn->status,
                              conn->error[0] ? conn->error : s_status_text(conn->status));
        } else {
            int64_t lsn = 0;
            if (conn->lsn && PQntuples(conn->lsn) == 1)
                sh_parse_int(PQgetvalue(conn->lsn, 0, 0), 0, INT64_MAX, &lsn);
            s_answer(call, SH_STATUS_OK, NULL, conn->main, (uint64_t)lsn, conn->role);
            s_call_free(call);
        }
    }
    PQclear(conn->main);
    PQclear(conn->lsn);
    conn->main = conn->lsn = NULL;
    s_dispatch(self, conn->role);
}

/*  One result (or end marker) of the pipeline.  */
static void s_on_result(s_conn_t *conn, PGresult *res)
{
    if (conn->expect_at >= conn->expect_count) {
        PQclear(res); /* nothing expected: a notice-only result, ignore */
        return;
    }
    s_expect_t want = conn->expect[conn->expect_at++];
    if (want == S_EXPECT_END) {
        PQclear(res);
        return;
    }
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (want == S_EXPECT_SYNC) {
        PQclear(res);
        if (conn->expect_at == conn->expect_count)
            s_complete(conn);
        return;
    }
    int nth = conn->results_seen++;
    if (st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED || st == PGRES_BAD_RESPONSE) {
        if (!conn->failed && st != PGRES_PIPELINE_ABORTED) {
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            conn->status = s_status_of(state);
            if (conn->status == SH_STATUS_INTERNAL || conn->status == SH_STATUS_UNAVAILABLE)
                sh_warn("postgres %s: %s: %.200s", s_role_names[conn->role], state ? state : "-",
                        PQresultErrorMessage(res));
            snprintf(conn->error, sizeof conn->error, "%s", s_status_text(conn->status));
        }
        conn->failed = true;
        PQclear(res);
        return;
    }
    if (nth == 1)
        conn->main = res;
    else if (nth == 2)
        conn->lsn = res;
    else
        PQclear(res);
}

static void s_read_results(s_conn_t *conn)
{
    while (conn->pg && !PQisBusy(conn->pg)) {
        PGresult *res = PQgetResult(conn->pg);
        s_state_t before = conn->state;
        if (!res && conn->expect_at < conn->expect_count &&
            conn->expect[conn->expect_at] != S_EXPECT_END)
            break; /* nothing more yet */
        if (before == S_PREPARING) {
            if (res && PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
                PQclear(res);
                s_set_state(conn, S_READY);
                conn->backoff_ms = QUERY_RECONNECT_MIN_MS;
                s_server_t *server = &conn->db->servers[conn->role];
                if ((*server->up_gauge)++ == 0)
                    sh_info("postgres %s up", s_role_names[conn->role]);
                s_dispatch(conn->db, conn->role);
                return;
            }
            if (res && PQresultStatus(res) == PGRES_FATAL_ERROR) {
                sh_warn("postgres %s: prepare failed: %.200s", s_role_names[conn->role],
                        PQresultErrorMessage(res));
                PQclear(res);
                s_drop(conn, "cannot prepare statements");
                return;
            }
            PQclear(res);
            continue;
        }
        if (before != S_BUSY) {
            PQclear(res);
            if (!res)
                break;
            continue;
        }
        s_on_result(conn, res);
        if (conn->state != S_BUSY)
            return; /* completed (the next call may have started) or dropped */
    }
}

static void s_on_connect_poll(s_conn_t *conn)
{
    switch (PQconnectPoll(conn->pg)) {
    case PGRES_POLLING_READING:
        s_watch(conn, SH_LOOP_IN);
        return;
    case PGRES_POLLING_WRITING:
        s_watch(conn, SH_LOOP_OUT);
        return;
    case PGRES_POLLING_OK:
        if (s_send_prepares(conn) || s_flush(conn)) {
            s_drop(conn, PQerrorMessage(conn->pg));
            return;
        }
        s_set_state(conn, S_PREPARING);
        return;
    default: {
        char why[SH_ERROR_MAX];
        snprintf(why, sizeof why, "connect failed: %s", PQerrorMessage(conn->pg));
        size_t n = strlen(why);
        while (n && (why[n - 1] == '\n' || why[n - 1] == '\r'))
            why[--n] = 0;
        /*  log a failed attempt once per outage, not per retry  */
        if (conn->backoff_ms == QUERY_RECONNECT_MIN_MS && conn->index == 0)
            sh_warn("postgres %s: %s", s_role_names[conn->role], why);
        s_drop(conn, why);
    }
    }
}

static int s_on_io(sh_loop_t *loop, short revents, void *arg)
{
    (void)loop;
    s_conn_t *conn = arg;
    if (!conn->pg)
        return 0;
    if (conn->state == S_CONNECTING) {
        s_on_connect_poll(conn);
        return 0;
    }
    if (revents & SH_LOOP_OUT) {
        if (s_flush(conn)) {
            s_drop(conn, PQerrorMessage(conn->pg));
            return 0;
        }
    }
    if (revents & (SH_LOOP_IN | SH_LOOP_ERR)) {
        if (!PQconsumeInput(conn->pg)) {
            s_drop(conn, "connection lost");
            return 0;
        }
        s_read_results(conn);
        if (conn->pg && PQstatus(conn->pg) == CONNECTION_BAD)
            s_drop(conn, "connection lost");
    }
    return 0;
}

/*  --- routing ---------------------------------------------------------------  */

static void s_enqueue(query_db_t *self, s_role_t role, s_call_t *call)
{
    s_server_t *server = &self->servers[role];
    call->next = NULL;
    if (server->queue_tail)
        server->queue_tail->next = call;
    else
        server->queue_head = call;
    server->queue_tail = call;
    server->queued++;
    s_dispatch(self, role);
}

static void s_dispatch(query_db_t *self, s_role_t role)
{
    s_server_t *server = &self->servers[role];
    for (int i = 0; i < self->config.pool && server->queue_head; i++) {
        s_conn_t *conn = &server->conns[i];
        if (conn->state != S_READY)
            continue;
        s_call_t *call = server->queue_head;
        server->queue_head = call->next;
        if (!server->queue_head)
            server->queue_tail = NULL;
        server->queued--;
        if (call->answered) {
            s_call_free(call); /* timed out while queued */
            i--;
            continue;
        }
        s_start_call(conn, call);
    }
}

/*  True when the replica is live and has replayed past min_lsn (lag aside).  */
static bool s_replica_has(const query_db_t *self, uint64_t min_lsn)
{
    const s_server_t *replica = &self->servers[S_REPLICA];
    if (!self->has_replica || !s_ready_any(replica, self->config.pool) || !replica->recovery)
        return false;
    if (replica->lsn >= min_lsn)
        return true;
    /*  The write's LSN may sit just past a page header the replica has not
        needed yet: a replay position on a page boundary within a header of
        it has replayed everything before.  */
    return replica->lsn % QUERY_WAL_PAGE == 0 && min_lsn - replica->lsn <= QUERY_WAL_PAGE_HEADER;
}

/*  True when a read needing min_lsn should go to the replica: it has the
    data, answered a probe lately and does not lag beyond the bound.  */
static bool s_replica_fresh(const query_db_t *self, uint64_t min_lsn)
{
    const s_server_t *replica = &self->servers[S_REPLICA];
    return s_replica_has(self, min_lsn) &&
           sh_clock_mono_ms() - replica->last_probe_ok_ms <= QUERY_PROBE_STALE_MS &&
           self->replica_lag_ms <= self->config.max_lag_ms;
}

static void s_submit(query_db_t *self, s_role_t role, s_call_t *call)
{
    s_server_t *server = &self->servers[role];
    if (role == S_REPLICA)
        call->seen_lsn = server->lsn;
    (*server->m.calls)++;
    if (!s_ready_any(server, self->config.pool)) {
        s_fail_or_reroute(self, role, call, SH_STATUS_UNAVAILABLE, "database unavailable");
        return;
    }
    if (server->queued >= self->config.max_pending) {
        s_answer(call, SH_STATUS_UNAVAILABLE, "database busy", NULL, 0, role);
        s_call_free(call);
        return;
    }
    s_enqueue(self, role, call);
}

/*  A read whose server failed may still be served by the other one, once.  */
static void s_fail_or_reroute(query_db_t *self, s_role_t role, s_call_t *call, uint64_t status,
                              const char *why)
{
    if (call->kind == S_CALL_PROBE) {
        self->servers[role].probing = false;
        s_call_free(call);
        return;
    }
    s_role_t other = role == S_PRIMARY ? S_REPLICA : S_PRIMARY;
    bool may_move = call->read && !call->answered && status == SH_STATUS_UNAVAILABLE &&
                    !call->primary_only && sh_clock_mono_ms() < call->deadline_ms &&
                    (other == S_PRIMARY ? s_ready_any(&self->servers[other], self->config.pool)
                                        : s_replica_has(self, call->min_lsn));
    if (may_move) {
        call->read = false; /* once */
        (*self->rerouted)++;
        s_submit(self, other, call);
        return;
    }
    s_answer(call, status, why, NULL, 0, role);
    s_call_free(call);
}

/*  A call with its parameters copied, or NULL when out of memory (fn has
    then been answered).  */
static s_call_t *s_call_new(query_stmt_t stmt, int nparams, const char *const *params,
                            int64_t timeout_ms, query_db_fn *fn, void *arg)
{
    assert(nparams <= QUERY_MAX_PARAMS);
    s_call_t *call = calloc(1, sizeof *call);
    if (!call) {
        query_outcome_t out = {
            SH_STATUS_INTERNAL, "out of memory", NULL, 0, QUERY_SOURCE_PRIMARY, 0};
        fn(arg, &out);
        return NULL;
    }
    call->kind = S_CALL_USER;
    call->stmt = stmt;
    call->fn = fn;
    call->arg = arg;
    call->started_ms = sh_clock_mono_ms();
    call->deadline_ms = call->started_ms + (timeout_ms > 0 ? timeout_ms : 1);
    for (int i = 0; i < nparams; i++) {
        call->params[i] = strdup(params[i] ? params[i] : "");
        call->nparams = i + 1;
        if (!call->params[i]) {
            s_answer(call, SH_STATUS_INTERNAL, "out of memory", NULL, 0, S_PRIMARY);
            s_call_free(call);
            return NULL;
        }
    }
    return call;
}

void query_db_write(query_db_t *self, query_stmt_t stmt, int nparams, const char *const *params,
                    int64_t timeout_ms, query_db_fn *fn, void *arg)
{
    assert(s_writes[stmt]);
    s_call_t *call = s_call_new(stmt, nparams, params, timeout_ms, fn, arg);
    if (!call)
        return;
    call->write = true;
    s_submit(self, S_PRIMARY, call);
}

static void s_refuse_unreplayed(query_db_t *self, s_call_t *call)
{
    (*self->servers[S_PRIMARY].m.calls)++;
    s_answer(call, SH_STATUS_UNAVAILABLE,
             "primary unavailable and the replica has not caught up with your last write", NULL, 0,
             S_REPLICA);
    s_call_free(call);
}

/*  Route the reads that wait for the replica: to it once it replayed
    their write, to the primary if it is back, else refused when their
    wait is over.  */
static void s_recheck_waiting(query_db_t *self)
{
    int64_t now = sh_clock_mono_ms();
    s_call_t **link = &self->waiting;
    while (*link) {
        s_call_t *call = *link;
        s_role_t role;
        if (s_replica_has(self, call->min_lsn))
            role = S_REPLICA;
        else if (s_ready_any(&self->servers[S_PRIMARY], self->config.pool))
            role = S_PRIMARY;
        else if (now >= call->wait_until_ms)
            role = S_ROLES;
        else {
            link = &call->next;
            continue;
        }
        *link = call->next;
        call->next = NULL;
        self->nwaiting--;
        if (role == S_ROLES)
            s_refuse_unreplayed(self, call);
        else
            s_submit(self, role, call);
    }
}

void query_db_read(query_db_t *self, query_stmt_t stmt, uint64_t min_lsn, int nparams,
                   const char *const *params, int64_t timeout_ms, query_db_fn *fn, void *arg)
{
    assert(!s_writes[stmt]);
    s_call_t *call = s_call_new(stmt, nparams, params, timeout_ms, fn, arg);
    if (!call)
        return;
    call->read = true;
    call->min_lsn = min_lsn;
    s_role_t role = S_PRIMARY;
    if (s_replica_fresh(self, min_lsn))
        role = S_REPLICA;
    else if (!s_ready_any(&self->servers[S_PRIMARY], self->config.pool)) {
        /*  primary down: a lagging replica beats none, but never one older
            than the caller's own last write  */
        if (s_replica_has(self, min_lsn))
            role = S_REPLICA;
        else if (min_lsn && self->has_replica &&
                 s_ready_any(&self->servers[S_REPLICA], self->config.pool)) {
            /*  the replica may have it already (probes are 50 ms apart) or
                soon: wait a little, asking again, before refusing  */
            if (self->nwaiting >= self->config.max_pending) {
                s_refuse_unreplayed(self, call);
                return;
            }
            int64_t now = sh_clock_mono_ms();
            call->wait_until_ms = now + QUERY_REPLAY_WAIT_MS < call->deadline_ms
                                      ? now + QUERY_REPLAY_WAIT_MS
                                      : call->deadline_ms;
            call->next = self->waiting;
            self->waiting = call;
            self->nwaiting++;
            s_probe(self, S_REPLICA);
            return;
        }
    }
    s_submit(self, role, call);
}

void query_db_read_primary(query_db_t *self, query_stmt_t stmt, int nparams,
                           const char *const *params, int64_t timeout_ms, query_db_fn *fn,
                           void *arg)
{
    s_call_t *call = s_call_new(stmt, nparams, params, timeout_ms, fn, arg);
    if (!call)
        return;
    call->primary_only = true;
    s_submit(self, S_PRIMARY, call);
}

bool query_db_writable(const query_db_t *self)
{
    return s_ready_any(&self->servers[S_PRIMARY], self->config.pool);
}

bool query_db_readable(const query_db_t *self)
{
    return query_db_writable(self) ||
           (self->has_replica && s_ready_any(&self->servers[S_REPLICA], self->config.pool));
}

/*  --- housekeeping --------------------------------------------------------------  */

static void s_probe(query_db_t *self, s_role_t role)
{
    s_server_t *server = &self->servers[role];
    if (server->probing || !s_ready_any(server, self->config.pool))
        return;
    s_call_t *call = calloc(1, sizeof *call);
    if (!call)
        return;
    call->kind = S_CALL_PROBE;
    call->started_ms = sh_clock_mono_ms();
    call->deadline_ms = call->started_ms + QUERY_PROBE_STALE_MS;
    server->probing = true;
    /*  probes go first: they decide where reads go  */
    call->next = server->queue_head;
    server->queue_head = call;
    if (!server->queue_tail)
        server->queue_tail = call;
    server->queued++;
    s_dispatch(self, role);
}

static void s_update_lag(query_db_t *self)
{
    const s_server_t *replica = &self->servers[S_REPLICA];
    int64_t now = sh_clock_mono_ms();
    int64_t lag = 0;
    /*  the newest primary sample not yet replayed: the replica is as old as it  */
    int64_t oldest_unreplayed = 0;
    for (int i = 0; i < self->sample_count; i++) {
        int at = (self->sample_next - 1 - i + QUERY_SAMPLES) % QUERY_SAMPLES;
        if (self->samples[at].lsn <= replica->lsn)
            break;
        oldest_unreplayed = self->samples[at].at_ms;
    }
    if (oldest_unreplayed)
        lag = now - oldest_unreplayed;
    self->replica_lag_ms = lag;
    *self->servers[S_REPLICA].lag_gauge = lag;
}

static int s_on_tick(sh_loop_t *loop, void *arg)
{
    (void)loop;
    query_db_t *self = arg;
    int64_t now = sh_clock_mono_ms();
    if (self->last_tick_ms && now - self->last_tick_ms > QUERY_PAUSE_MS)
        self->stall_grace_until_ms = now + QUERY_STALL_GRACE_MS;
    self->last_tick_ms = now;
    for (int r = 0; r < S_ROLES; r++) {
        s_server_t *server = &self->servers[r];
        if (r == S_REPLICA && !self->has_replica)
            continue;
        /*  answer calls whose deadline passed while they waited  */
        for (s_call_t *c = server->queue_head; c; c = c->next)
            if (!c->answered && c->kind == S_CALL_USER && c->deadline_ms <= now) {
                (*server->m.timeouts)++;
                s_answer(c, SH_STATUS_TIMEOUT, "database call timed out", NULL, 0, (s_role_t)r);
            }
        for (int i = 0; i < self->config.pool; i++) {
            s_conn_t *conn = &server->conns[i];
            switch (conn->state) {
            case S_DOWN:
                if (now >= conn->reconnect_at_ms)
                    s_connect(conn);
                break;
            case S_CONNECTING:
            case S_PREPARING:
                if (now - conn->state_since_ms > self->config.connect_timeout_ms)
                    s_drop(conn, "connect timed out");
                break;
            case S_BUSY:
                if (conn->call && conn->call->kind == S_CALL_USER && !conn->call->answered &&
                    conn->call->deadline_ms <= now) {
                    (*server->m.timeouts)++;
                    s_answer(conn->call, SH_STATUS_TIMEOUT, "database call timed out", NULL, 0,
                             (s_role_t)r);
                }
                /*  statement_timeout ends any statement; silence past it
                    means the server or the network stopped  */
                if (now >= self->stall_grace_until_ms &&
                    now - conn->state_since_ms > self->config.timeout_ms + QUERY_STALL_GRACE_MS)
                    s_drop(conn, "no reply in time");
                break;
            default:
                break;
            }
        }
    }
    s_recheck_waiting(self);
    if (now - self->last_probe_ms >= QUERY_PROBE_MS) {
        self->last_probe_ms = now;
        s_probe(self, S_PRIMARY);
        if (self->has_replica) {
            s_probe(self, S_REPLICA);
            s_update_lag(self);
        }
    }
    return 0;
}

/*  --- lifecycle -----------------------------------------------------------------  */

static void s_server_init(query_db_t *self, s_role_t role, const char *conninfo,
                          sh_metrics_t *metrics)
{
    s_server_t *server = &self->servers[role];
    server->conninfo = conninfo;
    char labels[64];
    snprintf(labels, sizeof labels, "backend=\"postgres\",server=\"%s\"", s_role_names[role]);
    sh_backend_metrics_init(&server->m, metrics, labels);
    server->up_gauge = sh_metrics_gauge(metrics, "shoal_backend_connections",
                                        "Live connections to a backing store", labels);
    server->lag_gauge = sh_metrics_gauge(metrics, "shoal_replica_lag_ms",
                                         "How far the read replica is behind the primary", labels);
    for (int i = 0; i < self->config.pool; i++) {
        s_conn_t *conn = &server->conns[i];
        conn->db = self;
        conn->role = role;
        conn->index = i;
        conn->fd = -1;
        conn->backoff_ms = QUERY_RECONNECT_MIN_MS;
        s_connect(conn);
    }
}

query_db_t *query_db_new(sh_loop_t *loop, const query_db_config_t *config, sh_metrics_t *metrics)
{
    query_db_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->config = *config;
    if (self->config.pool < 1)
        self->config.pool = 1;
    if (self->config.pool > QUERY_MAX_POOL)
        self->config.pool = QUERY_MAX_POOL;
    self->has_replica = config->replica && config->replica[0];
    self->rerouted = sh_metrics_counter(metrics, "shoal_query_reads_rerouted_total",
                                        "Reads moved to the other server after a failure", NULL);
    s_server_init(self, S_PRIMARY, config->primary, metrics);
    if (self->has_replica)
        s_server_init(self, S_REPLICA, config->replica, metrics);
    self->timer = sh_loop_timer(loop, QUERY_TICK_MS, true, s_on_tick, self);
    return self;
}

void query_db_destroy(query_db_t **self_p)
{
    query_db_t *self = *self_p;
    if (!self)
        return;
    sh_loop_timer_cancel(self->loop, self->timer);
    while (self->waiting) {
        s_call_t *call = self->waiting;
        self->waiting = call->next;
        s_answer(call, SH_STATUS_UNAVAILABLE, "shutting down", NULL, 0, S_REPLICA);
        s_call_free(call);
    }
    for (int r = 0; r < S_ROLES; r++) {
        s_server_t *server = &self->servers[r];
        for (int i = 0; i < self->config.pool; i++) {
            s_conn_t *conn = &server->conns[i];
            if (conn->call) {
                s_answer(conn->call, SH_STATUS_UNAVAILABLE, "shutting down", NULL, 0, (s_role_t)r);
                s_call_free(conn->call);
                conn->call = NULL;
            }
            if (conn->item)
                sh_loop_remove(self->loop, &conn->item);
            if (conn->pg)
                PQfinish(conn->pg);
            PQclear(conn->main);
            PQclear(conn->lsn);
        }
        while (server->queue_head) {
            s_call_t *c = server->queue_head;
            server->queue_head = c->next;
            s_answer(c, SH_STATUS_UNAVAILABLE, "shutting down", NULL, 0, (s_role_t)r);
            s_call_free(c);
        }
    }
    free(self);
    *self_p = NULL;
}

/*  --- migrations (blocking, before the loop runs) -------------------------------  */

static bool s_ok(PGresult *res, ExecStatusType want, const char *what)
{
    bool ok = res && PQresultStatus(res) == want;
    if (!ok)
        sh_error("migrations: %s: %.300s", what, res ? PQresultErrorMessage(res) : "no result");
    PQclear(res);
    return ok;
}

static int s_migrate(PGconn *pg, const query_migration_t *migrations, int count,
                     const char *instance)
{
    if (!s_ok(PQexec(pg, "SELECT pg_advisory_lock(" QUERY_MIGRATE_LOCK ")"), PGRES_TUPLES_OK,
              "lock"))
        return -1;
    int version = -1;
    if (s_ok(PQexec(pg, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                        "version integer PRIMARY KEY, name text NOT NULL, "
                        "applied_at timestamptz NOT NULL DEFAULT now(), applied_by text)"),
             PGRES_COMMAND_OK, "create schema_migrations")) {
        version = 0;
        for (int i = 0; i < count; i++) {
            char v[16];
            snprintf(v, sizeof v, "%d", migrations[i].version);
            const char *check[1] = {v};
            PGresult *res = PQexecParams(pg, "SELECT 1 FROM schema_migrations WHERE version = $1",
                                         1, NULL, check, NULL, NULL, 0);
            if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
                s_ok(res, PGRES_TUPLES_OK, "read schema_migrations");
                version = -1;
                break;
            }
            bool applied = PQntuples(res) > 0;
            PQclear(res);
            if (applied) {
                version = migrations[i].version;
                continue;
            }
            const char *record[3] = {v, migrations[i].name, instance};
            bool ok = s_ok(PQexec(pg, "BEGIN"), PGRES_COMMAND_OK, "begin") &&
                      s_ok(PQexec(pg, migrations[i].sql), PGRES_COMMAND_OK, migrations[i].name) &&
                      s_ok(PQexecParams(pg,
                                        "INSERT INTO schema_migrations (version, name, "
                                        "applied_by) VALUES ($1, $2, $3)",
                                        3, NULL, record, NULL, NULL, 0),
                           PGRES_COMMAND_OK, "record migration") &&
                      s_ok(PQexec(pg, "COMMIT"), PGRES_COMMAND_OK, "commit");
            if (!ok) {
                PQclear(PQexec(pg, "ROLLBACK"));
                version = -1;
                break;
            }
            version = migrations[i].version;
            sh_info("migration applied version=%d name=%s", version, migrations[i].name);
        }
    }
    PQclear(PQexec(pg, "SELECT pg_advisory_unlock(" QUERY_MIGRATE_LOCK ")"));
    return version;
}

int query_db_migrate(const char *conninfo, const query_migration_t *migrations, int count,
                     int64_t wait_ms, const char *instance)
{
    int64_t give_up = sh_clock_mono_ms() + wait_ms;
    bool told = false;
    while (1) {
        PGconn *pg = PQconnectdb(conninfo);
        if (pg && PQstatus(pg) == CONNECTION_OK) {
            PQclear(PQexec(pg, "SET client_min_messages = warning"));
            int version = s_migrate(pg, migrations, count, instance);
            PQfinish(pg);
            if (version >= 0)
                sh_info("migrations up to date version=%d", version);
            return version;
        }
        if (!told) {
            sh_warn("migrations: waiting for the primary: %s",
                    pg ? PQerrorMessage(pg) : "out of memory");
            told = true;
        }
        PQfinish(pg);
        if (sh_clock_mono_ms() >= give_up) {
            sh_error("migrations: the primary did not answer within %lld ms", (long long)wait_ms);
            return -1;
        }
        usleep(QUERY_MIGRATE_RETRY_MS * 1000);
    }
}
