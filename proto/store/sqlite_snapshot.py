"""
A read of the SQLite store as one snapshot that can be cancelled and
bounded while it runs: the documents, the etag they were read at
(C{shared/PROTOCOL.md} section 8: GET's C{Etag} header), and for an
Include the documents they reference.

Why a module of its own: every route a read may take runs this same
code (see L{proto.store.sqlite_reads}): a reader thread's session, the
writer's session for a read queued behind unfinished writes
(read-your-writes, L{proto.store.sqlite_write}), and the inline reader
on the reactor thread (L{proto.store.sqlite_inline}), which bounds the
walk with C{maxSteps} instead of a token.

Cancellation: a read's L{Token} is set by the reactor thread (the
request's C{Timeout}, C{shared/PROTOCOL.md} section 3, or its connection
ending) and checked by the thread
running the read between chunks of ids and at the C{None} ticks the
C{references} walk yields now and then (see
L{proto.store.base.IDocumentStore.read}); the read then raises
L{CancelledError} and its transaction is rolled back by its caller.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import CancelledError, Deferred

from proto.store import sqlite_read
from proto.store.base import Document, Snapshot, resolveIncludes

References = Callable[[list[Document | None]], Iterable[str | None]]


class TooBig(Exception):
    """An inline read outgrew the inline bounds: run it on a thread."""


class Token:
    """
    The cancellation state of one read, shared by the reactor thread
    (which sets it) and the thread running the read (which checks it).
    """

    __slots__ = ("cancelled", "inner")

    def __init__(self) -> None:
        self.cancelled = False
        #: The worker's Deferred, once the read was handed to a thread.
        self.inner: Deferred[Any] | None = None

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError("the read was cancelled while it ran")


def selectChecked(
    connection: sqlite3.Connection, keys: Sequence[str], token: Token | None
) -> list[Document | None]:
    """L{sqlite_read.select}, checking C{token} between chunks."""
    if token is None or len(keys) <= sqlite_read._CHUNK:
        return sqlite_read.select(connection, keys)
    found: dict[str, Document] = {}
    unique = list(dict.fromkeys(keys))
    step = sqlite_read._CHUNK
    for start in range(0, len(unique), step):
        token.check()
        for doc, key in zip(sqlite_read.select(connection, unique[start : start + step]),
                            unique[start : start + step]):
            if doc is not None:
                found[key] = doc
    return [found.get(key) for key in keys]


def snapshot(
    connection: sqlite3.Connection,
    keys: Sequence[str],
    references: References | None,
    token: Token | None = None,
    maxSteps: int | None = None,
) -> Snapshot:
    """
    The documents C{keys}, the etag, and with C{references} the documents
    they reference: in the caller's read transaction.

    @param token: checked between chunks and at each step of the walk.
    @param maxSteps: raise L{TooBig} after this many items (ids or
        C{None} ticks) from the walk.
    """
    etag = sqlite_read.counter(connection, "etag")
    results = selectChecked(connection, keys, token)
    if references is None:
        return Snapshot(results, [], etag)
    return Snapshot(results, follow(connection, results, references, token, maxSteps), etag)


def follow(
    connection: sqlite3.Connection,
    results: list[Document | None],
    references: References,
    token: Token | None = None,
    maxSteps: int | None = None,
) -> list[Document]:
    """The documents that C{references(results)} names that exist, each once."""
    steps = 0

    def step(id: str | None) -> None:
        nonlocal steps
        steps += 1
        if maxSteps is not None and steps > maxSteps:
            raise TooBig()
        if id is None and token is not None:
            token.check()

    return resolveIncludes(
        results, references, lambda missing: selectChecked(connection, missing, token), step
    )
