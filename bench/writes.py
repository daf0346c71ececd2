"""
The write path (issue 13): PUT throughput, server CPU and context switches
per PUT, this checkout against another one ("before"), side by side in the
same run.

    flock /work/bench.lock python bench/writes.py --baseline /tmp/base
    flock /work/bench.lock python bench/writes.py --seconds 5 --repeat 3 --profile /tmp/prof

Each server gets its own data directory (so the two never share a SQLite
file), is pinned to CPU 0, the load generator to CPU 1 (as in
bench/run.py). Rows: PUT of a 1 KiB JSON object over 1000 ids, with 1 and
with 50 clients (one request in flight each), alternating which server
goes first; the best run of each server is shown. Per row: PUT/s, server
CPU per PUT (its user+sys over the row / PUTs), voluntary + involuntary
context switches per PUT summed over every thread of the server
(/proc/PID/task/*/status), and the mean group-commit batch.

With --profile DIR, py-spy records this checkout's server during each of
its runs (DIR/putCLIENTS-REPEAT.txt, raw collapsed stacks: put50-0.txt is
the first 50-client run); the run's figures are then not comparable with
the baseline's.

The references (Redis, PostgreSQL) are in bench/run.py --store.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import run  # noqa: E402  (bench/run.py: servers, loadgen, pinning)

ROWS = [("PUT 1 KiB, 1 client", 1), ("PUT 1 KiB, 50 clients", 50)]


def contextSwitches(pid: int) -> int:
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def startServer(name: str, root: str, workdir: str, pinning: bool) -> tuple[run.Server, str]:
    dataDir = os.path.join(workdir, f"data-{name}")
    env = dict(os.environ, PYTHONPATH=root)
    subprocess.run(
        [sys.executable, "-c", "import sys; from proto.datadir import bootstrap; bootstrap(sys.argv[1])",
         dataDir], check=True, env=env, cwd=root, capture_output=True,
    )
    port = run.freePort()
    server = run.Server(
        name,
        [sys.executable, "-c", run.TWISTD, "--pidfile=", "-n", "proto", "--data-dir", dataDir,
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--max-connections", "10000"],
        port, workdir, pinning, root=root,
    )
    return server, dataDir


def measure(server: run.Server, dataDir: str, args: list[str], pinning: bool,
            seconds: float, profile: str | None = None) -> dict:
    pid = server.proc.pid
    spy = None
    if profile:
        spy = run.pySpy(pid, seconds + 2, profile, 500, "--threads")
    switches0 = contextSwitches(pid)
    r = run.runLoadgen(server, dataDir, args, pinning, seconds + 90)
    switches1 = contextSwitches(pid)
    if spy is not None:
        spy.wait(60)
    # runLoadgen's server CPU is over the loadgen's whole life (warm-up
    # included), so are the switches: per PUT over the same span.
    total = r["req_per_s"] * r["wall"]
    r["cpu_us_per_put"] = r["server_cpu"] * r["wall"] / total * 1e6 if total else 0
    r["switches_per_put"] = (switches1 - switches0) / total if total else 0
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", help="another checkout of this repository: the 'before' server")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--profile", help="directory for py-spy profiles of this checkout's server")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    a = p.parse_args()
    run.buildLoadgen()
    workdir = tempfile.mkdtemp(prefix="proto-writes-")
    servers: dict[str, tuple[run.Server, str]] = {}
    try:
        servers["after"] = startServer("after", run.ROOT, workdir, a.pin)
        if a.baseline:
            servers["before"] = startServer("before", os.path.abspath(a.baseline), workdir, a.pin)
        bodyFile, _ = run.writeBodies(workdir)
        keys = str(a.keys)
        for server, dataDir in servers.values():
            run.runLoadgen(server, dataDir, ["-n", keys, "-c", "1", "-d", "16", "--command", "PUT bench/%d",
                                             "--body-file", bodyFile, "--keys", keys], a.pin, 120)
        put = ["--command", "PUT bench/%d", "--body-file", bodyFile, "--keys", keys,
               "-t", str(a.seconds), "--warmup", str(min(1.0, a.seconds / 10))]
        if a.profile:
            os.makedirs(a.profile, exist_ok=True)
        table = []
        for label, clients in ROWS:
            best: dict[str, dict] = {}
            names = list(servers)
            for i in range(a.repeat):
                for name in (names if i % 2 == 0 else names[::-1]):
                    server, dataDir = servers[name]
                    prof = None
                    if a.profile and name == "after":
                        prof = os.path.join(a.profile, f"put{clients}-{i}.txt")
                    r = measure(server, dataDir, ["-c", str(clients), "-d", "1", *put], a.pin,
                                a.seconds, prof)
                    print(f"  {label} {name}: {r['req_per_s']:.0f}/s, {r['cpu_us_per_put']:.0f} us CPU/PUT, "
                          f"{r['switches_per_put']:.2f} switches/PUT, p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us, "
                          f"errors {r['errors']}", flush=True)
                    if name not in best or r["req_per_s"] > best[name]["req_per_s"]:
                        best[name] = r
            row = [label]
            for name in names:
                r = best[name]
                row += [f"{r['req_per_s']:,.0f}", f"{r['cpu_us_per_put']:.0f}", f"{r['switches_per_put']:.2f}",
                        f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}"]
            if "before" in best:
                row.append(f"{best['after']['req_per_s'] / best['before']['req_per_s']:.2f}")
            table.append(row)
        headers = ["row"]
        for name in servers:
            headers += [f"{name} PUT/s", "CPU us/PUT", "switches/PUT", "p50 us", "p99 us"]
        if "before" in servers:
            headers.append("after/before")
        run.printTable(headers, table)
        print("CPU and switches: the whole server process (every thread) over the row / PUTs.")
        return 0
    finally:
        for server, _ in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
