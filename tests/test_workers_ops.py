"""
STATS, CLIENTS and /metrics answer for the whole server with
C{--workers 2} (a real supervisor and its workers): each worker's
snapshot in C{<data-dir>/run/}, prometheus-client's multiprocess files.
"""

from __future__ import annotations

import json
import os
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from tests.support import BlockingConnection, freePort, request, startTwistd
from tests.test_twistd import waitFor

#: Enough that both workers get some: all 20 on one has a chance of 2 in a million.
CONNECTIONS = 20


class WholeServerTests(unittest.TestCase):
    def test_statsClientsAndMetricsCoverEveryWorker(self):
        workdir = os.path.abspath(self.mktemp())
        webPort = freePort()
        server = startTwistd(
            workdir, ["--workers", "2", "--metrics", f"tcp:{webPort}:interface=127.0.0.1"]
        )
        self.addCleanup(server.stop)
        waitFor(lambda: server.log().count(f"starting on {server.port}") >= 2,
                seconds=30, what="both workers to listen")
        conns = []
        for i in range(CONNECTIONS):
            conn = BlockingConnection(server.port, server.dataDir.clientContext())
            self.addCleanup(conn.close)
            self.assertTrue(conn.next().ok)
            conn.send(request("PING", sequence=f"p{i}"))
            self.assertEqual(conn.next().body, b"PONG")
            conns.append(conn)
        # Both workers got some (as the supervisor's log of them says).
        def workers():
            seen = {line.split("[worker-")[1].split("]")[0]
                    for line in server.log().splitlines()
                    if "Admitted 127.0.0.1" in line and "[worker-" in line}
            return seen if len(seen) == 2 else None

        waitFor(workers, seconds=15, what="admissions by both workers")

        asker = conns[0]

        def stats():
            asker.send(request("STATS", sequence="s"))
            reply = json.loads(asker.next().body)
            done = (reply["Connections"]["Admitted"] == CONNECTIONS
                    and reply["Requests"].get("PING") == CONNECTIONS)
            return reply if done else None

        reply = waitFor(stats, seconds=15, what="STATS for every worker")
        self.assertEqual(reply["Connections"]["Open"], CONNECTIONS)

        asker.send(request("CLIENTS", sequence="c"))
        clients = json.loads(asker.next().body)
        self.assertEqual(len(clients), CONNECTIONS)
        self.assertEqual(len({c["Peer"] for c in clients}), CONNECTIONS)

        def scraped():
            with urllib.request.urlopen(f"http://127.0.0.1:{webPort}/metrics", timeout=10) as r:
                text = r.read().decode()
            values = {}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    values[key] = values.get(key, 0) + sample.value
            admitted = values.get(("proto_connections_admitted", ()), 0)
            pings = values.get(
                ("proto_requests_total", (("command", "PING"), ("outcome", "ok"))), 0
            )
            return values if (admitted, pings) == (CONNECTIONS, CONNECTIONS) else None

        waitFor(scraped, seconds=15, what="/metrics of every worker")
        with urllib.request.urlopen(f"http://127.0.0.1:{webPort}/healthz", timeout=10) as r:
            self.assertEqual(r.status, 200)
