"""
Tests for L{proto.store}: the SQLite document store (real files, real
threads), L{openStore}, L{StoreService} and the change hub.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from unittest import mock

from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from proto.hub import Change, ChangeHub
from proto.store import StoreService, openStore
from proto.store.base import (
    DELETE,
    MAX_ID_BYTES,
    PUT,
    ConflictError,
    Document,
    IDocumentStore,
    InvalidIdError,
    StoreClosedError,
    StoreError,
    StoreNotOpenedError,
    StoreUnavailableError,
    Version,
    checkId,
    idKey,
)
from proto.store.sqlite import DEFAULT_FILE_NAME, SQLiteStore


class RecordingHub(ChangeHub):
    """A real hub that also remembers everything published to it."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[Change] = []

    def publishChanges(self, changes) -> None:
        self.published.extend(changes)
        super().publishChanges(changes)


class Gate:
    """
    Holds a worker thread before each batch until opened, and records the
    batches (their sizes) that got through.

    @ivar started: set by the worker thread when it has taken a batch.
    """

    def __init__(self, open: bool) -> None:
        self.opened = threading.Event()
        if open:
            self.opened.set()
        self.started = threading.Event()
        self.batches: list[int] = []

    def wrap(self, openSession):
        gate = self

        class GatedSession:
            def __init__(self) -> None:
                self._session = openSession()

            def runBatch(self, works):
                gate.started.set()
                gate.opened.wait()
                gate.batches.append(len(works))
                return self._session.runBatch(works)

            def close(self) -> None:
                self._session.close()

            def __getattr__(self, name):
                return getattr(self._session, name)

        return GatedSession


def gate(store):
    """
    Slow a real store down (any backend on the worker threads of
    L{proto.store.sqlite_worker}): its writer waits for C{store.writeGate}
    to be opened before each batch (its reader for C{store.readGate}, open
    at first), so a test can hold a worker busy and queue work behind it.
    """
    store.writeGate = Gate(open=False)
    store.readGate = Gate(open=True)
    if getattr(store, "reactorWriter", None) is not None:
        store.reactorWriter = None  # Every write goes to the gated writer thread.
    if hasattr(store, "_inlineReads"):
        store._inlineReads = False  # Every read goes to the gated reader.
    store._writer._openSession = store.writeGate.wrap(store._writer._openSession)
    store._reader._openSession = store.readGate.wrap(store._reader._openSession)
    return store


class GatedStore(SQLiteStore):
    """An L{SQLiteStore} slowed down by L{gate}."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        gate(self)


@inlineCallbacks
def waitForThread(event: threading.Event, timeout: float = 10.0):
    """Fire when another thread sets C{event}, without blocking the reactor."""
    from twisted.internet import reactor

    waited = 0.0
    while not event.is_set():
        if waited > timeout:
            raise AssertionError(f"{event!r} was not set within {timeout} s")
        yield deferLater(reactor, 0.001)
        waited += 0.001


class SQLiteBackend:
    """
    Where the store tests keep their stores: a temporary SQLite file.
    L{PostgresBackend} (at the end) runs the same tests on PostgreSQL.
    """

    backend = "SQLite"

    def setUpBackend(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.directory, "docs.sqlite3")

    def storeSpec(self) -> str:
        """The C{--store} value (for child processes)."""
        return f"sqlite:{self.path}"

    def logRows(self) -> list[tuple[int, str, str, int]]:
        """The change log: (etag, key, id, type) rows, in etag order."""
        with sqlite3.connect(self.path) as connection:
            return connection.execute(
                "SELECT etag, key, id, type FROM changes ORDER BY etag"
            ).fetchall()

    def newStore(self, hub=None, **kwargs):
        return SQLiteStore(self.path, hub=hub, **kwargs)

    def committedEtag(self, key: str) -> int | None:
        """The etag of C{key} as another connection sees it (committed)."""
        connection = sqlite3.connect(self.path)
        try:
            row = connection.execute(
                "SELECT etag FROM documents WHERE key = ?", (key,)
            ).fetchone()
        finally:
            connection.close()
        return None if row is None else row[0]

    def unopenableStore(self):
        """A store whose start() must fail, and the exception it fails with."""
        blocker = os.path.join(self.directory, "file")
        os.makedirs(self.directory, exist_ok=True)
        with open(blocker, "w"):
            pass
        return SQLiteStore(os.path.join(blocker, "docs.sqlite3")), OSError


class StoreTestMixin(SQLiteBackend):
    """Opens a fresh store (gated if C{gated}); closes it afterwards."""

    gated = False

    def setUp(self):
        self.setUpBackend()
        self.hub = RecordingHub()
        return self.openStore()

    def openStore(self) -> defer.Deferred:
        self.store = self.newStore(hub=self.hub)
        if self.gated:
            gate(self.store)
        self.addCleanup(self.store.close)
        return self.store.start()


class IdTests(SynchronousTestCase):
    """L{checkId} and L{idKey}: the id rules."""

    def test_valid(self) -> None:
        self.assertEqual(checkId("Employees/1-A"), "employees/1-a")
        self.assertEqual(checkId("é" * (MAX_ID_BYTES // 2)), "é" * (MAX_ID_BYTES // 2))

    def test_caseFolding(self) -> None:
        """Case folding, not lower(): ß matches SS, and prefixes fold alike."""
        self.assertEqual(idKey("STRASSE"), idKey("straße"))
        self.assertEqual(idKey("ΟΔΟΣ/1"), idKey("οδος/1"))
        self.assertEqual(idKey("ΟΔΟΣ"), idKey("ΟΔΟΣ/1")[:4])

    def test_invalid(self) -> None:
        for bad, rule in [
            ("", "empty"),
            ("a" * (MAX_ID_BYTES + 1), "limit is 512"),
            ("é" * (MAX_ID_BYTES // 2 + 1), "limit is 512"),
            ("a b", "no spaces"),
            ("a\tb", "no spaces"),
            ("a\u00a0b", "no spaces"),
            ("a\x00b", "control"),
            ("a\x7fb", "control"),
            ("a\x85b", "control"),
            ("a\ud800", "UTF-8"),
        ]:
            with self.assertRaises(InvalidIdError, msg=repr(bad)) as caught:
                checkId(bad)
            self.assertIn(rule, str(caught.exception))

    def test_what(self) -> None:
        """The error names what was checked."""
        with self.assertRaises(InvalidIdError) as caught:
            checkId("a\x01", "prefix")
        self.assertIn("Invalid prefix", str(caught.exception))


class SQLiteStoreTests(StoreTestMixin, TestCase):
    """The basic operations of L{SQLiteStore}."""

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IDocumentStore, self.store))

    @inlineCallbacks
    def test_putGet(self):
        version = yield self.store.put("users/1", b'{"Name": "Nancy"}')
        self.assertEqual(version, Version("users/1", 1))
        found = yield self.store.get(["users/1", "users/2", "users/1"])
        document = Document("users/1", 1, b'{"Name": "Nancy"}')
        self.assertEqual(found, [document, None, document])

    @inlineCallbacks
    def test_getWithReferences(self):
        """Documents and those they reference, each once, in reference order."""
        yield self.store.put("a", b'{"r": ["C", "b"]}')
        yield self.store.put("b", b"{}")
        yield self.store.put("c", b"{}")
        seen = []

        def references(results):
            seen.append(results)
            return ["C", "b", "a", "missing", "not valid", "c"]

        results, referenced = yield self.store.getWithReferences(["a", "nope"], references)
        self.assertEqual(results, seen[0])
        self.assertEqual([d.id if d else None for d in results], ["a", None])
        self.assertEqual([d.id for d in referenced], ["c", "b", "a"])

    @inlineCallbacks
    def test_referencesWithTicks(self):
        """C{None} from C{references} is a progress tick: skipped (any backend)."""
        yield self.store.put("a", b"{}")
        snapshot = yield self.store.read(["a"], lambda results: [None, "a", None] * 300)
        self.assertEqual([d.id for d in snapshot.includes], ["a"])

    @inlineCallbacks
    def test_bodyKeptAsSent(self):
        """The JSON text comes back byte for byte, spacing and all."""
        body = '{ "a" :\n [1, 2.50, "ü"] }'.encode("utf-8")
        yield self.store.put("x", body)
        [document] = yield self.store.get(["x"])
        self.assertEqual(document.body, body)

    @inlineCallbacks
    def test_replace(self):
        yield self.store.put("a", b"{}")
        version = yield self.store.put("a", b'{"v": 2}')
        [document] = yield self.store.get(["a"])
        self.assertEqual(document, Document("a", version.etag, b'{"v": 2}'))

    @inlineCallbacks
    def test_delete(self):
        yield self.store.put("a", b"{}")
        yield self.store.put("b", b"{}")
        deleted = yield self.store.delete(["a", "missing", "A"])
        self.assertEqual(deleted, [Version("a", 3)])
        found = yield self.store.get(["a", "b"])
        self.assertEqual([doc and doc.id for doc in found], [None, "b"])

    @inlineCallbacks
    def test_caseInsensitiveIds(self):
        """Any case finds the document; it keeps the case first written."""
        yield self.store.put("Users/Nancy", b'{"v": 1}')
        version = yield self.store.put("USERS/NANCY", b'{"v": 2}')
        self.assertEqual(version.id, "Users/Nancy")
        found = yield self.store.get(["users/nancy"])
        self.assertEqual(found, [Document("Users/Nancy", 2, b'{"v": 2}')])
        deleted = yield self.store.delete(["uSERS/nANCY"])
        self.assertEqual([v.id for v in deleted], ["Users/Nancy"])

    @inlineCallbacks
    def test_manyIds(self):
        """More ids than SQLite takes as parameters of one statement."""
        yield gatherResults([self.store.put(f"d/{i}", b"{}") for i in range(1200)])
        ids = [f"D/{i}" for i in range(1300)]
        found = yield self.store.get(ids)
        self.assertEqual([doc is not None for doc in found], [i < 1200 for i in range(1300)])

    @inlineCallbacks
    def test_summary(self):
        """STATS' store figures: documents, the etag, the log's length."""
        yield self.store.put("a", b"{}")
        yield self.store.put("b", b"{}")
        yield self.store.delete(["a"])
        summary = yield self.store.summary()
        self.assertEqual(summary, {"Documents": 1, "Etag": 3, "Changes": 3})

    @inlineCallbacks
    def test_invalidId(self):
        yield self.assertFailure(self.store.put("a b", b"{}"), InvalidIdError)
        yield self.assertFailure(self.store.get(["ok", ""]), InvalidIdError)
        yield self.assertFailure(self.store.delete(["\x00"]), InvalidIdError)



class SQLiteFileTests(StoreTestMixin, TestCase):
    """What only the SQLite backend has."""

    def test_fileIsWAL(self) -> None:
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, "wal")


class EtagTests(StoreTestMixin, TestCase):
    """One etag counter for the whole store, and If-Match."""

    @inlineCallbacks
    def test_monotonicAcrossIdsAndDeletes(self):
        a = yield self.store.put("a", b"{}")
        b = yield self.store.put("b", b"{}")
        [deleted] = yield self.store.delete(["b"])
        a2 = yield self.store.put("a", b"{}")
        self.assertEqual([a.etag, b.etag, deleted.etag, a2.etag], [1, 2, 3, 4])

    @inlineCallbacks
    def test_monotonicAcrossReopen(self):
        """
        After a restart etags continue from the last one handed out, even
        when the document that had it is gone.
        """
        yield self.store.put("a", b"{}")
        yield self.store.put("b", b"{}")
        yield self.store.delete(["b"])
        yield self.store.close()
        yield self.openStore()
        version = yield self.store.put("c", b"{}")
        self.assertEqual(version.etag, 4)

    @inlineCallbacks
    def test_ifMatch(self):
        first = yield self.store.put("a", b'{"v": 1}')
        second = yield self.store.put("a", b'{"v": 2}', ifMatch=first.etag)
        self.assertEqual(second.etag, first.etag + 1)

    @inlineCallbacks
    def test_ifMatchConflict(self):
        """A stale If-Match writes nothing and says what it found."""
        yield self.store.put("A", b'{"v": 1}')
        error = yield self.assertFailure(self.store.put("a", b'{"v": 2}', ifMatch=7), ConflictError)
        self.assertEqual((error.id, error.expected, error.actual), ("a", 7, 1))
        self.assertEqual(str(error), "a has etag 1; If-Match was 7")
        [document] = yield self.store.get(["a"])
        self.assertEqual(document.body, b'{"v": 1}')
        self.assertEqual(self.hub.published, [Change("A", PUT, 1)])

    @inlineCallbacks
    def test_ifMatchZero(self):
        """If-Match 0: only if it does not exist yet."""
        created = yield self.store.put("a", b"{}", ifMatch=0)
        self.assertEqual(created.etag, 1)
        error = yield self.assertFailure(self.store.put("a", b"{}", ifMatch=0), ConflictError)
        self.assertIn("If-Match 0 requires that it does not exist", str(error))

    @inlineCallbacks
    def test_ifMatchMissing(self):
        error = yield self.assertFailure(self.store.put("a", b"{}", ifMatch=3), ConflictError)
        self.assertEqual(str(error), "a does not exist; If-Match was 3")
        found = yield self.store.get(["a"])
        self.assertEqual(found, [None])


class GroupCommitTests(StoreTestMixin, TestCase):
    """The writer commits everything queued in one transaction."""

    gated = True

    def setUp(self):
        d = super().setUp()
        self.store.writeGate.opened.set()
        return d

    @inlineCallbacks
    def test_concurrentPutsShareCommits(self):
        """
        200 concurrent PUTs: every one committed, each with its own etag,
        in far fewer transactions.
        """
        puts = [self.store.put(f"docs/{i}", b'{"i": %d}' % i) for i in range(200)]
        versions = yield gatherResults(puts)
        self.assertEqual(sorted(v.etag for v in versions), list(range(1, 201)))
        self.assertEqual(self.store.writes, 200)
        self.assertLess(self.store.commits, 20)
        found = yield self.store.get([f"docs/{i}" for i in range(200)])
        self.assertNotIn(None, found)

    @inlineCallbacks
    def test_writesQueuedBehindACommitShareTheNext(self):
        """While a commit is in progress, the next writes pile up into one batch."""
        self.store.writeGate.opened.clear()
        first = self.store.put("first", b"{}")
        yield waitForThread(self.store.writeGate.started)
        rest = [self.store.put(f"docs/{i}", b"{}") for i in range(200)]
        self.store.writeGate.opened.set()
        yield gatherResults([first, *rest])
        self.assertEqual((self.store.commits, self.store.writes), (2, 201))

    @inlineCallbacks
    def test_conflictInBatch(self):
        """
        A conflicting write fails alone: the others of its group commit
        are committed, and If-Match sees the writes before it in the batch.
        """
        self.store.writeGate.opened.clear()
        blocker = self.store.put("blocker", b"{}")  # etag 1
        yield waitForThread(self.store.writeGate.started)
        ok = self.store.put("a", b"{}", ifMatch=0)  # etag 2
        conflict = self.store.put("a", b"{}", ifMatch=0)
        follows = self.store.put("A", b"{}", ifMatch=2)  # etag 3
        self.store.writeGate.opened.set()
        yield blocker
        self.assertEqual((yield ok), Version("a", 2))
        yield self.assertFailure(conflict, ConflictError)
        self.assertEqual((yield follows), Version("a", 3))
        self.assertEqual((self.store.commits, self.store.writes), (2, 4))
        self.assertEqual([c.etag for c in self.hub.published], [1, 2, 3])

    @inlineCallbacks
    def test_publishedAfterCommit(self):
        """The hub is told of each change once its transaction committed."""
        seen = []

        def onChange(change: Change) -> None:
            # The change must be durable: a separate connection sees it.
            seen.append((change, self.committedEtag(idKey(change.id))))

        self.hub.subscribe("", onChange)
        yield self.store.put("A", b"{}")
        yield self.store.delete(["a"])
        self.assertEqual(
            seen, [(Change("A", PUT, 1), 1), (Change("A", DELETE, 2), None)]
        )


class CancellationTests(StoreTestMixin, TestCase):
    """Cancelling an operation's Deferred."""

    gated = True

    @inlineCallbacks
    def test_cancelQueuedWrite(self):
        """A write cancelled while queued is never committed nor published."""
        running = self.store.put("running", b"{}")
        yield waitForThread(self.store.writeGate.started)
        queued = self.store.put("queued", b"{}")
        queued.cancel()
        yield self.assertFailure(queued, CancelledError)
        self.store.writeGate.opened.set()
        yield running
        yield self.store.put("later", b"{}")  # The writer is first in, first out.
        found = yield self.store.get(["queued", "running"])
        self.assertEqual([doc and doc.id for doc in found], [None, "running"])
        self.assertEqual([c.id for c in self.hub.published], ["running", "later"])
        self.assertEqual(self.store.writes, 2)

    @inlineCallbacks
    def test_cancelRunningWrite(self):
        """
        A write cancelled once its batch has started still commits (and is
        published); only the caller stops waiting.
        """
        running = self.store.put("running", b"{}")
        yield waitForThread(self.store.writeGate.started)
        running.cancel()
        yield self.assertFailure(running, CancelledError)
        self.store.writeGate.opened.set()
        yield self.store.put("later", b"{}")  # Written after that batch.
        found = yield self.store.get(["running"])
        self.assertEqual(found[0].id, "running")
        self.assertEqual([c.id for c in self.hub.published], ["running", "later"])

    @inlineCallbacks
    def test_cancelQueuedRead(self):
        """A read cancelled while queued never runs."""
        reads = self.store.readGate
        reads.opened.clear()
        running = self.store.get(["a"])
        yield waitForThread(reads.started)
        queued = self.store.get(["b"])
        queued.cancel()
        yield self.assertFailure(queued, CancelledError)
        reads.opened.set()
        self.assertEqual((yield running), [None])
        self.assertEqual((yield self.store.get(["c"])), [None])
        self.assertEqual(reads.batches, [1, 1])


class LifecycleTests(SQLiteBackend, TestCase):
    """start(), close() and failures to open."""

    def setUp(self) -> None:
        self.setUpBackend()

    @inlineCallbacks
    def test_closeDrainsQueuedWrites(self):
        """close() commits every write queued before it, then closes."""
        store = self.newStore()
        yield store.start()
        puts = [store.put(f"d/{i}", b"{}") for i in range(50)]
        yield store.close()
        self.assertEqual(len((yield gatherResults(puts))), 50)
        reopened = self.newStore()
        yield reopened.start()
        try:
            found = yield reopened.get([f"d/{i}" for i in range(50)])
        finally:
            yield reopened.close()
        self.assertNotIn(None, found)

    @inlineCallbacks
    def test_startTwice(self):
        store = self.newStore()
        self.addCleanup(store.close)
        yield store.start()
        error = yield self.assertFailure(store.start(), StoreError)
        self.assertIn("already started", str(error))
        self.assertEqual((yield store.put("a", b"{}")).etag, 1)

    @inlineCallbacks
    def test_closedStoreRefuses(self):
        store = self.newStore()
        yield store.start()
        yield store.close()
        yield self.assertFailure(store.put("a", b"{}"), StoreClosedError)
        yield self.assertFailure(store.get(["a"]), StoreClosedError)
        yield store.close()  # Twice is harmless.

    @inlineCallbacks
    def test_operationsBeforeStartWait(self):
        """Work issued before start() runs once the store is open."""
        store = self.newStore()
        put = store.put("a", b"{}")
        get = store.get(["a"])
        yield store.start()
        try:
            self.assertEqual((yield put).etag, 1)
            self.assertIn((yield get), ([None], [Document("a", 1, b"{}")]))
        finally:
            yield store.close()

    @inlineCallbacks
    def test_closeBeforeStart(self):
        store = self.newStore()
        queued = store.get(["a"])
        yield store.close()
        yield self.assertFailure(queued, StoreClosedError)
        yield self.assertFailure(store.start(), StoreClosedError)

    @inlineCallbacks
    def test_cannotOpen(self):
        """
        A file that cannot be opened fails start(), fails the work queued
        for it, and leaves the store closed. That work and any later fail
        with the reason (L{StoreNotOpenedError}: a client's ERR Store
        unavailable), not as an unexplained closed store.
        """
        store, expected = self.unopenableStore()
        queued = store.put("a", b"{}")
        read = store.get(["a"])
        yield self.assertFailure(store.start(), expected)
        for d in (queued, read, store.put("b", b"{}"), store.get(["b"])):
            error = yield self.assertFailure(d, StoreClosedError)
            self.assertIsInstance(error, StoreNotOpenedError)
            self.assertIsInstance(error, StoreUnavailableError)
            self.assertIn("could not be opened at start (", str(error))
            self.assertIn("restart the server", str(error))
        yield store.close()

    @inlineCallbacks
    def test_service(self):
        """StoreService opens the store with the application and closes it."""
        store = self.newStore()
        top = MultiService()
        StoreService(store).setServiceParent(top)
        top.startService()
        version = yield store.put("a", b"{}")
        self.assertEqual(version.etag, 1)
        yield top.stopService()
        yield self.assertFailure(store.get(["a"]), StoreClosedError)


class OpenStoreTests(SynchronousTestCase):
    """openStore(), behind the server's --store option."""

    def test_default(self) -> None:
        store = openStore("sqlite", "/data")
        self.assertIsInstance(store, SQLiteStore)
        self.assertEqual(store.path, os.path.join("/data", DEFAULT_FILE_NAME))

    def test_path(self) -> None:
        self.assertEqual(openStore("sqlite:/x/y.db", "/data").path, "/x/y.db")
        self.assertEqual(openStore("sqlite:y.db", "/data").path, os.path.join("/data", "y.db"))

    def test_hub(self) -> None:
        hub = ChangeHub()
        self.assertIs(openStore("sqlite", "/data", hub=hub)._hub, hub)

    def test_unknown(self) -> None:
        for spec in ["mysql", "", "SQLite", "sqlite:"]:
            with self.assertRaises(ValueError, msg=spec) as caught:
                openStore(spec, "/data")
            self.assertIn("expected 'sqlite', 'sqlite:PATH'", str(caught.exception))
            self.assertIn("'postgresql:CONNINFO'", str(caught.exception))

    def test_postgresql(self) -> None:
        from proto.store.postgres import PostgresStore

        for spec, conninfo in [
            ("postgresql:host=/run/pg dbname=proto", "host=/run/pg dbname=proto"),
            ("postgresql://proto@db/proto", "postgresql://proto@db/proto"),
            ("postgresql:postgresql://proto@db/proto", "postgresql://proto@db/proto"),
            ("postgres:", ""),
        ]:
            store = openStore(spec, "/data")
            self.assertIsInstance(store, PostgresStore)
            self.assertEqual(store.conninfo, conninfo)

    def test_postgresqlWithoutPsycopg(self) -> None:
        """
        Without the C{postgres} extra, C{--store postgresql:...} is the one
        line of advice (a ValueError, which twistd shows as one line), not
        an ImportError traceback.
        """
        hidden = {name: None for name in ("psycopg", "psycopg.conninfo")}
        with mock.patch.dict(sys.modules, hidden):
            with self.assertRaises(ValueError) as caught:
                openStore("postgresql:host=/run/pg dbname=proto", "/data")
        self.assertIn("needs psycopg 3", str(caught.exception))
        # Not "pip install proto[...]": "proto" on PyPI is another project.
        self.assertIn("pip install -e '.[postgres]'", str(caught.exception))

    def test_postgresqlPasswordNotShown(self) -> None:
        store = openStore("postgresql://proto:s3cret@db/proto", "/data")
        self.assertNotIn("s3cret", repr(store))
        self.assertIn("db", repr(store))


class ChangeHubTests(SynchronousTestCase):
    """The in-process change hub."""

    def test_prefixCaseInsensitive(self) -> None:
        hub = ChangeHub()
        seen: dict[str, list] = {"users": [], "USERS/1": [], "all": [], "other": []}
        hub.subscribe("users", seen["users"].append)
        hub.subscribe("USERS/1", seen["USERS/1"].append)
        hub.subscribe("", seen["all"].append)
        hub.subscribe("orders", seen["other"].append)
        hub.publish("Users/1", PUT, 5)
        hub.publish("users/2", DELETE, 6)
        self.assertEqual(seen["users"], [Change("Users/1", PUT, 5), Change("users/2", DELETE, 6)])
        self.assertEqual(seen["USERS/1"], [Change("Users/1", PUT, 5)])
        self.assertEqual(len(seen["all"]), 2)
        self.assertEqual(seen["other"], [])

    def test_cancel(self) -> None:
        hub = ChangeHub()
        seen: list = []
        first = hub.subscribe("a", seen.append)
        hub.subscribe("a", seen.append)
        first.cancel()
        first.cancel()
        hub.publish("a", PUT, 1)
        self.assertEqual(len(seen), 1)
        self.assertEqual(hub.subscriberCount(), 1)

    def test_cancelledDuringPublish(self) -> None:
        """A subscription cancelled by an earlier callback gets nothing more."""
        hub = ChangeHub()
        seen: list = []
        second = None

        def first(change: Change) -> None:
            second.cancel()

        hub.subscribe("a", first)
        second = hub.subscribe("a", seen.append)
        hub.publish("a", PUT, 1)
        self.assertEqual(seen, [])

    def test_failingSubscriberLogged(self) -> None:
        """A callback that raises is logged; the others still get the change."""
        hub = ChangeHub()
        seen: list = []
        hub.subscribe("a", lambda change: 1 / 0)
        hub.subscribe("a", seen.append)
        hub.publish("a", PUT, 1)
        self.assertEqual(seen, [Change("a", PUT, 1)])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_noSubscribers(self) -> None:
        """Publishing with no (or no matching) subscriber does nothing."""
        hub = ChangeHub()
        hub.publish("a", PUT, 1)
        hub.subscribe("b", lambda change: 1 / 0)
        hub.publish("a", PUT, 2)
        self.assertEqual(self.flushLoggedErrors(), [])


# -- the same tests on PostgreSQL ---------------------------------------------------------


class PostgresBackend:
    """
    Runs a store test class on PostgreSQL: a fresh database of the test
    run's throwaway cluster (L{tests.pgsupport}) for every test.
    """

    backend = "PostgreSQL"

    def setUpBackend(self) -> None:
        from tests.pgsupport import sharedCluster

        self.directory = self.mktemp()
        self.cluster = sharedCluster()
        self.conninfo = self.cluster.createSchema()

    def newStore(self, hub=None, **kwargs):
        from proto.store.postgres import PostgresStore

        return PostgresStore(self.conninfo, hub=hub, **kwargs)

    def storeSpec(self) -> str:
        return f"postgresql:{self.conninfo}"

    @inlineCallbacks
    def whenPipelineOpen(self, connection, notOn=None):
        """
        Wait (5 s at most) until a reactor pipeline connection
        (L{proto.store.postgres_pipeline.PipelineConnection}: the reader or
        the writer) is open; with C{notOn} (a backend pid), open on another
        backend than that one.
        """
        for _ in range(500):
            if connection.open and (notOn is None or connection.backendPid != notOn):
                return
            yield deferLater(reactor, 0.01, lambda: None)
        self.fail(f"the reactor's {type(connection).__name__} did not connect within 5 s")

    def logRows(self) -> list[tuple[int, str, str, int]]:
        import psycopg

        with psycopg.connect(self.conninfo) as connection:
            return connection.execute(
                "SELECT etag, key, id, type FROM proto_changes ORDER BY etag"
            ).fetchall()

    def committedEtag(self, key: str) -> int | None:
        import psycopg

        with psycopg.connect(self.conninfo) as connection:
            row = connection.execute(
                "SELECT etag FROM proto_documents WHERE key = %s", (key,)
            ).fetchone()
        return None if row is None else row[0]

    def unopenableStore(self):
        """
        A store that cannot open for good: its schema is from a newer
        release. (A database that cannot be reached is retried:
        L{PostgresLifecycleTests.test_retriesUntilTheDatabaseExists}.)
        """
        import psycopg

        from proto.store.postgres import PostgresStore

        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            connection.execute("CREATE TABLE proto_schema (version integer NOT NULL)")
            connection.execute("INSERT INTO proto_schema VALUES (99)")
        return PostgresStore(self.conninfo), StoreError


class PostgresStoreTests(PostgresBackend, SQLiteStoreTests):
    """L{SQLiteStoreTests} on PostgreSQL."""

    @inlineCallbacks
    def test_bodyKeptAsBytes(self):
        """Bodies are bytea: key order, duplicates and \\u0000 kept (jsonb would not)."""
        body = b'{"b": 1, "a": 2, "a": "\\u0000"}'
        yield self.store.put("x", body)
        [document] = yield self.store.get(["x"])
        self.assertEqual(document.body, body)


class PostgresEtagTests(PostgresBackend, EtagTests):
    """L{EtagTests} on PostgreSQL."""


class PostgresGroupCommitTests(PostgresBackend, GroupCommitTests):
    """L{GroupCommitTests} on PostgreSQL."""


class PostgresCancellationTests(PostgresBackend, CancellationTests):
    """
    L{CancellationTests} on PostgreSQL (one reader thread, as they gate
    it, and every read on it: not on the reactor, L{tests.test_pgasync}).
    """

    def newStore(self, hub=None, **kwargs):
        return super().newStore(hub=hub, readers=1, reactorReads=False, **kwargs)


class PostgresLifecycleTests(PostgresBackend, LifecycleTests):
    """L{LifecycleTests} on PostgreSQL."""

    @inlineCallbacks
    def test_retriesUntilTheDatabaseExists(self):
        """
        A database that cannot be opened yet (here: it does not exist yet)
        is tried again and again: operations fail at once meanwhile with
        the reason and "(retrying)", and work once it exists, without a
        new start. WATCH's start (the publisher's etag) is the database's.
        """
        import psycopg

        from proto.store.postgres import PostgresStore

        name = f"later_{os.getpid()}_{id(self)}"
        hub = ChangeHub()
        store = PostgresStore(self.cluster.conninfo(name), hub=hub, retryPolicy=lambda n: 0.05)
        self.addCleanup(store.close)
        queued = store.put("a", b"{}")
        started = store.start()
        error = yield self.assertFailure(queued, StoreNotOpenedError)
        self.assertIsInstance(error, StoreUnavailableError)
        self.assertIn("the document store is not open yet: PostgreSQL at", str(error))
        self.assertIn(f'database "{name}" does not exist', str(error))
        self.assertTrue(str(error).endswith("(retrying)"), str(error))
        self.assertNotIn("restart", str(error))
        # While it retries, every operation fails at once, the same way.
        for _ in range(500):  # (bounded: 10 s)
            if store.opening.attempts >= 3:
                break
            for d in (store.put("b", b"{}"), store.get(["b"]), store.currentEtag()):
                error = yield self.assertFailure(d, StoreNotOpenedError)
                self.assertIn("(retrying)", str(error))
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertFalse(started.called)
        self.assertGreaterEqual(store.opening.attempts, 3)
        self.assertIn("(retrying)", store.notOpenReason)

        with psycopg.connect(self.cluster.conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.addCleanup(self.dropDatabase, name)
        yield started
        self.assertTrue(store.opened)
        self.assertIsNone(store.notOpenReason)
        seen = []
        hub.subscribe("", seen.append)
        self.assertEqual((yield store.currentEtag()), 0)
        self.assertEqual((yield store.put("a", b'{"x": 1}')).etag, 1)
        self.assertEqual((yield store.get(["a"])), [Document("a", 1, b'{"x": 1}')])
        self.assertEqual([c.etag for c in seen], [1])

    @inlineCallbacks
    def test_partlyOpenedAttemptRetried(self):
        """
        An attempt in which the writer opened but a reader could not (here:
        the role's connection limit) fails as a whole: its open workers
        are stopped (their connections closed) and the next attempt opens
        fresh ones. The publisher starts at the first writer's etag.
        """
        import psycopg

        from proto.store.postgres import PostgresStore

        role = name = f"limited_{os.getpid()}_{id(self)}"
        admin = psycopg.connect(self.cluster.conninfo(), autocommit=True)
        self.addCleanup(admin.close)
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        self.addCleanup(admin.execute, f'DROP ROLE "{role}"')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
        self.addCleanup(self.dropDatabase, name)
        conninfo = f"host={self.cluster.socketDir} dbname={name} user={role}"
        earlier = PostgresStore(conninfo, readers=1)
        yield earlier.start()
        for n in range(3):
            yield earlier.put(f"e/{n}", b"{}")
        yield earlier.close()
        admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 2')
        hub = ChangeHub()
        seen = []
        hub.subscribe("", seen.append)
        store = PostgresStore(conninfo, hub=hub, readers=2, retryPolicy=lambda n: 0.05)
        self.addCleanup(store.close)
        started = store.start()
        for _ in range(250):  # (a writer opens once the earlier store's backends are gone)
            if store.opening.attempts >= 3 and hub.etag == 3:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertFalse(started.called)
        # (What operations fail with; one may also be served meanwhile by a
        # worker of the attempt in progress that did open.)
        self.assertIn("too many connections for role", store.notOpenReason)
        self.assertIn("(retrying)", store.notOpenReason)
        self.assertEqual(hub.etag, 3)  # (the writer did open)

        admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        yield started
        self.assertEqual((yield store.put("a", b"{}")).etag, 4)
        self.assertEqual([c.etag for c in seen], [4])
        self.assertEqual((yield store.get(["a"])), [Document("a", 4, b"{}")])
        # Writer, two readers, listener, the reactor's reader and writer:
        # the failed attempts left none open.
        count = "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
        for _ in range(100):
            if admin.execute(count, (role,)).fetchone()[0] == 6:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(admin.execute(count, (role,)).fetchone()[0], 6)

    @inlineCallbacks
    def test_failsAtOnceDuringASlowAttempt(self):
        """
        While it retries, operations fail at once even when an attempt is
        slow (a database host that does not answer: each attempt lasts
        C{connect_timeout}), and closing does not wait for the attempt.
        """
        import socket
        import time

        from proto.store.postgres import PostgresStore

        silent = socket.socket()  # accepts (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        self.addCleanup(silent.close)
        port = silent.getsockname()[1]
        store = PostgresStore(
            f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2",
            retryPolicy=lambda n: 0.01,
        )
        started = store.start()
        for _ in range(1000):  # (bounded: 20 s)
            if store.opening.attempts >= 2:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(store.opening.attempts, 2)  # the second one is in progress
        began = time.monotonic()
        error = yield self.assertFailure(store.get(["a"]), StoreNotOpenedError)
        self.assertLess(time.monotonic() - began, 0.5)
        self.assertIn("(retrying)", str(error))
        began = time.monotonic()
        yield store.close()
        self.assertLess(time.monotonic() - began, 0.5)
        yield self.assertFailure(started, StoreClosedError)

    @inlineCallbacks
    def test_grantsReadOnceOpen(self):
        """
        The server's grants poll (L{proto.access.AccessControl.poll}) while
        the store retries: it fails at once (and is logged), admits nothing
        from the store meanwhile, and reads the grants once it is open.
        (A poll failing synchronously once left the poll stuck "running":
        the grants were never read.)
        """
        import psycopg

        from proto.access import AccessControl
        from proto.admission import AllowList
        from proto.permissions import APPROVED, Grant
        from proto.store.grants import GrantRow
        from proto.store.postgres import PostgresStore

        name = f"later_{os.getpid()}_{id(self)}"
        store = PostgresStore(self.cluster.conninfo(name), retryPolicy=lambda n: 0.05)
        self.addCleanup(store.close)
        access = AccessControl(lambda: AllowList.parse(""), store)
        started = store.start()
        for _ in range(500):  # (bounded: 10 s)
            if store.opening.waiting:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        for _ in range(3):
            polled = access.poll()
            self.assertIsNotNone(polled)
            yield polled
        self.assertFalse(access.current().admits("a" * 40, "b" * 64))

        with psycopg.connect(self.cluster.conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.addCleanup(self.dropDatabase, name)
        yield started
        yield store.putGrant(GrantRow.of("a" * 40, Grant("x", "read").withOrigin(APPROVED), 1.0))
        yield access.poll()
        self.assertTrue(access.current().admits("a" * 40, "b" * 64))

    def dropDatabase(self, name):
        import psycopg

        with psycopg.connect(self.cluster.conninfo(), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @inlineCallbacks
    def test_closeWhileRetrying(self):
        """Closing a store that is still trying to open stops it trying, at once."""
        from proto.store.postgres import PostgresStore

        store = PostgresStore(self.cluster.conninfo("never_created"), retryPolicy=lambda n: 0.05)
        started = store.start()
        for _ in range(500):  # (bounded: 10 s)
            if store.opening.attempts >= 2:
                break
            yield deferLater(reactor, 0.02, lambda: None)
        attempts = store.opening.attempts
        self.assertGreaterEqual(attempts, 2)
        yield store.close()
        yield self.assertFailure(started, StoreClosedError)
        yield deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(store.opening.attempts, attempts)
        self.assertFalse(store.opening.waiting)
        error = yield self.assertFailure(store.get(["a"]), StoreClosedError)
        self.assertNotIn("(retrying)", str(error))
