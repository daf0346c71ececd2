"""
A connection's standing subscriptions (WATCH, REMIND), by Sequence.

A command that keeps pushing after its reply (PROTOCOL.md: pushes carry
the Sequence of the request that asked for them) registers a C{cancel}
function here, and optionally a C{regrant(grant)} function called when
the connection's rights change (PROTOCOL.md section 9: a narrowed grant
must narrow what is pushed). One job, kept apart from the connection
(the server protocol owns one; the tests' recording context uses the same
class, so both behave alike):

  - a new subscription under a Sequence cancels the one before it;
  - L{Subscriptions.remove} (UNWATCH) cancels one; L{Subscriptions.close}
    (disconnect, drain) cancels every one, and any added later is
    cancelled at once (a command that finishes while the connection
    drains cannot leave a subscription behind);
  - a C{cancel} or C{regrant} that raises is logged and does not stop the
    others.

The two tables are made on first use: most connections never subscribe.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger


class _Gone:
    """What L{Subscriptions.detach} keeps of its connection: the address."""

    __slots__ = ("peer",)

    def __init__(self, peer: str) -> None:
        self.peer = peer


class Subscriptions:
    """
    The subscriptions of one connection. C{owner.peer} (the connection's
    address) names it in logs.
    """

    __slots__ = ("owner", "closed", "_cancels", "_regrants")
    log = Logger()

    def __init__(self, owner: Any = None) -> None:
        self.owner = owner
        self.closed = False
        self._cancels: dict[str, Callable[[], None]] | None = None
        self._regrants: dict[str, Callable[[Any], None]] | None = None

    def __len__(self) -> int:
        return len(self._cancels) if self._cancels else 0

    def __bool__(self) -> bool:
        return bool(self._cancels)

    def __contains__(self, sequence: str) -> bool:
        cancels = self._cancels
        return cancels is not None and sequence in cancels

    def add(
        self, sequence: str, cancel: Callable[[], None], regrant: Callable[[Any], None] | None = None
    ) -> None:
        """Keep C{cancel} (and C{regrant}) under C{sequence}, ending the one there before."""
        if self.closed:
            self._call(cancel, "Cancelling")
            return
        if self._regrants:
            self._regrants.pop(sequence, None)
        if self._cancels is None:
            self._cancels = {}
        previous = self._cancels.pop(sequence, None)
        if previous is not None:
            self._call(previous, "Cancelling")
        self._cancels[sequence] = cancel
        if regrant is not None:
            if self._regrants is None:
                self._regrants = {}
            self._regrants[sequence] = regrant

    def remove(self, sequence: str) -> bool:
        """Cancel the subscription under C{sequence}; C{False} if there is none."""
        if self._regrants:
            self._regrants.pop(sequence, None)
        cancel = self._cancels.pop(sequence, None) if self._cancels else None
        if cancel is None:
            return False
        self._call(cancel, "Cancelling")
        return True

    def close(self) -> None:
        """Cancel every subscription, and every one added from now on."""
        self.closed = True
        self.cancelAll()

    def detach(self) -> None:
        """
        The connection is gone: keep only its address (for the logs of a
        cancel that fails later), not the connection itself. The two no
        longer refer to each other, so both are freed as soon as the
        connection is dropped, without waiting for the garbage collector.
        """
        self.owner = _Gone(getattr(self.owner, "peer", "?"))

    def cancelAll(self) -> None:
        """Cancel every subscription."""
        cancels, self._cancels, self._regrants = self._cancels, None, None
        for cancel in (cancels or {}).values():
            self._call(cancel, "Cancelling")

    def regrant(self, grant: Any) -> None:
        """The connection's rights changed: tell every subscription that asked."""
        for sequence, regrant in list((self._regrants or {}).items()):
            # One regrant may end another subscription: skip those gone.
            if self._regrants and self._regrants.get(sequence) is regrant:
                self._call(lambda: regrant(grant), "Re-checking")

    def _call(self, function: Callable[[], None], what: str) -> None:
        try:
            function()
        except Exception:
            self.log.failure(
                "{what} a subscription of {peer} failed",
                what=what, peer=getattr(self.owner, "peer", "?"),
            )
