"""
TLS session resumption (proto/tls.py): tickets resume TLS 1.2 and 1.3
sessions; admission runs again on a resumed session against the current
allow-list; rotating the ticket keys ends the old tickets.

Real TLS over loopback: our server in process (with the speed levers, as
it runs), the client is the standard library's C{ssl} in a thread (it can
offer a saved session, which Twisted's client TLS cannot).
"""

from __future__ import annotations

import os
import ssl
import tempfile

from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from proto.admission import AllowList
from proto.commands import builtin
from proto.server import GNPServerFactory, ServerConfig
from tests.support import Credentials, dialGreeting, listenInProcess


class Visit:
    """One connection's outcome, as the client saw it."""

    def __init__(self, greeting: bytes, reused: bool, session, version: str) -> None:
        self.greeting = greeting
        self.reused = reused
        self.session = session
        self.version = version


class ResumptionTests(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):
        creds = Credentials.get()
        self.allowList = creds.allowList
        self.creator = creds.serverTLS()
        self.factory = GNPServerFactory(
            ServerConfig(), lambda: self.allowList, registry=builtin.registry, clock=reactor
        )
        self.port = yield listenInProcess(reactor, self.factory, creator=self.creator)
        self.addCleanup(self.port.stopListening)
        tmp = tempfile.mkdtemp()
        cert, key = os.path.join(tmp, "client.pem"), os.path.join(tmp, "client.key")
        with open(cert, "wb") as f:
            f.write(creds.client.certPEM)
        with open(key, "wb") as f:
            f.write(creds.client.keyPEM)
        self.cert, self.key = cert, key

    def context(self, version: ssl.TLSVersion) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=Credentials.get().server.certPEM.decode())
        ctx.load_cert_chain(self.cert, self.key)
        ctx.minimum_version = ctx.maximum_version = version
        return ctx

    def visit(self, ctx: ssl.SSLContext, session=None):
        """Connect (offering C{session}), read the greeting line, close."""

        def blocking() -> Visit:
            s, greeting = dialGreeting(ctx, self.port.getHost().port, session)
            with s:
                return Visit(greeting, s.session_reused, s.session, s.version())

        return threads.deferToThread(blocking)

    @inlineCallbacks
    def resumes(self, version):
        ctx = self.context(version)
        first = yield self.visit(ctx)
        self.assertEqual(first.greeting, b"OK\r\n")
        self.assertFalse(first.reused)
        second = yield self.visit(ctx, first.session)
        self.assertEqual(second.greeting, b"OK\r\n")
        self.assertTrue(second.reused, f"{version.name}: the session was resumed")
        return second

    def test_tls12Resumes(self):
        return self.resumes(ssl.TLSVersion.TLSv1_2)

    def test_tls13Resumes(self):
        return self.resumes(ssl.TLSVersion.TLSv1_3)

    @inlineCallbacks
    def removedClientCannotResume(self, version):
        ctx = self.context(version)
        first = yield self.visit(ctx)
        self.assertEqual(first.greeting, b"OK\r\n")
        # The operator removes the client from the allow-list.
        self.allowList = AllowList({})
        again = yield self.visit(ctx, first.session)
        self.assertTrue(again.reused, "the ticket was accepted at the TLS layer...")
        self.assertTrue(again.greeting.startswith(b"ERR "), again.greeting)  # ...but not admitted
        self.assertIn(b"is not on the allow-list", again.greeting)
        self.assertEqual(self.factory.admitted, set())

    def test_tls12RemovedClientCannotResume(self):
        return self.removedClientCannotResume(ssl.TLSVersion.TLSv1_2)

    def test_tls13RemovedClientCannotResume(self):
        return self.removedClientCannotResume(ssl.TLSVersion.TLSv1_3)

    @inlineCallbacks
    def test_rotatedKeysEndOldTickets(self):
        ctx = self.context(ssl.TLSVersion.TLSv1_3)
        first = yield self.visit(ctx)
        self.creator.rotateTicketKeys()
        again = yield self.visit(ctx, first.session)
        self.assertEqual(again.greeting, b"OK\r\n")
        self.assertFalse(again.reused, "a ticket from before the rotation is not accepted")
        third = yield self.visit(ctx, again.session)
        self.assertTrue(third.reused, "the new ticket works")
