"""
What C{proto-cli} prints (L{proto.client.cli}): replies and pushes for
the terminal (JSON bodies pretty-printed unless C{--raw}; C{-i} adds the
status line and headers, C{shared/PROTOCOL.md} section 3's frame), error
lines on stderr, and the exit statuses they end with.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from proto.client.messages import Reply

#: Exit statuses (also listed in --help).
EXIT_OK, EXIT_ERR_REPLY, EXIT_USAGE, EXIT_CONNECTION = 0, 1, 2, 3


def formatBody(body: bytes, raw: bool) -> str | bytes:
    """The body to show: pretty JSON when it is JSON, else the text (or bytes)."""
    if not raw and body:
        try:
            return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


def formatFrame(reply: Reply, options: argparse.Namespace, quiet: bool = False) -> str | bytes:
    """
    One reply or push for the terminal. C{quiet} (one-shot replies) prints
    nothing for an empty body; otherwise the status line stands in for it.
    """
    shown = formatBody(reply.body, options.raw)
    if isinstance(shown, bytes):
        return shown
    head = ""
    if options.include:
        lines = [reply.status, f"Sequence: {reply.sequence}"]
        if reply.body:
            lines.append(f"Size: {len(reply.body)}")
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        head = "\n".join(lines) + "\n\n"
    elif reply.status == "PUSH":
        head = f"[PUSH {reply.sequence}] "
    elif not shown and not quiet:
        shown = "OK"
    return head + shown


def emit(text: str | bytes, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if isinstance(text, bytes):
        stream.flush()
        stream.buffer.write(text)
        stream.buffer.flush()
    elif text:
        print(text, file=stream, flush=True)


def fail(message: str, status: int) -> int:
    print(f"proto-cli: {message}", file=sys.stderr, flush=True)
    return status
