"""
GET's own cost, in process: CPU per request of
C{GNPServerProtocol.dataReceived} for one GET at a time (depth 1), with
and without C{Include: Ref}, against a real SQLite store whose document
cache is warm, and ECHO beside them; no TLS, no sockets (an admitted
connection on an in-memory transport that drops what it is given).

Why: at one client, the server's CPU per GET (C{bench/run.py --store})
is mostly the generic request path (epoll wake, TLS, send) and moves by
10-20% from one run to the next on a shared machine; the store's and the
command's part is a few microseconds of it and drowns there. This
measures that part by thread CPU time, best of many short runs, and can
run another checkout side by side (C{--baseline DIR}), alternating:

    python bench/getpath.py --baseline /tmp/base     # before/after
    python bench/getpath.py --rounds 5

The documents are the store rows': 1 KiB JSON objects C{bench/0} ...
C{bench/999} whose C{Ref} names C{bench/ref}. It is a benchmark, not a
test: it prints figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from hotpath import addAlternationArguments, bestOfRounds, printBest  # bench/hotpath.py


SHAPES = {
    "ECHO": b"ECHO hello world\r\nSequence: %d\r\n\r\n",
    "GET": b"GET bench/%d\r\nSequence: %d\r\n\r\n",
    "GET + Include": b"GET bench/%d\r\nInclude: Ref\r\nSequence: %d\r\n\r\n",
}


def measure(keys: int, runs: int) -> dict[str, float]:
    """Best CPU seconds per request of each shape (runs in a reactor)."""
    from twisted.internet import defer, reactor, task
    from twisted.internet.testing import StringTransport

    from proto.hub import ChangeHub
    from proto.permissions import Grant
    from proto.server import GNPServerFactory, ServerConfig, defaultRegistry
    from proto.store import SQLiteStore

    class Sink(StringTransport):
        """Keeps only the last write."""

        last = b""

        def write(self, data: bytes) -> None:
            self.last = data

    results: dict[str, float] = {}

    @defer.inlineCallbacks
    def run():
        workdir = tempfile.mkdtemp(prefix="proto-getpath-")
        hub = ChangeHub()
        store = SQLiteStore(os.path.join(workdir, "store.sqlite"), hub=hub)
        yield store.start()
        body = {"Name": "bench document", "Ref": "bench/ref", "Pad": ""}
        body["Pad"] = "x" * max(0, 1024 - len(json.dumps(body)))
        yield store.put("bench/ref", b'{"Name": "the referenced document"}', None)
        for n in range(keys):
            yield store.put(f"bench/{n}", json.dumps(body).encode(), None)
        yield task.deferLater(reactor, 0.2, lambda: None)  # the writer settles
        factory = GNPServerFactory(
            ServerConfig(), lambda: None, registry=defaultRegistry(), store=store, hub=hub,
        )
        server = factory.buildProtocol(None)
        sink = Sink()
        server.makeConnection(sink)
        server._grant(Grant("bench", "admin"))
        server._enter("ready")
        for name, head in SHAPES.items():
            chunks = [head % ((n, n) if head.count(b"%d") == 2 else (n,)) for n in range(keys)]
            for chunk in chunks:  # warm up (and fill the cache)
                server.dataReceived(chunk)
            if not sink.last.startswith(b"OK"):
                raise SystemExit(f"{name}: {sink.last[:200]!r}")
            gc.disable()
            best = float("inf")
            for _ in range(runs):
                started = time.thread_time()
                for chunk in chunks:
                    server.dataReceived(chunk)
                best = min(best, (time.thread_time() - started) / len(chunks))
            gc.enable()
            results[name] = best
        yield store.close()
        shutil.rmtree(workdir, ignore_errors=True)

    def done(_):
        reactor.stop()
        return _

    reactor.callWhenRunning(lambda: run().addBoth(done))
    reactor.run()
    return results


def child(root: str, args: argparse.Namespace) -> dict[str, float]:
    """Run L{measure} in a fresh interpreter on the code of checkout C{root}."""
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child",
         "--keys", str(args.keys), "--runs", str(args.runs)],
        env=env, cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=1000, help="documents, one request each per run")
    p.add_argument("--runs", type=int, default=20, help="timed runs per shape; best shown")
    addAlternationArguments(p)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.keys, args.runs)))
        return
    best = bestOfRounds(args, child)
    print("in-process CPU per request (best of all runs), depth 1, SQLite store, cache warm, no TLS")
    printBest(best, SHAPES, args.baseline, "request", "<14", 2)

if __name__ == "__main__":
    main()
