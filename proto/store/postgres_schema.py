"""
The PostgreSQL store's schema, its versions, and connecting.

Tables (all named C{proto_*}, so the store can share a database):

  - C{proto_documents(key, id, etag, body)}: C{key} the case-folded id
    (L{proto.store.base.idKey}, compared byte-wise: C{COLLATE "C"}),
    C{id} the id as first written, C{body} the JSON text exactly as PUT,
    as C{bytea} (C{jsonb} would reorder keys, drop duplicates and refuse
    C{\\u0000}: C{shared/TWISTED_NOTES.md}, section 9);
  - C{proto_counters(name, value)}: C{'etag'}, the last etag handed out,
    locked with C{SELECT ... FOR UPDATE} by every write transaction (a
    sequence would not do: its values are not in commit order);
    C{'log_floor'}: the change log holds every change above it;
    C{'grants'}: the revision of C{proto_grants};
  - C{proto_changes(etag, key, id, type)}: the change log, the truth that
    WATCH and every server's publisher read;
  - C{proto_grants}: approvals and enrolments (L{proto.store.grants});
  - C{proto_schema(version)}: one row, the version below.

Versions
========
L{STEPS} lists the upgrade steps; step I{n} makes version I{n}. The
server runs the missing ones at start in one transaction under an
advisory lock, so several servers starting at once against one database
upgrade it once. A database whose version is above C{len(STEPS)} was
written by a newer release and is refused. Never edit a step that has
shipped; append a new one.
"""

from __future__ import annotations

from typing import Any, Callable

from proto.store.base import StoreError

#: C{pg_advisory_xact_lock} key of schema upgrades ("proto" in ASCII).
_UPGRADE_LOCK = 0x70726F746F

#: The channel of the doorbell: one NOTIFY per committed write batch.
CHANNEL = "proto_changes"

#: Connection defaults (the user's conninfo wins): fail fast when the
#: server is unreachable, and notice a dead TCP peer within seconds.
CONNECT_DEFAULTS = {
    "connect_timeout": "4",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "2",
    "tcp_user_timeout": "8000",
    "application_name": "proto",
}

#: Per-session settings: a statement (a lock wait too) never runs past
#: them, so a request gets its ERR in under 10 s even without Timeout.
SESSION_SETTINGS = (
    "SET lock_timeout = '8s'",
    "SET statement_timeout = '9s'",
)

#: The values of C{proto_changes.type} (as in the SQLite store).
CHANGE_PUT = 1
CHANGE_DELETE = 2


def _step1(cursor: Any) -> None:
    """Documents, counters and the change log."""
    cursor.execute(
        "CREATE TABLE proto_documents ("
        ' key text COLLATE "C" PRIMARY KEY, id text NOT NULL,'
        " etag bigint NOT NULL, body bytea NOT NULL)"
    )
    cursor.execute(
        "CREATE TABLE proto_counters (name text PRIMARY KEY, value bigint NOT NULL)"
    )
    cursor.execute(
        "INSERT INTO proto_counters (name, value) VALUES ('etag', 0), ('log_floor', 0)"
    )
    cursor.execute(
        "CREATE TABLE proto_changes ("
        ' etag bigint PRIMARY KEY, key text COLLATE "C" NOT NULL,'
        " id text NOT NULL, type smallint NOT NULL)"
    )


def _step2(cursor: Any) -> None:
    """Approvals and enrolments (the columns of L{proto.store.grants})."""
    cursor.execute(
        "CREATE TABLE proto_grants ("
        " thumbprint text PRIMARY KEY, other text, name text NOT NULL,"
        " level text NOT NULL, prefixes text, origin text NOT NULL,"
        " enrolled_by text, created double precision NOT NULL)"
    )
    cursor.execute("CREATE INDEX proto_grants_other ON proto_grants (other)")
    cursor.execute("CREATE INDEX proto_grants_enrolled_by ON proto_grants (enrolled_by)")
    cursor.execute("INSERT INTO proto_counters (name, value) VALUES ('grants', 0)")


#: The upgrade steps, in order: C{STEPS[n - 1]} makes version I{n}.
STEPS: list[Callable[[Any], None]] = [_step1, _step2]

#: The version this release writes.
VERSION = len(STEPS)


def upgrade(connection: Any, where: str) -> int:
    """
    Bring the database open on C{connection} (autocommit) to L{VERSION}.

    @return: the version it had before.
    @raise StoreError: if it is from a newer release.
    """
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS proto_schema (version integer NOT NULL)")
        row = connection.execute("SELECT version FROM proto_schema").fetchone()
        before = 0 if row is None else row[0]
        if before > VERSION:
            raise StoreError(
                f"{where} has schema version {before}, written by a newer release; "
                f"this one knows versions up to {VERSION}"
            )
        if before < VERSION:
            with connection.cursor() as cursor:
                for number in range(before + 1, VERSION + 1):
                    STEPS[number - 1](cursor)
            if row is None:
                connection.execute("INSERT INTO proto_schema (version) VALUES (%s)", (VERSION,))
            else:
                connection.execute("UPDATE proto_schema SET version = %s", (VERSION,))
    return before


def parseSpec(spec: str) -> str:
    """
    The libpq conninfo of a C{--store} value: C{postgresql:<conninfo>},
    where the conninfo is a URI (C{postgresql://proto@db/proto}; the
    C{postgresql:} may be left out before it) or a keyword string
    (C{host=db dbname=proto}), or empty (libpq's C{PG*} variables).

    @raise ValueError: if the conninfo cannot be parsed.
    """
    from psycopg.conninfo import conninfo_to_dict

    kind, _, rest = spec.partition(":")
    conninfo = spec if rest.startswith("//") else rest
    try:
        conninfo_to_dict(conninfo)
    except Exception as e:
        raise ValueError(f"--store {kind}: cannot parse the connection string: {e}") from None
    return conninfo


def displayed(conninfo: str) -> str:
    """C{conninfo} fit for logs: without its password."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        return "<unparseable connection string>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params) or "(libpq defaults)"


def hasPassword(conninfo: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    return "password" in conninfo_to_dict(conninfo)


def connect(conninfo: str, role: str = "") -> Any:
    """
    A new autocommit connection with L{CONNECT_DEFAULTS} (unless the
    conninfo sets them) and L{SESSION_SETTINGS}. Transactions are explicit.

    @param role: what the connection is for (C{writer}, C{reader},
        C{listener}), shown in C{pg_stat_activity.application_name} as
        C{proto-ROLE} unless the conninfo names the application.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    given = conninfo_to_dict(conninfo)
    defaults = {name: value for name, value in CONNECT_DEFAULTS.items() if name not in given}
    if role and "application_name" in defaults:
        defaults["application_name"] = f"proto-{role}"
    host = str(given.get("host", ""))
    if not host or host.startswith("/"):  # a Unix socket: no TCP settings
        for name in ("keepalives", "keepalives_idle", "keepalives_interval",
                     "keepalives_count", "tcp_user_timeout"):
            defaults.pop(name, None)
    connection = psycopg.connect(make_conninfo(conninfo, **defaults), autocommit=True)
    try:
        for setting in SESSION_SETTINGS:
            connection.execute(setting)
    except BaseException:
        connection.close()
        raise
    return connection
