"""
Flow control of one connection, as pure decisions (no transport here).

Why: a client that pipelines requests and never reads its replies must
not make the server buffer without bound (PROTOCOL.md section 3: clients
may pipeline; section 4: every request still gets its reply). So the
server stops reading a connection while

  - the transport holds more unsent output than its high-water mark (the
    transport, our push producer's consumer, calls C{pauseProducing});
  - or C{maxInflight} requests of that connection are running (commands
    whose reply is a Deferred): reading resumes once fewer than half of
    that remain, so that a burst does not flap the transport on every
    reply.

Each reason is kept apart, so that one resume cannot undo the other's
pause. Like h2's C{WindowManager}, L{FlowControl} only decides: the
connection asks it, and itself pauses or resumes the transport, and stops
the head and body timers while paused (a stall caused by us is not the
client's delay). Its tests need no transport (C{tests/test_flowcontrol.py}).
"""

from __future__ import annotations

from typing import Final

#: Pause reasons (bits): the transport's output is over its high-water
#: mark; too many requests are in flight.
TRANSPORT: Final = 1
INFLIGHT: Final = 2


class FlowControl:
    """
    Why one connection's reading is paused, and when to pause or resume
    it for the requests in flight.

    @ivar reasons: the pause reasons now in force (bits; 0: reading).
    @ivar high: pause at this many requests in flight.
    @ivar low: resume (for that reason) below this many.
    """

    __slots__ = ("reasons", "high", "low")

    def __init__(self, maxInflight: int) -> None:
        self.reasons = 0
        self.high = maxInflight
        self.low = maxInflight // 2

    def __repr__(self) -> str:
        return f"<FlowControl reasons={self.reasons} high={self.high} low={self.low}>"

    @property
    def paused(self) -> bool:
        """Whether reading is paused, for any reason."""
        return self.reasons != 0

    @property
    def congested(self) -> bool:
        """The client does not read its output fast enough (the transport paused us)."""
        return self.reasons & TRANSPORT != 0

    def pause(self, reason: int) -> bool:
        """
        Note a pause for C{reason}. Returns whether reading must stop now
        (it ran before).
        """
        first = self.reasons == 0
        self.reasons |= reason
        return first

    def resume(self, reason: int) -> bool:
        """
        Lift C{reason}'s pause. Returns whether reading must start again
        now (that was the last reason).
        """
        if not self.reasons & reason:
            return False
        self.reasons &= ~reason
        return self.reasons == 0

    def clear(self) -> bool:
        """Forget every reason (closing). Returns whether reading was paused."""
        was = self.reasons != 0
        self.reasons = 0
        return was

    def tooManyInflight(self, inflight: int) -> bool:
        """A request was added: whether C{inflight} now calls for a pause."""
        return inflight >= self.high

    def fewEnoughInflight(self, inflight: int) -> bool:
        """A request finished: whether C{inflight} lifts the in-flight pause."""
        return self.reasons & INFLIGHT != 0 and inflight < self.low
