"""
The server's TLS context with real handshakes in memory: the versions it
accepts, and that it asks for a client certificate without requiring one.
"""

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, PrivateCertificate, TLSVersion, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial import unittest

from proto.commands import builtin
from zope.interface import implementer

from tests.support import Credentials, FrameCollector, makeFactory, realTimeClock


class VersionTests(unittest.TestCase):
    def handshake(self, minimum: TLSVersion, maximum: TLSVersion, options=None):
        creds = Credentials.get()
        clock = realTimeClock()
        factory = makeFactory(clock, registry=builtin.registry)
        server = TLSMemoryBIOFactory(creds.serverTLS(), False, factory, clock=clock).buildProtocol(None)
        options = options or optionsForClientTLS(
            "localhost",
            trustRoot=Certificate.loadPEM(creds.server.certPEM),
            clientCertificate=PrivateCertificate.loadPEM(creds.client.certPEM + creds.client.keyPEM),
            extraCertificateOptions={"insecurelyLowerMinimumTo": minimum, "lowerMaximumSecurityTo": maximum},
        )
        collector = FrameCollector()
        client = TLSMemoryBIOFactory(
            options, True, protocol.Factory.forProtocol(lambda: collector), clock=clock
        ).buildProtocol(None)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=clock)
        for _ in range(5):
            pump.flush()
            clock.advance(0)
        return server, collector

    def test_tls12(self):
        server, client = self.handshake(TLSVersion.TLSv1_2, TLSVersion.TLSv1_2)
        self.assertEqual(client.raw, b"OK\r\n")
        self.assertEqual(server.getHandle().get_protocol_version_name(), "TLSv1.2")

    def test_tls13(self):
        server, client = self.handshake(TLSVersion.TLSv1_3, TLSVersion.TLSv1_3)
        self.assertEqual(client.raw, b"OK\r\n")
        self.assertEqual(server.getHandle().get_protocol_version_name(), "TLSv1.3")

    def test_tls11Refused(self):
        """
        A client offering only TLS 1.1 (with its own security level lowered
        so that it really sends the hello) is refused by the server.
        """
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_1_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_1_VERSION)
        ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")

        @implementer(IOpenSSLClientConnectionCreator)
        class OldClient:
            def clientConnectionForTLS(self, tlsProtocol):
                return SSL.Connection(ctx, None)

        server, client = self.handshake(TLSVersion.TLSv1_1, TLSVersion.TLSv1_1, OldClient())
        self.assertEqual(client.raw, b"")
        self.assertIn("version", str(client.lost.value))


class PeerCertificateTests(unittest.TestCase):
    """What the server reads of the client's certificate after the handshake."""

    def test_digestIsTheSHA256OfTheDER(self):
        """peerCertificateSHA256 is the SHA-256 of the DER that peerCertificateDER gives."""
        import hashlib

        from proto.tls import peerCertificateDER, peerCertificateSHA256
        from tests.support import connectInMemory

        conn = connectInMemory()
        der = peerCertificateDER(conn.serverTLS)
        self.assertEqual(der, Credentials.get().client.certificate.public_bytes(Encoding.DER))
        self.assertEqual(peerCertificateSHA256(conn.serverTLS), hashlib.sha256(der).digest())
        self.assertEqual(conn.server.identity.sha256, hashlib.sha256(der).hexdigest())

    def test_noCertificate(self):
        """No certificate: no digest, and the refusal says so."""
        from proto import tls
        from tests.support import connectInMemory

        seen = []
        original = tls.peerCertificateSHA256

        def spy(transport):
            seen.append(original(transport))
            return seen[-1]

        self.patch(tls, "peerCertificateSHA256", spy)
        import proto.admitting

        self.patch(proto.admitting, "peerCertificateSHA256", spy)
        conn = connectInMemory(client=None)
        self.assertEqual(seen, [None])
        self.assertIn(b"No client certificate", conn.client.raw)
