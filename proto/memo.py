"""
A memo bounded by the bytes it stands for (issue 13).

Several read paths remember what they computed from a document's bytes
(or an Include header's text),
so that the same read is not done twice: the parse of a body and its
Include walk (L{proto.commands.include}), GET's encoded reply
(L{proto.commands.documents}), a whole snapshot read from the cache
(L{proto.store.cache.SnapshotMemo}). Each must stay small whatever the
clients ask for, and a hit must stay as cheap as the dict look-up it is
meant to be. So a L{BoundedMemo} has no recency bookkeeping: an entry
bigger than C{maxItem} is not kept, and one that would take the memo past
C{maxBytes} (or C{maxEntries}) makes it start again empty.
"""

from __future__ import annotations

import sys
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(Generic[K, V]):
    """
    C{entries}: what is remembered, by key (read it directly: a look-up is
    C{memo.entries.get(key)}, or C{in} when C{None} is a value kept).
    C{size}: the bytes the entries stand for, as given to L{put}.
    """

    __slots__ = ("entries", "size", "maxBytes", "maxItem", "maxEntries")

    def __init__(self, maxBytes: int, maxItem: int, maxEntries: int = sys.maxsize) -> None:
        self.entries: dict[K, V] = {}
        self.size = 0
        self.maxBytes = maxBytes
        self.maxItem = maxItem
        self.maxEntries = maxEntries

    def put(self, key: K, value: V, size: int) -> None:
        """Remember C{value} for C{key}, standing for C{size} bytes."""
        if size > self.maxItem:
            return
        entries = self.entries
        if self.size + size > self.maxBytes or len(entries) >= self.maxEntries:
            entries.clear()
            self.size = 0
        entries[key] = value
        self.size += size

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0
