"""
C{proto-cli COMMAND ARG...} (L{proto.client.cli}): send one request, print
its reply, and, for C{--follow}, C{WATCH ... --follow} and C{REMIND}, the
pushes that come after it (C{shared/PROTOCOL.md}, section 6).
"""

from __future__ import annotations

import argparse
import sys

from proto.client import watchcli
from proto.client.blocking import BlockingClient
from proto.client.cli_connect import openClient
from proto.client.cli_options import BODY_COMMANDS, UsageError, parseHeader
from proto.client.cli_output import EXIT_ERR_REPLY, EXIT_OK, emit, fail, formatFrame
from proto.client.errors import ServerError

def readBody(options: argparse.Namespace, command: str) -> bytes | None:
    """
    The request body: --body, --body-file, or stdin for a command that
    takes one when stdin is not a terminal. Never reads stdin otherwise.
    """
    if options.body is not None and options.body_file is not None:
        raise UsageError("give --body or --body-file, not both")
    if options.body == "-":
        return sys.stdin.buffer.read()
    if options.body is not None:
        text: str = options.body
        return text.encode("utf-8")
    if options.body_file is not None:
        try:
            with open(options.body_file, "rb") as f:
                return f.read()
        except OSError as e:
            raise UsageError(f"cannot read --body-file: {e}") from None
    if command in BODY_COMMANDS:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError(f"{command} needs a body: --body TEXT, --body-file FILE, or standard input")
        return sys.stdin.buffer.read()
    return None


def oneShot(options: argparse.Namespace) -> int:
    command, *args = options.request
    command = command.upper()
    headers = [parseHeader(h) for h in options.header]
    body = readBody(options, command)
    if command == "WATCH":
        options.follow = options.follow or watchcli.impliesFollow(options)
        if options.follow and len(args) == 1:
            show = lambda push: emit(formatFrame(push, options))  # noqa: E731
            try:
                return watchcli.follow(options, args[0], headers, openClient, show, options.count)
            except ServerError as e:
                return fail(f"ERR {e.reason}", EXIT_ERR_REPLY)
        headers += watchcli.extraHeaders(options)
    client = openClient(options)
    try:
        try:
            reply = client.request(command, *args, headers=headers, body=body, timeout=options.timeout)
        except ServerError as e:
            return fail(f"ERR {e.reason}", EXIT_ERR_REPLY)
        emit(formatFrame(reply, options, quiet=True))
        if command == "WATCH" and not options.follow:
            # Its pushes (even a --since catch-up) come after the reply:
            # say why none is shown rather than end in silence.
            print(
                "proto-cli: WATCH without --follow shows only the reply; "
                "add --follow to print its pushes",
                file=sys.stderr, flush=True,
            )
        follow = options.follow or command == "REMIND"
        count = options.count if options.count is not None else (1 if command == "REMIND" else None)
        if follow:
            return followPushes(client, options, count)
        return EXIT_OK
    finally:
        client.close()


def followPushes(client: BlockingClient, options: argparse.Namespace, count: int | None) -> int:
    shown = 0
    try:
        while count is None or shown < count:
            push = client.nextPush(timeout=1.0)
            if push is not None:
                emit(formatFrame(push, options))
                shown += 1
    except KeyboardInterrupt:
        pass
    return EXIT_OK
