/*  shoal-query - the board's durable data (accounts, items, attachments) in Postgres:
    writes on the primary, reads on the read replica, hot reads cached in
    Redis. Holds no state of its own: any instance serves any request.

    `shoal-query migrate` applies the schema migrations and exits.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "query_cache.h"
#include "query_db.h"
#include "query_migrations.h"
#include "query_server.h"
#include "sh_events.h"
#include "sh_log.h"
#include "sh_redis.h"
#include "sh_service.h"

typedef struct {
    sh_base_config_t base;
    char *bind;
    char *pg_primary;
    char *pg_replica;
    int64_t pg_pool;
    int64_t pg_timeout_ms;
    int64_t pg_connect_timeout_ms;
    int64_t pg_max_pending;
    int64_t replica_max_lag_ms;
    bool migrate;
    int64_t migrate_wait_ms;
    sh_redis_settings_t redis;
    int64_t cache_ttl_ms;
    int64_t argon2_ops;
    int64_t argon2_mem_kib;
    sh_events_settings_t events;
} query_config_t;

#define SH_CONFIG_T query_config_t
static const sh_setting_t s_settings[] = {
    SH_BASE_SETTINGS,
    SH_SETTING(STR, "bind", bind, "tcp://127.0.0.1:7201", 0, 255,
               "ZeroMQ endpoint the request ROUTER binds (port 0 picks a free port)"),
    SH_SETTING(STR, "pg_primary", pg_primary, "host=127.0.0.1 port=5432 dbname=shoal user=shoal", 1,
               1024, "libpq connection string of the Postgres primary (writes)"),
    SH_SETTING(STR, "pg_replica", pg_replica, "", 0, 1024,
               "libpq connection string of the read replica (empty: reads go to the primary)"),
    SH_SETTING(INT, "pg_pool", pg_pool, "4", 1, 32, "connections to each Postgres server"),
    SH_SETTING(INT, "pg_timeout_ms", pg_timeout_ms, "2000", 10, 600000,
               "longest statement; statement_timeout is also capped by the request deadline"),
    SH_SETTING(INT, "pg_connect_timeout_ms", pg_connect_timeout_ms, "1000", 10, 60000,
               "timeout of one connection attempt to Postgres"),
    SH_SETTING(INT, "pg_max_pending", pg_max_pending, "5000", 1, 1000000,
               "calls waiting for a Postgres connection at most, per server; more get 503"),
    SH_SETTING(INT, "replica_max_lag_ms", replica_max_lag_ms, "1000", 0, 3600000,
               "a replica further behind the primary than this serves no reads"),
    SH_SETTING(BOOL, "migrate", migrate, "true", 0, 0,
               "apply pending schema migrations at start (under an advisory lock)"),
    SH_SETTING(INT, "migrate_wait_ms", migrate_wait_ms, "60000", 0, 3600000,
               "how long to wait at start for the primary before giving up"),
    SH_REDIS_SETTINGS("200", "deadline of one cache call (a slow cache counts as a miss)"),
    SH_SETTING(INT, "cache_ttl_ms", cache_ttl_ms, "60000", 100, 86400000,
               "lifetime of a cached read"),
    SH_SETTING(INT, "argon2_ops", argon2_ops, "2", 1, 100, "Argon2id passes over memory"),
    SH_SETTING(INT, "argon2_mem_kib", argon2_mem_kib, "19456", 8, 4194304,
               "Argon2id memory per hash in KiB"),
    SH_EVENTS_SETTINGS,
};
#undef SH_CONFIG_T

static int s_serve(query_config_t *config)
{
    sh_service_t *service = sh_service_new("query", &config->base, config->bind);
    if (!service)
        return 1;
    query_db_config_t db_config = {
        config->pg_primary,
        config->pg_replica,
        (int)config->pg_pool,
        config->pg_timeout_ms,
        config->pg_connect_timeout_ms,
        config->replica_max_lag_ms,
        config->pg_max_pending,
    };
    query_cache_config_t cache_config = {
        config->redis.host,       (int)config->redis.port, config->redis.password,
        (int)config->redis.db,    config->redis.prefix,    config->cache_ttl_ms,
        config->redis.timeout_ms,
    };
    query_server_config_t server_config = {(uint64_t)config->argon2_ops,
                                           (uint64_t)config->argon2_mem_kib};
    sh_loop_t *loop = sh_service_loop(service);
    sh_metrics_t *metrics = sh_service_metrics(service);
    query_db_t *db = query_db_new(loop, &db_config, metrics);
    query_cache_t *cache = query_cache_new(loop, &cache_config, metrics);
    sh_events_t *events = cache ? sh_events_new(service, query_cache_redis(cache),
                                                config->redis.prefix, &config->events)
                                : NULL;
    query_server_t *server =
        db && events ? query_server_new(service, db, cache, events, &server_config) : NULL;
    int rc = 1;
    if (server) {
        sh_service_run(service);
        rc = 0;
    } else
        sh_error("cannot start the query service");
    query_server_destroy(&server);
    sh_events_destroy(&events);
    query_cache_destroy(&cache);
    query_db_destroy(&db);
    sh_service_destroy(&service);
    return rc;
}

int main(int argc, char **argv)
{
    /*  `shoal-query migrate [--flags]`: migrations only  */
    bool migrate_only = argc > 1 && strcmp(argv[1], "migrate") == 0;
    if (migrate_only) {
        argv[1] = argv[0];
        argc--;
        argv++;
    }
    query_config_t config = {0};
    int rc =
        sh_config_start(s_settings, SH_ARRAY_SIZE(s_settings), &config, &config.base, "query",
                        "The Shoal query service: accounts, items and attachments in Postgres. "
                        "Run `shoal-query migrate` to apply the schema migrations and exit.",
                        argc, argv);
    if (rc >= 0)
        return rc;
    rc = 0;
    if (migrate_only || config.migrate) {
        sh_log_init("query", config.base.instance,
                    (sh_log_level_t)sh_log_level_parse(config.base.log_level),
                    config.base.log_json);
        if (query_db_migrate(config.pg_primary, query_migrations, query_migration_count,
                             config.migrate_wait_ms, config.base.instance) < 0)
            rc = 1;
    }
    if (rc == 0 && !migrate_only)
        rc = s_serve(&config);
    sh_transport_shutdown();
    sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
    return rc;
}
