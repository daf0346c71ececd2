"""
C{proto-cli} as a newcomer meets it (issue 12, should-fix items): the
prompt reconnects after the server closed an idle connection, WATCH shows
the Sequence UNWATCH needs, C{--follow} says it is watching, C{--mint}
writes its key (0600) where it is told, C{--version}.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from twisted.trial import unittest

from tests import support
from tests.test_cli import RUN_LIMIT, CLITestCase


def readLine(stream, seconds: float = RUN_LIMIT) -> bytes:
    """One line from a child's pipe, or what came before C{seconds} passed."""
    import select

    fd, line, end = stream.fileno(), b"", time.monotonic() + seconds
    while not line.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


def runCLI(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = support.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "proto.client.cli", *args], cwd=cwd, env=env,
        capture_output=True, timeout=RUN_LIMIT, stdin=subprocess.DEVNULL,
    )


class OfflineTests(unittest.TestCase):
    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)

    def test_version(self):
        result = runCLI("--version", cwd=self.workdir)
        self.assertEqual(result.returncode, 0)
        self.assertRegex(result.stdout.decode(), r"^proto-cli \d+\.\d+")

    def test_mintIntoDirectory(self):
        result = runCLI("--mint", "alice smith", "--out", "keys/", cwd=self.workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        keys = os.path.join(self.workdir, "keys")
        self.assertEqual(sorted(os.listdir(keys)), ["alice_smith.key", "alice_smith.pem"])
        self.assertEqual(os.stat(os.path.join(keys, "alice_smith.key")).st_mode & 0o777, 0o600)
        self.assertRegex(result.stdout.decode(), r"^[0-9a-f]{40} alice smith\n$")
        # An existing directory works without the slash.
        again = runCLI("--mint", "bob", "--out", "keys", cwd=self.workdir)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertTrue(os.path.exists(os.path.join(keys, "bob.key")))

    def test_mintDefaultsToTheCurrentDirectory(self):
        result = runCLI("--mint", "carol", cwd=self.workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(os.stat(os.path.join(self.workdir, "carol.key")).st_mode & 0o777, 0o600)

    def test_keysAreIgnoredByGit(self):
        with open(os.path.join(support.ROOT, ".gitignore"), encoding="utf-8") as f:
            ignored = f.read().split()
        self.assertIn("*.key", ignored)
        self.assertIn("proto-data/", ignored)


class PromptTests(CLITestCase):
    def test_watchShowsItsSequence(self):
        result = self.cli(input=b"PING\nWATCH notes/\nUNWATCH 2\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.decode().splitlines()
        self.assertEqual(lines, ["PONG", "OK (Sequence 2; UNWATCH 2 stops it)", "OK"])

    def test_followSaysItIsWatching(self):
        watcher = subprocess.Popen(
            self.command("WATCH", "notes/", "--follow", "--count", "1"), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.environment(), cwd=self.workdir,
        )
        self.addCleanup(lambda: watcher.poll() is None and watcher.kill())
        line = readLine(watcher.stderr).decode()
        self.assertIn("watching notes/", line)
        put = self.cli("PUT", "notes/1", "--body", "{}")
        self.assertEqual(put.returncode, 0, put.stderr)
        out, err = watcher.communicate(timeout=RUN_LIMIT)
        self.assertEqual(watcher.returncode, 0, err)
        self.assertIn('"Id": "notes/1"', out.decode())


class ReconnectTests(CLITestCase):
    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        self.server = support.startTwistd(self.workdir, extraArgs=["--idle-timeout", "1"])
        self.addCleanup(self.server.stop)
        self.dataDir = self.server.dataDir.path
        self.home = os.path.join(self.workdir, "home")
        os.makedirs(self.home)

    def test_nextCommandReconnects(self):
        """The server closes the idle prompt's connection; the next command still runs."""
        session = subprocess.Popen(
            self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.environment(), cwd=self.workdir,
        )
        self.addCleanup(lambda: session.poll() is None and session.kill())
        session.stdin.write(b"PING\n")
        session.stdin.flush()
        self.assertEqual(readLine(session.stdout), b"PONG\n")
        # The server's idle check closes the connection after 1 s (it runs
        # about once a second); the CLI notices and says so.
        line = readLine(session.stderr).decode()
        self.assertIn("Idle timeout", line)
        out, err = session.communicate(b"ECHO still here\n", timeout=RUN_LIMIT)
        self.assertEqual(session.returncode, 0, err)
        self.assertEqual(out, b"still here\n")
        self.assertIn(b"reconnected", err)
