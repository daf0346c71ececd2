"""
L{proto.store.reopen}: the schedule of attempts to open a store, driven
by a fake clock (the attempts themselves are Deferreds the test fires).
The PostgreSQL store that uses it is tested on a real database in
L{tests.test_store} (a database created while the store retries) and
L{tests.test_postgres} (a server started before its database).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from proto.store import reopen
from proto.store.base import StoreClosedError, StoreError, StoreUnavailableError
from proto.store.reopen import RetryingStart, retryPolicy


class Attempts:
    """Hands out one Deferred per attempt, for the test to fire."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.made: list[Deferred] = []
        self.times: list[float] = []

    def __call__(self) -> Deferred:
        self.times.append(self.clock.seconds())
        self.made.append(Deferred())
        return self.made[-1]

    def fail(self, reason: str = "connection refused") -> None:
        self.made[-1].errback(StoreUnavailableError(reason))


def transient(failure: Failure) -> bool:
    return failure.check(StoreUnavailableError) is not None


class PolicyTests(SynchronousTestCase):

    def test_doublesToTheMaximum(self) -> None:
        policy = retryPolicy(jitter=lambda: 0.0)
        self.assertEqual([policy(n) for n in range(7)], [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])

    def test_jitterBounded(self) -> None:
        policy = retryPolicy()
        for n in range(8):
            base = min(0.5 * 2 ** n, reopen.MAX_DELAY)
            for _ in range(50):
                delay = policy(n)
                self.assertGreaterEqual(delay, base)
                self.assertLess(delay, base + reopen.JITTER)


class RetryingStartTests(SynchronousTestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        self.attempts = Attempts(self.clock)
        self.retrying = RetryingStart(
            "<store>", self.attempts, transient, self.clock, retryPolicy(jitter=lambda: 0.0)
        )

    def test_retriesOnTheScheduleUntilOpen(self) -> None:
        """
        Each failed attempt schedules the next after the policy's delay
        (nothing earlier), and the start fires with the first success.
        """
        started = self.retrying.start()
        for _ in range(6):
            self.attempts.fail()
            self.assertTrue(self.retrying.waiting)
            self.assertEqual(self.retrying.failing, "connection refused")
            delay = self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds()
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.attempts.made), len(self.attempts.times))
            made = len(self.attempts.made)
            self.clock.advance(0.01)
            self.assertEqual(len(self.attempts.made), made + 1)
        self.assertNoResult(started)
        self.assertEqual(
            [round(b - a, 6) for a, b in zip(self.attempts.times, self.attempts.times[1:])],
            [0.5, 1.0, 2.0, 4.0, 5.0, 5.0],
        )
        self.attempts.made[-1].callback("session")
        self.assertEqual(self.successResultOf(started), "session")
        self.assertIsNone(self.retrying.failing)
        self.assertEqual(self.retrying.attempts, 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_permanentFailureStops(self) -> None:
        """A failure that will not pass fails the start: no more attempts."""
        started = self.retrying.start()
        self.attempts.fail()
        self.clock.advance(1)
        self.attempts.made[-1].errback(StoreError("schema from a newer release"))
        self.failureResultOf(started, StoreError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.attempts.made), 2)

    def test_stopWhileWaiting(self) -> None:
        """Stopping between attempts cancels the next: the start fails as closed."""
        started = self.retrying.start()
        self.attempts.fail()
        self.retrying.stop()
        self.failureResultOf(started, StoreClosedError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertEqual(len(self.attempts.made), 1)

    def test_stopDuringAnAttempt(self) -> None:
        """An attempt still running when stopped is not waited for; its outcome is ignored."""
        started = self.retrying.start()
        self.retrying.stop()
        self.failureResultOf(started, StoreClosedError)
        self.attempts.fail()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logsStateChangesNotEveryAttempt(self) -> None:
        """
        The first failures are logged, then a line saying it keeps trying,
        then only a change of reason; and the success.
        """
        with capturedLogs() as events:
            self.retrying.start()
            reasons = ["refused"] * 10 + ["no such database"] * 5
            for reason in reasons:
                self.attempts.fail(reason)
                self.clock.advance(10)
            self.attempts.made[-1].callback(None)
        texts = [e["log_format"].format(**e) for e in events if "log_format" in e]
        cannot = [t for t in texts if "cannot open it" in t]
        self.assertEqual(len(cannot), reopen.LOGGED_ATTEMPTS + 1, texts)
        self.assertIn("(attempt 11): no such database", cannot[-1])
        self.assertEqual(len([t for t in texts if "still trying" in t]), 1)
        self.assertIn("opened at attempt 16, after 150.0 s", texts[-1])
        self.assertEqual(len(texts), reopen.LOGGED_ATTEMPTS + 3)

    def test_whenRetrying(self) -> None:
        """Fires with the reason at the first failure that is retried; at once if already so."""
        early = self.retrying.whenRetrying()
        self.retrying.start()
        self.assertNoResult(early)
        self.attempts.fail("refused")
        self.assertEqual(self.successResultOf(early), "refused")
        self.assertEqual(self.successResultOf(self.retrying.whenRetrying()), "refused")

    def test_whenRetryingNotAfterOpening(self) -> None:
        waiter = self.retrying.whenRetrying()
        self.retrying.start()
        self.attempts.made[-1].callback(None)
        self.assertNoResult(waiter)
        self.assertNoResult(self.retrying.whenRetrying())

    def test_attemptRaising(self) -> None:
        """An attempt that raises instead of failing its Deferred is a failed attempt."""
        calls = []

        def attempt() -> Deferred:
            calls.append(self.clock.seconds())
            if len(calls) == 1:
                raise StoreUnavailableError("cannot start a thread")
            return Deferred()

        retrying = RetryingStart("<store>", attempt, transient, self.clock, lambda n: 1.0)
        retrying.start()
        self.assertEqual(retrying.failing, "cannot start a thread")
        self.clock.advance(1)
        self.assertEqual(calls, [0, 1])
