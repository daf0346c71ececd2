"""
The default listeners: IPv4 and IPv6 on one port (separate sockets, the
IPv6 one with IPV6_V6ONLY), and a host without IPv6 still starting.
"""

import socket

from twisted.internet import endpoints, protocol, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.internet.testing import EventLoggingObserver
from twisted.trial import unittest

from proto.server import OptionalListenService, V6OnlyTCPEndpoint
from tests.support import freePort


def hasIPv6Loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class ListenTests(unittest.TestCase):
    @inlineCallbacks
    def test_v4AndV6OnOnePort(self):
        if not hasIPv6Loopback():
            raise unittest.SkipTest("this host has no IPv6 loopback")
        port = freePort()
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        v4 = yield endpoints.TCP4ServerEndpoint(reactor, port).listen(factory)
        self.addCleanup(v4.stopListening)
        v6 = yield V6OnlyTCPEndpoint(reactor, port).listen(factory)
        self.addCleanup(v6.stopListening)
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            # The kernel completes the TCP handshake into the backlog, so a
            # blocking connect works without the reactor running.
            with socket.socket(family) as s:
                s.settimeout(5)
                s.connect((host, port))
        self.assertEqual(v6.getHost().port, port)

    def test_missingIPv6IsLoggedNotFatal(self):
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        # 2001:db8::/32 is for documentation: never an address of this host.
        service = OptionalListenService(V6OnlyTCPEndpoint(reactor, 0, interface="2001:db8::1"), factory)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        warnings = [e for e in events if "IPv6 listener not started" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
