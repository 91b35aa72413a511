/*  session_server.h - the session service's operations on top of
    sh_service: touch, get, destroy, login and ratelimit_hit, answered
    from the session store.
*/
#ifndef SESSION_SERVER_H_INCLUDED
#define SESSION_SERVER_H_INCLUDED

#include "session_store.h"
#include "sh_service.h"

/*  Register the session operations with service, answered from store.
    Neither is owned.  */
void session_server_register(sh_service_t *service, session_store_t *store);

#endif
