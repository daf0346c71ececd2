"""
The change hub: in-process publish/subscribe of document changes by id
prefix.

The store publishes every committed change, in etag order, each once
(C{publishChanges([...])}; the SQLite store feeds it from its change log,
including the changes other processes commit: see
L{proto.store.sqlite_publisher}). C{etag} is the position: every change
up to it has been published. WATCH subscribes a callback for an id
prefix; so a subscription made when the position is I{e} receives exactly
the matching changes above I{e}. Prefixes match ids case-insensitively,
by the same key as the store (L{idKey}).

Fan-out: a subscription may also give a C{flush} callable, called once
after each published batch in which it received something, so that a
connection with many pushes in one batch writes them at once; or a
C{batch} callable, which gets all its changes of a published batch in one
call (one list shared by the subscriptions of the same prefix) and writes
them itself: no C{flush} is called for it.

Turn batching: given a clock (the server passes its reactor), the hub
delivers what is published once per reactor turn (C{callLater(0)}): a
write batch commits every millisecond or so while a reactor turn with
hundreds of watchers lasts several, so a watcher then gets the changes of
several commits in one write instead of one write per commit. Delivery is
in etag order as always, and C{etag} moves when the changes are delivered
(a subscription made meanwhile gets them, and skips what it has already
read: see L{proto.commands.watch}). Without a clock (tests, tools)
delivery is synchronous.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from proto.store.base import Change, idKey

__all__ = ["Change", "ChangeHub", "Subscription"]

Callback = Callable[[Change], None]


class Subscription:
    """
    What L{ChangeHub.subscribe} returns: C{cancel()} it to stop receiving
    changes.
    """

    def __init__(
        self,
        hub: "ChangeHub",
        key: str,
        callback: Callback,
        flush: Callable[[], None] | None = None,
        batch: Callable[[list[Change]], None] | None = None,
    ) -> None:
        self._hub = hub
        self.key = key
        self.callback = callback
        self.flush = flush
        self.batch = batch
        self.active = True

    def cancel(self) -> None:
        """
        Stop the callbacks, at once: also for a change being published
        right now. Cancelling twice is harmless.
        """
        self.active = False
        self._hub._remove(self)


class ChangeHub:
    """
    Subscriptions by id prefix, and delivery of changes to them.

    Publishing costs one dictionary test when nobody subscribes. With
    subscribers it looks up each distinct subscribed prefix I{length} in a
    dictionary, so the cost grows with the number of distinct lengths, not
    of subscribers. Callbacks run synchronously, in the publisher's call;
    one that raises is logged and the others still run.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime | None = None) -> None:
        #: Every change up to this etag has been delivered to the subscribers.
        self.etag = 0
        self._clock = clock
        self._queued: list[Change] = []  # published, delivered on the next turn
        self._delivery: IDelayedCall | None = None
        self._byKey: dict[str, dict[Subscription, None]] = {}
        # How many keys of each length there are, and those lengths sorted.
        self._lengthCounts: dict[int, int] = {}
        self._lengths: list[int] = []

    def startAt(self, etag: int) -> None:
        """The store's position when it opened: changes above it follow."""
        self.etag = etag

    def subscribe(
        self,
        prefix: str,
        callback: Callback,
        flush: Callable[[], None] | None = None,
        batch: Callable[[list[Change]], None] | None = None,
    ) -> Subscription:
        """
        Call C{callback(change)} for every change published from now on
        (every change above C{self.etag}) to a document whose id starts with
        C{prefix}, ignoring case (or, if C{batch} is given, C{batch(changes)}
        once per published batch with its matching changes, in order; the
        list is shared with the other subscriptions of the same prefix: do
        not change it: the subscriber writes what it gets in that call); and
        C{flush()} after each published batch that called C{callback}.
        """
        subscription = Subscription(self, idKey(prefix), callback, flush, batch)
        subscribers = self._byKey.get(subscription.key)
        if subscribers is None:
            subscribers = self._byKey[subscription.key] = {}
            self._countLength(len(subscription.key), +1)
        subscribers[subscription] = None
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        subscribers = self._byKey.get(subscription.key)
        if subscribers is None or subscription not in subscribers:
            return
        del subscribers[subscription]
        if not subscribers:
            del self._byKey[subscription.key]
            self._countLength(len(subscription.key), -1)

    def _countLength(self, length: int, delta: int) -> None:
        count = self._lengthCounts.get(length, 0) + delta
        if count:
            self._lengthCounts[length] = count
        else:
            del self._lengthCounts[length]
        if count == 0 or (count == 1 and delta > 0):
            self._lengths = sorted(self._lengthCounts)

    def subscriberCount(self) -> int:
        """How many subscriptions are active (for tests and statistics)."""
        return sum(len(subscribers) for subscribers in self._byKey.values())

    def publish(self, id: str, type: str, etag: int) -> None:
        """Publish one change (see L{publishChanges})."""
        self.publishChanges([Change(id, type, etag)])

    def publishChanges(self, changes: list[Change]) -> None:
        """
        Tell the subscribers whose prefix matches about the changes: each
        subscription gets its matching changes in etag order (as one list,
        to its C{batch} callable if it has one, else one C{callback} call
        each); then those that got any are flushed. With a clock, on the
        next reactor turn, together with whatever else is published until
        then.

        The changes are grouped by subscribed prefix first, so that the
        subscriptions of one prefix share one list (fan-out: a subscriber
        can encode what it shares with the others once per batch).
        """
        if not changes:
            return
        if self._clock is None or not (self._byKey or self._queued):
            self._deliver(changes)
            return
        self._queued += changes
        if self._delivery is None:
            self._delivery = self._clock.callLater(0, self._deliverQueued)

    def _deliverQueued(self) -> None:
        self._delivery = None
        changes, self._queued = self._queued, []
        self._deliver(changes)

    def _deliver(self, changes: list[Change]) -> None:
        if not changes:
            return
        self.etag = changes[-1].etag
        byKey = self._byKey
        if not byKey:
            return
        groups: dict[str, list[Change]] = {}
        lengths = self._lengths
        for change in changes:
            key = idKey(change.id)
            for length in lengths:
                if length > len(key):
                    break
                prefix = key[:length]
                if prefix in byKey:
                    group = groups.get(prefix)
                    if group is None:
                        groups[prefix] = [change]
                    else:
                        group.append(change)
        touched: list[Subscription] = []
        for prefix, matched in groups.items():
            for subscription in list(byKey.get(prefix, ())):
                if not subscription.active:
                    continue  # Cancelled by an earlier callback.
                batch = subscription.batch
                if batch is not None:
                    # It gets everything at once and writes it itself.
                    try:
                        batch(matched)
                    except Exception:
                        self._log.failure(
                            "Change subscriber {batch!r} failed on {count} changes",
                            batch=batch, count=len(matched),
                        )
                    continue
                self._callEach(subscription, matched)
                if subscription.flush is not None:
                    touched.append(subscription)
        for subscription in touched:
            if subscription.active:
                try:
                    subscription.flush()  # type: ignore[misc]
                except Exception:
                    self._log.failure(
                        "Change subscriber flush {flush!r} failed", flush=subscription.flush
                    )

    def _callEach(self, subscription: Subscription, matched: list[Change]) -> None:
        for change in matched:
            if not subscription.active:
                return
            try:
                subscription.callback(change)
            except Exception:
                self._log.failure(
                    "Change subscriber {callback!r} failed on {change!r}",
                    callback=subscription.callback,
                    change=change,
                )
