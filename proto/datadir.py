"""
The data directory: where the server keeps its certificate, the first
client's certificate, the allow-list and the document store.

Its file names are a contract (outside scripts and the README rely on
them): L{SERVER_CERT}, L{SERVER_KEY}, L{CLIENT_CERT}, L{CLIENT_KEY},
L{ALLOWLIST}. On first start L{bootstrap} creates what is missing so that
C{twistd -n proto} works with no options at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from proto import certs

DEFAULT_DATA_DIR = "proto-data"
DEFAULT_PORT = 4433

SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
ALLOWLIST = "allowlist.txt"

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class BootstrapReport:
    """What L{bootstrap} did, so the caller can tell the user."""

    dataDir: str
    createdServer: bool
    createdClient: bool
    clientSHA1: str | None


def path(dataDir: str, name: str) -> str:
    return os.path.join(dataDir, name)


def _writePrivate(filename: str, data: bytes) -> None:
    """Write a secret readable by its owner only, atomically."""
    tmp = filename + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, filename)


def _writePublic(filename: str, data: bytes) -> None:
    tmp = filename + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, filename)


def allowlistLine(cert, name: str | None = None, attributes: str = "") -> str:
    """
    The allow-list line that admits C{cert}: its SHA-1, a name, then
    C{attributes} if any (C{"can=admin"}, C{"can=read prefix=orders/"}:
    PROTOCOL.md section 9).
    """
    line = f"{certs.sha1Thumbprint(cert)} {name or certs.commonName(cert)}"
    return f"{line} {attributes}\n" if attributes else line + "\n"


def bootstrap(dataDir: str, makeServerCert: bool = True) -> BootstrapReport:
    """
    Create the data directory and whatever of its files is missing: a
    server certificate and key (ECDSA P-256, SAN localhost, 127.0.0.1,
    ::1), one client certificate and key, and an allow-list admitting that
    client. Existing files are never overwritten.

    @param makeServerCert: C{False} when the user brings their own
        certificate and key (then nothing is generated at all).
    """
    os.makedirs(dataDir, mode=0o700, exist_ok=True)
    report = BootstrapReport(dataDir, False, False, None)
    if not makeServerCert:
        return report

    if not (os.path.exists(path(dataDir, SERVER_CERT)) and os.path.exists(path(dataDir, SERVER_KEY))):
        server = certs.mint("proto server", server=True, altNames=SERVER_NAMES)
        _writePrivate(path(dataDir, SERVER_KEY), server.keyPEM)
        _writePublic(path(dataDir, SERVER_CERT), server.certPEM)
        report.createdServer = True

    clientCertPath = path(dataDir, CLIENT_CERT)
    if not (os.path.exists(clientCertPath) and os.path.exists(path(dataDir, CLIENT_KEY))):
        client = certs.mint("proto client")
        _writePrivate(path(dataDir, CLIENT_KEY), client.keyPEM)
        _writePublic(clientCertPath, client.certPEM)
        report.createdClient = True
        allow = path(dataDir, ALLOWLIST)
        # The first client is the operator's: it may do everything,
        # including the admin commands (section 9).
        line = allowlistLine(
            client.certificate, "proto client (created on first start)", "can=admin"
        )
        if os.path.exists(allow):
            with open(allow, "a", encoding="utf-8") as f:
                f.write(line)
        else:
            _writePublic(
                allow,
                (
                    "# GNP/1 allow-list: one SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint\n"
                    "# of a client certificate per line, an optional name after it, and\n"
                    "# optionally can=read|write|admin (default write) and\n"
                    "# prefix=P1,P2,... (the ids it may use; default all).\n"
                    "# ':' separators are ignored; edits apply without a restart.\n" + line
                ).encode("utf-8"),
            )
    with open(clientCertPath, "rb") as f:
        cert = certs.loadCertificates(f.read())[0]
    report.clientSHA1 = certs.sha1Thumbprint(cert)
    return report
