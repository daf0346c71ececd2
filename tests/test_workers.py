"""
C{--workers N}: a real C{twistd -n proto --workers 2} supervisor and its
worker processes on one port (L{proto.workers}).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.trial import unittest

from proto import workers
from tests.support import TWISTD, ROOT, BlockingConnection, freePort, request, startTwistd
from tests.test_twistd import waitFor

#: Connections opened to reach both workers: the kernel hashes each to one
#: of the two sockets, so all 20 on one has a chance of 2 in a million.
CONNECTIONS = 20


def workerPids(log: str) -> dict[str, list[int]]:
    """Every pid the supervisor logged for each worker, oldest first."""
    pids: dict[str, list[int]] = {}
    for name, pid in re.findall(r"Started (worker-\d+) \(pid (\d+)\)", log):
        pids.setdefault(name, []).append(int(pid))
    return pids


def processGone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie of ours is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


class WorkerOptionTests(unittest.TestCase):
    def test_workerCount(self):
        from proto.tap import _workerCount

        self.assertEqual(_workerCount("3"), 3)
        self.assertGreaterEqual(_workerCount("auto"), 1)
        self.assertRaises(ValueError, _workerCount, "0")

    def test_workersGetTheSameOptionsButNotTheSupervisors(self):
        args = workers.workerArguments(
            ["--workers", "2", "--max-head=256", "--metrics", "tcp:9464", "--listen", "tcp:1"], 1
        )
        tail = args[args.index("proto") + 1:]
        self.assertEqual(
            tail, ["--workers", "2", "--max-head=256", "--listen", "tcp:1", "--workers=1",
                   "--worker-index=1"],
        )

    def test_onlyTCPListeners(self):
        from twisted.internet import reactor

        self.assertRaises(ValueError, workers.reusePortEndpoint, reactor, "unix:/tmp/x.sock")
        endpoint = workers.reusePortEndpoint(reactor, "haproxy:tcp:4999:interface=127.0.0.1")
        self.assertEqual(endpoint._wrappedEndpoint.port, 4999)


class ParentWatchTests(unittest.TestCase):
    """
    L{workers.ParentWatch} on a real reactor of its own (not the global
    one), started the way twistd starts services: before the reactor runs.
    """

    def setUp(self):
        from twisted.internet.selectreactor import SelectReactor

        self.reactor = SelectReactor()
        self.addCleanup(self.reactor.disconnectAll)
        self.addCleanup(lambda: self.reactor.waker.connectionLost(None))
        previous = os.environ.get(workers.SUPERVISOR_PID)
        self.addCleanup(
            lambda: os.environ.pop(workers.SUPERVISOR_PID, None) if previous is None
            else os.environ.__setitem__(workers.SUPERVISOR_PID, previous)
        )

    def runWatched(self, supervisor: int, whenRunning=None, seconds: float = 10) -> bool:
        """
        Start a watch expecting C{supervisor}, then run the reactor for
        C{seconds} at most; whether it stopped sooner.
        """
        os.environ[workers.SUPERVISOR_PID] = str(supervisor)
        watch = workers.ParentWatch(self.reactor, interval=0.05)
        if whenRunning is None:
            watch.startService()
        else:
            self.reactor.callWhenRunning(whenRunning, watch)
        safety = self.reactor.callLater(seconds, self.reactor.stop)
        self.reactor.run(installSignalHandlers=False)
        sooner = safety.active()
        if sooner:
            safety.cancel()
        watch.stopService()
        return sooner

    def test_supervisorGoneBeforeTheReactorRuns(self):
        """
        The supervisor died while the worker started: the first check, made
        before the reactor runs, stops it once it runs (it used to raise,
        ending the loop: the worker served on, orphaned).
        """
        self.assertTrue(self.runWatched(os.getpid()))  # never our parent

    def test_supervisorPresent(self):
        checks = []
        self.patch(os, "getppid", lambda: checks.append(1) or os.getpid())
        self.assertFalse(self.runWatched(os.getpid(), seconds=0.5))
        self.assertGreater(len(checks), 5)

    def test_supervisorGoneWhileStopping(self):
        """A worker already stopping (SIGTERM, draining) just goes on stopping."""
        drained = defer.Deferred()
        self.reactor.addSystemEventTrigger("before", "shutdown", lambda: drained)

        def stopThenWatch(watch):
            self.reactor.stop()
            watch.startService()
            self.reactor.callLater(0.2, drained.callback, None)

        self.runWatched(os.getpid(), stopThenWatch)
        self.assertFalse(self.reactor.running)


class WorkersTests(unittest.TestCase):
    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        self.server = startTwistd(self.workdir, extraArgs=["--workers", "2", "--max-head", "256"])
        self.addCleanup(self.server.stop)
        # Both workers listen before we connect, or the first takes all.
        waitFor(lambda: self.server.log().count(f"starting on {self.server.port}") >= 2,
                seconds=30, what="both workers to listen")

    def connect(self) -> BlockingConnection:
        conn = BlockingConnection(self.server.port, self.server.dataDir.clientContext())
        self.addCleanup(conn.close)
        greeting = conn.next()
        self.assertTrue(greeting.ok, greeting)
        return conn

    def servedBy(self, conns: list[BlockingConnection]) -> dict[int, str]:
        """Which worker admitted each connection, from the supervisor's log."""
        ports = {conn.sock.getsockname()[1] for conn in conns}

        def found():
            seen = {
                int(port): worker
                for worker, port in re.findall(
                    r"\[(worker-\d+)\] \S+ Admitted 127\.0\.0\.1:(\d+)", self.server.log()
                )
            }
            return seen if ports <= set(seen) else None

        seen = waitFor(found, seconds=15, what="every admission in the log")
        return {port: seen[port] for port in ports}

    def test_connectionsReachBothWorkersWhichShareTheStore(self):
        conns = [self.connect() for _ in range(CONNECTIONS)]
        served = self.servedBy(conns)
        self.assertEqual(set(served.values()), {"worker-0", "worker-1"}, served)
        byWorker = {worker: conn for conn in conns
                    for worker in [served[conn.sock.getsockname()[1]]]}

        # Every connection, in either worker, watches; a PUT through one
        # reaches them all (the change log's doorbell crosses processes).
        for conn in conns:
            conn.send(request("WATCH", "shared/", sequence="w"))
            self.assertEqual(conn.next().kind, "OK")
        writer, reader = byWorker["worker-0"], byWorker["worker-1"]
        writer.send(request("PUT", "shared/1", sequence="p", body=b'{"by": 0}'))
        pushes = {}
        for conn in conns:
            frames = [conn.next()] + ([conn.next()] if conn is writer else [])
            [push] = [f for f in frames if f.sequence == "w"]  # and the writer's OK
            self.assertEqual(push.kind, "PUSH", push)
            pushes[conn] = json.loads(push.body)
        self.assertEqual({(p["Id"], p["Type"], p["Etag"]) for p in pushes.values()},
                         {("shared/1", "Put", 1)})

        # One store: a write through one worker is read through the other.
        reader.send(request("GET", "shared/1", sequence="r"))
        reply = reader.next()
        self.assertEqual(json.loads(reply.body)["Results"][0], {"by": 0})

        # The options apply in every worker (an oversized head is fatal).
        for conn in byWorker.values():
            conn.send(request("ECHO", "x" * 300, sequence="big"))
            self.assertIn("over the limit of 256 bytes", conn.next().reason)

    def test_killedWorkerIsReplacedAndThePortKeepsAnswering(self):
        pids = waitFor(lambda: (lambda p: p if len(p) == 2 else None)(workerPids(self.server.log())),
                       what="both worker pids")
        victim = pids["worker-0"][0]
        # Writes acknowledged by the victim survive it.
        conns = [self.connect() for _ in range(CONNECTIONS)]
        served = self.servedBy(conns)
        doomed = next(c for c in conns if served[c.sock.getsockname()[1]] == "worker-0")
        doomed.send(b"".join(
            request("PUT", f"k/{n}", sequence=str(n), body=b'{"n": %d}' % n) for n in range(20)
        ))
        self.assertEqual({doomed.next().kind for _ in range(20)}, {"OK"})
        os.kill(victim, signal.SIGKILL)
        waitFor(lambda: len(workerPids(self.server.log()).get("worker-0", [])) == 2,
                seconds=30, what="worker-0 to be replaced")
        self.assertTrue(waitFor(lambda: processGone(victim), what="the victim to be gone"))
        self.assertNotEqual(workerPids(self.server.log())["worker-0"][1], victim)
        self.assertIn("worker-0 exited", self.server.log())
        # The port answers throughout: every new connection is served,
        # and sees every acknowledged write.
        for _ in range(10):
            conn = self.connect()
            conn.send(request("GET", *[f"k/{n}" for n in range(20)], sequence="g"))
            reply = conn.next()  # (a head under this server's --max-head 256)
            self.assertEqual(reply.kind, "OK", reply)
            self.assertNotIn(None, json.loads(reply.body)["Results"])
            conn.close()

    def test_sigtermStopsEveryWorker(self):
        pids = waitFor(lambda: (lambda p: p if len(p) == 2 else None)(workerPids(self.server.log())),
                       what="both worker pids")
        # Requests in flight in both workers are answered before they exit.
        conns = [self.connect() for _ in range(CONNECTIONS)]
        served = self.servedBy(conns)
        busy = [next(c for c in conns if served[c.sock.getsockname()[1]] == worker)
                for worker in ("worker-0", "worker-1")]
        for conn in conns:
            if conn not in busy:
                conn.close()
        for conn in busy:
            conn.send(request("SLEEP", "1.5", sequence="s"))
        time.sleep(0.3)  # the SLEEPs are in flight
        self.server.process.send_signal(signal.SIGTERM)
        for conn in busy:
            reply = conn.next()
            self.assertEqual((reply.kind, reply.sequence), ("OK", "s"), reply)
            conn.close()  # (a client that stays would be waited for, up to --drain-timeout)
        # twistd ends by re-raising the signal that stopped it.
        self.assertEqual(self.server.process.wait(30), -signal.SIGTERM)
        self.assertIn("Server Shut Down", self.server.log().splitlines()[-1])
        for worker in pids.values():
            self.assertTrue(waitFor(lambda: processGone(worker[-1]), what="workers to exit"))
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.server.port), timeout=2).close()


    def test_workersStopWhenTheSupervisorIsKilled(self):
        pids = waitFor(lambda: (lambda p: p if len(p) == 2 else None)(workerPids(self.server.log())),
                       what="both worker pids")
        self.server.process.kill()
        self.server.process.wait(10)
        for worker in pids.values():
            self.assertTrue(waitFor(lambda: processGone(worker[-1]), seconds=15,
                                    what="orphaned workers to stop"))


class SupervisorStartTests(unittest.TestCase):
    def test_portInUseIsReportedBeforeAnyWorkerStarts(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*TWISTD, "--pidfile=", "-n", "proto", "--workers", "2",
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=workdir, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
            timeout=60, stdin=subprocess.DEVNULL,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}", output)
        self.assertNotIn("Started worker", output)
