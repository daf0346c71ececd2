"""
Where a read of the SQLite store runs (issue 13), and how one read is
kept from holding up the others (issue 12, item 1): L{ReadPath} routes
each read, L{ReaderSession} runs them on the reader threads. Whatever
the route, a GET gets one snapshot and its C{Etag} (C{shared/PROTOCOL.md}
section 8), and sees every write sent before it.

The parts each route uses live in modules of one job each (their names
are re-exported here):

  - L{proto.store.sqlite_snapshot}: one read as a cancellable, bounded
    snapshot (every route runs it);
  - L{proto.store.sqlite_inline}: reads on the reactor thread, from the
    document cache or an inline connection (route 2);
  - L{proto.store.sqlite_coherence}: whether anyone committed since the
    cache last looked (WAL-index header, C{data_version}), and following
    the change log.

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

from typing import Any, Callable, Hashable, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proto.store import sqlite_read
from proto.store.base import Snapshot

# The parts live in modules of one job each (see the module docstring);
# their names stay importable from here (a test that patches a constant
# patches it where it lives: the code reads it there).
from proto.store.sqlite_coherence import (  # noqa: F401
    CACHE_MAX_ADVANCE,
    WAL_HEADER_BYTES,
    CacheFollower,
    walIndexOf,
)
from proto.store.sqlite_inline import (  # noqa: F401
    INLINE_BACKOFF_SECONDS,
    INLINE_MAX_BYTES,
    INLINE_MAX_IDS,
    INLINE_MAX_STEPS,
    INLINE_SLOW_CPU_SECONDS,
    INLINE_SLOW_SECONDS,
    InlineReader,
)
from proto.store.sqlite_snapshot import (  # noqa: F401
    References,
    Token,
    TooBig,
    follow,
    selectChecked,
    snapshot,
)

__all__ = [
    "CACHE_MAX_ADVANCE", "WAL_HEADER_BYTES", "CacheFollower", "walIndexOf",
    "INLINE_BACKOFF_SECONDS", "INLINE_MAX_BYTES", "INLINE_MAX_IDS", "INLINE_MAX_STEPS",
    "INLINE_SLOW_CPU_SECONDS", "INLINE_SLOW_SECONDS", "InlineReader",
    "References", "Token", "TooBig", "follow", "selectChecked", "snapshot",
    "Snapshot", "ReadPath", "ReaderSession",
]


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

    def remembered(self, key: Hashable) -> Any:
        """
        What a caller kept with L{remember} for C{key}, if it is still
        what a read now would give (the last commit's etag, the cache
        caught up, no write of ours unfinished: read-your-writes), else
        C{None}. GET keeps its encoded reply by request (issue 13): a hit
        spares it the ids' checks, the read's routing and the memo look-ups
        of the snapshot and of its reply.
        """
        if self.unfinishedWrites:
            return None
        inline = self.inline
        return None if inline is None else inline.remembered(key)

    def remember(self, key: Hashable, value: Any, size: int, etag: int) -> None:
        """
        Keep C{value}, made from a snapshot with C{etag} that L{readNow}
        just returned (not a L{Deferred}'s), for L{remembered}, until the
        next commit; at most C{size} bytes counted against the memo's
        bounds (L{proto.store.cache.SnapshotMemo}).
        """
        inline = self.inline
        if inline is not None and not self.unfinishedWrites:
            inline.remember(key, value, size, etag)

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
