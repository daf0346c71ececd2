"""
The connection set-up lever (L{proto.speed.setup}) and a connection's
objects being freed without the garbage collector: they must not change
behaviour.
"""

from __future__ import annotations

import gc
import socket
import weakref

from OpenSSL._util import lib
from twisted.internet import endpoints, protocol, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import ITCPTransport
from twisted.trial import unittest
from zope.interface import directlyProvides, providedBy

from proto import certs
from proto.commands import builtin
from proto.server import ServerConfig
from proto.speed import setup
from proto.speed.tlsflush import FastTLSTransport
from tests.support import Credentials, listenInProcess, makeFactory
from tests.test_speed import Client, LeveredServerMixin, waitFor


def noDelayOf(server) -> int:
    return server.transport.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class SetupLeverTests(LeveredServerMixin, unittest.TestCase):
    """Our server over real loopback TCP+TLS with the levers on."""

    @inlineCallbacks
    def connect(self, who="client"):
        client = yield self.dial(who)

        def cleanUp():
            if not client.lost.called:
                client.transport.abortConnection()
            return client.lost

        self.addCleanup(cleanUp)
        return client

    @inlineCallbacks
    def test_noDelayInherited(self):
        """
        Accepted sockets have TCP_NODELAY from the listening socket; the
        protocol's setTcpNoDelay(True) has nothing to do, and turning it off
        and on again still works.
        """
        self.assertEqual(self.port.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, True)
        yield self.connect()
        (server,) = self.factory.admitted
        tls = server.transport
        self.assertIsInstance(tls, FastTLSTransport)
        self.assertTrue(tls.factory.noDelay.inherited)
        self.assertTrue(noDelayOf(server))
        tls.setTcpNoDelay(False)
        self.assertFalse(noDelayOf(server))
        tls.setTcpNoDelay(True)
        self.assertTrue(noDelayOf(server))

    def test_noDelayNotInherited(self):
        """A port whose sockets do not have it: set per connection, as before."""
        calls = []

        class TCP:
            def setTcpNoDelay(self, enabled):
                calls.append(enabled)

        tls = FastTLSTransport.__new__(FastTLSTransport)
        tls.factory = type("F", (), {"noDelay": setup.NoDelay()})()
        tls.factory.noDelay.check(object())  # no socket: not inherited
        self.assertIs(tls.factory.noDelay.inherited, False)
        tls.transport = TCP()
        tls.setTcpNoDelay(True)
        self.assertEqual(calls, [True])

    @inlineCallbacks
    def test_interfacesOfTheTCPTransport(self):
        """The TLS transport provides what the TCP transport provides, as directlyProvides made it."""
        yield self.connect()
        yield self.connect()
        first, second = self.factory.admitted
        for server in (first, second):
            tls = server.transport
            self.assertTrue(ITCPTransport.providedBy(tls))

            class Plain:
                pass

            plain = Plain()
            directlyProvides(plain, providedBy(tls.transport))
            # What Twisted's ProtocolWrapper.makeConnection declares.
            self.assertEqual(set(providedBy(plain)), set(providedBy(tls.transport)))
            self.assertTrue(set(providedBy(tls.transport)) <= set(providedBy(tls)))
        self.assertIs(first.transport.__provides__, second.transport.__provides__)

    @inlineCallbacks
    def test_certificatesStillJudged(self):
        """
        With the C verify callback, any certificate still completes the
        handshake and admission judges it (section 2): admitted, refused in
        words, or none at all.
        """
        admitted = yield self.connect("client")
        self.assertTrue(admitted.frames[0].ok)
        (server,) = self.factory.admitted
        ssl = server.transport._tlsConnection._ssl
        self.assertEqual(lib.SSL_get_verify_mode(ssl), lib.SSL_VERIFY_PEER | lib.SSL_VERIFY_CLIENT_ONCE)
        self.assertEqual(server.identity.sha1, certs.sha1Thumbprint(Credentials.get().client.certificate))
        stranger = yield self.connect("stranger")
        self.assertFalse(stranger.frames[0].ok)
        self.assertIn("is not on the allow-list", stranger.frames[0].reason)
        expired = yield self.connect("expired")
        self.assertIn("expired on", expired.frames[0].reason)
        nobody = yield self.connect(None)
        self.assertIn("No client certificate was provided", nobody.frames[0].reason)

    @inlineCallbacks
    def test_freedWithoutTheGarbageCollector(self):
        """
        A connection the client closes leaves no reference cycle: its
        protocol and transports are freed as soon as it is gone.
        """
        client = yield self.connect()
        (server,) = self.factory.admitted
        refs = [weakref.ref(server), weakref.ref(server.transport), weakref.ref(server.transport.transport)]
        del server
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        client.transport.loseConnection()
        yield client.lost
        yield waitFor(lambda: not self.factory.connections)
        yield waitFor(lambda: all(ref() is None for ref in refs), timeout=2)


class HandshakeStepTests(unittest.TestCase):
    """
    The handshake steps without pyOpenSSL's wrapper: a failing handshake
    still ends the connection; a creator that does not accept any
    certificate in C keeps pyOpenSSL's checks and works alike.
    """

    @inlineCallbacks
    def listen(self, creator=None):
        from zope.interface import implementer
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator

        self.factory = makeFactory(reactor, ServerConfig(closeGrace=1.0), registry=builtin.registry)
        if creator == "python":
            tlsCreator = Credentials.get().serverTLS()

            @implementer(IOpenSSLServerConnectionCreator)
            class PythonCallback:
                # No acceptsAnyCertificate: pyOpenSSL's own callback runs.
                def serverConnectionForTLS(self, tlsProtocol):
                    return tlsCreator.serverConnectionForTLS(tlsProtocol)

            creator = PythonCallback()
        self.port = yield listenInProcess(reactor, self.factory, creator=creator, levers=True)
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def test_garbageEndsTheConnection(self):
        yield self.listen()
        sock = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(sock.close)
        yield waitFor(lambda: self.factory.connections)
        sock.sendall(b"PING\r\n\r\n" * 20)
        yield waitFor(lambda: not self.factory.connections)
        self.assertEqual(self.factory.admitted, set())

    @inlineCallbacks
    def test_pythonVerifyCallbackCreator(self):
        yield self.listen("python")
        for who, ok in (("client", True), ("stranger", False)):
            creds = Credentials.get()
            endpoint = endpoints.wrapClientTLS(
                creds.clientOptions(getattr(creds, who)),
                endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port),
            )
            client = yield endpoint.connect(protocol.Factory.forProtocol(Client))
            yield waitFor(lambda: client.frames)
            self.assertEqual(client.frames[0].ok, ok)
            if ok:
                (server,) = self.factory.admitted
                self.assertFalse(server.transport.factory.acceptAnyCertificate)
            client.transport.loseConnection()
            yield client.lost


class AdmittedLineTests(unittest.TestCase):
    """The Admitted line's event is the one C{self.log.info} makes."""

    def test_sameEvent(self):
        from twisted.logger import globalLogPublisher

        from proto.admitting import ADMITTED, _logInfo
        from proto.protocol import GNPServerProtocol

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        proto = GNPServerProtocol(makeFactory(reactor, ServerConfig()))
        fields = {"peer": "127.0.0.1:5", "sha1": "ab" * 20, "cn": "x", "admitted": True,
                  "grant": "can=write", "name": "", "event": "admission"}
        proto.log.info(ADMITTED, **dict(fields))
        _logInfo(proto, ADMITTED, dict(fields))
        general, fast = events
        # (Observers may add keys of their own, such as the legacy log
        # bridge's; they add the same to both.)
        self.assertEqual(set(general), set(fast))
        emitted = set(fields) | {"log_logger", "log_level", "log_namespace", "log_source", "log_format"}
        for key in emitted:
            if key == "log_logger":
                self.assertEqual(general[key].namespace, fast[key].namespace)
                self.assertIs(general[key].observer, fast[key].observer)
            else:
                self.assertEqual(general[key], fast[key], key)
        self.assertLess(abs(general["log_time"] - fast["log_time"]), 5)
        self.assertEqual(fast["log_namespace"], "proto.protocol.GNPServerProtocol")
        self.assertIs(fast["log_source"], proto)
