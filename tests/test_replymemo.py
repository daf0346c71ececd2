"""
GET's replies kept by request until the next commit (issue 13):
L{proto.commands.documents.get} with the SQLite store's C{remembered} /
C{remember} (L{proto.store.sqlite_reads.ReadPath.remembered}). The same
request is answered with the same encoded reply while nothing is
committed, and never with one older than the last commit (anyone's:
another store on the same file), nor across a write of ours not yet
finished (read-your-writes, C{shared/PROTOCOL.md} section 8).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks

from proto.commands import documents
from proto.commands.base import CommandError, EncodedResult

from tests.test_cache import GetCommandTests, _Stores


class _Context:
    """The part of a connection GET uses: the store and the grant's filter."""

    def __init__(self, store, allowed=None):
        self.store = store
        self._allowed = allowed
        ctx = self

        class grant:
            @staticmethod
            def filterIds():
                return ctx._allowed

        self.grant = grant


class Request(GetCommandTests.Request):
    command = "GET"


class ReplyMemoTests(_Stores):
    def get(self, ids, include=None, allowed=None):
        """GET's result, which must come at once (not a Deferred)."""
        result = documents.get(_Context(self.store, allowed), Request(ids, include))
        self.assertIsInstance(result, EncodedResult)
        return result

    @inlineCallbacks
    def test_sameRequestSameReply(self):
        """The second GET gets the first one's reply object, and counts as a cache hit."""
        yield self.store.put("o", b'{"R": "r"}')
        yield self.store.put("r", b'{"v": 1}')
        for include in (None, "R"):
            first = self.get(["o"], include)
            hits = self.cache.hits
            self.assertIs(self.get(["o"], include), first)
            self.assertEqual(self.cache.hits, hits + 1)
        self.assertNotEqual(self.get(["o"]).body, self.get(["o"], "R").body)

    @inlineCallbacks
    def test_anotherCommitEndsIt(self):
        """A commit through another connection to the file: the next GET reads it."""
        yield self.store.put("o", b'{"R": "r"}')
        yield self.store.put("r", b'{"v": 1}')
        first = self.get(["o"], "R")
        self.assertIs(self.get(["o"], "R"), first)
        version = yield self.other.put("r", b'{"v": 2}')
        again = self.get(["o"], "R")
        self.assertIn(b'"r": {"v": 2}', again.body)
        self.assertEqual(again.headers[0], ("Etag", str(version.etag)))
        # A commit that touches none of the documents ends it too (the etag moved).
        version = yield self.other.put("elsewhere", b"{}")
        self.assertEqual(self.get(["o"], "R").headers[0], ("Etag", str(version.etag)))

    @inlineCallbacks
    def test_notAcrossOurUnfinishedWrite(self):
        """A GET behind a PUT of ours not finished yet waits for it (read-your-writes)."""
        yield self.store.put("o", b'{"v": 1}')
        self.get(["o"])
        self.get(["o"])
        writing = self.store.put("o", b'{"v": 2}')
        found = documents.get(_Context(self.store), Request(["o"]))
        self.assertIsInstance(found, defer.Deferred)
        yield writing
        result = yield found
        self.assertEqual(result.body, b'{"Results": [{"v": 2}], "Includes": {}}')
        self.assertEqual(self.get(["o"]).body, result.body)

    @inlineCallbacks
    def test_filterIsPartOfTheKey(self):
        """Two grants' filters of included ids: each gets its own reply."""
        yield self.store.put("a", b'{"Ref": ["x/1", "y/1"]}')
        yield self.store.put("x/1", b"{}")
        yield self.store.put("y/1", b"{}")
        onlyX = lambda id: id.startswith("x/")  # noqa: E731
        onlyY = lambda id: id.startswith("y/")  # noqa: E731
        for attempt in range(2):
            self.assertIn(b'"Includes": {"x/1": {}, "y/1": {}}', self.get(["a"], "Ref").body)
            self.assertIn(b'"Includes": {"x/1": {}}', self.get(["a"], "Ref", onlyX).body)
            self.assertIn(b'"Includes": {"y/1": {}}', self.get(["a"], "Ref", onlyY).body)

    @inlineCallbacks
    def test_idsAsSent(self):
        """Ids differing in case are two requests, each answered with the stored id."""
        yield self.store.put("Doc", b'{"R": "Doc"}')
        for attempt in range(2):
            for ids in (["doc"], ["DOC"]):
                self.assertIn(b'"Doc": {"R": "Doc"}', self.get(ids, "R").body)

    @inlineCallbacks
    def test_refusalsNotRemembered(self):
        """A request refused once is refused again, also after the same ids succeeded."""
        yield self.store.put("o", b"{}")
        ctx = _Context(self.store)
        for attempt in range(2):
            self.assertRaises(CommandError, documents.get, ctx, Request(["o", "a b"]))
            self.assertRaises(CommandError, documents.get, ctx, Request(["o"], "R,"))
            self.assertRaises(CommandError, documents.get, ctx, Request([]))
            self.get(["o"])
