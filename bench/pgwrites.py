"""
The PostgreSQL store's write path alone, in process (no TLS, no protocol):
one writer doing PUTs one after the other (1 client) on a throwaway
PostgreSQL cluster with fsync on (tests/pgsupport.py), for each way a PUT
can go (issue 13):

  - reactor, 1 round trip: the reactor's writer, the documents known from
    its last commit (guarded under the lock: proto/store/postgres_writer.py);
  - reactor, 2 round trips: the same with nothing remembered (lock and
    read, then write and commit);
  - thread: the writer thread (psycopg), as before the reactor's writer.

Each variant runs --seconds, --repeat times, alternating; printed per run:
PUTs, latency p50/p90/p99/mean (us), this process's CPU per PUT and the
cluster's (its postmaster and processes, as bench/run.py --our-store
postgresql counts it; us).

    python bench/pgwrites.py --seconds 3 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clusterCpu(dataDir: str) -> float:
    """The cluster's CPU seconds so far: the postmaster and its processes (and reaped ones)."""
    with open(os.path.join(dataDir, "postmaster.pid")) as f:
        postmaster = int(f.readline())
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster:
            total += sum(int(x) for x in fields[11:15]) / tick  # (with reaped children)
        elif int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--keys", type=int, default=50)
    a = p.parse_args()

    from twisted.internet import defer, reactor
    from twisted.internet.task import deferLater

    from proto.hub import ChangeHub
    from proto.store import postgres_writer
    from proto.store.postgres import PostgresStore
    from tests.pgsupport import PostgresCluster

    cluster = PostgresCluster(fsync=True)
    cluster.start()
    conninfo = cluster.createDatabase()
    body = b'{"x": "' + b"a" * 1000 + b'"}'
    defaultCache = postgres_writer.MAX_CACHED
    variants = [("reactor, 1 round trip", True, defaultCache),
                ("reactor, 2 round trips", True, 0),
                ("thread", False, defaultCache)]

    @defer.inlineCallbacks
    def run() -> defer.Generator[defer.Deferred[object], object, None]:
        try:
            for _ in range(a.repeat):
                for name, reactorWrites, cached in variants:
                    postgres_writer.MAX_CACHED = cached
                    store = PostgresStore(conninfo, hub=ChangeHub(), reactorWrites=reactorWrites)
                    yield store.start()
                    for _ in range(500):
                        if store.reactorWriter is None or store.reactorWriter.open:
                            break
                        yield deferLater(reactor, 0.01, lambda: None)
                    for n in range(a.keys):
                        yield store.put(f"bench/{n}", body)
                    latencies = []
                    end = time.monotonic() + a.seconds
                    cpu = time.process_time()
                    db = clusterCpu(cluster.dataDir)
                    n = 0
                    while time.monotonic() < end:
                        started = time.perf_counter()
                        yield store.put(f"bench/{n % a.keys}", body)
                        latencies.append((time.perf_counter() - started) * 1e6)
                        n += 1
                    cpu = time.process_time() - cpu
                    db = clusterCpu(cluster.dataDir) - db
                    latencies.sort()
                    count = len(latencies)
                    print(f"{name:24} {count:6} PUTs  p50 {latencies[count // 2]:5.0f}  "
                          f"p90 {latencies[count * 9 // 10]:5.0f}  p99 {latencies[count * 99 // 100]:5.0f}  "
                          f"mean {statistics.mean(latencies):5.0f} us  CPU {cpu / count * 1e6:4.0f} + "
                          f"{db / count * 1e6:4.0f} db us/PUT",
                          flush=True)
                    yield store.close()
        finally:
            postgres_writer.MAX_CACHED = defaultCache
            cluster.destroy()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()


if __name__ == "__main__":
    main()
