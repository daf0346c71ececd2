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

Repeated work (issue 13)
========================
Clients send the same Include again and again, over documents the store
serves from its cache (the same C{bytes}): the parsed value of a header
(L{parseInclude}), the parsed body (L{parsedBody}) and a short walk's ids
(L{_walkedIds}: at most L{WALKED_MAX_STEPS} steps, whose count still goes
against the request's bounds) are remembered, each keyed by the text it
came from and bounded in size.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

from proto.commands.base import CommandError
from proto.store.base import Document, idKey
from proto.memo import BoundedMemo

#: The most distinct ids one GET's Include may name.
MAX_INCLUDED = 10_000

#: The most steps (values looked at) following one GET's Include may take.
MAX_INCLUDE_STEPS = 1_000_000

#: The walk yields a progress tick (C{None}) every this many steps.
TICK = 256


#: Include values remembered by L{parseInclude}: at most this many, each
#: at most L{INCLUDE_MEMO_MAX_LENGTH} characters.
INCLUDE_MEMO_ENTRIES = 256
INCLUDE_MEMO_MAX_LENGTH = 256

_includeMemo: BoundedMemo[str, list[tuple[str, ...]]] = BoundedMemo(
    INCLUDE_MEMO_ENTRIES * INCLUDE_MEMO_MAX_LENGTH, INCLUDE_MEMO_MAX_LENGTH, INCLUDE_MEMO_ENTRIES
)


def parseInclude(value: str | None) -> list[tuple[str, ...]]:
    """
    Parse an C{Include} header value into field paths: C{"A.B, C"} gives
    C{[("A", "B"), ("C",)]}. No header, no paths. A path given twice is
    kept once, where it first appears.

    Short values are remembered (a client sends the same Include again
    and again), so the list returned may be shared: callers must not
    change it.

    @raise CommandError: for an empty field or an empty path step.
    """
    if value is None:
        return []
    paths = _includeMemo.entries.get(value)
    if paths is None:
        paths = _parseInclude(value)
        _includeMemo.put(value, paths, len(value))
    return paths


def _parseInclude(value: str) -> list[tuple[str, ...]]:
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

_parsed: BoundedMemo[bytes, Any] = BoundedMemo(PARSED_MAX_BYTES, PARSED_MAX_BODY)


def parsedBody(body: bytes) -> Any:
    """
    C{json.loads(body)}, remembered for recent bodies: a GET with Include
    of a document read from the store's cache (the same C{bytes} object,
    whose hash Python keeps) is not parsed again. Keyed by the body alone,
    so it never returns the parse of another text; the walk only reads
    what it returns.
    """
    parsed = _parsed.entries.get(body)
    if parsed is not None:
        return parsed
    parsed = json.loads(body)
    _parsed.put(body, parsed, len(body))
    return parsed


#: Walks remembered for L{_walkedIds}: at most this many bytes of bodies
#: (each at most L{PARSED_MAX_BODY}).
WALKED_MAX_BYTES = 4 * 1024 * 1024

#: A remembered walk took at most this many steps (a longer one is
#: walked as a stream every time, with its ticks).
WALKED_MAX_STEPS = 256

#: What the walk of a body along some paths gave: the candidate ids
#: (each once, in order) and the steps it took; C{None}: too long to keep.
_walked: BoundedMemo[tuple[bytes, tuple[tuple[str, ...], ...]], tuple[tuple[str, ...], int] | None] = (
    BoundedMemo(WALKED_MAX_BYTES, PARSED_MAX_BODY)
)


class _TooLong(Exception):
    """A walk took more than L{WALKED_MAX_STEPS}: not one to remember."""


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


class _ShortBudget(_Budget):
    """A budget for a walk to remember: raises L{_TooLong} past L{WALKED_MAX_STEPS}."""

    __slots__ = ()

    def spend(self, steps: int) -> bool:
        self.steps += steps
        if self.steps > WALKED_MAX_STEPS:
            raise _TooLong()
        return False


def _walkedIds(
    body: bytes, paths: tuple[tuple[str, ...], ...]
) -> tuple[tuple[str, ...], int] | None:
    """
    The candidate ids C{paths} reach in C{body} (each once, in the order
    first reached) and the steps the walk took, remembered for bodies of
    at most L{PARSED_MAX_BODY} (issue 13: a GET with Include of a
    document read from the cache neither parses nor walks it again).
    C{None} when the walk takes more than L{WALKED_MAX_STEPS} steps: such
    a body is walked as a stream (L{IncludeWalk}), whose ticks let a long
    walk be cancelled and whose steps count against the request's bounds
    as they are taken. Keyed by the body's text and the paths alone, so
    it never gives the walk of another text.
    """
    key = (body, paths)
    try:
        return _walked.entries[key]
    except KeyError:
        pass
    budget = _ShortBudget()
    try:
        parsed = parsedBody(body)
        found: dict[str, None] = {}
        for path in paths:
            for id in _walk(parsed, path, budget):
                if id is not None:
                    found[id] = None
        walked: tuple[tuple[str, ...], int] | None = (tuple(found), budget.steps)
    except _TooLong:
        walked = None
    _walked.put(key, walked, len(body))
    return walked


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
        self._pathsKey = tuple(paths)
        self.allowed = allowed
        #: What the walk depends on besides the results: equal keys, equal
        #: walks (a store may remember a read by it).
        self.memoKey = (self._pathsKey, allowed)

    def __call__(self, results: list[Document | None]) -> Iterator[str | None]:
        budget = _Budget()
        named: set[str] = set()
        walked: set[str] = set()
        for document in results:
            if document is None:
                continue
            key = idKey(document.id)
            if key in walked:
                continue  # The same document asked for twice: once.
            walked.add(key)
            body = document.body
            if budget.spend(1 + len(body) // 1024):
                yield None
            short = _walkedIds(body, self._pathsKey) if len(body) <= PARSED_MAX_BODY else None
            if short is not None:
                ids, steps = short
                if budget.spend(steps):
                    yield None
                for id in ids:
                    if self._names(id, named):
                        yield id
                continue
            parsed = parsedBody(body)
            for path in self.paths:
                for reached in _walk(parsed, path, budget):
                    if reached is None:
                        yield None
                    elif self._names(reached, named):
                        yield reached

    def _names(self, id: str, named: set[str]) -> bool:
        """
        Whether the walk names C{id} (allowed, and not named before),
        noting it in C{named}; L{MAX_INCLUDED} is enforced here.
        """
        allowed = self.allowed
        if allowed is not None and not allowed(id):
            return False
        idKeyed = idKey(id)
        if idKeyed in named:
            return False  # Named already: the store would skip it.
        named.add(idKeyed)
        if len(named) > MAX_INCLUDED:
            raise CommandError(
                f"Include too large: it names more than {MAX_INCLUDED:,} "
                "documents (ask for fewer ids or fields)"
            )
        return True
