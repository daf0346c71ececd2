"""
Request bodies: the memory budget and the body timeout.

Why: a request's body (C{Size} bytes after its head, PROTOCOL.md section
3) can be up to C{maxBody} (16 MiB by default), and a client may send a
head and then the body slowly, or never. Two rules keep that from costing
the server its memory or a connection slot forever:

  - the bytes of partial bodies are reserved against one budget shared by
    all connections (C{maxPendingBodies}, see
    L{proto.server.GNPServerFactory} C{reserveBody}); a body that does not
    fit is read and dropped as it comes, and its request answered C{ERR
    Server busy ...} (a per-request error, section 5: the connection
    stays), so partial bodies never hold more memory than that budget;
  - a pending body that gets no byte for C{bodyTimeout} seconds ends the
    connection with a fatal C{ERR} (after the replies already due), unless
    the server itself stopped reading (flow control: not the client's
    delay).

The bytes themselves are the framing's (L{proto.wire.framing.RequestParser}
collects them); this mixin of L{proto.protocol.GNPServerProtocol} only
does the bookkeeping around them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proto import wire
from proto.states import READY
from proto.timers import BODY

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.logger import Logger

    from proto.server import ServerConfig
    from proto.timers import Timers


class BodyBudget:
    """
    The pending body of one connection: its share of the budget and its
    timer, mixed into the connection.
    """

    # Class defaults: set on a connection only once it receives a body.
    #: Bytes of the budget this body holds (0: none yet).
    _bodyHeld = 0
    #: The body did not fit: its bytes are dropped as they come and its
    #: request is answered ERR.
    _bodyRefused = False
    #: When the pending body last got bytes (the clock's seconds).
    _bodyLast = 0.0

    if TYPE_CHECKING:
        # What the host (the connection) provides.
        state: str
        factory: Any
        config: ServerConfig
        clock: IReactorTime
        log: Logger
        peer: str
        paused: bool
        _parser: wire.RequestParser
        _timers: Timers

        def _write(self, data: bytes) -> None: ...
        def _dispatch(self, request: wire.Request) -> None: ...
        def fatal(self, reason: str, sequence: str | None = None) -> None: ...

    def _watchBody(self) -> None:
        """
        A body is pending after a chunk of input (or a resume): reserve its
        memory the first time, note the time (bytes came, or we just
        resumed reading, which was not the client's delay), and run the
        body timer unless we stopped reading.
        """
        if not self._bodyHeld and not self._bodyRefused:
            self._reserveBody()
        self._bodyLast = self.clock.seconds()
        if not self.paused and not self._timers.running(BODY):
            self._timers.start(BODY, self.config.bodyTimeout, self._bodyTimerFired)

    def _bodyTimerFired(self) -> None:
        parser = self._parser
        if self.state is not READY or not parser.bodyMissing or self.paused:
            return
        quiet = self.clock.seconds() - self._bodyLast
        timeout = self.config.bodyTimeout
        if quiet < timeout:
            self._timers.start(BODY, timeout - quiet, self._bodyTimerFired)
            return
        request = parser.bodyPending
        assert request is not None
        self.fatal(
            f"Timeout: no byte of the {request.size}-byte body came for {timeout:g} s "
            f"({parser.bodyMissing} bytes missing)",
            request.sequence,
        )

    def _reserveBody(self) -> None:
        """Take the pending body's size from the server-wide budget, or refuse it."""
        pending = self._parser.bodyPending
        assert pending is not None and pending.size is not None
        size = pending.size
        if self.factory.reserveBody(size):
            self._bodyHeld = size
            return
        self._bodyRefused = True
        self._parser.discardBody()
        self.log.warn(
            "Refused a {size}-byte body from {peer}: partial bodies already hold "
            "the server's limit of {limit} bytes",
            size=size, peer=self.peer, limit=self.config.maxPendingBodies,
        )

    def _bodyComplete(self, request: wire.Request) -> None:
        """A request's body is all here: run the request (or refuse it)."""
        refused = self._bodyRefused
        self._dropBody()
        if refused:
            self._write(
                wire.encodeError(
                    f"Server busy: request bodies being received already hold its "
                    f"limit of {self.config.maxPendingBodies} bytes; send this "
                    "request again later",
                    request.sequence,
                )
            )
            return
        self._dispatch(request)

    def _dropBody(self) -> None:
        """Give back the pending body's memory (if any); stop its timer."""
        self._bodyRefused = False
        if self._bodyHeld:
            self.factory.releaseBody(self._bodyHeld)
            self._bodyHeld = 0
        self._timers.stop(BODY)
