"""
The allow-list: its file format, and reloading it without a restart.
"""

import os

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from proto.admission import AllowList, AllowListError, AllowListFile, normaliseThumbprint

SHA1 = "90" * 20
SHA256 = "ab" * 32


class AllowListTests(unittest.TestCase):
    def test_format(self):
        text = (
            "# comment line\n"
            f"{SHA1.upper()}   first client\n"
            "\n"
            f"{':'.join(SHA256[i:i + 2] for i in range(0, 64, 2))}  # trailing comment\n"
        )
        allow = AllowList.parse(text)
        self.assertEqual(allow.names, {SHA1: "first client", SHA256: ""})
        self.assertTrue(allow.admits(SHA1, "x"))
        self.assertTrue(allow.admits("x", SHA256))
        self.assertFalse(allow.admits("x", "y"))

    def test_malformedNamesLine(self):
        e = self.assertRaises(AllowListError, AllowList.parse, f"{SHA1}\nnot-a-thumbprint name\n")
        self.assertIn("line 2", str(e))

    def test_normalise(self):
        self.assertEqual(normaliseThumbprint("AB:" * 19 + "AB"), "ab" * 20)
        self.assertIsNone(normaliseThumbprint("ab" * 21))
        self.assertIsNone(normaliseThumbprint("zz" * 20))


class AllowListFileTests(unittest.TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.write(f"{SHA1} one\n")
        self.changes = []
        self.allow = AllowListFile(self.path, self.changes.append)

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)
        # Make every write visible to the stat-based check, however fast.
        st = os.stat(self.path)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000 * (1 + len(text))))

    def test_reload(self):
        self.assertFalse(self.allow.check())
        self.write(f"{SHA256} two\n")
        self.assertFalse(self.allow.check(), "applied once it stayed the same for one more check")
        self.assertTrue(self.allow.check())
        self.assertEqual(self.changes[-1].names, {SHA256: "two"})
        self.assertEqual(self.allow.current.names, {SHA256: "two"})

    def test_badFileKeepsLastGood(self):
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.write("garbage\n")
        self.assertFalse(self.allow.check())
        self.assertFalse(self.allow.check())
        self.assertEqual(self.allow.current.names, {SHA1: "one"})
        os.remove(self.path)
        self.assertFalse(self.allow.check())
        self.assertFalse(self.allow.check())
        self.assertEqual(self.allow.current.names, {SHA1: "one"})
        self.assertEqual(self.changes, [])
        reasons = [e["error"] for e in events if "not reloaded" in e.get("log_format", "")]
        self.assertEqual(len(reasons), 2)
        self.assertIn("line 1", reasons[0])


class IdentityOfTests(unittest.TestCase):
    """identityOf: identities looked up by the certificate's SHA-256."""

    def setUp(self) -> None:
        from proto import admission

        self.patch(admission, "_bySHA256", {})

    def test_derOnlyTheFirstTime(self):
        """The DER is asked for once per certificate; the identity is identityOfDER's."""
        import hashlib

        from cryptography.hazmat.primitives.serialization import Encoding

        from proto import certs
        from proto.admission import identityOf, identityOfDER

        der = certs.mint("someone").certificate.public_bytes(Encoding.DER)
        asked = []

        def getDER():
            asked.append(1)
            return der

        digest = hashlib.sha256(der).digest()
        first = identityOf(digest, getDER)
        self.assertEqual(first, identityOfDER(der))
        self.assertIs(identityOf(digest, getDER), first)
        self.assertEqual(len(asked), 1)

    def test_digestMustMatch(self):
        """A DER whose digest is not the one given is refused, and not remembered."""
        from cryptography.hazmat.primitives.serialization import Encoding

        from proto import admission, certs
        from proto.admission import identityOf

        der = certs.mint("someone").certificate.public_bytes(Encoding.DER)
        self.assertRaises(ValueError, identityOf, b"\0" * 32, lambda: der)
        self.assertRaises(ValueError, identityOf, b"\1" * 32, lambda: None)
        self.assertEqual(admission._bySHA256, {})

    def test_bounded(self):
        """Past _MAX_IDENTITIES certificates the table starts again."""
        import hashlib

        from cryptography.hazmat.primitives.serialization import Encoding

        from proto import admission, certs
        from proto.admission import identityOf

        self.patch(admission, "_MAX_IDENTITIES", 3)
        for n in range(7):
            der = certs.mint(f"c{n}").certificate.public_bytes(Encoding.DER)
            identityOf(hashlib.sha256(der).digest(), lambda: der)
            self.assertLessEqual(len(admission._bySHA256), 3)


class AdmitTests(unittest.TestCase):
    """
    L{proto.admission.admit} (the handshake's path) decides as L{judge}
    does, in the same order, and gives the admitted certificate's grant.
    """

    def test_sameAsJudge(self):
        import datetime

        from proto.admission import Identity, admit, judge

        utc = datetime.timezone.utc
        start = datetime.datetime(2026, 1, 1, tzinfo=utc)
        end = datetime.datetime(2027, 1, 1, tzinfo=utc)
        listed = Identity(SHA1, SHA256, "listed", start, end)
        stranger = Identity("12" * 20, "34" * 32, "stranger", start, end)
        allow = AllowList.parse(f"{SHA256} somebody can=write\n")
        second = datetime.timedelta(seconds=1)
        moments = [start - second, start, start + second, end - second, end, end + second]
        for who in (None, listed, stranger):
            for moment in moments:
                grant, reason = admit(who, allow, moment.timestamp())
                self.assertEqual(reason, judge(who, allow, moment), (who, moment))
                if reason is None:
                    self.assertEqual(grant, allow.grantFor(SHA1, SHA256))
                else:
                    self.assertIsNone(grant)
        # Admitted exactly on both edges, refused a second outside.
        self.assertIsNotNone(admit(listed, allow, start.timestamp())[0])
        self.assertIsNotNone(admit(listed, allow, end.timestamp())[0])
        self.assertIn("not yet valid", admit(listed, allow, (start - second).timestamp())[1])
        self.assertIn("expired", admit(listed, allow, (end + second).timestamp())[1])

    def test_validityAsSeconds(self):
        import datetime

        from proto.admission import Identity

        utc = datetime.timezone.utc
        start = datetime.datetime(2026, 1, 1, tzinfo=utc)
        end = datetime.datetime(2027, 1, 1, 12, 30, tzinfo=utc)
        who = Identity(SHA1, SHA256, "x", start, end)
        self.assertEqual((who.validFrom, who.validUntil), (start.timestamp(), end.timestamp()))
        # Not part of the identity's value (equality, repr).
        self.assertEqual(who, Identity(SHA1, SHA256, "x", start, end))
        self.assertNotIn("validFrom", repr(who))
