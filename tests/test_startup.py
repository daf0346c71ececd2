"""
Starting the server as the README says (issue 12, item 4 and the
start-up "should fix" items): the README's own ``.tac`` line and the INI
example of ``tac/proto.tac`` work as written; start-up failures end with
one clear line and a non-zero exit, never a traceback; ``--listen``
descriptions get a backlog of 1024 unless they say otherwise.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

from twisted.python import usage
from twisted.trial import unittest

from proto.deploy import optionsFromEnvironment
from proto.listen import BACKLOG, problemWith, serverEndpoint
from tests.support import (
    ROOT, TWISTD, BlockingConnection, DataDir, TwistdProcess, freePort, request, waitForPort,
)
from tests.test_listen import hasIPv6Loopback


def readmeTacLine() -> str:
    """The command line of the README's "Deploying with a .tac" block."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("### Deploying with a `.tac`", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    [line] = [line for line in block.splitlines() if "twistd" in line]
    return line


def tacIniExample() -> str:
    """The INI example in tac/proto.tac's docstring, as a user would copy it."""
    with open(os.path.join(ROOT, "tac", "proto.tac"), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    lines = re.findall(r"``([a-z-]+ = [^`]+)``", doc)
    return "[proto]\n" + "\n".join(lines) + "\n"


class DeploymentDocsTests(unittest.TestCase):
    def test_readmeTacLineRuns(self):
        """
        The README's line, run by a shell with only the port and the data
        directory substituted (and the IPv4 listener kept on loopback, as
        tests must).
        """
        if not hasIPv6Loopback():
            raise unittest.SkipTest("this host has no IPv6 loopback (the line listens on ::1)")
        line = readmeTacLine()
        self.assertIn(r"tcp6:4433:interface=\:\:1", line)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        port = freePort()
        data = os.path.join(workdir, "data")
        command = (
            line.replace("/var/lib/proto", data)
            .replace("tcp:4433 ", f"tcp:{port}:interface=127.0.0.1 ")
            .replace("4433", str(port))
            .replace("twistd -ny", "twistd --pidfile= -ny")
        )
        env = dict(os.environ)
        # The shell finds this interpreter's twistd first.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        logPath = os.path.join(workdir, "tac.log")
        with open(logPath, "wb") as log:
            process = subprocess.Popen(
                ["bash", "-c", command], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        running = TwistdProcess(process, port, DataDir(data), logPath)
        self.addCleanup(running.stop)
        waitForPort(running, 30)
        conn = BlockingConnection(port, running.dataDir.clientContext())
        self.addCleanup(conn.close)
        self.assertTrue(conn.next().ok)
        conn.send(request("PING"))
        self.assertEqual(conn.next().body, b"PONG")
        # SIGHUP re-reads the allow-list at once.
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reloading the allow-list" not in running.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("SIGHUP: reloading the allow-list", running.log())
        conn.send(request("PING", sequence="2"))
        self.assertEqual(conn.next().body, b"PONG")
        # And the escaped IPv6 address is listened on.
        ctx = running.dataDir.clientContext()
        with socket.create_connection(("::1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                self.assertEqual(tls.recv(100), b"OK\r\n")

    def test_tacIniExampleParses(self):
        ini = tacIniExample()
        self.assertIn(r"interface=\:\:1", ini)
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(ini)
        options = optionsFromEnvironment({"PROTO_CONFIG": path})
        self.assertEqual(
            options["listen"], ["tcp:4433:interface=127.0.0.1", r"tcp6:4433:interface=\:\:1"]
        )
        self.assertEqual(options["data-dir"], "/var/lib/proto")
        for description in options["listen"]:
            self.assertIsNone(problemWith(description))
        self.assertEqual(serverEndpoint(None, options["listen"][1])._interface, "::1")

    def test_environmentListenKeepsEscapes(self):
        options = optionsFromEnvironment({"PROTO_LISTEN": "tcp:4433  tcp6:4433:interface=\\:\\:1\t"})
        self.assertEqual(options["listen"], ["tcp:4433", r"tcp6:4433:interface=\:\:1"])


    def test_environmentFlags(self):
        """Flags are variables too: PROTO_PLAIN_TRANSPORT=1 is --plain-transport."""
        for word, expected in [("1", True), ("yes", True), ("0", False), ("off", False)]:
            options = optionsFromEnvironment({"PROTO_PLAIN_TRANSPORT": word})
            self.assertIs(bool(options["plain-transport"]), expected, word)
        self.assertFalse(optionsFromEnvironment({})["plain-transport"])
        with self.assertRaises(usage.UsageError) as caught:
            optionsFromEnvironment({"PROTO_PLAIN_TRANSPORT": "maybe"})
        self.assertIn("plain-transport", str(caught.exception))

    def test_iniFlag(self):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("[proto]\nplain-transport = yes\n")
        self.assertTrue(optionsFromEnvironment({"PROTO_CONFIG": path})["plain-transport"])


class BacklogTests(unittest.TestCase):
    def test_defaultBacklog(self):
        self.assertEqual(serverEndpoint(None, "tcp:0")._backlog, BACKLOG)
        self.assertEqual(serverEndpoint(None, r"tcp6:0:interface=\:\:1")._backlog, BACKLOG)

    def test_ownBacklogWins(self):
        self.assertEqual(serverEndpoint(None, "tcp:0:backlog=7")._backlog, 7)
        self.assertEqual(serverEndpoint(None, "tcp:backlog=7:port=0")._backlog, 7)


class StartupFailureTests(unittest.TestCase):
    def run_twistd(self, args, env=None):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        environment = dict(os.environ, PYTHONPATH=ROOT)
        environment.update(env or {})
        return subprocess.run(
            [*TWISTD, "--pidfile=", *args], cwd=workdir, env=environment,
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def assertOneLine(self, result, *words):
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        for word in words:
            self.assertIn(word, output)

    def test_portInUse(self):
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            result = self.run_twistd(["-n", "proto", "--listen", f"tcp:{port}:interface=127.0.0.1"])
        self.assertOneLine(result, f"proto: cannot listen on tcp:{port}:interface=127.0.0.1",
                           "Address already in use")

    def test_unknownListenType(self):
        result = self.run_twistd(["-n", "proto", "--listen", "bogus:4433"])
        self.assertOneLine(result, "--listen 'bogus:4433': Unknown endpoint type: 'bogus'")

    def test_tacWithBadSetting(self):
        result = self.run_twistd(
            ["-ny", os.path.join(ROOT, "tac", "proto.tac")], env={"PROTO_LISTEN": "tcp6:1:interface=::1"}
        )
        self.assertOneLine(result, "proto.tac: --listen", r"interface=\:\:1")

    def test_missingAllowList(self):
        result = self.run_twistd(["-n", "proto", "--allow", "nowhere.txt", "--listen", f"tcp:{freePort()}"])
        self.assertOneLine(result, "proto: allow-list nowhere.txt does not exist")
