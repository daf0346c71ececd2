"""
GET rows side by side (issue 13's read path): our server on SQLite, our
server on PostgreSQL (C{--store postgresql:...}, on the same throwaway
PostgreSQL 15 cluster that bench/references.py starts), optionally our
server from another checkout (C{--baseline DIR}: before/after), and the
references (PostgreSQL driven by pgbench, Redis by redis-benchmark), row
by row so that a busy machine weighs on all of them alike.

    python bench/reads.py --seconds 5                    # every GET row
    python bench/reads.py --baseline /path/to/main/checkout --references postgresql

Each row prints ops/s, p50/p99, and server CPU per operation (for our
servers: the twistd process's user+sys time over the row / operations;
PostgreSQL's backends are not counted in "ours on PostgreSQL").
Run it under C{flock /work/bench.lock} on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import references  # noqa: E402
import run  # noqa: E402

ROWS = [(label, kind, clients) for label, kind, clients in references.ROWS if kind != "put"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--baseline", default=None, help="another checkout of this repository, run as 'before'")
    p.add_argument("--references", default="redis,postgresql",
                   help="comma list of redis, postgresql (always started: ours on PostgreSQL uses it), or none")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    run.buildLoadgen()
    run.raiseFileLimit()
    from proto.datadir import bootstrap

    workdir = tempfile.mkdtemp(prefix="proto-bench-reads-")
    dataDir = os.path.join(workdir, "data")
    bootstrap(dataDir)
    bodyFile, refFile = run.writeBodies(workdir)
    with open(bodyFile, "rb") as f, open(refFile, "rb") as g:
        bodyBytes, refBytes = f.read(), g.read()
    wanted = [n for n in a.references.split(",") if n and n != "none"]
    names = sorted(set(wanted) | {"postgresql"}, key=["postgresql", "redis"].index)
    systems, failures = references.startReferences(
        names, workdir, bodyBytes, refBytes, a.keys,
        run.SERVER_CPU if a.pin else None, run.LOADGEN_CPU if a.pin else None,
    )
    pg = next((s for s in systems if s.name == "postgresql"), None)
    servers: dict[str, run.Server] = {}
    results: list[dict] = list(failures)
    try:
        def twistd(name: str, store: list[str], root: str = run.ROOT) -> None:
            port = run.freePort()
            servers[name] = run.Server(
                name,
                [sys.executable, "-c", run.TWISTD, "--pidfile=", "-n", "proto", "--data-dir", dataDir,
                 "--listen", f"tcp:{port}:interface=127.0.0.1", "--max-connections", "10000", *store],
                port, workdir, a.pin, root=root,
            )

        twistd("ours", [])
        if a.baseline:
            twistd("before", [], os.path.abspath(a.baseline))
        if pg is not None:
            twistd("ours on PostgreSQL",
                   ["--store", f"postgresql:host={pg.dir} port={pg.port} user=proto dbname=postgres"])
        for name in ("ours", "ours on PostgreSQL"):
            if name in servers:
                for args in run.populateArgs(a.keys, bodyFile, refFile):
                    run.runLoadgen(servers[name], dataDir, args, a.pin, 120)
        plain = ["--command", "GET bench/%d", "--keys", str(a.keys), "-t", str(a.seconds),
                 "--warmup", str(min(1.0, a.seconds / 10))]
        shapes = {"get": plain, "include": [*plain, "--header", "Include: Ref"]}
        measured = [s for s in systems if s.name in wanted]
        for label, kind, clients in ROWS:
            for name, server in servers.items():
                print(f"[{name}] {label}", flush=True)
                try:
                    r = run.runLoadgen(server, dataDir, ["-c", str(clients), "-d", "1", *shapes[kind]],
                                       a.pin, a.seconds + 90)
                except run.LoadgenError as e:
                    print(f"  FAILED: {e}", flush=True)
                    results.append({"system": name, "row": label, "failed": str(e)})
                    continue
                result = references.fromLoadgen(label, r, r["server_cpu"], r["wall"])
                result["system"] = name
                results.append(result)
            results += references.measureRow(measured, label, kind, clients, a.seconds)
    finally:
        for server in servers.values():
            server.stop()
        references.stopReferences(systems)
    order = [*servers, *(s.name for s in systems if s.name in wanted)]
    print()
    print("GET rows, side by side (ops/s; server CPU per op; ratio = ops/s against PostgreSQL)")
    table = []
    for label, _, _ in ROWS:
        row = {r["system"]: r for r in results if r.get("row") == label}
        pgRate = row.get("postgresql", {}).get("ops_per_s")
        for name in order:
            r = row.get(name)
            if r is None:
                continue
            if "failed" in r:
                table.append([label, name, "FAILED", "—", "—", "—", "—"])
                continue
            ratio = f"{r['ops_per_s'] / pgRate:.2f}" if pgRate else "—"
            table.append([
                label, name, run.fmtNum(r["ops_per_s"]), ratio,
                run.fmtNum(r.get("p50_us"), " us"), run.fmtNum(r.get("p99_us"), " us"),
                run.fmtNum(r.get("cpu_us_per_op"), " us"),
            ])
    run.printTable(["row", "system", "ops/s", "vs PostgreSQL", "p50", "p99", "server CPU/op"], table)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
