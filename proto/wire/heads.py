"""
A request head and what it says (C{shared/PROTOCOL.md}, section 3; its
framing errors, section 5): L{Request}, L{parseHead} for every form the
contract allows, and the common shapes the server matches in place in its
receive buffer (L{SIMPLE_REQUEST}, L{SIZED_REQUEST}, L{HEADED_REQUEST}),
which give the same L{Request} as L{parseHead} for the heads they match
(property tests in C{tests/test_wire.py} check it).

Where a head ends and its body's bytes are is the framing's job
(L{proto.wire.framing.RequestParser}); the underscore names below are
shared with it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from proto.wire.grammar import (
    DEFAULT_MAX_BODY,
    HEAD_END,
    FramingError,
    _matchCommandName,
    _matchSequence,
    _matchSize,
    _splitHeaderLine,
    oneLine,
    parseTimeout,
)

def _possessive(pattern: bytes) -> bytes:
    """
    C{pattern}, whose repeats are written possessive (C{++}, C{*+},
    C{?+}, C{{m,n}+}: Python 3.11's C{re}), as it is on 3.11 and later;
    before, the same pattern with ordinary repeats.

    Why possessive: the in-place heads' grammar is deterministic (each
    repeat stops at a byte it cannot take, and only such a byte may follow
    it), so a repeat never giving bytes back changes no match and no
    failure, and spares the engine the backtracking through every shorter
    command, argument and value before it gives up on a head of another
    shape. A GET with Include, tried as a simple head first and then as a
    sized one before it matches as a headed one, spent about 19k
    instructions in the three (bench/instructions.py --shape include,
    issue 13).
    """
    if sys.version_info >= (3, 11):
        return pattern
    return re.sub(rb"([+*?}])\+", rb"\1", pattern)


#: The most common request, matched in place in the receive buffer: a
#: command, arguments separated by single spaces, a Sequence header alone,
#: and the empty line. L{simpleRequest} turns a match into the same
#: L{Request} that L{parseHead} gives (a property test checks it); any
#: other head goes to L{parseHead}.
SIMPLE_REQUEST = re.compile(
    _possessive(
        rb"([A-Za-z0-9_-]++)(?: ([^ \r\n]++(?: [^ \r\n]++)*+))?+\r\nSequence: ([\x21-\x7e]{1,64}+)" + HEAD_END
    )
)

_matchSimple = SIMPLE_REQUEST.match

#: A run of simple requests in one C call (L{RequestParser.nextMany}):
#: C{findall} gives each one's groups, and the last alternative, which
#: matches at the first byte that does not start a simple head and takes
#: the rest of the buffer in O(1) (C{.*} under DOTALL jumps to the end),
#: ends the run there. So the matches are back to back from the start:
#: every position is matched by one branch or the other, none skipped.
_SIMPLE_RUN = re.compile(b"(?:" + SIMPLE_REQUEST.pattern + rb")|(?s:(.).*)")
_simpleRun = _SIMPLE_RUN.findall
#: What a simple head has besides its command, arguments and Sequence:
#: C{"\r\nSequence: "} and the empty line.
_SIMPLE_FRAMING = len(b"\r\nSequence: ") + len(HEAD_END)

#: A simple head with a C{Size} header after the Sequence (a PUT as the
#: clients send it): L{RequestParser.nextMany} takes it in place too when
#: its whole body is buffered (issue 13: L{parseHead} and the body loop
#: cost a 1 KiB PUT about 5 us more); anything else goes to L{parseHead}.
SIZED_REQUEST = re.compile(
    SIMPLE_REQUEST.pattern[: -len(HEAD_END)] + _possessive(rb"\r\nSize: ([0-9]{1,20}+)") + HEAD_END
)

_matchSized = SIZED_REQUEST.match

#: One more header line: a name of letters, digits and '-', then a value
#: of visible ASCII (spaces inside it only), as L{parseHead} strips it.
#: (Words of visible ASCII between runs of spaces: the same bytes as
#: C{[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?}, written so that it needs
#: no backtracking.)
_EXTRA_HEADER = _possessive(rb"([A-Za-z0-9-]++): ?+([\x21-\x7e]++(?: ++[\x21-\x7e]++)*+)")

#: A simple head with one more header line after (as clients send it) or
#: before its Sequence: a GET with Include, the commonest head after the
#: simple ones. L{RequestParser.nextMany} takes it in place (issue 13: a
#: GET with Include spent 4-5 us more in L{parseHead} than a GET in the
#: simple run); C{Size}, C{Timeout} and C{Sequence} as the extra line go
#: to L{parseHead}, which gives the same request (a property test checks).
HEADED_REQUEST = re.compile(
    SIMPLE_REQUEST.pattern[: SIMPLE_REQUEST.pattern.index(rb"Sequence: ")]
    + _possessive(rb"(?:Sequence: ([\x21-\x7e]{1,64}+)\r\n") + _EXTRA_HEADER
    + rb"|" + _EXTRA_HEADER + _possessive(rb"\r\nSequence: ([\x21-\x7e]{1,64}+))") + HEAD_END
)

_matchHeaded = HEADED_REQUEST.match

#: Header names that L{parseHead} treats on their own (not in C{headers}
#: as they are): a head with one of these as its extra line goes there.
_SPECIAL_HEADERS = frozenset({"sequence", "size", "timeout"})

#: The headers of a request that has none but Sequence: shared, read-only.
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

#: Command names seen, bytes to upper-case text (bounded: names come from
#: clients).
_commandNames: dict[bytes, str] = {}
#: Its C{get}, bound for L{proto.wire.framing} to import (see
#: L{proto.wire.grammar}'s docstring: no method calls on imported names).
_knownCommandName = _commandNames.get


@dataclass(slots=True)
class Request:
    """
    A parsed request head (and, once read, its body).

    @ivar command: the command name, upper-cased.
    @ivar args: the arguments, in order.
    @ivar headers: header names lower-cased, values stripped; every header
        except Sequence and Size (Timeout included, for commands that care).
    @ivar sequence: the client's Sequence token.
    @ivar size: the body length announced by Size, or C{None}.
    @ivar timeout: seconds from the Timeout header, or C{None}.
    @ivar error: a per-request problem found in the head (bad command name,
        bad Timeout): the request gets C{ERR error} and nothing runs, but
        the connection stays.
    @ivar body: the body bytes (empty until the protocol has read them).
    """

    command: str
    args: tuple[str, ...]
    headers: Mapping[str, str]
    sequence: str
    size: int | None = None
    timeout: float | None = None
    error: str | None = None
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """Return header C{name} (any case), or C{default}."""
        return self.headers.get(name.lower(), default)


def simpleRequest(match: "re.Match[bytes]") -> Request | None:
    """
    The request matched by L{SIMPLE_REQUEST}, or C{None} if its arguments
    are not UTF-8 (L{parseHead} reports that).
    """
    command, args, sequence = match.groups()
    words = _argWords(args)
    if words is None:
        return None
    name = _commandName(command)
    # The Sequence matched [\x21-\x7e]: decoding as UTF-8 (the default,
    # the fastest) gives the same text as ASCII.
    return Request(name, words, _NO_HEADERS, sequence.decode())


def _argWords(args: bytes | None) -> tuple[str, ...] | None:
    """
    The words of a matched head's arguments (none for C{None}), or
    C{None} when they are not UTF-8 (L{parseHead} says why).
    """
    if args is None:
        return ()
    try:
        return tuple(args.decode().split(" "))
    except UnicodeDecodeError:
        return None


def _commandName(command: bytes) -> str:
    """The upper-case text of a command name (cached: names repeat)."""
    name = _commandNames.get(command)
    if name is None:
        name = command.decode("ascii").upper()
        if len(_commandNames) < 1024:
            _commandNames[command] = name
    return name


def parseHead(head: bytes, maxBody: int = DEFAULT_MAX_BODY) -> Request:
    """
    Parse one request head: every form the contract allows, every framing
    error. (The server first tries L{SIMPLE_REQUEST} in place, which gives
    the same request for the heads it matches, cheaper.)

    @param head: the bytes of the head, without the final empty line (that
        is, what a LineReceiver with delimiter C{HEAD_END} delivers). The
        caller enforces the head-size limit, since only it knows how the
        bytes arrived.
    @param maxBody: the largest Size accepted.
    @raise FramingError: for every framing error of section 5.
    """
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise FramingError("Request head is not valid UTF-8") from None

    lines = text.split("\r\n")
    words = lines[0].split(" ")
    if "" in words:
        words = [w for w in words if w]

    # One pass over the header lines; errors are raised afterwards so that
    # any framing error can still quote the Sequence ("with Sequence: if it
    # got that far").
    headers: dict[str, str] = {}
    sequence: str | None = None
    sequenceProblem: str | None = None
    badLine: str | None = None
    rawSize: str | None = None
    sizeCount = 0
    for line in lines[1:]:
        pair = _splitHeaderLine(line)
        if pair is None:
            if badLine is None:
                badLine = line
            continue
        name, value = pair
        if name == "sequence":
            if sequence is not None and value != sequence:
                sequenceProblem = "Conflicting Sequence headers"
            elif not _matchSequence(value):
                sequenceProblem = (
                    "Malformed Sequence: must be 1 to 64 visible ASCII characters"
                )
            else:
                sequence = value
        elif name == "size":
            sizeCount += 1
            rawSize = value
        elif name in headers:
            # Repeated headers combine, as in HTTP (Include: A / Include: B).
            headers[name] = headers[name] + "," + value
        else:
            headers[name] = value
    if sequenceProblem is not None:
        sequence = None

    if not words:
        raise FramingError("Empty command line", sequence)
    if badLine is not None:
        raise FramingError(
            f"Malformed header line (expected 'Name: value'): {oneLine(badLine)[:80]!r}",
            sequence,
        )
    if sequenceProblem is not None:
        raise FramingError(sequenceProblem)
    if sequence is None:
        raise FramingError("Missing Sequence header")

    size: int | None = None
    if rawSize is not None:
        if sizeCount > 1:
            raise FramingError("More than one Size header", sequence)
        if not _matchSize(rawSize):
            raise FramingError(
                f"Malformed Size: {oneLine(rawSize)[:40]!r} is not a decimal length",
                sequence,
            )
        size = int(rawSize)
        if size > maxBody:
            raise FramingError(
                f"Size {size} is over the body limit of {maxBody} bytes", sequence
            )

    command = words[0]
    error: str | None = None
    if not _matchCommandName(command):
        error = (
            f"Malformed command name: {oneLine(command)[:64]!r} "
            "(letters, digits, '-' and '_' only)"
        )

    timeout: float | None = None
    rawTimeout = headers.get("timeout")
    if rawTimeout is not None and error is None:
        timeout = parseTimeout(rawTimeout)
        if timeout is None:
            error = (
                f"Malformed Timeout: {oneLine(rawTimeout)[:40]!r} "
                "(seconds, a decimal number greater than 0)"
            )

    return Request(
        command=command.upper(),
        args=tuple(words[1:]),
        headers=headers,
        sequence=sequence,
        size=size,
        timeout=timeout,
        error=error,
    )
