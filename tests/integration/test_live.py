"""Integration tests of live updates: GET /ws on real edges, events from
real query and session instances through their Redis history (README.md
"Live updates: GET /ws"; the history's keys and script: common/sh_events.c).

One stack serves the whole file: a registry, Redis, Postgres (no
replica), one session, one query and one upload instance on the S3 test
server, two edges; tests that need other edge settings add an edge of
their own. The WebSocket client is shoal_stack.WebSocket (standard
library, every byte under the test's control). Run with
tests/integration/run live.
"""

import base64
import concurrent.futures
import hashlib
import hmac
import os
import re
import signal
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from shoal_stack import WS_PING, WS_PONG, Stack, WebSocket, WsClosed, WsRefused, wait_until  # noqa: E402
from test_board import HIGH_LIMITS, BoardCase, nonce  # noqa: E402

HISTORY = 30          # SHOAL_EVENTS_HISTORY of query and session: events kept per channel
MAX_CHANNELS = 8      # SHOAL_WS_MAX_CHANNELS of the stack's edges
MAX_MESSAGE = 4096    # SHOAL_WS_MAX_MESSAGE_BYTES (the default)
MESSAGE_RATE = 20     # SHOAL_WS_MESSAGE_RATE (the default): burst twice that
QUEUE_BYTES = 65536   # SHOAL_WS_QUEUE_BYTES of the edge the stalled clients use
RSS_SLACK = 2 * 1024 * 1024  # what an edge may grow besides one client's queue
READY_TIMEOUT_MS = 1500      # SHOAL_EVENTS_READY_TIMEOUT_MS of the edges
EVENT_WAIT_S = 10.0          # an event reaches a subscribed client within this

LIVE_EDGE_ENV = dict(HIGH_LIMITS, SHOAL_WS_MAX_CHANNELS=str(MAX_CHANNELS),
                     SHOAL_EVENTS_CANARY_MS="200",
                     SHOAL_EVENTS_READY_TIMEOUT_MS=str(READY_TIMEOUT_MS))
HISTORY_ENV = {"SHOAL_EVENTS_HISTORY": str(HISTORY)}
UPLOAD_ENV = {"SHOAL_UPLOAD_SWEEP_INTERVAL_MS": "0"}
ITEM_FIELDS = {"id", "title", "excerpt", "author", "author_id", "created_at"}
REDIS_PREFIX = "shoal:"  # SHOAL_REDIS_PREFIX (the default)

_STACK = []


def setUpModule():
    _STACK.append(Stack(sessions=1, edges=2, queries=1, healths=1, postgres=True, replica=False,
                        uploads=1, edge_env=LIVE_EDGE_ENV, query_env=HISTORY_ENV,
                        session_env=HISTORY_ENV, upload_env=UPLOAD_ENV).start())


def tearDownModule():
    while _STACK:
        stack = _STACK.pop()
        stack.close()
        stack.cleanup()


# ------------------------------------------------------------------ helpers

METRIC_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics(edge):
    """An edge's /metrics as {'name{labels}': value}, without the service
    and instance labels every sample carries."""
    reply = edge.get("/metrics")
    assert reply.status == 200, reply
    out = {}
    for line in reply.body.decode("utf-8").splitlines():
        m = METRIC_RE.match(line)
        if not m:
            continue
        labels = ['%s="%s"' % kv for kv in LABEL_RE.findall(m.group(2) or "")
                  if kv[0] not in ("service", "instance")]
        out[m.group(1) + ("{%s}" % ",".join(labels) if labels else "")] = float(m.group(3))
    return out


def metric(edge, key):
    return metrics(edge).get(key, 0.0)


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def ws_proof(secret_hex, sid, user_id, expires_s):
    """A shoal_ws value signed as the edges sign it."""
    text = "ws1|%s|%d|%d" % (sid, user_id, expires_s)
    mac = hmac.new(bytes.fromhex(secret_hex), text.encode(), hashlib.sha256).digest()
    return "%d.%d.%s" % (user_id, expires_s, base64.urlsafe_b64encode(mac).rstrip(b"=").decode())


def of_type(msgs, kind, channel=None):
    return [m for m in msgs if m.get("type") == kind and
            (channel is None or m.get("channel") == channel)]


def stall_opts():
    """Socket options of a client that stops reading: a small receive
    buffer and MSS keep what the kernels buffer for it small (loopback's
    64 KiB MSS would let the edge's send buffer take megabytes)."""
    return [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),
            (socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)]


class LiveCase(BoardCase):
    """The file's shared stack, BoardCase's helpers (user, item, logs on
    failure) and WebSocket helpers."""

    @classmethod
    def setUpClass(cls):
        cls.stack = _STACK[0]

    @classmethod
    def tearDownClass(cls):
        cls.stack = None

    def setUp(self):
        super().setUp()
        s = self.stack
        self.running = [p for p in list(s.edges) + list(s.sessions) + list(s.queries) +
                        list(s.uploads) if p.alive()]
        self.addCleanup(self.check_services_alive)

    def check_services_alive(self):
        """A service that died during the test fails it (one a test stopped
        has its exit recorded; one that died has not)."""
        dead = ["%s (status %s)" % (p.name, p.returncode()) for p in self.running
                if not p.alive() and not p.exit_codes]
        self.assertEqual(dead, [], "service processes exited during the test")

    def on_edge(self, b, edge):
        """A Browser on another edge with b's cookies and token."""
        other = b.copy()
        other.port = edge.port
        self.addCleanup(other.close)
        return other

    def connect(self, b, edge=None, refresh=True, hello=True, **kw):
        """A WebSocket of browser b on `edge` (default: b's own): GET
        /api/me first (a fresh shoal_ws), then the upgrade; with hello,
        the hello is read and checked. Closed at cleanup."""
        edge = edge or self.edge_of(b)
        if refresh:
            there = self.on_edge(b, edge)
            r = there.me()
            self.assertEqual(r.status, 200, r)
            b.cookies = dict(there.cookies)
        ws = WebSocket(edge.port, cookie=b.cookie_header(), **kw).connect()
        self.addCleanup(ws.close)
        self.assertEqual(ws.protocol, "shoal.v1", ws.reply)
        if hello:
            msg = ws.recv()
            self.assertEqual(msg, {"type": "hello", "edge": edge.name, "user": b.user["username"]})
        return ws

    def main_edges(self):
        """The stack's own two edges (not those tests add)."""
        return self.stack.edges[:2]

    def edge_of(self, b):
        return next(e for e in self.stack.edges if e.port == b.port)

    def subscribe(self, ws, channel, since=None, timeout=EVENT_WAIT_S):
        """Subscribe and read up to the `subscribed` (or error) for the
        channel; returns (messages before it, that message)."""
        msg = {"type": "subscribe", "channel": channel}
        if since is not None:
            msg["since"] = since
        ws.send_json(msg)
        seen = ws.recv_until(lambda m: m.get("type") in ("subscribed", "error") and
                             m.get("channel") == channel, timeout,
                             "subscribed to %s" % channel)
        return seen[:-1], seen[-1]

    def subscribed(self, ws, channel, since=None):
        before, last = self.subscribe(ws, channel, since)
        self.assertEqual(last.get("type"), "subscribed", last)
        return before, last

    def expect_events(self, ws, channel, pred, what, timeout=EVENT_WAIT_S):
        """Read until an event on `channel` matches pred; every event on
        the channel read meanwhile, the match last."""
        seen = ws.recv_until(lambda m: m.get("type") == "event" and m.get("channel") == channel
                             and pred(m), timeout, what)
        return of_type(seen, "event", channel)

    def list_entry(self, b, item_id):
        r = b.list_items(limit=100)
        self.assertEqual(r.status, 200, r)
        for it in r.json()["items"]:
            if it["id"] == item_id:
                return it
        self.fail("item %s is not on the first page of GET /api/items" % item_id)

    def assert_contiguous(self, events, epoch, first):
        """Ordered events of one channel: epoch `epoch`, offsets first, first+1, ..."""
        got = [(e.get("epoch"), e.get("offset")) for e in events]
        want = [(epoch, first + i) for i in range(len(events))]
        self.assertEqual(got, want, "epochs/offsets of %d events" % len(events))

    def refused(self, port, **kw):
        """The upgrade's refusal (a Reply); fails when it was accepted."""
        try:
            ws = WebSocket(port, **kw).connect()
        except WsRefused as e:
            return e.reply
        ws.close()
        self.fail("upgrade accepted (%r)" % (kw,))

    def assert_refusal(self, reply, status, code):
        err = self.assert_error(reply, status, code)
        self.assertEqual(reply.header("Connection", "").lower(), "close", reply)
        if status == 503:
            self.assertEqual(reply.header("Retry-After"), "1", reply)
        return err

    def board_offset(self):
        """(epoch, top) of the board's history in Redis."""
        meta = self.stack.redis.call("HGETALL", REDIS_PREFIX + "ev:board:meta") or []
        meta = dict(zip(meta[::2], meta[1::2]))
        return meta.get("epoch", ""), int(meta.get("top", 0))


# ------------------------------------------------------------------ upgrade

class LiveUpgrade(LiveCase):
    """What the edge checks before 101, and the session check after it."""

    def test_accepted_upgrade_hello_and_ping(self):
        b = self.user("ws")
        for edge in self.main_edges():
            with self.subTest(edge=edge.name):
                ws = self.connect(b, edge)
                ws.send_json({"type": "ping"})
                self.assertEqual(ws.recv(), {"type": "pong"})
                ws.send_json({"type": "dance"})
                err = ws.recv()
                self.assertEqual((err["type"], err["code"]), ("error", "invalid"), err)
                ws.send_json({"type": "subscribe", "channel": "board",
                              "since": {"epoch": 5, "offset": "x"}})
                err = ws.recv()
                self.assertEqual((err["type"], err["code"], err.get("channel")),
                                 ("error", "invalid", "board"), err)
                ws.send_json({"type": "ping"})
                self.assertEqual(ws.recv(), {"type": "pong"})

    def test_malformed_messages(self):
        b = self.user("ws")
        ws = self.connect(b)
        for text in ("not json", "[1, 2]", '"ping"', '{"type": "ping", "type": "ping"}'):
            with self.subTest(text=text):
                ws.send(text)
                err = ws.recv()
                self.assertEqual((err["type"], err["code"]), ("error", "invalid"), err)
        ws.send_json({"type": "ping"})
        self.assertEqual(ws.recv(), {"type": "pong"})
        ws.send_frame(0x2, b'{"type":"ping"}')
        self.assertEqual(ws.wait_close(), 1003)

    def test_allowed_origins_open_the_upgrade(self):
        """An Origin listed in SHOAL_ALLOWED_ORIGINS (spaces around entries
        ignored) is accepted; one merely starting like it is not."""
        edge = self.stack.add_edge(name="edge-origins", env={
            "SHOAL_ALLOWED_ORIGINS": "https://app.example , https://other.example"})
        self.addCleanup(edge.stop)
        b = self.user("wsorigin")
        ws = self.connect(b, edge, origin="https://app.example")
        ws.send_json({"type": "ping"})
        self.assertEqual(ws.recv_until(lambda m: m.get("type") == "pong")[-1], {"type": "pong"})
        self.assert_refusal(self.refused(edge.port, cookie=b.cookie_header(),
                                         origin="https://app.example.evil"), 403, "forbidden")

    def test_refusals_before_101(self):
        s = self.stack
        edge = s.edge
        a, other = self.user("wsa"), self.user("wsb")
        self.assertEqual(a.me().status, 200)
        self.assertEqual(other.me().status, 200)
        sid, proof = a.cookies["shoal_sid"], a.cookies["shoal_ws"]
        uid = a.user["id"]
        future = int(time.time()) + 600
        good = "shoal_sid=%s; shoal_ws=%s" % (sid, proof)
        before = metrics(edge)
        cases = [
            # (what, upgrade arguments, status, code, metric reason)
            ("no cookies", {}, 401, "unauthorized", "auth"),
            ("session cookie only", {"cookie": "shoal_sid=" + sid}, 401, "unauthorized", "auth"),
            ("proof only", {"cookie": "shoal_ws=" + proof}, 401, "unauthorized", "auth"),
            ("forged proof", {"cookie": "shoal_sid=%s; shoal_ws=%d.%d.%s" % (
                sid, uid, future, base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=")
                .decode())}, 401, "unauthorized", "auth"),
            ("proof signed with another key", {"cookie": "shoal_sid=%s; shoal_ws=%s" % (
                sid, ws_proof(os.urandom(32).hex(), sid, uid, future))}, 401, "unauthorized",
             "auth"),
            ("expired proof", {"cookie": "shoal_sid=%s; shoal_ws=%s" % (
                sid, ws_proof(s.edge_secret, sid, uid, int(time.time()) - 5))}, 401,
             "unauthorized", "auth"),
            ("other session's proof", {"cookie": "shoal_sid=%s; shoal_ws=%s" % (
                sid, other.cookies["shoal_ws"])}, 401, "unauthorized", "auth"),
            ("proof with another user id", {"cookie": "shoal_sid=%s; shoal_ws=%d%s" % (
                sid, uid + 1, proof[len(str(uid)):])}, 401, "unauthorized", "auth"),
            ("foreign origin", {"cookie": good, "origin": "http://evil.example"}, 403,
             "forbidden", "origin"),
            ("origin of another port", {"cookie": good,
                                        "origin": "http://127.0.0.1:%d" % s.edges[1].port},
             403, "forbidden", "origin"),
            ("no origin", {"cookie": good, "origin": None}, 403, "forbidden", "origin"),
            ("no subprotocol", {"cookie": good, "protocols": ()}, 400, "invalid", "invalid"),
            ("other subprotocol", {"cookie": good, "protocols": ("chat",)}, 400, "invalid",
             "invalid"),
        ]
        for what, kw, status, code, reason in cases:
            with self.subTest(what):
                self.assert_refusal(self.refused(edge.port, **kw), status, code)
        after = metrics(edge)
        for reason, n in (("auth", 8), ("origin", 3), ("invalid", 2)):
            key = 'shoal_ws_rejected_total{reason="%s"}' % reason
            self.assertEqual(after.get(key, 0) - before.get(key, 0), n, key)
        # the edge's own signature is what it checks: a proof signed with the
        # stack's key is accepted, so the expired one above failed on its date
        ws = WebSocket(edge.port, cookie="shoal_sid=%s; shoal_ws=%s" % (
            sid, ws_proof(s.edge_secret, sid, uid, future))).connect()
        self.addCleanup(ws.close)
        self.assertEqual(ws.recv()["type"], "hello")

    def test_proof_with_another_user_of_the_session_is_closed_4401(self):
        """A proof the edges signed, but for a user the session is not
        logged in as, passes the upgrade; the session check after 101
        closes it."""
        a, other = self.user("wsa"), self.user("wsb")
        sid = a.cookies["shoal_sid"]
        cookie = "shoal_sid=%s; shoal_ws=%s" % (
            sid, ws_proof(self.stack.edge_secret, sid, other.user["id"], int(time.time()) + 600))
        ws = WebSocket(self.stack.edge.port, cookie=cookie).connect()
        self.addCleanup(ws.close)
        self.assertEqual(ws.wait_close(), 4401)

    def test_logout_ends_live_access(self):
        edge = self.stack.edge
        b = self.user("wsout")
        open_ws = self.connect(b)
        stale = b.cookie_header()
        ended = 'shoal_ws_closed_total{reason="session"}'
        edges = self.main_edges()

        def closed_total():
            return sum(metric(e, ended) for e in edges)
        before = closed_total()
        self.assertEqual(b.logout().status, 204)
        # the session service announces the end: the open connection closes at once
        with self.assertRaises(WsClosed) as closed:
            while True:
                open_ws.recv()
        self.assertEqual(closed.exception.code, 4401, closed.exception)
        self.assertEqual(closed_total() - before, 1)
        # logout clears the proof cookie: the browser has none left
        self.assertNotIn("shoal_ws", b.cookies)
        self.assert_refusal(self.refused(edge.port, cookie=b.cookie_header()), 401,
                            "unauthorized")
        # stale cookies still carry a signature the edge accepts before 101;
        # the session check after it closes the connection: 4401, no hello
        for e in self.main_edges():
            with self.subTest(edge=e.name):
                ws = WebSocket(e.port, cookie=stale).connect()
                self.addCleanup(ws.close)
                try:
                    msg = ws.recv()
                    self.fail("a message before the close: %r" % (msg,))
                except WsClosed as closed:
                    self.assertEqual(closed.code, 4401, closed)
        self.assertEqual(closed_total() - before, 1 + len(edges))

    def test_connection_limit_and_rate_503(self):
        b = self.user("wslim")
        edge = self.stack.add_edge(name="edge-limits", env={"SHOAL_WS_MAX_CONNECTIONS": "2",
                                                            "SHOAL_WS_CONNECT_RATE": "1"})
        self.addCleanup(edge.stop)
        first = self.connect(b, edge)
        # the bucket (1 per second, burst 1) is empty right after the first
        self.assert_refusal(self.refused(edge.port, cookie=b.cookie_header()), 503,
                            "unavailable")
        self.assertEqual(metric(edge, 'shoal_ws_rejected_total{reason="rate"}'), 1)

        def second():
            try:
                return WebSocket(edge.port, cookie=b.cookie_header()).connect()
            except WsRefused as e:
                self.assertEqual(e.reply.status, 503, e.reply)
                return None
        ws2 = wait_until(second, 5, "a second connection once the rate allows it",
                         interval=0.1)
        self.addCleanup(ws2.close)
        self.assertEqual(ws2.recv()["type"], "hello")
        self.assertEqual(metric(edge, "shoal_ws_connections"), 2)
        # two open: the third is refused for room, whatever the rate says
        reply = self.refused(edge.port, cookie=b.cookie_header())
        self.assert_refusal(reply, 503, "unavailable")
        self.assertEqual(metric(edge, 'shoal_ws_rejected_total{reason="full"}'), 1,
                         "the third was refused for room, not rate: %r" % (reply,))
        first.close()
        wait_until(lambda: metric(edge, "shoal_ws_connections") == 1, 5,
                   "the closed connection to be counted out")
        ws3 = wait_until(second, 5, "a connection after one closed", interval=0.1)
        self.addCleanup(ws3.close)
        self.assertEqual(ws3.recv()["type"], "hello")


# ----------------------------------------------------------------- channels

class LiveChannels(LiveCase):
    """What each channel carries, and the per-connection limits."""

    def test_board_created_and_deleted_in_order(self):
        b = self.user("board")
        ws = self.connect(b)
        before, sub = self.subscribed(ws, "board")
        self.assertEqual(before, [])
        self.assertNotIn("recovered", sub)
        self.assertIsInstance(sub["epoch"], str)
        self.assertIsInstance(sub["offset"], int)
        items = [self.item(b, "live " + nonce(6), "body %d" % i) for i in range(3)]
        self.assertEqual(b.delete_item(items[1]["id"]).status, 204)
        last_id = items[1]["id"]
        events = self.expect_events(ws, "board", lambda m: m["event"] == "item_deleted" and
                                    m["data"] == {"id": last_id}, "item_deleted")
        mine = [e for e in events if e["event"] == "item_deleted" or
                e["data"]["item"]["id"] in {it["id"] for it in items}]
        self.assertEqual([e["event"] for e in mine], ["item_created"] * 3 + ["item_deleted"])
        for ev, it in zip(mine, items):
            self.assertEqual(set(ev["data"]), {"item"}, ev)
            self.assertEqual(set(ev["data"]["item"]), ITEM_FIELDS, ev)
            if it is not items[1]:
                self.assertEqual(ev["data"]["item"], self.list_entry(b, it["id"]))
            self.assertIsInstance(ev["ts"], int)
        epoch = sub["epoch"] or events[0]["epoch"]
        self.assertTrue(epoch)
        self.assert_contiguous(events, epoch, sub["offset"] + 1)

    def test_item_channel_attachment_and_views(self):
        b = self.user("itemch")
        item = self.item(b)
        ws = self.connect(b)
        _, sub = self.subscribed(ws, "item:%d" % item["id"])
        self.assertEqual(sub["channel"], "item:%d" % item["id"])
        self.subscribed(ws, "board")
        data = b"live attachment\n" * 10
        r = b.request("POST", "/api/uploads?item_id=%d" % item["id"], body=data,
                      headers={"Content-Type": "text/plain", "X-File-Name": "live.txt"})
        self.assertEqual(r.status, 201, r)
        att = r.json()["attachment"]
        chan = "item:%d" % item["id"]
        wanted = {chan, "board"}

        def both(m):
            if m.get("type") == "event" and m["event"] == "attachment_created" and \
                    m["data"]["attachment"]["id"] == att["id"]:
                wanted.discard(m["channel"])
            return not wanted
        seen = ws.recv_until(both, EVENT_WAIT_S, "attachment_created on %s and board" % chan)
        events = of_type(seen, "event", chan)
        self.assertEqual([m["event"] for m in events], ["attachment_created"])
        listed = b.request("GET", "/api/items/%d/attachments" % item["id"])
        self.assertEqual(listed.status, 200, listed)
        entry = [a for a in listed.json()["attachments"] if a["id"] == att["id"]]
        self.assertEqual(events[0]["data"], {"item_id": item["id"], "attachment": entry[0]})
        self.assertEqual(events[0]["offset"], sub["offset"] + 1)
        if sub["epoch"]:
            self.assertEqual(events[0]["epoch"], sub["epoch"])
        on_board = [m for m in of_type(seen, "event", "board")
                    if m["event"] == "attachment_created"]
        self.assertEqual([m["data"] for m in on_board], [events[0]["data"]])
        # views: a latest value, no epoch or offset
        views = None
        for _ in range(3):
            r = b.get_item(item["id"])
            self.assertEqual(r.status, 200, r)
            views = r.json()["item"]["views"]
        events = self.expect_events(ws, chan, lambda m: m["event"] == "views" and
                                    m["data"]["views"] == views, "views %d" % views)
        for ev in events:
            self.assertEqual(set(ev), {"type", "channel", "event", "data", "ts"}, ev)
            self.assertEqual(ev["data"]["item_id"], item["id"])

    def test_me_counts_this_session_only(self):
        b, other = self.user("me"), self.user("other")
        ws = self.connect(b)
        _, sub = self.subscribed(ws, "me")
        self.assertEqual(sub, {"type": "subscribed", "channel": "me"})
        for _ in range(2):
            r = other.request("GET", "/api/session")
            self.assertEqual(r.status, 200, r)
        r = b.request("GET", "/api/session")
        self.assertEqual(r.status, 200, r)
        views = r.json()["views"]
        seen = ws.recv_until(lambda m: m.get("type") == "event", EVENT_WAIT_S, "views on me")
        self.assertEqual(seen, [{"type": "event", "channel": "me", "event": "views",
                                 "data": {"views": views}, "ts": seen[-1].get("ts")}])
        # the other session's counting never reached this connection
        ws.send_json({"type": "ping"})
        self.assertEqual(ws.recv(), {"type": "pong"})

    def test_cluster_member_events(self):
        b = self.user("cluster")
        ws = self.connect(b)
        _, sub = self.subscribed(ws, "cluster")
        self.assertEqual(sub, {"type": "subscribed", "channel": "cluster"})
        up = self.stack.add_upload(name="upload-live")

        def member(state):
            return lambda m: (m["event"] == "member" and m["data"]["instance"] == up.name and
                              m["data"]["state"] == state)
        joined = self.expect_events(ws, "cluster", member("up"), "upload-live up")[-1]
        self.assertEqual(joined["data"]["service"], "upload")
        self.assertEqual(joined["data"]["endpoint"], up.endpoint)
        self.assertNotIn("offset", joined)
        up.stop()
        left = self.expect_events(ws, "cluster", lambda m: m["event"] == "member" and
                                  m["data"]["instance"] == up.name and
                                  m["data"]["state"] in ("draining", "dead"),
                                  "upload-live draining or dead", timeout=15)[-1]
        # the design's member data: service, instance, state, endpoint, change
        self.assertEqual(joined["data"].get("change"), "joined", joined)
        self.assertIn(left["data"].get("change"), ("changed", "left"), left)

    def test_unknown_channels(self):
        b = self.user("unknown")
        ws = self.connect(b)
        sid_hash = hashlib.blake2b(b.cookies["shoal_sid"].encode(), digest_size=64).digest()
        for name in ("bogus", "item:", "item:abc", "item:-1", "canary", "s:" + sid_hash[:16].hex(),
                     "Board", ""):
            with self.subTest(channel=name):
                _, err = self.subscribe(ws, name)
                self.assertEqual((err["type"], err["code"]), ("error", "unknown_channel"), err)

    def test_too_many_channels(self):
        b = self.user("many")
        ws = self.connect(b)
        for i in range(MAX_CHANNELS):
            self.subscribed(ws, "item:%d" % (1000000 + i))
        _, err = self.subscribe(ws, "board")
        self.assertEqual((err["type"], err["code"]), ("error", "too_many_channels"), err)
        ws.send_json({"type": "unsubscribe", "channel": "item:1000000"})
        self.assertEqual(ws.recv(), {"type": "unsubscribed", "channel": "item:1000000"})
        self.subscribed(ws, "board")

    def test_subscribing_again_starts_over(self):
        """A second subscribe to a channel replaces the first (one slot, one
        stream of events). On an edge of its own: the channel may have no
        other subscriber at that moment."""
        edge = self.stack.add_edge(name="edge-resub")
        self.addCleanup(edge.stop)
        b = self.user("resub")
        ws = self.connect(b, edge)
        item = self.item(b)
        chan = "item:%d" % item["id"]
        for _ in range(MAX_CHANNELS + 1):
            _, sub = self.subscribed(ws, chan)
        _, sub = self.subscribed(ws, "board")
        self.subscribed(ws, chan)
        self.assertEqual(b.delete_item(item["id"]).status, 204)
        seen = ws.recv_until(lambda m: m.get("channel") == chan and m.get("type") == "event",
                             EVENT_WAIT_S, "item_deleted on " + chan)
        self.assertEqual([m["event"] for m in of_type(seen, "event", chan)], ["item_deleted"])
        ws.send_json({"type": "ping"})
        self.assertEqual(ws.recv(), {"type": "pong"})
        self.assertTrue(edge.alive(), "the edge exited: %s" % edge.log_tail(400))

    def test_message_too_big_1009(self):
        b = self.user("big")
        ws = self.connect(b)
        ws.send("x" * (MAX_MESSAGE + 1))
        self.assertEqual(ws.wait_close(), 1009)
        # the cap holds for a message sent in fragments too
        ws = self.connect(b)
        ws.send_frame(0x1, "[" + " " * (MAX_MESSAGE // 2), fin=False)
        ws.send_frame(0x0, " " * (MAX_MESSAGE // 2) + "]")
        self.assertEqual(ws.wait_close(), 1009)
        # a fragmented message under the cap is fine
        ws = self.connect(b)
        ws.send_frame(0x1, '{"type":', fin=False)
        ws.send_frame(0x0, '"ping"}')
        self.assertEqual(ws.recv(), {"type": "pong"})

    def test_message_rate_1008(self):
        b = self.user("fast")
        ws = self.connect(b)
        # within the burst: every ping answered
        for _ in range(MESSAGE_RATE):
            ws.send_json({"type": "ping"})
        for _ in range(MESSAGE_RATE):
            self.assertEqual(ws.recv(), {"type": "pong"})
        try:
            for _ in range(4 * MESSAGE_RATE):
                ws.send_json({"type": "ping"})
        except OSError:
            pass  # closed while sending
        self.assertEqual(ws.wait_close(), 1008)


# ------------------------------------------------------------------- resume

class LiveResume(LiveCase):
    """A client that lost its connection resumes on the other edge."""

    def read_board(self, ws, item_ids, what):
        """Board events up to item_created of the last of item_ids."""
        last = item_ids[-1]
        return self.expect_events(ws, "board", lambda m: m["event"] == "item_created" and
                                  m["data"]["item"]["id"] == last, what)

    def test_resume_on_the_other_edge(self):
        s = self.stack
        b = self.user("resume")
        ws = self.connect(b, s.edges[0])
        _, sub = self.subscribed(ws, "board")
        first = [self.item(b)["id"] for _ in range(3)]
        seen = self.read_board(ws, first, "the first three")
        epoch = sub["epoch"] or seen[0]["epoch"]
        self.assert_contiguous(seen, epoch, sub["offset"] + 1)
        ws.close()
        missed = [self.item(b)["id"] for _ in range(5)]
        since = {"epoch": epoch, "offset": seen[-1]["offset"]}
        ws = self.connect(b, s.edges[1])
        replayed, sub2 = self.subscribed(ws, "board", since=since)
        self.assertEqual(sub2, {"type": "subscribed", "channel": "board", "epoch": epoch,
                                "offset": since["offset"] + len(replayed), "recovered": True})
        self.assertTrue(all(m["type"] == "event" for m in replayed), replayed)
        self.assert_contiguous(replayed, epoch, since["offset"] + 1)
        self.assertEqual([m["data"]["item"]["id"] for m in replayed], missed)
        # then live, right after
        live = [self.item(b)["id"]]
        events = self.read_board(ws, live, "a live event after the replay")
        self.assert_contiguous(events, epoch, sub2["offset"] + 1)

    def test_resume_beyond_the_history_is_not_recovered(self):
        s = self.stack
        b = self.user("resume")
        ws = self.connect(b, s.edges[0])
        _, sub = self.subscribed(ws, "board")
        seen = self.read_board(ws, [self.item(b)["id"]], "one event")
        epoch = seen[-1]["epoch"]
        ws.close()
        for _ in range(HISTORY + 5):
            self.item(b)
        top_epoch, top = self.board_offset()
        self.assertEqual(top_epoch, epoch)
        since = {"epoch": epoch, "offset": seen[-1]["offset"]}
        ws = self.connect(b, s.edges[1])
        replayed, sub2 = self.subscribed(ws, "board", since=since)
        self.assertEqual(replayed, [])
        self.assertEqual(sub2, {"type": "subscribed", "channel": "board", "epoch": epoch,
                                "offset": top, "recovered": False})
        events = self.read_board(ws, [self.item(b)["id"]], "a live event after the refetch")
        self.assert_contiguous(events, epoch, top + 1)
        # an epoch the history never had: not recovered either
        ws2 = self.connect(b, s.edges[0])
        replayed, sub3 = self.subscribed(ws2, "board", since={"epoch": "nosuchepoch",
                                                              "offset": 1})
        self.assertEqual(replayed, [])
        self.assertEqual((sub3["epoch"], sub3["recovered"]), (epoch, False), sub3)


# ------------------------------------------------------------- redis outage

class LiveRedisRestart(LiveCase):
    """Redis restarted while items are created: the edges say they are not
    ready, and every acknowledged item reaches a subscriber once, in order."""

    def test_redis_restart_while_events_flow(self):
        s = self.stack
        b = self.user("outage")
        ws = self.connect(b, s.edges[0])
        _, sub = self.subscribed(ws, "board")
        writer = self.on_edge(b, s.edges[1])
        writer.timeout = 3.0
        acked, failed, stop = [], [], threading.Event()
        phase = ["before"]
        outage_acks = []

        def create():
            while not stop.is_set():
                try:
                    r = writer.create_item("outage " + nonce(6))
                except OSError as e:
                    failed.append(repr(e))
                    continue
                if r.status == 201:
                    acked.append(r.json()["item"]["id"])
                    if phase[0] == "down":
                        outage_acks.append(acked[-1])
                else:
                    failed.append(r.status)
                    stop.wait(0.02)

        t = threading.Thread(target=create, daemon=True)
        t.start()
        self.addCleanup(stop.set)
        try:
            wait_until(lambda: len(acked) >= 10, 20, "items acknowledged before the outage")
            phase[0] = "down"
            s.redis.stop()
            reply = wait_until(lambda: (lambda r: r if r.status == 503 else None)(
                s.edges[0].get("/health/ready", timeout=1.0)), READY_TIMEOUT_MS / 1000 + 10,
                "/health/ready 503 while Redis is down")
            self.assertIn("events", reply.json()["reason"], reply)
            s.redis.start()
            phase[0] = "after"
            for e in self.main_edges():
                e.wait_ready(timeout=20)
            n = len(acked)
            wait_until(lambda: len(acked) >= n + 10, 20, "items acknowledged after the outage")
        finally:
            stop.set()
            t.join(10)
        want = set(acked)
        got, events, others = set(), [], []
        try:
            while not want <= got:
                msg = ws.recv(EVENT_WAIT_S)
                if msg.get("type") == "event" and msg.get("channel") == "board":
                    events.append(msg)
                    if msg["event"] == "item_created":
                        got.add(msg["data"]["item"]["id"])
                else:
                    others.append((len(events), msg))
        except socket.timeout:
            self.fail("items acknowledged but never announced: %s (of %d)"
                      % (sorted(want - got), len(want)))
        print("\n  %d items acknowledged (%d while Redis was down), %d failed"
              % (len(acked), len(outage_acks), len(failed)))
        ids = [m["data"]["item"]["id"] for m in events if m["event"] == "item_created"]
        offsets = [m["offset"] for m in events]
        skipped = sorted(set(range(offsets[0], offsets[-1] + 1)) - set(offsets))
        twice = {}
        for m in events:
            if m["event"] == "item_created":
                twice.setdefault(m["data"]["item"]["id"], []).append(m["offset"])
        twice = {k: v for k, v in twice.items() if len(v) > 1}
        why = ("; items announced more than once (id: offsets) %r; offsets never delivered "
               "%s; edge counters %r; other messages %r" % (
                   twice, skipped, {k: v for k, v in metrics(s.edges[0]).items()
                                    if k.startswith("shoal_events") and "canary" not in k},
                   others))
        self.assertEqual(len(ids), len(set(ids)), "an item announced twice" + why)
        self.assertEqual(ids, sorted(ids), "item_created out of id order" + why)
        # nothing but events: a `subscribed` here would say the edge lost some
        self.assertEqual(others, [], "other messages (after how many events)" + why)
        self.assertEqual(skipped, [], why)
        epoch = sub["epoch"] or events[0]["epoch"]
        self.assert_contiguous(events, epoch, sub["offset"] + 1)


# --------------------------------------------------------------------- gaps

class LiveGap(LiveCase):
    """An event in the history the edge never got published: the next one
    reveals the gap and the edge reads it from the history."""

    INJECT = ("local top = redis.call('HINCRBY', KEYS[2], 'top', 1) "
              "redis.call('XADD', KEYS[1], string.format('0-%d', top), "
              "'t', ARGV[1], 'd', ARGV[2], 'ts', ARGV[3], 's', 'test') "
              "return top")

    def test_gap_is_filled_from_the_history(self):
        s = self.stack
        edge = s.edges[0]
        b = self.user("gap")
        ws = self.connect(b, edge)
        _, sub = self.subscribed(ws, "board")
        first = self.item(b)["id"]
        seen = self.expect_events(ws, "board", lambda m: m["event"] == "item_created" and
                                  m["data"]["item"]["id"] == first, "a first event")
        epoch = seen[-1]["epoch"]
        self.assertEqual(self.board_offset(), (epoch, seen[-1]["offset"]))
        before = metrics(edge)
        ghost = {"id": 987654321}
        injected = s.redis.call("EVAL", self.INJECT, 2, REDIS_PREFIX + "ev:board",
                                REDIS_PREFIX + "ev:board:meta", "item_deleted",
                                '{"id":987654321}', int(time.time() * 1e6))
        self.assertEqual(injected, seen[-1]["offset"] + 1)
        real = self.item(b)["id"]
        events = self.expect_events(ws, "board", lambda m: m["event"] == "item_created" and
                                    m["data"]["item"]["id"] == real, "the event after the gap")
        self.assertEqual([(m["event"], m["offset"]) for m in events],
                         [("item_deleted", injected), ("item_created", injected + 1)])
        self.assertEqual(events[0]["data"], ghost)
        self.assertEqual(events[0]["epoch"], epoch)
        after = metrics(edge)
        for key in ("shoal_events_gaps_total", "shoal_events_recovered_total"):
            self.assertGreaterEqual(after.get(key, 0) - before.get(key, 0), 1, key)
        self.assertEqual(after.get("shoal_events_lost_total", 0),
                         before.get("shoal_events_lost_total", 0))


# ------------------------------------------------------------ backpressure

class LiveStalledClients(LiveCase):
    """Clients that stop reading: an ordered channel's overflow closes them
    (4001) within a bounded queue; a counter's values replace each other."""

    slow = None

    def slow_edge(self):
        cls = type(self)
        if cls.slow is None or not cls.slow.alive():
            cls.slow = self.stack.add_edge(name="edge-slow",
                                           env={"SHOAL_WS_QUEUE_BYTES": str(QUEUE_BYTES)})
        return cls.slow

    def stalled(self, b, edge, channel):
        ws = self.connect(b, edge, sockopts=stall_opts())
        self.subscribed(ws, channel)
        return ws

    def test_stalled_board_client_is_closed_4001_and_memory_stays_bounded(self):
        edge = self.slow_edge()
        b = self.user("stall")
        writers = [self.on_edge(b, self.stack.edges[0]) for _ in range(4)]
        lag = "shoal_ws_laggards_total"
        lag0 = metric(edge, lag)
        ws = self.stalled(b, edge, "board")
        rss0 = rss_bytes(edge.pid)
        big = "\U0001F30A" * 200  # 800 bytes of title and of excerpt in each event
        created = 0
        deadline = time.monotonic() + 60
        with concurrent.futures.ThreadPoolExecutor(len(writers)) as pool:
            while metric(edge, lag) == lag0:
                self.assertLess(time.monotonic(), deadline, "no 4001 after %d items" % created)
                self.assertLess(created, 5000, "no 4001 after %d items" % created)
                replies = list(pool.map(lambda w: [w.create_item(big, big) for _ in range(10)],
                                        writers))
                for rs in replies:
                    for r in rs:
                        self.assertEqual(r.status, 201, r)
                created += 10 * len(writers)
        grown = rss_bytes(edge.pid) - rss0
        self.assertLessEqual(grown, QUEUE_BYTES + RSS_SLACK)
        # reading again, the client gets what the kernels held, then the
        # close (the edge writes it once the socket takes bytes again)
        code = ws.wait_close(timeout=10)
        self.assertEqual(code, 4001)
        wait_until(lambda: metric(edge, "shoal_ws_connections") == 0, 5,
                   "the laggard to be counted out")
        print("\n  closed (%d) after %d items of ~1.8 kB; edge RSS grew %d kB"
              % (code, created, grown // 1024))

    def test_stalled_counter_client_is_kept_and_coalesced(self):
        edge = self.slow_edge()
        b = self.user("stallme")
        ws = self.stalled(b, edge, "me")
        m0 = metrics(edge)
        readers = [self.on_edge(b, self.stack.edges[0]) for _ in range(4)]
        last = [0]
        lock = threading.Lock()

        def touch(r):
            for _ in range(25):
                reply = r.request("GET", "/api/session")
                self.assertEqual(reply.status, 200, reply)
                with lock:
                    last[0] = max(last[0], reply.json()["views"])
        deadline = time.monotonic() + 60
        with concurrent.futures.ThreadPoolExecutor(len(readers)) as pool:
            while metric(edge, "shoal_ws_coalesced_total") < m0.get(
                    "shoal_ws_coalesced_total", 0) + 20:
                self.assertLess(time.monotonic(), deadline, "no coalescing after %d views"
                                % last[0])
                list(pool.map(touch, readers))
        m1 = metrics(edge)
        self.assertEqual(m1.get("shoal_ws_laggards_total", 0),
                         m0.get("shoal_ws_laggards_total", 0))
        self.assertEqual(m1.get("shoal_ws_connections"), m0.get("shoal_ws_connections"))
        print("\n  coalescing after %d views" % last[0])
        # reading again: the latest value arrives, and the connection lives on
        final = last[0]
        seen = ws.recv_until(lambda m: m.get("type") == "event" and
                             m["data"]["views"] == final, 30, "views %d" % final)
        values = [m["data"]["views"] for m in of_type(seen, "event", "me")]
        self.assertLess(len(values), final, "some values were replaced")
        self.assertEqual(values, sorted(values))
        ws.send_json({"type": "ping"})
        self.assertEqual(ws.recv(), {"type": "pong"})


# ----------------------------------------------------------------- draining

class LivePing(LiveCase):

    def test_idle_clients_are_pinged_and_silent_ones_dropped(self):
        edge = self.stack.add_edge(name="edge-ping", env={"SHOAL_WS_PING_S": "1",
                                                          "SHOAL_WS_PONG_TIMEOUT_S": "1"})
        self.addCleanup(edge.stop)
        b = self.user("pinged")
        answering = self.connect(b, edge)
        silent = self.connect(b, edge)
        # the answering client sees pings (recv_frame does not answer them)
        # and keeps its connection
        pings = 0
        deadline = time.monotonic() + 10
        while pings < 2 and time.monotonic() < deadline:
            opcode, payload = answering.recv_frame(timeout=5)
            if opcode & 0x0F == WS_PING:
                answering.send_frame(WS_PONG, payload)
                pings += 1
        self.assertEqual(pings, 2, "an idle client is pinged about once a second")
        # the silent one never answered: dropped after ping + pong timeout
        wait_until(lambda: metric(edge, 'shoal_ws_closed_total{reason="no_pong"}') >= 1, 10,
                   "the client that answers no ping to be dropped")
        self.assertEqual(metric(edge, 'shoal_ws_closed_total{reason="no_pong"}'), 1)
        answering.send_json({"type": "ping"})
        self.assertEqual(answering.recv_until(lambda m: m.get("type") == "pong")[-1],
                         {"type": "pong"})


class LiveDrain(LiveCase):

    def test_sigterm_closes_live_clients_1001(self):
        edge = self.stack.add_edge(name="edge-drain", env={"SHOAL_DRAIN_GRACE_MS": "1500"})
        self.addCleanup(edge.stop)
        b = self.user("drain")
        clients = [self.connect(b, edge) for _ in range(2)]
        self.subscribed(clients[0], "board")
        edge.signal(signal.SIGTERM)
        for ws in clients:
            self.assertEqual(ws.wait_close(), 1001)
        # while it drains it takes no new live connections
        try:
            reply = self.refused(edge.port, cookie=b.cookie_header())
            self.assert_refusal(reply, 503, "unavailable")
        except OSError:
            pass  # already gone
        self.assertEqual(edge.wait_exit(15), 0)


if __name__ == "__main__":
    unittest.main()
