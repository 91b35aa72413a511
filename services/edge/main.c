/*  shoal-edge - the HTTP/WebSocket front of Shoal. Stateless: every API
    call goes over ZeroMQ to a service instance.
*/
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"
#include "sh_log.h"
#include "sh_service.h"
#include "sh_transport.h"

#define SH_CONFIG_T edge_config_t
static const sh_setting_t s_settings[] = {
    SH_BASE_SETTINGS,
    SH_SETTING(STR, "http_addr", http_addr, "127.0.0.1", 0, 255,
               "address to listen on (0.0.0.0 for every interface)"),
    SH_SETTING(INT, "http_port", http_port, "8081", 1, 65535, "HTTP port"),
    SH_SETTING(STR, "session_endpoints", session_endpoints, "", 0, 4095,
               "comma-separated ZeroMQ endpoints of session instances outside the registry "
               "(static discovery; with health_endpoints set the registry finds them)"),
    SH_SETTING(STR, "static_dir", static_dir, "frontend/dist", 0, 1023,
               "directory of the built front end"),
    SH_SETTING(INT, "request_timeout_ms", request_timeout_ms, "2000", 10, 600000,
               "deadline of one API call, end to end"),
    SH_SETTING(BOOL, "cookie_secure", cookie_secure, "false", 0, 0,
               "mark the session cookie Secure (set it when clients use HTTPS)"),
    SH_SETTING(INT, "cookie_max_age", cookie_max_age, "86400", 0, 31536000,
               "Max-Age of the session cookie in seconds (match the session service's "
               "session_absolute_timeout)"),
    SH_SETTING(STR, "allowed_origins", allowed_origins, "", 0, 4095,
               "comma-separated origins besides the request's own host allowed to change state"),
    SH_SETTING(INT, "max_body_bytes", max_body_bytes, "1048576", 0, 1073741824,
               "largest request body accepted (413 beyond)"),
    SH_SETTING(INT, "max_header_bytes", max_header_bytes, "8192", 1024, 65535,
               "largest request header block accepted (431 beyond)"),
    SH_SETTING(INT, "max_connections", max_connections, "4096", 16, 65535,
               "HTTP connections served at once"),
    SH_SETTING(INT, "drain_grace_ms", drain_grace_ms, "0", 0, 600000,
               "on SIGTERM, keep serving at least this long (while /health/ready says 503) so "
               "the load balancer notices before the edge exits"),
};
#undef SH_CONFIG_T

/*  The registry saw a change: session instances go to the session pool.  */
static void s_on_member(void *arg, const sh_member_t *member)
{
    edge_t *edge = arg;
    if (sh_str_eq(member->service, "session"))
        sh_pool_update(edge->sessions, member);
    /*  stay connected to every service instance for /metrics/cluster  */
    if (!sh_str_eq(member->service, "edge"))
        sh_pool_update(edge->scrape, member);
}

static int s_add_endpoints(sh_pool_t *pool, const char *list, bool required)
{
    char *copy = strdup(list), *save = NULL;
    int added = 0;
    for (char *ep = strtok_r(copy, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        while (*ep == ' ')
            ep++;
        if (!*ep)
            continue;
        if (sh_pool_add(pool, ep)) {
            fprintf(stderr, "invalid session endpoint \"%s\"\n", ep);
            free(copy);
            return -1;
        }
        added++;
    }
    free(copy);
    if (!added && required)
        fprintf(stderr, "set health_endpoints (registry) or session_endpoints (static)\n");
    return added || !required ? 0 : -1;
}

int main(int argc, char **argv)
{
    static edge_config_t config;
    int rc = sh_config_start(s_settings, SH_ARRAY_SIZE(s_settings), &config, &config.base, "edge",
                             "The Shoal edge: HTTP API, static front end, calls to services.", argc,
                             argv);
    if (rc >= 0)
        return rc;
    /*  block the stop signals before any thread exists; a signalfd reads them  */
    int signal_fd = sh_process_start("edge", &config.base);

    edge_t edge = {0};
    edge.config = &config;
    edge.signal_fd = signal_fd;
    edge.metrics = sh_metrics_new("edge", config.base.instance);
    edge.sessions = sh_pool_new("session", edge.metrics);
    edge.scrape = sh_pool_new("scrape", NULL);

    edge.workers = sh_workers_new((int)config.base.workers, (int)config.base.workers * 4);
    edge.started_ms = sh_clock_wall_ms();
    bool with_registry = config.base.health_endpoints[0] != 0;
    if (with_registry)
        edge.registry =
            sh_registry_new(config.base.health_endpoints, s_on_member, &edge, edge.metrics);
    if (!edge.metrics || !edge.sessions || !edge.scrape || !edge.workers ||
        (with_registry && !edge.registry) ||

        s_add_endpoints(edge.sessions, config.session_endpoints, !with_registry)) {
        if (with_registry && !edge.registry)
            fprintf(stderr, "invalid health_endpoints \"%s\"\n", config.base.health_endpoints);
        rc = 2;
        goto done;
    }
    edge.http_requests = sh_metrics_counter(edge.metrics, "shoal_http_requests_total",
                                            "HTTP requests received", NULL);
    edge.http_rejected = sh_metrics_counter(edge.metrics, "shoal_http_rejected_total",
                                            "HTTP requests refused as bad input", NULL);
    edge.late_replies = sh_metrics_counter(edge.metrics, "shoal_http_abandoned_total",
                                           "Requests whose client left before the reply", NULL);
    edge.connections =
        sh_metrics_gauge(edge.metrics, "shoal_http_connections", "Open HTTP connections", NULL);
    edge.latency = sh_metrics_histogram(edge.metrics, "shoal_http_request_seconds",
                                        "Time from request to response", NULL);
    char bound[SH_ENDPOINT_MAX];
    snprintf(bound, sizeof bound, "http://%s:%lld", config.http_addr, (long long)config.http_port);
    if (sh_registry_advertise(config.base.advertise, bound, edge.advertised,
                              sizeof edge.advertised)) {
        rc = 2;
        goto done;
    }
    if (edge_http_start(&edge)) {
        rc = 1;
        goto done;
    }
    edge_http_run(&edge);
    sh_info("stopped");
    rc = 0;
done:
    sh_registry_destroy(&edge.registry);
    sh_pool_destroy(&edge.sessions);
    sh_pool_destroy(&edge.scrape);

    sh_workers_destroy(&edge.workers);
    sh_metrics_destroy(&edge.metrics);
    sh_transport_shutdown();
    sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
    return rc;
}
