"""
Encoding what goes on the wire (C{shared/PROTOCOL.md}): the server's
greeting (section 2), its frames, C{OK}, C{ERR} and C{PUSH} (section 4;
C{ERR}'s reason folded onto one line, section 5), and a client's request
(section 3), checked so that it is one well-formed request.

C{encodeReply}'s no-header case is on every reply the server sends (and
C{proto.dispatch} inlines it; a test compares the two).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence as SequenceT

from proto.wire.grammar import (
    CRLF,
    HEAD_END,
    OK,
    PUSH,
    _matchCommandName,
    _matchSequence,
    _searchLineBreakers,
    oneLine,
)

def _headerBlock(headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(
        f"{oneLine(name)}: {oneLine(str(value))}\r\n".encode("utf-8")
        for name, value in headers
    )


def encodeFrame(
    statusLine: str,
    sequence: str | None,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """
    Encode one server frame (section 4): the status line, Sequence, Size
    when the body is not empty, other headers, the empty line, the body.
    """
    head = statusLine.encode("utf-8") + CRLF
    if sequence is not None:
        head += b"Sequence: " + sequence.encode("ascii") + CRLF
    return head + encodeFrameTail(body, headers)


def encodeFrameTail(body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """
    What follows a frame's Sequence line (L{encodeFrame}): Size when the
    body is not empty, the other headers, the empty line, the body. A
    reply sent again and again (GET's memo) keeps this, see
    L{encodeReplyTail}.
    """
    size = b"Size: %d\r\n" % (len(body),) if body else b""
    return b"".join((size, _headerBlock(headers), CRLF, body))


def encodeReplyTail(sequence: str, tail: bytes) -> bytes:
    """
    The C{OK} reply whose part after the Sequence line is C{tail}
    (L{encodeFrameTail}): the same bytes as L{encodeReply} gives for that
    body and those headers.
    """
    return b"OK\r\nSequence: %s\r\n%s" % (sequence.encode("ascii"), tail)


def encodeReply(
    sequence: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """Encode an C{OK} reply."""
    if not headers:
        # The hot path: skip the generic assembly.
        if body:
            return b"OK\r\nSequence: %s\r\nSize: %d\r\n\r\n%s" % (
                sequence.encode("ascii"), len(body), body,
            )
        return b"OK\r\nSequence: " + sequence.encode("ascii") + b"\r\n\r\n"
    return encodeFrame(OK, sequence, body, headers)


def encodeError(
    reason: str, sequence: str | None, headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """Encode an C{ERR} frame; C{reason} is folded onto one line."""
    return encodeFrame(f"ERR {oneLine(reason)}", sequence, b"", headers)


def encodePush(
    sequence: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """Encode a C{PUSH} frame for the request with C{sequence}."""
    return encodeFrame(PUSH, sequence, body, headers)


def encodeGreeting(refusal: str | None = None) -> bytes:
    """The admission line (section 2): C{OK\\r\\n} or C{ERR <reason>\\r\\n}."""
    if refusal is None:
        return b"OK\r\n"
    return f"ERR {oneLine(refusal)}\r\n".encode("utf-8")


def encodeRequest(
    command: str,
    args: SequenceT[str] = (),
    sequence: str = "1",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
) -> bytes:
    """
    Encode one client request (section 3). A C{Size} header is added when
    C{body} is given (even an empty one).

    @raise ValueError: if the command, an argument, the Sequence or a
        header could not be sent as one well-formed request.
    """
    if not _matchCommandName(command):
        raise ValueError(f"invalid command name: {command!r}")
    if not _matchSequence(sequence):
        raise ValueError(f"invalid Sequence: {sequence!r}")
    for arg in args:
        if not arg or " " in arg or _searchLineBreakers(arg):
            raise ValueError(f"invalid argument: {arg!r}")
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [" ".join([command, *args]), f"Sequence: {sequence}"]
    for name, value in items:
        if name.lower() in ("sequence", "size"):
            raise ValueError(f"header {name!r} is set by the client itself")
        if not name or ":" in name or _searchLineBreakers(name + str(value)):
            raise ValueError(f"invalid header: {name!r}")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Size: {len(body)}")
    return ("\r\n".join(lines)).encode("utf-8") + HEAD_END + (body or b"")
