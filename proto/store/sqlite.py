"""
The document store in one SQLite file, off the reactor thread.

Threads
=======
SQLite calls block, so none runs on the reactor thread. The store has two
threads, each with its own connection, each running a L{_Worker} loop:

  - the B{writer} takes I{everything} queued since its last turn, runs it
    in one transaction and commits once (group commit). With
    C{synchronous=FULL} a commit waits for the disk, so while one commit is
    in progress the next batch piles up and is committed by the next
    fsync: write throughput grows with the number of concurrent writers
    instead of being capped at one write per fsync. L{SQLiteStore.commits}
    and L{SQLiteStore.writes} count transactions and the operations in
    them.
  - the B{reader} does the same for reads, each batch in one read
    transaction. The file is in WAL mode, so reads run concurrently with
    the writer and see the last committed state. A read issued while
    writes are unfinished joins the writer's queue instead, behind them
    (read-your-writes; see L{SQLiteStore.get}).

Results go back to the reactor thread with C{callFromThread}. After a
write batch has committed, first each of its changes is published to the
hub, then the Deferreds fire. So a WATCH sees a change only once it is
durable, and a writer told "done" knows every watcher in the process has
already been handed the change.

Cancellation
============
Cancelling an operation's Deferred while it is still queued removes it:
it never runs (a timed-out PUT is never committed). Once the worker has
taken it into a batch it runs to its end; the Deferred has already failed
with C{CancelledError}, and a write is still committed and published.
There is no way to take one operation out of a transaction that is
already committing, and a client told "Timeout" must treat the outcome of
its write as unknown anyway.

Schema
======
C{documents(key, id, etag, body)}, where C{key} is the case-folded id
(L{proto.store.base.idKey}), C{id} the id as first written and C{body}
the JSON text as PUT (UTF-8 bytes); and C{counters(name, value)} holding
the last etag handed out, so etags keep growing across deletes and
restarts.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from proto.store.base import (
    DELETE,
    PUT,
    ConflictError,
    Document,
    IDocumentStore,
    StoreClosedError,
    StoreError,
    Version,
    checkId,
    idKey,
)

#: The file name of the store inside the data directory.
DEFAULT_FILE_NAME = "documents.sqlite3"

#: How many ids go into one C{IN (...)} (SQLite limits bound parameters).
_CHUNK = 500

#: How long a connection waits for a lock held by another process.
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    key TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    etag INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('etag', 0);
"""

#: A change to publish: (stored id, L{PUT} or L{DELETE}, etag).
Change = tuple[str, str, int]


def _select(connection: sqlite3.Connection, keys: Sequence[str]) -> list[Document | None]:
    """Look documents up by key; C{None} where there is none."""
    found: dict[str, Document] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for key, id, etag, body in connection.execute(
            f"SELECT key, id, etag, body FROM documents WHERE key IN ({marks})",
            chunk,
        ):
            found[key] = Document(id, etag, body)
    return [found.get(key) for key in keys]


def _connect(path: str) -> sqlite3.Connection:
    """Open C{path} in autocommit mode: transactions are explicit."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return connection


class _WriteSession:
    """
    The writer thread's connection and the etag counter. Lives on (and is
    only touched by) the writer thread.

    @ivar changes: the changes made by the batch in progress.
    """

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._connection = _connect(path)
        try:
            (mode,) = self._connection.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode.lower() != "wal":
                raise StoreError(
                    f"{path}: SQLite refused WAL journal mode (got {mode!r})"
                )
            self._connection.execute("PRAGMA synchronous = FULL")
            self._connection.executescript(_SCHEMA)
            (self._lastEtag,) = self._connection.execute(
                "SELECT value FROM counters WHERE name = 'etag'"
            ).fetchone()
        except BaseException:
            self._connection.close()
            raise
        self.changes: list[Change] = []

    def close(self) -> None:
        self._connection.close()

    def runBatch(
        self, works: Sequence[Callable[["_WriteSession"], Any]]
    ) -> tuple[list[Any], list[Change]]:
        """
        Run C{works} in one transaction and commit it.

        A L{ConflictError} fails only its own operation (it wrote nothing).
        Anything else rolls the whole transaction back and propagates.

        @return: each work's result or L{Failure}, and the changes made.
        """
        self.changes = []
        firstEtag = self._lastEtag
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._attempt(work) for work in works]
            if self._lastEtag != firstEtag:
                self._connection.execute(
                    "UPDATE counters SET value = ? WHERE name = 'etag'",
                    (self._lastEtag,),
                )
            self._connection.execute("COMMIT")
        except BaseException:
            self._lastEtag = firstEtag
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            raise
        return outcomes, self.changes

    def _attempt(self, work: Callable[["_WriteSession"], Any]) -> Any:
        try:
            return work(self)
        except ConflictError:
            return Failure()

    def _nextEtag(self) -> int:
        self._lastEtag += 1
        return self._lastEtag

    def _find(self, key: str) -> tuple[str, int] | None:
        return self._connection.execute(
            "SELECT id, etag FROM documents WHERE key = ?", (key,)
        ).fetchone()

    def put(self, key: str, id: str, body: bytes, ifMatch: int | None) -> Version:
        found = self._find(key)
        if ifMatch is not None:
            actual = None if found is None else found[1]
            if (actual or 0) != ifMatch:
                raise ConflictError(id, ifMatch, actual)
        storedId = id if found is None else found[0]
        etag = self._nextEtag()
        self._connection.execute(
            "INSERT INTO documents (key, id, etag, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, body = excluded.body",
            (key, storedId, etag, body),
        )
        self.changes.append((storedId, PUT, etag))
        return Version(storedId, etag)

    def get(self, keys: Sequence[str]) -> list[Document | None]:
        """A read ordered after the writes queued before it (see L{SQLiteStore.get})."""
        return _select(self._connection, keys)

    def delete(self, keys: Sequence[str]) -> list[Version]:
        deleted = []
        for key in keys:
            found = self._find(key)
            if found is None:
                continue
            self._connection.execute("DELETE FROM documents WHERE key = ?", (key,))
            version = Version(found[0], self._nextEtag())
            self.changes.append((version.id, DELETE, version.etag))
            deleted.append(version)
        return deleted


class _ReadSession:
    """The reader thread's connection. Only touched by the reader thread."""

    def __init__(self, path: str) -> None:
        self._connection = _connect(path)
        self._connection.execute("PRAGMA query_only = ON")

    def close(self) -> None:
        self._connection.close()

    def runBatch(
        self, works: Sequence[Callable[["_ReadSession"], Any]]
    ) -> tuple[list[Any], None]:
        """Run C{works} in one read transaction: they see one snapshot."""
        self._connection.execute("BEGIN")
        try:
            return [work(self) for work in works], None
        finally:
            self._connection.execute("COMMIT")

    def get(self, keys: Sequence[str]) -> list[Document | None]:
        return _select(self._connection, keys)


class _Job:
    """One queued operation: what to run on the worker thread, and for whom."""

    QUEUED, RUNNING, CANCELLED = "queued", "running", "cancelled"

    def __init__(self, work: Callable[[Any], Any], lock: threading.Condition) -> None:
        """
        @param lock: the worker's lock, which guards C{state}.
        """
        self.work = work
        self.state = self.QUEUED
        self.deferred: Deferred[Any] = Deferred(self._cancel)
        self._lock = lock

    def _cancel(self, deferred: Deferred[Any]) -> None:
        # Still queued: the worker will skip it. Already running: too late;
        # Deferred.cancel fails the Deferred with CancelledError either way.
        with self._lock:
            if self.state == self.QUEUED:
                self.state = self.CANCELLED


class _Worker:
    """
    A thread with one session (connection) that runs queued jobs in
    batches: it takes every job queued since its last turn and hands them
    to C{session.runBatch} together.

    Jobs are submitted, and their Deferreds fire, on the reactor thread.
    """

    def __init__(
        self,
        name: str,
        openSession: Callable[[], Any],
        reactor: Any,
        batchDone: Callable[[int, Any], None] | None = None,
    ) -> None:
        """
        @param name: for the thread's name and errors.
        @param openSession: opens the session, on the worker's thread.
        @param reactor: provides C{callFromThread}.
        @param batchDone: called on the reactor thread with the size of
            each successful batch, what C{session.runBatch} returned
            besides the results, and the seconds the batch took (its
            transaction, commit included), before the batch's Deferreds
            fire.
        """
        self._name = name
        self._openSession = openSession
        self._reactor = reactor
        self._batchDone = batchDone
        self._lock = threading.Condition()
        self._queue: list[_Job] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready: Deferred[None] = Deferred()
        self._stopWaiters: list[Deferred[None]] | None = []

    def submit(self, work: Callable[[Any], Any]) -> Deferred[Any]:
        """Queue C{work(session)}; the result fires on the reactor thread."""
        job = _Job(work, self._lock)
        with self._lock:
            if self._stopping:
                return fail(StoreClosedError(f"the store's {self._name} is closed"))
            self._queue.append(job)
            self._lock.notify()
        return job.deferred

    def start(self) -> Deferred[None]:
        """Start the thread; fires once the session is open."""
        with self._lock:
            if self._stopping:
                return fail(StoreClosedError(f"the store's {self._name} is closed"))
        self._thread = threading.Thread(
            target=self._main, name=f"proto-store-{self._name}", daemon=True
        )
        self._thread.start()
        return self._ready

    def stop(self) -> Deferred[None]:
        """
        Take no more jobs, run those queued, close the session, end the
        thread. Fires when the thread has ended.
        """
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is None:
            self._ended()
        if self._stopWaiters is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stopWaiters.append(waiter)
        return waiter

    def _main(self) -> None:
        try:
            session = self._openSession()
        except Exception:
            self._reactor.callFromThread(self._failedToOpen, Failure())
            return
        self._reactor.callFromThread(self._ready.callback, None)
        try:
            while (jobs := self._take()) is not None:
                started = time.perf_counter()
                try:
                    outcomes, info = session.runBatch([job.work for job in jobs])
                except Exception:
                    failure = Failure()
                    outcomes, info = [failure] * len(jobs), None
                seconds = time.perf_counter() - started
                self._reactor.callFromThread(self._deliver, jobs, outcomes, info, seconds)
        finally:
            session.close()
            self._reactor.callFromThread(self._ended)

    def _take(self) -> list[_Job] | None:
        """Wait for jobs; return all those queued, or C{None} when stopped."""
        with self._lock:
            while True:
                jobs = [job for job in self._queue if job.state == _Job.QUEUED]
                self._queue = []
                if jobs:
                    for job in jobs:
                        job.state = _Job.RUNNING
                    return jobs
                if self._stopping:
                    return None
                self._lock.wait()

    def _deliver(self, jobs: list[_Job], outcomes: list[Any], info: Any, seconds: float) -> None:
        if self._batchDone is not None and info is not None:
            self._batchDone(len(jobs), info, seconds)
        for job, outcome in zip(jobs, outcomes):
            if job.deferred.called:
                continue  # Cancelled while running: nobody is waiting.
            if isinstance(outcome, Failure):
                job.deferred.errback(outcome)
            else:
                job.deferred.callback(outcome)

    def _failedToOpen(self, failure: Failure) -> None:
        with self._lock:
            self._stopping = True
        self._ready.errback(failure)
        self._ended()

    def _ended(self) -> None:
        """The thread is gone (or never ran): fail what is left, tell the waiters."""
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            leftover, self._queue = self._queue, []
        for job in leftover:
            if not job.deferred.called:
                job.deferred.errback(
                    StoreClosedError(f"the store's {self._name} is closed")
                )
        waiters, self._stopWaiters = self._stopWaiters or [], None
        for waiter in waiters:
            waiter.callback(None)


@implementer(IDocumentStore)
class SQLiteStore:
    """
    L{IDocumentStore} in one SQLite file (WAL, C{synchronous=FULL}), with a
    group-committing writer thread and a reader thread.

    @ivar path: the database file.
    @ivar commits: write transactions committed so far.
    @ivar writes: operations run in those transactions (so C{writes /
        commits} is the mean group-commit batch size); a read that had to
        queue behind unfinished writes runs there too and is counted.
    """

    def __init__(self, path: str, hub: Any = None, reactor: Any = None) -> None:
        """
        @param path: the database file (created, with its directory, if
            missing).
        @param hub: a L{proto.hub.ChangeHub} (anything with
            C{publish(id, type, etag)}) told of every committed change, or
            C{None}.
        @param reactor: provides C{callFromThread}; the global reactor by
            default.
        """
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self.path = path
        self.commits = 0
        self.writes = 0
        #: Called as C{commitObserver(operations, seconds)} after each
        #: write transaction commits (the metrics use it), or C{None}.
        self.commitObserver: Callable[[int, float], None] | None = None
        self._unfinishedWrites = 0
        self._reactor = reactor
        self._hub = hub
        self._started = False
        self._writer = _Worker(
            "writer", lambda: _WriteSession(path), reactor, self._committed
        )
        self._reader = _Worker("reader", lambda: _ReadSession(path), reactor)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    def start(self) -> Deferred[None]:
        if self._started:
            return fail(StoreError(f"{self!r} is already started"))
        self._started = True
        # The writer creates the schema, so the reader opens after it.
        started = self._writer.start()
        started.addCallback(lambda _: self._reader.start())
        started.addErrback(self._startFailed)
        return started

    def _startFailed(self, failure: Failure) -> Failure:
        self.close()
        return failure

    def close(self) -> Deferred[None]:
        closing = [self._writer.stop(), self._reader.stop()]
        done = closing[0].addCallback(lambda _: closing[1])
        return done.addCallback(lambda _: None)

    def get(self, ids: Sequence[str]) -> Deferred[list[Document | None]]:
        """
        Reads see every write submitted before them (read-your-writes, so a
        client may pipeline PUT then GET): while writes are unfinished the
        read joins the writer's queue, behind them; otherwise the reader
        thread serves it, concurrently with the writer.
        """
        try:
            keys = [checkId(id) for id in ids]
        except ValueError:
            return fail()
        worker = self._writer if self._unfinishedWrites else self._reader
        return worker.submit(lambda session: session.get(keys))

    def getWithReferences(
        self,
        ids: Sequence[str],
        references: Callable[[list[Document | None]], Iterable[str]],
    ) -> Deferred[tuple[list[Document | None], list[Document]]]:
        """
        Like L{get}, and in the same read transaction the documents that
        C{references(results)} names: one trip to the worker thread, one
        snapshot.
        """
        try:
            keys = [checkId(id) for id in ids]
        except ValueError:
            return fail()

        def work(session: Any) -> tuple[list[Document | None], list[Document]]:
            results = session.get(keys)
            found = {idKey(doc.id): doc for doc in results if doc is not None}
            wanted: dict[str, None] = {}  # ordered, unique
            for id in references(results):
                try:
                    wanted[checkId(id)] = None
                except ValueError:
                    continue
            missing = [key for key in wanted if key not in found]
            if missing:
                for doc in session.get(missing):
                    if doc is not None:
                        found[idKey(doc.id)] = doc
            return results, [found[key] for key in wanted if key in found]

        worker = self._writer if self._unfinishedWrites else self._reader
        return worker.submit(work)

    def backup(self, directory: str) -> Deferred[str]:
        """
        Write a consistent copy of the store into C{directory} (created if
        missing) with SQLite's online backup API; fires with its path.

        It runs on a thread of its own with its own connection, copying
        every page in one step, inside one read transaction: in WAL mode a
        reader never blocks the writer, so writes go on while it copies, and
        the copy is the store as of one commit. The file is written under a
        temporary name and renamed when complete, so a half-written backup
        is never mistaken for one. To restore, start a server on it (copy
        it to the data directory as L{DEFAULT_FILE_NAME}).
        """
        from twisted.internet.threads import deferToThreadPool

        source = self.path

        def copy() -> str:
            os.makedirs(directory, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            base = os.path.join(directory, f"documents-{stamp}")
            path, n = base + ".sqlite3", 1
            while os.path.exists(path):
                n += 1
                path = f"{base}-{n}.sqlite3"
            tmp = path + ".partial"
            src = _connect(source)
            try:
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst, pages=-1)
                    dst.execute("PRAGMA journal_mode = DELETE")
                finally:
                    dst.close()
            finally:
                src.close()
            os.replace(tmp, path)
            return path

        reactor = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), copy)

    #: What BACKUP says when a store cannot (not used by SQLite).
    backupAdvice = None

    def summary(self) -> Deferred[dict[str, int]]:
        """
        C{{"Documents": count, "Etag": last etag}} for STATS, read in one
        snapshot after every write submitted before it.
        """

        def work(session: Any) -> dict[str, int]:
            connection = session._connection
            (count,) = connection.execute("SELECT count(*) FROM documents").fetchone()
            (etag,) = connection.execute(
                "SELECT value FROM counters WHERE name = 'etag'"
            ).fetchone()
            return {"Documents": count, "Etag": etag}

        worker = self._writer if self._unfinishedWrites else self._reader
        return worker.submit(work)

    def put(self, id: str, body: bytes, ifMatch: int | None = None) -> Deferred[Version]:
        try:
            key = checkId(id)
        except ValueError:
            return fail()
        return self._write(lambda session: session.put(key, id, body, ifMatch))

    def delete(self, ids: Sequence[str]) -> Deferred[list[Version]]:
        try:
            keys = [checkId(id) for id in ids]
        except ValueError:
            return fail()
        return self._write(lambda session: session.delete(keys))

    def _write(self, work: Callable[[_WriteSession], Any]) -> Deferred[Any]:
        self._unfinishedWrites += 1
        d = self._writer.submit(work)
        d.addBoth(self._writeFinished)
        return d

    def _writeFinished(self, result: Any) -> Any:
        self._unfinishedWrites -= 1
        return result

    def _committed(self, size: int, changes: list[Change], seconds: float) -> None:
        """On the reactor thread, after a write batch committed."""
        self.commits += 1
        self.writes += size
        if self.commitObserver is not None:
            self.commitObserver(size, seconds)
        if self._hub is not None:
            for id, type, etag in changes:
                self._hub.publish(id, type, etag)
