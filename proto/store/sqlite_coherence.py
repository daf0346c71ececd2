"""
Knowing, on the reactor thread, whether anyone committed to the SQLite
file since the document cache (L{proto.store.cache}) last looked, and if
so moving the cache over the change log to the last commit.

Why: a read served from the cache must be what a read of the database
would give at that moment (C{shared/PROTOCOL.md} section 8: GET's
C{Etag}, read-your-writes), whoever committed last: this store's writer,
another store on the same file, another process. So before each read
from the cache, L{CacheFollower.catchUp} checks, cheapest first:

  1. the WAL-index header (L{walIndexOf}): unchanged, nobody committed;
  2. C{PRAGMA data_version}: unchanged, nobody committed either (the
     header changed for another reason, such as a checkpoint);
  3. else the change log since the cache's position (L{_ADVANCE_SQL}),
     or, too far behind or pruned, a cache started again empty.

The doorbell (L{proto.store.sqlite_publisher.Doorbell}) uses the same
header check before its own C{data_version} poll.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import struct

from proto.store.cache import DocumentCache

#: The cache follows at most this many changes from the log at once;
#: further behind, it starts again empty (cheaper than reading them).
CACHE_MAX_ADVANCE = 1000

#: What moves the cache (L{proto.store.cache}) to the current etag, in
#: one statement (one snapshot): the counters, then the keys of the
#: changes after the cache's position (at most C{?} of them). Each counter
#: by its key: C{name IN ('etag', 'log_floor')} made SQLite build a
#: temporary b-tree of the list at every run (5.3 -> 4.2 us a run, and see
#: L{proto.store.sqlite_write}).
_ADVANCE_SQL = (
    "SELECT 0, name, value FROM counters WHERE name = 'etag' UNION ALL "
    "SELECT 0, name, value FROM counters WHERE name = 'log_floor' UNION ALL "
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


class CacheFollower:
    """
    The change detection of one read-only connection (the inline
    reader's, L{proto.store.sqlite_inline.InlineReader}), used on the
    reactor thread to keep its cache coherent (see the module docstring).
    """

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._connection = connection
        #: C{PRAGMA data_version} when the cache was last advanced.
        self._version: int | None = None
        self._versionCursor = self._connection.cursor()
        self._path = path
        #: The start of the WAL-index (C{-shm} file), mapped read-only once
        #: this connection uses it (L{walIndexOf}); C{None}: not (yet).
        self._walIndex: mmap.mmap | None = None
        self._walIndexTried = False
        #: Its header as it was just before the cache was last checked.
        self._walHeader = b""

    def close(self) -> None:
        """Unmap the WAL-index: before the connection lets go of the file."""
        if self._walIndex is not None:
            self._walIndex.close()
            self._walIndex = None

    def catchUp(self, cache: DocumentCache) -> None:
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
                return  # Nobody committed since the last check (see walIndexOf).
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
