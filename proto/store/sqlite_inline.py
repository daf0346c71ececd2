"""
Reads of the SQLite store served on the reactor thread (issue 13): from
the document cache (L{proto.store.cache}), or through a read connection
of the reader's own, for reads small enough to cost less than the two
thread switches a hop to a worker costs (route 2 of
L{proto.store.sqlite_reads}).

Why these bounds: the reactor thread serves every connection, so a read
here must stay short. Only small reads come here (at most
L{INLINE_MAX_IDS} ids; with Include, at most L{INLINE_MAX_BYTES} of
result documents to parse and L{INLINE_MAX_STEPS} steps of walking
them); one that turns out bigger is abandoned (nothing returned) and
sent to a thread. The connection never waits for a lock, and a slow read
(cold pages) sends every read of the file to the threads for
L{INLINE_BACKOFF_SECONDS}; the cache, bounded work, still answers.

What a read returns is what a read of the database would give at that
moment: one snapshot, with the etag of the last commit
(C{shared/PROTOCOL.md} section 8: GET's C{Etag}, read-your-writes), the
cache first caught up by L{proto.store.sqlite_coherence.CacheFollower}.
Repeated reads at an unmoved etag give the same snapshot again
(L{proto.store.cache.SnapshotMemo}).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Hashable, Iterable, Sequence

from proto.store import sqlite_read
from proto.store.base import Document, Snapshot, idKey, resolveIncludes
from proto.store.cache import MISSING, DocumentCache, SnapshotMemo
from proto.store.sqlite_coherence import CacheFollower
from proto.store.sqlite_snapshot import References, TooBig, follow

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

#: Point reads by number of distinct keys: the counter row and the
#: documents in one statement, so in one snapshot without BEGIN/COMMIT.
_POINT_SQL = {
    n: "SELECT NULL, NULL, value, NULL FROM counters WHERE name = 'etag' UNION ALL "
    f"SELECT key, id, etag, body FROM documents WHERE key IN ({','.join('?' * n)})"
    for n in range(1, INLINE_MAX_IDS + 1)
}


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

    Cache coherence: before each read, its L{CacheFollower} tells whether
    the cache may be behind (the WAL-index header, then C{PRAGMA
    data_version}: any connection, of this process or another, committed
    since this connection last looked); if so, it first advances the
    cache over the change log. Only then may a read be served from it,
    so it never serves a version older than the last commit.
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
        #: Tells whether anyone committed since the cache was last checked,
        #: and moves the cache over the change log if so.
        self.follower = CacheFollower(self._connection, path)
        self._catchUp = self.follower.catchUp

    def close(self) -> None:
        self.follower.close()  # Before the connection lets go of the file.
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
            except (TooBig, sqlite3.Error):
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
                        raise TooBig()  # Too much to parse here.
                    includes = follow(connection, results, references, None, INLINE_MAX_STEPS)
                    found = Snapshot(results, includes, etag)
                finally:
                    connection.execute("COMMIT")
                if cache is not None:
                    cache.fill(etag, ((idKey(doc.id), doc) for doc in includes))
        except (TooBig, sqlite3.Error):
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

    def remembered(self, key: Hashable) -> Any:
        """
        What L{remember} kept under C{key} as of the last commit, or
        C{None}: the cache is first caught up (L{CacheFollower}), as for
        a read, and what was kept at an older etag is gone. A hit counts
        as a read served from the cache.
        """
        cache = self.cache
        if cache is None:
            return None
        try:
            self._catchUp(cache)
        except sqlite3.Error:
            return None
        memo = self._memo
        if memo.etag != cache.etag:
            memo.clear(cache.etag)
            return None
        found = memo.derived.entries.get(key)
        if found is not None:
            cache.hits += 1
            self.served += 1
        return found

    def remember(self, key: Hashable, value: Any, size: int, etag: int) -> None:
        """
        Keep C{value} (standing for C{size} bytes), made from a read whose
        snapshot has C{etag}, for L{remembered}: only if that is the
        cache's etag, that is the last commit as of the read (a snapshot
        newer than the cache is not kept; the next read catches up).
        """
        memo = self._memo
        cache = self.cache
        if cache is not None and etag == cache.etag == memo.etag:
            memo.derived.put(key, value, size)

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
            raise TooBig()
        steps = 0

        def step(id: str | None) -> None:
            nonlocal steps
            steps += 1
            if steps > INLINE_MAX_STEPS:
                raise TooBig()

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
