"""
The errors a GNP/1 client reports, shared by the Twisted and the blocking
client so that callers catch the same classes whichever they use.

Every error carries a sentence meant for a person (C{str(error)}); the
attributes hold the parts a program may want.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class of everything the client raises on purpose."""


class ServerError(ClientError):
    """
    The server answered a request with C{ERR}.

    @ivar reason: the server's reason, one line of text.
    @ivar sequence: the request's Sequence.
    @ivar command: the command that failed.
    """

    def __init__(self, reason: str, sequence: str | None, command: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sequence = sequence
        self.command = command


class Refused(ClientError):
    """
    The server refused the connection in its greeting (C{ERR reason}):
    no certificate, a thumbprint not on the allow-list, an expired one.

    @ivar reason: the server's reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"server refused the connection: {reason}")
        self.reason = reason


class ConnectFailed(ClientError):
    """The TCP connection could not be made (refused, unreachable, no such host)."""


class ConnectionClosed(ClientError):
    """
    The connection ended (or had already ended) before a reply arrived.
    """


class ServerShuttingDown(ConnectionClosed):
    """
    The server is stopping (a graceful drain): it answered the requests it
    had accepted, then sent a final C{ERR Server is shutting down} and
    closed. Reconnect (to it once restarted, or to another one).
    """


class ProtocolError(ClientError):
    """The server sent bytes that are not GNP/1; the client dropped it."""


class ClientTimeout(ClientError, TimeoutError):
    """
    No reply (or no greeting) came in time. The request may still run on
    the server; only the local wait was given up.
    """


class ServerVerificationError(ClientError):
    """The server's certificate was not the one we were told to trust."""


class ThumbprintMismatch(ServerVerificationError):
    """
    The server's certificate does not have the pinned thumbprint.

    @ivar actual: the server certificate's thumbprint, in the pin's
        algorithm (40 or 64 lower-case hex digits).
    @ivar pinned: the pinned thumbprint, normalised.
    """

    def __init__(self, actual: str, pinned: str) -> None:
        super().__init__(
            f"server certificate thumbprint {actual} does not match the pinned {pinned}"
        )
        self.actual = actual
        self.pinned = pinned


class CertificateNotTrusted(ServerVerificationError):
    """
    CA verification failed: the chain does not lead to the CA file, or the
    certificate does not name the host we connected to.
    """
