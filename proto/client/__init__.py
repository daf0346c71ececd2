"""
GNP/1 clients.

  - L{connect} (Twisted): an admitted L{GNPClientProtocol} whose requests
    return Deferreds; pushes go to a per-request C{onPush} callable.
  - L{BlockingClient} (standard library C{ssl}, no reactor): requests block;
    pushes are read with C{nextPush()}.

Both verify the server by a pinned thumbprint or by a CA file and host
name (L{clientTLS} builds the Twisted side), and both raise the errors of
L{proto.client.errors}. The command-line client is L{proto.client.cli}.
"""

from proto.client.blocking import BlockingClient
from proto.client.connection import GNPClientProtocol, connect, endpointFor
from proto.client.errors import (
    CertificateNotTrusted,
    ClientError,
    ClientTimeout,
    ConnectFailed,
    ConnectionClosed,
    ServerShuttingDown,
    ProtocolError,
    Refused,
    ServerError,
    ServerVerificationError,
    ThumbprintMismatch,
)
from proto.client.messages import Reply
from proto.client.tlsconfig import Pin, clientTLS, pinForCertificateFile

__all__ = [
    "BlockingClient",
    "CertificateNotTrusted",
    "ClientError",
    "ClientTimeout",
    "ConnectFailed",
    "ConnectionClosed",
    "ServerShuttingDown",
    "GNPClientProtocol",
    "Pin",
    "ProtocolError",
    "Refused",
    "Reply",
    "ServerError",
    "ServerVerificationError",
    "ThumbprintMismatch",
    "clientTLS",
    "connect",
    "endpointFor",
    "pinForCertificateFile",
]
