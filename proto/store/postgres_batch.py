"""
One PostgreSQL write transaction's operations, worked out in Python: what
both writers share, the writer thread (L{proto.store.postgres_session.
WriteSession}, psycopg) and the reactor's writer (L{proto.store.
postgres_writer.ReactorWriter}, libpq's pipeline).

A write transaction (one per batch: group commit, as in the SQLite store)
is:

  1. C{BEGIN}, L{LOCK_SQL} (C{SELECT ... FOR UPDATE} of the counters: the
     row lock serialises every writer of the database, every worker and
     every host, so etags are handed out in commit order: once etag I{n}
     is visible, every change below it is committed, C{shared/PROTOCOL.md}
     section 8) and L{KNOWN_SQL} (the documents the batch's operations
     name): one round trip;
  2. the operations run here, in Python (L{WriteBatch}): each If-Match is
     checked against what the operations before it left, every change
     takes the next etag and a row of the change log; nothing is sent;
  3. the writes (L{UPSERT_SQL}, L{DELETE_SQL}, L{LOG_SQL}), the counters
     (L{SET_ETAG_SQL}, the log pruned beyond the retention: L{pruneStep}),
     one C{NOTIFY proto_changes} with the last etag (delivered at commit:
     the doorbell of every server's listener) and C{COMMIT}: one round
     trip, then the commit's flush to disk. C{OK} only after it.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Sequence

from proto.store.base import DELETE, PUT, Change, Version
from proto.store.sqlite_write import _TYPE_CODES, attempt, pruneFloor, storedIdFor

#: Lock the counters (every writer of the database waits here).
LOCK_SQL = "SELECT name, value FROM proto_counters WHERE name IN ('etag', 'log_floor') FOR UPDATE"

#: The documents a batch names (keys joined by chr(31): one text parameter).
KNOWN_SQL = ("SELECT key, id, etag FROM proto_documents "
             "WHERE key = ANY(string_to_array(%s, chr(31)))")

#: Write a document (a new one, or a new version).
UPSERT_SQL = (
    "INSERT INTO proto_documents (key, id, etag, body) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET id = excluded.id, etag = excluded.etag, body = excluded.body"
)

#: Remove documents (keys joined by chr(31)).
DELETE_SQL = "DELETE FROM proto_documents WHERE key = ANY(string_to_array(%s, chr(31)))"

#: One row of the change log.
LOG_SQL = "INSERT INTO proto_changes (etag, key, id, type) VALUES (%s, %s, %s, %s)"

#: The etag counter, at the batch's last etag.
SET_ETAG_SQL = "UPDATE proto_counters SET value = %s WHERE name = 'etag'"

#: Pruning the log: its rows at or below the new floor, and the floor.
PRUNE_SQL = "DELETE FROM proto_changes WHERE etag <= %s"
SET_FLOOR_SQL = "UPDATE proto_counters SET value = %s WHERE name = 'log_floor'"

#: The doorbell: the payload is the batch's last etag (a listener skips
#: the notifications of its own server's commits: L{proto.store.
#: postgres_listener}).
NOTIFY_SQL = "SELECT pg_notify(%s, %s)"

#: Others' changes the publisher has not seen, read in the batch's
#: transaction (under the lock every change up to C{before} is committed).
LOG_RANGE_SQL = "SELECT etag, id, type FROM proto_changes WHERE etag > %s AND etag <= %s ORDER BY etag"


#: Every write of a batch with changes in one statement (the reactor's
#: writer: one statement to parse, bind and answer instead of one per
#: row): the deleted keys (joined by chr(31)), the documents and the log
#: rows as arrays (L{textArray}, L{intArray}, L{byteaArray}), the etag
#: counter, and the doorbell. (Data-modifying CTEs all run, on one
#: snapshot; the keys deleted and those written are distinct.)
BATCH_WRITE_SQL = (
    "WITH d AS (DELETE FROM proto_documents WHERE key = ANY(string_to_array(%s, chr(31)))), "
    "u AS (INSERT INTO proto_documents (key, id, etag, body) SELECT * FROM unnest("
    "CAST(%s AS text[]), CAST(%s AS text[]), CAST(%s AS bigint[]), CAST(%s AS bytea[])) "
    "ON CONFLICT (key) DO UPDATE SET id = excluded.id, etag = excluded.etag, body = excluded.body), "
    "l AS (INSERT INTO proto_changes (etag, key, id, type) SELECT * FROM unnest("
    "CAST(%s AS bigint[]), CAST(%s AS text[]), CAST(%s AS text[]), CAST(%s AS smallint[]))), "
    "e AS (UPDATE proto_counters SET value = %s WHERE name = 'etag') "
    "SELECT pg_notify(%s, %s)"
)

#: The parameters' formats of L{BATCH_WRITE_SQL}: text, but the bodies
#: (binary, L{byteaArray}: sent as they are).
BATCH_WRITE_FORMATS = (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0)


def textArray(values: Sequence[str]) -> bytes:
    """A text array literal (C{{"a","b"}}) of C{values}, in UTF-8."""
    return ("{" + ",".join(
        '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values
    ) + "}").encode()


def intArray(values: Sequence[int]) -> bytes:
    """An integer array literal (C{{1,2}})."""
    return ("{" + ",".join(map(str, values)) + "}").encode()


def byteaArray(values: Sequence[bytes]) -> bytes:
    """
    A C{bytea[]} in PostgreSQL's binary format: one dimension, no NULLs,
    element type 17 (bytea), each value as it is (no hex to encode and
    decode).
    """
    header = struct.pack("!iiIii", 1, 0, 17, len(values), 1)
    return header + b"".join(struct.pack("!i", len(value)) + value for value in values)


def pruneStep(retain: int) -> int:
    """How far beyond the retention the log grows before it is pruned."""
    return min(1000, max(1, retain // 10))


class NotPrefetched(Exception):
    """An operation read a document its batch did not fetch with the lock."""


class WriteBatch:
    """
    The operations of one write transaction (step 2 of the module
    docstring): the session that a write work (C{work(session)}: a PUT
    calls C{put}, a DELETE C{delete}) runs against.

    @ivar before: the etag counter when the batch took the lock.
    @ivar lastEtag: the last etag handed out so far.
    @ivar changes: the changes made so far, in etag order.
    """

    def __init__(self, before: int, known: dict[str, tuple[str, int] | None],
                 find: Callable[[str], tuple[str, int] | None] | None = None) -> None:
        """
        @param known: the stored (id, etag) of the keys the batch named,
            C{None} for those with no document.
        @param find: reads a key that is not in C{known} (in the
            transaction); without it, that raises L{NotPrefetched}.
        """
        self.before = self.lastEtag = before
        self.known = known
        self._find = find
        self.changes: list[Change] = []
        self.upserts: dict[str, tuple[str, str, int, bytes]] = {}
        self.deletes: set[str] = set()
        self.logRows: list[tuple[int, str, str, int]] = []

    def run(self, works: Sequence[Callable[[Any], Any]]) -> list[Any]:
        """Each work's outcome (a conflict fails its work alone: a L{Failure})."""
        return [attempt(work, self) for work in works]

    def find(self, key: str) -> tuple[str, int] | None:
        if key not in self.known:
            if self._find is None:
                raise NotPrefetched(key)
            self.known[key] = self._find(key)
        return self.known[key]

    def _record(self, key: str, id: str, type: str) -> int:
        self.lastEtag += 1
        etag = self.lastEtag
        self.logRows.append((etag, key, id, _TYPE_CODES[type]))
        self.changes.append(Change(id, type, etag))
        return etag

    def put(self, key: str, id: str, body: bytes, ifMatch: int | None) -> Version:
        storedId = storedIdFor(id, self.find(key), ifMatch)
        etag = self._record(key, storedId, PUT)
        self.known[key] = (storedId, etag)
        self.upserts[key] = (key, storedId, etag, body)
        self.deletes.discard(key)
        return Version(storedId, etag)

    def delete(self, keys: Sequence[str]) -> list[Version]:
        deleted = []
        for key in keys:
            found = self.find(key)
            if found is None:
                continue
            self.known[key] = None
            self.upserts.pop(key, None)
            self.deletes.add(key)
            deleted.append(Version(found[0], self._record(key, found[0], DELETE)))
        return deleted

    def takeWrites(self) -> tuple[list[str], list[tuple[str, str, int, bytes]],
                                  list[tuple[int, str, str, int]]]:
        """The writes kept so far (deleted keys, upserts, log rows), forgotten here."""
        writes = list(self.deletes), list(self.upserts.values()), self.logRows
        self.deletes, self.upserts, self.logRows = set(), {}, []
        return writes

    def newFloor(self, floor: int, retain: int) -> int | None:
        """The log's new floor after this batch (C{None}: no pruning)."""
        return pruneFloor(self.lastEtag, retain, floor, pruneStep(retain))
