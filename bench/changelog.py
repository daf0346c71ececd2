"""
The change-log benchmark (issue 7): what the durable change log costs and
what WATCH on it delivers. A benchmark, not a test: it prints figures.

    flock /work/bench.lock python bench/changelog.py            # ~3-4 min
    python bench/changelog.py --seconds 10 --repeat 3 --catchup 100000

Rows:
  - PUT/s (1 KiB documents) at 1 and 50 clients, ours beside the release
    before the log (commit af61e5b, installed into its own virtualenv:
    --ref-venv, made on first use with `git archive` + `pip install`),
    measured in the same run, alternating; target: ours >= 0.85 x before.
  - catch-up: one watcher, `WATCH bench/` with `Since: 0` over a store
    holding --catchup changes; changes pushed per second, OK to last push.
  - push latency p50/p99, same process and across two processes (two
    `twistd proto` on one data directory): a writer PUTs one document at a
    time; commit happens between the PUT being sent and its OK, so the
    time from commit to the watcher lies between (push - OK) and
    (push - sent); both are printed.
  - fan-out: PUT/s at 50 clients with 200 watchers on the written prefix
    (bench/loadgen --mode idle --watch: 200 connections that WATCH and read
    every push), as a ratio of PUT/s with none;
    target >= 0.25 (the release before the log: about 0.05-0.08). The
    watchers that the server dropped (too slow to read) are counted.

The load generator is bench/loadgen (see bench/README.md); the servers are
real `twistd -n proto` processes on 127.0.0.1. The machine has 2 cores
and other work may run: figures are noisy; --repeat takes the best run.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, ROOT)

import run  # noqa: E402  (bench/run.py: loadgen, Server, helpers)

REFERENCE_COMMIT = "af61e5b"


# --------------------------------------------------------------------- clients


def tlsConnect(port: int, dataDir: str) -> ssl.SSLSocket:
    """An admitted raw TLS connection (greeting read)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(os.path.join(dataDir, "client.pem"), os.path.join(dataDir, "client.key"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = context.wrap_socket(raw)
    greeting = b""
    while not greeting.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise RuntimeError("no greeting")
        greeting += chunk
    if greeting != b"OK\r\n":
        raise RuntimeError(f"refused: {greeting!r}")
    return sock


def request(command: str, sequence: str, headers=(), body: bytes | None = None) -> bytes:
    from proto import wire

    return wire.encodeRequest(command.split()[0], command.split()[1:], sequence, headers, body)


class Framed:
    """A connection and its reply parser (low-volume use)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        from proto import wire

        self.sock = sock
        self.parser = wire.ReplyParser(expectGreeting=False)
        self.frames: list = []

    def read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed")
        self.frames += self.parser.feed(data)
        while self.sock.pending():
            self.frames += self.parser.feed(self.sock.recv(65536))

    def next(self):
        while not self.frames:
            self.read()
        return self.frames.pop(0)


# ------------------------------------------------------------------- measuring


def startServer(name: str, python: str, dataDir: str, workdir: str, pinning: bool, root: str,
                extra: list[str] = ()) -> run.Server:
    port = run.freePort()
    argv = [python, "-c", run.TWISTD, "--pidfile=", "-n", "proto", "--data-dir", dataDir,
            "--listen", f"tcp:{port}:interface=127.0.0.1", *extra]
    return run.Server(name, argv, port, workdir, pinning, root=root)


def ensureReference(venv: str, source: str) -> str:
    """The release before the log, installed into its own virtualenv."""
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python):
        return python
    print(f"making the reference: {REFERENCE_COMMIT} into {venv} (once)", flush=True)
    os.makedirs(source, exist_ok=True)
    archive = subprocess.run(["git", "-C", ROOT, "archive", REFERENCE_COMMIT], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", source], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", source], check=True)
    return python


def putRate(server: run.Server, dataDir: str, bodyFile: str, clients: int, a) -> dict:
    args = ["-c", str(clients), "-d", "1", "--command", "PUT bench/%d", "--body-file", bodyFile,
            "--keys", "1000", "-t", str(a.seconds), "--warmup", str(min(1.0, a.seconds / 5))]
    return run.runLoadgen(server, dataDir, args, a.pin, a.seconds + 120)


def populate(server: run.Server, dataDir: str, bodyFile: str, count: int, a) -> None:
    # -t: loadgen stops at -t seconds (default 5) even before -n requests.
    args = ["-n", str(count), "-t", "1800", "-c", "50", "-d", "4", "--command", "PUT bench/%d",
            "--body-file", bodyFile, "--keys", str(count)]
    r = run.runLoadgen(server, dataDir, args, a.pin, 1800)
    print(f"  populated: {r['requests']} PUTs ({r['errors']} errors)", flush=True)


def currentEtag(port: int, dataDir: str) -> int:
    conn = Framed(tlsConnect(port, dataDir))
    conn.sock.sendall(request("GET bench/0", "g"))
    frame = conn.next()
    conn.sock.close()
    return int(frame.headers["etag"])


def catchUp(server: run.Server, dataDir: str, expected: int) -> dict:
    """One watcher, Since 0: pushes per second from OK to the last push."""
    sock = tlsConnect(server.port, dataDir)
    sock.sendall(request("WATCH bench/", "c", [("Since", "0")]))
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    t0 = time.monotonic()
    head, _, rest = buffer.partition(b"\r\n\r\n")
    pushes = rest.count(b"PUSH\r\n")
    tail = rest[-12:]
    last = f'"Etag": {expected}}}'.encode()
    seen = last in rest
    while not seen:
        data = sock.recv(1 << 20)
        if not data:
            raise RuntimeError("catch-up connection closed")
        joined = tail + data
        pushes += joined.count(b"PUSH\r\n") - tail.count(b"PUSH\r\n")
        seen = last in joined
        tail = joined[-24:]
    seconds = time.monotonic() - t0
    sock.close()
    return {"pushes": pushes, "seconds": seconds, "per_s": pushes / seconds}


def latency(writerPort: int, watcherPort: int, dataDir: str, count: int) -> dict:
    """PUT one at a time on one server, watch on another (or the same)."""
    watcher = Framed(tlsConnect(watcherPort, dataDir))
    watcher.sock.sendall(request("WATCH lat/", "w"))
    assert watcher.next().kind == "OK"
    writer = Framed(tlsConnect(writerPort, dataDir))
    selector = selectors.DefaultSelector()
    selector.register(watcher.sock, selectors.EVENT_READ, watcher)
    selector.register(writer.sock, selectors.EVENT_READ, writer)
    fromSent, fromOk = [], []
    for n in range(count):
        t0 = time.monotonic()
        writer.sock.sendall(request(f"PUT lat/{n % 10}", f"p{n}", body=b'{"n": %d}' % n))
        tOk = tPush = None
        while tOk is None or tPush is None:
            for key, _ in selector.select(10):
                conn = key.data
                conn.read()
                now = time.monotonic()
                while conn.frames:
                    frame = conn.frames.pop(0)
                    if conn is writer and frame.kind == "OK":
                        tOk = now
                    elif conn is watcher and frame.kind == "PUSH":
                        tPush = now
            if tOk is None and tPush is None and time.monotonic() - t0 > 10:
                raise RuntimeError("no reply or push within 10 s")
        fromSent.append(tPush - t0)
        fromOk.append(tPush - tOk)
    watcher.sock.close()
    writer.sock.close()

    def pct(values, p):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3

    return {
        "sent_p50_ms": pct(fromSent, 50), "sent_p99_ms": pct(fromSent, 99),
        "ok_p50_ms": pct(fromOk, 50), "ok_p99_ms": pct(fromOk, 99),
        "ok_mean_ms": statistics.mean(fromOk) * 1e3,
    }


def processCpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process C{pid}."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fanOut(server: run.Server, dataDir: str, bodyFile: str, watchers: int, a,
           profile: str | None = None) -> tuple[dict, dict]:
    """
    PUT/s at 50 clients while WATCHERS connections each WATCH bench/ and
    read every push (bench/loadgen --mode idle --watch, C, one thread).
    The result carries the reader's CPU over the PUT run ("reader_cpu",
    1.0 = one core): a reader near 1.0 cannot take more, so the row is
    then a lower bound of what the server can fan out.
    """
    argv = run.loadgenArgv(dataDir, server.port, "--mode", "idle", "--watch", "-c", str(watchers),
                           "--command", "WATCH bench/", "--hold", "600")
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.pin(child.pid, run.LOADGEN_CPU, a.pin)
    spy = None
    try:
        ready = json.loads(child.stdout.readline())
        assert ready.get("event") == "admitted", ready
        time.sleep(0.5)  # the WATCH replies
        if profile:
            spy = run.pySpy(server.proc.pid, a.seconds + 1, profile, 200)
        cpu0, t0 = processCpu(child.pid), time.monotonic()
        result = putRate(server, dataDir, bodyFile, 50, a)
        result["reader_cpu"] = (processCpu(child.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
        if spy is not None:
            spy.wait(60)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    done = json.loads(lines[-1]) if lines else {"pushes": -1, "dropped": -1, "error": err.strip()}
    return result, done


def fanOutRows(servers: dict, dirs: dict, bodyFile: str, a) -> list:
    """
    The fan-out ratio per server: the base (no watcher) and the watcher
    runs alternate, --repeat times each, measured by the same PUT run;
    the best of each is kept.
    """
    rows = []
    for name in servers:
        if name not in ("ours", "before"):
            continue
        none: dict = {"req_per_s": 0.0}
        withW: dict = {"req_per_s": 0.0}
        stats: dict = {}
        for attempt in range(a.repeat):
            r = putRate(servers[name], dirs[name], bodyFile, 50, a)
            print(f"  fan-out {name}: no watcher {r['req_per_s']:.0f}/s (server CPU "
                  f"{r['server_cpu']:.2f}, PUT loadgen CPU {r['loadgen_cpu']:.2f})", flush=True)
            if r["req_per_s"] > none["req_per_s"]:
                none = r
            profile = a.profile if (name == "ours" and attempt == a.repeat - 1) else None
            w, s = fanOut(servers[name], dirs[name], bodyFile, a.watchers, a, profile)
            print(f"  fan-out {name}: {a.watchers} watchers {w['req_per_s']:.0f}/s (server CPU "
                  f"{w['server_cpu']:.2f}, PUT loadgen CPU {w['loadgen_cpu']:.2f}, reader CPU "
                  f"{w['reader_cpu']:.2f}); read {s.get('pushes')} pushes, {s.get('dropped')} "
                  f"connections dropped", flush=True)
            if w["req_per_s"] > withW["req_per_s"]:
                withW, stats = w, s
        rows.append((f"fan-out {name}: PUT/s 50 clients, {a.watchers} watchers / none "
                     f"({stats.get('dropped')} dropped; reader CPU {withW['reader_cpu']:.2f})",
                     f"{fmt(withW['req_per_s'])} / {fmt(none['req_per_s'])}", "—",
                     f"{withW['req_per_s'] / none['req_per_s']:.2f}", ">= 0.25"))
        # The same runs by server CPU per PUT: less sensitive to the server
        # not getting a whole core on a shared machine (information).
        cpuNone = none["server_cpu"] / none["req_per_s"] * 1e6
        cpuWith = withW["server_cpu"] / withW["req_per_s"] * 1e6
        rows.append((f"fan-out {name}: server CPU us per PUT, none / {a.watchers} watchers",
                     f"{cpuNone:.0f} / {cpuWith:.0f}", "—", f"{cpuNone / cpuWith:.2f}",
                     "(information)"))
    return rows


# ----------------------------------------------------------------------- main


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description="Change-log benchmark (issue 7)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per PUT row")
    p.add_argument("--repeat", type=int, default=2, help="runs per server per PUT row (best shown)")
    p.add_argument("--catchup", type=int, default=100_000, help="changes replayed by the catch-up row")
    p.add_argument("--watchers", type=int, default=200, help="watchers of the fan-out row")
    p.add_argument("--latency-count", type=int, default=300, help="PUTs per latency row")
    p.add_argument("--ref-venv", default=os.path.join(tempfile.gettempdir(), "proto-ref-af61e5b", ".venv"),
                   help="virtualenv with the release before the log (made if missing)")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--rows", default="put,fanout,catchup,latency",
                   help="comma-separated rows to run (put,fanout,catchup,latency); e.g. --rows fanout "
                        "while working on fan-out")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="no server of the release before the log (and so no PUT row)")
    p.add_argument("--profile", metavar="FILE",
                   help="py-spy (raw, folded stacks) of our server during the last fan-out run with "
                        "watchers (needs py-spy in this venv)")
    a = p.parse_args()
    a.rows = set(a.rows.split(","))
    if a.pin and (os.cpu_count() or 1) < 2:
        a.pin = False

    run.buildLoadgen()
    run.raiseFileLimit()
    refPython = ensureReference(a.ref_venv, os.path.dirname(a.ref_venv)) if a.reference else None
    from proto.datadir import bootstrap

    workdir = tempfile.mkdtemp(prefix="proto-bench-changelog-")
    dirs = {name: os.path.join(workdir, name) for name in ("ours", "before")}
    for path in dirs.values():
        bootstrap(path)
    bodyFile, _ = run.writeBodies(workdir)

    print("change-log benchmark (issue 7)")
    print(f"  {os.cpu_count()} CPUs; pinning {'on' if a.pin else 'off'}; {a.seconds:g} s per PUT row, "
          f"best of {a.repeat}; reference: {REFERENCE_COMMIT} in {a.ref_venv}; work dir {workdir}")
    print("  (a shared 2-core machine: figures are noisy)", flush=True)
    servers = {
        "ours": startServer("ours", sys.executable, dirs["ours"], workdir, a.pin, ROOT),
    }
    if a.reference:
        servers["before"] = startServer("before", refPython, dirs["before"], workdir, a.pin, workdir)
    rows = []
    try:
        # 1. PUT/s beside the release before the log.
        for clients in ((1, 50) if "put" in a.rows and "before" in servers else ()):
            best = {"ours": 0.0, "before": 0.0}
            for attempt in range(a.repeat):
                order = ("ours", "before") if attempt % 2 == 0 else ("before", "ours")
                for name in order:
                    r = putRate(servers[name], dirs[name], bodyFile, clients, a)
                    print(f"  PUT {clients}x1 {name}: {r['req_per_s']:.0f}/s (errors {r['errors']})", flush=True)
                    best[name] = max(best[name], r["req_per_s"])
            rows.append((f"PUT 1 KiB/s, {clients} client(s)", fmt(best["ours"]), fmt(best["before"]),
                         f"{best['ours'] / best['before']:.2f}", ">= 0.85"))
        # 4. fan-out (before the store grows: same store size for both figures).
        if "fanout" in a.rows:
            rows += fanOutRows(servers, dirs, bodyFile, a)
        ours = servers["ours"]
        # 2. catch-up.
        if "catchup" in a.rows:
            populate(ours, dirs["ours"], bodyFile, a.catchup, a)
            expected = currentEtag(ours.port, dirs["ours"])
            r = catchUp(ours, dirs["ours"], expected)
            rows.append((f"catch-up: changes pushed/s (Since 0, {r['pushes']:,} changes)",
                         fmt(r["per_s"]), "—", "—", "(information)"))
        # 3. latency: same process, then across two processes.
        if "latency" in a.rows:
            same = latency(ours.port, ours.port, dirs["ours"], a.latency_count)
            second = startServer("ours-2", sys.executable, dirs["ours"], workdir, a.pin, ROOT)
            servers["ours-2"] = second
            cross = latency(ours.port, second.port, dirs["ours"], a.latency_count)
            for label, r in (("same process", same), ("across processes", cross)):
                rows.append((f"push latency {label}: PUT OK -> push, p50 / p99 ms",
                             f"{r['ok_p50_ms']:.2f} / {r['ok_p99_ms']:.2f}", "—", "—",
                             "(commit -> push >= this)"))
                rows.append((f"push latency {label}: PUT sent -> push, p50 / p99 ms",
                             f"{r['sent_p50_ms']:.2f} / {r['sent_p99_ms']:.2f}", "—", "—",
                             "(commit -> push <= this)"))
    finally:
        for server in servers.values():
            server.stop()

    print()
    headers = ("row", "ours", "before the log", "ratio", "target")
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(5)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print(f"\n(command: flock /work/bench.lock {sys.executable} bench/changelog.py "
          f"--seconds {a.seconds:g} --repeat {a.repeat} --catchup {a.catchup} --watchers {a.watchers}"
          f" --rows {','.join(sorted(a.rows))}{'' if a.reference else ' --no-reference'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
