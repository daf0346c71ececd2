"""
The real outside components the scale-out tests use (L{tests.pgsupport}):
they start, and they are never silently skipped in CI.
"""

import os
import socket

from twisted.trial import unittest

from tests.pgsupport import HAProxy, missingComponent, sharedCluster
from tests.support import freePort


class MissingComponentTests(unittest.TestCase):
    def test_skipsOutsideCI(self):
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CI"})
        error = missingComponent("HAProxy", "apt-get install -y haproxy")
        self.assertIsInstance(error, unittest.SkipTest)
        self.assertIn("HAProxy", str(error))

    def test_failsInCI(self):
        self.patch(os, "environ", dict(os.environ, CI="true"))
        error = missingComponent("HAProxy", "apt-get install -y haproxy")
        self.assertNotIsInstance(error, unittest.SkipTest)
        self.assertIn("CI=true", str(error))


class ComponentTests(unittest.TestCase):
    def test_postgresKeepsBytesExactly(self):
        import psycopg

        body = b'{"b": 1, "a": "\\u0000", "a": 2}'
        with psycopg.connect(sharedCluster().createDatabase(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (body bytea)")
            conn.execute("INSERT INTO t VALUES (%s)", (body,))
            (stored,) = conn.execute("SELECT body FROM t").fetchone()
        self.assertEqual(bytes(stored), body)

    def test_haproxySendsProxyV2(self):
        backend = socket.socket()
        backend.bind(("127.0.0.1", 0))
        backend.listen(8)
        backend.settimeout(20)
        self.addCleanup(backend.close)
        proxy = HAProxy(freePort(), [backend.getsockname()], check=False)
        self.addCleanup(proxy.stop)
        proxy.start()
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
        self.addCleanup(client.close)
        client.sendall(b"hello")
        # The kernel queues HAProxy's connections (its start-up probe's
        # too): read each until it ends or says hello.
        for _ in range(5):
            conn, _ = backend.accept()
            with conn:
                conn.settimeout(20)
                data = b""
                while b"hello" not in data:
                    try:
                        chunk = conn.recv(1024)
                    except ConnectionResetError:  # the probe's, cut by HAProxy
                        break
                    if not chunk:
                        break
                    data += chunk
            if b"hello" in data:
                break
        self.assertTrue(data.startswith(b"\r\n\r\n\x00\r\nQUIT\n\x21"), data)
        self.assertTrue(data.endswith(b"hello"), data)
