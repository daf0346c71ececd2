"""misc/proto.service: the systemd unit says what issue 10 asks of it."""

from __future__ import annotations

import os
import re

from twisted.trial import unittest

from tests.support import ROOT


class SystemdUnitTests(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(ROOT, "misc", "proto.service")) as f:
            text = f.read().replace("\\\n", " ")
        self.settings: dict[str, list[str]] = {}
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, _, value = line.partition("=")
                self.settings.setdefault(key, []).append(value.strip())

    def one(self, key: str) -> str:
        (value,) = self.settings[key]
        return value

    def test_unit(self):
        self.assertEqual(self.one("Type"), "simple")
        start = self.one("ExecStart")
        self.assertRegex(start, r"twistd -n --pidfile= (--logger proto\.logs\.json )?proto ")
        self.assertEqual(self.one("User"), "proto")
        self.assertEqual(self.one("StateDirectory"), "proto")
        self.assertIn("-HUP", self.one("ExecReload"))
        drain = float(re.search(r"--drain-timeout (\d+(\.\d+)?)", start).group(1))
        self.assertGreater(float(self.one("TimeoutStopSec")), drain)
        for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
            self.assertIn(hardening, self.settings)
