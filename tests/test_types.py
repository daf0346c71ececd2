"""
The type gate: mypy over C{proto/}, as part of the suite (so every landing
and CI run it; C{.ci/run} also runs it as its own step first).

The settings are in C{pyproject.toml} (C{[tool.mypy]}): all of C{proto/}
is checked; the sans-I/O wire format (C{proto/wire/}), the command layer
(C{proto/commands/}: handlers take an C{ICommandContext} and a
C{wire.Request}), C{proto/subscriptions.py}, the clients
(C{proto/client/}: the core, both connections, the CLI) and the
connection (C{proto/protocol.py} and its parts: admitting, dispatch and the
reply mapping, flow control,
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


def strictModules() -> list[str]:
    """
    The paths of the modules pyproject.toml gives the flags of C{--strict}
    (its C{[[tool.mypy.overrides]]} that sets C{disallow_untyped_defs}),
    read from there so the two lists cannot drift apart.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # mypy's own dependency there
        import tomli as tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        overrides = tomllib.load(f)["tool"]["mypy"]["overrides"]
    modules = [m for o in overrides if o.get("disallow_untyped_defs") for m in o["module"]]
    return [
        m[: -len(".*")].replace(".", "/") if m.endswith(".*") else m.replace(".", "/") + ".py"
        for m in modules
    ]


#: Checked with C{--strict} too, beside L{strictModules}: the example of
#: commands of your own, what a plugin author copies.
EXAMPLE = "examples/proto-hello/proto_hello/__init__.py"


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
        """
        The strict modules pass C{mypy --strict} itself (the per-module
        flags in pyproject.toml say the same; this catches a flag mypy adds
        to --strict).
        """
        self.mypy("--strict", "--follow-imports=silent", *strictModules(), EXAMPLE)
