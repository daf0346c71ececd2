"""
The graceful drain when the server stops (issue 10): in memory against
the protocol, then against a real C{twistd} sent SIGTERM with a slow
request in flight.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

from twisted.internet import defer, reactor
from twisted.trial import unittest

from proto.client import ServerError, ServerShuttingDown

from proto.protocol import SHUTDOWN_REASON
from proto.server import ServerConfig
from tests.support import (
    BlockingConnection,
    connectInMemory,
    freePort,
    makeFactory,
    realTimeClock,
    request,
    startTwistd,
)
from tests.test_client import ClientTestMixin, waitUntil
from tests.test_twistd import waitFor


def kinds(frames):
    return [(f.kind, f.sequence) for f in frames]


class ShutdownInMemoryTests(unittest.TestCase):
    def setUp(self):
        self.clock = realTimeClock()
        self.factory = makeFactory(self.clock, ServerConfig())

    def test_inFlightFinishesNewRequestsRefused(self):
        conn = connectInMemory(self.factory)
        idle = connectInMemory(self.factory)
        conn.send(request("SLEEP", "2", sequence="slow"))
        done = self.factory.shutdown(grace=10)
        idle.flush()
        self.assertEqual(kinds(idle.frames()), [("ERR", None)])
        self.assertTrue(idle.closed)
        conn.send(request("PING", sequence="late"))
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("ERR", "late")])
        self.assertEqual(frames[0].reason, SHUTDOWN_REASON)
        self.assertFalse(conn.closed)
        self.assertNoResult(done)
        conn.advance(2)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("OK", "slow"), ("ERR", None)])
        self.assertEqual(frames[1].reason, SHUTDOWN_REASON)
        self.assertTrue(conn.closed)
        self.successResultOf(done)
        # New connections are refused in words.
        late = connectInMemory(self.factory)
        self.assertIn(SHUTDOWN_REASON.encode(), late.client.raw)
        self.assertTrue(late.closed)

    def test_graceCancelsWhatIsLeft(self):
        conn = connectInMemory(self.factory)
        conn.send(request("SLEEP", "100", sequence="slow"))
        done = self.factory.shutdown(grace=3)
        conn.advance(2)
        self.assertEqual(conn.frames(), [])
        conn.advance(1)
        frames = conn.frames()
        self.assertEqual(kinds(frames), [("ERR", "slow"), ("ERR", None)])
        self.assertTrue(conn.closed)
        self.successResultOf(done)


class SigtermTests(unittest.TestCase):
    """A real twistd, SIGTERM, a slow request in flight."""

    def test_sigtermDrains(self):
        workdir = os.path.abspath(self.mktemp())
        webPort = freePort()
        server = startTwistd(
            workdir, ["--drain-timeout", "20", "--metrics", f"tcp:{webPort}:interface=127.0.0.1"]
        )
        self.addCleanup(server.stop)
        health = f"http://127.0.0.1:{webPort}/healthz"
        with urllib.request.urlopen(health, timeout=10) as response:
            self.assertEqual(response.status, 200)

        conn = BlockingConnection(server.port, server.dataDir.clientContext(), timeout=30)
        self.addCleanup(conn.close)
        self.assertTrue(conn.next().ok)
        # Acknowledged writes, then a slow request in flight.
        for i in range(20):
            conn.send(request("PUT", f"k/{i}", sequence=f"p{i}", body=json.dumps({"i": i}).encode()))
        acked = {conn.next().sequence for _ in range(20)}
        self.assertEqual(len(acked), 20)
        conn.send(request("SLEEP", "3", sequence="slow"))
        time.sleep(0.3)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        # /healthz says draining, and the port takes no new connection.
        def unhealthy():
            try:
                with urllib.request.urlopen(health, timeout=5):
                    return False
            except urllib.error.HTTPError as e:
                return e.code == 503
            except OSError:
                return False

        waitFor(unhealthy, seconds=5, what="/healthz 503")
        conn.send(request("PING", sequence="late"))
        late = conn.next()
        self.assertEqual((late.kind, late.sequence, late.reason), ("ERR", "late", SHUTDOWN_REASON))
        slow = conn.next()
        self.assertEqual((slow.kind, slow.sequence), ("OK", "slow"))
        self.assertGreater(time.monotonic() - started, 2)
        final = conn.next()
        self.assertEqual((final.kind, final.sequence, final.reason), ("ERR", None, SHUTDOWN_REASON))
        self.assertRaises(EOFError, conn.next)
        conn.close()
        server.process.wait(30)
        # twistd ends by re-raising the signal it stopped for (Twisted's
        # exit-by-signal), which systemd counts as a clean stop.
        self.assertIn(server.process.returncode, (0, -signal.SIGTERM), server.log())
        log = server.log()
        self.assertIn("Draining 1 connection(s)", log)
        self.assertIn("Drain finished", log)

        # No acknowledged PUT lost: a new server on the same data sees them.
        again = startTwistd(workdir, dataDir=server.dataDir.path)
        self.addCleanup(again.stop)
        check = BlockingConnection(again.port, again.dataDir.clientContext())
        self.addCleanup(check.close)
        self.assertTrue(check.next().ok)
        check.send(request("GET", *[f"k/{i}" for i in range(20)], sequence="g"))
        results = json.loads(check.next().body)["Results"]
        self.assertEqual([doc["i"] for doc in results], list(range(20)))


class ClientSeesShutdownTests(ClientTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_clearError(self):
        factory = makeFactory(reactor)
        port = yield self.listen(factory, lambda: factory.connections)
        client = yield self.connect(port)
        slow = client.request("SLEEP", "0.5")
        yield waitUntil(lambda: any(p._inflight for p in factory.admitted))
        factory.shutdown(grace=10)
        late = yield self.assertFailure(client.request("PING"), ServerError)
        self.assertIn(SHUTDOWN_REASON, str(late))
        yield slow
        yield waitUntil(lambda: not factory.connections)
        error = yield self.assertFailure(client.request("PING"), ServerShuttingDown)
        self.assertIn("shutting down", str(error))
