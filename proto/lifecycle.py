"""
How the server stops: the graceful drain on SIGTERM and twistd's stop
(issue 10).

twistd stops the application by calling C{stopService} on its service
tree before the reactor stops, and waits for the Deferred it returns. A
plain C{MultiService} stops all its children at once; that would close
the store while requests still run. L{OrderedShutdown} stops them one
after another instead, the last added first, each once the previous one
has finished. The server's tree is built in the order::

    store, timers, ..., metrics, drain, listeners

so a stop runs: the listeners stop accepting (at once); the drain
(L{DrainService}: L{proto.server.GNPServerFactory.shutdown}) lets the
requests in flight finish for up to C{--drain-timeout} seconds, answering
new ones C{ERR Server is shutting down}, then sends each connection the
final C{ERR} and closes it; C{/healthz} has answered 503 since the drain
began; then the store closes, committing every write it accepted, so no
acknowledged write is lost.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

#: Extra seconds the drain waits, past its grace, for connections that
#: must still finish closing (TLS close_notify, handshakes in progress).
CLOSE_MARGIN = 5.0


class OrderedShutdown(service.MultiService):
    """
    A C{MultiService} that stops its children one at a time, in reverse
    order of addition, waiting for each (a failure is logged and the next
    one still stops).
    """

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        children = list(self)[::-1]

        @defer.inlineCallbacks
        def stopAll():
            for child in children:
                try:
                    yield defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("Stopping {service!r} failed", service=child)

        return stopAll()


class DrainService(service.Service):
    """
    Drains the factory's connections when stopped (see the module's
    docstring); its stop fires once every connection is closed, or after
    C{grace} + L{CLOSE_MARGIN} seconds at most.
    """

    def __init__(self, factory, grace: float, clock) -> None:
        self.factory = factory
        self.grace = grace
        self.clock = clock

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        count = len(self.factory.connections)
        log.info(
            "Draining {count} connection(s): requests in flight may finish within "
            "{grace:g} s; new requests are answered 'Server is shutting down'",
            count=count, grace=self.grace, event="drain_started",
        )
        started = self.clock.seconds()
        d = self.factory.shutdown(self.grace)
        d.addTimeout(self.grace + CLOSE_MARGIN, self.clock)

        def finished(result):
            left = len(self.factory.connections)
            if left:
                log.warn(
                    "Drain ended after {seconds:.1f} s with {left} connection(s) still "
                    "closing", seconds=self.clock.seconds() - started, left=left,
                    event="drain_finished",
                )
                for proto in list(self.factory.connections):
                    proto.transport.abortConnection()
            else:
                log.info(
                    "Drain finished in {seconds:.1f} s: every connection closed",
                    seconds=self.clock.seconds() - started, event="drain_finished",
                )
            return None

        return d.addBoth(finished)
