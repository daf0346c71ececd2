"""
The client side of the framing, sans I/O (C{shared/PROTOCOL.md}, sections
2, 4 and 5): L{ReplyParser} reads what a server sends, the greeting line
(L{Greeting}) and then frames (L{Frame}), from bytes as they arrive. Both
clients (C{proto.client.core}) and the tests read the server through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proto.wire.grammar import (
    CRLF,
    ERR,
    HEAD_END,
    OK,
    PUSH,
    FramingError,
    _matchSize,
    _splitHeaderLine,
)

@dataclass
class Frame:
    """
    One frame received by a client.

    @ivar kind: C{"OK"}, C{"ERR"} or C{"PUSH"}.
    @ivar reason: the text after C{ERR}, else C{""}.
    @ivar sequence: the Sequence header, or C{None} (a fatal error that came
        before the server could read one).
    @ivar headers: other headers, names lower-cased.
    @ivar body: the body.
    """

    kind: str
    reason: str
    sequence: str | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Greeting:
    """The admission line: C{ok} is C{True} for C{OK}, else C{reason} says why."""

    ok: bool
    reason: str = ""


class ReplyParser:
    """
    Incremental parser for what a server sends: first the greeting line,
    then frames. Feed it bytes as they arrive; it returns what is complete.

    @raise FramingError: from L{feed} when the server's bytes are not
        GNP/1 (the client should drop the connection).
    """

    def __init__(self, expectGreeting: bool = True, maxHead: int = 65536) -> None:
        self._buffer = bytearray()
        self._greeted = not expectGreeting
        self._maxHead = maxHead
        self._pending: Frame | None = None
        self._need = 0

    def feed(self, data: bytes) -> list[Frame | Greeting]:
        self._buffer += data
        out: list[Frame | Greeting] = []
        while True:
            if self._pending is not None:
                if len(self._buffer) < self._need:
                    break
                frame = self._pending
                frame.body = bytes(self._buffer[: self._need])
                del self._buffer[: self._need]
                self._pending = None
                out.append(frame)
                continue
            if not self._greeted:
                end = self._buffer.find(CRLF)
                if end < 0:
                    self._checkLength()
                    break
                line = bytes(self._buffer[:end]).decode("utf-8", "replace")
                del self._buffer[: end + 2]
                self._greeted = True
                if line == OK:
                    out.append(Greeting(True))
                elif line.startswith("ERR"):
                    out.append(Greeting(False, line[3:].strip()))
                else:
                    raise FramingError(f"unexpected greeting: {line[:80]!r}")
                continue
            end = self._buffer.find(HEAD_END)
            if end < 0:
                self._checkLength()
                break
            head = bytes(self._buffer[:end]).decode("utf-8", "replace")
            del self._buffer[: end + 4]
            frame, size = self._parseFrameHead(head)
            if size:
                self._pending, self._need = frame, size
            else:
                out.append(frame)
        return out

    def _checkLength(self) -> None:
        if len(self._buffer) > self._maxHead:
            raise FramingError("reply head is too long")

    @staticmethod
    def _parseFrameHead(head: str) -> tuple[Frame, int]:
        lines = head.split("\r\n")
        status = lines[0]
        if status == OK or status == PUSH:
            kind, reason = status, ""
        elif status == ERR or status.startswith("ERR "):
            kind, reason = ERR, status[4:]
        else:
            raise FramingError(f"unexpected frame status line: {status[:80]!r}")
        sequence = None
        size = 0
        headers: dict[str, str] = {}
        for line in lines[1:]:
            pair = _splitHeaderLine(line)
            if pair is None:
                raise FramingError(f"malformed header line in reply: {line[:80]!r}")
            name, value = pair
            if name == "sequence":
                sequence = value
            elif name == "size":
                if not _matchSize(value):
                    raise FramingError(f"malformed Size in reply: {value[:40]!r}")
                size = int(value)
            else:
                headers[name] = value
        return Frame(kind, reason, sequence, headers), size
