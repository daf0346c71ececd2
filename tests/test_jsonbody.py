"""
PUT bodies: checked to be JSON objects in our own words, large ones off the
reactor thread (issue 12, should-fix items).
"""

from __future__ import annotations

import json
import threading

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from proto import wire
from proto.commands import jsonbody
from proto.commands.base import CommandError
from proto.commands.jsonbody import INLINE_LIMIT, MAX_INTEGER_DIGITS, checkObject, checkObjectBody


def reason(body: bytes) -> str:
    try:
        checkObject(body)
    except CommandError as e:
        return e.reason
    return ""


def putRequest(body: bytes) -> wire.Request:
    request = wire.parseHead(f"PUT a\r\nSequence: 1\r\nSize: {len(body)}".encode())
    request.body = body
    return request


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


class CheckObjectTests(unittest.TestCase):
    def test_objectsPass(self):
        for body in (b"{}", b' {"a": [1, 2.5, {"b": null}], "c": "\\u00e9"} ', '{"é": 1}'.encode()):
            self.assertEqual(reason(body), "", body)

    def test_notObjects(self):
        self.assertEqual(reason(b"[]"), "Body must be a JSON object, not an array")
        self.assertEqual(reason(b'"x"'), "Body must be a JSON object, not a string")
        self.assertEqual(reason(b"1.5"), "Body must be a JSON object, not a number")
        self.assertEqual(reason(b"null"), "Body must be a JSON object, not null")
        self.assertEqual(reason(b"true"), "Body must be a JSON object, not true")

    def test_malformed(self):
        self.assertTrue(reason(b'{"a": }').startswith("Body is not valid JSON: Expecting value"))
        self.assertEqual(reason(b'{"a": NaN}'), "Body is not valid JSON: NaN is not valid JSON")
        self.assertIn("not valid UTF-8", reason(b'{"a": "\xff"}'))
        self.assertEqual(reason(b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}"),
                         "Body is not usable JSON: nested too deeply")

    def test_hugeIntegerInOurWords(self):
        why = reason(b'{"n": ' + b"7" * 5000 + b"}")
        self.assertEqual(why, "Body is not usable JSON: an integer has 5000 digits, more than the 4300 allowed")
        self.assertNotIn("set_int_max_str_digits", why)
        self.assertIn("5000 digits", reason(b'{"n": [-' + b"7" * 5000 + b"]}"))
        self.assertEqual(reason(b'{"n": -' + b"9" * MAX_INTEGER_DIGITS + b"}"), "")

    @given(json_values)
    def test_agreesWithJsonLoads(self, value):
        body = json.dumps(value).encode()
        self.assertEqual(reason(body) == "", isinstance(json.loads(body), dict))


def loadsReason(body: bytes) -> str:
    """
    What the check said when it called C{json.loads} with its hooks on
    every body (before the reactor thread's decoder was made once).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"Body is not valid UTF-8: {e.reason} at byte {e.start}"
    try:
        value = json.loads(
            text, object_pairs_hook=jsonbody._object, parse_int=jsonbody._integer,
            parse_float=jsonbody._float, parse_constant=jsonbody._constant,
        )
    except jsonbody._BadValue as e:
        return str(e)
    except ValueError as e:
        return f"Body is not valid JSON: {e}"
    except RecursionError:
        return "Body is not usable JSON: nested too deeply"
    if value is not jsonbody._OBJECT:
        return f"Body must be a JSON object, not {jsonbody._kind(value)}"
    return ""


def reactorReason(body: bytes) -> str:
    """The reason given by the check made on the reactor thread (shared decoder)."""
    try:
        checkObjectBody(putRequest(body))
    except CommandError as e:
        return e.reason
    return ""


class SharedDecoderTests(unittest.TestCase):
    """
    The reactor thread's decoder, made once, accepts and refuses exactly
    what C{json.loads} did, in the same words.
    """

    def test_sameWords(self):
        for body in (
            b"{}", b'{"a": }', b"\xef\xbb\xbf{}", '\ufeff{"a": 1}'.encode(), b'{"a": NaN}',
            b'{"a": -Infinity}', b'{"a": 1} x', b"", b" ", b'{"a": 1, "a": 2}', b'{"a": "\\ud800"}',
            b'{"a": "\x01"}', b'{"n": ' + b"7" * 5000 + b"}", b"[" * 5000 + b"]" * 5000, b"[1]",
            b'{"a": 01}', b'{"a": 1.}', b'{"a": .5}', b'{"a": "\\x"}', b"\xff",
        ):
            self.assertEqual(reactorReason(body), loadsReason(body), body)
        self.assertIn("BOM", reactorReason("\ufeff{}".encode()))

    @given(st.binary(max_size=64))
    def test_sameWordsForAnyBytes(self, body):
        self.assertEqual(reactorReason(body), loadsReason(body))

    @given(json_values)
    def test_sameWordsForJsonAndItsTruncations(self, value):
        body = json.dumps(value).encode()
        for cut in (len(body), len(body) // 2, 1):
            self.assertEqual(reactorReason(body[:cut]), loadsReason(body[:cut]))


class WhereItRunsTests(unittest.TestCase):
    def setUp(self):
        self.threads = []
        original = jsonbody.checkObject

        def recording(body, *decoder):
            self.threads.append(threading.current_thread())
            return original(body, *decoder)

        self.patch(jsonbody, "checkObject", recording)

    def test_smallBodyInline(self):
        self.assertIsNone(checkObjectBody(putRequest(b'{"a": "' + b"x" * (INLINE_LIMIT - 20) + b'"}')))
        self.assertEqual(self.threads, [threading.current_thread()])

    @inlineCallbacks
    def test_largeBodyInAThread(self):
        body = json.dumps({"a": ["x" * 100] * 2000}).encode()
        self.assertGreater(len(body), INLINE_LIMIT)
        yield checkObjectBody(putRequest(body))
        self.assertEqual(len(self.threads), 1)
        self.assertIsNot(self.threads[0], threading.main_thread())

    @inlineCallbacks
    def test_largeBadBodyFails(self):
        body = b"[" + b"1, " * 40000 + b"2]"
        e = yield self.assertFailure(checkObjectBody(putRequest(body)), CommandError)
        self.assertEqual(e.reason, "Body must be a JSON object, not an array")

    def test_noBody(self):
        request = wire.parseHead(b"PUT a\r\nSequence: 1")
        e = self.assertRaises(CommandError, checkObjectBody, request)
        self.assertIn("PUT needs a body", e.reason)


class LargePutEndToEndTests(unittest.TestCase):
    """A large PUT through the real server protocol and a real SQLite store."""

    def setUp(self):
        from tests.support import startStoreServer

        return startStoreServer(self)

    @inlineCallbacks
    def exchange(self, conn, data, count):
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        conn.send(data)
        frames = conn.frames()
        for _ in range(2000):
            if len(frames) >= count:
                break
            yield deferLater(reactor, 0.005)
            conn.flush()
            frames += conn.frames()
        return frames

    @inlineCallbacks
    def test_largePuts(self):
        from tests.support import connectInMemory, request

        conn = connectInMemory(self.factory)
        good = json.dumps({"rows": [{"n": i, "s": "x" * 50} for i in range(3000)]}).encode()
        bad = good[:-1] + b"]"
        self.assertGreater(len(bad), INLINE_LIMIT)
        frames = yield self.exchange(
            conn, request("PUT", "big/1", sequence="good", body=good)
            + request("PUT", "big/2", sequence="bad", body=bad)
            + request("PING", sequence="ping"), 3,
        )
        bySequence = {f.sequence: f for f in frames}
        self.assertEqual(json.loads(bySequence["good"].body), {"Id": "big/1", "Etag": 1})
        self.assertEqual(bySequence["bad"].kind, "ERR")
        self.assertTrue(bySequence["bad"].reason.startswith("Body is not valid JSON"))
        found = yield self.store.get(["big/1", "big/2"])
        self.assertEqual([d and d.body for d in found], [good, None])
