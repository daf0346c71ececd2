"""
Request bodies must keep arriving, and partial bodies of all connections
together hold a bounded amount of memory (issue 12, item 2).
"""

from __future__ import annotations

from twisted.trial import unittest

from proto.commands import builtin
from proto.server import ServerConfig
from tests.support import connectInMemory, makeFactory, realTimeClock, request


def kinds(frames):
    return [(f.kind, f.sequence) for f in frames]


class BodyTimeoutTests(unittest.TestCase):
    def connect(self, **config):
        config.setdefault("idleTimeout", 1000)
        self.clock = realTimeClock()
        self.factory = makeFactory(self.clock, ServerConfig(**config), registry=builtin.registry)
        return connectInMemory(self.factory)

    def assertBodyTimedOut(self, conn, sequence):
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("ERR", sequence)])
        self.assertIn("no byte of the 100-byte body came for 10 s", frames[0].reason)
        self.assertTrue(conn.closed)
        self.assertEqual(self.factory.pendingBodyBytes, 0)

    def test_bodyThatNeverComes(self):
        conn = self.connect()
        conn.send(b"ECHO x\r\nSequence: b\r\nSize: 100\r\n\r\n")
        conn.advance(9.9)
        self.assertFalse(conn.closed)
        conn.advance(0.2)
        self.assertBodyTimedOut(conn, "b")

    def test_bodyThatStops(self):
        conn = self.connect()
        conn.send(b"ECHO x\r\nSequence: b\r\nSize: 100\r\n\r\nx")
        conn.advance(5)
        conn.send(b"yz")
        conn.advance(9.9)
        self.assertFalse(conn.closed, "a byte came 9.9 s ago")
        conn.advance(0.2)
        self.assertBodyTimedOut(conn, "b")

    def test_slowButSteadyBodyIsRead(self):
        conn = self.connect()
        conn.send(b"ECHO done\r\nSequence: b\r\nSize: 6\r\n\r\n")
        for byte in b"abcdef":
            conn.advance(8)
            conn.send(bytes([byte]))
        self.assertEqual([(f.kind, f.body) for f in conn.frames()], [("OK", b"done")])
        conn.advance(30)
        self.assertFalse(conn.closed)
        self.assertEqual(self.factory.pendingBodyBytes, 0)

    def test_repliesBeforeTheStalledBodyAreSent(self):
        conn = self.connect()
        conn.send(request("SLEEP", "3", sequence="s") + b"ECHO x\r\nSequence: b\r\nSize: 100\r\n\r\n")
        conn.advance(10.1)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("OK", "s"), ("ERR", "b")])
        self.assertTrue(conn.closed)


class PendingBodyBudgetTests(unittest.TestCase):
    def setUp(self):
        self.clock = realTimeClock()
        self.factory = makeFactory(
            self.clock, ServerConfig(maxPendingBodies=1000, idleTimeout=1000), registry=builtin.registry
        )

    def test_bodiesPastTheBudgetAreRefusedNotHeld(self):
        first, second = connectInMemory(self.factory), connectInMemory(self.factory)
        first.send(b"ECHO one\r\nSequence: 1\r\nSize: 600\r\n\r\n" + b"a" * 10)
        self.assertEqual(self.factory.pendingBodyBytes, 600)
        second.send(b"ECHO two\r\nSequence: 2\r\nSize: 600\r\n\r\n" + b"b" * 10)
        self.assertEqual(self.factory.pendingBodyBytes, 600, "the second body did not fit")
        self.assertEqual(second.server._parser.buffered, 0, "and its bytes are not kept")
        second.send(b"b" * 590 + request("PING", sequence="3"))
        frames = second.frames()
        self.assertEqual(kinds(frames), [("ERR", "2"), ("OK", "3")])
        self.assertIn("Server busy", frames[0].reason)
        self.assertFalse(second.closed)
        first.send(b"a" * 590)
        self.assertEqual([(f.kind, f.body) for f in first.frames()], [("OK", b"one")])
        self.assertEqual(self.factory.pendingBodyBytes, 0)
        # With the budget free again, a body is taken.
        second.send(b"ECHO again\r\nSequence: 4\r\nSize: 900\r\n\r\n" + b"c" * 100)
        self.assertEqual(self.factory.pendingBodyBytes, 900)
        second.send(b"c" * 800)
        self.assertEqual([(f.kind, f.body) for f in second.frames()], [("OK", b"again")])

    def test_closingGivesTheReservationBack(self):
        conn = connectInMemory(self.factory)
        conn.send(b"ECHO one\r\nSequence: 1\r\nSize: 600\r\n\r\n" + b"a" * 10)
        self.assertEqual(self.factory.pendingBodyBytes, 600)
        conn.server.transport.abortConnection()
        conn.flush()
        self.assertEqual(self.factory.pendingBodyBytes, 0)

    def test_wholeBodiesReserveNothing(self):
        """A body that came with its head never waits, so it needs no budget."""
        conn = connectInMemory(self.factory)
        conn.send(request("ECHO", "x", body=b"z" * 2000))
        self.assertEqual([f.kind for f in conn.frames()], ["OK"])
        self.assertEqual(self.factory.pendingBodyBytes, 0)


class BodyTimeoutWhilePausedTests(unittest.TestCase):
    def test_stoppedReadingDoesNotCount(self):
        """While we stop reading (the client does not read our replies), its body cannot come."""
        clock = realTimeClock()
        factory = makeFactory(clock, ServerConfig(idleTimeout=1000), registry=builtin.registry)
        conn = connectInMemory(factory)
        conn.send(b"ECHO x\r\nSequence: b\r\nSize: 100\r\n\r\nx")
        conn.advance(5)
        conn.server.pauseProducing()  # what the transport does when its buffer is full
        conn.advance(60)
        self.assertFalse(conn.closed)
        conn.server.resumeProducing()
        conn.advance(9.9)
        self.assertFalse(conn.closed, "the body timeout starts again when reading resumes")
        conn.advance(0.2)
        self.assertEqual(kinds(conn.frames()), [("ERR", "b")])
        self.assertTrue(conn.closed)

    def test_optionsAndEnvironment(self):
        from proto.deploy import optionsFromEnvironment

        config = optionsFromEnvironment(
            {"PROTO_BODY_TIMEOUT": "2.5", "PROTO_MAX_PENDING_BODIES": str(64 * 2**20)}
        ).config()
        self.assertEqual((config.bodyTimeout, config.maxPendingBodies), (2.5, 64 * 2**20))
