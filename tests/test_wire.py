"""
The sans-I/O wire code, called directly: request heads, reply frames, and
property tests that arbitrary bytes never raise anything but the
protocol's own error.
"""

import ast
import re
import inspect

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from proto.wire import encode, framing, grammar, heads, replies
from proto.wire.grammar import FramingError
from proto.wire.heads import parseHead


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
        buf = b"xx" + encode.encodeRequest("echo", ["a", "b"], "9") + b"PING"
        match = heads.SIMPLE_REQUEST.match(buf, 2)
        self.assertEqual(buf[match.end():], b"PING")
        self.assertEqual(heads.simpleRequest(match), parseHead(b"echo a b\r\nSequence: 9"))
        self.assertIsNone(heads.SIMPLE_REQUEST.match(encode.encodeRequest("GET", ["a"], "1", {"Include": "X"})))

    def test_repeatedHeadersCombine(self):
        r = parseHead(b"GET a\r\nSequence: 1\r\nInclude: A\r\nInclude: B")
        self.assertEqual(r.header("include"), "A,B")


class EncodeTests(unittest.TestCase):
    def test_contractExample(self):
        self.assertEqual(
            encode.encodeReply("1", b'{"Id": "employees/1-A", "Etag": 1}'),
            b'OK\r\nSequence: 1\r\nSize: 34\r\n\r\n{"Id": "employees/1-A", "Etag": 1}',
        )
        self.assertEqual(
            encode.encodeError("Unknown command: FROB", "3"),
            b"ERR Unknown command: FROB\r\nSequence: 3\r\n\r\n",
        )
        self.assertEqual(encode.encodeReply("9"), b"OK\r\nSequence: 9\r\n\r\n")

    def test_replyFromTail(self):
        """An encoded tail (GET's memo) gives the bytes encodeReply gives."""
        for body, headers in [
            (b"", ()),
            (b"{}", ()),
            (b'{"a": 1}', (("Etag", "9"), ("Etags", "3,0"))),
            (b"", (("Etag", "a\r\nb"),)),
        ]:
            self.assertEqual(
                encode.encodeReplyTail("4.2", encode.encodeFrameTail(body, headers)),
                encode.encodeReply("4.2", body, headers),
            )
        self.assertEqual(
            encode.encodeReplyTail("1", encode.encodeFrameTail(b"xy", (("Etag", "7"),))),
            b"OK\r\nSequence: 1\r\nSize: 2\r\nEtag: 7\r\n\r\nxy",
        )

    def test_reasonIsOneLine(self):
        self.assertEqual(encode.encodeError("a\r\nb\x00c", None), b"ERR a b c\r\n\r\n")

    def test_greeting(self):
        self.assertEqual(encode.encodeGreeting(), b"OK\r\n")
        self.assertEqual(encode.encodeGreeting("no\nway"), b"ERR no way\r\n")

    def test_requestRoundTrip(self):
        data = encode.encodeRequest("PUT", ["a/1"], "s-1", {"If-Match": "3"}, b"{}")
        head, _, body = data.partition(grammar.HEAD_END)
        r = parseHead(head)
        self.assertEqual((r.command, r.args, r.sequence, r.size, r.header("if-match")), ("PUT", ("a/1",), "s-1", 2, "3"))
        self.assertEqual(body, b"{}")

    def test_requestRefusesWhatCannotBeSent(self):
        self.assertRaises(ValueError, encode.encodeRequest, "GET", ["a b"])
        self.assertRaises(ValueError, encode.encodeRequest, "GET", ["a\r\n"])
        self.assertRaises(ValueError, encode.encodeRequest, "G ET")
        self.assertRaises(ValueError, encode.encodeRequest, "GET", [], "1", {"Sequence": "2"})


class ReplyParserTests(unittest.TestCase):
    STREAM = (
        b"OK\r\n"
        b"OK\r\nSequence: 1\r\nSize: 4\r\n\r\nPONG"
        b"PUSH\r\nSequence: 2\r\nSize: 2\r\n\r\nhi"
        b"ERR Unknown command: FROB\r\nSequence: 3\r\n\r\n"
        b"ERR Missing Sequence header\r\n\r\n"
    )

    def check(self, frames):
        self.assertEqual(frames[0], replies.Greeting(True))
        self.assertEqual([(f.kind, f.sequence, f.body, f.reason) for f in frames[1:]], [
            ("OK", "1", b"PONG", ""), ("PUSH", "2", b"hi", ""),
            ("ERR", "3", b"", "Unknown command: FROB"), ("ERR", None, b"", "Missing Sequence header"),
        ])

    def test_whole(self):
        self.check(replies.ReplyParser().feed(self.STREAM))

    def test_byteByByte(self):
        parser = replies.ReplyParser()
        frames = []
        for i in range(len(self.STREAM)):
            frames.extend(parser.feed(self.STREAM[i:i + 1]))
        self.check(frames)

    def test_refusal(self):
        self.assertEqual(replies.ReplyParser().feed(b"ERR go away\r\n"), [replies.Greeting(False, "go away")])


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
        data = encode.encodeRequest("ECHO", args, sequence, (), body)
        head, _, rest = data.partition(grammar.HEAD_END)
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

        match = heads.SIMPLE_REQUEST.match(head + grammar.HEAD_END)
        fast = match and heads.simpleRequest(match)
        if fast is not None:
            self.assertEqual(fast, parseHead(head))
            self.assertEqual(match.end(), len(head) + len(grammar.HEAD_END))

    @settings(max_examples=400, deadline=None)
    @given(
        st.sampled_from(["GET", "echo", "x-y_z", "P@NG"]),
        st.lists(st.text(st.characters(min_codepoint=1, max_codepoint=0x2FFF), max_size=6), max_size=3),
        st.sampled_from(["Sequence: 1", "Sequence: " + "~" * 64, "Sequence: " + "a" * 65, "Sequence: é"]),
        st.sampled_from(["Include", "include", "X-Note", "Timeout", "Size", "Sequence", "sequence", "Bad Name",
                         "Na_me", "É"]),
        st.sampled_from(["Ref", "A.B, C", " Ref", "Ref ", "", "1.5", "a\tb", "é", "x" * 300]),
        st.sampled_from([": ", ":", ":  "]),
        st.booleans(),
    )
    def test_headedPathAgreesWithGeneralPath(self, command, args, sequenceLine, name, value, colon, before):
        """A head with one extra header line, taken in place, is what parseHead gives for it."""
        extra = name + colon + value
        lines = [extra, sequenceLine] if before else [sequenceLine, extra]
        head = "\r\n".join([" ".join([command, *args]), *lines]).encode("utf-8", "surrogatepass")
        parser = framing.RequestParser(256, 1000)
        parser.receive(head + grammar.HEAD_END)
        try:
            general = parseHead(head, 1000)
        except FramingError:
            general = None
        if parser._takeHeaded() is None:
            return  # not a head this path takes: next() sees it as before
        self.assertIsNotNone(general)
        parser2 = framing.RequestParser(256, 1000)
        parser2.receive(head + grammar.HEAD_END)
        self.assertEqual(parser2._takeHeaded(), general)
        self.assertEqual(parser2.buffered, 0)

    @settings(max_examples=600, deadline=None)
    @given(
        st.lists(
            st.sampled_from([b"GET", b"put", b"x-y_z", b" ", b"  ", b"\r\n", b"\r", b"\n", b"\t", b"a.b",
                             b"Sequence: ", b"Sequence: 7", b"Include: ", b"Size: ", b"12", b":", b"\x7f",
                             b"\xc3\xa9", b"~" * 64, b"\r\n\r\n"]),
            max_size=14,
        ),
        st.binary(max_size=20),
    )
    def test_possessiveHeadsMatchAsOrdinaryOnes(self, pieces, tail):
        """
        The in-place heads' repeats are possessive (no backtracking): each
        matches exactly what the same pattern with ordinary repeats (its
        form before Python 3.11) matches, with the same groups.
        """
        data = b"".join(pieces) + tail
        for pattern in (heads.SIMPLE_REQUEST, heads.SIZED_REQUEST, heads.HEADED_REQUEST, heads._SIMPLE_RUN):
            ordinary = re.compile(re.sub(rb"([+*?}])\+", rb"\1", pattern.pattern))
            self.assertNotEqual(ordinary.pattern, pattern.pattern)
            for pos in range(min(len(data), 3)):
                fast, slow = pattern.match(data, pos), ordinary.match(data, pos)
                self.assertEqual(fast and (fast.groups(), fast.end()), slow and (slow.groups(), slow.end()))
            self.assertEqual(pattern.findall(data), ordinary.findall(data))

    def test_possessiveHeadsMatchCommonShapes(self):
        """Heads the clients send still match in place (with spaces inside a header value too)."""
        self.assertIsNotNone(heads.SIMPLE_REQUEST.match(b"GET a b\r\nSequence: 1\r\n\r\n"))
        self.assertIsNotNone(heads.SIZED_REQUEST.match(b"PUT a\r\nSequence: 1\r\nSize: 2\r\n\r\n{}"))
        for head in (b"GET a\r\nInclude: A.B,  C\r\nSequence: 1\r\n\r\n",
                     b"GET a\r\nSequence: 1\r\nInclude:Ref\r\n\r\n"):
            self.assertIsNotNone(heads.HEADED_REQUEST.match(head), head)
        self.assertEqual(heads.HEADED_REQUEST.match(b"GET a\r\nInclude: A  B\r\nSequence: 1\r\n\r\n").group(7),
                         b"A  B")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.integers(1, 7))
    def test_replyParserOnlyRaisesFramingError(self, data, step):
        parser = replies.ReplyParser()
        try:
            for i in range(0, len(data), step):
                parser.feed(data[i:i + step])
        except FramingError:
            pass


def takeAll(parser, chunks):
    """Feed C{chunks} one by one, taking every request: (requests, error reason or None)."""
    out = []
    try:
        for chunk in chunks:
            parser.receive(chunk)
            while (request := parser.next()) is not None:
                out.append((request.command, request.args, dict(request.headers), request.sequence,
                            request.size, request.body, request.error))
    except FramingError as e:
        return out, e.reason
    return out, None


def takeAllMany(parser, chunks, giveBack=()):
    """
    As L{takeAll}, through C{nextMany}; after the i-th batch, when C{i} is
    in C{giveBack}, only its first request is kept and the rest given back
    with C{unread} (as the server does when it pauses mid-batch).
    """
    out = []
    batches = 0
    try:
        for chunk in chunks:
            parser.receive(chunk)
            while requests := parser.nextMany():
                if batches in giveBack and len(requests) > 1:
                    parser.unread(requests[1:])
                    requests = requests[:1]
                batches += 1
                for request in requests:
                    out.append((request.command, request.args, dict(request.headers), request.sequence,
                                request.size, request.body, request.error))
    except FramingError as e:
        return out, e.reason
    return out, None


def chunked(data: bytes, cuts) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


_word = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_characters="\x7f"),
                min_size=1, max_size=6)
_requests = st.lists(
    st.tuples(
        st.sampled_from(["PING", "ECHO", "get", "x-y_z"]),
        st.lists(_word, max_size=3),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10),
        st.lists(st.tuples(st.sampled_from(["Include", "Timeout", "X-Note"]),
                           st.sampled_from(["a", "1.5", "b c"])), max_size=2),
        st.one_of(st.none(), st.binary(max_size=40)),
    ),
    min_size=1, max_size=6,
)


class RequestParserTests(unittest.TestCase):
    """L{framing.RequestParser}: the server's framing, sans I/O."""

    STREAM = (
        b"PING\r\nSequence: 1\r\n\r\n"
        b"ECHO hello  world\r\nSequence: 2\r\nSize: 5\r\nX-Note: n\r\n\r\nab\r\n\r"
        b"PUT d/1\r\nSequence: 3\r\nSize: 0\r\n\r\n"
        b"FROB\r\nSequence: 4\r\n\r\n"
    )

    def check(self, requests, error):
        self.assertIsNone(error)
        self.assertEqual([(r[0], r[1], r[3], r[5]) for r in requests], [
            ("PING", (), "1", b""), ("ECHO", ("hello", "world"), "2", b"ab\r\n\r"),
            ("PUT", ("d/1",), "3", b""), ("FROB", (), "4", b""),
        ])
        self.assertEqual(requests[1][2], {"x-note": "n"})

    def test_whole(self):
        self.check(*takeAll(framing.RequestParser(), [self.STREAM]))

    def test_byteByByte(self):
        parser = framing.RequestParser()
        self.check(*takeAll(parser, [self.STREAM[i:i + 1] for i in range(len(self.STREAM))]))
        self.assertFalse(parser.headPending)
        self.assertEqual(parser.buffered, 0)

    def test_needMoreAndPending(self):
        parser = framing.RequestParser()
        parser.receive(b"PING\r\nSeq")
        self.assertIsNone(parser.next())
        self.assertTrue(parser.headPending)
        parser.receive(b"uence: 1\r\n\r\nECHO a\r\nSequence: 2\r\nSize: 4\r\n\r\nab")
        self.assertEqual(parser.next().sequence, "1")
        self.assertIsNone(parser.next())
        self.assertFalse(parser.headPending, "body bytes are not a pending head")
        self.assertEqual((parser.bodyPending.sequence, parser.bodyMissing), ("2", 2))

    def test_stopAndResume(self):
        """Requests not taken stay buffered; new bytes go after them."""
        parser = framing.RequestParser()
        parser.receive(b"PING\r\nSequence: 1\r\n\r\nPING\r\nSequence: 2\r\n\r\n")
        self.assertEqual(parser.next().sequence, "1")
        parser.receive(b"PING\r\nSequence: 3\r\n\r\n")
        self.assertEqual([parser.next().sequence, parser.next().sequence, parser.next()], ["2", "3", None])

    def test_headLimit(self):
        head = b"PING\r\nSequence: 1\r\nX: "
        exact = head + b"x" * (64 - len(head) - 4) + b"\r\n\r\n"
        self.assertEqual(len(exact), 64)
        requests, error = takeAll(framing.RequestParser(maxHead=64), [exact[i:i + 1] for i in range(64)])
        self.assertEqual((len(requests), error), (1, None))
        over = head + b"x" * (65 - len(head) - 4) + b"\r\n\r\n"
        for chunks in ([over], [over[i:i + 1] for i in range(len(over))]):
            requests, error = takeAll(framing.RequestParser(maxHead=64), chunks)
            self.assertEqual(requests, [])
            self.assertEqual(error, "Request head is over the limit of 64 bytes")
        # No delimiter at all: refused once maxHead bytes are held.
        parser = framing.RequestParser(maxHead=64)
        parser.receive(b"x" * 63)
        self.assertIsNone(parser.next())
        parser.receive(b"x")
        self.assertRaises(FramingError, parser.next)

    def test_nextManyRunsThenError(self):
        """A batch stops before a head it cannot take; a framing error comes with the next call."""
        parser = framing.RequestParser()
        parser.receive(b"PING\r\nSequence: 1\r\n\r\nECHO a\r\nSequence: 2\r\n\r\n"
                       b"PING\r\nno colon\r\n\r\nPING\r\nSequence: 4\r\n\r\n")
        self.assertEqual([r.sequence for r in parser.nextMany()], ["1", "2"])
        e = self.assertRaises(FramingError, parser.nextMany)
        self.assertIn("Malformed header line", e.reason)
        self.assertEqual((parser.nextMany(), parser.buffered), ([], 0))

    def test_unreadComesFirstAndClearDropsIt(self):
        parser = framing.RequestParser()
        parser.receive(b"PING\r\nSequence: 1\r\n\r\nPING\r\nSequence: 2\r\n\r\nPING\r\nSequence: 3\r\n\r\n")
        first, *rest = parser.nextMany()
        parser.unread(rest)
        self.assertFalse(parser.headPending)
        parser.receive(b"PING\r\nSequence: 4\r\n\r\n")
        self.assertEqual(parser.next().sequence, "2")
        self.assertEqual([r.sequence for r in parser.nextMany()], ["3"])
        self.assertEqual([r.sequence for r in parser.nextMany()], ["4"])
        parser.receive(b"PING\r\nSequence: 5\r\n\r\n")
        parser.unread(parser.nextMany())
        parser.clear()
        self.assertEqual(parser.nextMany(), [])

    def test_framingErrorClears(self):
        parser = framing.RequestParser()
        parser.receive(b"PING\r\nSequence: 1\r\n\r\nPING\r\nno colon\r\n\r\nPING\r\nSequence: 3\r\n\r\n")
        self.assertEqual(parser.next().sequence, "1")
        e = self.assertRaises(FramingError, parser.next)
        self.assertIn("Malformed header line", e.reason)
        self.assertEqual((parser.next(), parser.buffered), (None, 0))

    def test_sizeOverLimit(self):
        parser = framing.RequestParser(maxBody=10)
        parser.receive(b"PUT a\r\nSequence: 1\r\nSize: 11\r\n\r\n")
        e = self.assertRaises(FramingError, parser.next)
        self.assertEqual(e.sequence, "1")

    def test_discardBody(self):
        """A refused body is read and dropped; its request still comes out."""
        parser = framing.RequestParser()
        parser.receive(b"PUT a\r\nSequence: 1\r\nSize: 6\r\n\r\nabc")
        self.assertIsNone(parser.next())
        parser.discardBody()
        self.assertEqual(parser.buffered, 0)
        parser.receive(b"defPING\r\nSequence: 2\r\n\r\n")
        refused = parser.next()
        self.assertEqual((refused.sequence, refused.size, refused.body), ("1", 6, b""))
        self.assertEqual(parser.next().sequence, "2")

    @settings(max_examples=300, deadline=None)
    @given(_requests, st.lists(st.integers(0, 10_000), max_size=12))
    def test_anyChunkingGivesTheSameRequests(self, specs, cuts):
        """Whole, byte by byte, or cut anywhere: the same requests, bodies included."""
        data = b"".join(
            encode.encodeRequest(command, args, sequence, headers, body)
            for command, args, sequence, headers, body in specs
        )
        whole = takeAll(framing.RequestParser(), [data])
        self.assertIsNone(whole[1])
        self.assertEqual(len(whole[0]), len(specs))
        for (command, args, sequence, headers, body), got in zip(specs, whole[0]):
            self.assertEqual((got[0], got[1], got[3], got[5]), (command.upper(), tuple(args), sequence, body or b""))
        self.assertEqual(takeAll(framing.RequestParser(), chunked(data, cuts)), whole)
        self.assertEqual(takeAll(framing.RequestParser(), [data[i:i + 1] for i in range(len(data))]), whole)
        # The server's batches (nextMany), with requests given back (unread) anywhere.
        self.assertEqual(takeAllMany(framing.RequestParser(), [data]), whole)
        self.assertEqual(takeAllMany(framing.RequestParser(), chunked(data, cuts), set(cuts)), whole)

    @settings(max_examples=400, deadline=None)
    @given(
        st.sampled_from([b"PING", b"echo", b"Get", b"x-y_z", b"P@NG", b""]),
        st.lists(st.one_of(st.binary(max_size=5).filter(lambda b: b"\r" not in b and b"\n" not in b),
                           st.sampled_from([b"\xff", b"\xc3", "\u00e9".encode()])), max_size=4),
        st.sampled_from([b"Sequence: 1", b"Sequence: " + b"~" * 64, b"Sequence: " + b"a" * 65,
                         b"sequence: 2", b"Sequence:  3", b"Sequence: 4\r\nX: y"]),
    )
    def test_nextAgreesWithParseHead(self, command, args, sequenceLine):
        """
        The parser's inlined simple-head path gives what parseHead gives
        (or the same FramingError), for any bytes in the arguments.
        """
        head = b" ".join([command, *args]) + b"\r\n" + sequenceLine
        parser = framing.RequestParser()
        parser.receive(head + grammar.HEAD_END + b"PING\r\nSequence: z\r\n\r\n")
        try:
            expected = parseHead(head)
        except FramingError as e:
            got = self.assertRaises(FramingError, parser.next)
            self.assertEqual((got.reason, got.sequence), (e.reason, e.sequence))
            return
        self.assertEqual(parser.next(), expected)
        self.assertEqual(parser.next().sequence, "z")
        # The batch path (nextMany) too, behind a simple head.
        parser = framing.RequestParser()
        parser.receive(b"PING\r\nSequence: y\r\n\r\n" + head + grammar.HEAD_END)
        batch = parser.nextMany()
        if len(batch) == 1:
            batch += parser.nextMany()
        self.assertEqual(batch, [parseHead(b"PING\r\nSequence: y"), expected])

    def test_nextManyHeadLimit(self):
        """A simple head of maxHead bytes is taken in the run; one byte more is over the limit."""
        head = b"ECHO " + b"a" * 40 + b"\r\nSequence: 1" + grammar.HEAD_END
        parser = framing.RequestParser(maxHead=len(head))
        parser.receive(b"PING\r\nSequence: 0\r\n\r\n" + head + b"X" + head)
        self.assertEqual([r.sequence for r in parser.nextMany()], ["0", "1"])
        e = self.assertRaises(FramingError, parser.nextMany)
        self.assertEqual(e.reason, f"Request head is over the limit of {len(head)} bytes")

    @settings(max_examples=400, deadline=None)
    @given(
        st.sampled_from([b"PUT", b"put", b"P@T", b""]),
        st.lists(st.one_of(st.binary(max_size=5).filter(lambda b: b"\r" not in b and b"\n" not in b),
                           st.sampled_from([b"\xff", "\u00e9".encode()])), max_size=3),
        st.sampled_from([b"Size: 3", b"Size: 0", b"Size: 003", b"Size: 11", b"Size:  3", b"size: 3",
                         b"Size: 3\r\nX: y", b"Size: x"]),
        st.integers(0, 12),
    )
    def test_nextManyTakesSizedHeadsAsNextDoes(self, command, args, sizeLine, bodyBytes):
        """
        A head with a Size after its Sequence (taken in place by nextMany
        when its body is all buffered): the same request, body or error as
        next() gives, whether the body is all there or not, and over the
        body limit.
        """
        data = (b" ".join([command, *args]) + b"\r\nSequence: 1\r\n" + sizeLine + grammar.HEAD_END
                + b"b" * bodyBytes + b"PING\r\nSequence: z\r\n\r\n")
        for cut in (len(data), len(data) - 1 - bodyBytes):
            chunks = [data[:cut], data[cut:]]
            expected = takeAll(framing.RequestParser(maxBody=10), chunks)
            self.assertEqual(takeAllMany(framing.RequestParser(maxBody=10), chunks), expected)
            self.assertEqual(takeAllMany(framing.RequestParser(maxBody=10), chunks, {0}), expected)

    def test_nextManyTakesSizedAndHeadedInPlace(self):
        """
        A PUT's head (with Size) and a GET's with one more header line
        (either side of the Sequence) are taken in place, without
        parseHead, each by the one match that fits it; a head that is not
        complete yet waits for its bytes.
        """

        def noParseHead(*args, **kwargs):
            raise AssertionError("parseHead called")

        self.patch(framing, "parseHead", noParseHead)
        for data, expected in [
            (b"PUT a\r\nSequence: 1\r\nSize: 2\r\n\r\n{}", ("PUT", {}, b"{}")),
            (b"GET a\r\nInclude: Ref\r\nSequence: 1\r\n\r\n", ("GET", {"include": "Ref"}, b"")),
            (b"GET a\r\nSequence: 1\r\nInclude: A,  B\r\n\r\n", ("GET", {"include": "A,  B"}, b"")),
        ]:
            parser = framing.RequestParser()
            cut = data.index(grammar.HEAD_END) + 3
            parser.receive(data[:cut])
            self.assertEqual(parser.nextMany(), [])
            parser.receive(data[cut:])
            (request,) = parser.nextMany()
            self.assertEqual((request.command, dict(request.headers), request.body), expected)
            self.assertEqual(parser.buffered, 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8))
    def test_randomBytesOnlyFramingErrorWhateverTheChunks(self, data, cuts):
        """Arbitrary bytes: requests or FramingError, and the same however they arrive."""
        whole = takeAll(framing.RequestParser(maxHead=128), [data])
        self.assertEqual(takeAll(framing.RequestParser(maxHead=128), chunked(data, cuts)), whole)
        self.assertEqual(takeAllMany(framing.RequestParser(maxHead=128), chunked(data, cuts), {0, 2}), whole)


class OneLineTests(unittest.TestCase):
    """grammar.oneLine's shortcut for printable text changes nothing."""

    @given(st.text())
    def test_sameAsExpression(self, text: str) -> None:
        self.assertEqual(grammar.oneLine(text), grammar._LINE_BREAKERS.sub(" ", text).strip())


class PartsTests(unittest.TestCase):
    """How the parts of proto.wire fit together."""

    def test_noMethodCallOnAnImportedName(self):
        """
        No part calls a method of a name bound by C{from ... import}: CPython
        compiles such a call without LOAD_METHOD (a bound-method object per
        call; RequestParser.next was 8% slower per request for one), so the
        parts import bound methods instead (see proto.wire.grammar).
        """
        found = []
        for part in (grammar, heads, framing, encode, replies):
            tree = ast.parse(inspect.getsource(part))
            imported = {
                alias.asname or alias.name
                for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names
            }
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id in imported):
                    found.append(f"{part.__name__}:{node.lineno}: {ast.unparse(node.func)}")
        self.assertEqual(found, [])
