"""
C{proto-cli} for section 9, as a user runs it (real subprocesses against
a real C{twistd -n proto}): PENDING, APPROVE, WHOAMI, and renewal with
C{--mint NAME --enroll}.
"""

from __future__ import annotations

import json
import os

from proto import certs
from tests.test_cli import CLITestCase


class LifecycleCLITests(CLITestCase):
    def test_pendingApproveWhoami(self):
        prefix = os.path.join(self.workdir, "knocker")
        self.assertEqual(self.cli("--mint", "knocker", "--out", prefix).returncode, 0)
        with open(prefix + ".pem", "rb") as f:
            sha1 = certs.sha1Thumbprint(certs.loadCertificates(f.read())[0])
        asKnocker = ("--cert", prefix + ".pem", "--key", prefix + ".key")
        self.assertEqual(self.cli(*asKnocker, "PING").returncode, 3)

        pending = self.cli("PENDING")
        self.assertEqual(pending.returncode, 0, pending.stderr)
        listing = json.loads(pending.stdout)
        self.assertEqual((listing[0]["Sha1"], listing[0]["CN"]), (sha1, "knocker"))

        approved = self.cli("APPROVE", sha1, "night", "job", "can=read")
        self.assertEqual(approved.returncode, 0, approved.stderr)
        self.assertEqual(json.loads(approved.stdout), {"Sha1": sha1, "Name": "night job", "Can": "read"})

        whoami = self.cli(*asKnocker, "WHOAMI")
        self.assertEqual(whoami.returncode, 0, whoami.stderr)
        self.assertEqual(json.loads(whoami.stdout)["Can"], "read")
        refused = self.cli(*asKnocker, "PUT", "a", "--body", "{}")
        self.assertEqual(refused.returncode, 1)
        self.assertIn(b"ERR Forbidden: night job may not PUT a", refused.stderr)

        malformed = self.cli("APPROVE", "not-a-thumbprint")
        self.assertEqual(malformed.returncode, 1)
        self.assertIn(b"Malformed thumbprint", malformed.stderr)

    def test_mintAndEnroll(self):
        """The first-start (admin) client renews itself in one step."""
        prefix = os.path.join(self.workdir, "ops-2027")
        result = self.cli("--mint", "ops 2027", "--enroll", "--out", prefix)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.decode().splitlines()
        self.assertEqual(lines[:2], [f"wrote {prefix}.pem", f"wrote {prefix}.key"])
        self.assertIn("can=admin", lines[2])
        self.assertEqual(os.stat(prefix + ".key").st_mode & 0o777, 0o600)
        whoami = self.cli("--cert", prefix + ".pem", "--key", prefix + ".key", "WHOAMI")
        self.assertEqual(whoami.returncode, 0, whoami.stderr)
        me = json.loads(whoami.stdout)
        self.assertEqual((me["CN"], me["Can"], me["Name"]), ("ops 2027", "admin", "proto client (created on first start)"))
        # --enroll without --mint is a usage error; so are existing files.
        self.assertEqual(self.cli("--enroll").returncode, 2)
        again = self.cli("--mint", "ops 2027", "--enroll", "--out", prefix)
        self.assertEqual(again.returncode, 2)
        self.assertIn(b"exists; not overwriting", again.stderr)
        # --out DIR/ puts the files in that directory, as plain --mint does.
        directory = os.path.join(self.workdir, "renewed") + "/"
        inDir = self.cli("--cert", prefix + ".pem", "--key", prefix + ".key",
                         "--mint", "ops 2028", "--enroll", "--out", directory)
        self.assertEqual(inDir.returncode, 0, inDir.stderr)
        self.assertTrue(os.path.exists(os.path.join(directory, "ops_2028.pem")))
