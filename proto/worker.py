"""
The worker side of C{--workers N} (L{proto.workers}): what a worker
process (C{twistd -n proto ... --worker-index=i}) adds to a plain server.
Its log lines go to the supervisor (L{workerLogObserver}), and it stops by
itself once its supervisor has gone (L{ParentWatch}), so no orphaned
worker goes on serving alone. Its listening sockets: L{proto.reuseport}.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import error
from twisted.logger import Logger

#: The environment variable that gives each worker its supervisor's pid.
SUPERVISOR_PID = "PROTO_SUPERVISOR_PID"

log = Logger()


def workerLogObserver():
    """
    C{twistd --logger} of a worker: classic text lines without the time,
    on standard output, which the supervisor logs with its time and the
    worker's name (C{[worker-0] [proto.protocol#info] Admitted ...}).
    """
    from twisted.logger import FileLogObserver, formatEventAsClassicLogText

    def format(event):
        return formatEventAsClassicLogText(event, formatTime=lambda when: "-")[2:]

    return FileLogObserver(sys.stdout, format)


class ParentWatch(TimerService):
    """
    Stops a worker whose supervisor has gone (killed with SIGKILL, say), so
    no orphaned worker goes on serving alone: its parent changes.

    The supervisor may die at any point of the worker's start, so the
    supervisor it expects is the one named in L{SUPERVISOR_PID} (by then
    C{getppid} may already be init's), and the first check, made when
    twistd starts the services I{before} the reactor runs, asks the
    reactor to stop once it runs (C{reactor.stop} before then raises,
    which ended the loop and left the worker serving alone).
    """

    def __init__(self, reactor: Any, interval: float = 1.0) -> None:
        self._parent = int(os.environ.get(SUPERVISOR_PID) or os.getppid())
        self._reactor = reactor
        self._stopping = False
        super().__init__(interval, self._check)
        self.clock = reactor

    def _check(self) -> None:
        if self._stopping or os.getppid() == self._parent:
            return
        self._stopping = True
        log.warn("Supervisor {pid} has gone; this worker stops", pid=self._parent)
        self._reactor.callWhenRunning(self._stop)

    def _stop(self) -> None:
        try:
            self._reactor.stop()
        except error.ReactorNotRunning:
            pass  # already stopping (a SIGTERM came first)
