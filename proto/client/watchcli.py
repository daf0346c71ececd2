"""
C{proto-cli WATCH prefix [--since N] [--documents] [--follow]}: the WATCH
options of section 8, and a C{--follow} that survives reconnects and
C{Dropped} pushes (L{proto.client.follow.WatchFollower}): it resumes from
the last etag it printed, says so on standard error, and prints a C{Gap}
push like any other. C{--since} and C{--documents} imply C{--follow}.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

from proto.client.follow import WatchFollower, watchHeaders
from proto.client.messages import Reply


def addOptions(group: Any) -> None:
    """The WATCH options, in the CLI's request group."""
    group.add_argument("--since", type=int, metavar="N",
                       help="WATCH: first replay every retained change after etag N (0: all); "
                            "implies --follow")
    group.add_argument("--documents", action="store_true",
                       help="WATCH: pushes carry the document (Include with -H Include=Field); "
                            "implies --follow")


def impliesFollow(options: Any) -> bool:
    """
    C{--since} and C{--documents} are about the pushes, which only
    C{--follow} prints: a WATCH with either follows (else it would print
    the reply and drop the catch-up it asked for).
    """
    return options.since is not None or bool(options.documents)


def extraHeaders(options: Any) -> list[tuple[str, str]]:
    """Since/Documents headers for a one-shot WATCH (ValueError if bad)."""
    return watchHeaders(options.since, options.documents, None)


def follow(
    options: Any,
    prefix: str,
    headers: list[tuple[str, str]],
    openClient: Callable[[Any], Any],
    show: Callable[[Reply], None],
    count: int | None,
) -> int:
    """
    Run a WATCH with C{--follow}: print each change as a PUSH frame until
    Ctrl-C or C{count} pushes, reconnecting and resuming as needed.
    """
    include = next((value for name, value in headers if name.lower() == "include"), None)
    follower = WatchFollower(
        lambda: openClient(options),
        prefix,
        since=options.since,
        documents=options.documents,
        include=include,
        onReconnect=lambda text: print(f"proto-cli: {text}", file=sys.stderr, flush=True),
    )
    reply = follower.start()
    print(
        f"proto-cli: watching {prefix} from etag {follower.etag} (Ctrl-C to stop)",
        file=sys.stderr, flush=True,
    )
    shown = 0
    try:
        while count is None or shown < count:
            event = follower.next(timeout=1.0)
            if event is not None:
                body = json.dumps(event, ensure_ascii=False).encode("utf-8")
                show(Reply("PUSH", reply.sequence, {}, body))
                shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
    return 0
