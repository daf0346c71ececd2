"""
The Twisted GNP/1 client.

    tls = clientTLS("client.pem", "client.key", pin=serverThumbprint)
    client = yield connect(reactor, "tcp:localhost:4433", tls)
    reply = yield client.get("employees/1-A", include=["ReportsTo"])
    print(reply.json())

L{connect} fires once the server has admitted us (greeting C{OK}) with a
L{GNPClientProtocol}; a refusal fails it with L{Refused}, a server whose
certificate is not the trusted one with L{ThumbprintMismatch} or
L{CertificateNotTrusted}.

Requests: L{GNPClientProtocol.request} numbers each request itself, sends
it at once (any number may be in flight) and returns a Deferred that fires
with a L{Reply} for C{OK} or fails with L{ServerError} for C{ERR}. Replies
are matched by Sequence, so they may come back in any order.

Pushes: a request that asks for C{PUSH} frames (C{WATCH}, C{REMIND}) is
given an C{onPush} callable; every C{PUSH} carrying that request's Sequence
is passed to it as a L{Reply} with C{status == "PUSH"}, until
L{GNPClientProtocol.stopPushes} (which C{unwatch} calls for you), the
C{ERR} of that request, or the end of the connection.

When the connection ends, every pending request fails with
L{ConnectionClosed} (or the more precise error that ended it): nothing
waits forever. A C{timeout=} on a request also sends the C{Timeout} header
and gives up locally a little later (L{TIMEOUT_GRACE}) with
L{ClientTimeout} if no reply came.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.client.errors import (
    ClientError,
    ClientTimeout,
    ConnectFailed,
    ConnectionClosed,
    ServerShuttingDown,
    ProtocolError,
    Refused,
    ServerError,
)
from proto.client.messages import (
    CommandMethods,
    encodeClientRequest,
    formatSeconds,
    Headers,
    Reply,
    TIMEOUT_GRACE,
)
from proto.wire import OK, PUSH, FramingError, Greeting, ReplyParser


#: Seconds to wait for the TLS close to complete before aborting (a peer
#: that never answers close_notify would otherwise hold the connection).
CLOSE_GRACE = 5.0

PushHandler = Callable[[Reply], None]


@dataclass
class _Pending:
    command: str
    deferred: Deferred


class GNPClientProtocol(Protocol, CommandMethods):
    """
    One admitted GNP/1 connection. Made by L{connect}; see the module
    docstring for the request and push model.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._parser = ReplyParser()
        self._sequences = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._pushHandlers: dict[str, PushHandler] = {}
        self._closeWaiters: list[Deferred] = []
        #: Fires with C{self} on the greeting C{OK}.
        self.ready: Deferred = Deferred(lambda _: self._abort(None))
        self._admitted = False
        self._lost = False
        #: Set when we decided to end the connection; pending requests and
        #: later calls fail with it.
        self._endError: ClientError | None = None
        #: A connection-level C{ERR} (no Sequence) the server sent before
        #: closing, for the error message.
        self._fatalReason: str | None = None
        self._killer = None

    # -- requests -------------------------------------------------------

    def request(
        self,
        command: str,
        *args: str,
        headers: Headers = None,
        body: bytes | None = None,
        timeout: float | None = None,
        onPush: PushHandler | None = None,
    ) -> Deferred:
        """
        Send one request.

        @param headers: extra headers (not Sequence or Size).
        @param body: the body; a C{Size} header is added for it.
        @param timeout: seconds: sent as the C{Timeout} header, and the
            local wait ends L{TIMEOUT_GRACE} seconds later.
        @param onPush: called with every C{PUSH} for this request.
        @return: a Deferred firing with a L{Reply}, or failing with
            L{ServerError}, L{ConnectionClosed}, L{ClientTimeout}, or
            C{ValueError} if the request cannot be written.
        """
        if self._lost or self._endError is not None or not self._admitted:
            return fail(self._closedError())
        sequence = str(next(self._sequences))
        try:
            data = encodeClientRequest(command, args, sequence, headers, body, timeout)
        except ValueError as e:
            return fail(e)
        d = Deferred(lambda _: self._forget(sequence))
        self._pending[sequence] = _Pending(command.upper(), d)
        if onPush is not None:
            self._pushHandlers[sequence] = onPush
        self.transport.write(data)
        if timeout is not None:
            d.addTimeout(timeout + TIMEOUT_GRACE, self._clock, self._timedOut(command, sequence))
        return d

    def stopPushes(self, sequence: str) -> None:
        """Deliver no more C{PUSH} frames for the request C{sequence}."""
        self._pushHandlers.pop(sequence, None)






    def watch(
        self,
        prefix: str,
        onPush: PushHandler,
        since: int | None = None,
        documents: bool = False,
        include=None,
        **kw,
    ) -> Deferred:
        """
        C{WATCH} a prefix (optionally C{Since} an etag, with C{Documents}
        and C{Include}: section 8). The reply's C{sequence} identifies the
        watch for L{unwatch}, its C{headers["etag"]} where it began. A push
        of C{"Type": "Dropped"} (the server gave up on a client that did
        not read) is the watch's last: it is delivered, then the watch's
        handler is removed. To resume by itself across reconnects, see
        L{proto.client.follow.followWatch}.
        """
        from proto.client.follow import watchHeaders
        from proto.client.messages import headerList

        extra = watchHeaders(since, documents, include)
        if extra:
            kw["headers"] = headerList(kw.get("headers")) + extra

        def deliver(push: Reply) -> None:
            if push.body.startswith(b"{") and b'"Dropped"' in push.body:
                try:
                    dropped = push.json().get("Type") == "Dropped"
                except ValueError:
                    dropped = False
                if dropped:
                    self.stopPushes(push.sequence)
            onPush(push)

        return self.request("WATCH", prefix, onPush=deliver, **kw)

    def unwatch(self, watchSequence: str, **kw) -> Deferred:
        """C{UNWATCH}; pushes for that watch stop once the server agrees."""

        def stopped(reply: Reply) -> Reply:
            self.stopPushes(watchSequence)
            return reply

        return self.request("UNWATCH", watchSequence, **kw).addCallback(stopped)

    def remind(self, seconds: float, text: str, onPush: PushHandler, **kw) -> Deferred:
        """C{REMIND}: C{onPush} is called once, with the reminder."""
        def once(push: Reply) -> None:
            self.stopPushes(push.sequence)
            onPush(push)

        return self.request("REMIND", formatSeconds(seconds), *text.split(), onPush=once, **kw)



    # -- connection -----------------------------------------------------

    def close(self) -> Deferred:
        """
        Close the connection; pending requests fail with
        L{ConnectionClosed}. The Deferred fires once it is closed.
        """
        d = self.whenClosed()
        if not self._lost and self._endError is None:
            self._endError = ConnectionClosed("connection closed by the client")
            self.transport.loseConnection()
            self._killer = self._clock.callLater(CLOSE_GRACE, self.transport.abortConnection)
        return d

    def whenClosed(self) -> Deferred:
        """A Deferred that fires (with C{None}) when the connection has ended."""
        if self._lost:
            return succeed(None)
        d = Deferred()
        self._closeWaiters.append(d)
        return d

    def dataReceived(self, data: bytes) -> None:
        if self._endError is not None:
            return
        try:
            items = self._parser.feed(data)
        except FramingError as e:
            self._abort(ProtocolError(f"the server sent something that is not GNP/1: {e}"))
            return
        for item in items:
            if isinstance(item, Greeting):
                self._greeted(item)
            else:
                self._frameReceived(item)
            if self._endError is not None:
                return

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:
        self._lost = True
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        error = self._lossError(reason)
        if not self.ready.called:
            self.ready.errback(error)
        pending, self._pending = self._pending, {}
        self._pushHandlers.clear()
        for request in pending.values():
            request.deferred.errback(error)
        waiters, self._closeWaiters = self._closeWaiters, []
        for d in waiters:
            d.callback(None)

    # -- internals ------------------------------------------------------

    def _greeted(self, greeting: Greeting) -> None:
        if greeting.ok:
            self._admitted = True
            self.ready.callback(self)
        else:
            self._abort(Refused(greeting.reason))

    def _frameReceived(self, frame) -> None:
        if frame.sequence is None:
            # A connection-level error (the server could not read our
            # Sequence); the server closes the connection next.
            self._fatalReason = frame.reason or frame.kind
            return
        if frame.kind == PUSH:
            handler = self._pushHandlers.get(frame.sequence)
            if handler is None:
                self.log.debug("dropping PUSH for Sequence {seq}", seq=frame.sequence)
                return
            try:
                handler(Reply.fromFrame(frame))
            except Exception:
                self.log.failure("push handler for Sequence {seq} failed", seq=frame.sequence)
            return
        request = self._pending.pop(frame.sequence, None)
        if request is None:
            self.log.warn(
                "reply for Sequence {seq} that is not pending (given up?)", seq=frame.sequence
            )
            return
        if frame.kind == OK:
            request.deferred.callback(Reply.fromFrame(frame))
        else:
            self._pushHandlers.pop(frame.sequence, None)
            request.deferred.errback(ServerError(frame.reason, frame.sequence, request.command))

    def _forget(self, sequence: str) -> None:
        """A request was cancelled: its reply, if it comes, is ignored."""
        self._pending.pop(sequence, None)
        self._pushHandlers.pop(sequence, None)

    def _timedOut(self, command: str, sequence: str):
        def onTimeoutCancel(result, timeout):
            raise ClientTimeout(
                f"no reply to {command} (Sequence {sequence}) within {timeout:g} seconds"
            )

        return onTimeoutCancel

    def _abort(self, error: ClientError | None) -> None:
        """End the connection now, failing what is pending with C{error}."""
        if self._endError is None:
            self._endError = error or ClientTimeout("gave up waiting for the server's greeting")
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def _closedError(self) -> ClientError:
        if self._endError is not None:
            return self._endError
        if not self._admitted and not self._lost:
            return ClientError("not admitted yet: wait for connect() to fire")
        if self._fatalReason is not None and self._fatalReason.startswith("Server is shutting down"):
            return ServerShuttingDown("the server is shutting down: the connection is closed")
        return ConnectionClosed("the connection is closed")

    def _lossError(self, reason: Failure) -> ClientError:
        if self._endError is not None:
            return self._endError
        if isinstance(reason.value, ClientError):
            # Set by the TLS verifier through failVerification.
            return reason.value
        pending = len(self._pending)
        tail = f" ({pending} request(s) pending)" if pending else ""
        if self._fatalReason is not None:
            if self._fatalReason.startswith("Server is shutting down"):
                return ServerShuttingDown(
                    f"the server is shutting down: it closed the connection{tail}"
                )
            return ConnectionClosed(f"the server closed the connection: {self._fatalReason}{tail}")
        if reason.check(SSL.Error) and not self._admitted:
            return ConnectionClosed(f"TLS handshake with the server failed: {reason.getErrorMessage()}")
        if not self._admitted:
            return ConnectionClosed(
                f"connection lost before the server's greeting: {reason.getErrorMessage()}"
            )
        if reason.check(ConnectionDone):
            return ConnectionClosed(f"the server closed the connection{tail}")
        return ConnectionClosed(f"connection lost: {reason.getErrorMessage()}{tail}")


def connect(
    reactor,
    endpoint: str | IStreamClientEndpoint,
    tls,
    *,
    timeout: float = 30.0,
    clock: IReactorTime | None = None,
) -> Deferred:
    """
    Connect, do the TLS handshake and wait for the server's greeting.

    @param endpoint: a client endpoint, or its description such as
        C{"tcp:localhost:4433"} (see L{endpointFor} for host and port).
    @param tls: the client's TLS creator, from
        L{proto.client.tlsconfig.clientTLS}.
    @param timeout: seconds for all of it (TCP, TLS, greeting).
    @return: a Deferred firing with the admitted L{GNPClientProtocol}, or
        failing with L{Refused}, L{ThumbprintMismatch},
        L{CertificateNotTrusted}, L{ConnectFailed}, L{ConnectionClosed} or
        L{ClientTimeout}.
    """
    clock = clock or reactor
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    protocol = GNPClientProtocol(clock)
    d = connectProtocol(wrapClientTLS(tls, endpoint), protocol)

    def connected(_):
        return protocol.ready

    def failedToConnect(failure: Failure):
        failure.trap(ConnectError)
        raise ConnectFailed(f"cannot connect to the server: {failure.getErrorMessage()}")

    def onTimeoutCancel(result, seconds):
        raise ClientTimeout(f"no greeting from the server within {seconds:g} seconds")

    d.addCallbacks(connected, failedToConnect)
    d.addTimeout(timeout, clock, onTimeoutCancel)
    return d


def endpointFor(reactor, host: str, port: int) -> IStreamClientEndpoint:
    """A client endpoint for a host name or address (IPv4 or IPv6) and port."""
    return HostnameEndpoint(reactor, host, port)
