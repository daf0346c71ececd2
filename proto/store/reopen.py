"""
Opening a store again until it opens: what a PostgreSQL store does when
its database cannot be reached at the moment the server starts (the
guide: a failing dependency gives clear errors and recovery, not a hang
or a crash). A mature client of a database keeps trying (a psycopg pool,
Redis replicas, NATS clients do); an operator should not have to restart
the server because it happened to start before its database.

L{RetryingStart} runs one attempt to open (C{attempt()}, a Deferred) and,
while attempts fail for a reason that may pass (C{transient(failure)}:
the database unreachable, not a schema from a newer release), runs the
next one after a delay from L{retryPolicy}: 0.5 s doubling to 5 s, plus
up to 0.5 s of jitter (Twisted's C{backoffPolicy}, as C{ClientService}
uses), so that servers restarted together do not knock in step. The
delays are scheduled on the clock it is given (the reactor; a
C{task.Clock} in tests). Requests meanwhile fail at once with the reason
(the store's business: L{proto.store.base.StoreNotOpenedError}).

The log says what changed, not every attempt: each of the first
L{LOGGED_ATTEMPTS} failures, then one line saying it keeps trying, then
only a failure whose reason differs from the last one logged, and the
success (with how many attempts and how long it took).
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from proto.store.base import StoreClosedError

#: The first delay between attempts, in seconds; it doubles up to
#: L{MAX_DELAY}.
INITIAL_DELAY = 0.5

#: The longest delay between attempts (before jitter): a database that
#: comes back is used within about this long.
MAX_DELAY = 5.0

#: Each delay gets a random extra of up to this many seconds.
JITTER = 0.5

#: Failures logged one by one; after them only a change of reason is.
LOGGED_ATTEMPTS = 3


def retryPolicy(jitter: Callable[[], float] | None = None) -> Callable[[int], float]:
    """
    The delay before attempt I{n + 1} after I{n} failed attempts, as
    C{policy(n - 1)}: 0.5, 1, 2, 4, 5, 5, ... seconds plus C{jitter()}
    (by default uniform in [0, L{JITTER})).
    """
    return backoffPolicy(
        INITIAL_DELAY, MAX_DELAY, 2.0, jitter if jitter is not None else lambda: random.random() * JITTER
    )


def firstLine(failure: Failure) -> str:
    """A failure's reason in one line (for the log and a client's ERR)."""
    text = str(failure.value).strip()
    return text.splitlines()[0].strip() if text else failure.type.__name__


class RetryingStart:
    """
    Runs C{attempt()} until one succeeds, a failure is not transient, or
    L{stop} is called. See the module docstring.

    @ivar attempts: attempts made so far.
    @ivar failing: the reason of the last failed attempt, while retrying
        (C{None} before the first failure and once open).
    """

    _log = Logger()

    def __init__(
        self,
        what: str,
        attempt: Callable[[], Deferred[Any]],
        transient: Callable[[Failure], bool],
        clock: Any,
        policy: Callable[[int], float] | None = None,
    ) -> None:
        """
        @param what: names the store in the log (its C{repr}).
        @param attempt: one attempt to open; its failure says why.
        @param transient: whether a failure may pass by itself (retry).
        @param clock: provides C{callLater} and C{seconds} (the reactor).
        @param policy: the delay before the next attempt given the failed
            attempts so far minus one (L{retryPolicy} by default).
        """
        self._what = what
        self._attempt = attempt
        self._transient = transient
        self._clock = clock
        self._policy = policy if policy is not None else retryPolicy()
        self.attempts = 0
        self.failing: str | None = None
        self._began = 0.0
        self._pending: Any = None  # the DelayedCall of the next attempt
        self._running = False  # an attempt is in progress
        self._stopped = False
        self._done: Deferred[Any] | None = None
        self._logged: str | None = None  # the last failure reason logged
        self._retryWaiters: list[Deferred[str]] = []

    def start(self) -> Deferred[Any]:
        """
        Make the first attempt now. Fires with what the successful attempt
        fired with; fails with a failure that is not transient, or with
        L{StoreClosedError} if L{stop} is called first.
        """
        if self._done is not None:
            raise RuntimeError("RetryingStart.start called twice")
        self._done = Deferred()
        self._began = self._clock.seconds()
        self._try()
        return self._done

    def stop(self) -> None:
        """
        Make no more attempts (the store is closing). An attempt in
        progress is not waited for: its outcome is ignored.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._done is not None and not self._done.called:
            self._done.errback(StoreClosedError(f"{self._what} was closed before it opened"))

    def whenRetrying(self) -> Deferred[str]:
        """
        Fires with the reason once an attempt has failed and another one
        is due (at once if that is so now); never if the first attempt
        opens or the failure is not transient. (The C{--workers}
        supervisor starts its workers then: they keep trying themselves.)
        """
        if self.failing is not None and not self._stopped:
            return succeed(self.failing)
        waiter: Deferred[str] = Deferred()
        self._retryWaiters.append(waiter)
        return waiter

    @property
    def waiting(self) -> bool:
        """Between two attempts (a retry is scheduled)."""
        return self._pending is not None

    def _try(self) -> None:
        self._pending = None
        if self._stopped:
            return
        self.attempts += 1
        self._running = True
        # (maybeDeferred: an attempt that raises at once, say a thread that
        # cannot be started, is a failed attempt too, not the end of trying.)
        maybeDeferred(self._attempt).addCallbacks(self._succeeded, self._failed)

    def _succeeded(self, result: Any) -> None:
        self._running = False
        if self._stopped:
            return
        if self.attempts > 1:
            self._log.info(
                "Document store {what}: opened at attempt {attempts}, after {seconds:.1f} s",
                what=self._what, attempts=self.attempts,
                seconds=self._clock.seconds() - self._began,
            )
        self.failing = None
        assert self._done is not None
        self._done.callback(result)

    def _failed(self, failure: Failure) -> None:
        self._running = False
        if self._stopped:
            return
        assert self._done is not None
        if not self._transient(failure):
            self.failing = None
            self._done.errback(failure)
            return
        reason = firstLine(failure)
        self.failing = reason
        delay = self._policy(self.attempts - 1)
        if self.attempts <= LOGGED_ATTEMPTS or reason != self._logged:
            self._log.warn(
                "Document store {what}: cannot open it (attempt {attempts}): {reason}; "
                "trying again in {delay:.1f} s",
                what=self._what, attempts=self.attempts, reason=reason, delay=delay,
            )
            if self.attempts == LOGGED_ATTEMPTS:
                self._log.warn(
                    "Document store {what}: still trying to open it every {most:.0f} s or so; "
                    "only a change of the reason is logged from now on",
                    what=self._what, most=MAX_DELAY,
                )
            self._logged = reason
        self._pending = self._clock.callLater(delay, self._try)
        waiters, self._retryWaiters = self._retryWaiters, []
        for waiter in waiters:
            waiter.callback(reason)
