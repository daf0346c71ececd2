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
    table, C{Timeout}, permission checks (sections 4, 5 and 9), with the
    reply mapping in L{proto.replymap};
  - flow control: L{proto.flowcontrol.FlowControl}, pure decisions on
    pause reasons and the in-flight limit; this class is the transport's
    push producer and carries them out;
  - timers: L{proto.timers.Timers}, the handshake, head, idle, body,
    drain, shutdown and abort timeouts;
  - states: L{proto.states}, one transition table (handshaking, ready,
    draining, closing, closed); every change goes through L{_enter};
  - how a connection ends (drain, final frame, close, abort):
    L{proto.ending.Ending} (mixed in; sections 4 and 5);
  - request bodies' memory budget and timeout: L{proto.bodies.BodyBudget}
    (mixed in; section 3);
  - subscriptions (WATCH, REMIND): L{proto.subscriptions.Subscriptions};
  - TLS and admission: L{proto.tls} (the context, session resumption) and
    L{proto.admission} (the allow-list's judgement, section 2), called
    from C{handshakeCompleted} in L{proto.admitting.Admitting} (mixed in:
    the greeting or refusal, the Admitted/Refused lines, C{setGrant}).

What stays here is the connection's life and the glue: feeding
the parser and writing the replies of one input chunk in one write
(output coalescing), the timeouts' handlers, carrying out flow control's
decisions as the transport's push producer, and the command context
(C{ICommandContext}) that commands see.

Pitfalls this class guards against (see C{shared/TWISTED_NOTES.md}):
input keeps arriving over TLS after C{loseConnection} (so every input path
checks the state: nothing but C{ready} executes input), and the producer
must be unregistered before a close (L{proto.ending}).
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from proto import wire
from proto.admission import Identity
from proto.admitting import ADMITTED, Admitting, _logInfo, fastLogFor, printablePeer
from proto.commands.base import Handler, ICommandContext
from proto.bodies import BodyBudget
from proto.dispatch import Dispatcher
from proto.ending import SHUTDOWN_REASON, Ending
from proto.flowcontrol import INFLIGHT, TRANSPORT, FlowControl
from proto.permissions import NOTHING, Grant
from proto.states import CLOSED, CLOSING, DRAINING, ENDING, HANDSHAKING, READY, advance
from proto.stats import CommandStats
from proto.subscriptions import Subscriptions
from proto.timers import BODY, HANDSHAKE, HEAD, IDLE, Timers

if TYPE_CHECKING:
    from proto.server import GNPServerFactory

__all__ = [
    "GNPServerProtocol", "SHUTDOWN_REASON", "printablePeer", "ADMITTED", "_logInfo",
    "HANDSHAKING", "READY", "DRAINING", "CLOSING", "CLOSED",
]


@implementer(IHandshakeListener, ICommandContext)
class GNPServerProtocol(LineReceiver, Admitting, Dispatcher, Ending, BodyBudget):
    """
    Serves one client. Built by L{proto.server.GNPServerFactory}, whose
    C{config}, C{registry}, C{clock}, C{store} and C{hub} it uses.
    """

    delimiter = wire.HEAD_END
    log = Logger()
    #: The TLS transport (C{TLSMemoryBIOProtocol}, or proto.speed's): an
    #: ITCPTransport that is also our push producer's consumer, pauses and
    #: resumes reading, and aborts. Twisted's own annotation
    #: (C{ITransport | None}) names none of that.
    transport: Any

    # Defaults kept on the class, set on an instance only when they change:
    # fewer than 30 instance attributes keep CPython's compact shared-key
    # instance dictionary (about 1.3 KiB less per idle connection, measured).
    # The mixins keep theirs (in-flight table, body budget, ...) too.
    #: See L{proto.states}; changed only by L{_enter}.
    state = HANDSHAKING
    #: While a chunk of input is parsed: the replies to write at its end.
    _replies: list[bytes] | None = None
    _lastActivity = 0.0
    #: C{perf_counter()} at connectionMade, then (admitted) the clock's
    #: seconds at admission: one attribute for both (see above).
    _since = 0.0

    def __init__(self, factory: GNPServerFactory) -> None:
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
        self._free: Mapping[str, Handler] = {}  # the commands this grant runs unchecked
        self.peer = "?"
        self.subscriptions = Subscriptions(self)

    def _enter(self, state: str) -> None:
        """Move to C{state}; L{proto.states.IllegalTransition} if that is no move."""
        self.state = advance(self.state, state)

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        # self.peer is set at the handshake's end (or its timeout), the
        # first time a log line names it: getPeer() once per connection.
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            setNoDelay(True)
        self.transport.registerProducer(self, True)
        self._since = perf_counter()
        self.factory.connectionOpened(self)
        self._timers.start(HANDSHAKE, self.config.handshakeTimeout, self._handshakeTimedOut)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._enter(CLOSED)
        self._timers.stopAll()
        self._dropBody()
        self._cancelWork()
        self.subscriptions.detach()
        self.factory.connectionClosed(self)

    # -- timeouts (PROTOCOL.md sections 2 and 3) -------------------------

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
        replies: list[bytes] = []
        self._replies = replies
        # The commands that answer at once are timed per chunk: their
        # replies are all written when the chunk is done, so each one's
        # latency is the chunk's (PROTOCOL.md: one write per chunk), and one
        # histogram update per command per chunk replaces one per request.
        immediate: dict[CommandStats, int] = {}
        self._immediate = immediate
        chunkStarted = perf_counter()
        completed = False
        take, dispatchMany = parser.nextMany, self._dispatchMany
        try:
            while not self.paused and self.state is READY:
                requests = take()
                if not requests:
                    break
                completed = True
                if requests[0].size:
                    # A request with a body comes alone.
                    self._bodyComplete(requests[0])
                    continue
                done = dispatchMany(requests)
                if done < len(requests) and self.state is READY:
                    # Paused mid-batch: the rest runs on resume. (Else
                    # ending: the rest is dropped, as the input after it
                    # is: clearLineBuffer.)
                    parser.unread(requests[done:])
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
            if self._timers.calls[HEAD] is not None or parser.headPending:  # running(HEAD), inlined
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
            replies = self._replies
            if replies is not None:
                replies.append(data)  # counted when the chunk's write goes out
            else:
                self.stats.bytesOut += len(data)
                self.transport.write(data)

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

    # -- flow control ----------------------------------------------------
    # The transport drives IPushProducer, the dispatcher the in-flight
    # limit; the decisions are proto.flowcontrol's, this carries them out.

    def pauseProducing(self) -> None:
        self._pause(TRANSPORT)

    def resumeProducing(self) -> None:
        self._resume(TRANSPORT)

    def stopProducing(self) -> None:
        # The transport is gone for good: Twisted calls this as the TCP
        # connection is lost, right before connectionLost (which stops the
        # timers; the reactor stops reading). Input stops being executed,
        # as on a pause, without a pause's calls into the dead transport.
        if self.state not in ENDING and self._flow.pause(TRANSPORT):
            self.paused = True

    def _requestTracked(self, inflight: int) -> None:
        # Dispatcher hook: too many requests running stops reading.
        if self._flow.tooManyInflight(inflight):
            self._pause(INFLIGHT)

    def _requestAnswered(self, inflight: int) -> None:
        # Dispatcher hook: a request running in the background got its reply.
        if self._flow.fewEnoughInflight(inflight):
            self._resume(INFLIGHT)
        self._endIfDone()

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

#: The Admitted line of this class's connections is made directly
#: (L{proto.admitting._logInfo}), from its logger bound once.
fastLogFor(GNPServerProtocol)
