"""
What both clients share above the wire module: the L{Reply} they hand
back for an C{OK} or a C{PUSH}, how a request is encoded, and the
built-in commands as methods (L{CommandMethods}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, Sequence, TypeVar

from proto.wire.encode import encodeRequest
from proto.wire.replies import Frame

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

    def json(self) -> Any:
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


def documentBody(document: object) -> bytes:
    """A PUT body: bytes as they are, anything else encoded as JSON."""
    if isinstance(document, bytes):
        return document
    return json.dumps(document).encode("utf-8")


#: Seconds a client waits beyond a request's Timeout for the server's own
#: C{ERR Timeout} before it gives up locally (both clients).
TIMEOUT_GRACE = 1.0


def encodeClientRequest(
    command: str,
    args: Sequence[str],
    sequence: str,
    headers: Headers = None,
    body: bytes | None = None,
    timeout: float | None = None,
) -> bytes:
    """
    One request as a client sends it: the caller's headers, then
    C{Timeout} if a timeout is given.

    @raise ValueError: if the request cannot be written.
    """
    allHeaders = headerList(headers)
    if timeout is not None:
        allHeaders.append(("Timeout", formatSeconds(timeout)))
    return encodeRequest(command, args, sequence, allHeaders, body)


#: What a client's C{request} returns: a Deferred, or a L{Reply}.
R = TypeVar("R")


class CommandMethods(Generic[R]):
    """
    The built-in commands as thin methods over C{self.request(command,
    *args, headers=, body=, timeout=)}, which each client provides: they
    return whatever it returns (C{R}: a Deferred, or a L{Reply}). The
    commands that bring pushes (WATCH, UNWATCH, REMIND) differ between the
    clients and are theirs.
    """

    #: C{request(command, *args, headers=, body=, timeout=)}: the client's.
    request: Callable[..., R]

    def ping(self, **kw: Any) -> R:
        return self.request("PING", **kw)

    def echo(self, *words: str, **kw: Any) -> R:
        return self.request("ECHO", *words, **kw)

    def get(self, *ids: str, include: str | Iterable[str] | None = None, **kw: Any) -> R:
        """C{GET}; C{include} names fields whose documents to include."""
        return self.request("GET", *ids, headers=includeHeader(include), **kw)

    def put(self, id: str, document: object, ifMatch: int | None = None, **kw: Any) -> R:
        """C{PUT} a document (a JSON-able object, or bytes sent as they are)."""
        headers = [] if ifMatch is None else [("If-Match", str(ifMatch))]
        return self.request("PUT", id, headers=headers, body=documentBody(document), **kw)

    def delete(self, *ids: str, **kw: Any) -> R:
        return self.request("DELETE", *ids, **kw)

    def sleep(self, seconds: float, **kw: Any) -> R:
        return self.request("SLEEP", formatSeconds(seconds), **kw)

    def quit(self) -> R:
        """C{QUIT}: the server replies, then closes the connection."""
        return self.request("QUIT")

    # -- section 9: who may do what ------------------------------------------

    def whoami(self, **kw: Any) -> R:
        """C{WHOAMI}: this certificate, its name, level and prefixes (JSON)."""
        return self.request("WHOAMI", **kw)

    def enroll(self, newCertPem: bytes | str, **kw: Any) -> R:
        """
        C{ENROLL}: have the server admit the successor certificate
        C{newCertPem} (PEM, the certificate only, never the key) with this
        certificate's name, level and prefixes. Connect with it from now
        on; a later enrol replaces (and revokes) this successor.
        """
        body = newCertPem.encode("ascii") if isinstance(newCertPem, str) else newCertPem
        return self.request("ENROLL", body=body, **kw)

    def pending(self, **kw: Any) -> R:
        """C{PENDING} (admin): recently refused certificates, newest first."""
        return self.request("PENDING", **kw)

    def approve(self, thumbprint: str, name: str | None = None, can: str | None = None,
                prefixes: Iterable[str] | None = None, **kw: Any) -> R:
        """C{APPROVE} (admin): admit a certificate by thumbprint."""
        args = [thumbprint, *(name.split() if name else [])]
        if can is not None:
            args.append(f"can={can}")
        if prefixes is not None:
            args.append("prefix=" + ",".join(prefixes))
        return self.request("APPROVE", *args, **kw)

    def revoke(self, thumbprint: str, **kw: Any) -> R:
        """C{REVOKE} (admin): undo an approval or enrolment; cuts its connections."""
        return self.request("REVOKE", thumbprint, **kw)
