"""
Scale-out figures (issue 8), in one run, side by side:

  1. ECHO req/s at 16 x 16 and 50 x 1, and PUT/s at 50 clients, with
     1 worker and with N workers (--workers N; default 2);
  2. PUT/s and GET+Include/s on SQLite and on PostgreSQL, at 1 and 50
     clients (one server process);
  3. cross-process push latency, p50/p99: a WATCH on one process, PUTs
     through another (SQLite: two workers on one file; PostgreSQL: two
     servers on one database), and the same-process latency beside it.

    flock /work/bench.lock python bench/scaleout.py [--seconds 5] [--workers 2]

It reuses bench/run.py (server processes, the C load generator bench/loadgen)
and tests/pgsupport.py (a throwaway PostgreSQL cluster, here with fsync ON,
synchronous_commit on: an OK is as durable as on SQLite with
synchronous=FULL). This is a benchmark, not a test: it prints figures.

Nothing is pinned to a CPU: N workers must be free to use the cores, and
the load generator shares them. On a 2-core machine that means the
figures show how the work spreads, not how it scales: with 2 workers the
load generator takes CPU from the servers, so "2 workers" can be slower
than 1 for cheap requests (ECHO), and gains show only where a single
process is the bottleneck. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, ROOT)

import run  # noqa: E402  (bench/run.py)

from proto import datadir, wire  # noqa: E402


class TreeServer(run.Server):
    """A server whose CPU is that of its whole process tree (the workers')."""

    def cpuSeconds(self) -> float:
        total = 0.0
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
        return total

    def _tree(self) -> list[int]:
        pids, parents = [self.proc.pid], {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    pass
        frontier = [self.proc.pid]
        while frontier:
            children = [pid for pid, parent in parents.items() if parent in frontier]
            pids += children
            frontier = children
        return pids


def startServer(name: str, workdir: str, dataDir: str, extra: list[str]) -> TreeServer:
    port = run.freePort()
    argv = [sys.executable, "-c", run.TWISTD, "--pidfile=", "-n", "proto", "--data-dir", dataDir,
            "--listen", f"tcp:{port}:interface=127.0.0.1", *extra]
    server = TreeServer(name, argv, port, workdir, pinning=False)
    if "--workers" in extra:  # every worker listening before we measure
        count = int(extra[extra.index("--workers") + 1])
        deadline = time.monotonic() + 60
        while run.tail(server.log, 10_000).count(f"starting on {port}") < count:
            if time.monotonic() > deadline or not server.alive():
                raise RuntimeError(f"{name}: workers did not start:\n{run.tail(server.log)}")
            time.sleep(0.1)
    return server


def loadgen(server, dataDir: str, args: list[str], seconds: float) -> dict | None:
    try:
        return run.runLoadgen(server, dataDir, args, False, seconds + 90)
    except run.LoadgenError as e:
        print(f"  FAILED: {e}", flush=True)
        return None


# -- push latency -------------------------------------------------------------------------


class Client:
    """A small blocking GNP/1 client (standard-library ssl)."""

    def __init__(self, port: int, dataDir: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(os.path.join(dataDir, datadir.SERVER_CERT))
        context.load_cert_chain(os.path.join(dataDir, datadir.CLIENT_CERT),
                                os.path.join(dataDir, datadir.CLIENT_KEY))
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.localPort = raw.getsockname()[1]
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.parser = wire.ReplyParser()
        self.pending: list = []
        assert self.next().ok

    def next(self):
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def send(self, command: str, *args: str, sequence: str = "1", body: bytes | None = None) -> None:
        self.sock.sendall(wire.encodeRequest(command, list(args), sequence, (), body))

    def close(self) -> None:
        self.sock.close()


def pushLatency(watcherServer, writerServer, dataDir: str, count: int, pick=None) -> dict:
    """
    Latency from sending a PUT (through C{writerServer}) to receiving its
    push (on a WATCH through C{watcherServer}), one at a time.

    @param pick: for one multi-worker server: called with (watcher,
        writer) and says whether the pair is on the wanted processes.
    """
    for _ in range(50):
        watcher, writer = Client(watcherServer.port, dataDir), Client(writerServer.port, dataDir)
        if pick is None or pick(watcher, writer):
            break
        watcher.close()
        writer.close()
    else:
        raise RuntimeError("could not place the watcher and the writer as wanted")
    prefix = f"lat{time.monotonic_ns()}/"
    watcher.send("WATCH", prefix, sequence="w")
    assert watcher.next().kind == "OK"
    samples = []
    for n in range(count + 20):
        started = time.perf_counter()
        writer.send("PUT", f"{prefix}{n % 10}", sequence="p", body=b'{"n": %d}' % n)
        push = watcher.next()
        elapsed = time.perf_counter() - started
        assert push.kind == "PUSH", push
        reply = writer.next()
        assert reply.kind == "OK", reply
        if n >= 20:  # warm-up
            samples.append(elapsed * 1e6)
    watcher.close()
    writer.close()
    samples.sort()
    return {"p50_us": statistics.median(samples), "p99_us": samples[int(len(samples) * 0.99) - 1],
            "n": len(samples)}


def workerOf(server, client: Client) -> str | None:
    """Which worker admitted C{client} (from the supervisor's log)."""
    deadline = time.monotonic() + 5
    pattern = re.compile(rf"\[(worker-\d+)\] \S+ Admitted 127\.0\.0\.1:{client.localPort}\b")
    while time.monotonic() < deadline:
        found = pattern.search(run.tail(server.log, 100_000))
        if found:
            return found.group(1)
        time.sleep(0.02)
    return None


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row (default 5)")
    p.add_argument("--workers", type=int, default=2, help="workers to compare with 1 (default 2)")
    p.add_argument("--pushes", type=int, default=300, help="PUTs per push-latency row")
    p.add_argument("--keys", type=int, default=1000, help="distinct document ids")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = p.parse_args()
    run.buildLoadgen()
    run.raiseFileLimit()
    workdir = tempfile.mkdtemp(prefix="proto-scaleout-")
    dataDir = os.path.join(workdir, "data")
    datadir.bootstrap(dataDir, makeServerCert=True)
    warmup = str(min(1.0, a.seconds / 10))
    t = ["-t", str(a.seconds), "--warmup", warmup]
    bodyFile, refFile = run.writeBodies(workdir)
    keys = str(a.keys)
    put = ["--command", "PUT bench/%d", "--body-file", bodyFile, "--keys", keys, *t]
    include = ["--command", "GET bench/%d", "--keys", keys, "--header", "Include: Ref", *t]

    def populate(server) -> None:
        for args in run.populateArgs(keys, bodyFile, refFile):
            loadgen(server, dataDir, args, 120)

    results: dict[str, dict] = {}
    servers = []
    cluster = None
    try:
        # 1. workers -----------------------------------------------------------------
        rows1 = [("ECHO 16x16", ["-c", "16", "-d", "16", *t]), ("ECHO 50x1", ["-c", "50", "-d", "1", *t]),
                 ("PUT 1 KiB, 50 clients", ["-c", "50", "-d", "1", *put])]
        for count in (1, a.workers):
            label = f"{count} worker{'s' if count > 1 else ''}"
            store = f"sqlite:{os.path.join(workdir, f'workers{count}.sqlite3')}"
            server = startServer(f"w{count}", workdir, dataDir, ["--workers", str(count), "--store", store])
            servers.append(server)
            for row, args in rows1:
                print(f"[{label}] {row}", flush=True)
                results[(row, label)] = loadgen(server, dataDir, args, a.seconds)
            if count > 1:
                def split(watcher, writer, server=server):
                    w, r = workerOf(server, watcher), workerOf(server, writer)
                    return w is not None and r is not None and w != r
                print(f"[{label}] push latency across workers (SQLite doorbell)", flush=True)
                results[("push", "sqlite-cross")] = pushLatency(server, server, dataDir, a.pushes, split)
            else:
                print(f"[{label}] push latency, same process", flush=True)
                results[("push", "sqlite-same")] = pushLatency(server, server, dataDir, a.pushes)
            server.stop()

        # 2. SQLite vs PostgreSQL ------------------------------------------------------------
        from tests.pgsupport import PostgresCluster

        cluster = PostgresCluster(fsync=True)
        cluster.start()
        conninfo = cluster.createDatabase()
        rows2 = [("PUT 1 KiB, 1 client", ["-c", "1", "-d", "1", *put]),
                 ("PUT 1 KiB, 50 clients", ["-c", "50", "-d", "1", *put]),
                 ("GET + Include, 1 client", ["-c", "1", "-d", "1", *include]),
                 ("GET + Include, 50 clients", ["-c", "50", "-d", "1", *include])]
        for label, store in (("SQLite", f"sqlite:{os.path.join(workdir, 'store.sqlite3')}"),
                             ("PostgreSQL", f"postgresql:{conninfo}")):
            server = startServer(label, workdir, dataDir, ["--store", store])
            servers.append(server)
            populate(server)
            for row, args in rows2:
                print(f"[{label}] {row}", flush=True)
                results[(row, label)] = loadgen(server, dataDir, args, a.seconds)
            if label == "PostgreSQL":
                print("[PostgreSQL] push latency, same process", flush=True)
                results[("push", "pg-same")] = pushLatency(server, server, dataDir, a.pushes)
                other = startServer("PostgreSQL-2", workdir, dataDir, ["--store", store])
                servers.append(other)
                print("[PostgreSQL] push latency across two servers (NOTIFY doorbell)", flush=True)
                results[("push", "pg-cross")] = pushLatency(server, other, dataDir, a.pushes)
                other.stop()
            server.stop()
    finally:
        for server in servers:
            server.stop()
        if cluster is not None:
            cluster.destroy()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    def rate(key):
        r = results.get(key)
        return "FAILED" if r is None else run.fmtNum(r["req_per_s"])

    def cpu(key):
        r = results.get(key)
        return "—" if r is None else f"{r['loadgen_cpu']:.2f} / {r['server_cpu']:.2f}"

    many = f"{a.workers} workers"
    print()
    print(f"Workers (SQLite), req/s; CPU = loadgen / server (all processes), cores of {os.cpu_count()}")
    table = []
    for row, _ in rows1:
        one, n = results.get((row, "1 worker")), results.get((row, many))
        ratio = f"{n['req_per_s'] / one['req_per_s']:.2f}" if one and n and one["req_per_s"] else "—"
        table.append([row, rate((row, "1 worker")), rate((row, many)), ratio,
                      cpu((row, "1 worker")), cpu((row, many))])
    run.printTable(["row", "1 worker", many, "ratio", "CPU 1", f"CPU {a.workers}"], table)
    print()
    print("Stores (1 process), req/s and p99")
    table = []
    for row, _ in rows2:
        s, g = results.get((row, "SQLite")), results.get((row, "PostgreSQL"))
        table.append([
            row, rate((row, "SQLite")), rate((row, "PostgreSQL")),
            "—" if s is None else run.fmtNum(s["p99_us"], " us"),
            "—" if g is None else run.fmtNum(g["p99_us"], " us"),
            cpu((row, "SQLite")), cpu((row, "PostgreSQL")),
        ])
    run.printTable(["row", "SQLite", "PostgreSQL", "p99 SQLite", "p99 PostgreSQL",
                    "CPU SQLite", "CPU PostgreSQL"], table)
    print()
    print(f"Push latency, PUT sent -> push received, {a.pushes} PUTs one at a time")
    table = []
    for key, what in (("sqlite-same", "SQLite, same process"),
                      ("sqlite-cross", f"SQLite, across workers ({a.workers} workers)"),
                      ("pg-same", "PostgreSQL, same process"),
                      ("pg-cross", "PostgreSQL, across two servers")):
        r = results.get(("push", key))
        table.append([what, "—" if r is None else run.fmtNum(r["p50_us"], " us"),
                      "—" if r is None else run.fmtNum(r["p99_us"], " us")])
    run.printTable(["path", "p50", "p99"], table)
    print()
    print(
        f"Machine: {os.cpu_count()} cores, shared by the load generator and every server process "
        "(nothing pinned); figures are noisy when other work runs."
    )
    return 0 if all(v is not None for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
