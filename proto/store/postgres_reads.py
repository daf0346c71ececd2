"""
The PostgreSQL store's reads: the SQL every session runs to read (any
connection, in the caller's transaction), and the works a GET becomes.

A GET without Include is one statement (the etag counter joined with the
documents: one snapshot, one round trip, L{plainStatement}); a batch of
them is one statement too. A GET with Include is one statement as well
when the database can follow its paths (L{prefetchStatement}: SQL/JSON
paths look up the candidate ids with the results), else two round trips
in one read-only snapshot (L{snapshotInclude}); C{Etag} is the counter of
the same snapshot (C{shared/PROTOCOL.md}, section 8). The reader threads
(L{proto.store.postgres_session}) and the reactor's reader
(L{proto.store.postgres_async}) run the same statements. The change log
is read here too (L{changes}: WATCH with C{Since}; L{logRange}: the
publisher's catch-up).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from twisted.python.failure import Failure

from proto.store.base import (
    DELETE,
    PUT,
    Change,
    ChangePage,
    Document,
    Snapshot,
    resolveIncludes,
)
from proto.store.postgres_schema import CHANGE_PUT

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
