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

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Union

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from proto.permissions import ADMIN, LEVELS, RANK, Grant
from proto.wire.grammar import parseSeconds
from proto.wire.heads import Request

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from proto.access import AccessControl
    from proto.admission import Identity
    from proto.hub import ChangeHub
    from proto.store.base import IDocumentStore


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


@dataclass(frozen=True)
class EncodedResult(Result):
    """
    A L{Result} that also holds its reply already encoded, less the status
    and Sequence lines (L{proto.wire.encode.encodeFrameTail} of its body and
    headers): for a reply given again and again (GET's memo of recent
    replies), so that each reply is one formatting of the Sequence and
    this, not an encoding of its headers again.
    """

    tail: bytes = b""


class ICommandContext(Interface):
    """
    The connection (and server) a command runs for.
    """

    # The annotations are for the type checker (mypy-zope gives an
    # Attribute no type of its own); zope.interface ignores them.
    clock: IReactorTime = Attribute("An IReactorTime: callLater, seconds. Fake in tests.")
    store: IDocumentStore = Attribute("The IDocumentStore of the server (proto.store.base).")
    hub: ChangeHub = Attribute("The server's ChangeHub: WATCH subscribes to it.")
    peer: str = Attribute("A short printable name of the peer, for logs.")
    identity: Identity = Attribute(
        "The client certificate's proto.admission.Identity (thumbprints, CN, dates)."
    )
    grant: Grant = Attribute(
        "What the certificate may do now (proto.permissions.Grant); replaced "
        "when the allow-list changes. The protocol has checked the command's "
        "level and ids already; commands use it to filter what they add "
        "(Include, pushes)."
    )
    access: AccessControl | None = Attribute(
        "The server's proto.access.AccessControl (approvals, enrolments, "
        "refused certificates), or None when the server has none (tests)."
    )

    def push(sequence: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        """
        Send a C{PUSH} frame carrying C{sequence}. Does nothing once the
        connection is closing or gone.
        """

    def pushFrames(data: bytes, count: int | None = None) -> None:
        """
        Send C{data}: one or more whole C{PUSH} frames already encoded (so
        that a change pushed to many watchers is encoded once and a batch
        of pushes goes out in one write); C{count}, if given, is how many
        (else they are counted). Nothing once closing or gone.
        """

    def unsentBytes() -> int:
        """
        How many bytes written to the connection the client has not taken
        yet (server buffers and the kernel's send queue: L{proto.unsent}).
        """

    def congested() -> bool:
        """
        C{True} while the connection's unsent output is over its high-water
        mark (the peer is not reading). Pushers use it to bound what they
        queue for a slow reader.
        """

    def subscribe(
        sequence: str,
        cancel: Callable[[], None],
        regrant: Callable[[Grant], None] | None = None,
    ) -> None:
        """
        Record a standing subscription (WATCH, REMIND) under C{sequence}.
        C{cancel()} is called when the connection ends or by
        L{unsubscribe}; it is called at most once. C{regrant(grant)}, if
        given, is called whenever the certificate's grant changes while
        the subscription stands (a WATCH ends itself if it is now outside
        the prefixes).
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


#: What a handler returns: the reply (a L{Result}, or C{bytes} taken as its
#: body), or a Deferred that fires with one.
HandlerResult = Union[
    Result, bytes, "Deferred[Result]", "Deferred[bytes]", "Deferred[Result | bytes]"
]

#: A command: C{handler(ctx, request)}.
Handler = Callable[[ICommandContext, Request], HandlerResult]

#: Which of a request's arguments are document ids (or WATCH prefixes):
#: given the request, return them. The permission check (PROTOCOL.md
#: section 9) tests each against the certificate's prefixes.
IdsOf = Callable[[Request], Iterable[str]]


def ARGS(request: Request) -> tuple[str, ...]:
    """L{IdsOf} for commands whose arguments are all ids (GET, DELETE...)."""
    return request.args


def FIRST_ARG(request: Request) -> tuple[str, ...]:
    """L{IdsOf} for commands whose first argument is the id (PUT...)."""
    return request.args[:1]


class Command(NamedTuple):
    """
    A registered command: its handler and what a certificate needs to run
    it (section 9).

    @ivar level: C{"any"}, C{"read"}, C{"write"} or C{"admin"}
        (L{proto.permissions.LEVELS}).
    @ivar rank: the level's rank (its index in that tuple), for a fast test.
    @ivar ids: the ids the request touches, or C{None} if it touches none.
    """

    name: str
    handler: Handler
    level: str
    rank: int
    ids: IdsOf | None


class CommandRegistry:
    """
    Command name (upper case) to handler and permission level. The server
    looks commands up here, and checks the level and ids before running
    the handler (L{proto.protocol.GNPServerProtocol}); tests, embedders and
    plugins (L{proto.plugins}) build their own registries.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._commands: dict[str, Command] = {}
        self._unchecked: dict[tuple[int, bool], dict[str, Handler]] = {}

    @property
    def handlers(self) -> dict[str, Handler]:
        """The name-to-handler mapping itself (read it, don't change it)."""
        return self._handlers

    @property
    def commands(self) -> dict[str, Command]:
        """Name to L{Command} (read it, don't change it)."""
        return self._commands

    def command(
        self, name: str, level: str = ADMIN, ids: IdsOf | None = None
    ) -> Callable[[Handler], Handler]:
        """
        Decorator: register the function as command C{name}.

        @param level: what a certificate needs to run it: C{"any"} (every
            admitted client), C{"read"}, C{"write"} or C{"admin"}. Without
            it a command is admin-only: a forgotten declaration fails
            closed.
        @param ids: which arguments are document ids (L{ARGS},
            L{FIRST_ARG}, or a function of the request); each must be
            within the certificate's prefixes. Leave it out for commands
            that touch no documents.
        """

        def register(handler: Handler) -> Handler:
            self.add(name, handler, level, ids)
            return handler

        return register

    def add(
        self, name: str, handler: Handler, level: str = ADMIN, ids: IdsOf | None = None
    ) -> None:
        if level not in RANK:
            raise ValueError(
                f"command {name}: level {level!r} is not one of {', '.join(LEVELS)}"
            )
        name = name.upper()
        self._unchecked.clear()
        self._handlers[name] = handler
        self._commands[name] = Command(name, handler, level, RANK[level], ids)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def unchecked(self, rank: int, unrestricted: bool) -> dict[str, Handler]:
        """
        Name to handler of the commands that a certificate of level
        C{rank} (with no prefixes when C{unrestricted}) may run without
        any check: their level is within its own and, if it has prefixes,
        they touch no ids. The protocol looks commands up here first, so
        the permission check costs nothing on its hot path; only the
        other commands go through L{proto.permissions.Grant.refusal}.
        Cached: there are only six such tables per registry.
        """
        key = (rank, unrestricted)
        table = self._unchecked.get(key)
        if table is None:
            table = self._unchecked[key] = {
                name: command.handler
                for name, command in self._commands.items()
                if command.rank <= rank and (unrestricted or command.ids is None)
            }
        return table

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def merged(self, other: "CommandRegistry") -> "CommandRegistry":
        """
        A new registry with this one's commands, then C{other}'s (which
        replace same-named ones; plugins are checked for that first, see
        L{proto.plugins.withPlugins}).
        """
        new = CommandRegistry()
        for source in (self, other):
            new._handlers.update(source._handlers)
            new._commands.update(source._commands)
        return new


def trap(failure: Failure, *errorTypes: type[Exception]) -> Exception:
    """
    C{failure.trap(*errorTypes)} with types (Twisted leaves C{Failure.trap}
    unannotated, which the strict type gate refuses to call): re-raise the
    failure's exception unless it is one of C{errorTypes}; return it.
    """
    if not isinstance(failure.value, errorTypes):
        failure.raiseException()
    return failure.value


def requireArgs(request: Request, minimum: int, maximum: int | None, usage: str) -> None:
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


_ETAG = re.compile(r"[0-9]{1,18}\Z")


def etagHeader(value: str | None, name: str, meaning: str) -> int | None:
    """
    An optional etag header (C{If-Match}, C{Since}; PROTOCOL.md sections
    6 and 8): C{None} when absent, else a non-negative decimal integer.

    @param meaning: what the value stands for, in the error's parenthesis.
    @raise CommandError: C{Malformed <name>: ... (expected <meaning>)}.
    """
    if value is None:
        return None
    if not _ETAG.match(value):
        raise CommandError(f"Malformed {name}: {value!r} (expected {meaning})")
    return int(value)
