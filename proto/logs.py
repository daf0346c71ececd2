"""
Logs for log shippers: C{twistd --logger proto.logs.json proto ...}
writes one JSON object per line on standard output (systemd's journal,
a container runtime or a shipper take it from there). Without
C{--logger} the text log stays the default.

Every event keeps its structured fields as Twisted's logger recorded
them (C{peer}, C{sha1}, C{cn}, C{name}, C{command}, C{reason}, ...;
C{event} names the kind of line: C{admission}, C{allowlist_reload},
C{cert_reload}, C{drain_started}, C{drain_finished}, C{watch_dropped},
...). Each line also carries C{message} (the text line a person would
read), C{level} (C{info}, C{warn}, C{error}, ...), C{time} (ISO 8601 UTC)
and, where a certificate is concerned, C{thumbprint} (its SHA-1).

Twisted's C{jsonFileLogObserver} is used with C{recordSeparator=""}: by
default it starts every record with RFC 7464's C{\\x1e}, which line-based
tools do not expect (C{shared/TWISTED_NOTES.md}, section 4).
"""

from __future__ import annotations

import datetime
import sys
from typing import IO

from twisted.logger import ILogObserver, formatEvent, jsonFileLogObserver
from zope.interface import implementer


@implementer(ILogObserver)
class StructuredJSONObserver:
    """Adds the convenience fields above, then writes the event as JSON."""

    def __init__(self, outFile: IO[str]) -> None:
        self._write = jsonFileLogObserver(outFile, recordSeparator="")

    def __call__(self, event: dict) -> None:
        event = dict(event)
        try:
            event.setdefault("message", formatEvent(event))
        except Exception:
            event.setdefault("message", repr(event.get("log_format")))
        level = event.get("log_level")
        if level is not None:
            event.setdefault("level", level.name)
        when = event.get("log_time")
        if when is not None:
            event.setdefault(
                "time",
                datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            )
        sha1 = event.get("sha1")
        if sha1 is not None:
            event.setdefault("thumbprint", sha1)
        failure = event.get("log_failure")
        if failure is not None:
            event.setdefault("traceback", failure.getTraceback())
        self._write(event)


def json() -> ILogObserver:
    """
    The zero-argument factory C{twistd --logger proto.logs.json} calls:
    JSON lines on standard output.
    """
    return StructuredJSONObserver(sys.stdout)
