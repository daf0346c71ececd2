"""
The text-log lever (L{proto.speed.textlog}): twistd's text log lines come
out the same, character for character, as Twisted's own formatter makes
them, and reach the file, batched, within L{FLUSH_SECONDS}.
"""

from __future__ import annotations

import io
import random
import time

from twisted.internet.task import Clock
from twisted.logger import (
    FileLogObserver,
    LogLevel,
    LogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.trial import unittest

from proto.speed import textlog
from proto.speed.textlog import FLUSH_CHARS, FLUSH_SECONDS, BatchedFlush, FastClassicFormat, TextLogService


class Odd:
    """A value whose str, repr and format differ."""

    def __str__(self) -> str:
        return "str-of-odd"

    def __repr__(self) -> str:
        return "<repr of odd: é>"

    def __format__(self, spec: str) -> str:
        return f"format-of-odd[{spec}]"


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __format__ = None  # type: ignore[assignment]


def events(now: float) -> list[dict]:
    """Events of every shape the formatter may see."""
    base = {"log_namespace": "proto.test", "log_level": LogLevel.info, "log_time": now}
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    formats = [
        ("Admitted {peer} sha1={sha1} cn={cn!r} {grant}",
         dict(peer="[::1]:5", sha1="ab" * 20, cn="O'Brien \"x\"\n", grant="can=read prefix=a/")),
        ("{n:>6} {f:.2f} {{literal}} }}{{ {s!s} {a!a} {o} {o!r} {o!s} {o:spec}",
         dict(n=42, f=2 / 3, s="ü", a="ü", o=Odd())),
        ("multi\nline {x}\n", dict(x="a\nb")),
        ("", dict()),
        ("{x}", dict(x="")),
        ("missing {nothere}", dict()),
        ("attribute {o.real}", dict(o=3)),
        ("index {o[0]}", dict(o=[1])),
        ("call {f()}", dict(f=lambda: "called")),
        ("positional {} {0}", dict()),
        ("nested {x:{w}}", dict(x=1, w=5)),
        ("broken {b!r}", dict(b=Broken())),
        ("broken format {b}", dict(b=Broken())),
        ("bad brace {", dict()),
        ("tab\tand unicode ☃ {x}", dict(x="☃")),
    ]
    out = []
    for fmt, fields in formats:
        out.append({**base, "log_format": fmt, **fields})
    out += [
        {**base, "log_format": "with failure {x}", "x": 1, "log_failure": failure},
        {**base, "log_format": "own system", "log_system": "sys-1"},
        {**base, "log_format": b"bytes format"},
        {**base, "log_format": None},
        {**base, "log_format": 17},
        {**base, "log_format": "no level", "log_level": None},
        {**{k: v for k, v in base.items() if k != "log_level"}, "log_format": "level missing"},
        {**{k: v for k, v in base.items() if k != "log_namespace"}, "log_format": "no namespace"},
        {**{k: v for k, v in base.items() if k != "log_time"}, "log_format": "no time"},
        {**base, "log_format": "warn", "log_level": LogLevel.warn},
        {**base, "log_format": "critical", "log_level": LogLevel.critical},
        {**base, "log_format": "flattened {x}", "x": 1, "log_flattened": {"x!:": 1, "x:!": "1"}},
    ]
    return out


#: Formats of L{events} with plain names only: the fast path formats them itself.
FAST_FORMATS = [
    "Admitted {peer} sha1={sha1} cn={cn!r} {grant}",
    "{n:>6} {f:.2f} {{literal}} }}{{ {s!s} {a!a} {o} {o!r} {o!s} {o:spec}",
    "multi\nline {x}\n", "", "{x}", "tab\tand unicode ☃ {x}", "no namespace", "warn", "critical",
]


class SameTextTests(unittest.TestCase):
    def assertSameText(self, observer: FileLogObserver, when: float) -> None:
        original = observer.formatEvent
        delegated = []

        def counting(event: dict) -> str | None:
            delegated.append(event.get("log_format"))
            return original(event)

        fast = FastClassicFormat(counting)
        for event in events(when):
            self.assertEqual(fast(dict(event)), original(dict(event)), event.get("log_format"))
        # The lines compared above were made by the fast path, not handed
        # back to Twisted's formatter (which would make them equal anyway).
        for own in FAST_FORMATS:
            self.assertNotIn(own, delegated)

    def test_everyShapeOfEvent(self):
        """Every event, at several moments (second boundaries, fractions), is formatted alike."""
        observer = textFileLogObserver(io.StringIO())
        now = time.time()
        for when in (now, int(now) + 0.0, int(now) + 0.999999, int(now) + 1.0, 0.0, 1e9 + 0.5, 2**31 + 0.25):
            self.assertSameText(observer, when)

    def test_otherTimeFormats(self):
        """The time stamp is the original's, whatever its time format (None: "-")."""
        for timeFormat in (None, "%Y", "%H:%M:%S.%f %Z", "[%s]"):
            self.assertSameText(textFileLogObserver(io.StringIO(), timeFormat=timeFormat), time.time())

    def test_randomTimesAndValues(self):
        """Many random moments and values in the one format the server uses per connection."""
        rng = random.Random(1234)
        observer = textFileLogObserver(io.StringIO())
        delegated = []
        fast = FastClassicFormat(lambda event: delegated.append(event) or observer.formatEvent(event))
        for _ in range(2000):
            when = rng.uniform(0, 2e9)
            cn = "".join(rng.choice("aé'\"\n\t ☃{}") for _ in range(rng.randrange(8)))
            event = {
                "log_namespace": "proto.protocol.GNPServerProtocol", "log_level": LogLevel.info,
                "log_time": when, "log_format": "Admitted {peer} sha1={sha1} cn={cn!r} {grant}",
                "peer": f"127.0.0.1:{rng.randrange(65536)}", "sha1": "%040x" % rng.getrandbits(160),
                "cn": cn, "grant": rng.choice(["can=admin", "", "can=read prefix=a/,b/"]),
            }
            self.assertEqual(fast(dict(event)), observer.formatEvent(dict(event)))
        # All made by the fast path (it asks the original only for the
        # time stamp of each new second, with an event of format "-").
        self.assertEqual([e for e in delegated if e["log_format"] != "-"], [])


class InstallTests(unittest.TestCase):
    def test_onlyTwistedTextObservers(self):
        """The text observer gets the fast formatter; JSON and other observers are left alone."""
        text = textFileLogObserver(io.StringIO())
        custom = FileLogObserver(io.StringIO(), lambda event: "custom\n")
        jsonObserver = jsonFileLogObserver(io.StringIO())
        publisher = LogPublisher(text, custom, jsonObserver, lambda event: None)
        originals = (text.formatEvent, custom.formatEvent, jsonObserver.formatEvent)
        changed = textlog.install(publisher, time.time())
        self.assertEqual(changed, [text])
        self.assertIsInstance(text.formatEvent, FastClassicFormat)
        self.assertIs(custom.formatEvent, originals[1])
        self.assertIs(jsonObserver.formatEvent, originals[2])
        textlog.uninstall(changed)
        self.assertIs(text.formatEvent, originals[0])

    def test_notInstalledWhenTheTextDiffers(self):
        """If the sample events do not come out the same, the observer keeps Twisted's formatter."""
        text = textFileLogObserver(io.StringIO())
        original = text.formatEvent
        self.patch(FastClassicFormat, "__call__", lambda self, event: "different\n")
        self.assertEqual(textlog.install(LogPublisher(text), time.time()), [])
        self.assertIs(text.formatEvent, original)


class BatchedFlushTests(unittest.TestCase):
    def setUp(self) -> None:
        self.out = io.StringIO()
        self.clock = Clock()
        self.text = textFileLogObserver(self.out)
        self.publisher = LogPublisher(self.text)
        self.service = TextLogService(self.clock, self.publisher)
        self.service.startService()
        self.addCleanup(lambda: self.service.running and self.service.stopService())

    def emit(self, fmt: str, **kw) -> None:
        self.publisher({"log_format": fmt, "log_level": LogLevel.info, "log_namespace": "t",
                        "log_time": time.time(), **kw})

    def test_linesWaitAtMostFlushSeconds(self):
        """Lines reach the file together, FLUSH_SECONDS after the first, in order."""
        self.assertIsInstance(self.text._outFile, BatchedFlush)
        self.emit("one {x}", x=1)
        self.clock.advance(FLUSH_SECONDS / 2)
        self.emit("two")
        self.assertEqual(self.out.getvalue(), "")
        self.clock.advance(FLUSH_SECONDS / 2)
        lines = self.out.getvalue().splitlines()
        self.assertEqual([line.split("] ", 1)[1] for line in lines], ["one 1", "two"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_warningsAndErrorsAreWrittenAtOnce(self):
        """A line above info goes out at once, after the lines waiting before it."""
        for level in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            self.emit("routine")
            self.assertEqual(self.out.getvalue(), "")
            self.emit("alarm", log_level=level)
            lines = self.out.getvalue().splitlines()
            self.assertEqual([line.split("] ", 1)[1] for line in lines], ["routine", "alarm"])
            self.assertIn(f"#{level.name}]", lines[1])
            self.assertEqual(self.clock.getDelayedCalls(), [])
            self.out.seek(0)
            self.out.truncate()

    def test_manyCharactersAreWrittenAtOnce(self):
        """A burst past FLUSH_CHARS is written without waiting."""
        self.emit("{x}", x="y" * FLUSH_CHARS)
        self.assertIn("y" * FLUSH_CHARS, self.out.getvalue())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWritesWhatWaitsAndRestores(self):
        """Stopping the service writes the waiting lines and puts the file and the formatter back."""
        self.emit("last words")
        self.service.stopService()
        self.assertIn("last words", self.out.getvalue())
        self.assertIs(self.text._outFile, self.out)
        self.assertNotIsInstance(self.text.formatEvent, FastClassicFormat)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.emit("after")
        self.assertIn("after", self.out.getvalue())
