/*  harness.c - service test helpers.  */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include <sodium.h>

#include "harness.h"
#include "sh_loop.h"
#include "sh_redis.h"
#include "sh_transport.h"
#include "sh_util.h"

#define T_PORT_LOW  20000
#define T_PORT_SPAN 12000
#define T_POLL_MS   20

#define T_PG_OS_USER   "postgres" /* Postgres refuses to run as root */
#define T_PG_SUPERUSER "postgres"
#define T_PG_TOOL_MS   60000 /* initdb, pg_basebackup */
#define T_PG_START_MS  30000
#define T_PG_STOP_MS   10000
#define T_PSQL_MS      10000
#define T_PG_PATH_MAX  512
#define T_PG_ARGS_MAX  48

#define T_REDIS_CONNECT_MS 3000
#define T_REDIS_CALL_MS    1000 /* the command's deadline */
#define T_REDIS_REPLY_MS   2000 /* past the deadline: the callback has run */

#define T_QUERY_READY_MS 30000 /* migrations included */
#define T_PG_CONNINFO    "host=127.0.0.1 port=%d dbname=" T_PG_DB " user=" T_PG_ROLE

void *t_alloc(size_t size)
{
    void *p = calloc(1, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        abort();
    }
    return p;
}

int t_setup_failed(void **state, int (*teardown)(void **state), const char *log)
{
    if (log)
        t_tail(log);
    teardown(state);
    *state = NULL;
    return -1;
}

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

void t_endpoint(char *out, size_t size)
{
    snprintf(out, size, "tcp://127.0.0.1:%d", t_free_port());
}

int t_dir_new(char *dir, size_t size, const char *name)
{
    snprintf(dir, size, "/tmp/shoal-%s-XXXXXX", name);
    if (mkdtemp(dir))
        return 0;
    dir[0] = 0;
    return -1;
}

void t_dir_remove(const char *dir)
{
    if (!dir[0])
        return;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
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

/*  redis-server on port with data in dir, with or without its AOF.  */
static pid_t s_redis_start(int port, const char *dir, bool aof)
{
    pid_t pid = fork();
    if (pid == 0) {
        char port_text[16];
        snprintf(port_text, sizeof port_text, "%d", port);
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, STDOUT_FILENO);
        /*  appendfsync always: a killed server keeps every write it answered  */
        execlp("redis-server", "redis-server", "--port", port_text, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", aof ? "yes" : "no", "--appendfsync", "always", "--dir", dir,
               (char *)NULL);
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

pid_t t_redis_start(int port, const char *dir)
{
    return s_redis_start(port, dir, false);
}

pid_t t_redis_start_aof(int port, const char *dir)
{
    return s_redis_start(port, dir, true);
}

struct t_redis_client_t {
    sh_loop_t *loop;
    sh_redis_t *redis;
};

t_redis_client_t *t_redis_client_new(int port)
{
    t_redis_client_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = sh_loop_new();
    sh_redis_config_t config = {"127.0.0.1", port, "", 0, T_REDIS_CALL_MS, 100, "test"};
    self->redis = self->loop ? sh_redis_new(self->loop, &config, NULL) : NULL;
    if (!self->redis)
        t_redis_client_destroy(&self);
    return self;
}

void t_redis_client_destroy(t_redis_client_t **self_p)
{
    t_redis_client_t *self = *self_p;
    if (!self)
        return;
    /*  the loop is not running: it may go  */
    sh_redis_destroy(&self->redis);
    sh_loop_destroy(&self->loop);
    free(self);
    *self_p = NULL;
}

static bool s_redis_connected(void *arg)
{
    return sh_redis_connected(((t_redis_client_t *)arg)->redis);
}

static bool s_redis_done(void *arg)
{
    return ((t_redis_reply_t *)arg)->done;
}

static void s_redis_text(const sh_redis_reply_t *reply, char *out, size_t size)
{
    size_t len = 0;
    const char *text = sh_redis_str(reply, &len);
    snprintf(out, size, "%.*s", text ? (int)len : 0, text ? text : "");
}

static void s_on_redis(void *arg, uint64_t status, const sh_redis_reply_t *reply)
{
    t_redis_reply_t *out = arg;
    out->done = true;
    out->status = status;
    out->type = sh_redis_type(reply);
    out->integer = sh_redis_int(reply, -1);
    s_redis_text(reply, out->text, sizeof out->text);
    out->count = sh_redis_count(reply);
    for (size_t i = 0; i < out->count && i < T_REDIS_ELEMS_MAX; i++)
        s_redis_text(sh_redis_elem(reply, i), out->elems[i], sizeof out->elems[i]);
}

int t_redis_command(t_redis_client_t *self, int argc, const char **argv, t_redis_reply_t *out)
{
    memset(out, 0, sizeof *out);
    if (!sh_loop_run_until(self->loop, s_redis_connected, self, T_REDIS_CONNECT_MS)) {
        fprintf(stderr, "the test's Redis client did not connect\n");
        return -1;
    }
    sh_redis_command(self->redis, T_REDIS_CALL_MS, s_on_redis, out, argc, argv, NULL);
    if (!sh_loop_run_until(self->loop, s_redis_done, out, T_REDIS_REPLY_MS)) {
        fprintf(stderr, "Redis %s: no reply\n", argv[0]);
        return -1;
    }
    if (out->status != SH_STATUS_OK || out->type == SH_REDIS_ERROR) {
        fprintf(stderr, "Redis %s: status %llu %s\n", argv[0], (unsigned long long)out->status,
                out->text);
        return -1;
    }
    return 0;
}

void t_tail(const char *log)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "tail -n 20 '%s' >&2", log);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log at %s)\n", log);
}

/*  --- service binaries ---------------------------------------------------  */

/*  Append the NULL-ended list to env (n entries so far); returns the new
    count. putenv in the child keeps the pointers and never writes through
    them: const may go.  */
static int s_env_append(char **env, int n, const char *const *list)
{
    for (int i = 0; list && list[i]; i++) {
        assert(n < T_SERVICE_ENV_MAX);
        env[n++] = (char *)list[i];
    }
    return n;
}

int t_service_start(const t_service_spec_t *spec, pid_t *pid, sh_pool_t **pool)
{
    char bind[SH_ENDPOINT_MAX + 16], program[512];
    snprintf(bind, sizeof bind, "SHOAL_BIND=%s", spec->endpoint);
    snprintf(program, sizeof program, "%s/shoal-%s", t_bin_dir(), spec->name);
    char *env[T_SERVICE_ENV_MAX + 2] = {bind};
    int n = s_env_append(env, 1, spec->env);
    n = s_env_append(env, n, spec->extra);
    env[n] = NULL;
    *pid = t_spawn(program, env, spec->log);
    *pool = sh_pool_new(spec->name, NULL);
    if (!*pool || sh_pool_add(*pool, spec->endpoint))
        return -1;
    return t_wait_ready(*pool, spec->ready_ms);
}

void *t_sub_open(const char *endpoint)
{
    void *sub = sh_transport_subscriber("");
    if (sub && zmq_connect(sub, endpoint))
        sh_transport_close(&sub);
    return sub;
}

/*  --- Postgres ------------------------------------------------------------  */

/*  Settings of every test server (as -c flags): loopback only, no Unix
    socket, replication on, no fsync (test data).  */
static const char *const s_pg_settings[] = {
    "listen_addresses=127.0.0.1",
    "unix_socket_directories=",
    "wal_level=replica",
    "max_wal_senders=10",
    "wal_keep_size=256MB",
    "hot_standby=on",
    "max_connections=100",
    "shared_buffers=32MB",
    "fsync=off",
    "wal_retrieve_retry_interval=200ms",
    "log_min_messages=warning",
};

/*  Path of a Postgres program in out (just the name, for PATH, if none
    of the known directories has it).  */
static void s_pg_tool(const char *name, char *out, size_t size)
{
    const char *dir = getenv("SHOAL_PG_BIN_DIR");
    char found[T_PG_PATH_MAX] = "";
    if (dir && *dir)
        snprintf(found, sizeof found, "%s", dir);
    else {
        /*  Debian: /usr/lib/postgresql/<major>/bin, the newest major  */
        glob_t g;
        long best = -1;
        if (glob("/usr/lib/postgresql/*/bin/postgres", 0, NULL, &g) == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++) {
                long major = strtol(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"), NULL, 10);
                if (major > best) {
                    best = major;
                    snprintf(found, sizeof found, "%s", g.gl_pathv[i]);
                    found[strlen(found) - strlen("/postgres")] = 0;
                }
            }
            globfree(&g);
        }
    }
    snprintf(out, size, "%s%s%s", found, found[0] ? "/" : "", name);
    if (found[0] && access(out, X_OK) != 0)
        snprintf(out, size, "%s", name);
}

/*  In a child before exec: the environment Postgres tools expect, and
    (as root) the postgres OS user. Returns 0 or -1.  */
static int s_pg_child_setup(bool as_pg_user)
{
    extern char **environ;
    /*  a PGHOST, PGPORT, ... of the caller must not redirect the tools  */
    for (int i = 0; environ[i];) {
        if (strncmp(environ[i], "PG", 2) == 0) {
            char name[128];
            size_t n = strcspn(environ[i], "=");
            snprintf(name, sizeof name, "%.*s", (int)n, environ[i]);
            unsetenv(name);
            i = 0;
        } else
            i++;
    }
    setenv("LC_ALL", "C.UTF-8", 1);
    setenv("PGCONNECT_TIMEOUT", "2", 1);
    if (!as_pg_user || geteuid() != 0)
        return 0;
    struct passwd *pw = getpwnam(T_PG_OS_USER);
    if (!pw || setgroups(0, NULL) || setgid(pw->pw_gid) || setuid(pw->pw_uid))
        return -1;
    /*  a tool may look at its working directory: one it can read  */
    if ((!pw->pw_dir || chdir(pw->pw_dir) != 0) && chdir("/") != 0)
        return -1;
    return 0;
}

/*  Start argv (argv[0] a full path or a name on PATH) with stdout to
    out_fd (-1: log) and stderr to log. Returns the pid.  */
static pid_t s_pg_spawn(char *const argv[], bool as_pg_user, const char *log, int out_fd)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(out_fd >= 0 ? out_fd : fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0)
        dup2(null, STDIN_FILENO);
    if (s_pg_child_setup(as_pg_user))
        _exit(126);
    execvp(argv[0], argv);
    _exit(127);
}

/*  Run a one-shot tool to its end. Returns its exit status or -1.  */
static int s_pg_run(char *const argv[], bool as_pg_user, const char *log)
{
    pid_t pid = s_pg_spawn(argv, as_pg_user, log, -1);
    if (pid < 0)
        return -1;
    int rc = t_wait_exit(pid, T_PG_TOOL_MS);
    if (rc == -1)
        t_kill(pid);
    return rc;
}

int t_psql(int port, const char *db, const char *sql, char *out, size_t size)
{
    char psql[T_PG_PATH_MAX], port_text[16], path[] = "/tmp/shoal-psql-XXXXXX";
    s_pg_tool("psql", psql, sizeof psql);
    snprintf(port_text, sizeof port_text, "%d", port);
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    unlink(path); /* read back through fd */
    char *argv[] = {
        psql,       "-X",        "-A",        "-t",      "-q", "-v",           "ON_ERROR_STOP=1",
        "-h",       "127.0.0.1", "-p",        port_text, "-U", T_PG_SUPERUSER, "-d",
        (char *)db, "-c",        (char *)sql, NULL};
    pid_t pid = s_pg_spawn(argv, false, "/dev/null", fd);
    int rc = pid < 0 ? -1 : t_wait_exit(pid, T_PSQL_MS);
    if (rc == -1 && pid > 0)
        t_kill(pid);
    if (out && size) {
        ssize_t n = pread(fd, out, size - 1, 0);
        n = n < 0 ? 0 : n;
        while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r'))
            n--;
        out[n] = 0;
    }
    close(fd);
    return rc;
}

/*  True while pid has not exited (it is reaped if it has).  */
static bool s_running(pid_t pid)
{
    return waitpid(pid, NULL, WNOHANG) == 0;
}

/*  Wait until psql on port prints `want` for sql (server alive).  */
static int s_pg_wait_for(pid_t pid, int port, const char *sql, const char *want)
{
    int64_t end = sh_clock_mono_ms() + T_PG_START_MS;
    while (sh_clock_mono_ms() < end && s_running(pid)) {
        char out[64];
        if (t_psql(port, "postgres", sql, out, sizeof out) == 0 && strcmp(out, want) == 0)
            return 0;
        zmq_poll(NULL, 0, T_POLL_MS);
    }
    return -1;
}

pid_t t_postgres_start(int port, const char *dir, int primary_port, const char *log)
{
    char data[T_PG_PATH_MAX], port_text[16], primary_text[16];
    snprintf(data, sizeof data, "%s/pg-%d", dir, port);
    snprintf(port_text, sizeof port_text, "%d", port);
    snprintf(primary_text, sizeof primary_text, "%d", primary_port);
    bool root = geteuid() == 0;
    if (mkdir(data, 0700) && errno != EEXIST)
        return -1;
    if (root) {
        /*  the postgres OS user must reach its data dir and own it  */
        struct passwd *pw = getpwnam(T_PG_OS_USER);
        if (!pw || chmod(dir, 0711) || chown(data, pw->pw_uid, pw->pw_gid))
            return -1;
    }
    char tool[T_PG_PATH_MAX];
    if (primary_port == 0) {
        s_pg_tool("initdb", tool, sizeof tool);
        char *argv[] = {tool,           "-D",   data,
                        "--auth=trust", "-U",   T_PG_SUPERUSER,
                        "-E",           "UTF8", "--locale=C.UTF-8",
                        "--no-sync",    NULL};
        if (s_pg_run(argv, true, log) != 0)
            return -1;
    } else {
        s_pg_tool("pg_basebackup", tool, sizeof tool);
        char *argv[] = {tool,           "-h",   "127.0.0.1", "-p", primary_text, "-U",
                        T_PG_SUPERUSER, "-D",   data,        "-R", "-X",         "stream",
                        "-c",           "fast", "--no-sync", NULL};
        if (s_pg_run(argv, true, log) != 0)
            return -1;
    }
    char server[T_PG_PATH_MAX];
    s_pg_tool("postgres", server, sizeof server);
    char *argv[T_PG_ARGS_MAX] = {server, "-D", data, "-p", port_text};
    int argc = 5;
    for (size_t i = 0; i < SH_ARRAY_SIZE(s_pg_settings); i++) {
        argv[argc++] = "-c";
        argv[argc++] = (char *)s_pg_settings[i];
    }
    argv[argc] = NULL;
    /*  exec'd directly (no runuser in between): pid is the postmaster  */
    pid_t pid = s_pg_spawn(argv, true, log, -1);
    if (pid < 0)
        return -1;
    int rc = s_pg_wait_for(pid, port, "SELECT 1", "1");
    if (rc == 0 && primary_port == 0) {
        char out[64];
        rc = t_psql(port, "postgres", "CREATE ROLE " T_PG_ROLE " LOGIN", out, sizeof out) ||
             t_psql(port, "postgres", "CREATE DATABASE " T_PG_DB " OWNER " T_PG_ROLE, out,
                    sizeof out);
    } else if (rc == 0)
        rc = s_pg_wait_for(pid, port, "SELECT status FROM pg_stat_wal_receiver", "streaming");
    if (rc) {
        t_postgres_stop(pid);
        return -1;
    }
    return pid;
}

void t_postgres_stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGINT);
    if (t_wait_exit(pid, T_PG_STOP_MS) == -1)
        t_kill(pid);
}

/*  --- shoal-query over its stores -----------------------------------------  */

int t_query_start(t_query_t *q, const char *name, bool with_replica, const char *const env[])
{
    if (t_dir_new(q->dir, sizeof q->dir, name))
        return -1;
    snprintf(q->log, sizeof q->log, "%s/query.log", q->dir);
    snprintf(q->pg_log, sizeof q->pg_log, "%s/postgres.log", q->dir);
    q->redis_port = t_free_port();
    q->redis = t_redis_start(q->redis_port, q->dir);
    q->primary_port = t_free_port();
    q->primary = t_postgres_start(q->primary_port, q->dir, 0, q->pg_log);
    int replica_port = t_free_port();
    if (with_replica)
        q->replica = q->primary > 0
                         ? t_postgres_start(replica_port, q->dir, q->primary_port, q->pg_log)
                         : -1;
    if (q->redis < 0 || q->primary < 0 || q->replica < 0) {
        fprintf(stderr, "cannot start Redis or Postgres\n");
        t_tail(q->pg_log);
        return -1;
    }
    char redis[64], conninfo[128], primary[160], replica[160], instance[96];
    snprintf(redis, sizeof redis, "SHOAL_REDIS_PORT=%d", q->redis_port);
    snprintf(conninfo, sizeof conninfo, T_PG_CONNINFO, q->primary_port);
    snprintf(primary, sizeof primary, "SHOAL_PG_PRIMARY=%s", conninfo);
    snprintf(conninfo, sizeof conninfo, T_PG_CONNINFO, replica_port);
    snprintf(replica, sizeof replica, "SHOAL_PG_REPLICA=%s", conninfo);
    snprintf(instance, sizeof instance, "SHOAL_INSTANCE=%s-test", name);
    /*  no registry to join; Argon2 at its cheapest, as tests create many users  */
    const char *stores[] = {redis,
                            primary,
                            instance,
                            "SHOAL_ARGON2_OPS=1",
                            "SHOAL_ARGON2_MEM_KIB=8",
                            "SHOAL_HEALTH_ENDPOINTS=",
                            with_replica ? replica : NULL,
                            NULL};
    t_endpoint(q->endpoint, sizeof q->endpoint);
    t_service_spec_t spec = {"query", q->endpoint, stores, env, q->log, T_QUERY_READY_MS};
    if (t_service_start(&spec, &q->service, &q->pool)) {
        t_tail(q->log);
        return -1;
    }
    return 0;
}

void t_query_stop(t_query_t *q)
{
    sh_pool_destroy(&q->pool);
    t_kill(q->service);
    t_postgres_stop(q->replica);
    t_postgres_stop(q->primary);
    t_kill(q->redis);
    t_dir_remove(q->dir);
}

/*  --- calls ------------------------------------------------------------------  */

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

int t_call_all(sh_pool_t *pool, uint64_t type, const void *const *bodies, int n,
               int64_t deadline_ms, int wait_ms, t_reply_t *out)
{
    assert(n >= 0 && n <= T_CALLS_MAX);
    const sh_op_info_t *op = sh_op_find(type);
    s_capture_t caps[T_CALLS_MAX];
    uint64_t handles[T_CALLS_MAX];
    sh_call_opts_t opts = {.deadline_ms = deadline_ms ? sh_clock_wall_ms() + deadline_ms : 0};
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        caps[i] = (s_capture_t){&out[i], op ? op->reply : NULL, sh_clock_mono_ms()};
        handles[i] = sh_pool_send(pool, type, bodies[i], &opts, s_on_reply, &caps[i]);
    }
    int64_t end = sh_clock_mono_ms() + wait_ms;
    int done = 0;
    while (sh_clock_mono_ms() < end) {
        done = 0;
        for (int i = 0; i < n; i++)
            done += out[i].done;
        if (done == n)
            break;
        void *sockets[SH_POOL_SOCKETS];
        zmq_pollitem_t items[SH_POOL_SOCKETS];
        int count = sh_pool_sockets(pool, sockets, SH_POOL_SOCKETS);
        for (int i = 0; i < count; i++)
            items[i] = (zmq_pollitem_t){sockets[i], 0, ZMQ_POLLIN, 0};
        zmq_poll(items, count, T_POLL_MS);
        sh_pool_drain(pool);
        sh_pool_tick(pool);
    }
    done = 0;
    for (int i = 0; i < n; i++)
        done += out[i].done;
    if (done == n)
        return 0;
    /*  caps live on this stack: make sure a late reply never reaches them  */
    for (int i = 0; i < n; i++)
        if (!out[i].done)
            sh_pool_cancel(pool, handles[i]);
    return -1;
}

int t_call(sh_pool_t *pool, uint64_t type, const void *body, int64_t deadline_ms, int wait_ms,
           t_reply_t *out)
{
    const void *bodies[1] = {body};
    return t_call_all(pool, type, bodies, 1, deadline_ms, wait_ms, out);
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

t_reply_t *t_reply_new(void)
{
    return t_alloc(sizeof(t_reply_t));
}
