"""
What both clients share above the wire module: the L{Reply} they hand
back for an C{OK} or a C{PUSH}, and small helpers that turn Python values
into request headers and bodies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from proto.wire import Frame

Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None


@dataclass(frozen=True)
class Reply:
    """
    An C{OK} reply or a C{PUSH} frame.

    @ivar status: C{"OK"} or C{"PUSH"}.
    @ivar sequence: the Sequence of the request it answers.
    @ivar headers: headers other than Sequence and Size, names lower-cased.
    @ivar body: the body bytes (empty when the frame had no Size).
    """

    status: str
    sequence: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def fromFrame(cls, frame: Frame) -> "Reply":
        return cls(frame.kind, frame.sequence or "", dict(frame.headers), frame.body)

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self):
        """
        The body parsed as JSON.

        @raise ValueError: if it is not JSON.
        """
        return json.loads(self.body)


def formatSeconds(seconds: float) -> str:
    """
    Write seconds the way the Timeout header wants them: plain decimal,
    no exponent.

    @raise ValueError: if C{seconds} is not greater than 0 once written.
    """
    text = f"{seconds:.6f}".rstrip("0").rstrip(".")
    if seconds <= 0 or text == "0":
        raise ValueError(f"a timeout must be more than 0 seconds, not {seconds!r}")
    return text


def headerList(headers: Headers) -> list[tuple[str, str]]:
    """Headers given as a mapping or as pairs, as a list of pairs."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, str(value)) for name, value in items]


def includeHeader(include: str | Iterable[str] | None) -> list[tuple[str, str]]:
    """The C{Include} header for a GET, if any fields are to be included."""
    if not include:
        return []
    return [("Include", include if isinstance(include, str) else ",".join(include))]


def documentBody(document) -> bytes:
    """A PUT body: bytes as they are, anything else encoded as JSON."""
    if isinstance(document, bytes):
        return document
    return json.dumps(document).encode("utf-8")


#: Seconds a client waits beyond a request's Timeout for the server's own
#: C{ERR Timeout} before it gives up locally (both clients).
TIMEOUT_GRACE = 1.0
