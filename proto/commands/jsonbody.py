"""
Checking that a request body is a JSON object (PUT, PROTOCOL.md section 6),
in our own words and without stalling the server.

The check only validates: it never builds the document (the store keeps
the text the client sent). Hooks replace each object with a marker and
each number with 0, which is several times faster than C{json.loads}
building everything, and keeps memory small. The hooks are Python
functions, so the interpreter can switch threads at every object and
number; that is what makes validating off the reactor thread worth it
(C{json.loads} alone holds the GIL from start to end, so running it in
a thread would stall the reactor just as long). Bodies over
L{INLINE_LIMIT} bytes are checked in the reactor's thread pool; smaller
ones inline, where a thread hop would cost more than the check.

Integers are limited to L{MAX_INTEGER_DIGITS} digits: Python refuses to
convert longer ones (C{sys.set_int_max_str_digits}), so a document with
one could never be read back with an Include; it is refused up front,
with a reason that says so.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from proto.commands.base import CommandError
from proto.wire.heads import Request

#: Bodies larger than this are validated off the reactor thread.
INLINE_LIMIT = 64 * 1024

#: Longest integer (digits) a body may contain; Python's own default limit.
MAX_INTEGER_DIGITS = 4300

_OBJECT = object()


class _BadValue(ValueError):
    """A value the hooks refuse; its message is the reason to send."""


def _object(pairs: list[tuple[str, object]]) -> object:
    return _OBJECT


def _integer(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INTEGER_DIGITS:
        raise _BadValue(
            f"Body is not usable JSON: an integer has {digits} digits, more than "
            f"the {MAX_INTEGER_DIGITS} allowed"
        )
    return 0


def _float(text: str) -> int:
    return 0


def _constant(name: str) -> None:
    raise _BadValue(f"Body is not valid JSON: {name} is not valid JSON")


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def _decoder() -> json.JSONDecoder:
    return json.JSONDecoder(
        object_pairs_hook=_object, parse_int=_integer, parse_float=_float,
        parse_constant=_constant,
    )


#: The decoder of the bodies checked on the reactor thread, made once
#: (C{json.loads} with hooks makes one per call). A decoder's scanner is
#: not to be shared between threads: bodies checked in the thread pool
#: get their own.
_reactorDecoder = _decoder()


def checkObject(body: bytes, decoder: json.JSONDecoder | None = None) -> None:
    """
    Refuse C{body} unless it is UTF-8 JSON text of an object.

    @param decoder: from L{_decoder}, used by one thread only; C{None}:
        a new one.
    @raise CommandError: saying what is wrong.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CommandError(f"Body is not valid UTF-8: {e.reason} at byte {e.start}") from None
    try:
        if text.startswith("\ufeff"):
            # What json.loads says of a str with a BOM (decode() does not check).
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = (decoder or _decoder()).decode(text)
    except _BadValue as e:
        raise CommandError(str(e)) from None
    except ValueError as e:
        raise CommandError(f"Body is not valid JSON: {e}") from None
    except RecursionError:
        raise CommandError("Body is not usable JSON: nested too deeply") from None
    if value is not _OBJECT:
        raise CommandError(f"Body must be a JSON object, not {_kind(value)}")


def checkObjectBody(request: Request) -> Deferred[None] | None:
    """
    Check a PUT's body: C{None} when it was checked here and is fine, a
    Deferred when it is large and being checked in a thread (it fails with
    L{CommandError}).

    @raise CommandError: no body, or a small body that is not an object.
    """
    if request.size is None:
        raise CommandError(
            "PUT needs a body: a JSON object, sent after the head with a Size header"
        )
    if len(request.body) <= INLINE_LIMIT:
        checkObject(request.body, _reactorDecoder)
        return None
    return deferToThread(checkObject, request.body)
