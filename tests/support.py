"""
Test fixtures: certificates the tests mint, an in-memory TLS connection to
the real server protocol (real OpenSSL bytes over C{twisted.test.iosim},
with a fake clock), an in-process server on a loopback port, and a real
C{twistd -n proto} process.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field

from twisted.internet import defer, endpoints, protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from proto import certs, datadir, speed, wire
from proto.admission import AllowList
from proto.server import GNPServerFactory, ServerConfig
from proto.speed.tlsflush import FastTLSFactory
from proto.tls import ServerTLS

#: Runs the real twistd of this interpreter, wherever its scripts are.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_now = lambda: datetime.datetime.now(datetime.timezone.utc)  # noqa: E731


class Credentials:
    """
    Certificates minted once per test run: a server certificate for
    C{localhost}, an admitted client, and clients that must be refused.
    """

    _instance: "Credentials | None" = None

    def __init__(self) -> None:
        day = datetime.timedelta(days=1)
        self.server = certs.mint("test server", server=True, altNames=datadir.SERVER_NAMES)
        self.client = certs.mint("admitted client")
        self.stranger = certs.mint("stranger")
        self.expired = certs.mint("old client", notBefore=_now() - 10 * day, notAfter=_now() - day)
        self.future = certs.mint("future client", notBefore=_now() + day, notAfter=_now() + 10 * day)
        self.allowList = AllowList.parse(
            "\n".join(
                datadir.allowlistLine(c.certificate)
                for c in (self.client, self.expired, self.future)
            )
        )

    @classmethod
    def get(cls) -> "Credentials":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def serverTLS(self) -> ServerTLS:
        return ServerTLS([self.server.certificate], self.server.key)

    def clientOptions(self, client: certs.Minted | None):
        """Client TLS options trusting our server, presenting C{client}."""
        trust = Certificate.loadPEM(self.server.certPEM)
        kwargs = {}
        if client is not None:
            kwargs["clientCertificate"] = PrivateCertificate.loadPEM(client.certPEM + client.keyPEM)
        return optionsForClientTLS("localhost", trustRoot=trust, **kwargs)


class FrameCollector(protocol.Protocol):
    """A client-side app protocol that parses what the server sends."""

    def __init__(self) -> None:
        self.parser = wire.ReplyParser()
        self.frames: list = []
        self.raw = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self.frames.extend(self.parser.feed(data))

    def connectionLost(self, reason) -> None:
        self.lost = reason


@dataclass
class MemoryConnection:
    """One TLS connection in memory between a client and our server."""

    clock: Clock
    pump: iosim.IOPump
    server: object  # GNPServerProtocol
    client: FrameCollector
    serverTLS: object
    clientTLS: object

    def send(self, data: bytes) -> None:
        self.client.transport.write(data)
        self.flush()

    def flush(self) -> None:
        self.pump.flush()
        # BufferingTLSTransport flushes on clock.callLater(0): run it.
        for _ in range(5):
            self.clock.advance(0)
            self.pump.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def frames(self) -> list:
        """Frames received so far (greeting excluded), and forget them."""
        out = [f for f in self.client.frames if isinstance(f, wire.Frame)]
        self.client.frames = [f for f in self.client.frames if not isinstance(f, wire.Frame)]
        return out

    @property
    def greeting(self):
        for f in self.client.frames:
            if isinstance(f, wire.Greeting):
                return f
        return None

    @property
    def closed(self) -> bool:
        return self.client.lost is not None


def realTimeClock() -> Clock:
    """A fake clock that starts at the real time (certificates have dates)."""
    clock = Clock()
    clock.advance(time.time())
    return clock


def makeFactory(clock, config: ServerConfig | None = None, allowList=None, store=None, hub=None, registry=None):
    creds = Credentials.get()
    current = allowList if allowList is not None else creds.allowList
    return GNPServerFactory(
        config or ServerConfig(), lambda: current, registry=registry, store=store, hub=hub, clock=clock
    )


def dialGreeting(ctx: ssl.SSLContext, port: int, session=None):
    """
    Blocking (run it in a thread): connect to 127.0.0.1:C{port} with the
    standard library's C{ctx} (offering the TLS C{session}, if any) and
    read the greeting line (section 2: C{OK}, or C{ERR reason}). Returns
    the TLS socket and the greeting (what came before EOF, if no line).
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        greeting += chunk
    return s, greeting


def startStoreServer(testCase) -> defer.Deferred:
    """
    Give C{testCase} a real SQLite store in a temporary file (C{.store},
    closed at cleanup), its change hub (C{.hub}) and a server factory on
    both (C{.factory}, on L{realTimeClock}); the Deferred fires once the
    store has started (return it from C{setUp}).
    """
    from proto.hub import ChangeHub
    from proto.store.sqlite import SQLiteStore

    testCase.hub = ChangeHub()
    testCase.store = SQLiteStore(os.path.join(testCase.mktemp(), "docs.sqlite3"), hub=testCase.hub)
    testCase.addCleanup(testCase.store.close)
    testCase.factory = makeFactory(realTimeClock(), store=testCase.store, hub=testCase.hub)
    return testCase.store.start()


def connectInMemory(
    factory=None,
    client: certs.Minted | None | str = "default",
    clock: Clock | None = None,
    config: ServerConfig | None = None,
    levers: bool = True,
) -> MemoryConnection:
    """
    Connect a client to a real L{GNPServerProtocol} over real TLS in
    memory. C{client} is the certificate to present (C{None}: none).
    C{levers}: serve through L{proto.speed}'s TLS transport (its per-turn
    flush; write-through needs a real socket), as the server does.
    """
    creds = Credentials.get()
    if client == "default":
        client = creds.client
    if factory is None:
        clock = clock or realTimeClock()
        factory = makeFactory(clock, config)
    clock = factory.clock
    serverFactory = FastTLSFactory if levers else TLSMemoryBIOFactory
    serverTLS = serverFactory(creds.serverTLS(), False, factory, clock=clock).buildProtocol(
        iosim.FakeAddress()
    )
    collector = FrameCollector()
    clientFactory = protocol.Factory.forProtocol(lambda: collector)
    clientTLS = TLSMemoryBIOFactory(creds.clientOptions(client), True, clientFactory, clock=clock).buildProtocol(
        iosim.FakeAddress()
    )
    pump = iosim.connect(
        serverTLS, iosim.makeFakeServer(serverTLS), clientTLS, iosim.makeFakeClient(clientTLS), clock=clock
    )
    conn = MemoryConnection(clock, pump, serverTLS.wrappedProtocol, collector, serverTLS, clientTLS)
    conn.flush()
    return conn


def request(command: str, *args: str, sequence: str = "1", headers=(), body: bytes | None = None) -> bytes:
    return wire.encodeRequest(command, list(args), sequence, headers, body)


# -- real servers --------------------------------------------------------


@dataclass
class DataDir:
    """A data directory bootstrapped by the server's own code."""

    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def clientContext(self) -> ssl.SSLContext:
        """A standard-library client context using the generated files."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.file(datadir.SERVER_CERT))
        ctx.load_cert_chain(self.file(datadir.CLIENT_CERT), self.file(datadir.CLIENT_KEY))
        return ctx


def mintedContext(
    minted: certs.Minted, directory: str, serverCertFile: str | None = None,
    serverCertPEM: bytes | None = None,
) -> ssl.SSLContext:
    """
    A standard-library client context presenting C{minted} (written to
    C{directory} first: C{ssl} loads keys from files only) and trusting
    the server certificate in C{serverCertFile} or C{serverCertPEM}.
    """
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, certs.sha1Thumbprint(minted.certificate)[:12])
    with open(stem + ".pem", "wb") as f:
        f.write(minted.certPEM)
    with open(stem + ".key", "wb") as f:
        f.write(minted.keyPEM)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if serverCertPEM is not None:
        ctx.load_verify_locations(cadata=serverCertPEM.decode())
    else:
        ctx.load_verify_locations(serverCertFile)
    ctx.load_cert_chain(stem + ".pem", stem + ".key")
    return ctx


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TwistdProcess:
    """A real C{twistd -n proto} child process."""

    process: subprocess.Popen
    port: int
    dataDir: DataDir
    logPath: str
    args: list = field(default_factory=list)

    def log(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig=None) -> None:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def startTwistd(workdir: str, extraArgs=(), port: int | None = None, dataDir: str | None = None,
                env=None, deadline: float = 30.0, twistdArgs=()) -> TwistdProcess:
    """
    Start C{twistd -n proto} in C{workdir} listening on 127.0.0.1 and wait
    until it accepts TLS connections (bounded by C{deadline} seconds).
    C{twistdArgs} go to twistd itself (before C{proto}), e.g. C{--logger}.
    """
    os.makedirs(workdir, exist_ok=True)
    port = port or freePort()
    dataPath = dataDir or os.path.join(workdir, "proto-data")
    args = [
        *TWISTD, "--pidfile=", "-n", *twistdArgs, "proto",
        "--data-dir", dataPath, "--listen", f"tcp:{port}:interface=127.0.0.1",
        *extraArgs,
    ]
    logPath = os.path.join(workdir, f"twistd-{port}.log")
    environment = dict(os.environ if env is None else env)
    environment["PYTHONPATH"] = ROOT + os.pathsep + environment.get("PYTHONPATH", "")
    with open(logPath, "wb") as logFile:
        process = subprocess.Popen(
            args, cwd=workdir, stdout=logFile, stderr=subprocess.STDOUT, env=environment,
            stdin=subprocess.DEVNULL,
        )
    running = TwistdProcess(process, port, DataDir(dataPath), logPath, args)
    waitForPort(running, deadline)
    return running


def waitForPort(running: TwistdProcess, deadline: float) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if running.process.poll() is not None:
            raise RuntimeError(f"twistd exited with {running.process.returncode}:\n{running.log()}")
        try:
            with socket.create_connection(("127.0.0.1", running.port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    running.stop()
    raise RuntimeError(f"twistd did not listen within {deadline} s:\n{running.log()}")


class BlockingConnection:
    """
    A minimal standard-library TLS client, for tests that talk to a real
    process: send frames, read the greeting and frames with a deadline.
    """

    def __init__(self, port: int, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.parser = wire.ReplyParser()
        self.pending: list = []

    def next(self):
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@defer.inlineCallbacks
def listenInProcess(reactor, factory, creator=None, levers: bool = True):
    """
    Listen on 127.0.0.1, port 0, wrapped in our TLS (with the speed levers
    of L{proto.speed}, as the server runs by default, unless C{levers} is
    false); returns the port.
    """
    creator = creator or Credentials.get().serverTLS()
    endpoint = speed.wrapServerTLS(
        creator, endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), levers
    )
    port = yield endpoint.listen(factory)
    return port
