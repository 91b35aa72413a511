/*  sh_transport.c - ZeroMQ sockets and framing.  */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sh_transport.h"

static void *s_ctx;
/*  One reusable encoding buffer per thread: encoding is the hot path.  */

void *sh_transport_ctx(void)
{
    if (!s_ctx) {
        s_ctx = zmq_ctx_new();
        assert(s_ctx);
    }
    return s_ctx;
}

static _Thread_local msgpack_sbuffer s_env_buf, s_body_buf;

void sh_transport_shutdown(void)
{
    sh_codec_thread_release();

    msgpack_sbuffer_destroy(&s_env_buf);
    msgpack_sbuffer_destroy(&s_body_buf);
    memset(&s_env_buf, 0, sizeof s_env_buf);
    memset(&s_body_buf, 0, sizeof s_body_buf);
    if (s_ctx) {
        zmq_ctx_term(s_ctx);
        s_ctx = NULL;
    }
}

static void s_common_options(void *socket)
{
    int hwm = SH_TRANSPORT_HWM, linger = SH_TRANSPORT_LINGER_MS;
    int ivl = SH_TRANSPORT_HEARTBEAT_MS, timeout = SH_TRANSPORT_HB_TIMEOUT;
    zmq_setsockopt(socket, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_TTL, &timeout, sizeof timeout);
}

/*  Bind socket at endpoint and report the endpoint actually bound; closes
    the socket and returns NULL (errno kept) when binding fails.  */
static void *s_bind(void *socket, const char *endpoint, char *bound, size_t bound_size)
{
    if (zmq_bind(socket, endpoint) != 0) {
        int err = errno;
        zmq_close(socket);
        errno = err;
        return NULL;
    }
    if (bound) {
        size_t size = bound_size;
        if (zmq_getsockopt(socket, ZMQ_LAST_ENDPOINT, bound, &size) != 0 && bound_size)
            bound[0] = 0;
    }
    return socket;
}

void *sh_transport_router(const char *endpoint, char *bound, size_t bound_size)
{
    void *socket = zmq_socket(sh_transport_ctx(), ZMQ_ROUTER);
    if (!socket)
        return NULL;
    int one = 1;
    s_common_options(socket);
    zmq_setsockopt(socket, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    /*  a caller that reconnects (say after this process was paused) keeps its
        routing id; without handover the new connection would be ignored for
        as long as the old one lingers, and the caller would wait in silence  */
    zmq_setsockopt(socket, ZMQ_ROUTER_HANDOVER, &one, sizeof one);
    return s_bind(socket, endpoint, bound, bound_size);
}

void *sh_transport_dealer(const char *endpoint)
{
    void *socket = zmq_socket(sh_transport_ctx(), ZMQ_DEALER);
    if (!socket)
        return NULL;
    int one = 1, reconnect = 100, reconnect_max = 1000;
    s_common_options(socket);
    zmq_setsockopt(socket, ZMQ_IMMEDIATE, &one, sizeof one);
    zmq_setsockopt(socket, ZMQ_RECONNECT_IVL, &reconnect, sizeof reconnect);
    zmq_setsockopt(socket, ZMQ_RECONNECT_IVL_MAX, &reconnect_max, sizeof reconnect_max);
    if (zmq_connect(socket, endpoint) != 0) {
        int err = errno;
        zmq_close(socket);
        errno = err;
        return NULL;
    }
    return socket;
}

void *sh_transport_publisher(const char *endpoint, char *bound, size_t bound_size)
{
    void *socket = zmq_socket(sh_transport_ctx(), ZMQ_PUB);
    if (!socket)
        return NULL;
    s_common_options(socket);
    return s_bind(socket, endpoint, bound, bound_size);
}

void *sh_transport_subscriber(const char *topic)
{
    void *socket = zmq_socket(sh_transport_ctx(), ZMQ_SUB);
    if (!socket)
        return NULL;
    s_common_options(socket);
    if (zmq_setsockopt(socket, ZMQ_SUBSCRIBE, topic, strlen(topic)) != 0) {
        int err = errno;
        zmq_close(socket);
        errno = err;
        return NULL;
    }
    return socket;
}

int sh_frames_event(const sh_frames_t *frames, uint64_t type, const sh_codec_t *codec, void *body)
{
    sh_envelope_t env;
    zmq_msg_t *f = (zmq_msg_t *)frames->frames;
    if (frames->count < 3 ||
        sh_codec_decode(&sh_envelope_codec, &env, zmq_msg_data(&f[1]), zmq_msg_size(&f[1])) ||
        env.kind != SH_KIND_EVENT || env.type != type)
        return -1;
    return sh_codec_decode(codec, body, zmq_msg_data(&f[2]), zmq_msg_size(&f[2])) ? -1 : 0;
}

int sh_transport_publish(void *socket, const char *topic, const sh_envelope_t *env,
                         const sh_codec_t *codec, const void *body)
{
    msgpack_sbuffer_clear(&s_env_buf);
    msgpack_sbuffer_clear(&s_body_buf);
    if (sh_codec_encode(&sh_envelope_codec, env, &s_env_buf) ||
        sh_codec_encode(codec, body, &s_body_buf)) {
        errno = EMSGSIZE;
        return -1;
    }
    if (zmq_send(socket, topic, strlen(topic), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(socket, s_env_buf.data, s_env_buf.size, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(socket, s_body_buf.data, s_body_buf.size, ZMQ_DONTWAIT) < 0)
        return -1;
    return 0;
}

void *sh_transport_caller(const char *own_id)
{
    void *socket = zmq_socket(sh_transport_ctx(), ZMQ_ROUTER);
    if (!socket)
        return NULL;
    int one = 1, reconnect = 100, reconnect_max = 1000;
    s_common_options(socket);
    zmq_setsockopt(socket, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(socket, ZMQ_ROUTING_ID, own_id, strlen(own_id));
    zmq_setsockopt(socket, ZMQ_RECONNECT_IVL, &reconnect, sizeof reconnect);
    zmq_setsockopt(socket, ZMQ_RECONNECT_IVL_MAX, &reconnect_max, sizeof reconnect_max);
    return socket;
}

int sh_transport_connect_peer(void *socket, const char *endpoint, const char *peer_id)
{
    if (zmq_setsockopt(socket, ZMQ_CONNECT_ROUTING_ID, peer_id, strlen(peer_id)) != 0)
        return -1;
    return zmq_connect(socket, endpoint);
}

const void *sh_transport_encode_scratch(const sh_codec_t *codec, const void *msg, size_t *len)
{
    msgpack_sbuffer_clear(&s_body_buf);
    if (sh_codec_encode(codec, msg, &s_body_buf) || s_body_buf.size > SH_PROTO_MAX_BODY)
        return NULL;
    *len = s_body_buf.size;
    return s_body_buf.data;
}

int sh_transport_send_encoded(void *socket, const void *id, size_t id_len, const sh_envelope_t *env,
                              const void *body, size_t body_len, const void *raw, size_t raw_len)
{
    msgpack_sbuffer_clear(&s_env_buf);
    if (sh_codec_encode(&sh_envelope_codec, env, &s_env_buf) ||
        s_env_buf.size > SH_PROTO_MAX_ENVELOPE) {
        errno = EMSGSIZE;
        return -1;
    }
    if (id && zmq_send(socket, id, id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (zmq_send(socket, s_env_buf.data, s_env_buf.size, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (zmq_send(socket, body, body_len, raw ? ZMQ_SNDMORE | ZMQ_DONTWAIT : ZMQ_DONTWAIT) < 0)
        return -1;
    return raw && zmq_send(socket, raw, raw_len, ZMQ_DONTWAIT) < 0 ? -1 : 0;
}

void sh_transport_close(void **socket_p)
{
    if (*socket_p) {
        zmq_close(*socket_p);
        *socket_p = NULL;
    }
}

bool sh_transport_readable(void *socket)
{
    int events = 0;
    size_t size = sizeof events;
    if (zmq_getsockopt(socket, ZMQ_EVENTS, &events, &size) != 0)
        return false;
    return (events & ZMQ_POLLIN) != 0;
}

int sh_transport_fd(void *socket)
{
    int fd = -1;
    size_t size = sizeof fd;
    zmq_getsockopt(socket, ZMQ_FD, &fd, &size);
    return fd;
}

int sh_frames_recv(void *socket, sh_frames_t *frames)
{
    frames->count = 0;
    frames->truncated = false;
    int more = 1;
    while (more) {
        zmq_msg_t scratch;
        bool keep = frames->count < SH_TRANSPORT_MAX_FRAMES;
        zmq_msg_t *msg = keep ? &frames->frames[frames->count] : &scratch;
        zmq_msg_init(msg);
        if (zmq_msg_recv(msg, socket, ZMQ_DONTWAIT) < 0) {
            int err = errno;
            zmq_msg_close(msg);
            sh_frames_close(frames);
            errno = err;
            return -1;
        }
        more = zmq_msg_more(msg);
        if (keep)
            frames->count++;
        else {
            /*  more frames than any message may have: consume and discard  */
            frames->truncated = true;
            zmq_msg_close(msg);
        }
    }
    return 0;
}

void sh_frames_close(sh_frames_t *frames)
{
    for (int i = 0; i < frames->count; i++)
        zmq_msg_close(&frames->frames[i]);
    frames->count = 0;
}

int sh_transport_send(void *socket, zmq_msg_t *identity, const sh_envelope_t *env,
                      const sh_codec_t *codec, const void *body, const void *const *raw,
                      const size_t *raw_len, int raw_count)
{
    msgpack_sbuffer_clear(&s_env_buf);
    msgpack_sbuffer_clear(&s_body_buf);
    if (sh_codec_encode(&sh_envelope_codec, env, &s_env_buf) ||
        sh_codec_encode(codec, body, &s_body_buf) || s_env_buf.size > SH_PROTO_MAX_ENVELOPE ||
        s_body_buf.size > SH_PROTO_MAX_BODY || raw_count > SH_PROTO_MAX_RAW) {
        errno = EMSGSIZE;
        return -1;
    }
    if (identity) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, identity);
        if (zmq_msg_send(&copy, socket, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
            int err = errno;
            zmq_msg_close(&copy);
            errno = err;
            return -1;
        }
    }
    /*  after the first frame is accepted the rest of the message is too  */
    if (zmq_send(socket, s_env_buf.data, s_env_buf.size, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (zmq_send(socket, s_body_buf.data, s_body_buf.size,
                 (raw_count ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0)
        return -1;
    for (int i = 0; i < raw_count; i++)
        if (zmq_send(socket, raw[i], raw_len[i],
                     (i + 1 < raw_count ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0)
            return -1;
    return 0;
}
