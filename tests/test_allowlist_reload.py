"""
Allow-list edits under load (issue 12, item 6): a file caught half-written
is not applied, SIGHUP applies the file at once, and a byte-order mark or
a tab between thumbprint and name is accepted.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from proto import datadir
from proto.admission import AllowList, AllowListFile
from proto.commands import builtin
from proto.server import ServerConfig
from proto.sighup import SighupService
from tests.support import Credentials, connectInMemory, makeFactory, realTimeClock

SHA1 = "90" * 20
SHA256 = "ab" * 32


class Editor:
    """Writes the file the way editors do, each write visible to stat()."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tick = 0

    def write(self, data: bytes, mode: str = "wb") -> None:
        with open(self.path, mode) as f:
            f.write(data)
        # Make every write visible to the stat-based check, however fast.
        self.tick += 1
        st = os.stat(self.path)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000 * self.tick))


class TokenizerTests(unittest.TestCase):
    def test_byteOrderMark(self):
        allow = AllowList.parse(f"\ufeff{SHA1} one\n")
        self.assertEqual(allow.names, {SHA1: "one"})

    def test_tabBeforeName(self):
        allow = AllowList.parse(f"{SHA1}\tone\n{SHA256}\t \tthe other one\t\n")
        self.assertEqual(allow.names, {SHA1: "one", SHA256: "the other one"})

    def test_fileWithByteOrderMarkAndCRLF(self):
        path = self.mktemp()
        Editor(path).write(f"{SHA1}\tone\r\n".encode("utf-8-sig"))
        self.assertEqual(AllowListFile(path).current.names, {SHA1: "one"})


class HalfWrittenTests(unittest.TestCase):
    """An editor truncates, then writes: the moment in between is never applied."""

    def setUp(self):
        creds = Credentials.get()
        self.path = self.mktemp()
        self.editor = Editor(self.path)
        #: The first line admits someone else: cut after it, the list
        #: is well-formed and revokes the connected client.
        self.firstLine = (datadir.allowlistLine(creds.expired.certificate) + "\n").encode()
        self.full = self.firstLine + (datadir.allowlistLine(creds.client.certificate) + "\n").encode()
        self.editor.write(self.full)
        self.allow = AllowListFile(self.path)
        self.clock = realTimeClock()
        self.factory = makeFactory(self.clock, ServerConfig(), registry=builtin.registry)
        self.factory.allowList = lambda: self.allow.current
        self.changes = []

        def changed(new):
            self.changes.append(new)
            self.factory.allowListChanged(new)

        self.allow.onChange = changed
        self.conn = connectInMemory(self.factory)
        self.assertEqual(self.conn.client.raw, b"OK\r\n")

    def test_truncateThenWriteRevokesNobody(self):
        self.editor.write(b"")  # truncated...
        self.allow.check()  # ...and the check comes right then
        self.editor.write(self.firstLine)  # the first line only
        self.allow.check()
        self.editor.write(self.full)
        for _ in range(3):
            self.allow.check()
        self.conn.flush()
        self.assertFalse(self.conn.closed)
        self.assertEqual(self.changes, [])

    def test_settledChangeApplies(self):
        self.editor.write(self.firstLine)
        self.assertFalse(self.allow.check())
        self.conn.flush()
        self.assertFalse(self.conn.closed, "not applied while it may be half-written")
        self.assertTrue(self.allow.check())
        self.conn.flush()
        self.assertTrue(self.conn.closed)
        self.assertIn(b"removed from the allow-list", self.conn.client.raw)

    def test_reloadAppliesAtOnce(self):
        self.editor.write(self.firstLine)
        self.assertTrue(self.allow.reload())
        self.conn.flush()
        self.assertTrue(self.conn.closed)
        self.assertFalse(self.allow.check(), "and the next check sees no change")


class SighupTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_sighupRunsEveryAction(self):
        """A real SIGHUP to this process runs the actions on the reactor thread."""
        ran = []
        hup = SighupService(reactor)
        hup.add("first", lambda: ran.append("first"))
        hup.add("broken", lambda: 1 / 0)
        hup.add("last", lambda: ran.append("last"))
        previous = signal.getsignal(signal.SIGHUP)
        hup.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(400):
                if ran:
                    break
                yield deferLater(reactor, 0.005)
        finally:
            yield hup.stopService()
        self.assertEqual(ran, ["first", "last"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)
