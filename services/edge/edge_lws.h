/*  edge_lws.h - what edge_http.c and edge_ws.c, the two modules that
    include libwebsockets, share: the /ws protocol's entry points.
*/
#ifndef EDGE_LWS_H_INCLUDED
#define EDGE_LWS_H_INCLUDED

#include <libwebsockets.h>

/*  A header lws knows by name into buf (size bytes); "" when absent or
    too long.  */
void edge_lws_header(struct lws *wsi, enum lws_token_indexes token, char *buf, int size);
/*  LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: 0 lets the upgrade go on; 1 when it
    was refused with an HTTP status written here; -1 hangs up.  */
int edge_ws_confirm(struct lws *wsi);
/*  The callback of the shoal.v1 protocol.  */
int edge_ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                     size_t len);
/*  Bytes of per-connection state the protocol needs.  */
size_t edge_ws_size(void);

#endif
