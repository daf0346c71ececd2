"""
The real outside components the scale-out tests use (L{tests.pgsupport}):
they start, and they are never silently skipped in CI.
"""

import os
import socket
import threading

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
        backend.settimeout(10)
        self.addCleanup(backend.close)
        proxy = HAProxy(freePort(), [backend.getsockname()], check=False)
        self.addCleanup(proxy.stop)
        received = []

        def accept():
            while True:
                try:
                    conn, _ = backend.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(5)
                    data = b""
                    while b"hello" not in data:
                        chunk = conn.recv(1024)
                        if not chunk:
                            break
                        data += chunk
                    received.append(data)
                    if b"hello" in data:
                        return

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        proxy.start()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
            client.sendall(b"hello")
            thread.join(10)
        self.assertTrue(received[-1].startswith(b"\r\n\r\n\x00\r\nQUIT\n\x21"), received)
        self.assertTrue(received[-1].endswith(b"hello"))
