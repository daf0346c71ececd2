"""
What a document store is, independent of where the documents live.

The commands (L{proto.commands.documents}) talk to a store only through
L{IDocumentStore}, so another backend (a networked database, say) can be
added without touching them or the protocol.

Ids
===
An id is 1 to L{MAX_ID_BYTES} bytes of UTF-8 with no white space and no
control characters (L{checkId}). Ids are compared case-insensitively by
their L{idKey}, which is C{str.casefold()}: full Unicode case folding, so
C{"STRASSE"} and C{"straße"} are the same id. Case folding (unlike
C{lower()}, which has a context-sensitive rule for the Greek final sigma)
folds every character on its own, so C{idKey(a + b) == idKey(a) + idKey(b)}:
that is what makes a case-insensitive I{prefix} (WATCH) well defined. A
document keeps the id it was first written with; a later PUT with other
case updates it but does not rename it.

Etags and the change log
========================
One counter for the whole store, persisted, never reused, shared by every
process writing it: every change (a PUT, or the removal of a document by
DELETE) takes the next value inside its write transaction. So the etags
of a store's changes increase in commit order, and once etag n is
committed every lower one is too (C{shared/PROTOCOL.md}, section 8).

Every change is also appended to the store's change log, in the same
transaction. The log keeps at least the newest C{retainChanges} changes;
L{IDocumentStore.changesSince} reads it (WATCH with C{Since}), and the
store feeds the change hub from it in etag order, including the changes
that other processes commit to the same store.
"""

from __future__ import annotations

import unicodedata
from typing import Callable, Iterable, NamedTuple, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Interface

#: The longest id, in bytes of UTF-8.
MAX_ID_BYTES = 512

#: The C{type} of a change, as published to the hub and pushed by WATCH.
PUT = "Put"
DELETE = "Delete"


class StoreError(Exception):
    """
    The store could not do what was asked (for an unexpected reason: the
    disk, the database). The message is for the server's log.
    """


class StoreClosedError(StoreError):
    """The store is closed (or failed to start): it takes no more work."""


class StoreUnavailableError(StoreError):
    """
    The store's database cannot be reached (or did not answer in time);
    the store keeps trying to reconnect. The message is one line for the
    client, and says when the outcome of a write is unknown.
    """


class StoreNotOpenedError(StoreClosedError, StoreUnavailableError):
    """
    The store is not open: it could not be opened at start. A PostgreSQL
    store whose database cannot be reached keeps trying (its message ends
    C{(retrying)}, L{proto.store.reopen}) and works once it opens; an
    SQLite file that cannot be opened, or a PostgreSQL schema from a newer
    release, leaves the store closed, and the message says that the server
    must be restarted once that is fixed. Either way every operation fails
    with this at once, its message one line for the client, so a client
    gets C{ERR Store unavailable: ...} rather than an internal error.
    """


class StorageFullError(StoreError):
    """
    The storage has no room for the write (a full disk, or the database's
    size limit). Nothing of the failed operation was written; operations
    that free space (DELETE) may still succeed. The message is one line
    for the client.
    """


class ConflictError(Exception):
    """
    A conditional PUT (If-Match) found another etag than it expected;
    nothing was written. The message is one line for the client.

    @ivar id: the id as the request gave it.
    @ivar expected: the etag the request expected (C{0}: no document).
    @ivar actual: the stored etag, or C{None} if there is no document.
    """

    def __init__(self, id: str, expected: int, actual: int | None) -> None:
        self.id = id
        self.expected = expected
        self.actual = actual
        if actual is None:
            found = "does not exist"
        else:
            found = f"has etag {actual}"
        if expected == 0:
            wanted = "If-Match 0 requires that it does not exist yet"
        else:
            wanted = f"If-Match was {expected}"
        super().__init__(f"{id} {found}; {wanted}")


class InvalidIdError(ValueError):
    """An id (or id prefix) breaks the rules of L{checkId}; the message says which."""


class Document(NamedTuple):
    """
    A stored document.

    @ivar id: the id as first written (its original case).
    @ivar etag: the etag of the change that wrote this version.
    @ivar body: the JSON text exactly as it was PUT, in UTF-8.
    """

    id: str
    etag: int
    body: bytes


class Version(NamedTuple):
    """
    The outcome of one change: the stored C{id} and the C{etag} the change
    took (for a deletion, the fresh etag of the deletion itself).
    """

    id: str
    etag: int


class Change(NamedTuple):
    """
    One committed change, as the log keeps it and the hub publishes it.

    @ivar id: the stored id (its original case).
    @ivar type: L{PUT} or L{DELETE}.
    @ivar etag: the etag the change took.
    """

    id: str
    type: str
    etag: int


class ChangePage(NamedTuple):
    """
    What L{IDocumentStore.changesSince} read from the change log.

    @ivar changes: the retained changes to matching ids with an etag above
        the one asked for, in etag order (at most the limit asked for).
    @ivar scanned: the log was read through this etag: every matching
        change in (since, scanned] that is retained is in C{changes}. It
        is the last change's etag when the page is full, the store's
        current etag otherwise; read the next page from it.
    @ivar floor: the log holds every change with an etag above C{floor};
        changes at or below it may have been pruned (so a C{since} below
        C{floor} has a gap: C{(since, floor]}).
    """

    changes: list[Change]
    scanned: int
    floor: int


class Snapshot(NamedTuple):
    """
    What L{IDocumentStore.read} returns: one consistent read.

    @ivar results: one entry per id asked for, in order, C{None} if missing.
    @ivar includes: the referenced documents that exist, each once, in the
        order first referenced (empty without C{references}).
    @ivar etag: the highest etag committed when the snapshot was read.
    """

    results: list[Document | None]
    includes: list[Document]
    etag: int


def idKey(id: str) -> str:
    """
    The case-insensitive key of C{id}: equal keys, same document.
    """
    return id.casefold()


def _isForbidden(character: str) -> bool:
    return character.isspace() or unicodedata.category(character) == "Cc"


def checkId(id: str, what: str = "id") -> str:
    """
    Check C{id} against the id rules and return its L{idKey}.

    @param what: how to call the value in the error (C{"id"},
        C{"prefix"}).
    @raise InvalidIdError: naming the rule that C{id} breaks.
    """
    # The common case, quickly: printable ASCII (U+0021 to U+007E) only.
    if id.isascii() and 0 < len(id) <= MAX_ID_BYTES and id.isprintable() and " " not in id:
        return id.lower()
    try:
        size = len(id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidIdError(f"Invalid {what} {id!r}: not valid UTF-8") from None
    if size == 0:
        raise InvalidIdError(f"Invalid {what}: it is empty (1 to {MAX_ID_BYTES} bytes)")
    if size > MAX_ID_BYTES:
        raise InvalidIdError(
            f"Invalid {what} {id[:40]!r}...: {size} bytes of UTF-8, "
            f"the limit is {MAX_ID_BYTES}"
        )
    for character in id:
        if _isForbidden(character):
            raise InvalidIdError(
                f"Invalid {what} {id!r}: no spaces or control characters allowed"
            )
    return idKey(id)


def resolveIncludes(
    results: list[Document | None],
    references: Callable[[list[Document | None]], Iterable[str | None]],
    fetch: Callable[[list[str]], list[Document | None]],
    step: Callable[[str | None], None] | None = None,
) -> list[Document]:
    """
    GET's Include, for any backend: the documents C{references(results)}
    names that exist, each once, in the order first named. Invalid ids and
    C{None} (progress ticks) are skipped; C{fetch(keys)} reads the ones
    not among C{results} (called once, maybe with no keys). C{step}, when
    given, sees every item of the walk first (a cancellation check or a
    bound on the walk raises from there).
    """
    found = {idKey(doc.id): doc for doc in results if doc is not None}
    wanted: dict[str, None] = {}  # ordered, unique
    for id in references(results):
        if step is not None:
            step(id)
        if id is None:
            continue
        try:
            wanted[checkId(id)] = None
        except ValueError:
            continue
    missing = [key for key in wanted if key not in found]
    for key, doc in zip(missing, fetch(missing)):
        if doc is not None:
            found[key] = doc
    return [found[key] for key in wanted if key in found]


class IDocumentStore(Interface):
    """
    Documents (the UTF-8 text of JSON objects) under case-insensitive ids.

    Every method returns a L{Deferred} and never blocks the caller.
    Writes are durable when their Deferred fires. Every committed change
    is appended to the change log in its transaction, and published to
    the store's change hub (if it has one, a L{proto.hub.ChangeHub}) with
    C{hub.publishChanges([...])} in etag order, each change exactly once,
    with no etag left out (changes by other processes sharing the store
    too); the hub's C{etag} is then the highest etag published. A change
    made through this store object is published after it is durable and
    before the write's Deferred fires, I{also} when that Deferred was
    cancelled too late to stop the write. At start, before any change is
    published, the store sets the hub's position with C{hub.startAt(etag)}
    to the current etag.

    A write that finds the storage full fails with L{StorageFullError}
    and writes nothing; the store keeps serving.

    Cancelling the Deferred of an operation that has not started yet
    guarantees it never happens; cancelling one that has started only
    stops the caller from waiting for it.

    Ids must already have passed L{checkId}; the store checks again and
    fails with L{InvalidIdError}.
    """

    def start() -> Deferred[None]:
        """
        Open the store. Operations may be issued at once; they wait until
        it is open. Fires when it is ready, fails (and the store closes) if
        it cannot be opened. A backend whose cause of failure may pass by
        itself (PostgreSQL: a database not reachable yet) keeps trying
        instead (L{proto.store.reopen}): operations then fail at once with
        L{StoreNotOpenedError} until it opens, and the Deferred fires then
        (or fails with L{StoreClosedError} if the store is closed first).
        """

    def close() -> Deferred[None]:
        """
        Stop taking work, finish everything already issued (queued writes
        are committed), release the resources. Fires when done. Later
        operations fail with L{StoreClosedError}.
        """

    def get(ids: Sequence[str]) -> Deferred[list[Document | None]]:
        """
        Fetch documents: one entry per id, in order, C{None} for a missing
        one.
        """

    def getWithReferences(
        ids: Sequence[str],
        references: Callable[[list[Document | None]], Iterable[str]],
    ) -> Deferred[tuple[list[Document | None], list[Document]]]:
        """
        Fetch documents and the documents they reference, in one round
        trip and one consistent snapshot (GET with Include).

        @param references: given the documents found (as L{get} returns
            them), returns the ids they reference. It runs off the reactor
            thread, so it must touch nothing shared.
        @return: fires with the L{get} result and the referenced documents
            that exist, each once, in the order first referenced.
        """

    def read(
        ids: Sequence[str],
        references: Callable[[list[Document | None]], Iterable[str | None]] | None = None,
    ) -> Deferred[Snapshot]:
        """
        L{getWithReferences} (or L{get}, without C{references}) that also
        says the highest etag committed when its snapshot was read (GET's
        C{Etag} header, C{shared/PROTOCOL.md} section 8).

        C{references} may also yield C{None} now and then, as a progress
        tick: the store skips it, and may stop there (failing with
        C{CancelledError}) if the read was cancelled meanwhile. Whatever
        C{references} raises fails the read with it. It may run on the
        reactor thread or another: it must touch nothing shared. It may be
        called more than once for one read (a read begun on one thread and
        moved to another): only the last call counts.
        """

    def changesSince(since: int, prefix: str = "", limit: int = 1000) -> Deferred[ChangePage]:
        """
        Read the change log: the retained changes with an etag above
        C{since} to ids whose L{idKey} starts with C{idKey(prefix)}, in
        etag order, at most C{limit} of them, from one snapshot. See
        L{ChangePage} for how to go on and how to tell a gap.
        """

    def currentEtag() -> Deferred[int]:
        """The highest etag committed (0 for a store that never changed)."""

    def put(id: str, body: bytes, ifMatch: int | None = None) -> Deferred[Version]:
        """
        Create or replace the document C{id} with C{body}, JSON text in
        UTF-8 (the caller checks it; the store keeps it as it is).

        @param ifMatch: if not C{None}, write only if the stored etag is
            this one; C{0} means only if there is no such document.
        @return: fires with the stored id and the new etag; fails with
            L{ConflictError} if C{ifMatch} does not hold.
        """

    def delete(ids: Sequence[str]) -> Deferred[list[Version]]:
        """
        Remove documents. Fires with one L{Version} per document that was
        there and is now gone (ids that were missing, or repeated, have
        none).
        """
