"""
C{proto-cli}'s certificate tools, which need no connection
(L{proto.client.cli}): C{--thumbprint FILE} prints what the allow-list and
C{--pin} take, and C{--mint NAME} makes a client certificate and key and
prints its allow-list line (C{shared/PROTOCOL.md}, section 2).
"""

from __future__ import annotations

import os
import re
import sys

from proto import certs, datadir
from proto.client.cli_options import UsageError
from proto.client.cli_output import EXIT_OK, EXIT_USAGE, fail

def showThumbprint(path: str) -> int:
    try:
        with open(path, "rb") as f:
            cert = certs.loadCertificates(f.read())[0]
    except (OSError, ValueError) as e:
        return fail(f"cannot load certificate {path}: {e}", EXIT_USAGE)
    print(f"SHA-1:   {certs.sha1Thumbprint(cert)}")
    print(f"SHA-256: {certs.sha256Thumbprint(cert)}")
    print(f"Subject: CN={certs.commonName(cert)}")
    print(f"Valid:   {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return EXIT_OK


def _writeNew(path: str, data: bytes, mode: int) -> None:
    """Write a new file (never an existing one) with the given permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def mintPaths(name: str, prefix: str | None) -> tuple[str, str]:
    """
    The certificate and key files C{--mint NAME [--out PREFIX]} writes
    (PREFIX a path prefix, or a directory when it ends with C{/} or is one).

    @raise UsageError: the directory cannot be made, or a file exists.
    """
    fileName = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "client"
    if prefix is None:
        prefix = fileName
    elif prefix.endswith(("/", os.sep)) or os.path.isdir(prefix):
        try:
            os.makedirs(prefix, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create the directory {prefix}: {e}") from None
        prefix = os.path.join(prefix, fileName)
    certPath, keyPath = prefix + ".pem", prefix + ".key"
    for path in (certPath, keyPath):
        if os.path.exists(path):
            raise UsageError(f"{path} exists; not overwriting it (use --out PREFIX)")
    return certPath, keyPath


def mintClient(name: str, prefix: str | None, days: int) -> int:
    """
    Mint a client certificate and key. The allow-list line goes to stdout
    (so it can be appended to the allow-list), everything else to stderr.
    """
    try:
        certPath, keyPath = mintPaths(name, prefix)
    except UsageError as e:
        return fail(str(e), EXIT_USAGE)
    minted = certs.mint(name, days=days)
    try:
        _writeNew(keyPath, minted.keyPEM, 0o600)
        _writeNew(certPath, minted.certPEM, 0o644)
    except OSError as e:
        return fail(f"cannot write the certificate: {e}", EXIT_USAGE)
    print(f"wrote {certPath} and {keyPath} (CN={name})", file=sys.stderr)
    print(f"SHA-256: {certs.sha256Thumbprint(minted.certificate)}", file=sys.stderr)
    print("admit it with this allow-list line:", file=sys.stderr, flush=True)
    sys.stdout.write(datadir.allowlistLine(minted.certificate, name))
    return EXIT_OK
