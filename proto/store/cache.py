"""
A bounded in-memory cache of recent documents, on the reactor thread
(issue 13: GETs without touching the database).

Coherence
=========
The cache is a map from keys (L{proto.store.base.idKey}) to what the store
held for them, each entry either a L{Document} or L{MISSING} (known not to
exist), all as of one position of the change log, L{DocumentCache.etag}:
every entry reflects every change committed up to that etag, and nothing
after it. The backend keeps it so (L{proto.store.sqlite_reads} for
SQLite): before it serves a read from the cache it makes sure no change
was committed after C{etag} (by anyone: this process or another sharing
the store), and if one was, it first L{advances<DocumentCache.advance>}
the cache over the changes from the change log (entries of changed keys
are dropped), or L{clears<DocumentCache.clear>} it when the log no longer
holds them all. So a read served from the cache is a snapshot of the
store as it is now, with C{etag} the highest etag committed: exactly what
a read of the database would give (PROTOCOL.md section 8: GET's C{Etag}
header, read-your-writes, one snapshot for a GET with Include).

Entries are only added by L{fill} with the etag of the database snapshot
they were read in, and only when that is the cache's position: a read
that saw a newer state than the cache fills nothing (the next read
advances the cache first).

Bounds
======
At most L{DEFAULT_MAX_ENTRIES} entries and L{DEFAULT_MAX_BYTES} of
document bodies; a document bigger than L{DEFAULT_MAX_DOCUMENT_BYTES} is
never kept. When full, the oldest entries go first (insertion order, which
a hit does not change: a hit costs one dict lookup).

Snapshots
=========
L{SnapshotMemo} keeps whole reads answered from the cache (the snapshot
of some keys, with an Include's documents), valid at one etag only: the
backend clears it whenever the cache's position moves.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from proto.memo import BoundedMemo
from proto.store.base import Document, Snapshot

#: The most entries (documents and known-missing ids) kept.
DEFAULT_MAX_ENTRIES = 50_000

#: The most bytes of document bodies kept.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

#: Documents bigger than this are not kept.
DEFAULT_MAX_DOCUMENT_BYTES = 256 * 1024


class _Missing:
    """The entry of a key known to have no document."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: The entry of a key that has no document.
MISSING = _Missing()

#: How much an entry of L{MISSING} counts against the byte bound.
_MISSING_COST = 64


class DocumentCache:
    """
    Documents (and missing ids) by key, all as of change-log position
    L{etag} (see the module docstring).

    @ivar etag: the position: entries reflect every change up to it.
    @ivar size: bytes of the entries (bodies; a fixed cost per missing id).
    @ivar hits: reads served whole from the cache.
    """

    def __init__(
        self,
        maxEntries: int = DEFAULT_MAX_ENTRIES,
        maxBytes: int = DEFAULT_MAX_BYTES,
        maxDocumentBytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    ) -> None:
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
        self.maxDocumentBytes = maxDocumentBytes
        self.entries: dict[str, Document | _Missing] = {}
        self.etag = 0
        self.size = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self, etag: int) -> None:
        """Forget everything; the (empty) cache is now at C{etag}."""
        self.entries.clear()
        self.size = 0
        self.etag = etag

    def advance(self, etag: int, changedKeys: Iterable[str]) -> None:
        """
        Move to C{etag}: C{changedKeys} are the keys of every change
        committed after the current position, up to C{etag} (more is
        harmless); their entries are dropped.
        """
        entries = self.entries
        for key in changedKeys:
            entry = entries.pop(key, None)
            if entry is not None:
                self.size -= _cost(entry)
        self.etag = etag

    def fill(self, etag: int, pairs: Iterable[tuple[str, Document | None]]) -> None:
        """
        Keep C{(key, document or None)} pairs read from the store in a
        snapshot whose etag is C{etag}; ignored unless that is the cache's
        position (a newer snapshot would bring entries from after it).
        """
        if etag != self.etag:
            return
        entries = self.entries
        for key, doc in pairs:
            entry: Document | _Missing
            if doc is None:
                entry = MISSING
            elif len(doc.body) > self.maxDocumentBytes:
                continue
            else:
                entry = doc
            old = entries.pop(key, None)
            if old is not None:
                self.size -= _cost(old)
            entries[key] = entry
            self.size += _cost(entry)
        if len(entries) > self.maxEntries or self.size > self.maxBytes:
            self._evict()

    def _evict(self) -> None:
        """
        Drop the oldest entries until both bounds hold with an eighth to
        spare (so eviction, which walks the keys, runs rarely).
        """
        entries = self.entries
        maxEntries = self.maxEntries - self.maxEntries // 8
        maxBytes = self.maxBytes - self.maxBytes // 8
        for key in list(entries):
            if len(entries) <= maxEntries and self.size <= maxBytes:
                break
            self.size -= _cost(entries.pop(key))


def _cost(entry: Document | _Missing) -> int:
    return _MISSING_COST if entry is MISSING else len(entry.body)  # type: ignore[union-attr]


class SnapshotMemo:
    """
    The snapshots of recent reads served from the cache, by what was
    asked (the keys, and the walk's C{memoKey} for an Include), all as of
    one etag: while nothing is committed the same read gives the same
    snapshot, so it is answered again without the cache look-ups and the
    walk. Cleared when the etag moves; at most L{SNAPSHOT_MEMO_ENTRIES}.
    A snapshot given out here is shared: readers must not change it.

    C{derived} keeps, valid at the same etag and cleared with the
    snapshots, what a caller made of such a read (GET's encoded reply,
    L{proto.store.sqlite_reads.ReadPath.remembered}): the caller's key,
    the caller's value, bounded by the bytes the caller says it stands for.
    """

    __slots__ = ("etag", "_memo", "derived")

    def __init__(self) -> None:
        self.etag = -1
        #: The snapshots, bounded by the bytes of their documents. (These
        #: are mostly the cache's own, but one the cache drops stays alive
        #: here until the memo lets go of it: hence the byte bound.)
        self._memo: BoundedMemo[Any, Snapshot] = BoundedMemo(
            SNAPSHOT_MEMO_BYTES, SNAPSHOT_MEMO_MAX_SNAPSHOT_BYTES, SNAPSHOT_MEMO_ENTRIES
        )
        self.derived: BoundedMemo[Any, Any] = BoundedMemo(
            SNAPSHOT_MEMO_BYTES, SNAPSHOT_MEMO_MAX_SNAPSHOT_BYTES, SNAPSHOT_MEMO_ENTRIES
        )

    @property
    def entries(self) -> dict[Any, Snapshot]:
        return self._memo.entries

    def clear(self, etag: int) -> None:
        self._memo.clear()
        self.derived.clear()
        self.etag = etag

    @staticmethod
    def keyOf(keys: Sequence[str], references: Callable[..., Any] | None) -> Any:
        """What identifies this read, or C{None} for one not to remember."""
        if references is None:
            return tuple(keys)
        walkKey = getattr(references, "memoKey", None)
        if walkKey is None:
            return None  # An arbitrary callable: maybe not a pure one.
        return (tuple(keys), walkKey)

    def get(self, key: Any) -> Snapshot | None:
        return self._memo.entries.get(key)

    def put(self, key: Any, snapshot: Snapshot) -> None:
        """Keep C{snapshot}, unless its documents are more than L{SNAPSHOT_MEMO_MAX_SNAPSHOT_BYTES}."""
        size = sum([len(doc.body) for doc in snapshot.results if doc is not None])
        size += sum([len(doc.body) for doc in snapshot.includes])
        self._memo.put(key, snapshot, size)


#: The most snapshots L{SnapshotMemo} keeps (and values it derives)...
SNAPSHOT_MEMO_ENTRIES = 4096

#: ...and the most bytes of their documents...
SNAPSHOT_MEMO_BYTES = 16 * 1024 * 1024

#: ...and of one snapshot's.
SNAPSHOT_MEMO_MAX_SNAPSHOT_BYTES = 64 * 1024
