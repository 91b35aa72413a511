/*  pool_bench.c - overhead of the caller pool against a direct connection.

    Starts a real shoal-session on loopback and keeps WINDOW ping requests
    in flight for SECONDS, first through a bare DEALER (encode, send,
    receive, decode: the transport alone), then through sh_pool (instance
    choice, request-id map, deadlines, retries bookkeeping). Prints both
    rates and the pool's overhead. A benchmark: it reports, never fails on
    a figure.
    usage: pool_bench [SECONDS] [WINDOW]
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "sh_pool.h"
#include "sh_transport.h"
#include "sh_util.h"

static int64_t s_done;

static void s_on_reply(void *arg, const sh_reply_t *reply)
{
    (void)arg;
    if (reply->status == SH_STATUS_OK)
        s_done++;
}

static double s_run_pool(const char *endpoint, int seconds, int window)
{
    sh_pool_t *pool = sh_pool_new("session", NULL);
    sh_pool_add(pool, endpoint);
    /*  wait for the connection (handshake) before measuring  */
    int64_t until = sh_clock_mono_ms() + 5000;
    while (!sh_pool_ready(pool) && sh_clock_mono_ms() < until) {
        sh_pool_tick(pool);
        zmq_poll(NULL, 0, 10);
    }
    s_done = 0;
    int64_t sent = 0, start = sh_clock_mono_us(), end = start + (int64_t)seconds * 1000000;
    sh_ping_req_t ping = {0};
    while (sh_clock_mono_us() < end) {
        while (sent - s_done < window) {
            sh_call_opts_t opts = {.deadline_ms = sh_clock_wall_ms() + 2000};
            sh_pool_send(pool, SH_OP_ping, &ping, &opts, s_on_reply, NULL);
            sent++;
        }
        void *sockets[SH_POOL_SOCKETS];
        zmq_pollitem_t items[SH_POOL_SOCKETS];
        int n = sh_pool_sockets(pool, sockets, SH_POOL_SOCKETS);
        for (int i = 0; i < n; i++)
            items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
        zmq_poll(items, n, 10);
        sh_pool_drain(pool);
    }
    double rate = (double)s_done * 1e6 / (double)(sh_clock_mono_us() - start);
    sh_pool_destroy(&pool);
    return rate;
}

static double s_run_direct(const char *endpoint, int seconds, int window)
{
    void *dealer = sh_transport_dealer(endpoint);
    zmq_pollitem_t out = {dealer, 0, ZMQ_POLLOUT, 0};
    zmq_poll(&out, 1, 5000);
    int64_t done = 0, sent = 0, start = sh_clock_mono_us();
    int64_t end = start + (int64_t)seconds * 1000000;
    sh_ping_req_t ping = {0};
    char rid[32];
    while (sh_clock_mono_us() < end) {
        while (sent - done < window) {
            sh_envelope_t env = {0};
            env.version = SH_PROTO_VERSION;
            env.kind = SH_KIND_REQUEST;
            env.type = SH_OP_ping;
            snprintf(rid, sizeof rid, "d-%llx", (unsigned long long)sent);
            env.request_id = sh_str(rid);
            env.deadline_ms = (uint64_t)(sh_clock_wall_ms() + 2000);
            if (sh_transport_send(dealer, NULL, &env, &sh_ping_req_codec, &ping, NULL, NULL, 0))
                break;
            sent++;
        }
        zmq_pollitem_t in = {dealer, 0, ZMQ_POLLIN, 0};
        zmq_poll(&in, 1, 10);
        sh_frames_t frames;
        while (sh_frames_recv(dealer, &frames) == 0) {
            sh_envelope_t env;
            _Alignas(max_align_t) char body[256];
            if (frames.count >= 2 &&
                sh_codec_decode(&sh_envelope_codec, &env, zmq_msg_data(&frames.frames[0]),
                                zmq_msg_size(&frames.frames[0])) == 0 &&
                sh_codec_decode(&sh_ping_rep_codec, body, zmq_msg_data(&frames.frames[1]),
                                zmq_msg_size(&frames.frames[1])) == 0 &&
                env.status == SH_STATUS_OK)
                done++;
            sh_frames_close(&frames);
        }
    }
    double rate = (double)done * 1e6 / (double)(sh_clock_mono_us() - start);
    sh_transport_close(&dealer);
    return rate;
}

int main(int argc, char **argv)
{
    int seconds = argc > 1 ? atoi(argv[1]) : 3;
    int window = argc > 2 ? atoi(argv[2]) : 64;
    const char *bin = getenv("SHOAL_BIN_DIR") ? getenv("SHOAL_BIN_DIR") : "build/bin";
    sh_crypto_init();
    char endpoint[64], program[512], bind[96];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", 21000 + (int)(getpid() % 9000));
    snprintf(program, sizeof program, "%s/shoal-session", bin);
    snprintf(bind, sizeof bind, "SHOAL_BIND=%s", endpoint);
    pid_t pid = fork();
    if (pid == 0) {
        putenv(bind);
        putenv("SHOAL_LOG_LEVEL=error");
        putenv("SHOAL_REDIS_PORT=1"); /* pings never touch Redis */
        execl(program, program, (char *)NULL);
        _exit(127);
    }
    /*  alternate the two, twice, so neither always runs first  */
    double direct = 0, pooled = 0;
    for (int round = 0; round < 2; round++) {
        direct += s_run_direct(endpoint, seconds, window);
        pooled += s_run_pool(endpoint, seconds, window);
    }
    direct /= 2;
    pooled /= 2;
    printf("pool overhead (ping, %d in flight, one shoal-session, %d s x 2 each)\n", window,
           seconds);
    printf("  direct DEALER : %9.0f req/s\n", direct);
    printf("  sh_pool       : %9.0f req/s\n", pooled);
    printf("  overhead      : %9.1f %%  (goal <= 5 %%)\n",
           direct > 0 ? (direct - pooled) * 100.0 / direct : 0.0);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    sh_transport_shutdown();
    return 0;
}
