"""
The sans-I/O core of a GNP/1 client: bytes from the server in, events out.

Both clients wrap this one engine, the way h11 serves both roles with one
state machine: the Twisted client (L{proto.client.connection}) turns its
events into Deferreds, the blocking client (L{proto.client.blocking}) into
futures and a push queue under its own lock. The core does no I/O, holds
no Deferred, future, lock or clock: the wrapper hands it a I{waiter} of
its own kind per request (and a push I{target} for requests that get
pushes) and gets them back in the events, to fire as it sees fit.

What it owns (C{shared/PROTOCOL.md}):
  - the greeting (section 2): C{OK} admits (L{Admitted}), C{ERR reason}
    refuses (L{Abort} with L{Refused});
  - the pending table (sections 3 and 5): it numbers requests, encodes
    them, and matches C{OK}/C{ERR} frames by Sequence in whatever order
    they come (L{Replied}, L{Failed});
  - push routing (sections 4, 6 and 8): a C{PUSH} goes to the target of
    the request that opened the subscription (C{WATCH}, C{REMIND}), as
    L{Pushed} (whose target is C{None} for a push nobody asked for), until
    the subscription's last push (a C{REMIND}'s one push, a WATCH's
    C{Dropped}: both are delivered), the C{OK} of C{UNWATCH} with its
    Sequence, that request's C{ERR}, L{ClientCore.stopPushes}, or the end;
  - connection-level C{ERR} frames without a Sequence (section 4): kept as
    L{ClientCore.fatalReason} for the loss error;
  - the loss errors: the one wording of L{ConnectionClosed},
    L{ServerShuttingDown} and friends, and what every pending request
    fails with when the connection ends (L{ClientCore.connectionLost}).

The events themselves, generic in the wrapper's waiter and target, are
L{proto.client.events} (re-exported here for older imports).

The states, in order: L{GREETING} -> L{OPEN} -> (L{CLOSING}) -> L{ENDED}.
L{CLOSING} means the client decided to end the connection (it closes, or
the server's bytes were not GNP/1, or the greeting refused it): input is
ignored from then on and the transport is going away.
"""

from __future__ import annotations

import enum
import itertools
import json
from dataclasses import dataclass
from typing import Callable, Generic, Sequence

from proto.client.errors import (
    ClientError,
    ClientTimeout,
    ConnectionClosed,
    ProtocolError,
    Refused,
    ServerError,
    ServerShuttingDown,
)
from proto.client.events import (
    Abort,
    Admitted,
    Ended,
    Event,
    Failed,
    H,
    Pushed,
    Replied,
    Stray,
    W,
)
from proto.client.messages import Headers, Reply, encodeClientRequest
from proto.wire.grammar import OK, PUSH, FramingError
from proto.wire.replies import Frame, Greeting, ReplyParser

__all__ = [
    "CLOSING",
    "ENDED",
    "GREETING",
    "OPEN",
    "SHUTTING_DOWN",
    "Abort",
    "Admitted",
    "ClientCore",
    "Ended",
    "Event",
    "Failed",
    "Pushed",
    "Replied",
    "State",
    "Stray",
    "noGreetingError",
    "noReplyError",
    "notGNPError",
]

#: The start of a server's final C{ERR} when it drains (issue 10).
SHUTTING_DOWN = "Server is shutting down"


class State(enum.Enum):
    GREETING = "waiting for the greeting"
    OPEN = "admitted"
    CLOSING = "closing"
    ENDED = "ended"


GREETING, OPEN, CLOSING, ENDED = State.GREETING, State.OPEN, State.CLOSING, State.ENDED


@dataclass(slots=True)
class _Pending(Generic[W]):
    command: str
    waiter: W
    #: For C{UNWATCH}: the Sequence of the watch its C{OK} ends.
    ends: str | None = None


def _isDropped(push: Frame) -> bool:
    """A WATCH push saying the server gave up on us (section 8): its last."""
    body = push.body
    if not (body.startswith(b"{") and b'"Dropped"' in body):
        return False  # the common case, without parsing
    try:
        event = json.loads(body)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("Type") == "Dropped"


# -- wording shared by both clients ----------------------------------------------


def noReplyError(command: str, sequence: str, seconds: float) -> ClientTimeout:
    """The local wait for a reply ended (a request's C{timeout} plus grace)."""
    return ClientTimeout(f"no reply to {command} (Sequence {sequence}) within {seconds:g} seconds")


def noGreetingError(seconds: float) -> ClientTimeout:
    """The greeting did not come in time."""
    return ClientTimeout(f"no greeting from the server within {seconds:g} seconds")


def notGNPError(error: FramingError) -> ProtocolError:
    return ProtocolError(f"the server sent something that is not GNP/1: {error}")


# -- the core --------------------------------------------------------------------


class ClientCore(Generic[W, H]):
    """
    One client connection's protocol state; see the module docstring.

    @ivar fatalReason: the reason of a connection-level C{ERR} (no
        Sequence) the server sent before closing, or C{None}.
    """

    def __init__(self, maxHead: int = 65536) -> None:
        self._parser = ReplyParser(maxHead=maxHead)
        self._sequences = itertools.count(1)
        self._pending: dict[str, _Pending[W]] = {}
        #: Sequence -> (command, target) of the requests that get pushes.
        self._targets: dict[str, tuple[str, H]] = {}
        self.state = GREETING
        #: C{True} once the greeting was C{OK} (and still after the end).
        self.admitted = False
        self.fatalReason: str | None = None
        #: Why the client ended the connection itself (close, abort).
        self._endError: ClientError | None = None
        #: Why the connection ended, once it has.
        self._lossError: ClientError | None = None

    # -- what the wrapper asks ------------------------------------------------

    @property
    def pendingCount(self) -> int:
        return len(self._pending)

    @property
    def error(self) -> ClientError | None:
        """Why the connection ended (once L{ENDED}), else C{None}."""
        return self._lossError

    def unusableError(self) -> ClientError:
        """What a request fails with when the connection cannot take it."""
        if self._endError is not None:
            return self._endError
        if self.state is GREETING:
            return ClientError("not admitted yet: wait for the server's greeting")
        if self.fatalReason is not None and self.fatalReason.startswith(SHUTTING_DOWN):
            return ServerShuttingDown("the server is shutting down: the connection is closed")
        return ConnectionClosed("the connection is closed")

    def request(
        self,
        command: str,
        args: Sequence[str],
        waiter: Callable[[str], W],
        headers: Headers = None,
        body: bytes | None = None,
        timeout: float | None = None,
        onPush: H | None = None,
    ) -> tuple[str, bytes, W]:
        """
        Number, encode and record one request.

        @return: its Sequence, its bytes (the caller sends them) and the
            waiter made for it.

        @param waiter: makes the wrapper's waiter, given the Sequence.
        @param timeout: seconds for the C{Timeout} header.
        @param onPush: this request's pushes go to this target.
        @raise ClientError: (L{unusableError}) the connection is not open.
        @raise ValueError: the request cannot be written.
        """
        if self.state is not OPEN:
            raise self.unusableError()
        sequence = str(next(self._sequences))
        data = encodeClientRequest(command, args, sequence, headers, body, timeout)
        made = waiter(sequence)
        upper = command.upper()
        pending = _Pending(upper, made)
        if upper == "UNWATCH" and args:
            pending.ends = args[0]
        self._pending[sequence] = pending
        if onPush is not None:
            self._targets[sequence] = (upper, onPush)
        return sequence, data, made

    def stopPushes(self, sequence: str) -> None:
        """Route no more pushes of request C{sequence} to its target."""
        self._targets.pop(sequence, None)

    def forget(self, sequence: str) -> str | None:
        """
        Give up on request C{sequence} (cancelled, or its wait timed out):
        its reply, if it comes, is a L{Stray}, and its pushes stop.

        @return: its command, if it was pending.
        """
        self._targets.pop(sequence, None)
        pending = self._pending.pop(sequence, None)
        return None if pending is None else pending.command

    def close(self) -> bool:
        """
        The client ends the connection: pending requests (and new ones)
        fail with L{ConnectionClosed} "closed by the client".

        @return: C{True} if the wrapper should now close its transport,
            C{False} if the connection is already ending.
        """
        return self.abort(ConnectionClosed("connection closed by the client"))

    def abort(self, error: ClientError) -> bool:
        """
        The client ends the connection because of C{error} (which pending
        requests then fail with).

        @return: as for L{close}.
        """
        if self.state is CLOSING or self.state is ENDED:
            return False
        self._endError = error
        self.state = CLOSING
        return True

    # -- what the server sends --------------------------------------------------

    def receive(self, data: bytes) -> list[Event[W, H]]:
        """
        Feed bytes from the server; return what they mean, in order.
        Ignored once the client decided to end the connection.
        """
        if self.state is CLOSING or self.state is ENDED:
            return []
        try:
            items = self._parser.feed(data)
        except FramingError as e:
            return [self._aborting(notGNPError(e))]
        events: list[Event[W, H]] = []
        for item in items:
            if isinstance(item, Greeting):
                events.append(self._greeted(item))
            else:
                event = self._frame(item)
                if event is not None:
                    events.append(event)
            if self.state is CLOSING:
                break
        return events

    def connectionLost(
        self,
        detail: str = "",
        *,
        clean: bool = False,
        tlsFailed: bool = False,
        error: ClientError | None = None,
    ) -> Ended[W]:
        """
        The transport is gone. Words why and hands back every pending
        waiter; no pushes are routed after this.

        @param detail: the transport's reason, one line.
        @param clean: the server closed the connection in an orderly way.
        @param tlsFailed: the TLS layer failed (a handshake error before
            the greeting).
        @param error: a precise error to end with (set by a TLS verifier,
            e.g. L{proto.client.errors.ThumbprintMismatch}).
        """
        if self.state is ENDED:
            assert self._lossError is not None
            return Ended(self._lossError)
        loss = self._loss(detail, clean, tlsFailed, error)
        self.state = ENDED
        self._lossError = loss
        pending, self._pending = self._pending, {}
        self._targets.clear()
        return Ended(loss, [request.waiter for request in pending.values()])

    # -- internals --------------------------------------------------------------

    def _aborting(self, error: ClientError) -> Abort:
        self.abort(error)
        return Abort(error)

    def _greeted(self, greeting: Greeting) -> Event[W, H]:
        if self.state is not GREETING:
            return self._aborting(ProtocolError("the server sent a second greeting"))
        if not greeting.ok:
            return self._aborting(Refused(greeting.reason))
        self.state = OPEN
        self.admitted = True
        return Admitted()

    def _frame(self, frame: Frame) -> Event[W, H] | None:
        sequence = frame.sequence
        if sequence is None:
            # A connection-level error (the server could not read our
            # Sequence, or it is draining): it closes the connection next.
            self.fatalReason = frame.reason or frame.kind
            return None
        if frame.kind == PUSH:
            subscription = self._targets.get(sequence)
            if subscription is None:
                return Pushed(Reply.fromFrame(frame), None)
            command, target = subscription
            if command == "REMIND" or (command == "WATCH" and _isDropped(frame)):
                del self._targets[sequence]  # its last push
            return Pushed(Reply.fromFrame(frame), target)
        request = self._pending.pop(sequence, None)
        if request is None:
            return Stray(sequence, frame.kind)
        if frame.kind == OK:
            if request.ends is not None:
                self._targets.pop(request.ends, None)  # UNWATCH done
            return Replied(request.waiter, Reply.fromFrame(frame))
        self._targets.pop(sequence, None)
        return Failed(request.waiter, ServerError(frame.reason, sequence, request.command))

    def _loss(
        self, detail: str, clean: bool, tlsFailed: bool, error: ClientError | None
    ) -> ClientError:
        if self._endError is not None:
            return self._endError
        if error is not None:
            return error
        pending = len(self._pending)
        tail = f" ({pending} request(s) pending)" if pending else ""
        if self.fatalReason is not None:
            if self.fatalReason.startswith(SHUTTING_DOWN):
                return ServerShuttingDown(
                    f"the server is shutting down: it closed the connection{tail}"
                )
            return ConnectionClosed(f"the server closed the connection: {self.fatalReason}{tail}")
        if not self.admitted:
            if tlsFailed:
                return ConnectionClosed(f"TLS handshake with the server failed: {detail}")
            if clean:
                return ConnectionClosed("the server closed the connection before its greeting")
            return ConnectionClosed(f"connection lost before the server's greeting: {detail}")
        if clean:
            return ConnectionClosed(f"the server closed the connection{tail}")
        return ConnectionClosed(f"connection lost: {detail}{tail}")
