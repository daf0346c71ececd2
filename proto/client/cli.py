"""
C{proto-cli}: the GNP/1 command-line client (see C{proto-cli --help}).

It runs on L{proto.client.blocking.BlockingClient}: one-shot requests
block for their reply, and the interactive prompt shows pushes from a
background thread while the user types.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import types
from typing import Any, Callable, TextIO

from proto import certs, datadir
from proto.client import cli_ops, lifecycle, watchcli
from proto.client.blocking import BlockingClient
from proto.client.errors import ClientError, ServerError
from proto.client.messages import Reply
from proto.client.tlsconfig import Pin, pinForCertificateFile

#: Exit statuses (also listed in --help).
EXIT_OK, EXIT_ERR_REPLY, EXIT_USAGE, EXIT_CONNECTION = 0, 1, 2, 3

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


# -- options -> connection ----------------------------------------------------


def parseAddress(options: argparse.Namespace) -> tuple[str, int]:
    """The server's host and port from --connect, or --host and --port."""
    host, port = options.host or "localhost", options.port or datadir.DEFAULT_PORT
    if options.connect:
        text = re.sub(r"^tcp6?:", "", options.connect)
        match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)|([^:\[\]]+)", text)
        if not match:
            raise UsageError(f"--connect {options.connect!r}: expected HOST:PORT or [IPv6]:PORT")
        if match.group(1):
            host, port = match.group(1), int(match.group(2))
        elif match.group(3):
            host, port = match.group(3), int(match.group(4))
        else:
            host = match.group(5)
    return host, port


def verification(options: argparse.Namespace) -> dict[str, Any]:
    """The BlockingClient keyword arguments that say how to trust the server."""
    if options.pin and options.ca:
        raise UsageError("give --pin or --ca, not both")
    if options.ca:
        return {"caFile": options.ca, "serverName": options.servername}
    try:
        if options.pin:
            return {"pin": Pin(options.pin)}
        serverCert = os.path.join(options.data_dir, datadir.SERVER_CERT)
        if not os.path.exists(serverCert):
            raise UsageError(
                f"cannot verify the server: no {serverCert} to pin; "
                "give --pin THUMBPRINT or --ca FILE (or --data-dir)"
            )
        return {"pin": pinForCertificateFile(serverCert)}
    except ValueError as e:
        raise UsageError(str(e)) from None


def openClient(options: argparse.Namespace) -> BlockingClient:
    host, port = parseAddress(options)
    certPath = options.cert or os.path.join(options.data_dir, datadir.CLIENT_CERT)
    keyPath = options.key or os.path.join(options.data_dir, datadir.CLIENT_KEY)
    trust = verification(options)
    try:
        return BlockingClient(
            host, port, certPath=certPath, keyPath=keyPath,
            connectTimeout=options.connect_timeout, **trust,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def parseHeader(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise UsageError(f"header {text!r}: expected NAME=VALUE")
    return name.strip(), value.strip()


# -- printing -----------------------------------------------------------------


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


# -- certificate tools --------------------------------------------------------


def showThumbprint(path: str) -> int:
    try:
        with open(path, "rb") as f:
            cert = certs.loadCertificates(f.read())[0]
    except (OSError, ValueError) as e:
        return fail(f"cannot load certificate {path}: {e}", EXIT_USAGE)
    print(f"SHA-1:   {certs.sha1Thumbprint(cert)}")
    print(f"SHA-256: {certs.sha256Thumbprint(cert)}")
    print(f"Subject: CN={certs.commonName(cert)}")
    print(f"Valid:   {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return EXIT_OK


def _writeNew(path: str, data: bytes, mode: int) -> None:
    """Write a new file (never an existing one) with the given permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def mintPaths(name: str, prefix: str | None) -> tuple[str, str]:
    """
    The certificate and key files C{--mint NAME [--out PREFIX]} writes
    (PREFIX a path prefix, or a directory when it ends with C{/} or is one).

    @raise UsageError: the directory cannot be made, or a file exists.
    """
    fileName = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "client"
    if prefix is None:
        prefix = fileName
    elif prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        try:
            os.makedirs(prefix, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the directory {prefix}: {e}") from None
        prefix = os.path.join(prefix, fileName)
    certPath, keyPath = prefix + ".pem", prefix + ".key"
    for path in (certPath, keyPath):
        if os.path.exists(path):
            raise UsageError(f"{path} exists; not overwriting it (use --out PREFIX)")
    return certPath, keyPath


def mintClient(name: str, prefix: str | None, days: int) -> int:
    """
    Mint a client certificate and key. The allow-list line goes to stdout
    (so it can be appended to the allow-list), everything else to stderr.
    """
    try:
        certPath, keyPath = mintPaths(name, prefix)
    except UsageError as e:
        return fail(str(e), EXIT_USAGE)
    minted = certs.mint(name, days=days)
    try:
        _writeNew(keyPath, minted.keyPEM, 0o600)
        _writeNew(certPath, minted.certPEM, 0o644)
    except OSError as e:
        return fail(f"cannot write the certificate: {e}", EXIT_USAGE)
    print(f"wrote {certPath} and {keyPath} (CN={name})", file=sys.stderr)
    print(f"SHA-256: {certs.sha256Thumbprint(minted.certificate)}", file=sys.stderr)
    print("admit it with this allow-list line:", file=sys.stderr, flush=True)
    sys.stdout.write(datadir.allowlistLine(minted.certificate, name))
    return EXIT_OK


# -- one-shot -----------------------------------------------------------------


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


# -- interactive --------------------------------------------------------------


class LineSyntaxError(Exception):
    """An interactive line that cannot be turned into a request."""


def parseLine(line: str) -> tuple[str, list[str], list[tuple[str, str]], bytes | None]:
    """
    Parse one interactive line: C{COMMAND arg... [-H Name=value]...}; for
    PUT, everything after the id (and the headers before it) is the body.

    @return: command, arguments, headers, body (C{None}: no body).
    """
    rest = line.strip()
    headers: list[tuple[str, str]] = []
    words: list[str] = []
    while rest:
        isHeader = re.match(r"(-H|--header)(\s|=|$)", rest)
        if len(words) == 2 and words[0].upper() in BODY_COMMANDS and not isHeader:
            break  # the rest of the line is the body
        word, rest = _nextWord(rest)
        if word in ("-H", "--header"):
            spec, rest = _nextWord(rest)
        elif word.startswith("--header="):
            spec = word[len("--header="):]
        else:
            words.append(word)
            continue
        try:
            headers.append(parseHeader(spec))
        except UsageError as e:
            raise LineSyntaxError(str(e)) from None
    if not words:
        raise LineSyntaxError("empty request")
    command = words[0].upper()
    if command in BODY_COMMANDS:
        if not rest:
            raise LineSyntaxError(f"usage: {command} id [-H Name=value] BODY")
        return command, words[1:], headers, rest.encode("utf-8")
    return command, words[1:], headers, None


def _nextWord(text: str) -> tuple[str, str]:
    """Split off the first white-space separated word of C{text}."""
    parts = text.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


class Console:
    """
    The interactive prompt: reads lines (with readline when on a
    terminal), sends each as a request and waits for its reply, while a
    background thread prints PUSH frames as they arrive.
    """

    PROMPT = "proto> "

    def __init__(self, connect: Callable[[], BlockingClient], options: argparse.Namespace) -> None:
        """
        @param connect: opens a new L{BlockingClient} (at once, and again
            whenever the server has closed the connection).
        """
        self._connect = connect
        self.client: BlockingClient = connect()
        self.options = options
        self.interactive = sys.stdin.isatty()
        self._printLock = threading.Lock()
        self._readline: types.ModuleType | None = None
        self._finished = False
        self._subscribed = False

    def close(self) -> None:
        self.client.close()

    def run(self) -> int:
        if self.interactive:
            self._startReadline()
            print("connected; type .help for the syntax, Ctrl-D to leave", flush=True)
        self._startPushes()
        status = EXIT_OK
        try:
            while True:
                try:
                    line = input(self.PROMPT if self.interactive else "")
                except EOFError:
                    if self.interactive:
                        print()
                    break
                except KeyboardInterrupt:
                    print()
                    continue
                outcome = self.handle(line)
                if outcome is not None:
                    status = outcome
                    break
        finally:
            self._finished = True
            self._saveHistory()
        return status

    def handle(self, line: str) -> int | None:
        """Run one line; return an exit status to stop the session."""
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        if text in (".quit", ".exit"):
            return EXIT_OK
        if text == ".help":
            self.say(EPILOG)
            return None
        try:
            command, args, headers, body = parseLine(text)
        except LineSyntaxError as e:
            self.say(f"error: {e}", sys.stderr)
            return None
        if self.client.closed and not self._reconnect():
            return None if self.interactive else EXIT_CONNECTION
        try:
            reply = self.client.request(command, *args, headers=headers, body=body,
                                        timeout=self.options.timeout)
        except ValueError as e:
            self.say(f"error: {e}", sys.stderr)
            return None
        except ServerError as e:
            self.say(f"ERR {e.reason}")
            return None
        except KeyboardInterrupt:
            self.say("(stopped waiting; a late reply is dropped)", sys.stderr)
            return None
        except ClientError as e:
            if not self.interactive:
                self.say(f"proto-cli: {e}", sys.stderr)
                return EXIT_CONNECTION
            # The answer is unknown; sending it again could run it twice.
            self.say(f"proto-cli: {e} (the next request reconnects)", sys.stderr)
            return None
        if command in ("WATCH", "REMIND") and not reply.body and not self.options.include:
            self._subscribed = True
            stop = f"; UNWATCH {reply.sequence} stops it" if command == "WATCH" else ""
            self.say(f"OK (Sequence {reply.sequence}{stop})")
        else:
            self.say(formatFrame(reply, self.options))
        if command == "QUIT":
            return EXIT_OK
        return None

    def _reconnect(self) -> bool:
        """The server closed the connection: open a new one (as redis-cli does)."""
        self.client.close()
        try:
            client = self._connect()
        except (ClientError, UsageError) as e:
            self.say(f"proto-cli: not connected: {e}", sys.stderr)
            return False
        self.client = client
        note = "; WATCH and REMIND of the old connection are gone" if self._subscribed else ""
        self._subscribed = False
        self.say(f"proto-cli: reconnected{note}", sys.stderr)
        self._startPushes()
        return True

    def _startPushes(self) -> None:
        pusher = threading.Thread(
            target=self._showPushes, args=(self.client,), name="proto-cli-pushes", daemon=True
        )
        pusher.start()

    def say(self, text: str | bytes, stream: TextIO | None = None) -> None:
        with self._printLock:
            emit(text, stream)

    def _showPushes(self, client: BlockingClient) -> None:
        while True:
            try:
                push = client.nextPush()
            except ClientError as e:
                # Unless the session closed it itself: say so now, rather
                # than at the next request.
                if not self._finished and client is self.client:
                    self.say(f"proto-cli: {e} (the next request reconnects)", sys.stderr)
                return
            if push is None:
                continue  # (only after a timeout, and none was given)
            with self._printLock:
                if self.interactive:
                    sys.stdout.write("\r\x1b[K")
                emit(formatFrame(push, self.options))
                if self.interactive and self._readline is not None:
                    sys.stdout.write(self.PROMPT + self._readline.get_line_buffer())
                    sys.stdout.flush()

    def _startReadline(self) -> None:
        try:
            import readline
        except ImportError:
            return
        self._readline = readline
        readline.set_history_length(1000)
        try:
            readline.read_history_file(HISTORY_FILE)
        except OSError:
            pass

    def _saveHistory(self) -> None:
        if self._readline is not None:
            try:
                self._readline.write_history_file(HISTORY_FILE)
            except OSError:
                pass


# -- main ---------------------------------------------------------------------


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
