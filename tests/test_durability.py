"""
Durability: a PUT or DELETE answered OK survives the server being killed
with SIGKILL at once (no clean shutdown), on a real twistd and a real
SQLite file.
"""

import json
import os
import signal

from twisted.trial import unittest

from tests.support import BlockingConnection, request, startTwistd

COUNT = 100


class KillTests(unittest.TestCase):
    def test_acknowledgedWritesSurviveSIGKILL(self):
        workdir = os.path.abspath(self.mktemp())
        server = startTwistd(workdir)
        self.addCleanup(server.stop)
        conn = BlockingConnection(server.port, server.dataDir.clientContext())
        self.addCleanup(conn.close)
        self.assertTrue(conn.next().ok)

        # Many writes in flight at once, so that they are group-committed.
        conn.send(request("PUT", "gone/1", sequence="d0", body=b'{"doomed": true}'))
        self.assertEqual(conn.next().kind, "OK")
        conn.send(
            b"".join(
                request("PUT", f"docs/{i}", sequence=str(i), body=json.dumps({"n": i}).encode())
                for i in range(COUNT)
            )
            + request("DELETE", "gone/1", sequence="d1")
        )
        replies = [conn.next() for _ in range(COUNT + 1)]
        self.assertEqual({r.kind for r in replies}, {"OK"})
        # Kill the moment the last OK is read: no chance to flush anything.
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

        again = startTwistd(workdir, port=server.port)
        self.addCleanup(again.stop)
        conn2 = BlockingConnection(again.port, again.dataDir.clientContext())
        self.addCleanup(conn2.close)
        self.assertTrue(conn2.next().ok)
        conn2.send(request("GET", *[f"docs/{i}" for i in range(COUNT)], "gone/1", sequence="g"))
        reply = conn2.next()
        self.assertEqual(reply.kind, "OK")
        results = json.loads(reply.body)["Results"]
        self.assertEqual(results, [{"n": i} for i in range(COUNT)] + [None])
