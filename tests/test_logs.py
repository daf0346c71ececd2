"""
JSON logs (L{proto.logs}): a real twistd with C{--logger proto.logs.json}
writes one JSON object per line, with the structured fields kept.
"""

from __future__ import annotations

import json
import os
import signal

from twisted.trial import unittest

from proto import certs, datadir
from tests.support import BlockingConnection, mintedContext, request, startTwistd
from tests.test_twistd import waitFor


class JSONLogTests(unittest.TestCase):
    def test_linesParseAndCarryTheFields(self):
        workdir = os.path.abspath(self.mktemp())
        server = startTwistd(workdir, ["--drain-timeout", "1"], twistdArgs=["--logger", "proto.logs.json"])
        self.addCleanup(server.stop)
        conn = BlockingConnection(server.port, server.dataDir.clientContext())
        self.addCleanup(conn.close)
        self.assertTrue(conn.next().ok)
        conn.send(request("PING", sequence="1"))
        self.assertEqual(conn.next().body, b"PONG")

        # A stranger is refused: an audit line with its thumbprint and reason.
        stranger = certs.mint("stranger")
        ctx = mintedContext(stranger, workdir, server.dataDir.file(datadir.SERVER_CERT))
        refused = BlockingConnection(server.port, ctx)
        self.addCleanup(refused.close)
        self.assertFalse(refused.next().ok)

        # An allow-list reload.
        with open(server.dataDir.file(datadir.ALLOWLIST), "a") as f:
            f.write(f"{certs.sha1Thumbprint(stranger.certificate)} temp\n")
        waitFor(lambda: '"allowlist_reload"' in server.log(), seconds=10, what="reload line")
        conn.close()
        refused.close()
        server.stop(signal.SIGTERM)

        lines = [line for line in server.log().splitlines() if line.strip()]
        events = [json.loads(line) for line in lines]  # every line is one JSON object
        for event in events:
            self.assertIn("message", event)
            self.assertIn("level", event)
            self.assertIn("time", event)
            self.assertIn("log_namespace", event)
        admissions = [e for e in events if e.get("event") == "admission"]
        admitted = [e for e in admissions if e["admitted"]]
        refusals = [e for e in admissions if not e["admitted"]]
        clientSha1 = certs.sha1Thumbprint(
            certs.loadCertificates(open(server.dataDir.file(datadir.CLIENT_CERT), "rb").read())[0]
        )
        self.assertEqual(admitted[0]["sha1"], clientSha1)
        self.assertEqual(admitted[0]["thumbprint"], clientSha1)
        self.assertRegex(admitted[0]["peer"], r"^127\.0\.0\.1:\d+$")
        self.assertIn("name", admitted[0])
        self.assertIn("cn", admitted[0])
        self.assertEqual(refusals[0]["sha1"], certs.sha1Thumbprint(stranger.certificate))
        self.assertIn("not on the allow-list", refusals[0]["reason"])
        self.assertTrue(any(e.get("event") == "allowlist_reload" for e in events))
        self.assertTrue(any(e.get("event") == "drain_started" for e in events))
        self.assertTrue(any(e.get("event") == "drain_finished" for e in events))
