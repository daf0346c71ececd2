"""
An example of commands of your own for a proto server (README: "Commands
of your own").

The package exposes C{registry}, a L{CommandRegistry}, and names it in the
C{proto.commands} entry-point group of its C{pyproject.toml}. Handlers
have the signature of the built-in ones, C{handler(ctx: ICommandContext,
request: proto.wire.Request)}: C{ctx}
is the connection (L{proto.commands.base.ICommandContext}: C{store},
C{clock}, C{push}, C{subscribe}, C{grant}, C{identity}), C{request} the
parsed request (C{args}, C{header(name)}, C{body}, C{sequence}). They
return bytes, a L{Result} or a Deferred of one, and raise L{CommandError}
for an C{ERR} reply. Each declares its permission level, and the
documents it touches (C{ids=}), so the server checks them before the
handler runs.
"""

from __future__ import annotations

import datetime
import json

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from proto.commands.base import (
    FIRST_ARG,
    CommandError,
    CommandRegistry,
    ICommandContext,
    Result,
    requireArgs,
    secondsArgument,
)
from proto.store.base import InvalidIdError, Version, checkId
from proto.wire import Request

registry = CommandRegistry()

#: The most pushes one COUNTDOWN may ask for.
MAX_COUNT = 1000


def _who(ctx: ICommandContext) -> str:
    return ctx.grant.name or ctx.identity.commonName


@registry.command("HELLO", level="any")
def hello(ctx: ICommandContext, request: Request) -> bytes:
    """C{HELLO [name ...]}: a greeting that names who asked."""
    to = " ".join(request.args) or "world"
    return f"Hello, {to}! (asked by {_who(ctx)})".encode("utf-8")


@registry.command("COUNTDOWN", level="any")
def countdown(ctx: ICommandContext, request: Request) -> Result:
    """
    C{COUNTDOWN n [seconds]}: reply C{OK}, then push C{n}, ..., C{1}, one
    every C{seconds}. Stops when the connection ends (the subscription's
    cancel), like the built-in REMIND.
    """
    requireArgs(request, 1, 2, "COUNTDOWN n [seconds]")
    try:
        count = int(request.args[0])
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_COUNT:
        raise CommandError(f"COUNTDOWN n: n must be a whole number from 1 to {MAX_COUNT}")
    interval = secondsArgument(request.args[1]) if len(request.args) > 1 else 1.0
    sequence = request.sequence
    state = {"left": count, "cancelled": False}

    def tick() -> None:
        ctx.push(sequence, str(state["left"]).encode("ascii"))
        state["left"] -= 1
        if state["left"] == 0:
            ctx.unsubscribe(sequence)  # calls cancel()

    loop = LoopingCall(tick)
    loop.clock = ctx.clock

    def cancel() -> None:
        state["cancelled"] = True
        if loop.running:
            loop.stop()

    def start() -> None:
        if not state["cancelled"]:
            loop.start(interval, now=True)

    ctx.subscribe(sequence, cancel)
    # Pushes come after the OK: start on the next turn of the reactor.
    ctx.clock.callLater(0, start)
    return Result()


@registry.command("STAMP", level="write", ids=FIRST_ARG)
def stamp(ctx: ICommandContext, request: Request) -> Deferred[bytes]:
    """C{STAMP id}: store who stamped it and when; needs write rights on C{id}."""
    requireArgs(request, 1, 1, "STAMP id")
    (id,) = request.args
    try:
        checkId(id)
    except InvalidIdError as e:
        raise CommandError(str(e)) from None
    at = datetime.datetime.fromtimestamp(ctx.clock.seconds(), datetime.timezone.utc)
    body = json.dumps({"StampedBy": _who(ctx), "At": at.strftime("%Y-%m-%dT%H:%M:%SZ")})
    d = ctx.store.put(id, body.encode("utf-8"))
    def reply(version: Version) -> bytes:
        return json.dumps({"Id": version.id, "Etag": version.etag}).encode("utf-8")

    return d.addCallback(reply)
