"""
C{/healthz} (C{--metrics}): 200 while the server serves; 503 while it
drains or when its store fails a small read (L{HealthResource}); in a
C{--workers} supervisor, from the workers' snapshots
(L{supervisorHealth}, L{supervisorStoreTrouble}). Served beside
C{/metrics} by L{proto.metrics.metricsSite}.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

#: The lines keep the namespace they had in proto.metrics (log filters).
log = Logger(namespace="proto.metrics")

#: Seconds /healthz waits for the store's answer before calling it failing.
HEALTH_STORE_TIMEOUT = 2.0


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
