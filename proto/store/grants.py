"""
Approvals and enrolments kept in the store (PROTOCOL.md section 9): the
C{grants} table.

Why in the store and not in a file: every server sharing the store (every
worker, every host on a networked store) must see an APPROVE, REVOKE or
ENROLL made on any of them within 2 seconds, and they must survive
restarts; the operator's allow-list file stays theirs (the server never
writes it). L{proto.access.AccessControl} polls L{IGrantStore.grantsRevision}
every second and reloads the table when it moved.

A store that keeps grants provides L{IGrantStore} besides
L{proto.store.base.IDocumentStore}. The table (SQLite: schema step 3, see
L{proto.store.sqlite_schema}; any other backend: the same columns)::

    grants(thumbprint TEXT PRIMARY KEY,  -- lower-case hex, 40 or 64 digits
           other TEXT,                   -- the other digest, when known (ENROLL)
           name TEXT NOT NULL,
           level TEXT NOT NULL,          -- read | write | admin
           prefixes TEXT,                -- NULL: every id; else JSON list of strings
           origin TEXT NOT NULL,         -- approved | enrolled
           enrolled_by TEXT,             -- SHA-1 of the enrolling certificate
           created REAL NOT NULL)        -- Unix time
    counters row 'grants'                -- the revision: +1 on every change

Every change to the table bumps the C{'grants'} counter in the same
transaction, so a reader that sees the same revision has seen the same
table.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from twisted.internet.defer import Deferred
from zope.interface import Interface

from proto.store.base import ConflictError

if TYPE_CHECKING:
    from proto.permissions import Grant
    from proto.store.sqlite_worker import Worker



class GrantRow(NamedTuple):
    """One row of the C{grants} table."""

    thumbprint: str
    other: str | None
    name: str
    level: str
    prefixes: tuple[str, ...] | None
    origin: str
    enrolledBy: str | None
    created: float

    def grant(self) -> Grant:
        """The row as a L{proto.permissions.Grant}."""
        # Imported here: proto.permissions imports the store package.
        from proto.permissions import Grant

        return Grant(self.name, self.level, self.prefixes, self.origin, self.enrolledBy)

    def digests(self) -> tuple[str, ...]:
        """The thumbprints this row admits."""
        return (self.thumbprint,) if self.other is None else (self.thumbprint, self.other)

    @classmethod
    def of(cls, thumbprint: str, grant: Grant, created: float, other: str | None = None) -> "GrantRow":
        return cls(
            thumbprint, other, grant.name, grant.level, grant.prefixes,
            grant.origin, grant.enrolledBy, created,
        )


class GrantTakenError(ConflictError):
    """
    An ENROLL named a certificate that is already approved or enrolled for
    another certificate (seen inside the write transaction, so two
    servers cannot both hand out the same successor). Nothing was written.
    """

    def __init__(self, digest: str) -> None:
        Exception.__init__(self, f"Certificate {digest} is already admitted for someone else")
        self.digest = digest


def checkEnrolment(existing: list[GrantRow], row: GrantRow) -> None:
    """
    Refuse an enrolment (L{GrantTakenError}) if a row for the same
    certificate exists that is not an enrolment by the same certificate.
    Call it before writing anything.
    """
    for found in existing:
        if found.origin != "enrolled" or found.enrolledBy != row.enrolledBy:
            raise GrantTakenError(row.thumbprint)


class IGrantStore(Interface):
    """
    The C{grants} table of a store. Every method returns a Deferred and
    never blocks. Writes are durable when their Deferred fires.
    """

    def grantsRevision() -> Deferred[int]:
        """The C{'grants'} counter: cheap, polled every second."""

    def loadGrants() -> Deferred[tuple[int, list[GrantRow]]]:
        """The revision and every row, read in one snapshot."""

    def putGrant(row: GrantRow, replaceEnrolment: bool = False) -> Deferred[list[GrantRow]]:
        """
        Insert or replace the row of C{row.thumbprint} (and any row whose
        C{thumbprint} or C{other} is one of C{row.digests()}). With
        C{replaceEnrolment}, also delete every row enrolled by
        C{row.enrolledBy} (one successor per certificate), after checking
        with L{checkEnrolment} that the certificate is not someone
        else's (L{GrantTakenError}, nothing written). One transaction;
        bumps the revision.

        @return: the rows deleted (replaced ones included).
        """

    def removeGrant(thumbprint: str) -> Deferred[list[GrantRow]]:
        """
        Delete the rows whose C{thumbprint} or C{other} is C{thumbprint};
        bumps the revision if any was.

        @return: the rows deleted (none: nothing was approved or enrolled
            under it).
        """


# -- SQLite --------------------------------------------------------------------------


def createTable(connection: sqlite3.Connection) -> None:
    """Schema step 3 (see L{proto.store.sqlite_schema})."""
    connection.execute(
        "CREATE TABLE grants ("
        " thumbprint TEXT PRIMARY KEY, other TEXT, name TEXT NOT NULL,"
        " level TEXT NOT NULL, prefixes TEXT, origin TEXT NOT NULL,"
        " enrolled_by TEXT, created REAL NOT NULL)"
    )
    connection.execute("CREATE INDEX grants_other ON grants (other)")
    connection.execute("CREATE INDEX grants_enrolled_by ON grants (enrolled_by)")
    connection.execute("INSERT OR IGNORE INTO counters (name, value) VALUES ('grants', 0)")


_COLUMNS = "thumbprint, other, name, level, prefixes, origin, enrolled_by, created"


def _row(values: tuple[Any, ...]) -> GrantRow:
    thumbprint, other, name, level, prefixes, origin, enrolledBy, created = values
    return GrantRow(
        thumbprint, other, name, level,
        None if prefixes is None else tuple(json.loads(prefixes)),
        origin, enrolledBy, created,
    )


class GrantsSQL(NamedTuple):
    """
    What differs between the backends' grants statements: the parameter
    mark, the table names, and whether DELETE ... RETURNING is used (it
    removes and reports the same rows in one statement, which matters when
    other processes write the same PostgreSQL database; SQLite reads the
    rows first, inside the writer's transaction). Every statement below is
    written once and formatted with these.
    """

    mark: str
    grants: str
    counters: str
    returning: bool

    def sql(self, text: str) -> str:
        return text.format(p=self.mark, grants=self.grants, counters=self.counters, columns=_COLUMNS)


SQLITE = GrantsSQL("?", "grants", "counters", returning=False)
POSTGRES = GrantsSQL("%s", "proto_grants", "proto_counters", returning=True)


def revision(connection: Any, dialect: GrantsSQL = SQLITE) -> int:
    found = connection.execute(
        dialect.sql("SELECT value FROM {counters} WHERE name = 'grants'")
    ).fetchone()
    return 0 if found is None else int(found[0])


def load(connection: Any, dialect: GrantsSQL = SQLITE) -> tuple[int, list[GrantRow]]:
    rows = [_row(values) for values in connection.execute(dialect.sql("SELECT {columns} FROM {grants}"))]
    return revision(connection, dialect), rows


def _deleteWhere(connection: Any, dialect: GrantsSQL, where: str, args: tuple) -> list[GrantRow]:
    where = dialect.sql(where)
    if dialect.returning:
        return [
            _row(values)
            for values in connection.execute(
                dialect.sql("DELETE FROM {grants} WHERE ") + where + dialect.sql(" RETURNING {columns}"),
                args,
            )
        ]
    rows = [
        _row(values)
        for values in connection.execute(dialect.sql("SELECT {columns} FROM {grants} WHERE ") + where, args)
    ]
    if rows:
        connection.execute(dialect.sql("DELETE FROM {grants} WHERE ") + where, args)
    return rows


def _bump(connection: Any, dialect: GrantsSQL) -> None:
    connection.execute(dialect.sql("UPDATE {counters} SET value = value + 1 WHERE name = 'grants'"))


def put(
    connection: Any, row: GrantRow, replaceEnrolment: bool, dialect: GrantsSQL = SQLITE
) -> list[GrantRow]:
    """L{IGrantStore.putGrant}, inside the caller's transaction."""
    if replaceEnrolment:
        existing = [
            _row(values)
            for digest in row.digests()
            for values in connection.execute(
                dialect.sql("SELECT {columns} FROM {grants} WHERE thumbprint = {p} OR other = {p}"),
                (digest, digest),
            )
        ]
        checkEnrolment(existing, row)  # before any write (section 9: not someone else's)
    removed: list[GrantRow] = []
    for digest in row.digests():
        removed += _deleteWhere(connection, dialect, "thumbprint = {p} OR other = {p}", (digest, digest))
    if replaceEnrolment and row.enrolledBy is not None:
        removed += _deleteWhere(connection, dialect, "enrolled_by = {p}", (row.enrolledBy,))
    connection.execute(
        dialect.sql("INSERT INTO {grants} ({columns}) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"),
        (
            row.thumbprint, row.other, row.name, row.level,
            None if row.prefixes is None else json.dumps(list(row.prefixes)),
            row.origin, row.enrolledBy, row.created,
        ),
    )
    _bump(connection, dialect)
    return removed


def remove(connection: Any, thumbprint: str, dialect: GrantsSQL = SQLITE) -> list[GrantRow]:
    """L{IGrantStore.removeGrant}, inside the caller's transaction."""
    removed = _deleteWhere(connection, dialect, "thumbprint = {p} OR other = {p}", (thumbprint, thumbprint))
    if removed:
        _bump(connection, dialect)
    return removed


class GrantsMixin:
    """What a store's grants mixin uses of the store (L{proto.store.facade})."""

    if TYPE_CHECKING:

        @property
        def _reader(self) -> Worker:
            """A reader worker."""

        def _write(self, work: Callable[[Any], Any]) -> Deferred[Any]:
            """Run C{work(session)} in the writer's next transaction."""


class SQLiteGrants(GrantsMixin):
    """
    L{IGrantStore} for L{proto.store.sqlite.SQLiteStore} (a mixin: it uses
    the store's writer, through C{_write}, and its reader thread). Writes
    run in the writer's group-committed transactions like document writes.
    """

    def grantsRevision(self) -> Deferred[int]:
        return self._reader.submit(lambda session: revision(session.connection))

    def loadGrants(self) -> Deferred[tuple[int, list[GrantRow]]]:
        return self._reader.submit(lambda session: load(session.connection))

    def putGrant(self, row: GrantRow, replaceEnrolment: bool = False) -> Deferred[list[GrantRow]]:
        return self._write(lambda session: put(session.connection, row, replaceEnrolment))

    def removeGrant(self, thumbprint: str) -> Deferred[list[GrantRow]]:
        return self._write(lambda session: remove(session.connection, thumbprint))
