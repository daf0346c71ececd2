"""
The connection's shape (issue 9): what the layout promises, and the
memory rule the parts keep (idle memory per connection <= 32 KiB).
"""

from twisted.protocols.basic import LineReceiver
from twisted.trial import unittest

from proto.admitting import Admitting
from proto.bodies import BodyBudget
from proto.commands import builtin
from proto.dispatch import Dispatcher
from proto.ending import Ending
from proto.flowcontrol import FlowControl
from proto.protocol import GNPServerProtocol
from proto.timers import Timers
from tests.support import connectInMemory, makeFactory, realTimeClock


class ShapeTests(unittest.TestCase):
    def test_lineReceiverWithOurDelimiter(self):
        """The layout contract: a LineReceiver split on the empty line."""
        self.assertTrue(issubclass(GNPServerProtocol, LineReceiver))
        self.assertEqual(GNPServerProtocol.delimiter, b"\r\n\r\n")

    def test_composedParts(self):
        for part in (Admitting, Dispatcher, Ending, BodyBudget):
            self.assertTrue(issubclass(GNPServerProtocol, part), part)
        # Admitting comes before Dispatcher, which declares displayName
        # for its own type checking (a stub that raises).
        self.assertIs(GNPServerProtocol.displayName, Admitting.displayName)
        conn = connectInMemory(makeFactory(realTimeClock(), registry=builtin.registry), "default")
        self.assertIsInstance(conn.server._timers, Timers)
        self.assertIsInstance(conn.server._flow, FlowControl)

    def test_idleConnectionAttributes(self):
        """
        An admitted, idle connection keeps fewer than 30 instance
        attributes: past that CPython gives up the compact shared-key
        instance dict (about 1.3 KiB more per connection, measured), and
        idle memory per connection must stay <= 32 KiB (we are at ~31).
        Defaults that rarely change belong on the class.
        """
        conn = connectInMemory(makeFactory(realTimeClock(), registry=builtin.registry), "default")
        self.assertEqual(conn.client.raw, b"OK\r\n")
        attributes = sorted(vars(conn.server))
        self.assertLess(len(attributes), 30, attributes)

    def test_oldImportPaths(self):
        """The admission glue moved to proto.admitting; proto.protocol still names it."""
        from proto import admitting, protocol

        for name in ("printablePeer", "ADMITTED", "_logInfo"):
            self.assertIs(getattr(protocol, name), getattr(admitting, name), name)

