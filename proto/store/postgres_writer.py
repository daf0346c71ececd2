"""
PUTs and DELETEs on the PostgreSQL store without a thread (issue 13): the
write transaction of L{proto.store.postgres_batch} sent through one
non-blocking libpq connection on the reactor thread
(L{proto.store.postgres_pipeline}), with prepared statements.

The writer thread (L{proto.store.postgres_session.WriteSession}) cost,
per batch, a wake-up of a thread, a fight for the GIL, psycopg's
machinery for each statement and a C{callFromThread} back (measured with
1 client, C{bench/run.py --store --our-store postgresql --store-rows
put}: about 350 us of our CPU per PUT). Here the writes queued during one
reactor turn make a batch, sent at the end of the turn; the writes that
come while it is in flight make the next (group commit). A batch is two
round trips, each one write of the pipeline and one sync:

  1. C{BEGIN}, the counters locked, the documents the batch names;
  2. (its operations worked out in Python, L{WriteBatch}) the writes, the
     counters, the doorbell (C{NOTIFY}), the changes of other servers the
     publisher has not seen (read under the lock), C{COMMIT}.

One round trip instead when the writer knows every document the batch
names as its own last commit left them (kept per key, at most
L{MAX_CACHED}), and the counters: its operations are worked out first,
and C{BEGIN}, the lock, L{GUARD_SQL} and step 2 go in one write. The
guard, run once the lock is held, fails unless the etag counter is where
that commit left it; every change takes the counter, so then no one has
committed since and what the writer knows is what is stored. If it fails
(another server, or the writer thread, committed), nothing is written:
the batch is rolled back and runs in two round trips, and what was known
is forgotten. (1 client, in process, C{bench/pgwrites.py}: p50 about 350
-> 260 us per PUT, our CPU 150 -> 75 us.) The statements up to that
sync are one implicit transaction (no C{BEGIN}, no C{COMMIT}: committed
at the sync, whose answer comes once the commit is durable; a failed
statement rolls it all back there). Every write of a batch, the counter
and the doorbell are one statement (L{BATCH_WRITE_SQL}: arrays, the
bodies in binary), on either path.

Every write of the batch is answered only once the C{COMMIT} is
acknowledged (durable: PostgreSQL's C{synchronous_commit}); its changes
go to the publisher first, in etag order, as with the thread. Only PUTs
and DELETEs come here (the store decides: L{proto.store.postgres}); the
writer thread keeps everything else, and every write while this
connection is not open.

When something goes wrong, the outcome is what the writer thread gives:
a statement the database refuses fails the batch with the same error
(L{proto.store.postgres_session.trouble}; the transaction is rolled
back); a lost connection hands the writes not sent yet, and those of a
batch whose writes were not sent, to the writer thread (nothing of them
was written), and fails a batch whose C{COMMIT} was sent with
C{StoreUnavailableError} saying that its outcome is unknown.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proto.store.base import DELETE, PUT, Change, StoreUnavailableError
from proto.store.postgres_batch import (
    BATCH_WRITE_FORMATS,
    BATCH_WRITE_SQL,
    KNOWN_SQL,
    LOCK_SQL,
    LOG_RANGE_SQL,
    PRUNE_SQL,
    SET_FLOOR_SQL,
    WriteBatch,
    byteaArray,
    intArray,
    textArray,
)
from proto.store.postgres_listener import ReactorDoorbell
from proto.store.postgres_pipeline import PipelineConnection, Statement
from proto.store.postgres_reads import KEY_SEPARATOR
from proto.store.postgres_schema import CHANGE_PUT, CHANNEL
from proto.store.postgres_session import trouble
from proto.store.postgres_writequeue import WriteQueue
from proto.store.sqlite_write import BatchResult
from proto.timers import endOfTurn

#: A batch in one round trip takes the documents and counters as our last
#: commit left them: this statement, run once the counters are locked (a
#: new snapshot: every commit before the lock is seen), fails (division by
#: zero) if the etag counter is not where our last commit left it, that
#: is, if anyone else committed a change since; nothing of the batch is
#: then written, and it is run again in two round trips.
GUARD_SQL = ("SELECT 1 / (CASE WHEN value = %s THEN 1 ELSE 0 END) FROM proto_counters "
             "WHERE name = 'etag'")
_GUARD_FAILED = b"22012"

#: The most keys whose state the writer remembers for that.
MAX_CACHED = 100_000

#: SQLSTATEs of a prepared statement that is gone (26000) or stale
#: (0A000: "cached plan must not change result type").
_NOT_PREPARED = (b"26000", b"0A000")


class _Batch:
    """One write transaction in flight: its works and where it stands."""

    __slots__ = ("jobs", "outcomes", "phase", "statements", "writes", "counters", "started",
                 "theirs")

    def __init__(self, jobs: list[tuple[Any, Deferred[Any]]]) -> None:
        self.jobs = jobs
        self.outcomes: list[Any] = []
        #: "lock" (step 1 sent), "commit" (step 2 sent), "done".
        self.phase = "lock"
        self.statements: list[Statement] = []
        self.writes: WriteBatch | None = None
        self.counters: dict[str, int] = {}
        self.started = time.perf_counter()
        self.theirs: Statement | None = None


class ReactorWriter(ReactorDoorbell, WriteQueue, PipelineConnection):
    """
    Write batches on the reactor thread (see the module docstring).

    @ivar delivered: every change up to this etag was handed to the
        publisher with a batch's result (read by the listener's thread).
    """

    role = "reactor writer"
    meanwhile = "the writer thread serves writes meanwhile"
    prefix = "proto_write"

    def __init__(
        self,
        conninfo: str,
        reactor: Any,
        retain: int,
        published: Callable[[], int],
        committed: Callable[[int, BatchResult, float], None],
        fallback: Callable[[Any], Deferred[Any]],
        hearing: Callable[[bool], None] | None = None,
        ring: Callable[[], None] | None = None,
    ) -> None:
        """
        @param retain: the change log keeps at least this many changes.
        @param published: the publisher's position.
        @param committed: called with each committed batch's size, result
            and seconds, before its Deferreds fire (the store publishes).
        @param fallback: runs a write on the writer thread; its Deferred.
        @param hearing: given, this connection LISTENs to the doorbell
            (L{proto.store.postgres_listener}) and says whether it hears
            it (C{True} once its LISTEN is answered, C{False} once closed):
            then the listener thread need not, and is not woken by this
            writer's own commits.
        @param ring: called when it hears another writer's commit that was
            not handed to the publisher yet (the listener catches up).
        """
        PipelineConnection.__init__(self, conninfo, reactor)
        WriteQueue.__init__(self, fallback)
        ReactorDoorbell.__init__(self, hearing, ring)
        self._retain = retain
        self._published = published
        self._committed = committed
        self._endOfTurn = endOfTurn(reactor)
        self._batch: _Batch | None = None
        self._scheduled = False
        self.delivered = 0
        self.batches = 0
        #: Batches sent in one round trip whose guard found another
        #: writer's commit (then sent again in two).
        self.guardMisses = 0
        #: Batches sent in one round trip (tests, measurements).
        self.fastBatches = 0
        #: The stored (id, etag) (C{None}: no document) of keys, as our
        #: last commit left them, at etag C{_cacheEtag}, with the log's
        #: floor at C{_cacheFloor} (C{None}: not known).
        self._cache: dict[str, tuple[str, int] | None] = {}
        self._cacheEtag: int | None = None
        self._cacheFloor = 0

    def _forget(self) -> None:
        """The next batch reads what it needs (after a failure: nothing assumed)."""
        self._cache.clear()
        self._cacheEtag = None

    def stopping(self) -> None:
        """Closing: the writes taken are still committed (a last batch, now)."""
        if self._batch is None:
            self._begin()

    # -- a batch -----------------------------------------------------------------------

    def _begin(self) -> None:
        """Step 1 of a batch: every write queued, not cancelled."""
        self._scheduled = False
        if self._batch is not None or not self._queue:
            return
        if self._pgconn is None:
            self._handOver()
            return
        queued, self._queue = self._queue, []
        jobs = []
        for work, deferred in queued:
            if deferred.called:
                self._answered(1)  # Cancelled while queued: never written.
            else:
                jobs.append((work, deferred))
        if not jobs:
            return
        batch = self._batch = _Batch(jobs)
        cache, etag = self._cache, self._cacheEtag
        if etag is not None and all(key in cache for work, _ in jobs for key in work.keys):
            # One round trip: the documents and counters as our last commit
            # left them, checked under the lock (L{GUARD_SQL}).
            batch.phase = "fast"
            self.fastBatches += 1
            known = {key: cache[key] for work, _ in jobs for key in work.keys}
            if self._operate(batch, etag, self._cacheFloor, known):
                try:
                    # (No BEGIN, no COMMIT: the statements up to the sync are
                    # one implicit transaction, committed at the sync, whose
                    # answer comes once the commit is durable.)
                    self._sendWrites(batch, [
                        self.send("lock", LOCK_SQL, [], batch),
                        self.send("guard", GUARD_SQL, [b"%d" % etag], batch),
                    ])
                except Exception as e:
                    self.lost(e)
            return
        self._lock(batch)

    def _lock(self, batch: _Batch) -> None:
        """Step 1 (two round trips): lock, and read the documents the batch names."""
        batch.phase = "lock"
        batch.theirs = None
        wanted = list(dict.fromkeys(key for work, _ in batch.jobs for key in work.keys))
        try:
            batch.statements = [
                self.sendPlain("begin", b"BEGIN", batch),
                self.send("lock", LOCK_SQL, [], batch),
                self.send("known", KNOWN_SQL, [KEY_SEPARATOR.join(wanted).encode()], batch),
            ]
            self.sync(batch)
        except Exception as e:
            self.lost(e)

    def synced(self, statement: Statement) -> None:
        if self.heardListen(statement):
            return
        batch = self._batch
        if batch is None or statement.owner is not batch:
            return  # (a rollback's sync)
        failed = self._failed(batch.statements)
        if failed is None:
            if batch.phase == "lock":
                self._commit(batch)
            else:
                self._done(batch)
        elif (batch.phase == "fast" and failed != "skipped"
              and failed.error_field(ord("C")) == _GUARD_FAILED):
            # Another writer committed since our last commit: nothing of
            # this batch was written; run it again in two round trips.
            # (The implicit transaction was rolled back at the sync.)
            self.guardMisses += 1
            self._forget()
            self._lock(batch)
        else:
            self._fail(batch, failed)

    @staticmethod
    def _failed(statements: list[Statement]) -> Any:
        """The first result that is not a success (or C{"skipped"}), else C{None}."""
        from psycopg.pq import ExecStatus

        for statement in statements:
            result = statement.result
            if result is None:
                return "skipped"
            if result.status not in (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK):
                return result
        return None

    def _commit(self, batch: _Batch) -> None:
        """Step 2: the operations, then the writes, counters, doorbell, COMMIT."""
        lock, known = batch.statements[1].result, batch.statements[2].result
        get = lock.get_value
        counters = batch.counters = {
            get(row, 0).decode(): int(get(row, 1)) for row in range(lock.ntuples)}
        found: dict[str, tuple[str, int] | None] = {}
        get = known.get_value
        for row in range(known.ntuples):
            found[get(row, 0).decode()] = (get(row, 1).decode(), int(get(row, 2)))
        wanted = {key: found.get(key) for work, _ in batch.jobs for key in work.keys}
        if counters["etag"] != self._cacheEtag:
            self._cache.clear()  # (others wrote since our last commit)
        if self._operate(batch, counters["etag"], counters["log_floor"], wanted, rollback=True):
            batch.phase = "commit"
            try:
                self._sendWrites(batch, [])
            except Exception as e:
                self.lost(e)

    def _operate(self, batch: _Batch, etag: int, floor: int,
                 known: dict[str, tuple[str, int] | None], rollback: bool = False) -> bool:
        """Run the batch's operations in Python; C{False}: they failed it (answered)."""
        batch.counters = {"etag": etag, "log_floor": floor}
        writes = batch.writes = WriteBatch(etag, known)
        try:
            batch.outcomes = writes.run([work for work, _ in batch.jobs])
        except Exception:
            # (An operation that is neither a PUT nor a DELETE: the store
            # sends none here.) Nothing was written.
            if rollback:
                self._rollback()
            self._batch = None
            failure = Failure()
            self._fire(batch, [failure] * len(batch.jobs))
            return False
        return True

    def _sendWrites(self, batch: _Batch, statements: list[Statement]) -> None:
        """Step 2: the writes, counters, doorbell and COMMIT, after C{statements}, and a sync."""
        writes = batch.writes
        assert writes is not None
        counters = batch.counters
        deletes, upserts, logRows = writes.takeWrites()
        send = self.send
        if writes.lastEtag != writes.before:  # (no change: nothing to write)
            # Every write, the counter and the doorbell in one statement.
            statements.append(send("write", BATCH_WRITE_SQL, [
                KEY_SEPARATOR.join(deletes).encode(),
                textArray([u[0] for u in upserts]), textArray([u[1] for u in upserts]),
                intArray([u[2] for u in upserts]), byteaArray([u[3] for u in upserts]),
                intArray([r[0] for r in logRows]), textArray([r[1] for r in logRows]),
                textArray([r[2] for r in logRows]), intArray([r[3] for r in logRows]),
                b"%d" % writes.lastEtag, CHANNEL.encode(), b"%d" % writes.lastEtag,
            ], formats=BATCH_WRITE_FORMATS))
            newFloor = writes.newFloor(counters["log_floor"], self._retain)
            if newFloor is not None:
                counters["log_floor"] = newFloor
                statements.append(send("write", PRUNE_SQL, [b"%d" % newFloor]))
                statements.append(send("write", SET_FLOOR_SQL, [b"%d" % newFloor]))
            published = self._published()
            if writes.before > published:
                # Others committed since we last published: theirs go
                # first (the hub gets every etag, in order), read under
                # the lock, where every change up to "before" is committed.
                batch.theirs = send("write", LOG_RANGE_SQL,
                                    [b"%d" % published, b"%d" % writes.before])
                statements.append(batch.theirs)
        if batch.phase != "fast":
            statements.append(self.sendPlain("commit", b"COMMIT"))
        batch.statements = statements
        self.sync(batch)

    def _done(self, batch: _Batch) -> None:
        """The COMMIT is acknowledged: publish, then answer every write."""
        self._batch = None
        self.batches += 1
        writes = batch.writes
        assert writes is not None
        changes = writes.changes
        if batch.theirs is not None and changes:
            result = batch.theirs.result
            get = result.get_value
            theirs = [
                Change(get(row, 1).decode(),
                       PUT if int(get(row, 2)) == CHANGE_PUT else DELETE, int(get(row, 0)))
                for row in range(result.ntuples)
            ]
            changes = theirs + changes
        if changes:
            self.delivered = changes[-1].etag
        # What this commit left: the next batch may take it as known.
        if len(self._cache) + len(writes.known) > MAX_CACHED:
            self._cache.clear()
        self._cache.update(writes.known)
        self._cacheEtag, self._cacheFloor = writes.lastEtag, batch.counters["log_floor"]
        self._committed(len(batch.jobs), BatchResult(changes, len(batch.jobs)),
                        time.perf_counter() - batch.started)
        self._fire(batch, batch.outcomes)

    def _fire(self, batch: _Batch, outcomes: list[Any]) -> None:
        self._answered(len(batch.jobs))
        for (_, deferred), outcome in zip(batch.jobs, outcomes):
            if deferred.called:
                continue  # Cancelled while running: nobody is waiting.
            if isinstance(outcome, Failure):
                deferred.errback(outcome)
            else:
                deferred.callback(outcome)
        self._next()

    def _next(self) -> None:
        if self._queue and self._batch is None and not self._scheduled:
            self._begin()

    def _fail(self, batch: _Batch, failed: Any) -> None:
        """
        A statement was refused: roll back, fail the batch with its error;
        but one refused for our prepared statement (gone, or stale after a
        schema change: prepared again next time) goes to the writer thread
        (nothing of it was written).
        """
        from psycopg import errors

        self._batch = None
        self._forget()
        if batch.phase != "fast":  # (else the implicit transaction ended at the sync)
            self._rollback()
        if failed != "skipped" and (failed.error_field(ord("C")) or b"") in _NOT_PREPARED:
            jobs, batch.jobs = batch.jobs, []
            for work, deferred in jobs:
                self._failOver(work, deferred)
            self._next()
            return
        if failed == "skipped":
            error: Exception = RuntimeError("a statement of the write batch was skipped")
        else:
            error = errors.error_from_result(failed, encoding="utf-8")
        problem = trouble(error, self.where)
        self._fire(batch, [Failure(problem)] * len(batch.jobs))

    def _rollback(self) -> None:
        try:
            self.sendPlain("rollback", b"ROLLBACK")
            self.sync(None)
        except Exception as e:
            self.lost(e)

    def failInFlight(self, expected: list[Statement], error: Any) -> None:
        """
        The connection is lost: a batch whose writes were not sent, and the
        writes queued, go to the writer thread; a batch whose COMMIT was
        sent fails, its outcome unknown.
        """
        self._forget()
        batch, self._batch = self._batch, None
        if batch is not None:
            if batch.phase == "lock":
                jobs, batch.jobs = batch.jobs, []
                for work, deferred in jobs:
                    self._failOver(work, deferred)
            else:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                problem = StoreUnavailableError(
                    f"the database is unreachable (PostgreSQL at {self.where}: {first}); "
                    "the outcome of this write is unknown; the server reconnects by itself"
                )
                self._fire(batch, [Failure(problem)] * len(batch.jobs))
        self._handOver()
