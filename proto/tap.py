"""
C{twistd proto}: the service tree its options build (L{makeService}).

The twistd plugin (C{twisted/plugins/proto_plugin.py}) and the C{.tac}
file (C{tac/proto.tac}) both come here, so the two ways to run the server
cannot drift apart. The options themselves are L{proto.tapoptions}; the
start-up lines telling the user how to connect, L{proto.announce}. Their
names stay importable from here (C{proto.tap.Options} is what twistd's
plugin and C{proto.deploy} use).
"""

from __future__ import annotations

import functools
import os

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.logger import Logger
from twisted.python import usage

from proto import datadir, plugins
from proto.admission import AllowListError, AllowListFile
from proto.announce import _announce, _announceTransport, _firstPort
from proto.lifecycle import DrainService, OrderedShutdown
from proto.server import GNPServerFactory, defaultRegistry, listenServices
from proto.sighup import SighupService
from proto.tapoptions import Options, _nonNegativeFloat, _positiveInt, _workerCount
from proto.tls import TICKET_KEY_SECONDS, ServerTLS

__all__ = [
    "ALLOWLIST_POLL_SECONDS", "GRANTS_POLL_SECONDS", "Options", "makeService",
    "_announce", "_announceTransport", "_firstPort",
    "_nonNegativeFloat", "_positiveInt", "_workerCount",
]

log = Logger()

#: How often the store's approvals and enrolments are checked for changes
#: (every server sharing the store sees one within 2 seconds).
GRANTS_POLL_SECONDS = 1.0

#: How often the allow-list file is checked for changes.
ALLOWLIST_POLL_SECONDS = 1.0


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
