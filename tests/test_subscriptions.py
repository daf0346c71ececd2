"""L{proto.subscriptions.Subscriptions}: a connection's standing subscriptions."""

from twisted.trial import unittest

from proto.subscriptions import Subscriptions


class SubscriptionsTests(unittest.TestCase):
    def setUp(self):
        self.subs = Subscriptions()
        self.log = []

    def cancel(self, name):
        return lambda: self.log.append(("cancel", name))

    def test_newUnderSameSequenceEndsTheOld(self):
        self.subs.add("1", self.cancel("a"))
        self.subs.add("1", self.cancel("b"))
        self.assertEqual(self.log, [("cancel", "a")])
        self.assertEqual((len(self.subs), "1" in self.subs), (1, True))

    def test_remove(self):
        self.subs.add("1", self.cancel("a"))
        self.assertTrue(self.subs.remove("1"))
        self.assertFalse(self.subs.remove("1"))
        self.assertEqual(self.log, [("cancel", "a")])
        self.assertFalse(self.subs)

    def test_closeEndsAllAndLaterOnes(self):
        self.subs.add("1", self.cancel("a"))
        self.subs.add("2", self.cancel("b"))
        self.subs.close()
        self.assertEqual(sorted(self.log), [("cancel", "a"), ("cancel", "b")])
        self.subs.add("3", self.cancel("c"))
        self.assertEqual(self.log[-1], ("cancel", "c"))
        self.assertEqual(len(self.subs), 0)

    def test_regrantOnlyThoseThatAsked(self):
        seen = []
        self.subs.add("1", self.cancel("a"), seen.append)
        self.subs.add("2", self.cancel("b"))
        self.subs.regrant("narrower")
        self.assertEqual(seen, ["narrower"])
        self.subs.remove("1")
        self.subs.regrant("again")
        self.assertEqual(seen, ["narrower"])

    def test_failuresAreLoggedOthersStillRun(self):
        def boom():
            raise RuntimeError("boom")

        self.subs.add("1", boom)
        self.subs.add("2", self.cancel("b"))
        self.subs.close()
        self.assertEqual(self.log, [("cancel", "b")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
