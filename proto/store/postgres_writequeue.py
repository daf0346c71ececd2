"""
The writes a reactor's writer (L{proto.store.postgres_writer}) has taken,
and what it owes for them: the order they are answered in, the barrier a
read behind them waits for (read-your-writes: a GET sees every write sent
before it, C{shared/PROTOCOL.md} section 8), and handing a write to the
writer thread when this connection cannot take it (nothing of it was
written: at start, once the connection is lost, a stale prepared
statement).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred


class WriteQueue:
    """
    A mixin of L{proto.store.postgres_writer.ReactorWriter}: the writes
    taken, queued for the next batch, and accounted for until answered.

    @ivar fallbacks: writes handed to the writer thread.
    """

    # (What the writer provides.)
    open: bool
    _batch: Any
    _scheduled: bool
    _endOfTurn: Callable[[Callable[[], object]], object]
    _begin: Callable[[], None]

    def __init__(self, fallback: Callable[[Any], Deferred[Any]]) -> None:
        """@param fallback: runs a write on the writer thread; its Deferred."""
        self._fallback = fallback
        self._queue: list[tuple[Any, Deferred[Any]]] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._submitted = 0  # writes taken so far
        self._answeredCount = 0  # writes answered so far
        self.fallbacks = 0

    @property
    def pending(self) -> int:
        """Writes taken and not answered yet."""
        return self._submitted - self._answeredCount

    def barrier(self) -> Deferred[None]:
        """
        Fires once every write taken so far is answered (read-your-writes:
        a read that comes after them waits for this, then is read as
        usual).
        """
        deferred: Deferred[None] = Deferred()
        if self.pending == 0:
            deferred.callback(None)
        else:
            self._waiters.append((self._submitted, deferred))
        return deferred

    def _answered(self, count: int) -> None:
        self._answeredCount += count
        done = self._answeredCount
        if self._waiters and done >= self._waiters[0][0]:
            ready = [d for upTo, d in self._waiters if upTo <= done]
            self._waiters = [(upTo, d) for upTo, d in self._waiters if upTo > done]
            for deferred in ready:
                if not deferred.called:
                    deferred.callback(None)

    # -- taking writes -------------------------------------------------------------------

    def submit(self, work: Any) -> Deferred[Any]:
        """A PUT or DELETE work (C{work(session)}, with its C{keys})."""
        deferred: Deferred[Any] = Deferred()
        self._submitted += 1
        if not self.open:
            self._failOver(work, deferred)
            return deferred
        self._queue.append((work, deferred))
        if self._batch is None and not self._scheduled:
            self._scheduled = True
            self._endOfTurn(self._begin)
        return deferred

    def _failOver(self, work: Any, deferred: Deferred[Any]) -> None:
        """Run C{work} on the writer thread instead (nothing of it was written)."""
        self.fallbacks += 1

        def done(result: Any) -> Any:
            self._answered(1)
            return result

        if deferred.called:  # (cancelled before it was sent: it never happens)
            self._answered(1)
            return
        self._fallback(work).addBoth(done).chainDeferred(deferred)

    def _handOver(self) -> None:
        """Every queued write to the writer thread (not connected)."""
        queued, self._queue = self._queue, []
        for work, deferred in queued:
            self._failOver(work, deferred)
