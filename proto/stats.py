"""
What the server counts about itself: the numbers behind C{STATS},
C{CLIENTS} (PROTOCOL.md section 9) and the Prometheus metrics
(L{proto.metrics}).

Why plain integers and not prometheus-client objects on the hot path?
A prometheus-client counter takes a lock (and, in multiprocess mode, packs
into a memory-mapped file) on every increment; a request costs only a few
microseconds here, so the request path increments plain attributes and
list slots instead, and L{proto.metrics} copies them into prometheus-client
metrics when scraped (and every second with several worker processes).

Whole server with several processes: each process writes its own
snapshot (L{ProcessSnapshot}) to C{<data-dir>/run/stats-<pid>.json} every
second (L{SnapshotWriter}); C{STATS} and C{CLIENTS} read all of them
(L{readSnapshots}) and add them up (L{mergeStats}).
"""

from __future__ import annotations

import bisect
import datetime
import glob
import json
import os
import time
from typing import Any, Iterable

from twisted.logger import Logger

#: Upper bounds (seconds) of the request latency histogram buckets; the
#: last bucket is +Inf.
LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Bounds of the TLS handshake duration histogram.
HANDSHAKE_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Bounds of the store commit latency histogram.
COMMIT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Bounds of the store commit batch size histogram (operations per commit).
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

#: The label used for requests naming no registered command, so that
#: clients cannot make the metrics grow without bound.
UNKNOWN_COMMAND = "UNKNOWN"

#: Refusal reasons, as metric label values.
REFUSED_NO_CERTIFICATE = "no_certificate"
REFUSED_NOT_ALLOWED = "not_allowed"
REFUSED_EXPIRED = "expired"
REFUSED_NOT_YET_VALID = "not_yet_valid"
REFUSED_OVERLOAD = "too_many_connections"
REFUSED_HANDSHAKE_TIMEOUT = "handshake_timeout"
REFUSED_OTHER = "other"


def refusalKind(reason: str) -> str:
    """
    The label of a refusal reason sent to a client (see
    L{proto.admission.judge} and the factory's overload reason).
    """
    if reason.startswith("No client certificate"):
        return REFUSED_NO_CERTIFICATE
    if "not on the allow-list" in reason:
        return REFUSED_NOT_ALLOWED
    if " expired " in reason:
        return REFUSED_EXPIRED
    if "not yet valid" in reason:
        return REFUSED_NOT_YET_VALID
    if reason.startswith("Too many connections"):
        return REFUSED_OVERLOAD
    return REFUSED_OTHER


class Histogram:
    """
    A cheap histogram: C{observe} is one C{bisect} and two additions.

    @ivar counts: per bucket (not cumulative), the last one is +Inf.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observeMany(self, value: float, times: int) -> None:
        """C{observe(value)}, C{times} times (the replies of one input chunk)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times

    @property
    def count(self) -> int:
        return sum(self.counts)


class CommandStats:
    """
    The counts of one command.

    @ivar received: requests received (what C{STATS} reports).
    @ivar ok: C{OK} replies sent.
    @ivar err: C{ERR} replies sent.
    @ivar latency: seconds from the request's head (and body) having
        arrived to its reply being written.
    """

    __slots__ = ("received", "ok", "err", "latency")

    def __init__(self) -> None:
        self.received = 0
        self.ok = 0
        self.err = 0
        self.latency = Histogram(LATENCY_BOUNDS)


class ServerStats:
    """
    The counters of one server process. Every attribute is updated inline
    on the reactor thread; nothing here does I/O.
    """

    def __init__(self, clock: Any = None) -> None:
        self.startedAt = time.time() if clock is None else clock.seconds()
        self.accepted = 0  # TCP connections accepted
        self.admittedTotal = 0
        self.refused: dict[str, int] = {}
        self.handshake = Histogram(HANDSHAKE_BOUNDS)
        self.commands: dict[str, CommandStats] = {}
        self.errors = 0  # ERR replies and final ERR frames sent
        self.bytesIn = 0
        self.bytesOut = 0
        self.pushes = 0
        self.watchesDropped = 0
        self.commit = Histogram(COMMIT_BOUNDS)
        self.batch = Histogram(BATCH_BOUNDS)
        #: Client certificates seen admitted (or found on disk), by SHA-1
        #: and by SHA-256: their expiry dates feed a metric.
        self.certificates: dict[str, Any] = {}

    def certificateSeen(self, identity) -> None:
        if identity.sha1 not in self.certificates:
            self.certificates[identity.sha1] = identity
            self.certificates[identity.sha256] = identity

    def command(self, name: str) -> CommandStats:
        """The counts of C{name} (created on first use)."""
        stats = self.commands.get(name)
        if stats is None:
            stats = self.commands[name] = CommandStats()
        return stats

    def refusedFor(self, reason: str) -> None:
        kind = refusalKind(reason)
        self.refused[kind] = self.refused.get(kind, 0) + 1

    def commitObserved(self, size: int, seconds: float) -> None:
        """A store transaction of C{size} operations committed in C{seconds}."""
        self.batch.observe(size)
        self.commit.observe(seconds)


def isoTime(seconds: float) -> str:
    """ISO 8601 UTC, to the second (the format WHOAMI and CLIENTS use)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def clientsOf(factory) -> list[dict[str, Any]]:
    """C{CLIENTS} entries of this process's admitted connections."""
    from proto.commands.watch import watchCount

    names = factory.allowList().names
    out = []
    for proto in list(factory.admitted):
        who = proto.identity
        if who is None:
            continue
        # The name WHOAMI reports: the connection's grant, which also
        # covers APPROVE and ENROLL (the allow-list file has only its own).
        grant = getattr(proto, "grant", None)
        name = grant.name if grant is not None else None
        if not name:
            name = names.get(who.sha1)
            if name is None:
                name = names.get(who.sha256, "")
        out.append({
            "Peer": proto.peer,
            "Sha1": who.sha1,
            "Name": name,
            "CN": who.commonName,
            "Since": isoTime(proto.admittedAt),
            "Requests": proto.requestCount,
            "InFlight": len(proto._inflight),
            "Watches": watchCount(proto),
        })
    out.sort(key=lambda entry: (entry["Since"], entry["Peer"]))
    return out


def processSnapshot(factory) -> dict[str, Any]:
    """
    This process's share of C{STATS} and C{CLIENTS}, as JSON-able data:
    what a worker writes to the run directory.
    """
    stats: ServerStats = factory.stats
    clients = clientsOf(factory)
    return {
        "Pid": os.getpid(),
        "Started": stats.startedAt,
        "Written": time.time(),
        "Draining": getattr(factory, "drainingReason", None) is not None,
        # Why the store is not open yet (a PostgreSQL store still trying to
        # open it: proto.store.reopen), or None: the supervisor's /healthz.
        "StoreNotOpen": getattr(getattr(factory, "store", None), "notOpenReason", None),
        "Connections": {
            "Open": len(factory.connections),
            "Admitted": len(factory.admitted),
            "Refused": sum(stats.refused.values()),
            "Total": stats.accepted,
        },
        "Requests": {name: c.received for name, c in stats.commands.items() if c.received},
        "Errors": stats.errors,
        "Watches": sum(entry["Watches"] for entry in clients),
        "Clients": clients,
        # PENDING of the whole server (section 9): proto.commands.access.
        "Pending": _pendingShare(factory),
    }


def _pendingShare(factory) -> list[dict[str, Any]]:
    from proto.access import PENDING_SHARED

    access = getattr(factory, "access", None)
    return [] if access is None else access.pending.listing()[:PENDING_SHARED]


def mergeStats(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up process snapshots into the whole server's C{STATS} (no Store yet)."""
    merged: dict[str, Any] = {
        "Connections": {"Open": 0, "Admitted": 0, "Refused": 0, "Total": 0},
        "Requests": {},
        "Errors": 0,
        "Watches": 0,
    }
    started = None
    for snap in snapshots:
        for key in merged["Connections"]:
            merged["Connections"][key] += snap["Connections"][key]
        for name, count in snap["Requests"].items():
            merged["Requests"][name] = merged["Requests"].get(name, 0) + count
        merged["Errors"] += snap["Errors"]
        merged["Watches"] += snap["Watches"]
        if started is None or snap["Started"] < started:
            started = snap["Started"]
    merged["Requests"] = dict(sorted(merged["Requests"].items()))
    merged["Started"] = started if started is not None else time.time()
    return merged


# -- several processes: snapshots in the run directory ----------------------

#: Snapshot files older than this are ignored (a worker that hangs).
STALE_SECONDS = 10.0


def runDirectory(dataDir: str) -> str:
    return os.path.join(dataDir, "run")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def readSnapshots(runDir: str, skipPid: int | None = None) -> list[dict[str, Any]]:
    """
    Every live process's snapshot in C{runDir} (except C{skipPid}'s, which
    the caller has fresher in memory). Files of dead processes are skipped.
    """
    out = []
    now = time.time()
    for path in sorted(glob.glob(os.path.join(runDir, "stats-*.json"))):
        try:
            pid = int(os.path.basename(path)[6:-5])
        except ValueError:
            continue
        if pid == skipPid or not _alive(pid):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                snap = json.load(f)
        except (OSError, ValueError):
            continue  # Being replaced, or gone: the next read has it.
        if now - snap.get("Written", 0) > STALE_SECONDS:
            continue
        out.append(snap)
    return out


class SnapshotWriter:
    """
    Writes this process's snapshot to C{<run>/stats-<pid>.json} (atomically:
    a temporary file renamed over it), for the other processes' STATS and
    CLIENTS. Only used with several worker processes.
    """

    log = Logger()

    def __init__(self, factory, runDir: str) -> None:
        self.factory = factory
        self.runDir = runDir
        self.path = os.path.join(runDir, f"stats-{os.getpid()}.json")

    def write(self) -> None:
        try:
            os.makedirs(self.runDir, exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(processSnapshot(self.factory), f)
            os.replace(tmp, self.path)
        except OSError as e:
            self.log.warn("Cannot write {path}: {error}", path=self.path, error=str(e))

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
