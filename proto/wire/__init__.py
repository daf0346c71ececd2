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

Its parts, one job each:

  - L{proto.wire.grammar}: the delimiters, limits, status words, token
    shapes, L{FramingError}, L{oneLine} (sections 2 to 5);
  - L{proto.wire.heads}: L{Request}, L{parseHead} and the heads matched in
    place (section 3);
  - L{proto.wire.framing}: L{RequestParser}, the server's framing: heads,
    bodies by Size, the limits (sections 3 and 5);
  - L{proto.wire.encode}: the greeting, the server's frames, a client's
    request (sections 2 to 4);
  - L{proto.wire.replies}: L{ReplyParser}, what a client reads (sections
    2, 4 and 5).

Every public name is re-exported here, so C{from proto import wire} and
C{wire.encodeReply} keep working; new code may import from the part.
"""

from __future__ import annotations

from proto.wire.encode import (
    encodeError,
    encodeFrame,
    encodeFrameTail,
    encodeGreeting,
    encodePush,
    encodeReply,
    encodeReplyTail,
    encodeRequest,
)
from proto.wire.framing import RequestParser
from proto.wire.grammar import (
    CRLF,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_HEAD,
    ERR,
    HEAD_END,
    OK,
    PUSH,
    FramingError,
    oneLine,
    parseSeconds,
    parseTimeout,
)
from proto.wire.heads import (
    HEADED_REQUEST,
    SIMPLE_REQUEST,
    SIZED_REQUEST,
    Request,
    parseHead,
    simpleRequest,
)
from proto.wire.replies import Frame, Greeting, ReplyParser

__all__ = [
    "CRLF",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_HEAD",
    "ERR",
    "HEAD_END",
    "HEADED_REQUEST",
    "OK",
    "PUSH",
    "SIMPLE_REQUEST",
    "SIZED_REQUEST",
    "Frame",
    "FramingError",
    "Greeting",
    "ReplyParser",
    "Request",
    "RequestParser",
    "encodeError",
    "encodeFrame",
    "encodeFrameTail",
    "encodeGreeting",
    "encodePush",
    "encodeReply",
    "encodeReplyTail",
    "encodeRequest",
    "oneLine",
    "parseHead",
    "parseSeconds",
    "parseTimeout",
    "simpleRequest",
]
