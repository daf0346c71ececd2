"""
C{--workers N}: one server on several cores.

The C{twistd} process becomes a B{supervisor}: it prepares everything the
workers share (data directory, certificates, allow-list check, the store's
schema, a check that every listening address can be bound), then starts N
B{worker} processes with Twisted's L{ProcessMonitor}, which restarts a
worker that dies (with a back-off for one that dies at once). Each worker
is C{twistd -n proto} again, with the same options (so every option, and
the allow-list reload, applies to every worker) and C{--worker-index=i}.
This module is that supervisor: what it prepares, the workers' command
lines, and when it starts them. The parts: the monitor in
L{proto.workermonitor}, the sockets in L{proto.reuseport}, what a worker
adds to a plain server in L{proto.worker}.

Each worker makes I{its own} listening socket on the same port with
C{SO_REUSEPORT}, and the kernel spreads new connections over them (one
shared socket balances badly: C{shared/TWISTED_NOTES.md}, section 9).
The supervisor holds a bound, non-listening C{SO_REUSEPORT} socket on each
address, so no other program can take the port while a worker restarts,
and it never accepts a connection itself.

Workers share the store: with SQLite, one file on one host; with
PostgreSQL, one database. A WATCH in one worker sees the writes of all of
them through the store's change log (C{shared/PROTOCOL.md}, section 8).

On SIGTERM the supervisor sends SIGTERM to every worker (each drains its
connections: see the worker's own stop) and waits until they have exited,
killing one that has not after L{WORKER_KILL_TIME} seconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from typing import Any, Iterable

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from proto.store.base import StoreClosedError

# The parts of --workers, each in its own module; their names stay
# importable from here (tests, tap.py, server.py, twistd's --logger).
from proto.reuseport import (  # noqa: F401
    BACKLOG,
    ReusePortEndpoint,
    holdAddresses,
    listenAddresses,
    proxiedEndpoint,
    reusePortEndpoint,
    reusePortSocket,
)
from proto.worker import SUPERVISOR_PID, ParentWatch, workerLogObserver  # noqa: F401
from proto.workermonitor import WORKER_KILL_TIME, WorkerMonitor  # noqa: F401

#: Options the supervisor serves itself and does not give to the workers.
SUPERVISOR_ONLY = ("--metrics",)

log = Logger()


def workerArguments(rawArgs: Iterable[str], index: int) -> list[str]:
    """
    The command line of worker C{index}: the supervisor's own C{proto}
    options (minus those the supervisor alone serves), then
    C{--workers=1 --worker-index=i}, which win over earlier ones.
    """
    args: list[str] = []
    skipNext = False
    for arg in rawArgs:
        if skipNext:
            skipNext = False
            continue
        if arg in SUPERVISOR_ONLY:
            skipNext = True
            continue
        if any(arg.startswith(option + "=") for option in SUPERVISOR_ONLY):
            continue
        args.append(arg)
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "--pidfile=", "--nodaemon", "--logger=proto.worker.workerLogObserver", "proto", *args, "--workers=1", f"--worker-index={index}",
    ]


class Supervisor(service.MultiService):
    """
    Prepares the store's schema, then starts the workers (its
    L{WorkerMonitor} child). Holds the listening addresses while it runs.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, store, monitor: WorkerMonitor, held: list[socket.socket],
        workers: list[tuple[str, list[str]]], environment: dict[str, str],
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._store = store
        self.monitor = monitor
        self._held = held
        #: (name, command line) of each worker, started once the store is ready.
        self._workers = workers
        self._environment = environment

    def startService(self) -> None:
        # Our other children (SIGHUP) start now; the monitor, once the
        # store is ready.
        super().startService()
        self._ready = self._store.start().addCallback(lambda _: self._store.close())
        self._ready.addCallbacks(self._startWorkers, self._storeFailed)
        # A PostgreSQL database that cannot be reached yet: the workers are
        # started anyway, and each keeps trying to open the store, answering
        # ERR Store unavailable (...) (retrying) meanwhile, rather than the
        # port held with nobody answering. (They cannot race at creating the
        # schema: its upgrade holds an advisory lock.)
        opening = getattr(self._store, "opening", None)
        if opening is not None:
            opening.whenRetrying().addCallback(self._startWorkersAnyway)

    def _startWorkersAnyway(self, reason: str) -> None:
        if not self.running or self.monitor.running:
            return
        self.log.warn(
            "The document store cannot be opened yet ({reason}); starting the workers, "
            "which keep trying", reason=reason,
        )
        self._startWorkers(None)
        self._store.close()  # (its start fails: StoreClosedError, ignored below)

    def _startWorkers(self, _: object) -> None:
        if self.running:
            # Our pid now, after twistd has daemonized (ParentWatch).
            environment = dict(self._environment, **{SUPERVISOR_PID: str(os.getpid())})
            for name, args in self._workers:
                self.monitor.addProcess(name, args, env=environment)
            self.monitor.setServiceParent(self)

    def _storeFailed(self, failure) -> None:
        if failure.check(StoreClosedError) and self.monitor.running:
            return  # closed by _startWorkersAnyway
        self.log.failure("Cannot prepare the document store; not starting workers", failure)
        self._reactor.stop()

    def stopService(self):
        stopped = defer.maybeDeferred(super().stopService)

        def release(result):
            for sock in self._held:
                sock.close()
            return result

        return stopped.addBoth(release)


def makeSupervisor(options, count: int) -> service.IService:
    """
    The supervisor's service tree for C{twistd proto --workers N}: checks
    and prepares what the workers share, so they never race to create it.
    """
    from twisted.internet import reactor

    from proto import datadir
    from proto.admission import AllowListError, AllowListFile
    from proto.sighup import SighupService
    from proto.store import openStore
    from proto.tls import ServerTLS

    from proto.announce import _announce

    dataDir = options["data-dir"]
    report = datadir.bootstrap(dataDir, makeServerCert=options["cert"] is None)
    certPath = options["cert"] or datadir.path(dataDir, datadir.SERVER_CERT)
    keyPath = options["key"] or datadir.path(dataDir, datadir.SERVER_KEY)
    allowPath = options["allow"] or datadir.path(dataDir, datadir.ALLOWLIST)
    try:
        ServerTLS.fromFiles(certPath, keyPath)
        AllowListFile(allowPath)
    except (ValueError, OSError, AllowListError) as e:
        raise usage.UsageError(str(e)) from None
    try:
        store = openStore(options["store"], dataDir, retainChanges=options["retain-changes"])
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    try:
        for description in options["listen"]:
            reusePortEndpoint(reactor, description)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    held = holdAddresses(reactor, options["listen"])

    runDir = os.path.join(dataDir, "run")
    shutil.rmtree(runDir, ignore_errors=True)
    os.makedirs(os.path.join(runDir, "prometheus"), exist_ok=True)
    environment = dict(os.environ)
    environment["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(runDir, "prometheus")

    monitor = WorkerMonitor(reactor)
    # Each worker drains for --drain-timeout on SIGTERM, then closes its store.
    monitor.killTime = max(WORKER_KILL_TIME, options["drain-timeout"] + 15)
    workers = [(f"worker-{index}", workerArguments(options.rawArgs, index)) for index in range(count)]
    supervisor = Supervisor(reactor, store, monitor, held, workers, environment)
    hup = SighupService(reactor)
    hup.add("the workers (signalled in turn)", monitor.signalAll)
    hup.setServiceParent(supervisor)
    if options["metrics"]:
        from proto.metrics import metricsService, supervisorHealth, supervisorStoreTrouble

        metricsService(
            reactor, options["metrics"], multiprocessDir=environment["PROMETHEUS_MULTIPROC_DIR"],
            draining=supervisorHealth(supervisor, runDir),
            storeTrouble=supervisorStoreTrouble(runDir),
        ).setServiceParent(supervisor)

    def workerExited(pid: int) -> None:
        # A dead worker's live gauges leave the sums; its snapshot goes.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, environment["PROMETHEUS_MULTIPROC_DIR"])
        try:
            os.unlink(os.path.join(runDir, f"stats-{pid}.json"))
        except OSError:
            pass

    monitor.workerExited = workerExited
    log.info(
        "GNP/1 supervisor (pid {pid}): {count} workers on {listen}, data in {dataDir}",
        pid=os.getpid(), count=count, listen=options["listen"] or ["port 4433 (IPv4, IPv6)"],
        dataDir=dataDir,
    )
    _announce(options, report, certPath, keyPath, allowPath)
    return supervisor
