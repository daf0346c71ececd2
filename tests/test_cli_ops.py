"""
C{proto-cli} for operators (L{proto.client.cli_ops}): STATS, top in a
pseudo-terminal, export and import between two real servers.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

from twisted.trial import unittest

from proto.client.cli_ops import formatTop, readDump
from tests.support import ROOT, startTwistd

CLI = [sys.executable, "-c", "from proto.client.cli import main; main()"]


def cli(server, *args, stdin: bytes | None = None, timeout: float = 60):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [*CLI, "--data-dir", server.dataDir.path, "--port", str(server.port), *args],
        input=stdin, capture_output=True, timeout=timeout, env=env,
    )


class ServerMixin:
    def server(self, name: str):
        running = startTwistd(os.path.abspath(self.mktemp()) + name)
        self.addCleanup(running.stop)
        return running


class StatsAndTopTests(ServerMixin, unittest.TestCase):
    def test_statsReadable(self):
        server = self.server("a")
        cli(server, "PING")
        done = cli(server, "STATS")
        self.assertEqual(done.returncode, 0, done.stderr)
        text = done.stdout.decode()
        self.assertIn("connections", text)
        self.assertRegex(text, r"store +0 documents, etag 0")
        self.assertRegex(text, r"PING +1")
        raw = cli(server, "STATS", "--raw")
        self.assertEqual(json.loads(raw.stdout)["Requests"]["PING"], 1)

    def test_topInAPseudoTerminal(self):
        server = self.server("b")
        primary, secondary = pty.openpty()
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = subprocess.Popen(
            [*CLI, "--data-dir", server.dataDir.path, "--port", str(server.port), "top",
             "--interval", "0.3"],
            stdin=secondary, stdout=secondary, stderr=secondary, env=env,
        )
        os.close(secondary)
        self.addCleanup(os.close, primary)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        out = b""
        deadline = time.monotonic() + 30
        while out.count(b"proto top") < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1)
            if ready:
                try:
                    out += os.read(primary, 65536)
                except OSError:
                    break
        self.assertGreaterEqual(out.count(b"proto top"), 3, out)
        self.assertIn(b"\x1b[H\x1b[2J", out)  # a terminal: the screen is redrawn
        self.assertIn(b"COMMAND", out)
        self.assertIn(b"STATS", out)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        self.assertEqual(process.wait(15), 0)

    def test_formatTopRates(self):
        before = {"Requests": {"GET": 10}, "Errors": 1}
        after = {"Requests": {"GET": 30, "PUT": 4}, "Errors": 3, "Connections": {},
                 "Store": {"Documents": 2, "Etag": 9}, "Uptime": 5}
        screen = formatTop(after, before, 2.0)
        self.assertRegex(screen, r"GET +10\.0 +30")
        self.assertRegex(screen, r"PUT +2\.0 +4")
        self.assertIn("requests/s: 12.0", screen)
        self.assertIn("(1.0/s)", screen)


class ExportImportTests(ServerMixin, unittest.TestCase):
    def test_roundTrip(self):
        source, target = self.server("src"), self.server("dst")
        documents = {f"emp/{i}": {"n": i, "name": f"é{i}", "tags": ["a", i]} for i in range(1203)}
        documents["other/1"] = {"skip": True}
        lines = "".join(
            json.dumps({"Id": id, "Document": doc}) + "\n" for id, doc in documents.items()
        ).encode()
        loaded = cli(source, "import", "--batch", "50", stdin=lines)
        self.assertEqual(loaded.returncode, 0, loaded.stderr)

        dumped = cli(source, "export")
        self.assertEqual(dumped.returncode, 0, dumped.stderr)
        exported = [json.loads(line) for line in dumped.stdout.decode().splitlines()]
        self.assertEqual({e["Id"]: e["Document"] for e in exported}, documents)
        self.assertEqual([e["Id"] for e in exported], sorted(documents, key=str.lower))

        restored = cli(target, "import", stdin=dumped.stdout)
        self.assertEqual(restored.returncode, 0, restored.stderr)
        self.assertIn(b"imported 1204 document(s)", restored.stderr)
        again = cli(target, "export")
        self.assertEqual(
            {e["Id"]: e["Document"] for e in map(json.loads, again.stdout.decode().splitlines())},
            documents,
        )

        # A prefix; and importing again with --skip-existing changes nothing.
        some = cli(target, "export", "other/")
        self.assertEqual([json.loads(l)["Id"] for l in some.stdout.decode().splitlines()],
                         ["other/1"])
        skip = cli(target, "import", "--skip-existing", stdin=some.stdout)
        self.assertEqual(skip.returncode, 0, skip.stderr)
        self.assertIn(b"imported 0 document(s), skipped 1 existing", skip.stderr)

    def test_badDumpLine(self):
        self.assertRaises(ValueError, list, readDump(['{"Id": "a", "Document": {}}', "nope"]))
        self.assertEqual(list(readDump(['{"Id": "a", "Document": {"x": 1}}']))[0][1:],
                         ("a", b'{"x": 1}'))


class BackupRestoreTests(ServerMixin, unittest.TestCase):
    def test_backupThenStartAServerOnIt(self):
        """proto-cli BACKUP, then restoring = starting a server on the copy."""
        import shutil

        source = self.server("bsrc")
        lines = "".join(
            json.dumps({"Id": f"b/{i}", "Document": {"i": i}}) + "\n" for i in range(300)
        ).encode()
        self.assertEqual(cli(source, "import", stdin=lines).returncode, 0)
        done = cli(source, "BACKUP")
        self.assertEqual(done.returncode, 0, done.stderr)
        reply = json.loads(done.stdout)
        path = os.path.join(source.dataDir.path, "backups", reply["File"])
        self.assertEqual(os.path.getsize(path), reply["Size"])

        workdir = os.path.abspath(self.mktemp())
        dataDir = os.path.join(workdir, "proto-data")
        shutil.copytree(source.dataDir.path, dataDir, ignore=shutil.ignore_patterns(
            "documents.sqlite3*", "backups", "run"))
        shutil.copy(path, os.path.join(dataDir, "documents.sqlite3"))
        restored = startTwistd(workdir, dataDir=dataDir)
        self.addCleanup(restored.stop)
        dumped = cli(restored, "export")
        self.assertEqual(dumped.returncode, 0, dumped.stderr)
        docs = {e["Id"]: e["Document"] for e in map(json.loads, dumped.stdout.decode().splitlines())}
        self.assertEqual(docs, {f"b/{i}": {"i": i} for i in range(300)})
        stats = json.loads(cli(restored, "STATS", "--raw").stdout)
        self.assertEqual(stats["Store"], {"Documents": 300, "Etag": 300})
