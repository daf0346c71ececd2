"""
What a starting server tells its user (log lines, every start): how to
connect (the first-start files, an C{openssl s_client} line and a
C{proto-cli} line) and which transport serves (the speed levers on, or
plain Twisted), so a debugging user knows what ran.

Called by L{proto.tap.makeService}, and by a C{--workers} supervisor
(L{proto.workers}) whose workers stay quiet about it.
"""

from __future__ import annotations

import os
import re

from twisted.logger import Logger

from proto import datadir

#: The lines keep the namespace they had when this lived in proto.tap
#: (what operators' log filters know).
log = Logger(namespace="proto.tap")


def _announce(options, report, certPath: str, keyPath: str, allowPath: str) -> None:
    """Tell the user how to connect, every start (it is what they need first)."""
    dataDir = options["data-dir"]
    if report.createdServer:
        log.info("Created server certificate {cert} and key {key}", cert=certPath, key=keyPath)
    if report.createdClient:
        log.info(
            "Created client certificate {cert} (thumbprint {sha1}) and added it to {allow}",
            cert=datadir.path(dataDir, datadir.CLIENT_CERT), sha1=report.clientSHA1,
            allow=allowPath,
        )
    clientCert = datadir.path(dataDir, datadir.CLIENT_CERT)
    port = _firstPort(options["listen"])
    if os.path.exists(clientCert) and options["cert"] is None and port is not None:
        log.info(
            "Connect by hand: openssl s_client -connect localhost:{port} -crlf -quiet "
            "-cert {cert} -key {key} -CAfile {ca} -verify_hostname localhost",
            port=port, cert=clientCert,
            key=datadir.path(dataDir, datadir.CLIENT_KEY), ca=certPath,
        )
        log.info(
            "Or with the CLI: proto-cli --data-dir {dataDir} --port {port} PING",
            dataDir=dataDir, port=port,
        )


def _firstPort(descriptions: list[str]) -> int | None:
    """The TCP port a local user reaches first, or C{None} if not TCP."""
    if not descriptions:
        return datadir.DEFAULT_PORT
    match = re.match(r"(?:tcp6?:)?(?:port=)?(\d+)(?::|$)", descriptions[0])
    return int(match.group(1)) if match else None


def _announceTransport(levers: bool) -> None:
    """Say which transport serves, so a debugging user knows what ran."""
    from proto.speed import reactor as speedReactor

    if not levers:
        log.info("Transport: plain Twisted (--plain-transport)")
    elif speedReactor.isInstalled():
        log.info(
            "Transport: speed levers on (write-through, per-turn TLS flush, "
            "direct TLS records, proto-epoll reactor)"
        )
    else:
        from twisted.internet import reactor

        log.info(
            "Transport: write-through and per-turn TLS flush on; reactor lever off: "
            "{reactor} was installed first (use twistd --reactor {name})",
            reactor=type(reactor).__name__, name=speedReactor.NAME,
        )
