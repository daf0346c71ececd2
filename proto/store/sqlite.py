"""
The document store in one SQLite file, off the reactor thread.

Threads
=======
SQLite calls block, so none runs on the reactor thread. The store has two
threads, each with its own connection, each running a L{_Worker} loop:

  - the B{writer} takes I{everything} queued since its last turn, runs it
    in one transaction and commits once (group commit). With
    C{synchronous=FULL} a commit waits for the disk, so while one commit is
    in progress the next batch piles up and is committed by the next
    fsync: write throughput grows with the number of concurrent writers
    instead of being capped at one write per fsync. L{SQLiteStore.commits}
    and L{SQLiteStore.writes} count transactions and the operations in
    them.
  - two B{readers} (I{point} and I{bulk}) do the same for reads, each
    batch in one read transaction. The file is in WAL mode, so reads run
    concurrently with the writer and see the last committed state. Small
    reads do not even go to a thread: they run on the reactor thread
    through a read connection of their own. A read issued while writes
    are unfinished joins the writer's queue, behind them (read-your-writes). See
    L{proto.store.sqlite_reads} for the routes and the bounds.

  - the B{doorbell} (L{proto.store.sqlite_publisher}) notices commits by
    other processes sharing the file.

Results go back to the reactor thread with C{callFromThread}. After a
write batch has committed, first its changes are published to the hub
(by the L{proto.store.sqlite_publisher.Publisher}, in etag order, with
any earlier changes of other processes before them), then the Deferreds
fire. So a WATCH sees a change only once it is durable, and a writer
told "done" knows every watcher in the process has already been handed
the change.

Modules: L{proto.store.sqlite_schema} (tables, versions, upgrades),
L{proto.store.sqlite_write} (the write transaction, the counter, the
change log and its pruning), L{proto.store.sqlite_read} (the queries),
L{proto.store.sqlite_worker} (the threads and their queues),
L{proto.store.sqlite_publisher} (feeding the hub).

Cancellation
============
Cancelling an operation's Deferred while it is still queued removes it:
it never runs (a timed-out PUT is never committed). Once the worker has
taken it into a batch it runs to its end; the Deferred has already failed
with C{CancelledError}, and a write is still committed and published.
There is no way to take one operation out of a transaction that is
already committing, and a client told "Timeout" must treat the outcome of
its write as unknown anyway.

Schema
======
C{documents(key, id, etag, body)}, where C{key} is the case-folded id
(L{proto.store.base.idKey}), C{id} the id as first written and C{body}
the JSON text as PUT (UTF-8 bytes); C{counters(name, value)} holding the
last etag handed out (read and bumped inside every write transaction, so
several processes can share the file); and the change log
C{changes(etag, key, id, type)}. See L{proto.store.sqlite_schema}.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any, Callable, Hashable, Iterable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from proto.store import sqlite_read
from proto.store.base import (
    Document,
    IDocumentStore,
    Snapshot,
    StoreError,
    checkId,
    idKey,
)
from proto.store.cache import DocumentCache
from proto.store.facade import StoreFacade
from proto.store.sqlite_publisher import Doorbell
from proto.store.grants import IGrantStore, SQLiteGrants
from proto.store.facade import MAX_PAGE
from proto.store.sqlite_inline import InlineReader
from proto.store.sqlite_reads import ReaderSession, ReadPath
from proto.store.sqlite_worker import Worker
from proto.store.sqlite_write import DEFAULT_RETAIN_CHANGES, WriteSession

#: The file name of the store inside the data directory.
DEFAULT_FILE_NAME = "documents.sqlite3"



@implementer(IDocumentStore, IGrantStore)
class SQLiteStore(StoreFacade, SQLiteGrants):
    """
    L{IDocumentStore} in one SQLite file (WAL, C{synchronous=FULL}), with a
    group-committing writer thread, a reader thread and, with a hub, the
    doorbell thread.

    @ivar path: the database file.
    @ivar commits: write transactions committed so far.
    @ivar writes: operations run in those transactions (so C{writes /
        commits} is the mean group-commit batch size).
    """

    _reader: Worker

    def __init__(
        self,
        path: str,
        hub: Any = None,
        reactor: Any = None,
        retainChanges: int = DEFAULT_RETAIN_CHANGES,
        configure: Callable[[Any], None] | None = None,
        inlineReads: bool = True,
        cache: bool = True,
    ) -> None:
        """
        @param path: the database file (created, with its directory, if
            missing).
        @param hub: a L{proto.hub.ChangeHub} (anything with C{startAt} and
            C{publishChanges}) told of every committed change, or C{None}.
        @param reactor: provides C{callFromThread}; the global reactor by
            default.
        @param retainChanges: keep at least this many of the newest
            changes in the log (at least 1).
        @param configure: called with the writer's connection once it is
            open (tests use it for C{PRAGMA max_page_count}).
        @param inlineReads: serve small reads on the reactor thread (see
            L{proto.store.sqlite_reads}); C{False} sends every read to a
            reader thread.
        @param cache: with C{inlineReads}, keep recent documents in memory
            (L{proto.store.cache}, coherent with every commit).
        @raise ValueError: if C{retainChanges} is below 1.
        """
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(hub, retainChanges)
        self.path = path
        self._reactor = reactor
        self._inlineReads = inlineReads
        self._cache = cache
        self._closed = False
        self._hub = hub
        self._doorbell = (
            Doorbell(path, self._publisher, reactor) if self._publisher is not None else None
        )
        self._writer = Worker(
            "writer",
            lambda: WriteSession(path, retainChanges, self._published, configure),
            reactor,
            self._committed,
        )
        self._reader = Worker("reader", lambda: ReaderSession(path), reactor)
        self._bulkReader = Worker("bulk-reader", lambda: ReaderSession(path), reactor)
        self._reads = ReadPath(self._writer, self._reader, self._bulkReader)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    def start(self) -> Deferred[None]:
        """
        Open the file; fires once it is open. One attempt, unlike the
        PostgreSQL store, which keeps trying while its database cannot be
        reached (L{proto.store.reopen}): a local file that cannot be opened
        (a wrong path, permissions, a file that is not a database, a schema
        from a newer release) is a configuration error that does not pass
        by itself, and retrying would only hide it. Operations then fail
        with L{proto.store.base.StoreNotOpenedError}, which says why and
        that the server must be restarted once that is fixed.
        """
        if self._started:
            return fail(StoreError(f"{self!r} is already started"))
        self._started = True
        # The writer creates (or upgrades) the schema, so the others open
        # after it. Its session is handed over before any batch's result
        # (callFromThread keeps order), so the publisher starts at the
        # etag the file had before any write of ours.
        started = self._writer.start()
        started.addCallback(self._writerOpen)
        # (Closed meanwhile: the readers are not started at all.)
        started.addCallback(lambda _: None if self._closed else self._reader.start())
        started.addCallback(lambda _: None if self._closed else self._bulkReader.start())
        started.addCallback(self._readersOpen)
        started.addErrback(self._startFailed)
        return started

    def _workers(self) -> list[Worker]:
        return [self._writer, self._reader, self._bulkReader]

    def _writerOpen(self, session: WriteSession) -> None:
        if self._publisher is not None:
            self._publisher.startAt(session.openedAt)
        if self._doorbell is not None:  # (there is one when there is a publisher)
            self._doorbell.start()

    def _readersOpen(self, _: Any) -> None:
        if self._inlineReads and not self._closed:
            self._reads.inline = InlineReader(
                self.path, cache=DocumentCache() if self._cache else None
            )

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._doorbell is not None:
            self._doorbell.stop()
        inline, self._reads.inline = self._reads.inline, None
        if inline is not None:
            inline.close()
        closing = [self._writer.stop(), self._reader.stop(), self._bulkReader.stop()]
        done = closing[0].addCallback(lambda _: closing[1]).addCallback(lambda _: closing[2])
        return done.addCallback(lambda _: None)

    # -- reads -----------------------------------------------------------------

    def read(
        self,
        ids: Sequence[str],
        references: Callable[[list[Document | None]], Iterable[str | None]] | None = None,
    ) -> Deferred[Snapshot]:
        """
        Reads see every write submitted before them (read-your-writes, so a
        client may pipeline PUT then GET). Where they run: see
        L{proto.store.sqlite_reads}.
        """
        try:
            found = self.readNow(ids, references)
        except Exception:
            return fail()
        return found if isinstance(found, Deferred) else succeed(found)

    def readNow(
        self,
        ids: Sequence[str],
        references: Callable[[list[Document | None]], Iterable[str | None]] | None = None,
    ) -> Snapshot | Deferred[Snapshot]:
        """
        L{read}, but the L{Snapshot} itself when it is read at once on
        this thread (from the document cache, or inline), which spares the
        caller a L{Deferred}; else the L{Deferred}. Errors of an inline
        read (an invalid id, the Include bounds) are raised.
        """
        return self._reads.readNow([checkId(id) for id in ids], references)

    def remembered(self, key: Hashable) -> Any:
        """
        What C{remember} kept under C{key}, while it still is what a read
        now would give (until the next commit, and never across a write of
        ours not yet finished), else C{None}: see
        L{proto.store.sqlite_reads.ReadPath.remembered}.
        """
        return self._reads.remembered(key)

    def remember(self, key: Hashable, value: Any, size: int, etag: int) -> None:
        """
        Keep C{value} (about C{size} bytes), made from the snapshot with
        C{etag} that L{readNow} just returned, for L{remembered}.
        """
        self._reads.remember(key, value, size, etag)

    def summary(self) -> Deferred[dict[str, int]]:
        """
        C{{"Documents": count, "Etag": last etag, "Changes": rows in the
        change log}} (STATS and the metrics), read in one snapshot after
        every write submitted before it.
        """

        def work(session: Any) -> dict[str, int]:
            connection = session.connection
            (documents,) = connection.execute("SELECT count(*) FROM documents").fetchone()
            (changes,) = connection.execute("SELECT count(*) FROM changes").fetchone()
            etag = sqlite_read.counter(connection, "etag")
            return {"Documents": documents, "Etag": etag, "Changes": changes}

        worker = self._writer if self._reads.unfinishedWrites else self._reader
        return worker.submit(work)

    def scan(self, prefix: str, after: str | None, limit: int) -> Deferred[list[Document]]:
        """
        Up to C{limit} documents whose id starts with C{prefix} (ignoring
        case), in key order, after the document C{after} (an id; C{None}:
        from the first): pages for C{proto-cli export}. One snapshot per
        page, after every write submitted before it.
        """
        low = idKey(prefix)
        if after is not None and idKey(after) > low:
            low, inclusive = idKey(after), False
        else:
            inclusive = True
        # U+10FFFF sorts after every character (SQLite compares UTF-8 bytes).
        high = idKey(prefix) + "\U0010ffff"
        limit = max(1, min(limit, MAX_PAGE))

        def work(session: Any) -> list[Document]:
            rows = session.connection.execute(
                "SELECT id, etag, body FROM documents WHERE key "
                + (">=" if inclusive else ">")
                + " ? AND key < ? ORDER BY key LIMIT ?",
                (low, high, limit),
            )
            return [Document(id, etag, body) for id, etag, body in rows]

        worker = self._writer if self._reads.unfinishedWrites else self._reader
        return worker.submit(work)

    def backup(self, directory: str) -> Deferred[str]:
        """
        Write a consistent copy of the store into C{directory} (created if
        missing) with SQLite's online backup API; fires with its path.

        It runs on a thread of its own with its own connection, copying
        every page in one step, inside one read transaction: in WAL mode a
        reader never blocks the writer, so writes go on while it copies, and
        the copy is the store as of one commit. The file is written under a
        temporary name and renamed when complete, so a half-written backup
        is never mistaken for one. To restore, start a server on it (copy
        it into the data directory as L{DEFAULT_FILE_NAME}).
        """
        from twisted.internet.threads import deferToThreadPool

        source = self.path

        def copy() -> str:
            os.makedirs(directory, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            base = os.path.join(directory, f"documents-{stamp}")
            path, n = base + ".sqlite3", 1
            while os.path.exists(path):
                n += 1
                path = f"{base}-{n}.sqlite3"
            tmp = path + ".partial"
            src = sqlite_read.connect(source)
            try:
                dst = sqlite3.connect(tmp)
                try:
                    src.backup(dst, pages=-1)
                    dst.execute("PRAGMA journal_mode = DELETE")
                finally:
                    dst.close()
            finally:
                src.close()
            os.replace(tmp, path)
            return path

        reactor = self._reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), copy)

    #: What BACKUP answers for a store it cannot copy (C{None} here).
    backupAdvice = None

    # -- writes (the rest: StoreFacade) ------------------------------------------

    @property
    def _unfinishedWrites(self) -> int:
        return self._reads.unfinishedWrites

    @_unfinishedWrites.setter
    def _unfinishedWrites(self, count: int) -> None:
        self._reads.unfinishedWrites = count
