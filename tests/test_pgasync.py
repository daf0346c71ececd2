"""
The PostgreSQL store's GETs on the reactor thread
(L{proto.store.postgres_async.ReactorReader}): a turn's reads in at most
two statements, the same results as the reader threads, and whatever goes
wrong handed to those threads.
"""

from __future__ import annotations

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from proto.commands.include import IncludeWalk, parseInclude
from proto.store import postgres_pipeline, postgres_reads
from tests.test_store import PostgresBackend


class ReactorReaderTests(PostgresBackend, TestCase):

    @inlineCallbacks
    def setUp(self):
        self.setUpBackend()
        self.patch(postgres_pipeline, "RETRY_SECONDS", 0.05)
        self.store = self.newStore()
        yield self.store.start()
        self.addCleanup(self.store.close)
        self.reader = self.store.reactorReader
        yield self.whenOpen()

    def whenOpen(self, notOn=None):
        """The reactor reader open (not on backend C{notOn})."""
        return self.whenPipelineOpen(self.reader, notOn)

    def include(self, ids, fields="R"):
        return self.store.read(ids, IncludeWalk(parseInclude(fields)))

    @inlineCallbacks
    def test_oneTurnTwoStatements(self):
        """
        The reads of one turn: one statement for those without Include,
        one for those with; each read gets what the threads would give.
        """
        yield self.store.put("a", b'{"R": "b"}')
        last = yield self.store.put("b", b'{"n": 2}')
        before = self.reader.statements
        reads = [self.store.read(ids) for ids in (["a"], ["B", "a"], ["nope"], ["b", "b"])]
        included = [self.include(["a"]), self.include(["b", "a"])]
        found = yield gatherResults(reads)
        withIncludes = yield gatherResults(included)
        self.assertEqual(self.reader.statements - before, 2)
        self.assertEqual(self.reader.fallbacks, 0)
        self.assertEqual(
            [[d and (d.id, d.etag) for d in snapshot.results] for snapshot in found],
            [[("a", 1)], [("b", 2), ("a", 1)], [None], [("b", 2), ("b", 2)]],
        )
        self.assertEqual({snapshot.etag for snapshot in found + withIncludes}, {last.etag})
        self.assertEqual([[d.id for d in s.includes] for s in withIncludes], [["b"], ["b"]])
        self.assertEqual(withIncludes[1].results[0].body, b'{"n": 2}')

    @inlineCallbacks
    def test_readYourWrites(self):
        """A read asked after a write's OK sees it (each time, on the reactor)."""
        before = self.reader.statements
        for n in range(20):
            version = yield self.store.put("k", b'{"n": %d}' % n)
            (found,) = yield self.store.get(["k"])
            self.assertEqual((found.etag, found.body), (version.etag, b'{"n": %d}' % n))
        self.assertGreaterEqual(self.reader.statements - before, 20)

    @inlineCallbacks
    def test_refusedStatementFallsBack(self):
        """
        A batch whose statement the database refuses (a body jsonb
        refuses) is read by the threads: an Include in two round trips.
        """
        yield self.store.put("r/1", b'{"n": 1}')
        yield self.store.put("o/nul", b'{"R": "r/1", "x": "\\u0000"}')
        yield self.store.put("o/ok", b'{"R": "r/1"}')
        twoTrips = []
        original = postgres_reads.snapshotInclude
        self.patch(postgres_reads, "snapshotInclude",
                   lambda *args: twoTrips.append(args[1]) or original(*args))
        found = yield gatherResults([self.include(["o/nul"]), self.include(["o/ok"])])
        self.assertEqual([[d.id for d in s.includes] for s in found], [["r/1"], ["r/1"]])
        self.assertEqual(sorted(twoTrips), [["o/nul"], ["o/ok"]])
        self.assertEqual(self.reader.fallbacks, 2)
        # The connection is still good for the next turn.
        (found,) = yield self.store.get(["o/ok"])
        self.assertEqual(found.id, "o/ok")
        self.assertEqual(self.reader.fallbacks, 2)

    @inlineCallbacks
    def test_missingPreparedStatement(self):
        """A prepared statement the database does not know: read by the threads, then prepared again."""
        yield self.store.put("a", b"{}")
        yield self.store.get(["a"])
        sql, _ = postgres_reads.plainStatement([["a"]])
        self.reader._prepared[sql] = "no_such_statement"
        self.assertEqual((yield self.store.get(["a"]))[0].id, "a")
        self.assertEqual(self.reader.fallbacks, 1)
        before = self.reader.statements
        self.assertEqual((yield self.store.get(["a"]))[0].id, "a")
        self.assertEqual((self.reader.statements - before, self.reader.fallbacks), (1, 1))

    @inlineCallbacks
    def test_lostConnection(self):
        """
        Reads in flight when the connection is lost are read by the
        threads; it connects again and serves the next ones.
        """
        yield self.store.put("a", b"{}")
        pid = self.reader._pgconn.backend_pid
        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        found = yield gatherResults([self.store.get(["a"]), self.include(["a"])])
        self.assertEqual(found[0][0].id, "a")
        self.assertEqual(found[1].results[0].id, "a")
        self.assertEqual(self.reader.fallbacks, 2)
        # (Not "open" alone: the terminated backend's FATAL answers the reads,
        # which the threads then serve, but the reader sees the connection
        # end only at its EOF, which a loaded machine can deliver after
        # that: the reader was then still "open" on the old backend.)
        yield self.whenOpen(notOn=pid)
        before = self.reader.statements
        self.assertEqual((yield self.store.get(["a"]))[0].id, "a")
        self.assertEqual(self.reader.statements, before + 1)
        self.assertEqual(self.reader.fallbacks, 2)

    @inlineCallbacks
    def test_cancelled(self):
        """A read cancelled before its turn ends is not sent; the others are answered."""
        yield self.store.put("a", b"{}")
        before = self.reader.statements
        cancelled = self.store.read(["a"])
        kept = self.include(["a"])
        cancelled.cancel()
        yield self.assertFailure(cancelled, CancelledError)
        self.assertEqual((yield kept).results[0].id, "a")
        self.assertEqual(self.reader.statements - before, 1)

    @inlineCallbacks
    def test_closeAnswersReadsInFlight(self):
        yield self.store.put("a", b"{}")
        reads = [self.store.get(["a"]) for _ in range(5)]
        yield deferLater(reactor, 0, lambda: None)  # (sent)
        closed = self.store.close()
        found = yield gatherResults(reads)
        self.assertEqual([f[0].id for f in found], ["a"] * 5)
        yield closed
        self.assertFalse(self.reader.open)


class OwnNotificationTests(PostgresBackend, TestCase):
    """The listener reads the change log for others' commits, not for its own writer's."""

    @inlineCallbacks
    def test_ownCommitsSkippedOthersRead(self):
        from proto.hub import ChangeHub
        from proto.store import postgres_listener

        # The skip depends on the writer handing its commit over within
        # OWN_GRACE_SECONDS of the notification (else the log is read: also
        # correct). 50 ms is not always met on a loaded machine (the
        # writer's thread waits for a CPU), so the test gives it 1 s (the
        # longest the listener then waits, also to stop), and no periodic
        # catch-up runs meanwhile.
        self.patch(postgres_listener, "OWN_GRACE_SECONDS", 1.0)
        self.patch(postgres_listener, "CATCH_UP_SECONDS", 60.0)
        self.setUpBackend()
        hub, otherHub = ChangeHub(), ChangeHub()
        seen = []
        hub.subscribe("", seen.append)
        # (The writer thread's notifications reach the listener thread: the
        # reactor's writer, which hears the doorbell itself, is off here;
        # tests.test_pgwriter covers it.)
        store = self.newStore(hub=hub, reactorWrites=False)
        other = self.newStore(hub=otherHub)
        for s in (store, other):
            yield s.start()
            self.addCleanup(s.close)
        catchUps = []
        original = store.listener._catchUp
        store.listener._catchUp = lambda connection: catchUps.append(1) or original(connection)
        for n in range(5):
            yield store.put(f"own/{n}", b"{}")
        yield other.put("theirs", b"{}")
        yield store.put("own/5", b"{}")
        for _ in range(500):
            if store.listener.skipped >= 1 and len(seen) == 7:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([(c.id, c.etag) for c in seen],
                         [*((f"own/{n}", n + 1) for n in range(5)), ("theirs", 6), ("own/5", 7)])
        # What is saved: the log is read for "theirs" (and at the first
        # catch-up, if the listener thread had not run it yet when it was
        # wrapped), not for our six. (Not skipped == 6: notifications of
        # ours that arrive before the writer's hand-off of the previous
        # one are merged into one skip.)
        self.assertGreaterEqual(store.listener.skipped, 1)
        self.assertLessEqual(len(catchUps), 2)
