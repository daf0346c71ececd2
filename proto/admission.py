"""
Admission: who may talk to the server (PROTOCOL.md section 2).

A client is admitted by the thumbprint of its certificate, found in an
allow-list file, and only while the certificate is within its validity
dates. The check runs after the TLS handshake (see L{proto.tls}) so that a
refused client can be told in words why.

The allow-list file has one thumbprint per line: SHA-1 (40 hex digits) or
SHA-256 (64 hex digits) of the DER certificate, any case, C{:} separators
allowed, then an optional name and the attributes C{can=LEVEL} and
C{prefix=P1,P2,...} (section 9, L{proto.permissions}), separated by spaces
or tabs, and C{#} comments; a UTF-8 byte-order mark is ignored.
L{AllowListFile} re-reads it when it changes (once the change has settled,
so a file caught half-written is not applied), and keeps the last good
list when the new one is unreadable or malformed.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Callable

from cryptography import x509
from twisted.logger import Logger

from proto import certs
from proto.permissions import Grant, GrantSyntaxError, parseGrantWords

_HEX = re.compile(r"[0-9a-f]+\Z")
_NOTHING = object()


class AllowListError(ValueError):
    """The allow-list text is malformed; the message names the line."""


@dataclass(frozen=True)
class AllowList:
    """
    An immutable map of admitted thumbprints to what each may do.

    @ivar entries: normalised thumbprint (lower-case hex, no colons) to its
        L{Grant} (name, level, prefixes: PROTOCOL.md section 9), from the
        operator's file.
    @ivar extra: the same for approvals and enrolments kept in the store;
        an entry of the file wins over one of these.
    """

    entries: dict[str, Grant]
    extra: dict[str, Grant] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "AllowList":
        """
        Parse allow-list text: per line C{thumbprint [name ...] [can=LEVEL]
        [prefix=P1,P2,...]} (section 9), C{#} comments.

        @raise AllowListError: naming the first bad line.
        """
        entries: dict[str, Grant] = {}
        if text.startswith("\ufeff"):
            text = text[1:]  # a byte-order mark, as some editors write
        for number, raw in enumerate(text.splitlines(), 1):
            # Any white space (spaces, tabs) separates the words.
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            digest = normaliseThumbprint(words[0])
            if digest is None:
                raise AllowListError(
                    f"line {number}: {words[0][:80]!r} is not a SHA-1 (40 hex digits) "
                    "or SHA-256 (64 hex digits) thumbprint"
                )
            try:
                entries[digest] = parseGrantWords(words[1:])
            except GrantSyntaxError as e:
                raise AllowListError(f"line {number}: {e}") from None
        return cls(entries)

    @property
    def names(self) -> dict[str, str]:
        """Thumbprint to name (possibly empty)."""
        return {digest: grant.name for digest, grant in self.entries.items()}

    def __len__(self) -> int:
        return len(self.entries) + len(self.extra)

    def admits(self, sha1: str, sha256: str) -> bool:
        """Is a certificate with these thumbprints on the list?"""
        return self.grantFor(sha1, sha256) is not None

    def grantFor(self, sha1: str, sha256: str) -> Grant | None:
        """What a certificate with these thumbprints may do; C{None}: not listed."""
        for table in (self.entries, self.extra):
            grant = table.get(sha256) or table.get(sha1)
            if grant is not None:
                return grant
        return None

    def withExtra(self, extra: dict[str, Grant]) -> "AllowList":
        """This file's entries plus C{extra} (approvals and enrolments)."""
        return AllowList(self.entries, dict(extra))


def normaliseThumbprint(text: str) -> str | None:
    """
    Lower-case hex without separators, or C{None} if C{text} is not a
    SHA-1 or SHA-256 thumbprint.
    """
    digest = text.replace(":", "").strip().lower()
    if len(digest) in (40, 64) and _HEX.match(digest):
        return digest
    return None


@dataclass(frozen=True)
class Identity:
    """
    What the server needs of a client certificate: its thumbprints and
    common name (for the allow-list and the logs) and its validity dates.
    """

    sha1: str
    sha256: str
    commonName: str
    notBefore: datetime.datetime
    notAfter: datetime.datetime
    #: The validity dates as POSIX seconds, for L{admit}'s check without a
    #: C{datetime} per handshake.
    validFrom: float = field(init=False, repr=False, compare=False)
    validUntil: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "validFrom", self.notBefore.timestamp())
        object.__setattr__(self, "validUntil", self.notAfter.timestamp())


@functools.lru_cache(maxsize=1024)
def identityOfDER(der: bytes) -> Identity:
    """
    The L{Identity} of a DER certificate. Cached: parsing and hashing the
    certificate cost more than the rest of admission, and clients come back
    with the same certificate (the cache is bounded, so many distinct
    certificates only evict each other).

    @raise ValueError: if C{der} is not a certificate.
    """
    cert = x509.load_der_x509_certificate(der)
    return Identity(
        hashlib.sha1(der).hexdigest(),
        hashlib.sha256(der).hexdigest(),
        certs.commonName(cert),
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )


#: SHA-256 digest of a certificate's DER to its identity (L{identityOf}).
_bySHA256: dict[bytes, Identity] = {}
_MAX_IDENTITIES = 1024


def identityOf(sha256: bytes, der: Callable[[], bytes | None]) -> Identity:
    """
    The L{Identity} of the certificate whose DER has this SHA-256 digest;
    C{der()} gives the DER the first time a certificate is seen. Keyed by
    the full SHA-256 (never by SHA-1 alone, whose collisions can be made),
    so two certificates never share an entry. Bounded: past
    L{_MAX_IDENTITIES} certificates the table starts again.

    @raise ValueError: if C{der()} is not a certificate, or not the one
        with that digest.
    """
    who = _bySHA256.get(sha256)
    if who is None:
        encoded = der()
        if encoded is None:
            raise ValueError("no certificate")
        who = identityOfDER(encoded)
        if who.sha256 != sha256.hex():
            raise ValueError("the certificate does not have the digest given")
        if len(_bySHA256) >= _MAX_IDENTITIES:
            _bySHA256.clear()
        _bySHA256[sha256] = who
    return who


def _utc(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def judge(who: Identity | None, allowList: AllowList, now: datetime.datetime) -> str | None:
    """
    Decide admission, in the order of PROTOCOL.md section 2.

    @param who: the client certificate's identity, C{None} if it sent none.
    @return: C{None} to admit, else the reason to send after C{ERR}.
    """
    if who is None:
        return (
            "No client certificate was provided: connect with a certificate "
            "whose thumbprint is on the server's allow-list"
        )
    if not allowList.admits(who.sha1, who.sha256):
        return (
            f"Client certificate {who.sha1} (CN={who.commonName!r}) is not on the "
            "allow-list: add its thumbprint to the server's allow-list file"
        )
    if now < who.notBefore:
        return (
            f"Client certificate {who.sha1} is not yet valid: "
            f"valid from {_utc(who.notBefore)}"
        )
    if now > who.notAfter:
        return (
            f"Client certificate {who.sha1} expired on "
            f"{_utc(who.notAfter)}"
        )
    return None


def admit(who: Identity | None, allowList: AllowList, now: float) -> tuple[Grant | None, str | None]:
    """
    L{judge} and the admitted certificate's grant in one look-up (the
    handshake's path): C{(grant, None)} to admit, C{(None, reason)} to
    refuse, with the same reasons in the same order as L{judge}.

    @param now: the time, POSIX seconds.
    """
    if who is not None:
        grant = allowList.grantFor(who.sha1, who.sha256)
        if grant is not None and who.validFrom <= now <= who.validUntil:
            return grant, None
    reason = judge(who, allowList, datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    if reason is None:
        # On a validity date's edge, to the microsecond: judge() decides.
        assert who is not None
        return allowList.grantFor(who.sha1, who.sha256), None
    return None, reason


class AllowListFile:
    """
    An allow-list kept in a file, re-read when the file changes.

    Call L{check} periodically (the server does, every second, from a
    C{TimerService}); C{onChange(newList)} is called after each successful
    reload that changed the list.

    A change is applied only once the file has stayed the same for one
    more check: an editor that truncates the file and then writes it can
    be caught in between, and a half-written list would revoke the clients
    missing from it (issue 12). L{reload} (on SIGHUP) applies the file at
    once. The safe way to edit is still to replace the file atomically
    (write a new file, then rename it over the old one).
    """

    log = Logger()

    def __init__(self, path: str, onChange: Callable[[AllowList], None] | None = None) -> None:
        self.path = path
        self.onChange = onChange
        self._stamp: tuple | None = None
        #: The changed stamp seen at the last check, waiting to settle.
        self._unsettled: object = _NOTHING
        self.current = AllowList({})
        self.current = self._read()
        self._stamp = self._statStamp()

    def _statStamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> AllowList:
        """
        @raise OSError: unreadable file.
        @raise AllowListError: malformed file.
        """
        with open(self.path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise AllowListError("the file is not UTF-8 text") from None
        return AllowList.parse(text)

    def check(self) -> bool:
        """
        Re-read the file if it changed and has not changed since the
        previous check. Return C{True} if the list changed. Never raises: a
        bad file is logged and the last good list stays.
        """
        stamp = self._statStamp()
        if stamp == self._stamp:
            self._unsettled = _NOTHING
            return False
        if stamp != self._unsettled:
            # Changed since the last look: it may be half-written.
            self._unsettled = stamp
            return False
        return self.reload()

    def reload(self) -> bool:
        """
        Re-read the file now (SIGHUP), changed or not. Return C{True} if
        the list changed. Never raises, as L{check}.
        """
        self._unsettled = _NOTHING
        # Stat before reading: a change made meanwhile is seen next time.
        self._stamp = self._statStamp()
        try:
            new = self._read()
        except (OSError, AllowListError) as e:
            self.log.error(
                "Allow-list {path} not reloaded, keeping the last good list "
                "({count} entries): {error}",
                path=self.path, count=len(self.current), error=str(e), reason=str(e),
                event="allowlist_reload_failed",
            )
            return False
        if new == self.current:
            return False
        self.current = new
        self.log.info(
            "Allow-list {path} reloaded: {count} entries", path=self.path, count=len(new),
            event="allowlist_reload",
        )
        if self.onChange is not None:
            self.onChange(new)
        return True
