"""
The PostgreSQL store's GET with Include in one statement
(L{proto.store.postgres_reads.prefetchedReads}) and its fallback to two
round trips: same results as the walk decides, one snapshot.
"""

from __future__ import annotations

import threading

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from proto.commands.base import CommandError
from proto.commands.include import IncludeWalk, parseInclude
from proto.store import postgres_reads, postgres_session
from tests.test_store import PostgresBackend


class JsonPathTests(SynchronousTestCase):
    def test_quoting(self) -> None:
        self.assertEqual(postgres_reads.jsonPath(("A", "B")), 'lax $."A"."B"[*]')
        self.assertEqual(postgres_reads.jsonPath(('a"b', "c\\d")), 'lax $."a\\"b"."c\\\\d"[*]')


class PrefetchedIncludeTests(PostgresBackend, TestCase):
    """GET with Include on PostgreSQL, in one statement where it can be."""

    @inlineCallbacks
    def setUp(self):
        self.setUpBackend()
        self.store = self.newStore()
        yield self.store.start()
        self.addCleanup(self.store.close)
        self.twoTrips = 0
        original = postgres_reads.snapshotInclude

        def counted(*args):
            self.twoTrips += 1
            return original(*args)

        self.patch(postgres_reads, "snapshotInclude", counted)

    def read(self, ids, include):
        return self.store.read(ids, IncludeWalk(parseInclude(include)))

    @inlineCallbacks
    def test_oneStatement(self):
        """Lists one level deep, ids in any case, missing ones, repeats: one trip."""
        yield self.store.put("o/1", b'{"A": [{"B": "R/1"}, [{"B": "r/9"}], {"B": ["r/2", "nope", 7]}], "C": "r/1"}')
        yield self.store.put("r/1", b'{"n": 1}')
        yield self.store.put("r/2", b'{"n": 2}')
        yield self.store.put("r/9", b'{"n": 9}')
        found = yield self.read(["o/1", "missing", "O/1"], "A.B, C")
        self.assertEqual(self.twoTrips, 0)
        self.assertEqual([d and d.id for d in found.results], ["o/1", None, "o/1"])
        self.assertEqual([(d.id, d.body) for d in found.includes],
                         [("r/1", b'{"n": 1}'), ("r/2", b'{"n": 2}')])
        self.assertEqual(found.etag, 4)

    @inlineCallbacks
    def test_fallbacks(self):
        """What the one statement cannot do is read in two round trips, with the same result."""
        yield self.store.put("r/1", b'{"n": 1}')
        yield self.store.put("stra\u00dfe", b'{"n": 2}')
        # jsonb refuses an escaped NUL.
        yield self.store.put("o/nul", b'{"R": "r/1", "x": "\\u0000"}')
        found = yield self.read(["o/nul"], "R")
        self.assertEqual([d.id for d in found.includes], ["r/1"])
        self.assertEqual(self.twoTrips, 1)
        # Case folding (Python's) that lower() does not do.
        yield self.store.put("o/fold", '{"R": "STRA\u1e9eE"}'.encode())
        found = yield self.read(["o/fold"], "R")
        self.assertEqual([d.id for d in found.includes], ["stra\u00dfe"])
        self.assertEqual(self.twoTrips, 2)
        # More candidates than are fetched ahead.
        self.patch(postgres_reads, "PREFETCH_MAX", 1)
        yield self.store.put("o/many", b'{"R": ["r/1", "r/2", "r/3"]}')
        found = yield self.read(["o/many"], "R")
        self.assertEqual([d.id for d in found.includes], ["r/1"])
        self.assertEqual(self.twoTrips, 3)

    @inlineCallbacks
    def test_quotedPath(self):
        yield self.store.put("r/1", b"{}")
        yield self.store.put("o", b'{"a\\"b": {"c\\\\d": "r/1"}}')
        found = yield self.read(["o"], 'a"b.c\\d')
        self.assertEqual([d.id for d in found.includes], ["r/1"])
        self.assertEqual(self.twoTrips, 0)


class BatchedReadTests(PostgresBackend, TestCase):
    """A reader thread's batch of GETs without Include is one statement."""

    @inlineCallbacks
    def setUp(self):
        self.setUpBackend()
        self.store = self.newStore(readers=1, reactorReads=False)
        yield self.store.start()
        self.addCleanup(self.store.close)

    def countStatements(self, name):
        """
        The list to which each call of C{postgres_reads.<name>} (one
        statement for a batch of reads) appends the size of its batch
        (called from there, and by the reader threads' session).
        """
        sizes = []
        original = getattr(postgres_reads, name)

        def counted(connection, batch):
            sizes.append(len(batch))
            return original(connection, batch)

        self.patch(postgres_reads, name, counted)
        self.patch(postgres_session, name, counted)
        return sizes

    @inlineCallbacks
    def whileBusy(self, start):
        """
        Call C{start} while the one reader is busy, so that the reads it
        starts queue up and go as one batch; what it returns, once the
        reader is free again.
        """
        release = threading.Event()
        busy = self.store._readers[0].submit(lambda session: release.wait(10))
        started = start()
        release.set()
        yield busy
        return started

    @inlineCallbacks
    def test_batch(self):
        yield self.store.put("a", b'{"n": 1}')
        last = yield self.store.put("b", b'{"n": 2}')
        statements = self.countStatements("plainReads")
        reads, include = yield self.whileBusy(lambda: (
            [self.store.read(ids) for ids in (["a"], ["B", "a"], ["nope"], ["b", "b"])],
            self.store.read(["a"], lambda results: ["b"]),
        ))
        found = yield gatherResults(reads)
        self.assertEqual(statements, [4])
        self.assertEqual(
            [[d and (d.id, d.etag) for d in snapshot.results] for snapshot in found],
            [[("a", 1)], [("b", 2), ("a", 1)], [None], [("b", 2), ("b", 2)]],
        )
        self.assertEqual({snapshot.etag for snapshot in found}, {last.etag})
        self.assertEqual([d.id for d in (yield include).includes], ["b"])

    @inlineCallbacks
    def test_includeBatch(self):
        """
        A batch's GETs with Include are one statement; one that falls back
        reads in two round trips, one whose walk fails fails alone.
        """
        from proto.commands import include

        yield self.store.put("o/1", b'{"R": "r/1"}')
        yield self.store.put("o/2", b'{"R": ["r/1", "r/2"], "S": "r/3"}')
        yield self.store.put("o/fold", '{"R": "STRA\u1e9eE"}'.encode())
        yield self.store.put("stra\u00dfe", b"{}")
        yield self.store.put("o/big", b'{"R": ["r/1", "r/2", "r/3", "r/4"]}')
        for n in (1, 2, 3):
            yield self.store.put(f"r/{n}", b'{"n": %d}' % n)
        self.patch(include, "MAX_INCLUDED", 3)
        statements = self.countStatements("prefetchedReads")

        def read(ids, fields):
            return self.store.read(ids, IncludeWalk(parseInclude(fields)))

        reads, big, plain = yield self.whileBusy(lambda: (
            [read(["o/1"], "R"), read(["o/2", "o/1"], "R,S"), read(["o/fold"], "R")],
            read(["o/big"], "R"),
            self.store.read(["o/1"]),
        ))
        found = yield gatherResults(reads)
        self.assertEqual(
            [[d.id for d in snapshot.includes] for snapshot in found],
            [["r/1"], ["r/1", "r/2", "r/3"], ["stra\u00dfe"]],
        )
        error = yield self.assertFailure(big, CommandError)
        self.assertIn("Include too large", error.reason)
        self.assertEqual((yield plain).results[0].id, "o/1")
        # One statement for the batch of four, then o/fold alone again.
        self.assertEqual(statements, [4, 1])
