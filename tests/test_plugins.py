"""
Commands of your own (L{proto.plugins}): registries loaded from
C{--commands module} and from the C{proto.commands} entry-point group,
run by a real C{twistd -n proto} like the built-in commands; plugins that
cannot be used stop the start with a clear message.

The example package C{examples/proto-hello} is used two ways: through
C{--commands} with its directory on C{PYTHONPATH} (always), and as an
installed distribution through its entry point (C{.ci/run} installs it;
outside CI the test is skipped when it is not installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from proto import plugins
from proto.commands.base import CommandRegistry
from proto.server import defaultRegistry
from tests import support

EXAMPLE = os.path.join(support.ROOT, "examples", "proto-hello")


class LoadTests(unittest.TestCase):
    """Loading registries named by --commands."""

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        sys.path.insert(0, self.dir)
        self.addCleanup(sys.path.remove, self.dir)

    def module(self, name: str, source: str) -> str:
        with open(os.path.join(self.dir, name + ".py"), "w") as f:
            f.write(textwrap.dedent(source))
        self.addCleanup(sys.modules.pop, name, None)
        return name

    def test_moduleAndAttribute(self):
        name = self.module("h11_plugin_ok", """
            from proto.commands.base import CommandRegistry
            registry = CommandRegistry()
            other = CommandRegistry()
            registry.add("FIRST", lambda ctx, request: b"1", level="read")
            other.add("SECOND", lambda ctx, request: b"2")
        """)
        merged = plugins.withPlugins(defaultRegistry(), [name, name + ":other"], useEntryPoints=False)
        self.assertEqual(merged.commands["FIRST"].level, "read")
        # No level declared: admin only (fails closed).
        self.assertEqual(merged.commands["SECOND"].level, "admin")
        self.assertIn("PING", merged.commands)

    def test_errors(self):
        clash = self.module("h11_plugin_clash", """
            from proto.commands.base import CommandRegistry
            registry = CommandRegistry()
            registry.add("PING", lambda ctx, request: b"mine", level="any")
        """)
        broken = self.module("h11_plugin_broken", "import no_such_module_h11\n")
        wrong = self.module("h11_plugin_wrong", "registry = 42\n")
        for target, words in (
            (clash, "defines PING, which already exists"),
            (broken, "cannot import h11_plugin_broken: ModuleNotFoundError"),
            (wrong, "not a proto.commands.base.CommandRegistry"),
            ("h11_no_such_plugin", "cannot import h11_no_such_plugin"),
            (clash + ":nothing", "has no 'nothing'"),
        ):
            e = self.assertRaises(
                plugins.PluginError, plugins.withPlugins, defaultRegistry(), [target], False
            )
            self.assertIn(words, str(e))
            self.assertIn(target.partition(":")[0], str(e))

    def test_twoPluginsSameCommand(self):
        a = self.module("h11_plugin_a", """
            from proto.commands.base import CommandRegistry
            registry = CommandRegistry()
            registry.add("SAME", lambda ctx, request: b"a", level="any")
        """)
        b = self.module("h11_plugin_b", """
            from proto.commands.base import CommandRegistry
            registry = CommandRegistry()
            registry.add("same", lambda ctx, request: b"b", level="any")
        """)
        e = self.assertRaises(plugins.PluginError, plugins.withPlugins, defaultRegistry(), [a, b], False)
        self.assertIn(f"--commands {b} defines SAME", str(e))

    def test_badLevelRefusedAtRegistration(self):
        registry = CommandRegistry()
        self.assertRaises(ValueError, registry.add, "X", lambda c, r: b"", level="root")


class TwistdPluginTests(unittest.TestCase):
    """The real server with plugin commands."""

    def setUp(self):
        self.work = os.path.abspath(self.mktemp())
        self.pluginDir = os.path.join(self.work, "plugins")
        os.makedirs(self.pluginDir)
        with open(os.path.join(self.pluginDir, "h11_crashy.py"), "w") as f:
            f.write(textwrap.dedent("""
                from proto.commands.base import CommandRegistry
                registry = CommandRegistry()

                @registry.command("BOOM", level="any")
                def boom(ctx, request):
                    raise RuntimeError("the plugin's own bug")

                @registry.command("DAWDLE", level="any")
                def dawdle(ctx, request):
                    from twisted.internet.task import deferLater
                    return deferLater(ctx.clock, 30, lambda: b"too late")
            """))
        with open(os.path.join(self.pluginDir, "h11_clashing.py"), "w") as f:
            f.write(textwrap.dedent("""
                from proto.commands.base import CommandRegistry
                registry = CommandRegistry()
                registry.add("GET", lambda ctx, request: b"", level="any")
            """))

    def environment(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([EXAMPLE, self.pluginDir, env.get("PYTHONPATH", "")])
        return env

    def test_commandsRunLikeBuiltIns(self):
        server = support.startTwistd(
            os.path.join(self.work, "run"),
            extraArgs=["--commands", "proto_hello", "--commands", "h11_crashy"],
            env=self.environment(),
        )
        self.addCleanup(server.stop)
        conn = support.BlockingConnection(server.port, server.dataDir.clientContext())
        self.addCleanup(conn.close)
        self.assertTrue(conn.next().ok)
        conn.send(support.request("HELLO", "plugins", sequence="1"))
        reply = conn.next()
        self.assertEqual((reply.kind, reply.body), ("OK", b"Hello, plugins! (asked by proto client (created on first start))"))
        # A raising handler: the usual internal-error ERR, traceback in the log only.
        conn.send(support.request("BOOM", sequence="2"))
        reply = conn.next()
        self.assertEqual(reply.kind, "ERR")
        self.assertEqual(reply.reason, "Internal error while running BOOM (details are in the server log)")
        # Timeout applies to plugin commands too.
        conn.send(support.request("COUNTDOWN", "2", "0.01", sequence="3", headers=[("Timeout", "5")]))
        frames = [conn.next() for _ in range(3)]
        self.assertEqual([(f.kind, f.body) for f in frames], [("OK", b""), ("PUSH", b"2"), ("PUSH", b"1")])
        # ... and cancels a plugin's Deferred like ours.
        conn.send(support.request("DAWDLE", sequence="4", headers=[("Timeout", "0.2")]))
        reply = conn.next()
        self.assertEqual((reply.kind, reply.sequence), ("ERR", "4"))
        self.assertIn("Timeout: DAWDLE did not finish within 0.2 s", reply.reason)
        conn.send(support.request("PING", sequence="5"))
        self.assertEqual(conn.next().body, b"PONG")
        log = server.log()
        self.assertIn("the plugin's own bug", log)
        self.assertIn("Traceback", log)
        # (From the entry point instead when the example is installed.)
        self.assertIn("proto_hello", log)
        self.assertIn(": COUNTDOWN (any), HELLO (any), STAMP (write)", log)
        self.assertIn("Commands from --commands h11_crashy: BOOM (any), DAWDLE (any)", log)

    def assertStartRefused(self, args, *words):
        result = subprocess.run(
            [*support.TWISTD, "--pidfile=", "-n", "proto", "--data-dir", os.path.join(self.work, "data"),
             "--listen", f"tcp:{support.freePort()}:interface=127.0.0.1", *args],
            cwd=self.work, env=self.environment(), capture_output=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertNotEqual(result.returncode, 0, output)
        for word in words:
            self.assertIn(word, output)
        self.assertNotIn("Traceback", output)

    def test_brokenPluginStopsTheStart(self):
        self.assertStartRefused(
            ["--commands", "h11_missing_plugin"],
            "proto: cannot start with the commands of --commands h11_missing_plugin: cannot import",
        )

    def test_clashingPluginStopsTheStart(self):
        self.assertStartRefused(
            ["--commands", "h11_clashing"],
            "--commands h11_clashing defines GET, which already exists",
        )


class EntryPointTests(unittest.TestCase):
    """The example installed as a distribution: its entry point is found."""

    def test_installedExampleIsLoaded(self):
        names = {ep.name for ep in plugins.entryPoints()}
        if "hello" not in names:
            if os.environ.get("CI") == "true":
                self.fail("examples/proto-hello is not installed: .ci/run must pip install -e it")
            raise unittest.SkipTest(
                "examples/proto-hello is not installed here: "
                ".venv/bin/pip install -e examples/proto-hello"
            )
        registry = plugins.withPlugins(defaultRegistry())
        self.assertEqual(registry.commands["STAMP"].level, "write")
        work = os.path.abspath(self.mktemp())
        server = support.startTwistd(work)  # no --commands: the entry point alone
        self.addCleanup(server.stop)
        conn = support.BlockingConnection(server.port, server.dataDir.clientContext())
        self.addCleanup(conn.close)
        self.assertTrue(conn.next().ok)
        conn.send(support.request("STAMP", "stamps/1"))
        reply = conn.next()
        self.assertEqual(reply.kind, "OK", reply)
        self.assertIn(b'"Id": "stamps/1"', reply.body)
