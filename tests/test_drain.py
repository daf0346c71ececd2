"""
Every request gets exactly one reply, also when the connection ends
(PROTOCOL.md sections 4 and 5; issue 12, item 3): after a framing error,
a QUIT, a revocation or a server-wide drain, the requests already accepted
finish and are answered before the final frame and the close.
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from proto.admission import AllowList
from proto.server import ServerConfig
from tests.support import connectInMemory, makeFactory, realTimeClock, request, startStoreServer

#: A head that breaks the framing: a header line without a colon.
MALFORMED = b"PING\r\nSequence: bad\r\nno colon here\r\n\r\n"


def kinds(frames):
    return [(f.kind, f.sequence) for f in frames]


class DrainTests(unittest.TestCase):
    def connect(self, **config):
        self.clock = realTimeClock()
        # Every built-in command (REMIND among them); no store is needed.
        self.factory = makeFactory(self.clock, ServerConfig(**config))
        return connectInMemory(self.factory)

    def test_fatalErrorWaitsForSleepInFlight(self):
        """SLEEP in flight, then a malformed head: SLEEP's reply, then the ERR."""
        conn = self.connect()
        conn.send(request("SLEEP", "2", sequence="s") + MALFORMED + request("PING", sequence="after"))
        self.assertEqual(conn.frames(), [])
        self.assertFalse(conn.closed, "the SLEEP accepted before the error is still owed a reply")
        conn.advance(2)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("OK", "s"), ("ERR", "bad")])
        self.assertIn("Malformed header", frames[1].reason)
        self.assertTrue(conn.closed)

    def test_inputAfterTheErrorIsNeverRun(self):
        conn = self.connect()
        conn.send(request("SLEEP", "1", sequence="s") + MALFORMED)
        conn.send(request("PING", sequence="late"))
        conn.advance(1)
        self.assertEqual(kinds(conn.frames()), [("OK", "s"), ("ERR", "bad")])
        self.assertNotIn(b"late", conn.client.raw)

    def test_requestTimeoutStillApplies(self):
        conn = self.connect()
        conn.send(b"SLEEP 50\r\nSequence: s\r\nTimeout: 3\r\n\r\n" + MALFORMED)
        conn.advance(3)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("ERR", "s"), ("ERR", "bad")])
        self.assertTrue(frames[0].reason.startswith("Timeout"))
        self.assertTrue(conn.closed)

    def test_graceBoundsTheWait(self):
        """A request that outlasts the grace is cancelled and answered, then the ERR."""
        conn = self.connect(drainGrace=5)
        conn.send(request("SLEEP", "100", sequence="s") + MALFORMED)
        conn.advance(4.9)
        self.assertEqual(conn.frames(), [])
        conn.advance(0.2)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("ERR", "s"), ("ERR", "bad")])
        self.assertIn("Cancelled: the connection is closing", frames[0].reason)
        self.assertTrue(conn.closed)
        conn.advance(10)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_subscriptionsEndAtOnce(self):
        """A pending REMIND is no reply: it does not hold the close."""
        conn = self.connect()
        conn.send(request("REMIND", "30", "hi", sequence="r") + MALFORMED)
        self.assertEqual(kinds(conn.frames()), [("OK", "r"), ("ERR", "bad")])
        self.assertTrue(conn.closed)
        conn.advance(31)
        self.assertEqual(conn.frames(), [])

    def test_revocationWaitsForRequestsInFlight(self):
        conn = self.connect()
        conn.send(request("SLEEP", "1", sequence="s"))
        self.factory.allowListChanged(AllowList.parse(""))
        conn.flush()
        self.assertFalse(conn.closed)
        conn.send(request("PING", sequence="late"))
        conn.advance(1)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("OK", "s"), ("ERR", None)])
        self.assertIn("removed from the allow-list", frames[1].reason)
        self.assertTrue(conn.closed)

    def test_quitWaitsWithoutGrace(self):
        """QUIT waits without a grace; each request keeps its own end."""
        conn = self.connect(drainGrace=1)
        conn.send(request("SLEEP", "30", sequence="s") + request("QUIT", sequence="q"))
        conn.advance(29)
        self.assertEqual(kinds(conn.frames()), [("OK", "q")])
        self.assertFalse(conn.closed)
        conn.advance(1)
        self.assertEqual(kinds(conn.frames()), [("OK", "s")])
        self.assertTrue(conn.closed)

    def test_drainAll(self):
        """
        The server-wide drain: idle connections get the final ERR at once,
        busy ones first get their replies; new connections are refused;
        the Deferred fires when no connection is left.
        """
        idle = self.connect()
        busy = connectInMemory(self.factory)
        busy.send(request("SLEEP", "2", sequence="s"))
        done = self.factory.drainAll("Server shutting down", grace=10)
        idle.flush()
        busy.flush()
        self.assertEqual(kinds(idle.frames()), [("ERR", None)])
        self.assertTrue(idle.closed)
        self.assertNoResult(done)
        late = connectInMemory(self.factory)
        self.assertIn(b"Server shutting down", late.client.raw)
        self.assertTrue(late.closed)
        busy.advance(2)
        frames = busy.frames()
        self.assertEqual(kinds(frames), [("OK", "s"), ("ERR", None)])
        self.assertEqual(frames[1].reason, "Server shutting down")
        self.assertTrue(busy.closed)
        self.assertIsNone(self.successResultOf(done))

    def test_drainAllShorterGraceCancels(self):
        conn = self.connect()
        conn.send(request("SLEEP", "100", sequence="s") + request("QUIT", sequence="q"))
        done = self.factory.drainAll("Server shutting down", grace=3)
        conn.advance(3)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("OK", "q"), ("ERR", "s")])
        self.assertTrue(conn.closed)
        self.successResultOf(done)

    def test_drainAllWithoutConnections(self):
        self.connect().server.transport.loseConnection()
        self.factory = makeFactory(realTimeClock())
        self.successResultOf(self.factory.drainAll("bye", grace=1))


class DrainWithStoreTests(unittest.TestCase):
    """The real store behind it: a write is committed iff it was acknowledged."""

    def setUp(self) -> defer.Deferred:
        return startStoreServer(self)

    @inlineCallbacks
    def waitForClose(self, conn):
        from twisted.internet import reactor

        for _ in range(2000):
            if conn.closed:
                return
            yield deferLater(reactor, 0.005)
            conn.flush()
        self.fail("the connection did not close")

    @inlineCallbacks
    def test_pipelinedPutThenMalformed(self):
        conn = connectInMemory(self.factory)
        conn.send(
            request("PUT", "d/1", sequence="put", body=b'{"v": 1}')
            + request("GET", "d/0", sequence="get")
            + request("DELETE", "d/9", sequence="del")
            + MALFORMED
        )
        yield self.waitForClose(conn)
        frames = conn.frames()
        self.assertEqual(len(frames), 4, frames)
        self.assertEqual(sorted(kinds(frames[:3])), [("OK", "del"), ("OK", "get"), ("OK", "put")])
        self.assertEqual(kinds(frames[3:]), [("ERR", "bad")])
        reply = {f.sequence: f for f in frames}["put"]
        self.assertEqual(json.loads(reply.body)["Etag"], 1)
        [stored] = yield self.store.get(["d/1"])
        self.assertIsNotNone(stored, "acknowledged, so committed")
        self.assertEqual(json.loads(stored.body), {"v": 1})
