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

This reader only speeds the ordinary case up; whatever is out of the
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

import os
import threading
from collections import deque
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor

from proto.timers import endOfTurn
from proto.store import postgres_schema, postgres_session
from proto.store.postgres_session import IncludeRead, PlainRead

#: After the connection was lost (or could not be opened), wait this long
#: before opening it again; the reader threads serve meanwhile.
RETRY_SECONDS = 1.0

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


class _Statement:
    """One statement of a batch in flight: its reads, and what came back."""

    __slots__ = ("kind", "reads", "result")

    def __init__(self, kind: str, reads: list[tuple[Any, Deferred[Any]]]) -> None:
        self.kind = kind  # "plain", "include", or "prepare" (no reads)
        self.reads = reads
        self.result: Any = None


_SYNC = object()


@implementer(IReadDescriptor, IWriteDescriptor)
class ReactorReader:
    """
    GETs in one non-blocking connection on the reactor thread (see the
    module docstring).

    @ivar statements: statements sent so far (tests, measurements).
    @ivar fallbacks: reads handed to the reader threads after a failure.
    """

    _log = Logger()

    def __init__(self, conninfo: str, reactor: Any, fallback: Callable[[Any], Deferred[Any]]) -> None:
        """
        @param fallback: runs a work (a L{PlainRead}, L{IncludeRead}, or
            any C{work(session)}) on a reader thread; returns its Deferred.
        """
        self._conninfo = conninfo
        self._where = postgres_schema.displayed(conninfo)
        self._reactor = reactor
        self._fallback = fallback
        self._endOfTurn = endOfTurn(reactor)
        self._connection: Any = None
        self._pgconn: Any = None
        self._fd = -1
        self._prepared: dict[str, str] = {}  # SQL -> statement name
        self._names = 0
        self._queue: list[tuple[Any, Deferred[Any]]] = []
        self._sendScheduled = False
        self._expected: deque[Any] = deque()
        self._inFlight = 0  # batches sent, not answered
        self._writing = False
        self._connecting = False
        self._closing = False
        self._failing = False
        self._closed: Deferred[None] | None = None
        self._retry: Any = None
        self.statements = 0
        self.fallbacks = 0

    # -- life ------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Reads can be given to this reader (else: to the reader threads)."""
        return self._pgconn is not None and not self._closing

    def start(self) -> None:
        """Open the connection in the background (a thread: connecting blocks)."""
        if self._connecting or self._closing or self._pgconn is not None:
            return
        self._connecting = True
        self._retry = None

        def connect() -> None:
            try:
                connection = postgres_schema.connect(self._conninfo, "reader")
            except Exception:
                self._reactor.callFromThread(self._connectFailed, Failure())
            else:
                self._reactor.callFromThread(self._connected, connection)

        threading.Thread(target=connect, name="proto-store-async-connect", daemon=True).start()

    def _connected(self, connection: Any) -> None:
        self._connecting = False
        if self._closing:
            connection.close()
            self._finished()
            return
        pgconn = connection.pgconn
        try:
            pgconn.nonblocking = 1
            pgconn.enter_pipeline_mode()
            # The reactor watches a duplicate: libpq closes its descriptor
            # when the connection fails, before we can unregister it.
            fd = os.dup(pgconn.socket)
        except Exception:
            connection.close()
            self._connectFailed(Failure())
            return
        self._connection, self._pgconn, self._fd = connection, pgconn, fd
        self._prepared = {}
        if self._failing:
            self._log.info("PostgreSQL store (reactor reader): connected again to {where}",
                           where=self._where)
            self._failing = False
        self._reactor.addReader(self)

    def _connectFailed(self, failure: Failure) -> None:
        self._connecting = False
        if self._closing:
            self._finished()
            return
        if not self._failing:
            self._log.warn("PostgreSQL store (reactor reader): cannot connect to {where}: "
                           "{error}; the reader threads serve GETs meanwhile",
                           where=self._where, error=failure.getErrorMessage())
            self._failing = True
        self._retry = self._reactor.callLater(RETRY_SECONDS, self.start)

    def stop(self) -> Deferred[None]:
        """
        Take no more reads; fires once those in flight are answered (or
        failed over) and the connection is closed.
        """
        if self._closed is not None:
            return self._closed
        self._closing = True
        self._closed = Deferred()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        queued, self._queue = self._queue, []
        for work, deferred in queued:
            self._failOver(work, deferred)
        if not self._expected:  # (a connection still being opened is closed once open)
            self._disconnect()
            self._finished()
        return self._closed

    def _finished(self) -> None:
        if self._closed is not None and not self._closed.called:
            self._closed.callback(None)

    def _disconnect(self) -> None:
        if self._pgconn is None:
            return
        self._reactor.removeReader(self)
        if self._writing:
            self._reactor.removeWriter(self)
            self._writing = False
        connection, self._connection, self._pgconn = self._connection, None, None
        os.close(self._fd)
        self._fd = -1
        try:
            connection.close()
        except Exception:
            pass

    def _lost(self, error: Any) -> None:
        """The connection failed: reads in flight go to the threads; open it again later."""
        if self._pgconn is None:
            return
        if not self._closing:
            self._log.warn("PostgreSQL store (reactor reader): lost the connection to {where}: "
                           "{error}; the reader threads serve GETs meanwhile",
                           where=self._where, error=error)
            self._failing = True
        self._disconnect()
        expected, self._expected = self._expected, deque()
        self._inFlight = 0
        for statement in expected:
            if statement is not _SYNC:
                for work, deferred in statement.reads:
                    self._failOver(work, deferred)
        queued, self._queue = self._queue, []
        for work, deferred in queued:
            self._failOver(work, deferred)
        if self._closing:
            self._finished()
        else:
            self._retry = self._reactor.callLater(RETRY_SECONDS, self.start)

    def _failOver(self, work: Any, deferred: Deferred[Any], twoTrips: bool = False) -> None:
        """Run C{work} on a reader thread instead; its outcome fires C{deferred}."""
        if deferred.called:
            return  # (cancelled)
        self.fallbacks += 1
        if twoTrips:
            keys, references = work.readKeys, work.references
            work = lambda session: postgres_session.snapshotInclude(  # noqa: E731
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

    def _statementName(self, sql: str) -> str:
        """The name of C{sql} prepared on this connection; prepared (queued) the first time."""
        name = self._prepared.get(sql)
        if name is None:
            # (A fresh name each time: after a failed prepare the others
            # are prepared again, and must not collide with themselves.)
            self._names += 1
            name = self._prepared[sql] = f"proto_read_{self._names}"
            numbered, n = sql, 0
            while "%s" in numbered:
                n += 1
                numbered = numbered.replace("%s", f"${n}", 1)
            self._pgconn.send_prepare(name.encode(), numbered.encode())
            self._expected.append(_Statement("prepare", []))
        return name

    def _sendOne(self, kind: str, sql: str, params: Sequence[Any],
                 reads: list[tuple[Any, Deferred[Any]]]) -> None:
        name = self._statementName(sql)
        values = [
            (_arrayLiteral(p) if isinstance(p, list) else str(p)).encode() for p in params
        ]
        self._pgconn.send_query_prepared(name.encode(), values, result_format=1)
        self._expected.append(_Statement(kind, reads))
        self.statements += 1

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
                sql, params = postgres_session.plainStatement([w.readKeys for w, _ in plain])
                self._sendOne("plain", sql, params, plain)
            if included:
                sql, params = postgres_session.prefetchStatement([w for w, _ in included])
                self._sendOne("include", sql, params, included)
            self._pgconn.pipeline_sync()
            self._expected.append(_SYNC)
            self._inFlight += 1
            self._flush()
        except Exception as e:
            self._lost(e)

    def _flush(self) -> None:
        if self._pgconn.flush() and not self._writing:
            self._writing = True
            self._reactor.addWriter(self)

    # -- the reactor's side ------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "proto-store-reactor-reader"

    def doWrite(self) -> None:
        try:
            if not self._pgconn.flush():
                self._writing = False
                self._reactor.removeWriter(self)
        except Exception as e:
            self._lost(e)

    def doRead(self) -> None:
        pgconn = self._pgconn
        if pgconn is None:
            return
        try:
            pgconn.consume_input()
            self._takeResults(pgconn)
        except Exception as e:
            self._lost(e)
            return
        if self._closing and not self._expected:
            self._disconnect()
            self._finished()

    def connectionLost(self, reason: Failure) -> None:
        self._lost(reason.value)

    def _takeResults(self, pgconn: Any) -> None:
        from psycopg.pq import ExecStatus

        expected = self._expected
        while expected and not pgconn.is_busy():
            statement = expected[0]
            result = pgconn.get_result()
            if statement is _SYNC:
                if result is None:
                    continue
                if result.status != ExecStatus.PIPELINE_SYNC:
                    raise RuntimeError(f"unexpected result {result.status!r} at a pipeline sync")
                expected.popleft()
                self._inFlight -= 1
                continue
            if result is not None:
                statement.result = result
                continue
            expected.popleft()
            self._answer(statement)

    def _answer(self, statement: _Statement) -> None:
        """A statement's results are in: fire its reads (or fail them over)."""
        from psycopg.pq import ExecStatus

        result = statement.result
        if statement.kind == "prepare":
            if result is None or result.status != ExecStatus.COMMAND_OK:
                # Its query fails too (unknown statement) and is failed over;
                # prepare again next time.
                self._prepared = {}
            return
        reads = statement.reads
        if result is None or result.status != ExecStatus.TUPLES_OK:
            # A statement the database refused (a body jsonb refuses, a
            # timeout, ...), or skipped after one that was: the threads
            # read these (an Include in two round trips, as they would).
            twoTrips = statement.kind == "include" and result is not None and (
                (result.error_field(ord("C")) or b"").startswith((b"22", b"42")))
            if result is not None and result.status == ExecStatus.FATAL_ERROR:
                # (Perhaps its prepared statement is gone or stale, say
                # after a schema change: prepare every one again.)
                self._prepared = {}
            for work, deferred in reads:
                self._failOver(work, deferred, twoTrips)
            return
        rows = _rows(result)
        if statement.kind == "plain":
            outcomes: list[Any] = postgres_session.plainSnapshots(rows, [w.readKeys for w, _ in reads])
        else:
            outcomes = postgres_session.prefetchedSnapshots(rows, [w for w, _ in reads])
        for (work, deferred), outcome in zip(reads, outcomes):
            if deferred.called:
                continue
            if outcome is None:
                self._failOver(work, deferred, twoTrips=True)
            elif isinstance(outcome, Failure):
                deferred.errback(outcome)
            else:
                deferred.callback(outcome)

