"""
The SQLite store's read path (L{proto.store.sqlite_reads}: inline reads
on the reactor thread, point and bulk reader threads, cancellation inside
a running read) and the bounds of GET with Include
(L{proto.commands.include}; issue 12, item 1).
"""

from __future__ import annotations

import json
import os
import threading

from twisted.internet import defer
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from proto.commands import include
from proto.commands.base import CommandError
from proto.commands.include import IncludeWalk, parseInclude
from proto.store.base import Document
from proto.store.sqlite import SQLiteStore
from proto.store import sqlite_inline, sqlite_reads


def _reactor():
    from twisted.internet import reactor

    return reactor


class IncludeWalkTests(SynchronousTestCase):
    """The bounded walk that follows an Include."""

    def ids(self, walk, results):
        return [i for i in walk(results) if i is not None]

    def test_duplicatePathsCountOnce(self) -> None:
        self.assertEqual(parseInclude("A, B.C, A,B.C"), [("A",), ("B", "C")])

    def test_duplicateResultsWalkedOnce(self) -> None:
        """The same document twice in the results is parsed and walked once."""
        doc = Document("d", 1, json.dumps({"L": [f"x/{i}" for i in range(40)]}).encode())
        walk = IncludeWalk([("L",)])
        ids = self.ids(walk, [doc] * 600)
        self.assertEqual(ids, [f"x/{i}" for i in range(40)])

    def test_namesEachIdOnce(self) -> None:
        """Ids named again (also in another case) are not named twice."""
        doc = Document("d", 1, b'{"A": ["x", "X", "y"], "B": "x"}')
        self.assertEqual(self.ids(IncludeWalk([("A",), ("B",)]), [doc]), ["x", "y"])

    def test_allowed(self) -> None:
        doc = Document("d", 1, b'{"A": ["a/1", "b/1"]}')
        walk = IncludeWalk([("A",)], lambda id: id.startswith("a/"))
        self.assertEqual(self.ids(walk, [doc]), ["a/1"])

    def test_tooManyDocuments(self) -> None:
        """More than MAX_INCLUDED distinct ids: a CommandError for the client."""
        docs = [
            Document(f"d/{n}", 1, json.dumps({"L": [f"x/{n}/{i}" for i in range(100)]}).encode())
            for n in range(include.MAX_INCLUDED // 100 + 1)
        ]
        error = self.assertRaises(CommandError, list, IncludeWalk([("L",)])(docs))
        self.assertEqual(
            error.reason,
            "Include too large: it names more than 10,000 documents (ask for fewer ids or fields)",
        )

    def test_tooManySteps(self) -> None:
        """
        A walk that finds nothing but looks at too much is refused as well:
        600 documents x 500 distinct paths into a 40-element list.
        """
        docs = [
            Document(f"d/{n}", 1, json.dumps({"L": [f"x/{i}" for i in range(40)]}).encode())
            for n in range(600)
        ]
        paths = [("L", f"x{p}") for p in range(500)]
        error = self.assertRaises(CommandError, list, IncludeWalk(paths)(docs))
        self.assertIn("Include too large: following it takes more than 1,000,000 steps", error.reason)

    def test_rememberedWalkAgrees(self) -> None:
        """
        A walk remembered for a body (L{include._walkedIds}) names what the
        walk itself names, in the same order, the first time and the next.
        """
        body = json.dumps({"A": ["x/1", "X/1", {"B": "y"}], "B": "x/1", "C": [{"B": "z"}, {"B": ["w", "y"]}]})
        paths = parseInclude("A, C.B, B, A.B")
        expected = []
        for id in include.includedIds([Document("d", 1, body.encode())], paths):
            if id.casefold() not in [e.casefold() for e in expected]:
                expected.append(id)
        for attempt in range(2):
            doc = Document(f"d/{attempt}", 1, body.encode())  # a new bytes object each time
            self.assertEqual(self.ids(IncludeWalk(paths), [doc]), expected)
        self.assertIsNotNone(include._walkedIds(body.encode(), tuple(paths)))

    def test_longWalkNotRemembered(self) -> None:
        """
        A walk longer than WALKED_MAX_STEPS is not remembered: it runs as a
        stream each time, with its ticks (test_ticks), so a long walk can
        still be cancelled on the way.
        """
        body = json.dumps({"L": [{"x": 1}] * (include.WALKED_MAX_STEPS + 10)}).encode()
        self.assertIsNone(include._walkedIds(body, (("L", "y"),)))
        items = list(IncludeWalk([("L", "y")])([Document("d", 1, body)]))
        self.assertGreaterEqual(items.count(None), 1)

    def test_rememberedStepsCount(self) -> None:
        """
        The steps of a remembered walk still count against
        MAX_INCLUDE_STEPS: many documents with one short walk each.
        """
        body = json.dumps({"L": [{"x": 1}] * 99}).encode()
        docs = [Document(f"d/{n}", 1, body) for n in range(include.MAX_INCLUDE_STEPS // 100 + 1)]
        error = self.assertRaises(CommandError, list, IncludeWalk([("L", "y")])(docs))
        self.assertIn("Include too large: following it takes more than 1,000,000 steps", error.reason)

    def test_parseIncludeRemembered(self) -> None:
        """
        parseInclude gives the same paths for a value it remembers; a
        malformed value is refused every time; the memo is bounded.
        """
        self.assertEqual(parseInclude("A.B, C"), [("A", "B"), ("C",)])
        self.assertEqual(parseInclude("A.B, C"), [("A", "B"), ("C",)])
        for attempt in range(2):
            self.assertRaises(CommandError, parseInclude, "A,,B")
        for n in range(include.INCLUDE_MEMO_ENTRIES * 2):
            self.assertEqual(parseInclude(f"F{n}"), [(f"F{n}",)])
        self.assertLessEqual(len(include._includeMemo.entries), include.INCLUDE_MEMO_ENTRIES)

    def test_ticks(self) -> None:
        """The walk yields None every TICK steps, for the store's cancellation check."""
        doc = Document("d", 1, json.dumps({"L": [{"x": 1}] * 20}).encode())
        items = list(IncludeWalk([("L", f"y{p}") for p in range(100)])([doc]))
        self.assertGreaterEqual(items.count(None), 2000 // include.TICK)
        self.assertEqual([i for i in items if i is not None], [])


class InlineReadTests(TestCase):
    """Small reads are served on the reactor thread, others on threads."""

    def setUp(self) -> defer.Deferred:
        # A loaded machine must not trigger the back-off after a slow read
        # (it would send the reads these tests expect inline to a thread).
        self.patch(sqlite_inline, "INLINE_SLOW_SECONDS", 3600.0)
        self.patch(sqlite_inline, "INLINE_SLOW_CPU_SECONDS", 3600.0)
        self.store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"))
        self.addCleanup(self.store.close)
        return self.store.start()

    @inlineCallbacks
    def test_pointReadInline(self):
        yield self.store.put("a", b'{"R": "b"}')
        yield self.store.put("b", b"{}")
        inline = self.store._reads.inline
        before = inline.served
        found = self.store.read(["A"])
        self.assertTrue(found.called, "an inline read has its result at once")
        snapshot = yield found
        self.assertEqual((snapshot.results[0].id, snapshot.etag), ("a", 2))
        snapshot = yield self.store.read(["a"], lambda results: ["b"])
        self.assertEqual([d.id for d in snapshot.includes], ["b"])
        self.assertEqual(inline.served, before + 2)

    @inlineCallbacks
    def test_readYourWrites(self):
        """A read issued while a write is unfinished sees it (and not a later one)."""
        put = self.store.put("a", b"{}")
        read = self.store.read(["a"])
        delete = self.store.delete(["a"])
        after = self.store.read(["a"])
        yield put
        self.assertEqual([d and d.id for d in (yield read).results], ["a"])
        yield delete
        self.assertEqual((yield after).results, [None])

    @inlineCallbacks
    def test_bigReadsGoToThreads(self):
        """Too many ids, or an Include that walks too far, is not read inline."""
        yield self.store.put("a", b"{}")
        inline = self.store._reads.inline
        served, declined = inline.served, inline.declined
        many = ["a"] * (sqlite_reads.INLINE_MAX_IDS + 1)
        snapshot = yield self.store.read(many)
        self.assertEqual(len(snapshot.results), len(many))
        far = yield self.store.read(["a"], lambda results: iter([None] * 10_000 + ["a"]))
        self.assertEqual([d.id for d in far.includes], ["a"])
        self.assertEqual((inline.served, inline.declined), (served, declined + 1))

    @inlineCallbacks
    def test_failureInline(self):
        """What the references walk raises fails that read alone."""

        def refuse(results):
            raise CommandError("no")
            yield

        yield self.assertFailure(self.store.read(["a"], refuse), CommandError)
        self.assertEqual((yield self.store.read(["a"])).results, [None])


class CancelRunningReadTests(TestCase):
    """A read that runs on a thread stops at its next check when cancelled."""

    def setUp(self) -> defer.Deferred:
        self.store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"))
        self.addCleanup(self.store.close)
        return self.store.start()

    @inlineCallbacks
    def test_cancelInsideTheLoop(self):
        running = threading.Event()
        stopped = threading.Event()

        def endless(results):
            running.set()
            try:
                while True:
                    yield None
            finally:
                stopped.set()

        long = self.store.read(["a"] * 100, endless)
        for _ in range(2000):
            if running.is_set():
                break
            yield deferLater(_reactor(), 0.005)
        self.assertTrue(running.is_set())
        # Meanwhile, a short read is not held up by the long one.
        short = yield self.store.read(["b"] * (sqlite_reads.INLINE_MAX_IDS + 1))
        self.assertEqual(short.results[0], None)
        long.cancel()
        yield self.assertFailure(long, CancelledError)
        for _ in range(2000):
            if stopped.is_set():
                break
            yield deferLater(_reactor(), 0.005)
        self.assertTrue(stopped.is_set(), "the walk went on after the cancel")
        # The bulk reader is free again.
        again = yield self.store.read(["a"] * 100, lambda results: iter(["a"]))
        self.assertEqual(again.includes, [])


class StallingGetTests(TestCase):
    """
    Issue 12, item 1, end to end: the GET that used to stall every read
    (600 ids, an Include of many paths over a 40-element list) is
    answered ERR, and another client's GET is answered meanwhile.
    """

    def setUp(self) -> defer.Deferred:
        from tests import support

        self.support = support
        return support.startStoreServer(self)

    @inlineCallbacks
    def exchange(self, connection, data: bytes, count: int = 1, others=()):
        connection.send(data)
        frames = connection.frames()
        for _ in range(4000):
            if len(frames) >= count:
                break
            yield deferLater(_reactor(), 0.005)
            for other in others:
                other.flush()
            connection.flush()
            frames += connection.frames()
        return frames

    @inlineCallbacks
    def test_stallingGetAnsweredWhileOthersAre(self):
        body = json.dumps({"L": [f"d/{i}" for i in range(40)]}).encode()
        yield defer.gatherResults([self.store.put(f"d/{i}", body) for i in range(600)])
        staller, other = self.support.connectInMemory(factory=self.factory), self.support.connectInMemory(
            factory=self.factory
        )
        request = self.support.request
        ids = [f"d/{i}" for i in range(600)]
        paths = ",".join(f"L.x{p}" for p in range(500))
        head = request("GET", *ids, sequence="s", headers={"Include": paths})
        self.assertLess(len(head), 8192)
        staller.send(head)
        # The other client's GETs, meanwhile: each answered in turn.
        for n in range(3):
            [reply] = yield self.exchange(other, request("GET", "d/1", sequence=f"o{n}"), others=[staller])
            self.assertEqual((reply.kind, json.loads(reply.body)["Results"][0]["L"][0]), ("OK", "d/0"))
        [refused] = yield self.exchange(staller, b"")
        self.assertEqual((refused.kind, refused.sequence), ("ERR", "s"))
        self.assertIn("Include too large", refused.reason)

    @inlineCallbacks
    def test_duplicatesAreCheap(self):
        """The same 600 ids and 2,000 repeated paths: one walk, answered OK."""
        body = json.dumps({"L": [f"d/{i}" for i in range(40)]}).encode()
        yield defer.gatherResults([self.store.put(f"d/{i}", body) for i in range(40)])
        connection = self.support.connectInMemory(factory=self.factory)
        request = self.support.request
        head = request("GET", *(["d/1"] * 600), sequence="s", headers={"Include": ",".join(["L"] * 2000)})
        self.assertLess(len(head), 8192)
        [reply] = yield self.exchange(connection, head)
        self.assertEqual(reply.kind, "OK")
        found = json.loads(reply.body)
        self.assertEqual(len(found["Results"]), 600)
        self.assertEqual(list(found["Includes"]), [f"d/{i}" for i in range(40)])
