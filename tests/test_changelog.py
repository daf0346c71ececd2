"""
Tests for the SQLite store's change log (C{shared/PROTOCOL.md} section 8):
the versioned schema and the upgrade of a first-release file, the log
written with each change, etags from the counter row shared by several
connections and processes, retention and pruning, the publisher and its
doorbell, and a full storage. Real files, real threads, real processes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys

from twisted.internet import defer, utils
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from proto.store.base import (
    DELETE,
    PUT,
    Change,
    Document,
    Snapshot,
    StorageFullError,
    StoreError,
)
from proto.store import sqlite_schema
from proto.store.sqlite import SQLiteStore
from tests.support import ROOT
from tests.test_store import PostgresBackend, RecordingHub, SQLiteBackend

#: The schema of the first release (commit af61e5b), as its files have it.
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    etag INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('etag', 0);
"""


def sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import reactor

    return deferLater(reactor, seconds)


@inlineCallbacks
def waitUntil(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll C{predicate} on the reactor thread until true (bounded)."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        yield sleep(0.005)
        waited += 0.005


class LogTestCase(SQLiteBackend, TestCase):
    """
    A fresh store (with a recording hub). On SQLite (a file in a temporary
    directory) here; the C{Postgres*} subclasses at the end run the same
    tests on PostgreSQL (L{tests.test_store.PostgresBackend}).
    """

    retain = 100_000

    def setUp(self) -> defer.Deferred:
        self.setUpBackend()
        self.hub = RecordingHub()
        self.store = self.open(self.hub)
        return self.store.start()

    def open(self, hub=None, **kwargs):
        kwargs.setdefault("retainChanges", self.retain)
        store = self.newStore(hub=hub, **kwargs)
        self.addCleanup(store.close)
        return store


class SchemaTests(TestCase):
    """The versioned schema; a first-release file is upgraded in place."""

    def makeFirstReleaseFile(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "documents.sqlite3")
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.executescript(FIRST_RELEASE_SCHEMA)
        connection.executemany(
            "INSERT INTO documents (key, id, etag, body) VALUES (?, ?, ?, ?)",
            [("users/1", "Users/1", 3, b'{"a": 1}'), ("users/2", "users/2", 7, b'{"b": 2}')],
        )
        connection.execute("UPDATE counters SET value = 9 WHERE name = 'etag'")
        connection.close()
        return path

    @inlineCallbacks
    def test_upgradeFirstRelease(self):
        """Documents and etags are kept; the log starts empty at the old etag."""
        path = self.makeFirstReleaseFile()
        hub = RecordingHub()
        store = SQLiteStore(path, hub=hub)
        self.addCleanup(store.close)
        yield store.start()
        found = yield store.read(["users/1", "USERS/2", "users/3"])
        self.assertEqual(
            found,
            Snapshot(
                [Document("Users/1", 3, b'{"a": 1}'), Document("users/2", 7, b'{"b": 2}'), None],
                [],
                9,
            ),
        )
        self.assertEqual(hub.etag, 9)
        page = yield store.changesSince(0)
        self.assertEqual((page.changes, page.scanned, page.floor), ([], 9, 9))
        version = yield store.put("users/3", b"{}")
        self.assertEqual(version.etag, 10)
        page = yield store.changesSince(9)
        self.assertEqual(page.changes, [Change("users/3", PUT, 10)])
        with sqlite3.connect(path) as connection:
            (userVersion,) = connection.execute("PRAGMA user_version").fetchone()
        self.assertEqual(userVersion, sqlite_schema.VERSION)

    @inlineCallbacks
    def test_reopenKeepsVersion(self):
        """A file at the current version is opened without an upgrade."""
        path = self.makeFirstReleaseFile()
        for _ in range(2):
            store = SQLiteStore(path)
            yield store.start()
            yield store.put("x", b"{}")
            yield store.close()
        with sqlite3.connect(path) as connection:
            self.assertEqual(connection.execute("SELECT count(*) FROM changes").fetchone(), (2,))
            self.assertEqual(
                connection.execute("PRAGMA user_version").fetchone(), (sqlite_schema.VERSION,)
            )

    def test_newerRefused(self):
        """A file from a newer release is refused, not damaged."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "docs.sqlite3")
        with sqlite3.connect(path) as connection:
            connection.execute(f"PRAGMA user_version = {sqlite_schema.VERSION + 1}")
        store = SQLiteStore(path)
        d = store.start()
        self.addCleanup(store.close)
        return self.assertFailure(d, StoreError).addCallback(
            lambda e: self.assertIn("newer release", str(e))
        )

    def test_documentsBecomeRowidTable(self):
        """
        Step 4: a version 3 file's WITHOUT ROWID C{documents} becomes an
        ordinary table with the same rows (ids, etags, bodies), still keyed
        by C{key} (a second row with the same key is refused).
        """
        connection = sqlite3.connect(":memory:", isolation_level=None)
        for step in sqlite_schema.STEPS[:3]:
            step(connection)
        connection.execute("PRAGMA user_version = 3")
        rows = [("users/1", "Users/1", 3, b'{"a": 1}'), ("users/2", "users/2", 7, b"{}")]
        connection.executemany(
            "INSERT INTO documents (key, id, etag, body) VALUES (?, ?, ?, ?)", rows
        )

        def layout() -> str:
            (sql,) = connection.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'documents'"
            ).fetchone()
            return str(sql).upper()

        self.assertIn("WITHOUT ROWID", layout())
        self.assertEqual(sqlite_schema.upgrade(connection, ":memory:"), 3)
        self.assertNotIn("WITHOUT ROWID", layout())
        self.assertEqual(
            connection.execute("SELECT key, id, etag, body FROM documents ORDER BY key").fetchall(),
            rows,
        )
        with self.assertRaises(sqlite3.IntegrityError):
            connection.execute(
                "INSERT INTO documents (key, id, etag, body) VALUES ('users/1', 'x', 1, x'')"
            )
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        self.assertNotIn("documents_rowid", tables)

    def test_stepsInOrder(self):
        """Each step runs once, in order, from the file's version."""
        connection = sqlite3.connect(":memory:", isolation_level=None)
        self.assertEqual(sqlite_schema.upgrade(connection, ":memory:"), 0)
        self.assertEqual(sqlite_schema.version(connection), sqlite_schema.VERSION)
        self.assertEqual(sqlite_schema.upgrade(connection, ":memory:"), sqlite_schema.VERSION)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        self.assertTrue({"documents", "counters", "changes"} <= tables)


class ChangeLogTests(LogTestCase):
    """Every change is in the log, in the same transaction, keyed by etag."""

    @inlineCallbacks
    def test_putsAndDeletes(self):
        yield self.store.put("Users/1", b"{}")
        yield self.store.put("users/1", b'{"x": 1}')  # keeps the stored id
        yield self.store.delete(["USERS/1", "missing"])
        yield self.store.put("orders/1", b"{}")
        self.assertEqual(
            self.logRows(),
            [
                (1, "users/1", "Users/1", sqlite_schema.CHANGE_PUT),
                (2, "users/1", "Users/1", sqlite_schema.CHANGE_PUT),
                (3, "users/1", "Users/1", sqlite_schema.CHANGE_DELETE),
                (4, "orders/1", "orders/1", sqlite_schema.CHANGE_PUT),
            ],
        )
        page = yield self.store.changesSince(0, "USERS/")
        self.assertEqual(
            page.changes,
            [Change("Users/1", PUT, 1), Change("Users/1", PUT, 2), Change("Users/1", DELETE, 3)],
        )
        self.assertEqual((page.scanned, page.floor), (4, 0))

    @inlineCallbacks
    def test_conflictWritesNoLog(self):
        yield self.store.put("a", b"{}")
        yield self.assertFailure(self.store.put("a", b"{}", ifMatch=5), Exception)
        self.assertEqual(len(self.logRows()), 1)

    @inlineCallbacks
    def test_pages(self):
        """A full page says how far it read; the next page goes on from there."""
        yield gatherResults([self.store.put(f"p/{n}", b"{}") for n in range(25)])
        yield self.store.put("q/1", b"{}")
        seen, since = [], 0
        for _ in range(10):
            page = yield self.store.changesSince(since, "p/", limit=10)
            seen += [change.etag for change in page.changes]
            if len(page.changes) < 10:
                break
            self.assertEqual(page.scanned, page.changes[-1].etag)
            since = page.scanned
        self.assertEqual(seen, list(range(1, 26)))
        self.assertEqual(page.scanned, 26)
        page = yield self.store.changesSince(100)
        self.assertEqual((page.changes, page.scanned), ([], 100))

    @inlineCallbacks
    def test_readEtag(self):
        """A snapshot says the highest etag committed when it was read."""
        yield self.store.put("a", b"{}")
        yield self.store.put("b", b"{}")
        found = yield self.store.read(["a"])
        self.assertEqual(found.etag, 2)
        current = yield self.store.currentEtag()
        self.assertEqual(current, 2)
        # Queued behind a write: read-your-writes, and its etag.
        put = self.store.put("c", b"{}")
        found = yield self.store.read(["c"])
        yield put
        self.assertEqual((found.results[0].etag, found.etag), (3, 3))

    @inlineCallbacks
    def test_publishedOnceInOrder(self):
        """The hub gets each change once, in etag order, with its position."""
        yield gatherResults([self.store.put(f"k/{n}", b"{}") for n in range(40)])
        yield self.store.delete([f"k/{n}" for n in range(10)])
        yield sleep(0.05)  # the doorbell rings for our own commits too
        self.assertEqual([c.etag for c in self.hub.published], list(range(1, 51)))
        self.assertEqual(self.hub.etag, 50)


class RetentionTests(LogTestCase):
    """The log keeps at least the newest C{retainChanges} changes."""

    retain = 20

    @inlineCallbacks
    def test_pruned(self):
        for n in range(100):
            yield self.store.put(f"r/{n % 7}", b"{}")
        rows = self.logRows()
        etags = [row[0] for row in rows]
        self.assertEqual(etags, list(range(etags[0], 101)))  # contiguous to the newest
        self.assertGreaterEqual(len(rows), 20)
        self.assertLess(len(rows), 40)
        page = yield self.store.changesSince(0)
        self.assertEqual(page.floor, etags[0] - 1)
        self.assertEqual(page.changes[0].etag, page.floor + 1)

    def test_zeroRefused(self):
        self.assertRaises(ValueError, self.newStore, retainChanges=0)


class SharedFileTests(LogTestCase):
    """Several connections (and processes) writing one file."""

    @inlineCallbacks
    def test_twoStoresOneFile(self):
        """
        Two store objects on one file (two writer connections): etags are
        all distinct, and each hub is fed every change of both, in order,
        by its doorbell.
        """
        otherHub = RecordingHub()
        other = self.open(otherHub)
        yield other.start()
        writes = []
        for n in range(30):
            writes.append(self.store.put(f"a/{n}", b"{}"))
            writes.append(other.put(f"b/{n}", b"{}"))
        versions = yield gatherResults(writes)
        etags = sorted(version.etag for version in versions)
        self.assertEqual(etags, list(range(1, 61)))
        for hub in (self.hub, otherHub):
            yield waitUntil(lambda: hub.etag == 60, what="publication of all 60")
            self.assertEqual([c.etag for c in hub.published], list(range(1, 61)))

    @inlineCallbacks
    def test_otherWriterWhileOursIsBusy(self):
        """
        While this store's writer commits without a pause (so its doorbell
        skips its polls), another writer's changes still reach this hub,
        through our commits; once ours is idle, through the doorbell. All
        of them, in order, once.
        """
        other = self.open()
        yield other.start()
        busy = [True]

        @inlineCallbacks
        def writeOn():
            n = 0
            while busy[0]:
                yield self.store.put(f"own/{n % 5}", b"{}")
                n += 1

        running = writeOn()
        yield sleep(0.03)
        version = yield other.put("other/1", b"{}")
        yield waitUntil(
            lambda: version.etag in [c.etag for c in self.hub.published],
            what="the other writer's change, while ours is busy",
        )
        busy[0] = False
        yield running
        yield sleep(0.05)  # ours idle: only the doorbell is left
        version = yield other.put("other/2", b"{}")
        yield waitUntil(lambda: self.hub.etag >= version.etag, what="the doorbell's hand-over")
        self.assertEqual(
            [c.etag for c in self.hub.published], list(range(1, version.etag + 1))
        )

    @inlineCallbacks
    def test_twoProcesses(self):
        """
        Two real processes PUT concurrently into the file this process
        also has open: every etag is distinct, the log holds every change,
        and this process's hub publishes them all, in order.
        """
        count = 150
        children = [
            utils.getProcessOutputAndValue(
                sys.executable,
                ["-m", "tests.changelog_writer", self.storeSpec(), str(count), prefix, "25"],
                env=os.environ,
                path=ROOT,
            )
            for prefix in ("one/", "two/")
        ]
        yield self.store.put("parent/1", b"{}")
        results = yield gatherResults(children)
        etags = []
        for out, err, code in results:
            self.assertEqual(code, 0, err.decode(errors="replace"))
            etags += json.loads(out)
        self.assertEqual(len(etags), 2 * count)
        self.assertEqual(len(set(etags)), 2 * count)
        total = 2 * count + 1
        rows = self.logRows()
        self.assertEqual([row[0] for row in rows], list(range(1, total + 1)))
        self.assertEqual(
            sorted(etags), sorted(row[0] for row in rows if not row[2].startswith("parent/"))
        )
        yield waitUntil(lambda: self.hub.etag == total, what="cross-process publication")
        self.assertEqual([c.etag for c in self.hub.published], list(range(1, total + 1)))


class StorageFullTests(LogTestCase):
    """A full storage: a clear error, nothing written, DELETE still works."""

    @inlineCallbacks
    def test_full(self):
        store = self.open(
            RecordingHub(), configure=lambda c: c.execute("PRAGMA max_page_count = 40")
        )
        yield store.start()
        body = b'{"pad": "%s"}' % (b"x" * 3000)
        failure = None
        written = []
        for n in range(200):
            try:
                version = yield store.put(f"f/{n}", body)
            except StorageFullError as e:
                failure = e
                break
            written.append(version.etag)
        self.assertIsNotNone(failure, "max_page_count never filled up")
        self.assertIn("no room left", str(failure))
        # A batch mixing a write that cannot fit and a DELETE: the DELETE
        # succeeds, the PUT fails alone.
        put = store.put("f/big", body)
        deleted = store.delete(["f/0", "f/1"])
        yield self.assertFailure(put, StorageFullError)
        versions = yield deleted
        self.assertEqual(len(versions), 2)
        found = yield store.get(["f/0", "f/2"])
        self.assertEqual((found[0], found[1].etag), (None, written[2]))
        # Space was freed: a write fits again, with the next etag.
        version = yield store.put("f/small", b"{}")
        self.assertEqual(version.etag, versions[-1].etag + 1)


# -- the same tests on PostgreSQL ---------------------------------------------------------


class PostgresChangeLogTests(PostgresBackend, ChangeLogTests):
    """L{ChangeLogTests} on PostgreSQL."""


class PostgresRetentionTests(PostgresBackend, RetentionTests):
    """L{RetentionTests} on PostgreSQL."""


class SQLiteDoorbellTests(LogTestCase):
    """The SQLite doorbell's polls (PostgreSQL has NOTIFY instead)."""

    @inlineCallbacks
    def test_idleDoorbellRunsNoStatement(self):
        """
        While nobody commits, the doorbell compares the WAL-index header
        and runs no statement; another writer's commit still rings it.
        """
        import threading

        from proto.store import sqlite_publisher

        statements = []
        connect = sqlite_publisher.sqlite_read.connect

        def tracingConnect(*args, **kwargs):
            connection = connect(*args, **kwargs)
            if threading.current_thread().name == sqlite_publisher.Doorbell.threadName:
                connection.set_trace_callback(statements.append)
            return connection

        self.patch(sqlite_publisher.sqlite_read, "connect", tracingConnect)
        hub = RecordingHub()
        store = self.open(hub)
        yield store.start()
        # The first poll maps the WAL-index; the second reads its header
        # before its data_version. From then on, nobody commits.
        yield waitUntil(
            lambda: statements.count("PRAGMA data_version") >= 2, what="the doorbell's first polls"
        )
        before = len(statements)
        yield sleep(sqlite_publisher.POLL_SECONDS * 10)
        self.assertEqual(statements[before:], [], "ten idle polls")
        version = yield self.store.put("other/1", b"{}")
        yield waitUntil(lambda: hub.etag >= version.etag, what="the doorbell's hand-over")
        self.assertIn("PRAGMA data_version", statements[before:])


class PostgresSharedDatabaseTests(PostgresBackend, SharedFileTests):
    """L{SharedFileTests} on PostgreSQL: several writers on one database."""
