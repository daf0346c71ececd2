"""
L{proto.states}: the connection's transition table, and that the protocol
moves only along it.
"""

from twisted.trial import unittest

from proto import states
from proto.states import (
    CLOSED, CLOSING, DRAINING, HANDSHAKING, READY, TRANSITIONS, IllegalTransition, advance,
)
from tests.support import connectInMemory, makeFactory, realTimeClock, request


class TableTests(unittest.TestCase):
    def test_allowed(self):
        for current, allowed in TRANSITIONS.items():
            for new in allowed:
                self.assertIs(advance(current, new), new)

    def test_everythingElseIsIllegal(self):
        every = list(TRANSITIONS)
        illegal = [(a, b) for a in every for b in every if b not in TRANSITIONS[a]]
        # No state moves to itself, nothing goes back to handshaking or
        # ready, and nothing leaves closed.
        for a, b in illegal:
            with self.assertRaises(IllegalTransition) as caught:
                advance(a, b)
            self.assertEqual((caught.exception.current, caught.exception.new), (a, b))
            self.assertIn(f"{a} -> {b}", str(caught.exception))
        self.assertIn((READY, HANDSHAKING), illegal)
        self.assertIn((DRAINING, READY), illegal)
        self.assertIn((CLOSING, DRAINING), illegal)
        self.assertIn((CLOSED, CLOSING), illegal)
        self.assertIn((READY, READY), illegal)

    def test_closedFromAnywhere(self):
        for state in (HANDSHAKING, READY, DRAINING, CLOSING):
            self.assertIs(advance(state, CLOSED), CLOSED)

    def test_unknownState(self):
        with self.assertRaises(KeyError):
            advance("sleeping", READY)

    def test_groups(self):
        self.assertEqual(states.OPEN, {READY, DRAINING})
        self.assertEqual(states.ENDING, {CLOSING, CLOSED})


class ProtocolMovesTests(unittest.TestCase):
    """The protocol's own state changes go through the table."""

    def connect(self):
        clock = realTimeClock()
        return connectInMemory(makeFactory(clock), "default")

    def recordMoves(self):
        """Record every state a protocol enters, from its first move on."""
        from proto.protocol import GNPServerProtocol

        moves = []
        enter = GNPServerProtocol._enter

        def recording(protocol, state):
            enter(protocol, state)
            moves.append(protocol.state)

        self.patch(GNPServerProtocol, "_enter", recording)
        return moves

    def test_refused(self):
        """Section 2: a refused client never reaches ready."""
        from tests.support import Credentials

        moves = self.recordMoves()
        conn = connectInMemory(makeFactory(realTimeClock()), Credentials.get().stranger)
        self.assertTrue(conn.closed)
        self.assertEqual(moves, [CLOSING, CLOSED])

    def test_framingError(self):
        """Section 5: a framing error drains, then closes."""
        moves = self.recordMoves()
        conn = self.connect()
        conn.client.transport.write(b"PING\r\n\r\n")  # no Sequence
        conn.flush()
        self.assertTrue(conn.closed)
        self.assertEqual(moves, [READY, DRAINING, CLOSING, CLOSED])

    def test_lifeAlongTheTable(self):
        conn = self.connect()
        server = conn.server
        seen = [server.state]
        enter = server._enter

        def spy(state):
            enter(state)
            seen.append(server.state)

        server._enter = spy
        conn.client.transport.write(request("QUIT"))
        conn.flush()
        self.assertTrue(conn.closed)
        self.assertEqual(seen, [READY, DRAINING, CLOSING, CLOSED])

    def test_illegalMoveFailsLoudly(self):
        conn = self.connect()
        self.assertIs(conn.server.state, READY)
        with self.assertRaises(IllegalTransition):
            conn.server._enter(HANDSHAKING)
        self.assertIs(conn.server.state, READY, "an illegal move changes nothing")
