"""
Lever 2: one TLS flush per reactor turn for all TLS connections.

Twisted's L{BufferingTLSTransport} collects small writes and encrypts them
on the next reactor turn, through one C{clock.callLater(0)} per connection
with output: with 50 busy connections that is 50 C{DelayedCall} objects
made, pushed on the timer heap and popped every turn. L{TurnFlusher}
keeps one list of connections with output and one C{callLater(0)} for
all of them; each connection still sends its own bytes, once per turn.

Flushing at the end of each C{dataReceived} instead was measured 23%
slower in the 50x1 ECHO row: every reply then wakes the peer on its own,
where a turn's replies otherwise go out together after the turn's input
is read. So the flush stays on the next turn, as in Twisted.

What is kept from Twisted: writes past C{MAX_BUFFER_SIZE} (64 kB) are
encrypted at once; C{loseConnection} flushes first; C{connectionLost}
flushes what is pending and drops later writes; C{abortConnection} drops
what is pending (as in Twisted: the aggregator's bytes never reach TLS,
and TCP drops its own).

L{FastTLSTransport} also turns on L{proto.speed.writethrough} for the TCP
connection under it. Relies on C{twisted.protocols.tls} internals
(C{_AggregateSmallWrites}, C{BufferingTLSTransport._aggregator}, the
factory's C{_clock}); pyproject.toml pins the Twisted range.
"""

from __future__ import annotations

import weakref
from typing import Any

from OpenSSL._util import lib
from OpenSSL.SSL import Error, WantReadError
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
    _AggregateSmallWrites,
)

from proto.speed.setup import NoDelay, acceptAnyCertificate, providesLike
from proto.speed.tlsrecords import DirectRecords
from proto.speed.writethrough import enableWriteThrough
from proto.timers import endOfTurn

log = Logger()


class TurnFlusher:
    """
    Flushes every L{TurnAggregator} that has output, once, at the end of
    this turn of C{clock}. One per clock (L{flusherFor}).

    On L{proto.speed.reactor.QuietEPollReactor} the flush is one
    C{callAfterEvents}: it runs as soon as the poll's events are handled,
    before the turn's timed calls (a write made by a timed call is
    flushed right before the next poll), where a C{callLater(0)} would
    have run among them. At one client that spares each request a
    C{DelayedCall} (made, pushed on the timer heap, popped, run by
    C{runUntilCurrent}), and its reply leaves before the reactor's own
    work of the turn rather than after it. Other clocks (another reactor,
    a test's C{Clock}) keep the C{callLater(0)}.
    """

    def __init__(self, clock) -> None:
        self._clock = clock
        self._due: list[TurnAggregator] = []
        self._scheduled = False
        # On the quiet reactor, right after the poll's events (see
        # QuietEPollReactor.callAfterEvents); else at the end of the turn.
        afterEvents = getattr(clock, "callAfterEvents", None)
        self._endOfTurn = afterEvents if afterEvents is not None else endOfTurn(clock)

    def add(self, aggregator: "TurnAggregator") -> None:
        self._due.append(aggregator)
        if not self._scheduled:
            self._scheduled = True
            self._endOfTurn(self.flushAll)

    def flushAll(self) -> None:
        self._scheduled = False
        due, self._due = self._due, []
        for aggregator in due:
            aggregator._queued = False
            try:
                aggregator.flush()
            except Exception:
                # One connection's failure must not keep the others' bytes.
                log.failure("Flushing TLS output failed")


_flushers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def flusherFor(clock) -> TurnFlusher:
    """The L{TurnFlusher} of C{clock} (one per reactor, or per test clock)."""
    flusher = _flushers.get(clock)
    if flusher is None:
        flusher = _flushers[clock] = TurnFlusher(clock)
    return flusher


class TurnAggregator:
    """
    Twisted's small-write aggregator (C{_AggregateSmallWrites}: the same
    C{write}/C{flush}/C{close}), scheduled through a shared L{TurnFlusher}
    instead of a C{callLater(0)} of its own, and with C{__slots__} (one per
    TLS connection: about 0.3 KiB less each than an instance dictionary).
    """

    __slots__ = ("_write", "_flusher", "_buffer", "_bufferLeft", "_queued")
    MAX_BUFFER_SIZE = _AggregateSmallWrites.MAX_BUFFER_SIZE

    def __init__(self, write, flusher: TurnFlusher) -> None:
        self._write = write
        self._flusher = flusher
        self._buffer: list[bytes] = []
        self._bufferLeft = self.MAX_BUFFER_SIZE
        self._queued = False

    def write(self, data: bytes) -> None:
        self._buffer.append(data + b"")
        self._bufferLeft -= len(data)
        if self._bufferLeft < 0:
            self.flush()
            return
        if not self._queued:
            self._queued = True
            self._flusher.add(self)

    def flush(self) -> None:
        """Encrypt and send what is buffered (as Twisted's)."""
        if self._buffer:
            self._bufferLeft = self.MAX_BUFFER_SIZE
            self._write(b"".join(self._buffer))
            del self._buffer[:]

    def close(self) -> None:
        # The flusher may still hold us; with an empty buffer it is a no-op.
        self.flush()


_doHandshake = lib.SSL_do_handshake
_sslError = lib.SSL_get_error
_WANT_READ = lib.SSL_ERROR_WANT_READ


class FastTLSTransport(DirectRecords, BufferingTLSTransport):
    """
    Twisted's buffering TLS transport with the shared per-turn flush, over
    a TCP connection that writes through, with TLS records read and
    written by L{proto.speed.tlsrecords.DirectRecords}, and one more
    saving: the greeting joins the handshake's last flight. What the
    protocol writes in C{handshakeCompleted} (C{OK}) is encrypted at once,
    so that it leaves in the same TCP segment as OpenSSL's session
    tickets, instead of one more send on the next reactor turn (the client
    waits for it: one wake-up less per connection).
    """

    #: Set once C{setTcpNoDelay(False)} was called on this connection.
    _noDelayOff = False

    def __init__(self, factory, wrappedProtocol, _connectWrapped: bool = True) -> None:
        TLSMemoryBIOProtocol.__init__(self, factory, wrappedProtocol, _connectWrapped)
        # Duck-typed like Twisted's aggregator (write/flush/close, _bufferLeft).
        self._aggregator = TurnAggregator(  # type: ignore[assignment]
            self._sendRecords, flusherFor(factory._clock)
        )
        self.write = self._aggregator.write  # type: ignore[method-assign]  # as Twisted does

    def makeConnection(self, transport) -> None:
        """
        C{TLSMemoryBIOProtocol.makeConnection}, less one loop: it calls
        C{directlyProvides} once per interface of the transport (each call
        replacing the previous one), and C{ProtocolWrapper.makeConnection}
        right after declares all of them at once, so the loop's work is
        always undone. It cost about a tenth of the Python time of a
        connection's set-up (cProfile, handshake row). Everything else is
        done in the same order.
        """
        enableWriteThrough(transport)
        if not self._connectWrapped:
            super().makeConnection(transport)
            return
        factory: Any = self.factory  # a FastTLSFactory
        tls = self._tlsConnection = factory._creatorCallable(self)
        if factory.acceptAnyCertificate:
            acceptAnyCertificate(tls)
        self._appSendBuffer = []
        factory.noDelay.check(transport)
        # ProtocolWrapper.makeConnection: directlyProvides(all of
        # providedBy(transport)) (from proto.speed.setup's cache),
        # Protocol.makeConnection, registerProtocol, then the application
        # protocol's makeConnection:
        providesLike(self, transport)
        Protocol.makeConnection(self, transport)
        factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)
        self._checkHandshakeStatus()

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        The TCP transport's C{setTcpNoDelay}, which has nothing to do when
        turning it on on a socket that inherited it from its port
        (L{proto.speed.setup.inheritNoDelay}).
        """
        factory: Any = self.factory
        if enabled and not self._noDelayOff and factory.noDelay.inherited:
            return
        if self._noDelayOff is bool(enabled):  # (an attribute only once it changes)
            self._noDelayOff = not enabled
        transport: Any = self.transport
        transport.setTcpNoDelay(enabled)

    def _checkHandshakeStatus(self) -> None:
        """
        Twisted's (C{TLSMemoryBIOProtocol._checkHandshakeStatus}, 26.x),
        with the handshake step called without pyOpenSSL's wrapper where
        that can only differ by the exception it builds: a step that waits
        for the peer (twice per handshake) costs 0.5 instead of 2 us. The
        wrapper's checks before that exception (problems its Python
        callbacks recorded) have nothing to find when the certificate is
        accepted in C (L{proto.speed.setup}) and the context has no ALPN or
        OCSP callback; otherwise, and for every other outcome, pyOpenSSL
        raises exactly what C{do_handshake} would.
        """
        if self._handshakeDone:
            return super()._checkHandshakeStatus()
        if self._aborted:
            return
        tls = self._tlsConnection
        ssl = tls._ssl
        factory: Any = self.factory
        context = tls._context
        quiet = (
            factory.acceptAnyCertificate
            and context._alpn_select_helper is None
            and context._ocsp_helper is None
        )
        result = _doHandshake(ssl)
        if result <= 0 or not quiet:
            if result <= 0 and quiet and _sslError(ssl, result) == _WANT_READ:
                self._flushSendBIO()
                return
            try:
                # What do_handshake does after the step (also on success).
                tls._raise_ssl_error(ssl, result)
            except WantReadError:
                self._flushSendBIO()
                return
            except Error:
                self._tlsShutdownFinished(Failure())
                return
        self._handshakeDone = True
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            wrapped: Any = self.wrappedProtocol
            aggregator = self._aggregator
            if isinstance(aggregator, TurnAggregator) and not aggregator._queued:
                # What handshakeCompleted writes (the greeting) is flushed
                # below: it need not be queued with the turn's flusher as
                # well (a callLater(0) and a reactor turn per connection).
                aggregator._queued = True
                try:
                    wrapped.handshakeCompleted()
                finally:
                    aggregator._queued = False
            else:
                wrapped.handshakeCompleted()
        if not self._lostTLSConnection:
            # handshakeCompleted has run: its greeting goes out now, with
            # the tickets OpenSSL just wrote (sent by our caller's flush).
            self._aggregator.flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # Twisted keeps a producer registered when the connection is lost
        # under it (the peer closed): the application protocol (the
        # producer) -> this transport -> Twisted's _ProducerMembrane -> the
        # protocol is then a reference cycle, and every connection's
        # objects (its SSL object too) waited for the garbage collector.
        self._producer = None


class FastTLSFactory(TLSMemoryBIOFactory):
    """
    C{TLSMemoryBIOFactory} building L{FastTLSTransport}s.

    @ivar acceptAnyCertificate: the connection creator's contexts accept
        any client certificate (L{proto.tls.ServerTLS.acceptsAnyCertificate}),
        so each connection may do so in C (L{proto.speed.setup}).
    @ivar noDelay: whether this factory's port hands out sockets with
        C{TCP_NODELAY} on (L{proto.speed.setup.inheritNoDelay}).
    """

    protocol = FastTLSTransport

    def __init__(self, contextFactory, isClient: bool, wrappedFactory, clock=None) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self.acceptAnyCertificate = not isClient and bool(
            getattr(contextFactory, "acceptsAnyCertificate", False)
        )
        self.noDelay = NoDelay()
