"""
Real outside components for tests: a throwaway PostgreSQL cluster and a
real HAProxy, started by the tests themselves (issue 8; facts in
C{shared/TWISTED_NOTES.md}, section 9).

Both run as an unprivileged user when the tests run as root (C{initdb}
refuses root; HAProxy needs no privilege on loopback ports). Outside CI a
missing component skips the tests that need it, with a message naming
it; with C{CI=true} it is an error (L{missingComponent}): C{.ci/run}
installs them.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import SkipTest

#: The unprivileged user the components run as when the tests are root.
UNPRIVILEGED = "nobody"


def missingComponent(what: str, hint: str) -> Exception:
    """
    The exception for a component the tests cannot find: C{SkipTest}
    outside CI, a plain error with C{CI=true} (real components must not be
    skipped there).
    """
    message = f"{what} is not available: {hint}"
    if os.environ.get("CI", "").lower() == "true":
        return RuntimeError(f"{message} (CI=true: these tests must run; see .ci/run)")
    return SkipTest(message)


def _asUnprivileged(args: list[str]) -> list[str]:
    """Prefix C{args} with C{runuser} when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", UNPRIVILEGED, "--", *args]
    return args


def _sharedTempDir(prefix: str) -> str:
    """A fresh directory the unprivileged user owns and everyone may enter."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(UNPRIVILEGED)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def postgresBinaries() -> str:
    """
    The directory holding C{initdb} and C{pg_ctl}: the one on C{PATH}, or
    Debian's newest C{/usr/lib/postgresql/N/bin}.
    """
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not candidates:
        raise missingComponent(
            "PostgreSQL (initdb)", "install it: apt-get install -y postgresql"
        )

    def version(path: str) -> float:
        try:
            return float(path.split("/")[-3])
        except ValueError:
            return 0.0

    return os.path.dirname(max(candidates, key=version))


def requirePsycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise missingComponent(
            "psycopg 3", "install the extra: pip install -e '.[test,postgres]'"
        ) from None


class PostgresCluster:
    """
    A PostgreSQL cluster in a temporary directory, reachable only through a
    Unix socket in that directory, with trust authentication for the role
    C{proto}.

    @ivar socketDir: the C{host} to give libpq.
    """

    USER = "proto"

    def __init__(self, fsync: bool = False) -> None:
        """
        @param fsync: C{False} (tests) makes the cluster faster and is
            harmless as long as the machine does not crash; a benchmark
            passes C{True}.
        """
        requirePsycopg()
        self._bin = postgresBinaries()
        self.baseDir = _sharedTempDir("proto-pg-")
        self.socketDir = self.baseDir
        self.dataDir = os.path.join(self.baseDir, "data")
        self.logPath = os.path.join(self.baseDir, "log")
        self._fsync = fsync
        self._databases = itertools.count(1)
        self._testDatabase: str | None = None
        self.running = False
        self._run(
            "initdb", "-D", self.dataDir, "-A", "trust", "-U", self.USER,
            "-E", "UTF8", "--no-locale", "--no-sync",
        )

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            _asUnprivileged([os.path.join(self._bin, tool), *args]),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60, cwd=self.baseDir,
        )
        if result.returncode != 0:
            log = ""
            if os.path.exists(self.logPath):
                with open(self.logPath, errors="replace") as f:
                    log = f.read()[-4000:]
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
                f"\n{log}"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        settings = f"-k {self.socketDir} -c listen_addresses='' -c max_connections=200"
        if not self._fsync:
            settings += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.dataDir, "-l", self.logPath, "-w", "-t", "60",
                  "-o", settings, "start")
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (C{immediate}: like a crash, and fast)."""
        if self.running:
            self.running = False
            self._run("pg_ctl", "-D", self.dataDir, "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        """Stop it and remove every file."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.baseDir, ignore_errors=True)

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq keyword string for C{dbname} (no password: trust)."""
        return f"host={self.socketDir} dbname={dbname} user={self.USER}"

    def createSchema(self) -> str:
        """
        A new, empty namespace (a schema of one shared database, first on
        the connection's C{search_path}): what a fresh database gives a
        store, in milliseconds instead of the third of a second of
        C{CREATE DATABASE}. Returns its conninfo.
        """
        import psycopg

        if self._testDatabase is None:
            self._testDatabase = self.createDatabase()
        name = f"test_{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(self._testDatabase, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{name}"')
        return f"{self._testDatabase} options='-c search_path={name}'"

    def createDatabase(self) -> str:
        """A new, empty database; returns its conninfo."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._databases)}"
        with psycopg.connect(self.conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)


_shared: PostgresCluster | None = None


def sharedCluster() -> PostgresCluster:
    """
    The cluster of this test run (process): started on first use, removed
    when the process exits. Tests that stop their server make their own.
    """
    global _shared
    if _shared is None or not _shared.running:
        cluster = PostgresCluster()
        atexit.register(cluster.destroy)
        cluster.start()
        _shared = cluster
    return _shared


def haproxyBinary() -> str:
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if found is None:
        raise missingComponent("HAProxy", "install it: apt-get install -y haproxy")
    return found


class HAProxy:
    """
    A real HAProxy in the foreground (C{-db}) on loopback, as an
    unprivileged user, in TCP passthrough with C{send-proxy-v2} to the
    given backends.
    """

    def __init__(self, frontendPort: int, backends: list[tuple[str, int]],
                 tunnelTimeout: str = "1h", check: bool = True) -> None:
        self.binary = haproxyBinary()
        self.port = frontendPort
        self.directory = _sharedTempDir("proto-haproxy-")
        self.configPath = os.path.join(self.directory, "haproxy.cfg")
        self.logPath = os.path.join(self.directory, "haproxy.log")
        servers = "\n".join(
            f"    server s{i} {host}:{port} send-proxy-v2{' check' if check else ''}"
            for i, (host, port) in enumerate(backends)
        )
        with open(self.configPath, "w") as f:
            f.write(f"""\
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel {tunnelTimeout}
frontend gnp
    bind 127.0.0.1:{frontendPort}
    default_backend servers
backend servers
    balance leastconn
{servers}
""")
        os.chmod(self.configPath, 0o644)
        self.process: subprocess.Popen | None = None
        self._finalLog: str | None = None

    def start(self, deadline: float = 20.0) -> None:
        with open(self.logPath, "wb") as log:
            self.process = subprocess.Popen(
                _asUnprivileged([self.binary, "-db", "-f", self.configPath]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"haproxy did not listen within {deadline} s:\n{self.log()}")

    def log(self) -> str:
        if self._finalLog is not None:
            return self._finalLog
        with open(self.logPath, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """Stop it and remove its files (L{log} still answers)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._finalLog is None and os.path.exists(self.logPath):
            self._finalLog = self.log()
        shutil.rmtree(self.directory, ignore_errors=True)
