"""
Document stores: L{base.IDocumentStore} and its backends.

The server picks one with L{openStore} (its C{--store} option) and runs
it under a L{StoreService}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.store.base import IDocumentStore, StoreClosedError
from proto.store.sqlite import DEFAULT_FILE_NAME, SQLiteStore
from proto.store.sqlite_write import DEFAULT_RETAIN_CHANGES

__all__ = ["IDocumentStore", "SQLiteStore", "StoreService", "openStore"]

_USAGE = (
    "expected 'sqlite', 'sqlite:PATH' (for example 'sqlite:/var/lib/proto/docs.db') "
    "or 'postgresql:CONNINFO' (for example 'postgresql://proto@db/proto')"
)


def openStore(
    spec: str,
    dataDir: str,
    hub: Any = None,
    reactor: Any = None,
    retainChanges: int = DEFAULT_RETAIN_CHANGES,
) -> IDocumentStore:
    """
    Make the store described by C{spec}, not yet started.

    @param spec: C{"sqlite"}: the file L{DEFAULT_FILE_NAME} in C{dataDir};
        C{"sqlite:PATH"}: the file C{PATH} (a relative one is taken
        relative to C{dataDir}); C{"postgresql:CONNINFO"}: a PostgreSQL
        database (L{proto.store.postgres}; needs the C{postgres} extra).
    @param hub: the change hub the store publishes committed changes to
        (the same one the WATCH command subscribes to: C{ctx.hub}).
    @param reactor: for the store's C{callFromThread}; the global one by
        default.
    @param retainChanges: the change log keeps at least this many of the
        newest changes (C{--retain-changes}, at least 1).
    @raise ValueError: if C{spec} names no known store.
    """
    kind, colon, location = spec.partition(":")
    if kind in ("postgresql", "postgres"):
        try:
            # psycopg itself is imported lazily inside these modules: import
            # it here so that a missing extra is this one line, not a
            # traceback from parseSpec.
            import psycopg  # noqa: F401

            from proto.store.postgres import PostgresStore
            from proto.store.postgres_schema import hasPassword, parseSpec
        except ImportError as e:
            raise ValueError(
                f"--store {kind}: needs psycopg 3 ({e}); install the extra from "
                "your checkout: pip install -e '.[postgres]' (or: pip install 'psycopg[binary]')"
            ) from None
        conninfo = parseSpec(spec)
        if hasPassword(conninfo):
            Logger().warn(
                "--store: the connection string holds a password, which other users "
                "can read in the process list; use PGPASSWORD, PGPASSFILE or ~/.pgpass"
            )
        return PostgresStore(conninfo, hub=hub, reactor=reactor, retainChanges=retainChanges)
    if kind != "sqlite":
        raise ValueError(f"Unknown store {spec!r}: {_USAGE}")
    if not colon:
        location = DEFAULT_FILE_NAME
    elif not location:
        raise ValueError(f"Store {spec!r} has an empty path: {_USAGE}")
    return SQLiteStore(
        os.path.join(dataDir, location), hub=hub, reactor=reactor, retainChanges=retainChanges
    )


class StoreService(Service):
    """
    Starts a store with the application and closes it (committing the
    writes still queued) when the application stops.

    Put it in the service tree I{before} the listeners: a MultiService
    stops its children in reverse order, so the listeners stop taking
    requests first and the store closes last.
    """

    _log = Logger()

    def __init__(self, store: IDocumentStore) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        # Requests that come before the store is open wait for it (or, once
        # an attempt to open failed, fail with the reason). A PostgreSQL
        # store keeps trying while its database cannot be reached
        # (proto.store.reopen logs that); SQLite tries once: a file that
        # cannot be opened is a configuration error, which a restart after
        # the fix answers. Once it is open, the log says so: from then on a
        # database that goes away is an outage the store recovers from.
        self.store.start().addCallbacks(
            lambda _: self._log.info("Document store {store!r} is open", store=self.store),
            self._startFailed,
        )

    def _startFailed(self, failure: Failure) -> None:
        if not self.running and failure.check(StoreClosedError):
            return  # Stopped while it was still trying to open: nothing failed.
        self._log.failure(
            "Cannot open the document store {store!r}; document commands "
            "will fail until the server is restarted",
            failure,
            store=self.store,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.store.close()
