"""
The protocol's own hot path, in process: CPU per request of
C{GNPServerProtocol.dataReceived} for chunks of pipelined ECHO requests,
with no TLS, no sockets and no reactor (an admitted connection on an
in-memory transport that drops what it is given).

Why: the ECHO rows of C{bench/run.py} measure the whole server and move
by 10-40% from one run to the next on a shared machine; a change to the
protocol layer (a split, an extra check per request) costs a few percent
at most and drowns there. This measures only that layer, by thread CPU
time (not wall time), best of many short runs, and can run another
checkout's code side by side (C{--baseline DIR}), alternating, in one run:

    python bench/hotpath.py --baseline /tmp/base     # before/after
    python bench/hotpath.py --depth 1 16 64 --runs 25

It is a benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(depths: list[int], runs: int, requests: int) -> dict[int, float]:
    """Best CPU seconds per request for each depth (requests per chunk)."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from proto.permissions import Grant
    from proto.server import GNPServerFactory, ServerConfig, defaultRegistry

    class Sink(StringTransport):
        """Counts what is written instead of keeping it."""

        written = 0

        def write(self, data: bytes) -> None:
            self.written += len(data)

    results = {}
    for depth in depths:
        factory = GNPServerFactory(
            ServerConfig(), lambda: None, registry=defaultRegistry(), clock=Clock()
        )
        server = factory.buildProtocol(None)
        server.makeConnection(Sink())
        # Admitted by hand (no TLS here): the grant, then the state.
        server._grant(Grant("bench", "admin"))
        if hasattr(server, "_enter"):
            server._enter("ready")
        else:  # checkouts from before proto/states.py
            server.state = "ready"
        chunk = b"".join(
            b"ECHO hello world\r\nSequence: %d\r\n\r\n" % i for i in range(depth)
        )
        rounds = max(1, requests // depth)
        for _ in range(rounds):
            server.dataReceived(chunk)  # warm up
        gc.disable()
        best = float("inf")
        for _ in range(runs):
            started = time.thread_time()
            for _ in range(rounds):
                server.dataReceived(chunk)
            best = min(best, (time.thread_time() - started) / (rounds * depth))
        gc.enable()
        results[depth] = best
    return results


def child(root: str, args: argparse.Namespace) -> dict[int, float]:
    """Run L{measure} in a fresh interpreter on the code of checkout C{root}."""
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child",
         "--depth", *map(str, args.depth), "--runs", str(args.runs),
         "--requests", str(args.requests)],
        env=env, cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    return {int(k): v for k, v in json.loads(out).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, nargs="+", default=[1, 16, 64],
                   help="requests per input chunk (default 1 16 64)")
    p.add_argument("--runs", type=int, default=25, help="timed runs per depth; best shown")
    p.add_argument("--requests", type=int, default=20000, help="requests per timed run")
    addAlternationArguments(p)
    args = p.parse_args()
    if args.child:
        json.dump(measure(args.depth, args.runs, args.requests), sys.stdout)
        return
    best = bestOfRounds(args, child)
    print("in-process CPU per request (best of all runs), ECHO, no TLS")
    printBest(best, args.depth, args.baseline, "depth", ">6", 3)


def addAlternationArguments(p: argparse.ArgumentParser) -> None:
    """C{--rounds}, C{--baseline} and the internal C{--child}, for L{bestOfRounds}."""
    p.add_argument("--rounds", type=int, default=3,
                   help="alternations of ours and the baseline (default 3)")
    p.add_argument("--baseline", metavar="DIR",
                   help="another checkout of this repository, measured alternately as 'before'")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)


def bestOfRounds(args: argparse.Namespace, child: Callable[[str, argparse.Namespace], dict[Any, float]]
                 ) -> dict[str, dict[Any, float]]:
    """
    The least seconds per row of C{child(root, args)} over C{args.rounds}
    rounds, for our checkout ("ours") and, with C{args.baseline}, that one
    ("before"), measured alternately so that both see the same machine.
    """
    sides = {"ours": ROOT}
    if args.baseline:
        sides["before"] = os.path.abspath(args.baseline)
    best: dict[str, dict[Any, float]] = {name: {} for name in sides}
    for _ in range(args.rounds):
        for name, root in sides.items():
            for row, seconds in child(root, args).items():
                best[name][row] = min(seconds, best[name].get(row, float("inf")))
    return best


def printBest(best: dict[str, dict[Any, float]], rows: Iterable[Any], baseline: str | None,
              label: str, align: str, digits: int) -> None:
    """Print L{bestOfRounds}' figures in microseconds, with before/ours when there is a baseline."""
    header = f"{label:{align}}  {'ours us':>8}"
    if baseline:
        header += f"  {'before us':>9}  {'before/ours':>11}"
    print(header)
    for row in rows:
        line = f"{row:{align}}  {best['ours'][row] * 1e6:8.{digits}f}"
        if baseline:
            before = best["before"][row]
            line += f"  {before * 1e6:9.{digits}f}  {before / best['ours'][row]:11.3f}"
        print(line)


if __name__ == "__main__":
    main()
