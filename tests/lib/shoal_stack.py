"""shoal_stack -- start and stop a real Shoal stack on loopback for tests.

A Stack is one redis-server (AOF on, in a temp dir), N shoal-session
instances and M shoal-edge instances, each a child process whose PID is
recorded when it is started and which is stopped by that PID only. Every
process writes stdout+stderr to <tmpdir>/<name>.log; `Stack.log_tails()`
returns the end of every log for failure reports.

Standard library only. Binaries come from $SHOAL_BIN_DIR, default
<repo>/build/bin.
"""

import collections
import errno
import http.client as httplib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN_DIR = os.path.abspath(os.environ.get("SHOAL_BIN_DIR") or os.path.join(REPO_ROOT, "build", "bin"))
REDIS_SERVER = os.environ.get("SHOAL_REDIS_SERVER", "redis-server")

LOOPBACK = "127.0.0.1"
PORT_LO = 20000
PORT_HI = 32000  # below the ephemeral range 32768-60999
POLL_S = 0.03
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 4000

_handed_out = set()


# ---------------------------------------------------------------- utilities

def free_port():
    """Return a TCP port in [20000, 32000) that binds on 127.0.0.1 now and
    that this process has not handed out before."""
    for _ in range(2000):
        port = random.randrange(PORT_LO, PORT_HI)
        if port in _handed_out:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            s.close()
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found in %d-%d" % (PORT_LO, PORT_HI))


RETRYABLE = (OSError, httplib.HTTPException)


def wait_until(fn, timeout, what, interval=POLL_S, retry_on=RETRYABLE):
    """Call fn() every `interval` seconds until it returns a truthy value,
    and return that value. Exceptions in `retry_on` (connection errors by
    default) count as "not yet"; any other exception propagates at once.
    Raise AssertionError naming `what` (and the last value/exception) when
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = repr(value)
        except retry_on as e:
            last = "%s: %s" % (type(e).__name__, e)
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last: %s)"
                                 % (timeout, what, last))
        time.sleep(interval)


def port_open(port, host=LOOPBACK, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path, nbytes=LOG_TAIL_BYTES):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            data = f.read()
    except OSError as e:
        return "<cannot read %s: %s>" % (path, e)
    text = data.decode("utf-8", "replace")
    if size > nbytes:
        text = "...\n" + text.split("\n", 1)[-1]
    return text


def _cpu_ticks(pid):
    """utime+stime of a process in clock ticks (from /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


# -------------------------------------------------------------------- HTTP

class Reply(collections.namedtuple("Reply", "status headers body")):
    """(status, headers, body) of one HTTP response. `headers` is an
    http.client.HTTPMessage (case-insensitive .get, .get_all); `elapsed`
    is the wall time of the request in seconds."""

    elapsed = 0.0

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header(self, name, default=None):
        return self.headers.get(name, default)

    def __repr__(self):
        body = self.body[:300]
        return "<Reply %s %r %.0fms>" % (self.status, body, self.elapsed * 1000)


def http(port, method="GET", path="/", headers=None, body=None, timeout=5.0,
         conn=None, host=LOOPBACK):
    """Do one HTTP/1.1 request and return a Reply. With `conn` (an
    http.client.HTTPConnection the caller owns) the connection is reused;
    otherwise a fresh one is opened and closed. Raises on timeout or on a
    connection closed without a response."""
    own = conn is None
    if own:
        conn = httplib.HTTPConnection(host, port, timeout=timeout)
    else:
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        reply = Reply(resp.status, resp.headers, data)
        reply.elapsed = time.monotonic() - t0
        return reply
    finally:
        if own:
            conn.close()


def raw_http(port, data, timeout=5.0, method="GET", host=LOOPBACK, send_errors_ok=False):
    """Send raw bytes on a fresh connection and parse one response with
    http.client. With send_errors_ok, a reset while sending (the server may
    answer and close before reading everything) is ignored. Returns Reply."""
    t0 = time.monotonic()
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
        except OSError as e:
            if not send_errors_ok or e.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
        resp = httplib.HTTPResponse(sock, method=method)
        resp.begin()
        body = resp.read()
        reply = Reply(resp.status, resp.headers, body)
        reply.elapsed = time.monotonic() - t0
        return reply
    finally:
        sock.close()


# --------------------------------------------------------------- processes

class Process:
    """One child process with a recorded PID and a log file."""

    def __init__(self, name, workdir):
        self.name = name
        self.workdir = workdir
        self.log_path = os.path.join(workdir, name + ".log")
        self.proc = None
        self.exit_codes = []  # every exit status seen, in order

    # subclasses provide these
    def argv(self):
        raise NotImplementedError

    def environment(self):
        return dict(os.environ)

    def wait_started(self, timeout):
        pass

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, timeout=START_TIMEOUT_S):
        assert not self.alive(), "%s already running" % self.name
        cmd = self.argv()
        with open(self.log_path, "ab") as log:
            log.write(("\n=== %s start: %s\n" % (self.name, " ".join(cmd))).encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, env=self.environment(), cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_started(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def returncode(self):
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM, wait up to `timeout`; SIGKILL if still running. Return the
        exit status (negative = killed by that signal), None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case it was paused
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._log_note("did not exit %.1fs after SIGTERM; SIGKILL" % timeout)
                return self.kill()
        return self._reaped()

    def kill(self):
        """SIGKILL by PID and reap."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(STOP_TIMEOUT_S)
        return self._reaped()

    def pause(self):
        self.signal(signal.SIGSTOP)

    def resume(self):
        self.signal(signal.SIGCONT)

    def wait_exit(self, timeout):
        """Wait for the process to exit by itself; return its status or raise
        subprocess.TimeoutExpired."""
        self.proc.wait(timeout)
        return self._reaped()

    def cpu_ticks(self):
        return _cpu_ticks(self.proc.pid)

    def _reaped(self):
        rc = self.proc.returncode
        if not self.exit_codes or self.exit_codes[-1][0] is not self.proc:
            self.exit_codes.append((self.proc, rc))
        return rc

    def _log_note(self, text):
        with open(self.log_path, "ab") as log:
            log.write(("\n=== harness: %s %s\n" % (self.name, text)).encode())

    def log_tail(self, nbytes=LOG_TAIL_BYTES):
        return _tail(self.log_path, nbytes)

    def _check_running(self):
        if not self.alive():
            raise AssertionError("%s exited during start with status %s; log:\n%s"
                                 % (self.name, self.returncode(), self.log_tail()))


class Redis(Process):
    """redis-server on a fixed port and dir with AOF on, so stop()/start()
    keeps the data."""

    def __init__(self, workdir, port=None, name="redis"):
        super().__init__(name, workdir)
        self.port = port or free_port()
        self.dir = os.path.join(workdir, name + "-data")
        os.makedirs(self.dir, exist_ok=True)

    def argv(self):
        return [REDIS_SERVER, "--port", str(self.port), "--bind", LOOPBACK,
                "--save", "", "--appendonly", "yes", "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "yes"]

    def wait_started(self, timeout):
        def ready():
            self._check_running()
            return self.call("PING") == "PONG"
        wait_until(ready, timeout, "%s to answer PING on port %d" % (self.name, self.port))

    def call(self, *args, timeout=1.0):
        """Send one command and return the decoded reply (str, int, list,
        None). A Redis error reply raises RuntimeError."""
        with socket.create_connection((LOOPBACK, self.port), timeout=timeout) as s:
            s.sendall(_resp_encode(args))
            return _resp_read(s.makefile("rb"))


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError("bad RESP line %r" % line)


class Session(Process):
    """shoal-session bound to tcp://127.0.0.1:<port> (the port is kept
    across restarts)."""

    def __init__(self, name, redis_port, workdir, port=None, env=None):
        super().__init__(name, workdir)
        self.redis_port = redis_port
        self.port = port or free_port()
        self.extra_env = dict(env or {})

    @property
    def endpoint(self):
        return "tcp://%s:%d" % (LOOPBACK, self.port)

    def argv(self):
        return [os.path.join(BIN_DIR, "shoal-session")]

    def environment(self):
        env = dict(os.environ)
        env.update({
            "SHOAL_BIND": self.endpoint,
            "SHOAL_REDIS_HOST": LOOPBACK,
            "SHOAL_REDIS_PORT": str(self.redis_port),
            "SHOAL_INSTANCE": self.name,
        })
        env.update(self.extra_env)
        return env

    def wait_started(self, timeout):
        def listening():
            self._check_running()
            return port_open(self.port)
        wait_until(listening, timeout, "%s to listen on %s" % (self.name, self.endpoint))


class Edge(Process):
    """shoal-edge on http://127.0.0.1:<port> (kept across restarts)."""

    def __init__(self, name, session_endpoints, workdir, port=None, static_dir=None, env=None):
        super().__init__(name, workdir)
        self.session_endpoints = list(session_endpoints)
        self.port = port or free_port()
        self.static_dir = static_dir
        self.extra_env = dict(env or {})

    @property
    def request_timeout_ms(self):
        return int(self.extra_env.get("SHOAL_REQUEST_TIMEOUT_MS", 2000))

    def argv(self):
        return [os.path.join(BIN_DIR, "shoal-edge")]

    def environment(self):
        env = dict(os.environ)
        env.update({
            "SHOAL_HTTP_ADDR": LOOPBACK,
            "SHOAL_HTTP_PORT": str(self.port),
            "SHOAL_SESSION_ENDPOINTS": ",".join(self.session_endpoints),
            "SHOAL_INSTANCE": self.name,
        })
        if self.static_dir:
            env["SHOAL_STATIC_DIR"] = self.static_dir
        env.update(self.extra_env)
        return env

    def wait_started(self, timeout):
        def live():
            self._check_running()
            return self.get("/health/live", timeout=1.0).status == 200
        wait_until(live, timeout, "%s /health/live 200 on port %d" % (self.name, self.port))

    def wait_ready(self, timeout=START_TIMEOUT_S, want=200):
        wait_until(lambda: self.get("/health/ready", timeout=1.0).status == want, timeout,
                   "%s /health/ready %d" % (self.name, want))

    def request(self, method, path, **kw):
        return http(self.port, method, path, **kw)

    def get(self, path, **kw):
        return http(self.port, "GET", path, **kw)


# -------------------------------------------------------------------- stack

class Stack:
    """One Redis + `sessions` shoal-session + `edges` shoal-edge instances in
    a fresh temp dir. Use as a context manager; close() stops every process
    by PID (also when the body raised, in which case it prints every log
    tail first). The temp dir is removed by cleanup() (called by __exit__),
    unless SHOAL_TEST_KEEP=1."""

    def __init__(self, sessions=2, edges=2, static_dir=None, session_env=None,
                 edge_env=None, wait_ready=True):
        self.n_sessions = sessions
        self.n_edges = edges
        self.static_dir = static_dir
        self.session_env = dict(session_env or {})
        self.edge_env = dict(edge_env or {})
        self.want_ready = wait_ready
        self.tmp = None
        self.redis = None
        self.sessions = []
        self.edges = []

    def start(self):
        for exe in ("shoal-session", "shoal-edge"):
            path = os.path.join(BIN_DIR, exe)
            if not os.access(path, os.X_OK):
                raise AssertionError("binary not found: %s (build first, or set SHOAL_BIN_DIR)"
                                     % path)
        self.tmp = tempfile.mkdtemp(prefix="shoal-it-")
        try:
            self.redis = Redis(self.tmp)
            self.redis.start()
            for i in range(self.n_sessions):
                s = Session("session-%d" % (i + 1), self.redis.port, self.tmp,
                            env=self.session_env)
                self.sessions.append(s)
                s.start()
            endpoints = [s.endpoint for s in self.sessions]
            for i in range(self.n_edges):
                e = Edge("edge-%s" % chr(ord("a") + i), endpoints, self.tmp,
                         static_dir=self.static_dir, env=self.edge_env)
                self.edges.append(e)
                e.start()
            if self.want_ready and self.sessions:
                for e in self.edges:
                    e.wait_ready()
        except BaseException:
            print(self.log_tails())
            self.close()
            self.cleanup()
            raise
        return self

    @property
    def edge(self):
        return self.edges[0]

    def processes(self):
        return list(self.edges) + list(self.sessions) + ([self.redis] if self.redis else [])

    def close(self):
        """Stop edges, then sessions, then Redis, each by PID."""
        for p in self.processes():
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - keep tearing down
                print("teardown of %s failed: %s" % (p.name, e))
                try:
                    p.kill()
                except Exception:  # noqa: BLE001
                    pass

    def cleanup(self):
        if self.tmp and os.environ.get("SHOAL_TEST_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp:
            print("kept test dir %s" % self.tmp)

    def log_tails(self, nbytes=LOG_TAIL_BYTES):
        out = []
        for p in self.processes():
            state = "running" if p.alive() else "exited %s" % (p.returncode(),)
            out.append("----- %s (pid %s, %s) %s -----\n%s"
                       % (p.name, p.pid, state, p.log_path, p.log_tail(nbytes)))
        return "\n".join(out)

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and exc_type is not KeyboardInterrupt:
            print("\n===== stack logs (test raised %s) =====\n%s"
                  % (exc_type.__name__, self.log_tails()))
        self.close()
        self.cleanup()
        return False
