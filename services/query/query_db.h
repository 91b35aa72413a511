/*  query_db.h - Postgres for the query service: the only module that
    includes libpq.

    A few connections to the primary and to the read replica, driven by
    libpq's non-blocking API on the service's event loop. Every statement is
    prepared once per connection and runs with parameters only; each call
    sets statement_timeout from the caller's deadline in the same pipeline.

    Writes go to the primary and report the WAL position after their commit.
    Reads go to the replica when it has replayed past the caller's min_lsn
    and is not lagging beyond the configured bound, else to the primary; with
    the primary down they stay on the replica. A server that restarts is
    reconnected with backoff; a role with no live connection fails calls at
    once with UNAVAILABLE.
*/
#ifndef QUERY_DB_H_INCLUDED
#define QUERY_DB_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#include "sh_loop.h"
#include "sh_metrics.h"

/*  The statements, S(NAME, writes, SQL). Parameters are $1..$n; results are
    read by column index. Nothing here is ever built from input.  */
#define QUERY_MS(col) "(extract(epoch from " col ") * 1000)::bigint"
/*  Column order of every attachment row: id, item_id, owner_id, owner,
    name, content_type, size, sha256, key, created_at.  */
#define QUERY_ATTACHMENT_COLUMNS                                                          \
    "a.id, a.item_id, a.owner_id, u.username, a.name, a.content_type, a.size, a.sha256, " \
    "a.object_key, " QUERY_MS("a.created_at")
#define QUERY_STATEMENTS(S)                                                                        \
    S(USER_CREATE, true,                                                                           \
      "INSERT INTO users (username, pw_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING "              \
      "RETURNING id, username, " QUERY_MS("created_at"))                                           \
    S(USER_BY_NAME, false,                                                                         \
      "SELECT id, username, " QUERY_MS("created_at") ", pw_hash FROM users "                       \
                                                     "WHERE lower(username) = lower($1)")          \
    S(ITEM_CREATE, true,                                                                           \
      "WITH ins AS (INSERT INTO items (author_id, title, body, idem_key) "                         \
      "VALUES ($1::bigint, $2, $3, NULLIF($4, '')) ON CONFLICT (idem_key) DO NOTHING "             \
      "RETURNING id, author_id, title, body, created_at), "                                        \
      "found AS (SELECT * FROM ins UNION ALL SELECT id, author_id, title, body, created_at "       \
      "FROM items WHERE idem_key = NULLIF($4, '') AND NOT EXISTS (SELECT 1 FROM ins)) "            \
      "SELECT i.id, i.author_id, u.username, i.title, i.body, " QUERY_MS(                          \
          "i.created_at") ", (SELECT count(*) FROM ins) FROM found i "                             \
                          "JOIN users u ON u.id = i.author_id")                                    \
    S(ITEM_GET, false,                                                                             \
      "SELECT i.id, i.author_id, u.username, i.title, i.body, " QUERY_MS(                          \
          "i.created_at") " FROM items i JOIN users u ON u.id = i.author_id WHERE i.id = "         \
                          "$1::bigint")                                                            \
    S(ITEM_LIST, false,                                                                            \
      "SELECT i.id, i.author_id, u.username, i.title, left(i.body, $3::int), " QUERY_MS(           \
          "i.created_at") " FROM items i JOIN users u ON u.id = i.author_id "                      \
                          "WHERE ($1::bigint = 0 OR i.id < $1::bigint) ORDER BY i.id DESC LIMIT "  \
                          "$2::bigint")                                                            \
    S(ITEM_SEARCH, false,                                                                          \
      "SELECT i.id, i.author_id, u.username, i.title, left(i.body, $3::int), " QUERY_MS(           \
          "i.created_at") " FROM items i JOIN users u ON u.id = i.author_id "                      \
                          "WHERE i.search @@ websearch_to_tsquery('english', $4::text) "           \
                          "AND ($1::bigint = 0 OR i.id < $1::bigint) ORDER BY i.id DESC LIMIT "    \
                          "$2::bigint")                                                            \
    S(ITEM_DELETE, true,                                                                           \
      "WITH target AS (SELECT id, author_id FROM items WHERE id = $1::bigint), "                   \
      "del AS (DELETE FROM items i USING target t WHERE i.id = t.id AND t.author_id = $2::bigint " \
      "RETURNING i.id) SELECT (SELECT count(*) FROM target), (SELECT count(*) FROM del)")          \
    S(ATTACHMENT_CREATE, true,                                                                     \
      "SELECT r_id, r_item, r_owner, r_username, r_name, r_type, r_size, r_sha256, r_key, "        \
      "r_created_ms, r_outcome FROM attachment_create($1::bigint, $2::bigint, $3, $4::bigint, "    \
      "$5, $6, $7, $8::bigint, $9::bigint)")                                                       \
    S(ATTACHMENT_GET, false,                                                                       \
      "SELECT " QUERY_ATTACHMENT_COLUMNS " FROM attachments a JOIN users u ON u.id = a.owner_id "  \
      "WHERE a.id = $1::bigint")                                                                   \
    S(ATTACHMENT_LIST, false,                                                                      \
      "SELECT " QUERY_ATTACHMENT_COLUMNS " FROM attachments a JOIN users u ON u.id = a.owner_id "  \
      "WHERE a.item_id = $1::bigint ORDER BY a.id LIMIT $2::bigint")                               \
    S(ATTACHMENT_USAGE, false,                                                                     \
      "SELECT (SELECT coalesce(sum(size), 0) FROM attachments WHERE owner_id = $1::bigint), "      \
      "(SELECT count(*) FROM attachments WHERE owner_id = $1::bigint), i.id IS NOT NULL, "         \
      "coalesce(i.author_id, 0), (SELECT count(*) FROM attachments WHERE item_id = $2::bigint) "   \
      "FROM (SELECT 1) one LEFT JOIN items i ON i.id = $2::bigint")                                \
    S(ATTACHMENT_KEYS, false,                                                                      \
      "SELECT object_key FROM attachments WHERE object_key = ANY ($1::text[]) ORDER BY "           \
      "object_key")

#define QUERY_STMT_ENUM(name, writes, sql) QUERY_##name,
typedef enum { QUERY_STATEMENTS(QUERY_STMT_ENUM) QUERY_STMT_COUNT } query_stmt_t;
#undef QUERY_STMT_ENUM

/*  Where a read was served.  */
#define QUERY_SOURCE_PRIMARY "primary"
#define QUERY_SOURCE_REPLICA "replica"
#define QUERY_SOURCE_CACHE   "cache"

typedef struct query_db_t query_db_t;
typedef struct query_rows_t query_rows_t;

typedef struct {
    uint64_t status;          /* SH_STATUS_* */
    const char *error;        /* text for the caller when status != OK, never NULL */
    const query_rows_t *rows; /* NULL unless OK */
    uint64_t lsn;             /* writes: WAL position after the commit */
    const char *source;       /* QUERY_SOURCE_* */
    uint64_t seen_lsn;        /* replica reads: every commit up to this LSN is in the
                                 answer (0 for primary reads: a primary snapshot may
                                 miss a commit whose WAL comes before a later one's) */
} query_outcome_t;

/*  Called exactly once per call, maybe before the call returns; rows are
    valid during the callback only.  */
typedef void(query_db_fn)(void *arg, const query_outcome_t *outcome);

typedef struct {
    const char *primary;        /* libpq conninfo */
    const char *replica;        /* "" for none */
    int pool;                   /* connections per server */
    int64_t timeout_ms;         /* longest statement */
    int64_t connect_timeout_ms; /* one connection attempt */
    int64_t max_lag_ms;         /* replica out of the read pool beyond this */
    int64_t max_pending;        /* calls waiting for a connection, per server */
} query_db_config_t;

/*  Start connecting. config strings must outlive the object.  */
query_db_t *query_db_new(sh_loop_t *loop, const query_db_config_t *config, sh_metrics_t *metrics);
/*  Fail every call with UNAVAILABLE, disconnect, free; nulls *self_p.  */
void query_db_destroy(query_db_t **self_p);

/*  Run a writing statement on the primary; the outcome carries its lsn.  */
void query_db_write(query_db_t *self, query_stmt_t stmt, int nparams, const char *const *params,
                    int64_t timeout_ms, query_db_fn *fn, void *arg);
/*  Run a reading statement where data has replayed past min_lsn (0: any):
    the replica when it can, else the primary.  */
void query_db_read(query_db_t *self, query_stmt_t stmt, uint64_t min_lsn, int nparams,
                   const char *const *params, int64_t timeout_ms, query_db_fn *fn, void *arg);
/*  A read needing min_lsn is refused (UNAVAILABLE) rather than served older
    than that when the primary is down and the replica has not replayed it.  */
/*  Read on the primary only (authentication must see the latest data).  */
void query_db_read_primary(query_db_t *self, query_stmt_t stmt, int nparams,
                           const char *const *params, int64_t timeout_ms, query_db_fn *fn,
                           void *arg);

/*  True when the primary (or, for reads, any server) has a live connection.  */
bool query_db_writable(const query_db_t *self);
bool query_db_readable(const query_db_t *self);

/*  Result access: rows, and column col of row as text ("" for NULL).  */
int query_rows_count(const query_rows_t *rows);
const char *query_rows_text(const query_rows_t *rows, int row, int col);
/*  Column as a whole number (0 when NULL or not a number).  */
int64_t query_rows_int(const query_rows_t *rows, int row, int col);

/*  One versioned migration: SQL run in one transaction.  */
typedef struct {
    int version;
    const char *name;
    const char *sql;
} query_migration_t;

/*  Apply the pending migrations on the primary under an advisory lock, so
    instances starting together apply each once. Blocks (run before the
    service loop starts); waits up to wait_ms for the primary. Returns the
    schema version reached, or -1 (logged).  */
int query_db_migrate(const char *conninfo, const query_migration_t *migrations, int count,
                     int64_t wait_ms, const char *instance);

#endif
