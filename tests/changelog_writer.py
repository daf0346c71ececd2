"""
A child process for the multi-process tests of the change log: opens the
SQLite store at argv[1] (its own connections, no hub) and PUTs argv[2]
documents named argv[3] + number, argv[4] at a time, then prints the
etags it was given as one JSON list and exits.

Run as C{python -m tests.changelog_writer PATH COUNT PREFIX CONCURRENCY}.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, task

from proto.store.sqlite import SQLiteStore


@defer.inlineCallbacks
def main(reactor, path: str, count: str, prefix: str, concurrency: str):
    store = SQLiteStore(path, reactor=reactor)
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
