"""
Flow control over a real loopback TCP + TLS connection: a client that
pipelines far more than the socket buffers hold and does not read must
not make the server buffer without bound, and once it reads, every
request already sent is answered (nothing waits for new bytes). And
L{proto.flowcontrol.FlowControl}'s decisions alone, without a transport.
"""

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from proto import wire
from proto.commands import builtin
from proto.flowcontrol import INFLIGHT, TRANSPORT, FlowControl
from proto.server import ServerConfig
from tests.support import Credentials, listenInProcess, makeFactory

COUNT = 20000
PAYLOAD = "p" * 2000  # about 2 KiB each way per request: 40 MB in all,
# well past what loopback socket buffers hold (a few MB each way)


class SlowReader(protocol.Protocol):
    """
    Pipelines COUNT requests at once, and reads nothing until told: its
    transport stops reading from the socket, as a stuck client would.
    """

    def __init__(self) -> None:
        self.parser = wire.ReplyParser()
        self.greeted = defer.Deferred()
        self.allAnswered = defer.Deferred()
        self.answered = 0

    def dataReceived(self, data: bytes) -> None:
        for frame in self.parser.feed(data):
            if isinstance(frame, wire.Greeting):
                self.greeted.callback(frame)
                continue
            assert frame.kind == "OK" and frame.body == PAYLOAD.encode(), frame
            self.answered += 1
            if self.answered == COUNT:
                self.allAnswered.callback(None)

    def pipelineWithoutReading(self) -> None:
        self.transport.pauseProducing()
        self.transport.write(
            b"".join(wire.encodeRequest("ECHO", [PAYLOAD], str(i)) for i in range(COUNT))
        )


class BackpressureTests(unittest.TestCase):
    @inlineCallbacks
    def test_nonReadingClientDoesNotGrowServerBuffers(self):
        factory = makeFactory(reactor, ServerConfig(), registry=builtin.registry)
        port = yield listenInProcess(reactor, factory)
        self.addCleanup(port.stopListening)
        creds = Credentials.get()
        endpoint = endpoints.wrapClientTLS(
            creds.clientOptions(creds.client),
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        client = yield endpoint.connect(protocol.Factory.forProtocol(SlowReader))
        self.addCleanup(client.transport.abortConnection)
        greeting = yield client.greeted
        self.assertTrue(greeting.ok)

        samples = []
        congested = []

        def sample():
            for proto in factory.admitted:
                tcp = proto.transport.transport
                samples.append(len(tcp.dataBuffer) + tcp._tempDataLen)
                congested.append(proto.congested())

        sampler = task.LoopingCall(sample)
        sampler.start(0.01)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        client.pipelineWithoutReading()
        # Two seconds of a client that does not read.
        yield task.deferLater(reactor, 2.0, lambda: None)
        self.assertLess(client.answered, COUNT)
        self.assertTrue(any(congested), "the server noticed the client is not reading")
        peak = max(samples)
        self.assertLess(peak, 2 * 1024 * 1024, f"server buffered {peak} bytes")
        (proto,) = factory.admitted
        self.assertTrue(proto.paused, "the server stopped reading")
        self.assertTrue(proto.transport.getTcpNoDelay(), "TCP_NODELAY is set")

        # Now read: every request is answered, with no new bytes needed to
        # wake up the server's parsing of what it already holds.
        client.transport.resumeProducing()
        yield client.allAnswered.addTimeout(60, reactor)
        sampler.stop()
        self.assertEqual(client.answered, COUNT)
        self.assertLess(max(samples), 2 * 1024 * 1024)


class FlowControlDecisionTests(unittest.TestCase):
    """L{proto.flowcontrol.FlowControl}: the decisions alone, no transport."""

    def setUp(self):
        self.flow = FlowControl(maxInflight=8)

    def test_reading(self):
        self.assertFalse(self.flow.paused)
        self.assertFalse(self.flow.congested)
        self.assertFalse(self.flow.resume(TRANSPORT), "nothing to resume")

    def test_reasonsAreKeptApart(self):
        """One resume cannot undo the other reason's pause."""
        self.assertTrue(self.flow.pause(TRANSPORT), "first pause: stop reading")
        self.assertTrue(self.flow.congested)
        self.assertFalse(self.flow.pause(INFLIGHT), "already stopped")
        self.assertFalse(self.flow.pause(TRANSPORT))
        self.assertFalse(self.flow.resume(TRANSPORT), "in-flight still holds it")
        self.assertTrue(self.flow.paused)
        self.assertFalse(self.flow.congested)
        self.assertTrue(self.flow.resume(INFLIGHT), "last reason: read again")
        self.assertFalse(self.flow.paused)

    def test_inflightMarks(self):
        """Pause at the limit, resume below half of it (no flapping)."""
        flow = self.flow
        self.assertEqual([n for n in range(12) if flow.tooManyInflight(n)], [8, 9, 10, 11])
        self.assertFalse(flow.fewEnoughInflight(0), "not paused for that reason")
        flow.pause(INFLIGHT)
        self.assertEqual([n for n in range(9) if flow.fewEnoughInflight(n)], [0, 1, 2, 3])

    def test_clear(self):
        self.assertFalse(self.flow.clear())
        self.flow.pause(TRANSPORT)
        self.flow.pause(INFLIGHT)
        self.assertTrue(self.flow.clear())
        self.assertFalse(self.flow.paused)

    def test_slots(self):
        self.assertFalse(hasattr(self.flow, "__dict__"))

