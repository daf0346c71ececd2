"""
The SQLite store's worker threads: each owns one session (connection)
and runs the jobs queued for it in batches (see L{proto.store.sqlite}).

One hand-off per batch, both ways (issue 13). Jobs queued during one
reactor turn wake an idle worker once, at the end of that turn (not one
thread wake-up per job): the reactor thread does not fight the worker it
just woke for the GIL in the middle of its turn, and the batch is every
job of the turn. With the proto-epoll reactor (L{proto.speed.reactor})
the wake-up is the last thing before the reactor thread blocks in its
poll and lets go of the GIL, so the worker finds the GIL free (measured,
bench/writes.py, 1 client: context switches per PUT 10.5 -> 6.5, server
CPU per PUT 432 -> 398 us); with another reactor it is a C{callLater(0)}
followed by letting go of the GIL once (C{time.sleep(0)}). A batch's
results come back with one C{callFromThread}.

The idle thread sleeps on a bell (a plain lock it holds, released once to
wake it), not on a C{threading.Condition}: a condition's C{wait} and
C{notify} are Python code that makes a new lock per wait, and with one
client the hand-off happens on every PUT. Measured (1-client PUTs in the
server): the reactor thread's wake-up call 4.3 -> 3.7 us of CPU, the rest
being the futex wake itself.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from proto.store.base import StoreClosedError, StoreNotOpenedError


class Job:
    """One queued operation: what to run on the worker thread, and for whom."""

    __slots__ = ("work", "state", "deferred", "_lock")

    QUEUED, RUNNING, CANCELLED = "queued", "running", "cancelled"

    def __init__(self, work: Callable[[Any], Any], lock: "threading.Lock") -> None:
        """
        @param lock: the worker's lock, which guards C{state}.
        """
        self.work = work
        self.state = self.QUEUED
        self.deferred: Deferred[Any] = Deferred(self._cancel)
        self._lock = lock

    def _cancel(self, deferred: Deferred[Any]) -> None:
        # Still queued: the worker will skip it. Already running: too late;
        # Deferred.cancel fails the Deferred with CancelledError either way.
        with self._lock:
            if self.state == self.QUEUED:
                self.state = self.CANCELLED


class Worker:
    """
    A thread with one session (connection) that runs queued jobs in
    batches: it takes every job queued since its last turn and hands them
    to C{session.runBatch} together.

    Jobs are submitted, and their Deferreds fire, on the reactor thread.
    """

    def __init__(
        self,
        name: str,
        openSession: Callable[[], Any],
        reactor: Any,
        batchDone: Callable[[int, Any, float], None] | None = None,
    ) -> None:
        """
        @param name: for the thread's name and errors.
        @param openSession: opens the session, on the worker's thread.
        @param reactor: provides C{callFromThread}.
        @param batchDone: called on the reactor thread with the size of
            each successful batch and what C{session.runBatch} returned
            besides the results, before the batch's Deferreds fire.
        """
        self._name = name
        self._openSession = openSession
        self._reactor = reactor
        self._batchDone = batchDone
        #: Guards the queue, the states of its jobs and the flags below.
        self._lock = threading.Lock()
        #: What the idle thread sleeps on: held except while a wake-up is
        #: pending; released (by L{_ring}) once per wait.
        self._bell = threading.Lock()
        self._bell.acquire()
        self._queue: list[Job] = []
        self._stopping = False
        #: The thread waits for jobs, and no wake-up is on its way (guarded
        #: by C{_lock}; set by the thread, cleared by whoever rings).
        self._idle = False
        #: A wake-up of the idle thread is scheduled for the end of this
        #: reactor turn (only touched on the reactor thread).
        self._wakeScheduled = False
        self._callLater = getattr(reactor, "callLater", None)
        #: The reactor's end-of-turn hook (L{proto.speed.reactor}), if any.
        self._beforePoll = getattr(reactor, "callBeforePoll", None)
        self._thread: threading.Thread | None = None
        self._ready: Deferred[Any] = Deferred()
        self._stopWaiters: list[Deferred[None]] | None = []
        #: Why the store could not be opened (set by the store when its
        #: start failed): then operations fail with L{StoreNotOpenedError},
        #: at once, also while this worker's session is still opening (a
        #: store that tries again: L{proto.store.reopen}).
        self.notOpened: str | None = None

    def _closedError(self) -> StoreClosedError:
        if self.notOpened is not None:
            return StoreNotOpenedError(self.notOpened)
        return StoreClosedError(f"the store's {self._name} is closed")

    def submit(self, work: Callable[[Any], Any]) -> Deferred[Any]:
        """
        Queue C{work(session)} (on the reactor thread); the result fires on
        the reactor thread. An idle thread is woken at the end of the
        reactor turn, once for every job queued in the turn.
        """
        job = Job(work, self._lock)
        with self._lock:
            # Not even once this worker's own session is open: a store that
            # retries (L{proto.store.reopen}) serves only once every worker
            # of the attempt opened (a PUT's OK then a GET "not open yet"
            # would break read-your-writes); it clears this then.
            if self._stopping or self.notOpened is not None:
                return fail(self._closedError())
            self._queue.append(job)
            if not self._idle or self._wakeScheduled:
                return job.deferred
            if self._callLater is None:
                self._ring()
                return job.deferred
            self._wakeScheduled = True
        if self._beforePoll is not None:
            self._beforePoll(self._wakeBeforePoll)
        else:
            self._callLater(0, self._wake)
        return job.deferred

    def _wakeBeforePoll(self) -> None:
        """Wake the thread right before the reactor thread blocks in its poll."""
        with self._lock:
            self._wakeScheduled = False
            self._ring()

    def _ring(self) -> None:
        """Wake the thread if it is idle (with C{_lock} held): once per wait."""
        if self._idle:
            self._idle = False
            self._bell.release()

    def _wake(self) -> None:
        with self._lock:
            self._wakeScheduled = False
            self._ring()
        # Let go of the GIL for a moment, so that the thread just woken
        # takes it now and starts its batch (its commit), instead of
        # waiting for it until this thread next blocks in the poller.
        # Measured (bench/writes.py, 1 client): PUT latency p50 ~700 ->
        # ~460 us, PUT/s ~1.9x; no change with 50 clients (one wake-up per
        # batch).
        time.sleep(0)

    def start(self) -> Deferred[Any]:
        """Start the thread; fires with the session once it is open."""
        with self._lock:
            if self._stopping:
                return fail(self._closedError())
        self._thread = threading.Thread(
            target=self._main, name=f"proto-store-{self._name}", daemon=True
        )
        self._thread.start()
        return self._ready

    def stop(self) -> Deferred[None]:
        """
        Take no more jobs, run those queued, close the session, end the
        thread. Fires when the thread has ended.
        """
        with self._lock:
            self._stopping = True
            self._ring()
        if self._thread is None:
            self._ended()
        if self._stopWaiters is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stopWaiters.append(waiter)
        return waiter

    def _main(self) -> None:
        try:
            session = self._openSession()
        except Exception:
            self._reactor.callFromThread(self._failedToOpen, Failure())
            return
        self._reactor.callFromThread(self._opened, session)
        try:
            while (jobs := self._take()) is not None:
                try:
                    started = time.perf_counter()
                    outcomes, info = session.runBatch([job.work for job in jobs])
                except Exception:
                    failure = Failure()
                    outcomes, info = [failure] * len(jobs), None
                seconds = time.perf_counter() - started
                self._reactor.callFromThread(self._deliver, jobs, outcomes, info, seconds)
        finally:
            session.close()
            self._reactor.callFromThread(self._ended)

    def _opened(self, session: Any) -> None:
        self._ready.callback(session)

    def _take(self) -> list[Job] | None:
        """Wait for jobs; return all those queued, or C{None} when stopped."""
        while True:
            with self._lock:
                jobs = [job for job in self._queue if job.state == Job.QUEUED]
                self._queue = []
                if jobs:
                    for job in jobs:
                        job.state = Job.RUNNING
                    return jobs
                if self._stopping:
                    return None
                self._idle = True
            # Rung at most once for this wait (L{_ring} clears _idle), maybe
            # already: then this returns at once.
            self._bell.acquire()

    def _deliver(self, jobs: list[Job], outcomes: list[Any], info: Any, seconds: float) -> None:
        if self._batchDone is not None and info is not None:
            self._batchDone(len(jobs), info, seconds)
        for job, outcome in zip(jobs, outcomes):
            if job.deferred.called:
                continue  # Cancelled while running: nobody is waiting.
            if isinstance(outcome, Failure):
                job.deferred.errback(outcome)
            else:
                job.deferred.callback(outcome)

    def _failedToOpen(self, failure: Failure) -> None:
        with self._lock:
            self._stopping = True
        self._ready.errback(failure)
        self._ended()

    def _ended(self) -> None:
        """The thread is gone (or never ran): fail what is left, tell the waiters."""
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            leftover, self._queue = self._queue, []
        for job in leftover:
            if not job.deferred.called:
                job.deferred.errback(self._closedError())
        waiters, self._stopWaiters = self._stopWaiters or [], None
        for waiter in waiters:
            waiter.callback(None)
