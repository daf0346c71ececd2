"""
GET's C{Include} header (C{shared/PROTOCOL.md}, section 6): parsing it,
and following it through the result documents with bounded work.

A field is a dotted path into the result documents (C{Address.Country});
where a step meets a list, it goes on into each item of the list (one
level). The value reached may be an id or a list of ids.

Bounds (issue 12, item 1)
=========================
One small GET head can ask for a lot: 600 ids and 2,000 paths over a
field that holds a 40-element list is 48 million candidate ids. So:

  - repeated ids and repeated paths count once (a result document is
    parsed and walked once, however often it is asked for);
  - a GET whose Include names more than L{MAX_INCLUDED} distinct ids
    fails with C{ERR Include too large: ...}, and so does one whose walk
    visits more than L{MAX_INCLUDE_STEPS} values (each list item, object
    field and string looked at is one step; parsing a result counts one
    step per KiB of it);
  - the walk yields C{None} every L{TICK} steps, where the store checks
    whether the request was cancelled (its Timeout, or its connection
    gone) and stops it (see L{proto.store.base.IDocumentStore.read}).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from proto.commands.base import CommandError
from proto.store.base import Document, idKey

#: The most distinct ids one GET's Include may name.
MAX_INCLUDED = 10_000

#: The most steps (values looked at) following one GET's Include may take.
MAX_INCLUDE_STEPS = 1_000_000

#: The walk yields a progress tick (C{None}) every this many steps.
TICK = 256


def parseInclude(value: str | None) -> list[tuple[str, ...]]:
    """
    Parse an C{Include} header value into field paths: C{"A.B, C"} gives
    C{[("A", "B"), ("C",)]}. No header, no paths. A path given twice is
    kept once, where it first appears.

    @raise CommandError: for an empty field or an empty path step.
    """
    if value is None:
        return []
    paths: dict[tuple[str, ...], None] = {}
    for field in value.split(","):
        field = field.strip()
        if not field:
            raise CommandError(
                f"Malformed Include {value!r}: empty field name "
                "(expected Field[,Field...])"
            )
        path = tuple(field.split("."))
        if not all(path):
            raise CommandError(
                f"Malformed Include field {field!r}: empty step in a dotted path"
            )
        paths[path] = None
    return list(paths)


def referencedIds(document: Any, path: tuple[str, ...]) -> Iterator[str]:
    """
    The strings that C{path} reaches in C{document} (parsed JSON): the
    candidate ids of an Include. At each step a list is walked into, one
    level; at the end a string counts, and so do the strings of a list.
    (Unbounded: L{IncludeWalk} is the bounded form the GET uses.)
    """
    for item in _walk(document, path, _Budget()):
        if item is not None:
            yield item


def includedIds(results: list[Document | None], paths: list[tuple[str, ...]]) -> Iterator[str]:
    """
    Every candidate id the results reference along C{paths}, repeats
    included, unbounded (WATCH follows one pushed document at a time).
    """
    for document in results:
        if document is None:
            continue
        parsed = json.loads(document.body)
        for path in paths:
            yield from referencedIds(parsed, path)


#: Parsed bodies kept for L{parsedBody}: at most this many bytes of
#: bodies, each at most L{PARSED_MAX_BODY}.
PARSED_MAX_BYTES = 4 * 1024 * 1024
PARSED_MAX_BODY = 64 * 1024

_parsed: dict[bytes, Any] = {}
_parsedBytes = 0


def parsedBody(body: bytes) -> Any:
    """
    C{json.loads(body)}, remembered for recent bodies: a GET with Include
    of a document read from the store's cache (the same C{bytes} object,
    whose hash Python keeps) is not parsed again. Keyed by the body alone,
    so it never returns the parse of another text; the walk only reads
    what it returns.
    """
    global _parsedBytes
    parsed = _parsed.get(body)
    if parsed is not None:
        return parsed
    parsed = json.loads(body)
    size = len(body)
    if size <= PARSED_MAX_BODY:
        if _parsedBytes + size > PARSED_MAX_BYTES:
            _parsed.clear()
            _parsedBytes = 0
        _parsed[body] = parsed
        _parsedBytes += size
    return parsed


class _Budget:
    """Steps taken, and when the next tick is due."""

    __slots__ = ("steps", "nextTick")

    def __init__(self) -> None:
        self.steps = 0
        self.nextTick = TICK

    def spend(self, steps: int) -> bool:
        """Count C{steps}; C{True} when a tick is due."""
        self.steps += steps
        if self.steps < self.nextTick:
            return False
        if self.steps > MAX_INCLUDE_STEPS:
            raise CommandError(
                f"Include too large: following it takes more than {MAX_INCLUDE_STEPS:,} "
                "steps (ask for fewer ids or fields)"
            )
        self.nextTick = self.steps + TICK
        return True


def _walk(document: Any, path: tuple[str, ...], budget: _Budget) -> Iterator[str | None]:
    values = [document]
    for name in path:
        reached = []
        for value in values:
            items = value if isinstance(value, list) else (value,)
            if budget.spend(len(items)):
                yield None
            for item in items:
                if isinstance(item, dict) and name in item:
                    reached.append(item[name])
        values = reached
        if not values:
            return
    for value in values:
        items = value if isinstance(value, list) else (value,)
        if budget.spend(len(items)):
            yield None
        for item in items:
            if isinstance(item, str):
                yield item


class IncludeWalk:
    """
    The C{references} callable of a GET with Include (see
    L{proto.store.base.IDocumentStore.read}): every id the results name
    along the paths, with ticks, within the bounds of the module
    docstring.
    """

    def __init__(self, paths: list[tuple[str, ...]], allowed: Callable[[str], bool] | None = None) -> None:
        """
        @param allowed: if given, only the ids it accepts are named
            (section 9: documents outside the certificate's prefixes are
            left out of Includes, without an error).
        """
        self.paths = paths
        self.allowed = allowed

    def __call__(self, results: list[Document | None]) -> Iterator[str | None]:
        budget = _Budget()
        named: set[str] = set()
        walked: set[str] = set()
        allowed = self.allowed
        for document in results:
            if document is None:
                continue
            key = idKey(document.id)
            if key in walked:
                continue  # The same document asked for twice: once.
            walked.add(key)
            if budget.spend(1 + len(document.body) // 1024):
                yield None
            parsed = parsedBody(document.body)
            for path in self.paths:
                for id in _walk(parsed, path, budget):
                    if id is None:
                        yield None
                        continue
                    if allowed is not None and not allowed(id):
                        continue
                    idKeyed = idKey(id)
                    if idKeyed in named:
                        continue  # Named already: the store would skip it.
                    named.add(idKeyed)
                    if len(named) > MAX_INCLUDED:
                        raise CommandError(
                            f"Include too large: it names more than {MAX_INCLUDED:,} "
                            "documents (ask for fewer ids or fields)"
                        )
                    yield id
