"""
What every store backend's facade shares (L{proto.store.sqlite.SQLiteStore},
L{proto.store.postgres.PostgresStore}): the commit counters, the publisher
of committed changes, the write path (ids checked, read-your-writes
bookkeeping), and the reads that are views of L{IDocumentStore.read}.

A backend provides C{read}, C{start}, C{close}, a C{_reader} worker whose
sessions answer C{changes(since, prefixKey, limit)} and C{counter(name)},
and a C{_writer} worker (L{proto.store.sqlite_worker.Worker})
whose sessions run C{put(key, id, body, ifMatch)} and C{delete(keys)};
each write work carries C{keys}, the keys it reads, so a backend may read
them together with the batch's lock (PostgreSQL does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Sequence, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from proto.store.base import ChangePage, Document, Snapshot, Version, checkId, idKey
from proto.store.reopen import firstLine
from proto.store.sqlite_publisher import Publisher

if TYPE_CHECKING:
    from proto.store.sqlite_worker import Worker

T = TypeVar("T")

#: The most changes one L{StoreFacade.changesSince} returns.
MAX_PAGE = 10_000


class KeyedWork(Generic[T]):
    """
    A write for the writer (C{work(session)}) and the keys it reads, which
    a backend may read together with the batch's lock (PostgreSQL does).
    """

    __slots__ = ("run", "keys")

    def __init__(self, run: Callable[[Any], T], keys: Sequence[str]) -> None:
        self.run = run
        self.keys = keys

    def __call__(self, session: Any) -> T:
        return self.run(session)


class PutWork:
    """
    A PUT for the writer: C{work(session)} runs C{session.put}, and its
    parts are kept, so that a backend may run a run of PUTs together (the
    SQLite writer does: L{proto.store.sqlite_write.WriteSession.putMany}).
    C{keys}: as L{KeyedWork}'s.
    """

    __slots__ = ("key", "id", "body", "ifMatch", "keys")

    def __init__(self, key: str, id: str, body: bytes, ifMatch: int | None) -> None:
        self.key = key
        self.id = id
        self.body = body
        self.ifMatch = ifMatch
        self.keys = (key,)

    def __call__(self, session: Any) -> Version:
        return session.put(self.key, self.id, self.body, self.ifMatch)


class StoreFacade:
    """
    @ivar commits: write transactions committed so far.
    @ivar writes: operations run in those transactions (so C{writes /
        commits} is the mean group-commit batch size).
    @ivar retainChanges: the change log keeps at least this many changes.
    """

    #: Writes submitted and not finished yet: while there are any, reads
    #: queue behind them on the writer (read-your-writes).
    _unfinishedWrites = 0

    #: Why the store is not open: its start failed, or (PostgreSQL) it is
    #: still trying to open; C{None} otherwise. The message operations
    #: fail with (L{proto.store.base.StoreNotOpenedError}); the
    #: supervisor's C{/healthz} reads it from the workers' snapshots.
    notOpenReason: str | None = None

    # -- what each backend provides (see the module docstring) -------------------
    _writer: Worker
    _workers: Callable[[], list[Worker]]
    close: Callable[[], Deferred[None]]
    read: Callable[..., Deferred[Snapshot]]
    if TYPE_CHECKING:

        @property
        def _reader(self) -> Worker:
            """A reader worker (PostgreSQL: the next of several, in turn)."""

    def __init__(self, hub: Any, retainChanges: int) -> None:
        """
        @param hub: a L{proto.hub.ChangeHub} told of every committed
            change (of every process sharing the store), or C{None}.
        @raise ValueError: if C{retainChanges} is below 1.
        """
        if retainChanges < 1:
            raise ValueError("retainChanges must be at least 1: the log is the source of WATCH")
        self.commits = 0
        self.writes = 0
        #: Called as C{commitObserver(operations, seconds)} after each
        #: write transaction commits (the metrics use it), or C{None}.
        self.commitObserver: Callable[[int, float], None] | None = None
        self.retainChanges = retainChanges
        self._started = False
        self._publisher = Publisher(hub) if hub is not None else None

    def _published(self) -> int:
        """The publisher's position (0 without a hub), for the writer thread."""
        return self._publisher.etag if self._publisher is not None else 0

    def _startFailed(self, failure: Failure) -> Failure:
        """The one attempt to open failed (SQLite): close, and say so to every operation."""
        self._notOpened(firstLine(failure), retrying=False)
        self.close()
        return failure

    def _notOpened(self, reason: str, retrying: bool) -> None:
        """
        Operations (queued or later) fail with the reason, in words for the
        client (C{ERR Store unavailable: ...}), not as closed workers: the
        store retries by itself (C{retrying}: L{proto.store.reopen}), or
        the server must be restarted once the cause is fixed.
        """
        if retrying:
            message = f"the document store is not open yet: {reason} (retrying)"
        else:
            message = (
                f"the document store could not be opened at start ({reason}); "
                "restart the server once that is fixed"
            )
        self.notOpenReason = message
        for worker in self._workers():
            worker.notOpened = message

    # -- reads -------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> Deferred[list[Document | None]]:
        return self.read(ids).addCallback(lambda found: found.results)

    def getWithReferences(
        self,
        ids: Sequence[str],
        references: Callable[[list[Document | None]], Iterable[str]],
    ) -> Deferred[tuple[list[Document | None], list[Document]]]:
        return self.read(ids, references).addCallback(
            lambda found: (found.results, found.includes)
        )

    def changesSince(self, since: int, prefix: str = "", limit: int = 1000) -> Deferred[ChangePage]:
        prefixKey = idKey(prefix)
        limit = max(1, min(limit, MAX_PAGE))
        return self._reader.submit(lambda session: session.changes(since, prefixKey, limit))

    def currentEtag(self) -> Deferred[int]:
        return self._reader.submit(lambda session: session.counter("etag"))

    # -- writes ------------------------------------------------------------------

    def put(self, id: str, body: bytes, ifMatch: int | None = None) -> Deferred[Version]:
        try:
            key = checkId(id)
        except ValueError:
            return fail()

        return self._write(PutWork(key, id, bytes(body), ifMatch))

    def delete(self, ids: Sequence[str]) -> Deferred[list[Version]]:
        try:
            keys = [checkId(id) for id in ids]
        except ValueError:
            return fail()

        def work(session: Any) -> list[Version]:
            return session.delete(keys)

        return self._write(KeyedWork(work, keys))

    def _write(self, work: Callable[[Any], Any]) -> Deferred[Any]:
        self._unfinishedWrites += 1
        d = self._writer.submit(work)
        d.addBoth(self._writeFinished)
        return d

    def _writeFinished(self, result: Any) -> Any:
        self._unfinishedWrites -= 1
        return result

    def _committed(self, size: int, batch: Any, seconds: float | None = None) -> None:
        """On the reactor thread, after a write batch committed (in C{seconds})."""
        self.commits += 1
        self.writes += size
        if self.commitObserver is not None and seconds is not None:
            self.commitObserver(size, seconds)
        if self._publisher is not None:
            if batch.changes:
                # (Only a batch with changes of its own hands over other
                # processes' changes: see the doorbell.)
                self._publisher.ownCommits += 1
            self._publisher.deliver(batch.changes)
