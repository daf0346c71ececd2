"""
The document store in PostgreSQL (C{--store postgresql:<conninfo>}), with
the same semantics as the SQLite store (L{proto.store.sqlite}): durable
C{OK} after commit, group commit, GET with Include from one snapshot,
If-Match, etags from one counter row, bodies kept byte for byte, the
change log as the truth that WATCH reads. Several servers (worker
processes, hosts) sharing one database behave as one.

Threads (psycopg 3's sync API, each thread with its own connection; not
the reactor's thread pool), and one connection on the reactor thread:

  - the B{writer} (L{proto.store.postgres_session.WriteSession}) runs
    every write queued since its last turn in one transaction;
  - the B{readers} run reads in read-only snapshots; GETs (with and
    without Include) go instead, while it is connected, to the
    B{reactor's reader} (L{proto.store.postgres_async}): one
    non-blocking connection on the reactor thread, a turn's GETs in at
    most two prepared statements, no thread hand-off;
  - the B{listener} (L{Listener}) waits on C{LISTEN proto_changes}: a
    doorbell only. When it rings (or every L{CATCH_UP_SECONDS} anyway) it
    reads the change log from the publisher's position and hands the
    changes to the L{proto.store.sqlite_publisher.Publisher}, which
    publishes each once, in etag order. A dropped listener connection is
    opened again and catches up from the log: no change is lost.

A database that goes away: operations fail with
L{proto.store.base.StoreUnavailableError} (the client gets C{ERR} with
the reason) within seconds, the sessions connect again when it is back,
and the listener catches up, so a WATCH resumes without a gap. One that
cannot be reached when the store starts is retried in the background
(L{proto.store.reopen}: 0.5 s doubling to 5 s, jittered): operations fail
at once meanwhile (L{proto.store.base.StoreNotOpenedError}, "...
(retrying)"), and each attempt opens a fresh writer and readers; the
publisher's start etag is taken at the first writer that opens, and the
listener starts once every worker is open.

The connection string comes from the command line, but a password should
not: use libpq's C{PGPASSWORD}, C{PGPASSFILE} or C{~/.pgpass}. Logs show
the connection string without its password.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from proto.store import postgres_grants, postgres_schema, postgres_session
from proto.store.base import (
    Document,
    IDocumentStore,
    Snapshot,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    checkId,
)
from proto.store.grants import IGrantStore
from proto.store.facade import StoreFacade
from proto.store.postgres_async import ReactorReader
from proto.store.postgres_session import ReadSession, WriteSession
from proto.store.reopen import RetryingStart, firstLine
from proto.store.sqlite_publisher import BellThread, Publisher, handOver
from proto.store.sqlite_worker import Worker
from proto.store.sqlite_write import DEFAULT_RETAIN_CHANGES

#: The listener reads the log this often even without a notification.
CATCH_UP_SECONDS = 2.0

#: The listener's longest wait for a notification at a time (how quickly
#: it notices that the store is closing).
WAIT_SECONDS = 0.1

#: A notification of our own writer's commit that the writer has not
#: handed over yet is read from the log after this long.
OWN_GRACE_SECONDS = 0.05

#: After the listener's connection failed, wait this long to try again.
LISTEN_RETRY_SECONDS = 1.0

#: Reader threads, each with its own connection: a read waits on round
#: trips to the database, not on the CPU, so several run at once.
READERS = 4



class Listener(BellThread):
    """
    The thread that hears C{NOTIFY proto_changes} and feeds the publisher
    from the change log (see the module docstring).
    """

    threadName = "proto-store-listener"

    def __init__(self, conninfo: str, publisher: Publisher, reactor: Any,
                 delivered: Callable[[], int] = lambda: 0,
                 writerPid: Callable[[], int | None] = lambda: None) -> None:
        """
        @param delivered: the etag up to which this server's writer has
            handed every change to the publisher already (read from this
            thread): a notification at or below it needs no catch-up.
        @param writerPid: the backend process of this server's writer.
        """
        super().__init__(publisher, reactor)
        self._delivered = delivered
        self._writerPid = writerPid
        self._owed = 0  # the last etag of our writer's commits not handed over yet
        self._owedSince = 0.0
        self.skipped = 0  # notifications needing no catch-up (tests)
        self._conninfo = conninfo
        self._where = postgres_schema.displayed(conninfo)
        self.connects = 0  # how many times it connected (tests: reconnection)

    def _main(self) -> None:
        import psycopg

        failing = False
        while not self._stop.is_set():
            connection = None
            try:
                connection = postgres_schema.connect(self._conninfo, "listener")
                connection.execute(f"LISTEN {postgres_schema.CHANNEL}")
                self.connects += 1
                if failing:
                    self._log.info("PostgreSQL store (listener): connected again to {where}; "
                                   "catching up from the change log", where=self._where)
                    failing = False
                self._listen(connection)
            except psycopg.Error as e:
                if not failing:
                    self._log.error("PostgreSQL store (listener): {error}; connecting again",
                                    error=e)
                    failing = True
                self._stop.wait(LISTEN_RETRY_SECONDS)
            finally:
                if connection is not None:
                    connection.close()

    def _listen(self, connection: Any) -> None:
        """Catch up, then wait for the doorbell; until stopped or an error."""
        self._catchUp(connection)  # after LISTEN: whatever comes later rings
        while not self._stop.is_set():
            rang = False
            # notifies() holds the connection while it waits: this
            # connection does nothing else (TWISTED_NOTES, section 9).
            wait = OWN_GRACE_SECONDS if self._owed else WAIT_SECONDS
            for notify in connection.notifies(timeout=wait, stop_after=1):
                # The payload is the commit's last etag: one of this
                # server's own commits, whose changes (and those of others
                # below them) the writer hands over itself, needs no
                # reading of the log (issue 13: two round trips, a thread
                # wake-up and a hand-off per commit). The notification may
                # come before the writer has seen its commit: then it is
                # owed, and read from the log only if the writer has not
                # handed it over within OWN_GRACE_SECONDS.
                etag = int(notify.payload) if notify.payload.isdigit() else None
                if etag is not None and etag <= self._delivered():
                    self.skipped += 1
                elif etag is not None and notify.pid == self._writerPid():
                    if not self._owed:
                        self._owedSince = time.monotonic()
                    self._owed = max(self._owed, etag)
                else:
                    rang = True
            if self._owed:
                if self._owed <= self._delivered():
                    self._owed = 0
                    self.skipped += 1
                elif rang or time.monotonic() - self._owedSince >= OWN_GRACE_SECONDS:
                    self._owed = 0
                    rang = True
            if rang or self._due():
                self._catchUp(connection)

    _lastCatchUp = 0.0

    def _due(self) -> bool:
        return time.monotonic() - self._lastCatchUp >= CATCH_UP_SECONDS

    def _catchUp(self, connection: Any) -> None:
        """Hand over every change above the publisher's position."""
        self._lastCatchUp = time.monotonic()
        handOver(
            self._publisher, self._reactor,
            lambda: postgres_session.counter(connection, "etag"),
            lambda after, upTo: postgres_session.logRange(connection, after, upTo),
            self._stop.is_set,
        )


@implementer(IDocumentStore, IGrantStore)
class PostgresStore(StoreFacade, postgres_grants.PostgresGrants):
    """
    L{IDocumentStore} (and the grants of L{IGrantStore}) in a PostgreSQL
    database.

    @ivar commits: write transactions committed so far.
    @ivar writes: operations run in those transactions.
    """

    #: What the admin command BACKUP answers: PostgreSQL has its own tools.
    backupAdvice = (
        "BACKUP copies SQLite stores only: this server's store is PostgreSQL; "
        "back it up with pg_dump (or your PostgreSQL backups)"
    )

    def __init__(
        self,
        conninfo: str,
        hub: Any = None,
        reactor: Any = None,
        retainChanges: int = DEFAULT_RETAIN_CHANGES,
        readers: int = READERS,
        retryPolicy: Callable[[int], float] | None = None,
        reactorReads: bool = True,
    ) -> None:
        """
        @param conninfo: a libpq connection string or URI.
        @param hub: a L{proto.hub.ChangeHub} told of every committed
            change (of every server sharing the database), or C{None}.
        @param reactor: for C{callFromThread}, and the clock of the
            attempts to open (L{start}).
        @param retainChanges: keep at least this many of the newest
            changes in the log (at least 1).
        @param readers: how many reader threads (connections).
        @param retryPolicy: the delays between attempts to open
            (L{proto.store.reopen.retryPolicy} by default).
        @param reactorReads: GETs on the reactor thread, in one
            non-blocking connection (L{proto.store.postgres_async}), the
            reader threads serving the rest; C{False}: all on the threads.
        @raise ValueError: if C{retainChanges} is below 1.
        """
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(hub, retainChanges)
        self.conninfo = conninfo
        self.where = postgres_schema.displayed(conninfo)
        self._reactor = reactor
        self._retain = retainChanges
        self._readerCount = max(1, readers)
        self.listener = (
            Listener(conninfo, self._publisher, reactor, self._delivered, self._writerPid)
            if self._publisher is not None else None
        )
        self._makeWorkers()
        self.reactorReader = (
            ReactorReader(conninfo, reactor, lambda work: self._reader.submit(work))
            if reactorReads and hasattr(reactor, "addReader") else None
        )
        self._turn = 0
        self._closed = False
        #: Every worker is open (and the listener started).
        self.opened = False
        self._publisherStarted = False
        self.opening = RetryingStart(
            repr(self), self._attempt, self._transient, reactor, retryPolicy
        )

    def __repr__(self) -> str:
        return f"<PostgresStore {self.where!r}>"

    def _makeWorkers(self) -> None:
        """A writer and readers for an attempt to open (none started yet)."""
        conninfo = self.conninfo
        self._writer = Worker(
            "writer", lambda: self._openWriter(self._retain, self._published), self._reactor,
            self._committed,
        )
        self._readers = [
            Worker(f"reader-{n}", lambda: ReadSession(conninfo), self._reactor)
            for n in range(self._readerCount)
        ]

    def _openWriter(self, retain: int, published: Callable[[], int]) -> WriteSession:
        session = WriteSession(self.conninfo, retain, published)
        try:
            postgres_schema.upgrade(session.connection, self.where)
            session.startEtag = postgres_session.counter(session.connection, "etag")
        except BaseException:
            session.close()
            raise
        return session

    def start(self) -> Deferred[None]:
        """
        Open the store; fires once it is open. While the database cannot
        be reached (or refuses us: L{_transient}), it keeps trying
        (L{proto.store.reopen}): operations fail at once meanwhile with
        L{StoreNotOpenedError} saying why and that it is retrying, and
        work once it is open, without a restart. A failure that will not
        pass by itself (a schema from a newer release) fails the start:
        operations then fail with the reason and advice to restart.
        """
        if self._started:
            return fail(StoreError(f"{self!r} is already started"))
        self._started = True
        if self._closed:
            return fail(StoreClosedError(f"{self!r} is closed"))
        return self.opening.start().addCallback(self._opened)

    @staticmethod
    def _transient(failure: Failure) -> bool:
        """
        Whether an attempt to open failed for a reason that may pass: the
        database unreachable, not there yet, refusing the login or timing
        out (psycopg's C{OperationalError}). Not: a schema from a newer
        release, SQL the database rejects (a missing privilege): those
        need the operator, and the server is restarted after the fix.
        """
        import psycopg

        return failure.check(psycopg.OperationalError, StoreUnavailableError) is not None

    def _attempt(self) -> Deferred[None]:
        """One attempt to open every worker; the writer first (it creates the schema)."""
        if self.opening.attempts > 1:
            self._makeWorkers()  # (those of the failed attempt are stopped)
            for worker in self._workers():
                # Operations keep failing at once until a worker is open (an
                # attempt can take connect_timeout), not queue for it.
                worker.notOpened = self.notOpenReason
        started = self._writer.start()
        started.addCallback(self._writerOpen)
        started.addCallback(
            lambda _: gatherResults([reader.start() for reader in self._readers], consumeErrors=True)
            .addErrback(lambda failure: failure.value.subFailure)
        )
        started.addCallback(lambda _: None)
        started.addErrback(self._attemptFailed)
        return started

    _writeSession: WriteSession | None = None

    def _delivered(self) -> int:
        """The writer's L{WriteSession.delivered} (from the listener's thread)."""
        session = self._writeSession
        return 0 if session is None else session.delivered

    def _writerPid(self) -> int | None:
        session = self._writeSession
        return None if session is None else session.backendPid

    def _writerOpen(self, session: WriteSession) -> None:
        self._writeSession = session
        # Before any batch's result (callFromThread keeps order). Only at
        # the first attempt that opens the writer: a later attempt must not
        # move the position past changes a watch of the first may wait for
        # (the listener catches up from it).
        if self._publisher is not None and not self._publisherStarted:
            self._publisherStarted = True
            self._publisher.startAt(session.startEtag)

    def _attemptFailed(self, failure: Failure) -> Deferred[None]:
        """
        Fail the work queued for this attempt, and any until the next one,
        with the reason; stop the workers that did open. Fires (with the
        failure) once they have stopped.
        """
        if not self._closed:
            self._notOpened(f"PostgreSQL at {self.where}: {firstLine(failure)}",
                            retrying=self._transient(failure))
        stopped = gatherResults([worker.stop() for worker in self._workers()])
        return stopped.addCallback(lambda _: failure)

    def _opened(self, _: Any) -> None:
        if self._closed:
            return
        self.opened = True
        self.notOpenReason = None
        for worker in self._workers():
            worker.notOpened = None
        if self.listener is not None:  # (there is one when there is a publisher)
            self.listener.start()
        if self.reactorReader is not None:
            self.reactorReader.start()

    def _workers(self) -> list[Worker]:
        return [self._writer, *self._readers]

    def close(self) -> Deferred[None]:
        """
        Close: the writer commits what is queued first. A store still
        trying to open stops trying, and does not wait for an attempt in
        progress (a connection attempt can take C{connect_timeout}): its
        threads end by themselves (after committing what was queued for a
        writer that did open: nothing after the first failed attempt).
        """
        self._closed = True
        if self.opening.failing is not None:
            self.notOpenReason = None
            for worker in self._workers():
                worker.notOpened = None  # closed now, no longer "(retrying)"
        self.opening.stop()
        if self.listener is not None:
            self.listener.stop()
        closing = [self._writer.stop()] + [reader.stop() for reader in self._readers]
        if self.reactorReader is not None:
            # Its reads in flight are answered first (failed over to the
            # reader threads, which are closing, they fail).
            closing.append(self.reactorReader.stop())
        if not self.opened:
            return succeed(None)
        return gatherResults(closing).addCallback(lambda _: None)

    # -- reads -----------------------------------------------------------------

    @property
    def _reader(self) -> Worker:
        """The next reader thread, in turn."""
        self._turn = (self._turn + 1) % len(self._readers)
        return self._readers[self._turn]

    def summary(self) -> Deferred[dict[str, int]]:
        """C{{"Documents", "Etag", "Changes"}} (STATS, metrics), in one statement."""

        def work(session: Any) -> dict[str, int]:
            documents, etag, changes = session.connection.execute(
                "SELECT (SELECT count(*) FROM proto_documents), "
                "(SELECT value FROM proto_counters WHERE name = 'etag'), "
                "(SELECT count(*) FROM proto_changes)"
            ).fetchone()
            return {"Documents": documents, "Etag": etag, "Changes": changes}

        return self._readWorker().submit(work)

    def _readWorker(self) -> Worker:
        """Read-your-writes: behind unfinished writes, reads join the writer."""
        return self._writer if self._unfinishedWrites else self._reader

    def read(
        self,
        ids: Sequence[str],
        references: Callable[[list[Document | None]], Iterable[str | None]] | None = None,
    ) -> Deferred[Snapshot]:
        try:
            keys = [checkId(id) for id in ids]
        except ValueError:
            return fail()
        if references is None:
            work: Any = postgres_session.PlainRead(keys)
        else:
            work = postgres_session.IncludeRead(keys, references)
        if self._unfinishedWrites:
            return self._writer.submit(work)
        asynchronous = self.reactorReader
        if asynchronous is not None and asynchronous.open and (references is None or work.paths):
            return asynchronous.submit(work)
        return self._reader.submit(work)
