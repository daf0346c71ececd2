"""
Lever 5: what every TLS connection's set-up repeats, done once.

In the handshake row (a connection per handshake) Python's share of a
connection is its set-up and tear-down; these three parts of it are the
same for every connection, so L{proto.speed.tlsflush.FastTLSTransport}
does them once (per port, per class) instead of once per connection:

  - C{TCP_NODELAY}: L{inheritNoDelay} sets it on the listening socket,
    which accepted sockets inherit on Linux (checked on each port's first
    connection: L{NoDelay}); the protocol's C{setTcpNoDelay(True)} per
    connection (one C{setsockopt} and a lookup through the TLS wrapper's
    C{__getattr__}) then has nothing left to do;
  - the TLS transport's interfaces: Twisted's
    C{ProtocolWrapper.makeConnection} declares, with zope's
    C{directlyProvides}, that the TLS transport provides whatever the TCP
    transport under it provides. That declaration is the same object for
    every transport of a class (zope caches it), but working it out again
    costs a few microseconds per connection: L{providesLike} keeps it;
  - the client certificate's check at the TLS layer:
    L{proto.tls.ServerTLS} asks for a certificate and accepts whatever
    comes (admission judges it afterwards, PROTOCOL.md section 2), through
    a pyOpenSSL verify callback that builds a Python C{X509} object per
    certificate and error just to return C{True}. L{acceptAnyCertificate}
    gives the connection a C callback (cffi) with the same answer, without
    those objects (in process: 583 -> 575 us of server CPU per full
    handshake, alternating 3000 of each). The TLS handshake itself is
    unchanged: the client still proves it holds the key of its certificate
    (its C{CertificateVerify}), and the certificate is still the one
    OpenSSL hands to admission.

None changes behaviour; C{--plain-transport} turns them off with the
other levers (L{proto.speed}).
"""

from __future__ import annotations

import socket
from typing import Any

from OpenSSL._util import ffi, lib
from zope.interface import directlyProvides, providedBy


@ffi.callback("int(int, X509_STORE_CTX *)")
def _acceptAny(preverifyOK: int, store: Any) -> int:
    # Must never raise (it runs inside OpenSSL); it cannot.
    return 1


def acceptAnyCertificate(connection: Any) -> None:
    """
    Give the C{OpenSSL.SSL.Connection} a verify callback in C that accepts
    any certificate, keeping its verify mode (from its context): for
    contexts whose own callback accepts any certificate anyway
    (L{proto.tls.ServerTLS.acceptsAnyCertificate}).
    """
    ssl = connection._ssl
    lib.SSL_set_verify(ssl, lib.SSL_get_verify_mode(ssl), _acceptAny)


#: (wrapper class, the transport's interface declaration) to the wrapper's.
_provides: dict[tuple[type, Any], Any] = {}


def providesLike(wrapper: Any, transport: Any) -> None:
    """
    C{directlyProvides(wrapper, providedBy(transport))}, as
    C{ProtocolWrapper.makeConnection} does, from a cache: the declaration
    zope makes is the same object for every wrapper of a class over
    transports of one declaration.
    """
    spec = providedBy(transport)
    key = (type(wrapper), spec)
    declared = _provides.get(key)
    if declared is None:
        directlyProvides(wrapper, spec)
        if len(_provides) < 64:
            _provides[key] = wrapper.__provides__
        return
    wrapper.__provides__ = declared


class NoDelay:
    """
    Whether a port's accepted sockets have C{TCP_NODELAY} already (see
    L{inheritNoDelay}): unknown (C{None}) until its first connection.
    """

    __slots__ = ("inherited",)

    def __init__(self) -> None:
        self.inherited: bool | None = None

    def check(self, transport: Any) -> None:
        """On a port's first connection: did its socket inherit the option?"""
        if self.inherited is None:
            try:
                self.inherited = bool(
                    transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                )
            except (AttributeError, OSError):
                self.inherited = False


def inheritNoDelay(port: Any) -> None:
    """
    Set C{TCP_NODELAY} on C{port}'s listening socket (a TCP port; others
    are left alone, and their connections' L{NoDelay} check says no).
    """
    sock = getattr(port, "socket", None)
    if sock is None or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
