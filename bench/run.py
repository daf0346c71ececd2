"""
The GNP/1 benchmark driver: our server against "the floor".

    python bench/run.py                 # ECHO / handshake / idle-memory table, ~2 min
    python bench/run.py --seconds 10    # longer rows
    python bench/run.py --store         # document-store figures (ours only)
    python bench/run.py --suite all     # both

It builds bench/loadgen (C, OpenSSL + epoll) if it is missing or older than
bench/loadgen.c, makes a temporary data directory (proto.datadir.bootstrap),
starts OUR server (twistd -n proto) and the floor server
(bench/floor_server.py: a bare Twisted LineReceiver behind the same TLS
context) as real processes on 127.0.0.1, runs every row against both,
alternating, and prints a table. See bench/README.md for what the rows mean.

This is a benchmark, not a test: it prints figures. Its exit status is 0
unless a row could not be measured at all (loadgen errors, a server died).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import references

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LOADGEN_SRC = os.path.join(BENCH, "loadgen.c")
LOADGEN = os.path.join(BENCH, "loadgen")
FLOOR = os.path.join(BENCH, "floor_server.py")
ASYNCIO = os.path.join(BENCH, "asyncio_server.py")

sys.path.insert(0, ROOT)

TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"

SERVER_CPU = 0
LOADGEN_CPU = 1

# --------------------------------------------------------------------------- setup


def writeBodies(workdir: str) -> tuple[str, str]:
    """
    Write the document the store rows PUT (1 KiB of JSON whose C{Ref}
    names C{bench/ref}, for the C{Include: Ref} rows) and the one it refers
    to into C{workdir}; their paths, for loadgen's C{--body-file}.
    """
    body = {"Name": "bench document", "Ref": "bench/ref", "Pad": ""}
    body["Pad"] = "x" * max(0, 1024 - len(json.dumps(body)))
    bodyFile = os.path.join(workdir, "doc-1k.json")
    refFile = os.path.join(workdir, "ref.json")
    with open(bodyFile, "w") as f:
        f.write(json.dumps(body))
    with open(refFile, "w") as f:
        f.write(json.dumps({"Name": "the referenced document"}))
    return bodyFile, refFile


def populateArgs(keys: int | str, bodyFile: str, refFile: str) -> list[list[str]]:
    """The loadgen runs that write C{bench/ref} and C{bench/0} .. C{bench/<keys - 1>}."""
    keys = str(keys)
    return [
        ["-n", "1", "-c", "1", "-d", "1", "--command", "PUT bench/ref", "--body-file", refFile],
        ["-n", keys, "-c", "1", "-d", "16", "--command", "PUT bench/%d", "--body-file", bodyFile, "--keys", keys],
    ]


def buildLoadgen(force: bool = False) -> None:
    if (
        not force
        and os.path.exists(LOADGEN)
        and os.path.getmtime(LOADGEN) >= os.path.getmtime(LOADGEN_SRC)
    ):
        return
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-o", LOADGEN, LOADGEN_SRC, "-lssl", "-lcrypto"]
    print("building loadgen:", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        sys.exit(f"cannot build {LOADGEN_SRC} (needs a C compiler and libssl-dev):\n{r.stderr}")


def raiseFileLimit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForPort(port: int, proc: subprocess.Popen, name: str, log: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name} exited with status {proc.returncode} before listening:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s:\n{tail(log)}")


def tail(path: str, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def pin(pid: int, cpu: int, enabled: bool) -> None:
    if enabled:
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            pass


def pySpy(pid: int, seconds: float, output: str, rate: int, *extra: str) -> subprocess.Popen:
    """
    py-spy recording process C{pid} for C{seconds} into C{output} (raw,
    folded stacks), without pausing it; wait() for it before reading.
    The py-spy of this venv if it has one (pip install py-spy), else PATH's.
    """
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen(
        [here if os.path.exists(here) else "py-spy", "record", "--nonblocking", "--format", "raw",
         "--rate", str(rate), "--duration", str(int(seconds)), "--output", output, "--pid", str(pid), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


class Server:
    """One server process under test."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: str, pinning: bool,
                 root: str = ROOT) -> None:
        self.name = name
        self.port = port
        self.log = os.path.join(workdir, f"{name}.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("PYTHONDEVMODE", None)
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
            )
        pin(self.proc.pid, SERVER_CPU, pinning)
        waitForPort(port, self.proc, name, self.log)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rssKiB(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpuSeconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is state (field 3); utime, stime are fields 14, 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ------------------------------------------------------------------------ loadgen


class LoadgenError(Exception):
    pass


def loadgenArgv(dataDir: str, port: int, *args: str) -> list[str]:
    return [
        LOADGEN,
        "--port", str(port),
        "--cert", os.path.join(dataDir, "client.pem"),
        "--key", os.path.join(dataDir, "client.key"),
        *args,
    ]


def runLoadgen(server: Server, dataDir: str, args: list[str], pinning: bool, timeout: float) -> dict:
    """Run the load generator to completion; return its JSON, with the
    server's CPU use over the run added."""
    if not server.alive():
        raise LoadgenError(f"{server.name} is not running:\n{tail(server.log)}")
    argv = loadgenArgv(dataDir, server.port, *args)
    cpu0 = server.cpuSeconds()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pin(proc.pid, LOADGEN_CPU, pinning)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise LoadgenError(f"loadgen timed out after {timeout:.0f} s: {err.strip()}")
    wall = time.monotonic() - t0
    cpu1 = server.cpuSeconds()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode not in (0, 1) or not lines:
        raise LoadgenError(f"loadgen failed (status {proc.returncode}): {err.strip()}\n{' '.join(argv)}")
    result = json.loads(lines[-1])
    result["server_cpu"] = (cpu1 - cpu0) / wall
    result["wall"] = wall
    if proc.returncode == 1:
        result["loadgen_stderr"] = err.strip()
    return result


def idleMemory(server: Server, dataDir: str, conns: int, pinning: bool, settle: float) -> dict:
    """RSS per idle admitted connection: VmRSS before vs after C idle
    connections, divided by C."""
    if not server.alive():
        raise LoadgenError(f"{server.name} is not running:\n{tail(server.log)}")
    before = server.rssKiB()
    argv = loadgenArgv(
        dataDir, server.port, "--mode", "idle", "-c", str(conns), "--setup-window", "32", "--max-hold", "120"
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pin(proc.pid, LOADGEN_CPU, pinning)
    try:
        deadline = time.monotonic() + 90
        admitted = None
        buf = ""
        while admitted is None and time.monotonic() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 1.0)
            if r:
                line = proc.stdout.readline()
                if not line:
                    break
                buf += line
                if '"admitted"' in line:
                    admitted = json.loads(line)
        if admitted is None:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise LoadgenError(f"idle connections were not all admitted: {err.strip()} {buf.strip()}")
        time.sleep(settle)
        after = server.rssKiB()
        peak = after
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    final = [ln for ln in out.splitlines() if ln.startswith("{")]
    result = json.loads(final[-1]) if final else {}
    time.sleep(0.5)
    result.update(
        rss_before_kib=before,
        rss_after_kib=peak,
        rss_released_kib=server.rssKiB() if server.alive() else None,
        kib_per_conn=(peak - before) / conns,
        setup_seconds=admitted.get("setup_seconds"),
    )
    if result.get("dropped"):
        raise LoadgenError(f"{result['dropped']} idle connections were closed by {server.name}")
    return result


# --------------------------------------------------------------------------- table


def fmtNum(v, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        s = f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def printTable(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


# --------------------------------------------------------------------------- suites

ECHO_SHAPES = [(1, 64), (16, 16), (50, 1)]


def echoSuite(servers: dict[str, Server], dataDir: str, a) -> tuple[list, list]:
    """Returns (table rows, raw results)."""
    raw: list = []
    results: dict[tuple, dict[str, dict | str]] = {}
    warmup = min(1.0, a.seconds / 10)
    order = list(servers)

    def measure(key, fn, repeat=1, rateField=None, only=None):
        """Run fn for every server (or those in `only`), `repeat` times,
        alternating which goes first; keep each server's run with the best
        rate (best-of-N damps interference from the rest of the machine
        equally for all)."""
        names = [n for n in order if only is None or n in only]
        for rnd in range(repeat):
            for name in (names if rnd % 2 == 0 else names[::-1]):
                try:
                    res = fn(servers[name])
                except LoadgenError as e:
                    print(f"  {name}: FAILED: {e}", flush=True)
                    res = "FAILED"
                raw.append({"row": list(key), "server": name, "round": rnd, "result": res})
                if isinstance(res, dict):
                    print(f"  {name:5s} {json.dumps(res)}", flush=True)
                prev = results.setdefault(key, {}).get(name)
                if prev is None or isinstance(prev, str) or (
                    isinstance(res, dict) and rateField and res[rateField] > prev[rateField]
                ):
                    if not (isinstance(res, str) and isinstance(prev, dict)):
                        results[key][name] = res

    # Memory first, on fresh processes; a short warm-up so one-time costs
    # (imports, caches, first connection) are not charged to the idle ones.
    if "idle" in a.rows:
        print(f"[idle memory] {a.idle} idle admitted connections", flush=True)
    for s in servers.values():
        try:
            runLoadgen(s, dataDir, ["-c", "50", "-d", "4", "-t", "1"], a.pin, 60)
        except LoadgenError as e:
            print(f"  {s.name}: warm-up failed: {e}", flush=True)
    if "idle" in a.rows:
        measure(("idle",), lambda s: idleMemory(s, dataDir, a.idle, a.pin, settle=1.0))

    for c, d in (ECHO_SHAPES if "echo" in a.rows else []):
        print(f"[echo] {c} connection(s) x {d} in flight, {a.seconds:g} s", flush=True)
        measure(
            ("echo", c, d),
            lambda s: runLoadgen(
                s, dataDir, ["-c", str(c), "-d", str(d), "-t", str(a.seconds), "--warmup", str(warmup)],
                a.pin, a.seconds + 90,
            ),
            a.repeat, "req_per_s",
        )

    if "handshake" in a.rows:
        print(f"[handshake] {a.handshake_conns} concurrent, {a.seconds:g} s", flush=True)
    measure(
        ("handshake",),
        lambda s: runLoadgen(
            s, dataDir,
            ["--mode", "handshake", "-c", str(a.handshake_conns), "-t", str(a.seconds), "--warmup", str(warmup)],
            a.pin, a.seconds + 90,
        ),
        a.repeat if "handshake" in a.rows else 0, "handshakes_per_s",
    )

    # Session resumption (ours only): each loadgen worker offers the session
    # ticket of its previous connection. TLS 1.3 (the default) and 1.2,
    # each against our full handshakes of the same version.
    if "ours" in servers and "resumed" in a.rows:
        for tls in ("1.3", "1.2"):
            args = ["--mode", "handshake", "-c", str(a.handshake_conns), "-t", str(a.seconds),
                    "--warmup", str(warmup), "--tls", tls]
            if tls == "1.2":
                print(f"[handshake] TLS 1.2 full, {a.handshake_conns} concurrent, {a.seconds:g} s", flush=True)
                measure(("handshake", tls), lambda s: runLoadgen(s, dataDir, args, a.pin, a.seconds + 90),
                        a.repeat, "handshakes_per_s", only=["ours"])
            print(f"[handshake] TLS {tls} resumed, {a.handshake_conns} concurrent, {a.seconds:g} s", flush=True)
            measure(("resumed", tls), lambda s: runLoadgen(s, dataDir, [*args, "--resume"], a.pin, a.seconds + 90),
                    a.repeat, "handshakes_per_s", only=["ours"])

    # ---- the table
    rows = []

    def get(key, name, field):
        r = results.get(key, {}).get(name)
        if not isinstance(r, dict):
            return None
        return r.get(field)

    def cpuPair(key, field):
        vals = [get(key, n, field) for n in ("ours", "floor")]
        return " / ".join("—" if v is None else f"{v:.2f}" for v in vals)

    refs = [n for n in ("uvloop", "base") if n in servers]

    def refCols(key, field, higherBetter, unit=""):
        """The references (asyncio + uvloop; --baseline): each one's figure, and ours against it."""
        cols = []
        for name in refs:
            ref, ours = get(key, name, field), get(key, "ours", field)
            ratio = "—"
            if isinstance(ref, (int, float)) and isinstance(ours, (int, float)) and ref and ours:
                ratio = f"{(ours / ref if higherBetter else ref / ours):.2f}"
            cols += [fmtNum(ref, unit), ratio]
        return cols

    def add(label, key, field, unit, higherBetter, target, targetText):
        ours, floor = get(key, "ours", field), get(key, "floor", field)
        if ours is None and "ours" in servers and isinstance(results.get(key, {}).get("ours"), str):
            ours = "FAILED"
        if ours is not None and floor is not None and not isinstance(ours, str) and ours and floor:
            ratio = ours / floor if higherBetter else floor / ours
            ratioText = f"{ratio:.2f}"
            verdict = "—" if target is None else ("ok" if ratio >= target else "BELOW")
        else:
            ratio, ratioText, verdict = None, "—", "—"
        errs = [get(key, n, "errors") for n in ("ours", "floor")]
        rows.append([
            label, fmtNum(ours, unit), fmtNum(floor, unit), ratioText, targetText, verdict,
            *refCols(key, field, higherBetter, unit),
            cpuPair(key, "loadgen_cpu"), cpuPair(key, "server_cpu"),
            " / ".join("—" if e is None else str(e) for e in errs),
        ])

    # Server CPU per request: the server's own cost, less blurred than req/s
    # when other work shares the machine (information, not a target).
    for key, r in ((k, r) for k, byName in results.items() if k[0] == "echo" for r in byName.values()):
        if isinstance(r, dict) and r.get("req_per_s"):
            r["server_cpu_us_per_req"] = r["server_cpu"] / r["req_per_s"] * 1e6
    # server CPU time per handshake: the server's own cost, not shared with the loadgen
    for key in (("handshake",), ("handshake", "1.2"), ("resumed", "1.3"), ("resumed", "1.2")):
        for name in servers:
            r = results.get(key, {}).get(name)
            if isinstance(r, dict) and r.get("handshakes_per_s"):
                r["server_cpu_us_per_handshake"] = r["server_cpu"] / r["handshakes_per_s"] * 1e6
    for c, d in ECHO_SHAPES:
        target = 1.3 if (c, d) == (50, 1) else 1.0
        add(f"ECHO {c}x{d} req/s", ("echo", c, d), "req_per_s", "", True, target, f">= {target:g} x floor")
        add(f"ECHO {c}x{d} p99 latency", ("echo", c, d), "p99_us", " us", False, 1.0, "floor/ours >= 1")
        add(f"ECHO {c}x{d} server CPU/req", ("echo", c, d), "server_cpu_us_per_req", " us", False, None,
            "(information)")
    add(f"TLS handshakes/s ({a.handshake_conns} conc.)", ("handshake",), "handshakes_per_s", "",
        True, 1.0, ">= 1 x floor")
    # Resumed against OUR full handshakes of the same TLS version.
    noRef = ["—", "—"] * len(refs)
    for tls in ("1.3", "1.2"):
        full = get(("handshake",) if tls == "1.3" else ("handshake", tls), "ours", "handshakes_per_s")
        res = get(("resumed", tls), "ours", "handshakes_per_s")
        count = get(("resumed", tls), "ours", "resumed")
        total = get(("resumed", tls), "ours", "requests")
        if tls == "1.2":
            rows.append([f"TLS 1.2 full handshakes/s", fmtNum(full), "—", "—", "(information)", "—", *noRef,
                         "—", "—", "—"])
        ratio = res / full if res and full else None
        rows.append([
            f"TLS {tls} resumed handshakes/s", fmtNum(res), "—",
            "—" if ratio is None else f"{ratio:.2f}", f">= 3 x our full {tls}",
            "—" if ratio is None else ("ok" if ratio >= 3 else "BELOW"), *noRef,
            cpuPair(("resumed", tls), "loadgen_cpu"), cpuPair(("resumed", tls), "server_cpu"),
            "—" if count is None else f"{count}/{total} resumed",
        ])
        fullCPU = get(("handshake",) if tls == "1.3" else ("handshake", tls), "ours", "server_cpu_us_per_handshake")
        resCPU = get(("resumed", tls), "ours", "server_cpu_us_per_handshake")
        rows.append([
            f"server CPU: full / resumed {tls}",
            "—" if fullCPU is None or resCPU is None else f"{fullCPU:,.0f} / {resCPU:,.0f} us",
            "—", "—" if not (fullCPU and resCPU) else f"{fullCPU / resCPU:.2f}", "(information)", "—", *noRef,
            "—", "—", "—",
        ])
    # Not one of the targets (handshakes/s is): shown to say what the
    # server itself spends, which the shared two-core machine blurs.
    add("server CPU per handshake", ("handshake",), "server_cpu_us_per_handshake", " us", False, None,
        "(information)")
    # memory: absolute target
    ours = get(("idle",), "ours", "kib_per_conn")
    floor = get(("idle",), "floor", "kib_per_conn")
    rows.append([
        f"RSS per idle conn ({a.idle})", fmtNum(ours, " KiB"), fmtNum(floor, " KiB"),
        f"{ours / floor:.2f}" if ours and floor else "—", "<= 32 KiB (ours)",
        ("ok" if ours <= 32 else "ABOVE") if ours is not None else "—",
        *[c for n in refs for c in (fmtNum(get(("idle",), n, "kib_per_conn"), " KiB"), "—")],
        "—", "—",
        " / ".join(str(get(("idle",), n, "dropped")) if get(("idle",), n, "dropped") is not None else "—"
                   for n in ("ours", "floor")),
    ])
    return rows, raw


def storeSuite(server: Server, dataDir: str, a, workdir: str,
               before: Server | None = None) -> tuple[list, list]:
    """
    The store rows on our server, each row then on the 'before' server
    (--baseline, if given) and on each reference, so that a busy machine
    weighs on all of them alike.
    """
    raw = []
    rows = []
    warmup = min(1.0, a.seconds / 10)
    bodyFile, refFile = writeBodies(workdir)
    keys = str(a.keys)
    # Ours on PostgreSQL (--our-store postgresql): the cluster's CPU over
    # each of our rows is counted too (its backends do our reads/writes).
    database = a.ourDatabase

    def one(label, args, rateField="req_per_s", server=server, name="ours"):
        print(f"[store] {label}" + ("" if name == "ours" else f" ({name})"), flush=True)
        if name != "ours":
            label = f"{label} ({name})"
        try:
            db0 = database.cpu() if database is not None else None
            r = runLoadgen(server, dataDir, args, a.pin, a.seconds + 90)
            if database is not None:
                database.settle()
                r["db_cpu"] = (database.cpu() - db0) / r["wall"]
        except LoadgenError as e:
            print(f"  {name}: FAILED: {e}", flush=True)
            rows.append([label, "FAILED", "—", "—", "—", "—"])
            raw.append({"row": label, "result": "FAILED"})
            return None
        print(f"  {name}  {json.dumps(r)}", flush=True)
        raw.append({"row": label, "result": r})
        rows.append([
            label, fmtNum(r[rateField]), fmtNum(r["p50_us"], " us"), fmtNum(r["p99_us"], " us"),
            f"{r['loadgen_cpu']:.2f} / {r['server_cpu']:.2f}"
            + (f" + {r['db_cpu']:.2f} db" if "db_cpu" in r else ""), str(r["errors"]),
        ])
        return r

    # populate: bench/ref and bench/0 .. bench/K-1
    for each in (server, before):
        for args in populateArgs(keys, bodyFile, refFile) if each is not None else ():
            try:
                runLoadgen(each, dataDir, args, a.pin, 120)
            except LoadgenError as e:
                print(f"  populate failed: {e}", flush=True)
    put = ["--command", "PUT bench/%d", "--body-file", bodyFile, "--keys", keys,
           "-t", str(a.seconds), "--warmup", str(warmup)]
    plain = ["--command", "GET bench/%d", "--keys", keys, "-t", str(a.seconds), "--warmup", str(warmup)]
    get = [*plain, "--header", "Include: Ref"]
    # The rows the references are measured on too (bench/references.py):
    # each row on ours, then on each reference, so that a busy machine
    # weighs on all of them alike.
    shapes = {"put": put, "get": plain, "include": get}
    compared = {}
    with open(bodyFile, "rb") as f, open(refFile, "rb") as g:
        body, ref = f.read(), g.read()
    if a.systems is None:
        systems, a.refResults = references.startReferences(
            a.references, workdir, body, ref, a.keys,
            SERVER_CPU if a.pin else None, LOADGEN_CPU if a.pin else None,
        )
    else:
        systems = a.systems  # started before our server (main stops them)
    measured = [s for s in systems if s.name in a.references]
    try:
        for label, kind, clients in references.ROWS:
            if kind not in a.storeRows:
                continue
            r = one(label, ["-c", str(clients), "-d", "1", *shapes[kind]])
            compared[label] = r
            if r is not None:
                a.compared.append(references.fromLoadgen(label, r, r["server_cpu"], r["wall"],
                                                         r.get("db_cpu")))
            if before is not None:
                b = one(label, ["-c", str(clients), "-d", "1", *shapes[kind]],
                        server=before, name="before")
                if b is not None:
                    a.compared.append(references.fromLoadgen(label, b, b["server_cpu"], b["wall"],
                                                             b.get("db_cpu"), system="before"))
            a.refResults += references.measureRow(measured, label, kind, clients, a.seconds)
    finally:
        if a.systems is None:
            references.stopReferences(systems)
    if "pipelined" in a.storeRows:
        one("GET 1 KiB + Include, 16 clients x 16", ["-c", "16", "-d", "16", *get])
    r1, r50 = compared.get("PUT 1 KiB, 1 client"), compared.get("PUT 1 KiB, 50 clients")
    if r1 and r50 and r1["req_per_s"]:
        print(f"group-commit gain (PUT/s 50 clients / 1 client): {r50['req_per_s'] / r1['req_per_s']:.1f}x")
    return rows, raw


# ---------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description="GNP/1 benchmark: our server against the floor.")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row (default 5)")
    p.add_argument("--suite", choices=["echo", "store", "all"], default="echo")
    p.add_argument("--store", action="store_const", const="store", dest="suite",
                   help="document-store figures only (same as --suite store)")
    p.add_argument("--repeat", type=int, default=2,
                   help="runs per server per row, alternating; the best is shown (default 2)")
    p.add_argument("--idle", type=int, default=2000, help="idle connections for the memory row")
    p.add_argument("--rows", default="idle,echo,handshake,resumed",
                   help="echo suite: which rows to run, a comma list of idle, echo, handshake, resumed "
                        "(default: all; e.g. --rows handshake,resumed)")
    p.add_argument("--store-rows", default="put,get,include,pipelined",
                   help="store suite: which rows to run, a comma list of put, get, include "
                        "(1 and 50 clients, ours and the references) and pipelined (ours, 16x16); "
                        "default: all; e.g. --store-rows put")
    p.add_argument("--handshake-conns", type=int, default=8, help="concurrent handshakes")
    p.add_argument("--keys", type=int, default=1000, help="distinct document ids in the store rows")
    p.add_argument("--only", choices=["ours", "floor", "uvloop"], help="run one server only")
    p.add_argument("--baseline", metavar="DIR",
                   help="also run the server of another checkout of this repository (e.g. a git "
                        "worktree of main) as 'before', measured in the same runs: before/after")
    p.add_argument("--baseline-args", metavar="ARGS", default="",
                   help="extra twistd proto options for the 'before' server, e.g. "
                        "'--plain-transport' (with no --baseline: this checkout, so the "
                        "column shows what those options change)")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false",
                   help="leave out the asyncio + uvloop reference server")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="don't pin processes to CPUs")
    p.add_argument("--json", help="also write the raw results to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and logs")
    p.add_argument("--rebuild", action="store_true", help="rebuild bench/loadgen")
    p.add_argument("--references", default="redis,postgresql",
                   help="reference systems of the store suite: a comma list of redis, postgresql, "
                        "or 'none' (default: redis,postgresql; see bench/references.py)")
    p.add_argument("--our-store", choices=["sqlite", "postgresql"], default="sqlite",
                   help="store suite: our server's document store: its data directory's SQLite file "
                        "(default), or the reference PostgreSQL cluster (started even when it is not a "
                        "reference; our server reaches it over its Unix socket), whose CPU over our "
                        "rows is then counted as ours too ('+ db')")
    a = p.parse_args()
    if not (0 < a.seconds <= 600):
        p.error("--seconds must be in (0, 600]")
    if not (1 <= a.repeat <= 10):
        p.error("--repeat must be in [1, 10]")
    if not (1 <= a.idle <= 100000):
        p.error("--idle must be in [1, 100000]")

    a.rows = {r.strip() for r in a.rows.split(",") if r.strip()}
    if not a.rows <= {"idle", "echo", "handshake", "resumed"}:
        p.error(f"--rows: unknown rows {sorted(a.rows - {'idle', 'echo', 'handshake', 'resumed'})}")
    a.storeRows = {r.strip() for r in a.store_rows.split(",") if r.strip()}
    if not a.storeRows <= {"put", "get", "include", "pipelined"}:
        p.error(f"--store-rows: unknown rows {sorted(a.storeRows - {'put', 'get', 'include', 'pipelined'})}")
    a.references = [] if a.references == "none" else [n.strip() for n in a.references.split(",") if n.strip()]
    for name in a.references:
        if name not in references.SYSTEMS:
            p.error(f"--references: unknown system {name!r}")
    a.compared = []
    a.refResults = []
    a.systems = None  # the references, when started before our server
    a.ourDatabase = None  # the PostgreSQL our server uses (--our-store postgresql)

    buildLoadgen(a.rebuild)
    nofile = raiseFileLimit()
    if a.idle + 64 > nofile:
        sys.exit(f"--idle {a.idle} needs more open files than the limit ({nofile})")
    if a.pin and (os.cpu_count() or 1) < 2:
        a.pin = False

    plugin = os.path.join(ROOT, "twisted", "plugins", "proto_plugin.py")
    wantOurs = a.only in (None, "ours")
    wantFloor = a.only in (None, "floor") and a.suite != "store"
    wantUvloop = a.uvloop and a.only in (None, "uvloop") and a.suite != "store"
    if wantUvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("note: uvloop is not installed (pip install -e '.[bench]'): no asyncio reference row",
                  flush=True)
            wantUvloop = False
    if wantOurs and not os.path.exists(plugin):
        if a.suite == "store":
            sys.exit(f"our server is not there yet ({plugin})")
        print(f"note: {plugin} does not exist yet: running the floor only", flush=True)
        wantOurs = False

    from proto.datadir import bootstrap

    workdir = tempfile.mkdtemp(prefix="proto-bench-")
    dataDir = os.path.join(workdir, "data")
    bootstrap(dataDir)

    import OpenSSL.SSL

    print("GNP/1 benchmark")
    print(f"  machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"  python {platform.python_version()}, server TLS: "
          f"{OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode()}, "
          f"loadgen TLS: system libssl ({LOADGEN})")
    if a.pin:
        print(f"  pinning: servers on CPU {SERVER_CPU}, loadgen on CPU {LOADGEN_CPU} (sched_setaffinity)")
    else:
        print("  pinning: off")
    print(f"  {a.seconds:g} s per row, best of {a.repeat} alternating runs per server; open-files limit {nofile}; data dir {dataDir}", flush=True)

    servers: dict[str, Server] = {}
    rc = 0
    try:
        ourStore: list[str] = []
        if wantOurs and a.our_store == "postgresql" and a.suite in ("store", "all"):
            body, ref = (open(f, "rb").read() for f in writeBodies(workdir))
            names = sorted({*a.references, "postgresql"}, key=list(references.SYSTEMS).index)
            a.systems, a.refResults = references.startReferences(
                names, workdir, body, ref, a.keys,
                SERVER_CPU if a.pin else None, LOADGEN_CPU if a.pin else None,
            )
            a.ourDatabase = next((s for s in a.systems if s.name == "postgresql"), None)
            if a.ourDatabase is None:
                sys.exit("--our-store postgresql: PostgreSQL could not be started (see above)")
            ourStore = ["--store", a.ourDatabase.conninfo()]
            print(f"  our store: PostgreSQL ({ourStore[1]}); server CPU of our rows: ours + the "
                  "cluster's ('+ db')", flush=True)
        if wantOurs:
            port = freePort()
            servers["ours"] = Server(
                "ours",
                # twistd (note: "python -m twisted" is the newer "twist" runner,
                # which has no --pidfile/-n; this is twistd from the same venv)
                [sys.executable, "-c", TWISTD, "--pidfile=", "-n", "proto", "--data-dir", dataDir,
                 "--listen", f"tcp:{port}:interface=127.0.0.1", "--max-connections", "10000", *ourStore],
                port, workdir, a.pin,
            )
        if wantFloor:
            port = freePort()
            servers["floor"] = Server(
                "floor",
                [sys.executable, FLOOR, "--port", str(port),
                 "--cert", os.path.join(dataDir, "server.pem"), "--key", os.path.join(dataDir, "server.key")],
                port, workdir, a.pin,
            )
        if (a.baseline or a.baseline_args) and wantOurs:
            port = freePort()
            base = os.path.abspath(a.baseline or ROOT)
            # (On PostgreSQL: a database of its own on the same cluster, so
            # that neither server's listener reads the other's changes.)
            baseStore = (["--store", a.ourDatabase.createDatabase("proto_before")]
                         if ourStore else [])
            servers["base"] = Server(
                "base",
                [sys.executable, "-c", TWISTD, "--pidfile=", "-n", "proto", "--data-dir", dataDir,
                 "--listen", f"tcp:{port}:interface=127.0.0.1", "--max-connections", "10000",
                 *baseStore, *a.baseline_args.split()],
                port, workdir, a.pin, root=base,
            )
        if wantUvloop:
            port = freePort()
            servers["uvloop"] = Server(
                "uvloop",
                [sys.executable, ASYNCIO, "--port", str(port),
                 "--cert", os.path.join(dataDir, "server.pem"), "--key", os.path.join(dataDir, "server.key"),
                 "--client-ca", os.path.join(dataDir, "client.pem")],
                port, workdir, a.pin,
            )
        allRaw = {}
        t0 = time.monotonic()
        if a.suite in ("echo", "all"):
            rows, raw = echoSuite(servers, dataDir, a)
            allRaw["echo"] = raw
            print()
            print("ECHO, handshakes and memory (ratio: higher is better; for latency and CPU it is floor/ours)")
            printTable(
                ["row", "ours", "floor", "ratio", "target", "verdict",
                 *(["asyncio+uvloop", "ours/uvloop"] if "uvloop" in servers else []),
                 *(["before", "ours/before"] if "base" in servers else []),
                 "loadgen CPU o/f", "server CPU o/f", "errors o/f"],
                rows,
            )
            print("loadgen CPU: its own user+sys seconds per wall second (1.00 = saturated; "
                  "then the row measures the loadgen).")
            print("server CPU: the server process's CPU seconds per wall second over the row.")
            if any("FAILED" in r for row in rows for r in row):
                rc = 1
        if a.suite in ("store", "all") and "ours" in servers:
            rows, raw = storeSuite(servers["ours"], dataDir, a, workdir, servers.get("base"))
            allRaw["store"] = raw
            print()
            print("Document store (ours only)")
            printTable(["row", "req/s", "p50", "p99", "CPU loadgen / server", "errors"], rows)
            if any("FAILED" in r for row in rows for r in row):
                rc = 1
            allRaw["references"] = a.refResults
            if any("failed" in r for r in a.refResults):
                rc = 1
            references.printComparison(a.compared + allRaw.get("references", []), printTable, fmtNum)
        print(f"\ntotal {time.monotonic() - t0:.0f} s")
        for s in servers.values():
            if not s.alive():
                print(f"{s.name} died during the run:\n{tail(s.log)}")
                rc = 1
        if a.json:
            with open(a.json, "w") as f:
                json.dump(allRaw, f, indent=1)
    finally:
        for s in servers.values():
            s.stop()
        if a.systems is not None:
            references.stopReferences(a.systems)
        if a.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
