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

Where the parts are: the mirror, L{proto.metricsmirror}; C{/healthz},
L{proto.health}; here, the HTTP site and its service, and the registry a
scrape renders. Their names stay importable from here.
"""

from __future__ import annotations

import os
from typing import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.application import internet
from twisted.internet import endpoints, threads
from twisted.python.threadable import isInIOThread
from twisted.web import resource, server

from proto.health import (
    HEALTH_STORE_TIMEOUT, HealthResource, supervisorHealth, supervisorStoreTrouble,
)
from proto.metricsmirror import METRIC_NAMES, PrometheusMirror

__all__ = [
    "HEALTH_STORE_TIMEOUT", "METRIC_NAMES", "MIRROR_SECONDS", "HealthResource",
    "PrometheusMirror", "QuietSite", "metricsService", "metricsSite",
    "multiprocessDirectory", "scrapeRegistry", "supervisorHealth", "supervisorStoreTrouble",
]

#: How often a worker process copies its counters into the shared files.
MIRROR_SECONDS = 1.0


def multiprocessDirectory() -> str | None:
    """The prometheus-client multiprocess directory, if this is a worker."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


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
