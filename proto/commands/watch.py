"""
WATCH and UNWATCH (C{shared/PROTOCOL.md}, sections 6 and 8).

C{WATCH prefix} replies C{OK} with C{Etag: e}, the highest etag committed
when the watch began, then pushes every later change to an id starting
with the prefix (ignoring case), in etag order, each once, with no gap:
C{{"Id": id, "Type": "Put" or "Delete", "Etag": n}}.

Headers
=======
  - C{Since: n} (a non-negative integer): first every retained matching
    change above n, read from the store's change log, then live. If the
    log no longer reaches down to n, the first push is
    C{{"Type": "Gap", "Since": n, "Etag": m}}: changes in (n, m] may be
    missing.
  - C{Documents: yes|no}: C{Put} pushes carry C{"Document"} (the body as
    committed by that change or a later one, C{null} if deleted since);
    with C{Include: ...} (GET's syntax) also C{"Includes"}, resolved from
    the same read.

How it runs: L{proto.commands.watchstream} (catch-up, the seam with live);
writing its pushes and dropping a slow watcher:
L{proto.commands.watchoutput}; the pushes' bytes:
L{proto.commands.watchframes}. This module parses and checks the request
and keeps each connection's watches for UNWATCH.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proto.commands.base import (
    ARGS,
    CommandError,
    CommandRegistry,
    ICommandContext,
    Result,
    etagHeader,
    requireArgs,
)
from proto.commands.include import parseInclude
from proto.commands.watchframes import (  # noqa: F401  (their old home)
    _documentBody as _documentBody,
    _Gap as _Gap,
    _json as _json,
    _tail as _tail,
    batchFrames as batchFrames,
    batchTails as batchTails,
    changeBody as changeBody,
)
from proto.commands.watchoutput import (  # noqa: F401  (their old home)
    DROP_BYTES as DROP_BYTES,
    SLOW_BYTES as SLOW_BYTES,
    SLOW_SECONDS as SLOW_SECONDS,
    _bounds as _bounds,
)
from proto.commands.watchstream import (  # noqa: F401  (their old home)
    CATCHUP_PAGE as CATCHUP_PAGE,
    CATCHUP_WINDOW as CATCHUP_WINDOW,
    DOCUMENT_BATCH as DOCUMENT_BATCH,
    DOCUMENT_BATCH_BYTES as DOCUMENT_BATCH_BYTES,
    POLL_SECONDS as POLL_SECONDS,
    _Watch,
    _watches,
    watchCount as watchCount,
)
from proto.permissions import READ
from proto.store.base import InvalidIdError, checkId
from proto.wire.heads import Request

registry = CommandRegistry()


def parseSince(value: str | None) -> int | None:
    """The C{Since} header: C{None}, or a non-negative integer."""
    return etagHeader(
        value, "Since",
        "a non-negative integer: the etag you have seen everything up to, "
        "0 for the whole history",
    )


def parseDocuments(value: str | None) -> bool:
    """The C{Documents} header: C{yes} or C{no}, any case (absent: no)."""
    if value is None:
        return False
    answer = value.lower()
    if answer not in ("yes", "no"):
        raise CommandError(f"Malformed Documents: {value!r} (expected yes or no)")
    return answer == "yes"


@registry.command("WATCH", level=READ, ids=ARGS)
def watch(ctx: ICommandContext, request: Request) -> Deferred[Result]:
    """
    C{WATCH prefix}, optional C{Since}, C{Documents}, C{Include}: push
    every change to ids starting with C{prefix}.
    """
    requireArgs(request, 1, 1, "WATCH prefix")
    (prefix,) = request.args
    try:
        checkId(prefix, "prefix")
    except InvalidIdError as e:
        raise CommandError(str(e)) from None
    since = parseSince(request.header("since"))
    documents = parseDocuments(request.header("documents"))
    # Include only shapes the documents pushed (checked, ignored without).
    paths = parseInclude(request.header("include")) if documents else []
    if not documents:
        parseInclude(request.header("include"))
    sequence = request.sequence
    watcher = _Watch(ctx, sequence, prefix, since, documents, paths)
    _watches.setdefault(ctx, {})[sequence] = watcher
    ctx.subscribe(sequence, watcher.cancel, watcher.regrant)

    def failed(failure: Failure) -> Failure:
        ctx.unsubscribe(sequence)  # no reply OK, no watch
        return failure

    from proto.commands.documents import storeTrouble  # its database gone: a clear ERR

    return ctx.store.currentEtag().addCallbacks(watcher.begin, failed).addErrback(storeTrouble)


@registry.command("UNWATCH", level=READ)
def unwatch(ctx: ICommandContext, request: Request) -> Result:
    """C{UNWATCH sequence}: end the WATCH that had that Sequence."""
    requireArgs(request, 1, 1, "UNWATCH sequence-of-the-WATCH")
    (sequence,) = request.args
    if sequence not in _watches.get(ctx, {}):
        raise CommandError(f"No WATCH with Sequence {sequence} on this connection")
    ctx.unsubscribe(sequence)
    return Result()
