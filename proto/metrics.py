"""
Metrics and health over HTTP: C{--metrics ENDPOINT} serves C{/metrics}
(Prometheus text format, by prometheus-client's Twisted C{MetricsResource})
and C{/healthz} (200 while serving; 503 while draining or when the store
fails a read).

The request path never touches prometheus-client: it bumps the plain
counters of L{proto.stats.ServerStats}. L{PrometheusMirror} copies them
into prometheus-client metrics (the increase since the last copy) when
C{/metrics} is scraped, on the reactor thread; the text itself is then
rendered on a pool thread by prometheus-client. So a scrape costs the
reactor one copy of a few dozen numbers, and a request costs nothing more.

With several worker processes (C{PROMETHEUS_MULTIPROC_DIR} set by the
supervisor before the workers start), prometheus-client's multiprocess
mode stores each worker's values in memory-mapped files; each worker
copies its counters there every second (L{MIRROR_SECONDS}), and whoever
serves C{/metrics} (the supervisor) reads them all with
C{MultiProcessCollector}. Values of a worker are then up to a second old.

The metric names are a contract for dashboards (C{misc/grafana-dashboard.json},
checked by a test): L{METRIC_NAMES}.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.twisted import MetricsResource
from twisted.application import internet
from twisted.internet import defer, endpoints, threads
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread
from twisted.web import resource, server

from proto import stats as S

log = Logger()

#: How often a worker process copies its counters into the shared files.
MIRROR_SECONDS = 1.0

#: Seconds /healthz waits for the store's answer before calling it failing.
HEALTH_STORE_TIMEOUT = 2.0

_RESOLUTION = 1e-9


def multiprocessDirectory() -> str | None:
    """The prometheus-client multiprocess directory, if this is a worker."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PrometheusMirror:
    """
    prometheus-client metrics that follow a L{proto.stats.ServerStats}
    (and the factory's live connections), updated by L{sync}.
    """

    def __init__(self, factory, registry: CollectorRegistry | None = None) -> None:
        self.factory = factory
        self.stats: S.ServerStats = factory.stats
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._last: dict[Any, float] = {}
        self.connectionsOpen = Gauge(
            "proto_connections_open", "TCP connections open now (handshaking or admitted).",
            registry=r, multiprocess_mode="livesum")
        self.connectionsAdmitted = Gauge(
            "proto_connections_admitted", "Admitted connections open now.",
            registry=r, multiprocess_mode="livesum")
        self.accepted = Counter(
            "proto_connections_accepted", "TCP connections accepted.", registry=r)
        self.admittedTotal = Counter(
            "proto_admissions", "Connections admitted.", registry=r)
        self.refused = Counter(
            "proto_connections_refused", "Connections refused, by reason.", ["reason"], registry=r)
        self.handshake = Histogram(
            "proto_tls_handshake_seconds",
            "From TCP accept to the end of the TLS handshake.",
            registry=r, buckets=S.HANDSHAKE_BOUNDS)
        self.requests = Counter(
            "proto_requests", "Requests answered, by command and outcome (ok, err).",
            ["command", "outcome"], registry=r)
        self.latency = Histogram(
            "proto_request_seconds", "From a request's arrival to its reply, by command.",
            ["command"], registry=r, buckets=S.LATENCY_BOUNDS)
        self.bytesIn = Counter(
            "proto_received_bytes", "Application bytes received (after TLS).", registry=r)
        self.bytesOut = Counter(
            "proto_sent_bytes", "Application bytes sent (before TLS).", registry=r)
        self.inflight = Gauge(
            "proto_requests_in_flight", "Requests being worked on now.",
            registry=r, multiprocess_mode="livesum")
        self.watches = Gauge(
            "proto_watches", "Active WATCHes.", registry=r, multiprocess_mode="livesum")
        self.pushes = Counter("proto_pushes", "PUSH frames sent.", registry=r)
        self.dropped = Counter(
            "proto_watches_dropped", "WATCHes dropped because their client did not read.",
            registry=r)
        self.commit = Histogram(
            "proto_store_commit_seconds", "Store write transactions, commit included.",
            registry=r, buckets=S.COMMIT_BOUNDS)
        self.batch = Histogram(
            "proto_store_commit_operations", "Operations per store write transaction.",
            registry=r, buckets=S.BATCH_BOUNDS)
        self.expiry = Gauge(
            "proto_client_certificate_expiry_seconds",
            "Seconds until an allowed client certificate expires (negative: expired); "
            "for the certificates the server has seen.",
            ["name", "sha1"], registry=r, multiprocess_mode="livemin")
        self.draining = Gauge(
            "proto_draining", "1 while the server drains before stopping.",
            registry=r, multiprocess_mode="livemax")
        self.storeDocuments = Gauge(
            "proto_store_documents", "Documents in the store (read when scraped).",
            registry=r, multiprocess_mode="livemax")
        self.storeEtag = Gauge(
            "proto_store_etag", "The store's last etag: changes committed since it was created.",
            registry=r, multiprocess_mode="livemax")
        self.changeLog = Gauge(
            "proto_store_changelog_entries",
            "Changes retained in the change log (what WATCH with Since can replay).",
            registry=r, multiprocess_mode="livemax")
        self.storeNotOpen = Gauge(
            "proto_store_not_open",
            "1 while the store is not open: its start failed, or (PostgreSQL) it is still "
            "trying to open it.",
            registry=r, multiprocess_mode="livemax")
        self.up = Gauge(
            "proto_start_time_seconds", "When this server process started (Unix time).",
            registry=r, multiprocess_mode="livemin")
        self.up.set(self.stats.startedAt)

    # -- copying --------------------------------------------------------

    def _inc(self, key: Any, counter: Any, value: float) -> None:
        last = self._last.get(key, 0)
        if value > last + _RESOLUTION:
            counter.inc(value - last)
            self._last[key] = value

    def _histogram(self, key: Any, metric: Any, source: S.Histogram) -> None:
        """
        Add what C{source} observed since the last copy to C{metric}.
        prometheus-client has no public call for "n observations in bucket
        i", so this adds to its per-bucket values (C{_buckets}, C{_sum}),
        which its own C{observe} does one at a time (checked by a test).
        """
        for index, count in enumerate(source.counts):
            self._inc((key, index), metric._buckets[index], count)
        self._inc((key, "sum"), metric._sum, source.sum)

    def sync(self) -> None:
        """Copy the counters into the prometheus-client metrics (reactor thread)."""
        st, factory = self.stats, self.factory
        self.connectionsOpen.set(len(factory.connections))
        self.connectionsAdmitted.set(len(factory.admitted))
        self._inc("accepted", self.accepted, st.accepted)
        self._inc("admitted", self.admittedTotal, st.admittedTotal)
        for reason, count in list(st.refused.items()):
            self._inc(("refused", reason), self.refused.labels(reason), count)
        self._histogram("handshake", self.handshake, st.handshake)
        for name, counts in list(st.commands.items()):
            if not (counts.ok or counts.err):
                continue
            self._inc(("ok", name), self.requests.labels(name, "ok"), counts.ok)
            self._inc(("err", name), self.requests.labels(name, "err"), counts.err)
            self._histogram(("latency", name), self.latency.labels(name), counts.latency)
        self._inc("in", self.bytesIn, st.bytesIn)
        self._inc("out", self.bytesOut, st.bytesOut)
        self.inflight.set(sum(len(p._inflight) for p in list(factory.connections)))
        from proto.commands.watch import watchCount

        self.watches.set(sum(watchCount(p) for p in list(factory.admitted)))
        self._inc("pushes", self.pushes, st.pushes)
        self._inc("dropped", self.dropped, st.watchesDropped)
        self._histogram("commit", self.commit, st.commit)
        self._histogram("batch", self.batch, st.batch)
        self.draining.set(1 if getattr(factory, "drainingReason", None) is not None else 0)
        notOpen = getattr(getattr(factory, "store", None), "notOpenReason", None)
        self.storeNotOpen.set(0 if notOpen is None else 1)
        self._syncExpiry()

    def refreshStore(self, reactor) -> defer.Deferred:
        """
        Read the store's size (documents, etag, change log) into the gauges;
        fires when done (never fails: a failing store shows in /healthz).
        """
        summary = getattr(self.factory.store, "summary", None)
        if summary is None:
            return defer.succeed(None)
        d = defer.maybeDeferred(summary)
        d.addTimeout(HEALTH_STORE_TIMEOUT, reactor)

        def got(result) -> None:
            self.storeDocuments.set(result.get("Documents", 0))
            self.storeEtag.set(result.get("Etag", 0))
            if "Changes" in result:
                self.changeLog.set(result["Changes"])

        return d.addCallbacks(got, lambda failure: None)

    def syncAll(self, reactor) -> defer.Deferred:
        """L{sync}, then L{refreshStore}: what a scrape runs on the reactor."""
        self.sync()
        return self.refreshStore(reactor)

    def _syncExpiry(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        names = self.factory.allowList().names
        known = self.stats.certificates
        self.expiry.clear()
        for digest, name in names.items():
            who = known.get(digest)
            if who is None:
                continue
            label = name or who.commonName
            self.expiry.labels(label, who.sha1).set((who.notAfter - now).total_seconds())


class _SyncFirst:
    """
    A collector registered first in the scrape registry: when the scrape
    thread collects, it has the reactor copy the counters first.
    """

    def __init__(self, mirror: PrometheusMirror, reactor) -> None:
        self._mirror = mirror
        self._reactor = reactor

    def describe(self):
        return []

    def collect(self):
        if isInIOThread():
            self._mirror.sync()  # (tests render on the reactor thread)
        else:
            threads.blockingCallFromThread(self._reactor, self._mirror.syncAll, self._reactor)
        return []


def scrapeRegistry(mirror: PrometheusMirror | None, reactor,
                   multiprocessDir: str | None = None) -> CollectorRegistry:
    """
    The registry C{/metrics} renders: this process's metrics, or with
    several processes every process's (prometheus-client multiprocess mode).
    """
    directory = multiprocessDir or multiprocessDirectory()
    if directory is None:
        assert mirror is not None
        registry = CollectorRegistry()
        registry.register(_SyncFirst(mirror, reactor))
        registry.register(_Delegate(mirror.registry))
        return registry
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry


class _Delegate:
    """Collect another registry's metrics (after L{_SyncFirst} ran)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def describe(self):
        return []

    def collect(self):
        return self._registry.collect()


class HealthResource(resource.Resource):
    """
    C{/healthz}: C{200 serving}; C{503 draining} from the moment a drain
    starts; C{503 store failing: ...} when a small read of the store does
    not succeed within L{HEALTH_STORE_TIMEOUT} seconds (also while a
    PostgreSQL store is still trying to open: L{proto.store.reopen}), or,
    in a C{--workers} supervisor, while a worker reports a store not open
    (C{storeTrouble}). A failing store is logged when it starts failing or
    its reason changes, and when it answers again: not at every probe.
    """

    isLeaf = True

    def __init__(self, factory, store, reactor, draining: Callable[[], bool] | None = None,
                 storeTrouble: Callable[[], str | None] | None = None) -> None:
        super().__init__()
        self.factory = factory
        self.store = store
        self.reactor = reactor
        self._draining = draining or (lambda: getattr(factory, "drainingReason", None) is not None)
        self._storeTrouble = storeTrouble
        #: The store's failure last logged, C{None} while it answers.
        self._failing: str | None = None

    def _storeState(self, why: str | None) -> None:
        """Log a change of the store's health (see the class docstring)."""
        if why is not None and why != self._failing:
            log.warn("Health check: the store is failing: {error}", error=why)
        elif why is None and self._failing is not None:
            log.info("Health check: the store answers again")
        self._failing = why

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self._draining():
            request.setResponseCode(503)
            return b"draining\n"
        if self.store is None:
            trouble = self._storeTrouble() if self._storeTrouble is not None else None
            self._storeState(trouble)
            if trouble is not None:
                request.setResponseCode(503)
                return f"store failing: {trouble}\n".encode("utf-8", "replace")
            return b"serving\n"
        probe = defer.maybeDeferred(self.store.get, ["healthz"])
        probe.addTimeout(HEALTH_STORE_TIMEOUT, self.reactor)

        def answer(result):
            if request.finished or request._disconnected:
                return
            if self._draining():
                request.setResponseCode(503)
                request.write(b"draining\n")
            elif isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
                request.setResponseCode(503)
                why = result.getErrorMessage() if hasattr(result, "getErrorMessage") else str(result)
                self._storeState(why)
                request.write(f"store failing: {why}\n".encode("utf-8", "replace"))
            else:
                self._storeState(None)
                request.write(b"serving\n")
            request.finish()

        probe.addBoth(answer)
        return server.NOT_DONE_YET


class QuietSite(server.Site):
    """A Site without an access-log line per scrape."""

    def log(self, request) -> None:
        pass


def metricsSite(mirror: PrometheusMirror | None, factory, store, reactor,
                draining: Callable[[], bool] | None = None,
                multiprocessDir: str | None = None,
                storeTrouble: Callable[[], str | None] | None = None) -> server.Site:
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(scrapeRegistry(mirror, reactor, multiprocessDir)))
    root.putChild(b"healthz", HealthResource(factory, store, reactor, draining, storeTrouble))
    return QuietSite(root)


def metricsService(reactor, description: str, factory=None, store=None,
                   draining: Callable[[], bool] | None = None,
                   multiprocessDir: str | None = None,
                   storeTrouble: Callable[[], str | None] | None = None):
    """
    The service that serves C{/metrics} and C{/healthz} on the Twisted
    endpoint C{description} (for example C{tcp:9464:interface=127.0.0.1}).

    @param factory: the server's L{proto.server.GNPServerFactory}; C{None}
        in a supervisor that serves the workers' metrics (multiprocess mode).
    """
    mirror = None
    if factory is not None:
        mirror = getattr(factory, "metricsMirror", None) or PrometheusMirror(factory)
        factory.metricsMirror = mirror
    site = metricsSite(mirror, factory, store, reactor, draining, multiprocessDir, storeTrouble)
    listener = internet.StreamServerEndpointService(
        endpoints.serverFromString(reactor, description), site
    )
    listener._raiseSynchronously = True
    return listener


def supervisorHealth(supervisor, runDir: str) -> Callable[[], bool]:
    """
    C{/healthz} of a C{--workers} supervisor: "draining" (503) once it is
    stopping, while any worker drains, or while no worker reports in.
    """
    from proto.stats import readSnapshots

    def draining() -> bool:
        if not supervisor.running:
            return True
        snapshots = readSnapshots(runDir)
        return not snapshots or any(snap.get("Draining") for snap in snapshots)

    return draining


def supervisorStoreTrouble(runDir: str) -> Callable[[], str | None]:
    """
    C{/healthz} of a C{--workers} supervisor: why a worker's store is not
    open (its snapshot's C{StoreNotOpen}: a PostgreSQL store still trying
    to open), or C{None} when every worker's is.
    """
    from proto.stats import readSnapshots

    def trouble() -> str | None:
        for snap in readSnapshots(runDir):
            if snap.get("StoreNotOpen"):
                return str(snap["StoreNotOpen"])
        return None

    return trouble


#: Every metric family the server exports (dashboards may use these,
#: with the usual _bucket/_sum/_count/_total suffixes).
METRIC_NAMES = (
    "proto_connections_open", "proto_connections_admitted", "proto_connections_accepted",
    "proto_admissions", "proto_connections_refused",
    "proto_tls_handshake_seconds", "proto_requests", "proto_request_seconds",
    "proto_received_bytes", "proto_sent_bytes", "proto_requests_in_flight", "proto_watches",
    "proto_pushes", "proto_watches_dropped", "proto_store_commit_seconds",
    "proto_store_commit_operations", "proto_client_certificate_expiry_seconds",
    "proto_draining", "proto_start_time_seconds", "proto_store_documents", "proto_store_etag",
    "proto_store_changelog_entries", "proto_store_not_open",
)
