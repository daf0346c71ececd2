"""
The document commands: GET, PUT, DELETE and REMIND (C{shared/PROTOCOL.md},
sections 6 and 8).

They use the connection's context (L{ICommandContext}): C{ctx.store} (an
L{IDocumentStore}), C{ctx.hub} (the L{proto.hub.ChangeHub} that store
publishes its committed changes to), C{ctx.clock}, C{ctx.push} and
C{ctx.subscribe}.

Ids
===
1 to 512 bytes of UTF-8, no white space, no control characters; compared
case-insensitively by case folding (see L{proto.store.base}). A document
keeps the case of the id it was first written with, and replies (C{Id},
the keys of C{Includes}, WATCH pushes) use that stored id.

GET and Include
===============
C{Include: Field[,Field...]} (repeated headers add up). A field is a
dotted path into the result documents (C{Address.Country}); where a step
meets a list, it goes on into each object of the list (C{Lines.Product}).
The value reached may be an id or a list of ids; every document so
referenced that exists is in C{Includes} once, under its stored id, also
when it is one of the results (or includes itself). Values that are not
valid ids are ignored. Include is one level deep: only the results'
fields are followed, not those of included documents. Results and
included documents are read together, in one snapshot of the store.
How much one Include may cost is bounded: see L{proto.commands.include}
(parsing the header, following it, and its limits).

The documents are stored as the JSON text the client sent, and GET
splices that text into its reply without parsing it again (it parses
the results only to follow an Include).

Timeouts and cancellation
=========================
GET, PUT and DELETE return the store's Deferred. When the protocol cancels
it (the request's Timeout, or the connection ending) an operation still
queued in the store is dropped and never runs: a PUT that was answered
C{ERR Timeout} is not committed later. One that the store had already
started (its transaction is committing) still completes, and its change
is still published to watchers; the client cannot tell which happened, as
with any timeout.

WATCH and UNWATCH
=================
In L{proto.commands.watch} (catch-up from the change log, documents in
pushes, the slow-watcher bound).

Storage full
============
A PUT (or DELETE) that finds the storage full gets
C{ERR Storage full: ...} and writes nothing; the server logs it at most
once per L{STORAGE_FULL_LOG_SECONDS} (with the count of refused writes),
not once per request. DELETE keeps working where SQLite can free space.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring as _encodeString  # json.dumps' (ensure_ascii=False)
from typing import Any, NoReturn, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.commands import jsonbody
from proto.commands.base import (
    ARGS,
    FIRST_ARG,
    CommandError,
    CommandRegistry,
    EncodedResult,
    ICommandContext,
    Result,
    etagHeader,
    requireArgs,
    secondsArgument,
    trap,
)
from proto.commands.include import IncludeWalk, parseInclude
from proto.memo import BoundedMemo
from proto.permissions import ANY, READ, WRITE
from proto.store.base import (
    ConflictError,
    Document,
    InvalidIdError,
    Snapshot,
    StorageFullError,
    StoreUnavailableError,
    Version,
    checkId,
)
from proto.wire.encode import encodeFrameTail
from proto.wire.heads import Request

registry = CommandRegistry()

#: A full storage is logged at most once per this many seconds.
STORAGE_FULL_LOG_SECONDS = 60.0


def _jsonBytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _checkIds(ids: tuple[str, ...] | list[str], what: str = "id") -> None:
    """Refuse the request unless every one of C{ids} is a valid id."""
    try:
        for id in ids:
            checkId(id, what)
    except InvalidIdError as e:
        raise CommandError(str(e)) from None


# -- GET ---------------------------------------------------------------------


def _idKeyBytes(id: str) -> bytes:
    """C{"id": } as JSON: what L{_jsonBytes} gives, without json.dumps for plain ids."""
    if id.isascii() and id.isprintable() and '"' not in id and "\\" not in id:
        # Printable ASCII without quote or backslash: nothing to escape.
        return b'"' + id.encode("ascii") + b'": '
    return _jsonBytes(id) + b": "


def encodeGetReply(
    results: list[Document | None], includes: list[Document]
) -> bytes:
    """The GET reply body, with the stored JSON texts spliced in as they are."""
    return b'{"Results": [%s], "Includes": {%s}}' % (
        b", ".join([b"null" if doc is None else doc.body for doc in results]),
        b", ".join([_idKeyBytes(doc.id) + doc.body for doc in includes]),
    )


#: The GET reply of one id that has no document.
_MISSING_ONE = b'{"Results": [null], "Includes": {}}'


#: L{_replies} keeps at most this many bytes of reply bodies...
REPLY_MEMO_BYTES = 8 * 1024 * 1024

#: ...and no body bigger than this.
REPLY_MEMO_MAX_BODY = 64 * 1024

#: Replies of recent snapshots, by the snapshot's identity: a store may
#: give the same snapshot again for the same read while nothing is
#: committed (L{proto.store.cache.SnapshotMemo}), and then the
#: reply is not encoded again: neither its body nor (an
#: L{EncodedResult}) its headers. Each entry keeps its snapshot, so an
#: identity is never reused while it is here. (Its size: the body, twice:
#: as the result's body and in its encoded tail.)
_replies: BoundedMemo[int, tuple[Snapshot, EncodedResult]] = BoundedMemo(REPLY_MEMO_BYTES, REPLY_MEMO_MAX_BODY)


def _getResult(snapshot: Snapshot) -> EncodedResult:
    """L{_encodeResult}, remembered for recent snapshots (see L{_replies})."""
    remembered = _replies.entries.get(id(snapshot))
    if remembered is not None and remembered[0] is snapshot:
        return remembered[1]
    body, headers = _encodeResult(snapshot)
    result = EncodedResult(body, headers, encodeFrameTail(body, headers))
    _replies.put(id(snapshot), (snapshot, result), 2 * len(body))
    return result


def _encodeResult(snapshot: Snapshot) -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """
    The GET reply's body and headers: C{Etag} (the snapshot's high-water
    etag) and C{Etags} (each result's etag, 0 for a missing one), section 8.
    """
    results, includes, etag = snapshot
    if len(results) == 1:
        # The common GET of one id: what encodeGetReply gives, in one step.
        (doc,) = results
        if doc is None:
            if not includes:
                return _MISSING_ONE, (("Etag", str(etag)), ("Etags", "0"))
        else:
            return (
                b'{"Results": [%s], "Includes": {%s}}' % (
                    doc.body,
                    b", ".join([_idKeyBytes(i.id) + i.body for i in includes]),
                ),
                (("Etag", str(etag)), ("Etags", str(doc.etag))),
            )
    etags = ",".join([str(0 if doc is None else doc.etag) for doc in results])
    return encodeGetReply(results, includes), (("Etag", str(etag)), ("Etags", etags))


@registry.command("GET", level=READ, ids=ARGS)
def get(ctx: ICommandContext, request: Request) -> Deferred[Result] | Result:
    """C{GET id [id ...]}, optional C{Include}: documents by id, with etags."""
    args = request.args
    include = request.headers.get("include")
    store = ctx.store
    # A store that keeps what was made of a read until the next commit
    # (the SQLite store's cache): the same request is answered with the
    # same encoded reply, without checking, routing and reading it again
    # (issue 13). Only a reply that succeeded is kept, so a hit needs no
    # check that the request passed. The key is what the reply depends
    # on: the ids as sent, the Include as sent and, with an Include, the
    # grant's filter of included ids (section 9).
    remembered = getattr(store, "remembered", None)
    key: tuple[object, ...] | None = None
    if remembered is not None:
        key = (args, include) if include is None else (args, include, ctx.grant.filterIds())
        found = remembered(key)
        if found is not None:
            result: EncodedResult = found
            return result
    if not args:
        requireArgs(request, 1, None, "GET id [id ...]")
    _checkIds(args)
    walk = None
    if include is not None:
        paths = parseInclude(include)
        if paths:
            # Section 9: documents outside the certificate's prefixes are
            # left out of Includes, without an error. The walk is bounded
            # (include.py).
            walk = IncludeWalk(paths, ctx.grant.filterIds())
    readNow = getattr(store, "readNow", None)
    if readNow is None:
        return store.read(args, walk).addCallbacks(_getResult, storeTrouble)
    # A store that can answer at once (its document cache, an inline
    # read) spares the reply a Deferred.
    read: Snapshot | Deferred[Snapshot] = readNow(args, walk)
    if isinstance(read, Snapshot):
        result = _getResult(read)
        if key is not None:
            # (A store with remembered() has remember(): see above.)
            cast(Any, store).remember(key, result, 2 * len(result.body), read.etag)
        return result
    return read.addCallbacks(_getResult, storeTrouble)


# -- PUT, DELETE -------------------------------------------------------------


def _parseIfMatch(value: str | None) -> int | None:
    return etagHeader(
        value, "If-Match",
        "an etag, a decimal number; 0 means the document must not exist yet",
    )


def storeTrouble(failure: Failure) -> NoReturn:
    """
    A store whose database cannot be reached is the client's C{ERR} with
    the store's reason, not an internal error: the request may be retried.
    """
    trap(failure, StoreUnavailableError)
    raise CommandError(f"Store unavailable: {failure.value}")


class _StorageFullLog:
    """Logs a full storage once per interval, with how many writes it refused."""

    log = Logger()

    def __init__(self) -> None:
        self.lastLogged: float | None = None
        self.refused = 0

    def refuse(self, ctx: ICommandContext, failure: Failure) -> NoReturn:
        trap(failure, StorageFullError)
        self.refused += 1
        now = ctx.clock.seconds()
        if self.lastLogged is None or now - self.lastLogged >= STORAGE_FULL_LOG_SECONDS:
            self.log.error(
                "Storage full: {refused} write(s) refused since the last report: {reason}",
                refused=self.refused, reason=str(failure.value),
            )
            self.lastLogged = now
            self.refused = 0
        raise CommandError(f"Storage full: {failure.value}")


_storageFull = _StorageFullLog()


def _encodeVersion(version: Version) -> bytes:
    """
    C{{"Id": ..., "Etag": ...}}: byte for byte what L{_jsonBytes} makes of
    that dict, without building it (this runs once per PUT).
    """
    return b'{"Id": %s, "Etag": %d}' % (
        _encodeString(version.id).encode("utf-8"), version.etag
    )


def _writeFailed(failure: Failure, ctx: ICommandContext) -> NoReturn:
    """
    A PUT's or DELETE's failure in the client's words: a conflict, a full
    storage (logged, see L{_StorageFullLog}), an unreachable store; any
    other failure goes on as it is. One errback instead of three in a row
    (a PUT's Deferred runs this chain once per request).
    """
    error = failure.value
    if isinstance(error, ConflictError):
        raise CommandError(f"Conflict: {error}")
    if isinstance(error, StorageFullError):
        _storageFull.refuse(ctx, failure)
    if isinstance(error, StoreUnavailableError):
        storeTrouble(failure)
    failure.raiseException()


@registry.command("PUT", level=WRITE, ids=FIRST_ARG)
def put(ctx: ICommandContext, request: Request) -> Deferred[bytes]:
    """C{PUT id} with a JSON object body, optional C{If-Match}."""
    requireArgs(request, 1, 1, "PUT id (with a JSON object as the body)")
    (id,) = request.args
    _checkIds(request.args)
    ifMatch = _parseIfMatch(request.header("if-match"))
    checking = jsonbody.checkObjectBody(request)
    if checking is None:
        d = ctx.store.put(id, request.body, ifMatch)
    else:
        # A large body is checked off the reactor thread; cancelling
        # (Timeout) while it is checked means the store never sees it.
        d = checking.addCallback(lambda _: ctx.store.put(id, request.body, ifMatch))
    # The same Deferred, retyped.
    return d.addCallbacks(_encodeVersion, _writeFailed, errbackArgs=(ctx,))


@registry.command("DELETE", level=WRITE, ids=ARGS)
def delete(ctx: ICommandContext, request: Request) -> Deferred[bytes]:
    """C{DELETE id [id ...]}: how many documents were removed."""
    requireArgs(request, 1, None, "DELETE id [id ...]")
    _checkIds(request.args)
    return ctx.store.delete(request.args).addCallbacks(
        lambda deleted: b'{"Deleted": %d}' % len(deleted), _writeFailed, errbackArgs=(ctx,)
    )


# -- REMIND --------------------------------------------------------------------


@registry.command("REMIND", level=ANY)
def remind(ctx: ICommandContext, request: Request) -> Result:
    """C{REMIND seconds text...}: push the text after that many seconds."""
    requireArgs(request, 2, None, "REMIND seconds text...")
    delay = secondsArgument(request.args[0])
    text = " ".join(request.args[1:]).encode("utf-8")
    sequence = request.sequence

    def fire() -> None:
        ctx.unsubscribe(sequence)
        ctx.push(sequence, text)

    call = ctx.clock.callLater(delay, fire)

    def cancel() -> None:
        if call.active():
            call.cancel()

    ctx.subscribe(sequence, cancel)
    return Result()
