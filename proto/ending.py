"""
How an admitted connection ends: drain, then one final frame, then close.

Why its own module: ending a connection is where the contract's "every
request gets exactly one reply" (PROTOCOL.md section 4) is easiest to
break. Every way out goes through here: QUIT (section 6), a framing error
(section 5: the replies already due, then C{ERR reason}, then the close),
an idle timeout, a revoked certificate (section 9), a server shutdown
(SIGTERM), and the refusal of a client that was never admitted (section
2).

Draining (L{Ending.drainThenClose}) is how every admitted connection
ends: read nothing more, let the requests already accepted finish (each
within its Timeout, all within a bounded grace) and send their replies,
then the final frame (the fatal C{ERR}, say), then close. So replies
already due go before the final C{ERR}, also when a later request breaks
the framing. A server shutdown (L{Ending.shutdown}) keeps reading a little
longer, to answer late requests C{ERR Server is shutting down} with their
Sequence.

The close itself (L{Ending._closeWith}) follows C{TWISTED_NOTES.md}
("Sending ERR, flushing it, closing"): unregister the producer, resume
reading so that TLS sees the peer's close_notify, write, C{loseConnection},
and arm an abort timer, because a TLS close can otherwise hang forever.

L{Ending} is a mixin of L{proto.protocol.GNPServerProtocol}, like
L{proto.dispatch.Dispatcher}; what it uses of its host is declared below
for the type checker only. The moves between states go through the
transition table of L{proto.states}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Mapping

from proto import wire
from proto.states import CLOSING, DRAINING, ENDING, OPEN, READY
from proto.timers import ABORT, DRAIN, HEAD, IDLE, SHUTDOWN

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime
    from twisted.logger import Logger

    from proto.flowcontrol import FlowControl
    from proto.stats import ServerStats
    from proto.subscriptions import Subscriptions
    from proto.server import ServerConfig
    from proto.timers import Timers

#: The reason given to requests that arrive during a server shutdown, and
#: in the final frame of each connection (issue 10: graceful drain).
SHUTDOWN_REASON: Final = "Server is shutting down"
_SHUTDOWN_FRAME: Final = wire.encodeError(SHUTDOWN_REASON, None)


class Ending:
    """
    Draining and closing, mixed into the connection.

    @ivar _finalFrame: what is sent after the last reply of a drain.
    """

    _finalFrame = b""

    if TYPE_CHECKING:
        # What the host (the connection) provides.
        state: str
        transport: Any
        config: ServerConfig
        clock: IReactorTime
        log: Logger
        peer: str
        stats: ServerStats
        paused: bool
        subscriptions: Subscriptions
        _timers: Timers
        _flow: FlowControl
        _replies: list[bytes] | None
        _inflight: Mapping[str, Deferred[Any]]
        _refusing: str | None

        def _enter(self, state: str) -> None: ...
        def clearLineBuffer(self) -> bytes: ...
        def _dropBody(self) -> None: ...
        def _cancelInflight(self) -> None: ...
        def _cancelRunning(self) -> None: ...

    def drainThenClose(self, finalFrame: bytes = b"", grace: float | None = None) -> None:
        """
        End the connection without losing a reply: read no further input,
        let the requests already accepted finish and send their replies,
        then send C{finalFrame} and close (PROTOCOL.md sections 4 and 5).
        Standing subscriptions (WATCH, REMIND) end at once: pushes are not
        replies.

        @param finalFrame: sent after the last reply (a fatal C{ERR}); may
            be empty (QUIT).
        @param grace: seconds after which requests still running are
            cancelled, each answered C{ERR Cancelled ...}; C{None}: wait for
            them (each is still bounded by its own Timeout). Called again
            while draining, a shorter grace applies (a shutdown after a
            QUIT); the first final frame stays.
        """
        if self.state is DRAINING:
            if grace is not None:
                self._armDrainGrace(grace)
            return
        if self.state is not READY:
            # Not admitted yet (or already closing): nothing accepted to wait for.
            self._closeWith(finalFrame)
            return
        self._enter(DRAINING)
        self._finalFrame = finalFrame
        self.clearLineBuffer()
        self._dropBody()
        self._timers.stop(HEAD)
        self._timers.stop(IDLE)
        self._cancelSubscriptions()
        if grace is not None:
            self._armDrainGrace(grace)
        self._drainIfDone()

    def quitAfterReplies(self) -> None:
        """
        QUIT: read no further requests; close once every reply due is sent
        (no grace: each request still runs to its end or its Timeout).
        """
        self.drainThenClose(b"", None)

    def fatal(self, reason: str, sequence: str | None = None) -> None:
        """
        A framing error (PROTOCOL.md section 5): the replies of the
        requests before it, then C{ERR reason}, then close.
        """
        self.log.info(
            "Protocol error from {peer}, closing: {reason}", peer=self.peer, reason=reason
        )
        self.drainThenClose(wire.encodeError(reason, sequence), self.config.drainGrace)

    def revoke(self, reason: str) -> None:
        """End an admitted connection whose admission no longer holds."""
        self.log.info("Closing {peer}: {reason}", peer=self.peer, reason=reason)
        self.drainThenClose(wire.encodeError(reason, None), self.config.drainGrace)

    def shutdown(self, grace: float) -> None:
        """
        The server is stopping (SIGTERM, twistd's stop): unlike
        L{drainThenClose}, keep reading, and answer every request that
        arrives now with C{ERR Server is shutting down} (with its Sequence),
        while the requests already accepted finish, for at most C{grace}
        seconds (then they are cancelled and answered). Then the final
        C{ERR Server is shutting down} without Sequence, and the close.
        Standing WATCH/REMIND end when the connection does.
        """
        if self.state is not READY or not self._inflight:
            self.drainThenClose(_SHUTDOWN_FRAME, grace)
            return
        self._refusing = SHUTDOWN_REASON
        self._timers.stop(IDLE)
        self._timers.start(SHUTDOWN, grace, self._shutdownGraceOver)

    def _shutdownGraceOver(self) -> None:
        """The shutdown's grace is over: drain what is left, with no more grace."""
        if self.state is READY:
            # Cancels what still runs (each answered), then the final frame.
            self.drainThenClose(_SHUTDOWN_FRAME, 0)

    def _armDrainGrace(self, grace: float) -> None:
        """Cancel what still runs C{grace} seconds from now (a shorter grace wins)."""
        deadline = self._timers.deadline(DRAIN)
        if deadline is not None and deadline <= self.clock.seconds() + grace:
            return
        self._timers.start(DRAIN, grace, self._drainGraceOver, grace)

    def _drainGraceOver(self, grace: float) -> None:
        """Cancel what still runs; each is answered (see L{Dispatcher._failureReply})."""
        if self.state is not DRAINING:
            return
        self.log.info(
            "Closing {peer}: {count} request(s) did not finish within the "
            "{grace:g} s grace, cancelled", peer=self.peer, count=len(self._inflight),
            grace=grace,
        )
        self._cancelRunning()
        self._drainIfDone()

    def _endIfDone(self) -> None:
        """
        A request running in the background was answered: if that was the
        last one a drain or a shutdown waited for, end.
        """
        if self.state is DRAINING:
            self._drainIfDone()
        elif self._refusing is not None and not self._inflight:
            self._timers.stop(SHUTDOWN)
            self.drainThenClose(_SHUTDOWN_FRAME, 0)

    def _drainIfDone(self) -> None:
        """Close once draining and every accepted request is answered."""
        if self.state is DRAINING and not self._inflight and self._replies is None:
            self._timers.stop(DRAIN)
            self._closeWith(self._finalFrame)

    def _closeWith(self, data: bytes) -> None:
        """
        Send C{data} (a refusal or a fatal error), then close: stop parsing,
        stop producing, write, close, and arm an abort in case the peer
        never answers TLS's close_notify.
        """
        if self.state in ENDING:
            return
        admitted = self.state in OPEN
        replies, self._replies = self._replies, None
        if replies:
            # Replies already due go out before the final frame.
            due = b"".join(replies)
            self.stats.bytesOut += len(due)
            self.transport.write(due)
            del replies[:]
        self._enter(CLOSING)
        self.clearLineBuffer()
        self._timers.stopAll(keep=ABORT)
        self._dropBody()
        self._cancelWork()
        self.transport.unregisterProducer()
        if self._flow.clear():
            # Keep reading so that TLS sees the peer's close_notify.
            self.paused = False
            self.transport.resumeProducing()
        if data:
            self.stats.bytesOut += len(data)
            if admitted and data.startswith(b"ERR"):
                self.stats.errors += 1
            self.transport.write(data)
        self.transport.loseConnection()
        self._timers.start(ABORT, self.config.closeGrace, self.transport.abortConnection)

    def _cancelWork(self) -> None:
        """Cancel every command in flight and every standing subscription."""
        self._cancelInflight()
        self._cancelSubscriptions()

    def _cancelSubscriptions(self) -> None:
        """Draining or closing: end every subscription, and refuse new ones."""
        self.subscriptions.close()
