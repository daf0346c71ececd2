"""
End to end: a real proto server in this process, on 127.0.0.1, over real
TLS, with this package's commands loaded the way C{twistd proto
--commands proto_hello} loads them, and the proto client library.

Run: C{python -m twisted.trial proto_hello}.
"""

from __future__ import annotations

import os

from twisted.internet import defer, endpoints, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from proto import certs, datadir
from proto.admission import AllowList
from proto.client import ServerError, clientTLS, connect
from proto.hub import ChangeHub
from proto.plugins import withPlugins
from proto.server import GNPServerFactory, ServerConfig, defaultRegistry
from proto.store import SQLiteStore
from proto.tls import ServerTLS


class HelloTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        server = certs.mint("hello server", server=True, altNames=datadir.SERVER_NAMES)
        self.writer, self.reader = certs.mint("writer"), certs.mint("reader")
        allow = AllowList.parse(
            datadir.allowlistLine(self.writer.certificate, "the writer", "prefix=stamps/")
            + datadir.allowlistLine(self.reader.certificate, "the reader", "can=read")
        )
        hub = ChangeHub()
        store = SQLiteStore(os.path.join(self.dir, "docs.sqlite3"), hub=hub, reactor=reactor)
        yield store.start()
        self.addCleanup(store.close)
        registry = withPlugins(defaultRegistry(), ["proto_hello"], useEntryPoints=False)
        self.factory = GNPServerFactory(
            ServerConfig(), lambda: allow, registry=registry, store=store, hub=hub, clock=reactor
        )
        endpoint = endpoints.wrapServerTLS(
            ServerTLS([server.certificate], server.key),
            endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        )
        port = yield endpoint.listen(self.factory)
        self.port = port.getHost().port
        self.pin = certs.sha256Thumbprint(server.certificate)

        @defer.inlineCallbacks
        def stop():
            yield port.stopListening()
            for _ in range(500):
                if not self.factory.connections:
                    break
                yield deferLater(reactor, 0.01, lambda: None)

        self.addCleanup(stop)

    @defer.inlineCallbacks
    def client(self, minted):
        certPath, keyPath = (os.path.join(self.dir, f"{minted.certificate.serial_number}.{ext}") for ext in ("pem", "key"))
        with open(certPath, "wb") as f:
            f.write(minted.certPEM)
        with open(keyPath, "wb") as f:
            f.write(minted.keyPEM)
        client = yield connect(reactor, f"tcp:127.0.0.1:{self.port}", clientTLS(certPath, keyPath, pin=self.pin))
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_hello(self):
        client = yield self.client(self.reader)
        reply = yield client.request("HELLO", "there")
        self.assertEqual(reply.text, "Hello, there! (asked by the reader)")

    @defer.inlineCallbacks
    def test_countdownPushes(self):
        client = yield self.client(self.reader)
        pushes = []
        reply = yield client.request("COUNTDOWN", "3", "0.01", onPush=pushes.append)
        self.assertEqual(reply.status, "OK")
        for _ in range(500):
            if len(pushes) == 3:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual([p.text for p in pushes], ["3", "2", "1"])
        error = yield self.assertFailure(client.request("COUNTDOWN", "lots"), ServerError)
        self.assertIn("whole number", error.reason)

    @defer.inlineCallbacks
    def test_stampNeedsWriteOnTheId(self):
        writer = yield self.client(self.writer)
        reply = yield writer.request("STAMP", "stamps/1")
        self.assertEqual(reply.json()["Id"], "stamps/1")
        got = yield writer.get("stamps/1")
        self.assertEqual(got.json()["Results"][0]["StampedBy"], "the writer")
        error = yield self.assertFailure(writer.request("STAMP", "other/1"), ServerError)
        self.assertEqual(error.reason, "Forbidden: the writer may not STAMP other/1")
        reader = yield self.client(self.reader)
        error = yield self.assertFailure(reader.request("STAMP", "stamps/2"), ServerError)
        self.assertEqual(error.reason, "Forbidden: the reader may not STAMP stamps/2")
