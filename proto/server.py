"""
The server as a whole: configuration, the factory that holds what all
connections share (allow-list, commands, store, change hub), the listening
endpoints, and the service tree that C{twistd} runs.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from twisted.application import internet, service
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from proto import wire
from proto.access import AccessControl
from proto.admission import AllowList
from proto.commands.base import CommandRegistry
from proto.listen import BACKLOG, serverEndpoint
from proto.protocol import GNPServerProtocol
from proto.stats import ServerStats


#: Default total for partial request bodies across all connections.
DEFAULT_MAX_PENDING_BODIES = 256 * 1024 * 1024


@dataclass
class ServerConfig:
    """Limits and timeouts; the command-line options map onto these."""

    maxHead: int = wire.DEFAULT_MAX_HEAD
    maxBody: int = wire.DEFAULT_MAX_BODY
    handshakeTimeout: float = 10.0
    headTimeout: float = 10.0
    idleTimeout: float = 300.0  # 0 disables it
    maxConnections: int = 10000
    maxInflight: int = 1024
    closeGrace: float = 10.0
    #: A pending body that gets no byte for this long ends the connection.
    bodyTimeout: float = 10.0
    #: Bytes all partial request bodies together may hold (see
    #: L{GNPServerFactory.reserveBody}).
    maxPendingBodies: int = DEFAULT_MAX_PENDING_BODIES
    #: When a connection drains after a framing error or a revocation:
    #: seconds its accepted requests get to finish before they are cancelled.
    drainGrace: float = 10.0


def defaultRegistry() -> CommandRegistry:
    """
    Every built-in command: connection commands, the document store,
    WATCH, and the access commands (section 9).
    """
    from proto.commands import access, admin, builtin, documents, watch

    return (
        builtin.registry.merged(documents.registry)
        .merged(watch.registry)
        .merged(access.registry)
        .merged(admin.registry)
    )


class GNPServerFactory(ServerFactory):
    """
    Builds a L{GNPServerProtocol} per connection and keeps the state they
    share.

    @ivar allowList: a zero-argument callable returning the current
        L{AllowList} (so that a reloaded list applies to new connections).
    """

    protocol = GNPServerProtocol
    log = Logger()

    def __init__(
        self,
        config: ServerConfig,
        allowList,
        registry: CommandRegistry | None = None,
        store=None,
        hub=None,
        clock=None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.config = config
        # The effective allow-list: the operator's file (allowList) plus
        # the approvals and enrolments in the store (section 9).
        self.access = AccessControl(allowList, store)
        self.access.onChange = self.allowListChanged
        self.allowList = self.access.current
        self.registry = registry if registry is not None else defaultRegistry()
        self.store = store
        self.hub = hub
        self.clock = clock
        self.connections: set[GNPServerProtocol] = set()
        self.admitted: set[GNPServerProtocol] = set()
        #: Bytes reserved by partial request bodies, all connections together.
        self.pendingBodyBytes = 0
        #: Why new connections are refused once L{drainAll} was called.
        self.drainingReason: str | None = None
        self._drained: list[defer.Deferred] = []
        #: Where other processes of this server leave their snapshots
        #: (C{<data-dir>/run}, with several workers), or C{None}.
        self.runDir: str | None = None
        #: Where BACKUP writes (C{<data-dir>/backups}), or C{None}.
        self.backupDir: str | None = None
        #: Counters for STATS, CLIENTS and the metrics (L{proto.stats}).
        self.stats = ServerStats(clock)
        for name in self.registry.names():
            self.stats.command(name)

    def buildProtocol(self, addr) -> GNPServerProtocol:
        return self.protocol(self)

    def connectionOpened(self, proto: GNPServerProtocol) -> None:
        self.connections.add(proto)
        self.stats.accepted += 1

    def connectionAdmitted(self, proto: GNPServerProtocol) -> None:
        self.admitted.add(proto)
        self.stats.admittedTotal += 1

    def connectionClosed(self, proto: GNPServerProtocol) -> None:
        self.connections.discard(proto)
        self.admitted.discard(proto)
        if self._drained and not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drainAll(self, reason: str = "Server shutting down", grace: float = 10.0) -> defer.Deferred:
        """
        End every connection without losing a reply: each admitted one
        drains (L{GNPServerProtocol.drainThenClose}: reads nothing more,
        its accepted requests finish within C{grace} seconds or are
        answered C{ERR Cancelled}, then C{ERR reason}, then close).
        Connections still in their TLS handshake, and any that arrive
        later, are refused with C{reason} once their handshake completes.
        Stopping the listeners is the caller's job (so is calling this
        again with a shorter grace, if it wants to).

        @return: a Deferred that fires when no connection is left.
        """
        self.drainingReason = reason
        frame = wire.encodeError(reason, None)
        for proto in list(self.admitted):
            proto.drainThenClose(frame, grace)
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)
        return d

    def shutdown(self, grace: float = 10.0) -> defer.Deferred:
        """
        Graceful drain for a server that stops (SIGTERM; issue 10): new
        connections are refused with C{Server is shutting down}; on each
        admitted one, requests already accepted finish (for at most
        C{grace} seconds) while new ones are answered C{ERR Server is
        shutting down}; then each gets the final C{ERR} without Sequence
        and is closed (L{GNPServerProtocol.shutdown}). Stopping the
        listeners first is the caller's job (L{proto.lifecycle}).

        @return: a Deferred that fires when no connection is left.
        """
        from proto.protocol import SHUTDOWN_REASON

        self.drainingReason = SHUTDOWN_REASON
        for proto in list(self.admitted):
            proto.shutdown(grace)
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained.append(d)
        return d

    def reserveBody(self, size: int) -> bool:
        """
        Reserve C{size} bytes for a request body that is still arriving.
        Partial bodies of all connections together hold at most
        C{config.maxPendingBodies} bytes: past it the body is refused
        (the connection reads and drops it, and answers its request ERR).
        Bodies that arrive whole with their head reserve nothing.
        """
        if self.pendingBodyBytes + size > self.config.maxPendingBodies:
            return False
        self.pendingBodyBytes += size
        return True

    def releaseBody(self, size: int) -> None:
        """Give back what L{reserveBody} reserved."""
        self.pendingBodyBytes -= size

    def certificateRefused(self, who, peer: str, reason: str) -> None:
        """A certificate was refused admission: remember it for PENDING."""
        self.access.pending.record(who, peer, reason, self.clock.seconds())

    def overloadReason(self) -> str | None:
        """Why a new connection must be refused for load, or C{None}."""
        if self.drainingReason is not None:
            return self.drainingReason
        if len(self.admitted) >= self.config.maxConnections:
            return (
                f"Too many connections: the server's limit of "
                f"{self.config.maxConnections} is reached; try again later"
            )
        return None

    def allowListChanged(self, new: AllowList) -> None:
        """
        Apply a changed allow-list (file, approvals, enrolments) to live
        connections (section 9): close those whose certificate is no longer
        admitted, and give the others their new rights, which apply from
        their next request on.
        """
        for proto in list(self.admitted):
            who = proto.identity
            if who is None:
                continue
            grant = new.grantFor(who.sha1, who.sha256)
            if grant is None:
                proto.revoke(
                    f"Client certificate {who.sha1} (CN={who.commonName!r}) "
                    "was removed from the allow-list or revoked"
                )
            else:
                proto.setGrant(grant)


@implementer(IStreamServerEndpoint)
class V6OnlyTCPEndpoint:
    """
    A TCP endpoint on an IPv6 address with C{IPV6_V6ONLY} set, so that it
    can share a port with an IPv4 socket (Linux would otherwise refuse the
    second bind). Twisted's C{tcp6:} endpoint cannot set the option, so we
    make the socket and hand it to C{adoptStreamPort}.
    """

    def __init__(self, reactor, port: int, interface: str = "::", backlog: int = 1024) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def listen(self, factory):
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError as e:
            return defer.fail(e)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self._interface, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
            return defer.succeed(
                self._reactor.adoptStreamPort(sock.fileno(), socket.AF_INET6, factory)
            )
        except OSError as e:
            return defer.fail(e)
        finally:
            # adoptStreamPort made its own copy of the descriptor.
            sock.close()


class OptionalListenService(internet.StreamServerEndpointService):
    """
    A listener that may fail to start without stopping the server: used for
    the default IPv6 socket, since a host without IPv6 must still start.
    """

    log = Logger()

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._waitingForPort = self.endpoint.listen(self.factory)

        def failed(failure):
            self.log.warn(
                "IPv6 listener not started ({error}); serving IPv4 only",
                error=failure.getErrorMessage(),
            )
            return None

        self._waitingForPort.addErrback(failed)


class RequiredListenService(internet.StreamServerEndpointService):
    """
    A listener whose failure (port in use, say) stops the server's start,
    with one clear line and a non-zero exit rather than a traceback.
    """

    def __init__(self, endpoint, factory, description: str) -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self._raiseSynchronously = True

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except Exception as e:
            message = f"proto: cannot listen on {self.description}: {e}"
            # SystemExit passes twistd's start-up (which prints a traceback
            # for any Exception): Python prints the message on stderr (which
            # twistd sends to its log), exit status 1.
            raise SystemExit(message) from None


def _requiredListener(endpoint, factory, description: str) -> RequiredListenService:
    return RequiredListenService(endpoint, factory, description)


def listenServices(
    reactor, descriptions, creator, factory, levers: bool = True, reusePort: bool = False
) -> list[service.IService]:
    """
    One service per listening address, each wrapped in our TLS. With no
    descriptions: port 4433 on every IPv4 address and every IPv6 address.
    C{levers}: serve with the fast transport (L{proto.speed}); C{False}
    is C{--plain-transport}. C{reusePort}: one of the workers of
    C{--workers N}, each with its own C{SO_REUSEPORT} sockets on the same
    addresses (L{proto.reuseport}).
    """
    from proto import speed
    from proto.datadir import DEFAULT_PORT

    def wrap(c, endpoint):
        return speed.wrapServerTLS(c, endpoint, levers)

    services: list[service.IService] = []
    if reusePort:
        from proto.reuseport import listenAddresses

        for endpoint, optional, description in listenAddresses(reactor, descriptions):
            if optional:
                services.append(OptionalListenService(wrap(creator, endpoint), factory))
            else:
                services.append(_requiredListener(wrap(creator, endpoint), factory, description))
        return services
    if descriptions:
        for description in descriptions:
            endpoint = wrap(creator, serverEndpoint(reactor, description))
            services.append(_requiredListener(endpoint, factory, description))
        return services
    v4 = endpoints.TCP4ServerEndpoint(reactor, DEFAULT_PORT, backlog=BACKLOG)
    services.append(_requiredListener(wrap(creator, v4), factory, f"tcp:{DEFAULT_PORT}"))
    v6 = V6OnlyTCPEndpoint(reactor, DEFAULT_PORT, backlog=BACKLOG)
    services.append(OptionalListenService(wrap(creator, v6), factory))
    return services
