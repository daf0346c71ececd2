"""
L{proto.dispatch}: from a request to its one reply, without a connection.
The dispatcher is mixed into a small host here that records what it
writes; the fake clock drives Timeout.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial import unittest

from proto import wire
from proto.commands.base import CommandError, CommandRegistry, EncodedResult, Result, FIRST_ARG
from proto.dispatch import NO_INFLIGHT, Dispatcher
from proto.replymap import failureReason, successReply
from proto.permissions import ANY, READ, WRITE, Grant
from proto.states import DRAINING, READY
from proto.stats import UNKNOWN_COMMAND, ServerStats


def req(command, *args, sequence="1", timeout=None, error=None):
    return wire.Request(command, tuple(args), {}, sequence, None, timeout, error)


def replies(written):
    parser = wire.ReplyParser()
    parser.feed(wire.encodeGreeting())  # a client reads the greeting first
    return [(f.kind, f.sequence, f.body, f.reason) for f in parser.feed(b"".join(written))]


class Host(Dispatcher):
    """The least a dispatcher needs from its connection."""

    log = Logger()
    _replies = None
    state = READY
    paused = False

    def __init__(self, registry, grant):
        self.stats = ServerStats()
        for name in registry.commands:  # as GNPServerFactory does
            self.stats.command(name)
        self.clock = Clock()
        self.peer = "peer"
        self.grant = grant
        self._free = registry.unchecked(grant.rank, grant.prefixes is None)
        self._commands = registry.commands
        self.written = []
        self.tracked = []
        self.answered = []

    def _write(self, data):
        self.written.append(data)

    def displayName(self):
        return "tester"

    def _requestTracked(self, inflight):
        self.tracked.append(inflight)

    def _requestAnswered(self, inflight):
        self.answered.append(inflight)


class DispatcherTests(unittest.TestCase):
    def setUp(self):
        self.registry = CommandRegistry()
        self.pending = {}
        r = self.registry
        r.add("ECHO", lambda ctx, request: " ".join(request.args).encode(), level=ANY)
        r.add("NONE", lambda ctx, request: None, level=ANY)
        r.add("HEADERS", lambda ctx, request: Result(b"x", (("Etag", "7"),)), level=ANY)
        r.add("LATER", self.later, level=ANY)
        r.add("REFUSE", self.refuse, level=ANY)
        r.add("BREAK", self.breaks, level=ANY)
        r.add("WRITE", lambda ctx, request: b"written", level=WRITE, ids=FIRST_ARG)
        self.host = Host(self.registry, Grant("tester", READ, ("mine/",)))

    def later(self, ctx, request):
        d = self.pending[request.sequence] = defer.Deferred()
        return d

    def refuse(self, ctx, request):
        raise CommandError("No: " + " ".join(request.args))

    def breaks(self, ctx, request):
        raise ZeroDivisionError("secret detail")

    def send(self, *requests):
        for r in requests:
            self.host._dispatch(r)
        return replies(self.host.written)

    def test_bytes(self):
        self.assertEqual(self.send(req("ECHO", "a", "b")), [("OK", "1", b"a b", "")])
        counts = self.host.stats.commands["ECHO"]
        self.assertEqual((counts.received, counts.ok, counts.err), (1, 1, 0))
        self.assertEqual(counts.latency.count, 1)
        self.assertEqual(self.host.requestCount, 1)

    def test_noneAndResult(self):
        self.send(req("NONE", sequence="a"), req("HEADERS", sequence="b"))
        self.assertEqual(
            b"".join(self.host.written),
            wire.encodeReply("a") + wire.encodeReply("b", b"x", (("Etag", "7"),)),
        )

    def test_chunkTiming(self):
        """Inside a chunk, replies sent at once are tallied for the host."""
        self.host._immediate = {}
        self.send(req("ECHO", sequence="1"), req("ECHO", sequence="2"), req("NOPE", sequence="3"))
        stats = self.host.stats
        self.assertEqual(
            self.host._immediate,
            {stats.commands["ECHO"]: 2, stats.commands[UNKNOWN_COMMAND]: 1},
        )
        self.assertEqual(stats.commands["ECHO"].latency.count, 0, "the host observes them")

    def test_chunkReplies(self):
        """
        Inside a chunk, a bytes result goes to the host's _write (which
        holds it for the chunk's one write) encoded as wire.encodeReply
        would, tallied for the chunk's latency instead of timed now.
        """
        self.host._immediate = {}
        self.send(req("ECHO", "a", "b", sequence="1"), req("ECHO", sequence="x.2"))
        self.assertEqual(self.host.written, [wire.encodeReply("1", b"a b"), wire.encodeReply("x.2")])
        self.assertEqual(self.host._immediate, {self.host.stats.commands["ECHO"]: 2})
        self.assertEqual(self.host.stats.commands["ECHO"].latency.count, 0)

    def test_unknown(self):
        self.assertEqual(
            self.send(req("NOPE", sequence="9")), [("ERR", "9", b"", "Unknown command: NOPE")]
        )
        self.assertEqual(self.host.stats.commands[UNKNOWN_COMMAND].err, 1)
        self.assertEqual(self.host.stats.errors, 1)

    def test_headError(self):
        self.assertEqual(
            self.send(req("ECHO", error="Bad Timeout")), [("ERR", "1", b"", "Bad Timeout")]
        )

    def test_refusing(self):
        self.host._refusing = "Server is shutting down"
        self.assertEqual(
            self.send(req("ECHO", "x")), [("ERR", "1", b"", "Server is shutting down")]
        )

    def test_forbidden(self):
        """Section 9: the level, then the ids, before the handler runs."""
        self.assertEqual(
            self.send(req("WRITE", "mine/1")),
            [("ERR", "1", b"", "Forbidden: tester may not WRITE mine/1")],
        )
        writer = Host(self.registry, Grant("w", WRITE, ("mine/",)))
        writer._dispatch(req("WRITE", "mine/1", sequence="a"))
        writer._dispatch(req("WRITE", "yours/1", sequence="b"))
        self.assertEqual(
            replies(writer.written),
            [("OK", "a", b"written", ""),
             ("ERR", "b", b"", "Forbidden: tester may not WRITE yours/1")],
        )

    def test_commandError(self):
        self.assertEqual(self.send(req("REFUSE", "x")), [("ERR", "1", b"", "No: x")])

    def test_failureIsLoggedNotSent(self):
        [(kind, sequence, body, reason)] = self.send(req("BREAK"))
        self.assertEqual((kind, sequence), ("ERR", "1"))
        self.assertEqual(
            reason, "Internal error while running BREAK (details are in the server log)"
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_deferredInCompletionOrder(self):
        self.send(req("LATER", sequence="a"), req("LATER", sequence="b"), req("ECHO", "now", sequence="c"))
        self.assertEqual(set(self.host._inflight), {"a", "b"})
        self.assertEqual(self.host.tracked, [1, 2])
        self.pending["b"].callback(b"B")
        self.pending["a"].callback(Result(b"A"))
        self.assertEqual(
            [(k, s, b) for k, s, b, _ in replies(self.host.written)],
            [("OK", "c", b"now"), ("OK", "b", b"B"), ("OK", "a", b"A")],
        )
        self.assertEqual(self.host.answered, [1, 0])
        self.assertEqual(dict(self.host._inflight), {})
        self.assertEqual(self.host.stats.commands["LATER"].ok, 2)

    def test_sequenceInFlight(self):
        self.assertEqual(
            self.send(req("LATER", sequence="s"), req("ECHO", sequence="s")),
            [("ERR", "s", b"", "Sequence already in flight: s")],
        )
        self.pending["s"].callback(None)
        self.assertEqual(replies(self.host.written)[-1], ("OK", "s", b"", ""))

    def test_deferredFailure(self):
        self.send(req("LATER", sequence="a"))
        self.pending["a"].errback(CommandError("Conflict"))
        self.assertEqual(replies(self.host.written), [("ERR", "a", b"", "Conflict")])
        self.assertEqual(self.host.stats.commands["LATER"].err, 1)

    def test_timeout(self):
        """Section 3: Timeout cancels the work and answers ERR Timeout."""
        self.send(req("LATER", sequence="t", timeout=1.5))
        d = self.pending["t"]
        self.host.clock.advance(1.5)
        self.assertTrue(d.called)
        self.assertEqual(
            replies(self.host.written),
            [("ERR", "t", b"", "Timeout: LATER did not finish within 1.5 s and was cancelled")],
        )
        self.assertEqual(self.host.answered, [0])

    def test_cancelRunningAnswersEach(self):
        """A drain's grace is over: each running command is answered."""
        self.send(req("LATER", sequence="a"), req("LATER", sequence="b"))
        self.host._cancelRunning()
        self.assertEqual(
            [(s, r) for _, s, _, r in replies(self.host.written)],
            [(s, "Cancelled: the connection is closing and LATER did not finish "
                 "within the grace period") for s in ("a", "b")],
        )

    def test_cancelInflightAnswersNothing(self):
        """Closing: the work is cancelled, and nobody is answered."""
        self.send(req("LATER", sequence="a"))
        d = self.pending["a"]
        self.host._cancelInflight()
        self.assertIs(self.host._inflight, NO_INFLIGHT)
        self.assertTrue(d.called)
        self.assertEqual(self.host.written, [])
        self.assertEqual(self.host.answered, [])

    def test_inflightTableIsShared(self):
        """No table per connection until a command runs in the background."""
        self.assertIs(Host(self.registry, Grant()). _inflight, NO_INFLIGHT)
        self.assertNotIn("_inflight", vars(Host(self.registry, Grant())))


class ChunkHost(Host):
    """A host inside a chunk of input: what it writes joins the chunk's replies."""

    def _write(self, data):
        self._replies.append(data)


class DispatchManyTests(unittest.TestCase):
    """
    L{Dispatcher._dispatchMany}, the batch loop: the same replies, counts
    and in-flight table as L{Dispatcher._dispatch} one request at a time,
    and it stops after the request that paused or ended the connection.
    """

    def setUp(self):
        self.cases = DispatcherTests("test_bytes")
        self.cases.setUp()
        self.registry = self.cases.registry
        self.registry.add("PAUSE", self.pause, level=ANY)
        self.registry.add("QUIT", self.quit, level=ANY)
        self.registry.add("ENCODED", self.encoded, level=ANY)

    def encoded(self, ctx, request):
        # A remembered reply, as GET's memo gives.
        headers = (("Etag", "3"), ("Etags", "1"))
        return EncodedResult(b"{}", headers, wire.encodeFrameTail(b"{}", headers))

    def pause(self, ctx, request):
        ctx.paused = True
        return b"paused"

    def quit(self, ctx, request):
        ctx.state = DRAINING
        return None

    def host(self, grant=None):
        host = ChunkHost(self.registry, grant or Grant("tester", READ, ("mine/",)))
        host._immediate, host._replies = {}, []
        return host

    def outcome(self, host):
        counts = {
            name: (c.received, c.ok, c.err, c.latency.count)
            for name, c in host.stats.commands.items()
        }
        immediate = {
            name: (host._immediate or {}).get(c) for name, c in host.stats.commands.items()
        }
        return (
            host._replies, host.written, counts, immediate, host.requestCount,
            sorted(host._inflight), host.tracked, host.stats.errors,
        )

    def batch(self):
        return [
            req("ECHO", "a", "b", sequence="1"), req("NONE", sequence="2"),
            req("HEADERS", sequence="3"), req("LATER", sequence="4"),
            req("ECHO", sequence="4"), req("NOPE", sequence="5"),
            req("ECHO", sequence="6", error="Bad Timeout"), req("REFUSE", "x", sequence="7"),
            req("BREAK", sequence="8"), req("WRITE", "mine/1", sequence="9"),
            req("LATER", sequence="10", timeout=2.0), req("ECHO", "é", sequence="11"),
            req("ENCODED", sequence="12"), req("ENCODED", sequence="13"), req("ECHO", sequence="14"),
        ]

    def test_sameAsOneByOne(self):
        for grant in (Grant("r", READ, ("mine/",)), Grant("w", WRITE, None)):
            one, many = self.host(grant), self.host(grant)
            for request in self.batch():
                one._dispatch(request)
            self.assertEqual(many._dispatchMany(self.batch()), len(self.batch()))
            self.assertEqual(self.outcome(many), self.outcome(one))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 4)

    def test_outsideAChunk(self):
        """Without the chunk's reply list, each request is _dispatch's."""
        one, many = Host(self.registry, Grant()), Host(self.registry, Grant())
        for request in self.batch():
            one._dispatch(request)
        many._dispatchMany(self.batch())
        self.assertEqual(self.outcome(many), self.outcome(one))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_refusing(self):
        host = self.host()
        host._refusing = "Server is shutting down"
        self.assertEqual(host._dispatchMany([req("ECHO", sequence="1"), req("ECHO", sequence="2")]), 2)
        self.assertEqual([r for _, _, _, r in replies(host._replies)], ["Server is shutting down"] * 2)

    def test_stopsAfterPauseOrEnd(self):
        for stopper in ("PAUSE", "QUIT"):
            host = self.host()
            batch = [req("ECHO", sequence="1"), req(stopper, sequence="2"), req("ECHO", sequence="3")]
            self.assertEqual(host._dispatchMany(batch), 2)
            self.assertEqual([s for _, s, _, _ in replies(host._replies)], ["1", "2"])
            self.assertEqual(host.requestCount, 2, "the request not run is not counted")
            self.assertEqual(host.stats.commands["ECHO"].received, 1)


class ReplyMappingTests(unittest.TestCase):
    def test_successReply(self):
        self.assertEqual(successReply(b"body", "s"), wire.encodeReply("s", b"body"))
        self.assertEqual(successReply(None, "s"), wire.encodeReply("s"))
        self.assertEqual(
            successReply(Result(b"b", (("A", "1"),)), "s"),
            wire.encodeReply("s", b"b", (("A", "1"),)),
        )

    def test_failureReason(self):
        r = req("GET", timeout=2.0)
        self.assertEqual(failureReason(Failure(CommandError("why")), r), "why")
        self.assertEqual(
            failureReason(Failure(defer.TimeoutError()), r),
            "Timeout: GET did not finish within 2 s and was cancelled",
        )
        self.assertTrue(failureReason(Failure(defer.CancelledError()), r).startswith("Cancelled: "))
        self.assertIsNone(failureReason(Failure(KeyError("x")), r))

    def test_oldImportPath(self):
        """The mapping moved to proto.replymap; proto.dispatch still names it."""
        from proto import dispatch, replymap

        self.assertIs(dispatch.successReply, replymap.successReply)
        self.assertIs(dispatch.failureReason, replymap.failureReason)
