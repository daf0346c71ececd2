"""
The pushes of one WATCH on their way out (C{shared/PROTOCOL.md}, section
8): gathered in an outbox and written together, only while the client
takes them, and the watch dropped, with the etag to resume from, when it
does not. L{proto.commands.watchstream} decides what to push.

Flow control and slow watchers
==============================
Catch-up pushes a page only while the connection's output that the client
has not taken (L{proto.unsent}: server buffers I{and} the kernel's send
queue, so independent of socket buffer sizes) is under
L{proto.commands.watchstream.CATCHUP_WINDOW}; then it waits for it to drain. Live pushes are never
waited for; instead a watch is dropped when, as it is about to write
pushes, that output is over L{DROP_BYTES} (plus the size of its previous
write when that was bigger: one large document may be in flight), or has
stayed over
L{SLOW_BYTES} for L{SLOW_SECONDS} (catch-up waiting that long counts the
same). Its last push is then C{{"Type": "Dropped", "Reason": ...,
"Etag": e}}: e is the etag of the last change pushed (the Since, the
Gap's Etag, or the reply's Etag if none was), so the client can WATCH
again with C{Since: e} and lose nothing.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from twisted.logger import Logger

from proto.commands.base import ICommandContext
from proto.commands.watchframes import _json
from proto.unsent import UnsentBound

#: A watch is dropped when more than this is unsent as it writes pushes...
DROP_BYTES = 256 * 1024

#: ... or when more than this has been unsent for SLOW_SECONDS.
SLOW_BYTES = 64 * 1024
SLOW_SECONDS = 10.0

#: (The namespace WATCH's lines have always had.)
_log = Logger(namespace="proto.commands.watch")


class PushOutput:
    """
    The output side of a watch: its outbox, the etag a C{Dropped} push
    names, and the slow-client bounds (see the module).
    """

    def __init__(self, ctx: ICommandContext, sequence: str, prefix: str) -> None:
        self._ctx = ctx
        self._sequence = sequence
        self._prefix = prefix
        self._head = b"PUSH\r\nSequence: " + sequence.encode("ascii") + b"\r\nSize: "
        self._resume = 0  # what Dropped says: the last etag pushed
        self._outbox: list[bytes] = []
        self._outboxEtag = 0
        self._outboxBytes = 0  # of live pushes in the outbox
        self._lastWrite = 0  # bytes of the last write: one big push may be in flight
        self._slowSince: float | None = None
        self.ended = False
        self._unsent = _unsentBound(ctx)

    def _frame(self, body: bytes) -> bytes:
        return self._head + b"%d\r\n\r\n" % len(body) + body

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


#: The unsent-bytes bound of each connection with watches (shared by them:
#: it counts what all of them write).
_bounds: WeakKeyDictionary[Any, UnsentBound] = WeakKeyDictionary()


def _unsentBound(ctx: Any) -> UnsentBound:
    bound = _bounds.get(ctx)
    if bound is None:
        bound = _bounds[ctx] = UnsentBound(ctx.clock)  # (keeps no reference to ctx)
    return bound
