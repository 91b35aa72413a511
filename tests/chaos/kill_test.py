#!/usr/bin/env python3
"""tests/chaos/kill_test.py -- faults under load, invariants checked.

Starts its own local stack with deploy/local/up (run dir .run/chaos, HAProxy
on 9180, edges 9181+, sessions 9201+, health 9301/9311, Redis 9479, three
session instances, two edges, the supervisor on), or attaches to a running one
(--url and --run-dir), and runs scenarios while K client threads hammer
GET /api/session through HAProxy, each on its own session and its own
keep-alive connection:

  kill    every 5 s, SIGKILL the next session instance (round robin, PID read
          from its pid file at that moment); the supervisor restarts it.
  pause   SIGSTOP one session instance for 10 s, then SIGCONT.
  health  stop the supervisor, SIGKILL both health instances, keep them dead
          for 10 s, then rerun deploy/local/up, which starts them (and the
          supervisor) again; the cluster view must recover.

Every request is recorded (start, end, status, views). After each scenario:
no acknowledged view value repeats, the final counter of every session holds
every acknowledged increment and no more than acknowledged + failed ones,
failures are at most 0.5 % and all clean 503s, no request outlived the server
deadline + 1 s, plus the scenario's own checks (see README.md). A readable
report per scenario goes to stdout, a JSON summary to
$SHOAL_ARTIFACTS/chaos-summary.json. The last line is "N passed, N failed"
(scenarios); exit status 0 only when every invariant held.

Standard library only. usage: kill_test.py --help
"""

import argparse
import collections
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
UP = os.path.join(REPO, "deploy", "local", "up")
DOWN = os.path.join(REPO, "deploy", "local", "down")

# The stack this runner starts (own run dir and ports, all below 32768).
OWN_RUN_DIR = os.path.join(REPO, ".run", "chaos")
OWN_ENV = {
    "SHOAL_RUN_DIR": OWN_RUN_DIR,
    "SHOAL_PORT": "9180",
    "SHOAL_EDGE_PORT": "9181",
    "SHOAL_SESSION_PORT": "9201",
    "SHOAL_HEALTH_PORT": "9301",
    "SHOAL_REDIS_PORT": "9479",
    "SHOAL_UPLOAD_PORT": "9251",
    "SHOAL_SESSIONS": "3",
    "SHOAL_EDGES": "2",
    "SHOAL_HEALTHS": "2",
    "SHOAL_STATIC_DISCOVERY": "0",
}
# Variables of the stack scripts we never pass through from the caller's shell.
STACK_VARS = ("SHOAL_RUN_DIR", "SHOAL_PORT", "SHOAL_EDGES", "SHOAL_EDGE_PORT", "SHOAL_SESSIONS",
              "SHOAL_SESSION_PORT", "SHOAL_HEALTHS", "SHOAL_HEALTH_PORT", "SHOAL_HEARTBEAT_MS",
              "SHOAL_STATIC_DISCOVERY", "SHOAL_SUPERVISE", "SHOAL_SUPERVISE_INTERVAL_MS",
              "SHOAL_REDIS_PORT", "SHOAL_UPLOAD_PORT")

PROFILES = {
    # kill_s: how long instances are killed (one every kill_every_s);
    # pause_s: how long one instance stays stopped; health_s: health down.
    "short": {"kill_s": 60.0, "pause_s": 10.0, "health_s": 10.0},
    "long": {"kill_s": 60.0, "pause_s": 20.0, "health_s": 20.0},
}
SCENARIOS = ("kill", "pause", "health", "restart")
KILL_EVERY_S = 5.0
WARMUP_S = 1.0           # load before the first fault
TAIL_S = 3.0             # load after the last fault
CLIENT_TIMEOUT_S = 5.0   # larger than the server deadline, so overruns show
SLACK_S = 1.0            # a request may take at most deadline + this
MAX_FAIL_RATIO = 0.005   # failed / all requests
KILL_RECOVERY_GOAL_S = 1.5
PAUSE_DEAD_GOAL_S = 2.0  # the paused instance shows "dead" in /api/cluster
RECOVER_LIMIT_S = 10.0   # an instance / the cluster view is back within
STEADY_TIMEOUT_S = 20.0  # the stack is whole again before a scenario
POLL_S = 0.05
VERIFY_TIMEOUT_S = 15.0  # the final GET of a session is repeated until a 200 this long
END_WINDOW_S = 2.0       # the last seconds of load: every edge/instance pair answers
LATE_METRICS = ("shoal_calls_late_replies_total", "shoal_calls_retries_total",
                "shoal_calls_budget_exhausted_total", "shoal_calls_timeouts_total",
                "shoal_calls_no_instance_total", "shoal_calls_failed_fast_total")


def log(msg):
    print("chaos: %s" % msg, flush=True)


def now_wall():
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


class Interrupted(Exception):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so the stack is stopped."""


def _on_signal(signum, _frame):
    raise Interrupted("signal %d" % signum)


# ------------------------------------------------------------------ HTTP helpers

def http_get(port, path, timeout=2.0, host="127.0.0.1"):
    """One GET on a fresh connection: (status, headers, body bytes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def wait_for(fn, timeout, interval=POLL_S):
    """Poll fn() until it returns a truthy value or timeout passes; return
    (value, seconds waited) -- value is the last (falsy) one on timeout.
    Connection errors count as "not yet"."""
    t0 = time.monotonic()
    value = None
    while True:
        try:
            value = fn()
        except (OSError, http.client.HTTPException, ValueError):
            value = None
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return value, time.monotonic() - t0
        time.sleep(interval)


def parse_metrics(text, names):
    """Sum of the target="session" samples (or unlabelled) of each name."""
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name in out and ("target=" not in key or 'target="session"' in key):
            try:
                out[name] += float(value)
            except ValueError:
                pass
    return out


# ------------------------------------------------------------------ the stack

class Stack:
    """The stack under test: its URL, run dir (pid files), edge ports, and
    whether this runner started it (and so must stop it)."""

    def __init__(self, url, run_dir, own, env):
        u = urllib.parse.urlparse(url)
        self.url = url
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.run_dir = run_dir
        self.own = own
        self.env = env
        self.started = False

    # --- start / stop (own stack only)
    def up(self, quiet=False, supervise=True):
        """Run deploy/local/up; returns (rc, output). supervise=False keeps
        a stack that ran without the supervisor that way."""
        env = dict(self.env)
        if not supervise:
            env["SHOAL_SUPERVISE"] = "0"
        p = subprocess.run([UP, "--no-install", "--no-build"], env=env, cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not quiet or p.returncode != 0:
            for line in p.stdout.splitlines():
                print("  | " + line, flush=True)
        return p.returncode, p.stdout

    def start(self):
        # a leftover of an interrupted run in our own run dir is ours: clear it
        subprocess.run([DOWN, "--purge"], env=self.env, cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.started = True
        rc, _ = self.up()
        return rc == 0

    def stop(self):
        if not (self.own and self.started):
            return
        log("stopping the stack (deploy/local/down --purge)")
        subprocess.run([DOWN, "--purge"], env=self.env, cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT)
        self.started = False

    # --- pieces
    def pieces(self, prefix):
        names = []
        try:
            for f in os.listdir(os.path.join(self.run_dir, "pids")):
                if f.startswith(prefix + "-") and f.endswith(".pid"):
                    name = f[:-4]
                    if name[len(prefix) + 1:].isdigit():
                        names.append(name)
        except OSError:
            pass
        return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))

    def pid(self, piece):
        """The live PID of a piece (pid file, checked against the recorded
        process start time so a reused PID is never taken), or None."""
        base = os.path.join(self.run_dir, "pids", piece)
        try:
            with open(base + ".pid") as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            state, start = fields[0], fields[19]
        except (OSError, IndexError):
            return None
        if state in ("Z", "X"):
            return None
        try:
            with open(base + ".start") as f:
                recorded = f.read().strip()
            if recorded and recorded != start:
                return None
        except OSError:
            pass
        return pid

    def signal(self, piece, sig):
        """Send sig to the piece's live PID; returns the PID or None."""
        pid = self.pid(piece)
        if pid is None:
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        return pid

    def edge_ports(self):
        ports = []
        for name in self.pieces("edge"):
            try:
                with open(os.path.join(self.run_dir, "pids", name + ".addr")) as f:
                    ports.append(urllib.parse.urlparse(f.read().split(",")[0].strip()).port)
            except (OSError, ValueError):
                pass
        return [p for p in ports if p]

    # --- views of the stack
    def cluster(self, port=None, full=False):
        """/api/cluster from one edge directly (not through HAProxy):
        {instance: state} (full: the whole answer) or None."""
        for p in ([port] if port else self.edge_ports()):
            try:
                status, _, body = http_get(p, "/api/cluster", timeout=1.0)
            except (OSError, http.client.HTTPException):
                continue
            if status == 200:
                doc = json.loads(body)
                return doc if full else {m["instance"]: m["state"] for m in doc["instances"]}
        return None

    def metrics(self):
        """{edge port: {metric: value}} of every edge, read directly."""
        out = {}
        for p in self.edge_ports():
            try:
                status, _, body = http_get(p, "/metrics", timeout=2.0)
                if status == 200:
                    out[p] = parse_metrics(body.decode("utf-8", "replace"), LATE_METRICS)
            except (OSError, http.client.HTTPException):
                out[p] = None
        return out

    def whole(self):
        return not self.why_not_whole()

    def diagnose(self, pieces):
        """Lines of evidence about session instances some edge does not hear
        from: their PIDs and `ss -tnpo` of every TCP connection on their
        ports (taken right after the load, while the stack still runs)."""
        lines = []
        for piece in sorted(pieces):
            try:
                with open(os.path.join(self.run_dir, "pids", piece + ".addr")) as f:
                    port = int(f.read().split(",")[0].rsplit(":", 1)[1])
            except (OSError, ValueError, IndexError):
                continue
            lines.append("%s PID %s port %d; ss -tnpo:" % (piece, self.pid(piece), port))
            try:
                out = subprocess.run(["ss", "-tnpo", "state", "all", "( sport = :%d or dport = "
                                      ":%d )" % (port, port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, timeout=5).stdout
            except (OSError, subprocess.SubprocessError) as e:
                out = "ss failed: %s" % e
            lines.extend(out.rstrip().splitlines())
        return lines

    def why_not_whole(self):
        """"" when every recorded session, edge and health instance is alive
        and "up" in the cluster view of every edge, every edge reaches every
        health instance and is ready; otherwise what is missing."""
        want = self.pieces("session") + self.pieces("edge")
        healths = self.pieces("health")
        dead = [n for n in want + healths if self.pid(n) is None]
        if dead:
            return "not running: " + " ".join(dead)
        for p in self.edge_ports():
            try:
                status, _, _ = http_get(p, "/health/ready", timeout=1.0)
                if status != 200:
                    return "edge :%d /health/ready %d" % (p, status)
                doc = self.cluster(p, full=True)
            except (OSError, http.client.HTTPException, ValueError) as e:
                return "edge :%d: %s" % (p, e)
            if not doc:
                return "edge :%d: no /api/cluster answer" % p
            view = {m["instance"]: m["state"] for m in doc["instances"]}
            # the registry lists the health instance that answered; the
            # edge says which health endpoints it reaches
            bad = ["%s=%s" % (n, view.get(n, "absent")) for n in want if view.get(n) != "up"]
            if bad:
                return "edge :%d via %s: %s" % (p, doc.get("source"), " ".join(bad))
            unreached = [h.get("address") for h in doc.get("health", []) if not h.get("reachable")]
            if len(doc.get("health", [])) < len(healths) or unreached:
                return "edge :%d does not reach health %s" % (p, " ".join(map(str, unreached)))
        return ""


# ------------------------------------------------------------------ load

Rec = collections.namedtuple("Rec", "t0 t1 status views kind detail cookie served connect lport")
# kind: ok | 503 | 503-unclean | 502 | 504 | 500 | http-NNN | dropped | timeout
# served: "edge/session_instance" of a 200; connect: seconds spent opening a
# new connection for this request (None on a reused one); lport: the
# client's local port (to find the request in HAProxy's log)


class Client(threading.Thread):
    """One client: its own session, its own keep-alive connection, requests
    back to back until stop is set."""

    def __init__(self, idx, host, port, stop):
        super().__init__(name="client-%d" % idx, daemon=True)
        self.host, self.port, self.stop = host, port, stop
        self.cookie = None
        self.records = []
        self.replaced = 0  # 200s that handed out a different session id
        self.lport = 0

    def request(self, conn):
        """One GET /api/session -> (Rec, connection must be reopened);
        raises nothing."""
        headers = {"Cookie": self.cookie} if self.cookie else {}
        t0 = time.monotonic()
        had = self.cookie is not None
        connect = None
        try:
            if conn.sock is None:
                conn.connect()
                connect = time.monotonic() - t0
                self.lport = conn.sock.getsockname()[1]
            conn.request("GET", "/api/session", headers=headers)
            r = conn.getresponse()
            body = r.read()
        except socket.timeout:
            return Rec(t0, time.monotonic(), 0, None, "timeout", "no answer in %.0f s"
                       % CLIENT_TIMEOUT_S, had, "", connect, self.lport), True
        except (OSError, http.client.HTTPException) as e:
            return Rec(t0, time.monotonic(), 0, None, "dropped", "%s: %s"
                       % (type(e).__name__, e), had, "", connect, self.lport), True
        t1 = time.monotonic()
        status = r.status
        if status == 200:
            try:
                j = json.loads(body)
                views = int(j["views"])
                served = "%s/%s" % (j.get("edge"), j.get("session_instance"))
            except (ValueError, KeyError, TypeError):
                return Rec(t0, t1, status, None, "http-200-bad", body[:120].decode(
                    "utf-8", "replace"), had, "", connect, self.lport), False
            sc = r.getheader("Set-Cookie")
            if sc:
                sid = sc.split(";", 1)[0].strip()
                if self.cookie is None:
                    self.cookie = sid
                elif sid != self.cookie:
                    self.replaced += 1
            return Rec(t0, t1, 200, views, "ok", "", had, served, connect, self.lport), r.will_close
        detail = ""
        kind = "http-%d" % status
        if status in (500, 502, 504):
            kind = str(status)
        try:
            j = json.loads(body)
            e = j.get("error")
            e = e if isinstance(e, dict) else {}
            detail = "%s: %s" % (e.get("code"), e.get("message"))
            clean = isinstance(e.get("code"), str) and isinstance(e.get("message"), str)
        except (ValueError, AttributeError):
            detail = body[:120].decode("utf-8", "replace").strip().replace("\n", " ")
            clean = False
        if status == 503:
            kind = "503" if clean and r.getheader("Retry-After") else "503-unclean"
        return Rec(t0, t1, status, None, kind, detail, had, "", connect, self.lport), r.will_close

    def run(self):
        conn = None
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=CLIENT_TIMEOUT_S)
            rec, reset = self.request(conn)
            self.records.append(rec)
            if reset:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def verify(self, timeout=None):
        """After the load: one more GET (fresh connection, repeated until a
        200). Returns (final views or None, failed verification attempts
        that carried the cookie)."""
        failed = 0
        deadline = time.monotonic() + (timeout or VERIFY_TIMEOUT_S)
        while time.monotonic() < deadline:
            if self.cookie is None:
                return None, 0
            conn = http.client.HTTPConnection(self.host, self.port, timeout=CLIENT_TIMEOUT_S)
            try:
                rec, _ = self.request(conn)
            finally:
                conn.close()
            if rec.kind == "ok":
                return rec.views, failed
            failed += 1
            time.sleep(0.1)
        return None, failed


class Load:
    def __init__(self, stack, clients):
        self.stack, self.n = stack, clients
        self.stop_ev = threading.Event()
        self.clients = []
        self.t_start = self.t_stop = None

    def start(self):
        self.clients = [Client(i, self.stack.host, self.stack.port, self.stop_ev)
                        for i in range(self.n)]
        self.t_start = time.monotonic()
        for c in self.clients:
            c.start()

    def stop(self):
        self.stop_ev.set()
        for c in self.clients:
            c.join(CLIENT_TIMEOUT_S + 2)
        self.t_stop = time.monotonic()


# ------------------------------------------------------------------ analysis

def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


class Result:
    def __init__(self, name):
        self.name = name
        self.checks = []   # (name, ok, detail)
        self.info = collections.OrderedDict()
        self.lines = []    # extra report lines

    def check(self, name, ok, detail=""):
        self.checks.append((name, bool(ok), detail))

    @property
    def passed(self):
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)


HAPROXY_LINE = re.compile(r"^\S+:(\d+) \[(\d+/\w+/\d+:\d+:\d+:\d+)\.(\d+)\] \S+ (\S+) "
                          r"(-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/(-?\d+) (\d+) ")


def haproxy_requests(path, ports, w_from, w_to):
    """HAProxy's httplog lines of these client ports received between the
    wall times w_from and w_to: {client port: [(received, epoch s), Ta ms,
    status, server)]}. HAProxy logs in local time with ms precision; Ta runs
    from the request's first byte to the response's last byte. The whole
    file is read: each HAProxy start writes it from offset 0 again (see
    README.md), so this run's lines are not necessarily at its end."""
    out = collections.defaultdict(list)
    stamps = {}
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        for raw in f:
            m = HAPROXY_LINE.match(raw.decode("utf-8", "replace"))
            if not m or int(m.group(1)) not in ports:
                continue
            sec = stamps.get(m.group(2))
            if sec is None:
                try:
                    sec = stamps[m.group(2)] = time.mktime(
                        time.strptime(m.group(2), "%d/%b/%Y:%H:%M:%S"))
                except ValueError:
                    continue
            tr = sec + int(m.group(3)) / 1000.0
            if w_from <= tr <= w_to:
                out[int(m.group(1))].append((tr, int(m.group(9)), m.group(10), m.group(4)))
    return out


def attribute_slow(slow, ctx):
    """For each request slower than the limit at the client, HAProxy's own
    time for it (its log line: same client port, received between the
    client's send and its receipt of the answer; the longest such line).
    Returns [(rec, Ta ms or None, server)]."""
    log_lines = haproxy_requests(ctx["haproxy_log"], {r.lport for r in slow},
                                 min(r.t0 for r in slow) + ctx["wall_offset"] - 1,
                                 max(r.t1 for r in slow) + ctx["wall_offset"] + 1) \
        if ctx.get("haproxy_log") and slow else None
    out = []
    for r in slow:
        best = None
        if log_lines is not None:
            w0, w1 = r.t0 + ctx["wall_offset"], r.t1 + ctx["wall_offset"]
            for tr, ta, _st, srv in log_lines.get(r.lport, ()):
                if w0 - 0.05 <= tr <= w1 + 0.05 and (best is None or ta > best[0]):
                    best = (ta, srv)
        out.append((r, best[0] if best else None, best[1] if best else ""))
    return out


def analyse(res, load, deadline_s, t_ref, ctx):
    """The invariants every scenario shares. t_ref: monotonic time 0 of the
    scenario (for relative times in the report); ctx: where HAProxy's log is
    and the wall-clock offset, to attribute slow requests."""
    recs = [r for c in load.clients for r in c.records]
    dur = max(1e-9, load.t_stop - load.t_start)
    fails = [r for r in recs if r.kind != "ok"]
    kinds = collections.Counter(r.kind for r in fails)
    lat = sorted(r.t1 - r.t0 for r in recs)
    res.info["requests"] = len(recs)
    res.info["duration_s"] = round(dur, 2)
    res.info["req_per_s"] = round(len(recs) / dur, 1)
    res.info["ok"] = len(recs) - len(fails)
    res.info["failed"] = len(fails)
    res.info["failures_by_kind"] = dict(kinds)
    res.info["failure_messages"] = dict(collections.Counter(
        "%s %s" % (r.kind, r.detail) for r in fails).most_common(10))
    res.info["latency_ms"] = {"p50": round(pct(lat, 50) * 1000, 1),
                              "p99": round(pct(lat, 99) * 1000, 1),
                              "max": round((lat[-1] if lat else 0) * 1000, 1)}
    res.info["served_by"] = dict(sorted(collections.Counter(
        r.served for r in recs if r.kind == "ok").items()))
    # answers that took about one attempt timeout (1 s) or more: a first
    # attempt went unanswered and was retried on another instance
    res.info["retried_looking_by_served"] = dict(sorted(collections.Counter(
        r.served for r in recs if r.kind == "ok" and r.t1 - r.t0 >= 0.9).items()))
    slowest = sorted(recs, key=lambda r: r.t0 - r.t1)[:5]
    res.info["slowest"] = [{"t_s": round(r.t0 - t_ref, 3), "latency_ms": round(
        (r.t1 - r.t0) * 1000, 1), "kind": r.kind, "served": r.served, "connect_ms": None
        if r.connect is None else round(r.connect * 1000, 1)} for r in slowest]
    res.info["failures"] = [{"t_s": round(r.t0 - t_ref, 3), "end_s": round(r.t1 - t_ref, 3),
                             "kind": r.kind, "detail": r.detail} for r in fails[:200]]

    # counters, per client session
    dup_sessions, nonmono, lost, twice, unverified, replaced = [], [], [], [], [], 0
    acked_total = 0
    # the final GETs, all clients at once (a dead stack costs 15 s, not 16 x 15 s)
    finals = {}
    threads = [threading.Thread(target=lambda c=c: finals.__setitem__(c.name, c.verify()),
                                daemon=True) for c in load.clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(VERIFY_TIMEOUT_S + CLIENT_TIMEOUT_S + 5)
    for c in load.clients:
        ok_views = [r.views for r in c.records if r.kind == "ok"]
        acked_total += len(ok_views)
        replaced += c.replaced
        if len(set(ok_views)) != len(ok_views):
            dup = [v for v, n in collections.Counter(ok_views).items() if n > 1]
            dup_sessions.append("%s: views %s acknowledged twice" % (c.name, dup[:5]))
        if any(b <= a for a, b in zip(ok_views, ok_views[1:])):
            nonmono.append(c.name)
        if c.cookie is None:
            if ok_views:
                unverified.append("%s: no session cookie" % c.name)
            continue
        indeterminate = sum(1 for r in c.records if r.kind != "ok" and r.cookie)
        final, vfail = finals.get(c.name, (None, 0))
        if final is None:
            unverified.append("%s: final GET failed %d times" % (c.name, vfail))
            continue
        counter = final - 1  # the verifying GET counted itself
        indeterminate += vfail
        acked = len(ok_views)
        if counter < max(ok_views or [0]) or counter < acked:
            lost.append("%s: counter %d < acknowledged %d (max views %d)"
                        % (c.name, counter, acked, max(ok_views or [0])))
        if counter > acked + indeterminate:
            twice.append("%s: counter %d > acknowledged %d + failed %d"
                         % (c.name, counter, acked, indeterminate))
    res.info["acknowledged_increments"] = acked_total
    res.check("no view acknowledged twice", not dup_sessions and not nonmono,
              "; ".join(dup_sessions + ["%s: views not rising" % n for n in nonmono][:5])
              or "%d sessions, every acknowledged value distinct and rising" % len(load.clients))
    res.check("final counters verified", not unverified, "; ".join(unverified[:5]))
    res.check("0 lost increments", not lost and not replaced,
              "; ".join(lost[:5]) + ("; %d replies handed out a new session" % replaced
                                     if replaced else ""))
    res.check("no increment applied twice", not twice, "; ".join(twice[:5]))
    ratio = len(fails) / max(1, len(recs))
    res.check("failures <= %.1f %%" % (MAX_FAIL_RATIO * 100), ratio <= MAX_FAIL_RATIO,
              "%d of %d (%.3f %%)" % (len(fails), len(recs), ratio * 100))
    unclean = {k: n for k, n in kinds.items() if k != "503"}
    res.check("every failure is a clean 503", not unclean,
              ", ".join("%s x%d" % kv for kv in sorted(unclean.items())))
    limit = deadline_s + SLACK_S
    slow = [r for r in recs if r.t1 - r.t0 > limit]
    # A request slow at the client but fast in HAProxy's log waited in the
    # client (a starved Python thread on a busy host), not in the stack.
    attributed = attribute_slow(slow, ctx) if slow else []
    server_slow = [(r, ta) for r, ta, _ in attributed if ta is None or ta > limit * 1000]
    client_slow = [(r, ta) for r, ta, _ in attributed if ta is not None and ta <= limit * 1000]
    res.info["slow_requests"] = [{"t_s": round(r.t0 - t_ref, 3), "client_ms": round(
        (r.t1 - r.t0) * 1000, 1), "haproxy_ta_ms": ta, "server": srv, "kind": r.kind}
        for r, ta, srv in attributed[:50]]
    if client_slow:
        res.lines.append("  %d request(s) over %.1f s at the client but within %.0f ms in "
                         "HAProxy's log (client-side delay, host load %.1f): %s" % (
                             len(client_slow), limit, max(ta for _, ta in client_slow),
                             os.getloadavg()[0], ", ".join(
                                 "+%.2f s %.0f ms (HAProxy %d ms)" % (
                                     r.t0 - t_ref, (r.t1 - r.t0) * 1000, ta)
                                 for r, ta in client_slow[:5])))
    res.check("no request over deadline + %.0f s (%.1f s)" % (SLACK_S, limit),
              not server_slow, "%d slower in the stack (HAProxy Ta or not in its log), "
              "max %.2f s at the client" % (len(server_slow), max(
                  r.t1 - r.t0 for r, _ in server_slow)) if server_slow else
              "max %.3f s at the client%s" % (lat[-1] if lat else 0, "; %d slow only at the "
                                              "client" % len(client_slow) if client_slow else ""))
    # every edge gets answers from every session instance at the end: an
    # instance the registry calls "up" that one edge never hears from again
    # costs that edge an attempt timeout (1 s) per request it sends there
    edges = ctx.get("edges") or []
    sessions = ctx.get("sessions") or []
    t_last = load.t_stop - END_WINDOW_S
    recent = collections.Counter(r.served for r in recs if r.kind == "ok" and r.t0 >= t_last)
    missing = ["%s/%s" % (e, s) for e in edges for s in sessions
               if not recent.get("%s/%s" % (e, s))]
    res.info["served_by_at_end"] = dict(sorted(recent.items()))
    if missing and ctx.get("diagnose"):
        # evidence while it lasts: the TCP connections of the silent instances
        res.info["diagnostics"] = ctx["diagnose"]({m.split("/", 1)[1] for m in missing
                                                   if ctx["alive"](m.split("/", 1)[1])})
        for line in res.info["diagnostics"]:
            res.lines.append("  diag | " + line)
    res.check("every edge answered by every session instance at the end", not missing,
              ("no 200 in the last %.0f s from %s" % (END_WINDOW_S, ", ".join(missing)))
              if missing else "last %.0f s: %s" % (END_WINDOW_S, ", ".join(
                       "%s %d" % kv for kv in sorted(recent.items()))))
    return fails


def metric_delta(before, after):
    out = {}
    for port, vals in after.items():
        b = before.get(port)
        if vals is None or b is None:
            out[str(port)] = None
            continue
        out[str(port)] = {k: int(vals[k] - b.get(k, 0)) for k in vals}
    return out


# ------------------------------------------------------------------ scenarios

def sleep_until(t):
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def scenario_kill(stack, load, res, prof, t0):
    sessions = stack.pieces("session")
    if not sessions:
        res.check("session instances found", False, "no session pid files in %s" % stack.run_dir)
        return []
    kills = []
    n = int(prof["kill_s"] / KILL_EVERY_S)
    for i in range(n):
        sleep_until(t0 + WARMUP_S + i * KILL_EVERY_S)
        piece = sessions[i % len(sessions)]
        t = time.monotonic()
        pid = stack.signal(piece, signal.SIGKILL)
        k = {"at_s": round(t - t0, 3), "t": t, "instance": piece, "pid": pid, "restart_ms": None,
             "new_pid": None}
        kills.append(k)
        if pid is None:
            log("kill %d: %s has no live PID (not killed)" % (i + 1, piece))
            continue
        # the supervisor brings it back: wait (short polls) for a new live PID
        newpid, waited = wait_for(lambda: (lambda p: p if p and p != pid else None)(
            stack.pid(piece)), min(3.0, KILL_EVERY_S - 0.5), interval=0.01)
        if newpid:
            k["new_pid"], k["restart_ms"] = newpid, round(waited * 1000)
        log("kill %d at %5.1f s: %s PID %d -> %s" % (
            i + 1, k["at_s"], piece, pid,
            "PID %d in %d ms" % (newpid, k["restart_ms"]) if newpid else "not restarted"))
    sleep_until(t0 + WARMUP_S + n * KILL_EVERY_S)
    return kills


def scenario_restart(stack, load, res, prof, t0):
    """Rolling restart: SIGTERM every session instance in turn (it drains and
    exits; the supervisor starts it again) and wait until the stack is whole
    before the next one."""
    restarts = []
    sleep_until(t0 + WARMUP_S)
    for piece in stack.pieces("session"):
        t = time.monotonic()
        pid = stack.signal(piece, signal.SIGTERM)
        r = {"instance": piece, "pid": pid, "at_s": round(t - t0, 3), "new_pid": None,
             "back_after_s": None}
        restarts.append(r)
        if pid is None:
            continue
        newpid, _ = wait_for(lambda: (lambda p: p if p and p != pid else None)(stack.pid(piece)),
                             STEADY_TIMEOUT_S, interval=0.01)
        r["new_pid"] = newpid
        _, waited = wait_for(stack.whole, STEADY_TIMEOUT_S, interval=0.05)
        r["back_after_s"] = round(time.monotonic() - t, 3)
        log("restart %s PID %s -> %s, whole again after %.2f s" % (piece, pid, newpid,
                                                                   r["back_after_s"]))
    sleep_until(time.monotonic() + TAIL_S)
    return restarts


def finish_restart(res, restarts, fails):
    res.info["restarts"] = restarts
    done = [r for r in restarts if r["new_pid"]]
    res.check("every session instance restarted in turn", restarts and len(done) == len(restarts),
              "%d of %d" % (len(done), len(restarts)))
    res.check("a rolling restart fails no request", not fails,
              "%d failures" % len(fails) if fails else "")


def finish_kill(res, kills, fails, t_end):
    worst = 0.0
    rows = []
    for i, k in enumerate(kills):
        nxt = kills[i + 1]["t"] if i + 1 < len(kills) else t_end
        after = [r for r in fails if k["t"] <= r.t1 < nxt]
        rec = (max(r.t1 for r in after) - k["t"]) if after else 0.0
        k["errors_after"] = len(after)
        k["recovery_s"] = round(rec, 3)
        worst = max(worst, rec)
        rows.append("    %5.1f s  %-10s PID %-7s restarted %-9s errors after %-4d last error +%.3f s"
                    % (k["at_s"], k["instance"], k["pid"], "%s ms" % k["restart_ms"]
                       if k["restart_ms"] is not None else "no", len(after), rec))
    res.lines.append("  kills:")
    res.lines.extend(rows)
    res.info["kills"] = [{kk: v for kk, v in k.items() if kk != "t"} for k in kills]
    res.info["max_recovery_s"] = round(worst, 3)
    killed = [k for k in kills if k["pid"] is not None]
    res.check("every kill hit a live instance", len(killed) == len(kills) and kills,
              "%d of %d kills found a live PID" % (len(killed), len(kills)))
    back = [k for k in killed if k["new_pid"]]
    res.check("supervisor restarted every killed instance", len(back) == len(killed),
              "%d of %d restarted, max %s ms" % (len(back), len(killed), max(
                  [k["restart_ms"] for k in back] or [0])))
    res.check("recovery after each kill <= %.1f s" % KILL_RECOVERY_GOAL_S,
              worst <= KILL_RECOVERY_GOAL_S, "max %.3f s (time from a kill to the last error "
              "after it)" % worst)


class ClusterWatch:
    """Polls /api/cluster on one edge and follows one instance's state as
    each registry (health instance) reports it: the edge asks them in turn,
    and two registries may disagree for a moment."""

    def __init__(self, stack, port, piece, t_ref):
        self.stack, self.port, self.piece = stack, port, piece
        self.changes = []  # "+T s registry: state"
        self.reset(t_ref)

    def reset(self, t_ref):
        if getattr(self, "by_source", None):
            self.changes.append("| from SIGCONT:")
        self.t_ref = t_ref
        self.by_source = {}
        self.first_any = self.first_all = None
        self.want = None

    def poll(self):
        doc = self.stack.cluster(self.port, full=True)
        if not doc:
            return
        src = doc.get("source", "?")
        state = {m["instance"]: m["state"] for m in doc["instances"]}.get(self.piece, "absent")
        t = round(time.monotonic() - self.t_ref, 3)
        if self.by_source.get(src) != state:
            self.changes.append("+%.2fs %s: %s" % (t, src, state))
        self.by_source[src] = state

    def all_say(self, state):
        """True once some registry says `state`, and every registry that has
        answered (at least as many as there are health instances) says it;
        records when either first happened."""
        t = round(time.monotonic() - self.t_ref, 3)
        if self.first_any is None and state in self.by_source.values():
            self.first_any = t
        need = max(1, len(self.stack.pieces("health")))
        if len(self.by_source) >= need and all(v == state for v in self.by_source.values()):
            if self.first_all is None:
                self.first_all = t
            return True
        return False


def scenario_pause(stack, load, res, prof, t0):
    sessions = stack.pieces("session")
    piece = sessions[-1] if sessions else None
    info = {"instance": piece, "pid": None, "dead_after_s": None, "up_after_cont_s": None,
            "states_seen": []}
    sleep_until(t0 + WARMUP_S)
    pid = stack.signal(piece, signal.SIGSTOP) if piece else None
    t_stop = time.monotonic()
    info["pid"], info["stop_at_s"] = pid, round(t_stop - t0, 3)
    if pid is None:
        res.check("paused a live instance", False, "no live session instance to pause")
        return info
    log("SIGSTOP %s PID %d at %.1f s" % (piece, pid, t_stop - t0))
    port = (stack.edge_ports() or [None])[0]
    watch = ClusterWatch(stack, port, piece, t_stop)
    try:
        # watch the cluster view for the whole pause
        while time.monotonic() < t_stop + prof["pause_s"]:
            watch.poll()
            if info["dead_after_s"] is None and watch.all_say("dead"):
                info["dead_after_s"] = watch.first_all
                log("%s shows dead after %.2f s (first registry %.2f s)" % (
                    piece, watch.first_all, watch.first_any))
            time.sleep(POLL_S)
    finally:
        os.kill(pid, signal.SIGCONT)  # the same process we stopped (we hold its PID)
    t_cont = time.monotonic()
    info["dead_first_registry_s"] = watch.first_any if info["dead_after_s"] is not None else None
    info["cont_at_s"] = round(t_cont - t0, 3)
    log("SIGCONT %s PID %d at %.1f s" % (piece, pid, t_cont - t0))
    watch.reset(t_cont)
    while time.monotonic() < t_cont + RECOVER_LIMIT_S:
        watch.poll()
        if watch.all_say("up"):
            info["up_after_cont_s"] = watch.first_all
            log("%s up again %.2f s after SIGCONT" % (piece, watch.first_all))
            break
        time.sleep(POLL_S)
    info["states_seen"] = watch.changes
    info["t_stop"], info["t_cont"] = t_stop, t_cont
    sleep_until(max(time.monotonic(), t_cont + TAIL_S))
    return info


def finish_pause(res, info, fails, delta):
    if info.get("pid") is None:
        return
    during = [r for r in fails if info["t_stop"] <= r.t1 <= info["t_cont"] + 2.0]
    res.lines.append("  paused %s PID %d for %.1f s; dead in every registry after %s s (first "
                     "%s s); up in every registry %s s after SIGCONT" % (
                         info["instance"], info["pid"], info["t_cont"] - info["t_stop"],
                         info["dead_after_s"], info.get("dead_first_registry_s"),
                         info["up_after_cont_s"]))
    res.lines.append("  state changes per registry: " + ", ".join(info["states_seen"]))
    res.lines.append("  errors from SIGSTOP to SIGCONT + 2 s: %d" % len(during))
    late = {p: (d or {}).get("shoal_calls_late_replies_total") for p, d in delta.items()}
    res.lines.append("  late replies dropped (edge /metrics): %s" % ", ".join(
        "edge :%s +%s" % kv for kv in sorted(late.items())))
    res.info["pause"] = {k: v for k, v in info.items() if k not in ("t_stop", "t_cont")}
    res.info["pause"]["errors_during"] = len(during)
    res.info["late_replies"] = late
    d = info["dead_after_s"]
    res.check("paused instance shows dead within %.1f s" % PAUSE_DEAD_GOAL_S,
              d is not None and d <= PAUSE_DEAD_GOAL_S,
              "after %.2f s" % d if d is not None else "never dead while paused")
    u = info["up_after_cont_s"]
    res.check("instance up again within %.0f s of SIGCONT" % RECOVER_LIMIT_S, u is not None,
              "after %.2f s" % u if u is not None else "not up")
    res.check("edge metrics readable", all(v is not None for v in late.values()) and late,
              "late replies %s" % late)


def scenario_health(stack, load, res, prof, t0):
    info = {"supervisor_stopped": False, "killed": {}, "cluster_while_down": [],
            "recovered_after_s": None, "up_rc": None}
    sleep_until(t0 + WARMUP_S)
    try:
        return s_health_window(stack, info, prof, t0)
    except BaseException:
        # interrupted with health (or the supervisor) down: an attached
        # stack is not left that way (an own stack is stopped anyway)
        if not stack.own and info.get("up_rc") is None:
            log("restoring health and the supervisor of the attached stack (deploy/local/up)")
            stack.up(quiet=True, supervise=info["supervisor_stopped"])
        raise


def s_health_window(stack, info, prof, t0):
    spid = stack.signal("supervise", signal.SIGTERM)
    if spid is not None:
        # wait until it is gone so it cannot restart what we kill
        wait_for(lambda: not os.path.exists("/proc/%d" % spid) or
                 open("/proc/%d/stat" % spid).read().rsplit(")", 1)[1].split()[0] == "Z", 5.0,
                 interval=0.01)
        info["supervisor_stopped"] = True
        log("supervisor PID %d stopped" % spid)
    t_kill = time.monotonic()
    for piece in stack.pieces("health"):
        info["killed"][piece] = stack.signal(piece, signal.SIGKILL)
    info["kill_at_s"] = round(t_kill - t0, 3)
    log("SIGKILL %s at %.1f s" % (", ".join("%s PID %s" % kv for kv in info["killed"].items()),
                                  t_kill - t0))
    port = (stack.edge_ports() or [None])[0]
    while time.monotonic() < t_kill + prof["health_s"]:
        try:
            status, _, _ = http_get(port, "/api/cluster", timeout=1.0)
        except (OSError, http.client.HTTPException) as e:
            status = type(e).__name__
        if not info["cluster_while_down"] or info["cluster_while_down"][-1][1] != status:
            info["cluster_while_down"].append((round(time.monotonic() - t_kill, 2), status))
        time.sleep(0.25)
    info["alive_while_down"] = {p: stack.pid(p) for p in stack.pieces("health")}
    t_back = time.monotonic()
    info["back_at_s"] = round(t_back - t0, 3)
    log("bringing health back: deploy/local/up (starts the dead pieces and the supervisor)")
    rc, out = stack.up(quiet=True, supervise=info["supervisor_stopped"] or stack.own)
    info["up_rc"] = rc
    info["up_output"] = out.splitlines()[-25:]
    info["up_s"] = round(time.monotonic() - t_back, 3)
    _, waited = wait_for(stack.whole, RECOVER_LIMIT_S, interval=0.1)
    why = stack.why_not_whole()
    if not why:
        info["recovered_after_s"] = round(waited + info["up_s"], 3)
        log("cluster view whole again %.2f s after the restart began" % info["recovered_after_s"])
    else:
        info["not_whole"] = why
        log("cluster view not whole %.0f s after the restart: %s" % (RECOVER_LIMIT_S, why))
    info["t_kill"], info["t_back"] = t_kill, t_back
    sleep_until(max(time.monotonic(), t_back + TAIL_S))
    return info


def finish_health(res, info, fails):
    during = [r for r in fails if r.t1 >= info["t_kill"] and r.t0 <= info["t_back"]]
    res.lines.append("  health down %.1f s (killed %s); /api/cluster while down: %s" % (
        info["t_back"] - info["t_kill"], ", ".join("%s PID %s" % kv for kv in
                                                  info["killed"].items()),
        ", ".join("+%ss %s" % s for s in info["cluster_while_down"])))
    res.lines.append("  deploy/local/up rerun: exit %s in %s s; cluster whole after %s s" % (
        info["up_rc"], info.get("up_s"), info["recovered_after_s"]))
    if info["up_rc"] != 0:
        res.lines.extend("    | " + line for line in info["up_output"])
    res.info["health"] = {k: v for k, v in info.items() if k not in ("t_kill", "t_back")}
    res.info["health"]["errors_while_down"] = len(during)
    res.check("both health instances killed", info["killed"] and all(info["killed"].values()),
              "%s" % info["killed"])
    res.check("health stayed dead for the whole window",
              not any(info["alive_while_down"].values()), "%s" % info["alive_while_down"])
    res.check("0 failures while health is down", not during,
              "%d failures: %s" % (len(during), collections.Counter(
                  "%s %s" % (r.kind, r.detail) for r in during).most_common(3)) if during else "")
    res.check("cluster view recovers within %.0f s" % RECOVER_LIMIT_S,
              info["up_rc"] == 0 and info["recovered_after_s"] is not None,
              "up exit %s, whole after %s s%s" % (info["up_rc"], info["recovered_after_s"],
                                                  "; " + info["not_whole"]
                                                  if info.get("not_whole") else ""))


def run_scenario(name, stack, args, prof):
    res = Result(name)
    log("--- scenario %s: waiting for the stack to be whole" % name)
    _, waited = wait_for(stack.whole, STEADY_TIMEOUT_S, interval=0.1)
    why = stack.why_not_whole()
    if why:
        res.check("stack whole before the scenario", False,
                  "not whole within %.0f s: %s" % (STEADY_TIMEOUT_S, why))
        return res
    before = stack.metrics()
    hlog = os.path.join(stack.run_dir, "logs", "haproxy.log")
    ctx = {"haproxy_log": hlog, "wall_offset": time.time() - time.monotonic(),
           "edges": stack.pieces("edge"), "sessions": stack.pieces("session"),
           "diagnose": stack.diagnose, "alive": lambda piece: stack.pid(piece) is not None}
    res.info["load_avg_before"] = round(os.getloadavg()[0], 2)
    load = Load(stack, args.clients)
    t0 = time.monotonic()
    res.info["started_at"] = now_wall()
    load.start()
    info = None
    try:
        if name == "kill":
            info = scenario_kill(stack, load, res, prof, t0)
            sleep_until(time.monotonic() + TAIL_S)
        elif name == "pause":
            info = scenario_pause(stack, load, res, prof, t0)
        elif name == "health":
            info = scenario_health(stack, load, res, prof, t0)
        elif name == "restart":
            info = scenario_restart(stack, load, res, prof, t0)
    finally:
        load.stop()
    t_end = time.monotonic()
    fails = analyse(res, load, args.deadline_ms / 1000.0, t0, ctx)
    delta = metric_delta(before, stack.metrics())
    res.info["edge_metrics_delta"] = delta
    if name == "kill":
        finish_kill(res, info or [], [r for c in load.clients for r in c.records
                                      if r.kind != "ok"], t_end)
    elif name == "pause":
        finish_pause(res, info or {}, fails, delta)
    elif name == "health":
        finish_health(res, info, fails)
    elif name == "restart":
        finish_restart(res, info or [], fails)
    return res


# ------------------------------------------------------------------ report

def report(res):
    i = res.info
    print("\n=== scenario %s: %s ===" % (res.name, "PASS" if res.passed else "FAIL"))
    if "requests" in i:
        lat = i["latency_ms"]
        print("  requests %d in %.1f s = %.0f req/s, %d ok, %d failed %s" % (
            i["requests"], i["duration_s"], i["req_per_s"], i["ok"], i["failed"],
            json.dumps(i["failures_by_kind"], sort_keys=True) if i["failed"] else ""))
        print("  latency p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (lat["p50"], lat["p99"],
                                                                  lat["max"]))
        print("  slowest: " + "; ".join(
            "%.0f ms at +%.2f s %s%s%s" % (s["latency_ms"], s["t_s"], s["kind"],
                                           " " + s["served"] if s["served"] else "",
                                           " (connect %.0f ms)" % s["connect_ms"]
                                           if s["connect_ms"] is not None else "")
            for s in i["slowest"][:3]))
        print("  served by (edge/session: 200s): " + ", ".join(
            "%s %d" % kv for kv in i["served_by"].items()))
        if i["retried_looking_by_served"]:
            print("  200s that took >= 0.9 s (first attempt lost, answered by): " + ", ".join(
                "%s %d" % kv for kv in i["retried_looking_by_served"].items()))
        for msg, n in i["failure_messages"].items():
            print("    %5d x %s" % (n, msg[:150]))
        for port, d in sorted(i.get("edge_metrics_delta", {}).items()):
            if d:
                print("  edge :%s calls: late replies +%d, retries +%d, budget exhausted +%d, "
                      "timeouts +%d, no instance +%d, failed fast +%d" % (
                          port, d["shoal_calls_late_replies_total"],
                          d["shoal_calls_retries_total"], d["shoal_calls_budget_exhausted_total"],
                          d["shoal_calls_timeouts_total"], d["shoal_calls_no_instance_total"],
                          d["shoal_calls_failed_fast_total"]))
    for line in res.lines:
        print(line)
    for name, ok, detail in res.checks:
        print("  %-4s %s%s" % ("PASS" if ok else "FAIL", name, " -- " + detail if detail else ""))
    sys.stdout.flush()


def write_summary(path, args, stack, results, extra):
    data = {
        "generated_at": now_wall(),
        "profile": args.profile,
        "clients": args.clients,
        "url": stack.url,
        "run_dir": stack.run_dir,
        "own_stack": stack.own,
        "deadline_ms": args.deadline_ms,
        "scenarios": [dict(name=r.name, passed=r.passed,
                           checks=[{"name": n, "ok": ok, "detail": d} for n, ok, d in r.checks],
                           **r.info) for r in results],
        "passed": sum(1 for r in results if r.passed),
        "failed": sum(1 for r in results if not r.passed),
    }
    data.update(extra)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


# ------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="Shoal chaos tests: kill, pause and health faults under load.",
        epilog="Scenarios: %s (default: all, in that order)." % ", ".join(SCENARIOS))
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--short", dest="profile", action="store_const", const="short",
                   help="kill 30 s, pause 10 s, health down 10 s (default)")
    g.add_argument("--long", dest="profile", action="store_const", const="long",
                   help="kill 60 s, pause 20 s, health down 20 s")
    ap.add_argument("--url", help="attach to a running stack at this URL (HAProxy)")
    ap.add_argument("--run-dir", help="its run dir (pid files); required with --url")
    ap.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    ap.add_argument("--deadline-ms", type=int,
                    default=int(os.environ.get("SHOAL_REQUEST_TIMEOUT_MS") or 2000),
                    help="the edges' request deadline (default $SHOAL_REQUEST_TIMEOUT_MS "
                         "or 2000)")
    ap.add_argument("--unsupervised", action="store_true",
                    help="start the own stack with SHOAL_SUPERVISE=0 (a broken setup: killed "
                         "instances stay dead, so the kill scenario must FAIL)")
    ap.add_argument("--artifacts", default=os.environ.get("SHOAL_ARTIFACTS") or
                    os.path.join(REPO, "tests", "artifacts"),
                    help="where chaos-summary.json goes (default $SHOAL_ARTIFACTS or "
                         "tests/artifacts)")
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    args = ap.parse_args(argv)
    args.profile = args.profile or "short"
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r (choose from %s)" % (s, ", ".join(SCENARIOS)))
    args.scenarios = args.scenarios or list(SCENARIOS)
    if bool(args.url) != bool(args.run_dir):
        ap.error("--url and --run-dir go together")
    if args.url and args.unsupervised:
        ap.error("--unsupervised applies to the stack this runner starts, not to --url")
    if args.clients < 1:
        ap.error("--clients must be at least 1")
    return args


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    prof = PROFILES[args.profile]
    if args.url:
        env = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
        env["SHOAL_RUN_DIR"] = os.path.abspath(args.run_dir)
        stack = Stack(args.url, env["SHOAL_RUN_DIR"], False, env)
    else:
        env = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
        env.update(OWN_ENV)
        env["SHOAL_SUPERVISE"] = "0" if args.unsupervised else "1"
        stack = Stack("http://127.0.0.1:%s" % OWN_ENV["SHOAL_PORT"], OWN_RUN_DIR, True, env)
    summary = os.path.join(os.path.abspath(args.artifacts), "chaos-summary.json")
    results, extra = [], {}
    t_all = time.monotonic()
    log("profile %s, scenarios %s, %d clients, deadline %d ms, stack %s (%s)" % (
        args.profile, " ".join(args.scenarios), args.clients, args.deadline_ms, stack.url,
        "own, run dir %s%s" % (stack.run_dir, ", SHOAL_SUPERVISE=0" if args.unsupervised else "")
        if stack.own else "attached, run dir %s" % stack.run_dir))
    try:
        if stack.own:
            log("starting the stack (deploy/local/up)")
            if not stack.start():
                extra["error"] = "deploy/local/up failed"
                log("deploy/local/up failed; no scenario run")
                for name in args.scenarios:
                    r = Result(name)
                    r.check("stack started", False, "deploy/local/up failed")
                    results.append(r)
        if not results:
            for name in args.scenarios:
                res = run_scenario(name, stack, args, prof)
                results.append(res)
                report(res)
    except (KeyboardInterrupt, Interrupted) as e:
        log("interrupted (%s)" % (str(e) or "Ctrl-C"))
        extra["interrupted"] = True
        done = {r.name for r in results}
        for name in args.scenarios:
            if name not in done:
                r = Result(name)
                r.check("scenario completed", False, "interrupted")
                results.append(r)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the stack stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    extra["total_s"] = round(time.monotonic() - t_all, 1)
    try:
        write_summary(summary, args, stack, results, extra)
        log("summary: %s (%.0f s in all)" % (summary, extra["total_s"]))
    except OSError as e:
        log("cannot write %s: %s" % (summary, e))
    passed = sum(1 for r in results if r.passed)
    failed = len(results) - passed
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 0 if failed == 0 and results else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
