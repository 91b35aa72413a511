"""shoal_stack -- start and stop a real Shoal stack on loopback for tests.

A Stack is one redis-server (AOF on, in a temp dir), N shoal-session
instances and M shoal-edge instances, optionally with shoal-health
registry instances, a Postgres primary + streaming replica, K
shoal-query instances, the S3 test server (S3Server) and U shoal-upload
instances on it. Each is a child process whose PID is recorded when
it is started and which is stopped by that PID only. Every process writes
stdout+stderr to <tmpdir>/<name>.log; `Stack.log_tails()` returns the end
of every log for failure reports.

Standard library only (and curl, which signs the S3 requests). Binaries come
from $SHOAL_BIN_DIR, default <repo>/build/bin; Postgres from
$SHOAL_PG_BIN_DIR (default: Debian's /usr/lib/postgresql/<newest>/bin, else
PATH); the S3 test server from deploy/local/s3 run by $SHOAL_NODE (default:
node on PATH).
"""

import base64
import collections
import errno
import glob
import hashlib
import http.client as httplib
import io as _io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as _ET

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN_DIR = os.path.abspath(os.environ.get("SHOAL_BIN_DIR") or os.path.join(REPO_ROOT, "build", "bin"))
REDIS_SERVER = os.environ.get("SHOAL_REDIS_SERVER", "redis-server")
# The S3 test server (s3rver, installed by deploy/local/install-deps) and its Node.js.
S3_SERVER = os.path.join(REPO_ROOT, "deploy", "local", "s3", "s3-server")
NODE = os.environ.get("SHOAL_NODE") or shutil.which("node") or "node"


def _pg_bin_dir():
    env = os.environ.get("SHOAL_PG_BIN_DIR")
    if env:
        return env
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else ""


PG_BIN_DIR = _pg_bin_dir()
PG_OS_USER = "postgres"  # the OS user Postgres runs as when the tests run as root
PG_SUPERUSER = "postgres"
PG_DB = "shoal"
PG_ROLE = "shoal"

LOOPBACK = "127.0.0.1"
PORT_LO = 20000
PORT_HI = 32000  # below the ephemeral range 32768-60999
POLL_S = 0.03
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0
LOG_TAIL_BYTES = 4000
MIB = 1024 * 1024

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


def _proc_stat(pid):
    """(state, ppid) of a process from /proc, or None when it is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _descendants(pid):
    """PIDs of every live descendant of `pid` (children, grandchildren...)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(entry)
            if st and st[0] != "Z":
                parents.setdefault(st[1], []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_gone(pids, timeout=STOP_TIMEOUT_S):
    """Wait until none of `pids` is alive (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if (_proc_stat(p) or ("Z",))[0] != "Z"]
        if not alive:
            return
        time.sleep(POLL_S)


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


# ------------------------------------------------------------ board client

CSRF_HEADER = "X-CSRF-Token"
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def parse_set_cookie(header):
    """(name, value, attrs) of one Set-Cookie header; attrs maps lowercased
    attribute names to their values ("" for flags such as HttpOnly)."""
    parts = [p.strip() for p in header.split(";")]
    name, _, value = parts[0].partition("=")
    attrs = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        attrs[k.strip().lower()] = v.strip()
    return name.strip(), value.strip(), attrs


def json_bytes(obj):
    """obj as UTF-8 JSON; strings holding lone surrogates (which UTF-8
    cannot carry) are sent as \\uXXXX escapes instead."""
    try:
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True).encode("ascii")


class Browser:
    """A client of one edge that behaves like a browser tab: one keep-alive
    connection, a cookie jar (Set-Cookie honoured, Max-Age=0 deletes) and
    the CSRF token of its login, sent as X-CSRF-Token on state-changing
    requests. Not thread-safe: one Browser per thread (copy() shares the
    cookies and token at that moment)."""

    def __init__(self, port, host=LOOPBACK, timeout=5.0, headers=None):
        self.port = port
        self.host = host
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.cookies = {}
        self.csrf = None
        self.user = None
        self.conn = None
        self.last = None

    def copy(self):
        b = Browser(self.port, self.host, self.timeout, self.headers)
        b.cookies = dict(self.cookies)
        b.csrf, b.user = self.csrf, self.user
        return b

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def cookie_header(self):
        return "; ".join("%s=%s" % kv for kv in self.cookies.items())

    def request(self, method, path, body=None, json_body=None, headers=None, csrf=True,
                cookies=True):
        """Send one request; headers given here override the defaults (a
        value of None removes the header). Returns the Reply and keeps any
        cookies it sets."""
        h = dict(self.headers)
        if cookies and self.cookies:
            h["Cookie"] = self.cookie_header()
        if json_body is not None:
            body = json_bytes(json_body)
            h["Content-Type"] = "application/json"
        elif body is not None and "Content-Type" not in h:
            h["Content-Type"] = "application/json"
        if csrf and self.csrf and method in STATE_CHANGING:
            h[CSRF_HEADER] = self.csrf
        for k, v in (headers or {}).items():
            h.pop(k, None)
            if v is not None:
                h[k] = v
        if self.conn is None:
            self.conn = httplib.HTTPConnection(self.host, self.port, timeout=self.timeout)
        fresh = self.conn.sock is None
        try:
            reply = http(self.port, method, path, headers=h, body=body, timeout=self.timeout,
                         conn=self.conn)
        except (httplib.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.close()
            # a keep-alive connection the server closed while idle: a GET
            # may go again on a new one; a write may not (it may have landed)
            if fresh or method != "GET":
                raise
            self.conn = httplib.HTTPConnection(self.host, self.port, timeout=self.timeout)
            reply = http(self.port, method, path, headers=h, body=body, timeout=self.timeout,
                         conn=self.conn)
        except Exception:
            self.close()
            raise
        self._absorb(reply)
        self.last = reply
        return reply

    def _absorb(self, reply):
        for header in reply.headers.get_all("Set-Cookie") or []:
            name, value, attrs = parse_set_cookie(header)
            if attrs.get("max-age") == "0" or value == "":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    def set_cookie(self, name, value):
        if value is None:
            self.cookies.pop(name, None)
        else:
            self.cookies[name] = value

    # --- the board API

    def _auth(self, path, username, password, **kw):
        r = self.request("POST", path, json_body={"username": username, "password": password},
                         **kw)
        if r.status in (200, 201):
            data = r.json()
            self.csrf, self.user = data.get("csrf_token"), data.get("user")
        return r

    def signup(self, username, password, **kw):
        return self._auth("/api/auth/signup", username, password, **kw)

    def login(self, username, password, **kw):
        return self._auth("/api/auth/login", username, password, **kw)

    def logout(self, **kw):
        r = self.request("POST", "/api/auth/logout", **kw)
        if r.status == 204:
            self.csrf = self.user = None
        return r

    def me(self, **kw):
        return self.request("GET", "/api/me", **kw)

    def create_item(self, title, body="", **kw):
        return self.request("POST", "/api/items", json_body={"title": title, "body": body}, **kw)

    def get_item(self, item_id, **kw):
        return self.request("GET", "/api/items/%s" % item_id, **kw)

    def delete_item(self, item_id, **kw):
        return self.request("DELETE", "/api/items/%s" % item_id, **kw)

    def list_items(self, q=None, cursor=None, limit=None, **kw):
        params = [(k, v) for k, v in (("q", q), ("cursor", cursor), ("limit", limit))
                  if v is not None]
        path = "/api/items"
        if params:
            path += "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
        return self.request("GET", path, **kw)


# --------------------------------------------------------------- WebSocket

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_NO_STATUS = 1005  # a close frame without a code
WS_ABNORMAL = 1006   # the connection ended without a close frame


class WsRefused(Exception):
    """The server answered the upgrade with something other than 101;
    `reply` is the Reply (status, headers, body)."""

    def __init__(self, reply):
        super().__init__("upgrade refused: %r" % (reply,))
        self.reply = reply


class WsClosed(Exception):
    """The server closed the connection: `code` from its close frame
    (WS_NO_STATUS without one, WS_ABNORMAL when the TCP connection ended
    with no close frame) and `reason`."""

    def __init__(self, code, reason=""):
        super().__init__("closed %s %r" % (code, reason))
        self.code = code
        self.reason = reason


def _ws_mask(key, data):
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class WebSocket:
    """A WebSocket client (RFC 6455) of one edge, standard library only, so
    that tests control every byte: the upgrade's headers, socket options
    set before connect (a small receive buffer or MSS for a client that
    stalls), frames of any opcode and fragmentation, and the close code.

    WebSocket(port, cookie=..., origin=..., protocols=...).connect() does
    the upgrade and raises WsRefused with the Reply when it is not 101.
    The default origin is the edge's own (http://127.0.0.1:<port>);
    origin=None sends none, protocols=() no Sec-WebSocket-Protocol.
    recv() returns the next text message as JSON (pings are answered);
    a close from the server raises WsClosed (and answers it). Not
    thread-safe."""

    def __init__(self, port, path="/ws", cookie=None, origin="", protocols=("shoal.v1",),
                 headers=None, host=LOOPBACK, timeout=5.0, sockopts=()):
        self.port = port
        self.path = path
        self.cookie = cookie
        self.origin = "http://%s:%d" % (host, port) if origin == "" else origin
        self.protocols = tuple(protocols)
        self.headers = dict(headers or {})
        self.host = host
        self.timeout = timeout
        self.sockopts = list(sockopts)
        self.sock = None
        self.buf = b""
        self.protocol = None   # the subprotocol the server chose
        self.reply = None      # the 101 answer
        self.close_code = None  # set once the server closed
        self.close_reason = ""

    # --- the upgrade

    def connect(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for opt in self.sockopts:
                sock.setsockopt(*opt)
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
            key = base64.b64encode(os.urandom(16))
            lines = ["GET %s HTTP/1.1" % self.path, "Host: %s:%d" % (self.host, self.port),
                     "Upgrade: websocket", "Connection: Upgrade",
                     "Sec-WebSocket-Key: %s" % key.decode(), "Sec-WebSocket-Version: 13"]
            if self.origin is not None:
                lines.append("Origin: %s" % self.origin)
            if self.protocols:
                lines.append("Sec-WebSocket-Protocol: %s" % ", ".join(self.protocols))
            if self.cookie:
                lines.append("Cookie: %s" % self.cookie)
            lines += ["%s: %s" % kv for kv in self.headers.items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            self.sock = sock
            reply = self._read_head()
            if reply.status != 101:
                raise WsRefused(reply)
            want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
            if reply.header("Sec-WebSocket-Accept") != want:
                raise AssertionError("Sec-WebSocket-Accept %r, want %r"
                                     % (reply.header("Sec-WebSocket-Accept"), want))
            self.protocol = reply.header("Sec-WebSocket-Protocol")
            self.reply = reply
            return self
        except BaseException:
            sock.close()
            self.sock = None
            raise

    def _read_head(self):
        t0 = time.monotonic()
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before an answer to the upgrade")
            self.buf += chunk
            if len(self.buf) > 65536:
                raise AssertionError("answer header too long: %r" % self.buf[:200])
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, _, rest = head.partition(b"\r\n")
        headers = httplib.parse_headers(_io.BytesIO(rest + b"\r\n\r\n"))
        status = int(status_line.split()[1])
        body = b""
        if status != 101:
            length = int(headers.get("Content-Length") or 0)
            while len(self.buf) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
            body, self.buf = self.buf[:length], self.buf[length:]
        reply = Reply(status, headers, body)
        reply.elapsed = time.monotonic() - t0
        return reply

    # --- frames

    def send_frame(self, opcode, payload=b"", fin=True):
        """One masked frame (opcode WS_TEXT, WS_CONT, ...; fin=False for a
        fragment that more follow)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        key = os.urandom(4)
        self.sock.sendall(head + key + _ws_mask(key, payload))

    def send(self, text):
        self.send_frame(WS_TEXT, text)

    def send_json(self, obj):
        self.send_frame(WS_TEXT, json.dumps(obj))

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no complete frame within the timeout")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self._closed(WS_ABNORMAL, "")
            self.buf += chunk

    def _take(self, n, deadline):
        self._fill(n, deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _closed(self, code, reason):
        self.close_code, self.close_reason = code, reason
        raise WsClosed(code, reason)

    def recv_frame(self, timeout=None):
        """(opcode, payload) of the next frame, as sent (no reassembly)."""
        if self.close_code is not None:
            raise WsClosed(self.close_code, self.close_reason)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        b0, b1 = self._take(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._take(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._take(8, deadline))[0]
        if b1 & 0x80:
            raise AssertionError("the server masked a frame")
        return b0, self._take(n, deadline)

    def recv_message(self, timeout=None):
        """(opcode, payload) of the next data message, fragments joined;
        pings are answered, a close raises WsClosed. socket.timeout when
        nothing complete arrives within `timeout` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        parts, first = [], None
        while True:
            b0, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            opcode = b0 & 0x0F
            if opcode == WS_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else WS_NO_STATUS
                try:
                    self.send_frame(WS_CLOSE, payload[:2])
                except OSError:
                    pass
                self._closed(code, payload[2:].decode("utf-8", "replace"))
            if opcode == WS_PING:
                self.send_frame(WS_PONG, payload)
                continue
            if opcode == WS_PONG:
                continue
            if first is None:
                first = opcode
            parts.append(payload)
            if b0 & 0x80:
                return first, b"".join(parts)

    def recv(self, timeout=None):
        """The next text message, parsed as JSON."""
        opcode, payload = self.recv_message(timeout)
        if opcode != WS_TEXT:
            raise AssertionError("opcode %d message: %r" % (opcode, payload[:200]))
        try:
            return json.loads(payload.decode("utf-8"))
        except ValueError as e:
            raise AssertionError("a text message that is not JSON (%s): %r"
                                 % (e, payload[:300])) from None

    def recv_until(self, pred, timeout=None, what="a message"):
        """Read messages until pred(message) is true; return every message
        read, the matching one last. AssertionError (naming `what` and the
        messages seen) after `timeout` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen = []
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise socket.timeout()
                msg = self.recv(left)
            except socket.timeout:
                raise AssertionError("no %s within %.1fs; got %d messages, last: %r"
                                     % (what, timeout or self.timeout, len(seen), seen[-3:]))
            seen.append(msg)
            if pred(msg):
                return seen

    def wait_close(self, timeout=None):
        """Read (and drop) messages until the server closes; return the
        close code. AssertionError when it is still open after `timeout`."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise socket.timeout()
                self.recv_message(left)
            except WsClosed as e:
                return e.code
            except socket.timeout:
                raise AssertionError("connection still open after %.1fs"
                                     % (timeout or self.timeout))

    def close(self, code=1000):
        """Send a close frame (if still open) and drop the TCP connection."""
        if self.sock is None:
            return
        if self.close_code is None:
            try:
                self.send_frame(WS_CLOSE, struct.pack("!H", code))
            except OSError:
                pass
        self.sock.close()
        self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


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

    def popen_kwargs(self):
        """Extra subprocess.Popen arguments (e.g. user= for Postgres)."""
        return {}

    def launch(self):
        """Start the process without waiting for it to be ready (see
        wait_started); start() is launch() + wait_started()."""
        assert not self.alive(), "%s already running" % self.name
        cmd = self.argv()
        with open(self.log_path, "ab") as log:
            log.write(("\n=== %s start: %s\n" % (self.name, " ".join(cmd))).encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, env=self.environment(), cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         **self.popen_kwargs())
        return self

    def start(self, timeout=START_TIMEOUT_S):
        self.launch()
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

    # How stop() asks the process to exit, and whether pause/resume/kill
    # also signal the child's own children -- needed where the child forks
    # workers into sessions of their own, as the Postgres postmaster does,
    # so that SIGSTOP stops the backends too and a kill -9 leaves none.
    stop_signal = signal.SIGTERM
    signal_children = False

    def _send(self, sig):
        pids = [self.proc.pid]
        if self.signal_children:
            pids += _descendants(self.proc.pid)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                if pid == self.proc.pid:
                    raise

    def signal(self, sig):
        if self.alive():
            self._send(sig)

    def stop(self, timeout=STOP_TIMEOUT_S):
        """stop_signal (SIGTERM), wait up to `timeout`; SIGKILL if still
        running. Return the exit status (negative = killed by that signal),
        None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self._send(signal.SIGCONT)  # in case it was paused
                os.kill(self.proc.pid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._log_note("did not exit %.1fs after signal %d; SIGKILL"
                               % (timeout, self.stop_signal))
                return self.kill()
        return self._reaped()

    def kill(self):
        """SIGKILL by PID (with signal_children: its children too, so none
        outlives it) and reap."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            children = _descendants(self.proc.pid) if self.signal_children else []
            try:
                self._send(signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(STOP_TIMEOUT_S)
            _wait_gone(children)
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


def check_s3_server():
    """Raise AssertionError unless the S3 test server can run here."""
    if not shutil.which(NODE):
        raise AssertionError("node not found (run deploy/local/install-deps, or set SHOAL_NODE)")
    if not os.path.isdir(os.path.join(os.path.dirname(S3_SERVER), "node_modules", "s3rver")):
        raise AssertionError("s3rver is not installed in deploy/local/s3 (run "
                             "deploy/local/install-deps)")


class S3Error(RuntimeError):
    """An S3 request got an answer other than the one the helper expects."""

    def __init__(self, what, reply):
        super().__init__("%s: HTTP %s %s" % (what, reply.status, reply.body[:400]))
        self.reply = reply


def _xml_strip_ns(root):
    """Drop the namespaces of every tag (s3rver answers in a misspelt one)."""
    for el in root.iter():
        el.tag = el.tag.rsplit("}", 1)[-1]
    return root


class S3Server(Process):
    """The S3-compatible test server of deploy/local (deploy/local/s3/s3-server:
    s3rver 3.7.1 plus AbortMultipartUpload, ListMultipartUploads, ListParts,
    checksum, part and key checks; see deploy/local/s3/README.md) on
    http://127.0.0.1:<port>, path-style, data in <workdir>/<name>-data. Port and
    data are kept across stop()/kill() and start(), so a restart finds every
    object and every unfinished multipart upload again. Requests are signed
    (SigV4) by curl --aws-sigv4 with the server's key pair."""

    def __init__(self, workdir, port=None, name="s3", bucket="shoal-uploads",
                 access_key="S3RVER", secret_key="S3RVER", region="us-east-1",
                 min_part_size=None):
        super().__init__(name, workdir)
        self.port = port or free_port()
        self.data_dir = os.path.join(workdir, name + "-data")
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.min_part_size = min_part_size

    @property
    def endpoint(self):
        return "http://%s:%d" % (LOOPBACK, self.port)

    def settings(self):
        """The SHOAL_S3_* settings a client of this server needs."""
        return {"SHOAL_S3_ENDPOINT": self.endpoint, "SHOAL_S3_REGION": self.region,
                "SHOAL_S3_BUCKET": self.bucket, "SHOAL_S3_ACCESS_KEY": self.access_key,
                "SHOAL_S3_SECRET_KEY": self.secret_key, "SHOAL_S3_PATH_STYLE": "true"}

    service_env = settings

    def argv(self):
        cmd = [NODE, "--openssl-legacy-provider", S3_SERVER, "--address", LOOPBACK,
               "--port", str(self.port), "--dir", self.data_dir, "--bucket", self.bucket]
        if self.min_part_size is not None:
            cmd += ["--min-part-size", str(self.min_part_size)]
        return cmd

    def environment(self):
        env = dict(os.environ)
        env.update({"SHOAL_S3_ACCESS_KEY": self.access_key,
                    "SHOAL_S3_SECRET_KEY": self.secret_key})
        return env

    def wait_started(self, timeout):
        def ready():
            self._check_running()
            return http(self.port, "GET", "/%s?location" % self.bucket, timeout=1.0).status == 200
        wait_until(ready, timeout, "%s bucket %s to answer on port %d"
                   % (self.name, self.bucket, self.port))

    # --- requests

    def path(self, key=None, query=""):
        """/<bucket>[/<percent-encoded key>][?query]"""
        p = "/" + self.bucket
        if key is not None:
            p += "/" + urllib.parse.quote(key, safe="/-_.~")
        return p + ("?" + query if query else "")

    def request(self, method, key=None, query="", body=None, headers=None, timeout=10.0,
                sign=True):
        """One request to /<bucket>[/<key>][?query], signed by curl --aws-sigv4
        unless sign=False; `body` is bytes or None; a header given as None is
        not sent (x-amz-content-sha256 and an empty Expect: are by default).
        The path goes out as it is (no "/../" folding). Returns a Reply.
        Raises ConnectionError when nothing answers within `timeout` seconds
        (server stopped, paused or killed)."""
        h = {"x-amz-content-sha256": "UNSIGNED-PAYLOAD", "Expect": "", "Content-Type": ""}
        h.update(headers or {})
        cmd = ["curl", "-sS", "--path-as-is", "--max-time", "%g" % timeout]
        if method == "HEAD":
            cmd += ["-I"]  # headers on stdout, no body awaited
        else:
            cmd += ["-X", method, "-D", "-", "-o", "-"]  # headers, then the body
        if sign:
            cmd += ["--aws-sigv4", "aws:amz:%s:s3" % self.region,
                    "--user", "%s:%s" % (self.access_key, self.secret_key)]
        for k, v in h.items():
            if v is not None:  # "Name:" with no value: curl sends none of its own
                cmd += ["-H", "%s:" % k if v == "" else "%s: %s" % (k, v)]
        if body is not None:
            cmd += ["--data-binary", "@-"]
        cmd.append(self.endpoint + self.path(key, query))
        t0 = time.monotonic()
        res = subprocess.run(cmd, input=body if body is not None else b"",
                             capture_output=True, timeout=timeout + 5)
        if res.returncode in (7, 28, 52, 55, 56):  # connect, timeout, empty, send, recv
            raise ConnectionError("curl %s %s: exit %d: %s" % (
                method, self.path(key, query), res.returncode,
                res.stderr.decode("utf-8", "replace").strip()))
        if res.returncode != 0:
            raise RuntimeError("curl %s %s: exit %d: %s" % (
                method, self.path(key, query), res.returncode,
                res.stderr.decode("utf-8", "replace").strip()))
        head, sep, rest = res.stdout.partition(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        headers_msg = httplib.parse_headers(_io.BytesIO(header_block + b"\r\n\r\n"))
        reply = Reply(int(status_line.split()[1]), headers_msg, rest if sep else b"")
        reply.elapsed = time.monotonic() - t0
        return reply

    def _expect(self, reply, status, what):
        if reply.status not in ((status,) if isinstance(status, int) else status):
            raise S3Error(what, reply)
        return reply

    def _xml(self, reply):
        return _xml_strip_ns(_ET.fromstring(reply.body))

    # --- objects

    def put_object(self, key, data, headers=None, **kw):
        """PutObject; returns the Reply (200, ETag) or raises S3Error."""
        return self._expect(self.request("PUT", key, body=data, headers=headers, **kw), 200,
                            "PUT %s" % key)

    def get_object(self, key, range=None, headers=None, **kw):
        """GetObject (with a Range header if given); returns the Reply, whatever its status."""
        h = dict(headers or {})
        if range is not None:
            h["Range"] = range
        return self.request("GET", key, headers=h, **kw)

    def head_object(self, key, **kw):
        return self.request("HEAD", key, **kw)

    def delete_object(self, key, **kw):
        return self._expect(self.request("DELETE", key, **kw), 204, "DELETE %s" % key)

    def list_objects(self, prefix="", page_size=1000):
        """ListObjectsV2, every page: [{"key", "size", "etag"}] in key order."""
        out, token = [], None
        while True:
            q = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(page_size))]
            if token:
                q.append(("continuation-token", token))
            r = self._expect(self.request("GET", query=urllib.parse.urlencode(
                q, quote_via=urllib.parse.quote)), 200, "ListObjectsV2")
            root = self._xml(r)
            for c in root.findall("Contents"):
                out.append({"key": c.findtext("Key"), "size": int(c.findtext("Size")),
                            "etag": c.findtext("ETag").strip('"')})
            token = root.findtext("NextContinuationToken")
            if root.findtext("IsTruncated") != "true" or not token:
                return out

    def keys(self, prefix=""):
        return [o["key"] for o in self.list_objects(prefix)]

    # --- multipart uploads

    def create_multipart(self, key, headers=None):
        """CreateMultipartUpload; returns the upload id."""
        r = self._expect(self.request("POST", key, query="uploads=", headers=headers), 200,
                         "CreateMultipartUpload %s" % key)
        return self._xml(r).findtext("UploadId")

    def upload_part(self, key, upload_id, number, data, headers=None):
        """UploadPart; returns the part's ETag (without quotes)."""
        r = self._expect(self.request("PUT", key, query="partNumber=%d&uploadId=%s"
                                      % (number, upload_id), body=data, headers=headers),
                         200, "UploadPart %s #%d" % (key, number))
        return r.header("ETag").strip('"')

    @staticmethod
    def complete_xml(parts):
        """The CompleteMultipartUpload body for [(number, etag)]."""
        return ("<CompleteMultipartUpload>%s</CompleteMultipartUpload>" % "".join(
            "<Part><PartNumber>%d</PartNumber><ETag>\"%s\"</ETag></Part>" % (n, e)
            for n, e in parts)).encode()

    def complete_multipart(self, key, upload_id, parts):
        """CompleteMultipartUpload with [(number, etag)]; returns the Reply
        (200 or an S3 error such as 400 InvalidPart, 404 NoSuchUpload)."""
        return self.request("POST", key, query="uploadId=" + upload_id,
                            body=self.complete_xml(parts))

    def abort_multipart(self, key, upload_id):
        """AbortMultipartUpload; returns the Reply (204, or 404 NoSuchUpload)."""
        return self.request("DELETE", key, query="uploadId=" + upload_id)

    def list_parts(self, key, upload_id):
        """ListParts: [{"number", "etag", "size"}]."""
        r = self._expect(self.request("GET", key, query="uploadId=" + upload_id), 200,
                         "ListParts %s" % key)
        return [{"number": int(p.findtext("PartNumber")), "etag": p.findtext("ETag").strip('"'),
                 "size": int(p.findtext("Size"))} for p in self._xml(r).findall("Part")]

    def list_multipart_uploads(self, prefix=""):
        """ListMultipartUploads: [{"key", "upload_id", "initiated"}] of every
        upload neither completed nor aborted, by key."""
        out, key_marker, id_marker = [], "", ""
        while True:
            q = [("uploads", ""), ("prefix", prefix)]
            if key_marker:
                q += [("key-marker", key_marker), ("upload-id-marker", id_marker)]
            r = self._expect(self.request("GET", query=urllib.parse.urlencode(
                q, quote_via=urllib.parse.quote)), 200, "ListMultipartUploads")
            root = self._xml(r)
            for u in root.findall("Upload"):
                out.append({"key": u.findtext("Key"), "upload_id": u.findtext("UploadId"),
                            "initiated": u.findtext("Initiated")})
            if root.findtext("IsTruncated") != "true":
                return out
            key_marker = root.findtext("NextKeyMarker")
            id_marker = root.findtext("NextUploadIdMarker")

    def uploads_on_disk(self):
        """Upload ids whose parts are in the data dir (read from the files, so
        it works while the server is stopped)."""
        d = os.path.join(self.data_dir, self.bucket, "._S3rver_uploads")
        try:
            return sorted(os.listdir(d))
        except FileNotFoundError:
            return []


class ZmqService(Process):
    """A Shoal service binary bound to tcp://127.0.0.1:<port> (the port is
    kept across restarts), with Redis at redis_port if given. Subclasses
    name the binary and add their settings in _settings()."""

    binary = None

    publishes = False  # binds a PUB socket for live events (SHOAL_EVENTS_BIND)

    def __init__(self, name, workdir, redis_port=None, port=None, env=None):
        super().__init__(name, workdir)
        self.redis_port = redis_port
        self.port = port or free_port()
        self.events_port = free_port() if self.publishes else None
        self.extra_env = dict(env or {})

    @property
    def endpoint(self):
        return "tcp://%s:%d" % (LOOPBACK, self.port)

    @property
    def events_endpoint(self):
        return "tcp://%s:%d" % (LOOPBACK, self.events_port) if self.events_port else None

    def argv(self):
        return [os.path.join(BIN_DIR, self.binary)]

    def _settings(self):
        return {}

    def environment(self):
        env = dict(os.environ)
        env.update({"SHOAL_BIND": self.endpoint, "SHOAL_INSTANCE": self.name})
        if self.events_port:
            env["SHOAL_EVENTS_BIND"] = self.events_endpoint
        if self.redis_port:
            env["SHOAL_REDIS_HOST"] = LOOPBACK
            env["SHOAL_REDIS_PORT"] = str(self.redis_port)
        env.update(self._settings())
        env.update(self.extra_env)
        return env

    def wait_started(self, timeout):
        def listening():
            self._check_running()
            return port_open(self.port)
        wait_until(listening, timeout, "%s to listen on %s" % (self.name, self.endpoint))


class Session(ZmqService):
    """shoal-session on its Redis."""

    binary = "shoal-session"
    publishes = True

    def __init__(self, name, redis_port, workdir, port=None, env=None):
        super().__init__(name, workdir, redis_port=redis_port, port=port, env=env)


class Health(Process):
    """shoal-health (the registry) with its ROUTER on tcp://127.0.0.1:<port>
    and its PUB on <pub_port>, both kept across restarts."""

    def __init__(self, name, workdir, port=None, pub_port=None, env=None):
        super().__init__(name, workdir)
        self.port = port or free_port()
        self.pub_port = pub_port or free_port()
        self.extra_env = dict(env or {})

    @property
    def endpoint(self):
        return "tcp://%s:%d" % (LOOPBACK, self.port)

    def argv(self):
        return [os.path.join(BIN_DIR, "shoal-health")]

    def environment(self):
        env = dict(os.environ)
        env.update({
            "SHOAL_BIND": self.endpoint,
            "SHOAL_PUB_BIND": "tcp://%s:%d" % (LOOPBACK, self.pub_port),
            "SHOAL_INSTANCE": self.name,
        })
        env.update(self.extra_env)
        return env

    def wait_started(self, timeout):
        def listening():
            self._check_running()
            return port_open(self.port) and port_open(self.pub_port)
        wait_until(listening, timeout, "%s to listen on %s" % (self.name, self.endpoint))


class PsqlError(RuntimeError):
    """psql exited non-zero (connection refused, SQL error, ...)."""


def _is_root():
    return os.geteuid() == 0


def _as_pg_user(cmd):
    """`cmd` run as the postgres OS user when we are root (Postgres refuses
    to run as root), else as ourselves."""
    return ["runuser", "-u", PG_OS_USER, "--"] + cmd if _is_root() else cmd


def _pg_tool(name):
    path = os.path.join(PG_BIN_DIR, name) if PG_BIN_DIR else ""
    return path if path and os.access(path, os.X_OK) else (shutil.which(name) or name)


def _own_dir_for_pg(path):
    """Create `path` (mode 0700) owned by the postgres OS user when root."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if _is_root():
        import pwd
        pw = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o700)


class Postgres(Process):
    """A Postgres primary on 127.0.0.1:<port>, data in <workdir>/<name>-data.

    The first start() runs initdb (trust authentication on loopback, UTF8),
    starts the server and creates the role and database `shoal` (owned by
    the role). Later starts reuse the same port and data dir. Settings
    (wal_level=replica, max_wal_senders, hot_standby, ...) are passed as
    -c flags, plus any in `settings`. As root, the one-shot tools run via
    runuser and the server itself as the postgres OS user (set directly on
    the child, so that the recorded PID is the postmaster and not a runuser
    parent that would survive a kill -9 of its child or vice versa).
    stop() is a fast shutdown (SIGINT: disconnects clients); kill(),
    pause() and resume() signal the postmaster and every child it forked
    (each of which Postgres puts in its own session), so a paused server
    answers nothing and a killed one leaves no backend behind."""

    stop_signal = signal.SIGINT
    signal_children = True
    BASE_SETTINGS = {
        "listen_addresses": LOOPBACK,
        "unix_socket_directories": "",
        "wal_level": "replica",
        "max_wal_senders": "10",
        "wal_keep_size": "256MB",
        "hot_standby": "on",
        "max_connections": "100",
        "shared_buffers": "32MB",
        "fsync": "off",  # test data; a process crash loses nothing without fsync
        "wal_retrieve_retry_interval": "200ms",  # a standby reconnects fast
        "log_min_messages": "warning",
        "log_connections": "off",
    }

    def __init__(self, workdir, port=None, name="pg-primary", settings=None):
        super().__init__(name, workdir)
        self.port = port or free_port()
        self.data_dir = os.path.join(workdir, name + "-data")
        self.settings = dict(self.BASE_SETTINGS)
        self.settings.update(settings or {})
        self.initialised = False

    def conninfo(self, user=PG_ROLE, dbname=PG_DB):
        """libpq conninfo for the service role (or `user`)."""
        return "host=%s port=%d dbname=%s user=%s" % (LOOPBACK, self.port, dbname, user)

    def argv(self):
        cmd = [_pg_tool("postgres"), "-D", self.data_dir, "-p", str(self.port)]
        for k, v in sorted(self.settings.items()):
            cmd += ["-c", "%s=%s" % (k, v)]
        return cmd

    def environment(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        return env

    def popen_kwargs(self):
        if not _is_root():
            return {}
        import pwd
        pw = pwd.getpwnam(PG_OS_USER)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _run_tool(self, cmd, what):
        with open(self.log_path, "ab") as log:
            log.write(("\n=== %s %s: %s\n" % (self.name, what, " ".join(cmd))).encode())
            log.flush()
            rc = subprocess.call(cmd, cwd=self.workdir, env=self.environment(),
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 timeout=60)
        if rc != 0:
            raise AssertionError("%s %s failed (status %d); log:\n%s"
                                 % (self.name, what, rc, self.log_tail()))

    def initialise(self):
        """Create the data dir (initdb). Called by the first start()."""
        _own_dir_for_pg(self.data_dir)
        self._run_tool(_as_pg_user([_pg_tool("initdb"), "-D", self.data_dir, "--auth=trust",
                                    "-U", PG_SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8",
                                    "--no-sync"]), "initdb")

    def start(self, timeout=START_TIMEOUT_S):
        fresh = not self.initialised
        if fresh:
            self.initialise()
        super().start(timeout)
        if fresh:
            self.after_first_start()
            self.initialised = True
        return self

    def after_first_start(self):
        self.psql("CREATE ROLE %s LOGIN" % PG_ROLE, db="postgres")
        self.psql("CREATE DATABASE %s OWNER %s" % (PG_DB, PG_ROLE), db="postgres")

    def wait_started(self, timeout):
        def accepting():
            self._check_running()
            return self.psql("SELECT 1", db="postgres", timeout=2) == "1"
        wait_until(accepting, timeout, "%s to accept connections on port %d"
                   % (self.name, self.port), retry_on=RETRYABLE + (PsqlError,))

    def psql(self, sql, db=PG_DB, user=PG_SUPERUSER, timeout=10):
        """Run `sql` with psql (unaligned, tuples only, ON_ERROR_STOP) as the
        superuser and return its output stripped; PsqlError on failure."""
        cmd = [_pg_tool("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
               "-h", LOOPBACK, "-p", str(self.port), "-U", user, "-d", db, "-c", sql]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "2"
        try:
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:
            raise PsqlError("psql timed out after %ss: %s" % (timeout, sql)) from e
        if res.returncode != 0:
            raise PsqlError("psql on %s (status %d): %s: %s"
                            % (self.name, res.returncode, sql,
                               res.stderr.decode("utf-8", "replace").strip()))
        return res.stdout.decode("utf-8", "replace").strip()

    def rows(self, sql, **kw):
        """psql() split into rows of '|'-separated columns."""
        out = self.psql(sql, **kw)
        return [line.split("|") for line in out.split("\n")] if out else []

    def scalar(self, sql, **kw):
        return self.psql(sql, **kw)

    def in_recovery(self):
        return self.psql("SELECT pg_is_in_recovery()", db="postgres") == "t"


class PostgresReplica(Postgres):
    """A hot-standby streaming replica of `primary`: the first start() takes
    a pg_basebackup -R (-X stream) from the running primary into
    <workdir>/<name>-data; later starts reuse it (same port, same dir)."""

    def __init__(self, workdir, primary, port=None, name="pg-replica", settings=None):
        super().__init__(workdir, port=port, name=name, settings=settings or primary.settings)
        self.primary = primary

    def initialise(self):
        _own_dir_for_pg(self.data_dir)
        self._run_tool(_as_pg_user([_pg_tool("pg_basebackup"), "-h", LOOPBACK,
                                    "-p", str(self.primary.port), "-U", PG_SUPERUSER,
                                    "-D", self.data_dir, "-R", "-X", "stream", "-c", "fast",
                                    "--no-sync"]), "pg_basebackup")

    def after_first_start(self):
        self.wait_streaming()

    def wait_streaming(self, timeout=START_TIMEOUT_S):
        """Wait until the replica is in recovery and its WAL receiver streams."""
        wait_until(lambda: self.in_recovery() and self.psql(
            "SELECT status FROM pg_stat_wal_receiver", db="postgres") == "streaming",
            timeout, "%s to stream from %s" % (self.name, self.primary.name),
            retry_on=RETRYABLE + (PsqlError,))

    def wait_caught_up(self, timeout=START_TIMEOUT_S):
        """Wait until the replica has replayed the primary's current WAL position."""
        target = self.primary.psql("SELECT pg_current_wal_lsn()", db="postgres")
        wait_until(lambda: self.psql(
            "SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn" % target, db="postgres") == "t",
            timeout, "%s to replay up to %s" % (self.name, target),
            retry_on=RETRYABLE + (PsqlError,))


class Query(ZmqService):
    """shoal-query talking to the Postgres primary (and replica, if any)
    and Redis."""

    binary = "shoal-query"
    publishes = True

    def __init__(self, name, workdir, primary, replica=None, redis_port=None, port=None,
                 env=None):
        super().__init__(name, workdir, redis_port=redis_port, port=port, env=env)
        self.primary = primary
        self.replica = replica

    def _settings(self):
        return {"SHOAL_PG_PRIMARY": self.primary.conninfo(),
                "SHOAL_PG_REPLICA": self.replica.conninfo() if self.replica else ""}

    def migrate(self, timeout=60):
        """Run `shoal-query migrate` with this instance's settings; return
        (exit status, output). The output is also appended to the log."""
        cmd = self.argv() + ["migrate"]
        res = subprocess.run(cmd, env=self.environment(), cwd=self.workdir,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=timeout)
        with open(self.log_path, "ab") as log:
            log.write(("\n=== %s: %s (status %d)\n" % (self.name, " ".join(cmd),
                                                        res.returncode)).encode())
            log.write(res.stdout)
        return res.returncode, res.stdout.decode("utf-8", "replace")

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class Upload(ZmqService):
    """shoal-upload on the stack's S3 test server (its settings() become the
    SHOAL_S3_* settings), with parts of `part_bytes` (default 5 MiB, the
    smallest S3 allows, so that multipart uploads start at small sizes),
    the query service at `query_endpoints` (the sweeper asks it which
    objects have rows) and, when given, the sweeper's interval and age.
    Anything in `env` wins. Change `extra_env` and start() again to
    restart it with other settings on the same port."""

    binary = "shoal-upload"
    PART_BYTES = 5 * MIB

    def __init__(self, name, workdir, s3, query_endpoints=(), port=None, env=None,
                 part_bytes=PART_BYTES, sweep_interval_ms=None, sweep_age_ms=None):
        super().__init__(name, workdir, port=port, env=env)
        self.s3 = s3
        self.query_endpoints = list(query_endpoints)
        self.part_bytes = part_bytes
        self.sweep_interval_ms = sweep_interval_ms
        self.sweep_age_ms = sweep_age_ms

    def _settings(self):
        env = dict(self.s3.settings())
        env["SHOAL_UPLOAD_PART_BYTES"] = str(self.part_bytes)
        if self.query_endpoints:
            env["SHOAL_QUERY_ENDPOINTS"] = ",".join(self.query_endpoints)
        if self.sweep_interval_ms is not None:
            env["SHOAL_UPLOAD_SWEEP_INTERVAL_MS"] = str(self.sweep_interval_ms)
        if self.sweep_age_ms is not None:
            env["SHOAL_UPLOAD_SWEEP_AGE_MS"] = str(self.sweep_age_ms)
        return env

    def sweep(self, env=None, timeout=60):
        """Run one sweeper pass (`shoal-upload sweep`) with this instance's
        settings plus `env`; return (exit status, output). The output is
        also appended to the log."""
        cmd = self.argv() + ["sweep"]
        environ = self.environment()
        environ.update(env or {})
        res = subprocess.run(cmd, env=environ, cwd=self.workdir, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        with open(self.log_path, "ab") as log:
            log.write(("\n=== %s: %s (status %d)\n" % (self.name, " ".join(cmd),
                                                        res.returncode)).encode())
            log.write(res.stdout)
        return res.returncode, res.stdout.decode("utf-8", "replace")


class Edge(Process):
    """shoal-edge on http://127.0.0.1:<port> (kept across restarts)."""

    def __init__(self, name, session_endpoints, workdir, port=None, static_dir=None, env=None,
                 query_endpoints=None, upload_endpoints=None, event_endpoints=None,
                 secret=None):
        super().__init__(name, workdir)
        self.event_endpoints = list(event_endpoints or [])
        self.secret = secret
        self.session_endpoints = list(session_endpoints)
        self.query_endpoints = list(query_endpoints or [])
        self.upload_endpoints = list(upload_endpoints or [])
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
        if self.query_endpoints:
            env["SHOAL_QUERY_ENDPOINTS"] = ",".join(self.query_endpoints)
        if self.upload_endpoints:
            env["SHOAL_UPLOAD_ENDPOINTS"] = ",".join(self.upload_endpoints)
        if self.event_endpoints:
            env["SHOAL_EVENT_ENDPOINTS"] = ",".join(self.event_endpoints)
        if self.secret:
            env["SHOAL_EDGE_SECRET"] = self.secret
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
    a fresh temp dir; optionally `healths` shoal-health registry instances
    (every process then gets SHOAL_HEALTH_ENDPOINTS), a Postgres primary
    (`postgres=True`) with a streaming hot-standby replica (`replica=True`)
    and `queries` shoal-query instances (started at the same moment; edges
    get their endpoints in SHOAL_QUERY_ENDPOINTS), the S3 test server
    (`s3=True`: `stack.s3`, an S3Server; its settings for a client are
    `stack.s3.settings()`) and `uploads` shoal-upload instances on it
    (`stack.uploads`, Upload; implies s3=True; they get the query
    endpoints, the edges get theirs in SHOAL_UPLOAD_ENDPOINTS; `upload_env`
    is added to their settings). Use as a context manager;
    close() stops every process by PID (also when the body raised, in which
    case it prints every log tail first). The temp dir is removed by
    cleanup() (called by __exit__), unless SHOAL_TEST_KEEP=1."""

    def __init__(self, sessions=2, edges=2, static_dir=None, session_env=None,
                 edge_env=None, wait_ready=True, queries=0, postgres=False, replica=True,
                 query_env=None, healths=0, pg_settings=None, s3=False, uploads=0,
                 upload_env=None):
        self.n_sessions = sessions
        self.n_edges = edges
        self.n_queries = queries
        self.n_healths = healths
        self.n_uploads = uploads
        self.want_postgres = postgres or queries > 0
        self.want_replica = replica
        self.want_s3 = s3 or uploads > 0
        self.static_dir = static_dir
        self.session_env = dict(session_env or {})
        self.edge_env = dict(edge_env or {})
        self.query_env = dict(query_env or {})
        self.upload_env = dict(upload_env or {})
        self.pg_settings = dict(pg_settings or {})
        self.want_ready = wait_ready
        self.tmp = None
        self.redis = None
        self.pg_primary = None
        self.pg_replica = None
        self.s3 = None
        self.sessions = []
        self.edges = []
        self.queries = []
        self.uploads = []
        self.healths = []
        # every edge signs and checks the /ws cookie with the same key
        self.edge_secret = os.urandom(32).hex()

    def _binaries(self):
        exes = ["shoal-session", "shoal-edge"]
        if self.n_queries:
            exes.append("shoal-query")
        if self.n_healths:
            exes.append("shoal-health")
        if self.n_uploads:
            exes.append("shoal-upload")
        return exes

    def _registry_env(self, env):
        env = dict(env)
        if self.healths:
            env.setdefault("SHOAL_HEALTH_ENDPOINTS", self.health_endpoints)
        return env

    @property
    def health_endpoints(self):
        return ",".join(h.endpoint for h in self.healths)

    def start(self):
        for exe in self._binaries():
            path = os.path.join(BIN_DIR, exe)
            if not os.access(path, os.X_OK):
                raise AssertionError("binary not found: %s (build first, or set SHOAL_BIN_DIR)"
                                     % path)
        if self.want_postgres and not os.access(_pg_tool("postgres"), os.X_OK):
            raise AssertionError("postgres not found (install postgresql, or set "
                                 "SHOAL_PG_BIN_DIR)")
        if self.want_s3:
            check_s3_server()
        self.tmp = tempfile.mkdtemp(prefix="shoal-it-")
        if self.want_postgres:
            os.chmod(self.tmp, 0o711)  # the postgres OS user must reach its data dir
        try:
            for i in range(self.n_healths):
                self.healths.append(Health("health-%d" % (i + 1), self.tmp))
            for h in self.healths:
                h.extra_env.setdefault("SHOAL_HEALTH_ENDPOINTS", self.health_endpoints)
                h.start()
            self.redis = Redis(self.tmp)
            self.redis.start()
            if self.want_postgres:
                self.pg_primary = Postgres(self.tmp, settings=self.pg_settings)
                self.pg_primary.start()
                if self.want_replica:
                    self.pg_replica = PostgresReplica(self.tmp, self.pg_primary)
                    self.pg_replica.start()
            if self.want_s3:
                self.s3 = S3Server(self.tmp)
                self.s3.start()
            for i in range(self.n_queries):
                self.add_query(start=False)
            self.start_queries_together(self.queries)
            for i in range(self.n_uploads):
                self.add_upload()
            for i in range(self.n_sessions):
                s = Session("session-%d" % (i + 1), self.redis.port, self.tmp,
                            env=self._registry_env(self.session_env))
                self.sessions.append(s)
                s.start()
            for i in range(self.n_edges):
                self.add_edge(wait_ready=False)
            if self.want_ready and self.sessions:
                for e in self.edges:
                    e.wait_ready()
        except BaseException:
            print(self.log_tails())
            self.close()
            self.cleanup()
            raise
        return self

    def add_query(self, env=None, name=None, start=True):
        """Create (and by default start) one more shoal-query instance; it is
        stopped with the stack. Edges started later get its endpoint."""
        assert self.pg_primary, "add_query needs a stack with postgres=True"
        q_env = dict(self.query_env)
        q_env.update(env or {})
        q = Query(name or "query-%d" % (len(self.queries) + 1), self.tmp, self.pg_primary,
                  self.pg_replica, self.redis.port, env=self._registry_env(q_env))
        self.queries.append(q)
        if start:
            q.start()
        return q

    def add_upload(self, env=None, name=None, start=True, **kw):
        """Create (and by default start) one more shoal-upload instance on
        the stack's S3 server with the stack's upload_env plus `env`; `kw`
        goes to Upload (part_bytes, sweep_interval_ms, sweep_age_ms, ...).
        It is stopped with the stack. Edges started later get its endpoint."""
        assert self.s3, "add_upload needs a stack with s3=True"
        u_env = dict(self.upload_env)
        u_env.update(env or {})
        u = Upload(name or "upload-%d" % (len(self.uploads) + 1), self.tmp, self.s3,
                   query_endpoints=[q.endpoint for q in self.queries],
                   env=self._registry_env(u_env), **kw)
        self.uploads.append(u)
        if start:
            u.start()
        return u

    @staticmethod
    def start_queries_together(queries, timeout=START_TIMEOUT_S):
        """Launch every instance first, then wait for each (so they race on
        the migrations as instances started together do)."""
        for q in queries:
            q.launch()
        for q in queries:
            try:
                q.wait_started(timeout)
            except BaseException:
                q.kill()
                raise

    def add_edge(self, env=None, name=None, query_endpoints=None, wait_ready=None,
                 upload_endpoints=None):
        """Create and start one more edge with the stack's settings plus
        `env`; `query_endpoints` and `upload_endpoints` default to every
        query and upload instance. It is stopped with the stack."""
        e_env = dict(self.edge_env)
        e_env.update(env or {})
        if query_endpoints is None:
            query_endpoints = [q.endpoint for q in self.queries]
        if upload_endpoints is None:
            upload_endpoints = [u.endpoint for u in self.uploads]
        e = Edge(name or "edge-%s" % chr(ord("a") + len(self.edges)),
                 [s.endpoint for s in self.sessions], self.tmp, static_dir=self.static_dir,
                 env=self._registry_env(e_env), query_endpoints=query_endpoints,
                 upload_endpoints=upload_endpoints, secret=self.edge_secret,
                 event_endpoints=[p.events_endpoint for p in self.sessions + self.queries])
        self.edges.append(e)
        e.start()
        if wait_ready is None:
            wait_ready = self.want_ready and bool(self.sessions)
        if wait_ready:
            e.wait_ready()
        return e

    @property
    def edge(self):
        return self.edges[0]

    def psql(self, sql, replica=False, **kw):
        """Run SQL on the primary (or the replica) as the superuser, in the
        `shoal` database; returns psql's unaligned output (see Postgres.psql)."""
        server = self.pg_replica if replica else self.pg_primary
        assert server, "this stack has no %s" % ("replica" if replica else "Postgres")
        return server.psql(sql, **kw)

    def processes(self):
        """Every process, in teardown order (callers first, stores last)."""
        procs = list(self.edges) + list(self.uploads) + list(self.queries)
        procs += list(self.sessions)
        procs += [p for p in (self.s3, self.redis, self.pg_replica, self.pg_primary) if p]
        return procs + list(self.healths)

    def close(self):
        """Stop edges, upload, query and session instances, then S3, Redis,
        Postgres and the registry, each by PID."""
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
