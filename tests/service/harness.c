/*  harness.c - service test helpers.  */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include <sodium.h>

#include "harness.h"
#include "sh_util.h"

#define T_PORT_LOW  20000
#define T_PORT_SPAN 12000
#define T_POLL_MS   20

int t_free_port(void)
{
    for (int attempt = 0; attempt < 200; attempt++) {
        int port = T_PORT_LOW + (int)randombytes_uniform(T_PORT_SPAN);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = {0};
        addr.sin_family = AF_INET;
        addr.sin_port = htons((uint16_t)port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
        close(fd);
        if (ok)
            return port;
    }
    return -1;
}

const char *t_bin_dir(void)
{
    const char *dir = getenv("SHOAL_BIN_DIR");
    return dir && *dir ? dir : "build/bin";
}

pid_t t_spawn(const char *program, char *const env[], const char *log)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    for (int i = 0; env && env[i]; i++)
        putenv(env[i]);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    execl(program, program, (char *)NULL);
    _exit(127);
}

int t_wait_exit(pid_t pid, int timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    while (sh_clock_mono_ms() < end) {
        int status;
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
        /*  poll the child's state without a fixed sleep: wait on nothing  */
        zmq_poll(NULL, 0, T_POLL_MS);
    }
    return -1;
}

void t_kill(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

static int s_redis_ping(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 && write(fd, "PING\r\n", 6) == 6) {
        char buf[16] = {0};
        if (read(fd, buf, sizeof buf - 1) > 0 && strncmp(buf, "+PONG", 5) == 0)
            ok = 0;
    }
    close(fd);
    return ok;
}

pid_t t_redis_start(int port, const char *dir)
{
    pid_t pid = fork();
    if (pid == 0) {
        char port_text[16];
        snprintf(port_text, sizeof port_text, "%d", port);
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, STDOUT_FILENO);
        execlp("redis-server", "redis-server", "--port", port_text, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", dir, (char *)NULL);
        _exit(127);
    }
    int64_t end = sh_clock_mono_ms() + 5000;
    while (sh_clock_mono_ms() < end) {
        if (s_redis_ping(port) == 0)
            return pid;
        zmq_poll(NULL, 0, T_POLL_MS);
    }
    t_kill(pid);
    return -1;
}

void t_tail(const char *log)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "tail -n 20 '%s' >&2", log);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log at %s)\n", log);
}

typedef struct {
    t_reply_t *out;
    const sh_codec_t *codec;
    int64_t started_ms;
} s_capture_t;

static void s_on_reply(void *arg, const sh_reply_t *reply)
{
    s_capture_t *cap = arg;
    t_reply_t *out = cap->out;
    out->done = true;
    out->status = reply->status;
    out->elapsed_ms = sh_clock_mono_ms() - cap->started_ms;
    snprintf(out->error, sizeof out->error, "%s", reply->error);
    if (reply->env)
        sh_str_copy(reply->env->instance, out->instance, sizeof out->instance);
    if (reply->body && cap->codec->size <= sizeof out->body) {

        /*  keep the body beyond the callback: encode into raw, decode back  */
        msgpack_sbuffer buf;
        msgpack_sbuffer_init(&buf);
        if (sh_codec_encode(cap->codec, reply->body, &buf) == 0 && buf.size <= sizeof out->raw) {
            memcpy(out->raw, buf.data, buf.size);
            sh_codec_decode(cap->codec, out->body, out->raw, buf.size);
        }
        msgpack_sbuffer_destroy(&buf);
    }
}

int t_call(sh_pool_t *pool, uint64_t type, const void *body, int64_t deadline_ms, int wait_ms,
           t_reply_t *out)
{
    memset(out, 0, sizeof *out);
    const sh_op_info_t *op = sh_op_find(type);
    s_capture_t cap = {out, op ? op->reply : NULL, sh_clock_mono_ms()};
    sh_call_opts_t opts = {.deadline_ms = deadline_ms ? sh_clock_wall_ms() + deadline_ms : 0};
    uint64_t handle = sh_pool_send(pool, type, body, &opts, s_on_reply, &cap);
    int64_t end = sh_clock_mono_ms() + wait_ms;
    while (!out->done && sh_clock_mono_ms() < end) {
        void *sockets[SH_POOL_SOCKETS];
        zmq_pollitem_t items[SH_POOL_SOCKETS];
        int n = sh_pool_sockets(pool, sockets, SH_POOL_SOCKETS);
        for (int i = 0; i < n; i++)
            items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
        zmq_poll(items, n, T_POLL_MS);
        sh_pool_drain(pool);
        sh_pool_tick(pool);
    }
    if (!out->done) {
        /*  cap lives on this stack: make sure a late reply never reaches it  */
        sh_pool_cancel(pool, handle);
        return -1;
    }
    return 0;
}

int t_wait_ready(sh_pool_t *pool, int timeout_ms)
{
    int64_t end = sh_clock_mono_ms() + timeout_ms;
    while (sh_clock_mono_ms() < end) {
        t_reply_t reply;
        sh_ping_req_t ping = {0};
        if (t_call(pool, SH_OP_ping, &ping, 500, 1000, &reply) == 0 && reply.status == SH_STATUS_OK)
            return 0;
        zmq_poll(NULL, 0, T_POLL_MS);
    }
    return -1;
}
