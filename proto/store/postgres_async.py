"""
GETs on the PostgreSQL store without a thread (issue 13): one connection
in libpq's non-blocking pipeline mode, its socket watched by the reactor.

The reader threads (L{proto.store.postgres}) cost, per GET, a wake-up of
a thread, a fight for the GIL, psycopg's cursor machinery and a
C{callFromThread} back (measured, C{bench/run.py --store --our-store
postgresql}, 1 client: ~280 us of our CPU per GET, against ~100 us on
SQLite). Here the GETs (with and without Include) queued during one
reactor turn are sent at the end of the turn (C{callBeforePoll}, or a
C{callLater(0)}) as at most two prepared statements, the same ones the
reader threads run (L{proto.store.postgres_session.plainStatement},
L{proto.store.postgres_session.prefetchStatement}: each one snapshot),
followed by one pipeline sync, in one write; their rows come back in
binary and are turned into snapshots on the reactor thread. A batch is
sent while earlier ones are still in flight (pipelining); results come
back in order.

The connection itself (opening it in the background, the pipeline, a lost
connection) is L{proto.store.postgres_pipeline}'s. This reader only speeds
the ordinary case up; whatever is out of the
ordinary goes to the reader threads, which keep the store's behaviour
(errors, retries, outage reasons):

  - while the connection is not open (at start, after it was lost: it is
    opened again in the background after L{RETRY_SECONDS});
  - a statement that fails (a body C{jsonb} refuses, a timeout, ...):
    each of its reads is run again by a reader thread (the reads whose
    Include cannot be prefetched in two round trips, as there);
  - a lost connection: every read in flight is run again by a reader
    thread (a read has no effect: running it again is safe, and it still
    sees every write acknowledged before it was asked).

Read-your-writes holds as with the threads: a read is sent after the OK
of every write before it (which comes after the commit), and reads
queued behind unfinished writes go to the writer (the store decides).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from proto.timers import endOfTurn
from proto.store import postgres_reads
from proto.store.postgres_pipeline import RETRY_SECONDS, PipelineConnection, Statement
from proto.store.postgres_reads import IncludeRead, PlainRead

__all__ = ["RETRY_SECONDS", "MAX_IN_FLIGHT", "ReactorReader"]

#: Stop sending new batches while this many are still in flight (the
#: reads wait for the next turn): bounds what a slow database has queued.
MAX_IN_FLIGHT = 64


def _int(value: bytes) -> int:
    return int.from_bytes(value, "big", signed=True)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _rows(result: Any) -> list[tuple[Any, ...]]:
    """The rows of a binary result: (int, text, text, int, bytes), NULL as None."""
    get = result.get_value
    rows = []
    for row in range(result.ntuples):
        first, key, id, etag, body = (get(row, column) for column in range(5))
        rows.append((
            _int(first), _text(key), _text(id), None if etag is None else _int(etag), body,
        ))
    return rows


def _arrayLiteral(values: Sequence[str]) -> str:
    """A text array literal (C{{"a","b"}}) of C{values}."""
    return "{" + ",".join(
        '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' for value in values
    ) + "}"


class ReactorReader(PipelineConnection):
    """
    GETs in one non-blocking connection on the reactor thread (see the
    module docstring).

    @ivar statements: statements sent so far (tests, measurements).
    @ivar fallbacks: reads handed to the reader threads after a failure.
    """

    role = "reactor reader"
    meanwhile = "the reader threads serve GETs meanwhile"
    prefix = "proto_read"

    def __init__(self, conninfo: str, reactor: Any, fallback: Callable[[Any], Deferred[Any]]) -> None:
        """
        @param fallback: runs a work (a L{PlainRead}, L{IncludeRead}, or
            any C{work(session)}) on a reader thread; returns its Deferred.
        """
        super().__init__(conninfo, reactor)
        self._fallback = fallback
        self._endOfTurn = endOfTurn(reactor)
        self._queue: list[tuple[Any, Deferred[Any]]] = []
        self._sendScheduled = False
        self._inFlight = 0  # batches sent, not answered
        self.fallbacks = 0

    # -- life ------------------------------------------------------------------------

    def stopping(self) -> None:
        queued, self._queue = self._queue, []
        for work, deferred in queued:
            self._failOver(work, deferred)

    def failInFlight(self, expected: list[Statement], error: Any) -> None:
        """Reads in flight (and queued) go to the threads: a read has no effect."""
        self._inFlight = 0
        for statement in expected:
            if statement.kind in ("plain", "include"):
                for work, deferred in statement.owner:
                    self._failOver(work, deferred)
        queued, self._queue = self._queue, []
        for work, deferred in queued:
            self._failOver(work, deferred)

    def _failOver(self, work: Any, deferred: Deferred[Any], twoTrips: bool = False) -> None:
        """Run C{work} on a reader thread instead; its outcome fires C{deferred}."""
        if deferred.called:
            return  # (cancelled)
        self.fallbacks += 1
        if twoTrips:
            keys, references = work.readKeys, work.references
            work = lambda session: postgres_reads.snapshotInclude(  # noqa: E731
                session.connection, keys, references)
        self._fallback(work).chainDeferred(deferred)

    # -- reads -----------------------------------------------------------------------

    def submit(self, work: PlainRead | IncludeRead) -> Deferred[Any]:
        """A GET (with an Include whose paths the database follows, or none)."""
        deferred: Deferred[Any] = Deferred()
        if not self.open:
            self._failOver(work, deferred)
            return deferred
        self._queue.append((work, deferred))
        if not self._sendScheduled:
            self._sendScheduled = True
            self._endOfTurn(self._send)
        return deferred

    def _sendOne(self, kind: str, sql: str, params: Sequence[Any],
                 reads: list[tuple[Any, Deferred[Any]]]) -> None:
        values = [
            (_arrayLiteral(p) if isinstance(p, list) else str(p)).encode() for p in params
        ]
        self.send(kind, sql, values, reads, binary=True)

    def _send(self) -> None:
        """The turn's reads: at most two statements and one sync, in one write."""
        self._sendScheduled = False
        if not self._queue or self._pgconn is None:
            return
        if self._inFlight >= MAX_IN_FLIGHT:
            self._sendScheduled = True
            self._reactor.callLater(0.001, self._send)
            return
        queued, self._queue = self._queue, []
        plain = [(w, d) for w, d in queued if isinstance(w, PlainRead) and not d.called]
        included = [(w, d) for w, d in queued if isinstance(w, IncludeRead) and not d.called]
        params: Sequence[Any]
        try:
            if plain:
                sql, params = postgres_reads.plainStatement([w.readKeys for w, _ in plain])
                self._sendOne("plain", sql, params, plain)
            if included:
                sql, params = postgres_reads.prefetchStatement([w for w, _ in included])
                self._sendOne("include", sql, params, included)
            self._inFlight += 1
            self.sync()
        except Exception as e:
            self.lost(e)

    # -- results -----------------------------------------------------------------------

    def synced(self, statement: Statement) -> None:
        self._inFlight -= 1

    def answer(self, statement: Statement) -> None:
        """A statement's results are in: fire its reads (or fail them over)."""
        from psycopg.pq import ExecStatus

        result = statement.result
        reads = statement.owner
        if result is None or result.status != ExecStatus.TUPLES_OK:
            # A statement the database refused (a body jsonb refuses, a
            # timeout, ...), or skipped after one that was: the threads
            # read these (an Include in two round trips, as they would).
            twoTrips = statement.kind == "include" and result is not None and (
                (result.error_field(ord("C")) or b"").startswith((b"22", b"42")))
            for work, deferred in reads:
                self._failOver(work, deferred, twoTrips)
            return
        rows = _rows(result)
        if statement.kind == "plain":
            outcomes: list[Any] = postgres_reads.plainSnapshots(rows, [w.readKeys for w, _ in reads])
        else:
            outcomes = postgres_reads.prefetchedSnapshots(rows, [w for w, _ in reads])
        for (work, deferred), outcome in zip(reads, outcomes):
            if deferred.called:
                continue
            if outcome is None:
                self._failOver(work, deferred, twoTrips=True)
            elif isinstance(outcome, Failure):
                deferred.errback(outcome)
            else:
                deferred.callback(outcome)
