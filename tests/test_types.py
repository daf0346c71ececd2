"""
The type gate: mypy over C{proto/}, as part of the suite (so every landing
and CI run it; C{.ci/run} also runs it as its own step first).

The settings are in C{pyproject.toml} (C{[tool.mypy]}): all of C{proto/}
is checked; the sans-I/O wire format (C{proto/wire.py}), the command layer
(C{proto/commands/}: handlers take an C{ICommandContext} and a
C{wire.Request}), C{proto/subscriptions.py}, the clients
(C{proto/client/}: the core, both connections, the CLI) and the
connection (C{proto/protocol.py} and its parts: dispatch, flow control,
timers, states, ending, bodies) with every flag of C{--strict}. Zope interfaces are types through the C{mypy-zope}
plugin.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Checked with C{--strict} itself as well (the per-module flags in
#: pyproject.toml say the same; this catches a flag mypy adds to --strict).
STRICT = [
    "proto/wire.py", "proto/commands", "proto/subscriptions.py", "proto/client",
    # the connection's parts (issue 9: the connection's shape)
    "proto/dispatch.py", "proto/flowcontrol.py", "proto/timers.py", "proto/states.py",
    "proto/ending.py", "proto/bodies.py", "proto/protocol.py",
    # the example of commands of your own: what a plugin author copies
    "examples/proto-hello/proto_hello/__init__.py",
]


class TypeGateTests(unittest.TestCase):
    def setUp(self):
        if importlib.util.find_spec("mypy") is None or importlib.util.find_spec("mypy_zope") is None:
            message = (
                "mypy or mypy-zope is not installed (both are in the test extra): "
                ".venv/bin/pip install -e '.[test,postgres]'"
            )
            if os.environ.get("CI") == "true":
                self.fail(message)
            raise unittest.SkipTest(message)

    def mypy(self, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--cache-dir", os.devnull, "--no-error-summary", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_proto(self):
        """C{mypy} with pyproject.toml's settings: all of proto/."""
        self.mypy()

    def test_strict(self):
        """The strict modules pass C{mypy --strict} itself."""
        self.mypy("--strict", "--follow-imports=silent", *STRICT)
