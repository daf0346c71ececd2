"""
Tests for L{proto.commands.documents}: GET, PUT, DELETE, WATCH, UNWATCH
and REMIND over a real store (SQLite file, threads) and a real hub, with a
small but real command context; and end to end through the real server
protocol (L{tests.support}).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import CancelledError, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from proto import wire
from proto.commands.base import CommandError, ICommandContext, Result
from proto.commands.documents import _getResult, encodeGetReply
from proto.replymap import successReply
from proto.commands.include import parseInclude, referencedIds
from proto.server import defaultRegistry
from proto.hub import ChangeHub
from proto.permissions import Grant
from proto.subscriptions import Subscriptions
from proto.store.base import PUT, Document, Snapshot
from proto.store.sqlite import SQLiteStore
from tests.test_store import GatedStore, waitForThread


registry = defaultRegistry()


class Reply(NamedTuple):
    """A command's outcome: C{("OK", body)} or C{("ERR", reason)}."""

    kind: str
    payload: Any

    def json(self) -> Any:
        assert self.kind == "OK", self
        return json.loads(self.payload)


@implementer(ICommandContext)
class RecordingContext:
    """
    A real command context without a network: it records pushes and
    keeps subscriptions in the server protocol's own table
    (L{proto.subscriptions.Subscriptions}: a new one under a Sequence
    cancels the old; none once disconnected).
    """

    def __init__(self, store: Any, hub: ChangeHub, clock: Clock) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.peer = "test"
        self.pushes: list[tuple[str, bytes]] = []
        self.isCongested = False
        self.unsent = 0  # what unsentBytes() says
        self.countUnsent = False  # add what is pushed to it (a client that reads nothing)
        self.connected = True
        self.quitting = False
        self.subscriptions = Subscriptions(self)
        self.identity = None
        self.grant = Grant()
        self.access = None

    def push(self, sequence: str, body: bytes, headers=()) -> None:
        if self.connected:
            self.pushes.append((sequence, body))

    def pushFrames(self, data: bytes, count: int | None = None) -> None:
        if self.connected:
            frames = wire.ReplyParser(expectGreeting=False).feed(data)
            assert all(frame.kind == "PUSH" for frame in frames), frames
            assert count is None or count == len(frames), (count, frames)
            self.pushes += [(frame.sequence, frame.body) for frame in frames]
            self.unsent += len(data) if self.countUnsent else 0

    def unsentBytes(self) -> int:
        return self.unsent

    def pushed(self) -> list[tuple[str, Any]]:
        """The pushes so far, JSON bodies parsed; and forget them."""
        pushes, self.pushes = self.pushes, []
        return [(sequence, json.loads(body)) for sequence, body in pushes]

    def congested(self) -> bool:
        return self.isCongested

    def subscribe(self, sequence: str, cancel: Callable[[], None], regrant=None) -> None:
        self.subscriptions.add(sequence, cancel, regrant)

    def setGrant(self, grant) -> None:
        """As the protocol does when the allow-list changes."""
        self.grant = grant
        self.subscriptions.regrant(grant)

    def unsubscribe(self, sequence: str) -> bool:
        return self.subscriptions.remove(sequence)

    def quitAfterReplies(self) -> None:
        self.quitting = True

    def disconnect(self) -> None:
        self.connected = False
        self.subscriptions.close()

    def invoke(
        self, command: str, *args: str, sequence: str = "1", headers=(), body: bytes | None = None
    ) -> defer.Deferred:
        """
        Run a command as the server would: parse the request from its
        bytes, look it up in the registry, call it. Returns its Deferred.
        """
        items = headers.items() if isinstance(headers, dict) else headers
        lines = [" ".join([command, *args]), f"Sequence: {sequence}"]
        lines += [f"{name}: {value}" for name, value in items]
        if body is not None:
            lines.append(f"Size: {len(body)}")
        # Built by hand, not with wire.encodeRequest: the tests send what
        # a well-behaved client would refuse to (control characters).
        request = wire.parseHead("\r\n".join(lines).encode("utf-8"))
        request.body = body or b""
        return maybeDeferred(registry.get(request.command), self, request)

    def call(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        """L{invoke}, the outcome as a L{Reply}."""

        def ok(result: Any) -> Reply:
            return Reply("OK", result.body if isinstance(result, Result) else result)

        def error(failure: Any) -> Reply:
            failure.trap(CommandError)
            return Reply("ERR", failure.value.reason)

        return self.invoke(*args, **kwargs).addCallbacks(ok, error)


class CommandTestCase(TestCase):
    """A store in a temporary directory, a hub, a clock, a context."""

    storeClass = SQLiteStore

    def setUp(self) -> defer.Deferred:
        self.hub = ChangeHub()
        self.clock = Clock()
        path = os.path.join(self.mktemp(), "docs.sqlite3")
        self.store = self.storeClass(path, hub=self.hub)
        self.addCleanup(self.store.close)
        self.ctx = self.connect()
        return self.store.start()

    def connect(self) -> RecordingContext:
        ctx = RecordingContext(self.store, self.hub, self.clock)
        self.addCleanup(ctx.disconnect)
        return ctx

    @inlineCallbacks
    def putAll(self, documents: dict[str, Any]):
        for id, document in documents.items():
            reply = yield self.ctx.call("PUT", id, body=json.dumps(document).encode())
            self.assertEqual(reply.kind, "OK", reply)

    @inlineCallbacks
    def snapshot(self, *ids: str):
        """The stored documents C{ids} (etag and body), to prove nothing changed."""
        found = yield self.store.get(ids)
        return [doc and (doc.id, doc.etag, doc.body) for doc in found]

    @inlineCallbacks
    def assertRefused(self, expected: str, *args: Any, **kwargs: Any):
        """The request gets ERR with C{expected} in its reason."""
        reply = yield self.ctx.call(*args, **kwargs)
        self.assertEqual(reply.kind, "ERR", reply)
        self.assertIn(expected, reply.payload)
        self.assertNotIn("Traceback", reply.payload)


class ContextTests(SynchronousTestCase):
    def test_interface(self) -> None:
        ctx = RecordingContext(None, ChangeHub(), Clock())
        self.assertTrue(verifyObject(ICommandContext, ctx))


_jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
_jsonObjects = st.dictionaries(st.text(), _jsonValues, max_size=5)


class EncodeGetReplyTests(SynchronousTestCase):
    """The GET reply splices stored texts, whatever their spacing, into valid JSON."""

    @given(
        st.lists(st.none() | _jsonObjects, max_size=5),
        st.dictionaries(st.text(min_size=1), _jsonObjects, max_size=3),
        st.sampled_from([None, 2]),
        st.booleans(),
    )
    def test_valid(self, results, includes, indent, asciiOnly) -> None:
        def stored(id: str, value: Any) -> Document:
            return Document(id, 1, json.dumps(value, indent=indent, ensure_ascii=asciiOnly).encode())

        reply = encodeGetReply(
            [None if value is None else stored("x", value) for value in results],
            [stored(id, value) for id, value in includes.items()],
        )
        self.assertEqual(json.loads(reply), {"Results": results, "Includes": includes})


class GetResultTests(SynchronousTestCase):
    """
    The GET reply's shortcut for one id (the common GET) gives what the
    general encoding gives: the same body, Etag and Etags.
    """

    @given(
        st.lists(st.none() | _jsonObjects, min_size=1, max_size=3),
        st.dictionaries(st.text(min_size=1), _jsonObjects, max_size=3),
        st.integers(min_value=0, max_value=2**40),
    )
    def test_sameAsGeneral(self, results, includes, etag) -> None:
        docs = [
            None if value is None else Document(f"r/{n}", n + 1, json.dumps(value).encode())
            for n, value in enumerate(results)
        ]
        included = [Document(id, 7, json.dumps(value).encode()) for id, value in includes.items()]
        if all(doc is None for doc in docs):
            included = []  # Includes come from results that exist.
        result = _getResult(Snapshot(docs, included, etag))
        self.assertEqual(result.body, encodeGetReply(docs, included))
        self.assertEqual(
            result.headers,
            (("Etag", str(etag)), ("Etags", ",".join(str(0 if d is None else d.etag) for d in docs))),
        )
        # The reply from its encoded tail is the one its body and headers give.
        self.assertEqual(successReply(result, "5.1"), wire.encodeReply("5.1", result.body, result.headers))


class PutGetDeleteTests(CommandTestCase):
    @inlineCallbacks
    def test_putReply(self):
        reply = yield self.ctx.call("PUT", "employees/1-A", body=b'{"Name": "Nancy"}')
        self.assertEqual(reply.json(), {"Id": "employees/1-A", "Etag": 1})

    @inlineCallbacks
    def test_getSplicesStoredText(self):
        """GET puts the stored JSON text into its reply as it was sent."""
        body = '{ "Name" :  "Zoë",\n  "n": 1.50 }'.encode("utf-8")
        yield self.ctx.call("PUT", "a", body=body)
        reply = yield self.ctx.call("GET", "a", "missing", "A")
        self.assertEqual(reply.kind, "OK")
        self.assertIn(body, reply.payload)
        self.assertEqual(
            reply.json(),
            {"Results": [{"Name": "Zoë", "n": 1.5}, None, {"Name": "Zoë", "n": 1.5}], "Includes": {}},
        )

    @inlineCallbacks
    def test_caseOfIdKept(self):
        """A PUT with other case updates the document under its first id."""
        yield self.ctx.call("PUT", "Users/Nancy", body=b'{"v": 1}')
        reply = yield self.ctx.call("PUT", "USERS/NANCY", body=b'{"v": 2}')
        self.assertEqual(reply.json(), {"Id": "Users/Nancy", "Etag": 2})
        self.assertEqual((yield self.snapshot("users/nancy")), [("Users/Nancy", 2, b'{"v": 2}')])

    @inlineCallbacks
    def test_ifMatch(self):
        yield self.ctx.call("PUT", "a", body=b"{}", headers={"If-Match": "0"})
        reply = yield self.ctx.call("PUT", "a", body=b'{"v": 2}', headers={"If-Match": "1"})
        self.assertEqual(reply.json(), {"Id": "a", "Etag": 2})

    @inlineCallbacks
    def test_ifMatchConflict(self):
        yield self.ctx.call("PUT", "a", body=b"{}")
        before = yield self.snapshot("a")
        yield self.assertRefused(
            "Conflict: a has etag 1; If-Match was 5",
            "PUT", "a", body=b'{"v": 2}', headers={"If-Match": "5"},
        )
        yield self.assertRefused(
            "Conflict: a has etag 1; If-Match 0", "PUT", "a", body=b"{}", headers={"If-Match": "0"}
        )
        self.assertEqual((yield self.snapshot("a")), before)

    @inlineCallbacks
    def test_delete(self):
        yield self.putAll({"a": {}, "b": {}})
        reply = yield self.ctx.call("DELETE", "A", "b", "c", "a")
        self.assertEqual(reply.json(), {"Deleted": 2})
        self.assertEqual((yield self.snapshot("a", "b")), [None, None])



class BadInputTests(CommandTestCase):
    """Each bad request gets a clear ERR and changes nothing."""

    def setUp(self):
        d = super().setUp()
        return d.addCallback(lambda _: self.putAll({"a": {"v": 1}, "b": {"v": 2}}))

    @inlineCallbacks
    def assertUnchanged(self, expected: str, *args: Any, **kwargs: Any):
        before = yield self.snapshot("a", "b", "c")
        yield self.assertRefused(expected, *args, **kwargs)
        self.assertEqual((yield self.snapshot("a", "b", "c")), before)

    @inlineCallbacks
    def test_missingIds(self):
        yield self.assertUnchanged("usage: GET id [id ...]", "GET")
        yield self.assertUnchanged("usage: DELETE id [id ...]", "DELETE")
        yield self.assertUnchanged("usage: PUT id", "PUT", body=b"{}")
        yield self.assertUnchanged("usage: PUT id", "PUT", "c", "d", body=b"{}")

    @inlineCallbacks
    def test_badIds(self):
        long = "x" * 513
        yield self.assertUnchanged("limit is 512", "GET", "a", long)
        yield self.assertUnchanged("no spaces or control", "GET", "a\tb")
        yield self.assertUnchanged("limit is 512", "PUT", long, body=b"{}")
        yield self.assertUnchanged("no spaces or control", "PUT", "c\x01", body=b"{}")
        yield self.assertUnchanged("no spaces or control", "DELETE", "a", "b", "c\x7f")

    @inlineCallbacks
    def test_badInclude(self):
        for include, expected in [
            ("x,,y", "empty field name"),
            ("x,", "empty field name"),
            ("", "empty field name"),
            ("x..y", "empty step"),
            (".x", "empty step"),
            ("x.", "empty step"),
        ]:
            yield self.assertUnchanged(expected, "GET", "a", headers={"Include": include})

    @inlineCallbacks
    def test_badBodies(self):
        for body, expected in [
            (None, "PUT needs a body"),
            (b"", "not valid JSON"),
            (b'{"a": 1', "not valid JSON"),
            (b'{"a": NaN}', "not valid JSON"),
            (b'{"a": "\xff"}', "not valid UTF-8"),
            (b"\xef\xbb\xbf{}", "not valid JSON"),
            (b"[1, 2]", "not an array"),
            (b'"text"', "not a string"),
            (b"3", "not a number"),
            (b"null", "not null"),
            (b"true", "not true"),
            (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ]:
            yield self.assertUnchanged(expected, "PUT", "a", body=body)

    @inlineCallbacks
    def test_badIfMatch(self):
        for value in ["x", "-1", "1.5", "99999999999999999999"]:
            yield self.assertUnchanged(
                "Malformed If-Match", "PUT", "a", body=b"{}", headers={"If-Match": value}
            )


class IncludeTests(CommandTestCase):
    """GET with Include."""

    def setUp(self):
        d = super().setUp()
        return d.addCallback(
            lambda _: self.putAll(
                {
                    "orders/1": {
                        "Company": "companies/1",
                        "Employee": "EMPLOYEES/1",
                        "Lines": [
                            {"Product": "products/1"},
                            {"Product": "products/2"},
                            {"Product": "products/1"},
                            {"Product": "products/missing"},
                            "not an object",
                        ],
                        "Tags": ["companies/1", "employees/2", 7, "not an id"],
                        "Self": "orders/1",
                    },
                    "companies/1": {"Name": "ACME", "Address": {"Country": "countries/fr"}},
                    "countries/fr": {"Name": "France"},
                    "employees/1": {"ReportsTo": "employees/2"},
                    "employees/2": {"Name": "Boss"},
                    "products/1": {"Name": "Widget"},
                    "products/2": {"Name": "Gadget"},
                }
            )
        )

    @inlineCallbacks
    def get(self, include: str, *ids: str):
        reply = yield self.ctx.call("GET", *ids, headers={"Include": include})
        return reply.json()

    @inlineCallbacks
    def test_single(self):
        reply = yield self.get("Company", "orders/1")
        self.assertEqual(reply["Includes"], {"companies/1": {"Name": "ACME", "Address": {"Country": "countries/fr"}}})

    @inlineCallbacks
    def test_nestedPath(self):
        reply = yield self.get("Address.Country", "companies/1")
        self.assertEqual(reply["Includes"], {"countries/fr": {"Name": "France"}})

    @inlineCallbacks
    def test_listOfObjects(self):
        """A path through a list of objects; the same product is included once."""
        reply = yield self.get("Lines.Product", "orders/1")
        self.assertEqual(
            reply["Includes"],
            {"products/1": {"Name": "Widget"}, "products/2": {"Name": "Gadget"}},
        )

    @inlineCallbacks
    def test_listOfIds(self):
        """Strings of a list are ids; other values and non-ids are ignored."""
        reply = yield self.get("Tags", "orders/1")
        self.assertEqual(sorted(reply["Includes"]), ["companies/1", "employees/2"])

    @inlineCallbacks
    def test_storedIdAsKey(self):
        """A reference in other case is included under the stored id."""
        reply = yield self.get("Employee", "orders/1")
        self.assertEqual(reply["Includes"], {"employees/1": {"ReportsTo": "employees/2"}})

    @inlineCallbacks
    def test_oneLevel(self):
        """Include follows the results only, not the included documents."""
        reply = yield self.get("Employee,ReportsTo", "orders/1")
        self.assertEqual(list(reply["Includes"]), ["employees/1"])

    @inlineCallbacks
    def test_missingTarget(self):
        reply = yield self.get("Lines.Product,Nothing,Company.Nothing", "orders/1", "orders/404")
        self.assertEqual(reply["Results"][1], None)
        self.assertNotIn("products/missing", reply["Includes"])
        self.assertEqual(len(reply["Includes"]), 2)

    @inlineCallbacks
    def test_selfReference(self):
        """A result that references itself is also in Includes."""
        reply = yield self.get("Self", "orders/1")
        self.assertEqual(list(reply["Includes"]), ["orders/1"])
        self.assertEqual(reply["Includes"]["orders/1"], reply["Results"][0])

    @inlineCallbacks
    def test_sameDocumentTwice(self):
        """
        A document referenced by several fields, by several results, and
        also a result itself is in Includes exactly once.
        """
        payload = yield self.ctx.call(
            "GET", "orders/1", "companies/1", "orders/1",
            headers=[("Include", "Company, Tags"), ("Include", "Company")],
        )
        self.assertEqual(payload.payload.count(b'"companies/1": {'), 1)
        self.assertEqual(sorted(payload.json()["Includes"]), ["companies/1", "employees/2"])

    def test_parseInclude(self) -> None:
        self.assertEqual(parseInclude(None), [])
        self.assertEqual(parseInclude(" A.B , C "), [("A", "B"), ("C",)])

    def test_referencedIds(self) -> None:
        document = {"A": [{"B": ["x", 1, {"C": "no"}]}, {"B": "y"}, [{"B": "nested list: no"}]]}
        self.assertEqual(list(referencedIds(document, ("A", "B"))), ["x", "y"])
        self.assertEqual(list(referencedIds(document, ("A",))), [])
        self.assertEqual(list(referencedIds(document, ("Z",))), [])


class WatchTests(CommandTestCase):
    """WATCH and UNWATCH."""

    @inlineCallbacks
    def test_pushes(self):
        """Changes under the prefix, in any case and from any connection, are pushed."""
        other = self.connect()
        reply = yield self.ctx.call("WATCH", "users/", sequence="w")
        self.assertEqual(reply, Reply("OK", b""))
        yield other.call("PUT", "Users/1", body=b"{}")
        yield other.call("PUT", "orders/1", body=b"{}")
        yield self.ctx.call("PUT", "USERS/2", body=b"{}")
        yield other.call("DELETE", "users/1", "orders/1")
        self.assertEqual(
            self.ctx.pushed(),
            [
                ("w", {"Id": "Users/1", "Type": "Put", "Etag": 1}),
                ("w", {"Id": "USERS/2", "Type": "Put", "Etag": 3}),
                ("w", {"Id": "Users/1", "Type": "Delete", "Etag": 4}),
            ],
        )
        self.assertEqual(other.pushes, [])

    @inlineCallbacks
    def test_noPushForFailedWrite(self):
        yield self.ctx.call("WATCH", "a", sequence="w")
        yield self.ctx.call("PUT", "a", body=b"{}", headers={"If-Match": "3"})
        yield self.ctx.call("DELETE", "a")
        self.assertEqual(self.ctx.pushes, [])

    @inlineCallbacks
    def test_unwatch(self):
        yield self.ctx.call("WATCH", "a", sequence="w")
        reply = yield self.ctx.call("UNWATCH", "w", sequence="u")
        self.assertEqual(reply, Reply("OK", b""))
        yield self.ctx.call("PUT", "a", body=b"{}")
        self.assertEqual(self.ctx.pushes, [])
        self.assertEqual(self.hub.subscriberCount(), 0)
        yield self.assertRefused("No WATCH with Sequence w", "UNWATCH", "w")

    @inlineCallbacks
    def test_unwatchOnlyOwnWatches(self):
        """UNWATCH ends neither another connection's WATCH nor a REMIND."""
        other = self.connect()
        yield other.call("WATCH", "a", sequence="w")
        yield self.ctx.call("REMIND", "5", "hello", sequence="r")
        yield self.assertRefused("No WATCH with Sequence w", "UNWATCH", "w")
        yield self.assertRefused("No WATCH with Sequence r", "UNWATCH", "r")
        yield self.assertRefused("usage: UNWATCH", "UNWATCH")
        self.clock.advance(5)
        self.assertEqual(self.ctx.pushes, [("r", b"hello")])
        self.assertEqual(self.hub.subscriberCount(), 1)

    @inlineCallbacks
    def test_disconnect(self):
        yield self.ctx.call("WATCH", "a", sequence="w")
        self.ctx.disconnect()
        self.assertEqual(self.hub.subscriberCount(), 0)

    @inlineCallbacks
    def test_sequenceReused(self):
        """A new subscription under the same Sequence replaces the watch."""
        yield self.ctx.call("WATCH", "a", sequence="w")
        yield self.ctx.call("WATCH", "b", sequence="w")
        self.assertEqual(self.hub.subscriberCount(), 1)
        yield self.ctx.call("PUT", "a", body=b"{}")
        yield self.ctx.call("PUT", "b", body=b"{}")
        self.assertEqual([push["Id"] for _, push in self.ctx.pushed()], ["b"])
        yield self.ctx.call("UNWATCH", "w")
        self.assertEqual(self.hub.subscriberCount(), 0)

    @inlineCallbacks
    def test_badPrefix(self):
        yield self.assertRefused("Invalid prefix", "WATCH", "a\x01")
        yield self.assertRefused("usage: WATCH prefix", "WATCH")
        self.assertEqual(self.hub.subscriberCount(), 0)


class RemindTests(CommandTestCase):
    """REMIND, with a fake clock."""

    @inlineCallbacks
    def test_remind(self):
        reply = yield self.ctx.call("REMIND", "1.5", "tea", "time,", "Zoë", sequence="r")
        self.assertEqual(reply, Reply("OK", b""))
        self.clock.advance(1.4)
        self.assertEqual(self.ctx.pushes, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ctx.pushes, [("r", "tea time, Zoë".encode())])
        self.assertEqual(len(self.ctx.subscriptions), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_zero(self):
        yield self.ctx.call("REMIND", "0", "now", sequence="r")
        self.clock.advance(0)
        self.assertEqual(self.ctx.pushes, [("r", b"now")])

    @inlineCallbacks
    def test_cancelledByDisconnect(self):
        yield self.ctx.call("REMIND", "10", "never", sequence="r")
        self.ctx.disconnect()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.ctx.pushes, [])

    @inlineCallbacks
    def test_badArguments(self):
        yield self.assertRefused("Invalid seconds: '-1'", "REMIND", "-1", "text")
        yield self.assertRefused("Invalid seconds: 'soon'", "REMIND", "soon", "text")
        yield self.assertRefused("usage: REMIND seconds text", "REMIND", "5")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.ctx.subscriptions), 0)


class TimeoutTests(CommandTestCase):
    """
    Timed-out or cancelled commands whose store work had not started: it
    never runs. The store is slowed down: its workers wait on gates.
    """

    storeClass = GatedStore

    @inlineCallbacks
    def test_queuedPutTimesOut(self):
        yield self.ctx.call("WATCH", "doc/", sequence="w")
        first = self.ctx.call("PUT", "doc/first", body=b"{}", sequence="1")
        yield waitForThread(self.store.writeGate.started)
        queued = self.ctx.invoke("PUT", "doc/queued", body=b"{}", sequence="2")
        queued.addTimeout(1, self.clock)  # What the protocol does for "Timeout: 1".
        self.clock.advance(1)
        yield self.assertFailure(queued, defer.TimeoutError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.store.writeGate.opened.set()
        self.assertEqual((yield first).json()["Etag"], 1)
        yield self.store.close()  # Drains every queued write.
        self.assertEqual([push["Id"] for _, push in self.ctx.pushed()], ["doc/first"])
        reopened = SQLiteStore(self.store.path)
        yield reopened.start()
        try:
            found = yield reopened.get(["doc/first", "doc/queued"])
        finally:
            yield reopened.close()
        self.assertEqual([doc and doc.id for doc in found], ["doc/first", None])


    @inlineCallbacks
    def test_cancelledGet(self):
        """Cancelling a GET (its Timeout) drops the store read it waits for."""
        reads = self.store.readGate
        reads.opened.clear()
        running = self.ctx.call("GET", "a", sequence="1")
        yield waitForThread(reads.started)
        queued = self.ctx.invoke("GET", "b", sequence="2", headers={"Include": "x"})
        queued.cancel()
        yield self.assertFailure(queued, CancelledError)
        reads.opened.set()
        self.assertEqual((yield running).json()["Results"], [None])
        yield self.ctx.call("GET", "c", sequence="3")
        self.assertEqual(reads.batches, [1, 1])


class EndToEndTests(TestCase):
    """The commands through the real server protocol over TLS in memory."""

    def setUp(self) -> defer.Deferred:
        from tests import support

        self.support = support
        return support.startStoreServer(self)

    def connect(self):
        return self.support.connectInMemory(factory=self.factory)

    @inlineCallbacks
    def exchange(self, connection, data: bytes, count: int = 1):
        """Send C{data}; wait (for the store's threads) until C{count} frames came."""
        from twisted.internet import reactor

        connection.send(data)
        frames = connection.frames()
        for _ in range(2000):
            if len(frames) >= count:
                break
            yield deferLater(reactor, 0.005)
            connection.flush()
            frames += connection.frames()
        return frames

    @inlineCallbacks
    def test_watchSeesPutFromAnotherConnection(self):
        watcher, writer = self.connect(), self.connect()
        request = self.support.request
        [ok] = yield self.exchange(watcher, request("WATCH", "employees/", sequence="w"))
        self.assertEqual((ok.kind, ok.sequence), ("OK", "w"))
        [reply] = yield self.exchange(
            writer, request("PUT", "Employees/1-A", sequence="p", body=b'{"Name": "Nancy"}')
        )
        self.assertEqual((reply.kind, json.loads(reply.body)), ("OK", {"Id": "Employees/1-A", "Etag": 1}))
        watcher.flush()
        [push] = watcher.frames()
        self.assertEqual((push.kind, push.sequence), ("PUSH", "w"))
        self.assertEqual(json.loads(push.body), {"Id": "Employees/1-A", "Type": "Put", "Etag": 1})

    @inlineCallbacks
    def test_getWithInclude(self):
        connection = self.connect()
        request = self.support.request
        yield self.exchange(connection, request("PUT", "e/1", sequence="1", body=b'{"Boss": "E/2"}'))
        yield self.exchange(connection, request("PUT", "e/2", sequence="2", body=b'{"Name": "B"}'))
        [reply] = yield self.exchange(
            connection, request("GET", "e/1", "e/3", sequence="3", headers={"Include": "Boss"})
        )
        self.assertEqual(
            json.loads(reply.body),
            {"Results": [{"Boss": "E/2"}, None], "Includes": {"e/2": {"Name": "B"}}},
        )

    @inlineCallbacks
    def test_errorsKeepTheConnection(self):
        connection = self.connect()
        request = self.support.request
        [refused] = yield self.exchange(connection, request("PUT", "a", sequence="1", body=b"[]"))
        self.assertEqual(refused.kind, "ERR")
        self.assertEqual(refused.reason, "Body must be a JSON object, not an array")
        [unwatch] = yield self.exchange(connection, request("UNWATCH", "x", sequence="2"))
        self.assertEqual(unwatch.reason, "No WATCH with Sequence x on this connection")
        [ok] = yield self.exchange(connection, request("DELETE", "a", sequence="3"))
        self.assertEqual(json.loads(ok.body), {"Deleted": 0})

    @inlineCallbacks
    def test_pipelinedPutThenGetReadsTheWrite(self):
        """Read-your-writes: a GET sent right behind a PUT sees it."""
        connection = self.connect()
        request = self.support.request
        frames = yield self.exchange(
            connection,
            request("PUT", "p/1", sequence="put", body=b'{"v": 1}')
            + request("GET", "p/1", sequence="get")
            + request("DELETE", "p/1", sequence="del")
            + request("GET", "p/1", sequence="get2"),
            count=4,
        )
        bySequence = {f.sequence: f for f in frames}
        self.assertEqual(json.loads(bySequence["get"].body)["Results"], [{"v": 1}])
        self.assertEqual(json.loads(bySequence["get2"].body)["Results"], [None])

    @inlineCallbacks
    def test_getEtagHeaders(self):
        """GET replies carry Etag and Etags (PROTOCOL.md section 8), byte for byte."""
        connection = self.connect()
        request = self.support.request
        yield self.exchange(connection, request("PUT", "e/1", sequence="1", body=b'{"Boss": "e/2"}'))
        yield self.exchange(connection, request("PUT", "e/2", sequence="2", body=b"{}"))
        yield self.exchange(connection, request("PUT", "x", sequence="3", body=b"{}"))
        yield self.exchange(connection, request("PUT", "e/1", sequence="4", body=b'{"Boss": "e/2"}'))
        connection.client.raw = b""
        [reply] = yield self.exchange(
            connection, request("GET", "e/1", "nope", "e/2", sequence="5", headers={"Include": "Boss"})
        )
        self.assertEqual((reply.headers["etag"], reply.headers["etags"]), ("4", "4,0,2"))
        body = b'{"Results": [{"Boss": "e/2"}, null, {}], "Includes": {"e/2": {}}}'
        self.assertEqual(
            connection.client.raw,
            b"OK\r\nSequence: 5\r\nSize: %d\r\nEtag: 4\r\nEtags: 4,0,2\r\n\r\n%s" % (len(body), body),
        )
        [reply] = yield self.exchange(connection, request("GET", "none", sequence="6"))
        self.assertEqual((reply.headers["etag"], reply.headers["etags"]), ("4", "0"))


class StorageFullTests(CommandTestCase):
    """Issue 12 item 7: ERR Storage full, logged once per interval; DELETE works."""

    def setUp(self) -> defer.Deferred:
        from twisted.logger import Logger

        from proto.commands import documents

        self.hub = ChangeHub()
        self.clock = Clock()
        path = os.path.join(self.mktemp(), "docs.sqlite3")
        self.store = SQLiteStore(
            path, hub=self.hub, configure=lambda c: c.execute("PRAGMA max_page_count = 40")
        )
        self.addCleanup(self.store.close)
        self.ctx = self.connect()
        self.events: list[dict] = []
        full = documents._StorageFullLog()
        full.log = Logger(observer=self.events.append)
        self.patch(documents, "_storageFull", full)
        return self.store.start()

    @inlineCallbacks
    def test_storageFull(self):
        body = b'{"pad": "%s"}' % (b"x" * 3000)
        replies = []
        for n in range(60):
            replies.append((yield self.ctx.call("PUT", f"f/{n}", body=body)))
        refused = [reply for reply in replies if reply.kind == "ERR"]
        self.assertGreater(len(refused), 5)
        for reply in refused:
            self.assertTrue(reply.payload.startswith("Storage full: "), reply)
            self.assertNotIn("Traceback", reply.payload)
        self.assertEqual(len(self.events), 1)  # once per interval, not per request
        self.clock.advance(61)
        yield self.ctx.call("PUT", "f/again", body=body)
        self.assertEqual(len(self.events), 2)
        self.assertIn("write(s) refused", self.events[1]["log_format"])
        reply = yield self.ctx.call("DELETE", "f/0", "f/1", "f/2")
        self.assertEqual(reply.json(), {"Deleted": 3})
        reply = yield self.ctx.call("PUT", "f/small", body=b"{}")
        self.assertEqual(reply.kind, "OK")
