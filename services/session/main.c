/*  shoal-session - sessions, login sessions with their CSRF tokens, view
    counters and rate-limit windows in Redis, served over ZeroMQ. Holds no
    session state of its own: any instance serves any session.
*/
#include <stdio.h>
#include <stdlib.h>

#include "session_server.h"
#include "session_store.h"
#include "sh_events.h"
#include "sh_log.h"
#include "sh_redis.h"
#include "sh_service.h"

typedef struct {
    sh_base_config_t base;
    char *bind;
    sh_redis_settings_t redis;
    int64_t redis_max_pending;
    int64_t session_idle_timeout;
    int64_t session_absolute_timeout;
    int64_t idem_ttl_ms;
    sh_events_settings_t events;
} session_config_t;

#define SH_CONFIG_T session_config_t
static const sh_setting_t s_settings[] = {
    SH_BASE_SETTINGS,
    SH_SETTING(STR, "bind", bind, "tcp://127.0.0.1:7101", 0, 255,
               "ZeroMQ endpoint the request ROUTER binds (port 0 picks a free port)"),
    SH_REDIS_SETTINGS("500", "deadline of one Redis call (capped by the request's own deadline)"),
    SH_SETTING(INT, "redis_max_pending", redis_max_pending, "10000", 1, 1000000,
               "Redis calls waiting for a reply at most; more get 503"),
    SH_SETTING(INT, "session_idle_timeout", session_idle_timeout, "1800", 1, 31536000,
               "seconds of inactivity after which a session expires"),
    SH_SETTING(INT, "session_absolute_timeout", session_absolute_timeout, "86400", 1, 31536000,
               "seconds after creation at which a session expires regardless of use"),
    SH_SETTING(INT, "idem_ttl_ms", idem_ttl_ms, "120000", 1000, 86400000,
               "how long the answer to a touch or login with an idempotency key is kept, so a "
               "retry on another instance is not applied twice"),
    SH_EVENTS_SETTINGS,
};
#undef SH_CONFIG_T

int main(int argc, char **argv)
{
    session_config_t config = {0};
    int rc = sh_config_start(
        s_settings, SH_ARRAY_SIZE(s_settings), &config, &config.base, "session",
        "The Shoal session service: sessions, logins, view counters and rate limits in Redis.",
        argc, argv);
    if (rc >= 0)
        return rc;
    sh_service_t *service = sh_service_new("session", &config.base, config.bind);
    if (!service) {
        sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
        return 1;
    }
    session_store_config_t store_config = {
        config.redis.host,
        (int)config.redis.port,
        config.redis.password,
        (int)config.redis.db,
        config.redis.prefix,
        config.redis.timeout_ms,
        config.session_idle_timeout * 1000,
        config.session_absolute_timeout * 1000,
        config.redis_max_pending,
        config.idem_ttl_ms,
    };
    session_store_t *store =
        session_store_new(sh_service_loop(service), &store_config, sh_service_metrics(service));
    if (!store) {
        sh_error("cannot create the session store");
        sh_service_destroy(&service);
        return 1;
    }
    sh_events_t *events =
        sh_events_new(service, session_store_redis(store), config.redis.prefix, &config.events);
    session_server_t *server = events ? session_server_new(service, store, events) : NULL;
    int exit_code = 1;
    if (server) {
        sh_service_run(service);
        exit_code = 0;
    } else
        sh_error("cannot start the session service");
    session_server_destroy(&server);
    sh_events_destroy(&events);
    session_store_destroy(&store);
    sh_service_destroy(&service);
    sh_transport_shutdown();
    sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
    return exit_code;
}
