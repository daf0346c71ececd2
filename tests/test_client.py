"""
Tests for the Twisted client (L{proto.client.connection}) and its TLS
(L{proto.client.tlsconfig}), over real TLS on 127.0.0.1.

Two kinds of server:
  - the real server (L{tests.support}), for the behaviour of the protocol;
  - L{MiniServer}, a tiny TLS server in this module that can misbehave on
    purpose (close in the middle of a reply, send garbage, never answer),
    which the real server never does.
"""

from __future__ import annotations

import os

from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.task import deferLater
from twisted.trial import unittest
from zope.interface import implementer

from proto import certs, wire
from proto.client import (
    CertificateNotTrusted,
    ClientTimeout,
    ConnectFailed,
    ConnectionClosed,
    Pin,
    ProtocolError,
    Refused,
    ServerError,
    ServerShuttingDown,
    ThumbprintMismatch,
    clientTLS,
    connect,
    endpointFor,
)
from proto.client.messages import formatSeconds
from proto.hub import ChangeHub
from proto.store import SQLiteStore
from tests import support


def writeIdentity(testCase: unittest.TestCase, minted: certs.Minted) -> tuple[str, str]:
    """Write a certificate and key to temporary files; return their paths."""
    base = testCase.mktemp()
    os.makedirs(base)
    certPath, keyPath = os.path.join(base, "client.pem"), os.path.join(base, "client.key")
    with open(certPath, "wb") as f:
        f.write(minted.certPEM)
    with open(keyPath, "wb") as f:
        f.write(minted.keyPEM)
    return certPath, keyPath


def writePEM(testCase: unittest.TestCase, pem: bytes) -> str:
    path = testCase.mktemp()
    with open(path, "wb") as f:
        f.write(pem)
    return path


@defer.inlineCallbacks
def waitUntil(condition, seconds: float = 5.0):
    """Poll C{condition} on the real reactor, for at most C{seconds}."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"condition not met within {seconds} s")


# -- a misbehaving server ------------------------------------------------------


@implementer(IHandshakeListener)
class MiniServer(Protocol):
    """
    A small GNP/1 server for the cases the real one never produces. It
    greets with C{OK} (or the factory's C{refusal}) and answers:
      - C{PING}: C{PONG};
      - C{PUSHES n}: C{OK}, then C{n} pushes with bodies C{"1"} .. C{"n"};
      - C{CUT}: the first half of a reply, then closes;
      - C{GARBAGE}: a frame that is not GNP/1;
      - C{FATAL}: a connection-level C{ERR} without Sequence, then closes;
      - C{DRAIN}: the final C{ERR Server is shutting down} of a drain
        (no Sequence), then closes;
      - C{SILENT}: nothing at all.
    """

    def __init__(self, factory: "MiniFactory") -> None:
        self.factory = factory
        self.buffer = b""
        self.request: wire.Request | None = None

    def connectionMade(self) -> None:
        self.factory.open.add(self)

    def connectionLost(self, reason) -> None:
        self.factory.open.discard(self)

    def handshakeCompleted(self) -> None:
        self.transport.write(wire.encodeGreeting(self.factory.refusal))
        if self.factory.refusal is not None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.request is None:
                end = self.buffer.find(wire.HEAD_END)
                if end < 0:
                    return
                self.request = wire.parseHead(self.buffer[:end])
                self.buffer = self.buffer[end + 4:]
            size = self.request.size or 0
            if len(self.buffer) < size:
                return
            request, self.request = self.request, None
            request.body, self.buffer = self.buffer[:size], self.buffer[size:]
            self.answer(request)

    def answer(self, request: wire.Request) -> None:
        seq = request.sequence
        if request.command == "PING":
            self.transport.write(wire.encodeReply(seq, b"PONG"))
        elif request.command == "PUSHES":
            self.transport.write(wire.encodeReply(seq))
            for n in range(1, int(request.args[0]) + 1):
                self.transport.write(wire.encodePush(seq, str(n).encode()))
        elif request.command == "CUT":
            reply = wire.encodeReply(seq, b"x" * 100)
            self.transport.write(reply[: len(reply) // 2])
            self.transport.loseConnection()
        elif request.command == "GARBAGE":
            self.transport.write(b"HELLO\r\nSequence: " + seq.encode() + b"\r\n\r\n")
        elif request.command == "FATAL":
            self.transport.write(wire.encodeError("Malformed Sequence", None))
            self.transport.loseConnection()
        elif request.command == "DRAIN":
            self.transport.write(wire.encodeError("Server is shutting down", None))
            self.transport.loseConnection()


class MiniFactory(Factory):
    def __init__(self, refusal: str | None = None) -> None:
        self.refusal = refusal
        self.open: set[MiniServer] = set()

    def buildProtocol(self, addr) -> MiniServer:
        return MiniServer(self)


# -- fixtures ----------------------------------------------------------------------


class ClientTestMixin:
    """Starting servers and connecting clients, with cleanups that leave the reactor clean."""

    def setUp(self) -> None:
        self.creds = support.Credentials.get()
        self.certPath, self.keyPath = writeIdentity(self, self.creds.client)
        self.serverPin = certs.sha256Thumbprint(self.creds.server.certificate)

    @defer.inlineCallbacks
    def listen(self, factory, openConnections):
        """Listen with C{factory}; on cleanup stop and wait until its connections are gone."""
        port = yield support.listenInProcess(reactor, factory)

        @defer.inlineCallbacks
        def stop():
            yield port.stopListening()
            yield waitUntil(lambda: not openConnections())

        self.addCleanup(stop)
        return port.getHost().port

    def realServer(self, **kw):
        """Listen with the real server; fires with the port number."""
        factory = support.makeFactory(reactor, **kw)
        return self.listen(factory, lambda: factory.connections)

    def miniServer(self, refusal: str | None = None):
        factory = MiniFactory(refusal)
        return self.listen(factory, lambda: factory.open)

    def tls(self, client: certs.Minted | None = None, **trust):
        if client is None:
            certPath, keyPath = self.certPath, self.keyPath
        else:
            certPath, keyPath = writeIdentity(self, client)
        if not trust:
            trust = {"pin": self.serverPin}
        return clientTLS(certPath, keyPath, **trust)

    @defer.inlineCallbacks
    def connect(self, port: int, tls=None, **kw):
        client = yield connect(reactor, f"tcp:127.0.0.1:{port}", tls or self.tls(), **kw)
        self.addCleanup(client.close)
        return client


# -- tests against the real server ---------------------------------------------------


class RequestTests(ClientTestMixin, unittest.TestCase):
    """Requests and replies with the real server."""

    @defer.inlineCallbacks
    def test_pingEcho(self):
        client = yield self.connect((yield self.realServer()))
        pong = yield client.ping()
        echo = yield client.echo("a", "b", "c")
        self.assertEqual((pong.status, pong.body), ("OK", b"PONG"))
        self.assertEqual(echo.text, "a b c")
        self.assertNotEqual(pong.sequence, echo.sequence)

    @defer.inlineCallbacks
    def test_manyInFlight(self):
        """Pipelined requests are matched by Sequence, whatever the reply order."""
        client = yield self.connect((yield self.realServer()))
        order = []
        slow = client.sleep(0.3).addCallback(lambda r: order.append("slow"))
        echoes = [client.echo(str(n)) for n in range(200)]
        replies = yield defer.gatherResults(echoes)
        order.append("echoes")
        yield slow
        self.assertEqual([r.text for r in replies], [str(n) for n in range(200)])
        self.assertEqual(order, ["echoes", "slow"])

    @defer.inlineCallbacks
    def test_errBecomesServerError(self):
        client = yield self.connect((yield self.realServer()))
        error = yield self.assertFailure(client.request("FROB", "x"), ServerError)
        self.assertIn("FROB", error.reason)
        self.assertEqual(error.command, "FROB")
        # The connection stays usable after a per-request ERR.
        self.assertEqual((yield client.ping()).body, b"PONG")

    @defer.inlineCallbacks
    def test_timeoutHeader(self):
        """C{timeout=} sends the Timeout header: the server answers ERR Timeout."""
        client = yield self.connect((yield self.realServer()))
        error = yield self.assertFailure(client.sleep(5, timeout=0.2), ServerError)
        self.assertIn("Timeout", error.reason)

    @defer.inlineCallbacks
    def test_headersAndBody(self):
        """Headers and bodies reach the server: PUT, then GET with Include."""
        hub = ChangeHub()
        store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"), hub=hub, reactor=reactor)
        yield store.start()
        self.addCleanup(store.close)
        client = yield self.connect((yield self.realServer(store=store, hub=hub)))
        yield client.put("employees/2-B", {"Name": "Andrew"})
        put = yield client.put("employees/1-A", {"Name": "Nancy", "ReportsTo": "employees/2-B"})
        self.assertEqual(put.json()["Id"], "employees/1-A")
        got = yield client.get("employees/1-A", "employees/9-Z", include=["ReportsTo"])
        self.assertEqual(
            got.json(),
            {
                "Results": [{"Name": "Nancy", "ReportsTo": "employees/2-B"}, None],
                "Includes": {"employees/2-B": {"Name": "Andrew"}},
            },
        )
        conflict = client.put("employees/1-A", {"Name": "N"}, ifMatch=put.json()["Etag"] + 5)
        error = yield self.assertFailure(conflict, ServerError)
        self.assertIn("Conflict", error.reason)

    @defer.inlineCallbacks
    def test_watchPushes(self):
        """WATCH pushes go to the watch's callback until UNWATCH."""
        hub = ChangeHub()
        store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"), hub=hub, reactor=reactor)
        yield store.start()
        self.addCleanup(store.close)
        client = yield self.connect((yield self.realServer(store=store, hub=hub)))
        pushes = []
        watch = yield client.watch("orders/", pushes.append)
        yield client.put("orders/1", {"n": 1})
        yield client.put("other/1", {"n": 2})
        yield waitUntil(lambda: pushes)
        self.assertEqual(pushes[0].status, "PUSH")
        self.assertEqual(pushes[0].sequence, watch.sequence)
        self.assertEqual(pushes[0].json()["Id"], "orders/1")
        yield client.unwatch(watch.sequence)
        yield client.put("orders/2", {"n": 3})
        yield client.ping()
        self.assertEqual([p.json()["Id"] for p in pushes], ["orders/1"])

    @defer.inlineCallbacks
    def test_remind(self):
        client = yield self.connect((yield self.realServer()))
        pushes = []
        yield client.remind(0.05, "tea is ready", pushes.append)
        yield waitUntil(lambda: pushes)
        self.assertEqual(pushes[0].text, "tea is ready")

    @defer.inlineCallbacks
    def test_quitEndsConnection(self):
        """After QUIT the server closes; later requests fail at once."""
        client = yield self.connect((yield self.realServer()))
        yield client.quit()
        yield client.whenClosed()
        yield self.assertFailure(client.ping(), ConnectionClosed)

    @defer.inlineCallbacks
    def test_closeFailsPending(self):
        client = yield self.connect((yield self.realServer()))
        pending = client.sleep(5)
        yield client.close()
        error = yield self.assertFailure(pending, ConnectionClosed)
        self.assertIn("closed by the client", str(error))

    @defer.inlineCallbacks
    def test_badRequestFailsDeferred(self):
        """A request that cannot be written fails its Deferred; nothing is sent."""
        client = yield self.connect((yield self.realServer()))
        yield self.assertFailure(client.request("GET", "two words"), ValueError)
        yield self.assertFailure(client.request("PING", timeout=0), ValueError)
        self.assertEqual((yield client.ping()).body, b"PONG")

    @defer.inlineCallbacks
    def test_endpointFor(self):
        """Host and port instead of a description (HostnameEndpoint)."""
        port = yield self.realServer()
        client = yield connect(reactor, endpointFor(reactor, "127.0.0.1", port), self.tls())
        self.addCleanup(client.close)
        self.assertEqual((yield client.ping()).body, b"PONG")


class AdmissionTests(ClientTestMixin, unittest.TestCase):
    """The greeting and server verification."""

    @defer.inlineCallbacks
    def test_refusedCarriesReason(self):
        port = yield self.realServer()
        d = connect(reactor, f"tcp:127.0.0.1:{port}", self.tls(self.creds.stranger))
        error = yield self.assertFailure(d, Refused)
        self.assertIn(certs.sha1Thumbprint(self.creds.stranger.certificate), error.reason)

    @defer.inlineCallbacks
    def test_pinMismatch(self):
        """A server whose certificate is not the pinned one is refused, clearly."""
        port = yield self.realServer()
        wrong = "ab" * 32
        d = connect(reactor, f"tcp:127.0.0.1:{port}", self.tls(pin=wrong), timeout=10)
        error = yield self.assertFailure(d, ThumbprintMismatch)
        self.assertEqual(
            str(error),
            f"server certificate thumbprint {self.serverPin} does not match the pinned {wrong}",
        )

    @defer.inlineCallbacks
    def test_sha1PinWithColons(self):
        """A SHA-1 pin in upper case with ':' separators is accepted."""
        port = yield self.realServer()
        sha1 = certs.sha1Thumbprint(self.creds.server.certificate).upper()
        pin = ":".join(sha1[i:i + 2] for i in range(0, 40, 2))
        client = yield self.connect(port, self.tls(pin=pin))
        self.assertEqual((yield client.ping()).body, b"PONG")

    @defer.inlineCallbacks
    def test_caAndHostname(self):
        port = yield self.realServer()
        caFile = writePEM(self, self.creds.server.certPEM)
        client = yield self.connect(port, self.tls(caFile=caFile, hostname="localhost"))
        self.assertEqual((yield client.ping()).body, b"PONG")

    @defer.inlineCallbacks
    def test_caWrongHostname(self):
        port = yield self.realServer()
        caFile = writePEM(self, self.creds.server.certPEM)
        d = connect(reactor, f"tcp:127.0.0.1:{port}", self.tls(caFile=caFile, hostname="example.com"))
        error = yield self.assertFailure(d, CertificateNotTrusted)
        self.assertIn("example.com", str(error))

    @defer.inlineCallbacks
    def test_caUntrusted(self):
        port = yield self.realServer()
        caFile = writePEM(self, certs.mintCA("some other CA").certPEM)
        d = connect(reactor, f"tcp:127.0.0.1:{port}", self.tls(caFile=caFile, hostname="localhost"))
        error = yield self.assertFailure(d, CertificateNotTrusted)
        self.assertIn("not trusted by the CA file", str(error))

    @defer.inlineCallbacks
    def test_connectRefused(self):
        port = support.freePort()
        yield self.assertFailure(connect(reactor, f"tcp:127.0.0.1:{port}", self.tls()), ConnectFailed)

    def test_trustChoiceRequired(self):
        self.assertRaises(ValueError, clientTLS, self.certPath, self.keyPath)
        self.assertRaises(
            ValueError, clientTLS, self.certPath, self.keyPath, pin=self.serverPin, caFile="x"
        )
        self.assertRaises(ValueError, clientTLS, self.certPath, self.keyPath, caFile="x")

    def test_keyMustMatchCertificate(self):
        otherCert, _ = writeIdentity(self, self.creds.stranger)
        error = self.assertRaises(ValueError, clientTLS, otherCert, self.keyPath, pin=self.serverPin)
        self.assertIn("does not belong", str(error))


class MisbehavingServerTests(ClientTestMixin, unittest.TestCase):
    """What the client does when the server breaks the rules or goes away."""

    @defer.inlineCallbacks
    def test_closeMidReply(self):
        """Every pending request fails clearly when the server closes mid-reply."""
        client = yield self.connect((yield self.miniServer()))
        silent = client.request("SILENT")
        cut = client.request("CUT")
        for d in (silent, cut):
            error = yield self.assertFailure(d, ConnectionClosed)
            self.assertIn("the server closed the connection (2 request(s) pending)", str(error))

    @defer.inlineCallbacks
    def test_garbage(self):
        client = yield self.connect((yield self.miniServer()))
        pending = client.request("SILENT")
        error = yield self.assertFailure(client.request("GARBAGE"), ProtocolError)
        self.assertIn("HELLO", str(error))
        yield self.assertFailure(pending, ProtocolError)

    @defer.inlineCallbacks
    def test_fatalErrorReason(self):
        """A connection-level ERR (no Sequence) is named in the loss error."""
        client = yield self.connect((yield self.miniServer()))
        error = yield self.assertFailure(client.request("FATAL"), ConnectionClosed)
        self.assertIn("Malformed Sequence", str(error))

    @defer.inlineCallbacks
    def test_drained(self):
        """The server's drain ends pending and later requests with ServerShuttingDown."""
        client = yield self.connect((yield self.miniServer()))
        error = yield self.assertFailure(client.request("DRAIN"), ServerShuttingDown)
        self.assertEqual(
            str(error), "the server is shutting down: it closed the connection (1 request(s) pending)"
        )
        error = yield self.assertFailure(client.ping(), ServerShuttingDown)
        self.assertEqual(str(error), "the server is shutting down: the connection is closed")

    @defer.inlineCallbacks
    def test_localTimeout(self):
        """No reply at all: the local wait ends a little after the Timeout."""
        client = yield self.connect((yield self.miniServer()))
        error = yield self.assertFailure(client.request("SILENT", timeout=0.05), ClientTimeout)
        self.assertIn("SILENT", str(error))
        self.assertEqual((yield client.ping()).body, b"PONG")

    @defer.inlineCallbacks
    def test_pushesInOrder(self):
        client = yield self.connect((yield self.miniServer()))
        pushes = []
        yield client.request("PUSHES", "3", onPush=pushes.append)
        yield client.ping()
        self.assertEqual([p.text for p in pushes], ["1", "2", "3"])

    @defer.inlineCallbacks
    def test_refusalGreeting(self):
        port = yield self.miniServer(refusal="Client certificate has expired on 2020-01-01")
        d = connect(reactor, f"tcp:127.0.0.1:{port}", self.tls())
        error = yield self.assertFailure(d, Refused)
        self.assertEqual(error.reason, "Client certificate has expired on 2020-01-01")

    @defer.inlineCallbacks
    def test_noGreeting(self):
        """A server that never greets: connect gives up after its timeout."""
        factory = Factory.forProtocol(Protocol)  # plain TCP: not even a TLS handshake
        opened = []
        factory.buildProtocol = lambda addr: opened.append(Protocol()) or opened[-1]
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        d = connect(reactor, f"tcp:127.0.0.1:{port.getHost().port}", self.tls(), timeout=0.2)
        yield self.assertFailure(d, ClientTimeout)
        yield waitUntil(lambda: all(p.transport is None or p.transport.disconnected for p in opened))


class UnitTests(unittest.TestCase):
    def test_pinNormalises(self):
        self.assertEqual(Pin(" AB:cd" + "0" * 36).thumbprint, "abcd" + "0" * 36)
        self.assertRaises(ValueError, Pin, "abc")
        self.assertRaises(ValueError, Pin, "g" * 40)

    def test_formatSeconds(self):
        self.assertEqual(formatSeconds(30), "30")
        self.assertEqual(formatSeconds(0.25), "0.25")
        self.assertEqual(formatSeconds(1e-5), "0.00001")
        self.assertRaises(ValueError, formatSeconds, 0)
        self.assertRaises(ValueError, formatSeconds, 1e-9)
