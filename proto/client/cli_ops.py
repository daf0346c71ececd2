"""
C{proto-cli} for operators (issue 10):

  - C{proto-cli STATS}: the server's statistics, readably (C{--raw}: the
    JSON as sent);
  - C{proto-cli top [--interval S]}: a live view refreshed every second
    until Ctrl-C: connections, requests per second by command, errors,
    watches, the store's etag;
  - C{proto-cli export [PREFIX] > dump.jsonl}: every document (whose id
    starts with PREFIX) as one JSON object per line,
    C{{"Id": ..., "Etag": ..., "Document": {...}}}, read in pages with the
    admin command C{EXPORT};
  - C{proto-cli import [--skip-existing] [--batch N] < dump.jsonl}: PUT
    them back, N requests in flight at a time; C{--skip-existing} sends
    C{If-Match: 0}, so documents already there are left alone (counted as
    skipped).

Export and import show a progress bar (tqdm) on standard error when it is
a terminal. L{proto.client.cli} calls L{run} before anything else; it
returns C{None} when the command line is not for it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

if TYPE_CHECKING:
    import argparse
    from concurrent.futures import Future

    from proto.client.blocking import BlockingClient
    from proto.client.messages import Reply

    #: proto-cli's: a client connected as the options say.
    OpenClient = Callable[[argparse.Namespace], BlockingClient]
    #: proto-cli's: say the message on standard error; the exit status.
    Fail = Callable[[str, int], int]

#: proto-cli words handled here (lower case, so that the GNP commands,
#: upper case by convention, are still sent as they are).
SUBCOMMANDS = ("top", "export", "import")

EPILOG = """\
operations (admin):
  proto-cli STATS                         server statistics (--raw: JSON)
  proto-cli CLIENTS                       admitted connections (JSON)
  proto-cli top [--interval 1]            live view until Ctrl-C
  proto-cli BACKUP                        consistent copy of the SQLite store
  proto-cli export [PREFIX] > dump.jsonl  one JSON object per document
  proto-cli import [--skip-existing] [--batch 100] < dump.jsonl
"""


def addArguments(parser: Any) -> None:
    group = parser.add_argument_group("operations (top, export, import)")
    group.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                       help="top: seconds between refreshes (default %(default)s)")
    group.add_argument("--iterations", type=int, metavar="N",
                       help="top: stop after N refreshes (default: until Ctrl-C)")
    group.add_argument("--skip-existing", action="store_true",
                       help="import: send If-Match: 0, leave documents that exist alone")
    group.add_argument("--batch", type=int, default=100, metavar="N",
                       help="import: requests in flight at a time (default %(default)s)")


def run(options: argparse.Namespace, openClient: OpenClient, fail: Fail,
        statuses: dict[str, int]) -> int | None:
    request = options.request or []
    if not request:
        return None
    word = request[0]
    if word == "top":
        return top(options, openClient, fail, statuses)
    if word == "export":
        return export(options, openClient, fail, statuses)
    if word == "import":
        return importDocuments(options, openClient, fail, statuses)
    if word.upper() == "STATS" and len(request) == 1 and not getattr(options, "raw", False):
        from proto.client.errors import ServerError

        client = openClient(options)
        try:
            stats = json.loads(client.request("STATS").body)
        except ServerError as e:
            return fail(f"ERR {e.reason}", statuses["err"])
        finally:
            client.close()
        sys.stdout.write(formatStats(stats))
        sys.stdout.flush()
        return statuses["ok"]
    return None


# -- STATS -----------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {seconds}s"
    return f"{minutes}m {seconds}s"


def _storeLine(store: dict[str, Any]) -> str:
    """STATS' C{Store} in words: its size, or why it is not open."""
    if store.get("NotOpen"):
        return f"not open: {store['NotOpen']}"
    return f"{store.get('Documents')} documents, etag {store.get('Etag')}"


def formatStats(stats: dict[str, Any]) -> str:
    """STATS as lines a person reads (PROTOCOL.md section 9 fields)."""
    conns = stats.get("Connections", {})
    store = stats.get("Store", {})
    lines = [
        f"version      {stats.get('Version')}",
        f"uptime       {_duration(stats.get('Uptime', 0))}",
        f"connections  {conns.get('Open', 0)} open, {conns.get('Admitted', 0)} admitted; "
        f"{conns.get('Total', 0)} accepted and {conns.get('Refused', 0)} refused since start",
        f"errors       {stats.get('Errors', 0)} ERR replies",
        f"watches      {stats.get('Watches', 0)}",
        f"store        {_storeLine(store)}",
        "requests",
    ]
    requests = stats.get("Requests", {})
    for name, count in sorted(requests.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {name:<12} {count}")
    if not requests:
        lines.append("  (none)")
    return "\n".join(lines) + "\n"


# -- top ---------------------------------------------------------------------------


def formatTop(stats: dict[str, Any], previous: dict[str, Any] | None, seconds: float) -> str:
    """One screen of C{top}: rates from the difference with the previous STATS."""
    conns = stats.get("Connections", {})
    store = stats.get("Store", {})
    requests = stats.get("Requests", {})
    before = (previous or {}).get("Requests", {})
    rates = {
        name: (count - before.get(name, 0)) / seconds if previous and seconds > 0 else 0.0
        for name, count in requests.items()
    }
    errorRate = (
        (stats.get("Errors", 0) - previous.get("Errors", 0)) / seconds
        if previous and seconds > 0 else 0.0
    )
    total = sum(rates.values())
    lines = [
        f"proto top - {time.strftime('%H:%M:%S')}  up {_duration(stats.get('Uptime', 0))}"
        f"  version {stats.get('Version')}",
        f"connections: {conns.get('Admitted', 0)} admitted, {conns.get('Open', 0)} open, "
        f"{conns.get('Refused', 0)} refused, {conns.get('Total', 0)} total",
        f"requests/s: {total:.1f}   errors: {stats.get('Errors', 0)} ({errorRate:.1f}/s)"
        f"   watches: {stats.get('Watches', 0)}",
        f"store: {_storeLine(store)}",
        "",
        f"{'COMMAND':<12} {'REQ/S':>10} {'TOTAL':>12}",
    ]
    for name in sorted(requests, key=lambda n: (-rates[n], -requests[n], n)):
        lines.append(f"{name:<12} {rates[name]:>10.1f} {requests[name]:>12}")
    return "\n".join(lines) + "\n"


def top(
    options: argparse.Namespace, openClient: OpenClient, fail: Fail, statuses: dict[str, int]
) -> int:
    """Refresh every C{--interval} seconds until Ctrl-C (or C{--iterations})."""
    from proto.client.errors import ServerError

    client = openClient(options)
    tty = sys.stdout.isatty()
    previous, previousAt, shown = None, 0.0, 0
    try:
        while options.iterations is None or shown < options.iterations:
            started = time.monotonic()
            try:
                stats = json.loads(client.request("STATS").body)
            except ServerError as e:
                return fail(f"ERR {e.reason}", statuses["err"])
            now = time.monotonic()
            screen = formatTop(stats, previous, now - previousAt)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # home, clear screen
            else:
                sys.stdout.write("\n")
            sys.stdout.write(screen)
            sys.stdout.flush()
            previous, previousAt = stats, now
            shown += 1
            if options.iterations is not None and shown >= options.iterations:
                break
            time.sleep(max(0.0, options.interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    finally:
        client.close()
    return statuses["ok"]


# -- export / import ---------------------------------------------------------------


class _Bar(Protocol):
    def update(self, n: int = 1) -> object: ...

    def close(self) -> None: ...


def _progress(total: int | None, unit: str) -> _Bar:
    """A tqdm bar on a terminal's standard error; a do-nothing one otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def export(
    options: argparse.Namespace, openClient: OpenClient, fail: Fail, statuses: dict[str, int]
) -> int:
    from proto.client.errors import ServerError

    args = options.request[1:]
    if len(args) > 1:
        return fail("usage: proto-cli export [PREFIX] > dump.jsonl", statuses["usage"])
    prefix = args[0] if args else None
    client = openClient(options)
    bar = _progress(None, "doc")
    count = 0
    try:
        after = None
        while True:
            headers: list[tuple[str, str]] = [("After", after)] if after is not None else []
            try:
                reply = client.request("EXPORT", *([prefix] if prefix else []), headers=headers)
            except ServerError as e:
                return fail(f"ERR {e.reason}", statuses["err"])
            page = json.loads(reply.body)
            for entry in page["Documents"]:
                sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
            count += len(page["Documents"])
            bar.update(len(page["Documents"]))
            after = page["Next"]
            if after is None:
                break
        sys.stdout.flush()
    finally:
        bar.close()
        client.close()
    sys.stderr.write(f"exported {count} document(s)\n")
    return statuses["ok"]


def readDump(lines: Iterable[str]) -> Iterator[tuple[int, str, bytes]]:
    """(line number, id, body bytes) of each line of an export; ValueError names a bad line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            id, document = entry["Id"], entry["Document"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"line {number}: not an export line (JSON with Id and Document)"
            ) from None
        if not isinstance(id, str) or not isinstance(document, dict):
            raise ValueError(f"line {number}: Id must be a string and Document an object")
        yield number, id, json.dumps(document, ensure_ascii=False).encode("utf-8")


def importDocuments(
    options: argparse.Namespace, openClient: OpenClient, fail: Fail, statuses: dict[str, int]
) -> int:
    from proto.client.errors import ClientError, ServerError

    if len(options.request) > 1:
        return fail("usage: proto-cli import [--skip-existing] < dump.jsonl", statuses["usage"])
    if options.batch < 1:
        return fail("--batch must be at least 1", statuses["usage"])
    headers = [("If-Match", "0")] if options.skip_existing else []
    client = openClient(options)
    bar = _progress(None, "doc")
    written = skipped = failed = 0
    pending: list[tuple[int, str, str, Future[Reply]]] = []

    def settle(limit: int) -> None:
        nonlocal written, skipped, failed
        while len(pending) > limit:
            number, id, sequence, future = pending.pop(0)
            try:
                client.wait(sequence, future)
                written += 1
            except ServerError as e:
                if options.skip_existing and e.reason.startswith("Conflict"):
                    skipped += 1
                else:
                    failed += 1
                    sys.stderr.write(f"line {number}: {id}: ERR {e.reason}\n")
            bar.update(1)

    try:
        for number, id, body in readDump(sys.stdin):
            sequence, future = client.send("PUT", id, headers=headers, body=body)
            pending.append((number, id, sequence, future))
            settle(options.batch)
        settle(0)
    except ValueError as e:
        settle(0)
        return fail(str(e), statuses["usage"])
    except ClientError:
        raise
    finally:
        bar.close()
        client.close()
    sys.stderr.write(
        f"imported {written} document(s), skipped {skipped} existing, {failed} failed\n"
    )
    return statuses["err"] if failed else statuses["ok"]
