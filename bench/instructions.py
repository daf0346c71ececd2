"""
The whole server's own work per request at one client, counted in
instructions: the main thread's instructions (valgrind's callgrind) per
1-client ECHO, through TLS, the sockets, the reactor and the protocol,
for this checkout and (C{--baseline DIR}) another one, alternating.

Why: at one client the server's CPU per request (C{bench/run.py}'s ECHO
and store rows) moves by 20% or more from one run to the next on a shared
machine, and a change worth a few percent of it cannot be seen there. An
instruction count does not depend on what else runs: repeated runs agree
within about 1%. It counts user-space work only (not the kernel's send,
receive and wake-ups, about half of a 1-client request's CPU here) and
weighs every instruction alike (not cache misses), so it says whether a
change removed work, not what it gains in microseconds.

    python bench/instructions.py --baseline /tmp/base     # before/after
    python bench/instructions.py --requests 4000 --rounds 3
    python bench/instructions.py --shape include --baseline /tmp/base

Each server runs under C{valgrind --tool=callgrind --separate-threads=yes}
(about 50 times slower); after a warm-up, the counters are zeroed
(C{callgrind_control -z}), one connection sends C{--requests} ECHOs one at
a time (C{bench/loadgen -c 1 -d 1 -n N}, its time limit raised), the counters are dumped, and the
main thread's total is divided by N (one TLS handshake per run is
included: about 17k instructions per request at N=2000).

C{--shape get} and C{--shape include} count the store rows' 1-client GET
(C{GET bench/%d}, without and with C{Include: Ref}) the same way, over
C{--keys} documents of 1 KiB written before the warm-up (which reads each
once, so the counted GETs are served from the document cache, as in
C{bench/run.py --store}). Under valgrind's slowdown every read that
misses the cache looks slow, and a slow read sends the reads to the
store's threads for a while (L{proto.store.sqlite_inline}), which would
move work off the main thread from run to run; so the server under
valgrind is started with that back-off's thresholds out of reach (the
only change made to it). The counted GETs all hit the cache.

Needs valgrind (C{callgrind_control} with it). It is a benchmark, not a
test: it prints figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: the load generator, ports, twistd)


def _waitForPort(port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server under valgrind exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server under valgrind did not listen within {seconds:g} s")


def _mainThreadTotal(path: str, seconds: float) -> int:
    """The instruction total of a dump of thread 1, once callgrind has written it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    if line.startswith("totals:") or line.startswith("summary:"):
                        return int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit(f"callgrind wrote no dump {path} within {seconds:g} s")


#: The request each shape counts (loadgen's C{--command} and C{--header}).
SHAPES: dict[str, list[str]] = {
    "echo": ["--command", "ECHO hello world"],
    "get": ["--command", "GET bench/%d"],
    "include": ["--command", "GET bench/%d", "--header", "Include: Ref"],
}

#: The server under valgrind, for the GET shapes: twistd, with the inline
#: reader's slow-read back-off out of reach (see the module docstring).
_TWISTD_NO_BACKOFF = (
    "import proto.store.sqlite_inline as inline; "
    "inline.INLINE_SLOW_SECONDS = inline.INLINE_SLOW_CPU_SECONDS = float('inf'); "
    + run.TWISTD
)


def measure(root: str, requests: int, runs: int, shape: str = "echo", keys: int = 100) -> list[float]:
    """Main-thread instructions per request of C{shape}, one figure per run, for the checkout at C{root}."""
    from proto.datadir import bootstrap

    work = tempfile.mkdtemp(prefix="proto-instr-")
    try:
        data = os.path.join(work, "data")
        bootstrap(data)
        port = run.freePort()
        out = os.path.join(work, "callgrind.out")
        argv = [
            "valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}.%p",
            sys.executable, "-c", run.TWISTD if shape == "echo" else _TWISTD_NO_BACKOFF, "--pidfile=", "-n", "proto", "--data-dir", data,
            "--listen", f"tcp:{port}:interface=127.0.0.1",
        ]
        env = dict(os.environ, PYTHONPATH=root)
        with open(os.path.join(work, "server.log"), "w") as log:
            proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            _waitForPort(port, proc, 300)

            def load(n: int, args: list[str]) -> None:
                r = subprocess.run(
                    run.loadgenArgv(data, port, "-c", "1", "-d", "1", *args, "-n", str(n), "-t", "3000"),
                    capture_output=True, text=True, timeout=600,
                )
                if r.returncode != 0 or json.loads(r.stdout.splitlines()[-1])["requests"] != n:
                    raise SystemExit(f"loadgen failed: {r.stdout[-300:]} {r.stderr[-300:]}")

            def echo(n: int) -> None:
                load(n, [*SHAPES[shape], "--keys", str(keys)])

            if shape != "echo":
                bodyFile, refFile = run.writeBodies(work)
                for args in run.populateArgs(keys, bodyFile, refFile):
                    load(int(args[args.index("-n") + 1]), args[2:])
                echo(keys)  # every document read once: into the cache
            echo(300)  # warm-up
            figures = []
            for i in range(1, runs + 1):
                subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
                echo(requests)
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
                total = _mainThreadTotal(f"{out}.{proc.pid}.{i}-01", 120)
                figures.append(total / requests)
            return figures
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per counted run (default 2000)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="echo",
                   help="what one request is: ECHO (default), the store rows' GET, or GET with Include")
    p.add_argument("--keys", type=int, default=100, help="documents the GET shapes read (default 100)")
    p.add_argument("--runs", type=int, default=3, help="counted runs per server start (default 3)")
    p.add_argument("--rounds", type=int, default=1, help="alternations of ours and the baseline")
    p.add_argument("--baseline", metavar="DIR", help="another checkout of this repository ('before')")
    a = p.parse_args()
    if not (1 <= a.requests <= 100000 and 1 <= a.runs <= 20 and 1 <= a.rounds <= 10 and 1 <= a.keys <= 10000):
        p.error("--requests in [1, 100000], --runs in [1, 20], --rounds in [1, 10], --keys in [1, 10000]")
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (valgrind)")
    run.buildLoadgen()
    roots = {"ours": run.ROOT}
    if a.baseline:
        roots["before"] = os.path.abspath(a.baseline)
    results: dict[str, list[float]] = {name: [] for name in roots}
    for _ in range(a.rounds):
        for name, root in roots.items():
            figures = measure(root, a.requests, a.runs, a.shape, a.keys)
            print(f"  {name:6s} {' '.join(f'{f:,.0f}' for f in figures)}", flush=True)
            results[name] += figures
    what = {"echo": "ECHO", "get": "GET", "include": "GET with Include"}[a.shape]
    print(f"Main-thread instructions per 1-client {what} (callgrind; lowest run; "
          f"includes one TLS handshake per {a.requests} requests)")
    best = {name: min(figures) for name, figures in results.items()}
    for name, figure in best.items():
        print(f"  {name:6s} {figure:>10,.0f}")
    if "before" in best:
        print(f"  ours/before {best['ours'] / best['before']:.3f}")


if __name__ == "__main__":
    main()
