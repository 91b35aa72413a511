#!/usr/bin/env python3
"""tests/containers/stack_test.py -- start the compose stack and check it through HAProxy.

Run by tests/containers/run (which installs podman, builds the images and starts the
podman API socket for docker-compose); standard library only.

  stack_test.py --tool podman-compose|docker-compose --project P --compose-file F \\
                --https-port N --http-port N --stats-port N [--full] [--log FILE]
                [--browser DIR [--browser-artifacts DIR]]

The stack starts with one query and one upload instance (SHOAL_QUERIES=1, SHOAL_UPLOADS=1).
Without --full (the podman-compose pass): up, ready through HTTPS, counter across both
edges, cluster lists 2 edges + 2 sessions + 1 query + 1 upload + 2 health, the board through
HAProxy (signup, login, POST /api/items with X-CSRF-Token and Origin, GET /api/items lists it,
search finds it), an upload through HAProxy (POST /api/uploads of 5 MiB + 1 random bytes, the
attachment listed, GET /api/uploads/:id returns the same SHA-256, a range), live updates
(GET /api/me sets the proof cookie; two WebSockets to /ws through HAProxy over TLS get hello,
subscribe to `board`, answer a ping, and both receive item_created for an item posted over
HTTPS; an upgrade without cookies is refused with 401, one from a foreign Origin with 403), down.
The edges share a SHOAL_EDGE_SECRET made for each run (compose.yaml requires one).
With --browser DIR (tests/browser), after the board checks: the board's real flow in Chromium,
DIR/board.test.mjs against https://127.0.0.1:HTTPS_PORT (sign up, post, search, open, delete,
log out; the self-signed certificate accepted, the stubbed tests skipped).
With --full (the docker-compose pass) also: HTTP->HTTPS redirect, certificate, cookies,
front end, image health checks, Redis AOF, Postgres replica streaming, S3 server,
networks and published ports, scale session 2 -> 4 (new instances serve), the board,
scale query 1 -> 2 and kill one query container under a read/write load (no acknowledged
item lost or doubled, reads and writes go on), scale upload 1 -> 2 (both listed up, the new
one stores uploads that read back intact), kill one session and one edge container
under load (no acknowledged view lost, no duplicate, HAProxy stops using the dead edge
within 3 s), down -v.

Every check prints "ok - NAME: detail" or "FAIL - NAME: detail"; figures print as
"figure - NAME: value". The last line is "checks: N passed, N failed".
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

READY_TIMEOUT_S = 120.0
EDGE_OUT_LIMIT_S = 3.0
QUERY_KILL_LIMIT_S = 3.0     # reads and writes work again this long after a query kill
START_QUERIES = 1            # query instances the stack starts with; the full pass scales to 2
START_UPLOADS = 1            # upload instances the stack starts with; the full pass scales to 2
UPLOAD_BYTES = 5 * 1024 * 1024 + 1   # one byte over S3's smallest part size
PASSWORD = "container check password"
HEALTHCHECK_START_S = 60.0   # the longest start period of the images' HEALTHCHECKs (Postgres)
BROWSER_TIMEOUT_S = 180.0    # the whole browser run; each of its steps has its own limit
WS_TIMEOUT_S = 10.0          # the longest wait for one WebSocket message (an event included)
FOREIGN_ORIGIN = "https://elsewhere.example"

TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE

PASSED = []
FAILED = []
FIGURES = []
LOG = None


def log(msg):
    if LOG:
        LOG.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))
        LOG.flush()


def check(name, ok, detail=""):
    line = "%s - %s%s" % ("ok" if ok else "FAIL", name, (": " + detail) if detail else "")
    print(line, flush=True)
    log(line)
    (PASSED if ok else FAILED).append(name)
    return ok


def figure(name, value):
    line = "figure - %s: %s" % (name, value)
    print(line, flush=True)
    log(line)
    FIGURES.append((name, value))


def note(msg):
    print("  " + msg, flush=True)
    log(msg)


# ------------------------------------------------------------------ processes

def run(cmd, timeout=300, env=None, check_rc=False, cwd=None):
    log("$ " + " ".join(cmd))
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                       env=env, text=True, cwd=cwd)
    log("  rc=%d in %.1fs\n%s" % (p.returncode, time.monotonic() - t0, p.stdout[-6000:]))
    if check_rc and p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stdout[-2000:]))
    return p


def podman_json(args):
    p = run(["podman"] + args, timeout=60)
    if p.returncode != 0:
        return []
    # podman prints healthcheck/systemd warnings on stderr (merged here): keep the JSON only
    text = p.stdout
    start = min([i for i in (text.find("["), text.find("{")) if i >= 0] or [0])
    try:
        return json.loads(text[start:])
    except ValueError:
        return []


class Compose:
    def __init__(self, args):
        self.tool = args.tool
        self.project = args.project
        self.file = args.compose_file
        self.env = dict(os.environ)
        self.env.update(SHOAL_PUBLISH_HTTPS=str(args.https_port),
                        SHOAL_PUBLISH_HTTP=str(args.http_port),
                        SHOAL_PUBLISH_STATS=str(args.stats_port),
                        SHOAL_PUBLISH_ADDR="127.0.0.1",
                        SHOAL_QUERIES=str(START_QUERIES),
                        SHOAL_UPLOADS=str(START_UPLOADS),
                        # one key for all edges (WebSocket proofs), new for every run
                        SHOAL_EDGE_SECRET=secrets.token_hex(32),
                        # the page's origin as the browser sends it (HTTPS through HAProxy)
                        SHOAL_ALLOWED_ORIGINS="https://127.0.0.1:%d" % args.https_port)

    def __call__(self, *words, timeout=300):
        return run([self.tool, "-f", self.file, "-p", self.project] + list(words),
                   timeout=timeout, env=self.env)

    def containers(self, service=None, all_states=False):
        args = ["ps", "--format", "json", "--filter",
                "label=com.docker.compose.project=" + self.project]
        if service:
            args += ["--filter", "label=com.docker.compose.service=" + service]
        if all_states:
            args.append("-a")
        out = podman_json(args)
        return sorted(out, key=lambda c: c["Names"][0])

    def scoped(self, name):
        return "%s_%s" % (self.project, name)


def instance_name(service, container):
    """The default SHOAL_INSTANCE in a container: <service>-<hostname = short id>-<pid 1>."""
    return "%s-%s-1" % (service, container["Id"][:12])


def container_ip(cid, network):
    info = podman_json(["inspect", cid])
    if not info:
        return None
    nets = info[0].get("NetworkSettings", {}).get("Networks", {}) or {}
    return (nets.get(network) or {}).get("IPAddress")


# ------------------------------------------------------------------ HTTP

class Client:
    """One keep-alive HTTPS connection through HAProxy, with its own cookie."""

    def __init__(self, port, timeout=5.0):
        self.port = port
        self.timeout = timeout
        self.conn = None
        self.cookie = None

    def get(self, path, keep_cookie=True):
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=TLS,
                                                    timeout=self.timeout)
        headers = {"Cookie": self.cookie} if (self.cookie and keep_cookie) else {}
        try:
            self.conn.request("GET", path, headers=headers)
            r = self.conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if keep_cookie:
            sc = r.getheader("Set-Cookie")
            if sc and sc.startswith("shoal_sid="):
                self.cookie = sc.split(";")[0]
        if r.getheader("Connection", "").lower() == "close":
            self.close()
        return r.status, r, body

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def get_json(port, path, timeout=5.0):
    c = Client(port, timeout)
    try:
        status, _, body = c.get(path, keep_cookie=False)
        return status, json.loads(body) if body else None
    finally:
        c.close()


def wait_for(fn, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
        time.sleep(interval)
    return None


class Board:
    """One keep-alive HTTPS connection through HAProxy with a cookie jar (shoal_sid and the
    read-your-writes shoal_lsn) and the session's CSRF token: the board API as a page uses it."""

    def __init__(self, port, timeout=5.0):
        self.port = port
        self.origin = "https://127.0.0.1:%d" % port
        self.timeout = timeout
        self.conn = None
        self.cookies = {}
        self.csrf = None

    def call(self, method, path, body=None, csrf=True, origin=True, data=None, headers=None):
        """(status, JSON document or None, response). DATA: raw bytes to send instead of a
        JSON BODY, with HEADERS added; the raw answer is in self.raw afterwards."""
        if self.conn is None:
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=TLS,
                                                    timeout=self.timeout)
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join("%s=%s" % kv for kv in self.cookies.items())
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if method != "GET":
            if origin:
                headers["Origin"] = self.origin
            if csrf and self.csrf:
                headers["X-CSRF-Token"] = self.csrf
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        self.raw = raw
        for sc in r.msg.get_all("Set-Cookie") or []:
            name, _, rest = sc.partition("=")
            value = rest.split(";")[0]
            if "max-age=0" in sc.lower() or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        if r.getheader("Connection", "").lower() == "close":
            self.close()
        try:
            doc = json.loads(raw) if raw and "json" in (r.getheader("Content-Type") or "") else None
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("csrf_token"):
            self.csrf = doc["csrf_token"]
        return r.status, doc, r

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def item_ids(doc):
    return [i.get("id") for i in (doc or {}).get("items") or []]


def check_board(args, label, user):
    """signup -> login (a new session) -> POST /api/items -> GET /api/items lists it ->
    search finds it -> GET /api/items/:id counts a view. Returns the logged-in Board or None."""
    word = "tern%06d" % random.randrange(10 ** 6)
    b = Board(args.https_port)
    try:
        st, doc, _ = b.call("POST", "/api/auth/signup", {"username": user, "password": PASSWORD})
        signup_sid = b.cookies.get("shoal_sid")
        if not check("%s: board: signup %s (201, csrf_token, session cookie)" % (label, user),
                     st == 201 and b.csrf and signup_sid and (doc or {}).get("user", {}).get("username") == user,
                     "%d %s" % (st, doc)):
            return None
        b.close()
        b = Board(args.https_port)
        st, doc, _ = b.call("POST", "/api/auth/login", {"username": user, "password": PASSWORD})
        check("%s: board: login (200, a new session id)" % label,
              st == 200 and b.csrf and b.cookies.get("shoal_sid") not in (None, signup_sid),
              "%d %s" % (st, doc))
        st, doc, _ = b.call("POST", "/api/items", {"title": "ct item"}, csrf=False)
        check("%s: board: POST /api/items without X-CSRF-Token is refused (403 csrf)" % label,
              st == 403 and ((doc or {}).get("error") or {}).get("code") == "csrf", "%d %s" % (st, doc))
        title = "Container check %s" % word
        st, doc, _ = b.call("POST", "/api/items", {"title": title, "body": "posted through HAProxy: " + word})
        item = (doc or {}).get("item") or {}
        if not check("%s: board: POST /api/items with X-CSRF-Token and Origin (201)" % label,
                     st == 201 and item.get("title") == title and item.get("author") == user
                     and "shoal_lsn" in b.cookies,
                     "%d id %s, shoal_lsn %s" % (st, item.get("id"), b.cookies.get("shoal_lsn")) if st == 201
                     else "%d %s" % (st, doc)):
            return b
        st, doc, r = b.call("GET", "/api/items")
        check("%s: board: GET /api/items lists the new item first" % label,
              st == 200 and item_ids(doc)[:1] == [item["id"]],
              "%d ids %s, read from %s" % (st, item_ids(doc)[:5], r.getheader("X-Shoal-Read")))
        st, doc, r = b.call("GET", "/api/items?q=%s" % word)
        check("%s: board: search for '%s' finds it" % (label, word),
              st == 200 and item_ids(doc) == [item["id"]],
              "%d ids %s, read from %s" % (st, item_ids(doc), r.getheader("X-Shoal-Read")))
        st, doc, _ = b.call("GET", "/api/items/%d" % item["id"])
        check("%s: board: GET /api/items/%d (200, one view)" % (label, item["id"]),
              st == 200 and ((doc or {}).get("item") or {}).get("views") == 1, "%d %s" % (st, doc))
        return b
    except (OSError, http.client.HTTPException) as e:
        check("%s: board" % label, False, repr(e))
        b.close()
        return None


def upload_file(b, item_id, data, name):
    """POST /api/uploads?item_id=ITEM_ID with DATA as the raw body, as the page sends it.
    (status, attachment or the answer)."""
    st, doc, _ = b.call("POST", "/api/uploads?item_id=%d" % item_id, data=data, headers={
        "Content-Type": "application/octet-stream",
        "X-File-Name": urllib.parse.quote(name, safe=""),
    })
    return st, ((doc or {}).get("attachment") if st == 201 else (doc or b.raw[:200]))


def check_upload(args, label, user):
    """Through HAProxy over TLS, as a logged-in user: post an item, upload UPLOAD_BYTES random
    bytes to it (POST /api/uploads), see it listed (GET /api/items/:id/attachments), download it
    (GET /api/uploads/:id: the same bytes by SHA-256, the stored headers) and one range of it."""
    b = Board(args.https_port, timeout=60.0)
    try:
        st, doc, _ = b.call("POST", "/api/auth/login", {"username": user, "password": PASSWORD})
        if not check("%s: upload: login %s" % (label, user), st == 200 and b.csrf, "%d %s" % (st, doc)):
            return
        st, doc, _ = b.call("POST", "/api/items", {"title": "Container upload check", "body": "a file"})
        item = ((doc or {}).get("item") or {}).get("id")
        if not check("%s: upload: an item to attach to (201)" % label, st == 201 and item, "%d %s" % (st, doc)):
            return
        # A NUL first: the bytes are no text and match no signature (sniffed octet-stream).
        data = b"\0" + os.urandom(UPLOAD_BYTES - 1)
        want = hashlib.sha256(data).hexdigest()
        name = "container check \u00fc %d.bin" % item
        t0 = time.monotonic()
        st, att = upload_file(b, item, data, name)
        took = time.monotonic() - t0
        att = att if isinstance(att, dict) else {}
        if not check("%s: upload: POST /api/uploads of %d bytes (201, size, SHA-256, name, type)" % (label, UPLOAD_BYTES),
                     st == 201 and att.get("size") == UPLOAD_BYTES and att.get("sha256") == want
                     and att.get("name") == name and att.get("content_type") == "application/octet-stream"
                     and att.get("item_id") == item and att.get("url") == "/api/uploads/%s" % att.get("id"),
                     "%.2f s, attachment %s" % (took, att.get("id")) if st == 201 else "%d %s" % (st, att)):
            return
        figure("%s upload of %d bytes through HAProxy (TLS)" % (label, UPLOAD_BYTES), "%.2f s" % took)
        st, doc, _ = b.call("GET", "/api/items/%d/attachments" % item)
        listed = [a.get("id") for a in (doc or {}).get("attachments") or []]
        check("%s: upload: GET /api/items/%d/attachments lists it" % (label, item),
              st == 200 and listed == [att["id"]], "%d %s" % (st, listed))
        t0 = time.monotonic()
        st, _, r = b.call("GET", att["url"])
        got = b.raw
        check("%s: upload: GET %s returns the same bytes (SHA-256)" % (label, att["url"]),
              st == 200 and len(got) == UPLOAD_BYTES and hashlib.sha256(got).hexdigest() == want
              and r.getheader("ETag") == '"%s"' % want and r.getheader("X-Content-Type-Options") == "nosniff"
              and (r.getheader("Content-Disposition") or "").startswith("attachment;"),
              "%d, %d bytes in %.2f s, ETag %s" % (st, len(got), time.monotonic() - t0, r.getheader("ETag")))
        st, _, r = b.call("GET", att["url"], headers={"Range": "bytes=%d-" % (UPLOAD_BYTES - 100)})
        check("%s: upload: a range of it (206, the last 100 bytes)" % label,
              st == 206 and b.raw == data[-100:]
              and r.getheader("Content-Range") == "bytes %d-%d/%d" % (UPLOAD_BYTES - 100, UPLOAD_BYTES - 1, UPLOAD_BYTES),
              "%d %s, %d bytes" % (st, r.getheader("Content-Range"), len(b.raw)))
    except (OSError, http.client.HTTPException) as e:
        check("%s: upload" % label, False, repr(e))
    finally:
        b.close()


class LiveSocket:
    """One WebSocket to /ws through HAProxy over TLS (websocket-client, Debian's
    python3-websocket), JSON text frames in and out."""

    def __init__(self, ws_mod, port, cookie=None, origin=None):
        self.ws = ws_mod.create_connection(
            "wss://127.0.0.1:%d/ws" % port, timeout=WS_TIMEOUT_S,
            sslopt={"cert_reqs": ssl.CERT_NONE, "check_hostname": False},
            cookie=cookie, origin=origin, suppress_origin=origin is None,
            subprotocols=["shoal.v1"])
        self.timeout_exc = ws_mod.WebSocketTimeoutException

    def send(self, doc):
        self.ws.send(json.dumps(doc))

    def wait(self, pred, timeout=WS_TIMEOUT_S):
        """The first message PRED accepts within TIMEOUT (None), and every message seen."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                raw = self.ws.recv()
            except self.timeout_exc:
                break
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = {"unparsed": raw[:200]}
            seen.append(msg)
            if pred(msg):
                return msg, seen
        return None, seen

    def close(self):
        try:
            self.ws.close()
        except OSError:
            pass


def upgrade_status(ws_mod, port, cookie, origin):
    """The HTTP status /ws answers an upgrade with (101 when it upgrades)."""
    try:
        LiveSocket(ws_mod, port, cookie=cookie, origin=origin).close()
        return 101
    except ws_mod.WebSocketBadStatusException as e:
        return e.status_code


def check_live_updates(args, label, user):
    """Live updates through HAProxy over TLS, as a logged-in user: GET /api/me sets the proof
    cookie shoal_ws; two WebSockets to /ws (HAProxy may put them on different edges) get hello,
    subscribe to `board`, answer a ping; an item posted over HTTPS arrives on both as
    item_created with its id, epoch and offset. Upgrades without cookies are refused (401), and
    with cookies from a foreign Origin too (403)."""
    try:
        import websocket as ws_mod   # Debian's python3-websocket (websocket-client)
    except ImportError:
        check("%s: live: websocket-client available" % label, False,
              "no python3-websocket (deploy/local/install-deps --test installs it)")
        return
    b = Board(args.https_port)
    sockets = []
    try:
        st, doc, _ = b.call("POST", "/api/auth/login", {"username": user, "password": PASSWORD})
        if not check("%s: live: login %s" % (label, user), st == 200 and b.csrf, "%d %s" % (st, doc)):
            return
        st, doc, r = b.call("GET", "/api/me")
        proof = [c for c in r.msg.get_all("Set-Cookie") or [] if c.startswith("shoal_ws=")]
        attrs = {a.strip().lower() for a in (proof[0].split(";")[1:] if proof else [])}
        if not check("%s: live: GET /api/me sets the proof cookie shoal_ws (HttpOnly, SameSite=Strict, Secure)"
                     % label, st == 200 and b.cookies.get("shoal_ws")
                     and {"httponly", "samesite=strict", "secure"} <= attrs,
                     "%d, Set-Cookie %s" % (st, [c.split("=")[0] + "=…" + c[c.find(";"):] for c in proof])):
            return
        cookie = "shoal_sid=%s; shoal_ws=%s" % (b.cookies.get("shoal_sid"), b.cookies["shoal_ws"])
        hellos = []
        for _ in range(2):
            s = LiveSocket(ws_mod, args.https_port, cookie=cookie, origin=b.origin)
            sockets.append(s)
            hello, seen = s.wait(lambda m: True)
            hellos.append(hello or {"seen": seen})
        ok = all(h.get("type") == "hello" and h.get("user") == user and h.get("edge") for h in hellos) \
            and all(s.ws.getsubprotocol() == "shoal.v1" for s in sockets)
        if not check("%s: live: two WebSockets to /ws through HAProxy over TLS (101 shoal.v1, hello)" % label,
                     ok, "edges %s" % [h.get("edge") for h in hellos] if ok else "hello %s" % hellos):
            return
        subs = []
        for s in sockets:
            s.send({"type": "subscribe", "channel": "board"})
            sub, seen = s.wait(lambda m: m.get("type") in ("subscribed", "error"))
            subs.append(sub or {"seen": seen})
        # A board without events yet has no epoch (""): the first event starts one.
        ok = all(m.get("type") == "subscribed" and m.get("channel") == "board" and "epoch" in m
                 and isinstance(m.get("offset"), int) and "recovered" not in m for m in subs)
        if not check("%s: live: subscribe to board (subscribed, epoch and offset, no recovered)" % label,
                     ok, str(subs)):
            return
        sockets[0].send({"type": "ping"})
        pong, seen = sockets[0].wait(lambda m: m.get("type") == "pong")
        check("%s: live: ping -> pong" % label, pong is not None, "seen %s" % seen)
        title = "Live check %06d" % random.randrange(10 ** 6)
        t0 = time.monotonic()
        st, doc, _ = b.call("POST", "/api/items", {"title": title, "body": "sent to every subscriber"})
        item = (doc or {}).get("item") or {}
        if not check("%s: live: POST /api/items over HTTPS (201)" % label, st == 201 and item.get("id"),
                     "%d %s" % (st, doc)):
            return

        def created(m):
            return m.get("type") == "event" and m.get("channel") == "board" \
                and m.get("event") == "item_created" \
                and ((m.get("data") or {}).get("item") or {}).get("id") == item["id"]
        got = []
        for s, sub in zip(sockets, subs):
            ev, seen = s.wait(created)
            got.append((ev, sub, seen))
        took = time.monotonic() - t0
        bad = [(seen[-3:]) for ev, _, seen in got if ev is None]
        ok = not bad and all(ev["data"]["item"].get("title") == title and ev["data"]["item"].get("author") == user
                             and ev.get("epoch") and ev.get("epoch") == (sub.get("epoch") or ev.get("epoch"))
                             and ev.get("offset", 0) > sub.get("offset", 0)
                             for ev, sub, _ in got)
        check("%s: live: both WebSockets receive item_created for it (id, title, author, epoch, offset)" % label,
              ok, "in %.2f s, offsets %s" % (took, [ev.get("offset") for ev, _, _ in got]) if ok
              else "missing or wrong: %s %s" % (bad, [ev for ev, _, _ in got]))
        if ok:
            figure("%s live update: POST /api/items -> event on both WebSockets" % label, "%.3f s" % took)
        st = upgrade_status(ws_mod, args.https_port, None, b.origin)
        check("%s: live: an upgrade without cookies is refused (401)" % label, st == 401, "status %s" % st)
        st = upgrade_status(ws_mod, args.https_port, cookie, FOREIGN_ORIGIN)
        check("%s: live: an upgrade from a foreign Origin is refused (403)" % label, st == 403,
              "Origin %s: status %s" % (FOREIGN_ORIGIN, st))
    except (OSError, http.client.HTTPException, ValueError) as e:
        check("%s: live updates" % label, False, repr(e))
    except Exception as e:   # websocket-client's own errors (handshake refused, closed)
        check("%s: live updates" % label, False, "%s: %s" % (type(e).__name__, e))
    finally:
        for s in sockets:
            s.close()
        b.close()


def uploads_stored(port):
    """{instance: shoal_uploads_total{result="ok"}} of every upload instance, from
    /metrics/cluster (the edge merges every instance's series)."""
    c = Client(port, timeout=5.0)
    try:
        status, _, body = c.get("/metrics/cluster", keep_cookie=False)
    finally:
        c.close()
    out = {}
    for line in body.decode(errors="replace").splitlines() if status == 200 else []:
        m = re.match(r'shoal_uploads_total\{([^}]*)\} ([0-9.e+]+)$', line)
        if m and 'result="ok"' in m.group(1):
            inst = re.search(r'instance="([^"]*)"', m.group(1))
            if inst:
                out[inst.group(1)] = out.get(inst.group(1), 0) + float(m.group(2))
    return out


def check_upload_scale(compose, args, user):
    """--scale upload=2: the new instance registers, is listed up, and takes uploads that read
    back intact (small files until it has stored one: the edges spread new uploads)."""
    t0 = time.monotonic()
    p = compose("up", "-d", "--scale", "session=4", "--scale", "query=2", "--scale", "upload=2", timeout=300)
    uploads = compose.containers("upload")
    if not check("scale upload %d -> 2 (%s up -d --scale upload=2)" % (START_UPLOADS, compose.tool),
                 p.returncode == 0 and len(uploads) == 2, "%d upload containers" % len(uploads)):
        return
    names = {instance_name("upload", c) for c in uploads}

    def registered():
        _, up = cluster_counts(args.https_port)
        return up.get("upload", set()) >= names
    ok = wait_for(registered, 30, 0.1)
    check("both upload instances registered and listed up", bool(ok),
          "%s in %.1f s" % (sorted(names), time.monotonic() - t0))
    if ok:
        figure("scale-out: compose up --scale upload=2 -> listed up", "%.1f s" % (time.monotonic() - t0))
    before = uploads_stored(args.https_port)
    b = Board(args.https_port, timeout=30.0)
    sent, bad, by = 0, [], {}
    try:
        st, _, _ = b.call("POST", "/api/auth/login", {"username": user, "password": PASSWORD})
        st2, doc, _ = b.call("POST", "/api/items", {"title": "Container upload scale check", "body": "files"})
        item = ((doc or {}).get("item") or {}).get("id")
        if not check("upload scale: login and an item (200, 201)", st == 200 and st2 == 201 and item,
                     "%d %d %s" % (st, st2, doc)):
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sent < 20:
            data = b"\0" + os.urandom(64 * 1024)
            st, att = upload_file(b, item, data, "scale %d.bin" % sent)
            sent += 1
            if st != 201:
                bad.append((st, att))
                continue
            st, _, _ = b.call("GET", att["url"])
            if st != 200 or b.raw != data:
                bad.append(("read back", st, len(b.raw)))
            by = {n: v - before.get(n, 0) for n, v in uploads_stored(args.https_port).items()}
            if all(by.get(n, 0) > 0 for n in names):
                break
    except (OSError, http.client.HTTPException) as e:
        bad.append(repr(e))
    finally:
        b.close()
    check("both upload instances store uploads that read back intact",
          not bad and all(by.get(n, 0) > 0 for n in names),
          "%d uploads, stored per instance %s%s" % (sent, by, ", failures %s" % bad[:3] if bad else ""))


def check_browser(args, label):
    """tests/browser/board.test.mjs in Chromium through HAProxy over HTTPS: a new user signs up,
    posts, searches, opens the item, deletes it and logs out (Secure cookies, the page's CSP).
    Only that test: the stubbed ones are skipped. Passes when it ran and passed."""
    env = dict(os.environ,
               SHOAL_URL="https://127.0.0.1:%d" % args.https_port,
               SHOAL_BROWSER_IGNORE_HTTPS_ERRORS="1",   # the stack's self-signed certificate
               SHOAL_BROWSER_SKIP_STUBBED="1")
    if args.browser_artifacts:
        env["SHOAL_ARTIFACTS"] = args.browser_artifacts
    name = "%s: browser: the board's flow in Chromium over HTTPS (board.test.mjs)" % label
    if args.browser_artifacts:  # what is there afterwards is from this run
        for old in ("board.png", "board-list.png", "board-item.png", "board-browser.tap"):
            try:
                os.remove(os.path.join(args.browser_artifacts, old))
            except FileNotFoundError:
                pass
    t0 = time.monotonic()
    try:
        p = run(["node", "--test", "--test-reporter=tap", "board.test.mjs"], cwd=args.browser,
                timeout=BROWSER_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return check(name, False, "no result in %.0f s" % BROWSER_TIMEOUT_S)
    except OSError as e:
        return check(name, False, repr(e))
    took = time.monotonic() - t0
    counts = dict(re.findall(r"^# (pass|fail|skipped|cancelled) (\d+)$", p.stdout, re.M))
    passed, failed = int(counts.get("pass", 0)), int(counts.get("fail", 0))
    if args.browser_artifacts:
        with open(os.path.join(args.browser_artifacts, "board-browser.tap"), "w") as f:
            f.write(p.stdout)
    ok = p.returncode == 0 and passed == 1 and failed == 0
    if not ok:
        for line in p.stdout.splitlines()[-60:]:
            note("  " + line)
    where = ", screenshots in %s" % args.browser_artifacts if args.browser_artifacts else ""
    if ok:
        figure("%s browser: board flow in Chromium" % label, "%.1f s" % took)
    return check(name, ok, "exit %d, %d passed, %d failed, %s skipped in %.1f s%s"
                 % (p.returncode, passed, failed, counts.get("skipped", "0"), took, where))


def ready(port):
    status, _ = get_json(port, "/health/ready", timeout=2.0)
    return status == 200


def cluster_counts(port):
    status, doc = get_json(port, "/api/cluster")
    if status != 200:
        return None, {}
    up = {}
    for inst in doc.get("instances", []):
        if inst.get("state") == "up":
            up.setdefault(inst["service"], set()).add(inst["instance"])
    return doc, up


def haproxy_servers(stats_port):
    """{address ip: status} of the `edges` backend from HAProxy's CSV statistics."""
    conn = http.client.HTTPConnection("127.0.0.1", stats_port, timeout=2)
    try:
        conn.request("GET", "/stats;csv")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    lines = text.splitlines()
    head = lines[0].lstrip("# ").split(",")
    col = {n: i for i, n in enumerate(head)}
    out = {}
    for line in lines[1:]:
        f = line.split(",")
        if len(f) < len(head) or f[col["pxname"]] != "edges" or f[col["svname"]] == "BACKEND":
            continue
        addr = f[col["addr"]] if "addr" in col else ""
        if addr:
            out[addr.rsplit(":", 1)[0]] = f[col["status"]]
    return out


# ------------------------------------------------------------------ checks

def start_stack(compose, args, label):
    t0 = time.monotonic()
    p = compose("up", "-d", timeout=600)
    t_up = time.monotonic() - t0
    if not check("%s: up -d" % label, p.returncode == 0,
                 "%.1f s" % t_up if p.returncode == 0 else p.stdout[-1500:]):
        return False
    ok = wait_for(lambda: ready(args.https_port), READY_TIMEOUT_S, 0.1)
    t_ready = time.monotonic() - t0
    check("%s: HAProxy answers /health/ready 200 over HTTPS" % label, bool(ok),
          "%.1f s after `up -d` started" % t_ready)
    if ok:
        figure("%s stack start (compose up -> HAProxy ready)" % label, "%.1f s" % t_ready)
    return bool(ok)


def check_counter(args, label, n=20):
    """One client, one keep-alive connection: views 1..n, +1 each, both edges alternate."""
    c = Client(args.https_port)
    # HAProxy takes an edge into rotation after its first good check: wait for both.
    seen = set()

    def both():
        _, doc = get_json(args.https_port, "/health/live")
        seen.add(doc["instance"])
        return len(seen) >= 2
    t0 = time.monotonic()
    if wait_for(both, 30, 0.05):
        figure("%s: both edges in HAProxy's rotation" % label, "%.1f s" % (time.monotonic() - t0))
    else:
        check("%s: both edges enter HAProxy's rotation within 30 s" % label, False,
              "seen: %s" % sorted(seen))
    views, edges, statuses = [], [], []
    try:
        for _ in range(n):
            status, _, body = c.get("/api/session")
            statuses.append(status)
            if status == 200:
                doc = json.loads(body)
                views.append(doc["views"])
                edges.append(doc["edge"])
    except (OSError, http.client.HTTPException) as e:
        statuses.append(repr(e))
    finally:
        c.close()
    ok = statuses == [200] * n and views == list(range(1, n + 1))
    check("%s: session counter +1 per request (%d requests, one cookie)" % (label, n), ok,
          "views %s..%s" % (views[:1], views[-1:]) if ok else "statuses %s views %s" % (statuses, views))
    alternate = len(set(edges)) == 2 and all(a != b for a, b in zip(edges, edges[1:]))
    check("%s: requests alternate between both edges" % label, alternate,
          " ".join(edges[:4]) + " ...")


def check_cluster(compose, args, label, want):
    """/api/cluster lists exactly the running containers, each `up`."""
    expect = {}
    for service in ("edge", "session", "query", "upload"):
        expect[service] = {instance_name(service, c) for c in compose.containers(service)}
    expect["health"] = {"health-1", "health-2"}

    def complete():
        _, up = cluster_counts(args.https_port)
        return all(up.get(s, set()) >= expect[s] for s in expect) and up
    up = wait_for(complete, 20, 0.2)
    doc, up_now = cluster_counts(args.https_port)
    counts = {s: len(up_now.get(s, ())) for s in ("edge", "session", "query", "upload", "health")}
    ok = bool(up) and all(len(expect[s]) == want[s] for s in want) and counts == want
    check("%s: /api/cluster lists every instance up (%s)" % (label, ", ".join(
        "%d %s" % (want[s], s) for s in ("edge", "session", "query", "upload", "health"))), ok,
        "up: %s" % counts if ok else "up %s, expected containers %s" % (
            {s: sorted(v) for s, v in up_now.items()}, {s: sorted(v) for s, v in expect.items()}))
    if doc:
        reach = [h.get("reachable") for h in doc.get("health", [])]
        check("%s: both health instances reachable from the edge" % label,
              reach == [True, True], str(doc.get("health")))


def check_http_redirect(args):
    conn = http.client.HTTPConnection("127.0.0.1", args.http_port, timeout=5)
    try:
        conn.request("GET", "/api/session?probe=1", headers={"Host": "127.0.0.1:%d" % args.http_port})
        r = conn.getresponse()
        r.read()
        loc = r.getheader("Location")
    finally:
        conn.close()
    want = "https://127.0.0.1:%d/api/session?probe=1" % args.https_port
    check("HTTP redirects to HTTPS (same host, HTTPS port, path and query)",
          r.status == 301 and loc == want, "%d Location: %s" % (r.status, loc))


def check_tls_and_headers(args):
    # The self-signed certificate verifies for 127.0.0.1 when trusted explicitly.
    pem = ssl.get_server_certificate(("127.0.0.1", args.https_port))
    ctx = ssl.create_default_context(cadata=pem)
    ok, detail = True, ""
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", args.https_port, context=ctx, timeout=5)
        conn.request("GET", "/health/live")
        conn.getresponse().read()
        detail = "%s, %s" % (conn.sock.version(), conn.sock.cipher()[0])
        conn.close()
    except (ssl.SSLError, OSError) as e:
        ok, detail = False, repr(e)
    check("TLS: self-signed certificate valid for 127.0.0.1 (SAN), TLS >= 1.2", ok, detail)

    c = Client(args.https_port)
    try:
        status, r, _ = c.get("/api/session")
        cookie = r.getheader("Set-Cookie") or ""
        flags = [f.strip().lower() for f in cookie.split(";")[1:]]
        check("session cookie is Secure, HttpOnly, SameSite=Lax behind TLS",
              status == 200 and "secure" in flags and "httponly" in flags and "samesite=lax" in flags,
              "%d %s" % (status, re.sub(r"=[A-Za-z0-9_-]{43}", "=<id>", cookie)))
        status, r, body = c.get("/")
        csp = r.getheader("Content-Security-Policy") or ""
        check("front end served from the image (GET / -> index.html with CSP)",
              status == 200 and b"<div id=" in body and "default-src" in csp,
              "%d, %d bytes, CSP %s" % (status, len(body), csp[:40]))
    finally:
        c.close()


def check_images_and_runtime(compose, args):
    # HAProxy can be ready before the Postgres replica has finished its base backup (reads
    # go to the primary meanwhile): each container gets its image's start period to pass.
    t0 = time.monotonic()
    ctrs = compose.containers()
    bad = []
    for ctr in ctrs:
        name = ctr["Names"][0]
        last = []

        def healthy():
            p = run(["podman", "healthcheck", "run", name], timeout=30)
            last[:] = [p.stdout.strip()[-200:]]
            return p.returncode == 0
        if not wait_for(healthy, max(0.0, HEALTHCHECK_START_S - (time.monotonic() - t0)) + 1.0, 0.5):
            bad.append("%s: %s" % (name, last[0] if last else "?"))
    check("image HEALTHCHECK passes in every container (podman healthcheck run)",
          not bad and len(ctrs) >= 11,
          "%d containers, all within %.1f s" % (len(ctrs), time.monotonic() - t0) if not bad
          else "; ".join(bad))

    users = {}
    for ctr in (compose.containers("edge") + compose.containers("session") + compose.containers("query")
                + compose.containers("upload") + compose.containers("health-1")):
        p = run(["podman", "exec", ctr["Names"][0], "id", "-u"], timeout=30)
        users[ctr["Names"][0]] = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "?"
    check("Shoal services run as a non-root user", users and all(u == "10001" for u in users.values()),
          "uid %s" % sorted(set(users.values())))

    redis = compose.containers("redis")
    if redis:
        p = run(["podman", "exec", redis[0]["Names"][0], "redis-cli", "config", "get", "appendonly"])
        info = podman_json(["inspect", redis[0]["Id"]])
        mounts = [(m.get("Name"), m.get("Destination")) for m in info[0].get("Mounts", [])] if info else []
        check("Redis: AOF on, data in the named volume",
              p.stdout.split()[-1:] == ["yes"] and (compose.scoped("redis-data"), "/data") in mounts,
              "appendonly=%s mounts=%s" % (p.stdout.split()[-1:], mounts))
    else:
        check("Redis: AOF on, data in the named volume", False, "no redis container")

    primary, replica = compose.containers("postgres-primary"), compose.containers("postgres-replica")
    if primary and replica:
        sql = "select application_name || ' ' || state from pg_stat_replication"
        p = run(["podman", "exec", primary[0]["Names"][0], "psql", "-X", "-A", "-t", "-h", "/var/run/postgresql",
                 "-U", "postgres", "-c", sql], timeout=30)
        streams = [line for line in p.stdout.splitlines() if line.endswith(" streaming")]
        p2 = run(["podman", "exec", replica[0]["Names"][0], "psql", "-X", "-A", "-t", "-h", "/var/run/postgresql",
                  "-U", "postgres", "-c", "select pg_is_in_recovery()::text || ' ' || "
                  "(select status from pg_stat_wal_receiver)"], timeout=30)
        mounts = {}
        for ctr, vol in ((primary[0], "pg-primary-data"), (replica[0], "pg-replica-data")):
            info = podman_json(["inspect", ctr["Id"]])
            mounts[vol] = (compose.scoped(vol), "/var/lib/postgresql/data") in [
                (m.get("Name"), m.get("Destination")) for m in (info[0].get("Mounts", []) if info else [])]
        check("Postgres: the replica streams from the primary (hot standby), data in named volumes",
              len(streams) == 1 and p2.stdout.split()[-2:] == ["true", "streaming"] and all(mounts.values()),
              "primary streams to %s; replica: %s; volumes %s" % (streams, p2.stdout.split()[-2:], mounts))
    else:
        check("Postgres: the replica streams from the primary", False, "no postgres-primary/-replica container")

    s3 = compose.containers("s3")
    script = r"""
const http = require('http');
function req(m, p, body) { return new Promise((ok, ko) => {
  const r = http.request({host: 's3', port: 9000, method: m, path: p,
    headers: body ? {'content-length': Buffer.byteLength(body)} : {}}, res => {
      let d = ''; res.on('data', c => d += c); res.on('end', () => ok([res.statusCode, d])); });
  r.on('error', ko); if (body) r.write(body); r.end(); }); }
(async () => {
  const put = await req('PUT', '/shoal-uploads/containers-test.txt', 'hello shoal');
  const get = await req('GET', '/shoal-uploads/containers-test.txt');
  const del = await req('DELETE', '/shoal-uploads/containers-test.txt');
  const gone = await req('GET', '/shoal-uploads/containers-test.txt');
  // s3rver alone answers 501 to ListMultipartUploads and lets "a/../b" reach the file of b;
  // deploy/local/s3/s3-server, which the image runs, lists them and refuses such keys
  const list = await req('GET', '/shoal-uploads?uploads');
  const dots = await req('PUT', '/shoal-uploads/a/../b', 'x');
  console.log(JSON.stringify([put[0], get[0], get[1], del[0], gone[0], list[0], dots[0]]));
})().catch(e => { console.error(e); process.exit(1); });
"""
    if s3:
        p = run(["podman", "exec", s3[0]["Names"][0], "node", "-e", script], timeout=60)
        try:
            res = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = p.stdout[-300:]
        check("S3 server: PUT, GET, DELETE an object in bucket `shoal-uploads` at http://s3:9000; "
              "it is s3-server (lists multipart uploads, refuses `..` in keys)",
              res == [200, 200, "hello shoal", 204, 404, 200, 400], str(res))
    else:
        check("S3 server: PUT, GET, DELETE an object in bucket `shoal-uploads` at http://s3:9000", False,
              "no s3 container")

    nets = podman_json(["network", "inspect", compose.scoped("internal")])
    internal = bool(nets) and nets[0].get("internal") is True
    published = {}
    for ctr in ctrs:
        info = podman_json(["inspect", ctr["Id"]])
        ports = (info[0].get("HostConfig", {}).get("PortBindings") or {}) if info else {}
        for cport, binds in ports.items():
            for b in binds or []:
                published.setdefault(ctr["Labels"].get("com.docker.compose.service"), []).append(
                    "%s:%s->%s" % (b.get("HostIp"), b.get("HostPort"), cport))
    only_lb = set(published) == {"haproxy"} and all(
        p.startswith("127.0.0.1:") for p in published.get("haproxy", []))
    check("networks: services on an internal network; only HAProxy publishes, on 127.0.0.1",
          internal and only_lb, "internal=%s published=%s" % (internal, published))


def check_scale(compose, args):
    before = {instance_name("session", c) for c in compose.containers("session")}
    t0 = time.monotonic()
    p = compose("up", "-d", "--scale", "session=4", timeout=300)
    if not check("scale session 2 -> 4 (%s up -d --scale session=4)" % compose.tool,
                 p.returncode == 0 and len(compose.containers("session")) == 4,
                 "%d session containers" % len(compose.containers("session"))):
        return
    after = {instance_name("session", c) for c in compose.containers("session")}
    new = after - before

    def registered():
        _, up = cluster_counts(args.https_port)
        return up.get("session", set()) >= after
    ok = wait_for(registered, 20, 0.1)
    t_reg = time.monotonic() - t0
    check("new session instances register and are listed up", bool(ok),
          "%s in %.1f s" % (sorted(new), t_reg))
    if ok:
        figure("scale-out: compose up --scale -> new sessions listed up", "%.1f s" % t_reg)

    # Traffic from several clients at once (the caller picks the least busy instance).
    served = {}
    lock = threading.Lock()

    def worker():
        c = Client(args.https_port)
        try:
            for _ in range(40):
                status, _, body = c.get("/api/session")
                if status == 200:
                    name = json.loads(body)["session_instance"]
                    with lock:
                        served[name] = served.get(name, 0) + 1
        except (OSError, http.client.HTTPException):
            pass
        finally:
            c.close()

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not new <= set(served):
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    check("new session instances serve traffic (named in /api/session replies)",
          bool(new) and new <= set(served), "replies per instance: %s" % served)


class LoadClient(threading.Thread):
    """GET /api/session in a loop on its own keep-alive connection and session."""

    def __init__(self, port, stop):
        super().__init__(daemon=True)
        self.client = Client(port, timeout=5.0)
        self.stop = stop
        self.acked = []      # (t, views, edge, session_instance)
        self.failures = []   # (t, what)
        self.cookies = set()

    def run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                status, _, body = self.client.get("/api/session")
            except (OSError, http.client.HTTPException) as e:
                self.failures.append((time.monotonic(), type(e).__name__))
                time.sleep(0.01)
                continue
            if status == 200:
                doc = json.loads(body)
                self.acked.append((t, doc["views"], doc["edge"], doc["session_instance"]))
                self.cookies.add(self.client.cookie)
            else:
                self.failures.append((time.monotonic(), status))
        self.client.close()


def check_kill(compose, args):
    sessions = compose.containers("session")
    edges = compose.containers("edge")
    if len(sessions) < 2 or len(edges) < 2:
        check("kill under load", False, "need 2 sessions and 2 edges, have %d and %d" % (
            len(sessions), len(edges)))
        return
    victim_s, victim_e = sessions[0], edges[0]
    victim_e_ip = container_ip(victim_e["Id"], compose.scoped("internal"))
    note("victims: session %s (%s), edge %s (%s, %s)" % (
        victim_s["Names"][0], instance_name("session", victim_s), victim_e["Names"][0],
        instance_name("edge", victim_e), victim_e_ip))

    stop = threading.Event()
    clients = [LoadClient(args.https_port, stop) for _ in range(args.clients)]
    for c in clients:
        c.start()
    time.sleep(2.0)

    t_kill_s = time.monotonic()
    p = run(["podman", "kill", victim_s["Names"][0]], timeout=30)
    check("podman kill a session container under load", p.returncode == 0, victim_s["Names"][0])
    time.sleep(3.0)

    # Watch HAProxy's view of the edge about to die.
    states = []

    def watch():
        end = time.monotonic() + 8
        while time.monotonic() < end:
            try:
                states.append((time.monotonic(), haproxy_servers(args.stats_port).get(victim_e_ip)))
            except (OSError, http.client.HTTPException, ValueError, IndexError):
                pass
            time.sleep(0.05)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.3)
    t_kill_e = time.monotonic()
    p = run(["podman", "kill", victim_e["Names"][0]], timeout=30)
    check("podman kill an edge container under load", p.returncode == 0, victim_e["Names"][0])
    time.sleep(6.0)
    stop.set()
    for c in clients:
        c.join(10)
    watcher.join(10)
    t_end = time.monotonic()

    # Final read: one more view per client, with its cookie.
    finals = []
    for c in clients:
        try:
            status, _, body = c.client.get("/api/session")
            finals.append(json.loads(body)["views"] if status == 200 else None)
        except (OSError, http.client.HTTPException, ValueError):
            finals.append(None)
        c.client.close()

    acked = sum(len(c.acked) for c in clients)
    failures = [f for c in clients for f in c.failures]
    by_victims = [sum(1 for c in clients for a in c.acked if a[0] < t and a[pos] == name)
                  for t, pos, name in ((t_kill_s, 3, instance_name("session", victim_s)),
                                       (t_kill_e, 2, instance_name("edge", victim_e)))]
    check("the victims served traffic before their kill", all(by_victims),
          "session %d, edge %d acknowledged replies" % tuple(by_victims))
    lost, dupes, one_session = [], [], True
    for i, c in enumerate(clients):
        views = [a[1] for a in c.acked]
        if len(set(views)) != len(views) or views != sorted(views):
            dupes.append(i)
        if len(c.cookies) > 1:
            one_session = False
        if finals[i] is None or finals[i] < len(views) + 1:
            lost.append((i, len(views), finals[i]))
    figure("kill test load", "%d clients, %.1f s, %d acknowledged views, %d failed requests" % (
        len(clients), t_end - t_kill_s + 2.0, acked, len(failures)))
    check("no acknowledged view lost (final counter >= acknowledged + 1, every client)",
          not lost and one_session and acked > 0,
          "acknowledged %d" % acked if not lost else "lost: %s" % lost)
    check("no duplicate or backward views values among acknowledged replies", not dupes,
          "clients with duplicates: %s" % dupes if dupes else "%d clients" % len(clients))

    # Failures around each kill.
    def window(t0, t1):
        return [f for f in failures if t0 <= f[0] < t1]
    fail_s = window(t_kill_s, t_kill_e)
    fail_e = window(t_kill_e, t_end + 1)
    last_e = max((f[0] for f in fail_e), default=None)
    figure("session kill: failed requests until the edge kill",
           "%d %s" % (len(fail_s), sorted({str(f[1]) for f in fail_s})))
    since = ("last failure %.2f s after the kill" % (last_e - t_kill_e)) if last_e else "none"
    figure("edge kill: failed requests (502/connection) after the kill",
           "%d %s, %s" % (len(fail_e), sorted({str(f[1]) for f in fail_e}), since))
    out_at = None
    for t, st in states:
        if t >= t_kill_e and (st is None or not st.startswith("UP")):
            out_at = t
            break
    before_states = sorted({st for t, st in states if t < t_kill_e and st})
    figure("edge kill: HAProxy marks the dead edge out of rotation",
           ("%.2f s after the kill (was %s, then %s)" % (
               out_at - t_kill_e, before_states, [st for t, st in states if t >= out_at][:1]))
           if out_at else "never seen (states %s)" % sorted({str(s) for _, s in states}))
    check("HAProxy stops sending to the dead edge within %.0f s" % EDGE_OUT_LIMIT_S,
          out_at is not None and out_at - t_kill_e <= EDGE_OUT_LIMIT_S
          and (last_e is None or last_e - t_kill_e <= EDGE_OUT_LIMIT_S),
          "out of rotation after %.2f s; last failed request %s" % (
              (out_at - t_kill_e) if out_at else -1, since))
    late = [a for c in clients for a in c.acked if a[0] > t_kill_e + EDGE_OUT_LIMIT_S]
    late_fail = window(t_kill_e + EDGE_OUT_LIMIT_S, t_end + 1)
    check("after the kills the stack serves without errors (from kill + 3 s to the end)",
          len(late) > 0 and not late_fail and all(
              a[2] != instance_name("edge", victim_e) and a[3] != instance_name("session", victim_s)
              for a in late),
          "%d acknowledged, %d failed" % (len(late), len(late_fail)))

    # The registry saw both die.
    def dead():
        status, doc = get_json(args.https_port, "/api/cluster")
        st = {i["instance"]: i["state"] for i in doc.get("instances", [])}
        return all(st.get(n, "dead") == "dead" for n in (
            instance_name("session", victim_s), instance_name("edge", victim_e)))
    check("/api/cluster shows the killed session and edge as dead", bool(wait_for(dead, 10)))


class BoardLoad(threading.Thread):
    """Writes (POST /api/items) or reads (GET /api/items, GET /api/items/:id) in a loop on
    its own logged-in keep-alive connection."""

    def __init__(self, port, user, stop, writer, tag):
        super().__init__(daemon=True)
        self.board = Board(port)
        self.user, self.stop, self.writer, self.tag = user, stop, writer, tag
        self.acked = []      # (t, item id, title) of writes answered 201; (t, None, None) for reads
        self.failures = []   # (t, what)
        self.n = 0

    def run(self):
        try:
            st, doc, _ = self.board.call("POST", "/api/auth/login", {"username": self.user, "password": PASSWORD})
            if st != 200:
                self.failures.append((time.monotonic(), "login %d" % st))
                return
        except (OSError, http.client.HTTPException) as e:
            self.failures.append((time.monotonic(), "login " + type(e).__name__))
            return
        last_id = None
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                if self.writer:
                    self.n += 1
                    title = "load %s %d" % (self.tag, self.n)
                    st, doc, _ = self.board.call("POST", "/api/items", {"title": title, "body": "x"})
                    if st == 201:
                        self.acked.append((t, doc["item"]["id"], title))
                    else:
                        self.failures.append((time.monotonic(), st))
                else:
                    path = "/api/items/%d" % last_id if last_id and self.n % 2 else "/api/items?limit=5"
                    self.n += 1
                    st, doc, _ = self.board.call("GET", path)
                    if st == 200:
                        self.acked.append((t, None, None))
                        last_id = (item_ids(doc)[:1] or [last_id])[0] if "items" in (doc or {}) else last_id
                    else:
                        self.failures.append((time.monotonic(), st))
            except (OSError, http.client.HTTPException) as e:
                self.failures.append((time.monotonic(), type(e).__name__))
                time.sleep(0.01)
        self.board.close()


def check_query_scale_kill(compose, args, user):
    t0 = time.monotonic()
    p = compose("up", "-d", "--scale", "session=4", "--scale", "query=2", timeout=300)
    queries = compose.containers("query")
    if not check("scale query %d -> 2 (%s up -d --scale query=2)" % (START_QUERIES, compose.tool),
                 p.returncode == 0 and len(queries) == 2, "%d query containers" % len(queries)):
        return
    names = {instance_name("query", c) for c in queries}

    def registered():
        _, up = cluster_counts(args.https_port)
        return up.get("query", set()) >= names
    ok = wait_for(registered, 30, 0.1)
    check("both query instances registered and listed up", bool(ok),
          "%s in %.1f s" % (sorted(names), time.monotonic() - t0))
    if ok:
        figure("scale-out: compose up --scale query=2 -> listed up", "%.1f s" % (time.monotonic() - t0))

    victim = queries[0]
    stop = threading.Event()
    load = [BoardLoad(args.https_port, user, stop, writer=True, tag="w%d" % i) for i in range(3)]
    load += [BoardLoad(args.https_port, user, stop, writer=False, tag="r%d" % i) for i in range(2)]
    for c in load:
        c.start()
    time.sleep(2.5)
    t_kill = time.monotonic()
    p = run(["podman", "kill", victim["Names"][0]], timeout=30)
    check("podman kill a query container under a read/write load", p.returncode == 0,
          "%s (%s)" % (victim["Names"][0], instance_name("query", victim)))
    time.sleep(6.0)
    stop.set()
    for c in load:
        c.join(15)
    t_end = time.monotonic()

    writes = [a for c in load if c.writer for a in c.acked]
    reads = [a for c in load if not c.writer for a in c.acked]
    failures = [f for c in load for f in c.failures]
    before = [a for a in writes + reads if a[0] < t_kill]
    late = t_kill + QUERY_KILL_LIMIT_S
    late_w = [a for a in writes if a[0] > late]
    late_r = [a for a in reads if a[0] > late]
    late_fail = [f for f in failures if f[0] > late]
    at_kill = [f for f in failures if t_kill <= f[0] <= late]
    figure("query kill: load", "%d acknowledged writes, %d reads, %d failed requests (%d within %.0f s of the kill: %s)"
           % (len(writes), len(reads), len(failures), len(at_kill), QUERY_KILL_LIMIT_S,
              sorted({str(f[1]) for f in at_kill})))
    check("the load ran before the kill", len(before) > 0 and not [f for f in failures if f[0] < t_kill],
          "%d acknowledged, failures %s" % (len(before), [f for f in failures if f[0] < t_kill][:5]))
    check("reads and writes go on after the query kill (from kill + %.0f s to the end, no failure)"
          % QUERY_KILL_LIMIT_S, late_w and late_r and not late_fail,
          "%d writes, %d reads acknowledged; failures %s" % (len(late_w), len(late_r), late_fail[:5]))

    # Every acknowledged write is there exactly once (reads with the writer's lsn cookie: a
    # fresh client reads what any replica has; the primary answers what it does not).
    b = Board(args.https_port)
    # The writers' newest read-your-writes token: reads wait for (or skip) a lagging replica.
    lsns = [int(c.board.cookies.get("shoal_lsn", "0")) for c in load if c.writer
            if c.board.cookies.get("shoal_lsn", "0").isdigit()]
    if lsns:
        b.cookies["shoal_lsn"] = str(max(lsns))
    try:
        missing = []
        for _, item_id, title in writes:
            st, doc, _ = b.call("GET", "/api/items/%d" % item_id)
            if st != 200 or ((doc or {}).get("item") or {}).get("title") != title:
                missing.append((item_id, st))
        seen, cursor, pages = {}, None, 0
        while pages < len(writes) // 100 + 20:
            st, doc, _ = b.call("GET", "/api/items?limit=100" + ("&cursor=%s" % cursor if cursor else ""))
            if st != 200:
                break
            for it in doc.get("items") or []:
                if it.get("title", "").startswith("load "):
                    seen.setdefault(it["title"], []).append(it["id"])
            cursor, pages = doc.get("next_cursor"), pages + 1
            if not cursor:
                break
        doubled = {t: ids for t, ids in seen.items() if len(ids) > 1}
        unlisted = [title for _, _, title in writes if title not in seen]
        check("no acknowledged item lost (each readable by id with its title, and listed)",
              writes and not missing and not unlisted,
              "%d checked" % len(writes) if not missing and not unlisted
              else "missing %s, not listed %s" % (missing[:5], unlisted[:5]))
        check("no item stored twice (one id per title, the edge's idempotency keys)", not doubled and seen,
              "%d titles listed, %d pages" % (len(seen), pages) if not doubled
              else "doubled %s" % list(doubled.items())[:3])
    except (OSError, http.client.HTTPException, ValueError) as e:
        check("after the query kill: every acknowledged item readable", False, repr(e))
    finally:
        b.close()

    def dead():
        _, doc = get_json(args.https_port, "/api/cluster")
        st = {i["instance"]: i["state"] for i in doc.get("instances", [])}
        return st.get(instance_name("query", victim), "dead") == "dead"
    check("/api/cluster shows the killed query instance as dead", bool(wait_for(dead, 10)))
    figure("query kill: test span", "%.1f s" % (t_end - t_kill + 2.5))


def stop_stack(compose, label, volumes=True):
    t0 = time.monotonic()
    p = compose("down", "-v", timeout=300) if volumes else compose("down", timeout=300)
    t = time.monotonic() - t0
    left = compose.containers(all_states=True)
    check("%s: down -v removes the project's containers" % label,
          p.returncode == 0 and not left,
          "%.1f s" % t if not left else "left: %s" % [c["Names"][0] for c in left])
    figure("%s down" % label, "%.1f s" % t)


def dump_logs(compose, path):
    try:
        with open(path, "w") as f:
            for ctr in compose.containers(all_states=True):
                p = run(["podman", "logs", "--tail", "200", ctr["Names"][0]], timeout=30)
                f.write("==== %s (%s)\n%s\n" % (ctr["Names"][0], ctr.get("State"), p.stdout))
        note("container logs: %s" % path)
    except (OSError, subprocess.SubprocessError) as e:
        note("could not save container logs: %r" % e)


def main(argv):
    global LOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tool", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--compose-file", required=True)
    ap.add_argument("--https-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--stats-port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--log")
    ap.add_argument("--logs-on-failure")
    ap.add_argument("--browser", help="tests/browser: run board.test.mjs against the stack")
    ap.add_argument("--browser-artifacts", help="SHOAL_ARTIFACTS of that run (screenshots)")
    args = ap.parse_args(argv)
    if args.log:
        LOG = open(args.log, "a")
    label = os.path.basename(args.tool)
    compose = Compose(args)
    try:
        if start_stack(compose, args, label):
            check_counter(args, label)
            want = {"edge": 2, "session": 2, "query": START_QUERIES, "upload": START_UPLOADS, "health": 2}
            check_cluster(compose, args, label, want)
            user = "ct%d" % random.randrange(10 ** 6)
            if not args.full:
                b = check_board(args, label, user)
                if b:
                    b.close()
                    check_upload(args, label, user)
                    check_live_updates(args, label, user)
                if args.browser:
                    check_browser(args, label)
            else:
                check_http_redirect(args)
                check_tls_and_headers(args)
                check_images_and_runtime(compose, args)
                check_scale(compose, args)
                b = check_board(args, label, user)
                if b:
                    b.close()
                    check_upload(args, label, user)
                    check_live_updates(args, label, user)
                if args.browser:
                    check_browser(args, label)
                if b:
                    check_query_scale_kill(compose, args, user)
                    check_upload_scale(compose, args, user)
                check_kill(compose, args)
    except Exception as e:  # a crash of the harness is a failed check, and the stack still goes
        check("%s: test harness" % label, False, repr(e))
    finally:
        if FAILED and args.logs_on_failure:
            dump_logs(compose, args.logs_on_failure)
        stop_stack(compose, label)
    print("checks: %d passed, %d failed" % (len(PASSED), len(FAILED)), flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
