/*  session_server.h - the session service's operations on top of
    sh_service: touch, get, destroy, login and ratelimit_hit, answered
    from the session store. Each touch publishes the session's view count
    on its own event channel.
*/
#ifndef SESSION_SERVER_H_INCLUDED
#define SESSION_SERVER_H_INCLUDED

#include "session_store.h"
#include "sh_events.h"
#include "sh_service.h"

typedef struct session_server_t session_server_t;

/*  Register the session operations with service, answered from store;
    touches publish on events (may be NULL: no events). None is owned.
    Returns NULL when memory runs out.  */
session_server_t *session_server_new(sh_service_t *service, session_store_t *store,
                                     sh_events_t *events);
void session_server_destroy(session_server_t **self_p);

#endif
