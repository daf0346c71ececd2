"""
Approvals and enrolments in PostgreSQL: L{proto.store.grants.IGrantStore}
for L{proto.store.postgres.PostgresStore}, on the table C{proto_grants}
(the same columns and rules as the SQLite C{grants} table; the revision is
the C{'grants'} row of C{proto_counters}). Writes run in the writer's
group-committed transactions, like document writes.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from proto.store.grants import GrantRow, _row, checkEnrolment

_COLUMNS = "thumbprint, other, name, level, prefixes, origin, enrolled_by, created"


def revision(connection: Any) -> int:
    found = connection.execute(
        "SELECT value FROM proto_counters WHERE name = 'grants'"
    ).fetchone()
    return 0 if found is None else int(found[0])


def load(connection: Any) -> tuple[int, list[GrantRow]]:
    rows = [_row(values) for values in connection.execute(f"SELECT {_COLUMNS} FROM proto_grants")]
    return revision(connection), rows


def _deleteWhere(connection: Any, where: str, args: tuple) -> list[GrantRow]:
    return [
        _row(values)
        for values in connection.execute(
            f"DELETE FROM proto_grants WHERE {where} RETURNING {_COLUMNS}", args
        )
    ]


def _bump(connection: Any) -> None:
    connection.execute("UPDATE proto_counters SET value = value + 1 WHERE name = 'grants'")


def put(connection: Any, row: GrantRow, replaceEnrolment: bool) -> list[GrantRow]:
    if replaceEnrolment:
        existing = [
            _row(values)
            for digest in row.digests()
            for values in connection.execute(
                f"SELECT {_COLUMNS} FROM proto_grants WHERE thumbprint = %s OR other = %s",
                (digest, digest),
            )
        ]
        checkEnrolment(existing, row)  # before any write (section 9: not someone else's)
    removed: list[GrantRow] = []
    for digest in row.digests():
        removed += _deleteWhere(connection, "thumbprint = %s OR other = %s", (digest, digest))
    if replaceEnrolment and row.enrolledBy is not None:
        removed += _deleteWhere(connection, "enrolled_by = %s", (row.enrolledBy,))
    connection.execute(
        f"INSERT INTO proto_grants ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            row.thumbprint, row.other, row.name, row.level,
            None if row.prefixes is None else json.dumps(list(row.prefixes)),
            row.origin, row.enrolledBy, row.created,
        ),
    )
    _bump(connection)
    return removed


def remove(connection: Any, thumbprint: str) -> list[GrantRow]:
    removed = _deleteWhere(connection, "thumbprint = %s OR other = %s", (thumbprint, thumbprint))
    if removed:
        _bump(connection)
    return removed


class PostgresGrants:
    """The L{IGrantStore} methods (a mixin of the store: its workers)."""

    def grantsRevision(self) -> Deferred[int]:
        return self._reader.submit(lambda session: revision(session.connection))

    def loadGrants(self) -> Deferred[tuple[int, list[GrantRow]]]:
        return self._reader.submit(lambda session: session.inSnapshot(load))

    def putGrant(self, row: GrantRow, replaceEnrolment: bool = False) -> Deferred[list[GrantRow]]:
        return self._write(lambda session: put(session.connection, row, replaceEnrolment))

    def removeGrant(self, thumbprint: str) -> Deferred[list[GrantRow]]:
        return self._write(lambda session: remove(session.connection, thumbprint))
