/*  shoal-edge - the HTTP/WebSocket front of Shoal. Stateless: every API
    call goes over ZeroMQ to a service instance.
*/
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

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
    SH_SETTING(STR, "query_endpoints", query_endpoints, "", 0, 4095,
               "comma-separated ZeroMQ endpoints of query instances outside the registry "
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
    SH_SETTING(STR, "trusted_proxies", trusted_proxies, "", 0, 4095,
               "comma-separated addresses or CIDRs of proxies whose X-Forwarded-For names the "
               "client (its last entry); empty: the TCP peer is the client"),
    SH_SETTING(INT, "login_ip_limit", login_ip_limit, "30", 1, 1000000,
               "login attempts per client address per login window"),
    SH_SETTING(INT, "login_account_limit", login_account_limit, "10", 1, 1000000,
               "login attempts per account (username, any case) per login window"),
    SH_SETTING(INT, "login_window_s", login_window_s, "300", 1, 86400,
               "length of a login rate-limit window, seconds"),
    SH_SETTING(INT, "signup_ip_limit", signup_ip_limit, "10", 1, 1000000,
               "signups per client address per signup window"),
    SH_SETTING(INT, "signup_window_s", signup_window_s, "3600", 1, 86400,
               "length of a signup rate-limit window, seconds"),
    SH_SETTING(STR, "upload_endpoints", upload_endpoints, "", 0, 4095,
               "comma-separated ZeroMQ endpoints of upload instances outside the registry "
               "(static discovery; with health_endpoints set the registry finds them)"),
    SH_SETTING(INT, "upload_max_bytes", upload_max_bytes, "1073741824", 0, 1099511627776,
               "largest file accepted by POST /api/uploads (413 before the body is read)"),
    SH_SETTING(INT, "upload_quota_bytes", upload_quota_bytes, "10737418240", 0, 1125899906842624,
               "bytes of attachments one user may store (0: no quota)"),
    SH_SETTING(INT, "upload_timeout_ms", upload_timeout_ms, "30000", 100, 600000,
               "longest wait for the upload service to take one chunk of a file"),
    SH_SETTING(INT, "upload_finish_timeout_ms", upload_finish_timeout_ms, "120000", 100, 3600000,
               "longest wait for an upload to be completed in storage after its last byte"),
    SH_SETTING(STR, "download_mode", download_mode, "stream", 1, 16,
               "GET /api/uploads/:id: `stream` the file through the edge, or `presigned`: "
               "answer 302 with a short-lived S3 URL (S3 must be reachable by browsers)"),
    SH_SETTING(INT, "download_url_ttl_s", download_url_ttl_s, "300", 1, 604800,
               "lifetime of a presigned download URL, seconds"),
    SH_SETTING(STR, "edge_secret", edge_secret, "", 0, 64,
               "64 hex characters, the same on every edge: signs the shoal_ws cookie that "
               "lets a session open /ws on any edge (empty: random, this edge only)"),
    SH_SETTING(INT, "ws_proof_ttl_s", ws_proof_ttl_s, "3600", 10, 604800,
               "lifetime of the shoal_ws cookie, seconds (GET /api/me renews it)"),
    SH_SETTING(INT, "ws_max_connections", ws_max_connections, "3000", 1, 65535,
               "WebSocket connections at once; keep below max_connections"),
    SH_SETTING(INT, "ws_connect_rate", ws_connect_rate, "2000", 1, 1000000,
               "new WebSocket connections per second (burst the same); more get 503"),
    SH_SETTING(INT, "ws_max_message_bytes", ws_max_message_bytes, "4096", 64, 1048576,
               "largest message a WebSocket client may send (larger: close 1009)"),
    SH_SETTING(INT, "ws_message_rate", ws_message_rate, "20", 1, 100000,
               "messages per second a WebSocket client may send, burst twice that "
               "(more: close 1008)"),
    SH_SETTING(INT, "ws_max_channels", ws_max_channels, "32", 1, 1024,
               "channels one WebSocket connection may subscribe to"),
    SH_SETTING(INT, "ws_queue_bytes", ws_queue_bytes, "65536", 1024, 16777216,
               "bytes queued for one WebSocket client at most; a client that falls further "
               "behind is closed with 4001 and resumes"),
    SH_SETTING(INT, "ws_ping_s", ws_ping_s, "20", 1, 3600,
               "idle seconds before a WebSocket client is pinged"),
    SH_SETTING(INT, "ws_pong_timeout_s", ws_pong_timeout_s, "10", 1, 3600,
               "seconds a pinged WebSocket client has to answer before it is closed"),
    SH_SETTING(INT, "events_canary_ms", events_canary_ms, "1000", 50, 60000,
               "how often a canary event is published through each of session and query"),
    SH_SETTING(INT, "events_ready_timeout_ms", events_ready_timeout_ms, "5000", 100, 600000,
               "/health/ready fails when no canary came back for this long"),
    SH_SETTING(INT, "events_gap_wait_ms", events_gap_wait_ms, "100", 0, 60000,
               "how long a gap in a channel may close by itself before the missing events "
               "are read from the history"),
    SH_SETTING(STR, "event_endpoints", event_endpoints, "", 0, 4095,
               "comma-separated ZeroMQ PUB endpoints of publishers outside the registry"),
};
#undef SH_CONFIG_T

/*  The registry saw a change: session and query instances go to their
    pools.  */
static void s_on_member(void *arg, const sh_member_t *member)
{
    edge_t *edge = arg;
    if (sh_str_eq(member->service, "session"))
        sh_pool_update(edge->sessions, member);
    if (sh_str_eq(member->service, "query")) {
        /*  from now on readiness needs a query instance that answers  */
        edge->queries_known = true;
        sh_pool_update(edge->queries, member);
    }
    if (sh_str_eq(member->service, "upload"))
        sh_pool_update(edge->uploads, member);
    /*  stay connected to every service instance for /metrics/cluster  */
    if (!sh_str_eq(member->service, "edge"))
        sh_pool_update(edge->scrape, member);
    edge_events_member(edge->events, member);
}

/*  The key that signs the shoal_ws cookie: from edge_secret, or random.  */
static int s_secret(edge_t *edge)
{
    const char *hex = edge->config->edge_secret;
    size_t len = 0;
    if (!hex[0]) {
        randombytes_buf(edge->secret, sizeof edge->secret);
        sh_warn("edge_secret is not set: /ws accepts only cookies this edge issued; set the "
                "same SHOAL_EDGE_SECRET on every edge");
        return 0;
    }
    if (strlen(hex) != 2 * EDGE_SECRET_BYTES ||
        sodium_hex2bin(edge->secret, sizeof edge->secret, hex, strlen(hex), NULL, &len, NULL) ||
        len != EDGE_SECRET_BYTES) {
        fprintf(stderr, "invalid edge_secret (want %d hex characters)\n", 2 * EDGE_SECRET_BYTES);
        return -1;
    }
    return 0;
}

/*  Connect the pool to a static endpoint list. Returns how many, or -1
    (message printed) for a bad endpoint or none when one was required.  */
static int s_add_endpoints(sh_pool_t *pool, const char *what, const char *list, bool required)
{
    char *copy = strdup(list), *save = NULL;
    int added = 0;
    for (char *ep = strtok_r(copy, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        while (*ep == ' ')
            ep++;
        if (!*ep)
            continue;
        if (sh_pool_add(pool, ep)) {
            fprintf(stderr, "invalid %s endpoint \"%s\"\n", what, ep);
            free(copy);
            return -1;
        }
        added++;
    }
    free(copy);
    if (!added && required)
        fprintf(stderr, "set health_endpoints (registry) or session_endpoints (static)\n");
    return added || !required ? added : -1;
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
    edge.queries = sh_pool_new("query", edge.metrics);
    edge.uploads = sh_pool_new("upload", edge.metrics);
    edge.scrape = sh_pool_new("scrape", NULL);

    edge.workers = sh_workers_new((int)config.base.workers, (int)config.base.workers * 4);
    edge.started_ms = sh_clock_wall_ms();
    edge.events = edge.metrics ? edge_events_new(&edge) : NULL;
    bool with_registry = config.base.health_endpoints[0] != 0;
    if (with_registry)
        edge.registry =
            sh_registry_new(config.base.health_endpoints, s_on_member, &edge, edge.metrics);
    char bad[SH_ADDR_MAX + 1];
    if (strcmp(config.download_mode, "stream") != 0 &&
        strcmp(config.download_mode, "presigned") != 0) {
        fprintf(stderr, "invalid download_mode \"%s\" (want stream or presigned)\n",
                config.download_mode);
        rc = 2;
        goto done;
    }
    if (s_secret(&edge)) {
        rc = 2;
        goto done;
    }
    if (config.ws_max_connections >= config.max_connections) {
        fprintf(stderr, "ws_max_connections (%lld) must be below max_connections (%lld)\n",
                (long long)config.ws_max_connections, (long long)config.max_connections);
        rc = 2;
        goto done;
    }
    if (edge_proxies_check(config.trusted_proxies, bad, sizeof bad)) {
        fprintf(stderr, "invalid trusted_proxies entry \"%s\" (want an address or CIDR)\n", bad);
        rc = 2;
        goto done;
    }
    int queries = 0;
    if (!edge.metrics || !edge.sessions || !edge.queries || !edge.scrape || !edge.workers ||
        !edge.events || edge_ws_init(&edge) || (with_registry && !edge.registry) ||
        s_add_endpoints(edge.sessions, "session", config.session_endpoints, !with_registry) < 0 ||
        (queries = s_add_endpoints(edge.queries, "query", config.query_endpoints, false)) < 0 ||
        !edge.uploads ||
        s_add_endpoints(edge.uploads, "upload", config.upload_endpoints, false) < 0) {
        if (with_registry && !edge.registry)
            fprintf(stderr, "invalid health_endpoints \"%s\"\n", config.base.health_endpoints);
        rc = 2;
        goto done;
    }
    edge.queries_known = queries > 0;
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
    sh_pool_destroy(&edge.queries);
    sh_pool_destroy(&edge.uploads);
    sh_pool_destroy(&edge.scrape);
    sh_workers_destroy(&edge.workers);
    edge_events_destroy(&edge.events);
    sh_metrics_destroy(&edge.metrics);
    sh_transport_shutdown();
    sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
    return rc;
}
