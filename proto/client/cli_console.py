"""
C{proto-cli}'s interactive prompt (no COMMAND; L{proto.client.cli}): one
request per line, typed without Sequence, while PUSH frames are shown as
they arrive; the next request reconnects after the server has closed the
connection (C{shared/PROTOCOL.md}, sections 3 and 6).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import types
from typing import Callable, TextIO

from proto.client.blocking import BlockingClient
from proto.client.cli_options import BODY_COMMANDS, EPILOG, HISTORY_FILE, UsageError, parseHeader
from proto.client.cli_output import EXIT_CONNECTION, EXIT_OK, emit, formatFrame
from proto.client.errors import ClientError, ServerError

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
