"""
Who may do what: permission levels, id prefixes, and the allow-list line
that grants them (PROTOCOL.md section 9).

An admitted certificate has a L{Grant}: a name, a level and, optionally,
id prefixes. Every command declares the level it needs (see
L{proto.commands.base.CommandRegistry.command}) and, if it touches
documents, which of its arguments are ids; the protocol checks both with
L{Grant.refusal} before the command runs, so a command of our own or of a
plugin is covered the same way as the built-in ones.

Levels, lowest first: C{any} (PING, ECHO, QUIT, SLEEP, REMIND, WHOAMI,
ENROLL: every admitted client), C{read} (GET, WATCH, UNWATCH), C{write}
(read + PUT, DELETE), C{admin} (write + the admin commands). A grant's
level is one of the last three; C{any} is only a command's requirement.

Prefixes compare as ids do (case-insensitively, by L{idKey}). An id is
allowed when it starts with one of them; a WATCH prefix is allowed when
every id it can match is, that is when the WATCH prefix itself starts with
one of them. So the same test serves both.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from proto.store.base import InvalidIdError, checkId, idKey

ANY = "any"
READ = "read"
WRITE = "write"
ADMIN = "admin"

#: Command levels, lowest first; a level's rank is its index.
LEVELS = (ANY, READ, WRITE, ADMIN)
RANK = {level: rank for rank, level in enumerate(LEVELS)}

#: The levels a certificate can be given (C{can=...}).
GRANT_LEVELS = (READ, WRITE, ADMIN)

#: A line without C{can=} grants this (so allow-lists written before levels
#: existed keep working).
DEFAULT_LEVEL = WRITE

#: Where a grant comes from: the operator's allow-list file, an APPROVE, an
#: ENROLL.
FILE = "file"
APPROVED = "approved"
ENROLLED = "enrolled"


class GrantSyntaxError(ValueError):
    """A grant (allow-list line, APPROVE arguments) is malformed; the message says how."""


@dataclass(frozen=True)
class Grant:
    """
    What one certificate may do.

    @ivar name: the name given to it (possibly empty).
    @ivar level: C{read}, C{write} or C{admin}.
    @ivar prefixes: the id prefixes it may use, as written, or C{None}
        when every id is allowed.
    @ivar origin: L{FILE}, L{APPROVED} or L{ENROLLED}.
    @ivar enrolledBy: for an enrolment, the SHA-1 of the certificate that
        enrolled this one.
    """

    name: str = ""
    level: str = DEFAULT_LEVEL
    prefixes: tuple[str, ...] | None = None
    origin: str = FILE
    enrolledBy: str | None = None
    rank: int = field(init=False, compare=False, repr=False)
    _keys: tuple[str, ...] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", RANK[self.level])
        keys = None if self.prefixes is None else tuple(idKey(p) for p in self.prefixes)
        object.__setattr__(self, "_keys", keys)

    def allowsId(self, id: str) -> bool:
        """May this certificate read, write or watch C{id} (or the prefix C{id})?"""
        keys = self._keys
        if keys is None:
            return True
        return idKey(id).startswith(keys)

    def filterIds(self) -> Callable[[str], bool] | None:
        """A predicate for ids (Include, pushes), or C{None} if all are allowed."""
        return None if self._keys is None else self.allowsId

    def refusal(self, command: str, rank: int, ids: Iterable[str], who: str) -> str | None:
        """
        Why this certificate may not run C{command} on C{ids}, or C{None}.

        @param rank: the command's required level's rank.
        @param who: the name or CN, for the message.
        """
        ids = list(ids)
        if rank > self.rank:
            return forbidden(who, command, ids[0] if ids else None)
        if self._keys is not None:
            for id in ids:
                if not self.allowsId(id):
                    return forbidden(who, command, id)
        return None

    def withOrigin(self, origin: str, enrolledBy: str | None = None) -> "Grant":
        """A copy of this grant's rights (name, level, prefixes) from elsewhere."""
        return Grant(self.name, self.level, self.prefixes, origin, enrolledBy)

    def attributes(self) -> str:
        """The attributes in allow-list syntax (for logs and the CLI)."""
        words = [f"can={self.level}"]
        if self.prefixes is not None:
            words.append("prefix=" + ",".join(self.prefixes))
        return " ".join(words)


#: The grant of a connection that is not admitted (nothing runs anyway).
NOTHING = Grant("", READ, ())


def forbidden(who: str, command: str, id: str | None) -> str:
    """The reason of section 9: C{Forbidden: <name or CN> may not <COMMAND> <id>}."""
    reason = f"Forbidden: {who} may not {command}"
    return reason if id is None else f"{reason} {id}"


def parseGrantWords(words: list[str]) -> Grant:
    """
    The words after a thumbprint (allow-list line, APPROVE arguments):
    those with C{=} are attributes (C{can=}, C{prefix=}; each at most
    once, anywhere), the others, joined by single spaces, the name.

    @raise GrantSyntaxError: an unknown or repeated attribute, an unknown
        level, an empty or invalid prefix.
    """
    nameWords: list[str] = []
    level: str | None = None
    prefixes: tuple[str, ...] | None = None
    seen: set[str] = set()
    for word in words:
        if "=" not in word:
            nameWords.append(word)
            continue
        key, _, value = word.partition("=")
        key = key.lower()
        if key in seen:
            raise GrantSyntaxError(f"{key}= is given twice")
        seen.add(key)
        if key == "can":
            level = value.lower()
            if level not in GRANT_LEVELS:
                raise GrantSyntaxError(
                    f"can={value} is not a level: expected can=read, can=write or can=admin"
                )
        elif key == "prefix":
            parts = tuple(value.split(","))
            if not all(parts):
                raise GrantSyntaxError(
                    f"prefix={value} has an empty prefix: expected prefix=P1,P2,..."
                )
            for part in parts:
                try:
                    checkId(part, "prefix")
                except InvalidIdError as e:
                    raise GrantSyntaxError(str(e)) from None
            prefixes = parts
        else:
            raise GrantSyntaxError(
                f"unknown attribute {key}=: expected can=LEVEL or prefix=P1,P2,..."
            )
    return Grant(" ".join(nameWords), level or DEFAULT_LEVEL, prefixes)


# -- identities as JSON (WHOAMI, APPROVE, ENROLL, PENDING) -------------------


def isoUTC(moment: datetime.datetime | float) -> str:
    """ISO 8601 in UTC, to the second: C{2026-11-30T22:29:16Z}."""
    if not isinstance(moment, datetime.datetime):
        moment = datetime.datetime.fromtimestamp(moment, datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def jsonBytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def whoami(identity: Any, grant: Grant) -> dict[str, Any]:
    """The WHOAMI reply object of section 9."""
    return {
        "Sha1": identity.sha1,
        "Sha256": identity.sha256,
        "Name": grant.name,
        "CN": identity.commonName,
        "NotBefore": isoUTC(identity.notBefore),
        "NotAfter": isoUTC(identity.notAfter),
        "Can": grant.level,
        "Prefixes": None if grant.prefixes is None else list(grant.prefixes),
    }
