/*  health_registry.h - the registry of live instances, kept by each health
    instance: heartbeats in, expiry, membership snapshot, and every change
    published with a sequence number.
*/
#ifndef HEALTH_REGISTRY_H_INCLUDED
#define HEALTH_REGISTRY_H_INCLUDED

#include "sh_service.h"

typedef struct health_registry_t health_registry_t;

typedef struct {
    const char *pub_bind;  /* PUB endpoint to bind */
    const char *advertise; /* SHOAL_ADVERTISE, may be "" */
    int64_t heartbeat_ms;  /* expected interval; 3 missed = dead */
    int64_t forget_ms;     /* a dead instance is removed after */
} health_registry_config_t;

/*  Register the registry's operations on service and start publishing.
    Returns NULL (logged) when the PUB socket cannot bind.  */
health_registry_t *health_registry_new(sh_service_t *service,
                                       const health_registry_config_t *config);
void health_registry_destroy(health_registry_t **self_p);

#endif
