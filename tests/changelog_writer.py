"""
A child process for the multi-process tests of the change log: opens the
store argv[1] (a C{--store} value: C{sqlite:PATH} or
C{postgresql:CONNINFO}; its own connections, no hub) and PUTs argv[2]
documents named argv[3] + number, argv[4] at a time, then prints the
etags it was given as one JSON list and exits.

Run as C{python -m tests.changelog_writer STORE COUNT PREFIX CONCURRENCY}.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, task

from proto.store import openStore


@defer.inlineCallbacks
def main(reactor, path: str, count: str, prefix: str, concurrency: str):
    store = openStore(path, ".", reactor=reactor)
    yield store.start()
    etags: list[int] = []
    total, width = int(count), int(concurrency)
    try:
        for start in range(0, total, width):
            versions = yield defer.gatherResults(
                [
                    store.put(f"{prefix}{number}", b'{"n": %d}' % number)
                    for number in range(start, min(start + width, total))
                ],
                consumeErrors=True,
            )
            etags += [version.etag for version in versions]
    finally:
        yield store.close()
    sys.stdout.write(json.dumps(etags) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    task.react(main, sys.argv[1:5])
