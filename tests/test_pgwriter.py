"""
The PostgreSQL store's writes on the reactor thread
(L{proto.store.postgres_writer.ReactorWriter}) against a real PostgreSQL
(L{tests.pgsupport}): a turn's writes in one transaction, committed before
they are answered, published in etag order, read back by the next read;
a refused statement fails the batch and writes nothing; a lost connection
hands the writes to the writer thread, and it connects again.
"""

from __future__ import annotations

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from proto.hub import ChangeHub
from proto.store import postgres_listener, postgres_pipeline
from proto.store.base import ConflictError, StoreError, StoreUnavailableError
from tests.test_store import PostgresBackend


class ReactorWriterTests(PostgresBackend, TestCase):

    @inlineCallbacks
    def setUp(self):
        self.setUpBackend()
        self.patch(postgres_pipeline, "RETRY_SECONDS", 0.05)
        self.hub = ChangeHub()
        self.seen = []
        self.hub.subscribe("", self.seen.append)
        self.store = self.newStore(hub=self.hub)
        yield self.store.start()
        self.addCleanup(self.store.close)
        self.writer = self.store.reactorWriter
        yield self.whenOpen()

    def whenOpen(self, notOn=None):
        """The reactor writer open (not on backend C{notOn})."""
        return self.whenPipelineOpen(self.writer, notOn)

    def committed(self):
        """The documents (key, id, etag, body) and the etag counter, as another connection sees them."""
        with psycopg.connect(self.conninfo) as connection:
            documents = connection.execute(
                "SELECT key, id, etag, body FROM proto_documents ORDER BY key").fetchall()
            (etag,) = connection.execute(
                "SELECT value FROM proto_counters WHERE name = 'etag'").fetchone()
        return [(k, i, e, bytes(b)) for k, i, e, b in documents], etag

    @inlineCallbacks
    def test_oneTurnOneBatch(self):
        """
        The writes of one turn: one transaction on the reactor writer,
        committed when they are answered, published in etag order.
        """
        batches, threadCommits = self.writer.batches, self.store.commits
        writes = [
            self.store.put("A/1", b'{"n": 1}'),
            self.store.put("a/2", b'{"n": 2}'),
            self.store.put("a/1", b'{"n": 3}'),  # same document: keeps its first id
            self.store.delete(["a/2", "nope"]),
        ]
        outcomes = yield gatherResults(writes)
        self.assertEqual([tuple(v) for v in outcomes[:3]], [("A/1", 1), ("a/2", 2), ("A/1", 3)])
        self.assertEqual([tuple(v) for v in outcomes[3]], [("a/2", 4)])
        self.assertEqual(self.writer.batches - batches, 1)
        self.assertEqual(self.writer.fallbacks, 0)
        self.assertEqual(self.store.commits - threadCommits, 1)
        self.assertEqual(self.committed(), ([("a/1", "A/1", 3, b'{"n": 3}')], 4))
        self.assertEqual([(c.id, c.type, c.etag) for c in self.seen],
                         [("A/1", "Put", 1), ("a/2", "Put", 2), ("A/1", "Put", 3),
                          ("a/2", "Delete", 4)])
        self.assertEqual(self.logRows(), [(1, "a/1", "A/1", 1), (2, "a/2", "a/2", 1),
                                          (3, "a/1", "A/1", 1), (4, "a/2", "a/2", 2)])

    @inlineCallbacks
    def test_oddIdsAndBodies(self):
        """Ids with quotes, backslashes, braces, commas, non-ASCII; bodies byte for byte."""
        ids = ['q"uote', "back\\slash", "{brace},comma", "caf\u00e9/\u4e2d", "NULL"]
        bodies = [b'{"a": "\\u0000"}', b'{"b": "\\"}', b'{"c": "{},"}', "{\"d\": \"\u00e9\"}".encode(), b"{}"]
        yield self.store.put("x", b"{}")  # (then the batch below goes in one round trip or two)
        versions = yield gatherResults([self.store.put(i, b) for i, b in zip(ids, bodies)])
        self.assertEqual([v.id for v in versions], ids)
        stored = {key: (id, body) for key, id, _, body in self.committed()[0]}
        for id, body in zip(ids, bodies):
            self.assertEqual(stored[id.casefold()], (id, body))
        found = yield self.store.get(ids)
        self.assertEqual([d.body for d in found], bodies)
        self.assertEqual([(r[2], r[1]) for r in self.logRows()[1:]],
                         [(id, id.casefold()) for id in ids])

    @inlineCallbacks
    def test_logPruned(self):
        """The change log keeps the retention, pruned by the reactor writer's batches."""
        store = self.newStore(retainChanges=2)
        yield store.start()
        self.addCleanup(store.close)
        self.writer = store.reactorWriter
        yield self.whenOpen()
        batches = self.writer.batches
        for n in range(6):
            yield store.put(f"p/{n}", b"{}")
        self.assertEqual(self.writer.batches - batches, 6)
        etags = [row[0] for row in self.logRows()]
        self.assertEqual(etags[-2:], [5, 6])
        self.assertLessEqual(len(etags), 3)
        page = yield store.changesSince(0)
        self.assertGreaterEqual(page.floor, 6 - len(etags))

    @inlineCallbacks
    def test_readYourWrites(self):
        """A read sent right after writes, before their OK, sees them."""
        for n in range(10):
            put = self.store.put("k", b'{"n": %d}' % n)
            read = self.store.read(["k"])
            include = self.store.read(["k"], lambda docs: ["k"])
            version, found, included = yield gatherResults([put, read, include])
            self.assertEqual((found.results[0].etag, found.etag), (version.etag, version.etag))
            self.assertEqual(found.results[0].body, b'{"n": %d}' % n)
            self.assertEqual(included.results[0].etag, version.etag)
        self.assertEqual(self.writer.fallbacks, 0)

    @inlineCallbacks
    def test_conflictFailsItsWriteAlone(self):
        yield self.store.put("c", b"{}")
        writes = [
            self.store.put("c", b'{"x": 1}', ifMatch=1),
            self.store.put("c", b'{"x": 2}', ifMatch=1),  # now at 2: conflict
            self.store.put("d", b"{}", ifMatch=0),
        ]
        first = yield writes[0]
        error = yield self.assertFailure(writes[1], ConflictError)
        third = yield writes[2]
        self.assertEqual((first.etag, error.actual, third.etag), (2, 2, 3))
        self.assertEqual(self.committed()[1], 3)

    @inlineCallbacks
    def test_refusedStatementWritesNothing(self):
        """
        A statement the database refuses fails its whole batch with a
        store error and writes nothing (rolled back); the next batch works.
        """
        yield self.store.put("ok", b"{}")
        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute("ALTER TABLE proto_changes ADD CONSTRAINT small CHECK (etag < 3)")
        writes = [self.store.put("x", b"{}"), self.store.put("y", b"{}")]
        for write in writes:
            error = yield self.assertFailure(write, StoreError)
            self.assertIn("PostgreSQL error", str(error))
        self.assertEqual(self.committed(), ([("ok", "ok", 1, b"{}")], 1))
        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute("ALTER TABLE proto_changes DROP CONSTRAINT small")
        version = yield self.store.put("x", b"{}")
        self.assertEqual(version.etag, 2)
        self.assertEqual([c.etag for c in self.seen], [1, 2])
        self.assertTrue(self.writer.open)

    @inlineCallbacks
    def test_oneRoundTripWhenNothingChangedSince(self):
        """
        A batch of keys our last commits left known is sent in one round
        trip (guarded); a key not known yet takes two.
        """
        yield self.store.put("k", b"{}")
        fast = self.writer.fastBatches
        for n in range(3):
            yield self.store.put("k", b'{"n": %d}' % n)
        yield self.store.delete(["k"])
        self.assertEqual(self.writer.fastBatches - fast, 4)
        yield self.store.put("new", b"{}")
        self.assertEqual(self.writer.fastBatches - fast, 4)
        version = yield self.store.put("k", b"{}", ifMatch=0)  # (deleted: known missing)
        self.assertEqual((version.etag, self.writer.fastBatches - fast), (7, 5))
        self.assertEqual(self.writer.guardMisses, 0)
        self.assertEqual(self.committed()[1], 7)
        self.assertEqual([c.etag for c in self.seen], list(range(1, 8)))

    @inlineCallbacks
    def test_guardSeesOthersCommits(self):
        """
        After another writer's commit, a batch sent in one round trip is
        refused by its guard, writes nothing, and is run again in two:
        its If-Match is checked against the other's write.
        """
        other = self.newStore(reactorWrites=False, reactorReads=False)
        yield other.start()
        self.addCleanup(other.close)
        yield self.store.put("k", b'{"v": 1}')
        yield self.store.put("k", b'{"v": 2}', ifMatch=1)  # (known: one round trip)
        yield other.put("k", b'{"v": "theirs"}')  # etag 3, unknown to our writer
        stale = self.store.put("k", b'{"v": 4}', ifMatch=2)
        error = yield self.assertFailure(stale, ConflictError)
        self.assertEqual(error.actual, 3)
        self.assertEqual(self.writer.guardMisses, 1)
        version = yield self.store.put("k", b'{"v": 4}', ifMatch=3)
        self.assertEqual(version.etag, 4)
        self.assertEqual(self.committed(), ([("k", "k", 4, b'{"v": 4}')], 4))

    @inlineCallbacks
    def test_guardWaitsForTheLockThenSeesTheCommit(self):
        """
        A batch in one round trip that waits for another writer's lock
        sees that writer's commit when it gets the lock (its guard checks
        the committed row again): nothing of it is written then, and it
        runs again in two round trips, after the other's etag.
        """
        yield self.store.put("k", b'{"v": 1}')
        yield self.store.put("k", b'{"v": 2}')  # (known now)
        other = psycopg.connect(self.conninfo)
        self.addCleanup(other.close)
        other.execute("SELECT value FROM proto_counters WHERE name = 'etag' FOR UPDATE")
        other.execute("UPDATE proto_documents SET etag = 3, body = 'x' WHERE key = 'k'")
        other.execute("INSERT INTO proto_changes (etag, key, id, type) VALUES (3, 'k', 'k', 1)")
        other.execute("UPDATE proto_counters SET value = 3 WHERE name = 'etag'")
        misses, fast = self.writer.guardMisses, self.writer.fastBatches
        stale = self.store.put("k", b'{"v": 4}', ifMatch=2)
        yield deferLater(reactor, 0.2, lambda: None)  # (sent; waiting for the lock)
        self.assertFalse(stale.called)
        other.commit()
        error = yield self.assertFailure(stale, ConflictError)
        self.assertEqual(error.actual, 3)
        self.assertEqual((self.writer.fastBatches - fast, self.writer.guardMisses - misses), (1, 1))
        self.assertEqual((yield self.store.put("k", b'{"v": 4}', ifMatch=3)).etag, 4)
        self.assertEqual(self.committed(), ([("k", "k", 4, b'{"v": 4}')], 4))

    @inlineCallbacks
    def test_doorbellHeardOnTheReactor(self):
        """
        The reactor's writer listens: its own commits wake no thread (the
        listener thread does not listen then), another writer's commit
        rings the listener, which publishes it in etag order.
        """
        # (Only the rings and the switch count: not the periodic catch-up
        # that a slow, loaded run would add after CATCH_UP_SECONDS.)
        self.patch(postgres_listener, "CATCH_UP_SECONDS", 60.0)
        listener = self.store.listener
        for _ in range(500):
            if self.writer.hears and not listener.listening:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(self.writer.hears)
        self.assertFalse(listener.listening)
        catchUps = []
        original = listener._catchUp
        listener._catchUp = lambda connection: catchUps.append(1) or original(connection)
        other = self.newStore(reactorWrites=False, reactorReads=False)
        yield other.start()
        self.addCleanup(other.close)
        for n in range(5):
            yield self.store.put(f"own/{n}", b"{}")
        yield other.put("theirs", b"{}")
        yield self.store.put("own/5", b"{}")
        for _ in range(500):
            if len(self.seen) == 7:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([(c.id, c.etag) for c in self.seen],
                         [*((f"own/{n}", n + 1) for n in range(5)), ("theirs", 6), ("own/5", 7)])
        self.assertEqual(listener.skipped, 0)  # (never woken for our commits)
        # (Rung for "theirs" unless our batch of own/5 handed it over first.)
        self.assertLessEqual(self.writer.rung, 1)
        self.assertLessEqual(len(catchUps), 2)

    @inlineCallbacks
    def test_listenerListensAgainWhenTheReactorWriterIsLost(self):
        """
        Once the reactor's writer is lost, the listener thread listens
        again: another writer's commit is published meanwhile.
        """
        for _ in range(500):
            if self.writer.hears:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        pid = self.writer.backendPid
        self.patch(postgres_pipeline, "RETRY_SECONDS", 60.0)  # (stays closed)
        self.patch(postgres_listener, "CATCH_UP_SECONDS", 60.0)  # (heard, or not at all)
        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(500):
            if not self.writer.open:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(self.writer.hears)
        for _ in range(500):
            if self.store.listener.listening:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        other = self.newStore(reactorWrites=False, reactorReads=False)
        yield other.start()
        self.addCleanup(other.close)
        yield other.put("theirs", b"{}")
        started = reactor.seconds()
        for _ in range(500):
            if self.seen:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([(c.id, c.etag) for c in self.seen], [("theirs", 1)])
        # (Heard, not the periodic catch-up two seconds apart.)
        self.assertLess(reactor.seconds() - started, 1.5)

    @inlineCallbacks
    def test_missingPreparedStatement(self):
        """
        A prepared statement the database does not know: the batch is
        written by the writer thread; the statements are prepared again.
        """
        from proto.store.postgres_batch import LOCK_SQL

        yield self.store.put("a", b"{}")
        self.writer._prepared[LOCK_SQL] = "no_such_statement"
        self.assertEqual((yield self.store.put("b", b"{}")).etag, 2)
        self.assertEqual(self.writer.fallbacks, 1)
        batches = self.writer.batches
        self.assertEqual((yield self.store.put("c", b"{}")).etag, 3)
        self.assertEqual((self.writer.batches - batches, self.writer.fallbacks), (1, 1))
        self.assertEqual([c.etag for c in self.seen], [1, 2, 3])

    @inlineCallbacks
    def test_lostConnection(self):
        """
        Writes after the connection is lost go to the writer thread (and
        commit); the reactor writer connects again and serves the next.
        """
        yield self.store.put("a", b"{}")
        pid = self.writer.backendPid
        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The FATAL (or the socket's end) reaches the reactor writer when it
        # reads: a write then either finds it closed (the thread writes it)
        # or is taken and handed to the thread at the loss.
        for _ in range(500):
            if not self.writer.open or self.writer.backendPid != pid:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        version = yield self.store.put("b", b"{}")
        self.assertEqual(version.etag, 2)
        yield self.whenOpen(notOn=pid)
        batches = self.writer.batches
        version = yield self.store.put("c", b"{}")
        self.assertEqual((version.etag, self.writer.batches), (3, batches + 1))
        self.assertEqual([c.etag for c in self.seen], [1, 2, 3])
        self.assertIn(("b", "b", 2, b"{}"), self.committed()[0])

    @inlineCallbacks
    def test_terminatedWhileIdleIsNoticedAtOnce(self):
        """
        A backend ended while idle sends a FATAL: that closes the reactor
        writer at once (writes go to the thread), and it opens again.
        """
        yield self.store.put("a", b"{}")
        pid = self.writer.backendPid
        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        yield self.whenOpen(notOn=pid)
        self.assertEqual((yield self.store.put("b", b"{}")).etag, 2)

    @inlineCallbacks
    def test_cancelledBeforeItsTurnIsNeverWritten(self):
        yield self.store.put("a", b"{}")
        cancelled = self.store.put("gone", b"{}")
        kept = self.store.put("kept", b"{}")
        cancelled.cancel()
        yield self.assertFailure(cancelled, CancelledError)
        self.assertEqual((yield kept).etag, 2)
        self.assertEqual([d[0] for d in self.committed()[0]], ["a", "kept"])

    @inlineCallbacks
    def test_othersChangesPublishedFirst(self):
        """
        Another server's commit that our publisher has not seen goes to
        the hub before our batch's changes, read in our transaction.
        """
        other = self.newStore(reactorWrites=False, reactorReads=False)
        yield other.start()
        self.addCleanup(other.close)
        # The listener may hand "theirs" over first, or our writer with its
        # batch: either way each etag once, in order.
        yield other.put("theirs", b"{}")
        version = yield self.store.put("ours", b"{}")
        self.assertEqual(version.etag, 2)
        for _ in range(500):
            if len(self.seen) == 2:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([(c.id, c.etag) for c in self.seen], [("theirs", 1), ("ours", 2)])

    @inlineCallbacks
    def test_closeCommitsWhatIsQueued(self):
        """Writes taken before close are committed and answered."""
        writes = [self.store.put(f"q/{n}", b"{}") for n in range(5)]
        yield deferLater(reactor, 0, lambda: None)  # (the batch is sent)
        writes += [self.store.put(f"q/{n}", b"{}") for n in range(5, 8)]
        closed = self.store.close()
        outcomes = yield gatherResults(writes)
        self.assertEqual([v.etag for v in outcomes], list(range(1, 9)))
        yield closed
        self.assertEqual(len(self.committed()[0]), 8)


class UnreachableTests(PostgresBackend, TestCase):
    """Writes while the reactor writer is not connected are the thread's, with its errors."""

    @inlineCallbacks
    def test_writerThreadServesUntilOpen(self):
        self.setUpBackend()
        store = self.newStore()
        yield store.start()
        self.addCleanup(store.close)
        # (Right after start the reactor writer is still connecting.)
        self.assertFalse(store.reactorWriter.open)
        version = yield store.put("a", b"{}")
        self.assertEqual(version.etag, 1)
        self.assertEqual(store.reactorWriter.batches, 0)

    @inlineCallbacks
    def test_lostInFlightOutcomeUnknown(self):
        """
        A batch whose COMMIT was sent when the connection is lost fails
        with StoreUnavailableError saying its outcome is unknown.
        """
        self.setUpBackend()
        self.patch(postgres_pipeline, "RETRY_SECONDS", 0.05)
        store = self.newStore()
        yield store.start()
        self.addCleanup(store.close)
        writer = store.reactorWriter
        for _ in range(500):
            if writer.open:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        original = writer._commit

        def commitThenLose(batch):
            original(batch)
            writer.lost(ConnectionError("cut for the test"))

        self.patch(writer, "_commit", commitThenLose)
        error = yield self.assertFailure(store.put("a", b"{}"), StoreUnavailableError)
        self.assertIn("outcome of this write is unknown", str(error))
