"""
The speed levers (proto/speed): they must not change behaviour.

Write-through over real loopback TCP sockets (its fallbacks: partial send,
EAGAIN, producers, abort, close and half-close), the per-turn TLS flusher,
the quiet reactor's exception handling, and the server over real TCP+TLS
with the levers on: close_notify on QUIT, a fatal ERR flushed before the
close, abort of a peer that never answers close_notify. (Backpressure with
the levers on: tests/test_flowcontrol.py.)
"""

from __future__ import annotations

import socket

from twisted.internet import defer, endpoints, error, protocol, reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from zope.interface import implementer

from proto import wire
from proto.commands import builtin
from proto.server import ServerConfig
from proto.speed import reactor as speedReactor
from proto.speed.tlsflush import FastTLSTransport, TurnAggregator, TurnFlusher
from proto.speed.writethrough import WriteThrough, enableWriteThrough
from tests.support import Credentials, listenInProcess, makeFactory, request


def waitFor(predicate, timeout: float = 10.0, interval: float = 0.005):
    """Poll C{predicate} on the reactor until true (bounded)."""
    d = defer.Deferred()
    calls = int(timeout / interval)

    def check(left):
        if predicate():
            d.callback(None)
        elif left <= 0:
            d.errback(AssertionError(f"condition not met within {timeout} s"))
        else:
            reactor.callLater(interval, check, left - 1)

    check(calls)
    return d


class Server(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = None

    def connectionMade(self) -> None:
        self.factory.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


class RawClient:
    """A plain, non-blocking standard-library socket: reads only when told."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.data = b""
        self.eof = False
        self.reset = False

    def drain(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.reset = True
                return
            if not chunk:
                self.eof = True
                return
            self.data += chunk

    def close(self) -> None:
        self.sock.close()


class WriteThroughTests(unittest.TestCase):
    """L{WriteThrough} on a real TCP connection accepted by a Twisted port."""

    @inlineCallbacks
    def setUp(self):
        factory = protocol.Factory.forProtocol(Server)
        factory.made = []
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = RawClient(self.port.getHost().port, rcvbuf=4096)
        self.addCleanup(self.client.close)
        yield waitFor(lambda: factory.made)
        self.server = factory.made[0]
        self.transport = self.server.transport
        self.addCleanup(self._disconnect)
        self.assertTrue(enableWriteThrough(self.transport))
        self.assertIsInstance(self.transport, WriteThrough)

    def _disconnect(self):
        if self.server.lost is None:
            self.transport.abortConnection()
            return waitFor(lambda: self.server.lost is not None)

    def queued(self) -> int:
        t = self.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    def fillKernelBuffer(self) -> None:
        """Fill the socket's send buffer behind Twisted's back (bounded)."""
        sock = self.transport.socket
        for _ in range(100000):
            try:
                sock.send(b"k" * 65536)
            except BlockingIOError:
                return
        self.fail("the kernel never refused")

    @inlineCallbacks
    def readAll(self, expected: int):
        def enough():
            self.client.drain()
            return len(self.client.data) >= expected or self.client.eof

        yield waitFor(enough, timeout=20)

    def test_sentAtOnce(self):
        """With nothing queued, write() is one send(): no reactor turn."""
        self.transport.write(b"hello")
        self.assertEqual(self.queued(), 0)
        self.assertNotIn(self.transport, reactor.getWriters())
        self.client.sock.setblocking(True)
        self.client.sock.settimeout(5)
        self.assertEqual(self.client.sock.recv(100), b"hello")

    @inlineCallbacks
    def test_partialSend(self):
        """What the kernel does not take is queued and sent in order."""
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 8192  # 2 MiB: far more than the buffers hold
        self.transport.write(big)
        self.assertGreater(self.queued(), 0)
        self.assertLess(self.queued(), len(big), "part of it went straight out")
        self.assertIn(self.transport, reactor.getWriters())
        self.transport.write(b"tail")  # must queue behind the rest
        self.assertEqual(self.queued() > len(b"tail"), True)
        yield self.readAll(len(big) + 4)
        self.assertEqual(self.client.data, big + b"tail")
        yield waitFor(lambda: self.queued() == 0)
        # Drained: the next write goes straight out again.
        self.transport.write(b"again")
        self.assertEqual(self.queued(), 0)

    @inlineCallbacks
    def test_eagain(self):
        """A full kernel buffer (send() -> EAGAIN) queues the write."""
        self.fillKernelBuffer()
        self.client.data = b""
        self.transport.write(b"after-eagain")
        self.assertEqual(self.queued(), len(b"after-eagain"))
        self.assertIn(self.transport, reactor.getWriters())

        def done():
            self.client.drain()
            return self.client.data.endswith(b"after-eagain")

        yield waitFor(done, timeout=20)
        self.assertEqual(self.client.data.strip(b"k"), b"after-eagain")

    @inlineCallbacks
    def test_sendErrorQueuesThenCloses(self):
        """
        send() failing with something other than EAGAIN (the peer reset the
        connection): write() does not raise; the bytes are queued and the
        stock doWrite closes the connection with the error, as without
        write-through.
        """
        import struct

        self.client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.close()  # RST
        def written():
            self.transport.write(b"x" * 100)
            return self.server.lost is not None or self.queued() > 0
        yield waitFor(written)
        yield waitFor(lambda: self.server.lost is not None)
        self.server.lost.trap(error.ConnectionLost, error.ConnectionDone)

    @inlineCallbacks
    def test_pullProducerQueues(self):
        """A pull producer is asked for more by doWrite: its writes queue."""

        @implementer(IPullProducer)
        class Pull:
            asked = 0

            def resumeProducing(self):
                Pull.asked += 1

            def stopProducing(self):
                pass

        self.transport.registerProducer(Pull(), False)
        asked = Pull.asked
        self.transport.write(b"pulled")
        self.assertEqual(self.queued(), len(b"pulled"))
        yield self.readAll(6)
        self.assertEqual(self.client.data, b"pulled")
        yield waitFor(lambda: Pull.asked > asked)
        self.transport.unregisterProducer()

    @inlineCallbacks
    def test_streamingProducerPausedOnPartialSend(self):
        """
        A streaming producer keeps write-through; when the kernel stops
        taking bytes and the queue passes the high-water mark, it is paused
        exactly as on the stock path, and resumed once drained.
        """

        @implementer(IPushProducer)
        class Push:
            paused = 0
            resumed = 0

            def pauseProducing(self):
                self.paused += 1

            def resumeProducing(self):
                self.resumed += 1

            def stopProducing(self):
                pass

        producer = Push()
        self.transport.registerProducer(producer, True)
        self.transport.write(b"x")
        self.assertEqual(self.queued(), 0, "streaming producer: still written through")
        self.fillKernelBuffer()
        self.transport.write(b"y" * (self.transport.bufferSize + 1))
        self.assertEqual(producer.paused, 1)
        yield self.readAll(0)  # start reading: the queue drains

        def drained():
            self.client.drain()
            return producer.resumed

        yield waitFor(drained, timeout=20)
        self.transport.unregisterProducer()

    @inlineCallbacks
    def test_abortSendsNothing(self):
        self.transport.write(b"before")
        self.transport.abortConnection()
        self.transport.write(b"after")
        yield waitFor(lambda: self.server.lost is not None)
        self.server.lost.trap(error.ConnectionAborted)
        yield self.readAll(10**9)
        self.assertEqual(self.client.data, b"before")

    @inlineCallbacks
    def test_writeAfterLoseConnection(self):
        """Queued, then sent before the close (as on the stock path)."""
        self.transport.write(b"first ")
        self.transport.loseConnection()
        self.transport.write(b"late")
        self.assertEqual(self.queued(), len(b"late"))
        yield self.readAll(10**9)
        self.assertEqual(self.client.data, b"first late")
        self.assertTrue(self.client.eof)
        yield waitFor(lambda: self.server.lost is not None)
        self.server.lost.trap(error.ConnectionDone)

    @inlineCallbacks
    def test_halfClose(self):
        """After loseWriteConnection: bytes queued, then FIN; reading goes on."""
        self.transport.write(b"a")
        self.transport.loseWriteConnection()
        self.transport.write(b"b")
        self.assertEqual(self.queued(), 1)
        yield self.readAll(10**9)
        self.assertEqual(self.client.data, b"ab")
        self.assertTrue(self.client.eof)
        self.client.sock.send(b"still reading")
        yield waitFor(lambda: self.server.received == b"still reading")
        self.transport.write(b"dropped")  # write side closed: dropped, as before
        self.assertEqual(self.queued(), 0)

    def givePollHook(self) -> list:
        """
        Give the (global) reactor the quiet reactor's C{callBeforePoll},
        run by hand: the list of the calls asked for.
        """
        calls: list = []
        reactor.callBeforePoll = calls.append
        self.addCleanup(delattr, reactor, "callBeforePoll")
        return calls

    @inlineCallbacks
    def test_closeBeforePollWithNothingQueued(self):
        """
        loseConnection() with nothing queued: reading stops, no EPOLLOUT is
        asked for, and the connection closes right before the next poll
        (ConnectionDone, the bytes sent, then EOF), not a turn later.
        """
        calls = self.givePollHook()
        self.transport.write(b"bye")
        self.transport.loseConnection()
        self.assertNotIn(self.transport, reactor.getWriters())
        self.assertNotIn(self.transport, reactor.getReaders())
        self.assertEqual(len(calls), 1)
        self.assertIsNone(self.server.lost)
        calls.pop()()
        self.assertIsNotNone(self.server.lost)
        self.server.lost.trap(error.ConnectionDone)
        yield self.readAll(10**9)
        self.assertEqual(self.client.data, b"bye")
        self.assertTrue(self.client.eof)

    @inlineCallbacks
    def test_closeBeforePollWrittenMeanwhile(self):
        """Bytes written after loseConnection() are sent before the close."""
        calls = self.givePollHook()
        self.transport.loseConnection()
        self.transport.write(b"late")
        self.assertEqual(self.queued(), len(b"late"))
        calls.pop()()
        self.assertIsNone(self.server.lost)
        yield self.readAll(10**9)
        self.assertEqual(self.client.data, b"late")
        self.assertTrue(self.client.eof)
        yield waitFor(lambda: self.server.lost is not None)
        self.server.lost.trap(error.ConnectionDone)

    @inlineCallbacks
    def test_closeBeforePollAbortedMeanwhile(self):
        """An abort after loseConnection() wins: ConnectionAborted, once."""
        calls = self.givePollHook()
        self.transport.loseConnection()
        self.transport.abortConnection()
        calls.pop()()
        yield waitFor(lambda: self.server.lost is not None)
        self.server.lost.trap(error.ConnectionAborted)

    def test_closeWithBytesQueuedStockPath(self):
        """With bytes queued, loseConnection() is the stock one (drain, then close)."""
        calls = self.givePollHook()
        self.fillKernelBuffer()
        self.transport.write(b"queued")
        self.transport.loseConnection()
        self.assertEqual(calls, [])
        self.assertIn(self.transport, reactor.getWriters())

    def test_onlyTCPConnections(self):
        self.assertFalse(enableWriteThrough(object()))


class TurnFlusherTests(unittest.TestCase):
    def test_oneCallForAllConnections(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        out = {1: [], 2: []}
        a = TurnAggregator(out[1].append, flusher)
        b = TurnAggregator(out[2].append, flusher)
        a.write(b"a1")
        b.write(b"b1")
        a.write(b"a2")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(out, {1: [], 2: []})
        clock.advance(0)
        self.assertEqual(out, {1: [b"a1a2"], 2: [b"b1"]})
        self.assertEqual(clock.getDelayedCalls(), [])
        a.write(b"a3")
        clock.advance(0)
        self.assertEqual(out[1], [b"a1a2", b"a3"])

    def test_bigWriteAtOnce(self):
        clock = Clock()
        out = []
        a = TurnAggregator(out.append, TurnFlusher(clock))
        a.write(b"x" * (TurnAggregator.MAX_BUFFER_SIZE + 1))
        self.assertEqual(len(out), 1)

    def test_oneFailureDoesNotStopTheOthers(self):
        clock = Clock()
        flusher = TurnFlusher(clock)
        out = []

        def broken(data):
            raise RuntimeError("boom")

        TurnAggregator(broken, flusher).write(b"x")
        TurnAggregator(out.append, flusher).write(b"y")
        clock.advance(0)
        self.assertEqual(out, [b"y"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BeforePollClock(Clock):
    """A test clock with the quiet reactor's C{callBeforePoll}, run by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.beforePoll: list = []

    def callBeforePoll(self, f) -> None:
        self.beforePoll.append(f)

    def poll(self) -> None:
        calls, self.beforePoll = self.beforePoll, []
        for f in calls:
            f()


class TurnFlusherBeforePollTests(unittest.TestCase):
    def test_flushBeforePollNotTimed(self):
        """
        On a reactor with C{callBeforePoll}, the flush is one call before
        the poll for all connections, and no C{DelayedCall}.
        """
        clock = BeforePollClock()
        flusher = TurnFlusher(clock)
        out = {1: [], 2: []}
        a = TurnAggregator(out[1].append, flusher)
        b = TurnAggregator(out[2].append, flusher)
        a.write(b"a1")
        b.write(b"b1")
        a.write(b"a2")
        self.assertEqual(len(clock.beforePoll), 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(0)
        self.assertEqual(out, {1: [], 2: []})
        clock.poll()
        self.assertEqual(out, {1: [b"a1a2"], 2: [b"b1"]})
        a.write(b"a3")
        self.assertEqual(len(clock.beforePoll), 1)
        clock.poll()
        self.assertEqual(out[1], [b"a1a2", b"a3"])
        self.assertEqual(clock.beforePoll, [])


class Exploding:
    """A reader whose doRead raises, on one end of a socket pair."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.lost = None

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return "Exploding,7"

    def doRead(self):
        raise ValueError("handler bug")

    def connectionLost(self, reason):
        self.lost = reason


class QuietReactorTests(unittest.TestCase):
    def test_handlerExceptionLoggedWithPrefixAndDisconnected(self):
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        reader = Exploding(a)
        r.addReader(reader)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        b.send(b"x")
        r.doPoll(1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIsNotNone(reader.lost)
        reader.lost.trap(ValueError)
        self.assertNotIn(reader, r.getReaders())
        systems = [e.get("log_system") for e in events if e.get("isError")]
        self.assertIn("Exploding,7", systems)


    def test_callBeforePoll(self):
        """
        Called once, before the next poll (after the turn's timed calls);
        a failing one is logged and the others still run; the poll does
        not sleep past a call one of them scheduled.
        """
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        calls = []

        def broken():
            calls.append("broken")
            raise ValueError("bug")

        r.callLater(0, calls.append, "timed")
        r.callBeforePoll(broken)
        r.callBeforePoll(lambda: r.callLater(0, calls.append, "scheduled"))
        r.runUntilCurrent()
        self.assertEqual(calls, ["timed"])
        started = r.seconds()
        r.doPoll(5)
        self.assertLess(r.seconds() - started, 4)
        r.runUntilCurrent()
        self.assertEqual(calls, ["timed", "broken", "scheduled"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        r.doPoll(0)
        self.assertEqual(calls, ["timed", "broken", "scheduled"])

    def test_callBeforePollMovesATimedCallSooner(self):
        """
        A call before the poll that moves a timed call sooner (reset) does
        not let the poll sleep until the old time.
        """
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        calls = []
        later = r.callLater(30, calls.append, "moved")
        r.runUntilCurrent()
        r.callBeforePoll(lambda: later.reset(0))
        started = r.seconds()
        r.doPoll(r.timeout())
        self.assertLess(r.seconds() - started, 4)
        r.runUntilCurrent()
        self.assertEqual(calls, ["moved"])

    def test_mainLoopGoesOnAfterAnError(self):
        """An unexpected error in a turn is logged and the loop goes on, as Twisted's."""
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        polls = []
        real = r._poller

        class Poller:
            def poll(self, timeout, maxEvents):
                polls.append(timeout)
                if len(polls) == 1:
                    raise ValueError("poller bug")
                r._started = False
                return []

            def __getattr__(self, name):
                return getattr(real, name)

        r._poller = Poller()
        r._started = r.running = True
        r.mainLoop()
        self.assertEqual(len(polls), 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_callBeforePollFromOne(self):
        """
        A call made before the poll that asks for another one (a TLS flush
        that makes more output) does not let the poll sleep: the new one
        runs before the next poll.
        """
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        calls = []
        r.callBeforePoll(lambda: r.callBeforePoll(lambda: calls.append("again")))
        started = r.seconds()
        r.doPoll(5)
        self.assertLess(r.seconds() - started, 4)
        self.assertEqual(calls, [])
        r.doPoll(0)
        self.assertEqual(calls, ["again"])


    def test_callAfterEventsRightAfterThePollsEvents(self):
        """
        Asked for while a poll's events are handled: called once, when
        they all are, before the turn's timed calls; a failing one is
        logged and the others still run.
        """
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        calls = []
        pairs = [socket.socketpair() for _ in range(2)]
        for a, b in pairs:
            self.addCleanup(a.close)
            self.addCleanup(b.close)

        def broken():
            calls.append("broken")
            raise ValueError("bug")

        class Reader:
            def __init__(self, sock, name):
                self.sock, self.name = sock, name

            def fileno(self):
                return self.sock.fileno()

            def doRead(self):
                self.sock.recv(10)
                calls.append(self.name)
                r.callLater(0, calls.append, "timed")
                r.callAfterEvents(broken if self.name == "a" else lambda: calls.append("after"))

        for (a, b), name in zip(pairs, "ab"):
            r.addReader(Reader(a, name))
            b.send(b"x")
        r.doPoll(1)
        self.assertEqual(sorted(calls[:2]), ["a", "b"])
        self.assertEqual(sorted(calls[2:]), ["after", "broken"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        r.runUntilCurrent()
        self.assertEqual(calls[4:], ["timed", "timed"])

    def test_callAfterEventsOutsideEvents(self):
        """
        Asked for by a timed call (not while events are handled): called
        right before the next poll, which does not sleep past a call it
        asks for in turn (that one runs once the poll's events, none
        here, are handled).
        """
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        calls = []
        r.callLater(0, r.callAfterEvents, lambda: r.callAfterEvents(lambda: calls.append("again")))
        r.runUntilCurrent()
        self.assertEqual(calls, [])
        started = r.seconds()
        r.doPoll(5)
        self.assertLess(r.seconds() - started, 4)
        self.assertEqual(calls, ["again"])
        self.assertEqual(r._afterEvents, [])

    def test_callAfterEventsSchedulingATimedCall(self):
        """A call before the poll that schedules a timed call: the poll does not sleep past it."""
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        calls = []
        r.callAfterEvents(lambda: r.callLater(0, calls.append, "scheduled"))
        started = r.seconds()
        r.doPoll(5)
        self.assertLess(r.seconds() - started, 4)
        r.runUntilCurrent()
        self.assertEqual(calls, ["scheduled"])

    def test_tlsFlushAfterEvents(self):
        """The TLS flusher of the quiet reactor flushes with callAfterEvents."""
        r = speedReactor.QuietEPollReactor()
        self.addCleanup(r._poller.close)
        flusher = TurnFlusher(r)
        out = []
        TurnAggregator(out.append, flusher).write(b"x")
        self.assertEqual((r._afterEvents, r._beforePoll), ([flusher.flushAll], []))
        r.doPoll(0)
        self.assertEqual(out, [b"x"])


@implementer(IPushProducer)
class _Never:
    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.parser = wire.ReplyParser()
        self.frames = []
        self.raw = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.raw += data
        self.frames.extend(self.parser.feed(data))

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


class LeveredServerMixin:
    """
    Our server in this process over real loopback TCP+TLS with the speed
    levers on, and a client that dials it (also used by
    C{tests.test_connsetup}).
    """

    @inlineCallbacks
    def setUp(self):
        self.factory = makeFactory(reactor, ServerConfig(closeGrace=1.0), registry=builtin.registry)
        self.port = yield listenInProcess(reactor, self.factory, levers=True)
        self.addCleanup(self.port.stopListening)

    @inlineCallbacks
    def dial(self, who="client"):
        """A L{Client} connected as C{who} (a L{Credentials} attribute, or
        C{None} for no certificate), once its greeting came."""
        creds = Credentials.get()
        endpoint = endpoints.wrapClientTLS(
            creds.clientOptions(getattr(creds, who) if who else None),
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port),
        )
        client = yield endpoint.connect(protocol.Factory.forProtocol(Client))
        yield waitFor(lambda: client.frames)
        return client


class ServerWithLeversTests(LeveredServerMixin, unittest.TestCase):
    """Our server over real loopback TCP+TLS, served by the fast transport."""

    @inlineCallbacks
    def connect(self):
        client = yield self.dial()
        self.assertTrue(client.frames[0].ok)
        (server,) = self.factory.admitted
        self.assertIsInstance(server.transport, FastTLSTransport)
        self.assertIsInstance(server.transport.transport, WriteThrough)
        return client

    @inlineCallbacks
    def test_quitEndsWithCloseNotify(self):
        client = yield self.connect()
        client.transport.write(request("PING", sequence="1") + request("QUIT", sequence="2"))
        yield client.lost
        client.reason.trap(error.ConnectionDone)  # a clean TLS close, not a lost one
        kinds = [(f.kind, f.sequence) for f in client.frames[1:]]
        self.assertEqual(kinds, [("OK", "1"), ("OK", "2")])

    @inlineCallbacks
    def test_fatalErrorFlushedBeforeClose(self):
        client = yield self.connect()
        client.transport.write(request("PING", sequence="1") + b"PING\r\nno colon\r\n\r\n")
        yield client.lost
        client.reason.trap(error.ConnectionDone)
        frames = client.frames[1:]
        self.assertEqual([f.kind for f in frames], ["OK", "ERR"])
        self.assertIn("Malformed header line", frames[1].reason)

    @inlineCallbacks
    def test_peerIgnoringCloseNotifyIsAborted(self):
        """
        A client that never answers close_notify (it stops reading) is
        aborted after the close grace: the server's connection ends.
        """
        client = yield self.connect()
        (server,) = self.factory.admitted
        client.transport.pauseProducing()
        server.revoke("test: go away")
        yield waitFor(lambda: server not in self.factory.connections, timeout=15)
        client.transport.abortConnection()
        yield client.lost


class PlainTransportOptionTests(unittest.TestCase):
    """C{--plain-transport} turns the levers off; without it they are on."""

    def endpoints(self, levers):
        from proto.server import listenServices

        creds = Credentials.get()
        factory = makeFactory(reactor, ServerConfig(), registry=builtin.registry)
        services = listenServices(reactor, ["tcp:0:interface=127.0.0.1"], creds.serverTLS(), factory, levers)
        return [s.endpoint for s in services]

    def test_leversByDefault(self):
        from proto import speed
        from proto.tap import Options

        options = Options()
        options.parseOptions([])
        self.assertFalse(options["plain-transport"])
        (endpoint,) = self.endpoints(not options["plain-transport"])
        self.assertIsInstance(endpoint, speed.FastTLSServerEndpoint)

    def test_plainTransport(self):
        from proto import speed
        from proto.tap import Options

        options = Options()
        options.parseOptions(["--plain-transport"])
        self.assertTrue(options["plain-transport"])
        (endpoint,) = self.endpoints(not options["plain-transport"])
        self.assertNotIsInstance(endpoint, speed.FastTLSServerEndpoint)
        self.assertFalse(speedReactor.isInstalled(), "trial's reactor was installed first")


class _Recorder(protocol.Protocol):
    """Keeps what TLS delivers and how the connection ended; echoes on request."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = b""
        self.reason = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def connectionLost(self, reason) -> None:
        self.reason = reason


class DirectOpenSSLCallsTests(unittest.TestCase):
    """
    L{FastTLSTransport} calls OpenSSL itself once the handshake is done
    (C{BIO_write}, C{SSL_read}, C{SSL_write}, C{BIO_read}): every outcome
    must be the one Twisted's own transport (through pyOpenSSL's
    wrappers) gives, in memory, both run side by side.
    """

    def connect(self, fast: bool, echo: bool = False):
        from twisted.internet.ssl import PrivateCertificate as PC
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from twisted.test import iosim

        from proto.speed.tlsflush import FastTLSFactory
        from tests.support import realTimeClock

        creds = Credentials.get()
        clock = realTimeClock()
        server, client = _Recorder(echo), _Recorder()
        factory = FastTLSFactory if fast else TLSMemoryBIOFactory
        serverTLS = factory(
            creds.serverTLS(), False, protocol.Factory.forProtocol(lambda: server), clock=clock
        ).buildProtocol(iosim.FakeAddress())
        clientTLS = TLSMemoryBIOFactory(
            creds.clientOptions(creds.client), True, protocol.Factory.forProtocol(lambda: client), clock=clock
        ).buildProtocol(iosim.FakeAddress())
        pump = iosim.connect(
            serverTLS, iosim.makeFakeServer(serverTLS), clientTLS, iosim.makeFakeClient(clientTLS), clock=clock
        )
        self.assertEqual(type(serverTLS) is FastTLSTransport, fast)
        del PC

        def flush():
            for _ in range(20):
                pump.flush()
                clock.advance(0)
            pump.flush()

        flush()
        self.assertTrue(serverTLS._handshakeDone)
        return server, client, serverTLS, clientTLS, flush

    def both(self, scenario):
        """Run C{scenario(fast)} on both transports; their results must agree."""
        results = [scenario(fast) for fast in (False, True)]
        self.assertEqual(results[0], results[1])
        return results[1]

    def test_bigEchoBothWays(self):
        """Several records each way (over 16 KiB, the most one SSL_write takes), intact."""
        data = bytes(range(256)) * 400  # 100 KiB

        def scenario(fast):
            server, client, _, clientTLS, flush = self.connect(fast, echo=True)
            for i in range(0, len(data), 7000):
                client.transport.write(data[i : i + 7000])
                flush()
            return server.received == data, client.received == data

        self.assertEqual(self.both(scenario), (True, True))

    def test_corruptRecord(self):
        """A record that fails to decrypt ends the connection with OpenSSL's error, as before."""
        from OpenSSL.SSL import Error as SSLError

        def scenario(fast):
            server, client, serverTLS, _, flush = self.connect(fast)
            client.transport.write(b"fine")
            flush()
            serverTLS.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
            flush()
            self.assertIsNotNone(server.reason)
            server.reason.trap(SSLError)
            return server.received, str(server.reason.value)

        received, reason = self.both(scenario)
        self.assertEqual(received, b"fine")
        self.assertIn("decryption failed or bad record mac", reason)

    def test_closeNotify(self):
        """The peer's close_notify ends the connection cleanly, as before, after its data."""

        def scenario(fast):
            server, client, _, clientTLS, flush = self.connect(fast)
            client.transport.write(b"last words")
            client.transport.loseConnection()
            flush()
            self.assertIsNotNone(server.reason)
            return server.received, server.reason.type

        self.assertEqual(self.both(scenario), (b"last words", error.ConnectionDone))
