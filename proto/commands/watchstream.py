"""
One WATCH as it runs (L{proto.commands.watch} parses the request and
replies): catch-up from the store's change log, then live from the hub,
with optional documents, under the slow-watcher bound
(C{shared/PROTOCOL.md}, section 8). The pushes' bytes:
L{proto.commands.watchframes}.

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

How its pushes are written, and when a watch is dropped for a slow
client: L{proto.commands.watchoutput}.
"""

from __future__ import annotations

from collections import deque
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.commands.base import ICommandContext, Result
from proto.commands.include import includedIds as _includedIds
from proto.commands.watchframes import _documentBody, _Gap, _Item, batchFrames, changeBody
from proto.commands.watchoutput import SLOW_BYTES, PushOutput
from proto.hub import Subscription
from proto.permissions import RANK, READ, Grant
from proto.store.base import PUT, Change, ChangePage, Document, InvalidIdError, Snapshot, checkId, idKey

#: Catch-up writes while less than this is unsent to the client.
CATCHUP_WINDOW = 128 * 1024

#: Changes read from the log at once, and (at most) documents read at once.
CATCHUP_PAGE = 1000
DOCUMENT_BATCH = 200

#: Documents: the batch shrinks so that one read holds about this much.
DOCUMENT_BATCH_BYTES = 1024 * 1024

#: How often a catch-up blocked by the client checks again.
POLL_SECONDS = 0.005

#: (The namespace WATCH's lines have always had.)
_log = Logger(namespace="proto.commands.watch")


class _Watch(PushOutput):
    """
    One WATCH: catch-up from the log, then live from the hub, with
    optional documents, under the slow-watcher bound (L{PushOutput}).
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
        super().__init__(ctx, sequence, prefix)
        self._since = since
        self._documents = documents
        self._paths = paths
        self._pos = 0  # every matching change up to here is queued or pushed
        self._live = False
        self._kept: list[Change] | None = None  # hub changes kept at the seam
        self._pending: deque[_Item] = deque()  # to push (catch-up, documents)
        self._documentBatch = DOCUMENT_BATCH
        self._subscription: Subscription | None = None
        self._reading = False  # a page of the log is being read
        self._fetching = False  # documents are being read
        self._timer: IDelayedCall | None = None
        # Section 9: never a push outside the certificate's prefixes.
        self._allowed = ctx.grant.filterIds()

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

    # -- the end ---------------------------------------------------------------

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


#: The active watches of each connection, by the WATCH's sequence, so that
#: UNWATCH ends only watches (not, say, a REMIND).
_watches: WeakKeyDictionary[ICommandContext, dict[str, _Watch]] = WeakKeyDictionary()


def watchCount(ctx: ICommandContext) -> int:
    """How many WATCHes are active on a connection (for CLIENTS, STATS, metrics)."""
    return len(_watches.get(ctx, ()))
