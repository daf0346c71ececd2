"""
The floor: the plainest Twisted TLS server that answers GNP/1 ECHO.

A bare LineReceiver whose delimiter is the end of a request head
(CRLF CRLF), behind TLSMemoryBIOFactory with the server's own TLS context
(L{proto.tls.ServerTLS}). After the handshake it sends C{OK\\r\\n}; for each
head it replies C{OK}, the Sequence, Size and the arguments joined by single
spaces. Nothing else: no admission check, no timeouts, no bodies, no flow
control, no error handling. Whatever our server does on top of this costs
the difference between the two columns of bench/run.py.

    python bench/floor_server.py --port 4500 --cert D/server.pem --key D/server.key
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.internet import reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proto.tls import ServerTLS  # noqa: E402


@implementer(IHandshakeListener)
class FloorEcho(LineReceiver):
    delimiter = b"\r\n\r\n"
    MAX_LENGTH = 8192

    def handshakeCompleted(self):
        self.transport.write(b"OK\r\n")

    def lineReceived(self, head):
        first, _, rest = head.partition(b"\r\n")
        args = b" ".join(first.split()[1:])
        seq = b""
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sequence":
                seq = value.strip()
                break
        if args:
            self.transport.write(b"OK\r\nSequence: %s\r\nSize: %d\r\n\r\n%s" % (seq, len(args), args))
        else:
            self.transport.write(b"OK\r\nSequence: %s\r\n\r\n" % seq)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    a = p.parse_args()
    factory = TLSMemoryBIOFactory(ServerTLS.fromFiles(a.cert, a.key), False, Factory.forProtocol(FloorEcho))
    reactor.listenTCP(a.port, factory, interface=a.interface)
    reactor.run()


if __name__ == "__main__":
    main()
