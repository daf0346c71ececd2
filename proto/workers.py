"""
C{--workers N}: one server on several cores.

The C{twistd} process becomes a B{supervisor}: it prepares everything the
workers share (data directory, certificates, allow-list check, the store's
schema, a check that every listening address can be bound), then starts N
B{worker} processes with Twisted's L{ProcessMonitor}, which restarts a
worker that dies (with a back-off for one that dies at once). Each worker
is C{twistd -n proto} again, with the same options (so every option, and
the allow-list reload, applies to every worker) and C{--worker-index=i}.

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
from twisted.application.internet import TimerService
from twisted.internet import abstract, defer, endpoints, error
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python import usage
from twisted.runner.procmon import ProcessMonitor
from zope.interface import implementer

from proto.store.base import StoreClosedError

#: Seconds a worker has, after SIGTERM, to drain and exit before SIGKILL.
WORKER_KILL_TIME = 30.0

#: Pending-connection queue of each worker's sockets.
BACKLOG = 1024

#: Options the supervisor serves itself and does not give to the workers.
SUPERVISOR_ONLY = ("--metrics",)

#: The environment variable that gives each worker its supervisor's pid.
SUPERVISOR_PID = "PROTO_SUPERVISOR_PID"

log = Logger()


# -- sockets ----------------------------------------------------------------


def reusePortSocket(port: int, interface: str, v6only: bool = False) -> socket.socket:
    """
    A TCP socket bound to C{interface:port} with C{SO_REUSEPORT} (and
    C{SO_REUSEADDR}), not yet listening. Processes of the same user can
    bind the same address this way; the kernel balances connections over
    those that listen.
    """
    family = socket.AF_INET6 if abstract.isIPv6Address(interface) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
        sock.bind((interface or "0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    A TCP server endpoint whose socket has C{SO_REUSEPORT}: Twisted's
    C{tcp:} endpoint cannot set it, so we make the socket and hand it to
    C{adoptStreamPort}.
    """

    def __init__(self, reactor: Any, port: int, interface: str = "",
                 backlog: int = BACKLOG, v6only: bool = False) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self._backlog = backlog
        self._v6only = v6only

    def listen(self, factory):
        try:
            sock = reusePortSocket(self.port, self.interface, self._v6only)
        except OSError as e:
            return defer.fail(error.CannotListenError(self.interface, self.port, e))
        try:
            sock.listen(self._backlog)
            sock.setblocking(False)
            return defer.succeed(
                self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
            )
        except OSError as e:
            return defer.fail(error.CannotListenError(self.interface, self.port, e))
        finally:
            sock.close()  # adoptStreamPort made its own copy of the descriptor


def reusePortEndpoint(reactor: Any, description: str) -> ReusePortEndpoint | Any:
    """
    The endpoint for one C{--listen} description, with C{SO_REUSEPORT}:
    C{tcp:}, C{tcp6:} and C{haproxy:tcp:...} descriptions are supported
    (Twisted parses them; we only rebuild the TCP part).

    @raise ValueError: for other kinds of endpoint (C{unix:}, C{systemd:}).
    """
    from proto.listen import serverEndpoint

    parsed = serverEndpoint(reactor, description)
    proxied = isinstance(parsed, endpoints._WrapperServerEndpoint)
    inner = parsed._wrappedEndpoint if isinstance(parsed, endpoints._WrapperServerEndpoint) else parsed
    if not isinstance(inner, endpoints.TCP4ServerEndpoint):  # TCP6 is a subclass
        raise ValueError(
            f"--workers needs TCP listeners (tcp:, tcp6: or haproxy:tcp:), not {description!r}"
        )
    tcp = ReusePortEndpoint(reactor, inner._port, inner._interface, inner._backlog)
    return proxiedEndpoint(tcp) if proxied else tcp


def proxiedEndpoint(endpoint):
    """C{endpoint} behind HAProxy: every connection starts with a PROXY header."""
    return proxyEndpoint(endpoint)


def listenAddresses(reactor: Any, descriptions: list[str]) -> list[tuple[Any, bool, str]]:
    """
    The TCP endpoints of the C{--listen} descriptions (default: port 4433 on
    IPv4 and IPv6), each with whether it is optional (the default IPv6 one:
    a host without IPv6 must still start) and its description.
    """
    from proto.datadir import DEFAULT_PORT

    if not descriptions:
        return [
            (ReusePortEndpoint(reactor, DEFAULT_PORT, "0.0.0.0"), False, f"tcp:{DEFAULT_PORT}"),
            (ReusePortEndpoint(reactor, DEFAULT_PORT, "::", v6only=True), True,
             f"tcp6:{DEFAULT_PORT}"),
        ]
    return [(reusePortEndpoint(reactor, d), False, d) for d in descriptions]


def _tcpPart(endpoint) -> ReusePortEndpoint:
    return endpoint._wrappedEndpoint if isinstance(endpoint, endpoints._WrapperServerEndpoint) else endpoint


def holdAddresses(reactor: Any, descriptions: list[str]) -> list[socket.socket]:
    """
    Bind (without listening) every address the workers will listen on, so
    a port in use is reported by the supervisor, once, before any worker
    starts, and stays ours while workers restart.

    @raise usage.UsageError: naming the address that cannot be bound.
    """
    held = []
    try:
        for endpoint, optional, _ in listenAddresses(reactor, descriptions):
            tcp = _tcpPart(endpoint)
            try:
                held.append(reusePortSocket(tcp.port, tcp.interface, tcp._v6only))
            except OSError as e:
                if optional:
                    log.warn("IPv6 address not available ({error}); workers serve IPv4 only",
                             error=e)
                    continue
                raise usage.UsageError(
                    f"cannot listen on {tcp.interface or '*'}:{tcp.port}: {e.strerror}"
                ) from None
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


# -- the worker side --------------------------------------------------------


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


# -- the supervisor side ----------------------------------------------------


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
        "--pidfile=", "--nodaemon", "--logger=proto.workers.workerLogObserver", "proto", *args, "--workers=1", f"--worker-index={index}",
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

    from proto.tap import _announce

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
