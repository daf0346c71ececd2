"""
The server's TLS: a pyOpenSSL context that asks every client for a
certificate and accepts any (or none) at the TLS layer.

Why accept any? GNP/1 admits clients by thumbprint, not by issuer, and a
refused client must be told in words why (PROTOCOL.md section 2). So the
handshake always completes and L{proto.admission} judges the certificate
afterwards, in C{handshakeCompleted}.

The context is built once, completely, in L{ServerTLS.__init__}: since
pyOpenSSL 26.2 a context that has made a connection cannot be changed.
To load a new certificate, build a new L{ServerTLS}.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from proto import certs

#: TLS 1.2 suites: forward secrecy and AEAD only.
TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _acceptAnyCertificate(conn, cert, errno, depth, preverifyOK) -> bool:
    # Must never raise: pyOpenSSL would re-raise from do_handshake, past
    # Twisted's error handling. Admission happens after the handshake.
    return True


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    Makes the server side of every TLS connection.

    @ivar certificate: the leaf certificate (C{cryptography}), for logs.
    @ivar fingerprintSHA1: its SHA-1 thumbprint, which clients may pin.
    """

    def __init__(self, chain: list[x509.Certificate], key) -> None:
        self.certificate = chain[0]
        self.fingerprintSHA1 = certs.sha1Thumbprint(chain[0])
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(
            SSL.OP_NO_RENEGOTIATION
            | SSL.OP_NO_COMPRESSION
            | SSL.OP_CIPHER_SERVER_PREFERENCE
            | SSL.OP_NO_TICKET
        )
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
        ctx.set_cipher_list(TLS12_CIPHERS)
        ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES)
        # Ask for a certificate, never require one, accept whatever comes.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, _acceptAnyCertificate)
        ctx.set_session_id(b"gnp")
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        self._context = ctx

    @classmethod
    def fromFiles(cls, certPath: str, keyPath: str) -> "ServerTLS":
        """
        Load a PEM certificate (with its chain after it) and a PEM key
        (PKCS#8 or traditional RSA/EC).

        @raise ValueError: with a sentence naming the file, if either cannot
            be used.
        """
        chain, key = certs.loadCertificateAndKey(certPath, keyPath, "server")
        try:
            return cls(chain, key)
        except SSL.Error as e:
            raise ValueError(
                f"certificate {certPath} and key {keyPath} cannot be used together: {e}"
            ) from None

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        # Twisted sets the accept state and the app data itself.
        return SSL.Connection(self._context, None)


def peerCertificateDER(transport) -> bytes | None:
    """
    The client's certificate on a TLS transport, DER-encoded, or C{None}
    when it sent none. (DER straight from OpenSSL: converting to a
    C{cryptography} object on every handshake costs more than admission.)
    """
    cert = transport.getHandle().get_peer_certificate()
    if cert is None:
        return None
    return crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
