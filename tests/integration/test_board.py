"""Integration tests of the board API: accounts, items, search, pagination
and the read cache, through a real edge, session and query instance, Redis
and a Postgres primary with a streaming replica (tests/lib/shoal_stack.py).

The contract is the "Board HTTP API" (README.md#board-api). Run with
tests/integration/run board.
"""

import math
import os
import random
import re
import string
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from shoal_stack import (Browser, Stack, http, json_bytes, parse_set_cookie,  # noqa: E402
                         raw_http, wait_until)

CSRF_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
SID_RE = re.compile(r"^[A-Za-z0-9_-]{43,}$")
SOURCES = ("cache", "replica", "primary")
PASSWORD = "correct horse battery"
# signups and logins are rate-limited per IP; every test here comes from
# 127.0.0.1, so the functional stacks raise the limits out of the way
HIGH_LIMITS = {
    "SHOAL_SIGNUP_IP_LIMIT": "1000000",
    "SHOAL_LOGIN_IP_LIMIT": "1000000",
    "SHOAL_LOGIN_ACCOUNT_LIMIT": "1000000",
}
ERROR_CODES = {"invalid", "malformed", "unauthorized", "forbidden", "not_found", "conflict",
               "too_large", "rate_limited", "internal", "unavailable", "timeout",
               "method_not_allowed", "length_required", "headers_too_large", "bad_request",
               "csrf"}

_counter = [0]


def uniq(prefix="u"):
    """A fresh username (valid: [A-Za-z0-9_.-], at most 32 characters)."""
    _counter[0] += 1
    tail = "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    return ("%s_%s%d" % (prefix, tail, _counter[0]))[:32]


def nonce(n=10):
    """A search word no other item contains (consonants only, so the
    English stemmer leaves it alone)."""
    return "".join(random.choice("bcdfghjkmnpqrstvwxz") for _ in range(n))


def cookie_attrs(reply, name):
    """(value, attrs) of the Set-Cookie for `name`, or (None, None)."""
    for header in reply.headers.get_all("Set-Cookie") or []:
        n, value, attrs = parse_set_cookie(header)
        if n == name:
            return value, attrs
    return None, None


class BoardCase(unittest.TestCase):
    """A Stack with Postgres primary + replica, query instance(s) and
    (healths > 0) a registry: one per class shared by its tests (shared =
    True) or a fresh one per test. Prints every process log tail when a test
    fails. Subclasses set the class attributes."""

    shared = True
    sessions = 1
    edges = 1
    queries = 1
    healths = 1
    replica = True
    edge_env = dict(HIGH_LIMITS)
    query_env = {}
    stack = None
    error_codes = ERROR_CODES  # the codes an error body may carry

    @classmethod
    def new_stack(cls):
        return Stack(sessions=cls.sessions, edges=cls.edges, queries=cls.queries,
                     postgres=True, replica=cls.replica, healths=cls.healths,
                     edge_env=cls.edge_env, query_env=cls.query_env).start()

    @classmethod
    def setUpClass(cls):
        if cls.shared:
            cls.stack = cls.new_stack()

    @classmethod
    def tearDownClass(cls):
        if cls.stack:
            cls.stack.close()
            cls.stack.cleanup()
            cls.stack = None

    def setUp(self):
        if not self.shared:
            self.stack = self.new_stack()
            self.addCleanup(self._drop_stack)

    def _drop_stack(self):
        self.stack.close()
        self._dropped = self.stack

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        self._dropped = None
        try:
            return super().run(result)
        finally:
            stack = self.stack or self._dropped
            if stack is not None and len(result.failures) + len(result.errors) != before:
                sys.stderr.write("\n===== logs for %s =====\n%s\n===== end logs =====\n"
                                 % (self.id(), stack.log_tails()))
            if not self.shared and self._dropped is not None:
                self._dropped.cleanup()

    # --- helpers

    @property
    def port(self):
        return self.stack.edge.port

    def browser(self, edge=None):
        b = Browser((edge or self.stack.edge).port)
        self.addCleanup(b.close)
        return b

    def user(self, prefix="u", password=PASSWORD, edge=None):
        """A Browser logged in as a freshly signed-up user."""
        b = self.browser(edge)
        name = uniq(prefix)
        r = b.signup(name, password)
        self.assertEqual(r.status, 201, r)
        b.username, b.password = name, password
        return b

    def item(self, b, title=None, body="", status=201):
        r = b.create_item(title if title is not None else "item " + nonce(6), body)
        self.assertEqual(r.status, status, r)
        return r.json()["item"] if status == 201 else r

    def count(self, table, where="true"):
        return int(self.stack.psql("SELECT count(*) FROM %s WHERE %s" % (table, where)))

    def assert_error(self, reply, status, code=None, codes=None, field=None):
        """reply is `status` with the JSON error shape of the contract:
        {"error": {"code": <code>, "message": <text>}}; returns the error."""
        self.assertEqual(reply.status, status, reply)
        ctype = reply.header("Content-Type", "")
        self.assertIn("application/json", ctype, reply)
        try:
            data = reply.json()
        except ValueError as e:
            self.fail("error body is not JSON (%s): %r" % (e, reply.body[:300]))
        err = data.get("error") if isinstance(data, dict) else None
        self.assertIsInstance(err, dict, "error shape: %r" % (data,))
        self.assertIn(err.get("code"), self.error_codes, data)
        self.assertIsInstance(err.get("message"), str, data)
        self.assertTrue(err["message"], data)
        if code:
            self.assertEqual(err["code"], code, data)
        if codes:
            self.assertIn(err["code"], codes, data)
        if field:
            self.assertIn(field, err["message"].lower(),
                          "the message should name the field %r: %r" % (field, data))
        return err

    def as_sid(self, sid, method, path, body=None, headers=None, edge=None):
        """One request carrying only shoal_sid=<sid> (no cookie jar: a
        refused id must not replace anyone's cookies)."""
        h = {"Cookie": "shoal_sid=" + sid}
        if body is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        return http((edge or self.stack.edge).port, method, path, headers=h, body=body)

    def source(self, reply):
        src = reply.header("X-Shoal-Read")
        self.assertIn(src, SOURCES, "X-Shoal-Read of %r" % (reply,))
        return src

    def list_ids(self, reply):
        self.assertEqual(reply.status, 200, reply)
        return [it["id"] for it in reply.json()["items"]]


class BoardApi(BoardCase):
    """Accounts and items: the contract's answers and errors."""

    # --- accounts

    def test_signup_me_logout_login_round_trip(self):
        b = self.browser()
        self.assert_error(b.me(), 401, "unauthorized")
        name = uniq("Round")
        r = b.signup(name, PASSWORD)
        self.assertEqual(r.status, 201, r)
        data = r.json()
        self.assertEqual(data["user"]["username"], name)
        self.assertIsInstance(data["user"]["id"], int)
        self.assertGreater(data["user"]["id"], 0)
        self.assertRegex(data["csrf_token"], CSRF_RE)
        sid, attrs = cookie_attrs(r, "shoal_sid")
        self.assertRegex(sid or "", SID_RE, r.headers.get_all("Set-Cookie"))
        uid = data["user"]["id"]
        self.assertEqual(self.count("users", "lower(username) = lower('%s')" % name), 1)

        r = b.me()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["user"], {"id": uid, "username": name})
        self.assertEqual(r.json()["csrf_token"], data["csrf_token"])

        r = b.logout()
        self.assertEqual(r.status, 204, r)
        value, attrs = cookie_attrs(r, "shoal_sid")
        self.assertEqual(value, "", r.headers.get_all("Set-Cookie"))
        self.assertEqual(attrs.get("max-age"), "0", attrs)
        self.assert_error(b.me(), 401, "unauthorized")
        # the session is gone server-side: its old id is refused too
        self.assert_error(self.as_sid(sid, "GET", "/api/me"), 401, "unauthorized")
        self.assert_error(self.as_sid(sid, "POST", "/api/auth/logout"), 401, "unauthorized")

        b2 = self.browser()
        r = b2.login(name, PASSWORD)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["user"], {"id": uid, "username": name})
        self.assertRegex(r.json()["csrf_token"], CSRF_RE)
        self.assertNotEqual(r.json()["csrf_token"], data["csrf_token"])
        sid2 = cookie_attrs(r, "shoal_sid")[0]
        self.assertRegex(sid2 or "", SID_RE)
        self.assertNotEqual(sid2, sid)
        self.assertEqual(b2.me().json()["user"]["id"], uid)
        # GET /api/session now names the user
        r = b2.request("GET", "/api/session")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json().get("user"), {"id": uid, "username": name}, r)

    def test_login_right_after_signup_reads_the_new_account(self):
        # accounts are read on the primary: a login straight after signup, by
        # another client, never misses the account however far the replica lags
        for _ in range(20):
            name = uniq("fresh")
            r = self.browser().signup(name, PASSWORD)
            self.assertEqual(r.status, 201, r)
            r = self.browser().login(name, PASSWORD)
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.json()["user"]["username"], name)

    def test_signup_validation_per_field(self):
        before = self.count("users")
        cases = [
            ({"password": PASSWORD}, "username"),
            ({"username": "", "password": PASSWORD}, "username"),
            ({"username": "ab", "password": PASSWORD}, "username"),
            ({"username": "a" * 33, "password": PASSWORD}, "username"),
            ({"username": "al ice", "password": PASSWORD}, "username"),
            ({"username": "alice!", "password": PASSWORD}, "username"),
            ({"username": "\u00e5lice", "password": PASSWORD}, "username"),
            ({"username": "ali/ce", "password": PASSWORD}, "username"),
            ({"username": uniq("v"), "password": "1234567"}, "password"),
            ({"username": uniq("v"), "password": "\u00e9" * 7}, "password"),  # 14 bytes
            ({"username": uniq("v"), "password": "p" * 257}, "password"),
            ({"username": uniq("v")}, "password"),
            ({"username": uniq("v"), "password": ""}, "password"),
        ]
        for body, field in cases:
            with self.subTest(body=repr(body)[:80]):
                r = self.browser().request("POST", "/api/auth/signup", json_body=body)
                self.assert_error(r, 400, "invalid", field=field)
        # NUL is valid JSON but no username character; a JSON library may
        # refuse it while parsing, so "malformed" is accepted too
        wrong_types = [
            {"username": "abc\u0000", "password": PASSWORD},
            {"username": 12345, "password": PASSWORD},
            {"username": None, "password": PASSWORD},
            {"username": ["alice"], "password": PASSWORD},
            {"username": {"a": 1}, "password": PASSWORD},
            {"username": uniq("v"), "password": 123456789},
            {"username": uniq("v"), "password": None},
            {"username": uniq("v"), "password": True},
        ]
        for body in wrong_types:
            with self.subTest(body=repr(body)[:80]):
                r = self.browser().request("POST", "/api/auth/signup", json_body=body)
                self.assert_error(r, 400, codes=("invalid", "malformed"))
        self.assertEqual(self.count("users"), before, "a refused signup created a user")

        # the limits count characters, not bytes
        for username, password in [
            ("abc" + uniq("")[-5:], "12345678"),
            (uniq("m")[:3] + "x" * 29, "p" * 256),
            ("A.b-C_" + uniq("")[-6:], "\U0001F600" * 256),    # 1024 bytes
            (uniq("e"), "\u00e9" * 8),
        ]:
            with self.subTest(username=username, password_chars=len(password)):
                b = self.browser()
                r = b.signup(username, password)
                self.assertEqual(r.status, 201, r)
                self.assertEqual(r.json()["user"]["username"], username)
                self.assertEqual(self.browser().login(username, password).status, 200)
        self.assertEqual(self.count("users"), before + 4)

    def test_signup_username_taken_case_insensitively(self):
        name = uniq("Case")
        self.assertEqual(self.browser().signup(name, PASSWORD).status, 201)
        before = self.count("users")
        for variant in (name, name.lower(), name.upper(), name.swapcase()):
            with self.subTest(variant=variant):
                err = self.assert_error(self.browser().signup(variant, "another password"),
                                        409, "conflict")
                self.assertIn("taken", err["message"])
        self.assertEqual(self.count("users"), before)

    def test_login_errors(self):
        b = self.user("lg")
        unknown = uniq("nobody")
        for username, password in ((b.username, "wrong password"), (unknown, PASSWORD)):
            with self.subTest(username=username):
                r = self.browser().login(username, password)
                err = self.assert_error(r, 401, "unauthorized")
                self.assertEqual(err["message"], "wrong username or password")
                self.assertIsNone(cookie_attrs(r, "shoal_sid")[0], "no session on a failure")

    def test_malformed_json_and_wrong_types(self):
        b = self.user("mj")
        before_users, before_items = self.count("users"), self.count("items")
        bad = [b"{", b"not json", b"{\"username\": \"x\",}", b"{\"title\": \"a\"} trailing",
               b"{\"title\": 'single'}", b"\xef\xbb\xbf{\"title\": \"bom\"}x", b"nul\x00l"]
        for path in ("/api/auth/signup", "/api/auth/login", "/api/items"):
            for body in bad:
                with self.subTest(path=path, body=body):
                    r = b.request("POST", path, body=body)
                    self.assert_error(r, 400, "malformed")
            for body in (b"[]", b"\"text\"", b"42", b"null", b"[{\"title\": \"a\"}]"):
                with self.subTest(path=path, body=body):
                    r = b.request("POST", path, body=body)
                    self.assert_error(r, 400, codes=("malformed", "invalid"))
            with self.subTest(path=path, body="(empty)"):
                r = b.request("POST", path, body=b"", headers={"Content-Length": "0"})
                self.assert_error(r, 400, codes=("malformed", "invalid"))
        for body in ({"title": 5, "body": "x"}, {"title": None, "body": "x"},
                     {"title": ["a"], "body": "x"}, {"title": "ok", "body": 5},
                     {"title": "ok", "body": ["x"]}, {"title": "ok", "body": {"a": "b"}},
                     {"title": True}, {"body": "no title"}):
            with self.subTest(body=body):
                r = b.request("POST", "/api/items", json_body=body)
                self.assert_error(r, 400, codes=("invalid", "malformed"))
        self.assertEqual(self.count("users"), before_users)
        self.assertEqual(self.count("items"), before_items)

    def test_invalid_utf8_refused(self):
        b = self.user("u8")
        before_users, before_items = self.count("users"), self.count("items")
        bad_bytes = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
                     b"\x80", b"\xfe\xfe"]
        for raw in bad_bytes:
            bodies = [
                ("/api/auth/signup", b'{"username": "ab' + raw + b'c", "password": "12345678"}'),
                ("/api/auth/signup",
                 b'{"username": "' + uniq("x").encode() + b'", "password": "1234' + raw
                 + b'5678"}'),
                ("/api/auth/login", b'{"username": "' + b.username.encode()
                 + b'", "password": "' + raw + b'"}'),
                ("/api/items", b'{"title": "t' + raw + b'", "body": ""}'),
                ("/api/items", b'{"title": "t", "body": "b' + raw + b'"}'),
            ]
            for path, body in bodies:
                with self.subTest(path=path, body=body):
                    r = b.request("POST", path, body=body)
                    self.assert_error(r, 400, codes=("malformed", "invalid"))
        # a lone surrogate written as a JSON escape is no character either
        for body in ({"title": "a\ud800b", "body": ""}, {"title": "ok", "body": "\udfff"}):
            with self.subTest(body=repr(body)):
                r = b.request("POST", "/api/items", body=json_bytes(body))
                self.assert_error(r, 400, codes=("malformed", "invalid"))
        self.assertEqual(self.count("users"), before_users)
        self.assertEqual(self.count("items"), before_items)

    def test_body_too_large(self):
        b = self.user("big")
        before = self.count("items")
        big = 2 * 1024 * 1024
        for path, cookie in (("/api/items", True), ("/api/auth/signup", False),
                             ("/api/auth/login", False)):
            with self.subTest(path=path):
                payload = b'{"title": "big", "body": "' + b"x" * big + b'"}'
                head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                        "application/json\r\nContent-Length: %d\r\n"
                        % (path, self.port, len(payload)))
                if cookie:
                    head += "Cookie: %s\r\nX-CSRF-Token: %s\r\n" % (b.cookie_header(), b.csrf)
                reply = raw_http(self.port, (head + "\r\n").encode() + payload, method="POST",
                                 send_errors_ok=True, timeout=10)
                self.assert_error(reply, 413, "too_large")
        # within the byte limit but over the item limits: 400, not 413
        r = b.create_item("t" * 5000, "")
        self.assert_error(r, 400, "invalid")
        self.assertEqual(self.count("items"), before)

    def test_not_found_and_method_not_allowed(self):
        b = self.user("nf")
        for path in ("/api/items/999999999999", "/api/items/abc", "/api/items/12abc",
                     "/api/items/-1", "/api/items/1.5", "/api/auth/nope", "/api/nope",
                     "/api/items/1/extra"):
            with self.subTest(path=path):
                self.assert_error(self.browser().request("GET", path), 404, "not_found")
        self.assert_error(b.delete_item(999999999999), 404, "not_found")
        self.assert_error(b.delete_item("abc"), 404, "not_found")
        allowed = [("GET", "/api/auth/signup", "POST"), ("GET", "/api/auth/login", "POST"),
                   ("GET", "/api/auth/logout", "POST"), ("DELETE", "/api/auth/login", "POST"),
                   ("POST", "/api/me", "GET"), ("DELETE", "/api/me", "GET"),
                   ("PUT", "/api/items", "POST"), ("DELETE", "/api/items", "GET"),
                   ("POST", "/api/items/1", "DELETE"), ("PUT", "/api/items/1", "GET"),
                   ("PATCH", "/api/items/1", "DELETE")]
        for method, path, must_allow in allowed:
            with self.subTest(method=method, path=path):
                r = self.browser().request(method, path, body=b"{}")
                self.assert_error(r, 405, "method_not_allowed")
                allow = [m.strip() for m in (r.header("Allow") or "").split(",")]
                self.assertIn(must_allow, allow, "Allow: %r" % r.header("Allow"))
                self.assertNotIn(method, allow)

    # --- items

    def test_item_create_get_list_delete(self):
        anon = self.browser()
        self.assert_error(anon.create_item("anonymous", "x"), 401, "unauthorized")
        b = self.user("crud")
        body = "first line\nsecond line\twith tab\r\n" + "\u00e9\U0001F600" * 10
        t0 = time.time()
        r = b.create_item("Hello board", body)
        self.assertEqual(r.status, 201, r)
        it = r.json()["item"]
        self.assertEqual(it["title"], "Hello board")
        self.assertEqual(it["body"], body)
        self.assertEqual(it["author"], b.username)
        self.assertEqual(it["author_id"], b.user["id"])
        self.assertEqual(it["views"], 0)
        self.assertIsInstance(it["id"], int)
        self.assertLess(abs(it["created_at"] / 1000.0 - t0), 60, it)
        lsn, attrs = cookie_attrs(r, "shoal_lsn")
        self.assertRegex(lsn or "", r"^[0-9]+$", r.headers.get_all("Set-Cookie"))
        self.assertEqual(self.count("items", "id = %d" % it["id"]), 1)

        r = b.get_item(it["id"])
        self.assertEqual(r.status, 200, r)
        got = r.json()["item"]
        for k in ("id", "title", "body", "author", "author_id", "created_at"):
            self.assertEqual(got[k], it[k], k)
        self.assertEqual(got["views"], 1)
        self.source(r)

        r = b.list_items()
        self.assertEqual(r.status, 200, r)
        self.source(r)
        page = r.json()
        self.assertIn("next_cursor", page)
        listed = {x["id"]: x for x in page["items"]}
        self.assertIn(it["id"], listed)
        row = listed[it["id"]]
        for k in ("id", "title", "excerpt", "author", "author_id", "created_at"):
            self.assertIn(k, row)
        self.assertEqual(row["excerpt"], body[:200])
        self.assertEqual(row["author"], b.username)

        r = b.delete_item(it["id"])
        self.assertEqual(r.status, 204, r)
        self.assertRegex(cookie_attrs(r, "shoal_lsn")[0] or "", r"^[0-9]+$")
        self.assertGreaterEqual(int(cookie_attrs(r, "shoal_lsn")[0]), int(lsn))
        self.assert_error(b.get_item(it["id"]), 404, "not_found")
        self.assert_error(b.delete_item(it["id"]), 404, "not_found")
        self.assertNotIn(it["id"], self.list_ids(b.list_items()))
        self.assertEqual(self.count("items", "id = %d" % it["id"]), 0)
        self.assert_error(anon.delete_item(it["id"]), 401, "unauthorized")

    def test_item_validation(self):
        b = self.user("val")
        before = self.count("items")
        bad = [("", "x"), ("   ", "x"), ("\t\n ", "x"), ("t" * 201, ""), ("\U0001F600" * 201, ""),
               ("a\x01b", ""), ("line\nbreak", ""), ("tab\there", ""), ("cr\rhere", ""),
               ("nul\x00", ""), ("esc\x1b[31m", ""),
               ("ok", "b" * 10001), ("ok", "\U0001F600" * 10001), ("ok", "bell\x07"),
               ("ok", "nul\x00byte"), ("ok", "esc\x1b"), ("ok", "\x0b vertical tab"),
               ("ok", "\x0c form feed")]
        for title, body in bad:
            with self.subTest(title=title[:20], body=body[:20], lens=(len(title), len(body))):
                # NUL: valid JSON, but a JSON library may refuse it as malformed
                codes = ("invalid", "malformed") if "\x00" in title + body else ("invalid",)
                self.assert_error(b.create_item(title, body), 400, codes=codes)
        self.assertEqual(self.count("items"), before, "a refused item was stored")
        good = [("t" * 200, ""), ("\U0001F600" * 200, ""), ("x", "b" * 10000),
                ("y", "\U0001F600" * 10000), ("z", "keeps\n\r\tthese"), (" padded ", "")]
        for title, body in good:
            with self.subTest(title=title[:20], lens=(len(title), len(body))):
                it = self.item(b, title, body)
                got = b.get_item(it["id"]).json()["item"]
                self.assertEqual(got["title"], title)
                self.assertEqual(got["body"], body)
        self.assertEqual(self.count("items"), before + len(good))

    def test_views_increment(self):
        b = self.user("views")
        it = self.item(b)
        self.assertEqual(it["views"], 0)
        seen = [b.get_item(it["id"]).json()["item"]["views"] for _ in range(3)]
        self.assertEqual(seen, [1, 2, 3])
        other = self.user("viewer")
        self.assertEqual(other.get_item(it["id"]).json()["item"]["views"], 4)
        anon = self.browser()
        r = wait_until(lambda: (lambda r: r if r.status == 200 else None)(anon.get_item(it["id"])),
                       5, "the item to reach an anonymous reader")
        self.assertEqual(r.json()["item"]["views"], 5)
        # a list does not count views
        b.list_items()
        self.assertEqual(b.get_item(it["id"]).json()["item"]["views"], 6)

    def test_delete_own_vs_others(self):
        owner = self.user("owner")
        other = self.user("other")
        it = self.item(owner)
        self.assert_error(other.delete_item(it["id"]), 403, "forbidden")
        r = owner.get_item(it["id"])
        self.assertEqual(r.status, 200, "the item survived someone else's delete")
        self.assertEqual(self.count("items", "id = %d" % it["id"]), 1)
        self.assertEqual(owner.delete_item(it["id"]).status, 204)
        self.assert_error(other.delete_item(it["id"]), 404, "not_found")

    def test_excerpt_is_200_characters(self):
        b = self.user("exc")
        body = "".join(random.choice("a\u00e9\u4e2d\U0001F600 ") for _ in range(350))
        it = self.item(b, "excerpt " + nonce(), body)
        rows = {x["id"]: x for x in b.list_items(limit=100).json()["items"]}
        self.assertEqual(rows[it["id"]]["excerpt"], body[:200])
        short = self.item(b, "short " + nonce(), "tiny")
        rows = {x["id"]: x for x in b.list_items(limit=100).json()["items"]}
        self.assertEqual(rows[short["id"]]["excerpt"], "tiny")

    # --- pagination and search

    def test_keyset_pagination_walk_stable_under_inserts(self):
        b = self.user("page")
        for i in range(45):
            self.item(b, "page item %d" % i, "body %d" % i)
        existing = [int(x) for x in self.stack.psql("SELECT id FROM items ORDER BY id DESC")
                    .split()]
        self.assertGreaterEqual(len(existing), 45)
        limit = 7
        walked, cursor, pages, inserted = [], None, 0, []
        while True:
            r = b.list_items(cursor=cursor, limit=limit)
            self.assertEqual(r.status, 200, r)
            page = r.json()
            ids = [x["id"] for x in page["items"]]
            self.assertLessEqual(len(ids), limit)
            walked += ids
            pages += 1
            # new items arrive while the reader pages: they are newer than
            # the cursor, so the walk neither repeats nor skips anything
            inserted.append(self.item(b, "inserted while paging %d" % pages)["id"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            self.assertIsInstance(cursor, str, page)
            self.assertLess(pages, len(existing) + 5, "the walk does not end")
        self.assertEqual(walked, existing, "walk != every item newest first, each once")
        self.assertLessEqual(pages, math.ceil(len(existing) / limit) + 1)
        self.assertFalse(set(walked) & set(inserted))

        # default and largest page sizes
        self.assertEqual(len(self.list_ids(b.list_items())), 20)
        self.assertEqual(len(self.list_ids(b.list_items(limit=100))),
                         min(100, len(existing) + len(inserted)))
        self.assertEqual(len(self.list_ids(b.list_items(limit=1))), 1)

    def test_list_parameter_errors(self):
        b = self.browser()
        for params in ({"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "abc"},
                       {"limit": "1.5"}, {"limit": "10abc"}, {"limit": "99999999999999999999"},
                       {"cursor": "abc"}, {"cursor": "-1"}, {"cursor": "1.5"},
                       {"cursor": "12abc"}, {"cursor": "1 OR 1=1"},
                       {"cursor": "99999999999999999999999"},
                       {"q": "a" * 101}, {"q": "\u00e9" * 101}):
            with self.subTest(params=params):
                self.assert_error(b.list_items(**params), 400, "invalid")
        for params in ({"q": "a" * 100}, {"q": "\U0001F600" * 100}, {"q": ""},
                       {"limit": "100"}, {"limit": "1"}):
            with self.subTest(params=params):
                self.assertEqual(b.list_items(**params).status, 200)

    def test_search(self):
        b = self.user("search")
        n1, n2, n3 = nonce(), nonce(), nonce()
        a = self.item(b, "Thundering herds " + n1, "The galloping horses of the meetings " + n3)
        c = self.item(b, "Quiet title " + n2, "Nothing loud here " + n3)
        d = self.item(b, "SHOUTING " + n2, "UPPER CASE BODY " + n3)

        def found(q, limit=100):
            r = b.list_items(q=q, limit=limit)
            self.assertEqual(r.status, 200, r)
            self.source(r)
            return set(self.list_ids(r))

        self.assertEqual(found(n1), {a["id"]})
        self.assertEqual(found(n2), {c["id"], d["id"]})
        self.assertEqual(found(n3), {a["id"], c["id"], d["id"]})
        self.assertEqual(found(nonce()), set())
        for q in ("thundering", "THUNDERING", "Thundering", "horses", "HoRsEs"):
            with self.subTest(q=q):
                got = found(q)
                self.assertIn(a["id"], got)
                self.assertNotIn(c["id"], got)
        self.assertIn(d["id"], found("shouting"))
        self.assertIn(d["id"], found("upper"))
        uses_english = "english" in self.stack.psql(
            "SELECT coalesce(string_agg(generation_expression, ' '), '') FROM "
            "information_schema.columns WHERE table_name = 'items'")
        if uses_english:
            for q in ("thunder", "gallop", "horse", "meeting", "meet"):
                with self.subTest(stem=q):
                    self.assertIn(a["id"], found(q))
        # search pages like the full list
        for i in range(5):
            self.item(b, "paged %s %d" % (n1, i))
        seen, cursor = [], None
        while True:
            page = b.list_items(q=n1, cursor=cursor, limit=2).json()
            seen += [x["id"] for x in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            self.assertLess(len(seen), 20)
        self.assertEqual(len(seen), 6)
        self.assertEqual(seen, sorted(seen, reverse=True))
        self.assertEqual(set(seen), found(n1))
        # deleted items leave the search
        self.assertEqual(b.delete_item(a["id"]).status, 204)
        self.assertNotIn(a["id"], found(n3))
        if not uses_english:
            self.skipTest("the search column does not use the 'english' configuration; "
                          "stemming not checked")

    # --- read source, cache and read-your-writes cookie

    def read_until_cached(self, browser, item_id):
        """Read an item until a read comes from the cache; returns the
        sources seen. Only a replica read fills the cache (its replay
        position says what the answer includes), and the writer's own reads
        go to the primary until the replica has replayed the write."""
        sources = []

        def cached():
            r = browser.get_item(item_id)
            self.assertEqual(r.status, 200, r)
            sources.append(self.source(r))
            return sources[-1] == "cache"
        wait_until(cached, 5, "a read of item %s from the cache" % item_id)
        return sources

    def test_cache_second_read_and_invalidation(self):
        b = self.user("cache")
        it = self.item(b, "cached " + nonce(), "body")
        sources = self.read_until_cached(b, it["id"])
        # the read before the first hit came from the replica and filled it
        self.assertEqual(sources[-2:], ["replica", "cache"], sources)
        second = b.get_item(it["id"])
        self.assertEqual(self.source(second), "cache", "next read of a cached item")
        self.assertEqual(second.json()["item"]["views"], len(sources) + 1,
                         "views still count on a cache hit")

        anon = self.browser()
        r = anon.get_item(it["id"])
        self.assertEqual(self.source(r), "cache")

        # a list page is invalidated by a new item and by a delete
        word = nonce()
        x = self.item(b, "listed " + word)
        self.assertEqual(self.list_ids(b.list_items(q=word)), [x["id"]])
        self.assertEqual(self.list_ids(b.list_items(q=word)), [x["id"]])
        y = self.item(b, "listed too " + word)
        self.assertEqual(self.list_ids(b.list_items(q=word)), [y["id"], x["id"]],
                         "a cached list survived a create")
        self.assertEqual(b.delete_item(x["id"]).status, 204)
        self.assertEqual(self.list_ids(b.list_items(q=word)), [y["id"]],
                         "a cached list survived a delete")

        # a delete invalidates the cached item: the writer sees 404 at once,
        # anyone else as soon as the replica replays it, long before the TTL
        self.assertEqual(b.delete_item(it["id"]).status, 204)
        self.assert_error(b.get_item(it["id"]), 404, "not_found")
        wait_until(lambda: anon.get_item(it["id"]).status == 404, 5,
                   "the deleted item to leave an anonymous reader's view")

    def test_invalid_lsn_cookie_ignored(self):
        b = self.user("lsn")
        it = self.item(b)
        anon = self.browser()
        wait_until(lambda: anon.get_item(it["id"]).status == 200, 5, "item visible")
        for value in ("abc", "-1", "1e9", "0x10", "99999999999999999999999999", "", "1 2",
                      "%00", "18446744073709551616"):
            with self.subTest(value=value):
                h = {"Cookie": "shoal_lsn=%s" % value}
                r = anon.get_item(it["id"], headers=h)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(anon.list_items(headers=h).status, 200)

    def test_cache_metrics_in_cluster_metrics(self):
        if not self.stack.healths:
            self.skipTest("the stack has no registry, so /metrics/cluster cannot reach the "
                          "query instance")
        b = self.user("metric")
        it = self.item(b)
        self.read_until_cached(b, it["id"])

        def cache_lines():
            r = self.stack.edge.get("/metrics/cluster", timeout=5)
            if r.status != 200:
                return None
            lines = [ln for ln in r.body.decode().splitlines()
                     if ln.startswith("shoal_cache_") and 'service="query"' in ln]
            return lines or None

        lines = wait_until(cache_lines, 10, "shoal_cache_* series of the query service in "
                           "/metrics/cluster")
        hits = [ln for ln in lines if "hit" in ln.split(" ")[0]]
        self.assertTrue(hits, "no cache hit series among:\n" + "\n".join(lines))
        self.assertGreater(sum(float(ln.rsplit(" ", 1)[1]) for ln in hits), 0,
                           "cache hits are counted:\n" + "\n".join(lines))


if __name__ == "__main__":
    unittest.main()
