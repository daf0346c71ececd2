"""
Tests for following a WATCH across reconnects (L{proto.client.follow}) and
C{proto-cli WATCH --since --documents --follow}: real server on loopback,
real TLS, connections cut and watches dropped by the server.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from proto.client import BlockingClient, connect
from proto.client.follow import WatchFollower, followWatch, watchHeaders
from proto.commands import watch as watchModule
from proto.hub import ChangeHub
from proto.store.sqlite import SQLiteStore
from tests import support
from tests.test_changelog import waitUntil
from tests.test_cli import CLITestCase
from tests.test_client import ClientTestMixin


class FollowTestMixin(ClientTestMixin):
    retain = 100_000

    @defer.inlineCallbacks
    def startServer(self):
        self.hub = ChangeHub()
        self.store = SQLiteStore(
            os.path.join(self.mktemp(), "docs.sqlite3"), hub=self.hub, retainChanges=self.retain
        )
        self.addCleanup(self.store.close)
        yield self.store.start()
        self.factory = support.makeFactory(reactor, store=self.store, hub=self.hub)
        self.port = yield self.listen(self.factory, lambda: self.factory.connections)

    def put(self, *ids):
        return defer.gatherResults([self.store.put(id, b'{"v": 1}') for id in ids])

    def cutConnections(self):
        for proto in list(self.factory.admitted):
            proto.transport.abortConnection()

    def dropWatches(self):
        for proto in list(self.factory.admitted):
            for watch in list(watchModule._watches.get(proto, {}).values()):
                watch._drop("dropped by the test")


class TwistedFollowTests(FollowTestMixin, unittest.TestCase):
    """followWatch: resumes from the last etag delivered, surfaces Gap."""

    @defer.inlineCallbacks
    def follow(self, **kw):
        events, notes = [], []
        follower = followWatch(
            reactor,
            lambda: connect(reactor, f"tcp:127.0.0.1:{self.port}", self.tls()),
            "f/",
            events.append,
            onReconnect=notes.append,
            **kw,
        )
        self.addCleanup(follower.stop)
        yield follower.started
        return follower, events, notes

    @defer.inlineCallbacks
    def test_resumesAfterCutAndDrop(self):
        yield self.startServer()
        yield self.put("f/1", "x/1", "f/2")
        follower, events, notes = yield self.follow(since=0)
        yield waitUntil(lambda: len(events) == 2, what="catch-up")
        self.cutConnections()
        yield self.put("f/3", "f/4")
        yield waitUntil(lambda: len(events) == 4, what="events after the cut")
        self.dropWatches()
        yield self.put("f/5")
        yield waitUntil(lambda: len(events) == 5, what="events after the drop")
        self.assertEqual([e["Etag"] for e in events], [1, 3, 4, 5, 6])
        self.assertEqual([e["Id"] for e in events], ["f/1", "f/2", "f/3", "f/4", "f/5"])
        self.assertGreaterEqual(follower.reconnects, 2)
        self.assertTrue(any("resuming from etag" in note for note in notes), notes)
        self.assertEqual(follower.etag, 6)

    @defer.inlineCallbacks
    def test_documents(self):
        yield self.startServer()
        yield self.store.put("f/1", b'{"Boss": "b/1"}')
        yield self.store.put("b/1", b'{"N": 1}')
        follower, events, _ = yield self.follow(since=0, documents=True, include=["Boss"])
        yield waitUntil(lambda: events, what="push")
        self.assertEqual(events[0]["Document"], {"Boss": "b/1"})
        self.assertEqual(events[0]["Includes"], {"b/1": {"N": 1}})

    @defer.inlineCallbacks
    def test_refused(self):
        yield self.startServer()
        error = yield self.assertFailure(
            followWatch(
                reactor,
                lambda: connect(reactor, f"tcp:127.0.0.1:{self.port}", self.tls()),
                "p" * 600,
                lambda e: None,
            ).started,
            Exception,
        )
        self.assertIn("Invalid prefix", str(error))

    def test_badOptions(self):
        self.assertRaises(ValueError, watchHeaders, -1, False, None)
        self.assertRaises(ValueError, watchHeaders, None, False, "Boss")
        self.assertEqual(
            watchHeaders(5, True, ["A", "B"]),
            [("Since", "5"), ("Documents", "yes"), ("Include", "A,B")],
        )


class GapFollowTests(FollowTestMixin, unittest.TestCase):
    retain = 5

    @defer.inlineCallbacks
    def test_gapSurfaced(self):
        yield self.startServer()
        for n in range(30):
            yield self.store.put(f"f/{n}", b"{}")
        events = []
        follower = followWatch(
            reactor,
            lambda: connect(reactor, f"tcp:127.0.0.1:{self.port}", self.tls()),
            "f/",
            events.append,
            since=0,
        )
        self.addCleanup(follower.stop)
        yield waitUntil(lambda: events and events[-1].get("Etag") == 30, what="catch-up")
        self.assertEqual(events[0]["Type"], "Gap")
        self.assertEqual(events[0]["Since"], 0)
        self.assertEqual([e["Etag"] for e in events[1:]], list(range(events[0]["Etag"] + 1, 31)))


class BlockingFollowTests(FollowTestMixin, unittest.TestCase):
    """WatchFollower (blocking, run in a thread): resumes after a cut."""

    @defer.inlineCallbacks
    def test_resumesAfterCut(self):
        yield self.startServer()
        yield self.put("f/1")

        def opener():
            return BlockingClient(
                "127.0.0.1", self.port, certPath=self.certPath, keyPath=self.keyPath, pin=self.serverPin
            )

        follower = WatchFollower(opener, "f/", since=0, sleep=lambda s: None)
        self.addCleanup(deferToThread, follower.close)
        first = yield deferToThread(follower.next, 10.0)
        self.assertEqual(first["Etag"], 1)
        self.cutConnections()
        yield self.put("f/2")
        second = yield deferToThread(follower.next, 10.0)
        self.assertEqual((second["Id"], second["Etag"]), ("f/2", 2))
        self.assertEqual(follower.reconnects, 1)


class CLIWatchTests(CLITestCase):
    """proto-cli WATCH prefix --since N --documents --follow."""

    def test_sinceDocumentsFollow(self):
        for n in (1, 2):
            result = self.cli("PUT", f"c/{n}", "--body", json.dumps({"n": n}))
            self.assertEqual(result.returncode, 0, result.stderr)
        result = self.cli("WATCH", "c/", "--since", "1", "--documents", "--follow", "--count", "1")
        self.assertEqual(result.returncode, 0, result.stderr)
        push = json.loads(result.stdout.decode().split("] ", 1)[1])
        self.assertEqual(push, {"Id": "c/2", "Type": "Put", "Etag": 2, "Document": {"n": 2}})
        self.assertIn(b"watching c/ from etag 1", result.stderr)

    def test_oneShotSince(self):
        result = self.cli("WATCH", "c/", "--since", "x")
        self.assertNotEqual(result.returncode, 0)
        result = self.cli("WATCH", "c/", "-i")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"etag: 0", result.stdout.lower())
        # Without --follow no push is printed: it says so, not silence.
        self.assertIn(b"add --follow to print its pushes", result.stderr)

    def test_sinceImpliesFollow(self):
        """--since without --follow prints the catch-up (it used to print nothing)."""
        for n in (1, 2, 3):
            result = self.cli("PUT", f"c/{n}", "--body", "{}")
            self.assertEqual(result.returncode, 0, result.stderr)
        result = self.cli("WATCH", "c/", "--since", "1", "--count", "2", "--raw")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.decode().splitlines()
        pushes = [json.loads(line.split("] ", 1)[1]) for line in lines]
        self.assertEqual([(p["Id"], p["Etag"]) for p in pushes], [("c/2", 2), ("c/3", 3)])
        self.assertIn(b"watching c/ from etag 1", result.stderr)
        self.assertNotIn(b"add --follow", result.stderr)

    def test_impliesFollow(self):
        from types import SimpleNamespace

        from proto.client.watchcli import impliesFollow

        self.assertTrue(impliesFollow(SimpleNamespace(since=0, documents=False)))
        self.assertTrue(impliesFollow(SimpleNamespace(since=None, documents=True)))
        self.assertFalse(impliesFollow(SimpleNamespace(since=None, documents=False)))
