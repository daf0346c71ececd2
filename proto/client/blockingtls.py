"""
The blocking client's TLS, on the standard library's C{ssl}: its context
(our certificate, and how the server is trusted: a pinned thumbprint or a
CA file) and the connection up to the end of the handshake, with errors
that say what was wrong (C{shared/PROTOCOL.md}, section 1: TLS, client
certificates; section 9 for the thumbprints).

The Twisted client's TLS is L{proto.client.tlsconfig} (pyOpenSSL); both use
its L{Pin} and L{loadIdentity}. After the handshake the connection is
L{proto.client.blocking.BlockingClient}'s.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from proto.client.core import ClientCore
from proto.client.errors import (
    CertificateNotTrusted,
    ClientError,
    ClientTimeout,
    ConnectFailed,
)
from proto.client.tlsconfig import Pin, loadIdentity


def sslContext(certPath: str, keyPath: str, pin: Pin | None, caFile: str | None) -> ssl.SSLContext:
    """
    The C{ssl} client context: TLS 1.2 at least, our certificate and key,
    and either no chain check (C{pin}: the leaf is compared after the
    handshake, L{handshake}) or the chain and host name against C{caFile}.

    @raise ValueError: a file cannot be used (named in the message).
    """
    loadIdentity(certPath, keyPath)  # for a clear error naming the bad file
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if pin is not None:
        # The chain is not consulted; the leaf is compared with the pin
        # right after the handshake, before anything is sent or read.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        try:
            ctx.load_verify_locations(cafile=caFile)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load CA file {caFile}: {e}") from None
    ctx.load_cert_chain(certPath, keyPath)
    return ctx


def handshake(
    core: ClientCore[Any, Any],
    context: ssl.SSLContext,
    host: str,
    port: int,
    serverName: str | None,
    pin: Pin | None,
    timeout: float,
) -> ssl.SSLSocket:
    """
    Connect (TCP) and make the TLS handshake within C{timeout} seconds each,
    then check the server's certificate against C{pin} (with a CA file,
    C{context} checked the chain and the name in the handshake).

    @param core: the connection's core; a TLS failure ends it, and it words
        the error as for the Twisted client (section 1: TLS first).
    @raise ClientTimeout, ConnectFailed: no TCP connection or no handshake.
    @raise CertificateNotTrusted, ThumbprintMismatch: not the trusted server.
    @raise ConnectionClosed: the TLS handshake failed otherwise.
    """
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise ClientTimeout(f"cannot connect to {host}:{port} within {timeout:g} seconds") from None
    except OSError as e:
        raise ConnectFailed(f"cannot connect to {host}:{port}: {e.strerror or e}") from None
    try:
        sock = context.wrap_socket(raw, server_hostname=serverName or host)
    except ssl.SSLCertVerificationError as e:
        raise CertificateNotTrusted(
            f"server certificate is not trusted: {e.verify_message or e}"
        ) from None
    except ssl.SSLError as e:
        raise core.connectionLost(str(e), tlsFailed=True).error from None
    except socket.timeout:
        raise ClientTimeout(f"TLS handshake not done within {timeout:g} seconds") from None
    finally:
        raw.close()  # detached by wrap_socket on success: closes nothing then
    if pin is not None:
        try:
            pin.check(sock.getpeercert(binary_form=True) or b"")
        except ClientError:
            sock.close()
            raise
    return sock
