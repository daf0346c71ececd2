"""
Reading the SQLite store: documents, snapshots with their etag, and the
change log. The queries are plain functions of a connection, so the
reader thread's session and the writer's (a read queued behind writes,
see L{proto.store.sqlite.SQLiteStore.get}) share them.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Iterable, Sequence

from proto.store.base import (
    DELETE,
    PUT,
    Change,
    ChangePage,
    Document,
    Snapshot,
    resolveIncludes,
)
from proto.store.sqlite_schema import CHANGE_PUT

#: How many ids go into one C{IN (...)} (SQLite limits bound parameters).
_CHUNK = 500

#: How long a connection waits for a lock held by another connection.
BUSY_TIMEOUT_MS = 10_000

References = Callable[[list[Document | None]], Iterable[str]]


def connect(path: str) -> sqlite3.Connection:
    """Open C{path} in autocommit mode: transactions are explicit."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


def counter(connection: sqlite3.Connection, name: str) -> int:
    """The value of a row of C{counters} (C{'etag'}, C{'log_floor'})."""
    row = connection.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def select(connection: sqlite3.Connection, keys: Sequence[str]) -> list[Document | None]:
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


def withReferences(
    connection: sqlite3.Connection, keys: Sequence[str], references: References
) -> tuple[list[Document | None], list[Document]]:
    """The documents C{keys}, and those that C{references(results)} names."""
    results = select(connection, keys)
    return results, resolveIncludes(results, references, lambda missing: select(connection, missing))


def snapshot(
    connection: sqlite3.Connection, keys: Sequence[str], references: References | None
) -> Snapshot:
    """L{withReferences} (or L{select}) and the etag, in the caller's transaction."""
    etag = counter(connection, "etag")
    if references is None:
        return Snapshot(select(connection, keys), [], etag)
    results, includes = withReferences(connection, keys, references)
    return Snapshot(results, includes, etag)


def _changeType(code: int) -> str:
    return PUT if code == CHANGE_PUT else DELETE


def changes(
    connection: sqlite3.Connection, since: int, prefixKey: str, limit: int
) -> ChangePage:
    """
    One page of the change log (L{ChangePage}), in the caller's read
    transaction. The prefix is matched in SQL, on the stored key, so a
    page is C{limit} I{matching} changes.
    """
    current = counter(connection, "etag")
    floor = counter(connection, "log_floor")
    if prefixKey:
        rows = connection.execute(
            "SELECT etag, id, type FROM changes WHERE etag > ? AND substr(key, 1, ?) = ? "
            "ORDER BY etag LIMIT ?",
            (since, len(prefixKey), prefixKey, limit),
        ).fetchall()
    else:
        rows = connection.execute(
            "SELECT etag, id, type FROM changes WHERE etag > ? ORDER BY etag LIMIT ?",
            (since, limit),
        ).fetchall()
    found = [Change(id, _changeType(type), etag) for etag, id, type in rows]
    scanned = found[-1].etag if len(found) >= limit else max(current, since)
    return ChangePage(found, scanned, floor)


def logRange(connection: sqlite3.Connection, after: int, upTo: int) -> list[Change]:
    """Every retained change with an etag in (after, upTo], in order (for the publisher)."""
    rows = connection.execute(
        "SELECT etag, id, type FROM changes WHERE etag > ? AND etag <= ? ORDER BY etag",
        (after, upTo),
    ).fetchall()
    return [Change(id, _changeType(type), etag) for etag, id, type in rows]


class ReadSession:
    """
    The reader thread's connection (read-only). Only touched by the
    reader thread.
    """

    def __init__(self, path: str) -> None:
        self.connection = connect(path)
        self.connection.execute("PRAGMA query_only = ON")

    def close(self) -> None:
        self.connection.close()

    def get(self, keys: Sequence[str]) -> list[Document | None]:
        return select(self.connection, keys)

    def read(self, keys: Sequence[str], references: References | None) -> Snapshot:
        return snapshot(self.connection, keys, references)

    def changes(self, since: int, prefixKey: str, limit: int) -> ChangePage:
        return changes(self.connection, since, prefixKey, limit)

    def counter(self, name: str) -> int:
        return counter(self.connection, name)

    def runBatch(self, works: Sequence[Callable[[Any], Any]]) -> tuple[list[Any], None]:
        """Run C{works} in one read transaction: they see one snapshot."""
        self.connection.execute("BEGIN")
        try:
            return [work(self) for work in works], None
        finally:
            self.connection.execute("COMMIT")
