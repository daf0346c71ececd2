"""
The document store in PostgreSQL (C{--store postgresql:<conninfo>}), with
the same semantics as the SQLite store (L{proto.store.sqlite}): durable
C{OK} after commit, group commit, GET with Include from one snapshot,
If-Match, etags from one counter row, bodies kept byte for byte, the
change log as the truth that WATCH reads. Several servers (worker
processes, hosts) sharing one database behave as one.

Threads (psycopg 3's sync API, each thread with its own connection; not
the reactor's thread pool), and two connections on the reactor thread:

  - the B{writer thread} (L{proto.store.postgres_session.WriteSession})
    runs every write queued since its last turn in one transaction
    (L{proto.store.postgres_batch}); PUTs and DELETEs go instead, while
    it is connected, to the B{reactor's writer}
    (L{proto.store.postgres_writer}): the same transaction through one
    non-blocking connection with prepared statements, no thread hand-off.
    A write goes to one or the other so that writes stay in order: to
    the reactor's writer only while the thread has none unfinished;
  - the B{readers} run reads in read-only snapshots; GETs (with and
    without Include) go instead, while it is connected, to the
    B{reactor's reader} (L{proto.store.postgres_async}): one
    non-blocking connection on the reactor thread, a turn's GETs in at
    most two prepared statements, no thread hand-off;
  - the B{listener} (L{proto.store.postgres_listener.Listener}) waits on
    C{LISTEN proto_changes}: a doorbell only. When it rings (or every
    C{CATCH_UP_SECONDS} anyway) it reads the change log from the
    publisher's position and hands the changes to the
    L{proto.store.sqlite_publisher.Publisher}, which publishes each once,
    in etag order. A dropped listener connection is opened again and
    catches up from the log: no change is lost.

Read-your-writes (a GET sees every write sent before it): a read that
comes while writes are unfinished is read in the writer thread's
transaction, behind them; behind writes of the reactor's writer, it
waits until they are answered (L{proto.store.postgres_writer.
ReactorWriter.barrier}), then is read as usual.

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

from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from proto.store import postgres_grants, postgres_reads, postgres_schema
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
from proto.store.facade import KeyedWork, PutWork
from proto.store.postgres_async import ReactorReader
from proto.store.postgres_listener import (
    CATCH_UP_SECONDS,
    LISTEN_RETRY_SECONDS,
    OWN_GRACE_SECONDS,
    WAIT_SECONDS,
    Listener,
)
from proto.store.postgres_reads import IncludeRead, PlainRead
from proto.store.postgres_session import ReadSession, WriteSession
from proto.store.postgres_writer import ReactorWriter
from proto.store.reopen import RetryingStart, firstLine
from proto.store.sqlite_worker import Worker
from proto.store.sqlite_write import DEFAULT_RETAIN_CHANGES

__all__ = [
    "CATCH_UP_SECONDS", "LISTEN_RETRY_SECONDS", "OWN_GRACE_SECONDS", "WAIT_SECONDS",
    "Listener", "READERS", "PostgresStore",
]

#: Reader threads, each with its own connection: a read waits on round
#: trips to the database, not on the CPU, so several run at once.
READERS = 4

#: The writes the reactor's writer takes: PUT (L{PutWork}) and DELETE
#: (the store's only L{KeyedWork}); their works call only C{put} and
#: C{delete} on the keys they carry.
_REACTOR_WRITES = (PutWork, KeyedWork)


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
        reactorWrites: bool = True,
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
        @param reactorWrites: PUTs and DELETEs on the reactor thread
            (L{proto.store.postgres_writer}), the writer thread serving
            the rest; C{False}: all on the thread.
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
            Listener(conninfo, self._publisher, reactor, self._delivered, self._writerPids)
            if self._publisher is not None else None
        )
        self._makeWorkers()
        self.reactorReader = (
            ReactorReader(conninfo, reactor, lambda work: self._reader.submit(work))
            if reactorReads and hasattr(reactor, "addReader") else None
        )
        listener = self.listener
        self.reactorWriter = (
            ReactorWriter(conninfo, reactor, retainChanges, self._published, self._committed,
                          self._threadWrite,
                          listener.hearFrom if listener is not None else None,
                          listener.ring if listener is not None else None)
            if reactorWrites and hasattr(reactor, "addReader") else None
        )
        self._threadWrites = 0  # writes on the writer thread not finished yet
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
            session.startEtag = postgres_reads.counter(session.connection, "etag")
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
        """The writers' C{delivered}, the higher (from the listener's thread)."""
        session, reactorWriter = self._writeSession, self.reactorWriter
        return max(0 if session is None else session.delivered,
                   0 if reactorWriter is None else reactorWriter.delivered)

    def _writerPids(self) -> tuple[int, ...]:
        """The writers' backend processes (from the listener's thread)."""
        session, reactorWriter = self._writeSession, self.reactorWriter
        pids = (None if session is None else session.backendPid,
                None if reactorWriter is None else reactorWriter.backendPid)
        return tuple(pid for pid in pids if pid is not None)

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
        if self.reactorWriter is not None:
            self.reactorWriter.start()

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
        closing = []
        if self.reactorWriter is not None:
            # Its batch in flight is answered first, and what it has queued
            # is committed in a last batch (or, not connected, handed to the
            # writer thread, which commits what is queued).
            closing.append(self.reactorWriter.stop())
        closing += [self._writer.stop()] + [reader.stop() for reader in self._readers]
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
        return self._writer if self._threadWrites else self._reader

    # -- writes ----------------------------------------------------------------

    def _write(self, work: Callable[[Any], Any]) -> Deferred[Any]:
        """
        A PUT or DELETE goes to the reactor's writer while it is open and
        the writer thread has no unfinished write (so writes stay in
        order); every other write, and every write meanwhile, to the thread.
        """
        self._unfinishedWrites += 1
        reactorWriter = self.reactorWriter
        if (reactorWriter is not None and reactorWriter.open and not self._threadWrites
                and type(work) in _REACTOR_WRITES):
            d = reactorWriter.submit(work)
        else:
            d = self._threadWrite(work)
        d.addBoth(self._writeFinished)
        return d

    def _threadWrite(self, work: Callable[[Any], Any]) -> Deferred[Any]:
        """C{work} on the writer thread (also the reactor writer's fallback)."""
        self._threadWrites += 1

        def finished(result: Any) -> Any:
            self._threadWrites -= 1
            return result

        return self._writer.submit(work).addBoth(finished)

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
            work: Any = PlainRead(keys)
        else:
            work = IncludeRead(keys, references)
        reactorWriter = self.reactorWriter
        if reactorWriter is not None and reactorWriter.pending:
            # Behind the reactor writer's writes: read once they are
            # answered (not behind those that come later).
            return reactorWriter.barrier().addCallback(lambda _: self._readNow(work))
        return self._readNow(work)

    def _readNow(self, work: Any) -> Deferred[Snapshot]:
        if self._threadWrites:
            return self._writer.submit(work)
        asynchronous = self.reactorReader
        if (asynchronous is not None and asynchronous.open
                and (type(work) is PlainRead or work.paths)):
            return asynchronous.submit(work)
        return self._reader.submit(work)
