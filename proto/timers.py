"""
The timeouts of one connection, kept by one small helper.

A connection runs up to seven timers: the TLS handshake, the head of a
request (from its first byte: slowloris), idleness, a stalled request body,
the grace of a drain, the grace of a server shutdown, and the abort after
a close that TLS's close_notify never completes (see C{TWISTED_NOTES.md},
"loseConnection vs abortConnection over TLS"). They answer PROTOCOL.md
sections 2 (a client that never finishes its handshake is dropped), 3
(heads and bodies must keep coming) and 5 (a framing error closes, and the
close must happen even if the peer stops reading).

L{Timers} keeps them in one fixed table indexed by the constants below,
instead of one attribute per timer looked up by name. It uses only the
reactor's C{IReactorTime.callLater}, so tests drive it with
C{twisted.internet.task.Clock}. Each callback is called with the timer
already marked as not running, so it may start the same timer again.

Memory matters here (about 31 KiB per idle connection, target 32): the
helper has two slots and one small list, and L{Timers.move} re-files a
running C{DelayedCall} under another timer (the handshake timer becomes
the idle timer at admission) rather than cancelling it and making a new
one: a cancelled C{DelayedCall} stays in the reactor's heap, and in memory,
until its time would have come.
"""

from __future__ import annotations

from typing import Any, Callable, Final

from twisted.internet.interfaces import IDelayedCall, IReactorTime

HANDSHAKE: Final = 0
HEAD: Final = 1
IDLE: Final = 2
BODY: Final = 3
DRAIN: Final = 4
SHUTDOWN: Final = 5
ABORT: Final = 6

#: The timers' names, by index (for reprs and messages).
NAMES: Final = ("handshake", "head", "idle", "body", "drain", "shutdown", "abort")


class Timers:
    """
    The running timers of one connection: at most one per kind.

    @ivar calls: by kind, the pending C{DelayedCall} of each timer, or
        C{None} when it does not run (read it, never change it: the hot
        path tests C{calls[HEAD] is not None}, a method call cheaper).
    @ivar clock: the reactor (C{IReactorTime}; C{task.Clock} in tests) the
        timers run on.
    """

    __slots__ = ("clock", "calls")

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.calls: list[IDelayedCall | None] = [None] * len(NAMES)

    def __repr__(self) -> str:
        running = [NAMES[kind] for kind in range(len(NAMES)) if self.running(kind)]
        return f"<Timers running={running}>"

    def start(self, kind: int, seconds: float, callback: Callable[..., object], *args: Any) -> None:
        """
        Call C{callback(*args)} in C{seconds}, as timer C{kind}, stopping
        the one of that kind already running (if any).
        """
        old = self.calls[kind]
        if old is not None and old.active():
            old.cancel()
        self.calls[kind] = self.clock.callLater(seconds, self._fire, kind, callback, *args)

    def _fire(self, kind: int, callback: Callable[..., object], *args: Any) -> None:
        self.calls[kind] = None
        callback(*args)

    def stop(self, kind: int) -> None:
        """Stop timer C{kind} if it runs."""
        call = self.calls[kind]
        if call is not None:
            self.calls[kind] = None
            if call.active():
                call.cancel()

    def stopAll(self, keep: int | None = None) -> None:
        """Stop every timer (but C{keep}, if given)."""
        calls = self.calls
        for kind in range(len(calls)):
            if kind != keep and calls[kind] is not None:
                self.stop(kind)

    def running(self, kind: int) -> bool:
        """Whether timer C{kind} is set to fire."""
        # A filed call is always pending: firing, stop() and move() un-file
        # it first, and nobody else holds it to cancel it.
        return self.calls[kind] is not None

    def deadline(self, kind: int) -> float | None:
        """When timer C{kind} fires (the clock's seconds), or C{None}: it does not run."""
        call = self.calls[kind]
        if call is None or not call.active():
            return None
        return call.getTime()

    def move(self, old: int, new: int, seconds: float, callback: Callable[..., object]) -> None:
        """
        Stop timer C{old} and run timer C{new}: C{callback()} in
        C{seconds}. If C{old} runs, its C{DelayedCall} is reused (reset
        and re-pointed) instead of cancelled, so that no cancelled call is
        left in the reactor's heap.
        """
        call = self.calls[old]
        if call is None or not call.active():
            self.calls[old] = None
            self.start(new, seconds, callback)
            return
        self.calls[old] = None
        self.stop(new)
        call.reset(seconds)
        # DelayedCall keeps its function and arguments as plain attributes
        # (func, args, kw), read when it fires; our trampoline is the
        # function, so only the arguments change.
        call.args = (new, callback)  # type: ignore[attr-defined]
        self.calls[new] = call


def endOfTurn(reactor: Any) -> Callable[[Callable[[], object]], object]:
    """
    How to call C{f()} once at the end of this reactor turn: the quiet
    reactor's C{callBeforePoll} (L{proto.speed.reactor}: right before it
    blocks in its poll, after the turn's timed calls), else
    C{callLater(0, f)} (any other reactor; a test's C{Clock}). Used by
    what gathers a turn's work into one go: the TLS flush, the PostgreSQL
    reactor reader's batch.
    """
    beforePoll: Callable[[Callable[[], object]], object] | None = getattr(reactor, "callBeforePoll", None)
    if beforePoll is not None:
        return beforePoll
    return lambda f: reactor.callLater(0, f)
