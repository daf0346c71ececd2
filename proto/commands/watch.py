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

The seam between catch-up and live
==================================
The hub (L{proto.hub.ChangeHub}) receives every change in etag order and
knows its position C{hub.etag}; a subscription made at position I{h}
receives exactly the changes above I{h}. A watch keeps its own position
C{pos}: every matching change up to it is queued or pushed. It reads the
log in pages from C{pos} (without a subscription, so a long catch-up
buffers nothing) until a page comes back short, which means it read up
to the store's current etag. Then it subscribes: if the hub is not ahead
of C{pos}, it is live at once (the hub's changes at or below C{pos} are
skipped); otherwise it keeps the hub's changes aside and reads one more
page, which covers (C{pos}, I{h}] since it was read after subscribing,
then pushes the kept changes above the new C{pos}. No change is lost or
pushed twice, whatever the writers do meanwhile.

Flow control and slow watchers
==============================
Catch-up pushes a page only while the connection's output that the client
has not taken (L{proto.unsent}: server buffers I{and} the kernel's send
queue, so independent of socket buffer sizes) is under
L{CATCHUP_WINDOW}; then it waits for it to drain. Live pushes are never
waited for; instead a watch is dropped when, as it is about to write
pushes, that output is over L{DROP_BYTES} (plus the size of its previous
write when that was bigger: one large document may be in flight), or has
stayed over
L{SLOW_BYTES} for L{SLOW_SECONDS} (catch-up waiting that long counts the
same). Its last push is then C{{"Type": "Dropped", "Reason": ...,
"Etag": e}}: e is the etag of the last change pushed (the Since, the
Gap's Etag, or the reply's Etag if none was), so the client can WATCH
again with C{Since: e} and lose nothing.

Fan-out
=======
The JSON of a change is encoded once for all the watches it goes to (and
the whole pushes once for all the watches with the same Sequence); the
server's hub delivers what was committed during a reactor turn at once
(L{proto.hub}), so the pushes one watch gets per turn go out in one
write. The unsent bytes are checked before every write from a Python
bound (L{proto.unsent.UnsentBound}: the last exact figure plus what was
written since), so the kernel is asked only when that bound nears
L{SLOW_BYTES}, or once a second; a write is at most L{CATCHUP_WINDOW}
(a bigger batch goes push by push, checked as it goes).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, NamedTuple, Union
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
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
from proto.commands.include import includedIds as _includedIds, parseInclude
from proto.hub import Subscription
from proto.permissions import RANK, READ, Grant
from proto.store.base import PUT, Change, ChangePage, Document, InvalidIdError, Snapshot, checkId, idKey
from proto.unsent import UnsentBound
from proto.wire import Request

registry = CommandRegistry()

#: Catch-up writes while less than this is unsent to the client.
CATCHUP_WINDOW = 128 * 1024

#: A watch is dropped when more than this is unsent as it writes pushes...
DROP_BYTES = 256 * 1024

#: ... or when more than this has been unsent for SLOW_SECONDS.
SLOW_BYTES = 64 * 1024
SLOW_SECONDS = 10.0

#: Changes read from the log at once, and (at most) documents read at once.
CATCHUP_PAGE = 1000
DOCUMENT_BATCH = 200

#: Documents: the batch shrinks so that one read holds about this much.
DOCUMENT_BATCH_BYTES = 1024 * 1024

#: How often a catch-up blocked by the client checks again.
POLL_SECONDS = 0.005

_log = Logger()


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


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


#: The last change encoded, and its push body: every watch a change goes
#: to asks in turn, so one entry makes it one encoding per change.
_lastEncoded: list[Any] = [None, b""]


def changeBody(change: Change) -> bytes:
    """The push body of a change: C{{"Id": ..., "Type": ..., "Etag": ...}}."""
    if _lastEncoded[0] is change:
        cached: bytes = _lastEncoded[1]
        return cached
    body = _json({"Id": change.id, "Type": change.type, "Etag": change.etag})
    _lastEncoded[0], _lastEncoded[1] = change, body
    return body


class _Gap(NamedTuple):
    """A Gap push waiting in line: changes in (since, etag] may be missing."""

    since: int
    etag: int

    def body(self) -> bytes:
        return _json({"Type": "Gap", "Since": self.since, "Etag": self.etag})


_Item = Union[Change, _Gap]


def _tail(change: Change) -> bytes:
    body = _json({"Id": change.id, "Type": change.type, "Etag": change.etag})
    return b"%d\r\n\r\n%s" % (len(body), body)


#: The last batch of changes turned into frame tails (everything after
#: C{Size: }), those tails, and the whole pushes by head (watches made with
#: the same Sequence on different connections share them): the watches of
#: one prefix get the same list from the hub in turn, so each batch is
#: encoded once for all of them.
_lastBatch: list[Any] = [None, [], {}]


def batchTails(changes: list[Change]) -> list[bytes]:
    """The frame tails (size, empty line, body) of a published batch, encoded once."""
    if _lastBatch[0] is not changes:
        _lastBatch[0], _lastBatch[1], _lastBatch[2] = changes, [_tail(c) for c in changes], {}
    tails: list[bytes] = _lastBatch[1]
    return tails


def batchFrames(changes: list[Change], head: bytes) -> bytes:
    """The pushes of a published batch behind C{head} (C{PUSH}, Sequence, C{Size: })."""
    tails = batchTails(changes)
    byHead: dict[bytes, bytes] = _lastBatch[2]
    data = byHead.get(head)
    if data is None:
        data = byHead[head] = head + head.join(tails)
    return data


def _documentBody(
    change: Change, document: Document | None, includes: list[Document] | None
) -> bytes:
    """A push with C{Document} (and C{Includes}), the stored JSON spliced in."""
    parts = [changeBody(change)[:-1]]
    if change.type == PUT:
        parts.append(b', "Document": ')
        parts.append(b"null" if document is None else document.body)
        if includes is not None:
            parts.append(b', "Includes": {')
            parts.append(b", ".join(_json(doc.id) + b": " + doc.body for doc in includes))
            parts.append(b"}")
    parts.append(b"}")
    return b"".join(parts)


class _Watch:
    """
    One WATCH: catch-up from the log, then live from the hub, with
    optional documents, under the slow-watcher bound (see the module).
    """

    def __init__(
        self,
        ctx: ICommandContext,
        sequence: str,
        prefix: str,
        since: int | None,
        documents: bool,
        paths: list[tuple[str, ...]],
    ) -> None:
        self._ctx = ctx
        self._sequence = sequence
        self._prefix = prefix
        self._since = since
        self._documents = documents
        self._paths = paths
        self._head = b"PUSH\r\nSequence: " + sequence.encode("ascii") + b"\r\nSize: "
        self._pos = 0  # every matching change up to here is queued or pushed
        self._resume = 0  # what Dropped says: the last etag pushed
        self._live = False
        self._kept: list[Change] | None = None  # hub changes kept at the seam
        self._pending: deque[_Item] = deque()  # to push (catch-up, documents)
        self._outbox: list[bytes] = []
        self._outboxEtag = 0
        self._outboxBytes = 0  # of live pushes in the outbox
        self._lastWrite = 0  # bytes of the last write: one big push may be in flight
        self._documentBatch = DOCUMENT_BATCH
        self._subscription: Subscription | None = None
        self._reading = False  # a page of the log is being read
        self._fetching = False  # documents are being read
        self._slowSince: float | None = None
        self._timer: IDelayedCall | None = None
        self.ended = False
        # Section 9: never a push outside the certificate's prefixes.
        self._allowed = ctx.grant.filterIds()
        self._unsent = _unsentBound(ctx)

    def regrant(self, grant: Grant) -> None:
        """
        The certificate's rights changed (section 9): a watch now outside
        its prefixes ends with a C{Dropped} push.
        """
        self._allowed = grant.filterIds()
        if grant.rank < RANK[READ] or not grant.allowsId(self._prefix):
            self._flush()
            self._drop(f"the certificate may no longer WATCH {self._prefix}")

    # -- start ---------------------------------------------------------------

    def begin(self, current: int) -> Result:
        """The store's current etag is known: start, and make the reply."""
        hub = self._ctx.hub
        began = max(current, hub.etag)
        start = began if self._since is None else self._since
        self._pos = self._resume = start
        if not self.ended:
            if start >= hub.etag:
                self._subscribe()
            else:
                self._readPage()
        return Result(b"", (("Etag", str(began)),))

    def _subscribe(self) -> None:
        hub = self._ctx.hub
        if self._documents:
            self._subscription = hub.subscribe(self._prefix, self._changed)
        else:
            self._subscription = hub.subscribe(
                self._prefix, self._changed, None, self._changedBatch
            )
        if hub.etag <= self._pos:
            self._live = True
        else:
            self._kept = []
            self._readPage()

    # -- catch-up ------------------------------------------------------------

    def _readPage(self) -> None:
        self._reading = True
        d = self._ctx.store.changesSince(self._pos, self._prefix, CATCHUP_PAGE)
        d.addCallbacks(self._gotPage, self._storeFailed)

    def _gotPage(self, page: ChangePage) -> None:
        self._reading = False
        if self.ended:
            return
        if page.floor > self._pos:
            self._pending.append(_Gap(self._pos, page.floor))
            self._pos = page.floor
        allowed = self._allowed
        for change in page.changes:
            if change.etag > self._pos and (allowed is None or allowed(change.id)):
                self._pending.append(change)
        self._pos = max(self._pos, page.scanned)
        if len(page.changes) < CATCHUP_PAGE:
            if self._subscription is None:
                self._subscribe()
            elif self._kept is not None:
                kept, self._kept = self._kept, None
                for change in kept:
                    if change.etag > self._pos and (
                        self._allowed is None or self._allowed(change.id)
                    ):
                        self._pending.append(change)
                        self._pos = change.etag
                self._live = True
        self._pump()

    # -- live ------------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        """A change from the hub (in etag order)."""
        if self._kept is not None:
            self._kept.append(change)
            return
        if change.etag <= self._pos:
            return
        self._pos = change.etag
        if self._allowed is not None and not self._allowed(change.id):
            return
        if self._documents:
            self._pending.append(change)
            self._pump()
        else:
            body = changeBody(change)
            frame = self._head + b"%d\r\n\r\n" % len(body) + body
            self._outbox.append(frame)
            self._outboxEtag = change.etag
            self._outboxBytes += len(frame)
            if self._outboxBytes > CATCHUP_WINDOW:
                self._flush()  # a big batch: apply the bound within it
            # Otherwise _changedBatch writes after its batch.

    def _changedBatch(self, changes: list[Change]) -> None:
        """
        A published batch of matching changes (plain watches), written at
        once. In the common case (live, all new, no prefix restriction,
        nothing held back, the client keeping up) its pushes are the
        batch's shared frames (L{batchFrames}): one write, and the unsent
        bytes from their Python bound (L{proto.unsent.UnsentBound}). A
        batch over L{CATCHUP_WINDOW} goes push by push, so that the bound
        is applied within it.
        """
        if (
            self._kept is None
            and changes[0].etag > self._pos
            and self._allowed is None
            and not self._outbox
        ):
            data = batchFrames(changes, self._head)
            size = len(data)
            if size <= CATCHUP_WINDOW:
                self._pos = etag = changes[-1].etag
                unsent = self._unsent
                if unsent.unsent(SLOW_BYTES, self._ctx.unsentBytes) <= SLOW_BYTES:
                    # What _flush does when the client keeps up.
                    self._slowSince = None
                    self._resume = etag
                    self._lastWrite = 0
                    unsent.wrote(size)
                    self._ctx.pushFrames(data, len(changes))
                    return
                self._outbox.append(data)
                self._outboxEtag = etag
                self._outboxBytes += size
                self._flush()
                return
        for change in changes:
            if self.ended:
                return
            self._changed(change)
        self._flush()

    # -- output ------------------------------------------------------------------

    def _frame(self, body: bytes) -> bytes:
        return self._head + b"%d\r\n\r\n" % len(body) + body

    def _pump(self) -> None:
        """Turn pending changes into pushes, as flow control allows."""
        pending = self._pending
        while pending and not self.ended and not self._fetching:
            if not self._live and not self._roomForCatchUp():
                return
            if self._documents and isinstance(pending[0], Change):
                self._fetchDocuments()
                return
            for _ in range(min(len(pending), CATCHUP_PAGE)):
                if self._documents and isinstance(pending[0], Change):
                    break
                item = pending.popleft()
                body = item.body() if isinstance(item, _Gap) else changeBody(item)
                self._outbox.append(self._frame(body))
                self._outboxEtag = item.etag
            self._flush()
        if self.ended:
            return
        self._flush()
        if not pending and not self._reading and not self._fetching and not self._live:
            self._readPage()

    def _roomForCatchUp(self) -> bool:
        """Is there room to write more catch-up? If not, check again soon."""
        unsent = self._unsent.unsent(SLOW_BYTES, self._ctx.unsentBytes)
        if unsent < CATCHUP_WINDOW and not self._ctx.congested():
            self._slowSince = None
            return True
        if self._tooSlow(unsent):
            return False
        if self._timer is None:
            self._timer = self._ctx.clock.callLater(POLL_SECONDS, self._poll)
        return False

    def _poll(self) -> None:
        self._timer = None
        self._pump()

    def _fetchDocuments(self) -> None:
        batch: list[Change] = []
        while self._pending and len(batch) < self._documentBatch:
            if isinstance(self._pending[0], _Gap):
                break
            batch.append(self._pending.popleft())  # type: ignore[arg-type]
        puts = [change.id for change in batch if change.type == PUT]
        references: list[list[str]] = []
        paths = self._paths
        allowed = self._allowed

        def referenced(results: list[Document | None]) -> list[str]:
            # On the store's thread; touches only this batch's list. The
            # store may call it again (a read moved to a thread): start over.
            references.clear()
            every: list[str] = []
            for document in results:
                ids = list(_includedIds([document], paths)) if document else []
                if allowed is not None:  # section 9: left out, no error
                    ids = [id for id in ids if allowed(id)]
                references.append(ids)
                every += ids
            return every

        self._fetching = True
        d = self._ctx.store.read(puts, referenced if paths else None)
        d.addCallback(self._gotDocuments, batch, references)
        d.addErrback(self._storeFailed)

    def _gotDocuments(
        self, snapshot: Snapshot, batch: list[Change], references: list[list[str]]
    ) -> None:
        self._fetching = False
        if self.ended:
            return
        read = sum(len(doc.body) for doc in snapshot.results if doc is not None)
        read += sum(len(doc.body) for doc in snapshot.includes)
        if read > DOCUMENT_BATCH_BYTES:  # big documents: read fewer at once
            self._documentBatch = max(1, len(batch) * DOCUMENT_BATCH_BYTES // read)
        else:
            self._documentBatch = min(DOCUMENT_BATCH, self._documentBatch * 2)
        byKey = {idKey(doc.id): doc for doc in snapshot.includes}
        index = 0
        for change in batch:
            document = includes = None
            if change.type == PUT:
                document = snapshot.results[index]
                if self._paths:
                    includes = self._includes(references[index] if document else [], byKey)
                index += 1
            self._outbox.append(self._frame(_documentBody(change, document, includes)))
            self._outboxEtag = change.etag
        self._pump()

    @staticmethod
    def _includes(ids: list[str], byKey: dict[str, Document]) -> list[Document]:
        found: dict[str, Document] = {}
        for id in ids:
            try:
                key = checkId(id)
            except InvalidIdError:
                continue
            if key in byKey:
                found.setdefault(key, byKey[key])
        return list(found.values())

    def _flush(self) -> None:
        """Write the pushes made so far, unless the client is too slow."""
        if not self._outbox or self.ended:
            return
        unsent = self._unsent.unsent(SLOW_BYTES, self._ctx.unsentBytes)
        if unsent > DROP_BYTES + self._lastWrite:
            self._drop(
                f"more than {DROP_BYTES // 1024} KiB of pushes were waiting for the client"
            )
            return
        if self._tooSlow(unsent):
            return
        data = b"".join(self._outbox)
        self._outbox = []
        self._outboxBytes = 0
        self._resume = self._outboxEtag
        self._lastWrite = len(data) if len(data) > DROP_BYTES else 0
        self._unsent.wrote(len(data))
        self._ctx.pushFrames(data)

    def _tooSlow(self, unsent: int) -> bool:
        """Apply the time bound; True if the watch was dropped."""
        if unsent <= SLOW_BYTES:
            self._slowSince = None
            return False
        now = self._ctx.clock.seconds()
        if self._slowSince is None:
            self._slowSince = now
            return False
        if now - self._slowSince >= SLOW_SECONDS:
            self._drop(
                f"more than {SLOW_BYTES // 1024} KiB of pushes waited for the client "
                f"for {SLOW_SECONDS:g} s"
            )
            return True
        return False

    # -- the end ---------------------------------------------------------------

    def _drop(self, why: str) -> None:
        etag = self._resume
        reason = f"{why}; WATCH again with Since: {etag} to resume"
        self._outbox = []
        self._outboxBytes = 0
        body = _json({"Type": "Dropped", "Reason": reason, "Etag": etag})
        self._unsent.wrote(len(self._head) + len(body) + 16)
        self._ctx.push(self._sequence, body)
        self._ctx.unsubscribe(self._sequence)
        stats = getattr(self._ctx, "stats", None)
        if stats is not None:
            stats.watchesDropped += 1
        _log.info(
            "Dropped WATCH {sequence} {prefix!r} of {peer}: {reason}",
            sequence=self._sequence, prefix=self._prefix, peer=getattr(self._ctx, "peer", "?"),
            reason=reason, event="watch_dropped",
        )

    def _storeFailed(self, failure: Failure) -> None:
        self._reading = self._fetching = False
        if self.ended:
            return
        _log.failure("WATCH {prefix!r} could not read the store", failure, prefix=self._prefix)
        self._flush()
        self._drop("the server could not read the change log")

    def cancel(self) -> None:
        """Stop watching (UNWATCH, the connection ended, or dropped)."""
        self.ended = True
        if self._subscription is not None:
            self._subscription.cancel()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        watches = _watches.get(self._ctx)
        if watches is not None and watches.get(self._sequence) is self:
            del watches[self._sequence]


#: The unsent-bytes bound of each connection with watches (shared by them:
#: it counts what all of them write).
_bounds: WeakKeyDictionary[Any, UnsentBound] = WeakKeyDictionary()


def _unsentBound(ctx: Any) -> UnsentBound:
    bound = _bounds.get(ctx)
    if bound is None:
        bound = _bounds[ctx] = UnsentBound(ctx.clock)  # (keeps no reference to ctx)
    return bound


#: The active watches of each connection, by the WATCH's sequence, so that
#: UNWATCH ends only watches (not, say, a REMIND).
_watches: WeakKeyDictionary[ICommandContext, dict[str, _Watch]] = WeakKeyDictionary()


def watchCount(ctx: ICommandContext) -> int:
    """How many WATCHes are active on a connection (for CLIENTS, STATS, metrics)."""
    return len(_watches.get(ctx, ()))


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
