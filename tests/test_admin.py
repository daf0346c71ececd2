"""
Tests for the admin commands STATS, CLIENTS and BACKUP
(L{proto.commands.admin}, PROTOCOL.md section 9), over real TLS to an
in-process server with a real SQLite store.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from proto import certs, stats
from proto.admission import AllowList
from proto.client import ServerError
from proto.hub import ChangeHub
from proto.store import SQLiteStore
from tests import support
from tests.test_client import ClientTestMixin, waitUntil


def adminAllowList(level: str = "admin") -> AllowList:
    """The test client with C{can=level}; the stranger with write rights."""
    creds = support.Credentials.get()
    return AllowList.parse(
        f"{certs.sha1Thumbprint(creds.client.certificate)} operator can={level}\n"
    )


class AdminTestMixin(ClientTestMixin):
    @defer.inlineCallbacks
    def startServer(self, level: str = "admin"):
        hub = ChangeHub()
        self.store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"), hub=hub)
        yield self.store.start()
        self.addCleanup(self.store.close)
        self.factory = support.makeFactory(
            reactor, store=self.store, hub=hub, allowList=adminAllowList(level)
        )
        self.factory.backupDir = os.path.abspath(self.mktemp())
        self.port = yield self.listen(self.factory, lambda: self.factory.connections)

    @defer.inlineCallbacks
    def call(self, client, command, *args):
        reply = yield client.request(command, *args)
        return json.loads(reply.body)


class StatsTests(AdminTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_shape(self):
        yield self.startServer()
        client = yield self.connect(self.port)
        yield client.request("PING")
        yield client.request("PING")
        yield client.request("PUT", "a/1", body=b'{"x": 1}')
        yield client.request("PUT", "a/2", body=b'{"x": 2}')
        yield self.assertFailure(client.request("GET"), ServerError)
        yield client.request("WATCH", "a/")
        refused = self.connect(self.port, tls=self.tls(self.creds.stranger))
        yield self.assertFailure(refused, Exception)
        yield waitUntil(lambda: self.factory.stats.refused)
        reply = yield self.call(client, "STATS")
        self.assertEqual(
            set(reply), {"Version", "Uptime", "Connections", "Requests", "Errors", "Watches", "Store"}
        )
        self.assertIsInstance(reply["Version"], str)
        self.assertGreaterEqual(reply["Uptime"], 0)
        self.assertEqual(reply["Connections"], {"Open": 1, "Admitted": 1, "Refused": 1, "Total": 2})
        self.assertEqual(reply["Requests"]["PING"], 2)
        self.assertEqual(reply["Requests"]["PUT"], 2)
        self.assertEqual(reply["Requests"]["GET"], 1)
        self.assertEqual(reply["Requests"]["STATS"], 1)
        self.assertEqual(reply["Errors"], 1)
        self.assertEqual(reply["Watches"], 1)
        self.assertEqual(reply["Store"], {"Documents": 2, "Etag": 2})

    @defer.inlineCallbacks
    def test_storeNotOpen(self):
        """
        A store that is not open (here an SQLite file that cannot be
        opened; a PostgreSQL store still trying to open alike): STATS still
        answers, and its Store says why.
        """
        blocker = self.mktemp()
        with open(blocker, "w"):
            pass
        self.store = SQLiteStore(os.path.join(blocker, "docs.sqlite3"))
        yield self.assertFailure(self.store.start(), OSError)
        self.factory = support.makeFactory(reactor, store=self.store, allowList=adminAllowList())
        self.port = yield self.listen(self.factory, lambda: self.factory.connections)
        client = yield self.connect(self.port)
        reply = yield self.call(client, "STATS")
        self.assertEqual(reply["Store"]["Documents"], None)
        self.assertIn("could not be opened at start", reply["Store"]["NotOpen"])
        self.assertEqual(reply["Connections"]["Admitted"], 1)
        from proto.client.cli_ops import formatStats

        self.assertIn("store        not open: the document store could not be opened",
                      formatStats(reply))

    @defer.inlineCallbacks
    def test_adminOnly(self):
        yield self.startServer(level="write")
        client = yield self.connect(self.port)
        for command in ("STATS", "CLIENTS", "BACKUP"):
            error = yield self.assertFailure(client.request(command), ServerError)
            self.assertIn("Forbidden", str(error))

    @defer.inlineCallbacks
    def test_wholeServer(self):
        """
        With a run directory, STATS and CLIENTS add every live process's
        snapshot to this process's numbers, and skip dead processes'.
        """
        yield self.startServer()
        runDir = self.factory.runDir = self.mktemp()
        os.makedirs(runDir)
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(other.wait)
        self.addCleanup(other.kill)
        snapshot = {
            "Pid": other.pid, "Started": time.time() - 100, "Written": time.time(),
            "Connections": {"Open": 3, "Admitted": 2, "Refused": 5, "Total": 9},
            "Requests": {"PING": 7, "GET": 1}, "Errors": 4, "Watches": 2,
            "Clients": [{"Peer": "127.0.0.1:1", "Sha1": "a" * 40, "Name": "w", "CN": "w",
                         "Since": "2020-01-01T00:00:00Z", "Requests": 8, "InFlight": 0,
                         "Watches": 2}],
        }
        with open(os.path.join(runDir, f"stats-{other.pid}.json"), "w") as f:
            json.dump(snapshot, f)
        dead = dict(snapshot, Pid=2**22 + 7)
        with open(os.path.join(runDir, f"stats-{2**22 + 7}.json"), "w") as f:
            json.dump(dead, f)
        client = yield self.connect(self.port)
        yield client.request("PING")
        reply = yield self.call(client, "STATS")
        self.assertEqual(reply["Connections"], {"Open": 4, "Admitted": 3, "Refused": 5, "Total": 10})
        self.assertEqual(reply["Requests"]["PING"], 8)
        self.assertEqual(reply["Errors"], 4)
        self.assertGreaterEqual(reply["Uptime"], 99)
        listed = yield self.call(client, "CLIENTS")
        self.assertEqual([c["Name"] for c in listed][0], "w")
        self.assertEqual(len(listed), 2)

    @defer.inlineCallbacks
    def test_snapshotWriterRoundTrip(self):
        yield self.startServer()
        client = yield self.connect(self.port)
        yield client.request("PING")
        runDir = self.mktemp()
        writer = stats.SnapshotWriter(self.factory, runDir)
        writer.write()
        # Read as another process would (not skipping our own pid).
        (snap,) = stats.readSnapshots(runDir)
        self.assertEqual(snap["Pid"], os.getpid())
        self.assertEqual(snap["Connections"]["Admitted"], 1)
        self.assertEqual(snap["Requests"]["PING"], 1)
        self.assertEqual(len(snap["Clients"]), 1)
        writer.remove()
        self.assertEqual(stats.readSnapshots(runDir), [])


class ClientsTests(AdminTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_oneEntryPerAdmittedConnection(self):
        yield self.startServer()
        first = yield self.connect(self.port)
        second = yield self.connect(self.port)
        yield first.request("WATCH", "x/")
        yield first.request("PING")
        sleeping = second.request("SLEEP", "0.5")
        yield waitUntil(lambda: any(p._inflight for p in self.factory.admitted))
        listed = yield self.call(first, "CLIENTS")
        self.assertEqual(len(listed), 2)
        sha1 = certs.sha1Thumbprint(self.creds.client.certificate)
        for entry in listed:
            self.assertEqual(
                set(entry),
                {"Peer", "Sha1", "Name", "CN", "Since", "Requests", "InFlight", "Watches"},
            )
            self.assertEqual(entry["Sha1"], sha1)
            self.assertEqual(entry["CN"], "admitted client")
            self.assertEqual(entry["Name"], "operator")
            self.assertRegex(entry["Since"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertRegex(entry["Peer"], r"^127\.0\.0\.1:\d+$")
        byRequests = sorted(listed, key=lambda e: e["Requests"])
        # second: SLEEP in flight; first: WATCH, PING and this CLIENTS.
        self.assertEqual((byRequests[0]["Requests"], byRequests[0]["InFlight"],
                          byRequests[0]["Watches"]), (1, 1, 0))
        self.assertEqual((byRequests[1]["Requests"], byRequests[1]["InFlight"],
                          byRequests[1]["Watches"]), (3, 0, 1))
        yield sleeping

    @defer.inlineCallbacks
    def test_nameOfApprovedCertificate(self):
        """
        A certificate admitted by APPROVE (not by the allow-list file) is
        listed with the name it was approved under, as its WHOAMI says
        (section 9), not an empty one.
        """
        yield self.startServer()
        admin = yield self.connect(self.port)
        stranger = certs.sha1Thumbprint(self.creds.stranger.certificate)
        yield admin.request("APPROVE", stranger, "night", "job", "can=read")
        guest = yield self.connect(self.port, tls=self.tls(self.creds.stranger))
        whoami = yield self.call(guest, "WHOAMI")
        self.assertEqual(whoami["Name"], "night job")
        listed = yield self.call(admin, "CLIENTS")
        names = {entry["Sha1"]: entry["Name"] for entry in listed}
        self.assertEqual(names[stranger], "night job")
        self.assertEqual(names[certs.sha1Thumbprint(self.creds.client.certificate)], "operator")


class BackupTests(AdminTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_backupWhileWritingIsConsistent(self):
        yield self.startServer()
        client = yield self.connect(self.port)
        writer = yield self.connect(self.port)
        # Keep writes coming while the backup runs.
        writes = [writer.request("PUT", f"d/{i % 50}", body=json.dumps({"n": i}).encode())
                  for i in range(400)]
        reply = yield self.call(client, "BACKUP")
        yield defer.gatherResults(writes)
        path = reply["Path"]
        self.assertEqual(os.path.dirname(path), self.factory.backupDir)
        self.assertEqual(reply["File"], os.path.basename(path))
        self.assertEqual(reply["Size"], os.path.getsize(path))
        self.assertRegex(reply["File"], r"^documents-\d{8}T\d{6}Z(-\d+)?\.sqlite3$")
        self.assertEqual(os.listdir(self.factory.backupDir), [reply["File"]])
        db = sqlite3.connect(path)
        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone(), ("ok",))
        (counter,) = db.execute("SELECT value FROM counters WHERE name = 'etag'").fetchone()
        (highest,) = db.execute("SELECT coalesce(max(etag), 0) FROM documents").fetchone()
        # One commit's state: the counter and the documents agree.
        self.assertEqual(counter, highest)
        for (body, etag) in db.execute("SELECT body, etag FROM documents"):
            # PUT number n took etag n + 1 (one writer, in order).
            self.assertEqual(json.loads(body)["n"] + 1, etag)
        db.close()

        # Restoring is starting a store on it.
        restored = SQLiteStore(path)
        yield restored.start()
        self.addCleanup(restored.close)
        summary = yield restored.summary()
        self.assertEqual(summary["Etag"], counter)

    @defer.inlineCallbacks
    def test_withoutBackupSupport(self):
        yield self.startServer()
        self.factory.backupDir = None
        client = yield self.connect(self.port)
        error = yield self.assertFailure(client.request("BACKUP"), ServerError)
        self.assertIn("BACKUP", str(error))
