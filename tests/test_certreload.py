"""
Reloading the server certificate without a restart (L{proto.certreload}):
in process with real TLS clients, then a real twistd sent SIGHUP.
"""

from __future__ import annotations

import os
import signal
import ssl

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from proto import certs, datadir
from proto.certreload import CertificateFiles
from proto.client import ThumbprintMismatch
from proto.tls import ServerTLS
from tests import support
from tests.support import BlockingConnection, request, startTwistd
from tests.test_client import ClientTestMixin
from tests.test_twistd import waitFor


def writePair(directory: str, minted: certs.Minted, certPEM: bytes | None = None) -> tuple[str, str]:
    certPath = os.path.join(directory, "server.pem")
    keyPath = os.path.join(directory, "server.key")
    with open(certPath + ".new", "wb") as f:
        f.write(certPEM or minted.certPEM)
    with open(keyPath + ".new", "wb") as f:
        f.write(minted.keyPEM)
    os.replace(keyPath + ".new", keyPath)
    os.replace(certPath + ".new", certPath)
    return certPath, keyPath


def mintServer(name: str) -> certs.Minted:
    return certs.mint(name, server=True, altNames=datadir.SERVER_NAMES)


class ReloadInProcessTests(ClientTestMixin, unittest.TestCase):
    def watchedPair(self, nextName: str):
        """
        A directory holding a server pair minted for "first", a second pair
        minted for C{nextName} (not written), the TLS creator serving the
        files and the L{CertificateFiles} that watches them.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        first, following = mintServer("first"), mintServer(nextName)
        certPath, keyPath = writePair(directory, first)
        creator = ServerTLS.fromFiles(certPath, keyPath)
        return directory, first, following, creator, CertificateFiles(creator, certPath, keyPath)

    @defer.inlineCallbacks
    def test_newConnectionsGetTheNewCertificateOldOnesKeepTheirs(self):
        directory, first, second, creator, files = self.watchedPair("second")
        factory = support.makeFactory(reactor)
        port = yield support.listenInProcess(reactor, factory, creator)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        pin1 = certs.sha256Thumbprint(first.certificate)
        pin2 = certs.sha256Thumbprint(second.certificate)

        old = yield self.connect(number, tls=self.tls(pin=pin1))
        self.assertFalse(files.check(), "nothing changed yet")

        writePair(directory, second)
        self.assertTrue(files.check())
        self.assertEqual(creator.fingerprintSHA1, certs.sha1Thumbprint(second.certificate))
        new = yield self.connect(number, tls=self.tls(pin=pin2))
        self.assertEqual((yield new.request("PING")).body, b"PONG")
        yield self.assertFailure(
            self.connect(number, tls=self.tls(pin=pin1)), ThumbprintMismatch
        )
        # The connection made before the swap still works, on its old certificate.
        self.assertEqual((yield old.request("PING")).body, b"PONG")

    @defer.inlineCallbacks
    def test_badOrMismatchedPairKeepsTheOld(self):
        directory, first, other, creator, files = self.watchedPair("other")
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        # A certificate whose key is not the one in the key file.
        certPath, _ = writePair(directory, first, certPEM=other.certPEM)
        self.assertFalse(files.check())
        with open(certPath, "wb") as f:
            f.write(b"not a certificate")
        self.assertFalse(files.reload())
        self.assertEqual(creator.fingerprintSHA1, certs.sha1Thumbprint(first.certificate))
        failures = [e for e in events if e.get("event") == "cert_reload_failed"]
        self.assertEqual(len(failures), 2)
        self.assertIn("does not belong", failures[0]["reason"])
        self.assertIn("cannot load server certificate", failures[1]["reason"])

        factory = support.makeFactory(reactor)
        port = yield support.listenInProcess(reactor, factory, creator)
        self.addCleanup(port.stopListening)
        client = yield self.connect(
            port.getHost().port, tls=self.tls(pin=certs.sha256Thumbprint(first.certificate))
        )
        self.assertEqual((yield client.request("PING")).body, b"PONG")


class SighupTests(unittest.TestCase):
    def test_sighupReloadsTheCertificate(self):
        workdir = os.path.abspath(self.mktemp())
        second = mintServer("second")
        server = startTwistd(workdir)
        self.addCleanup(server.stop)
        dataDir = server.dataDir.path
        with open(server.dataDir.file(datadir.SERVER_CERT), "rb") as f:
            firstPEM = f.read()

        def context(pem: bytes):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cadata=pem.decode())
            ctx.load_cert_chain(server.dataDir.file(datadir.CLIENT_CERT),
                                server.dataDir.file(datadir.CLIENT_KEY))
            return ctx

        old = BlockingConnection(server.port, context(firstPEM))
        self.addCleanup(old.close)
        self.assertTrue(old.next().ok)
        writePair(dataDir, second)
        server.process.send_signal(signal.SIGHUP)
        waitFor(lambda: "Server certificate reloaded" in server.log(), seconds=10,
                what="the reload in the log")
        self.assertIn("SIGHUP: reloading", server.log())
        new = BlockingConnection(server.port, context(second.certPEM))
        self.addCleanup(new.close)
        self.assertTrue(new.next().ok)
        self.assertRaises(ssl.SSLCertVerificationError, BlockingConnection,
                          server.port, context(firstPEM))
        old.send(request("PING", sequence="1"))
        self.assertEqual(old.next().body, b"PONG")
