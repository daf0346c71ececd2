"""
The server's TLS: a pyOpenSSL context that asks every client for a
certificate and accepts any (or none) at the TLS layer.

Why accept any? GNP/1 admits clients by thumbprint, not by issuer, and a
refused client must be told in words why (PROTOCOL.md section 2). So the
handshake always completes and L{proto.admission} judges the certificate
afterwards, in C{handshakeCompleted}.

The context is built once, completely, by L{ServerTLS.newContext}: since
pyOpenSSL 26.2 a context that has made a connection cannot be changed.
To change anything (new ticket keys, a new certificate) build a new
context and swap it in; connections already open keep theirs.

Session resumption (TLS 1.3 and 1.2) uses session tickets: the client
keeps its session, sealed by the server, and shows it on reconnection to
skip the certificate exchange and the signature. The ticket keys are
OpenSSL's own: random, made in memory when a context is created, never
written anywhere (pyOpenSSL exposes no API to set them, and we want none).
So "rotate the ticket keys" is "build a new context":
L{ServerTLS.rotateTicketKeys} does it every L{TICKET_KEY_SECONDS} (the
server's timer), and a ticket sealed under the old keys is then not
accepted: that client makes one full handshake and gets a new ticket.
Tickets are stateless, so the server keeps no session cache
(C{SESS_CACHE_OFF}: nothing grows with the number of clients).

A resumed session still ends in C{handshakeCompleted}, where admission
runs again against the I{current} allow-list, with the certificate stored
in the ticket (OpenSSL restores the peer certificate from the session):
a client removed from the list cannot get back in by resuming.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi, lib
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from proto import certs

#: How long a context's ticket keys are used before a new context (new
#: keys) replaces it; also the lifetime the tickets announce.
TICKET_KEY_SECONDS = 3600

#: The session id context: OpenSSL refuses to resume a session made under
#: another one, and needs one whenever client certificates are asked for.
#: Every context the server builds must set the same value.
SESSION_ID_CONTEXT = b"gnp"

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

    #: Every context asks for a client certificate and accepts any (or
    #: none) at the TLS layer: admission judges it after the handshake.
    #: The fast transport (L{proto.speed.setup}) may then accept in C.
    acceptsAnyCertificate = True

    def __init__(self, chain: list[x509.Certificate], key, tickets: bool = True) -> None:
        self.certificate = chain[0]
        self.fingerprintSHA1 = certs.sha1Thumbprint(chain[0])
        self._chain = chain
        self._key = key
        self.tickets = tickets
        self._context = self.newContext()

    def newContext(self) -> SSL.Context:
        """
        A complete server context for the current certificate, with fresh
        ticket keys. Anything that replaces the context (ticket-key
        rotation, a certificate reload) must build it here, so that
        resumption keeps working: same session id context, tickets on.
        """
        chain, key = self._chain, self._key
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        options = SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
        if not self.tickets:
            options |= SSL.OP_NO_TICKET
        ctx.set_options(options)
        # Idle memory per connection: OpenSSL frees its record buffers
        # between records (54 -> 31 KiB per idle TLS connection, measured).
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
        ctx.set_session_id(SESSION_ID_CONTEXT)
        # Stateless tickets only: no server-side session cache.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_timeout(TICKET_KEY_SECONDS)
        return ctx

    def rotateTicketKeys(self) -> None:
        """
        Replace the context by a new one: new random ticket keys, in
        memory only. Tickets sealed under the old keys stop working.
        """
        self._context = self.newContext()

    def replaceCertificate(self, chain: list[x509.Certificate], key) -> None:
        """
        Serve C{chain} and C{key} to new connections from now on (a
        certificate reload: L{proto.certreload}); connections already open
        keep theirs. The new context is built completely before it is
        swapped in, so a pair that does not match changes nothing.

        @raise ValueError: the key does not match the certificate (or
            OpenSSL refuses them); the old pair stays in use.
        """
        old = self._chain, self._key
        self._chain, self._key = chain, key
        try:
            context = self.newContext()
        except SSL.Error as e:
            self._chain, self._key = old
            raise ValueError(f"the key does not match the certificate: {e}") from None
        self._context = context
        self.certificate = chain[0]
        self.fingerprintSHA1 = certs.sha1Thumbprint(chain[0])

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


_SHA256 = lib.EVP_get_digestbyname(b"sha256")


def peerCertificateSHA256(transport) -> bytes | None:
    """
    The SHA-256 digest of the client's certificate (of its DER, as the
    allow-list's thumbprints), or C{None} when it sent none. Computed by
    OpenSSL on its own copy of the certificate: no Python object for the
    certificate, no DER copied out. With L{proto.admission.identityOf} it
    replaces L{peerCertificateDER} + C{identityOfDER} on every handshake
    but a certificate's first.
    """
    cert = lib.SSL_get_peer_certificate(transport.getHandle()._ssl)
    if cert == ffi.NULL:
        return None
    try:
        digest = ffi.new("unsigned char[]", lib.EVP_MAX_MD_SIZE)
        size = ffi.new("unsigned int *")
        if not lib.X509_digest(cert, _SHA256, digest, size):
            raise ValueError("OpenSSL could not hash the client certificate")
        return ffi.buffer(digest, size[0])[:]
    finally:
        lib.X509_free(cert)


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
