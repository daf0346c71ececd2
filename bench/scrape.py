"""
Does scraping /metrics slow the request path?

    python bench/scrape.py                 # ~1 min
    python bench/scrape.py --seconds 10

Starts our server (twistd -n proto --metrics ...) once and runs the ECHO
16x16 row of bench/run.py against it (same load generator, same pinning:
server on CPU 0, loadgen and scraper on CPU 1) three ways, alternating,
best of --repeat runs each:

  - no scrape:      nobody reads /metrics;
  - scrape 1/s:     GET /metrics once a second (far more often than a
                    Prometheus server's usual 15 s);
  - scrape loop:    GET /metrics back to back for the whole row (the worst
                    case: the server renders pages non-stop).

and prints req/s and p99 side by side, with the scrape count.
Run it under `flock /work/bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # noqa: E402  (bench/run.py)


class Scraper(threading.Thread):
    def __init__(self, url: str, interval: float | None) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.count = 0
        self.bytes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with urllib.request.urlopen(self.url, timeout=10) as response:
                self.bytes += len(response.read())
            self.count += 1
            if self.interval:
                self.stop.wait(self.interval)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    a = p.parse_args()
    bench.buildLoadgen()
    bench.raiseFileLimit()
    if a.pin and (os.cpu_count() or 1) < 2:
        a.pin = False
    if a.pin:
        os.sched_setaffinity(0, {bench.LOADGEN_CPU})

    from proto.datadir import bootstrap

    workdir = tempfile.mkdtemp(prefix="proto-bench-scrape-")
    dataDir = os.path.join(workdir, "data")
    bootstrap(dataDir)
    port, webPort = bench.freePort(), bench.freePort()
    server = bench.Server(
        "ours",
        [sys.executable, "-c", bench.TWISTD, "--pidfile=", "-n", "proto", "--data-dir", dataDir,
         "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--metrics", f"tcp:{webPort}:interface=127.0.0.1"],
        port, workdir, a.pin,
    )
    url = f"http://127.0.0.1:{webPort}/metrics"
    modes = {"no scrape": None, "scrape 1/s": 1.0, "scrape loop": 0.0}
    best: dict[str, dict] = {}
    warmup = min(1.0, a.seconds / 10)
    try:
        bench.runLoadgen(server, dataDir, ["-c", "16", "-d", "16", "-t", "1"], a.pin, 60)
        for rnd in range(a.repeat):
            order = list(modes) if rnd % 2 == 0 else list(modes)[::-1]
            for mode in order:
                interval = modes[mode]
                scraper = None
                if interval is not None:
                    scraper = Scraper(url, interval)
                    scraper.start()
                result = bench.runLoadgen(
                    server, dataDir,
                    ["-c", "16", "-d", "16", "-t", str(a.seconds), "--warmup", str(warmup)],
                    a.pin, a.seconds + 90,
                )
                if scraper is not None:
                    scraper.stop.set()
                    scraper.join(15)
                    result["scrapes"] = scraper.count
                    result["page_bytes"] = scraper.bytes // max(scraper.count, 1)
                print(f"  {mode:12s} {result}", flush=True)
                if mode not in best or result["req_per_s"] > best[mode]["req_per_s"]:
                    best[mode] = result
    finally:
        server.stop()
    base = best["no scrape"]["req_per_s"]
    print()
    print(f"ECHO 16x16 against our server with --metrics, {a.seconds:g} s per run, "
          f"best of {a.repeat}")
    print(f"{'mode':12s} {'req/s':>10s} {'vs none':>8s} {'p99 us':>8s} {'scrapes':>8s} {'server CPU':>10s} errors")
    for mode in modes:
        r = best[mode]
        print(f"{mode:12s} {r['req_per_s']:10.0f} {r['req_per_s'] / base:8.3f} "
              f"{r.get('p99_us', float('nan')):8.0f} {r.get('scrapes', 0):8d} "
              f"{r.get('server_cpu', 0):10.2f} {r.get('errors', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
