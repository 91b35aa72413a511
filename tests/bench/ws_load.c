/*  ws_load.c - WebSocket load on one edge: N clients on GET /ws, items
    created at a paced rate, and the delivery latency of the events.

    One thread, epoll. Each client upgrades GET /ws (subprotocol shoal.v1,
    Origin http://HOST:PORT, the cookies given), subscribes to one channel
    after the edge's hello, answers pings, and takes now (wall clock) minus
    the ts of every event on that channel (its publish time) as the event's
    delivery latency. With --post-rate, once every client is subscribed, a
    few keep-alive HTTP connections create items (POST /api/items) at that
    rate: each item is one board event for every client. With --reconnect,
    a closed client comes back after a full-jitter backoff, and the time
    from the first close to all clients subscribed again is reported.

    It prints figures, a human report and a one-line JSON summary last on
    stdout, progress and phase lines ("ws_load: phase hold ...") on stderr.
    It never judges a figure: exit 0 once it ran, 1 when it cannot run, 2 on
    bad usage, 3 when no client ever got subscribed (nothing to measure).
    usage: ws_load --help
*/
#define _GNU_SOURCE /*  memmem, strerrorname_np  */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <sodium.h>

#include "sh_util.h"

#define WS_GUID            "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_SUBPROTOCOL     "shoal.v1"
#define WS_OP_CONT         0x0
#define WS_OP_TEXT         0x1
#define WS_OP_BINARY       0x2
#define WS_OP_CLOSE        0x8
#define WS_OP_PING         0x9
#define WS_OP_PONG         0xa
#define WS_CLOSE_NORMAL    1000
#define WS_CLOSE_PROTOCOL  1002
#define WS_CLOSE_NO_STATUS 1005
#define WS_CLOSE_ABNORMAL  1006
#define WS_CONTROL_MAX     125
#define READ_CHUNK         (256 * 1024)
#define HEAD_MAX           8192      /*  an HTTP head (upgrade or reply) larger is refused  */
#define MESSAGE_MAX        (1 << 20) /*  a larger frame or message is a protocol error  */
#define IN_KEEP_MAX        65536     /*  an emptied input buffer above this is given back  */
#define BACKOFF_BASE_MS    250       /*  the design's client backoff: full jitter, 250 ms..10 s  */
#define BACKOFF_CAP_MS     10000
#define BACKOFF_RESET_US   10000000 /*  open this long: the next backoff starts afresh  */
#define CATCH_UP_US        10000    /*  a paced connect or post may catch up this much lag  */
#define POST_SETTLE_US     5000000  /*  after the last post, wait this long for its reply  */
#define TICK_US            100000   /*  housekeeping: phases, timeouts, progress  */
#define PROGRESS_US        1000000
#define EPOLL_BATCH        1024
#define STARTS_PER_TURN    2000 /*  bounded work per loop turn: reads stay served  */
#define TAG_POST           (1ULL << 32)
#define STATUS_MAX         600
#define COUNTS_MAX         16
#define RECOVERIES_MAX     16
#define HIST_LINEAR        1024 /*  values below are exact (µs)  */
#define HIST_SUB           512  /*  then 512 buckets per power of two: 0.2 % wide  */
#define HIST_SHIFTS        31   /*  up to 2^40 µs  */
#define HIST_SIZE          (HIST_LINEAR + HIST_SHIFTS * HIST_SUB)
#define HIST_VALUE_MAX     ((INT64_C(1) << 40) - 1)

/*  --- figures -----------------------------------------------------------------------  */

/*  A log-linear histogram of microseconds: exact below 1024 µs, then 0.2 %
    wide buckets, so 30 million latencies cost 130 KiB, not 240 MB.  */
typedef struct {
    uint64_t n[HIST_SIZE];
    uint64_t count;
    uint64_t negative; /*  clamped to 0: the sender's clock was ahead  */
    int64_t max;
} hist_t;

static int s_hist_index(int64_t v)
{
    if (v < HIST_LINEAR)
        return (int)v;
    int top = 63 - __builtin_clzll((unsigned long long)v);
    int shift = top - 9; /*  v >> shift falls in [512, 1024)  */
    return HIST_LINEAR + (shift - 1) * HIST_SUB + (int)((v >> shift) - HIST_SUB);
}

static int64_t s_hist_upper(int index)
{
    if (index < HIST_LINEAR)
        return index;
    int shift = (index - HIST_LINEAR) / HIST_SUB + 1;
    int64_t sub = (index - HIST_LINEAR) % HIST_SUB + HIST_SUB;
    return ((sub + 1) << shift) - 1;
}

static void s_hist_add(hist_t *h, int64_t v)
{
    if (v < 0) {
        h->negative++;
        v = 0;
    }
    if (v > HIST_VALUE_MAX)
        v = HIST_VALUE_MAX;
    h->n[s_hist_index(v)]++;
    h->count++;
    if (v > h->max)
        h->max = v;
}

/*  The p-quantile (0 < p <= 1) in ms: the upper edge of its bucket, never
    above the largest value seen; -1 when empty.  */
static double s_hist_ms(const hist_t *h, double p)
{
    if (!h->count)
        return -1;
    uint64_t rank = (uint64_t)(p * (double)h->count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_SIZE; i++) {
        seen += h->n[i];
        if (seen >= rank) {
            int64_t v = s_hist_upper(i);
            return (double)(v < h->max ? v : h->max) / 1000.0;
        }
    }
    return (double)h->max / 1000.0;
}

/*  A few counts by a small key (a close code, an errno); the rest are
    summed under key -1.  */
typedef struct {
    int key[COUNTS_MAX];
    uint64_t n[COUNTS_MAX];
    int used;
} counts_t;

static void s_count(counts_t *c, int key)
{
    for (int i = 0; i < c->used; i++)
        if (c->key[i] == key) {
            c->n[i]++;
            return;
        }
    if (c->used < COUNTS_MAX - 1 || key == -1) {
        c->key[c->used] = key;
        c->n[c->used++] = 1;
        return;
    }
    s_count(c, -1);
}

/*  --- state -------------------------------------------------------------------------  */

typedef enum { CLIENT_IDLE, CLIENT_CONNECTING, CLIENT_UPGRADING, CLIENT_OPEN } client_state_t;

typedef struct {
    int fd;
    client_state_t state;
    bool hello;
    bool subscribed;
    bool sampled; /*  parses every message; the others count frames once subscribed  */
    bool waiting; /*  in the connect queue or the backoff heap  */
    bool close_sent;
    bool want_out;      /*  epoll also reports writable: out holds bytes  */
    int attempts;       /*  failures in a row: the backoff's exponent  */
    int msg_opcode;     /*  of the fragmented message in msg; 0: none  */
    int64_t attempt_us; /*  monotonic: this attempt started  */
    int64_t up_us;      /*  monotonic: subscribed since  */
    int64_t offset;     /*  the last offset seen on the channel (sampled clients)  */
    char epoch[48];
    char key[32]; /*  Sec-WebSocket-Key of this attempt  */
    sh_buf_t in;  /*  bytes read and not consumed yet (a partial head or frame)  */
    sh_buf_t out; /*  bytes the socket did not take yet  */
    sh_buf_t msg; /*  a fragmented message being put together  */
} client_t;

typedef struct {
    int fd;
    bool busy;
    int64_t sent_us;
    sh_buf_t in;
} poster_t;

typedef struct {
    int64_t due_us;
    int client;
} timer_t_;

typedef enum {
    PHASE_CONNECT,
    PHASE_POST,
    PHASE_DRAIN,
    PHASE_SETTLE,
    PHASE_HOLD,
    PHASE_DONE
} phase_t;
static const char *const PHASE_NAMES[] = {"connect", "post", "drain", "settle", "hold", "done"};

typedef struct {
    phase_t phase;
    int64_t start_us, end_us; /*  end_us 0: not complete  */
    int lowest;               /*  fewest clients subscribed during it  */
} recovery_t;

static struct {
    /*  options  */
    char host[256];
    int port;
    const char *cookie, *channel, *csrf;
    int clients, sample, timeout_s, connect_for_s, post_for_s, post_conns, drain_s, settle_s;
    int hold_s;
    double connect_rate, reconnect_rate, post_rate;
    bool reconnect, until_recovered;
    int edge_pid;
    /*  runtime  */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int ep;
    client_t *c;
    poster_t *posters;
    int *queue; /*  clients waiting for a connect slot: a ring of capacity clients  */
    int queue_head, queue_len;
    timer_t_ *heap; /*  clients in backoff, earliest first  */
    int heap_len;
    int64_t connect_next_us;
    unsigned char *rbuf;
    volatile sig_atomic_t stop;
    phase_t phase;
    int64_t t0_us, phase_us, connected_us, post_next_us, post_end_us;
    int subscribed;
    bool all_up; /*  every client subscribed right now  */
    bool ever_all_up;
    int subscribed_at_connect;
    /*  counters  */
    uint64_t attempts, upgrades, timeouts, bad_upgrades, protocol_errors, bad_json;
    uint64_t server_errors, binary_messages, other_messages, other_events, no_ts, relost;
    uint64_t events_parsed, events_counted, events_at_post, gaps, duplicates, pings;
    uint64_t upgrade_status[STATUS_MAX];
    counts_t connect_errors, closes;
    hist_t latency;
    /*  posts  */
    uint64_t posts_sent, posts_done, posts_failed, post_status[STATUS_MAX];
    int posts_busy;
    int64_t post_start_us, post_stop_us;
    hist_t post_latency;
    /*  snapshots  */
    long rss_before, rss_connected, rss_after;
    double edge_cpu0, edge_cpu1, self_cpu0, self_cpu1;
    uint64_t expected;
    recovery_t rec[RECOVERIES_MAX];
    int rec_len;
    bool in_recovery;
    bool hold_armed; /*  the next close starts an episode even with clients still down  */
} s;

/*  --- small helpers -----------------------------------------------------------------  */

static int64_t s_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double s_since_s(int64_t from_us, int64_t to_us)
{
    return (double)(to_us - from_us) / 1e6;
}

static void s_say(const char *fmt, ...) SH_PRINTF(1, 2);
static void s_say(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "ws_load: %7.1fs ", s_since_s(s.t0_us, sh_clock_mono_us()));
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
}

/*  VmRSS of a process in KiB, -1 when unknown.  */
static long s_proc_rss_kib(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

/*  CPU seconds (user + system) a process has used, -1 when unknown.  */
static double s_proc_cpu_s(int pid)
{
    char path[64], text[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    /*  the command name may hold spaces and parentheses: fields start after the last ')'  */
    const char *p = strrchr(text, ')');
    unsigned long utime, stime;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static double s_cpu_pct(double cpu0, double cpu1, int64_t from_us, int64_t to_us)
{
    if (cpu0 < 0 || cpu1 < 0 || to_us <= from_us)
        return -1;
    return 100.0 * (cpu1 - cpu0) / s_since_s(from_us, to_us);
}

/*  --- connect queue and backoff heap ------------------------------------------------  */

static void s_queue_push(int i)
{
    s.queue[(s.queue_head + s.queue_len) % s.clients] = i;
    s.queue_len++;
    s.c[i].waiting = true;
}

static int s_queue_pop(void)
{
    int i = s.queue[s.queue_head];
    s.queue_head = (s.queue_head + 1) % s.clients;
    s.queue_len--;
    return i;
}

static void s_heap_push(int64_t due_us, int i)
{
    int k = s.heap_len++;
    while (k > 0 && s.heap[(k - 1) / 2].due_us > due_us) {
        s.heap[k] = s.heap[(k - 1) / 2];
        k = (k - 1) / 2;
    }
    s.heap[k] = (timer_t_){due_us, i};
    s.c[i].waiting = true;
}

static int s_heap_pop(void)
{
    int top = s.heap[0].client;
    timer_t_ last = s.heap[--s.heap_len];
    int k = 0;
    for (;;) {
        int child = 2 * k + 1;
        if (child >= s.heap_len)
            break;
        if (child + 1 < s.heap_len && s.heap[child + 1].due_us < s.heap[child].due_us)
            child++;
        if (s.heap[child].due_us >= last.due_us)
            break;
        s.heap[k] = s.heap[child];
        k = child;
    }
    if (s.heap_len)
        s.heap[k] = last;
    return top;
}

/*  --- recovery episodes -------------------------------------------------------------  */

static void s_on_drop(int64_t now)
{
    if (s.all_up || s.hold_armed) {
        s.all_up = s.hold_armed = false;
        if (s.rec_len < RECOVERIES_MAX) {
            s.rec[s.rec_len] = (recovery_t){s.phase, now, 0, s.subscribed};
            s.in_recovery = true;
        }
    }
    if (s.in_recovery && s.subscribed < s.rec[s.rec_len].lowest)
        s.rec[s.rec_len].lowest = s.subscribed;
}

static void s_on_up(int64_t now)
{
    if (s.subscribed < s.clients)
        return;
    s.all_up = true;
    s.ever_all_up = true;
    if (s.in_recovery) {
        recovery_t *r = &s.rec[s.rec_len++];
        r->end_us = now;
        s.in_recovery = false;
        s_say("recovered: all %d clients subscribed again %.2f s after the first close "
              "(in phase %s; fewest subscribed meanwhile: %d)",
              s.clients, s_since_s(r->start_us, r->end_us), PHASE_NAMES[r->phase], r->lowest);
    }
}

/*  --- clients: end, write -----------------------------------------------------------  */

/*  Close the client's socket and forget the attempt; with --reconnect,
    schedule the next one after a full-jitter backoff. Always returns -1,
    so a caller can end a client and return in one statement.  */
static int s_client_end(int i)
{
    client_t *c = &s.c[i];
    int64_t now = sh_clock_mono_us();
    if (c->fd >= 0)
        close(c->fd); /*  also leaves the epoll set  */
    c->fd = -1;
    if (c->subscribed) {
        c->subscribed = false;
        s.subscribed--;
        if (now - c->up_us >= BACKOFF_RESET_US)
            c->attempts = 0;
        s_on_drop(now);
    }
    c->state = CLIENT_IDLE;
    c->hello = c->close_sent = c->want_out = false;
    c->msg_opcode = 0;
    sh_buf_reset(&c->out);
    sh_buf_reset(&c->msg);
    if (c->in.cap > IN_KEEP_MAX)
        sh_buf_free(&c->in);
    sh_buf_reset(&c->in);
    if (s.reconnect && !s.stop && s.phase != PHASE_DONE) {
        uint32_t cap_ms = BACKOFF_CAP_MS;
        if (c->attempts < 16 && (BACKOFF_BASE_MS << c->attempts) < BACKOFF_CAP_MS)
            cap_ms = (uint32_t)BACKOFF_BASE_MS << c->attempts;
        c->attempts++;
        s_heap_push(now + (int64_t)randombytes_uniform(cap_ms + 1) * 1000, i);
    }
    return -1;
}

static void s_client_watch(client_t *c, int i, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)i};
    epoll_ctl(s.ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/*  Write what is queued; returns 0, or -1 when the client ended.  */
static int s_client_flush(int i)
{
    client_t *c = &s.c[i];
    size_t off = 0;
    while (off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + off, c->out.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        s_count(&s.closes, WS_CLOSE_ABNORMAL);
        return s_client_end(i);
    }
    memmove(c->out.data, c->out.data + off, c->out.len - off);
    c->out.len -= off;
    if (c->out.len && !c->want_out)
        s_client_watch(c, i, EPOLLIN | EPOLLOUT);
    else if (!c->out.len && c->want_out)
        s_client_watch(c, i, EPOLLIN);
    c->want_out = c->out.len > 0;
    return 0;
}

/*  Queue one frame, masked as a client must (RFC 6455 5.3), and write.  */
static int s_client_frame(int i, int opcode, const void *payload, size_t len)
{
    client_t *c = &s.c[i];
    unsigned char head[14];
    size_t h = 0;
    head[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        head[h++] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        head[h++] = 0x80 | 126;
        head[h++] = (unsigned char)(len >> 8);
        head[h++] = (unsigned char)len;
    } else {
        head[h++] = 0x80 | 127;
        for (int k = 7; k >= 0; k--)
            head[h++] = (unsigned char)((uint64_t)len >> (8 * k));
    }
    unsigned char *mask = head + h;
    randombytes_buf(mask, 4);
    h += 4;
    size_t at = c->out.len + h;
    if (sh_buf_append(&c->out, head, h) || sh_buf_append(&c->out, payload, len)) {
        fputs("ws_load: out of memory\n", stderr);
        exit(1);
    }
    unsigned char *p = (unsigned char *)c->out.data + at;
    for (size_t k = 0; k < len; k++)
        p[k] ^= mask[k & 3];
    return s_client_flush(i);
}

static int s_client_close(int i, int code)
{
    unsigned char payload[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    s.c[i].close_sent = true;
    return s_client_frame(i, WS_OP_CLOSE, payload, code == WS_CLOSE_NO_STATUS ? 0 : 2);
}

static int s_client_protocol_error(int i, const char *why)
{
    s.protocol_errors++;
    if (s.protocol_errors <= 5)
        s_say("client %d: protocol error: %s", i, why);
    if (s_client_close(i, WS_CLOSE_PROTOCOL) == 0)
        s_client_end(i);
    return -1;
}

/*  --- clients: connect and upgrade --------------------------------------------------  */

static int s_client_send_upgrade(int i)
{
    client_t *c = &s.c[i];
    unsigned char raw[16];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(c->key, sizeof c->key, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
    c->state = CLIENT_UPGRADING;
    sh_buf_printf(&c->out,
                  "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " WS_SUBPROTOCOL "\r\n"
                  "Origin: http://%s:%d\r\nCookie: %s\r\nUser-Agent: shoal-ws_load\r\n\r\n",
                  s.host, s.port, c->key, s.host, s.port, s.cookie);
    s_client_watch(c, i, EPOLLIN);
    return s_client_flush(i);
}

static void s_client_start(int i, int64_t now)
{
    client_t *c = &s.c[i];
    c->waiting = false;
    c->attempt_us = now;
    s.attempts++;
    c->fd = socket(s.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        s_count(&s.connect_errors, errno);
        s_client_end(i);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
    if (epoll_ctl(s.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        s_count(&s.connect_errors, errno);
        s_client_end(i);
        return;
    }
    c->state = CLIENT_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&s.addr, s.addr_len) == 0)
        s_client_send_upgrade(i);
    else if (errno != EINPROGRESS) {
        s_count(&s.connect_errors, errno);
        s_client_end(i);
    }
}

/*  The value of header `name` in an HTTP head (lines after the status line),
    trimmed, into out; false when absent.  */
static bool s_head_value(const char *head, size_t len, const char *name, char *out, size_t size)
{
    size_t nlen = strlen(name);
    const char *end = head + len;
    const char *line = memchr(head, '\n', len);
    while (line && ++line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            eol = end;
        if ((size_t)(eol - line) > nlen && line[nlen] == ':' && !strncasecmp(line, name, nlen)) {
            const char *v = line + nlen + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t n = (size_t)(ve - v) < size - 1 ? (size_t)(ve - v) : size - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return true;
        }
        line = eol;
    }
    return false;
}

/*  The status of an HTTP head ("HTTP/1.1 NNN ..."), 0 when malformed.  */
static int s_head_status(const char *head, size_t len)
{
    if (len < 12 || strncmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ')
        return 0;
    int status = 0;
    for (int k = 9; k < 12; k++) {
        if (head[k] < '0' || head[k] > '9')
            return 0;
        status = status * 10 + head[k] - '0';
    }
    return status < STATUS_MAX ? status : 0;
}

/*  Check the upgrade reply at data[0..len): its status, Upgrade, the
    accept key (base64 SHA-1 of our key and the GUID) and the subprotocol.
    Returns the bytes of the head, 0 when it is not complete yet, or -1 when
    the client ended (refused or bad reply).  */
static ssize_t s_client_upgrade(int i, const char *data, size_t len)
{
    client_t *c = &s.c[i];
    const char *end = memmem(data, len, "\r\n\r\n", 4);
    if (!end) {
        if (len <= HEAD_MAX)
            return 0;
        s.bad_upgrades++;
        return s_client_end(i);
    }
    size_t head_len = (size_t)(end - data) + 4;
    int status = s_head_status(data, head_len);
    if (status != 101) {
        s.upgrade_status[status]++;
        return s_client_end(i);
    }
    char concat[96], want[32], got[64], upgrade[32], proto[64];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    int n = snprintf(concat, sizeof concat, "%s" WS_GUID, c->key);
    EVP_Digest(concat, (size_t)n, digest, &digest_len, EVP_sha1(), NULL);
    sodium_bin2base64(want, sizeof want, digest, digest_len, sodium_base64_VARIANT_ORIGINAL);
    if (!s_head_value(data, head_len, "upgrade", upgrade, sizeof upgrade) ||
        strcasecmp(upgrade, "websocket") != 0 ||
        !s_head_value(data, head_len, "sec-websocket-accept", got, sizeof got) ||
        strcmp(got, want) != 0 ||
        !s_head_value(data, head_len, "sec-websocket-protocol", proto, sizeof proto) ||
        strcmp(proto, WS_SUBPROTOCOL) != 0) {
        s.bad_upgrades++;
        if (s.bad_upgrades <= 3)
            s_say("client %d: 101 without a valid Upgrade, Sec-WebSocket-Accept or "
                  "Sec-WebSocket-Protocol: " WS_SUBPROTOCOL,
                  i);
        return s_client_end(i);
    }
    s.upgrades++;
    c->state = CLIENT_OPEN;
    return (ssize_t)head_len;
}

/*  --- clients: messages -------------------------------------------------------------  */

static int s_client_subscribe(int i)
{
    char text[320];
    json_t *m = json_pack("{s:s, s:s}", "type", "subscribe", "channel", s.channel);
    size_t n = json_dumpb(m, text, sizeof text, JSON_COMPACT);
    json_decref(m);
    assert(n > 0 && n <= sizeof text);
    return s_client_frame(i, WS_OP_TEXT, text, n);
}

/*  The epoch of a record ("epoch" a string or a number) into out.  */
static void s_epoch(json_t *m, char *out, size_t size)
{
    json_t *e = json_object_get(m, "epoch");
    if (json_is_string(e))
        snprintf(out, size, "%s", json_string_value(e));
    else if (json_is_integer(e))
        snprintf(out, size, "%" JSON_INTEGER_FORMAT, json_integer_value(e));
    else
        out[0] = 0;
}

static void s_on_event(client_t *c, json_t *m, int64_t wall_us)
{
    const char *channel = json_string_value(json_object_get(m, "channel"));
    if (!channel || strcmp(channel, s.channel) != 0) {
        s.other_events++;
        return;
    }
    s.events_parsed++;
    json_t *ts = json_object_get(m, "ts");
    if (json_is_integer(ts))
        s_hist_add(&s.latency, wall_us - (int64_t)json_integer_value(ts));
    else
        s.no_ts++;
    json_t *offset = json_object_get(m, "offset");
    if (!json_is_integer(offset))
        return;
    char epoch[sizeof c->epoch];
    s_epoch(m, epoch, sizeof epoch);
    int64_t o = (int64_t)json_integer_value(offset);
    if (strcmp(epoch, c->epoch) == 0 && c->offset >= 0) {
        /*  offsets of one epoch are 1, 2, 3...: anything else was lost or repeated  */
        if (o <= c->offset)
            s.duplicates++;
        else if (o != c->offset + 1)
            s.gaps++;
    }
    if (o > c->offset || strcmp(epoch, c->epoch) != 0) {
        memcpy(c->epoch, epoch, sizeof epoch);
        c->offset = o;
    }
}

static int s_on_subscribed(int i, json_t *m, int64_t now)
{
    client_t *c = &s.c[i];
    const char *channel = json_string_value(json_object_get(m, "channel"));
    if (!channel || strcmp(channel, s.channel) != 0) {
        s.other_messages++;
        return 0;
    }
    if (c->subscribed) {
        /*  the edge found its history lost: a browser would refetch  */
        if (json_is_false(json_object_get(m, "recovered")))
            s.relost++;
        return 0;
    }
    s_epoch(m, c->epoch, sizeof c->epoch);
    json_t *offset = json_object_get(m, "offset");
    c->offset = json_is_integer(offset) ? (int64_t)json_integer_value(offset) : -1;
    c->subscribed = true;
    c->up_us = now;
    s.subscribed++;
    s_on_up(now);
    return 0;
}

/*  One whole message. Before the subscription and on sampled clients it is
    parsed with jansson; the other clients count their frames from then on
    (they receive nothing but the channel's events: they send nothing).
    Returns 0, or -1 when the client ended.  */
static int s_client_message(int i, int opcode, const unsigned char *data, size_t len,
                            int64_t wall_us)
{
    client_t *c = &s.c[i];
    if (opcode == WS_OP_BINARY) {
        s.binary_messages++;
        return 0;
    }
    if (c->subscribed && !c->sampled) {
        s.events_counted++;
        return 0;
    }
    json_error_t error;
    json_t *m = json_loadb((const char *)data, len, 0, &error);
    const char *type = json_string_value(json_object_get(m, "type"));
    int rc = 0;
    if (!type) {
        s.bad_json++;
    } else if (strcmp(type, "event") == 0) {
        s_on_event(c, m, wall_us);
    } else if (strcmp(type, "hello") == 0) {
        if (!c->hello) {
            c->hello = true;
            rc = s_client_subscribe(i);
        }
    } else if (strcmp(type, "subscribed") == 0) {
        rc = s_on_subscribed(i, m, sh_clock_mono_us());
    } else if (strcmp(type, "error") == 0) {
        s.server_errors++;
        if (s.server_errors <= 5) {
            const char *code = json_string_value(json_object_get(m, "code"));
            s_say("client %d: error %s", i, code ? code : "(no code)");
        }
    } else if (strcmp(type, "pong") != 0) {
        s.other_messages++;
    }
    json_decref(m);
    return rc;
}

/*  Consume the frames in data[0..len) (server frames: never masked).
    Returns the bytes used (a partial frame at the end waits for more), or
    -1 when the client ended.  */
static ssize_t s_client_frames(int i, const unsigned char *data, size_t len, int64_t wall_us)
{
    client_t *c = &s.c[i];
    size_t pos = 0;
    while (len - pos >= 2) {
        const unsigned char *f = data + pos;
        bool fin = f[0] & 0x80;
        int opcode = f[0] & 0x0f;
        if (f[0] & 0x70)
            return s_client_protocol_error(i, "reserved bits set (no extension was agreed)");
        if (f[1] & 0x80)
            return s_client_protocol_error(i, "masked frame from the server");
        uint64_t plen = f[1] & 0x7f;
        size_t head = 2;
        if (plen == 126) {
            if (len - pos < 4)
                break;
            plen = (uint64_t)f[2] << 8 | f[3];
            head = 4;
        } else if (plen == 127) {
            if (len - pos < 10)
                break;
            plen = 0;
            for (int k = 0; k < 8; k++)
                plen = plen << 8 | f[2 + k];
            head = 10;
        }
        if (plen > MESSAGE_MAX)
            return s_client_protocol_error(i, "frame larger than 1 MiB");
        if (len - pos - head < plen)
            break;
        const unsigned char *p = f + head;
        pos += head + (size_t)plen;
        int rc = 0;
        if (opcode >= WS_OP_CLOSE) {
            if (!fin || plen > WS_CONTROL_MAX)
                return s_client_protocol_error(i, "fragmented or long control frame");
            if (opcode == WS_OP_PING) {
                s.pings++;
                rc = s_client_frame(i, WS_OP_PONG, p, (size_t)plen);
            } else if (opcode == WS_OP_CLOSE) {
                int code = plen >= 2 ? (p[0] << 8 | p[1]) : WS_CLOSE_NO_STATUS;
                s_count(&s.closes, code);
                if (!c->close_sent && s_client_close(i, code) < 0)
                    return -1;
                return s_client_end(i);
            } else if (opcode != WS_OP_PONG) {
                return s_client_protocol_error(i, "unknown control opcode");
            }
        } else if (opcode == WS_OP_CONT) {
            if (!c->msg_opcode)
                return s_client_protocol_error(i, "continuation outside a message");
            if (c->msg.len + plen > MESSAGE_MAX)
                return s_client_protocol_error(i, "message larger than 1 MiB");
            sh_buf_append(&c->msg, p, (size_t)plen);
            if (fin) {
                int op = c->msg_opcode;
                c->msg_opcode = 0;
                rc = s_client_message(i, op, (unsigned char *)c->msg.data, c->msg.len, wall_us);
                if (c->state != CLIENT_IDLE)
                    sh_buf_reset(&c->msg);
            }
        } else if (opcode == WS_OP_TEXT || opcode == WS_OP_BINARY) {
            if (c->msg_opcode)
                return s_client_protocol_error(i, "new message inside a fragmented one");
            if (fin) {
                rc = s_client_message(i, opcode, p, (size_t)plen, wall_us);
            } else {
                c->msg_opcode = opcode;
                sh_buf_append(&c->msg, p, (size_t)plen);
            }
        } else {
            return s_client_protocol_error(i, "unknown data opcode");
        }
        if (rc < 0)
            return -1;
    }
    return (ssize_t)pos;
}

/*  Bytes for a client in the upgrade or open state: the upgrade head first,
    then frames. Returns the bytes used, or -1 when the client ended.  */
static ssize_t s_client_consume(int i, const unsigned char *data, size_t len, int64_t wall_us)
{
    size_t used = 0;
    if (s.c[i].state == CLIENT_UPGRADING) {
        ssize_t n = s_client_upgrade(i, (const char *)data, len);
        if (n <= 0)
            return n;
        used = (size_t)n;
    }
    ssize_t n = s_client_frames(i, data + used, len - used, wall_us);
    return n < 0 ? -1 : (ssize_t)used + n;
}

static void s_client_readable(int i)
{
    client_t *c = &s.c[i];
    ssize_t n = recv(c->fd, s.rbuf, READ_CHUNK, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        /*  EOF or reset without a close frame: 1006 (abnormal closure)  */
        if (c->state == CLIENT_OPEN)
            s_count(&s.closes, WS_CLOSE_ABNORMAL);
        else
            s_count(&s.connect_errors, n < 0 ? errno : 0); /*  0: EOF  */
        s_client_end(i);
        return;
    }
    int64_t wall_us = s_wall_us();
    if (c->in.len == 0) {
        ssize_t used = s_client_consume(i, s.rbuf, (size_t)n, wall_us);
        if (used >= 0 && used < n)
            sh_buf_append(&c->in, s.rbuf + used, (size_t)(n - used));
        return;
    }
    sh_buf_append(&c->in, s.rbuf, (size_t)n);
    ssize_t used = s_client_consume(i, (unsigned char *)c->in.data, c->in.len, wall_us);
    if (used < 0)
        return;
    memmove(c->in.data, c->in.data + used, c->in.len - (size_t)used);
    c->in.len -= (size_t)used;
    if (c->in.len == 0 && c->in.cap > IN_KEEP_MAX)
        sh_buf_free(&c->in);
}

static void s_client_event(int i, uint32_t events)
{
    client_t *c = &s.c[i];
    if (c->state == CLIENT_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            s_count(&s.connect_errors, err ? err : ECONNRESET);
            s_client_end(i);
            return;
        }
        s_client_send_upgrade(i);
        return;
    }
    if ((events & EPOLLOUT) && s_client_flush(i) < 0)
        return;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        s_client_readable(i);
}

/*  --- posts: items created on a few keep-alive connections ------------------------  */

static int s_poster_connect(int j)
{
    poster_t *p = &s.posters[j];
    /*  a blocking socket: requests are a few hundred bytes on loopback, and
        replies are read only once epoll says they are there  */
    p->fd = socket(s.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (p->fd < 0 || connect(p->fd, (struct sockaddr *)&s.addr, s.addr_len) < 0) {
        if (p->fd >= 0)
            close(p->fd);
        p->fd = -1;
        return -1;
    }
    int one = 1;
    setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_POST | (uint64_t)j};
    epoll_ctl(s.ep, EPOLL_CTL_ADD, p->fd, &ev);
    return 0;
}

static void s_poster_close(int j)
{
    poster_t *p = &s.posters[j];
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    sh_buf_reset(&p->in);
    if (p->busy) {
        p->busy = false;
        s.posts_busy--;
        s.posts_failed++;
    }
}

static void s_poster_send(int j, int64_t now)
{
    poster_t *p = &s.posters[j];
    s.posts_sent++;
    if (p->fd < 0 && s_poster_connect(j) < 0) {
        s.posts_failed++;
        return;
    }
    char title[64], body[160];
    snprintf(title, sizeof title, "ws_load item %" PRIu64, s.posts_sent);
    json_t *item = json_pack("{s:s, s:s}", "title", title, "body",
                             "created by tests/bench/ws_load at a paced rate");
    size_t blen = json_dumpb(item, body, sizeof body, JSON_COMPACT);
    json_decref(item);
    assert(blen > 0 && blen <= sizeof body);
    char req[1024 + 512];
    int n = snprintf(req, sizeof req,
                     "POST /api/items HTTP/1.1\r\nHost: %s:%d\r\nOrigin: http://%s:%d\r\n"
                     "Cookie: %s\r\nX-CSRF-Token: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%.*s",
                     s.host, s.port, s.host, s.port, s.cookie, s.csrf ? s.csrf : "", blen,
                     (int)blen, body);
    if (n < 0 || (size_t)n >= sizeof req || send(p->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        s.posts_failed++;
        s_poster_close(j);
        return;
    }
    p->busy = true;
    p->sent_us = now;
    s.posts_busy++;
}

static void s_poster_readable(int j)
{
    poster_t *p = &s.posters[j];
    ssize_t n = recv(p->fd, s.rbuf, READ_CHUNK, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        s_poster_close(j);
        return;
    }
    sh_buf_append(&p->in, s.rbuf, (size_t)n);
    const char *end = memmem(p->in.data, p->in.len, "\r\n\r\n", 4);
    if (!end) {
        if (p->in.len > HEAD_MAX)
            s_poster_close(j);
        return;
    }
    size_t head_len = (size_t)(end - p->in.data) + 4;
    char value[32];
    int64_t body_len = 0;
    if (!s_head_value(p->in.data, head_len, "content-length", value, sizeof value) ||
        sh_parse_int(value, 0, MESSAGE_MAX, &body_len) < 0) {
        s_poster_close(j); /*  the edge always sends a Content-Length  */
        return;
    }
    if (p->in.len < head_len + (size_t)body_len)
        return;
    int status = s_head_status(p->in.data, head_len);
    bool closing = s_head_value(p->in.data, head_len, "connection", value, sizeof value) &&
                   strcasecmp(value, "close") == 0;
    s.post_status[status]++;
    s_hist_add(&s.post_latency, sh_clock_mono_us() - p->sent_us);
    s.posts_done++;
    p->busy = false;
    s.posts_busy--;
    size_t used = head_len + (size_t)body_len;
    memmove(p->in.data, p->in.data + used, p->in.len - used);
    p->in.len -= used;
    if (closing)
        s_poster_close(j);
}

/*  Send the posts that are due, each on a free connection; a post waits
    when every connection is busy (then the rate achieved falls short).  */
static void s_posts_pump(int64_t now)
{
    int64_t interval = (int64_t)(1e6 / s.post_rate);
    while (now >= s.post_next_us && now < s.post_end_us) {
        int free_one = -1;
        for (int j = 0; j < s.post_conns && free_one < 0; j++)
            if (!s.posters[j].busy)
                free_one = j;
        if (free_one < 0)
            return;
        s_poster_send(free_one, now);
        s.post_next_us += interval;
        if (s.post_next_us < now - CATCH_UP_US)
            s.post_next_us = now - CATCH_UP_US;
    }
}

/*  --- phases ------------------------------------------------------------------------  */

static uint64_t s_events_received(void)
{
    return s.events_parsed + s.events_counted;
}

static void s_phase(phase_t next, int64_t now)
{
    s.phase = next;
    s.phase_us = now;
}

static void s_start_posts(int64_t now)
{
    s.edge_cpu0 = s.edge_pid ? s_proc_cpu_s(s.edge_pid) : -1;
    s.self_cpu0 = s_proc_cpu_s(getpid());
    s.events_at_post = s_events_received();
    s.post_start_us = now;
    s.post_next_us = now;
    s.post_end_us = now + (int64_t)s.post_for_s * 1000000;
    s_phase(PHASE_POST, now);
    s_say("phase post: %.0f items/s for %d s on %d connections", s.post_rate, s.post_for_s,
          s.post_conns);
}

static void s_end_posts(int64_t now)
{
    s.post_stop_us = now;
    s.edge_cpu1 = s.edge_pid ? s_proc_cpu_s(s.edge_pid) : -1;
    s.self_cpu1 = s_proc_cpu_s(getpid());
    s.expected = s.post_status[201] * (uint64_t)s.clients;
    s_phase(PHASE_DRAIN, now);
    s_say("phase drain: %" PRIu64 " items created (%" PRIu64 " sent); waiting up to %d s for "
          "%" PRIu64 " events",
          s.post_status[201], s.posts_sent, s.drain_s, s.expected);
}

static void s_start_hold(int64_t now)
{
    s.rss_after = s.edge_pid ? s_proc_rss_kib(s.edge_pid) : -1;
    if (s.in_recovery) {
        /*  clients still down from before: that episode stays not complete, and
            the first close in the hold starts the one --until-recovered waits for  */
        s.rec_len++;
        s.in_recovery = false;
        s.hold_armed = true;
    }
    s_phase(PHASE_HOLD, now);
    s_say("phase hold: %d of %d clients subscribed; holding up to %d s%s", s.subscribed, s.clients,
          s.hold_s, s.until_recovered ? " or until a recovery is complete" : "");
}

/*  Phase changes, timeouts and progress; runs every TICK_US.  */
static void s_tick(int64_t now)
{
    static int64_t next_progress_us, next_sweep_us;
    if (now >= next_sweep_us) {
        /*  an attempt that is not subscribed within --timeout fails  */
        int64_t limit = (int64_t)s.timeout_s * 1000000;
        for (int i = 0; i < s.clients; i++) {
            client_t *c = &s.c[i];
            if (c->state != CLIENT_IDLE && !c->subscribed && now - c->attempt_us > limit) {
                s.timeouts++;
                s_client_end(i);
            }
        }
        next_sweep_us = now + PROGRESS_US;
    }
    if (s.phase == PHASE_CONNECT) {
        bool late = now - s.phase_us >= (int64_t)s.connect_for_s * 1000000;
        /*  without --reconnect a failed client stays down: go on once none is in flight  */
        bool settled = !s.reconnect;
        for (int i = 0; i < s.clients && settled; i++)
            settled = s.c[i].subscribed || (s.c[i].state == CLIENT_IDLE && !s.c[i].waiting);
        if (s.all_up || late || settled) {
            s.connected_us = now;
            s.subscribed_at_connect = s.subscribed;
            s.rss_connected = s.edge_pid ? s_proc_rss_kib(s.edge_pid) : -1;
            s_say("phase connected: %d of %d clients subscribed in %.2f s%s", s.subscribed,
                  s.clients, s_since_s(s.phase_us, now), late ? " (gave up waiting)" : "");
            if (s.post_rate > 0)
                s_start_posts(now);
            else
                s_start_hold(now);
        }
    } else if (s.phase == PHASE_POST) {
        if (now >= s.post_end_us && (s.posts_busy == 0 || now >= s.post_end_us + POST_SETTLE_US))
            s_end_posts(now);
    } else if (s.phase == PHASE_DRAIN) {
        if (s_events_received() - s.events_at_post >= s.expected ||
            now - s.phase_us >= (int64_t)s.drain_s * 1000000) {
            s_phase(PHASE_SETTLE, now);
            if (s.reconnect && !s.all_up && s.settle_s > 0)
                s_say("phase settle: %d of %d clients subscribed; waiting up to %d s for all",
                      s.subscribed, s.clients, s.settle_s);
        }
    } else if (s.phase == PHASE_SETTLE) {
        if (!s.reconnect || s.all_up || now - s.phase_us >= (int64_t)s.settle_s * 1000000)
            s_start_hold(now);
    } else if (s.phase == PHASE_HOLD) {
        bool recovered = false;
        for (int r = 0; r < s.rec_len; r++)
            recovered |= s.rec[r].phase == PHASE_HOLD && s.rec[r].end_us;
        if (now - s.phase_us >= (int64_t)s.hold_s * 1000000 || (s.until_recovered && recovered))
            s_phase(PHASE_DONE, now);
    }
    if (now >= next_progress_us &&
        (s.phase == PHASE_CONNECT || s.in_recovery || s.phase == PHASE_POST)) {
        s_say("%s: %d/%d subscribed, %" PRIu64 " attempts, %" PRIu64 " events, %" PRIu64 " posts",
              PHASE_NAMES[s.phase], s.subscribed, s.clients, s.attempts, s_events_received(),
              s.posts_done);
        next_progress_us = now + PROGRESS_US;
    }
}

/*  Start the attempts that are due: backoffs that ran out join the queue,
    and the queue drains at the connect rate (--connect-rate while the
    clients first connect, --reconnect-rate after).  */
static void s_connects_pump(int64_t now)
{
    while (s.heap_len && s.heap[0].due_us <= now)
        s_queue_push(s_heap_pop());
    double rate = s.phase == PHASE_CONNECT ? s.connect_rate : s.reconnect_rate;
    for (int started = 0; s.queue_len && started < STARTS_PER_TURN; started++) {
        if (rate > 0) {
            if (now < s.connect_next_us)
                break;
            if (s.connect_next_us < now - CATCH_UP_US)
                s.connect_next_us = now - CATCH_UP_US;
            s.connect_next_us += (int64_t)(1e6 / rate);
        }
        s_client_start(s_queue_pop(), now);
    }
}

static int s_wait_ms(int64_t now, int64_t next_tick_us)
{
    int64_t next = next_tick_us;
    if (s.queue_len) {
        double rate = s.phase == PHASE_CONNECT ? s.connect_rate : s.reconnect_rate;
        int64_t at = rate > 0 ? s.connect_next_us : now;
        next = at < next ? at : next;
    }
    if (s.heap_len && s.heap[0].due_us < next)
        next = s.heap[0].due_us;
    if (s.phase == PHASE_POST && now < s.post_end_us && s.post_next_us < next)
        next = s.post_next_us;
    return next <= now ? 0 : (int)((next - now + 999) / 1000);
}

/*  --- report ------------------------------------------------------------------------  */

static json_t *s_counts_json(const counts_t *c, bool as_errno)
{
    json_t *o = json_object();
    for (int k = 0; k < c->used; k++) {
        char key[48];
        if (c->key[k] == -1)
            snprintf(key, sizeof key, "other");
        else if (as_errno && c->key[k] == 0)
            snprintf(key, sizeof key, "EOF");
        else if (as_errno)
            snprintf(key, sizeof key, "%s",
                     strerrorname_np(c->key[k]) ? strerrorname_np(c->key[k]) : "?");
        else
            snprintf(key, sizeof key, "%d", c->key[k]);
        json_object_set_new(o, key, json_integer((json_int_t)c->n[k]));
    }
    return o;
}

static json_t *s_status_json(const uint64_t *status)
{
    json_t *o = json_object();
    for (int k = 0; k < STATUS_MAX; k++)
        if (status[k]) {
            char key[8];
            snprintf(key, sizeof key, "%d", k); /*  0: no valid status line  */
            json_object_set_new(o, key, json_integer((json_int_t)status[k]));
        }
    return o;
}

static json_t *s_num(double v)
{
    return v < 0 ? json_null() : json_real((double)(int64_t)(v * 100 + 0.5) / 100);
}

static json_t *s_hist_json(const hist_t *h)
{
    return json_pack("{s:o, s:o, s:o, s:o, s:I, s:I}", "p50", s_num(s_hist_ms(h, 0.50)), "p90",
                     s_num(s_hist_ms(h, 0.90)), "p99", s_num(s_hist_ms(h, 0.99)), "max",
                     s_num(h->count ? (double)h->max / 1000.0 : -1), "samples",
                     (json_int_t)h->count, "negative", (json_int_t)h->negative);
}

static void s_print_dump(const char *label, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    printf("%-22s %s\n", label, text ? text : "?");
    free(text);
}

static void s_report(void)
{
    int64_t connect_end = s.connected_us ? s.connected_us : sh_clock_mono_us();
    double connect_s = s_since_s(s.t0_us, connect_end);
    uint64_t received = s_events_received() - s.events_at_post;
    double edge_cpu = s_cpu_pct(s.edge_cpu0, s.edge_cpu1, s.post_start_us, s.post_stop_us);
    double self_cpu = s_cpu_pct(s.self_cpu0, s.self_cpu1, s.post_start_us, s.post_stop_us);
    double per_conn = -1;
    if (s.rss_before >= 0 && s.rss_connected >= 0 && s.subscribed_at_connect > 0)
        per_conn = (double)(s.rss_connected - s.rss_before) / s.subscribed_at_connect;
    double post_s =
        s.post_stop_us > s.post_start_us ? s_since_s(s.post_start_us, s.post_stop_us) : 0;

    /*  an episode still open counts as not complete (seconds null)  */
    if (s.in_recovery) {
        s.rec_len++;
        s.in_recovery = false;
    }
    json_t *recs = json_array();
    for (int r = 0; r < s.rec_len; r++) {
        const recovery_t *e = &s.rec[r];
        json_array_append_new(
            recs, json_pack("{s:s, s:i, s:o}", "phase", PHASE_NAMES[e->phase], "lowest", e->lowest,
                            "seconds", s_num(e->end_us ? s_since_s(e->start_us, e->end_us) : -1)));
    }
    char target[300];
    snprintf(target, sizeof target, "%s:%d", s.host, s.port);
    json_t *connect =
        json_pack("{s:i, s:o, s:I, s:I, s:o, s:o, s:I, s:I}", "subscribed", s.subscribed_at_connect,
                  "seconds", s_num(connect_s), "attempts", (json_int_t)s.attempts, "upgrades",
                  (json_int_t)s.upgrades, "refused", s_status_json(s.upgrade_status),
                  "connect_errors", s_counts_json(&s.connect_errors, true), "timeouts",
                  (json_int_t)s.timeouts, "bad_upgrades", (json_int_t)s.bad_upgrades);
    json_t *events =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "received", (json_int_t)received,
                  "expected", (json_int_t)s.expected, "parsed", (json_int_t)s.events_parsed, "gaps",
                  (json_int_t)s.gaps, "duplicates", (json_int_t)s.duplicates, "relost",
                  (json_int_t)s.relost, "latency_ms", s_hist_json(&s.latency));
    json_t *posts = json_pack(
        "{s:f, s:i, s:I, s:I, s:o, s:o, s:o}", "rate", s.post_rate, "seconds", s.post_for_s, "sent",
        (json_int_t)s.posts_sent, "failed", (json_int_t)s.posts_failed, "per_s",
        s_num(post_s > 0 ? (double)s.posts_done / post_s : -1), "statuses",
        s_status_json(s.post_status), "latency_ms", s_hist_json(&s.post_latency));
    json_t *edge =
        json_pack("{s:i, s:I, s:I, s:I, s:o, s:o}", "pid", s.edge_pid, "rss_kib_before",
                  (json_int_t)s.rss_before, "rss_kib_connected", (json_int_t)s.rss_connected,
                  "rss_kib_after", (json_int_t)s.rss_after, "rss_kib_per_connection",
                  s_num(per_conn), "cpu_pct_posting", s_num(edge_cpu));
    json_t *errors = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "protocol", (json_int_t)s.protocol_errors,
        "bad_json", (json_int_t)s.bad_json, "server_errors", (json_int_t)s.server_errors, "binary",
        (json_int_t)s.binary_messages, "other_messages", (json_int_t)s.other_messages,
        "other_events", (json_int_t)s.other_events, "no_ts", (json_int_t)s.no_ts);
    json_t *summary =
        json_pack("{s:s, s:i, s:s, s:i, s:o, s:o, s:o, s:o, s:{s:o}, s:o, s:o, s:I, s:o}", "target",
                  target, "clients", s.clients, "channel", s.channel, "sample", s.sample, "connect",
                  connect, "events", events, "posts", posts, "edge", edge, "client",
                  "cpu_pct_posting", s_num(self_cpu), "closes", s_counts_json(&s.closes, false),
                  "recoveries", recs, "pings", (json_int_t)s.pings, "errors", errors);

    printf("ws_load: %d clients on ws://%s/ws, channel %s\n", s.clients, target, s.channel);
    printf("%-22s %d of %d subscribed in %.2f s (%" PRIu64 " attempts, %" PRIu64
           " timeouts, %" PRIu64 " bad upgrades)\n",
           "connected", s.subscribed_at_connect, s.clients, connect_s, s.attempts, s.timeouts,
           s.bad_upgrades);
    s_print_dump("upgrade refusals", json_object_get(connect, "refused"));
    s_print_dump("connect errors", json_object_get(connect, "connect_errors"));
    if (s.post_rate > 0) {
        char *statuses = json_dumps(json_object_get(posts, "statuses"), JSON_COMPACT);
        printf("%-22s %" PRIu64 " sent, %.1f/s answered over %.1f s, statuses %s\n", "posts",
               s.posts_sent, post_s > 0 ? (double)s.posts_done / post_s : 0.0, post_s,
               statuses ? statuses : "?");
        free(statuses);
        printf("%-22s p50 %.2f ms, p99 %.2f ms\n", "post latency", s_hist_ms(&s.post_latency, 0.5),
               s_hist_ms(&s.post_latency, 0.99));
        printf("%-22s %" PRIu64 " of %" PRIu64 " expected (%" PRIu64 " parsed: every %d. client), "
               "%" PRIu64 " gaps, %" PRIu64 " duplicates\n",
               "events", received, s.expected, s.events_parsed, s.sample, s.gaps, s.duplicates);
        printf("%-22s p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms (%" PRIu64 " samples)\n",
               "delivery latency", s_hist_ms(&s.latency, 0.5), s_hist_ms(&s.latency, 0.9),
               s_hist_ms(&s.latency, 0.99), s.latency.count ? (double)s.latency.max / 1000 : -1.0,
               s.latency.count);
        printf("%-22s edge %.1f %%, ws_load %.1f %% (of one core)\n", "CPU while posting", edge_cpu,
               self_cpu);
    }
    if (s.edge_pid)
        printf("%-22s before %ld KiB, connected %ld KiB, after %ld KiB: %.1f KiB per connection\n",
               "edge RSS", s.rss_before, s.rss_connected, s.rss_after, per_conn);
    s_print_dump("closes by code", json_object_get(summary, "closes"));
    for (int r = 0; r < s.rec_len; r++) {
        const recovery_t *e = &s.rec[r];
        if (e->end_us)
            printf("%-22s first close (phase %s) to all %d subscribed again: %.2f s (fewest %d)\n",
                   "recovery", PHASE_NAMES[e->phase], s.clients, s_since_s(e->start_us, e->end_us),
                   e->lowest);
        else
            printf("%-22s first close in phase %s, not complete (fewest %d)\n", "recovery",
                   PHASE_NAMES[e->phase], e->lowest);
    }
    s_print_dump("errors", errors);
    char *line = json_dumps(summary, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    printf("%s\n", line ? line : "{}");
    free(line);
    json_decref(summary);
    fflush(stdout);
}

/*  --- options and main --------------------------------------------------------------  */

static void s_usage(FILE *out)
{
    fputs(
        "usage: ws_load [options] HOST:PORT\n"
        "  -n, --clients N        WebSocket clients (1000)\n"
        "  -C, --cookie TEXT      Cookie header of every request: 'shoal_sid=...; shoal_ws=...'\n"
        "      --channel NAME     channel every client subscribes to (board)\n"
        "      --connect-rate R   new connections per second while the clients first connect "
        "(500)\n"
        "      --reconnect        a closed client reconnects after a full-jitter backoff (250 ms,\n"
        "                         doubling to 10 s; reset after 10 s open), and the time from the\n"
        "                         first close to all clients subscribed again is reported\n"
        "      --reconnect-rate R bound on reconnects per second (0: none, the backoff alone)\n"
        "      --timeout S        an attempt must be subscribed within S seconds (10)\n"
        "      --connect-for S    wait at most S seconds for all clients, then go on (120)\n"
        "      --sample K         every K-th client parses each message (jansson) and measures\n"
        "                         latency; the others count their frames once subscribed (1)\n"
        "      --post-rate R      once all are subscribed, create R items per second\n"
        "                         (POST /api/items; needs --csrf) (0: none)\n"
        "      --post-for S       for S seconds (10)\n"
        "      --post-conns C     at most C posts in flight, one per keep-alive HTTP connection,\n"
        "                         opened as needed (4); a post due while all are busy waits\n"
        "      --csrf TOKEN       X-CSRF-Token of the session in --cookie\n"
        "      --drain S          after the posts, wait up to S s for the events still due (5)\n"
        "      --settle S         with --reconnect, then wait up to S s for every client to\n"
        "                         be subscribed again (0)\n"
        "      --hold S           then keep the clients connected S seconds (0)\n"
        "      --until-recovered  leave the hold once a recovery that started in it is complete\n"
        "      --edge-pid PID     report this process's RSS (/proc/PID/status VmRSS) before and\n"
        "                         after connecting and its CPU while posting (/proc/PID/stat)\n"
        "  -h, --help             this text\n",
        out);
}

static int s_opt_int(const char *name, const char *text, int64_t min, int64_t max)
{
    int64_t v;
    if (sh_parse_int(text, min, max, &v) < 0) {
        fprintf(stderr,
                "ws_load: %s must be a whole number in %" PRId64 "..%" PRId64 ", not '%s'\n", name,
                min, max, text);
        exit(2);
    }
    return (int)v;
}

static double s_opt_rate(const char *name, const char *text)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end || !(v >= 0 && v <= 1e6)) {
        fprintf(stderr, "ws_load: %s must be a number in 0..1000000, not '%s'\n", name, text);
        exit(2);
    }
    return v;
}

static void s_options(int argc, char **argv)
{
    enum {
        O_CHANNEL = 256,
        O_CONNECT_RATE,
        O_RECONNECT,
        O_RECONNECT_RATE,
        O_TIMEOUT,
        O_CONNECT_FOR,
        O_SAMPLE,
        O_POST_RATE,
        O_POST_FOR,
        O_POST_CONNS,
        O_CSRF,
        O_DRAIN,
        O_SETTLE,
        O_HOLD,
        O_UNTIL_RECOVERED,
        O_EDGE_PID
    };
    static const struct option longs[] = {
        {"clients", required_argument, NULL, 'n'},
        {"cookie", required_argument, NULL, 'C'},
        {"channel", required_argument, NULL, O_CHANNEL},
        {"connect-rate", required_argument, NULL, O_CONNECT_RATE},
        {"reconnect", no_argument, NULL, O_RECONNECT},
        {"reconnect-rate", required_argument, NULL, O_RECONNECT_RATE},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"connect-for", required_argument, NULL, O_CONNECT_FOR},
        {"sample", required_argument, NULL, O_SAMPLE},
        {"post-rate", required_argument, NULL, O_POST_RATE},
        {"post-for", required_argument, NULL, O_POST_FOR},
        {"post-conns", required_argument, NULL, O_POST_CONNS},
        {"csrf", required_argument, NULL, O_CSRF},
        {"drain", required_argument, NULL, O_DRAIN},
        {"settle", required_argument, NULL, O_SETTLE},
        {"hold", required_argument, NULL, O_HOLD},
        {"until-recovered", no_argument, NULL, O_UNTIL_RECOVERED},
        {"edge-pid", required_argument, NULL, O_EDGE_PID},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    s.clients = 1000;
    s.channel = "board";
    s.connect_rate = 500;
    s.timeout_s = 10;
    s.connect_for_s = 120;
    s.sample = 1;
    s.post_for_s = 10;
    s.post_conns = 4;
    s.drain_s = 5;
    int o;
    while ((o = getopt_long(argc, argv, "n:C:h", longs, NULL)) != -1) {
        switch (o) {
        case 'n':
            s.clients = s_opt_int("--clients", optarg, 1, 1000000);
            break;
        case 'C':
            s.cookie = optarg;
            break;
        case O_CHANNEL:
            s.channel = optarg;
            break;
        case O_CONNECT_RATE:
            s.connect_rate = s_opt_rate("--connect-rate", optarg);
            break;
        case O_RECONNECT:
            s.reconnect = true;
            break;
        case O_RECONNECT_RATE:
            s.reconnect_rate = s_opt_rate("--reconnect-rate", optarg);
            break;
        case O_TIMEOUT:
            s.timeout_s = s_opt_int("--timeout", optarg, 1, 3600);
            break;
        case O_CONNECT_FOR:
            s.connect_for_s = s_opt_int("--connect-for", optarg, 1, 86400);
            break;
        case O_SAMPLE:
            s.sample = s_opt_int("--sample", optarg, 1, 1000000);
            break;
        case O_POST_RATE:
            s.post_rate = s_opt_rate("--post-rate", optarg);
            break;
        case O_POST_FOR:
            s.post_for_s = s_opt_int("--post-for", optarg, 1, 86400);
            break;
        case O_POST_CONNS:
            s.post_conns = s_opt_int("--post-conns", optarg, 1, 256);
            break;
        case O_CSRF:
            s.csrf = optarg;
            break;
        case O_DRAIN:
            s.drain_s = s_opt_int("--drain", optarg, 0, 3600);
            break;
        case O_SETTLE:
            s.settle_s = s_opt_int("--settle", optarg, 0, 3600);
            break;
        case O_HOLD:
            s.hold_s = s_opt_int("--hold", optarg, 0, 86400);
            break;
        case O_UNTIL_RECOVERED:
            s.until_recovered = true;
            break;
        case O_EDGE_PID:
            s.edge_pid = s_opt_int("--edge-pid", optarg, 1, INT32_MAX);
            break;
        case 'h':
            s_usage(stdout);
            exit(0);
        default:
            s_usage(stderr);
            exit(2);
        }
    }
    const char *target = optind == argc - 1 ? argv[optind] : NULL;
    const char *colon = target ? strrchr(target, ':') : NULL;
    if (!colon || colon == target || (size_t)(colon - target) >= sizeof s.host) {
        s_usage(stderr);
        fputs("ws_load: give one HOST:PORT\n", stderr);
        exit(2);
    }
    memcpy(s.host, target, (size_t)(colon - target));
    s.port = s_opt_int("the port", colon + 1, 1, 65535);
    if (!s.cookie || strpbrk(s.cookie, "\r\n") || (s.csrf && strpbrk(s.csrf, "\r\n"))) {
        fputs("ws_load: --cookie is required (one line), and --csrf is one line\n", stderr);
        exit(2);
    }
    if (s.post_rate > 0 && !s.csrf) {
        fputs("ws_load: --post-rate needs --csrf\n", stderr);
        exit(2);
    }
}

static void s_on_signal(int sig)
{
    (void)sig;
    s.stop = 1;
}

/*  Raise the open-file limit to the hard limit: one descriptor per client.  */
static void s_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t need = (rlim_t)s.clients + (rlim_t)s.post_conns + 32;
    if (rl.rlim_cur < need)
        fprintf(stderr,
                "ws_load: warning: open-file limit %llu < %llu: clients will fail with EMFILE\n",
                (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

int main(int argc, char **argv)
{
    s_options(argc, argv);
    sh_crypto_init();
    s_raise_nofile();

    char port[8];
    snprintf(port, sizeof port, "%d", s.port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(s.host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "ws_load: %s: %s\n", s.host, gai_strerror(rc));
        return 1;
    }
    memcpy(&s.addr, ai->ai_addr, ai->ai_addrlen);
    s.addr_len = ai->ai_addrlen;
    freeaddrinfo(ai);

    s.ep = epoll_create1(EPOLL_CLOEXEC);
    s.c = calloc((size_t)s.clients, sizeof *s.c);
    s.queue = calloc((size_t)s.clients, sizeof *s.queue);
    s.heap = calloc((size_t)s.clients, sizeof *s.heap);
    s.posters = calloc((size_t)s.post_conns, sizeof *s.posters);
    s.rbuf = malloc(READ_CHUNK);
    if (s.ep < 0 || !s.c || !s.queue || !s.heap || !s.posters || !s.rbuf) {
        fputs("ws_load: cannot allocate its state\n", stderr);
        return 1;
    }
    for (int j = 0; j < s.post_conns; j++)
        s.posters[j].fd = -1;
    for (int i = 0; i < s.clients; i++) {
        s.c[i].fd = -1;
        s.c[i].sampled = i % s.sample == 0;
        s_queue_push(i);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);

    s.rss_before = s.edge_pid ? s_proc_rss_kib(s.edge_pid) : -1;
    s.rss_connected = s.rss_after = -1;
    s.edge_cpu0 = s.edge_cpu1 = s.self_cpu0 = s.self_cpu1 = -1;
    s.t0_us = sh_clock_mono_us();
    s_phase(PHASE_CONNECT, s.t0_us);
    s_say("%d clients to %s:%d at %.0f/s%s", s.clients, s.host, s.port, s.connect_rate,
          s.reconnect ? ", reconnecting" : "");

    struct epoll_event events[EPOLL_BATCH];
    int64_t next_tick_us = s.t0_us;
    while (!s.stop && s.phase != PHASE_DONE) {
        int64_t now = sh_clock_mono_us();
        if (now >= next_tick_us) {
            s_tick(now);
            next_tick_us = now + TICK_US;
        }
        s_connects_pump(now);
        if (s.phase == PHASE_POST)
            s_posts_pump(now);
        int n = epoll_wait(s.ep, events, EPOLL_BATCH, s_wait_ms(sh_clock_mono_us(), next_tick_us));
        for (int k = 0; k < n; k++) {
            uint64_t tag = events[k].data.u64;
            if (tag & TAG_POST)
                s_poster_readable((int)(tag & 0xffffffffu));
            else
                s_client_event((int)tag, events[k].events);
        }
    }
    if (s.stop)
        s_say("stopped by a signal in phase %s", PHASE_NAMES[s.phase]);
    if (s.phase != PHASE_DONE && s.phase != PHASE_HOLD && s.rss_after < 0 && s.edge_pid)
        s.rss_after = s_proc_rss_kib(s.edge_pid);
    /*  a polite goodbye: a close frame to every open client, no wait for the echo  */
    s.phase = PHASE_DONE;
    for (int i = 0; i < s.clients; i++) {
        if (s.c[i].state == CLIENT_OPEN && !s.c[i].close_sent)
            s_client_close(i, WS_CLOSE_NORMAL);
        if (s.c[i].fd >= 0)
            close(s.c[i].fd);
    }
    for (int j = 0; j < s.post_conns; j++)
        if (s.posters[j].fd >= 0)
            close(s.posters[j].fd);
    s_report();
    return s.ever_all_up || s.subscribed_at_connect > 0 ? 0 : 3;
}
