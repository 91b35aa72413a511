"""Integration tests: the S3 test server (deploy/local/s3/s3-server) and its harness.

The upload service is tested against this server, so these tests pin down
what it does: objects with Range, HEAD and DELETE; multipart uploads with
ListMultipartUploads, ListParts and Abort (which s3rver alone lacks); the
checks a real S3 makes (ETags, part sizes, x-amz-checksum-sha256, unknown
uploads); parts whose client stalls or goes away while their upload is
aborted; and that stop, kill -9 and restart on the same port keep every
object and every unfinished upload. Run with tests/integration/run.
"""

import base64
import errno
import hashlib
import http.client
import os
import shutil
import socket
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from shoal_stack import S3Server, Stack, check_s3_server, raw_http, wait_until  # noqa: E402

MIB = 1024 * 1024


def sha256_b64(data):
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def error_code(reply):
    """The <Code> of an S3 error answer ('' when there is none)."""
    body = reply.body.decode("utf-8", "replace")
    start = body.find("<Code>")
    return body[start + 6:body.find("</Code>")] if start >= 0 else ""


class SlowPut:
    """A PutObject or UploadPart (query "partNumber=N&uploadId=U") sent by
    hand, so that it can stall half-way: the request line and headers, then
    the body in pieces. Unsigned (the server takes anonymous requests)."""

    def __init__(self, s3, key, size, query=""):
        self.size, self.sent = size, 0
        self.sock = socket.create_connection(("127.0.0.1", s3.port), timeout=10)
        self.sock.sendall(("PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n"
                           % (s3.path(key, query), s3.port, size)).encode())

    @classmethod
    def part(cls, s3, key, upload_id, number, size):
        return cls(s3, key, size, "partNumber=%d&uploadId=%s" % (number, upload_id))

    def send(self, n):
        """Send n more bytes of the body; False when the server closed the
        connection (it may answer and close before the body is in)."""
        try:
            self.sock.sendall(os.urandom(n))
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            return False
        self.sent += n
        return True

    def finish(self):
        """Send the rest of the body and return (status, S3 error code), or
        None when the server dropped the connection instead of answering."""
        self.send(self.size - self.sent)
        try:
            resp = http.client.HTTPResponse(self.sock, method="PUT")
            resp.begin()
            body = resp.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            return None
        finally:
            self.close()
        start = body.find("<Code>")
        return resp.status, body[start + 6:body.find("</Code>")] if start >= 0 else ""

    def close(self):
        self.sock.close()


def files_open_under(pid, fragment):
    """Paths of the files process pid has open whose path contains fragment."""
    out = []
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed meanwhile
        if fragment in target:
            out.append(target)
    return out


class LogOnFailure:
    """Print the server's log tail when a test fails."""

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before and self.s3:
            print("\n----- %s log -----\n%s" % (self.s3.name, self.s3.log_tail()))
        return out


class S3ServerCase(LogOnFailure, unittest.TestCase):
    """One server for the tests that do not restart it."""

    @classmethod
    def setUpClass(cls):
        check_s3_server()
        cls.tmp = tempfile.mkdtemp(prefix="shoal-s3-")
        cls.s3 = S3Server(cls.tmp)
        cls.s3.start()

    @classmethod
    def tearDownClass(cls):
        cls.s3.stop()
        if os.environ.get("SHOAL_TEST_KEEP") != "1":
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def assertError(self, reply, status, code):
        self.assertEqual((reply.status, error_code(reply)), (status, code), reply)

    # ---------------------------------------------------------------- objects

    def test_put_get_head_range_delete(self):
        data = os.urandom(1000)
        put = self.s3.put_object("obj/one", data, headers={"Content-Type": "image/png"})
        self.assertEqual(put.header("ETag"), '"%s"' % hashlib.md5(data).hexdigest())
        got = self.s3.get_object("obj/one")
        self.assertEqual((got.status, got.body), (200, data))
        head = self.s3.head_object("obj/one")
        self.assertEqual((head.status, head.header("Content-Length"), head.header("Content-Type")),
                         (200, "1000", "image/png"))
        for rng, first, last in (("bytes=10-19", 10, 19), ("bytes=990-", 990, 999),
                                 ("bytes=-10", 990, 999), ("bytes=995-5000", 995, 999),
                                 ("bytes=-5000", 0, 999)):
            with self.subTest(range=rng):
                r = self.s3.get_object("obj/one", range=rng)
                self.assertEqual(r.status, 206, r)
                self.assertEqual(r.header("Content-Range"), "bytes %d-%d/1000" % (first, last))
                self.assertEqual(r.body, data[first:last + 1])
        self.assertError(self.s3.get_object("obj/one", range="bytes=1000-"), 416, "InvalidRange")
        self.assertEqual(self.s3.get_object("obj/one", range="bytes=0-1,5-6").status, 200)
        self.assertIn("obj/one", self.s3.keys("obj/"))
        self.s3.delete_object("obj/one")
        self.assertError(self.s3.get_object("obj/one"), 404, "NoSuchKey")
        self.assertEqual(self.s3.head_object("obj/one").status, 404)
        self.assertNotIn("obj/one", self.s3.keys("obj/"))

    def test_empty_object(self):
        self.s3.put_object("obj/empty", b"")
        r = self.s3.get_object("obj/empty")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertError(self.s3.get_object("obj/empty", range="bytes=0-"), 416, "InvalidRange")
        self.assertError(self.s3.get_object("obj/empty", range="bytes=0-0"), 416, "InvalidRange")

    def test_single_byte_ranges(self):
        # s3rver's file store reads an end of 0 as "no end": bytes=0-0 was the whole object
        data = bytes(range(100)) * 10
        self.s3.put_object("obj/bytes", data)
        self.s3.put_object("obj/one-byte", b"x")
        cases = (("obj/bytes", "bytes=0-0", 0, 0), ("obj/bytes", "bytes=5-5", 5, 5),
                 ("obj/bytes", "bytes=-1", 999, 999), ("obj/bytes", "bytes=999-999", 999, 999),
                 ("obj/bytes", "bytes=0-", 0, 999), ("obj/one-byte", "bytes=0-0", 0, 0),
                 ("obj/one-byte", "bytes=-1", 0, 0), ("obj/one-byte", "bytes=0-", 0, 0),
                 ("obj/one-byte", "bytes=-5", 0, 0), ("obj/one-byte", "bytes=0-7", 0, 0))
        for key, rng, first, last in cases:
            whole = data if key == "obj/bytes" else b"x"
            with self.subTest(key=key, range=rng):
                r = self.s3.get_object(key, range=rng)
                self.assertEqual(r.status, 206, r)
                self.assertEqual(r.header("Content-Range"), "bytes %d-%d/%d" % (first, last, len(whole)))
                self.assertEqual(r.header("Content-Length"), str(last + 1 - first))
                self.assertEqual(r.body, whole[first:last + 1])
        head = self.s3.request("HEAD", "obj/bytes", headers={"Range": "bytes=0-0"})
        self.assertEqual((head.status, head.header("Content-Length"), head.header("Content-Range")),
                         (206, "1", "bytes 0-0/1000"))
        for rng in ("bytes=1-1", "bytes=1-"):
            with self.subTest(key="obj/one-byte", range=rng):
                self.assertError(self.s3.get_object("obj/one-byte", range=rng), 416, "InvalidRange")
        # with a query s3rver reads the Range header itself: its store is fixed too
        r = self.s3.request("GET", "obj/bytes", query="response-cache-control=no-cache",
                            headers={"Range": "bytes=0-0"})
        self.assertEqual((r.status, r.header("Content-Range"), r.body), (206, "bytes 0-0/1000", b"\x00"))
        r = self.s3.request("GET", "obj/bytes", query="response-cache-control=no-cache",
                            headers={"Range": "bytes=7-0"})  # invalid: ignored, as by S3
        self.assertEqual((r.status, r.body), (200, data))

    def test_list_objects_pages(self):
        keys = ["list/k%02d" % i for i in range(7)]
        for k in keys:
            self.s3.put_object(k, k.encode())
        # s3rver's continuation tokens need DES (node --openssl-legacy-provider)
        self.assertEqual([o["key"] for o in self.s3.list_objects("list/", page_size=3)], keys)

    def test_checksum_sha256_is_verified(self):
        data = b"checked bytes"
        r = self.s3.put_object("obj/cks", data, headers={"x-amz-checksum-sha256": sha256_b64(data)})
        self.assertEqual(r.header("x-amz-checksum-sha256"), sha256_b64(data))
        bad = self.s3.request("PUT", "obj/cks-bad", body=data,
                              headers={"x-amz-checksum-sha256": sha256_b64(b"other")})
        self.assertError(bad, 400, "BadDigest")
        self.assertEqual(self.s3.head_object("obj/cks-bad").status, 404)

    def test_keys_the_file_store_would_alias_are_refused(self):
        for key in ("../escape", "a/../b", "a//b", "a/./b", "x._S3rver_object"):
            with self.subTest(key=key):
                self.assertError(self.s3.request("PUT", key, body=b"x"), 400, "InvalidArgument")
        self.assertEqual(self.s3.list_objects("a/"), [])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "escape._S3rver_object")))
        # s3rver alone: a segment over 255 bytes (a file name) takes the server down
        self.assertError(self.s3.request("PUT", "long/" + "x" * 300, body=b"x"), 400,
                         "KeyTooLongError")
        self.assertTrue(self.s3.alive())
        key = "/".join(["y" * 199] * 5)  # 999 bytes: a long key is fine
        self.s3.put_object(key, b"long")
        self.assertEqual(self.s3.get_object(key).body, b"long")

    def test_signed_requests_need_the_access_key_and_payload_header(self):
        other = S3Server(self.tmp, port=self.s3.port, access_key="NOT-THE-KEY")
        self.assertError(other.request("GET", "anything"), 403, "InvalidAccessKeyId")
        r = self.s3.request("PUT", "obj/nohash", body=b"x", headers={"x-amz-content-sha256": None})
        self.assertError(r, 400, "InvalidRequest")

    # ---------------------------------------------------------------- multipart

    def test_multipart_round_trip(self):
        p1, p2 = os.urandom(5 * MIB), os.urandom(MIB + 1)
        key = "mp/round-trip"
        upload = self.s3.create_multipart(key, headers={"Content-Type": "video/mp4"})
        self.assertIn(upload, [u["upload_id"] for u in self.s3.list_multipart_uploads("mp/")])
        e1 = self.s3.upload_part(key, upload, 1, p1,
                                 headers={"x-amz-checksum-sha256": sha256_b64(p1)})
        e2 = self.s3.upload_part(key, upload, 2, p2)
        self.assertEqual([(p["number"], p["etag"], p["size"]) for p in self.s3.list_parts(key, upload)],
                         [(1, e1, len(p1)), (2, e2, len(p2))])
        self.assertEqual(self.s3.head_object(key).status, 404)  # nothing visible before Complete
        done = self.s3.complete_multipart(key, upload, [(1, e1), (2, e2)])
        self.assertEqual(done.status, 200, done)
        got = self.s3.get_object(key)
        self.assertEqual(hashlib.sha256(got.body).digest(), hashlib.sha256(p1 + p2).digest())
        # S3's multipart ETag: the MD5 of the parts' MD5s, "-" and the part count
        md5s = hashlib.md5(bytes.fromhex(e1.strip('"')) + bytes.fromhex(e2.strip('"')))
        self.assertEqual(got.header("ETag"), '"%s-2"' % md5s.hexdigest())
        self.assertIn("%s-2" % md5s.hexdigest(), done.body.decode())
        self.assertEqual(got.header("Content-Type"), "video/mp4")
        r = self.s3.get_object(key, range="bytes=%d-%d" % (5 * MIB - 2, 5 * MIB + 1))
        self.assertEqual((r.status, r.body), (206, (p1 + p2)[5 * MIB - 2:5 * MIB + 2]))
        self.assertNotIn(upload, [u["upload_id"] for u in self.s3.list_multipart_uploads()])
        self.assertNotIn(upload, self.s3.uploads_on_disk())
        self.assertError(self.s3.complete_multipart(key, upload, [(1, e1)]), 404, "NoSuchUpload")

    def test_abort_and_list_uploads(self):
        key = "mp/aborted"
        a = self.s3.create_multipart(key)
        b = self.s3.create_multipart(key)
        self.s3.upload_part(key, a, 1, b"part")
        listed = self.s3.list_multipart_uploads("mp/aborted")
        self.assertEqual(sorted(u["upload_id"] for u in listed), sorted([a, b]))
        self.assertTrue(all(u["initiated"].endswith("Z") for u in listed), listed)
        self.assertEqual(self.s3.abort_multipart(key, a).status, 204)
        self.assertError(self.s3.abort_multipart(key, a), 404, "NoSuchUpload")
        self.assertError(self.s3.abort_multipart("mp/other-key", b), 404, "NoSuchUpload")
        self.assertEqual([u["upload_id"] for u in self.s3.list_multipart_uploads("mp/aborted")], [b])
        self.assertNotIn(a, self.s3.uploads_on_disk())
        # a part sent after the abort is refused, and brings nothing back
        late = self.s3.request("PUT", key, query="partNumber=2&uploadId=" + a, body=b"late")
        self.assertError(late, 404, "NoSuchUpload")
        self.assertNotIn(a, self.s3.uploads_on_disk())
        self.assertEqual(self.s3.abort_multipart(key, b).status, 204)
        self.assertEqual(self.s3.list_multipart_uploads("mp/aborted"), [])
        self.assertEqual(self.s3.keys("mp/aborted"), [])

    # ---------------------------------------------------------------- parts cut off

    def _part_bytes_on_disk(self, upload_id):
        """Bytes the server has written of parts of upload_id, finished or not."""
        d = os.path.join(self.s3.data_dir, self.s3.bucket, "._S3rver_uploads", upload_id)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return 0
        return sum(os.path.getsize(os.path.join(d, n)) for n in names
                   if n not in ("key", "metadata") and not n.endswith((".md5", ".sha256")))

    def _still_serving(self):
        self.assertTrue(self.s3.alive())
        self.s3.put_object("obj/after", b"still here")
        self.assertEqual(self.s3.get_object("obj/after").body, b"still here")

    def test_put_whose_client_goes_away(self):
        key = "obj/cut-put"
        self.s3.put_object(key, b"before")
        d = os.path.join(self.s3.data_dir, self.s3.bucket, "obj")
        name = "cut-put._S3rver_object"

        def written():
            return max([os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)
                        if n.startswith(name) and not n.endswith(".md5")] or [0])

        put = SlowPut(self.s3, key, 4 * MIB)
        put.send(MIB)
        wait_until(lambda: written() >= MIB, 10, "1 MiB of the object on disk")
        put.close()
        # s3rver alone waits for ever on that body, the object's file open and half written
        wait_until(lambda: not files_open_under(self.s3.pid, name), 10,
                   "the server to close the cut object's file")
        got = self.s3.get_object(key)
        self.assertEqual((got.status, got.body), (200, b"before"))
        self.assertEqual(sorted(n for n in os.listdir(d) if n.startswith(name)),
                         [name, name + ".md5"])
        self._still_serving()

    def test_abort_while_a_part_is_written_then_the_part_ends(self):
        key = "mp/abort-mid-part"
        up = self.s3.create_multipart(key)
        part = SlowPut.part(self.s3, key, up, 1, 6 * MIB)
        part.send(2 * MIB)
        wait_until(lambda: self._part_bytes_on_disk(up) >= 2 * MIB, 10,
                   "the first 2 MiB of the part on disk")
        self.assertEqual(self.s3.abort_multipart(key, up).status, 204)
        # s3rver alone: 500, writing the part's .md5 into the removed directory
        self.assertEqual(part.finish(), (404, "NoSuchUpload"))
        self.assertNotIn(up, self.s3.uploads_on_disk())
        self.assertEqual(self.s3.list_multipart_uploads(key), [])
        self._still_serving()

    def test_part_whose_client_goes_away(self):
        key = "mp/client-gone"
        up = self.s3.create_multipart(key)
        # without an abort: the cut part is not kept, the upload goes on
        part = SlowPut.part(self.s3, key, up, 1, 6 * MIB)
        part.send(MIB)
        wait_until(lambda: self._part_bytes_on_disk(up) >= MIB, 10, "1 MiB of part 1 on disk")
        part.close()
        # s3rver alone waits for ever on that body, its part file open and half written
        wait_until(lambda: not files_open_under(self.s3.pid, up), 10,
                   "the server to close the cut part's file")
        wait_until(lambda: self._part_bytes_on_disk(up) == 0, 10, "the cut part removed")
        self.assertEqual(self.s3.list_parts(key, up), [])
        etag = self.s3.upload_part(key, up, 1, b"whole part")
        self.assertEqual([p["etag"] for p in self.s3.list_parts(key, up)], [etag])
        # after an abort: nothing of the upload stays open or on disk
        part = SlowPut.part(self.s3, key, up, 2, 6 * MIB)
        part.send(MIB)
        wait_until(lambda: self._part_bytes_on_disk(up) >= MIB + len(b"whole part"), 10,
                   "1 MiB of part 2 on disk")
        self.assertEqual(self.s3.abort_multipart(key, up).status, 204)
        part.close()
        wait_until(lambda: not files_open_under(self.s3.pid, up), 10,
                   "the server to close the aborted part's file")
        self.assertNotIn(up, self.s3.uploads_on_disk())
        self._still_serving()

    def test_aborts_racing_part_uploads(self):
        # s3rver alone crashes (an unhandled ENOENT opening ._S3rver_uploads/<id>/1) when the
        # Abort removes the directory between its mkdir and its open of the part's file, and
        # brings the directory back with a part in it when the Abort comes a little earlier
        key = "mp/race"
        ids = []
        for i in range(60):
            up = self.s3.create_multipart(key)
            ids.append(up)
            part = SlowPut.part(self.s3, key, up, 1, 4 * MIB)
            part.send(64 * 1024)
            # at once, without the fork of a curl: the part is just being started
            abort = raw_http(self.s3.port, ("DELETE %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                                            "Content-Length: 0\r\n\r\n" % (
                                                self.s3.path(key, "uploadId=" + up),
                                                self.s3.port)).encode(), method="DELETE")
            self.assertEqual(abort.status, 204, "round %d: %r" % (i, abort))
            if i % 2:
                answer = part.finish()
                self.assertIn(answer, (None, (404, "NoSuchUpload")), "round %d" % i)
            else:
                part.close()
            self.assertTrue(self.s3.alive(), "round %d" % i)
        wait_until(lambda: not set(ids) & set(self.s3.uploads_on_disk()), 10,
                   "no directory of an aborted upload on disk")
        wait_until(lambda: not files_open_under(self.s3.pid, "._S3rver_uploads"), 10,
                   "no part file open")
        self.assertEqual(self.s3.list_multipart_uploads(key), [])
        self._still_serving()

    def test_list_uploads_pages(self):
        ids = sorted(self.s3.create_multipart("mp/pages") for _ in range(5))
        page = self.s3.request("GET", query="uploads&prefix=mp/pages&max-uploads=2")
        self.assertIn(b"<IsTruncated>true</IsTruncated>", page.body)
        self.assertEqual([u["upload_id"] for u in self.s3.list_multipart_uploads("mp/pages")], ids)
        for u in ids:
            self.s3.abort_multipart("mp/pages", u)

    def test_complete_is_checked_like_s3(self):
        key = "mp/checked"
        small, last = b"s" * 1000, b"last"
        up = self.s3.create_multipart(key)
        e1 = self.s3.upload_part(key, up, 1, small)
        e2 = self.s3.upload_part(key, up, 2, last)
        # s3rver alone: a part that was never uploaded kills the whole server
        self.assertError(self.s3.complete_multipart(key, up, [(1, e1), (3, "00")]), 400, "InvalidPart")
        self.assertTrue(self.s3.alive())
        self.assertError(self.s3.complete_multipart(key, up, [(1, "0" * 32), (2, e2)]),
                         400, "InvalidPart")
        self.assertError(self.s3.complete_multipart(key, up, [(2, e2), (1, e1)]),
                         400, "InvalidPartOrder")
        self.assertError(self.s3.complete_multipart(key, up, [(1, e1), (2, e2)]),
                         400, "EntityTooSmall")
        bad = self.s3.request("PUT", key, query="partNumber=3&uploadId=" + up, body=last,
                              headers={"x-amz-checksum-sha256": sha256_b64(b"x")})
        self.assertError(bad, 400, "BadDigest")
        self.assertEqual([p["number"] for p in self.s3.list_parts(key, up)], [1, 2])
        # a single part may be any size; the upload is still there after every refusal
        done = self.s3.complete_multipart(key, up, [(2, e2)])
        self.assertEqual(done.status, 200, done)
        self.assertEqual(self.s3.get_object(key).body, last)
        bogus = self.s3.request("PUT", key, query="partNumber=1&uploadId=" + "f" * 32, body=b"x")
        self.assertError(bogus, 404, "NoSuchUpload")
        self.assertNotIn("f" * 32, self.s3.uploads_on_disk())


class S3ServerRestartCase(LogOnFailure, unittest.TestCase):
    """Stop, kill -9, pause and restart: same port, same data."""

    s3 = None

    def setUp(self):
        check_s3_server()
        self.tmp = tempfile.mkdtemp(prefix="shoal-s3-")
        self.s3 = S3Server(self.tmp)
        self.s3.start()

    def tearDown(self):
        self.s3.stop()
        if os.environ.get("SHOAL_TEST_KEEP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _store_some(self):
        data = os.urandom(3 * MIB)
        self.s3.put_object("keep/object", data)
        up = self.s3.create_multipart("keep/unfinished")
        etag = self.s3.upload_part("keep/unfinished", up, 1, data)
        return data, up, etag

    def _check_kept(self, data, up, etag):
        self.assertEqual(self.s3.get_object("keep/object").body, data)
        self.assertEqual([u["upload_id"] for u in self.s3.list_multipart_uploads("keep/")], [up])
        self.assertEqual([p["etag"] for p in self.s3.list_parts("keep/unfinished", up)], [etag])
        done = self.s3.complete_multipart("keep/unfinished", up, [(1, etag)])
        self.assertEqual(done.status, 200, done)
        self.assertEqual(self.s3.get_object("keep/unfinished").body, data)

    def test_stop_and_restart_keep_the_data(self):
        kept = self._store_some()
        port, pid = self.s3.port, self.s3.pid
        self.assertEqual(self.s3.stop(), 0)  # SIGTERM: a clean exit
        with self.assertRaises(ConnectionError):
            self.s3.get_object("keep/object", timeout=2)
        self.s3.start()
        self.assertEqual(self.s3.port, port)
        self.assertNotEqual(self.s3.pid, pid)
        self._check_kept(*kept)

    def test_kill9_and_restart_keep_the_data(self):
        kept = self._store_some()
        self.assertEqual(self.s3.kill(), -9)
        self.assertEqual(self.s3.uploads_on_disk(), [kept[1]])  # readable while it is down
        self.s3.start()
        self._check_kept(*kept)

    def test_paused_server_times_out_then_answers(self):
        self.s3.put_object("paused/x", b"x")
        self.s3.pause()
        try:
            with self.assertRaises(ConnectionError):
                self.s3.get_object("paused/x", timeout=1)
        finally:
            self.s3.resume()
        wait_until(lambda: self.s3.get_object("paused/x", timeout=1).body == b"x", 5,
                   "the resumed server to answer", retry_on=(ConnectionError,))


class StackWithS3Case(unittest.TestCase):
    def test_stack_starts_and_stops_the_s3_server(self):
        check_s3_server()
        with Stack(sessions=1, edges=1, s3=True) as stack:
            s3 = stack.s3
            self.assertTrue(s3.alive())
            self.assertEqual(s3.service_env()["SHOAL_S3_ENDPOINT"], "http://127.0.0.1:%d" % s3.port)
            s3.put_object("stack/x", b"in the stack")
            self.assertEqual(s3.get_object("stack/x").body, b"in the stack")
            self.assertIn(s3, stack.processes())
        self.assertFalse(s3.alive())


if __name__ == "__main__":
    unittest.main()
