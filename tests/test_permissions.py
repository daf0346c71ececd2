"""
Permissions (PROTOCOL.md section 9): the allow-list line, the level and
prefix check of every command, Include and WATCH filtering, WHOAMI, and
changed rights applied to live connections.

The end-to-end tests run the real server in process on 127.0.0.1 with
real TLS, a real SQLite store and the project's Twisted client, one
certificate per level.
"""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from proto import certs, datadir
from proto.admission import AllowList, AllowListError
from proto.client import ServerError
from proto.commands.base import CommandRegistry, Result
from proto.hub import ChangeHub
from proto.permissions import (
    ADMIN,
    READ,
    WRITE,
    Grant,
    GrantSyntaxError,
    forbidden,
    parseGrantWords,
)
from proto.server import defaultRegistry
from proto.store import SQLiteStore
from tests import support
from tests.test_client import ClientTestMixin, waitUntil

SHA1 = "90" * 20


class LineFormatTests(unittest.SynchronousTestCase):
    """The allow-list line of section 9."""

    def entry(self, line: str) -> Grant:
        return AllowList.parse(line).entries[SHA1]

    def test_noAttributes(self):
        """No C{can=} is C{write}; no C{prefix=} is every id."""
        grant = self.entry(f"{SHA1} billing service")
        self.assertEqual((grant.name, grant.level, grant.prefixes), ("billing service", WRITE, None))

    def test_attributesAnywhere(self):
        """Attributes may come anywhere after the thumbprint; the rest is the name."""
        for line in (
            f"{SHA1} can=read reporting prefix=orders/,Invoices/ job",
            f"{SHA1} reporting\tjob prefix=orders/,Invoices/ can=READ",
            f"{SHA1} prefix=orders/,Invoices/ can=read   reporting   job # note",
        ):
            grant = self.entry(line)
            self.assertEqual(grant.name, "reporting job", line)
            self.assertEqual(grant.level, READ)
            self.assertEqual(grant.prefixes, ("orders/", "Invoices/"))

    def test_noName(self):
        grant = self.entry(f"{SHA1} can=admin")
        self.assertEqual((grant.name, grant.level), ("", ADMIN))

    def test_errorsNameTheLine(self):
        for bad, words in (
            ("can=root", "not a level"),
            ("can=read can=write", "twice"),
            ("colour=blue", "unknown attribute"),
            ("prefix=", "empty prefix"),
            ("prefix=a,,b", "empty prefix"),
            ("can=", "not a level"),
        ):
            e = self.assertRaises(AllowListError, AllowList.parse, f"# c\n{SHA1} x {bad}\n")
            self.assertIn("line 2", str(e))
            self.assertIn(words, str(e))

    def test_approveArguments(self):
        """APPROVE uses the same words."""
        self.assertEqual(parseGrantWords(["a", "can=read", "b"]), Grant("a b", READ))
        self.assertRaises(GrantSyntaxError, parseGrantWords, ["can=everything"])

    def test_firstStartClientIsAdmin(self):
        """The certificate made on first start is listed with can=admin."""
        path = self.mktemp()
        report = datadir.bootstrap(path)
        with open(datadir.path(path, datadir.ALLOWLIST)) as f:
            allow = AllowList.parse(f.read())
        self.assertEqual(allow.entries[report.clientSHA1].level, ADMIN)


_word = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="=#,\x85\x1c\x1d\x1e\x1f\t\n\r\x0b\x0c"),
    min_size=1, max_size=12,
)


class LineFormatPropertyTests(unittest.SynchronousTestCase):
    @given(
        name=st.lists(_word, max_size=4),
        level=st.sampled_from([None, "read", "write", "admin", "READ"]),
        prefixes=st.none() | st.lists(_word, min_size=1, max_size=3),
        data=st.data(),
    )
    def test_attributesAnywhere(self, name, level, prefixes, data):
        """Wherever the attributes go, the same grant; the name keeps its order."""
        attributes = ([f"can={level}"] if level else []) + (["prefix=" + ",".join(prefixes)] if prefixes else [])
        words = list(name)
        for attribute in attributes:
            words.insert(data.draw(st.integers(0, len(words))), attribute)
        grant = AllowList.parse(SHA1 + " " + " ".join(words)).entries[SHA1]
        self.assertEqual(grant.name, " ".join(name))
        self.assertEqual(grant.level, (level or "write").lower())
        self.assertEqual(grant.prefixes, tuple(prefixes) if prefixes else None)


class GrantTests(unittest.SynchronousTestCase):
    def test_prefixesIgnoreCase(self):
        grant = Grant("x", READ, ("Orders/",))
        self.assertTrue(grant.allowsId("orders/1"))
        self.assertTrue(grant.allowsId("ORDERS/"))
        self.assertFalse(grant.allowsId("orders"))
        self.assertFalse(grant.allowsId("invoices/1"))

    def test_refusal(self):
        grant = Grant("bob", WRITE, ("a/",))
        self.assertIsNone(grant.refusal("PUT", 2, ["a/1"], "bob"))
        self.assertEqual(grant.refusal("STATS", 3, [], "bob"), "Forbidden: bob may not STATS")
        self.assertEqual(grant.refusal("GET", 1, ["a/1", "b/2"], "bob"), "Forbidden: bob may not GET b/2")
        self.assertEqual(forbidden("c", "PUT", "x"), "Forbidden: c may not PUT x")


# -- end to end ------------------------------------------------------------------------


def grantsFile(**certificates: tuple[certs.Minted, str]) -> AllowList:
    """An allow-list: name -> (certificate, attributes)."""
    return AllowList.parse(
        "".join(
            datadir.allowlistLine(cert.certificate, name, attributes)
            for name, (cert, attributes) in certificates.items()
        )
    )


class Minted:
    """Certificates for these tests, minted once."""

    _all: dict[str, certs.Minted] = {}

    @classmethod
    def get(cls, name: str) -> certs.Minted:
        if name not in cls._all:
            cls._all[name] = certs.mint(name)
        return cls._all[name]


def testRegistry() -> CommandRegistry:
    """The server's commands plus one admin-only command."""
    extra = CommandRegistry()
    extra.add("SECRET", lambda ctx, request: Result(b"secret"), level=ADMIN)
    return defaultRegistry().merged(extra)


class ServerMixin(ClientTestMixin):
    """A real server with a real store; clients by level."""

    @defer.inlineCallbacks
    def startServer(self, allowList: AllowList):
        self.hub = ChangeHub()
        self.store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"), hub=self.hub, reactor=reactor)
        yield self.store.start()
        self.addCleanup(self.store.close)
        self.current = allowList
        self.factory = support.GNPServerFactory(
            support.ServerConfig(), lambda: self.current, registry=testRegistry(),
            store=self.store, hub=self.hub, clock=reactor,
        )
        self.port = yield self.listen(self.factory, lambda: self.factory.connections)

    def changeAllowList(self, allowList: AllowList) -> None:
        self.current = allowList
        self.factory.allowListChanged(allowList)

    def client(self, name: str):
        return self.connect(self.port, self.tls(Minted.get(name)))


#: Each command with arguments, and the lowest level that may run it.
MATRIX = [
    (("PING",), "any"),
    (("ECHO", "hi"), "any"),
    (("SLEEP", "0"), "any"),
    (("REMIND", "60", "later"), "any"),
    (("WHOAMI",), "any"),
    (("GET", "orders/1"), READ),
    (("WATCH", "orders/"), READ),
    (("PUT", "orders/1"), WRITE),
    (("DELETE", "orders/1"), WRITE),
    (("SECRET",), ADMIN),
    (("QUIT",), "any"),
]
RANKS = {"any": 0, READ: 1, WRITE: 2, ADMIN: 3}


class LevelTests(ServerMixin, unittest.TestCase):
    """Every level against every command."""

    @defer.inlineCallbacks
    def test_everyLevelTimesEveryCommand(self):
        yield self.startServer(
            grantsFile(
                reader=(Minted.get("reader"), "can=read"),
                writer=(Minted.get("writer"), ""),
                boss=(Minted.get("boss"), "can=admin"),
            )
        )
        for name, level in (("reader", READ), ("writer", WRITE), ("boss", ADMIN)):
            client = yield self.client(name)
            for command, needed in MATRIX:
                body = b"{}" if command[0] == "PUT" else None
                d = client.request(*command, body=body, onPush=lambda push: None)
                if RANKS[needed] <= RANKS[level]:
                    reply = yield d
                    self.assertEqual(reply.status, "OK", (name, command))
                else:
                    error = yield self.assertFailure(d, ServerError)
                    expected = forbidden(name, command[0], command[1] if len(command) > 1 else None)
                    self.assertEqual(error.reason, expected)
            yield client.whenClosed()  # the last command was QUIT

    @defer.inlineCallbacks
    def test_everyRegisteredCommandAboveTheLevelIsForbidden(self):
        """
        Whatever commands the server has (the built-ins, and any added
        later), a certificate below a command's level gets Forbidden and
        the command never runs.
        """
        yield self.startServer(
            grantsFile(
                reader=(Minted.get("reader"), "can=read"),
                writer=(Minted.get("writer"), ""),
            )
        )
        commands = self.factory.registry.commands
        self.assertIn("APPROVE", commands)
        checked = 0
        for name, level in (("reader", READ), ("writer", WRITE)):
            client = yield self.client(name)
            for command in commands.values():
                if RANKS[command.level] <= RANKS[level]:
                    continue
                error = yield self.assertFailure(client.request(command.name, "x/1"), ServerError)
                self.assertTrue(
                    error.reason.startswith(f"Forbidden: {name} may not {command.name}"), error.reason
                )
                checked += 1
        self.assertGreaterEqual(checked, 7)  # PUT, DELETE, PENDING, APPROVE, REVOKE, SECRET...
        # Nothing was written by the refused PUT/DELETE.
        self.assertEqual((yield self.store.get(["x/1"])), [None])

    @defer.inlineCallbacks
    def test_forbiddenKeepsTheConnection(self):
        yield self.startServer(grantsFile(reader=(Minted.get("reader"), "can=read")))
        client = yield self.client("reader")
        error = yield self.assertFailure(client.put("a", {}), ServerError)
        self.assertEqual(error.reason, "Forbidden: reader may not PUT a")
        self.assertEqual((yield client.ping()).body, b"PONG")

    @defer.inlineCallbacks
    def test_cnWhenNoName(self):
        """Without a name on the line, the message names the certificate's CN."""
        cert = Minted.get("nameless")
        yield self.startServer(
            AllowList.parse(f"{certs.sha1Thumbprint(cert.certificate)} can=read\n")
        )
        client = yield self.client("nameless")
        error = yield self.assertFailure(client.delete("x", "y"), ServerError)
        self.assertEqual(error.reason, "Forbidden: nameless may not DELETE x")
        who = (yield client.whoami()).json()
        self.assertEqual((who["Name"], who["CN"], who["Can"]), ("", "nameless", "read"))

    @defer.inlineCallbacks
    def test_whoami(self):
        cert = Minted.get("reader")
        yield self.startServer(grantsFile(reporting=(cert, "can=read prefix=orders/,Invoices/")))
        client = yield self.client("reader")
        reply = yield client.request("WHOAMI")
        self.assertEqual(
            reply.json(),
            {
                "Sha1": certs.sha1Thumbprint(cert.certificate),
                "Sha256": certs.sha256Thumbprint(cert.certificate),
                "Name": "reporting",
                "CN": "reader",
                "NotBefore": cert.certificate.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "NotAfter": cert.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "Can": "read",
                "Prefixes": ["orders/", "Invoices/"],
            },
        )


class PrefixTests(ServerMixin, unittest.TestCase):
    """Prefixes with GET, Include, WATCH, PUT and DELETE."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        yield self.startServer(
            grantsFile(
                boss=(Minted.get("boss"), "can=admin"),
                orders=(Minted.get("writer"), "prefix=orders/,Shared/"),
            )
        )
        self.boss = yield self.client("boss")
        yield self.boss.put("orders/1", {"Customer": "customers/1", "Lines": [{"P": "shared/p1"}, {"P": "products/2"}]})
        yield self.boss.put("customers/1", {"Name": "Ann"})
        yield self.boss.put("shared/p1", {"Name": "Tea"})
        yield self.boss.put("products/2", {"Name": "Gold"})
        self.writer = yield self.client("writer")

    @defer.inlineCallbacks
    def test_get(self):
        reply = yield self.writer.get("ORDERS/1")
        self.assertEqual(reply.json()["Results"][0]["Customer"], "customers/1")
        error = yield self.assertFailure(self.writer.get("orders/1", "customers/1"), ServerError)
        self.assertEqual(error.reason, "Forbidden: orders may not GET customers/1")

    @defer.inlineCallbacks
    def test_includeLeavesOutsideDocumentsOut(self):
        reply = yield self.writer.get("orders/1", include=["Customer", "Lines.P"])
        self.assertEqual(reply.json()["Includes"], {"shared/p1": {"Name": "Tea"}})
        full = yield self.boss.get("orders/1", include=["Customer", "Lines.P"])
        self.assertEqual(len(full.json()["Includes"]), 3)

    @defer.inlineCallbacks
    def test_putDelete(self):
        yield self.writer.put("Shared/new", {})
        error = yield self.assertFailure(self.writer.put("customers/2", {}), ServerError)
        self.assertEqual(error.reason, "Forbidden: orders may not PUT customers/2")
        error = yield self.assertFailure(self.writer.delete("shared/new", "products/2"), ServerError)
        self.assertEqual(error.reason, "Forbidden: orders may not DELETE products/2")
        # Nothing was deleted: the whole request was refused.
        reply = yield self.boss.get("shared/new", "products/2")
        self.assertNotIn(None, reply.json()["Results"])
        reply = yield self.writer.delete("shared/new")
        self.assertEqual(reply.json(), {"Deleted": 1})

    @defer.inlineCallbacks
    def test_watch(self):
        """A WATCH prefix must be inside the prefixes; pushes never leave them."""
        for outside in ("orders", "", "customers/", "o"):
            if not outside:
                continue
            error = yield self.assertFailure(self.writer.watch(outside, lambda p: None), ServerError)
            self.assertEqual(error.reason, f"Forbidden: orders may not WATCH {outside}")
        pushes = []
        yield self.writer.watch("orders/", pushes.append)
        yield self.boss.put("customers/9", {})
        yield self.boss.put("orders/9", {})
        yield waitUntil(lambda: pushes)
        yield self.writer.ping()
        self.assertEqual([p.json()["Id"] for p in pushes], ["orders/9"])


class LiveChangeTests(ServerMixin, unittest.TestCase):
    """A changed allow-list applies to live connections."""

    @defer.inlineCallbacks
    def test_narrowedOnNextRequest(self):
        writer = Minted.get("writer")
        yield self.startServer(grantsFile(svc=(writer, "")))
        client = yield self.client("writer")
        yield client.put("a/1", {})
        self.changeAllowList(grantsFile(svc=(writer, "can=read prefix=a/")))
        error = yield self.assertFailure(client.put("a/1", {}), ServerError)
        self.assertEqual(error.reason, "Forbidden: svc may not PUT a/1")
        yield client.get("a/1")
        yield self.assertFailure(client.get("b/1"), ServerError)
        self.changeAllowList(grantsFile(svc=(writer, "can=admin")))
        yield client.put("b/1", {})
        self.assertEqual((yield client.request("WHOAMI")).json()["Can"], "admin")

    @defer.inlineCallbacks
    def test_watchOutsideEndsWithDropped(self):
        writer, boss = Minted.get("writer"), Minted.get("boss")
        yield self.startServer(grantsFile(svc=(writer, ""), boss=(boss, "can=admin")))
        client = yield self.client("writer")
        inside, outside = [], []
        yield client.watch("a/", inside.append)
        yield client.watch("b/", outside.append)
        self.changeAllowList(grantsFile(svc=(writer, "can=read prefix=a/"), boss=(boss, "can=admin")))
        yield waitUntil(lambda: outside)
        dropped = outside[0].json()
        self.assertEqual(dropped["Type"], "Dropped")
        self.assertIn("may no longer WATCH b/", dropped["Reason"])
        other = yield self.client("boss")
        yield other.put("b/1", {})
        yield other.put("a/1", {})
        yield waitUntil(lambda: inside)
        yield client.ping()
        self.assertEqual(len(outside), 1)
        self.assertEqual([p.json()["Id"] for p in inside], ["a/1"])
        # The dropped watch is gone: UNWATCH of it is an error.
        yield self.assertFailure(client.unwatch(outside[0].sequence), ServerError)

    @defer.inlineCallbacks
    def test_removedIsCut(self):
        writer = Minted.get("writer")
        yield self.startServer(grantsFile(svc=(writer, "")))
        client = yield self.client("writer")
        self.changeAllowList(AllowList.parse(""))
        yield client.whenClosed()
