"""
Writing the SQLite store: the writer thread's session.

One write transaction per batch (group commit, see
L{proto.store.sqlite}), C{BEGIN IMMEDIATE}, so that several processes can
write the same file: the transaction takes the write lock before it reads
anything, and waits (busy timeout) while another process holds it.

Inside it:
  1. the counter row C{'etag'} is read: the last etag handed out. Never
     from a value kept in memory: another process may have written since.
  2. each operation runs; every change takes the next etag and appends a
     row to C{changes(etag, key, id, type)}, the change log;
  3. the log is pruned if it holds more than C{retain} changes beyond a
     step (at most L{PRUNE_MAX} rows per transaction, so that pruning
     never stalls a writer for long): C{log_floor} (see
     L{proto.store.sqlite_schema}) moves up;
  4. the etag is written back and the transaction commits.

The counter row C{'log_floor'} is read only when the log may be due for
pruning: the floor only ever moves up, so the last one seen is a lower
bound, and while even that says the log is short of a step beyond
C{retain}, so is the real one. The C{'etag'} row is read alone, by its key:
C{name IN ('etag', 'log_floor')} made SQLite build a temporary b-tree of
the list in every transaction (two zeroed 4 KiB pages), which cost more
than the statement itself (issue 13: a one-PUT transaction 17k instructions
fewer than with that read, 5k fewer than taking the etag and the stored
id with C{RETURNING}, which buffers its rows in such a b-tree too;
callgrind, bench of the statements alone).

A full storage (C{SQLITE_FULL}: disk full, or C{max_page_count}) fails
the batch's transaction; the batch is then run again one operation per
transaction, so that the operations that need no new space (a DELETE
frees space) still succeed and only the others fail, with
L{StorageFullError}.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Callable, Sequence

from twisted.python.failure import Failure

from proto.store.base import (
    DELETE,
    PUT,
    Change,
    ConflictError,
    Document,
    Snapshot,
    StorageFullError,
    StoreError,
    Version,
)
from proto.store import sqlite_read, sqlite_schema, sqlite_snapshot
from proto.store.facade import PutWork
from proto.store.sqlite_schema import CHANGE_DELETE, CHANGE_PUT

#: Retain at least this many of the newest changes, by default.
DEFAULT_RETAIN_CHANGES = 100_000

#: Most log rows one write transaction prunes.
PRUNE_MAX = 10_000

#: C{sqlite3.Error.sqlite_errorcode} of a full database or disk.
_SQLITE_FULL = 13

_TYPE_CODES = {PUT: CHANGE_PUT, DELETE: CHANGE_DELETE}

#: Write a document (a new one, or a new version keeping its first id).
_UPSERT = (
    "INSERT INTO documents (key, id, etag, body) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, body = excluded.body"
)

#: The last etag handed out (inside the write transaction).
_ETAG = "SELECT value FROM counters WHERE name = 'etag'"

#: Append a row to the change log.
_LOG_ROW = "INSERT INTO changes (etag, key, id, type) VALUES (?, ?, ?, ?)"

#: Keys per C{SELECT ... IN (...)} of L{WriteSession.putMany} (well under
#: SQLite's limit on parameters).
_KEYS_PER_SELECT = 500


def isStorageFull(error: BaseException) -> bool:
    """Is C{error} SQLite saying the database or the disk is full?"""
    return isinstance(error, sqlite3.Error) and (
        getattr(error, "sqlite_errorcode", None) == _SQLITE_FULL
        or "database or disk is full" in str(error)
    )


def storageFull(path: str, error: BaseException) -> StorageFullError:
    return StorageFullError(
        f"the document store {os.path.basename(path)} has no room left ({error}); "
        "free disk space or delete documents"
    )


def pruneFloor(lastEtag: int, retain: int, floor: int, step: int) -> int | None:
    """
    Where the change log's floor moves after a write transaction that
    reached C{lastEtag} (any backend): C{None} while the log holds fewer
    than C{step} changes beyond C{retain}; else up by at most L{PRUNE_MAX}.
    """
    excess = lastEtag - retain - floor
    if excess < step:
        return None
    return floor + min(excess, PRUNE_MAX)


def storedIdFor(id: str, found: tuple[str, int] | None, ifMatch: int | None) -> str:
    """
    A PUT's If-Match check against C{found} (the stored id and etag, or
    C{None}) and the id to store under: the one first written, if any.

    @raise ConflictError: if C{ifMatch} does not hold (C{0}: must not exist).
    """
    if ifMatch is not None:
        actual = None if found is None else found[1]
        if (actual or 0) != ifMatch:
            raise ConflictError(id, ifMatch, actual)
    return id if found is None else found[0]


def attempt(work: Callable[[Any], Any], session: Any) -> Any:
    """Run one operation of a batch: a conflict fails it alone (it wrote nothing)."""
    try:
        return work(session)
    except ConflictError:
        return Failure()


class BatchResult:
    """
    What a committed write batch hands to the reactor thread.

    @ivar changes: the changes to publish, in etag order: those of other
        processes committed since the publisher's position (read from the
        log after the commit), then the batch's own.
    @ivar size: how many operations the batch ran.
    """

    def __init__(self, changes: list[Change], size: int) -> None:
        self.changes = changes
        self.size = size


class WriteSession:
    """
    The writer thread's connection. Lives on (and is only touched by) the
    writer thread.

    @ivar changes: the changes made by the transaction in progress.
    """

    def __init__(
        self,
        path: str,
        retain: int = DEFAULT_RETAIN_CHANGES,
        published: Callable[[], int] = lambda: 0,
        configure: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """
        @param retain: keep at least this many of the newest changes (> 0).
        @param published: the publisher's position (read from another
            thread: an int, so a stale value is the only risk, and a stale
            value only makes the read of other processes' changes longer).
        @param configure: called with the new connection (tests use it to
            set C{max_page_count}).
        """
        if retain < 1:
            raise ValueError("the change log must retain at least 1 change")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self.retain = retain
        self._pruneStep = min(1000, max(1, retain // 10))
        self._published = published
        self.connection = sqlite_read.connect(path)
        try:
            (mode,) = self.connection.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode.lower() != "wal":
                raise StoreError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
            self.connection.execute("PRAGMA synchronous = FULL")
            sqlite_schema.upgrade(self.connection, path)
            if configure is not None:
                configure(self.connection)
            #: The etag when the store opened, before any batch of ours
            #: (read here, on the writer thread: the publisher starts there).
            self.openedAt = sqlite_read.counter(self.connection, "etag")
        except BaseException:
            self.connection.close()
            raise
        self.changes: list[Change] = []
        self._lastEtag = 0
        #: The C{log_floor} this session last read: a lower bound of the
        #: real one, which only moves up (see L{_prune}).
        self._floorSeen = 0

    def close(self) -> None:
        self.connection.close()

    # -- transactions ----------------------------------------------------------

    def runBatch(
        self, works: Sequence[Callable[["WriteSession"], Any]]
    ) -> tuple[list[Any], BatchResult]:
        """
        Run C{works} in one transaction and commit it.

        A L{ConflictError} fails only its own operation (it wrote nothing).
        A full storage: see the module's docstring. Anything else rolls the
        whole transaction back and propagates.

        @return: each work's result or L{Failure}, and the L{BatchResult}.
        """
        try:
            outcomes, before = self._transaction(works)
        except sqlite3.Error as e:
            if not isStorageFull(e):
                raise
            outcomes, before = self._oneByOne(works)
        own = self.changes
        changes = own
        if own and before > self._published():
            # Other processes committed since we last published: their
            # changes go out first (the hub gets every etag, in order).
            others = sqlite_read.logRange(self.connection, self._published(), before)
            changes = others + own
        return outcomes, BatchResult(changes, len(works))

    def _oneByOne(self, works: Sequence[Callable[["WriteSession"], Any]]) -> tuple[list[Any], int]:
        """After SQLITE_FULL: each work in its own transaction."""
        outcomes: list[Any] = []
        allChanges: list[Change] = []
        before: int | None = None
        for work in works:
            try:
                [outcome], start = self._transaction([work])
            except sqlite3.Error as e:
                if not isStorageFull(e):
                    raise
                outcome = Failure(storageFull(self.path, e))
            else:
                if before is None and self.changes:
                    before = start
                allChanges += self.changes
            outcomes.append(outcome)
        self.changes = allChanges
        return outcomes, before if before is not None else 0

    def _transaction(self, works: Sequence[Callable[["WriteSession"], Any]]) -> tuple[list[Any], int]:
        """One transaction; returns the outcomes and the etag it started from."""
        self.changes = []
        connection = self.connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            # By its key alone (see the module's docstring).
            [(before,)] = connection.execute(_ETAG).fetchall()
            self._lastEtag = before
            outcomes = self._runAll(works)
            if self._lastEtag != before:
                connection.execute(
                    "UPDATE counters SET value = ? WHERE name = 'etag'", (self._lastEtag,)
                )
                self._prune()
            connection.execute("COMMIT")
        except BaseException:
            self.changes = []
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return outcomes, before

    def _prune(self) -> None:
        """
        Drop the oldest log rows beyond C{retain} (a bounded number). The
        floor is read only when the last one seen (a lower bound: it only
        moves up) says the log may be due.
        """
        if pruneFloor(self._lastEtag, self.retain, self._floorSeen, self._pruneStep) is None:
            return
        floor = self._floorSeen = sqlite_read.counter(self.connection, "log_floor")
        newFloor = pruneFloor(self._lastEtag, self.retain, floor, self._pruneStep)
        if newFloor is None:
            return
        self.connection.execute("DELETE FROM changes WHERE etag <= ?", (newFloor,))
        self.connection.execute(
            "UPDATE counters SET value = ? WHERE name = 'log_floor'", (newFloor,)
        )
        self._floorSeen = newFloor

    def _runAll(self, works: Sequence[Callable[["WriteSession"], Any]]) -> list[Any]:
        """
        Each work's outcome, in order: a run of PUTs together
        (L{putMany}), anything else on its own, so that a read queued
        behind writes sees them all.
        """
        outcomes: list[Any] = []
        run: list[PutWork] = []
        for work in works:
            if type(work) is PutWork:
                run.append(work)
                continue
            self._runPuts(run, outcomes)
            run = []
            outcomes.append(attempt(work, self))
        self._runPuts(run, outcomes)
        return outcomes

    def _runPuts(self, run: list[PutWork], outcomes: list[Any]) -> None:
        """A run of PUTs' outcomes onto C{outcomes}: L{putMany}, or L{put} for one alone."""
        if len(run) > 1:
            outcomes += self.putMany(run)
        elif run:
            outcomes.append(attempt(run[0], self))

    # -- operations (inside a transaction) ----------------------------------

    def _record(self, key: str, id: str, type: str) -> int:
        self._lastEtag += 1
        etag = self._lastEtag
        self.connection.execute(_LOG_ROW, (etag, key, id, _TYPE_CODES[type]))
        self.changes.append(Change(id, type, etag))
        return etag

    def _find(self, key: str) -> tuple[str, int] | None:
        return self.connection.execute(
            "SELECT id, etag FROM documents WHERE key = ?", (key,)
        ).fetchone()

    def put(self, key: str, id: str, body: bytes, ifMatch: int | None) -> Version:
        storedId = storedIdFor(id, self._find(key), ifMatch)
        etag = self._record(key, storedId, PUT)
        self.connection.execute(_UPSERT, (key, storedId, etag, body))
        return Version(storedId, etag)

    def putMany(self, puts: Sequence[PutWork]) -> list[Version | Failure]:
        """
        L{put} for each of C{puts}, in order, with one read of the
        documents they name and one C{executemany} each for the change
        log and the documents (issue 13: three statements per PUT from
        Python cost the writer about 8 us a PUT). The same outcomes as one
        L{put} after the other: each If-Match is checked against what the
        PUTs before it left, a conflict fails its PUT alone, a document
        PUT twice is written once, as it ends.
        """
        connection = self.connection
        keys = list(dict.fromkeys(put.key for put in puts))
        found: dict[str, tuple[str, int]] = {}
        for start in range(0, len(keys), _KEYS_PER_SELECT):
            chunk = keys[start : start + _KEYS_PER_SELECT]
            for key, storedId, etag in connection.execute(
                "SELECT key, id, etag FROM documents WHERE key IN (%s)"
                % ",".join("?" * len(chunk)),
                chunk,
            ):
                found[key] = (storedId, etag)
        outcomes: list[Version | Failure] = []
        logRows: list[tuple[int, str, str, int]] = []
        documents: dict[str, tuple[str, str, int, bytes]] = {}
        changes = self.changes
        etag = self._lastEtag
        for put in puts:
            key = put.key
            try:
                storedId = storedIdFor(put.id, found.get(key), put.ifMatch)
            except ConflictError:
                outcomes.append(Failure())
                continue
            etag += 1
            logRows.append((etag, key, storedId, CHANGE_PUT))
            changes.append(Change(storedId, PUT, etag))
            documents[key] = (key, storedId, etag, put.body)
            found[key] = (storedId, etag)
            outcomes.append(Version(storedId, etag))
        self._lastEtag = etag
        if logRows:
            connection.executemany(_LOG_ROW, logRows)
            connection.executemany(_UPSERT, documents.values())
        return outcomes

    def delete(self, keys: Sequence[str]) -> list[Version]:
        deleted = []
        for key in keys:
            found = self._find(key)
            if found is None:
                continue
            self.connection.execute("DELETE FROM documents WHERE key = ?", (key,))
            deleted.append(Version(found[0], self._record(key, found[0], DELETE)))
        return deleted

    # -- reads queued behind writes (read-your-writes) -----------------------

    def read(self, keys: Sequence[str], references: sqlite_read.References | None,
             token: Any = None) -> Snapshot:
        """See L{proto.store.sqlite_snapshot}: C{token} is checked as it goes."""
        found = sqlite_snapshot.snapshot(self.connection, keys, references, token)
        # Inside the batch's transaction the counter row is not written
        # yet: the etag of this snapshot is the last one handed out.
        return found._replace(etag=max(found.etag, self._lastEtag))
