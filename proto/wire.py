"""
The GNP/1 wire format, sans I/O.

Everything here is plain code over C{bytes}: it never touches a socket, a
transport or the reactor, so the server protocol, the clients, the tests and
the fuzzers all call the same functions. The contract it implements is
C{shared/PROTOCOL.md}; section numbers below refer to it.

Server side::

    parser = RequestParser(maxHead, maxBody)
    parser.receive(received)
    request = parser.next()                  # None: need more; may raise FramingError
    data = encodeReply(request.sequence, body)

Client side::

    data = encodeRequest("GET", ["employees/1-A"], sequence="1")
    parser = ReplyParser()
    for frame in parser.feed(received): ...
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence as SequenceT

#: The end of every request head, and the delimiter the server's
#: LineReceiver splits on.
HEAD_END = b"\r\n\r\n"
CRLF = b"\r\n"

DEFAULT_MAX_HEAD = 8192
DEFAULT_MAX_BODY = 16 * 1024 * 1024

OK = "OK"
ERR = "ERR"
PUSH = "PUSH"

_COMMAND_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
#: 1 to 64 visible ASCII characters (section 3).
_SEQUENCE = re.compile(r"[\x21-\x7e]{1,64}\Z")
_SIZE = re.compile(r"[0-9]{1,20}\Z")
_TIMEOUT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
# Characters that may not appear inside one header line or reason line.
_LINE_BREAKERS = re.compile(r"[\x00-\x1f\x7f]+")


#: The most common request, matched in place in the receive buffer: a
#: command, arguments separated by single spaces, a Sequence header alone,
#: and the empty line. L{simpleRequest} turns a match into the same
#: L{Request} that L{parseHead} gives (a property test checks it); any
#: other head goes to L{parseHead}.
SIMPLE_REQUEST = re.compile(
    rb"([A-Za-z0-9_-]+)(?: ([^ \r\n]+(?: [^ \r\n]+)*))?\r\nSequence: ([\x21-\x7e]{1,64})" + HEAD_END
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
    SIMPLE_REQUEST.pattern[: -len(HEAD_END)] + rb"\r\nSize: ([0-9]{1,20})" + HEAD_END
)

_matchSized = SIZED_REQUEST.match

#: One more header line: a name of letters, digits and '-', then a value
#: of visible ASCII (spaces inside it only), as L{parseHead} strips it.
_EXTRA_HEADER = rb"([A-Za-z0-9-]+): ?([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)"

#: A simple head with one more header line after (as clients send it) or
#: before its Sequence: a GET with Include, the commonest head after the
#: simple ones. L{RequestParser.nextMany} takes it in place (issue 13: a
#: GET with Include spent 4-5 us more in L{parseHead} than a GET in the
#: simple run); C{Size}, C{Timeout} and C{Sequence} as the extra line go
#: to L{parseHead}, which gives the same request (a property test checks).
HEADED_REQUEST = re.compile(
    SIMPLE_REQUEST.pattern[: SIMPLE_REQUEST.pattern.index(rb"Sequence: ")]
    + rb"(?:Sequence: ([\x21-\x7e]{1,64})\r\n" + _EXTRA_HEADER
    + rb"|" + _EXTRA_HEADER + rb"\r\nSequence: ([\x21-\x7e]{1,64}))" + HEAD_END
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


class FramingError(Exception):
    """
    The input breaks the framing (section 5, second paragraph): the server
    answers C{ERR <reason>} and ends the connection.

    @ivar reason: one line for a person.
    @ivar sequence: the request's Sequence if parsing got that far, else
        C{None}.
    """

    def __init__(self, reason: str, sequence: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sequence = sequence


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


def oneLine(text: str) -> str:
    """
    Make C{text} safe to send as a reason or header value: one line, no
    control characters (section 4: a reason is one line of text).
    """
    if text.isprintable():
        # No control character (those are not printable): the common
        # case, without the regular expression (GET's Etag and Etags
        # headers take this per reply).
        return text.strip()
    return _LINE_BREAKERS.sub(" ", text).strip()


def _splitHeaderLine(line: str) -> tuple[str, str] | None:
    """C{(lower-cased name, stripped value)}, or C{None} if not C{Name: value}."""
    name, colon, value = line.partition(":")
    name = name.strip()
    if not colon or not name:
        return None
    return name.lower(), value.strip(" \t")


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
            elif not _SEQUENCE.match(value):
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
        if not _SIZE.match(rawSize):
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
    if not _COMMAND_NAME.match(command):
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


class RequestParser:
    """
    The server's framing, sans I/O (sections 3 and 5): bytes in, requests
    out, the way the client side's L{ReplyParser} (and h11's
    C{receive_data}/C{next_event}) work::

        parser = RequestParser(maxHead, maxBody)
        parser.receive(data)
        while (request := parser.next()) is not None:   # FramingError: fatal
            run(request)

    A head ends with the empty line and may be at most C{maxHead} bytes
    including it (a partial head that already has C{maxHead} bytes is over
    the limit: no delimiter can make it shorter). A head with C{Size} is
    followed by that many body bytes; its request comes out once they are
    all here, with C{body} set. The caller may stop taking requests at any
    point (paused, closing): what is left stays buffered for the next
    L{next}. The most common head, a command and a Sequence
    (L{SIMPLE_REQUEST}), is matched in place in the buffer; any other goes
    to L{parseHead}, which gives the same request for the heads both take.

    @ivar bodyPending: the request whose body is being read, or C{None}.
    @ivar bodyMissing: how many of its body bytes are still to come.
    """

    __slots__ = (
        "_buf", "_pos", "_maxHead", "_maxBody", "bodyPending", "bodyMissing", "_parts", "_keep",
        "_unread",
    )

    def __init__(self, maxHead: int = DEFAULT_MAX_HEAD, maxBody: int = DEFAULT_MAX_BODY) -> None:
        self._buf = b""
        self._pos = 0
        self._maxHead = maxHead
        self._maxBody = maxBody
        self.bodyPending: Request | None = None
        self.bodyMissing = 0
        self._parts: list[bytes] = []
        self._keep = True
        #: Requests given back by L{unread}, taken again first.
        self._unread: list[Request] | None = None

    def receive(self, data: bytes) -> None:
        """Add bytes that arrived (may be called while requests are being taken)."""
        if self._pos >= len(self._buf):
            self._buf, self._pos = data, 0
        elif data:
            self._buf, self._pos = self._buf[self._pos :] + data, 0

    def nextMany(self) -> list[Request]:
        """
        The complete requests now buffered, in order: a run of simple heads
        (L{SIMPLE_REQUEST}) parsed in one loop, or else the one request
        L{next} gives (a L{SIZED_REQUEST} head with its whole body taken in
        place); C{[]} when more bytes are needed. A caller that stops
        before the end of the list gives the rest back with L{unread}.
        This is L{next}'s work without one call and the attribute traffic
        per request (the server's hot loop); a property test checks that
        both give the same requests and errors.

        @raise FramingError: as L{next}; the requests before a framing
            error are returned first, the error comes with the next call.
        """
        unread = self._unread
        if unread is not None:
            self._unread = None
            return unread
        if self._pos >= len(self._buf):
            return []  # all taken (a body still missing needs bytes too)
        taken: list[Request] = []
        if not self.bodyMissing:
            pos, maxHead = self._pos, self._maxHead
            names, append = _commandNames, taken.append
            for command, args, sequence, other in _simpleRun(self._buf, pos):
                if other:
                    break  # not a simple head (or not a whole one yet)
                # findall gives b"" for a group that did not match; the
                # arguments' group never matches an empty string.
                size = len(command) + len(sequence) + _SIMPLE_FRAMING
                if args:
                    size += len(args) + 1
                    try:
                        words: tuple[str, ...] = tuple(args.decode().split(" "))
                    except UnicodeDecodeError:
                        break  # next() gives it to parseHead, which says why
                else:
                    words = ()
                if size > maxHead:
                    break
                name = names.get(command)
                if name is None:
                    name = _commandName(command)
                append(Request(name, words, _NO_HEADERS, sequence.decode()))
                pos += size
            self._pos = pos
            if taken:
                return taken
            sized = self._takeSized()
            if sized is not None:
                return [sized]
            headed = self._takeHeaded()
            if headed is not None:
                return [headed]
        request = self._next()
        return [] if request is None else [request]

    def _takeSized(self) -> Request | None:
        """
        The request of a L{SIZED_REQUEST} head at the position, with its
        body, if the body is all buffered and within the limits; else
        C{None}, and L{_next} takes (or refuses) it as any other head.
        """
        buf, pos = self._buf, self._pos
        sized = _matchSized(buf, pos)
        if sized is None:
            return None
        command, args, sequence, rawSize = sized.groups()
        stop = sized.end()
        size = int(rawSize)
        end = stop + size
        if stop - pos > self._maxHead or size > self._maxBody or end > len(buf):
            return None
        words = _argWords(args)
        if words is None:
            return None  # parseHead says why
        self._pos = end
        return Request(
            _commandName(command), words, _NO_HEADERS, sequence.decode(), size, None, None,
            buf[stop:end],
        )

    def _takeHeaded(self) -> Request | None:
        """
        The request of a L{HEADED_REQUEST} head at the position, if it is
        one within the head limit; else C{None}, and L{_next} takes (or
        refuses) it as any other head.
        """
        buf, pos = self._buf, self._pos
        headed = _matchHeaded(buf, pos)
        if headed is None:
            return None
        command, args, sequence, name, value, nameBefore, valueBefore, sequenceAfter = headed.groups()
        stop = headed.end()
        if stop - pos > self._maxHead:
            return None
        if sequence is None:
            sequence, name, value = sequenceAfter, nameBefore, valueBefore
        header = name.decode().lower()
        if header in _SPECIAL_HEADERS:
            return None
        words = _argWords(args)
        if words is None:
            return None  # parseHead says why
        self._pos = stop
        return Request(
            _commandName(command), words, {header: value.decode()}, sequence.decode(),
        )

    def unread(self, requests: list[Request]) -> None:
        """
        Give back requests taken by L{nextMany} but not run (the caller
        paused): they come out first from the next L{nextMany} or L{next}.
        """
        if requests:
            if self._unread:
                requests = requests + self._unread
            self._unread = requests

    def next(self) -> Request | None:
        """
        The next complete request, or C{None} when more bytes are needed.

        @raise FramingError: the bytes break the framing; the parser is
            then cleared (nothing after a framing error can be trusted).
        """
        if self._unread is not None:
            unread = self._unread
            request = unread.pop(0)
            if not unread:
                self._unread = None
            return request
        # The hot path first: a simple head, matched in place. This repeats
        # the simple-head step of _next's loop on purpose (inlined, so the
        # common request costs no extra call); keep the two in step.
        # simpleRequest is inlined too (one call less per request); a
        # property test checks this path against parseHead.
        pos = self._pos
        if not self.bodyMissing:
            simple = _matchSimple(self._buf, pos)
            if simple is not None:
                stop = simple.end()
                if stop - pos <= self._maxHead:
                    command, args, sequence = simple.groups()
                    name = _commandNames.get(command)
                    if name is None:
                        name = _commandName(command)
                    if args is None:
                        self._pos = stop
                        return Request(name, (), _NO_HEADERS, sequence.decode())
                    try:
                        words = tuple(args.decode().split(" "))
                    except UnicodeDecodeError:
                        pass  # _next gives it to parseHead, which says why
                    else:
                        self._pos = stop
                        return Request(name, words, _NO_HEADERS, sequence.decode())
        return self._next()

    def _next(self) -> Request | None:
        buf, pos = self._buf, self._pos
        end = len(buf)
        while pos < end:
            missing = self.bodyMissing
            if missing:
                take = buf[pos : pos + missing]
                pos += len(take)
                self._pos = pos
                if self._keep:
                    self._parts.append(take)
                missing -= len(take)
                self.bodyMissing = missing
                if missing:
                    return None
                request, parts = self.bodyPending, self._parts
                assert request is not None  # set with bodyMissing
                self.bodyPending, self._parts, self._keep = None, [], True
                request.body = parts[0] if len(parts) == 1 else b"".join(parts)
                return request
            simple = _matchSimple(buf, pos)
            if simple is not None:
                stop = simple.end()
                if stop - pos <= self._maxHead:
                    request = simpleRequest(simple)
                    if request is not None:
                        self._pos = stop
                        return request
            stop = buf.find(HEAD_END, pos)
            if stop < 0:
                if end - pos >= self._maxHead:
                    self._overLimit()
                self._pos = pos
                return None
            if stop + len(HEAD_END) - pos > self._maxHead:
                self._overLimit()
            head = buf[pos:stop]
            pos = stop + len(HEAD_END)
            self._pos = pos
            try:
                request = parseHead(head, self._maxBody)
            except FramingError:
                self.clear()
                raise
            if not request.size:
                return request
            self.bodyPending, self.bodyMissing = request, request.size
        self._pos = pos
        return None

    def _overLimit(self) -> None:
        self.clear()
        raise FramingError(f"Request head is over the limit of {self._maxHead} bytes")

    def discardBody(self) -> None:
        """
        Do not keep the pending body's bytes (it was refused for memory):
        they are still read, and its request still comes out, with an
        empty body, so that it can be answered.
        """
        self._keep = False
        self._parts = []

    @property
    def headPending(self) -> bool:
        """Are bytes buffered that are not (yet) a whole request nor body bytes?"""
        return self._pos < len(self._buf) and not self.bodyMissing

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input and the pending body's bytes so far."""
        return len(self._buf) - self._pos + sum(len(p) for p in self._parts)

    def clear(self) -> bytes:
        """Forget everything buffered (input and any pending body); return the input."""
        rest = self._buf[self._pos :]
        self._buf, self._pos, self._unread = b"", 0, None
        self.bodyPending, self.bodyMissing, self._parts, self._keep = None, 0, [], True
        return rest


def parseSeconds(value: str, allowZero: bool = False) -> float | None:
    """
    Parse decimal seconds (C{"30"}, C{"0.5"}): no sign, no exponent,
    finite, greater than 0 (or equal to it with C{allowZero}). Return
    C{None} if C{value} is not one.
    """
    if not _TIMEOUT.match(value):
        return None
    seconds = float(value)
    if math.isinf(seconds) or seconds < 0 or (seconds == 0 and not allowZero):
        return None
    return seconds


def parseTimeout(value: str) -> float | None:
    """
    Parse a Timeout header value (section 3): decimal seconds, greater
    than 0. Return C{None} if it is not one.
    """
    return parseSeconds(value)


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
    if not _COMMAND_NAME.match(command):
        raise ValueError(f"invalid command name: {command!r}")
    if not _SEQUENCE.match(sequence):
        raise ValueError(f"invalid Sequence: {sequence!r}")
    for arg in args:
        if not arg or " " in arg or _LINE_BREAKERS.search(arg):
            raise ValueError(f"invalid argument: {arg!r}")
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [" ".join([command, *args]), f"Sequence: {sequence}"]
    for name, value in items:
        if name.lower() in ("sequence", "size"):
            raise ValueError(f"header {name!r} is set by the client itself")
        if not name or ":" in name or _LINE_BREAKERS.search(name + str(value)):
            raise ValueError(f"invalid header: {name!r}")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Size: {len(body)}")
    return ("\r\n".join(lines)).encode("utf-8") + HEAD_END + (body or b"")


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
                if not _SIZE.match(value):
                    raise FramingError(f"malformed Size in reply: {value[:40]!r}")
                size = int(value)
            else:
                headers[name] = value
        return Frame(kind, reason, sequence, headers), size
