"""
Reloading the server's certificate and key without a restart (issue 10).

L{CertificateFiles} watches the certificate and key files: the server
checks them every second (L{CertificateFiles.check}) and on SIGHUP
(L{CertificateFiles.reload}, registered with L{proto.sighup}). When they
change, the pair is loaded and checked (the key must belong to the
certificate; L{proto.certs.loadCertificateAndKey}), then handed to
L{proto.tls.ServerTLS.replaceCertificate}: new connections get the new
certificate, connections already open keep theirs (a TLS connection's
certificate is fixed by its handshake). A file that cannot be read, or a
pair that does not match, keeps the old certificate in use, and the log
says why. Renewal tools that write the two files one after the other
therefore cause, at worst, one "does not match" line, then the reload
when the second file lands.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

from proto import certs


class CertificateFiles:
    """The server certificate and key files behind a L{proto.tls.ServerTLS}."""

    log = Logger()

    def __init__(self, creator, certPath: str, keyPath: str) -> None:
        self.creator = creator
        self.certPath = certPath
        self.keyPath = keyPath
        self._stamp = self._statStamp()

    def _statStamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        stamp: list[tuple[int, int, int] | None] = []
        for path in (self.certPath, self.keyPath):
            try:
                st = os.stat(path)
            except OSError:
                stamp.append(None)
            else:
                stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    def check(self) -> bool:
        """Reload if either file changed since the last look (polled)."""
        stamp = self._statStamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return self._load(why="the files changed")

    def reload(self) -> bool:
        """Reload now, changed or not (SIGHUP)."""
        self._stamp = self._statStamp()
        return self._load(why="SIGHUP")

    def _load(self, why: str) -> bool:
        """Load and swap in the pair; C{True} if the certificate changed."""
        old = self.creator.fingerprintSHA1
        try:
            chain, key = certs.loadCertificateAndKey(self.certPath, self.keyPath, "server")
            self.creator.replaceCertificate(chain, key)
        except ValueError as e:
            self.log.error(
                "Server certificate not reloaded ({why}), still serving sha1={sha1}: {reason}",
                why=why, sha1=old, reason=str(e), cert=self.certPath, key=self.keyPath,
                event="cert_reload_failed",
            )
            return False
        new = self.creator.fingerprintSHA1
        self.log.info(
            "Server certificate reloaded ({why}): {cert} sha1={sha1} (was {old}), "
            "valid until {notAfter}; new connections get it, open ones keep theirs",
            why=why, cert=self.certPath, sha1=new, old=old,
            notAfter=chain[0].not_valid_after_utc.isoformat(), event="cert_reload",
        )
        return new != old
