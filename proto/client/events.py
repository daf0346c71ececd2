"""
What the sans-I/O client core (L{proto.client.core.ClientCore}) hands its
wrapper: the events of L{ClientCore.receive<proto.client.core.ClientCore.receive>}
(admitted, abort, a reply, an error reply, a push, a stray reply) and the
end of the connection (L{Ended}), generic in the wrapper's own I{waiter}
(a Deferred, a future) and push I{target} (a callable), which the core
hands back and never looks into.

The Twisted client (L{proto.client.connection}) and the blocking client
(L{proto.client.blocking}) each turn these into their own kind of result.
What each one means on the wire is C{shared/PROTOCOL.md}: the greeting
(section 2), replies matched by Sequence (sections 3 and 4), pushes
(sections 4, 6 and 8), errors (section 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar, Union

from proto.client.errors import ClientError, ServerError
from proto.client.messages import Reply

#: The wrapper's waiter for one request (a Deferred, a future, ...).
W = TypeVar("W")
#: The wrapper's target for a request's pushes (a callable, ...).
H = TypeVar("H")


@dataclass(slots=True)
class Admitted:
    """The greeting was C{OK}: requests may be sent."""


@dataclass(slots=True)
class Abort:
    """
    End the connection now (abort the transport): the greeting refused us,
    or the server sent something that is not GNP/1. Pending requests fail
    with C{error} once L{ClientCore.connectionLost} is called.
    """

    error: ClientError


@dataclass(slots=True)
class Replied(Generic[W]):
    """The C{OK} reply of a pending request."""

    waiter: W
    reply: Reply


@dataclass(slots=True)
class Failed(Generic[W]):
    """The C{ERR} reply of a pending request."""

    waiter: W
    error: ServerError


@dataclass(slots=True)
class Pushed(Generic[H]):
    """
    A C{PUSH} frame; C{target} is the one given with the request that
    opened the subscription, or C{None} if that subscription is not (or no
    longer) known.
    """

    push: Reply
    target: H | None


@dataclass(slots=True)
class Stray:
    """An C{OK}/C{ERR} for a Sequence that is not pending (given up on)."""

    sequence: str
    kind: str


#: What L{ClientCore.receive<proto.client.core.ClientCore.receive>} returns a list of.
Event = Union[Admitted, Abort, Replied[W], Failed[W], Pushed[H], Stray]


@dataclass(slots=True)
class Ended(Generic[W]):
    """
    The connection is gone: every request that was pending (C{waiters}, in
    the order they were sent) fails with C{error}.
    """

    error: ClientError
    waiters: list[W] = field(default_factory=list)
