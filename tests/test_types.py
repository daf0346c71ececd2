"""
The type gate: mypy over the modules that promise types, as part of the
suite (so every landing and CI run it).

  - strict (C{mypy --strict}): the sans-I/O wire format (C{proto/wire.py})
    C{proto/subscriptions.py}, and the parts of the connection: dispatch,
    flow control, timers, states;
  - checked: the transport levers (C{proto/speed/}).

The rest of C{proto/} is not gated yet (see README, "Speed" section): add
a module here once it passes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRICT = [
    "proto/wire.py", "proto/subscriptions.py",
    # the connection's parts (issue 9: the connection's shape)
    "proto/dispatch.py", "proto/flowcontrol.py", "proto/timers.py", "proto/states.py",
]
CHECKED = ["proto/speed"]


class TypeGateTests(unittest.TestCase):
    def setUp(self):
        if importlib.util.find_spec("mypy") is None:
            message = "mypy is not installed: pip install -e '.[test]'"
            if os.environ.get("CI") == "true":
                self.fail(message)
            raise unittest.SkipTest(message)

    def mypy(self, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--cache-dir", os.devnull, "--follow-imports=silent",
             "--ignore-missing-imports", "--no-error-summary", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_strict(self):
        self.mypy("--strict", *STRICT)

    def test_checked(self):
        self.mypy(*CHECKED)
