"""
The change hub: in-process publish/subscribe of document changes by id
prefix.

The store publishes every committed change (C{publish(id, type, etag)});
WATCH subscribes a callback for an id prefix. Prefixes match ids
case-insensitively, by the same key as the store (L{idKey}).

It is per process: a server running several processes would need a shared
feed instead (see C{shared/TWISTED_NOTES.md}, section 6).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from twisted.logger import Logger

from proto.store.base import idKey


class Change(NamedTuple):
    """
    One committed change.

    @ivar id: the stored id (its original case).
    @ivar type: C{"Put"} or C{"Delete"} (L{proto.store.base.PUT},
        L{proto.store.base.DELETE}).
    @ivar etag: the etag the change took.
    """

    id: str
    type: str
    etag: int


Callback = Callable[[Change], None]


class Subscription:
    """
    What L{ChangeHub.subscribe} returns: C{cancel()} it to stop receiving
    changes.
    """

    def __init__(self, hub: "ChangeHub", key: str, callback: Callback) -> None:
        self._hub = hub
        self.key = key
        self.callback = callback
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

    def __init__(self) -> None:
        self._byKey: dict[str, dict[Subscription, None]] = {}
        # How many keys of each length there are, and those lengths sorted.
        self._lengthCounts: dict[int, int] = {}
        self._lengths: list[int] = []

    def subscribe(self, prefix: str, callback: Callback) -> Subscription:
        """
        Call C{callback(change)} for every change published from now on to
        a document whose id starts with C{prefix}, ignoring case.
        """
        subscription = Subscription(self, idKey(prefix), callback)
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
        """Tell the subscribers whose prefix matches C{id} about a change."""
        if not self._byKey:
            return
        key = idKey(id)
        matching = [
            subscription
            for length in self._lengths
            if length <= len(key)
            for subscription in self._byKey.get(key[:length], ())
        ]
        if not matching:
            return
        change = Change(id, type, etag)
        for subscription in matching:
            if not subscription.active:
                continue  # Cancelled by an earlier callback of this change.
            try:
                subscription.callback(change)
            except Exception:
                self._log.failure(
                    "Change subscriber {callback!r} failed on {change!r}",
                    callback=subscription.callback,
                    change=change,
                )
