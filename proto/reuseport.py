"""
The listening sockets of C{--workers N} (L{proto.workers}): each worker
makes I{its own} socket on the same port with C{SO_REUSEPORT}, and the
kernel spreads new connections over them (one shared socket balances
badly: C{shared/TWISTED_NOTES.md}, section 9). The supervisor holds a
bound, non-listening C{SO_REUSEPORT} socket on each address
(L{holdAddresses}), so no other program can take the port while a worker
restarts, and it never accepts a connection itself.

Twisted's C{tcp:} endpoint cannot set C{SO_REUSEPORT}, so this module
makes the sockets and hands them to C{adoptStreamPort}; the C{--listen}
descriptions are still parsed by Twisted (L{proto.listen}).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import abstract, defer, endpoints, error
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python import usage
from zope.interface import implementer

#: Pending-connection queue of each worker's sockets.
BACKLOG = 1024

log = Logger()


def reusePortSocket(port: int, interface: str, v6only: bool = False) -> socket.socket:
    """
    A TCP socket bound to C{interface:port} with C{SO_REUSEPORT} (and
    C{SO_REUSEADDR}), not yet listening. Processes of the same user can
    bind the same address this way; the kernel balances connections over
    those that listen.
    """
    family = socket.AF_INET6 if abstract.isIPv6Address(interface) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind((interface or "0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    A TCP server endpoint whose socket has C{SO_REUSEPORT}: Twisted's
    C{tcp:} endpoint cannot set it, so we make the socket and hand it to
    C{adoptStreamPort}.
    """

    def __init__(self, reactor: Any, port: int, interface: str = "",
                 backlog: int = BACKLOG, v6only: bool = False) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self._backlog = backlog
        self._v6only = v6only

    def listen(self, factory):
        try:
            sock = reusePortSocket(self.port, self.interface, self._v6only)
        except OSError as e:
            return defer.fail(error.CannotListenError(self.interface, self.port, e))
        try:
            sock.listen(self._backlog)
            sock.setblocking(False)
            return defer.succeed(
                self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
            )
        except OSError as e:
            return defer.fail(error.CannotListenError(self.interface, self.port, e))
        finally:
            sock.close()  # adoptStreamPort made its own copy of the descriptor


def reusePortEndpoint(reactor: Any, description: str) -> ReusePortEndpoint | Any:
    """
    The endpoint for one C{--listen} description, with C{SO_REUSEPORT}:
    C{tcp:}, C{tcp6:} and C{haproxy:tcp:...} descriptions are supported
    (Twisted parses them; we only rebuild the TCP part).

    @raise ValueError: for other kinds of endpoint (C{unix:}, C{systemd:}).
    """
    from proto.listen import serverEndpoint

    parsed = serverEndpoint(reactor, description)
    proxied = isinstance(parsed, endpoints._WrapperServerEndpoint)
    inner = parsed._wrappedEndpoint if isinstance(parsed, endpoints._WrapperServerEndpoint) else parsed
    if not isinstance(inner, endpoints.TCP4ServerEndpoint):  # TCP6 is a subclass
        raise ValueError(
            f"--workers needs TCP listeners (tcp:, tcp6: or haproxy:tcp:), not {description!r}"
        )
    tcp = ReusePortEndpoint(reactor, inner._port, inner._interface, inner._backlog)
    return proxiedEndpoint(tcp) if proxied else tcp


def proxiedEndpoint(endpoint):
    """C{endpoint} behind HAProxy: every connection starts with a PROXY header."""
    return proxyEndpoint(endpoint)


def listenAddresses(reactor: Any, descriptions: list[str]) -> list[tuple[Any, bool, str]]:
    """
    The TCP endpoints of the C{--listen} descriptions (default: port 4433 on
    IPv4 and IPv6), each with whether it is optional (the default IPv6 one:
    a host without IPv6 must still start) and its description.
    """
    from proto.datadir import DEFAULT_PORT

    if not descriptions:
        return [
            (ReusePortEndpoint(reactor, DEFAULT_PORT, "0.0.0.0"), False, f"tcp:{DEFAULT_PORT}"),
            (ReusePortEndpoint(reactor, DEFAULT_PORT, "::", v6only=True), True,
             f"tcp6:{DEFAULT_PORT}"),
        ]
    return [(reusePortEndpoint(reactor, d), False, d) for d in descriptions]


def _tcpPart(endpoint) -> ReusePortEndpoint:
    return endpoint._wrappedEndpoint if isinstance(endpoint, endpoints._WrapperServerEndpoint) else endpoint


def holdAddresses(reactor: Any, descriptions: list[str]) -> list[socket.socket]:
    """
    Bind (without listening) every address the workers will listen on, so
    a port in use is reported by the supervisor, once, before any worker
    starts, and stays ours while workers restart.

    @raise usage.UsageError: naming the address that cannot be bound.
    """
    held = []
    try:
        for endpoint, optional, _ in listenAddresses(reactor, descriptions):
            tcp = _tcpPart(endpoint)
            try:
                held.append(reusePortSocket(tcp.port, tcp.interface, tcp._v6only))
            except OSError as e:
                if optional:
                    log.warn("IPv6 address not available ({error}); workers serve IPv4 only",
                             error=e)
                    continue
                raise usage.UsageError(
                    f"cannot listen on {tcp.interface or '*'}:{tcp.port}: {e.strerror}"
                ) from None
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held
