"""
Where a read of the SQLite store runs (issue 13), and how one read is
kept from holding up the others (issue 12, item 1).

Routes
======
A read (L{ReadPath.readNow}) goes, in this order of preference:

  1. B{behind the unfinished writes} (read-your-writes, so a client may
     pipeline PUT then GET, and a GET then DELETE): while any write is
     unfinished, the read joins the writer's queue and runs in its
     transaction, after the writes queued before it and before those
     queued after it. (Bounded and cancellable like every read, so it
     delays a commit by little.)
  2. B{inline}, on the reactor thread, through a read connection of its
     own (L{InlineReader}): a point read of a few documents costs tens of
     microseconds in SQLite's page cache, less than the two thread
     switches a hop to a worker costs. Only small reads go inline (at most
     L{INLINE_MAX_IDS} ids; with Include, at most L{INLINE_MAX_BYTES} of
     result documents to parse and L{INLINE_MAX_STEPS} steps of walking
     them); one that turns out bigger is abandoned (its read transaction
     ended, nothing returned) and sent to a thread. The connection never
     waits for a lock (C{busy_timeout} 0: C{SQLITE_BUSY} sends the read to
     a thread), and an inline read that took more than
     L{INLINE_SLOW_CPU_SECONDS} of CPU or L{INLINE_SLOW_SECONDS} on the
     clock (cold pages) sends every read to the threads for
     L{INLINE_BACKOFF_SECONDS}.
  3. a B{reader thread}: the I{point} reader for reads without Include
     (their cost is bounded by the number of ids a head can hold), the
     I{bulk} reader for reads with Include. So a long GET with Include can
     delay other reads with Include, never those without (nor, through 2,
     any small read while the reactor serves it inline).

Repeated reads
==============
While nothing is committed (the cache's etag has not moved), the same
read served from the cache (the same keys; for an Include, a walk with
the same C{memoKey}: the same paths and filter) gives the same snapshot
again: L{proto.store.cache.SnapshotMemo} keeps the recent ones, bounded
in count and bytes, and forgets them all when the etag moves. GET then
also finds the reply it encoded for that snapshot
(L{proto.commands.documents}).

Cancellation and bounds
=======================
Every read's Deferred can be cancelled (the request's Timeout, or its
connection ending). A read not started yet never runs. One that is
running on a thread stops at its next check: the C{references} callable
of an Include yields C{None} now and then (see
L{proto.store.base.IDocumentStore.read}), and between chunks of ids; the
read transaction is then rolled back. What one GET may cost at all is
bounded by the command (L{proto.commands.documents}): distinct ids and
paths count once, and an Include that names too many documents or walks
too many values fails that request alone.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import struct
import time
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from proto.store import sqlite_read
from proto.store.base import Document, Snapshot, idKey, resolveIncludes
from proto.store.cache import MISSING, DocumentCache, SnapshotMemo

#: Reads of more ids than this never run inline (and go to the bulk reader).
INLINE_MAX_IDS = 16

#: With Include: the most bytes of result documents parsed inline.
INLINE_MAX_BYTES = 256 * 1024

#: With Include: the most ids and progress ticks (see L{Cancelled}) taken
#: from the C{references} walk inline before it is moved to a thread.
INLINE_MAX_STEPS = 256

#: An inline read that took more CPU than this (the reactor thread's own
#: time, which does not count being preempted on a busy machine)...
INLINE_SLOW_CPU_SECONDS = 0.002

#: ...or longer than this on the clock (waiting for the disk: cold pages)...
INLINE_SLOW_SECONDS = 0.02

#: ...sends every read to the threads for this long.
INLINE_BACKOFF_SECONDS = 0.25

References = Callable[[list[Document | None]], Iterable[str | None]]


class _TooBig(Exception):
    """An inline read outgrew the inline bounds: run it on a thread."""


class Token:
    """
    The cancellation state of one read, shared by the reactor thread
    (which sets it) and the thread running the read (which checks it).
    """

    __slots__ = ("cancelled", "inner")

    def __init__(self) -> None:
        self.cancelled = False
        #: The worker's Deferred, once the read was handed to a thread.
        self.inner: Deferred[Any] | None = None

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError("the read was cancelled while it ran")


def selectChecked(
    connection: sqlite3.Connection, keys: Sequence[str], token: Token | None
) -> list[Document | None]:
    """L{sqlite_read.select}, checking C{token} between chunks."""
    if token is None or len(keys) <= sqlite_read._CHUNK:
        return sqlite_read.select(connection, keys)
    found: dict[str, Document] = {}
    unique = list(dict.fromkeys(keys))
    step = sqlite_read._CHUNK
    for start in range(0, len(unique), step):
        token.check()
        for doc, key in zip(sqlite_read.select(connection, unique[start : start + step]),
                            unique[start : start + step]):
            if doc is not None:
                found[key] = doc
    return [found.get(key) for key in keys]


def snapshot(
    connection: sqlite3.Connection,
    keys: Sequence[str],
    references: References | None,
    token: Token | None = None,
    maxSteps: int | None = None,
) -> Snapshot:
    """
    The documents C{keys}, the etag, and with C{references} the documents
    they reference: in the caller's read transaction.

    @param token: checked between chunks and at each step of the walk.
    @param maxSteps: raise L{_TooBig} after this many items (ids or
        C{None} ticks) from the walk.
    """
    etag = sqlite_read.counter(connection, "etag")
    results = selectChecked(connection, keys, token)
    if references is None:
        return Snapshot(results, [], etag)
    return Snapshot(results, follow(connection, results, references, token, maxSteps), etag)


def follow(
    connection: sqlite3.Connection,
    results: list[Document | None],
    references: References,
    token: Token | None = None,
    maxSteps: int | None = None,
) -> list[Document]:
    """The documents that C{references(results)} names that exist, each once."""
    steps = 0

    def step(id: str | None) -> None:
        nonlocal steps
        steps += 1
        if maxSteps is not None and steps > maxSteps:
            raise _TooBig()
        if id is None and token is not None:
            token.check()

    return resolveIncludes(
        results, references, lambda missing: selectChecked(connection, missing, token), step
    )


#: Point reads by number of distinct keys: the counter row and the
#: documents in one statement, so in one snapshot without BEGIN/COMMIT.
_POINT_SQL = {
    n: "SELECT NULL, NULL, value, NULL FROM counters WHERE name = 'etag' UNION ALL "
    f"SELECT key, id, etag, body FROM documents WHERE key IN ({','.join('?' * n)})"
    for n in range(1, INLINE_MAX_IDS + 1)
}

#: The cache follows at most this many changes from the log at once;
#: further behind, it starts again empty (cheaper than reading them).
CACHE_MAX_ADVANCE = 1000

#: What moves the cache (L{proto.store.cache}) to the current etag, in
#: one statement (one snapshot): the counters, then the keys of the
#: changes after the cache's position (at most C{?} of them).
_ADVANCE_SQL = (
    "SELECT 0, name, value FROM counters WHERE name IN ('etag', 'log_floor') UNION ALL "
    "SELECT * FROM (SELECT 1, key, etag FROM changes WHERE etag > ? ORDER BY etag LIMIT ?)"
)


#: The WAL-index header: two copies of 48 bytes at the start of the
#: C{-shm} file (https://www.sqlite.org/walformat.html, "The WAL-Index
#: Format"); every commit rewrites it with its transaction counter
#: (C{iChange}) incremented.
WAL_HEADER_BYTES = 96

#: C{iVersion} of the WAL-index format this reads.
_WAL_INDEX_VERSION = 3007000


def walIndexOf(connection: sqlite3.Connection, path: str) -> mmap.mmap | None:
    """
    The start of C{path}'s WAL-index, mapped read-only, or C{None} if the
    file is not in WAL mode or the index is not what this expects.

    Why: before each read from the cache, L{InlineReader} must know
    whether anyone committed since it last looked. C{PRAGMA data_version}
    says so in a few microseconds (a statement, a read transaction);
    comparing the 96 bytes of the WAL-index header with their last value
    says it in a fraction of one: every commit, by any connection of any
    process, rewrites that header with an incremented transaction
    counter before it returns, so an unchanged header means no commit
    completed since. (A header that changed for another reason, such as a
    checkpoint, only costs the C{data_version} check.) The mapping is
    made once C{connection} has used the file, so SQLite keeps the
    C{-shm} file open and never truncates it while the connection is
    open; L{InlineReader.close} unmaps it first.
    """
    try:
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            return None
        with open(path + "-shm", "rb") as shm:
            if os.fstat(shm.fileno()).st_size < WAL_HEADER_BYTES:
                return None
            mapped = mmap.mmap(shm.fileno(), WAL_HEADER_BYTES, access=mmap.ACCESS_READ)
    except (OSError, ValueError, sqlite3.Error):
        return None
    version, _, change, isInit = struct.unpack_from("=IIIB", mapped, 0)
    if version != _WAL_INDEX_VERSION or isInit != 1 or mapped[:48] != mapped[48:96]:
        mapped.close()
        return None
    return mapped


class _Miss(Exception):
    """A document a read needs is not in the cache."""


def _fromCache(cache: DocumentCache, keys: Iterable[str]) -> list[Document | None]:
    """
    The documents of C{keys} from C{cache} (L{None} for one known not to
    exist), in order.

    @raise _Miss: if one is not there.
    """
    entries = cache.entries
    results: list[Document | None] = []
    for key in keys:
        entry = entries.get(key)
        if entry is None:
            raise _Miss()
        results.append(None if entry is MISSING else entry)  # type: ignore[arg-type]
    return results


class InlineReader:
    """
    A read-only connection used on the reactor thread, for reads small
    enough to cost less than a thread hop (see the module docstring), and
    the cache of recent documents (L{proto.store.cache}) it keeps coherent.

    Cache coherence: before each read, the WAL-index header (unchanged:
    nobody committed, see L{walIndexOf}), then C{PRAGMA data_version}
    (which changes when any other connection, of this process or another,
    has committed since this connection last looked) tell whether the
    cache may be behind; if so, it is first advanced over the change log
    (L{_ADVANCE_SQL}). Only then may a read be served from it, so it
    never serves a version older than the last commit.
    """

    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.monotonic,
        cpuClock: Callable[[], float] = time.thread_time,
        cache: DocumentCache | None = None,
    ) -> None:
        self._connection = sqlite_read.connect(path)
        self._connection.execute("PRAGMA query_only = ON")
        # Never wait for a lock on the reactor thread: a busy file sends
        # the read to a thread, which may wait.
        self._connection.execute("PRAGMA busy_timeout = 0")
        self._clock = clock
        self._cpuClock = cpuClock
        self._backoffUntil = 0.0
        self.served = 0
        self._memo = SnapshotMemo()
        self.declined = 0
        self.cache = cache
        #: C{PRAGMA data_version} when the cache was last advanced.
        self._version: int | None = None
        self._versionCursor = self._connection.cursor()
        self._path = path
        #: The start of the WAL-index (C{-shm} file), mapped read-only once
        #: this connection uses it (L{_walIndex}); C{None}: not (yet).
        self._walIndex: mmap.mmap | None = None
        self._walIndexTried = False
        #: Its header as it was just before the cache was last checked.
        self._walHeader = b""

    def close(self) -> None:
        if self._walIndex is not None:
            self._walIndex.close()  # Before the connection lets go of the file.
            self._walIndex = None
        self._connection.close()

    def fits(self, keys: Sequence[str]) -> bool:
        """Few enough ids to be read here (the back-off is checked in L{read})."""
        return len(keys) <= INLINE_MAX_IDS

    def read(self, keys: Sequence[str], references: References | None) -> Snapshot | None:
        """The snapshot, or C{None} if this read must go to a thread."""
        cache = self.cache
        if cache is not None:
            try:
                self._catchUp(cache)
                memo = self._memo
                if memo.etag != cache.etag:
                    memo.clear(cache.etag)
                memoKey = memo.keyOf(keys, references)
                found = memo.get(memoKey) if memoKey is not None else None
                if found is None:
                    found = self._cached(cache, keys, references)
                    if memoKey is not None:
                        memo.put(memoKey, found)
            except _Miss:
                pass
            except (_TooBig, sqlite3.Error):
                self.declined += 1
                return None
            else:
                cache.hits += 1
                self.served += 1
                return found
        # The cache is bounded work; the file may not be (cold pages): after
        # a slow read, reads of the file go to the threads for a while.
        start = self._clock()
        if start < self._backoffUntil:
            return None
        connection = self._connection
        cpuStart = self._cpuClock()
        try:
            if references is None:
                found = self._pointRead(keys)
            else:
                connection.execute("BEGIN")
                try:
                    etag = sqlite_read.counter(connection, "etag")
                    results = sqlite_read.select(connection, keys)
                    size = sum(len(doc.body) for doc in results if doc is not None)
                    if size > INLINE_MAX_BYTES:
                        raise _TooBig()  # Too much to parse here.
                    includes = follow(connection, results, references, None, INLINE_MAX_STEPS)
                    found = Snapshot(results, includes, etag)
                finally:
                    connection.execute("COMMIT")
                if cache is not None:
                    cache.fill(etag, ((idKey(doc.id), doc) for doc in includes))
        except (_TooBig, sqlite3.Error):
            self.declined += 1
            return None
        finally:
            now = self._clock()
            if (
                now - start > INLINE_SLOW_SECONDS
                or self._cpuClock() - cpuStart > INLINE_SLOW_CPU_SECONDS
            ):
                self._backoffUntil = now + INLINE_BACKOFF_SECONDS
        if cache is not None:
            cache.fill(found.etag, zip(keys, found.results))
        self.served += 1
        return found

    def _catchUp(self, cache: DocumentCache) -> None:
        """
        Make the cache current: advance it over what was committed since.

        The WAL-index header is read first and only kept once the cache
        is as new as that moment (after the advance, which may fail: then
        the next read checks again): a commit after the header was read
        changes the header again, so the next read looks once more.
        """
        walIndex = self._walIndex
        header: bytes | None = None
        if walIndex is not None:
            header = walIndex[:WAL_HEADER_BYTES]
            if header == self._walHeader:
                return  # Nobody committed since the last check (see _walIndex).
        cursor = self._versionCursor
        cursor.execute("PRAGMA data_version")
        (version,) = cursor.fetchone()
        if walIndex is None and not self._walIndexTried:
            self._walIndexTried = True
            # Its header stays unknown (b""): the next read reads it before
            # its PRAGMA data_version, and so checks once more.
            self._walIndex = walIndexOf(self._connection, self._path)
        if version != self._version:
            self._advance(cache)
            self._version = version
        if header is not None:
            self._walHeader = header

    def _advance(self, cache: DocumentCache) -> None:
        """Move the cache over the change log to the current etag (one statement, one snapshot)."""
        # Read after data_version: whatever commits from now on changes it
        # again, so the next read advances once more.
        etag = floor = 0
        changed = []
        for kind, name, value in self._connection.execute(
            _ADVANCE_SQL, (cache.etag, CACHE_MAX_ADVANCE + 1)
        ):
            if kind:
                changed.append(name)
            elif name == "etag":
                etag = value
            else:
                floor = value
        if floor > cache.etag or len(changed) > CACHE_MAX_ADVANCE:
            cache.clear(etag)  # The log may not hold every change since.
        else:
            cache.advance(etag, changed)

    @staticmethod
    def _cached(cache: DocumentCache, keys: Sequence[str], references: References | None) -> Snapshot:
        """
        The read from the cache alone, at its position (one snapshot:
        nothing changes it meanwhile, on this thread).

        @raise _Miss: if a document it needs is not there.
        """
        results = _fromCache(cache, keys)
        if references is None:
            return Snapshot(results, [], cache.etag)
        if sum(len(doc.body) for doc in results if doc is not None) > INLINE_MAX_BYTES:
            raise _TooBig()
        steps = 0

        def step(id: str | None) -> None:
            nonlocal steps
            steps += 1
            if steps > INLINE_MAX_STEPS:
                raise _TooBig()

        def fetch(missing: list[str]) -> list[Document | None]:
            return _fromCache(cache, missing)

        return Snapshot(results, resolveIncludes(results, references, fetch, step), cache.etag)

    def _pointRead(self, keys: Sequence[str]) -> Snapshot:
        unique = list(dict.fromkeys(keys))
        etag = 0
        found: dict[str, Document] = {}
        for key, id, version, body in self._connection.execute(_POINT_SQL[len(unique)], unique):
            if key is None:
                etag = version
            else:
                found[key] = Document(id, version, body)
        return Snapshot([found.get(key) for key in keys], [], etag)


class ReadPath:
    """
    Routes the reads of one L{proto.store.sqlite.SQLiteStore} (see the
    module docstring).
    """

    def __init__(self, writer: Any, point: Any, bulk: Any) -> None:
        """
        @param writer: the writer's worker
            (L{proto.store.sqlite_worker.Worker}), for reads behind writes.
        @param point: the worker for short reads without Include.
        @param bulk: the worker for the others.
        """
        self._writer = writer
        self._point = point
        self._bulk = bulk
        self.inline: InlineReader | None = None
        #: Writes submitted and not yet finished.
        self.unfinishedWrites = 0

    def readNow(self, keys: list[str], references: References | None) -> Snapshot | Deferred[Snapshot]:
        """
        The snapshot itself when it can be read on this thread at once
        (from the cache or inline), else a L{Deferred} of it (run on a
        thread). What the C{references} walk raises (the Include bounds)
        is raised from here when the walk runs inline.
        """
        if not self.unfinishedWrites:
            inline = self.inline
            if inline is not None and inline.fits(keys):
                found = inline.read(keys, references)
                if found is not None:
                    return found
        return self._submit(keys, references)

    def _submit(self, keys: list[str], references: References | None) -> Deferred[Snapshot]:
        """Run the read on a thread: behind unfinished writes, or a reader's."""
        if self.unfinishedWrites:
            worker = self._writer
        else:
            worker = self._point if references is None else self._bulk
        token = Token()
        result: Deferred[Snapshot] = Deferred(lambda d: self._cancel(token))
        token.inner = worker.submit(lambda session: _guarded(session, keys, references, token))
        token.inner.addCallbacks(self._relay(result), self._relayFailure(result))
        return result

    @staticmethod
    def _relay(result: Deferred[Snapshot]) -> Callable[[Snapshot], None]:
        def relay(found: Snapshot) -> None:
            if not result.called:
                result.callback(found)

        return relay

    @staticmethod
    def _relayFailure(result: Deferred[Snapshot]) -> Callable[[Any], None]:
        def relay(failure: Any) -> None:
            if not result.called:
                result.errback(failure)

        return relay

    @staticmethod
    def _cancel(token: Token) -> None:
        # Queued on a thread: the worker drops it. Running: it stops at its
        # next check.
        token.cancelled = True
        inner = token.inner
        if inner is not None and not inner.called:
            inner.cancel()


def _guarded(session: Any, keys: Sequence[str], references: References | None, token: Token) -> Any:
    """
    Run one read on a worker's session; what it raises becomes its
    outcome, so that it fails alone (also inside the writer's batch,
    where an exception would roll back the writes).
    """
    try:
        token.check()
        return session.read(keys, references, token)
    except Exception:
        return Failure()


class ReaderSession(sqlite_read.ReadSession):
    """
    A reader thread's session: each work of a batch fails alone, and a
    read stops at its next check once its token is cancelled.
    """

    def read(self, keys: Sequence[str], references: References | None, token: Token | None = None) -> Snapshot:
        return snapshot(self.connection, keys, references, token)

    def runBatch(self, works: Sequence[Callable[[Any], Any]]) -> tuple[list[Any], None]:
        """Run C{works} in one read transaction: they see one snapshot."""
        outcomes: list[Any] = []
        self.connection.execute("BEGIN")
        try:
            for work in works:
                try:
                    outcomes.append(work(self))
                except Exception:
                    outcomes.append(Failure())
        finally:
            self.connection.execute("COMMIT")
        return outcomes, None
