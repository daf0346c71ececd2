"""
The GNP/1 server protocol: a thin Twisted shell around L{proto.wire}.

One L{GNPServerProtocol} serves one TLS connection. It is a
C{LineReceiver} with the empty line (C{\\r\\n\\r\\n}) as its delimiter,
but the framing itself (heads, bodies by Size, the head limit) is done by
L{proto.wire.RequestParser}, sans I/O; this class never touches
LineReceiver's buffer. The life of a connection::

    handshaking --(certificate admitted)--> ready --(QUIT, framing error,
         |                                    |      revocation, shutdown)
         |                                    v
         |                                 draining --(every request
         |                                    |         accepted answered)
         +--(refused / timeout)----------> closing <----+
                                              |
                                           closed

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

Replies are written in completion order: a command that returns a
Deferred does not hold back the requests after it. Flow control: the
protocol is the transport's push producer, so when the client stops
reading and unsent replies pass the transport's high-water mark, the
protocol stops reading (and parsing) until they drain; on resume it first
parses what it already holds.

Pitfalls this class guards against (see C{shared/TWISTED_NOTES.md}):
input keeps arriving over TLS after C{loseConnection} (so every input path
checks the state), a TLS close can hang forever (so every close arms an
abort timer), and the producer must be unregistered before a close.
"""

from __future__ import annotations

import datetime
from time import perf_counter
from types import MappingProxyType
from typing import Callable, Iterable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from proto import wire
from proto.admission import Identity, identityOfDER, judge
from proto.subscriptions import Subscriptions
from proto.commands.base import CommandError, ICommandContext, Result
from proto.permissions import NOTHING, Grant
from proto.stats import REFUSED_HANDSHAKE_TIMEOUT, UNKNOWN_COMMAND
from proto.tls import peerCertificateDER

_encodeReply = wire.encodeReply

HANDSHAKING = "handshaking"
READY = "ready"
DRAINING = "draining"
CLOSING = "closing"
CLOSED = "closed"

#: Pause reasons. The transport's and our own are kept apart, so that one
#: resume cannot undo the other pause.
_TRANSPORT = "transport"
_NO_PAUSES: frozenset[str] = frozenset()
_NO_INFLIGHT: Mapping = MappingProxyType({})
_INFLIGHT = "in-flight"

#: Every timer a connection may run; all are cancelled when it closes.
_TIMERS = (
    "_handshakeTimer", "_headTimer", "_idleTimer", "_bodyTimer", "_drainTimer", "_abortTimer",
    "_shutdownTimer",
)

#: The reason given to requests that arrive during a server shutdown, and
#: in the final frame of each connection (issue 10: graceful drain).
SHUTDOWN_REASON = "Server is shutting down"


def _stop(timer) -> None:
    """Cancel C{timer} (a DelayedCall or C{None}) if it has not run."""
    if timer is not None and timer.active():
        timer.cancel()


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
class GNPServerProtocol(LineReceiver):
    """
    Serves one client. Built by L{proto.server.GNPServerFactory}, whose
    C{config}, C{registry}, C{clock}, C{store} and C{hub} it uses.
    """

    delimiter = wire.HEAD_END
    log = Logger()

    # Defaults kept on the class, set on an instance only when they change:
    # fewer than 30 instance attributes keep CPython's compact shared-key
    # instance dictionary (about 1.3 KiB less per idle connection, measured).
    #: Bytes of the budget for partial bodies this body holds (0: none
    #: yet); C{_bodyRefused}: the body did not fit, its bytes are dropped
    #: as they come and its request is answered ERR.
    _bodyHeld = 0
    _bodyRefused = False
    _bodyLast = 0.0
    _finalFrame = b""
    _replies: list[bytes] | None = None
    #: Why reading is paused (an immutable set, replaced on change: most
    #: connections never pause, and they all share the empty one).
    _pauses: frozenset[str] = _NO_PAUSES
    #: Commands in flight, by Sequence: a shared, read-only empty table
    #: until the first one (most requests finish at once; see _track).
    _inflight: Mapping[str, defer.Deferred] = _NO_INFLIGHT
    #: While a chunk is parsed: C{CommandStats} -> replies sent at once (see dataReceived).
    _immediate: dict | None = None
    _lastActivity = 0.0
    _handshakeTimer = None
    _headTimer = None
    _idleTimer = None
    _bodyTimer = None
    _drainTimer = None
    _abortTimer = None
    _shutdownTimer = None
    #: Set by L{shutdown}: the final frame; new requests then get ERR.
    _shutdownFrame: bytes | None = None
    #: For CLIENTS: requests received on this connection.
    requestCount = 0
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
        self.state = HANDSHAKING
        self.identity: Identity | None = None
        self.grant: Grant = NOTHING
        self._free: dict = {}  # the commands this grant runs unchecked
        self.peer = "?"
        self.subscriptions = Subscriptions(self)

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = printablePeer(self.transport.getPeer())
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.transport.registerProducer(self, True)
        self._since = perf_counter()
        self.factory.connectionOpened(self)
        self._handshakeTimer = self.clock.callLater(
            self.config.handshakeTimeout, self._handshakeTimedOut
        )

    def handshakeCompleted(self) -> None:
        # Once admitted, the handshake timer becomes the idle timer: one
        # DelayedCall per connection instead of two (a cancelled one stays
        # in the reactor's heap, and in memory, until its time comes).
        timer, self._handshakeTimer = self._handshakeTimer, None
        if self.state != HANDSHAKING:
            _stop(timer)
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
            _stop(timer)
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
        self.state = READY
        self._since = self.clock.seconds()
        self.stats.certificateSeen(who)
        self.factory.connectionAdmitted(self)
        self.transport.write(wire.encodeGreeting())
        self._lastActivity = self.clock.seconds()
        if not self.config.idleTimeout:
            _stop(timer)
        elif timer is not None and timer.active():
            timer.reset(self.config.idleTimeout)  # fires _handshakeTimedOut: see there
            self._idleTimer = timer
        else:
            self._idleTimer = self.clock.callLater(self.config.idleTimeout, self._idleCheck)

    def connectionLost(self, reason=None) -> None:
        self.state = CLOSED
        for name in _TIMERS:
            self._cancelTimer(name)
        self._dropBody()
        self._cancelWork()
        self.factory.connectionClosed(self)

    def _cancelWork(self) -> None:
        """Cancel every command in flight and every standing subscription."""
        inflight, self._inflight = self._inflight, _NO_INFLIGHT
        for d in inflight.values():
            d.cancel()
        self._cancelSubscriptions()

    def _cancelSubscriptions(self) -> None:
        """Draining or closing: end every subscription, and refuse new ones."""
        self.subscriptions.close()

    def _cancelTimer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            setattr(self, name, None)
            if timer.active():
                timer.cancel()

    def _closeWith(self, data: bytes) -> None:
        """
        Send C{data} (a refusal or a fatal error), then close: stop parsing,
        stop producing, write, close, and arm an abort in case the peer
        never answers TLS's close_notify.
        """
        if self.state in (CLOSING, CLOSED):
            return
        admitted = self.state is READY or self.state is DRAINING
        replies, self._replies = self._replies, None
        if replies:
            # Replies already due go out before the final frame.
            self.transport.write(b"".join(replies))
            del replies[:]
        self.state = CLOSING
        self.clearLineBuffer()
        for name in _TIMERS:
            if name != "_abortTimer":
                self._cancelTimer(name)
        self._dropBody()
        self._cancelWork()
        self.transport.unregisterProducer()
        if self._pauses:
            # Keep reading so that TLS sees the peer's close_notify.
            self._pauses = _NO_PAUSES
            self.paused = False
            self.transport.resumeProducing()
        if data:
            self.stats.bytesOut += len(data)
            if admitted and data.startswith(b"ERR"):
                self.stats.errors += 1
            self.transport.write(data)
        self.transport.loseConnection()
        self._abortTimer = self.clock.callLater(self.config.closeGrace, self._abort)

    def _abort(self) -> None:
        self._abortTimer = None
        self.transport.abortConnection()

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
        self.state = DRAINING
        self._finalFrame = finalFrame
        self.clearLineBuffer()
        self._dropBody()
        for name in ("_headTimer", "_idleTimer"):
            self._cancelTimer(name)
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
        frame = wire.encodeError(SHUTDOWN_REASON, None)
        if self.state is not READY or not self._inflight:
            self.drainThenClose(frame, grace)
            return
        self._shutdownFrame = frame
        self._cancelTimer("_idleTimer")
        self._shutdownTimer = self.clock.callLater(grace, self._shutdownGraceOver)

    def _shutdownGraceOver(self) -> None:
        self._shutdownTimer = None
        if self.state is READY:
            # Cancels what still runs (each answered), then the final frame.
            self.drainThenClose(self._shutdownFrame, 0)

    @property
    def admittedAt(self) -> float:
        """When the connection was admitted (the clock's seconds; CLIENTS)."""
        return self._since if self.state is not HANDSHAKING else 0.0

    def _armDrainGrace(self, grace: float) -> None:
        timer = self._drainTimer
        deadline = self.clock.seconds() + grace
        if timer is not None and timer.active():
            if timer.getTime() <= deadline:
                return
            timer.cancel()
        self._drainTimer = self.clock.callLater(grace, self._drainGraceOver, grace)

    def _drainGraceOver(self, grace: float) -> None:
        """Cancel what still runs; each is answered (see L{_failureReply})."""
        self._drainTimer = None
        if self.state is not DRAINING:
            return
        self.log.info(
            "Closing {peer}: {count} request(s) did not finish within the "
            "{grace:g} s grace, cancelled", peer=self.peer, count=len(self._inflight),
            grace=grace,
        )
        for d in list(self._inflight.values()):
            d.cancel()
        self._drainIfDone()

    def _drainIfDone(self) -> None:
        """Close once draining and every accepted request is answered."""
        if self.state is DRAINING and not self._inflight and self._replies is None:
            self._cancelTimer("_drainTimer")
            self._closeWith(self._finalFrame)

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
        if grant == self.grant or self.state not in (READY, DRAINING):
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

    # -- timers ----------------------------------------------------------

    def _handshakeTimedOut(self) -> None:
        if self._handshakeTimer is None and self._idleTimer is not None:
            # Admitted: this timer was kept as the idle timer (handshakeCompleted).
            self._idleCheck()
            return
        self._handshakeTimer = None
        if self.state == HANDSHAKING:
            self.log.info("Handshake timeout from {peer}", peer=self.peer)
            refused = self.stats.refused
            refused[REFUSED_HANDSHAKE_TIMEOUT] = refused.get(REFUSED_HANDSHAKE_TIMEOUT, 0) + 1
            self.state = CLOSING
            self.transport.unregisterProducer()
            self.transport.abortConnection()

    def _headTimedOut(self) -> None:
        self._headTimer = None
        if self.state == READY:
            self.fatal(
                f"Timeout: the request head did not arrive within "
                f"{self.config.headTimeout:g} s of its first byte"
            )

    def _idleCheck(self) -> None:
        self._idleTimer = None
        if self.state != READY:
            return
        idleFor = self.clock.seconds() - self._lastActivity
        busy = self._inflight or self.subscriptions or self._pauses or self._parser.bodyPending
        if busy or idleFor < self.config.idleTimeout:
            wait = self.config.idleTimeout - idleFor if not busy else self.config.idleTimeout
            self._idleTimer = self.clock.callLater(max(wait, 0.001), self._idleCheck)
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
        timer = self._headTimer
        if timer is not None and (headCompleted or not pending):
            self._headTimer = None
            if timer.active():
                timer.cancel()
            timer = None
        if pending and timer is None:
            self._headTimer = self.clock.callLater(
                self.config.headTimeout, self._headTimedOut
            )

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
        if self._bodyTimer is None and not self.paused:
            self._bodyTimer = self.clock.callLater(
                self.config.bodyTimeout, self._bodyTimerFired
            )

    def _bodyTimerFired(self) -> None:
        self._bodyTimer = None
        parser = self._parser
        if self.state is not READY or not parser.bodyMissing or self.paused:
            return
        quiet = self.clock.seconds() - self._bodyLast
        timeout = self.config.bodyTimeout
        if quiet < timeout:
            self._bodyTimer = self.clock.callLater(timeout - quiet, self._bodyTimerFired)
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
        if self._bodyTimer is not None:
            self._cancelTimer("_bodyTimer")

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
            if self._headTimer is not None or parser.headPending:
                self._watchHead(completed)
        else:
            self._drainIfDone()

    def clearLineBuffer(self) -> bytes:
        """
        C{LineReceiver}'s API over our parser: forget the input not yet
        taken, and any partial body. Returns the input dropped.
        """
        return self._parser.clear()

    # -- commands --------------------------------------------------------

    def _dispatch(self, request: wire.Request) -> None:
        # Inside a chunk (dataReceived), replies sent at once are timed at
        # the chunk's end (started is None); else from now.
        started = None if self._immediate is not None else perf_counter()
        sequence = request.sequence
        self.requestCount += 1
        counts = self.stats.commands.get(request.command)
        if counts is None:
            counts = self.stats.command(UNKNOWN_COMMAND)
        counts.received += 1
        if self._shutdownFrame is not None:
            self._writeError(wire.encodeError(SHUTDOWN_REASON, sequence), counts, started)
            return
        if request.error is not None:
            self._writeError(wire.encodeError(request.error, sequence), counts, started)
            return
        if sequence in self._inflight:
            self._writeError(
                wire.encodeError(f"Sequence already in flight: {sequence}", sequence),
                counts, started,
            )
            return
        # Section 9: the commands this certificate may run without a check
        # (its level suffices, no prefixes to test) are found at once; the
        # others are checked before they run.
        handler = self._free.get(request.command)
        if handler is None:
            command = self._commands.get(request.command)
            if command is None:
                self._writeError(
                    wire.encodeError(f"Unknown command: {request.command}", sequence),
                    counts, started,
                )
                return
            refusal = self._refusal(command, request)
            if refusal is not None:
                self._writeError(wire.encodeError(refusal, sequence), counts, started)
                return
            handler = command.handler
        try:
            result = handler(self, request)
        except Exception:
            self._writeError(self._failureReply(Failure(), request), counts, started)
            return
        # Deferred is generic (an ABC), so isinstance() on it is slow: the
        # common result, bytes, skips that check.
        if type(result) is bytes:
            # The hot path: a body, encoded without the generic helper.
            self._write(_encodeReply(sequence, result))
            counts.ok += 1
            if started is None:  # inline L{_timed}: this is the hot path
                immediate = self._immediate
                immediate[counts] = immediate.get(counts, 0) + 1
            else:
                counts.latency.observe(perf_counter() - started)
            return
        if isinstance(result, defer.Deferred):
            self._track(request, result, counts, perf_counter() if started is None else started)
            return
        self._write(self._successReply(result, sequence))
        counts.ok += 1
        self._timed(counts, started)

    def _timed(self, counts, started: float | None) -> None:
        """Note a reply's latency: now, or (started None) at the chunk's end."""
        if started is None:
            immediate = self._immediate
            immediate[counts] = immediate.get(counts, 0) + 1
        else:
            counts.latency.observe(perf_counter() - started)

    def _writeError(self, data: bytes, counts, started: float | None) -> None:
        """Send a per-request C{ERR} reply and count it (L{proto.stats})."""
        self._write(data)
        counts.err += 1
        self._timed(counts, started)
        self.stats.errors += 1

    def _refusal(self, command, request: wire.Request) -> str | None:
        """
        Why this connection's certificate may not make C{request}, or
        C{None} (PROTOCOL.md section 9: the command's level, then each id
        it touches against the prefixes).
        """
        try:
            ids = () if command.ids is None else tuple(command.ids(request))
        except Exception:
            self.log.failure(
                "Ids of {command} from {peer} could not be found",
                command=request.command, peer=self.peer,
            )
            return (
                f"Internal error while checking the rights for {request.command} "
                "(details are in the server log)"
            )
        return self.grant.refusal(request.command, command.rank, ids, self.displayName())

    def _track(self, request: wire.Request, d: defer.Deferred, counts, started: float) -> None:
        sequence = request.sequence
        if request.timeout is not None:
            d.addTimeout(request.timeout, self.clock)
        inflight = self._inflight
        if inflight is _NO_INFLIGHT:
            inflight = self._inflight = {}
        inflight[sequence] = d
        if len(self._inflight) >= self.config.maxInflight:
            self._pause(_INFLIGHT)

        def done(result):
            if self._inflight.get(sequence) is d:
                del self._inflight[sequence]
            if isinstance(result, Failure):
                if self.state in (CLOSING, CLOSED) and result.check(defer.CancelledError):
                    return None
                self._writeError(self._failureReply(result, request), counts, started)
            else:
                self._write(self._successReply(result, sequence))
                counts.ok += 1
                counts.latency.observe(perf_counter() - started)
            if _INFLIGHT in self._pauses and len(self._inflight) < self.config.maxInflight // 2:
                self._resume(_INFLIGHT)
            if self.state is DRAINING:
                self._drainIfDone()
            elif self._shutdownFrame is not None and not self._inflight:
                self._cancelTimer("_shutdownTimer")
                self.drainThenClose(self._shutdownFrame, 0)
            return None

        d.addBoth(done)

    @staticmethod
    def _successReply(result: bytes | Result | None, sequence: str) -> bytes:
        """The C{OK} reply for what a command returned (bytes: the body)."""
        if type(result) is bytes:
            return wire.encodeReply(sequence, result)
        if result is None:
            return wire.encodeReply(sequence)
        return wire.encodeReply(sequence, result.body, result.headers)

    def _failureReply(self, failure: Failure, request: wire.Request) -> bytes:
        if failure.check(CommandError):
            reason = failure.value.reason
        elif failure.check(defer.TimeoutError):
            reason = (
                f"Timeout: {request.command} did not finish within "
                f"{request.timeout:g} s and was cancelled"
            )
        elif failure.check(defer.CancelledError):
            # Only a drain's grace cancels a command on an open connection.
            reason = (
                f"Cancelled: the connection is closing and {request.command} did "
                "not finish within the grace period"
            )
        else:
            self.log.failure(
                "Command {command} from {peer} failed", failure,
                command=request.command, peer=self.peer,
            )
            reason = f"Internal error while running {request.command} (details are in the server log)"
        return wire.encodeError(reason, request.sequence)

    def _write(self, data: bytes) -> None:
        """
        Send C{data} unless closing. While a chunk of input is being parsed,
        replies are collected and written together when it is done.
        """
        if self.state is READY or self.state is DRAINING:
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

    def pushFrames(self, data: bytes) -> None:
        # Whole frames of JSON bodies: "PUSH\r\n" only starts a frame.
        self.stats.pushes += data.count(b"PUSH\r\n")
        self._write(data)

    def unsentBytes(self) -> int:
        counter = self.__dict__.get("_unsentCounter")
        if counter is None:  # Only connections that WATCH ever ask.
            from proto.unsent import UnsentCounter

            counter = self._unsentCounter = UnsentCounter(self.transport)
        return counter()

    def congested(self) -> bool:
        return _TRANSPORT in self._pauses

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
        self._pause(_TRANSPORT)

    def resumeProducing(self) -> None:
        self._resume(_TRANSPORT)

    def stopProducing(self) -> None:
        self._pause(_TRANSPORT)

    def _pause(self, why: str) -> None:
        if self.state in (CLOSING, CLOSED):
            return
        first = not self._pauses
        self._pauses = self._pauses | {why}
        if first:
            self.paused = True
            self.transport.pauseProducing()
            self._cancelTimer("_headTimer")
            self._cancelTimer("_bodyTimer")

    def _resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses = self._pauses - {why}
        if self._pauses or self.state in (CLOSING, CLOSED):
            return
        self.paused = False
        self.transport.resumeProducing()
        # Parse what we already hold now: it must not wait for new bytes.
        self.dataReceived(b"")
