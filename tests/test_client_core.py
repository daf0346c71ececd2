"""
The sans-I/O client core (L{proto.client.core.ClientCore}) on its own:
bytes in, events out, no transport. The two clients that wrap it are
tested end to end in test_client and test_client_blocking.

Waiters and push targets here are plain strings naming the request, so
every event says which request it went to.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from proto import wire
from proto.client.core import (
    CLOSING,
    ENDED,
    GREETING,
    OPEN,
    ClientCore,
)
from proto.client.errors import (
    ClientError,
    ConnectionClosed,
    ProtocolError,
    Refused,
    ServerError,
    ServerShuttingDown,
)
from proto.client.events import (
    Abort,
    Admitted,
    Failed,
    Pushed,
    Replied,
    Stray,
)


def waiter(sequence: str) -> str:
    return f"w{sequence}"


def opened() -> ClientCore[str, str]:
    core: ClientCore[str, str] = ClientCore()
    assert core.receive(wire.encodeGreeting()) == [Admitted()]
    return core


class Sent(NamedTuple):
    sequence: str
    data: bytes
    waiter: str


def send(core: ClientCore[str, str], command: str, *args: str, **kw) -> Sent:
    return Sent(*core.request(command, args, waiter, **kw))


class GreetingTests(unittest.TestCase):
    def test_okAdmits(self):
        core: ClientCore[str, str] = ClientCore()
        self.assertIs(core.state, GREETING)
        self.assertEqual(core.receive(b"O"), [])
        self.assertEqual(core.receive(b"K\r"), [])
        self.assertEqual(core.receive(b"\n"), [Admitted()])
        self.assertIs(core.state, OPEN)
        self.assertTrue(core.admitted)

    def test_noRequestBeforeGreeting(self):
        core: ClientCore[str, str] = ClientCore()
        error = self.assertRaises(ClientError, send, core, "PING")
        self.assertEqual(str(error), "not admitted yet: wait for the server's greeting")

    def test_refusal(self):
        """C{ERR reason} before admission: abort with L{Refused}, ignore the rest."""
        core: ClientCore[str, str] = ClientCore()
        events = core.receive(wire.encodeGreeting("Certificate not allowed") + b"OK\r\nSeq")
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], Abort)
        error = events[0].error
        self.assertIsInstance(error, Refused)
        self.assertEqual(error.reason, "Certificate not allowed")
        self.assertIs(core.state, CLOSING)
        self.assertEqual(core.receive(b"OK\r\n"), [])
        ended = core.connectionLost("Connection was aborted", clean=False)
        self.assertIs(ended.error, error)
        self.assertFalse(core.admitted)

    def test_garbageGreeting(self):
        core: ClientCore[str, str] = ClientCore()
        [event] = core.receive(b"HELLO\r\n")
        self.assertIsInstance(event, Abort)
        self.assertIsInstance(event.error, ProtocolError)
        self.assertIn("HELLO", str(event.error))

    def test_lossBeforeGreeting(self):
        for kw, message in (
            ({"clean": True}, "the server closed the connection before its greeting"),
            ({"tlsFailed": True}, "TLS handshake with the server failed: bad record"),
            ({}, "connection lost before the server's greeting: bad record"),
        ):
            core: ClientCore[str, str] = ClientCore()
            ended = core.connectionLost("bad record", **kw)
            self.assertIsInstance(ended.error, ConnectionClosed)
            self.assertEqual(str(ended.error), message)
            self.assertIs(core.state, ENDED)

    def test_verifierErrorWins(self):
        """An error the TLS verifier gave is the one the connection ends with."""
        core: ClientCore[str, str] = ClientCore()
        mine = ClientError("thumbprint mismatch")
        self.assertIs(core.connectionLost("x", tlsFailed=True, error=mine).error, mine)


class PendingTests(unittest.TestCase):
    def test_sequencesAndBytes(self):
        core = opened()
        first = send(core, "ping")
        second = send(core, "PUT", "a/1", body=b"{}", timeout=2)
        self.assertEqual((first.sequence, first.waiter), ("1", "w1"))
        self.assertEqual(first.data, b"ping\r\nSequence: 1\r\n\r\n")
        self.assertEqual(
            second.data, b"PUT a/1\r\nSequence: 2\r\nTimeout: 2\r\nSize: 2\r\n\r\n{}"
        )
        self.assertEqual(core.pendingCount, 2)

    def test_badRequestRecordsNothing(self):
        core = opened()
        self.assertRaises(ValueError, send, core, "GET", "two words")
        self.assertEqual(core.pendingCount, 0)
        self.assertEqual(core.receive(wire.encodeReply("1")), [Stray("1", "OK")])

    def test_outOfOrder(self):
        core = opened()
        for _ in range(3):
            send(core, "ECHO", "x")
        events = core.receive(
            wire.encodeReply("3", b"c") + wire.encodeError("Nope", "1") + wire.encodeReply("2")
        )
        self.assertEqual([type(e) for e in events], [Replied, Failed, Replied])
        self.assertEqual((events[0].waiter, events[0].reply.body), ("w3", b"c"))
        error = events[1].error
        self.assertEqual((events[1].waiter, error.reason, error.sequence, error.command),
                         ("w1", "Nope", "1", "ECHO"))
        self.assertEqual(events[2].waiter, "w2")
        self.assertEqual(core.pendingCount, 0)

    def test_forgotReplyIsStray(self):
        core = opened()
        sent = send(core, "SLEEP", "5")
        self.assertEqual(core.forget(sent.sequence), "SLEEP")
        self.assertIsNone(core.forget(sent.sequence))
        self.assertEqual(core.receive(wire.encodeReply("1")), [Stray("1", "OK")])


class PushTests(unittest.TestCase):
    def pushes(self, core, frames: bytes) -> list[tuple[str | None, bytes]]:
        events = core.receive(frames)
        return [(e.target, e.push.body) for e in events if isinstance(e, Pushed)]

    def test_routedToItsRequest(self):
        core = opened()
        send(core, "WATCH", "a/", onPush="watch a")
        send(core, "WATCH", "b/", onPush="watch b")
        send(core, "PING")
        frames = (wire.encodeReply("1") + wire.encodePush("2", b"b1") + wire.encodePush("1", b"a1")
                  + wire.encodePush("3", b"?") + wire.encodePush("9", b"??"))
        self.assertEqual(
            self.pushes(core, frames),
            [("watch b", b"b1"), ("watch a", b"a1"), (None, b"?"), (None, b"??")],
        )

    def test_unwatchEndsWatch(self):
        core = opened()
        send(core, "WATCH", "a/", onPush="watch")
        send(core, "UNWATCH", "1")
        self.assertEqual(self.pushes(core, wire.encodeReply("1") + wire.encodePush("1", b"x")),
                         [("watch", b"x")])
        # A push that crossed the UNWATCH still goes to the watch; its OK ends it.
        self.assertEqual(self.pushes(core, wire.encodePush("1", b"y") + wire.encodeReply("2")
                                     + wire.encodePush("1", b"z")),
                         [("watch", b"y"), (None, b"z")])

    def test_remindOnce(self):
        core = opened()
        send(core, "remind", "1", "tea", onPush="tea")
        self.assertEqual(
            self.pushes(core, wire.encodeReply("1") + wire.encodePush("1", b"tea")
                        + wire.encodePush("1", b"again")),
            [("tea", b"tea"), (None, b"again")],
        )

    def test_droppedIsTheLast(self):
        core = opened()
        send(core, "WATCH", "a/", onPush="watch")
        dropped = json.dumps({"Type": "Dropped", "Reason": "slow", "Etag": 4}).encode()
        change = json.dumps({"Id": "a/1", "Type": "Put", "Etag": 3}).encode()
        self.assertEqual(
            self.pushes(core, wire.encodeReply("1") + wire.encodePush("1", change)
                        + wire.encodePush("1", b'{"Id": "Dropped", "Type": "Put"}')
                        + wire.encodePush("1", dropped) + wire.encodePush("1", change)),
            [("watch", change), ("watch", b'{"Id": "Dropped", "Type": "Put"}'),
             ("watch", dropped), (None, change)],
        )

    def test_errEndsSubscription(self):
        core = opened()
        send(core, "WATCH", "secret/", onPush="watch")
        [failed, push] = core.receive(wire.encodeError("Forbidden", "1") + wire.encodePush("1"))
        self.assertIsInstance(failed, Failed)
        self.assertEqual(push, Pushed(push.push, None))

    def test_stopPushesAndForget(self):
        core = opened()
        send(core, "WATCH", "a/", onPush="a")
        send(core, "WATCH", "b/", onPush="b")
        core.stopPushes("1")
        core.forget("2")
        self.assertEqual(self.pushes(core, wire.encodePush("1") + wire.encodePush("2")),
                         [(None, b""), (None, b"")])


class EndTests(unittest.TestCase):
    def test_serverClosedWithPending(self):
        core = opened()
        send(core, "SLEEP", "5")
        send(core, "SLEEP", "5")
        send(core, "PING")
        core.receive(wire.encodeReply("3"))
        ended = core.connectionLost("Connection was closed cleanly.", clean=True)
        self.assertEqual(ended.waiters, ["w1", "w2"])
        self.assertEqual(str(ended.error), "the server closed the connection (2 request(s) pending)")
        self.assertIs(core.error, ended.error)
        error = self.assertRaises(ConnectionClosed, send, core, "PING")
        self.assertEqual(str(error), "the connection is closed")
        self.assertEqual(core.receive(wire.encodeReply("1")), [])
        # Told twice (e.g. the greeting's loop, then the thread): same end.
        self.assertEqual(core.connectionLost("again").waiters, [])
        self.assertIs(core.connectionLost("again").error, ended.error)

    def test_lostUncleanly(self):
        core = opened()
        ended = core.connectionLost("Connection reset by peer")
        self.assertEqual(str(ended.error), "connection lost: Connection reset by peer")

    def test_fatalErrorNamed(self):
        """A connection-level ERR (no Sequence) words the loss."""
        core = opened()
        send(core, "PING")
        self.assertEqual(core.receive(wire.encodeError("Malformed Sequence header", None)), [])
        self.assertEqual(core.fatalReason, "Malformed Sequence header")
        ended = core.connectionLost(clean=True)
        self.assertEqual(
            str(ended.error),
            "the server closed the connection: Malformed Sequence header (1 request(s) pending)",
        )
        self.assertNotIsInstance(ended.error, ServerShuttingDown)

    def test_shuttingDown(self):
        core = opened()
        send(core, "SLEEP", "3")
        core.receive(wire.encodeError("Server is shutting down", None))
        ended = core.connectionLost(clean=True)
        self.assertIsInstance(ended.error, ServerShuttingDown)
        self.assertEqual(
            str(ended.error), "the server is shutting down: it closed the connection (1 request(s) pending)"
        )
        error = self.assertRaises(ServerShuttingDown, send, core, "PING")
        self.assertEqual(str(error), "the server is shutting down: the connection is closed")

    def test_closedByClient(self):
        core = opened()
        send(core, "SLEEP", "5")
        self.assertTrue(core.close())
        self.assertFalse(core.close())
        self.assertFalse(core.abort(ProtocolError("late")))
        self.assertEqual(core.receive(wire.encodeReply("1")), [], "input ignored once closing")
        error = self.assertRaises(ConnectionClosed, send, core, "PING")
        self.assertEqual(str(error), "connection closed by the client")
        ended = core.connectionLost("Connection was closed cleanly.", clean=True)
        self.assertIs(ended.error, error)
        self.assertEqual(ended.waiters, ["w1"])

    def test_notGNP(self):
        """Bytes that are not GNP/1: abort; what came after in the batch is dropped."""
        core = opened()
        send(core, "PING")
        send(core, "PING")
        [replied] = core.receive(wire.encodeReply("1"))
        self.assertIsInstance(replied, Replied)
        [abort] = core.receive(b"HELLO\r\n\r\n" + wire.encodeReply("2"))
        self.assertIsInstance(abort, Abort)
        self.assertIsInstance(abort.error, ProtocolError)
        self.assertEqual(core.receive(wire.encodeReply("2")), [])
        ended = core.connectionLost("Connection was aborted")
        self.assertIs(ended.error, abort.error)
        self.assertEqual(ended.waiters, ["w2"])


# -- properties ----------------------------------------------------------------------

_reply = st.tuples(
    st.sampled_from(["OK", "ERR", "none"]),       # how it is answered (or not)
    st.binary(max_size=40),                        # OK body
    st.integers(min_value=0, max_value=3),         # pushes before the reply
)


class PropertyTests(unittest.TestCase):
    @given(
        requests=st.lists(_reply, min_size=1, max_size=25),
        order=st.randoms(use_true_random=False),
        cuts=st.lists(st.integers(min_value=1, max_value=60), max_size=300),
    )
    def test_repliesInAnyOrderAndChunks(self, requests, order, cuts):
        """
        Greeting and replies in any order, with pushes between, cut into
        any chunks: each request gets exactly its own reply, each push
        reaches its own subscription in order, and the end fails exactly
        the requests that were not answered, in the order they were sent.
        """
        core: ClientCore[str, str] = ClientCore()
        greeting = wire.encodeGreeting()
        events = [e for b in range(len(greeting)) for e in core.receive(greeting[b:b + 1])]
        self.assertEqual(events, [Admitted()])
        for n in range(len(requests)):
            sequence, _, _ = core.request("WATCH", [f"p{n}/"], waiter, onPush=f"t{n + 1}")
            self.assertEqual(sequence, str(n + 1))
        frames = []
        for n, (how, body, pushes) in enumerate(requests):
            sequence = str(n + 1)
            items = [wire.encodePush(sequence, b"%d:%d" % (n, k)) for k in range(pushes)]
            if how == "OK":
                items.insert(0, wire.encodeReply(sequence, body, [("Etag", str(n))]))
            elif how == "ERR":
                items = [wire.encodeError(f"no {n}", sequence)]
            frames.append(items)
        # Interleave the requests' frames at random, keeping each one's
        # own order (its reply before its pushes).
        stream = []
        while any(frames):
            items = order.choice([f for f in frames if f])
            stream.append(items.pop(0))
        data = b"".join(stream)
        chunks, at = [], 0
        for cut in cuts:
            if at >= len(data):
                break
            chunks.append(data[at:at + cut])
            at += cut
        chunks.append(data[at:])
        events = [event for chunk in chunks for event in core.receive(chunk)]

        replied = {e.waiter: e.reply for e in events if isinstance(e, Replied)}
        failed = {e.waiter: e.error for e in events if isinstance(e, Failed)}
        pushed = [(e.target, e.push.body) for e in events if isinstance(e, Pushed)]
        self.assertFalse([e for e in events if isinstance(e, (Stray, Abort))])
        for n, (how, body, pushes) in enumerate(requests):
            sequence = str(n + 1)
            mine = [b for target, b in pushed if target == f"t{sequence}"]
            if how == "OK":
                reply = replied[f"w{sequence}"]
                self.assertEqual((reply.body, reply.sequence, reply.headers),
                                 (body, sequence, {"etag": str(n)}))
                self.assertEqual(mine, [b"%d:%d" % (n, k) for k in range(pushes)])
            elif how == "ERR":
                self.assertEqual(failed[f"w{sequence}"].reason, f"no {n}")
                self.assertEqual(failed[f"w{sequence}"].command, "WATCH")
            else:
                self.assertNotIn(f"w{sequence}", replied)
                self.assertEqual(mine, [b"%d:%d" % (n, k) for k in range(pushes)])
        self.assertEqual(len(pushed), sum(p for how, _, p in requests if how != "ERR"))
        unanswered = [f"w{n + 1}" for n, r in enumerate(requests) if r[0] == "none"]
        ended = core.connectionLost(clean=True)
        self.assertEqual(ended.waiters, unanswered)
        if unanswered:
            self.assertIn(f"({len(unanswered)} request(s) pending)", str(ended.error))
