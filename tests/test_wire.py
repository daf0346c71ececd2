"""
The sans-I/O wire code, called directly: request heads, reply frames, and
property tests that arbitrary bytes never raise anything but the
protocol's own error.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from proto import wire
from proto.wire import FramingError, parseHead


class ParseHeadTests(unittest.TestCase):
    def test_commandArgumentsAndHeaders(self):
        r = parseHead(b"get  employees/1-A   employees/2-B\r\nSequence: 7\r\nINCLUDE:  ReportsTo \r\nTimeout: 1.5")
        self.assertEqual(r.command, "GET")
        self.assertEqual(r.args, ("employees/1-A", "employees/2-B"))
        self.assertEqual(r.sequence, "7")
        self.assertEqual(r.header("Include"), "ReportsTo")
        self.assertEqual(r.timeout, 1.5)
        self.assertIsNone(r.size)
        self.assertIsNone(r.error)

    def test_size(self):
        r = parseHead(b"PUT a\r\nSequence: x\r\nSize: 017", maxBody=100)
        self.assertEqual(r.size, 17)
        self.assertNotIn("size", r.headers)

    def assertFatal(self, head, words, sequence=None, **kw):
        e = self.assertRaises(FramingError, parseHead, head, **kw)
        self.assertIn(words, e.reason)
        self.assertEqual(e.sequence, sequence)
        return e

    def test_notUTF8(self):
        self.assertFatal(b"PING\xff\r\nSequence: 1", "UTF-8")

    def test_emptyCommandLine(self):
        self.assertFatal(b"\r\nSequence: 1", "Empty command line", "1")
        self.assertFatal(b"   \r\nSequence: 1", "Empty command line", "1")

    def test_headerWithoutColon(self):
        self.assertFatal(b"PING\r\nSequence: 1\r\nno colon here", "Malformed header line", "1")

    def test_missingSequence(self):
        self.assertFatal(b"PING\r\nInclude: x", "Missing Sequence")

    def test_malformedSequence(self):
        self.assertFatal(b"PING\r\nSequence: " + b"x" * 65, "Malformed Sequence")
        self.assertFatal(b"PING\r\nSequence: a b", "Malformed Sequence")
        self.assertFatal(b"PING\r\nSequence: ", "Malformed Sequence")
        self.assertFatal("PING\r\nSequence: é".encode(), "Malformed Sequence")

    def test_sequenceLimits(self):
        self.assertEqual(parseHead(b"PING\r\nSequence: " + b"~" * 64).sequence, "~" * 64)
        self.assertEqual(parseHead(b"PING\r\nSequence: !").sequence, "!")

    def test_malformedSize(self):
        for bad in (b"-1", b"1.0", b"abc", b"", b"1 2", b"+5", b"9" * 21):
            self.assertFatal(b"PUT a\r\nSequence: 3\r\nSize: " + bad, "Size", "3")

    def test_sizeOverCap(self):
        self.assertFatal(b"PUT a\r\nSequence: 3\r\nSize: 101", "over the body limit", "3", maxBody=100)
        self.assertEqual(parseHead(b"PUT a\r\nSequence: 3\r\nSize: 100", maxBody=100).size, 100)

    def test_perRequestProblems(self):
        r = parseHead(b"P@NG\r\nSequence: 1")
        self.assertIn("Malformed command name", r.error)
        for bad in (b"0", b"-1", b"abc", b"1e3", b"inf", b"nan"):
            r = parseHead(b"PING\r\nSequence: 1\r\nTimeout: " + bad)
            self.assertIn("Malformed Timeout", r.error, bad)

    def test_simpleRequestInPlace(self):
        """The server's in-place fast path: same request, and where it ends."""
        buf = b"xx" + wire.encodeRequest("echo", ["a", "b"], "9") + b"PING"
        match = wire.SIMPLE_REQUEST.match(buf, 2)
        self.assertEqual(buf[match.end():], b"PING")
        self.assertEqual(wire.simpleRequest(match), parseHead(b"echo a b\r\nSequence: 9"))
        self.assertIsNone(wire.SIMPLE_REQUEST.match(wire.encodeRequest("GET", ["a"], "1", {"Include": "X"})))

    def test_repeatedHeadersCombine(self):
        r = parseHead(b"GET a\r\nSequence: 1\r\nInclude: A\r\nInclude: B")
        self.assertEqual(r.header("include"), "A,B")


class EncodeTests(unittest.TestCase):
    def test_contractExample(self):
        self.assertEqual(
            wire.encodeReply("1", b'{"Id": "employees/1-A", "Etag": 1}'),
            b'OK\r\nSequence: 1\r\nSize: 34\r\n\r\n{"Id": "employees/1-A", "Etag": 1}',
        )
        self.assertEqual(
            wire.encodeError("Unknown command: FROB", "3"),
            b"ERR Unknown command: FROB\r\nSequence: 3\r\n\r\n",
        )
        self.assertEqual(wire.encodeReply("9"), b"OK\r\nSequence: 9\r\n\r\n")

    def test_reasonIsOneLine(self):
        self.assertEqual(wire.encodeError("a\r\nb\x00c", None), b"ERR a b c\r\n\r\n")

    def test_greeting(self):
        self.assertEqual(wire.encodeGreeting(), b"OK\r\n")
        self.assertEqual(wire.encodeGreeting("no\nway"), b"ERR no way\r\n")

    def test_requestRoundTrip(self):
        data = wire.encodeRequest("PUT", ["a/1"], "s-1", {"If-Match": "3"}, b"{}")
        head, _, body = data.partition(wire.HEAD_END)
        r = parseHead(head)
        self.assertEqual((r.command, r.args, r.sequence, r.size, r.header("if-match")), ("PUT", ("a/1",), "s-1", 2, "3"))
        self.assertEqual(body, b"{}")

    def test_requestRefusesWhatCannotBeSent(self):
        self.assertRaises(ValueError, wire.encodeRequest, "GET", ["a b"])
        self.assertRaises(ValueError, wire.encodeRequest, "GET", ["a\r\n"])
        self.assertRaises(ValueError, wire.encodeRequest, "G ET")
        self.assertRaises(ValueError, wire.encodeRequest, "GET", [], "1", {"Sequence": "2"})


class ReplyParserTests(unittest.TestCase):
    STREAM = (
        b"OK\r\n"
        b"OK\r\nSequence: 1\r\nSize: 4\r\n\r\nPONG"
        b"PUSH\r\nSequence: 2\r\nSize: 2\r\n\r\nhi"
        b"ERR Unknown command: FROB\r\nSequence: 3\r\n\r\n"
        b"ERR Missing Sequence header\r\n\r\n"
    )

    def check(self, frames):
        self.assertEqual(frames[0], wire.Greeting(True))
        self.assertEqual([(f.kind, f.sequence, f.body, f.reason) for f in frames[1:]], [
            ("OK", "1", b"PONG", ""), ("PUSH", "2", b"hi", ""),
            ("ERR", "3", b"", "Unknown command: FROB"), ("ERR", None, b"", "Missing Sequence header"),
        ])

    def test_whole(self):
        self.check(wire.ReplyParser().feed(self.STREAM))

    def test_byteByByte(self):
        parser = wire.ReplyParser()
        frames = []
        for i in range(len(self.STREAM)):
            frames.extend(parser.feed(self.STREAM[i:i + 1]))
        self.check(frames)

    def test_refusal(self):
        self.assertEqual(wire.ReplyParser().feed(b"ERR go away\r\n"), [wire.Greeting(False, "go away")])


class PropertyTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=300))
    def test_randomHeadsOnlyRaiseFramingError(self, data):
        try:
            r = parseHead(data)
        except FramingError as e:
            self.assertIsInstance(e.reason, str)
            self.assertNotIn("\n", e.reason)
        else:
            self.assertTrue(r.command)
            self.assertTrue(1 <= len(r.sequence) <= 64)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_characters="\x7f"), min_size=1, max_size=8), max_size=5),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64),
        st.binary(max_size=50),
    )
    def test_encodeThenParse(self, args, sequence, body):
        data = wire.encodeRequest("ECHO", args, sequence, (), body)
        head, _, rest = data.partition(wire.HEAD_END)
        r = parseHead(head)
        self.assertEqual((r.args, r.sequence, r.size), (tuple(args), sequence, len(body)))
        self.assertEqual(rest, body)

    @settings(max_examples=400, deadline=None)
    @given(
        st.sampled_from(["PING", "echo", "Get", "x-y_z", "P@NG", ""]),
        st.lists(st.text(st.characters(min_codepoint=1, max_codepoint=0x2FFF), max_size=6), max_size=4),
        st.sampled_from(["Sequence: 1", "Sequence: " + "~" * 64, "Sequence: " + "a" * 65, "sequence: 2",
                         "Sequence:  3", "Sequence: é", "Sequence: 4\r\nX: y"]),
    )
    def test_fastPathAgreesWithGeneralPath(self, command, args, sequenceLine):
        head = " ".join([command, *args]).encode("utf-8", "surrogatepass") + b"\r\n" + sequenceLine.encode()

        match = wire.SIMPLE_REQUEST.match(head + wire.HEAD_END)
        fast = match and wire.simpleRequest(match)
        if fast is not None:
            self.assertEqual(fast, parseHead(head))
            self.assertEqual(match.end(), len(head) + len(wire.HEAD_END))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.integers(1, 7))
    def test_replyParserOnlyRaisesFramingError(self, data, step):
        parser = wire.ReplyParser()
        try:
            for i in range(0, len(data), step):
                parser.feed(data[i:i + step])
        except FramingError:
            pass
