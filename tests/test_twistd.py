"""
The real thing: C{twistd -n proto} (and C{twistd -ny tac/proto.tac}) as a
child process, talked to with the standard library's C{ssl}.
"""

import os
import ssl
import subprocess
import time

from twisted.trial import unittest

from proto import certs, datadir
from tests.support import (
    ROOT, TWISTD, BlockingConnection, freePort, request, startTwistd, waitForPort, TwistdProcess, DataDir,
)


def contextFor(dataDir: DataDir, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(dataDir.file(datadir.SERVER_CERT))
    ctx.load_cert_chain(cert, key)
    return ctx


def writeMinted(directory: str, name: str, minted: certs.Minted) -> tuple[str, str]:
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    with open(cert, "wb") as f:
        f.write(minted.certPEM)
    with open(key, "wb") as f:
        f.write(minted.keyPEM)
    return cert, key


def waitFor(predicate, seconds: float = 10.0, what: str = "condition"):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class TwistdTests(unittest.TestCase):
    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        self.server = startTwistd(self.workdir)
        self.addCleanup(self.server.stop)
        self.data = self.server.dataDir

    def connect(self, cert=None, key=None) -> BlockingConnection:
        conn = BlockingConnection(
            self.server.port,
            contextFor(
                self.data,
                cert or self.data.file(datadir.CLIENT_CERT),
                key or self.data.file(datadir.CLIENT_KEY),
            ),
        )
        self.addCleanup(conn.close)
        return conn

    def test_firstStartCreatesDataDirAndAdmitsItsClient(self):
        names = sorted(n for n in os.listdir(self.data.path) if not n.startswith("documents"))
        self.assertEqual(names, ["allowlist.txt", "client.key", "client.pem", "server.key", "server.pem"])
        with open(self.data.file(datadir.CLIENT_CERT), "rb") as f:
            sha1 = certs.sha1Thumbprint(certs.loadCertificates(f.read())[0])
        log = self.server.log()
        self.assertIn(sha1, log)
        self.assertIn("openssl s_client -connect localhost:", log)

        conn = self.connect()
        self.assertTrue(conn.next().ok)
        conn.send(request("PING", sequence="p1") + request("ECHO", "hello", "world", sequence="e1"))
        replies = {f.sequence: f for f in (conn.next(), conn.next())}
        self.assertEqual(replies["p1"].body, b"PONG")
        self.assertEqual(replies["e1"].body, b"hello world")
        conn.send(request("QUIT", sequence="q"))
        self.assertEqual(conn.next().kind, "OK")
        self.assertRaises(EOFError, conn.next)

    def test_strangerIsToldItsThumbprint(self):
        stranger = certs.mint("someone else")
        cert, key = writeMinted(self.workdir, "stranger", stranger)
        conn = self.connect(cert, key)
        greeting = conn.next()
        self.assertFalse(greeting.ok)
        self.assertIn(certs.sha1Thumbprint(stranger.certificate), greeting.reason)
        self.assertIn("someone else", greeting.reason)
        self.assertRaises(EOFError, conn.next)

    def test_allowListChangesApplyWithoutRestart(self):
        stranger = certs.mint("newcomer")
        cert, key = writeMinted(self.workdir, "newcomer", stranger)
        original = self.connect()
        self.assertTrue(original.next().ok)

        # Replace the list: admit the newcomer, drop the original client.
        allow = self.data.file(datadir.ALLOWLIST)
        with open(allow + ".new", "w") as f:
            f.write(datadir.allowlistLine(stranger.certificate))
        os.replace(allow + ".new", allow)

        frame = original.next()  # the live connection is told, then closed
        self.assertEqual(frame.kind, "ERR")
        self.assertIn("removed from the allow-list", frame.reason)
        self.assertRaises(EOFError, original.next)

        def admitted():
            conn = BlockingConnection(self.server.port, contextFor(self.data, cert, key))
            try:
                return conn.next().ok
            finally:
                conn.close()

        waitFor(admitted, what="the newcomer to be admitted")

        # A malformed list is refused and the last good list stays.
        with open(allow, "a") as f:
            f.write("this is not a thumbprint\n")
        waitFor(lambda: "not reloaded" in self.server.log(), what="the reload error in the log")
        self.assertTrue(admitted())

    def test_restartReusesTheDataDirectory(self):
        with open(self.data.file(datadir.SERVER_CERT), "rb") as f:
            before = f.read()
        self.server.stop()
        again = startTwistd(self.workdir, port=self.server.port)
        self.addCleanup(again.stop)
        with open(self.data.file(datadir.SERVER_CERT), "rb") as f:
            self.assertEqual(f.read(), before)
        conn = self.connect()
        self.assertTrue(conn.next().ok)


class TacTests(unittest.TestCase):
    def test_tacConfiguredByEnvironment(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        env = dict(os.environ)
        env.update(
            PYTHONPATH=ROOT,
            PROTO_DATA_DIR=os.path.join(workdir, "data"),
            PROTO_LISTEN=f"tcp:{port}:interface=127.0.0.1",
            PROTO_MAX_HEAD="256",
        )
        logPath = os.path.join(workdir, "tac.log")
        with open(logPath, "wb") as log:
            process = subprocess.Popen(
                [*TWISTD, "--pidfile=", "-ny", os.path.join(ROOT, "tac", "proto.tac")],
                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        running = TwistdProcess(process, port, DataDir(env["PROTO_DATA_DIR"]), logPath)
        self.addCleanup(running.stop)
        waitForPort(running, 30)
        conn = BlockingConnection(port, running.dataDir.clientContext())
        self.addCleanup(conn.close)
        self.assertTrue(conn.next().ok)
        conn.send(request("ECHO", "x" * 300))
        frame = conn.next()
        self.assertIn("over the limit of 256 bytes", frame.reason)


class OptionErrorTests(unittest.TestCase):
    def test_certWithoutKey(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        result = subprocess.run(
            [*TWISTD, "--pidfile=", "-n", "proto", "--cert", "x.pem"],
            cwd=workdir, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(b"--cert and --key go together", result.stdout + result.stderr)
