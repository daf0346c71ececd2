"""
The PostgreSQL store's sessions: one connection per thread (writer,
reader), connected again when lost, and what a lost database becomes.

The reads they run are L{proto.store.postgres_reads}; the writer's
transaction (one per batch: group commit) is L{proto.store.postgres_batch}.
A lost connection is not fatal: the next batch connects again (at most
one attempt per L{RETRY_SECONDS}; meanwhile batches fail at once), and
every failure is a L{StoreUnavailableError} with a reason for the client.

(The reads' names are re-exported here: they lived in this module.)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.store.base import (
    Change,
    ChangePage,
    Snapshot,
    StorageFullError,
    StoreError,
    StoreUnavailableError,
    Version,
)
from proto.store.postgres_batch import (
    DELETE_SQL,
    KNOWN_SQL,
    LOCK_SQL,
    LOG_SQL,
    NOTIFY_SQL,
    PRUNE_SQL,
    SET_ETAG_SQL,
    SET_FLOOR_SQL,
    UPSERT_SQL,
    WriteBatch,
)
from proto.store.postgres_reads import (
    KEY_SEPARATOR,
    PREFETCH_MAX,
    IncludeRead,
    PlainRead,
    References,
    changes,
    counter,
    includeRead,
    jsonPath,
    logRange,
    plainRead,
    plainReads,
    plainSnapshots,
    plainStatement,
    prefetchedReads,
    prefetchedSnapshots,
    prefetchStatement,
    select,
    snapshot,
    snapshotInclude,
)
from proto.store.postgres_schema import CHANNEL, connect, displayed
from proto.store.sqlite_write import BatchResult, attempt

__all__ = [
    "KEY_SEPARATOR", "PREFETCH_MAX", "IncludeRead", "PlainRead", "References", "changes",
    "counter", "includeRead", "jsonPath", "logRange", "plainRead", "plainReads",
    "plainSnapshots", "plainStatement", "prefetchedReads", "prefetchedSnapshots",
    "prefetchStatement", "select", "snapshot", "snapshotInclude",
    "RETRY_SECONDS", "trouble", "Session", "ReadSession", "WriteSession",
]

#: After a failed connection attempt, batches fail at once for this long
#: before the next attempt.
RETRY_SECONDS = 1.0


# -- errors -------------------------------------------------------------------------------


def trouble(error: BaseException, where: str, committing: bool = False) -> Exception:
    """What a psycopg error becomes: a reason for the client, or an internal error."""
    import psycopg
    from psycopg import errors

    if isinstance(error, errors.DiskFull):
        return StorageFullError(f"the PostgreSQL database has no room left ({error}); "
                                "free space on its server or delete documents")
    if isinstance(error, (errors.QueryCanceled, errors.LockNotAvailable)):
        return StoreUnavailableError(
            "the database did not answer in time (PostgreSQL at "
            f"{where}); the outcome of a write is unknown"
        )
    if isinstance(error, psycopg.OperationalError):
        outcome = "; the outcome of this write is unknown" if committing else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StoreUnavailableError(
            f"the database is unreachable (PostgreSQL at {where}: {first}){outcome}; "
            "the server reconnects by itself"
        )
    return StoreError(f"PostgreSQL error ({where}): {error}")


class Session:
    """
    One thread's connection, connected again when lost. Only touched by
    its thread.
    """

    _log = Logger()

    def __init__(self, conninfo: str, what: str) -> None:
        self._conninfo = conninfo
        self.where = displayed(conninfo)
        self._what = what
        self._failedAt: float | None = None
        self._lastError: BaseException | None = None
        self.connection: Any = None
        self.connection = connect(conninfo, what)  # At start, a failure is the caller's.
        #: The connection's backend process (read by the listener's thread).
        self.backendPid: int | None = self.connection.info.backend_pid

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def live(self) -> Any:
        """
        The connection, connected again if it was lost.

        @raise StoreUnavailableError: if the database cannot be reached.
        """
        connection = self.connection
        if connection is not None and not connection.closed and not connection.broken:
            return connection
        self.close()
        now = time.monotonic()
        if self._failedAt is not None and now - self._failedAt < RETRY_SECONDS:
            assert self._lastError is not None  # (set with _failedAt)
            raise trouble(self._lastError, self.where)
        import psycopg

        try:
            self.connection = connect(self._conninfo, self._what)
            self.backendPid = self.connection.info.backend_pid
        except psycopg.Error as e:
            if self._failedAt is None:
                self._log.error("PostgreSQL store ({what}): cannot connect to {where}: {error}",
                                what=self._what, where=self.where, error=e)
            self._failedAt, self._lastError = now, e
            raise trouble(e, self.where) from None
        if self._failedAt is not None or self._lastError is not None:
            self._log.info("PostgreSQL store ({what}): connected again to {where}",
                           what=self._what, where=self.where)
        self._failedAt = self._lastError = None
        return self.connection

    def lost(self, error: BaseException) -> None:
        """A statement failed: forget a broken connection (logged once)."""
        if self.connection is not None and (self.connection.broken or self.connection.closed):
            self._log.error("PostgreSQL store ({what}): lost the connection to {where}: {error}",
                            what=self._what, where=self.where, error=error)
            self._lastError = error
            self.close()

    def rollback(self) -> None:
        connection = self.connection
        if connection is not None and not connection.broken and not connection.closed:
            try:
                connection.execute("ROLLBACK")
            except Exception:
                self.close()


class ReadSession(Session):
    """
    The reader thread's session. A GET without Include is one statement;
    what takes several (Include, a page of the change log) runs in one
    read-only snapshot (L{inSnapshot}).
    """

    def __init__(self, conninfo: str) -> None:
        super().__init__(conninfo, "reader")

    def runBatch(self, works: Sequence[Callable[[Any], Any]]) -> tuple[list[Any], None]:
        import psycopg

        self.live()
        try:
            plain = [work.readKeys for work in works if isinstance(work, PlainRead)]
            included = [work for work in works if isinstance(work, IncludeRead) and work.paths]
            if len(plain) < 2 and len(included) < 2:
                return [self._alone(work) for work in works], None
            # The batch's GETs without Include in one statement, those with
            # in another, the others one by one.
            shared = iter(plainReads(self.connection, plain) if len(plain) >= 2 else ())
            prefetched = iter(prefetchedReads(self.connection, included) if len(included) >= 2 else ())
            outcomes: list[Any] = []
            for work in works:
                if isinstance(work, PlainRead) and len(plain) >= 2:
                    outcomes.append(next(shared))
                elif isinstance(work, IncludeRead) and work.paths and len(included) >= 2:
                    found = next(prefetched)
                    outcomes.append(self._alone(work) if found is None else found)
                else:
                    outcomes.append(self._alone(work))
            return outcomes, None
        except psycopg.Error as e:
            self.rollback()
            self.lost(e)
            raise trouble(e, self.where) from None
        except BaseException:
            self.rollback()
            raise

    def _alone(self, work: Callable[[Any], Any]) -> Any:
        """
        Run one work of a batch; what it raises other than a database
        error (the Include bounds) fails it alone.
        """
        import psycopg
        from psycopg import pq

        try:
            return work(self)
        except psycopg.Error:
            raise
        except Exception:
            failure = Failure()
            connection = self.connection
            if (connection is not None
                    and connection.info.transaction_status != pq.TransactionStatus.IDLE):
                self.rollback()
            return failure

    def inSnapshot(self, query: Callable[..., Any], *args: Any) -> Any:
        """C{query(connection, *args)} in one repeatable-read, read-only transaction."""
        connection = self.connection
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        result = query(connection, *args)
        connection.execute("COMMIT")
        return result

    def changes(self, since: int, prefixKey: str, limit: int) -> ChangePage:
        return self.inSnapshot(changes, since, prefixKey, limit)

    def counter(self, name: str) -> int:
        return counter(self.connection, name)

    def read(self, keys: Sequence[str], references: References | None) -> Snapshot:
        if references is None:
            return plainRead(self.connection, keys)
        return includeRead(self.connection, keys, references)


class WriteSession(Session):
    """
    The writer thread's session (the transaction of L{proto.store.
    postgres_batch}, through psycopg). The reactor's writer (L{proto.
    store.postgres_writer}) runs the same transaction without a thread;
    this one serves the writes it does not take (grants, reads queued
    behind writes, and every write while it is not connected).

    @ivar changes: the changes made by the transaction in progress.
    @ivar startEtag: the etag counter when the store opened (set by it).
    """

    startEtag: int

    def __init__(self, conninfo: str, retain: int, published: Callable[[], int]) -> None:
        """
        @param published: the publisher's position (read from this thread;
            a stale value only makes the read of others' changes longer).
        """
        if retain < 1:
            raise ValueError("the change log must retain at least 1 change")
        super().__init__(conninfo, "writer")
        self.retain = retain
        self._published = published
        #: Every change up to this etag is in a batch result handed to
        #: the publisher (read by the listener's thread).
        self.delivered = 0
        self._batch = WriteBatch(0, {}, self._select)

    @property
    def changes(self) -> list[Change]:
        return self._batch.changes

    def runBatch(self, works: Sequence[Callable[["WriteSession"], Any]]) -> tuple[list[Any], BatchResult]:
        import psycopg

        connection = self.live()
        committing = False
        # The keys the batch's operations will read (L{PostgresStore} tags
        # its works with them): fetched with the lock, in one round trip.
        wanted = list(dict.fromkeys(key for work in works for key in getattr(work, "keys", ())))
        try:
            with connection.pipeline():
                connection.execute("BEGIN")
                locked = connection.execute(LOCK_SQL)
                documents = connection.execute(KNOWN_SQL, (KEY_SEPARATOR.join(wanted),))
                counters = dict(locked.fetchall())
                known = {key: (id, etag) for key, id, etag in documents.fetchall()}
            batch = self._batch = WriteBatch(
                counters["etag"], {key: known.get(key) for key in wanted}, self._select)
            outcomes = [attempt(work, self) for work in works]
            # The writes, the counters, the doorbell and the commit: one
            # round trip (then the commit's flush to disk).
            with connection.pipeline():
                self.flush()
                if batch.lastEtag != batch.before:
                    connection.execute(SET_ETAG_SQL, (batch.lastEtag,))
                    newFloor = batch.newFloor(counters["log_floor"], self.retain)
                    if newFloor is not None:
                        connection.execute(PRUNE_SQL, (newFloor,))
                        connection.execute(SET_FLOOR_SQL, (newFloor,))
                    connection.execute(NOTIFY_SQL, (CHANNEL, str(batch.lastEtag)))
                committing = True
                connection.execute("COMMIT")
        except psycopg.Error as e:
            self._batch = WriteBatch(0, {}, self._select)
            self.rollback()
            self.lost(e)
            raise trouble(e, self.where, committing) from None
        except BaseException:
            self._batch = WriteBatch(0, {}, self._select)
            self.rollback()
            raise
        own = changes = batch.changes
        before = batch.before
        published = self._published()
        if own and before > published:
            # Others committed since we last published: theirs go first
            # (the hub gets every etag, in order). If this read fails, the
            # listener delivers both theirs and ours.
            try:
                changes = logRange(connection, published, before) + own
            except psycopg.Error as e:
                self.lost(e)
                changes = []
        if changes:
            # Every change up to here goes to the publisher with this batch
            # (the listener skips the notification of this commit).
            self.delivered = changes[-1].etag
        return outcomes, BatchResult(changes, len(works))

    def _select(self, key: str) -> tuple[str, int] | None:
        """A document the batch did not fetch with the lock (in the transaction)."""
        row = self.connection.execute(
            "SELECT id, etag FROM proto_documents WHERE key = %s", (key,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # -- operations (inside the transaction) -------------------------------------------

    def put(self, key: str, id: str, body: bytes, ifMatch: int | None) -> Version:
        return self._batch.put(key, id, body, ifMatch)

    def delete(self, keys: Sequence[str]) -> list[Version]:
        return self._batch.delete(keys)

    def flush(self) -> None:
        """Send the writes kept so far (before a read, and at the end)."""
        connection = self.connection
        deletes, upserts, logRows = self._batch.takeWrites()
        if deletes:
            connection.execute(DELETE_SQL, (KEY_SEPARATOR.join(deletes),))
        with connection.cursor() as cursor:
            if upserts:
                cursor.executemany(UPSERT_SQL, upserts)
            if logRows:
                cursor.executemany(LOG_SQL, logRows)

    # -- reads queued behind writes (read-your-writes) ---------------------------------

    def read(self, keys: Sequence[str], references: References | None) -> Snapshot:
        self.flush()
        found = snapshot(self.connection, keys, references)
        # The counter row is written at the end of the batch: the etag of
        # this snapshot is the last one handed out.
        return found._replace(etag=max(found.etag, self._batch.lastEtag))
