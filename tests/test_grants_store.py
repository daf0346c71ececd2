"""
The grants table (L{proto.store.grants.IGrantStore}) on both backends:
revision, put/replace/remove, one successor per certificate, and an
enrolment can never take over another certificate's entry (checked in the
write transaction, before anything is written), while a PUT in the same
group commit is unaffected.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from proto.store.grants import GrantRow, GrantTakenError, IGrantStore
from tests.test_store import PostgresBackend, StoreTestMixin

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 64)


def row(thumbprint, origin="approved", enrolledBy=None, other=None, name="n", level="read", prefixes=None):
    return GrantRow(thumbprint, other, name, level, prefixes, origin, enrolledBy, 1.5)


class GrantStoreTests(StoreTestMixin, TestCase):
    def test_provided(self):
        self.assertTrue(IGrantStore.providedBy(self.store))

    @inlineCallbacks
    def test_putLoadRemove(self):
        self.assertEqual((yield self.store.grantsRevision()), 0)
        yield self.store.putGrant(row(A, prefixes=("orders/", "x/")))
        yield self.store.putGrant(row(B, other=D, level="admin"))
        revision, rows = yield self.store.loadGrants()
        self.assertEqual(revision, 2)
        self.assertEqual(sorted(rows), [row(A, prefixes=("orders/", "x/")), row(B, other=D, level="admin")])
        # Replacing by the other digest replaces the row.
        removed = yield self.store.putGrant(row(D, level="write"))
        self.assertEqual(removed, [row(B, other=D, level="admin")])
        self.assertEqual((yield self.store.removeGrant(C)), [])
        self.assertEqual((yield self.store.grantsRevision()), 3)  # nothing removed: no bump
        self.assertEqual((yield self.store.removeGrant(A)), [row(A, prefixes=("orders/", "x/"))])
        revision, rows = yield self.store.loadGrants()
        self.assertEqual((revision, rows), (4, [row(D, level="write")]))

    @inlineCallbacks
    def test_oneSuccessorPerCertificate(self):
        yield self.store.putGrant(row(B, "enrolled", enrolledBy=A), replaceEnrolment=True)
        removed = yield self.store.putGrant(row(C, "enrolled", enrolledBy=A), replaceEnrolment=True)
        self.assertEqual(removed, [row(B, "enrolled", enrolledBy=A)])
        # Re-enrolling one's own successor is fine.
        yield self.store.putGrant(row(C, "enrolled", enrolledBy=A), replaceEnrolment=True)
        _, rows = yield self.store.loadGrants()
        self.assertEqual(rows, [row(C, "enrolled", enrolledBy=A)])

    @inlineCallbacks
    def test_enrolmentCannotTakeOver(self):
        yield self.store.putGrant(row(B, "enrolled", enrolledBy=A))
        yield self.store.putGrant(row(D, "approved"))
        revision, before = yield self.store.loadGrants()
        # Both in one group commit with an ordinary PUT.
        taken = self.store.putGrant(row(B, "enrolled", enrolledBy=C), replaceEnrolment=True)
        approved = self.store.putGrant(row(D, "enrolled", enrolledBy=C), replaceEnrolment=True)
        put = self.store.put("doc/1", b"{}")
        error = yield self.assertFailure(taken, GrantTakenError)
        self.assertIn("already admitted for someone else", str(error))
        yield self.assertFailure(approved, GrantTakenError)
        yield put
        self.assertEqual((yield self.store.loadGrants()), (revision, before))


class PostgresGrantStoreTests(PostgresBackend, GrantStoreTests):
    """L{GrantStoreTests} on PostgreSQL."""
