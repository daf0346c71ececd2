"""
The states of one server connection, as one transition table.

Why a table: the life of a connection decides which input is executed
(nothing before admission, PROTOCOL.md section 2; nothing after QUIT or a
framing error, sections 5 and 6) and which output still goes out (every
accepted request gets exactly one reply, section 4). When states were
strings assigned in many places, nothing stopped a close from "going
back" to ready. Here every move goes through L{advance}, which knows the
only moves there are and raises L{IllegalTransition} for any other, so a
slip fails loudly in the tests instead of serving input on a closing
connection::

    handshaking --(certificate admitted)--> ready --(QUIT, framing error,
         |                                    |      revocation, shutdown,
         |                                    v      idle timeout)
         |                                 draining --(every accepted
         |                                    |        request answered)
         +--(refused, handshake timeout)--> closing <--+
                                              |
         (connection lost, from any state) -> closed

The states are plain strings, compared by identity (C{state is READY}) on
the hot path; only their changes pay for the table look-up.
"""

from __future__ import annotations

from typing import Final, Mapping

HANDSHAKING: Final = "handshaking"
READY: Final = "ready"
DRAINING: Final = "draining"
CLOSING: Final = "closing"
CLOSED: Final = "closed"

#: Every state a connection may move to from each state. C{closed} (the
#: transport is gone) can come at any time before it; nothing leaves it.
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    HANDSHAKING: frozenset({READY, CLOSING, CLOSED}),
    READY: frozenset({DRAINING, CLOSING, CLOSED}),
    DRAINING: frozenset({CLOSING, CLOSED}),
    CLOSING: frozenset({CLOSED}),
    CLOSED: frozenset(),
}

#: The states in which the connection was admitted and is still open:
#: replies and pushes are written only then.
OPEN: Final = frozenset({READY, DRAINING})

#: The states in which the connection is going away: nothing more is
#: started, and timers other than the abort timer are stopped.
ENDING: Final = frozenset({CLOSING, CLOSED})


class IllegalTransition(RuntimeError):
    """A connection was asked to move between states that are not linked."""

    def __init__(self, current: str, new: str) -> None:
        super().__init__(f"illegal connection state change: {current} -> {new}")
        self.current = current
        self.new = new


def advance(current: str, new: str) -> str:
    """
    The state after moving from C{current} to C{new}: C{new}, if the table
    allows that move.

    @raise IllegalTransition: it does not (a bug in the caller).
    """
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(current, new)
    return new
