"""
Approvals and enrolments in PostgreSQL: L{proto.store.grants.IGrantStore}
for L{proto.store.postgres.PostgresStore}, on the table C{proto_grants}
(the same columns and rules as the SQLite C{grants} table; the revision is
the C{'grants'} row of C{proto_counters}). Writes run in the writer's
group-committed transactions, like document writes. The statements are
the SQLite backend's, written once in L{proto.store.grants} and formatted
for PostgreSQL by L{proto.store.grants.POSTGRES}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from proto.store.grants import POSTGRES, GrantRow, GrantsMixin, load, put, remove, revision


class PostgresGrants(GrantsMixin):
    """The L{IGrantStore} methods (a mixin of the store: its workers)."""

    def grantsRevision(self) -> Deferred[int]:
        return self._reader.submit(lambda session: revision(session.connection, POSTGRES))

    def loadGrants(self) -> Deferred[tuple[int, list[GrantRow]]]:
        return self._reader.submit(lambda session: session.inSnapshot(load, POSTGRES))

    def putGrant(self, row: GrantRow, replaceEnrolment: bool = False) -> Deferred[list[GrantRow]]:
        return self._write(lambda session: put(session.connection, row, replaceEnrolment, POSTGRES))

    def removeGrant(self, thumbprint: str) -> Deferred[list[GrantRow]]:
        return self._write(lambda session: remove(session.connection, thumbprint, POSTGRES))
