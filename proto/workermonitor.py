"""
The supervisor's L{WorkerMonitor} (C{--workers N}, L{proto.workers}):
Twisted's L{ProcessMonitor}, which restarts a worker that dies (with a
back-off for one that dies at once), plus what the supervisor needs of it:
each worker's pid and exit logged, a clean-up hook per exited worker
(metrics), a signal to all (SIGHUP: reload files), and a C{stopService}
that waits until every worker has drained and exited, killing one that
has not after L{WORKER_KILL_TIME} seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.runner.procmon import ProcessMonitor

#: Seconds a worker has, after SIGTERM, to drain and exit before SIGKILL.
WORKER_KILL_TIME = 30.0


class _WorkerLines(Logger):
    """
    The monitor's logger: the workers' lines, without the empty one that
    C{ProcessMonitor}'s C{LoggingProtocol} adds when a worker ends (it
    compares C{data[-1]}, an int, with C{b"\\n"}).
    """

    def info(self, format=None, **kwargs):
        if kwargs.get("line") == "" and "tag" in kwargs:
            return
        super().info(format, **kwargs)


class WorkerMonitor(ProcessMonitor):
    """
    L{ProcessMonitor} that logs each worker's pid and exit, and whose
    C{stopService} waits until every worker has exited.
    """

    log = _WorkerLines()
    # Twisted's ProcessMonitor infers int from its default (5); it is only
    # handed to callLater, which takes any number of seconds.
    killTime = WORKER_KILL_TIME  # type: ignore[assignment]

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self._exitWaiters: dict[str, list[defer.Deferred[None]]] = {}
        self._pids: dict[str, int] = {}
        #: Called with a worker's pid when it has exited (metrics clean-up).
        self.workerExited: Any = None

    def startProcess(self, name: str) -> None:
        super().startProcess(name)
        protocol = self.protocols.get(name)
        pid = getattr(getattr(protocol, "transport", None), "pid", None)
        self.log.info("Started {name} (pid {pid})", name=name, pid=pid)
        if pid is not None:
            self._pids[name] = pid

    def _monitoredProcessExited(self, name: str, reason=None) -> None:
        if self.running:
            self.log.warn(
                "{name} exited ({reason}); it is restarted",
                name=name, reason=reason.getErrorMessage() if reason is not None else "?",
            )
        pid = self._pids.pop(name, None)
        if pid is not None and self.workerExited is not None:
            try:
                self.workerExited(pid)
            except Exception:
                self.log.failure("Cleaning up after {name} (pid {pid}) failed", name=name, pid=pid)
        super()._monitoredProcessExited(name, reason)
        for waiter in self._exitWaiters.pop(name, []):
            waiter.callback(None)

    def signalAll(self, signal: str = "HUP") -> None:
        """Send C{signal} to every running worker (SIGHUP: reload files)."""
        for name, protocol in list(self.protocols.items()):
            transport = protocol.transport
            if transport is None:
                continue  # (not started yet, or gone)
            try:
                transport.signalProcess(signal)
            except error.ProcessExitedAlready:
                pass

    # IService.stopService may return a Deferred (twistd waits for it);
    # ProcessMonitor annotates its own as returning None.
    def stopService(self) -> defer.Deferred[None]:  # type: ignore[override]
        waiting = []
        for name in list(self.protocols):
            waiter: defer.Deferred[None] = defer.Deferred()
            self._exitWaiters.setdefault(name, []).append(waiter)
            waiting.append(waiter)
        super().stopService()
        self.log.info("Stopping {count} workers; waiting for them to drain and exit",
                      count=len(waiting))
        return defer.gatherResults(waiting).addCallback(lambda _: None)
