"""
L{proto.memo.BoundedMemo}: the bound every read-path memo relies on
(issue 13: remembered parses, walks, replies and snapshots stay small
whatever clients ask for).
"""

from twisted.trial.unittest import SynchronousTestCase

from proto.memo import BoundedMemo


class BoundedMemoTests(SynchronousTestCase):
    def test_keepsWhatFits(self) -> None:
        memo: BoundedMemo[str, int | None] = BoundedMemo(maxBytes=10, maxItem=4)
        memo.put("a", 1, 4)
        memo.put("b", None, 3)
        self.assertEqual(memo.entries, {"a": 1, "b": None})
        self.assertEqual(memo.size, 7)

    def test_tooBigAnItemIsNotKept(self) -> None:
        memo: BoundedMemo[str, int] = BoundedMemo(maxBytes=10, maxItem=4)
        memo.put("a", 1, 2)
        memo.put("big", 2, 5)
        self.assertEqual(memo.entries, {"a": 1})
        self.assertEqual(memo.size, 2)

    def test_passingTheByteBoundStartsAgain(self) -> None:
        memo: BoundedMemo[int, int] = BoundedMemo(maxBytes=10, maxItem=4)
        for n in range(20):
            memo.put(n, n, 4)
            self.assertLessEqual(memo.size, 10)
            self.assertEqual(memo.size, 4 * len(memo.entries))
            self.assertIn(n, memo.entries)  # The newest is always kept.

    def test_entryBound(self) -> None:
        memo: BoundedMemo[int, int] = BoundedMemo(maxBytes=1000, maxItem=10, maxEntries=3)
        for n in range(10):
            memo.put(n, n, 0)
            self.assertLessEqual(len(memo.entries), 3)
        self.assertIn(9, memo.entries)

    def test_clear(self) -> None:
        memo: BoundedMemo[int, int] = BoundedMemo(maxBytes=10, maxItem=4)
        memo.put(1, 1, 3)
        memo.clear()
        self.assertEqual((memo.entries, memo.size), ({}, 0))
