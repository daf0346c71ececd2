"""
One PostgreSQL connection on the reactor thread, in libpq's non-blocking
pipeline mode (issue 13): what the reactor's reader (L{proto.store.
postgres_async}) and the reactor's writer (L{proto.store.postgres_writer})
share. No thread, no psycopg cursor: statements are prepared once per
connection (L{PipelineConnection.statementName}) and sent with their
parameters; the socket is watched by the reactor, results are taken as
they come, in the order sent.

The connection is opened in the background (a thread: libpq's connect
blocks), and again L{RETRY_SECONDS} after it was lost or could not be
opened; while it is not open the store's threads serve (each user says
how). A result of severity C{FATAL} (the backend is ending: an
administrator's shutdown, C{pg_terminate_backend}) counts as a lost
connection at once, without waiting for the socket's end, which a loaded
machine delivers later.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from proto.store import postgres_schema

#: After the connection was lost (or could not be opened), wait this long
#: before opening it again.
RETRY_SECONDS = 1.0


class ConnectionEnded(Exception):
    """The backend said it is ending the session (a C{FATAL} result)."""


def numbered(sql: str) -> str:
    """psycopg's C{%s} placeholders as libpq's C{$1}, C{$2}, ..."""
    n = 0
    while "%s" in sql:
        n += 1
        sql = sql.replace("%s", f"${n}", 1)
    return sql


class Statement:
    """
    One statement sent (or a sync point), waiting for its result.

    @ivar kind: what it is, for its user; C{"prepare"} and C{"sync"} are
        handled by L{PipelineConnection} itself.
    @ivar owner: what its user attached (the reads, a write batch).
    """

    __slots__ = ("kind", "owner", "result")

    def __init__(self, kind: str, owner: Any = None) -> None:
        self.kind = kind
        self.owner = owner
        self.result: Any = None


@implementer(IReadDescriptor, IWriteDescriptor)
class PipelineConnection:
    """
    The connection's life and its pipeline (see the module docstring).
    Subclasses answer statements (L{answer}), sync points (L{synced}) and
    the loss of what was in flight (L{failInFlight}).

    @ivar statements: statements sent so far (tests, measurements).
    """

    _log = Logger()

    #: Who this is, in the log.
    role = "reactor connection"
    #: What serves while it is not connected, in the log.
    meanwhile = "the threads serve meanwhile"
    #: Prefix of its prepared statements' names.
    prefix = "proto"

    def __init__(self, conninfo: str, reactor: Any) -> None:
        self._conninfo = conninfo
        self.where = postgres_schema.displayed(conninfo)
        self._reactor = reactor
        self._connection: Any = None
        self._pgconn: Any = None
        self._fd = -1
        self._prepared: dict[str, str] = {}  # SQL -> statement name
        self._names = 0
        self._expected: deque[Statement] = deque()
        self._writing = False
        self._connecting = False
        self._closing = False
        self._failing = False
        self._closed: Deferred[None] | None = None
        self._retry: Any = None
        self.statements = 0
        #: The backend process of the connection (C{None} while closed).
        self.backendPid: int | None = None

    # -- life ------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Work can be given to this connection (else: to the threads)."""
        return self._pgconn is not None and not self._closing

    def start(self) -> None:
        """Open the connection in the background (a thread: connecting blocks)."""
        if self._connecting or self._closing or self._pgconn is not None:
            return
        self._connecting = True
        self._retry = None

        def connect() -> None:
            try:
                connection = postgres_schema.connect(self._conninfo, self.prefix)
            except Exception:
                self._reactor.callFromThread(self._connectFailed, Failure())
            else:
                self._reactor.callFromThread(self._connected, connection)

        threading.Thread(target=connect, name=f"proto-store-{self.prefix}-connect", daemon=True).start()

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
        self.backendPid = pgconn.backend_pid
        self._prepared = {}
        if self._failing:
            self._log.info("PostgreSQL store ({role}): connected again to {where}",
                           role=self.role, where=self.where)
            self._failing = False
        self._reactor.addReader(self)
        self.opened()

    def opened(self) -> None:
        """The connection is open (a subclass may send what a session needs first)."""

    def _connectFailed(self, failure: Failure) -> None:
        self._connecting = False
        if self._closing:
            self._finished()
            return
        if not self._failing:
            self._log.warn("PostgreSQL store ({role}): cannot connect to {where}: {error}; "
                           "{meanwhile}", role=self.role, where=self.where,
                           error=failure.getErrorMessage(), meanwhile=self.meanwhile)
            self._failing = True
        self._retry = self._reactor.callLater(RETRY_SECONDS, self.start)

    def stop(self) -> Deferred[None]:
        """
        Take no more work; fires once what is in flight is answered (or
        failed over) and the connection is closed.
        """
        if self._closed is not None:
            return self._closed
        self._closing = True
        self._closed = Deferred()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.stopping()
        if not self._expected:  # (a connection still being opened is closed once open)
            self._disconnect()
            self._finished()
        return self._closed

    def stopping(self) -> None:
        """L{stop} was called: hand over what is queued and not sent."""

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
        self.backendPid = None
        self.closed()
        os.close(self._fd)
        self._fd = -1
        try:
            connection.close()
        except Exception:
            pass

    def closed(self) -> None:
        """The connection is closed (lost, or stopped)."""

    def lost(self, error: Any) -> None:
        """The connection failed: what is in flight is failed over; open it again later."""
        if self._pgconn is None:
            return
        if not self._closing:
            self._log.warn("PostgreSQL store ({role}): lost the connection to {where}: "
                           "{error}; {meanwhile}", role=self.role, where=self.where,
                           error=error, meanwhile=self.meanwhile)
            self._failing = True
        self._disconnect()
        expected, self._expected = self._expected, deque()
        self.failInFlight(list(expected), error)
        if self._closing:
            self._finished()
        else:
            self._retry = self._reactor.callLater(RETRY_SECONDS, self.start)

    def failInFlight(self, expected: list[Statement], error: Any) -> None:
        """The connection was lost with these statements unanswered."""

    # -- sending ---------------------------------------------------------------------

    def statementName(self, sql: str) -> bytes:
        """The name of C{sql} prepared on this connection; prepared (queued) the first time."""
        name = self._prepared.get(sql)
        if name is None:
            # (A fresh name each time: after a failed prepare the others
            # are prepared again, and must not collide with themselves.)
            self._names += 1
            name = self._prepared[sql] = f"{self.prefix}_{self._names}"
            self._pgconn.send_prepare(name.encode(), numbered(sql).encode())
            self._expected.append(Statement("prepare"))
        return name.encode()

    def send(self, kind: str, sql: str, params: Sequence[bytes | None], owner: Any = None,
             formats: Sequence[int] | None = None, binary: bool = False) -> Statement:
        """Queue C{sql} (prepared) with its parameters; returns what will hold its result."""
        name = self.statementName(sql)
        self._pgconn.send_query_prepared(name, params, param_formats=formats,
                                         result_format=1 if binary else 0)
        statement = Statement(kind, owner)
        self._expected.append(statement)
        self.statements += 1
        return statement

    def sendPlain(self, kind: str, sql: bytes, owner: Any = None) -> Statement:
        """Queue a statement without parameters, not prepared (C{BEGIN}, C{COMMIT})."""
        self._pgconn.send_query_params(sql, None)
        statement = Statement(kind, owner)
        self._expected.append(statement)
        return statement

    def sync(self, owner: Any = None) -> None:
        """End what was queued with a sync point, and send it all."""
        self._pgconn.pipeline_sync()
        self._expected.append(Statement("sync", owner))
        self.flush()

    def flush(self) -> None:
        if self._pgconn.flush() and not self._writing:
            self._writing = True
            self._reactor.addWriter(self)

    # -- the reactor's side ------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return f"proto-store-{self.prefix}"

    def doWrite(self) -> None:
        try:
            if not self._pgconn.flush():
                self._writing = False
                self._reactor.removeWriter(self)
        except Exception as e:
            self.lost(e)

    def doRead(self) -> None:
        pgconn = self._pgconn
        if pgconn is None:
            return
        try:
            pgconn.consume_input()
            self._takeResults(pgconn)
            if self._pgconn is pgconn:
                self.takeNotifies(pgconn)
        except Exception as e:
            self.lost(e)
            return
        if self._closing and not self._expected:
            self._disconnect()
            self._finished()

    def connectionLost(self, reason: Failure) -> None:
        self.lost(reason.value)

    def _takeResults(self, pgconn: Any) -> None:
        from psycopg.pq import ExecStatus

        expected = self._expected
        while expected and not pgconn.is_busy():
            statement = expected[0]
            result = pgconn.get_result()
            if statement.kind == "sync":
                if result is None:
                    continue
                if result.status != ExecStatus.PIPELINE_SYNC:
                    raise RuntimeError(f"unexpected result {result.status!r} at a pipeline sync")
                expected.popleft()
                self.synced(statement)
                if self._pgconn is not pgconn:
                    return  # (lost or stopped meanwhile)
                continue
            if result is not None:
                if (result.status == ExecStatus.FATAL_ERROR
                        and result.error_field(ord("V")) in (b"FATAL", b"PANIC")):
                    # The backend is ending the session (shutdown, terminated):
                    # the connection is lost now, not at the socket's end.
                    message = (result.error_message or b"").decode(errors="replace").strip()
                    raise ConnectionEnded(message or "the server ended the session")
                statement.result = result
                continue
            expected.popleft()
            if statement.kind == "prepare":
                if statement.result is None or statement.result.status != ExecStatus.COMMAND_OK:
                    # Its query fails too (unknown statement) and is handled
                    # there; prepare again next time.
                    self._prepared = {}
                continue
            if (statement.result is not None
                    and statement.result.status == ExecStatus.FATAL_ERROR):
                # (Perhaps its prepared statement is gone or stale, say
                # after a schema change: prepare every one again.)
                self._prepared = {}
            self.answer(statement)
            if self._pgconn is not pgconn:
                return

    def takeNotifies(self, pgconn: Any) -> None:
        """After the results: the notifications received (a session that LISTENs)."""

    def answer(self, statement: Statement) -> None:
        """A statement's result is in (C{statement.result}; C{None}: skipped)."""

    def synced(self, statement: Statement) -> None:
        """A sync point is passed: every statement before it is answered."""
