"""
L{proto.timers.Timers}: the connection's timeouts, driven by a fake clock.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from proto.timers import ABORT, BODY, DRAIN, HANDSHAKE, HEAD, IDLE, NAMES, SHUTDOWN, Timers


class TimersTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.timers = Timers(self.clock)
        self.fired = []

    def note(self, *what):
        self.fired.append(what)

    def test_kindsAreDistinct(self):
        kinds = [HANDSHAKE, HEAD, IDLE, BODY, DRAIN, SHUTDOWN, ABORT]
        self.assertEqual(sorted(kinds), list(range(len(NAMES))))

    def test_fires_once_with_arguments(self):
        self.timers.start(HEAD, 5, self.note, "head", 1)
        self.assertTrue(self.timers.running(HEAD))
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [("head", 1)])
        self.assertFalse(self.timers.running(HEAD))
        self.clock.advance(100)
        self.assertEqual(self.fired, [("head", 1)])

    def test_notRunningWhileItsCallbackRuns(self):
        """A callback may start its own timer again (a re-check)."""
        seen = []

        def again():
            seen.append(self.timers.running(IDLE))
            if len(seen) < 3:
                self.timers.start(IDLE, 1, again)

        self.timers.start(IDLE, 1, again)
        self.clock.pump([1, 1, 1, 1])
        self.assertEqual(seen, [False, False, False])
        self.assertFalse(self.timers.running(IDLE))

    def test_startReplaces(self):
        self.timers.start(BODY, 5, self.note, "first")
        self.timers.start(BODY, 10, self.note, "second")
        self.clock.advance(5)
        self.assertEqual(self.fired, [])
        self.clock.advance(5)
        self.assertEqual(self.fired, [("second",)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self):
        self.timers.start(IDLE, 5, self.note, "idle")
        self.timers.stop(IDLE)
        self.timers.stop(IDLE)  # twice, and one never started: no error
        self.timers.stop(HEAD)
        self.assertFalse(self.timers.running(IDLE))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.fired, [])

    def test_stopAllKeeps(self):
        for kind in (HEAD, IDLE, BODY, ABORT):
            self.timers.start(kind, 5, self.note, NAMES[kind])
        self.timers.stopAll(keep=ABORT)
        self.assertEqual(
            [k for k in range(len(NAMES)) if self.timers.running(k)], [ABORT]
        )
        self.clock.advance(5)
        self.assertEqual(self.fired, [("abort",)])
        self.timers.start(HEAD, 1, self.note, "head")
        self.timers.stopAll()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline(self):
        self.assertIsNone(self.timers.deadline(DRAIN))
        self.clock.advance(100)
        self.timers.start(DRAIN, 7, self.note)
        self.assertEqual(self.timers.deadline(DRAIN), 107)
        self.clock.advance(7)
        self.assertIsNone(self.timers.deadline(DRAIN))

    def test_moveReusesTheRunningCall(self):
        """
        The handshake timer becomes the idle timer: the same DelayedCall,
        reset, so no cancelled call waits in the reactor's heap.
        """
        self.timers.start(HANDSHAKE, 10, self.note, "handshake")
        [call] = self.clock.getDelayedCalls()
        self.clock.advance(3)
        self.timers.move(HANDSHAKE, IDLE, 300, lambda: self.note("idle"))
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.assertFalse(self.timers.running(HANDSHAKE))
        self.assertTrue(self.timers.running(IDLE))
        self.assertEqual(self.timers.deadline(IDLE), 303)
        self.clock.advance(299.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [("idle",)])
        self.assertFalse(self.timers.running(IDLE))

    def test_moveSooner(self):
        self.timers.start(HANDSHAKE, 10, self.note, "handshake")
        self.timers.move(HANDSHAKE, IDLE, 1, lambda: self.note("idle"))
        self.clock.advance(1)
        self.assertEqual(self.fired, [("idle",)])
        self.clock.advance(20)
        self.assertEqual(self.fired, [("idle",)])

    def test_moveWhenNotRunningStarts(self):
        self.timers.move(HANDSHAKE, IDLE, 2, lambda: self.note("idle"))
        self.clock.advance(2)
        self.assertEqual(self.fired, [("idle",)])

    def test_moveReplacesTheTarget(self):
        self.timers.start(IDLE, 1, self.note, "old idle")
        self.timers.start(HANDSHAKE, 10, self.note, "handshake")
        self.timers.move(HANDSHAKE, IDLE, 5, lambda: self.note("idle"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(10)
        self.assertEqual(self.fired, [("idle",)])

    def test_repr(self):
        self.timers.start(HEAD, 1, self.note)
        self.assertEqual(repr(self.timers), "<Timers running=['head']>")

    def test_slots(self):
        """No per-instance dict: an idle connection pays for two slots and one list."""
        self.assertFalse(hasattr(self.timers, "__dict__"))


class RealReactorTests(unittest.TestCase):
    """L{Timers.move} on the real reactor: its heap re-sorts a reset call."""

    def test_moveLater(self):
        import time

        from twisted.internet import defer, reactor

        timers = Timers(reactor)
        fired = defer.Deferred()
        started = time.monotonic()
        timers.start(HANDSHAKE, 0.05, fired.errback, AssertionError("the old deadline fired"))
        timers.move(HANDSHAKE, IDLE, 0.3, lambda: fired.callback(time.monotonic() - started))
        self.assertEqual(len([c for c in reactor.getDelayedCalls() if c.func == timers._fire]), 1)

        def check(elapsed):
            # A loaded machine only makes it later: 0.3 s is a lower bound.
            self.assertGreaterEqual(elapsed, 0.29)
            self.assertFalse(timers.running(IDLE))

        return fired.addCallback(check)

    def test_moveSooner(self):
        from twisted.internet import defer, reactor

        timers = Timers(reactor)
        fired = defer.Deferred()
        timers.start(HANDSHAKE, 30, fired.errback, AssertionError("the old call ran"))
        timers.move(HANDSHAKE, IDLE, 0.01, lambda: fired.callback("idle"))
        return fired.addCallback(self.assertEqual, "idle")
