"""
Admin commands for operators (PROTOCOL.md section 9): C{STATS}, C{CLIENTS}
and C{BACKUP}.

They see the whole server: with several worker processes each process
writes its snapshot to C{<data-dir>/run/} every second and these commands
add up every live process's (L{proto.stats}); the answering process uses
its own, fresher, numbers.

Permission: these are admin commands (C{can=admin} on the allow-list;
others get C{ERR Forbidden}, checked at dispatch, see L{proto.permissions}).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from proto import stats as S
from proto.commands.base import CommandError, CommandRegistry, ICommandContext, requireArgs
from proto.permissions import ADMIN
from proto.store.base import Document
from proto.wire.heads import Request

registry = CommandRegistry()

#: The commands of this module, for permission declarations.
ADMIN_COMMANDS = ("STATS", "CLIENTS", "BACKUP", "EXPORT")

#: Documents per EXPORT page, and the body bytes after which a page ends.
EXPORT_PAGE = 500
EXPORT_PAGE_BYTES = 4 * 1024 * 1024


def serverVersion() -> str:
    try:
        from importlib.metadata import version

        return version("proto")
    except Exception:
        return "unknown"


def _factory(ctx: ICommandContext) -> Any:
    """
    The server's factory (its counters, run and backup directories): admin
    commands see the whole server, which L{ICommandContext} does not
    promise; a context without one (tests) has none.
    """
    return getattr(ctx, "factory", None)


def _snapshots(factory: Any) -> list[dict[str, Any]]:
    own = S.processSnapshot(factory)
    runDir = getattr(factory, "runDir", None)
    if not runDir:
        return [own]
    return [own, *S.readSnapshots(runDir, skipPid=own["Pid"])]


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


@registry.command("STATS", level=ADMIN)
def stats(ctx: ICommandContext, request: Request) -> defer.Deferred[bytes]:
    """
    C{STATS}: JSON with C{Version}, C{Uptime}, C{Connections}, C{Requests},
    C{Errors}, C{Watches} and C{Store} for the whole server. While the
    store is not open, C{Store} is C{{"Documents": null, "Etag": null,
    "NotOpen": reason}} (the other fields as always).
    """
    requireArgs(request, 0, 0, "STATS")
    factory = _factory(ctx)
    merged = S.mergeStats(_snapshots(factory))
    reply = {
        "Version": serverVersion(),
        "Uptime": round(max(0.0, time.time() - merged.pop("Started")), 3),
        **merged,
        "Store": {"Documents": None, "Etag": None},
    }
    store = ctx.store
    # Optional store abilities (proto.store.base: summary, backup, scan).
    summary: Callable[[], defer.Deferred[dict[str, int]]] | None = getattr(
        store, "summary", None
    )
    notOpen: str | None = getattr(store, "notOpenReason", None)
    if notOpen is not None:
        # The rest of STATS still helps an operator while the store is not
        # open (a PostgreSQL store still trying: proto.store.reopen).
        reply["Store"] = {"Documents": None, "Etag": None, "NotOpen": notOpen}
        return defer.succeed(_json(reply))
    if summary is None:
        return defer.succeed(_json(reply))

    def withStore(result: dict[str, int]) -> bytes:
        reply["Store"] = {"Documents": result["Documents"], "Etag": result["Etag"]}
        return _json(reply)

    def storeFailed(failure: Failure) -> bytes:
        raise CommandError(f"STATS: the store could not be read: {failure.getErrorMessage()}")

    return summary().addCallbacks(withStore, storeFailed)


@registry.command("CLIENTS", level=ADMIN)
def clients(ctx: ICommandContext, request: Request) -> bytes:
    """
    C{CLIENTS}: JSON list, one object per admitted connection of the whole
    server: C{Peer}, C{Sha1}, C{Name}, C{CN}, C{Since}, C{Requests},
    C{InFlight}, C{Watches}.
    """
    requireArgs(request, 0, 0, "CLIENTS")
    out = []
    for snap in _snapshots(_factory(ctx)):
        out.extend(snap["Clients"])
    out.sort(key=lambda entry: (entry["Since"], entry["Peer"]))
    return _json(out)


@registry.command("BACKUP", level=ADMIN)
def backup(ctx: ICommandContext, request: Request) -> defer.Deferred[bytes]:
    """
    C{BACKUP}: a consistent copy of the SQLite store in
    C{<data-dir>/backups/}, made online with SQLite's backup API; replies
    JSON C{{"File", "Path", "Size"}}. Stores without it (PostgreSQL) say
    to use their own tool.
    """
    requireArgs(request, 0, 0, "BACKUP")
    store = ctx.store
    directory = getattr(_factory(ctx), "backupDir", None)
    make: Callable[[str], defer.Deferred[str]] | None = getattr(store, "backup", None)
    if make is None or directory is None:
        advice = getattr(store, "backupAdvice", None)
        raise CommandError(
            advice or "BACKUP: this server's store cannot be backed up from here"
        )

    def done(path: str) -> bytes:
        return _json({"File": os.path.basename(path), "Path": path, "Size": os.path.getsize(path)})

    def failed(failure: Failure) -> bytes:
        raise CommandError(f"BACKUP failed: {failure.getErrorMessage()}")

    return make(directory).addCallbacks(done, failed)


@registry.command("EXPORT", level=ADMIN)
def export(ctx: ICommandContext, request: Request) -> defer.Deferred[bytes]:
    """
    C{EXPORT [prefix]} with optional header C{After: id}: one page of the
    documents whose id starts with C{prefix}, in id order, after C{id}:
    JSON C{{"Documents": [{"Id", "Etag", "Document"}, ...], "Next": id or
    null}}; ask again with C{After: <Next>} until C{Next} is null. Each
    page is one consistent read; documents written between pages may or
    may not be in a later page (C{proto-cli export} uses it).
    """
    requireArgs(request, 0, 1, "EXPORT [prefix]")
    prefix = request.args[0] if request.args else ""
    after = request.headers.get("after") if request.headers else None
    scan: Callable[[str, str | None, int], defer.Deferred[list[Document]]] | None = getattr(
        ctx.store, "scan", None
    )
    if scan is None:
        raise CommandError("EXPORT: this server's store cannot list its documents")

    def page(documents: list[Document]) -> bytes:
        parts: list[bytes] = []
        size = 0
        last: str | None = None
        for doc in documents:
            parts.append(
                b'{"Id": ' + _json(doc.id) + b', "Etag": ' + str(doc.etag).encode()
                + b', "Document": ' + doc.body + b"}"
            )
            size += len(doc.body)
            last = doc.id
            if size >= EXPORT_PAGE_BYTES:
                break
        more = len(parts) < len(documents) or len(documents) >= EXPORT_PAGE
        nextId = _json(last) if (more and last is not None) else b"null"
        return b'{"Documents": [' + b", ".join(parts) + b'], "Next": ' + nextId + b"}"

    def failed(failure: Failure) -> bytes:
        raise CommandError(f"EXPORT failed: {failure.getErrorMessage()}")

    return scan(prefix, after, EXPORT_PAGE).addCallbacks(page, failed)
