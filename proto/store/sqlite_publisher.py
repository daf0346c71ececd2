"""
Feeding the change hub from the SQLite change log, in etag order, with
the changes of every process that writes the same file.

One L{Publisher} per store object (so one per process), on the reactor
thread. It keeps C{etag}, the position: every change up to it has been
published to the hub, in order, once. Changes reach it two ways:

  - B{own commits}: the writer thread hands over each committed batch's
    changes, preceded by any changes other processes committed since the
    position (read from the log right after the commit), so that a write's
    Deferred fires after its change is published (read-your-writes for
    WATCH, see L{proto.store.base.IDocumentStore});
  - the B{doorbell}: a thread with its own connection polls
    C{PRAGMA data_version} every L{POLL_SECONDS} (a few microseconds each;
    the value changes when another connection commits; first it compares
    the WAL-index header, which every commit rewrites, with its last
    value, and skips the statement while it is unchanged: see
    L{proto.store.sqlite_coherence.walIndexOf}) and, when it rang
    and the counter row is above the position, reads the log from the
    position and hands the rows over. So a commit by another process is
    published within about L{POLL_SECONDS} plus a read, or two while this
    process's writer is committing (the doorbell skips a poll after an own
    commit, which has handed over every change before it), whichever
    comes first: the writer's next commit, or the doorbell.

Both may hand over the same change (the doorbell also rings for the
writer's own commits): L{Publisher.deliver} drops whatever is at or below
the position, so each change is published once, in order. Both read the
position from their thread (a plain int: a stale value only means a
longer read, never a hole, since the position only grows).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Callable

from twisted.logger import Logger

from proto.store.base import Change
from proto.store import sqlite_read
from proto.store.sqlite_coherence import WAL_HEADER_BYTES, walIndexOf

#: How often the doorbell checks for commits by other connections.
POLL_SECONDS = 0.01

#: Most changes the doorbell reads (and hands over) at once.
PAGE = 5_000


class Publisher:
    """
    Publishes changes to the hub in etag order, each once (on the reactor
    thread).

    @ivar etag: every change up to this etag has been published.
    """

    _log = Logger()

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.etag = 0
        #: Write transactions of this process that made changes, counted
        #: as they are delivered (on the reactor thread; the doorbell reads
        #: it from its own: a stale value only makes it look once more).
        self.ownCommits = 0

    def startAt(self, etag: int) -> None:
        """The store opened at C{etag}: publish what comes after it."""
        self.etag = etag
        self.hub.startAt(etag)

    def deliver(self, changes: list[Change]) -> None:
        """Publish the changes (in etag order) that are above the position."""
        position = self.etag
        if not changes or changes[-1].etag <= position:
            return
        if changes[0].etag <= position:
            changes = [change for change in changes if change.etag > position]
        if changes[0].etag != position + 1:
            # Only if the log was pruned past changes never published here
            # (this process stalled for longer than the retention).
            self._log.warn(
                "Change log: changes {first} to {last} were pruned before this "
                "process published them; watchers here miss them",
                first=position + 1, last=changes[0].etag - 1,
            )
        self.etag = changes[-1].etag
        self.hub.publishChanges(changes)


class BellThread:
    """
    A thread (any backend) that learns of commits made elsewhere and hands
    their changes to the L{Publisher}: subclasses give C{_main}, which runs
    until C{_stop} is set.
    """

    _log = Logger()
    threadName = "proto-store-doorbell"

    def __init__(self, publisher: Publisher, reactor: Any) -> None:
        self._publisher = publisher
        self._reactor = reactor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=self.threadName, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop; returns once the thread has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _main(self) -> None:
        raise NotImplementedError


class Doorbell(BellThread):
    """
    The thread that notices commits made by other connections (other
    processes) and hands their changes to the L{Publisher}.
    """

    def __init__(self, path: str, publisher: Publisher, reactor: Any) -> None:
        super().__init__(publisher, reactor)
        self._path = path

    def _main(self) -> None:
        try:
            connection = sqlite_read.connect(self._path)
            connection.execute("PRAGMA query_only = ON")
        except sqlite3.Error as e:
            self._log.error("Change log doorbell cannot open the store: {error}", error=e)
            return
        version = None
        failing = False
        publisher = self._publisher
        ownCommits = publisher.ownCommits
        # The WAL-index header as read just before the last data_version
        # (see walIndexOf): while it is unchanged nobody committed, and the
        # poll is one comparison instead of a statement (on an idle or a
        # read-only server, 100 statements a second cost ~1% of a core and
        # a GIL hand-over each).
        walIndex = None
        walHeader = b""
        mapTried = False
        try:
            while not self._stop.wait(POLL_SECONDS):
                if publisher.ownCommits != ownCommits:
                    # Our writer committed since the last look, and each of
                    # its commits hands over every change committed before
                    # it (other processes' first, see sqlite_write): only
                    # commits after its last can be missing. Look next
                    # time, unless it commits again meanwhile (issue 13:
                    # a busy writer made every poll read the file twice).
                    ownCommits = publisher.ownCommits
                    continue
                if walIndex is not None:
                    header = walIndex[:WAL_HEADER_BYTES]
                    if header == walHeader:
                        continue
                    # Read before data_version: a commit from now on
                    # changes it again, so the next poll looks again.
                    walHeader = header
                try:
                    (now,) = connection.execute("PRAGMA data_version").fetchone()
                    if walIndex is None and not mapTried:
                        # Mapped once the connection has used the file; its
                        # first header is read at the next poll, before
                        # that poll's data_version (walHeader stays b"").
                        mapTried = True
                        walIndex = walIndexOf(connection, self._path)
                    if now == version:
                        continue
                    version = now
                    self._catchUp(connection)
                    failing = False
                except sqlite3.Error as e:
                    version = None  # Try again at the next poll.
                    if not failing:
                        self._log.error("Change log doorbell: {error}", error=e)
                    failing = True
        finally:
            if walIndex is not None:
                walIndex.close()  # Before the connection lets go of the file.
            connection.close()

    def _catchUp(self, connection: sqlite3.Connection) -> None:
        """Hand over every change above the publisher's position."""
        handOver(
            self._publisher, self._reactor,
            lambda: sqlite_read.counter(connection, "etag"),
            lambda after, upTo: sqlite_read.logRange(connection, after, upTo),
            self._stop.is_set,
        )


def handOver(
    publisher: Publisher,
    reactor: Any,
    current: Callable[[], int],
    logRange: Callable[[int, int], list[Change]],
    stopped: Callable[[], bool],
) -> None:
    """
    From a doorbell's thread (any backend): read the change log from the
    publisher's position up to C{current()}, a page of L{PAGE} at a time,
    and hand each page to the publisher on the reactor thread.
    """
    position = publisher.etag
    while not stopped():
        upTo = current()
        if upTo <= position:
            return
        upTo = min(upTo, position + PAGE)
        changes = logRange(position, upTo)
        if changes:
            reactor.callFromThread(publisher.deliver, changes)
        position = upTo
