"""
Tests for C{proto-cli} (L{proto.client.cli}), run as a real subprocess
(C{python -m proto.client.cli}) against a real C{twistd -n proto}
subprocess on 127.0.0.1: what a user on the server's machine does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from twisted.trial import unittest

from proto import certs, datadir
from proto.client.cli import LineSyntaxError, parseLine
from tests import support

#: Seconds any one CLI run may take.
RUN_LIMIT = 30


class CLITestCase(unittest.TestCase):
    """Starts a real server per test; C{self.cli(...)} runs the CLI against it."""

    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        self.server = support.startTwistd(self.workdir)
        self.addCleanup(self.server.stop)
        self.dataDir = self.server.dataDir.path
        self.home = os.path.join(self.workdir, "home")
        os.makedirs(self.home)

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "proto.client.cli",
            "--port", str(self.server.port), "--host", "127.0.0.1",
            "--data-dir", self.dataDir, *args,
        ]

    def environment(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = support.ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env["HOME"] = self.home
        return env

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run the CLI to completion (stdin: C{input}, else empty)."""
        return subprocess.run(
            self.command(*args), input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, timeout=RUN_LIMIT, env=self.environment(), cwd=self.workdir,
        )


class OneShotTests(CLITestCase):
    def test_ping(self):
        result = self.cli("PING")
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, b"PONG\n", b""))

    def test_pingDoesNotReadStdin(self):
        """A command without a body never waits for stdin, even an open pipe."""
        process = subprocess.Popen(
            self.command("PING"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=self.environment(), cwd=self.workdir,
        )
        try:
            self.assertEqual(process.wait(RUN_LIMIT), 0)
            self.assertEqual(process.stdout.read(), b"PONG\n")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                stream.close()

    def test_putAndGetWithInclude(self):
        boss = self.cli("PUT", "employees/2-B", input=b'{"Name": "Andrew"}')
        self.assertEqual(boss.returncode, 0, boss.stderr)
        self.assertEqual(json.loads(boss.stdout)["Id"], "employees/2-B")
        bodyFile = os.path.join(self.workdir, "nancy.json")
        with open(bodyFile, "w") as f:
            f.write('{"Name": "Nancy", "ReportsTo": "employees/2-B"}')
        self.assertEqual(self.cli("PUT", "employees/1-A", "--body-file", bodyFile).returncode, 0)
        got = self.cli("GET", "employees/1-A", "--header", "Include=ReportsTo")
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(
            json.loads(got.stdout),
            {
                "Results": [{"Name": "Nancy", "ReportsTo": "employees/2-B"}],
                "Includes": {"employees/2-B": {"Name": "Andrew"}},
            },
        )
        self.assertIn(b'\n  "Results"', got.stdout)  # pretty-printed

    def test_errExitsNonZero(self):
        result = self.cli("FROB", "x")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, b"")
        self.assertIn(b"ERR Unknown command: FROB", result.stderr)

    def test_putWithoutBody(self):
        """PUT with nothing to read (stdin empty) sends an empty body; the server says why not."""
        result = self.cli("PUT", "a")
        self.assertEqual(result.returncode, 1)
        self.assertIn(b"ERR", result.stderr)

    def test_remindWaitsForPush(self):
        result = self.cli("REMIND", "0.1", "tea", "is", "ready")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"tea is ready", result.stdout)

    def test_pinMismatch(self):
        result = self.cli("--pin", "ab" * 32, "PING")
        self.assertEqual(result.returncode, 3)
        self.assertIn(b"does not match the pinned " + b"ab" * 32, result.stderr)

    def test_explicitPinAndCA(self):
        with open(os.path.join(self.dataDir, datadir.SERVER_CERT), "rb") as f:
            server = certs.loadCertificates(f.read())[0]
        sha1 = certs.sha1Thumbprint(server).upper()
        pinned = self.cli("--pin", ":".join(sha1[i:i + 2] for i in range(0, 40, 2)), "PING")
        self.assertEqual((pinned.returncode, pinned.stdout), (0, b"PONG\n"), pinned.stderr)
        ca = self.cli("--ca", os.path.join(self.dataDir, datadir.SERVER_CERT),
                      "--servername", "localhost", "PING")
        self.assertEqual((ca.returncode, ca.stdout), (0, b"PONG\n"), ca.stderr)

    def test_noServerPin(self):
        """Without a server.pem to pin, --pin or --ca is asked for."""
        result = self.cli("--data-dir", self.workdir, "--cert", "x", "--key", "y", "PING")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"--pin", result.stderr)


class InteractiveTests(CLITestCase):
    def test_script(self):
        """Lines from a pipe run in order; ERR is shown and the session goes on."""
        script = (
            b"PING\n"
            b"PUT notes/1 {\"Text\": \"hi there\"}\n"
            b"GET notes/1 -H Include=Nothing\n"
            b"FROB\n"
            b"ECHO still here\n"
        )
        result = self.cli(input=script)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.decode().splitlines()
        self.assertEqual(lines[0], "PONG")
        self.assertIn('"Text": "hi there"', result.stdout.decode())
        self.assertIn("ERR Unknown command: FROB", lines)
        self.assertEqual(lines[-1], "still here")

    def test_pushShown(self):
        result = self.cli(input=b"REMIND 0.05 wake up\nSLEEP 0.5\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("[PUSH 1] wake up", result.stdout.decode())


class CertificateToolTests(CLITestCase):
    def test_thumbprint(self):
        path = os.path.join(self.dataDir, datadir.SERVER_CERT)
        with open(path, "rb") as f:
            cert = certs.loadCertificates(f.read())[0]
        result = self.cli("--thumbprint", path)
        self.assertEqual(result.returncode, 0)
        self.assertIn(f"SHA-1:   {certs.sha1Thumbprint(cert)}\n", result.stdout.decode())
        self.assertIn(f"SHA-256: {certs.sha256Thumbprint(cert)}\n", result.stdout.decode())

    def test_thumbprintIntoClosedPipe(self):
        """
        C{proto-cli --thumbprint FILE | head -1}: when the reader of its
        output has gone, it stops quietly (no BrokenPipeError traceback).
        """
        path = os.path.join(self.dataDir, datadir.SERVER_CERT)
        readEnd, writeEnd = os.pipe()
        os.close(readEnd)  # nobody will read: every write fails with EPIPE
        try:
            result = subprocess.run(
                self.command("--thumbprint", path), stdin=subprocess.DEVNULL,
                stdout=writeEnd, stderr=subprocess.PIPE, timeout=RUN_LIMIT,
                env=self.environment(), cwd=self.workdir,
            )
        finally:
            os.close(writeEnd)
        self.assertEqual((result.returncode, result.stderr), (141, b""))

    def test_mintThenAdmit(self):
        """A minted certificate is refused until its line is on the allow-list."""
        prefix = os.path.join(self.workdir, "bob")
        minted = self.cli("--mint", "bob", "--out", prefix)
        self.assertEqual(minted.returncode, 0, minted.stderr)
        line = minted.stdout.decode()
        self.assertRegex(line, r"^[0-9a-f]{40} bob\n$")
        self.assertEqual(os.stat(prefix + ".key").st_mode & 0o777, 0o600)
        asBob = ("--cert", prefix + ".pem", "--key", prefix + ".key", "PING")
        refused = self.cli(*asBob)
        self.assertEqual(refused.returncode, 3)
        self.assertIn(line.split()[0].encode(), refused.stderr)
        with open(os.path.join(self.dataDir, datadir.ALLOWLIST), "a") as f:
            f.write(line)
        # The server re-reads the allow-list about once a second.
        for _ in range(20):
            time.sleep(0.25)
            admitted = self.cli(*asBob)
            if admitted.returncode != 3:
                break
        self.assertEqual((admitted.returncode, admitted.stdout), (0, b"PONG\n"), admitted.stderr)
        again = self.cli("--mint", "bob", "--out", prefix)
        self.assertEqual(again.returncode, 2)


class ParseLineTests(unittest.TestCase):
    """The interactive line syntax (no server needed)."""

    def test_plain(self):
        self.assertEqual(parseLine("get a  b"), ("GET", ["a", "b"], [], None))

    def test_headers(self):
        self.assertEqual(
            parseLine("GET a -H Include=ReportsTo --header=X=1 --header Y=2"),
            ("GET", ["a"], [("Include", "ReportsTo"), ("X", "1"), ("Y", "2")], None),
        )

    def test_putBody(self):
        self.assertEqual(
            parseLine('PUT e/1 -H If-Match=2 {"Name": "N  a"}'),
            ("PUT", ["e/1"], [("If-Match", "2")], b'{"Name": "N  a"}'),
        )

    def test_errors(self):
        self.assertRaises(LineSyntaxError, parseLine, "PUT e/1")
        self.assertRaises(LineSyntaxError, parseLine, "GET a -H novalue")
        self.assertRaises(LineSyntaxError, parseLine, "-H A=b")
