"""
Lever 4: twistd's text log, the same lines for less CPU.

Every admitted connection writes one log line (C{Admitted ...}, the audit
trail of PROTOCOL.md section 2). Through twistd's default observer
(C{textFileLogObserver}) that line cost about 90 microseconds of the
server's CPU per connection in the handshake row, half of what our
protocol adds to a TLS handshake, mostly in Twisted's formatting: the
time stamp (two C{datetime} conversions and a C{strftime} per line) and
the message (C{string.Formatter} over a wrapper per field).

L{FastClassicFormat} formats exactly as that observer does (C{timeStamp
[namespace#level] message}, continuation lines indented by a tab), but
takes the time stamp from the original formatter once per second and
fills a message's fields from a parse of its format string kept per
format. It is only used for what it reproduces exactly: plain
C{{name}}, C{{name!r}}, C{{name:spec}} fields of a text format, without
C{log_failure}, C{log_flattened}, C{log_system}; anything else (a
traceback, a missing field, C{{a.b}}, C{{f()}}) goes to Twisted's own
formatter, unchanged.

L{install} puts it in place of the formatter of twistd's text observer,
after checking on sample events that both give the same text (else it
leaves the observer alone); L{uninstall} puts Twisted's back. The other
half of a line's cost was the flush after every line: L{BatchedFlush}
makes it one flush per L{FLUSH_SECONDS} at most. Every event still goes
through Twisted's log publisher to every observer: only the text
observer's work is less. L{TextLogService} does both while the server
runs. Relies on C{FileLogObserver}'s C{formatEvent} and C{_outFile}
attributes and C{LogPublisher._observers} (Twisted 26.x, pinned in
pyproject.toml).
"""

from __future__ import annotations

import time
from string import Formatter
from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import FileLogObserver, LogLevel, LogPublisher

_parse = Formatter().parse

#: One field of a parsed format: (literal text before it, name, conversion, spec).
_Piece = tuple[str, str, str | None, str]

#: The C{__qualname__} of the formatter C{textFileLogObserver} makes.
_TWISTED_TEXT_FORMAT = "textFileLogObserver.<locals>.formatEvent"


def _compile(fmt: str) -> tuple[list[_Piece], str] | None:
    """
    The fields of C{fmt} and its trailing literal text, or C{None} if it
    uses anything but plain names (attributes, indexes, calls, positional
    or nested fields), which Twisted's formatter must handle.
    """
    pieces: list[_Piece] = []
    tail = ""
    try:
        parsed = list(_parse(fmt))
    except ValueError:
        return None
    for literal, name, spec, conversion in parsed:
        # An escaped brace ends a literal run without a field after it.
        tail += literal
        if name is None:
            continue
        if not name.isidentifier() or (spec and "{" in spec) or conversion not in (None, "r", "s", "a"):
            return None
        pieces.append((tail, name, conversion, spec or ""))
        tail = ""
    return pieces, tail


_MAX_FORMATS = 1000

#: The levels whose lines may wait in L{BatchedFlush}; others go out at once.
_ROUTINE = frozenset([LogLevel.debug, LogLevel.info])

_CONVERT: dict[str | None, Callable[[Any], str] | None] = {None: None, "r": repr, "s": str, "a": ascii}


def _fill(pieces: list[_Piece], event: dict) -> list[str] | None:
    """The message's pieces with the event's fields filled in; C{None} if that fails."""
    out = []
    try:
        for literal, name, conversion, spec in pieces:
            value = event[name]
            if conversion is not None:
                value = _CONVERT[conversion](value)  # type: ignore[misc]
            out.append(literal)
            out.append(format(value, spec))
    except Exception:
        return None
    return out


class FastClassicFormat:
    """
    A drop-in for the C{formatEvent} of C{textFileLogObserver(f)}: the
    same text for every event (see the module docstring), from C{original}
    when it cannot be sure.
    """

    def __init__(self, original: Callable[[dict], str | None]) -> None:
        self.original = original
        self._formats: dict[str, tuple[list[_Piece], str] | None] = {}
        self._second: int | None = None
        self._stamp = ""

    def _stampFor(self, when: float) -> str:
        second = int(when // 1)
        if second != self._second:
            # The original's own time stamp, taken once per second: the
            # format has no sub-second field, and a time zone's offset
            # changes on a whole second.
            line = self.original({"log_format": "-", "log_time": when, "log_system": "-"})
            if line is None or not line.endswith(" [-] -\n"):
                raise ValueError(f"unexpected time stamp line {line!r}")
            self._stamp = line[: -len(" [-] -\n")]
            self._second = second
        return self._stamp

    #: Called for an event above C{info} (a warning, an error): see
    #: L{BatchedFlush.urgent}.
    urgent: Callable[[], None] | None = None

    def __call__(self, event: dict) -> str | None:
        if self.urgent is not None and event.get("log_level") not in _ROUTINE:
            self.urgent()
        fmt = event.get("log_format")
        if (
            type(fmt) is not str
            or "log_failure" in event
            or "log_flattened" in event
            or "log_system" in event
        ):
            return self.original(event)
        if fmt in self._formats:
            compiled = self._formats[fmt]
        else:
            if len(self._formats) >= _MAX_FORMATS:
                self._formats.clear()  # formats made per event (f-strings): bounded
            compiled = self._formats[fmt] = _compile(fmt)
        when = event.get("log_time")
        level = event.get("log_level")
        if compiled is None or when is None or level is None:
            return self.original(event)
        pieces, tail = compiled
        out = _fill(pieces, event)
        if out is None:
            # A missing field or a failing __format__/__repr__: Twisted
            # writes its "Unable to format event" line (called here, not
            # in the handler: its traceback must not chain to ours).
            return self.original(event)
        out.append(tail)
        text = "".join(out)
        if not text:
            return None
        line = f"{self._stampFor(when)} [{event.get('log_namespace', '-')}#{level.name}] {text}"
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        return line + "\n"


def _samples(now: float) -> list[dict]:
    """Events the fast formatter must render exactly as Twisted does."""
    from twisted.logger import LogLevel

    base = {"log_namespace": "proto.check", "log_level": LogLevel.info, "log_time": now}
    return [
        {**base, "log_format": "Admitted {peer} sha1={sha1} cn={cn!r} {grant}", "peer": "127.0.0.1:1",
         "sha1": "ab" * 20, "cn": "it's \"x\"", "grant": "can=write prefix=a/,b/"},
        {**base, "log_format": "{n:>5} {f:.3f} {{literal}} {s!s} {a!a}", "n": 7, "f": 1 / 3,
         "s": "é", "a": "é", "log_level": LogLevel.warn},
        {**base, "log_format": "two\nlines {x}", "x": "and\nthree"},
        {**base, "log_format": "", "x": 1},
        {**base, "log_format": "missing {nothere}"},
        {**base, "log_format": "no time", "log_time": now + 0.999},
    ]


def install(publisher: LogPublisher, now: float) -> list[FileLogObserver]:
    """
    Give every Twisted text-file observer of C{publisher} a
    L{FastClassicFormat}, where sample events come out the same (C{now}:
    the time of the samples). Returns the observers changed, for
    L{uninstall}.
    """
    changed = []
    for observer in list(getattr(publisher, "_observers", ())):
        if not isinstance(observer, FileLogObserver):
            continue
        original = observer.formatEvent
        if getattr(original, "__qualname__", "") != _TWISTED_TEXT_FORMAT:
            continue
        fast = FastClassicFormat(original)
        try:
            same = all(fast(dict(e)) == original(dict(e)) for e in _samples(now))
        except Exception:
            same = False
        if same:
            observer.formatEvent = fast
            changed.append(observer)
    return changed


def uninstall(observers: list[FileLogObserver]) -> None:
    """Give the observers L{install} changed their own formatter back."""
    for observer in observers:
        fast = observer.formatEvent
        if isinstance(fast, FastClassicFormat):
            observer.formatEvent = fast.original


#: How long a log line may wait before it is written to the file.
FLUSH_SECONDS = 0.05
#: Write at once when this many characters wait.
FLUSH_CHARS = 64 * 1024


class BatchedFlush:
    """
    Stands for the text observer's file: it keeps the lines written, and
    writes them to the file together (then flushes it) within
    L{FLUSH_SECONDS}, or at once when L{FLUSH_CHARS} wait or the line is
    a warning or an error (L{urgent}: only C{info} and C{debug} lines wait).
    C{FileLogObserver} writes and flushes after every line: in the
    handshake row, with an unbuffered standard output (C{PYTHONUNBUFFERED}
    or not), that C{write(2)} per admitted connection cost as much as all
    the rest of the line. A line can now wait up to 50 ms before it
    reaches the file (or be lost with the process if it is killed
    outright); stopping the service writes what waits.
    """

    def __init__(self, outFile: Any, clock: Any) -> None:
        self.outFile = outFile
        self._clock = clock
        self._lines: list[Any] = []
        self._size = 0
        self._call: Any = None
        self._urgent = False

    def write(self, text: Any) -> None:
        self._lines.append(text)
        self._size += len(text)
        if self._size >= FLUSH_CHARS:
            self.flushNow()

    def urgent(self) -> None:
        """The next line is a warning or an error: write it, and what waits, at once."""
        self._urgent = True

    def flush(self) -> None:
        if self._urgent:
            self._urgent = False
            self.flushNow()
        elif self._call is None and self._lines:
            self._call = self._clock.callLater(FLUSH_SECONDS, self.flushNow)

    def flushNow(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        lines, self._lines, self._size = self._lines, [], 0
        if lines:
            self.outFile.write(lines[0][:0].join(lines))
            self.outFile.flush()


class TextLogService(Service):
    """
    Installs L{FastClassicFormat} and L{BatchedFlush} once the service
    starts (twistd begins logging after the plugin made its services,
    before it starts them), and puts Twisted's formatter and the file back,
    flushed, when it stops.
    """

    def __init__(self, clock: Any = None, publisher: LogPublisher | None = None) -> None:
        self._clock = clock
        self._publisher = publisher
        self._changed: list[FileLogObserver] = []

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor
        from twisted.logger import globalLogPublisher

        clock = self._clock or reactor
        self._changed = install(self._publisher or globalLogPublisher, time.time())
        for observer in self._changed:
            batched = BatchedFlush(observer._outFile, clock)
            observer._outFile = batched  # type: ignore[assignment]
            assert isinstance(observer.formatEvent, FastClassicFormat)
            observer.formatEvent.urgent = batched.urgent

    def stopService(self) -> None:
        for observer in self._changed:
            batched = observer._outFile
            if isinstance(batched, BatchedFlush):
                observer._outFile = batched.outFile
                batched.flushNow()
        uninstall(self._changed)
        self._changed = []
        return super().stopService()
