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


class HAProxyWorkersTests(unittest.TestCase):
    """HAProxy in front of C{--workers 2}: each worker reads the PROXY header."""

    def test_admittedByEitherWorkerWithTheClientsAddress(self):
        workdir = os.path.abspath(self.mktemp())
        backend = freePort()
        server = startTwistd(
            workdir,
            extraArgs=["--workers", "2", "--listen", f"haproxy:tcp:{backend}:interface=127.0.0.1"],
        )
        self.addCleanup(server.stop)
        waitFor(lambda: server.log().count(f"starting on {backend}") >= 2, seconds=30,
                what="both workers on the PROXY port")
        proxy = HAProxy(freePort(), [("127.0.0.1", backend)])
        self.addCleanup(proxy.stop)
        proxy.start()
        ports = []
        for _ in range(16):  # all on one worker: a chance of 1 in 32768
            conn = BlockingConnection(proxy.port, server.dataDir.clientContext())
            self.addCleanup(conn.close)
            self.assertTrue(conn.next().ok)
            ports.append(conn.sock.getsockname()[1])

        def admissions():
            found = dict(
                (int(port), worker) for worker, port in re.findall(
                    r"\[(worker-\d+)\] \S+ Admitted 127\.0\.0\.1:(\d+)", server.log()
                )
            )
            return found if set(ports) <= set(found) else None

        found = waitFor(admissions, seconds=15, what="every admission, with our ports")
        self.assertEqual({found[port] for port in ports}, {"worker-0", "worker-1"})
