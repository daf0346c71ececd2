"""
The PostgreSQL store's listener: the thread that hears C{NOTIFY
proto_changes} (the doorbell every write transaction rings at commit,
L{proto.store.postgres_batch}) and feeds the publisher from the change
log, so that every server sharing a database publishes every change, in
etag order, without a gap (C{shared/PROTOCOL.md}, section 8).

A notification is a doorbell only: when it rings (or every
L{CATCH_UP_SECONDS} anyway) the listener reads the log from the
publisher's position. It skips the notifications of this server's own
writers' commits (their changes, and others' below them, are handed over
by the writers themselves: issue 13), reading the log for one only if it
was not handed over within L{OWN_GRACE_SECONDS}. While the reactor's
writer (L{proto.store.postgres_writer}) listens on its own connection,
this thread does not: the writer ignores its own commits' notifications
there (no thread wakes for them) and rings this thread for others'
(L{Listener.ring}). A dropped connection is
opened again and catches up from the log: no change is lost.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Collection

from proto.store import postgres_reads, postgres_schema
from proto.store.sqlite_publisher import BellThread, Publisher, handOver

if TYPE_CHECKING:
    from proto.store.postgres_pipeline import Statement

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


class Listener(BellThread):
    """
    The thread that hears C{NOTIFY proto_changes} and feeds the publisher
    from the change log (see the module docstring).
    """

    threadName = "proto-store-listener"

    def __init__(self, conninfo: str, publisher: Publisher, reactor: Any,
                 delivered: Callable[[], int] = lambda: 0,
                 ownPids: Callable[[], Collection[int]] = lambda: ()) -> None:
        """
        @param delivered: the etag up to which this server's writer has
            handed every change to the publisher already (read from this
            thread): a notification at or below it needs no catch-up.
        @param ownPids: the backend processes of this server's writers.
        """
        super().__init__(publisher, reactor)
        self._delivered = delivered
        self._ownPids = ownPids
        self._owed = 0  # the last etag of our writer's commits not handed over yet
        self._owedSince = 0.0
        self.skipped = 0  # notifications needing no catch-up (tests)
        self._conninfo = conninfo
        self._where = postgres_schema.displayed(conninfo)
        self.connects = 0  # how many times it connected (tests: reconnection)
        #: The reactor's writer hears the doorbell (set from the reactor).
        self._reactorHears = False
        self._rung = False
        self._bell = threading.Event()
        self.rings = 0  # catch-ups the reactor's writer asked for (tests)
        #: This thread's connection listens (C{False}: the reactor's writer does).
        self.listening = False

    def hearFrom(self, reactorHears: bool) -> None:
        """
        (Reactor thread.) The reactor's writer listens to the doorbell
        (C{True}: this thread stops listening, so that the writer's own
        commits no longer wake it, and waits for L{ring}), or no longer
        (C{False}: it listens again). Either way it catches up from the
        log after the switch, so a change committed meanwhile is not missed.
        """
        self._reactorHears = reactorHears
        self._bell.set()

    def ring(self) -> None:
        """(Reactor thread.) Another writer committed: catch up from the log."""
        self._rung = True
        self._bell.set()

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
        self.listening = True
        while not self._stop.is_set():
            if self._reactorHears:
                if self.listening:
                    connection.execute(f"UNLISTEN {postgres_schema.CHANNEL}")
                    self.listening = False
                    self._owed = 0
                    self._catchUp(connection)  # (what came before the reactor heard)
                self._bell.wait(WAIT_SECONDS)
                self._bell.clear()
                rang, self._rung = self._rung, False
                if rang:
                    self.rings += 1
                if rang or self._due():
                    self._catchUp(connection)
                continue
            if not self.listening:
                connection.execute(f"LISTEN {postgres_schema.CHANNEL}")
                self.listening = True
                self._catchUp(connection)  # (what came while no one listened)
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
                elif etag is not None and notify.pid in self._ownPids():
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
            lambda: postgres_reads.counter(connection, "etag"),
            lambda after, upTo: postgres_reads.logRange(connection, after, upTo),
            self._stop.is_set,
        )


#: The owner of the reactor writer's LISTEN statement's sync.
_LISTEN = object()


class ReactorDoorbell:
    """
    A mixin of L{proto.store.postgres_writer.ReactorWriter}: its
    connection listens to the doorbell (see L{Listener.hearFrom}). Its own
    commits' notifications arrive there with their results and are
    dropped; another writer's commit not handed over yet rings the
    listener thread.

    @ivar hears: its LISTEN is answered, and the connection open.
    @ivar rung: other writers' commits heard (rings of the listener).
    """

    # (What the writer provides.)
    backendPid: int | None
    delivered: int
    sendPlain: Callable[..., "Statement"]
    sync: Callable[..., None]
    lost: Callable[[Any], None]

    def __init__(self, hearing: Callable[[bool], None] | None,
                 ring: Callable[[], None] | None) -> None:
        """
        @param hearing: given, the connection LISTENs and says whether it
            hears (C{True} once its LISTEN is answered, C{False} once
            closed): then the listener thread need not, and is not woken by
            this writer's own commits (L{Listener.hearFrom}).
        @param ring: called when it hears another writer's commit that was
            not handed to the publisher yet (L{Listener.ring}).
        """
        self._hearing = hearing
        self._ring = ring
        self.hears = False
        self.rung = 0
        self._listen: "Statement | None" = None

    def opened(self) -> None:
        if self._hearing is not None:
            try:
                self._listen = self.sendPlain(
                    "listen", b"LISTEN " + postgres_schema.CHANNEL.encode(), _LISTEN)
                self.sync(_LISTEN)
            except Exception as e:
                self.lost(e)

    def closed(self) -> None:
        if self.hears:
            self.hears = False
            assert self._hearing is not None
            self._hearing(False)

    def takeNotifies(self, pgconn: Any) -> None:
        """Ring for another writer's commit not handed over yet; not for our own."""
        ring = False
        pgconn.is_busy()  # (parses what was received: notifications too)
        while (notify := pgconn.notifies()) is not None:
            payload = notify.extra
            etag = int(payload) if payload.isdigit() else None
            if notify.be_pid != self.backendPid and (etag is None or etag > self.delivered):
                ring = True
        if ring and self._ring is not None:
            self.rung += 1
            self._ring()

    def heardListen(self, statement: "Statement") -> bool:
        """Whether C{statement} is the LISTEN's sync (then: hearing, if it succeeded)."""
        if statement.owner is not _LISTEN:
            return False
        from psycopg.pq import ExecStatus

        listen = self._listen
        if (listen is not None and listen.result is not None
                and listen.result.status == ExecStatus.COMMAND_OK and self._hearing is not None):
            self.hears = True
            self._hearing(True)
        return True
