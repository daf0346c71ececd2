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
is passed to it as a L{Reply} with C{status == "PUSH"}, until its last
push (a C{REMIND}'s one push, a WATCH's C{Dropped}), the C{OK} of the
C{UNWATCH} naming it, L{GNPClientProtocol.stopPushes}, the C{ERR} of that
request, or the end of the connection.

When the connection ends, every pending request fails with
L{ConnectionClosed} (or the more precise error that ended it): nothing
waits forever. A C{timeout=} on a request also sends the C{Timeout} header
and gives up locally a little later (L{TIMEOUT_GRACE}) with
L{ClientTimeout} if no reply came.

The protocol itself (greeting, Sequences, push routing, the wording of
loss errors) is L{proto.client.core.ClientCore}, shared with the blocking
client; this module adds the Deferreds, the transport and the clock.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NoReturn, cast

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.client.core import (
    ENDED,
    ClientCore,
    noGreetingError,
    noReplyError,
)
from proto.client.errors import ClientError, ClientTimeout, ConnectFailed
from proto.client.events import (
    Abort,
    Admitted,
    Failed,
    Pushed,
    Replied,
)
from proto.client.messages import CommandMethods, formatSeconds, Headers, Reply, TIMEOUT_GRACE


#: Seconds to wait for the TLS close to complete before aborting (a peer
#: that never answers close_notify would otherwise hold the connection).
CLOSE_GRACE = 5.0

PushHandler = Callable[[Reply], None]


class GNPClientProtocol(Protocol, CommandMethods["Deferred[Reply]"]):
    """
    One admitted GNP/1 connection. Made by L{connect}; see the module
    docstring for the request and push model.

    The protocol state (greeting, Sequences, push routing, loss errors)
    is L{proto.client.core.ClientCore}'s; this class turns its events into
    Deferreds and owns the transport and the clock.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._core: ClientCore[Deferred[Reply], PushHandler] = ClientCore()
        self._closeWaiters: list[Deferred[None]] = []
        #: Fires with C{self} on the greeting C{OK}.
        self.ready: Deferred[GNPClientProtocol] = Deferred(lambda _: self._abort(None))
        self._killer: IDelayedCall | None = None

    # -- requests -------------------------------------------------------

    def request(
        self,
        command: str,
        *args: str,
        headers: Headers = None,
        body: bytes | None = None,
        timeout: float | None = None,
        onPush: PushHandler | None = None,
    ) -> Deferred[Reply]:
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
        try:
            sequence, data, d = self._core.request(
                command, args, self._waiter, headers, body, timeout, onPush
            )
        except (ClientError, ValueError) as e:
            return fail(e)
        assert self.transport is not None
        self.transport.write(data)
        if timeout is not None:
            d.addTimeout(timeout + TIMEOUT_GRACE, self._clock, self._timedOut(command, sequence))
        return d

    def _waiter(self, sequence: str) -> Deferred[Reply]:
        def cancelled(d: Deferred[Reply]) -> None:
            self._core.forget(sequence)  # a late reply is ignored

        return Deferred(cancelled)

    def stopPushes(self, sequence: str) -> None:
        """Deliver no more C{PUSH} frames for the request C{sequence}."""
        self._core.stopPushes(sequence)

    def watch(
        self,
        prefix: str,
        onPush: PushHandler,
        since: int | None = None,
        documents: bool = False,
        include: str | Iterable[str] | None = None,
        **kw: Any,
    ) -> Deferred[Reply]:
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

        return self.request("WATCH", prefix, onPush=onPush, **kw)

    def unwatch(self, watchSequence: str, **kw: Any) -> Deferred[Reply]:
        """C{UNWATCH}; pushes for that watch stop once the server agrees."""
        return self.request("UNWATCH", watchSequence, **kw)

    def remind(self, seconds: float, text: str, onPush: PushHandler, **kw: Any) -> Deferred[Reply]:
        """C{REMIND}: C{onPush} is called once, with the reminder."""
        return self.request("REMIND", formatSeconds(seconds), *text.split(), onPush=onPush, **kw)

    # -- connection -----------------------------------------------------

    def close(self) -> Deferred[None]:
        """
        Close the connection; pending requests fail with
        L{ConnectionClosed}. The Deferred fires once it is closed.
        """
        d = self.whenClosed()
        if self._core.close():
            assert self.transport is not None
            self.transport.loseConnection()
            self._killer = self._clock.callLater(CLOSE_GRACE, self._abortTransport)
        return d

    def whenClosed(self) -> Deferred[None]:
        """A Deferred that fires (with C{None}) when the connection has ended."""
        if self._core.state is ENDED:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closeWaiters.append(d)
        return d

    def dataReceived(self, data: bytes) -> None:
        for event in self._core.receive(data):
            if isinstance(event, Replied):
                event.waiter.callback(event.reply)
            elif isinstance(event, Pushed):
                self._pushed(event)
            elif isinstance(event, Failed):
                event.waiter.errback(event.error)
            elif isinstance(event, Admitted):
                self.ready.callback(self)
            elif isinstance(event, Abort):
                self._abort(event.error)
            else:
                self.log.warn(
                    "reply for Sequence {seq} that is not pending (given up?)", seq=event.sequence
                )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        ended = self._core.connectionLost(
            reason.getErrorMessage(),
            clean=isinstance(reason.value, ConnectionDone),
            tlsFailed=isinstance(reason.value, SSL.Error),
            # Set by the TLS verifier through failVerification.
            error=reason.value if isinstance(reason.value, ClientError) else None,
        )
        if not self.ready.called:
            self.ready.errback(ended.error)
        for d in ended.waiters:
            d.errback(ended.error)
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- internals ------------------------------------------------------

    def _pushed(self, event: Pushed[PushHandler]) -> None:
        if event.target is None:
            self.log.debug("dropping PUSH for Sequence {seq}", seq=event.push.sequence)
            return
        try:
            event.target(event.push)
        except Exception:
            self.log.failure("push handler for Sequence {seq} failed", seq=event.push.sequence)

    def _timedOut(self, command: str, sequence: str) -> Callable[[object, float], NoReturn]:
        def onTimeoutCancel(result: object, timeout: float) -> NoReturn:
            raise noReplyError(command, sequence, timeout)

        return onTimeoutCancel

    def _abort(self, error: ClientError | None) -> None:
        """End the connection now, failing what is pending with C{error}."""
        self._core.abort(error or ClientTimeout("gave up waiting for the server's greeting"))
        if self.transport is not None and self._core.state is not ENDED:
            self._abortTransport()

    def _abortTransport(self) -> None:
        # Ours is TLSMemoryBIOProtocol, which has abortConnection (ITransport
        # does not declare it).
        cast(ITCPTransport, self.transport).abortConnection()


def connect(
    reactor: IReactorTime,
    endpoint: str | IStreamClientEndpoint,
    tls: IOpenSSLClientConnectionCreator,
    *,
    timeout: float = 30.0,
    clock: IReactorTime | None = None,
) -> Deferred[GNPClientProtocol]:
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
    tcp: IStreamClientEndpoint = (
        clientFromString(reactor, endpoint) if isinstance(endpoint, str) else endpoint
    )
    protocol = GNPClientProtocol(clock)
    connected: Deferred[Protocol] = connectProtocol(wrapClientTLS(tls, tcp), protocol)

    def failedToConnect(failure: Failure) -> Failure:
        if isinstance(failure.value, ConnectError):
            raise ConnectFailed(f"cannot connect to the server: {failure.getErrorMessage()}")
        return failure

    def onTimeoutCancel(result: object, seconds: float) -> NoReturn:
        raise noGreetingError(seconds)

    d = connected.addErrback(failedToConnect).addCallback(lambda _: protocol.ready)
    d.addTimeout(timeout, clock, onTimeoutCancel)
    return d


def endpointFor(reactor: IReactorTime, host: str, port: int) -> IStreamClientEndpoint:
    """A client endpoint for a host name or address (IPv4 or IPv6) and port."""
    return HostnameEndpoint(reactor, host, port)
