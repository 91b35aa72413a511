/*  sh_transport.h - ZeroMQ sockets as Shoal uses them, and the encoding of
    envelope + body into frames.

    Every socket gets bounded high-water marks, a bounded linger and ZMTP
    heartbeats. ROUTERs are ROUTER_MANDATORY (a reply to a vanished peer is
    an error, not a silent drop); DEALERs are IMMEDIATE (no queueing to a
    peer that is not connected, so the caller can pick another one).

    ZMQ_FD discipline: ZMQ_FD is edge-triggered. After any zmq call on a
    socket whose fd is watched by a foreign loop, call sh_transport_readable
    and drain until it says false.
*/
#ifndef SH_TRANSPORT_H_INCLUDED
#define SH_TRANSPORT_H_INCLUDED

#include <stdbool.h>
#include <zmq.h>

#include "sh_codec.h"

#define SH_TRANSPORT_HWM          10000
#define SH_TRANSPORT_LINGER_MS    200
#define SH_TRANSPORT_HEARTBEAT_MS 1000
#define SH_TRANSPORT_HB_TIMEOUT   3000
#define SH_TRANSPORT_MAX_FRAMES   (3 + SH_PROTO_MAX_RAW)
#define SH_ENDPOINT_MAX           256

/*  The process-wide ZeroMQ context (created on first use).  */
void *sh_transport_ctx(void);
/*  Close every socket first; then this terminates the context.  */
void sh_transport_shutdown(void);

/*  A bound ROUTER. If bound is not NULL it receives the endpoint actually
    bound (port 0 or * resolved). Returns the socket or NULL (errno set).  */
void *sh_transport_router(const char *endpoint, char *bound, size_t bound_size);
/*  A DEALER connected to endpoint. Returns the socket or NULL.  */
void *sh_transport_dealer(const char *endpoint);
/*  Close a socket; nulls *socket_p.  */
void sh_transport_close(void **socket_p);

/*  True while the socket has a message to read (ZMQ_EVENTS & POLLIN).  */
bool sh_transport_readable(void *socket);
/*  The socket's ZMQ_FD, for foreign event loops.  */
int sh_transport_fd(void *socket);

/*  One received multipart message.  */
typedef struct {
    zmq_msg_t frames[SH_TRANSPORT_MAX_FRAMES];
    int count;
    bool truncated; /* more frames arrived than fit; they were discarded */
} sh_frames_t;

/*  Receive one whole message without blocking. Returns 0, or -1 with
    errno EAGAIN when nothing is waiting.  */
int sh_frames_recv(void *socket, sh_frames_t *frames);
/*  Release the frames.  */
void sh_frames_close(sh_frames_t *frames);

/*  Encode and send [identity][envelope][body][raw...] without blocking.
    identity (ROUTER replies) may be NULL; it is copied, not consumed.
    raw/raw_len describe `raw_count` extra frames (may be 0).
    Returns 0, or -1 with errno (EHOSTUNREACH, EAGAIN, EMSGSIZE for a
    message that does not fit its limits).  */
int sh_transport_send(void *socket, zmq_msg_t *identity, const sh_envelope_t *env,
                      const sh_codec_t *codec, const void *body, const void *const *raw,
                      const size_t *raw_len, int raw_count);

/*  A PUB socket bound at endpoint (bounded HWM: slow subscribers lose
    messages, which sequence numbers reveal). Returns NULL on failure.  */
void *sh_transport_publisher(const char *endpoint, char *bound, size_t bound_size);
/*  Publish [topic][envelope][body]. Returns 0 or -1.  */
int sh_transport_publish(void *socket, const char *topic, const sh_envelope_t *env,
                         const sh_codec_t *codec, const void *body);

/*  A SUB socket (bounded HWM, heartbeats, no linger) subscribed to topic
    ("" for every topic). Returns NULL (errno set).  */
void *sh_transport_subscriber(const char *topic);
/*  Decode a published [topic][envelope][body] as an event of operation
    `type` into body (codec's struct; strings point into the frames).
    Returns 0, or -1 when it is not one.  */
int sh_frames_event(const sh_frames_t *frames, uint64_t type, const sh_codec_t *codec, void *body);

/*  A ROUTER that connects out to many instances (the caller side of a
    pool): each connection is addressed by the routing id given to
    sh_transport_connect_peer. own_id names this socket to its peers.  */
void *sh_transport_caller(const char *own_id);
/*  Connect the caller socket to endpoint and address it as peer_id.  */
int sh_transport_connect_peer(void *socket, const char *endpoint, const char *peer_id);

/*  Send [identity][envelope][body][raw] where body is already encoded.
    identity (id/id_len) may be NULL; raw (raw_len bytes) is one extra
    frame, none when NULL. Returns 0 or -1 with errno.  */
int sh_transport_send_encoded(void *socket, const void *id, size_t id_len, const sh_envelope_t *env,
                              const void *body, size_t body_len, const void *raw, size_t raw_len);

/*  Encode msg into this thread's scratch buffer; the result lives until
    the thread's next encode. Returns the bytes (and *len) or NULL.  */
const void *sh_transport_encode_scratch(const sh_codec_t *codec, const void *msg, size_t *len);

#endif
