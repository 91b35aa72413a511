"""Integration tests of the board under Postgres failures: read-your-writes
over many write-then-read pairs, the replica stopped and restarted under
read load, the primary stopped and restarted, and query instances racing
on the migrations of a fresh database.

Run with tests/integration/run failover (or migrat, write_then_read).
SHOAL_IT_PAIRS sets the number of write-then-read pairs (default 10000).
"""

import collections
import os
import random
import re
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

import shoal_stack  # noqa: E402
import subprocess  # noqa: E402
from shoal_stack import Browser, wait_until  # noqa: E402
from test_board import BoardCase, nonce  # noqa: E402

PAIRS = int(os.environ.get("SHOAL_IT_PAIRS", "10000"))
RW_THREADS = 4
LIST_LIMIT = 20               # the default page size
READERS = 3
MAX_ERROR_RATIO = 0.005
WRITE_REFUSED_WITHIN_S = 1.0
RECOVER_S = 20.0
OUTAGE_S = 1.0


class WriteThenRead(BoardCase):
    """One session writes and at once reads what it wrote, PAIRS times."""

    shared = False
    healths = 0

    def test_write_then_read_never_stale(self):
        owner = self.user("rw")
        per_thread = [PAIRS // RW_THREADS + (1 if k < PAIRS % RW_THREADS else 0)
                      for k in range(RW_THREADS)]
        lock = threading.Lock()
        sources = collections.Counter()
        stale, errors = [], []

        def worker(k, n):
            b = owner.copy()  # the same session; its own connection and shoal_lsn
            local, my_stale, my_errors = collections.Counter(), [], []
            try:
                for i in range(n):
                    r = b.create_item("rw %d-%d" % (k, i), "")
                    if r.status != 201:
                        my_errors.append(("create", r.status, r.body[:200]))
                        continue
                    iid = r.json()["item"]["id"]
                    g = b.get_item(iid)
                    local["item:%s" % g.header("X-Shoal-Read")] += 1
                    if g.status == 404:
                        my_stale.append(("item", iid, g.header("X-Shoal-Read")))
                    elif g.status != 200 or g.json()["item"]["id"] != iid:
                        my_errors.append(("get", g.status, g.body[:200]))
                    page = b.list_items()
                    local["list:%s" % page.header("X-Shoal-Read")] += 1
                    if page.status != 200:
                        my_errors.append(("list", page.status, page.body[:200]))
                        continue
                    ids = [x["id"] for x in page.json()["items"]]
                    if iid in ids:
                        continue
                    if len(ids) == LIST_LIMIT and min(ids) > iid:
                        # the other writers added a full page since: not stale
                        local["pushed off the first page"] += 1
                    else:
                        my_stale.append(("list", iid, page.header("X-Shoal-Read"),
                                         "page %s..%s" % (ids[0], ids[-1]) if ids else "empty"))
            except Exception as e:  # noqa: BLE001 - reported below
                my_errors.append(("exception", repr(e)))
            finally:
                b.close()
                with lock:
                    sources.update(local)
                    stale.extend(my_stale)
                    errors.extend(my_errors)

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(k, n)) for k, n in enumerate(per_thread)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
        print("\n  %d write-then-read pairs in %.1fs (%.0f requests/s), %d threads"
              % (PAIRS, took, 3 * PAIRS / took, RW_THREADS))
        for kind in ("item", "list"):
            split = {k.split(":")[1]: v for k, v in sources.items() if k.startswith(kind + ":")}
            print("  %s reads by X-Shoal-Read: %s" % (kind, dict(sorted(split.items()))))
        if sources["pushed off the first page"]:
            print("  items already pushed off the first page by other writers: %d"
                  % sources.pop("pushed off the first page"))
        print("  stale reads: %d, errors: %d" % (len(stale), len(errors)))
        self.assertEqual(errors, [], "requests failed: %r" % (errors[:10],))
        self.assertEqual(stale, [], "%d stale reads, first: %r" % (len(stale), stale[:10]))
        self.assertEqual(self.count("items", "author_id = %d" % owner.user["id"]), PAIRS,
                         "every acknowledged create stored exactly once")
        self.assertEqual(sum(sources.values()), 2 * PAIRS)


class ReadLoad:
    """READERS threads doing uncached reads (a search for a new word each
    time, or a random page), each recorded as (start, end, status, source)."""

    def __init__(self, port, max_id):
        self.port = port
        self.max_id = max_id
        self.records = []
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(READERS)]

    def _run(self):
        b = Browser(self.port, timeout=10)
        try:
            while not self.stop_event.is_set():
                t0 = time.monotonic()
                try:
                    if random.random() < 0.5:
                        r = b.list_items(q=nonce(12))
                    else:
                        r = b.list_items(cursor=str(random.randint(1, self.max_id + 1)),
                                         limit=random.randint(1, 50))
                    rec = (t0, time.monotonic(), r.status, r.header("X-Shoal-Read"))
                except Exception as e:  # noqa: BLE001 - counted as an error
                    rec = (t0, time.monotonic(), None, repr(e))
                    b.close()
                self.records.append(rec)
        finally:
            b.close()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def since(self, t):
        return [r for r in list(self.records) if r[0] >= t]

    @staticmethod
    def split(records):
        return dict(collections.Counter(r[3] if r[2] == 200 else "error %s" % (r[2],)
                                        for r in records))


class ReplicaDown(BoardCase):
    shared = False
    healths = 0
    queries = 2

    def test_replica_stopped_reads_continue_from_primary(self):
        b = self.user("rs")
        ids = [self.item(b, "replica test %d" % i)["id"] for i in range(20)]
        self.stack.pg_replica.wait_caught_up()
        anon = self.browser()
        wait_until(lambda: anon.list_items(q=nonce()).header("X-Shoal-Read") == "replica", 10,
                   "uncached reads to be served by the replica (precondition)")
        load = ReadLoad(self.port, max(ids)).start()
        try:
            wait_until(lambda: len(load.records) >= 100, 20, "100 reads before the fault")
            self.stack.pg_replica.stop()
            t_stopped = time.monotonic()
            # an outage of at least OUTAGE_S and 300 reads
            wait_until(lambda: len(load.since(t_stopped)) >= 300
                       and time.monotonic() - t_stopped >= OUTAGE_S, 30 + OUTAGE_S,
                       "300 reads and %.1fs with the replica stopped" % OUTAGE_S)
            t_restarting = time.monotonic()  # the replica may answer from here on
            self.stack.pg_replica.start()
            t_restarted = time.monotonic()
            back = wait_until(lambda: [r for r in load.since(t_restarted) if r[3] == "replica"],
                              RECOVER_S, "reads to come back to the replica")
            t_back = back[0][1] - t_restarted
            t_end = time.monotonic()
            wait_until(lambda: len([r for r in load.records if r[0] >= t_end]) >= 50, 20,
                       "50 more reads")
        finally:
            load.stop()
        recs = load.records
        before = [r for r in recs if r[1] < t_stopped]
        during = [r for r in recs if r[0] >= t_stopped and r[1] <= t_restarting]
        after = [r for r in recs if r[0] >= t_restarted]
        errors = [r for r in recs if r[2] != 200]
        print("\n  reads before the stop: %s" % ReadLoad.split(before))
        print("  replica stopped:       %s" % ReadLoad.split(during))
        print("  after its restart:     %s (back on the replica %.2fs after the restart)"
              % (ReadLoad.split(after), t_back))
        print("  errors: %d of %d (%.2f %%)"
              % (len(errors), len(recs), 100.0 * len(errors) / len(recs)))
        self.assertIn("replica", ReadLoad.split(before), "reads used the replica before")
        self.assertLessEqual(len(errors), MAX_ERROR_RATIO * len(recs),
                             "too many failed reads: %r" % (errors[:10],))
        ok_during = [r for r in during if r[2] == 200]
        self.assertGreater(len(ok_during), 100, "reads went on while the replica was down")
        self.assertFalse([r for r in ok_during if r[3] == "replica"],
                         "a read claims a stopped replica served it")
        self.assertIn("primary", ReadLoad.split(during))


class PrimaryDown(BoardCase):
    shared = False
    healths = 0
    queries = 2

    def test_primary_stopped_writes_503_reads_continue(self):
        b = self.user("ps")
        items = [self.item(b, "primary test %d %s" % (i, nonce())) for i in range(5)]
        anon = self.browser()
        self.stack.pg_replica.wait_caught_up()
        self.stack.pg_primary.stop()

        times = []
        for i in range(5):
            r = b.create_item("during the outage %d" % i, "")
            times.append(r.elapsed)
            self.assert_error(r, 503, "unavailable")
            self.assertTrue(r.header("Retry-After"), "503 without Retry-After")
        r = b.delete_item(items[0]["id"])
        times.append(r.elapsed)
        self.assert_error(r, 503, "unavailable")
        print("\n  writes with the primary stopped answered 503 in %s ms"
              % ", ".join("%.0f" % (t * 1000) for t in times))
        self.assertLess(max(times), WRITE_REFUSED_WITHIN_S,
                        "a write took longer than %.1fs to be refused" % WRITE_REFUSED_WITHIN_S)

        # reads go on from the replica (or the cache), for the writer too
        read_sources = collections.Counter()
        for reader in (b, anon):
            for it in items:
                r = reader.get_item(it["id"])
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["item"]["title"], it["title"])
                read_sources[self.source(r)] += 1
            r = reader.list_items()
            self.assertEqual(r.status, 200, r)
            read_sources[self.source(r)] += 1
            self.assertTrue({it["id"] for it in items} <= set(self.list_ids(r)))
            r = reader.list_items(q=nonce())  # uncached: a database read
            self.assertEqual(r.status, 200, r)
            self.assertEqual(self.source(r), "replica")
        print("  reads with the primary stopped: %s" % dict(read_sources))
        self.assertNotIn("primary", read_sources)

        self.stack.pg_primary.start()
        t0 = time.monotonic()
        after = wait_until(lambda: (lambda r: r if r.status == 201 else None)(
            b.create_item("after the outage", "")), RECOVER_S, "writes to work again")
        print("  writes work again %.2fs after the primary restarted"
              % (time.monotonic() - t0))
        r = b.get_item(after.json()["item"]["id"])
        self.assertEqual(r.status, 200, "read of the write after the restart: %r from %s "
                         "(shoal_lsn %s)"
                         % (r, r.header("X-Shoal-Read"), b.cookies.get("shoal_lsn")))
        self.assertEqual(self.count("items", "title LIKE 'during the outage%'"), 0,
                         "a write answered 503 was applied")
        self.assertEqual(self.count("items", "id = %d" % items[0]["id"]), 1,
                         "a delete answered 503 was applied")
        self.assertEqual(b.delete_item(items[0]["id"]).status, 204)
        self.stack.pg_replica.wait_streaming(RECOVER_S)

    def test_primary_down_never_serves_a_read_older_than_the_readers_write(self):
        b = self.user("ryw")
        replica = self.stack.pg_replica
        replica.wait_caught_up()
        replica.psql("SELECT pg_wal_replay_pause()", db="postgres")
        wait_until(lambda: replica.psql("SELECT pg_get_wal_replay_pause_state()",
                                        db="postgres") == "paused", 10, "replay paused")
        try:
            it = self.item(b, "written while the replica lags " + nonce())
            self.stack.pg_primary.stop()
            # the replica has not replayed this reader's write: answering
            # from it would be stale; 503 is the honest answer
            r = b.get_item(it["id"])
            if r.status == 200:
                self.assertEqual(self.source(r), "cache", r)
            else:
                self.assert_error(r, 503, "unavailable")
            r = b.list_items()
            if r.status == 200:
                self.assertIn(it["id"], self.list_ids(r),
                              "a list older than the reader's write, from %s"
                              % r.header("X-Shoal-Read"))
            else:
                self.assert_error(r, 503, "unavailable")
        finally:
            replica.psql("SELECT pg_wal_replay_resume()", db="postgres")
        self.stack.pg_primary.start()
        wait_until(lambda: b.get_item(it["id"]).status == 200, RECOVER_S,
                   "the write to be readable again")


class StatementTimeout(BoardCase):
    """A write stuck behind a lock: statement_timeout comes from the
    request's deadline, so Postgres itself ends the statement; the service
    answers at the deadline and its connection serves again."""

    shared = False
    healths = 0
    replica = False
    edge_env = dict(BoardCase.edge_env, SHOAL_REQUEST_TIMEOUT_MS="800")
    query_env = {"SHOAL_PG_POOL": "1"}

    def test_deadline_becomes_statement_timeout(self):
        b = self.user("locked")
        self.item(b, "before the lock")
        primary = self.stack.pg_primary
        # a session holds the table's lock for much longer than any deadline
        holder = subprocess.Popen(
            [shoal_stack._pg_tool("psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", shoal_stack.PG_SUPERUSER, "-d", shoal_stack.PG_DB, "-c",
             "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(30); COMMIT;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (holder.kill(), holder.wait()))
        wait_until(lambda: primary.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c "
                                        "ON c.oid = l.relation WHERE c.relname = 'items' "
                                        "AND l.mode = 'AccessExclusiveLock' AND l.granted") == "1",
                   10, "the lock to be held")
        started = time.monotonic()
        r = b.create_item("behind the lock")
        took = time.monotonic() - started
        print("\n  write behind a lock: %d after %.2f s (request deadline 0.8 s)" % (r.status, took))
        self.assertIn(r.status, (503, 504), r)
        self.assertLess(took, 1.5, "the write was not cut at its deadline")

        # Postgres itself cancels the statement (statement_timeout), while the
        # lock is still held: nothing of ours waits on the lock any more
        def cancelled():
            return primary.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                                "'Lock' AND query LIKE 'WITH ins AS%'") == "0"
        wait_until(cancelled, 2.0, "the stuck INSERT to be cancelled by statement_timeout")
        self.assertIsNone(holder.poll(), "the lock holder ended early; the test proves nothing")

        # the same (only) connection serves as soon as the lock is gone, and
        # the cancelled write left nothing behind
        primary.psql("SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_class c "
                     "ON c.oid = l.relation WHERE c.relname = 'items' "
                     "AND l.mode = 'AccessExclusiveLock' AND l.granted")
        holder.wait(timeout=10)
        self.assertEqual(self.count("items", "title = 'behind the lock'"), 0)
        wait_until(lambda: b.create_item("after the lock").status == 201, 5,
                   "a write on the same connection after the lock")


class Migrations(BoardCase):
    """Two query instances started at the same moment on a fresh database."""

    shared = False
    healths = 0
    queries = 2
    edges = 0
    replica = False

    def test_instances_started_together_apply_each_migration_once(self):
        q1, q2 = self.stack.queries
        rows = self.stack.psql("SELECT version FROM schema_migrations ORDER BY version")
        versions = [int(v) for v in rows.split()]
        self.assertTrue(versions, "no migration recorded")
        self.assertEqual(len(versions), len(set(versions)))
        applied_re = re.compile(r"migration applied version=(\d+)")
        uptodate_re = re.compile(r"migrations up to date version=(\d+)")
        applied = collections.Counter()
        for q in (q1, q2):
            text = q.log_text()
            mine = [int(v) for v in applied_re.findall(text)]
            applied.update(mine)
            if not mine:
                self.assertEqual([int(v) for v in uptodate_re.findall(text)], [max(versions)],
                                 "%s applied nothing and should say it is up to date" % q.name)
        print("\n  schema_migrations: %s; 'migration applied' lines: %s"
              % (versions, dict(applied)))
        self.assertEqual(sorted(applied), versions, "applied versions != schema_migrations")
        self.assertEqual(set(applied.values()), {1}, "a migration was applied twice")

        # both serve: an edge bound to each instance alone
        e1 = self.stack.add_edge(query_endpoints=[q1.endpoint])
        e2 = self.stack.add_edge(query_endpoints=[q2.endpoint])
        name = None
        for e in (e1, e2):
            b = self.browser(e)
            if name is None:
                name = "mig_" + nonce(8)
                self.assertEqual(b.signup(name, "password one").status, 201)
            else:
                self.assertEqual(b.login(name, "password one").status, 200)
            it = self.item(b, "served by %s" % e.name)
            self.assertEqual(b.get_item(it["id"]).status, 200)
        self.assertEqual(self.count("items"), 2)

        # `shoal-query migrate` on an up-to-date database applies nothing
        rc, out = q1.migrate()
        self.assertEqual(rc, 0, out)
        self.assertNotIn("migration applied", out)
        self.assertRegex(out, r"migrations up to date version=%d" % max(versions))
        self.assertEqual(self.stack.psql("SELECT count(*) FROM schema_migrations"),
                         str(len(versions)))


if __name__ == "__main__":
    unittest.main()
