/*  shoal-health - the registry of live instances: every instance
    heartbeats here; callers learn membership from its snapshots and its
    published changes. Several may run; each keeps its own view.
*/
#include <stdio.h>
#include <stdlib.h>

#include "health_registry.h"
#include "sh_log.h"
#include "sh_service.h"

typedef struct {
    sh_base_config_t base;
    char *bind;
    char *pub_bind;
    int64_t forget_ms;
} health_config_t;

#define SH_CONFIG_T health_config_t
static const sh_setting_t s_settings[] = {
    SH_BASE_SETTINGS,
    SH_SETTING(STR, "bind", bind, "tcp://127.0.0.1:7001", 0, 255,
               "ZeroMQ endpoint of the request ROUTER (heartbeats, snapshots)"),
    SH_SETTING(STR, "pub_bind", pub_bind, "tcp://127.0.0.1:7002", 0, 255,
               "ZeroMQ endpoint of the PUB socket for membership changes"),
    SH_SETTING(INT, "forget_ms", forget_ms, "30000", 1000, 3600000,
               "a dead instance stays listed (as dead) this long, then is removed"),
};
#undef SH_CONFIG_T

int main(int argc, char **argv)
{
    health_config_t config = {0};
    int rc =
        sh_config_start(s_settings, SH_ARRAY_SIZE(s_settings), &config, &config.base, "health",
                        "The Shoal health service: the registry of live instances.", argc, argv);
    if (rc >= 0)
        return rc;
    /*  with health_endpoints set, a health instance registers like any
        service (with its peers and itself): every snapshot lists them all  */
    sh_service_t *service = sh_service_new("health", &config.base, config.bind);
    health_registry_config_t registry_config = {config.pub_bind, config.base.advertise,
                                                config.base.heartbeat_ms, config.forget_ms};
    health_registry_t *registry = service ? health_registry_new(service, &registry_config) : NULL;
    if (!registry) {
        sh_service_destroy(&service);
        sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
        return 1;
    }
    sh_service_run(service);
    health_registry_destroy(&registry);
    sh_service_destroy(&service);
    sh_transport_shutdown();
    sh_config_free(s_settings, SH_ARRAY_SIZE(s_settings), &config);
    return 0;
}
