"""
The GNP/1 wire format's shared vocabulary (C{shared/PROTOCOL.md}, sections
2 to 5): the delimiters, the default limits, the status words, the shapes
of a command name, a Sequence, a Size and a Timeout, the framing error,
one-line text and the split of a header line.

The request heads (L{proto.wire.heads}), the server's framing
(L{proto.wire.framing}), the encoders (L{proto.wire.encode}) and the
client's reply parser (L{proto.wire.replies}) all use these, so that the
two ends read and write one grammar. Its underscore names are the
package's own: outside it, use the public names (L{proto.wire}).

The other parts import the patterns' methods bound (C{_matchSize}), not
the patterns: CPython (3.11, 3.12) compiles a method call on a name that
an import bound (C{_SIZE.match(value)} after C{from ... import _SIZE})
without C{LOAD_METHOD}, so each call makes a bound-method object (measured:
the server's C{RequestParser.next} 8% slower per request for one such
call, C{_commandNames.get}). A plain call of an imported function costs
what it did when all of this was one module. C{tests/test_wire.py} checks
that no part calls a method of a name it imported.
"""

from __future__ import annotations

import math
import re

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

# Bound, for the other parts to import (see the module docstring).
_matchCommandName = _COMMAND_NAME.match
_matchSequence = _SEQUENCE.match
_matchSize = _SIZE.match
_searchLineBreakers = _LINE_BREAKERS.search


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
