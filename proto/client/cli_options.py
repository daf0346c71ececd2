"""
The command line of C{proto-cli} (L{proto.client.cli}): its options,
C{--help}'s text, and the checks of what the user typed (a C{-H} header);
a problem with them is a L{UsageError} (exit status 2). The options of
L{proto.client.lifecycle}, L{proto.client.cli_ops} and
L{proto.client.watchcli} are added by those modules.
"""

from __future__ import annotations

import argparse
import os

from proto import datadir
from proto.client import cli_ops, lifecycle, watchcli

#: Commands whose request carries a body.
BODY_COMMANDS = {"PUT"}

HISTORY_FILE = os.path.join(os.path.expanduser("~"), ".proto_cli_history")

DESCRIPTION = """\
Talk GNP/1 to a proto server: send one request (COMMAND ARG...) and print
the reply, or, with no COMMAND, open an interactive prompt.
"""

EPILOG = f"""\
one-shot requests:
  proto-cli PING
  proto-cli GET employees/1-A --header Include=ReportsTo
  proto-cli PUT employees/1-A --body '{{"Name": "Nancy"}}'
  echo '{{"Name": "Nancy"}}' | proto-cli PUT employees/1-A
  proto-cli WATCH employees/ --follow
  proto-cli REMIND 2 tea is ready          (waits for the reminder)
  A JSON reply body is pretty-printed (--raw: as sent). PUT reads its body
  from --body, --body-file, or standard input when that is not a terminal.

interactive prompt (no COMMAND; line editing and history in
{HISTORY_FILE}):
  proto> GET employees/1-A -H Include=ReportsTo
  proto> PUT employees/1-A {{"Name": "Nancy"}}
  Type requests without Sequence. "-H Name=value" (or "--header
  Name=value") adds a header; for PUT everything after the id (and its
  headers) is the body. PUSH frames are shown as they arrive, tagged with
  the Sequence of the request that asked for them (WATCH, REMIND).
  ".help" shows this, ".quit" or Ctrl-D leaves. Lines read from a pipe
  run as a script, without a prompt. When the server has closed the
  connection (idle timeout, restart), the next request reconnects first;
  WATCH and REMIND of the old connection are gone then. A WATCH's reply
  shows the Sequence that UNWATCH needs.

server verification:
  By default the server must present the certificate in
  <data-dir>/{datadir.SERVER_CERT} (its SHA-256 thumbprint is pinned), so on the
  server's own machine `twistd -n proto` then `proto-cli PING` just works.
  Otherwise give --pin THUMBPRINT (SHA-1 or SHA-256; ':' and case ignored)
  or --ca FILE (the chain and the host name, or --servername, are checked).

certificates:
  proto-cli --thumbprint server.pem        print SHA-1 and SHA-256
  proto-cli --mint alice >> proto-data/{datadir.ALLOWLIST}
      writes alice.pem and alice.key (mode 0600) in the current directory,
      prints the allow-list line; --out DIR/ writes them into DIR instead,
      --out PREFIX writes PREFIX.pem and PREFIX.key

exit status: 0 OK, 1 the server answered ERR (reason on stderr),
2 usage or unusable files, 3 no connection (refused, untrusted server,
connection lost, timeout).
"""


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("proto")
    except metadata.PackageNotFoundError:
        return "(not installed)"


class UsageError(Exception):
    """A problem with the command line or the local files (exit 2)."""


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proto-cli",
        usage="proto-cli [options] [COMMAND [ARG ...]]\n"
        "       proto-cli --thumbprint FILE\n"
        "       proto-cli --mint NAME [--out DIR/ | --out PREFIX] [--days N] [--enroll]\n"
        "       proto-cli --version",
        description=DESCRIPTION,
        epilog=EPILOG + "\n" + lifecycle.EPILOG + "\n" + cli_ops.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"proto-cli {_version()}")
    parser.add_argument("request", nargs="*", metavar="COMMAND ARG",
                        help="the request to send (no Sequence); none: interactive prompt")
    conn = parser.add_argument_group("connection")
    conn.add_argument("--connect", metavar="HOST:PORT",
                      help="server address: HOST:PORT, [IPv6]:PORT or tcp:HOST:PORT "
                      f"(default localhost:{datadir.DEFAULT_PORT})")
    conn.add_argument("--host", help="server host (default localhost)")
    conn.add_argument("--port", type=int, help=f"server port (default {datadir.DEFAULT_PORT})")
    conn.add_argument("--data-dir", default=datadir.DEFAULT_DATA_DIR, metavar="DIR",
                      help="where the default certificate, key and server pin are "
                      "(default ./%(default)s)")
    conn.add_argument("--cert", metavar="FILE",
                      help=f"client certificate (default <data-dir>/{datadir.CLIENT_CERT})")
    conn.add_argument("--key", metavar="FILE",
                      help=f"client private key (default <data-dir>/{datadir.CLIENT_KEY})")
    conn.add_argument("--pin", metavar="THUMBPRINT", help="trust the server certificate with this thumbprint")
    conn.add_argument("--ca", metavar="FILE", help="trust servers certified by a CA in FILE")
    conn.add_argument("--servername", metavar="NAME",
                      help="host name the server certificate must name (with --ca; default the host)")
    conn.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="send a Timeout header and stop waiting a little after it")
    conn.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                      help="limit for TCP, TLS and the greeting (default %(default)s)")
    req = parser.add_argument_group("request")
    req.add_argument("-H", "--header", action="append", default=[], metavar="NAME=VALUE",
                     help="add a header (repeatable)")
    req.add_argument("--body", metavar="TEXT", help="the request body; '-' reads standard input")
    req.add_argument("--body-file", metavar="FILE", help="read the request body from FILE")
    req.add_argument("--follow", action="store_true",
                     help="after the reply, print PUSH frames until Ctrl-C or the connection ends")
    req.add_argument("--count", type=int, metavar="N", help="with --follow: stop after N pushes")
    watchcli.addOptions(req)
    req.add_argument("--raw", action="store_true", help="print bodies as sent, without pretty-printing JSON")
    req.add_argument("-i", "--include", action="store_true",
                     help="also print the status line and headers of replies and pushes")
    tools = parser.add_argument_group("certificate tools (no connection)")
    tools.add_argument("--thumbprint", metavar="FILE",
                       help="print the SHA-1 and SHA-256 thumbprints of the certificate in FILE")
    tools.add_argument("--mint", metavar="NAME",
                       help="mint a client certificate and key for NAME; print its allow-list line")
    tools.add_argument("--out", metavar="DIR/ or PREFIX",
                       help="with --mint: write NAME.pem and NAME.key into the directory DIR "
                       "(an existing directory, or a path ending in /), or PREFIX.pem and "
                       "PREFIX.key (default: NAME, made file-safe, in the current directory); "
                       "the key is readable by its owner only (0600)")
    tools.add_argument("--days", type=int, default=825, help="with --mint: validity in days (default %(default)s)")
    lifecycle.addArguments(tools)
    cli_ops.addArguments(parser)
    return parser


def parseHeader(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise UsageError(f"header {text!r}: expected NAME=VALUE")
    return name.strip(), value.strip()
