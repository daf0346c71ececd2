"""
C{proto-cli}: the GNP/1 command-line client (see C{proto-cli --help}).

It runs on L{proto.client.blocking.BlockingClient}: one-shot requests
block for their reply, and the interactive prompt shows pushes from a
background thread while the user types.

This module decides what a command line asks for (L{run}) and ends the
process (L{main}, the C{proto-cli} console script). The parts, one job
each: the options and C{--help} (L{proto.client.cli_options}), options
to a connection (L{proto.client.cli_connect}), what is printed and the
exit statuses (L{proto.client.cli_output}), one request
(L{proto.client.cli_oneshot}), the prompt (L{proto.client.cli_console}),
the certificate tools (L{proto.client.cli_certs}); the administrator's
commands are in L{proto.client.lifecycle} and L{proto.client.cli_ops},
WATCH's options in L{proto.client.watchcli}.
"""

from __future__ import annotations

import os
import sys

from proto.client import cli_ops, lifecycle
from proto.client.cli_certs import _writeNew, mintClient, mintPaths, showThumbprint
from proto.client.cli_connect import openClient, parseAddress, verification
from proto.client.cli_console import Console, LineSyntaxError, parseLine
from proto.client.cli_oneshot import followPushes, oneShot, readBody
from proto.client.cli_options import (
    BODY_COMMANDS,
    DESCRIPTION,
    EPILOG,
    HISTORY_FILE,
    UsageError,
    buildParser,
    parseHeader,
)
from proto.client.cli_output import (
    EXIT_CONNECTION,
    EXIT_ERR_REPLY,
    EXIT_OK,
    EXIT_USAGE,
    emit,
    fail,
    formatBody,
    formatFrame,
)
from proto.client.errors import ClientError

# The names of the parts stay importable from here (tests, users' scripts).
__all__ = [
    "BODY_COMMANDS", "DESCRIPTION", "EPILOG", "EXIT_BROKEN_PIPE", "EXIT_CONNECTION",
    "EXIT_ERR_REPLY", "EXIT_OK", "EXIT_USAGE", "HISTORY_FILE", "Console", "LineSyntaxError",
    "UsageError", "_writeNew", "buildParser", "emit", "fail", "followPushes", "formatBody",
    "formatFrame", "main", "mintClient", "mintPaths", "oneShot", "openClient", "parseAddress",
    "parseHeader", "parseLine", "readBody", "run", "showThumbprint", "verification",
]


def run(argv: list[str] | None = None) -> int:
    parser = buildParser()
    options = parser.parse_intermixed_args(argv)
    try:
        if options.thumbprint:
            return showThumbprint(options.thumbprint)
        handled = lifecycle.run(
            options, openClient, fail,
            {"ok": EXIT_OK, "err": EXIT_ERR_REPLY, "usage": EXIT_USAGE},
        )
        if handled is not None:
            return handled
        handled = cli_ops.run(
            options, openClient, fail,
            {"ok": EXIT_OK, "err": EXIT_ERR_REPLY, "usage": EXIT_USAGE},
        )
        if handled is not None:
            return handled
        if options.mint:
            return mintClient(options.mint, options.out, options.days)
        if options.request:
            return oneShot(options)
        console = Console(lambda: openClient(options), options)
        try:
            return console.run()
        finally:
            console.close()
    except UsageError as e:
        return fail(str(e), EXIT_USAGE)
    except ClientError as e:
        return fail(str(e), EXIT_CONNECTION)
    except ValueError as e:  # a request that cannot be written (bad argument)
        return fail(str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_CONNECTION)


#: Exit status when the reader of our output went away (C{proto-cli ... |
#: head}): what a shell reports for a tool ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def main() -> None:
    try:
        status = run()
        sys.stdout.flush()
    except BrokenPipeError:
        # Stop quietly, as Unix tools do, instead of a traceback; stdout now
        # goes to /dev/null so the interpreter's own flush at exit cannot
        # fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_BROKEN_PIPE
    sys.exit(status)


if __name__ == "__main__":
    main()
