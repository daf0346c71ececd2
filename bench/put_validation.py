"""
How long a large PUT body's JSON check stalls the reactor thread
(issue 12: "a 16 MiB PUT blocks the reactor for about 100 ms").

A benchmark, not a test. For a body of --mib MiB (a JSON object of many
small objects, or of one long list of numbers), it checks the body four
ways and prints, side by side, the time the check takes and the longest
time the main thread (standing in for the reactor, ticking every 0.5 ms)
could not run while it went on:

* reference: C{json.loads} inline (what the server did before);
* json.loads in a thread: moving it off the reactor thread alone does
  not help, as json.loads holds the GIL until it is done;
* ours inline: L{proto.commands.jsonbody.checkObject} (validates without
  building the document);
* ours in a thread: what the server does for bodies over 64 KiB.

    flock /work/bench.lock python bench/put_validation.py [--mib 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from proto.commands.jsonbody import checkObject  # noqa: E402


def bodies(mib: int) -> dict[str, bytes]:
    target = mib * 1024 * 1024
    row = {"Name": "Nancy", "Age": 42, "Score": 1.5, "Tags": ["a", "b"], "Boss": None}
    one = len(json.dumps(row)) + 2
    objects = json.dumps({"rows": [dict(row, Age=i) for i in range(target // one)]}).encode()
    numbers = json.dumps({"n": list(range(target // 9))}).encode()
    return {"objects": objects, "numbers": numbers}


def measure(check, body: bytes, threaded: bool) -> tuple[float, float]:
    """(seconds the check took, longest main-thread stall in seconds)."""
    gaps = [0.0]
    start = time.perf_counter()
    if threaded:
        worker = threading.Thread(target=check, args=(body,))
        worker.start()
        last = time.perf_counter()
        while worker.is_alive():
            time.sleep(0.0005)
            now = time.perf_counter()
            gaps.append(now - last - 0.0005)
            last = now
        worker.join()
    else:
        check(body)
        gaps.append(time.perf_counter() - start)
    return time.perf_counter() - start, max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the best is shown")
    args = parser.parse_args()
    ways = [
        ("json.loads inline (reference)", json.loads, False),
        ("json.loads in a thread", json.loads, True),
        ("ours inline", checkObject, False),
        ("ours in a thread (the server)", checkObject, True),
    ]
    print(f"{'body':<10} {'size':>9}  {'way':<32} {'check ms':>9} {'stall ms':>9}")
    for kind, body in bodies(args.mib).items():
        for name, check, threaded in ways:
            runs = [measure(check, body, threaded) for _ in range(args.repeat)]
            took, stall = min(runs, key=lambda r: r[1])
            print(f"{kind:<10} {len(body) / 2**20:>6.1f}MiB  {name:<32} {took * 1000:>9.1f} {stall * 1000:>9.1f}")


if __name__ == "__main__":
    main()
