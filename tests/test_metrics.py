"""
Tests for C{/metrics} and C{/healthz} (L{proto.metrics}): real HTTP scrapes
of an in-process server that real TLS clients talk to.
"""

from __future__ import annotations

import datetime
import json
import os

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints, reactor
from twisted.logger import capturedLogs
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from proto import certs, datadir, metrics, stats
from proto.admission import AllowList
from proto.hub import ChangeHub
from proto.store import SQLiteStore
from tests import support
from tests.test_client import ClientTestMixin, waitUntil


def samples(text: str) -> dict:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class MetricsTestMixin(ClientTestMixin):
    @defer.inlineCallbacks
    def startServer(self, allowList=None, store="sqlite"):
        """A real server with a real store and its metrics site, both listening."""
        hub = ChangeHub()
        self.store = None
        if store == "sqlite":
            self.store = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"), hub=hub)
            yield self.store.start()
            self.addCleanup(self.store.close)
        self.factory = support.makeFactory(reactor, allowList=allowList, store=self.store, hub=hub)
        if self.store is not None:
            self.store.commitObserver = self.factory.stats.commitObserved
        self.port = yield self.listen(self.factory, lambda: self.factory.connections)
        mirror = metrics.PrometheusMirror(self.factory)
        site = metrics.metricsSite(mirror, self.factory, self.store, reactor)
        yield self.serve(site)

    @defer.inlineCallbacks
    def serve(self, site):
        """Serve C{site} on a loopback port and make the agent L{get} uses."""
        web = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(web.stopListening)
        self.webPort = web.getHost().port
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)
        self.addCleanup(pool.closeCachedConnections)

    @defer.inlineCallbacks
    def get(self, path: str):
        response = yield self.agent.request(
            b"GET", f"http://127.0.0.1:{self.webPort}{path}".encode()
        )
        body = yield readBody(response)
        return response.code, body.decode("utf-8")

    @defer.inlineCallbacks
    def scrape(self):
        code, text = yield self.get("/metrics")
        self.assertEqual(code, 200)
        return samples(text)


class MetricsTests(MetricsTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_valuesMoveAfterRequests(self):
        yield self.startServer()
        before = yield self.scrape()
        self.assertEqual(before[("proto_connections_open", ())], 0)
        client = yield self.connect(self.port)
        for _ in range(3):
            yield client.request("PING")
        yield client.request("PUT", "a/1", body=b'{"x": 1}')
        yield self.assertFailure(client.request("FROB"), Exception)
        after = yield self.scrape()
        self.assertEqual(after[("proto_requests_total", (("command", "PING"), ("outcome", "ok")))], 3)
        self.assertEqual(after[("proto_requests_total", (("command", "PUT"), ("outcome", "ok")))], 1)
        self.assertEqual(
            after[("proto_requests_total", (("command", "UNKNOWN"), ("outcome", "err")))], 1
        )
        self.assertEqual(after[("proto_request_seconds_count", (("command", "PING"),))], 3)
        self.assertEqual(
            after[("proto_request_seconds_bucket", (("command", "PING"), ("le", "+Inf")))], 3
        )
        self.assertEqual(after[("proto_connections_open", ())], 1)
        self.assertEqual(after[("proto_connections_admitted", ())], 1)
        self.assertEqual(after[("proto_admissions_total", ())], 1)
        self.assertEqual(after[("proto_tls_handshake_seconds_count", ())], 1)
        self.assertGreater(after[("proto_received_bytes_total", ())], 50)
        self.assertGreater(after[("proto_sent_bytes_total", ())], 50)
        self.assertEqual(after[("proto_store_commit_operations_count", ())], 1)
        self.assertEqual(after[("proto_store_commit_seconds_count", ())], 1)
        self.assertEqual(after[("proto_store_documents", ())], 1)
        self.assertEqual(after[("proto_store_etag", ())], 1)
        self.assertEqual(after[("proto_store_changelog_entries", ())], 1)
        # Counters only ever grow between scrapes, by what happened.
        yield client.request("PING")
        again = yield self.scrape()
        self.assertEqual(again[("proto_requests_total", (("command", "PING"), ("outcome", "ok")))], 4)

    @defer.inlineCallbacks
    def test_watchesAndPushes(self):
        yield self.startServer()
        pushes = []
        client = yield self.connect(self.port)
        yield client.request("WATCH", "w/", onPush=pushes.append)
        yield client.request("PUT", "w/1", body=b"{}")
        yield waitUntil(lambda: pushes)
        page = yield self.scrape()
        self.assertEqual(page[("proto_watches", ())], 1)
        self.assertGreaterEqual(page[("proto_pushes_total", ())], 1)

    @defer.inlineCallbacks
    def test_refusalsByReason(self):
        yield self.startServer()
        d = self.connect(self.port, tls=self.tls(self.creds.stranger))
        yield self.assertFailure(d, Exception)
        yield waitUntil(lambda: self.factory.stats.refused)
        page = yield self.scrape()
        self.assertEqual(page[("proto_connections_refused_total", (("reason", "not_allowed"),))], 1)

    @defer.inlineCallbacks
    def test_expiryGaugeNamesTheCertificate(self):
        creds = support.Credentials.get()
        line = datadir.allowlistLine(creds.client.certificate).split()[0]
        yield self.startServer(allowList=AllowList.parse(f"{line} billing service\n"))
        client = yield self.connect(self.port)
        yield client.request("PING")
        page = yield self.scrape()
        key = (
            "proto_client_certificate_expiry_seconds",
            (("name", "billing service"), ("sha1", certs.sha1Thumbprint(creds.client.certificate))),
        )
        self.assertIn(key, page)
        left = creds.client.certificate.not_valid_after_utc - datetime.datetime.now(
            datetime.timezone.utc
        )
        self.assertLess(abs(page[key] - left.total_seconds()), 60)


class HealthTests(MetricsTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_servingThenDraining(self):
        yield self.startServer()
        code, body = yield self.get("/healthz")
        self.assertEqual((code, body), (200, "serving\n"))
        self.factory.drainingReason = "Server shutting down"
        code, body = yield self.get("/healthz")
        self.assertEqual((code, body), (503, "draining\n"))
        page = yield self.scrape()
        self.assertEqual(page[("proto_draining", ())], 1)

    @defer.inlineCallbacks
    def test_storeFailing(self):
        yield self.startServer()
        yield self.store.close()
        with capturedLogs() as events:
            for _ in range(3):
                code, body = yield self.get("/healthz")
                self.assertEqual(code, 503)
                self.assertIn("store failing", body)
        # Logged when it starts failing, not at every probe.
        warned = [e for e in events if "store is failing" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)

    @defer.inlineCallbacks
    def test_supervisorSeesAWorkersStoreNotOpen(self):
        """
        A C{--workers} supervisor's /healthz: 503 while a worker's snapshot
        says its store is not open, 200 once every worker's is.
        """
        runDir = self.mktemp()
        blocker = self.mktemp()
        with open(blocker, "w"):
            pass
        unopened = SQLiteStore(os.path.join(blocker, "docs.sqlite3"))
        yield self.assertFailure(unopened.start(), OSError)
        worker = stats.SnapshotWriter(support.makeFactory(reactor, store=unopened), runDir)
        worker.write()
        prometheusDir = self.mktemp()
        os.makedirs(prometheusDir)
        site = metrics.metricsSite(
            None, None, None, reactor, draining=lambda: False, multiprocessDir=prometheusDir,
            storeTrouble=metrics.supervisorStoreTrouble(runDir),
        )
        yield self.serve(site)
        code, body = yield self.get("/healthz")
        self.assertEqual(code, 503)
        self.assertIn("store failing: the document store could not be opened at start", body)
        # The worker's own metrics say so too.
        mirror = metrics.PrometheusMirror(worker.factory)
        mirror.sync()
        self.assertEqual(samples(generate_latest(mirror.registry).decode())[
            ("proto_store_not_open", ())], 1)
        # The same worker with a store that opened.
        opened = SQLiteStore(os.path.join(self.mktemp(), "docs.sqlite3"))
        yield opened.start()
        self.addCleanup(opened.close)
        worker.factory = support.makeFactory(reactor, store=opened)
        worker.write()
        self.assertEqual((yield self.get("/healthz")), (200, "serving\n"))
        mirror = metrics.PrometheusMirror(worker.factory)
        mirror.sync()
        self.assertEqual(samples(generate_latest(mirror.registry).decode())[
            ("proto_store_not_open", ())], 0)


class MirrorTests(unittest.TestCase):
    def test_histogramCopyMatchesObserve(self):
        """
        Copying bucket counts into prometheus-client's Histogram gives the
        same text as observing each value (guards the private fields used).
        """
        values = [0.00005, 0.0003, 0.0003, 0.02, 3.0, 50.0]
        ours = stats.Histogram(stats.LATENCY_BOUNDS)
        reference = CollectorRegistry()
        expected = Histogram("h", "h", registry=reference, buckets=stats.LATENCY_BOUNDS)
        for value in values:
            ours.observe(value)
            expected.observe(value)
        factory = support.makeFactory(reactor)
        mirror = metrics.PrometheusMirror(factory)
        copiedRegistry = CollectorRegistry()
        copied = Histogram("h", "h", registry=copiedRegistry, buckets=stats.LATENCY_BOUNDS)
        mirror._histogram("h", copied, ours)
        mirror._histogram("h", copied, ours)  # a second copy adds nothing

        def strip(text):
            return {k: v for k, v in samples(text).items() if not k[0].endswith("_created")}

        self.assertEqual(
            strip(generate_latest(copiedRegistry).decode()),
            strip(generate_latest(reference).decode()),
        )


class DashboardTests(MetricsTestMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def test_everyMetricTheDashboardUsesIsExported(self):
        """
        Every proto_* name in misc/grafana-dashboard.json's queries is a
        sample name the server exports (a family, or a family with its
        type's suffix), read from a real scrape.
        """
        import re

        with open(os.path.join(support.ROOT, "misc", "grafana-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
        exprs += [v.get("query", "") for v in dashboard["templating"]["list"]
                  if isinstance(v.get("query"), str)]
        used = {name for expr in exprs for name in re.findall(r"\bproto_[a-z0-9_]+", expr)}
        self.assertGreater(len(used), 15)

        yield self.startServer()
        code, text = yield self.get("/metrics")
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }
        exported = set()
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
            if kind == "counter" and name.endswith("_total"):
                name = name[: -len("_total")]  # the text format names counters so
            exported.add(name)
            exported.update(name + suffix for suffix in suffixes.get(kind, ()))
        self.assertEqual(used - exported, set())
        self.assertEqual(set(metrics.METRIC_NAMES) - exported, set())
