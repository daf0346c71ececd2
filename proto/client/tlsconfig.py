"""
The client's TLS: its own certificate, and how it decides to trust the
server.

GNP/1 has no PKI by default: the server mints its own certificate, so a
client trusts it by I{pinning} its thumbprint (L{Pin}). Where a real CA is
used, a client can instead verify the chain against a CA file and check
the host name with C{service_identity} (L{CAVerifier}). L{ClientTLS}
builds the pyOpenSSL context once and asks the chosen verifier about every
certificate OpenSSL shows it; a refusal ends the handshake with an error
that says what was wrong (L{ThumbprintMismatch}, L{CertificateNotTrusted}),
never a bare C{certificate verify failed}.

The blocking client uses the standard library's C{ssl} instead
(L{proto.client.blockingtls}), but the same L{Pin} and L{loadIdentity}.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

from proto import certs
from proto.client.errors import (
    CertificateNotTrusted,
    ClientError,
    ServerVerificationError,
    ThumbprintMismatch,
)

if TYPE_CHECKING:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

_HEX = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})\Z")

#: Plain words for the OpenSSL verify errors a misconfigured CA setup hits.
_VERIFY_ERRORS = {
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "unable to get the issuer certificate",
    21: "unable to verify the first certificate",
}


class Pin:
    """
    A pinned server thumbprint: the SHA-1 (40 hex digits) or SHA-256 (64)
    digest of the server certificate's DER. C{:} separators, white space
    and case are ignored, as in the allow-list.

    @ivar thumbprint: the normalised digest.
    """

    def __init__(self, text: str) -> None:
        normal = re.sub(r"[:\s]", "", text).lower()
        if not _HEX.match(normal):
            raise ValueError(
                f"not a thumbprint: {text!r} (expected 40 or 64 hex digits, "
                "':' separators allowed)"
            )
        self.thumbprint = normal

    def thumbprintOf(self, der: bytes) -> str:
        """The digest of C{der} in this pin's algorithm."""
        algorithm = hashlib.sha1 if len(self.thumbprint) == 40 else hashlib.sha256
        return algorithm(der).hexdigest()

    def check(self, der: bytes) -> None:
        """
        @raise ThumbprintMismatch: unless C{der} is the pinned certificate.
        """
        actual = self.thumbprintOf(der)
        if actual != self.thumbprint:
            raise ThumbprintMismatch(actual, self.thumbprint)

    def __repr__(self) -> str:
        return f"Pin({self.thumbprint!r})"


def pinForCertificateFile(path: str) -> Pin:
    """
    The SHA-256 pin of the first certificate in a PEM file (for example the
    data directory's C{server.pem}).

    @raise ValueError: naming the file when it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            cert = certs.loadCertificates(f.read())[0]
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load certificate {path}: {e}") from None
    return Pin(certs.sha256Thumbprint(cert))


@dataclass(frozen=True)
class Identity:
    """The client's certificate chain (leaf first) and private key."""

    chain: list[x509.Certificate]
    key: certs.SigningKey
    certPath: str
    keyPath: str


def loadIdentity(certPath: str, keyPath: str) -> Identity:
    """
    Load the client's PEM certificate (chain after it) and PEM key.

    @raise ValueError: with a sentence naming the file that cannot be used.
    """
    chain, key = certs.loadCertificateAndKey(certPath, keyPath, "client")
    return Identity(chain, key, certPath, keyPath)


def _describe(cert: x509.Certificate) -> str:
    name = certs.commonName(cert)
    return repr(name) if name else "(no common name)"


class PinVerifier:
    """Trusts exactly the server certificate with the pinned thumbprint."""

    def __init__(self, pin: Pin, serverName: str | None = None) -> None:
        self.pin = pin
        self.serverName = serverName

    def configure(self, ctx: SSL.Context) -> None:
        """Nothing to load: the chain is not consulted, only the leaf."""

    def verify(
        self, cert: x509.Certificate, errno: int, depth: int, preverifyOK: bool
    ) -> ServerVerificationError | None:
        """Accept the chain; judge the leaf (depth 0) by its thumbprint."""
        if depth != 0:
            return None
        try:
            self.pin.check(cert.public_bytes(serialization.Encoding.DER))
        except ThumbprintMismatch as e:
            return e
        return None


class CAVerifier:
    """
    Trusts a server whose chain leads to a certificate in C{caFile} and
    whose certificate names C{hostname} (DNS name or IP address).
    """

    def __init__(self, caFile: str, hostname: str) -> None:
        self.caFile = caFile
        self.hostname = hostname
        self.serverName = hostname

    def configure(self, ctx: SSL.Context) -> None:
        try:
            ctx.load_verify_locations(self.caFile)
        except SSL.Error as e:
            raise ValueError(f"cannot load CA file {self.caFile}: {e}") from None

    def verify(
        self, cert: x509.Certificate, errno: int, depth: int, preverifyOK: bool
    ) -> ServerVerificationError | None:
        """OpenSSL judges the chain; C{service_identity} judges the name."""
        if not preverifyOK:
            why = _VERIFY_ERRORS.get(errno, f"OpenSSL verify error {errno}")
            return CertificateNotTrusted(
                f"server certificate {_describe(cert)} (depth {depth}) is not "
                f"trusted by the CA file {self.caFile}: {why}"
            )
        if depth != 0:
            return None
        try:
            if isIPAddress(self.hostname) or isIPv6Address(self.hostname):
                verify_certificate_ip_address(cert, self.hostname)
            else:
                verify_certificate_hostname(cert, self.hostname)
        except (VerificationError, CertificateError) as e:
            return CertificateNotTrusted(
                f"server certificate {_describe(cert)} is not valid for "
                f"{self.hostname!r}: {e}"
            )
        return None


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    Makes the client side of every TLS connection: TLS 1.2 or newer, the
    client certificate, and server verification by a L{PinVerifier} or a
    L{CAVerifier}.

    A verifier's refusal is handed to Twisted with
    C{TLSMemoryBIOProtocol.failVerification}, which aborts the handshake
    and gives the application protocol's C{connectionLost} that error as
    its reason.
    """

    def __init__(self, identity: Identity, verifier: PinVerifier | CAVerifier) -> None:
        self.identity = identity
        self.verifier = verifier
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
        ctx.use_certificate(identity.chain[0])
        for extra in identity.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(identity.key)
        ctx.check_privatekey()
        verifier.configure(ctx)
        self._context = ctx

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        name = self.verifier.serverName
        if name and not (isIPAddress(name) or isIPv6Address(name)):
            connection.set_tlsext_host_name(name.encode("idna"))
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            self._verifyCallback(tlsProtocol),
        )
        return connection

    def _verifyCallback(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> Callable[[SSL.Connection, X509 | x509.Certificate, int, int, int], bool]:
        verifier = self.verifier

        def verifyCallback(
            conn: SSL.Connection, cert: X509 | x509.Certificate, errno: int, depth: int, preverifyOK: int
        ) -> bool:
            # Must never raise: pyOpenSSL would re-raise from do_handshake,
            # past Twisted's error handling.
            problem: ClientError | None
            try:
                if not isinstance(cert, x509.Certificate):
                    cert = cert.to_cryptography()
                problem = verifier.verify(cert, errno, depth, bool(preverifyOK))
            except Exception as e:
                problem = ClientError(f"cannot verify the server certificate: {e}")
            if problem is None:
                return True
            # Twisted leaves Failure() unannotated (as in proto.dispatch).
            tlsProtocol.failVerification(Failure(problem))  # type: ignore[no-untyped-call]
            return False

        return verifyCallback


def clientTLS(
    certPath: str,
    keyPath: str,
    *,
    pin: str | Pin | None = None,
    caFile: str | None = None,
    hostname: str | None = None,
) -> ClientTLS:
    """
    Build the TLS creator for L{proto.client.connect}.

    @param pin: trust the server certificate with this thumbprint.
    @param caFile: or trust servers certified by a CA in this PEM file...
    @param hostname: ...whose certificate names this host (required with
        C{caFile}; with C{pin} only sent as SNI).
    @raise ValueError: when the files cannot be used or the choice of
        verification is not exactly one of C{pin} and C{caFile}.
    """
    identity = loadIdentity(certPath, keyPath)
    if (pin is None) == (caFile is None):
        raise ValueError("give exactly one way to verify the server: a pin or a CA file")
    if pin is not None:
        verifier: PinVerifier | CAVerifier = PinVerifier(
            pin if isinstance(pin, Pin) else Pin(pin), hostname
        )
    else:
        assert caFile is not None  # exactly one of the two, checked above
        if not hostname:
            raise ValueError("a CA file needs the server's host name to check")
        verifier = CAVerifier(caFile, hostname)
    return ClientTLS(identity, verifier)
