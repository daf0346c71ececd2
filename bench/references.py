"""
Reference rows for C{bench/run.py --store}: what a user would pick instead
of our document store, measured on the same machine in the same run.

  - B{Redis} (Debian's C{redis-server}): TLS only, client certificates
    required (C{tls-auth-clients yes}), C{appendonly yes},
    C{appendfsync always} (every write fsynced before its reply), driven
    by C{redis-benchmark --tls}.
  - B{PostgreSQL 15} (the image's C{/usr/lib/postgresql/15/bin}) in a
    throwaway cluster: C{synchronous_commit=on}, C{fsync=on}, TLS with a
    client certificate (C{hostssl ... clientcert=verify-ca}) over
    loopback TCP, driven by C{pgbench} with prepared statements: a PUT is
    an upsert, a GET a select by id, a GET with Include the document and
    the one its C{Ref} field names in one statement (the server parses the
    JSON, as ours does).

Both are started and stopped here, pinned like our server (server on CPU
0, client on CPU 1). For each row this prints ops/s, p50/p99 latency, the
server's CPU per operation (from C{/proc}: for PostgreSQL the postmaster,
its live children and its reaped ones) and the load generator's own CPU
per wall second: near 1.00 means the client was saturated and the row is
a lower bound for that server.

The rows (same documents as ours: 1 KiB JSON, C{--keys} ids, a C{Ref}
field naming C{bench/ref}):

  - C{PUT}: Redis C{SET}, PostgreSQL C{INSERT ... ON CONFLICT DO UPDATE}
    with a fresh etag from a sequence.
  - C{GET}: Redis C{GET}, PostgreSQL C{SELECT id, etag, body ... WHERE
    key = $1}.
  - C{GET + Include}: Redis C{MGET doc bench:ref} (one round trip; Redis
    does not follow the reference itself, so this is generous to it),
    PostgreSQL a self-join on C{body->>'Ref'}.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any, Callable

from cryptography.hazmat.primitives import serialization

PG_BIN = "/usr/lib/postgresql/15/bin"

#: The rows every system is measured on: (label, kind, clients).
ROWS = [
    ("PUT 1 KiB, 1 client", "put", 1),
    ("PUT 1 KiB, 50 clients", "put", 50),
    ("GET 1 KiB, 1 client", "get", 1),
    ("GET 1 KiB, 50 clients", "get", 50),
    ("GET + Include, 1 client", "include", 1),
    ("GET + Include, 50 clients", "include", 50),
]

#: A loadgen CPU (seconds per wall second) at or above this: saturated.
SATURATED = 0.9


class ReferenceError(Exception):
    pass


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pinTo(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass

    return pin


def _procTimes(pid: int) -> tuple[float, float]:
    """(utime+stime, cutime+cstime) of C{pid} in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[int((len(sorted_values) - 1) * q)]


def runClient(argv: list[str], cpu: int | None, timeout: float, env: dict | None = None,
              stdin: bytes | None = None, cwd: str | None = None) -> tuple[str, str, float, float]:
    """Run a load generator; return (stdout, stderr, wall seconds, exit status).
    Its CPU is in L{_childCpu} once this returns (it has been reaped)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, preexec_fn=_pinTo(cpu),
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise ReferenceError(f"{argv[0]} timed out after {timeout:.0f} s")
    wall = time.monotonic() - t0
    # communicate() has reaped it; its rusage went to our children totals.
    return out.decode(errors="replace"), err.decode(errors="replace"), wall, proc.returncode


def _childCpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class TLSFiles:
    """A CA, a server certificate and a client certificate, both issued by it."""

    def __init__(self, directory: str) -> None:
        from proto import certs

        os.makedirs(directory, exist_ok=True)
        ca = certs.mintCA("bench reference CA")
        server = certs.mint("bench reference server", server=True, altNames=("localhost", "127.0.0.1"), issuer=ca)
        client = certs.mint("proto", issuer=ca)  # CN = the PostgreSQL user
        self.ca = os.path.join(directory, "ca.pem")
        self.serverCert = os.path.join(directory, "server.pem")
        self.serverKey = os.path.join(directory, "server.key")
        self.clientCert = os.path.join(directory, "client.pem")
        self.clientKey = os.path.join(directory, "client.key")
        for path, data in (
            (self.ca, ca.certPEM), (self.serverCert, server.certPEM), (self.serverKey, server.keyPEM),
            (self.clientCert, client.certPEM), (self.clientKey, client.keyPEM),
        ):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)


def _result(system: str, label: str, ops: int, wall: float, opsPerS: float, p50: float | None,
            p99: float | None, serverCpu: float, loadgenCpu: float, errors: int, extra: dict | None = None) -> dict:
    return {
        "system": system, "row": label, "ops": ops, "wall": wall, "ops_per_s": opsPerS,
        "p50_us": p50, "p99_us": p99,
        "cpu_us_per_op": serverCpu / ops * 1e6 if ops else None,
        "server_cpu_s": serverCpu, "loadgen_cpu": loadgenCpu, "errors": errors, **(extra or {}),
    }


# ---------------------------------------------------------------------------- Redis


class Redis:
    """redis-server with TLS + client certificates and an fsync-always AOF."""

    name = "redis"

    def __init__(self, workdir: str, tls: TLSFiles, body: bytes, ref: bytes, keys: int,
                 serverCpu: int | None, clientCpu: int | None) -> None:
        for tool in ("redis-server", "redis-benchmark", "redis-cli"):
            if shutil.which(tool) is None:
                raise ReferenceError(f"{tool} is missing (apt-get install -y redis-server redis-tools)")
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir)
        self.tls = tls
        self.body = body
        self.keys = keys
        self.clientCpu = clientCpu
        self.port = _freePort()
        conf = os.path.join(self.dir, "redis.conf")
        with open(conf, "w") as f:
            f.write(
                f"port 0\nbind 127.0.0.1\ntls-port {self.port}\n"
                f"tls-cert-file {tls.serverCert}\ntls-key-file {tls.serverKey}\n"
                f"tls-ca-cert-file {tls.ca}\ntls-auth-clients yes\n"
                f"dir {self.dir}\nappendonly yes\nappendfsync always\nsave \"\"\n"
                "daemonize no\nprotected-mode no\nlogfile \"\"\n"
            )
        self.log = os.path.join(self.dir, "redis.log")
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                ["redis-server", conf], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                preexec_fn=_pinTo(serverCpu),
            )
        try:
            self._waitReady()
            self._populate(ref)
        except BaseException:
            self.stop()
            raise

    def _tlsArgs(self) -> list[str]:
        return ["--tls", "--cacert", self.tls.ca, "--cert", self.tls.clientCert, "--key", self.tls.clientKey,
                "-h", "127.0.0.1", "-p", str(self.port)]

    def _waitReady(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ReferenceError(f"redis-server exited: {open(self.log, errors='replace').read()[-2000:]}")
            r = subprocess.run(["redis-cli", *self._tlsArgs(), "PING"], capture_output=True, text=True)
            if r.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise ReferenceError("redis-server did not answer PING within 20 s")

    def _populate(self, ref: bytes) -> None:
        def resp(*args: bytes) -> bytes:
            return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

        data = [resp(b"SET", b"bench:ref", ref)]
        data += [resp(b"SET", b"bench:%012d" % i, self.body) for i in range(self.keys)]
        r = subprocess.run(["redis-cli", *self._tlsArgs(), "--pipe"], input=b"".join(data), capture_output=True)
        if r.returncode != 0 or b"errors: 0" not in r.stdout:
            raise ReferenceError(f"redis populate failed: {r.stdout!r} {r.stderr!r}")

    def cpu(self) -> float:
        return _procTimes(self.proc.pid)[0]

    def _command(self, kind: str) -> list[str]:
        if kind == "put":
            return ["SET", "bench:__rand_int__", self.body.decode()]
        if kind == "get":
            return ["GET", "bench:__rand_int__"]
        return ["MGET", "bench:__rand_int__", "bench:ref"]

    def _bench(self, kind: str, clients: int, n: int) -> tuple[dict, float, float, float]:
        argv = ["redis-benchmark", *self._tlsArgs(), "-c", str(clients), "-n", str(n), "-r", str(self.keys),
                "--csv", *self._command(kind)]
        cpu0, lg0 = self.cpu(), _childCpu()
        out, err, wall, rc = runClient(argv, self.clientCpu, 600)
        cpu1, lg1 = self.cpu(), _childCpu()
        if rc != 0:
            raise ReferenceError(f"redis-benchmark failed ({rc}): {err.strip()[-500:]}")
        lines = [ln for ln in out.splitlines() if ln.startswith('"') and not ln.startswith('"test"')]
        header = next((ln for ln in out.splitlines() if ln.startswith('"test"')), None)
        if not lines or header is None:
            raise ReferenceError(f"no CSV from redis-benchmark: {out[-500:]!r} {err[-500:]!r}")
        names = [h.strip('"') for h in header.split('","')]
        values = [v.strip('"') for v in lines[-1].split('","')]
        row = dict(zip(names, values))
        return row, wall, cpu1 - cpu0, lg1 - lg0

    def measure(self, label: str, kind: str, clients: int, seconds: float) -> dict:
        # A short probe (also the warm-up) sizes -n for about `seconds`.
        row, wall, _, _ = self._bench(kind, clients, max(1000, 100 * clients))
        rate = float(row["rps"])
        n = max(1000, int(rate * seconds))
        row, wall, serverCpu, loadgenCpu = self._bench(kind, clients, n)
        return _result(
            self.name, label, n, wall, float(row["rps"]), float(row["p50_latency_ms"]) * 1000,
            float(row["p99_latency_ms"]) * 1000, serverCpu, loadgenCpu / wall, 0,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ----------------------------------------------------------------------- PostgreSQL

_PG_SCRIPTS = {
    "put": (
        "\\set n random(0, :keys - 1)\n"
        "INSERT INTO documents (key, id, etag, body) "
        "VALUES ('bench/' || :n, 'bench/' || :n, nextval('etags'), convert_to(:body, 'UTF8')) "
        "ON CONFLICT (key) DO UPDATE SET etag = excluded.etag, body = excluded.body;\n"
    ),
    "get": (
        "\\set n random(0, :keys - 1)\n"
        "SELECT id, etag, body FROM documents WHERE key = 'bench/' || :n;\n"
    ),
    "include": (
        "\\set n random(0, :keys - 1)\n"
        "SELECT d.id, d.etag, d.body, r.id, r.etag, r.body FROM documents d "
        "LEFT JOIN documents r ON r.key = (convert_from(d.body, 'UTF8')::jsonb ->> 'Ref') "
        "WHERE d.key = 'bench/' || :n;\n"
    ),
}


class Postgres:
    """A throwaway PostgreSQL 15 cluster, TLS with client certificates."""

    name = "postgresql"

    def __init__(self, workdir: str, tls: TLSFiles, body: bytes, ref: bytes, keys: int,
                 serverCpu: int | None, clientCpu: int | None) -> None:
        for tool in ("initdb", "postgres", "psql", "pgbench"):
            if not os.path.exists(os.path.join(PG_BIN, tool)):
                raise ReferenceError(f"{PG_BIN}/{tool} is missing (apt-get install -y postgresql-15)")
        self.workdir = workdir
        self.body = body
        self.keys = keys
        self.clientCpu = clientCpu
        self.proc: subprocess.Popen | None = None
        self.postmaster: int | None = None
        # Its own directory: initdb refuses root, so the cluster belongs to nobody.
        self.dir = tempfile.mkdtemp(prefix="proto-bench-pg-")
        asRoot = os.geteuid() == 0
        self._runAs: list[str] = ["runuser", "-u", "nobody", "--"] if asRoot else []
        for name in ("serverCert", "serverKey", "ca"):
            shutil.copy(getattr(tls, name), os.path.join(self.dir, os.path.basename(getattr(tls, name))))
        if asRoot:
            nobody = pwd.getpwnam("nobody")
            for path in [self.dir, *(os.path.join(self.dir, f) for f in os.listdir(self.dir))]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        data = os.path.join(self.dir, "data")
        r = subprocess.run(
            [*self._runAs, f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "proto", "-E", "UTF8",
             "--no-locale", "--no-sync"], capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise ReferenceError(f"initdb failed: {r.stderr.strip()[-1000:]}")
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n")
        self.port = _freePort()
        self.log = os.path.join(self.dir, "postgres.log")
        logf = open(self.log, "wb")
        if asRoot:
            os.chown(self.log, nobody.pw_uid, nobody.pw_gid)
        self.proc = subprocess.Popen(
            [*self._runAs, f"{PG_BIN}/postgres", "-D", data, "-k", self.dir, "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "synchronous_commit=on", "-c", "fsync=on",
             "-c", "ssl=on", "-c", f"ssl_cert_file={self.dir}/server.pem",
             "-c", f"ssl_key_file={self.dir}/server.key", "-c", f"ssl_ca_file={self.dir}/ca.pem",
             "-c", "max_connections=120"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=_pinTo(serverCpu),
        )
        logf.close()
        self.env = dict(os.environ, PGSSLMODE="require", PGSSLCERT=tls.clientCert, PGSSLKEY=tls.clientKey,
                        PGSSLROOTCERT=tls.ca, PGUSER="proto", PGDATABASE="postgres")
        try:
            self.postmaster = self._waitReady(data)
            self._populate(body, ref, keys)
        except BaseException:
            self.stop()
            raise

    def _populate(self, body: bytes, ref: bytes, keys: int) -> None:
        self._psql(
            "CREATE TABLE documents (key text PRIMARY KEY, id text NOT NULL, etag bigint NOT NULL, "
            "body bytea NOT NULL); CREATE SEQUENCE etags;"
            "INSERT INTO documents SELECT 'bench/' || g, 'bench/' || g, nextval('etags'), "
            "convert_to(:'body', 'UTF8') FROM generate_series(0, :keys - 1) g;"
            "INSERT INTO documents VALUES ('bench/ref', 'bench/ref', nextval('etags'), "
            "convert_to(:'ref', 'UTF8')); VACUUM ANALYZE documents; CHECKPOINT;",
            body=body.decode(), ref=ref.decode(), keys=str(keys),
        )

    def _psql(self, sql: str, **variables: str) -> str:
        argv = [f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port)]
        for k, v in variables.items():
            argv += ["-v", f"{k}={v}"]
        r = subprocess.run(argv, input=sql, capture_output=True, text=True, env=self.env)
        if r.returncode != 0:
            raise ReferenceError(f"psql failed: {r.stderr.strip()[-1000:]}")
        return r.stdout

    def _waitReady(self, data: str) -> int:
        deadline = time.monotonic() + 30
        pidFile = os.path.join(data, "postmaster.pid")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ReferenceError(f"postgres exited: {open(self.log, errors='replace').read()[-2000:]}")
            try:
                with open(pidFile) as f:
                    lines = f.read().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return int(lines[0])
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise ReferenceError("postgres was not ready within 30 s")

    def cpu(self) -> float:
        own, reaped = _procTimes(self.postmaster)
        total = own + reaped
        for child in _children(self.postmaster):
            try:
                total += _procTimes(child)[0]
            except OSError:
                pass
        return total

    def conninfo(self, dbname: str = "postgres") -> str:
        """Our server's C{--store} value for this cluster (its Unix socket, no TLS)."""
        return f"postgresql:host={self.dir} port={self.port} user=proto dbname={dbname}"

    def createDatabase(self, name: str) -> str:
        """
        A new database on this cluster, for a second server of ours (the
        'before' of --baseline): its own, so that neither server's
        listener reads the other's change log.
        """
        self._psql(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)

    def settle(self) -> None:
        """Wait until the backends of clients that closed have exited (and were reaped)."""
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and any(
            _state(child) == "Z" for child in _children(self.postmaster)
        ):
            time.sleep(0.02)

    def _settle(self, baseline: int) -> None:
        """Wait until the benchmark's backends have exited (and were reaped)."""
        deadline = time.monotonic() + 5
        while len(_children(self.postmaster)) > baseline and time.monotonic() < deadline:
            time.sleep(0.05)

    def _bench(self, kind: str, clients: int, seconds: float, log: bool) -> tuple[str, float, float, float, str]:
        script = os.path.join(self.workdir, f"pg-{kind}.sql")
        with open(script, "w") as f:
            f.write(_PG_SCRIPTS[kind])
        logDir = tempfile.mkdtemp(dir=self.workdir, prefix=f"pg-{kind}-{clients}-")
        argv = [f"{PG_BIN}/pgbench", "-n", "-M", "prepared", "-h", "127.0.0.1", "-p", str(self.port),
                "-c", str(clients), "-j", "1", "-T", str(max(1, round(seconds))), "-f", script,
                "-D", f"keys={self.keys}", "-D", f"body={self.body.decode()}"]
        if log:
            argv += ["-l", "--log-prefix", os.path.join(logDir, "log")]
        baseline = len(_children(self.postmaster))
        cpu0, lg0 = self.cpu(), _childCpu()
        out, err, wall, rc = runClient(argv, self.clientCpu, seconds + 120, env=self.env)
        self._settle(baseline)
        cpu1, lg1 = self.cpu(), _childCpu()
        if rc != 0:
            raise ReferenceError(f"pgbench failed ({rc}): {err.strip()[-800:]}")
        return out, wall, cpu1 - cpu0, lg1 - lg0, logDir

    def measure(self, label: str, kind: str, clients: int, seconds: float) -> dict:
        self._bench(kind, clients, 1, log=False)  # warm-up
        out, wall, serverCpu, loadgenCpu, logDir = self._bench(kind, clients, seconds, log=True)
        ops = failed = 0
        tps = 0.0
        for line in out.splitlines():
            if line.startswith("number of transactions actually processed:"):
                ops = int(line.split(":")[1].split()[0])
            elif line.startswith("number of failed transactions:"):
                failed = int(line.split(":")[1].split()[0])
            elif line.startswith("tps ="):
                tps = float(line.split("=")[1].split()[0])
        latencies: list[float] = []
        for name in os.listdir(logDir):
            with open(os.path.join(logDir, name)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        latencies.append(float(parts[2]))
        shutil.rmtree(logDir, ignore_errors=True)
        latencies.sort()
        # pgbench's tps excludes connection time; the CPU covers the whole
        # run, so divide it by every transaction the run processed.
        return _result(self.name, label, ops, wall, tps, _percentile(latencies, 0.5),
                       _percentile(latencies, 0.99), serverCpu, loadgenCpu / wall, failed)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Signal the postmaster itself: runuser, our child, does not
            # pass signals on. SIGINT is PostgreSQL's fast shutdown.
            try:
                if self.postmaster is None:
                    raise OSError("no postmaster pid yet")
                os.kill(self.postmaster, signal.SIGINT)
            except OSError:
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- driver

SYSTEMS: dict[str, Any] = {"redis": Redis, "postgresql": Postgres}


def startReferences(names: list[str], workdir: str, body: bytes, ref: bytes, keys: int,
                    serverCpu: int | None, clientCpu: int | None) -> tuple[list[Any], list[dict]]:
    """Start (and fill) each named system; returns those running and the failures."""
    tls = TLSFiles(os.path.join(workdir, "ref-tls"))
    running: list[Any] = []
    failures: list[dict] = []
    for name in names:
        print(f"[reference] {name}: starting", flush=True)
        try:
            running.append(SYSTEMS[name](workdir, tls, body, ref, keys, serverCpu, clientCpu))
        except ReferenceError as e:
            print(f"  {name}: cannot run: {e}", flush=True)
            failures.append({"system": name, "row": None, "failed": str(e)})
    return running, failures


def measureRow(systems: list[Any], label: str, kind: str, clients: int, seconds: float) -> list[dict]:
    """One row on every running reference system."""
    results = []
    for system in systems:
        print(f"[reference] {system.name}: {label}", flush=True)
        try:
            r = system.measure(label, kind, clients, seconds)
        except ReferenceError as e:
            print(f"  {system.name}: FAILED: {e}", flush=True)
            results.append({"system": system.name, "row": label, "failed": str(e)})
            continue
        print(f"  {system.name}  {json.dumps(r)}", flush=True)
        results.append(r)
    return results


def stopReferences(systems: list[Any]) -> None:
    for system in systems:
        system.stop()


def runReferences(names: list[str], workdir: str, body: bytes, ref: bytes, keys: int, seconds: float,
                  serverCpu: int | None, clientCpu: int | None, rows=ROWS) -> list[dict]:
    """Start the named systems, measure every row on each, stop them."""
    systems, results = startReferences(names, workdir, body, ref, keys, serverCpu, clientCpu)
    try:
        for label, kind, clients in rows:
            results += measureRow(systems, label, kind, clients, seconds)
    finally:
        stopReferences(systems)
    return results


def fromLoadgen(label: str, r: dict, serverCpuPerWall: float, wall: float,
                dbCpuPerWall: float | None = None, system: str = "ours") -> dict:
    """
    One of our rows (bench/loadgen's JSON) in the references' shape. With
    C{dbCpuPerWall} (ours on PostgreSQL): the database's CPU is added to
    the server's, and also kept apart (C{db_cpu_us_per_op}).
    """
    ops = r.get("replies_total") or r["requests"]
    serverCpu = serverCpuPerWall * wall
    extra = None
    if dbCpuPerWall is not None:
        extra = {"own_cpu_us_per_op": serverCpu / ops * 1e6 if ops else None,
                 "db_cpu_us_per_op": dbCpuPerWall * wall / ops * 1e6 if ops else None}
        serverCpu += dbCpuPerWall * wall
    return _result(system, label, ops, wall, r["req_per_s"], r["p50_us"], r["p99_us"],
                   serverCpu, r["loadgen_cpu"], r["errors"], extra)


def printComparison(results: list[dict], printTable: Callable, fmtNum: Callable) -> None:
    """The store table: every system on every row, ours against each reference."""
    byRow: dict[str, dict[str, dict]] = {}
    for r in results:
        if r.get("row"):
            byRow.setdefault(r["row"], {})[r["system"]] = r
    systems = [s for s in ("ours", "before", "redis", "postgresql")
               if any(s in v for v in byRow.values())]
    rows = []
    lowerBound = False
    for label, _, _ in ROWS:
        found = byRow.get(label, {})
        for system in systems:
            r = found.get(system)
            if r is None:
                continue
            if "failed" in r:
                rows.append([label, system, "FAILED", "—", "—", "—", "—", "—", "—"])
                continue
            ratios = []
            ours = found.get("ours")
            for ref in ("redis", "postgresql", *(("before",) if "before" in systems else ())):
                other = found.get(ref)
                if system == "ours" and other and "failed" not in other and other["ops_per_s"]:
                    ratios.append(f"{ours['ops_per_s'] / other['ops_per_s']:.2f}")
                else:
                    ratios.append("")
            saturated = r["loadgen_cpu"] >= SATURATED
            lowerBound |= saturated
            rows.append([
                label if system == systems[0] else "", system, fmtNum(r["ops_per_s"]),
                " / ".join(ratios) if system == "ours" else "",
                fmtNum(r["p50_us"], " us"), fmtNum(r["p99_us"], " us"),
                fmtNum(r["cpu_us_per_op"], " us") + (
                    f" ({fmtNum(r['own_cpu_us_per_op'])} + {fmtNum(r['db_cpu_us_per_op'])} db)"
                    if r.get("db_cpu_us_per_op") is not None else ""),
                f"{r['loadgen_cpu']:.2f}" + (" (lower bound)" if saturated else ""),
                str(r["errors"]),
            ])
    print()
    print("Document store against the references (1 KiB JSON documents, durable writes everywhere)")
    printTable(["row", "system", "ops/s", "ours/redis / ours/pg" + (" / ours/before" if "before" in systems else ""),
                "p50", "p99", "server CPU/op",
                "loadgen CPU", "errors"], rows)
    print("server CPU/op: the server's user+sys CPU over the whole run / operations in it "
          "(PostgreSQL: postmaster + its processes; ours on PostgreSQL: ours + the cluster's, "
          "'(ours + db)').")
    print(f"loadgen CPU: the load generator's own CPU seconds per wall second; >= {SATURATED} marks it "
          "saturated, and then that row is a lower bound for that server.")
    if lowerBound:
        print("NOTE: at least one row's load generator was saturated (marked 'lower bound').")
    targets = []
    for label, kind, clients in ROWS:
        found = byRow.get(label, {})
        ours, pg = found.get("ours"), found.get("postgresql")
        if ours and pg and "failed" not in ours and "failed" not in pg and pg["ops_per_s"]:
            ratio = ours["ops_per_s"] / pg["ops_per_s"]
            targets.append([f"{label}: ours >= 1.0 x PostgreSQL", f"{ratio:.2f}", "ok" if ratio >= 1.0 else "BELOW"])
        if ours and "failed" not in ours:
            if kind == "get" and clients == 1:
                v = ours["cpu_us_per_op"]
                targets.append([f"{label}: server CPU <= 50 us", fmtNum(v, " us"), "ok" if v <= 50 else "ABOVE"])
            if kind == "put" and clients == 50:
                v = ours["cpu_us_per_op"]
                targets.append([f"{label}: server CPU <= 30 us", fmtNum(v, " us"), "ok" if v <= 30 else "ABOVE"])
    if targets:
        print()
        printTable(["target (issue 13)", "measured", "verdict"], targets)
