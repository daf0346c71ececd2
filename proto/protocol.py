"""
The GNP/1 server connection: one TLS connection, from handshake to close.

L{GNPServerProtocol} is a C{LineReceiver} with the empty line
(C{\\r\\n\\r\\n}) as its delimiter, and composes the parts that each do
one job, as Twisted's AMP composes C{BinaryBoxProtocol}, C{BoxDispatcher}
and C{CommandLocator}:

  - framing: L{proto.wire.RequestParser} (sans I/O: bytes in, requests
    out; PROTOCOL.md sections 3 and 5); this class never touches
    LineReceiver's own buffer;
  - dispatch: L{proto.dispatch.Dispatcher} (mixed in): the in-flight
    table, C{Timeout}, permission checks and the reply mapping (sections
    4, 5 and 9);
  - flow control: L{proto.flowcontrol.FlowControl}, pure decisions on
    pause reasons and the in-flight limit; this class is the transport's
    push producer and carries them out;
  - timers: L{proto.timers.Timers}, the handshake, head, idle, body,
    drain, shutdown and abort timeouts;
  - states: L{proto.states}, one transition table (handshaking, ready,
    draining, closing, closed); every change goes through L{_enter};
  - subscriptions (WATCH, REMIND): L{proto.subscriptions.Subscriptions};
  - TLS and admission: L{proto.tls} (the context, session resumption) and
    L{proto.admission} (the allow-list's judgement, section 2), called
    from L{GNPServerProtocol.handshakeCompleted}.

What stays here is the connection's life: admission glue, feeding the
parser and writing a chunk's replies at once (output coalescing), the
body budget, and how a connection ends.

Draining (L{GNPServerProtocol.drainThenClose}) is how every connection
ends once it was admitted: read nothing more, let the requests already
accepted finish (each within its Timeout, all within a bounded grace) and
send their replies, then the final frame (the fatal C{ERR}, say), then
close. So every request gets exactly one reply (PROTOCOL.md section 4)
and replies already due go before the final C{ERR} (section 5), also when
a later request breaks the framing.

A request body must keep arriving: a pending body that gets no byte for
C{bodyTimeout} seconds ends the connection with a fatal C{ERR}. The
bytes of partial bodies are reserved against one budget shared by all
connections (C{maxPendingBodies}, see L{proto.server.GNPServerFactory}
C{reserveBody}); a body that does not fit is read and dropped, and its
request answered C{ERR}, so partial bodies can never hold more memory
than that budget.

Pitfalls this class guards against (see C{shared/TWISTED_NOTES.md}):
input keeps arriving over TLS after C{loseConnection} (so every input path
checks the state), a TLS close can hang forever (so every close arms an
abort timer), and the producer must be unregistered before a close.
"""

from __future__ import annotations

import datetime
from time import perf_counter
from typing import Callable, Iterable

from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from proto import wire
from proto.admission import Identity, identityOfDER, judge
from proto.commands.base import ICommandContext
from proto.dispatch import Dispatcher
from proto.flowcontrol import INFLIGHT, TRANSPORT, FlowControl
from proto.permissions import NOTHING, Grant
from proto.states import CLOSED, CLOSING, DRAINING, ENDING, HANDSHAKING, OPEN, READY, advance
from proto.stats import REFUSED_HANDSHAKE_TIMEOUT
from proto.subscriptions import Subscriptions
from proto.timers import ABORT, BODY, DRAIN, HANDSHAKE, HEAD, IDLE, SHUTDOWN, Timers
from proto.tls import peerCertificateDER

__all__ = [
    "GNPServerProtocol", "SHUTDOWN_REASON", "printablePeer",
    "HANDSHAKING", "READY", "DRAINING", "CLOSING", "CLOSED",
]

#: The reason given to requests that arrive during a server shutdown, and
#: in the final frame of each connection (issue 10: graceful drain).
SHUTDOWN_REASON = "Server is shutting down"
_SHUTDOWN_FRAME = wire.encodeError(SHUTDOWN_REASON, None)


def printablePeer(address) -> str:
    """C{host:port} for logs, with IPv4-mapped IPv6 addresses unmapped."""
    host = getattr(address, "host", None)
    if host is None:
        return str(address)
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    if ":" in host:
        return f"[{host}]:{address.port}"
    return f"{host}:{address.port}"


@implementer(IHandshakeListener, ICommandContext)
class GNPServerProtocol(LineReceiver, Dispatcher):
    """
    Serves one client. Built by L{proto.server.GNPServerFactory}, whose
    C{config}, C{registry}, C{clock}, C{store} and C{hub} it uses.
    """

    delimiter = wire.HEAD_END
    log = Logger()

    # Defaults kept on the class, set on an instance only when they change:
    # fewer than 30 instance attributes keep CPython's compact shared-key
    # instance dictionary (about 1.3 KiB less per idle connection, measured).
    # The dispatcher's (in-flight table, ...) are on L{Dispatcher}.
    #: See L{proto.states}; changed only by L{_enter}.
    state = HANDSHAKING
    #: Bytes of the budget for partial bodies this body holds (0: none
    #: yet); C{_bodyRefused}: the body did not fit, its bytes are dropped
    #: as they come and its request is answered ERR.
    _bodyHeld = 0
    _bodyRefused = False
    _bodyLast = 0.0
    _finalFrame = b""
    #: While a chunk of input is parsed: the replies to write at its end.
    _replies: list[bytes] | None = None
    _lastActivity = 0.0
    #: C{perf_counter()} at connectionMade, then (admitted) the clock's
    #: seconds at admission: one attribute for both (see above).
    _since = 0.0

    def __init__(self, factory) -> None:
        self.factory = factory
        self.config = factory.config
        self.registry = factory.registry
        self._commands = factory.registry.commands
        self.access = getattr(factory, "access", None)
        self.clock = factory.clock
        self.store = factory.store
        self.hub = factory.hub
        #: The server's counters (L{proto.stats}): STATS, CLIENTS, metrics.
        self.stats = factory.stats
        # The framing (heads, bodies, the head limit) is the sans-I/O
        # parser's; LineReceiver's own buffer is never used.
        self._parser = wire.RequestParser(self.config.maxHead, self.config.maxBody)
        self._timers = Timers(self.clock)
        self._flow = FlowControl(self.config.maxInflight)
        self.identity: Identity | None = None
        self.grant: Grant = NOTHING
        self._free: dict = {}  # the commands this grant runs unchecked
        self.peer = "?"
        self.subscriptions = Subscriptions(self)

    def _enter(self, state: str) -> None:
        """Move to C{state}; L{proto.states.IllegalTransition} if that is no move."""
        self.state = advance(self.state, state)

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = printablePeer(self.transport.getPeer())
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.transport.registerProducer(self, True)
        self._since = perf_counter()
        self.factory.connectionOpened(self)
        self._timers.start(HANDSHAKE, self.config.handshakeTimeout, self._handshakeTimedOut)

    def handshakeCompleted(self) -> None:
        """
        TLS is up (also for a resumed session): judge the certificate
        against the current allow-list (PROTOCOL.md section 2), then greet
        with C{OK} or refuse in words and close.
        """
        timers = self._timers
        if self.state is not HANDSHAKING:
            timers.stop(HANDSHAKE)
            return
        self.stats.handshake.observe(perf_counter() - self._since)
        # Behind HAProxy (--listen haproxy:...) the PROXY header is parsed
        # after connectionMade, so only now does getPeer() give the
        # client's address rather than HAProxy's (Twisted #12501).
        self.peer = printablePeer(self.transport.getPeer())
        der = peerCertificateDER(self.transport)
        if der is not None:
            self.identity = identityOfDER(der)
        reason = self.factory.overloadReason()
        if reason is None:
            now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
            allowList = self.factory.allowList()
            reason = judge(self.identity, allowList, now)
            if reason is None:
                self._grant(allowList.grantFor(self.identity.sha1, self.identity.sha256))
            else:
                refused = getattr(self.factory, "certificateRefused", None)
                if refused is not None and self.identity is not None:
                    refused(self.identity, self.peer, reason)
        who = self.identity
        if reason is not None:
            timers.stop(HANDSHAKE)
            self.log.info(
                "Refused {peer} sha1={sha1} cn={cn!r}: {reason}",
                peer=self.peer, sha1=who and who.sha1, cn=who and who.commonName,
                reason=reason, admitted=False, event="admission",
            )
            self.stats.refusedFor(reason)
            self._closeWith(wire.encodeGreeting(reason))
            return
        self.log.info(
            "Admitted {peer} sha1={sha1} cn={cn!r} {grant}",
            peer=self.peer, sha1=who.sha1, cn=who.commonName, admitted=True,
            grant=self.grant.attributes(), name=self.grant.name, event="admission",
        )
        self._enter(READY)
        self._since = self.clock.seconds()
        self.stats.certificateSeen(who)
        self.factory.connectionAdmitted(self)
        self.transport.write(wire.encodeGreeting())
        self._lastActivity = self.clock.seconds()
        if self.config.idleTimeout:
            # The handshake's DelayedCall becomes the idle timer's (see
            # Timers.move: no cancelled call left in the reactor's heap).
            timers.move(HANDSHAKE, IDLE, self.config.idleTimeout, self._idleCheck)
        else:
            timers.stop(HANDSHAKE)

    def connectionLost(self, reason=None) -> None:
        self._enter(CLOSED)
        self._timers.stopAll()
        self._dropBody()
        self._cancelWork()
        self.factory.connectionClosed(self)

    def _cancelWork(self) -> None:
        """Cancel every command in flight and every standing subscription."""
        self._cancelInflight()
        self._cancelSubscriptions()

    def _cancelSubscriptions(self) -> None:
        """Draining or closing: end every subscription, and refuse new ones."""
        self.subscriptions.close()

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
            self.transport.write(b"".join(replies))
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

    # -- draining: how an admitted connection ends ------------------------

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
        if self.state is READY:
            # Cancels what still runs (each answered), then the final frame.
            self.drainThenClose(_SHUTDOWN_FRAME, 0)

    @property
    def admittedAt(self) -> float:
        """When the connection was admitted (the clock's seconds; CLIENTS)."""
        return self._since if self.state is not HANDSHAKING else 0.0

    def _armDrainGrace(self, grace: float) -> None:
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

    def _drainIfDone(self) -> None:
        """Close once draining and every accepted request is answered."""
        if self.state is DRAINING and not self._inflight and self._replies is None:
            self._timers.stop(DRAIN)
            self._closeWith(self._finalFrame)

    def _requestTracked(self, inflight: int) -> None:
        # Dispatcher hook: too many requests running stops reading.
        if self._flow.tooManyInflight(inflight):
            self._pause(INFLIGHT)

    def _requestAnswered(self, inflight: int) -> None:
        # Dispatcher hook: a request running in the background got its reply.
        if self._flow.fewEnoughInflight(inflight):
            self._resume(INFLIGHT)
        if self.state is DRAINING:
            self._drainIfDone()
        elif self._refusing is not None and not self._inflight:
            self._timers.stop(SHUTDOWN)
            self.drainThenClose(_SHUTDOWN_FRAME, 0)

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

    def setGrant(self, grant: Grant) -> None:
        """
        The allow-list changed what this certificate may do (section 9):
        the next request is checked against C{grant}, and standing
        subscriptions (WATCH) are told, so that one now outside the
        prefixes ends.
        """
        if grant == self.grant or self.state not in OPEN:
            return
        self.log.info(
            "Rights of {peer} sha1={sha1} changed: {grant}",
            peer=self.peer, sha1=self.identity and self.identity.sha1,
            grant=grant.attributes(),
        )
        self._grant(grant)
        self.subscriptions.regrant(grant)

    def _grant(self, grant: Grant) -> None:
        self.grant = grant
        self._free = self.registry.unchecked(grant.rank, grant.prefixes is None)

    def displayName(self) -> str:
        """The name on the allow-list, else the certificate's CN (for messages)."""
        if self.grant.name:
            return self.grant.name
        return self.identity.commonName if self.identity is not None else "?"

    # -- timeouts (PROTOCOL.md sections 2 and 3) -------------------------

    def _handshakeTimedOut(self) -> None:
        if self.state is HANDSHAKING:
            self.log.info("Handshake timeout from {peer}", peer=self.peer)
            refused = self.stats.refused
            refused[REFUSED_HANDSHAKE_TIMEOUT] = refused.get(REFUSED_HANDSHAKE_TIMEOUT, 0) + 1
            self._enter(CLOSING)
            self.transport.unregisterProducer()
            self.transport.abortConnection()

    def _headTimedOut(self) -> None:
        if self.state is READY:
            self.fatal(
                f"Timeout: the request head did not arrive within "
                f"{self.config.headTimeout:g} s of its first byte"
            )

    def _idleCheck(self) -> None:
        if self.state is not READY:
            return
        idleFor = self.clock.seconds() - self._lastActivity
        busy = (
            self._inflight or self.subscriptions or self._flow.paused
            or self._parser.bodyPending
        )
        if busy or idleFor < self.config.idleTimeout:
            wait = self.config.idleTimeout - idleFor if not busy else self.config.idleTimeout
            self._timers.start(IDLE, max(wait, 0.001), self._idleCheck)
            return
        self.log.info("Idle timeout for {peer}", peer=self.peer)
        self.drainThenClose(
            wire.encodeError(
                f"Idle timeout: no request for {self.config.idleTimeout:g} s", None
            )
        )

    def _watchHead(self, headCompleted: bool) -> None:
        """
        Run the head timer while part of a head is buffered, from the first
        byte of that head; stop it once nothing is pending (or we stopped
        reading, which is not the client's delay).

        @param headCompleted: a head was completed since the last call, so
            any partial head now buffered is a new one.
        """
        pending = self._parser.headPending and not self.paused
        timers = self._timers
        running = timers.running(HEAD)
        if running and (headCompleted or not pending):
            timers.stop(HEAD)
            running = False
        if pending and not running:
            timers.start(HEAD, self.config.headTimeout, self._headTimedOut)

    # -- request bodies: the budget and the body timeout -----------------

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
        self.fatal(
            f"Timeout: no byte of the {request.size}-byte body came for {timeout:g} s "
            f"({parser.bodyMissing} bytes missing)",
            request.sequence,
        )

    def _reserveBody(self) -> None:
        """Take the pending body's size from the server-wide budget, or refuse it."""
        size = self._parser.bodyPending.size
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

    # -- input -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Feed the input to the request parser (L{wire.RequestParser}: heads
        up to the empty line, as a LineReceiver with our C{delimiter} would
        split them, and bodies of C{Size} bytes) and run each request it
        gives, until it needs more bytes, we pause, or the connection
        starts to close. What is left stays in the parser and is taken on
        resume, without waiting for new bytes. The replies of the commands
        that finish at once go out in one write.
        """
        if self.state is not READY:
            # Before admission, after QUIT, and while closing, input is
            # never executed (TLS keeps delivering after loseConnection).
            return
        parser = self._parser
        if data:
            self._lastActivity = self.clock.seconds()
            self.stats.bytesIn += len(data)
            parser.receive(data)
        if self._busyReceiving:
            # Re-entered (a command's work made the transport deliver more):
            # the loop already running takes the new bytes too.
            return
        self._busyReceiving = True
        self._replies = replies = []
        # The commands that answer at once are timed per chunk: their
        # replies are all written when the chunk is done, so each one's
        # latency is the chunk's (PROTOCOL.md: one write per chunk), and one
        # histogram update per command per chunk replaces one per request.
        self._immediate = immediate = {}
        chunkStarted = perf_counter()
        completed = False
        take, dispatch = parser.next, self._dispatch
        try:
            while not self.paused and self.state is READY:
                request = take()
                if request is None:
                    break
                completed = True
                if request.size:
                    self._bodyComplete(request)
                else:
                    dispatch(request)
        except wire.FramingError as e:
            self.fatal(e.reason, e.sequence)
        finally:
            self._busyReceiving = False
            self._replies = None
            self._immediate = None
            if replies:
                self._write(b"".join(replies) if len(replies) > 1 else replies[0])
            if immediate:
                elapsed = perf_counter() - chunkStarted
                for counts, times in immediate.items():
                    counts.latency.observeMany(elapsed, times)
        if self.state is READY:
            if parser.bodyMissing:
                self._watchBody()
            if parser.headPending or self._timers.running(HEAD):
                self._watchHead(completed)
        else:
            self._drainIfDone()

    def clearLineBuffer(self) -> bytes:
        """
        C{LineReceiver}'s API over our parser: forget the input not yet
        taken, and any partial body. Returns the input dropped.
        """
        return self._parser.clear()

    def _write(self, data: bytes) -> None:
        """
        Send C{data} unless closing. While a chunk of input is being parsed,
        replies are collected and written together when it is done.
        """
        if self.state is READY or self.state is DRAINING:  # OPEN, inlined
            self.stats.bytesOut += len(data)
            replies = self._replies
            if replies is not None:
                replies.append(data)
            else:
                self.transport.write(data)

    def quitAfterReplies(self) -> None:
        """
        QUIT: read no further requests; close once every reply due is sent
        (no grace: each request still runs to its end or its Timeout).
        """
        self.drainThenClose(b"", None)

    # -- ICommandContext ---------------------------------------------------

    def push(self, sequence: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.stats.pushes += 1
        self._write(wire.encodePush(sequence, body, headers))

    def pushFrames(self, data: bytes, count: int | None = None) -> None:
        # Whole frames of JSON bodies: "PUSH\r\n" only starts a frame.
        self.stats.pushes += data.count(b"PUSH\r\n") if count is None else count
        self._write(data)

    def unsentBytes(self) -> int:
        counter = self.__dict__.get("_unsentCounter")
        if counter is None:  # Only connections that WATCH ever ask.
            from proto.unsent import UnsentCounter

            counter = self._unsentCounter = UnsentCounter(self.transport)
        return counter()

    def congested(self) -> bool:
        return self._flow.congested

    def subscribe(
        self,
        sequence: str,
        cancel: Callable[[], None],
        regrant: Callable[[Grant], None] | None = None,
    ) -> None:
        # Once draining or closing, the table is closed: cancelled at once.
        self.subscriptions.add(sequence, cancel, regrant)

    def unsubscribe(self, sequence: str) -> bool:
        return self.subscriptions.remove(sequence)

    # -- flow control (IPushProducer, driven by the transport) -------------

    def pauseProducing(self) -> None:
        self._pause(TRANSPORT)

    def resumeProducing(self) -> None:
        self._resume(TRANSPORT)

    def stopProducing(self) -> None:
        self._pause(TRANSPORT)

    def _pause(self, why: int) -> None:
        """Stop reading for C{why} (L{proto.flowcontrol}); our stall stops the head and body timers."""
        if self.state in ENDING:
            return
        if self._flow.pause(why):
            self.paused = True
            self.transport.pauseProducing()
            self._timers.stop(HEAD)
            self._timers.stop(BODY)

    def _resume(self, why: int) -> None:
        """Lift C{why}'s pause; once none is left, read again, starting with what we hold."""
        if not self._flow.resume(why) or self.state in ENDING:
            return
        self.paused = False
        self.transport.resumeProducing()
        # Parse what we already hold now: it must not wait for new bytes.
        self.dataReceived(b"")
