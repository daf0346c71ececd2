"""
Tests for WATCH with the change log (C{shared/PROTOCOL.md} section 8):
C{Since} catch-up and its seam with live pushes while writers commit from
their threads, C{Gap} after pruning, C{Documents} with C{Include}, the
C{Dropped} etag and the slow-watcher bound (issue 12, item 5: by bytes and
time, independent of socket buffers, over real sockets with small and
default buffers), and the wire bytes end to end through TLS.
"""

from __future__ import annotations

import json
import os
import socket

from twisted.internet import defer, endpoints, protocol
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from proto import wire
from proto.commands import watch as watchModule
from proto.commands import watchframes, watchstream
from proto.hub import ChangeHub
from proto.store.base import PUT, Change
from proto.store.sqlite import SQLiteStore
from tests import support
from tests.test_changelog import sleep, waitUntil
from tests.test_documents import CommandTestCase, Reply
from tests.test_store import PostgresBackend, SQLiteBackend


class WatchTestCase(SQLiteBackend, CommandTestCase):
    """
    A store with a small retention knob; helpers to watch and wait. The
    C{Postgres*} classes at the end run the same tests on PostgreSQL.
    """

    retain = 100_000

    #: Deliver on the next reactor turn, as the server's hub does (proto/hub.py).
    turnBatched = False

    def setUp(self) -> defer.Deferred:
        from twisted.internet import reactor

        self.hub = ChangeHub(reactor if self.turnBatched else None)
        self.clock = support.realTimeClock()
        self.setUpBackend()
        self.store = self.newStore(self.hub, retainChanges=self.retain)
        self.addCleanup(self.store.close)
        self.ctx = self.connect()
        return self.store.start()

    @inlineCallbacks
    def watch(self, ctx, prefix, sequence="w", **headers):
        d = ctx.invoke("WATCH", prefix, sequence=sequence, headers=headers)
        result = yield d
        return int(dict(result.headers)["Etag"])

    def pushesOf(self, ctx, sequence="w"):
        return [json.loads(body) for seq, body in ctx.pushes if seq == sequence]

    @inlineCallbacks
    def waitForEtag(self, ctx, etag, sequence="w", timeout=20.0):
        """Until a push of C{sequence} has an etag >= C{etag} (or it is Dropped)."""

        def reached():
            pushes = self.pushesOf(ctx, sequence)
            return any(p.get("Etag", 0) >= etag or p["Type"] == "Dropped" for p in pushes)

        yield waitUntil(reached, timeout, f"push with etag {etag}")

    @inlineCallbacks
    def floodUnreading(self):
        """
        Watch C{s/} from a client that reads nothing and publish 1,000
        changes of ~300-byte ids past the WATCH's etag: far more than
        L{watchModule.DROP_BYTES} unsent.
        """
        etag = yield self.watch(self.ctx, "s/")
        self.ctx.countUnsent = True
        pad = "x" * 300
        for n in range(1000):
            self.hub.publishChanges([Change(f"s/{n}{pad}", PUT, etag + n + 1)])
        return etag


class SinceTests(WatchTestCase):
    """Catch-up from the log, then live."""

    @inlineCallbacks
    def test_sinceReplaysThenLive(self):
        yield self.putAll({"u/1": {}, "x/1": {}, "U/2": {}, "u/3": {}})
        etag = yield self.watch(self.ctx, "u/", Since="1")
        self.assertEqual(etag, 4)
        yield self.ctx.call("PUT", "u/4", body=b"{}")
        yield self.waitForEtag(self.ctx, 5)
        self.assertEqual(
            self.pushesOf(self.ctx),
            [
                {"Id": "U/2", "Type": "Put", "Etag": 3},
                {"Id": "u/3", "Type": "Put", "Etag": 4},
                {"Id": "u/4", "Type": "Put", "Etag": 5},
            ],
        )

    @inlineCallbacks
    def test_withoutSinceReplyEtag(self):
        """Without Since: the reply's Etag, then only later changes."""
        yield self.putAll({"a": {}, "b": {}})
        etag = yield self.watch(self.ctx, "a")
        self.assertEqual(etag, 2)
        yield self.ctx.call("PUT", "a", body=b"{}")
        yield self.waitForEtag(self.ctx, 3)
        self.assertEqual(self.pushesOf(self.ctx), [{"Id": "a", "Type": "Put", "Etag": 3}])

    @inlineCallbacks
    def test_sinceAboveCurrent(self):
        """A Since above the current etag is accepted: nothing to replay, nothing up to it."""
        yield self.putAll({"a": {}})
        etag = yield self.watch(self.ctx, "a", Since="3")
        self.assertEqual(etag, 1)
        for _ in range(3):
            yield self.ctx.call("PUT", "a", body=b"{}")
        yield self.waitForEtag(self.ctx, 4)
        self.assertEqual([p["Etag"] for p in self.pushesOf(self.ctx)], [4])

    @inlineCallbacks
    def test_badHeaders(self):
        for headers, expected in [
            ({"Since": "-1"}, "Malformed Since"),
            ({"Since": "x"}, "Malformed Since"),
            ({"Since": ""}, "Malformed Since"),
            ({"Documents": "maybe"}, "Malformed Documents"),
            ({"Documents": "yes", "Include": "a,,b"}, "Malformed Include"),
        ]:
            yield self.assertRefused(expected, "WATCH", "a", headers=headers)
        self.assertEqual(self.hub.subscriberCount(), 0)
        self.assertEqual(len(self.ctx.subscriptions), 0)

    @inlineCallbacks
    def test_seamWhileWritersCommit(self):
        """
        Watches subscribe (Since 0, mid-stream Since, none) while two
        stores commit from their writer threads as fast as they can: each
        watch gets every matching change above its start exactly once, in
        etag order. Small pages make the catch-up cross many page
        boundaries and the seam.
        """
        self.patch(watchstream, "CATCHUP_PAGE", 7)
        other = self.newStore(None, retainChanges=self.retain)  # no hub: another "process"
        self.addCleanup(other.close)
        yield other.start()
        total = 600
        writes = []

        def write(n):
            store = self.store if n % 2 else other
            id = f"{'m' if n % 3 else 'z'}/{n}"
            return store.put(id, b'{"n": %d}' % n) if n % 5 else store.delete([f"m/{n - 1}"])

        watchers = {}
        for n in range(total):
            writes.append(write(n))
            if n in (50, 300, 450):
                ctx = self.connect()
                since = {50: "0", 300: "120", 450: None}[n]
                headers = {"Since": since} if since is not None else {}
                watchers[n] = (ctx, since, self.watch(ctx, "M/", **headers))
            if n % 40 == 0:
                yield sleep(0)  # let commits and catch-up interleave
        yield gatherResults(writes)
        last = yield self.store.currentEtag()
        page = yield self.store.changesSince(0, "m/", limit=10_000)
        matching = [change.etag for change in page.changes]
        for n, (ctx, since, began) in watchers.items():
            replyEtag = yield began
            start = replyEtag if since is None else int(since)
            expected = [etag for etag in matching if etag > start]
            if expected:  # Empty when every later write committed before the watch began.
                yield self.waitForEtag(ctx, expected[-1])
            got = [p["Etag"] for p in self.pushesOf(ctx)]
            self.assertEqual(got, expected, f"watch started at write {n}")
        self.assertGreater(last, total - total // 5 - 5)


class GapTests(WatchTestCase):
    """History older than the retention gives one Gap push first."""

    retain = 10

    @inlineCallbacks
    def test_gapAfterPruning(self):
        for n in range(60):
            yield self.ctx.call("PUT", f"g/{n % 4}", body=b"{}")
        page = yield self.store.changesSince(0)
        floor = page.floor
        self.assertGreater(floor, 0)
        yield self.watch(self.ctx, "g/", Since="3")
        yield self.waitForEtag(self.ctx, 60)
        pushes = self.pushesOf(self.ctx)
        self.assertEqual(pushes[0], {"Type": "Gap", "Since": 3, "Etag": floor})
        self.assertEqual([p["Etag"] for p in pushes[1:]], list(range(floor + 1, 61)))

    @inlineCallbacks
    def test_noGapWhenRetained(self):
        for n in range(60):
            yield self.ctx.call("PUT", f"g/{n % 4}", body=b"{}")
        yield self.watch(self.ctx, "g/", Since="55")
        yield self.waitForEtag(self.ctx, 60)
        self.assertEqual([p["Etag"] for p in self.pushesOf(self.ctx)], [56, 57, 58, 59, 60])


class DocumentsTests(WatchTestCase):
    """Documents: yes (and Include) pushes carry the documents."""

    @inlineCallbacks
    def test_documentsAndIncludes(self):
        yield self.putAll({"e/1": {"Boss": "P/2", "Peers": ["p/3", "nope"]}, "p/2": {"N": 2}, "p/3": {"N": 3}})
        yield self.watch(self.ctx, "e/", Since="0", Documents="YES", Include="Boss,Peers")
        yield self.ctx.call("PUT", "e/2", body=b'{"Boss": "p/3"}')
        yield self.ctx.call("DELETE", "e/2")
        yield self.waitForEtag(self.ctx, 5)
        self.assertEqual(
            self.pushesOf(self.ctx)[0],
            {
                "Id": "e/1", "Type": "Put", "Etag": 1,
                "Document": {"Boss": "P/2", "Peers": ["p/3", "nope"]},
                "Includes": {"p/2": {"N": 2}, "p/3": {"N": 3}},
            },
        )
        # e/2 may be read before or after its deletion: its document or null.
        later = self.pushesOf(self.ctx)[1:]
        self.assertEqual([(p["Type"], p["Etag"]) for p in later], [("Put", 4), ("Delete", 5)])
        self.assertIn(
            (later[0]["Document"], later[0]["Includes"]),
            [({"Boss": "p/3"}, {"p/3": {"N": 3}}), (None, {})],
        )
        self.assertNotIn("Document", later[1])

    @inlineCallbacks
    def test_documentsLive(self):
        yield self.watch(self.ctx, "d/", Documents="yes")
        yield self.ctx.call("PUT", "d/1", body=b'{"v": "\xc3\xa9"}')
        yield self.waitForEtag(self.ctx, 1)
        [(_, body)] = self.ctx.pushes
        self.assertEqual(body, '{"Id": "d/1", "Type": "Put", "Etag": 1, "Document": {"v": "é"}}'.encode())

    @inlineCallbacks
    def test_documentsNo(self):
        yield self.watch(self.ctx, "d/", Documents="no", Include="X")
        yield self.ctx.call("PUT", "d/1", body=b"{}")
        yield self.waitForEtag(self.ctx, 1)
        self.assertEqual(self.pushesOf(self.ctx), [{"Id": "d/1", "Type": "Put", "Etag": 1}])


class SlowWatcherTests(WatchTestCase):
    """The bound by bytes and by time, and the Dropped push's Etag."""

    @inlineCallbacks
    def test_droppedByBytes(self):
        yield self.floodUnreading()
        pushes = self.pushesOf(self.ctx)
        dropped = pushes[-1]
        self.assertEqual(dropped["Type"], "Dropped")
        self.assertEqual(dropped["Etag"], pushes[-2]["Etag"])
        self.assertIn(f"Since: {dropped['Etag']}", dropped["Reason"])
        # Checked before each write: at most one batch (here one push) beyond.
        self.assertLessEqual(self.ctx.unsent, watchModule.DROP_BYTES + 500)
        self.assertEqual(self.hub.subscriberCount(), 0)
        yield self.assertRefused("No WATCH", "UNWATCH", "w")

    @inlineCallbacks
    def test_droppedByTime(self):
        """Over SLOW_BYTES for SLOW_SECONDS: dropped at the next push."""
        yield self.watch(self.ctx, "s/")
        self.ctx.unsent = watchModule.SLOW_BYTES + 1
        self.hub.publish("s/1", PUT, 1)
        self.clock.advance(watchModule.SLOW_SECONDS - 1)
        self.hub.publish("s/2", PUT, 2)
        self.assertEqual([p["Type"] for p in self.pushesOf(self.ctx)], ["Put", "Put"])
        self.clock.advance(1)
        self.hub.publish("s/3", PUT, 3)
        pushes = self.pushesOf(self.ctx)
        self.assertEqual(pushes[-1]["Type"], "Dropped")
        self.assertEqual(pushes[-1]["Etag"], 2)

    @inlineCallbacks
    def test_droppedBeforeAnyPush(self):
        """Nothing pushed yet: Dropped carries the WATCH reply's Etag."""
        yield self.putAll({"a": {}, "b": {}})
        etag = yield self.watch(self.ctx, "s/")
        self.ctx.unsent = watchModule.DROP_BYTES + 1
        self.hub.publish("s/1", PUT, 3)
        [dropped] = self.pushesOf(self.ctx)
        self.assertEqual((dropped["Type"], dropped["Etag"]), ("Dropped", etag))

    @inlineCallbacks
    def test_catchUpWaitsForTheClient(self):
        """Catch-up stops while the client is behind, and goes on when it reads."""
        self.patch(watchstream, "CATCHUP_PAGE", 5)
        yield gatherResults([self.store.put(f"c/{n}", b"{}") for n in range(40)])
        self.ctx.unsent = watchModule.CATCHUP_WINDOW
        yield self.watch(self.ctx, "c/", Since="0")
        yield sleep(0.05)
        self.assertEqual(self.ctx.pushes, [])
        self.ctx.unsent = 0
        self.clock.advance(watchModule.POLL_SECONDS)
        yield self.waitForEtag(self.ctx, 40)
        self.assertEqual([p["Etag"] for p in self.pushesOf(self.ctx)], list(range(1, 41)))

    @inlineCallbacks
    def test_resumeAfterDropLosesNothing(self):
        """WATCH again with Since: the Dropped Etag gives exactly the rest."""
        yield self.watch(self.ctx, "r/")
        self.ctx.countUnsent = True
        for start in range(0, 1200, 100):
            yield gatherResults(
                [self.store.put(f"r/{n:04d}" + "x" * 300, b"{}") for n in range(start, start + 100)]
            )
        pushes = self.pushesOf(self.ctx)
        self.assertEqual(pushes[-1]["Type"], "Dropped")
        resumeFrom = pushes[-1]["Etag"]
        again = self.connect()
        yield self.watch(again, "r/", Since=str(resumeFrom))
        yield self.waitForEtag(again, 1200)
        seen = [p["Etag"] for p in pushes[:-1]] + [p["Etag"] for p in self.pushesOf(again)]
        self.assertEqual(seen, list(range(1, 1201)))


class BigDocumentTests(WatchTestCase):
    """Documents bigger than the bounds: one may be in flight; reads shrink."""

    @inlineCallbacks
    def test_oneBigPushInFlight(self):
        yield self.watch(self.ctx, "b/", Documents="yes")
        self.ctx.countUnsent = True  # the client reads nothing
        big = b'{"pad": "%s"}' % (b"x" * (watchModule.DROP_BYTES * 2))
        yield self.ctx.call("PUT", "b/1", body=big)
        yield self.waitForEtag(self.ctx, 1)
        yield self.ctx.call("PUT", "b/2", body=b"{}")
        yield self.waitForEtag(self.ctx, 2)
        self.assertEqual([p["Type"] for p in self.pushesOf(self.ctx)], ["Put", "Put"])
        yield self.ctx.call("PUT", "b/3", body=big)
        yield self.ctx.call("PUT", "b/4", body=b"{}")
        yield self.waitForEtag(self.ctx, 4)
        pushes = self.pushesOf(self.ctx)
        self.assertEqual(pushes[-1]["Type"], "Dropped")

    @inlineCallbacks
    def test_catchUpReadsFewerBigDocuments(self):
        body = b'{"pad": "%s"}' % (b"x" * 400_000)
        for n in range(8):
            yield self.store.put(f"b/{n}", body)
        reads = []
        real = self.store.read

        def counting(ids, references=None):
            reads.append(len(ids))
            return real(ids, references)

        self.patch(self.store, "read", counting)
        self.patch(watchstream, "DOCUMENT_BATCH", 4)
        yield self.watch(self.ctx, "b/", Since="0", Documents="yes")
        yield self.waitForEtag(self.ctx, 8)
        self.assertEqual([p["Etag"] for p in self.pushesOf(self.ctx)], list(range(1, 9)))
        self.assertEqual(reads[0], 4)  # 1.6 MB: over DOCUMENT_BATCH_BYTES
        self.assertGreaterEqual(len(reads), 3, reads)
        self.assertTrue(all(size <= 2 for size in reads[1:]), reads)


class EndToEndTests(TestCase):
    """Through the real server protocol over TLS in memory: the exact bytes."""

    def setUp(self) -> defer.Deferred:
        return support.startStoreServer(self)

    @inlineCallbacks
    def exchange(self, connection, data: bytes, until):
        connection.send(data)
        for _ in range(2000):
            if until():
                return
            yield sleep(0.005)
            connection.flush()
        raise AssertionError("no reply")

    @inlineCallbacks
    def test_sinceBytes(self):
        connection = support.connectInMemory(factory=self.factory)
        for n, id in enumerate(["k/1", "k/2", "j/1"]):
            yield self.exchange(
                connection,
                support.request("PUT", id, sequence=f"p{n}", body=b'{"n": 1}'),
                lambda: b"Etag" in connection.client.raw,
            )
            connection.client.raw = b""
        yield self.exchange(
            connection,
            support.request("WATCH", "K/", sequence="w", headers={"Since": "1", "Documents": "yes"}),
            lambda: b"PUSH" in connection.client.raw,
        )
        body = b'{"Id": "k/2", "Type": "Put", "Etag": 2, "Document": {"n": 1}}'
        self.assertEqual(
            connection.client.raw,
            b"OK\r\nSequence: w\r\nEtag: 3\r\n\r\n"
            + b"PUSH\r\nSequence: w\r\nSize: %d\r\n\r\n%s" % (len(body), body),
        )


class _Collector(protocol.Protocol):
    """A client that can stop reading (pauses its transport)."""

    def __init__(self) -> None:
        self.parser = wire.ReplyParser()
        self.frames = []

    def dataReceived(self, data: bytes) -> None:
        self.frames += [f for f in self.parser.feed(data) if isinstance(f, wire.Frame)]


class RealSocketTests(TestCase):
    """
    Issue 12 item 5 over real TCP+TLS: a watcher that stops reading is
    dropped within the documented bound, whatever the socket buffers.
    """

    timeout = 60

    @inlineCallbacks
    def dropCount(self, smallBuffers: bool, turnBatched: bool = False):
        from twisted.internet import reactor

        hub = ChangeHub(reactor if turnBatched else None)
        store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"), hub=hub)
        self.addCleanup(store.close)
        yield store.start()
        factory = support.makeFactory(reactor, store=store, hub=hub)
        port = yield support.listenInProcess(reactor, factory)
        self.addCleanup(port.stopListening)
        endpoint = endpoints.wrapClientTLS(
            support.Credentials.get().clientOptions(support.Credentials.get().client),
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        client = _Collector()
        yield endpoints.connectProtocol(endpoint, client)
        self.addCleanup(client.transport.abortConnection)
        yield waitUntil(lambda: client.parser._greeted, what="greeting")
        client.transport.write(support.request("WATCH", "big/", sequence="w"))
        yield waitUntil(lambda: client.frames, what="WATCH reply")
        [server] = factory.admitted
        if smallBuffers:
            server.transport.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            client.transport.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.transport.pauseProducing()  # stops reading
        pad = "x" * 400  # a push of about 480 bytes
        total = 6000
        for start in range(0, total, 300):
            yield gatherResults([store.put(f"big/{n}{pad}", b"{}") for n in range(start, start + 300)])
        client.transport.resumeProducing()
        yield waitUntil(
            lambda: any(b'"Dropped"' in f.body for f in client.frames), 30, "Dropped push"
        )
        pushes = [json.loads(f.body) for f in client.frames if f.kind == "PUSH"]
        dropped = pushes[-1]
        self.assertEqual(dropped["Type"], "Dropped")
        self.assertEqual(dropped["Etag"], pushes[-2]["Etag"])
        return len(pushes) - 1

    @inlineCallbacks
    def test_defaultBuffers(self):
        count = yield self.dropCount(smallBuffers=False)
        # DROP_BYTES plus what the client's kernel took (it never read, so
        # its receive buffer did not grow): far below the 6,000 written.
        self.assertLess(count * 480, watchModule.DROP_BYTES + 512 * 1024)

    @inlineCallbacks
    def test_smallBuffers(self):
        count = yield self.dropCount(smallBuffers=True)
        self.assertLess(count * 480, watchModule.DROP_BYTES + 512 * 1024)

    @inlineCallbacks
    def test_defaultBuffersTurnBatched(self):
        """The same with the server's hub (one delivery per reactor turn)."""
        count = yield self.dropCount(smallBuffers=False, turnBatched=True)
        self.assertLess(count * 480, watchModule.DROP_BYTES + 512 * 1024)

    @inlineCallbacks
    def test_smallBuffersTurnBatched(self):
        count = yield self.dropCount(smallBuffers=True, turnBatched=True)
        self.assertLess(count * 480, watchModule.DROP_BYTES + 512 * 1024)


class CrossProcessWatchTests(WatchTestCase):
    """A WATCH here sees the PUTs another process commits to the same file, in order."""

    @inlineCallbacks
    def test_otherProcess(self):
        import sys

        from twisted.internet import utils

        yield self.watch(self.ctx, "cp/", Since="0")
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "tests.changelog_writer", self.storeSpec(), "120", "cp/", "20"],
            env=os.environ,
            path=support.ROOT,
        )
        self.assertEqual(code, 0, err.decode(errors="replace"))
        etags = json.loads(out)
        yield self.waitForEtag(self.ctx, max(etags))
        self.assertEqual([p["Etag"] for p in self.pushesOf(self.ctx)], sorted(etags))
        self.assertEqual(sorted(etags), list(range(1, 121)))


class UnsentBytesTests(TestCase):
    """proto.unsent walks TLS -> wrappers -> TCP and adds up what is buffered."""

    def test_chain(self):
        from proto.unsent import unsentBytes

        class Aggregator:
            MAX_BUFFER_SIZE = 100
            _bufferLeft = 70

        class TCP:
            dataBuffer = b"x" * 50
            offset = 10
            _tempDataLen = 5
            socket = None

        class Wrapper:
            transport = TCP()

        class TLS:
            _aggregator = Aggregator()
            transport = Wrapper()

        self.assertEqual(unsentBytes(TLS()), 30 + 40 + 5)
        self.assertEqual(unsentBytes(object()), 0)


class UnsentBoundTests(TestCase):
    """
    proto.unsent.UnsentBound: the last exact figure plus what was written
    since bounds what is unsent; the exact measure is asked for only when
    that bound is over the threshold, at first, or after REFRESH_SECONDS.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from proto.unsent import UnsentBound

        self.clock = Clock()
        self.real = 0  # what the connection really has unsent
        self.measures = 0

        def measure() -> int:
            self.measures += 1
            return self.real

        self.bound = UnsentBound(self.clock)
        self.measure = measure
        self.overhead = UnsentBound.RECORD_OVERHEAD

    def write(self, size: int) -> None:
        """A client that reads nothing: all of it stays unsent."""
        self.real += size
        self.bound.wrote(size)

    def test_firstIsExact(self):
        self.real = 500
        self.assertEqual(self.bound.unsent(1000, self.measure), 500)
        self.assertEqual(self.measures, 1)

    def test_writesCountedWithoutMeasuring(self):
        self.assertEqual(self.bound.unsent(10_000, self.measure), 0)
        for _ in range(10):
            self.write(100)
            answer = self.bound.unsent(10_000, self.measure)
            self.assertGreaterEqual(answer, self.real)  # never below the truth
        self.assertEqual(answer, 1000 + 10 * self.overhead)
        self.assertEqual(self.measures, 1)

    def test_overThresholdMeasures(self):
        """Past the threshold the answer is exact: a slow client is seen."""
        self.bound.unsent(1000, self.measure)
        self.write(2000)
        self.assertEqual(self.bound.unsent(1000, self.measure), 2000)
        self.assertEqual(self.measures, 2)
        self.real = 0  # the client read it all
        self.assertEqual(self.bound.unsent(1000, self.measure), 0)  # the bound stays exact while over
        self.assertEqual(self.measures, 3)
        self.write(10)
        self.assertEqual(self.bound.unsent(1000, self.measure), 10 + self.overhead)  # under again: no measure
        self.assertEqual(self.measures, 3)

    def test_refreshedAfterASecond(self):
        """Bytes written by others (replies) are seen within REFRESH_SECONDS."""
        self.bound.unsent(1000, self.measure)
        self.real = 5000  # say a big GET reply the client did not read
        self.assertEqual(self.bound.unsent(1000, self.measure), 0)
        self.clock.advance(self.bound.REFRESH_SECONDS)
        self.assertEqual(self.bound.unsent(1000, self.measure), 5000)

    def test_bigWritesCountRecords(self):
        """A write of n bytes may make 1 + n // 16384 TLS records."""
        self.bound.unsent(10**9, self.measure)
        self.write(100_000)
        self.assertEqual(self.bound.unsent(10**9, self.measure), 100_000 + 7 * self.overhead)


# -- the same WATCH tests on PostgreSQL ------------------------------------------------


class TurnBatchedSinceTests(SinceTests):
    """The seam with the server's hub: delivered once per reactor turn."""

    turnBatched = True


class TurnBatchedGapTests(GapTests):
    turnBatched = True


class TurnBatchedDocumentsTests(DocumentsTests):
    turnBatched = True


class TurnBatchedCrossProcessWatchTests(CrossProcessWatchTests):
    turnBatched = True


class TurnBatchedEndToEndTests(EndToEndTests):
    """The exact bytes with the server's hub (delivery on the next turn)."""

    def setUp(self) -> defer.Deferred:
        from twisted.internet import reactor

        self.hub = ChangeHub(reactor)
        self.store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"), hub=self.hub)
        self.addCleanup(self.store.close)
        self.factory = support.makeFactory(support.realTimeClock(), store=self.store, hub=self.hub)
        return self.store.start()


class HubTurnTests(TestCase):
    """
    ChangeHub with a clock (as the server makes it): what is published in
    one reactor turn is delivered once, in order, on the next.
    """

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.hub = ChangeHub(self.clock)
        self.hub.startAt(10)
        self.batches: list[list[int]] = []

    def subscribe(self, prefix="a"):
        batches: list[list[int]] = []
        subscription = self.hub.subscribe(
            prefix, lambda change: None, None, lambda changes: batches.append([c.etag for c in changes])
        )
        return subscription, batches

    def test_oneDeliveryPerTurn(self):
        _, batches = self.subscribe()
        self.hub.publish("a/1", PUT, 11)
        self.hub.publishChanges([Change("b/1", PUT, 12), Change("a/2", PUT, 13)])
        self.assertEqual((batches, self.hub.etag), ([], 10))
        self.clock.advance(0)
        self.assertEqual((batches, self.hub.etag), ([[11, 13]], 13))
        self.hub.publish("a/3", PUT, 14)
        self.clock.advance(0)
        self.assertEqual(batches, [[11, 13], [14]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nobodyListening(self):
        """Without subscribers (and nothing queued) the position moves at once."""
        self.hub.publish("a/1", PUT, 11)
        self.assertEqual(self.hub.etag, 11)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_orderKeptWhenTheLastOneLeaves(self):
        subscription, batches = self.subscribe()
        self.hub.publish("a/1", PUT, 11)
        subscription.cancel()
        self.hub.publish("a/2", PUT, 12)  # behind 11, not before it
        self.assertEqual(self.hub.etag, 10)
        self.clock.advance(0)
        self.assertEqual((batches, self.hub.etag), ([], 12))

    def test_subscribedMeanwhile(self):
        """A subscription made before the delivery is at the old position: it gets them."""
        self.subscribe()
        self.hub.publish("a/1", PUT, 11)
        _, later = self.subscribe("A/")
        self.clock.advance(0)
        self.assertEqual(later, [[11]])


class TurnBatchedSlowWatcherTests(WatchTestCase):
    """The byte bound when a whole turn's changes come in one delivery."""

    def setUp(self) -> defer.Deferred:
        d = super().setUp()
        from twisted.internet.task import Clock

        self.turn = Clock()
        self.hub._clock = self.turn  # the store publishes to this hub
        return d

    @inlineCallbacks
    def test_droppedByBytesInOneTurn(self):
        etag = yield self.floodUnreading()
        self.assertEqual(self.ctx.pushes, [])
        self.turn.advance(0)  # one delivery of the 1,000 changes
        pushes = self.pushesOf(self.ctx)
        dropped = pushes[-1]
        self.assertEqual(dropped["Type"], "Dropped")
        self.assertEqual([p["Etag"] for p in pushes[:-1]], list(range(etag + 1, dropped["Etag"] + 1)))
        # Checked before each write, and a write is at most CATCHUP_WINDOW
        # (plus one push) even when the batch is bigger.
        self.assertLessEqual(self.ctx.unsent, watchModule.DROP_BYTES + watchModule.CATCHUP_WINDOW + 500)
        self.assertEqual(self.hub.subscriberCount(), 0)

    @inlineCallbacks
    def test_manyCommitsOneWrite(self):
        """The pushes of several commits in one turn go out in one write."""
        etag = yield self.watch(self.ctx, "m/")
        writes = []
        real = self.ctx.pushFrames
        self.patch(self.ctx, "pushFrames", lambda data, count=None: writes.append(count) or real(data, count))
        for n in range(5):
            self.hub.publishChanges([Change(f"m/{n}", PUT, etag + 2 * n + 1), Change(f"x/{n}", PUT, etag + 2 * n + 2)])
        self.turn.advance(0)
        self.assertEqual(writes, [5])
        self.assertEqual([p["Etag"] for p in self.pushesOf(self.ctx)], list(range(etag + 1, etag + 10, 2)))


class PostgresSinceTests(PostgresBackend, SinceTests):
    pass


class PostgresGapTests(PostgresBackend, GapTests):
    pass


class PostgresDocumentsTests(PostgresBackend, DocumentsTests):
    pass


class PostgresCrossProcessWatchTests(PostgresBackend, CrossProcessWatchTests):
    pass



class ForgottenTests(WatchTestCase):
    """What WATCH keeps per connection goes when the connection does."""

    @inlineCallbacks
    def test_connectionCollected(self):
        import gc
        import weakref

        from tests.test_documents import RecordingContext

        gc.collect()
        before = len(watchModule._bounds)  # other tests' connections may still be alive
        ctx = RecordingContext(self.store, self.hub, self.clock)
        yield self.watch(ctx, "g/")
        self.assertEqual(len(watchModule._bounds), before + 1)
        self.hub.publish("g/1", PUT, 1)
        self.assertEqual(len(self.pushesOf(ctx)), 1)
        gone = weakref.ref(ctx)
        ctx.disconnect()  # as the protocol does: every watch cancelled
        ctx = None
        gc.collect()
        self.assertIsNone(gone(), "the connection is still referenced")
        self.assertLessEqual(len(watchModule._bounds), before)


class WatchCountTests(WatchTestCase):
    @inlineCallbacks
    def test_count(self):
        self.assertEqual(watchModule.watchCount(self.ctx), 0)
        yield self.watch(self.ctx, "a", sequence="w1")
        yield self.watch(self.ctx, "b", sequence="w2", Since="0")
        self.assertEqual(watchModule.watchCount(self.ctx), 2)
        yield self.ctx.call("UNWATCH", "w1")
        self.assertEqual(watchModule.watchCount(self.ctx), 1)


class FanOutTests(WatchTestCase):
    """A published batch is encoded once for all the watches of its prefix."""

    @inlineCallbacks
    def test_sharedEncoding(self):
        other = self.connect()
        yield self.watch(self.ctx, "f/", sequence="a")
        yield self.watch(other, "F/", sequence="bb")
        calls = []
        real = watchModule._tail
        self.patch(watchframes, "_tail", lambda change: calls.append(change) or real(change))
        sent = []
        self.patch(other, "pushFrames", lambda data, count=None: sent.append((data, count)))
        changes = [Change(f"f/{n}", PUT, n) for n in range(1, 4)]
        self.hub.publishChanges(changes)
        self.assertEqual(calls, changes)  # once, not once per watch
        self.assertEqual(
            sent,
            [(b"".join(wire.encodePush("bb", watchModule.changeBody(c)) for c in changes), 3)],
        )
        self.assertEqual([p["Etag"] for p in self.pushesOf(self.ctx, "a")], [1, 2, 3])
