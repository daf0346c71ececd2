"""
The server's request framing, sans I/O (C{shared/PROTOCOL.md}, sections 3
and 5): L{RequestParser} takes the bytes a connection received and gives
back whole requests, heads parsed and bodies read by C{Size}, and enforces
the head and body limits. This is the per-request hot path of the server:
the common heads are matched in place (the shapes and helpers of
L{proto.wire.heads}), any other goes to L{proto.wire.heads.parseHead}.
"""

from __future__ import annotations

from proto.wire.grammar import DEFAULT_MAX_BODY, DEFAULT_MAX_HEAD, HEAD_END, FramingError
from proto.wire.heads import (
    _NO_HEADERS,
    _SIMPLE_FRAMING,
    _SPECIAL_HEADERS,
    Request,
    _argWords,
    _commandName,
    _commandNames,
    _knownCommandName,
    _matchHeaded,
    _matchSimple,
    _matchSized,
    _simpleRun,
    parseHead,
    simpleRequest,
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
            # Not a simple head: one with a Size line (a PUT) or with one
            # more header line (a GET with Include) may still be taken in
            # place. A head names a Size exactly when SIZED_REQUEST may
            # match it and HEADED_REQUEST may not (no line but a header's
            # starts with it, and neither a value nor an argument holds a
            # line break), so only that one is tried: a failed match costs
            # about what a successful one does (issue 13). A head not
            # complete yet matches neither.
            buf = self._buf
            end = buf.find(HEAD_END, pos)
            if end >= 0:
                if buf.find(b"\r\nSize: ", pos, end) >= 0:
                    sized = self._takeSized()
                    if sized is not None:
                        return [sized]
                else:
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
        # _argWords and _commandName, inlined (one GET with Include each).
        if args is None:
            words: tuple[str, ...] = ()
        else:
            try:
                words = tuple(args.decode().split(" "))
            except UnicodeDecodeError:
                return None  # parseHead says why
        names = _commandNames
        commandName = names.get(command)
        if commandName is None:
            commandName = _commandName(command)
        self._pos = stop
        return Request(commandName, words, {header: value.decode()}, sequence.decode())

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
                    name = _knownCommandName(command)
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
