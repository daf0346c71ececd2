"""
The SQLite store's schema, and how a file written by an older release is
upgraded in place.

Versions
========
The version of a file is C{PRAGMA user_version}. L{STEPS} lists the
upgrade steps in order: step I{n} takes a file from version I{n - 1} to
version I{n}. L{upgrade} runs every step the file has not had yet, in one
C{BEGIN IMMEDIATE} transaction (so of several processes opening the same
file at once, one upgrades and the others see the result), and sets
C{user_version} to the last step's number.

  - B{1}: the layout of the first release (before the change log):
    C{documents(key, id, etag, body)} and C{counters(name, value)} with the
    row C{'etag'}. Files of that release have C{user_version} 0 and these
    tables already, so the step only creates what is missing.
  - B{2}: the change log C{changes(etag, key, id, type)} (see
    L{proto.store.sqlite_write}) and the counter row C{'log_floor'}: the
    log holds every change with an etag above it. A file upgraded from
    version 1 starts its log empty, with the floor at its current etag.
  - B{3}: the C{grants} table of approvals and enrolments and the counter
    row C{'grants'} (L{proto.store.grants}).
  - B{4}: C{documents} becomes an ordinary (rowid) table with the same
    columns and C{key} still its primary key; the rows are copied over.
    Steps 1-3 made it C{WITHOUT ROWID}, which stores each row in an index
    b-tree, where a row may hold only about a quarter of a page before it
    overflows: a 1 KiB document took an overflow page of its own, so every
    read and write of one touched two pages (issue 13: an upsert cost
    about 1.5 times, a point read twice, what they cost now). The queries
    are the same for both layouts. The copy runs once, when a release with
    this step first opens the file, and takes as long as copying the
    documents does.

Adding a step
=============
Write C{def _stepN(connection)} that makes the change with plain SQL (no
C{BEGIN}/C{COMMIT}: it runs inside the upgrade transaction, and must not
assume anything about the data but what the earlier steps guarantee), and
append it to L{STEPS}. Never edit a step that has shipped: files in the
field have had it. A file whose version is above C{len(STEPS)} was written
by a newer release and is refused.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

from proto.store.base import StoreError


def _step1(connection: sqlite3.Connection) -> None:
    """The first release's layout (present already in its files)."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS documents ("
        " key TEXT PRIMARY KEY, id TEXT NOT NULL,"
        " etag INTEGER NOT NULL, body BLOB NOT NULL"
        ") WITHOUT ROWID"
    )
    connection.execute(
        "CREATE TABLE IF NOT EXISTS counters ("
        " name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
    )
    connection.execute("INSERT OR IGNORE INTO counters (name, value) VALUES ('etag', 0)")


def _step2(connection: sqlite3.Connection) -> None:
    """The change log, empty, with its floor at the current etag."""
    connection.execute(
        "CREATE TABLE changes ("
        " etag INTEGER PRIMARY KEY,"  # the rowid: the log is ordered by etag
        " key TEXT NOT NULL,"  # idKey(id): what prefixes are matched against
        " id TEXT NOT NULL,"  # the stored id, as pushed
        " type INTEGER NOT NULL"  # CHANGE_PUT or CHANGE_DELETE
        ")"
    )
    connection.execute(
        "INSERT INTO counters (name, value) "
        "SELECT 'log_floor', value FROM counters WHERE name = 'etag'"
    )


def _step3(connection: sqlite3.Connection) -> None:
    """Approvals and enrolments (section 9): see L{proto.store.grants}."""
    from proto.store.grants import createTable

    createTable(connection)


def _step4(connection: sqlite3.Connection) -> None:
    """C{documents} as a rowid table (see the module's docstring)."""
    connection.execute(
        "CREATE TABLE documents_rowid ("
        " key TEXT PRIMARY KEY, id TEXT NOT NULL,"
        " etag INTEGER NOT NULL, body BLOB NOT NULL)"
    )
    connection.execute(
        "INSERT INTO documents_rowid (key, id, etag, body) "
        "SELECT key, id, etag, body FROM documents ORDER BY key"
    )
    connection.execute("DROP TABLE documents")
    connection.execute("ALTER TABLE documents_rowid RENAME TO documents")


#: The upgrade steps, in order: C{STEPS[n - 1]} makes version I{n}.
STEPS: list[Callable[[sqlite3.Connection], None]] = [_step1, _step2, _step3, _step4]

#: The version this release writes.
VERSION = len(STEPS)

#: The values of C{changes.type}.
CHANGE_PUT = 1
CHANGE_DELETE = 2


def version(connection: sqlite3.Connection) -> int:
    """The file's schema version (C{PRAGMA user_version})."""
    (found,) = connection.execute("PRAGMA user_version").fetchone()
    return int(found)


def upgrade(connection: sqlite3.Connection, path: str) -> int:
    """
    Bring the file open on C{connection} (autocommit mode) to L{VERSION}.

    @return: the version the file had before.
    @raise StoreError: if the file is from a newer release.
    """
    if version(connection) == VERSION:
        return VERSION  # The common case, without taking the write lock.
    connection.execute("BEGIN IMMEDIATE")
    try:
        before = version(connection)
        if before > VERSION:
            raise StoreError(
                f"{path} has schema version {before}, written by a newer release; "
                f"this one knows versions up to {VERSION}"
            )
        for number in range(before + 1, VERSION + 1):
            STEPS[number - 1](connection)
        # PRAGMA takes no bound parameters; VERSION is our own integer.
        connection.execute(f"PRAGMA user_version = {VERSION:d}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return before
