"""
The server's effective allow-list, and the certificate lifecycle of
PROTOCOL.md section 9: who is knocking (PENDING), approvals (APPROVE,
REVOKE) and renewal (ENROLL).

One list decides admission and rights: the operator's allow-list file
(read-only to the server) plus the approvals and enrolments kept in the
store's C{grants} table (L{proto.store.grants}). L{AccessControl} merges
the two (a file entry wins), and hands every change of either, through
one path, to the factory (C{onChange}), which applies it to live
connections: the same code whether an operator edited the file, an admin
ran APPROVE here, or another server sharing the store did (seen by
L{AccessControl.poll}, every second, so within 2 seconds).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generator

from twisted.internet import defer
from twisted.logger import Logger

from proto.admission import AllowList, Identity, normaliseThumbprint
from proto.permissions import APPROVED, ENROLLED, Grant, isoUTC
from proto.store.base import StoreError
from proto.store.grants import GrantRow, IGrantStore

#: How many distinct refused certificates PENDING remembers (the contract
#: asks for at least 100); the oldest is dropped first.
PENDING_LIMIT = 1000

#: How many of its newest refused certificates each worker process shares
#: with the others (run-directory snapshots, L{proto.stats}), so that
#: PENDING on any worker shows the whole server's.
PENDING_SHARED = 200

#: Longest CN or reason kept per refused certificate (a refused client
#: chooses its CN: it must not choose our memory use).
_TEXT_LIMIT = 256


class AccessError(Exception):
    """An APPROVE, REVOKE or ENROLL that cannot be done; the message is for the client."""


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."


class PendingList:
    """
    The most recent refused certificates, by SHA-1, bounded: a refused
    client cannot fill memory, since a new certificate beyond the limit
    pushes the oldest out.
    """

    def __init__(self, limit: int = PENDING_LIMIT) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, who: Identity, peer: str, reason: str, now: float) -> None:
        entry = self._entries.pop(who.sha1, None)
        if entry is None:
            entry = {
                "Sha1": who.sha1,
                "Sha256": who.sha256,
                "CN": _clip(who.commonName),
                "FirstSeen": isoUTC(now),
                "Attempts": 0,
            }
        entry["Peer"] = peer
        entry["Reason"] = _clip(reason)
        entry["LastSeen"] = isoUTC(now)
        entry["Attempts"] += 1
        self._entries[who.sha1] = entry
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def find(self, digest: str) -> dict[str, Any] | None:
        entry = self._entries.get(digest)
        if entry is None:
            for candidate in self._entries.values():
                if candidate["Sha256"] == digest:
                    return candidate
        return entry

    def forget(self, digest: str) -> None:
        entry = self.find(digest)
        if entry is not None:
            del self._entries[entry["Sha1"]]

    def listing(self) -> list[dict[str, Any]]:
        """The PENDING reply: newest first, with the keys of section 9."""
        keys = ("Sha1", "Sha256", "CN", "Peer", "Reason", "FirstSeen", "LastSeen", "Attempts")
        return [{key: entry[key] for key in keys} for entry in reversed(self._entries.values())]


def mergePending(listings: list[list[dict[str, Any]]], limit: int = PENDING_LIMIT) -> list[dict[str, Any]]:
    """
    One PENDING reply from several processes' listings (workers of one
    server): the same certificate's entries are added up (attempts summed,
    first seen the earliest, peer and reason from the latest), newest
    first, at most C{limit}.
    """
    merged: dict[str, dict[str, Any]] = {}
    for listing in listings:
        for entry in listing:
            known = merged.get(entry["Sha1"])
            if known is None:
                merged[entry["Sha1"]] = dict(entry)
                continue
            attempts = known["Attempts"] + entry["Attempts"]
            first = min(known["FirstSeen"], entry["FirstSeen"])
            if entry["LastSeen"] > known["LastSeen"]:
                known.update(entry)
            known["Attempts"], known["FirstSeen"] = attempts, first
    newest = sorted(merged.values(), key=lambda entry: entry["LastSeen"], reverse=True)
    return newest[:limit]


def describe(thumbprint: str, grant: Grant) -> dict[str, Any]:
    """The APPROVE/REVOKE reply: C{{"Sha1" or "Sha256", "Name", "Can"}}."""
    key = "Sha1" if len(thumbprint) == 40 else "Sha256"
    return {key: thumbprint, "Name": grant.name, "Can": grant.level}


class AccessControl:
    """
    The effective allow-list (file + store), its changes, and the
    operations on the store's part of it.

    @ivar pending: the L{PendingList} of this server.
    @ivar store: the L{IGrantStore}, or C{None} (then approvals and
        enrolments are refused with a reason).
    @ivar onChange: called with the new effective L{AllowList} whenever
        it changes (the factory applies it to live connections).
    """

    log = Logger()

    def __init__(self, fileList: Callable[[], AllowList], store: Any = None) -> None:
        self._fileList = fileList
        self.store = store if IGrantStore.providedBy(store) else None
        self.pending = PendingList()
        self.onChange: Callable[[AllowList], None] | None = None
        self._extra: dict[str, Grant] = {}
        self._rows: dict[str, GrantRow] = {}
        self._revision = -1
        self._file: AllowList | None = None
        self._merged: AllowList | None = None
        self._polling: defer.Deferred | None = None
        #: Why reading the grants fails (as last logged), or C{None}.
        self._storeFailing: str | None = None

    # -- the effective list ----------------------------------------------------

    def current(self) -> AllowList:
        """The allow-list that decides admission and rights now."""
        file = self._fileList()
        if file is not self._file or self._merged is None:
            self._file = file
            self._merged = file.withExtra(self._extra) if self._extra else file
        return self._merged

    def fileChanged(self, new: AllowList | None = None) -> None:
        """The operator's file changed (reload, SIGHUP): apply it."""
        self._notify()

    def _notify(self) -> None:
        self._merged = None
        if self.onChange is not None:
            self.onChange(self.current())

    def _apply(self, loaded: tuple[int, list[GrantRow]]) -> None:
        revision, rows = loaded
        if revision <= self._revision:
            return  # an older read finished after a newer one
        first = self._revision < 0
        self._revision = revision
        extra: dict[str, Grant] = {}
        byDigest: dict[str, GrantRow] = {}
        for row in rows:
            grant = row.grant()
            for digest in row.digests():
                extra[digest] = grant
                byDigest[digest] = row
        self._rows = byDigest
        if extra == self._extra:
            return
        self._extra = extra
        self.log.info(
            "Approvals and enrolments {what}: {count} certificates",
            what="loaded" if first else "changed", count=len(rows),
        )
        self._notify()

    def refresh(self) -> defer.Deferred:
        """Read the grants table now and apply it. Never fails (errors are logged)."""
        if self.store is None:
            return defer.succeed(None)
        d = self.store.loadGrants()
        d.addCallback(self._apply)
        d.addCallbacks(self._storeWorks, self._storeFailed)
        return d

    def poll(self) -> defer.Deferred | None:
        """
        Called every second: reload the grants table if its revision moved
        (another server, or another worker, changed it). At most one poll
        at a time.
        """
        store = self.store
        if store is None or self._polling is not None:
            return None

        def check(revision: int) -> defer.Deferred[None] | None:
            if revision != self._revision:
                return store.loadGrants().addCallback(self._apply)
            return None

        def done(result):
            self._polling = None
            return result

        d = store.grantsRevision().addCallback(check)
        # Set before done can run: a store that is not open fails at once
        # (synchronously), and done must then clear it, or every later poll
        # would think this one still runs (the grants never read again).
        self._polling = d
        d.addCallbacks(self._storeWorks, self._storeFailed)
        d.addBoth(done)
        return d

    def _storeWorks(self, _: Any) -> None:
        if self._storeFailing is not None:
            self._storeFailing = None
            self.log.info("Approvals and enrolments readable again")

    def _storeFailed(self, failure: Any) -> None:
        # Logged when it starts failing and when the reason changes (a
        # store that opens late fails first with "not open yet", and
        # whatever fails next must not be hidden behind that).
        error = failure.getErrorMessage()
        if error != self._storeFailing:
            self._storeFailing = error
            if failure.check(StoreError) is None:
                self.log.failure("Cannot apply approvals and enrolments from the store", failure)
                return
            self.log.error(
                "Cannot read approvals and enrolments from the store, {kept}: {error}",
                kept="keeping the last ones read" if self._revision >= 0 else
                "none read yet: only the allow-list file admits until they are",
                error=error,
            )

    # -- operations ------------------------------------------------------------

    def _needStore(self) -> IGrantStore:
        if self.store is None:
            raise AccessError(
                "This server's store does not keep approvals and enrolments"
            )
        return self.store

    @staticmethod
    def thumbprint(text: str) -> str:
        digest = normaliseThumbprint(text)
        if digest is None:
            raise AccessError(
                f"Malformed thumbprint {text[:80]!r}: expected SHA-1 (40 hex digits) "
                "or SHA-256 (64 hex digits)"
            )
        return digest

    def _inFile(self, *digests: str) -> bool:
        entries = self._fileList().entries
        return any(digest in entries for digest in digests)

    def _storeEntry(self, text: str, fileAdvice: str) -> tuple[str, IGrantStore]:
        """
        The digest named by C{text} and the store, for an operation on the
        store's part of the list (APPROVE, REVOKE): refused if malformed,
        without a store, or an entry of the operator's file (C{fileAdvice},
        appended to the reason, says what to do instead).
        """
        digest = self.thumbprint(text)
        store = self._needStore()
        if self._inFile(digest):
            raise AccessError(
                f"{digest} is on the operator's allow-list file{fileAdvice}"
            )
        return digest, store

    @defer.inlineCallbacks
    def approve(
        self, text: str, grant: Grant, now: float
    ) -> Generator[defer.Deferred[Any], Any, GrantRow]:
        """
        APPROVE: admit the certificate C{text} (a thumbprint) with C{grant}
        from now on. Without a name, the name of the approval it replaces
        is kept, else the CN it was refused with (PENDING) is used.

        @return: a Deferred firing with the stored L{GrantRow}.
        @raise AccessError: malformed thumbprint, an entry of the file, no
            store.
        """
        digest, store = self._storeEntry(text, "; change it there")
        seen = self.pending.find(digest)
        before = self._rows.get(digest)
        if not grant.name:
            # Without a name: the one it had, else the CN it knocked with.
            name = before.name if before is not None else seen["CN"] if seen is not None else ""
            grant = Grant(name, grant.level, grant.prefixes)
        # Keep both digests when we know them, so that REVOKE works with
        # either: from PENDING, or from the approval this one replaces.
        other = None
        if seen is not None:
            other = seen["Sha256"] if digest == seen["Sha1"] else seen["Sha1"]
        elif before is not None:
            other = next((d for d in before.digests() if d != digest), None)
        row = GrantRow.of(digest, grant.withOrigin(APPROVED), now, other)
        yield store.putGrant(row)
        self.pending.forget(digest)
        self.log.info("Approved {digest}: {grant}", digest=digest, grant=grant.attributes())
        yield self.refresh()
        return row

    @defer.inlineCallbacks
    def revoke(self, text: str) -> Generator[defer.Deferred[Any], Any, list[GrantRow]]:
        """
        REVOKE: undo the approval or enrolment of C{text}; its live
        connections are cut by the change that follows.

        @return: a Deferred firing with the removed L{GrantRow}s (at
            least one).
        @raise AccessError: malformed, an entry of the file, nothing to
            revoke.
        """
        digest, store = self._storeEntry(
            text, ", which commands do not change: remove it from the file"
        )
        removed = yield store.removeGrant(digest)
        if not removed:
            raise AccessError(f"{digest} is not approved or enrolled: nothing to revoke")
        self.log.info("Revoked {digest}", digest=digest)
        yield self.refresh()
        return removed

    @defer.inlineCallbacks
    def enroll(
        self, who: Identity, grant: Grant, successor: Identity, now: float
    ) -> Generator[defer.Deferred[Any], Any, GrantRow]:
        """
        ENROLL: admit C{successor} with a copy of C{grant} (the enrolling
        certificate's rights now), replacing (and so revoking) the one
        C{who} enrolled before.

        @return: a Deferred firing with the stored L{GrantRow}.
        @raise AccessError: the successor is C{who} itself or is already
            someone else's; no store.
        """
        store = self._needStore()
        if successor.sha1 == who.sha1:
            raise AccessError("ENROLL needs a new certificate, not the one you are connected with")
        if self._inFile(successor.sha1, successor.sha256):
            raise AccessError(
                f"Certificate {successor.sha1} is already on the operator's allow-list file"
            )
        held = self.current().grantFor(successor.sha1, successor.sha256)
        if held is not None and held.enrolledBy != who.sha1:
            raise AccessError(
                f"Certificate {successor.sha1} is already admitted for someone else"
            )
        row = GrantRow.of(
            successor.sha1, grant.withOrigin(ENROLLED, who.sha1), now, successor.sha256
        )
        removed = yield store.putGrant(row, replaceEnrolment=True)
        replaced = [r.thumbprint for r in removed if r.thumbprint != successor.sha1]
        self.log.info(
            "{who} enrolled its successor {successor} ({grant}){replaced}",
            who=who.sha1, successor=successor.sha1, grant=grant.attributes(),
            replaced=f", replacing {', '.join(replaced)}" if replaced else "",
        )
        yield self.refresh()
        return row
