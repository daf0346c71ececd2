"""
The write path's hand-offs and encodings (issue 13): the worker thread is
woken once per reactor turn and runs that turn's jobs as one batch; the
PUT reply and error mapping say what they said before, byte for byte.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from proto.commands.base import CommandError
from proto.commands.documents import _encodeVersion, _jsonBytes, _writeFailed
from proto.store.base import (
    PUT,
    Change,
    ConflictError,
    StorageFullError,
    StoreUnavailableError,
    Version,
)
from proto.store.sqlite_worker import Worker


class RecordingSession:
    """Runs each work and records the size of every batch (worker thread)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.threads: set[threading.Thread] = set()

    def runBatch(self, works: list[Any]) -> tuple[list[Any], None]:
        self.batches.append(len(works))
        self.threads.add(threading.current_thread())
        return [work(self) for work in works], None

    def close(self) -> None:
        pass


class NoCallLater:
    """A reactor that only has C{callFromThread}."""

    def callFromThread(self, f: Any, *args: Any) -> None:
        reactor.callFromThread(f, *args)


class WorkerTurnTests(TestCase):
    """One wake-up per reactor turn, one batch per wake-up."""

    @inlineCallbacks
    def startWorker(self, clock: Any = reactor):
        self.session = RecordingSession()
        worker = Worker("test", lambda: self.session, clock)
        self.addCleanup(worker.stop)
        yield worker.start()
        yield self.untilIdle(worker)
        return worker

    @inlineCallbacks
    def untilIdle(self, worker: Worker):
        """Let the thread reach its wait for jobs (bounded)."""
        for _ in range(2000):
            if worker._idle:
                break
            yield _sleep(0.005)
        self.assertTrue(worker._idle)

    @inlineCallbacks
    def test_oneTurnOneBatch(self):
        """Jobs submitted in one reactor turn run as one batch, on the thread."""
        worker = yield self.startWorker()
        results = yield _gather([worker.submit(lambda session, n=n: n * 2) for n in range(5)])
        self.assertEqual(results, [0, 2, 4, 6, 8])
        self.assertEqual(self.session.batches, [5])
        self.assertNotIn(threading.current_thread(), self.session.threads)
        # And again: the worker went back to waiting, and is woken again,
        # at the end of the turn even if the reactor thread lets go of the
        # GIL in the middle of it (here: sleeps) after the first job.
        yield self.untilIdle(worker)
        deferreds = []
        for _ in range(3):
            deferreds.append(worker.submit(lambda session: "x"))
            time.sleep(0.005)
        results = yield _gather(deferreds)
        self.assertEqual((results, self.session.batches), (["x"] * 3, [5, 3]))

    @inlineCallbacks
    def test_cancelledInTheTurnNeverRuns(self):
        """A job cancelled in the turn it was submitted in is skipped."""
        worker = yield self.startWorker()
        ran: list[str] = []
        first = worker.submit(lambda session: ran.append("first"))
        second = worker.submit(lambda session: ran.append("second"))
        first.cancel()
        yield second
        self.assertFailure(first, CancelledError)
        yield first
        self.assertEqual((ran, self.session.batches), (["second"], [1]))

    @inlineCallbacks
    def test_withoutCallLater(self):
        """A reactor without callLater: the thread is woken at once."""
        worker = yield self.startWorker(NoCallLater())
        result = yield worker.submit(lambda session: 42)
        self.assertEqual(result, 42)


class BellTests(TestCase):
    """The idle thread's bell is rung once per wait, whoever rings it."""

    startWorker = WorkerTurnTests.startWorker
    untilIdle = WorkerTurnTests.untilIdle

    @inlineCallbacks
    def test_ringsOncePerWait(self):
        """
        Without callLater every submit to an idle thread rings at once:
        submits racing the thread's return to its wait (each one rings
        only if it finds the thread idle) neither ring twice (releasing
        an unlocked lock raises) nor leave a job unrun.
        """
        worker = yield self.startWorker(NoCallLater())
        for round in range(50):
            results = [worker.submit(lambda session, n=n: n) for n in range(round % 3 + 1)]
            self.assertEqual((yield _gather(results)), list(range(round % 3 + 1)))
        yield self.untilIdle(worker)
        self.assertTrue(worker._bell.locked())

    @inlineCallbacks
    def test_stopWakesTheIdleThread(self):
        """stop() rings for an idle thread, which then ends."""
        worker = yield self.startWorker()
        yield worker.stop()
        self.assertFalse(worker._thread.is_alive())


class BeforePollReactor(NoCallLater):
    """A reactor with the speed lever's C{callBeforePoll}, run by hand."""

    def __init__(self) -> None:
        self.beforePoll: list[Any] = []

    def callLater(self, delay: float, f: Any, *args: Any) -> None:
        raise AssertionError("the wake-up goes through callBeforePoll")

    def callBeforePoll(self, f: Any) -> None:
        self.beforePoll.append(f)


class BeforePollTests(TestCase):
    """With the proto-epoll reactor: one wake-up per turn, right before its poll."""

    startWorker = WorkerTurnTests.startWorker
    untilIdle = WorkerTurnTests.untilIdle

    @inlineCallbacks
    def test_wokenBeforePoll(self):
        clock = BeforePollReactor()
        worker = yield self.startWorker(clock)
        results = [worker.submit(lambda session, n=n: n) for n in range(3)]
        self.assertEqual(len(clock.beforePoll), 1, "one wake-up for the turn")
        yield _sleep(0.05)
        self.assertEqual(self.session.batches, [], "not woken before the poll")
        clock.beforePoll.pop()()
        self.assertEqual((yield _gather(results)), [0, 1, 2])
        self.assertEqual(self.session.batches, [3])


def _sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@inlineCallbacks
def _gather(deferreds: list[Deferred[Any]]):
    results = []
    for d in deferreds:
        results.append((yield d))
    return results


class EncodeVersionTests(SynchronousTestCase):
    @given(st.text(min_size=1, alphabet=st.characters(blacklist_categories=["Cs"])),
           st.integers(min_value=0, max_value=2**63))
    def test_sameAsJsonDumps(self, id: str, etag: int) -> None:
        self.assertEqual(
            _encodeVersion(Version(id, etag)), _jsonBytes({"Id": id, "Etag": etag})
        )


class WriteFailedTests(SynchronousTestCase):
    """One errback gives each store failure its words (as three did)."""

    class Context:
        from twisted.internet.task import Clock

        clock = Clock()

    def reason(self, error: Exception) -> str:
        try:
            _writeFailed(Failure(error), self.Context())  # type: ignore[arg-type]
        except CommandError as e:
            return e.reason
        raise AssertionError("no CommandError")

    def test_words(self) -> None:
        self.assertEqual(
            self.reason(ConflictError("a", 5, 1)), "Conflict: a has etag 1; If-Match was 5"
        )
        self.assertEqual(self.reason(StorageFullError("no room")), "Storage full: no room")
        self.assertEqual(
            self.reason(StoreUnavailableError("gone")), "Store unavailable: gone"
        )

    def test_otherFailuresGoOn(self) -> None:
        with self.assertRaises(ZeroDivisionError):
            _writeFailed(Failure(ZeroDivisionError()), self.Context())  # type: ignore[arg-type]


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.sampled_from(["a/1", "A/1", "a/2", "b/x", "B/X"]),
            st.one_of(st.none(), st.integers(0, 6)),
            st.binary(min_size=2, max_size=8).map(lambda b: b'{"v": "%s"}' % b.hex().encode()),
        ),
        st.tuples(st.just("read"), st.sampled_from(["a/1", "b/x"]), st.none(), st.none()),
    ),
    min_size=1, max_size=12,
)


class PutManyTests(SynchronousTestCase):
    """
    The SQLite writer runs a run of PUTs together (L{WriteSession.putMany});
    a batch gives what one transaction per operation gives.
    """

    def session(self) -> Any:
        from proto.store.sqlite_write import WriteSession

        session = WriteSession(self.mktemp() + "/documents.sqlite3", published=lambda: 10**18)
        self.addCleanup(session.close)
        return session

    @staticmethod
    def works(ops: list[tuple[Any, ...]]) -> list[Any]:
        from proto.store.base import idKey
        from proto.store.facade import PutWork

        works: list[Any] = []
        for kind, id, ifMatch, body in ops:
            if kind == "put":
                works.append(PutWork(idKey(id), id, body, ifMatch))
            else:
                works.append(lambda session, key=idKey(id): session.read([key], None).results)
        return works

    @staticmethod
    def state(session: Any) -> tuple[list[Any], list[Any]]:
        connection = session.connection
        return (
            connection.execute("SELECT key, id, etag, body FROM documents ORDER BY key").fetchall(),
            connection.execute("SELECT etag, key, id, type FROM changes ORDER BY etag").fetchall(),
        )

    @staticmethod
    def outcome(result: Any) -> Any:
        if isinstance(result, Failure):
            error = result.value
            assert isinstance(error, ConflictError), result
            return ("conflict", error.id, error.expected, error.actual)
        return result

    @settings(max_examples=60, deadline=None)
    @given(_ops)
    def test_batchAsOneByOne(self, ops: list[tuple[Any, ...]]) -> None:
        """Outcomes, documents, change log and published changes: the same."""
        batched, single = self.session(), self.session()
        outcomes, result = batched.runBatch(self.works(ops))
        self.assertEqual(result.size, len(ops))
        expected, changes = [], []
        for work in self.works(ops):
            [one], oneResult = single.runBatch([work])
            expected.append(one)
            changes += oneResult.changes
        self.assertEqual([self.outcome(o) for o in outcomes], [self.outcome(o) for o in expected])
        self.assertEqual(result.changes, changes)
        self.assertEqual(self.state(batched), self.state(single))

    def test_onePutBatches(self) -> None:
        """
        Batches of one PUT (a client that waits for each reply): the id
        of the first write is kept, every version is logged, and the
        publisher is handed exactly the batch's change.
        """
        from proto.store.facade import PutWork

        session = self.session()
        versions = []
        for id, body in [("A/1", b"{}"), ("a/1", b'{"n": 2}'), ("b/1", b"{}")]:
            [version], result = session.runBatch([PutWork(id.lower(), id, body, None)])
            self.assertEqual(result.changes, [Change(version.id, PUT, version.etag)])
            versions.append(version)
        self.assertEqual(versions, [Version("A/1", 1), Version("A/1", 2), Version("b/1", 3)])
        self.assertEqual(self.state(session), (
            [("a/1", "A/1", 2, b'{"n": 2}'), ("b/1", "b/1", 3, b"{}")],
            [(1, "a/1", "A/1", 1), (2, "a/1", "A/1", 1), (3, "b/1", "b/1", 1)],
        ))

    def test_prunesFromTheRealFloor(self) -> None:
        """
        A session that has not seen the log's floor move (another
        connection pruned) reads it before pruning: the floor only moves
        up and the log stays contiguous up to the newest change.
        """
        from proto.store import sqlite_write
        from proto.store.facade import PutWork
        from proto.store.sqlite_read import counter
        from proto.store.sqlite_write import WriteSession

        # Small prunes: a floor computed from a stale one would be below
        # the real one.
        self.patch(sqlite_write, "PRUNE_MAX", 3)
        path = self.mktemp() + "/documents.sqlite3"
        first = WriteSession(path, retain=5, published=lambda: 10**18)
        self.addCleanup(first.close)
        second = WriteSession(path, retain=5, published=lambda: 10**18)
        self.addCleanup(second.close)
        for n in range(30):
            first.runBatch([PutWork(f"k/{n}", f"k/{n}", b"{}", None)])
        floor = counter(first.connection, "log_floor")
        self.assertGreater(floor, 20)
        second.runBatch([PutWork("k/x", "k/x", b"{}", None)])
        newFloor = counter(second.connection, "log_floor")
        etags = [row[0] for row in self.state(second)[1]]
        self.assertGreaterEqual(newFloor, floor)
        self.assertEqual(etags, list(range(newFloor + 1, 32)))

    def test_runOfPuts(self) -> None:
        """Several PUTs of one id in a batch: If-Match sees the ones before; one row each."""
        from proto.store.facade import PutWork

        session = self.session()
        outcomes, _ = session.runBatch([
            PutWork("a/1", "a/1", b"{}", 0),
            PutWork("a/1", "A/1", b'{"n": 2}', 1),
            PutWork("a/1", "a/1", b'{"n": 3}', 1),
            PutWork("b/1", "b/1", b"{}", None),
        ])
        self.assertEqual(outcomes[:2], [Version("a/1", 1), Version("a/1", 2)])
        self.assertEqual(self.outcome(outcomes[2]), ("conflict", "a/1", 1, 2))
        self.assertEqual(outcomes[3], Version("b/1", 3))
        self.assertEqual(self.state(session)[0], [
            ("a/1", "a/1", 2, b'{"n": 2}'), ("b/1", "b/1", 3, b"{}"),
        ])
