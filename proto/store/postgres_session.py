"""
The PostgreSQL store's sessions: one connection per thread (writer,
reader), the SQL they run, and what a lost database becomes.

Write transaction (one per batch: group commit, as in the SQLite store):

  1. C{SELECT ... FROM proto_counters WHERE name IN ('etag', 'log_floor')
     FOR UPDATE}: the row lock serialises every writer of the database
     (every worker, every host), so etags are handed out in commit order:
     once etag I{n} is visible, every change below it is committed;
  2. each operation runs: it reads the documents it needs (once per key
     per batch), and its writes are kept and sent together at the end
     (C{executemany}, pipelined by psycopg); every change takes the next
     etag and a row of C{proto_changes};
  3. the counters are written back, the log pruned beyond the retention,
     one C{NOTIFY proto_changes} sent (delivered at commit: the doorbell
     of every server's listener), and the transaction commits.

A lost connection is not fatal: the next batch connects again (at most
one attempt per L{RETRY_SECONDS}; meanwhile batches fail at once), and
every failure is a L{StoreUnavailableError} with a reason for the client.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.store.base import (
    DELETE,
    PUT,
    Change,
    ChangePage,
    Document,
    Snapshot,
    StorageFullError,
    StoreError,
    StoreUnavailableError,
    Version,
    resolveIncludes,
)
from proto.store.postgres_schema import CHANGE_PUT, CHANNEL, connect, displayed
from proto.store.sqlite_write import _TYPE_CODES, BatchResult, attempt, pruneFloor, storedIdFor

#: After a failed connection attempt, batches fail at once for this long
#: before the next attempt.
RETRY_SECONDS = 1.0

References = Callable[[list["Document | None"]], Iterable["str | None"]]


# -- queries (any connection, in the caller's transaction) ------------------------------


def counter(connection: Any, name: str) -> int:
    row = connection.execute("SELECT value FROM proto_counters WHERE name = %s", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def select(connection: Any, keys: Sequence[str]) -> list[Document | None]:
    """Documents by key, C{None} where there is none."""
    found: dict[str, Document] = {}
    unique = list(dict.fromkeys(keys))
    if unique:
        for key, id, etag, body in connection.execute(
            "SELECT key, id, etag, body FROM proto_documents WHERE key = ANY(%s)", (unique,)
        ):
            found[key] = Document(id, etag, bytes(body))
    return [found.get(key) for key in keys]


def snapshot(connection: Any, keys: Sequence[str], references: References | None) -> Snapshot:
    """The documents, those they reference, and the etag, in the caller's transaction."""
    etag = counter(connection, "etag")
    results = select(connection, keys)
    if references is None:
        return Snapshot(results, [], etag)
    includes = resolveIncludes(results, references, lambda missing: select(connection, missing))
    return Snapshot(results, includes, etag)


#: Joins keys into one text parameter (C{string_to_array}): no key has
#: it (ids have no control characters), and one text parameter is
#: cheaper for psycopg to send than a list (a C{text[]}).
KEY_SEPARATOR = "\x1f"

_READ_SQL = (
    "SELECT c.value, d.key, d.id, d.etag, d.body FROM proto_counters c "
    "LEFT JOIN proto_documents d ON {} WHERE c.name = 'etag'"
)
_ONE_KEY_SQL = _READ_SQL.format("d.key = %s")
_KEYS_SQL = _READ_SQL.format("d.key = ANY(string_to_array(%s, chr(31)))")


def plainRead(connection: Any, keys: Sequence[str]) -> Snapshot:
    """
    GET without Include in one statement (so one snapshot, one round
    trip): the etag counter joined with the documents found.
    """
    return plainReads(connection, [keys])[0]


def plainReads(connection: Any, keyLists: Sequence[Sequence[str]]) -> list[Snapshot]:
    """
    Several GETs without Include in one statement (one round trip, one
    snapshot for all of them): a reader's batch.
    """
    sql, params = plainStatement(keyLists)
    return plainSnapshots(connection.execute(sql, params), keyLists)


def plainStatement(keyLists: Sequence[Sequence[str]]) -> tuple[str, tuple[str]]:
    """The one statement (SQL, parameters) of a batch of GETs without Include."""
    unique = list(dict.fromkeys(key for keys in keyLists for key in keys))
    return _ONE_KEY_SQL if len(unique) == 1 else _KEYS_SQL, (KEY_SEPARATOR.join(unique),)


def plainSnapshots(rows: Iterable[Sequence[Any]], keyLists: Sequence[Sequence[str]]) -> list[Snapshot]:
    """Each read's L{Snapshot} from the rows of L{plainStatement} (etag, key, id, etag, body)."""
    found: dict[str, Document] = {}
    etag = 0
    for current, key, id, docEtag, body in rows:
        etag = current
        if key is not None:
            found[key] = Document(id, docEtag, bytes(body))
    return [Snapshot([found.get(key) for key in keys], [], etag) for keys in keyLists]


class PlainRead:
    """The work of a GET without Include: readers run a batch of them as one statement."""

    __slots__ = ("readKeys",)

    def __init__(self, keys: Sequence[str]) -> None:
        # (Not "keys": the writer locks and reads the keys of works so named.)
        self.readKeys = keys

    def __call__(self, session: Any) -> Snapshot:
        return session.read(self.readKeys, None)


#: The most candidate ids a one-statement Include read fetches with the
#: results (more: the read takes two round trips, L{snapshotInclude}).
PREFETCH_MAX = 256

#: GET with Include in one statement: the etag, the results, and the
#: documents under every string the Include paths reach in them
#: (C{jsonb_path_query}, lax mode: one level of list at each step, like
#: L{proto.commands.include}), each candidate key with its document or
#: NULL. Row kinds: 0 the etag, 1 a result, 2 a candidate.
_PREFETCH_SQL = (
    "WITH r AS (SELECT key, id, etag, body FROM proto_documents WHERE {keys}), "
    "k AS (SELECT DISTINCT lower(v #>> '{{}}') AS key FROM r, {paths}, "
    "jsonb_path_query(convert_from(r.body, 'UTF8')::jsonb, p) v "
    "WHERE jsonb_typeof(v) = 'string' LIMIT %s) "
    "SELECT 0, NULL, NULL, value, NULL FROM proto_counters WHERE name = 'etag' "
    "UNION ALL SELECT 1, key, id, etag, body FROM r "
    "UNION ALL SELECT 2, k.key, d.id, d.etag, d.body FROM k "
    "LEFT JOIN proto_documents d ON d.key = k.key"
)

#: L{_PREFETCH_SQL} by (one key?, one path?): single parameters are
#: cheaper to send than arrays.
_PREFETCH = {
    (oneKey, onePath): _PREFETCH_SQL.format(
        keys="key = %s" if oneKey else "key = ANY(string_to_array(%s, chr(31)))",
        paths="CAST(%s AS jsonpath) p" if onePath else "unnest(CAST(%s AS jsonpath[])) p",
    )
    for oneKey in (True, False)
    for onePath in (True, False)
}


class _NotFetched(Exception):
    """The walk named an id the one-statement read did not look up."""


def jsonPath(path: Sequence[str]) -> str:
    """An Include path (C{("A", "B")}) as a lax SQL/JSON path to the strings it reaches."""
    steps = "".join('."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"' for name in path)
    return f"lax ${steps}[*]"


def prefetchedReads(connection: Any, reads: Sequence["IncludeRead"]) -> list[Any]:
    """
    GETs with Include in one statement (one snapshot, one round trip):
    the database looks up the ids the paths reach ahead of the walk; each
    read's walk (C{references}: it decides what is included, with its
    bounds and filters) then takes its documents from those. Per read:
    its L{Snapshot}; C{None} if its walk named an id that was not looked
    up (a case PostgreSQL folds otherwise, a path SQL/JSON reads
    otherwise, too many candidates, a body C{jsonb} refuses: that read
    then takes two round trips, L{snapshotInclude}); or the L{Failure} of
    its walk (the Include bounds), which fails that read alone.
    """
    import psycopg

    sql, params = prefetchStatement(reads)
    try:
        rows = connection.execute(sql, params).fetchall()
    except (psycopg.DataError, psycopg.ProgrammingError):
        # A body jsonb refuses (one with an escaped NUL), a path it cannot
        # parse: read in two round trips (autocommit: nothing to roll back).
        return [None] * len(reads)
    return prefetchedSnapshots(rows, reads)


def prefetchStatement(reads: Sequence["IncludeRead"]) -> tuple[str, tuple[str, Any, int]]:
    """
    The one statement (SQL, parameters) of a batch of GETs with Include:
    its keys, its paths (one text, or a list of them) and its row limit.
    """
    unique = list(dict.fromkeys(key for read in reads for key in read.readKeys))
    paths = list(dict.fromkeys(jsonPath(path) for read in reads for path in read.paths or ()))
    limit = PREFETCH_MAX * len(reads)
    return _PREFETCH[len(unique) == 1, len(paths) == 1], (
        KEY_SEPARATOR.join(unique), paths[0] if len(paths) == 1 else paths, limit + 1
    )


def prefetchedSnapshots(rows: Iterable[Sequence[Any]], reads: Sequence["IncludeRead"]) -> list[Any]:
    """
    Each read's outcome (see L{prefetchedReads}) from the rows of
    L{prefetchStatement}: (kind, key, id, etag, body).
    """
    limit = PREFETCH_MAX * len(reads)
    etag = 0
    byKey: dict[str, Document] = {}
    candidates: dict[str, Document | None] = {}
    for kind, key, id, version, body in rows:
        if kind == 0:
            etag = version
        elif kind == 1:
            byKey[key] = Document(id, version, bytes(body))
        else:
            candidates[key] = None if id is None else Document(id, version, bytes(body))
    if len(candidates) > limit:
        return [None] * len(reads)

    def fetch(missing: list[str]) -> list[Document | None]:
        try:
            return [candidates[key] for key in missing]
        except KeyError:
            raise _NotFetched() from None

    found: list[Any] = []
    for read in reads:
        results = [byKey.get(key) for key in read.readKeys]
        try:
            found.append(Snapshot(results, resolveIncludes(results, read.references, fetch), etag))
        except _NotFetched:
            found.append(None)
        except Exception:
            found.append(Failure())
    return found


def includeRead(connection: Any, keys: Sequence[str], references: References) -> Snapshot:
    """
    GET with Include in one snapshot: in one round trip when the walk is
    an L{proto.commands.include.IncludeWalk} whose paths the database can
    follow (L{prefetchedReads}), else in two (L{snapshotInclude}).
    """
    read = IncludeRead(keys, references)
    if read.paths:
        (found,) = prefetchedReads(connection, [read])
        if isinstance(found, Failure):
            found.raiseException()
        if found is not None:
            return found
    return snapshotInclude(connection, keys, references)


class IncludeRead:
    """The work of a GET with Include: readers run a batch's as one statement."""

    __slots__ = ("readKeys", "references", "paths")

    def __init__(self, keys: Sequence[str], references: References) -> None:
        self.readKeys = keys
        self.references = references
        #: The Include paths of an IncludeWalk (the database can follow them).
        self.paths: Sequence[Sequence[str]] | None = getattr(references, "paths", None)

    def __call__(self, session: Any) -> Snapshot:
        return session.read(self.readKeys, self.references)


def snapshotInclude(connection: Any, keys: Sequence[str], references: References) -> Snapshot:
    """
    GET with Include in one read-only snapshot and two round trips: the
    etag and the documents (pipelined with BEGIN), then the referenced
    documents not found yet (pipelined with COMMIT).
    """
    unique = list(dict.fromkeys(keys))
    with connection.pipeline():
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        counterRow = connection.execute("SELECT value FROM proto_counters WHERE name = 'etag'")
        documents = connection.execute(
            "SELECT key, id, etag, body FROM proto_documents WHERE key = ANY(%s)", (unique,)
        )
        (etag,) = counterRow.fetchone()
        byKey = {key: Document(id, docEtag, bytes(body))
                 for key, id, docEtag, body in documents.fetchall()}
    results = [byKey.get(key) for key in keys]

    def fetch(missing: list[str]) -> list[Document | None]:
        with connection.pipeline():
            extra = connection.execute(
                "SELECT key, id, etag, body FROM proto_documents WHERE key = ANY(%s)", (missing,)
            ) if missing else None
            connection.execute("COMMIT")
            rows = {key: Document(id, docEtag, bytes(body))
                    for key, id, docEtag, body in (extra.fetchall() if extra is not None else ())}
        return [rows.get(key) for key in missing]

    return Snapshot(results, resolveIncludes(results, references, fetch), etag)


def _change(etag: int, id: str, type: int) -> Change:
    return Change(id, PUT if type == CHANGE_PUT else DELETE, etag)


def changes(connection: Any, since: int, prefixKey: str, limit: int) -> ChangePage:
    """One page of the change log (L{ChangePage}), prefix matched in SQL."""
    current = counter(connection, "etag")
    floor = counter(connection, "log_floor")
    rows = connection.execute(
        "SELECT etag, id, type FROM proto_changes WHERE etag > %s AND starts_with(key, %s) "
        "ORDER BY etag LIMIT %s",
        (since, prefixKey, limit),
    ).fetchall()
    found = [_change(*row) for row in rows]
    scanned = found[-1].etag if len(found) >= limit else max(current, since)
    return ChangePage(found, scanned, floor)


def logRange(connection: Any, after: int, upTo: int) -> list[Change]:
    """Every retained change with an etag in (after, upTo], in order."""
    rows = connection.execute(
        "SELECT etag, id, type FROM proto_changes WHERE etag > %s AND etag <= %s ORDER BY etag",
        (after, upTo),
    ).fetchall()
    return [_change(*row) for row in rows]


# -- errors -------------------------------------------------------------------------------


def trouble(error: BaseException, where: str, committing: bool = False) -> Exception:
    """What a psycopg error becomes: a reason for the client, or an internal error."""
    import psycopg
    from psycopg import errors

    if isinstance(error, errors.DiskFull):
        return StorageFullError(f"the PostgreSQL database has no room left ({error}); "
                                "free space on its server or delete documents")
    if isinstance(error, (errors.QueryCanceled, errors.LockNotAvailable)):
        return StoreUnavailableError(
            "the database did not answer in time (PostgreSQL at "
            f"{where}); the outcome of a write is unknown"
        )
    if isinstance(error, psycopg.OperationalError):
        outcome = "; the outcome of this write is unknown" if committing else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StoreUnavailableError(
            f"the database is unreachable (PostgreSQL at {where}: {first}){outcome}; "
            "the server reconnects by itself"
        )
    return StoreError(f"PostgreSQL error ({where}): {error}")


class Session:
    """
    One thread's connection, connected again when lost. Only touched by
    its thread.
    """

    _log = Logger()

    def __init__(self, conninfo: str, what: str) -> None:
        self._conninfo = conninfo
        self.where = displayed(conninfo)
        self._what = what
        self._failedAt: float | None = None
        self._lastError: BaseException | None = None
        self.connection: Any = None
        self.connection = connect(conninfo, what)  # At start, a failure is the caller's.
        #: The connection's backend process (read by the listener's thread).
        self.backendPid: int | None = self.connection.info.backend_pid

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def live(self) -> Any:
        """
        The connection, connected again if it was lost.

        @raise StoreUnavailableError: if the database cannot be reached.
        """
        connection = self.connection
        if connection is not None and not connection.closed and not connection.broken:
            return connection
        self.close()
        now = time.monotonic()
        if self._failedAt is not None and now - self._failedAt < RETRY_SECONDS:
            assert self._lastError is not None  # (set with _failedAt)
            raise trouble(self._lastError, self.where)
        import psycopg

        try:
            self.connection = connect(self._conninfo, self._what)
            self.backendPid = self.connection.info.backend_pid
        except psycopg.Error as e:
            if self._failedAt is None:
                self._log.error("PostgreSQL store ({what}): cannot connect to {where}: {error}",
                                what=self._what, where=self.where, error=e)
            self._failedAt, self._lastError = now, e
            raise trouble(e, self.where) from None
        if self._failedAt is not None or self._lastError is not None:
            self._log.info("PostgreSQL store ({what}): connected again to {where}",
                           what=self._what, where=self.where)
        self._failedAt = self._lastError = None
        return self.connection

    def lost(self, error: BaseException) -> None:
        """A statement failed: forget a broken connection (logged once)."""
        if self.connection is not None and (self.connection.broken or self.connection.closed):
            self._log.error("PostgreSQL store ({what}): lost the connection to {where}: {error}",
                            what=self._what, where=self.where, error=error)
            self._lastError = error
            self.close()

    def rollback(self) -> None:
        connection = self.connection
        if connection is not None and not connection.broken and not connection.closed:
            try:
                connection.execute("ROLLBACK")
            except Exception:
                self.close()


class ReadSession(Session):
    """
    The reader thread's session. A GET without Include is one statement;
    what takes several (Include, a page of the change log) runs in one
    read-only snapshot (L{inSnapshot}).
    """

    def __init__(self, conninfo: str) -> None:
        super().__init__(conninfo, "reader")

    def runBatch(self, works: Sequence[Callable[[Any], Any]]) -> tuple[list[Any], None]:
        import psycopg

        self.live()
        try:
            plain = [work.readKeys for work in works if isinstance(work, PlainRead)]
            included = [work for work in works if isinstance(work, IncludeRead) and work.paths]
            if len(plain) < 2 and len(included) < 2:
                return [self._alone(work) for work in works], None
            # The batch's GETs without Include in one statement, those with
            # in another, the others one by one.
            shared = iter(plainReads(self.connection, plain) if len(plain) >= 2 else ())
            prefetched = iter(prefetchedReads(self.connection, included) if len(included) >= 2 else ())
            outcomes: list[Any] = []
            for work in works:
                if isinstance(work, PlainRead) and len(plain) >= 2:
                    outcomes.append(next(shared))
                elif isinstance(work, IncludeRead) and work.paths and len(included) >= 2:
                    found = next(prefetched)
                    outcomes.append(self._alone(work) if found is None else found)
                else:
                    outcomes.append(self._alone(work))
            return outcomes, None
        except psycopg.Error as e:
            self.rollback()
            self.lost(e)
            raise trouble(e, self.where) from None
        except BaseException:
            self.rollback()
            raise

    def _alone(self, work: Callable[[Any], Any]) -> Any:
        """
        Run one work of a batch; what it raises other than a database
        error (the Include bounds) fails it alone.
        """
        import psycopg
        from psycopg import pq

        try:
            return work(self)
        except psycopg.Error:
            raise
        except Exception:
            failure = Failure()
            connection = self.connection
            if (connection is not None
                    and connection.info.transaction_status != pq.TransactionStatus.IDLE):
                self.rollback()
            return failure

    def inSnapshot(self, query: Callable[..., Any], *args: Any) -> Any:
        """C{query(connection, *args)} in one repeatable-read, read-only transaction."""
        connection = self.connection
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        result = query(connection, *args)
        connection.execute("COMMIT")
        return result

    def changes(self, since: int, prefixKey: str, limit: int) -> ChangePage:
        return self.inSnapshot(changes, since, prefixKey, limit)

    def counter(self, name: str) -> int:
        return counter(self.connection, name)

    def read(self, keys: Sequence[str], references: References | None) -> Snapshot:
        if references is None:
            return plainRead(self.connection, keys)
        return includeRead(self.connection, keys, references)


class WriteSession(Session):
    """
    The writer thread's session: see the module docstring.

    @ivar changes: the changes made by the transaction in progress.
    @ivar startEtag: the etag counter when the store opened (set by it).
    """

    startEtag: int

    def __init__(self, conninfo: str, retain: int, published: Callable[[], int]) -> None:
        """
        @param published: the publisher's position (read from this thread;
            a stale value only makes the read of others' changes longer).
        """
        if retain < 1:
            raise ValueError("the change log must retain at least 1 change")
        super().__init__(conninfo, "writer")
        self.retain = retain
        self._pruneStep = min(1000, max(1, retain // 10))
        self._published = published
        self.changes: list[Change] = []
        #: Every change up to this etag is in a batch result handed to
        #: the publisher (read by the listener's thread).
        self.delivered = 0
        self._lastEtag = 0
        self._known: dict[str, tuple[str, int] | None] = {}
        self._upserts: dict[str, tuple[str, str, int, bytes]] = {}
        self._deletes: set[str] = set()
        self._logRows: list[tuple[int, str, str, int]] = []

    def runBatch(self, works: Sequence[Callable[["WriteSession"], Any]]) -> tuple[list[Any], BatchResult]:
        import psycopg

        connection = self.live()
        committing = False
        # The keys the batch's operations will read (L{PostgresStore} tags
        # its works with them): fetched with the lock, in one round trip.
        wanted = list(dict.fromkeys(key for work in works for key in getattr(work, "keys", ())))
        try:
            with connection.pipeline():
                connection.execute("BEGIN")
                locked = connection.execute(
                    "SELECT name, value FROM proto_counters WHERE name IN ('etag', 'log_floor') "
                    "FOR UPDATE"
                )
                documents = connection.execute(
                    "SELECT key, id, etag FROM proto_documents WHERE key = ANY(%s)", (wanted,)
                )
                counters = dict(locked.fetchall())
                known = {key: (id, etag) for key, id, etag in documents.fetchall()}
            before = self._lastEtag = counters["etag"]
            self._known = {key: known.get(key) for key in wanted}
            self._upserts, self._deletes, self._logRows = {}, set(), []
            self.changes = []
            outcomes = [self._attempt(work) for work in works]
            # The writes, the counters, the doorbell and the commit: one
            # round trip (then the commit's flush to disk).
            with connection.pipeline():
                self.flush()
                if self._lastEtag != before:
                    connection.execute(
                        "UPDATE proto_counters SET value = %s WHERE name = 'etag'",
                        (self._lastEtag,),
                    )
                    self._prune(counters["log_floor"])
                    connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(self._lastEtag)))
                committing = True
                connection.execute("COMMIT")
        except psycopg.Error as e:
            self.changes = []
            self.rollback()
            self.lost(e)
            raise trouble(e, self.where, committing) from None
        except BaseException:
            self.changes = []
            self.rollback()
            raise
        own = changes = self.changes
        published = self._published()
        if own and before > published:
            # Others committed since we last published: theirs go first
            # (the hub gets every etag, in order). If this read fails, the
            # listener delivers both theirs and ours.
            try:
                changes = logRange(connection, published, before) + own
            except psycopg.Error as e:
                self.lost(e)
                changes = []
        if changes:
            # Every change up to here goes to the publisher with this batch
            # (the listener skips the notification of this commit).
            self.delivered = changes[-1].etag
        return outcomes, BatchResult(changes, len(works))

    def _attempt(self, work: Callable[["WriteSession"], Any]) -> Any:
        return attempt(work, self)

    def _prune(self, floor: int) -> None:
        newFloor = pruneFloor(self._lastEtag, self.retain, floor, self._pruneStep)
        if newFloor is None:
            return
        self.connection.execute("DELETE FROM proto_changes WHERE etag <= %s", (newFloor,))
        self.connection.execute(
            "UPDATE proto_counters SET value = %s WHERE name = 'log_floor'", (newFloor,)
        )

    # -- operations (inside the transaction) -------------------------------------------

    def _find(self, key: str) -> tuple[str, int] | None:
        if key not in self._known:
            row = self.connection.execute(
                "SELECT id, etag FROM proto_documents WHERE key = %s", (key,)
            ).fetchone()
            self._known[key] = None if row is None else (row[0], row[1])
        return self._known[key]

    def _record(self, key: str, id: str, type: str) -> int:
        self._lastEtag += 1
        etag = self._lastEtag
        self._logRows.append((etag, key, id, _TYPE_CODES[type]))
        self.changes.append(Change(id, type, etag))
        return etag

    def put(self, key: str, id: str, body: bytes, ifMatch: int | None) -> Version:
        storedId = storedIdFor(id, self._find(key), ifMatch)
        etag = self._record(key, storedId, PUT)
        self._known[key] = (storedId, etag)
        self._upserts[key] = (key, storedId, etag, body)
        self._deletes.discard(key)
        return Version(storedId, etag)

    def delete(self, keys: Sequence[str]) -> list[Version]:
        deleted = []
        for key in keys:
            found = self._find(key)
            if found is None:
                continue
            self._known[key] = None
            self._upserts.pop(key, None)
            self._deletes.add(key)
            deleted.append(Version(found[0], self._record(key, found[0], DELETE)))
        return deleted

    def flush(self) -> None:
        """Send the writes kept so far (before a read, and at the end)."""
        connection = self.connection
        if self._deletes:
            connection.execute(
                "DELETE FROM proto_documents WHERE key = ANY(%s)", (list(self._deletes),)
            )
            self._deletes = set()
        with connection.cursor() as cursor:
            if self._upserts:
                cursor.executemany(
                    "INSERT INTO proto_documents (key, id, etag, body) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET id = excluded.id, etag = excluded.etag, "
                    "body = excluded.body",
                    list(self._upserts.values()),
                )
                self._upserts = {}
            if self._logRows:
                cursor.executemany(
                    "INSERT INTO proto_changes (etag, key, id, type) VALUES (%s, %s, %s, %s)",
                    self._logRows,
                )
                self._logRows = []

    # -- reads queued behind writes (read-your-writes) ---------------------------------

    def read(self, keys: Sequence[str], references: References | None) -> Snapshot:
        self.flush()
        found = snapshot(self.connection, keys, references)
        # The counter row is written at the end of the batch: the etag of
        # this snapshot is the last one handed out.
        return found._replace(etag=max(found.etag, self._lastEtag))
