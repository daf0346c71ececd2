"""
The transport's hot path: levers that make the server faster than
plain Twisted, each in its own module, all switched off together by
C{twistd proto --plain-transport} (to rule them out when debugging).

  - L{proto.speed.writethrough}: TCP writes go to the kernel at once
    instead of waiting for EPOLLOUT on the next reactor turn, and so does
    a close with nothing queued (right before the next poll);
  - L{proto.speed.tlsflush}: one TLS flush per reactor turn for all
    connections instead of one C{callLater(0)} per connection (a call
    before the poll on our reactor);
  - L{proto.speed.tlsrecords}: TLS records read and written with
    OpenSSL called directly, errors mapped by pyOpenSSL as before;
  - L{proto.speed.reactor}: an epoll reactor that skips the per-event
    legacy log context (exceptions are still caught and logged);
  - L{proto.speed.setup}: what every connection's set-up repeats
    (C{TCP_NODELAY}, the TLS wrapper's interface declaration, accepting
    the client certificate at the TLS layer) done once, or in C;
  - L{proto.speed.textlog}: twistd's text log observer writes the same
    lines without Twisted's general formatter, and flushes at most every
    50 ms (the admission line of every connection cost ~90 us of a TLS
    handshake's ~900 before).

Another, C{SSL_MODE_RELEASE_BUFFERS} (idle memory per TLS connection
54 -> 31 KiB), is always on: it is part of the TLS context (L{proto.tls}).

They rely on private parts of Twisted's transports and of pyOpenSSL, so
pyproject.toml pins the Twisted and pyOpenSSL versions they are tested
with. None of them changes
behaviour: backpressure, TLS close_notify, a fatal ERR flushed before the
close, half-close and abort are tested with the levers on
(tests/test_speed.py).
"""

from __future__ import annotations

from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from proto.speed.setup import inheritNoDelay
from proto.speed.tlsflush import FastTLSFactory


@implementer(IStreamServerEndpoint)
class FastTLSServerEndpoint:
    """
    Like C{endpoints.wrapServerTLS(creator, endpoint)}, with the levers:
    connections are served by L{proto.speed.tlsflush.FastTLSTransport}.
    """

    def __init__(self, endpoint, creator, clock=None) -> None:
        self.endpoint = endpoint
        self.creator = creator
        self.clock = clock

    def listen(self, factory):
        tls = FastTLSFactory(self.creator, False, factory, clock=self.clock)

        def listening(port):
            inheritNoDelay(port)
            return port

        return self.endpoint.listen(tls).addCallback(listening)


def wrapServerTLS(creator, endpoint, levers: bool = True, clock=None):
    """Wrap C{endpoint} in TLS: with the levers, or plain Twisted's."""
    if levers:
        return FastTLSServerEndpoint(endpoint, creator, clock)
    from twisted.internet import endpoints

    return endpoints.wrapServerTLS(creator, endpoint, clock)
