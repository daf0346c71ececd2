"""
The document cache (L{proto.store.cache}) and how the SQLite store keeps
it coherent (L{proto.store.sqlite_inline.InlineReader},
L{proto.store.sqlite_coherence.CacheFollower}): a read served from
the cache is what a read of the database would give at that moment,
whoever committed last (this store's writer, another store on the same
file, another process), and a GET with Include from the cache is one
snapshot.
"""

from __future__ import annotations

import json
import os
import sys

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from proto.commands import documents
from proto.commands.base import CommandError, Result
from proto.commands.include import IncludeWalk, parseInclude
from proto.memo import BoundedMemo
from proto.store import sqlite_coherence, sqlite_inline, sqlite_reads
from proto.store.base import Document, InvalidIdError, checkId
from proto.store import cache
from proto.store.cache import MISSING, DocumentCache
from proto.store.sqlite import SQLiteStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DocumentCacheTests(SynchronousTestCase):
    """The map itself: position, fills, invalidation, bounds."""

    def doc(self, id: str, etag: int, size: int = 10) -> Document:
        return Document(id, etag, b"x" * size)

    def test_fillOnlyAtItsPosition(self) -> None:
        """Documents read in a newer snapshot than the cache's are not kept."""
        cache = DocumentCache()
        cache.clear(5)
        cache.fill(6, [("a", self.doc("a", 6))])
        self.assertEqual(len(cache), 0)
        cache.fill(5, [("a", self.doc("a", 3)), ("b", None)])
        self.assertEqual(cache.entries, {"a": self.doc("a", 3), "b": MISSING})

    def test_advanceDropsChanged(self) -> None:
        cache = DocumentCache()
        cache.fill(0, [("a", self.doc("a", 0)), ("b", None), ("c", self.doc("c", 0))])
        cache.advance(7, ["b", "c", "zz"])
        self.assertEqual((list(cache.entries), cache.etag), (["a"], 7))
        self.assertEqual(cache.size, 10)

    def test_boundsEvictOldest(self) -> None:
        cache = DocumentCache(maxEntries=8, maxBytes=1000, maxDocumentBytes=100)
        cache.fill(0, [(f"k{i}", self.doc(f"k{i}", 1)) for i in range(9)])
        self.assertLessEqual(len(cache), 8)
        self.assertNotIn("k0", cache.entries)
        self.assertIn("k8", cache.entries)
        cache.fill(0, [("big", self.doc("big", 1, 101))])
        self.assertNotIn("big", cache.entries)
        cache.fill(0, [(f"m{i}", self.doc(f"m{i}", 1, 100)) for i in range(6)])
        self.assertLessEqual(cache.size, 1000)
        self.assertEqual(cache.size, sum(len(d.body) for d in cache.entries.values()))


class _Stores(TestCase):
    """Two stores on one file: C{self.store} reads, C{self.other} writes."""

    retain = 100_000

    @inlineCallbacks
    def setUp(self):
        # A loaded machine must not send reads to threads (the inline
        # back-off after a slow read): these tests ask what the cache does.
        self.patch(sqlite_inline, "INLINE_SLOW_SECONDS", 3600.0)
        self.patch(sqlite_inline, "INLINE_SLOW_CPU_SECONDS", 3600.0)
        self.path = os.path.abspath(os.path.join(self.mktemp(), "docs.sqlite3"))
        self.store = SQLiteStore(self.path)
        yield self.store.start()
        self.addCleanup(self.store.close)
        self.other = SQLiteStore(self.path, retainChanges=self.retain)
        yield self.other.start()
        self.addCleanup(self.other.close)
        self.cache = self.store._reads.inline.cache

    def readNow(self, ids, include=None):
        """A read that must be answered at once (inline or from the cache)."""
        walk = IncludeWalk(parseInclude(include)) if include else None
        found = self.store.readNow(ids, walk)
        self.assertNotIsInstance(found, defer.Deferred)
        return found

    def cached(self, ids, include=None):
        """L{readNow}, asserting it came from the cache."""
        hits = self.cache.hits
        found = self.readNow(ids, include)
        self.assertEqual(self.cache.hits, hits + 1, "served from the cache")
        return found


class CoherenceTests(_Stores):
    """No read from the cache sees a version older than the last commit."""

    @inlineCallbacks
    def test_repeatedReadIsAHit(self):
        version = yield self.store.put("a", b'{"v": 1}')
        first = self.readNow(["A"])
        self.readNow(["missing"])
        second = self.cached(["a", "missing"])
        self.assertEqual(second.results, [first.results[0], None])
        self.assertEqual((second.results[0].etag, second.etag), (version.etag, version.etag))

    @inlineCallbacks
    def test_otherWriterSeenAtOnce(self):
        """A commit through another connection is seen by the very next read."""
        yield self.store.put("a", b'{"v": 1}')
        self.readNow(["a", "b"])
        self.cached(["a", "b"])
        put = yield self.other.put("a", b'{"v": 2}')
        found = self.readNow(["a", "b"])
        self.assertEqual((found.results[0].body, found.results[0].etag), (b'{"v": 2}', put.etag))
        self.assertEqual(found.etag, put.etag)
        created = yield self.other.put("b", b'{"v": 3}')
        self.assertEqual(self.readNow(["b"]).results[0].etag, created.etag)
        yield self.other.delete(["a"])
        found = self.readNow(["a", "b"])
        self.assertEqual(found.results[0], None)
        self.assertEqual(self.cached(["a", "b"]).results, found.results)

    @inlineCallbacks
    def test_failedAdvanceChecksAgain(self):
        """
        A read whose catching up fails (the log read raised) is sent away,
        and the next read catches up: the WAL-index header it had already
        read does not count as seen.
        """
        import sqlite3

        yield self.store.put("a", b'{"v": 1}')
        self.readNow(["a"])
        self.cached(["a"])
        put = yield self.other.put("a", b'{"v": 2}')
        follower = self.store._reads.inline.follower
        advance = follower._advance
        calls = []

        def failOnce(cache):
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            advance(cache)

        self.patch(follower, "_advance", failOnce)
        self.assertIsNone(self.store._reads.inline.read(["a"], None))
        found = self.readNow(["a"])
        self.assertEqual((found.results[0].body, found.etag), (b'{"v": 2}', put.etag))
        self.assertEqual(len(calls), 2)

    @inlineCallbacks
    def test_ownWriterSeen(self):
        yield self.store.put("a", b'{"v": 1}')
        self.readNow(["a"])
        self.cached(["a"])
        put = yield self.store.put("a", b'{"v": 2}')
        self.assertEqual(self.readNow(["a"]).results[0].etag, put.etag)

    @inlineCallbacks
    def test_includeSnapshot(self):
        """
        A GET with Include from the cache: results and includes of one
        state, the Etag its high-water mark; a change to an included
        document is seen at once.
        """
        yield self.store.put("o", b'{"R": ["r", "s"]}')
        yield self.store.put("r", b'{"v": 1}')
        yield self.store.put("s", b'{"v": 1}')
        self.readNow(["o"], "R")
        found = self.cached(["o"], "R")
        self.assertEqual([d.id for d in found.includes], ["r", "s"])
        changed = yield self.other.put("s", b'{"v": 2}')
        found = self.readNow(["o"], "R")
        self.assertEqual([(d.id, d.etag) for d in found.includes], [("r", 2), ("s", changed.etag)])
        self.assertEqual(found.etag, changed.etag)
        found = self.cached(["o"], "R")
        self.assertEqual([d.body for d in found.includes], [b'{"v": 1}', b'{"v": 2}'])
        self.assertEqual(found.etag, changed.etag)

    @inlineCallbacks
    def test_includeNamesUncached(self):
        """A cached result naming a document the cache lacks is read from the file."""
        yield self.store.put("o", b'{"R": "r"}')
        self.readNow(["o"])
        yield self.other.put("r", b'{"v": 1}')
        self.readNow(["o"])  # Catch up; "o" is cached, "r" is not.
        found = self.readNow(["o"], "R")
        self.assertEqual([d.id for d in found.includes], ["r"])
        self.assertEqual([d.id for d in self.cached(["o"], "R").includes], ["r"])

    @inlineCallbacks
    def test_farBehindStartsAgain(self):
        """More changes than it follows at once: the cache starts again empty."""
        self.patch(sqlite_coherence, "CACHE_MAX_ADVANCE", 2)
        yield self.store.put("a", b'{"v": 1}')
        self.readNow(["a"])
        for n in range(3):
            yield self.other.put(f"x{n}", b"{}")
        last = yield self.other.put("a", b'{"v": 2}')
        found = self.readNow(["a"])
        self.assertEqual((found.results[0].etag, found.etag), (last.etag, last.etag))
        self.assertEqual(list(self.cache.entries), ["a"])


    @inlineCallbacks
    def test_longWalkGoesToAThread(self):
        """A cached read whose Include walk is long still leaves the reactor thread."""
        yield self.store.put("a", b"{}")
        self.readNow(["a"])
        declined = self.store._reads.inline.declined
        found = self.store.readNow(["a"], lambda results: iter([None] * 10_000 + ["a"]))
        self.assertIsInstance(found, defer.Deferred)
        self.assertEqual(self.store._reads.inline.declined, declined + 1)
        self.assertEqual([d.id for d in (yield found).includes], ["a"])


    @inlineCallbacks
    def test_backOffSparesTheCache(self):
        """After a slow read, the file is read on threads; the cache still answers here."""
        yield self.store.put("a", b"{}")
        self.readNow(["a"])
        inline = self.store._reads.inline
        inline._backoffUntil = inline._clock() + 3600
        self.cached(["a"])
        found = self.store.readNow(["b"])
        self.assertIsInstance(found, defer.Deferred)
        self.assertEqual((yield found).results, [None])


    @inlineCallbacks
    def test_walHeaderSparesTheCheck(self):
        """
        While the WAL-index header is unchanged nobody committed: no
        C{data_version} statement; a commit (of another store) changes it.
        """
        yield self.store.put("a", b'{"v": 1}')
        self.readNow(["a"])
        follower = self.store._reads.inline.follower
        self.assertIsNotNone(follower._walIndex, "the WAL-index is mapped")
        # The read that mapped it did not read its header (a commit could
        # have come between its PRAGMA and the mapping): the next one does.
        self.readNow(["a"])
        statements = []
        cursor = follower._versionCursor

        class Counting:
            def execute(self, sql):
                statements.append(sql)
                return cursor.execute(sql)

            def fetchone(self):
                return cursor.fetchone()

        follower._versionCursor = Counting()
        for _ in range(3):
            self.cached(["a"])
        self.assertEqual(statements, [])
        put = yield self.other.put("a", b'{"v": 2}')
        self.assertEqual(self.readNow(["a"]).results[0].etag, put.etag)
        self.assertEqual(statements, ["PRAGMA data_version"])
        self.cached(["a"])
        self.assertEqual(len(statements), 1)


class PrunedLogTests(_Stores):
    """The changes the cache would follow were pruned: it starts again."""

    retain = 1

    @inlineCallbacks
    def test_prunedLog(self):
        yield self.store.put("a", b'{"v": 1}')
        yield self.store.put("b", b'{"v": 1}')
        self.readNow(["a", "b"])
        put = yield self.other.put("a", b'{"v": 2}')
        for n in range(3):
            yield self.other.put(f"x{n}", b"{}")
        found = self.readNow(["b", "a"])
        self.assertEqual([d.etag for d in found.results], [2, put.etag])


class OtherProcessTests(_Stores):
    """A commit by another process is seen by the next read here."""

    @inlineCallbacks
    def test_otherProcess(self):
        yield self.store.put("p/0", b'{"old": true}')
        yield self.store.put("o", b'{"R": "p/0"}')
        self.readNow(["p/0"])
        self.readNow(["o"], "R")
        self.cached(["o"], "R")
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "tests.changelog_writer", f"sqlite:{self.path}", "1", "p/", "1"],
            env=dict(os.environ, PYTHONPATH=ROOT),
            path=ROOT,
        )
        self.assertEqual(code, 0, err)
        (etag,) = json.loads(out)
        found = self.readNow(["o", "p/0"], "R")
        self.assertEqual((found.results[1].body, found.results[1].etag), (b'{"n": 0}', etag))
        self.assertEqual([(d.body, d.etag) for d in found.includes], [(b'{"n": 0}', etag)])
        self.assertEqual(found.etag, etag)


class GetCommandTests(_Stores):
    """GET answers at once from the cache, with the same bytes and bounds."""

    class Request:
        sequence = "1"

        def __init__(self, args, include=None):
            self.args = tuple(args)
            self.headers = {} if include is None else {"include": include}

        def header(self, name):
            return self.headers.get(name)

    class Context:
        class grant:
            @staticmethod
            def filterIds():
                return None

    @inlineCallbacks
    def test_immediateReply(self):
        yield self.store.put("o", b'{"R": "r"}')
        yield self.store.put("r", b'{"v": 1}')
        ctx = self.Context()
        ctx.store = self.store
        documents.get(ctx, self.Request(["o", "nope"], "R"))
        hits = self.cache.hits
        result = documents.get(ctx, self.Request(["o", "nope"], "R"))
        self.assertEqual(self.cache.hits, hits + 1)
        self.assertIsInstance(result, Result)
        self.assertEqual(
            result.body, b'{"Results": [{"R": "r"}, null], "Includes": {"r": {"v": 1}}}'
        )
        self.assertEqual(result.headers, (("Etag", "2"), ("Etags", "1,0")))

    @inlineCallbacks
    def test_boundsHoldFromTheCache(self):
        """An Include naming too many documents fails also when all are cached."""
        self.patch(sqlite_inline, "INLINE_MAX_STEPS", 10**9)
        from proto.commands import include

        self.patch(include, "MAX_INCLUDED", 3)
        yield self.store.put("o", b'{"R": ["a", "b", "c", "d"]}')
        ctx = self.Context()
        ctx.store = self.store
        self.readNow(["o"])
        error = self.assertRaises(CommandError, documents.get, ctx, self.Request(["o"], "R"))
        self.assertIn("Include too large", error.reason)


class ReplyAssemblyTests(SynchronousTestCase):
    """The GET reply's shortcuts give the same bytes as the general path."""

    @given(st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s and " " not in s))
    def test_idKeyBytes(self, id: str) -> None:
        try:
            checkId(id)
        except InvalidIdError:
            return
        self.assertEqual(documents._idKeyBytes(id), documents._jsonBytes(id) + b": ")

    def test_idKeyBytesEscapes(self) -> None:
        for id in ('a"b', "a\\b", "caf\u00e9", "a/1", "a\x01b", "a\x7fb", "a b"):
            self.assertEqual(documents._idKeyBytes(id), documents._jsonBytes(id) + b": ")

    def test_parsedBody(self) -> None:
        from proto.commands import include

        self.patch(include, "_parsed", BoundedMemo(100, include.PARSED_MAX_BODY))
        bodies = [json.dumps({"n": n, "pad": "x" * 30}).encode() for n in range(5)]
        for body in bodies * 2:
            self.assertEqual(include.parsedBody(body), json.loads(body))
        self.assertLessEqual(include._parsed.size, 100)
        self.assertLessEqual(sum(map(len, include._parsed.entries)), 100)
        self.assertTrue(include._parsed.entries)


class SnapshotMemoTests(_Stores):
    """
    While nothing is committed, the same read from the cache gives the same
    snapshot (L{proto.store.cache.SnapshotMemo}) and GET the same reply; any
    commit ends that.
    """

    @inlineCallbacks
    def test_sameReadSameSnapshot(self):
        yield self.store.put("a", b'{"Ref": "r"}')
        yield self.store.put("r", b'{"v": 1}')
        self.readNow(["a"], "Ref")  # fills the cache
        first = self.cached(["a"], "Ref")
        self.assertIs(self.cached(["A"], "Ref"), first)
        self.assertIsNot(self.cached(["a"]), first)  # another read
        put = yield self.other.put("r", b'{"v": 2}')
        found = self.readNow(["a"], "Ref")
        self.assertIsNot(found, first)
        self.assertEqual((found.includes[0].body, found.etag), (b'{"v": 2}', put.etag))

    @inlineCallbacks
    def test_filterIsPartOfTheKey(self):
        """Two grants' filters over the same Include: each its own snapshot."""
        yield self.store.put("a", b'{"Ref": ["x/1", "y/1"]}')
        yield self.store.put("x/1", b"{}")
        yield self.store.put("y/1", b"{}")

        def read(allowed):
            found = self.store.readNow(["a"], IncludeWalk(parseInclude("Ref"), allowed))
            return [doc.id for doc in found.includes]

        onlyX = lambda id: id.startswith("x/")  # noqa: E731
        onlyY = lambda id: id.startswith("y/")  # noqa: E731
        for attempt in range(2):
            self.assertEqual(read(None), ["x/1", "y/1"])
            self.assertEqual(read(onlyX), ["x/1"])
            self.assertEqual(read(onlyY), ["y/1"])

    @inlineCallbacks
    def test_otherCallablesNotRemembered(self):
        """A references callable without a memoKey runs on every read."""
        yield self.store.put("a", b'{"Ref": "a"}')
        calls = []

        def references(results):
            calls.append(1)
            return ["a"]

        for attempt in range(3):
            found = self.store.readNow(["a"], references)
            self.assertNotIsInstance(found, defer.Deferred)
        self.assertEqual(len(calls), 3)

    def test_bounds(self) -> None:
        self.patch(cache, "SNAPSHOT_MEMO_ENTRIES", 3)
        memo = cache.SnapshotMemo()
        memo.clear(1)
        big = Document("b", 1, b"x" * (cache.SNAPSHOT_MEMO_MAX_SNAPSHOT_BYTES + 1))
        memo.put(("b",), sqlite_reads.Snapshot([big], [], 1))
        self.assertIsNone(memo.get(("b",)))
        for n in range(5):
            memo.put((f"k{n}",), sqlite_reads.Snapshot([None], [], 1))
        self.assertLessEqual(len(memo.entries), 3)
        self.assertIsNotNone(memo.get(("k4",)))

    def test_replyRemembered(self) -> None:
        """GET's reply is encoded once per snapshot; equal snapshots, equal replies."""
        snapshot = sqlite_reads.Snapshot([Document("a", 3, b'{"v": 1}')], [], 9)
        first = documents._getResult(snapshot)
        self.assertIs(documents._getResult(snapshot), first)
        again = documents._getResult(sqlite_reads.Snapshot([Document("a", 3, b'{"v": 1}')], [], 9))
        self.assertEqual(again, first)
        self.assertEqual(first.headers, (("Etag", "9"), ("Etags", "3")))

