/*  edge_ws.c - WebSocket connections of /ws (subprotocol shoal.v1).

    The upgrade is refused with a plain HTTP status before 101 unless the
    Origin is allowed, the session cookie comes with a valid proof cookie
    (signed by an edge that checked the session; any edge can verify it
    without a round trip, because libwebsockets decides the upgrade
    synchronously) and the edge has room: a connection count and a
    new-connection rate limit. After 101 the session itself is checked
    once more with the session service; an ended session is closed 4401.

    Each connection has a queue of shared messages bounded in bytes.
    Latest values with the same key replace each other in it; when an
    ordered message does not fit, the client is too slow and is closed
    with 4001 - it resumes from its last offsets. Messages from the client
    are JSON objects, reassembled from fragments up to a size cap (1009),
    at a bounded rate (1008).
*/
#include <jansson.h>
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edge.h"
#include "edge_lws.h"
#include "sh_events.h"
#include "sh_log.h"
#include "sh_util.h"

_Static_assert(LWS_PRE <= EDGE_WS_PRE, "EDGE_WS_PRE must leave room for the frame header");

#define S_QUEUE_START      8
#define S_REASON_MAX       100
#define S_CLOSE_SESSION    4401
#define S_CLOSE_SLOW       4001
#define S_SWEEP_MS         1000
#define S_WRITE_MAX        65536 /* bytes of frames written at once */
#define S_FRAME_HEADER_MAX 10
#define S_CLOSE_WAIT_S     5 /* a closing client that reads nothing is dropped after it */

struct edge_ws_t {
    struct lws *wsi;
    edge_ws_t *prev, *next; /* every open connection */
    char sid[SH_SESSION_MAX + 1];
    char channel[SH_CHANNEL_MAX + 1]; /* the session's own: s:<hex> */
    uint64_t user_id;
    uint64_t check; /* pool handle of the session check after 101 */
    bool established;
    int64_t heard_ms;  /* last frame from the client (mono) */
    int64_t pinged_ms; /* a ping waits for its pong since; 0: none */
    int64_t wrote_ms;  /* last write to the client (mono) */
    bool ping_due;     /* write a ping with the next batch */

    edge_msg_t **queue; /* ring */
    int q_start, q_len, q_cap;
    size_t q_bytes;

    char *rx; /* a message being reassembled */
    size_t rx_len;
    double tokens; /* message rate budget */
    int64_t tokens_ms;

    void **subs; /* edge_events' */
    int nsubs;

    bool closing;
    int close_code;
    char close_reason[S_REASON_MAX];
};

static struct {
    edge_t *edge;
    edge_ws_t *all;
    int64_t open;
    double connect_tokens;
    int64_t connect_ms;
    int64_t *connections;
    int64_t swept_ms;
    uint64_t *no_pong;
    uint64_t *rejected_origin, *rejected_auth, *rejected_full, *rejected_rate, *rejected_bad;
    uint64_t *messages_in, *events_sent, *coalesced, *laggards, *too_big, *too_fast, *session_ended;
} s_ws;

/*  --- the upgrade -------------------------------------------------------------------------  */

/*  A refusal with a JSON error, written before any upgrade.  */
static int s_refuse(struct lws *wsi, int status, const char *code, const char *message)
{
    char body[256];
    int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                     message);
    unsigned char buf[LWS_PRE + 1024], *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf;
    if (lws_add_http_header_status(wsi, (unsigned int)status, &p, end) ||
        lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE,
                                     (const unsigned char *)"application/json", 16, &p, end) ||
        lws_add_http_header_content_length(wsi, (lws_filepos_t)n, &p, end) ||
        (status == 503 && lws_add_http_header_by_name(wsi, (const unsigned char *)"retry-after:",
                                                      (const unsigned char *)"1", 1, &p, end)) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"connection:",
                                    (const unsigned char *)"close", 5, &p, end) ||
        lws_finalize_http_header(wsi, &p, end))
        return -1;
    if (p + n > end)
        return -1;
    memcpy(p, body, (size_t)n);
    p += n;
    if (lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS) < 0)
        return -1;
    return 1;
}

/*  The session id and the user its proof names, from the cookies; 0 when
    either is missing or the proof does not hold.  */
static uint64_t s_authenticate(struct lws *wsi, char *sid, size_t sid_size)
{
    char cookies[4096];
    edge_lws_header(wsi, WSI_TOKEN_HTTP_COOKIE, cookies, sizeof cookies);
    char proof[EDGE_COOKIE_MAX];
    if (edge_cookie_get(cookies, EDGE_COOKIE_NAME, sid, sid_size) != 0 ||
        edge_cookie_get(cookies, EDGE_WS_COOKIE, proof, sizeof proof) != 0)
        return 0;
    return edge_ws_proof_check(s_ws.edge->secret, sid, proof, sh_clock_wall_ms() / 1000);
}

static bool s_origin_allowed(struct lws *wsi)
{
    char origin[EDGE_HEADER_SMALL], host[EDGE_HEADER_SMALL], own[EDGE_HEADER_SMALL + 16];
    edge_lws_header(wsi, WSI_TOKEN_ORIGIN, origin, sizeof origin);
    edge_lws_header(wsi, WSI_TOKEN_HOST, host, sizeof host);
    if (!origin[0])
        return false; /* browsers always send one; anything else is not a page of ours */
    snprintf(own, sizeof own, "http://%s", host);
    if (host[0] && strcmp(origin, own) == 0)
        return true;
    snprintf(own, sizeof own, "https://%s", host);
    if (host[0] && strcmp(origin, own) == 0)
        return true;
    /*  the same allow-list as state-changing HTTP requests  */
    return edge_origin_listed(s_ws.edge->config->allowed_origins, origin);
}

/*  Take one token from a bucket refilled at rate per second up to burst;
    false when it is empty.  */
static bool s_take(double *tokens, int64_t *at_ms, double rate, double burst)
{
    int64_t now = sh_clock_mono_ms();
    *tokens += (double)(now - *at_ms) * rate / 1000.0;
    if (*tokens > burst)
        *tokens = burst;
    *at_ms = now;
    if (*tokens < 1.0)
        return false;
    *tokens -= 1.0;
    return true;
}

static bool s_connect_allowed(void)
{
    double rate = (double)s_ws.edge->config->ws_connect_rate;
    return s_take(&s_ws.connect_tokens, &s_ws.connect_ms, rate, rate);
}

int edge_ws_confirm(struct lws *wsi)
{
    edge_t *edge = s_ws.edge;
    char uri[64], protocols[256], sid[SH_SESSION_MAX + 1];
    edge_lws_header(wsi, WSI_TOKEN_GET_URI, uri, sizeof uri);
    edge_lws_header(wsi, WSI_TOKEN_PROTOCOL, protocols, sizeof protocols);
    if (strcmp(uri, "/ws") != 0 || !strstr(protocols, "shoal.v1")) {
        (*s_ws.rejected_bad)++;
        return s_refuse(wsi, strcmp(uri, "/ws") ? 404 : 400, "invalid",
                        strcmp(uri, "/ws") ? "WebSocket is served at /ws"
                                           : "subprotocol shoal.v1 is required");
    }
    if (!s_origin_allowed(wsi)) {
        (*s_ws.rejected_origin)++;
        return s_refuse(wsi, 403, "forbidden", "Origin is not allowed");
    }
    if (!s_authenticate(wsi, sid, sizeof sid)) {
        (*s_ws.rejected_auth)++;
        return s_refuse(wsi, 401, "unauthorized",
                        "log in, then GET /api/me for a fresh shoal_ws cookie");
    }
    if (edge->draining || s_ws.open >= edge->config->ws_max_connections) {
        (*s_ws.rejected_full)++;
        return s_refuse(wsi, 503, "unavailable", "no room for another live connection");
    }
    if (!s_connect_allowed()) {
        (*s_ws.rejected_rate)++;
        return s_refuse(wsi, 503, "unavailable", "too many new live connections; retry");
    }
    return 0;
}

/*  --- sending --------------------------------------------------------------------------------- */

static void s_queue_clear(edge_ws_t *ws)
{
    for (int i = 0; i < ws->q_len; i++)
        edge_msg_unref(ws->queue[(ws->q_start + i) % ws->q_cap]);
    ws->q_len = 0;
    ws->q_start = 0;
    ws->q_bytes = 0;
}

void edge_ws_close(edge_ws_t *ws, int code, const char *reason)
{
    if (ws->closing)
        return;
    ws->closing = true;
    ws->close_code = code;
    snprintf(ws->close_reason, sizeof ws->close_reason, "%s", reason);
    s_queue_clear(ws);
    lws_callback_on_writable(ws->wsi);
    /*  a client that reads nothing never takes the close frame: drop it  */
    lws_set_timeout(ws->wsi, PENDING_TIMEOUT_CLOSE_SEND, S_CLOSE_WAIT_S);
}

int edge_ws_send(edge_ws_t *ws, edge_msg_t *msg)
{
    if (ws->closing)
        return -1;
    if (msg->key)
        for (int i = 0; i < ws->q_len; i++) {
            edge_msg_t **slot = &ws->queue[(ws->q_start + i) % ws->q_cap];
            if ((*slot)->key == msg->key) {
                /*  a newer value of the same counter replaces the queued one  */
                ws->q_bytes = ws->q_bytes - (*slot)->len + msg->len;
                edge_msg_unref(*slot);
                edge_msg_ref(msg);
                *slot = msg;
                (*s_ws.coalesced)++;
                return 0;
            }
        }
    if (ws->q_len > 0 && ws->q_bytes + msg->len > (size_t)s_ws.edge->config->ws_queue_bytes) {
        (*s_ws.laggards)++;
        edge_ws_close(ws, S_CLOSE_SLOW, "slow consumer: resume from your last offsets");
        return -1;
    }
    if (ws->q_len == ws->q_cap) {
        int cap = ws->q_cap ? ws->q_cap * 2 : S_QUEUE_START;
        edge_msg_t **queue = malloc((size_t)cap * sizeof *queue);
        if (!queue) {
            edge_ws_close(ws, 1011, "out of memory");
            return -1;
        }
        for (int i = 0; i < ws->q_len; i++)
            queue[i] = ws->queue[(ws->q_start + i) % ws->q_cap];
        free(ws->queue);
        ws->queue = queue;
        ws->q_start = 0;
        ws->q_cap = cap;
    }
    edge_msg_ref(msg);
    ws->queue[(ws->q_start + ws->q_len) % ws->q_cap] = msg;
    ws->q_len++;
    ws->q_bytes += msg->len;
    /*  once per burst: a queue that was not empty has asked already  */
    if (ws->q_len == 1)
        lws_callback_on_writable(ws->wsi);
    return 0;
}

void edge_ws_send_json(edge_ws_t *ws, json_t *json)
{
    char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
    if (text)
        edge_ws_send_text(ws, text, strlen(text));
    free(text);
    json_decref(json);
}

int edge_ws_send_text(edge_ws_t *ws, const char *text, size_t len)
{
    edge_msg_t *msg = edge_msg_new(text, len, 0);
    if (!msg) {
        edge_ws_close(ws, 1011, "out of memory");
        return -1;
    }
    int rc = edge_ws_send(ws, msg);
    edge_msg_unref(msg);
    return rc;
}

/*  Pop the oldest queued message (the caller owns the reference).  */
static edge_msg_t *s_pop(edge_ws_t *ws)
{
    edge_msg_t *msg = ws->queue[ws->q_start];
    ws->q_start = (ws->q_start + 1) % ws->q_cap;
    ws->q_len--;
    ws->q_bytes -= msg->len;
    return msg;
}

/*  The header of an unmasked, final text frame of len bytes into out;
    returns its length (RFC 6455 5.2).  */
static size_t s_frame_header(unsigned char *out, size_t len)
{
    out[0] = 0x81;
    if (len < 126) {
        out[1] = (unsigned char)len;
        return 2;
    }
    if (len < 65536) {
        out[1] = 126;
        out[2] = (unsigned char)(len >> 8);
        out[3] = (unsigned char)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

/*  Everything queued goes out in one write: a client that fell behind
    (or a burst of events) costs one system call and one poll cycle, not
    one per message. The frames are made here and written raw (lws sends
    LWS_WRITE_HTTP on a WebSocket as it is, buffering what the socket
    does not take).  */
static int s_on_writeable(edge_ws_t *ws)
{
    static unsigned char out[LWS_PRE + S_WRITE_MAX];
    if (ws->closing) {
        lws_close_reason(ws->wsi, (enum lws_close_status)ws->close_code,
                         (unsigned char *)ws->close_reason, strlen(ws->close_reason));
        return -1;
    }
    size_t used = 0;
    if (ws->ping_due) {
        /*  a ping frame (RFC 6455 5.5.2) ahead of the messages; it carries
            a payload because lws reports no pong with an empty one  */
        ws->ping_due = false;
        out[LWS_PRE] = 0x89;
        out[LWS_PRE + 1] = 4;
        memcpy(out + LWS_PRE + 2, "ping", 4);
        used = 6;
    }
    if (!ws->q_len)
        return used && lws_write(ws->wsi, out + LWS_PRE, used, LWS_WRITE_HTTP) < 0 ? -1 : 0;
    edge_msg_t *msg = ws->queue[ws->q_start];
    if (!used && msg->len + S_FRAME_HEADER_MAX > S_WRITE_MAX) {
        /*  a message too big for the batch goes alone, framed by lws  */
        msg = s_pop(ws);
        int n = lws_write(ws->wsi, msg->bytes + EDGE_WS_PRE, msg->len, LWS_WRITE_TEXT);
        edge_msg_unref(msg);
        if (n < 0)
            return -1;
        (*s_ws.events_sent)++;
    } else {
        while (ws->q_len) {
            msg = ws->queue[ws->q_start];
            if (used + msg->len + S_FRAME_HEADER_MAX > S_WRITE_MAX)
                break;
            msg = s_pop(ws);
            used += s_frame_header(out + LWS_PRE + used, msg->len);
            memcpy(out + LWS_PRE + used, msg->bytes + EDGE_WS_PRE, msg->len);
            used += msg->len;
            edge_msg_unref(msg);
            (*s_ws.events_sent)++;
        }
        if (lws_write(ws->wsi, out + LWS_PRE, used, LWS_WRITE_HTTP) < 0)
            return -1;
        ws->wrote_ms = sh_clock_mono_ms();
    }
    if (ws->q_len)
        lws_callback_on_writable(ws->wsi);
    return 0;
}

/*  --- receiving ------------------------------------------------------------------------------- */

static bool s_message_allowed(edge_ws_t *ws)
{
    double rate = (double)s_ws.edge->config->ws_message_rate;
    return s_take(&ws->tokens, &ws->tokens_ms, rate, 2 * rate);
}

static int s_on_receive(edge_ws_t *ws, const void *in, size_t len)
{
    ws->heard_ms = sh_clock_mono_ms();
    ws->pinged_ms = 0;
    if (ws->closing)
        return 0;
    size_t cap = (size_t)s_ws.edge->config->ws_max_message_bytes;
    if (lws_frame_is_binary(ws->wsi)) {
        edge_ws_close(ws, 1003, "messages are JSON text");
        return 0;
    }
    if (ws->rx_len + len > cap) {
        (*s_ws.too_big)++;
        edge_ws_close(ws, 1009, "message too big");
        return 0;
    }
    if (!ws->rx && !(ws->rx = malloc(cap + 1))) {
        edge_ws_close(ws, 1011, "out of memory");
        return 0;
    }
    memcpy(ws->rx + ws->rx_len, in, len);
    ws->rx_len += len;
    if (!lws_is_final_fragment(ws->wsi) || lws_remaining_packet_payload(ws->wsi))
        return 0;
    size_t n = ws->rx_len;
    ws->rx_len = 0;
    (*s_ws.messages_in)++;
    if (!s_message_allowed(ws)) {
        (*s_ws.too_fast)++;
        edge_ws_close(ws, 1008, "too many messages");
        return 0;
    }
    json_error_t error;
    json_t *json = json_loadb(ws->rx, n, JSON_REJECT_DUPLICATES, &error);
    /*  the reassembly buffer is only kept while a message is in pieces  */
    free(ws->rx);
    ws->rx = NULL;
    static const char not_object[] =
        "{\"type\":\"error\",\"code\":\"invalid\",\"message\":\"a message is a JSON object\"}";
    if (!json || !json_is_object(json))
        edge_ws_send_text(ws, not_object, sizeof not_object - 1);
    else
        edge_events_message(s_ws.edge->events, ws, json);
    json_decref(json);
    return 0;
}

/*  --- the session check after 101 ----------------------------------------------------------  */

static void s_on_session(void *arg, const sh_reply_t *reply)
{
    edge_ws_t *ws = arg;
    ws->check = 0;
    const sh_session_get_rep_t *rec = reply->body;
    if (reply->status == SH_STATUS_NOT_FOUND ||
        (reply->status == SH_STATUS_OK && rec && rec->user_id != ws->user_id)) {
        (*s_ws.session_ended)++;
        edge_ws_close(ws, S_CLOSE_SESSION, "session ended: log in again");
        return;
    }
    char user[SH_USERNAME_MAX + 1] = "";
    if (reply->status == SH_STATUS_OK && rec)
        sh_str_copy(rec->username, user, sizeof user);
    edge_ws_send_json(ws, json_pack("{s:s, s:s, s:s}", "type", "hello", "edge",
                                    s_ws.edge->config->base.instance, "user", user));
    /*  hello is the first message; the client's wait in the socket until now  */
    lws_rx_flow_control(ws->wsi, 1);
}

static int s_on_established(struct lws *wsi, edge_ws_t *ws)
{
    memset(ws, 0, sizeof *ws);
    ws->wsi = wsi;
    ws->user_id = s_authenticate(wsi, ws->sid, sizeof ws->sid);
    if (!ws->user_id)
        return -1; /* checked at the upgrade; cannot change in between */
    sh_events_session_channel(ws->sid, ws->channel);
    ws->subs = calloc((size_t)s_ws.edge->config->ws_max_channels, sizeof *ws->subs);
    if (!ws->subs)
        return -1;
    ws->tokens = (double)s_ws.edge->config->ws_message_rate;
    ws->tokens_ms = sh_clock_mono_ms();
    ws->heard_ms = ws->tokens_ms;
    ws->established = true;
    ws->next = s_ws.all;
    if (s_ws.all)
        s_ws.all->prev = ws;
    s_ws.all = ws;
    s_ws.open++;
    *s_ws.connections = s_ws.open;
    lws_rx_flow_control(wsi, 0);
    sh_session_get_req_t body = {.id = sh_str(ws->sid)};
    sh_call_opts_t opts = {.deadline_ms =
                               sh_clock_wall_ms() + s_ws.edge->config->request_timeout_ms};
    ws->check =
        sh_pool_send(s_ws.edge->sessions, SH_OP_session_get, &body, &opts, s_on_session, ws);
    sh_pool_drain(s_ws.edge->sessions);
    return 0;
}

static void s_on_closed(edge_ws_t *ws)
{
    if (!ws->established)
        return;
    ws->established = false;
    if (ws->check)
        sh_pool_cancel(s_ws.edge->sessions, ws->check);
    edge_events_forget(s_ws.edge->events, ws);
    s_queue_clear(ws);
    free(ws->queue);
    free(ws->rx);
    free(ws->subs);
    if (ws->prev)
        ws->prev->next = ws->next;
    else
        s_ws.all = ws->next;
    if (ws->next)
        ws->next->prev = ws->prev;
    s_ws.open--;
    *s_ws.connections = s_ws.open;
}

int edge_ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                     size_t len)
{
    edge_ws_t *ws = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        return s_on_established(wsi, ws);
    case LWS_CALLBACK_RECEIVE:
        return s_on_receive(ws, in, len);
    case LWS_CALLBACK_RECEIVE_PONG:
        ws->heard_ms = sh_clock_mono_ms();
        ws->pinged_ms = 0;
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return s_on_writeable(ws);
    case LWS_CALLBACK_CLOSED:
        s_on_closed(ws);
        return 0;
    default:
        return 0;
    }
}

/*  --- the rest ------------------------------------------------------------------------------  */

size_t edge_ws_size(void)
{
    return sizeof(edge_ws_t);
}

const char *edge_ws_session_channel(const edge_ws_t *ws)
{
    return ws->channel;
}

void **edge_ws_subs(edge_ws_t *ws, int **count)
{
    *count = &ws->nsubs;
    return ws->subs;
}

int64_t edge_ws_count(void)
{
    return s_ws.open;
}

void edge_ws_tick(void)
{
    /*  Pings are swept here, once a second, rather than left to a timer
        per connection: with thousands of connections libwebsockets' timers
        woke its poll loop (which scans every socket) hundreds of times a
        second. Only a connection quiet both ways is pinged: one that takes
        events is alive as long as its queue drains (else it is closed as
        a laggard), and every pong is one more wake-up of that loop.  */
    int64_t now = sh_clock_mono_ms();
    if (now - s_ws.swept_ms < S_SWEEP_MS)
        return;
    s_ws.swept_ms = now;
    int64_t idle = s_ws.edge->config->ws_ping_s * 1000,
            wait = s_ws.edge->config->ws_pong_timeout_s * 1000;
    for (edge_ws_t *ws = s_ws.all; ws; ws = ws->next) {
        if (ws->pinged_ms && now - ws->pinged_ms > wait) {
            /*  a peer that does not answer will not read a close frame either  */
            (*s_ws.no_pong)++;
            ws->closing = true;
            lws_set_timeout(ws->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        } else if (!ws->pinged_ms && !ws->closing && now - ws->heard_ms > idle &&
                   now - ws->wrote_ms > idle) {
            ws->pinged_ms = now;
            ws->ping_due = true;
            lws_callback_on_writable(ws->wsi);
        }
    }
}

void edge_ws_close_session(const char *channel)
{
    for (edge_ws_t *ws = s_ws.all; ws; ws = ws->next)
        if (strcmp(ws->channel, channel) == 0) {
            (*s_ws.session_ended)++;
            edge_ws_close(ws, S_CLOSE_SESSION, "session ended: log in again");
        }
}

void edge_ws_close_all(void)
{
    for (edge_ws_t *ws = s_ws.all; ws; ws = ws->next)
        edge_ws_close(ws, 1001, "edge restarting: reconnect");
}

int edge_ws_init(edge_t *edge)
{
    s_ws.edge = edge;
    s_ws.connect_tokens = (double)edge->config->ws_connect_rate;
    s_ws.connect_ms = sh_clock_mono_ms();
    sh_metrics_t *m = edge->metrics;
    const char *help = "WebSocket upgrades refused";
    s_ws.connections =
        sh_metrics_gauge(m, "shoal_ws_connections", "open WebSocket connections", NULL);
    s_ws.rejected_origin =
        sh_metrics_counter(m, "shoal_ws_rejected_total", help, "reason=\"origin\"");
    s_ws.rejected_auth = sh_metrics_counter(m, "shoal_ws_rejected_total", help, "reason=\"auth\"");
    s_ws.rejected_full = sh_metrics_counter(m, "shoal_ws_rejected_total", help, "reason=\"full\"");
    s_ws.rejected_rate = sh_metrics_counter(m, "shoal_ws_rejected_total", help, "reason=\"rate\"");
    s_ws.rejected_bad =
        sh_metrics_counter(m, "shoal_ws_rejected_total", help, "reason=\"invalid\"");
    s_ws.messages_in = sh_metrics_counter(m, "shoal_ws_messages_in_total",
                                          "messages from WebSocket clients", NULL);
    s_ws.events_sent = sh_metrics_counter(m, "shoal_ws_events_sent_total",
                                          "messages written to WebSocket clients", NULL);
    s_ws.coalesced = sh_metrics_counter(m, "shoal_ws_coalesced_total",
                                        "queued latest values replaced by a newer one", NULL);
    s_ws.laggards = sh_metrics_counter(m, "shoal_ws_laggards_total",
                                       "clients closed because their queue was full", NULL);
    s_ws.too_big = sh_metrics_counter(m, "shoal_ws_closed_total", "WebSocket clients closed",
                                      "reason=\"too_big\"");
    s_ws.too_fast = sh_metrics_counter(m, "shoal_ws_closed_total", "WebSocket clients closed",
                                       "reason=\"rate\"");
    s_ws.session_ended = sh_metrics_counter(m, "shoal_ws_closed_total", "WebSocket clients closed",
                                            "reason=\"session\"");
    s_ws.no_pong = sh_metrics_counter(m, "shoal_ws_closed_total", "WebSocket clients closed",
                                      "reason=\"no_pong\"");
    if (!s_ws.connections || !s_ws.rejected_origin || !s_ws.rejected_auth || !s_ws.rejected_full ||
        !s_ws.rejected_rate || !s_ws.rejected_bad || !s_ws.messages_in || !s_ws.events_sent ||
        !s_ws.coalesced || !s_ws.laggards || !s_ws.too_big || !s_ws.too_fast || !s_ws.session_ended)
        return -1;
    return 0;
}
