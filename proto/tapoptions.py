"""
C{twistd proto}'s command line: the options, their checks and help
(L{Options}), and the L{proto.server.ServerConfig} they make.

Parsed before twistd imports the reactor: L{Options.postOptions} is the
one moment the speed levers' reactor can still be installed
(L{proto.speed.reactor.installIfFree}). The service those options build is
L{proto.tap.makeService}; C{proto.deploy} fills the same options from
environment variables, and a C{--workers} supervisor hands its workers
the raw arguments it kept (C{rawArgs}).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.python import usage

from proto import datadir, wire
from proto.listen import problemWith
from proto.server import DEFAULT_MAX_PENDING_BODIES, ServerConfig


def _positiveInt(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _nonNegativeFloat(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return number


def _workerCount(value: str) -> int:
    """C{--workers}: a positive number, or C{auto} (the CPUs we may use)."""
    if value.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number or 'auto'")
    return number


class Options(usage.Options):
    """Options of C{twistd proto}."""

    synopsis = "[options]"
    longdesc = (
        "Runs a GNP/1 server: TLS with client certificates, clients admitted by "
        "thumbprint. With no options it listens on port 4433 (IPv4 and IPv6) and "
        "keeps its certificate, the first client's certificate, the allow-list and "
        "the documents in ./proto-data, creating them on first start."
    )

    # [long name, short name or None, default, help (, coerce)]
    optParameters: list[list[Any]] = [
        ["data-dir", "d", datadir.DEFAULT_DATA_DIR,
         "Directory for server.pem, server.key, client.pem, client.key, allowlist.txt "
         "and the document store; created on first start."],
        ["cert", None, None,
         "Server certificate (PEM, chain after the leaf). With --key; then no "
         "certificate is generated."],
        ["key", None, None, "Server private key (PEM: PKCS#8 or traditional RSA/EC)."],
        ["allow", None, None,
         "Allow-list file: one SHA-1 or SHA-256 thumbprint per line, optional name "
         "after it, # comments. Re-read when it changes. [default: DATA_DIR/allowlist.txt]"],
        ["store", None, "sqlite",
         "Document store: 'sqlite' (a file in the data directory), 'sqlite:PATH', or "
         "'postgresql:CONNINFO' (extra 'postgres'; README: Scaling out)."],
        ["max-head", None, wire.DEFAULT_MAX_HEAD, "Largest request head, in bytes.", _positiveInt],
        ["max-body", None, wire.DEFAULT_MAX_BODY, "Largest request body, in bytes.", _positiveInt],
        ["handshake-timeout", None, 10.0,
         "Seconds a client has to finish the TLS handshake.", _nonNegativeFloat],
        ["head-timeout", None, 10.0,
         "Seconds a request head may take to arrive, from its first byte.", _nonNegativeFloat],
        ["body-timeout", None, 10.0,
         "Close a connection whose request body gets no byte for this many seconds.",
         _nonNegativeFloat],
        ["max-pending-bodies", None, DEFAULT_MAX_PENDING_BODIES,
         "Bytes that request bodies still arriving may hold, all connections "
         "together; past it a body is read and dropped and its request answered "
         "ERR Server busy.", _positiveInt],
        ["idle-timeout", None, 300.0,
         "Close a connection with nothing to do for this many seconds (0: never).",
         _nonNegativeFloat],
        ["max-connections", None, 10000, "Most admitted connections at once.", _positiveInt],
        ["retain-changes", None, 100_000,
         "Keep at least this many of the newest changes in the change log, which "
         "WATCH with Since replays (at least 1).", _positiveInt],
        ["workers", None, 1,
         "Worker processes sharing the port (SO_REUSEPORT) under a supervisor that "
         "restarts them; 'auto': one per CPU. See README, Scaling out.", _workerCount],
        ["worker-index", None, None, "Internal: set by the supervisor on its workers.", int],
        ["drain-timeout", None, 10.0,
         "On SIGTERM (and twistd's stop), seconds the requests in flight have to "
         "finish before they are cancelled; meanwhile new requests are answered "
         "'ERR Server is shutting down'.", _nonNegativeFloat],
        ["metrics", None, None,
         "Serve /metrics (Prometheus) and /healthz over HTTP on this Twisted endpoint "
         "description, e.g. tcp:9464:interface=127.0.0.1. [default: off]"],
    ]

    optFlags: list[list[str | None]] = [
        ["plain-transport", None,
         "Serve with plain Twisted transports: turn off the speed levers (write-through "
         "TCP writes, one TLS flush per reactor turn, TLS records with OpenSSL called "
         "directly, the proto-epoll reactor), to rule them out when debugging."],
    ]

    def parseOptions(self, options=None) -> None:
        # Kept so that a supervisor can give its workers the same options.
        self.rawArgs = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["commands"] = []

    def opt_commands(self, target: str) -> None:
        """Add the commands of this module's CommandRegistry (package.module, or package.module:attribute; default attribute 'registry'); repeatable. Installed packages can add theirs through the 'proto.commands' entry-point group instead (README: Commands of your own)."""
        self["commands"].append(target)

    def opt_listen(self, description: str) -> None:
        """Listen on this Twisted endpoint description, wrapped in the server's TLS; repeatable (tcp:4433:interface=127.0.0.1, tcp6:4433:interface=\\:\\:1). [default: port 4433 on IPv4 and IPv6]"""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if (self["cert"] is None) != (self["key"] is None):
            raise usage.UsageError("--cert and --key go together: give both or neither")
        if min(self["handshake-timeout"], self["head-timeout"], self["body-timeout"]) <= 0:
            raise usage.UsageError(
                "--handshake-timeout, --head-timeout and --body-timeout must be > 0"
            )
        if self["max-pending-bodies"] < self["max-body"]:
            raise usage.UsageError(
                "--max-pending-bodies must be at least --max-body "
                f"({self['max-body']}), or no body that size could ever be read"
            )
        for description in self["listen"]:
            problem = problemWith(description)
            if problem is not None:
                raise usage.UsageError(problem)
        if self["max-head"] < 64:
            raise usage.UsageError("--max-head must be at least 64 bytes")
        if not self["plain-transport"]:
            # twistd parses these options before it imports the reactor: the
            # one moment the speed levers' reactor can still be installed.
            from proto.speed import reactor as speedReactor

            speedReactor.installIfFree()

    def config(self) -> ServerConfig:
        return ServerConfig(
            maxHead=self["max-head"],
            maxBody=self["max-body"],
            handshakeTimeout=self["handshake-timeout"],
            headTimeout=self["head-timeout"],
            bodyTimeout=self["body-timeout"],
            maxPendingBodies=self["max-pending-bodies"],
            idleTimeout=self["idle-timeout"],
            maxConnections=self["max-connections"],
        )
