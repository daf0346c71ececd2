"""
C{--listen haproxy:tcp:PORT}: a real HAProxy (TCP passthrough,
C{send-proxy-v2}) in front of a real C{twistd -n proto}; the server admits
client certificates through it and logs the client's own address, not
HAProxy's (Twisted #12501; C{shared/TWISTED_NOTES.md}, section 9).
"""

import os
import re

from twisted.trial import unittest

from proto import certs
from tests.pgsupport import HAProxy
from tests.support import BlockingConnection, freePort, request, startTwistd
from tests.test_twistd import contextFor, waitFor, writeMinted


class HAProxyTests(unittest.TestCase):
    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        backend = freePort()
        self.server = startTwistd(
            self.workdir, extraArgs=["--listen", f"haproxy:tcp:{backend}:interface=127.0.0.1"]
        )
        self.addCleanup(self.server.stop)
        self.proxy = HAProxy(freePort(), [("127.0.0.1", backend)])
        self.addCleanup(self.proxy.stop)
        self.proxy.start()

    def connectThroughProxy(self, context) -> BlockingConnection:
        conn = BlockingConnection(self.proxy.port, context)
        self.addCleanup(conn.close)
        return conn

    def test_admittedThroughHAProxyWithTheClientsAddress(self):
        conn = self.connectThroughProxy(self.server.dataDir.clientContext())
        self.assertTrue(conn.next().ok)
        conn.send(request("PING", sequence="1"))
        self.assertEqual(conn.next().body, b"PONG")
        ourPort = conn.sock.getsockname()[1]
        logged = waitFor(
            lambda: re.findall(r"Admitted 127\.0\.0\.1:(\d+)", self.server.log()),
            what="the admission in the log",
        )
        # The only admission is ours, under our own port, not HAProxy's.
        self.assertEqual(logged, [str(ourPort)])

    def test_refusedThroughHAProxyWithTheClientsAddress(self):
        stranger = certs.mint("stranger behind haproxy")
        cert, key = writeMinted(self.workdir, "stranger", stranger)
        conn = self.connectThroughProxy(contextFor(self.server.dataDir, cert, key))
        greeting = conn.next()
        self.assertFalse(greeting.ok)
        self.assertIn(certs.sha1Thumbprint(stranger.certificate), greeting.reason)
        ourPort = conn.sock.getsockname()[1]
        waitFor(lambda: f"Refused 127.0.0.1:{ourPort} " in self.server.log(),
                what="the refusal with our address in the log")
