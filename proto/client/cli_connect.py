"""
From C{proto-cli}'s options to a connection (L{proto.client.cli}): the
server's address, how its certificate is trusted (a pinned thumbprint by
default, the one in the data directory, or a CA: C{shared/PROTOCOL.md},
section 2), and the client certificate to present.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from proto import datadir
from proto.client.blocking import BlockingClient
from proto.client.cli_options import UsageError
from proto.client.tlsconfig import Pin, pinForCertificateFile

def parseAddress(options: argparse.Namespace) -> tuple[str, int]:
    """The server's host and port from --connect, or --host and --port."""
    host, port = options.host or "localhost", options.port or datadir.DEFAULT_PORT
    if options.connect:
        text = re.sub(r"^tcp6?:", "", options.connect)
        match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)|([^:\[\]]+)", text)
        if not match:
            raise UsageError(f"--connect {options.connect!r}: expected HOST:PORT or [IPv6]:PORT")
        if match.group(1):
            host, port = match.group(1), int(match.group(2))
        elif match.group(3):
            host, port = match.group(3), int(match.group(4))
        else:
            host = match.group(5)
    return host, port


def verification(options: argparse.Namespace) -> dict[str, Any]:
    """The BlockingClient keyword arguments that say how to trust the server."""
    if options.pin and options.ca:
        raise UsageError("give --pin or --ca, not both")
    if options.ca:
        return {"caFile": options.ca, "serverName": options.servername}
    try:
        if options.pin:
            return {"pin": Pin(options.pin)}
        serverCert = os.path.join(options.data_dir, datadir.SERVER_CERT)
        if not os.path.exists(serverCert):
            raise UsageError(
                f"cannot verify the server: no {serverCert} to pin; "
                "give --pin THUMBPRINT or --ca FILE (or --data-dir)"
            )
        return {"pin": pinForCertificateFile(serverCert)}
    except ValueError as e:
        raise UsageError(str(e)) from None


def openClient(options: argparse.Namespace) -> BlockingClient:
    host, port = parseAddress(options)
    certPath = options.cert or os.path.join(options.data_dir, datadir.CLIENT_CERT)
    keyPath = options.key or os.path.join(options.data_dir, datadir.CLIENT_KEY)
    trust = verification(options)
    try:
        return BlockingClient(
            host, port, certPath=certPath, keyPath=keyPath,
            connectTimeout=options.connect_timeout, **trust,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
