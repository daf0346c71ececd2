"""
Tests for the blocking client (L{proto.client.blocking}) against the real
server in this process. The blocking calls run in threads
(C{deferToThread}) so that the reactor keeps serving meanwhile.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from proto import certs
from proto.client import (
    BlockingClient,
    CertificateNotTrusted,
    ClientTimeout,
    ConnectFailed,
    ConnectionClosed,
    ProtocolError,
    Refused,
    ServerError,
    ServerShuttingDown,
    ThumbprintMismatch,
)
from tests import support
from tests.test_client import ClientTestMixin, writeIdentity, writePEM


class BlockingTestMixin(ClientTestMixin):
    def open(self, port: int, client: certs.Minted | None = None, **trust) -> defer.Deferred:
        """Connect in a thread; fires with the client, closed on cleanup."""
        certPath, keyPath = (self.certPath, self.keyPath) if client is None else writeIdentity(self, client)
        trust = trust or {"pin": self.serverPin}

        def made(blocking: BlockingClient) -> BlockingClient:
            self.addCleanup(deferToThread, blocking.close)
            return blocking

        d = deferToThread(
            BlockingClient, "127.0.0.1", port, certPath=certPath, keyPath=keyPath,
            connectTimeout=10, **trust,
        )
        return d.addCallback(made)


class BlockingClientTests(BlockingTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_requests(self):
        client = yield self.open((yield self.realServer()))

        def talk():
            return client.ping().body, client.echo("a", "b").text, client.request("PING").status

        self.assertEqual((yield deferToThread(talk)), (b"PONG", "a b", "OK"))

    @defer.inlineCallbacks
    def test_pipelined(self):
        """send() pipelines; replies are matched by Sequence, in any order."""
        client = yield self.open((yield self.realServer()))

        def talk():
            slow = client.send("SLEEP", "0.3")
            echoes = [client.send("ECHO", str(n)) for n in range(100)]
            texts = [client.wait(*pending, timeout=10).text for pending in echoes]
            slowDoneFirst = slow[1].done()
            return texts, slowDoneFirst, client.wait(*slow, timeout=10).status

        texts, slowDoneFirst, slowStatus = yield deferToThread(talk)
        self.assertEqual(texts, [str(n) for n in range(100)])
        self.assertEqual((slowDoneFirst, slowStatus), (False, "OK"))

    @defer.inlineCallbacks
    def test_serverError(self):
        client = yield self.open((yield self.realServer()))
        error = yield self.assertFailure(deferToThread(client.request, "FROB"), ServerError)
        self.assertIn("FROB", error.reason)
        self.assertEqual((yield deferToThread(client.ping)).body, b"PONG")

    @defer.inlineCallbacks
    def test_remindPush(self):
        client = yield self.open((yield self.realServer()))

        def talk():
            reply = client.remind(0.05, "tea is ready")
            return reply.sequence, client.nextPush(timeout=10), client.nextPush(timeout=0.05)

        sequence, push, nothing = yield deferToThread(talk)
        self.assertEqual((push.status, push.sequence, push.text), ("PUSH", sequence, "tea is ready"))
        self.assertIsNone(nothing)

    @defer.inlineCallbacks
    def test_quitThenClosed(self):
        """After QUIT the connection ends: requests and nextPush raise."""
        client = yield self.open((yield self.realServer()))
        yield deferToThread(client.quit)
        yield self.assertFailure(deferToThread(client.nextPush, 10), ConnectionClosed)
        yield self.assertFailure(deferToThread(client.ping), ConnectionClosed)
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_closeFailsPending(self):
        client = yield self.open((yield self.realServer()))

        def talk():
            pending = client.send("SLEEP", "5")
            client.close()
            return pending[1].exception(timeout=10)

        error = yield deferToThread(talk)
        self.assertIsInstance(error, ConnectionClosed)

    @defer.inlineCallbacks
    def test_localTimeout(self):
        client = yield self.open((yield self.miniServer()))
        error = yield self.assertFailure(
            deferToThread(client.request, "SILENT", timeout=0.05), ClientTimeout
        )
        self.assertIn("SILENT", str(error))

    @defer.inlineCallbacks
    def test_closeMidReply(self):
        client = yield self.open((yield self.miniServer()))
        error = yield self.assertFailure(deferToThread(client.request, "CUT"), ConnectionClosed)
        self.assertIn("the server closed the connection", str(error))

    @defer.inlineCallbacks
    def test_garbage(self):
        client = yield self.open((yield self.miniServer()))
        yield self.assertFailure(deferToThread(client.request, "GARBAGE"), ProtocolError)

    @defer.inlineCallbacks
    def test_drained(self):
        """Worded as by the Twisted client (one core): ServerShuttingDown."""
        client = yield self.open((yield self.miniServer()))
        error = yield self.assertFailure(deferToThread(client.request, "DRAIN"), ServerShuttingDown)
        self.assertEqual(
            str(error), "the server is shutting down: it closed the connection (1 request(s) pending)"
        )
        yield self.assertFailure(deferToThread(client.nextPush, 10), ServerShuttingDown)
        error = yield self.assertFailure(deferToThread(client.ping), ServerShuttingDown)
        self.assertEqual(str(error), "the server is shutting down: the connection is closed")


class BlockingAdmissionTests(BlockingTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_refused(self):
        port = yield self.realServer()
        error = yield self.assertFailure(self.open(port, self.creds.stranger), Refused)
        self.assertIn(certs.sha1Thumbprint(self.creds.stranger.certificate), error.reason)

    @defer.inlineCallbacks
    def test_pinMismatch(self):
        port = yield self.realServer()
        wrong = "12" * 20
        error = yield self.assertFailure(self.open(port, pin=wrong), ThumbprintMismatch)
        actual = certs.sha1Thumbprint(self.creds.server.certificate)
        self.assertEqual(
            str(error), f"server certificate thumbprint {actual} does not match the pinned {wrong}"
        )

    @defer.inlineCallbacks
    def test_ca(self):
        port = yield self.realServer()
        caFile = writePEM(self, self.creds.server.certPEM)
        client = yield self.open(port, caFile=caFile, serverName="localhost")
        self.assertEqual((yield deferToThread(client.ping)).body, b"PONG")
        yield self.assertFailure(
            self.open(port, caFile=caFile, serverName="example.com"), CertificateNotTrusted
        )

    @defer.inlineCallbacks
    def test_connectFailed(self):
        yield self.assertFailure(self.open(support.freePort()), ConnectFailed)
