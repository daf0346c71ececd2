"""
C{twistd proto}: command-line options and the service they build.

The twistd plugin (C{twisted/plugins/proto_plugin.py}) and the C{.tac}
file (C{tac/proto.tac}) both come here, so the two ways to run the server
cannot drift apart.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.logger import Logger
from twisted.python import usage

from proto import datadir, plugins, wire
from proto.admission import AllowListError, AllowListFile
from proto.lifecycle import DrainService, OrderedShutdown
from proto.server import (
    DEFAULT_MAX_PENDING_BODIES, GNPServerFactory, ServerConfig, defaultRegistry, listenServices,
)
from proto.listen import problemWith
from proto.sighup import SighupService
from proto.tls import TICKET_KEY_SECONDS, ServerTLS

log = Logger()

#: How often the store's approvals and enrolments are checked for changes
#: (every server sharing the store sees one within 2 seconds).
GRANTS_POLL_SECONDS = 1.0

#: How often the allow-list file is checked for changes.
ALLOWLIST_POLL_SECONDS = 1.0


def _positiveInt(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _nonNegativeFloat(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return number


def _workerCount(value: str) -> int:
    """C{--workers}: a positive number, or C{auto} (the CPUs we may use)."""
    if value.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number or 'auto'")
    return number


class Options(usage.Options):
    """Options of C{twistd proto}."""

    synopsis = "[options]"
    longdesc = (
        "Runs a GNP/1 server: TLS with client certificates, clients admitted by "
        "thumbprint. With no options it listens on port 4433 (IPv4 and IPv6) and "
        "keeps its certificate, the first client's certificate, the allow-list and "
        "the documents in ./proto-data, creating them on first start."
    )

    # [long name, short name or None, default, help (, coerce)]
    optParameters: list[list[Any]] = [
        ["data-dir", "d", datadir.DEFAULT_DATA_DIR,
         "Directory for server.pem, server.key, client.pem, client.key, allowlist.txt "
         "and the document store; created on first start."],
        ["cert", None, None,
         "Server certificate (PEM, chain after the leaf). With --key; then no "
         "certificate is generated."],
        ["key", None, None, "Server private key (PEM: PKCS#8 or traditional RSA/EC)."],
        ["allow", None, None,
         "Allow-list file: one SHA-1 or SHA-256 thumbprint per line, optional name "
         "after it, # comments. Re-read when it changes. [default: DATA_DIR/allowlist.txt]"],
        ["store", None, "sqlite",
         "Document store: 'sqlite' (a file in the data directory), 'sqlite:PATH', or "
         "'postgresql:CONNINFO' (extra 'postgres'; README: Scaling out)."],
        ["max-head", None, wire.DEFAULT_MAX_HEAD, "Largest request head, in bytes.", _positiveInt],
        ["max-body", None, wire.DEFAULT_MAX_BODY, "Largest request body, in bytes.", _positiveInt],
        ["handshake-timeout", None, 10.0,
         "Seconds a client has to finish the TLS handshake.", _nonNegativeFloat],
        ["head-timeout", None, 10.0,
         "Seconds a request head may take to arrive, from its first byte.", _nonNegativeFloat],
        ["body-timeout", None, 10.0,
         "Close a connection whose request body gets no byte for this many seconds.",
         _nonNegativeFloat],
        ["max-pending-bodies", None, DEFAULT_MAX_PENDING_BODIES,
         "Bytes that request bodies still arriving may hold, all connections "
         "together; past it a body is read and dropped and its request answered "
         "ERR Server busy.", _positiveInt],
        ["idle-timeout", None, 300.0,
         "Close a connection with nothing to do for this many seconds (0: never).",
         _nonNegativeFloat],
        ["max-connections", None, 10000, "Most admitted connections at once.", _positiveInt],
        ["retain-changes", None, 100_000,
         "Keep at least this many of the newest changes in the change log, which "
         "WATCH with Since replays (at least 1).", _positiveInt],
        ["workers", None, 1,
         "Worker processes sharing the port (SO_REUSEPORT) under a supervisor that "
         "restarts them; 'auto': one per CPU. See README, Scaling out.", _workerCount],
        ["worker-index", None, None, "Internal: set by the supervisor on its workers.", int],
        ["drain-timeout", None, 10.0,
         "On SIGTERM (and twistd's stop), seconds the requests in flight have to "
         "finish before they are cancelled; meanwhile new requests are answered "
         "'ERR Server is shutting down'.", _nonNegativeFloat],
        ["metrics", None, None,
         "Serve /metrics (Prometheus) and /healthz over HTTP on this Twisted endpoint "
         "description, e.g. tcp:9464:interface=127.0.0.1. [default: off]"],
    ]

    optFlags: list[list[str | None]] = [
        ["plain-transport", None,
         "Serve with plain Twisted transports: turn off the speed levers (write-through "
         "TCP writes, one TLS flush per reactor turn, TLS records with OpenSSL called "
         "directly, the proto-epoll reactor), to rule them out when debugging."],
    ]

    def parseOptions(self, options=None) -> None:
        # Kept so that a supervisor can give its workers the same options.
        self.rawArgs = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["commands"] = []

    def opt_commands(self, target: str) -> None:
        """Add the commands of this module's CommandRegistry (package.module, or package.module:attribute; default attribute 'registry'); repeatable. Installed packages can add theirs through the 'proto.commands' entry-point group instead (README: Commands of your own)."""
        self["commands"].append(target)

    def opt_listen(self, description: str) -> None:
        """Listen on this Twisted endpoint description, wrapped in the server's TLS; repeatable (tcp:4433:interface=127.0.0.1, tcp6:4433:interface=\\:\\:1). [default: port 4433 on IPv4 and IPv6]"""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if (self["cert"] is None) != (self["key"] is None):
            raise usage.UsageError("--cert and --key go together: give both or neither")
        if min(self["handshake-timeout"], self["head-timeout"], self["body-timeout"]) <= 0:
            raise usage.UsageError(
                "--handshake-timeout, --head-timeout and --body-timeout must be > 0"
            )
        if self["max-pending-bodies"] < self["max-body"]:
            raise usage.UsageError(
                "--max-pending-bodies must be at least --max-body "
                f"({self['max-body']}), or no body that size could ever be read"
            )
        for description in self["listen"]:
            problem = problemWith(description)
            if problem is not None:
                raise usage.UsageError(problem)
        if self["max-head"] < 64:
            raise usage.UsageError("--max-head must be at least 64 bytes")
        if not self["plain-transport"]:
            # twistd parses these options before it imports the reactor: the
            # one moment the speed levers' reactor can still be installed.
            from proto.speed import reactor as speedReactor

            speedReactor.installIfFree()

    def config(self) -> ServerConfig:
        return ServerConfig(
            maxHead=self["max-head"],
            maxBody=self["max-body"],
            handshakeTimeout=self["handshake-timeout"],
            headTimeout=self["head-timeout"],
            bodyTimeout=self["body-timeout"],
            maxPendingBodies=self["max-pending-bodies"],
            idleTimeout=self["idle-timeout"],
            maxConnections=self["max-connections"],
        )


def _announce(options, report, certPath: str, keyPath: str, allowPath: str) -> None:
    """Tell the user how to connect, every start (it is what they need first)."""
    dataDir = options["data-dir"]
    if report.createdServer:
        log.info("Created server certificate {cert} and key {key}", cert=certPath, key=keyPath)
    if report.createdClient:
        log.info(
            "Created client certificate {cert} (thumbprint {sha1}) and added it to {allow}",
            cert=datadir.path(dataDir, datadir.CLIENT_CERT), sha1=report.clientSHA1,
            allow=allowPath,
        )
    clientCert = datadir.path(dataDir, datadir.CLIENT_CERT)
    port = _firstPort(options["listen"])
    if os.path.exists(clientCert) and options["cert"] is None and port is not None:
        log.info(
            "Connect by hand: openssl s_client -connect localhost:{port} -crlf -quiet "
            "-cert {cert} -key {key} -CAfile {ca} -verify_hostname localhost",
            port=port, cert=clientCert,
            key=datadir.path(dataDir, datadir.CLIENT_KEY), ca=certPath,
        )
        log.info(
            "Or with the CLI: proto-cli --data-dir {dataDir} --port {port} PING",
            dataDir=dataDir, port=port,
        )


def _firstPort(descriptions: list[str]) -> int | None:
    """The TCP port a local user reaches first, or C{None} if not TCP."""
    if not descriptions:
        return datadir.DEFAULT_PORT
    match = re.match(r"(?:tcp6?:)?(?:port=)?(\d+)(?::|$)", descriptions[0])
    return int(match.group(1)) if match else None


def _announceTransport(levers: bool) -> None:
    """Say which transport serves, so a debugging user knows what ran."""
    from proto.speed import reactor as speedReactor

    if not levers:
        log.info("Transport: plain Twisted (--plain-transport)")
    elif speedReactor.isInstalled():
        log.info(
            "Transport: speed levers on (write-through, per-turn TLS flush, "
            "direct TLS records, proto-epoll reactor)"
        )
    else:
        from twisted.internet import reactor

        log.info(
            "Transport: write-through and per-turn TLS flush on; reactor lever off: "
            "{reactor} was installed first (use twistd --reactor {name})",
            reactor=type(reactor).__name__, name=speedReactor.NAME,
        )


def _oneLineErrors(build):
    """
    Start-up problems found while building the service (a certificate that
    cannot be loaded, a missing allow-list) end twistd with one line on
    stderr and exit status 1. twistd handles a UsageError only while it
    parses the options; from here it would print a traceback.
    """

    @functools.wraps(build)
    def wrapper(options):
        try:
            return build(options)
        except usage.UsageError as e:
            raise SystemExit(f"proto: {e}") from None

    return wrapper


def _learnCertificates(factory, dataDir: str) -> None:
    """
    Remember the client certificates kept as PEM files in the data
    directory (the first-start client, minted ones), so that their expiry
    is exported before they first connect.
    """
    import glob

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from proto.admission import identityOfDER

    for path in sorted(glob.glob(os.path.join(dataDir, "*.pem"))):
        if os.path.basename(path) == datadir.SERVER_CERT:
            continue
        try:
            with open(path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError):
            continue
        factory.stats.certificateSeen(identityOfDER(cert.public_bytes(Encoding.DER)))


def _shareStats(factory, dataDir: str, parent) -> None:
    """
    With several worker processes (the supervisor sets
    C{PROMETHEUS_MULTIPROC_DIR} for them), each writes its STATS/CLIENTS
    snapshot to C{<data-dir>/run/} every second and copies its counters
    into prometheus-client's shared files, so that any process answers
    for the whole server.
    """
    from proto.metrics import MIRROR_SECONDS, PrometheusMirror, multiprocessDirectory
    from proto.stats import SnapshotWriter, runDirectory

    if multiprocessDirectory() is None:
        return
    factory.runDir = runDirectory(dataDir)
    writer = SnapshotWriter(factory, factory.runDir)
    mirror = factory.metricsMirror = PrometheusMirror(factory)

    from twisted.internet import reactor

    def tick() -> None:
        writer.write()
        mirror.sync()
        mirror.refreshStore(reactor)

    class _Snapshots(TimerService):
        def stopService(self):
            result = super().stopService()
            writer.remove()
            return result

    _Snapshots(MIRROR_SECONDS, tick).setServiceParent(parent)


@_oneLineErrors
def makeService(options: Options) -> service.IService:
    """Build the server's service tree from parsed L{Options}."""
    from twisted.internet import reactor

    from proto.hub import ChangeHub
    from proto.store import StoreService, openStore

    # Plugins first: one that cannot be used stops the start (also of a
    # supervisor, before it starts workers that would fail the same way).
    try:
        registry = plugins.withPlugins(defaultRegistry(), options["commands"])
    except plugins.PluginError as e:
        raise usage.UsageError(f"cannot start with the commands of {e}") from None

    if options["worker-index"] is None and options["workers"] > 1:
        from proto.workers import makeSupervisor

        return makeSupervisor(options, options["workers"])

    dataDir = options["data-dir"]
    ownCert = options["cert"] is not None
    report = datadir.bootstrap(dataDir, makeServerCert=not ownCert)
    certPath = options["cert"] or datadir.path(dataDir, datadir.SERVER_CERT)
    keyPath = options["key"] or datadir.path(dataDir, datadir.SERVER_KEY)
    allowPath = options["allow"] or datadir.path(dataDir, datadir.ALLOWLIST)

    try:
        creator = ServerTLS.fromFiles(certPath, keyPath)
    except ValueError as e:
        raise usage.UsageError(str(e)) from None
    if not os.path.exists(allowPath):
        raise usage.UsageError(
            f"allow-list {allowPath} does not exist: create it with one client "
            "certificate thumbprint per line (proto-cli can print one)"
        )
    try:
        allowFile = AllowListFile(allowPath)
    except (OSError, AllowListError) as e:
        raise usage.UsageError(f"cannot use allow-list {allowPath}: {e}") from None

    from twisted.internet import reactor

    hub = ChangeHub(reactor)  # delivers once per reactor turn (fan-out: proto/hub.py)
    try:
        store = openStore(
            options["store"], dataDir, hub=hub, retainChanges=options["retain-changes"]
        )
    except ValueError as e:
        raise usage.UsageError(str(e)) from None

    factory = GNPServerFactory(
        options.config(), lambda: allowFile.current, registry=registry,
        store=store, hub=hub, clock=reactor,
    )
    # File edits, approvals and enrolments reach live connections through
    # one path (section 9): the factory's AccessControl.
    allowFile.onChange = factory.access.fileChanged
    if hasattr(store, "commitObserver"):
        store.commitObserver = factory.stats.commitObserved
    _learnCertificates(factory, dataDir)
    factory.backupDir = os.path.join(dataDir, "backups")

    top = OrderedShutdown()  # stops last-added first, one at a time (proto.lifecycle)
    if not options["plain-transport"]:
        # Lever 4 (proto.speed.textlog): twistd's text log lines, same text,
        # less CPU. First in, so last out: the shutdown's lines use it too.
        from proto.speed.textlog import TextLogService

        TextLogService().setServiceParent(top)
    StoreService(store).setServiceParent(top)
    TimerService(ALLOWLIST_POLL_SECONDS, allowFile.check).setServiceParent(top)
    _shareStats(factory, dataDir, top)
    # Approvals and enrolments made by any server sharing the store.
    TimerService(GRANTS_POLL_SECONDS, factory.access.poll).setServiceParent(top)
    hup = SighupService(reactor)
    hup.add("the allow-list", allowFile.reload)
    # The server certificate and key: polled, and on SIGHUP (proto.certreload).
    from proto.certreload import CertificateFiles

    certFiles = CertificateFiles(creator, certPath, keyPath)
    TimerService(ALLOWLIST_POLL_SECONDS, certFiles.check).setServiceParent(top)
    hup.add("the server certificate", certFiles.reload)
    hup.setServiceParent(top)
    # New TLS session-ticket keys (a new context) every hour, in memory only.
    ticketKeys = TimerService(TICKET_KEY_SECONDS, creator.rotateTicketKeys)
    ticketKeys.setServiceParent(top)
    levers = not options["plain-transport"]
    worker = options["worker-index"] is not None  # one of --workers N (proto.workers)
    if worker:
        from proto.worker import ParentWatch

        ParentWatch(reactor).setServiceParent(top)
    if options["metrics"]:
        from proto.metrics import metricsService

        try:
            metricsService(reactor, options["metrics"], factory, store).setServiceParent(top)
        except ValueError as e:
            raise usage.UsageError(f"--metrics {options['metrics']!r}: {e}") from None
    # Stopped after the listeners, before the store: the graceful drain.
    DrainService(factory, options["drain-timeout"], reactor).setServiceParent(top)
    for listener in listenServices(
        reactor, options["listen"], creator, factory, levers, reusePort=worker
    ):
        listener.setServiceParent(top)
    _announceTransport(levers)
    if not worker:
        _announce(options, report, certPath, keyPath, allowPath)
    log.info(
        "GNP/1 server: certificate {cert} (sha1 {sha1}), allow-list {allow} "
        "({count} entries), data in {dataDir}, store {store!r}",
        cert=certPath, sha1=creator.fingerprintSHA1, allow=allowPath,
        count=len(allowFile.current), dataDir=dataDir, store=store,
    )
    return top
