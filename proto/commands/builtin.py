"""
The connection-level commands: PING, ECHO, QUIT and the diagnostic SLEEP
(PROTOCOL.md section 6). Every admitted client may run them (section 9).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from proto.permissions import ANY
from proto.commands.base import (
    CommandRegistry,
    ICommandContext,
    Result,
    requireArgs,
    secondsArgument,
)
from proto.wire.heads import Request

registry = CommandRegistry()

@registry.command("PING", level=ANY)
def ping(ctx: ICommandContext, request: Request) -> bytes:
    """Reply C{PONG}: the cheapest way to see the server is alive."""
    if request.args:
        requireArgs(request, 0, 0, "PING")
    return b"PONG"


@registry.command("ECHO", level=ANY)
def echo(ctx: ICommandContext, request: Request) -> bytes:
    """Reply with the arguments joined by single spaces."""
    return " ".join(request.args).encode()  # UTF-8 (the default is the fastest call)


@registry.command("QUIT", level=ANY)
def quit(ctx: ICommandContext, request: Request) -> Result:
    """
    Reply C{OK}; read nothing more; close once every earlier reply is sent.
    """
    requireArgs(request, 0, 0, "QUIT")
    ctx.quitAfterReplies()
    return Result()


@registry.command("SLEEP", level=ANY)
def sleep(ctx: ICommandContext, request: Request) -> Deferred[Result]:
    """
    Reply C{OK} after the given seconds (like Redis's C{DEBUG SLEEP}, but
    without blocking anyone): makes Timeout, out-of-order replies and
    duplicate-Sequence handling visible from outside.
    """
    requireArgs(request, 1, 1, "SLEEP seconds")
    seconds = secondsArgument(request.args[0])
    return deferLater(ctx.clock, seconds, Result)
