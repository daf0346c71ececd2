"""
The bytes of WATCH's pushes (C{shared/PROTOCOL.md}, sections 6 and 8),
made for L{proto.commands.watchstream}: each change's push body
C{{"Id": id, "Type": "Put" or "Delete", "Etag": n}}, a C{Gap}, and a
C{Put} with its C{Document} (and C{Includes}) spliced in as stored.

Fan-out
=======
The JSON of a change is encoded once for all the watches it goes to (and
the whole pushes once for all the watches with the same Sequence); the
server's hub delivers what was committed during a reactor turn at once
(L{proto.hub}), so the pushes one watch gets per turn go out in one
write. The unsent bytes are checked before every write from a Python
bound (L{proto.unsent.UnsentBound}: the last exact figure plus what was
written since), so the kernel is asked only when that bound nears
L{SLOW_BYTES}, or once a second; a write is at most L{CATCHUP_WINDOW}
(a bigger batch goes push by push, checked as it goes).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Union

from proto.store.base import PUT, Change, Document



def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


#: The last change encoded, and its push body: every watch a change goes
#: to asks in turn, so one entry makes it one encoding per change.
_lastEncoded: list[Any] = [None, b""]


def changeBody(change: Change) -> bytes:
    """The push body of a change: C{{"Id": ..., "Type": ..., "Etag": ...}}."""
    if _lastEncoded[0] is change:
        cached: bytes = _lastEncoded[1]
        return cached
    body = _json({"Id": change.id, "Type": change.type, "Etag": change.etag})
    _lastEncoded[0], _lastEncoded[1] = change, body
    return body


class _Gap(NamedTuple):
    """A Gap push waiting in line: changes in (since, etag] may be missing."""

    since: int
    etag: int

    def body(self) -> bytes:
        return _json({"Type": "Gap", "Since": self.since, "Etag": self.etag})


_Item = Union[Change, _Gap]


def _tail(change: Change) -> bytes:
    body = _json({"Id": change.id, "Type": change.type, "Etag": change.etag})
    return b"%d\r\n\r\n%s" % (len(body), body)


#: The last batch of changes turned into frame tails (everything after
#: C{Size: }), those tails, and the whole pushes by head (watches made with
#: the same Sequence on different connections share them): the watches of
#: one prefix get the same list from the hub in turn, so each batch is
#: encoded once for all of them.
_lastBatch: list[Any] = [None, [], {}]


def batchTails(changes: list[Change]) -> list[bytes]:
    """The frame tails (size, empty line, body) of a published batch, encoded once."""
    if _lastBatch[0] is not changes:
        _lastBatch[0], _lastBatch[1], _lastBatch[2] = changes, [_tail(c) for c in changes], {}
    tails: list[bytes] = _lastBatch[1]
    return tails


def batchFrames(changes: list[Change], head: bytes) -> bytes:
    """The pushes of a published batch behind C{head} (C{PUSH}, Sequence, C{Size: })."""
    tails = batchTails(changes)
    byHead: dict[bytes, bytes] = _lastBatch[2]
    data = byHead.get(head)
    if data is None:
        data = byHead[head] = head + head.join(tails)
    return data


def _documentBody(
    change: Change, document: Document | None, includes: list[Document] | None
) -> bytes:
    """A push with C{Document} (and C{Includes}), the stored JSON spliced in."""
    parts = [changeBody(change)[:-1]]
    if change.type == PUT:
        parts.append(b', "Document": ')
        parts.append(b"null" if document is None else document.body)
        if includes is not None:
            parts.append(b', "Includes": {')
            parts.append(b", ".join(_json(doc.id) + b": " + doc.body for doc in includes))
            parts.append(b"}")
    parts.append(b"}")
    return b"".join(parts)
