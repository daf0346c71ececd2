"""
What a command is, and what it may use.

A command is a function C{handler(ctx, request)} registered under a name
with L{CommandRegistry.command}. It returns a L{Result} (or C{bytes}, taken
as the body), or a L{Deferred} that fires with one. To refuse the request it
raises (or fails with) L{CommandError}; the client then gets
C{ERR <reason>} with the request's Sequence and the connection stays.
Anything else that goes wrong is logged with its traceback and the client
gets a short C{ERR} without one.

Commands never touch the transport. What they need of the connection and
the server is in L{ICommandContext}: the clock (so tests can fake time), the
document store, the change hub, and C{push()} for server-initiated frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from zope.interface import Attribute, Interface

from proto.wire import parseSeconds


class CommandError(Exception):
    """
    A per-request failure: the client gets C{ERR <reason>}.

    @ivar reason: one line of text for a person.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Result:
    """
    A successful reply: C{OK} with this body and these extra headers.
    """

    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class ICommandContext(Interface):
    """
    The connection (and server) a command runs for.
    """

    clock = Attribute("An IReactorTime: callLater, seconds. Fake in tests.")
    store = Attribute("The IDocumentStore of the server (proto.store.base).")
    hub = Attribute("The server's ChangeHub: WATCH subscribes to it.")
    peer = Attribute("A short printable name of the peer, for logs.")

    def push(sequence: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        """
        Send a C{PUSH} frame carrying C{sequence}. Does nothing once the
        connection is closing or gone.
        """

    def congested() -> bool:
        """
        C{True} while the connection's unsent output is over its high-water
        mark (the peer is not reading). Pushers use it to bound what they
        queue for a slow reader.
        """

    def subscribe(sequence: str, cancel: Callable[[], None]) -> None:
        """
        Record a standing subscription (WATCH, REMIND) under C{sequence}.
        C{cancel()} is called when the connection ends or by
        L{unsubscribe}; it is called at most once.
        """

    def unsubscribe(sequence: str) -> bool:
        """
        Cancel the subscription recorded under C{sequence}. Return
        C{False} if there was none.
        """

    def quitAfterReplies() -> None:
        """
        Read no further requests on this connection, and close it once
        every reply already due has been sent (QUIT).
        """


Handler = Callable[[Any, Any], Any]


class CommandRegistry:
    """
    Command name (upper case) to handler. The server looks commands up
    here; tests and embedders may build their own registry.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    @property
    def handlers(self) -> dict[str, Handler]:
        """The name-to-handler mapping itself (read it, don't change it)."""
        return self._handlers

    def command(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: register the function as command C{name}."""

        def register(handler: Handler) -> Handler:
            self.add(name, handler)
            return handler

        return register

    def add(self, name: str, handler: Handler) -> None:
        self._handlers[name.upper()] = handler

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def merged(self, other: "CommandRegistry") -> "CommandRegistry":
        """A new registry with this one's commands, then C{other}'s."""
        new = CommandRegistry()
        new._handlers.update(self._handlers)
        new._handlers.update(other._handlers)
        return new


def requireArgs(request: Any, minimum: int, maximum: int | None, usage: str) -> None:
    """
    Refuse the request with a usage message unless it has between
    C{minimum} and C{maximum} (C{None}: any number of) arguments.
    """
    count = len(request.args)
    if count < minimum or (maximum is not None and count > maximum):
        raise CommandError(f"Wrong number of arguments for {request.command}: usage: {usage}")


def secondsArgument(text: str, what: str = "seconds") -> float:
    """
    Parse a non-negative decimal number of seconds given as an argument;
    refuse the request with a clear reason otherwise.
    """
    seconds = parseSeconds(text, allowZero=True)
    if seconds is None:
        raise CommandError(
            f"Invalid {what}: {text!r} is not a non-negative decimal number"
        )
    return seconds
