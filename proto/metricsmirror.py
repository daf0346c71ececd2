"""
The server's counters as prometheus-client metrics (L{PrometheusMirror}):
the request path bumps the plain counters of L{proto.stats.ServerStats};
the mirror copies the increase since its last copy into prometheus-client
metrics, on the reactor thread, when C{/metrics} is scraped (or every
L{proto.metrics.MIRROR_SECONDS} in a worker process). See
L{proto.metrics} for how a scrape and the worker processes use it.

The metric names are a contract for dashboards (C{misc/grafana-dashboard.json},
checked by a test): L{METRIC_NAMES}.
"""

from __future__ import annotations

import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet import defer

from proto import stats as S
from proto.health import HEALTH_STORE_TIMEOUT

_RESOLUTION = 1e-9


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
