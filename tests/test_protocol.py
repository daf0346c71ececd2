"""
The server protocol over real TLS in memory (C{twisted.test.iosim}) with a
fake clock: admission, framing, pipelining, errors, timeouts, QUIT.
"""

from twisted.internet import protocol
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial import unittest

from proto import wire
from proto.admission import AllowList
from proto.admitting import printablePeer
from proto.commands import builtin
from proto.server import ServerConfig
from tests.support import Credentials, connectInMemory, makeFactory, realTimeClock, request


def frameTuples(frames):
    return [(f.kind, f.sequence, f.body, f.reason) for f in frames]


class Base(unittest.TestCase):
    def connect(self, client="default", **config):
        self.clock = realTimeClock()
        self.factory = makeFactory(self.clock, ServerConfig(**config), registry=builtin.registry)
        return connectInMemory(self.factory, client)


class AdmissionTests(Base):
    def test_admitted(self):
        conn = self.connect()
        self.assertEqual(conn.client.raw, b"OK\r\n")
        self.assertFalse(conn.closed)
        self.assertIn(conn.server, self.factory.admitted)

    def assertRefused(self, conn, *words):
        self.assertTrue(conn.client.raw.startswith(b"ERR "), conn.client.raw)
        self.assertTrue(conn.client.raw.endswith(b"\r\n"))
        self.assertEqual(conn.client.raw.count(b"\r\n"), 1)
        for w in words:
            self.assertIn(w.encode(), conn.client.raw)
        self.assertTrue(conn.closed)
        self.assertEqual(self.factory.admitted, set())

    def test_noCertificate(self):
        self.assertRefused(self.connect(None), "No client certificate")

    def test_unknownThumbprint(self):
        stranger = Credentials.get().stranger
        from proto.certs import sha1Thumbprint
        self.assertRefused(self.connect(stranger), sha1Thumbprint(stranger.certificate), "stranger", "allow-list")

    def test_expired(self):
        self.assertRefused(self.connect(Credentials.get().expired), "expired on 20")

    def test_notYetValid(self):
        self.assertRefused(self.connect(Credentials.get().future), "not yet valid", "valid from 20")

    def test_inputBeforeAdmissionNeverRuns(self):
        """A refused client's pipelined requests are not executed."""
        clock = realTimeClock()
        ran = []
        registry = builtin.registry.merged(builtin.registry)
        registry.add("MARK", lambda ctx, req: ran.append(req) or b"", level="any")
        self.factory = makeFactory(clock, registry=registry)
        creds = Credentials.get()
        conn = connectInMemory(self.factory, client=creds.stranger)
        conn.client.transport.write(request("MARK"))
        conn.flush()
        self.assertEqual(ran, [])
        self.assertNotIn(b"Sequence", conn.client.raw)

    def test_sha256Entry(self):
        from proto.certs import sha256Thumbprint
        creds = Credentials.get()
        digest = sha256Thumbprint(creds.stranger.certificate).upper()
        colons = ":".join(digest[i:i + 2] for i in range(0, 64, 2))
        clock = realTimeClock()
        self.factory = makeFactory(clock, allowList=AllowList.parse(colons + " someone\n"), registry=builtin.registry)
        conn = connectInMemory(self.factory, client=creds.stranger)
        self.assertEqual(conn.client.raw, b"OK\r\n")

    def test_tooManyConnections(self):
        conn = self.connect(maxConnections=1)
        second = connectInMemory(self.factory)
        self.assertEqual(conn.client.raw, b"OK\r\n")
        self.assertIn(b"Too many connections", second.client.raw)
        self.assertTrue(second.closed)

    def test_revokedWhileConnected(self):
        conn = self.connect()
        self.factory.allowListChanged(AllowList.parse(""))
        conn.flush()
        self.assertTrue(conn.closed)
        (frame,) = conn.frames()
        self.assertEqual(frame.kind, "ERR")
        self.assertIn("removed from the allow-list", frame.reason)


class CommandTests(Base):
    def test_pingEcho(self):
        conn = self.connect()
        conn.send(request("PING") + request("echo", "a", "b", "c", sequence="2"))
        self.assertEqual(frameTuples(conn.frames()), [("OK", "1", b"PONG", ""), ("OK", "2", b"a b c", "")])
        self.assertEqual(conn.client.raw, b"OK\r\nOK\r\nSequence: 1\r\nSize: 4\r\n\r\nPONGOK\r\nSequence: 2\r\nSize: 5\r\n\r\na b c")

    def test_perRequestErrorsKeepConnection(self):
        conn = self.connect()
        conn.send(
            request("FROB") + request("PING", "x", sequence="2")
            + b"P@NG\r\nSequence: 3\r\n\r\n" + b"PING\r\nSequence: 4\r\nTimeout: -1\r\n\r\n"
            + request("PING", sequence="5")
        )
        frames = conn.frames()
        self.assertEqual([f.kind for f in frames], ["ERR", "ERR", "ERR", "ERR", "OK"])
        self.assertEqual(frames[0].reason, "Unknown command: FROB")
        self.assertIn("Wrong number of arguments", frames[1].reason)
        self.assertIn("Malformed command name", frames[2].reason)
        self.assertIn("Malformed Timeout", frames[3].reason)
        self.assertFalse(conn.closed)

    def test_pipelinedThousand(self):
        conn = self.connect()
        conn.send(b"".join(request("ECHO", str(i), sequence=str(i)) for i in range(1000)))
        frames = conn.frames()
        self.assertEqual([(f.sequence, f.body) for f in frames], [(str(i), str(i).encode()) for i in range(1000)])

    def test_repliesExactBytesAndCountedOnce(self):
        """
        Replies written in one chunk are the contract's bytes (the dispatcher
        encodes bytes results inline), and the server counts each byte it
        sends once (STATS, metrics).
        """
        conn = self.connect()
        stats = conn.server.stats
        before, raw = stats.bytesOut, len(conn.client.raw)
        conn.send(request("ECHO", "a", sequence="1") + request("ECHO", sequence="x.2")
                  + request("NOPE", sequence="3"))
        expected = (wire.encodeReply("1", b"a") + wire.encodeReply("x.2")
                    + wire.encodeError("Unknown command: NOPE", "3"))
        self.assertEqual(conn.client.raw[raw:], expected)
        self.assertEqual(stats.bytesOut - before, len(expected))

    def test_outOfOrder(self):
        conn = self.connect()
        conn.send(request("SLEEP", "5", sequence="slow") + request("PING", sequence="fast"))
        self.assertEqual([f.sequence for f in conn.frames()], ["fast"])
        conn.advance(5)
        self.assertEqual(frameTuples(conn.frames()), [("OK", "slow", b"", "")])

    def test_timeout(self):
        conn = self.connect()
        conn.send(b"SLEEP 10\r\nSequence: t\r\nTimeout: 1.5\r\n\r\n")
        conn.advance(1.4)
        self.assertEqual(conn.frames(), [])
        conn.advance(0.2)
        (frame,) = conn.frames()
        self.assertEqual((frame.kind, frame.sequence), ("ERR", "t"))
        self.assertTrue(frame.reason.startswith("Timeout"), frame.reason)
        conn.advance(20)
        self.assertEqual(conn.frames(), [], "no late reply")
        self.assertEqual(conn.server._inflight, {})

    def test_duplicateSequenceInFlight(self):
        conn = self.connect()
        conn.send(request("SLEEP", "1", sequence="a") + request("PING", sequence="a"))
        (frame,) = conn.frames()
        self.assertEqual((frame.kind, frame.sequence), ("ERR", "a"))
        self.assertIn("already in flight", frame.reason)
        conn.advance(1)
        self.assertEqual(frameTuples(conn.frames()), [("OK", "a", b"", "")])
        conn.send(request("PING", sequence="a"))
        self.assertEqual(frameTuples(conn.frames()), [("OK", "a", b"PONG", "")])

    def test_bodySplitAcrossWrites(self):
        conn = self.connect()
        body = b"x" * 70000
        data = request("ECHO", "done", sequence="1", body=body) + request("PING", sequence="2")
        for i in range(0, len(data), 999):
            conn.send(data[i:i + 999])
        self.assertEqual(frameTuples(conn.frames()), [("OK", "1", b"done", ""), ("OK", "2", b"PONG", "")])

    def test_zeroSize(self):
        conn = self.connect()
        conn.send(request("ECHO", "z", body=b"") + request("PING", sequence="2"))
        self.assertEqual([f.sequence for f in conn.frames()], ["1", "2"])

    def test_quitAfterEarlierReplies(self):
        conn = self.connect()
        conn.send(request("SLEEP", "2", sequence="1") + request("QUIT", sequence="2") + request("PING", sequence="3"))
        self.assertEqual(frameTuples(conn.frames()), [("OK", "2", b"", "")])
        self.assertFalse(conn.closed)
        conn.advance(2)
        self.assertEqual(frameTuples(conn.frames()), [("OK", "1", b"", "")])
        self.assertTrue(conn.closed, "closed once every earlier reply was sent")


class FramingErrorTests(Base):
    """Each framing error: ERR (with Sequence if known), flushed, closed."""

    def assertFatal(self, data, words, sequence=None, **config):
        conn = self.connect(**config)
        conn.send(request("PING", sequence="before") + data + request("PING", sequence="after"))
        frames = conn.frames()
        self.assertEqual(frameTuples(frames[:1]), [("OK", "before", b"PONG", "")], "replies due are sent first")
        self.assertEqual(len(frames), 2, frames)
        self.assertEqual((frames[1].kind, frames[1].sequence), ("ERR", sequence))
        self.assertIn(words, frames[1].reason)
        self.assertTrue(conn.client.raw.endswith(b"\r\n\r\n"))
        self.assertTrue(conn.closed)
        # TLS keeps delivering after loseConnection: later input must not run.
        return conn

    def test_headOverLimit(self):
        self.assertFatal(b"ECHO " + b"x" * 200 + b"\r\nSequence: 1\r\n\r\n", "over the limit of 128", maxHead=128)

    def test_headAtLimitAccepted(self):
        conn = self.connect(maxHead=64)
        head = b"ECHO a\r\nSequence: 1\r\n\r\n"
        padded = b"ECHO " + b"a" * (64 - len(head) + 1) + b"\r\nSequence: 1\r\n\r\n"
        self.assertEqual(len(padded), 64)
        conn.send(padded)
        self.assertEqual([f.kind for f in conn.frames()], ["OK"])
        conn.send(b"ECHO " + b"a" * (64 - len(head) + 2) + b"\r\nSequence: 2\r\n\r\n")
        self.assertEqual([f.kind for f in conn.frames()], ["ERR"])
        self.assertTrue(conn.closed)

    def test_headOverLimitWithoutDelimiter(self):
        self.assertFatal(b"ECHO " + b"y" * 300, "over the limit", maxHead=128)

    def test_notUTF8(self):
        self.assertFatal(b"PING \xc3\x28\r\nSequence: 9\r\n\r\n", "UTF-8")

    def test_emptyCommandLine(self):
        self.assertFatal(b"\r\nSequence: 9\r\n\r\n", "Empty command line", "9")

    def test_headerWithoutColon(self):
        self.assertFatal(b"PING\r\nSequence: 9\r\nbogus\r\n\r\n", "Malformed header", "9")

    def test_missingSequence(self):
        self.assertFatal(b"PING\r\nX: 1\r\n\r\n", "Missing Sequence")

    def test_malformedSize(self):
        self.assertFatal(b"PING\r\nSequence: 9\r\nSize: ten\r\n\r\n", "Malformed Size", "9")

    def test_sizeOverCap(self):
        self.assertFatal(b"PING\r\nSequence: 9\r\nSize: 1001\r\n\r\n", "over the body limit", "9", maxBody=1000)


class TimeoutTests(Base):
    def test_handshakeTimeout(self):
        """A client that never speaks TLS is dropped after the timeout."""
        clock = realTimeClock()
        self.factory = makeFactory(clock, ServerConfig(handshakeTimeout=5))
        creds = Credentials.get()
        server = TLSMemoryBIOFactory(creds.serverTLS(), False, self.factory, clock=clock).buildProtocol(None)
        silent = protocol.Protocol()
        lost = []
        silent.connectionLost = lost.append
        pump = iosim.connect(server, iosim.makeFakeServer(server), silent, iosim.makeFakeClient(silent), clock=clock)
        clock.advance(4.9)
        pump.flush()
        self.assertEqual(lost, [])
        with capturedLogs() as events:
            clock.advance(0.2)
            pump.flush()
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.factory.connections, set())
        # The log names the peer (looked up only now: none is needed before).
        [peer] = [e["peer"] for e in events if e.get("log_format", "").startswith("Handshake timeout")]
        self.assertEqual(peer, printablePeer(server.getPeer()))

    def test_slowlorisHead(self):
        """A head trickling in slower than the head timeout is cut off."""
        conn = self.connect(headTimeout=3, idleTimeout=100)
        for byte in b"PING\r\nSeq":
            conn.send(bytes([byte]))
            conn.advance(0.3)
        self.assertFalse(conn.closed)
        conn.advance(0.4)
        (frame,) = conn.frames()
        self.assertIn("did not arrive within 3 s", frame.reason)
        self.assertTrue(conn.closed)

    def test_headTimerRestartsPerHead(self):
        conn = self.connect(headTimeout=3)
        for i in range(5):
            conn.send(request("PING", sequence=str(i))[:-1])
            conn.advance(2)
            conn.send(b"\n")
        self.assertEqual(len(conn.frames()), 5)
        self.assertFalse(conn.closed)

    def test_idleTimeout(self):
        conn = self.connect(idleTimeout=30)
        conn.advance(20)
        conn.send(request("PING"))
        conn.advance(20)
        self.assertFalse(conn.closed, "activity restarted the idle period")
        conn.advance(11)
        frames = conn.frames()
        self.assertIn("Idle timeout", frames[-1].reason)
        self.assertTrue(conn.closed)

    def test_idleTimeoutSparesBusyConnections(self):
        conn = self.connect(idleTimeout=30)
        conn.send(request("SLEEP", "100"))
        conn.advance(60)
        self.assertFalse(conn.closed)

    def test_noTimerLeftAfterFatalClose(self):
        conn = self.connect(closeGrace=5)
        conn.server.fatal("test")
        # The peer's TLS answers close_notify in memory; either way the
        # abort timer must be armed and then cleared.
        conn.advance(6)
        self.assertTrue(conn.closed)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class RobustnessTests(Base):
    def test_commandCrashIsLoggedNotSent(self):
        """An unexpected exception: ERR without a traceback; logged; connection kept."""
        clock = realTimeClock()
        registry = builtin.registry.merged(builtin.registry)

        def crash(ctx, request):
            raise ZeroDivisionError("secret internals")

        registry.add("CRASH", crash, level="any")
        self.factory = makeFactory(clock, registry=registry)
        conn = connectInMemory(self.factory)
        conn.send(request("CRASH") + request("PING", sequence="2"))
        frames = conn.frames()
        self.assertEqual([f.kind for f in frames], ["ERR", "OK"])
        self.assertIn("Internal error while running CRASH", frames[0].reason)
        self.assertNotIn(b"secret", conn.client.raw)
        self.assertNotIn(b"Traceback", conn.client.raw)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_tooManyInFlightStopsReadingUntilSomeFinish(self):
        conn = self.connect(maxInflight=4)
        conn.send(b"".join(request("SLEEP", "1", sequence=f"s{i}") for i in range(10)) + request("PING", sequence="p"))
        self.assertEqual(len(conn.server._inflight), 4)
        self.assertEqual(conn.frames(), [])
        for _ in range(3):
            conn.advance(1)
        sequences = sorted(f.sequence for f in conn.frames())
        self.assertEqual(sequences, sorted([f"s{i}" for i in range(10)] + ["p"]))
        self.assertFalse(conn.closed)
